//! The storage engine: a partition's append-only log of record batches in memory-mapped
//! segment files, allocated on disk a step ahead of the data.
//!
//! This layer knows files, bytes and offsets; it knows nothing of tokio, gRPC or the proto
//! types. One [`LogWriter`] owns a partition's directory and is the only thing that writes
//! it; any number of [`LogReader`]s read it without taking a lock (see `handoff`).
//!
//! - `batch` — the on-disk (and producer fast path) batch format, encode/validate/decode;
//!   it lives in the `herald-format` crate, shared with clients, and is re-exported here.
//! - `segment` — one mapped log file plus its indexes; background preparation of the next.
//! - `index` — the sparse offset and time indexes.
//! - `index_cursor` — where a segment's next index entries go, for appends and recovery alike.
//! - `mapping` — creating, allocating and mapping the files of a segment and its indexes.
//! - `handoff` — how committed bytes are published to lock-free readers.
//! - `log` — the writer (append, commit with the fsync policy, roll, retention) and reader.
//! - `recovery` — opening a directory: checkpoint, scan, torn-tail repair.
//! - `inspect` — read-only verification of a directory, for the offline `log` commands.
//! - `msg_ids` — the message-id dedup window (`herald-msg-id`), per partition.
//! - `producers` — idempotent producers: the per-partition sequence table, its snapshot.
//! - `writer_core` — what a partition's writer decides (groups, answers, housekeeping),
//!   with no I/O of its own; the writer thread (`committer`) and task drive it.
//! - `committer` — group commit: many appenders share one writer thread and one flush.

mod appended;
pub use herald_format::batch;
pub mod committer;
mod error;
mod handoff;
mod index;
mod index_cursor;
pub mod inspect;
mod log;
mod mapping;
pub mod msg_ids;
pub mod producers;
mod recovery;
mod segment;
pub mod writer_core;

use std::time::Duration;

pub use batch::{
    BatchBuilder, BatchError, BatchHeader, BatchView, Record, RecordView, ValidBatch,
    ValidatedBatch,
};
pub use committer::{Committer, CommitterHandle};
pub use error::{Result, StorageError};
pub use log::{
    Appended, LogReader, LogWriter, ReadChunk, RetentionLimits, RetentionOutcome, WriterStats,
};
pub use segment::sync_dir;

/// Default segment size: big enough that rolls (and their fsyncs) are rare.
pub const DEFAULT_SEGMENT_BYTES: u64 = 256 * 1024 * 1024;
/// Smallest segment size accepted: one page, so tests can roll often. `--help` states it.
pub const MIN_SEGMENT_BYTES: u64 = 4096;
/// Largest segment size: index entries store positions as u32.
pub const MAX_SEGMENT_BYTES: u64 = u32::MAX as u64;
/// Default bytes of log between two sparse index entries. A lookup scans at most this many
/// bytes of batch headers past the entry it finds.
pub const DEFAULT_INDEX_INTERVAL_BYTES: u64 = 4096;

/// When appended bytes are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Every commit flushes before it publishes: an acknowledged record survives power loss.
    /// Everything appended since the last commit shares one flush (group commit).
    Always,
    /// Commits publish at once; the writer flushes when this long has passed since the last
    /// flush (checked on every commit and `tick`). A crash may lose up to that much.
    Interval(Duration),
    /// The OS writes pages back when it likes; a clean close still flushes.
    Never,
}

/// How a partition log is laid out and kept.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Most bytes a segment holds; its files are allocated as it fills (see `segment`).
    pub segment_bytes: u64,
    /// Bytes of log between two sparse index entries.
    pub index_interval_bytes: u64,
    pub fsync: FsyncPolicy,
    /// Closed segments whose newest record is older than this are deleted.
    pub retention_ms: Option<u64>,
    /// Closed segments are deleted, oldest first, while the partition holds more than this.
    pub retention_bytes: Option<u64>,
    /// Bounds on the idempotent producers the partition remembers.
    pub producers: producers::ProducerLimits,
    /// How long a `herald-msg-id` is remembered (0: the window is off).
    pub msg_id_window_ms: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            index_interval_bytes: DEFAULT_INDEX_INTERVAL_BYTES,
            fsync: FsyncPolicy::Always,
            retention_ms: None,
            retention_bytes: None,
            producers: producers::ProducerLimits::default(),
            msg_id_window_ms: 0,
        }
    }
}

impl LogConfig {
    pub fn validate(&self) -> Result<()> {
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&self.segment_bytes) {
            return Err(StorageError::InvalidConfig(format!(
                "segment_bytes must be within {MIN_SEGMENT_BYTES}..={MAX_SEGMENT_BYTES}, got {}",
                self.segment_bytes
            )));
        }
        if self.index_interval_bytes == 0 || self.index_interval_bytes > self.segment_bytes {
            return Err(StorageError::InvalidConfig(format!(
                "index_interval_bytes must be within 1..=segment_bytes, got {}",
                self.index_interval_bytes
            )));
        }
        if self.producers.max_producers == 0 || self.producers.idle_expiry_ms <= 0 {
            return Err(StorageError::InvalidConfig(
                "producer limits must be positive".into(),
            ));
        }
        if let FsyncPolicy::Interval(d) = self.fsync
            && d.is_zero()
        {
            return Err(StorageError::InvalidConfig(
                "fsync interval must be longer than zero".into(),
            ));
        }
        Ok(())
    }

    /// Index slots per segment: one per interval, plus the first batch and the closing time
    /// entry.
    pub(crate) fn index_entries(&self) -> usize {
        (self.segment_bytes / self.index_interval_bytes) as usize + 2
    }
}
