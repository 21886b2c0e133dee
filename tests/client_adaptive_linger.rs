//! The Rust producer's adaptive batching: a record for a partition with nothing in flight
//! is sent at once, whatever the linger; records that arrive while a batch is in flight
//! are batched behind it.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use herald_client::{Offset, ProducerConfig, Record, partition_for_key};

/// Far longer than any wait below: a record that waited for it would fail the test.
const LINGER: Duration = Duration::from_secs(600);
/// The longest an ack of a record sent at once may take on a loaded machine.
const ACK_BOUND: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_record_for_an_idle_partition_is_sent_without_waiting_for_the_linger() {
    let t = common::start_with_client().await;
    t.create_topic("idle", 1).await;
    let producer = t
        .client
        .producer(ProducerConfig::new("idle").linger(LINGER));
    let before = requests(&t).await;
    for i in 0..3u64 {
        let delivery = producer.send(Record::new(format!("r{i}"))).await.unwrap();
        let acked = tokio::time::timeout(ACK_BOUND, delivery)
            .await
            .expect("acked long before the linger")
            .unwrap();
        assert_eq!(acked.offset, Offset(i));
    }
    // Each record went as a batch of its own, the moment it was queued.
    assert_eq!(
        requests(&t).await - before,
        3.0,
        "one publish request per record"
    );
    common::assert_no_broker_panics();
}

#[tokio::test]
async fn with_send_when_idle_off_a_record_waits_for_the_linger() {
    let t = common::start_with_client().await;
    t.create_topic("fixed", 1).await;
    let producer = t.client.producer(
        ProducerConfig::new("fixed")
            .linger(LINGER)
            .send_when_idle(false),
    );
    let mut delivery = producer.send(Record::new("waits")).await.unwrap();
    // The absence is witnessed by the broker: no record arrived while we waited.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut delivery)
            .await
            .is_err(),
        "a fixed linger holds the record"
    );
    assert_eq!(t.records_in("fixed").await, 0);
    producer.flush().await.unwrap();
    assert_eq!(delivery.await.unwrap().offset, Offset(0));
}

#[tokio::test]
async fn records_sent_while_a_batch_is_in_flight_are_batched_behind_it() {
    let t = common::start_with_client().await;
    t.create_topic("busy", 1).await;
    let producer = t
        .client
        .producer(ProducerConfig::new("busy").linger(LINGER));
    let before = requests(&t).await;
    let count = 20_000u64;
    let mut deliveries = Vec::with_capacity(count as usize);
    for i in 0..count {
        deliveries.push(producer.send(Record::new(format!("r{i}"))).await.unwrap());
    }
    // No flush: every batch is sealed by the partition turning idle, never by the linger.
    for (i, delivery) in deliveries.into_iter().enumerate() {
        let acked = tokio::time::timeout(ACK_BOUND, delivery)
            .await
            .expect("acked without the linger")
            .unwrap();
        assert_eq!(acked.offset, Offset(i as u64), "order kept");
    }
    let batches = requests(&t).await - before;
    // One batch at a time per partition: records queue behind the one in flight, so far
    // fewer batches than records reach the broker.
    assert!(
        batches < count as f64 / 10.0,
        "{batches} publish requests for {count} records"
    );
    common::assert_no_broker_panics();
}

async fn requests(t: &common::ClientBroker) -> f64 {
    common::metric_sum(
        &common::metrics(&t.broker).await,
        "herald_publish_requests_total",
    )
}

/// Seeds of the concurrent-senders test; each runs on a topic of its own. A failure names
/// its seed, so it can be rerun alone.
const SEEDS: [u64; 3] = [0x5eed_0001, 0x5eed_0002, 0x5eed_0003];

/// Many tasks share one producer with the default batching and send keyed (and a few
/// keyless) records with `send`, `send_batch` and `send_all`, pausing or awaiting an ack
/// now and then, so partitions keep turning idle and busy and batches are sealed both by
/// the partition turning idle and behind a batch in flight. Whatever the interleaving,
/// every record is acked once, at dense offsets, each key's records in the order its task
/// sent them, and the byte budget is never exceeded. Odd seeds use a budget small enough
/// to make senders wait on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_senders_keep_key_order_dense_offsets_and_the_budget() {
    let t = common::start_with_client().await;
    for (round, seed) in SEEDS.into_iter().enumerate() {
        let topic = format!("mixed-{round}");
        t.create_topic(&topic, PARTITIONS).await;
        let budget = if round % 2 == 1 { 64 * 1024 } else { 32 << 20 };
        let producer = t
            .client
            .producer(ProducerConfig::new(topic.clone()).max_buffered_bytes(budget));
        let senders: Vec<_> = (0..SENDERS)
            .map(|task| {
                let producer = producer.clone();
                tokio::spawn(sender(producer, task, seed ^ ((task as u64) << 32), budget))
            })
            .collect();
        let mut sent: Vec<Sent> = Vec::new();
        for sender in senders {
            sent.extend(sender.await.expect("a sender panicked"));
        }
        producer.flush().await.unwrap();
        check(&t, &topic, seed, sent).await;
        producer.close().await.unwrap();
        assert_eq!(
            producer.buffered_bytes(),
            0,
            "seed {seed:#x}: budget returned"
        );
    }
    common::assert_no_broker_panics();
}

const PARTITIONS: u32 = 3;
const SENDERS: usize = 8;
const OPS_PER_SENDER: usize = 150;
const KEYS_PER_SENDER: usize = 5;

/// One record as its sender saw it: its value (unique), its key's name and place in that
/// key's sequence (none for a keyless record), and where it was acked.
struct Sent {
    value: String,
    key: Option<(String, u64)>,
    acked: herald_client::Acked,
}

