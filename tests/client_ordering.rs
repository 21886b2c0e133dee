//! Records produced with the Rust client are acked once, at dense offsets, in per-key order.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use herald_client::{ProducerConfig, Record, partition_for_key};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn produces_100k_records_acked_once_dense_and_in_key_order() {
    let t = common::start_with_client().await;
    t.create_topic("events", 4).await;
    let producer = t.client.producer(
        ProducerConfig::new("events")
            .batch_bytes(64 * 1024)
            .linger(Duration::from_millis(2)),
    );

    const RECORDS: usize = 100_000;
    const KEYS: usize = 300;
    // (key, its sequence number for that key) for each send, in send order; keyless
    // records have no key.
    let mut sent = Vec::with_capacity(RECORDS);
    let mut deliveries = Vec::with_capacity(RECORDS);
    let mut next_seq = vec![0u64; KEYS];
    for i in 0..RECORDS {
        let record = if i % 10 == 9 {
            sent.push(None);
            Record::new(format!("none:{i}"))
        } else {
            let k = (i * 7919) % KEYS;
            let seq = next_seq[k];
            next_seq[k] += 1;
            sent.push(Some((k, seq)));
            Record::new(format!("key-{k}:{seq}"))
                .key(format!("key-{k}"))
                .header("i", i.to_string())
        };
        deliveries.push(producer.send(record).await.unwrap());
    }
    producer.flush().await.unwrap();

    // Every delivery resolved (flush waited for all), each at a distinct position.
    let mut at: HashMap<(u32, u64), usize> = HashMap::new();
    let mut per_partition = [0u64; 4];
    for (i, delivery) in deliveries.into_iter().enumerate() {
        let acked = common::ready(delivery)
            .expect("flush waited for the ack")
            .unwrap();
        if let Some((k, _)) = sent[i] {
            assert_eq!(
                acked.partition,
                partition_for_key(format!("key-{k}").as_bytes(), 4)
            );
        }
        assert!(at.insert((acked.partition.0, acked.offset.0), i).is_none());
        per_partition[acked.partition.0 as usize] += 1;
    }
    assert_eq!(at.len(), RECORDS);
    // Keyless records were spread over several partitions. The counts per partition go
    // into the failure message: the spread follows from where batches were sealed.
    let mut keyless_per_partition = [0u64; 4];
    for ((p, _), i) in &at {
        if sent[*i].is_none() {
            keyless_per_partition[*p as usize] += 1;
        }
    }
    let keyless_partitions = keyless_per_partition.iter().filter(|n| **n > 0).count();
    assert!(
        keyless_partitions > 1,
        "keyless records per partition {keyless_per_partition:?}, all records per partition \
         {per_partition:?}, batches retried {}",
        producer.retried_batches()
    );

    // Read everything back: dense offsets, the record acked at each offset, and each
    // key's records in send order.
    let mut last_seq: HashMap<usize, u64> = HashMap::new();
    for p in 0..4u32 {
        let records = common::fetch_partition(&t.client, "events", p).await;
        assert_eq!(records.len() as u64, per_partition[p as usize]);
        for (expected_offset, record) in records.iter().enumerate() {
            assert_eq!(record.offset, expected_offset as u64);
            let i = at[&(p, record.offset)];
            let value = std::str::from_utf8(&record.value).unwrap();
            match sent[i] {
                None => {
                    assert_eq!(value, format!("none:{i}"));
                    assert!(record.key.is_none());
                }
                Some((k, seq)) => {
                    assert_eq!(value, format!("key-{k}:{seq}"));
                    assert_eq!(record.headers[0].value.as_ref(), i.to_string().as_bytes());
                    let previous = last_seq.insert(k, seq);
                    assert_eq!(previous.map_or(0, |s| s + 1), seq, "key {k} out of order");
                }
            }
        }
    }
    producer.close().await.unwrap();
}
