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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::batch::ValidatedBatch;
use super::error::{Result, StorageError};
use super::log::{Appended, LogReader, LogWriter, WriterStats};
use super::writer_core::{CommitMode, QUEUE_DEPTH, Reply, Request, WriterCore};
use crate::clock::now_ms;

/// A handle to a partition's writer thread. Cheap to clone; every clone appends to the same
/// log.
#[derive(Clone)]
pub struct CommitterHandle {
    tx: Sender<Request>,
    queue: Arc<QueueState>,
    reader: LogReader,
    max_batch_bytes: usize,
}

/// The bound on the writer's queue. The channel itself is unbounded: a bounded crossbeam
/// channel allocates and touches every slot when it is made, which for `QUEUE_DEPTH`
/// requests came to 700 KiB of memory per partition (700 MB for 1,000 idle partitions),
/// while an unbounded one allocates small blocks as requests arrive and frees them as they
/// are taken. Appends reserve a place here before they are sent.
#[derive(Default)]
struct QueueState {
    /// Appends sent and not yet taken by the writer.
    queued: AtomicUsize,
    /// The writer has stopped taking requests.
    stopped: AtomicBool,
}

impl QueueState {
    fn reserve(&self) -> bool {
        if self.queued.fetch_add(1, Ordering::Relaxed) < QUEUE_DEPTH {
            return true;
        }
        self.release();
        false
    }

    fn release(&self) {
        self.queued.fetch_sub(1, Ordering::Relaxed);
    }

    /// What the writer calls for each request it takes off the channel.
    fn taken(&self, request: Request) -> Request {
        if matches!(request, Request::Append { .. }) {
            self.release();
        }
        request
    }
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
        let (tx, rx) = crossbeam_channel::unbounded();
        let queue = Arc::new(QueueState::default());
        let reader = writer.reader();
        let stats = writer.stats();
        let name = format!("herald-writer-{}", writer.dir().display());
        let state = queue.clone();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || run(writer, core, rx, &state, on_commit))
            .map_err(|e| StorageError::Io {
                op: "spawn writer thread",
                path: Default::default(),
                cause: e,
            })?;
        Ok(Committer {
            handle: CommitterHandle {
                tx,
                queue,
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
        // Only tests and benchmarks fill a queue: the broker appends with
        // `try_append_with`, under a byte budget that keeps it from filling. A short sleep
        // is enough here.
        let mut pause = Duration::from_micros(50);
        while !self.queue.reserve() {
            if self.queue.stopped.load(Ordering::Acquire) {
                return reply(Err(closed()));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
        }
        self.send(batch, Box::new(reply));
    }

    /// Sends an append whose place in the queue is reserved.
    fn send(&self, batch: ValidatedBatch, reply: Reply) {
        if let Err(crossbeam_channel::SendError(request)) =
            self.tx.send(Request::Append { batch, reply })
        {
            self.queue.release();
            request.refuse();
        }
    }

    /// Like [`append_with`](Self::append_with) but never blocks: when the queue is full,
    /// `reply` gets [`StorageError::QueueFull`] at once.
    pub fn try_append_with(
        &self,
        batch: ValidatedBatch,
        reply: impl FnOnce(Result<Appended>) + Send + 'static,
    ) {
        if self.queue.reserve() {
            self.send(batch, Box::new(reply));
        } else {
            reply(Err(StorageError::QueueFull));
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
    queue: &QueueState,
    on_commit: impl Fn(u64),
) {
    // Set however the thread ends (a panic too), so no appender waits for room forever.
    struct Stopped<'a>(&'a QueueState);
    impl Drop for Stopped<'_> {
        fn drop(&mut self) {
            self.0.stopped.store(true, Ordering::Release);
        }
    }
    let _stopped = Stopped(queue);
    loop {
        let mut next = match rx.recv_timeout(core.idle_wake()) {
            Ok(request) => Some(queue.taken(request)),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let started = Instant::now();
        while let Some(request) = next.take() {
            core.offer(&mut writer, request);
            if core.group_full() {
                break;
            }
            next = rx.try_recv().ok().map(|r| queue.taken(r));
            if next.is_none()
                && let Some(until) = core.wait_for_more(started)
            {
                next = rx.recv_deadline(until).ok().map(|r| queue.taken(r));
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
    queue.stopped.store(true, Ordering::Release);
    while let Ok(request) = rx.try_recv() {
        queue.taken(request).refuse();
    }
    drop(rx);
    core.closed(writer.close());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::batch::{BatchBuilder, Record};
    use crate::storage::{FsyncPolicy, LogConfig};

    fn batch(value: &[u8]) -> Bytes {
        let mut b = BatchBuilder::default();
        b.push(&Record {
            timestamp: 1,
            key: None,
            value,
            headers: &[],
        });
        Bytes::from(b.finish())
    }

    /// The queue holds at most `QUEUE_DEPTH` appends; taking one makes room for one.
    #[test]
    fn the_queue_is_bounded() {
        let queue = QueueState::default();
        for _ in 0..QUEUE_DEPTH {
            assert!(queue.reserve());
        }
        assert!(!queue.reserve());
        let (_, reply) = crossbeam_channel::bounded::<()>(1);
        let request = Request::Append {
            batch: ValidatedBatch::new(batch(b"x"), 1 << 20).unwrap(),
            reply: Box::new(move |_| drop(reply)),
        };
        queue.taken(request);
        assert!(queue.reserve());
        assert!(!queue.reserve());
    }

    /// Appenders on several threads are all committed, each once, in one offset sequence;
    /// after the close every way of appending is answered `WriterStopped`, none waits.
    #[test]
    fn appends_commit_and_a_closed_writer_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            segment_bytes: 1 << 20,
            fsync: FsyncPolicy::Always,
            ..LogConfig::default()
        };
        let writer = LogWriter::open(dir.path(), config).unwrap();
        let committer = Committer::start(writer, 1 << 20).unwrap();
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let handle = committer.handle();
                std::thread::spawn(move || {
                    (0..25)
                        .map(|_| handle.append(batch(&[t; 100])).unwrap().base_offset)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut offsets: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        offsets.sort_unstable();
        assert_eq!(offsets, (0..100).collect::<Vec<_>>());
        let handle = committer.handle();
        assert_eq!(handle.reader().high_watermark(), 100);
        committer.close().unwrap();
        assert!(matches!(
            handle.append(batch(b"late")),
            Err(StorageError::WriterStopped)
        ));
        let (tx, rx) = crossbeam_channel::bounded(1);
        handle.try_append_with(
            ValidatedBatch::new(batch(b"late"), 1 << 20).unwrap(),
            move |r| tx.send(r).unwrap(),
        );
        assert!(matches!(
            rx.recv().unwrap(),
            Err(StorageError::WriterStopped)
        ));
    }
}
