//! The group driver's seams to the outside world: where it reads a partition's log
//! ([`LogSource`]) and what time it is ([`Clock`]).
//!
//! The broker runs the driver on a [`LogReader`] and the wall clock. Tests and the
//! deterministic simulation run the same fill, read-back and delivery-shaping code on an
//! in-memory log ([`MemLog`], test builds only) and a clock they move by hand, so every
//! run of a seed takes the same steps.

use crate::storage::{LogReader, ReadChunk, StorageError};

/// A partition log as the group driver reads it: whole stored batches from the one that
/// holds an offset, below a high watermark. Generic (not a trait object) on the hot path,
/// so the broker's build calls [`LogReader`] directly.
pub trait LogSource {
    /// Whole batches from the one holding `offset`, up to `max_bytes` (at least one
    /// batch); `None` at the high watermark; `OffsetOutOfRange` below the log's start or
    /// past its end. As [`LogReader::read`].
    fn read(&self, offset: u64, max_bytes: usize) -> Result<Option<ReadChunk>, StorageError>;

    /// The offset after the last committed record.
    fn high_watermark(&self) -> u64;
}

impl LogSource for LogReader {
    fn read(&self, offset: u64, max_bytes: usize) -> Result<Option<ReadChunk>, StorageError> {
        LogReader::read(self, offset, max_bytes)
    }

    fn high_watermark(&self) -> u64 {
        LogReader::high_watermark(self)
    }
}

/// Milliseconds since the Unix epoch, as the group machine counts time.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> u64;
}

/// The broker's clock: the wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct WallClock;

impl Clock for WallClock {
    fn now_ms(&self) -> u64 {
        crate::clock::now_ms().max(0) as u64
    }
}

#[cfg(test)]
pub(crate) use mem::MemLog;

#[cfg(test)]
mod mem {
    use bytes::{Bytes, BytesMut};

    use super::LogSource;
    use crate::storage::{BatchBuilder, ReadChunk, Record, StorageError, batch};

    /// A partition log in memory: batches in the storage format, back to back, with the
    /// same read contract as the real log (whole batches from the one holding the offset,
    /// at least one, `None` at the end).
    #[derive(Debug, Default, Clone)]
    pub(crate) struct MemLog {
        /// Stored batches in offset order: (base offset, record count, bytes).
        batches: Vec<(u64, u64, Bytes)>,
        /// The first offset still in the log.
        start: u64,
        /// The offset the next batch gets.
        next: u64,
    }

    impl MemLog {
        pub(crate) fn new() -> MemLog {
            MemLog::default()
        }

        /// Appends one batch of `records` (key, value) with timestamps from `timestamp`;
        /// returns its base offset.
        pub(crate) fn append(&mut self, timestamp: i64, records: &[(Option<&[u8]>, &[u8])]) -> u64 {
            assert!(!records.is_empty());
            let mut builder = BatchBuilder::with_capacity(256);
            for (i, (key, value)) in records.iter().enumerate() {
                builder.push(&Record {
                    timestamp: timestamp + i as i64,
                    key: *key,
                    value,
                    headers: &[],
                });
            }
            let mut encoded = builder.finish();
            let base = self.next;
            batch::stamp_base_offset(&mut encoded, base);
            self.batches
                .push((base, records.len() as u64, Bytes::from(encoded)));
            self.next += records.len() as u64;
            base
        }
    }

    impl MemLog {
        /// Drops whole batches from the end until the log ends at or below `end` (as
        /// recovery cuts a log at a whole batch after a power loss).
        pub(crate) fn truncate(&mut self, end: u64) {
            while let Some(&(base, _, _)) = self.batches.last() {
                if self.next <= end {
                    break;
                }
                self.batches.pop();
                self.next = base;
            }
        }
    }

    impl LogSource for MemLog {
        fn read(&self, offset: u64, max_bytes: usize) -> Result<Option<ReadChunk>, StorageError> {
            if offset == self.next {
                return Ok(None);
            }
            if offset < self.start || offset > self.next {
                return Err(StorageError::OffsetOutOfRange {
                    offset,
                    start: self.start,
                    end: self.next,
                });
            }
            let first = self
                .batches
                .partition_point(|&(base, count, _)| base + count <= offset);
            let mut bytes = BytesMut::new();
            let mut next_offset = 0;
            for (base, count, batch) in &self.batches[first..] {
                if !bytes.is_empty() && bytes.len() + batch.len() > max_bytes {
                    break;
                }
                bytes.extend_from_slice(batch);
                next_offset = base + count;
            }
            Ok(Some(ReadChunk {
                bytes: bytes.freeze(),
                base_offset: self.batches[first].0,
                next_offset,
                high_watermark: self.next,
            }))
        }

        fn high_watermark(&self) -> u64 {
            self.next
        }
    }
}
