//! The client side of the `herald` binary: `topic create|list|describe|delete`, `publish`,
//! `fetch`, `consume` and `group create|list|describe|seek|redrive|delete`, talking to a
//! broker over gRPC (`herald.v1`).
//!
//! Output is for people by default (aligned tables, `offset  key  value` lines); `--json`
//! prints one JSON object per line instead. A failed call becomes an error naming the gRPC
//! status code and message, which `main` prints to stderr before exiting with code 1.

use std::ffi::OsString;
use std::fmt;
use std::io::{self, BufRead, Write};
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, Subcommand, ValueEnum};
use herald_broker::config::FsyncSetting;
use herald_proto::HeraldClient;
use herald_proto::v1;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

/// Most records the CLI puts in one publish request.
const PUBLISH_BATCH_RECORDS: usize = 1000;
/// Most record bytes (key, value, headers) the CLI puts in one publish request; a single
/// larger record still goes alone.
const PUBLISH_BATCH_BYTES: usize = 256 * 1024;
/// How long a publish from stdin waits for more lines to send with the first one.
const PUBLISH_LINGER: Duration = Duration::from_millis(5);
/// Lines read from stdin ahead of the publishes.
const STDIN_QUEUE: usize = 4096;
/// Requests (acks, nacks, credit) `consume` queues for the Subscribe stream.
const SUBSCRIBE_QUEUE: usize = 64;
/// How long `consume` waits, when it leaves, for the broker to take its last acks and
/// close the stream.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);
/// The Nack reason of `consume --nack`.
const NACK_REASON: &str = "nacked by herald consume";
/// How long to wait for the TCP connection to the broker.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
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
        /// Size of each segment file.
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
    #[arg(long, default_value = "earliest", value_name = "POSITION")]
    from: StartPosition,
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
    #[arg(long, value_name = "POSITION")]
    from: Option<StartPosition>,
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
        #[arg(long, value_name = "POSITION")]
        from: Option<StartPosition>,
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
        #[arg(long, value_name = "POSITION")]
        to: StartPosition,
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

/// A `--from` position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartPosition {
    Earliest,
    Latest,
    Offset(u64),
    TimestampMs(i64),
}

impl FromStr for StartPosition {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "earliest" => Ok(StartPosition::Earliest),
            "latest" => Ok(StartPosition::Latest),
            _ => {
                if let Some(ts) = s.strip_prefix("ts:") {
                    return ts.parse().map(StartPosition::TimestampMs).map_err(|_| {
                        format!("{ts:?} is not a timestamp in ms since the Unix epoch")
                    });
                }
                s.parse().map(StartPosition::Offset).map_err(|_| {
                    format!("{s:?} is not an offset, `earliest`, `latest` or `ts:MILLIS`")
                })
            }
        }
    }
}

impl StartPosition {
    fn to_proto(self) -> v1::Position {
        use v1::position::Kind;
        let kind = match self {
            StartPosition::Earliest => Kind::Earliest(v1::Earliest {}),
            StartPosition::Latest => Kind::Latest(v1::Latest {}),
            StartPosition::Offset(o) => Kind::Offset(o),
            StartPosition::TimestampMs(t) => Kind::TimestampMs(t),
        };
        v1::Position { kind: Some(kind) }
    }
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some(("", _)) => Err(format!("header {s:?} has an empty name")),
        Some((name, value)) => Ok((name.to_owned(), value.to_owned())),
        None => Err(format!("header {s:?} is not NAME=VALUE")),
    }
}

/// A failed RPC, shown as `CODE: message` (e.g. `NOT_FOUND: topic "x" does not exist`).
#[derive(Debug)]
pub struct RpcError(pub tonic::Status);

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = code_name(self.0.code());
        match self.0.message() {
            "" => f.write_str(name),
            message => write!(f, "{name}: {message}"),
        }
    }
}

impl std::error::Error for RpcError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.0)
    }
}

impl From<tonic::Status> for RpcError {
    fn from(status: tonic::Status) -> Self {
        RpcError(status)
    }
}

/// The canonical name of a gRPC status code, as in the gRPC specification.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
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

