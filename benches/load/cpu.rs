//! CPU time of the broker's processes (`--broker-pid`), to report the broker's CPU per
//! record beside each phase's throughput: a run that goes faster by burning more CPU
//! shows it.

use serde::Serialize;

/// CPU nanoseconds a process has used so far: the sum over its threads of the first
/// field of `/proc/PID/task/TID/schedstat` (time on a CPU, in ns; finer than the 10 ms
/// ticks of `/proc/PID/stat`). Threads that ended before the read are not counted, so
/// short-lived threads are missed; the broker's threads live as long as it does.
pub fn cpu_ns(pid: u32) -> anyhow::Result<u64> {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path().join("schedstat");
        // A thread may end between the listing and the read.
        if let Ok(text) = std::fs::read_to_string(&path)
            && let Some(ns) = text.split_whitespace().next()
        {
            total += ns.parse::<u64>()?;
        }
    }
    Ok(total)
}

/// The CPU of every given process together.
pub fn total_ns(pids: &[u32]) -> anyhow::Result<u64> {
    pids.iter().map(|&p| cpu_ns(p)).sum()
}

/// The brokers' CPU over a run's phases.
#[derive(Debug, Clone, Serialize)]
pub struct BrokerCpu {
    pub pids: Vec<u32>,
    /// CPU seconds while producing (with concurrent consumers, their work too).
    pub produce_phase_s: f64,
    /// CPU seconds after producing ended, until consuming ended.
    pub consume_phase_s: f64,
    /// Broker CPU µs per record produced, over the produce phase.
    pub produce_us_per_record: Option<f64>,
    /// Broker CPU µs per record consumed, over the consume phase (runs with `--preload`
    /// or `--consume-only`, where consuming is a phase of its own).
    pub consume_us_per_record: Option<f64>,
}

impl BrokerCpu {
    pub fn of(
        pids: Vec<u32>,
        [start, produced, consumed]: [u64; 3],
        records_produced: u64,
        records_consumed: Option<u64>,
    ) -> BrokerCpu {
        let produce_ns = produced.saturating_sub(start);
        let consume_ns = consumed.saturating_sub(produced);
        let per = |ns: u64, n: u64| {
            (n > 0).then(|| (ns as f64 / 1e3 / n as f64 * 1000.0).round() / 1000.0)
        };
        BrokerCpu {
            pids,
            produce_phase_s: produce_ns as f64 / 1e9,
            consume_phase_s: consume_ns as f64 / 1e9,
            produce_us_per_record: per(produce_ns, records_produced),
            consume_us_per_record: records_consumed.and_then(|n| per(consume_ns, n)),
        }
    }
}
