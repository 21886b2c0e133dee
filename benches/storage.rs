//! Storage engine throughput, in process: append (per fsync policy), validation, group
//! commit and lock-free reads, beside a plain `memcpy` of the same bytes as the ceiling.
//!
//! Every id moves one pre-encoded batch per iteration and sets `Throughput` to match:
//! `Bytes(batch_len)` (the whole encoded batch, header and record framing included) for the
//! 1 KiB ids, `Elements(1000)` (records) for `never_100B_x1000`. A 1 KiB batch is 100 records,
//! so records/s = bytes/s / batch_len × 100; the batch length is printed once at start-up.
//!
//! | id | one iteration | segment preparation timed? |
//! |---|---|---|
//! | `storage_append/memcpy_1KiB_x100` | copy the batch into a pre-touched 128 MiB buffer, rotating | — |
//! | `storage_append/validate_1KiB_x100` | `batch::validate` (CRC + record walk) | — |
//! | `storage_append/never_1KiB_x100` | `append` + `commit` of a validated batch, fsync never | **yes**: 256 MiB segments roll, the next one is prepared on a background thread that shares the 2 cores, and a roll waits for it |
//! | `storage_append/never_1KiB_x100_noroll` | same | **no**: no roll in the timed region; the clock stops for a roll and until the background preparation has finished |
//! | `storage_append/never_100B_x1000` | same, 1000 × 100 B records | **yes**, as `never_1KiB_x100` |
//! | `storage_append/always_1KiB_x100_1writer` | one caller: `CommitterHandle::append` (validate, queue, append, one flush, reply) | **yes**: rolls (flushes, renames, directory sync, waiting for the preparer) are timed |
//! | `storage_append/always_1KiB_x100_8writers` | one batch appended by one of 8 caller threads through one `CommitterHandle` (group commit); `iters` batches in all, split evenly | **yes**, as `1writer` |
//! | `storage_append/always_1KiB_x1_{1,8}writer(s)` | as the two above, with one-record batches (`Elements(1)`: records/s) | **yes**, as `1writer` |
//! | `storage_read/1KiB_x100` | `LogReader::read` of one whole batch, copied into a reusable buffer | — (log preloaded) |
//!
//! Segment files are allocated as they fill (see `storage::segment`): in every id, the
//! allocator thread's `fallocate`s a step ahead of the writer run inside the timed region,
//! and an append that outruns them allocates in place, timed.
//!
//! Retention keeps each data directory near 1 GiB. In `never_1KiB_x100` and
//! `never_100B_x1000` it runs after every roll and is timed (a broker runs it on the writer
//! thread too); `noroll` runs it with the clock stopped. In the `always` ids the committer
//! runs it itself (every 10 s, on its thread). `never_1KiB_x100` and `never_100B_x1000`
//! take 10 flat samples over 15 s (equal iterations per sample, ~1.5 s each), so that every
//! sample spans several rolls (one per ~2,600 batches) and the median sample is a sustained
//! rate, not a roll-free stretch between two rolls.
//! Data lives in `tempfile` directories under the system temp dir, never in the repo.

use std::hint::black_box;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use herald_broker::storage::batch::{self, BatchBuilder, Record};
use herald_broker::storage::{
    Committer, DEFAULT_SEGMENT_BYTES, FsyncPolicy, LogConfig, LogReader, LogWriter, WriterStats,
};
use tempfile::TempDir;

/// Criterion settings for most ids; the whole bench runs in under three minutes.
const SAMPLES: usize = 20;
const WARM_UP: Duration = Duration::from_secs(2);
const MEASUREMENT: Duration = Duration::from_secs(5);
/// The sustained `never` ids write ~2 GB/s and roll every 256 MiB: 1.5 s samples span
/// several rolls even when a slow warm-up (fresh memory) makes criterion size them short.
const SUSTAINED_SAMPLES: usize = 10;
const SUSTAINED_WARM_UP: Duration = Duration::from_secs(3);
const SUSTAINED_MEASUREMENT: Duration = Duration::from_secs(15);
/// Records per batch for the 1 KiB ids: ~100 KiB batches, the size the brief's gRPC
/// measurements say throughput needs.
const RECORDS_1KIB: usize = 100;
const VALUE_1KIB_BYTES: usize = 1024;
/// Records per batch for the 100 B id: about the same batch size in bytes.
const RECORDS_100B: usize = 1000;
const VALUE_100B_BYTES: usize = 100;
/// The memcpy reference's destination: 4× this machine's 32 MiB L3, so the copies land in
/// memory as appends into a 256 MiB segment do, not in cache.
const MEMCPY_REGION_BYTES: usize = 128 * 1024 * 1024;
/// Segments' worth of bytes the `never` ids keep: bounds their disk and page cache use.
const RETAINED_SEGMENTS: u64 = 3;
/// What the `always` ids keep; their committer applies it every 10 s.
const ALWAYS_RETENTION_BYTES: u64 = 1024 * 1024 * 1024;
/// The read bench's log: several times the L3, over several segments.
const READ_LOG_BYTES: u64 = 256 * 1024 * 1024;
const READ_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Concurrent callers in the group-commit id.
const GROUP_WRITERS: usize = 8;
/// The segment preparer's thread name as `/proc` shows it (Linux keeps 15 bytes of
/// "herald-segment-preparer").
const PREPARER_COMM_PREFIX: &str = "herald-segment";
/// How long the `noroll` id waits for a background preparation before it gives up and
/// times the next appends anyway.
const PREPARER_WAIT_MAX: Duration = Duration::from_secs(120);

