//! Generates the `herald.v1` messages, client and server from `proto/herald/v1/*.proto`,
//! plus the encoded file descriptor set that gRPC server reflection serves.

use std::path::PathBuf;

/// Every file of the API. `herald.proto` imports the others, but listing them all keeps
/// each in the descriptor set even if an import is removed.
const PROTOS: &[&str] = &[
    "proto/herald/v1/common.proto",
    "proto/herald/v1/topics.proto",
    "proto/herald/v1/publish.proto",
    "proto/herald/v1/fetch.proto",
    "proto/herald/v1/groups.proto",
    "proto/herald/v1/subscribe.proto",
    "proto/herald/v1/cluster.proto",
    "proto/herald/v1/herald.proto",
];

/// The node-to-node protocol, compiled into its own module and descriptor set: it is not
/// part of the public API and is not served by reflection.
const PEER_PROTOS: &[&str] = &["proto/herald/peer/v1/peer.proto"];

/// Import root: files import each other as `herald/v1/<name>.proto`.
const INCLUDE_DIR: &str = "proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Use the protoc shipped inside `protoc-bin-vendored`, so a fresh machine needs no
    // system package.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: a build script is a single-threaded process and nothing else reads or writes
    // the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Every `bytes` field becomes `bytes::Bytes`: decoding slices the received buffer
        // instead of copying, and a reply can hand out a `Bytes` that owns mapped storage.
        .bytes(".")
        .file_descriptor_set_path(out_dir.join("herald_v1_descriptor.bin"))
        .compile_protos(PROTOS, &[INCLUDE_DIR])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".")
        // Forwarded client requests carry the public messages: use the `v1` module's
        // types rather than generating a second copy of them.
        .extern_path(".herald.v1", "crate::v1")
        .file_descriptor_set_path(out_dir.join("herald_peer_v1_descriptor.bin"))
        .compile_protos(PEER_PROTOS, &[INCLUDE_DIR])?;

    println!("cargo:rerun-if-changed={INCLUDE_DIR}");
    Ok(())
}
