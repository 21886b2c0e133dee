//! A partition of a topic: its log's writer (a thread with group commit under fsync
//! `always`, a task on the runtime otherwise), its lock-free reader, and the
//! high-watermark signal that wakes tailing fetches.

use std::path::Path;
use std::sync::{Arc, Mutex};

use futures::future::Either;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};

use crate::error::{BrokerError, Result};
use crate::storage::{
    Appended, Committer, CommitterHandle, FsyncPolicy, LogConfig, LogReader, LogWriter,
    RetentionLimits, StorageError, ValidatedBatch, WriterStats, writer_core,
};
use crate::task_writer::{TaskWriter, TaskWriterHandle};

/// Bytes of publishes that may be queued for one partition's writer at once. A publisher
/// past it waits (asynchronously) for room: this is the broker's memory bound per partition.
pub const QUEUED_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Every queued batch is charged at least this much of [`QUEUED_BYTES_MAX`], so the count of
/// queued batches can never exceed the writer's queue depth.
const QUEUED_BYTES_MIN_CHARGE: usize = QUEUED_BYTES_MAX / writer_core::QUEUE_DEPTH;

pub struct Partition {
    pub id: u32,
    appender: Appender,
    reader: LogReader,
    /// Taken once, by `close`; never touched on the publish or read path.
    owner: Mutex<Option<Owner>>,
    high_watermark: watch::Receiver<u64>,
    queued_bytes: Arc<Semaphore>,
    stats: Arc<WriterStats>,
    /// The writer's retention limits, which AlterTopic changes in place.
    retention: Arc<RetentionLimits>,
}

impl Partition {
    /// Opens (recovering) the partition log in `dir` and starts its writer: a task on the
    /// current runtime under fsync `never`/`interval`, a thread under `always` or outside a
    /// runtime.
    pub fn open(
        dir: &Path,
        id: u32,
        log_config: LogConfig,
        max_batch_bytes: usize,
    ) -> Result<Partition> {
        let mut writer = LogWriter::open(dir, log_config)?;
        // A partition lives in `<data_dir>/topics/<topic>/<id>`: errors from its reader (a
        // damaged batch) name it the way an operator knows it.
        let topic = dir
            .parent()
            .and_then(Path::file_name)
            .map_or_else(|| "?".into(), |t| t.to_string_lossy());
        writer.set_name(format!("topic {topic} partition {id}"));
        let (tx, rx) = watch::channel(writer.high_watermark());
        let reader = writer.reader();
        let stats = writer.stats();
        let retention = writer.retention();
        let on_commit = move |hw| {
            tx.send_replace(hw);
        };
        // A commit that never waits for the disk is cheapest on the runtime (no thread
        // hand-off); one that flushes keeps its thread. Outside a runtime (tools, tests of
        // the storage layer) there is only the thread.
        let runtime = tokio::runtime::Handle::try_current().ok();
        let (appender, owner) = match runtime {
            Some(runtime) if writer.config().fsync != FsyncPolicy::Always => {
                let task = TaskWriter::start(writer, &runtime, on_commit)?;
                (Appender::Task(task.handle()), Owner::Task(task))
            }
            _ => {
                let committer = Committer::start_with_hook(writer, max_batch_bytes, on_commit)?;
                (
                    Appender::Thread(committer.handle()),
                    Owner::Thread(committer),
                )
            }
        };
        Ok(Partition {
            id,
            appender,
            reader,
            stats,
            retention,
            owner: Mutex::new(Some(owner)),
            high_watermark: rx,
            queued_bytes: Arc::new(Semaphore::new(QUEUED_BYTES_MAX)),
        })
    }

    /// A partition whose log a replication group holds (cluster mode): `reader` and
    /// `high_watermark` see the committed records only.
    pub fn replicated(
        id: u32,
        log: Arc<dyn ReplicatedLog>,
        reader: LogReader,
        high_watermark: watch::Receiver<u64>,
        stats: Arc<WriterStats>,
        retention: Arc<RetentionLimits>,
    ) -> Partition {
        Partition {
            id,
            appender: Appender::Replicated(log),
            reader,
            stats,
            retention,
            owner: Mutex::new(None),
            high_watermark,
            queued_bytes: Arc::new(Semaphore::new(QUEUED_BYTES_MAX)),
        }
    }

