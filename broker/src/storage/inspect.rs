//! Offline inspection of a partition directory, for `herald log check|dump`.
//!
//! Strictly read-only: no lock, no recovery, no file created, changed or deleted, so it can
//! look at a damaged log the broker refuses (or a log a broker is serving) without making
//! anything worse. A directory that holds neither a checkpoint nor a segment file is not a
//! partition log and is refused.
//!
//! `check` verifies every batch of every segment — frame, base offset in sequence, CRC-32C
//! — plus every offset and time index entry (it must point at a batch boundary with the
//! offset it claims), the segments' continuity, and the log against its checkpoint (its
//! start, and the prefix a durable checkpoint vouches for). What the broker would cut on
//! start as a torn tail (the end of the active segment after an unclean stop, with no valid
//! batch after it and above what the checkpoint vouches for) is reported, not counted as
//! damage.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::batch::{self, BatchHeader, BatchView, HEADER_BYTES, MAGIC_PATTERN, MAGIC_PATTERN_AT};
use super::error::{Result, StorageError};
use super::recovery::{CHECKPOINT_FILE, Checkpoint, list_segments};
use super::segment::{LOG_SUFFIX, OFFSET_INDEX_SUFFIX, TIME_INDEX_SUFFIX, segment_path};

/// One piece of damage: the file, the byte in it, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: PathBuf,
    pub position: u64,
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at byte {}: {}",
            self.path.display(),
            self.position,
            self.reason
        )
    }
}

/// What `check` found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The first offset of the log (its first segment's).
    pub start_offset: u64,
    /// The offset after the last whole, valid batch.
    pub end_offset: u64,
    pub segments: usize,
    pub batches: u64,
    /// Bytes of valid batches.
    pub bytes: u64,
    /// A torn tail the broker would cut on start (not damage).
    pub torn_tail: Option<Problem>,
    /// Damage; empty if the log is whole.
    pub problems: Vec<Problem>,
}

/// A segment file mapped read-only (empty files are not mapped).
struct ReadOnly {
    path: PathBuf,
    map: Option<Mmap>,
}

impl ReadOnly {
    fn open(path: &Path) -> Result<Option<ReadOnly>> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StorageError::io("open", path, e)),
        };
        let len = file
            .metadata()
            .map_err(|e| StorageError::io("stat", path, e))?
            .len();
        let map = if len == 0 {
            None
        } else {
            // Safety: a read-only private view at the file's current length. Herald never
            // shortens a segment file in place (it zeroes or deletes), so no access faults.
            Some(unsafe { Mmap::map(&file) }.map_err(|e| StorageError::io("map", path, e))?)
        };
        Ok(Some(ReadOnly {
            path: path.to_owned(),
            map,
        }))
    }

    fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

/// Refuses a directory that is not a partition log.
fn require_partition_dir(dir: &Path) -> Result<Vec<u64>> {
    if !dir.is_dir() {
        return Err(StorageError::NotAPartitionLog {
            path: dir.to_owned(),
        });
    }
    let bases = list_segments(dir)?;
    if bases.is_empty() && !dir.join(CHECKPOINT_FILE).exists() {
        return Err(StorageError::NotAPartitionLog {
            path: dir.to_owned(),
        });
    }
    Ok(bases)
}

/// Why a walk over a segment's batches stopped.
enum Stop {
    /// Zeros (or the end of the file) after the last batch.
    End,
    Damaged(String),
}

/// Walks the batches of one segment from its start, checking each one fully.
fn walk(bytes: &[u8], base: u64, mut visit: impl FnMut(u64, &BatchHeader)) -> (u64, u64, Stop) {
    let len = bytes.len() as u64;
    let (mut at, mut next) = (0u64, base);
    let stop = loop {
        let rest = &bytes[at as usize..];
        if rest.len() < HEADER_BYTES || rest[..HEADER_BYTES].iter().all(|&b| b == 0) {
            break if rest.iter().all(|&b| b == 0) {
                Stop::End
            } else {
                Stop::Damaged("non-zero bytes where the log should end".into())
            };
        }
        let Some(header) = BatchHeader::read(rest) else {
            break Stop::Damaged("truncated batch header".into());
        };
        if let Err(e) = header.check_frame((len - at) as usize) {
            break Stop::Damaged(e.to_string());
        }
        if header.base_offset != next {
            break Stop::Damaged(format!(
                "batch has base offset {} where {next} was expected",
                header.base_offset
            ));
        }
        let end = at + u64::from(header.batch_len);
        let body = &bytes[at as usize..end as usize];
        let actual = batch::crc_of(body);
        if actual != header.crc {
            break Stop::Damaged(format!(
                "CRC mismatch at offset {next} (stored {:#010x}, computed {actual:#010x})",
                header.crc
            ));
        }
        visit(at, &header);
        next = header.next_offset();
        at = end;
    };
    (at, next, stop)
}

