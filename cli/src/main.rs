//! The `herald` binary: thin argument parsing over the broker library (`serve`, `log`),
//! plus the client commands (`topic`, `publish`, `fetch`, `consume`, `group`) in
//! `commands`.

mod cluster;
mod commands;
mod security;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use serde::Serialize;
use std::net::SocketAddr;

use herald_broker::config::{self, Config, ConfigError, FsyncSetting};
use herald_broker::server::Broker;
use herald_broker::storage::inspect;

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    about = "Herald: a partitioned, durable event broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker. Settings: defaults < config file < HERALD_* environment < flags.
    ///
    /// Every setting has a flag and a variable (shown with each flag) except `tokens`, a
    /// list of `[[tokens]]` tables that only the file sets. `--print-config` shows the
    /// effective settings and where each came from.
    Serve(ServeArgs),
    /// Inspect a partition log directory directly (offline: no broker may be using it).
    #[command(subcommand)]
    Log(LogCommand),
    /// Print a shell completion script: `herald completions bash > /etc/bash_completion.d/herald`
    /// (also zsh, fish, elvish, powershell).
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Ask a running broker whether it is ready (`/readyz` on its metrics address); exit
    /// 0 if so, 1 otherwise. For container health checks and scripts.
    Health(HealthArgs),
    /// Bearer tokens: make one and the hash the broker's configuration keeps.
    #[command(subcommand)]
    Auth(security::AuthCommand),
    /// The ACL rules of a broker's ACL file.
    #[command(subcommand)]
    Acl(security::AclCommand),
    /// Make a CA and certificates for TLS (servers and clients), for a quick setup.
    #[command(subcommand)]
    Cert(security::CertCommand),
    #[command(flatten)]
    Client(commands::ClientCommand),
    /// Show the cluster as the node at --server sees it.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
}

#[derive(clap::Args)]
struct HealthArgs {
    /// The broker's metrics address (an unspecified IP, such as 0.0.0.0, means this host).
    #[arg(long, env = "HERALD_METRICS_LISTEN", default_value = "127.0.0.1:9464")]
    metrics_listen: SocketAddr,
    /// Only check that the process is up (`/healthz`), not that it is ready.
    #[arg(long)]
    live: bool,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file (every key optional; see README "Configuration").
    #[arg(long, env = "HERALD_CONFIG")]
    config: Option<PathBuf>,
    /// Print the effective configuration as TOML, each value followed by where it came
    /// from (default, file, environment variable or flag), and exit without serving.
    /// Token hashes show as `<hashed>`.
    #[arg(long)]
    print_config: bool,
    // Boxed: the settings make this the largest command by far.
    #[command(flatten)]
    settings: Box<SettingFlags>,
}

