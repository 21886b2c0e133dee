//! Group commit: many appenders, one writer thread, one flush per group.
//!
//! A [`Committer`] owns a partition's [`LogWriter`] on a thread of its own. Appenders
//! validate their batch on their own thread (the CRC pass runs in parallel), then hand the
//! bytes over a bounded channel. The writer thread takes everything queued — up to
//! [`MAX_GROUP_BATCHES`](super::writer_core::MAX_GROUP_BATCHES) batches — appends it all,
//! commits once (one flush under `FsyncPolicy::Always`), and only then answers each
//! appender. Under load the flush cost is shared by the whole group; an idle partition
//! still answers a lone batch at once.
//!
//! This module is the thread and its channel; what to do with each request, and when,
//! is the [`WriterCore`]'s to decide (shared with the writer task of `task_writer`).

use std::thread::JoinHandle;
use std::time::Instant;

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::batch::ValidatedBatch;
use super::error::{Result, StorageError};
use super::log::{Appended, LogReader, LogWriter, WriterStats};
use super::writer_core::{CommitMode, QUEUE_DEPTH, Request, WriterCore};
use crate::clock::now_ms;

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
        let core = WriterCore::new(writer.config().fsync, CommitMode::Flushing, Instant::now())?;
        let (tx, rx) = crossbeam_channel::bounded(QUEUE_DEPTH);
        let reader = writer.reader();
        let stats = writer.stats();
        let name = format!("herald-writer-{}", writer.dir().display());
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || run(writer, core, rx, on_commit))
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

fn closed() -> StorageError {
    StorageError::WriterStopped
}

fn run(
    mut writer: LogWriter,
    mut core: WriterCore,
    rx: Receiver<Request>,
    on_commit: impl Fn(u64),
) {
    loop {
        let mut next = match rx.recv_timeout(core.idle_wake()) {
            Ok(request) => Some(request),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let started = Instant::now();
        while let Some(request) = next.take() {
            core.offer(&mut writer, request);
            if core.group_full() {
                break;
            }
            next = rx.try_recv().ok();
            if next.is_none()
                && let Some(until) = core.wait_for_more(started)
            {
                next = rx.recv_deadline(until).ok();
            }
        }
        core.commit(&mut writer, &on_commit);
        if core.closing() {
            break;
        }
        let now = Instant::now();
        if core.flush_due(&writer, now)
            && let Err(error) = writer.tick()
        {
            tracing::error!(%error, "interval flush failed");
        }
        if core.retention_due(now)
            && let Err(error) = writer.enforce_retention(now_ms())
        {
            tracing::error!(%error, "retention failed");
        }
    }
    // Everything queued before the close (or before the last handle dropped) was answered
    // above; whatever raced in behind the close is refused, not dropped unanswered.
    while let Ok(request) = rx.try_recv() {
        request.refuse();
    }
    drop(rx);
    core.closed(writer.close());
}
