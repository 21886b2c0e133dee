//! A partition's writer as a task on the async runtime, for the fsync policies whose
//! commit never waits for the disk (`never`, `interval`).
//!
//! Why not the writer thread of [`Committer`](crate::storage::Committer)? Handing a batch
//! to another OS thread and the answer back costs two thread wake-ups per publish, and on a
//! small machine a wake-up is a wait for a core: at 10,000 records/s over four partitions
//! the thread hand-off was half of a publish's round trip. A task woken by the request
//! stream's task runs on the same worker, right after it. Under `always` every commit
//! blocks in a flush, so that policy keeps its thread (and its group commit).
//!
//! It is still one writer per partition: the task owns the [`LogWriter`], appenders reach
//! it over a bounded channel. What can block for long (a segment roll, the interval flush,
//! retention, the final close) runs off the runtime: the task moves the writer into
//! `spawn_blocking` and takes it back, while new requests wait in the channel. What to do
//! with each request, and when, is the [`WriterCore`]'s to decide, as for the thread.

use std::time::Instant;

use tokio::sync::mpsc;

use crate::clock::now_ms;
use crate::storage::writer_core::{CommitMode, QUEUE_DEPTH, Request, WriterCore};
use crate::storage::{Appended, LogWriter, Result, StorageError, ValidatedBatch};

/// How long `close` waits for the writer task's answer: far longer than a close takes
/// (answer what is queued, flush, write the checkpoint).
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Appends to a partition whose writer is a task. Cheap to clone.
#[derive(Clone)]
pub struct TaskWriterHandle {
    tx: mpsc::Sender<Request>,
}

/// Owns the task; [`TaskWriter::close`] stops it cleanly.
pub struct TaskWriter {
    handle: TaskWriterHandle,
}

impl TaskWriter {
    /// Spawns the writer task for `writer` on `runtime`. `on_commit` runs on the task with
    /// the new high watermark after every commit that published something.
    ///
    /// Refuses a log under fsync `always`, whose commits block in a flush.
    pub fn start(
        writer: LogWriter,
        runtime: &tokio::runtime::Handle,
        on_commit: impl Fn(u64) + Send + 'static,
    ) -> Result<TaskWriter> {
        let core = WriterCore::new(writer.config().fsync, CommitMode::Unflushed, Instant::now())?;
        // One slot more than appends can occupy (the partition's byte budget admits at most
        // `QUEUE_DEPTH`), so the close request always fits.
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH + 1);
        runtime.spawn(run(writer, core, rx, on_commit));
        Ok(TaskWriter {
            handle: TaskWriterHandle { tx },
        })
    }

    pub fn handle(&self) -> TaskWriterHandle {
        self.handle.clone()
    }

    /// Appends nothing more, answers everything queued, flushes and closes the log. Blocks
    /// until the task is done: call it off the runtime (as `Partition::close` is).
    pub fn close(self) -> Result<()> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let request = Request::Close(Box::new(move |r| {
            let _ = tx.send(r);
        }));
        match self.handle.tx.try_send(request) {
            // If the task ends without answering (its runtime shut down), the log was
            // dropped unclosed; the next open recovers it by scanning. Bounded: a runtime
            // shutting down while this waits can leave the task queued but never run,
            // neither answering nor dropped (seen once in ~150 test runs, the test's
            // process then waited forever for this thread).
            Ok(()) => match rx.recv_timeout(CLOSE_WAIT) {
                Ok(result) => result,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Ok(()),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    tracing::error!(wait = ?CLOSE_WAIT, "a partition writer did not answer its close; its log is left for the next open to recover");
                    Ok(())
                }
            },
            Err(_) => Ok(()),
        }
    }
}

impl TaskWriterHandle {
    /// Queues a validated batch; `reply` runs on the task once the batch is committed (or
    /// failed). Never blocks: a full queue answers [`StorageError::QueueFull`] at once.
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
            let (error, request) = match e {
                mpsc::error::TrySendError::Full(r) => (StorageError::QueueFull, r),
                mpsc::error::TrySendError::Closed(r) => (stopped(), r),
            };
            if let Request::Append { reply, .. } = request {
                reply(Err(error));
            }
        }
    }
}

fn stopped() -> StorageError {
    StorageError::WriterStopped
}

/// Runs `f` on the writer on a blocking thread and hands both back; `None` if that thread
/// panicked (the writer is then gone).
async fn off_runtime<T: Send + 'static>(
    mut writer: LogWriter,
    f: impl FnOnce(&mut LogWriter) -> T + Send + 'static,
) -> Option<(LogWriter, T)> {
    let done = tokio::task::spawn_blocking(move || {
        let out = f(&mut writer);
        (writer, out)
    })
    .await;
    match done {
        Ok(done) => Some(done),
        Err(error) => {
            tracing::error!(%error, "partition writer work failed off the runtime; the writer stops");
            None
        }
    }
}