async fn connect(opts: &ClientOpts) -> anyhow::Result<HeraldClient<Channel>> {
    let url = if opts.server.contains("://") {
        opts.server.clone()
    } else {
        format!("http://{}", opts.server)
    };
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| anyhow::anyhow!("invalid --server {url:?}: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        // Pings find a broker that vanished without closing the connection (--follow).
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT);
    // The transport error's own text is terse ("transport error"); `main` prints its
    // causes too.
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("UNAVAILABLE: cannot connect to the broker at {url}"))?;
    Ok(HeraldClient::new(channel))
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
    let mut client = connect(&args.opts).await?;
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
        } => {
            let config = v1::TopicConfig {
                retention_ms,
                retention_bytes,
                segment_bytes,
                fsync_policy: fsync.map_or(v1::FsyncPolicy::Unspecified, v1::FsyncPolicy::from)
                    as i32,
                fsync_interval_ms,
                max_message_bytes,
            };
            let topic = client
                .create_topic(v1::CreateTopicRequest {
                    name,
                    partitions,
                    config: Some(config),
                })
                .await
                .map_err(RpcError)?
                .into_inner()
                .topic
                .unwrap_or_default();
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
            let topics = client
                .list_topics(v1::ListTopicsRequest {})
                .await
                .map_err(RpcError)?
                .into_inner()
                .topics;
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
            let topic = client
                .describe_topic(v1::DescribeTopicRequest { name })
                .await
                .map_err(RpcError)?
                .into_inner()
                .topic
                .unwrap_or_default();
            if json {
                out.json(&topic_json(&topic))?;
            } else {
                for line in describe_text(&topic) {
                    out.line(line)?;
                }
            }
        }
        TopicCommand::Delete { name } => {
            client
                .delete_topic(v1::DeleteTopicRequest { name: name.clone() })
                .await
                .map_err(RpcError)?;
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

fn fsync_name(policy: i32) -> String {
    match v1::FsyncPolicy::try_from(policy) {
        Ok(v1::FsyncPolicy::Always) => "always".into(),
        Ok(v1::FsyncPolicy::Interval) => "interval".into(),
        Ok(v1::FsyncPolicy::Never) => "never".into(),
        Ok(v1::FsyncPolicy::Unspecified) => "unspecified".into(),
        Err(_) => format!("unknown ({policy})"),
    }
}

fn topic_json(topic: &v1::TopicDescription) -> Value {
    let c = topic.config.unwrap_or_default();
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
        },
        "partitions": topic.partitions.iter().map(|p| json!({
            "partition": p.partition,
            "start_offset": p.start_offset,
            "end_offset": p.end_offset,
            "size_bytes": p.size_bytes,
            "segment_count": p.segment_count,
        })).collect::<Vec<_>>(),
    })
}

