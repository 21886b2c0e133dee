//! The entry journal of a replicated partition: which Raft log entry is which, and where
//! each data entry's records sit in the segment log.
//!
//! One file, `raft.journal`, of fixed-size records, one per Raft log entry, in index
//! order with no gaps:
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | term of the entry's leader |
//! | 8..16 | node id of the entry's leader |
//! | 16..24 | Raft log index |
//! | 24..32 | base offset: a data entry's first record; for the others the log's end |
//! | 32..36 | record count (0 unless data) |
//! | 36 | kind: 0 data, 1 blank, 2 membership |
//! | 37..44 | zero |
//! | 44..48 | CRC-32C of bytes 0..44 |
//!
//! Offsets stay dense: only data entries take offsets, so each record's base offset is
//! the previous record's end.
//!
//! The journal may have a *base*: the last entry its group's snapshot covers (its index,
//! and the offset after its records). Records up to the base are forgotten (the group
//! purged them, and retention deleted their segments); the first record kept is the
//! base's successor, at the base's offset. The base itself is kept by the owner (in
//! `raft.snapshot`, written before the journal is rewritten without those records), so
//! records at or below it that a crash left in the file are skipped on open. A membership entry's configuration is kept beside the
//! journal (see `replica_log`). The journal is written with the batches and synced in
//! the same group commit; a kill -9 can leave a torn or unsynced tail, which an open cuts
//! at the first record that is short, fails its CRC, or does not follow its predecessor.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use openraft::{CommittedLeaderId, LogId};

use crate::cluster::types::NodeId;

/// The journal's file name in the partition's directory.
pub const JOURNAL_FILE: &str = "raft.journal";
const JOURNAL_TMP: &str = "raft.journal.tmp";

/// Where a journal starts: the last entry forgotten (by a purge or a snapshot install) and
/// the offset after its records, which the next data entry takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalBase {
    pub index: u64,
    pub next_offset: u64,
}
/// Bytes of one record.
pub const RECORD_BYTES: usize = 48;
const CRC_AT: usize = 44;

/// What a Raft log entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A storage batch, stored in the segment log.
    Data,
    /// A leader's no-op.
    Blank,
    /// A membership change.
    Membership,
}

/// One journal record: a Raft log entry's id and where its records are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalRecord {
    pub log_id: LogId<NodeId>,
    pub kind: EntryKind,
    pub base_offset: u64,
    pub count: u32,
}

impl JournalRecord {
    /// The offset after this entry's records.
    pub fn end_offset(&self) -> u64 {
        self.base_offset + u64::from(self.count)
    }