/// One encoded batch of `records` records with `value_bytes`-byte values, a 10-byte key and
/// rising timestamps. Values are pseudo-random so nothing downstream sees a trivial pattern.
fn encode_batch(records: usize, value_bytes: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let pool: Vec<u8> = (0..value_bytes + records)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let mut builder = BatchBuilder::with_capacity(records * (value_bytes + 32) + 64);
    for i in 0..records {
        let key = format!("key-{i:06}");
        builder.push(&Record {
            timestamp: 1_700_000_000_000 + i as i64,
            key: Some(key.as_bytes()),
            value: &pool[i..i + value_bytes],
            headers: &[],
        });
    }
    builder.finish()
}

fn never_config(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        fsync: FsyncPolicy::Never,
        retention_bytes: Some(RETAINED_SEGMENTS * segment_bytes),
        ..LogConfig::default()
    }
}

fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("herald-bench-storage-")
        .tempdir()
        .expect("create a temporary data directory")
}

/// Whether a segment preparer thread of this process is still running.
fn preparer_running() -> bool {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return false;
    };
    tasks.flatten().any(|task| {
        std::fs::read_to_string(task.path().join("comm"))
            .is_ok_and(|comm| comm.starts_with(PREPARER_COMM_PREFIX))
    })
}

/// Blocks until no segment is being prepared in the background, so the timed region that
/// follows has both cores to itself. `LogWriter` does not expose its preparer, so this looks
/// for the preparer's thread in `/proc`; without `/proc` it cannot tell and returns at once.
fn wait_for_preparer() {
    let deadline = Instant::now() + PREPARER_WAIT_MAX;
    while preparer_running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A `never` writer and the batch it appends over and over.
struct NeverLog {
    writer: LogWriter,
    stats: Arc<WriterStats>,
    batch: Bytes,
    /// Bytes written into the active segment, tracked here to foresee rolls (`noroll`).
    position: u64,
    segment_bytes: u64,
    rolls_seen: u64,
    _dir: TempDir,
}

impl NeverLog {
    fn open(batch: Bytes) -> NeverLog {
        let dir = temp_dir();
        let writer =
            LogWriter::open(dir.path(), never_config(DEFAULT_SEGMENT_BYTES)).expect("open the log");
        NeverLog {
            stats: writer.stats(),
            writer,
            batch,
            position: 0,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            rolls_seen: 0,
            _dir: dir,
        }
    }

    /// Retention after a roll, so old segments do not pile up on disk and in the page cache.
    fn after_roll(&mut self) {
        let rolls = WriterStats::get(&self.stats.rolls);
        if rolls != self.rolls_seen {
            self.rolls_seen = rolls;
            self.writer.enforce_retention(0).expect("retention");
        }
    }

    /// `iters` appends and commits, everything included: rolls, the background preparation
    /// they wait for, and the retention pass after each roll. Retention stays timed because a
    /// broker pays it on the writer thread too, and because pausing the clock for it would
    /// hand the preparer (already at work on the next segment) free time.
    fn run_sustained(&mut self, iters: u64) -> Duration {
        let bytes = self.batch.clone();
        let valid = batch::validate(&bytes, usize::MAX).expect("a valid batch");
        let start = Instant::now();
        for _ in 0..iters {
            self.writer.append(valid).expect("append");
            self.writer.commit().expect("commit");
            self.after_roll();
        }
        start.elapsed()
    }

    /// `iters` appends and commits with no roll and no background preparation in the timed
    /// region: before an append that would roll, the clock stops, an extra (uncounted) batch
    /// makes the roll happen, and the clock starts again once the next segment is prepared.
    fn run_noroll(&mut self, iters: u64) -> Duration {
        let bytes = self.batch.clone();
        let valid = batch::validate(&bytes, usize::MAX).expect("a valid batch");
        let len = self.batch.len() as u64;
        let mut elapsed = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            if self.position + len > self.segment_bytes {
                self.writer.append(valid).expect("append");
                self.writer.commit().expect("commit");
                assert_ne!(WriterStats::get(&self.stats.rolls), self.rolls_seen);
                self.position = len;
                self.after_roll();
            }
            wait_for_preparer();
            let fit = ((self.segment_bytes - self.position) / len).min(left);
            let start = Instant::now();
            for _ in 0..fit {
                self.writer.append(valid).expect("append");
                self.writer.commit().expect("commit");
            }
            elapsed += start.elapsed();
            self.position += fit * len;
            left -= fit;
        }
        debug_assert_eq!(WriterStats::get(&self.stats.rolls), self.rolls_seen);
        elapsed
    }
}

