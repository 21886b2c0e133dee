//! The owner of one partition replica: a thread that holds the [`ReplicaLog`] (its
//! segment log writer and entry journal) and serves openraft's storage calls from a
//! bounded channel, in order. Appends are group-committed: the thread writes every append
//! it finds queued (within a bound: see `GROUP_COMMIT_MAX_WAIT`), syncs once, then calls
//! each `LogFlushed`. Reads for replication are
//! served in the same order, so they see every append made before them, synced or not.

use std::collections::HashMap;
use std::io::{Error, ErrorKind};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::storage::LogFlushed;
use openraft::{Entry, LogId, StoredMembership, Vote};
use tokio::sync::{mpsc, oneshot, watch};

use super::replica_log::{RaftState, ReplicaLog, SnapshotPointer};
use super::types::{PartAppended, PartTypes};
use crate::cluster::types::{NodeAddr, NodeId};
use crate::storage::{
    Appended, LogConfig, LogReader, RetentionLimits, StorageError, WriterStats, batch,
};

/// Commands queued to a replica's thread at most.
const QUEUE: usize = 1024;
/// How often, at most, a changed committed id is written to `raft.state` (it may lag:
/// see [`ReplicaLog::set_committed`]).
const COMMITTED_WRITE_EVERY: Duration = Duration::from_millis(100);
/// A group commit ends when the queue is empty, or once its first append has waited this
/// long, or after this many appends: a queue that never empties (replication reads and
/// appends arriving back to back) must not hold acknowledgements back without bound.
const GROUP_COMMIT_MAX_WAIT: Duration = Duration::from_millis(2);
const GROUP_COMMIT_MAX_APPENDS: usize = 256;

type IoResult<T> = std::io::Result<T>;

/// What openraft's storage asks of the replica's thread.
pub enum Command {
    Append {
        entries: Vec<Entry<PartTypes>>,
        callback: LogFlushed<PartTypes>,
        reply: oneshot::Sender<IoResult<()>>,
    },
    Read {
        start: u64,
        end: u64,
        max_bytes: usize,
        reply: oneshot::Sender<IoResult<Vec<Entry<PartTypes>>>>,
    },
    Truncate {
        index: u64,
        reply: oneshot::Sender<IoResult<()>>,
    },
    Purge {
        log_id: LogId<NodeId>,
        reply: oneshot::Sender<IoResult<()>>,
    },
    SaveVote {
        vote: Vote<NodeId>,
        reply: oneshot::Sender<IoResult<()>>,
    },
    SaveCommitted {
        committed: Option<LogId<NodeId>>,
        reply: oneshot::Sender<()>,
    },
    State {
        reply: oneshot::Sender<(RaftState, Option<LogId<NodeId>>)>,
    },
    Apply {
        log_ids: Vec<LogId<NodeId>>,
        reply: oneshot::Sender<IoResult<Vec<PartAppended>>>,
    },
    Membership {
        index: Option<u64>,
        reply: oneshot::Sender<StoredMembership<NodeId, NodeAddr>>,
    },
    /// The snapshot retention wants now (see `ReplicaLog::retention_pointer`).
    RetentionPointer {
        reply: oneshot::Sender<Option<SnapshotPointer>>,
    },
    /// The snapshot the replica holds.
    Snapshot {
        reply: oneshot::Sender<Option<SnapshotPointer>>,
    },
    /// Installs a snapshot from the group's leader.
    Install {
        pointer: SnapshotPointer,
        reply: oneshot::Sender<IoResult<()>>,
    },
    /// The leader's duplicate check of a batch it is about to propose.
    Check {
        batch: Vec<u8>,
        reply: oneshot::Sender<Result<Checked, StorageError>>,
    },
    /// A proposal that definitely failed: its retry need not wait (see [`Checked`]).
    Release {
        key: PendingKey,
    },
    Stop,
}

/// What the leader's replica found for a batch about to be proposed.
pub enum Checked {
    /// Not stored and not in flight: propose it (handed back). Its key is pending until
    /// released or [`PENDING_FOR`] has passed.
    Fresh(Vec<u8>, Option<PendingKey>),
    /// Stored and committed at these offsets: the answer to a retry.
    Stored(Appended),
    /// An earlier copy is proposed or stored but not yet committed: the retry must wait
    /// to learn whether it commits (then it is `Stored`) or is cut (then `Fresh`).
    InFlight,
}

/// What identifies a batch for the duplicate checks: an idempotent producer's sequence,
/// or a message id.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum PendingKey {
    Producer {
        producer_id: u64,
        epoch: u16,
        base_sequence: u32,
    },
    MsgId(Box<[u8]>),
}

/// How long a proposed key stays pending without a release: past the commit timeout a
/// proposal's outcome shows in the log (stored or not).
pub const PENDING_FOR: Duration = Duration::from_secs(5);
/// Pending keys held at most; past it the oldest are forgotten (their retries are then
/// decided by the log alone, which only misses a proposal not yet appended).
const PENDING_MAX: usize = 4096;

