//! Every bound the group machine keeps, in one place.
//!
//! The hard caps (`MAX_*`) are what no configuration or snapshot may exceed; the
//! `DEFAULT_*` values are what [`GroupLimits::default`] uses. Each table of the machine is
//! bounded by one of them, so a group's memory is bounded whatever its clients or its log do:
//! when a limit is reached the machine stops pulling records from the log (`wants` returns
//! `None`) instead of growing.

use super::error::GroupError;

/// Most partitions a group covers: the most a topic may have.
pub const MAX_PARTITIONS: usize = 4096;

/// Default and hard cap of connected members per group. Each member is one open stream and
/// costs a slot in every rebalance, so a thousand is plenty and keeps a rebalance cheap.
pub const DEFAULT_MAX_MEMBERS: usize = 1024;
/// Hard cap of [`GroupLimits::max_members`].
pub const MAX_MEMBERS: usize = 65_536;

/// Default number of fetched-but-not-yet-delivered messages per partition. In key mode this
/// is also how far past a blocked key the group can look for other keys' messages.
pub const DEFAULT_MAX_BUFFERED_PER_PARTITION: usize = 1024;

/// Default number of messages a partition tracks at once: buffered, in flight, waiting for
/// redelivery and waiting for a dead-letter confirmation. Room for the default window
/// plus a full buffer and as much again waiting. It also bounds the done ranges
/// (see `ranges`), since every gap between two ranges holds a tracked offset.
pub const DEFAULT_MAX_TRACKED_PER_PARTITION: usize = 8192;
/// Hard cap of [`GroupLimits::max_tracked_per_partition`].
pub const MAX_TRACKED_PER_PARTITION: usize = 65_536;

/// Default number of messages a whole group tracks at once (a few MiB of metadata).
pub const DEFAULT_MAX_TRACKED_PER_GROUP: usize = 65_536;
/// Hard cap of [`GroupLimits::max_tracked_per_group`].
pub const MAX_TRACKED_PER_GROUP: usize = 1 << 20;

/// Done ranges and attempt counts a snapshot keeps per partition. Past this the snapshot
/// keeps the lowest ones and drops the rest: a dropped done range is redelivered after a
/// restart and a dropped attempt count restarts at zero, both safe for at-least-once.
/// Without the cap, repeated restarts could grow the range set without bound.
pub const MAX_SNAPSHOT_ENTRIES_PER_PARTITION: usize = MAX_TRACKED_PER_PARTITION;

/// Cap of a member's `max_in_flight_messages` window. Defined in `herald-format`: clients
/// size their ack ranges by it.
pub use herald_format::limits::MAX_MEMBER_IN_FLIGHT_MESSAGES;
/// Default member window when the driver has no other value, in messages: four full
/// responses (`POLL_MAX`), so the broker keeps sending while the acks of the first come
/// back. A window of one response (1,000, as NATS JetStream's `max_ack_pending`) made a
/// single consumer work stop-and-go: 0.63-0.77x the rate of this one (docs/benchmarks.md).
pub const DEFAULT_MEMBER_IN_FLIGHT_MESSAGES: u32 = 4096;
/// Default member window when the driver has no other value, in bytes.
pub const DEFAULT_MEMBER_IN_FLIGHT_BYTES: u64 = 64 * 1024 * 1024;

/// Longest ack deadline a group may set (as Pub/Sub): longer settings are capped.
pub const MAX_ACK_DEADLINE_MS: u64 = 600_000;
/// Longest deadline extension: an `extend` asking for more is capped.
pub const MAX_EXTEND_MS: u64 = 600_000;
/// Longest retry backoff, and longest explicit nack delay.
pub const MAX_RETRY_BACKOFF_MS: u64 = 600_000;

/// Longest nack reason kept, in bytes. It ends up in a dead letter's header; it is cut at a
/// character boundary so a client cannot make every waiting message cost kilobytes.
pub const MAX_REASON_BYTES: usize = 256;

/// Most deliveries one `poll` returns.
pub const MAX_POLL_MESSAGES: usize = 10_000;

/// `pending` entries returned when the filter's limit is 0 (as ListPending).
pub const DEFAULT_PENDING_LIMIT: usize = 100;
/// Most `pending` entries returned at once (as ListPending).
pub const MAX_PENDING_LIMIT: usize = 10_000;

/// The configurable bounds of one group. Tests shrink them to reach the limits quickly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupLimits {
    /// Most connected members; `join` beyond it fails with `TooManyMembers`.
    pub max_members: usize,
    /// Most fetched-but-undelivered messages per partition.
    pub max_buffered_per_partition: usize,
    /// Most tracked messages per partition (buffered + in flight + waiting + dead-lettering).
    pub max_tracked_per_partition: usize,
    /// Most tracked messages over the whole group.
    pub max_tracked_per_group: usize,
}

impl Default for GroupLimits {
    fn default() -> Self {
        GroupLimits {
            max_members: DEFAULT_MAX_MEMBERS,
            max_buffered_per_partition: DEFAULT_MAX_BUFFERED_PER_PARTITION,
            max_tracked_per_partition: DEFAULT_MAX_TRACKED_PER_PARTITION,
            max_tracked_per_group: DEFAULT_MAX_TRACKED_PER_GROUP,
        }
    }
}

impl GroupLimits {
    /// Checks that every limit is at least 1 and at most its hard cap, and that the buffer
    /// fits in the tracked budget.
    pub fn validate(&self) -> Result<(), GroupError> {
        let check = |name: &str, value: usize, max: usize| {
            if value == 0 || value > max {
                Err(GroupError::InvalidLimits(format!(
                    "{name} is {value}, must be 1..={max}"
                )))
            } else {
                Ok(())
            }
        };
        check("max_members", self.max_members, MAX_MEMBERS)?;
        check(
            "max_tracked_per_partition",
            self.max_tracked_per_partition,
            MAX_TRACKED_PER_PARTITION,
        )?;
        check(
            "max_buffered_per_partition",
            self.max_buffered_per_partition,
            self.max_tracked_per_partition,
        )?;
        check(
            "max_tracked_per_group",
            self.max_tracked_per_group,
            MAX_TRACKED_PER_GROUP,
        )?;
        Ok(())
    }
}
