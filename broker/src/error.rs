//! The broker layer's error type: what went wrong, in the broker's terms. Which gRPC status
//! each variant becomes is decided in `server::status`, the only place that knows tonic;
//! the message a client reads is the variant's `Display`.

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

use crate::config::ConfigError;
use crate::group::GroupError;
use crate::storage::{BatchError, StorageError};

/// Characters of a client's input (a name) repeated in an error message: enough to
/// recognise it, while a 20 KB name does not come back whole (a status message travels in
/// an HTTP/2 header, which clients cap at a few KiB).
pub const SHOWN_INPUT_CHARS: usize = 64;

/// `input` quoted for an error message, cut to its first `SHOWN_INPUT_CHARS` characters
/// with its full length said when longer.
pub fn shown(input: &str) -> String {
    match input.char_indices().nth(SHOWN_INPUT_CHARS) {
        None => format!("{input:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes)", &input[..cut], input.len()),
    }
}

#[derive(Debug, Error)]
pub enum BrokerError {
    // What a request names is not there.
    #[error("topic {} does not exist", shown(topic))]
    TopicNotFound { topic: String },
    #[error(
        "topic {} has no partition {partition} (it has {partitions})",
        shown(topic)
    )]
    PartitionNotFound {
        topic: String,
        partition: u32,
        partitions: usize,
    },
    /// `topic_deleted`: the group was there, but its topic has been deleted since (the
    /// group goes with it).
    #[error(
        "group {group:?} of topic {topic:?} does not exist{}",
        if *topic_deleted { " (its topic was deleted)" } else { "" }
    )]
    GroupNotFound {
        topic: String,
        group: String,
        topic_deleted: bool,
    },
    /// A group's settings name a dead-letter topic that does not exist.
    #[error("dead_letter_topic {topic:?} does not exist")]
    DeadLetterTopicNotFound { topic: String },
    /// A stream reading the topic outlived it.
    #[error("topic {} was deleted", shown(topic))]
    TopicDeleted { topic: String },
    /// A member's stream outlived its group.
    #[error("group {group:?} of topic {topic:?} was deleted")]
    GroupDeleted { topic: String, group: String },

    #[error("topic {} already exists", shown(topic))]
    TopicExists { topic: String },
    #[error("group {group:?} of topic {topic:?} already exists")]
    GroupExists { topic: String, group: String },

    // The request is wrong as it is: retrying it will not help.
    /// A topic or group name outside `[A-Za-z0-9._-]{1,249}`; `what` is "topic" or "group".
    #[error("invalid {what} name {}: {reason}", shown(name))]
    InvalidName {
        what: &'static str,
        name: String,
        reason: String,
    },
    /// Topic or group settings out of range or inconsistent; the message says which.
    #[error("{0}")]
    InvalidSettings(String),
    /// The broker's own configuration (at start).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A request whose fields do not make a request: a missing payload or position, a
    /// stream message out of place, a malformed ack range.
    #[error("{0}")]
    InvalidRequest(String),
    /// A pre-encoded storage batch that fails its checks.
    #[error("malformed storage batch: {0}")]
    MalformedBatch(BatchError),
    /// A record the broker writes again (a dead letter, a redriven message) does not make a
    /// valid batch, e.g. it no longer fits `max_batch_bytes` with its added headers.
    #[error("cannot build the batch: {0}")]
    UnbuildableBatch(BatchError),
    /// A Subscribe stream sent no Join within `idle_stream_timeout_ms`.
    #[error("no Join within {} ms (idle_stream_timeout_ms)", idle.as_millis())]
    NoJoin { idle: Duration },

    /// An offset outside a partition's log. `partition` is named when the request covers
    /// more than one.
    #[error(
        "offset {offset} is out of range: {} holds offsets {start}..{end}",
        partition.map_or_else(|| "the partition".to_owned(), |p| format!("partition {p}"))
    )]
    OffsetOutOfRange {
        offset: u64,
        start: u64,
        end: u64,
        partition: Option<u32>,
    },

    /// A size or count limit: `requested` is what the request would take (bytes, records,
    /// streams, topics, partitions or groups, after it), `max` the limit.
    #[error("{}", limit.message(*requested, *max))]
    LimitExceeded {
        limit: Limit,
        requested: u64,
        max: u64,
    },

    // The broker holds what the request names but cannot serve it until someone acts.
    /// A topic whose metadata or log was found damaged at start; `reason` names the file.
    #[error(
        "topic {} is not loaded because it is damaged ({reason}); its files are kept until an operator repairs or removes them",
        shown(topic)
    )]
    TopicDamaged { topic: String, reason: String },
    /// A group whose files were found damaged at start; `reason` names the file.
    #[error(
        "group {group:?} of topic {topic:?} is not loaded because its files are damaged \
         ({reason}); they are kept: restore them, or delete the group to start it again \
         (see README, \"Consumer groups under failure\")"
    )]
    GroupDamaged {
        topic: String,
        group: String,
        reason: String,
    },
    /// Creating a topic whose directory is already there, holding bytes that are not a
    /// loaded topic.
    #[error(
        "{} already exists but is not a loaded topic; move it away to create topic {}",
        path.display(),
        shown(topic)
    )]
    TopicDirectoryExists { topic: String, path: PathBuf },
    /// Redrive, or a dead letter, for a group without a dead-letter topic.
    #[error("group {group:?} of topic {topic:?} has no dead_letter_topic")]
    NoDeadLetterTopic { topic: String, group: String },
    /// The file of named idempotent producers is damaged: named producers are refused
    /// (anonymous ones still work) and the file is kept.
    #[error(
        "{} is damaged and was not loaded ({reason}); named producers are refused until it is repaired or removed (removing it lets old instances of named producers publish until they are re-initialised)",
        path.display()
    )]
    ProducersDamaged { path: PathBuf, reason: String },

    /// In cluster mode, a partition another node serves: until partitions are
    /// replicated only that node holds its records.
    #[error(
        "partition {partition} of topic {} is served by node {node} at {address}, not by this node ({this}): send its publishes and reads there",
        shown(topic)
    )]
    NotPartitionHome {
        topic: String,
        partition: u32,
        node: u64,
        address: String,
        this: u64,
    },

    // Try again later (or elsewhere).
    #[error("the broker is shutting down")]
    ShuttingDown,
    /// In cluster mode, the metadata group could not take a change (no leader, no
    /// quorum); the message says what was seen.
    #[error("{0}")]
    ClusterUnavailable(String),
    /// A publish reached a partition being closed (its topic deleted, or shutdown).
    #[error("the partition is closing")]
    PartitionClosing,
    /// The group's task failed and was restarted from its persisted state; its members
    /// were let go and join again.
    #[error("group {group:?} of topic {topic:?} restarted after an internal error; join again")]
    GroupRestarted { topic: String, group: String },
    /// A PublishStream sent nothing within `idle_stream_timeout_ms`.
    #[error("no publish for {} ms (idle_stream_timeout_ms)", idle.as_millis())]
    PublishStreamIdle { idle: Duration },
    /// A request compressed with an encoding the broker does not accept (it advertises
    /// none). The message is tonic's for the same refusal.
    #[error("Content is compressed with `{encoding}` which isn't supported")]
    CompressionUnsupported { encoding: String },

    /// From the group machine; `server::status` says which are the client's doing.
    #[error(transparent)]
    Group(#[from] GroupError),
    #[error(transparent)]
    Storage(#[from] StorageError),

    // Who is asking, and whether they may.
    /// The request carries no credential the broker accepts: no token or client
    /// certificate, an unknown token, a malformed `authorization` value. `reason` never
    /// holds the secret.
    #[error("unauthenticated: {reason}")]
    Unauthenticated { reason: String },
    /// The principal is known but no ACL rule lets it do `operation` on `resource`, or a
    /// rule denies it.
    #[error(
        "permission denied: {operation} on {resource} for principal {}",
        shown(principal)
    )]
    PermissionDenied {
        principal: String,
        operation: crate::auth::Operation,
        /// The resource as the message names it, e.g. `topic "orders"`.
        resource: String,
    },

    // The broker's own failures.
    /// A blocking task (`spawn_blocking`) panicked or was cancelled; `what` is the work it
    /// did, as the message starts.
    #[error("{what}: {cause}")]
    TaskFailed {
        what: &'static str,
        cause: tokio::task::JoinError,
    },
    #[error("{context}: {cause}")]
    Io {
        context: String,
        cause: std::io::Error,
    },
}

