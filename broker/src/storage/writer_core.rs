//! What a partition's writer decides, shared by its two shells: the writer thread
//! ([`Committer`](super::Committer), fsync `always`) and the writer task
//! (`task_writer`, fsync `never` and `interval`).
//!
//! A [`WriterCore`] has no channel, thread, runtime or clock: the shell takes requests off
//! its queue and hands them in, runs the blocking parts where they belong (inline on the
//! thread, `spawn_blocking` from the task), and passes the time in. The core decides the
//! rest: how a group of appends is formed and bounded, committing it once, what each
//! appender is answered (a failed append alone with its error, a failed commit for all,
//! and the same refusal for every later append), what a request after a close gets, and
//! when the interval flush and retention are due. The log is reached through
//! [`GroupLog`], which [`LogWriter`] implements, so the core is tested without a disk.

use std::time::{Duration, Instant};

use super::FsyncPolicy;
use super::batch::{ValidBatch, ValidatedBatch};
use super::error::{Result, StorageError};
use super::log::{Appended, LogWriter};

/// Most batches appended under one commit: bounds how long the first appender of a group
/// waits for the others.
pub const MAX_GROUP_BATCHES: usize = 1024;
/// Requests that may wait in a writer's queue: its memory bound. The partition's byte
/// budget charges each batch at least `1 / QUEUE_DEPTH` of it, so appends never fill more.
pub const QUEUE_DEPTH: usize = 4096;
/// How often an idle writer wakes for housekeeping (and, under the interval policy, at
/// least as often as its interval). Long, so that thousands of quiet partitions cost
/// nothing.
pub const IDLE_WAKE: Duration = Duration::from_secs(1);
/// Longest a writer whose commit flushes waits for a group to fill up again. An appender
/// answered by the previous flush needs a moment to send its next batch; without the
/// wait, eight steady appenders split into groups of four or five and pay nearly twice the
/// flushes. A flush costs 0.3–2 ms here, so the wait is cheap.
pub const GATHER_WAIT: Duration = Duration::from_micros(200);
/// How often retention runs.
pub const RETENTION_EVERY: Duration = Duration::from_secs(10);

/// Answers one appender, on the writer's thread or task.
pub type Reply = Box<dyn FnOnce(Result<Appended>) + Send>;
/// Answers the one who closed the writer, with the log's close.
pub type CloseReply = Box<dyn FnOnce(Result<()>) + Send>;

/// What reaches a writer through its queue.
pub enum Request {
    Append { batch: ValidatedBatch, reply: Reply },
    Close(CloseReply),
}

impl Request {
    /// Answers a request the writer will never serve: it has stopped. A second close has
    /// nothing left to do.
    pub fn refuse(self) {
        match self {
            Request::Append { reply, .. } => reply(Err(StorageError::WriterStopped)),
            Request::Close(reply) => reply(Ok(())),
        }
    }
}

/// The part of a partition log the core drives. [`LogWriter`] is the real one.
pub trait GroupLog {
    /// Copies a batch in and gives it its offsets; not yet readable.
    fn append(&mut self, batch: ValidBatch<'_>) -> Result<Appended>;
    /// Makes everything appended readable, flushing first as the fsync policy says; returns
    /// the high watermark. A failure poisons the log.
    fn commit(&mut self) -> Result<u64>;
    /// Makes everything appended readable without flushing (fsync `never` or `interval`).
    fn commit_unflushed(&mut self) -> Result<u64>;
    /// While bytes written are not yet flushed: when the last flush was, which is where the
    /// interval runs from. `None` when nothing waits for a flush.
    fn unflushed_since(&self) -> Option<Instant>;
}

impl GroupLog for LogWriter {
    fn append(&mut self, batch: ValidBatch<'_>) -> Result<Appended> {
        LogWriter::append(self, batch)
    }
    fn commit(&mut self) -> Result<u64> {
        LogWriter::commit(self)
    }
    fn commit_unflushed(&mut self) -> Result<u64> {
        LogWriter::commit_unflushed(self)
    }
    fn unflushed_since(&self) -> Option<Instant> {
        LogWriter::unflushed_since(self)
    }
}

/// How a group is committed, which follows from where the writer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitMode {
    /// Flush as the fsync policy says, inside the commit: a writer on its own thread,
    /// which may block.
    Flushing,
    /// Publish only; the interval flush is a step of its own, which the shell runs off
    /// its async runtime. Refused under fsync `always`, whose acknowledgements wait for a
    /// flush.
    Unflushed,
}

