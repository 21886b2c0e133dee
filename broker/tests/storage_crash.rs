//! Crash tests of the storage engine: write a log of known batches, drop the writer without
//! closing it (a process crash: the page cache keeps what was written, nothing is flushed
//! or checkpointed), damage files on disk, reopen, and check what recovery makes of it.
//!
//! The expectation is computed from the layout written: batches lie back to back from
//! position 0 of a segment, and a new segment starts (at the batch's base offset) when the
//! next batch does not fit. Damage to the active segment must leave every batch wholly
//! before it intact and return nothing after it: a damaged last batch is a torn tail that
//! recovery cuts; damage followed by a valid batch, or a truncation below the checkpoint
//! (bytes flushed and vouched for), makes opening fail with `StorageError::Corrupt` naming
//! the file and byte, and leaves the file as it was. Opening twice gives the same result,
//! and a log recovery cut must take appends again.
//!
//! Every case comes from a seed and its failure message names it.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use herald_broker::storage::batch::{self, BatchBuilder, Record};
use herald_broker::storage::{FsyncPolicy, LogConfig, LogReader, LogWriter, StorageError};

/// splitmix64: small, seedable, good enough to pick sizes and positions.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..hi` (`lo` if the range is empty).
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            lo + self.next() % (hi - lo)
        }
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    /// Random bytes, a random length below `max`.
    fn some_bytes(&mut self, max: u64) -> Vec<u8> {
        let n = self.range(0, max) as usize;
        self.bytes(n)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rec {
    offset: u64,
    timestamp: i64,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
}

/// A batch as written: where it lies and what it holds.
#[derive(Debug, Clone)]
struct Written {
    /// Base offset of the segment holding it.
    segment: u64,
    position: u64,
    /// The batch as it must be on disk (base offset stamped).
    bytes: Vec<u8>,
    records: Vec<Rec>,
}

impl Written {
    fn base(&self) -> u64 {
        self.records[0].offset
    }
    fn end(&self) -> u64 {
        self.position + self.bytes.len() as u64
    }
}

/// A log written by [`write_log`] and then abandoned (the writer dropped, not closed).
struct Log {
    dir: tempfile::TempDir,
    config: LogConfig,
    batches: Vec<Written>,
    /// Base offsets of the segments, in order; the last is the active one.
    segments: Vec<u64>,
    /// Where in the active segment the newest checkpoint vouches for the bytes below it: 0
    /// unless the writing session that rolled into the active segment was not the last.
    checkpoint_position: u64,
    clock: i64,
}

impl Log {
    fn dir(&self) -> &Path {
        self.dir.path()
    }
    fn records(&self) -> Vec<Rec> {
        self.batches
            .iter()
            .flat_map(|b| b.records.iter().cloned())
            .collect()
    }
    fn next_offset(&self) -> u64 {
        self.batches
            .last()
            .map_or(0, |b| b.base() + b.records.len() as u64)
    }
    fn active(&self) -> u64 {
        *self.segments.last().expect("a log has a segment")
    }
}

fn segment_file(dir: &Path, base: u64, suffix: &str) -> PathBuf {
    dir.join(format!("{base:020}.{suffix}"))
}

fn random_records(rng: &mut Rng, first_offset: u64, clock: &mut i64) -> Vec<Rec> {
    let n = rng.range(1, 8);
    (0..n)
        .map(|i| {
            *clock += rng.range(0, 30) as i64;
            let key = rng.chance(70).then(|| rng.some_bytes(12));
            let value = rng.some_bytes(200);
            let headers = if rng.chance(30) {
                vec![("trace".to_owned(), rng.some_bytes(8))]
            } else {
                Vec::new()
            };
            Rec {
                offset: first_offset + i,
                timestamp: *clock,
                key,
                value,
                headers,
            }
        })
        .collect()
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

/// Opens the log and appends `n` batches of random records, committing all of them, then
/// drops the writer without closing it. `sessions` > 1 splits the writing into sessions,
/// each ended by a clean close or a crash, so checkpoints land inside segments too.
fn write_log(rng: &mut Rng, n: usize, sessions: usize) -> Log {
    let segment_bytes = if rng.chance(50) {
        4096 * rng.range(1, 3)
    } else {
        rng.range(4096, 9000)
    };
    let config = LogConfig {
        segment_bytes,
        index_interval_bytes: rng.range(32, 1024),
        fsync: if rng.chance(25) {
            FsyncPolicy::Always
        } else {
            FsyncPolicy::Never
        },
        retention_ms: None,
        retention_bytes: None,
        ..LogConfig::default()
    };
    let mut log = Log {
        dir: tempfile::tempdir().expect("temporary directory"),
        config,
        batches: Vec::new(),
        segments: vec![0],
        checkpoint_position: 0,
        clock: 1_700_000_000_000,
    };
    let mut write_pos = 0;
    let mut writer = LogWriter::open(log.dir(), log.config.clone()).expect("open a new log");
    for i in 0..n {
        if sessions > 1 && i > 0 && i % n.div_ceil(sessions) == 0 {
            if rng.chance(50) {
                writer.close().expect("close");
            } else {
                drop(writer);
            }
            writer = LogWriter::open(log.dir(), log.config.clone()).expect("reopen");
            // Recovery checkpoints the active segment at its end.
            log.checkpoint_position = write_pos;
        }
        let base = log.next_offset();
        let records = random_records(rng, base, &mut log.clock);
        let mut bytes = encode(&records);
        let len = bytes.len() as u64;
        let appended = writer
            .append(batch::validate(&bytes, usize::MAX).expect("valid batch"))
            .expect("append");
        assert_eq!(appended.base_offset, base);
        if write_pos + len > log.config.segment_bytes {
            log.segments.push(base);
            log.checkpoint_position = 0;
            write_pos = 0;
        }
        batch::stamp_base_offset(&mut bytes, base);
        log.batches.push(Written {
            segment: log.active(),
            position: write_pos,
            bytes,
            records,
        });
        write_pos += len;
        if rng.chance(70) || i + 1 == n {
            writer.commit().expect("commit");
        }
    }
    let reader = writer.reader();
    assert_eq!(
        reader.segment_count(),
        log.segments.len(),
        "segments rolled"
    );
    drop(writer); // the crash
    drop(reader);
    // The layout this test computes is what is on disk.
    for b in &log.batches {
        let file = fs::read(segment_file(log.dir(), b.segment, "log")).expect("read segment");
        assert_eq!(
            &file[b.position as usize..b.end() as usize],
            &b.bytes[..],
            "batch at offset {} is not where the layout says",
            b.base()
        );
    }
    log
}

fn read_all(reader: &LogReader) -> Result<Vec<Rec>, String> {
    let mut out = Vec::new();
    let mut at = reader.start_offset();
    while let Some(chunk) = reader
        .read(at, 1 << 20)
        .map_err(|e| format!("read({at}): {e}"))?
    {
        for view in batch::batches(&chunk.bytes) {
            let view = view.map_err(|e| format!("read({at}) returned a bad batch: {e}"))?;
            for r in view.records() {
                let r = r.map_err(|e| format!("read({at}) returned a bad record: {e}"))?;
                if r.offset >= at {
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
                }
            }
        }
        if chunk.next_offset <= at {
            return Err(format!("read({at}) made no progress"));
        }
        at = chunk.next_offset;
    }
    Ok(out)
}

/// What opening a directory gave.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Opened {
        next_offset: u64,
        high_watermark: u64,
        start_offset: u64,
        segments: usize,
        records: Vec<Rec>,
    },
    Corrupt {
        path: PathBuf,
        position: u64,
        message: String,
    },
    Failed(String),
}