fn describe_text(topic: &v1::TopicDescription) -> Vec<String> {
    let c = topic.config.unwrap_or_default();
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
        vec!["fsync".to_owned(), fsync_name(c.fsync_policy)],
        vec![
            "fsync_interval_ms".to_owned(),
            opt(c.fsync_interval_ms.map(u64::from), ""),
        ],
        vec![
            "max_message_bytes".to_owned(),
            opt(c.max_message_bytes.map(u64::from), ""),
        ],
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
            p.end_offset.saturating_sub(p.start_offset).to_string(),
            p.size_bytes.to_string(),
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
    let mut client = connect(&args.opts).await?;
    // Fails early (NOT_FOUND) for a missing topic, and tells the batch limit: a topic's
    // max_message_bytes also bounds a whole publish (see topics.proto).
    let topic = client
        .describe_topic(v1::DescribeTopicRequest {
            name: args.topic.clone(),
        })
        .await
        .map_err(RpcError)?
        .into_inner()
        .topic
        .unwrap_or_default();
    let max_message = topic
        .config
        .and_then(|c| c.max_message_bytes)
        .map_or(usize::MAX, |m| m as usize);
    // Per-record overhead in the storage format, with room to spare.
    let batch_limit = PUBLISH_BATCH_BYTES.min(max_message.saturating_sub(256).max(1));

    let key = args.key.map(Bytes::from);
    let headers: Vec<v1::Header> = args
        .headers
        .into_iter()
        .map(|(key, value)| v1::Header {
            key,
            value: Bytes::from(value),
        })
        .collect();
    let fixed_bytes = key.as_ref().map_or(0, Bytes::len)
        + headers
            .iter()
            .map(|h| h.key.len() + h.value.len() + 8)
            .sum::<usize>()
        + 24;
    let mut values = if args.values.is_empty() {
        Values::stdin()
    } else {
        Values::args(args.values)
    };

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
            records.push(v1::Record {
                key: key.clone(),
                value: Bytes::from(value),
                headers: headers.clone(),
                timestamp_ms: 0,
            });
        }
        if records.is_empty() {
            break;
        }
        let count = records.len() as u64;
        let reply = client
            .publish(v1::PublishRequest {
                topic: args.topic.clone(),
                partition: args.partition,
                payload: Some(v1::publish_request::Payload::Records(v1::Records {
                    records,
                })),
            })
            .await
            .map_err(RpcError)?
            .into_inner();
        total += count;
        if args.opts.json {
            out.json(&json!({
                "topic": args.topic,
                "partition": reply.partition,
                "base_offset": reply.base_offset,
                "last_offset": reply.last_offset,
                "records": count,
            }))?;
        } else if count == 1 {
            out.line(format_args!(
                "partition {}  offset {}",
                reply.partition, reply.base_offset
            ))?;
        } else {
            out.line(format_args!(
                "partition {}  offsets {}-{}  ({count} records)",
                reply.partition, reply.base_offset, reply.last_offset
            ))?;
        }
        out.flush()?;
    }
    if total == 0 {
        eprintln!("nothing to publish: no values given and stdin was empty");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// fetch

async fn fetch(args: FetchArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.opts).await?;
    if args.max_records == Some(0) {
        return Ok(());
    }
    let mut stream = client
        .fetch(v1::FetchRequest {
            topic: args.topic.clone(),
            partition: args.partition,
            start: Some(args.from.to_proto()),
            max_bytes: 0,
            follow: args.follow,
            max_wait_ms: 0,
            raw_batches: false,
        })
        .await
        .map_err(RpcError)?
        .into_inner();
    let mut out = Out::new();
    let mut printed = 0u64;
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
        let response = tokio::select! {
            response = stream.message() => response.map_err(RpcError)?,
            () = &mut interrupted => break,
        };
        let Some(response) = response else { break };
        for record in &response.records {
            if args.opts.json {
                out.json(&record_json(&args.topic, args.partition, record))?;
            } else {
                out.line(record_text(record))?;
            }
            printed += 1;
            if args.max_records.is_some_and(|max| printed >= max) {
                out.flush()?;
                return Ok(());
            }
        }
        out.flush()?;
    }
    out.flush()?;
    Ok(())
}

/// `offset<TAB>key<TAB>value`, then `<TAB>[name=value, ...]` when the record has headers.
/// Bytes that are not UTF-8 are shown lossily; line breaks and tabs are escaped so that a
/// record is always one line. A record without a key shows `-`.
fn record_text(record: &v1::FetchedRecord) -> String {
    format!(
        "{}\t{}",
        record.offset,
        message_text(record.key.as_deref(), &record.value, &record.headers)
    )
}

