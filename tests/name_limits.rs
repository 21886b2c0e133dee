//! Every operation works at the documented name limit: a 249-character topic, group and
//! dead-letter topic can be created, used, survive a restart and be deleted.

mod common;

use std::time::Duration;

use common::*;
use herald_broker::topic::MAX_NAME_LEN;
use herald_proto::HeraldClient;
use herald_proto::v1;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(5);

/// A valid name of exactly `MAX_NAME_LEN` characters, starting with `prefix`.
fn longest(prefix: &str) -> String {
    let mut name = prefix.to_owned();
    name.push_str(&"x".repeat(MAX_NAME_LEN - prefix.len()));
    name
}

async fn topic_names(c: &mut HeraldClient<Channel>) -> Vec<String> {
    let listed = c
        .list_topics(v1::ListTopicsRequest {})
        .await
        .expect("topics listed")
        .into_inner();
    listed.topics.into_iter().map(|t| t.name).collect()
}

async fn group_names(c: &mut HeraldClient<Channel>, topic: &str) -> Vec<String> {
    let listed = c
        .list_groups(v1::ListGroupsRequest {
            topic: Some(topic.into()),
        })
        .await
        .expect("groups listed")
        .into_inner();
    listed.groups.into_iter().map(|g| g.group).collect()
}

#[tokio::test]
async fn names_at_the_limit_work_for_every_operation() {
    let dir = tempfile::tempdir().unwrap();
    let topic = longest("t");
    let dlq = longest("d");
    let group = longest("g");
    let broker = start(test_config(dir.path())).await;
    let mut c = client(&broker).await;
    create_topic(&mut c, &topic, 2).await;
    create_topic(&mut c, &dlq, 1).await;
    publish(&mut c, &topic, Some(1), vec![record(Some("k"), "kept")])
        .await
        .expect("publish to a 249-character topic");
    publish(&mut c, &topic, Some(1), vec![record(Some("k2"), "dead")])
        .await
        .unwrap();
    assert_eq!(fetch_all(&mut c, &topic, 1, 0).await.unwrap().len(), 2);
    assert_eq!(describe_topic(&mut c, &topic).await.name, topic);

    // A 249-character group with a 249-character dead-letter topic: one message acked,
    // one dead-lettered.
    let settings = v1::GroupSettings {
        max_delivery_attempts: Some(1),
        dead_letter_topic: Some(dlq.clone()),
        ..fast_settings(30_000, 20)
    };
    let mut m = subscribe(&mut c, join(&topic, &group, Some(settings)))
        .await
        .expect("subscribe with a 249-character group");
    let (got, _) = m.deliveries(2, WAIT).await;
    assert_eq!(got.len(), 2, "{got:?}");
    let (kept, dead): (Vec<_>, Vec<_>) = got.into_iter().partition(|d| d.offset == 0);
    m.ack(&kept).await;
    m.nack(&dead[0], None, "at the limit").await;
    let landed = eventually(WAIT, || {
        let (mut c, dlq) = (c.clone(), dlq.clone());
        async move { fetch_all(&mut c, &dlq, 0, 0).await.unwrap().len() == 1 }
    })
    .await;
    assert!(
        landed,
        "the dead letter reached the 249-character DLQ topic"
    );
    // The group's progress is kept.
    wait_for_group(&c, &topic, &group, |d| {
        d.partitions[1].committed_offset == 2
    })
    .await;
    drop(m);
    c.seek(v1::SeekRequest {
        topic: topic.clone(),
        group: group.clone(),
        partition: Some(1),
        position: position(v1::position::Kind::Offset(1)),
    })
    .await
    .expect("seek a 249-character group");
    assert_eq!(group_names(&mut c, &topic).await, vec![group.clone()]);

    // Everything survives a restart.
    drop(c);
    stop(broker).await;
    let broker = start(test_config(dir.path())).await;
    let mut c = client(&broker).await;
    let mut names = topic_names(&mut c).await;
    names.sort();
    assert_eq!(names, vec![dlq.clone(), topic.clone()]);
    assert_eq!(group_names(&mut c, &topic).await, vec![group.clone()]);
    let d = describe_group(&mut c, &topic, &group).await;
    assert_eq!(d.partitions[1].committed_offset, 1, "{d:?}");

    // And everything can be deleted, for good.
    c.delete_group(v1::DeleteGroupRequest {
        topic: topic.clone(),
        group: group.clone(),
    })
    .await
    .expect("delete a 249-character group");
    assert!(group_names(&mut c, &topic).await.is_empty());
    for name in [&topic, &dlq] {
        c.delete_topic(v1::DeleteTopicRequest { name: name.clone() })
            .await
            .expect("delete a 249-character topic");
    }
    assert!(topic_names(&mut c).await.is_empty());
    drop(c);
    stop(broker).await;
    let broker = start(test_config(dir.path())).await;
    let mut c = client(&broker).await;
    assert!(topic_names(&mut c).await.is_empty(), "deleted for good");
    // The name can be used again.
    create_topic(&mut c, &topic, 1).await;
    drop(c);
    stop(broker).await;
}
