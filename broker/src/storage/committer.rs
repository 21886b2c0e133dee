//! Group commit: many appenders, one writer thread, one flush per group.
//!
//! A [`Committer`] owns a partition's [`LogWriter`] on a thread of its own. Appenders
//! validate their batch on their own thread (the CRC pass runs in parallel), then hand the
//! bytes over a bounded channel. The writer thread takes everything queued — up to
//! [`MAX_GROUP_BATCHES`] batches — appends it all, commits once (one flush under
//! `FsyncPolicy::Always`), and only then answers each appender. Under load the flush cost is
//! shared by the whole group; an idle partition still answers a lone batch at once.

use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::FsyncPolicy;
use super::batch::{self, BatchHeader, ValidBatch};
use super::error::{Result, StorageError};
use super::log::{Appended, LogReader, LogWriter, WriterStats};

/// Most batches appended under one commit: bounds how long the first appender of a group
/// waits for the others.
pub const MAX_GROUP_BATCHES: usize = 1024;
/// Requests that may wait in the queue before appenders block: the committer's memory bound.
pub const QUEUE_DEPTH: usize = 4096;
/// How often an idle writer wakes for interval flushes and retention.
const IDLE_WAKE: Duration = Duration::from_millis(100);
/// How often retention runs.
const RETENTION_EVERY: Duration = Duration::from_secs(10);

type Reply = Box<dyn FnOnce(Result<Appended>) + Send>;

enum Request {
    Append {
        bytes: Bytes,
        header: BatchHeader,
        reply: Reply,
    },
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
        let (tx, rx) = crossbeam_channel::bounded(QUEUE_DEPTH);
        let reader = writer.reader();
        let stats = writer.stats();
        let name = format!("herald-writer-{}", writer.dir().display());
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || run(writer, rx))
            .map_err(|e| StorageError::Io {
                op: "spawn writer thread",
                path: Default::default(),
                source: e,
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

    pub fn stats(&self) -> &WriterStats {
        &self.stats
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

    /// Validates `bytes` here, then queues it; `reply` runs on the writer thread once the
    /// batch is committed (or failed). Blocks while the queue is full: that is the
    /// backpressure.
    pub fn append_with(&self, bytes: Bytes, reply: impl FnOnce(Result<Appended>) + Send + 'static) {
        let header = match batch::validate(&bytes, self.max_batch_bytes) {
            Ok(valid) => *valid.header(),
            Err(e) => return reply(Err(e.into())),
        };
        let request = Request::Append {
            bytes,
            header,
            reply: Box::new(reply),
        };
        if let Err(crossbeam_channel::SendError(request)) = self.tx.send(request)
            && let Request::Append { reply, .. } = request
        {
            reply(Err(closed()));
        }
    }

    /// Appends one batch and waits for its commit.
    pub fn append(&self, bytes: Bytes) -> Result<Appended> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.append_with(bytes, move |r| {
            let _ = tx.send(r);
        });
        rx.recv().unwrap_or_else(|_| Err(closed()))
    }
}

fn closed() -> StorageError {
    StorageError::Poisoned {
        reason: "the partition writer has stopped".into(),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn run(mut writer: LogWriter, rx: Receiver<Request>) {
    let mut group: Vec<(Result<Appended>, Reply)> = Vec::with_capacity(MAX_GROUP_BATCHES);
    let mut last_retention = std::time::Instant::now();
    let mut close: Option<Box<dyn FnOnce(Result<()>) + Send>> = None;
    loop {
        let first = match rx.recv_timeout(IDLE_WAKE) {
            Ok(request) => Some(request),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut next = first;
        while let Some(request) = next.take() {
            match request {
                Request::Append {
                    bytes,
                    header,
                    reply,
                } => {
                    let result = writer.append(ValidBatch::assume_valid(&bytes, header));
                    group.push((result, reply));
                }
                Request::Close(reply) => close = Some(reply),
            }
            if group.len() < MAX_GROUP_BATCHES && close.is_none() {
                next = rx.try_recv().ok();
            }
        }
        if !group.is_empty() {
            let committed = writer.commit();
            for (result, reply) in group.drain(..) {
                reply(match (&committed, result) {
                    (Ok(_), result) => result,
                    (Err(e), Ok(_)) => Err(StorageError::Poisoned {
                        reason: e.to_string(),
                    }),
                    (Err(_), Err(e)) => Err(e),
                });
            }
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