/// Whether a valid batch (frame and CRC) starts anywhere after `from`.
fn valid_batch_after(bytes: &[u8], from: u64) -> Option<u64> {
    let search = from as usize + MAGIC_PATTERN_AT;
    if search >= bytes.len() {
        return None;
    }
    memchr::memmem::find_iter(&bytes[search..], &MAGIC_PATTERN)
        .map(|hit| from + hit as u64)
        .find(|&at| {
            BatchHeader::read(&bytes[at as usize..]).is_some_and(|h| {
                h.check_frame(bytes.len() - at as usize).is_ok()
                    && batch::crc_of(&bytes[at as usize..at as usize + h.batch_len as usize])
                        == h.crc
            })
        })
}

/// Checks the index files of a segment against the batch boundaries found. Entries in order
/// at or past `ignore_from` (a torn tail's, which the broker drops on start) are not
/// checked against them.
fn check_indexes(
    dir: &Path,
    base: u64,
    boundaries: &HashMap<u64, u64>,
    ignore_from: u64,
    out: &mut Vec<Problem>,
) {
    if boundaries.is_empty() {
        return;
    }
    for (suffix, entry_bytes, rel_at, pos_at) in [
        (OFFSET_INDEX_SUFFIX, 8usize, 0usize, 4usize),
        (TIME_INDEX_SUFFIX, 16, 8, 12),
    ] {
        let path = segment_path(dir, base, suffix);
        let Ok(Some(index)) = ReadOnly::open(&path) else {
            continue; // A missing index is rebuilt on open: not damage.
        };
        let mut previous: Option<u32> = None;
        for (i, entry) in index.bytes().chunks_exact(entry_bytes).enumerate() {
            let u32_at = |at: usize| u32::from_le_bytes(entry[at..at + 4].try_into().expect("4"));
            let (relative, position) = (u32_at(rel_at), u32_at(pos_at));
            // Trailing zero slots end the index (see `index`).
            let present = i == 0
                || if rel_at == 0 {
                    position != 0
                } else {
                    relative != 0
                };
            if !present {
                break;
            }
            // Entries are in log order; one out of order is damage even in a torn tail
            // (the broker's binary search would keep it).
            if previous.is_some_and(|p| position < p) {
                out.push(Problem {
                    path: path.clone(),
                    position: (i * entry_bytes) as u64,
                    reason: format!(
                        "entry {i} points to byte {position}, before the entry ahead of it"
                    ),
                });
                break;
            }
            previous = Some(position);
            if u64::from(position) >= ignore_from {
                continue;
            }
            let wanted = base + u64::from(relative);
            if boundaries.get(&u64::from(position)) != Some(&wanted) {
                out.push(Problem {
                    path: path.clone(),
                    position: (i * entry_bytes) as u64,
                    reason: format!(
                        "entry {i} says offset {wanted} is at byte {position}, but no batch with that offset starts there"
                    ),
                });
                break;
            }
        }
    }
}

