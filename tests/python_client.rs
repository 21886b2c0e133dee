//! The gRPC API from another language, without a Herald SDK: runs
//! `tests/python/herald_smoke.py` (stubs generated at run time from the .proto files with
//! grpcio-tools) and `tests/python/reflection_v1alpha.py` (no .proto files: the schema from
//! server reflection v1alpha) against a real broker started in-process.
//!
//! Needs `python3` with the packages of `tests/python/requirements.txt`, which
//! `./scripts/test` installs. Without them the test fails (it does not skip).

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

/// Exit status of the script when a Python package is missing.
const EXIT_MISSING_DEPENDENCY: i32 = 3;
/// Generous: the script takes about a second, but the machine may be busy compiling.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);
const SETUP_HINT: &str = "run ./scripts/test, which installs them \
    (python3 -m pip install -r tests/python/requirements.txt)";

// Multi-threaded so the broker keeps serving while this test waits on the child process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpc_client_publishes_and_fetches() {
    run_script("herald_smoke.py", "herald_smoke: OK").await;
}

/// A generic client that knows Herald only through server reflection v1alpha (grpcio's
/// `ProtoReflectionDescriptorDatabase`, the version older grpcurl, grpc-js and
/// grpc_requests speak) lists the services, loads the schema and calls RPCs with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_reflection_v1alpha_client_calls_rpcs() {
    run_script("reflection_v1alpha.py", "reflection_v1alpha: OK").await;
}

/// Runs `tests/python/<name>` against a fresh broker and expects `ok` in its output.
async fn run_script(name: &str, ok: &str) {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(test_config(dir.path())).await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("tests/python").join(name);
    assert!(script.is_file(), "{} is missing", script.display());

    let started = Instant::now();
    let child = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(format!("127.0.0.1:{}", broker.addr.port()))
        .current_dir(root)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run python3 ({e}): this test needs python3 with grpcio; {SETUP_HINT}")
        });
    let output = tokio::time::timeout(SCRIPT_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{name} did not finish within {SCRIPT_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("waiting for {name}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report = format!(
        "{name} exited with {} after {:?}\n--- stdout ---\n{stdout}--- stderr ---\n{stderr}",
        output.status,
        started.elapsed()
    );
    assert_ne!(
        output.status.code(),
        Some(EXIT_MISSING_DEPENDENCY),
        "Python packages for this test are missing; {SETUP_HINT}\n{report}"
    );
    assert!(output.status.success(), "{report}");
    assert!(stdout.contains(ok), "{report}");
    println!("{}", stdout.trim_end());
    stop(broker).await;
}

/// The README's Python snippet for a secured broker (`tests/python/herald_secure.py`): TLS
/// with the broker's CA and a bearer token through grpcio's own credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpc_client_speaks_tls_with_a_token() {
    use herald_broker::auth::{TokenEntry, token};
    let dir = tempfile::tempdir().unwrap();
    let ca = common::pki::Ca::new("python CA");
    let server = ca.server(&["localhost"], common::pki::Validity::Now);
    let mut config = common::pki::with_tls(
        test_config(&dir.path().join("data")),
        dir.path(),
        &server,
        None,
    );
    let acl = dir.path().join("acl.toml");
    std::fs::write(
        &acl,
        "[[rule]]\nprincipal = \"py\"\noperations = [\"all\"]\nresource = \"topic\"\nname = \"py.\"\npattern = \"prefix\"\n",
    )
    .unwrap();
    config.acl_file = Some(acl);
    let secret = token::generate().unwrap();
    config.tokens = vec![TokenEntry {
        principal: "py".into(),
        hash: token::hash(&secret),
    }];
    let broker = start(config).await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = tokio::process::Command::new("python3")
        .arg(root.join("tests/python/herald_secure.py"))
        .arg(format!("localhost:{}", broker.addr.port()))
        .current_dir(root)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("HERALD_TLS_CA", ca.write(dir.path(), "ca"))
        .env("HERALD_TOKEN", &secret)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(SCRIPT_TIMEOUT, output)
        .await
        .expect("herald_secure.py finishes")
        .expect("python3 runs");
    let report = format!(
        "herald_secure.py exited with {}\n--- stdout ---\n{}--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_ne!(
        output.status.code(),
        Some(EXIT_MISSING_DEPENDENCY),
        "{SETUP_HINT}\n{report}"
    );
    assert!(output.status.success(), "{report}");
    stop(broker).await;
}
