//! End-to-end tests of the `herald` command line: a real `herald serve` process, driven by
//! the `topic`, `publish`, `fetch`, `consume` and `group` subcommands of the same binary.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;

use serde_json::Value;

mod common;

use common::{HERALD, Process, Server, TIMEOUT, Text, free_ports, signal, wait_for};

/// Runs `herald ARGS` against `server` (through HERALD_SERVER), feeding `stdin`.
fn herald(server: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(HERALD)
        .args(args)
        .env("HERALD_SERVER", server)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("herald runs");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input).unwrap();
        // Dropping the pipe closes it: the command sees end of input.
    }
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(TIMEOUT) {
        Ok(output) => output.expect("herald output"),
        Err(_) => {
            signal(pid, "KILL");
            panic!(
                "`herald {}` did not finish within {TIMEOUT:?}",
                args.join(" ")
            );
        }
    }
}

/// Runs a command that must succeed and returns its stdout.
fn ok(server: &str, args: &[&str], stdin: Option<&[u8]>) -> String {
    let output = herald(server, args, stdin);
    assert!(
        output.status.success(),
        "`herald {}` failed with {}: {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("stdout is UTF-8")
}

/// Runs a command that must fail with exit code 1 and returns its stderr.
fn fails(server: &str, args: &[&str]) -> String {
    let output = herald(server, args, None);
    assert_eq!(
        output.status.code(),
        Some(1),
        "`herald {}` should exit with 1; stdout: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(
        output.stdout.is_empty(),
        "a failed command prints nothing on stdout"
    );
    String::from_utf8(output.stderr).expect("stderr is UTF-8")
}

fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}")))
        .collect()
}

/// (partition, first offset, last offset) of each line `publish` prints:
/// `partition P  offset O` or `partition P  offsets A-B  (N records)`.
fn publish_acks(stdout: &str) -> Vec<(u32, u64, u64)> {
    let acks: Vec<_> = stdout
        .lines()
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words[..] {
                ["partition", p, "offset", o] => {
                    (p.parse().unwrap(), o.parse().unwrap(), o.parse().unwrap())
                }
                ["partition", p, "offsets", range, n, "records)"] => {
                    let (a, b) = range.split_once('-').unwrap();
                    let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
                    assert_eq!(n, format!("({}", b - a + 1), "{line:?}");
                    (p.parse().unwrap(), a, b)
                }
                _ => panic!("unexpected publish output {line:?}"),
            }
        })
        .collect();
    assert!(!acks.is_empty(), "publish printed nothing");
    acks
}

/// The cells of the row of `partition` in the partition table of a `describe` output,
/// whose header must be `columns`.
fn table_row(describe: &str, columns: &[&str], partition: u32) -> Vec<String> {
    let mut rows = describe.lines().skip_while(|l| !l.starts_with("PARTITION"));
    let header: Vec<&str> = rows
        .next()
        .expect("a partition table")
        .split_whitespace()
        .collect();
    assert_eq!(header, columns);
    rows.map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .find(|cells| cells[0] == partition.to_string())
        .unwrap_or_else(|| panic!("no row for partition {partition} in\n{describe}"))
}

/// The cells of the partition table row of `partition` in `topic describe` output.
fn partition_row(describe: &str, partition: u32) -> Vec<String> {
    const COLUMNS: [&str; 7] = [
        "PARTITION",
        "START",
        "END",
        "RECORDS",
        "SIZE_BYTES",
        "ALLOCATED_BYTES",
        "SEGMENTS",
    ];
    table_row(describe, &COLUMNS, partition)
}

