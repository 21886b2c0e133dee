//! The Rust producer's adaptive batching: a record for a partition with nothing in flight
//! is sent at once, whatever the linger; records that arrive while a batch is in flight
//! are batched behind it.

mod common;

use std::time::Duration;

use herald_client::{Offset, ProducerConfig, Record};

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
    for i in 0..3u64 {
        let delivery = producer.send(Record::new(format!("r{i}"))).await.unwrap();
        let acked = tokio::time::timeout(ACK_BOUND, delivery)
            .await
            .expect("acked long before the linger")
            .unwrap();
        assert_eq!(acked.offset, Offset(i));
    }
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