/// `key<TAB>value`, then `<TAB>[name=value, ...]` when there are headers.
fn message_text(key: Option<&[u8]>, value: &[u8], headers: &[v1::Header]) -> String {
    let mut line = format!(
        "{}\t{}",
        key.map_or("-".into(), printable),
        printable(value)
    );
    if !headers.is_empty() {
        let headers: Vec<String> = headers
            .iter()
            .map(|h| format!("{}={}", printable(h.key.as_bytes()), printable(&h.value)))
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
fn record_json(topic: &str, partition: u32, record: &v1::FetchedRecord) -> Value {
    json!({
        "topic": topic,
        "partition": partition,
        "offset": record.offset,
        "timestamp_ms": record.timestamp_ms,
        "key": record.key.as_ref().map(|k| bytes_json(k)),
        "value": bytes_json(&record.value),
        "headers": headers_json(&record.headers),
    })
}

fn headers_json(headers: &[v1::Header]) -> Value {
    headers
        .iter()
        .map(|h| json!({"key": h.key, "value": bytes_json(&h.value)}))
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
    use v1::subscribe_request::Request;
    use v1::subscribe_response::Response;

    let mut client = connect(&args.opts).await?;
    if args.max == Some(0) {
        return Ok(());
    }
    // With --max, credit flow control makes the broker send exactly that many deliveries,
    // so none is taken (and its delivery attempt used) only to be dropped unprinted.
    let credit = args
        .max
        .and_then(|max| u32::try_from(max).ok())
        .map(|messages| v1::Credit {
            messages,
            bytes: u64::MAX,
        });
    let join = v1::Join {
        topic: args.topic.clone(),
        group: args.group.clone(),
        client_id: args
            .client_id
            .clone()
            .unwrap_or_else(|| format!("herald-cli-{}", std::process::id())),
        max_in_flight_messages: args.max_in_flight.unwrap_or(0),
        max_in_flight_bytes: 0,
        settings: None,
        start_position: args.from.map(StartPosition::to_proto),
        // The CLI prints each message from its Delivery; it has no use for raw batches.
        batched_deliveries: false,
        credit_flow_control: credit.is_some(),
    };
    let (tx, rx) = mpsc::channel(SUBSCRIBE_QUEUE);
    tx.send(v1::SubscribeRequest {
        request: Some(Request::Join(join)),
    })
    .await?;
    if let Some(credit) = credit {
        tx.send(v1::SubscribeRequest {
            request: Some(Request::Credit(credit)),
        })
        .await?;
    }
    let mut stream = client
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(RpcError)?
        .into_inner();

    let mut out = Out::new();
    let mut received = 0u64;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let response = tokio::select! {
            response = stream.message() => response.map_err(RpcError)?,
            _ = &mut interrupted => break,
        };
        let Some(response) = response else {
            anyhow::bail!("UNAVAILABLE: the broker closed the Subscribe stream");
        };
        let Some(Response::Deliveries(deliveries)) = response.response else {
            // Joined and assignment changes: nothing to print.
            continue;
        };
        let mut done = Vec::new();
        for delivery in deliveries.deliveries {
            if args.max.is_some_and(|max| received >= max) {
                break;
            }
            if args.opts.json {
                out.json(&delivery_json(&args.topic, &args.group, &delivery))?;
            } else {
                out.line(delivery_text(&delivery))?;
            }
            received += 1;
            done.push(delivery.ack_id);
        }
        // Printed (and flushed) first, then acked: a message whose line could not be
        // written is delivered again.
        out.flush()?;
        let requests: Vec<Request> = if args.nack {
            done.into_iter()
                .map(|ack_id| {
                    Request::Nack(v1::Nack {
                        ack_id,
                        delay_ms: None,
                        reason: NACK_REASON.to_owned(),
                        range: None,
                    })
                })
                .collect()
        } else if done.is_empty() {
            Vec::new()
        } else {
            vec![Request::Ack(v1::Ack {
                ack_ids: done,
                ranges: Vec::new(),
            })]
        };
        for request in requests {
            let request = v1::SubscribeRequest {
                request: Some(request),
            };
            if tx.send(request).await.is_err() {
                // The call is over: its status says why.
                return Err(match stream.message().await {
                    Err(status) => RpcError(status).into(),
                    Ok(_) => anyhow::anyhow!("UNAVAILABLE: the Subscribe stream ended"),
                });
            }
        }
        if args.max.is_some_and(|max| received >= max) {
            break;
        }
    }
    // Leave cleanly: end the request stream after the last acks; the broker handles them,
    // removes the member and then ends the response stream. Deliveries that arrive
    // meanwhile are not printed and go back to the group.
    drop(tx);
    let _ = tokio::time::timeout(LEAVE_TIMEOUT, async {
        while let Ok(Some(_)) = stream.message().await {}
    })
    .await;
    Ok(())
}

/// `partition<TAB>offset<TAB>attempt<TAB>key<TAB>value`, then `<TAB>[name=value, ...]`
/// when the message has headers; escaped like a fetched record.
fn delivery_text(delivery: &v1::Delivery) -> String {
    format!(
        "{}\t{}\t{}\t{}",
        delivery.partition,
        delivery.offset,
        delivery.delivery_attempt,
        message_text(delivery.key.as_deref(), &delivery.value, &delivery.headers)
    )
}

/// One delivery as JSON, with the same byte encoding as `fetch --json`.
fn delivery_json(topic: &str, group: &str, delivery: &v1::Delivery) -> Value {
    json!({
        "topic": topic,
        "group": group,
        "partition": delivery.partition,
        "offset": delivery.offset,
        "delivery_attempt": delivery.delivery_attempt,
        "timestamp_ms": delivery.timestamp_ms,
        "key": delivery.key.as_ref().map(|k| bytes_json(k)),
        "value": bytes_json(&delivery.value),
        "headers": headers_json(&delivery.headers),
    })
}

// ---------------------------------------------------------------------------------------
// group

async fn group(args: GroupArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.opts).await?;
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
            let settings = v1::GroupSettings {
                ack_deadline_ms,
                retry_backoff_min_ms,
                retry_backoff_max_ms,
                max_delivery_attempts,
                dead_letter_topic,
                ordering: ordering.map_or(v1::OrderingMode::Unspecified, Ordering::to_proto) as i32,
            };
            let description = client
                .create_group(v1::CreateGroupRequest {
                    topic,
                    group,
                    settings: Some(settings),
                    start_position: from.map(StartPosition::to_proto),
                })
                .await
                .map_err(RpcError)?
                .into_inner()
                .group
                .unwrap_or_default();
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
            let groups = client
                .list_groups(v1::ListGroupsRequest { topic })
                .await
                .map_err(RpcError)?
                .into_inner()
                .groups;
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
            let description = client
                .describe_group(v1::DescribeGroupRequest { topic, group })
                .await
                .map_err(RpcError)?
                .into_inner()
                .group
                .unwrap_or_default();
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
            let moved = client
                .seek(v1::SeekRequest {
                    topic: topic.clone(),
                    group: group.clone(),
                    partition,
                    position: Some(to.to_proto()),
                })
                .await
                .map_err(RpcError)?
                .into_inner()
                .partitions;
            if json {
                out.json(&json!({
                    "topic": topic,
                    "group": group,
                    "partitions": moved.iter().map(|p| json!({
                        "partition": p.partition,
                        "committed_offset": p.offset,
                    })).collect::<Vec<_>>(),
                }))?;
            } else {
                for p in &moved {
                    out.line(format_args!(
                        "partition {}  committed offset {}",
                        p.partition, p.offset
                    ))?;
                }
            }
        }
        GroupCommand::Redrive {
            topic,
            group,
            max_messages,
        } => {
            let count = client
                .redrive(v1::RedriveRequest {
                    topic: topic.clone(),
                    group: group.clone(),
                    max_messages: max_messages.unwrap_or(0),
                })
                .await
                .map_err(RpcError)?
                .into_inner()
                .redriven_count;
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
            client
                .delete_group(v1::DeleteGroupRequest {
                    topic: topic.clone(),
                    group: group.clone(),
                })
                .await
                .map_err(RpcError)?;
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
    fn to_proto(self) -> v1::OrderingMode {
        match self {
            Ordering::Key => v1::OrderingMode::Key,
            Ordering::Partition => v1::OrderingMode::Partition,
            Ordering::None => v1::OrderingMode::None,
        }
    }
}

