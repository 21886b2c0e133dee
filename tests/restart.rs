//! A graceful shutdown and a new broker on the same data directory lose nothing: every
//! record is back at its offset, byte for byte, topics come back with their settings, and
//! DescribeTopic reports the same offsets and sizes.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use herald_broker::config::{Config, FsyncSetting};
use herald_broker::storage::{BatchBuilder, Record};
use herald_proto::HeraldClient;
use herald_proto::v1::{self, publish_request::Payload};
use tonic::transport::Channel;

/// fsync on every publish; segments small enough that the data spans several of them.
fn durable_config(dir: &Path) -> Config {
    Config {
        fsync: FsyncSetting::Always,
        segment_bytes: 64 * 1024,
        max_batch_bytes: 32 * 1024,
        max_message_bytes: 8 * 1024,
        ..test_config(dir)
    }
}

fn configured_topic() -> v1::TopicConfig {
    v1::TopicConfig {
        retention_ms: Some(7 * 24 * 3600 * 1000),
        retention_bytes: Some(512 * 1024 * 1024),
        segment_bytes: Some(48 * 1024),
        fsync_policy: v1::FsyncPolicy::Interval as i32,
        fsync_interval_ms: Some(20),
        max_message_bytes: Some(2000),
        dedup_window_ms: Some(30_000),
    }
}

async fn list(c: &mut HeraldClient<Channel>) -> Vec<v1::TopicSummary> {
    c.list_topics(v1::ListTopicsRequest {})
        .await
        .unwrap()
        .into_inner()
        .topics
}

async fn everything(
    c: &mut HeraldClient<Channel>,
    topic: &str,
    partitions: u32,
) -> Vec<Vec<v1::FetchedRecord>> {
    let mut out = Vec::new();
    for p in 0..partitions {
        out.push(fetch_all(c, topic, p, 0).await.unwrap());
    }
    out
}

/// What each (partition, offset) must hold: key, value, headers, and the timestamp (0 when
/// the broker stamps it).
type Expected = BTreeMap<(u32, u64), (Option<Vec<u8>>, Vec<u8>, Vec<(String, Vec<u8>)>, i64)>;

/// Publishes a mix of plain and pre-encoded batches, keyed, keyless and explicit, with
/// headers and explicit timestamps, recording in `expected` where each record landed.
async fn publish_mix(
    c: &mut HeraldClient<Channel>,
    topic: &str,
    partitions: u32,
    rounds: usize,
    expected: &mut Expected,
) {
    for i in 0..rounds {
        let n = 1 + i % 7;
        let mut records = Vec::new();
        for j in 0..n {
            let key = (i % 3 != 0).then(|| format!("key-{}", (i + j) % 11).into_bytes());
            let value =
                format!("{topic}-{i}-{j}-{}", "v".repeat((i * 37 + j * 101) % 900)).into_bytes();
            let headers = if j % 2 == 0 {
                vec![
                    ("trace".to_owned(), format!("{i}.{j}").into_bytes()),
                    ("trace".to_owned(), Vec::new()),
                ]
            } else {
                vec![]
            };
            let timestamp = if i % 4 == 0 {
                0
            } else {
                1_600_000_000_000 + (i * 10 + j) as i64
            };
            records.push((key, value, headers, timestamp));
        }
        let partition = (i % 5 == 0).then(|| (i as u32 / 5) % partitions);
        let payload = if i % 6 == 5 {
            // The fast path: a pre-encoded storage batch (timestamps kept as encoded).
            let mut builder = BatchBuilder::default();
            for (key, value, headers, timestamp) in &mut records {
                if *timestamp == 0 {
                    *timestamp = 1_650_000_000_000 + i as i64;
                }
                let headers: Vec<(&str, &[u8])> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_slice()))
                    .collect();
                builder.push(&Record {
                    timestamp: *timestamp,
                    key: key.as_deref(),
                    value,
                    headers: &headers,
                });
            }
            Payload::StorageBatch(builder.finish().into())
        } else {
            Payload::Records(v1::Records {
                records: records
                    .iter()
                    .map(|(key, value, headers, timestamp)| v1::Record {
                        key: key.clone().map(Into::into),
                        value: value.clone().into(),
                        headers: headers
                            .iter()
                            .map(|(k, v)| v1::Header {
                                key: k.clone(),
                                value: v.clone().into(),
                            })
                            .collect(),
                        timestamp_ms: *timestamp,
                    })
                    .collect(),
            })
        };
        let r = c
            .publish(v1::PublishRequest {
                topic: topic.into(),
                partition,
                payload: Some(payload),
                producer: None,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.last_offset - r.base_offset + 1, n as u64);
        for (j, rec) in records.into_iter().enumerate() {
            let previous = expected.insert((r.partition, r.base_offset + j as u64), rec);
            assert!(previous.is_none(), "offset assigned twice");
        }
    }
}

