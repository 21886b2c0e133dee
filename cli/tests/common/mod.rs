//! The harness shared by the end-to-end tests: a real `herald serve` process on ephemeral
//! ports, found through its "herald is serving" log line and stopped with a signal.

// Each test crate includes this module and uses only part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_proto::HeraldClient;
use herald_proto::v1;
use serde_json::Value;
use tonic::transport::Channel;

pub mod proxy;

#[path = "../../../tests/support/ports.rs"]
mod ports;
#[allow(unused_imports)] // not every test crate needs it
pub use ports::free_ports;

pub const HERALD: &str = env!("CARGO_BIN_EXE_herald");
/// Longest a broker may take to start or stop, or a CLI command to run, or the broker to
/// reach a state a test waits for.
pub const TIMEOUT: Duration = Duration::from_secs(15);

/// A child process of the `herald` binary with its output collected line by line as it
/// comes (so it never blocks on a full pipe). Killed if dropped while running.
pub struct Process {
    child: Child,
    /// Stderr and stdout lines, interleaved as they arrived.
    log: Arc<Mutex<Vec<String>>>,
    /// Stdout lines alone: what a CLI command prints as its result.
    stdout: Arc<Mutex<Vec<String>>>,
    /// The threads draining stdout and stderr; they end when the process is gone.
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Process {
    /// Spawns `command` with stdin closed and stdout and stderr collected.
    pub fn spawn(mut command: Command) -> Process {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("herald starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let out_reader = {
            let (pipe, log, stdout) = (
                child.stdout.take().expect("piped"),
                log.clone(),
                stdout.clone(),
            );
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    log.lock().unwrap().push(line.clone());
                    stdout.lock().unwrap().push(line);
                }
            })
        };
        let err_reader = {
            let (pipe, log) = (child.stderr.take().expect("piped"), log.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    log.lock().unwrap().push(line);
                }
            })
        };
        Process {
            child,
            log,
            stdout,
            readers: vec![out_reader, err_reader],
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The output so far (stderr and stdout lines).
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The stdout lines so far.
    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Waits for the first output line that `matches` yields something for, and returns
    /// that. Panics with the output so far if none comes within [`TIMEOUT`].
    pub fn wait_for_line<T>(&self, what: &str, matches: impl Fn(&str) -> Option<T>) -> T {
        wait_for(what, || {
            let log = self.log.lock().unwrap();
            log.iter()
                .find_map(|line| matches(line))
                .ok_or_else(|| Text(log.join("\n")))
        })
    }

    /// Waits until stdout has at least `count` lines, and returns them all.
    pub fn wait_for_stdout(&self, count: usize) -> Vec<String> {
        wait_for(&format!("{count} lines on stdout"), || {
            let stdout = self.stdout();
            if stdout.len() >= count {
                Ok(stdout)
            } else {
                Err(stdout)
            }
        })
    }

    /// Sends signal `name` (`TERM`, `INT`...).
    pub fn signal(&self, name: &str) {
        signal(self.child.id(), name);
    }

    /// Waits for the process to exit (killing it and failing past [`TIMEOUT`]) and for
    /// its output to be read to the end.
    pub fn wait(mut self) -> Exited {
        let status = wait_timeout(&mut self.child);
        self.finish_reading();
        Exited {
            status,
            log: self.log(),
            stdout: self.stdout(),
        }
    }

    /// SIGKILL: the process dies at once, whatever it was doing. Returns its output up to
    /// then.
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
}

