//! Model-based property test of the storage engine.
//!
//! Random operations run against the real partition log (`LogWriter`/`LogReader`) and
//! against a small in-memory model: the records (offset, timestamp, key, value, headers),
//! the high watermark, and the segment layout (a batch goes into the active segment if it
//! fits, else a new segment starts at the batch's base offset). After every step the log's
//! watermark, start offset, segment count and size must match the model; reads, timestamp
//! lookups and retention are checked against it; clean closes and crash-like drops are
//! followed by a reopen that must give back everything committed.
//!
//! Segments are tiny (4–16 KiB) and index intervals small, so rolls and index lookups
//! happen all the time. 128 cases by default (a few seconds); `PROPTEST_CASES=4000` makes a
//! deeper run. Failures are not persisted: the report prints the minimal case. Cases the
//! model found are also kept as plain tests at the end of the file.

use std::time::Duration;

use herald_broker::storage::batch::{self, BatchBuilder, Record};
use herald_broker::storage::{FsyncPolicy, LogConfig, LogReader, LogWriter, StorageError};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;

const CLOCK_START: i64 = 1_700_000_000_000;

type Headers = Vec<(String, Vec<u8>)>;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rec {
    offset: u64,
    timestamp: i64,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    headers: Headers,
}

/// A record to append; its timestamp is the model clock plus `ts_step` (mostly forward,
/// sometimes backwards).
#[derive(Clone)]
struct RecSpec {
    ts_step: i64,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    headers: Headers,
}

/// One line per record, lengths instead of bytes: a failing case stays readable.
impl std::fmt::Debug for RecSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<_> = self.headers.iter().map(|(n, v)| (n, v.len())).collect();
        write!(
            f,
            "RecSpec(ts_step {}, key {:?}, value {} bytes, headers {:?})",
            self.ts_step,
            self.key.as_ref().map(Vec::len),
            self.value.len(),
            headers
        )
    }
}

#[derive(Debug, Clone)]
enum TsPick {
    /// Near the timestamp of an existing (possibly deleted) record.
    NearRecord(Index, i64),
    /// Relative to the model clock (the newest timestamp handed out).
    NearClock(i64),
}

#[derive(Debug, Clone)]
enum Op {
    Append {
        records: Vec<RecSpec>,
        commit: bool,
    },
    Commit,
    Flush,
    Tick,
    Read {
        at: Index,
        budget: usize,
    },
    OffsetForTimestamp(TsPick),
    Retention {
        now_delta: i64,
    },
    /// Close (or crash), then open again with new retention settings and, sometimes, a new
    /// segment size or index interval (existing segments keep their size).
    Reopen {
        clean: bool,
        retention_ms: Option<u64>,
        retention_bytes: Option<u64>,
        segment_bytes: Option<u64>,
        index_interval_bytes: Option<u64>,
    },
}

#[derive(Debug, Clone)]
struct Case {
    segment_bytes: u64,
    index_interval_bytes: u64,
    fsync: FsyncPolicy,
    retention_ms: Option<u64>,
    retention_bytes: Option<u64>,
    ops: Vec<Op>,
}

fn rec_spec(max_value: usize) -> impl Strategy<Value = RecSpec> {
    let name = vec(b'a'..=b'z', 0..6).prop_map(|b| String::from_utf8(b).expect("ascii"));
    (
        prop_oneof![9 => 0i64..40, 1 => -4000i64..0],
        proptest::option::weighted(0.7, vec(any::<u8>(), 0..24)),
        vec(any::<u8>(), 0..max_value),
        vec((name, vec(any::<u8>(), 0..8)), 0..3),
    )
        .prop_map(|(ts_step, key, value, headers)| RecSpec {
            ts_step,
            key,
            value,
            headers,
        })
}

fn retention_ms() -> impl Strategy<Value = Option<u64>> {
    proptest::option::weighted(0.5, 0u64..8_000)
}

fn retention_bytes() -> impl Strategy<Value = Option<u64>> {
    proptest::option::weighted(0.5, 0u64..60_000)
}

