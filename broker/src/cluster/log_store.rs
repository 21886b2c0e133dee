//! The metadata group's durable Raft log and vote: one append-only journal file,
//! `<data_dir>/cluster/raft.log`.
//!
//! Each record is a frame: `len: u32 LE`, `crc32c(payload): u32 LE`, then `payload` (the
//! bincode of a [`Record`]). Entries, the vote, the committed id, truncations and purges
//! are all records; opening the file replays them in order. Every write is one `write`
//! of whole frames followed by `fdatasync` before openraft is told it is durable, so a
//! kill -9 leaves at most one torn frame at the end: replay stops at the first frame that
//! is short or fails its CRC, and the file is cut there (the cut records were never
//! acknowledged as durable). When purges leave the file mostly dead, it is rewritten with
//! only what is live (a temporary file, synced, renamed, the directory synced).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote,
};
use serde::{Deserialize, Serialize};

use super::types::{MetaTypes, NodeId};

/// The journal's file name in the cluster directory.
pub const LOG_FILE: &str = "raft.log";
/// Bytes of a frame's header.
const FRAME_HEADER: usize = 8;
/// A frame longer than this is damage, not a record: metadata entries are small.
const MAX_RECORD_BYTES: usize = 64 * 1024 * 1024;
/// The journal is rewritten when it is at least this big and mostly purged entries.
const COMPACT_MIN_BYTES: u64 = 1024 * 1024;

type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// One journal record.
#[derive(Debug, Serialize, Deserialize)]
enum Record {
    Entry(Entry<MetaTypes>),
    Vote(Vote<NodeId>),
    Committed(Option<LogId<NodeId>>),
    /// Entries from this index on were removed (a follower's log diverged).
    TruncateFrom(u64),
    /// Entries up to this id were removed (they are in the snapshot).
    PurgeUpTo(LogId<NodeId>),
}

/// What the journal holds, replayed.
#[derive(Debug, Default)]
struct Journal {
    entries: BTreeMap<u64, Entry<MetaTypes>>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    last_purged: Option<LogId<NodeId>>,
}

impl Journal {
    fn apply(&mut self, record: Record) {
        match record {
            Record::Entry(entry) => {
                self.entries.insert(entry.log_id.index, entry);
            }
            Record::Vote(vote) => self.vote = Some(vote),
            Record::Committed(committed) => self.committed = committed,
            Record::TruncateFrom(index) => {
                self.entries.split_off(&index);
            }
            Record::PurgeUpTo(log_id) => {
                self.entries = self.entries.split_off(&(log_id.index + 1));
                self.last_purged = Some(log_id);
            }
        }
    }

    /// Records that rebuild this journal from nothing.
    fn live_records(&self) -> Vec<Record> {
        let mut records = Vec::with_capacity(self.entries.len() + 3);
        if let Some(vote) = self.vote {
            records.push(Record::Vote(vote));
        }
        records.push(Record::Committed(self.committed));
        if let Some(purged) = self.last_purged {
            records.push(Record::PurgeUpTo(purged));
        }
        records.extend(self.entries.values().cloned().map(Record::Entry));
        records
    }
}

/// The open journal file and its replayed contents.
struct Inner {
    dir: PathBuf,
    file: File,
    /// Bytes in the file.
    bytes: u64,
    journal: Journal,
}

/// The metadata group's log store (openraft's `RaftLogStorage`). Cheap to clone: clones
/// share the journal, and a clone is the log reader openraft's replication tasks use.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
}

fn encode_frames(records: &[Record]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    for record in records {
        let payload = bincode::serialize(record).map_err(std::io::Error::other)?;
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        out.extend_from_slice(&payload);
    }
    Ok(out)
}

/// Replays whole frames from `bytes`; returns the journal and the length of the valid
/// prefix.
fn replay(bytes: &[u8]) -> (Journal, usize) {
    let mut journal = Journal::default();
    let mut at = 0;
    while bytes.len() - at >= FRAME_HEADER {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        let start = at + FRAME_HEADER;
        if len > MAX_RECORD_BYTES || bytes.len() - start < len {
            break;
        }
        let payload = &bytes[start..start + len];
        if crc32c::crc32c(payload) != crc {
            break;
        }
        let Ok(record) = bincode::deserialize::<Record>(payload) else {
            break;
        };
        journal.apply(record);
        at = start + len;
    }
    (journal, at)
}

