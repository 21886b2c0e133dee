//! The harness shared by the end-to-end tests: a real `herald serve` process on ephemeral
//! ports, found through its "herald is serving" log line and stopped with a signal.

// Each test crate includes this module and uses only part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use herald_proto::HeraldClient;
use serde_json::Value;
use tonic::transport::Channel;

pub const HERALD: &str = env!("CARGO_BIN_EXE_herald");
/// Longest a broker may take to start or stop, or a CLI command to run.
pub const TIMEOUT: Duration = Duration::from_secs(15);

/// A `herald serve` child process on ephemeral ports. Killed if dropped while running.
pub struct Server {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    /// The threads draining stdout and stderr; they end when the process is gone.
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Starts the broker on `data_dir`, with `extra_args` after the usual ones, and waits
    /// for its "herald is serving" log line, which names the gRPC address it bound.
    pub fn start(data_dir: &Path, extra_args: &[&str]) -> Server {
        let mut child = Command::new(HERALD)
            .args(["serve", "--log-json", "--data-dir"])
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .args(extra_args)
            .env_remove("HERALD_CONFIG")
            .env_remove("HERALD_FSYNC")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("herald serve starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        // Stdout goes into the same log, so a panic message is caught wherever it went.
        let lines = log.clone();
        let stdout_reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line);
            }
        });
        let (tx, rx) = mpsc::channel();
        let lines = log.clone();
        // Drains stderr for the whole life of the process, so the broker never blocks on it.
        let stderr_reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = serving_addr(&line) {
                    let _ = tx.send(addr);
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(TIMEOUT) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "the broker did not report its address within {TIMEOUT:?}; its log:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        Server {
            child,
            addr,
            log,
            readers: vec![stdout_reader, stderr_reader],
        }
    }

    /// The gRPC endpoint, as `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn client(&self) -> HeraldClient<Channel> {
        HeraldClient::connect(self.url())
            .await
            .expect("client connects")
    }

    /// SIGKILL: the process dies at once, whatever it was doing. Returns its output up to
    /// then (stderr and stdout, interleaved by line).
    pub fn kill9(mut self) -> Vec<String> {
        self.child.kill().expect("SIGKILL sent");
        let status = self.child.wait().expect("reaped");
        assert!(!status.success(), "killed, not exited: {status}");
        self.finish_reading();
        self.log()
    }

    /// Waits for the reader threads to reach the end of the dead process's output.
    fn finish_reading(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }

    /// The output so far (stderr and stdout lines).
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits for the process to exit; returns its exit status and log.
    pub fn terminate(mut self) -> (ExitStatus, Vec<String>) {
        signal(self.child.id(), "TERM");
        let Some(status) = wait_until(&mut self.child, Instant::now() + TIMEOUT) else {
            // Dropping `self` kills the process.
            panic!("herald serve did not stop within {TIMEOUT:?} of SIGTERM");
        };
        self.finish_reading();
        (status, self.log())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The gRPC address in the broker's "herald is serving" JSON log line.
pub fn serving_addr(line: &str) -> Option<SocketAddr> {
    let entry: Value = serde_json::from_str(line).ok()?;
    if entry["fields"]["message"] != "herald is serving" {
        return None;
    }
    entry["fields"]["addr"].as_str()?.parse().ok()
}

/// Sends signal `name` (`TERM`, `INT`, `KILL`...) to process `pid` with `kill`.
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// Waits up to [`TIMEOUT`] for `child` to exit; kills it and panics if it does not.
pub fn wait_timeout(child: &mut Child) -> ExitStatus {
    match wait_until(child, Instant::now() + TIMEOUT) {
        Some(status) => status,
        None => {
            let _ = child.kill();
            panic!("process {} did not exit within {TIMEOUT:?}", child.id());
        }
    }
}

/// Polls `child` until it exits (its status) or `deadline` passes (`None`).
fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