/// A small deterministic generator (SplitMix64): the interleavings come from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

enum Pending {
    One(herald_client::Delivery, String, Option<(String, u64)>),
    All(
        herald_client::BatchDelivery,
        Vec<(String, Option<(String, u64)>)>,
    ),
}

async fn sender(
    producer: herald_client::Producer,
    task: usize,
    seed: u64,
    budget: usize,
) -> Vec<Sent> {
    let mut rng = Rng(seed);
    let mut next_seq = [0u64; KEYS_PER_SENDER];
    let mut made = 0u64;
    // Each record: its value (naming the task and a counter, padded to a random size)
    // and, unless keyless, its key and place in that key's sequence.
    let mut make = |rng: &mut Rng| {
        let key = (rng.below(10) != 0).then(|| {
            let k = rng.below(KEYS_PER_SENDER as u64) as usize;
            let seq = next_seq[k];
            next_seq[k] += 1;
            (format!("t{task}-k{k}"), seq)
        });
        let value = format!("{task}:{made}:{}", "x".repeat(rng.below(600) as usize));
        made += 1;
        let mut record = Record::new(value.clone());
        if let Some((name, _)) = &key {
            record = record.key(name.clone());
        }
        (record, value, key)
    };
    let mut pending: Vec<Pending> = Vec::new();
    let mut sent = Vec::new();
    for _ in 0..OPS_PER_SENDER {
        match rng.below(10) {
            0..=4 => {
                let (record, value, key) = make(&mut rng);
                let delivery = producer.send(record).await.unwrap();
                pending.push(Pending::One(delivery, value, key));
            }
            5 | 6 => {
                let made: Vec<_> = (0..1 + rng.below(20)).map(|_| make(&mut rng)).collect();
                let (records, rest): (Vec<_>, Vec<_>) =
                    made.into_iter().map(|(r, v, k)| (r, (v, k))).unzip();
                let deliveries = producer.send_batch(records).await.unwrap();
                for (delivery, (value, key)) in deliveries.into_iter().zip(rest) {
                    pending.push(Pending::One(delivery, value, key));
                }
            }
            7 => {
                let made: Vec<_> = (0..1 + rng.below(50)).map(|_| make(&mut rng)).collect();
                let (records, rest): (Vec<_>, Vec<_>) =
                    made.into_iter().map(|(r, v, k)| (r, (v, k))).unzip();
                let delivery = producer.send_all(records).await.unwrap();
                pending.push(Pending::All(delivery, rest));
            }
            8 => tokio::task::yield_now().await,
            _ => {
                // Waiting for an ack lets the partitions run dry, so the next records
                // find them idle.
                match pending.pop() {
                    Some(last) => settle(last, &mut sent).await,
                    None => tokio::time::sleep(Duration::from_micros(rng.below(300))).await,
                }
            }
        }
        let buffered = producer.buffered_bytes();
        assert!(
            buffered <= budget,
            "{buffered} bytes buffered, budget {budget}"
        );
    }
    for p in pending {
        settle(p, &mut sent).await;
    }
    sent
}

/// Awaits the acks of `pending` and records where its records went.
async fn settle(pending: Pending, sent: &mut Vec<Sent>) {
    match pending {
        Pending::One(delivery, value, key) => {
            let acked = tokio::time::timeout(ACK_BOUND, delivery)
                .await
                .expect("acked without a flush")
                .unwrap();
            sent.push(Sent { value, key, acked });
        }
        Pending::All(delivery, rest) => {
            let acked = tokio::time::timeout(ACK_BOUND, delivery)
                .await
                .expect("acked without a flush")
                .unwrap();
            assert_eq!(acked.len(), rest.len());
            for (acked, (value, key)) in acked.into_iter().zip(rest) {
                sent.push(Sent { value, key, acked });
            }
        }
    }
}

/// Every record acked once at a distinct position, each partition's offsets dense and
/// holding exactly the records acked there, each key on its partition and in its order.
async fn check(t: &common::ClientBroker, topic: &str, seed: u64, sent: Vec<Sent>) {
    let mut at: HashMap<(u32, u64), usize> = HashMap::new();
    for (i, s) in sent.iter().enumerate() {
        let position = (s.acked.partition.0, s.acked.offset.0);
        assert!(
            at.insert(position, i).is_none(),
            "seed {seed:#x}: two records acked at {position:?}"
        );
        if let Some((key, _)) = &s.key {
            assert_eq!(
                s.acked.partition,
                partition_for_key(key.as_bytes(), PARTITIONS),
                "seed {seed:#x}: key {key} on another partition"
            );
        }
    }
    let mut last_seq: HashMap<&str, u64> = HashMap::new();
    let mut stored = 0;
    for p in 0..PARTITIONS {
        let records = common::fetch_partition(&t.client, topic, p).await;
        stored += records.len();
        for (expected, record) in records.iter().enumerate() {
            assert_eq!(
                record.offset, expected as u64,
                "seed {seed:#x}: offsets dense"
            );
            let s = &sent[*at
                .get(&(p, record.offset))
                .unwrap_or_else(|| panic!("seed {seed:#x}: {p}:{expected} stored, never acked"))];
            assert_eq!(record.value.as_ref(), s.value.as_bytes(), "seed {seed:#x}");
            if let Some((key, seq)) = &s.key {
                assert_eq!(
                    record.key.as_deref(),
                    Some(key.as_bytes()),
                    "seed {seed:#x}"
                );
                let previous = last_seq.insert(key, *seq);
                assert_eq!(
                    previous.map_or(0, |s| s + 1),
                    *seq,
                    "seed {seed:#x}: key {key} out of order"
                );
            }
        }
    }
    assert_eq!(
        stored,
        sent.len(),
        "seed {seed:#x}: every record stored once"
    );
}
