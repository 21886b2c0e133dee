//! Group state is persisted: after a restart only the unacked messages are redelivered,
//! and the group keeps its settings. Seek moves a group by timestamp, offset or to the ends.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use herald_proto::v1;
use herald_proto::v1::position::Kind;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn acks_survive_a_restart() {
    let (dir, broker, mut c) = start_with_topic("t", 1).await;
    let records = (0..10).map(|i| record(None, &format!("v{i}"))).collect();
    publish(&mut c, "t", Some(0), records).await.unwrap();
    let settings = v1::GroupSettings {
        ordering: v1::OrderingMode::None as i32,
        ..fast_settings(30_000, 20)
    };
    let mut m = subscribe(&mut c, join("t", "g", Some(settings)))
        .await
        .unwrap();
    let (got, _) = m.deliveries(10, WAIT).await;
    assert_eq!(got.len(), 10);
    let acked: Vec<v1::Delivery> = got
        .iter()
        .filter(|d| d.offset < 6 || d.offset == 8)
        .cloned()
        .collect();
    m.ack(&acked).await;
    wait_for_group(&c, "t", "g", |d| d.partitions[0].committed_offset == 6).await;
    drop(m);
    drop(c);
    stop(broker).await;

    let broker = start(test_config(dir.path())).await;
    let mut c = client(&broker).await;
    let d = describe_group(&mut c, "t", "g").await;
    assert_eq!(d.partitions[0].committed_offset, 6);
    assert_eq!(d.partitions[0].lag, 4);
    let s = d.settings.unwrap();
    assert_eq!(s.ordering, v1::OrderingMode::None as i32);
    assert_eq!(s.retry_backoff_min_ms, Some(20));
    let listed = c
        .list_groups(v1::ListGroupsRequest { topic: None })
        .await
        .unwrap()
        .into_inner()
        .groups;
    assert_eq!(listed.len(), 1);
    let mut m = subscribe(&mut c, join("t", "g", None)).await.unwrap();
    let (again, _) = m.deliveries(3, WAIT).await;
    let offsets: Vec<u64> = again.iter().map(|d| d.offset).collect();
    assert_eq!(
        offsets.iter().copied().collect::<BTreeSet<u64>>(),
        BTreeSet::from([6, 7, 9]),
        "only the unacked come back"
    );
    assert_eq!(offsets.len(), 3, "{offsets:?}");
    assert!(
        again.iter().all(|d| d.delivery_attempt == 2),
        "attempts are kept"
    );
    m.ack(&again).await;
    // An acked message delivered again would come before a later one.
    marker_arrives_alone(&mut c, &mut m, "t", 0, "marker").await;
    drop(m);
    drop(c);
    stop(broker).await;
}

#[tokio::test]
async fn seek_moves_a_group_by_timestamp_and_offset() {
    let (_dir, broker, mut c) = start_with_topic("t", 1).await;
    let records = (1..=4)
        .map(|i| {
            let mut r = record(None, &format!("at-{i}000"));
            r.timestamp_ms = i * 1000;
            r
        })
        .collect();
    publish(&mut c, "t", Some(0), records).await.unwrap();
    // Created at Latest: nothing to deliver.
    c.create_group(v1::CreateGroupRequest {
        topic: "t".into(),
        group: "g".into(),
        settings: Some(fast_settings(30_000, 20)),
        start_position: None,
    })
    .await
    .unwrap();
    let d = describe_group(&mut c, "t", "g").await;
    assert_eq!(d.partitions[0].committed_offset, 4);
    let seek = |partition: Option<u32>, kind: Kind| v1::SeekRequest {
        topic: "t".into(),
        group: "g".into(),
        partition,
        position: position(kind),
    };
    let moved = c
        .seek(seek(None, Kind::TimestampMs(2500)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        moved.partitions,
        vec![v1::PartitionOffset {
            partition: 0,
            offset: 2
        }]
    );
    let mut m = subscribe(&mut c, join("t", "g", None)).await.unwrap();
    let (got, _) = m.deliveries(2, WAIT).await;
    let values: Vec<&[u8]> = got.iter().map(|d| d.value.as_ref()).collect();
    assert_eq!(values, [&b"at-3000"[..], &b"at-4000"[..]]);
    m.ack(&got).await;

    // An offset outside the partition with `partition` set is OUT_OF_RANGE.
    let code = code_of(c.seek(seek(Some(0), Kind::Offset(99))).await);
    assert_eq!(code, Code::OutOfRange);
    let code = code_of(c.seek(seek(Some(7), Kind::Offset(0))).await);
    assert_eq!(code, Code::NotFound);
    // Back to an exact offset: redelivered from there.
    c.seek(seek(Some(0), Kind::Offset(1))).await.unwrap();
    let (replay, _) = m.deliveries(3, WAIT).await;
    let offsets: Vec<u64> = replay.iter().map(|d| d.offset).collect();
    assert_eq!(offsets, [1, 2, 3]);
    m.ack(&replay).await;

    // A shutdown ends an open Subscribe stream with UNAVAILABLE, and does not wait for it.
    drop(c);
    let stopping = tokio::spawn(broker.shutdown());
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match m.rx.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return Code::Ok,
                Err(status) => return status.code(),
            }
        }
    })
    .await
    .expect("the stream ends at shutdown");
    assert_eq!(ended, Code::Unavailable);
    tokio::time::timeout(WAIT, stopping)
        .await
        .expect("shutdown completes")
        .unwrap()
        .unwrap();
}

/// Without a clean shutdown (a crash), what the disk holds is the state written every
/// GROUP_PERSIST_INTERVAL: acks reach the state file within an interval or so.
#[tokio::test]
async fn acks_reach_the_disk_within_the_persist_interval() {
    use herald_broker::group::GroupSnapshot;
    use herald_broker::groups::GROUP_PERSIST_INTERVAL;

    let (dir, broker, mut c) = start_with_topic("t", 1).await;
    let records = (0..5).map(|i| record(None, &format!("v{i}"))).collect();
    publish(&mut c, "t", Some(0), records).await.unwrap();
    let mut m = subscribe(&mut c, join("t", "g", Some(fast_settings(30_000, 20))))
        .await
        .unwrap();
    let (got, _) = m.deliveries(5, WAIT).await;
    assert_eq!(got.len(), 5);
    m.ack(&got[..3]).await;
    let state = dir.path().join("groups/t/g/state");
    let committed = || {
        let bytes = std::fs::read(&state).expect("the state file exists");
        GroupSnapshot::decode(&bytes)
            .expect("a valid snapshot")
            .partitions[0]
            .committed
            .0
    };
    let acked = tokio::time::Instant::now();
    let on_disk = eventually(GROUP_PERSIST_INTERVAL * 3, || {
        let done = committed() == 3;
        async move { done }
    })
    .await;
    assert!(on_disk, "committed offset on disk: {}", committed());
    assert!(acked.elapsed() <= GROUP_PERSIST_INTERVAL * 3);
    drop(m);
    drop(c);
    stop(broker).await;
}
