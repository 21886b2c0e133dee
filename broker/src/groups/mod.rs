//! The consumer-group driver: runs the pure state machine of [`crate::group`] against the
//! partition logs, the clock, the members' streams and the disk.
//!
//! - [`GroupRegistry`] holds one [`Group`] per `(topic, group name)` in a `DashMap`, loads
//!   them on start from `<data_dir>/groups/<topic>/<group>/`, and persists them on close.
//! - A [`Group`] holds its [`GroupState`](crate::group::GroupState) behind a
//!   `std::sync::Mutex` (held only for machine calls, never across I/O or an `.await`),
//!   its settings and dead-letter topic, and the senders of its members' streams. One
//!   tokio task per group (the *driver*) runs the loop: read the log where the machine
//!   `wants`, `offer` the records, `tick` deadlines, hand dead letters to the dead-letter
//!   topic's writer (confirmed when their commit comes back, without waiting), `poll`
//!   deliveries for members whose stream has room, persist the snapshot every
//!   [`GROUP_PERSIST_INTERVAL`], then sleep until the next deadline, a commit to the
//!   topic, a member event or the persist timer.
//!
//! The files:
//! - `driver`: [`Group`] and the loop of its task.
//! - `members`: what members' streams and admin RPCs call on a group.
//! - `read`: reading records from partition logs, filling the machine, the decoded records
//!   kept for delivery.
//! - `delivery`: what a member's stream carries, and shaping deliveries into responses.
//! - `persist`: `group.toml` and `state` writes, and clamping loaded positions to the logs.
//! - `dead_letter`: dead-letter appends, their headers, and redrive.
//! - `supervisor`: restarting a group task that panicked.
//! - `registry`: [`GroupRegistry`], loading, creating and deleting groups on disk.
//! - `source`: the driver's seams ([`LogSource`], [`Clock`]); `sim`: the deterministic
//!   simulation test.
//!
//! What is shared and what the task owns. Behind the group's `Mutex<Inner>` (shared,
//! because members' streams and admin RPCs read and change it): the machine, the
//! settings, the members' slots (their stream, and the responses polled for them but not
//! yet queued, which go with the slot when the member leaves), and the redrive progress.
//! Outside any lock: the running totals (atomics, for metrics) and the wake/stop signals.
//! The last persisted state bytes sit behind their own mutex, held while writing either
//! file, because the task's periodic persist, `update`/`redrive` (group.toml) and the
//! shutdown persist all write. Owned by the task, no lock: the decoded records and fill
//! cursors (`read::Feed`), the high-watermark watches, the dead letters waiting to be
//! handed to a writer, for their commit or for a retry, and the persist timer; a restart
//! after a panic starts them afresh.
//!
//! Like the storage engine, this module knows neither tonic nor the proto types: a
//! member's stream carries [`Outgoing`] messages, which `server::groups` turns into
//! responses.
//!
//! Bounds: a member's stream queue holds [`MEMBER_QUEUE`] responses and the driver polls a
//! member only when its queue has room and its outbox (one poll's worth, at most
//! [`POLL_MAX`] deliveries) is empty; a pending assignment change is merged into one; at
//! most `DEAD_LETTERS_IN_FLIGHT_MAX` dead letters wait for their commit at once; every
//! table of the machine is bounded by `group::limits`.
//!
//! Persistence: `group.toml` (settings) and `state` (the machine's snapshot), each
//! written to a temporary file, fsynced and renamed. A new group is written whole in
//! `groups/~staging/` and renamed into place; a deleted one is moved there first. A group
//! whose files do not load is refused and kept, never removed.
//! `group.toml` carries a checksum line ([`crate::meta_file`]).
//!
//! Failure: each group's task runs under `supervise`, which logs, counts and restarts it
//! from the persisted state if it panics. The state is
//! written every [`GROUP_PERSIST_INTERVAL`] when it changed and on clean shutdown, so a
//! `kill -9` may redeliver the messages acked during the last interval (at-least-once).

use std::time::Duration;

use crate::group::GroupSettings;

mod dead_letter;
mod delivery;
mod driver;
mod members;
mod persist;
mod read;
mod registry;
#[cfg(test)]
mod sim;
mod source;
mod supervisor;
#[cfg(test)]
mod test_support;

pub use dead_letter::{DLQ_ATTEMPTS, DLQ_GROUP, DLQ_OFFSET, DLQ_PARTITION, DLQ_REASON, DLQ_TOPIC};
pub use delivery::{
    AckRange, MAX_ACK_RANGE, MemberItem, MemberTx, NackTarget, OutDeliveries, OutDelivery, OutRun,
    Outgoing, RESPONSE_MAX_BYTES,
};
pub use driver::{Group, GroupCounts, Lease, PendingWithKey};
pub use read::{RecordRef, StoredRecord, read_records};
pub use registry::{GroupRegistry, MAX_GROUPS};
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

/// A group's settings: the machine's, plus the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    pub settings: GroupSettings,
    pub dead_letter_topic: Option<String>,
}

/// `duration` in whole milliseconds, as the group's [`Clock`] counts time.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