fn ordering_name(mode: i32) -> String {
    match v1::OrderingMode::try_from(mode) {
        Ok(v1::OrderingMode::Key) => "key".into(),
        Ok(v1::OrderingMode::Partition) => "partition".into(),
        Ok(v1::OrderingMode::None) => "none".into(),
        Ok(v1::OrderingMode::Unspecified) => "unspecified".into(),
        Err(_) => format!("unknown ({mode})"),
    }
}

fn group_json(group: &v1::GroupDescription) -> Value {
    let s = group.settings.clone().unwrap_or_default();
    json!({
        "topic": group.topic,
        "group": group.group,
        "settings": {
            "ack_deadline_ms": s.ack_deadline_ms,
            "retry_backoff_min_ms": s.retry_backoff_min_ms,
            "retry_backoff_max_ms": s.retry_backoff_max_ms,
            "max_delivery_attempts": s.max_delivery_attempts,
            "dead_letter_topic": s.dead_letter_topic.filter(|t| !t.is_empty()),
            "ordering": ordering_name(s.ordering),
        },
        "members": group.members.iter().map(|m| json!({
            "member_id": m.member_id,
            "client_id": m.client_id,
            "partitions": m.partitions,
        })).collect::<Vec<_>>(),
        "partitions": group.partitions.iter().map(|p| json!({
            "partition": p.partition,
            "committed_offset": p.committed_offset,
            "end_offset": p.end_offset,
            "lag": p.lag,
            "in_flight_count": p.in_flight_count,
            "redelivered_count": p.redelivered_count,
            "dead_lettered_count": p.dead_lettered_count,
            "member_id": (!p.member_id.is_empty()).then_some(&p.member_id),
        })).collect::<Vec<_>>(),
    })
}

