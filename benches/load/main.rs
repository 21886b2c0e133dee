//! `herald-load`: a load generator for Herald, NATS JetStream and Redis Streams.
//!
//! N producer tasks publish records whose payload carries (key, sequence, send time); M
//! consumer tasks consume them in a group (or, for Herald with `--consume-mode fetch`, read
//! the partitions by offset), check every key's sequence (duplicates, gaps, losses) and
//! measure end-to-end latency. Publish-ack latency is measured per record.
//! A progress line goes to stderr every second; a summary table to stdout at the end,
//! and with `--json FILE` the same as JSON. See `docs/load-generator.md`.

mod check;
mod cpu;
mod stats;
mod target_herald;
mod target_nats;
mod target_redis;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use clap::Parser;
use serde_json::json;

use crate::stats::{Check, Errors, Latency, Summary, Throughput, Totals};
use crate::workload::{ConsumeMode, Fsync, Generator, GroupOrdering, Quota, Settings, Workload};

/// Load generator for Herald, NATS JetStream and Redis Streams.
#[derive(Parser, Debug, Clone)]
#[command(name = "herald-load", version)]
struct Args {
    /// herald://HOST:PORT, nats://HOST:PORT or redis://HOST:PORT.
    #[arg(long, default_value = "herald://127.0.0.1:50051")]
    target: String,
    /// Producer tasks (each with its own connection).
    #[arg(long, default_value_t = 1)]
    producers: u32,
    /// Consumer tasks (each with its own connection); 0 = publish only.
    #[arg(long, default_value_t = 1)]
    consumers: u32,
    /// Consumer group name (default: herald-load).
    #[arg(long, default_value = "herald-load")]
    group: String,
    /// Topic (Herald), stream (NATS) or stream-name prefix (Redis); default
    /// `load-<unix ms>`. Deleted and created afresh unless --reuse.
    #[arg(long)]
    topic: Option<String>,
    /// Use the topic as it is (do not delete and recreate it).
    #[arg(long)]
    reuse: bool,
    /// Partitions (Herald); Redis streams and NATS subjects the keys are sharded over.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Payload bytes per record (at least 20, the header; the key is extra).
    #[arg(long, default_value_t = 100)]
    record_size: usize,
    /// Records per batch: per Redis pipeline, per group of NATS publishes whose acks are
    /// awaited together, per generator step (Herald; the client batches by bytes and
    /// linger itself). Also the consumers' fetch/read size (NATS, Redis).
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Batches in flight per producer (Redis, NATS; Herald: the client's max_in_flight).
    #[arg(long, default_value_t = 16)]
    in_flight: usize,
    /// Unacked messages per consumer (Herald max_in_flight_messages, NATS max_ack_pending);
    /// the default is Herald's.
    #[arg(long, default_value_t = 4096)]
    consumer_window: u32,
    /// Herald key ordering: messages of one key a consumer may hold unacked at once
    /// (max_in_flight_per_key; it processes each key's messages in the order received).
    #[arg(long, default_value_t = 1)]
    per_key: u32,
    /// Herald group ordering when the run creates the group: `key` (a key's messages one
    /// at a time, in order), `partition` (a partition's one at a time) or `none`.
    #[arg(long, value_enum, default_value_t = GroupOrdering::Key)]
    ordering: GroupOrdering,
    /// Herald consumers ask for one protobuf Delivery per message instead of batched
    /// deliveries (runs sent as their stored batch, acked by range): what a client that
    /// does not decode the storage format gets.
    #[arg(long)]
    single_deliveries: bool,
    /// Herald consumers: `group` (members of --group, acking every message) or `fetch`
    /// (the Fetch RPC: each consumer reads its partitions, `partition % consumers ==
    /// index`, by offset from the earliest record; no group, no acks).
    #[arg(long, value_enum, default_value_t = ConsumeMode::Group)]
    consume_mode: ConsumeMode,
    /// Records per second over all producers (0 = as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Produce for this many seconds (default 10 unless --records is given).
    #[arg(long, conflicts_with = "records")]
    duration: Option<f64>,
    /// Produce this many records in all (with --consume-only: consume this many).
    #[arg(long)]
    records: Option<u64>,
    /// Key cardinality: keys k0..k{N-1}, each owned by one producer.
    #[arg(long, default_value_t = 1000)]
    keys: u32,
    /// never | always | interval:MS | default (leave the target's setting).
    #[arg(long, default_value = "default")]
    fsync: Fsync,
    /// Produce nothing; consume the existing --topic (implies --reuse).
    #[arg(long)]
    consume_only: bool,
    /// Publish N records first (measured as the produce phase), then start the consumers
    /// and measure consuming the preloaded topic alone.
    #[arg(long, conflicts_with_all = ["records", "duration"])]
    preload: Option<u64>,
    /// Write the summary as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Seconds at the start left out of rates and latencies.
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// Consumers stop after this many seconds without a new record once producing ended.
    #[arg(long, default_value_t = 10.0)]
    drain_timeout: f64,
    /// Herald producer linger in ms.
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    /// Herald producers wait the linger before sending even when their partition has
    /// nothing in flight (the client's `send_when_idle(false)`); by default a record for
    /// an idle partition is sent at once.
    #[arg(long)]
    fixed_linger: bool,
    /// Herald records carry a sampled W3C `traceparent` header (a trace per key and
    /// sequence number), for measuring the broker's span export.
    #[arg(long)]
    traceparent: bool,
    /// Exit 0 even if records were lost or errors happened.
    #[arg(long)]
    no_fail: bool,
    /// Delete the topic (stream) at the end.
    #[arg(long)]
    cleanup: bool,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
    /// Herald over TLS, trusting this CA certificate (PEM).
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Herald bearer token (also HERALD_TOKEN).
    #[arg(long, env = "HERALD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The broker's process id (repeat for a cluster's nodes): reports the broker's CPU
    /// per record of each phase, from /proc (the broker must run on this machine).
    #[arg(long = "broker-pid")]
    broker_pids: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Herald,
    Nats,
    Redis,
}

fn parse_target(target: &str) -> anyhow::Result<(Target, String)> {
    let (scheme, rest) = target
        .split_once("://")
        .with_context(|| format!("target {target:?} has no scheme"))?;
    Ok(match scheme {
        "herald" | "http" => (Target::Herald, format!("http://{rest}")),
        "nats" => (Target::Nats, target.to_owned()),
        "redis" => (Target::Redis, target.to_owned()),
        _ => anyhow::bail!("unknown target scheme {scheme:?} (herald, nats or redis)"),
    })
}

async fn prepare(target: Target, wl: &Workload) -> anyhow::Result<()> {
    match target {
        Target::Herald => target_herald::prepare(wl).await,
        Target::Nats => target_nats::prepare(wl).await,
        Target::Redis => target_redis::prepare(wl).await,
    }
}

async fn cleanup(target: Target, wl: &Workload) -> anyhow::Result<()> {
    match target {
        Target::Herald => target_herald::cleanup(wl).await,
        Target::Nats => target_nats::cleanup(wl).await,
        Target::Redis => target_redis::cleanup(wl).await,
    }
}

async fn produce(target: Target, wl: Arc<Workload>, generator: Generator) -> Generator {
    let stats = wl.producers.task();
    let result = match target {
        Target::Herald => target_herald::produce(wl.clone(), generator, stats.clone()).await,
        Target::Nats => target_nats::produce(wl.clone(), generator, stats.clone()).await,
        Target::Redis => target_redis::produce(wl.clone(), generator, stats.clone()).await,
    };
    match result {
        Ok(generator) => generator,
        Err(e) => {
            eprintln!("producer failed: {e:#}");
            stats.error(1);
            wl.stop_producing.store(true, Ordering::Relaxed);
            // The task's generator (its sent counts) is gone: its keys count as not sent,
            // so they are not reported lost; the error fails the run.
            Generator::new(wl.clone(), u32::MAX, Quota::Records(0), 0.0)
        }
    }
}

async fn consume(target: Target, wl: Arc<Workload>, index: u32) {
    let stats = wl.consumers.task();
    let result = match target {
        Target::Herald => target_herald::consume(wl.clone(), index, stats.clone()).await,
        Target::Nats => target_nats::consume(wl.clone(), index, stats.clone()).await,
        Target::Redis => target_redis::consume(wl.clone(), index, stats.clone()).await,
    };
    if let Err(e) = result {
        eprintln!("consumer {index} failed: {e:#}");
        stats.error(1);
    }
}

/// Where a side's measured window starts: its start, or the end of the warm-up.
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    start_ns: u64,
    at_start: Totals,
}