/// A running replica: the channel to its thread and a reader of its committed records.
pub struct Replica {
    tx: mpsc::Sender<Command>,
    reader: LogReader,
    dir: PathBuf,
    high_watermark: watch::Receiver<u64>,
    stats: Arc<WriterStats>,
    retention: Arc<RetentionLimits>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

fn gone() -> Error {
    Error::new(
        ErrorKind::BrokenPipe,
        "the partition replica is stopped or failed",
    )
}

impl Replica {
    /// Opens the replica in `dir` (reconciling journal and log) and starts its thread.
    /// Blocking.
    pub fn open(dir: PathBuf, config: LogConfig, name: String) -> IoResult<Replica> {
        let log = ReplicaLog::open(&dir, config)?;
        let reader = log.reader();
        let (stats, retention) = (log.stats(), log.retention());
        let (on_publish, high_watermark) = watch::channel(log.high_watermark());
        let (tx, rx) = mpsc::channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name(format!("replica {name}"))
            .spawn(move || run(log, rx, on_publish))?;
        Ok(Replica {
            tx,
            reader,
            dir,
            high_watermark,
            stats,
            retention,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn stats(&self) -> Arc<WriterStats> {
        self.stats.clone()
    }

    pub fn retention(&self) -> Arc<RetentionLimits> {
        self.retention.clone()
    }

    /// A receiver that changes whenever applied entries move the high watermark.
    pub fn watch_high_watermark(&self) -> watch::Receiver<u64> {
        self.high_watermark.clone()
    }

    /// Tells the thread a proposal failed for certain (best effort: a full queue leaves
    /// the key to expire).
    pub fn release(&self, key: PendingKey) {
        let _ = self.tx.try_send(Command::Release { key });
    }

    /// A lock-free reader: it sees the committed records only.
    pub fn reader(&self) -> LogReader {
        self.reader.clone()
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Sends `command` and waits for its answer.
    pub async fn ask<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> IoResult<T> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(command(reply)).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())
    }

    /// Stops the thread after the commands queued before, syncing and closing the log,
    /// and waits for it (the log's directory lock is free afterwards).
    pub async fn stop(&self) {
        let _ = self.tx.send(Command::Stop).await;
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        // Without a stop the thread ends once every sender is gone.
        let _ = self.tx.try_send(Command::Stop);
    }
}

fn clone_error(e: &Error) -> Error {
    Error::new(e.kind(), e.to_string())
}

/// The replica thread.
struct Owner {
    log: ReplicaLog,
    /// Appends written but not yet synced.
    unsynced: Vec<LogFlushed<PartTypes>>,
    /// When the first of `unsynced` was written.
    unsynced_since: Option<Instant>,
    last_state_write: Instant,
    /// After a failed write nothing else is written: what the log holds beyond the
    /// journal is unknown until an open reconciles them.
    failed: Option<String>,
    /// Keys of batches this replica (as leader) has let through to be proposed, with
    /// when: a retry arriving before the proposal is appended must not be proposed again.
    pending: HashMap<PendingKey, Instant>,
    /// Told of every new high watermark (applied entries), to wake tailing readers.
    on_publish: watch::Sender<u64>,
}

impl Owner {
    fn check(&self) -> IoResult<()> {
        match &self.failed {
            Some(why) => Err(Error::other(format!(
                "the partition replica failed earlier: {why}"
            ))),
            None => Ok(()),
        }
    }

    fn fail<T>(&mut self, result: IoResult<T>) -> IoResult<T> {
        if let Err(e) = &result {
            tracing::error!(dir = %self.log_dir(), error = %e, "a partition replica's write failed; it takes no more writes until it is reopened");
            self.failed = Some(e.to_string());
        }
        result
    }

    fn log_dir(&self) -> String {
        self.log.dir().display().to_string()
    }

    /// Syncs what is pending and tells openraft; writes a changed committed id now and
    /// then.
    fn flush(&mut self) {
        self.unsynced_since = None;
        if !self.unsynced.is_empty() {
            let result = self.check().and_then(|()| self.log.sync());
            let result = self.fail(result);
            for callback in self.unsynced.drain(..) {
                callback.log_io_completed(result.as_ref().map(|_| ()).map_err(clone_error));
            }
        }
        if self.log.state_dirty()
            && self.failed.is_none()
            && self.last_state_write.elapsed() >= COMMITTED_WRITE_EVERY
        {
            self.last_state_write = Instant::now();
            if let Err(error) = self.log.save_state() {
                tracing::warn!(%error, "writing a partition replica's committed id (it is written again later)");
            }
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Append {
                entries,
                callback,
                reply,
            } => {
                let result = self.check().and_then(|()| self.log.append(entries));
                let result = self.fail(result);
                match &result {
                    Ok(()) => {
                        self.unsynced_since.get_or_insert_with(Instant::now);
                        self.unsynced.push(callback);
                    }
                    Err(e) => callback.log_io_completed(Err(clone_error(e))),
                }
                let _ = reply.send(result);
            }
            Command::Read {
                start,
                end,
                max_bytes,
                reply,
            } => {
                let _ = reply.send(self.log.read(start, end, max_bytes));
            }
            Command::Truncate { index, reply } => {
                self.flush();
                let result = self.check().and_then(|()| self.log.truncate(index));
                let result = self.fail(result);
                let _ = reply.send(result);
            }
            Command::Purge { log_id, reply } => {
                self.flush();
                let result = self.check().and_then(|()| self.log.purge(log_id));
                let result = self.fail(result);
                let _ = reply.send(result);
            }
            Command::SaveVote { vote, reply } => {
                self.flush();
                let result = self.check().and_then(|()| self.log.save_vote(vote));
                let _ = reply.send(result);
            }
            Command::SaveCommitted { committed, reply } => {
                self.log.set_committed(committed);
                let _ = reply.send(());
            }
            Command::State { reply } => {
                let _ = reply.send((self.log.state().clone(), self.log.last_log_id()));
            }
            Command::Apply { log_ids, reply } => {
                let result = self.check().and_then(|()| self.log.apply(&log_ids));
                self.announce_high_watermark();
                let _ = reply.send(result);
            }
            Command::RetentionPointer { reply } => {
                let pointer = match self.failed {
                    Some(_) => None,
                    None => self.log.retention_pointer(crate::clock::now_ms()),
                };
                let _ = reply.send(pointer);
            }
            Command::Snapshot { reply } => {
                let _ = reply.send(self.log.snapshot().cloned());
            }
            Command::Install { pointer, reply } => {
                self.flush();
                let result = self.check().and_then(|()| self.log.install(pointer));
                let result = self.fail(result);
                self.announce_high_watermark();
                let _ = reply.send(result);
            }
            Command::Check { batch, reply } => {
                let _ = reply.send(self.check_duplicate(batch));
            }
            Command::Release { key } => {
                self.pending.remove(&key);
            }
            Command::Membership { index, reply } => {
                let _ = reply.send(self.log.membership_at(index));
            }
            Command::Stop => {}
        }
    }
}

impl Owner {
    /// Wakes tailing readers if the high watermark moved.
    fn announce_high_watermark(&mut self) {
        let now = self.log.high_watermark();
        self.on_publish.send_if_modified(|hw| {
            let moved = now != *hw;
            *hw = now;
            moved
        });
    }

    fn check_duplicate(&mut self, bytes: Vec<u8>) -> Result<Checked, StorageError> {
        if self.failed.is_some() {
            return Err(StorageError::WriterStopped);
        }
        let batch = batch::validate(&bytes, usize::MAX)?;
        let key = match (batch.producer(), batch.first_msg_id()) {
            (Some(stamp), _) => Some(PendingKey::Producer {
                producer_id: stamp.producer_id,
                epoch: stamp.epoch,
                base_sequence: stamp.base_sequence,
            }),
            (None, Some(id)) => Some(PendingKey::MsgId(id.into())),
            (None, None) => None,
        };
        let Some(key) = key else {
            return Ok(Checked::Fresh(bytes, None));
        };
        if let Some(first) = self.log.check_duplicate(&batch)? {
            return Ok(if first.last_offset < self.log.high_watermark() {
                Checked::Stored(first)
            } else {
                Checked::InFlight
            });
        }
        let now = Instant::now();
        if self
            .pending
            .get(&key)
            .is_some_and(|at| now.duration_since(*at) < PENDING_FOR)
        {
            return Ok(Checked::InFlight);
        }
        if self.pending.len() >= PENDING_MAX {
            self.pending
                .retain(|_, at| now.duration_since(*at) < PENDING_FOR);
            while self.pending.len() >= PENDING_MAX {
                let oldest = self
                    .pending
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(k, _)| k.clone());
                match oldest {
                    Some(k) => self.pending.remove(&k),
                    None => break,
                };
            }
        }
        self.pending.insert(key.clone(), now);
        Ok(Checked::Fresh(bytes, Some(key)))
    }
}

fn run(log: ReplicaLog, mut rx: mpsc::Receiver<Command>, on_publish: watch::Sender<u64>) {
    let mut owner = Owner {
        log,
        unsynced: Vec::new(),
        unsynced_since: None,
        last_state_write: Instant::now(),
        failed: None,
        pending: HashMap::new(),
        on_publish,
    };
    loop {
        let command = match rx.try_recv() {
            Ok(command) => command,
            Err(mpsc::error::TryRecvError::Empty) => {
                // Nothing more queued: this group commit ends here.
                owner.flush();
                match rx.blocking_recv() {
                    Some(command) => command,
                    None => break,
                }
            }
            Err(mpsc::error::TryRecvError::Disconnected) => break,
        };
        if matches!(command, Command::Stop) {
            break;
        }
        owner.handle(command);
        if owner.unsynced.len() >= GROUP_COMMIT_MAX_APPENDS
            || owner
                .unsynced_since
                .is_some_and(|t| t.elapsed() >= GROUP_COMMIT_MAX_WAIT)
        {
            owner.flush();
        }
    }
    owner.last_state_write = Instant::now() - COMMITTED_WRITE_EVERY;
    owner.flush();
    if owner.failed.is_none()
        && let Err(error) = owner.log.close()
    {
        tracing::warn!(%error, "closing a partition replica");
    }
}
