//! A replicated partition's Raft log: the partition's segment log holds the data entries'
//! batches (no second copy), the entry journal maps every entry to its offsets, and two
//! small files beside them hold what the log does not:
//!
//! - `raft.members`: the configuration of each membership entry still in the log.
//! - `raft.state`: the vote, the committed log id and the last purged log id.
//!
//! Both are written whole (magic, CRC-32C, bincode; temporary file, sync, rename,
//! directory sync). Blocking: one thread owns a `ReplicaLog` (see `replica`).
//!
//! The group commit: [`append`](ReplicaLog::append) writes batches (unpublished) and
//! journal records; [`sync`](ReplicaLog::sync) makes both durable, and only then is
//! openraft told the entries are flushed. Readers see the committed prefix only:
//! [`apply`](ReplicaLog::apply) publishes a data entry's records, and an open publishes
//! no more than the saved commit reaches.
//!
//! On open the journal and the segment log are reconciled: records whose batches the log
//! lost (an unsynced tail) are cut from the journal, batches the journal does not list are
//! cut from the log; neither cut may reach below the saved commit (that would be loss of
//! acknowledged data, and the open fails naming it).

use std::collections::BTreeMap;
use std::io::{Error, ErrorKind};
use std::path::{Path, PathBuf};

use openraft::{Entry, EntryPayload, LogId, Membership, StoredMembership, Vote};
use serde::{Deserialize, Serialize};

use super::journal::{EntryKind, Journal, JournalRecord};
use super::types::{PartAppended, PartBatch, PartTypes};
use crate::cluster::state_machine::{read_checked, write_checked};
use crate::cluster::types::{NodeAddr, NodeId};
use crate::storage::{FsyncPolicy, LogConfig, LogReader, LogWriter, batch};

/// The vote, committed and purged ids' file.
pub const STATE_FILE: &str = "raft.state";
/// The membership entries' configurations.
pub const MEMBERS_FILE: &str = "raft.members";

type IoResult<T> = std::io::Result<T>;

/// What `raft.state` holds.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftState {
    pub vote: Option<Vote<NodeId>>,
    pub committed: Option<LogId<NodeId>>,
    pub last_purged: Option<LogId<NodeId>>,
}

/// One replica's Raft log over its segment log.
pub struct ReplicaLog {
    dir: PathBuf,
    writer: LogWriter,
    journal: Journal,
    members: BTreeMap<u64, Membership<NodeId, NodeAddr>>,
    state: RaftState,
    /// `state` as last written.
    saved: RaftState,
    /// The topic's fsync policy, which the journal follows as the segment log does.
    fsync: FsyncPolicy,
    last_journal_sync: std::time::Instant,
}

fn storage(e: crate::storage::StorageError) -> Error {
    Error::other(e)
}

fn invalid(message: String) -> Error {
    Error::new(ErrorKind::InvalidData, message)
}

