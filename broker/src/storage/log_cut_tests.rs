//! The unpublished tail of a log: appended, made durable, published in steps, cut back,
//! and reopened (cleanly or as after a crash), in random orders checked against a model.

use proptest::prelude::*;

use super::super::batch::{self, BatchBuilder, Record};
use super::*;

fn batch_of(tag: u32, records: usize, value_len: usize) -> Vec<u8> {
    let mut b = BatchBuilder::default();
    let value = vec![(tag % 251) as u8; value_len];
    for _ in 0..records {
        b.push(&Record {
            timestamp: 1_000 + i64::from(tag),
            key: Some(b"k"),
            value: &value,
            headers: &[],
        });
    }
    b.finish()
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: 256,
        fsync: FsyncPolicy::Always,
        ..LogConfig::default()
    }
}

/// Every record readable from the log: (offset, first value byte).
fn readable(r: &LogReader) -> Vec<(u64, u8)> {
    let mut out = Vec::new();
    let mut at = r.start_offset();
    while let Some(chunk) = r.read(at, 100_000).unwrap() {
        for b in batch::batches(&chunk.bytes) {
            for rec in b.unwrap().records() {
                let rec = rec.unwrap();
                if rec.offset >= at {
                    out.push((rec.offset, rec.value[0]));
                }
            }
        }
        at = chunk.next_offset;
    }
    out
}

#[derive(Debug, Clone)]
enum Op {
    Append {
        records: usize,
        value_len: usize,
    },
    Sync,
    /// Publish up to the n-th unpublished batch boundary (mod their count + 1).
    Publish(usize),
    /// Cut at the n-th unpublished batch boundary (mod their count + 1).
    Cut(usize),
    Reopen {
        clean: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..5, 1usize..700).prop_map(|(records, value_len)| Op::Append { records, value_len }),
        1 => Just(Op::Sync),
        2 => any::<usize>().prop_map(Op::Publish),
        3 => any::<usize>().prop_map(Op::Cut),
        1 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
    ]
}

/// The model: every appended batch (base offset, records, tag) and the watermark.
struct Model {
    batches: Vec<(u64, u64, u32)>,
    published: u64,
}

impl Model {
    fn end(&self) -> u64 {
        self.batches.last().map_or(0, |b| b.0 + b.1)
    }

    /// Batch starts at or above the watermark, and the end.
    fn unpublished_boundaries(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .batches
            .iter()
            .map(|b| b.0)
            .filter(|&o| o >= self.published)
            .collect();
        v.push(self.end());
        v
    }

    fn readable(&self) -> Vec<(u64, u8)> {
        self.batches
            .iter()
            .filter(|b| b.0 < self.published)
            .flat_map(|&(base, n, tag)| (base..base + n).map(move |o| (o, (tag % 251) as u8)))
            .collect()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn a_cut_tail_is_gone_and_the_log_goes_on_from_it(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(dir.path(), config()).unwrap();
        let mut model = Model { batches: Vec::new(), published: 0 };
        let mut tag = 0u32;
        for op in ops {
            match op {
                Op::Append { records, value_len } => {
                    tag += 1;
                    let bytes = batch_of(tag, records, value_len);
                    let appended = w.append(batch::validate(&bytes, usize::MAX).unwrap()).unwrap();
                    prop_assert_eq!(appended.base_offset, model.end());
                    model.batches.push((appended.base_offset, records as u64, tag));
                }
                Op::Sync => {
                    prop_assert_eq!(w.sync_unpublished().unwrap(), model.end());
                }
                Op::Publish(n) => {
                    let choices = model.unpublished_boundaries();
                    let to = choices[n % choices.len()];
                    prop_assert_eq!(w.publish_to(to).unwrap(), to.max(model.published));
                    model.published = model.published.max(to);
                }
                Op::Cut(n) => {
                    let choices = model.unpublished_boundaries();
                    let to = choices[n % choices.len()];
                    w.truncate(to).unwrap();
                    model.batches.retain(|b| b.0 < to);
                    prop_assert_eq!(model.end(), to);
                }
                Op::Reopen { clean } => {
                    if clean {
                        w.close().unwrap();
                    } else {
                        drop(w);
                    }
                    w = LogWriter::open(dir.path(), config()).unwrap();
                    // An open publishes everything it recovers.
                    model.published = model.end();
                }
            }
            prop_assert_eq!(w.next_offset(), model.end());
            prop_assert_eq!(w.high_watermark(), model.published);
            prop_assert_eq!(w.reader().high_watermark(), model.published);
            prop_assert_eq!(readable(&w.reader()), model.readable());
        }
        // Whatever happened, the log opens again with exactly the model's batches.
        drop(w);
        let w = LogWriter::open(dir.path(), config()).unwrap();
        model.published = model.end();
        prop_assert_eq!(readable(&w.reader()), model.readable());
    }
}

#[test]
fn only_an_unpublished_batch_start_can_be_cut_or_published_to() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = LogWriter::open(dir.path(), config()).unwrap();
    for tag in 0..3 {
        let bytes = batch_of(tag, 2, 10);
        w.append(batch::validate(&bytes, usize::MAX).unwrap())
            .unwrap();
    }
    w.publish_to(2).unwrap();
    for (offset, why) in [
        (0, "readers may already have"),
        (3, "no appended batch starts there"),
        (7, "past the log's end"),
    ] {
        let error = w.truncate(offset).unwrap_err().to_string();
        assert!(error.contains(why), "{offset}: {error}");
    }
    let error = w.publish_to(5).unwrap_err().to_string();
    assert!(error.contains("no appended batch starts there"), "{error}");
    // The refusals changed nothing.
    assert_eq!((w.next_offset(), w.high_watermark()), (6, 2));
    w.truncate(4).unwrap();
    assert_eq!(w.next_offset(), 4);
}