fn bench_memcpy(group: &mut BenchmarkGroup<'_, WallTime>, batch: &[u8]) {
    let mut region: Option<(Vec<u8>, usize)> = None;
    group.bench_function("memcpy_1KiB_x100", |b| {
        // Touched once, outside the timing: a segment's pages are populated before appends.
        let (region, position) = region.get_or_insert_with(|| (vec![1u8; MEMCPY_REGION_BYTES], 0));
        b.iter(|| {
            if *position + batch.len() > region.len() {
                *position = 0;
            }
            let to = &mut region[*position..*position + batch.len()];
            to.copy_from_slice(black_box(batch));
            black_box(to.as_ptr());
            *position += batch.len();
        });
    });
}

fn bench_validate(group: &mut BenchmarkGroup<'_, WallTime>, batch: &[u8]) {
    group.bench_function("validate_1KiB_x100", |b| {
        b.iter(|| black_box(batch::validate(black_box(batch), usize::MAX).is_ok()));
    });
}

fn bench_never(group: &mut BenchmarkGroup<'_, WallTime>, id: &str, batch: &[u8], noroll: bool) {
    let mut log: Option<NeverLog> = None;
    group.bench_function(id, |b| {
        let log = log.get_or_insert_with(|| {
            let log = NeverLog::open(Bytes::copy_from_slice(batch));
            // The preparation started by `open` is not part of any measurement.
            wait_for_preparer();
            log
        });
        b.iter_custom(|iters| {
            if noroll {
                log.run_noroll(iters)
            } else {
                log.run_sustained(iters)
            }
        });
    });
    if let Some(log) = log {
        eprintln!(
            "{id}: {} batches, {} rolls",
            WriterStats::get(&log.stats.batches),
            WriterStats::get(&log.stats.rolls)
        );
    }
    // Dropped without `close`: a clean close would flush gigabytes nobody will read.
}

fn bench_always(group: &mut BenchmarkGroup<'_, WallTime>, id: &str, batch: &[u8], writers: usize) {
    let bytes = Bytes::copy_from_slice(batch);
    let mut state: Option<(Committer, TempDir)> = None;
    group.bench_function(id, |b| {
        let (committer, _) = state.get_or_insert_with(|| {
            let dir = temp_dir();
            let config = LogConfig {
                fsync: FsyncPolicy::Always,
                retention_bytes: Some(ALWAYS_RETENTION_BYTES),
                ..LogConfig::default()
            };
            let writer = LogWriter::open(dir.path(), config).expect("open the log");
            wait_for_preparer();
            let committer = Committer::start(writer, usize::MAX).expect("start the committer");
            (committer, dir)
        });
        let handle = committer.handle();
        b.iter_custom(|iters| {
            if writers == 1 {
                let start = Instant::now();
                for _ in 0..iters {
                    handle.append(bytes.clone()).expect("append");
                }
                return start.elapsed();
            }
            // Thread t appends iters / writers batches, plus one if t < iters % writers: the
            // callers share the iterations, so one iteration is still one batch.
            let barrier = Barrier::new(writers + 1);
            std::thread::scope(|scope| {
                for t in 0..writers as u64 {
                    let share = iters / writers as u64 + u64::from(t < iters % writers as u64);
                    let (handle, bytes, barrier) = (handle.clone(), bytes.clone(), &barrier);
                    scope.spawn(move || {
                        barrier.wait();
                        for _ in 0..share {
                            handle.append(bytes.clone()).expect("append");
                        }
                    });
                }
                barrier.wait();
                Instant::now()
            })
            .elapsed()
        });
    });
    if let Some((committer, dir)) = state {
        let stats = committer.stats();
        let batches = WriterStats::get(&stats.batches);
        let flushes = WriterStats::get(&stats.flushes).max(1);
        eprintln!(
            "{id}: {batches} batches, {flushes} flushes ({:.1} batches/flush, {:.0} µs/flush), {} rolls",
            batches as f64 / flushes as f64,
            WriterStats::get(&stats.flush_nanos) as f64 / flushes as f64 / 1e3,
            WriterStats::get(&stats.rolls)
        );
        committer.close().expect("close the log");
        drop(dir);
    }
}

