//! `Subscription::close` leaves the group cleanly: the acks sent just before it reach the
//! broker before the member goes, and the messages it held unsettled go back to the group.

mod common;

use std::time::Duration;

use futures::StreamExt;
use herald_client::{ConsumerConfig, Position, ProducerConfig, Record, TopicConfig};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn close_sends_the_last_acks_then_leaves() {
    let t = common::start().await;
    let admin = t.client.admin();
    admin
        .create_topic("orders", 1, TopicConfig::default())
        .await
        .unwrap();
    let producer = t.client.producer(ProducerConfig::new("orders"));
    let records = (0..10).map(|i| Record::new(format!("order-{i}")));
    producer.send_all(records).await.unwrap().await.unwrap();
    producer.close().await.unwrap();

    let config = ConsumerConfig::new("orders", "billing")
        .start_position(Position::Earliest)
        .max_in_flight_messages(10);
    let mut subscription = t.client.consumer(config.clone()).subscribe().await.unwrap();
    let mut held = Vec::new();
    for offset in 0..10 {
        let message = tokio::time::timeout(WAIT, subscription.next())
            .await
            .expect("a delivery")
            .expect("the subscription goes on")
            .unwrap();
        assert_eq!(message.offset().0, offset);
        // The first six are acked right before the close; the rest stay unsettled.
        if offset < 6 {
            message.ack().unwrap();
        } else {
            held.push(message);
        }
    }
    subscription.close().await.unwrap();

    // Once close returns, the broker has the acks and the member is gone.
    let group = admin.describe_group("orders", "billing").await.unwrap();
    assert!(group.members.is_empty(), "{:?}", group.members);
    let p = &group.partitions[0];
    assert_eq!((p.committed_offset.0, p.in_flight_count), (6, 0));
    // Settling a message of a closed subscription does nothing.
    drop(held);

    // The unsettled four come again, to the next member, as redeliveries.
    let mut subscription = t.client.consumer(config).subscribe().await.unwrap();
    for offset in 6..10 {
        let message = tokio::time::timeout(WAIT, subscription.next())
            .await
            .expect("a redelivery")
            .expect("the subscription goes on")
            .unwrap();
        assert_eq!((message.offset().0, message.attempt()), (offset, 2));
        message.ack().unwrap();
    }
    subscription.close().await.unwrap();
    let group = admin.describe_group("orders", "billing").await.unwrap();
    assert_eq!(group.partitions[0].committed_offset.0, 10);
}
