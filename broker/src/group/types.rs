//! The group machine's vocabulary: ids, settings, what the driver offers and what it gets
//! back (deliveries, outcomes, actions, introspection). Plain data; the behaviour lives in
//! `state` and `partition`.

use std::fmt;

use super::error::GroupError;
// The ids live in `ids`, below `error` (whose variants name them); re-exported here, where
// the rest of the machine's vocabulary is.
pub use super::ids::{MemberId, Offset, PartitionId};
use super::limits::{
    DEFAULT_MEMBER_IN_FLIGHT_BYTES, DEFAULT_MEMBER_IN_FLIGHT_MESSAGES, MAX_ACK_DEADLINE_MS,
    MAX_REASON_BYTES, MAX_RETRY_BACKOFF_MS,
};

/// A record key as the machine sees it: a 64-bit hash, so the tables hold no key bytes.
/// Two keys with the same hash are ordered as one key, which costs parallelism, never
/// order. `None` (no key) and the empty key differ, as in the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyHash(pub u64);

impl KeyHash {
    /// The hash the driver must use: xxh64 with seed 0, the same function that picks a
    /// key's partition, so the driver can compute it once per record.
    pub fn of(key: &[u8]) -> KeyHash {
        KeyHash(xxhash_rust::xxh64::xxh64(key, 0))
    }
}

/// How a group orders deliveries within a partition (see groups.proto).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OrderingMode {
    /// At most one unacked message per key; a key's messages in offset order, even across
    /// redeliveries; keys do not block each other. Keyless messages are unordered.
    #[default]
    Key,
    /// At most one unacked message per partition, in offset order.
    Partition,
    /// As many in flight as the members' windows allow.
    None,
}

/// A group's delivery settings, every field set (the driver resolves API defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSettings {
    /// Time a member has to ack a delivery, in ms. 1..=`MAX_ACK_DEADLINE_MS`.
    pub ack_deadline_ms: u64,
    /// Delay before the first redelivery of a failed message, in ms.
    pub retry_backoff_min_ms: u64,
    /// Cap of the doubling redelivery delay, in ms; at least `retry_backoff_min_ms`.
    pub retry_backoff_max_ms: u64,
    /// Deliveries after which a failed message is dead-lettered; 0 = retry forever.
    pub max_delivery_attempts: u32,
    /// The ordering mode.
    pub ordering: OrderingMode,
}

impl Default for GroupSettings {
    fn default() -> Self {
        GroupSettings {
            ack_deadline_ms: 30_000,
            retry_backoff_min_ms: 1_000,
            retry_backoff_max_ms: 60_000,
            max_delivery_attempts: 0,
            ordering: OrderingMode::Key,
        }
    }
}

impl GroupSettings {
    /// Checks the settings and caps what the API says the broker caps: the ack deadline and
    /// the backoff bounds. A zero deadline or a min above the max is an error.
    pub fn validated(mut self) -> Result<Self, GroupError> {
        if self.ack_deadline_ms == 0 {
            return Err(GroupError::InvalidSettings(
                "ack_deadline_ms must be at least 1".into(),
            ));
        }
        if self.retry_backoff_min_ms > self.retry_backoff_max_ms {
            return Err(GroupError::InvalidSettings(format!(
                "retry_backoff_min_ms ({}) is above retry_backoff_max_ms ({})",
                self.retry_backoff_min_ms, self.retry_backoff_max_ms
            )));
        }
        self.ack_deadline_ms = self.ack_deadline_ms.min(MAX_ACK_DEADLINE_MS);
        self.retry_backoff_min_ms = self.retry_backoff_min_ms.min(MAX_RETRY_BACKOFF_MS);
        self.retry_backoff_max_ms = self.retry_backoff_max_ms.min(MAX_RETRY_BACKOFF_MS);
        Ok(self)
    }

    /// Redelivery delay after a message's `attempts`-th delivery failed:
    /// `min * 2^(attempts-1)`, capped at `max`.
    pub fn backoff_ms(&self, attempts: u32) -> u64 {
        let doublings = attempts.saturating_sub(1);
        let delay = if doublings >= 63 {
            u64::MAX
        } else {
            self.retry_backoff_min_ms.saturating_mul(1u64 << doublings)
        };
        delay.min(self.retry_backoff_max_ms)
    }
}

