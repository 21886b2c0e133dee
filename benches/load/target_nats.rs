//! NATS JetStream through `async-nats`.
//!
//! One stream named after the topic, file storage, on subjects `<topic>.<p>` for
//! `p < --partitions`; a key goes to subject `key % partitions`. Publishes are JetStream
//! publishes whose acks are awaited (a batch is `--batch-size` publishes whose acks are
//! awaited together; a producer has up to `--in-flight` batches outstanding). Consumers
//! are durable pull consumers with explicit acks, one per subject (`<group>-<p>`),
//! assigned statically to the consumer tasks (`p % consumers`): JetStream has no per-key
//! ordering across a shared consumer, so this is how a NATS user keeps per-key order.
//!
//! Fsync: a JetStream stream has no fsync setting. The server's file store (2.9) writes
//! every message to the OS at once and fsyncs on its own schedule (`sync_interval`, a
//! server option from 2.10, default 2 min). `--fsync` is ignored here with a note.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use crate::stats::TaskStats;
use crate::workload::{Fsync, Generator, Workload, next_or_idle};

fn subject(wl: &Workload, partition: u32) -> String {
    format!("{}.{partition}", wl.settings.topic)
}

fn durable(wl: &Workload, partition: u32) -> String {
    format!("{}-{partition}", wl.settings.group)
}

async fn connect(wl: &Workload) -> anyhow::Result<jetstream::Context> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(wl.settings.url.as_str())
        .await
        .with_context(|| format!("connecting to {}", wl.settings.url))?;
    let mut js = jetstream::new(client);
    js.set_timeout(Duration::from_secs(30));
    Ok(js)
}

/// Creates the stream (deleting an old one unless `--reuse`) and one durable pull
/// consumer per subject.
pub async fn prepare(wl: &Workload) -> anyhow::Result<()> {
    let s = &wl.settings;
    if s.fsync != Fsync::Default {
        eprintln!(
            "note: NATS streams have no fsync setting; the server's file store decides \
             (--fsync {} ignored)",
            s.fsync
        );
    }
    let js = connect(wl).await?;
    if !s.reuse {
        // Not found is fine.
        let _ = js.delete_stream(&s.topic).await;
    }
    let stream = js
        .get_or_create_stream(stream::Config {
            name: s.topic.clone(),
            subjects: vec![format!("{}.*", s.topic)],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .context("creating the stream")?;
    if s.consumers > 0 {
        for p in 0..s.partitions {
            stream
                .get_or_create_consumer(
                    &durable(wl, p),
                    consumer::pull::Config {
                        durable_name: Some(durable(wl, p)),
                        filter_subject: subject(wl, p),
                        ack_policy: consumer::AckPolicy::Explicit,
                        deliver_policy: consumer::DeliverPolicy::All,
                        ack_wait: Duration::from_secs(30),
                        max_ack_pending: i64::from(s.consumer_window),
                        ..Default::default()
                    },
                )
                .await
                .context("creating a consumer")?;
        }
    }
    Ok(())
}

/// Deletes the stream (`--cleanup`).
pub async fn cleanup(wl: &Workload) -> anyhow::Result<()> {
    let js = connect(wl).await?;
    js.delete_stream(&wl.settings.topic)
        .await
        .map_err(|e| anyhow::anyhow!("deleting the stream: {e}"))?;
    Ok(())
}

/// One producer task with its own connection.
pub async fn produce(
    wl: Arc<Workload>,
    mut generator: Generator,
    stats: Arc<TaskStats>,
) -> anyhow::Result<Generator> {
    let js = connect(&wl).await?;
    let subjects: Vec<String> = (0..wl.settings.partitions)
        .map(|p| subject(&wl, p))
        .collect();
    let mut in_flight = FuturesUnordered::new();
    let mut next = generator.next_batch().await;
    loop {
        if let Some(batch) = next.take() {
            // Send the batch: each publish returns once written, its ack comes later.
            let mut acks = Vec::with_capacity(batch.len());
            let mut failed = Vec::new();
            for out in batch {
                let len = out.payload.len();
                let subject = subjects[wl.partition_of(out.key) as usize].clone();
                match js.publish(subject, out.payload).await {
                    Ok(ack) => acks.push((ack, out.key, out.seq, out.sent_ns, len)),
                    Err(e) => {
                        if failed.is_empty() {
                            eprintln!("nats: publish failed: {e}");
                        }
                        failed.push((out.key, out.seq));
                    }
                }
            }
            if !failed.is_empty() {
                wl.on_failed(&stats, &failed);
            }
            let (wl2, stats2) = (wl.clone(), stats.clone());
            in_flight.push(async move {
                let mut latencies = Vec::with_capacity(acks.len());
                let mut failed = Vec::new();
                for (ack, key, seq, sent_ns, len) in acks {
                    match ack.await {
                        Ok(_) => {
                            let now = wl2.now_ns();
                            stats2.add(1, len as u64, now);
                            latencies.push(now.saturating_sub(sent_ns) / 1000);
                        }
                        Err(e) => {
                            if failed.is_empty() {
                                eprintln!("nats: publish ack failed: {e}");
                            }
                            failed.push((key, seq));
                        }
                    }
                }
                stats2.latencies(latencies);
                if !failed.is_empty() {
                    wl2.on_failed(&stats2, &failed);
                }
            });
        }
        if in_flight.len() >= wl.settings.in_flight.max(1) {
            in_flight.next().await;
            continue;
        }
        // Room for another batch: make it while the acks of the others are awaited.
        tokio::select! {
            batch = generator.next_batch() => match batch {
                Some(batch) => next = Some(batch),
                None => break,
            },
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
        }
    }
    while in_flight.next().await.is_some() {}
    Ok(generator)
}

/// One consumer task: pulls from the durable consumers of its subjects and acks each
/// message after checking it.
pub async fn consume(wl: Arc<Workload>, index: u32, stats: Arc<TaskStats>) -> anyhow::Result<()> {
    let partitions = wl.partitions_of_consumer(index);
    if partitions.is_empty() {
        return Ok(()); // more consumers than subjects
    }
    let js = connect(&wl).await?;
    let stream = js
        .get_stream(&wl.settings.topic)
        .await
        .context("looking up the stream")?;
    let mut streams = Vec::new();
    for p in partitions {
        let consumer: consumer::PullConsumer = stream
            .get_consumer(&durable(&wl, p))
            .await
            .map_err(|e| anyhow::anyhow!("looking up a consumer: {e}"))?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(wl.settings.batch_size.max(1))
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .context("pulling messages")?;
        streams.push(messages);
    }
    let mut messages = futures::stream::select_all(streams);
    let mut e2e = Vec::with_capacity(1024);
    while !wl.consuming_stopped() {
        let next = next_or_idle(&mut messages).await;
        let message = match next {
            None => continue,
            Some(None) => anyhow::bail!("the message streams ended"),
            Some(Some(Err(e))) => {
                eprintln!("nats: pull error: {e}");
                stats.error(1);
                continue;
            }
            Some(Some(Ok(message))) => message,
        };
        wl.on_message(&stats, &message.payload, &mut e2e);
        if let Err(e) = message.ack().await {
            eprintln!("nats: ack failed: {e}");
            stats.error(1);
        }
        if e2e.len() >= 1024 {
            stats.latencies(e2e.drain(..));
        }
    }
    stats.latencies(e2e);
    Ok(())
}
