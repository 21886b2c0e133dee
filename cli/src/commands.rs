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
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Subcommand, ValueEnum};
use futures::{FutureExt, StreamExt};
use herald_broker::config::FsyncSetting;
use herald_client::{
    Acked, Client, ConsumerConfig, FetchConfig, FetchedRecord, FsyncPolicy, GroupInfo,
    GroupSettings, Message, OrderingMode, Partition, Position, ProducerConfig, Record, TopicConfig,
    TopicInfo,
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
    json: bool,
}

/// The client subcommands, flattened into the binary's `Command`.
#[derive(Subcommand)]
pub enum ClientCommand {
    /// Create, list, describe and delete topics.
    Topic(TopicArgs),
    /// Publish records: the VALUEs given, or else one record per line of stdin.
    Publish(PublishArgs),
    /// Read one partition from a position; with --follow, keep tailing it until Ctrl-C.
    Fetch(FetchArgs),
    /// Join a consumer group and print (then ack) its deliveries until Ctrl-C or --max.
    Consume(ConsumeArgs),
    /// Create, list, describe, seek, redrive and delete consumer groups.
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
        /// Number of partitions (1 to 4096), fixed for the topic's lifetime.
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
    #[arg(long)]
    key: Option<String>,
    /// A header `name=value` added to every record; repeat for more.
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// Target partition [default: from the key, else round-robin per request].
    #[arg(long)]
    partition: Option<u32>,
}

#[derive(Args)]
pub struct FetchArgs {
    #[command(flatten)]
    opts: ClientOpts,
    /// The topic to read.
    topic: String,
    /// The partition to read.
    #[arg(long, default_value_t = 0)]
    partition: u32,
    /// Where to start: an offset, `earliest`, `latest`, or `ts:MILLIS` (the first record
    /// at or after that time, in ms since the Unix epoch).
    #[arg(long, default_value = "earliest", value_name = "POSITION", value_parser = parse_position)]
    from: Position,
    /// Keep the stream open and print new records as they arrive, until Ctrl-C.
    #[arg(long)]
    follow: bool,
    /// Stop after this many records.
    #[arg(long, value_name = "N")]
    max_records: Option<u64>,
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
    /// or `ts:MILLIS` [default: latest]. Ignored when the group exists.
    #[arg(long, value_name = "POSITION", value_parser = parse_position)]
    from: Option<Position>,
    /// Stop after this many deliveries (redeliveries count too).
    #[arg(long, value_name = "N")]
    max: Option<u64>,
    /// Nack every delivery (after printing it) instead of acking it, to test redelivery
    /// and dead-lettering.
    #[arg(long)]
    nack: bool,
    /// Most deliveries held unacked at once [default: the broker's].
    #[arg(long, value_name = "N")]
    max_in_flight: Option<u32>,
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
        /// Where the group starts in each partition: an offset, `earliest`, `latest` or
        /// `ts:MILLIS` [default: latest].
        #[arg(long, value_name = "POSITION", value_parser = parse_position)]
        from: Option<Position>,
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
        /// The new position: an offset, `earliest`, `latest` or `ts:MILLIS`.
        #[arg(long, value_name = "POSITION", value_parser = parse_position)]
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
        #[arg(long, value_name = "N")]
        max_messages: Option<u64>,
    },
    /// Delete a consumer group and its committed offsets.
    Delete {
        /// The group's topic.
        topic: String,
        /// The group.
        group: String,
    },
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

