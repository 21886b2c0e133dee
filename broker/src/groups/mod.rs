//! The consumer-group driver: runs the pure state machine of [`crate::group`] against the
//! partition logs, the clock, the members' streams and the disk.
//!
//! - [`GroupRegistry`] holds one [`Group`] per `(topic, group name)` in a `DashMap`, loads
//!   them on start from `<data_dir>/groups/<topic>/<group>/`, and persists them on close.
//! - A [`Group`] holds its [`GroupState`] behind a `std::sync::Mutex` (held only for
//!   machine calls, never across I/O or an `.await`), its settings and dead-letter topic,
//!   and the senders of its members' streams. One tokio task per group (the *driver*) runs
//!   the loop: read the log where the machine `wants`, `offer` the records, `tick`
//!   deadlines, append dead letters, `poll` deliveries for members whose stream has room,
//!   persist the snapshot every [`GROUP_PERSIST_INTERVAL`], then sleep until the next
//!   deadline, a commit to the topic, a member event or the persist timer.
//!
//! Like the storage engine, this module knows neither tonic nor the proto types: a
//! member's stream carries [`Outgoing`] messages, which `server::groups` turns into
//! responses.
//!
//! Bounds: a member's stream queue holds [`MEMBER_QUEUE`] responses and the driver polls a
//! member only when its queue has room and its outbox (one poll's worth, at most
//! [`POLL_MAX`] deliveries) is empty; a pending assignment change is merged into one; every
//! table of the machine is bounded by `group::limits`.
//!
//! Persistence: `group.toml` (settings) and `state` (the machine's snapshot), each
//! written to a temporary file, fsynced and renamed. A new group is written whole in
//! `groups/~staging/` and renamed into place; a deleted one is moved there first. A group
//! whose files do not load is refused and kept, never removed.
//!
//! Failure: each group's task runs under `supervise`, which logs, counts and restarts it
//! from the persisted state if it panics. The state is
//! written every [`GROUP_PERSIST_INTERVAL`] when it changed and on clean shutdown, so a
//! `kill -9` may redeliver the messages acked during the last interval (at-least-once).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, watch};

use crate::error::{BrokerError, Result};
use crate::group::{
    AckId, AckOutcome, AssignmentChange, DeadLetter, Delivery, GroupError, GroupLimits,
    GroupSettings, GroupSnapshot, GroupState, KeyHash, MemberId, MemberOptions, NackOutcome,
    OfferedRecord, Offset, OrderingMode, PartitionId, PendingFilter, PendingList, SeekTarget,
};
use crate::registry::{Registry, now_ms};
use crate::storage::{BatchBuilder, Record, StorageError, ValidatedBatch, batch};
use crate::topic::{Topic, validate_name};

#[cfg(test)]
mod sim;
mod source;
#[cfg(test)]
pub(crate) use source::MemLog;
pub use source::{Clock, LogSource, WallClock};

/// How often a group's state is written when it changed. A crash (kill -9) may redeliver
/// what was acked during the last interval; a clean shutdown persists everything.
pub const GROUP_PERSIST_INTERVAL: Duration = Duration::from_secs(1);
/// Responses a member's stream may have queued for tonic. One slot is kept for the
/// stream's final error, so the driver uses at most `MEMBER_QUEUE - 1`.
pub const MEMBER_QUEUE: usize = 4;
/// Most deliveries one poll hands a member (split into responses of at most
/// [`RESPONSE_MAX_BYTES`]).
pub const POLL_MAX: usize = 1024;
/// Most record bytes in one Deliveries response (at least one delivery): below the 4 MiB
/// default receive limit of gRPC clients.
pub const RESPONSE_MAX_BYTES: usize = 1024 * 1024;
/// Most decoded records a group keeps for delivery (see `Group::decoded`). Records the
/// machine takes but never delivers (done before a restart, say) would otherwise stay: when
/// the bound is reached the cache is emptied and delivery decodes from the log again.
const DECODED_MAX: usize = 1 << 16;
/// Bytes read from a partition log per read when filling the machine.
const FETCH_CHUNK_BYTES: usize = 256 * 1024;
/// Most groups a broker holds (over every topic): each costs a task and its state.
pub const MAX_GROUPS: usize = 10_000;
/// Delay before retrying dead-letter appends that failed (dead-letter topic deleted, full).
const DEAD_LETTER_RETRY: Duration = Duration::from_secs(1);

/// First wait before restarting a group task that panicked; doubles per panic in a row.
/// A panic is a bug: the restart keeps the group serving meanwhile, the backoff keeps a
/// bug that panics on every pass from spinning a core and flooding the log.
const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between restarts of a group task that keeps panicking: it is restarted
/// (and logged, and counted) at least this often for as long as the broker runs.
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A task that ran this long before panicking starts the backoff again from the minimum.
const RESTART_BACKOFF_RESET: Duration = Duration::from_secs(60);

const GROUPS_DIR: &str = "groups";
/// Where a group is created before it is renamed into place, and moved to before it is
/// deleted: what is left here after a crash is an interrupted create or delete, removed at
/// start. `~` is not allowed in topic names, so no topic's groups can be named so.
const STAGING_DIR: &str = "~staging";
/// The registry's directory of topics (a topic that did not load still has its there).
const TOPICS_DIR: &str = "topics";
const META_FILE: &str = "group.toml";
const STATE_FILE: &str = "state";

/// Reserved header names of dead letters (see groups.proto).
pub const DLQ_TOPIC: &str = "herald-dlq-topic";
pub const DLQ_GROUP: &str = "herald-dlq-group";
pub const DLQ_PARTITION: &str = "herald-dlq-partition";
pub const DLQ_OFFSET: &str = "herald-dlq-offset";
pub const DLQ_ATTEMPTS: &str = "herald-dlq-attempts";
pub const DLQ_REASON: &str = "herald-dlq-reason";
const DLQ_PREFIX: &str = "herald-dlq-";

/// What the driver sends a member's stream; the server turns each into one response.
#[derive(Debug)]
pub enum Outgoing {
    /// The first message: the join succeeded.
    Joined {
        member: MemberId,
        partitions: Vec<PartitionId>,
        config: GroupConfig,
    },
    /// Deliveries, in partition then offset order, at most [`RESPONSE_MAX_BYTES`] of
    /// records (or one record or run).
    Deliveries(OutDeliveries),
    /// The member's assignment changed.
    Assignment(AssignmentChange),
}

/// One delivery: what the machine handed out, and the record read back from the log.
#[derive(Debug)]
pub struct OutDelivery {
    pub delivery: Delivery,
    pub record: StoredRecord,
}

/// What one response delivers: single messages, and (to members that joined with
/// batched deliveries) runs of messages sent as a slice of their stored batch.
#[derive(Debug, Default)]
pub struct OutDeliveries {
    pub singles: Vec<OutDelivery>,
    pub runs: Vec<OutRun>,
}

impl OutDeliveries {
    /// Messages delivered, singles and run members alike.
    pub fn messages(&self) -> usize {
        self.singles.len() + self.runs.iter().map(|r| r.count as usize).sum::<usize>()
    }

    fn is_empty(&self) -> bool {
        self.singles.is_empty() && self.runs.is_empty()
    }
}

/// Consecutive deliveries of one partition (offsets and delivery sequence numbers both
/// consecutive, one attempt, one deadline) whose records lie in one stored batch, sent as
/// the slice of the batch that holds them: neither the broker nor the client encodes a
/// message per record.
#[derive(Debug)]
pub struct OutRun {
    pub partition: PartitionId,
    pub first_offset: u64,
    pub count: u32,
    pub first_delivery: u64,
    pub attempt: u32,
    pub deadline_ms: u64,
    /// The batch header's base offset and first timestamp, which the records' deltas
    /// count from.
    pub base_offset: u64,
    pub first_timestamp: i64,
    /// The run's records as stored, back to back: a slice of the batch, pointing into the
    /// log's mapping.
    pub records: Bytes,
}

/// Consecutive messages of runs to settle at once: offsets `first_offset..+count` of
/// `partition`, delivered with sequence numbers `first_delivery..+count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckRange {
    pub partition: u32,
    pub first_offset: u64,
    pub count: u32,
    pub first_delivery: u64,
}

/// What a nack names.
#[derive(Debug, Clone, Copy)]
pub enum NackTarget<'a> {
    /// One delivery, by its opaque ack id.
    Id(&'a [u8]),
    /// Messages of runs.
    Range(AckRange),
}

/// Most messages one [`AckRange`] may name: a member never holds more in flight, and the
/// bound keeps one request's work under the group lock small.
pub const MAX_ACK_RANGE: u32 = crate::group::MAX_MEMBER_IN_FLIGHT_MESSAGES;

impl AckRange {
    /// Checks the range's size and bounds.
    fn check(&self) -> Result<()> {
        if self.count == 0 || self.count > MAX_ACK_RANGE {
            return Err(BrokerError::InvalidArgument(format!(
                "an ack range names 1 to {MAX_ACK_RANGE} messages, not {}",
                self.count
            )));
        }
        if self
            .first_offset
            .checked_add(u64::from(self.count))
            .is_none()
            || self
                .first_delivery
                .checked_add(u64::from(self.count))
                .is_none()
        {
            return Err(BrokerError::InvalidArgument(
                "an ack range runs past the largest offset or sequence number".into(),
            ));
        }
        Ok(())
    }

    /// The ack ids of the range's messages (after [`check`](Self::check)).
    fn ids(&self) -> impl Iterator<Item = AckId> + '_ {
        (0..u64::from(self.count)).map(move |i| AckId {
            partition: PartitionId(self.partition),
            offset: Offset(self.first_offset.saturating_add(i)),
            delivery: self.first_delivery.saturating_add(i),
        })
    }
}

/// What a member's stream carries: messages, or the error that ends it.
pub type MemberItem = std::result::Result<Outgoing, BrokerError>;
pub type MemberTx = mpsc::Sender<MemberItem>;

/// A group's settings: the machine's, plus the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    pub settings: GroupSettings,
    pub dead_letter_topic: Option<String>,
}

/// `group.toml`. Unknown keys are refused, so damage that turns a key into another word is
/// found rather than read as the key's default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupMeta {
    topic: String,
    group: String,
    created_ms: i64,
    /// The topic's `created_ms`, so a group never attaches to a new topic of the same name.
    #[serde(default)]
    topic_created_ms: i64,
    ack_deadline_ms: u64,
    retry_backoff_min_ms: u64,
    retry_backoff_max_ms: u64,
    max_delivery_attempts: u32,
    ordering: String,
    #[serde(default)]
    dead_letter_topic: Option<String>,
    /// Redrive progress: per partition of `redrive_topic`, the offset scanned up to.
    #[serde(default)]
    redrive_topic: Option<String>,
    #[serde(default)]
    redrive_cursor: Vec<u64>,
}

fn ordering_name(mode: OrderingMode) -> &'static str {
    match mode {
        OrderingMode::Key => "key",
        OrderingMode::Partition => "partition",
        OrderingMode::None => "none",
    }
}

fn ordering_from_name(name: &str) -> OrderingMode {
    match name {
        "partition" => OrderingMode::Partition,
        "none" => OrderingMode::None,
        _ => OrderingMode::Key,
    }
}

/// A member's slot: its stream and what waits to be sent on it.
struct MemberSlot {
    tx: MemberTx,
    client_id: String,
    /// Joined with batched deliveries: it decodes stored batches, so runs go as runs.
    batched: bool,
    /// Responses polled and not yet queued on the stream: at most one poll's worth.
    outbox: VecDeque<Outgoing>,
    /// An assignment change not yet sent; later changes merge into it.
    assignment: Option<AssignmentChange>,
}

struct Inner {
    state: GroupState,
    config: GroupConfig,
    members: HashMap<MemberId, MemberSlot>,
    redrive_topic: Option<String>,
    redrive_cursor: Vec<u64>,
}

/// One consumer group of one topic.
pub struct Group {
    pub topic_name: String,
    pub name: String,
    pub topic: Arc<Topic>,
    created_ms: i64,
    dir: PathBuf,
    inner: Mutex<Inner>,
    /// What the driver keeps between passes over the log (decoded records, fill
    /// cursors). Only the group's task touches it; a restart after a panic empties it.
    feed: Mutex<Feed>,
    /// Wakes the driver: a member event, an admin change, a stream drained.
    wake: Notify,
    /// Flips to true when the group is deleted or the broker closes.
    stop: watch::Sender<bool>,
    /// The last state bytes written; held while writing either file, so writes never
    /// interleave or reorder.
    persisted: Mutex<Vec<u8>>,
    /// Serialises Redrive calls.
    redrive: tokio::sync::Mutex<()>,
    /// Running totals for metrics, since the group was loaded or created.
    counters: GroupCounters,
    /// Tests set it to make the next pass of the driver panic, as a bug would.
    #[cfg(test)]
    panic_next: std::sync::atomic::AtomicBool,
}

