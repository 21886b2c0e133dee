//! Opening a partition directory: lock, checkpoint, scan, repair.
//!
//! A **checkpoint** (`checkpoint`, replaced atomically) names a segment and a byte position
//! in it: every segment before that one is sealed and was flushed, with its indexes, before
//! the checkpoint was written; that segment itself is good up to the position. The writer
//! records one at every roll (position 0 of the new segment) and at a clean close (the exact
//! end, marked `clean`).
//!
//! On open, sealed segments before the checkpoint are trusted: their end is found by hopping
//! batch headers from their last index entry, no CRC. Every segment from the checkpoint on is
//! **scanned**: frame, expected base offset and CRC of each batch, rebuilding the indexes. The
//! scan stops at the first zero header (the end) or at the first bad batch (damage). Then:
//!
//! - if any valid batch lies beyond the stop (later in the segment, or in a later segment),
//!   the log is damaged in the middle: opening fails with an error naming the file and byte;
//! - otherwise the stop is a **torn tail** — a write the crash interrupted, never
//!   acknowledged — and the log is cut there: the garbage is zeroed, later (empty) segments
//!   are deleted, a warning is logged.
//!
//! A checkpoint also records the log's **start offset** (retention writes a new checkpoint
//! before it deletes segments) and whether it is **durable** (synced after the prefix it
//! names was flushed). Before anything is cut, the log found is held against it:
//!
//! - the segment at the start offset must exist (segments below it are retention's
//!   leftovers and are deleted): a missing first segment is damage, not retention;
//! - a gap between segments is an error naming the missing file;
//! - a log that stops short of what a durable checkpoint vouches for (a truncated segment
//!   after a clean stop, a damaged sealed segment at the end) is an error, never a torn tail.
//!
//! Of a sealed segment, only the batches after its last index entry are CRC-checked here
//! (to find its end); every read checks the batches it returns (`LogReader::read`), so
//! the rest are never served unchecked either.
//!
//! Opening the same damaged directory twice gives the same result: a cut leaves a log that
//! scans clean, and an error changes no segment file.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

use super::LogConfig;
use super::batch::{self, BatchHeader, HEADER_BYTES, MAGIC_PATTERN, MAGIC_PATTERN_AT};
use super::error::{Result, StorageError};
use super::handoff::{Arc, Published};
use super::index_cursor::IndexCursor;
use super::segment::{
    LOG_SUFFIX, OFFSET_INDEX_SUFFIX, PREPARED_STEM, PreparedSegment, RECYCLED_STEM, Segment,
    SegmentShape, TIME_INDEX_SUFFIX, parse_segment_name, segment_path, sync_dir,
};

pub(crate) const CHECKPOINT_FILE: &str = "checkpoint";
const CHECKPOINT_TMP: &str = "checkpoint.tmp";
const LOCK_FILE: &str = "lock";
const CHECKPOINT_MAGIC: u32 = u32::from_le_bytes(*b"HRCP");
/// Version 1 (40 bytes) is read, never written: data dirs of earlier builds open as before.
const CHECKPOINT_V1: u32 = 1;
const CHECKPOINT_V1_BYTES: usize = 40;
const CHECKPOINT_VERSION: u32 = 2;
const CHECKPOINT_BYTES: usize = 48;

