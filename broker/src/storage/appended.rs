//! What an append answers: the offsets a batch was given. A leaf of its own, because the
//! log that assigns offsets and the tables that remember them for idempotent producers and
//! message ids (`producers`, `msg_ids`) both speak of it.

/// Offsets a committed append was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: u64,
    pub last_offset: u64,
}
