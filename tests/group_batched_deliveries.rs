//! Batched deliveries: a member that joins with `batched_deliveries` receives runs of
//! consecutive messages as their stored records, settles them with ack ranges (which may
//! span runs), and gets a redelivery as a run of its own; malformed ranges are
//! INVALID_ARGUMENT. Members that do not ask keep getting one `Delivery` per message.

mod common;

use std::time::Duration;

use common::*;
use herald_broker::storage::batch::Records;
use herald_proto::v1;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(5);

/// Three publishes of 100 records each: three stored batches of partition 0.
async fn publish_three_batches(
    c: &mut herald_proto::v1::herald_client::HeraldClient<tonic::transport::Channel>,
) {
    for b in 0..3 {
        let records = (0..100)
            .map(|i| record(Some(&format!("k{i}")), &format!("v{}", b * 100 + i)))
            .collect();
        publish(c, "t", Some(0), records).await.unwrap();
    }
}

/// A broker on a temp dir with topic "t" (one partition) holding three batches, and a
/// client of it.
async fn broker_with_three_batches() -> (
    tempfile::TempDir,
    herald_broker::server::Broker,
    herald_proto::v1::herald_client::HeraldClient<tonic::transport::Channel>,
) {
    let (dir, broker, mut c) = start_with_topic("t", 1).await;
    publish_three_batches(&mut c).await;
    (dir, broker, c)
}

fn batched_join(group: &str) -> v1::Join {
    v1::Join {
        batched_deliveries: true,
        settings: Some(v1::GroupSettings {
            ordering: v1::OrderingMode::None as i32,
            ..fast_settings(30_000, 100)
        }),
        ..join("t", group, None)
    }
}

/// Runs and single deliveries received within `wait`, until `n` messages have come.
async fn receive(
    m: &mut Member,
    n: usize,
    wait: Duration,
) -> (Vec<v1::DeliveryRun>, Vec<v1::Delivery>) {
    let deadline = tokio::time::Instant::now() + wait;
    let (mut runs, mut singles) = (Vec::new(), Vec::new());
    let count = |runs: &Vec<v1::DeliveryRun>, singles: &Vec<v1::Delivery>| {
        runs.iter().map(|r| r.count as usize).sum::<usize>() + singles.len()
    };
    while count(&runs, &singles) < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        match m.next(left).await.and_then(|r| r.response) {
            Some(v1::subscribe_response::Response::Deliveries(d)) => {
                runs.extend(d.runs);
                singles.extend(d.deliveries);
            }
            Some(v1::subscribe_response::Response::Assignment(_)) => {}
            Some(other) => panic!("unexpected response {other:?}"),
            None => break,
        }
    }
    (runs, singles)
}

/// The offsets and values of a run's messages, decoded from its records.
fn run_values(run: &v1::DeliveryRun) -> Vec<(u64, String)> {
    Records::resume(
        run.base_offset,
        run.first_timestamp_ms,
        run.first_offset,
        &run.records,
    )
    .expect("the run's first offset is in its batch")
    .map(|r| r.expect("a record"))
    .map(|r| (r.offset, String::from_utf8(r.value.to_vec()).unwrap()))
    .collect()
}

async fn send(m: &Member, request: v1::subscribe_request::Request) {
    m.tx.send(v1::SubscribeRequest {
        request: Some(request),
    })
    .await
    .unwrap();
}

/// Acks run messages by `ranges`.
async fn ack_ranges(m: &Member, ranges: Vec<v1::AckRange>) {
    send(
        m,
        v1::subscribe_request::Request::Ack(v1::Ack {
            ack_ids: Vec::new(),
            ranges,
        }),
    )
    .await;
}

fn range(partition: u32, first_offset: u64, count: u32, first_delivery: u64) -> v1::AckRange {
    v1::AckRange {
        partition,
        first_offset,
        count,
        first_delivery,
    }
}