/// A durable promise about a prefix of the log (see the module docs).
///
/// On disk, little-endian; version 2, 48 bytes:
///
/// | at | size | field |
/// |---:|---:|---|
/// | 0 | 4 | magic `HRCP` |
/// | 4 | 4 | version u32 = 2 |
/// | 8 | 8 | `segment_base` u64 |
/// | 16 | 8 | `position` u64 |
/// | 24 | 8 | `next_offset` u64 |
/// | 32 | 1 | `clean` (0 or 1) |
/// | 33 | 1 | `durable` (0 or 1) |
/// | 34 | 2 | zero |
/// | 36 | 8 | `start_offset` u64 |
/// | 44 | 4 | CRC-32C of bytes 0..44 |
///
/// Version 1 (40 bytes) is the same up to byte 33, then zeros to 36 and the CRC of 0..36 at
/// 36; it has no start offset, and counts as durable only when clean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    pub(crate) segment_base: u64,
    pub(crate) position: u64,
    pub(crate) next_offset: u64,
    /// Written by a clean close: nothing was appended after `position`.
    pub(crate) clean: bool,
    /// Written after the prefix it names was flushed, and synced itself (every checkpoint
    /// but a roll's under fsync `never`): the prefix survives a power loss, so a log found
    /// shorter than it is damage, not a lost unflushed tail.
    pub(crate) durable: bool,
    /// The log's first offset when it was written (retention moves it, and writes a new
    /// checkpoint before it deletes anything). Tells a missing first segment apart from
    /// retention. `None` in a version-1 checkpoint.
    pub(crate) start_offset: Option<u64>,
}

impl Checkpoint {
    fn encode(&self) -> [u8; CHECKPOINT_BYTES] {
        let mut b = [0u8; CHECKPOINT_BYTES];
        b[0..4].copy_from_slice(&CHECKPOINT_MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&CHECKPOINT_VERSION.to_le_bytes());
        b[8..16].copy_from_slice(&self.segment_base.to_le_bytes());
        b[16..24].copy_from_slice(&self.position.to_le_bytes());
        b[24..32].copy_from_slice(&self.next_offset.to_le_bytes());
        b[32] = u8::from(self.clean);
        b[33] = u8::from(self.durable);
        let start = self.start_offset.unwrap_or(self.segment_base);
        b[36..44].copy_from_slice(&start.to_le_bytes());
        let crc = crc32c::crc32c(&b[..44]);
        b[44..48].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Option<Checkpoint> {
        let u32_at = |at: usize| {
            b.get(at..at + 4)
                .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
        };
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        if u32_at(0)? != CHECKPOINT_MAGIC {
            return None;
        }
        let (version, len) = (u32_at(4)?, b.len());
        let v1 = version == CHECKPOINT_V1 && len == CHECKPOINT_V1_BYTES;
        let v2 = version == CHECKPOINT_VERSION && len == CHECKPOINT_BYTES;
        let valid = if v1 {
            u32_at(36)? == crc32c::crc32c(&b[..36]) && b[32] <= 1 && b[33..36] == [0; 3]
        } else {
            v2 && u32_at(44)? == crc32c::crc32c(&b[..44])
                && b[32] <= 1
                && b[33] <= 1
                && b[34..36] == [0; 2]
        };
        valid.then(|| Checkpoint {
            segment_base: u64_at(8),
            position: u64_at(16),
            next_offset: u64_at(24),
            clean: b[32] == 1,
            durable: if v1 { b[32] == 1 } else { b[33] == 1 },
            start_offset: v2.then(|| u64_at(36)),
        })
    }

    /// Replaces the checkpoint atomically: write a temporary file, sync, rename, sync the
    /// directory (the syncs only when `sync`).
    pub(crate) fn write(&self, dir: &Path, sync: bool) -> Result<()> {
        let tmp = dir.join(CHECKPOINT_TMP);
        let mut file = File::create(&tmp).map_err(|e| StorageError::io("create", &tmp, e))?;
        file.write_all(&self.encode())
            .map_err(|e| StorageError::io("write", &tmp, e))?;
        if sync {
            file.sync_all()
                .map_err(|e| StorageError::io("sync", &tmp, e))?;
        }
        let path = dir.join(CHECKPOINT_FILE);
        fs::rename(&tmp, &path).map_err(|e| StorageError::io("rename", &path, e))?;
        if sync {
            sync_dir(dir)?;
        }
        Ok(())
    }

    /// The directory's checkpoint; a missing or unreadable one means "scan everything".
    pub(crate) fn read(dir: &Path) -> Option<Checkpoint> {
        let path = dir.join(CHECKPOINT_FILE);
        let mut bytes = Vec::with_capacity(CHECKPOINT_BYTES);
        let read = File::open(&path)
            .and_then(|f| f.take(CHECKPOINT_BYTES as u64 + 1).read_to_end(&mut bytes));
        match read {
            Ok(_) => {
                let checkpoint = Checkpoint::decode(&bytes);
                if checkpoint.is_none() {
                    tracing::warn!(path = %path.display(), "ignoring a damaged checkpoint; scanning every segment");
                }
                checkpoint
            }
            Err(_) => None,
        }
    }
}

/// Creates `dir` if needed and takes an exclusive lock on it, so two writers (two brokers on
/// one data directory) can never interleave appends.
pub(crate) fn lock_dir(dir: &Path) -> Result<File> {
    match fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => {
            return Err(StorageError::NotADirectory {
                path: dir.to_owned(),
            });
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(|e| StorageError::io("create directory", dir, e))?;
        }
        Err(e) => return Err(StorageError::io("stat", dir, e)),
    }
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StorageError::io("open", &path, e))?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
        |e| {
            StorageError::io(
                "lock (is another writer using this partition directory?)",
                &path,
                e.into(),
            )
        },
    )?;
    Ok(file)
}

