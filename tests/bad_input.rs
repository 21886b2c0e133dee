//! Every bad input gets the exact status code the API documents, nothing of a refused
//! request is stored, and the broker keeps serving afterwards.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use herald_broker::config::Config;
use herald_broker::server::Broker;
use herald_broker::storage::{BatchBuilder, Record};
use herald_proto::HeraldClient;
use herald_proto::v1::{self, position::Kind, publish_request::Payload};
use tonic::Code;
use tonic::transport::Channel;

/// Limits small enough to hit cheaply. `max_batch_bytes + 64 KiB` is also the server's
/// gRPC message limit.
const MAX_BATCH_BYTES: usize = 64 * 1024;
const MAX_MESSAGE_BYTES: usize = 4096;
const MAX_BATCH_RECORDS: usize = 1000;

fn limits_config(dir: &Path) -> Config {
    Config {
        max_batch_bytes: MAX_BATCH_BYTES,
        max_message_bytes: MAX_MESSAGE_BYTES,
        max_batch_records: MAX_BATCH_RECORDS,
        ..test_config(dir)
    }
}

/// A broker on `config` with a topic "healthy" (2 partitions) that `still_serves` uses.
async fn setup(
    dir: &tempfile::TempDir,
    config: impl FnOnce(&Path) -> Config,
) -> (Broker, HeraldClient<Channel>) {
    let broker = start(config(dir.path())).await;
    let mut c = client(&broker).await;
    create_topic(&mut c, "healthy", 2).await;
    (broker, c)
}

/// A normal publish and fetch still work, and the record reads back intact.
async fn still_serves(c: &mut HeraldClient<Channel>) {
    let value = format!("still serving {:?}", std::time::Instant::now());
    let r = publish(c, "healthy", Some(1), vec![record(Some("k"), &value)])
        .await
        .expect("a normal publish works after bad input");
    let stored = fetch_all(c, "healthy", 1, r.base_offset)
        .await
        .expect("a normal fetch works after bad input");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].offset, r.base_offset);
    assert_eq!(stored[0].value.as_ref(), value.as_bytes());
}

async fn create(
    c: &mut HeraldClient<Channel>,
    name: &str,
    partitions: u32,
    config: Option<v1::TopicConfig>,
) -> Result<v1::CreateTopicResponse, tonic::Status> {
    c.create_topic(v1::CreateTopicRequest {
        name: name.into(),
        partitions,
        config,
        replication_factor: None,
    })
    .await
    .map(tonic::Response::into_inner)
}

async fn publish_payload(
    c: &mut HeraldClient<Channel>,
    topic: &str,
    partition: Option<u32>,
    payload: Option<Payload>,
) -> Result<v1::PublishResponse, tonic::Status> {
    c.publish(v1::PublishRequest {
        topic: topic.into(),
        partition,
        payload,
        producer: None,
    })
    .await
    .map(tonic::Response::into_inner)
}

async fn end_offsets(c: &mut HeraldClient<Channel>, topic: &str) -> Vec<u64> {
    describe_topic(c, topic)
        .await
        .partitions
        .iter()
        .map(|p| p.end_offset)
        .collect()
}

/// A valid storage batch of `n` records with `value_len`-byte values.
fn storage_batch(n: usize, value_len: usize) -> Vec<u8> {
    let value = vec![b'v'; value_len];
    let mut builder = BatchBuilder::default();
    for i in 0..n {
        builder.push(&Record {
            timestamp: 1_700_000_000_000 + i as i64,
            key: Some(b"key"),
            value: &value,
            headers: &[("h", b"1")],
        });
    }
    builder.finish()
}

fn big_records(n: usize, value_len: usize) -> Vec<v1::Record> {
    (0..n)
        .map(|_| v1::Record {
            value: vec![b'x'; value_len].into(),
            ..Default::default()
        })
        .collect()
}

#[tokio::test]
async fn invalid_topic_names_are_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mut c) = setup(&dir, test_config).await;
    let long = "x".repeat(250);
    for name in [
        "",
        ".",
        "..",
        "a/b",
        long.as_str(),
        "ü",
        "a b",
        "../etc",
        "a\\b",
    ] {
        assert_eq!(
            code_of(create(&mut c, name, 1, None).await),
            Code::InvalidArgument,
            "topic name {name:?}"
        );
    }
    // The boundaries that are allowed, so the check is not simply "refuse everything".
    let longest = "y".repeat(249);
    for name in [longest.as_str(), "A-Z_a.z-0.9", "..."] {
        create(&mut c, name, 1, None)
            .await
            .unwrap_or_else(|e| panic!("topic name {name:?} refused: {e}"));
    }
    let names: Vec<String> = c
        .list_topics(v1::ListTopicsRequest {})
        .await
        .unwrap()
        .into_inner()
        .topics
        .into_iter()
        .map(|t| t.name)
        .collect();
    let mut expected = vec![
        "...".to_owned(),
        "A-Z_a.z-0.9".into(),
        "healthy".into(),
        longest,
    ];
    expected.sort();
    assert_eq!(names, expected, "no refused name was created");
    // Nothing but topics was created in the data directory either.
    assert!(!dir.path().join("topics").join("a").exists());
    still_serves(&mut c).await;
    stop(broker).await;
}