#[tokio::test]
async fn runs_arrive_as_stored_batches_and_are_settled_by_ranges() {
    let (_dir, _broker, mut c) = broker_with_three_batches().await;

    let mut m = subscribe(&mut c, batched_join("g")).await.unwrap();
    let (runs, singles) = receive(&mut m, 300, WAIT).await;
    assert!(singles.is_empty(), "whole batches go as runs: {singles:?}");
    assert_eq!(runs.iter().map(|r| r.count).sum::<u32>(), 300);
    let mut values = Vec::new();
    for run in &runs {
        assert_eq!(run.partition, 0);
        assert_eq!(run.delivery_attempt, 1);
        assert!(run.deadline_ms > 0);
        let decoded = run_values(run);
        assert_eq!(decoded.len(), run.count as usize);
        values.extend(decoded);
    }
    let expected: Vec<(u64, String)> = (0..300).map(|o| (o, format!("v{o}"))).collect();
    assert_eq!(values, expected);

    // One range over the first 150 messages, across run boundaries when the sequence
    // numbers continue (they do within one poll); otherwise one range per run.
    let first = &runs[0];
    let continuous = runs.windows(2).all(|w| {
        w[1].first_offset == w[0].first_offset + u64::from(w[0].count)
            && w[1].first_delivery == w[0].first_delivery + u64::from(w[0].count)
    });
    let delivery_of = |offset: u64| {
        let run = runs
            .iter()
            .find(|r| offset >= r.first_offset && offset < r.first_offset + u64::from(r.count))
            .unwrap();
        run.first_delivery + (offset - run.first_offset)
    };
    let ranges = if continuous {
        vec![range(0, 0, 150, first.first_delivery)]
    } else {
        (0..150).map(|o| range(0, o, 1, delivery_of(o))).collect()
    };
    ack_ranges(&m, ranges).await;
    wait_for_group(&c, "t", "g", |d| d.partitions[0].committed_offset == 150).await;

    // Nack offset 150 by range: it comes back alone, as a run of one with attempt 2.
    send(
        &m,
        v1::subscribe_request::Request::Nack(v1::Nack {
            delay_ms: Some(0),
            reason: "later".into(),
            range: Some(range(0, 150, 1, delivery_of(150))),
            ..Default::default()
        }),
    )
    .await;
    let (again, singles) = receive(&mut m, 1, WAIT).await;
    assert!(singles.is_empty(), "{singles:?}");
    assert_eq!(again.len(), 1);
    let again = &again[0];
    assert_eq!((again.first_offset, again.count), (150, 1));
    assert_eq!(again.delivery_attempt, 2);
    assert_ne!(again.first_delivery, delivery_of(150));
    assert_eq!(run_values(again), [(150, "v150".to_owned())]);

    // A stale range (offset 150's first delivery) is ignored; the redelivery is acked by
    // its own range, the rest by ranges of one.
    // The stale range goes first, so once the others are seen applied, so is it.
    let mut ranges = vec![range(0, 150, 1, delivery_of(150))];
    ranges.extend((151..300).map(|o| range(0, o, 1, delivery_of(o))));
    ack_ranges(&m, ranges).await;
    // The ranges of one are applied (one request with the stale range): only the
    // redelivery is left in flight, and the committed offset stays before it.
    let d = wait_for_group(&c, "t", "g", |d| d.partitions[0].in_flight_count == 1).await;
    assert_eq!(
        d.partitions[0].committed_offset, 150,
        "a stale range acks nothing"
    );
    ack_ranges(&m, vec![range(0, 150, 1, again.first_delivery)]).await;
    // Everything acked.
    wait_for_group(&c, "t", "g", |d| {
        d.partitions[0].committed_offset == 300 && d.partitions[0].in_flight_count == 0
    })
    .await;
}