/// Verifies the partition log in `dir`; see the module docs.
pub fn check(dir: &Path) -> Result<Report> {
    let bases = require_partition_dir(dir)?;
    let checkpoint_path = dir.join(CHECKPOINT_FILE);
    let checkpoint = Checkpoint::read(dir);
    let mut report = Report {
        segments: bases.len(),
        ..Report::default()
    };
    if checkpoint.is_none() && checkpoint_path.exists() {
        report.problems.push(Problem {
            path: checkpoint_path,
            position: 0,
            reason: "damaged checkpoint (the broker ignores it and scans every segment)".into(),
        });
    }
    let start = checkpoint
        .and_then(|c| c.start_offset)
        .or(bases.first().copied())
        .unwrap_or(0);
    report.start_offset = start;
    let vouched = checkpoint
        .filter(|c| c.durable)
        .map_or(0, |c| c.next_offset);
    let mut next = start;
    for (i, &base) in bases.iter().enumerate() {
        let last = i + 1 == bases.len();
        let path = segment_path(dir, base, LOG_SUFFIX);
        if base < start {
            continue; // Retention's leftover: the broker deletes it on start.
        }
        if base != next {
            report.problems.push(Problem {
                path: segment_path(dir, next, LOG_SUFFIX),
                position: 0,
                reason: format!(
                    "the file is missing: the log ends at offset {next} and the next segment starts at {base}"
                ),
            });
            break;
        }
        let Some(segment) = ReadOnly::open(&path)? else {
            continue;
        };
        let bytes = segment.bytes();
        let mut boundaries = HashMap::new();
        let (end, end_offset, stop) = walk(bytes, base, |at, h| {
            boundaries.insert(at, h.base_offset);
            report.batches += 1;
            report.bytes += u64::from(h.batch_len);
        });
        let unclean_tail = last && !checkpoint.is_some_and(|c| c.clean);
        let ignore_from = if unclean_tail { end } else { u64::MAX };
        check_indexes(dir, base, &boundaries, ignore_from, &mut report.problems);
        next = end_offset;
        if let Stop::Damaged(reason) = stop {
            let problem = Problem {
                path: segment.path.clone(),
                position: end,
                reason,
            };
            let above_checkpoint = end_offset >= vouched
                && checkpoint.is_none_or(|c| c.segment_base < base || end >= c.position);
            let torn = unclean_tail && above_checkpoint && valid_batch_after(bytes, end).is_none();
            if torn {
                report.torn_tail = Some(problem);
            } else {
                report.problems.push(problem);
                break;
            }
        }
    }
    report.end_offset = next;
    if report.problems.is_empty() && next < vouched {
        let c = checkpoint.expect("vouched comes from a checkpoint");
        report.problems.push(Problem {
            path: segment_path(dir, c.segment_base, LOG_SUFFIX),
            position: c.position,
            reason: format!(
                "the log ends at offset {next}, but its checkpoint vouches for offsets up to {}",
                c.next_offset
            ),
        });
    }
    Ok(report)
}

/// Calls `visit` with every checked batch whose offsets reach `from` or beyond, in order,
/// until it returns `false`. Damage ends the walk with an error naming the file and byte.
pub fn for_each_batch(
    dir: &Path,
    from: u64,
    mut visit: impl FnMut(BatchView<'_>) -> bool,
) -> Result<()> {
    let bases = require_partition_dir(dir)?;
    let mut next = None;
    for (i, &base) in bases.iter().enumerate() {
        if bases.get(i + 1).is_some_and(|&b| b <= from) {
            next = None;
            continue;
        }
        let path = segment_path(dir, base, LOG_SUFFIX);
        if next.is_some_and(|n| n != base) {
            return Err(StorageError::Corrupt {
                path: segment_path(dir, next.unwrap_or(base), LOG_SUFFIX),
                position: 0,
                reason: "the file is missing".into(),
            });
        }
        let Some(segment) = ReadOnly::open(&path)? else {
            continue;
        };
        let bytes = segment.bytes();
        let mut more = true;
        let mut undecodable = None;
        let (end, end_offset, stop) = walk(bytes, base, |at, h| {
            if more && h.next_offset() > from {
                match BatchView::new(&bytes[at as usize..at as usize + h.batch_len as usize]) {
                    Ok(view) => more = visit(view),
                    Err(e) => {
                        undecodable.get_or_insert((at, e.to_string()));
                        more = false;
                    }
                }
            }
        });
        if let Some((position, reason)) = undecodable {
            return Err(StorageError::Corrupt {
                path,
                position,
                reason,
            });
        }
        if !more {
            return Ok(());
        }
        if let Stop::Damaged(reason) = stop {
            return Err(StorageError::Corrupt {
                path,
                position: end,
                reason,
            });
        }
        next = Some(end_offset);
    }
    Ok(())
}
