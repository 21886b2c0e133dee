//! A segment: one preallocated, memory-mapped log file and its two index files.
//!
//! Files of the segment whose first offset is `B` are `{B:020}.log`, `{B:020}.index` and
//! `{B:020}.timeindex`. A segment file is created at its full size with `fallocate` (never a
//! sparse `set_len`), so writes through the mapping never meet a hole and never fault with
//! SIGBUS; the mapping never extends past the file's allocated length.
//!
//! Creating, allocating and syncing a file is slow (the first fsync after `fallocate` has
//! taken 120 ms), so the *next* segment is created, allocated, synced and mapped on a
//! background thread (the [`Preparer`]) under a temporary name while the active one fills;
//! a roll only renames it. Appends are written with `pwritev` (see [`Segment::write`]), not
//! through the mapping, so fresh pages are never zeroed first; readers read the mapping.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicI64;
use std::thread::JoinHandle;

use memmap2::MmapRaw;

use super::batch::{BatchHeader, HEADER_BYTES};
use super::error::{Result, StorageError};
use super::handoff::{AtomicU64, Ordering, Published};
use super::index::{Entry, IndexFile, OffsetEntry, TimeEntry};
use super::mapping::{create_mapped, map_existing};

pub(crate) const LOG_SUFFIX: &str = "log";
pub(crate) const OFFSET_INDEX_SUFFIX: &str = "index";
pub(crate) const TIME_INDEX_SUFFIX: &str = "timeindex";
/// Files being prepared carry this stem until a roll names them; recovery deletes them.
pub(crate) const PREPARED_STEM: &str = "next.prepared";
/// A retired segment kept for reuse as a later next segment; recovery deletes it.
pub(crate) const RECYCLED_STEM: &str = "recycled";

fn stem_path(dir: &Path, stem: &str, suffix: &str) -> PathBuf {
    dir.join(format!("{stem}.{suffix}"))
}

/// Renames a segment's three files to `to(suffix)`; returns the log file's new path.
fn move_files(
    log: &Path,
    offsets: &mut IndexFile<OffsetEntry>,
    times: &mut IndexFile<TimeEntry>,
    to: impl Fn(&str) -> PathBuf,
) -> Result<PathBuf> {
    let rename = |from: &Path, suffix| -> Result<PathBuf> {
        let to = to(suffix);
        fs::rename(from, &to).map_err(|e| StorageError::io("rename", &to, e))?;
        Ok(to)
    };
    let log = rename(log, LOG_SUFFIX)?;
    let path = rename(offsets.path(), OFFSET_INDEX_SUFFIX)?;
    offsets.set_path(path);
    let path = rename(times.path(), TIME_INDEX_SUFFIX)?;
    times.set_path(path);
    Ok(log)
}

/// `dir/{base:020}.{suffix}`.
pub(crate) fn segment_path(dir: &Path, base_offset: u64, suffix: &str) -> PathBuf {
    dir.join(format!("{base_offset:020}.{suffix}"))
}

/// Parses a segment's base offset from a `{base:020}.log` file name.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".log")?;
    (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
        .then(|| stem.parse().ok())
        .flatten()
}

/// Makes the directory entries in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io("sync directory", dir, e))
}

fn open_or_create_index<E: Entry>(path: &Path, entries: usize) -> Result<IndexFile<E>> {
    // An empty index file holds no entries (its allocation never reached the disk): make it
    // anew like a missing one, rather than failing the segment as if its log were empty.
    if fs::metadata(path).is_ok_and(|m| m.len() > 0) {
        IndexFile::open(path)
    } else {
        IndexFile::create(path, entries, false)
    }
}

/// One segment. Shared between the writer and readers through `Arc`; the writer is the only
/// one that writes, and only above the committed length.
pub(crate) struct Segment {
    base_offset: u64,
    path: PathBuf,
    // Kept open for the life of the mapping.
    _file: File,
    map: MmapRaw,
    /// Bytes holding committed batches; see `handoff`.
    committed: AtomicU64,
    /// Largest record timestamp committed in this segment (`i64::MIN` while empty). Stored
    /// before the commit is published, so readers may skip segments by it.
    max_timestamp: AtomicI64,
    pub(crate) offsets: IndexFile<OffsetEntry>,
    pub(crate) times: IndexFile<TimeEntry>,
    /// Every page of the file is in the page cache (a reused, wiped segment), so appends
    /// copy through the mapping; otherwise they use `pwritev` (see [`Segment::write`]).
    resident: bool,
}

impl Published for Segment {
    fn base_offset(&self) -> u64 {
        self.base_offset
    }
    fn committed(&self) -> &AtomicU64 {
        &self.committed
    }
}

