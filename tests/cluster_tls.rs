//! Mutual TLS between cluster nodes: three brokers in one process with peer TLS, node
//! certificates from a cluster CA made at run time, peers named by IP address and by host
//! name; they elect a leader and a topic created through one node reaches every node. The
//! peer port refuses a caller without a client certificate, with one from another CA, and
//! plaintext, before any Raft message is read; a caller with a node certificate is heard;
//! a node refuses a peer whose certificate does not name the host it dialled.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::cluster::{TestCluster, create, eventually, has_topic};
use common::pki::{Ca, Leaf, Validity};
use common::test_config;
use herald_broker::cluster::ClusterSettings;
use herald_broker::cluster::network::peer_client;
use herald_broker::cluster::peer_tls::PeerTls;
use herald_broker::server::Broker;
use herald_proto::HeraldClient;
use herald_proto::peer::peer_client::PeerClient;
use herald_proto::peer::{Group, RaftRequest};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

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
/// are `localhost`, so both kinds of name are checked against the certificates. Node
/// `id`'s certificate and key are in `tls-{id}` beside the data dirs.
async fn start_cluster(ca: &Arc<Ca>, n: u64) -> TestCluster {
    let peer_host = |id: u64| if id == 1 { "127.0.0.1" } else { "localhost" };
    let ca = ca.clone();
    TestCluster::start_with(
        n,
        peer_host,
        Box::new(move |spec, config| {
            let dir = tls_dir(spec.dir.parent().unwrap(), spec.id);
            std::fs::create_dir_all(&dir).unwrap();
            let node = ca.node(spec.id, &[peer_host(spec.id)]);
            let settings = config.cluster.take().unwrap();
            config.cluster = Some(with_peer_tls(settings, &dir, &ca, &node));
        }),
    )
    .await
}

fn tls_dir(root: &Path, id: u64) -> PathBuf {
    root.join(format!("tls-{id}"))
}

async fn create_topic(broker: &Broker, name: &str) {
    let mut client = HeraldClient::connect(format!("http://{}", broker.addr))
        .await
        .unwrap();
    create(&mut client, name, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_over_mutual_tls_elect_a_leader_and_share_topics() {
    let ca = Arc::new(Ca::new("cluster CA"));
    let cluster = start_cluster(&ca, 3).await;
    let leader = cluster.leader().await;
    let brokers: Vec<&Broker> = cluster.running().collect();
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
    let node3 = tls_dir(cluster.root(), 3).join("node-3.pem");
    std::fs::write(&node3, "not a certificate").unwrap();
    let refused = brokers[2].reload().unwrap_err().to_string();
    assert!(refused.contains("node-3.pem"), "{refused}");
    create_topic(brokers[2], "after-reload").await;
    for broker in &brokers {
        eventually("every node holds the second topic", || {
            has_topic(broker, "after-reload")
        })
        .await;
    }

    cluster.shutdown().await;
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
    let ca = Arc::new(Ca::new("cluster CA"));
    let cluster = start_cluster(&ca, 1).await;
    let peer = cluster.node(1).cluster.as_ref().unwrap().peer_addr;
    // A cluster of one elects itself; its term stays unless a vote gets through.
    cluster.leader().await;
    let term_before = cluster
        .node(1)
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
    let dir = tls_dir(cluster.root(), 2);
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

    let metrics = cluster
        .node(1)
        .cluster
        .as_ref()
        .unwrap()
        .raft()
        .metrics()
        .borrow()
        .clone();
    assert_eq!(metrics.current_term, term_before, "no vote was counted");
    cluster.shutdown().await;
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
