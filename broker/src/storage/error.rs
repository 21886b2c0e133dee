//! The storage layer's one error type.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

use super::batch::BatchError;

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// What can go wrong in a partition log. Bad input (`InvalidBatch`, `BatchTooLarge`,
/// `OffsetOutOfRange`) is the caller's to report; the rest are operating errors that name the
/// file involved. An I/O cause is part of the message, not a `source()`: the message is what
/// a gRPC status carries, and a reporter that walks `source()` would print it twice.
#[derive(Debug, Error)]
pub enum StorageError {
    #[error("{op} {}: {cause}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        cause: io::Error,
    },
    #[error("disk full while trying to {op} {}", path.display())]
    DiskFull {
        op: &'static str,
        path: PathBuf,
        cause: io::Error,
    },
    #[error("{} is not a directory", path.display())]
    NotADirectory { path: PathBuf },
    /// An offline tool was pointed at a directory that holds neither a checkpoint nor a
    /// segment file.
    #[error("{} is not a partition log (it holds no checkpoint and no segment file)", path.display())]
    NotAPartitionLog { path: PathBuf },
    #[error("corrupt log: {} at byte {position}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: String,
    },
    /// A committed batch failed its check on the way out (CRC, frame, or its place in the
    /// offset sequence): the bytes on disk changed after they were written. It is never
    /// served; the partition keeps answering this for that offset until an operator
    /// repairs the log (README, "Disk damage").
    #[error("data loss in {log} at offset {offset}: {} byte {position}: {reason}", path.display())]
    DamagedBatch {
        /// Which log: "topic T partition P" inside a broker, the directory otherwise.
        log: std::sync::Arc<str>,
        /// The offset whose batch is damaged.
        offset: u64,
        /// The damaged file (a segment, or the index that points into it).
        path: PathBuf,
        position: u64,
        reason: String,
    },
    #[error("invalid batch: {0}")]
    InvalidBatch(#[from] BatchError),
    #[error("batch of {len} bytes does not fit a segment of {segment_bytes} bytes")]
    BatchTooLarge { len: usize, segment_bytes: u64 },
    #[error("offset {offset} is out of range: the log holds offsets {start}..{end}")]
    OffsetOutOfRange { offset: u64, start: u64, end: u64 },
    #[error("the partition's write queue is full; retry later")]
    QueueFull,
    #[error("invalid log configuration: {0}")]
    InvalidConfig(String),
    /// A flush failed earlier. The bytes the kernel dropped cannot be known, so the partition
    /// refuses writes for good instead of retrying an fsync that may falsely succeed.
    #[error("partition log is poisoned and refuses writes: {reason}")]
    Poisoned { reason: String },
    /// The partition's writer is gone: the topic is being deleted or the broker is
    /// shutting down. Nothing is wrong with the log; a retry (elsewhere, or later) may
    /// succeed, so it is not told apart from a poisoned log only by its message.
    /// A cut or publish of the log's tail at an offset the log cannot take it at: not
    /// the start of an appended batch, or below what readers have already seen.
    #[error("cannot {op} the log at offset {offset}: {reason}")]
    BadBoundary {
        op: &'static str,
        offset: u64,
        reason: String,
    },
    #[error("the partition writer has stopped (topic deleted or broker shutting down)")]
    WriterStopped,
    /// An idempotent producer's batch does not follow its last one here: it would leave a
    /// gap (or repeat an old batch the partition no longer remembers). The producer should
    /// renumber from `expected`, or start a new epoch.
    #[error(
        "out of order sequence for producer {producer_id} epoch {epoch}: expected sequence {expected}, got {got}"
    )]
    OutOfOrderSequence {
        producer_id: u64,
        epoch: u16,
        expected: u32,
        got: u32,
    },
    /// A newer instance of the producer (a higher epoch) has written to this partition.
    #[error(
        "producer {producer_id} epoch {epoch} is fenced: epoch {current_epoch} has written to this partition"
    )]
    ProducerFenced {
        producer_id: u64,
        epoch: u16,
        current_epoch: u16,
    },
}

impl StorageError {
    /// Wraps an I/O error with the operation and file, telling a full disk apart.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        if source.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) {
            StorageError::DiskFull {
                op,
                path,
                cause: source,
            }
        } else {
            StorageError::Io {
                op,
                path,
                cause: source,
            }
        }
    }
}
