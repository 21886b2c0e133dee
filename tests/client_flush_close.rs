//! The Rust producer's `flush` and `close` wait for every acknowledgement.

mod common;

use std::time::Duration;

use herald_client::{Error, ProducerConfig, Record};

#[tokio::test]
async fn flush_and_close_wait_for_every_ack() {
    let t = common::start_with_client().await;
    t.create_topic("acks", 3).await;
    let producer = t
        .client
        .producer(ProducerConfig::new("acks").linger(Duration::from_secs(30)));
    let first = producer
        .send_batch((0..1000).map(|i| Record::new(format!("{i}")).key(format!("k{}", i % 17))))
        .await
        .unwrap();
    producer.flush().await.unwrap();
    for delivery in first {
        common::ready(delivery).expect("flush waited").unwrap();
    }
    let second = producer
        .send_batch((0..500).map(|i| Record::new(format!("{i}"))))
        .await
        .unwrap();
    producer.close().await.unwrap();
    for delivery in second {
        common::ready(delivery).expect("close waited").unwrap();
    }
    let end = t.records_in("acks").await;
    assert_eq!(end, 1500);
    assert_eq!(
        producer.send(Record::new("late")).await.err(),
        Some(Error::Closed)
    );
}
