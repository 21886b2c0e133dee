//! The group machine's error types.
//!
//! Every variant is a misuse by a client or by the driver that the machine reports instead
//! of panicking; the server layer maps them to gRPC statuses (noted per variant). Stale acks
//! are not errors: they are an expected race and come back as `Stale` outcomes.

use thiserror::Error;

use super::ids::{MemberId, PartitionId};

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GroupError {
    /// The member never joined or has left (a bug in the driver: it should only call for
    /// open streams). INTERNAL / NOT_FOUND.
    #[error("member {0} is not in the group")]
    UnknownMember(MemberId),
    /// `join` with an id already in use. The driver allocates ids, so this is its bug.
    #[error("member {0} has already joined the group")]
    MemberExists(MemberId),
    /// The group has as many members as its limit allows. RESOURCE_EXHAUSTED.
    #[error("the group already has {limit} members, the most it allows")]
    TooManyMembers { limit: usize },
    /// A partition id outside the group's topic. NOT_FOUND / OUT_OF_RANGE.
    #[error("partition {partition} does not exist (the group covers {count} partitions)")]
    UnknownPartition {
        partition: PartitionId,
        count: usize,
    },
    /// Ack id bytes that this machine never produced (wrong length or version).
    /// INVALID_ARGUMENT.
    #[error("malformed ack id")]
    MalformedAckId,
    /// A well-formed ack id naming a delivery that was never made. INVALID_ARGUMENT.
    #[error("unknown ack id")]
    UnknownAckId,
    /// Group settings out of range. INVALID_ARGUMENT.
    #[error("invalid group settings: {0}")]
    InvalidSettings(String),
    /// Limits out of range (a configuration bug). INVALID_ARGUMENT.
    #[error("invalid group limits: {0}")]
    InvalidLimits(String),
    /// A partition count of 0 or above `MAX_PARTITIONS`. INVALID_ARGUMENT.
    #[error("a group covers 1..={max} partitions, not {count}")]
    InvalidPartitionCount { count: usize, max: usize },
    /// `offer` records that skip offsets the machine still wants (a driver bug, or records
    /// removed by retention: the driver then seeks past them).
    #[error("partition {partition}: offered offset {got} but the group wants {expected} first")]
    OfferGap {
        partition: PartitionId,
        expected: u64,
        got: u64,
    },
    /// `offer` records that are not consecutive offsets (a driver bug).
    #[error("partition {partition}: offered records are not consecutive at offset {at}")]
    OfferNotContiguous { partition: PartitionId, at: u64 },
    /// A snapshot that cannot be restored.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SnapshotError {
    #[error("group snapshot is truncated")]
    Truncated,
    #[error("not a group snapshot (bad magic)")]
    BadMagic,
    #[error("group snapshot version {0} is not supported")]
    UnsupportedVersion(u8),
    #[error("group snapshot checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("group snapshot is invalid: {0}")]
    Invalid(String),
}