impl ReplicaLog {
    /// Opens (creating if needed) the replica in `dir` and reconciles its journal with its
    /// segment log. The log and the journal follow the topic's fsync policy, as a single
    /// node's log does: under `always` an entry is on disk before this replica
    /// acknowledges it, so an acknowledged publish is on the disks of a majority; under
    /// `never` (or between `interval` flushes) it is in a majority's page cache, which a
    /// process crash keeps and a machine crash of a majority may not (the trade Kafka
    /// makes by default). Votes are always written durably.
    pub fn open(dir: &Path, config: LogConfig) -> IoResult<ReplicaLog> {
        std::fs::create_dir_all(dir)?;
        let fsync = config.fsync;
        let mut writer = LogWriter::open(dir, config).map_err(storage)?;
        let mut journal = Journal::open(dir, None)?;
        let state: RaftState = read_checked(dir, STATE_FILE)?.unwrap_or_default();
        let mut members: BTreeMap<u64, Membership<NodeId, NodeAddr>> =
            read_checked(dir, MEMBERS_FILE)?.unwrap_or_default();
        let committed = state.committed.map(|c| c.index);
        let name = dir.display();

        // Entries whose batches the log lost, or whose configuration is missing, were
        // never acknowledged: cut them (and what follows).
        let log_end = writer.next_offset();
        let records = journal.records();
        let mut keep = records.partition_point(|r| r.end_offset() <= log_end);
        if let Some(missing) = records[..keep]
            .iter()
            .position(|r| r.kind == EntryKind::Membership && !members.contains_key(&r.log_id.index))
        {
            keep = missing;
        }
        if let (Some(committed), Some(last)) = (committed, journal.last())
            && last.log_id.index < committed
        {
            return Err(invalid(format!(
                "{name}: the entry journal ends at index {} but index {committed} was committed: committed entries are missing",
                last.log_id.index
            )));
        }
        if let Some(cut) = records.get(keep).copied() {
            if committed.is_some_and(|c| cut.log_id.index <= c) {
                return Err(invalid(format!(
                    "{name}: the segment log ends at offset {log_end}, before committed entry {} (offsets {}..{}): committed data is missing",
                    cut.log_id.index,
                    cut.base_offset,
                    cut.end_offset()
                )));
            }
            tracing::warn!(dir = %name, from_index = cut.log_id.index, "cutting the entry journal's tail that the segment log does not hold (it was never acknowledged)");
            journal.keep_first(keep)?;
        }
        let before = members.len();
        members.retain(|index, _| {
            journal
                .get(*index)
                .is_some_and(|r| r.kind == EntryKind::Membership)
        });
        if members.len() != before {
            write_checked(dir, MEMBERS_FILE, &members)?;
        }

        let data_end = journal.end_offset(0);
        let commit_offset = journal.end_offset_at(committed, 0);
        writer.withhold_from(commit_offset).map_err(storage)?;
        if log_end > data_end {
            tracing::warn!(dir = %name, from_offset = data_end, to_offset = log_end, "cutting the segment log's tail that the entry journal does not list (it was never acknowledged)");
            writer.truncate(data_end).map_err(storage)?;
        }
        Ok(ReplicaLog {
            dir: dir.to_owned(),
            writer,
            journal,
            members,
            saved: state.clone(),
            state,
            fsync,
            last_journal_sync: std::time::Instant::now(),
        })
    }

