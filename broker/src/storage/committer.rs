//! Group commit: many appenders, one writer thread, one flush per group.
//!
//! A [`Committer`] owns a partition's [`LogWriter`] on a thread of its own. Appenders
//! validate their batch on their own thread (the CRC pass runs in parallel), then hand the
//! bytes over a bounded channel. The writer thread takes everything queued — up to
//! [`MAX_GROUP_BATCHES`] batches — appends it all, commits once (one flush under
//! `FsyncPolicy::Always`), and only then answers each appender. Under load the flush cost is
//! shared by the whole group; an idle partition still answers a lone batch at once.

use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::FsyncPolicy;
use super::batch::ValidatedBatch;
use super::error::{Result, StorageError};
use super::log::{Appended, LogReader, LogWriter, WriterStats};
use crate::clock::now_ms;

/// Most batches appended under one commit: bounds how long the first appender of a group
/// waits for the others.
pub const MAX_GROUP_BATCHES: usize = 1024;
/// Requests that may wait in the queue before appenders block: the committer's memory bound.
pub const QUEUE_DEPTH: usize = 4096;
/// How often an idle writer wakes for retention (and, under the interval policy, at least
/// as often as its interval). Long, so that thousands of quiet partitions cost nothing.
const IDLE_WAKE: Duration = Duration::from_secs(1);
/// Longest the writer waits for a group to fill up again before it flushes (fsync
/// `always` only). An appender answered by the previous flush needs a moment to send its
/// next batch; without the wait, eight steady appenders split into groups of four or five
/// and pay nearly twice the flushes. A flush costs 0.3–2 ms here, so the wait is cheap.
const GATHER_WAIT: Duration = Duration::from_micros(200);
/// How often retention runs.
pub const RETENTION_EVERY: Duration = Duration::from_secs(10);

/// Answers one appender, on the writer's thread.
pub type Reply = Box<dyn FnOnce(Result<Appended>) + Send>;

enum Request {
    Append { batch: ValidatedBatch, reply: Reply },
    Close(Box<dyn FnOnce(Result<()>) + Send>),
}

/// A handle to a partition's writer thread. Cheap to clone; every clone appends to the same
/// log.
#[derive(Clone)]
pub struct CommitterHandle {
    tx: Sender<Request>,
    reader: LogReader,
    max_batch_bytes: usize,
}

/// Owns the writer thread; [`Committer::close`] stops it cleanly.
pub struct Committer {
    handle: CommitterHandle,
    thread: Option<JoinHandle<()>>,
    stats: std::sync::Arc<WriterStats>,
}

impl Committer {
    /// Moves `writer` onto its own thread. Batches larger than `max_batch_bytes` are refused
    /// before they are queued.
    pub fn start(writer: LogWriter, max_batch_bytes: usize) -> Result<Committer> {
        Self::start_with_hook(writer, max_batch_bytes, |_| {})
    }

    /// Like [`start`](Self::start); `on_commit` runs on the writer thread with the new high
    /// watermark after every commit that published something (e.g. to wake tailing readers).
    pub fn start_with_hook(
        writer: LogWriter,
        max_batch_bytes: usize,
        on_commit: impl Fn(u64) + Send + 'static,
    ) -> Result<Committer> {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE_DEPTH);
        let reader = writer.reader();
        let stats = writer.stats();
        let name = format!("herald-writer-{}", writer.dir().display());
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || run(writer, rx, on_commit))
            .map_err(|e| StorageError::Io {
                op: "spawn writer thread",
                path: Default::default(),
                cause: e,
            })?;
        Ok(Committer {
            handle: CommitterHandle {
                tx,
                reader,
                max_batch_bytes,
            },
            thread: Some(thread),
            stats,
        })
    }

    pub fn handle(&self) -> CommitterHandle {
        self.handle.clone()
    }

    pub fn stats(&self) -> std::sync::Arc<WriterStats> {
        self.stats.clone()
    }

    /// Appends nothing more, answers everything queued, flushes and closes the log.
    pub fn close(mut self) -> Result<()> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let sent = self.handle.tx.send(Request::Close(Box::new(move |r| {
            let _ = tx.send(r);
        })));
        let result = match sent {
            Ok(()) => rx.recv().unwrap_or(Ok(())),
            Err(_) => Ok(()),
        };
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        result
    }
}

impl CommitterHandle {
    pub fn reader(&self) -> &LogReader {
        &self.reader
    }

