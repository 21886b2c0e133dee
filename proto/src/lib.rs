//! Herald's gRPC API, package `herald.v1`: the Rust code generated from the `.proto` files
//! in `proto/herald/v1/` (messages, the `Herald` client and the `Herald` server trait).
//!
//! The `.proto` files are the API's documentation for every language; read them (or the
//! generated docs of [`v1`]) for the semantics of each message and RPC. Every `bytes`
//! field is generated as [`bytes::Bytes`], so decoding never copies payloads.
//!
//! Code is generated at build time by `tonic-prost-build`, with `protoc` taken from
//! `protoc-bin-vendored`; nothing here is edited by hand.

/// The generated `herald.v1` package: messages, enums, oneofs, and the client and server
/// modules of the `Herald` service.
// Generated code is never edited by hand, so lints on it would only be noise, today or
// after a clippy or tonic upgrade.
#[allow(clippy::all, clippy::pedantic, clippy::nursery, missing_docs)]
pub mod v1 {
    tonic::include_proto!("herald.v1");
}

/// The node-to-node protocol, package `herald.peer.v1`: the `Peer` service that carries
/// the consensus engine's messages between the nodes of a cluster. Not part of the public
/// API.
#[allow(clippy::all, clippy::pedantic, clippy::nursery, missing_docs)]
pub mod peer {
    tonic::include_proto!("herald.peer.v1");
}

pub use v1::herald_client::HeraldClient;
pub use v1::herald_server::{Herald, HeraldServer, SERVICE_NAME};

/// The encoded `google.protobuf.FileDescriptorSet` of every `herald.v1` file, with source
/// comments. Hand it to a gRPC reflection service (e.g. `tonic-reflection`'s
/// `register_encoded_file_descriptor_set`) so generic tools can discover the API.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/herald_v1_descriptor.bin"));

