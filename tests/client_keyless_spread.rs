//! The Rust producer's keyless records stick to one partition until its batch is sealed,
//! then move on to the next, also when every partition's batch is sealed at once.

mod common;

use std::time::Duration;

use herald_client::{ProducerConfig, Record, partition_for_key};

/// A linger sweep seals the batches of all four partitions together, round after round.
/// The keyless record of each round must land one partition further than the last: sealing
/// the four batches must move the sticky partition on once, not walk it round to where it
/// started (which kept every keyless record on partition 0).
#[tokio::test]
async fn keyless_records_move_on_when_batches_are_sealed_together() {
    let t = common::start_with_client().await;
    t.create_topic("spread", 4).await;
    let producer = t
        .client
        .producer(ProducerConfig::new("spread").linger(Duration::from_millis(5)));
    // One key per partition, so each round opens a batch in every partition.
    let keys: Vec<String> = (0..4u32)
        .map(|p| {
            (0..)
                .map(|i| format!("key-{i}"))
                .find(|k| partition_for_key(k.as_bytes(), 4).0 == p)
                .expect("a key for every partition")
        })
        .collect();

    const ROUNDS: usize = 16;
    let mut keyless = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let mut records: Vec<Record> = keys
            .iter()
            .map(|k| Record::new(format!("keyed {round}")).key(k.clone()))
            .collect();
        records.push(Record::new(format!("keyless {round}")));
        // Awaiting the acks means the linger sweep sealed (and sent) every batch.
        let acked = producer.send_all(records).await.unwrap().await.unwrap();
        keyless.push(acked[4].partition.0);
    }
    let rotation: Vec<u32> = (0..ROUNDS as u32).map(|r| r % 4).collect();
    assert_eq!(
        keyless, rotation,
        "the partition of each round's keyless record"
    );
    producer.close().await.unwrap();
}
