//! `herald serve`'s configuration layers on the real binary: `--print-config`, errors that
//! name the variable, flag or file key that holds a bad value, and settings that reach a
//! serving broker from the environment alone.

use std::path::Path;
use std::process::{Command, Output, Stdio};

mod common;

use common::{HERALD, Process, free_ports, serving_addr, wait_timeout};

/// `herald serve ARGS` with only `env` in its environment, to its exit.
fn serve(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(HERALD)
        .arg("serve")
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("herald runs");
    wait_timeout(&mut child);
    child.wait_with_output().expect("herald output")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write(dir: &Path, name: &str, contents: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn print_config_shows_every_value_and_its_origin_without_serving() {
    let dir = tempfile::tempdir().unwrap();
    let hash = "sha256:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";
    let file = write(
        dir.path(),
        "herald.toml",
        &format!(
            "fsync = \"never\"\nmax_topics = 4\n\n[[tokens]]\nprincipal = \"orders\"\nhash = \"{hash}\"\n"
        ),
    );
    let data_dir = dir.path().join("data");
    let output = serve(
        &[
            "--config",
            &file,
            "--print-config",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:50199",
            "--initial-members",
            "1=127.0.0.1:50199@127.0.0.1:7101",
        ],
        &[
            ("HERALD_MAX_TOPICS", "9"),
            ("HERALD_CLUSTER_NODE_ID", "1"),
            // The older name of HERALD_CLUSTER_PEER_LISTEN.
            ("HERALD_PEER_LISTEN", "127.0.0.1:7101"),
        ],
    );
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "{}\n{stdout}",
        text(&output.stderr)
    );
    let line = |key: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no {key} in:\n{stdout}"))
            .to_owned()
    };
    assert!(
        line("fsync").ends_with(&format!("# file {file}")),
        "{stdout}"
    );
    assert!(
        line("max_topics").starts_with("max_topics = 9 ")
            && line("max_topics").ends_with("# environment variable HERALD_MAX_TOPICS"),
        "{stdout}"
    );
    assert!(line("listen").ends_with("# flag --listen"), "{stdout}");
    assert!(line("segment_bytes").ends_with("# default"), "{stdout}");
    assert!(
        line("node_id").ends_with("# environment variable HERALD_CLUSTER_NODE_ID"),
        "{stdout}"
    );
    assert!(
        line("peer_listen").ends_with("# environment variable HERALD_PEER_LISTEN"),
        "{stdout}"
    );
    assert!(
        line("initial_members").ends_with("# flag --initial-members"),
        "{stdout}"
    );
    // Never a secret, not even its hash.
    assert!(!stdout.contains(hash), "{stdout}");
    assert!(stdout.contains("principal = \"orders\""), "{stdout}");
    // It is TOML, and the values are the effective ones.
    let read: toml::Table = toml::from_str(&stdout).expect("TOML");
    assert_eq!(read["max_topics"].as_integer(), Some(9));
    assert_eq!(read["cluster"]["node_id"].as_integer(), Some(1));
    // Nothing was served: the data directory was never made.
    assert!(!data_dir.exists());

    // An invalid configuration is still shown, then refused.
    let output = serve(&["--print-config", "--segment-bytes", "10"], &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stdout).contains("segment_bytes = 10"),
        "{}",
        text(&output.stdout)
    );
    assert!(
        text(&output.stderr).contains("segment_bytes must be within"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn a_bad_value_names_its_variable_flag_or_file() {
    let refused = |args: &[&str], env: &[(&str, &str)], expected: &str| {
        let output = serve(args, env);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?} {env:?}: {stderr}");
    };
    refused(
        &["--print-config"],
        &[("HERALD_CLUSTER_NODE_ID", "first")],
        "in environment variable HERALD_CLUSTER_NODE_ID: cluster.node_id: ",
    );
    refused(
        &["--print-config"],
        &[("HERALD_SEGMENT_BYTES", "lots")],
        "in environment variable HERALD_SEGMENT_BYTES: segment_bytes: ",
    );
    refused(
        &["--print-config"],
        &[("HERALD_TLS_CLIENT_CERT_OPTIONAL", "maybe")],
        "in environment variable HERALD_TLS_CLIENT_CERT_OPTIONAL",
    );
    refused(
        &["--print-config", "--max-topics", "lots"],
        &[],
        "'--max-topics <MAX_TOPICS>'",
    );
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "typo.toml", "max_topic = 3\n");
    refused(
        &["--config", &file],
        &[],
        "unknown key `max_topic` (did you mean `max_topics`?)",
    );
    let file = write(dir.path(), "type.toml", "listen = 5\n");
    refused(
        &["--config", &file],
        &[],
        &format!("in file {file}: listen: "),
    );
}