/// A cut batch of an idempotent producer is forgotten: sent again, it is appended again,
/// at the cut, instead of being answered with the offsets it had.
#[test]
fn a_cut_producer_batch_is_appended_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = LogWriter::open(dir.path(), config()).unwrap();
    let stamp = batch::ProducerStamp {
        producer_id: 9,
        epoch: 0,
        base_sequence: 0,
    };
    let mut b = BatchBuilder::with_producer(1024, stamp);
    b.push(&Record {
        timestamp: 1,
        key: None,
        value: b"v",
        headers: &[],
    });
    let bytes = b.finish();
    let plain = batch_of(1, 1, 10);
    w.append_and_commit(batch::validate(&plain, usize::MAX).unwrap())
        .unwrap();
    let first = w
        .append(batch::validate(&bytes, usize::MAX).unwrap())
        .unwrap();
    assert_eq!(first.base_offset, 1);
    w.truncate(1).unwrap();
    let plain2 = batch_of(2, 1, 10);
    w.append(batch::validate(&plain2, usize::MAX).unwrap())
        .unwrap();
    let again = w
        .append(batch::validate(&bytes, usize::MAX).unwrap())
        .unwrap();
    assert_eq!(again.base_offset, 2, "stored again after the cut");
    assert_eq!(w.producer_count(), 1);
}

/// A crash part way through a cut (after the checkpoint, some batches zeroed from the
/// end, one of them half) leaves a log that opens, holds a prefix of what was appended
/// that reaches at least the cut, and takes the cut again.
#[test]
fn a_crash_during_a_cut_leaves_a_prefix_that_reaches_the_cut() {
    for zeroed in 0..6 {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(dir.path(), config()).unwrap();
        let mut tags = Vec::new();
        for tag in 0..12u32 {
            let bytes = batch_of(tag, 2, 500);
            w.append(batch::validate(&bytes, usize::MAX).unwrap())
                .unwrap();
            tags.push(tag);
        }
        w.sync_unpublished().unwrap();
        w.publish_to(4).unwrap();
        w.stop_cut_after = Some(zeroed);
        w.truncate(8).unwrap();
        drop(w);
        let mut w = LogWriter::open(dir.path(), config()).unwrap();
        let end = w.next_offset();
        assert!((8..=24).contains(&end), "{zeroed}: the log ends at {end}");
        let expected: Vec<(u64, u8)> = (0..end).map(|o| (o, (o / 2) as u8)).collect();
        let reader = w.reader();
        assert_eq!(readable(&reader), expected, "{zeroed}");
        // What readers saw before the crash stays published; the rest is cut again. Only
        // while no reader exists can the watermark go back.
        assert!(w.withhold_from(4).is_err(), "a reader exists");
        drop(reader);
        w.withhold_from(4).unwrap();
        assert_eq!(w.high_watermark(), 4);
        w.truncate(8).unwrap();
        let bytes = batch_of(99, 1, 10);
        let appended = w
            .append_and_commit(batch::validate(&bytes, usize::MAX).unwrap())
            .unwrap();
        assert_eq!(appended.base_offset, 8);
        drop(w);
        let w = LogWriter::open(dir.path(), config()).unwrap();
        assert_eq!(w.next_offset(), 9);
    }
}