/// A group's running totals, kept outside the state's lock so reading them is free; the
/// state machine itself counts redeliveries and dead letters (see `describe`).
#[derive(Debug, Default)]
struct GroupCounters {
    deliveries: AtomicU64,
    acks: AtomicU64,
    nacks: AtomicU64,
    expirations: AtomicU64,
}

/// A snapshot of a group's running totals, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupCounts {
    /// Deliveries sent to members (first deliveries and redeliveries).
    pub deliveries: u64,
    /// Acks that completed a message (stale acks are not counted).
    pub acks: u64,
    /// Nacks of live deliveries (stale nacks are not counted).
    pub nacks: u64,
    /// Deliveries whose ack deadline passed.
    pub expirations: u64,
}

/// A pending message with its key read back from the log.
pub type PendingWithKey = (crate::group::PendingMessage, Option<Bytes>);

/// A record read back from the log.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub offset: u64,
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub headers: Vec<(String, Bytes)>,
}

/// Where a record lies in the log: the stored batch it is in and its encoded bytes there.
/// Cheap to keep (one reference count, no per-field slices) and, since consecutive records
/// of a batch are adjacent, a run of them is sent as one slice of the batch; decoded into
/// a [`StoredRecord`] only where a message goes out on its own.
#[derive(Debug, Clone)]
pub struct RecordRef {
    pub offset: u64,
    batch: Bytes,
    encoded_at: u32,
    encoded_len: u32,
}

impl RecordRef {
    /// The record `r`, decoded from the batch at `bytes[batch_at..batch_at + batch_len]`.
    fn of(r: &batch::RecordView<'_>, bytes: &Bytes, batch_at: usize, batch_len: usize) -> Self {
        let batch = bytes.slice(batch_at..batch_at + batch_len);
        // Both lie in `batch` (a batch is at most u32::MAX bytes long).
        let encoded_at = (r.encoded.as_ptr() as usize).saturating_sub(batch.as_ptr() as usize);
        RecordRef {
            offset: r.offset,
            batch,
            encoded_at: encoded_at as u32,
            encoded_len: r.encoded.len() as u32,
        }
    }

    fn encoded_end(&self) -> usize {
        self.encoded_at as usize + self.encoded_len as usize
    }

    /// The record's fields, slices of the batch. `None` only if the bytes are not the
    /// record they were (cannot happen for bytes read from the log).
    pub fn decode(&self) -> Option<StoredRecord> {
        let header = batch::BatchHeader::read(&self.batch)?;
        let encoded = self
            .batch
            .get(self.encoded_at as usize..self.encoded_end())?;
        let r = batch::Records::resume(
            header.base_offset,
            header.first_timestamp,
            self.offset,
            encoded,
        )?
        .next()?
        .ok()?;
        Some(StoredRecord {
            offset: r.offset,
            timestamp: r.timestamp,
            key: r.key.map(|k| self.batch.slice_ref(k)),
            value: self.batch.slice_ref(r.value),
            headers: r
                .headers()
                .map(|(k, v)| (k.to_owned(), self.batch.slice_ref(v)))
                .collect(),
        })
    }
}

/// Bytes of a record's key, value and headers: what the in-flight byte limits count.
fn view_size(r: &batch::RecordView<'_>) -> usize {
    r.key.map_or(0, <[u8]>::len)
        + r.value.len()
        + r.headers().map(|(k, v)| k.len() + v.len()).sum::<usize>()
}

fn group_error(error: GroupError) -> BrokerError {
    match error {
        GroupError::TooManyMembers { .. } => BrokerError::ResourceExhausted(error.to_string()),
        GroupError::UnknownPartition { .. } => BrokerError::NotFound(error.to_string()),
        GroupError::UnknownMember(_) => BrokerError::NotFound(error.to_string()),
        _ => BrokerError::InvalidArgument(error.to_string()),
    }
}

/// The broker's time for the group machine: the wall clock. The driver's fill and
/// shaping steps never read a clock, so the simulation runs them on its own [`Clock`].
fn now() -> u64 {
    WallClock.now_ms()
}

/// Reads the records at `offsets` (ascending) from a partition log; `None` for offsets that
/// are gone (retention) or beyond the end.
pub fn read_records(reader: &impl LogSource, offsets: &[u64]) -> Vec<Option<StoredRecord>> {
    read_refs(reader, offsets)
        .into_iter()
        .map(|r| r.and_then(|r| r.decode()))
        .collect()
}

/// Finds the records at `offsets` (ascending) in a partition log, as [`read_records`].
fn read_refs(reader: &impl LogSource, offsets: &[u64]) -> Vec<Option<RecordRef>> {
    let mut out: Vec<Option<RecordRef>> = vec![None; offsets.len()];
    let mut i = 0;
    while i < offsets.len() {
        let chunk = match reader.read(offsets[i], FETCH_CHUNK_BYTES) {
            Ok(Some(chunk)) => chunk,
            _ => {
                i += 1;
                continue;
            }
        };
        let start = i;
        let mut next_batch_at = 0;
        'batches: for view in batch::batches(&chunk.bytes) {
            // Every offset found: the chunk's later batches are not wanted (the last
            // wanted record may end a batch that others follow).
            if i == offsets.len() {
                break;
            }
            let Ok(view) = view else { break };
            let (batch_at, batch_len) = (next_batch_at, view.header.batch_len as usize);
            next_batch_at += batch_len;
            if view.header.last_offset() < offsets[i] {
                continue;
            }
            let mut batch_records = view.records();
            batch_records.skip_to(offsets[i]);
            for record in batch_records {
                let Ok(record) = record else {
                    break 'batches;
                };
                while i < offsets.len() && offsets[i] < record.offset {
                    i += 1;
                }
                if i == offsets.len() {
                    break 'batches;
                }
                if offsets[i] == record.offset {
                    out[i] = Some(RecordRef::of(&record, &chunk.bytes, batch_at, batch_len));
                    i += 1;
                }
            }
        }
        if i == start {
            i += 1;
        }
    }
    out
}

/// Where `fill` stopped in a chunk it read: the next record is `next_offset`, in the batch
/// at `batch_at` of `chunk`, at `position` in it.
struct FillCursor {
    next_offset: u64,
    chunk: Bytes,
    high_watermark: u64,
    batch_at: usize,
    position: batch::RecordsPosition,
}

/// Decoded records by partition, each partition's in a window of consecutive offsets.
/// `fill` offers a partition's records in offset order and deliveries mostly take them in
/// the same order, so a ring indexed by `offset - start` replaces a hash map insert and
/// remove per record with two index operations.
#[derive(Default)]
struct DecodedRecords {
    partitions: Vec<DecodedWindow>,
    /// Slots over every window, taken or not: what bounds the memory.
    slots: usize,
}

/// One partition's decoded records: `records[i]` is offset `start + i`, `None` once taken.
#[derive(Default)]
struct DecodedWindow {
    start: u64,
    records: VecDeque<Option<RecordRef>>,
}

impl DecodedRecords {
    fn slots(&self) -> usize {
        self.slots
    }

    fn clear(&mut self) {
        self.partitions.clear();
        self.slots = 0;
    }

    /// Keeps `record` of `partition`. A record that does not follow the window's last one
    /// (the machine skipped done offsets) starts the window again.
    fn insert(&mut self, partition: u32, record: RecordRef) {
        let index = partition as usize;
        if self.partitions.len() <= index {
            self.partitions
                .resize_with(index + 1, DecodedWindow::default);
        }
        let window = &mut self.partitions[index];
        let next = window.start + window.records.len() as u64;
        if window.records.is_empty() || record.offset != next {
            self.slots -= window.records.len();
            window.records.clear();
            window.start = record.offset;
        }
        window.records.push_back(Some(record));
        self.slots += 1;
    }

    /// Takes the record at `offset` of `partition`, if kept.
    fn take(&mut self, partition: u32, offset: u64) -> Option<RecordRef> {
        let window = self.partitions.get_mut(partition as usize)?;
        let at = usize::try_from(offset.checked_sub(window.start)?).ok()?;
        let record = window.records.get_mut(at)?.take();
        while let Some(None) = window.records.front() {
            window.records.pop_front();
            window.start += 1;
            self.slots -= 1;
        }
        record
    }
}

/// How the driver's steps reach the group's machine: the broker's [`Group`] locks its
/// state for each call (never across I/O); the simulation owns a machine of its own.
pub(crate) trait MachineAccess {
    fn with_machine<R>(&self, f: impl FnOnce(&mut GroupState) -> R) -> R;
}

impl MachineAccess for Group {
    fn with_machine<R>(&self, f: impl FnOnce(&mut GroupState) -> R) -> R {
        f(&mut self.lock().state)
    }
}

