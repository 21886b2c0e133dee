//! What every target shares: the run's settings, the record generator each producer task
//! pulls batches from, and the hooks producers and consumers report to.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::check::{self, Checker, Seen};
use crate::stats::{Side, TaskStats};

/// Herald group ordering asked for on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GroupOrdering {
    Key,
    Partition,
    None,
}

/// How Herald consumers read the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConsumeMode {
    /// Members of one consumer group, acking every message.
    Group,
    /// The `Fetch` RPC: each consumer reads its share of the partitions by offset from the
    /// earliest record, with no group and nothing acked or committed.
    Fetch,
}

/// Fsync setting asked for on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Leave the target's setting alone.
    Default,
    Never,
    Always,
    IntervalMs(u32),
}

impl std::str::FromStr for Fsync {
    type Err = String;
    fn from_str(s: &str) -> Result<Fsync, String> {
        match s {
            "default" => Ok(Fsync::Default),
            "never" => Ok(Fsync::Never),
            "always" => Ok(Fsync::Always),
            _ => s
                .strip_prefix("interval:")
                .and_then(|ms| ms.parse().ok())
                .map(Fsync::IntervalMs)
                .ok_or_else(|| format!("expected never|always|interval:MS|default, got {s:?}")),
        }
    }
}

impl std::fmt::Display for Fsync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fsync::Default => f.write_str("default"),
            Fsync::Never => f.write_str("never"),
            Fsync::Always => f.write_str("always"),
            Fsync::IntervalMs(ms) => write!(f, "interval:{ms}"),
        }
    }
}

/// The settings every target reads.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The address as the target's client wants it (e.g. `http://…` for Herald).
    pub url: String,
    /// Herald: the CA certificate (PEM) to trust over TLS.
    pub tls_ca: Option<Vec<u8>>,
    /// Herald: the bearer token.
    pub token: Option<String>,
    pub topic: String,
    pub group: String,
    pub partitions: u32,
    pub producers: u32,
    pub consumers: u32,
    pub record_size: usize,
    pub batch_size: usize,
    /// Batches (Redis, NATS) a producer has in flight at most.
    pub in_flight: usize,
    /// Unacked messages a consumer may hold (Herald window, NATS max_ack_pending).
    pub consumer_window: u32,
    /// Herald key ordering: messages of one key a consumer may hold unacked at once.
    pub per_key: u32,
    /// Herald group ordering (when the run creates the group).
    pub ordering: GroupOrdering,
    /// Herald consumers take one Delivery per message instead of batched deliveries.
    pub single_deliveries: bool,
    /// Herald consumers: a group, or offset reads (`Fetch`).
    pub consume_mode: ConsumeMode,
    pub keys: u32,
    pub fsync: Fsync,
    pub reuse: bool,
    /// Herald producer linger.
    pub linger: Duration,
    /// Herald producers wait `linger` even when nothing is in flight (no adaptive batching).
    pub fixed_linger: bool,
    /// Herald records carry a sampled `traceparent`.
    pub traceparent: bool,
}

/// State shared by all tasks of a run.
#[derive(Debug)]
pub struct Workload {
    pub settings: Settings,
    /// The time base of every send time in a payload.
    pub base: Instant,
    pub producers: Side,
    pub consumers: Side,
    pub checker: Checker,
    /// Publishes that failed: key → sequences.
    pub failed: Mutex<HashMap<u32, Vec<u64>>>,
    /// Producer tasks stop generating once set (duration elapsed, Ctrl-C).
    pub stop_producing: AtomicBool,
    /// Consumer tasks return once set.
    pub stop_consuming: AtomicBool,
    /// Whether consumers record end-to-end latency (only when both sides run together).
    pub record_e2e: AtomicBool,
}

/// A consumer not measuring end-to-end latency reads the clock once per this many
/// records (see `Workload::on_message`).
const CLOCK_EVERY: u64 = 64;

impl Workload {
    pub fn new(settings: Settings) -> Workload {
        let keys = settings.keys;
        Workload {
            settings,
            base: Instant::now(),
            producers: Side::default(),
            consumers: Side::default(),
            checker: Checker::new(keys),
            failed: Mutex::new(HashMap::new()),
            stop_producing: AtomicBool::new(false),
            stop_consuming: AtomicBool::new(false),
            record_e2e: AtomicBool::new(false),
        }
    }

    /// Now, in ns since the time base.
    pub fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    pub fn consuming_stopped(&self) -> bool {
        self.stop_consuming.load(Ordering::Relaxed)
    }

    /// The partition (Redis stream, NATS subject) a key goes to on targets where the load
    /// generator shards keys itself.
    pub fn partition_of(&self, key: u32) -> u32 {
        key % self.settings.partitions.max(1)
    }

    /// The partitions consumer `index` reads on targets without group rebalancing
    /// (Redis, NATS): a static assignment, `partition % consumers == index`.
    pub fn partitions_of_consumer(&self, index: u32) -> Vec<u32> {
        self.partitions_of_consumer_in(index, self.settings.partitions)
    }

    /// The same assignment over a topic of `partitions` partitions (Herald's Fetch mode
    /// reads a reused topic with the partition count it really has).
    pub fn partitions_of_consumer_in(&self, index: u32, partitions: u32) -> Vec<u32> {
        (0..partitions)
            .filter(|p| p % self.settings.consumers.max(1) == index)
            .collect()
    }