fn throughput(total: Totals, window: Window) -> Throughput {
    let secs = total.last_ns.saturating_sub(window.start_ns) as f64 / 1e9;
    let records = total.records.saturating_sub(window.at_start.records);
    let bytes = total.bytes.saturating_sub(window.at_start.bytes);
    let rate = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    Throughput {
        records: total.records,
        bytes: total.bytes,
        seconds: (secs * 1000.0).round() / 1000.0,
        msgs_per_s: rate(records).round(),
        mb_per_s: (rate(bytes) / 1e6 * 100.0).round() / 100.0,
    }
}

/// Prints a progress line every second until aborted.
async fn progress(wl: Arc<Workload>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let (mut prev_p, mut prev_c) = (Totals::default(), Totals::default());
    let start = Instant::now();
    loop {
        tick.tick().await;
        let (p, c) = (wl.producers.totals(), wl.consumers.totals());
        let p99 = |h: hdrhistogram::Histogram<u64>| {
            if h.is_empty() {
                "-".to_owned()
            } else {
                h.value_at_quantile(0.99).to_string()
            }
        };
        eprintln!(
            "[{:>5.0}s] produced {:>9}/s {:>8.2} MB/s | consumed {:>9}/s {:>8.2} MB/s | p99 µs: publish {:>7} e2e {:>7} | errors {} dup {} ooo {}",
            start.elapsed().as_secs_f64(),
            p.records - prev_p.records,
            (p.bytes - prev_p.bytes) as f64 / 1e6,
            c.records - prev_c.records,
            (c.bytes - prev_c.bytes) as f64 / 1e6,
            p99(wl.producers.histogram()),
            p99(wl.consumers.histogram()),
            p.errors + c.errors,
            c.duplicates,
            c.out_of_order,
        );
        (prev_p, prev_c) = (p, c);
    }
}