/// How much one member may hold unacked, and whether it paces deliveries with credit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberOptions {
    /// Most unacked deliveries; clamped to 1..=`MAX_MEMBER_IN_FLIGHT_MESSAGES`.
    pub max_in_flight_messages: u32,
    /// Most unacked bytes; deliveries go while the total is below it, so one message may
    /// overshoot it (and a message larger than it is still delivered). At least 1.
    pub max_in_flight_bytes: u64,
    /// When true, deliveries also spend credit granted by `credit`, which starts at zero.
    pub credit_flow_control: bool,
    /// In key ordering: most messages of one key this member holds unacked at once
    /// (delivered in offset order); clamped to 1..=`MAX_MEMBER_IN_FLIGHT_MESSAGES`.
    /// 1 keeps a key's next message back until the previous one is settled. Above 1, a
    /// failed message takes the key's later in-flight messages back with it.
    pub max_in_flight_per_key: u32,
}

impl Default for MemberOptions {
    fn default() -> Self {
        MemberOptions {
            max_in_flight_messages: DEFAULT_MEMBER_IN_FLIGHT_MESSAGES,
            max_in_flight_bytes: DEFAULT_MEMBER_IN_FLIGHT_BYTES,
            credit_flow_control: false,
            max_in_flight_per_key: 1,
        }
    }
}

/// What the driver tells the machine about one record it read from the log. The machine
/// keeps this metadata only; the driver reads the record again by offset to deliver it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfferedRecord {
    /// The record's offset.
    pub offset: Offset,
    /// `KeyHash::of(key)`, or `None` for a keyless record.
    pub key: Option<KeyHash>,
    /// Key, value and headers bytes, charged to the member's byte window and credit.
    pub size_bytes: u32,
    /// The record's timestamp, handed back in deliveries.
    pub timestamp_ms: i64,
}

/// Names one delivery of one message. The `delivery` number is unique within a
/// `GroupState`, so an ack for an older attempt (or for a delivery made before a seek) no
/// longer matches and is ignored rather than counted twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AckId {
    pub partition: PartitionId,
    pub offset: Offset,
    /// The group-wide sequence number of the delivery.
    pub delivery: u64,
}

impl AckId {
    /// Length of [`AckId::encode`]'s output.
    pub const ENCODED_LEN: usize = 21;
    /// First byte of the encoding, so the format can change without old ids being misread.
    const VERSION: u8 = 1;

    /// Opaque bytes for the wire: version, partition, offset, delivery (little endian).
    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        out[0] = Self::VERSION;
        out[1..5].copy_from_slice(&self.partition.0.to_le_bytes());
        out[5..13].copy_from_slice(&self.offset.0.to_le_bytes());
        out[13..21].copy_from_slice(&self.delivery.to_le_bytes());
        out
    }

    /// Parses [`AckId::encode`]'s bytes; anything else is `MalformedAckId`.
    pub fn decode(bytes: &[u8]) -> Result<AckId, GroupError> {
        if bytes.len() != Self::ENCODED_LEN || bytes[0] != Self::VERSION {
            return Err(GroupError::MalformedAckId);
        }
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or([0; 4]));
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]));
        Ok(AckId {
            partition: PartitionId(u32_at(1)),
            offset: Offset(u64_at(5)),
            delivery: u64_at(13),
        })
    }
}

/// One message handed to a member by `poll`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub partition: PartitionId,
    pub offset: Offset,
    /// 1 for the first delivery of this message to the group, 2 for the first redelivery...
    pub attempt: u32,
    /// When the delivery expires unless acked or extended, on the caller's clock.
    pub deadline_ms: u64,
    /// Names this delivery in `ack`, `nack` and `extend`.
    pub ack_id: AckId,
    /// The record's metadata as offered.
    pub key: Option<KeyHash>,
    pub size_bytes: u32,
    pub timestamp_ms: i64,
}

/// Why a delivery failed; the last one becomes a dead letter's reason header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureReason {
    /// The member nacked it with this reason (cut to `MAX_REASON_BYTES`).
    Nacked(Box<str>),
    /// The ack deadline passed.
    DeadlineExpired,
    /// The member's stream closed while it held the message.
    MemberLeft,
}

impl FailureReason {
    /// A nack reason, cut at a character boundary to at most `MAX_REASON_BYTES`.
    pub fn nacked(reason: &str) -> FailureReason {
        let mut end = reason.len().min(MAX_REASON_BYTES);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        FailureReason::Nacked(reason[..end].into())
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureReason::Nacked(reason) => f.write_str(reason),
            // The wording groups.proto documents for the "herald-dlq-reason" header.
            FailureReason::DeadlineExpired => f.write_str("ack deadline expired"),
            FailureReason::MemberLeft => f.write_str("subscriber disconnected"),
        }
    }
}

/// A message that used up its delivery attempts. The driver appends it to the dead-letter
/// topic, then calls `dead_lettered(partition, offset)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub partition: PartitionId,
    pub offset: Offset,
    /// Deliveries made.
    pub attempts: u32,
    pub last_reason: FailureReason,
}