#[test]
fn topic_publish_fetch_describe_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let url = server.url();
    let url = url.as_str();

    // Topics.
    assert_eq!(ok(url, &["topic", "list"], None), "no topics\n");
    let created = ok(
        url,
        &[
            "topic",
            "create",
            "events",
            "--partitions",
            "2",
            "--retention-ms",
            "3600000",
            "--fsync",
            "never",
        ],
        None,
    );
    assert_eq!(created, "created topic \"events\" with 2 partitions\n");
    ok(
        url,
        &["topic", "create", "other", "--partitions", "1"],
        None,
    );
    assert_eq!(
        ok(url, &["topic", "list"], None),
        "NAME    PARTITIONS\nevents  2\nother   1\n"
    );

    // Publish from stdin, with a key and headers: one batch, one partition (the key's).
    let published = ok(
        url,
        &[
            "publish",
            "events",
            "--key",
            "user-1",
            "--header",
            "source=cli-test",
            "--header",
            "trace=t=1",
        ],
        Some(b"one\ntwo with  spaces\r\n\xff\xfebinary\n\nlast line without newline"),
    );
    // Lines read from a pipe go in as few requests as they arrive in: one ack line each.
    let acked = publish_acks(&published);
    let partition = acked[0].0;
    assert!(partition < 2);
    assert!(acked.iter().all(|a| a.0 == partition), "{published:?}");
    let offsets: Vec<u64> = acked.iter().flat_map(|a| a.1..=a.2).collect();
    assert_eq!(offsets, [0, 1, 2, 3, 4], "{published:?}");

    // Values from arguments, to an explicit partition; --json acks.
    let acks = json_lines(&ok(
        url,
        &["publish", "events", "--partition", "1", "--json", "x", "y"],
        None,
    ));
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0]["partition"], 1);
    assert_eq!(acks[0]["records"], 2);
    let expected_base = if partition == 1 { 5 } else { 0 };
    assert_eq!(acks[0]["base_offset"], expected_base);
    assert_eq!(acks[0]["last_offset"], expected_base + 1);

    // Fetch: `offset<TAB>key<TAB>value<TAB>[headers]`, non-UTF-8 shown lossily.
    let p = partition.to_string();
    let fetched = ok(url, &["fetch", "events", "--partition", &p], None);
    let headers = "[source=cli-test, trace=t=1]";
    let mut expected: Vec<String> = [
        "one",
        "two with  spaces",
        "\u{fffd}\u{fffd}binary",
        "",
        "last line without newline",
    ]
    .iter()
    .enumerate()
    .map(|(i, v)| format!("{i}\tuser-1\t{v}\t{headers}"))
    .collect();
    if partition == 1 {
        expected.push("5\t-\tx".into());
        expected.push("6\t-\ty".into());
    }
    assert_eq!(fetched.lines().collect::<Vec<_>>(), expected);

    // Positions and limits.
    assert_eq!(
        ok(
            url,
            &[
                "fetch",
                "events",
                "--partition",
                &p,
                "--from",
                "1",
                "--max-records",
                "1"
            ],
            None
        ),
        format!("{}\n", expected[1])
    );
    assert_eq!(
        ok(
            url,
            &["fetch", "events", "--partition", &p, "--from", "latest"],
            None
        ),
        ""
    );
    assert_eq!(
        ok(
            url,
            &[
                "fetch",
                "events",
                "--partition",
                &p,
                "--from",
                "ts:0",
                "--max-records",
                "2"
            ],
            None
        )
        .lines()
        .count(),
        2
    );
    assert_eq!(
        ok(
            url,
            &[
                "fetch",
                "events",
                "--partition",
                &p,
                "--from",
                "ts:99999999999999"
            ],
            None
        ),
        ""
    );

    // Fetch --json: every record a JSON object; bytes that are not UTF-8 come as base64.
    let records = json_lines(&ok(
        url,
        &[
            "fetch",
            "events",
            "--partition",
            &p,
            "--json",
            "--max-records",
            "5",
        ],
        None,
    ));
    assert_eq!(records.len(), 5);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["topic"], "events");
        assert_eq!(r["partition"], partition);
        assert_eq!(r["offset"], i as u64);
        assert_eq!(r["key"], "user-1");
        assert!(r["timestamp_ms"].as_i64().unwrap() > 1_600_000_000_000);
        assert_eq!(
            r["headers"],
            serde_json::json!([
                {"key": "source", "value": "cli-test"},
                {"key": "trace", "value": "t=1"},
            ])
        );
    }
    assert_eq!(records[1]["value"], "two with  spaces");
    assert_eq!(
        records[2]["value"],
        serde_json::json!({"base64": "//5iaW5hcnk="})
    );
    assert_eq!(records[3]["value"], "");

    // Describe shows the end offsets.
    let end = if partition == 1 { 7 } else { 5 };
    let describe = ok(url, &["topic", "describe", "events"], None);
    assert!(describe.starts_with("topic              events\npartitions         2\n"));
    assert!(
        describe.contains("retention_ms       3600000\n"),
        "{describe}"
    );
    assert!(
        describe.contains("fsync              never\n"),
        "{describe}"
    );
    let row = partition_row(&describe, partition);
    assert_eq!(
        row[1..4],
        ["0".to_owned(), end.to_string(), end.to_string()]
    );
    let description = json_lines(&ok(url, &["topic", "describe", "events", "--json"], None));
    assert_eq!(description.len(), 1);
    let d = &description[0];
    assert_eq!(d["name"], "events");
    assert_eq!(d["partition_count"], 2);
    assert_eq!(d["config"]["retention_ms"], 3_600_000);
    assert_eq!(d["config"]["fsync"], "never");
    assert_eq!(d["partitions"][partition as usize]["end_offset"], end);
    let listed = json_lines(&ok(url, &["topic", "list", "--json"], None));
    assert_eq!(
        listed,
        [
            serde_json::json!({"name": "events", "partition_count": 2}),
            serde_json::json!({"name": "other", "partition_count": 1}),
        ]
    );

    // Errors: the gRPC code and message on stderr, exit code 1.
    let stderr = fails(url, &["publish", "missing", "value"]);
    assert_eq!(
        stderr,
        "error: NOT_FOUND: topic \"missing\" does not exist\n"
    );
    let stderr = fails(url, &["fetch", "events", "--partition", "7"]);
    assert!(stderr.starts_with("error: NOT_FOUND: "), "{stderr}");
    let stderr = fails(url, &["fetch", "events", "--partition", &p, "--from", "99"]);
    assert!(stderr.starts_with("error: OUT_OF_RANGE: "), "{stderr}");
    let stderr = fails(url, &["topic", "create", "events", "--partitions", "1"]);
    assert!(stderr.starts_with("error: ALREADY_EXISTS: "), "{stderr}");
    let stderr = fails(url, &["topic", "create", "bad/name", "--partitions", "1"]);
    assert!(stderr.starts_with("error: INVALID_ARGUMENT: "), "{stderr}");
    let stderr = fails(url, &["topic", "describe", "missing"]);
    assert!(stderr.starts_with("error: NOT_FOUND: "), "{stderr}");

    // Alter: settings and partitions, and the refusals.
    let altered = json_lines(&ok(
        url,
        &[
            "topic",
            "alter",
            "other",
            "--partitions",
            "3",
            "--retention-bytes",
            "1048576",
            "--json",
        ],
        None,
    ));
    assert_eq!(altered[0]["partition_count"], 3);
    assert_eq!(altered[0]["config"]["retention_bytes"], 1_048_576);
    let text = ok(
        url,
        &["topic", "alter", "other", "--retention-ms", "60000"],
        None,
    );
    assert!(text.starts_with("altered topic \"other\"\n"), "{text}");
    let stderr = fails(url, &["topic", "alter", "other", "--partitions", "2"]);
    assert!(
        stderr.starts_with("error: INVALID_ARGUMENT: ") && stderr.contains("not removed"),
        "{stderr}"
    );
    let stderr = fails(url, &["topic", "alter", "missing", "--partitions", "2"]);
    assert!(stderr.starts_with("error: NOT_FOUND: "), "{stderr}");
    let stderr = fails(url, &["topic", "alter", "other"]);
    assert!(stderr.contains("nothing to change"), "{stderr}");

    // Delete.
    assert_eq!(
        ok(url, &["topic", "delete", "other"], None),
        "deleted topic \"other\"\n"
    );
    assert_eq!(
        ok(url, &["topic", "list"], None),
        "NAME    PARTITIONS\nevents  2\n"
    );
    let stderr = fails(url, &["topic", "delete", "other"]);
    assert!(stderr.starts_with("error: NOT_FOUND: "), "{stderr}");

    let (status, log) = server.terminate();
    assert!(status.success(), "herald serve exited with {status}");
    assert!(
        log.iter().any(|l| l.contains("stopped cleanly")),
        "no clean stop in the log:\n{}",
        log.join("\n")
    );
}

