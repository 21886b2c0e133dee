//! Counters and latency histograms, and the summary printed at the end.
//!
//! Each producer and consumer task owns a [`TaskStats`]: atomics only it writes and a
//! histogram behind a mutex only it and the once-a-second reporter take, so the hot path
//! never contends. The reporter sums and merges them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies are recorded in µs, up to 10 minutes, with 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// The counters of one task.
#[derive(Debug)]
pub struct TaskStats {
    /// Records acknowledged (producers) or consumed (consumers), duplicates included.
    pub records: AtomicU64,
    /// Payload bytes of those records.
    pub bytes: AtomicU64,
    /// Errors: failed publishes, failed acks, stream errors.
    pub errors: AtomicU64,
    /// Consumers: records consumed a second time.
    pub duplicates: AtomicU64,
    /// Consumers: records ahead of their key's next sequence, or late into a gap.
    pub out_of_order: AtomicU64,
    /// Consumers: payloads without a valid header.
    pub malformed: AtomicU64,
    /// When the task last counted a record (ns since the time base).
    pub last_ns: AtomicU64,
    /// Publish-ack latency (producers) or end-to-end latency (consumers), in µs.
    pub latency: Mutex<Histogram<u64>>,
}

impl TaskStats {
    fn new() -> TaskStats {
        TaskStats {
            records: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            last_ns: AtomicU64::new(0),
            latency: Mutex::new(new_histogram()),
        }
    }

    /// Adds `n` records of `bytes` in total, at `now_ns`.
    pub fn add(&self, n: u64, bytes: u64, now_ns: u64) {
        self.add_undated(n, bytes);
        self.last_ns.fetch_max(now_ns, Ordering::Relaxed);
    }

    /// Counts `n` records of `bytes` without moving the time of the last one.
    pub fn add_undated(&self, n: u64, bytes: u64) {
        self.records.fetch_add(n, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts `n` errors.
    pub fn error(&self, n: u64) {
        self.errors.fetch_add(n, Ordering::Relaxed);
    }

    /// Records latencies in µs.
    pub fn latencies(&self, values_us: impl IntoIterator<Item = u64>) {
        let mut h = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        for v in values_us {
            h.saturating_record(v.max(1));
        }
    }
}

/// The tasks of one side (producers or consumers).
#[derive(Debug, Default)]
pub struct Side {
    tasks: Mutex<Vec<Arc<TaskStats>>>,
}

/// Totals of one side at one moment.
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    pub records: u64,
    pub bytes: u64,
    pub errors: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub malformed: u64,
    pub last_ns: u64,
}

impl Side {
    /// A new task's counters.
    pub fn task(&self) -> Arc<TaskStats> {
        let t = Arc::new(TaskStats::new());
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(t.clone());
        t
    }

    fn each(&self) -> Vec<Arc<TaskStats>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for s in self.each() {
            t.records += s.records.load(Ordering::Relaxed);
            t.bytes += s.bytes.load(Ordering::Relaxed);
            t.errors += s.errors.load(Ordering::Relaxed);
            t.duplicates += s.duplicates.load(Ordering::Relaxed);
            t.out_of_order += s.out_of_order.load(Ordering::Relaxed);
            t.malformed += s.malformed.load(Ordering::Relaxed);
            t.last_ns = t.last_ns.max(s.last_ns.load(Ordering::Relaxed));
        }
        t
    }

    /// All tasks' latencies merged.
    pub fn histogram(&self) -> Histogram<u64> {
        let mut merged = new_histogram();
        for s in self.each() {
            let h = s.latency.lock().unwrap_or_else(|e| e.into_inner());
            merged.add(&*h).expect("same bounds");
        }
        merged
    }

    /// Clears every latency histogram (end of the warm-up).
    pub fn reset_histograms(&self) {
        for s in self.each() {
            s.latency.lock().unwrap_or_else(|e| e.into_inner()).reset();
        }
    }
}

/// Latency percentiles in µs.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Option<Latency> {
        (!h.is_empty()).then(|| Latency {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: (h.mean() * 10.0).round() / 10.0,
        })
    }
}