#[tokio::test]
async fn partition_counts_outside_1_to_4096_are_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mut c) = setup(&dir, test_config).await;
    for partitions in [0, 4097, u32::MAX] {
        assert_eq!(
            code_of(create(&mut c, "parts", partitions, None).await),
            Code::InvalidArgument,
            "{partitions} partitions"
        );
    }
    assert_eq!(
        code_of(
            c.describe_topic(v1::DescribeTopicRequest {
                name: "parts".into()
            })
            .await
        ),
        Code::NotFound,
        "a refused create leaves no topic"
    );
    let created = create(&mut c, "parts", 1, None).await.unwrap();
    assert_eq!(created.topic.unwrap().partition_count, 1);
    still_serves(&mut c).await;
    stop(broker).await;
}

#[tokio::test]
async fn a_duplicate_create_is_already_exists_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mut c) = setup(&dir, test_config).await;
    create_topic(&mut c, "dup", 2).await;
    publish(&mut c, "dup", Some(0), vec![record(None, "kept")])
        .await
        .unwrap();
    for partitions in [2, 5] {
        assert_eq!(
            code_of(create(&mut c, "dup", partitions, None).await),
            Code::AlreadyExists
        );
    }
    let d = describe_topic(&mut c, "dup").await;
    assert_eq!(d.partition_count, 2);
    let stored = fetch_all(&mut c, "dup", 0, 0).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].value.as_ref(), b"kept");
    still_serves(&mut c).await;
    stop(broker).await;
}

#[tokio::test]
async fn a_missing_topic_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mut c) = setup(&dir, test_config).await;
    assert_eq!(
        code_of(publish(&mut c, "missing", None, vec![record(None, "x")]).await),
        Code::NotFound,
        "publish"
    );
    assert_eq!(
        code_of(publish(&mut c, "missing", Some(0), vec![record(Some("k"), "x")]).await),
        Code::NotFound,
        "publish to an explicit partition"
    );
    assert_eq!(
        code_of(fetch_all(&mut c, "missing", 0, 0).await),
        Code::NotFound,
        "fetch"
    );
    let mut follow = fetch_request("missing", 0, Kind::Latest(v1::Latest {}));
    follow.follow = true;
    assert_eq!(
        code_of(c.fetch(follow).await),
        Code::NotFound,
        "follow fetch"
    );
    assert_eq!(
        code_of(
            c.describe_topic(v1::DescribeTopicRequest {
                name: "missing".into()
            })
            .await
        ),
        Code::NotFound,
        "describe"
    );
    assert_eq!(
        code_of(
            c.delete_topic(v1::DeleteTopicRequest {
                name: "missing".into()
            })
            .await
        ),
        Code::NotFound,
        "delete"
    );
    // A deleted topic is missing too, and deleting it twice is NOT_FOUND.
    create_topic(&mut c, "gone", 1).await;
    c.delete_topic(v1::DeleteTopicRequest {
        name: "gone".into(),
    })
    .await
    .unwrap();
    assert_eq!(
        code_of(
            c.delete_topic(v1::DeleteTopicRequest {
                name: "gone".into()
            })
            .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code_of(publish(&mut c, "gone", None, vec![record(None, "x")]).await),
        Code::NotFound
    );
    still_serves(&mut c).await;
    stop(broker).await;
}

#[tokio::test]
async fn a_missing_partition_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mut c) = setup(&dir, test_config).await;
    for partition in [2, 3, u32::MAX] {
        assert_eq!(
            code_of(publish(&mut c, "healthy", Some(partition), vec![record(None, "x")]).await),
            Code::NotFound,
            "publish to partition {partition}"
        );
        assert_eq!(
            code_of(fetch_all(&mut c, "healthy", partition, 0).await),
            Code::NotFound,
            "fetch of partition {partition}"
        );
    }
    assert_eq!(end_offsets(&mut c, "healthy").await, vec![0, 0]);
    still_serves(&mut c).await;
    stop(broker).await;
}

#[tokio::test]
async fn a_publish_without_records_is_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mut c) = setup(&dir, test_config).await;
    assert_eq!(
        code_of(publish_payload(&mut c, "healthy", None, None).await),
        Code::InvalidArgument,
        "no payload"
    );
    assert_eq!(
        code_of(publish(&mut c, "healthy", None, vec![]).await),
        Code::InvalidArgument,
        "zero records"
    );
    assert_eq!(
        code_of(publish(&mut c, "healthy", Some(0), vec![]).await),
        Code::InvalidArgument,
        "zero records to an explicit partition"
    );
    assert_eq!(
        code_of(
            publish_payload(
                &mut c,
                "healthy",
                None,
                Some(Payload::StorageBatch(Vec::new().into()))
            )
            .await
        ),
        Code::InvalidArgument,
        "an empty storage batch"
    );
    assert_eq!(end_offsets(&mut c, "healthy").await, vec![0, 0]);
    still_serves(&mut c).await;
    stop(broker).await;
}

