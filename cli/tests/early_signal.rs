//! A SIGTERM or SIGINT that arrives while `herald serve` is still starting (opening its
//! topics, before it serves) stops it cleanly once it is up: exit code 0 and a clean stop
//! in the log, not death by the signal's default action.

use std::process::{Command, Stdio};

mod common;

use common::{HERALD, Process, Server, serve_command};

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
        let broker = Process::spawn(serve_command(dir.path(), &[]));
        // The broker opens its topics one by one while it starts: signal it at the first.
        broker.wait_for_line("an \"opened topic\" line", |line| {
            assert!(
                !line.contains("herald is serving"),
                "the broker was up before it opened a topic"
            );
            line.contains("opened topic").then_some(())
        });
        broker.signal(name);
        let common::Exited { status, log, .. } = broker.wait();
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
