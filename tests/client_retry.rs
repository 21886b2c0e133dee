//! The Rust client's producer across a broker restart: UNAVAILABLE is retried without
//! reordering keys.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use herald_client::{Client, ProducerConfig, Record, TopicConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_retried_across_a_broker_restart_in_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start_at(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let addr = broker.addr;
    let client = Client::builder(format!("http://{addr}"))
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap();
    client
        .admin()
        .create_topic("orders", 2, TopicConfig::default())
        .await
        .unwrap();
    let producer = client.producer(
        ProducerConfig::new("orders")
            .linger(Duration::from_millis(1))
            .max_retries(100)
            .retry_backoff(Duration::from_millis(20), Duration::from_millis(100)),
    );
    let keys = ["a", "b", "c", "d", "e"];
    let mut deliveries = Vec::new();
    let mut send = async |from: usize, to: usize| {
        for i in from..to {
            let key = keys[i % keys.len()];
            let record = Record::new(format!("{key}:{i}")).key(key);
            deliveries.push(producer.send(record).await.unwrap());
        }
    };
    send(0, 500).await;
    producer.flush().await.unwrap();

    broker.shutdown().await.unwrap();
    // Sent while the broker is down: the stream fails and the batches wait for retries.
    send(500, 1000).await;
    common::wait_for(
        "a batch fails and waits for a retry while the broker is down",
        || {
            let retried = producer.retried_batches();
            async move { if retried > 0 { Ok(()) } else { Err(retried) } }
        },
    )
    .await;
    let broker = common::start_at(dir.path(), addr).await;
    send(1000, 1500).await;
    tokio::time::timeout(Duration::from_secs(20), producer.close())
        .await
        .expect("close finishes once the broker is back")
        .unwrap();
    for delivery in deliveries {
        delivery
            .await
            .expect("every record is acked after the restart");
    }

    // Each key's records are in send order. A retried batch may be stored twice (if its
    // ack was lost), never reordered: first occurrences are in increasing order.
    let mut seen = HashSet::new();
    for p in 0..2 {
        let records = common::fetch_partition(&client, "orders", p).await;
        let mut last: HashMap<String, usize> = HashMap::new();
        for record in &records {
            let value = std::str::from_utf8(&record.value).unwrap();
            if !seen.insert(value.to_owned()) {
                continue;
            }
            let (key, i) = value.split_once(':').unwrap();
            let i: usize = i.parse().unwrap();
            if let Some(&previous) = last.get(key) {
                assert!(i > previous, "{key}: {i} after {previous}");
            }
            last.insert(key.to_owned(), i);
        }
    }
    assert_eq!(seen.len(), 1500);
    broker.shutdown().await.unwrap();
}
