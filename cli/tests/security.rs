//! The README's security setup on the real binary: `herald cert init` and `herald auth
//! hash-token` make the certificates and token, `herald serve` takes them from its
//! configuration and flags, the client commands connect with `--tls-ca` and
//! `HERALD_TOKEN`, `herald acl list` shows the rules, and SIGHUP reloads the ACL file.
//! `herald cert node` makes node certificates that two `herald serve` nodes use for
//! mutual TLS on their peer ports.

use std::path::Path;
use std::process::{Command, Output, Stdio};

mod common;

use common::{HERALD, Process, Server, free_ports, serve_command, serving_addr, signal, wait_for};

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(HERALD);
    command
        .args(args)
        .env_remove("HERALD_TOKEN")
        .env_remove("HERALD_SERVER")
        .stdin(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("herald runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn acl(dir: &Path, operations: &str) {
    std::fs::write(
        dir.join("acl.toml"),
        format!("[[rule]]\nprincipal = \"app\"\noperations = [{operations}]\nresource = \"topic\"\nname = \"app.\"\npattern = \"prefix\"\n"),
    )
    .unwrap();
}

#[test]
fn tls_tokens_and_an_acl_reloaded_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let made = run(&["cert", "init", "--dir", certs.to_str().unwrap()], &[]);
    assert!(made.status.success(), "{}", text(&made));
    let hashed = run(&["auth", "hash-token", "--principal", "app"], &[]);
    assert!(hashed.status.success(), "{}", text(&hashed));
    let printed = String::from_utf8(hashed.stdout).unwrap();
    let token = printed
        .lines()
        .nth(1)
        .unwrap()
        .trim_start_matches("# ")
        .to_owned();
    let entry: String = printed
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    acl(dir.path(), "\"describe\"");
    let config = dir.path().join("herald.toml");
    std::fs::write(
        &config,
        format!("acl_file = {:?}\n{entry}", dir.path().join("acl.toml")),
    )
    .unwrap();
    let listed = run(&["acl", "list", "--config", config.to_str().unwrap()], &[]);
    assert!(
        text(&listed).contains("allow \"app\" describe on topic prefix \"app.\""),
        "{}",
        text(&listed)
    );

    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--config",
            config.to_str().unwrap(),
            "--tls-cert",
            certs.join("server.pem").to_str().unwrap(),
            "--tls-key",
            certs.join("server.key").to_str().unwrap(),
        ],
    );
    let address = format!("localhost:{}", server.addr().port());
    let ca = certs.join("ca.pem");
    let client = |args: &[&str], token: Option<&str>| {
        let mut all = args.to_vec();
        all.extend(["--server", &address, "--tls-ca", ca.to_str().unwrap()]);
        run(
            &all,
            &token.map(|t| [("HERALD_TOKEN", t)]).unwrap_or_default()[..],
        )
    };

    let create = ["topic", "create", "app.events", "--partitions", "1"];
    let denied = client(&create, Some(&token));
    assert!(!denied.status.success());
    assert!(
        text(&denied).contains("PERMISSION_DENIED: permission denied: create on topic \"app.events\" for principal \"app\""),
        "{}",
        text(&denied)
    );
    let anonymous = client(&["topic", "list"], None);
    assert!(
        text(&anonymous).contains("UNAUTHENTICATED"),
        "{}",
        text(&anonymous)
    );

    acl(dir.path(), "\"describe\", \"create\"");
    signal(server.id(), "HUP");
    wait_for("the ACL reloaded", || {
        server
            .log()
            .iter()
            .any(|l| l.contains("ACL reloaded"))
            .then_some(())
            .ok_or("not yet")
    });
    let created = client(&create, Some(&token));
    assert!(created.status.success(), "{}", text(&created));
    let listed = client(&["topic", "list"], Some(&token));
    assert!(text(&listed).contains("app.events"), "{}", text(&listed));
    let (status, _) = server.terminate();
    assert!(status.success());
}