    /// The replicated log, when a group holds this partition.
    pub fn replicated_log(&self) -> Option<&Arc<dyn ReplicatedLog>> {
        match &self.appender {
            Appender::Replicated(log) => Some(log),
            _ => None,
        }
    }

    pub fn reader(&self) -> &LogReader {
        &self.reader
    }

    /// Changes the retention limits (`None`: no limit); the writer's next retention pass,
    /// at most `RETENTION_EVERY` away, applies them.
    pub fn set_retention(&self, ms: Option<u64>, bytes: Option<u64>) {
        self.retention.set(ms, bytes);
    }

    /// Whether the writer is a task on the runtime (fsync `never` or `interval`) rather
    /// than a thread.
    pub fn writer_is_task(&self) -> bool {
        matches!(self.appender, Appender::Task(_))
    }

    /// A receiver that changes whenever the high watermark moves.
    pub fn watch_high_watermark(&self) -> watch::Receiver<u64> {
        self.high_watermark.clone()
    }

    /// Queues a validated batch for the writer, first waiting (asynchronously) for room if
    /// the partition already has [`QUEUED_BYTES_MAX`] queued. Returns once the batch is in
    /// the writer's queue, so batches queued one after another keep their order; the
    /// returned future resolves when the batch is committed under the topic's fsync policy.
    pub async fn enqueue(
        &self,
        batch: ValidatedBatch,
    ) -> Result<impl std::future::Future<Output = Result<Appended>> + Send + use<>> {
        let charge = batch.len().clamp(QUEUED_BYTES_MIN_CHARGE, QUEUED_BYTES_MAX) as u32;
        let permit = self
            .queued_bytes
            .clone()
            .acquire_many_owned(charge)
            .await
            .map_err(|_| BrokerError::PartitionClosing)?;
        let (tx, rx) = oneshot::channel();
        let reply = move |permit: OwnedSemaphorePermit| {
            move |result| {
                // The room is given back as soon as the writer is done with the batch,
                // whether or not anyone still waits for the answer.
                drop(permit);
                let _ = tx.send(result);
            }
        };
        match &self.appender {
            Appender::Thread(handle) => handle.try_append_with(batch, reply(permit)),
            Appender::Task(handle) => handle.try_append_with(batch, reply(permit)),
            Appender::Replicated(log) => {
                let committed = log.propose(batch).await?;
                return Ok(Either::Right(async move {
                    let appended = committed.await;
                    drop(permit);
                    appended
                }));
            }
        }
        Ok(Either::Left(async move {
            match rx.await {
                Ok(result) => Ok(result?),
                Err(_) => Err(StorageError::WriterStopped.into()),
            }
        }))
    }

    /// [`enqueue`](Self::enqueue), then wait for the commit.
    pub async fn append(&self, batch: ValidatedBatch) -> Result<Appended> {
        self.enqueue(batch).await?.await
    }

    /// Stops the writer after it has answered everything queued; flushes and writes a clean
    /// checkpoint. Blocks: call it off the async runtime.
    pub fn close(&self) -> Result<(), StorageError> {
        self.queued_bytes.close();
        if let Appender::Replicated(log) = &self.appender {
            return log.close();
        }
        let owner = self.owner.lock().map(|mut c| c.take()).unwrap_or(None);
        match owner {
            Some(Owner::Thread(committer)) => committer.close(),
            Some(Owner::Task(task)) => task.close(),
            None => Ok(()),
        }
    }

    /// Flush counters of the writer, for metrics: (flushes, seconds spent flushing).
    pub fn flush_stats(&self) -> (u64, f64) {
        (
            WriterStats::get(&self.stats.flushes),
            WriterStats::get(&self.stats.flush_nanos) as f64 / 1e9,
        )
    }

    /// Batches of idempotent producers answered as already stored since the partition
    /// opened.
    pub fn duplicate_batches(&self) -> u64 {
        WriterStats::get(&self.stats.duplicates)
    }
}

/// Where a partition's appends go.
enum Appender {
    Thread(CommitterHandle),
    Task(TaskWriterHandle),
    Replicated(Arc<dyn ReplicatedLog>),
}

