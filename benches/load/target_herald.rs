//! Herald through the `herald-client` crate: `Producer` (batched, pipelined over one
//! `PublishStream` per producer task), and group `Consumer`s with per-message acks or
//! (`--consume-mode fetch`) offset reads with `Fetch`, one call per partition.
//!
//! All Herald-specific code is here, so switching to another producer API touches only
//! this file.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use herald_client::{
    BatchDelivery, Client, ConsumerConfig, Error, FetchConfig, FsyncPolicy, GroupSettings,
    OrderingMode, Position, ProducerConfig, Record, TopicConfig,
};
use tokio::sync::mpsc;

use crate::stats::TaskStats;
use crate::workload::{ConsumeMode, Fsync, Generator, GroupOrdering, Workload, next_or_idle};

/// Batches a producer task awaits at once at most (beyond the client's own byte budget).
const MAX_PENDING_BATCHES: usize = 4096;

async fn connect(wl: &Workload) -> anyhow::Result<Client> {
    let mut builder =
        Client::builder(wl.settings.url.clone()).request_timeout(Duration::from_secs(30));
    if let Some(ca) = &wl.settings.tls_ca {
        builder = builder.tls_ca_pem(ca);
    }
    if let Some(token) = &wl.settings.token {
        builder = builder.token(token.clone());
    }
    builder
        .connect()
        .await
        .with_context(|| format!("connecting to {}", wl.settings.url))
}

/// Creates the topic (deleting an old one of the same name unless `--reuse`).
pub async fn prepare(wl: &Workload) -> anyhow::Result<()> {
    let s = &wl.settings;
    let admin = connect(wl).await?.admin();
    let exists = match admin.describe_topic(&s.topic).await {
        Ok(info) => Some(info.partition_count),
        Err(Error::NotFound(_)) => None,
        Err(e) => return Err(e).context("describing the topic"),
    };
    match exists {
        Some(partitions) if s.reuse => {
            if partitions != s.partitions {
                eprintln!(
                    "note: reusing topic {:?} with {partitions} partitions (not {})",
                    s.topic, s.partitions
                );
            }
            return Ok(());
        }
        Some(_) => admin
            .delete_topic(&s.topic)
            .await
            .context("deleting the old topic")?,
        None => {}
    }
    let (fsync_policy, fsync_interval_ms) = match s.fsync {
        Fsync::Default => (None, None),
        Fsync::Never => (Some(FsyncPolicy::Never), None),
        Fsync::Always => (Some(FsyncPolicy::Always), None),
        Fsync::IntervalMs(ms) => (Some(FsyncPolicy::Interval), Some(ms)),
    };
    let config = TopicConfig {
        fsync_policy,
        fsync_interval_ms,
        ..TopicConfig::default()
    };
    admin
        .create_topic(&s.topic, s.partitions, config)
        .await
        .context("creating the topic")?;
    Ok(())
}

/// Deletes the topic (`--cleanup`).
pub async fn cleanup(wl: &Workload) -> anyhow::Result<()> {
    let admin = connect(wl).await?.admin();
    admin
        .delete_topic(&wl.settings.topic)
        .await
        .context("deleting the topic")
}

type Pending = (u32, u64, u64, usize);