async fn run(
    mut writer: LogWriter,
    mut core: WriterCore,
    mut rx: mpsc::Receiver<Request>,
    on_commit: impl Fn(u64),
) {
    let idle_wake = core.idle_wake();
    // One timer for the task's life, re-armed only when it fires: arming one per request
    // would cost more than the append.
    let housekeeping = tokio::time::sleep(idle_wake);
    tokio::pin!(housekeeping);
    loop {
        let mut next = tokio::select! {
            request = rx.recv() => match request {
                Some(request) => Some(request),
                None => break,
            },
            () = &mut housekeeping => {
                housekeeping.as_mut().reset(tokio::time::Instant::now() + idle_wake);
                None
            }
        };
        while let Some(request) = next.take() {
            if let Some((batch, reply)) = core.receive(request) {
                if writer.append_blocks(batch.len()) {
                    // A roll creates files and, under `interval`, flushes and syncs; an
                    // allocation in place waits for the file system.
                    match off_runtime(writer, move |w| w.append(batch.as_valid())).await {
                        Some((back, result)) => {
                            writer = back;
                            core.appended(reply, result);
                        }
                        None => return,
                    }
                } else {
                    core.append(&mut writer, batch, reply);
                }
            }
            if core.group_full() {
                break;
            }
            next = rx.try_recv().ok();
        }
        core.commit(&mut writer, &on_commit);
        if core.closing() {
            break;
        }
        let now = Instant::now();
        if core.flush_due(&writer, now) {
            match off_runtime(writer, |w| w.tick()).await {
                Some((back, result)) => {
                    writer = back;
                    if let Err(error) = result {
                        tracing::error!(%error, "interval flush failed");
                    }
                }
                None => return,
            }
        }
        if core.retention_due(now) {
            match off_runtime(writer, |w| w.enforce_retention(now_ms())).await {
                Some((back, result)) => {
                    writer = back;
                    if let Err(error) = result {
                        tracing::error!(%error, "retention failed");
                    }
                }
                None => return,
            }
        }
    }
    // Everything queued before the close (or before the last handle dropped) was answered
    // above; whatever raced in behind the close is refused, not dropped unanswered.
    rx.close();
    while let Ok(request) = rx.try_recv() {
        request.refuse();
    }
    let result = tokio::task::spawn_blocking(move || writer.close())
        .await
        .unwrap_or_else(|_| Err(stopped()));
    core.closed(result);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use bytes::Bytes;
    use tokio::sync::oneshot;

    use super::*;
    use crate::storage::batch::{self, BatchBuilder, Record};
    use crate::storage::{FsyncPolicy, LogConfig, LogReader, WriterStats};

    fn batch(n: usize, value: &[u8]) -> ValidatedBatch {
        let mut b = BatchBuilder::default();
        for i in 0..n {
            b.push(&Record {
                timestamp: 1_000 + i as i64,
                key: Some(b"k"),
                value,
                headers: &[],
            });
        }
        ValidatedBatch::new(Bytes::from(b.finish()), usize::MAX).unwrap()
    }

    fn config(segment_bytes: u64, fsync: FsyncPolicy) -> LogConfig {
        LogConfig {
            segment_bytes,
            index_interval_bytes: 256,
            fsync,
            ..LogConfig::default()
        }
    }

    async fn append(handle: &TaskWriterHandle, batch: ValidatedBatch) -> Result<Appended> {
        let (tx, rx) = oneshot::channel();
        handle.try_append_with(batch, move |r| {
            let _ = tx.send(r);
        });
        rx.await.expect("every append is answered")
    }

    /// Every record as (offset, value), read through the lock-free reader.
    fn read_all(reader: &LogReader) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = 0;
        while let Some(chunk) = reader.read(at, 1 << 20).unwrap() {
            for b in batch::batches(&chunk.bytes) {
                for rec in b.unwrap().records() {
                    let rec = rec.unwrap();
                    out.push((rec.offset, rec.value.to_vec()));
                }
            }
            at = chunk.next_offset;
        }
        out
    }

    /// `close` blocks until the task is done, so it runs off the runtime.
    async fn close(task: TaskWriter) -> Result<()> {
        tokio::task::spawn_blocking(move || task.close())
            .await
            .unwrap()
    }

    async fn concurrent_appends_get_dense_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let writer = LogWriter::open(dir.path(), config(1 << 20, FsyncPolicy::Never)).unwrap();
        let reader = writer.reader();
        let committed = Arc::new(AtomicU64::new(0));
        let hook = committed.clone();
        let task = TaskWriter::start(writer, &tokio::runtime::Handle::current(), move |hw| {
            hook.fetch_max(hw, Ordering::SeqCst);
        })
        .unwrap();
        let appenders: Vec<_> = (0..4u8)
            .map(|a| {
                let handle = task.handle();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    for _ in 0..50 {
                        got.push(append(&handle, batch(3, &[a; 20])).await.unwrap());
                    }
                    got
                })
            })
            .collect();
        let mut ranges = Vec::new();
        for appender in appenders {
            ranges.extend(
                appender
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|a| (a.base_offset, a.last_offset)),
            );
        }
        ranges.sort();
        // 600 records, each batch a contiguous run, no gaps and no overlaps.
        assert_eq!(ranges.len(), 200);
        for (i, (base, last)) in ranges.iter().enumerate() {
            assert_eq!((*base, *last), (i as u64 * 3, i as u64 * 3 + 2));
        }
        // Acknowledged means readable, and the hook saw the final watermark.
        assert_eq!(committed.load(Ordering::SeqCst), 600);
        let records = read_all(&reader);
        assert_eq!(records.len(), 600);
        assert!(records.iter().enumerate().all(|(i, r)| r.0 == i as u64));
        close(task).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dense_offsets_on_a_multi_thread_runtime() {
        concurrent_appends_get_dense_offsets().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn dense_offsets_on_a_current_thread_runtime() {
        concurrent_appends_get_dense_offsets().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rolls_through_the_task_and_reopens_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let writer = LogWriter::open(dir.path(), config(4096, FsyncPolicy::Never)).unwrap();
        let reader = writer.reader();
        let task = TaskWriter::start(writer, &tokio::runtime::Handle::current(), |_| {}).unwrap();
        let handle = task.handle();
        for i in 0..100u8 {
            let a = append(&handle, batch(2, &[i; 150])).await.unwrap();
            assert_eq!(a.base_offset, i as u64 * 2);
        }
        assert!(reader.segment_count() > 5, "4 KiB segments must roll");
        let before = read_all(&reader);
        assert_eq!(before.len(), 200);
        close(task).await.unwrap();
        drop(reader);

        let reopened = LogWriter::open(dir.path(), config(4096, FsyncPolicy::Never)).unwrap();
        assert_eq!(reopened.high_watermark(), 200);
        assert_eq!(read_all(&reopened.reader()), before);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn interval_flushes_while_idle() {
        let dir = tempfile::tempdir().unwrap();
        let every = Duration::from_millis(20);
        let writer =
            LogWriter::open(dir.path(), config(1 << 20, FsyncPolicy::Interval(every))).unwrap();
        let stats = writer.stats();
        let task = TaskWriter::start(writer, &tokio::runtime::Handle::current(), |_| {}).unwrap();
        append(&task.handle(), batch(1, b"x")).await.unwrap();
        // Nothing else arrives: the housekeeping timer alone must flush it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while WriterStats::get(&stats.flushes) == 0 {
            assert!(Instant::now() < deadline, "no flush within 10 s of idling");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        close(task).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refuses_fsync_always() {
        let dir = tempfile::tempdir().unwrap();
        let writer = LogWriter::open(dir.path(), config(1 << 20, FsyncPolicy::Always)).unwrap();
        let started = TaskWriter::start(writer, &tokio::runtime::Handle::current(), |_| {});
        assert!(matches!(started, Err(StorageError::InvalidConfig(_))));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_answers_what_was_queued_and_refuses_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let writer = LogWriter::open(dir.path(), config(1 << 20, FsyncPolicy::Never)).unwrap();
        let reader = writer.reader();
        let task = TaskWriter::start(writer, &tokio::runtime::Handle::current(), |_| {}).unwrap();
        let handle = task.handle();
        // Queued without awaiting, then closed: each must still be answered, and committed.
        let answers: Vec<_> = (0..20u8)
            .map(|i| {
                let (tx, rx) = oneshot::channel();
                handle.try_append_with(batch(1, &[i]), move |r| {
                    let _ = tx.send(r);
                });
                rx
            })
            .collect();
        close(task).await.unwrap();
        for (i, answer) in answers.into_iter().enumerate() {
            assert_eq!(answer.await.unwrap().unwrap().base_offset, i as u64);
        }
        assert_eq!(read_all(&reader).len(), 20);
        let late = append(&handle, batch(1, b"late")).await;
        assert!(
            matches!(&late, Err(StorageError::WriterStopped)),
            "{late:?}"
        );
    }
}
