//! The partition log: one writer that appends, commits and rolls; lock-free readers.
//!
//! The writer's path for a batch is: copy into the active segment's mapping and stamp its
//! base offset (`append`) → flush per the fsync policy (`commit`) → publish the committed
//! length and the high watermark (`handoff`) → return. Appends between two commits share
//! one flush, which is all group commit needs: whoever drives the writer appends everything
//! that is queued, then commits once (see `writer_core`).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64 as StdAtomicU64, Ordering as StdOrdering};
use std::time::Instant;

use bytes::Bytes;

use super::batch::{self, BASE_OFFSET_AT, BatchHeader, BatchView, ValidBatch};
use super::error::{Result, StorageError};
use super::handoff::{Arc, Handoff, Located, Published};
use super::index_cursor::IndexCursor;
use super::msg_ids::MsgIds;
use super::producers::{self, Check, Producers};
use super::recovery::{self, Checkpoint};
use super::segment::{Preparer, Segment, SegmentShape, allocation_lead};
use super::{FsyncPolicy, LogConfig};
use crate::clock::now_ms;

pub use super::appended::Appended;

/// Counters a writer keeps; shared so a metrics exporter can read them while it runs.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Batches appended.
    pub batches: StdAtomicU64,
    /// Records appended.
    pub records: StdAtomicU64,
    /// Bytes appended.
    pub bytes: StdAtomicU64,
    /// Flushes of log data (msync); with group commit, fewer than commits under load.
    pub flushes: StdAtomicU64,
    /// Total time spent in those flushes.
    pub flush_nanos: StdAtomicU64,
    /// Segments rolled.
    pub rolls: StdAtomicU64,
    /// Batches of idempotent producers answered as already stored, not appended again.
    pub duplicates: StdAtomicU64,
}

impl WriterStats {
    fn add(counter: &StdAtomicU64, n: u64) {
        counter.fetch_add(n, StdOrdering::Relaxed);
    }
    pub fn get(counter: &StdAtomicU64) -> u64 {
        counter.load(StdOrdering::Relaxed)
    }
}

/// What a retention pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    pub segments_deleted: usize,
    pub bytes_deleted: u64,
    /// The log's first offset afterwards.
    pub start_offset: u64,
}

/// A log's retention limits, which an operator may change while the log is open
/// (AlterTopic): the writer reads them at each retention pass, the owner of the log sets
/// them through [`LogWriter::retention`]. 0 is "no limit", as in the topic settings.
#[derive(Debug, Default)]
pub struct RetentionLimits {
    ms: StdAtomicU64,
    bytes: StdAtomicU64,
}

impl RetentionLimits {
    /// Sets both limits (`None`: no limit); the next retention pass applies them.
    pub fn set(&self, ms: Option<u64>, bytes: Option<u64>) {
        self.ms.store(ms.unwrap_or(0), StdOrdering::Relaxed);
        self.bytes.store(bytes.unwrap_or(0), StdOrdering::Relaxed);
    }

    /// `(retention_ms, retention_bytes)` in force.
    pub fn get(&self) -> (Option<u64>, Option<u64>) {
        let limit = |v: u64| (v > 0).then_some(v);
        (
            limit(self.ms.load(StdOrdering::Relaxed)),
            limit(self.bytes.load(StdOrdering::Relaxed)),
        )
    }
}

/// The single writer of one partition log. Not `Clone`: holding it is the right to write.
pub struct LogWriter {
    config: LogConfig,
    /// The retention limits in force: the config's at open, changed live by the owner.
    retention: std::sync::Arc<RetentionLimits>,
    dir: PathBuf,
    handoff: Arc<Handoff<Segment>>,
    /// The writer's copy of the published table; the last segment is the active one.
    segments: Vec<Arc<Segment>>,
    /// Bytes written into the active segment, committed or not.
    write_pos: u64,
    /// Bytes of the active segment known to be durable.
    flushed_pos: u64,
    /// The offset the next appended record gets.
    next_offset: u64,
    /// The published high watermark.
    committed_offset: u64,
    indexer: IndexCursor,
    last_flush: Instant,
    preparer: Preparer,
    /// Set by a failed flush; every later write is refused with this reason.
    poisoned: Option<String>,
    stats: std::sync::Arc<WriterStats>,
    /// The checkpoint written last; retention rewrites it with the new start offset.
    checkpoint: Checkpoint,
    /// What readers' errors call this log; see [`LogWriter::set_name`].
    name: std::sync::Arc<str>,
    /// Idempotent producers' sequences (see `producers`); the writer alone touches it.
    producers: Producers,
    /// The message-id dedup window (see `msg_ids`); the writer alone touches it.
    msg_ids: MsgIds,
    /// Disconnects when the last growth asked of the allocator thread is done (see
    /// `Segment::grow_in_background`); waited for when the writer goes.
    growth: Option<crossbeam_channel::Receiver<()>>,
    /// Tests of crash safety stop a cut after zeroing this many batches, as a crash would.
    #[cfg(test)]
    stop_cut_after: Option<usize>,
    // Held for the writer's life: an exclusive `flock` on the directory's lock file.
    _lock: File,
}

/// A run of whole batches read from one segment. `bytes` points into the segment's mapping
/// (no copy); it keeps the segment alive, even past retention, until dropped.
#[derive(Debug, Clone)]
pub struct ReadChunk {
    pub bytes: Bytes,
    /// Base offset of the first batch; it may be below the offset asked for, because reads
    /// return whole batches: skip records below it.
    pub base_offset: u64,
    /// The offset after the last batch returned: where the next read starts.
    pub next_offset: u64,
    /// The high watermark when the read was made.
    pub high_watermark: u64,
}

/// A cheap, cloneable, lock-free view of a partition log.
#[derive(Clone)]
pub struct LogReader {
    handoff: Arc<Handoff<Segment>>,
    /// What errors call this log ("topic T partition P", or its directory).
    name: std::sync::Arc<str>,
    /// Disk held by the prepared and recycled segments (see `Preparer`).
    spare: std::sync::Arc<StdAtomicU64>,
}

struct MappedRange {
    segment: Arc<Segment>,
    from: u64,
    to: u64,
}

impl AsRef<[u8]> for MappedRange {
    fn as_ref(&self) -> &[u8] {
        self.segment.bytes(self.from, self.to)
    }
}

impl LogWriter {
    /// Opens (creating if needed) the partition log in `dir`, recovering it (see `recovery`).
    pub fn open(dir: impl AsRef<Path>, config: LogConfig) -> Result<LogWriter> {
        config.validate()?;
        let dir = dir.as_ref().to_owned();
        let shape = SegmentShape {
            dir: dir.clone(),
            segment_bytes: config.segment_bytes,
            index_entries: config.index_entries(),
            index_interval: config.index_interval_bytes,
            sync: config.fsync != FsyncPolicy::Never,
        };
        let name = dir.display().to_string().into();
        let lock = recovery::lock_dir(&dir)?;
        let rec = recovery::recover(&config, &shape)?;
        let preparer = Preparer::new(shape);
        let next_offset = rec.next_offset;
        let active = rec
            .segments
            .last()
            .expect("recovery leaves an active segment");
        let handoff = Arc::new(Handoff::new(rec.segments.clone(), 0));
        handoff.publish_commit(active, rec.write_pos, next_offset);
        let retention = std::sync::Arc::new(RetentionLimits::default());
        retention.set(config.retention_ms, config.retention_bytes);
        let mut writer = LogWriter {
            config,
            retention,
            dir,
            handoff,
            segments: rec.segments,
            write_pos: rec.write_pos,
            flushed_pos: rec.write_pos,
            next_offset,
            committed_offset: next_offset,
            indexer: rec.indexer,
            last_flush: Instant::now(),
            preparer,
            poisoned: None,
            stats: Default::default(),
            checkpoint: rec.checkpoint,
            name,
            producers: Producers::default(),
            msg_ids: MsgIds::default(),
            growth: None,
            #[cfg(test)]
            stop_cut_after: None,
            _lock: lock,
        };
        writer.rebuild_producers();
        writer.rebuild_msg_ids();
        Ok(writer)
    }