fn group_text(group: &v1::GroupDescription) -> Vec<String> {
    let s = group.settings.clone().unwrap_or_default();
    let opt = |v: Option<u32>| v.map_or("-".to_owned(), |v| v.to_string());
    let settings = vec![
        vec!["topic".to_owned(), group.topic.clone()],
        vec!["group".to_owned(), group.group.clone()],
        vec!["ack_deadline_ms".to_owned(), opt(s.ack_deadline_ms)],
        vec![
            "retry_backoff_min_ms".to_owned(),
            opt(s.retry_backoff_min_ms),
        ],
        vec![
            "retry_backoff_max_ms".to_owned(),
            opt(s.retry_backoff_max_ms),
        ],
        vec![
            "max_delivery_attempts".to_owned(),
            match s.max_delivery_attempts {
                Some(0) => "0 (retry forever)".to_owned(),
                other => opt(other),
            },
        ],
        vec![
            "dead_letter_topic".to_owned(),
            s.dead_letter_topic
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| "-".to_owned()),
        ],
        vec!["ordering".to_owned(), ordering_name(s.ordering)],
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
fn partition_list(partitions: &[u32]) -> String {
    if partitions.is_empty() {
        return "-".to_owned();
    }
    partitions
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse() {
        assert_eq!("earliest".parse(), Ok(StartPosition::Earliest));
        assert_eq!("latest".parse(), Ok(StartPosition::Latest));
        assert_eq!("42".parse(), Ok(StartPosition::Offset(42)));
        assert_eq!(
            "ts:1700000000000".parse(),
            Ok(StartPosition::TimestampMs(1_700_000_000_000))
        );
        assert!("ts:soon".parse::<StartPosition>().is_err());
        assert!("-1".parse::<StartPosition>().is_err());
        assert!("first".parse::<StartPosition>().is_err());
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
        let e = RpcError(tonic::Status::not_found("topic \"x\" does not exist"));
        assert_eq!(e.to_string(), "NOT_FOUND: topic \"x\" does not exist");
        assert_eq!(
            RpcError(tonic::Status::unavailable("")).to_string(),
            "UNAVAILABLE"
        );
    }

    #[test]
    fn records_print_on_one_line() {
        let record = v1::FetchedRecord {
            offset: 7,
            timestamp_ms: 1,
            key: None,
            value: Bytes::from_static(b"a\nb\t\xffc"),
            headers: vec![v1::Header {
                key: "h".into(),
                value: Bytes::from_static(b"v"),
            }],
        };
        assert_eq!(record_text(&record), "7\t-\ta\\nb\\t\u{fffd}c\t[h=v]");
        let json = record_json("t", 0, &record);
        assert_eq!(json["key"], Value::Null);
        assert_eq!(json["value"]["base64"], base64(b"a\nb\t\xffc"));
        assert_eq!(json["headers"][0]["value"], "v");
    }

    #[test]
    fn deliveries_print_on_one_line() {
        let delivery = v1::Delivery {
            partition: 2,
            offset: 7,
            key: Some(Bytes::from_static(b"k")),
            value: Bytes::from_static(b"a\tb"),
            headers: vec![],
            timestamp_ms: 1,
            delivery_attempt: 3,
            ack_id: Bytes::from_static(b"id"),
            deadline_ms: 2,
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
        let group = v1::GroupDescription {
            topic: "t".into(),
            group: "g".into(),
            settings: Some(v1::GroupSettings {
                ack_deadline_ms: Some(30_000),
                max_delivery_attempts: Some(0),
                dead_letter_topic: Some(String::new()),
                ordering: v1::OrderingMode::Partition as i32,
                ..Default::default()
            }),
            members: vec![v1::GroupMember {
                member_id: "17".into(),
                client_id: String::new(),
                partitions: vec![0, 1],
            }],
            partitions: vec![v1::GroupPartition {
                partition: 0,
                committed_offset: 3,
                end_offset: 10,
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