    /// A lock-free reader of the committed records.
    pub fn reader(&self) -> LogReader {
        self.writer.reader()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn state(&self) -> &RaftState {
        &self.state
    }

    /// The offset the next data entry's records get.
    pub fn next_offset(&self) -> u64 {
        self.writer.next_offset()
    }

    /// The leader's duplicate check of a batch it is about to propose (see
    /// `LogWriter::check_duplicate`): the offsets this log already holds it at, if any.
    pub fn check_duplicate(
        &self,
        batch: &crate::storage::ValidBatch<'_>,
    ) -> Result<Option<crate::storage::Appended>, crate::storage::StorageError> {
        self.writer.check_duplicate(batch)
    }

    /// The segment log's counters (flushes, batches), for metrics.
    pub fn stats(&self) -> std::sync::Arc<crate::storage::WriterStats> {
        self.writer.stats()
    }

    /// The segment log's retention limits (not applied to a replica yet; see ARCHITECTURE).
    pub fn retention(&self) -> std::sync::Arc<crate::storage::RetentionLimits> {
        self.writer.retention()
    }

    /// What readers see up to.
    pub fn high_watermark(&self) -> u64 {
        self.writer.high_watermark()
    }

    pub fn last_log_id(&self) -> Option<LogId<NodeId>> {
        self.journal
            .last()
            .map(|r| r.log_id)
            .or(self.state.last_purged)
    }

    /// The journal record of the entry at `index`.
    pub fn record(&self, index: u64) -> Option<JournalRecord> {
        self.journal.get(index).copied()
    }

    /// Writes `entries` after the last one: batches into the segment log (unpublished),
    /// records into the journal. Durable at the next [`sync`](Self::sync).
    ///
    /// A data entry's batch is checked again, and its base offset must be unassigned (a
    /// leader's own proposal) or the offset this log gives it: every replica stores the
    /// same bytes at the same offsets, and one that would not is refused.
    pub fn append(&mut self, entries: impl IntoIterator<Item = Entry<PartTypes>>) -> IoResult<()> {
        let mut records = Vec::new();
        let result = self.append_into(entries, &mut records);
        // What was written to the log is listed even when a later entry failed, so the
        // journal and the log stay in step.
        self.journal.append(&records)?;
        result
    }

    fn append_into(
        &mut self,
        entries: impl IntoIterator<Item = Entry<PartTypes>>,
        records: &mut Vec<JournalRecord>,
    ) -> IoResult<()> {
        let mut next_index = self.journal.last().map(|r| r.log_id.index + 1);
        for entry in entries {
            let index = entry.log_id.index;
            if next_index.is_some_and(|n| n != index) {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "{}: entry {index} appended after entry {}",
                        self.dir.display(),
                        next_index.unwrap_or_default().saturating_sub(1)
                    ),
                ));
            }
            let base_offset = self.writer.next_offset();
            let (kind, count) = match entry.payload {
                EntryPayload::Normal(batch) => (EntryKind::Data, self.append_batch(index, &batch)?),
                EntryPayload::Blank => (EntryKind::Blank, 0),
                EntryPayload::Membership(membership) => {
                    self.members.insert(index, membership);
                    write_checked(&self.dir, MEMBERS_FILE, &self.members)?;
                    (EntryKind::Membership, 0)
                }
            };
            records.push(JournalRecord {
                log_id: entry.log_id,
                kind,
                base_offset,
                count,
            });
            next_index = Some(index + 1);
        }
        Ok(())
    }

    fn append_batch(&mut self, index: u64, batch: &PartBatch) -> IoResult<u32> {
        let at = self.writer.next_offset();
        if let Some(offset) = batch.offset
            && offset != at
        {
            return Err(invalid(format!(
                "{}: entry {index} was stored at offset {offset} by its leader but this replica's log is at offset {at}: the replicas' logs diverged",
                self.dir.display()
            )));
        }
        let valid = batch::validate(&batch.bytes.0, usize::MAX).map_err(|e| {
            invalid(format!(
                "{}: entry {index} is not a valid batch: {e}",
                self.dir.display()
            ))
        })?;
        let appended = self.writer.append_verbatim(valid).map_err(storage)?;
        Ok((appended.last_offset + 1 - appended.base_offset) as u32)
    }

    /// Makes every appended batch and journal record durable.
    pub fn sync(&mut self) -> IoResult<()> {
        self.writer.sync_unpublished().map_err(storage)?;
        let due = match self.fsync {
            FsyncPolicy::Always => true,
            FsyncPolicy::Interval(every) => self.last_journal_sync.elapsed() >= every,
            FsyncPolicy::Never => false,
        };
        if due {
            self.journal.sync()?;
            self.last_journal_sync = std::time::Instant::now();
        }
        Ok(())
    }

    /// Removes the entries from `index` on (a follower's log diverged from its leader's):
    /// the journal first, then the log, so a crash between leaves a journal the open cuts
    /// the log to.
    pub fn truncate(&mut self, index: u64) -> IoResult<()> {
        let first = self.journal.records().first().copied();
        let cut = match self.journal.get(index) {
            Some(record) => *record,
            None => match first {
                Some(first) if index < first.log_id.index => first,
                _ => return Ok(()),
            },
        };
        self.journal.truncate_from(index)?;
        let removed = self.members.split_off(&index);
        if !removed.is_empty() {
            write_checked(&self.dir, MEMBERS_FILE, &self.members)?;
        }
        self.writer.truncate(cut.base_offset).map_err(storage)
    }

    /// Records that entries up to `log_id` may be forgotten. Nothing is deleted: the
    /// segment log's retention is not yet tied to what followers still need, so a
    /// replicated partition keeps its whole log (see ARCHITECTURE, "Cluster").
    pub fn purge(&mut self, log_id: LogId<NodeId>) -> IoResult<()> {
        self.state.last_purged = Some(log_id);
        self.save_state()
    }

    pub fn save_vote(&mut self, vote: Vote<NodeId>) -> IoResult<()> {
        self.state.vote = Some(vote);
        self.save_state()
    }

    /// Notes the committed id; written with the next [`save_state`](Self::save_state).
    /// A saved commit older than the real one is safe: an open publishes less, and
    /// openraft applies the rest again (applying only publishes).
    pub fn set_committed(&mut self, committed: Option<LogId<NodeId>>) {
        self.state.committed = committed;
    }

    /// Writes `raft.state` if it changed.
    pub fn save_state(&mut self) -> IoResult<()> {
        if self.state == self.saved {
            return Ok(());
        }
        write_checked(&self.dir, STATE_FILE, &self.state)?;
        self.saved = self.state.clone();
        Ok(())
    }

    /// Whether `raft.state` is behind what is noted.
    pub fn state_dirty(&self) -> bool {
        self.state != self.saved
    }

    /// The entries `start..end` as openraft holds them, stopping once `max_bytes` of
    /// batches are read (at least one entry is returned if any is there).
    pub fn read(&self, start: u64, end: u64, max_bytes: usize) -> IoResult<Vec<Entry<PartTypes>>> {
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        for index in start..end {
            let Some(record) = self.journal.get(index) else {
                break;
            };
            let payload = match record.kind {
                EntryKind::Blank => EntryPayload::Blank,
                EntryKind::Membership => match self.members.get(&index) {
                    Some(m) => EntryPayload::Membership(m.clone()),
                    None => {
                        return Err(invalid(format!(
                            "{}: membership entry {index} has no configuration",
                            self.dir.display()
                        )));
                    }
                },
                EntryKind::Data => {
                    let batch = self.writer.batch_at(record.base_offset).map_err(storage)?;
                    bytes += batch.len();
                    EntryPayload::Normal(PartBatch::stored(record.base_offset, batch))
                }
            };
            entries.push(Entry {
                log_id: record.log_id,
                payload,
            });
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(entries)
    }

    /// Applies committed entries: publishes each data entry's records to readers and
    /// answers where they are.
    pub fn apply(&mut self, log_ids: &[LogId<NodeId>]) -> IoResult<Vec<PartAppended>> {
        let mut out = Vec::with_capacity(log_ids.len());
        for log_id in log_ids {
            let record = match self.journal.get(log_id.index) {
                Some(record) if record.log_id == *log_id => *record,
                other => {
                    return Err(invalid(format!(
                        "{}: applying entry {log_id}, but the journal holds {:?}",
                        self.dir.display(),
                        other.map(|r| r.log_id)
                    )));
                }
            };
            if record.kind == EntryKind::Data {
                self.writer
                    .publish_to(record.end_offset())
                    .map_err(storage)?;
            }
            out.push(PartAppended {
                base_offset: record.base_offset,
                count: record.count,
            });
        }
        Ok(out)
    }

    /// The last membership at or below `index` (the applied one for the state machine).
    pub fn membership_at(&self, index: Option<u64>) -> StoredMembership<NodeId, NodeAddr> {
        let Some(index) = index else {
            return StoredMembership::default();
        };
        match self.members.range(..=index).next_back() {
            Some((at, m)) => {
                StoredMembership::new(self.journal.get(*at).map(|r| r.log_id), m.clone())
            }
            None => StoredMembership::default(),
        }
    }

    /// Flushes and closes the segment log cleanly (a clean checkpoint spares the next
    /// open a scan) and writes `raft.state`.
    pub fn close(mut self) -> IoResult<()> {
        // Whatever the policy, a clean close leaves everything on disk.
        self.fsync = FsyncPolicy::Always;
        self.sync()?;
        self.save_state()?;
        // A clean close publishes everything written; the next open withholds what was
        // not committed again.
        self.writer.close().map_err(storage)
    }
}