/// Waits until the consumers have `target` distinct records, or saw nothing new for
/// `idle`, or `deadline` passed; then tells them to stop.
async fn wait_consumed(
    wl: &Workload,
    target: Option<u64>,
    idle: Duration,
    deadline: Option<Instant>,
) {
    let mut last = (0, Instant::now());
    loop {
        let c = wl.consumers.totals();
        let unique = c.records - c.duplicates - c.malformed;
        if target.is_some_and(|t| unique >= t) || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if c.records != last.0 {
            last = (c.records, Instant::now());
        } else if last.1.elapsed()
            >= if c.records == 0 {
                idle.max(Duration::from_secs(10))
            } else {
                idle
            }
        {
            eprintln!(
                "note: no new record for {:.0} s; stopping the consumers ({unique} distinct consumed{})",
                idle.as_secs_f64(),
                target.map_or(String::new(), |t| format!(" of {t}")),
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wl.stop_consuming.store(true, Ordering::Relaxed);
}

async fn run(args: Args) -> anyhow::Result<Summary> {
    let (target, url) = parse_target(&args.target)?;
    let topic = args.topic.clone().unwrap_or_else(|| {
        let ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        format!("load-{ms}")
    });
    if args.consume_only && args.topic.is_none() {
        anyhow::bail!("--consume-only needs --topic");
    }
    if args.consume_only && args.consumers == 0 {
        anyhow::bail!("--consume-only needs --consumers > 0");
    }
    if args.preload.is_some() && args.consumers == 0 {
        anyhow::bail!("--preload needs --consumers > 0");
    }
    let producers = if args.consume_only {
        0
    } else {
        args.producers.max(1)
    };
    let keys = args.keys.max(producers).max(1);
    if keys != args.keys {
        eprintln!("note: --keys raised to {keys} so that every producer owns a key");
    }
    let partitions = args.partitions.max(1);
    if target != Target::Herald && args.consume_mode == ConsumeMode::Fetch {
        anyhow::bail!("--consume-mode fetch is for Herald targets only");
    }
    if (target != Target::Herald || args.consume_mode == ConsumeMode::Fetch)
        && args.consumers > partitions
    {
        eprintln!(
            "note: {} consumers but {partitions} partitions (streams/subjects): {} consumers stay idle",
            args.consumers,
            args.consumers - partitions
        );
    }
    let tls_ca = match &args.tls_ca {
        Some(path) => {
            Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
        }
        None => None,
    };
    let url = match (&tls_ca, url.strip_prefix("http://")) {
        (Some(_), Some(rest)) => format!("https://{rest}"),
        _ => url,
    };
    let settings = Settings {
        url,
        tls_ca,
        token: args.token.clone(),
        topic: topic.clone(),
        group: args.group.clone(),
        partitions,
        producers,
        consumers: args.consumers,
        record_size: args.record_size.max(check::HEADER_LEN),
        batch_size: args.batch_size.max(1),
        in_flight: args.in_flight.max(1),
        consumer_window: args.consumer_window.max(1),
        per_key: args.per_key.max(1),
        ordering: args.ordering,
        single_deliveries: args.single_deliveries,
        consume_mode: args.consume_mode,
        keys,
        fsync: args.fsync,
        reuse: args.reuse || args.consume_only,
        linger: Duration::from_millis(args.linger_ms),
        fixed_linger: args.fixed_linger,
        traceparent: args.traceparent,
    };
    let settings_json = json!({
        "target": args.target,
        "topic": topic,
        "group": args.group,
        "partitions": partitions,
        "producers": producers,
        "consumers": args.consumers,
        "record_size": settings.record_size,
        "batch_size": settings.batch_size,
        "in_flight": settings.in_flight,
        "consumer_window": settings.consumer_window,
        "per_key": settings.per_key,
        "ordering": format!("{:?}", args.ordering).to_lowercase(),
        "single_deliveries": args.single_deliveries,
        "consume_mode": format!("{:?}", args.consume_mode).to_lowercase(),
        "rate": args.rate,
        "duration_s": args.duration,
        "records": args.records,
        "preload": args.preload,
        "consume_only": args.consume_only,
        "keys": keys,
        "fsync": args.fsync.to_string(),
        "warmup_s": args.warmup,
        "linger_ms": args.linger_ms,
        "fixed_linger": args.fixed_linger,
        "traceparent": args.traceparent,
    });
    let wl = Arc::new(Workload::new(settings));
    prepare(target, &wl).await.context("preparing the target")?;

    let progress = (!args.quiet).then(|| tokio::spawn(progress(wl.clone())));
    {
        let wl = wl.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("interrupted: stopping the producers (again to stop consuming)");
                wl.stop_producing.store(true, Ordering::Relaxed);
                if tokio::signal::ctrl_c().await.is_ok() {
                    wl.stop_consuming.store(true, Ordering::Relaxed);
                }
            }
        });
    }

    let concurrent = args.consumers > 0 && args.preload.is_none() && !args.consume_only;
    wl.record_e2e.store(concurrent, Ordering::Relaxed);
    let mut consumer_tasks = Vec::new();
    let spawn_consumers = |tasks: &mut Vec<tokio::task::JoinHandle<()>>| {
        for i in 0..args.consumers {
            tasks.push(tokio::spawn(consume(target, wl.clone(), i)));
        }
    };
    if concurrent || args.consume_only {
        spawn_consumers(&mut consumer_tasks);
    }

    // Warm-up: at its end, snapshot the counters and clear the histograms.
    let warmup = Duration::from_secs_f64(args.warmup.max(0.0));
    let windows = {
        let wl = wl.clone();
        tokio::spawn(async move {
            let mut p = Window::default();
            let mut c = Window::default();
            if !warmup.is_zero() {
                tokio::time::sleep(warmup).await;
                wl.producers.reset_histograms();
                wl.consumers.reset_histograms();
                let now = wl.now_ns();
                p = Window {
                    start_ns: now,
                    at_start: wl.producers.totals(),
                };
                c = Window {
                    start_ns: now,
                    at_start: wl.consumers.totals(),
                };
            }
            (p, c)
        })
    };

    // Produce.
    let cpu_at = || {
        (!args.broker_pids.is_empty())
            .then(|| cpu::total_ns(&args.broker_pids))
            .transpose()
    };
    let cpu_start = cpu_at().context("reading the broker's CPU time")?;
    let mut sent = vec![0u64; keys as usize];
    let mut produce_window = Window {
        start_ns: wl.now_ns(),
        ..Window::default()
    };
    if producers > 0 {
        let rate = args.rate as f64 / f64::from(producers);
        let total = args.preload.or(args.records);
        let until = Instant::now() + Duration::from_secs_f64(args.duration.unwrap_or(10.0));
        let mut tasks = Vec::new();
        for i in 0..producers {
            let quota = match total {
                Some(total) => Quota::Records(
                    total / u64::from(producers)
                        + u64::from(u64::from(i) < total % u64::from(producers)),
                ),
                None => Quota::Until(until),
            };
            let generator = Generator::new(wl.clone(), i, quota, rate);
            tasks.push(tokio::spawn(produce(target, wl.clone(), generator)));
        }
        for task in tasks {
            let generator = task.await.context("a producer task panicked")?;
            for (key, n) in generator.sent_per_key() {
                sent[key as usize] = n;
            }
        }
    }
    let p_total = wl.producers.totals();
    let cpu_produced = cpu_at().context("reading the broker's CPU time")?;
    let failed = std::mem::take(&mut *wl.failed.lock().unwrap_or_else(|e| e.into_inner()));
    let n_failed: u64 = failed.values().map(|v| v.len() as u64).sum();
    let acked = sent.iter().sum::<u64>() - n_failed;

    // Consume (or finish consuming).
    let mut consume_window = Window {
        start_ns: produce_window.start_ns,
        ..Window::default()
    };
    if args.consumers > 0 {
        if args.preload.is_some() {
            consume_window.start_ns = wl.now_ns();
            spawn_consumers(&mut consumer_tasks);
        }
        let idle = Duration::from_secs_f64(args.drain_timeout.max(0.1));
        if args.consume_only {
            let deadline = args
                .duration
                .map(|d| Instant::now() + Duration::from_secs_f64(d));
            wait_consumed(&wl, args.records, idle, deadline).await;
        } else {
            wait_consumed(&wl, Some(acked), idle, None).await;
        }
        for task in consumer_tasks {
            task.await.context("a consumer task panicked")?;
        }
    }
    let cpu_consumed = cpu_at().context("reading the broker's CPU time")?;
    if let Some(progress) = progress {
        progress.abort();
    }

    if !windows.is_finished() {
        windows.abort();
        if !warmup.is_zero() {
            eprintln!("note: the run was shorter than the warm-up; nothing is left out");
        }
    }
    let (pw, cw) = windows.await.unwrap_or_default();
    if !warmup.is_zero() && pw.start_ns > 0 {
        produce_window = pw;
        if concurrent {
            consume_window = cw;
        }
    }
    if args.cleanup
        && let Err(e) = cleanup(target, &wl).await
    {
        eprintln!("note: cleanup failed: {e:#}");
    }
    let c_total = wl.consumers.totals();
    let broker_cpu = match (cpu_start, cpu_produced, cpu_consumed) {
        (Some(start), Some(produced), Some(consumed)) => Some(cpu::BrokerCpu::of(
            args.broker_pids.clone(),
            [start, produced, consumed],
            p_total.records,
            (args.consumers > 0 && !concurrent).then_some(c_total.records),
        )),
        _ => None,
    };
    let lost = (args.consumers > 0 && !args.consume_only).then(|| wl.checker.lost(&sent, &failed));
    let errors = Errors {
        publish: p_total.errors,
        consume: c_total.errors,
        total: p_total.errors + c_total.errors,
    };
    let check = Check {
        lost,
        duplicates: c_total.duplicates,
        out_of_order: c_total.out_of_order,
        malformed: c_total.malformed,
        unique_consumed: c_total.records - c_total.duplicates - c_total.malformed,
    };
    let ok = errors.total == 0
        && lost.unwrap_or(0) == 0
        && check.duplicates == 0
        && check.out_of_order == 0
        && check.malformed == 0;
    Ok(Summary {
        target: args.target.clone(),
        settings: settings_json,
        produced: (producers > 0).then(|| throughput(p_total, produce_window)),
        consumed: (args.consumers > 0).then(|| throughput(c_total, consume_window)),
        publish_latency_us: Latency::of(&wl.producers.histogram()),
        e2e_latency_us: concurrent
            .then(|| Latency::of(&wl.consumers.histogram()))
            .flatten(),
        errors,
        check,
        broker_cpu,
        ok,
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald-load: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let summary = match runtime.block_on(run(args.clone())) {
        Ok(summary) => summary,
        Err(e) => {
            eprintln!("herald-load: {e:#}");
            return ExitCode::from(2);
        }
    };
    print!("{}", summary.table());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&summary).expect("a summary serializes");
        if let Err(e) = std::fs::write(path, text + "\n") {
            eprintln!("herald-load: writing {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    // Don't wait for tasks still parked in client libraries.
    runtime.shutdown_timeout(Duration::from_secs(1));
    if summary.ok || args.no_fail {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
