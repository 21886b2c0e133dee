//! The `herald` binary: thin argument parsing over the broker library (`serve`, `log`),
//! plus the client commands (`topic`, `publish`, `fetch`, `consume`, `group`) in
//! `commands`.

mod cluster;
mod commands;
mod security;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use std::net::SocketAddr;

use herald_broker::config::{Config, FsyncSetting};
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
    /// Data directory [default: ./herald-data].
    #[arg(long, env = "HERALD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:50051].
    #[arg(long, env = "HERALD_LISTEN")]
    listen: Option<SocketAddr>,
    /// Prometheus metrics listen address [default: 127.0.0.1:9464].
    #[arg(long, env = "HERALD_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Default fsync policy for topics [default: always].
    #[arg(long, env = "HERALD_FSYNC")]
    fsync: Option<FsyncSetting>,
    /// Flush period for --fsync interval [default: 100].
    #[arg(long, env = "HERALD_FSYNC_INTERVAL_MS")]
    fsync_interval_ms: Option<u64>,
    /// Default segment size for new topics, from 4096 (the minimum) to 4294967295 bytes.
    /// Segment files are allocated as they fill, from 1 MiB, so a segment's size costs no
    /// disk until data needs it [default: 268435456].
    #[arg(long, env = "HERALD_SEGMENT_BYTES")]
    segment_bytes: Option<u64>,
    /// Largest record accepted [default: 1048576].
    #[arg(long, env = "HERALD_MAX_MESSAGE_BYTES")]
    max_message_bytes: Option<usize>,
    /// Log JSON lines instead of human-readable text.
    #[arg(long, env = "HERALD_LOG_JSON")]
    log_json: bool,
    /// Export publish and deliver spans to this OTLP/gRPC collector, e.g.
    /// http://127.0.0.1:4317 [default: off].
    #[arg(long, env = "HERALD_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// The server certificate chain (PEM): TLS on, with --tls-key.
    #[arg(long = "tls-cert", env = "HERALD_TLS_CERT")]
    tls_cert_file: Option<PathBuf>,
    /// The server certificate's private key (PEM).
    #[arg(long = "tls-key", env = "HERALD_TLS_KEY")]
    tls_key_file: Option<PathBuf>,
    /// CA (PEM) client certificates must chain to: mutual TLS, and authentication on.
    #[arg(long = "tls-client-ca", env = "HERALD_TLS_CLIENT_CA")]
    tls_client_ca_file: Option<PathBuf>,
    /// The ACL file, read again on SIGHUP (see README "Security").
    #[arg(long, env = "HERALD_ACL_FILE")]
    acl_file: Option<PathBuf>,
    /// Serve a non-loopback address without TLS (refused otherwise).
    #[arg(long, env = "HERALD_INSECURE")]
    insecure: bool,
    #[command(flatten)]
    cluster: cluster::ServeClusterArgs,
}

impl ServeArgs {
    fn config(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => {$(
                if let Some(v) = self.$field.clone() {
                    config.$field = v;
                }
            )*};
        }
        set!(
            data_dir,
            listen,
            metrics_listen,
            fsync,
            fsync_interval_ms,
            segment_bytes,
            max_message_bytes
        );
        macro_rules! set_some {
            ($($field:ident),*) => {$(
                if let Some(v) = self.$field.clone() {
                    config.$field = Some(v);
                }
            )*};
        }
        set_some!(
            tls_cert_file,
            tls_key_file,
            tls_client_ca_file,
            acl_file,
            otlp_endpoint
        );
        config.log_json |= self.log_json;
        config.insecure |= self.insecure;
        config.cluster = self.cluster.settings(config.cluster.take())?;
        config.validate()?;
        Ok(config)
    }
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
    let cli = Cli::try_parse().unwrap_or_else(|error| {
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
            ExitCode::FAILURE
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
            let config = args.config()?;
            init_logging(config.log_json);
            serve(config)
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
            clap_complete::generate(shell, &mut Cli::command(), "herald", &mut script);
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