    /// Queues a validated batch; `reply` runs on the writer thread once the batch is
    /// committed (or failed). Blocks while the queue is full: that is the backpressure.
    pub fn append_with(
        &self,
        batch: ValidatedBatch,
        reply: impl FnOnce(Result<Appended>) + Send + 'static,
    ) {
        let request = Request::Append {
            batch,
            reply: Box::new(reply),
        };
        if let Err(crossbeam_channel::SendError(Request::Append { reply, .. })) =
            self.tx.send(request)
        {
            reply(Err(closed()));
        }
    }

    /// Like [`append_with`](Self::append_with) but never blocks: when the queue is full,
    /// `reply` gets [`StorageError::QueueFull`] at once.
    pub fn try_append_with(
        &self,
        batch: ValidatedBatch,
        reply: impl FnOnce(Result<Appended>) + Send + 'static,
    ) {
        let request = Request::Append {
            batch,
            reply: Box::new(reply),
        };
        if let Err(e) = self.tx.try_send(request) {
            let error = if e.is_full() {
                StorageError::QueueFull
            } else {
                closed()
            };
            if let Request::Append { reply, .. } = e.into_inner() {
                reply(Err(error));
            }
        }
    }

    /// Validates `bytes` (on the calling thread, so the validation of many appenders runs
    /// in parallel), appends it and waits for its commit.
    pub fn append(&self, bytes: Bytes) -> Result<Appended> {
        let batch = ValidatedBatch::new(bytes, self.max_batch_bytes)?;
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.append_with(batch, move |r| {
            let _ = tx.send(r);
        });
        rx.recv().unwrap_or_else(|_| Err(closed()))
    }

    pub fn max_batch_bytes(&self) -> usize {
        self.max_batch_bytes
    }
}

/// Answers every appender of a group with its append's result, or with the commit's
/// failure for those whose append succeeded.
pub fn answer(group: &mut Vec<(Result<Appended>, Reply)>, committed: &Result<u64>) {
    for (result, reply) in group.drain(..) {
        reply(match (committed, result) {
            (Ok(_), result) => result,
            (Err(e), Ok(_)) => Err(StorageError::Poisoned {
                reason: e.to_string(),
            }),
            (Err(_), Err(e)) => Err(e),
        });
    }
}

fn closed() -> StorageError {
    StorageError::WriterStopped
}

fn run(mut writer: LogWriter, rx: Receiver<Request>, on_commit: impl Fn(u64)) {
    let mut group: Vec<(Result<Appended>, Reply)> = Vec::with_capacity(MAX_GROUP_BATCHES);
    let mut last_retention = std::time::Instant::now();
    let mut close: Option<Box<dyn FnOnce(Result<()>) + Send>> = None;
    let gather = writer.config().fsync == FsyncPolicy::Always;
    let mut last_group = 0;
    let idle_wake = match writer.config().fsync {
        FsyncPolicy::Interval(every) => every.min(IDLE_WAKE),
        FsyncPolicy::Always | FsyncPolicy::Never => IDLE_WAKE,
    };
    loop {
        let first = match rx.recv_timeout(idle_wake) {
            Ok(request) => Some(request),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut next = first;
        let gather_until = std::time::Instant::now() + GATHER_WAIT;
        while let Some(request) = next.take() {
            match request {
                Request::Append { batch, reply } => {
                    let result = writer.append(batch.as_valid());
                    group.push((result, reply));
                }
                Request::Close(reply) => close = Some(reply),
            }
            if group.len() >= MAX_GROUP_BATCHES || close.is_some() {
                break;
            }
            next = rx.try_recv().ok();
            // Nothing queued, but the last group was bigger: its other appenders are
            // probably about to send again. Worth waiting for only when a flush follows.
            if next.is_none() && gather && group.len() < last_group {
                next = rx.recv_deadline(gather_until).ok();
            }
        }
        last_group = group.len();
        if !group.is_empty() {
            let committed = writer.commit();
            if let Ok(high_watermark) = committed {
                on_commit(high_watermark);
            }
            answer(&mut group, &committed);
        }
        if close.is_some() {
            break;
        }
        if matches!(writer.config().fsync, FsyncPolicy::Interval(_))
            && let Err(error) = writer.tick()
        {
            tracing::error!(%error, "interval flush failed");
        }
        if last_retention.elapsed() >= RETENTION_EVERY {
            last_retention = std::time::Instant::now();
            if let Err(error) = writer.enforce_retention(now_ms()) {
                tracing::error!(%error, "retention failed");
            }
        }
    }
    // Everything queued before the close (or before the last handle dropped) was answered
    // above; whatever arrives now is refused.
    drop(rx);
    let result = writer.close();
    if let Err(error) = &result {
        tracing::error!(%error, "closing the partition log failed");
    }
    if let Some(reply) = close {
        reply(result);
    }
}