    fn encode(&self) -> [u8; RECORD_BYTES] {
        let mut out = [0u8; RECORD_BYTES];
        out[0..8].copy_from_slice(&self.log_id.leader_id.term.to_le_bytes());
        out[8..16].copy_from_slice(&self.log_id.leader_id.node_id.to_le_bytes());
        out[16..24].copy_from_slice(&self.log_id.index.to_le_bytes());
        out[24..32].copy_from_slice(&self.base_offset.to_le_bytes());
        out[32..36].copy_from_slice(&self.count.to_le_bytes());
        out[36] = match self.kind {
            EntryKind::Data => 0,
            EntryKind::Blank => 1,
            EntryKind::Membership => 2,
        };
        let crc = crc32c::crc32c(&out[..CRC_AT]);
        out[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<JournalRecord> {
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8"));
        if bytes.len() != RECORD_BYTES {
            return None;
        }
        let crc = u32::from_le_bytes(bytes[CRC_AT..].try_into().expect("4"));
        if crc32c::crc32c(&bytes[..CRC_AT]) != crc || bytes[37..CRC_AT].iter().any(|&b| b != 0) {
            return None;
        }
        let kind = match bytes[36] {
            0 => EntryKind::Data,
            1 => EntryKind::Blank,
            2 => EntryKind::Membership,
            _ => return None,
        };
        let count = u32::from_le_bytes(bytes[32..36].try_into().expect("4"));
        if (kind == EntryKind::Data) != (count > 0) {
            return None;
        }
        Some(JournalRecord {
            log_id: LogId::new(CommittedLeaderId::new(u64_at(0), u64_at(8)), u64_at(16)),
            kind,
            base_offset: u64_at(24),
            count,
        })
    }

    /// Whether `self` may follow `prev`: the next index, at `prev`'s end offset.
    fn follows(&self, prev: &JournalRecord) -> bool {
        self.log_id.index == prev.log_id.index + 1 && self.base_offset == prev.end_offset()
    }

    /// Whether `self` may be the first record after `base`.
    fn follows_base(&self, base: &JournalBase) -> bool {
        self.log_id.index == base.index + 1 && self.base_offset == base.next_offset
    }
}

/// Whether `record` may come next, after `prev` or (with none) after `base`.
fn may_follow(
    record: &JournalRecord,
    prev: Option<&JournalRecord>,
    base: Option<&JournalBase>,
) -> bool {
    match (prev, base) {
        (Some(prev), _) => record.follows(prev),
        (None, Some(base)) => record.follows_base(base),
        (None, None) => true,
    }
}

/// The open journal and its records (all of them in memory: 48 bytes per entry).
pub struct Journal {
    path: PathBuf,
    file: File,
    records: Vec<JournalRecord>,
    base: Option<JournalBase>,
}

fn context(what: &str, path: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .append(true)
        .open(path)
        .map_err(|e| context("opening", path, e))
}

impl Journal {
    /// Opens (or creates) the journal in `dir`, based at `base` (none: from the group's
    /// first entry), cutting (durably) a tail that is torn, damaged or out of sequence.
    /// Records at or below the base are dropped (a crash left them after the base was
    /// recorded). Blocking.
    pub fn open(dir: &Path, base: Option<JournalBase>) -> std::io::Result<Journal> {
        let path = dir.join(JOURNAL_FILE);
        let mut file = open_append(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| context("reading", &path, e))?;
        let mut records: Vec<JournalRecord> = Vec::with_capacity(bytes.len() / RECORD_BYTES);
        let mut forgotten = 0usize;
        let mut valid = 0usize;
        for chunk in bytes.chunks(RECORD_BYTES) {
            let Some(record) = JournalRecord::decode(chunk) else {
                break;
            };
            if records.is_empty()
                && let Some(base) = &base
                && record.log_id.index <= base.index
            {
                // Still in sequence with what precedes it, but covered by the base.
                forgotten += 1;
                valid += RECORD_BYTES;
                continue;
            }
            if !may_follow(&record, records.last(), base.as_ref()) {
                break;
            }
            records.push(record);
            valid += RECORD_BYTES;
        }
        let mut journal = Journal {
            path,
            file,
            records,
            base,
        };
        if valid < bytes.len() {
            tracing::warn!(path = %journal.path.display(), valid, cut = bytes.len() - valid,
                "a partition's entry journal ends in a torn or damaged record; cut after the last whole record");
        }
        if forgotten > 0 {
            journal.rewrite()?;
        } else if valid < bytes.len() {
            journal.cut_file(journal.records.len())?;
        }
        Ok(journal)
    }

    /// Where the journal starts (see [`JournalBase`]).
    pub fn base(&self) -> Option<JournalBase> {
        self.base
    }

    /// Forgets the records up to `base.index` (they must be in the journal, or the
    /// journal must end before them: then every record goes), durably: the file is
    /// rewritten with the rest and replaced atomically. `base` must be where the record
    /// at its index ends, if the journal holds it.
    pub fn rebase(&mut self, base: JournalBase) -> std::io::Result<()> {
        if let Some(record) = self.get(base.index)
            && record.end_offset() != base.next_offset
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "journal base {base:?} does not match record {record:?} ({})",
                    self.path.display()
                ),
            ));
        }
        let keep = self
            .records
            .partition_point(|r| r.log_id.index <= base.index);
        self.records.drain(..keep);
        if self
            .records
            .first()
            .is_some_and(|first| !first.follows_base(&base))
        {
            // The kept records do not continue from the base (a snapshot past a log that
            // diverged): none of them can stay.
            self.records.clear();
        }
        self.base = Some(base);
        self.rewrite()
    }

    /// Writes the records held to a new file and puts it in place of the journal.
    fn rewrite(&mut self) -> std::io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(JOURNAL_TMP);
        let mut bytes = Vec::with_capacity(self.records.len() * RECORD_BYTES);
        for record in &self.records {
            bytes.extend_from_slice(&record.encode());
        }
        let write = || -> std::io::Result<()> {
            let mut out = File::create(&tmp)?;
            out.write_all(&bytes)?;
            out.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            File::open(dir)?.sync_all()
        };
        write().map_err(|e| context("rewriting", &self.path, e))?;
        self.file = open_append(&self.path)?;
        Ok(())
    }

    pub fn records(&self) -> &[JournalRecord] {
        &self.records
    }

    pub fn last(&self) -> Option<&JournalRecord> {
        self.records.last()
    }

    /// The record of the entry at `index`.
    pub fn get(&self, index: u64) -> Option<&JournalRecord> {
        let first = self.records.first()?.log_id.index;
        let at = usize::try_from(index.checked_sub(first)?).ok()?;
        self.records.get(at)
    }

    /// The offset after the data of the entries up to `index` (none: no entry): the end
    /// of the last record at or below it, or else the base's offset, or else `start`.
    pub fn end_offset_at(&self, index: Option<u64>, start: u64) -> u64 {
        let start = self.base.map_or(start, |b| b.next_offset);
        let upto = index.map_or(0, |index| {
            self.records.partition_point(|r| r.log_id.index <= index)
        });
        upto.checked_sub(1)
            .map_or(start, |i| self.records[i].end_offset())
    }

    /// The offset after the data of every entry, or else the base's offset, or else
    /// `start`.
    pub fn end_offset(&self, start: u64) -> u64 {
        let start = self.base.map_or(start, |b| b.next_offset);
        self.records.last().map_or(start, JournalRecord::end_offset)
    }

    /// Writes `records` after the last one; durable at the next [`sync`](Self::sync).
    /// They must follow on (next index, dense offsets).
    pub fn append(&mut self, records: &[JournalRecord]) -> std::io::Result<()> {
        let mut prev = self.records.last().copied();
        let mut bytes = Vec::with_capacity(records.len() * RECORD_BYTES);
        for record in records {
            if !may_follow(record, prev.as_ref(), self.base.as_ref()) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "journal record {:?} does not follow {:?} (base {:?}) ({})",
                        record,
                        prev,
                        self.base,
                        self.path.display()
                    ),
                ));
            }
            bytes.extend_from_slice(&record.encode());
            prev = Some(*record);
        }
        self.file
            .write_all(&bytes)
            .map_err(|e| context("writing", &self.path, e))?;
        self.records.extend_from_slice(records);
        Ok(())
    }

    /// Makes every appended record durable.
    pub fn sync(&mut self) -> std::io::Result<()> {
        self.file
            .sync_data()
            .map_err(|e| context("syncing", &self.path, e))
    }

    /// Removes the records of index `index` and later, durably.
    pub fn truncate_from(&mut self, index: u64) -> std::io::Result<()> {
        let keep = self.records.partition_point(|r| r.log_id.index < index);
        if keep == self.records.len() {
            return Ok(());
        }
        self.cut_file(keep)
    }

    /// Keeps the first `keep` records, durably.
    pub fn keep_first(&mut self, keep: usize) -> std::io::Result<()> {
        if keep >= self.records.len() {
            return Ok(());
        }
        self.cut_file(keep)
    }

    fn cut_file(&mut self, keep: usize) -> std::io::Result<()> {
        self.records.truncate(keep);
        self.file
            .set_len((keep * RECORD_BYTES) as u64)
            .and_then(|()| self.file.sync_all())
            .map_err(|e| context("cutting", &self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(index: u64, base: u64, count: u32) -> JournalRecord {
        JournalRecord {
            log_id: LogId::new(CommittedLeaderId::new(2, 1), index),
            kind: if count > 0 {
                EntryKind::Data
            } else {
                EntryKind::Blank
            },
            base_offset: base,
            count,
        }
    }

    #[test]
    fn records_round_trip_and_a_torn_last_record_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(dir.path(), None).unwrap();
        journal
            .append(&[record(0, 0, 0), record(1, 0, 5), record(2, 5, 3)])
            .unwrap();
        journal.sync().unwrap();
        // A record that does not follow on is refused.
        assert!(journal.append(&[record(4, 8, 1)]).is_err());
        assert!(journal.append(&[record(3, 9, 1)]).is_err());
        drop(journal);
        let path = dir.path().join(JOURNAL_FILE);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&record(3, 8, 2).encode()[..30]).unwrap();
        drop(file);

        let journal = Journal::open(dir.path(), None).unwrap();
        assert_eq!(journal.records().len(), 3);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            3 * RECORD_BYTES as u64
        );
        assert_eq!(journal.get(2), Some(&record(2, 5, 3)));
        assert_eq!(journal.end_offset_at(Some(1), 0), 5);
        assert_eq!(journal.end_offset(0), 8);
        assert_eq!(journal.end_offset_at(None, 0), 0);

        // A flipped bit in the middle cuts from there.
        drop(journal);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[RECORD_BYTES + 3] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let journal = Journal::open(dir.path(), None).unwrap();
        assert_eq!(journal.records().len(), 1);
    }

    #[test]
    fn a_base_forgets_the_records_below_it_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        let mut journal = Journal::open(dir.path(), None).unwrap();
        let all = [
            record(0, 0, 0),
            record(1, 0, 5),
            record(2, 5, 3),
            record(3, 8, 0),
            record(4, 8, 2),
        ];
        journal.append(&all).unwrap();
        journal.sync().unwrap();
        let old_file = std::fs::read(&path).unwrap();
        // A base that does not end the record at its index is refused.
        assert!(
            journal
                .rebase(JournalBase {
                    index: 2,
                    next_offset: 7
                })
                .is_err()
        );
        let base = JournalBase {
            index: 2,
            next_offset: 8,
        };
        journal.rebase(base).unwrap();
        assert_eq!(journal.records(), &all[3..]);
        assert_eq!(journal.get(2), None);
        assert_eq!(journal.end_offset_at(Some(2), 0), 8);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            2 * RECORD_BYTES as u64
        );
        drop(journal);

        // Reopened at its base: the same records.
        let mut journal = Journal::open(dir.path(), Some(base)).unwrap();
        assert_eq!(journal.records(), &all[3..]);
        assert_eq!(journal.base(), Some(base));
        journal.append(&[record(5, 10, 1)]).unwrap();
        drop(journal);

        // A crash after the base was recorded, before the rewrite: the old file's
        // records at or below the base are dropped (and the file rewritten).
        std::fs::write(&path, &old_file).unwrap();
        let journal = Journal::open(dir.path(), Some(base)).unwrap();
        assert_eq!(journal.records(), &all[3..]);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            2 * RECORD_BYTES as u64
        );
        drop(journal);

        // An empty journal at a base takes only the base's successor, at its offset;
        // a file whose first record does not go on from the base is cut.
        let mut journal = Journal::open(
            dir.path(),
            Some(JournalBase {
                index: 4,
                next_offset: 10,
            }),
        )
        .unwrap();
        assert!(journal.records().is_empty());
        assert!(journal.append(&[record(5, 9, 1)]).is_err());
        assert!(journal.append(&[record(6, 10, 1)]).is_err());
        journal.append(&[record(5, 10, 1)]).unwrap();
        drop(journal);
        let journal = Journal::open(
            dir.path(),
            Some(JournalBase {
                index: 4,
                next_offset: 11,
            }),
        )
        .unwrap();
        assert!(journal.records().is_empty());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }
}