/// `small`: batches of a few tiny records, so that a segment holds many of them and its
/// indexes fill up.
fn op(small: bool) -> impl Strategy<Value = Op> {
    let (max_records, max_value) = if small { (4, 24) } else { (20, 300) };
    prop_oneof![
        10 => (vec(rec_spec(max_value), 1..max_records), proptest::bool::weighted(0.75))
            .prop_map(|(records, commit)| Op::Append { records, commit }),
        2 => Just(Op::Commit),
        1 => Just(Op::Flush),
        1 => Just(Op::Tick),
        5 => (any::<Index>(), prop_oneof![0usize..300, 300usize..6_000, 6_000usize..40_000])
            .prop_map(|(at, budget)| Op::Read { at, budget }),
        3 => prop_oneof![
            (any::<Index>(), -2i64..=2).prop_map(|(i, d)| TsPick::NearRecord(i, d)),
            (-8_000i64..200).prop_map(TsPick::NearClock),
        ]
        .prop_map(Op::OffsetForTimestamp),
        2 => (-3_000i64..8_000).prop_map(|now_delta| Op::Retention { now_delta }),
        2 => (
            any::<bool>(),
            retention_ms(),
            retention_bytes(),
            proptest::option::weighted(0.25, 4096u64..=16_384),
            proptest::option::weighted(0.25, 8u64..2_048),
        )
            .prop_map(
                |(clean, retention_ms, retention_bytes, segment_bytes, index_interval_bytes)| {
                    Op::Reopen {
                        clean,
                        retention_ms,
                        retention_bytes,
                        segment_bytes,
                        index_interval_bytes,
                    }
                }
            ),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    proptest::bool::weighted(0.25).prop_flat_map(|small| {
        (
            4096u64..=16_384,
            prop_oneof![8u64..128, 128u64..2_048],
            prop_oneof![
                6 => Just(FsyncPolicy::Never),
                1 => Just(FsyncPolicy::Always),
                1 => (1u64..5).prop_map(|ms| FsyncPolicy::Interval(Duration::from_millis(ms))),
            ],
            proptest::option::weighted(0.2, 0u64..8_000),
            proptest::option::weighted(0.2, 0u64..60_000),
            vec(op(small), 1..48),
        )
            .prop_map(
                |(segment_bytes, interval, fsync, retention_ms, retention_bytes, ops)| Case {
                    segment_bytes,
                    index_interval_bytes: interval.min(segment_bytes),
                    fsync,
                    retention_ms,
                    retention_bytes,
                    ops,
                },
            )
    })
}

/// Where a batch sits: which bytes of its segment, which offsets.
#[derive(Debug, Clone, Copy)]
struct BatchLoc {
    position: u64,
    len: u64,
    base: u64,
    count: u64,
}

impl BatchLoc {
    fn end(&self) -> u64 {
        self.position + self.len
    }
    fn next_offset(&self) -> u64 {
        self.base + self.count
    }
}

#[derive(Debug)]
struct Seg {
    base: u64,
    /// The most the segment may hold: the configured size when it was made, or when the log
    /// was last opened, whichever is larger.
    capacity: u64,
    /// Length of the segment file. The segments of this model are smaller than a new
    /// segment's first allocation (1 MiB), so their file is allocated whole when made.
    file: u64,
    batches: Vec<BatchLoc>,
    /// Bytes written into the segment, committed or not.
    used: u64,
    /// Bytes the log has published for the segment (what `size_bytes` counts).
    committed: u64,
}

impl Seg {
    fn new(base: u64, capacity: u64) -> Seg {
        Seg {
            base,
            capacity,
            file: capacity,
            batches: Vec::new(),
            used: 0,
            committed: 0,
        }
    }
}

/// What the log should hold.
#[derive(Debug)]
struct Model {
    /// The configured segment size: the largest batch accepted, the size of new segments.
    segment_bytes: u64,
    /// Every record ever appended: `records[o].offset == o`. Those below `start` are gone.
    records: Vec<Rec>,
    start: u64,
    hw: u64,
    segs: Vec<Seg>,
    /// The newest timestamp handed out (timestamps also step backwards now and then).
    clock: i64,
}

impl Model {
    fn new(segment_bytes: u64) -> Model {
        Model {
            segment_bytes,
            records: Vec::new(),
            start: 0,
            hw: 0,
            segs: vec![Seg::new(0, segment_bytes)],
            clock: CLOCK_START,
        }
    }

    fn next(&self) -> u64 {
        self.records.len() as u64
    }

    fn active(&mut self) -> &mut Seg {
        self.segs.last_mut().expect("always an active segment")
    }

    /// Whether a batch of `len` bytes is refused as too large: larger than a segment, or
    /// larger than an empty active segment made under a smaller configured size.
    fn too_large(&self, len: u64) -> bool {
        let active = self.segs.last().expect("active");
        len > self.segment_bytes || (active.used == 0 && len > active.capacity)
    }

    /// Places a batch of `len` bytes holding `recs`, rolling first if it does not fit.
    fn append(&mut self, recs: Vec<Rec>, len: u64) {
        let active = self.segs.last().expect("active");
        if active.used + len > active.capacity {
            // A roll publishes the sealed segment's whole length.
            let (next, capacity) = (self.next(), self.segment_bytes);
            let old = self.active();
            old.committed = old.used;
            self.segs.push(Seg::new(next, capacity));
        }
        let base = self.next();
        let count = recs.len() as u64;
        let active = self.active();
        // Every append keeps the file allocated at least half a megabyte ahead (in steps of
        // 1 MiB, at most the capacity), before the writer is gone.
        active.file = active.capacity;
        active.batches.push(BatchLoc {
            position: active.used,
            len,
            base,
            count,
        });
        active.used += len;
        self.records.extend(recs);
    }

    fn commit(&mut self) {
        if self.hw != self.next() {
            self.publish();
        }
    }

    fn publish(&mut self) {
        let active = self.active();
        active.committed = active.used;
        self.hw = self.next();
    }

    /// After a reopen everything written is committed (a crash here keeps the page cache).
    fn reopened(&mut self) {
        for seg in &mut self.segs {
            seg.committed = seg.used;
        }
        // The active segment is mapped at the configured size and grows into it; a file
        // larger than that (made under a larger size) keeps its length.
        let segment_bytes = self.segment_bytes;
        let active = self.active();
        active.capacity = active.file.max(segment_bytes);
        self.hw = self.next();
    }

    fn size(&self) -> u64 {
        self.segs.iter().map(|s| s.committed).sum()
    }

    fn seg_max_timestamp(&self, seg: &Seg) -> i64 {
        seg.batches
            .iter()
            .flat_map(|b| &self.records[b.base as usize..b.next_offset() as usize])
            .map(|r| r.timestamp)
            .max()
            .unwrap_or(i64::MIN)
    }

    /// Closed segments go oldest first while the oldest is too old or the log too big; the
    /// active one stays. Returns (segments deleted, bytes deleted).
    ///
    /// A closed segment may hold appends not yet committed (a roll seals everything written);
    /// retention deletes them like the rest, and the log then starts above its watermark
    /// until the next commit. The committer never runs retention with uncommitted appends.
    fn retention(&mut self, ms: Option<u64>, bytes: Option<u64>, now: i64) -> (usize, u64) {
        let mut total = self.size();
        let mut doomed = 0;
        let mut deleted_bytes = 0;
        for seg in &self.segs[..self.segs.len() - 1] {
            let too_old = ms.is_some_and(|ms| {
                self.seg_max_timestamp(seg) < now.saturating_sub(ms.min(i64::MAX as u64) as i64)
            });
            let too_big = bytes.is_some_and(|max| total > max);
            if !(too_old || too_big) {
                break;
            }
            total -= seg.committed;
            deleted_bytes += seg.committed;
            doomed += 1;
        }
        self.segs.drain(..doomed);
        self.start = self.segs[0].base;
        (doomed, deleted_bytes)
    }

    fn offset_for_timestamp(&self, ts: i64) -> Option<u64> {
        let retained = self.records.get(self.start as usize..self.hw as usize)?;
        retained
            .iter()
            .find(|r| r.timestamp >= ts)
            .map(|r| r.offset)
    }

    /// The whole-batch run a read of `offset` with `budget` must return: (base offset of the
    /// first batch, offset after the last, bytes).
    fn expected_read(&self, offset: u64, budget: u64) -> (u64, u64, u64) {
        let seg = self
            .segs
            .iter()
            .rev()
            .find(|s| s.base <= offset)
            .expect("offset within the log");
        let i = seg
            .batches
            .iter()
            .position(|b| b.base <= offset && offset < b.next_offset())
            .expect("offset in a batch of its segment");
        let first = seg.batches[i];
        let (mut to, mut next) = (first.end(), first.next_offset());
        for b in &seg.batches[i + 1..] {
            if b.position >= seg.committed || b.base >= self.hw || b.end() - first.position > budget
            {
                break;
            }
            to = b.end();
            next = b.next_offset();
        }
        (first.base, next, to - first.position)
    }
}

fn encode(records: &[Rec]) -> Vec<u8> {
    let mut builder = BatchBuilder::default();
    for r in records {
        let headers: Vec<(&str, &[u8])> = r
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        builder.push(&Record {
            timestamp: r.timestamp,
            key: r.key.as_deref(),
            value: &r.value,
            headers: &headers,
        });
    }
    builder.finish()
}

/// Decodes a read's bytes into its records, checking that they are whole, well-formed
/// batches with consecutive offsets.
fn decode(bytes: &[u8]) -> Result<Vec<Rec>, TestCaseError> {
    let mut out: Vec<Rec> = Vec::new();
    for view in batch::batches(bytes) {
        let view =
            view.map_err(|e| TestCaseError::fail(format!("read returned a bad batch: {e}")))?;
        let mut n = 0u64;
        for r in view.records() {
            let r =
                r.map_err(|e| TestCaseError::fail(format!("read returned a bad record: {e}")))?;
            prop_assert_eq!(r.offset, view.header.base_offset + n);
            if let Some(prev) = out.last() {
                prop_assert_eq!(r.offset, prev.offset + 1, "offsets must be consecutive");
            }
            out.push(Rec {
                offset: r.offset,
                timestamp: r.timestamp,
                key: r.key.map(<[u8]>::to_vec),
                value: r.value.to_vec(),
                headers: r
                    .headers()
                    .map(|(n, v)| (n.to_owned(), v.to_vec()))
                    .collect(),
            });
            n += 1;
        }
        prop_assert_eq!(n, u64::from(view.header.record_count));
    }
    Ok(out)
}

struct Harness {
    dir: tempfile::TempDir,
    config: LogConfig,
    writer: Option<LogWriter>,
    reader: LogReader,
    model: Model,
}

impl Harness {
    fn writer(&mut self) -> &mut LogWriter {
        self.writer.as_mut().expect("writer is open")
    }

    /// Cheap checks, after every step.
    fn check_state(&mut self) -> Result<(), TestCaseError> {
        let (next, hw, start, segs, size) = (
            self.model.next(),
            self.model.hw,
            self.model.start,
            self.model.segs.len(),
            self.model.size(),
        );
        let w = self.writer();
        prop_assert_eq!(w.next_offset(), next, "next offset");
        prop_assert_eq!(w.high_watermark(), hw, "writer high watermark");
        let r = &self.reader;
        prop_assert_eq!(r.high_watermark(), hw, "reader high watermark");
        prop_assert_eq!(r.start_offset(), start, "start offset");
        prop_assert_eq!(r.segment_count(), segs, "segment count");
        prop_assert_eq!(r.size_bytes(), size, "size in bytes");
        Ok(())
    }

    /// Reads from `offset` to the watermark, `budget` bytes a time, checking every chunk
    /// against the model; returns the records at and after `offset`.
    fn read_from(&self, offset: u64, budget: usize) -> Result<Vec<Rec>, TestCaseError> {
        let m = &self.model;
        let mut out = Vec::new();
        let mut at = offset;
        loop {
            let chunk = match self.reader.read(at, budget) {
                Ok(Some(chunk)) => chunk,
                Ok(None) => {
                    prop_assert_eq!(at, m.hw, "read returned nothing below the watermark");
                    break;
                }
                Err(e) => return Err(TestCaseError::fail(format!("read({at}) failed: {e}"))),
            };
            prop_assert!(
                at < m.hw,
                "read({}) at/after the watermark {} returned data",
                at,
                m.hw
            );
            prop_assert_eq!(chunk.high_watermark, m.hw);
            let (base, next, len) = m.expected_read(at, budget as u64);
            prop_assert_eq!(
                chunk.base_offset,
                base,
                "chunk base offset for read({})",
                at
            );
            prop_assert_eq!(
                chunk.next_offset,
                next,
                "chunk next offset for read({})",
                at
            );
            prop_assert_eq!(
                chunk.bytes.len() as u64,
                len,
                "chunk length for read({}, {})",
                at,
                budget
            );
            prop_assert!(
                chunk.bytes.len() <= budget || batch::batches(&chunk.bytes).count() == 1,
                "a read over budget must be a single batch"
            );
            let recs = decode(&chunk.bytes)?;
            prop_assert_eq!(recs.first().map(|r| r.offset), Some(base));
            prop_assert_eq!(recs.last().map(|r| r.offset + 1), Some(next));
            for r in &recs {
                prop_assert_eq!(r, &m.records[r.offset as usize]);
            }
            out.extend(recs.into_iter().filter(|r| r.offset >= at));
            prop_assert!(chunk.next_offset > at, "reads must make progress");
            at = chunk.next_offset;
        }
        Ok(out)
    }

    /// Everything retained and committed reads back exactly as the model has it.
    fn check_all(&self) -> Result<(), TestCaseError> {
        let m = &self.model;
        if m.start > m.hw {
            // Retention may remove appends that were never committed (see `Model::retention`):
            // then nothing is readable until the next commit.
            return Ok(());
        }
        let got = self.read_from(m.start, 1 << 20)?;
        let want = m
            .records
            .get(m.start as usize..m.hw as usize)
            .unwrap_or(&[]);
        prop_assert_eq!(got.len(), want.len(), "number of records read back");
        prop_assert!(got == want, "records read back differ from the model");
        Ok(())
    }

    fn reopen(&mut self, clean: bool) -> Result<(), TestCaseError> {
        let writer = self.writer.take().expect("writer is open");
        if clean {
            writer
                .close()
                .map_err(|e| TestCaseError::fail(format!("close failed: {e}")))?;
        } else {
            // A crash: no flush, no clean checkpoint; the page cache keeps what was written.
            drop(writer);
        }
        let writer = LogWriter::open(self.dir.path(), self.config.clone())
            .map_err(|e| TestCaseError::fail(format!("reopen (clean: {clean}) failed: {e}")))?;
        self.reader = writer.reader();
        self.writer = Some(writer);
        self.model.reopened();
        Ok(())
    }

    fn step(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Append { records, commit } => {
                let base = self.model.next();
                let mut clock = self.model.clock;
                let recs: Vec<Rec> = records
                    .into_iter()
                    .enumerate()
                    .map(|(i, spec)| {
                        clock += spec.ts_step;
                        Rec {
                            offset: base + i as u64,
                            timestamp: clock,
                            key: spec.key,
                            value: spec.value,
                            headers: spec.headers,
                        }
                    })
                    .collect();
                let bytes = encode(&recs);
                let valid = batch::validate(&bytes, usize::MAX)
                    .map_err(|e| TestCaseError::fail(format!("built an invalid batch: {e}")))?;
                let len = bytes.len() as u64;
                let hw_before = self.model.hw;
                let result = self.writer().append(valid);
                if self.model.too_large(len) {
                    prop_assert!(
                        matches!(result, Err(StorageError::BatchTooLarge { len: l, .. }) if l as u64 == len),
                        "a {}-byte batch must be refused by {}-byte segments: {:?}",
                        len,
                        self.model.segment_bytes,
                        result.map(|a| a.base_offset)
                    );
                    return Ok(());
                }
                let appended =
                    result.map_err(|e| TestCaseError::fail(format!("append failed: {e}")))?;
                prop_assert_eq!(appended.base_offset, base);
                prop_assert_eq!(appended.last_offset, base + recs.len() as u64 - 1);
                self.model.clock = clock;
                self.model.append(recs, len);
                prop_assert_eq!(
                    self.reader.high_watermark(),
                    hw_before,
                    "an append is not readable before its commit"
                );
                if commit {
                    let hw = self
                        .writer()
                        .commit()
                        .map_err(|e| TestCaseError::fail(format!("commit failed: {e}")))?;
                    self.model.commit();
                    prop_assert_eq!(hw, self.model.hw);
                }
            }
            Op::Commit => {
                let hw = self
                    .writer()
                    .commit()
                    .map_err(|e| TestCaseError::fail(format!("commit failed: {e}")))?;
                self.model.commit();
                prop_assert_eq!(hw, self.model.hw);
            }
            Op::Flush => {
                self.writer()
                    .flush()
                    .map_err(|e| TestCaseError::fail(format!("flush failed: {e}")))?;
                self.model.publish();
            }
            Op::Tick => {
                self.writer()
                    .tick()
                    .map_err(|e| TestCaseError::fail(format!("tick failed: {e}")))?;
            }
            Op::Read { at, budget } => {
                let (start, hw) = (self.model.start, self.model.hw);
                let lo = start.min(hw).saturating_sub(3);
                let offset = lo + at.index((start.max(hw) + 3 - lo) as usize) as u64;
                match self.reader.read(offset, budget) {
                    Err(StorageError::OffsetOutOfRange {
                        offset: o,
                        start: s,
                        end,
                    }) => {
                        prop_assert!(
                            offset > hw || offset < start,
                            "read({}) refused within {}..{}",
                            offset,
                            start,
                            hw
                        );
                        prop_assert_eq!((o, s, end), (offset, start, hw));
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("read({offset}): {e}"))),
                    Ok(_) if offset > hw || offset < start => {
                        return Err(TestCaseError::fail(format!(
                            "read({offset}) outside {start}..={hw} was not refused"
                        )));
                    }
                    Ok(_) => {
                        let got = self.read_from(offset, budget)?;
                        let want = &self.model.records[offset as usize..hw as usize];
                        prop_assert!(
                            got == want,
                            "records read from {} differ from the model",
                            offset
                        );
                    }
                }
            }
            Op::OffsetForTimestamp(pick) => {
                let ts = match pick {
                    TsPick::NearRecord(i, d) if !self.model.records.is_empty() => {
                        self.model.records[i.index(self.model.records.len())].timestamp + d
                    }
                    TsPick::NearRecord(_, d) => self.model.clock + d,
                    TsPick::NearClock(d) => self.model.clock + d,
                };
                let got = self
                    .reader
                    .offset_for_timestamp(ts)
                    .map_err(|e| TestCaseError::fail(format!("offset_for_timestamp: {e}")))?;
                prop_assert_eq!(
                    got,
                    self.model.offset_for_timestamp(ts),
                    "offset_for_timestamp({})",
                    ts
                );
            }
            Op::Retention { now_delta } => {
                let now = self.model.clock + now_delta;
                let (ms, max_bytes) = (self.config.retention_ms, self.config.retention_bytes);
                let start_before = self.reader.start_offset();
                let outcome = self
                    .writer()
                    .enforce_retention(now)
                    .map_err(|e| TestCaseError::fail(format!("retention failed: {e}")))?;
                // What must hold whatever segments the pass chose.
                let r = &self.reader;
                prop_assert!(r.start_offset() >= start_before, "start offset went back");
                prop_assert_eq!(outcome.start_offset, r.start_offset());
                if let Some(max) = max_bytes {
                    prop_assert!(
                        r.size_bytes() <= max || r.segment_count() == 1,
                        "{} bytes in {} segments exceed retention of {} bytes",
                        r.size_bytes(),
                        r.segment_count(),
                        max
                    );
                }
                // And exactly what the oldest-first rule deletes.
                let (doomed, bytes) = self.model.retention(ms, max_bytes, now);
                prop_assert_eq!(outcome.segments_deleted, doomed, "segments deleted");
                prop_assert_eq!(outcome.bytes_deleted, bytes, "bytes deleted");
                prop_assert_eq!(outcome.start_offset, self.model.start);
                self.check_state()?;
                self.check_all()?;
            }
            Op::Reopen {
                clean,
                retention_ms,
                retention_bytes,
                segment_bytes,
                index_interval_bytes,
            } => {
                self.config.retention_ms = retention_ms;
                self.config.retention_bytes = retention_bytes;
                if let Some(bytes) = segment_bytes {
                    self.config.segment_bytes = bytes;
                    self.model.segment_bytes = bytes;
                }
                if let Some(interval) = index_interval_bytes {
                    self.config.index_interval_bytes = interval;
                }
                self.config.index_interval_bytes = self
                    .config
                    .index_interval_bytes
                    .min(self.config.segment_bytes);
                self.reopen(clean)?;
                self.check_state()?;
                self.check_all()?;
            }
        }
        Ok(())
    }
}