impl Segment {
    /// Opens an existing segment's files. Missing index files are created empty; the caller
    /// then rebuilds them by scanning.
    pub(crate) fn open(dir: &Path, base_offset: u64, index_entries: usize) -> Result<Segment> {
        let path = segment_path(dir, base_offset, LOG_SUFFIX);
        let (file, map) = map_existing(&path)?;
        let offsets = open_or_create_index(
            &segment_path(dir, base_offset, OFFSET_INDEX_SUFFIX),
            index_entries,
        )?;
        let times = open_or_create_index(
            &segment_path(dir, base_offset, TIME_INDEX_SUFFIX),
            index_entries,
        )?;
        Ok(Segment {
            base_offset,
            path,
            _file: file,
            map,
            committed: AtomicU64::new(0),
            max_timestamp: AtomicI64::new(i64::MIN),
            offsets,
            times,
            resident: false,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.map.len() as u64
    }

    pub(crate) fn committed_len(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    pub(crate) fn max_timestamp(&self) -> i64 {
        self.max_timestamp
            .load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn set_max_timestamp(&self, ts: i64) {
        self.max_timestamp
            .store(ts, std::sync::atomic::Ordering::Release);
    }

    /// Bytes `[from, to)` of the mapping. Callers only ask for committed bytes, or (the
    /// writer and recovery) for bytes no reader can see yet.
    pub(crate) fn bytes(&self, from: u64, to: u64) -> &[u8] {
        assert!(from <= to && to <= self.capacity());
        // Safety: in bounds of the mapping; bytes below the committed length never change
        // while the segment exists, and bytes above it are touched by the writer alone.
        unsafe {
            std::slice::from_raw_parts(self.map.as_ptr().add(from as usize), (to - from) as usize)
        }
    }

    /// The batch header at `position`, if a whole header fits below `limit`.
    pub(crate) fn header_at(&self, position: u64, limit: u64) -> Option<BatchHeader> {
        let end = position.checked_add(HEADER_BYTES as u64)?;
        (end <= limit)
            .then(|| BatchHeader::read(self.bytes(position, end)))
            .flatten()
    }

    /// Writer only: writes `bytes` to `position`, with `stamp` over its first bytes (the
    /// batch's base offset). The range must be above everything published.
    ///
    /// A page the file has never had must be zeroed by the kernel before a store through a
    /// mapping can touch it, while a `pwritev` that covers the whole page fills it directly:
    /// with fresh segments, that zeroing took a third of the machine's CPU at 260 MB/s of
    /// appends. So fresh segments are written with `pwritev`, and reused ones, whose pages
    /// are all resident, by copying through the mapping, which is cheaper still. Readers
    /// read the same page-cache pages through the mapping either way.
    pub(crate) fn write(&self, position: u64, stamp: &[u8], bytes: &[u8]) -> Result<()> {
        assert!(stamp.len() <= bytes.len());
        assert!(position + bytes.len() as u64 <= self.capacity());
        if self.resident {
            // Safety: in bounds; above the committed length, so no reader looks at it, and
            // the single writer is the only caller.
            unsafe {
                let at = self.map.as_mut_ptr().add(position as usize);
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), at, bytes.len());
                std::ptr::copy_nonoverlapping(stamp.as_ptr(), at, stamp.len());
            }
            return Ok(());
        }
        let mut parts = [
            std::io::IoSlice::new(stamp),
            std::io::IoSlice::new(&bytes[stamp.len()..]),
        ];
        let mut slices: &mut [std::io::IoSlice<'_>] = &mut parts;
        let mut at = position;
        while !slices.is_empty() {
            let written = rustix::io::pwritev(&self._file, slices, at)
                .map_err(|e| StorageError::io("write", &self.path, e.into()))?;
            if written == 0 {
                return Err(StorageError::io(
                    "write",
                    &self.path,
                    std::io::ErrorKind::WriteZero.into(),
                ));
            }
            at += written as u64;
            std::io::IoSlice::advance_slices(&mut slices, written);
        }
        Ok(())
    }

    /// Writer only (recovery): zeroes `[from, to)` and makes it durable.
    pub(crate) fn zero(&self, from: u64, to: u64) -> Result<()> {
        if from >= to {
            return Ok(());
        }
        // Safety: recovery runs before any reader can see these bytes.
        unsafe {
            std::ptr::write_bytes(
                self.map.as_mut_ptr().add(from as usize),
                0,
                (to - from) as usize,
            )
        };
        self.flush_range(from, to)
    }

    /// Makes bytes `[from, to)` durable (msync).
    pub(crate) fn flush_range(&self, from: u64, to: u64) -> Result<()> {
        if from >= to {
            return Ok(());
        }
        self.map
            .flush_range(from as usize, (to - from) as usize)
            .map_err(|e| StorageError::io("flush", &self.path, e))
    }

    /// Deletes the segment's files. Readers holding the segment keep reading their mapping.
    pub(crate) fn delete_files(&self) -> Result<()> {
        for path in [self.path.as_path(), self.offsets.path(), self.times.path()] {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::io("delete", path, e)),
            }
        }
        Ok(())
    }
}

impl Segment {
    /// Keeps a retired segment that no reader holds any more for reuse: its files are renamed
    /// out of the log (so recovery never takes them for log data) and its pages stay in the
    /// page cache and mapped, so a later next segment costs a memset of resident pages
    /// and its appends copy through the mapping instead of allocating fresh pages.
    fn retire(self, dir: &Path) -> Result<PreparedSegment> {
        let Segment {
            path,
            _file: file,
            map,
            mut offsets,
            mut times,
            ..
        } = self;
        let path = move_files(&path, &mut offsets, &mut times, |suffix| {
            stem_path(dir, RECYCLED_STEM, suffix)
        })?;
        Ok(PreparedSegment {
            path,
            file,
            map,
            offsets,
            times,
            resident: true,
        })
    }
}

/// A segment's files, made ready under temporary names before their base offset is known.
pub(crate) struct PreparedSegment {
    path: PathBuf,
    file: File,
    map: MmapRaw,
    offsets: IndexFile<OffsetEntry>,
    times: IndexFile<TimeEntry>,
    /// See `Segment::resident`.
    resident: bool,
}

/// How big to make a new segment and whether to sync what gets created.
#[derive(Debug, Clone)]
pub(crate) struct SegmentShape {
    pub(crate) dir: PathBuf,
    pub(crate) segment_bytes: u64,
    pub(crate) index_entries: usize,
    /// Whether creation syncs files and the directory (false for fsync policy `never`).
    pub(crate) sync: bool,
}

impl PreparedSegment {
    /// Gives a retired segment the prepared names. Runs on the writer's thread, so that the
    /// `recycled.*` names are free again before the writer can retire another segment.
    fn rename_to_prepared(mut self, dir: &Path) -> Result<PreparedSegment> {
        self.path = move_files(&self.path, &mut self.offsets, &mut self.times, |suffix| {
            stem_path(dir, PREPARED_STEM, suffix)
        })?;
        Ok(self)
    }