/// One producer task: its own connection and `Producer`; a drain task awaits the
/// deliveries so that sending never waits for acks (only for the client's byte budget).
pub async fn produce(
    wl: Arc<Workload>,
    mut generator: Generator,
    stats: Arc<TaskStats>,
) -> anyhow::Result<Generator> {
    let client = connect(&wl).await?;
    let producer = client.producer(
        ProducerConfig::new(wl.settings.topic.clone())
            .linger(wl.settings.linger)
            .send_when_idle(!wl.settings.fixed_linger)
            .max_in_flight(wl.settings.in_flight),
    );
    let keys: Vec<Bytes> = (0..wl.settings.keys)
        .map(|k| Bytes::from(format!("k{k}")))
        .collect();
    // One `send_all` per generated batch: one future for the batch, not one per record.
    let (tx, rx) = mpsc::channel::<(BatchDelivery, Vec<Pending>)>(16);
    let drain = tokio::spawn(drain(wl.clone(), stats.clone(), rx));
    while let Some(batch) = generator.next_batch().await {
        let mut meta = Vec::with_capacity(batch.len());
        let mut records = Vec::with_capacity(batch.len());
        for out in batch {
            meta.push((out.key, out.seq, out.sent_ns, out.payload.len()));
            let record = Record::new(out.payload).key(keys[out.key as usize].clone());
            records.push(if wl.settings.traceparent {
                record.traceparent(format!(
                    "00-{:016x}{:016x}-{:016x}-01",
                    u64::from(out.key) + 1,
                    out.seq,
                    out.seq + 1
                ))
            } else {
                record
            });
        }
        match producer.send_all(records).await {
            Ok(delivery) => {
                if tx.send((delivery, meta)).await.is_err() {
                    anyhow::bail!("the delivery drain task ended early");
                }
            }
            Err(e) => {
                if stats.errors.load(std::sync::atomic::Ordering::Relaxed) == 0 {
                    eprintln!("herald: send failed: {e}");
                }
                let failed: Vec<(u32, u64)> = meta.iter().map(|m| (m.0, m.1)).collect();
                wl.on_failed(&stats, &failed);
            }
        }
    }
    drop(tx);
    if let Err(e) = producer.close().await {
        eprintln!("herald: closing the producer: {e}");
        stats.error(1);
    }
    drain.await.context("the delivery drain task panicked")?;
    Ok(generator)
}

async fn drain(
    wl: Arc<Workload>,
    stats: Arc<TaskStats>,
    mut rx: mpsc::Receiver<(BatchDelivery, Vec<Pending>)>,
) {
    let mut pending = FuturesUnordered::new();
    let mut open = true;
    let mut latencies = Vec::with_capacity(1024);
    loop {
        tokio::select! {
            biased;
            Some(done) = pending.next(), if !pending.is_empty() => {
                let (result, meta): (herald_client::Result<Vec<herald_client::Acked>>, Vec<Pending>) = done;
                let now = wl.now_ns();
                match result {
                    Ok(_) => {
                        for (_, _, sent_ns, len) in meta {
                            stats.add(1, len as u64, now);
                            latencies.push(now.saturating_sub(sent_ns) / 1000);
                        }
                        if latencies.len() >= 1024 {
                            stats.latencies(latencies.drain(..));
                        }
                    }
                    Err(e) => {
                        if stats.errors.load(std::sync::atomic::Ordering::Relaxed) == 0 {
                            eprintln!("herald: publish failed: {e}");
                        }
                        let failed: Vec<(u32, u64)> =
                            meta.iter().map(|m: &Pending| (m.0, m.1)).collect();
                        wl.on_failed(&stats, &failed);
                    }
                }
            }
            item = rx.recv(), if open && pending.len() < MAX_PENDING_BATCHES => match item {
                Some((delivery, meta)) => pending.push(async move { (delivery.await, meta) }),
                None => open = false,
            },
            else => break,
        }
    }
    stats.latencies(latencies);
}

/// One consumer task, as `--consume-mode` says.
pub async fn consume(wl: Arc<Workload>, index: u32, stats: Arc<TaskStats>) -> anyhow::Result<()> {
    match wl.settings.consume_mode {
        ConsumeMode::Group => consume_group(wl, index, stats).await,
        ConsumeMode::Fetch => consume_fetch(wl, index, stats).await,
    }
}

