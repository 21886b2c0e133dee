//! A segment: one memory-mapped log file and its two index files, allocated as they fill.
//!
//! Files of the segment whose first offset is `B` are `{B:020}.log`, `{B:020}.index` and
//! `{B:020}.timeindex`. Each is mapped at the segment's full size from the start, but the file
//! is only as long as the space allocated to it (`fallocate`, never a sparse `set_len`): a new
//! segment gets [`FIRST_ALLOCATION`], and the file grows in steps ahead of the write position
//! ([`allocation_lead`]), so an idle partition costs about a megabyte, not a segment. Nothing
//! loads or stores past the allocated length (see `mapping`), so no access can SIGBUS. The
//! writer asks for more on the shared allocator thread when it gets within half a lead of the
//! end, and allocates in place only if an append would cross it before that thread is done.
//! The index files grow with their log, first (see [`Segment::grow`]): a log allocated up to
//! `n` bytes always has index room for every entry its batches below `n` can make.
//!
//! Creating, allocating and syncing a file is slow (the first fsync after `fallocate` has
//! taken 120 ms), so the *next* segment is created, allocated, synced and mapped on a
//! background thread (the [`Preparer`]) under a temporary name while the active one fills;
//! a roll only renames it. Appends are written with `pwritev` (see [`Segment::write`]), not
//! through the mapping, so fresh pages are never zeroed first; readers read the mapping.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI64};
use std::thread::JoinHandle;

use super::batch::{BatchHeader, HEADER_BYTES};
use super::error::{Result, StorageError};
use super::handoff::{Arc, AtomicU64, Ordering, Published};
use super::index::{Entry, IndexFile, OffsetEntry, TimeEntry};
use super::mapping::GrowingMap;

pub(crate) const LOG_SUFFIX: &str = "log";
pub(crate) const OFFSET_INDEX_SUFFIX: &str = "index";
pub(crate) const TIME_INDEX_SUFFIX: &str = "timeindex";
/// Files being prepared carry this stem until a roll names them; recovery deletes them.
pub(crate) const PREPARED_STEM: &str = "next.prepared";
/// A retired segment kept for reuse as a later next segment; recovery deletes it.
pub(crate) const RECYCLED_STEM: &str = "recycled";

/// Bytes a new segment's log file is allocated with: what an idle partition costs, besides
/// a page for each index.
pub(crate) const FIRST_ALLOCATION: u64 = 1 << 20;
/// Allocations are rounded up to this (or to the segment's size, if smaller).
const ALLOCATION_UNIT: u64 = 1 << 20;
/// The most the log file is allocated ahead of the write position.
const MAX_LEAD: u64 = 16 << 20;

/// How far ahead of a write ending at `end` the log file should be allocated: an eighth of
/// what the segment holds, from 1 to 16 MiB. A busy segment gets larger, rarer steps (16 MiB
/// is 16 ms of appends at 1 GB/s, ahead of a step that takes well under one); a quiet one
/// stays within a megabyte of its data.
pub(crate) fn allocation_lead(end: u64) -> u64 {
    (end / 8).clamp(ALLOCATION_UNIT, MAX_LEAD)
}

/// Index slots a log allocated up to `log_bytes` can fill: one per interval, plus the first
/// batch's and the closing time entry (see `IndexCursor`).
fn index_entries_for(log_bytes: u64, interval: u64) -> usize {
    (log_bytes / interval.max(1)) as usize + 2
}

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

