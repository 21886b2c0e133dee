//! Partition groups (cluster stage 2): one openraft group per replicated partition, over
//! that partition's replicas, whose Raft log is the partition's segment log. See
//! ARCHITECTURE.md, "Cluster".
//!
//! - [`types`] — openraft's type configuration: an entry is a storage batch.
//! - [`journal`] — the entry journal: Raft index → offsets, fixed-size CRC'd records.
//! - [`replica_log`] — the segment log, journal, vote and membership as one Raft log.

pub mod journal;
pub mod replica_log;
pub mod types;

#[cfg(test)]
mod replica_log_tests;