/// A partition writer's decisions: the group being formed and the housekeeping clock.
pub struct WriterCore {
    mode: CommitMode,
    fsync: FsyncPolicy,
    /// The group being formed: each append's result and whom to tell.
    group: Vec<(Result<Appended>, Reply)>,
    /// Size of the group committed last; a smaller one is worth waiting for.
    last_group: usize,
    /// Set once a close is received: the group ends, and everything after is refused.
    closing: bool,
    close: Option<CloseReply>,
    /// Why a commit failed. The log refuses writes from then on; the core answers so
    /// without asking it.
    poisoned: Option<String>,
    next_retention: Instant,
}

impl WriterCore {
    /// A core for a writer committing in `mode` over a log under `fsync`, started at `now`.
    pub fn new(fsync: FsyncPolicy, mode: CommitMode, now: Instant) -> Result<WriterCore> {
        if mode == CommitMode::Unflushed && fsync == FsyncPolicy::Always {
            return Err(StorageError::InvalidConfig(
                "a writer task cannot serve fsync always: its flushes block".into(),
            ));
        }
        Ok(WriterCore {
            mode,
            fsync,
            group: Vec::with_capacity(MAX_GROUP_BATCHES),
            last_group: 0,
            closing: false,
            close: None,
            poisoned: None,
            next_retention: now + RETENTION_EVERY,
        })
    }

    /// Takes a request off the queue into the current group. An append that must reach
    /// the log comes back, for [`append`](Self::append) inline or for the shell to run
    /// elsewhere and report with [`appended`](Self::appended); the core settles the rest
    /// itself (a close, an append to a poisoned log, anything after a close).
    #[must_use]
    pub fn receive(&mut self, request: Request) -> Option<(ValidatedBatch, Reply)> {
        if self.closing {
            request.refuse();
            return None;
        }
        match request {
            Request::Close(reply) => {
                self.closing = true;
                self.close = Some(reply);
                None
            }
            Request::Append { batch, reply } => match &self.poisoned {
                Some(reason) => {
                    let refused = Err(StorageError::Poisoned {
                        reason: reason.clone(),
                    });
                    self.group.push((refused, reply));
                    None
                }
                None => Some((batch, reply)),
            },
        }
    }

    /// Appends a received batch to `log`.
    pub fn append(&mut self, log: &mut impl GroupLog, batch: ValidatedBatch, reply: Reply) {
        let result = log.append(batch.as_valid());
        self.group.push((result, reply));
    }

    /// Records the result of an append the shell ran itself.
    pub fn appended(&mut self, reply: Reply, result: Result<Appended>) {
        self.group.push((result, reply));
    }

    /// [`receive`](Self::receive), then [`append`](Self::append) inline.
    pub fn offer(&mut self, log: &mut impl GroupLog, request: Request) {
        if let Some((batch, reply)) = self.receive(request) {
            self.append(log, batch, reply);
        }
    }

    /// Whether the group takes no more requests: it is at [`MAX_GROUP_BATCHES`], or a
    /// close ended it.
    pub fn group_full(&self) -> bool {
        self.group.len() >= MAX_GROUP_BATCHES || self.closing
    }

    /// Whether the queue running dry should end the group: when a flush follows and the
    /// last group was bigger, its other appenders are probably about to send again, so
    /// the shell waits for them until the returned time (the group began at `started`).
    pub fn wait_for_more(&self, started: Instant) -> Option<Instant> {
        let flushes = self.mode == CommitMode::Flushing && self.fsync == FsyncPolicy::Always;
        (flushes && !self.group_full() && self.group.len() < self.last_group)
            .then(|| started + GATHER_WAIT)
    }

