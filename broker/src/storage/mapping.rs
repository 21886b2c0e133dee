//! Creating and mapping the preallocated files of a segment: the log file and its two index
//! files. Both `segment` and `index` map files this way, so the helpers live apart from
//! either and the imports between them run one way (segment → index → mapping).

use std::fs::{File, OpenOptions};
use std::path::Path;

use memmap2::{Advice, MmapRaw};
use rustix::fs::FallocateFlags;

use super::error::{Result, StorageError};

/// Creates (or truncates) `path`, allocates `bytes` for it, optionally syncs it, maps it and,
/// if `populate`, asks the kernel to populate the pages for writing through the mapping.
pub(crate) fn create_mapped(
    path: &Path,
    bytes: u64,
    sync: bool,
    populate: bool,
) -> Result<(File, MmapRaw)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| StorageError::io("create", path, e))?;
    rustix::fs::fallocate(&file, FallocateFlags::empty(), 0, bytes)
        .map_err(|e| StorageError::io("allocate", path, e.into()))?;
    if sync {
        file.sync_all()
            .map_err(|e| StorageError::io("sync", path, e))?;
    }
    let map = MmapRaw::map_raw(&file).map_err(|e| StorageError::io("map", path, e))?;
    // Populating is an optimisation: kernels before 5.14 refuse it and writes then fault the
    // pages in one by one, which is slower but correct.
    if populate && let Err(error) = map.advise(Advice::PopulateWrite) {
        tracing::debug!(path = %path.display(), %error, "MADV_POPULATE_WRITE refused");
    }
    Ok((file, map))
}

/// Maps an existing file read-write at its current length.
pub(crate) fn map_existing(path: &Path) -> Result<(File, MmapRaw)> {
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
    let map = MmapRaw::map_raw(&file).map_err(|e| StorageError::io("map", path, e))?;
    Ok((file, map))
}
