//! The client side of the `herald` binary: `topic create|list|describe|delete`, `publish`,
//! `fetch`, `consume` and `group create|list|describe|seek|redrive|delete`, talking to a
//! broker through `herald-client`.
//!
//! Output is for people by default (aligned tables, `offset  key  value` lines); `--json`
//! prints one JSON object per line instead. A failed call becomes an error naming the gRPC
//! status code and message, which `main` prints to stderr before exiting with code 1.

use std::ffi::OsString;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::io::{self, BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use bytes::Bytes;
use clap::{Args, Subcommand, ValueEnum};
use futures::{FutureExt, StreamExt};
use herald_broker::config::FsyncSetting;
use herald_client::{
    Acked, Client, ConsumerConfig, FetchConfig, FetchedRecord, FsyncPolicy, GroupInfo,
    GroupSettings, Message, OrderingMode, Partition, PendingFilter, Position, ProducerConfig,
    Record, TopicAlter, TopicConfig, TopicInfo,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Most records the CLI puts in one publish request.
const PUBLISH_BATCH_RECORDS: usize = 1000;
/// Most record bytes (key, value, headers) the CLI puts in one publish request; a single
/// larger record still goes alone.
const PUBLISH_BATCH_BYTES: usize = 256 * 1024;
/// How long a publish from stdin waits for more lines to send with the first one.
const PUBLISH_LINGER: Duration = Duration::from_millis(5);
/// Lines read from stdin ahead of the publishes.
const STDIN_QUEUE: usize = 4096;
/// The Nack reason of `consume --nack`.
const NACK_REASON: &str = "nacked by herald consume";
/// How long to wait for the TCP connection to the broker.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pings find a broker that vanished without closing the connection (`fetch --follow`,
/// a quiet `consume`).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Options shared by every client command.
#[derive(Args, Clone, Debug)]
pub struct ClientOpts {
    /// The broker's gRPC address (`http://` is assumed when no scheme is given).
    #[arg(
        long,
        env = "HERALD_SERVER",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    server: String,
    /// Print one JSON object per line instead of human-readable text.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Bearer token for a broker with authentication on (sent as `authorization`).
    #[arg(long, env = "HERALD_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// CA certificate (PEM) to trust for the broker's TLS certificate: TLS on
    /// (`https://` is then assumed when no scheme is given).
    #[arg(long, env = "HERALD_TLS_CA", global = true)]
    tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS, with --tls-key.
    #[arg(long, env = "HERALD_CLIENT_CERT", global = true, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "HERALD_CLIENT_KEY", global = true, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The name the broker's certificate must carry, when not the host of --server.
    #[arg(long, env = "HERALD_TLS_DOMAIN", global = true)]
    tls_domain: Option<String>,
}

/// The client subcommands, flattened into the binary's `Command`.
#[derive(Subcommand)]
pub enum ClientCommand {
    /// Create, list, describe and delete topics.
    Topic(TopicArgs),
    /// Publish records: the VALUEs given, or else one record per line of stdin.
    Publish(PublishArgs),
    /// Read a topic (every partition, merged by timestamp) or one partition from a position;
    /// with --follow, keep tailing until Ctrl-C.
    Fetch(FetchArgs),
    /// Join a consumer group and print (then ack) its deliveries until Ctrl-C or --max.
    Consume(ConsumeArgs),
    /// Create, update, list, describe, seek, redrive and delete consumer groups, and list
    /// their pending messages.
    Group(GroupArgs),
}

#[derive(Args)]
pub struct TopicArgs {
    #[command(flatten)]
    opts: ClientOpts,
    #[command(subcommand)]
    command: TopicCommand,
}

#[derive(Subcommand)]
enum TopicCommand {
    /// Create a topic. Settings left out take the broker's defaults.
    Create {
        /// The topic's name: 1 to 249 of A-Z a-z 0-9 . _ -
        name: String,
        /// Number of partitions (1 to 4096); `topic alter` can add more later.
        #[arg(long)]
        partitions: u32,
        /// Remove closed segments older than this (0 = no age limit).
        #[arg(long)]
        retention_ms: Option<u64>,
        /// Per partition: remove the oldest segments above this size (0 = no limit).
        #[arg(long)]
        retention_bytes: Option<u64>,
        /// Size of each segment, from 4096 (the minimum) to 4294967295 bytes; files are
        /// allocated as they fill.
        #[arg(long)]
        segment_bytes: Option<u64>,
        /// When appended records are flushed to disk (and so when a publish is acked).
        #[arg(long, value_enum)]
        fsync: Option<FsyncSetting>,
        /// Flush period for --fsync interval.
        #[arg(long)]
        fsync_interval_ms: Option<u32>,
        /// Largest record accepted.
        #[arg(long)]
        max_message_bytes: Option<u32>,
        /// How long a publish's herald-msg-id is remembered, in ms (0: off).
        #[arg(long)]
        dedup_window_ms: Option<u64>,
        /// Cluster mode: copies of each partition, on as many nodes (default min(3,
        /// nodes)). A publish is acknowledged once a majority of them has it.
        #[arg(long)]
        replication_factor: Option<u32>,
    },
    /// Change a topic's retention or largest record, or add partitions, while it is in
    /// use. Options left out keep their value. Adding partitions moves most keys to
    /// another partition (README, "Adding partitions").
    Alter {
        /// The topic.
        name: String,
        /// Remove closed segments older than this (0 = no age limit).
        #[arg(long)]
        retention_ms: Option<u64>,
        /// Per partition: remove the oldest segments above this size (0 = no limit).
        #[arg(long)]
        retention_bytes: Option<u64>,
        /// Largest record accepted.
        #[arg(long)]
        max_message_bytes: Option<u32>,
        /// New partition count: at least the current one, at most 4096.
        #[arg(long)]
        partitions: Option<u32>,
    },
    /// List the topics.
    List,
    /// Show a topic's settings and the offsets and size of each partition.
    Describe {
        /// The topic.
        name: String,
    },
    /// Delete a topic and all its records.
    Delete {
        /// The topic.
        name: String,
    },
}

#[derive(Args)]
pub struct PublishArgs {
    #[command(flatten)]
    opts: ClientOpts,
    /// The topic to publish to (it must exist).
    topic: String,
    /// Record values. With none, each line of stdin is a record (without its line end).
    values: Vec<OsString>,
    /// Key of every record; it picks the partition unless --partition is given.
    #[arg(long, conflicts_with = "key_separator")]
    key: Option<String>,
    /// Each value (line) is KEY, this separator, then VALUE: a key per record, which picks
    /// its partition unless --partition is given. A value without it is an error.
    #[arg(long, value_name = "SEP")]
    key_separator: Option<String>,
    /// A header `name=value` added to every record; repeat for more.
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// Target partition [default: from the key, else round-robin per request].
    #[arg(long)]
    partition: Option<u32>,
    /// What a value (line) is: `text`, the record's value; or `json`, a record as `fetch
    /// --json` prints it, with its own key and headers (other fields are ignored), so
    /// `fetch --json` piped into `publish --input json` copies records.
    #[arg(long, value_enum, default_value_t = PublishInput::Text, conflicts_with_all = ["key", "key_separator"])]
    input: PublishInput,
}

/// How `publish` reads each value or line.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PublishInput {
    Text,
    Json,
}

/// A record of `publish --input json`: `{"key": K, "value": V, "headers": H}`, where `K`
/// (optional, or null) and `V` are strings or `{"base64": "..."}`, as `fetch --json`
/// prints them, and `H` (optional) is `fetch --json`'s list of `{"key": NAME, "value":
/// V}` or an object of names to values.
type JsonRecord = (Option<Bytes>, Bytes, Vec<(String, Bytes)>);

fn json_record(line: &[u8]) -> Result<JsonRecord, String> {
    let Value::Object(fields) = serde_json::from_slice(line).map_err(|e| e.to_string())? else {
        return Err("not a JSON object".into());
    };
    fn bytes(what: &str, value: &Value) -> Result<Bytes, String> {
        use base64::Engine;
        match value {
            Value::String(text) => Ok(Bytes::from(text.clone())),
            Value::Object(o) if o.len() == 1 => {
                let encoded = o.get("base64").and_then(Value::as_str).ok_or_else(|| {
                    format!("{what} is neither a string nor {{\"base64\": \"...\"}}")
                })?;
                base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .map(Bytes::from)
                    .map_err(|e| format!("{what}: {e}"))
            }
            _ => Err(format!(
                "{what} is neither a string nor {{\"base64\": \"...\"}}"
            )),
        }
    }
    let key = match fields.get("key") {
        None | Some(Value::Null) => None,
        Some(key) => Some(bytes("key", key)?),
    };
    let value = bytes("value", fields.get("value").ok_or("it has no \"value\"")?)?;
    let headers = match fields.get("headers") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|header| {
                let name = header
                    .get("key")
                    .and_then(Value::as_str)
                    .ok_or("a header has no string \"key\"")?;
                let value = header.get("value").ok_or("a header has no \"value\"")?;
                Ok((name.to_owned(), bytes("a header's value", value)?))
            })
            .collect::<Result<_, String>>()?,
        Some(Value::Object(map)) => map
            .iter()
            .map(|(name, value)| Ok((name.clone(), bytes("a header's value", value)?)))
            .collect::<Result<_, String>>()?,
        Some(_) => return Err("\"headers\" is neither a list nor an object".into()),
    };
    Ok((key, value, headers))
}

