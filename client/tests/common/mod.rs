//! Shared set-up: a real in-process broker on 127.0.0.1:0 with a temp data dir.
#![allow(dead_code)]

use futures::FutureExt;
use herald_broker::config::{Config, FsyncSetting};
use herald_broker::server::Broker;
use herald_client::Client;
use herald_proto::v1;

/// A running broker, its data dir (kept alive with it) and a client connected to it.
pub struct TestBroker {
    pub broker: Broker,
    pub client: Client,
    _dir: tempfile::TempDir,
}

pub async fn start() -> TestBroker {
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = Config {
        data_dir: dir.path().to_owned(),
        listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: "127.0.0.1:0".parse().unwrap(),
        fsync: FsyncSetting::Never,
        ..Config::default()
    };
    let broker = Broker::start(config, false).await.expect("broker starts");
    let client = Client::connect(format!("http://{}", broker.addr))
        .await
        .expect("client connects");
    TestBroker {
        broker,
        client,
        _dir: dir,
    }
}

/// Every record of a partition, read back with the raw `Fetch`.
pub async fn fetch_all(client: &Client, topic: &str, partition: u32) -> Vec<v1::FetchedRecord> {
    let mut raw = client.raw();
    let mut stream = raw
        .fetch(v1::FetchRequest {
            topic: topic.into(),
            partition,
            start: Some(v1::Position {
                kind: Some(v1::position::Kind::Earliest(v1::Earliest {})),
            }),
            max_bytes: 0,
            follow: false,
            max_wait_ms: 0,
            raw_batches: false,
        })
        .await
        .expect("fetch starts")
        .into_inner();
    let mut out = Vec::new();
    while let Some(response) = stream.message().await.expect("fetch reads") {
        out.extend(response.records);
    }
    out
}

/// Starts a broker on `listen` with data in `dir` (for restarts on the same address).
pub async fn start_at(dir: &std::path::Path, listen: std::net::SocketAddr) -> Broker {
    let config = Config {
        data_dir: dir.to_owned(),
        listen,
        metrics_listen: "127.0.0.1:0".parse().unwrap(),
        fsync: FsyncSetting::Never,
        ..Config::default()
    };
    Broker::start(config, false).await.expect("broker starts")
}

/// The outcome of a delivery that must already be resolved. (Polled unconstrained:
/// Tokio's cooperative budget would make a ready oneshot look pending after a while.)
pub fn ready(
    delivery: herald_client::Delivery,
) -> Option<herald_client::Result<herald_client::Acked>> {
    tokio::task::unconstrained(delivery).now_or_never()
}
