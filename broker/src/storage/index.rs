//! Sparse, memory-mapped indexes of a segment: offset → position and timestamp → position.
//!
//! An index file is allocated like its segment, growing with it, and holds fixed-size little-endian entries.
//! The writer adds an entry every `index_interval_bytes` of log and publishes the entry count
//! with a Release store; readers binary-search the entries below the count they load. Slots
//! past the count are zero, which is how a reopened file tells where its entries end.
//!
//! Entry formats:
//! - offset index, 8 bytes: `relative_offset` u32 (offset − segment base), `position` u32
//!   (byte position of a batch in the segment). Entry 0 is always `(0, 0)`; later entries have
//!   strictly growing positions, so a zero position marks the end.
//! - time index, 16 bytes: `max_timestamp` i64 (largest record timestamp in the segment up to
//!   and including the batch), `relative_offset` u32 and `position` u32 of that batch. Entry 0
//!   belongs to the first batch; later entries have strictly growing timestamps and relative
//!   offsets, so a zero relative offset marks the end. A sealed (or cleanly closed) segment
//!   ends with an entry carrying its exact largest timestamp.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::error::{Result, StorageError};
use super::mapping::GrowingMap;

/// A fixed-size index entry.
pub(crate) trait Entry: Copy + std::fmt::Debug {
    const BYTES: usize;
    fn encode(&self, out: &mut [u8]);
    fn decode(bytes: &[u8]) -> Self;
    /// Whether the slot at `index` holds an entry rather than trailing zeros.
    fn present(&self, index: usize) -> bool;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

impl Entry for OffsetEntry {
    const BYTES: usize = 8;
    fn encode(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&self.relative_offset.to_le_bytes());
        out[4..8].copy_from_slice(&self.position.to_le_bytes());
    }
    fn decode(b: &[u8]) -> Self {
        OffsetEntry {
            relative_offset: u32::from_le_bytes(b[0..4].try_into().expect("4 bytes")),
            position: u32::from_le_bytes(b[4..8].try_into().expect("4 bytes")),
        }
    }
    fn present(&self, index: usize) -> bool {
        index == 0 || self.position != 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeEntry {
    pub max_timestamp: i64,
    pub relative_offset: u32,
    pub position: u32,
}

impl Entry for TimeEntry {
    const BYTES: usize = 16;
    fn encode(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.max_timestamp.to_le_bytes());
        out[8..12].copy_from_slice(&self.relative_offset.to_le_bytes());
        out[12..16].copy_from_slice(&self.position.to_le_bytes());
    }
    fn decode(b: &[u8]) -> Self {
        TimeEntry {
            max_timestamp: i64::from_le_bytes(b[0..8].try_into().expect("8 bytes")),
            relative_offset: u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")),
            position: u32::from_le_bytes(b[12..16].try_into().expect("4 bytes")),
        }
    }
    fn present(&self, index: usize) -> bool {
        index == 0 || self.relative_offset != 0
    }
}

/// One memory-mapped index file. Only the partition's writer calls the `&self` methods that
/// change it (`push`, `truncate`, `grow`); the log's single-writer design guarantees that.
///
/// The file is mapped for `capacity` entries but allocated for fewer: it grows with its log
/// (see `Segment::grow`), and an entry is only ever stored or loaded below the allocated
/// length (see `mapping`).
pub(crate) struct IndexFile<E> {
    path: PathBuf,
    map: GrowingMap,
    capacity: usize,
    len: AtomicUsize,
    _entry: std::marker::PhantomData<E>,
}

impl<E: Entry> IndexFile<E> {
    /// Creates a zeroed index with room for `capacity` entries, `initial` of them allocated.
    pub(crate) fn create(path: &Path, capacity: usize, initial: usize, sync: bool) -> Result<Self> {
        let map = GrowingMap::create(
            path,
            (capacity * E::BYTES) as u64,
            (initial.min(capacity) * E::BYTES) as u64,
            sync,
            true,
        )?;
        Ok(Self::from_parts(path.to_owned(), map))
    }