/// What recovery hands the writer.
pub(crate) struct Recovered {
    pub(crate) segments: Vec<Arc<Segment>>,
    /// Bytes of the active (last) segment in use.
    pub(crate) write_pos: u64,
    pub(crate) next_offset: u64,
    pub(crate) indexer: IndexCursor,
    /// The checkpoint recovery wrote.
    pub(crate) checkpoint: Checkpoint,
}

/// Why a scan stopped.
#[derive(Debug)]
enum Stop {
    /// A zeroed header, or the end of the file: no more batches.
    End,
    /// Bytes that are not a valid next batch.
    Damaged(String),
}

struct Scan {
    end: u64,
    next_offset: u64,
    indexer: IndexCursor,
    stop: Stop,
}

/// Validates batches of `segment` from `from` on; see the module docs.
fn scan(segment: &Segment, from: u64, mut next_offset: u64, mut indexer: IndexCursor) -> Scan {
    // The file's end, not the segment's size: pages past it are not to be touched.
    let file_end = segment.allocated();
    let mut at = from;
    let stop = loop {
        let Some(header) = segment.header_at(at, file_end) else {
            let rest = segment.bytes(at, file_end);
            break if rest.iter().all(|&b| b == 0) {
                Stop::End
            } else {
                Stop::Damaged("truncated batch header at the end of the file".into())
            };
        };
        if segment
            .bytes(at, at + HEADER_BYTES as u64)
            .iter()
            .all(|&b| b == 0)
        {
            break Stop::End;
        }
        if let Err(e) = header.check_frame((file_end - at) as usize) {
            break Stop::Damaged(e.to_string());
        }
        if header.base_offset != next_offset {
            break Stop::Damaged(format!(
                "batch has base offset {} where {next_offset} was expected",
                header.base_offset
            ));
        }
        let end = at + u64::from(header.batch_len);
        let actual = batch::crc_of(segment.bytes(at, end));
        if actual != header.crc {
            break Stop::Damaged(format!(
                "CRC mismatch (stored {:#010x}, computed {actual:#010x})",
                header.crc
            ));
        }
        indexer.on_batch(segment, at, &header);
        next_offset = header.next_offset();
        at = end;
    };
    Scan {
        end: at,
        next_offset,
        indexer,
        stop,
    }
}