#[tokio::test]
async fn malformed_storage_batches_are_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mut c) = setup(&dir, test_config).await;
    publish(&mut c, "healthy", Some(0), vec![record(None, "before")])
        .await
        .unwrap();
    let valid = storage_batch(3, 10);

    // Pseudo-random bytes (a fixed LCG, so a failure reproduces).
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let random: Vec<u8> = (0..300)
        .map(|_| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 56) as u8
        })
        .collect();
    let mut bad_crc = valid.clone();
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0x01; // a byte of the last record's value: only the CRC catches it
    let mut bad_crc_field = valid.clone();
    bad_crc_field[12] ^= 0xff; // the CRC field itself
    let mut bad_magic = valid.clone();
    bad_magic[16] ^= 0xff;
    let mut bad_version = valid.clone();
    bad_version[18] = 99;
    let mut bad_flags = valid.clone();
    bad_flags[19] = 1;
    let mut bad_len = valid.clone();
    bad_len[8..12].copy_from_slice(&(valid.len() as u32 + 10).to_le_bytes());
    let truncated = valid[..valid.len() - 1].to_vec();
    let mut trailing = valid.clone();
    trailing.push(0);
    let header_only = valid[..40].to_vec();
    let mut two_batches = valid.clone();
    two_batches.extend_from_slice(&valid);

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("random bytes", random),
        ("a few bytes", vec![1, 2, 3]),
        ("a flipped body byte (bad CRC)", bad_crc),
        ("a flipped CRC field", bad_crc_field),
        ("bad magic", bad_magic),
        ("unknown version", bad_version),
        ("unknown flags", bad_flags),
        ("a length field past the end", bad_len),
        ("truncated by one byte", truncated),
        ("one trailing byte", trailing),
        ("a header alone", header_only),
        ("two batches back to back", two_batches),
    ];
    for (what, bytes) in cases {
        for partition in [None, Some(0)] {
            assert_eq!(
                code_of(
                    publish_payload(
                        &mut c,
                        "healthy",
                        partition,
                        Some(Payload::StorageBatch(bytes.clone().into()))
                    )
                    .await
                ),
                Code::InvalidArgument,
                "{what} (partition {partition:?})"
            );
        }
    }
    assert_eq!(
        end_offsets(&mut c, "healthy").await,
        vec![1, 0],
        "nothing of a refused batch is stored"
    );
    // The unmodified batch is accepted: the corruption is what was refused.
    let r = publish_payload(
        &mut c,
        "healthy",
        Some(0),
        Some(Payload::StorageBatch(valid.into())),
    )
    .await
    .unwrap();
    assert_eq!((r.base_offset, r.last_offset), (1, 3));
    let stored = fetch_all(&mut c, "healthy", 0, 0).await.unwrap();
    assert_eq!(stored.len(), 4);
    assert_eq!(stored[0].value.as_ref(), b"before");
    assert_eq!(stored[3].value.as_ref(), &[b'v'; 10]);
    still_serves(&mut c).await;
    stop(broker).await;
}

#[tokio::test]
async fn a_record_above_max_message_bytes_is_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mut c) = setup(&dir, limits_config).await;
    let over = MAX_MESSAGE_BYTES + 1;
    // A value alone, a key alone, headers alone, and a mix only their sum makes too big.
    let cases = vec![
        (
            "value",
            v1::Record {
                value: vec![b'v'; over].into(),
                ..Default::default()
            },
        ),
        (
            "key",
            v1::Record {
                key: Some(vec![b'k'; over].into()),
                ..Default::default()
            },
        ),
        (
            "headers",
            v1::Record {
                headers: vec![v1::Header {
                    key: "h".into(),
                    value: vec![b'h'; over].into(),
                }],
                ..Default::default()
            },
        ),
        (
            "key + value + headers",
            v1::Record {
                key: Some(vec![b'k'; 2000].into()),
                value: vec![b'v'; 2000].into(),
                headers: vec![v1::Header {
                    key: "h".into(),
                    value: vec![b'h'; 200].into(),
                }],
                ..Default::default()
            },
        ),
    ];
    for (what, big) in cases {
        // Alone, and after a small record in the same batch.
        for records in [vec![big.clone()], vec![record(None, "small"), big.clone()]] {
            assert_eq!(
                code_of(publish(&mut c, "healthy", Some(0), records).await),
                Code::ResourceExhausted,
                "a record too big by its {what}"
            );
        }
    }
    // The fast path enforces the same limit.
    assert_eq!(
        code_of(
            publish_payload(
                &mut c,
                "healthy",
                Some(0),
                Some(Payload::StorageBatch(storage_batch(1, over).into()))
            )
            .await
        ),
        Code::ResourceExhausted,
        "storage batch"
    );
    // A topic's own, smaller limit applies to that topic only.
    create(
        &mut c,
        "small-messages",
        1,
        Some(v1::TopicConfig {
            max_message_bytes: Some(100),
            ..Default::default()
        }),
    )
    .await
    .unwrap();
    let medium = "m".repeat(200);
    assert_eq!(
        code_of(publish(&mut c, "small-messages", None, vec![record(None, &medium)]).await),
        Code::ResourceExhausted,
        "the topic's max_message_bytes"
    );
    publish(&mut c, "small-messages", None, vec![record(None, "tiny")])
        .await
        .unwrap();
    publish(&mut c, "healthy", Some(0), vec![record(None, &medium)])
        .await
        .unwrap();
    assert_eq!(end_offsets(&mut c, "healthy").await, vec![1, 0]);
    assert_eq!(end_offsets(&mut c, "small-messages").await, vec![1]);
    still_serves(&mut c).await;
    stop(broker).await;
}