/// The flags of the configuration's settings, one per key of the file except `tokens`
/// (`[[tokens]]` tables: file only). Each is also read from its variable, named by the
/// key: `HERALD_<KEY>`, and `HERALD_CLUSTER_<KEY>` for the cluster table. Serialized
/// into the configuration's shape for the flags' layer (`config::Flags`).
#[derive(clap::Args, Serialize)]
struct SettingFlags {
    /// Data directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// gRPC listen address.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Prometheus metrics listen address.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Default fsync policy for topics.
    #[arg(long)]
    fsync: Option<FsyncSetting>,
    /// Flush period for --fsync interval.
    #[arg(long)]
    fsync_interval_ms: Option<u64>,
    /// Default segment size for new topics, from 4096 (the minimum) to 4294967295 bytes.
    /// Segment files are allocated as they fill, from 1 MiB, so a segment's size costs no
    /// disk until data needs it.
    #[arg(long)]
    segment_bytes: Option<u64>,
    /// Default retention by age for new topics, 0 = forever.
    #[arg(long)]
    retention_ms: Option<u64>,
    /// Default retention by size per partition for new topics, 0 = no limit.
    #[arg(long)]
    retention_bytes: Option<u64>,
    /// Largest record accepted.
    #[arg(long)]
    max_message_bytes: Option<usize>,
    /// Largest publish batch accepted.
    #[arg(long)]
    max_batch_bytes: Option<usize>,
    /// Most records in one batch.
    #[arg(long)]
    max_batch_records: Option<usize>,
    /// Most topics.
    #[arg(long)]
    max_topics: Option<usize>,
    /// Most partitions across all topics.
    #[arg(long)]
    max_partitions: Option<usize>,
    /// Streams one connection may have open.
    #[arg(long)]
    max_streams_per_connection: Option<u32>,
    /// Client connections served at once; more wait in the listen backlog.
    #[arg(long)]
    max_connections: Option<usize>,
    /// Heap for responses waiting on HTTP/2 flow control, broker-wide, at least 16 MiB.
    #[arg(long)]
    response_buffer_bytes: Option<usize>,
    /// A streaming RPC idle this long is closed.
    #[arg(long)]
    idle_stream_timeout_ms: Option<u64>,
    /// An idempotent producer idle this long on a partition is forgotten there.
    #[arg(long)]
    producer_idle_expiry_ms: Option<u64>,
    /// Idempotent producers each partition remembers.
    #[arg(long)]
    max_producers_per_partition: Option<usize>,
    /// Default for topics: how long a herald-msg-id is remembered, 0 = off.
    #[arg(long)]
    dedup_window_ms: Option<u64>,
    /// Log JSON lines instead of human-readable text (`--log-json=false` turns off what
    /// the file or environment turned on).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    log_json: Option<bool>,
    /// Export publish and deliver spans to this OTLP/gRPC collector, e.g.
    /// http://127.0.0.1:4317 [default: off].
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// The server certificate chain (PEM): TLS on, with --tls-key.
    #[arg(long = "tls-cert", alias = "tls-cert-file")]
    tls_cert_file: Option<PathBuf>,
    /// The server certificate's private key (PEM).
    #[arg(long = "tls-key", alias = "tls-key-file")]
    tls_key_file: Option<PathBuf>,
    /// CA (PEM) client certificates must chain to: mutual TLS, and authentication on.
    #[arg(long = "tls-client-ca", alias = "tls-client-ca-file")]
    tls_client_ca_file: Option<PathBuf>,
    /// With --tls-client-ca, also accept clients without a certificate (they use tokens).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    tls_client_cert_optional: Option<bool>,
    /// Serve a non-loopback address without TLS (refused otherwise).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    insecure: Option<bool>,
    /// The ACL file, read again on SIGHUP (see README "Security").
    #[arg(long)]
    acl_file: Option<PathBuf>,
    #[command(flatten)]
    cluster: cluster::ServeClusterArgs,
}

impl ServeArgs {
    /// The configuration from its layers, not yet validated.
    fn load(&self) -> anyhow::Result<config::Layered> {
        self.load_with(&|name| std::env::var(name).ok())
    }

    fn load_with(&self, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<config::Layered> {
        let command = cli_command();
        let serve = command
            .find_subcommand("serve")
            .expect("herald has a serve command");
        let flags = config::Flags::new(&self.settings, |field| flag_of(serve, field))?;
        Ok(config::load(self.config.as_deref(), env, flags)?)
    }
}

/// The flag of a setting's field: the `serve` argument of the same id.
fn flag_of(serve: &clap::Command, field: &str) -> Option<String> {
    serve
        .get_arguments()
        .find(|a| a.get_id() == field)
        .and_then(|a| a.get_long())
        .map(|long| format!("--{long}"))
}

/// The command line, with each `serve` setting's variable in its help (clap's own `env`
/// is not used for them: the configuration's layers read the variables).
fn cli_command() -> clap::Command {
    let keys = config::setting_keys();
    Cli::command().mut_subcommand("serve", |serve| {
        let ids: Vec<String> = serve
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .collect();
        ids.into_iter().fold(serve, |serve, id| {
            let Some(key) = keys
                .iter()
                .find(|k| k.rsplit('.').next() == Some(id.as_str()))
            else {
                return serve;
            };
            let mut names = vec![config::env_name(key)];
            names.extend(config::env_aliases(key).map(String::from));
            let mut env = format!("[env: {}]", names.join(", "));
            if let Some(default) = config::default_value(key) {
                env = format!("[default: {default}] {env}");
            }
            serve.mut_arg(id, |arg| {
                let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
                let arg = arg.help(format!("{help} {env}"));
                match arg.get_long_help().map(ToString::to_string) {
                    Some(long) => arg.long_help(format!("{long} {env}")),
                    None => arg,
                }
            })
        })
    })
}

#[derive(Subcommand)]
enum LogCommand {
    /// Verify every batch (frame, offset sequence, CRC), index entry and segment of a
    /// partition log, read-only, and print its offsets and any damage; exits non-zero on
    /// damage.
    Check {
        /// The partition directory.
        dir: PathBuf,
    },
    /// Print the records of a partition log, one per line (read-only; stops with an error
    /// naming the file and byte at the first damaged batch).
    Dump {
        /// The partition directory.
        dir: PathBuf,
        /// First offset to print.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Most records to print.
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
}

fn init_logging(json: bool) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // Colours only on a terminal: redirected logs stay plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
    install_panic_hook();
}

/// Sends panics through the log instead of the default hook's raw stderr lines: one ERROR
/// event (a JSON line with `--log-json`) with the thread, place, message and backtrace
/// (captured as `RUST_BACKTRACE` asks). The message keeps the default hook's "panicked
/// at" wording, which log scanners and the crash tests look for. Supervised tasks log
/// their own ERROR with context when they restart after one.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("<unnamed>");
        let location = info
            .location()
            .map_or_else(|| "<unknown>".to_owned(), ToString::to_string);
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        let backtrace = std::backtrace::Backtrace::capture();
        tracing::error!(thread, %location, panic = message, %backtrace, "thread '{thread}' panicked at {location}: {message}");
    }));
}

