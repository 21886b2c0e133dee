//! A partition of a topic: its log's writer thread (group commit), its lock-free reader, and
//! the high-watermark signal that wakes tailing fetches.

use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::sync::{Semaphore, oneshot, watch};

use crate::error::{BrokerError, Result};
use crate::storage::{
    Appended, Committer, CommitterHandle, LogConfig, LogReader, LogWriter, StorageError,
    ValidatedBatch, WriterStats, committer,
};

/// Bytes of publishes that may be queued for one partition's writer at once. A publisher
/// past it waits (asynchronously) for room: this is the broker's memory bound per partition.
pub const QUEUED_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Every queued batch is charged at least this much of [`QUEUED_BYTES_MAX`], so the count of
/// queued batches can never exceed the writer's queue depth.
const QUEUED_BYTES_MIN_CHARGE: usize = QUEUED_BYTES_MAX / committer::QUEUE_DEPTH;

pub struct Partition {
    pub id: u32,
    handle: CommitterHandle,
    /// Taken once, by `close`; never touched on the publish or read path.
    committer: Mutex<Option<Committer>>,
    high_watermark: watch::Receiver<u64>,
    queued_bytes: Arc<Semaphore>,
    stats: Arc<WriterStats>,
}

impl Partition {
    /// Opens (recovering) the partition log in `dir` and starts its writer thread.
    pub fn open(
        dir: &Path,
        id: u32,
        log_config: LogConfig,
        max_batch_bytes: usize,
    ) -> Result<Partition> {
        let writer = LogWriter::open(dir, log_config)?;
        let (tx, rx) = watch::channel(writer.high_watermark());
        let committer = Committer::start_with_hook(writer, max_batch_bytes, move |hw| {
            tx.send_replace(hw);
        })?;
        Ok(Partition {
            id,
            handle: committer.handle(),
            stats: committer.stats(),
            committer: Mutex::new(Some(committer)),
            high_watermark: rx,
            queued_bytes: Arc::new(Semaphore::new(QUEUED_BYTES_MAX)),
        })
    }

    pub fn reader(&self) -> &LogReader {
        self.handle.reader()
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
            .map_err(|_| BrokerError::Unavailable("the partition is closing".into()))?;
        let (tx, rx) = oneshot::channel();
        self.handle.try_append_with(batch, move |result| {
            // The room is given back as soon as the writer is done with the batch, whether
            // or not anyone still waits for the answer.
            drop(permit);
            let _ = tx.send(result);
        });
        Ok(async move {
            match rx.await {
                Ok(result) => Ok(result?),
                Err(_) => Err(BrokerError::Unavailable(
                    "the partition writer stopped".into(),
                )),
            }
        })
    }

    /// [`enqueue`](Self::enqueue), then wait for the commit.
    pub async fn append(&self, batch: ValidatedBatch) -> Result<Appended> {
        self.enqueue(batch).await?.await
    }

    /// Stops the writer after it has answered everything queued; flushes and writes a clean
    /// checkpoint. Blocks: call it off the async runtime.
    pub fn close(&self) -> Result<(), StorageError> {
        self.queued_bytes.close();
        let committer = self.committer.lock().map(|mut c| c.take()).unwrap_or(None);
        match committer {
            Some(committer) => committer.close(),
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
}