#[test]
fn fetch_follow_tails_until_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let url = server.url();
    ok(
        &url,
        &["topic", "create", "tail", "--partitions", "1"],
        None,
    );
    ok(&url, &["publish", "tail", "before"], None);

    let mut command = Command::new(HERALD);
    command
        .args(["fetch", "tail", "--follow", "--server", &url])
        .env_remove("HERALD_SERVER");
    let follower = Process::spawn(command);
    // Without --partition every partition is read, and each line starts with it.
    assert_eq!(follower.wait_for_stdout(1), ["0\t0\t-\tbefore"]);
    // Records published after the stream caught up arrive on it, each as it comes.
    ok(&url, &["publish", "tail", "--key", "k", "after-1"], None);
    assert_eq!(follower.wait_for_stdout(2)[1], "0\t1\tk\tafter-1");
    ok(&url, &["publish", "tail", "after-2", "after-3"], None);
    assert_eq!(
        follower.wait_for_stdout(4)[2..],
        ["0\t2\t-\tafter-2", "0\t3\t-\tafter-3"]
    );

    // Ctrl-C ends it cleanly, having printed nothing more.
    follower.signal("INT");
    let exited = follower.wait();
    assert!(
        exited.status.success(),
        "fetch --follow exited with {} on SIGINT",
        exited.status
    );
    assert_eq!(exited.stdout.len(), 4, "{:?}", exited.stdout);

    let (status, _) = server.terminate();
    assert!(status.success(), "herald serve exited with {status}");
}

