//! Mutual TLS between cluster nodes: three brokers in one process with peer TLS, node
//! certificates from a cluster CA made at run time, peers named by IP address and by host
//! name; they elect a leader and a topic created through one node reaches every node. The
//! peer port refuses a caller without a client certificate, with one from another CA, and
//! plaintext, before any Raft message is read; a caller with a node certificate is heard;
//! a node refuses a peer whose certificate does not name the host it dialled.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::pki::{Ca, Leaf, Validity};
use common::{assert_no_broker_panics, record_panics, test_config};
use herald_broker::cluster::ClusterSettings;
use herald_broker::cluster::network::peer_client;
use herald_broker::cluster::peer_tls::PeerTls;
use herald_broker::server::Broker;
use herald_proto::HeraldClient;
use herald_proto::peer::peer_client::PeerClient;
use herald_proto::peer::{Group, RaftRequest};
use herald_proto::v1;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Generous: elections take about a second, but CI machines are slow and shared.
const WAIT: Duration = Duration::from_secs(30);

fn free_ports(n: usize) -> Vec<SocketAddr> {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    listeners.iter().map(|l| l.local_addr().unwrap()).collect()
}

/// `settings` with peer TLS from `node`'s files and the cluster CA, written into `dir`.
fn with_peer_tls(
    mut settings: ClusterSettings,
    dir: &Path,
    ca: &Ca,
    node: &Leaf,
) -> ClusterSettings {
    let (cert, key) = node.write(dir, &format!("node-{}", settings.node_id));
    settings.peer_tls_cert_file = Some(cert);
    settings.peer_tls_key_file = Some(key);
    settings.peer_tls_ca_file = Some(ca.write(dir, "cluster-ca"));
    settings
}

