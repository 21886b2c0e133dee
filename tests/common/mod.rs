//! Shared set-up for integration tests: a real broker on 127.0.0.1:0 with a temp data dir,
//! and a gRPC client connected to it.
#![allow(dead_code)]

use std::path::Path;

use herald_broker::config::{Config, FsyncSetting};
use herald_broker::server::Broker;
use herald_proto::HeraldClient;
use herald_proto::v1;
use tonic::transport::Channel;

/// A configuration for tests: ephemeral ports, the given data dir, small segments so rolls
/// happen, fsync `never` unless a test asks for more.
pub fn test_config(data_dir: &Path) -> Config {
    Config {
        data_dir: data_dir.to_owned(),
        listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: "127.0.0.1:0".parse().unwrap(),
        fsync: FsyncSetting::Never,
        segment_bytes: 4 * 1024 * 1024,
        max_batch_bytes: 2 * 1024 * 1024,
        ..Config::default()
    }
}

/// Starts a broker (with its metrics endpoint) on `config`.
pub async fn start(config: Config) -> Broker {
    Broker::start(config, true).await.expect("broker starts")
}

pub async fn client(broker: &Broker) -> HeraldClient<Channel> {
    HeraldClient::connect(format!("http://{}", broker.addr))
        .await
        .expect("client connects")
}

pub async fn create_topic(client: &mut HeraldClient<Channel>, name: &str, partitions: u32) {
    client
        .create_topic(v1::CreateTopicRequest {
            name: name.into(),
            partitions,
            config: None,
        })
        .await
        .expect("topic created");
}

/// A plain proto record.
pub fn record(key: Option<&str>, value: &str) -> v1::Record {
    v1::Record {
        key: key.map(|k| k.as_bytes().to_vec().into()),
        value: value.as_bytes().to_vec().into(),
        headers: vec![],
        timestamp_ms: 0,
    }
}

pub async fn publish(
    client: &mut HeraldClient<Channel>,
    topic: &str,
    partition: Option<u32>,
    records: Vec<v1::Record>,
) -> Result<v1::PublishResponse, tonic::Status> {
    client
        .publish(v1::PublishRequest {
            topic: topic.into(),
            partition,
            payload: Some(v1::publish_request::Payload::Records(v1::Records {
                records,
            })),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Fetches every record of a partition from `from` to the end (no follow).
pub async fn fetch_all(
    client: &mut HeraldClient<Channel>,
    topic: &str,
    partition: u32,
    from: u64,
) -> Result<Vec<v1::FetchedRecord>, tonic::Status> {
    let mut stream = client
        .fetch(v1::FetchRequest {
            topic: topic.into(),
            partition,
            start: Some(v1::Position {
                kind: Some(v1::position::Kind::Offset(from)),
            }),
            max_bytes: 0,
            follow: false,
            max_wait_ms: 0,
            raw_batches: false,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(response) = stream.message().await? {
        out.extend(response.records);
    }
    Ok(out)
}