#[test]
fn settings_from_the_environment_alone_reach_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(HERALD);
    command
        .arg("serve")
        .env_clear()
        .env("HERALD_DATA_DIR", dir.path())
        .env("HERALD_LISTEN", "127.0.0.1:0")
        .env("HERALD_METRICS_LISTEN", "127.0.0.1:0")
        .env("HERALD_LOG_JSON", "true")
        .env("HERALD_MAX_TOPICS", "1")
        .env("RUST_LOG", "info");
    let process = Process::spawn(command);
    let addr = process.wait_for_line("the broker serves", serving_addr);
    let topic = |name: &str| {
        Command::new(HERALD)
            .args(["topic", "create", name, "--partitions", "1", "--server"])
            .arg(format!("http://{addr}"))
            .env_clear()
            .output()
            .unwrap()
    };
    let first = topic("one");
    assert!(first.status.success(), "{}", text(&first.stderr));
    // HERALD_MAX_TOPICS=1 is in force.
    let second = topic("two");
    assert!(!second.status.success());
    assert!(
        text(&second.stderr).contains("RESOURCE_EXHAUSTED"),
        "{}",
        text(&second.stderr)
    );
    process.signal("TERM");
    let exited = process.wait();
    assert!(exited.status.success());
    common::assert_no_panic(&exited.log, "herald serve");
}