/// The position of the first batch at or after `from` whose frame and CRC check out.
fn find_valid_batch(segment: &Segment, from: u64) -> Option<u64> {
    let file_end = segment.allocated();
    let search_from = from + MAGIC_PATTERN_AT as u64;
    if search_from >= file_end {
        return None;
    }
    let haystack = segment.bytes(search_from, file_end);
    memchr::memmem::find_iter(haystack, &MAGIC_PATTERN)
        .map(|hit| from + hit as u64)
        .find(|&at| {
            segment
                .header_at(at, file_end)
                .is_some_and(|h: BatchHeader| {
                    h.check_frame((file_end - at) as usize).is_ok()
                        && batch::crc_of(segment.bytes(at, at + u64::from(h.batch_len))) == h.crc
                })
        })
}

/// The end of the last non-zero 4 KiB block at or after `from` (or `from` if none).
fn dirty_end(segment: &Segment, from: u64) -> u64 {
    const BLOCK: u64 = 4096;
    let file_end = segment.allocated();
    let mut end = file_end;
    while end > from {
        let start = end.saturating_sub(BLOCK).max(from);
        if segment.bytes(start, end).iter().any(|&b| b != 0) {
            return end;
        }
        end = start;
    }
    from
}

/// Finds where a trusted (sealed, checkpointed) segment ends by hopping from its last index
/// entry. `None` if anything disagrees; the caller then scans the segment instead.
fn trusted_end(segment: &Segment, interval: u64) -> Option<(u64, u64, IndexCursor)> {
    let last = segment.offsets.last()?;
    segment.times.last()?;
    let file_end = segment.allocated();
    let mut at = u64::from(last.position);
    let mut next_offset = segment.base_offset() + u64::from(last.relative_offset);
    let mut hops = 0;
    while let Some(header) = segment.header_at(at, file_end) {
        if header.batch_len == 0 && header.magic == 0 {
            break;
        }
        // The hop covers at most an index interval and the last batch: checking their CRCs
        // is cheap, and the record count that sets the next offset is under the CRC.
        if header.check_frame((file_end - at) as usize).is_err()
            || header.base_offset != next_offset
            || batch::crc_of(segment.bytes(at, at + u64::from(header.batch_len))) != header.crc
        {
            return None;
        }
        next_offset = header.next_offset();
        at += u64::from(header.batch_len);
        hops += 1;
    }
    // The rest of a sealed segment is its unused room, all zeros; anything else is a batch
    // the hop could not reach (a damaged header): scan instead.
    // The time index's entries must lie below the end too (its closing entry names the last
    // batch): one past it means the hop stopped early.
    if hops == 0
        || segment
            .times
            .last()
            .is_some_and(|e| u64::from(e.position) >= at)
        || segment.bytes(at, file_end).iter().any(|&b| b != 0)
    {
        return None;
    }
    let indexer = IndexCursor::resume(segment, at, interval);
    Some((at, next_offset, indexer))
}

/// Removes files an earlier run left behind: a (half-)prepared segment, a retired segment
/// kept for reuse, and a temporary checkpoint.
fn remove_leftovers(dir: &Path) -> Result<()> {
    let mut leftovers = vec![dir.join(CHECKPOINT_TMP)];
    for suffix in [LOG_SUFFIX, OFFSET_INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
        leftovers.push(dir.join(format!("{PREPARED_STEM}.{suffix}")));
        leftovers.push(dir.join(format!("{RECYCLED_STEM}.{suffix}")));
    }
    for path in leftovers {
        match fs::remove_file(&path) {
            Ok(()) => tracing::debug!(path = %path.display(), "removed leftover file"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::io("delete", &path, e)),
        }
    }
    Ok(())
}

pub(crate) fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let mut bases = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| StorageError::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io("list", dir, e))?;
        if let Some(base) = entry.file_name().to_str().and_then(parse_segment_name) {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

fn delete_segment_files(dir: &Path, base: u64) -> Result<()> {
    for suffix in [LOG_SUFFIX, OFFSET_INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
        let path = segment_path(dir, base, suffix);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::io("delete", &path, e)),
        }
    }
    Ok(())
}