#[test]
fn node_certificates_from_cert_node_make_a_cluster_over_peer_tls() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let certs_arg = certs.to_str().unwrap();
    // Nodes 1 and 2 in one run; a later run reuses the cluster CA for another node.
    let made = run(
        &[
            "cert",
            "node",
            "--dir",
            certs_arg,
            "--node",
            "1=127.0.0.1",
            "--node",
            "2=127.0.0.1,localhost",
        ],
        &[],
    );
    assert!(made.status.success(), "{}", text(&made));
    let more = run(
        &["cert", "node", "--dir", certs_arg, "--node", "3=127.0.0.1"],
        &[],
    );
    assert!(
        more.status.success() && text(&more).contains("signing with the existing"),
        "{}",
        text(&more)
    );
    let again = run(
        &["cert", "node", "--dir", certs_arg, "--node", "3=127.0.0.1"],
        &[],
    );
    assert!(
        !again.status.success(),
        "a node's files are never overwritten"
    );
    let bad = run(&["cert", "node", "--dir", certs_arg, "--node", "x"], &[]);
    assert!(text(&bad).contains("ID=HOST"), "{}", text(&bad));

    let ports = free_ports(4);
    let members = format!("1={}@{},2={}@{}", ports[0], ports[1], ports[2], ports[3]);
    let plain_off_loopback = run(
        &[
            "serve",
            "--data-dir",
            dir.path().join("refused").to_str().unwrap(),
            "--node-id",
            "1",
            "--peer-listen",
            "0.0.0.0:0",
            "--initial-members",
            &members,
        ],
        &[],
    );
    assert!(
        text(&plain_off_loopback).contains("is not a loopback address and peer TLS is off"),
        "{}",
        text(&plain_off_loopback)
    );

    let file = |name: &str| certs.join(name).to_str().unwrap().to_owned();
    // Node 1 takes its peer TLS files from flags, node 2 from the environment.
    let node1 = Process::spawn(serve_command(
        &dir.path().join("n1"),
        &[
            "--node-id",
            "1",
            "--peer-listen",
            &ports[1].to_string(),
            "--initial-members",
            &members,
            "--peer-tls-cert",
            &file("node-1.pem"),
            "--peer-tls-key",
            &file("node-1.key"),
            "--peer-tls-ca",
            &file("cluster-ca.pem"),
        ],
    ));
    let mut command = serve_command(
        &dir.path().join("n2"),
        &[
            "--node-id",
            "2",
            "--peer-listen",
            &ports[3].to_string(),
            "--initial-members",
            &members,
        ],
    );
    command
        .env("HERALD_PEER_TLS_CERT", file("node-2.pem"))
        .env("HERALD_PEER_TLS_KEY", file("node-2.key"))
        .env("HERALD_PEER_TLS_CA", file("cluster-ca.pem"));
    let node2 = Process::spawn(command);
    // `serve_command` listens on port 0; the members name the client ports only for
    // redirects, so each node's actual client address is read from its log.
    let client1 = node1.wait_for_line("node 1 serves", serving_addr);
    node2.wait_for_line("node 2 serves", serving_addr);
    // Two nodes elect a leader only if each hears the other: over peer TLS.
    wait_for("both nodes agree on a leader, heard over peer TLS", || {
        let out = run(
            &[
                "cluster",
                "status",
                "--json",
                "--server",
                &client1.to_string(),
            ],
            &[],
        );
        let status: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {}", text(&out)))?;
        let heard = status["nodes"].as_array().is_some_and(|n| {
            n.iter()
                .any(|n| n["node_id"] == 2 && n["last_heard_ms_ago"].is_u64())
        });
        if status["metadata_leader"].is_u64() && heard {
            Ok(())
        } else {
            Err(status.to_string())
        }
    });
    for node in [node1, node2] {
        node.signal("TERM");
        let exited = node.wait();
        common::assert_no_panic(&exited.log, "herald serve");
        assert!(exited.status.success());
    }
}
