//! Consumer groups as a plain, deterministic state machine: assignment, acks, redelivery,
//! ordering and dead letters, with no I/O, no async and no clock.
//!
//! A [`GroupState`] is one group of one topic. Its driver (the broker's Subscribe
//! handler) feeds it what happens and does what it asks, in the raft-rs manner:
//!
//! - **log → machine**: per partition, `wants(p)` says which offset to read next (or
//!   `None` while the machine is full); the driver reads records from there and
//!   `offer(p, records)`s their metadata (offset, key hash, size, timestamp), learning how
//!   many were taken.
//! - **members**: `join` when a stream opens (returns its initial partitions), `leave`
//!   when it closes, `credit` for flow control.
//! - **deliveries**: `poll(member, now, max)` returns deliveries (partition, offset,
//!   attempt, deadline, ack id); the driver reads those records from the log by offset and
//!   sends them. `ack`, `nack`, `extend` come from the stream; `tick(now)` expires
//!   deadlines. `next_wakeup` says when to tick next.
//! - **actions**: `take_actions` drains dead letters to append (then confirm with
//!   `dead_lettered`) and assignment changes to send to streams.
//! - **admin**: `update_settings`, `seek`, `describe`, `pending`, `snapshot` and
//!   `GroupState::restore`.
//!
//! Code map:
//! - `types` — ids, settings, inputs and outputs.
//! - `state` — [`GroupState`]: members, windows, deadlines, the outbox, and the glue.
//! - `partition` — one partition's tables: buffer, in flight, redelivery queue, dead
//!   letters, done ranges, key index, and the per-mode choice of what may go next.
//! - `assignment` — the balanced, sticky assignment as a pure function.
//! - `ranges` — the done-offset range set.
//! - `queue` — the offset-ordered queue that holds a partition's buffer.
//! - `deadlines` — the ack-deadline index: buckets by millisecond, removal by count, stale
//!   entries dropped when due, when they lead the index, or by compaction.
//! - `snapshot` — the durable part and its versioned, CRC-checked byte format.
//! - `limits` — every bound, and the configurable [`GroupLimits`].
//!
//! **Architecture Invariant:** nothing here imports tokio, tonic, the proto types or
//! `std::fs`, and nothing reads a clock: the same calls give the same results, so the
//! tests drive it with a fake clock and the property test checks it step by step.
//!
//! **Architecture Invariant:** every table is bounded (see `limits`); when a bound is
//! reached the machine stops asking for records rather than growing.
//!
//! Semantics worth knowing (the tests pin each one):
//! - An offset is *done* once acked or its dead letter is confirmed; `committed` is the
//!   lowest offset not done, done offsets above it are kept as ranges.
//! - Key mode delivers a key's message only when no message of that key is in flight or
//!   awaiting a dead-letter confirmation and it is the key's lowest not-done offset; so a
//!   failed message is redelivered before the key's later ones, and other keys flow past.
//!   How far past a blocked key the group can look is bounded by the partition buffer.
//! - Partition mode delivers only the partition's lowest not-done offset, and only when
//!   nothing of the partition is in flight or awaiting a dead-letter confirmation.
//! - A nack's explicit delay replaces the backoff (as the Nack message documents); an
//!   expiry waits the backoff counted from the deadline; a member leaving makes its
//!   messages due at once. Each of these is a failed attempt.
//! - An ack id names one delivery; acks for any other delivery of the message (older
//!   attempts, before a seek, another member) are `Stale` and ignored. A late ack for an
//!   expired delivery is honoured while the message waits for its redelivery.
//! - A partition that changes hands drains first: its old owner gets nothing new from it,
//!   and the new owner gets it once the old owner's in-flight messages are settled.

mod assignment;
mod deadlines;
mod error;
mod ids;
mod limits;
mod partition;
mod queue;
mod ranges;
mod snapshot;
mod state;
mod types;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use error::GroupError;
pub use limits::*;
pub use snapshot::{GroupSnapshot, PartitionSnapshot, SnapshotError};
pub use state::GroupState;
pub use types::{
    AckId, AckOutcome, Action, AssignmentChange, DeadLetter, Delivery, Expired, ExtendOutcome,
    FailureReason, GroupDescription, GroupSettings, Handover, KeyHash, MemberId, MemberInfo,
    MemberOptions, NackOutcome, OfferedRecord, Offset, OrderingMode, Ownership, PartitionId,
    PartitionInfo, PendingFilter, PendingList, PendingMessage, PendingState, SeekTarget,
};
