//! Subscribe: members of a group split the partitions, a new member takes a balanced share,
//! and a member whose stream drops hands its partitions and unacked messages to the others.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use herald_proto::HeraldClient;
use herald_proto::v1;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(5);

async fn publish_to(
    c: &mut HeraldClient<Channel>,
    topic: &str,
    partition: u32,
    n: usize,
    tag: &str,
) {
    let records = (0..n)
        .map(|i| {
            let text = format!("{tag}-{partition}-{i}");
            record(Some(&text), &text)
        })
        .collect();
    publish(c, topic, Some(partition), records).await.unwrap();
}

/// Each member's owned partitions, from DescribeGroup.
async fn assignment(c: &mut HeraldClient<Channel>, topic: &str) -> BTreeMap<String, Vec<u32>> {
    describe_group(c, topic, "billing")
        .await
        .members
        .into_iter()
        .map(|m| (m.member_id, m.partitions))
        .collect()
}

#[tokio::test]
async fn members_split_partitions_and_a_new_member_takes_a_share() {
    let (_dir, broker, mut c) = start_with_topic("orders", 4).await;
    for p in 0..4 {
        publish_to(&mut c, "orders", p, 4, "a").await;
    }
    let settings = Some(fast_settings(10_000, 50));

    let mut m1 = subscribe(&mut c, join("orders", "billing", settings))
        .await
        .unwrap();
    assert_eq!(m1.joined.partitions, vec![0, 1, 2, 3]);
    let s = m1.joined.settings.clone().unwrap();
    assert_eq!(s.ack_deadline_ms, Some(10_000));
    assert_eq!(s.ordering, v1::OrderingMode::Key as i32);
    let (got, _) = m1.deliveries(16, WAIT).await;
    assert_eq!(got.len(), 16, "the only member gets every record");
    assert!(got.iter().all(|d| d.delivery_attempt == 1));
    m1.ack(&got).await;
    // Acks move every committed offset to the end.
    wait_for_group(&c, "orders", "billing", |d| {
        d.partitions
            .iter()
            .all(|p| p.committed_offset == 4 && p.lag == 0 && p.in_flight_count == 0)
    })
    .await;

    // A second member: nothing is in flight, so two partitions move to it at once.
    let m2 = subscribe(&mut c, join("orders", "billing", None))
        .await
        .unwrap();
    assert_eq!(m2.joined.partitions.len(), 2, "{:?}", m2.joined);
    let mut changes = Vec::new();
    while changes.is_empty() {
        let response = m1.next(WAIT).await.expect("m1 is told of the rebalance");
        if let Some(v1::subscribe_response::Response::Assignment(change)) = response.response {
            changes.push(change);
        }
    }
    let revoked: BTreeSet<u32> = changes.iter().flat_map(|c| c.revoked.clone()).collect();
    let moved: BTreeSet<u32> = m2.joined.partitions.iter().copied().collect();
    assert_eq!(revoked, moved, "m1 is told which partitions it lost");

    // A third member: a balanced share; partitions disjoint and covering the topic.
    let m3 = subscribe(&mut c, join("orders", "billing", None))
        .await
        .unwrap();
    assert!(!m3.joined.partitions.is_empty());
    let owned = assignment(&mut c, "orders").await;
    assert_eq!(owned.len(), 3);
    let counts: Vec<usize> = owned.values().map(Vec::len).collect();
    assert_eq!(counts.iter().sum::<usize>(), 4);
    assert!(
        counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1,
        "{owned:?}"
    );
    let all: BTreeSet<u32> = owned.values().flatten().copied().collect();
    assert_eq!(all, (0..4).collect());
    let listed = c
        .list_groups(v1::ListGroupsRequest {
            topic: Some("orders".into()),
        })
        .await
        .unwrap()
        .into_inner()
        .groups;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].member_count, 3);

    // New records go to the owner of their partition, and only to it.
    for p in 0..4 {
        publish_to(&mut c, "orders", p, 2, "b").await;
    }
    let mut seen = 0;
    for m in [&mut m1, &mut { m2 }, &mut { m3 }] {
        let mine: BTreeSet<u32> = owned[&m.joined.member_id].iter().copied().collect();
        let (got, _) = m.deliveries(mine.len() * 2, WAIT).await;
        assert_eq!(got.len(), mine.len() * 2);
        assert!(
            got.iter().all(|d| mine.contains(&d.partition)),
            "delivered outside the assignment"
        );
        seen += got.len();
        m.ack(&got).await;
    }
    assert_eq!(seen, 8);
    drop(c);
    stop(broker).await;
}

#[tokio::test]
async fn a_dropped_member_hands_its_messages_to_the_other() {
    let (_dir, broker, mut c) = start_with_topic("jobs", 2).await;
    let settings = Some(fast_settings(30_000, 50));
    let mut m1 = subscribe(&mut c, join("jobs", "billing", settings))
        .await
        .unwrap();
    let mut m2 = subscribe(&mut c, join("jobs", "billing", None))
        .await
        .unwrap();
    // m1 learns it lost a partition to m2.
    m1.await_assignment(1).await;
    let owned = assignment(&mut c, "jobs").await;
    let p1 = owned[&m1.joined.member_id].clone();
    let p2 = owned[&m2.joined.member_id].clone();
    assert_eq!((p1.len(), p2.len()), (1, 1), "{owned:?}");
    for p in 0..2 {
        publish_to(&mut c, "jobs", p, 5, "j").await;
    }
    let (got1, _) = m1.deliveries(5, WAIT).await;
    let (got2, _) = m2.deliveries(5, WAIT).await;
    assert_eq!(got1.len(), 5);
    assert_eq!(got2.len(), 5);
    assert!(got1.iter().all(|d| d.partition == p1[0]));
    m2.ack(&got2).await;

    // m1 goes away without acking: its messages and its partition go to m2.
    drop(m1);
    let (again, changes) = m2.deliveries(5, WAIT).await;
    assert_eq!(
        again.len(),
        5,
        "m1's unacked messages are redelivered to m2"
    );
    let offsets: BTreeSet<u64> = again.iter().map(|d| d.offset).collect();
    assert_eq!(offsets, got1.iter().map(|d| d.offset).collect());
    assert!(
        again
            .iter()
            .all(|d| d.partition == p1[0] && d.delivery_attempt == 2)
    );
    assert!(
        changes.iter().any(|c| c.added == p1),
        "m2 is told it gained {p1:?}: {changes:?}"
    );
    m2.ack(&again).await;
    let lost = p1[0] as usize;
    wait_for_group(&c, "jobs", "billing", |d| {
        d.members.len() == 1
            && d.partitions
                .iter()
                .all(|p| p.committed_offset == 5 && p.lag == 0)
            && d.partitions[lost].redelivered_count == 5
    })
    .await;
    drop(m2);
    drop(c);
    stop(broker).await;
}