fn check_records(
    topic: &str,
    stored: &[Vec<v1::FetchedRecord>],
    expected: &Expected,
    stamped_after: i64,
) {
    let total: usize = stored.iter().map(Vec::len).sum();
    assert_eq!(total, expected.len(), "{topic}: record count");
    for (p, records) in stored.iter().enumerate() {
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.offset, i as u64, "{topic}/{p}: offsets are dense from 0");
            let (key, value, headers, timestamp) = expected
                .get(&(p as u32, r.offset))
                .unwrap_or_else(|| panic!("{topic}/{p}@{}: unexpected record", r.offset));
            assert_eq!(r.key.as_deref(), key.as_deref(), "{topic}/{p}@{i} key");
            assert_eq!(r.value.as_ref(), value.as_slice(), "{topic}/{p}@{i} value");
            let got: Vec<(String, Vec<u8>)> = r
                .headers
                .iter()
                .map(|h| (h.key.clone(), h.value.to_vec()))
                .collect();
            assert_eq!(&got, headers, "{topic}/{p}@{i} headers");
            if *timestamp == 0 {
                assert!(r.timestamp_ms >= stamped_after, "{topic}/{p}@{i} stamped");
            } else {
                assert_eq!(r.timestamp_ms, *timestamp, "{topic}/{p}@{i} timestamp");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_broker_has_every_record_topic_and_setting() {
    let dir = tempfile::tempdir().unwrap();
    let started_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let broker = start(durable_config(dir.path())).await;
    let mut c = client(&broker).await;
    create_topic(&mut c, "events", 3).await;
    let created = c
        .create_topic(v1::CreateTopicRequest {
            name: "configured".into(),
            partitions: 2,
            config: Some(configured_topic()),
            replication_factor: None,
        })
        .await
        .unwrap()
        .into_inner()
        .topic
        .unwrap();
    assert_eq!(created.config, Some(configured_topic()));
    create_topic(&mut c, "empty", 4).await;
    create_topic(&mut c, "doomed", 1).await;
    publish(&mut c, "doomed", None, vec![record(None, "bye")])
        .await
        .unwrap();
    c.delete_topic(v1::DeleteTopicRequest {
        name: "doomed".into(),
    })
    .await
    .unwrap();

    let mut events = Expected::new();
    let mut configured = Expected::new();
    publish_mix(&mut c, "events", 3, 150, &mut events).await;
    publish_mix(&mut c, "configured", 2, 60, &mut configured).await;

    let before_events = everything(&mut c, "events", 3).await;
    let before_configured = everything(&mut c, "configured", 2).await;
    check_records("events", &before_events, &events, started_ms);
    check_records("configured", &before_configured, &configured, started_ms);
    let topics_before = list(&mut c).await;
    let mut described_before = Vec::new();
    for t in ["configured", "empty", "events"] {
        described_before.push(describe_topic(&mut c, t).await);
    }
    // Every setting is reported, with the broker's defaults filled in.
    let events_config = described_before[2].config.unwrap();
    assert_eq!(
        events_config,
        v1::TopicConfig {
            retention_ms: Some(0),
            retention_bytes: Some(0),
            segment_bytes: Some(64 * 1024),
            fsync_policy: v1::FsyncPolicy::Always as i32,
            fsync_interval_ms: Some(100),
            max_message_bytes: Some(8 * 1024),
            dedup_window_ms: Some(120_000),
        }
    );
    // The data must span several segments for the restart to be a real test.
    assert!(
        described_before[2]
            .partitions
            .iter()
            .all(|p| p.segment_count >= 2),
        "{:?}",
        described_before[2].partitions
    );

    drop(c);
    stop(broker).await;

    let broker = start(durable_config(dir.path())).await;
    let mut c = client(&broker).await;
    assert_eq!(
        list(&mut c).await,
        topics_before,
        "the same topics, no more"
    );
    for before in &described_before {
        let after = describe_topic(&mut c, &before.name).await;
        // Disk allocated ahead of the data is not the log's state: an open deletes a next
        // segment prepared before the stop.
        let unallocated = |d: &v1::TopicDescription| {
            let mut d = d.clone();
            for p in &mut d.partitions {
                p.allocated_bytes = 0;
            }
            d
        };
        assert_eq!(
            unallocated(&after),
            unallocated(before),
            "DescribeTopic of {} after restart",
            before.name
        );
    }
    // Exactly the same records at the same offsets, timestamps included.
    let after_events = everything(&mut c, "events", 3).await;
    let after_configured = everything(&mut c, "configured", 2).await;
    assert_eq!(after_events, before_events);
    assert_eq!(after_configured, before_configured);
    check_records("events", &after_events, &events, started_ms);
    check_records("configured", &after_configured, &configured, started_ms);
    assert_eq!(
        code_of(
            c.describe_topic(v1::DescribeTopicRequest {
                name: "doomed".into()
            })
            .await
        ),
        tonic::Code::NotFound,
        "a deleted topic stays deleted"
    );
    // The reloaded settings are in force, not just reported: the topic's own
    // max_message_bytes (2000) still refuses a record the broker default would accept.
    assert_eq!(
        code_of(
            publish(
                &mut c,
                "configured",
                Some(0),
                vec![record(None, &"x".repeat(3000))]
            )
            .await
        ),
        tonic::Code::ResourceExhausted
    );

    // New publishes continue after the old end offsets, in every partition.
    for (p, records) in after_events.iter().enumerate() {
        let r = publish(
            &mut c,
            "events",
            Some(p as u32),
            vec![record(None, "after restart")],
        )
        .await
        .unwrap();
        assert_eq!(r.base_offset, records.len() as u64, "partition {p}");
    }
    let r = publish(&mut c, "empty", Some(3), vec![record(None, "first")])
        .await
        .unwrap();
    assert_eq!(r.base_offset, 0);
    drop(c);
    stop(broker).await;

    // And a second restart keeps those too.
    let broker = start(durable_config(dir.path())).await;
    let mut c = client(&broker).await;
    let d = describe_topic(&mut c, "events").await;
    for (p, records) in after_events.iter().enumerate() {
        assert_eq!(d.partitions[p].end_offset, records.len() as u64 + 1);
        let last = fetch_all(&mut c, "events", p as u32, records.len() as u64)
            .await
            .unwrap();
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].value.as_ref(), b"after restart");
    }
    assert_eq!(
        describe_topic(&mut c, "empty").await.partitions[3].end_offset,
        1
    );
    stop(broker).await;
}
