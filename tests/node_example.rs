//! The Node.js example (`examples/node`): runs its `node --test test.js` against a real
//! broker started in-process. The example is the order, email and inventory services on
//! `HeraldEmitter` from the package in `clients/node`.
//!
//! Needs `node`, the package built and the example's `node_modules`, which
//! `./scripts/test` installs (`npm ci` and `npm run build` in `clients/node`, then
//! `npm ci --prefix examples/node`). Without them the test fails (it does not skip).

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

/// Generous: the test takes about a second, but the machine may be busy compiling.
const NODE_TIMEOUT: Duration = Duration::from_secs(180);
const SETUP_HINT: &str = "run ./scripts/test, which installs them \
    (npm ci and npm run build in clients/node, then npm ci --prefix examples/node)";

// Multi-threaded so the broker keeps serving while this test waits on the child process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_example_orders_email_inventory() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = root.join("examples/node");
    assert!(
        example.join("test.js").is_file(),
        "{} is missing",
        example.join("test.js").display()
    );
    assert!(
        example
            .join("node_modules/herald-broker-client/dist/index.js")
            .is_file(),
        "{} has no node_modules with a built herald-broker-client; {SETUP_HINT}",
        example.display()
    );

    let dir = tempfile::tempdir().unwrap();
    let broker = start(test_config(dir.path())).await;
    let started = Instant::now();
    let child = tokio::process::Command::new("node")
        .args(["--test", "test.js"])
        .current_dir(&example)
        .env("HERALD_ADDR", format!("127.0.0.1:{}", broker.addr.port()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node ({e}): this test needs Node.js 18 or later"));
    let output = tokio::time::timeout(NODE_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("node --test test.js did not finish within {NODE_TIMEOUT:?}"))
        .expect("waiting for node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report = format!(
        "node --test test.js exited with {} after {:?}\n--- stdout ---\n{stdout}--- stderr ---\n{stderr}",
        output.status,
        started.elapsed()
    );
    assert!(output.status.success(), "{report}");
    assert!(stdout.contains("# fail 0"), "{report}");
    println!("{}", stdout.trim_end());
    stop(broker).await;
}