/// `max_message_bytes` bounds each record (key + value + headers), not the batch: a batch
/// of records under it is accepted whatever its total, and one record over it is refused.
#[tokio::test]
async fn max_message_bytes_bounds_each_record_not_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mut c) = setup(&dir, limits_config).await;
    create(
        &mut c,
        "small-messages",
        1,
        Some(v1::TopicConfig {
            max_message_bytes: Some(1000),
            ..Default::default()
        }),
    )
    .await
    .unwrap();
    // Ten records of 200 bytes: each well under the limit, the batch twice it.
    let records = (0..10).map(|_| record(None, &"r".repeat(200))).collect();
    publish(&mut c, "small-messages", None, records)
        .await
        .unwrap();
    assert_eq!(end_offsets(&mut c, "small-messages").await, vec![10]);
    // Exactly the limit is accepted; one byte more is refused and stores nothing.
    publish(
        &mut c,
        "small-messages",
        None,
        vec![record(None, &"r".repeat(1000))],
    )
    .await
    .unwrap();
    assert_eq!(
        code_of(
            publish(
                &mut c,
                "small-messages",
                None,
                vec![record(None, &"r".repeat(1001))]
            )
            .await
        ),
        Code::ResourceExhausted
    );
    assert_eq!(end_offsets(&mut c, "small-messages").await, vec![11]);
    still_serves(&mut c).await;
    stop(broker).await;
}

#[tokio::test]
async fn a_batch_above_max_batch_bytes_is_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mut c) = setup(&dir, limits_config).await;
    // 20 records of 4000 bytes: each under max_message_bytes, 80 000 bytes in all, above
    // max_batch_bytes (65 536) but below the gRPC message limit (131 072).
    assert_eq!(
        code_of(publish(&mut c, "healthy", Some(0), big_records(20, 4000)).await),
        Code::ResourceExhausted,
        "plain records"
    );
    assert_eq!(
        code_of(publish(&mut c, "healthy", None, big_records(20, 4000)).await),
        Code::ResourceExhausted,
        "plain records, round-robin"
    );
    let batch = storage_batch(20, 4000);
    assert!(batch.len() > MAX_BATCH_BYTES);
    assert_eq!(
        code_of(
            publish_payload(
                &mut c,
                "healthy",
                None,
                Some(Payload::StorageBatch(batch.into()))
            )
            .await
        ),
        Code::ResourceExhausted,
        "storage batch"
    );
    // Just under the limit is accepted.
    let r = publish(&mut c, "healthy", Some(0), big_records(15, 4000))
        .await
        .unwrap();
    assert_eq!((r.base_offset, r.last_offset), (0, 14));
    assert_eq!(end_offsets(&mut c, "healthy").await, vec![15, 0]);
    still_serves(&mut c).await;
    stop(broker).await;
}

/// A request larger than the server's gRPC message limit (max_batch_bytes + 64 KiB) is
/// refused before it is decoded, with RESOURCE_EXHAUSTED as the API documents for size
/// limits (tonic alone says OUT_OF_RANGE).
#[tokio::test]
async fn a_request_above_the_grpc_message_limit_is_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mut c) = setup(&dir, limits_config).await;
    // 40 records of 4000 bytes: 160 000 bytes, above 65 536 + 65 536.
    let status = publish(&mut c, "healthy", Some(0), big_records(40, 4000))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("at most 131072 bytes"),
        "the message names the limit: {status:?}"
    );
    let batch = storage_batch(40, 4000);
    assert_eq!(
        code_of(
            publish_payload(
                &mut c,
                "healthy",
                None,
                Some(Payload::StorageBatch(batch.into()))
            )
            .await
        ),
        Code::ResourceExhausted,
        "storage batch"
    );
    assert_eq!(end_offsets(&mut c, "healthy").await, vec![0, 0]);
    // The same connection is still usable.
    still_serves(&mut c).await;
    stop(broker).await;
}

#[tokio::test]
async fn more_records_than_max_batch_records_is_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mut c) = setup(&dir, limits_config).await;
    let too_many: Vec<v1::Record> = (0..=MAX_BATCH_RECORDS).map(|_| record(None, "")).collect();
    assert_eq!(
        code_of(publish(&mut c, "healthy", Some(0), too_many).await),
        Code::ResourceExhausted,
        "plain records"
    );
    assert_eq!(
        code_of(
            publish_payload(
                &mut c,
                "healthy",
                Some(0),
                Some(Payload::StorageBatch(
                    storage_batch(MAX_BATCH_RECORDS + 1, 0).into()
                ))
            )
            .await
        ),
        Code::ResourceExhausted,
        "storage batch"
    );
    assert_eq!(end_offsets(&mut c, "healthy").await, vec![0, 0]);
    // Exactly the limit is accepted, in either form.
    let exactly: Vec<v1::Record> = (0..MAX_BATCH_RECORDS).map(|_| record(None, "")).collect();
    let r = publish(&mut c, "healthy", Some(0), exactly).await.unwrap();
    assert_eq!(r.last_offset, MAX_BATCH_RECORDS as u64 - 1);
    let r = publish_payload(
        &mut c,
        "healthy",
        Some(0),
        Some(Payload::StorageBatch(
            storage_batch(MAX_BATCH_RECORDS, 0).into(),
        )),
    )
    .await
    .unwrap();
    assert_eq!(r.last_offset, 2 * MAX_BATCH_RECORDS as u64 - 1);
    still_serves(&mut c).await;
    stop(broker).await;
}

#[tokio::test]
async fn a_fetch_outside_the_partition_is_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mut c) = setup(&dir, test_config).await;
    publish(
        &mut c,
        "healthy",
        Some(0),
        vec![record(None, "a"), record(None, "b"), record(None, "c")],
    )
    .await
    .unwrap();
    for offset in [4, 5, 1000, u64::MAX] {
        for follow in [false, true] {
            let mut request = fetch_request("healthy", 0, Kind::Offset(offset));
            request.follow = follow;
            assert_eq!(
                code_of(c.fetch(request).await),
                Code::OutOfRange,
                "offset {offset}, follow {follow}"
            );
        }
    }
    assert_eq!(
        code_of(fetch_all(&mut c, "healthy", 1, 1).await),
        Code::OutOfRange,
        "offset 1 of an empty partition"
    );
    // The end offset itself is in range: one empty response.
    let responses = fetch_responses(&mut c, fetch_request("healthy", 0, Kind::Offset(3)))
        .await
        .unwrap();
    assert_eq!(responses.len(), 1);
    assert!(responses[0].records.is_empty());
    assert_eq!(responses[0].high_watermark, 3);
    assert_eq!(responses[0].next_offset, 3);
    still_serves(&mut c).await;
    stop(broker).await;
}