/// Throughput of one side over its measured window.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// Records in the whole run (warm-up included).
    pub records: u64,
    /// Payload bytes in the whole run.
    pub bytes: u64,
    /// Length of the measured window (after the warm-up), in seconds.
    pub seconds: f64,
    pub msgs_per_s: f64,
    pub mb_per_s: f64,
}

/// Correctness of what was consumed.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Acknowledged records never consumed; `None` when it cannot be known (no consumers,
    /// or `--consume-only`).
    pub lost: Option<u64>,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub malformed: u64,
    /// Distinct records consumed.
    pub unique_consumed: u64,
}

/// Errors by side.
#[derive(Debug, Clone, Serialize)]
pub struct Errors {
    pub publish: u64,
    pub consume: u64,
    pub total: u64,
}

/// Everything the run measured; printed as a table and written with `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub target: String,
    pub settings: serde_json::Value,
    pub produced: Option<Throughput>,
    pub consumed: Option<Throughput>,
    /// From just before a record is handed to the client to its acknowledgement.
    pub publish_latency_us: Option<Latency>,
    /// From just before a record is handed to the producer client to its arrival at a
    /// consumer. Only when producing and consuming run at the same time.
    pub e2e_latency_us: Option<Latency>,
    pub errors: Errors,
    pub check: Check,
    /// The broker's CPU per record, with `--broker-pid`.
    pub broker_cpu: Option<crate::cpu::BrokerCpu>,
    /// No errors, nothing lost, duplicated, out of order or malformed.
    pub ok: bool,
}

fn fmt_lat(l: &Option<Latency>) -> [String; 5] {
    match l {
        None => std::array::from_fn(|_| "-".to_owned()),
        Some(l) => [l.p50, l.p90, l.p99, l.p999, l.max].map(|v| v.to_string()),
    }
}

impl Summary {
    /// The human table.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "herald-load summary: {}", self.target);
        let _ = writeln!(
            s,
            "{:<10} {:>12} {:>14} {:>12} {:>10} {:>8}",
            "", "records", "bytes", "msgs/s", "MB/s", "secs"
        );
        for (name, t) in [("produced", &self.produced), ("consumed", &self.consumed)] {
            match t {
                Some(t) => {
                    let _ = writeln!(
                        s,
                        "{:<10} {:>12} {:>14} {:>12.0} {:>10.2} {:>8.2}",
                        name, t.records, t.bytes, t.msgs_per_s, t.mb_per_s, t.seconds
                    );
                }
                None => {
                    let _ = writeln!(s, "{name:<10} {:>12}", "-");
                }
            }
        }
        let _ = writeln!(
            s,
            "{:<14} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "latency (µs)", "p50", "p90", "p99", "p99.9", "max"
        );
        for (name, l) in [
            ("publish-ack", &self.publish_latency_us),
            ("end-to-end", &self.e2e_latency_us),
        ] {
            let [a, b, c, d, e] = fmt_lat(l);
            let _ = writeln!(s, "{name:<14} {a:>9} {b:>9} {c:>9} {d:>9} {e:>9}");
        }
        if let Some(cpu) = &self.broker_cpu {
            let us = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
            let _ = writeln!(
                s,
                "broker CPU: produce phase {:.2} s ({} µs/record), consume phase {:.2} s ({} µs/record)",
                cpu.produce_phase_s,
                us(cpu.produce_us_per_record),
                cpu.consume_phase_s,
                us(cpu.consume_us_per_record)
            );
        }
        let c = &self.check;
        let lost = c.lost.map_or("n/a".to_owned(), |l| l.to_string());
        let _ = writeln!(
            s,
            "errors: publish {} consume {}   lost {}  duplicates {}  out-of-order {}  malformed {}   => {}",
            self.errors.publish,
            self.errors.consume,
            lost,
            c.duplicates,
            c.out_of_order,
            c.malformed,
            if self.ok { "OK" } else { "FAILED" }
        );
        s
    }
}