    /// Zeroes a reused segment (durably, when `sync`) so that recovery can never take its old
    /// life's batches for data after a torn tail. Runs on the preparer's thread.
    fn wipe(self, shape: &SegmentShape) -> Result<PreparedSegment> {
        // Safety: the segment was retired while the writer owned its last `Arc`, so no reader
        // can see this mapping; only this thread touches it until `take` hands it back.
        unsafe { std::ptr::write_bytes(self.map.as_mut_ptr(), 0, self.map.len()) };
        self.offsets.truncate(0);
        self.times.truncate(0);
        if shape.sync {
            self.map
                .flush()
                .map_err(|e| StorageError::io("flush", &self.path, e))?;
            self.offsets.flush_all()?;
            self.times.flush_all()?;
        }
        Ok(self)
    }

    pub(crate) fn create(shape: &SegmentShape) -> Result<PreparedSegment> {
        let path = |suffix| stem_path(&shape.dir, PREPARED_STEM, suffix);
        let (file, map) = create_mapped(&path(LOG_SUFFIX), shape.segment_bytes, shape.sync, false)?;
        let offsets =
            IndexFile::create(&path(OFFSET_INDEX_SUFFIX), shape.index_entries, shape.sync)?;
        let times = IndexFile::create(&path(TIME_INDEX_SUFFIX), shape.index_entries, shape.sync)?;
        Ok(PreparedSegment {
            path: path(LOG_SUFFIX),
            file,
            map,
            offsets,
            times,
            resident: false,
        })
    }

