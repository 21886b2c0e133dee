//! Graceful stop and restart of the real `herald` binary: after a SIGTERM every
//! acknowledged publish is there, even under fsync `never`. (SIGKILL under load, again
//! and again, is `crash_loop.rs`.)

use bytes::Bytes;
use herald_proto::HeraldClient;
use herald_proto::v1;
use tonic::transport::Channel;

mod common;

use common::{Server, TIMEOUT, create_topic, fetch_from_earliest};

/// The records of a publish: `batch` records, keyed by worker, each carrying its position.
fn batch_records(worker: u32, seq: u32, batch: u32) -> Vec<v1::Record> {
    (0..batch)
        .map(|i| v1::Record {
            key: Some(Bytes::from(format!("worker-{worker}"))),
            value: Bytes::from(format!(
                "w{worker}-s{seq}-r{i}-{}",
                "x".repeat(i as usize * 7)
            )),
            headers: vec![v1::Header {
                key: "seq".into(),
                value: Bytes::from(seq.to_string()),
            }],
            timestamp_ms: 0,
        })
        .collect()
}

async fn publish(
    client: &mut HeraldClient<Channel>,
    topic: &str,
    partition: u32,
    records: Vec<v1::Record>,
) -> Result<v1::PublishResponse, tonic::Status> {
    client
        .publish(v1::PublishRequest {
            topic: topic.into(),
            partition: Some(partition),
            payload: Some(v1::publish_request::Payload::Records(v1::Records {
                records,
            })),
            producer: None,
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Every record of a partition, from its start to its end.
async fn fetch_all(
    client: &mut HeraldClient<Channel>,
    topic: &str,
    partition: u32,
) -> Vec<v1::FetchedRecord> {
    let mut stream = client
        .fetch(fetch_from_earliest(topic, partition))
        .await
        .expect("fetch starts")
        .into_inner();
    let mut out = Vec::new();
    while let Some(response) = stream.message().await.expect("fetch reads") {
        out.extend(response.records);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly_and_keeps_everything() {
    const TOPIC: &str = "graceful";
    const PUBLISHES: u32 = 100;

    let dir = tempfile::tempdir().unwrap();
    // fsync never: only the clean shutdown stands between the acks and the disk.
    let server = Server::start(dir.path(), &["--fsync", "never"]);
    let mut client = server.client().await;
    create_topic(&mut client, TOPIC, 1).await;
    let mut sent = Vec::new();
    for seq in 0..PUBLISHES {
        let records = batch_records(0, seq, 1 + seq % 3);
        let reply = publish(&mut client, TOPIC, 0, records.clone())
            .await
            .expect("publish");
        assert_eq!(reply.base_offset, sent.len() as u64);
        sent.extend(records);
    }

    // A tailing fetch stays open across the SIGTERM: shutdown must not wait for it forever.
    let mut tail = client
        .fetch(v1::FetchRequest {
            topic: TOPIC.into(),
            partition: 0,
            start: Some(v1::Position {
                kind: Some(v1::position::Kind::Latest(v1::Latest {})),
            }),
            follow: true,
            ..Default::default()
        })
        .await
        .expect("follow starts")
        .into_inner();

    let (status, log) = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(
        status.success(),
        "herald serve exited with {status}; log:\n{}",
        log.join("\n")
    );
    assert!(
        log.iter().any(|l| l.contains("stopped cleanly")),
        "no clean stop in the log:\n{}",
        log.join("\n")
    );
    let ended = tokio::time::timeout(TIMEOUT, async {
        loop {
            match tail.message().await {
                Ok(Some(response)) => assert!(response.records.is_empty()),
                Ok(None) => return None,
                Err(status) => return Some(status.code()),
            }
        }
    })
    .await
    .expect("the tailing fetch ends with the broker");
    assert!(
        ended == Some(tonic::Code::Unavailable),
        "the tailing fetch ended with {ended:?}"
    );

    let server = Server::start(dir.path(), &["--fsync", "never"]);
    let mut client = server.client().await;
    let stored = fetch_all(&mut client, TOPIC, 0).await;
    assert_eq!(stored.len(), sent.len(), "records after the restart");
    for (i, (stored, sent)) in stored.iter().zip(&sent).enumerate() {
        assert_eq!(stored.offset, i as u64);
        assert_eq!(stored.key, sent.key, "offset {i}");
        assert_eq!(stored.value, sent.value, "offset {i}");
        assert_eq!(stored.headers, sent.headers, "offset {i}");
    }
    let (status, _) = server.terminate();
    assert!(status.success(), "herald serve exited with {status}");
}