#[test]
fn fetch_merges_every_partition_by_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let url = server.url();
    ok(
        &url,
        &["topic", "create", "spread", "--partitions", "3"],
        None,
    );
    for i in 0..9 {
        let partition = (i * 2 % 3).to_string();
        let value = format!("v{i}");
        ok(
            &url,
            &["publish", "spread", "--partition", &partition, &value],
            None,
        );
    }
    let records = json_lines(&ok(&url, &["fetch", "spread", "--json"], None));
    assert_eq!(records.len(), 9);
    // In timestamp order (ties: partition, then offset), each partition's in offset order.
    let key = |r: &Value| {
        (
            r["timestamp_ms"].as_i64().unwrap(),
            r["partition"].as_u64().unwrap(),
            r["offset"].as_u64().unwrap(),
        )
    };
    assert!(
        records.windows(2).all(|w| key(&w[0]) <= key(&w[1])),
        "{records:?}"
    );
    let mut partitions: Vec<u64> = records
        .iter()
        .map(|r| r["partition"].as_u64().unwrap())
        .collect();
    partitions.sort_unstable();
    assert_eq!(partitions, [0, 0, 0, 1, 1, 1, 2, 2, 2]);

    // Text shows the partition first; --limit counts records across partitions.
    let text = ok(&url, &["fetch", "spread", "--limit", "4"], None);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines.iter().all(|l| l.split('\t').count() == 4), "{text}");
    // The old name of the flag still works.
    let text = ok(&url, &["fetch", "spread", "--max-records", "2"], None);
    assert_eq!(text.lines().count(), 2, "{text}");
    // With --partition, one partition, as before: no partition column.
    let text = ok(&url, &["fetch", "spread", "--partition", "1"], None);
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.lines().all(|l| l.split('\t').count() == 3), "{text}");

    // Times: an hour ago reads everything; a time after the last record reads nothing.
    assert_eq!(
        ok(&url, &["fetch", "spread", "--from", "-1h"], None)
            .lines()
            .count(),
        9
    );
    assert_eq!(
        ok(
            &url,
            &["fetch", "spread", "--from", "2999-01-01T00:00:00Z"],
            None
        ),
        ""
    );
    // A time without a zone is a usage error (exit 2) that says which form to use.
    let refused = herald(
        &url,
        &["fetch", "spread", "--from", "2026-12-07 10:00"],
        None,
    );
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("RFC 3339"), "{stderr}");

    let (status, _) = server.terminate();
    assert!(status.success(), "herald serve exited with {status}");
}

#[test]
fn publish_keys_per_line_and_groups_update_and_list_pending() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let url = server.url();
    ok(
        &url,
        &["topic", "create", "keyed", "--partitions", "4"],
        None,
    );
    // KEY:VALUE per line: each record keyed, placed by its key, the separator removed.
    let input = b"user-1:a=1\nuser-2:b\nuser-1:c\n";
    ok(
        &url,
        &[
            "publish",
            "keyed",
            "--key-separator",
            ":",
            "--header",
            "src=cli",
        ],
        Some(input),
    );
    let records = json_lines(&ok(&url, &["fetch", "keyed", "--json"], None));
    assert_eq!(records.len(), 3);
    let find = |value: &str| {
        records
            .iter()
            .find(|r| r["value"] == value)
            .unwrap_or_else(|| panic!("{value} not fetched: {records:?}"))
    };
    assert_eq!(find("a=1")["key"], "user-1");
    assert_eq!(find("b")["key"], "user-2");
    assert_eq!(find("c")["key"], "user-1");
    assert_eq!(find("a=1")["partition"], find("c")["partition"]);
    assert_eq!(find("b")["headers"][0]["key"], "src");
    // A line without the separator is refused, naming it.
    let stderr = fails(
        &url,
        &["publish", "keyed", "--key-separator", "|", "k|v", "novalue"],
    );
    assert!(stderr.contains("value 2 has no key separator"), "{stderr}");

    // group update changes what it is given and keeps the rest.
    ok(
        &url,
        &[
            "group",
            "create",
            "keyed",
            "g",
            "--from",
            "earliest",
            "--ack-deadline-ms",
            "60000",
        ],
        None,
    );
    let updated = json_lines(&ok(
        &url,
        &[
            "group",
            "update",
            "keyed",
            "g",
            "--ordering",
            "none",
            "--json",
        ],
        None,
    ));
    assert_eq!(updated[0]["settings"]["ordering"], "none");
    assert_eq!(updated[0]["settings"]["ack_deadline_ms"], 60000);

    // Nacked messages wait out their backoff: group pending lists them.
    ok(
        &url,
        &["consume", "keyed", "--group", "g", "--nack", "--limit", "3"],
        None,
    );
    let pending = json_lines(&ok(
        &url,
        &["group", "pending", "keyed", "g", "--json"],
        None,
    ));
    assert_eq!(pending.len(), 3, "{pending:?}");
    assert!(
        pending
            .iter()
            .all(|p| p["state"] == "backoff" && p["delivery_attempt"] == 1)
    );
    let only = json_lines(&ok(
        &url,
        &[
            "group", "pending", "keyed", "g", "--key", "user-2", "--json",
        ],
        None,
    ));
    assert_eq!(only.len(), 1, "{only:?}");
    assert_eq!(only[0]["key"], "user-2");
    let text = ok(
        &url,
        &["group", "pending", "keyed", "g", "--limit", "1"],
        None,
    );
    assert!(text.starts_with("PARTITION  OFFSET  KEY"), "{text}");
    assert!(
        text.contains("more pending messages than --limit"),
        "{text}"
    );

    let (status, _) = server.terminate();
    assert!(status.success(), "herald serve exited with {status}");
}