    /// Maps an existing index (with room for at least `capacity` entries) and counts its
    /// entries.
    pub(crate) fn open(path: &Path, capacity: usize) -> Result<Self> {
        let map = GrowingMap::open(path, (capacity * E::BYTES) as u64)?;
        let index = Self::from_parts(path.to_owned(), map);
        let len = (0..index.room())
            .take_while(|&i| index.get(i).present(i))
            .count();
        index.len.store(len, Ordering::Release);
        Ok(index)
    }

    fn from_parts(path: PathBuf, map: GrowingMap) -> Self {
        let capacity = map.capacity() as usize / E::BYTES;
        IndexFile {
            path,
            map,
            capacity,
            len: AtomicUsize::new(0),
            _entry: std::marker::PhantomData,
        }
    }

    /// Entries the allocated part of the file holds.
    fn room(&self) -> usize {
        (self.map.allocated() as usize / E::BYTES).min(self.capacity)
    }

    /// Bytes allocated to the file.
    pub(crate) fn allocated_bytes(&self) -> u64 {
        self.map.allocated()
    }

    /// Allocates room for `entries` entries (at most the capacity); see `GrowingMap::grow`.
    pub(crate) fn grow(&self, entries: usize, sync: bool) -> Result<()> {
        let entries = entries.min(self.capacity);
        self.map
            .grow(&self.path, (entries * E::BYTES) as u64, sync, true)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn set_path(&mut self, path: PathBuf) {
        self.path = path;
    }

    /// Entries published so far.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub(crate) fn get(&self, i: usize) -> E {
        assert!(i < self.room());
        // Safety: `i` is within the allocated part of the mapping, and entries below the published count are never
        // written again; a slot at or above it is read only by the writer or by `open`.
        let bytes =
            unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(i * E::BYTES), E::BYTES) };
        E::decode(bytes)
    }

    pub(crate) fn last(&self) -> Option<E> {
        self.len().checked_sub(1).map(|i| self.get(i))
    }

    /// Writer only: appends an entry. A full index (or one whose allocation lags, which the
    /// log's allocation order rules out) drops it: the index only gets sparser and reads
    /// stay correct, they just scan further.
    pub(crate) fn push(&self, entry: E) {
        let len = self.len.load(Ordering::Relaxed);
        if len >= self.room() {
            return;
        }
        let mut bytes = [0u8; 16];
        entry.encode(&mut bytes[..E::BYTES]);
        // Safety: slot `len` is allocated and not yet published, so no reader
        // looks at it; only the single writer calls `push`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.map.as_mut_ptr().add(len * E::BYTES),
                E::BYTES,
            );
        }
        self.len.store(len + 1, Ordering::Release);
    }

    /// Writer only (recovery): forgets entries from `keep` on and zeroes every slot after
    /// them, so that stray bytes left by a crash can never be counted as entries later.
    pub(crate) fn truncate(&self, keep: usize) {
        let room = self.room();
        let end = room * E::BYTES;
        let from = keep.min(room) * E::BYTES;
        if from < end {
            // Safety: recovery runs before any reader exists; the range is allocated.
            unsafe { std::ptr::write_bytes(self.map.as_mut_ptr().add(from), 0, end - from) };
        }
        self.len.store(keep.min(room), Ordering::Release);
    }

    /// Writer only, while readers run: forgets entries from `keep` on and zeroes them,
    /// durably (left in the file, a later open would count them as entries again). For a
    /// cut of the log's unpublished tail (`LogWriter::truncate`). A reader only looks up
    /// offsets below the high watermark, which no entry past the cut matches; one that
    /// loaded the old length may still compare against these slots while they are zeroed.
    /// They are zeroed one whole entry at a time from the lowest, so the slots it sees are
    /// the kept entries, then zeroed ones (which say "offset 0 at byte 0": it scans from
    /// the segment's start, correctly, only further), then untouched ones past the cut:
    /// the order its binary search needs.
    pub(crate) fn cut(&self, keep: usize) -> Result<()> {
        let len = self.len();
        if keep >= len {
            return Ok(());
        }
        self.len.store(keep, Ordering::Release);
        for slot in keep..len {
            // Safety: below the old published count, so allocated; only the single writer
            // writes, and readers read these slots only as described above.
            unsafe {
                std::ptr::write_bytes(self.map.as_mut_ptr().add(slot * E::BYTES), 0, E::BYTES)
            };
        }
        self.map
            .flush_range((keep * E::BYTES) as u64, (len * E::BYTES) as u64)
            .map_err(|e| StorageError::io("flush index", &self.path, e))
    }

    /// Number of leading entries for which `pred` holds (entries must be sorted by it).
    pub(crate) fn partition_point(&self, pred: impl Fn(&E) -> bool) -> usize {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if pred(&self.get(mid)) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Flushes the whole file, entries and zeroed slots alike (after a wipe).
    pub(crate) fn flush_all(&self) -> Result<()> {
        self.map
            .flush_range(0, self.map.allocated())
            .map_err(|e| StorageError::io("flush index", &self.path, e))
    }

    /// Flushes the published entries to disk.
    pub(crate) fn flush(&self) -> Result<()> {
        let bytes = self.len() * E::BYTES;
        if bytes == 0 {
            return Ok(());
        }
        self.map
            .flush_range(0, bytes as u64)
            .map_err(|e| StorageError::io("flush index", &self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_reopen_and_truncate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.index");
        let index = IndexFile::<OffsetEntry>::create(&path, 8, 8, false).unwrap();
        for i in 0..5u32 {
            index.push(OffsetEntry {
                relative_offset: i * 10,
                position: i * 4096,
            });
        }
        assert_eq!(index.partition_point(|e| e.relative_offset <= 25), 3);
        index.flush().unwrap();
        drop(index);
        let index = IndexFile::<OffsetEntry>::open(&path, 8).unwrap();
        assert_eq!(index.len(), 5);
        index.truncate(2);
        assert_eq!(index.len(), 2);
        drop(index);
        let index = IndexFile::<OffsetEntry>::open(&path, 8).unwrap();
        assert_eq!(index.len(), 2);
        assert_eq!(
            index.last(),
            Some(OffsetEntry {
                relative_offset: 10,
                position: 4096
            })
        );
        // A full index drops entries instead of failing.
        for i in 0..20u32 {
            index.push(OffsetEntry {
                relative_offset: 100 + i,
                position: 100_000 + i,
            });
        }
        assert_eq!(index.len(), 8);
    }

    /// Entries go only where the file is allocated: past it they are dropped (never stored
    /// into the unallocated mapping), and after growing they land again. A reopened index
    /// counts only the allocated part.
    #[test]
    fn entries_stay_within_the_allocation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.index");
        let index = IndexFile::<OffsetEntry>::create(&path, 1024, 2, true).unwrap();
        assert_eq!(index.allocated_bytes(), 16);
        let entry = |i: u32| OffsetEntry {
            relative_offset: i,
            position: i * 100,
        };
        for i in 0..4 {
            index.push(entry(i));
        }
        assert_eq!(index.len(), 2);
        index.grow(600, true).unwrap();
        assert_eq!(index.allocated_bytes(), 4800);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 4800);
        for i in 2..5 {
            index.push(entry(i));
        }
        assert_eq!(index.len(), 5);
        index.grow(5000, false).unwrap();
        assert_eq!(
            index.allocated_bytes(),
            1024 * 8,
            "growth stops at the capacity"
        );
        index.flush().unwrap();
        drop(index);
        let index = IndexFile::<OffsetEntry>::open(&path, 16).unwrap();
        assert_eq!(index.len(), 5);
        assert_eq!(index.last(), Some(entry(4)));
    }
}
