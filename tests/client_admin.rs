//! The Rust client's admin API against a real in-process broker.

mod common;

use std::time::Duration;

use herald_client::{
    Error, GroupSettings, OrderingMode, Partition, Position, ProducerConfig, Record, TopicConfig,
};

#[tokio::test]
async fn topics_round_trip() {
    let t = common::start_with_client().await;
    let admin = t.client.admin();
    let created = admin
        .create_topic(
            "orders",
            3,
            TopicConfig {
                retention_ms: Some(3_600_000),
                ..TopicConfig::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(created.name, "orders");
    assert_eq!(created.partition_count, 3);
    assert_eq!(created.config.retention_ms, Some(3_600_000));
    assert_eq!(created.partitions.len(), 3);
    admin
        .create_topic("audit", 1, TopicConfig::default())
        .await
        .unwrap();

    let names: Vec<_> = admin
        .list_topics()
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.name, t.partition_count))
        .collect();
    assert!(names.contains(&("orders".into(), 3)), "{names:?}");
    assert!(names.contains(&("audit".into(), 1)), "{names:?}");

    let described = admin.describe_topic("orders").await.unwrap();
    assert_eq!(described.partitions[2].partition, Partition(2));
    assert!(described.config.segment_bytes.is_some());

    assert!(matches!(
        admin
            .create_topic("orders", 3, TopicConfig::default())
            .await,
        Err(Error::AlreadyExists(_))
    ));
    assert!(matches!(
        admin
            .create_topic("bad name!", 1, TopicConfig::default())
            .await,
        Err(Error::InvalidArgument(_))
    ));

    admin.delete_topic("audit").await.unwrap();
    let error = admin.describe_topic("audit").await.unwrap_err();
    assert!(matches!(error, Error::NotFound(_)), "{error:?}");
    assert_eq!(error.code(), Some(tonic::Code::NotFound));
    assert!(matches!(
        admin.delete_topic("audit").await,
        Err(Error::NotFound(_))
    ));
}

#[tokio::test]
async fn groups_round_trip() {
    let t = common::start_with_client().await;
    let admin = t.client.admin();
    admin
        .create_topic("orders", 2, TopicConfig::default())
        .await
        .unwrap();
    let producer = t.client.producer(ProducerConfig::new("orders"));
    producer
        .send_batch((0..10).map(|i| Record::new(format!("{i}")).partition(i % 2)))
        .await
        .unwrap();
    producer.close().await.unwrap();

    let settings = GroupSettings {
        ack_deadline: Some(Duration::from_secs(10)),
        ordering: Some(OrderingMode::Partition),
        ..GroupSettings::default()
    };
    let group = admin
        .create_group("orders", "billing", settings, Position::Earliest)
        .await
        .unwrap();
    assert_eq!(group.group, "billing");
    assert_eq!(group.settings.ack_deadline, Some(Duration::from_secs(10)));
    assert_eq!(group.settings.ordering, Some(OrderingMode::Partition));
    assert_eq!(group.partitions.len(), 2);
    assert_eq!(group.partitions[0].lag, 5);

    let groups = admin.list_groups(Some("orders")).await.unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].group, "billing");

    let moved = admin
        .seek("orders", "billing", None, Position::Latest)
        .await
        .unwrap();
    assert_eq!(moved.len(), 2);
    assert!(moved.iter().all(|(_, offset)| offset.0 == 5));
    let moved = admin
        .seek("orders", "billing", Some(Partition(1)), Position::Offset(2))
        .await
        .unwrap();
    assert_eq!(moved, vec![(Partition(1), herald_client::Offset(2))]);
    let described = admin.describe_group("orders", "billing").await.unwrap();
    assert_eq!(described.partitions[1].lag, 3);

    // No dead-letter topic: a valid request the state does not allow.
    assert!(matches!(
        admin.redrive("orders", "billing", 0).await,
        Err(Error::FailedPrecondition(_))
    ));

    let updated = admin
        .update_group(
            "orders",
            "billing",
            GroupSettings {
                ordering: Some(OrderingMode::None),
                ..GroupSettings::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.settings.ordering, Some(OrderingMode::None));
    assert_eq!(updated.settings.ack_deadline, Some(Duration::from_secs(10)));

    admin.delete_group("orders", "billing").await.unwrap();
    assert!(matches!(
        admin.describe_group("orders", "billing").await,
        Err(Error::NotFound(_))
    ));
    assert!(admin.list_groups(None).await.unwrap().is_empty());
}

#[tokio::test]
async fn connecting_to_nothing_is_a_transport_error() {
    let error = herald_client::Client::builder("http://127.0.0.1:1")
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Transport(_)), "{error:?}");
    assert!(matches!(
        herald_client::Client::connect("not a url").await,
        Err(Error::InvalidArgument(_))
    ));
}

/// DescribeTopic shows the disk a partition holds beside the bytes it stores: an empty
/// partition of a 256 MiB-segment topic holds about a megabyte, not a segment, and a
/// written one holds at least what it stores.
#[tokio::test]
async fn describe_shows_allocated_bytes_beside_used_bytes() {
    let t = common::start_with_client().await;
    let admin = t.client.admin();
    let config = TopicConfig {
        segment_bytes: Some(256 * 1024 * 1024),
        ..TopicConfig::default()
    };
    admin.create_topic("roomy", 3, config).await.unwrap();
    let producer = t.client.producer(ProducerConfig::new("roomy"));
    producer
        .send_batch((0..60).map(|i| Record::new(vec![i as u8; 20_000]).partition(0)))
        .await
        .unwrap();
    producer.close().await.unwrap();
    let described = admin.describe_topic("roomy").await.unwrap();
    let written = &described.partitions[0];
    assert!(written.size_bytes >= 1_200_000, "{written:?}");
    assert!(written.allocated_bytes >= written.size_bytes, "{written:?}");
    assert!(
        written.allocated_bytes <= written.size_bytes + 20 * 1024 * 1024,
        "{written:?}"
    );
    for idle in &described.partitions[1..] {
        assert_eq!(idle.size_bytes, 0);
        assert!(
            (1 << 20..=4 << 20).contains(&idle.allocated_bytes),
            "an idle partition holds {} bytes",
            idle.allocated_bytes
        );
    }
}