fn run(case: Case) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let config = LogConfig {
        segment_bytes: case.segment_bytes,
        index_interval_bytes: case.index_interval_bytes,
        fsync: case.fsync,
        retention_ms: case.retention_ms,
        retention_bytes: case.retention_bytes,
        ..LogConfig::default()
    };
    let writer = LogWriter::open(dir.path(), config.clone())
        .map_err(|e| TestCaseError::fail(format!("open failed: {e}")))?;
    let mut h = Harness {
        reader: writer.reader(),
        writer: Some(writer),
        dir,
        config,
        model: Model::new(case.segment_bytes),
    };
    for (i, op) in case.ops.into_iter().enumerate() {
        let what = format!("{op:?}");
        h.step(op)
            .and_then(|()| h.check_state())
            .map_err(|e| TestCaseError::fail(format!("step {i} ({what:.200}): {e}")))?;
    }
    h.check_all()?;
    // Whatever the ops left, a final crash and reopen must give it all back.
    h.reopen(false)?;
    h.check_state()?;
    h.check_all()
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(128);
    ProptestConfig {
        cases,
        // Keep the source tree clean: a failure prints its minimal case instead.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn log_matches_model(case in case()) {
        run(case)?;
    }
}

// Cases the model found, kept as plain tests so that every run checks them.