    /// Ends the group: commits it once, if it has anything, and answers every appender.
    /// A successful commit's high watermark goes to `on_commit` first (to wake tailing
    /// readers), so an appender that hears back finds it announced; it is also returned.
    pub fn commit(&mut self, log: &mut impl GroupLog, on_commit: impl FnOnce(u64)) -> Option<u64> {
        self.last_group = self.group.len();
        if self.group.is_empty() {
            return None;
        }
        let committed = match &self.poisoned {
            Some(reason) => Err(StorageError::Poisoned {
                reason: reason.clone(),
            }),
            None => match self.mode {
                CommitMode::Flushing => log.commit(),
                CommitMode::Unflushed => log.commit_unflushed(),
            },
        };
        if let Err(error) = &committed
            && self.poisoned.is_none()
        {
            // The same reason the log now refuses writes with.
            self.poisoned = Some(match error {
                StorageError::Poisoned { reason } => reason.clone(),
                other => other.to_string(),
            });
        }
        if let Ok(high_watermark) = committed {
            on_commit(high_watermark);
        }
        answer(&mut self.group, &committed);
        committed.ok()
    }

    /// Whether a close was received: once the group it ended is committed, the shell
    /// refuses what is still queued ([`Request::refuse`]), closes the log and reports it
    /// with [`closed`](Self::closed).
    pub fn closing(&self) -> bool {
        self.closing
    }

    /// Answers the close, if one was asked for, with the log's close.
    pub fn closed(self, result: Result<()>) {
        if let Err(error) = &result {
            tracing::error!(%error, "closing the partition log failed");
        }
        if let Some(reply) = self.close {
            reply(result);
        }
    }

    /// How long an idle writer sleeps before it checks its housekeeping.
    pub fn idle_wake(&self) -> Duration {
        match self.fsync {
            FsyncPolicy::Interval(every) => every.min(IDLE_WAKE),
            FsyncPolicy::Always | FsyncPolicy::Never => IDLE_WAKE,
        }
    }

    /// Under fsync `interval`: whether `log` holds bytes whose flush is due at `now`. A
    /// poisoned log cannot flush; it already said so.
    pub fn flush_due(&self, log: &impl GroupLog, now: Instant) -> bool {
        match self.fsync {
            FsyncPolicy::Interval(every) if self.poisoned.is_none() => log
                .unflushed_since()
                .is_some_and(|since| now.saturating_duration_since(since) >= every),
            _ => false,
        }
    }

    /// Whether retention is due at `now`; if so, the next pass is [`RETENTION_EVERY`] later.
    pub fn retention_due(&mut self, now: Instant) -> bool {
        if now < self.next_retention {
            return false;
        }
        self.next_retention = now + RETENTION_EVERY;
        true
    }
}