#[cfg(test)]
impl MachineAccess for Mutex<GroupState> {
    fn with_machine<R>(&self, f: impl FnOnce(&mut GroupState) -> R) -> R {
        f(&mut self.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// What the driver keeps between its passes over the logs: the records `fill` decoded and
/// offered, kept until delivered so delivering does not decode them again (a batch's
/// records are only reachable by decoding from its start, so re-reading one record costs
/// half a batch on average; bounded by [`DECODED_MAX`]), and per partition where `fill`
/// stopped decoding because the machine had no more room, so the next pass goes on from
/// there instead of reading and skipping to it again.
#[derive(Default)]
pub(crate) struct Feed {
    decoded: DecodedRecords,
    cursors: Vec<Option<FillCursor>>,
}

/// Reads partition `index`'s log where the machine wants records and offers them, until
/// the machine is full or the log is read to its high watermark. `names` (topic, group)
/// are for logs.
pub(crate) fn fill_partition(
    feed: &mut Feed,
    machine: &impl MachineAccess,
    log: &impl LogSource,
    index: usize,
    names: (&str, &str),
) {
    let (topic, group) = names;
    let id = PartitionId(index as u32);
    if feed.cursors.len() <= index {
        feed.cursors.resize_with(index + 1, || None);
    }
    // Each pass offers at least one record (so `want` moves up towards the high watermark),
    // or reads afresh once after a used-up cursor, or stops: the loop is bounded by the log.
    while let Ok(Some((want, room))) = machine.with_machine(|s| s.wants_with_room(id)) {
        let want = want.0;
        if want >= log.high_watermark() {
            break;
        }
        let resume = feed.cursors[index].take().filter(|c| c.next_offset == want);
        let resumed = resume.is_some();
        let (bytes, high_watermark, mut batch_at, mut position) = match resume {
            Some(c) => (c.chunk, c.high_watermark, c.batch_at, Some(c.position)),
            None => match log.read(want, FETCH_CHUNK_BYTES) {
                Ok(Some(chunk)) => (chunk.bytes, chunk.high_watermark, 0, None),
                Ok(None) => break,
                Err(StorageError::OffsetOutOfRange { start, .. }) if want < start => {
                    tracing::warn!(topic = %topic, group = %group, partition = index, from = want, to = start, "records removed by retention before the group consumed them; skipping");
                    let _ =
                        machine.with_machine(|s| s.seek(SeekTarget::Partition(id), Offset(start)));
                    continue;
                }
                Err(error) => {
                    tracing::error!(topic = %topic, group = %group, partition = index, %error, "reading the log for a group failed");
                    break;
                }
            },
        };
        // Decode only what the machine has room for: a chunk can hold ten times more
        // records than a partition buffers. Where decoding stops, a cursor remembers the
        // place, so the next pass neither reads nor skips again.
        let mut records = Vec::with_capacity(room.min(4096));
        let mut stored = Vec::with_capacity(room.min(4096));
        let mut stopped = None;
        'batches: for view in batch::batches(&bytes[batch_at..]) {
            let Ok(view) = view else { break };
            let this_batch = batch_at;
            batch_at += view.header.batch_len as usize;
            // A cursor's position belongs to the first batch of the slice only, also
            // when nothing wanted is left in it (the cursor stopped at its end): applied
            // to the next batch it decoded that batch from the wrong place, offering
            // offsets past the one wanted.
            let resume_at = position.take();
            if view.header.last_offset() < want {
                continue;
            }
            let mut batch_records = match resume_at {
                Some(at) => view.records_from(at),
                None => {
                    let mut all = view.records();
                    all.skip_to(want);
                    all
                }
            };
            loop {
                if records.len() >= room {
                    stopped = Some((this_batch, view.position_of(&batch_records)));
                    break 'batches;
                }
                let Some(Ok(r)) = batch_records.next() else {
                    break;
                };
                if r.offset < want {
                    continue;
                }
                if r.offset >= high_watermark {
                    break 'batches;
                }
                let record = RecordRef::of(&r, &bytes, this_batch, view.header.batch_len as usize);
                records.push(OfferedRecord {
                    offset: Offset(r.offset),
                    key: r.key.map(KeyHash::of),
                    size_bytes: view_size(&r).min(u32::MAX as usize) as u32,
                    timestamp_ms: r.timestamp,
                });
                stored.push(record);
            }
        }
        if records.is_empty() && resumed {
            // The cursor's chunk is used up: read on from the log.
            continue;
        }
        if let (Some((batch_at, position)), Some(last)) = (stopped, records.last()) {
            feed.cursors[index] = Some(FillCursor {
                next_offset: last.offset.0 + 1,
                chunk: bytes.clone(),
                high_watermark,
                batch_at,
                position,
            });
        }
        if records.is_empty() {
            break;
        }
        let consumed = match machine.with_machine(|s| s.offer(id, &records)) {
            Ok(consumed) => consumed,
            Err(error) => {
                tracing::error!(topic = %topic, group = %group, partition = index, %error, "offering records to a group failed");
                break;
            }
        };
        if feed.decoded.slots() + consumed > DECODED_MAX {
            feed.decoded.clear();
        }
        for record in stored.drain(..consumed.min(stored.len())) {
            feed.decoded.insert(index as u32, record);
        }
        if consumed < records.len() || consumed == 0 {
            break;
        }
    }
}

/// Turns one member's polled deliveries into responses (see [`Shaper`]): records come
/// from what `fill` decoded, else (redeliveries, records the cache dropped) from the log
/// again. Returns the responses and the deliveries whose records are gone from the log.
pub(crate) fn shape_deliveries<'a, L: LogSource + 'a>(
    feed: &mut Feed,
    log_of: impl Fn(PartitionId) -> Option<&'a L>,
    batched: bool,
    mut deliveries: Vec<Delivery>,
) -> (Vec<Outgoing>, Vec<AckId>) {
    deliveries.sort_by_key(|d| (d.partition, d.offset));
    let mut responses = Vec::new();
    let mut missing = Vec::new();
    let mut shaper = Shaper::new(batched);
    let mut i = 0;
    while i < deliveries.len() {
        let p = deliveries[i].partition;
        let mut j = i;
        while j < deliveries.len() && deliveries[j].partition == p {
            j += 1;
        }
        let Some(log) = log_of(p) else {
            i = j;
            continue;
        };
        let mut records: Vec<Option<RecordRef>> = deliveries[i..j]
            .iter()
            .map(|d| feed.decoded.take(p.0, d.offset.0))
            .collect();
        let (slots, offsets): (Vec<usize>, Vec<u64>) = records
            .iter()
            .enumerate()
            .filter(|(_, r)| r.is_none())
            .map(|(k, _)| (k, deliveries[i + k].offset.0))
            .unzip();
        if !offsets.is_empty() {
            let read = read_refs(log, &offsets);
            for (slot, record) in slots.into_iter().zip(read) {
                records[slot] = record;
            }
        }
        for (d, record) in deliveries[i..j].iter().zip(records) {
            let Some(record) = record else {
                missing.push(d.ack_id);
                continue;
            };
            shaper.push(*d, record, &mut responses);
        }
        shaper.end_run(&mut responses);
        i = j;
    }
    missing.extend(shaper.finish(&mut responses));
    (responses, missing)
}

/// Whether `offset` is gone from `log` for good: below its start (retention) or past its
/// end. A damaged batch (DATA_LOSS) is not gone: its record exists but cannot be served.
fn is_gone(log: &impl LogSource, offset: u64) -> bool {
    match log.read(offset, 1) {
        Ok(None) => true,
        Err(StorageError::OffsetOutOfRange { start, .. }) => {
            offset < start || offset >= log.high_watermark()
        }
        Ok(Some(_)) | Err(_) => false,
    }
}

/// A polled record gone from the log (retention): there is nothing to deliver, so it is
/// done.
pub(crate) fn skip_missing(
    state: &mut GroupState,
    member: MemberId,
    ack_id: &AckId,
    names: (&str, &str),
) {
    let (topic, group) = names;
    tracing::warn!(topic = %topic, group = %group, partition = %ack_id.partition, offset = %ack_id.offset, "a polled record is gone from the log; skipping it");
    let _ = state.ack(member, ack_id);
}

/// Writes `bytes` to `dir/name` through a temporary file, fsync and rename.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let mut file = std::fs::File::create(&tmp)
        .map_err(|e| BrokerError::io(format!("creating {}", tmp.display()), e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| BrokerError::io(format!("writing {}", tmp.display()), e))?;
    std::fs::rename(&tmp, &path)
        .map_err(|e| BrokerError::io(format!("renaming {}", tmp.display()), e))?;
    crate::storage::sync_dir(dir)?;
    Ok(())
}

impl Group {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn config(&self) -> GroupConfig {
        self.lock().config.clone()
    }

    pub fn member_count(&self) -> usize {
        self.lock().members.len()
    }

    /// The group's running totals since it was loaded or created. Lock-free.
    pub fn counts(&self) -> GroupCounts {
        let c = &self.counters;
        GroupCounts {
            deliveries: c.deliveries.load(Ordering::Relaxed),
            acks: c.acks.load(Ordering::Relaxed),
            nacks: c.nacks.load(Ordering::Relaxed),
            expirations: c.expirations.load(Ordering::Relaxed),
        }
    }

    pub fn stopped(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Wakes the driver.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn meta(&self, inner: &Inner) -> GroupMeta {
        let s = &inner.config.settings;
        GroupMeta {
            topic: self.topic_name.clone(),
            group: self.name.clone(),
            created_ms: self.created_ms,
            topic_created_ms: self.topic.meta.created_ms,
            ack_deadline_ms: s.ack_deadline_ms,
            retry_backoff_min_ms: s.retry_backoff_min_ms,
            retry_backoff_max_ms: s.retry_backoff_max_ms,
            max_delivery_attempts: s.max_delivery_attempts,
            ordering: ordering_name(s.ordering).to_owned(),
            dead_letter_topic: inner.config.dead_letter_topic.clone(),
            redrive_topic: inner.redrive_topic.clone(),
            redrive_cursor: inner.redrive_cursor.clone(),
        }
    }

    /// Writes `group.toml`. Blocking.
    fn write_meta(&self) -> Result<()> {
        // Every write of the group's files goes under this lock, so two never interleave.
        let _writing = self.persisted.lock().unwrap_or_else(|p| p.into_inner());
        let meta = self.meta(&self.lock());
        let text = toml::to_string(&meta)
            .map_err(|e| BrokerError::io("encoding group.toml", std::io::Error::other(e)))?;
        write_atomic(&self.dir, META_FILE, text.as_bytes())
    }

    /// Writes both files of a new group into `dir` (its staging directory). Blocking.
    fn write_files(&self, dir: &Path) -> Result<()> {
        let mut last = self.persisted.lock().unwrap_or_else(|p| p.into_inner());
        let (bytes, meta) = {
            let inner = self.lock();
            (inner.state.snapshot().encode(), self.meta(&inner))
        };
        let text = toml::to_string(&meta)
            .map_err(|e| BrokerError::io("encoding group.toml", std::io::Error::other(e)))?;
        write_atomic(dir, STATE_FILE, &bytes)?;
        write_atomic(dir, META_FILE, text.as_bytes())?;
        *last = bytes;
        Ok(())
    }

    /// Writes the state if it changed since the last write. Blocking.
    pub fn persist(&self) -> Result<()> {
        let mut last = self.persisted.lock().unwrap_or_else(|p| p.into_inner());
        if *self.stop.borrow() && !self.dir.exists() {
            return Ok(()); // deleted
        }
        let bytes = self.lock().state.snapshot().encode();
        if *last == bytes {
            return Ok(());
        }
        write_atomic(&self.dir, STATE_FILE, &bytes)?;
        *last = bytes;
        Ok(())
    }

    /// Replaces the machine with the last persisted state (after a panic in the group's
    /// task, whose tables may be half-updated): the members' streams end with
    /// UNAVAILABLE, so their clients join again, and what they held is redelivered, as
    /// are acks since the last write (at-least-once). Returns how many partition positions
    /// were brought down to their log's end.
    fn restore_persisted(&self) -> u64 {
        let persisted = self
            .persisted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut inner = self.lock();
        let snapshot = GroupSnapshot::decode(&persisted).unwrap_or_else(|error| {
            // Written by this process from a valid state, so this means a bug; the
            // current state's snapshot is the best there is.
            tracing::error!(topic = %self.topic_name, group = %self.name, %error, "the last persisted group state does not decode; restarting from the current state");
            inner.state.snapshot()
        });
        let mut snapshot = snapshot;
        let reset = clamp_to_logs(&mut snapshot, &self.topic, (&self.topic_name, &self.name));
        let settings = inner.config.settings.clone();
        match GroupState::restore(settings, GroupLimits::default(), &snapshot) {
            Ok(state) => inner.state = state,
            Err(error) => {
                tracing::error!(topic = %self.topic_name, group = %self.name, %error, "cannot restore the group's state; keeping the current one");
            }
        }
        for (_, slot) in inner.members.drain() {
            let _ = slot.tx.try_send(Err(BrokerError::Unavailable(format!(
                "group {:?} of topic {:?} restarted after an internal error; join again",
                self.name, self.topic_name
            ))));
        }
        drop(inner);
        *self.feed.lock().unwrap_or_else(|p| p.into_inner()) = Feed::default();
        reset
    }

    // ---- members ----

    /// Adds a member whose stream is `tx`; sends it the Joined response first.
    pub fn join(
        &self,
        member: MemberId,
        client_id: String,
        options: MemberOptions,
        batched: bool,
        tx: MemberTx,
    ) -> Result<()> {
        let mut inner = self.lock();
        let partitions = inner
            .state
            .join(member, options, now())
            .map_err(group_error)?;
        // The channel is fresh: this cannot be full.
        let _ = tx.try_send(Ok(Outgoing::Joined {
            member,
            partitions,
            config: inner.config.clone(),
        }));
        inner.members.insert(
            member,
            MemberSlot {
                tx,
                client_id,
                batched,
                outbox: VecDeque::new(),
                assignment: None,
            },
        );
        drop(inner);
        self.wake();
        Ok(())
    }

    /// Removes a member (its stream closed). Idempotent.
    pub fn leave(&self, member: MemberId) {
        let mut inner = self.lock();
        inner.members.remove(&member);
        let _ = inner.state.leave(member, now());
        drop(inner);
        self.wake();
    }

    /// Acks by id and by range; malformed ack ids and ranges are INVALID_ARGUMENT, unknown
    /// or stale ones are ignored.
    pub fn ack(&self, member: MemberId, ack_ids: &[Bytes], ranges: &[AckRange]) -> Result<()> {
        for range in ranges {
            range.check()?;
        }
        let mut inner = self.lock();
        let mut acked = 0;
        let mut result = Ok(());
        for id in ack_ids {
            let id = match AckId::decode(id) {
                Ok(id) => id,
                Err(error) => {
                    result = Err(group_error(error));
                    break;
                }
            };
            if let Ok(AckOutcome::Acked) = inner.state.ack(member, &id) {
                acked += 1;
            }
        }
        for range in ranges {
            for id in range.ids() {
                if let Ok(AckOutcome::Acked) = inner.state.ack(member, &id) {
                    acked += 1;
                }
            }
        }
        drop(inner);
        self.counters.acks.fetch_add(acked, Ordering::Relaxed);
        result?;
        self.wake();
        Ok(())
    }

    /// Nacks one delivery by id, or the messages of a range.
    pub fn nack(
        &self,
        member: MemberId,
        target: NackTarget<'_>,
        delay_ms: Option<u32>,
        reason: &str,
    ) -> Result<()> {
        let ids: Vec<AckId> = match target {
            NackTarget::Id(ack_id) => vec![AckId::decode(ack_id).map_err(group_error)?],
            NackTarget::Range(range) => {
                range.check()?;
                range.ids().collect()
            }
        };
        let now = now();
        let mut nacked = 0;
        let mut inner = self.lock();
        for id in &ids {
            let outcome = inner
                .state
                .nack(member, id, delay_ms.map(u64::from), reason, now);
            if matches!(
                outcome,
                Ok(NackOutcome::Retry { .. } | NackOutcome::DeadLetter)
            ) {
                nacked += 1;
            }
        }
        drop(inner);
        self.counters.nacks.fetch_add(nacked, Ordering::Relaxed);
        self.wake();
        Ok(())
    }

    pub fn extend(
        &self,
        member: MemberId,
        ack_ids: &[Bytes],
        ranges: &[AckRange],
        extra_ms: u32,
    ) -> Result<()> {
        for range in ranges {
            range.check()?;
        }
        let mut inner = self.lock();
        let now = now();
        for id in ack_ids {
            let id = AckId::decode(id).map_err(group_error)?;
            let _ = inner.state.extend(member, &id, u64::from(extra_ms), now);
        }
        for range in ranges {
            for id in range.ids() {
                let _ = inner.state.extend(member, &id, u64::from(extra_ms), now);
            }
        }
        drop(inner);
        self.wake();
        Ok(())
    }

    pub fn credit(&self, member: MemberId, messages: u32, bytes: u64) {
        let _ = self.lock().state.credit(member, u64::from(messages), bytes);
        self.wake();
    }

    // ---- admin ----

    /// Replaces the settings and writes `group.toml`. Blocking.
    pub fn update(&self, config: GroupConfig) -> Result<()> {
        {
            let mut inner = self.lock();
            inner
                .state
                .update_settings(config.settings.clone())
                .map_err(group_error)?;
            inner.config = config;
        }
        self.write_meta()?;
        self.wake();
        Ok(())
    }

    /// Moves partitions to the given offsets; returns the new committed offsets.
    pub fn seek(&self, offsets: &[(u32, u64)]) -> Result<Vec<(u32, u64)>> {
        let mut inner = self.lock();
        let mut moved = Vec::with_capacity(offsets.len());
        for &(partition, offset) in offsets {
            let done = inner
                .state
                .seek(
                    SeekTarget::Partition(PartitionId(partition)),
                    Offset(offset),
                )
                .map_err(group_error)?;
            moved.extend(done.into_iter().map(|(p, o)| (p.0, o.0)));
        }
        drop(inner);
        self.wake();
        Ok(moved)
    }

    /// The description as DescribeGroup shows it, with each member's client id.
    pub fn describe(
        &self,
    ) -> (
        crate::group::GroupDescription,
        GroupConfig,
        HashMap<u64, String>,
    ) {
        let inner = self.lock();
        let clients = inner
            .members
            .iter()
            .map(|(id, slot)| (id.0, slot.client_id.clone()))
            .collect();
        (inner.state.describe(), inner.config.clone(), clients)
    }

    /// Pending messages, with their keys read back from the log (hash collisions with a
    /// key filter are dropped).
    pub fn pending(
        &self,
        partition: Option<u32>,
        key: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<PendingWithKey>, bool)> {
        let filter = PendingFilter {
            partition: partition.map(PartitionId),
            key: key.map(KeyHash::of),
            limit,
        };
        let PendingList {
            messages,
            truncated,
        } = self.lock().state.pending(&filter).map_err(group_error)?;
        let mut out = Vec::with_capacity(messages.len());
        let mut i = 0;
        while i < messages.len() {
            let p = messages[i].partition;
            let mut j = i;
            while j < messages.len() && messages[j].partition == p {
                j += 1;
            }
            let offsets: Vec<u64> = messages[i..j].iter().map(|m| m.offset.0).collect();
            let reader = self.topic.partition(p.0)?.reader();
            let records = read_records(reader, &offsets);
            for (message, record) in messages[i..j].iter().zip(records) {
                let record_key = record.and_then(|r| r.key);
                if let Some(wanted) = key
                    && record_key.as_deref() != Some(wanted)
                {
                    continue;
                }
                out.push((*message, record_key));
            }
            i = j;
        }
        Ok((out, truncated))
    }

    // ---- the driver ----

    /// Reads the log where the machine wants records and offers them.
    fn fill(&self, watches: &mut [Option<watch::Receiver<u64>>]) {
        let mut feed = self.feed.lock().unwrap_or_else(|e| e.into_inner());
        for (index, partition) in self.topic.partitions.iter().enumerate() {
            if let Some(w) = watches[index].as_mut() {
                w.borrow_and_update();
            }
            fill_partition(
                &mut feed,
                self,
                partition.reader(),
                index,
                (&self.topic_name, &self.name),
            );
        }
    }

    /// Expires deadlines and takes the machine's actions; returns the dead letters.
    fn tick(&self) -> Vec<DeadLetter> {
        let mut inner = self.lock();
        let expired = inner.state.tick(now());
        if !expired.is_empty() {
            self.counters
                .expirations
                .fetch_add(expired.len() as u64, Ordering::Relaxed);
        }
        let mut dead = Vec::new();
        for action in inner.state.take_actions() {
            match action {
                crate::group::Action::DeadLetter(d) => dead.push(d),
                crate::group::Action::AssignmentChanged(change) => {
                    if let Some(slot) = inner.members.get_mut(&change.member) {
                        slot.assignment = Some(match slot.assignment.take() {
                            None => change,
                            Some(old) => merge_changes(old, change),
                        });
                    }
                }
            }
        }
        dead
    }

    /// Appends one dead letter to the dead-letter topic, then confirms it.
    async fn dead_letter(&self, registry: &Registry, dead: &DeadLetter) -> Result<()> {
        let dlq = self.lock().config.dead_letter_topic.clone();
        let Some(dlq) = dlq else {
            return Err(BrokerError::InvalidArgument(
                "the group has no dead-letter topic".into(),
            ));
        };
        let topic = registry.get(&dlq)?;
        let source = self.topic.partition(dead.partition.0)?;
        let record = read_records(source.reader(), &[dead.offset.0])
            .pop()
            .flatten();
        if let Some(record) = record {
            let extra = [
                (DLQ_TOPIC, self.topic_name.clone()),
                (DLQ_GROUP, self.name.clone()),
                (DLQ_PARTITION, dead.partition.0.to_string()),
                (DLQ_OFFSET, dead.offset.0.to_string()),
                (DLQ_ATTEMPTS, dead.attempts.to_string()),
                (DLQ_REASON, dead.last_reason.to_string()),
            ];
            let mut headers: Vec<(&str, &[u8])> = record
                .headers
                .iter()
                .filter(|(k, _)| !k.starts_with(DLQ_PREFIX))
                .map(|(k, v)| (k.as_str(), v.as_ref()))
                .collect();
            headers.extend(extra.iter().map(|(k, v)| (*k, v.as_bytes())));
            let batch = build_batch(
                registry,
                record.timestamp,
                record.key.as_deref(),
                &record.value,
                &headers,
            )?;
            let partition = topic.pick_partition(None, record.key.as_deref())?;
            partition.append(batch).await?;
        } else if is_gone(source.reader(), dead.offset.0) {
            tracing::warn!(topic = %self.topic_name, group = %self.name, partition = %dead.partition, offset = %dead.offset, "a dead letter's record is gone from the log; dropping it");
        } else {
            // Its batch is damaged (reads answer DATA_LOSS): the bytes cannot be copied, and
            // the message has failed every attempt, so it is counted as dead-lettered.
            tracing::error!(topic = %self.topic_name, group = %self.name, partition = %dead.partition, offset = %dead.offset, "a dead letter's record cannot be read from the log (damaged batch); counting it as dead-lettered without a copy");
        }
        let _ = self.lock().state.dead_lettered(dead.partition, dead.offset);
        Ok(())
    }

    /// Sends what members' outboxes hold while their streams have room, then polls
    /// members with room and an empty outbox. Returns whether anything was delivered.
    fn deliver(&self) -> bool {
        let mut inner = self.lock();
        flush_all(&mut inner);
        let ready: Vec<(MemberId, bool)> = inner
            .members
            .iter()
            .filter(|(_, slot)| {
                slot.outbox.is_empty()
                    && slot.assignment.is_none()
                    && slot.tx.capacity() > 1
                    && !slot.tx.is_closed()
            })
            .map(|(&id, slot)| (id, slot.batched))
            .collect();
        let now = now();
        let mut polled = Vec::new();
        for (member, batched) in ready {
            match inner.state.poll(member, now, POLL_MAX) {
                Ok(deliveries) if !deliveries.is_empty() => {
                    polled.push((member, batched, deliveries))
                }
                _ => {}
            }
        }
        drop(inner);
        if polled.is_empty() {
            return false;
        }
        let mut built = Vec::with_capacity(polled.len());
        let mut missing = Vec::new();
        {
            let mut feed = self.feed.lock().unwrap_or_else(|e| e.into_inner());
            for (member, batched, deliveries) in polled {
                let (responses, gone) = shape_deliveries(
                    &mut feed,
                    |p| self.topic.partition(p.0).ok().map(|p| p.reader()),
                    batched,
                    deliveries,
                );
                missing.extend(gone.into_iter().map(|id| (member, id)));
                built.push((member, responses));
            }
        }
        // A record the log still holds but cannot serve (its batch is damaged: reads answer
        // DATA_LOSS) is not done: it stays in flight unsent, expires and is retried, and
        // after max_delivery_attempts it is dead-lettered like any message that keeps
        // failing. Only records truly gone (retention) are skipped as done.
        missing.retain(|(_, id)| {
            let gone = self
                .topic
                .partition(id.partition.0)
                .map_or(true, |p| is_gone(p.reader(), id.offset.0));
            if !gone {
                tracing::error!(topic = %self.topic_name, group = %self.name, partition = %id.partition, offset = %id.offset, "a polled record cannot be read from the log (damaged batch); it stays unacked and is retried");
            }
            gone
        });
        let mut inner = self.lock();
        for (member, ack_id) in missing {
            skip_missing(
                &mut inner.state,
                member,
                &ack_id,
                (&self.topic_name, &self.name),
            );
        }
        let mut sent = 0;
        for (member, responses) in built {
            if let Some(slot) = inner.members.get_mut(&member) {
                sent += responses
                    .iter()
                    .map(|r| match r {
                        Outgoing::Deliveries(d) => d.messages() as u64,
                        _ => 0,
                    })
                    .sum::<u64>();
                slot.outbox.extend(responses);
            }
        }
        self.counters.deliveries.fetch_add(sent, Ordering::Relaxed);
        flush_all(&mut inner);
        true
    }

    /// The driver loop; ends when the group stops.
    async fn run(self: Arc<Self>, groups: Arc<GroupRegistry>) {
        let registry = groups.registry.clone();
        let mut stop = self.stop.subscribe();
        let mut watches: Vec<Option<watch::Receiver<u64>>> = self
            .topic
            .partitions
            .iter()
            .map(|p| Some(p.watch_high_watermark()))
            .collect();
        let mut retry: Vec<DeadLetter> = Vec::new();
        let mut retry_at = tokio::time::Instant::now();
        let mut next_persist = tokio::time::Instant::now() + GROUP_PERSIST_INTERVAL;
        // The periodic snapshot write (an fsync, which takes tens of ms on some disks and
        // more under load) runs beside the loop, not in it: awaiting it stalled every
        // delivery of the group once a second. One write at a time.
        let mut persisting: Option<tokio::task::JoinHandle<Result<()>>> = None;
        loop {
            if *stop.borrow() {
                break;
            }
            #[cfg(test)]
            if self.panic_next.swap(false, Ordering::Relaxed) {
                panic!("a panic injected by a test");
            }
            self.fill(&mut watches);
            let mut dead = self.tick();
            if !retry.is_empty() && tokio::time::Instant::now() >= retry_at {
                dead.append(&mut retry);
            }
            for d in dead {
                if let Err(error) = self.dead_letter(&registry, &d).await {
                    tracing::warn!(topic = %self.topic_name, group = %self.name, %error, "appending a dead letter failed; will retry");
                    retry.push(d);
                    retry_at = tokio::time::Instant::now() + DEAD_LETTER_RETRY;
                }
            }
            let delivered = self.deliver();
            if tokio::time::Instant::now() >= next_persist
                && persisting.as_ref().is_none_or(|p| p.is_finished())
            {
                if let Some(done) = persisting.take()
                    && let Ok(Err(error)) = done.await
                {
                    tracing::error!(topic = %self.topic_name, group = %self.name, %error, "persisting group state failed");
                }
                next_persist = tokio::time::Instant::now() + GROUP_PERSIST_INTERVAL;
                let group = self.clone();
                persisting = Some(tokio::task::spawn_blocking(move || group.persist()));
            }
            if delivered {
                // A member may take more at once.
                tokio::task::yield_now().await;
                continue;
            }
            let now_ms = now();
            let wakeup = self.lock().state.next_wakeup(now_ms);
            let mut until = next_persist;
            if let Some(at) = wakeup {
                let delay = Duration::from_millis(at.saturating_sub(now_ms));
                until = until.min(tokio::time::Instant::now() + delay);
            }
            if !retry.is_empty() {
                until = until.min(retry_at);
            }
            let dead_watch = tokio::select! {
                _ = self.wake.notified() => None,
                _ = tokio::time::sleep_until(until) => None,
                d = any_changed(&mut watches) => d,
                _ = stop.changed() => None,
            };
            if let Some(index) = dead_watch {
                watches[index] = None;
                // The writer is gone: the topic was deleted (or the broker is closing,
                // and then the topic is still registered).
                let live = registry
                    .get(&self.topic_name)
                    .is_ok_and(|t| Arc::ptr_eq(&t, &self.topic));
                if !live {
                    groups.remove_if_same(&self).await;
                    break;
                }
            }
        }
        // A later persist (at shutdown) must not race this one.
        if let Some(done) = persisting {
            let _ = done.await;
        }
    }
}

/// Runs a group's driver and restarts it when it panics: the panic is logged at ERROR
/// with the group's names (the panic hook has logged where it happened), counted
/// (`herald_group_task_failures_total`), and the group is restored from its last
/// persisted state after a backoff (see [`RESTART_BACKOFF_MIN`]), so delivery resumes
/// instead of stalling silently. Ends when the driver ends (the group stopped).
async fn supervise(group: Arc<Group>, groups: Arc<GroupRegistry>) {
    let mut backoff = RESTART_BACKOFF_MIN;
    let mut stop = group.stop.subscribe();
    loop {
        let started = tokio::time::Instant::now();
        let outcome = tokio::spawn(group.clone().run(groups.clone())).await;
        let panic = match outcome {
            Ok(()) => return,
            // Cancelled: the runtime is shutting down.
            Err(error) if !error.is_panic() => return,
            Err(error) => panic_message(error.into_panic()),
        };
        groups.task_failures.fetch_add(1, Ordering::Relaxed);
        if started.elapsed() >= RESTART_BACKOFF_RESET {
            backoff = RESTART_BACKOFF_MIN;
        }
        tracing::error!(topic = %group.topic_name, group = %group.name, %panic, restart_in_ms = backoff.as_millis() as u64, "the group's task panicked; restarting the group from its last persisted state");
        if *stop.borrow() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
        let reset = group.restore_persisted();
        groups.offsets_reset.fetch_add(reset, Ordering::Relaxed);
    }
}

/// The message of a panic payload (a `&str` or `String`, as `panic!` makes them).
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => payload
            .downcast_ref::<&str>()
            .map_or_else(|| "(no message)".to_owned(), |m| (*m).to_owned()),
    }
}

/// Brings every partition position of `snapshot` past its log's end down to it (see
/// [`crate::group::PartitionSnapshot::clamp_to_log_end`]), with a WARN per partition;
/// returns how many partitions changed. `names` (topic, group) are for logs.
fn clamp_to_logs(snapshot: &mut GroupSnapshot, topic: &Topic, names: (&str, &str)) -> u64 {
    let mut reset = 0;
    for (index, (p, partition)) in snapshot
        .partitions
        .iter_mut()
        .zip(&topic.partitions)
        .enumerate()
    {
        let end = partition.reader().high_watermark();
        if let Some(before) = p.clamp_to_log_end(end) {
            reset += 1;
            tracing::warn!(topic = %names.0, group = %names.1, partition = index, committed = %before, log_end = end, "the group's position was past the end of the log (records lost after an unclean stop?); later records at those offsets will be delivered");
        }
    }
    reset
}

/// Waits until one watch changes; returns the index of a watch whose sender is gone.
async fn any_changed(watches: &mut [Option<watch::Receiver<u64>>]) -> Option<usize> {
    let futures: Vec<_> = watches
        .iter_mut()
        .enumerate()
        .filter_map(|(i, w)| {
            w.as_mut()
                .map(|w| Box::pin(async move { (i, w.changed().await.is_ok()) }))
        })
        .collect();
    if futures.is_empty() {
        std::future::pending::<()>().await;
    }
    let ((index, ok), _, _) = futures::future::select_all(futures).await;
    (!ok).then_some(index)
}

/// Two consecutive changes of one member as one.
fn merge_changes(old: AssignmentChange, new: AssignmentChange) -> AssignmentChange {
    let before: BTreeSet<PartitionId> = old
        .partitions
        .iter()
        .chain(&old.revoked)
        .copied()
        .filter(|p| !old.added.contains(p))
        .collect();
    let after: BTreeSet<PartitionId> = new.partitions.iter().copied().collect();
    AssignmentChange {
        member: new.member,
        added: after.difference(&before).copied().collect(),
        revoked: before.difference(&after).copied().collect(),
        partitions: new.partitions,
    }
}

/// Shapes one member's deliveries (partition then offset order) into responses of at most
/// [`RESPONSE_MAX_BYTES`]: runs of consecutive deliveries from one stored batch go as that
/// batch to a member that joined with batched deliveries, everything else as singles.
struct Shaper {
    batched: bool,
    /// The run being gathered: deliveries that continue each other within one batch.
    run: Vec<(Delivery, RecordRef)>,
    current: OutDeliveries,
    current_bytes: usize,
    /// Deliveries whose record would not decode (cannot happen for bytes from the log):
    /// dropped like records gone from the log.
    undecodable: Vec<AckId>,
}

impl Shaper {
    fn new(batched: bool) -> Shaper {
        Shaper {
            batched,
            run: Vec::new(),
            current: OutDeliveries::default(),
            current_bytes: 0,
            undecodable: Vec::new(),
        }
    }