    /// Names the prepared files for `base_offset` and returns the segment. The directory is
    /// synced (when `shape.sync`) so the names are durable before any data lands in them.
    pub(crate) fn activate(self, shape: &SegmentShape, base_offset: u64) -> Result<Segment> {
        let PreparedSegment {
            path,
            file,
            map,
            mut offsets,
            mut times,
            resident,
        } = self;
        let path = move_files(&path, &mut offsets, &mut times, |suffix| {
            segment_path(&shape.dir, base_offset, suffix)
        })?;
        if shape.sync {
            sync_dir(&shape.dir)?;
        }
        Ok(Segment {
            base_offset,
            path,
            _file: file,
            map,
            committed: AtomicU64::new(0),
            max_timestamp: AtomicI64::new(i64::MIN),
            offsets,
            times,
            resident,
        })
    }
}

/// Prepares the next segment on a background thread so a roll never waits for file
/// creation, allocation and page population unless the writer outruns it.
pub(crate) struct Preparer {
    shape: SegmentShape,
    pending: Option<JoinHandle<Result<PreparedSegment>>>,
    /// One retired segment kept for the next preparation (see `Segment::retire`).
    recycled: Option<PreparedSegment>,
}

impl Preparer {
    pub(crate) fn new(shape: SegmentShape) -> Self {
        Preparer {
            shape,
            pending: None,
            recycled: None,
        }
    }

    pub(crate) fn shape(&self) -> &SegmentShape {
        &self.shape
    }

    /// Starts preparing the next segment, unless that is already under way.
    pub(crate) fn start(&mut self) {
        if self.pending.is_some() {
            return;
        }
        let shape = self.shape.clone();
        let recycled = match self
            .recycled
            .take()
            .map(|r| r.rename_to_prepared(&shape.dir))
        {
            Some(Ok(prepared)) => Some(prepared),
            Some(Err(error)) => {
                // Its files keep a leftover name that the next open removes.
                tracing::warn!(%error, "could not reuse a retired segment; creating a new one");
                None
            }
            None => None,
        };
        let spawned = std::thread::Builder::new()
            .name("herald-segment-preparer".into())
            .spawn(move || match recycled {
                Some(prepared) => prepared.wipe(&shape),
                None => PreparedSegment::create(&shape),
            });
        match spawned {
            Ok(handle) => self.pending = Some(handle),
            // No thread: `take` prepares in place instead.
            Err(error) => tracing::warn!(%error, "could not start the segment preparer"),
        }
    }

    /// Keeps a retired segment (held by no reader) for the next preparation, if none is kept
    /// yet and it has the configured size; otherwise deletes its files.
    pub(crate) fn recycle(&mut self, segment: Segment) -> Result<()> {
        if self.recycled.is_some() || segment.capacity() != self.shape.segment_bytes {
            return segment.delete_files();
        }
        self.recycled = Some(segment.retire(&self.shape.dir)?);
        Ok(())
    }

    /// The prepared segment, waiting for the background work if needed; prepares in place if
    /// none was started or the background attempt failed.
    pub(crate) fn take(&mut self) -> Result<PreparedSegment> {
        if let Some(handle) = self.pending.take() {
            match handle.join() {
                Ok(Ok(prepared)) => return Ok(prepared),
                Ok(Err(error)) => {
                    tracing::warn!(%error, "background segment preparation failed; retrying in place")
                }
                Err(_) => tracing::warn!("segment preparer panicked; preparing in place"),
            }
        }
        PreparedSegment::create(&self.shape)
    }
}

impl Drop for Preparer {
    fn drop(&mut self) {
        // Wait so the prepared files are not half-made when the directory is reopened.
        if let Some(handle) = self.pending.take() {
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let dir = Path::new("/x");
        let p = segment_path(dir, 42, LOG_SUFFIX);
        assert_eq!(p, Path::new("/x/00000000000000000042.log"));
        assert_eq!(parse_segment_name("00000000000000000042.log"), Some(42));
        assert_eq!(parse_segment_name("42.log"), None);
        assert_eq!(parse_segment_name("0000000000000000004x.log"), None);
        assert_eq!(parse_segment_name("00000000000000000042.index"), None);
    }

    #[test]
    fn prepared_segment_is_allocated_not_sparse() {
        let dir = tempfile::tempdir().unwrap();
        let shape = SegmentShape {
            dir: dir.path().to_owned(),
            segment_bytes: 1 << 20,
            index_entries: 16,
            sync: true,
        };
        let seg = PreparedSegment::create(&shape)
            .unwrap()
            .activate(&shape, 7)
            .unwrap();
        let meta = fs::metadata(seg.path()).unwrap();
        assert_eq!(meta.len(), 1 << 20);
        use std::os::unix::fs::MetadataExt;
        assert!(
            meta.blocks() * 512 >= 1 << 20,
            "file is sparse: {} blocks",
            meta.blocks()
        );
        assert!(segment_path(dir.path(), 7, TIME_INDEX_SUFFIX).exists());
        assert!(!dir.path().join(format!("{PREPARED_STEM}.log")).exists());
    }
}