/// Appends `batch` until the log in `dir` holds about `bytes`, and returns the reader.
fn preload(dir: &Path, batch: &[u8], bytes: u64) -> (LogWriter, LogReader) {
    let config = LogConfig {
        segment_bytes: READ_SEGMENT_BYTES,
        fsync: FsyncPolicy::Never,
        ..LogConfig::default()
    };
    let mut writer = LogWriter::open(dir, config).expect("open the log");
    let valid = batch::validate(batch, usize::MAX).expect("a valid batch");
    for _ in 0..bytes.div_ceil(batch.len() as u64) {
        writer.append(valid).expect("append");
    }
    writer.commit().expect("commit");
    let reader = writer.reader();
    (writer, reader)
}

fn bench_read(c: &mut Criterion, batch: &[u8]) {
    let mut group = c.benchmark_group("storage_read");
    group.throughput(Throughput::Bytes(batch.len() as u64));
    // The reader, the next offset to read, and the consumer's reusable buffer: each read is
    // copied into it once, as an encoder copies the bytes into a frame.
    let mut state: Option<(LogReader, u64, Vec<u8>, LogWriter, TempDir)> = None;
    group.bench_function("1KiB_x100", |b| {
        let (reader, offset, sink, _, _) = state.get_or_insert_with(|| {
            let dir = temp_dir();
            let (writer, reader) = preload(dir.path(), batch, READ_LOG_BYTES);
            wait_for_preparer();
            let first = reader.read(0, batch.len()).expect("read").expect("a chunk");
            assert_eq!(first.bytes.len(), batch.len(), "one read is one batch");
            (reader, 0, vec![0u8; batch.len()], writer, dir)
        });
        let max_bytes = batch.len();
        b.iter(|| {
            let chunk = reader
                .read(*offset, max_bytes)
                .expect("read")
                .expect("below the high watermark");
            sink[..chunk.bytes.len()].copy_from_slice(&chunk.bytes);
            black_box(&sink);
            *offset = if chunk.next_offset >= chunk.high_watermark {
                reader.start_offset()
            } else {
                chunk.next_offset
            };
        });
    });
    group.finish();
}

fn storage(c: &mut Criterion) {
    let batch_1kib = encode_batch(RECORDS_1KIB, VALUE_1KIB_BYTES);
    let batch_100b = encode_batch(RECORDS_100B, VALUE_100B_BYTES);
    eprintln!(
        "batch bytes: 1KiB_x100 = {}, 100B_x1000 = {}",
        batch_1kib.len(),
        batch_100b.len()
    );

    let mut group = c.benchmark_group("storage_append");
    group.throughput(Throughput::Bytes(batch_1kib.len() as u64));
    bench_memcpy(&mut group, &batch_1kib);
    bench_validate(&mut group, &batch_1kib);
    // Sustained ids: few, long, equal samples, each spanning several rolls (see the top).
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(SUSTAINED_SAMPLES)
        .warm_up_time(SUSTAINED_WARM_UP)
        .measurement_time(SUSTAINED_MEASUREMENT);
    bench_never(&mut group, "never_1KiB_x100", &batch_1kib, false);
    group.throughput(Throughput::Elements(RECORDS_100B as u64));
    bench_never(&mut group, "never_100B_x1000", &batch_100b, false);
    group
        .sampling_mode(SamplingMode::Auto)
        .sample_size(SAMPLES)
        .warm_up_time(WARM_UP)
        .measurement_time(MEASUREMENT);
    group.throughput(Throughput::Bytes(batch_1kib.len() as u64));
    bench_never(&mut group, "never_1KiB_x100_noroll", &batch_1kib, true);
    bench_always(&mut group, "always_1KiB_x100_1writer", &batch_1kib, 1);
    bench_always(
        &mut group,
        "always_1KiB_x100_8writers",
        &batch_1kib,
        GROUP_WRITERS,
    );
    // One-record publishes, where each durable write is mostly fixed flush cost: what group
    // commit is for. Throughput in records (= batches).
    let batch_1kib_x1 = encode_batch(1, VALUE_1KIB_BYTES);
    group.throughput(Throughput::Elements(1));
    bench_always(&mut group, "always_1KiB_x1_1writer", &batch_1kib_x1, 1);
    bench_always(
        &mut group,
        "always_1KiB_x1_8writers",
        &batch_1kib_x1,
        GROUP_WRITERS,
    );
    group.finish();

    bench_read(c, &batch_1kib);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(SAMPLES)
        .warm_up_time(WARM_UP)
        .measurement_time(MEASUREMENT);
    targets = storage
}
criterion_main!(benches);
