//! Fetch: tailing with `follow`, heartbeats, raw stored batches, starting by timestamp or
//! at the end, and the shape of responses on an empty partition.

mod common;

use std::time::{Duration, Instant};

use common::*;
use herald_broker::config::Config;
use herald_broker::storage::batch;
use herald_broker::storage::{BatchBuilder, Record};
use herald_proto::HeraldClient;
use herald_proto::v1::{self, position::Kind, publish_request::Payload};
use tonic::Streaming;
use tonic::transport::Channel;

/// The next response of a stream, which must come within 5 s.
async fn next(stream: &mut Streaming<v1::FetchResponse>) -> v1::FetchResponse {
    tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("a fetch response within 5 s")
        .expect("the stream does not fail")
        .expect("the stream does not end")
}

async fn open(
    c: &mut HeraldClient<Channel>,
    request: v1::FetchRequest,
) -> Streaming<v1::FetchResponse> {
    c.fetch(request).await.expect("fetch starts").into_inner()
}

fn follow(topic: &str, partition: u32, start: Kind) -> v1::FetchRequest {
    v1::FetchRequest {
        follow: true,
        ..fetch_request(topic, partition, start)
    }
}

fn timed(value: &str, timestamp_ms: i64) -> v1::Record {
    v1::Record {
        timestamp_ms,
        ..record(None, value)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_fetch_receives_later_publishes_in_order() {
    let (_dir, broker, mut c) = start_with_topic("tail", 2).await;
    // The stream starts at offset 0 of an empty partition, i.e. at its end.
    let mut stream = open(&mut c, follow("tail", 1, Kind::Offset(0))).await;

    let mut publisher = client(&broker).await;
    // How many records the reader has: every tenth publish waits for it to catch up, so
    // the stream is woken from an idle wait as well as fed while it is busy.
    let (caught_up, mut reader_has) = tokio::sync::watch::channel(0usize);
    let writer = tokio::spawn(async move {
        let mut values = Vec::new();
        for i in 0..120 {
            let n = 1 + i % 5;
            let batch: Vec<String> = (0..n).map(|j| format!("r{i}.{j}")).collect();
            let records = batch.iter().map(|v| record(Some("k"), v)).collect();
            let r = publish(&mut publisher, "tail", Some(1), records)
                .await
                .unwrap();
            assert_eq!(r.base_offset, values.len() as u64);
            values.extend(batch);
            // Noise in the other partition must not show up.
            publish(&mut publisher, "tail", Some(0), vec![record(None, "other")])
                .await
                .unwrap();
            if i % 10 == 0 {
                let have = values.len();
                reader_has.wait_for(|n| *n >= have).await.unwrap();
            }
        }
        values
    });

    let mut received: Vec<v1::FetchedRecord> = Vec::new();
    let mut expected_next = 0;
    while received.len() < 360 {
        let response = next(&mut stream).await;
        if let Some(first) = response.records.first() {
            assert_eq!(first.offset, expected_next, "no gap, no repeat");
        }
        expected_next += response.records.len() as u64;
        assert_eq!(response.next_offset, expected_next);
        assert!(response.high_watermark >= response.next_offset);
        received.extend(response.records);
        caught_up.send_replace(received.len());
    }
    let values = writer.await.unwrap();
    assert_eq!(received.len(), values.len());
    for (i, (r, v)) in received.iter().zip(&values).enumerate() {
        assert_eq!(r.offset, i as u64);
        assert_eq!(r.value.as_ref(), v.as_bytes());
        assert_eq!(r.key.as_deref(), Some(&b"k"[..]));
    }
    // Idle for a while, the stream stays open and sends nothing: without max_wait there
    // are no heartbeats. The next response is the next record, whatever was (wrongly)
    // sent before it would come first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish(&mut c, "tail", Some(1), vec![record(None, "late")])
        .await
        .unwrap();
    let late = next(&mut stream).await;
    assert_eq!(
        late.records.len(),
        1,
        "a follow fetch without max_wait sends nothing while idle: {late:?}"
    );
    assert_eq!(late.records[0].offset, 360);
    assert_eq!(late.records[0].value.as_ref(), b"late");
    drop(stream);
    stop(broker).await;
}

#[tokio::test]
async fn a_follow_fetch_from_an_old_offset_catches_up_then_tails() {
    let (_dir, broker, mut c) = start_with_topic("catch-up", 1).await;
    for i in 0..10 {
        publish(
            &mut c,
            "catch-up",
            None,
            vec![record(None, &format!("old{i}"))],
        )
        .await
        .unwrap();
    }
    let mut stream = open(&mut c, follow("catch-up", 0, Kind::Offset(4))).await;
    let mut got = Vec::new();
    while got.len() < 6 {
        got.extend(next(&mut stream).await.records);
    }
    assert_eq!(
        got.iter().map(|r| r.offset).collect::<Vec<_>>(),
        (4..10).collect::<Vec<_>>()
    );
    publish(&mut c, "catch-up", None, vec![record(None, "new")])
        .await
        .unwrap();
    let new = next(&mut stream).await;
    assert_eq!(new.records.len(), 1);
    assert_eq!(new.records[0].offset, 10);
    drop(stream);
    stop(broker).await;
}

#[tokio::test]
async fn heartbeats_arrive_when_max_wait_is_set_and_nothing_is_published() {
    let (_dir, broker, mut c) = start_with_topic("quiet", 1).await;
    publish(
        &mut c,
        "quiet",
        None,
        vec![record(None, "a"), record(None, "b"), record(None, "c")],
    )
    .await
    .unwrap();
    let started = Instant::now();
    let mut stream = open(
        &mut c,
        v1::FetchRequest {
            max_wait_ms: 100,
            ..follow("quiet", 0, Kind::Latest(v1::Latest {}))
        },
    )
    .await;
    for beat in 0..3 {
        let heartbeat = next(&mut stream).await;
        assert!(heartbeat.records.is_empty(), "heartbeat {beat}");
        assert!(heartbeat.batches.is_empty(), "heartbeat {beat}");
        assert_eq!(heartbeat.high_watermark, 3, "heartbeat {beat}");
        assert_eq!(heartbeat.next_offset, 3, "heartbeat {beat}");
        assert_eq!(heartbeat.log_start_offset, 0, "heartbeat {beat}");
    }
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "three heartbeats 100 ms apart came after {:?}",
        started.elapsed()
    );
    // A record interrupts the silence, then heartbeats resume with the new watermark.
    publish(&mut c, "quiet", None, vec![record(None, "d")])
        .await
        .unwrap();
    let mut response = next(&mut stream).await;
    while response.records.is_empty() {
        response = next(&mut stream).await; // a heartbeat sent before the publish
    }
    assert_eq!(response.records.len(), 1);
    assert_eq!(response.records[0].offset, 3);
    let heartbeat = next(&mut stream).await;
    assert!(heartbeat.records.is_empty());
    assert_eq!(
        (heartbeat.high_watermark, heartbeat.next_offset),
        (4, 4),
        "the heartbeat reports the current watermark"
    );
    drop(stream);
    stop(broker).await;
}

/// A record as (offset, timestamp, key, value, headers).
type Row = (u64, i64, Option<Vec<u8>>, Vec<u8>, Vec<v1::Header>);

fn decode_raw(batches: &[bytes::Bytes]) -> Vec<Row> {
    let mut out = Vec::new();
    for stored in batches {
        // Each stored batch is whole and still passes the format's own checks (CRC
        // included: the stamped base offset is outside it).
        batch::validate(stored, usize::MAX).expect("a stored batch validates");
        let mut views = batch::batches(stored);
        let view = views.next().unwrap().expect("a stored batch decodes");
        assert!(views.next().is_none(), "one batch per `batches` entry");
        let before = out.len();
        for r in view.records() {
            let r = r.expect("a stored record decodes");
            out.push((
                r.offset,
                r.timestamp,
                r.key.map(<[u8]>::to_vec),
                r.value.to_vec(),
                r.headers()
                    .map(|(k, v)| v1::Header {
                        key: k.to_owned(),
                        value: v.to_vec().into(),
                    })
                    .collect(),
            ));
        }
        assert_eq!(out.len() - before, view.header.record_count as usize);
        assert_eq!(out[before].0, view.header.base_offset);
    }
    out
}

#[tokio::test]
async fn raw_batches_decode_to_the_same_records() {
    let (_dir, broker, mut c) = start_with_topic("raw", 1).await;
    let mut bases = Vec::new();
    for i in 0..20 {
        let records = (0..(1 + i % 4))
            .map(|j| v1::Record {
                key: (j % 2 == 0).then(|| format!("key{i}").into_bytes().into()),
                value: format!("value {i}.{j}").into_bytes().into(),
                headers: vec![
                    v1::Header {
                        key: "h1".into(),
                        value: vec![i as u8, j as u8].into(),
                    },
                    v1::Header {
                        key: "h1".into(),
                        value: Vec::new().into(),
                    },
                ],
                timestamp_ms: if i % 3 == 0 { 0 } else { 1_700_000_000_000 + i },
            })
            .collect();
        bases.push(
            publish(&mut c, "raw", None, records)
                .await
                .unwrap()
                .base_offset,
        );
    }
    // One pre-encoded batch too.
    let mut builder = BatchBuilder::default();
    builder.push(&Record {
        timestamp: 1_234,
        key: Some(b""),
        value: b"fast path",
        headers: &[("x", b"y")],
    });
    let r = c
        .publish(v1::PublishRequest {
            topic: "raw".into(),
            partition: None,
            payload: Some(Payload::StorageBatch(builder.finish().into())),
            producer: None,
        })
        .await
        .unwrap()
        .into_inner();
    bases.push(r.base_offset);
    let end = r.last_offset + 1;

    let decoded = fetch_all(&mut c, "raw", 0, 0).await.unwrap();
    assert_eq!(decoded.len() as u64, end);
    let as_tuples: Vec<_> = decoded
        .iter()
        .map(|r| {
            (
                r.offset,
                r.timestamp_ms,
                r.key.as_ref().map(|k| k.to_vec()),
                r.value.to_vec(),
                r.headers.clone(),
            )
        })
        .collect();

    for max_bytes in [0, 1, 300] {
        let responses = fetch_responses(
            &mut c,
            v1::FetchRequest {
                raw_batches: true,
                max_bytes,
                ..fetch_request("raw", 0, Kind::Earliest(v1::Earliest {}))
            },
        )
        .await
        .unwrap();
        let mut all_batches = Vec::new();
        for response in &responses {
            assert!(
                response.records.is_empty(),
                "raw responses carry no records"
            );
            assert!(!response.batches.is_empty());
            all_batches.extend(response.batches.iter().cloned());
        }
        if max_bytes == 1 {
            assert_eq!(responses.len(), bases.len(), "one whole batch per response");
        }
        let stored_bases: Vec<u64> = all_batches
            .iter()
            .map(|b| batch::BatchHeader::read(b).unwrap().base_offset)
            .collect();
        assert_eq!(stored_bases, bases, "one stored batch per publish");
        let stored_bytes: usize = all_batches.iter().map(bytes::Bytes::len).sum();
        let described = describe_topic(&mut c, "raw").await.partitions[0].size_bytes;
        assert_eq!(
            described, stored_bytes as u64,
            "DescribeTopic size_bytes is the bytes of the stored batches"
        );
        assert_eq!(decode_raw(&all_batches), as_tuples, "max_bytes {max_bytes}");
        assert_eq!(responses.last().unwrap().next_offset, end);
    }

    // From an offset inside a batch: whole batches, the first one holding that offset.
    let inside = bases[5] + 1;
    assert!(inside < bases[6], "batch 5 holds two records or more");
    let responses = fetch_responses(
        &mut c,
        v1::FetchRequest {
            raw_batches: true,
            ..fetch_request("raw", 0, Kind::Offset(inside))
        },
    )
    .await
    .unwrap();
    let first = batch::BatchHeader::read(&responses[0].batches[0]).unwrap();
    assert_eq!(first.base_offset, bases[5]);
    let records = decode_raw(
        &responses
            .iter()
            .flat_map(|r| r.batches.iter().cloned())
            .collect::<Vec<_>>(),
    );
    assert_eq!(records, as_tuples[bases[5] as usize..]);
    // The decoded form starts exactly at the offset asked for.
    let from_inside = fetch_all(&mut c, "raw", 0, inside).await.unwrap();
    assert_eq!(from_inside[0].offset, inside);

    // Raw batches while following.
    let mut stream = open(
        &mut c,
        v1::FetchRequest {
            raw_batches: true,
            ..follow("raw", 0, Kind::Latest(v1::Latest {}))
        },
    )
    .await;
    publish(&mut c, "raw", None, vec![record(Some("k"), "followed")])
        .await
        .unwrap();
    let response = next(&mut stream).await;
    let records = decode_raw(&response.batches);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].0, end);
    assert_eq!(records[0].3, b"followed");
    drop(stream);
    stop(broker).await;
}