    /// Takes the next delivery and its record.
    fn push(&mut self, d: Delivery, record: RecordRef, responses: &mut Vec<Outgoing>) {
        if !self.batched {
            self.single(d, record, responses);
            return;
        }
        if let Some((last, last_record)) = self.run.last() {
            let continues = d.partition == last.partition
                && d.offset.0 == last.offset.0 + 1
                && d.ack_id.delivery == last.ack_id.delivery + 1
                && d.attempt == last.attempt
                && d.deadline_ms == last.deadline_ms
                && record.batch.as_ptr() == last_record.batch.as_ptr()
                && record.encoded_at as usize == last_record.encoded_end();
            if !continues {
                self.end_run(responses);
            }
        }
        self.run.push((d, record));
    }

    /// Sends the gathered run as the slice of its batch that holds its records.
    fn end_run(&mut self, responses: &mut Vec<Outgoing>) {
        let (Some((first, first_record)), Some((_, last_record))) =
            (self.run.first(), self.run.last())
        else {
            return;
        };
        let header = batch::BatchHeader::read(&first_record.batch);
        let end = last_record.encoded_end();
        let (Some(header), true) = (header, end <= first_record.batch.len()) else {
            // Not a stored batch (cannot happen: records come from the log): singles.
            let run = std::mem::take(&mut self.run);
            for (d, record) in run {
                self.single(d, record, responses);
            }
            return;
        };
        let records = first_record
            .batch
            .slice(first_record.encoded_at as usize..end);
        let run = OutRun {
            partition: first.partition,
            first_offset: first.offset.0,
            count: self.run.len() as u32,
            first_delivery: first.ack_id.delivery,
            attempt: first.attempt,
            deadline_ms: first.deadline_ms,
            base_offset: header.base_offset,
            first_timestamp: header.first_timestamp,
            records,
        };
        self.run.clear();
        self.room_for(run.records.len(), responses);
        self.current.runs.push(run);
    }