fn main() -> ExitCode {
    let cli = cli_command()
        .try_get_matches()
        .and_then(|matches| Cli::from_arg_matches(&matches))
        .unwrap_or_else(|error| {
            if let Some(variable) = env_source(&error) {
                // clap names the flag; the value came from the environment, so say which
                // variable holds it.
                let text = error.to_string();
                let text = text.strip_prefix("error: ").unwrap_or(&text);
                eprintln!("error: in environment variable {variable}: {text}");
                std::process::exit(2);
            }
            error.exit()
        });
    let json = matches!(&cli.command, Command::Client(c) if c.json());
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if json => {
            // With --json, errors are JSON too (on stderr, as the text form).
            eprintln!("{}", commands::error_json(&error, &error_text(&error)));
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("error: {}", error_text(&error));
            // A value the configuration cannot take is a usage error, as clap's are.
            match error.downcast_ref::<ConfigError>() {
                Some(ConfigError::Setting { .. } | ConfigError::UnknownKey { .. }) => {
                    ExitCode::from(2)
                }
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// The environment variable a bad value came from, when clap refused a value that was not
/// on the command line but in the flag's `env` variable.
fn env_source(error: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue};
    let ContextValue::String(flag) = error.get(ContextKind::InvalidArg)? else {
        return None;
    };
    let ContextValue::String(value) = error.get(ContextKind::InvalidValue)? else {
        return None;
    };
    let long = flag.strip_prefix("--")?.split([' ', '=']).next()?;
    // On the command line, clap's message is already right.
    let on_command_line = std::env::args_os().any(|a| {
        a.to_str()
            .is_some_and(|a| a == format!("--{long}") || a.starts_with(&format!("--{long}=")))
    });
    if on_command_line {
        return None;
    }
    fn find(command: &clap::Command, long: &str, value: &str) -> Option<String> {
        command
            .get_arguments()
            .filter(|a| a.get_long() == Some(long))
            .filter_map(|a| a.get_env())
            .map(|env| env.to_string_lossy().into_owned())
            .find(|env| std::env::var(env).is_ok_and(|v| v == value))
            .or_else(|| {
                command
                    .get_subcommands()
                    .find_map(|sub| find(sub, long, value))
            })
    }
    find(&Cli::command(), long, value)
}

/// The error and its causes on one line. Many error types already print their source in
/// their own message, so a cause the text already ends with is not repeated.
fn error_text(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.ends_with(&cause) {
            text = format!("{text}: {cause}");
        }
    }
    text
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => {
            let layered = args.load()?;
            if args.print_config {
                print!("{}", layered.to_toml());
                // Shown whether or not it is valid: that is when it helps most.
                layered.config.validate()?;
                return Ok(());
            }
            layered.config.validate().map_err(|error| {
                anyhow::anyhow!(
                    "{error} (`herald serve --print-config` shows where each setting came from)"
                )
            })?;
            init_logging(layered.config.log_json);
            serve(layered.config)
        }
        Command::Log(command) => {
            init_logging(false);
            log_command(command)
        }
        Command::Health(args) => health(args),
        Command::Completions { shell } => {
            // Into a buffer first: the generator panics on a write error, such as a
            // closed pipe (`herald completions bash | head`).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cli_command(), "herald", &mut script);
            match std::io::Write::write_all(&mut std::io::stdout(), &script) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
                _ => Ok(()),
            }
        }
        Command::Auth(command) => security::auth(command),
        Command::Acl(command) => security::acl(command),
        Command::Cert(command) => security::cert(command),
        Command::Client(command) => commands::run(command),
        Command::Cluster(command) => cluster::run(command),
    }
}

