//! Flow control: a member never holds more unacked deliveries than its window, a backlog
//! drains at speed through that window, and with credit flow control nothing is sent
//! beyond the credit granted.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use herald_proto::v1;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_backlog_drains_through_the_members_window() {
    let (_dir, broker, mut c) = start_with_topic("t", 2).await;
    const PER_PARTITION: usize = 10_000;
    for p in 0..2 {
        for chunk in 0..10 {
            let records = (0..PER_PARTITION / 10)
                .map(|i| record(Some(&format!("k{}", i % 50)), &format!("{p}-{chunk}-{i}")))
                .collect();
            publish(&mut c, "t", Some(p), records).await.unwrap();
        }
    }
    const WINDOW: usize = 100;
    let mut m = subscribe(
        &mut c,
        v1::Join {
            max_in_flight_messages: WINDOW as u32,
            ..join("t", "g", Some(fast_settings(30_000, 20)))
        },
    )
    .await
    .unwrap();
    let started = Instant::now();
    let mut seen = BTreeSet::new();
    let mut held: Vec<v1::Delivery> = Vec::new();
    while seen.len() < 2 * PER_PARTITION {
        assert!(started.elapsed() < WAIT, "only {} delivered", seen.len());
        // A full window waits for acks: release the held ones when nothing comes.
        let Some(response) = m.next(Duration::from_millis(100)).await else {
            m.ack(&std::mem::take(&mut held)).await;
            continue;
        };
        let Some(v1::subscribe_response::Response::Deliveries(d)) = response.response else {
            continue;
        };
        // What the member holds unacked must fit the window.
        assert!(
            held.len() + d.deliveries.len() <= WINDOW,
            "{} + {} over the window",
            held.len(),
            d.deliveries.len()
        );
        for delivery in &d.deliveries {
            assert!(
                seen.insert((delivery.partition, delivery.offset)),
                "duplicate {delivery:?}"
            );
        }
        // Hold acks until half the window is unacked, so the window is what paces.
        held.extend(d.deliveries);
        if held.len() >= WINDOW / 2 || seen.len() == 2 * PER_PARTITION {
            m.ack(&std::mem::take(&mut held)).await;
        }
    }
    wait_for_group(&c, "t", "g", |d| d.partitions.iter().all(|p| p.lag == 0)).await;
    drop(m);
    drop(c);
    stop(broker).await;
}

#[tokio::test]
async fn credit_flow_control_sends_only_what_was_granted() {
    let (_dir, broker, mut c) = start_with_topic("t", 1).await;
    let records = (0..10).map(|i| record(None, &format!("v{i}"))).collect();
    publish(&mut c, "t", Some(0), records).await.unwrap();
    let mut m = subscribe(
        &mut c,
        v1::Join {
            credit_flow_control: true,
            ..join("t", "g", Some(fast_settings(30_000, 20)))
        },
    )
    .await
    .unwrap();
    let credit = |messages: u32| v1::SubscribeRequest {
        request: Some(v1::subscribe_request::Request::Credit(v1::Credit {
            messages,
            bytes: 1 << 20,
        })),
    };
    // The stream is read in order: whatever the broker would send without credit, or for
    // an ack, it has sent (and counts in flight) by the time the next credit is served.
    m.tx.send(credit(3)).await.unwrap();
    let (got, _) = m.deliveries(3, WAIT).await;
    let offsets: Vec<u64> = got.iter().map(|d| d.offset).collect();
    assert_eq!(offsets, [0, 1, 2], "exactly the credit granted");
    let d = describe_group(&mut c, "t", "g").await;
    assert_eq!(
        d.partitions[0].in_flight_count, 3,
        "sent without credit: {d:?}"
    );
    m.ack(&got).await;
    m.tx.send(credit(1)).await.unwrap();
    let (got, _) = m.deliveries(1, WAIT).await;
    let offsets: Vec<u64> = got.iter().map(|d| d.offset).collect();
    assert_eq!(offsets, [3]);
    let d = wait_for_group(&c, "t", "g", |d| d.partitions[0].committed_offset == 3).await;
    assert_eq!(
        d.partitions[0].in_flight_count, 1,
        "acks do not grant credit: {d:?}"
    );
    drop(m);
    drop(c);
    stop(broker).await;
}