/// The container image's runtime settings, read from `deploy/Dockerfile` (its last
/// stage's `ENV`, `CMD` and `HEALTHCHECK`), start a broker that serves on every interface
/// and that the image's health check finds ready. Only the ports (free ones, for a test
/// on a shared machine) and the data directory (a temporary one) are replaced. The image
/// itself is not built here; this checks what it would run.
#[test]
fn the_container_image_settings_start_a_broker_its_health_check_finds_ready() {
    let dockerfile =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/Dockerfile"))
            .expect("deploy/Dockerfile");
    let image = RuntimeStage::parse(&dockerfile);
    assert_eq!(image.cmd, ["serve"], "the image's command");
    assert_eq!(image.entrypoint, ["/usr/local/bin/herald"]);
    let health = image
        .healthcheck
        .strip_prefix(&["/usr/local/bin/herald".to_owned()][..])
        .expect("the health check runs herald")
        .to_vec();

    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("var-lib-herald");
    std::fs::create_dir(&data_dir).unwrap();
    let ports = free_ports(2);
    let (grpc_port, metrics_port) = (ports[0].port(), ports[1].port());
    let mut env = image.env.clone();
    let mut set_port = |key: &str, port: u16| {
        let value = env.iter_mut().find(|(k, _)| k == key).unwrap_or_else(|| {
            panic!("the image sets {key}");
        });
        let (host, _) = value.1.rsplit_once(':').expect("HOST:PORT");
        assert_eq!(
            host, "0.0.0.0",
            "{key}: the image listens on every interface"
        );
        value.1 = format!("{host}:{port}");
    };
    set_port("HERALD_LISTEN", grpc_port);
    set_port("HERALD_METRICS_LISTEN", metrics_port);
    let data = env
        .iter_mut()
        .find(|(k, _)| k == "HERALD_DATA_DIR")
        .expect("the image sets HERALD_DATA_DIR");
    assert_eq!(data.1, "/var/lib/herald");
    data.1 = data_dir.display().to_string();

    let run = |args: &[String], env: &[(String, String)]| {
        let mut command = Command::new(HERALD);
        command
            .args(args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            // JSON lines, so the test can read the address it serves on.
            .env("HERALD_LOG_JSON", "true")
            .env("RUST_LOG", "info");
        command
    };

    // Without the image's HERALD_INSECURE the same settings are refused: plaintext gRPC
    // on every interface must be asked for.
    let strict: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| k != "HERALD_INSECURE")
        .cloned()
        .collect();
    let mut refused = run(&image.cmd, &strict)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_timeout(&mut refused);
    let output = refused.wait_with_output().unwrap();
    assert!(!status.success(), "served plaintext on 0.0.0.0 unasked");
    assert!(
        text(&output.stderr).contains("insecure"),
        "{}",
        text(&output.stderr)
    );

    let process = Process::spawn(run(&image.cmd, &env));
    let addr = process.wait_for_line("the broker serves", serving_addr);
    assert_eq!(addr.port(), grpc_port);
    assert!(addr.ip().is_unspecified(), "{addr}");
    common::wait_for("the image's health check passes", || {
        let out = run(&health, &env).output().unwrap();
        if out.status.success() {
            Ok(())
        } else {
            Err(text(&out.stderr))
        }
    });
    let created = Command::new(HERALD)
        .args(["topic", "create", "events", "--partitions", "1", "--server"])
        .arg(format!("http://127.0.0.1:{grpc_port}"))
        .env_clear()
        .output()
        .unwrap();
    assert!(created.status.success(), "{}", text(&created.stderr));
    assert!(data_dir.join("topics").join("events").is_dir());
    process.signal("TERM");
    let exited = process.wait();
    assert!(exited.status.success());
    common::assert_no_panic(&exited.log, "herald serve");
}

/// What a Dockerfile's last stage runs: its `ENV` pairs, `ENTRYPOINT`, `CMD` and
/// `HEALTHCHECK ... CMD`, from the exec (JSON array) forms the Dockerfile uses.
struct RuntimeStage {
    env: Vec<(String, String)>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    healthcheck: Vec<String>,
}

impl RuntimeStage {
    fn parse(dockerfile: &str) -> RuntimeStage {
        // Instructions: continuation lines joined, comments dropped.
        let mut instructions: Vec<String> = Vec::new();
        let mut current = String::new();
        for line in dockerfile.lines() {
            let line = line.trim();
            if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
                continue;
            }
            match line.strip_suffix('\\') {
                Some(part) => current.push_str(part),
                None => {
                    current.push_str(line);
                    instructions.push(std::mem::take(&mut current));
                }
            }
        }
        let last_from = instructions
            .iter()
            .rposition(|i| i.starts_with("FROM "))
            .expect("a FROM");
        let json = |text: &str| -> Vec<String> {
            serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{text}: {e}"))
        };
        let mut stage = RuntimeStage {
            env: Vec::new(),
            entrypoint: Vec::new(),
            cmd: Vec::new(),
            healthcheck: Vec::new(),
        };
        for instruction in &instructions[last_from..] {
            let (word, rest) = instruction.split_once(' ').unwrap_or((instruction, ""));
            match word {
                "ENV" => stage.env.extend(rest.split_whitespace().map(|pair| {
                    let (k, v) = pair.split_once('=').expect("ENV KEY=VALUE");
                    (k.to_owned(), v.to_owned())
                })),
                "ENTRYPOINT" => stage.entrypoint = json(rest),
                "CMD" => stage.cmd = json(rest),
                "HEALTHCHECK" => {
                    let (_, command) = rest.split_once(" CMD ").expect("HEALTHCHECK ... CMD");
                    stage.healthcheck = json(command);
                }
                _ => {}
            }
        }
        stage
    }
}