async fn first_offset_at(
    c: &mut HeraldClient<Channel>,
    topic: &str,
    timestamp: i64,
) -> (u64, Option<u64>) {
    let responses = fetch_responses(c, fetch_request(topic, 0, Kind::TimestampMs(timestamp)))
        .await
        .unwrap();
    let first = responses.iter().flat_map(|r| &r.records).next();
    let next_offset = responses[0].next_offset - responses[0].records.len() as u64;
    (next_offset, first.map(|r| r.offset))
}

#[tokio::test]
async fn a_fetch_by_timestamp_starts_at_the_first_record_at_or_after_it() {
    let (_dir, broker, mut c) = start_with_topic("timed", 1).await;
    // Offsets:    0     1     2      3      4     5      6      7
    // Timestamps: 1000  1100  1200 | 2000 | 3000  3500 | 2500 | 4000   (| = batch)
    for batch in [
        vec![1000, 1100, 1200],
        vec![2000],
        vec![3000, 3500],
        vec![2500],
        vec![4000],
    ] {
        let records = batch.iter().map(|ts| timed(&ts.to_string(), *ts)).collect();
        publish(&mut c, "timed", None, records).await.unwrap();
    }
    for (timestamp, expected) in [
        (i64::MIN, 0),
        (0, 0),
        (1000, 0),
        (1001, 1),
        (1100, 1),
        (1150, 2),
        (1200, 2),
        (1201, 3),
        (2000, 3),
        (2001, 4), // 3000 at offset 4 comes before 2500 at offset 6
        (2500, 4),
        (3000, 4),
        (3001, 5),
        (3500, 5),
        (3501, 7),
        (4000, 7),
    ] {
        let (start, first) = first_offset_at(&mut c, "timed", timestamp).await;
        assert_eq!(first, Some(expected), "timestamp {timestamp}");
        assert_eq!(start, expected, "timestamp {timestamp}");
    }
    // Later than every record: the end offset, one empty response.
    for timestamp in [4001, i64::MAX] {
        let responses = fetch_responses(
            &mut c,
            fetch_request("timed", 0, Kind::TimestampMs(timestamp)),
        )
        .await
        .unwrap();
        assert_eq!(responses.len(), 1, "timestamp {timestamp}");
        assert!(responses[0].records.is_empty());
        assert_eq!(responses[0].next_offset, 8);
    }
    stop(broker).await;
}

