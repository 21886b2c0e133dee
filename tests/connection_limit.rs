//! `max_connections`: at the cap, a further client waits (in the listen backlog) instead
//! of being served, and is served as soon as a connection closes.

mod common;

use std::time::Duration;

use common::*;
use herald_broker::config::Config;
use herald_proto::HeraldClient;
use herald_proto::v1;

async fn list(c: &mut HeraldClient<tonic::transport::Channel>) -> usize {
    c.list_topics(v1::ListTopicsRequest {})
        .await
        .expect("served")
        .into_inner()
        .topics
        .len()
}

#[tokio::test]
async fn connections_above_max_connections_wait_until_one_closes() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(Config {
        max_connections: 2,
        ..test_config(dir.path())
    })
    .await;
    let mut first = client(&broker).await;
    let mut second = client(&broker).await;
    create_topic(&mut first, "t", 1).await;
    assert_eq!(list(&mut second).await, 1);

    // A third connection is not served while two are open.
    let addr = broker.addr;
    let third = tokio::spawn(async move {
        let mut c = HeraldClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        list(&mut c).await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served at the cap"
    );

    // Closing one lets it in.
    drop(first);
    let served = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("served once a connection closed")
        .unwrap();
    assert_eq!(served, 1);
    assert_eq!(list(&mut second).await, 1);
    drop(second);
    stop(broker).await;
}