    /// Loads the producer snapshot and replays the producer blocks of the batches after it
    /// (see `producers`). Only batch headers are read. A missing, damaged or stale snapshot
    /// costs a walk over the whole log, never a refusal to open: the state is derived.
    fn rebuild_producers(&mut self) {
        let path = self.dir.join(producers::SNAPSHOT_FILE);
        let limits = self.config.producers;
        let (mut table, from) = match std::fs::read(&path) {
            Ok(bytes) => match Producers::decode(&bytes, limits) {
                Ok((table, from)) if from <= self.next_offset => (table, from),
                Ok((_, from)) => {
                    tracing::warn!(file = %path.display(), snapshot_offset = from,
                        log_end = self.next_offset,
                        "producer snapshot is ahead of the log; rebuilding from the log");
                    (Producers::new(limits), 0)
                }
                Err(reason) => {
                    tracing::warn!(file = %path.display(), %reason,
                        "producer snapshot is damaged; rebuilding from the log");
                    (Producers::new(limits), 0)
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Producers::new(limits), 0),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e,
                    "producer snapshot unreadable; rebuilding from the log");
                (Producers::new(limits), 0)
            }
        };
        let now = now_ms();
        self.walk_batches(
            |_, next_base| next_base.is_none_or(|b| b > from),
            |header, bytes| {
                if header.has_producer() && header.base_offset >= from {
                    let block = bytes.get(..header.records_at()).unwrap_or_default();
                    if let Ok(Some(stamp)) = batch::producer_of(block) {
                        table.record(stamp, header.record_count, appended_of(header), now);
                    }
                }
            },
        );
        self.producers = table;
    }

    /// Calls `visit` with the header and bytes of every whole batch of the segments that
    /// `wanted` keeps (given the segment and the next one's base offset, `None` for the
    /// active one), in log order: the one walk both rebuilds at open make. A batch frame
    /// that does not fit ends its segment's walk (recovery has checked the log already).
    fn walk_batches(
        &self,
        wanted: impl Fn(&Segment, Option<u64>) -> bool,
        mut visit: impl FnMut(&BatchHeader, &[u8]),
    ) {
        let last = self.segments.len() - 1;
        for (i, segment) in self.segments.iter().enumerate() {
            let next_base = self.segments.get(i + 1).map(|s| s.base_offset());
            if !wanted(segment, next_base) {
                continue;
            }
            let limit = if i == last {
                self.write_pos
            } else {
                segment.committed_len()
            };
            let mut position = 0u64;
            while let Some(header) = segment.header_at(position, limit) {
                let len = u64::from(header.batch_len);
                if len == 0 || position + len > limit {
                    break;
                }
                visit(&header, segment.bytes(position, position + len));
                position += len;
            }
        }
    }

    /// Rebuilds the message-id window from the batches whose newest record is inside it:
    /// each one's first record is read for its `herald-msg-id`.
    fn rebuild_msg_ids(&mut self) {
        let mut window = MsgIds::new(self.config.msg_id_window_ms);
        if !window.enabled() {
            self.msg_ids = window;
            return;
        }
        let now = now_ms();
        let cutoff = now.saturating_sub(self.config.msg_id_window_ms.min(i64::MAX as u64) as i64);
        self.walk_batches(
            |segment, next_base| next_base.is_none() || segment.max_timestamp() >= cutoff,
            |header, bytes| {
                if header.max_timestamp < cutoff || header.has_producer() {
                    return;
                }
                let first = BatchView::new(bytes)
                    .ok()
                    .and_then(|view| view.records().next())
                    .and_then(Result::ok);
                let id = first.and_then(|r| {
                    r.headers()
                        .find(|(name, _)| *name == batch::MSG_ID_HEADER)
                        .map(|(_, id)| id)
                });
                if let Some(id) = id {
                    window.record(id, appended_of(header), header.max_timestamp);
                }
            },
        );
        self.msg_ids = window;
    }

    /// Idempotent producers this partition remembers.
    pub fn producer_count(&self) -> usize {
        self.producers.len()
    }

    fn write_producer_snapshot(&self, sync: bool) -> Result<()> {
        self.producers
            .write_snapshot(&self.dir, self.next_offset, sync)
    }

    pub fn reader(&self) -> LogReader {
        LogReader {
            handoff: self.handoff.clone(),
            name: self.name.clone(),
            spare: self.preparer.spare(),
        }
    }

    /// Names the log in the errors of readers made from now on (e.g. "topic orders
    /// partition 3"), so a damaged batch is reported with what an operator knows it by.
    pub fn set_name(&mut self, name: impl Into<std::sync::Arc<str>>) {
        self.name = name.into();
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn stats(&self) -> std::sync::Arc<WriterStats> {
        self.stats.clone()
    }

    /// The retention limits this writer applies at its next passes; setting them is how
    /// a topic's retention changes without reopening the log.
    pub fn retention(&self) -> std::sync::Arc<RetentionLimits> {
        self.retention.clone()
    }

    /// The offset the next record will get.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// The published high watermark: offsets below it are readable.
    pub fn high_watermark(&self) -> u64 {
        self.committed_offset
    }

    fn active(&self) -> &Arc<Segment> {
        self.segments
            .last()
            .expect("a log always has an active segment")
    }

    fn check_poisoned(&self) -> Result<()> {
        match &self.poisoned {
            Some(reason) => Err(StorageError::Poisoned {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Runs a flush; a failure poisons the log, because after a failed fsync the kernel may
    /// have dropped dirty pages and a retry could report success for data that is gone.
    fn guard<T>(&mut self, result: Result<T>) -> Result<T> {
        if let Err(error) = &result {
            tracing::error!(dir = %self.dir.display(), %error, "flush failed; partition log poisoned");
            self.poisoned = Some(error.to_string());
        }
        result
    }

    /// Copies a validated batch into the log and assigns its offsets. Not readable, and not
    /// durable, until [`commit`](Self::commit).
    ///
    /// A batch of an idempotent producer that this partition already stored is not
    /// appended again: the answer is the offsets it got the first time (see `producers`).
    pub fn append(&mut self, batch: ValidBatch<'_>) -> Result<Appended> {
        self.append_checked(batch, true)
    }

    /// Appends the batch as it is, without the duplicate checks of idempotent producers
    /// and message ids: those read the clock and this node's tables, and a replicated
    /// partition's followers must store exactly what their leader stored (its leader
    /// decides once, before it proposes). The tables still learn the batch.
    pub fn append_verbatim(&mut self, batch: ValidBatch<'_>) -> Result<Appended> {
        self.append_checked(batch, false)
    }

    /// What [`append`](Self::append) would answer without appending, when `batch` is one
    /// this partition already stored: an idempotent producer's batch it holds, or a
    /// message id inside its window. Errors are the producer checks' (fenced, out of
    /// order). A replicated partition's leader decides this once, before it proposes.
    pub fn check_duplicate(&self, batch: &ValidBatch<'_>) -> Result<Option<Appended>> {
        self.check_poisoned()?;
        let producer = batch.producer();
        if let Some(stamp) = producer {
            return Ok(
                match self.producers.check(stamp, batch.header().record_count)? {
                    Check::Duplicate(first) => Some(first),
                    _ => None,
                },
            );
        }
        let msg_id = batch.first_msg_id().filter(|_| self.msg_ids.enabled());
        Ok(msg_id.and_then(|id| self.msg_ids.check(id, now_ms())))
    }

    fn append_checked(&mut self, batch: ValidBatch<'_>, dedup: bool) -> Result<Appended> {
        self.check_poisoned()?;
        let producer = batch.producer();
        if dedup && let Some(first) = self.check_duplicate(&batch)? {
            WriterStats::add(&self.stats.duplicates, 1);
            return Ok(first);
        }
        // Batches of idempotent producers are told apart by their sequences alone.
        let msg_id = batch
            .first_msg_id()
            .filter(|_| producer.is_none() && self.msg_ids.enabled());
        let now = msg_id.map(|_| now_ms());
        let bytes = batch.bytes();
        let len = bytes.len() as u64;
        if len > self.config.segment_bytes {
            return Err(StorageError::BatchTooLarge {
                len: bytes.len(),
                segment_bytes: self.config.segment_bytes,
            });
        }
        if self.write_pos + len > self.active().capacity() {
            if self.write_pos == 0 {
                // The active segment is empty yet too small (it was made under a smaller
                // configured size); rolling would make a second segment with the same base.
                return Err(StorageError::BatchTooLarge {
                    len: bytes.len(),
                    segment_bytes: self.active().capacity(),
                });
            }
            self.roll()?;
        }
        self.allocate_for(self.write_pos + len)?;
        let segment = self.active().clone();
        let position = self.write_pos;
        // The CRC leaves the base offset out, so stamping it is the only change to the
        // bytes. It is the batch's first field, written in the same call.
        const _: () = assert!(BASE_OFFSET_AT == 0);
        if let Err(error) = segment.write(position, &self.next_offset.to_le_bytes(), bytes) {
            // What the page cache holds above `write_pos` is now unknown; refuse further
            // writes rather than build on it.
            self.poisoned = Some(error.to_string());
            return Err(error);
        }
        let mut header = *batch.header();
        header.base_offset = self.next_offset;
        self.indexer.on_batch(&segment, position, &header);
        self.write_pos += len;
        self.next_offset = header.next_offset();
        // Half full: time to get the next segment ready. Not earlier, so that a broker with
        // many quiet partitions does not hold two allocated segments for each.
        if self.write_pos * 2 >= segment.capacity() {
            self.preparer.start();
        }
        WriterStats::add(&self.stats.batches, 1);
        WriterStats::add(&self.stats.records, u64::from(header.record_count));
        WriterStats::add(&self.stats.bytes, len);
        let appended = appended_of(&header);
        if let Some(stamp) = producer {
            self.producers
                .record(stamp, header.record_count, appended, now_ms());
        }
        if let (Some(id), Some(now)) = (msg_id, now) {
            self.msg_ids.record(id, appended, now);
        }
        Ok(appended)
    }

    /// Makes every appended batch durable per the fsync policy, then readable. Returns the
    /// new high watermark. With `Always`, everything appended since the last commit shares
    /// this one flush.
    pub fn commit(&mut self) -> Result<u64> {
        self.check_poisoned()?;
        if self.next_offset == self.committed_offset {
            return Ok(self.committed_offset);
        }
        match self.config.fsync {
            FsyncPolicy::Always => self.flush_active()?,
            FsyncPolicy::Interval(every) if self.last_flush.elapsed() >= every => {
                self.flush_active()?
            }
            FsyncPolicy::Interval(_) | FsyncPolicy::Never => {}
        }
        self.publish();
        Ok(self.committed_offset)
    }

    /// Publishes every appended batch without flushing, whatever the policy, and returns
    /// the new high watermark. For a writer that must not block on a flush (fsync `never`
    /// or `interval`, run on an async runtime): it calls [`tick`](Self::tick) itself, off
    /// the runtime, once [`unflushed_since`](Self::unflushed_since) is the interval ago.
    /// Under `always` this would publish unflushed data, so it is refused.
    pub fn commit_unflushed(&mut self) -> Result<u64> {
        self.check_poisoned()?;
        if self.config.fsync == FsyncPolicy::Always {
            return Err(StorageError::InvalidConfig(
                "commit_unflushed under fsync always would acknowledge unflushed data".into(),
            ));
        }
        if self.next_offset != self.committed_offset {
            self.publish();
        }
        Ok(self.committed_offset)
    }

    /// While something written is unflushed: when the last flush was, which is where the
    /// `interval` policy counts from. [`tick`](Self::tick) flushes once that is the interval
    /// ago.
    pub fn unflushed_since(&self) -> Option<Instant> {
        (self.flushed_pos < self.write_pos).then_some(self.last_flush)
    }

    /// Whether appending a batch of `len` bytes may wait for the disk: it rolls the segment
    /// first (which creates files and, unless the policy is `never`, flushes and syncs), or
    /// it would cross the active segment's allocated length (the allocator thread has not
    /// kept up, so the append allocates in place).
    pub fn append_blocks(&self, len: usize) -> bool {
        let end = self.write_pos + len as u64;
        let active = self.active();
        (self.write_pos > 0 && end > active.capacity()) || end > active.allocated()
    }

    /// Makes sure the active segment is allocated up to `end` before a write reaches it:
    /// normally it already is, and the allocator thread is asked to stay a lead ahead; if a
    /// write would cross the allocated length, the space is allocated here. A full disk is
    /// `DiskFull` for this append alone: nothing was written, so the log is not poisoned.
    fn allocate_for(&mut self, end: u64) -> Result<()> {
        let segment = self.active();
        let allocated = segment.allocated();
        if allocated >= segment.capacity() {
            return Ok(());
        }
        let lead = allocation_lead(end);
        let interval = self.config.index_interval_bytes;
        // Growth is never synced on its own: the next flush of data makes the new length
        // durable with it, and a sync on the side made that flush wait behind it (appends
        // of 100 KiB under fsync `always` took 1.6 times as long).
        if end > allocated {
            return segment.grow(end + lead, interval, false);
        }
        if allocated - end < lead / 2
            && let Some(growth) = Segment::grow_in_background(segment, end + lead, interval, false)
        {
            self.growth = Some(growth);
        }
        Ok(())
    }

    /// Appends one batch and commits it.
    pub fn append_and_commit(&mut self, batch: ValidBatch<'_>) -> Result<Appended> {
        let appended = self.append(batch)?;
        self.commit()?;
        Ok(appended)
    }

    /// For `Interval`: flushes if the interval has passed and something is unflushed. Call
    /// it periodically so an idle partition does not keep unflushed data forever.
    pub fn tick(&mut self) -> Result<()> {
        self.check_poisoned()?;
        if let FsyncPolicy::Interval(every) = self.config.fsync
            && self.flushed_pos < self.write_pos
            && self.last_flush.elapsed() >= every
        {
            self.flush_active()?;
        }
        Ok(())
    }

    /// Flushes everything written so far, whatever the policy, and publishes it.
    pub fn flush(&mut self) -> Result<()> {
        self.check_poisoned()?;
        self.flush_active()?;
        self.publish();
        Ok(())
    }

    /// Makes what is appended durable per the fsync policy without making it readable, and
    /// returns the offset after it. For a log whose readers may only see what a quorum of
    /// nodes holds (a replicated partition), durability and visibility are two steps: what
    /// lies between them may still be cut ([`truncate`](Self::truncate)).
    pub fn sync_unpublished(&mut self) -> Result<u64> {
        self.check_poisoned()?;
        match self.config.fsync {
            FsyncPolicy::Always => self.flush_active()?,
            FsyncPolicy::Interval(every) if self.last_flush.elapsed() >= every => {
                self.flush_active()?
            }
            FsyncPolicy::Interval(_) | FsyncPolicy::Never => {}
        }
        Ok(self.next_offset)
    }

    /// Makes the offsets below `offset` readable, where `offset` is the start of an
    /// appended batch (or the log's end). Never moves the high watermark back. It does
    /// not flush: call [`sync_unpublished`](Self::sync_unpublished) first where that
    /// matters.
    pub fn publish_to(&mut self, offset: u64) -> Result<u64> {
        self.check_poisoned()?;
        if offset <= self.committed_offset {
            return Ok(self.committed_offset);
        }
        if offset >= self.next_offset {
            if offset > self.next_offset {
                return Err(self.bad_boundary("publish", offset, "it is past the log's end"));
            }
            self.publish();
            return Ok(self.committed_offset);
        }
        let (i, position) = self.boundary("publish", offset)?;
        let segment = self.segments[i].clone();
        // A sealed segment was published whole when it was sealed: readers stop at the
        // watermark, never at its length.
        let bytes = if i + 1 == self.segments.len() {
            position
        } else {
            segment.committed_len()
        };
        self.handoff.publish_commit(&segment, bytes, offset);
        self.committed_offset = offset;
        Ok(offset)
    }

    /// Lowers the high watermark to `offset` (a batch start) on a log that no reader has
    /// seen yet: an open publishes everything it recovers, but a replicated partition may
    /// publish only what its group has committed, and may have to cut the rest.
    pub fn withhold_from(&mut self, offset: u64) -> Result<()> {
        if Arc::strong_count(&self.handoff) > 1 {
            return Err(self.bad_boundary("withhold", offset, "readers of the log exist already"));
        }
        if offset >= self.committed_offset {
            return Ok(());
        }
        let (i, position) = self.boundary("withhold", offset)?;
        // A sealed segment keeps its whole length (see `publish_to`): the cut and reads
        // from the writer's side find its batches by it.
        let bytes = if i + 1 == self.segments.len() {
            position
        } else {
            self.segments[i].committed_len()
        };
        self.handoff
            .publish_commit(&self.segments[i], bytes, offset);
        self.committed_offset = offset;
        Ok(())
    }

    /// Cuts the log back to `offset`: every batch from there on is removed, and the next
    /// append gets `offset`. Only what was never published can be cut (`offset` is at or
    /// above the high watermark, at the start of an appended batch), so no reader has
    /// seen, or holds, any byte that changes. A replicated partition cuts a tail that its
    /// leader never committed this way.
    ///
    /// Crash safety: a checkpoint that vouches for no more than `offset` is written first;
    /// then later segments are deleted and the cut batches are zeroed from the last to the
    /// first, each made durable before the one before it is touched. A crash part way leaves
    /// a log that opens with a prefix of the old one that reaches at least `offset` (a
    /// partly zeroed batch is a torn tail to recovery); the caller repeats the cut.
    pub fn truncate(&mut self, offset: u64) -> Result<()> {
        self.check_poisoned()?;
        if offset == self.next_offset {
            return Ok(());
        }
        if offset < self.committed_offset {
            return Err(self.bad_boundary(
                "cut",
                offset,
                &format!(
                    "readers may already have offsets up to {}; only what was never published can be cut",
                    self.committed_offset
                ),
            ));
        }
        if offset > self.next_offset {
            return Err(self.bad_boundary("cut", offset, "it is past the log's end"));
        }
        let (i, position) = self.boundary("cut", offset)?;
        let segment = self.segments[i].clone();
        let checkpoint = Checkpoint {
            segment_base: segment.base_offset(),
            position,
            next_offset: offset,
            clean: false,
            durable: true,
            start_offset: Some(self.segments[0].base_offset()),
        };
        checkpoint.write(&self.dir, true)?;
        self.checkpoint = checkpoint;

        // Later segments hold only cut batches. Dropped from the readers' table first
        // (none can be reading them: their offsets are all at or above the watermark).
        let later: Vec<Arc<Segment>> = self.segments.drain(i + 1..).collect();
        if !later.is_empty() {
            self.handoff.publish_segments(self.segments.clone());
        }
        for doomed in later.iter().rev() {
            let result = doomed.delete_files();
            self.guard(result)?;
        }
        if !later.is_empty() {
            let result = super::segment::sync_dir(&self.dir);
            self.guard(result)?;
        }

        // Zero the cut batches of this segment, last first.
        let end = if later.is_empty() {
            self.write_pos
        } else {
            segment.committed_len()
        };
        let mut batches = Vec::new();
        let mut at = position;
        while let Some(header) = segment.header_at(at, end) {
            let len = u64::from(header.batch_len);
            if len == 0 || at + len > end {
                break;
            }
            batches.push((at, at + len));
            at += len;
        }
        for (zeroed, &(from, to)) in batches.iter().rev().enumerate() {
            if self.crash_in_cut() == Some(zeroed) {
                // Half of this batch reached the disk before the "crash".
                let result = segment.zero(from + (to - from) / 2, to);
                self.guard(result)?;
                return Ok(());
            }
            let result = segment.zero(from, to);
            self.guard(result)?;
        }
        let result = segment.zero(at, end);
        self.guard(result)?;

        let indexer = IndexCursor::cut(&segment, position, self.config.index_interval_bytes);
        self.indexer = self.guard(indexer)?;
        segment.set_max_timestamp(self.indexer.max_timestamp);
        self.write_pos = position;
        self.flushed_pos = position;
        self.next_offset = offset;
        // The watermark stays where it is (at or below `offset`); the active segment's
        // readable length is what lies below it.
        let readable = if self.committed_offset == offset {
            position
        } else {
            segment.committed_len().min(position)
        };
        self.handoff
            .publish_commit(&segment, readable, self.committed_offset);
        // Sequences and message ids of cut batches are forgotten: a retry of one appends
        // it again.
        self.rebuild_producers();
        self.rebuild_msg_ids();
        tracing::info!(dir = %self.dir.display(), offset, batches = batches.len(), segments = later.len(), "cut the log's unpublished tail");
        Ok(())
    }

    /// The bytes of the appended batch that starts at `offset`, published or not (base
    /// offset stamped): what a replicated partition's leader sends a follower, which may
    /// be past the high watermark. A copy, read from the writer's side.
    pub fn batch_at(&self, offset: u64) -> Result<Vec<u8>> {
        let (i, position) = self.boundary("read", offset)?;
        let segment = &self.segments[i];
        let end = if i + 1 == self.segments.len() {
            self.write_pos
        } else {
            segment.committed_len()
        };
        match segment.header_at(position, end) {
            Some(header)
                if header.batch_len > 0 && position + u64::from(header.batch_len) <= end =>
            {
                Ok(segment
                    .bytes(position, position + u64::from(header.batch_len))
                    .to_vec())
            }
            _ => Err(self.bad_boundary("read", offset, "no appended batch starts there")),
        }
    }

    /// Where a crash-safety test stops a cut (after this many zeroed batches); never in
    /// the product.
    fn crash_in_cut(&self) -> Option<usize> {
        #[cfg(test)]
        return self.stop_cut_after;
        #[cfg(not(test))]
        None
    }

    /// The segment (its index in the table) and byte position where the appended batch
    /// starting at `offset` lies.
    fn boundary(&self, op: &'static str, offset: u64) -> Result<(usize, u64)> {
        let i = self
            .segments
            .partition_point(|s| s.base_offset() <= offset)
            .checked_sub(1)
            .ok_or_else(|| self.bad_boundary(op, offset, "it is below the log's start"))?;
        let segment = &self.segments[i];
        let end = if i + 1 == self.segments.len() {
            self.write_pos
        } else {
            segment.committed_len()
        };
        let relative = offset - segment.base_offset();
        let k = segment
            .offsets
            .partition_point(|e| u64::from(e.relative_offset) <= relative);
        let mut at = match k {
            0 => 0,
            k => u64::from(segment.offsets.get(k - 1).position),
        };
        while let Some(header) = segment.header_at(at, end) {
            if header.base_offset == offset {
                return Ok((i, at));
            }
            if header.base_offset > offset || header.batch_len == 0 {
                break;
            }
            at += u64::from(header.batch_len);
        }
        if at == end && i + 1 == self.segments.len() && offset == self.next_offset {
            return Ok((i, at));
        }
        Err(self.bad_boundary(op, offset, "no appended batch starts there"))
    }

    fn bad_boundary(&self, op: &'static str, offset: u64, reason: &str) -> StorageError {
        StorageError::BadBoundary {
            op,
            offset,
            reason: format!("{} ({})", reason, self.dir.display()),
        }
    }

    fn publish(&mut self) {
        let segment = self.active().clone();
        segment.set_max_timestamp(self.indexer.max_timestamp);
        self.handoff
            .publish_commit(&segment, self.write_pos, self.next_offset);
        self.committed_offset = self.next_offset;
    }

    fn flush_active(&mut self) -> Result<()> {
        if self.flushed_pos == self.write_pos {
            return Ok(());
        }
        let started = Instant::now();
        let segment = self.active().clone();
        let result = segment.flush_range(self.flushed_pos, self.write_pos);
        self.guard(result)?;
        WriterStats::add(&self.stats.flushes, 1);
        WriterStats::add(&self.stats.flush_nanos, started.elapsed().as_nanos() as u64);
        self.flushed_pos = self.write_pos;
        self.last_flush = Instant::now();
        Ok(())
    }

    /// Seals the active segment and makes the prepared one active.
    fn roll(&mut self) -> Result<()> {
        let old = self.active().clone();
        let sync = self.preparer.shape().sync;
        if sync {
            self.flush_active()?;
        }
        self.indexer.close(&old);
        if sync {
            let result = old.offsets.flush().and_then(|()| old.times.flush());
            self.guard(result)?;
        }
        old.set_max_timestamp(self.indexer.max_timestamp);
        // Readers stop at the watermark, so publishing the sealed length early is harmless.
        self.handoff
            .publish_commit(&old, self.write_pos, self.committed_offset);

        let prepared = self.preparer.take()?;
        let segment = Arc::new(prepared.activate(self.preparer.shape(), self.next_offset)?);
        self.segments.push(segment.clone());
        self.handoff.publish_segments(self.segments.clone());
        self.write_pos = 0;
        self.flushed_pos = 0;
        self.indexer = IndexCursor::new(self.config.index_interval_bytes);
        WriterStats::add(&self.stats.rolls, 1);
        let checkpoint = Checkpoint {
            segment_base: segment.base_offset(),
            position: 0,
            next_offset: self.next_offset,
            clean: false,
            durable: sync,
            start_offset: Some(self.segments[0].base_offset()),
        };
        checkpoint.write(&self.dir, sync)?;
        self.checkpoint = checkpoint;
        // So that recovery after a crash replays at most the segments since this one.
        // Written even when empty: without a snapshot, an open walks the whole log.
        self.write_producer_snapshot(sync)?;
        Ok(())
    }

    /// Deletes closed segments past the retention limits, oldest first. The active segment
    /// is never deleted. `now_ms` is the wall clock in ms since the Unix epoch.
    /// Also forgets idempotent producers idle past their expiry.
    pub fn enforce_retention(&mut self, now_ms: i64) -> Result<RetentionOutcome> {
        self.producers.expire(now_ms);
        self.msg_ids.expire(now_ms);
        let doomed = self.past_retention(now_ms);
        self.retire_first(doomed)
    }

    /// The log's first offset.
    pub fn start_offset(&self) -> u64 {
        self.segments[0].base_offset()
    }

    /// Whether an appended batch starts at `offset`, or `offset` is the log's end.
    pub fn is_boundary(&self, offset: u64) -> bool {
        self.boundary("check", offset).is_ok()
    }

    /// Where the retention limits would start the log at `now_ms`: the base offset of the
    /// first segment they keep (the log's start when they keep every segment). Nothing is
    /// deleted: a replicated partition deletes only once its group lets it forget the
    /// entries below (see [`delete_below`](Self::delete_below)).
    pub fn retention_point(&self, now_ms: i64) -> u64 {
        self.segments[self.past_retention(now_ms)].base_offset()
    }

    /// Deletes the sealed segments that lie wholly below `offset` (each one whose successor
    /// starts at or below it), oldest first, as retention does.
    pub fn delete_below(&mut self, offset: u64) -> Result<RetentionOutcome> {
        let doomed = self.segments[1..].partition_point(|s| s.base_offset() <= offset);
        self.retire_first(doomed)
    }

    /// Discards the whole log and starts it again, empty, at `offset`: a replica that
    /// installs its group's snapshot holds none of the records below it and must take the
    /// next entry at exactly that offset. Only what was never published may be lost
    /// (`offset` is at or above the high watermark); readers see the log start at
    /// `offset`, and those holding an old segment keep its mapping.
    ///
    /// Crash safety: first a checkpoint that vouches for nothing past the first segment's
    /// start (so recovery scans and trusts only what it finds), then the segments at or
    /// past `offset` are deleted, newest first; then the new segment is made and a durable
    /// checkpoint naming it as the start is written, after which recovery deletes every
    /// older segment as retention's leftovers. A crash at any point opens a prefix of the
    /// old log or the new empty one; the caller (which recorded the snapshot first)
    /// repeats the restart.
    pub fn restart_at(&mut self, offset: u64) -> Result<()> {
        self.check_poisoned()?;
        if offset < self.committed_offset {
            return Err(self.bad_boundary(
                "restart",
                offset,
                &format!(
                    "readers may already have offsets up to {}",
                    self.committed_offset
                ),
            ));
        }
        if let Some(growth) = self.growth.take() {
            let _ = growth.recv();
        }
        let first = self.segments[0].base_offset();
        let vouch_nothing = Checkpoint {
            segment_base: first,
            position: 0,
            next_offset: first,
            clean: false,
            durable: false,
            start_offset: Some(first),
        };
        vouch_nothing.write(&self.dir, true)?;
        self.checkpoint = vouch_nothing;
        let at = self.segments.partition_point(|s| s.base_offset() < offset);
        // Only their files go here; the table keeps them (mapped) until the new one replaces
        // it, so the writer's state stays whole if a step fails.
        for doomed in self.segments[at..].to_vec().iter().rev() {
            let result = doomed.delete_files();
            self.guard(result)?;
        }
        let result = super::segment::sync_dir(&self.dir);
        self.guard(result)?;
        let prepared = self.preparer.take();
        let prepared = self.guard(prepared)?;
        let segment = prepared.activate(self.preparer.shape(), offset);
        let segment = Arc::new(self.guard(segment)?);
        let checkpoint = Checkpoint {
            segment_base: offset,
            position: 0,
            next_offset: offset,
            clean: false,
            durable: true,
            start_offset: Some(offset),
        };
        let result = checkpoint.write(&self.dir, true);
        self.guard(result)?;
        self.checkpoint = checkpoint;
        let mut older = std::mem::replace(&mut self.segments, vec![segment.clone()]);
        older.truncate(at);
        self.handoff.publish_segments(self.segments.clone());
        self.handoff.publish_commit(&segment, 0, offset);
        self.write_pos = 0;
        self.flushed_pos = 0;
        self.next_offset = offset;
        self.committed_offset = offset;
        self.indexer = IndexCursor::new(self.config.index_interval_bytes);
        for doomed in older.iter().rev() {
            let result = doomed.delete_files();
            self.guard(result)?;
        }
        let result = super::segment::sync_dir(&self.dir);
        self.guard(result)?;
        // The tables described the discarded log.
        self.producers = Producers::new(self.config.producers);
        self.msg_ids = MsgIds::new(self.config.msg_id_window_ms);
        self.write_producer_snapshot(true)?;
        tracing::info!(dir = %self.dir.display(), offset, "the log was discarded and starts again, empty, at this offset");
        Ok(())
    }

    /// How many of the oldest sealed segments are past the retention limits at `now_ms`.
    fn past_retention(&self, now_ms: i64) -> usize {
        let mut total: u64 = self.segments.iter().map(|s| s.committed_len()).sum();
        let sealed = self.segments.len() - 1;
        let mut doomed = 0;
        let (retention_ms, retention_bytes) = self.retention.get();
        for segment in &self.segments[..sealed] {
            let too_old = retention_ms.is_some_and(|ms| {
                segment.max_timestamp() < now_ms.saturating_sub(ms.min(i64::MAX as u64) as i64)
            });
            let too_big = retention_bytes.is_some_and(|max| total > max);
            if !(too_old || too_big) {
                break;
            }
            total -= segment.committed_len();
            doomed += 1;
        }
        doomed
    }

    /// Deletes the first `doomed` segments (all sealed).
    fn retire_first(&mut self, doomed: usize) -> Result<RetentionOutcome> {
        let doomed = doomed.min(self.segments.len() - 1);
        let mut outcome = RetentionOutcome {
            start_offset: self.segments[doomed].base_offset(),
            ..Default::default()
        };
        if doomed == 0 {
            return Ok(outcome);
        }
        // Record the new start durably before anything is deleted, so that the next open
        // tells these deletions apart from lost files (whatever the fsync policy: it is
        // one small sync per retired segment).
        let checkpoint = Checkpoint {
            start_offset: Some(outcome.start_offset),
            ..self.checkpoint
        };
        checkpoint.write(&self.dir, true)?;
        self.checkpoint = checkpoint;
        let removed: Vec<_> = self.segments.drain(..doomed).collect();
        // Publish first: from here no new reader can find the removed segments, and those
        // that already hold one keep its mapping, which outlives the unlink.
        self.handoff.publish_segments(self.segments.clone());
        for segment in removed.into_iter().rev() {
            outcome.segments_deleted += 1;
            outcome.bytes_deleted += segment.committed_len();
            // The newest retired segment is kept for reuse, but only if no reader holds it:
            // a held one may still be read, so it must never be overwritten.
            match Arc::try_unwrap(segment) {
                Ok(segment) => self.preparer.recycle(segment)?,
                Err(segment) => segment.delete_files()?,
            }
        }
        tracing::info!(dir = %self.dir.display(), segments = outcome.segments_deleted,
            bytes = outcome.bytes_deleted, start_offset = outcome.start_offset, "retention deleted segments");
        Ok(outcome)
    }

    /// Flushes everything, records a clean checkpoint so the next open needs no scan, and
    /// releases the directory.
    pub fn close(mut self) -> Result<()> {
        self.check_poisoned()?;
        self.flush_active()?;
        let active = self.active().clone();
        self.indexer.close(&active);
        let result = active.offsets.flush().and_then(|()| active.times.flush());
        self.guard(result)?;
        self.publish();
        // Before the clean checkpoint: a crash between the two leaves an unclean log whose
        // recovery rebuilds from this (complete) snapshot or walks the log.
        self.write_producer_snapshot(true)?;
        Checkpoint {
            segment_base: active.base_offset(),
            position: self.write_pos,
            next_offset: self.next_offset,
            clean: true,
            durable: true,
            start_offset: Some(self.segments[0].base_offset()),
        }
        .write(&self.dir, true)
    }
}

impl Drop for LogWriter {
    /// Waits for a growth of the active segment still queued or running, so that the next
    /// writer of the directory (or a test) finds the files as this one left them.
    fn drop(&mut self) {
        if let Some(growth) = self.growth.take() {
            let _ = growth.recv();
        }
    }
}

/// The offsets a stored batch was given.
fn appended_of(header: &BatchHeader) -> Appended {
    Appended {
        base_offset: header.base_offset,
        last_offset: header.last_offset(),
    }
}

impl LogReader {
    /// The first offset still in the log.
    pub fn start_offset(&self) -> u64 {
        self.handoff.start_offset()
    }

    /// The offset after the last committed record.
    pub fn high_watermark(&self) -> u64 {
        self.handoff.high_watermark()
    }

    /// Disk allocated to the log's segment files: every segment's log and index files as
    /// far as they are allocated, and the next segment if one is prepared (or kept for
    /// reuse). Checkpoint and snapshot files (under 4 KiB each) are not counted.
    pub fn allocated_bytes(&self) -> u64 {
        let segments: u64 = self
            .handoff
            .segments()
            .iter()
            .map(|s| s.allocated_bytes())
            .sum();
        segments + self.spare.load(StdOrdering::Relaxed)
    }

    /// Committed bytes across all segments.
    pub fn size_bytes(&self) -> u64 {
        self.handoff
            .segments()
            .iter()
            .map(|s| s.committed_len())
            .sum()
    }

    pub fn segment_count(&self) -> usize {
        self.handoff.segments().len()
    }

    /// Reads whole batches from the one that holds `offset`, up to `max_bytes` (but always
    /// at least one batch, so a batch larger than the budget can still be read). Returns
    /// `None` when `offset` is the high watermark. Never blocks the writer.
    ///
    /// Every batch returned was checked on the way out: its frame, its base offset (the
    /// next in the sequence; the CRC does not cover it) and its CRC. A damaged first batch
    /// is a [`StorageError::DamagedBatch`]; a damaged later one ends the chunk before it, so
    /// the next read, which starts there, reports it.
    pub fn read(&self, offset: u64, max_bytes: usize) -> Result<Option<ReadChunk>> {
        let (segment, high_watermark) = match self.handoff.locate(offset) {
            Located::Found {
                segment,
                high_watermark,
            } => (segment, high_watermark),
            Located::AtEnd => return Ok(None),
            Located::BelowStart { start } => {
                return Err(StorageError::OffsetOutOfRange {
                    offset,
                    start,
                    end: self.high_watermark(),
                });
            }
            Located::BeyondEnd { high_watermark } => {
                return Err(StorageError::OffsetOutOfRange {
                    offset,
                    start: self.start_offset(),
                    end: high_watermark,
                });
            }
        };
        let committed = segment.committed_len();
        let base = segment.base_offset();
        let relative = offset - base;
        let i = segment
            .offsets
            .partition_point(|e| u64::from(e.relative_offset) <= relative);
        // Where to start hopping, and the offset the batch there must have.
        let (mut from, mut expected) = match i {
            0 => (0, base),
            i => {
                let entry = segment.offsets.get(i - 1);
                (
                    u64::from(entry.position),
                    base + u64::from(entry.relative_offset),
                )
            }
        };
        // Hop batch headers to the batch holding `offset`. An index entry whose batch is not
        // there (or lies past `offset`) is a damaged index: name the index file.
        let mut hops = 0usize;
        let first = loop {
            let header = match self.checked_header(&segment, from, committed, expected) {
                Ok(header) => header,
                Err(error) if hops == 0 && i > 0 => {
                    return Err(self.damaged_index(&segment, offset, from, error));
                }
                Err(error) => return Err(error),
            };
            if header.next_offset() > offset {
                break header;
            }
            from += u64::from(header.batch_len);
            expected = header.next_offset();
            hops += 1;
        };
        if first.base_offset > offset {
            return Err(self.damaged_index(
                &segment,
                offset,
                from,
                self.damaged(
                    &segment,
                    offset,
                    from,
                    format!("the index leads to a batch at offset {}", first.base_offset),
                ),
            ));
        }
        self.check_crc(&segment, from, &first)?;
        let mut to = from + u64::from(first.batch_len);
        let mut next_offset = first.next_offset();
        let budget = max_bytes as u64;
        while to < committed && next_offset < high_watermark {
            // Damage in a later batch ends the chunk here; the next read reports it.
            let Ok(header) = self.checked_header(&segment, to, committed, next_offset) else {
                break;
            };
            let end = to + u64::from(header.batch_len);
            if end - from > budget || self.check_crc(&segment, to, &header).is_err() {
                break;
            }
            to = end;
            next_offset = header.next_offset();
        }
        Ok(Some(ReadChunk {
            bytes: Bytes::from_owner(MappedRange { segment, from, to }),
            base_offset: first.base_offset,
            next_offset,
            high_watermark,
        }))
    }

    /// The header at `at`, which must be a whole, well-framed batch below `committed` with
    /// base offset `expected`. Committed bytes were validated before they were written, so a
    /// failure here means the file changed under us.
    fn checked_header(
        &self,
        segment: &Segment,
        at: u64,
        committed: u64,
        expected: u64,
    ) -> Result<BatchHeader> {
        let header = checked_header(segment, at, committed)
            .map_err(|e| self.damaged(segment, expected, at, e.to_string()))?;
        if header.base_offset != expected {
            return Err(self.damaged(
                segment,
                expected,
                at,
                format!(
                    "batch has base offset {} where {expected} was expected",
                    header.base_offset
                ),
            ));
        }
        Ok(header)
    }

    fn check_crc(&self, segment: &Segment, at: u64, header: &BatchHeader) -> Result<()> {
        let end = at + u64::from(header.batch_len);
        let actual = batch::crc_of(segment.bytes(at, end));
        if actual == header.crc {
            return Ok(());
        }
        Err(self.damaged(
            segment,
            header.base_offset,
            at,
            format!(
                "CRC mismatch (stored {:#010x}, computed {actual:#010x})",
                header.crc
            ),
        ))
    }

    fn damaged(
        &self,
        segment: &Segment,
        offset: u64,
        position: u64,
        reason: String,
    ) -> StorageError {
        StorageError::DamagedBatch {
            log: self.name.clone(),
            offset,
            path: segment.path().to_owned(),
            position,
            reason,
        }
    }

    /// Re-attributes a failure found where the offset index pointed to the index file.
    fn damaged_index(
        &self,
        segment: &Segment,
        offset: u64,
        position: u64,
        error: StorageError,
    ) -> StorageError {
        let reason = match error {
            StorageError::DamagedBatch { reason, .. } => reason,
            other => other.to_string(),
        };
        StorageError::DamagedBatch {
            log: self.name.clone(),
            offset,
            path: segment.offsets.path().to_owned(),
            position,
            reason: format!(
                "its entry for offset {offset} points to byte {position} of {}, where {reason}",
                segment.path().display()
            ),
        }
    }

    /// The first offset whose record timestamp is at or after `timestamp_ms`, or `None` if
    /// no committed record is that new.
    ///
    /// The time index only says where to start; it has no checksum of its own, so the entry
    /// used is checked against the batch it names (a batch boundary with the entry's offset,
    /// whose largest timestamp the entry covers, entries still ordered), and every batch the
    /// scan then passes is checked like a read (offset sequence and CRC-32C): damage is
    /// DATA_LOSS naming the file, never a record's offset taken from damaged bytes. The scan
    /// is bounded by about one index interval, so checking its CRCs is cheap.
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<u64>> {
        let high_watermark = self.handoff.high_watermark();
        for segment in self.handoff.segments() {
            if segment.max_timestamp() < timestamp_ms {
                continue;
            }
            let committed = segment.committed_len();
            let i = segment
                .times
                .partition_point(|e| e.max_timestamp < timestamp_ms);
            let (mut at, mut next_offset) = match i {
                0 => (0, segment.base_offset()),
                i => self.time_entry_start(&segment, i - 1, committed)?,
            };
            while at < committed && next_offset < high_watermark {
                let header = self.checked_header(&segment, at, committed, next_offset)?;
                self.check_crc(&segment, at, &header)?;
                let end = at + u64::from(header.batch_len);
                if header.max_timestamp >= timestamp_ms {
                    let view = BatchView::new(segment.bytes(at, end))
                        .map_err(|e| corrupt(&segment, at, e.to_string()))?;
                    for record in view.records() {
                        let record = record.map_err(|e| corrupt(&segment, at, e.to_string()))?;
                        if record.timestamp >= timestamp_ms {
                            return Ok(Some(record.offset));
                        }
                    }
                }
                next_offset = header.next_offset();
                at = end;
            }
            if next_offset >= high_watermark {
                return Ok(None);
            }
        }
        Ok(None)
    }

    /// Where a timestamp scan may start: the batch that time index entry `n` names, after
    /// checking that the entry is plausible. A damaged entry could otherwise send the scan
    /// past the records it is looking for (a later answer, silently).
    fn time_entry_start(&self, segment: &Segment, n: usize, committed: u64) -> Result<(u64, u64)> {
        let entry = segment.times.get(n);
        let position = u64::from(entry.position);
        let offset = segment.base_offset() + u64::from(entry.relative_offset);
        let fail = |reason: String| StorageError::DamagedBatch {
            log: self.name.clone(),
            offset,
            path: segment.times.path().to_owned(),
            position,
            reason: format!(
                "time index entry {n} (timestamp {}, offset {offset}, byte {position} of {}): \
                 {reason}",
                entry.max_timestamp,
                segment.path().display()
            ),
        };
        if n > 0 {
            let before = segment.times.get(n - 1);
            if before.max_timestamp >= entry.max_timestamp
                || before.relative_offset >= entry.relative_offset
                || before.position >= entry.position
            {
                return Err(fail(format!(
                    "entries out of order (entry {} has timestamp {}, offset {}, byte {})",
                    n - 1,
                    before.max_timestamp,
                    segment.base_offset() + u64::from(before.relative_offset),
                    before.position
                )));
            }
        }
        if position >= committed {
            return Err(fail(format!(
                "the segment's committed bytes end at {committed}"
            )));
        }
        let header = self
            .checked_header(segment, position, committed, offset)
            .map_err(|e| fail(e.to_string()))?;
        if header.max_timestamp > entry.max_timestamp {
            return Err(fail(format!(
                "the batch there has a newer record (timestamp {})",
                header.max_timestamp
            )));
        }
        Ok((position, offset))
    }
}

fn corrupt(segment: &Segment, position: u64, reason: String) -> StorageError {
    StorageError::Corrupt {
        path: segment.path().to_owned(),
        position,
        reason,
    }
}

/// The header at `at`, which must be a whole, well-framed batch below `committed`. Committed
/// bytes were validated before they were written, so a failure here means the file changed
/// under us; say where instead of panicking.
fn checked_header(segment: &Segment, at: u64, committed: u64) -> Result<BatchHeader> {
    let header = segment.header_at(at, committed).ok_or_else(|| {
        corrupt(
            segment,
            at,
            "expected a batch header below the committed length".into(),
        )
    })?;
    header
        .check_frame((committed - at) as usize)
        .map_err(|e| corrupt(segment, at, e.to_string()))?;
    Ok(header)
}

#[cfg(test)]
#[path = "log_cut_tests.rs"]
mod cut_tests;

#[cfg(test)]
mod tests {
    use super::super::batch::{self, BatchBuilder, Record};
    use super::*;

    fn batch(first: i64, n: usize, value: &[u8]) -> Vec<u8> {
        let mut b = BatchBuilder::default();
        for i in 0..n {
            b.push(&Record {
                timestamp: first + i as i64,
                key: Some(b"k"),
                value,
                headers: &[],
            });
        }
        b.finish()
    }

    fn config(segment_bytes: u64, fsync: FsyncPolicy) -> LogConfig {
        LogConfig {
            segment_bytes,
            index_interval_bytes: 256,
            fsync,
            ..LogConfig::default()
        }
    }

    fn append(w: &mut LogWriter, bytes: &[u8]) -> Appended {
        w.append_and_commit(batch::validate(bytes, usize::MAX).unwrap())
            .unwrap()
    }

    fn read_all(r: &LogReader, from: u64) -> Vec<(u64, i64, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = from;
        while let Some(chunk) = r.read(at, 1000).unwrap() {
            for b in batch::batches(&chunk.bytes) {
                for rec in b.unwrap().records() {
                    let rec = rec.unwrap();
                    if rec.offset >= at {
                        out.push((rec.offset, rec.timestamp, rec.value.to_vec()));
                    }
                }
            }
            at = chunk.next_offset;
        }
        out
    }

    fn producer_batch(id: u64, epoch: u16, seq: u32, n: usize) -> Vec<u8> {
        let stamp = batch::ProducerStamp {
            producer_id: id,
            epoch,
            base_sequence: seq,
        };
        let mut b = BatchBuilder::with_producer(1024, stamp);
        for i in 0..n {
            b.push(&Record {
                timestamp: 1_000 + i as i64,
                key: Some(b"k"),
                value: &[seq as u8; 200],
                headers: &[],
            });
        }
        b.finish()
    }

    fn try_append(w: &mut LogWriter, bytes: &[u8]) -> Result<Appended> {
        w.append_and_commit(batch::validate(bytes, usize::MAX).unwrap())
    }

    /// Ten batches from each of three producers, over several segments; then every batch
    /// sent again must get its first offsets back and store nothing, across a clean
    /// reopen, a crash (no close: the state comes from the snapshot written at the last
    /// roll plus a walk of the log after it), and a damaged or missing snapshot (a walk
    /// of the whole log).
    #[test]
    fn idempotent_batches_are_stored_once_across_reopen_and_crash() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(4096, FsyncPolicy::Always);
        let mut first = Vec::new();
        let mut w = LogWriter::open(dir.path(), cfg.clone()).unwrap();
        for seq in 0..10u32 {
            for id in 1..=3u64 {
                let a = try_append(&mut w, &producer_batch(id, 0, seq * 2, 2)).unwrap();
                first.push((id, seq * 2, a));
            }
        }
        assert!(w.reader().segment_count() > 3);
        let end = w.next_offset();
        let check_all = |w: &mut LogWriter, first: &[(u64, u32, Appended)]| {
            // Only the last RETAINED_BATCHES per producer are remembered.
            for id in 1..=3u64 {
                let mine: Vec<_> = first.iter().filter(|f| f.0 == id).collect();
                for &&(_, seq, a) in &mine[mine.len() - producers::RETAINED_BATCHES..] {
                    assert_eq!(try_append(w, &producer_batch(id, 0, seq, 2)).unwrap(), a);
                }
            }
            assert!(matches!(
                try_append(w, &producer_batch(1, 0, 0, 2)),
                Err(StorageError::OutOfOrderSequence {
                    expected: 20,
                    got: 0,
                    ..
                })
            ));
        };
        check_all(&mut w, &first);
        assert_eq!(w.next_offset(), end, "duplicates store nothing");
        assert_eq!(WriterStats::get(&w.stats().duplicates), 15);
        w.close().unwrap();

        let mut w = LogWriter::open(dir.path(), cfg.clone()).unwrap();
        assert_eq!(w.producer_count(), 3);
        check_all(&mut w, &first);
        // A crash: more batches after the last roll, then the writer is dropped unclosed.
        let a = try_append(&mut w, &producer_batch(2, 0, 20, 2)).unwrap();
        first.push((2, 20, a));
        drop(w);
        let mut w = LogWriter::open(dir.path(), cfg.clone()).unwrap();
        check_all(&mut w, &first);
        assert_eq!(try_append(&mut w, &producer_batch(2, 0, 20, 2)).unwrap(), a);
        assert_eq!(w.next_offset(), end + 2);
        w.close().unwrap();

        // A damaged snapshot, then none at all: the log is walked from its start.
        let snapshot = dir.path().join(producers::SNAPSHOT_FILE);
        let mut bytes = std::fs::read(&snapshot).unwrap();
        bytes[25] ^= 0xff;
        std::fs::write(&snapshot, &bytes).unwrap();
        let mut w = LogWriter::open(dir.path(), cfg.clone()).unwrap();
        check_all(&mut w, &first);
        drop(w);
        std::fs::remove_file(&snapshot).unwrap();
        let mut w = LogWriter::open(dir.path(), cfg.clone()).unwrap();
        check_all(&mut w, &first);
        // A newer epoch fences the older one.
        try_append(&mut w, &producer_batch(3, 1, 0, 1)).unwrap();
        assert!(matches!(
            try_append(&mut w, &producer_batch(3, 0, 20, 1)),
            Err(StorageError::ProducerFenced {
                current_epoch: 1,
                ..
            })
        ));
        w.close().unwrap();
    }

    #[test]
    fn append_read_roll_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(dir.path(), config(4096, FsyncPolicy::Always)).unwrap();
        let r = w.reader();
        assert_eq!(r.read(0, 100).unwrap().map(|c| c.next_offset), None);
        for i in 0..100 {
            let a = append(&mut w, &batch(i * 10, 3, &[i as u8; 100]));
            assert_eq!(a.base_offset, i as u64 * 3);
            assert_eq!(a.last_offset, i as u64 * 3 + 2);
        }
        assert!(
            r.segment_count() > 5,
            "rolled into {} segments",
            r.segment_count()
        );
        assert_eq!(r.high_watermark(), 300);
        let all = read_all(&r, 0);
        assert_eq!(all.len(), 300);
        assert!(all.iter().enumerate().all(|(i, rec)| rec.0 == i as u64));
        assert_eq!(read_all(&r, 151)[0].0, 151);
        assert_eq!(r.offset_for_timestamp(500).unwrap(), Some(150));
        assert_eq!(r.offset_for_timestamp(502).unwrap(), Some(152));
        assert_eq!(r.offset_for_timestamp(5000).unwrap(), None);
        assert!(matches!(
            r.read(301, 10),
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        w.close().unwrap();
        assert_eq!(read_all(&r, 0).len(), 300, "a reader outlives its writer");

        let mut w = LogWriter::open(dir.path(), config(4096, FsyncPolicy::Always)).unwrap();
        assert_eq!(w.next_offset(), 300);
        let r = w.reader();
        assert_eq!(read_all(&r, 0).len(), 300);
        assert_eq!(r.offset_for_timestamp(502).unwrap(), Some(152));
        append(&mut w, &batch(2000, 2, b"x"));
        assert_eq!(r.high_watermark(), 302);
        drop(w); // no clean close: the next open scans
        let w = LogWriter::open(dir.path(), config(4096, FsyncPolicy::Always)).unwrap();
        assert_eq!(w.next_offset(), 302);
        assert_eq!(read_all(&w.reader(), 0).len(), 302);
    }

    /// Flips one bit of `file` at `at`.
    fn flip(file: &Path, at: u64) {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(file)
            .unwrap();
        let mut b = [0u8];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x10], at).unwrap();
    }

    #[test]
    fn a_flipped_bit_in_a_sealed_segment_is_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(4096, FsyncPolicy::Always);
        let mut w = LogWriter::open(dir.path(), cfg.clone()).unwrap();
        let one = batch(0, 3, &[7; 100]);
        for _ in 0..40 {
            append(&mut w, &one);
        }
        w.close().unwrap();
        // The third batch of the first (sealed, checkpointed) segment: offsets 6..9.
        let segment = dir.path().join("00000000000000000000.log");
        let third = 2 * one.len() as u64;
        flip(&segment, third + 60);
        let mut w = LogWriter::open(dir.path(), cfg).unwrap();
        w.set_name("topic t partition 0");
        let r = w.reader();
        // A read from the start stops before the damaged batch...
        let chunk = r.read(0, 1 << 20).unwrap().unwrap();
        assert_eq!(chunk.next_offset, 6);
        // ...and the read of the damaged batch is refused, naming log, offset and file.
        for offset in [6, 7, 8] {
            let error = r.read(offset, 1 << 20).unwrap_err();
            let StorageError::DamagedBatch {
                offset: at,
                path,
                position,
                ..
            } = &error
            else {
                panic!("expected a damaged batch, got {error}");
            };
            assert_eq!((*at, path, *position), (6, &segment, third), "{error}");
            let message = error.to_string();
            assert!(
                message.contains("topic t partition 0") && message.contains("CRC"),
                "{message}"
            );
        }
        // The batches after it are still served.
        assert_eq!(read_all(&r, 9).len(), 120 - 9);
    }

    #[test]
    fn a_flipped_base_offset_or_index_entry_is_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(4096, FsyncPolicy::Always);
        let mut w = LogWriter::open(dir.path(), cfg.clone()).unwrap();
        let one = batch(0, 2, &[1; 100]);
        for _ in 0..40 {
            append(&mut w, &one);
        }
        w.close().unwrap();
        // The base offset is outside the CRC: the offset sequence catches it.
        let segment = dir.path().join("00000000000000000000.log");
        flip(&segment, one.len() as u64);
        // The offset index's second entry (every 256 bytes) now points elsewhere.
        let index = dir.path().join("00000000000000000000.index");
        flip(&index, 8 + 4);
        let w = LogWriter::open(dir.path(), cfg).unwrap();
        let r = w.reader();
        let error = r.read(2, 100).unwrap_err();
        assert!(
            matches!(&error, StorageError::DamagedBatch { path, offset: 2, .. } if *path == segment),
            "{error}"
        );
        let entry = w.handoff.segments()[0].offsets.get(1);
        let indexed = u64::from(entry.relative_offset);
        let error = r.read(indexed, 100).unwrap_err();
        assert!(
            matches!(&error, StorageError::DamagedBatch { path, .. } if *path == index),
            "{error}"
        );
    }

    #[test]
    fn a_damaged_time_index_or_batch_never_moves_a_timestamp_lookup() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(1 << 16, FsyncPolicy::Always);
        let mut w = LogWriter::open(dir.path(), cfg.clone()).unwrap();
        // Batch j holds offsets 2j, 2j+1 with timestamps 10j, 10j+1; all batches are the
        // same length, so batch j starts at byte j * len.
        let len = batch(0, 2, &[7; 100]).len() as u64;
        for j in 0..60 {
            append(&mut w, &batch(j * 10, 2, &[7; 100]));
        }
        let r = w.reader();
        let entry = w.handoff.segments()[0].times.get(2);
        let b = u64::from(entry.relative_offset) / 2;
        let target = entry.max_timestamp + 1;
        assert_eq!(r.offset_for_timestamp(target).unwrap(), Some(2 * (b + 1)));
        drop(r);
        w.close().unwrap();

        // Entry 2 now names the batch two further on: a plausible position at a batch
        // boundary. Starting there would answer 2(b+2) and skip batch b+1.
        let times = dir.path().join("00000000000000000000.timeindex");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&times)
            .unwrap();
        f.write_all_at(&(((b + 2) * len) as u32).to_le_bytes(), 2 * 16 + 12)
            .unwrap();
        drop(f);
        let w = LogWriter::open(dir.path(), cfg.clone()).unwrap();
        let error = w.reader().offset_for_timestamp(target).unwrap_err();
        assert!(
            matches!(&error, StorageError::DamagedBatch { path, .. } if *path == times),
            "{error}"
        );
        drop(w);
        // Put the entry back and damage the batch the scan reads instead.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&times)
            .unwrap();
        f.write_all_at(&((b * len) as u32).to_le_bytes(), 2 * 16 + 12)
            .unwrap();
        drop(f);
        let segment = dir.path().join("00000000000000000000.log");
        flip(&segment, (b + 2) * len - 1);
        let w = LogWriter::open(dir.path(), cfg).unwrap();
        let error = w.reader().offset_for_timestamp(target).unwrap_err();
        assert!(
            matches!(&error, StorageError::DamagedBatch { path, .. } if *path == segment),
            "{error}"
        );
    }

    #[test]
    fn second_writer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _w = LogWriter::open(dir.path(), config(4096, FsyncPolicy::Never)).unwrap();
        let e = LogWriter::open(dir.path(), config(4096, FsyncPolicy::Never))
            .err()
            .unwrap();
        assert!(e.to_string().contains("another writer"), "{e}");
    }

    #[test]
    fn retention_recycles_a_retired_segment_as_a_later_one() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(4096, FsyncPolicy::Always);
        cfg.retention_bytes = Some(2 * 4096);
        let mut w = LogWriter::open(dir.path(), cfg.clone()).unwrap();
        let r = w.reader();
        let mut i = 0;
        while r.segment_count() < 6 {
            append(&mut w, &batch(i, 1, &[i as u8; 500]));
            i += 1;
        }
        let out = w.enforce_retention(0).unwrap();
        assert!(out.segments_deleted >= 2, "{out:?}");
        let recycled = dir
            .path()
            .join(format!("{}.log", super::super::segment::RECYCLED_STEM));
        let recycled_inode = std::fs::metadata(&recycled)
            .expect("the newest retired segment is kept for reuse")
            .ino();
        // Append batches of another size until the kept file is the active segment: its old
        // batches then lie past the new ones, out of step with them.
        let active_inode = |r: &LogReader| {
            let active = r.handoff.segments().last().unwrap().clone();
            std::fs::metadata(active.path()).unwrap().ino()
        };
        while active_inode(&r) != recycled_inode {
            assert!(i < 200, "the kept segment was never reused");
            append(&mut w, &batch(i, 1, &[i as u8; 300]));
            i += 1;
        }
        let start = r.start_offset();
        let expect: Vec<u64> = (start..i as u64).collect();
        let check = |reader: &LogReader| {
            let records = read_all(reader, start);
            assert_eq!(records.iter().map(|rec| rec.0).collect::<Vec<_>>(), expect);
            assert!(
                records
                    .iter()
                    .all(|rec| rec.2.iter().all(|&b| b == rec.1 as u8))
            );
        };
        check(&r);
        // A crash now: recovery must not take the reused file's old life for data after a
        // damaged tail (it would refuse to open the log).
        drop(w);
        let w = LogWriter::open(dir.path(), cfg).unwrap();
        assert_eq!(w.next_offset(), i as u64);
        check(&w.reader());
    }

    #[test]
    fn retention_point_and_delete_below_remove_only_whole_segments_below_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(4096, FsyncPolicy::Always);
        cfg.retention_bytes = Some(3 * 4096);
        let mut w = LogWriter::open(dir.path(), cfg.clone()).unwrap();
        let r = w.reader();
        for i in 0..100 {
            append(&mut w, &batch(i, 1, &[0; 500]));
        }
        let segments = r.segment_count();
        // Asking deletes nothing.
        let point = w.retention_point(0);
        assert!(point > 0);
        assert_eq!(r.segment_count(), segments);
        assert_eq!(r.start_offset(), 0);
        // An offset inside a segment deletes only the segments wholly below it.
        let out = w.delete_below(point - 1).unwrap();
        assert!(out.start_offset < point);
        assert_eq!(w.delete_below(point).unwrap().start_offset, point);
        assert_eq!(r.start_offset(), point);
        assert_eq!(read_all(&r, point).len() as u64, 100 - point);
        // Never the active segment.
        let out = w.delete_below(u64::MAX).unwrap();
        assert_eq!(r.segment_count(), 1);
        assert_eq!(r.start_offset(), out.start_offset);
        drop(w);
        let w = LogWriter::open(dir.path(), cfg).unwrap();
        assert_eq!(w.reader().start_offset(), out.start_offset);
        assert_eq!(w.next_offset(), 100);
    }

    #[test]
    fn restart_at_discards_the_log_and_goes_on_empty_from_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(4096, FsyncPolicy::Always);
        let mut w = LogWriter::open(dir.path(), cfg.clone()).unwrap();
        let r = w.reader();
        for i in 0..30 {
            append(&mut w, &batch(i, 1, &[0; 500]));
        }
        let held = r.read(0, 10).unwrap().unwrap();
        // Not below what readers may have seen.
        assert!(w.restart_at(10).is_err());
        // At any offset at or past the high watermark, again and again.
        for at in [40, 500] {
            w.restart_at(at).unwrap();
            assert_eq!(w.next_offset(), at);
            assert_eq!(r.start_offset(), at);
            assert_eq!(r.high_watermark(), at);
            assert_eq!(r.segment_count(), 1);
            assert!(read_all(&r, at).is_empty());
        }
        // A chunk read before still reads, though its file is gone.
        assert_eq!(batch::batches(&held.bytes).count(), 1);
        for i in 0..3 {
            append(&mut w, &batch(i, 1, &[1; 10]));
        }
        w.flush().unwrap();
        assert_eq!(
            read_all(&r, 500).iter().map(|x| x.0).collect::<Vec<_>>(),
            vec![500, 501, 502]
        );
        drop(w);
        let w = LogWriter::open(dir.path(), cfg).unwrap();
        assert_eq!(w.reader().start_offset(), 500);
        assert_eq!(w.next_offset(), 503);
        let segments = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                let name = name.to_string_lossy();
                name.ends_with(".log") && name.starts_with(|c: char| c.is_ascii_digit())
            })
            .count();
        assert_eq!(segments, 1);
    }

    #[test]
    fn retention_by_bytes_and_age() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(4096, FsyncPolicy::Never);
        cfg.retention_bytes = Some(3 * 4096);
        let mut w = LogWriter::open(dir.path(), cfg).unwrap();
        let r = w.reader();
        for i in 0..100 {
            append(&mut w, &batch(i, 1, &[0; 500]));
        }
        let held = r.read(0, 10).unwrap().unwrap();
        let before = r.segment_count();
        let out = w.enforce_retention(0).unwrap();
        assert!(out.segments_deleted > 0);
        assert_eq!(r.segment_count(), before - out.segments_deleted);
        assert!(r.size_bytes() <= 3 * 4096);
        assert_eq!(r.start_offset(), out.start_offset);
        assert!(matches!(
            r.read(0, 10),
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        // A chunk read before retention still reads, though its file is gone.
        assert_eq!(batch::batches(&held.bytes).count(), 1);
        assert_eq!(
            read_all(&r, out.start_offset).len() as u64,
            100 - out.start_offset
        );

        let mut cfg = config(4096, FsyncPolicy::Never);
        cfg.retention_ms = Some(1000);
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(dir.path(), cfg).unwrap();
        for i in 0..40 {
            append(&mut w, &batch(i * 100, 1, &[0; 500]));
        }
        // Records are stamped 0..3900 ms; at "now" = 3000, segments whose newest record is
        // older than 2000 go.
        let out = w.enforce_retention(3000).unwrap();
        assert!(out.segments_deleted > 0);
        let r = w.reader();
        let first = read_all(&r, r.start_offset());
        assert!(
            first[0].1 <= 2000 + 700,
            "kept too little: starts at ts {}",
            first[0].1
        );
        assert!(r.start_offset() > 0);
    }

    fn file_len(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().len()
    }

    /// Disk blocks a file holds, as `du` counts them.
    fn file_disk(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap().blocks() * 512
    }

    /// A new partition at the default segment size costs its first allocation, not a
    /// segment: what `du` sees is what `allocated_bytes` reports.
    #[test]
    fn an_idle_log_costs_its_first_allocation() {
        let dir = tempfile::tempdir().unwrap();
        let w = LogWriter::open(dir.path(), LogConfig::default()).unwrap();
        let r = w.reader();
        let log = dir.path().join("00000000000000000000.log");
        assert_eq!(file_len(&log), super::super::segment::FIRST_ALLOCATION);
        let on_disk: u64 = ["log", "index", "timeindex"]
            .iter()
            .map(|s| file_disk(&dir.path().join(format!("00000000000000000000.{s}"))))
            .sum();
        assert!(on_disk <= 4 << 20, "{on_disk} bytes on disk");
        assert!(
            r.allocated_bytes() <= on_disk + 2 * 4096,
            "{} reported, {on_disk} on disk",
            r.allocated_bytes()
        );
        assert_eq!(r.size_bytes(), 0);
    }

    /// Appends run ahead of nothing: the file grows before each write reaches past its end
    /// (under every policy, through crashes and reopens), the index files grow with it, and
    /// everything reads back. A segment still rolls at its configured size.
    #[test]
    fn appends_grow_the_file_ahead_of_the_write_position() {
        for fsync in [FsyncPolicy::Never, FsyncPolicy::Always] {
            let dir = tempfile::tempdir().unwrap();
            let cfg = LogConfig {
                segment_bytes: 6 << 20,
                index_interval_bytes: 4096,
                fsync,
                ..LogConfig::default()
            };
            let log = dir.path().join("00000000000000000000.log");
            let value = vec![7u8; 60_000];
            let mut written = Vec::new();
            let mut w = LogWriter::open(dir.path(), cfg.clone()).unwrap();
            let mut i = 0i64;
            while w.reader().segment_count() == 1 {
                let b = batch(i, 1, &value);
                let end = w.write_pos + b.len() as u64;
                append(&mut w, &b);
                written.push(i);
                if w.reader().segment_count() == 1 {
                    assert!(
                        file_len(&log) >= end,
                        "the write reached past the file's end"
                    );
                    assert!(file_len(&log) <= end + (2 << 20), "allocated too far ahead");
                }
                i += 1;
                if i == 40 {
                    // A crash halfway: the next writer finds the file as this one grew it.
                    drop(w);
                    w = LogWriter::open(dir.path(), cfg.clone()).unwrap();
                }
            }
            assert_eq!(file_len(&log), 6 << 20, "a full segment's file is whole");
            let offsets = dir.path().join("00000000000000000000.index");
            assert!(
                file_len(&offsets) >= ((6 << 20) / 4096) * 8,
                "the offset index grew with its log"
            );
            let got: Vec<i64> = read_all(&w.reader(), 0).iter().map(|r| r.1).collect();
            assert_eq!(got, written);
            drop(w);
            let w = LogWriter::open(dir.path(), cfg).unwrap();
            let got: Vec<i64> = read_all(&w.reader(), 0).iter().map(|r| r.1).collect();
            assert_eq!(got, written, "{fsync:?}");
        }
    }

    /// A batch larger than what is allocated ahead is allocated in place before it is
    /// written; a log whose active file was cut (a crash before a growth reached the disk,
    /// under fsync `never`) reopens with the batches the file still holds and grows again.
    #[test]
    fn a_large_batch_and_a_cut_file_are_allocated_again() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig {
            segment_bytes: 64 << 20,
            index_interval_bytes: 4096,
            fsync: FsyncPolicy::Never,
            ..LogConfig::default()
        };
        let log = dir.path().join("00000000000000000000.log");
        let mut w = LogWriter::open(dir.path(), cfg.clone()).unwrap();
        let small = batch(0, 1, b"small");
        let big = batch(1, 1, &vec![1u8; 5 << 20]);
        append(&mut w, &small);
        append(&mut w, &big);
        assert!(file_len(&log) >= (small.len() + big.len()) as u64);
        drop(w);
        let f = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
        f.set_len(small.len() as u64).unwrap();
        drop(f);
        let mut w = LogWriter::open(dir.path(), cfg.clone()).unwrap();
        assert_eq!(w.next_offset(), 1, "the cut batch is a torn tail");
        append(&mut w, &big);
        let got: Vec<i64> = read_all(&w.reader(), 0).iter().map(|r| r.1).collect();
        assert_eq!(got, vec![0, 1]);
    }
}