    fn single(&mut self, d: Delivery, record: RecordRef, responses: &mut Vec<Outgoing>) {
        let Some(decoded) = record.decode() else {
            self.undecodable.push(d.ack_id);
            return;
        };
        self.room_for(record.encoded_len as usize, responses);
        self.current.singles.push(OutDelivery {
            delivery: d,
            record: decoded,
        });
    }

    /// Starts a new response if `size` more bytes would overfill the current one.
    fn room_for(&mut self, size: usize, responses: &mut Vec<Outgoing>) {
        if !self.current.is_empty() && self.current_bytes + size > RESPONSE_MAX_BYTES {
            responses.push(Outgoing::Deliveries(std::mem::take(&mut self.current)));
            self.current_bytes = 0;
        }
        self.current_bytes += size;
    }

    /// Sends what is gathered; returns the deliveries whose records would not decode.
    fn finish(mut self, responses: &mut Vec<Outgoing>) -> Vec<AckId> {
        self.end_run(responses);
        if !self.current.is_empty() {
            responses.push(Outgoing::Deliveries(self.current));
        }
        self.undecodable
    }
}

/// Queues each member's pending assignment change and outbox on its stream while it has
/// room (keeping one slot for the stream's final error).
fn flush_all(inner: &mut Inner) {
    for slot in inner.members.values_mut() {
        if slot.tx.is_closed() {
            slot.outbox.clear();
            slot.assignment = None;
            continue;
        }
        if let Some(change) = slot.assignment.take() {
            if slot.tx.capacity() > 1 {
                let _ = slot.tx.try_send(Ok(Outgoing::Assignment(change)));
            } else {
                slot.assignment = Some(change);
                continue;
            }
        }
        while slot.tx.capacity() > 1 {
            let Some(response) = slot.outbox.pop_front() else {
                break;
            };
            let _ = slot.tx.try_send(Ok(response));
        }
    }
}

/// One record as a validated storage batch.
fn build_batch(
    registry: &Registry,
    timestamp: i64,
    key: Option<&[u8]>,
    value: &[u8],
    headers: &[(&str, &[u8])],
) -> Result<ValidatedBatch> {
    let mut builder = BatchBuilder::with_capacity(batch::HEADER_BYTES + value.len() + 256);
    builder.push(&Record {
        timestamp,
        key,
        value,
        headers,
    });
    let max = registry.config().max_batch_bytes;
    ValidatedBatch::new(Bytes::from(builder.finish()), max)
        .map_err(|e| BrokerError::InvalidArgument(format!("cannot build the batch: {e}")))
}

/// Why a group directory did not load.
enum LoadFailure {
    /// Its files are damaged or missing, or say it belongs to another topic: the group is
    /// refused and its files kept.
    Damaged(String),
}

/// Every group of the broker.
pub struct GroupRegistry {
    registry: Arc<Registry>,
    dir: PathBuf,
    groups: DashMap<(String, String), Arc<Group>>,
    /// Groups whose files did not load, with why (naming the file): refused, not removed.
    damaged: DashMap<(String, String), String>,
    /// Creates and deletes run one at a time.
    admin: tokio::sync::Mutex<()>,
    /// Member ids: unique across the broker's life and, seeded with the clock, across
    /// restarts.
    next_member: AtomicU64,
    /// Group tasks that panicked (and were restarted), since start.
    task_failures: AtomicU64,
    /// Partition positions found past their log's end at load and brought down to it.
    offsets_reset: AtomicU64,
}

impl GroupRegistry {
    /// Loads every group under `<data_dir>/groups/`. Blocking. Groups of topics that were
    /// deleted are removed, and so are interrupted creates and deletes (in the staging
    /// directory). A group that cannot be loaded is never removed: it is refused (its
    /// joins, describes and admin calls answer FAILED_PRECONDITION naming the file) and
    /// its files are kept for the operator. Call [`GroupRegistry::start`] from the runtime
    /// next.
    pub fn open(registry: Arc<Registry>) -> Result<GroupRegistry> {
        let dir = registry.config().data_dir.join(GROUPS_DIR);
        let staging = dir.join(STAGING_DIR);
        if staging.exists() {
            tracing::info!(path = %staging.display(), "removing interrupted group creates and deletes");
            std::fs::remove_dir_all(&staging)
                .map_err(|e| BrokerError::io(format!("removing {}", staging.display()), e))?;
        }
        std::fs::create_dir_all(&staging)
            .map_err(|e| BrokerError::io(format!("creating {}", staging.display()), e))?;
        let groups = GroupRegistry {
            dir: dir.clone(),
            groups: DashMap::new(),
            damaged: DashMap::new(),
            admin: tokio::sync::Mutex::new(()),
            next_member: AtomicU64::new(now().saturating_mul(1000)),
            task_failures: AtomicU64::new(0),
            offsets_reset: AtomicU64::new(0),
            registry,
        };
        let topics = std::fs::read_dir(&dir)
            .map_err(|e| BrokerError::io(format!("listing {}", dir.display()), e))?;
        for topic_entry in topics.flatten() {
            let topic_name = topic_entry.file_name().to_string_lossy().into_owned();
            if topic_name == STAGING_DIR {
                continue;
            }
            let topic = match groups.registry.get(&topic_name) {
                Ok(topic) => topic,
                Err(error) => {
                    let topic_dir = groups
                        .registry
                        .config()
                        .data_dir
                        .join(TOPICS_DIR)
                        .join(&topic_name);
                    if !matches!(error, BrokerError::NotFound(_)) || topic_dir.exists() {
                        // The topic is there but did not load (damaged): its groups wait
                        // with it, untouched, for its repair.
                        tracing::warn!(topic = %topic_name, %error, "keeping the groups of a topic that did not load");
                        continue;
                    }
                    tracing::info!(topic = %topic_name, "removing the groups of a deleted topic");
                    let _ = std::fs::remove_dir_all(topic_entry.path());
                    continue;
                }
            };
            let Ok(entries) = std::fs::read_dir(topic_entry.path()) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let group_name = entry.file_name().to_string_lossy().into_owned();
                match groups.load(&topic, &path) {
                    Ok(group) => {
                        tracing::info!(topic = %topic_name, group = %group.name, "opened group");
                        groups
                            .groups
                            .insert((topic_name.clone(), group.name.clone()), group);
                    }
                    Err(LoadFailure::Damaged(error)) => {
                        tracing::error!(topic = %topic_name, group = %group_name, %error, "refusing to load a damaged group; its files are kept");
                        groups
                            .damaged
                            .insert((topic_name.clone(), group_name), error);
                    }
                }
            }
        }
        Ok(groups)
    }

