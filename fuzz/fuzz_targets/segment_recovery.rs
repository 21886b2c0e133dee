//! Recovery of a segment: arbitrary bytes as a partition's segment file (and, from a flag,
//! a checkpoint taken from the input). Opening never panics and never maps past the file;
//! if it opens, every read returns checked batches or an error, never a panic; the offline
//! check never panics either; and a second open agrees with the first.
#![no_main]

use arbitrary::Arbitrary;
use herald_broker::storage::{FsyncPolicy, LogConfig, LogWriter, batch, inspect};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    segment: Vec<u8>,
    /// 48 bytes written as the checkpoint, if present.
    checkpoint: Option<Vec<u8>>,
    /// Index bytes, if present.
    index: Option<Vec<u8>>,
}

/// Opens the log and reads everything: `Some(records)` or `None` on a refusal.
fn open(dir: &std::path::Path, config: &LogConfig) -> Option<(u64, u64, Option<usize>)> {
    let writer = LogWriter::open(dir, config.clone()).ok()?;
    let reader = writer.reader();
    let (start, end) = (reader.start_offset(), reader.high_watermark());
    let mut at = start;
    let mut n = 0usize;
    let mut ok = true;
    while at < end {
        match reader.read(at, 1 << 16) {
            Ok(Some(chunk)) => {
                assert!(chunk.next_offset > at, "a read made no progress");
                for view in batch::batches(&chunk.bytes) {
                    let view = view.expect("a read returns only whole, checked batches");
                    n += view.records().filter(|r| r.as_ref().is_ok_and(|r| r.offset >= at)).count();
                }
                at = chunk.next_offset;
            }
            Ok(None) => break,
            Err(_) => {
                ok = false;
                break;
            }
        }
    }
    Some((start, end, ok.then_some(n)))
}

fuzz_target!(|input: Input| {
    let dir = tempfile::tempdir().expect("temp dir");
    let segment = dir.path().join("00000000000000000000.log");
    std::fs::write(&segment, &input.segment).expect("write segment");
    if let Some(c) = &input.checkpoint {
        std::fs::write(dir.path().join("checkpoint"), c).expect("write checkpoint");
    }
    if let Some(i) = &input.index {
        std::fs::write(dir.path().join("00000000000000000000.index"), i).expect("write index");
    }
    let _ = inspect::check(dir.path());
    let config = LogConfig {
        segment_bytes: 64 * 1024,
        index_interval_bytes: 256,
        fsync: FsyncPolicy::Never,
        ..LogConfig::default()
    };
    let first = open(dir.path(), &config);
    let second = open(dir.path(), &config);
    if first.is_some() {
        assert_eq!(first, second, "a second open differs");
    }
});