#[test]
fn errors_follow_json_and_name_their_environment_variable() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let url = server.url();
    // With --json the error is one JSON object, code and message apart.
    let stderr = fails(&url, &["topic", "describe", "nope", "--json"]);
    let error: Value = serde_json::from_str(stderr.trim()).expect("a JSON error");
    assert_eq!(error["error"]["code"], "NOT_FOUND");
    assert!(
        error["error"]["message"].as_str().unwrap().contains("nope"),
        "{error}"
    );
    let (status, _) = server.terminate();
    assert!(status.success());

    // A bad value from the environment names the variable.
    let output = Command::new(HERALD)
        .args(["serve"])
        .env("HERALD_LISTEN", "nowhere")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("environment variable HERALD_LISTEN"),
        "{stderr}"
    );
    let stderr = fails("http://[bad", &["topic", "list"]);
    assert!(stderr.contains("HERALD_SERVER"), "{stderr}");

    // Shell completions.
    let output = Command::new(HERALD)
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let script = String::from_utf8_lossy(&output.stdout);
    assert!(
        script.contains("_herald()") && script.contains("pending"),
        "{script}"
    );
}

/// `herald serve` on `data_dir` and the given gRPC address, waiting until it serves.
fn serve_at(data_dir: &std::path::Path, addr: std::net::SocketAddr) -> Process {
    let mut command = Command::new(HERALD);
    command
        .args(["serve", "--log-json", "--data-dir"])
        .arg(data_dir)
        .args([
            "--listen",
            &addr.to_string(),
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        // Small segments: recovery after the kill -9 scans less.
        .args(["--segment-bytes", "4194304"])
        .env_remove("HERALD_CONFIG")
        .env_remove("HERALD_FSYNC")
        .env("RUST_LOG", "info");
    let process = Process::spawn(command);
    process.wait_for_line("the broker serves", common::serving_addr);
    process
}

#[test]
fn fetch_follow_reconnects_when_the_broker_restarts() {
    let dir = tempfile::tempdir().unwrap();
    // A fixed address, so the restarted broker is where the follower looks.
    let addr = free_ports(1)[0];
    let url = format!("http://{addr}");
    let broker = serve_at(dir.path(), addr);
    ok(
        &url,
        &["topic", "create", "kept", "--partitions", "2"],
        None,
    );
    ok(
        &url,
        &["publish", "kept", "--partition", "1", "first"],
        None,
    );

    let mut command = Command::new(HERALD);
    command
        .args(["fetch", "kept", "--follow", "--server", &url])
        .env_remove("HERALD_SERVER");
    let follower = Process::spawn(command);
    assert_eq!(follower.wait_for_stdout(1), ["1\t0\t-\tfirst"]);

    broker.kill9();
    let broker = serve_at(dir.path(), addr);
    ok(
        &url,
        &["publish", "kept", "--partition", "0", "second"],
        None,
    );
    ok(
        &url,
        &["publish", "kept", "--partition", "1", "third"],
        None,
    );
    // Nothing printed twice, nothing missed: it went on from where it was.
    let mut lines = follower.wait_for_stdout(3)[1..].to_vec();
    lines.sort();
    assert_eq!(lines, ["0\t0\t-\tsecond", "1\t1\t-\tthird"]);
    assert!(
        follower.log().iter().any(|l| l.contains("reconnecting")),
        "{:?}",
        follower.log()
    );

    follower.signal("INT");
    let exited = follower.wait();
    assert!(exited.status.success(), "{:?}", exited.log);
    assert_eq!(exited.stdout.len(), 3, "{:?}", exited.stdout);
    broker.signal("TERM");
    assert!(broker.wait().status.success());
}

#[test]
fn unreachable_broker_is_an_error() {
    // A port nobody listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = format!("127.0.0.1:{port}");
    let stderr = fails(&server, &["topic", "list"]);
    assert!(
        stderr.starts_with(&format!(
            "error: UNAVAILABLE: cannot connect to the broker at http://{server}: "
        )),
        "{stderr}"
    );
    // --server wins over HERALD_SERVER.
    let output = herald(
        "http://127.0.0.1:1",
        &["topic", "list", "--server", &server],
        None,
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains(&server));
}

/// The cells of the partition table row of `partition` in `group describe` output.
fn group_row(describe: &str, partition: u32) -> Vec<String> {
    const COLUMNS: [&str; 8] = [
        "PARTITION",
        "COMMITTED",
        "END",
        "LAG",
        "IN_FLIGHT",
        "REDELIVERED",
        "DEAD_LETTERED",
        "OWNER",
    ];
    table_row(describe, &COLUMNS, partition)
}

/// (partition, offset, attempt, key, value) of each line `consume` prints.
fn deliveries(stdout: &str) -> Vec<(u32, u64, u32, String, String)> {
    stdout
        .lines()
        .map(|line| match line.split('\t').collect::<Vec<_>>()[..] {
            [p, o, a, k, v] => (
                p.parse().unwrap(),
                o.parse().unwrap(),
                a.parse().unwrap(),
                k.to_owned(),
                v.to_owned(),
            ),
            _ => panic!("unexpected consume output {line:?}"),
        })
        .collect()
}

/// The values of `deliveries`, sorted.
fn sorted_values(deliveries: &[(u32, u64, u32, String, String)]) -> Vec<String> {
    let mut values: Vec<String> = deliveries.iter().map(|d| d.4.clone()).collect();
    values.sort();
    values
}

#[test]
fn consume_acks_and_groups_are_administered() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let url = server.url();
    let url = url.as_str();

    ok(url, &["topic", "create", "jobs", "--partitions", "2"], None);
    ok(
        url,
        &["publish", "jobs", "--partition", "0", "a", "b", "c"],
        None,
    );
    ok(
        url,
        &[
            "publish",
            "jobs",
            "--partition",
            "1",
            "--key",
            "k",
            "d",
            "e",
        ],
        None,
    );
    assert_eq!(ok(url, &["group", "list"], None), "no groups\n");

    // The first consume creates the group at the earliest offsets and gets every message
    // once, then leaves (holding up to two of key "k" at once).
    let consume = [
        "consume",
        "jobs",
        "--group",
        "g",
        "--from",
        "earliest",
        "--max",
        "5",
        "--max-in-flight-per-key",
        "2",
    ];
    let got = deliveries(&ok(url, &consume, None));
    assert_eq!(sorted_values(&got), ["a", "b", "c", "d", "e"]);
    for (partition, offset, attempt, key, value) in &got {
        assert_eq!(*attempt, 1);
        let (expected_key, expected_offset) = match (*partition, value.as_str()) {
            (0, "a") => ("-", 0),
            (0, "b") => ("-", 1),
            (0, "c") => ("-", 2),
            (1, "d") => ("k", 0),
            (1, "e") => ("k", 1),
            other => panic!("unexpected delivery {other:?}"),
        };
        assert_eq!((key.as_str(), *offset), (expected_key, expected_offset));
    }

    // They were acked: committed at the end, no lag, nothing in flight, no member left.
    let describe = ok(url, &["group", "describe", "jobs", "g"], None);
    assert!(
        describe.starts_with("topic                  jobs\ngroup                  g\n"),
        "{describe}"
    );
    assert!(
        describe.contains("\nordering               key\n"),
        "{describe}"
    );
    assert!(describe.contains("\nno members\n"), "{describe}");
    assert_eq!(
        group_row(&describe, 0)[1..7],
        ["3", "3", "0", "0", "0", "0"]
    );
    assert_eq!(
        group_row(&describe, 1)[1..7],
        ["2", "2", "0", "0", "0", "0"]
    );
    assert_eq!(group_row(&describe, 1)[7], "-");
    let described = json_lines(&ok(
        url,
        &["group", "describe", "jobs", "g", "--json"],
        None,
    ));
    assert_eq!(described.len(), 1);
    let d = &described[0];
    assert_eq!((&d["topic"], &d["group"]), (&"jobs".into(), &"g".into()));
    assert_eq!(d["settings"]["ack_deadline_ms"], 30_000);
    assert_eq!(d["settings"]["dead_letter_topic"], Value::Null);
    assert_eq!(d["members"], serde_json::json!([]));
    assert_eq!(d["partitions"][0]["committed_offset"], 3);
    assert_eq!(d["partitions"][1]["lag"], 0);

    // A second consumer gets nothing new; it shows as a member while it runs, and Ctrl-C
    // ends it cleanly.
    let mut command = Command::new(HERALD);
    command
        .args(["consume", "jobs", "--group", "g", "--client-id", "cli-test"])
        .env("HERALD_SERVER", url);
    let consumer = Process::spawn(command);
    let describe = wait_for("the consumer joins", || {
        let describe = ok(url, &["group", "describe", "jobs", "g"], None);
        if describe.contains("cli-test") {
            Ok(describe)
        } else {
            Err(Text(describe))
        }
    });
    let member = describe
        .lines()
        .skip_while(|l| !l.starts_with("MEMBER"))
        .nth(1)
        .expect("a member row")
        .split_whitespace()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    assert_eq!(member[1..], ["cli-test".to_owned(), "0,1".to_owned()]);
    assert_eq!(group_row(&describe, 0)[7], member[0]);
    // Its partitions have nothing left to deliver and nothing in flight.
    for partition in 0..2 {
        assert_eq!(
            group_row(&describe, partition)[3..5],
            ["0", "0"],
            "{describe}"
        );
    }
    assert_eq!(
        ok(url, &["group", "list"], None),
        "TOPIC  GROUP  MEMBERS\njobs   g      1\n"
    );
    consumer.signal("INT");
    let exited = consumer.wait();
    assert!(
        exited.status.success(),
        "consume exited with {} on SIGINT",
        exited.status
    );
    assert!(
        exited.stdout.is_empty(),
        "everything was acked already: {:?}",
        exited.stdout
    );
    assert_eq!(
        json_lines(&ok(url, &["group", "list", "jobs", "--json"], None)),
        [serde_json::json!({"topic": "jobs", "group": "g", "member_count": 0})]
    );

    // Seek back: the messages come again.
    assert_eq!(
        ok(
            url,
            &["group", "seek", "jobs", "g", "--to", "earliest"],
            None
        ),
        "partition 0  committed offset 0\npartition 1  committed offset 0\n"
    );
    let again = json_lines(&ok(
        url,
        &["consume", "jobs", "--group", "g", "--max", "5", "--json"],
        None,
    ));
    let mut values: Vec<&str> = again.iter().map(|d| d["value"].as_str().unwrap()).collect();
    values.sort_unstable();
    assert_eq!(values, ["a", "b", "c", "d", "e"]);
    assert!(
        again
            .iter()
            .all(|d| d["topic"] == "jobs" && d["group"] == "g")
    );
    let seek = json_lines(&ok(
        url,
        &[
            "group",
            "seek",
            "jobs",
            "g",
            "--to",
            "2",
            "--partition",
            "0",
            "--json",
        ],
        None,
    ));
    assert_eq!(
        seek,
        [serde_json::json!({
            "topic": "jobs",
            "group": "g",
            "partitions": [{"partition": 0, "committed_offset": 2}],
        })]
    );
    // Only partition 0 moved back: just its last message is due again.
    let rest = deliveries(&ok(
        url,
        &["consume", "jobs", "--group", "g", "--max", "1"],
        None,
    ));
    assert_eq!(rest.len(), 1);
    let (partition, offset, _, key, value) = &rest[0];
    assert_eq!(
        (*partition, *offset, key.as_str(), value.as_str()),
        (0, 2, "-", "c")
    );

    // Errors.
    let stderr = fails(url, &["group", "describe", "jobs", "missing"]);
    assert!(stderr.starts_with("error: NOT_FOUND: "), "{stderr}");
    let stderr = fails(url, &["group", "create", "jobs", "g"]);
    assert!(stderr.starts_with("error: ALREADY_EXISTS: "), "{stderr}");
    let stderr = fails(url, &["consume", "missing", "--group", "g", "--max", "1"]);
    assert!(stderr.starts_with("error: NOT_FOUND: "), "{stderr}");
    let stderr = fails(
        url,
        &[
            "group",
            "seek",
            "jobs",
            "g",
            "--to",
            "99",
            "--partition",
            "0",
        ],
    );
    assert!(stderr.starts_with("error: OUT_OF_RANGE: "), "{stderr}");
    let stderr = fails(url, &["group", "redrive", "jobs", "g"]);
    assert!(
        stderr.starts_with("error: FAILED_PRECONDITION: "),
        "{stderr}"
    );

    // Delete.
    assert_eq!(
        ok(url, &["group", "delete", "jobs", "g"], None),
        "deleted group \"g\" of topic \"jobs\"\n"
    );
    assert_eq!(ok(url, &["group", "list"], None), "no groups\n");
    let stderr = fails(url, &["group", "delete", "jobs", "g"]);
    assert!(stderr.starts_with("error: NOT_FOUND: "), "{stderr}");

    let (status, _) = server.terminate();
    assert!(status.success(), "herald serve exited with {status}");
}

#[test]
fn consume_nack_dead_letters_and_redrive() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let url = server.url();
    let url = url.as_str();

    ok(url, &["topic", "create", "work", "--partitions", "1"], None);
    ok(
        url,
        &["topic", "create", "work-dlq", "--partitions", "1"],
        None,
    );
    let stderr = fails(
        url,
        &[
            "group",
            "create",
            "work",
            "nodlq",
            "--max-delivery-attempts",
            "2",
        ],
    );
    assert!(stderr.starts_with("error: INVALID_ARGUMENT: "), "{stderr}");
    let created = ok(
        url,
        &[
            "group",
            "create",
            "work",
            "retry",
            "--max-delivery-attempts",
            "2",
            "--dead-letter-topic",
            "work-dlq",
            "--ordering",
            "partition",
            "--ack-deadline-ms",
            "5000",
            "--retry-backoff-min-ms",
            "20",
            "--retry-backoff-max-ms",
            "40",
            "--from",
            "earliest",
        ],
        None,
    );
    assert_eq!(created, "created group \"retry\" of topic \"work\"\n");
    let describe = ok(url, &["group", "describe", "work", "retry"], None);
    for line in [
        "ack_deadline_ms        5000",
        "retry_backoff_min_ms   20",
        "retry_backoff_max_ms   40",
        "max_delivery_attempts  2",
        "dead_letter_topic      work-dlq",
        "ordering               partition",
    ] {
        assert!(describe.contains(&format!("\n{line}\n")), "{describe}");
    }
    ok(url, &["publish", "work", "--key", "k", "poison"], None);

    // Nacked twice, then dead-lettered.
    let nacked = ok(
        url,
        &[
            "consume", "work", "--group", "retry", "--nack", "--max", "2",
        ],
        None,
    );
    assert_eq!(nacked, "0\t0\t1\tk\tpoison\n0\t0\t2\tk\tpoison\n");
    let describe = wait_for("the message is dead-lettered", || {
        let describe = ok(url, &["group", "describe", "work", "retry"], None);
        if group_row(&describe, 0)[6] == "1" {
            Ok(describe)
        } else {
            Err(Text(describe))
        }
    });
    assert_eq!(
        group_row(&describe, 0)[1..8],
        ["1", "1", "0", "0", "1", "1", "-"]
    );
    let dead = json_lines(&ok(url, &["fetch", "work-dlq", "--json"], None));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(
        (&dead[0]["key"], &dead[0]["value"]),
        (&"k".into(), &"poison".into())
    );
    let header = |name: &str| {
        dead[0]["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["key"] == name)
            .unwrap_or_else(|| panic!("no {name} header in {dead:?}"))["value"]
            .clone()
    };
    assert_eq!(header("herald-dlq-reason"), "nacked by herald consume");
    assert_eq!(header("herald-dlq-attempts"), "2");
    assert_eq!(header("herald-dlq-group"), "retry");

    // Redrive puts it back on the topic, where the group gets it again.
    assert_eq!(
        ok(url, &["group", "redrive", "work", "retry"], None),
        "redrove 1 message to topic \"work\"\n"
    );
    assert_eq!(
        ok(
            url,
            &["consume", "work", "--group", "retry", "--max", "1"],
            None
        ),
        "0\t1\t1\tk\tpoison\n"
    );
    let described = json_lines(&ok(
        url,
        &["group", "describe", "work", "retry", "--json"],
        None,
    ));
    assert_eq!(described[0]["partitions"][0]["committed_offset"], 2);
    assert_eq!(described[0]["partitions"][0]["lag"], 0);

    let (status, _) = server.terminate();
    assert!(status.success(), "herald serve exited with {status}");
}