#[derive(Args)]
pub struct FetchArgs {
    #[command(flatten)]
    opts: ClientOpts,
    /// The topic to read.
    topic: String,
    /// Read only this partition [default: every partition, merged by timestamp].
    #[arg(long)]
    partition: Option<u32>,
    /// Where to start in each partition: an offset, `earliest`, `latest`, or a time
    /// (`ts:MILLIS`, RFC 3339 such as `2026-12-07T09:30:00Z`, or `-1h` for an hour ago):
    /// the first record at or after it.
    #[arg(long, default_value = "earliest", value_name = "POSITION", value_parser = parse_position, allow_hyphen_values = true)]
    from: Position,
    /// Keep the stream open and print new records as they arrive, until Ctrl-C; reconnect
    /// when the broker restarts.
    #[arg(long)]
    follow: bool,
    /// Stop after this many records.
    #[arg(long = "limit", alias = "max-records", value_name = "N")]
    limit: Option<u64>,
}

#[derive(Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    opts: ClientOpts,
    /// The topic to consume (it must exist).
    topic: String,
    /// The consumer group to join; created (with default settings) if it does not exist.
    #[arg(long)]
    group: String,
    /// Where the group starts if this command creates it: an offset, `earliest`, `latest`
    /// or a time (`ts:MILLIS`, RFC 3339, `-1h`) [default: latest]. Ignored when the group
    /// exists.
    #[arg(long, value_name = "POSITION", value_parser = parse_position, allow_hyphen_values = true)]
    from: Option<Position>,
    /// Stop after this many deliveries (redeliveries count too).
    #[arg(long = "limit", alias = "max", value_name = "N")]
    limit: Option<u64>,
    /// Nack every delivery (after printing it) instead of acking it, to test redelivery
    /// and dead-lettering.
    #[arg(long)]
    nack: bool,
    /// Most deliveries held unacked at once [default: the broker's].
    #[arg(long, value_name = "N")]
    max_in_flight: Option<u32>,
    /// With the group's `key` ordering: most messages of one key held unacked at once, in
    /// offset order [default: 1]. Safe here: this command settles messages one by one.
    #[arg(long, value_name = "N")]
    max_in_flight_per_key: Option<u32>,
    /// A label for this member, shown by `group describe` [default: herald-cli-PID].
    #[arg(long)]
    client_id: Option<String>,
}

#[derive(Args)]
pub struct GroupArgs {
    #[command(flatten)]
    opts: ClientOpts,
    #[command(subcommand)]
    command: GroupCommand,
}

#[derive(Subcommand)]
enum GroupCommand {
    /// Create a consumer group. Settings left out take their defaults.
    Create {
        /// The topic the group consumes.
        topic: String,
        /// The group's name: 1 to 249 of A-Z a-z 0-9 . _ -
        group: String,
        #[command(flatten)]
        settings: GroupSettingsArgs,
        /// Where the group starts in each partition: an offset, `earliest`, `latest` or a
        /// time (`ts:MILLIS`, RFC 3339, `-1h`) [default: latest].
        #[arg(long, value_name = "POSITION", value_parser = parse_position, allow_hyphen_values = true)]
        from: Option<Position>,
    },
    /// Change a group's settings; those not given stay as they are. Deliveries made after
    /// the change follow it; messages in flight keep their deadlines.
    Update {
        /// The group's topic.
        topic: String,
        /// The group.
        group: String,
        #[command(flatten)]
        settings: GroupSettingsArgs,
    },
    /// List the messages a group has delivered and not yet acked (in flight, or waiting
    /// out a retry backoff).
    Pending {
        /// The group's topic.
        topic: String,
        /// The group.
        group: String,
        /// Only this partition's.
        #[arg(long)]
        partition: Option<u32>,
        /// Only messages with exactly this key.
        #[arg(long)]
        key: Option<String>,
        /// At most this many [default: 100; the broker caps at 10000].
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
    },
    /// List the consumer groups, of every topic or of one.
    List {
        /// Only this topic's groups.
        topic: Option<String>,
    },
    /// Show a group's settings, members and per-partition progress.
    Describe {
        /// The group's topic.
        topic: String,
        /// The group.
        group: String,
    },
    /// Move a group's committed offset, in every partition or in one.
    Seek {
        /// The group's topic.
        topic: String,
        /// The group.
        group: String,
        /// The new position: an offset, `earliest`, `latest` or a time (`ts:MILLIS`,
        /// RFC 3339, `-1h`).
        #[arg(long, value_name = "POSITION", value_parser = parse_position, allow_hyphen_values = true)]
        to: Position,
        /// Only this partition [default: every partition].
        #[arg(long)]
        partition: Option<u32>,
    },
    /// Republish the group's dead letters to its topic.
    Redrive {
        /// The group's topic.
        topic: String,
        /// The group.
        group: String,
        /// Move at most this many messages [default: all].
        #[arg(long = "limit", alias = "max-messages", value_name = "N")]
        limit: Option<u64>,
    },
    /// Delete a consumer group and its committed offsets.
    Delete {
        /// The group's topic.
        topic: String,
        /// The group.
        group: String,
    },
}

/// A group's settings, as `group create` and `group update` take them.
#[derive(Args)]
struct GroupSettingsArgs {
    /// Time a member has to ack a delivery before it is due again [default: 30000].
    #[arg(long, value_name = "MS")]
    ack_deadline_ms: Option<u32>,
    /// Deliveries after which an unacked message is dead-lettered (0 = never, the
    /// default). Above 0 it needs --dead-letter-topic.
    #[arg(long, value_name = "N")]
    max_delivery_attempts: Option<u32>,
    /// Topic that receives the group's dead letters (it must exist).
    #[arg(long, value_name = "TOPIC")]
    dead_letter_topic: Option<String>,
    /// Delivery order within a partition [default: key].
    #[arg(long, value_enum)]
    ordering: Option<Ordering>,
    /// Redelivery delay after a first failure, doubled on each further one [default:
    /// the broker's].
    #[arg(long, value_name = "MS")]
    retry_backoff_min_ms: Option<u32>,
    /// Cap of the redelivery delay [default: the broker's].
    #[arg(long, value_name = "MS")]
    retry_backoff_max_ms: Option<u32>,
}

impl GroupSettingsArgs {
    fn settings(self) -> GroupSettings {
        let ms = |ms: Option<u32>| ms.map(|ms| Duration::from_millis(u64::from(ms)));
        GroupSettings {
            ack_deadline: ms(self.ack_deadline_ms),
            retry_backoff_min: ms(self.retry_backoff_min_ms),
            retry_backoff_max: ms(self.retry_backoff_max_ms),
            max_delivery_attempts: self.max_delivery_attempts,
            dead_letter_topic: self.dead_letter_topic,
            ordering: self.ordering.map(Ordering::mode),
        }
    }
}

/// A group's `--ordering`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Ordering {
    /// At most one unacked message per key in flight.
    Key,
    /// At most one unacked message per partition in flight.
    Partition,
    /// No ordering.
    None,
}

/// A position (`--from`, `--to`): `earliest`, `latest`, an offset, or a time: `ts:MILLIS`
/// (ms since the Unix epoch), an RFC 3339 time (`2026-12-07T09:30:00Z`,
/// `2026-12-07T10:30:00+01:00`, with or without `ts:`), or a time relative to now
/// (`-1h`, `-15m`, `-1h30m`, `-2d`: that long ago).
fn parse_position(s: &str) -> Result<Position, String> {
    parse_position_at(s, jiff::Timestamp::now())
}