fn open_or_create_index<E: Entry>(
    path: &Path,
    entries: usize,
    initial: usize,
) -> Result<IndexFile<E>> {
    // An empty index file holds no entries (its allocation never reached the disk): make it
    // anew like a missing one, rather than failing the segment as if its log were empty.
    if fs::metadata(path).is_ok_and(|m| m.len() > 0) {
        IndexFile::open(path, entries)
    } else {
        IndexFile::create(path, entries, initial, false)
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// The broker-wide thread that grows active segments ahead of their writers, one job per
/// segment at most (`Segment::growing`), in a bounded queue. `None` if it cannot run; writers
/// then allocate in place.
fn allocator() -> Option<&'static crossbeam_channel::Sender<Job>> {
    static ALLOCATOR: OnceLock<Option<crossbeam_channel::Sender<Job>>> = OnceLock::new();
    ALLOCATOR
        .get_or_init(|| {
            let (tx, rx) = crossbeam_channel::bounded::<Job>(4096);
            let spawned = std::thread::Builder::new()
                .name("herald-allocator".into())
                .spawn(move || {
                    for job in rx {
                        job();
                    }
                });
            match spawned {
                Ok(_) => Some(tx),
                Err(error) => {
                    tracing::warn!(%error, "could not start the segment allocator; appends allocate in place");
                    None
                }
            }
        })
        .as_ref()
}

/// One segment. Shared between the writer and readers through `Arc`; the writer is the only
/// one that writes, and only above the committed length.
pub(crate) struct Segment {
    base_offset: u64,
    path: PathBuf,
    log: GrowingMap,
    /// Bytes holding committed batches; see `handoff`.
    committed: AtomicU64,
    /// Largest record timestamp committed in this segment (`i64::MIN` while empty). Stored
    /// before the commit is published, so readers may skip segments by it.
    max_timestamp: AtomicI64,
    pub(crate) offsets: IndexFile<OffsetEntry>,
    pub(crate) times: IndexFile<TimeEntry>,
    /// Bytes from the start whose pages are all in the page cache (a reused, wiped segment):
    /// appends there copy through the mapping, others use `pwritev` (see [`Segment::write`]).
    resident: u64,
    /// A background growth of this segment is queued or running.
    growing: AtomicBool,
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
    /// Opens an existing segment's files, mapped at the configured size (or the file's, if
    /// larger) so that it can grow if it becomes the active one. Missing index files are
    /// created empty; the caller then rebuilds them by scanning.
    pub(crate) fn open(shape: &SegmentShape, base_offset: u64) -> Result<Segment> {
        let dir = &shape.dir;
        let path = segment_path(dir, base_offset, LOG_SUFFIX);
        let log = GrowingMap::open(&path, shape.segment_bytes)?;
        let initial = index_entries_for(log.allocated(), shape.index_interval);
        let offsets = open_or_create_index(
            &segment_path(dir, base_offset, OFFSET_INDEX_SUFFIX),
            shape.index_entries,
            initial,
        )?;
        let times = open_or_create_index(
            &segment_path(dir, base_offset, TIME_INDEX_SUFFIX),
            shape.index_entries,
            initial,
        )?;
        Ok(Segment {
            base_offset,
            path,
            log,
            committed: AtomicU64::new(0),
            max_timestamp: AtomicI64::new(i64::MIN),
            offsets,
            times,
            resident: 0,
            growing: AtomicBool::new(false),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The most bytes the segment can hold.
    pub(crate) fn capacity(&self) -> u64 {
        self.log.capacity()
    }

    /// Bytes of the log file allocated so far (its length); nothing is read or written past
    /// them.
    pub(crate) fn allocated(&self) -> u64 {
        self.log.allocated()
    }

    /// Disk allocated to the segment's three files.
    pub(crate) fn allocated_bytes(&self) -> u64 {
        self.log.allocated() + self.offsets.allocated_bytes() + self.times.allocated_bytes()
    }

    /// Allocates the log file up to `to` bytes (rounded up to the allocation unit, at most
    /// the capacity), and first its indexes for every entry such a log can make, so that the
    /// writer, which checks the log's allocated length alone, never finds an index short.
    /// Safe to run on any thread, and to race with itself (see `GrowingMap::grow`).
    pub(crate) fn grow(&self, to: u64, index_interval: u64, sync: bool) -> Result<()> {
        let to = to
            .div_ceil(ALLOCATION_UNIT)
            .saturating_mul(ALLOCATION_UNIT)
            .min(self.capacity());
        let entries = index_entries_for(to, index_interval);
        self.offsets.grow(entries, sync)?;
        self.times.grow(entries, sync)?;
        self.log.grow(&self.path, to, sync, false)
    }

    /// Asks the allocator thread to grow `this` to `to` bytes, unless it is already growing.
    /// Never waits: if the thread is busy or gone, the writer allocates in place when it
    /// must. The receiver returned disconnects once the job has run (or was dropped), so the
    /// writer can make sure no growth of its files outlives it.
    pub(crate) fn grow_in_background(
        this: &Arc<Self>,
        to: u64,
        index_interval: u64,
        sync: bool,
    ) -> Option<crossbeam_channel::Receiver<()>> {
        if this.growing.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return None;
        }
        let segment = this.clone();
        let (done, finished) = crossbeam_channel::bounded::<()>(0);
        let job: Job = Box::new(move || {
            let _done = done;
            if let Err(error) = segment.grow(to, index_interval, sync) {
                // The writer meets the same error, as its append's answer, if it needs the
                // space before the disk has it.
                tracing::debug!(%error, "background segment allocation failed");
            }
            segment
                .growing
                .store(false, std::sync::atomic::Ordering::Release);
        });
        if allocator().is_none_or(|tx| tx.try_send(job).is_err()) {
            this.growing
                .store(false, std::sync::atomic::Ordering::Release);
            return None;
        }
        Some(finished)
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
        assert!(from <= to && to <= self.allocated());
        // Safety: allocated, so within the file and the mapping; bytes below the committed length never change
        // while the segment exists, and bytes above it are touched by the writer alone.
        unsafe {
            std::slice::from_raw_parts(self.log.as_ptr().add(from as usize), (to - from) as usize)
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
    /// batch's base offset). The range must be above everything published, and allocated.
    ///
    /// A page the file has never had must be zeroed by the kernel before a store through a
    /// mapping can touch it, while a `pwritev` that covers the whole page fills it directly:
    /// with fresh segments, that zeroing took a third of the machine's CPU at 260 MB/s of
    /// appends. So fresh segments are written with `pwritev`, and reused ones, whose pages
    /// are all resident, by copying through the mapping, which is cheaper still. Readers
    /// read the same page-cache pages through the mapping either way.
    pub(crate) fn write(&self, position: u64, stamp: &[u8], bytes: &[u8]) -> Result<()> {
        assert!(stamp.len() <= bytes.len());
        let end = position + bytes.len() as u64;
        assert!(end <= self.allocated());
        if end <= self.resident {
            // Safety: allocated; above the committed length, so no reader looks at it, and
            // the single writer is the only caller.
            unsafe {
                let at = self.log.as_mut_ptr().add(position as usize);
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
            let written = rustix::io::pwritev(self.log.file(), slices, at)
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
        assert!(to <= self.allocated());
        // Safety: allocated; recovery runs before any reader can see these bytes.
        unsafe {
            std::ptr::write_bytes(
                self.log.as_mut_ptr().add(from as usize),
                0,
                (to - from) as usize,
            )
        };
        self.flush_range(from, to)
    }

    /// Makes bytes `[from, to)` durable (msync).
    pub(crate) fn flush_range(&self, from: u64, to: u64) -> Result<()> {
        self.log
            .flush_range(from, to)
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
            log,
            mut offsets,
            mut times,
            ..
        } = self;
        let path = move_files(&path, &mut offsets, &mut times, |suffix| {
            stem_path(dir, RECYCLED_STEM, suffix)
        })?;
        let resident = log.allocated();
        Ok(PreparedSegment {
            path,
            log,
            offsets,
            times,
            resident,
        })
    }
}

/// A segment's files, made ready under temporary names before their base offset is known.
pub(crate) struct PreparedSegment {
    path: PathBuf,
    log: GrowingMap,
    offsets: IndexFile<OffsetEntry>,
    times: IndexFile<TimeEntry>,
    /// See `Segment::resident`.
    resident: u64,
}

/// How big to make a new segment and whether to sync what gets created.
#[derive(Debug, Clone)]
pub(crate) struct SegmentShape {
    pub(crate) dir: PathBuf,
    pub(crate) segment_bytes: u64,
    /// Index slots per segment (its capacity, allocated as the log grows).
    pub(crate) index_entries: usize,
    /// Bytes of log between two sparse index entries.
    pub(crate) index_interval: u64,
    /// Whether creation syncs files and the directory (false for fsync policy `never`).
    pub(crate) sync: bool,
}

impl PreparedSegment {
    fn allocated_bytes(&self) -> u64 {
        self.log.allocated() + self.offsets.allocated_bytes() + self.times.allocated_bytes()
    }

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
        let allocated = self.log.allocated();
        // Safety: allocated; the segment was retired while the writer owned its last `Arc`,
        // so no reader can see this mapping; only this thread touches it until `take` hands
        // it back.
        unsafe { std::ptr::write_bytes(self.log.as_mut_ptr(), 0, allocated as usize) };
        self.offsets.truncate(0);
        self.times.truncate(0);
        if shape.sync {
            self.log
                .flush_range(0, allocated)
                .map_err(|e| StorageError::io("flush", &self.path, e))?;
            self.offsets.flush_all()?;
            self.times.flush_all()?;
        }
        Ok(self)
    }

    pub(crate) fn create(shape: &SegmentShape) -> Result<PreparedSegment> {
        let path = |suffix| stem_path(&shape.dir, PREPARED_STEM, suffix);
        let first = FIRST_ALLOCATION.min(shape.segment_bytes);
        let entries = index_entries_for(first, shape.index_interval);
        let offsets = IndexFile::create(
            &path(OFFSET_INDEX_SUFFIX),
            shape.index_entries,
            entries,
            shape.sync,
        )?;
        let times = IndexFile::create(
            &path(TIME_INDEX_SUFFIX),
            shape.index_entries,
            entries,
            shape.sync,
        )?;
        let log = GrowingMap::create(
            &path(LOG_SUFFIX),
            shape.segment_bytes,
            first,
            shape.sync,
            false,
        )?;
        Ok(PreparedSegment {
            path: path(LOG_SUFFIX),
            log,
            offsets,
            times,
            resident: 0,
        })
    }

    /// Names the prepared files for `base_offset` and returns the segment. The directory is
    /// synced (when `shape.sync`) so the names are durable before any data lands in them.
    pub(crate) fn activate(self, shape: &SegmentShape, base_offset: u64) -> Result<Segment> {
        let PreparedSegment {
            path,
            log,
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
            log,
            committed: AtomicU64::new(0),
            max_timestamp: AtomicI64::new(i64::MIN),
            offsets,
            times,
            resident,
            growing: AtomicBool::new(false),
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
    /// Disk allocated to the prepared and the recycled segment: the log's files beyond its
    /// segment table, for readers to report.
    spare: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Preparer {
    pub(crate) fn new(shape: SegmentShape) -> Self {
        Preparer {
            shape,
            pending: None,
            recycled: None,
            spare: Default::default(),
        }
    }

    /// See `spare`; shared with the log's readers.
    pub(crate) fn spare(&self) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
        self.spare.clone()
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
        let spare = self.spare.clone();
        let recycled = self.recycled.take().map(|r| {
            let bytes = r.allocated_bytes();
            (r.rename_to_prepared(&shape.dir), bytes)
        });
        let recycled = match recycled {
            Some((Ok(prepared), _)) => Some(prepared),
            Some((Err(error), bytes)) => {
                // Its files keep a leftover name that the next open removes.
                tracing::warn!(%error, "could not reuse a retired segment; creating a new one");
                spare.fetch_sub(bytes, std::sync::atomic::Ordering::Relaxed);
                None
            }
            None => None,
        };
        let spawned = std::thread::Builder::new()
            .name("herald-segment-preparer".into())
            .spawn(move || {
                let relaxed = std::sync::atomic::Ordering::Relaxed;
                match recycled {
                    Some(prepared) => {
                        let bytes = prepared.allocated_bytes();
                        prepared.wipe(&shape).inspect_err(|_| {
                            spare.fetch_sub(bytes, relaxed);
                        })
                    }
                    None => PreparedSegment::create(&shape).inspect(|prepared| {
                        spare.fetch_add(prepared.allocated_bytes(), relaxed);
                    }),
                }
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
        let retired = segment.retire(&self.shape.dir)?;
        self.spare.fetch_add(
            retired.allocated_bytes(),
            std::sync::atomic::Ordering::Relaxed,
        );
        self.recycled = Some(retired);
        Ok(())
    }

    /// The prepared segment, waiting for the background work if needed; prepares in place if
    /// none was started or the background attempt failed.
    pub(crate) fn take(&mut self) -> Result<PreparedSegment> {
        if let Some(handle) = self.pending.take() {
            match handle.join() {
                Ok(Ok(prepared)) => {
                    self.spare.fetch_sub(
                        prepared.allocated_bytes(),
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    return Ok(prepared);
                }
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
            index_interval: 1 << 16,
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
