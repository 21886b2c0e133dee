//! Crash and restart of the real `herald` binary: every acknowledged publish must be there
//! after a SIGKILL in the middle of a publish load (with `--fsync always`), and after a
//! graceful SIGTERM.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use herald_proto::HeraldClient;
use herald_proto::v1;
use tonic::transport::Channel;

mod common;

use common::{Server, TIMEOUT};

async fn create_topic(client: &mut HeraldClient<Channel>, name: &str, partitions: u32) {
    client
        .create_topic(v1::CreateTopicRequest {
            name: name.into(),
            partitions,
            config: None,
        })
        .await
        .expect("topic created");
}

/// The records of a publish: `batch` records, keyed by worker, each carrying its position.
fn batch_records(worker: u32, seq: u32, batch: u32) -> Vec<v1::Record> {
    (0..batch)
        .map(|i| v1::Record {
            key: Some(Bytes::from(format!("worker-{worker}"))),
            value: Bytes::from(format!(
                "w{worker}-s{seq}-r{i}-{}",
                "x".repeat(i as usize * 7)
            )),
            headers: vec![v1::Header {
                key: "seq".into(),
                value: Bytes::from(seq.to_string()),
            }],
            timestamp_ms: 0,
        })
        .collect()
}

async fn publish(
    client: &mut HeraldClient<Channel>,
    topic: &str,
    partition: u32,
    records: Vec<v1::Record>,
) -> Result<v1::PublishResponse, tonic::Status> {
    client
        .publish(v1::PublishRequest {
            topic: topic.into(),
            partition: Some(partition),
            payload: Some(v1::publish_request::Payload::Records(v1::Records {
                records,
            })),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Every record of a partition, from its start to its end.
async fn fetch_all(
    client: &mut HeraldClient<Channel>,
    topic: &str,
    partition: u32,
) -> Vec<v1::FetchedRecord> {
    let mut stream = client
        .fetch(v1::FetchRequest {
            topic: topic.into(),
            partition,
            start: Some(v1::Position {
                kind: Some(v1::position::Kind::Earliest(v1::Earliest {})),
            }),
            max_bytes: 0,
            follow: false,
            max_wait_ms: 0,
            raw_batches: false,
        })
        .await
        .expect("fetch starts")
        .into_inner();
    let mut out = Vec::new();
    while let Some(response) = stream.message().await.expect("fetch reads") {
        out.extend(response.records);
    }
    out
}

/// An acknowledged publish: where it landed and what it held.
struct Ack {
    worker: u32,
    seq: u32,
    partition: u32,
    base_offset: u64,
    records: Vec<v1::Record>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_publishes_survive_sigkill() {
    const TOPIC: &str = "durable";
    const PARTITIONS: u32 = 2;
    const WORKERS: u32 = 4;
    const BATCH: u32 = 3;
    const ACKS_BEFORE_KILL: usize = 200;

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--fsync", "always"]);
    let mut client = server.client().await;
    create_topic(&mut client, TOPIC, PARTITIONS).await;

    // Concurrent publishers, each sending its batches in sequence to its own partition;
    // they keep going until the broker dies under them.
    let acks = Arc::new(Mutex::new(Vec::<Ack>::new()));
    let (enough_tx, mut enough_rx) = tokio::sync::watch::channel(false);
    let mut workers = Vec::new();
    for worker in 0..WORKERS {
        let mut client = server.client().await;
        let (acks, enough_tx) = (acks.clone(), enough_tx.clone());
        workers.push(tokio::spawn(async move {
            for seq in 0.. {
                let partition = worker % PARTITIONS;
                let records = batch_records(worker, seq, BATCH);
                let Ok(reply) = publish(&mut client, TOPIC, partition, records.clone()).await
                else {
                    return seq; // the broker is gone: this publish may or may not be stored
                };
                assert_eq!(reply.partition, partition);
                assert_eq!(reply.last_offset - reply.base_offset + 1, u64::from(BATCH));
                let mut acks = acks.lock().unwrap();
                acks.push(Ack {
                    worker,
                    seq,
                    partition,
                    base_offset: reply.base_offset,
                    records,
                });
                if acks.len() >= ACKS_BEFORE_KILL {
                    let _ = enough_tx.send(true);
                }
            }
            unreachable!()
        }));
    }
    tokio::time::timeout(TIMEOUT, enough_rx.wait_for(|enough| *enough))
        .await
        .expect("200 publishes acknowledged in time")
        .unwrap();
    // Right after the last ack, with the other publishers still in flight.
    server.kill9();
    for worker in workers {
        tokio::time::timeout(TIMEOUT, worker)
            .await
            .expect("publishers notice the broker died")
            .expect("publisher task");
    }
    let acks = std::mem::take(&mut *acks.lock().unwrap());
    assert!(acks.len() >= ACKS_BEFORE_KILL);

    let server = Server::start(dir.path(), &["--fsync", "always"]);
    let mut client = server.client().await;
    let mut logs: HashMap<u32, Vec<v1::FetchedRecord>> = HashMap::new();
    for partition in 0..PARTITIONS {
        let log = fetch_all(&mut client, TOPIC, partition).await;
        // Dense offsets from 0: nothing lost in the middle, nothing reordered.
        for (i, record) in log.iter().enumerate() {
            assert_eq!(record.offset, i as u64, "partition {partition}");
        }
        logs.insert(partition, log);
    }

    // Every acknowledged record is there, intact, at the offset it was acknowledged with.
    for ack in &acks {
        let log = &logs[&ack.partition];
        for (i, sent) in ack.records.iter().enumerate() {
            let offset = ack.base_offset + i as u64;
            let stored = log.get(offset as usize).unwrap_or_else(|| {
                panic!(
                    "acked record w{} s{} #{i} at {}/{offset} is missing: the partition ends at {}",
                    ack.worker,
                    ack.seq,
                    ack.partition,
                    log.len()
                )
            });
            assert_eq!(stored.key, sent.key, "key at {}/{offset}", ack.partition);
            assert_eq!(
                stored.value, sent.value,
                "value at {}/{offset}",
                ack.partition
            );
            assert_eq!(
                stored.headers, sent.headers,
                "headers at {}/{offset}",
                ack.partition
            );
        }
    }

    // And the logs hold nothing else than whole batches of each publisher, in the order it
    // sent them: at most its one unacknowledged publish on top of the acknowledged ones.
    let acked_per_worker: BTreeMap<u32, u32> = acks.iter().fold(BTreeMap::new(), |mut m, a| {
        *m.entry(a.worker).or_default() += 1;
        m
    });
    for (partition, log) in &logs {
        let mut next_seq: BTreeMap<u32, u32> = BTreeMap::new();
        for batch in log.chunks(BATCH as usize) {
            let key = String::from_utf8(batch[0].key.clone().unwrap().to_vec()).unwrap();
            let worker: u32 = key.strip_prefix("worker-").unwrap().parse().unwrap();
            assert_eq!(worker % PARTITIONS, *partition);
            let seq = next_seq.entry(worker).or_default();
            let expected = batch_records(worker, *seq, BATCH);
            assert_eq!(
                batch.len(),
                expected.len(),
                "a torn batch in partition {partition}"
            );
            for (stored, sent) in batch.iter().zip(&expected) {
                assert_eq!(stored.value, sent.value, "partition {partition}");
            }
            *seq += 1;
        }
        for (worker, stored) in next_seq {
            let acked = acked_per_worker.get(&worker).copied().unwrap_or(0);
            assert!(
                stored == acked || stored == acked + 1,
                "worker {worker}: {acked} publishes acked but {stored} stored"
            );
        }
    }

    eprintln!(
        "{} publishes acknowledged before the SIGKILL; after the restart the partitions hold {:?} records",
        acks.len(),
        (0..PARTITIONS).map(|p| logs[&p].len()).collect::<Vec<_>>()
    );
    assert!(
        logs.values().map(Vec::len).sum::<usize>() >= acks.len() * BATCH as usize,
        "fewer records than acknowledged"
    );

    // The recovered partitions take new publishes after what they hold.
    for partition in 0..PARTITIONS {
        let reply = publish(&mut client, TOPIC, partition, batch_records(99, 0, 1))
            .await
            .expect("publish after the restart");
        assert_eq!(reply.base_offset, logs[&partition].len() as u64);
    }
    let (status, _) = server.terminate();
    assert!(status.success(), "herald serve exited with {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly_and_keeps_everything() {
    const TOPIC: &str = "graceful";
    const PUBLISHES: u32 = 100;

    let dir = tempfile::tempdir().unwrap();
    // fsync never: only the clean shutdown stands between the acks and the disk.
    let server = Server::start(dir.path(), &["--fsync", "never"]);
    let mut client = server.client().await;
    create_topic(&mut client, TOPIC, 1).await;
    let mut sent = Vec::new();
    for seq in 0..PUBLISHES {
        let records = batch_records(0, seq, 1 + seq % 3);
        let reply = publish(&mut client, TOPIC, 0, records.clone())
            .await
            .expect("publish");
        assert_eq!(reply.base_offset, sent.len() as u64);
        sent.extend(records);
    }

    // A tailing fetch stays open across the SIGTERM: shutdown must not wait for it forever.
    let mut tail = client
        .fetch(v1::FetchRequest {
            topic: TOPIC.into(),
            partition: 0,
            start: Some(v1::Position {
                kind: Some(v1::position::Kind::Latest(v1::Latest {})),
            }),
            follow: true,
            ..Default::default()
        })
        .await
        .expect("follow starts")
        .into_inner();

    let (status, log) = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(
        status.success(),
        "herald serve exited with {status}; log:\n{}",
        log.join("\n")
    );
    assert!(
        log.iter().any(|l| l.contains("stopped cleanly")),
        "no clean stop in the log:\n{}",
        log.join("\n")
    );
    let ended = tokio::time::timeout(TIMEOUT, async {
        loop {
            match tail.message().await {
                Ok(Some(response)) => assert!(response.records.is_empty()),
                Ok(None) => return None,
                Err(status) => return Some(status.code()),
            }
        }
    })
    .await
    .expect("the tailing fetch ends with the broker");
    assert!(
        ended == Some(tonic::Code::Unavailable),
        "the tailing fetch ended with {ended:?}"
    );

    let server = Server::start(dir.path(), &["--fsync", "never"]);
    let mut client = server.client().await;
    let stored = fetch_all(&mut client, TOPIC, 0).await;
    assert_eq!(stored.len(), sent.len(), "records after the restart");
    for (i, (stored, sent)) in stored.iter().zip(&sent).enumerate() {
        assert_eq!(stored.offset, i as u64);
        assert_eq!(stored.key, sent.key, "offset {i}");
        assert_eq!(stored.value, sent.value, "offset {i}");
        assert_eq!(stored.headers, sent.headers, "offset {i}");
    }
    let (status, _) = server.terminate();
    assert!(status.success(), "herald serve exited with {status}");
}