    /// Loads the group in `dir`.
    fn load(&self, topic: &Arc<Topic>, dir: &Path) -> Result<Arc<Group>, LoadFailure> {
        let meta_path = dir.join(META_FILE);
        let state_path = dir.join(STATE_FILE);
        let damaged =
            |path: &Path, why: String| LoadFailure::Damaged(format!("{}: {why}", path.display()));
        let text = std::fs::read_to_string(&meta_path)
            .map_err(|e| damaged(&meta_path, format!("cannot read it: {e}")))?;
        let meta: GroupMeta = toml::from_str(&text)
            .map_err(|e| damaged(&meta_path, format!("cannot parse it: {e}")))?;
        // A group left over from an earlier topic of the same name and a damaged
        // `topic_created_ms` (or a damaged `topic.toml`) look alike: neither is loaded, and
        // neither is deleted on a guess. An operator deletes the group (DeleteGroup) to
        // start it fresh, or repairs the file.
        if meta.topic_created_ms != 0 && meta.topic_created_ms != topic.meta.created_ms {
            return Err(damaged(
                &meta_path,
                format!(
                    "it names a topic created at {} ms, but topic {} was created at {} ms: the file is damaged, or the group is left from an earlier topic of the same name (delete the group to start it fresh)",
                    meta.topic_created_ms,
                    crate::topic::shown(&topic.meta.name),
                    topic.meta.created_ms
                ),
            ));
        }
        let settings = GroupSettings {
            ack_deadline_ms: meta.ack_deadline_ms,
            retry_backoff_min_ms: meta.retry_backoff_min_ms,
            retry_backoff_max_ms: meta.retry_backoff_max_ms,
            max_delivery_attempts: meta.max_delivery_attempts,
            ordering: ordering_from_name(&meta.ordering),
        };
        let bytes = std::fs::read(&state_path)
            .map_err(|e| damaged(&state_path, format!("cannot read it: {e}")))?;
        let mut snapshot =
            GroupSnapshot::decode(&bytes).map_err(|e| damaged(&state_path, e.to_string()))?;
        if snapshot.partitions.len() != topic.partitions.len() {
            return Err(damaged(
                &state_path,
                format!(
                    "the group covers {} partitions, the topic has {}",
                    snapshot.partitions.len(),
                    topic.partitions.len()
                ),
            ));
        }
        let reset = clamp_to_logs(&mut snapshot, topic, (&meta.topic, &meta.group));
        self.offsets_reset.fetch_add(reset, Ordering::Relaxed);
        let state = GroupState::restore(settings.clone(), GroupLimits::default(), &snapshot)
            .map_err(|e| damaged(&meta_path, e.to_string()))?;
        let config = GroupConfig {
            settings,
            dead_letter_topic: meta.dead_letter_topic,
        };
        Ok(self.make_group(
            topic.clone(),
            meta.group,
            meta.created_ms,
            state,
            config,
            (meta.redrive_topic, meta.redrive_cursor),
            bytes,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn make_group(
        &self,
        topic: Arc<Topic>,
        name: String,
        created_ms: i64,
        state: GroupState,
        config: GroupConfig,
        redrive: (Option<String>, Vec<u64>),
        persisted: Vec<u8>,
    ) -> Arc<Group> {
        let (stop, _) = watch::channel(false);
        Arc::new(Group {
            dir: self.dir.join(topic.name()).join(&name),
            topic_name: topic.name().to_owned(),
            name,
            topic,
            created_ms,
            inner: Mutex::new(Inner {
                state,
                config,
                members: HashMap::new(),
                redrive_topic: redrive.0,
                redrive_cursor: redrive.1,
            }),
            wake: Notify::new(),
            stop,
            feed: Mutex::new(Feed::default()),
            persisted: Mutex::new(persisted),
            redrive: tokio::sync::Mutex::new(()),
            counters: GroupCounters::default(),
            #[cfg(test)]
            panic_next: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Starts the driver of every loaded group. Call from the runtime.
    pub fn start(self: &Arc<Self>) {
        for group in self.groups.iter() {
            tokio::spawn(supervise(group.clone(), self.clone()));
        }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Group tasks that panicked since start (each was logged and restarted).
    pub fn task_failures(&self) -> u64 {
        self.task_failures.load(Ordering::Relaxed)
    }

    /// Partition positions found past their log's end at load (or at a restart after a
    /// panic) and brought down to it, since start.
    pub fn offsets_reset(&self) -> u64 {
        self.offsets_reset.load(Ordering::Relaxed)
    }

    /// A fresh member id.
    pub fn member_id(&self) -> MemberId {
        MemberId(self.next_member.fetch_add(1, Ordering::Relaxed))
    }

    /// The group, or NOT_FOUND. A group whose topic was deleted (or deleted and created
    /// again) is removed here.
    pub async fn get(&self, topic: &str, group: &str) -> Result<Arc<Group>> {
        let found = self
            .groups
            .get(&(topic.to_owned(), group.to_owned()))
            .map(|g| g.clone());
        let Some(found) = found else {
            if let Some(error) = self.damaged_error(topic, group) {
                return Err(error);
            }
            return Err(BrokerError::NotFound(format!(
                "group {group:?} of topic {topic:?} does not exist"
            )));
        };
        let live = self
            .registry
            .get(topic)
            .is_ok_and(|t| Arc::ptr_eq(&t, &found.topic));
        if !live {
            let _ = self.delete(topic, group).await;
            return Err(BrokerError::NotFound(format!(
                "group {group:?} of topic {topic:?} does not exist (its topic was deleted)"
            )));
        }
        Ok(found)
    }

    /// FAILED_PRECONDITION naming the file, if the group's files did not load at start
    /// (and its topic is still there).
    fn damaged_error(&self, topic: &str, group: &str) -> Option<BrokerError> {
        let why = self
            .damaged
            .get(&(topic.to_owned(), group.to_owned()))?
            .clone();
        self.registry.get(topic).ok()?;
        Some(BrokerError::FailedPrecondition(format!(
            "group {group:?} of topic {topic:?} is not loaded because its files are damaged \
             ({why}); they are kept: restore them, or delete the group to start it again \
             (see README, \"Consumer groups under failure\")"
        )))
    }

    /// Whether the group's files did not load at start (see [`GroupRegistry::open`]).
    pub fn is_damaged(&self, topic: &str, group: &str) -> bool {
        self.damaged
            .contains_key(&(topic.to_owned(), group.to_owned()))
    }

    /// Creates a group starting at `start_offsets` (one per partition). ALREADY_EXISTS if
    /// it exists, unless `existing_ok`, which returns the existing group.
    pub async fn create(
        self: &Arc<Self>,
        topic: Arc<Topic>,
        name: &str,
        config: GroupConfig,
        start_offsets: Vec<u64>,
        existing_ok: bool,
    ) -> Result<Arc<Group>> {
        validate_name("group", name)?;
        let _admin = self.admin.lock().await;
        let key = (topic.name().to_owned(), name.to_owned());
        if let Some(error) = self.damaged_error(&key.0, &key.1) {
            // Never over the damaged group's files.
            return Err(error);
        }
        if let Some(existing) = self.groups.get(&key).map(|g| g.clone()) {
            if Arc::ptr_eq(&existing.topic, &topic) {
                if existing_ok {
                    return Ok(existing);
                }
                return Err(BrokerError::AlreadyExists(format!(
                    "group {name:?} of topic {:?} already exists",
                    topic.name()
                )));
            }
            // A group of a deleted topic with the same name.
            self.remove_locked(&key).await;
        }
        if self.groups.len() >= MAX_GROUPS {
            return Err(BrokerError::ResourceExhausted(format!(
                "the broker already holds its maximum of {MAX_GROUPS} groups"
            )));
        }
        let offsets: Vec<Offset> = start_offsets.into_iter().map(Offset).collect();
        let state = GroupState::new(config.settings.clone(), GroupLimits::default(), &offsets)
            .map_err(group_error)?;
        let group = self.make_group(
            topic.clone(),
            name.to_owned(),
            now_ms(),
            state,
            config,
            (None, Vec::new()),
            Vec::new(),
        );
        let writer = group.clone();
        let groups_dir = self.dir.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            // Written whole in the staging directory, then renamed into place: a crash
            // leaves either no group or a complete one (and a staging leftover that the
            // next start removes), never a half-written group to mistake for damage.
            let staging = groups_dir.join(STAGING_DIR).join(format!(
                "create-{}-{}",
                writer.created_ms,
                std::process::id()
            ));
            let topic_dir = groups_dir.join(&writer.topic_name);
            for d in [&staging, &topic_dir] {
                std::fs::create_dir_all(d)
                    .map_err(|e| BrokerError::io(format!("creating {}", d.display()), e))?;
            }
            writer.write_files(&staging)?;
            std::fs::rename(&staging, &writer.dir).map_err(|e| {
                BrokerError::io(format!("renaming {} into place", staging.display()), e)
            })?;
            crate::storage::sync_dir(&topic_dir)?;
            crate::storage::sync_dir(&groups_dir.join(STAGING_DIR))?;
            crate::storage::sync_dir(&groups_dir)?;
            Ok(())
        })
        .await
        .map_err(|e| BrokerError::io("creating a group", std::io::Error::other(e)))??;
        self.groups.insert(key, group.clone());
        tokio::spawn(supervise(group.clone(), self.clone()));
        tracing::info!(topic = %topic.name(), group = %name, "created group");
        Ok(group)
    }

    /// Deletes a group: ends its members' streams with NOT_FOUND and removes its files.
    pub async fn delete(&self, topic: &str, group: &str) -> Result<()> {
        let _admin = self.admin.lock().await;
        let key = (topic.to_owned(), group.to_owned());
        if self.damaged.remove(&key).is_some() {
            // The operator's way out for a damaged group: its files go as a deleted
            // group's do.
            let dir = self.dir.join(topic).join(group);
            let staging = self.dir.join(STAGING_DIR);
            tokio::task::spawn_blocking(move || remove_group_dir(&dir, &staging))
                .await
                .map_err(|e| BrokerError::io("deleting a group", std::io::Error::other(e)))??;
            tracing::info!(topic = %key.0, group = %key.1, "deleted a damaged group");
            return Ok(());
        }
        if !self.groups.contains_key(&key) {
            return Err(BrokerError::NotFound(format!(
                "group {group:?} of topic {topic:?} does not exist"
            )));
        }
        self.remove_locked(&key).await;
        Ok(())
    }

    /// Removes `group` if it is still the registered group of its name (its topic was
    /// deleted under it).
    async fn remove_if_same(&self, group: &Arc<Group>) {
        let _admin = self.admin.lock().await;
        let key = (group.topic_name.clone(), group.name.clone());
        let same = self
            .groups
            .get(&key)
            .is_some_and(|g| Arc::ptr_eq(&g, group));
        if same {
            self.remove_locked(&key).await;
        }
    }

    async fn remove_locked(&self, key: &(String, String)) {
        let Some((_, group)) = self.groups.remove(key) else {
            return;
        };
        group.stop.send_replace(true);
        {
            let mut inner = group.lock();
            for (_, slot) in inner.members.drain() {
                let _ = slot.tx.try_send(Err(BrokerError::NotFound(format!(
                    "group {:?} of topic {:?} was deleted",
                    key.1, key.0
                ))));
            }
        }
        group.wake();
        let dir = group.dir.clone();
        let staging = self.dir.join(STAGING_DIR);
        let removed = tokio::task::spawn_blocking(move || remove_group_dir(&dir, &staging)).await;
        if let Ok(Err(error)) = removed {
            tracing::error!(topic = %key.0, group = %key.1, %error, "removing a deleted group's files failed");
        }
        tracing::info!(topic = %key.0, group = %key.1, "deleted group");
    }

    /// Every group (of `topic` if given), sorted by topic then name.
    pub fn list(&self, topic: Option<&str>) -> Vec<Arc<Group>> {
        let mut groups: Vec<Arc<Group>> = self
            .groups
            .iter()
            .filter(|g| topic.is_none_or(|t| g.key().0 == t))
            .filter(|g| {
                self.registry
                    .get(&g.topic_name)
                    .is_ok_and(|t| Arc::ptr_eq(&t, &g.topic))
            })
            .map(|g| g.clone())
            .collect();
        groups.sort_by(|a, b| (&a.topic_name, &a.name).cmp(&(&b.topic_name, &b.name)));
        groups
    }

    /// Stops every driver and writes every group's state. Blocking: call after the
    /// server stopped serving (every stream closed) and before the partitions close.
    pub fn close(&self) {
        for group in self.groups.iter() {
            group.stop.send_replace(true);
            group.wake();
            if let Err(error) = group.persist() {
                tracing::error!(topic = %group.topic_name, group = %group.name, %error, "persisting group state at shutdown failed");
            }
        }
    }

    /// Republishes up to `max` (0 = all) of the group's dead letters to their source
    /// partitions, without the `herald-dlq-*` headers. Progress is kept per dead-letter
    /// partition, so a dead letter is redriven once.
    pub async fn redrive(&self, group: &Group, max: u64) -> Result<u64> {
        let _one = group.redrive.lock().await;
        let dlq = group.config().dead_letter_topic.ok_or_else(|| {
            BrokerError::InvalidArgument("the group has no dead-letter topic".into())
        })?;
        let dlq_topic = self.registry.get(&dlq)?;
        let mut cursor = {
            let inner = group.lock();
            if inner.redrive_topic.as_deref() == Some(dlq.as_str())
                && inner.redrive_cursor.len() == dlq_topic.partitions.len()
            {
                inner.redrive_cursor.clone()
            } else {
                vec![0; dlq_topic.partitions.len()]
            }
        };
        let max = if max == 0 { u64::MAX } else { max };
        let mut count = 0u64;
        'partitions: for (index, partition) in dlq_topic.partitions.iter().enumerate() {
            let reader = partition.reader();
            let end = reader.high_watermark();
            let mut at = cursor[index].max(reader.start_offset());
            while at < end {
                let chunk = match reader.read(at, FETCH_CHUNK_BYTES) {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => break,
                    Err(e) => return Err(e.into()),
                };
                let mut found = Vec::new();
                let mut stopped_at = None;
                'scan: for view in batch::batches(&chunk.bytes) {
                    let Ok(view) = view else { break };
                    for record in view.records() {
                        let Ok(r) = record else { break 'scan };
                        if r.offset < at || r.offset >= end {
                            continue;
                        }
                        let mut source_topic = None;
                        let mut source_group = None;
                        let mut source_partition = None;
                        for (k, v) in r.headers() {
                            match k {
                                DLQ_TOPIC => source_topic = Some(v),
                                DLQ_GROUP => source_group = Some(v),
                                DLQ_PARTITION => {
                                    source_partition = std::str::from_utf8(v)
                                        .ok()
                                        .and_then(|s| s.parse::<u32>().ok())
                                }
                                _ => {}
                            }
                        }
                        if source_topic != Some(group.topic_name.as_bytes())
                            || source_group != Some(group.name.as_bytes())
                        {
                            continue;
                        }
                        if count + found.len() as u64 >= max {
                            stopped_at = Some(r.offset);
                            break 'scan;
                        }
                        found.push((
                            source_partition,
                            StoredRecord {
                                offset: r.offset,
                                timestamp: r.timestamp,
                                key: r.key.map(|k| chunk.bytes.slice_ref(k)),
                                value: chunk.bytes.slice_ref(r.value),
                                headers: r
                                    .headers()
                                    .filter(|(k, _)| !k.starts_with(DLQ_PREFIX))
                                    .map(|(k, v)| (k.to_owned(), chunk.bytes.slice_ref(v)))
                                    .collect(),
                            },
                        ));
                    }
                }
                for (source_partition, record) in found {
                    let headers: Vec<(&str, &[u8])> = record
                        .headers
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_ref()))
                        .collect();
                    let batch = build_batch(
                        &self.registry,
                        record.timestamp,
                        record.key.as_deref(),
                        &record.value,
                        &headers,
                    )?;
                    let target = match source_partition {
                        Some(p) if (p as usize) < group.topic.partitions.len() => {
                            group.topic.partition(p)?
                        }
                        _ => group.topic.pick_partition(None, record.key.as_deref())?,
                    };
                    target.append(batch).await?;
                    count += 1;
                    cursor[index] = record.offset + 1;
                }
                if let Some(stopped_at) = stopped_at {
                    cursor[index] = cursor[index].max(stopped_at);
                    break 'partitions;
                }
                at = chunk.next_offset.max(at + 1).min(end);
                cursor[index] = cursor[index].max(at);
                if count >= max {
                    break 'partitions;
                }
            }
        }
        {
            let mut inner = group.lock();
            inner.redrive_topic = Some(dlq);
            inner.redrive_cursor = cursor;
        }
        let writer = group_arc(self, group);
        if let Some(writer) = writer {
            tokio::task::spawn_blocking(move || writer.write_meta())
                .await
                .map_err(|e| BrokerError::io("writing group.toml", std::io::Error::other(e)))??;
        }
        Ok(count)
    }
}

/// Removes a group's directory: first moved into the staging directory (one rename), so
/// a crash midway leaves a leftover the next start removes, not a group without its
/// `group.toml` to mistake for damage. Blocking.
fn remove_group_dir(dir: &Path, staging: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let aside = staging.join(format!(
        "delete-{}-{}",
        now(),
        NEXT_ASIDE.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::rename(dir, &aside)
        .map_err(|e| BrokerError::io(format!("moving {} aside", dir.display()), e))?;
    if let Some(parent) = dir.parent() {
        crate::storage::sync_dir(parent)?;
    }
    std::fs::remove_dir_all(&aside)
        .map_err(|e| BrokerError::io(format!("removing {}", aside.display()), e))
}

/// Tells apart the names of directories moved aside in one process.
static NEXT_ASIDE: AtomicU64 = AtomicU64::new(0);

fn group_arc(groups: &GroupRegistry, group: &Group) -> Option<Arc<Group>> {
    groups
        .groups
        .get(&(group.topic_name.clone(), group.name.clone()))
        .map(|g| g.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record at `offset`, alone in its batch.
    fn record(offset: u64) -> RecordRef {
        stored_batch(offset, 1, 10).remove(0)
    }

    /// A delivery of `offset` in partition 0 with sequence number `delivery`.
    fn delivery(offset: u64, delivery: u64) -> Delivery {
        Delivery {
            partition: PartitionId(0),
            offset: Offset(offset),
            attempt: 1,
            deadline_ms: 1000,
            ack_id: AckId {
                partition: PartitionId(0),
                offset: Offset(offset),
                delivery,
            },
            key: None,
            size_bytes: 100,
            timestamp_ms: 0,
        }
    }

    /// A stored batch of `count` records from `base_offset`, `value_bytes` each (the value
    /// starts with the record's offset), decoded as `fill` decodes it.
    fn stored_batch(base_offset: u64, count: u64, value_bytes: usize) -> Vec<RecordRef> {
        let mut builder = BatchBuilder::with_capacity(1024);
        let values: Vec<Vec<u8>> = (0..count)
            .map(|i| {
                let mut v = format!("{}:", base_offset + i).into_bytes();
                v.resize(value_bytes.max(v.len()), b'x');
                v
            })
            .collect();
        for (i, value) in values.iter().enumerate() {
            builder.push(&Record {
                timestamp: 1_000 + i as i64,
                key: Some(b"k"),
                value,
                headers: &[("h", b"1")],
            });
        }
        let mut encoded = builder.finish();
        batch::stamp_base_offset(&mut encoded, base_offset);
        // Something before the batch, as in a chunk read from the log.
        let mut chunk = vec![0u8; 7];
        chunk.extend_from_slice(&encoded);
        let chunk = Bytes::from(chunk);
        let view = batch::BatchView::new(&chunk[7..]).unwrap();
        view.records()
            .map(|r| RecordRef::of(&r.unwrap(), &chunk, 7, encoded.len()))
            .collect()
    }

    fn shape(batched: bool, items: Vec<(Delivery, RecordRef)>) -> Vec<OutDeliveries> {
        let mut responses = Vec::new();
        let mut shaper = Shaper::new(batched);
        for (d, r) in items {
            shaper.push(d, r, &mut responses);
        }
        assert!(shaper.finish(&mut responses).is_empty());
        responses
            .into_iter()
            .map(|r| match r {
                Outgoing::Deliveries(d) => d,
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    /// Decodes a run the way a client does.
    fn decode(run: &OutRun) -> Vec<(u64, i64, Vec<u8>)> {
        batch::Records::resume(
            run.base_offset,
            run.first_timestamp,
            run.first_offset,
            &run.records,
        )
        .unwrap()
        .map(|r| {
            let r = r.unwrap();
            assert_eq!(r.key, Some(&b"k"[..]));
            assert_eq!(r.headers().collect::<Vec<_>>(), [("h", &b"1"[..])]);
            (r.offset, r.timestamp, r.value.to_vec())
        })
        .collect()
    }

    #[test]
    fn consecutive_deliveries_of_one_batch_go_as_one_run_of_its_records() {
        let records = stored_batch(100, 10, 20);
        // Offsets 103..108 of the batch 100..110.
        let items: Vec<_> = records
            .into_iter()
            .skip(3)
            .take(5)
            .map(|r| (delivery(r.offset, 50 + r.offset), r))
            .collect();
        let out = shape(true, items);
        assert_eq!(out.len(), 1);
        assert!(out[0].singles.is_empty());
        assert_eq!(out[0].runs.len(), 1);
        let run = &out[0].runs[0];
        assert_eq!(
            (run.first_offset, run.count, run.first_delivery),
            (103, 5, 153)
        );
        assert_eq!(run.base_offset, 100);
        assert_eq!(out[0].messages(), 5);
        let decoded = decode(run);
        let offsets: Vec<u64> = decoded.iter().map(|d| d.0).collect();
        assert_eq!(offsets, [103, 104, 105, 106, 107]);
        for (offset, timestamp, value) in decoded {
            assert_eq!(timestamp, 1_000 + (offset - 100) as i64);
            assert!(value.starts_with(format!("{offset}:").as_bytes()));
        }
    }

    #[test]
    fn a_run_breaks_at_gaps_in_offsets_or_sequence_numbers_and_at_batch_boundaries() {
        let mut records = stored_batch(0, 5, 10);
        records.extend(stored_batch(5, 5, 10));
        let deliveries = [
            delivery(0, 1),
            delivery(1, 2),
            delivery(2, 7), // another partition's delivery came between
            delivery(4, 8), // offset 3 is not delivered
            delivery(5, 9), // the next batch
            delivery(6, 10),
        ];
        let items: Vec<_> = deliveries
            .into_iter()
            .zip(records.into_iter().filter(|r| r.offset != 3))
            .collect();
        let out = shape(true, items);
        let runs: Vec<(u64, u32, u64)> = out
            .iter()
            .flat_map(|o| o.runs.iter())
            .map(|r| (r.first_offset, r.count, r.first_delivery))
            .collect();
        assert_eq!(runs, [(0, 2, 1), (2, 1, 7), (4, 1, 8), (5, 2, 9)]);
        for run in out.iter().flat_map(|o| o.runs.iter()) {
            assert_eq!(decode(run).len(), run.count as usize);
        }
    }

    #[test]
    fn members_without_batched_deliveries_get_singles_only() {
        let items: Vec<_> = stored_batch(0, 10, 10)
            .into_iter()
            .map(|r| (delivery(r.offset, r.offset), r))
            .collect();
        let out = shape(false, items);
        assert!(out.iter().all(|o| o.runs.is_empty()));
        let singles: Vec<&OutDelivery> = out.iter().flat_map(|o| o.singles.iter()).collect();
        assert_eq!(singles.len(), 10);
        for (i, single) in singles.iter().enumerate() {
            // Decoded from the batch: every field as stored.
            let record = &single.record;
            assert_eq!(record.offset, i as u64);
            assert_eq!(record.timestamp, 1_000 + i as i64);
            assert_eq!(record.key.as_deref(), Some(&b"k"[..]));
            assert!(record.value.starts_with(format!("{i}:").as_bytes()));
            assert_eq!(record.headers, [("h".to_owned(), Bytes::from_static(b"1"))]);
        }
    }

    #[test]
    fn responses_stay_under_the_byte_limit() {
        // 8 batches of 1000 records of ~300 bytes: runs of ~300 KB, three per 1 MiB.
        let items: Vec<_> = (0..8)
            .flat_map(|b| stored_batch(b * 1000, 1000, 290))
            .map(|r| (delivery(r.offset, r.offset), r))
            .collect();
        let out = shape(true, items);
        assert_eq!(out.iter().map(|o| o.runs.len()).sum::<usize>(), 8);
        assert!(out.len() >= 3, "{}", out.len());
        for response in &out {
            let bytes: usize = response.runs.iter().map(|r| r.records.len()).sum();
            assert!(bytes <= RESPONSE_MAX_BYTES, "{bytes}");
        }
    }

    #[test]
    fn ack_ranges_are_checked_before_use() {
        let range = |count, first_offset| AckRange {
            partition: 0,
            first_offset,
            count,
            first_delivery: 0,
        };
        assert!(range(0, 0).check().is_err());
        assert!(range(MAX_ACK_RANGE + 1, 0).check().is_err());
        assert!(range(2, u64::MAX).check().is_err());
        assert!(range(MAX_ACK_RANGE, 0).check().is_ok());
        let ids: Vec<(u64, u64)> = AckRange {
            partition: 3,
            first_offset: 10,
            count: 3,
            first_delivery: 100,
        }
        .ids()
        .map(|id| (id.offset.0, id.delivery))
        .collect();
        assert_eq!(ids, [(10, 100), (11, 101), (12, 102)]);
    }

    #[test]
    fn decoded_records_take_in_any_order_and_free_slots_from_the_front() {
        let mut decoded = DecodedRecords::default();
        for offset in 10..15 {
            decoded.insert(1, record(offset));
        }
        assert_eq!(decoded.slots(), 5);
        // Out of order: the front stays until it is taken.
        assert_eq!(decoded.take(1, 12).map(|r| r.offset), Some(12));
        assert_eq!(decoded.slots(), 5);
        assert!(decoded.take(1, 12).is_none(), "taken once only");
        assert_eq!(decoded.take(1, 10).map(|r| r.offset), Some(10));
        assert_eq!(decoded.slots(), 4);
        assert_eq!(decoded.take(1, 11).map(|r| r.offset), Some(11));
        assert_eq!(decoded.slots(), 2, "12 was taken before, so it goes too");
        assert!(decoded.take(1, 9).is_none());
        assert!(decoded.take(1, 15).is_none());
        assert!(decoded.take(0, 13).is_none(), "another partition");
        assert!(decoded.take(7, 13).is_none(), "a partition never seen");
    }

    /// A log of single-record batches `a`, `b`, `c`: every record ends its batch.
    fn single_record_batches() -> MemLog {
        let mut log = MemLog::new();
        for value in [b"a", b"b", b"c"] {
            log.append(1_000, &[(Some(&value[..]), &value[..])]);
        }
        log
    }

    /// A log whose batch at one offset answers DATA_LOSS, as a checked read of a damaged
    /// batch does.
    struct DamagedAt(MemLog, u64);

    impl LogSource for DamagedAt {
        fn read(
            &self,
            offset: u64,
            max_bytes: usize,
        ) -> Result<Option<crate::storage::ReadChunk>, StorageError> {
            if offset == self.1 {
                return Err(StorageError::DamagedBatch {
                    log: "topic t partition 0".into(),
                    offset,
                    path: "00000000000000000000.log".into(),
                    position: 0,
                    reason: "CRC mismatch".into(),
                });
            }
            self.0.read(offset, max_bytes)
        }

        fn high_watermark(&self) -> u64 {
            self.0.high_watermark()
        }
    }

    #[test]
    fn a_damaged_record_is_not_gone_so_it_is_never_acked_as_skipped() {
        let log = DamagedAt(single_record_batches(), 1);
        assert!(!is_gone(&log, 0), "a readable record");
        assert!(!is_gone(&log, 1), "a damaged record still exists");
        assert!(is_gone(&log, 3), "the end of the log");
        assert!(is_gone(&log, 9), "past the end");
    }

    #[test]
    fn reading_back_the_last_record_of_a_batch_that_others_follow() {
        // A redelivery of `a` (offset 0): the wanted record ends its batch and the chunk
        // read from the log holds the later batches too.
        let log = single_record_batches();
        let values = |offsets: &[u64]| -> Vec<Option<Vec<u8>>> {
            read_records(&log, offsets)
                .into_iter()
                .map(|r| r.map(|r| r.value.to_vec()))
                .collect()
        };
        assert_eq!(values(&[0]), [Some(b"a".to_vec())]);
        assert_eq!(values(&[1]), [Some(b"b".to_vec())]);
        assert_eq!(values(&[0, 2]), [Some(b"a".to_vec()), Some(b"c".to_vec())]);
        assert_eq!(
            values(&[2, 3]),
            [Some(b"c".to_vec()), None],
            "3 is past the end"
        );
        // The same in one batch of several records followed by another batch.
        let mut log = MemLog::new();
        log.append(0, &[(None, b"x0"), (None, b"x1")]);
        log.append(0, &[(None, b"y2")]);
        let found: Vec<u64> = read_refs(&log, &[0, 1])
            .into_iter()
            .map(|r| r.map_or(u64::MAX, |r| r.offset))
            .collect();
        assert_eq!(found, [0, 1]);
    }

    #[test]
    fn filling_resumes_in_the_next_batch_when_the_machine_filled_up_at_a_batch_end() {
        // The machine buffers 2 records; the first batch holds 2, the next 4, all of one
        // size. The first pass stops at the end of batch 1; after acks the next pass
        // resumes from its cursor, which must read batch 2 from its first record (not
        // from batch 1's end position applied to batch 2, which offered offset 4 while
        // the machine wanted 2).
        let mut log = MemLog::new();
        let value = |i: u64| format!("v{i}").into_bytes();
        let key = |i: u64| format!("k{i}").into_bytes();
        let (keys, values): (Vec<_>, Vec<_>) = (0..6).map(|i| (key(i), value(i))).unzip();
        let records: Vec<(Option<&[u8]>, &[u8])> = (0..6)
            .map(|i| (Some(&keys[i][..]), &values[i][..]))
            .collect();
        log.append(0, &records[..2]);
        log.append(0, &records[2..]);
        let limits = GroupLimits {
            max_buffered_per_partition: 2,
            ..GroupLimits::default()
        };
        let state =
            Mutex::new(GroupState::new(GroupSettings::default(), limits, &[Offset(0)]).unwrap());
        let member = MemberId(1);
        state
            .with_machine(|s| s.join(member, MemberOptions::default(), 0))
            .unwrap();
        let mut feed = Feed::default();
        for round in 0..3u64 {
            fill_partition(&mut feed, &state, &log, 0, ("t", "g"));
            let deliveries = state.with_machine(|s| s.poll(member, 0, 100)).unwrap();
            let (responses, missing) =
                shape_deliveries(&mut feed, |_| Some(&log), false, deliveries);
            assert!(missing.is_empty());
            let mut delivered = Vec::new();
            for response in responses {
                let Outgoing::Deliveries(d) = response else {
                    continue;
                };
                for single in d.singles {
                    state
                        .with_machine(|s| s.ack(member, &single.delivery.ack_id))
                        .unwrap();
                    delivered.push((single.record.offset, single.record.value.to_vec()));
                }
            }
            let wanted: Vec<(u64, Vec<u8>)> =
                (round * 2..round * 2 + 2).map(|i| (i, value(i))).collect();
            assert_eq!(delivered, wanted, "round {round}");
        }
    }

    /// Offsets of the deliveries `rx` carries until `count` arrived (10 s at most).
    async fn receive(rx: &mut mpsc::Receiver<MemberItem>, count: usize) -> Vec<u64> {
        let mut offsets = Vec::new();
        while offsets.len() < count {
            let item = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("deliveries within 10 s")
                .expect("stream open");
            match item.expect("no error") {
                Outgoing::Deliveries(d) => {
                    offsets.extend(d.singles.iter().map(|s| s.record.offset));
                    offsets.extend(
                        d.runs
                            .iter()
                            .flat_map(|r| r.first_offset..r.first_offset + u64::from(r.count)),
                    );
                }
                Outgoing::Joined { .. } | Outgoing::Assignment(_) => {}
            }
        }
        offsets
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_task_that_panics_is_counted_and_restarted_from_its_persisted_state() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::Config {
            data_dir: dir.path().to_owned(),
            fsync: crate::config::FsyncSetting::Never,
            segment_bytes: 4 << 20,
            ..crate::config::Config::default()
        };
        let registry = Arc::new(Registry::open(config).unwrap());
        let topic = registry
            .create("t", 1, crate::topic::TopicSettings::default())
            .unwrap();
        let groups = Arc::new(GroupRegistry::open(registry.clone()).unwrap());
        groups.start();
        let config = GroupConfig {
            settings: GroupSettings::default(),
            dead_letter_topic: None,
        };
        let group = groups
            .create(topic.clone(), "g", config, vec![0], false)
            .await
            .unwrap();
        for value in [&b"a"[..], b"b", b"c"] {
            let batch = build_batch(&registry, 1, Some(value), value, &[]).unwrap();
            topic.partition(0).unwrap().append(batch).await.unwrap();
        }
        let (tx, mut rx) = mpsc::channel(MEMBER_QUEUE);
        group
            .join(
                MemberId(1),
                "one".into(),
                MemberOptions::default(),
                false,
                tx,
            )
            .unwrap();
        assert_eq!(receive(&mut rx, 3).await, [0, 1, 2]);

        // A bug panics the task while the member holds all three unacked.
        group.panic_next.store(true, Ordering::Relaxed);
        group.wake();
        let ended = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the member's stream ends within 10 s");
        assert!(
            matches!(ended, Some(Err(BrokerError::Unavailable(_)))),
            "{ended:?}"
        );
        assert_eq!(groups.task_failures(), 1);

        // The group serves again: a member that joins gets what was never acked.
        let (tx, mut rx) = mpsc::channel(MEMBER_QUEUE);
        group
            .join(
                MemberId(2),
                "two".into(),
                MemberOptions::default(),
                false,
                tx,
            )
            .unwrap();
        assert_eq!(receive(&mut rx, 3).await, [0, 1, 2]);
        let (description, _, _) = group.describe();
        assert_eq!(description.members.len(), 1);
        groups.close();
    }

    #[test]
    fn decoded_records_restart_a_window_on_a_gap() {
        let mut decoded = DecodedRecords::default();
        decoded.insert(0, record(1));
        decoded.insert(0, record(2));
        decoded.insert(0, record(5));
        assert_eq!(decoded.slots(), 1);
        assert!(decoded.take(0, 1).is_none());
        assert_eq!(decoded.take(0, 5).map(|r| r.offset), Some(5));
        assert_eq!(decoded.slots(), 0);
        decoded.insert(0, record(6));
        decoded.clear();
        assert_eq!(decoded.slots(), 0);
        assert!(decoded.take(0, 6).is_none());
    }
}