/// The same over many batches and several segments, so the sparse time index and the
/// segment search are exercised, with some records out of time order.
#[tokio::test]
async fn a_fetch_by_timestamp_searches_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(Config {
        segment_bytes: 64 * 1024,
        max_batch_bytes: 32 * 1024,
        max_message_bytes: 8 * 1024,
        ..test_config(dir.path())
    })
    .await;
    let mut c = client(&broker).await;
    create_topic(&mut c, "timeline", 1).await;
    let filler = "f".repeat(900);
    let mut timestamps = Vec::new();
    for i in 0..100i64 {
        let batch: Vec<i64> = (0..3)
            .map(|j| {
                let n = i * 3 + j;
                // Every 13th record is 5 s in the past.
                if n % 13 == 12 {
                    10_000 + n * 10 - 5_000
                } else {
                    10_000 + n * 10
                }
            })
            .collect();
        let records = batch.iter().map(|ts| timed(&filler, *ts)).collect();
        publish(&mut c, "timeline", None, records).await.unwrap();
        timestamps.extend(batch);
    }
    let d = describe_topic(&mut c, "timeline").await;
    assert!(d.partitions[0].segment_count >= 3, "{:?}", d.partitions[0]);
    let end = timestamps.len() as u64;
    for query in (4_000..13_100)
        .step_by(97)
        .chain([5_000, 5_001, 10_000, 12_990, 12_991])
    {
        let expected = timestamps
            .iter()
            .position(|ts| *ts >= query)
            .map_or(end, |p| p as u64);
        let (start, first) = first_offset_at(&mut c, "timeline", query).await;
        assert_eq!(start, expected, "timestamp {query}");
        if expected < end {
            assert_eq!(first, Some(expected), "timestamp {query}");
        }
    }
    stop(broker).await;
}

