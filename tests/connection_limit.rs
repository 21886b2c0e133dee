//! `max_connections`: at the cap, a further client waits (in the listen backlog) instead
//! of being served, and is served as soon as a connection closes.

mod common;

use std::time::Duration;

use common::*;
use herald_broker::config::Config;
use herald_proto::HeraldClient;
use herald_proto::v1;

/// Connections complete but not accepted on the listening socket bound to `addr`: for a
/// socket in LISTEN state, Linux shows its accept queue's length in the `rx_queue` column
/// of /proc/net/tcp.
fn waiting_in_backlog(addr: std::net::SocketAddr) -> usize {
    let std::net::IpAddr::V4(ip) = addr.ip() else {
        panic!("an IPv4 listen address: {addr}")
    };
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(ip.octets()),
        addr.port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table
        .lines()
        .skip(1)
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let listening = fields[1] == local && fields[3] == "0A";
            let (_, rx_queue) = fields[4].split_once(':')?;
            listening.then(|| usize::from_str_radix(rx_queue, 16).expect("a hex queue length"))
        })
        .expect("the broker's listening socket is in /proc/net/tcp")
}

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
    // Its TCP connect completes: it waits in the listen backlog, not accepted ...
    wait_for(
        "the third connection waits in the listen backlog",
        || async {
            match waiting_in_backlog(addr) {
                1 => Ok(()),
                n => Err(n),
            }
        },
    )
    .await;
    // ... while the broker goes on serving the connections it has.
    assert_eq!(list(&mut second).await, 1);
    assert_eq!(
        waiting_in_backlog(addr),
        1,
        "the third connection was accepted"
    );
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