/// common.proto: "Exactly one must be set; a Position with none set is INVALID_ARGUMENT."
#[tokio::test]
async fn a_position_with_no_kind_is_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mut c) = setup(&dir, test_config).await;
    publish(&mut c, "healthy", Some(0), vec![record(None, "a")])
        .await
        .unwrap();
    let mut request = fetch_request("healthy", 0, Kind::Offset(0));
    request.start = Some(v1::Position { kind: None });
    assert_eq!(code_of(c.fetch(request).await), Code::InvalidArgument);
    still_serves(&mut c).await;
    stop(broker).await;
}

#[tokio::test]
async fn bad_topic_settings_are_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mut c) = setup(&dir, limits_config).await;
    let cases = vec![
        (
            "segment_bytes 10",
            v1::TopicConfig {
                segment_bytes: Some(10),
                ..Default::default()
            },
        ),
        (
            "segment_bytes 0",
            v1::TopicConfig {
                segment_bytes: Some(0),
                ..Default::default()
            },
        ),
        (
            "segment_bytes above 4 GiB",
            v1::TopicConfig {
                segment_bytes: Some(1 << 40),
                ..Default::default()
            },
        ),
        (
            "segment_bytes below max_batch_bytes",
            v1::TopicConfig {
                segment_bytes: Some(MAX_BATCH_BYTES as u64 / 2),
                ..Default::default()
            },
        ),
        (
            "an unknown fsync policy",
            v1::TopicConfig {
                fsync_policy: 99,
                ..Default::default()
            },
        ),
        (
            "the interval policy with a zero interval",
            v1::TopicConfig {
                fsync_policy: v1::FsyncPolicy::Interval as i32,
                fsync_interval_ms: Some(0),
                ..Default::default()
            },
        ),
        (
            "max_message_bytes 0",
            v1::TopicConfig {
                max_message_bytes: Some(0),
                ..Default::default()
            },
        ),
        (
            "max_message_bytes above max_batch_bytes",
            v1::TopicConfig {
                max_message_bytes: Some(MAX_BATCH_BYTES as u32 + 1),
                ..Default::default()
            },
        ),
    ];
    for (what, config) in cases {
        assert_eq!(
            code_of(create(&mut c, "configured", 1, Some(config)).await),
            Code::InvalidArgument,
            "{what}"
        );
        assert_eq!(
            code_of(
                c.describe_topic(v1::DescribeTopicRequest {
                    name: "configured".into()
                })
                .await
            ),
            Code::NotFound,
            "{what}: a refused create leaves no topic"
        );
    }
    // Valid settings are accepted and reported back.
    let created = create(
        &mut c,
        "configured",
        1,
        Some(v1::TopicConfig {
            segment_bytes: Some(MAX_BATCH_BYTES as u64),
            fsync_policy: v1::FsyncPolicy::Interval as i32,
            fsync_interval_ms: Some(5),
            max_message_bytes: Some(MAX_BATCH_BYTES as u32),
            ..Default::default()
        }),
    )
    .await
    .unwrap();
    let config = created.topic.unwrap().config.unwrap();
    assert_eq!(config.segment_bytes, Some(MAX_BATCH_BYTES as u64));
    assert_eq!(config.fsync_policy, v1::FsyncPolicy::Interval as i32);
    assert_eq!(config.fsync_interval_ms, Some(5));
    still_serves(&mut c).await;
    stop(broker).await;
}

#[tokio::test]
async fn max_topics_and_max_partitions_exceeded_are_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mut c) = setup(&dir, |d| Config {
        max_topics: 3,
        max_partitions: 8,
        ..test_config(d)
    })
    .await;
    // "healthy" (2 partitions) is the first topic.
    create_topic(&mut c, "t2", 1).await;
    create_topic(&mut c, "t3", 1).await;
    assert_eq!(
        code_of(create(&mut c, "t4", 1, None).await),
        Code::ResourceExhausted,
        "a 4th topic with max_topics = 3"
    );
    // Deleting a topic makes room again.
    c.delete_topic(v1::DeleteTopicRequest { name: "t3".into() })
        .await
        .unwrap();
    // 2 + 1 partitions exist; 6 more would make 9 > max_partitions.
    assert_eq!(
        code_of(create(&mut c, "t4", 6, None).await),
        Code::ResourceExhausted,
        "partitions beyond max_partitions"
    );
    create(&mut c, "t4", 5, None).await.unwrap();
    assert_eq!(
        c.list_topics(v1::ListTopicsRequest {})
            .await
            .unwrap()
            .into_inner()
            .topics
            .len(),
        3
    );
    still_serves(&mut c).await;
    stop(broker).await;
}

fn follow_request(topic: &str) -> v1::FetchRequest {
    let mut request = fetch_request(topic, 0, Kind::Latest(v1::Latest {}));
    request.follow = true;
    request
}