/// How long `herald health` waits for the broker's answer.
const HEALTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// One HTTP/1.0 GET of `/readyz` (or `/healthz`): the status line decides. Hand-written
/// because it is all the HTTP this binary ever sends, and the runtime image has no curl.
fn health(args: HealthArgs) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut addr = args.metrics_listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let path = if args.live { "/healthz" } else { "/readyz" };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let answer = runtime.block_on(async {
        tokio::time::timeout(HEALTH_TIMEOUT, async {
            let mut stream = tokio::net::TcpStream::connect(addr).await?;
            stream
                .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
                .await?;
            let mut response = Vec::new();
            stream.take(4096).read_to_end(&mut response).await?;
            std::io::Result::Ok(response)
        })
        .await
    });
    let response = match answer {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => anyhow::bail!("cannot reach http://{addr}{path}: {e}"),
        Err(_) => anyhow::bail!("no answer from http://{addr}{path} within {HEALTH_TIMEOUT:?}"),
    };
    let text = String::from_utf8_lossy(&response);
    let status = text.lines().next().unwrap_or_default();
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).trim();
    anyhow::ensure!(
        status.split_whitespace().nth(1) == Some("200"),
        "http://{addr}{path}: {status}: {body}"
    );
    println!("{body}");
    Ok(())
}

fn log_command(command: LogCommand) -> anyhow::Result<()> {
    match command {
        LogCommand::Check { dir } => {
            let report = inspect::check(&dir)?;
            println!(
                "{}: offsets {}..{}, {} batches, {} bytes in {} segments",
                dir.display(),
                report.start_offset,
                report.end_offset,
                report.batches,
                report.bytes,
                report.segments
            );
            if let Some(torn) = &report.torn_tail {
                println!("torn tail (cut when the broker starts; not damage): {torn}");
            }
            for problem in &report.problems {
                println!("DAMAGE: {problem}");
            }
            anyhow::ensure!(
                report.problems.is_empty(),
                "{} is damaged ({} problem(s) above); see README \"Disk damage\"",
                dir.display(),
                report.problems.len()
            );
        }
        LogCommand::Dump { dir, from, limit } => {
            let end = from.saturating_add(limit);
            inspect::for_each_batch(&dir, from, |view| {
                for record in view.records() {
                    let Ok(record) = record else { return false };
                    if record.offset >= end {
                        return false;
                    }
                    if record.offset < from {
                        continue;
                    }
                    println!(
                        "{}\t{}\t{}\t{}",
                        record.offset,
                        record.timestamp,
                        record.key.map_or("-".into(), String::from_utf8_lossy),
                        String::from_utf8_lossy(record.value)
                    );
                }
                true
            })?;
        }
    }
    Ok(())
}