#[tokio::test]
async fn a_fetch_from_latest_sees_only_new_records() {
    let (_dir, broker, mut c) = start_with_topic("news", 1).await;
    for i in 0..5 {
        publish(&mut c, "news", None, vec![record(None, &format!("old{i}"))])
            .await
            .unwrap();
    }
    // Without follow: nothing to read, one empty response at the end offset.
    let responses = fetch_responses(
        &mut c,
        fetch_request("news", 0, Kind::Latest(v1::Latest {})),
    )
    .await
    .unwrap();
    assert_eq!(responses.len(), 1);
    assert!(responses[0].records.is_empty());
    assert_eq!(
        (responses[0].next_offset, responses[0].high_watermark),
        (5, 5)
    );

    let mut stream = open(&mut c, follow("news", 0, Kind::Latest(v1::Latest {}))).await;
    for i in 0..3 {
        publish(&mut c, "news", None, vec![record(None, &format!("new{i}"))])
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 3 {
        got.extend(next(&mut stream).await.records);
    }
    let values: Vec<&[u8]> = got.iter().map(|r| r.value.as_ref()).collect();
    assert_eq!(values, [&b"new0"[..], b"new1", b"new2"]);
    assert_eq!(got.iter().map(|r| r.offset).collect::<Vec<_>>(), [5, 6, 7]);
    drop(stream);
    stop(broker).await;
}

#[tokio::test]
async fn a_non_follow_fetch_of_an_empty_partition_returns_one_empty_response() {
    let (_dir, broker, mut c) = start_with_topic("void", 2).await;
    publish(&mut c, "void", Some(0), vec![record(None, "elsewhere")])
        .await
        .unwrap();
    let starts = [
        Some(Kind::Earliest(v1::Earliest {})),
        Some(Kind::Latest(v1::Latest {})),
        Some(Kind::Offset(0)),
        Some(Kind::TimestampMs(0)),
        None, // unset means Earliest
    ];
    for start in starts {
        for raw_batches in [false, true] {
            let request = v1::FetchRequest {
                start: start.map(|kind| v1::Position { kind: Some(kind) }),
                raw_batches,
                ..fetch_request("void", 1, Kind::Offset(0))
            };
            let responses = fetch_responses(&mut c, request).await.unwrap();
            assert_eq!(responses.len(), 1, "{start:?} raw {raw_batches}");
            let r = &responses[0];
            assert!(r.records.is_empty() && r.batches.is_empty());
            assert_eq!(
                (r.high_watermark, r.next_offset, r.log_start_offset),
                (0, 0, 0),
                "{start:?} raw {raw_batches}"
            );
        }
    }
    stop(broker).await;
}

#[tokio::test]
async fn a_non_follow_fetch_with_max_wait_and_nothing_to_read_ends_after_the_wait() {
    let (_dir, broker, mut c) = start_with_topic("patient", 1).await;
    publish(&mut c, "patient", None, vec![record(None, "old")])
        .await
        .unwrap();
    let started = Instant::now();
    let responses = fetch_responses(
        &mut c,
        v1::FetchRequest {
            max_wait_ms: 150,
            ..fetch_request("patient", 0, Kind::Latest(v1::Latest {}))
        },
    )
    .await
    .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "ended after {:?}, before max_wait",
        started.elapsed()
    );
    assert_eq!(responses.len(), 1);
    assert!(responses[0].records.is_empty());
    assert_eq!(
        (responses[0].next_offset, responses[0].high_watermark),
        (1, 1)
    );
    stop(broker).await;
}