#[tokio::test]
async fn max_streams_per_connection_exceeded_is_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mut c) = setup(&dir, |d| Config {
        max_streams_per_connection: 2,
        ..test_config(d)
    })
    .await;
    let first = c
        .fetch(follow_request("healthy"))
        .await
        .unwrap()
        .into_inner();
    let second = c
        .fetch(follow_request("healthy"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        code_of(c.fetch(follow_request("healthy")).await),
        Code::ResourceExhausted,
        "a 3rd follow fetch on the connection"
    );
    // A publish stream is a stream too.
    let requests = futures::stream::pending::<v1::PublishStreamRequest>();
    assert_eq!(
        code_of(c.publish_stream(requests).await),
        Code::ResourceExhausted,
        "a publish stream as the 3rd stream"
    );
    // Unary calls are not streams: they still work on this connection.
    publish(&mut c, "healthy", Some(1), vec![record(None, "unary")])
        .await
        .unwrap();
    // The limit is per connection: another connection may open its own streams.
    let mut other = client(&broker).await;
    let _third = other
        .fetch(follow_request("healthy"))
        .await
        .expect("another connection has its own limit")
        .into_inner();
    still_serves(&mut other).await;

    // Closing a stream frees its slot (the server notices the cancel asynchronously).
    drop(first);
    let reopened = wait_for("the slot of a closed stream is freed", || {
        let mut c = c.clone();
        async move {
            match c.fetch(follow_request("healthy")).await {
                Ok(stream) => Ok(stream.into_inner()),
                Err(status) if status.code() == Code::ResourceExhausted => Err(status),
                Err(status) => panic!("unexpected status {status:?}"),
            }
        }
    })
    .await;
    // And the limit still holds with the reopened stream.
    assert_eq!(
        code_of(c.fetch(follow_request("healthy")).await),
        Code::ResourceExhausted
    );
    drop((second, reopened));
    stop(broker).await;
}

#[tokio::test]
async fn open_streams_end_with_unavailable_when_the_broker_shuts_down() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mut c) = setup(&dir, test_config).await;
    let mut fetch = c
        .fetch(follow_request("healthy"))
        .await
        .unwrap()
        .into_inner();
    let (tx, rx) = tokio::sync::mpsc::channel::<v1::PublishStreamRequest>(1);
    let mut replies = c
        .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    // The publish stream works before the shutdown.
    tx.send(v1::PublishStreamRequest {
        sequence: 1,
        publish: Some(v1::PublishRequest {
            topic: "healthy".into(),
            partition: Some(0),
            payload: Some(Payload::Records(v1::Records {
                records: vec![record(None, "before shutdown")],
            })),
            producer: None,
        }),
    })
    .await
    .unwrap();
    let reply = replies.message().await.unwrap().unwrap();
    assert_eq!(reply.sequence, 1);
    let first = fetch.message().await.unwrap().unwrap();
    assert_eq!(first.records.len(), 1, "the follow fetch saw the publish");

    let shutdown = tokio::spawn(broker.shutdown());
    let ended = tokio::time::timeout(Duration::from_secs(5), fetch.message())
        .await
        .expect("the follow fetch ends promptly");
    assert_eq!(code_of(ended), Code::Unavailable, "follow fetch");
    let ended = tokio::time::timeout(Duration::from_secs(5), replies.message())
        .await
        .expect("the publish stream ends promptly");
    assert_eq!(code_of(ended), Code::Unavailable, "publish stream");
    drop(tx);
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("shutdown finishes")
        .unwrap()
        .unwrap();
    // Accepted data survives: a new broker on the directory has the record.
    let broker = start(test_config(dir.path())).await;
    let mut c = client(&broker).await;
    let stored = fetch_all(&mut c, "healthy", 0, 0).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].value.as_ref(), b"before shutdown");
    stop(broker).await;
}

