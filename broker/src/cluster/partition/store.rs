//! openraft's storage of a partition group over its replica thread: `RaftLogStorage` and
//! `RaftLogReader` (the Raft log is the segment log plus the entry journal) and
//! `RaftStateMachine` (applying an entry publishes its records to readers).
//!
//! Snapshots are pointers (`SnapshotPointer`: last log id, next offset, membership), no
//! data, because the state machine's state *is* the log: what a snapshot covers is the
//! records retention deleted. A snapshot is built only when retention wants to delete
//! segments (the partition triggers it, see `serving`); it points at the end of the
//! last applied entry below the first segment retention keeps, so once openraft purges
//! the log up to it, the segments below are deleted. A replica too far behind (or one
//! that lost its directory) installs the leader's pointer: it discards its log, starts
//! it again at the pointer's offset and receives the rest by AppendEntries.

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};

use super::replica::{Command, Replica};
use super::replica_log::SnapshotPointer;
use super::types::{PartAppended, PartTypes};
use crate::cluster::types::{NodeAddr, NodeId};

/// Bytes of batches one AppendEntries carries at most (at least one entry): within the
/// peer message limit with room for the envelope.
pub const REPLICATION_BYTES: usize = 4 * 1024 * 1024;

type StorageResult<T> = Result<T, StorageError<NodeId>>;