/// Starts `n` nodes with peer TLS. Node 1's peer address is an IP address; the others'
/// are `localhost`, so both kinds of name are checked against the certificates.
async fn start_cluster(root: &Path, ca: &Ca, n: u64) -> Vec<Broker> {
    record_panics();
    let ports = free_ports(2 * n as usize);
    let peer_host = |id: u64| if id == 1 { "127.0.0.1" } else { "localhost" };
    let members = (1..=n)
        .map(|id| {
            let i = (id - 1) as usize * 2;
            format!(
                "{id}={}@{}:{}",
                ports[i],
                peer_host(id),
                ports[i + 1].port()
            )
        })
        .collect::<Vec<_>>()
        .join(",");
    let mut brokers = Vec::new();
    for id in 1..=n {
        let i = (id - 1) as usize * 2;
        let dir = root.join(format!("node{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = test_config(&dir.join("data"));
        config.listen = ports[i];
        let node = ca.node(id, &[peer_host(id)]);
        config.cluster = Some(with_peer_tls(
            ClusterSettings::new(id, ports[i + 1], members.clone()),
            &dir,
            ca,
            &node,
        ));
        brokers.push(Broker::start(config, false).await.expect("node starts"));
    }
    brokers
}

/// Waits until every node names the same leader.
async fn leader(brokers: &[Broker]) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let leaders: Vec<Option<u64>> = brokers
            .iter()
            .map(|b| {
                b.cluster
                    .as_ref()
                    .unwrap()
                    .raft()
                    .metrics()
                    .borrow()
                    .current_leader
            })
            .collect();
        if let Some(Some(first)) = leaders.first()
            && leaders.iter().all(|l| *l == Some(*first))
        {
            return *first;
        }
        assert!(
            Instant::now() < deadline,
            "no agreed leader; seen {leaders:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn eventually(what: &str, mut probe: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !probe() {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn create_topic(broker: &Broker, name: &str) {
    HeraldClient::connect(format!("http://{}", broker.addr))
        .await
        .unwrap()
        .create_topic(v1::CreateTopicRequest {
            name: name.into(),
            partitions: 3,
            config: None,
        })
        .await
        .expect("topic created");
}

fn has_topic(broker: &Broker, topic: &str) -> bool {
    broker
        .cluster
        .as_ref()
        .unwrap()
        .metadata()
        .topics
        .contains_key(topic)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_over_mutual_tls_elect_a_leader_and_share_topics() {
    let root = tempfile::tempdir().unwrap();
    let ca = Ca::new("cluster CA");
    let brokers = start_cluster(root.path(), &ca, 3).await;
    let leader = leader(&brokers).await;
    // Through a follower: the change is forwarded to the leader over the peer port.
    let follower = brokers
        .iter()
        .find(|b| b.cluster.as_ref().unwrap().node_id() != leader)
        .unwrap();
    create_topic(follower, "orders").await;
    for broker in &brokers {
        eventually("every node holds the topic", || has_topic(broker, "orders")).await;
    }

    // SIGHUP's reload: the files in place reload; a damaged certificate is refused and
    // the configuration in force stays, so the nodes keep talking.
    for broker in &brokers {
        broker.reload().expect("peer TLS reloads");
    }
    let node3 = root.path().join("node3").join("node-3.pem");
    std::fs::write(&node3, "not a certificate").unwrap();
    let refused = brokers[2].reload().unwrap_err().to_string();
    assert!(refused.contains("node-3.pem"), "{refused}");
    create_topic(&brokers[2], "after-reload").await;
    for broker in &brokers {
        eventually("every node holds the second topic", || {
            has_topic(broker, "after-reload")
        })
        .await;
    }

    for broker in brokers {
        broker.shutdown().await.expect("node stops cleanly");
    }
    assert_no_broker_panics();
}

/// A Vote carrying bytes that are not a vote: a node that reads it answers
/// INVALID_ARGUMENT, so any other outcome means the message never reached Raft.
async fn vote(channel: Channel) -> Result<(), tonic::Status> {
    PeerClient::new(channel)
        .vote(RaftRequest {
            to: 1,
            from: 2,
            group: Group::Metadata as i32,
            payload: vec![0xff; 16].into(),
            ..Default::default()
        })
        .await
        .map(|_| ())
}

fn tls_endpoint(addr: SocketAddr, ca: &Ca, identity: Option<&Leaf>) -> Endpoint {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca.pem))
        .domain_name("127.0.0.1");
    if let Some(leaf) = identity {
        tls = tls.identity(Identity::from_pem(&leaf.cert_pem, &leaf.key_pem));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .timeout(Duration::from_secs(5))
        .tls_config(tls)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_port_hears_only_nodes_of_the_cluster_ca() {
    let root = tempfile::tempdir().unwrap();
    let ca = Ca::new("cluster CA");
    let brokers = start_cluster(root.path(), &ca, 1).await;
    let peer = brokers[0].cluster.as_ref().unwrap().peer_addr;
    // A cluster of one elects itself; its term stays unless a vote gets through.
    leader(&brokers).await;
    let term_before = brokers[0]
        .cluster
        .as_ref()
        .unwrap()
        .raft()
        .metrics()
        .borrow()
        .current_term;

    // A node certificate from the cluster CA is heard (the undecodable vote proves it).
    let node = ca.node(2, &["127.0.0.1"]);
    let heard = vote(tls_endpoint(peer, &ca, Some(&node)).connect_lazy()).await;
    let status = heard.expect_err("the vote is undecodable");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("undecodable"), "{status:?}");

    let stranger = Ca::new("another CA");
    let refusals = [
        (
            "no client certificate",
            tls_endpoint(peer, &ca, None).connect_lazy(),
        ),
        (
            "a client certificate from another CA",
            tls_endpoint(peer, &ca, Some(&stranger.node(2, &["127.0.0.1"]))).connect_lazy(),
        ),
        (
            "an expired certificate from the cluster CA",
            tls_endpoint(
                peer,
                &ca,
                Some(&ca.client("herald-node-2", Validity::Expired)),
            )
            .connect_lazy(),
        ),
        (
            "plaintext",
            Endpoint::from_shared(format!("http://{peer}"))
                .unwrap()
                .timeout(Duration::from_secs(5))
                .connect_lazy(),
        ),
    ];
    for (what, channel) in refusals {
        let status = vote(channel)
            .await
            .expect_err(&format!("{what} is refused"));
        assert!(
            !matches!(
                status.code(),
                Code::InvalidArgument | Code::FailedPrecondition | Code::Ok
            ),
            "{what}: the peer service read the message: {status:?}"
        );
    }
    // A node's own calls check the name: node 1's certificate names 127.0.0.1, so a
    // node that dials it as `localhost` refuses the handshake.
    let dir = root.path().join("node2");
    std::fs::create_dir_all(&dir).unwrap();
    let settings = with_peer_tls(
        ClusterSettings::new(2, "127.0.0.1:0".parse().unwrap(), String::new()),
        &dir,
        &ca,
        &node,
    );
    let tls = PeerTls::from_settings(&settings)
        .unwrap()
        .expect("peer TLS on");
    let by_name = |host: &str| {
        let addr = format!("{host}:{}", peer.port());
        peer_client(&addr, Some(&tls)).unwrap()
    };
    let request = || RaftRequest {
        to: 1,
        from: 2,
        group: Group::Metadata as i32,
        payload: vec![0xff; 16].into(),
        ..Default::default()
    };
    let status = by_name("127.0.0.1").vote(request()).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = by_name("localhost").vote(request()).await.unwrap_err();
    assert!(
        !matches!(status.code(), Code::InvalidArgument),
        "a certificate for another name was accepted: {status:?}"
    );

    let metrics = brokers[0]
        .cluster
        .as_ref()
        .unwrap()
        .raft()
        .metrics()
        .borrow()
        .clone();
    assert_eq!(metrics.current_term, term_before, "no vote was counted");

    for broker in brokers {
        broker.shutdown().await.expect("node stops cleanly");
    }
    assert_no_broker_panics();
}

#[tokio::test]
async fn a_peer_port_off_loopback_needs_peer_tls_or_insecure() {
    let root = tempfile::tempdir().unwrap();
    let mut config = test_config(&root.path().join("data"));
    let settings = ClusterSettings::new(
        1,
        "0.0.0.0:0".parse().unwrap(),
        "1=127.0.0.1:50051@127.0.0.1:7001".into(),
    );
    config.cluster = Some(settings.clone());
    let refused = Broker::start(config.clone(), false)
        .await
        .err()
        .expect("plaintext peers off loopback are refused")
        .to_string();
    assert!(
        refused.contains("peer_listen = 0.0.0.0:0 is not a loopback address"),
        "{refused}"
    );

    let mut partial = settings.clone();
    partial.peer_tls_cert_file = Some(root.path().join("node-1.pem"));
    config.cluster = Some(partial);
    let refused = config.validate().unwrap_err().to_string();
    assert!(refused.contains("go together"), "{refused}");

    config.cluster = Some(settings);
    config.insecure = true;
    config.validate().expect("insecure allows plaintext peers");
}