/// Runs the broker until SIGTERM or SIGINT, then shuts down gracefully. SIGHUP reads the
/// TLS certificates and the ACL file again.
fn serve(config: Config) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // The handlers go in before the broker starts, which can take a while (recovery):
        // a signal that arrives meanwhile is kept and stops the broker as soon as it is up,
        // instead of killing the process halfway through its start.
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sighup = signal(SignalKind::hangup())?;
        let broker = Broker::start(config, true).await?;
        loop {
            tokio::select! {
                _ = sigint.recv() => {
                    tracing::info!("SIGINT received");
                    break;
                }
                _ = sigterm.recv() => {
                    tracing::info!("SIGTERM received");
                    break;
                }
                _ = sighup.recv() => {
                    tracing::info!("SIGHUP received: reloading TLS certificates and the ACL file");
                    if let Err(error) = broker.reload() {
                        tracing::error!(%error, "reload failed; what was in force stays");
                    }
                }
            }
        }
        broker.shutdown().await?;
        tracing::info!("stopped cleanly");
        anyhow::Ok(())
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn serve_args(args: &[String]) -> ServeArgs {
        let matches = cli_command()
            .try_get_matches_from(
                ["herald", "serve"]
                    .iter()
                    .map(|s| s.to_string())
                    .chain(args.iter().cloned()),
            )
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        match Cli::from_arg_matches(&matches).unwrap().command {
            Command::Serve(args) => args,
            _ => unreachable!(),
        }
    }

    /// Every setting but the file-only ones has a `serve` flag that sets it over the
    /// environment. The keys come from the configuration's types, so a new setting fails
    /// here until it has a flag.
    #[test]
    fn every_setting_has_a_flag_over_its_variable() {
        let command = cli_command();
        let serve = command.find_subcommand("serve").unwrap();
        let keys = config::setting_keys();
        let cluster: Vec<&String> = keys.iter().filter(|k| k.starts_with("cluster.")).collect();
        let flag = |key: &str| {
            flag_of(serve, key.rsplit('.').next().unwrap())
                .unwrap_or_else(|| panic!("setting {key} has no `herald serve` flag"))
        };
        let example = |key: &str| {
            config::example(key).unwrap_or_else(|| panic!("setting {key} has no example"))
        };
        for key in keys
            .iter()
            .filter(|k| !config::FILE_ONLY.contains(&k.as_str()))
        {
            let mut args = vec![format!("{}={}", flag(key), example(key))];
            if key.starts_with("cluster.") {
                // Cluster mode takes its settings together.
                for other in cluster.iter().filter(|k| **k != key) {
                    args.push(format!("{}={}", flag(other), example(other)));
                }
            }
            // The variable says otherwise; the flag wins.
            let env = |name: &str| (name == config::env_name(key)).then(|| "1".to_owned());
            let layered = serve_args(&args)
                .load_with(&env)
                .unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert_eq!(
                layered.origin(key),
                config::Origin::Flag(flag(key)),
                "{key}"
            );
            let table = toml::Value::try_from(&layered.config).unwrap();
            let value = key.split('.').try_fold(&table, |v, k| v.get(k)).unwrap();
            let value = value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_owned);
            assert_eq!(value, example(key), "{args:?}");
        }
        // --print-config and --config are no settings.
        let layered = serve_args(&["--print-config".into()])
            .load_with(&|_| None)
            .unwrap();
        assert_eq!(layered.config, Config::default());
        // Boolean flags turn off what a lower layer turned on.
        let env = |name: &str| (name == "HERALD_LOG_JSON").then(|| "true".to_owned());
        assert!(serve_args(&[]).load_with(&env).unwrap().config.log_json);
        assert!(
            !serve_args(&["--log-json=false".into()])
                .load_with(&env)
                .unwrap()
                .config
                .log_json
        );
        assert!(
            serve_args(&["--log-json".into()])
                .load_with(&|_| None)
                .unwrap()
                .config
                .log_json
        );
    }

    /// README's configuration table names every setting with its variable and flag.
    #[test]
    fn the_readme_lists_every_setting() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        let section = readme
            .split("\n## Configuration\n")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .expect("README has a Configuration section");
        let command = cli_command();
        let serve = command.find_subcommand("serve").unwrap();
        for key in config::setting_keys() {
            let row = section
                .lines()
                .find(|l| l.starts_with(&format!("| `{key}` |")))
                .unwrap_or_else(|| panic!("README's configuration table has no row for `{key}`"));
            if config::FILE_ONLY.contains(&key.as_str()) {
                continue;
            }
            if let Some(default) = config::default_value(&key) {
                assert!(
                    row.contains(&format!("`{default}`")),
                    "README's row for `{key}` does not give its default `{default}`: {row}"
                );
            }
            let env = config::env_name(&key);
            let flag = flag_of(serve, key.rsplit('.').next().unwrap()).unwrap();
            assert!(
                row.contains(&format!("`{env}`")) && row.contains(&format!("`{flag}`")),
                "README's row for `{key}` does not name `{env}` and `{flag}`: {row}"
            );
        }
    }

    /// `--help` states the segment size bounds the broker enforces.
    #[test]
    fn help_states_the_segment_size_bounds() {
        let help = Cli::command()
            .find_subcommand_mut("serve")
            .expect("a serve command")
            .render_long_help()
            .to_string();
        let min = herald_broker::storage::MIN_SEGMENT_BYTES.to_string();
        let max = herald_broker::storage::MAX_SEGMENT_BYTES.to_string();
        assert!(
            help.contains(&format!("from {min} (the minimum) to {max} bytes")),
            "{help}"
        );
    }
}
