//! Redelivery: a nacked message comes back after the retry backoff, an unacked one after
//! its ack deadline, each with its attempt count; in key ordering a key whose message is
//! unacked does not hold up the other keys of the same partition.

mod common;

use std::time::{Duration, Instant};

use common::*;
use herald_proto::v1;

const WAIT: Duration = Duration::from_secs(5);

/// The group's pending messages (in flight or waiting out a backoff), as ListPending
/// gives them.
async fn pending(
    c: &mut herald_proto::HeraldClient<tonic::transport::Channel>,
    topic: &str,
    group: &str,
) -> Vec<v1::PendingMessage> {
    c.list_pending(v1::ListPendingRequest {
        topic: topic.into(),
        group: group.into(),
        ..Default::default()
    })
    .await
    .expect("pending messages listed")
    .into_inner()
    .messages
}

#[tokio::test]
async fn a_nacked_message_is_redelivered_after_the_backoff() {
    let (_dir, broker, mut c) = start_with_topic("t", 1).await;
    publish(&mut c, "t", None, vec![record(Some("k"), "v")])
        .await
        .unwrap();
    let mut m = subscribe(&mut c, join("t", "g", Some(fast_settings(30_000, 300))))
        .await
        .unwrap();
    let (got, _) = m.deliveries(1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].delivery_attempt, 1);
    assert_eq!(got[0].value.as_ref(), b"v");
    let nacked = Instant::now();
    m.nack(&got[0], None, "not yet").await;
    // The pending list shows it waiting out its backoff (an early redelivery is caught by
    // the elapsed time below).
    let pending = pending(&mut c, "t", "g").await;
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].state, v1::PendingState::Backoff as i32);
    assert_eq!(pending[0].key.as_deref(), Some(&b"k"[..]));
    let (again, _) = m.deliveries(1, WAIT).await;
    assert_eq!(again.len(), 1, "redelivered after the backoff");
    assert!(
        nacked.elapsed() >= Duration::from_millis(250),
        "{:?}",
        nacked.elapsed()
    );
    assert_eq!(again[0].offset, 0);
    assert_eq!(again[0].delivery_attempt, 2);
    // An explicit delay of 0 redelivers at once.
    m.nack(&again[0], Some(0), "again").await;
    let (third, _) = m.deliveries(1, WAIT).await;
    assert_eq!(third.len(), 1);
    assert_eq!(third[0].delivery_attempt, 3);
    m.ack(&third).await;
    // Done for the group: committed past it, nothing in flight or waiting to come back.
    wait_for_group(&c, "t", "g", |d| {
        d.partitions[0].committed_offset == 1 && d.partitions[0].in_flight_count == 0
    })
    .await;
    drop(m);
    drop(c);
    stop(broker).await;
}

#[tokio::test]
async fn an_expired_deadline_redelivers() {
    let (_dir, broker, mut c) = start_with_topic("t", 1).await;
    publish(&mut c, "t", None, vec![record(None, "v")])
        .await
        .unwrap();
    let mut m = subscribe(&mut c, join("t", "g", Some(fast_settings(100, 20))))
        .await
        .unwrap();
    let (got, _) = m.deliveries(1, WAIT).await;
    assert_eq!(got.len(), 1);
    let (again, _) = m.deliveries(1, WAIT).await;
    assert_eq!(again.len(), 1, "redelivered after the deadline");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        now_ms >= got[0].deadline_ms,
        "redelivered before the deadline"
    );
    assert_eq!(again[0].delivery_attempt, 2);
    // The late ack of the first delivery is stale; acking the live one completes it.
    m.ack(&again).await;
    let d = wait_for_group(&c, "t", "g", |d| {
        d.partitions[0].committed_offset == 1 && d.partitions[0].in_flight_count == 0
    })
    .await;
    assert_eq!(d.partitions[0].redelivered_count, 1);
    drop(m);
    drop(c);
    stop(broker).await;
}

#[tokio::test]
async fn a_slow_key_does_not_block_other_keys() {
    let (_dir, broker, mut c) = start_with_topic("t", 1).await;
    let records = vec![
        record(Some("slow"), "slow-1"),
        record(Some("slow"), "slow-2"),
        record(Some("a"), "a-1"),
        record(Some("a"), "a-2"),
        record(Some("b"), "b-1"),
    ];
    publish(&mut c, "t", Some(0), records).await.unwrap();
    let mut m = subscribe(&mut c, join("t", "g", Some(fast_settings(30_000, 20))))
        .await
        .unwrap();
    let values = |ds: &[v1::Delivery]| -> Vec<String> {
        let mut v: Vec<String> = ds
            .iter()
            .map(|d| String::from_utf8(d.value.to_vec()).unwrap())
            .collect();
        v.sort();
        v
    };
    // One message per key in flight: the first of each key.
    let (first, _) = m.deliveries(3, WAIT).await;
    assert_eq!(values(&first), ["a-1", "b-1", "slow-1"]);
    // Nothing of the busy key is due: a fresh key's message, published after it, comes
    // alone.
    marker_arrives_alone(&mut c, &mut m, "t", 0, "marker-1").await;
    // Ack the fast keys only: their next message flows while "slow" stays in flight.
    let fast: Vec<v1::Delivery> = first
        .iter()
        .filter(|d| d.key.as_deref() != Some(&b"slow"[..]))
        .cloned()
        .collect();
    m.ack(&fast).await;
    let (next, _) = m.deliveries(1, WAIT).await;
    assert_eq!(values(&next), ["a-2"]);
    // slow-2 waits for slow-1.
    marker_arrives_alone(&mut c, &mut m, "t", 0, "marker-2").await;
    // Nack slow-1: it is redelivered before slow-2.
    let slow = first
        .iter()
        .find(|d| d.key.as_deref() == Some(&b"slow"[..]))
        .unwrap();
    m.nack(slow, Some(0), "").await;
    let (retry, _) = m.deliveries(1, WAIT).await;
    assert_eq!(values(&retry), ["slow-1"]);
    assert_eq!(retry[0].delivery_attempt, 2);
    m.ack(&retry).await;
    let (last, _) = m.deliveries(1, WAIT).await;
    assert_eq!(values(&last), ["slow-2"]);
    m.ack(&last).await;
    m.ack(&next).await;
    drop(m);
    drop(c);
    stop(broker).await;
}

#[tokio::test]
async fn partition_ordering_holds_the_partition_until_the_head_is_acked() {
    let (_dir, broker, mut c) = start_with_topic("t", 1).await;
    let records = vec![
        record(Some("a"), "1"),
        record(Some("b"), "2"),
        record(None, "3"),
    ];
    publish(&mut c, "t", Some(0), records).await.unwrap();
    let settings = v1::GroupSettings {
        ordering: v1::OrderingMode::Partition as i32,
        ..fast_settings(30_000, 20)
    };
    let mut m = subscribe(&mut c, join("t", "g", Some(settings)))
        .await
        .unwrap();
    for expected in 0..3u64 {
        let (got, _) = m.deliveries(1, WAIT).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].offset, expected);
        // The broker's own list of what is out: the head alone.
        let pending = pending(&mut c, "t", "g").await;
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].offset, expected);
        assert_eq!(pending[0].state, v1::PendingState::InFlight as i32);
        assert_eq!(pending[0].member_id, m.joined.member_id);
        m.ack(&got).await;
    }
    drop(m);
    drop(c);
    stop(broker).await;
}