/// The group RPCs refuse bad input with the documented codes: NOT_FOUND for a missing topic
/// or group, INVALID_ARGUMENT for bad names, settings, positions and Subscribe messages,
/// ALREADY_EXISTS for a second create, FAILED_PRECONDITION for Redrive without a DLQ.
#[tokio::test]
async fn group_rpcs_refuse_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mut c) = setup(&dir, test_config).await;
    let expect = |what: &str, code: Code, want: Code| {
        assert_eq!(code, want, "{what}");
    };
    let missing = |group: &str| (String::from("healthy"), String::from(group));
    let (topic, group) = missing("nope");
    expect(
        "DescribeGroup of a missing group",
        code_of(
            c.describe_group(v1::DescribeGroupRequest {
                topic: topic.clone(),
                group: group.clone(),
            })
            .await,
        ),
        Code::NotFound,
    );
    expect(
        "DescribeGroup of a missing topic",
        code_of(
            c.describe_group(v1::DescribeGroupRequest {
                topic: "absent".into(),
                group: "g".into(),
            })
            .await,
        ),
        Code::NotFound,
    );
    expect(
        "UpdateGroup of a missing group",
        code_of(
            c.update_group(v1::UpdateGroupRequest {
                topic: topic.clone(),
                group: group.clone(),
                settings: None,
            })
            .await,
        ),
        Code::NotFound,
    );
    expect(
        "DeleteGroup of a missing group",
        code_of(
            c.delete_group(v1::DeleteGroupRequest {
                topic: topic.clone(),
                group: group.clone(),
            })
            .await,
        ),
        Code::NotFound,
    );
    expect(
        "Seek of a missing group",
        code_of(
            c.seek(v1::SeekRequest {
                topic: topic.clone(),
                group: group.clone(),
                partition: None,
                position: position(Kind::Earliest(v1::Earliest {})),
            })
            .await,
        ),
        Code::NotFound,
    );
    expect(
        "ListPending of a missing group",
        code_of(
            c.list_pending(v1::ListPendingRequest {
                topic: topic.clone(),
                group: group.clone(),
                ..Default::default()
            })
            .await,
        ),
        Code::NotFound,
    );
    expect(
        "Redrive of a missing group",
        code_of(
            c.redrive(v1::RedriveRequest {
                topic: topic.clone(),
                group: group.clone(),
                max_messages: 0,
            })
            .await,
        ),
        Code::NotFound,
    );
    let listed = c
        .list_groups(v1::ListGroupsRequest { topic: None })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.groups.is_empty());

    // CreateGroup checks.
    let create =
        |topic: &str, group: &str, settings: Option<v1::GroupSettings>| v1::CreateGroupRequest {
            topic: topic.into(),
            group: group.into(),
            settings,
            start_position: None,
        };
    let bad_settings = [
        (
            "a zero ack deadline",
            v1::GroupSettings {
                ack_deadline_ms: Some(0),
                ..Default::default()
            },
        ),
        (
            "backoff min above max",
            v1::GroupSettings {
                retry_backoff_min_ms: Some(500),
                retry_backoff_max_ms: Some(100),
                ..Default::default()
            },
        ),
        (
            "an unknown ordering mode",
            v1::GroupSettings {
                ordering: 99,
                ..Default::default()
            },
        ),
        (
            "attempts without a dead-letter topic",
            v1::GroupSettings {
                max_delivery_attempts: Some(3),
                ..Default::default()
            },
        ),
    ];
    for (what, settings) in bad_settings {
        expect(
            what,
            code_of(c.create_group(create("healthy", "g", Some(settings))).await),
            Code::InvalidArgument,
        );
    }
    expect(
        "CreateGroup on a missing topic",
        code_of(c.create_group(create("absent", "g", None)).await),
        Code::NotFound,
    );
    expect(
        "a bad group name",
        code_of(c.create_group(create("healthy", "a/b", None)).await),
        Code::InvalidArgument,
    );
    expect(
        "an empty start position",
        code_of(
            c.create_group(v1::CreateGroupRequest {
                start_position: Some(v1::Position { kind: None }),
                ..create("healthy", "g", None)
            })
            .await,
        ),
        Code::InvalidArgument,
    );
    c.create_group(create("healthy", "g", None)).await.unwrap();
    expect(
        "a second CreateGroup",
        code_of(c.create_group(create("healthy", "g", None)).await),
        Code::AlreadyExists,
    );
    expect(
        "Seek without a position",
        code_of(
            c.seek(v1::SeekRequest {
                topic: "healthy".into(),
                group: "g".into(),
                partition: None,
                position: None,
            })
            .await,
        ),
        Code::InvalidArgument,
    );
    expect(
        "Redrive without a dead-letter topic",
        code_of(
            c.redrive(v1::RedriveRequest {
                topic: "healthy".into(),
                group: "g".into(),
                max_messages: 0,
            })
            .await,
        ),
        Code::FailedPrecondition,
    );
    expect(
        "UpdateGroup with a zero ack deadline",
        code_of(
            c.update_group(v1::UpdateGroupRequest {
                topic: "healthy".into(),
                group: "g".into(),
                settings: Some(v1::GroupSettings {
                    ack_deadline_ms: Some(0),
                    ..Default::default()
                }),
            })
            .await,
        ),
        Code::InvalidArgument,
    );

    // Subscribe checks: the status arrives on the response stream.
    let join = |topic: &str| v1::SubscribeRequest {
        request: Some(v1::subscribe_request::Request::Join(v1::Join {
            topic: topic.into(),
            group: "g".into(),
            ..Default::default()
        })),
    };
    let ack = v1::SubscribeRequest {
        request: Some(v1::subscribe_request::Request::Ack(v1::Ack {
            ack_ids: vec![bytes::Bytes::from_static(b"not an ack id")],
            ..Default::default()
        })),
    };
    let cases = [
        (
            "Subscribe to a missing topic",
            vec![join("absent")],
            Code::NotFound,
        ),
        (
            "Subscribe starting with an Ack",
            vec![ack],
            Code::InvalidArgument,
        ),
        (
            "Subscribe with two Joins",
            vec![join("healthy"), join("healthy")],
            Code::InvalidArgument,
        ),
        (
            "Subscribe with an empty request",
            vec![join("healthy"), v1::SubscribeRequest { request: None }],
            Code::InvalidArgument,
        ),
    ];
    for (what, requests, want) in cases {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        for request in requests {
            tx.send(request).await.unwrap();
        }
        let outcome = async {
            let mut stream = c
                .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await?
                .into_inner();
            while stream.message().await?.is_some() {}
            Ok::<(), tonic::Status>(())
        };
        let outcome = tokio::time::timeout(Duration::from_secs(5), outcome)
            .await
            .expect("the stream ends");
        expect(what, code_of(outcome), want);
        drop(tx);
    }
    still_serves(&mut c).await;
    stop(broker).await;
}