/// A process that has exited, and all it wrote.
pub struct Exited {
    pub status: ExitStatus,
    /// Stderr and stdout lines, interleaved as they arrived.
    pub log: Vec<String>,
    pub stdout: Vec<String>,
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The command line of `herald serve` on `data_dir` and ephemeral ports, logging JSON at
/// `info`, with `extra_args` after the usual ones; no configuration from the environment.
pub fn serve_command(data_dir: &Path, extra_args: &[&str]) -> Command {
    let mut command = Command::new(HERALD);
    command
        .args(["serve", "--log-json", "--data-dir"])
        .arg(data_dir)
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .args(extra_args)
        .env_remove("HERALD_CONFIG")
        .env_remove("HERALD_FSYNC")
        .env("RUST_LOG", "info");
    command
}

/// A `herald serve` child process that is serving, on ephemeral ports.
pub struct Server {
    process: Process,
    addr: SocketAddr,
}

impl Server {
    /// Starts the broker on `data_dir`, with `extra_args` after the usual ones, and waits
    /// for its "herald is serving" log line, which names the gRPC address it bound.
    pub fn start(data_dir: &Path, extra_args: &[&str]) -> Server {
        let process = Process::spawn(serve_command(data_dir, extra_args));
        let addr = process.wait_for_line("the broker reports its address", serving_addr);
        Server { process, addr }
    }

    /// Its process id, to signal it.
    pub fn id(&self) -> u32 {
        self.process.id()
    }

    /// The gRPC address it bound.
    pub fn addr(&self) -> SocketAddr {
        self.addr
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

    /// SIGKILL; returns the output up to then (stderr and stdout, interleaved by line).
    pub fn kill9(self) -> Vec<String> {
        self.process.kill9()
    }

    /// The output so far (stderr and stdout lines).
    pub fn log(&self) -> Vec<String> {
        self.process.log()
    }

    /// Sends SIGTERM and waits for the process to exit; returns its exit status and log,
    /// which must not mention a panic.
    pub fn terminate(self) -> (ExitStatus, Vec<String>) {
        self.process.signal("TERM");
        let exited = self.process.wait();
        assert_no_panic(&exited.log, "herald serve");
        (exited.status, exited.log)
    }
}

/// Fails the test if a process's output mentions a panic, quoting the lines around it.
pub fn assert_no_panic(output: &[String], ctx: &str) {
    if let Some(at) = output.iter().position(|l| l.contains("panicked")) {
        let from = at.saturating_sub(5);
        let to = (at + 20).min(output.len());
        panic!("{ctx}: panicked:\n{}", output[from..to].join("\n"));
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

/// Text that a failure shows as it is (line breaks and all), where [`wait_for`] shows the
/// `Debug` form of what it saw.
pub struct Text(pub String);

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Polls `probe` every 10 ms until it gives `Ok(value)`, and returns that value. After
/// [`TIMEOUT`] it panics naming `what` and showing the last `Err` (what it saw instead).
pub fn wait_for<T, E: std::fmt::Debug>(what: &str, mut probe: impl FnMut() -> Result<T, E>) -> T {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match probe() {
            Ok(value) => return value,
            Err(seen) if Instant::now() >= deadline => {
                panic!("{what}: not within {TIMEOUT:?}; last seen:\n{seen:#?}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Waits up to [`TIMEOUT`] for `child` to exit; kills it and panics if it does not.
pub fn wait_timeout(child: &mut Child) -> ExitStatus {
    wait_for(&format!("process {} exits", child.id()), || {
        child.try_wait().expect("try_wait").ok_or(())
    })
}

// ---- gRPC calls the tests share ----

pub async fn create_topic(client: &mut HeraldClient<Channel>, name: &str, partitions: u32) {
    client
        .create_topic(v1::CreateTopicRequest {
            name: name.into(),
            partitions,
            config: None,
            replication_factor: None,
        })
        .await
        .expect("topic created");
}

/// A Fetch of a whole partition: from the earliest offset to the end, no follow.
pub fn fetch_from_earliest(topic: &str, partition: u32) -> v1::FetchRequest {
    v1::FetchRequest {
        topic: topic.into(),
        partition,
        start: Some(v1::Position {
            kind: Some(v1::position::Kind::Earliest(v1::Earliest {})),
        }),
        max_bytes: 0,
        follow: false,
        max_wait_ms: 0,
        raw_batches: false,
    }
}
