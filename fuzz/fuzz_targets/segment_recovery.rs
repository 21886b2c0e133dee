//! Recovery of a segment: arbitrary bytes as a partition's segment file (with, maybe, a
//! checkpoint and an index from the input), or a valid segment damaged by the input. Opening never panics and never maps past the file;
//! if it opens, every read returns checked batches or an error, never a panic; the offline
//! check never panics either; and a second open agrees with the first.
#![no_main]

use arbitrary::Arbitrary;
use herald_broker::storage::batch::{BatchBuilder, Record};
use herald_broker::storage::{FsyncPolicy, LogConfig, LogWriter, batch, inspect};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Input {
    /// Arbitrary files.
    Raw {
        segment: Vec<u8>,
        /// Written as the checkpoint, if present.
        checkpoint: Option<Vec<u8>>,
        /// Index bytes, if present.
        index: Option<Vec<u8>>,
    },
    /// A valid segment of a few batches (which random bytes almost never are: each needs
    /// a matching CRC), then damaged: bytes overwritten, cut, and a clean checkpoint that
    /// vouches for all of it, or none.
    Damaged {
        batches: u8,
        edits: Vec<(u16, u8)>,
        cut: Option<u16>,
        clean_checkpoint: bool,
    },
}

/// A valid segment of `n` batches, and the offset after them.
fn valid_segment(n: u8) -> (Vec<u8>, u64) {
    let mut out = Vec::new();
    let mut next = 0u64;
    for b in 0..n.clamp(1, 8) {
        let mut builder = BatchBuilder::default();
        for r in 0..(b % 3 + 1) {
            builder.push(&Record {
                timestamp: 1_700_000_000_000 + i64::from(b) * 10 + i64::from(r),
                key: (r % 2 == 0).then_some(b"key".as_slice()),
                value: &[b; 24],
                headers: &[("h", b"v")],
            });
        }
        let mut bytes = builder.finish();
        batch::stamp_base_offset(&mut bytes, next);
        next += u64::from(b % 3 + 1);
        out.extend_from_slice(&bytes);
    }
    (out, next)
}

/// A version-2 checkpoint (layout in `storage/recovery.rs`) that vouches for a clean end.
fn clean_checkpoint(position: u64, next_offset: u64) -> Vec<u8> {
    let mut b = vec![0u8; 48];
    b[0..4].copy_from_slice(b"HRCP");
    b[4..8].copy_from_slice(&2u32.to_le_bytes());
    b[16..24].copy_from_slice(&position.to_le_bytes());
    b[24..32].copy_from_slice(&next_offset.to_le_bytes());
    b[32] = 1;
    b[33] = 1;
    let crc = crc32c::crc32c(&b[..44]);
    b[44..48].copy_from_slice(&crc.to_le_bytes());
    b
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
    // What a durable checkpoint vouches for: a log that opens must reach it.
    let (segment, checkpoint, index, vouched) = match input {
        Input::Raw {
            segment,
            checkpoint,
            index,
        } => (segment, checkpoint, index, 0),
        Input::Damaged {
            batches,
            edits,
            cut,
            clean_checkpoint: clean,
        } => {
            let (mut bytes, next) = valid_segment(batches);
            let len = bytes.len() as u64;
            // Room after the batches, as a segment file allocated ahead of its data has.
            bytes.resize(bytes.len() + 256, 0);
            for (at, value) in edits.into_iter().take(8) {
                let at = usize::from(at) % bytes.len();
                bytes[at] = value;
            }
            if let Some(cut) = cut {
                bytes.truncate(usize::from(cut) % (bytes.len() + 1));
            }
            let vouched = if clean { next } else { 0 };
            (bytes, clean.then(|| clean_checkpoint(len, next)), None, vouched)
        }
    };
    let path = dir.path().join("00000000000000000000.log");
    std::fs::write(&path, &segment).expect("write segment");
    if let Some(c) = &checkpoint {
        std::fs::write(dir.path().join("checkpoint"), c).expect("write checkpoint");
    }
    if let Some(i) = &index {
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
    if let Some((_, end, _)) = first {
        assert!(end >= vouched, "opened a log ending at {end}, below the checkpoint's {vouched}");
        assert_eq!(first, second, "a second open differs");
    }
});