fn read_error(e: std::io::Error) -> StorageError<NodeId> {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

fn write_error(e: std::io::Error) -> StorageError<NodeId> {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

/// `[start, end)` of a range of indexes.
fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

/// The partition group's log store; clones share the replica (a clone is the reader
/// openraft's replication tasks use).
#[derive(Clone)]
pub struct PartLogStore {
    replica: Arc<Replica>,
}

impl PartLogStore {
    pub fn new(replica: Arc<Replica>) -> PartLogStore {
        PartLogStore { replica }
    }

    async fn read(
        &self,
        start: u64,
        end: u64,
        max_bytes: usize,
    ) -> StorageResult<Vec<Entry<PartTypes>>> {
        if start >= end {
            return Ok(Vec::new());
        }
        self.replica
            .ask(|reply| Command::Read {
                start,
                end,
                max_bytes,
                reply,
            })
            .await
            .and_then(|r| r)
            .map_err(read_error)
    }
}

impl RaftLogReader<PartTypes> for PartLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<PartTypes>>> {
        let (start, end) = bounds(&range);
        self.read(start, end, usize::MAX).await
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> StorageResult<Vec<Entry<PartTypes>>> {
        self.read(start, end, REPLICATION_BYTES).await
    }
}

impl RaftLogStorage<PartTypes> for PartLogStore {
    type LogReader = PartLogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<PartTypes>> {
        let (state, last_log_id) = self
            .replica
            .ask(|reply| Command::State { reply })
            .await
            .map_err(read_error)?;
        Ok(LogState {
            last_purged_log_id: state.last_purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        let vote = *vote;
        self.replica
            .ask(|reply| Command::SaveVote { vote, reply })
            .await
            .and_then(|r| r)
            .map_err(|e| StorageIOError::write_vote(AnyError::new(&e)).into())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        let (state, _) = self
            .replica
            .ask(|reply| Command::State { reply })
            .await
            .map_err(|e| StorageError::from(StorageIOError::read_vote(AnyError::new(&e))))?;
        Ok(state.vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        self.replica
            .ask(|reply| Command::SaveCommitted { committed, reply })
            .await
            .map_err(write_error)
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        let (state, _) = self
            .replica
            .ask(|reply| Command::State { reply })
            .await
            .map_err(read_error)?;
        Ok(state.committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<PartTypes>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<PartTypes>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        // The answer comes once the entries are written; `callback` once they are synced.
        self.replica
            .ask(|reply| Command::Append {
                entries,
                callback,
                reply,
            })
            .await
            .and_then(|r| r)
            .map_err(write_error)
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let index = log_id.index;
        self.replica
            .ask(|reply| Command::Truncate { index, reply })
            .await
            .and_then(|r| r)
            .map_err(write_error)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.replica
            .ask(|reply| Command::Purge { log_id, reply })
            .await
            .and_then(|r| r)
            .map_err(write_error)
    }
}

/// The partition group's state machine: what is applied is what readers see.
pub struct PartStateMachine {
    replica: Arc<Replica>,
    applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, NodeAddr>,
    /// The last snapshot built or installed (shared with the builders), or the one the
    /// replica held at open.
    snapshot: Arc<std::sync::Mutex<Option<SnapshotPointer>>>,
}

impl PartStateMachine {
    /// The state machine of `replica`: applied up to its saved commit, which its open
    /// published (at least up to its snapshot).
    pub async fn open(replica: Arc<Replica>) -> std::io::Result<PartStateMachine> {
        let (state, _) = replica.ask(|reply| Command::State { reply }).await?;
        let applied = state.committed;
        let index = applied.map(|a| a.index);
        let membership = replica
            .ask(|reply| Command::Membership { index, reply })
            .await?;
        let snapshot = replica.ask(|reply| Command::Snapshot { reply }).await?;
        Ok(PartStateMachine {
            replica,
            applied,
            membership,
            snapshot: Arc::new(std::sync::Mutex::new(snapshot)),
        })
    }

    fn current(&self) -> Option<SnapshotPointer> {
        self.snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn meta_of(pointer: &SnapshotPointer) -> SnapshotMeta<NodeId, NodeAddr> {
    let id = pointer.last_log_id;
    SnapshotMeta {
        last_log_id: Some(id),
        last_membership: pointer.membership.clone(),
        snapshot_id: format!(
            "{}-{}-{}-at-{}",
            id.leader_id.term, id.leader_id.node_id, id.index, pointer.next_offset
        ),
    }
}

fn snapshot_of(pointer: &SnapshotPointer) -> Snapshot<PartTypes> {
    Snapshot {
        meta: meta_of(pointer),
        snapshot: Box::new(Cursor::new(pointer.encode())),
    }
}

/// Builds a pointer snapshot where retention wants one.
pub struct PointerBuilder {
    replica: Arc<Replica>,
    snapshot: Arc<std::sync::Mutex<Option<SnapshotPointer>>>,
}

impl RaftSnapshotBuilder<PartTypes> for PointerBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<PartTypes>> {
        let wanted = self
            .replica
            .ask(|reply| Command::RetentionPointer { reply })
            .await
            .map_err(|e| StorageIOError::read_state_machine(AnyError::new(&e)))?;
        let mut current = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(wanted) = wanted
            && current
                .as_ref()
                .is_none_or(|c| c.last_log_id < wanted.last_log_id)
        {
            *current = Some(wanted);
        }
        Ok(match current.as_ref() {
            Some(pointer) => snapshot_of(pointer),
            // Nothing to cover: openraft keeps a snapshot only if it is newer than its own.
            None => Snapshot {
                meta: SnapshotMeta::default(),
                snapshot: Box::new(Cursor::new(Vec::new())),
            },
        })
    }
}

impl RaftStateMachine<PartTypes> for PartStateMachine {
    type SnapshotBuilder = PointerBuilder;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, NodeAddr>)> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<PartAppended>>
    where
        I: IntoIterator<Item = Entry<PartTypes>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut log_ids = Vec::new();
        for entry in entries {
            if let EntryPayload::Membership(membership) = entry.payload {
                self.membership = StoredMembership::new(Some(entry.log_id), membership);
            }
            log_ids.push(entry.log_id);
        }
        let Some(last) = log_ids.last().copied() else {
            return Ok(Vec::new());
        };
        let applied = self
            .replica
            .ask(|reply| Command::Apply { log_ids, reply })
            .await
            .and_then(|r| r)
            .map_err(|e| StorageIOError::write_state_machine(AnyError::new(&e)))?;
        self.applied = Some(last);
        Ok(applied)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        PointerBuilder {
            replica: self.replica.clone(),
            snapshot: self.snapshot.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeAddr>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let failed = |e: std::io::Error| -> StorageError<NodeId> {
            StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(&e)).into()
        };
        let pointer = SnapshotPointer::decode(snapshot.get_ref()).map_err(failed)?;
        if Some(pointer.last_log_id) != meta.last_log_id {
            return Err(failed(std::io::Error::other(format!(
                "snapshot {} points at {} but its metadata says {:?}",
                meta.snapshot_id, pointer.last_log_id, meta.last_log_id
            ))));
        }
        let install = pointer.clone();
        self.replica
            .ask(|reply| Command::Install {
                pointer: install,
                reply,
            })
            .await
            .and_then(|r| r)
            .map_err(failed)?;
        self.applied = Some(pointer.last_log_id);
        self.membership = meta.last_membership.clone();
        *self.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = Some(pointer);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<PartTypes>>> {
        Ok(self.current().as_ref().map(snapshot_of))
    }
}
