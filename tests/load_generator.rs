//! The load generator (`herald-load`) against a real in-process broker: every record it
//! publishes is consumed exactly once, in key order, and its JSON summary says so.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

/// Runs `herald-load` with `args` (on a blocking thread, so the broker keeps running on the
/// test's runtime) and returns its output and parsed JSON summary.
async fn run_load(args: Vec<String>, json: &Path) -> (Output, Value) {
    let json_arg = json.to_str().unwrap().to_owned();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_herald-load"))
            .args(&args)
            .args(["--json", &json_arg, "--quiet"])
            .output()
            .expect("herald-load runs")
    })
    .await
    .unwrap();
    let text = std::fs::read_to_string(json).unwrap_or_else(|e| {
        panic!(
            "no JSON summary ({e}); stderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output, serde_json::from_str(&text).expect("valid JSON"))
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_and_consumes_every_record_once_in_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(common::test_config(dir.path())).await;
    let target = format!("herald://{}", broker.addr);
    let json = dir.path().join("summary.json");

    let (output, summary) = run_load(
        args(&[
            "--target",
            &target,
            "--records",
            "20000",
            "--producers",
            "2",
            "--consumers",
            "2",
            "--partitions",
            "4",
            "--keys",
            "50",
            "--record-size",
            "64",
            "--linger-ms",
            "1",
            "--fsync",
            "interval:100",
        ]),
        &json,
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("publish-ack"),
        "a table on stdout: {stdout}"
    );

    assert_eq!(summary["produced"]["records"], 20_000, "{summary:#}");
    assert_eq!(summary["produced"]["bytes"], 20_000 * 64, "{summary:#}");
    assert_eq!(summary["consumed"]["records"], 20_000, "{summary:#}");
    assert_eq!(summary["check"]["unique_consumed"], 20_000, "{summary:#}");
    assert_eq!(summary["check"]["lost"], 0, "{summary:#}");
    assert_eq!(summary["check"]["duplicates"], 0, "{summary:#}");
    assert_eq!(summary["check"]["out_of_order"], 0, "{summary:#}");
    assert_eq!(summary["errors"]["total"], 0, "{summary:#}");
    assert_eq!(summary["ok"], true, "{summary:#}");
    for side in ["produced", "consumed"] {
        assert!(
            summary[side]["msgs_per_s"].as_f64().unwrap() > 0.0,
            "{summary:#}"
        );
    }
    for latency in ["publish_latency_us", "e2e_latency_us"] {
        let l = &summary[latency];
        assert_eq!(l["count"], 20_000, "{latency}: {summary:#}");
        let (p50, p99, max) = (
            l["p50"].as_u64().unwrap(),
            l["p99"].as_u64().unwrap(),
            l["max"].as_u64().unwrap(),
        );
        assert!(
            0 < p50 && p50 <= p99 && p99 <= max,
            "{latency}: {summary:#}"
        );
    }

    // The check can fail. Publish 1,000 more records to the same topic (publish only):
    // their sequences restart at 0 for every key. A fresh group consuming the whole topic
    // then sees sequences 0..20 of each key a second time: duplicates, a failed run.
    let topic = summary["settings"]["topic"].as_str().unwrap().to_owned();
    let common_args = ["--target", &target, "--topic", &topic, "--keys", "50"];
    let (output, summary) = run_load(
        args(&common_args)
            .into_iter()
            .chain(args(&["--reuse", "--records", "1000", "--consumers", "0"]))
            .collect(),
        &dir.path().join("publish-only.json"),
    )
    .await;
    assert!(output.status.success(), "{summary:#}");
    assert_eq!(summary["produced"]["records"], 1_000, "{summary:#}");
    assert!(summary["consumed"].is_null(), "{summary:#}");
    assert!(summary["check"]["lost"].is_null(), "{summary:#}");

    let (output, summary) = run_load(
        args(&common_args)
            .into_iter()
            .chain(args(&[
                "--consume-only",
                "--group",
                "second-pass",
                "--drain-timeout",
                "2",
            ]))
            .collect(),
        &dir.path().join("consume-only.json"),
    )
    .await;
    assert_eq!(summary["consumed"]["records"], 21_000, "{summary:#}");
    assert_eq!(summary["check"]["unique_consumed"], 20_000, "{summary:#}");
    assert_eq!(summary["check"]["duplicates"], 1_000, "{summary:#}");
    assert_eq!(summary["check"]["out_of_order"], 0, "{summary:#}");
    assert_eq!(summary["ok"], false, "{summary:#}");
    assert_eq!(output.status.code(), Some(1), "{summary:#}");

    broker.shutdown().await.unwrap();
}

/// `--consume-mode fetch`: consumers read their partitions by offset (3 partitions over 2
/// consumers, so one reads two), with the same checks; concurrently with the producers,
/// after a preload, and with `--consume-only`; no consumer group is ever created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_mode_reads_every_record_once_in_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(common::test_config(dir.path())).await;
    let target = format!("herald://{}", broker.addr);
    let base = [
        "--target",
        &target,
        "--consume-mode",
        "fetch",
        "--partitions",
        "3",
        "--keys",
        "30",
        "--record-size",
        "64",
        "--linger-ms",
        "1",
    ];
    let check = |summary: &Value, consumed: u64| {
        assert_eq!(summary["settings"]["consume_mode"], "fetch", "{summary:#}");
        assert_eq!(summary["consumed"]["records"], consumed, "{summary:#}");
        assert_eq!(summary["check"]["unique_consumed"], consumed, "{summary:#}");
        assert_eq!(summary["check"]["duplicates"], 0, "{summary:#}");
        assert_eq!(summary["check"]["out_of_order"], 0, "{summary:#}");
        assert_eq!(summary["errors"]["total"], 0, "{summary:#}");
        assert_eq!(summary["ok"], true, "{summary:#}");
    };

    // One run: the common arguments and `extra`, its summary written to `name`; it
    // must succeed and pass the checks.
    let run = async |extra: &[&str], name: &str, consumed: u64| {
        let all = args(&base).into_iter().chain(args(extra)).collect();
        let (output, summary) = run_load(all, &dir.path().join(name)).await;
        assert!(output.status.success(), "{summary:#}");
        check(&summary, consumed);
        summary
    };

    // Producing and fetching together: end-to-end latency is measured.
    let extra = ["--records", "10000", "--producers", "2", "--consumers", "2"];
    let summary = run(&extra, "concurrent.json", 10_000).await;
    assert_eq!(summary["check"]["lost"], 0, "{summary:#}");
    assert_eq!(summary["e2e_latency_us"]["count"], 10_000, "{summary:#}");

    // Preloaded: the consumers start after producing ended and stop at the count.
    let extra = [
        "--topic",
        "preloaded",
        "--preload",
        "10000",
        "--consumers",
        "2",
    ];
    let summary = run(&extra, "preload.json", 10_000).await;
    assert_eq!(summary["check"]["lost"], 0, "{summary:#}");

    // The same topic again, consume only, one consumer reading all three partitions.
    let extra = [
        "--topic",
        "preloaded",
        "--consume-only",
        "--records",
        "10000",
        "--consumers",
        "1",
    ];
    run(&extra, "consume-only.json", 10_000).await;

    let mut client = common::client(&broker).await;
    let groups = client
        .list_groups(herald_proto::v1::ListGroupsRequest { topic: None })
        .await
        .unwrap()
        .into_inner()
        .groups;
    assert!(groups.is_empty(), "fetch mode made groups: {groups:?}");

    common::stop(broker).await;
}