fn parse_position_at(s: &str, now: jiff::Timestamp) -> Result<Position, String> {
    const FORMS: &str = "an offset, `earliest`, `latest`, `ts:MILLIS`, an RFC 3339 time \
        (2026-12-07T09:30:00Z) or a time ago (-1h, -15m, -2d)";
    match s {
        "earliest" => return Ok(Position::Earliest),
        "latest" => return Ok(Position::Latest),
        _ => {}
    }
    if let Ok(offset) = s.parse() {
        return Ok(Position::Offset(offset));
    }
    // Bare digits are an offset (above); ms since the epoch take the `ts:` prefix.
    let (time, prefixed) = match s.strip_prefix("ts:") {
        Some(time) => (time, true),
        None => (s, false),
    };
    if prefixed && let Ok(ms) = time.parse::<i64>() {
        return Ok(Position::Timestamp(ms));
    }
    if let Some(ago) = time.strip_prefix('-') {
        let span: jiff::Span = ago
            .parse()
            .map_err(|e| format!("{s:?} is not a time ago such as -1h or -15m: {e}"))?;
        // Days are 24 hours here: a relative position means elapsed time, not calendar days.
        let past = span
            .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
            .ok()
            .and_then(|d| now.checked_sub(d).ok())
            .ok_or_else(|| format!("{s:?} reaches too far back"))?;
        return Ok(Position::Timestamp(past.as_millisecond()));
    }
    match time.parse::<jiff::Timestamp>() {
        Ok(t) => Ok(Position::Timestamp(t.as_millisecond())),
        Err(_) if time.contains(['T', ':', ' ']) || prefixed => Err(format!(
            "{s:?} is not a time: use RFC 3339 with a zone, e.g. 2026-12-07T09:30:00Z, or ms since the Unix epoch"
        )),
        Err(_) => Err(format!("{s:?} is not {FORMS}")),
    }
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some(("", _)) => Err(format!("header {s:?} has an empty name")),
        Some((name, value)) => Ok((name.to_owned(), value.to_owned())),
        None => Err(format!("header {s:?} is not NAME=VALUE")),
    }
}

/// A failed client call, shown as `CODE: message` with the gRPC name of its status code
/// (e.g. `NOT_FOUND: topic "x" does not exist`), as gRPC tools show statuses.
#[derive(Debug)]
pub struct CallError(pub herald_client::Error);

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0.code_name(), self.0.message()) {
            (Some(name), "") => f.write_str(name),
            (Some(name), message) => write!(f, "{name}: {message}"),
            // A client-side error (the subscription ended...): its own words.
            (None, _) => self.0.fmt(f),
        }
    }
}

impl std::error::Error for CallError {}

impl ClientCommand {
    /// Whether `--json` was given: errors then print as JSON too.
    pub fn json(&self) -> bool {
        match self {
            ClientCommand::Topic(a) => a.opts.json,
            ClientCommand::Publish(a) => a.opts.json,
            ClientCommand::Fetch(a) => a.opts.json,
            ClientCommand::Consume(a) => a.opts.json,
            ClientCommand::Group(a) => a.opts.json,
        }
    }
}

/// An error as one JSON object: `{"error": {"code": "NOT_FOUND", "message": "..."}}`, the
/// gRPC status code name when the broker answered with one (else `null`) and the message;
/// `text` is the whole error on one line, used when it did not come from the broker.
pub fn error_json(error: &anyhow::Error, text: &str) -> Value {
    let call = error.chain().find_map(|e| e.downcast_ref::<CallError>());
    match call.and_then(|c| c.0.code_name().map(|code| (code, c.0.message()))) {
        Some((code, message)) => json!({"error": {"code": code, "message": message}}),
        None => json!({"error": {"code": Value::Null, "message": text}}),
    }
}

/// Runs one client command on a single-threaded runtime.
pub fn run(command: ClientCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        match command {
            ClientCommand::Topic(args) => topic(args).await,
            ClientCommand::Publish(args) => publish(args).await,
            ClientCommand::Fetch(args) => fetch(args).await,
            ClientCommand::Consume(args) => consume(args).await,
            ClientCommand::Group(args) => group(args).await,
        }
    });
    match result {
        // `herald fetch ... | head`: the reader went away, which is not an error.
        Err(e)
            if e.downcast_ref::<io::Error>()
                .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        other => other,
    }
}

pub(crate) async fn connect(opts: &ClientOpts) -> anyhow::Result<Client> {
    let tls = opts.tls_ca.is_some() || opts.tls_cert.is_some();
    let url = if opts.server.contains("://") {
        opts.server.clone()
    } else if tls {
        format!("https://{}", opts.server)
    } else {
        format!("http://{}", opts.server)
    };
    let read = |path: &PathBuf, what: &str| {
        std::fs::read(path).with_context(|| format!("reading the {what} {}", path.display()))
    };
    let mut builder = Client::builder(url.clone())
        .connect_timeout(CONNECT_TIMEOUT)
        // A command waits as long as its call takes (Ctrl-C ends it), as gRPC tools do.
        .no_request_timeout()
        .keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT);
    if let Some(token) = &opts.token {
        builder = builder.token(token.trim());
    }
    if let Some(ca) = &opts.tls_ca {
        builder = builder.tls_ca_pem(read(ca, "CA certificate")?);
    }
    if let (Some(cert), Some(key)) = (&opts.tls_cert, &opts.tls_key) {
        builder =
            builder.tls_identity_pem(read(cert, "client certificate")?, read(key, "client key")?);
    }
    if let Some(domain) = &opts.tls_domain {
        builder = builder.tls_domain(domain.clone());
    }
    let connected = builder.connect().await;
    match connected {
        Ok(client) => Ok(client),
        Err(herald_client::Error::InvalidArgument(message)) => {
            // Say where the address came from when it was not on the command line.
            let from_env = std::env::var("HERALD_SERVER").is_ok_and(|v| v == opts.server)
                && !std::env::args().any(|a| a == "--server" || a.starts_with("--server="));
            let source = if from_env {
                "--server (from environment variable HERALD_SERVER)"
            } else {
                "--server"
            };
            anyhow::bail!("invalid {source}: {message}")
        }
        Err(error) => Err(CallError(herald_client::Error::Unavailable(format!(
            "cannot connect to the broker at {url}: {}",
            error.message()
        )))
        .into()),
    }
}

/// Stdout, buffered; flushed at the end of each unit of output so `--follow` is live.
struct Out {
    out: io::BufWriter<io::Stdout>,
}

impl Out {
    fn new() -> Self {
        Out {
            out: io::BufWriter::new(io::stdout()),
        }
    }

    fn line(&mut self, line: impl fmt::Display) -> io::Result<()> {
        writeln!(self.out, "{line}")
    }