/// Answers every appender of a group with its append's result, or, when the commit failed,
/// with the commit's failure for those whose append succeeded.
fn answer(group: &mut Vec<(Result<Appended>, Reply)>, committed: &Result<u64>) {
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;
    use crate::storage::batch::{BatchBuilder, Record};
    use crate::storage::{LogConfig, LogReader, WriterStats};

    /// A batch of `records` records whose values are `value_len` bytes each.
    fn batch(records: usize, value_len: usize) -> ValidatedBatch {
        let value = vec![7u8; value_len];
        let mut b = BatchBuilder::default();
        for i in 0..records {
            b.push(&Record {
                timestamp: 1_000 + i as i64,
                key: None,
                value: &value,
                headers: &[],
            });
        }
        ValidatedBatch::new(Bytes::from(b.finish()), usize::MAX).unwrap()
    }

    /// Fits [`MemLog::MAX_BATCH`]; a bad one does not.
    fn good(records: usize) -> ValidatedBatch {
        batch(records, 8)
    }
    fn bad() -> ValidatedBatch {
        batch(1, MemLog::MAX_BATCH)
    }

    /// A partition log in memory that keeps the rules the core relies on: appends take
    /// dense offsets, a batch too large for a segment is refused without taking any, and a
    /// failed commit poisons the log for every later write.
    #[derive(Default)]
    struct MemLog {
        next_offset: u64,
        high_watermark: u64,
        appends: usize,
        commits: usize,
        unflushed_commits: usize,
        fail_next_commit: bool,
        poisoned: Option<String>,
        unflushed_since: Option<Instant>,
    }

    impl MemLog {
        const MAX_BATCH: usize = 512;

        fn check_poisoned(&self) -> Result<()> {
            match &self.poisoned {
                Some(reason) => Err(StorageError::Poisoned {
                    reason: reason.clone(),
                }),
                None => Ok(()),
            }
        }
    }

    impl GroupLog for MemLog {
        fn append(&mut self, batch: ValidBatch<'_>) -> Result<Appended> {
            self.check_poisoned()?;
            if batch.bytes().len() > Self::MAX_BATCH {
                return Err(StorageError::BatchTooLarge {
                    len: batch.bytes().len(),
                    segment_bytes: Self::MAX_BATCH as u64,
                });
            }
            self.appends += 1;
            let base_offset = self.next_offset;
            self.next_offset += u64::from(batch.header().record_count);
            Ok(Appended {
                base_offset,
                last_offset: self.next_offset - 1,
            })
        }

        fn commit(&mut self) -> Result<u64> {
            self.commits += 1;
            self.check_poisoned()?;
            if std::mem::take(&mut self.fail_next_commit) {
                let error = StorageError::Io {
                    op: "flush",
                    path: "mem/00000000000000000000.log".into(),
                    cause: std::io::Error::other("injected"),
                };
                self.poisoned = Some(error.to_string());
                return Err(error);
            }
            self.high_watermark = self.next_offset;
            Ok(self.high_watermark)
        }

        fn commit_unflushed(&mut self) -> Result<u64> {
            self.unflushed_commits += 1;
            self.check_poisoned()?;
            self.high_watermark = self.next_offset;
            Ok(self.high_watermark)
        }

        fn unflushed_since(&self) -> Option<Instant> {
            self.unflushed_since
        }
    }

    /// Every answer, by request number; a second answer to one request fails the test.
    #[derive(Clone, Default)]
    struct Answers(Arc<Mutex<Vec<Option<Result<Appended>>>>>);

    impl Answers {
        fn append(&self, batch: ValidatedBatch) -> Request {
            let answers = self.0.clone();
            let id = {
                let mut answers = answers.lock().unwrap();
                answers.push(None);
                answers.len() - 1
            };
            Request::Append {
                batch,
                reply: Box::new(move |result| {
                    let slot = &mut answers.lock().unwrap()[id];
                    assert!(slot.is_none(), "request {id} answered twice");
                    *slot = Some(result);
                }),
            }
        }

        /// Each request's answer; panics if one is missing.
        fn all(&self) -> Vec<Result<Appended>> {
            std::mem::take(&mut *self.0.lock().unwrap())
                .into_iter()
                .enumerate()
                .map(|(id, answer)| answer.unwrap_or_else(|| panic!("request {id} unanswered")))
                .collect()
        }

        fn answered(&self) -> usize {
            self.0.lock().unwrap().iter().flatten().count()
        }
    }

    fn close_request() -> (Request, Arc<Mutex<Vec<Result<()>>>>) {
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        let request = Request::Close(Box::new(move |r| sink.lock().unwrap().push(r)));
        (request, got)
    }

    /// What a shell does with a queue: forms a group from what is queued, commits it, and
    /// again until the queue is empty. Returns how many requests each group took.
    fn drain(
        core: &mut WriterCore,
        log: &mut impl GroupLog,
        queue: &mut VecDeque<Request>,
    ) -> Vec<usize> {
        let mut groups = Vec::new();
        while !queue.is_empty() {
            let mut taken = 0;
            while let Some(request) = queue.pop_front() {
                core.offer(log, request);
                taken += 1;
                if core.group_full() {
                    break;
                }
            }
            core.commit(log, |_| {});
            groups.push(taken);
        }
        groups
    }

    fn core(fsync: FsyncPolicy, mode: CommitMode) -> WriterCore {
        WriterCore::new(fsync, mode, Instant::now()).unwrap()
    }

    #[test]
    fn a_group_is_bounded_and_committed_once() {
        let mut core = core(FsyncPolicy::Always, CommitMode::Flushing);
        let mut log = MemLog::default();
        let answers = Answers::default();
        let mut queue: VecDeque<_> = (0..2 * MAX_GROUP_BATCHES + 10)
            .map(|_| answers.append(good(2)))
            .collect();
        let groups = drain(&mut core, &mut log, &mut queue);
        assert_eq!(groups, [MAX_GROUP_BATCHES, MAX_GROUP_BATCHES, 10]);
        assert_eq!(log.commits, 3);
        assert_eq!(log.unflushed_commits, 0);
        for (i, answer) in answers.all().into_iter().enumerate() {
            let appended = answer.unwrap();
            assert_eq!(
                (appended.base_offset, appended.last_offset),
                (2 * i as u64, 2 * i as u64 + 1)
            );
        }
    }

    #[test]
    fn an_empty_group_commits_nothing() {
        let mut core = core(FsyncPolicy::Never, CommitMode::Unflushed);
        let mut log = MemLog::default();
        assert_eq!(core.commit(&mut log, |_| {}), None);
        assert_eq!(log.unflushed_commits, 0);
    }

    #[test]
    fn answers_wait_for_the_commit_and_carry_its_watermark() {
        let mut core = core(FsyncPolicy::Never, CommitMode::Unflushed);
        let mut log = MemLog::default();
        let answers = Answers::default();
        core.offer(&mut log, answers.append(good(3)));
        core.offer(&mut log, answers.append(good(1)));
        assert_eq!(
            answers.answered(),
            0,
            "nothing is answered before its commit"
        );
        let mut announced = None;
        let published = core.commit(&mut log, |hw| {
            assert_eq!(answers.answered(), 0, "announced before anyone is answered");
            announced = Some(hw);
        });
        assert_eq!((published, announced), (Some(4), Some(4)));
        assert_eq!(log.unflushed_commits, 1);
        assert_eq!(log.commits, 0);
        assert_eq!(answers.answered(), 2);
    }

    /// With the real log: a batch it cannot take, in the middle of a group, gets its own
    /// error; the batches around it are committed with dense offsets.
    #[test]
    fn a_bad_batch_in_a_group_is_answered_alone() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            segment_bytes: 4096,
            index_interval_bytes: 256,
            ..LogConfig::default()
        };
        let mut writer = LogWriter::open(dir.path(), config).unwrap();
        let reader: LogReader = writer.reader();
        let mut core = core(FsyncPolicy::Always, CommitMode::Flushing);
        let answers = Answers::default();
        let mut queue = VecDeque::from([
            answers.append(good(2)),
            answers.append(good(1)),
            answers.append(batch(1, 5000)),
            answers.append(good(3)),
        ]);
        assert_eq!(drain(&mut core, &mut writer, &mut queue), [4]);
        let answers = answers.all();
        let offsets = |i: usize| {
            let a: &Appended = answers[i].as_ref().unwrap();
            (a.base_offset, a.last_offset)
        };
        assert_eq!(offsets(0), (0, 1));
        assert_eq!(offsets(1), (2, 2));
        assert!(
            matches!(answers[2], Err(StorageError::BatchTooLarge { .. })),
            "{:?}",
            answers[2]
        );
        assert_eq!(offsets(3), (3, 5));
        assert_eq!(reader.high_watermark(), 6);
        assert_eq!(
            WriterStats::get(&writer.stats().flushes),
            1,
            "one flush for the group"
        );
    }

    #[test]
    fn a_failed_commit_fails_its_group_and_every_later_append() {
        let mut core = core(FsyncPolicy::Always, CommitMode::Flushing);
        let mut log = MemLog {
            fail_next_commit: true,
            ..MemLog::default()
        };
        let answers = Answers::default();
        let mut queue = VecDeque::from([
            answers.append(good(1)),
            answers.append(bad()),
            answers.append(good(1)),
        ]);
        assert_eq!(drain(&mut core, &mut log, &mut queue), [3]);
        let first = answers.all();
        assert!(
            matches!(&first[0], Err(StorageError::Poisoned { reason }) if reason.contains("injected"))
        );
        assert!(matches!(first[1], Err(StorageError::BatchTooLarge { .. })));
        assert!(matches!(&first[2], Err(StorageError::Poisoned { .. })));

        // Later groups are refused with the same reason, without reaching the log.
        let (appends, commits) = (log.appends, log.commits);
        core.offer(&mut log, answers.append(good(1)));
        core.offer(&mut log, answers.append(good(1)));
        assert_eq!(core.commit(&mut log, |_| {}), None);
        assert_eq!((log.appends, log.commits), (appends, commits));
        let reason = log.poisoned.clone().unwrap();
        for answer in answers.all() {
            assert!(
                matches!(&answer, Err(StorageError::Poisoned { reason: r }) if *r == reason),
                "{answer:?}"
            );
        }
        assert!(
            !core.flush_due(&log, Instant::now() + Duration::from_secs(3600)),
            "a poisoned log is not flushed"
        );
    }

    #[test]
    fn a_close_ends_the_group_and_refuses_what_follows() {
        let mut core = core(FsyncPolicy::Never, CommitMode::Unflushed);
        let mut log = MemLog::default();
        let answers = Answers::default();
        let (close, closed) = close_request();
        let (second_close, second_closed) = close_request();
        core.offer(&mut log, answers.append(good(1)));
        core.offer(&mut log, answers.append(good(1)));
        assert!(!core.closing());
        core.offer(&mut log, close);
        assert!(core.closing() && core.group_full());
        // What raced in behind the close is refused at once and never appended.
        core.offer(&mut log, answers.append(good(1)));
        core.offer(&mut log, second_close);
        assert_eq!(log.appends, 2);
        assert!(matches!(second_closed.lock().unwrap()[..], [Ok(())]));
        assert_eq!(core.commit(&mut log, |_| {}), Some(2));
        let got = answers.all();
        assert_eq!(got[0].as_ref().unwrap().base_offset, 0);
        assert_eq!(got[1].as_ref().unwrap().base_offset, 1);
        assert!(matches!(got[2], Err(StorageError::WriterStopped)));
        assert!(
            closed.lock().unwrap().is_empty(),
            "answered by the log's close"
        );
        core.closed(Err(StorageError::Poisoned {
            reason: "flush failed".into(),
        }));
        assert!(matches!(
            closed.lock().unwrap()[..],
            [Err(StorageError::Poisoned { .. })]
        ));
    }

    #[test]
    fn refusing_a_request_answers_it() {
        let answers = Answers::default();
        answers.append(good(1)).refuse();
        assert!(matches!(
            answers.all()[..],
            [Err(StorageError::WriterStopped)]
        ));
        let (close, closed) = close_request();
        close.refuse();
        assert!(matches!(closed.lock().unwrap()[..], [Ok(())]));
    }

    #[test]
    fn a_writer_task_cannot_serve_fsync_always() {
        let refused = WriterCore::new(FsyncPolicy::Always, CommitMode::Unflushed, Instant::now());
        assert!(matches!(refused, Err(StorageError::InvalidConfig(_))));
    }

    /// Only a flushing commit under `always` waits for a smaller group to fill up, and only
    /// until the gather wait from the group's start.
    #[test]
    fn waits_for_a_group_only_when_a_flush_follows() {
        let started = Instant::now();
        let mut log = MemLog::default();
        let answers = Answers::default();
        let mut waits = |fsync, mode| {
            let mut core = core(fsync, mode);
            for _ in 0..4 {
                core.offer(&mut log, answers.append(good(1)));
            }
            core.commit(&mut log, |_| {});
            core.offer(&mut log, answers.append(good(1)));
            let smaller = core.wait_for_more(started);
            for _ in 0..3 {
                core.offer(&mut log, answers.append(good(1)));
            }
            assert_eq!(core.wait_for_more(started), None, "as big as the last one");
            smaller
        };
        assert_eq!(
            waits(FsyncPolicy::Always, CommitMode::Flushing),
            Some(started + GATHER_WAIT)
        );
        assert_eq!(waits(FsyncPolicy::Never, CommitMode::Flushing), None);
        assert_eq!(waits(FsyncPolicy::Never, CommitMode::Unflushed), None);
        let interval = FsyncPolicy::Interval(Duration::from_millis(5));
        assert_eq!(waits(interval, CommitMode::Unflushed), None);
    }

    #[test]
    fn retention_is_due_every_period_of_the_clock_passed_in() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut core = WriterCore::new(FsyncPolicy::Never, CommitMode::Unflushed, t0).unwrap();
        assert!(!core.retention_due(at(0)));
        assert!(!core.retention_due(at(9_999)));
        assert!(core.retention_due(at(10_000)));
        assert!(!core.retention_due(at(10_001)));
        assert!(!core.retention_due(at(19_999)));
        // Late by 5 s: the next is counted from when it ran.
        assert!(core.retention_due(at(25_000)));
        assert!(!core.retention_due(at(34_999)));
        assert!(core.retention_due(at(35_000)));
    }

    #[test]
    fn the_interval_flush_is_due_an_interval_after_the_last_flush() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let every = Duration::from_millis(50);
        let core =
            WriterCore::new(FsyncPolicy::Interval(every), CommitMode::Unflushed, t0).unwrap();
        let mut log = MemLog::default();
        assert!(!core.flush_due(&log, at(1_000)), "nothing unflushed");
        log.unflushed_since = Some(at(100));
        assert!(!core.flush_due(&log, at(149)));
        assert!(core.flush_due(&log, at(150)));
        // A clock that reads earlier than the log's last flush is not a due flush.
        assert!(!core.flush_due(&log, at(0)));
        for fsync in [FsyncPolicy::Never, FsyncPolicy::Always] {
            let core = WriterCore::new(fsync, CommitMode::Flushing, t0).unwrap();
            assert!(!core.flush_due(&log, at(1_000_000)));
        }
    }

    #[test]
    fn an_idle_writer_wakes_at_least_once_per_interval() {
        let now = Instant::now();
        let idle = |fsync| {
            WriterCore::new(fsync, CommitMode::Flushing, now)
                .unwrap()
                .idle_wake()
        };
        assert_eq!(idle(FsyncPolicy::Always), IDLE_WAKE);
        assert_eq!(idle(FsyncPolicy::Never), IDLE_WAKE);
        let short = Duration::from_millis(20);
        assert_eq!(idle(FsyncPolicy::Interval(short)), short);
        assert_eq!(idle(FsyncPolicy::Interval(IDLE_WAKE * 5)), IDLE_WAKE);
    }

    /// The real log reports unflushed bytes from an append until a flush.
    #[test]
    fn the_log_reports_what_waits_for_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            segment_bytes: 1 << 16,
            fsync: FsyncPolicy::Interval(Duration::from_secs(3600)),
            ..LogConfig::default()
        };
        let mut writer = LogWriter::open(dir.path(), config).unwrap();
        assert_eq!(GroupLog::unflushed_since(&writer), None);
        GroupLog::append(&mut writer, good(1).as_valid()).unwrap();
        assert_eq!(GroupLog::commit_unflushed(&mut writer).unwrap(), 1);
        let since = GroupLog::unflushed_since(&writer).expect("an append waits for a flush");
        let core = WriterCore::new(writer.config().fsync, CommitMode::Unflushed, since).unwrap();
        assert!(!core.flush_due(&writer, since + Duration::from_secs(3599)));
        assert!(core.flush_due(&writer, since + Duration::from_secs(3600)));
        writer.flush().unwrap();
        assert_eq!(GroupLog::unflushed_since(&writer), None);
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// This many appends queued, each of `records` records; every `bad_every`-th too
        /// large for the log (none if zero).
        Appends {
            count: usize,
            records: usize,
            bad_every: usize,
        },
        Close,
        /// The writer takes what is queued, a group at a time.
        Drain,
        FailNextCommit,
        /// The clock moves on and the writer checks its housekeeping.
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1usize..40, 1usize..4, 0usize..5).prop_map(|(count, records, bad_every)| {
                Op::Appends { count, records, bad_every }
            }),
            1 => (MAX_GROUP_BATCHES - 20..MAX_GROUP_BATCHES + 300)
                .prop_map(|count| Op::Appends { count, records: 1, bad_every: 0 }),
            3 => Just(Op::Drain),
            1 => Just(Op::FailNextCommit),
            1 => Just(Op::Close),
            2 => (0u64..15_000).prop_map(Op::Advance),
        ]
    }

    /// What a request should be answered.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Expect {
        Ok { base: u64, last: u64 },
        TooLarge,
        Poisoned,
        Stopped,
    }

    fn expect(answer: &Result<Appended>) -> Expect {
        match answer {
            Ok(a) => Expect::Ok {
                base: a.base_offset,
                last: a.last_offset,
            },
            Err(StorageError::BatchTooLarge { .. }) => Expect::TooLarge,
            Err(StorageError::Poisoned { .. }) => Expect::Poisoned,
            Err(StorageError::WriterStopped) => Expect::Stopped,
            Err(other) => panic!("unexpected answer {other:?}"),
        }
    }

    /// What the writer should do with the requests it is handed, one group at a time.
    #[derive(Default)]
    struct Model {
        /// Each queued append's size and whether the log refuses it; `None` for a close.
        queued: VecDeque<Option<(u64, bool)>>,
        /// What each append should be answered, in the order queued.
        expected: Vec<Expect>,
        next_offset: u64,
        poisoned: bool,
        closing: bool,
        fail_next_commit: bool,
        commits: usize,
    }

    impl Model {
        /// The writer took the next `taken` queued requests as one group and published
        /// `published`.
        fn group(&mut self, taken: usize, published: Option<u64>) -> Result<(), TestCaseError> {
            let mut in_group = 0;
            let mut good = Vec::new();
            for queued in self.queued.drain(..taken) {
                let Some((records, bad)) = queued else {
                    self.closing = true;
                    continue;
                };
                let expect = if self.closing {
                    Expect::Stopped
                } else if self.poisoned {
                    Expect::Poisoned
                } else if bad {
                    Expect::TooLarge
                } else {
                    good.push(self.expected.len());
                    let (base, last) = (self.next_offset, self.next_offset + records - 1);
                    self.next_offset += records;
                    Expect::Ok { base, last }
                };
                in_group += usize::from(expect != Expect::Stopped);
                self.expected.push(expect);
            }
            prop_assert!(in_group <= MAX_GROUP_BATCHES);
            prop_assert!(
                in_group == MAX_GROUP_BATCHES || self.closing || self.queued.is_empty(),
                "a group of {} ended with more queued",
                in_group
            );
            let mut expect_published = None;
            if in_group > 0 && !self.poisoned {
                self.commits += 1;
                if std::mem::take(&mut self.fail_next_commit) {
                    self.poisoned = true;
                    for i in good {
                        self.expected[i] = Expect::Poisoned;
                    }
                } else {
                    expect_published = Some(self.next_offset);
                }
            }
            prop_assert_eq!(published, expect_published);
            Ok(())
        }
    }

    /// Like [`drain`], reporting each group and what its commit published to the model.
    fn drain_checked(
        core: &mut WriterCore,
        log: &mut MemLog,
        queue: &mut VecDeque<Request>,
        model: &mut Model,
    ) -> Result<(), TestCaseError> {
        while !queue.is_empty() {
            let mut taken = 0;
            while let Some(request) = queue.pop_front() {
                core.offer(log, request);
                taken += 1;
                if core.group_full() {
                    break;
                }
            }
            let published = core.commit(log, |_| {});
            model.group(taken, published)?;
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Against a model of what each appender must hear, over random queues, closes,
        /// commit failures and clock steps: every request answered once, groups bounded
        /// and committed once each, offsets dense, and retention on time.
        #[test]
        fn answers_groups_and_housekeeping_follow_the_model(
            ops in proptest::collection::vec(op(), 1..40),
        ) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut last_retention = t0;
            let mut core = WriterCore::new(FsyncPolicy::Always, CommitMode::Flushing, t0).unwrap();
            let mut log = MemLog::default();
            let answers = Answers::default();
            let mut queue = VecDeque::new();
            let mut model = Model::default();
            for op in ops {
                match op {
                    Op::Appends { count, records, bad_every } => {
                        for i in 0..count {
                            let too_large = bad_every > 0 && i % bad_every == bad_every - 1;
                            queue.push_back(answers.append(if too_large { bad() } else { good(records) }));
                            model.queued.push_back(Some((records as u64, too_large)));
                        }
                    }
                    Op::Close => {
                        queue.push_back(close_request().0);
                        model.queued.push_back(None);
                    }
                    Op::Drain => drain_checked(&mut core, &mut log, &mut queue, &mut model)?,
                    Op::FailNextCommit => {
                        log.fail_next_commit = true;
                        model.fail_next_commit = true;
                    }
                    Op::Advance(ms) => {
                        now += Duration::from_millis(ms);
                        let due = core.retention_due(now);
                        prop_assert_eq!(due, now >= last_retention + RETENTION_EVERY);
                        if due {
                            last_retention = now;
                        }
                    }
                }
            }
            drain_checked(&mut core, &mut log, &mut queue, &mut model)?;
            let got: Vec<Expect> = answers.all().iter().map(expect).collect();
            prop_assert_eq!(got, model.expected);
            prop_assert_eq!(log.commits, model.commits);
        }
    }
}