    /// A consumer's hook for one received payload. Returns whether it was a valid record.
    pub fn on_message(&self, stats: &TaskStats, payload: &[u8], e2e: &mut Vec<u64>) {
        let record_e2e = self.record_e2e.load(Ordering::Relaxed);
        let seen = stats.records.load(Ordering::Relaxed);
        // Without end-to-end latencies the clock only dates the consumer's last record
        // (the end of the measured window), so it is read for every 64th record: reading
        // it for each was 8 % of a 100 B consumer's CPU, a cost Iggy's bench client does
        // not pay. The window's end is then early by at most 63 records (about 30 µs at
        // 2 M records/s, in a window of a second or more).
        let now = if record_e2e || seen % CLOCK_EVERY == 0 {
            let now = self.now_ns();
            stats.add(1, payload.len() as u64, now);
            now
        } else {
            stats.add_undated(1, payload.len() as u64);
            0
        };
        let Some((key, seq, sent)) = check::read_header(payload) else {
            stats.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match self.checker.observe(key, seq) {
            Seen::InOrder => {}
            Seen::Duplicate => {
                stats.duplicates.fetch_add(1, Ordering::Relaxed);
            }
            Seen::OutOfOrder => {
                stats.out_of_order.fetch_add(1, Ordering::Relaxed);
            }
            Seen::Malformed => {
                stats.malformed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        if record_e2e {
            e2e.push(now.saturating_sub(sent) / 1000);
        }
    }

    /// A producer's hook for records whose publish failed.
    pub fn on_failed(&self, stats: &TaskStats, records: &[(u32, u64)]) {
        stats.error(records.len() as u64);
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        for &(key, seq) in records {
            failed.entry(key).or_default().push(seq);
        }
    }
}

/// One record about to be sent.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub key: u32,
    pub seq: u64,
    /// Send time written in the header, ns since the time base.
    pub sent_ns: u64,
    pub payload: Bytes,
}

/// How much a producer task produces.
#[derive(Debug, Clone, Copy)]
pub enum Quota {
    Records(u64),
    Until(Instant),
}

/// The records of one producer task: the keys it owns (`key % producers == index`, so each
/// key has one producer and its sequence numbers are sent in order), round-robin over
/// them, paced by the rate limit.
#[derive(Debug)]
pub struct Generator {
    wl: Arc<Workload>,
    keys: Vec<u32>,
    seqs: Vec<u64>,
    next_key: usize,
    quota: Quota,
    made: u64,
    /// Records per second for this task (0: as fast as possible).
    rate: f64,
    started: Instant,
}

impl Generator {
    pub fn new(wl: Arc<Workload>, index: u32, quota: Quota, rate: f64) -> Generator {
        let producers = wl.settings.producers.max(1);
        let keys: Vec<u32> = (0..wl.settings.keys)
            .filter(|k| k % producers == index)
            .collect();
        let seqs = vec![0; keys.len()];
        Generator {
            wl,
            keys,
            seqs,
            next_key: 0,
            quota,
            made: 0,
            rate,
            started: Instant::now(),
        }
    }

    /// The next batch of up to `batch_size` records, waiting for the rate limiter; `None`
    /// when the quota is met or producing was stopped.
    pub async fn next_batch(&mut self) -> Option<Vec<Outgoing>> {
        if self.keys.is_empty() || self.wl.stop_producing.load(Ordering::Relaxed) {
            return None;
        }
        let mut n = self.wl.settings.batch_size.max(1) as u64;
        match self.quota {
            Quota::Records(total) => n = n.min(total.saturating_sub(self.made)),
            Quota::Until(deadline) => {
                if Instant::now() >= deadline {
                    return None;
                }
            }
        }
        if n == 0 {
            return None;
        }
        if self.rate > 0.0 {
            // Token bucket without burst credit: the batch is due when the records before
            // it have had their time; if the task is behind, it sends at once.
            let due = self.started + Duration::from_secs_f64(self.made as f64 / self.rate);
            tokio::time::sleep_until(due.into()).await;
            if self.wl.stop_producing.load(Ordering::Relaxed) {
                return None;
            }
        }
        let size = self.wl.settings.record_size.max(check::HEADER_LEN);
        let mut buf = BytesMut::zeroed(size * n as usize);
        let now = self.wl.now_ns();
        let mut meta = Vec::with_capacity(n as usize);
        for chunk in buf.chunks_mut(size) {
            let slot = self.next_key;
            self.next_key = (self.next_key + 1) % self.keys.len();
            let (key, seq) = (self.keys[slot], self.seqs[slot]);
            self.seqs[slot] += 1;
            check::write_header(chunk, key, seq, now);
            meta.push((key, seq));
        }
        self.made += n;
        let mut payloads = buf.freeze();
        let out = meta
            .into_iter()
            .map(|(key, seq)| Outgoing {
                key,
                seq,
                sent_ns: now,
                payload: payloads.split_to(size),
            })
            .collect();
        Some(out)
    }

    /// Records made so far per key: `(key, count)`.
    pub fn sent_per_key(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.keys.iter().copied().zip(self.seqs.iter().copied())
    }
}

/// The next item of a consumer's stream, or `None` after 100 ms without one (so the
/// caller can look at the stop flag). A ready item is taken without arming a timer.
pub async fn next_or_idle<S>(stream: &mut S) -> Option<Option<S::Item>>
where
    S: futures::Stream + Unpin,
{
    use futures::{FutureExt, StreamExt};
    if let Some(item) = stream.next().now_or_never() {
        return Some(item);
    }
    tokio::time::timeout(Duration::from_millis(100), stream.next())
        .await
        .ok()
}