    fn json(&mut self, value: &Value) -> io::Result<()> {
        writeln!(self.out, "{value}")
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

// ---------------------------------------------------------------------------------------
// topic

async fn topic(args: TopicArgs) -> anyhow::Result<()> {
    let admin = connect(&args.opts).await?.admin();
    let json = args.opts.json;
    let mut out = Out::new();
    match args.command {
        TopicCommand::Create {
            name,
            partitions,
            retention_ms,
            retention_bytes,
            segment_bytes,
            fsync,
            fsync_interval_ms,
            max_message_bytes,
            dedup_window_ms,
            replication_factor,
        } => {
            let config = TopicConfig {
                retention_ms,
                retention_bytes,
                segment_bytes,
                fsync_policy: fsync.map(|fsync| match fsync {
                    FsyncSetting::Always => FsyncPolicy::Always,
                    FsyncSetting::Interval => FsyncPolicy::Interval,
                    FsyncSetting::Never => FsyncPolicy::Never,
                }),
                fsync_interval_ms,
                max_message_bytes,
                dedup_window_ms,
            };
            let topic = admin
                .create_replicated_topic(&name, partitions, config, replication_factor)
                .await
                .map_err(CallError)?;
            if json {
                out.json(&topic_json(&topic))?;
            } else {
                out.line(format_args!(
                    "created topic {:?} with {} partition{}",
                    topic.name,
                    topic.partition_count,
                    plural(u64::from(topic.partition_count))
                ))?;
            }
        }
        TopicCommand::Alter {
            name,
            retention_ms,
            retention_bytes,
            max_message_bytes,
            partitions,
        } => {
            let change = TopicAlter {
                retention_ms,
                retention_bytes,
                max_message_bytes,
                partitions,
            };
            if change == TopicAlter::default() {
                anyhow::bail!(
                    "nothing to change: give --retention-ms, --retention-bytes, --max-message-bytes or --partitions"
                );
            }
            let topic = admin.alter_topic(&name, change).await.map_err(CallError)?;
            if json {
                out.json(&topic_json(&topic))?;
            } else {
                out.line(format_args!("altered topic {:?}", topic.name))?;
                for line in describe_text(&topic) {
                    out.line(line)?;
                }
            }
        }
        TopicCommand::List => {
            let topics = admin.list_topics().await.map_err(CallError)?;
            if json {
                for t in &topics {
                    out.json(&json!({"name": t.name, "partition_count": t.partition_count}))?;
                }
            } else if topics.is_empty() {
                out.line("no topics")?;
            } else {
                let mut rows = vec![vec!["NAME".to_owned(), "PARTITIONS".to_owned()]];
                rows.extend(
                    topics
                        .iter()
                        .map(|t| vec![t.name.clone(), t.partition_count.to_string()]),
                );
                for line in table(&rows) {
                    out.line(line)?;
                }
            }
        }
        TopicCommand::Describe { name } => {
            let topic = admin.describe_topic(&name).await.map_err(CallError)?;
            if json {
                out.json(&topic_json(&topic))?;
            } else {
                for line in describe_text(&topic) {
                    out.line(line)?;
                }
            }
        }
        TopicCommand::Delete { name } => {
            admin.delete_topic(&name).await.map_err(CallError)?;
            if json {
                out.json(&json!({"deleted": name}))?;
            } else {
                out.line(format_args!("deleted topic {name:?}"))?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// A policy's name; a policy this client does not know shows as `unspecified`.
fn fsync_name(policy: Option<FsyncPolicy>) -> &'static str {
    match policy {
        Some(FsyncPolicy::Always) => "always",
        Some(FsyncPolicy::Interval) => "interval",
        Some(FsyncPolicy::Never) => "never",
        None => "unspecified",
    }
}

fn topic_json(topic: &TopicInfo) -> Value {
    let c = &topic.config;
    json!({
        "name": topic.name,
        "partition_count": topic.partition_count,
        "config": {
            "retention_ms": c.retention_ms,
            "retention_bytes": c.retention_bytes,
            "segment_bytes": c.segment_bytes,
            "fsync": fsync_name(c.fsync_policy),
            "fsync_interval_ms": c.fsync_interval_ms,
            "max_message_bytes": c.max_message_bytes,
            "dedup_window_ms": c.dedup_window_ms,
        },
        "partitions": topic.partitions.iter().map(|p| json!({
            "partition": p.partition.0,
            "start_offset": p.start_offset.0,
            "end_offset": p.end_offset.0,
            "size_bytes": p.size_bytes,
            "allocated_bytes": p.allocated_bytes,
            "segment_count": p.segment_count,
        })).collect::<Vec<_>>(),
    })
}

fn describe_text(topic: &TopicInfo) -> Vec<String> {
    let c = &topic.config;
    let opt = |v: Option<u64>, zero: &str| match v {
        None => "-".to_owned(),
        Some(0) if !zero.is_empty() => format!("0 ({zero})"),
        Some(v) => v.to_string(),
    };
    let settings = vec![
        vec!["topic".to_owned(), topic.name.clone()],
        vec!["partitions".to_owned(), topic.partition_count.to_string()],
        vec![
            "retention_ms".to_owned(),
            opt(c.retention_ms, "no age limit"),
        ],
        vec![
            "retention_bytes".to_owned(),
            opt(c.retention_bytes, "no size limit"),
        ],
        vec!["segment_bytes".to_owned(), opt(c.segment_bytes, "")],
        vec!["fsync".to_owned(), fsync_name(c.fsync_policy).to_owned()],
        vec![
            "fsync_interval_ms".to_owned(),
            opt(c.fsync_interval_ms.map(u64::from), ""),
        ],
        vec![
            "max_message_bytes".to_owned(),
            opt(c.max_message_bytes.map(u64::from), ""),
        ],
        vec!["dedup_window_ms".to_owned(), opt(c.dedup_window_ms, "off")],
    ];
    let mut lines = table(&settings);
    lines.push(String::new());
    let mut rows = vec![
        [
            "PARTITION",
            "START",
            "END",
            "RECORDS",
            "SIZE_BYTES",
            "ALLOCATED_BYTES",
            "SEGMENTS",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    rows.extend(topic.partitions.iter().map(|p| {
        vec![
            p.partition.to_string(),
            p.start_offset.to_string(),
            p.end_offset.to_string(),
            p.end_offset.0.saturating_sub(p.start_offset.0).to_string(),
            p.size_bytes.to_string(),
            p.allocated_bytes.to_string(),
            p.segment_count.to_string(),
        ]
    }));
    lines.extend(table(&rows));
    lines
}

/// Left-aligned columns separated by two spaces, without trailing blanks.
fn table(rows: &[Vec<String>]) -> Vec<String> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|row| {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                if i + 1 < row.len() {
                    let pad = widths[i] - cell.chars().count();
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            line
        })
        .collect()
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

// ---------------------------------------------------------------------------------------
// publish

/// Where record values come from: the command line, or stdin read on its own thread.
enum Values {
    Args(std::vec::IntoIter<Vec<u8>>),
    Stdin(mpsc::Receiver<io::Result<Vec<u8>>>),
}

impl Values {
    fn args(values: Vec<OsString>) -> Values {
        use std::os::unix::ffi::OsStringExt;
        let values: Vec<Vec<u8>> = values.into_iter().map(OsStringExt::into_vec).collect();
        Values::Args(values.into_iter())
    }

    /// Reads stdin lines on a plain thread (not `spawn_blocking`: a read blocked on a
    /// terminal must not keep the runtime from shutting down on an error).
    fn stdin() -> Values {
        let (tx, rx) = mpsc::channel(STDIN_QUEUE);
        std::thread::spawn(move || {
            let mut stdin = io::stdin().lock();
            loop {
                let mut line = Vec::new();
                let item = match stdin.read_until(b'\n', &mut line) {
                    Ok(0) => break,
                    Ok(_) => {
                        if line.last() == Some(&b'\n') {
                            line.pop();
                            if line.last() == Some(&b'\r') {
                                line.pop();
                            }
                        }
                        Ok(line)
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => Err(e),
                };
                let failed = item.is_err();
                if tx.blocking_send(item).is_err() || failed {
                    break;
                }
            }
        });
        Values::Stdin(rx)
    }

    /// The next value, waiting for it until `until` (forever if `None`). `Ok(None)` at the
    /// end of the values, or when the wait is over.
    async fn next(&mut self, until: Option<Instant>) -> io::Result<Option<Vec<u8>>> {
        match (self, until) {
            (Values::Args(values), _) => Ok(values.next()),
            (Values::Stdin(rx), None) => rx.recv().await.transpose(),
            (Values::Stdin(rx), Some(deadline)) => {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(value) => value.transpose(),
                    Err(_) => Ok(None),
                }
            }
        }
    }
}

async fn publish(args: PublishArgs) -> anyhow::Result<()> {
    let client = connect(&args.opts).await?;
    // Fails early (NOT_FOUND) for a missing topic, and tells the batch limit: a topic's
    // max_message_bytes also bounds a whole publish (see topics.proto).
    let topic = client
        .admin()
        .describe_topic(&args.topic)
        .await
        .map_err(CallError)?;
    let max_message = topic
        .config
        .max_message_bytes
        .map_or(usize::MAX, |m| m as usize);
    // Per-record overhead in the storage format, with room to spare.
    let batch_limit = PUBLISH_BATCH_BYTES.min(max_message.saturating_sub(256).max(1));

    let key = args.key.map(Bytes::from);
    let from_stdin = args.values.is_empty();
    let headers: Vec<(String, Bytes)> = args
        .headers
        .into_iter()
        .map(|(name, value)| (name, Bytes::from(value)))
        .collect();
    let fixed_bytes = key.as_ref().map_or(0, Bytes::len)
        + headers
            .iter()
            .map(|(name, value)| name.len() + value.len() + 8)
            .sum::<usize>()
        + 24;
    // Keyless records without --partition go round-robin, one request per partition in
    // turn, from a random partition: successive runs spread over the topic instead of
    // each starting at partition 0.
    let partitions = topic.partition_count.max(1);
    let mut round_robin = RandomState::new().hash_one(std::process::id()) as u32 % partitions;
    let separator = args
        .key_separator
        .as_deref()
        .map(str::as_bytes)
        .filter(|sep| !sep.is_empty());
    if args.key_separator.is_some() && separator.is_none() {
        anyhow::bail!("--key-separator must not be empty");
    }
    let mut numbered = 0u64;
    let mut record = |value: Vec<u8>, round_robin: u32| -> anyhow::Result<Record> {
        numbered += 1;
        let what = if from_stdin { "line" } else { "value" };
        let mut own_headers = Vec::new();
        let (key, value) = match separator {
            _ if args.input == PublishInput::Json => {
                let (key, value, headers) = json_record(&value)
                    .map_err(|e| anyhow::anyhow!("{what} {numbered} is not a record: {e}"))?;
                own_headers = headers;
                (key, value)
            }
            None => (key.clone(), Bytes::from(value)),
            Some(sep) => {
                let Some(at) = memchr::memmem::find(&value, sep) else {
                    anyhow::bail!(
                        "{what} {numbered} has no key separator {:?}",
                        String::from_utf8_lossy(sep)
                    );
                };
                let value = Bytes::from(value);
                (Some(value.slice(..at)), value.slice(at + sep.len()..))
            }
        };
        let mut record = Record::new(value);
        let keyed = key.is_some();
        if let Some(key) = key {
            record = record.key(key);
        }
        for (name, value) in own_headers.into_iter().chain(headers.iter().cloned()) {
            record = record.header(name, value);
        }
        Ok(match args.partition {
            Some(partition) => record.partition(partition),
            None if !keyed => record.partition(round_robin),
            None => record,
        })
    };
    let mut values = if from_stdin {
        Values::stdin()
    } else {
        Values::args(args.values)
    };
    let producer = client.producer(
        ProducerConfig::new(args.topic.clone())
            // Each batch of lines goes as one request as soon as it is read: the lines
            // already waited PUBLISH_LINGER for each other.
            .linger(Duration::ZERO)
            // A failed publish is reported, not retried: a retry after a lost reply could
            // store the records twice.
            .max_retries(0),
    );

    let mut out = Out::new();
    let mut carried: Option<Vec<u8>> = None;
    let mut total = 0u64;
    loop {
        // One batch: the first value (waiting for it), then what arrives within
        // PUBLISH_LINGER, up to the limits: piped input goes in large requests, and a line
        // typed at a terminal goes at once.
        let mut records = Vec::new();
        let mut bytes = 0;
        let mut until = None;
        loop {
            let value = match carried.take() {
                Some(v) => v,
                None => match values.next(until).await? {
                    Some(v) => v,
                    None => break,
                },
            };
            let size = fixed_bytes + value.len();
            if !records.is_empty()
                && (records.len() >= PUBLISH_BATCH_RECORDS || bytes + size > batch_limit)
            {
                carried = Some(value);
                break;
            }
            until.get_or_insert_with(|| Instant::now() + PUBLISH_LINGER);
            bytes += size;
            records.push(record(value, round_robin)?);
        }
        if records.is_empty() {
            break;
        }
        round_robin = (round_robin + 1) % partitions;
        // One batch goes to one partition (the key's, the one named, or the next in turn)
        // and is stored whole, in order.
        let acked = producer
            .send_all(records)
            .await
            .map_err(CallError)?
            .await
            .map_err(CallError)?;
        total += acked.len() as u64;
        for (partition, base_offset, last_offset) in offset_runs(&acked) {
            let count = last_offset - base_offset + 1;
            if args.opts.json {
                out.json(&json!({
                    "topic": args.topic,
                    "partition": partition,
                    "base_offset": base_offset,
                    "last_offset": last_offset,
                    "records": count,
                }))?;
            } else if count == 1 {
                out.line(format_args!("partition {partition}  offset {base_offset}"))?;
            } else {
                out.line(format_args!(
                    "partition {partition}  offsets {base_offset}-{last_offset}  ({count} records)"
                ))?;
            }
        }
        out.flush()?;
    }
    producer.close().await.map_err(CallError)?;
    if total == 0 {
        eprintln!("nothing to publish: no values given and stdin was empty");
    }
    Ok(())
}

/// `(partition, first offset, last offset)` of each run of consecutive offsets in one
/// partition, in the order given.
fn offset_runs(acked: &[Acked]) -> Vec<(u32, u64, u64)> {
    let mut runs: Vec<(u32, u64, u64)> = Vec::new();
    for a in acked {
        match runs.last_mut() {
            Some((partition, _, last))
                if *partition == a.partition.0 && *last + 1 == a.offset.0 =>
            {
                *last = a.offset.0;
            }
            _ => runs.push((a.partition.0, a.offset.0, a.offset.0)),
        }
    }
    runs
}

// ---------------------------------------------------------------------------------------
// fetch

async fn fetch(args: FetchArgs) -> anyhow::Result<()> {
    let client = connect(&args.opts).await?;
    if args.limit == Some(0) {
        return Ok(());
    }
    let partitions: Vec<u32> = match args.partition {
        Some(partition) => vec![partition],
        None => {
            let topic = client
                .admin()
                .describe_topic(&args.topic)
                .await
                .map_err(CallError)?;
            (0..topic.partition_count).collect()
        }
    };
    let mut reading = Reading {
        show_partition: args.partition.is_none(),
        json: args.opts.json,
        next: partitions.iter().map(|&p| (p, args.from)).collect(),
        left: args.limit,
        out: Out::new(),
        connected: false,
    };
    // Ctrl-C ends a --follow cleanly (exit 0). Without --follow the default action stays.
    let interrupted = async {
        if args.follow {
            let _ = tokio::signal::ctrl_c().await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(interrupted);

    // First what is there now, every partition up to its end, merged by timestamp.
    let caught_up = tokio::select! {
        caught_up = reading.catch_up(&client, &args) => caught_up,
        () = &mut interrupted => {
            reading.out.flush()?;
            return Ok(());
        }
    };
    match caught_up {
        Ok(()) => {}
        // --follow rides out a broker restart: reconnect below.
        Err(Stop::Broker(error)) if args.follow && broker_gone(&error) => {}
        Err(stop) => return Err(stop.into()),
    }
    if !args.follow || reading.left == Some(0) {
        reading.out.flush()?;
        return Ok(());
    }
    // Then new records as they arrive, in arrival order across partitions.
    let mut delays = reconnect_delays();
    loop {
        let ended = tokio::select! {
            ended = reading.follow(&client, &args) => ended,
            () = &mut interrupted => break,
        };
        if std::mem::take(&mut reading.connected) {
            // It was connected again: the next outage starts its waits from the shortest.
            delays = reconnect_delays();
        }
        match ended {
            Ok(()) => break,
            Err(Stop::Broker(error)) if broker_gone(&error) => {
                let delay = delays.next().unwrap_or(RECONNECT_MAX);
                eprintln!(
                    "{}; reconnecting in {} ms",
                    CallError(error),
                    delay.as_millis()
                );
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = &mut interrupted => break,
                }
            }
            Err(stop) => return Err(stop.into()),
        }
    }
    reading.out.flush()?;
    Ok(())
}

/// Why a reading stopped: the broker's error, or stdout's.
enum Stop {
    Broker(herald_client::Error),
    Output(io::Error),
}

impl From<herald_client::Error> for Stop {
    fn from(error: herald_client::Error) -> Stop {
        Stop::Broker(error)
    }
}

impl From<io::Error> for Stop {
    fn from(error: io::Error) -> Stop {
        Stop::Output(error)
    }
}

impl From<Stop> for anyhow::Error {
    fn from(stop: Stop) -> anyhow::Error {
        match stop {
            Stop::Broker(error) => CallError(error).into(),
            // Kept an io::Error, so `run` can tell a closed pipe.
            Stop::Output(error) => error.into(),
        }
    }
}

/// First and longest wait between attempts to reach a broker that went away.
const RECONNECT_MIN: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Exponential waits with jitter, so many followers of one broker do not all come back at
/// the same instant; never gives up (Ctrl-C does).
fn reconnect_delays() -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(RECONNECT_MIN)
        .with_max_delay(RECONNECT_MAX)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Whether an error means the broker (or the connection to it) went away, rather than a
/// refusal: a restart, a shutdown, a cut connection.
fn broker_gone(error: &herald_client::Error) -> bool {
    use herald_client::Error;
    match error {
        Error::Unavailable(_) | Error::Transport(_) => true,
        // A connection cut mid-stream surfaces as UNKNOWN or CANCELLED from the transport.
        Error::Status { .. } => matches!(error.code_name(), Some("UNKNOWN" | "CANCELLED")),
        _ => false,
    }
}

/// What `fetch` has printed and where each partition goes on.
struct Reading {
    show_partition: bool,
    json: bool,
    /// Set when `follow` has opened its streams.
    connected: bool,
    /// Per partition, where to read next.
    next: Vec<(u32, Position)>,
    /// Records still to print (`--limit`), if limited.
    left: Option<u64>,
    out: Out,
}

impl Reading {
    fn print(&mut self, topic: &str, record: &FetchedRecord) -> io::Result<()> {
        if let Some((_, next)) = self.next.iter_mut().find(|(p, _)| *p == record.partition.0) {
            *next = Position::Offset(record.offset.0 + 1);
        }
        if let Some(left) = &mut self.left {
            *left = left.saturating_sub(1);
        }
        if self.json {
            self.out.json(&record_json(topic, record))
        } else if self.show_partition {
            self.out.line(format_args!(
                "{}\t{}",
                record.partition,
                record_text(record)
            ))
        } else {
            self.out.line(record_text(record))
        }
    }

    fn config(&self, topic: &str, partition: u32, start: Position, follow: bool) -> FetchConfig {
        let mut config = FetchConfig::new(topic, partition)
            .start(start)
            .follow(follow);
        if let Some(left) = self.left {
            config = config.max_records(left);
        }
        config
    }

    /// Every partition up to its end as of the request, merged: the record with the
    /// lowest timestamp (then partition, then offset) of the partitions' next records goes
    /// first.
    async fn catch_up(&mut self, client: &Client, args: &FetchArgs) -> Result<(), Stop> {
        let mut streams = Vec::with_capacity(self.next.len());
        for &(partition, start) in &self.next {
            let config = self.config(&args.topic, partition, start, false);
            streams.push(client.fetch(config).await?);
        }
        let mut heads: Vec<Option<FetchedRecord>> = Vec::with_capacity(streams.len());
        for stream in &mut streams {
            heads.push(stream.next().await.transpose()?);
        }
        while self.left != Some(0) {
            let first = heads
                .iter()
                .enumerate()
                .filter_map(|(i, head)| head.as_ref().map(|r| (i, r)))
                .min_by_key(|(_, r)| (r.timestamp_ms, r.partition.0, r.offset.0))
                .map(|(i, _)| i);
            let Some(i) = first else { break };
            let record = heads[i].take().expect("the head just picked");
            self.print(&args.topic, &record)?;
            // The next record may take a while (a slow broker): show what is printed.
            let next = match streams[i].next().now_or_never() {
                Some(next) => next,
                None => {
                    self.out.flush()?;
                    streams[i].next().await
                }
            };
            heads[i] = next.transpose()?;
        }
        Ok(())
    }

    /// Follows every partition from where the reading got to, printing records as they
    /// come; returns when `--limit` is reached, or with the error that ended a stream.
    async fn follow(&mut self, client: &Client, args: &FetchArgs) -> Result<(), Stop> {
        let mut streams = Vec::with_capacity(self.next.len());
        for &(partition, start) in &self.next {
            let config = self.config(&args.topic, partition, start, true);
            streams.push(client.fetch(config).await?);
        }
        self.connected = true;
        let mut merged = futures::stream::select_all(streams);
        while self.left != Some(0) {
            let record = match merged.next().now_or_never() {
                Some(record) => record,
                None => {
                    self.out.flush()?;
                    merged.next().await
                }
            };
            let Some(record) = record else { break };
            self.print(&args.topic, &record?)?;
        }
        Ok(())
    }
}

/// `offset<TAB>key<TAB>value`, then `<TAB>[name=value, ...]` when the record has headers.
/// Bytes that are not UTF-8 are shown lossily; line breaks and tabs are escaped so that a
/// record is always one line. A record without a key shows `-`.
fn record_text(record: &FetchedRecord) -> String {
    format!(
        "{}\t{}",
        record.offset,
        message_text(record.key.as_deref(), &record.value, &record.headers)
    )
}

/// `key<TAB>value`, then `<TAB>[name=value, ...]` when there are headers.
fn message_text(key: Option<&[u8]>, value: &[u8], headers: &[(String, Bytes)]) -> String {
    let mut line = format!(
        "{}\t{}",
        key.map_or("-".into(), printable),
        printable(value)
    );
    if !headers.is_empty() {
        let headers: Vec<String> = headers
            .iter()
            .map(|(name, value)| format!("{}={}", printable(name.as_bytes()), printable(value)))
            .collect();
        line.push_str(&format!("\t[{}]", headers.join(", ")));
    }
    line
}

fn printable(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    if !text.contains(['\n', '\r', '\t']) {
        return text.into_owned();
    }
    text.replace('\n', "\\n")
        .replace('\r', "\\r")
        .replace('\t', "\\t")
}

/// One fetched record as JSON. Keys, values and header values are strings when they are
/// UTF-8, else `{"base64": "..."}`; a missing key is `null`.
fn record_json(topic: &str, record: &FetchedRecord) -> Value {
    json!({
        "topic": topic,
        "partition": record.partition.0,
        "offset": record.offset.0,
        "timestamp_ms": record.timestamp_ms,
        "key": record.key.as_ref().map(|k| bytes_json(k)),
        "value": bytes_json(&record.value),
        "headers": headers_json(&record.headers),
    })
}

fn headers_json(headers: &[(String, Bytes)]) -> Value {
    headers
        .iter()
        .map(|(name, value)| json!({"key": name, "value": bytes_json(value)}))
        .collect()
}

fn bytes_json(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => Value::String(text.to_owned()),
        Err(_) => json!({ "base64": base64(bytes) }),
    }
}

/// Standard base64 with padding (RFC 4648).
fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

// ---------------------------------------------------------------------------------------
// consume

async fn consume(args: ConsumeArgs) -> anyhow::Result<()> {
    let client = connect(&args.opts).await?;
    if args.limit == Some(0) {
        return Ok(());
    }
    let client_id = args
        .client_id
        .clone()
        .unwrap_or_else(|| format!("herald-cli-{}", std::process::id()));
    let mut config = ConsumerConfig::new(args.topic.clone(), args.group.clone())
        .client_id(client_id)
        .max_in_flight_messages(args.max_in_flight.unwrap_or(0))
        .max_in_flight_per_key(args.max_in_flight_per_key.unwrap_or(0))
        // The CLI prints each message on its own; one Delivery per message suits it.
        .batched_deliveries(false);
    if let Some(from) = args.from {
        config = config.start_position(from);
    }
    if let Some(max) = args.limit {
        // Credit for exactly that many: none is taken (and its delivery attempt used)
        // only to be dropped unprinted.
        config = config.max_messages(max);
    }
    let mut subscription = client
        .consumer(config)
        .subscribe()
        .await
        .map_err(CallError)?;

    let mut out = Out::new();
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut failed = None;
    loop {
        let first = tokio::select! {
            message = subscription.next() => message,
            _ = &mut interrupted => break,
        };
        // None: --max was reached (an error comes as Some(Err) first).
        let Some(first) = first else { break };
        // Everything that has arrived: printed, flushed, then acked together.
        let mut messages = Vec::new();
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Ok(message) => messages.push(message),
                Err(error) => {
                    failed = Some(error);
                    break;
                }
            }
            next = subscription.next().now_or_never().flatten();
        }
        for message in &messages {
            let delivery = Shown::from(message);
            if args.opts.json {
                out.json(&delivery_json(&args.topic, &args.group, &delivery))?;
            } else {
                out.line(delivery_text(&delivery))?;
            }
        }
        // Printed (and flushed) first, then acked: a message whose line could not be
        // written is delivered again.
        out.flush()?;
        for message in messages {
            let settled = if args.nack {
                message.nack_with(None, NACK_REASON)
            } else {
                message.ack()
            };
            settled.map_err(CallError)?;
        }
        if failed.is_some() {
            break;
        }
    }
    // Leave cleanly: the broker takes the last acks, removes the member, then ends the
    // stream. Deliveries not printed go back to the group. A close that fails changes
    // nothing for what was printed.
    let _ = subscription.close().await;
    match failed {
        Some(error) => Err(CallError(error).into()),
        None => Ok(()),
    }
}

/// What `consume` shows of a delivery: a view of a [`Message`], which only the client
/// makes.
struct Shown<'a> {
    partition: u32,
    offset: u64,
    attempt: u32,
    timestamp_ms: i64,
    key: Option<&'a [u8]>,
    value: &'a [u8],
    headers: &'a [(String, Bytes)],
}

impl<'a> From<&'a Message> for Shown<'a> {
    fn from(message: &'a Message) -> Shown<'a> {
        Shown {
            partition: message.partition().0,
            offset: message.offset().0,
            attempt: message.attempt(),
            timestamp_ms: message.timestamp_ms(),
            key: message.key().map(|k| &k[..]),
            value: message.value(),
            headers: message.headers(),
        }
    }
}

/// `partition<TAB>offset<TAB>attempt<TAB>key<TAB>value`, then `<TAB>[name=value, ...]`
/// when the message has headers; escaped like a fetched record.
fn delivery_text(delivery: &Shown<'_>) -> String {
    format!(
        "{}\t{}\t{}\t{}",
        delivery.partition,
        delivery.offset,
        delivery.attempt,
        message_text(delivery.key, delivery.value, delivery.headers)
    )
}

/// One delivery as JSON, with the same byte encoding as `fetch --json`.
fn delivery_json(topic: &str, group: &str, delivery: &Shown<'_>) -> Value {
    json!({
        "topic": topic,
        "group": group,
        "partition": delivery.partition,
        "offset": delivery.offset,
        "delivery_attempt": delivery.attempt,
        "timestamp_ms": delivery.timestamp_ms,
        "key": delivery.key.map(bytes_json),
        "value": bytes_json(delivery.value),
        "headers": headers_json(delivery.headers),
    })
}

// ---------------------------------------------------------------------------------------
// group

async fn group(args: GroupArgs) -> anyhow::Result<()> {
    let admin = connect(&args.opts).await?.admin();
    let json = args.opts.json;
    let mut out = Out::new();
    match args.command {
        GroupCommand::Create {
            topic,
            group,
            settings,
            from,
        } => {
            let settings = settings.settings();
            // A group starts at the end unless told otherwise, as one created by a join.
            let start = from.unwrap_or(Position::Latest);
            let description = admin
                .create_group(&topic, &group, settings, start)
                .await
                .map_err(CallError)?;
            if json {
                out.json(&group_json(&description))?;
            } else {
                out.line(format_args!(
                    "created group {:?} of topic {:?}",
                    description.group, description.topic
                ))?;
            }
        }
        GroupCommand::Update {
            topic,
            group,
            settings,
        } => {
            let description = admin
                .update_group(&topic, &group, settings.settings())
                .await
                .map_err(CallError)?;
            if json {
                out.json(&group_json(&description))?;
            } else {
                out.line(format_args!(
                    "updated group {:?} of topic {:?}",
                    description.group, description.topic
                ))?;
                for line in group_text(&description)
                    .into_iter()
                    .take_while(|l| !l.is_empty())
                {
                    out.line(line)?;
                }
            }
        }
        GroupCommand::Pending {
            topic,
            group,
            partition,
            key,
            limit,
        } => {
            let filter = PendingFilter {
                partition: partition.map(Partition),
                key: key.map(Bytes::from),
                limit: limit.unwrap_or(0),
            };
            let (pending, truncated) = admin
                .list_pending(&topic, &group, filter)
                .await
                .map_err(CallError)?;
            if json {
                for m in &pending {
                    out.json(&json!({
                        "topic": topic,
                        "group": group,
                        "partition": m.partition.0,
                        "offset": m.offset.0,
                        "key": m.key.as_ref().map(|k| bytes_json(k)),
                        "delivery_attempt": m.delivery_attempt,
                        "state": if m.in_flight { "in_flight" } else { "backoff" },
                        "deadline_ms": m.deadline_ms,
                        "member_id": (!m.member_id.is_empty()).then_some(&m.member_id),
                    }))?;
                }
                if truncated {
                    out.json(&json!({"truncated": true}))?;
                }
            } else if pending.is_empty() {
                out.line("no pending messages")?;
            } else {
                let mut rows = vec![
                    [
                        "PARTITION",
                        "OFFSET",
                        "KEY",
                        "ATTEMPT",
                        "STATE",
                        "DEADLINE",
                        "MEMBER",
                    ]
                    .map(str::to_owned)
                    .to_vec(),
                ];
                rows.extend(pending.iter().map(|m| {
                    vec![
                        m.partition.to_string(),
                        m.offset.to_string(),
                        m.key.as_deref().map_or("-".to_owned(), printable),
                        m.delivery_attempt.to_string(),
                        if m.in_flight { "in_flight" } else { "backoff" }.to_owned(),
                        time_text(m.deadline_ms),
                        dash_if_empty(&m.member_id),
                    ]
                }));
                for line in table(&rows) {
                    out.line(line)?;
                }
                if truncated {
                    out.line("(more pending messages than --limit; raise it to see them)")?;
                }
            }
        }
        GroupCommand::List { topic } => {
            let groups = admin
                .list_groups(topic.as_deref())
                .await
                .map_err(CallError)?;
            if json {
                for g in &groups {
                    out.json(&json!({
                        "topic": g.topic,
                        "group": g.group,
                        "member_count": g.member_count,
                    }))?;
                }
            } else if groups.is_empty() {
                out.line("no groups")?;
            } else {
                let mut rows = vec![["TOPIC", "GROUP", "MEMBERS"].map(str::to_owned).to_vec()];
                rows.extend(
                    groups.iter().map(|g| {
                        vec![g.topic.clone(), g.group.clone(), g.member_count.to_string()]
                    }),
                );
                for line in table(&rows) {
                    out.line(line)?;
                }
            }
        }
        GroupCommand::Describe { topic, group } => {
            let description = admin
                .describe_group(&topic, &group)
                .await
                .map_err(CallError)?;
            if json {
                out.json(&group_json(&description))?;
            } else {
                for line in group_text(&description) {
                    out.line(line)?;
                }
            }
        }
        GroupCommand::Seek {
            topic,
            group,
            to,
            partition,
        } => {
            let moved = admin
                .seek(&topic, &group, partition.map(Partition), to)
                .await
                .map_err(CallError)?;
            if json {
                out.json(&json!({
                    "topic": topic,
                    "group": group,
                    "partitions": moved.iter().map(|(partition, offset)| json!({
                        "partition": partition.0,
                        "committed_offset": offset.0,
                    })).collect::<Vec<_>>(),
                }))?;
            } else {
                for (partition, offset) in &moved {
                    out.line(format_args!(
                        "partition {partition}  committed offset {offset}"
                    ))?;
                }
            }
        }
        GroupCommand::Redrive {
            topic,
            group,
            limit,
        } => {
            let count = admin
                .redrive(&topic, &group, limit.unwrap_or(0))
                .await
                .map_err(CallError)?;
            if json {
                out.json(&json!({"topic": topic, "group": group, "redriven_count": count}))?;
            } else {
                out.line(format_args!(
                    "redrove {count} message{} to topic {topic:?}",
                    plural(count)
                ))?;
            }
        }
        GroupCommand::Delete { topic, group } => {
            admin
                .delete_group(&topic, &group)
                .await
                .map_err(CallError)?;
            if json {
                out.json(&json!({"topic": topic, "deleted": group}))?;
            } else {
                out.line(format_args!("deleted group {group:?} of topic {topic:?}"))?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

impl Ordering {
    fn mode(self) -> OrderingMode {
        match self {
            Ordering::Key => OrderingMode::Key,
            Ordering::Partition => OrderingMode::Partition,
            Ordering::None => OrderingMode::None,
        }
    }
}

/// A mode's name; a mode this client does not know shows as `unspecified`.
fn ordering_name(mode: Option<OrderingMode>) -> &'static str {
    match mode {
        Some(OrderingMode::Key) => "key",
        Some(OrderingMode::Partition) => "partition",
        Some(OrderingMode::None) => "none",
        None => "unspecified",
    }
}

/// A duration setting in whole ms, as the broker keeps it.
fn millis(d: Option<Duration>) -> Option<u64> {
    d.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn group_json(group: &GroupInfo) -> Value {
    let s = &group.settings;
    json!({
        "topic": group.topic,
        "group": group.group,
        "coordinator": group.coordinator,
        "settings": {
            "ack_deadline_ms": millis(s.ack_deadline),
            "retry_backoff_min_ms": millis(s.retry_backoff_min),
            "retry_backoff_max_ms": millis(s.retry_backoff_max),
            "max_delivery_attempts": s.max_delivery_attempts,
            "dead_letter_topic": s.dead_letter_topic.as_ref().filter(|t| !t.is_empty()),
            "ordering": ordering_name(s.ordering),
        },
        "members": group.members.iter().map(|m| json!({
            "member_id": m.member_id,
            "client_id": m.client_id,
            "partitions": m.partitions.iter().map(|p| p.0).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "partitions": group.partitions.iter().map(|p| json!({
            "partition": p.partition.0,
            "committed_offset": p.committed_offset.0,
            "end_offset": p.end_offset.0,
            "lag": p.lag,
            "in_flight_count": p.in_flight_count,
            "redelivered_count": p.redelivered_count,
            "dead_lettered_count": p.dead_lettered_count,
            "member_id": (!p.member_id.is_empty()).then_some(&p.member_id),
        })).collect::<Vec<_>>(),
    })
}

fn group_text(group: &GroupInfo) -> Vec<String> {
    let s = &group.settings;
    let opt = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
    let mut settings = vec![
        vec!["topic".to_owned(), group.topic.clone()],
        vec!["group".to_owned(), group.group.clone()],
        vec!["ack_deadline_ms".to_owned(), opt(millis(s.ack_deadline))],
        vec![
            "retry_backoff_min_ms".to_owned(),
            opt(millis(s.retry_backoff_min)),
        ],
        vec![
            "retry_backoff_max_ms".to_owned(),
            opt(millis(s.retry_backoff_max)),
        ],
        vec![
            "max_delivery_attempts".to_owned(),
            match s.max_delivery_attempts {
                Some(0) => "0 (retry forever)".to_owned(),
                other => opt(other.map(u64::from)),
            },
        ],
        vec![
            "dead_letter_topic".to_owned(),
            s.dead_letter_topic
                .clone()
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| "-".to_owned()),
        ],
        vec!["ordering".to_owned(), ordering_name(s.ordering).to_owned()],
    ];
    if let Some(node) = group.coordinator {
        settings.insert(2, vec!["coordinator".to_owned(), format!("node {node}")]);
    }
    let mut lines = table(&settings);
    lines.push(String::new());
    if group.members.is_empty() {
        lines.push("no members".to_owned());
    } else {
        let mut rows = vec![
            ["MEMBER", "CLIENT_ID", "PARTITIONS"]
                .map(str::to_owned)
                .to_vec(),
        ];
        rows.extend(group.members.iter().map(|m| {
            vec![
                m.member_id.clone(),
                dash_if_empty(&m.client_id),
                partition_list(&m.partitions),
            ]
        }));
        lines.extend(table(&rows));
    }
    lines.push(String::new());
    let mut rows = vec![
        [
            "PARTITION",
            "COMMITTED",
            "END",
            "LAG",
            "IN_FLIGHT",
            "REDELIVERED",
            "DEAD_LETTERED",
            "OWNER",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    rows.extend(group.partitions.iter().map(|p| {
        vec![
            p.partition.to_string(),
            p.committed_offset.to_string(),
            p.end_offset.to_string(),
            p.lag.to_string(),
            p.in_flight_count.to_string(),
            p.redelivered_count.to_string(),
            p.dead_lettered_count.to_string(),
            dash_if_empty(&p.member_id),
        ]
    }));
    lines.extend(table(&rows));
    lines
}

/// A time in ms since the Unix epoch as RFC 3339 in UTC, to the millisecond.
fn time_text(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| format!("{t:.3}"))
}

fn dash_if_empty(s: &str) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        printable(s.as_bytes())
    }
}

/// `0,1,2`, or `-` for none.
fn partition_list(partitions: &[Partition]) -> String {
    if partitions.is_empty() {
        return "-".to_owned();
    }
    partitions
        .iter()
        .map(Partition::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse() {
        assert_eq!(parse_position("earliest"), Ok(Position::Earliest));
        assert_eq!(parse_position("latest"), Ok(Position::Latest));
        assert_eq!(parse_position("42"), Ok(Position::Offset(42)));
        assert_eq!(
            parse_position("ts:1700000000000"),
            Ok(Position::Timestamp(1_700_000_000_000))
        );
        assert!(parse_position("ts:soon").is_err());
        assert!(parse_position("-1").is_err());
        assert!(parse_position("first").is_err());
    }

    #[test]
    fn times_parse_as_rfc3339_and_relative() {
        // 2023-11-14T22:13:20Z
        let now = jiff::Timestamp::from_millisecond(1_700_000_000_000).unwrap();
        let at = |s: &str| parse_position_at(s, now);
        for s in [
            "2023-11-14T22:13:20Z",
            "ts:2023-11-14T22:13:20Z",
            "2023-11-14T23:13:20+01:00",
            "2023-11-14T22:13:20.000Z",
        ] {
            assert_eq!(at(s), Ok(Position::Timestamp(1_700_000_000_000)), "{s}");
        }
        for (ago, ms) in [
            ("-1h", 3_600_000),
            ("-15m", 900_000),
            ("-1h30m", 5_400_000),
            ("-2d", 172_800_000),
            ("ts:-10s", 10_000),
        ] {
            assert_eq!(
                at(ago),
                Ok(Position::Timestamp(1_700_000_000_000 - ms)),
                "{ago}"
            );
        }
        // A time without a zone is ambiguous: refused with the form to use.
        let error = at("2023-11-14T22:13:20").unwrap_err();
        assert!(error.contains("RFC 3339"), "{error}");
        assert!(at("-soon").is_err());
        assert!(at("yesterday").unwrap_err().contains("time ago"));
    }

    #[test]
    fn headers_parse() {
        assert_eq!(parse_header("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(parse_header("a="), Ok(("a".into(), String::new())));
        assert!(parse_header("novalue").is_err());
        assert!(parse_header("=v").is_err());
    }

    #[test]
    fn status_shows_code_name_and_message() {
        let e = CallError(herald_client::Error::NotFound(
            "topic \"x\" does not exist".into(),
        ));
        assert_eq!(e.to_string(), "NOT_FOUND: topic \"x\" does not exist");
        assert_eq!(
            CallError(herald_client::Error::Unavailable(String::new())).to_string(),
            "UNAVAILABLE"
        );
        assert_eq!(
            CallError(herald_client::Error::Closed).to_string(),
            herald_client::Error::Closed.to_string()
        );
    }

    #[test]
    fn records_print_on_one_line() {
        let record = FetchedRecord {
            partition: Partition(0),
            offset: herald_client::Offset(7),
            timestamp_ms: 1,
            key: None,
            value: Bytes::from_static(b"a\nb\t\xffc"),
            headers: vec![("h".into(), Bytes::from_static(b"v"))],
        };
        assert_eq!(record_text(&record), "7\t-\ta\\nb\\t\u{fffd}c\t[h=v]");
        let json = record_json("t", &record);
        assert_eq!(json["key"], Value::Null);
        assert_eq!(json["value"]["base64"], "YQpiCf9j");
        assert_eq!(json["headers"][0]["value"], "v");
    }

    #[test]
    fn deliveries_print_on_one_line() {
        let delivery = Shown {
            partition: 2,
            offset: 7,
            key: Some(b"k"),
            value: b"a\tb",
            headers: &[],
            timestamp_ms: 1,
            attempt: 3,
        };
        assert_eq!(delivery_text(&delivery), "2\t7\t3\tk\ta\\tb");
        let json = delivery_json("t", "g", &delivery);
        assert_eq!(json["delivery_attempt"], 3);
        assert_eq!(json["group"], "g");
        assert_eq!(json["value"], "a\tb");
        assert!(json.get("ack_id").is_none());
    }

    #[test]
    fn groups_describe_as_tables() {
        let group = GroupInfo {
            topic: "t".into(),
            group: "g".into(),
            settings: GroupSettings {
                ack_deadline: Some(Duration::from_secs(30)),
                max_delivery_attempts: Some(0),
                dead_letter_topic: Some(String::new()),
                ordering: Some(OrderingMode::Partition),
                ..Default::default()
            },
            members: vec![herald_client::GroupMember {
                member_id: "17".into(),
                client_id: String::new(),
                partitions: vec![Partition(0), Partition(1)],
            }],
            partitions: vec![herald_client::GroupPartition {
                partition: Partition(0),
                committed_offset: herald_client::Offset(3),
                end_offset: herald_client::Offset(10),
                lag: 7,
                in_flight_count: 2,
                redelivered_count: 1,
                dead_lettered_count: 0,
                member_id: "17".into(),
            }],
            coordinator: None,
        };
        let text = group_text(&group);
        assert!(text.contains(&"max_delivery_attempts  0 (retry forever)".to_owned()));
        assert!(text.contains(&"dead_letter_topic      -".to_owned()));
        assert!(text.contains(&"ordering               partition".to_owned()));
        assert!(
            text.contains(&"17      -          0,1".to_owned()),
            "{text:?}"
        );
        assert_eq!(
            text.last().unwrap(),
            "0          3          10   7    2          1            0              17"
        );
        let json = group_json(&group);
        assert_eq!(json["settings"]["dead_letter_topic"], Value::Null);
        assert_eq!(json["partitions"][0]["member_id"], "17");
    }

    #[test]
    fn tables_align() {
        let rows = vec![
            vec!["NAME".to_owned(), "PARTITIONS".to_owned()],
            vec!["orders-long".to_owned(), "3".to_owned()],
        ];
        assert_eq!(
            table(&rows),
            vec!["NAME         PARTITIONS", "orders-long  3"]
        );
    }
}