#[tokio::test]
async fn extend_by_range_keeps_run_messages_from_expiring() {
    let (_dir, _broker, mut c) = broker_with_three_batches().await;
    let join = v1::Join {
        settings: Some(v1::GroupSettings {
            ordering: v1::OrderingMode::None as i32,
            ..fast_settings(1_000, 100)
        }),
        ..batched_join("g")
    };
    let mut m = subscribe(&mut c, join).await.unwrap();
    let (runs, _) = receive(&mut m, 300, WAIT).await;
    let ranges: Vec<v1::AckRange> = runs
        .iter()
        .map(|r| range(r.partition, r.first_offset, r.count, r.first_delivery))
        .collect();
    // Extend every 200 ms for 1.6 s, past the first deadline: nothing is redelivered.
    // (Each extension reaches a full deadline ahead, five times the pace, so only a
    // stall of most of a second could let one expire.)
    for _ in 0..8 {
        send(
            &m,
            v1::subscribe_request::Request::Extend(v1::Extend {
                ack_ids: Vec::new(),
                ranges: ranges.clone(),
                extra_ms: 1_000,
            }),
        )
        .await;
        let (runs, singles) = receive(&mut m, 1, Duration::from_millis(200)).await;
        assert!(
            runs.is_empty() && singles.is_empty(),
            "redelivered while extended"
        );
    }
    let description = describe_group(&mut c, "t", "g").await;
    assert_eq!(description.partitions[0].in_flight_count, 300);
    assert_eq!(description.partitions[0].redelivered_count, 0);
}

#[tokio::test]
async fn members_that_do_not_ask_get_single_deliveries() {
    let (_dir, _broker, mut c) = broker_with_three_batches().await;
    let mut m = subscribe(
        &mut c,
        v1::Join {
            batched_deliveries: false,
            ..batched_join("plain")
        },
    )
    .await
    .unwrap();
    let (runs, singles) = receive(&mut m, 300, WAIT).await;
    assert!(runs.is_empty());
    assert_eq!(singles.len(), 300);
}

#[tokio::test]
async fn malformed_ranges_are_invalid_argument() {
    let (_dir, _broker, mut c) = broker_with_three_batches().await;
    let cases: Vec<(&str, v1::subscribe_request::Request)> = vec![
        (
            "an empty range",
            v1::subscribe_request::Request::Ack(v1::Ack {
                ack_ids: Vec::new(),
                ranges: vec![range(0, 0, 0, 0)],
            }),
        ),
        (
            "a range above the limit",
            v1::subscribe_request::Request::Extend(v1::Extend {
                ack_ids: Vec::new(),
                ranges: vec![range(0, 0, 65_537, 0)],
                extra_ms: 1000,
            }),
        ),
        (
            "a range past the largest offset",
            v1::subscribe_request::Request::Ack(v1::Ack {
                ack_ids: Vec::new(),
                ranges: vec![range(0, u64::MAX - 1, 5, 0)],
            }),
        ),
        (
            "a nack with both an id and a range",
            v1::subscribe_request::Request::Nack(v1::Nack {
                ack_id: bytes::Bytes::from_static(b"x"),
                range: Some(range(0, 0, 1, 0)),
                ..Default::default()
            }),
        ),
        (
            "a nack with neither",
            v1::subscribe_request::Request::Nack(v1::Nack::default()),
        ),
    ];
    for (i, (what, request)) in cases.into_iter().enumerate() {
        let mut m = subscribe(&mut c, batched_join(&format!("g{i}")))
            .await
            .unwrap();
        send(&m, request).await;
        let status = loop {
            match tokio::time::timeout(WAIT, m.rx.message()).await {
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) => panic!("{what}: the stream ended without a status"),
                Ok(Err(status)) => break status,
                Err(_) => panic!("{what}: no status"),
            }
        };
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(
            status.message().contains("range") || status.message().contains("Nack"),
            "{what}: {}",
            status.message()
        );
    }
    // The broker still serves.
    let mut m = subscribe(&mut c, batched_join("after")).await.unwrap();
    let (runs, _) = receive(&mut m, 300, WAIT).await;
    assert_eq!(runs.iter().map(|r| r.count).sum::<u32>(), 300);
}
