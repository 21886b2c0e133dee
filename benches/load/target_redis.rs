//! Redis Streams through the `redis` crate (tokio, multiplexed connections).
//!
//! One stream per partition, `<topic>:<p>`; a key goes to stream `key % partitions`.
//! Producers send `XADD <stream> * d <payload>` pipelined, `--batch-size` per pipeline,
//! up to `--in-flight` pipelines outstanding on the producer's connection. Consumers are
//! members of a consumer group (`XGROUP CREATE … 0 MKSTREAM` on every stream), each
//! reading its statically assigned streams (`p % consumers`) with
//! `XREADGROUP COUNT <batch> BLOCK 100`, checking every entry, then acking them with one
//! `XACK` per stream carrying all the entry ids (explicit per-entry acks, batched).
//!
//! Fsync: `--fsync always|interval:MS|never` sets `appendonly yes` and `appendfsync
//! always|everysec|no` with `CONFIG SET` (Redis has no other interval than 1 s).

use std::sync::Arc;

use anyhow::Context as _;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, Value};

use crate::stats::TaskStats;
use crate::workload::{Fsync, Generator, Workload};

fn stream_key(wl: &Workload, partition: u32) -> String {
    format!("{}:{partition}", wl.settings.topic)
}

async fn connect(wl: &Workload) -> anyhow::Result<MultiplexedConnection> {
    let client = redis::Client::open(wl.settings.url.as_str()).context("bad redis url")?;
    client
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("connecting to {}", wl.settings.url))
}

/// Applies `--fsync`, deletes old streams unless `--reuse`, and creates the group.
pub async fn prepare(wl: &Workload) -> anyhow::Result<()> {
    let s = &wl.settings;
    let mut conn = connect(wl).await?;
    let appendfsync = match s.fsync {
        Fsync::Default => None,
        Fsync::Always => Some("always"),
        Fsync::IntervalMs(ms) => {
            if ms != 1000 {
                eprintln!("note: Redis fsyncs every second at most (appendfsync everysec)");
            }
            Some("everysec")
        }
        Fsync::Never => Some("no"),
    };
    if let Some(policy) = appendfsync {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("appendonly")
            .arg("yes")
            .query_async(&mut conn)
            .await
            .context("CONFIG SET appendonly yes")?;
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("appendfsync")
            .arg(policy)
            .query_async(&mut conn)
            .await
            .context("CONFIG SET appendfsync")?;
    }
    for p in 0..s.partitions {
        let key = stream_key(wl, p);
        if !s.reuse {
            let _: () = conn.del(&key).await.context("DEL")?;
        }
        if s.consumers > 0 {
            let created: redis::RedisResult<()> =
                conn.xgroup_create_mkstream(&key, &s.group, "0").await;
            if let Err(e) = created
                && e.code() != Some("BUSYGROUP")
            {
                return Err(e).context("XGROUP CREATE");
            }
        }
    }
    Ok(())
}

/// Deletes the streams (`--cleanup`).
pub async fn cleanup(wl: &Workload) -> anyhow::Result<()> {
    let mut conn = connect(wl).await?;
    for p in 0..wl.settings.partitions {
        let _: () = conn.del(stream_key(wl, p)).await.context("DEL")?;
    }
    Ok(())
}

/// One producer task with its own connection.
pub async fn produce(
    wl: Arc<Workload>,
    mut generator: Generator,
    stats: Arc<TaskStats>,
) -> anyhow::Result<Generator> {
    let conn = connect(&wl).await?;
    let keys: Vec<String> = (0..wl.settings.partitions)
        .map(|p| stream_key(&wl, p))
        .collect();
    let mut in_flight = FuturesUnordered::new();
    let mut next = generator.next_batch().await;
    loop {
        if let Some(batch) = next.take() {
            let mut pipe = redis::pipe();
            let mut meta = Vec::with_capacity(batch.len());
            for out in batch {
                pipe.cmd("XADD")
                    .arg(&keys[wl.partition_of(out.key) as usize])
                    .arg("*")
                    .arg("d")
                    .arg(out.payload.as_ref());
                meta.push((out.key, out.seq, out.sent_ns, out.payload.len()));
            }
            let (wl2, stats2, mut conn) = (wl.clone(), stats.clone(), conn.clone());
            in_flight.push(async move {
                let result: redis::RedisResult<Vec<Value>> = pipe.query_async(&mut conn).await;
                let now = wl2.now_ns();
                match result {
                    Ok(ids) if ids.len() == meta.len() => {
                        let bytes = meta.iter().map(|m| m.3 as u64).sum();
                        stats2.add(meta.len() as u64, bytes, now);
                        stats2.latencies(meta.iter().map(|m| now.saturating_sub(m.2) / 1000));
                    }
                    other => {
                        if stats2.errors.load(std::sync::atomic::Ordering::Relaxed) == 0 {
                            eprintln!("redis: XADD pipeline failed: {other:?}");
                        }
                        let failed: Vec<_> = meta.iter().map(|m| (m.0, m.1)).collect();
                        wl2.on_failed(&stats2, &failed);
                    }
                }
            });
        }
        if in_flight.len() >= wl.settings.in_flight.max(1) {
            in_flight.next().await;
            continue;
        }
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

/// One consumer task: `XREADGROUP` from its streams, check, `XACK`.
pub async fn consume(wl: Arc<Workload>, index: u32, stats: Arc<TaskStats>) -> anyhow::Result<()> {
    let partitions = wl.partitions_of_consumer(index);
    if partitions.is_empty() {
        return Ok(());
    }
    let mut conn = connect(&wl).await?;
    let keys: Vec<String> = partitions.iter().map(|&p| stream_key(&wl, p)).collect();
    let ids = vec![">"; keys.len()];
    let consumer = format!("herald-load-{index}");
    let options = StreamReadOptions::default()
        .group(&wl.settings.group, &consumer)
        .count(wl.settings.batch_size.max(1))
        .block(100);
    let mut e2e = Vec::with_capacity(1024);
    while !wl.consuming_stopped() {
        let reply: redis::RedisResult<Option<StreamReadReply>> =
            conn.xread_options(&keys, &ids, &options).await;
        let reply = match reply {
            Ok(Some(reply)) => reply,
            Ok(None) => continue, // BLOCK timed out
            Err(e) => {
                eprintln!("redis: XREADGROUP failed: {e}");
                stats.error(1);
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut acks = redis::pipe();
        for stream in &reply.keys {
            if stream.ids.is_empty() {
                continue;
            }
            for entry in &stream.ids {
                match entry.map.get("d") {
                    Some(Value::BulkString(payload)) => wl.on_message(&stats, payload, &mut e2e),
                    _ => wl.on_message(&stats, &[], &mut e2e), // counted as malformed
                }
            }
            let ids: Vec<&str> = stream.ids.iter().map(|e| e.id.as_str()).collect();
            acks.cmd("XACK")
                .arg(&stream.key)
                .arg(&wl.settings.group)
                .arg(&ids)
                .ignore();
        }
        if let Err(e) = acks.query_async::<()>(&mut conn).await {
            eprintln!("redis: XACK failed: {e}");
            stats.error(1);
        }
        if e2e.len() >= 1024 {
            stats.latencies(e2e.drain(..));
        }
    }
    stats.latencies(e2e);
    Ok(())
}