/// One consumer task reading its partitions (`partition % consumers == index`) with one
/// following `Fetch` each, from the earliest offset, over one connection. Following, so
/// that it also reads what producers publish while it runs; like a group consumer it
/// stops when the run says so (the target count reached, or nothing new for the drain
/// timeout). A key lives in one partition, so per-key order holds within each call.
async fn consume_fetch(wl: Arc<Workload>, index: u32, stats: Arc<TaskStats>) -> anyhow::Result<()> {
    let client = connect(&wl).await?;
    // A reused topic is read with the partitions it has, not those asked for.
    let partitions = client
        .admin()
        .describe_topic(&wl.settings.topic)
        .await
        .context("describing the topic")?
        .partition_count;
    let mut calls = Vec::new();
    for partition in wl.partitions_of_consumer_in(index, partitions) {
        let config = FetchConfig::new(wl.settings.topic.clone(), partition)
            .start(Position::Earliest)
            .follow(true);
        let fetch = client
            .fetch(config)
            .await
            .with_context(|| format!("fetching partition {partition}"))?;
        calls.push(read_partition(&wl, &stats, partition, fetch));
    }
    // One loop per call, joined rather than merged into one stream: a merged stream
    // (`select_all`) re-queues its source after every record, an allocation per record.
    futures::future::try_join_all(calls).await?;
    Ok(())
}

/// Checks every record of one partition's `Fetch` until the run stops consuming.
async fn read_partition(
    wl: &Workload,
    stats: &TaskStats,
    partition: u32,
    mut fetch: herald_client::Fetch,
) -> anyhow::Result<()> {
    let mut e2e = Vec::with_capacity(1024);
    while !wl.consuming_stopped() {
        let record = match next_or_idle(&mut fetch).await {
            None => continue, // idle: look at the stop flag again
            // A following Fetch ends only after an error (yielded first): the partition
            // cannot be read further, which fails the run (`consume` counts the error).
            Some(None) => anyhow::bail!("the Fetch of partition {partition} ended"),
            Some(Some(Err(e))) => {
                return Err(e).with_context(|| format!("fetching partition {partition}"));
            }
            Some(Some(Ok(record))) => record,
        };
        wl.on_message(stats, &record.value, &mut e2e);
        if e2e.len() >= 1024 {
            stats.latencies(e2e.drain(..));
        }
    }
    stats.latencies(e2e);
    Ok(())
}

/// One consumer task: a group member acking every message after checking it.
async fn consume_group(wl: Arc<Workload>, index: u32, stats: Arc<TaskStats>) -> anyhow::Result<()> {
    let client = connect(&wl).await?;
    let config = ConsumerConfig::new(wl.settings.topic.clone(), wl.settings.group.clone())
        .client_id(format!("herald-load-{index}"))
        .start_position(Position::Earliest)
        .max_in_flight_messages(wl.settings.consumer_window)
        .max_in_flight_per_key(wl.settings.per_key)
        .batched_deliveries(!wl.settings.single_deliveries)
        .group_settings(GroupSettings {
            ordering: Some(match wl.settings.ordering {
                GroupOrdering::Key => OrderingMode::Key,
                GroupOrdering::Partition => OrderingMode::Partition,
                GroupOrdering::None => OrderingMode::None,
            }),
            ..GroupSettings::default()
        });
    let mut subscription = client
        .consumer(config)
        .subscribe()
        .await
        .context("subscribing")?;
    let mut e2e = Vec::with_capacity(1024);
    while !wl.consuming_stopped() {
        let next = next_or_idle(&mut subscription).await;
        let message = match next {
            None => continue, // idle: look at the stop flag again
            Some(None) => anyhow::bail!("the subscription ended"),
            Some(Some(Err(e))) => {
                eprintln!("herald: subscription error: {e}");
                stats.error(1);
                continue;
            }
            Some(Some(Ok(message))) => message,
        };
        wl.on_message(&stats, message.value(), &mut e2e);
        if let Err(e) = message.ack() {
            eprintln!("herald: ack failed: {e}");
            stats.error(1);
        }
        if e2e.len() >= 1024 {
            stats.latencies(e2e.drain(..));
        }
    }
    stats.latencies(e2e);
    Ok(())
}
