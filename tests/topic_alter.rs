//! AlterTopic over gRPC: retention changed on a live topic removes old segments at the
//! next retention pass, partitions added are served at once and reach a member that
//! subscribed before, the change survives a restart, and bad requests get their status.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use herald_broker::config::Config;
use herald_proto::HeraldClient;
use herald_proto::v1;
use tonic::Code;
use tonic::transport::Channel;

/// Segments of 64 KiB, so a few hundred KiB of records span several.
fn small_segments(dir: &Path) -> Config {
    Config {
        segment_bytes: 64 * 1024,
        max_batch_bytes: 32 * 1024,
        max_message_bytes: 8 * 1024,
        ..test_config(dir)
    }
}

async fn alter(
    client: &mut HeraldClient<Channel>,
    request: v1::AlterTopicRequest,
) -> Result<v1::TopicDescription, tonic::Status> {
    client
        .alter_topic(request)
        .await
        .map(|r| r.into_inner().topic.expect("the reply describes the topic"))
}

fn add_partitions(topic: &str, partitions: u32) -> v1::AlterTopicRequest {
    v1::AlterTopicRequest {
        name: topic.into(),
        partitions: Some(partitions),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowering_retention_removes_old_segments_at_the_next_pass() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(small_segments(dir.path())).await;
    let mut c = client(&broker).await;
    create_topic(&mut c, "t", 1).await;
    let value = "x".repeat(4000);
    for _ in 0..16 {
        let records = (0..6).map(|_| record(None, &value)).collect();
        publish(&mut c, "t", Some(0), records).await.unwrap();
    }
    let before = describe_topic(&mut c, "t").await;
    let p = &before.partitions[0];
    assert_eq!(p.start_offset, 0);
    assert!(p.segment_count >= 4, "{p:?}");
    assert_eq!(before.config.as_ref().unwrap().retention_bytes, Some(0));

    let altered = alter(
        &mut c,
        v1::AlterTopicRequest {
            name: "t".into(),
            retention_bytes: Some(64 * 1024),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let config = altered.config.unwrap();
    assert_eq!(config.retention_bytes, Some(64 * 1024));
    assert_eq!(config.retention_ms, before.config.unwrap().retention_ms);

    // A retention pass runs every 10 s per partition (counted from the writer's start,
    // checked on its 1 s idle wake), so this waits longer than CONDITION_WAIT.
    let trimmed = eventually(Duration::from_secs(30), || {
        let mut c = c.clone();
        async move {
            let p = describe_topic(&mut c, "t").await.partitions.swap_remove(0);
            p.start_offset > 0 && p.segment_count <= 2
        }
    })
    .await;
    let after = describe_topic(&mut c, "t").await.partitions.swap_remove(0);
    assert!(
        trimmed,
        "retention did not remove the old segments: {after:?}"
    );
    assert_eq!(after.end_offset, 96);
    let kept = fetch_all(&mut c, "t", 0, after.start_offset).await.unwrap();
    assert_eq!(kept.first().unwrap().offset, after.start_offset);
    assert_eq!(kept.last().unwrap().offset, 95);
    stop(broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_partitions_reach_a_member_that_subscribed_before() {
    let (_dir, broker, mut c) = start_with_topic("t", 1).await;
    let mut member = subscribe(&mut c, join("t", "g", Some(fast_settings(30_000, 10))))
        .await
        .unwrap();
    assert_eq!(member.joined.partitions, [0]);
    publish(&mut c, "t", Some(0), vec![record(Some("a"), "before")])
        .await
        .unwrap();
    let (got, _) = member.deliveries(1, CONDITION_WAIT).await;
    assert_eq!(got.len(), 1);
    member.ack(&got).await;

    let altered = alter(&mut c, add_partitions("t", 3)).await.unwrap();
    assert_eq!(altered.partition_count, 3);
    assert_eq!(altered.partitions.len(), 3);
    assert_eq!(member.await_assignment(3).await, [0, 1, 2]);

    // New partitions take publishes at once, named or picked by key over the new count.
    publish(&mut c, "t", Some(1), vec![record(None, "one")])
        .await
        .unwrap();
    publish(&mut c, "t", Some(2), vec![record(None, "two")])
        .await
        .unwrap();
    let key = (0..)
        .map(|i| format!("key-{i}"))
        .find(|k| herald_client::partition_for_key(k.as_bytes(), 3).0 == 2)
        .unwrap();
    let keyed = publish(&mut c, "t", None, vec![record(Some(&key), "keyed")])
        .await
        .unwrap();
    assert_eq!(keyed.partition, 2);

    let (got, _) = member.deliveries(3, CONDITION_WAIT).await;
    let mut seen: Vec<(u32, String)> = got
        .iter()
        .map(|d| (d.partition, String::from_utf8(d.value.to_vec()).unwrap()))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            (1, "one".to_owned()),
            (2, "keyed".to_owned()),
            (2, "two".to_owned())
        ]
    );
    member.ack(&got).await;
    let group = wait_for_group(&c, "t", "g", |g| {
        g.partitions.len() == 3 && g.partitions.iter().all(|p| p.lag == 0)
    })
    .await;
    assert_eq!(
        group
            .partitions
            .iter()
            .map(|p| p.committed_offset)
            .collect::<Vec<_>>(),
        [1, 1, 2]
    );
    stop(broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alter_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(test_config(dir.path())).await;
    let addr = broker.addr;
    let mut c = client(&broker).await;
    create_topic(&mut c, "t", 2).await;
    c.create_group(v1::CreateGroupRequest {
        topic: "t".into(),
        group: "g".into(),
        start_position: position(v1::position::Kind::Earliest(v1::Earliest {})),
        ..Default::default()
    })
    .await
    .unwrap();
    publish(&mut c, "t", Some(1), vec![record(None, "old")])
        .await
        .unwrap();
    alter(
        &mut c,
        v1::AlterTopicRequest {
            name: "t".into(),
            retention_ms: Some(3_600_000),
            max_message_bytes: Some(4096),
            partitions: Some(5),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    publish(&mut c, "t", Some(4), vec![record(None, "new")])
        .await
        .unwrap();
    stop(broker).await;

    let broker = start_at(dir.path(), addr).await;
    let mut c = client(&broker).await;
    let topic = describe_topic(&mut c, "t").await;
    assert_eq!(topic.partition_count, 5);
    let config = topic.config.unwrap();
    assert_eq!(config.retention_ms, Some(3_600_000));
    assert_eq!(config.max_message_bytes, Some(4096));
    let ends: Vec<u64> = topic.partitions.iter().map(|p| p.end_offset).collect();
    assert_eq!(ends, [0, 1, 0, 0, 1]);
    let group = describe_group(&mut c, "t", "g").await;
    assert_eq!(group.partitions.len(), 5);
    assert_eq!(group.partitions[4].lag, 1);
    // The new limit holds after the restart.
    let big = "x".repeat(5000);
    let refused = publish(&mut c, "t", Some(0), vec![record(None, &big)]).await;
    assert_eq!(code_of(refused), Code::ResourceExhausted);
    stop(broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_alters_are_refused_with_their_status() {
    let (_dir, broker, mut c) = start_with_topic("t", 3).await;
    let fewer = alter(&mut c, add_partitions("t", 2)).await.unwrap_err();
    assert_eq!(fewer.code(), Code::InvalidArgument);
    assert!(
        fewer
            .message()
            .contains("has 3 partitions; partitions can be added but not removed"),
        "{}",
        fewer.message()
    );
    let zero = alter(&mut c, add_partitions("t", 0)).await.unwrap_err();
    assert_eq!(zero.code(), Code::InvalidArgument);
    assert!(
        zero.message().contains("1..=4096, got 0"),
        "{}",
        zero.message()
    );
    let too_many = alter(&mut c, add_partitions("t", 4097)).await;
    assert_eq!(code_of(too_many), Code::InvalidArgument);
    let missing = alter(&mut c, add_partitions("nope", 4)).await;
    assert_eq!(code_of(missing), Code::NotFound);
    let bad_name = alter(&mut c, add_partitions("a/b", 4)).await;
    assert_eq!(code_of(bad_name), Code::InvalidArgument);
    let no_records = alter(
        &mut c,
        v1::AlterTopicRequest {
            name: "t".into(),
            max_message_bytes: Some(0),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(code_of(no_records), Code::InvalidArgument);
    // Refused alters changed nothing; the same count is a no-op.
    let same = alter(&mut c, add_partitions("t", 3)).await.unwrap();
    assert_eq!(same.partition_count, 3);
    assert_eq!(same, describe_topic(&mut c, "t").await);
    stop(broker).await;
}