/// A member's assignment changed since its stream was last told (the AssignmentChange
/// message). Lists are ascending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignmentChange {
    pub member: MemberId,
    pub added: Vec<PartitionId>,
    pub revoked: Vec<PartitionId>,
    /// The whole assignment after the change.
    pub partitions: Vec<PartitionId>,
}

/// Something the driver must do, drained with `take_actions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    DeadLetter(DeadLetter),
    AssignmentChanged(AssignmentChange),
}

/// Result of `ack`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// The message is done.
    Acked,
    /// The ack id no longer names a live delivery (acked already, redelivered, sought past,
    /// or sent by another member): ignored.
    Stale,
}

/// Result of `nack`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NackOutcome {
    /// The message is due again at `due_ms`.
    Retry { due_ms: u64 },
    /// The message used up its attempts; a `DeadLetter` action was queued.
    DeadLetter,
    /// Ignored, as for `AckOutcome::Stale`.
    Stale,
}

/// Result of `extend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtendOutcome {
    Extended { deadline_ms: u64 },
    Stale,
}

/// A delivery whose deadline passed, reported by `tick`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    pub partition: PartitionId,
    pub offset: Offset,
    pub member: MemberId,
    pub attempts: u32,
    /// Whether the expiry used up the attempts (a `DeadLetter` action was queued).
    pub dead_lettered: bool,
}

/// Which partitions a `seek` moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeekTarget {
    Partition(PartitionId),
    All,
}

/// Who a partition belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ownership {
    #[default]
    Unowned,
    /// The member gets new deliveries from it.
    Owned(MemberId),
    /// Moving: `from` still holds in-flight messages of it and gets no new ones; `to` (if
    /// any) gets it once they are acked, nacked or expired.
    Draining {
        from: MemberId,
        to: Option<MemberId>,
    },
}

/// A partition's progress, for DescribeGroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    pub partition: PartitionId,
    /// Lowest offset not yet done.
    pub committed: Offset,
    /// Next offset the machine wants from the log.
    pub next_fetch: Offset,
    pub buffered: usize,
    pub in_flight: usize,
    /// Failed messages waiting for their redelivery time.
    pub waiting: usize,
    /// Dead letters emitted and not yet confirmed.
    pub dead_lettering: usize,
    /// Ranges of done offsets above `committed`.
    pub done_ranges: usize,
    /// Deliveries after a message's first, since this state was created.
    pub redelivered_count: u64,
    /// Confirmed dead letters, since this state was created.
    pub dead_lettered_count: u64,
    pub ownership: Ownership,
}

impl PartitionInfo {
    /// The member that gets deliveries from it; `None` while unowned or draining.
    pub fn owner(&self) -> Option<MemberId> {
        match self.ownership {
            Ownership::Owned(member) => Some(member),
            _ => None,
        }
    }
}

/// A member, for DescribeGroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub member: MemberId,
    pub joined_at_ms: u64,
    /// Partitions it owns (not those draining away from it), ascending.
    pub partitions: Vec<PartitionId>,
    pub in_flight_messages: u32,
    pub in_flight_bytes: u64,
    pub options: MemberOptions,
}

/// A partition moving between members, waiting for its in-flight messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handover {
    pub partition: PartitionId,
    pub from: MemberId,
    pub to: Option<MemberId>,
    pub in_flight: usize,
}

/// The group as DescribeGroup shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    pub settings: GroupSettings,
    /// Oldest first.
    pub members: Vec<MemberInfo>,
    /// In partition order.
    pub partitions: Vec<PartitionInfo>,
}

/// Which pending messages `pending` lists (ListPending).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PendingFilter {
    pub partition: Option<PartitionId>,
    /// Only messages whose key hashes to this. The driver drops the (astronomically rare)
    /// hash collisions when it reads the keys back from the log.
    pub key: Option<KeyHash>,
    /// 0 means `DEFAULT_PENDING_LIMIT`; capped at `MAX_PENDING_LIMIT`.
    pub limit: usize,
}

/// Where a pending message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingState {
    InFlight {
        member: MemberId,
        deadline_ms: u64,
    },
    /// Waiting out its retry delay.
    Backoff {
        due_ms: u64,
    },
    /// A dead letter was emitted; the driver has not confirmed it yet.
    DeadLettering,
}

/// A message delivered and not yet done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingMessage {
    pub partition: PartitionId,
    pub offset: Offset,
    pub key: Option<KeyHash>,
    /// Deliveries made so far.
    pub attempts: u32,
    pub state: PendingState,
}

/// Result of `pending`: by partition then offset.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PendingList {
    pub messages: Vec<PendingMessage>,
    /// More matched than the limit allowed.
    pub truncated: bool,
}