/// Whether the segment file `base` holds any valid batch (an unreadable file holds none).
fn holds_batches(shape: &SegmentShape, base: u64) -> Result<Option<u64>> {
    match Segment::open(shape, base) {
        Ok(segment) => Ok(find_valid_batch(&segment, 0)),
        Err(StorageError::Corrupt { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The error for a missing segment file: the one whose first offset is `base`.
fn missing(dir: &Path, base: u64, why: String) -> StorageError {
    StorageError::Corrupt {
        path: segment_path(dir, base, LOG_SUFFIX),
        position: 0,
        reason: format!("the file is missing: {why}"),
    }
}

/// The error for a log that ends at `end` where it should go on to `wanted` (a later
/// segment, or what the checkpoint vouches for). Names the file that should hold offset
/// `end`: the last segment if it is short (its file ends where its batches do, below the
/// configured size: it was cut, since allocation always runs ahead of the batches), else the
/// missing next one.
fn gap(
    dir: &Path,
    shape: &SegmentShape,
    last: Option<&Arc<Segment>>,
    active: &Option<(u64, IndexCursor)>,
    end: u64,
    wanted: u64,
) -> StorageError {
    if let (Some(last), Some((last_end, _))) = (last, active)
        && *last_end == last.allocated()
        && last.allocated() < shape.segment_bytes
    {
        return StorageError::Corrupt {
            path: last.path().to_owned(),
            position: *last_end,
            reason: format!(
                "the file is cut short: its batches end at offset {end}, at the file's end, but the log goes on to offset {wanted}"
            ),
        };
    }
    let after = last.map_or_else(String::new, |last| format!(" in {}", last.path().display()));
    missing(
        dir,
        end,
        format!("the log ends at offset {end}{after} but goes on to offset {wanted}"),
    )
}

/// Opens every segment of the directory and brings the log to a consistent state.
pub(crate) fn recover(config: &LogConfig, shape: &SegmentShape) -> Result<Recovered> {
    let dir = shape.dir.as_path();
    let interval = config.index_interval_bytes;
    remove_leftovers(dir)?;
    let mut bases = list_segments(dir)?;
    let checkpoint = Checkpoint::read(dir);
    // A durable checkpoint's promise: the log holds at least offsets up to here.
    let vouched = checkpoint
        .filter(|c| c.durable)
        .map_or(0, |c| c.next_offset);
    if let Some(c) = checkpoint
        && let Some(start) = c.start_offset
    {
        // Retention records the new start before it deletes: segments below it are its
        // leftovers. The segment at the start must be there, unless the log holds nothing.
        if !bases.contains(&start) && (c.next_offset > start || bases.iter().any(|&b| b > start)) {
            return Err(missing(
                dir,
                start,
                format!(
                    "the checkpoint says the log starts at offset {start} and holds offsets up to {}",
                    c.next_offset
                ),
            ));
        }
        for &base in bases.iter().filter(|&&b| b < start) {
            tracing::warn!(dir = %dir.display(), base, start, "deleting a segment retention had already removed from the log");
            delete_segment_files(dir, base)?;
        }
        bases.retain(|&b| b >= start);
    }
    if bases.is_empty()
        && let Some(c) = checkpoint
        && c.next_offset > c.start_offset.unwrap_or(0)
    {
        return Err(missing(
            dir,
            c.start_offset.unwrap_or(c.segment_base),
            format!(
                "no segment file is left, but the checkpoint says the log holds offsets up to {}",
                c.next_offset
            ),
        ));
    }
    let mut segments: Vec<Arc<Segment>> = Vec::new();
    let mut next_offset = bases
        .first()
        .copied()
        .or(checkpoint.map(|c| c.next_offset))
        .unwrap_or(0);
    let mut active: Option<(u64, IndexCursor)> = None;

    for (i, &base) in bases.iter().enumerate() {
        let later = &bases[i + 1..];
        if base != next_offset {
            // A segment that does not continue the log may only be an empty leftover, and
            // only if no durable checkpoint vouches for offsets past the gap.
            let holds = holds_batches(shape, base)?;
            if base > next_offset && (holds.is_some() || vouched > next_offset) {
                return Err(gap(dir, shape, segments.last(), &active, next_offset, base));
            }
            if let Some(at) = holds {
                return Err(StorageError::Corrupt {
                    path: segment_path(dir, base, LOG_SUFFIX),
                    position: at,
                    reason: format!(
                        "segment starts at offset {base} but the log before it ends at offset {next_offset}{}",
                        segments
                            .last()
                            .map_or_else(String::new, |s| format!(" in {}", s.path().display()))
                    ),
                });
            }
            tracing::warn!(dir = %dir.display(), base, "deleting an empty segment that does not continue the log");
            delete_segment_files(dir, base)?;
            continue;
        }
        let segment = match Segment::open(shape, base) {
            Ok(segment) => segment,
            // An empty file: a crash between creating and allocating a segment.
            Err(StorageError::Corrupt { .. }) if later.is_empty() => {
                tracing::warn!(dir = %dir.display(), base, "deleting an empty segment file");
                delete_segment_files(dir, base)?;
                continue;
            }
            Err(e) => return Err(e),
        };
        // The segment before this one is sealed: close its time index so a later open
        // can trust it without a scan.
        if let (Some((_, mut previous)), Some(sealed)) = (active.take(), segments.last()) {
            previous.close(sealed);
            sealed.times.flush()?;
        }
        let trusted = checkpoint.is_some_and(|c| base < c.segment_base);
        if trusted && let Some((end, next, indexer)) = trusted_end(&segment, interval) {
            segment.set_max_timestamp(indexer.max_timestamp);
            segment
                .committed()
                .store(end, super::handoff::Ordering::Release);
            next_offset = next;
            active = Some((end, indexer));
            segments.push(Arc::new(segment));
            continue;
        }
        // Scan from the checkpoint's position in its own segment, from 0 in later ones, and
        // from 0 if the file no longer holds the bytes the checkpoint vouched for or an index
        // was lost (the first batch always has entries in both).
        let from = match checkpoint {
            Some(c)
                if c.segment_base == base
                    && !trusted
                    && c.position <= segment.allocated()
                    && segment.offsets.len() > 0
                    && segment.times.len() > 0 =>
            {
                next_offset = c.next_offset;
                c.position
            }
            _ => 0,
        };
        let indexer = IndexCursor::resume(&segment, from, interval);
        let result = scan(&segment, from, next_offset, indexer);
        let clean_end = checkpoint.is_some_and(|c| {
            c.clean && c.segment_base == base && c.position == result.end && from == result.end
        }) && matches!(result.stop, Stop::End);
        if !clean_end && let Some(at) = find_valid_batch(&segment, result.end) {
            return Err(StorageError::Corrupt {
                path: segment.path().to_owned(),
                position: result.end,
                reason: format!(
                    "{} but a valid batch follows at byte {at}",
                    match &result.stop {
                        Stop::End => "the log stops here (zeroed bytes)".to_string(),
                        Stop::Damaged(reason) => format!("damaged batch: {reason}"),
                    }
                ),
            });
        }
        // A log that stops short of what a durable checkpoint vouches for lost bytes that
        // were flushed: that is damage, never a torn tail to cut.
        let stopped_early = match &result.stop {
            Stop::Damaged(_) => true,
            Stop::End => checkpoint.is_some_and(|c| c.segment_base == base),
        };
        if stopped_early && result.next_offset < vouched {
            return Err(StorageError::Corrupt {
                path: segment.path().to_owned(),
                position: result.end,
                reason: format!(
                    "{}; the log ends at offset {} here, but its checkpoint vouches for offsets up to {} (the file was cut short or damaged)",
                    match &result.stop {
                        Stop::End =>
                            "no batch follows (zeroed bytes or the end of the file)".to_string(),
                        Stop::Damaged(reason) => format!("damaged batch: {reason}"),
                    },
                    result.next_offset,
                    vouched
                ),
            });
        }
        if let Stop::Damaged(reason) = &result.stop {
            for &base in later {
                if let Some(at) = holds_batches(shape, base)? {
                    return Err(StorageError::Corrupt {
                        path: segment.path().to_owned(),
                        position: result.end,
                        reason: format!(
                            "damaged batch ({reason}) but valid batches follow in {} at byte {at}",
                            segment_path(dir, base, LOG_SUFFIX).display()
                        ),
                    });
                }
            }
            let garbage_end = dirty_end(&segment, result.end);
            tracing::warn!(path = %segment.path().display(), position = result.end,
                discarded_bytes = garbage_end - result.end, %reason, "cut a torn tail");
            segment.zero(result.end, garbage_end)?;
            for &base in later {
                delete_segment_files(dir, base)?;
            }
        }
        segment.set_max_timestamp(result.indexer.max_timestamp);
        segment
            .committed()
            .store(result.end, super::handoff::Ordering::Release);
        // Make what recovery found durable, whatever the policy was before the crash.
        segment.flush_range(from, result.end)?;
        segment.offsets.flush()?;
        segment.times.flush()?;
        next_offset = result.next_offset;
        active = Some((result.end, result.indexer));
        segments.push(Arc::new(segment));
        if matches!(result.stop, Stop::Damaged(_)) {
            break;
        }
    }

    if next_offset < vouched {
        return Err(gap(
            dir,
            shape,
            segments.last(),
            &active,
            next_offset,
            vouched,
        ));
    }
    let (write_pos, indexer) = match active {
        Some((end, indexer)) => (end, indexer),
        None => {
            let segment = PreparedSegment::create(shape)?.activate(shape, next_offset)?;
            segments.push(Arc::new(segment));
            (0, IndexCursor::new(interval))
        }
    };
    let last = segments
        .last()
        .expect("recovery leaves an active segment")
        .clone();
    // A new checkpoint: everything up to here is verified and flushed. Not `clean`, so a
    // crash after this open scans what gets appended next.
    let checkpoint = Checkpoint {
        segment_base: last.base_offset(),
        position: write_pos,
        next_offset,
        clean: false,
        durable: true,
        start_offset: Some(segments[0].base_offset()),
    };
    checkpoint.write(dir, true)?;
    Ok(Recovered {
        segments,
        write_pos,
        next_offset,
        indexer,
        checkpoint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_round_trip_and_damage() {
        let c = Checkpoint {
            segment_base: 10,
            position: 4096,
            next_offset: 77,
            clean: true,
            durable: true,
            start_offset: Some(5),
        };
        let mut b = c.encode();
        assert_eq!(Checkpoint::decode(&b), Some(c));
        b[10] ^= 1;
        assert_eq!(Checkpoint::decode(&b), None);
        assert_eq!(Checkpoint::decode(&b[..20]), None);
    }

    /// A checkpoint as builds before version 2 wrote it still opens: no start offset, and
    /// durable only if clean.
    #[test]
    fn version_1_checkpoint_is_read() {
        for clean in [false, true] {
            let mut b = [0u8; CHECKPOINT_V1_BYTES];
            b[0..4].copy_from_slice(b"HRCP");
            b[4..8].copy_from_slice(&1u32.to_le_bytes());
            b[8..16].copy_from_slice(&10u64.to_le_bytes());
            b[16..24].copy_from_slice(&4096u64.to_le_bytes());
            b[24..32].copy_from_slice(&77u64.to_le_bytes());
            b[32] = u8::from(clean);
            let crc = crc32c::crc32c(&b[..36]);
            b[36..40].copy_from_slice(&crc.to_le_bytes());
            let c = Checkpoint::decode(&b).expect("a version-1 checkpoint decodes");
            assert_eq!(
                c,
                Checkpoint {
                    segment_base: 10,
                    position: 4096,
                    next_offset: 77,
                    clean,
                    durable: clean,
                    start_offset: None,
                }
            );
        }
    }
}