/// Error messages repeat a bad input only as a short prefix: a 20 KB name does not come
/// back whole (it would overflow the client's header limit and hide the real status).
#[tokio::test]
async fn error_messages_cut_echoed_input_to_a_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mut c) = setup(&dir, test_config).await;
    let huge = "n".repeat(20_000);
    let check = |what: &str, status: tonic::Status, code: Code| {
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(
            status.message().len() < 400,
            "{what}: a {}-byte message",
            status.message().len()
        );
        assert!(
            status.message().contains("nnnnnnnnnn"),
            "{what}: the prefix is kept: {}",
            status.message()
        );
    };
    let status = create(&mut c, &huge, 1, None).await.unwrap_err();
    check("CreateTopic", status, Code::InvalidArgument);
    let status = publish(&mut c, &huge, None, vec![record(None, "v")])
        .await
        .unwrap_err();
    check("Publish", status, Code::NotFound);
    let status = c
        .describe_topic(v1::DescribeTopicRequest { name: huge.clone() })
        .await
        .unwrap_err();
    check("DescribeTopic", status, Code::NotFound);
    let status = c
        .delete_topic(v1::DeleteTopicRequest { name: huge.clone() })
        .await
        .unwrap_err();
    check("DeleteTopic", status, Code::InvalidArgument);
    let status = fetch_all(&mut c, &huge, 0, 0).await.unwrap_err();
    check("Fetch", status, Code::NotFound);
    let status = c
        .create_group(v1::CreateGroupRequest {
            topic: "healthy".into(),
            group: huge.clone(),
            settings: None,
            start_position: None,
        })
        .await
        .unwrap_err();
    check("CreateGroup", status, Code::InvalidArgument);
    let status = c
        .describe_group(v1::DescribeGroupRequest {
            topic: huge.clone(),
            group: "g".into(),
        })
        .await
        .unwrap_err();
    // Group lookups name the input in full; the status conversion's backstop cuts the
    // message at 1 KiB.
    assert!(status.message().len() < 1200, "DescribeGroup: {status:?}");
    let status = subscribe(&mut c, join("healthy", &huge, None))
        .await
        .err()
        .expect("a huge group name is refused");
    check("Subscribe", status, Code::InvalidArgument);
    still_serves(&mut c).await;
    stop(broker).await;
}

/// subscribe.proto: ack ids that name no current delivery are ignored. A malformed one is
/// ignored too (and counted): the stream stays open, the well-formed ids of the same
/// request are acked.
#[tokio::test]
async fn a_malformed_ack_id_is_ignored_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mut c) = setup(&dir, test_config).await;
    publish(&mut c, "healthy", Some(0), vec![record(Some("a"), "1")])
        .await
        .unwrap();
    publish(&mut c, "healthy", Some(0), vec![record(Some("b"), "2")])
        .await
        .unwrap();
    let mut m = subscribe(&mut c, join("healthy", "g", None)).await.unwrap();
    let (got, _) = m.deliveries(2, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 2);
    let garbage = bytes::Bytes::from_static(b"not an ack id");
    let send = |request| {
        m.tx.send(v1::SubscribeRequest {
            request: Some(request),
        })
    };
    send(v1::subscribe_request::Request::Extend(v1::Extend {
        ack_ids: vec![garbage.clone()],
        ranges: vec![],
        extra_ms: 1000,
    }))
    .await
    .unwrap();
    send(v1::subscribe_request::Request::Nack(v1::Nack {
        ack_id: garbage.clone(),
        ..Default::default()
    }))
    .await
    .unwrap();
    send(v1::subscribe_request::Request::Ack(v1::Ack {
        ack_ids: got
            .iter()
            .map(|d| d.ack_id.clone())
            .chain([garbage.clone()])
            .collect(),
        ranges: vec![],
    }))
    .await
    .unwrap();
    // The well-formed ids were acked.
    wait_for_group(&c, "healthy", "g", |d| {
        d.partitions[0].committed_offset == 2
    })
    .await;
    // The stream is still open: a new record is delivered on it.
    publish(&mut c, "healthy", Some(0), vec![record(Some("c"), "3")])
        .await
        .unwrap();
    let (more, _) = m.deliveries(1, Duration::from_secs(5)).await;
    assert_eq!(
        more.len(),
        1,
        "the stream stays open after malformed ack ids"
    );
    let (_, metrics) = http_get(broker.metrics_addr.unwrap(), "/metrics").await;
    assert_eq!(
        metric_value(&metrics, "herald_malformed_ack_ids_total"),
        Some(3.0),
        "one per malformed id"
    );
    drop(m);
    still_serves(&mut c).await;
    stop(broker).await;
}

/// An oversized request on a Subscribe stream ends it with RESOURCE_EXHAUSTED, not OK.
#[tokio::test]
async fn an_oversized_subscribe_request_is_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mut c) = setup(&dir, limits_config).await;
    let m = subscribe(&mut c, join("healthy", "g", None)).await.unwrap();
    let Member { tx, mut rx, .. } = m;
    tx.send(v1::SubscribeRequest {
        request: Some(v1::subscribe_request::Request::Ack(v1::Ack {
            ack_ids: vec![bytes::Bytes::from(vec![1u8; 200_000])],
            ranges: vec![],
        })),
    })
    .await
    .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match rx.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return Ok(()),
                Err(status) => return Err(status),
            }
        }
    })
    .await
    .expect("the stream ends");
    assert_eq!(code_of(ended), Code::ResourceExhausted);
    drop(tx);
    // The same for an oversized first message (the Join).
    let mut huge_join = join("healthy", "g2", None);
    huge_join.client_id = "c".repeat(200_000);
    let refused = subscribe(&mut c, huge_join).await;
    assert_eq!(code_of(refused.map(|m| m.joined)), Code::ResourceExhausted);
    still_serves(&mut c).await;
    stop(broker).await;
}
