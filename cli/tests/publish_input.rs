//! `herald publish --input json` against a real broker: each line a record with its own
//! key and headers, as `fetch --json` prints them, so the two copy records between
//! topics.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

mod common;

use common::{HERALD, Server};

/// `herald ARGS` against `url`, with `stdin`.
fn herald(url: &str, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(HERALD)
        .args(args)
        .args(["--server", url])
        .env_remove("HERALD_SERVER")
        .env_remove("HERALD_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("herald runs");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let mut child = child;
    common::wait_timeout(&mut child);
    child.wait_with_output().unwrap()
}

fn ok(url: &str, args: &[&str], stdin: &[u8]) -> String {
    let output = herald(url, args, stdin);
    assert!(
        output.status.success(),
        "herald {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Key, value and headers of each record of `topic`, in a stable order.
fn records(url: &str, topic: &str) -> Vec<Value> {
    let mut records: Vec<Value> = ok(url, &["fetch", topic, "--json"], b"")
        .lines()
        .map(|line| {
            let record: Value = serde_json::from_str(line).unwrap();
            json!({"key": record["key"], "value": record["value"], "headers": record["headers"]})
        })
        .collect();
    records.sort_by_key(|r| r["value"].to_string());
    records
}

#[test]
fn json_lines_carry_their_own_keys_and_headers() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let url = server.url();
    for topic in ["source", "copy"] {
        ok(&url, &["topic", "create", topic, "--partitions", "3"], b"");
    }

    let input = concat!(
        r#"{"key": "order-1", "value": "created", "headers": [{"key": "trace", "value": "t-1"}, {"key": "bin", "value": {"base64": "AP8="}}]}"#,
        "\n",
        r#"{"value": "no key", "headers": {"source": "shop"}}"#,
        "\n",
        r#"{"key": null, "value": {"base64": "//4="}, "partition": 9, "offset": 7}"#,
        "\n",
    );
    ok(
        &url,
        &[
            "publish", "source", "--input", "json", "--header", "via=cli",
        ],
        input.as_bytes(),
    );
    let stored = records(&url, "source");
    let via = json!({"key": "via", "value": "cli"});
    assert_eq!(
        stored,
        [
            json!({"key": "order-1", "value": "created", "headers": [
                {"key": "trace", "value": "t-1"},
                {"key": "bin", "value": {"base64": "AP8="}},
                via,
            ]}),
            json!({"key": null, "value": "no key", "headers": [{"key": "source", "value": "shop"}, via]}),
            json!({"key": null, "value": {"base64": "//4="}, "headers": [via]}),
        ],
    );
    // A keyed record goes where its key says, as with --key.
    let partition = |topic: &str| {
        ok(&url, &["fetch", topic, "--json"], b"")
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find(|r| r["key"] == "order-1")
            .unwrap()["partition"]
            .clone()
    };

    // fetch --json into publish --input json copies the records, keys and headers alike.
    let fetched = ok(&url, &["fetch", "source", "--json"], b"");
    ok(
        &url,
        &["publish", "copy", "--input", "json"],
        fetched.as_bytes(),
    );
    assert_eq!(records(&url, "copy"), stored);
    assert_eq!(partition("copy"), partition("source"));

    // A line that is no record is refused, naming it; nothing of its request is sent.
    let output = herald(
        &url,
        &["publish", "copy", "--input", "json"],
        b"{\"value\": \"fine\"}\n{\"key\": \"k\"}\n",
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("line 2 is not a record: it has no \"value\""),
        "{stderr}"
    );
    assert_eq!(records(&url, "copy").len(), 3);
    // --input json brings its own keys: --key and --key-separator do not go with it.
    let output = herald(
        &url,
        &["publish", "copy", "--input", "json", "--key", "k"],
        b"",
    );
    assert_eq!(output.status.code(), Some(2));

    let (status, _) = server.terminate();
    assert!(status.success());
}