/// Which limit a request went over: each is a setting of the broker or topic, named in the
/// message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `max_batch_bytes`: the stored batch of one publish.
    BatchBytes,
    /// `max_batch_records`: the records of one publish.
    BatchRecords,
    /// The topic's `max_message_bytes`: one record. `record` is its index when the publish
    /// carries plain records (a pre-encoded batch is checked as a whole).
    MessageBytes { record: Option<usize> },
    /// One request message on the wire: `max_batch_bytes` plus 64 KiB, checked before it
    /// is decoded.
    RequestBytes,
    /// `max_streams_per_connection`: streaming RPCs open on one client connection.
    StreamsPerConnection,
    /// `max_topics`.
    Topics,
    /// `max_partitions`, over all topics; `adding` is what the new topic would bring.
    Partitions { adding: u32 },
    /// The broker's fixed maximum of consumer groups (`groups::MAX_GROUPS`).
    Groups,
    /// Named idempotent producers the broker keeps (`producer_ids::MAX_NAMED_PRODUCERS`).
    NamedProducers,
}

impl Limit {
    fn message(self, requested: u64, max: u64) -> String {
        match self {
            Limit::BatchBytes => {
                format!("the batch is {requested} bytes; the limit is {max} (max_batch_bytes)")
            }
            Limit::BatchRecords => format!(
                "the batch holds {requested} records; the limit is {max} (max_batch_records)"
            ),
            Limit::MessageBytes { record } => format!(
                "{} is {requested} bytes; the topic's limit is {max} (max_message_bytes)",
                record.map_or_else(|| "a record".to_owned(), |i| format!("record {i}"))
            ),
            Limit::RequestBytes => format!(
                "the request is {requested} bytes; the broker accepts at most {max} bytes per request message (max_batch_bytes plus 64 KiB)"
            ),
            Limit::StreamsPerConnection => format!(
                "this connection already has {max} streams open (max_streams_per_connection)"
            ),
            Limit::Topics => format!("the broker already holds its maximum of {max} topics"),
            Limit::Partitions { adding } => format!(
                "{adding} more partitions would exceed the broker's maximum of {max} (it has {})",
                requested.saturating_sub(u64::from(adding))
            ),
            Limit::Groups => format!("the broker already holds its maximum of {max} groups"),
            Limit::NamedProducers => format!(
                "the broker already keeps its maximum of {max} named producers; use anonymous producers (no name) for short-lived processes"
            ),
        }
    }
}

impl BrokerError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        BrokerError::Io {
            context: context.into(),
            cause: source,
        }
    }

    pub(crate) fn limit(limit: Limit, requested: usize, max: usize) -> Self {
        BrokerError::LimitExceeded {
            limit,
            requested: requested as u64,
            max: max as u64,
        }
    }
}

pub type Result<T, E = BrokerError> = std::result::Result<T, E>;