/// Opens the partitions a cluster replicates on this node (see `cluster::partition::serving`).
pub trait PartitionOpener: Send + Sync + 'static {
    /// The partition `id` of `topic` in `dir` as a replicated one, or `None` when it is
    /// not replicated on this node (the registry then opens a local log). Blocking.
    fn open(
        &self,
        topic: &str,
        id: u32,
        dir: &Path,
        config: LogConfig,
        max_batch_bytes: usize,
    ) -> Option<Result<Partition>>;
    /// Whether this node holds a replica of partition `id` of `topic` now (its placement
    /// may have changed since the partition was opened).
    fn replicates(&self, topic: &str, id: u32) -> bool;
}

/// A future that resolves once a queued batch is committed.
pub type Committed = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Appended>> + Send>>;

/// The log of a partition replicated by a group of nodes (cluster mode): its appends are
/// proposed to the group and answered once a majority stored them. The cluster provides
/// it (see `cluster::partition::serving`); the partition only queues and closes.
pub trait ReplicatedLog: Send + Sync + 'static {
    /// Proposes `batch`; resolves once it is queued in the group (batches proposed one
    /// after another keep their order), with the future of its commit.
    fn propose(
        &self,
        batch: ValidatedBatch,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Committed>> + Send + '_>>;
    /// The node leading the partition's group, as this replica knows it.
    fn leader(&self) -> Option<u64>;
    /// The leader, waiting (boundedly) while the group has none: its first election, or
    /// a failover.
    fn wait_for_leader(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<u64>> + Send + '_>>;
    /// Resolves once this replica knows a leader other than `from`: a publish sent on to
    /// `from` is then cut short instead of waiting out a call to a node the others no
    /// longer follow (one cut off from them answers nothing until the call times out).
    fn leader_moved(
        &self,
        from: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>;
    /// Each replica's progress as (node, entries behind, votes), when this replica leads
    /// the group; `None` otherwise.
    fn progress(&self) -> Option<Vec<(u64, u64, bool)>>;
    /// Stops the group and the replica (their logs synced and closed). Blocking.
    fn close(&self) -> Result<(), StorageError>;
}

/// What `close` stops.
enum Owner {
    Thread(Committer),
    Task(TaskWriter),
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::storage::batch::{BatchBuilder, Record};

    fn batch(value: &[u8]) -> ValidatedBatch {
        let mut b = BatchBuilder::default();
        b.push(&Record {
            timestamp: 1,
            key: None,
            value,
            headers: &[],
        });
        ValidatedBatch::new(Bytes::from(b.finish()), usize::MAX).unwrap()
    }

    fn open(dir: &Path, fsync: FsyncPolicy) -> Partition {
        let config = LogConfig {
            segment_bytes: 1 << 20,
            fsync,
            ..LogConfig::default()
        };
        Partition::open(dir, 0, config, 1 << 20).unwrap()
    }

    /// Each policy gets the writer it is meant to, and both kinds append, publish the
    /// watermark and close.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writer_kind_follows_the_fsync_policy() {
        for (fsync, task) in [
            (FsyncPolicy::Never, true),
            (FsyncPolicy::Interval(Duration::from_millis(10)), true),
            (FsyncPolicy::Always, false),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let partition = open(dir.path(), fsync);
            assert_eq!(partition.writer_is_task(), task, "{fsync:?}");
            let mut hw = partition.watch_high_watermark();
            assert_eq!(partition.append(batch(b"a")).await.unwrap().base_offset, 0);
            assert_eq!(partition.append(batch(b"b")).await.unwrap().base_offset, 1);
            hw.wait_for(|hw| *hw == 2).await.unwrap();
            assert_eq!(partition.reader().high_watermark(), 2);
            let partition = Arc::new(partition);
            let closing = partition.clone();
            tokio::task::spawn_blocking(move || closing.close())
                .await
                .unwrap()
                .unwrap();
            assert!(partition.append(batch(b"c")).await.is_err());
        }
    }

    #[test]
    fn outside_a_runtime_the_writer_is_a_thread() {
        let dir = tempfile::tempdir().unwrap();
        let partition = open(dir.path(), FsyncPolicy::Never);
        assert!(!partition.writer_is_task());
        partition.close().unwrap();
    }
}