/// A position (`--from`, `--to`): `earliest`, `latest`, an offset, or `ts:MILLIS`.
fn parse_position(s: &str) -> Result<Position, String> {
    match s {
        "earliest" => Ok(Position::Earliest),
        "latest" => Ok(Position::Latest),
        _ => {
            if let Some(ts) = s.strip_prefix("ts:") {
                return ts
                    .parse()
                    .map(Position::Timestamp)
                    .map_err(|_| format!("{ts:?} is not a timestamp in ms since the Unix epoch"));
            }
            s.parse()
                .map(Position::Offset)
                .map_err(|_| format!("{s:?} is not an offset, `earliest`, `latest` or `ts:MILLIS`"))
        }
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

async fn connect(opts: &ClientOpts) -> anyhow::Result<Client> {
    let url = if opts.server.contains("://") {
        opts.server.clone()
    } else {
        format!("http://{}", opts.server)
    };
    let connected = Client::builder(url.clone())
        .connect_timeout(CONNECT_TIMEOUT)
        // A command waits as long as its call takes (Ctrl-C ends it), as gRPC tools do.
        .no_request_timeout()
        .keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
        .connect()
        .await;
    match connected {
        Ok(client) => Ok(client),
        Err(herald_client::Error::InvalidArgument(message)) => {
            anyhow::bail!("invalid --server: {message}")
        }
        Err(error) => anyhow::bail!(
            "UNAVAILABLE: cannot connect to the broker at {url}: {}",
            error.message()
        ),
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
                .create_topic(&name, partitions, config)
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
    let record = |value: Vec<u8>, round_robin: u32| {
        let mut record = Record::new(value);
        if let Some(key) = &key {
            record = record.key(key.clone());
        }
        for (name, value) in &headers {
            record = record.header(name.clone(), value.clone());
        }
        match (args.partition, &key) {
            (Some(partition), _) => record.partition(partition),
            (None, None) => record.partition(round_robin),
            (None, Some(_)) => record,
        }
    };
    let mut values = if args.values.is_empty() {
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
            records.push(record(value, round_robin));
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
    if args.max_records == Some(0) {
        return Ok(());
    }
    let mut config = FetchConfig::new(args.topic.clone(), args.partition)
        .start(args.from)
        .follow(args.follow);
    if let Some(max) = args.max_records {
        config = config.max_records(max);
    }
    let mut records = client.fetch(config).await.map_err(CallError)?;
    let mut out = Out::new();
    // Ctrl-C ends a --follow cleanly (exit 0). Without --follow the default action stays.
    let interrupted = async {
        if args.follow {
            let _ = tokio::signal::ctrl_c().await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(interrupted);
    loop {
        // Stdout is flushed whenever the next record is not there yet: a long read goes
        // out in large writes, and --follow shows each record as it comes.
        let record = match records.next().now_or_never() {
            Some(record) => record,
            None => {
                out.flush()?;
                tokio::select! {
                    record = records.next() => record,
                    () = &mut interrupted => break,
                }
            }
        };
        let Some(record) = record else { break };
        let record = record.map_err(CallError)?;
        if args.opts.json {
            out.json(&record_json(&args.topic, &record))?;
        } else {
            out.line(record_text(&record))?;
        }
    }
    out.flush()?;
    Ok(())
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
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// consume

async fn consume(args: ConsumeArgs) -> anyhow::Result<()> {
    let client = connect(&args.opts).await?;
    if args.max == Some(0) {
        return Ok(());
    }
    let client_id = args
        .client_id
        .clone()
        .unwrap_or_else(|| format!("herald-cli-{}", std::process::id()));
    let mut config = ConsumerConfig::new(args.topic.clone(), args.group.clone())
        .client_id(client_id)
        .max_in_flight_messages(args.max_in_flight.unwrap_or(0))
        // The CLI prints each message on its own; one Delivery per message suits it.
        .batched_deliveries(false);
    if let Some(from) = args.from {
        config = config.start_position(from);
    }
    if let Some(max) = args.max {
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
            ack_deadline_ms,
            max_delivery_attempts,
            dead_letter_topic,
            ordering,
            retry_backoff_min_ms,
            retry_backoff_max_ms,
            from,
        } => {
            let ms = |ms: Option<u32>| ms.map(|ms| Duration::from_millis(u64::from(ms)));
            let settings = GroupSettings {
                ack_deadline: ms(ack_deadline_ms),
                retry_backoff_min: ms(retry_backoff_min_ms),
                retry_backoff_max: ms(retry_backoff_max_ms),
                max_delivery_attempts,
                dead_letter_topic,
                ordering: ordering.map(Ordering::mode),
            };
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
            max_messages,
        } => {
            let count = admin
                .redrive(&topic, &group, max_messages.unwrap_or(0))
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
    let settings = vec![
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
    fn headers_parse() {
        assert_eq!(parse_header("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(parse_header("a="), Ok(("a".into(), String::new())));
        assert!(parse_header("novalue").is_err());
        assert!(parse_header("=v").is_err());
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, expected) in cases {
            assert_eq!(base64(input.as_bytes()), expected, "{input:?}");
        }
        assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
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
        assert_eq!(json["value"]["base64"], base64(b"a\nb\t\xffc"));
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
