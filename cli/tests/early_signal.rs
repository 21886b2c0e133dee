//! A SIGTERM or SIGINT that arrives while `herald serve` is still starting (opening its
//! topics, before it serves) stops it cleanly once it is up: exit code 0 and a clean stop
//! in the log, not death by the signal's default action.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;

mod common;

use common::{HERALD, Server, TIMEOUT, signal, wait_timeout};

/// Topics (and partitions each) in the data dir, so that opening them at start takes a
/// while after the first "opened topic" line.
const TOPICS: usize = 8;
const PARTITIONS: &str = "8";

#[test]
fn a_signal_during_start_stops_the_broker_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    for i in 0..TOPICS {
        let status = Command::new(HERALD)
            .args([
                "topic",
                "create",
                &format!("t{i}"),
                "--partitions",
                PARTITIONS,
            ])
            // Small segments: a few hundred partitions take little disk.
            .args(["--segment-bytes", "4194304"])
            .args(["--server", &server.url()])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "topic create failed: {status}");
    }
    let (status, _) = server.terminate();
    assert!(status.success(), "herald serve exited with {status}");

    for name in ["TERM", "INT"] {
        let mut child = Command::new(HERALD)
            .args(["serve", "--log-json", "--data-dir"])
            .arg(dir.path())
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .env_remove("HERALD_CONFIG")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let mut log = Vec::new();
        // The broker opens its topics one by one while it starts: signal it at the first.
        loop {
            let line = rx
                .recv_timeout(TIMEOUT)
                .unwrap_or_else(|_| panic!("no \"opened topic\" line; log:\n{}", log.join("\n")));
            let first_topic = line.contains("opened topic");
            assert!(
                !line.contains("herald is serving"),
                "the broker was up before it opened a topic"
            );
            log.push(line);
            if first_topic {
                break;
            }
        }
        signal(child.id(), name);
        let status = wait_timeout(&mut child);
        reader.join().unwrap();
        log.extend(rx.try_iter());
        assert!(
            status.success(),
            "SIG{name} during start: herald serve exited with {status}; log:\n{}",
            log.join("\n")
        );
        assert!(
            log.iter().any(|l| l.contains("stopped cleanly")),
            "SIG{name} during start: no clean stop in the log:\n{}",
            log.join("\n")
        );
    }
}
