//! A replicated partition's Raft log: the partition's segment log holds the data entries'
//! batches (no second copy), the entry journal maps every entry to its offsets, and two
//! small files beside them hold what the log does not:
//!
//! - `raft.members`: the configuration of each membership entry still in the log.
//! - `raft.state`: the vote, the committed log id and the last purged log id.
//! - `raft.snapshot`: the group's snapshot as this replica holds it, a pointer (see
//!   [`SnapshotPointer`]): the last entry it covers, the offset after that entry's
//!   records, and the membership then. It is also the journal's base: the records below
//!   it are gone from this replica (retention deleted them after the group purged its
//!   log up to the pointer, or the replica installed the pointer from its leader).
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

use super::journal::{EntryKind, Journal, JournalBase, JournalRecord};
use super::types::{PartAppended, PartBatch, PartTypes};
use crate::cluster::state_machine::{read_checked, write_checked};
use crate::cluster::types::{NodeAddr, NodeId};
use crate::storage::{FsyncPolicy, LogConfig, LogReader, LogWriter, batch};

/// The vote, committed and purged ids' file.
pub const STATE_FILE: &str = "raft.state";
/// The membership entries' configurations.
pub const MEMBERS_FILE: &str = "raft.members";
/// The snapshot pointer, which is the journal's base.
pub const SNAPSHOT_FILE: &str = "raft.snapshot";

/// A partition group's snapshot: no data, because the state machine's state is the log
/// itself; what a snapshot covers is the records retention deleted. It says where the
/// log goes on: after entry `last_log_id`, at offset `next_offset`, with `membership`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotPointer {
    pub last_log_id: LogId<NodeId>,
    pub next_offset: u64,
    pub membership: StoredMembership<NodeId, NodeAddr>,
}

impl SnapshotPointer {
    fn journal_base(&self) -> JournalBase {
        JournalBase {
            index: self.last_log_id.index,
            next_offset: self.next_offset,
        }
    }