impl Outcome {
    fn summary(&self) -> String {
        match self {
            Outcome::Opened {
                next_offset,
                records,
                segments,
                ..
            } => format!(
                "opened: next offset {next_offset}, {} records, {segments} segments",
                records.len()
            ),
            Outcome::Corrupt { message, .. } => format!("corrupt: {message}"),
            Outcome::Failed(e) => format!("failed: {e}"),
        }
    }
}

/// Opens `dir` (the writer is closed again by dropping it: another crash).
fn open(dir: &Path, config: &LogConfig) -> Outcome {
    match LogWriter::open(dir, config.clone()) {
        Ok(writer) => {
            let reader = writer.reader();
            let records = match read_all(&reader) {
                Ok(records) => records,
                Err(e) => return Outcome::Failed(format!("opened, but {e}")),
            };
            Outcome::Opened {
                next_offset: writer.next_offset(),
                high_watermark: reader.high_watermark(),
                start_offset: reader.start_offset(),
                segments: reader.segment_count(),
                records,
            }
        }
        Err(e @ StorageError::Corrupt { .. }) => {
            let message = e.to_string();
            let StorageError::Corrupt { path, position, .. } = e else {
                unreachable!()
            };
            Outcome::Corrupt {
                path,
                position,
                message,
            }
        }
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// Opening `dir` gives `records` (and offsets continue after them), and gives exactly the
/// same again when opened a second time.
fn assert_opens_with(log: &Log, records: &[Rec], what: &str) {
    let first = open(log.dir(), &log.config);
    let next = records.last().map_or_else(
        || log.segments.first().copied().unwrap_or(0),
        |r| r.offset + 1,
    );
    match &first {
        Outcome::Opened {
            next_offset,
            high_watermark,
            records: got,
            ..
        } => {
            assert_eq!(
                got.len(),
                records.len(),
                "{what}: number of records recovered"
            );
            assert!(got == records, "{what}: recovered records differ");
            assert_eq!(*next_offset, next, "{what}: next offset");
            assert_eq!(*high_watermark, next, "{what}: high watermark");
        }
        other => panic!("{what}: expected the log to open, got {}", other.summary()),
    }
    let second = open(log.dir(), &log.config);
    assert_eq!(first, second, "{what}: a second open differs");
}

/// After a recovery, the log takes new appends, and they survive another crash.
fn assert_writable(log: &Log, records: &[Rec], what: &str) {
    let mut writer = LogWriter::open(log.dir(), log.config.clone())
        .unwrap_or_else(|e| panic!("{what}: reopen failed: {e}"));
    let mut more = records.to_vec();
    for _ in 0..3 {
        let base = writer.next_offset();
        let rec = Rec {
            offset: base,
            timestamp: log.clock + 1,
            key: Some(b"after".to_vec()),
            value: vec![0xa5; 300],
            headers: Vec::new(),
        };
        let bytes = encode(std::slice::from_ref(&rec));
        writer
            .append_and_commit(batch::validate(&bytes, usize::MAX).expect("valid"))
            .unwrap_or_else(|e| panic!("{what}: append after recovery failed: {e}"));
        more.push(rec);
    }
    drop(writer);
    let reopened = open(log.dir(), &log.config);
    match reopened {
        Outcome::Opened { records: got, .. } => {
            assert!(
                got == more,
                "{what}: appends after recovery did not survive a crash ({} records, want {})",
                got.len(),
                more.len()
            );
        }
        other => panic!(
            "{what}: reopening after appends failed: {}",
            other.summary()
        ),
    }
}

fn write_file(path: &Path, bytes: &[u8]) {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open segment for damage");
    file.set_len(bytes.len() as u64).expect("set length");
    std::os::unix::fs::FileExt::write_all_at(&file, bytes, 0).expect("write damage");
}

/// One damage case: write, crash, damage the active segment, reopen, compare.
fn damage_case(seed: u64) {
    let mut rng = Rng(seed);
    let n = rng.range(6, 40) as usize;
    let sessions = if rng.chance(30) { 2 } else { 1 };
    let log = write_log(&mut rng, n, sessions);
    let active = log.active();
    let path = segment_file(log.dir(), active, "log");
    let capacity = fs::metadata(&path).expect("stat").len();
    let in_active: Vec<&Written> = log.batches.iter().filter(|b| b.segment == active).collect();
    let written = in_active.last().map_or(0, |b| b.end());
    // Bytes below the checkpoint were flushed and are vouched for: recovery does not scan
    // them again (by design), so only truncation may reach below it.
    let from = log.checkpoint_position;

    let before = fs::read(&path).expect("read segment");
    let mut after = before.clone();
    let what = match rng.range(0, 3) {
        0 => {
            let len = if rng.chance(85) {
                rng.range(0, written)
            } else {
                rng.range(written, capacity + 1)
            };
            after.truncate(len as usize);
            format!("truncated to {len} bytes")
        }
        1 => {
            // A 4 KiB page (aligned, or not) that overlaps the written bytes.
            let mut start = rng.range(from, written);
            if rng.chance(70) && start / 4096 * 4096 >= from {
                start = start / 4096 * 4096;
            }
            let end = (start + 4096).min(capacity);
            after[start as usize..end as usize].fill(0);
            format!("zeroed bytes {start}..{end}")
        }
        _ => {
            let mut flipped = Vec::new();
            for _ in 0..rng.range(1, 5) {
                let at = rng.range(from, written) as usize;
                let bit = rng.range(0, 8);
                after[at] ^= 1 << bit;
                flipped.push((at, bit));
            }
            format!("flipped (byte, bit) {flipped:?}")
        }
    };
    write_file(&path, &after);

    let changed = |b: &Written| {
        let range = b.position as usize..b.end() as usize;
        after.len() < range.end || before[range.clone()] != after[range]
    };
    let first_bad = in_active.iter().position(|b| changed(b));
    let layout: Vec<_> = in_active
        .iter()
        .map(|b| (b.base(), b.position, b.end()))
        .collect();
    let context = format!(
        "seed {seed:#x}: {n} batches in {} segments of {} bytes, {sessions} session(s), \
         checkpoint at {from}; active segment {} (written {written} of {capacity} bytes, \
         batches (offset, from, to) {layout:?}) {what}",
        log.segments.len(),
        log.config.segment_bytes,
        path.display()
    );

    let Some(k) = first_bad else {
        // Nothing written changed: all is there.
        assert_opens_with(&log, &log.records(), &context);
        assert_writable(&log, &log.records(), &context);
        return;
    };
    let bad = in_active[k];
    let intact: Vec<Rec> = log
        .batches
        .iter()
        .take_while(|b| b.base() < bad.base())
        .flat_map(|b| b.records.iter().cloned())
        .collect();
    // Recovery calls a batch valid when its frame and CRC check out. The CRC leaves the base
    // offset (bytes 0..8) out, so a batch damaged only there still holds intact records: one
    // at or after the damage means valid data follows it, and opening must refuse to cut it.
    let frame_and_crc_intact = |b: &Written| {
        let range = b.position as usize + 8..b.end() as usize;
        after.len() >= range.end && before[range.clone()] == after[range]
    };
    let truncated = after.len() < before.len();
    if bad.position < from {
        // Only a truncation reaches below the checkpoint. Those bytes were flushed and the
        // checkpoint vouches for them: losing them is damage, never a torn tail to cut.
        let first = open(log.dir(), &log.config);
        match &first {
            Outcome::Corrupt {
                path: p, position, ..
            } => {
                assert_eq!(p, &path, "{context}: the error names the wrong file");
                assert_eq!(
                    *position, bad.position,
                    "{context}: the error names the wrong position"
                );
            }
            other => panic!(
                "{context}: the log lost bytes its checkpoint vouches for (batch {} at byte \
                 {}), so opening must fail as corrupt; got {}",
                bad.base(),
                bad.position,
                other.summary()
            ),
        }
        assert_eq!(
            first,
            open(log.dir(), &log.config),
            "{context}: a second open differs"
        );
        assert_eq!(
            fs::read(&path).expect("read segment"),
            after,
            "{context}: the refusal changed the file"
        );
        return;
    }
    let valid_after = !truncated && in_active[k..].iter().any(|b| frame_and_crc_intact(b));
    if valid_after {
        let first = open(log.dir(), &log.config);
        match &first {
            Outcome::Corrupt {
                path: p,
                position,
                message,
            } => {
                assert_eq!(p, &path, "{context}: the error names the wrong file");
                assert_eq!(
                    *position, bad.position,
                    "{context}: the error names the wrong position"
                );
                assert!(
                    message.contains(&path.display().to_string())
                        && message.contains(&format!("byte {}", bad.position)),
                    "{context}: the message does not say where: {message}"
                );
            }
            other => panic!(
                "{context}: damage at batch {} is followed by valid batches, so opening must \
                 fail as corrupt; got {}",
                bad.base(),
                other.summary()
            ),
        }
        let second = open(log.dir(), &log.config);
        assert_eq!(first, second, "{context}: a second open differs");
    } else {
        assert_opens_with(&log, &intact, &context);
        assert_writable(&log, &intact, &context);
    }
}

fn cases(default: u64) -> u64 {
    std::env::var("HERALD_CRASH_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(default)
}

#[test]
fn damaged_active_segment() {
    for i in 0..cases(300) {
        damage_case(0x5eed_0000 + i);
    }
}

/// Writes a log of at least three segments (so there are sealed ones before the active one).
fn write_segmented_log(seed: u64, sessions: usize) -> Log {
    let mut rng = Rng(seed);
    let log = write_log(&mut rng, 45, sessions);
    assert!(
        log.segments.len() >= 3,
        "seed {seed:#x}: only {} segments",
        log.segments.len()
    );
    log
}

/// `offset_for_timestamp` agrees with the records for every timestamp they hold and a few
/// around them (timestamps in these logs never go backwards).
fn assert_timestamps(log: &Log, records: &[Rec], what: &str) {
    let writer = LogWriter::open(log.dir(), log.config.clone())
        .unwrap_or_else(|e| panic!("{what}: open failed: {e}"));
    let reader = writer.reader();
    let mut probes: Vec<i64> = records.iter().map(|r| r.timestamp).collect();
    probes.extend(records.iter().map(|r| r.timestamp + 1));
    probes.extend([i64::MIN, 0, log.clock + 1_000]);
    for ts in probes {
        let want = records.iter().find(|r| r.timestamp >= ts).map(|r| r.offset);
        let got = reader
            .offset_for_timestamp(ts)
            .unwrap_or_else(|e| panic!("{what}: offset_for_timestamp({ts}): {e}"));
        assert_eq!(got, want, "{what}: offset_for_timestamp({ts})");
    }
}

#[test]
fn segment_file_truncated_to_zero() {
    for i in 0..12u64 {
        let seed = 0x2e50_0000 + i;
        let sessions = 1 + (i % 2) as usize;

        // The active segment: the log ends where the segment before it ends.
        let log = write_segmented_log(seed, sessions);
        let active = log.active();
        write_file(&segment_file(log.dir(), active, "log"), &[]);
        let kept: Vec<Rec> = log
            .batches
            .iter()
            .filter(|b| b.segment != active)
            .flat_map(|b| b.records.iter().cloned())
            .collect();
        let what = format!("seed {seed:#x}: active segment {active} truncated to 0 bytes");
        assert_opens_with(&log, &kept, &what);
        match open(log.dir(), &log.config) {
            Outcome::Opened { segments, .. } => {
                assert_eq!(segments, log.segments.len() - 1, "{what}: segments");
            }
            other => panic!("{what}: {}", other.summary()),
        }
        assert_timestamps(&log, &kept, &what);
        assert_writable(&log, &kept, &what);

        // A sealed segment: valid batches follow the loss, so opening refuses.
        let log = write_segmented_log(seed, sessions);
        let victim = log.segments[(i as usize) % (log.segments.len() - 1)];
        let path = segment_file(log.dir(), victim, "log");
        write_file(&path, &[]);
        let what = format!("seed {seed:#x}: sealed segment {victim} truncated to 0 bytes");
        let first = open(log.dir(), &log.config);
        match &first {
            Outcome::Corrupt {
                path: p,
                position,
                message,
            } => {
                assert_eq!(p, &path, "{what}: names the wrong file");
                assert_eq!(*position, 0, "{what}: names the wrong position");
                assert!(
                    message.contains(&path.display().to_string()),
                    "{what}: {message}"
                );
            }
            other => panic!("{what}: expected a corrupt log, got {}", other.summary()),
        }
        assert_eq!(
            first,
            open(log.dir(), &log.config),
            "{what}: a second open differs"
        );
    }
}

#[test]
fn stray_segment_files_with_garbage() {
    for i in 0..18u64 {
        let seed = 0x57a4_0000 + i;
        let mut rng = Rng(seed ^ 0xffff);
        let log = write_segmented_log(seed, 1 + (i % 2) as usize);
        let next = log.next_offset();
        let (base, kind) = match i % 3 {
            // Beyond the end of the log.
            0 => (next + rng.range(1, 1_000), "beyond the end"),
            // Inside a sealed segment's offsets: it continues nothing.
            1 => {
                let s = (i as usize / 3) % (log.segments.len() - 1);
                let (lo, hi) = (log.segments[s], log.segments[s + 1]);
                (rng.range(lo + 1, hi), "inside a sealed segment")
            }
            // Exactly where the log goes on: read as a segment holding a torn write.
            _ => (next, "at the next offset"),
        };
        let garbage = if rng.chance(15) {
            Vec::new()
        } else {
            let len = rng.range(1, 10_000) as usize;
            rng.bytes(len)
        };
        let path = segment_file(log.dir(), base, "log");
        if base == log.active() || log.segments.contains(&base) {
            continue; // not a stray
        }
        fs::write(&path, &garbage).expect("write stray segment");
        let what = format!(
            "seed {seed:#x}: stray segment {} ({} bytes of garbage) {kind}",
            path.display(),
            garbage.len()
        );
        let records = log.records();
        assert_opens_with(&log, &records, &what);
        if base != next {
            for suffix in ["log", "index", "timeindex"] {
                assert!(
                    !segment_file(log.dir(), base, suffix).exists(),
                    "{what}: the stray .{suffix} file was left behind"
                );
            }
        }
        assert_timestamps(&log, &records, &what);
        assert_writable(&log, &records, &what);
    }
}

#[test]
fn damaged_checkpoint_falls_back_to_a_scan() {
    for i in 0..18u64 {
        let seed = 0xc4ec_0000 + i;
        let mut rng = Rng(seed ^ 0xffff);
        let log = write_segmented_log(seed, 1 + (i % 2) as usize);
        if i % 3 == 0 {
            // A clean close: the checkpoint then vouches for the whole active segment.
            LogWriter::open(log.dir(), log.config.clone())
                .and_then(LogWriter::close)
                .expect("clean close");
        }
        let path = log.dir().join("checkpoint");
        let good = fs::read(&path).expect("read checkpoint");
        let (bytes, how) = match i % 6 {
            0 => {
                let mut b = good.clone();
                let at = rng.range(0, b.len() as u64) as usize;
                b[at] ^= 1 << rng.range(0, 8);
                (Some(b), format!("a bit flipped in byte {at}"))
            }
            1 => {
                let len = rng.range(0, good.len() as u64) as usize;
                (Some(good[..len].to_vec()), format!("cut to {len} bytes"))
            }
            2 => (
                Some(rng.bytes(good.len())),
                "overwritten with garbage".into(),
            ),
            3 => {
                let mut b = good.clone();
                b.extend(rng.bytes(20));
                (Some(b), "garbage appended".into())
            }
            4 => (Some(Vec::new()), "emptied".into()),
            _ => (None, "deleted".into()),
        };
        match bytes {
            Some(b) => fs::write(&path, b).expect("damage checkpoint"),
            None => fs::remove_file(&path).expect("delete checkpoint"),
        }
        let what = format!("seed {seed:#x}: checkpoint {how}");
        let records = log.records();
        assert_opens_with(&log, &records, &what);
        assert_timestamps(&log, &records, &what);
        assert_writable(&log, &records, &what);
    }
}

#[test]
fn missing_or_empty_index_files_are_rebuilt() {
    let mut case = 0u64;
    for state in ["crashed", "closed cleanly", "crashed in a second session"] {
        for target in ["a sealed segment", "the active segment"] {
            for files in [&["index"][..], &["timeindex"], &["index", "timeindex"]] {
                for emptied in [false, true] {
                    case += 1;
                    let seed = 0x1dec_0000 + case;
                    let sessions = if state.contains("second") { 2 } else { 1 };
                    let log = write_segmented_log(seed, sessions);
                    if state == "closed cleanly" {
                        LogWriter::open(log.dir(), log.config.clone())
                            .and_then(LogWriter::close)
                            .expect("clean close");
                    }
                    let segment = if target.contains("active") {
                        log.active()
                    } else {
                        log.segments[case as usize % (log.segments.len() - 1)]
                    };
                    let index = segment_file(log.dir(), segment, "index");
                    let original = fs::read(&index).expect("read index");
                    for suffix in files {
                        let path = segment_file(log.dir(), segment, suffix);
                        if emptied {
                            write_file(&path, &[]);
                        } else {
                            fs::remove_file(&path).expect("delete index");
                        }
                    }
                    let what = format!(
                        "seed {seed:#x}: log {state}, then {files:?} of {target} ({segment}) {}",
                        if emptied { "emptied" } else { "deleted" }
                    );
                    let records = log.records();
                    assert_opens_with(&log, &records, &what);
                    for suffix in files {
                        let path = segment_file(log.dir(), segment, suffix);
                        assert!(
                            fs::metadata(&path).is_ok_and(|m| m.len() > 0),
                            "{what}: {} was not recreated",
                            path.display()
                        );
                    }
                    // The offset index is a function of the batches: rebuilt, it is the same.
                    assert!(
                        fs::read(&index).expect("read index") == original,
                        "{what}: the rebuilt offset index differs from the original"
                    );
                    assert_timestamps(&log, &records, &what);
                    assert_writable(&log, &records, &what);
                }
            }
        }
    }
}