/// The encoded descriptor set of `herald.peer.v1`, kept apart from
/// [`FILE_DESCRIPTOR_SET`] so reflection never advertises the peer protocol.
pub const PEER_FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/herald_peer_v1_descriptor.bin"));

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use prost::Message;
    use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorSet};

    use super::*;
    use v1::{Header, PublishRequest, Record, Records, publish_request::Payload};

    #[test]
    fn publish_request_round_trips() {
        let request = PublishRequest {
            topic: "orders".to_owned(),
            partition: Some(3),
            payload: Some(Payload::Records(Records {
                records: vec![
                    Record {
                        key: Some(Bytes::from_static(b"order-42")),
                        value: Bytes::from_static(b"{\"total\":10}"),
                        headers: vec![
                            Header {
                                key: "trace".to_owned(),
                                value: Bytes::from_static(b"a"),
                            },
                            Header {
                                key: "trace".to_owned(),
                                value: Bytes::from_static(b"b"),
                            },
                        ],
                        timestamp_ms: 1_700_000_000_000,
                    },
                    // An empty key is a key; no key is `None`. Both must survive.
                    Record {
                        key: Some(Bytes::new()),
                        ..Record::default()
                    },
                    Record {
                        key: None,
                        ..Record::default()
                    },
                ],
            })),
            producer: Some(v1::ProducerSequence {
                producer_id: 7,
                epoch: 1,
                base_sequence: 42,
            }),
        };

        let encoded = request.encode_to_vec();
        let decoded = PublishRequest::decode(Bytes::from(encoded)).expect("decodes");
        assert_eq!(decoded, request);

        let Some(Payload::Records(records)) = &decoded.payload else {
            panic!("payload kind changed: {:?}", decoded.payload);
        };
        assert_eq!(records.records[1].key, Some(Bytes::new()));
        assert_eq!(records.records[2].key, None);
    }

    #[test]
    fn storage_batch_payload_round_trips() {
        let request = PublishRequest {
            topic: "orders".to_owned(),
            partition: None,
            payload: Some(Payload::StorageBatch(Bytes::from_static(&[1, 2, 3, 4]))),
            producer: None,
        };
        let decoded = PublishRequest::decode(request.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(decoded, request);
    }

    fn descriptor_set() -> FileDescriptorSet {
        FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("FILE_DESCRIPTOR_SET decodes")
    }

    #[test]
    fn file_descriptor_set_describes_herald_v1() {
        let set = descriptor_set();
        let files: Vec<&str> = set.file.iter().map(|file| file.name()).collect();
        for name in [
            "common",
            "topics",
            "publish",
            "fetch",
            "groups",
            "subscribe",
            "cluster",
            "herald",
        ] {
            let path = format!("herald/v1/{name}.proto");
            assert!(
                files.contains(&path.as_str()),
                "{path} missing from {files:?}"
            );
        }
        assert!(set.file.iter().all(|file| file.package() == "herald.v1"));

        let service = set
            .file
            .iter()
            .flat_map(|file| &file.service)
            .find(|service| service.name() == "Herald")
            .expect("service Herald");
        let subscribe = service
            .method
            .iter()
            .find(|method| method.name() == "Subscribe")
            .expect("rpc Subscribe");
        assert!(subscribe.client_streaming() && subscribe.server_streaming());
    }

    /// The `.proto` files are the documentation other languages read, so every message,
    /// field, oneof, enum, enum value, service and RPC must carry a leading comment.
    #[test]
    fn every_element_is_documented() {
        assert_documented(&descriptor_set());
    }

    /// The peer protocol is held to the same rule as the public API.
    #[test]
    fn every_peer_element_is_documented() {
        let set = FileDescriptorSet::decode(PEER_FILE_DESCRIPTOR_SET).expect("decodes");
        assert!(
            set.file
                .iter()
                .any(|file| file.name() == "herald/peer/v1/peer.proto")
        );
        // Forwarded client requests carry public messages, so the set holds the public
        // files they come from too; nothing else.
        assert!(
            set.file
                .iter()
                .all(|file| ["herald.peer.v1", "herald.v1"].contains(&file.package()))
        );
        assert_documented(&set);
    }

    fn assert_documented(set: &FileDescriptorSet) {
        // Field numbers of `FileDescriptorProto`, `DescriptorProto`, `EnumDescriptorProto`
        // and `ServiceDescriptorProto` that `SourceCodeInfo` paths are built from.
        const FILE_MESSAGE: i32 = 4;
        const FILE_ENUM: i32 = 5;
        const FILE_SERVICE: i32 = 6;
        const MESSAGE_FIELD: i32 = 2;
        const MESSAGE_NESTED: i32 = 3;
        const MESSAGE_ENUM: i32 = 4;
        const MESSAGE_ONEOF: i32 = 8;
        const ENUM_VALUE: i32 = 2;
        const SERVICE_METHOD: i32 = 2;

        fn index(i: usize) -> i32 {
            i32::try_from(i).expect("small index")
        }

        fn enum_paths(prefix: &[i32], enumeration: &EnumDescriptorProto, out: &mut Vec<Vec<i32>>) {
            out.push(prefix.to_vec());
            for i in 0..enumeration.value.len() {
                out.push([prefix, &[ENUM_VALUE, index(i)]].concat());
            }
        }

        fn message_paths(prefix: &[i32], message: &DescriptorProto, out: &mut Vec<Vec<i32>>) {
            out.push(prefix.to_vec());
            for i in 0..message.field.len() {
                out.push([prefix, &[MESSAGE_FIELD, index(i)]].concat());
            }
            // A proto3 `optional` field sits in a oneof protoc synthesizes, with no source.
            let synthetic: Vec<i32> = message
                .field
                .iter()
                .filter(|field| field.proto3_optional())
                .filter_map(|field| field.oneof_index)
                .collect();
            for i in 0..message.oneof_decl.len() {
                if !synthetic.contains(&index(i)) {
                    out.push([prefix, &[MESSAGE_ONEOF, index(i)]].concat());
                }
            }
            for (i, nested) in message.nested_type.iter().enumerate() {
                // Map entries are synthesized by protoc and have no source of their own.
                if !nested
                    .options
                    .as_ref()
                    .is_some_and(|options| options.map_entry())
                {
                    message_paths(&[prefix, &[MESSAGE_NESTED, index(i)]].concat(), nested, out);
                }
            }
            for (i, enumeration) in message.enum_type.iter().enumerate() {
                enum_paths(
                    &[prefix, &[MESSAGE_ENUM, index(i)]].concat(),
                    enumeration,
                    out,
                );
            }
        }

        let mut undocumented = Vec::new();
        for file in &set.file {
            let mut paths = Vec::new();
            for (i, message) in file.message_type.iter().enumerate() {
                message_paths(&[FILE_MESSAGE, index(i)], message, &mut paths);
            }
            for (i, enumeration) in file.enum_type.iter().enumerate() {
                enum_paths(&[FILE_ENUM, index(i)], enumeration, &mut paths);
            }
            for (i, service) in file.service.iter().enumerate() {
                paths.push(vec![FILE_SERVICE, index(i)]);
                for j in 0..service.method.len() {
                    paths.push(vec![FILE_SERVICE, index(i), SERVICE_METHOD, index(j)]);
                }
            }

            let locations = &file
                .source_code_info
                .as_ref()
                .expect("source info")
                .location;
            for path in paths {
                let documented = locations
                    .iter()
                    .find(|location| location.path == path)
                    .is_some_and(|location| !location.leading_comments().trim().is_empty());
                if !documented {
                    undocumented.push(format!("{} {path:?}", file.name()));
                }
            }
        }
        assert!(
            undocumented.is_empty(),
            "undocumented elements: {undocumented:#?}"
        );
    }

    #[test]
    fn service_name_is_fully_qualified() {
        // Health checks and reflection clients ask for the service by this name.
        assert_eq!(SERVICE_NAME, "herald.v1.Herald");
        assert_eq!(
            <HeraldServer<()> as tonic::server::NamedService>::NAME,
            SERVICE_NAME
        );
    }
}