    /// The snapshot's bytes as sent to a replica.
    pub fn encode(&self) -> Vec<u8> {
        bincode::serialize(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> IoResult<SnapshotPointer> {
        bincode::deserialize(bytes).map_err(|e| invalid(format!("a snapshot pointer: {e}")))
    }
}

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
    /// The snapshot this replica holds, if any (see [`SnapshotPointer`]).
    snapshot: Option<SnapshotPointer>,
    /// The last entry applied.
    applied: Option<LogId<NodeId>>,
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
        let snapshot: Option<SnapshotPointer> = read_checked(dir, SNAPSHOT_FILE)?;
        let mut journal = Journal::open(dir, snapshot.as_ref().map(|s| s.journal_base()))?;
        let mut state: RaftState = read_checked(dir, STATE_FILE)?.unwrap_or_default();
        let mut members: BTreeMap<u64, Membership<NodeId, NodeAddr>> =
            read_checked(dir, MEMBERS_FILE)?.unwrap_or_default();
        let name = dir.display();
        if let Some(snapshot) = &snapshot {
            let at = snapshot.next_offset;
            // The log must go on from the snapshot's offset. A crash during an install (or
            // a purge) can leave the old log: start it again there, as the install would.
            if !(writer.start_offset() <= at && writer.is_boundary(at)) {
                tracing::warn!(dir = %name, offset = at, "the segment log does not go on from the snapshot's offset; starting it again, empty, there");
                journal.rebase(JournalBase {
                    index: snapshot.last_log_id.index,
                    next_offset: at,
                })?;
                let start = writer.start_offset();
                writer.withhold_from(start).map_err(storage)?;
                writer.restart_at(at).map_err(storage)?;
            }
            // `raft.state` is written after the pointer: bring it up to it.
            state.last_purged = state.last_purged.max(Some(snapshot.last_log_id));
            state.committed = state.committed.max(Some(snapshot.last_log_id));
        }
        let committed = state.committed.map(|c| c.index);

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
        let journal_end = journal
            .last()
            .map(|r| r.log_id.index)
            .or(snapshot.as_ref().map(|s| s.last_log_id.index));
        if let (Some(committed), Some(last)) = (committed, journal_end)
            && last < committed
        {
            return Err(invalid(format!(
                "{name}: the entry journal ends at index {last} but index {committed} was committed: committed entries are missing"
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
        // Whatever the purge was doing when the replica stopped: the segments below the
        // snapshot go.
        if let Some(snapshot) = &snapshot {
            writer.delete_below(snapshot.next_offset).map_err(storage)?;
        }
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
            applied: state.committed,
            state,
            fsync,
            last_journal_sync: std::time::Instant::now(),
            snapshot,
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

    /// The segment log's retention limits (applied through the group's snapshots, see
    /// [`retention_pointer`](Self::retention_pointer)).
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
            .or(self.snapshot.as_ref().map(|s| s.last_log_id))
            .or(self.state.last_purged)
    }

    /// The snapshot this replica holds.
    pub fn snapshot(&self) -> Option<&SnapshotPointer> {
        self.snapshot.as_ref()
    }

    /// The first offset the segment log holds.
    pub fn start_offset(&self) -> u64 {
        self.writer.start_offset()
    }

    /// The snapshot that would let retention go as far as its limits allow at `now_ms`:
    /// the last applied entry whose records end at or below the first segment the limits
    /// keep. None if that deletes nothing beyond what the replica's snapshot covers.
    /// Only sealed, applied (so committed) segments are ever covered.
    pub fn retention_pointer(&self, now_ms: i64) -> Option<SnapshotPointer> {
        let target = self
            .writer
            .retention_point(now_ms)
            .min(self.writer.high_watermark());
        if target <= self.writer.start_offset() {
            return None;
        }
        let applied = self.applied?.index;
        let records = self.journal.records();
        let upto =
            records.partition_point(|r| r.log_id.index <= applied && r.end_offset() <= target);
        let record = records.get(upto.checked_sub(1)?)?;
        if self
            .snapshot
            .as_ref()
            .is_some_and(|s| s.last_log_id >= record.log_id)
        {
            return None;
        }
        Some(SnapshotPointer {
            last_log_id: record.log_id,
            next_offset: record.end_offset(),
            membership: self.membership_at(Some(record.log_id.index)),
        })
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
        let mut next_index = self
            .journal
            .last()
            .map(|r| r.log_id.index + 1)
            .or(self.journal.base().map(|b| b.index + 1));
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

    /// Forgets the entries up to `log_id`, which the group's snapshot covers: the pointer
    /// is written first (it is the journal's base from then on), then the journal without
    /// them, then the segments wholly below the pointer's offset are deleted (retention).
    /// An entry this replica does not hold is left to the snapshot's install, which comes
    /// with it (openraft purges a replica's log when it installs a snapshot).
    pub fn purge(&mut self, log_id: LogId<NodeId>) -> IoResult<()> {
        if self
            .snapshot
            .as_ref()
            .is_some_and(|s| s.last_log_id >= log_id)
        {
            return Ok(());
        }
        let Some(record) = self.journal.get(log_id.index).copied() else {
            tracing::debug!(dir = %self.dir.display(), %log_id, "purge of entries this replica does not hold; the snapshot's install rebases the log");
            return Ok(());
        };
        if record.log_id != log_id {
            return Err(invalid(format!(
                "{}: purging up to {log_id}, but the journal holds {} there",
                self.dir.display(),
                record.log_id
            )));
        }
        let pointer = SnapshotPointer {
            last_log_id: log_id,
            next_offset: record.end_offset(),
            membership: self.membership_at(Some(log_id.index)),
        };
        self.rebase(pointer)?;
        let outcome = self
            .writer
            .delete_below(record.end_offset())
            .map_err(storage)?;
        tracing::debug!(dir = %self.dir.display(), %log_id, deleted = outcome.segments_deleted, start_offset = outcome.start_offset, "purged a partition replica's log");
        Ok(())
    }

    /// Makes `pointer` this replica's snapshot and the journal's base: written before
    /// the journal forgets anything, so an open finds the journal's records at or below
    /// it as leftovers.
    fn rebase(&mut self, pointer: SnapshotPointer) -> IoResult<()> {
        write_checked(&self.dir, SNAPSHOT_FILE, &pointer)?;
        let index = pointer.last_log_id.index;
        self.journal.rebase(pointer.journal_base())?;
        let before = self.members.len();
        self.members.retain(|at, _| *at > index);
        if self.members.len() != before {
            write_checked(&self.dir, MEMBERS_FILE, &self.members)?;
        }
        self.state.last_purged = self.state.last_purged.max(Some(pointer.last_log_id));
        self.state.committed = self.state.committed.max(Some(pointer.last_log_id));
        self.applied = self.applied.max(Some(pointer.last_log_id));
        self.snapshot = Some(pointer);
        self.save_state()
    }

    /// Installs the leader's snapshot: this replica was too far behind (the leader no
    /// longer holds the entries it lacks) or lost its directory. If the log holds the
    /// pointer's entry, it is only purged up to there; otherwise the whole local log is
    /// discarded and starts again, empty, at the pointer's offset, and the entries after
    /// it come by replication. What the pointer covers is what retention deleted on the
    /// leader: the replica ends holding the records the leader holds.
    pub fn install(&mut self, pointer: SnapshotPointer) -> IoResult<()> {
        if self
            .snapshot
            .as_ref()
            .is_some_and(|s| s.last_log_id >= pointer.last_log_id)
        {
            return Ok(());
        }
        let at = pointer.next_offset;
        let holds = self
            .journal
            .get(pointer.last_log_id.index)
            .is_some_and(|r| r.log_id == pointer.last_log_id && r.end_offset() == at);
        self.rebase(pointer)?;
        if holds {
            self.writer.publish_to(at).map_err(storage)?;
            self.writer.delete_below(at).map_err(storage)?;
        } else {
            // `rebase` dropped every record that does not go on from the pointer; the
            // log's batches go with them.
            if !self.members.is_empty() && self.journal.records().is_empty() {
                self.members.clear();
                write_checked(&self.dir, MEMBERS_FILE, &self.members)?;
            }
            self.writer.restart_at(at).map_err(storage)?;
        }
        tracing::info!(dir = %self.dir.display(), offset = at, kept_log = holds, "installed the partition group's snapshot");
        Ok(())
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
            self.applied = Some(*log_id);
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
            // The configuration in force at the journal's base.
            None => self
                .snapshot
                .as_ref()
                .map(|s| s.membership.clone())
                .unwrap_or_default(),
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