/// fetch.proto, max_wait_ms: "Without follow: if nothing is readable at `start`, wait up
/// to this long for a first record before ending the stream."
#[tokio::test]
async fn a_non_follow_fetch_with_max_wait_returns_a_record_published_while_it_waits() {
    let (_dir, broker, mut c) = start_with_topic("patient", 1).await;
    for pre in [0u64, 1] {
        let started = Instant::now();
        // The call returns once the broker has resolved `latest` and answered with the
        // stream's headers: the record published then is after the start.
        let mut stream = open(
            &mut c,
            v1::FetchRequest {
                max_wait_ms: 10_000,
                ..fetch_request("patient", 0, Kind::Latest(v1::Latest {}))
            },
        )
        .await;
        let mut publisher = client(&broker).await;
        publish(
            &mut publisher,
            "patient",
            None,
            vec![record(None, "worth the wait")],
        )
        .await
        .unwrap();
        let mut responses = Vec::new();
        while let Some(response) = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("the stream ends within 5 s")
            .unwrap()
        {
            responses.push(response);
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let records: Vec<_> = responses.iter().flat_map(|r| &r.records).collect();
        assert_eq!(records.len(), 1, "{responses:?}");
        assert_eq!(records[0].offset, pre);
        assert_eq!(records[0].value.as_ref(), b"worth the wait");
    }
    stop(broker).await;
}

#[tokio::test]
async fn a_non_follow_fetch_ends_at_the_end_offset_of_its_request() {
    let (_dir, broker, mut c) = start_with_topic("bounded", 1).await;
    let value = "b".repeat(1000);
    for _ in 0..40 {
        publish(&mut c, "bounded", None, vec![record(None, &value)])
            .await
            .unwrap();
    }
    // One batch per response, so the broker is far from done after the first one.
    let mut stream = open(
        &mut c,
        v1::FetchRequest {
            max_bytes: 1,
            ..fetch_request("bounded", 0, Kind::Earliest(v1::Earliest {}))
        },
    )
    .await;
    let first = next(&mut stream).await;
    assert_eq!(
        first.records.len(),
        1,
        "max_bytes 1 still carries one whole record"
    );
    for _ in 0..10 {
        publish(
            &mut c,
            "bounded",
            None,
            vec![record(None, "after the request")],
        )
        .await
        .unwrap();
    }
    let mut offsets = vec![first.records[0].offset];
    while let Some(response) = stream.message().await.unwrap() {
        assert!(response.records.len() == 1, "one record per response");
        offsets.extend(response.records.iter().map(|r| r.offset));
    }
    assert_eq!(offsets, (0..40).collect::<Vec<_>>());

    // A budget of a few records: never more than fits, never zero.
    let responses = fetch_responses(
        &mut c,
        v1::FetchRequest {
            max_bytes: 5000,
            ..fetch_request("bounded", 0, Kind::Earliest(v1::Earliest {}))
        },
    )
    .await
    .unwrap();
    let mut total = 0;
    for r in &responses {
        let bytes: usize = r.records.iter().map(|r| r.value.len()).sum();
        assert!(!r.records.is_empty());
        assert!(bytes <= 5000, "a response of {bytes} value bytes");
        total += r.records.len();
    }
    assert_eq!(total, 50);
    assert!(responses.len() >= 10, "{} responses", responses.len());
    stop(broker).await;
}

/// herald.proto, DeleteTopic: "Open Fetch and Subscribe streams on it end with NOT_FOUND."
#[tokio::test]
async fn a_follow_fetch_ends_with_not_found_when_its_topic_is_deleted() {
    let (_dir, broker, mut c) = start_with_topic("short-lived", 1).await;
    let mut stream = open(
        &mut c,
        follow("short-lived", 0, Kind::Latest(v1::Latest {})),
    )
    .await;
    c.delete_topic(v1::DeleteTopicRequest {
        name: "short-lived".into(),
    })
    .await
    .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("the stream ends when its topic is deleted");
    assert_eq!(code_of(ended), tonic::Code::NotFound);
    stop(broker).await;
}
