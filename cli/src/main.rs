//! The `herald` binary: thin argument parsing over the broker library (`serve`, `log`),
//! plus the client commands (`topic`, `publish`, `fetch`, `consume`, `group`) in
//! `commands`.

mod commands;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
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
    #[command(flatten)]
    Client(commands::ClientCommand),
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
        config.log_json |= self.log_json;
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
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", error_text(&error));
            ExitCode::FAILURE
        }
    }
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
        Command::Client(command) => commands::run(command),
    }
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

/// Runs the broker until SIGTERM or SIGINT, then shuts down gracefully.
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
        let broker = Broker::start(config, true).await?;
        tokio::select! {
            _ = sigint.recv() => tracing::info!("SIGINT received"),
            _ = sigterm.recv() => tracing::info!("SIGTERM received"),
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