fn io_context(what: &str, path: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

impl LogStore {
    /// Opens (or creates) the journal in `dir`, cutting a torn tail. Blocking.
    pub fn open(dir: &Path) -> std::io::Result<LogStore> {
        std::fs::create_dir_all(dir).map_err(|e| io_context("creating", dir, e))?;
        let path = dir.join(LOG_FILE);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_context("opening", &path, e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| io_context("reading", &path, e))?;
        let (journal, valid) = replay(&bytes);
        if valid < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                valid,
                cut = bytes.len() - valid,
                "the cluster's Raft log ends in a torn or damaged record; cut after the last whole record"
            );
            file.set_len(valid as u64)
                .and_then(|()| file.sync_all())
                .map_err(|e| io_context("cutting", &path, e))?;
        }
        crate::storage::sync_dir(dir).map_err(std::io::Error::other)?;
        Ok(LogStore {
            inner: Arc::new(Mutex::new(Inner {
                dir: dir.to_owned(),
                file,
                bytes: valid as u64,
                journal,
            })),
        })
    }

    /// Appends `records` durably and replays them into the journal, on a blocking thread.
    async fn write(&self, records: Vec<Record>) -> std::io::Result<()> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut inner = inner.lock().unwrap_or_else(|p| p.into_inner());
            let frames = encode_frames(&records)?;
            inner.file.write_all(&frames)?;
            inner.file.sync_data()?;
            inner.bytes += frames.len() as u64;
            for record in records {
                inner.journal.apply(record);
            }
            Ok(())
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Rewrites the journal with only its live records when purges left it mostly dead.
    async fn compact_if_worth_it(&self) -> std::io::Result<()> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut inner = inner.lock().unwrap_or_else(|p| p.into_inner());
            let live = encode_frames(&inner.journal.live_records())?;
            if inner.bytes < COMPACT_MIN_BYTES || (live.len() as u64) * 4 > inner.bytes {
                return Ok(());
            }
            let path = inner.dir.join(LOG_FILE);
            let tmp = inner.dir.join(format!("{LOG_FILE}.tmp"));
            let mut file = File::create(&tmp)?;
            file.write_all(&live)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            crate::storage::sync_dir(&inner.dir).map_err(std::io::Error::other)?;
            inner.file = OpenOptions::new().append(true).read(true).open(&path)?;
            inner.bytes = live.len() as u64;
            Ok(())
        })
        .await
        .map_err(std::io::Error::other)?
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn write_error(e: std::io::Error) -> StorageError<NodeId> {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

impl RaftLogReader<MetaTypes> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<MetaTypes>>> {
        Ok(self
            .lock()
            .journal
            .entries
            .range(range)
            .map(|(_, entry)| entry.clone())
            .collect())
    }
}

impl RaftLogStorage<MetaTypes> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<MetaTypes>> {
        let inner = self.lock();
        let last_purged_log_id = inner.journal.last_purged;
        let last_log_id = inner
            .journal
            .entries
            .last_key_value()
            .map(|(_, entry)| entry.log_id)
            .or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        self.write(vec![Record::Vote(*vote)])
            .await
            .map_err(|e| StorageIOError::write_vote(AnyError::new(&e)).into())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        Ok(self.lock().journal.vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        self.write(vec![Record::Committed(committed)])
            .await
            .map_err(write_error)
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self.lock().journal.committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<MetaTypes>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<MetaTypes>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let records: Vec<Record> = entries.into_iter().map(Record::Entry).collect();
        match self.write(records).await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let error = write_error(std::io::Error::new(e.kind(), e.to_string()));
                callback.log_io_completed(Err(e));
                Err(error)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.write(vec![Record::TruncateFrom(log_id.index)])
            .await
            .map_err(write_error)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.write(vec![Record::PurgeUpTo(log_id)])
            .await
            .map_err(write_error)?;
        self.compact_if_worth_it().await.map_err(write_error)
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::cluster::types::MetaCommand;

    fn entry(term: u64, index: u64) -> Entry<MetaTypes> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(MetaCommand::DeleteTopic {
                name: format!("t{index}"),
            }),
        }
    }

    async fn append(store: &mut LogStore, entries: Vec<Entry<MetaTypes>>) {
        store
            .write(entries.into_iter().map(Record::Entry).collect())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn reopening_replays_entries_vote_truncation_and_purge() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        append(&mut store, (1..=5).map(|i| entry(1, i)).collect()).await;
        store.save_vote(&Vote::new(2, 3)).await.unwrap();
        store
            .truncate(LogId::new(CommittedLeaderId::new(1, 1), 4))
            .await
            .unwrap();
        store
            .purge(LogId::new(CommittedLeaderId::new(1, 1), 1))
            .await
            .unwrap();
        drop(store);

        let mut store = LogStore::open(dir.path()).unwrap();
        assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(2, 3)));
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(1));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(3));
        let got = store.try_get_log_entries(0..10).await.unwrap();
        assert_eq!(got, vec![entry(1, 2), entry(1, 3)]);
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_at_the_last_whole_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        append(&mut store, (1..=3).map(|i| entry(1, i)).collect()).await;
        drop(store);
        let path = dir.path().join(LOG_FILE);
        let whole = std::fs::metadata(&path).unwrap().len();
        // A kill -9 in the middle of the next write: half a frame.
        let half = &encode_frames(&[Record::Entry(entry(1, 4))]).unwrap()[..10];
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(half)
            .unwrap();

        let mut store = LogStore::open(dir.path()).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), whole);
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id.map(|l| l.index), Some(3));
        // The store appends after the cut as usual.
        append(&mut store, vec![entry(2, 4)]).await;
        drop(store);
        let mut store = LogStore::open(dir.path()).unwrap();
        let got = store.try_get_log_entries(4..5).await.unwrap();
        assert_eq!(got, vec![entry(2, 4)]);
    }

    #[tokio::test]
    async fn a_flipped_bit_in_the_last_record_cuts_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        append(&mut store, (1..=2).map(|i| entry(1, i)).collect()).await;
        drop(store);
        let path = dir.path().join(LOG_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id.map(|l| l.index), Some(1));
    }

    #[tokio::test]
    async fn a_mostly_purged_journal_is_rewritten_smaller() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        let big = "x".repeat(4096);
        let entries: Vec<_> = (1..=400)
            .map(|i| Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
                payload: EntryPayload::Normal(MetaCommand::DeleteTopic { name: big.clone() }),
            })
            .collect();
        append(&mut store, entries).await;
        let before = std::fs::metadata(dir.path().join(LOG_FILE)).unwrap().len();
        store
            .purge(LogId::new(CommittedLeaderId::new(1, 1), 390))
            .await
            .unwrap();
        let after = std::fs::metadata(dir.path().join(LOG_FILE)).unwrap().len();
        assert!(after * 10 < before, "{after} vs {before}");
        drop(store);
        let mut store = LogStore::open(dir.path()).unwrap();
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(390));
        assert_eq!(store.try_get_log_entries(0..1000).await.unwrap().len(), 10);
    }
}
