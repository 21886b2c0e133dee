//! The Node.js client package (`clients/node`): runs its `node --test` suite, which starts
//! real `herald serve` processes of this build (it restarts one mid-stream, so it needs
//! the binary, which is why this driver lives in the cli crate: cargo gives its tests the
//! path as `CARGO_BIN_EXE_herald`).
//!
//! Also hands the suite key-placement vectors computed here with `partition_for_key`, so
//! the Node producer is checked against the Rust function itself.
//!
//! Needs `node` and the package built (`npm ci` and `npm run build` in clients/node),
//! which `./scripts/test` does. Without them the test fails (it does not skip).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Generous: the suite takes well under a minute, but the machine may be busy compiling.
const NODE_TIMEOUT: Duration = Duration::from_secs(300);

/// Keys (as bytes) and partition counts: every length class of xxh64 (0, under 4, under 8,
/// under 32, over 32 bytes), non-ASCII bytes, and moduli up to `u32::MAX`, which pins the
/// hash itself and not only its low bits.
fn key_vectors() -> String {
    let mut keys: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"a".to_vec(),
        b"abc".to_vec(),
        b"order-1".to_vec(),
        b"user:42".to_vec(),
        "caf\u{e9}-\u{1f600}".as_bytes().to_vec(),
        b"a key that is longer than thirty-two bytes, to hash in stripes".to_vec(),
        (0u8..=255).collect(),
    ];
    for i in 0..20 {
        keys.push(format!("order-{i}").into_bytes());
    }
    let moduli = [1u32, 2, 3, 7, 8, 16, 100, 4096, 65_521, u32::MAX];
    let vectors: Vec<serde_json::Value> = keys
        .iter()
        .flat_map(|key| {
            moduli.iter().map(move |&partitions| {
                serde_json::json!({
                    "key_hex": key.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                    "partitions": partitions,
                    "partition": herald_client::partition_for_key(key, partitions).0,
                })
            })
        })
        .collect();
    serde_json::to_string(&vectors).unwrap()
}

#[test]
fn node_client_suite() {
    let package = Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/node");
    let hint = "run ./scripts/test, which installs and builds it \
        (npm ci --prefix clients/node && npm run build --prefix clients/node)";
    assert!(
        package.join("node_modules/@grpc/grpc-js").is_dir(),
        "{} has no node_modules; {hint}",
        package.display()
    );
    assert!(
        package.join("dist/index.js").is_file(),
        "{} is not built; {hint}",
        package.display()
    );

    let started = Instant::now();
    let mut child = Command::new("node")
        .args([
            "--test",
            "--test-concurrency=1",
            "--test-timeout=120000",
            "test/",
        ])
        .current_dir(&package)
        .env("HERALD_BIN", env!("CARGO_BIN_EXE_herald"))
        .env("HERALD_KEY_VECTORS", key_vectors())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node ({e}): this test needs Node.js 18 or later"));
    // Drain both pipes on threads so a chatty suite never blocks on a full pipe.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).ok();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut s).ok();
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for node") {
            break status;
        }
        if started.elapsed() > NODE_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "node --test did not finish within {NODE_TIMEOUT:?}\n--- stdout ---\n{}",
                out.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = out.join().unwrap();
    let stderr = err.join().unwrap();
    let report = format!(
        "node --test exited with {status} after {:?}\n--- stdout ---\n{stdout}--- stderr ---\n{stderr}",
        started.elapsed()
    );
    assert!(status.success(), "{report}");
    assert!(stdout.contains("# fail 0"), "{report}");
    assert!(stdout.contains("# skipped 0"), "{report}");
    println!("{}", stdout.trim_end());
}
