//! The README's security setup on the real binary: `herald cert init` and `herald auth
//! hash-token` make the certificates and token, `herald serve` takes them from its
//! configuration and flags, the client commands connect with `--tls-ca` and
//! `HERALD_TOKEN`, `herald acl list` shows the rules, and SIGHUP reloads the ACL file.

use std::path::Path;
use std::process::{Command, Output, Stdio};

mod common;

use common::{HERALD, Server, signal, wait_for};

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
