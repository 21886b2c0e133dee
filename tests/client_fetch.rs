//! `Client::fetch` reads a partition from each kind of position, stops at its end or after
//! `max_records`, reports the broker's errors, and with `follow` yields records published
//! after it caught up.

mod common;

use std::time::Duration;

use futures::StreamExt;
use herald_client::{
    Client, Error, Fetch, FetchConfig, FetchedRecord, Position, ProducerConfig, Record, TopicConfig,
};

const WAIT: Duration = Duration::from_secs(10);

async fn collect(mut fetch: Fetch) -> Vec<FetchedRecord> {
    let mut records = Vec::new();
    while let Some(record) = tokio::time::timeout(WAIT, fetch.next())
        .await
        .expect("the fetch ends")
    {
        records.push(record.expect("a record, not an error"));
    }
    records
}

async fn next(fetch: &mut Fetch) -> FetchedRecord {
    tokio::time::timeout(WAIT, fetch.next())
        .await
        .expect("a record arrives")
        .expect("the stream goes on")
        .expect("a record, not an error")
}

async fn read(client: &Client, config: FetchConfig) -> Vec<FetchedRecord> {
    collect(client.fetch(config).await.expect("the fetch starts")).await
}

fn offsets(records: &[FetchedRecord]) -> Vec<u64> {
    records.iter().map(|r| r.offset.0).collect()
}

#[tokio::test]
async fn fetch_reads_from_a_position_to_the_end() {
    let t = common::start_with_client().await;
    t.create_topic("log", 2).await;
    let producer = t.client.producer(ProducerConfig::new("log"));
    let records = (0..5).map(|i| {
        let record = Record::new(format!("v{i}"))
            .partition(1)
            .timestamp(1_000 * (i + 1));
        if i % 2 == 0 {
            record.key(format!("k{i}")).header("n", i.to_string())
        } else {
            record
        }
    });
    producer.send_all(records).await.unwrap().await.unwrap();
    producer.close().await.unwrap();

    // From the earliest record to the end: every field as published.
    let all = read(&t.client, FetchConfig::new("log", 1)).await;
    assert_eq!(offsets(&all), [0, 1, 2, 3, 4]);
    for (i, record) in all.iter().enumerate() {
        assert_eq!(record.partition.0, 1);
        assert_eq!(record.value, format!("v{i}"));
        assert_eq!(record.timestamp_ms, 1_000 * (i as i64 + 1));
        if i % 2 == 0 {
            assert_eq!(record.key.as_deref(), Some(format!("k{i}").as_bytes()));
            assert_eq!(
                record.headers,
                [("n".to_owned(), bytes::Bytes::from(i.to_string()))]
            );
        } else {
            assert_eq!(record.key, None);
            assert!(record.headers.is_empty());
        }
    }
    assert!(read(&t.client, FetchConfig::new("log", 0)).await.is_empty());

    // Other starts, and a limit.
    let from = |start| FetchConfig::new("log", 1).start(start);
    assert_eq!(
        offsets(&read(&t.client, from(Position::Offset(3))).await),
        [3, 4]
    );
    assert!(read(&t.client, from(Position::Latest)).await.is_empty());
    assert_eq!(
        offsets(&read(&t.client, from(Position::Timestamp(2_500))).await),
        [2, 3, 4]
    );
    assert!(
        read(&t.client, from(Position::Timestamp(99_000)))
            .await
            .is_empty()
    );
    assert_eq!(
        offsets(&read(&t.client, from(Position::Offset(1)).max_records(2)).await),
        [1, 2]
    );
    assert!(
        read(&t.client, from(Position::Earliest).max_records(0))
            .await
            .is_empty()
    );

    // The broker's refusals, with their codes.
    let refused = |config| async {
        match t.client.fetch(config).await {
            Err(error) => error,
            Ok(mut fetch) => match fetch.next().await {
                Some(Err(error)) => error,
                other => panic!("expected an error, got {other:?}"),
            },
        }
    };
    let error = refused(FetchConfig::new("log", 7)).await;
    assert!(matches!(error, Error::NotFound(_)), "{error:?}");
    let error = refused(from(Position::Offset(99))).await;
    assert!(matches!(error, Error::OutOfRange(_)), "{error:?}");
    assert_eq!(error.code_name(), Some("OUT_OF_RANGE"));
    let error = refused(FetchConfig::new("missing", 0)).await;
    assert!(matches!(error, Error::NotFound(_)), "{error:?}");
}

#[tokio::test]
async fn fetch_follow_yields_records_published_later() {
    let t = common::start_with_client().await;
    // A keep-alive connection, as a long-lived tail would use.
    let client = Client::builder(format!("http://{}", t.broker.addr))
        .keep_alive(Duration::from_secs(1), Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    client
        .admin()
        .create_topic("tail", 1, TopicConfig::default())
        .await
        .unwrap();
    let producer = client.producer(ProducerConfig::new("tail"));
    producer
        .send(Record::new("before"))
        .await
        .unwrap()
        .await
        .unwrap();

    let mut tail = client
        .fetch(FetchConfig::new("tail", 0).follow(true))
        .await
        .unwrap();
    assert_eq!(next(&mut tail).await.value, "before");
    for i in 0..3 {
        // Published after the fetch caught up: each arrives on the open stream.
        let delivery = producer.send(Record::new(format!("after-{i}"))).await;
        delivery.unwrap().await.unwrap();
        let record = next(&mut tail).await;
        assert_eq!(
            (record.offset.0, record.value),
            (i + 1, format!("after-{i}").into())
        );
    }
    producer.close().await.unwrap();

    // With a limit, a followed fetch ends once it is reached.
    let limited = client
        .fetch(FetchConfig::new("tail", 0).follow(true).max_records(2))
        .await
        .unwrap();
    assert_eq!(offsets(&collect(limited).await), [0, 1]);
}

/// Records come as stored batches decoded by the client: a start inside a batch skips the
/// records before it, and responses of one batch each (a 1-byte response limit) add up to
/// every record once, in order, whatever batch each start falls in.
#[tokio::test]
async fn fetch_starts_inside_batches_and_reads_each_record_once() {
    let t = common::start_with_client().await;
    t.create_topic("batches", 1).await;
    let producer = t.client.producer(ProducerConfig::new("batches"));
    // Three batches of 4, 1 and 5 records: offsets 0-3, 4, 5-9.
    for size in [4, 1, 5] {
        let records = (0..size).map(|i| Record::new(format!("r{size}-{i}")).key("k"));
        producer.send_all(records).await.unwrap().await.unwrap();
    }
    producer.close().await.unwrap();
    for start in 0..10u64 {
        for limit in [0, 1] {
            let config = FetchConfig::new("batches", 0)
                .start(Position::Offset(start))
                .max_response_bytes(limit);
            let got = read(&t.client, config).await;
            assert_eq!(
                offsets(&got),
                (start..10).collect::<Vec<_>>(),
                "from {start}, response limit {limit}"
            );
            assert!(got.iter().all(|r| r.key.as_deref() == Some(&b"k"[..])));
        }
    }
    // Earliest reads everything once, one batch per response.
    let config = FetchConfig::new("batches", 0).max_response_bytes(1);
    assert_eq!(
        offsets(&read(&t.client, config).await),
        (0..10).collect::<Vec<_>>()
    );
}