fn one_record_batch(timestamp: i64) -> Vec<u8> {
    encode(&[Rec {
        offset: 0,
        timestamp,
        key: None,
        value: b"v".to_vec(),
        headers: Vec::new(),
    }])
}

fn small_config(index_interval_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        index_interval_bytes,
        fsync: FsyncPolicy::Never,
        retention_ms: None,
        retention_bytes: None,
        ..LogConfig::default()
    }
}

/// The newest timestamp of a segment lay between two time-index entries; a crash, a
/// recovery, and a second crash lost it, and `offset_for_timestamp` skipped the segment.
#[test]
fn segment_max_timestamp_survives_repeated_crashes() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = small_config(383);
    let mut w = LogWriter::open(dir.path(), config.clone()).expect("open");
    for ts in [CLOCK_START, CLOCK_START + 1] {
        let b = one_record_batch(ts);
        w.append_and_commit(batch::validate(&b, usize::MAX).expect("valid"))
            .expect("append");
    }
    for crash in 0..3 {
        drop(w);
        w = LogWriter::open(dir.path(), config.clone()).expect("reopen");
        assert_eq!(
            w.reader()
                .offset_for_timestamp(CLOCK_START + 1)
                .expect("lookup"),
            Some(1),
            "after crash {crash}"
        );
    }
}

/// Every clean close adds an entry with the segment's newest timestamp to its time index;
/// once the index was full, the next close's entry was dropped and a reopen lost the newest
/// timestamp.
#[test]
fn segment_max_timestamp_survives_a_full_time_index() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = small_config(2048);
    for i in 0..8 {
        let mut w = LogWriter::open(dir.path(), config.clone()).expect("open");
        let b = one_record_batch(CLOCK_START + i);
        w.append_and_commit(batch::validate(&b, usize::MAX).expect("valid"))
            .expect("append");
        w.close().expect("close");
        let w = LogWriter::open(dir.path(), config.clone()).expect("reopen");
        assert_eq!(
            w.reader()
                .offset_for_timestamp(CLOCK_START + i)
                .expect("lookup"),
            Some(i as u64),
            "after restart {i}"
        );
        w.close().expect("close");
    }
}
