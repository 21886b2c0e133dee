//! Group administration: CreateGroup fills in every setting, UpdateGroup changes only what
//! it sets and applies to later deliveries, DeleteGroup ends the members' streams with
//! NOT_FOUND, and deleting a topic deletes its groups.

mod common;

use std::time::Duration;

use common::*;
use herald_proto::v1;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(5);

/// Waits for the member's stream to end with an error; returns its code.
async fn stream_error(m: &mut Member) -> Code {
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match m.rx.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended without a status"),
                Err(status) => return status.code(),
            }
        }
    });
    ended.await.expect("the stream ends")
}

#[tokio::test]
async fn create_update_and_delete_a_group() {
    let (_dir, broker, mut c) = start_with_topic("t", 1).await;
    let created = c
        .create_group(v1::CreateGroupRequest {
            topic: "t".into(),
            group: "g".into(),
            settings: None,
            start_position: position(v1::position::Kind::Earliest(v1::Earliest {})),
        })
        .await
        .unwrap()
        .into_inner()
        .group
        .unwrap();
    let s = created.settings.unwrap();
    assert_eq!(s.ack_deadline_ms, Some(30_000));
    assert_eq!(s.retry_backoff_min_ms, Some(1_000));
    assert_eq!(s.retry_backoff_max_ms, Some(60_000));
    assert_eq!(s.max_delivery_attempts, Some(0));
    assert_eq!(s.dead_letter_topic.as_deref(), Some(""));
    assert_eq!(s.ordering, v1::OrderingMode::Key as i32);
    assert_eq!(created.partitions.len(), 1);
    assert!(created.members.is_empty());

    let updated = c
        .update_group(v1::UpdateGroupRequest {
            topic: "t".into(),
            group: "g".into(),
            settings: Some(v1::GroupSettings {
                ack_deadline_ms: Some(100),
                retry_backoff_min_ms: Some(10),
                retry_backoff_max_ms: Some(10),
                ordering: v1::OrderingMode::None as i32,
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .group
        .unwrap();
    let s = updated.settings.unwrap();
    assert_eq!(s.ack_deadline_ms, Some(100));
    assert_eq!(s.ordering, v1::OrderingMode::None as i32);
    assert_eq!(
        s.max_delivery_attempts,
        Some(0),
        "unset fields are unchanged"
    );

    // The new deadline applies: an unacked delivery comes back within a fraction of the
    // old 30 s.
    publish(&mut c, "t", None, vec![record(None, "x")])
        .await
        .unwrap();
    let mut m = subscribe(&mut c, join("t", "g", None)).await.unwrap();
    assert_eq!(
        m.joined.settings.as_ref().unwrap().ack_deadline_ms,
        Some(100)
    );
    let (first, _) = m.deliveries(1, WAIT).await;
    assert_eq!(first.len(), 1);
    let (again, _) = m.deliveries(1, Duration::from_secs(2)).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].delivery_attempt, 2);
    let d = describe_group(&mut c, "t", "g").await;
    assert_eq!(d.members.len(), 1);
    assert_eq!(d.members[0].client_id, "test");
    assert_eq!(d.members[0].partitions, vec![0]);
    assert_eq!(d.partitions[0].member_id, d.members[0].member_id);

    c.delete_group(v1::DeleteGroupRequest {
        topic: "t".into(),
        group: "g".into(),
    })
    .await
    .unwrap();
    assert_eq!(stream_error(&mut m).await, Code::NotFound);
    let code = code_of(
        c.describe_group(v1::DescribeGroupRequest {
            topic: "t".into(),
            group: "g".into(),
        })
        .await,
    );
    assert_eq!(code, Code::NotFound);
    let listed = c
        .list_groups(v1::ListGroupsRequest { topic: None })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.groups.is_empty());
    // A new group of the same name starts afresh (at Latest).
    c.create_group(v1::CreateGroupRequest {
        topic: "t".into(),
        group: "g".into(),
        settings: None,
        start_position: None,
    })
    .await
    .unwrap();
    let d = describe_group(&mut c, "t", "g").await;
    assert_eq!(d.partitions[0].committed_offset, 1);
    assert_eq!(d.partitions[0].redelivered_count, 0);
    drop(m);
    drop(c);
    stop(broker).await;
}

#[tokio::test]
async fn deleting_a_topic_deletes_its_groups() {
    let (dir, broker, mut c) = start_with_topic("t", 2).await;
    let mut m = subscribe(&mut c, join("t", "g", None)).await.unwrap();
    c.delete_topic(v1::DeleteTopicRequest { name: "t".into() })
        .await
        .unwrap();
    assert_eq!(stream_error(&mut m).await, Code::NotFound);
    create_topic(&mut c, "t", 1).await;
    let code = code_of(
        c.describe_group(v1::DescribeGroupRequest {
            topic: "t".into(),
            group: "g".into(),
        })
        .await,
    );
    assert_eq!(
        code,
        Code::NotFound,
        "the group of the deleted topic is gone"
    );
    let listed = c
        .list_groups(v1::ListGroupsRequest { topic: None })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.groups.is_empty());
    drop(m);
    drop(c);
    stop(broker).await;
    // Nor does it come back after a restart.
    let broker = start(test_config(dir.path())).await;
    let mut c = client(&broker).await;
    let listed = c
        .list_groups(v1::ListGroupsRequest { topic: None })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.groups.is_empty());
    drop(c);
    stop(broker).await;
}
