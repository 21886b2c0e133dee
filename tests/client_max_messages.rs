//! A subscription with `max_messages` yields exactly that many messages and then ends,
//! and the broker sends it no more than that: the messages after them were never
//! delivered, so the next member gets them as first deliveries.

mod common;

use std::time::Duration;

use futures::StreamExt;
use herald_client::{Client, ConsumerConfig, Position, ProducerConfig, Record};

const WAIT: Duration = Duration::from_secs(10);

async fn take_all(client: &Client, config: ConsumerConfig) -> Vec<(u64, u32)> {
    let mut subscription = client.consumer(config).subscribe().await.unwrap();
    let mut got = Vec::new();
    while let Some(message) = tokio::time::timeout(WAIT, subscription.next())
        .await
        .expect("the subscription ends at its limit")
    {
        let message = message.unwrap();
        got.push((message.offset().0, message.attempt()));
        message.ack().unwrap();
    }
    subscription.close().await.unwrap();
    got
}

#[tokio::test]
async fn a_subscription_stops_at_max_messages() {
    let t = common::start_with_client().await;
    t.create_topic("jobs", 1).await;
    let producer = t.client.producer(ProducerConfig::new("jobs"));
    let records = (0..20).map(|i| Record::new(format!("job-{i}")));
    producer.send_all(records).await.unwrap().await.unwrap();
    producer.close().await.unwrap();

    let config = |client_id: &str| {
        ConsumerConfig::new("jobs", "workers")
            .client_id(client_id)
            .start_position(Position::Earliest)
    };
    // A limit alone: credit for exactly the limit.
    let got = take_all(&t.client, config("a").max_messages(3)).await;
    assert_eq!(got, [(0, 1), (1, 1), (2, 1)]);
    // A limit with a smaller credit window: topped up as messages are taken, never past
    // the limit.
    let got = take_all(
        &t.client,
        config("b").credit_window(2, 1 << 20).max_messages(5),
    )
    .await;
    assert_eq!(got, [(3, 1), (4, 1), (5, 1), (6, 1), (7, 1)]);
    // With batched deliveries, a window larger than the limit.
    let got = take_all(
        &t.client,
        config("c")
            .credit_window(100, 1 << 20)
            .batched_deliveries(true)
            .max_messages(4),
    )
    .await;
    assert_eq!(got, [(8, 1), (9, 1), (10, 1), (11, 1)]);

    // Nothing past a limit was delivered: the group's progress is exactly what was acked,
    // with no redelivery.
    let group = t
        .client
        .admin()
        .describe_group("jobs", "workers")
        .await
        .unwrap();
    let p = &group.partitions[0];
    assert_eq!(
        (p.committed_offset.0, p.in_flight_count, p.redelivered_count),
        (12, 0, 0)
    );
    assert!(group.members.is_empty(), "{:?}", group.members);
}
