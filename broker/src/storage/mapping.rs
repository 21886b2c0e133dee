//! Creating, growing and mapping the files of a segment: the log file and its two index
//! files. Both `segment` and `index` map files this way, so the helpers live apart from
//! either and the imports between them run one way (segment → index → mapping).
//!
//! A [`GrowingMap`] maps a file at its full *capacity* from the start, while the file itself
//! is only as long as the space allocated to it so far (`fallocate`, which extends the
//! length, so the file never has holes). Touching a mapped page past the end of the file is
//! SIGBUS, so nothing may load or store at or past [`GrowingMap::allocated`]: that length is
//! published (Release) only after `fallocate` returned, and only ever grows while the file is
//! mapped. Growing is cheap and runs ahead of the writer, so an idle log costs its first
//! allocation, not its capacity.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::{Advice, MmapOptions, MmapRaw};
use rustix::fs::FallocateFlags;

use super::error::{Result, StorageError};

/// A file mapped at a fixed capacity and allocated up to a growing length.
pub(crate) struct GrowingMap {
    // Kept open for the life of the mapping, for `fallocate`, `pwritev` and fsync.
    file: File,
    map: MmapRaw,
    /// The file's length: every byte below it is allocated on disk. Never above the map.
    allocated: AtomicU64,
}

impl GrowingMap {
    /// Creates (or truncates) `path`, allocates its first `initial` bytes (at most
    /// `capacity`), optionally syncs it, maps `capacity` bytes and, if `populate`, asks the
    /// kernel to populate the allocated pages for writing through the mapping.
    pub(crate) fn create(
        path: &Path,
        capacity: u64,
        initial: u64,
        sync: bool,
        populate: bool,
    ) -> Result<GrowingMap> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| StorageError::io("create", path, e))?;
        let grown = GrowingMap::map(path, file, capacity, 0)?;
        grown.grow(path, initial, false, populate)?;
        if sync {
            grown
                .file
                .sync_all()
                .map_err(|e| StorageError::io("sync", path, e))?;
        }
        Ok(grown)
    }

    /// Maps an existing file read-write: at least `capacity` bytes, and at least its length
    /// (a file made under a larger configured size keeps it). An empty file is refused.
    pub(crate) fn open(path: &Path, capacity: u64) -> Result<GrowingMap> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| StorageError::io("open", path, e))?;
        let len = file
            .metadata()
            .map_err(|e| StorageError::io("stat", path, e))?
            .len();
        if len == 0 {
            return Err(StorageError::Corrupt {
                path: path.to_owned(),
                position: 0,
                reason: "file is empty".into(),
            });
        }
        GrowingMap::map(path, file, capacity.max(len), len)
    }

    fn map(path: &Path, file: File, capacity: u64, allocated: u64) -> Result<GrowingMap> {
        let len = usize::try_from(capacity).map_err(|_| StorageError::Corrupt {
            path: path.to_owned(),
            position: 0,
            reason: format!("{capacity} bytes do not fit the address space"),
        })?;
        // Mapping past the end of the file is allowed; only touching those pages faults, and
        // `allocated` keeps every access below the end.
        let map = MmapOptions::new()
            .len(len)
            .map_raw(&file)
            .map_err(|e| StorageError::io("map", path, e))?;
        Ok(GrowingMap {
            file,
            map,
            allocated: AtomicU64::new(allocated),
        })
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Bytes mapped: the most the file may grow to.
    pub(crate) fn capacity(&self) -> u64 {
        self.map.len() as u64
    }

    /// Bytes allocated (the file's length); loads and stores stay below it.
    pub(crate) fn allocated(&self) -> u64 {
        self.allocated.load(Ordering::Acquire)
    }

    pub(crate) fn as_ptr(&self) -> *const u8 {
        self.map.as_ptr()
    }

    pub(crate) fn as_mut_ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// Allocates the file up to `to` bytes (capped at the capacity), then publishes the new
    /// length. Idempotent and safe to race with itself: `fallocate` of space already there
    /// changes nothing, and the published length only grows. With `sync`, the new length is
    /// made durable here, so the writer's next flush does not pay for the allocation.
    pub(crate) fn grow(&self, path: &Path, to: u64, sync: bool, populate: bool) -> Result<()> {
        let to = to.min(self.capacity());
        let from = self.allocated();
        if to <= from {
            return Ok(());
        }
        rustix::fs::fallocate(&self.file, FallocateFlags::empty(), from, to - from)
            .map_err(|e| StorageError::io("allocate", path, e.into()))?;
        if sync {
            self.file
                .sync_data()
                .map_err(|e| StorageError::io("sync", path, e))?;
        }
        // Populating is an optimisation: kernels before 5.14 refuse it and writes then fault
        // the pages in one by one, which is slower but correct.
        if populate
            && let Err(error) =
                self.map
                    .advise_range(Advice::PopulateWrite, from as usize, (to - from) as usize)
        {
            tracing::debug!(path = %path.display(), %error, "MADV_POPULATE_WRITE refused");
        }
        self.allocated.fetch_max(to, Ordering::AcqRel);
        Ok(())
    }

    /// Makes bytes `[from, to)` durable (msync); `to` must be allocated.
    pub(crate) fn flush_range(&self, from: u64, to: u64) -> std::io::Result<()> {
        if from >= to {
            return Ok(());
        }
        assert!(to <= self.allocated());
        self.map.flush_range(from as usize, (to - from) as usize)
    }
}
