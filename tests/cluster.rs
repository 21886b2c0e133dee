//! Cluster mode in one process: three brokers on 127.0.0.1 with their own data dirs,
//! forming the metadata group over real gRPC peer connections.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{assert_no_broker_panics, code_of, record, record_panics, test_config};
use herald_broker::cluster::ClusterSettings;
use herald_broker::server::Broker;
use herald_proto::HeraldClient;
use herald_proto::v1;
use tonic::Code;
use tonic::transport::Channel;

/// Generous: elections take about a second, but CI machines are slow and shared.
const WAIT: Duration = Duration::from_secs(30);

/// One node's fixed identity: restarting it reuses its ports and data dir.
struct NodeSpec {
    id: u64,
    client: SocketAddr,
    peer: SocketAddr,
    dir: PathBuf,
}

struct TestCluster {
    _root: tempfile::TempDir,
    specs: Vec<NodeSpec>,
    members: String,
    brokers: Vec<Option<Broker>>,
}

/// Free loopback ports, found by binding and releasing them.
fn free_ports(n: usize) -> Vec<SocketAddr> {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    listeners.iter().map(|l| l.local_addr().unwrap()).collect()
}

fn config(spec: &NodeSpec, members: &str) -> herald_broker::config::Config {
    let mut config = test_config(&spec.dir);
    config.listen = spec.client;
    config.cluster = Some(ClusterSettings::new(spec.id, spec.peer, members.to_owned()));
    config
}

impl TestCluster {
    async fn start(n: u64) -> TestCluster {
        record_panics();
        let root = tempfile::tempdir().unwrap();
        let ports = free_ports(2 * n as usize);
        let specs: Vec<NodeSpec> = (0..n)
            .map(|i| NodeSpec {
                id: i + 1,
                client: ports[2 * i as usize],
                peer: ports[2 * i as usize + 1],
                dir: root.path().join(format!("node{}", i + 1)),
            })
            .collect();
        let members = specs
            .iter()
            .map(|s| format!("{}={}@{}", s.id, s.client, s.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = TestCluster {
            _root: root,
            specs,
            members,
            brokers: Vec::new(),
        };
        for i in 0..n as usize {
            let broker = cluster.boot(i).await;
            cluster.brokers.push(Some(broker));
        }
        cluster
    }

    async fn boot(&self, i: usize) -> Broker {
        Broker::start(config(&self.specs[i], &self.members), false)
            .await
            .expect("node starts")
    }

    fn index_of(&self, id: u64) -> usize {
        self.specs.iter().position(|s| s.id == id).unwrap()
    }

    async fn client(&self, id: u64) -> HeraldClient<Channel> {
        let addr = self.specs[self.index_of(id)].client;
        HeraldClient::connect(format!("http://{addr}"))
            .await
            .unwrap()
    }

    fn running(&self) -> impl Iterator<Item = &Broker> {
        self.brokers.iter().flatten()
    }

    /// Waits until every running node names the same leader, one of the running nodes.
    async fn leader(&self) -> u64 {
        let running: BTreeSet<u64> = self
            .running()
            .map(|b| b.cluster.as_ref().unwrap().node_id())
            .collect();
        let deadline = Instant::now() + WAIT;
        loop {
            let leaders: BTreeSet<Option<u64>> = self
                .running()
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
            if let [Some(leader)] = leaders.iter().copied().collect::<Vec<_>>()[..]
                && running.contains(&leader)
            {
                return leader;
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader; seen {leaders:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(&mut self, id: u64) {
        let i = self.index_of(id);
        let broker = self.brokers[i].take().expect("node is running");
        broker.shutdown().await.expect("node stops cleanly");
    }

    async fn restart(&mut self, id: u64) {
        let i = self.index_of(id);
        let broker = self.boot(i).await;
        self.brokers[i] = Some(broker);
    }

    async fn shutdown(mut self) {
        for broker in self.brokers.iter_mut().filter_map(Option::take) {
            broker.shutdown().await.expect("node stops cleanly");
        }
        assert_no_broker_panics();
    }
}

/// Waits until `probe` holds.
async fn eventually(what: &str, mut probe: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !probe() {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn has_topic(broker: &Broker, topic: &str) -> bool {
    broker
        .cluster
        .as_ref()
        .unwrap()
        .metadata()
        .topics
        .contains_key(topic)
        && broker.registry.get(topic).is_ok()
}

async fn create(client: &mut HeraldClient<Channel>, name: &str, partitions: u32) {
    client
        .create_topic(v1::CreateTopicRequest {
            name: name.into(),
            partitions,
            config: None,
        })
        .await
        .expect("topic created");
}

async fn publish(
    client: &mut HeraldClient<Channel>,
    topic: &str,
    partition: u32,
) -> Result<v1::PublishResponse, tonic::Status> {
    client
        .publish(v1::PublishRequest {
            topic: topic.into(),
            partition: Some(partition),
            payload: Some(v1::publish_request::Payload::Records(v1::Records {
                records: vec![record(Some("k"), "v")],
            })),
            producer: None,
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_created_on_a_follower_reaches_every_node_with_its_placement() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();

    let mut client = cluster.client(follower).await;
    create(&mut client, "orders", 3).await;
    // The node that took the request answers after applying it itself.
    assert!(has_topic(
        cluster.brokers[cluster.index_of(follower)]
            .as_ref()
            .unwrap(),
        "orders"
    ));
    for broker in cluster.running() {
        eventually("every node holds the topic", || has_topic(broker, "orders")).await;
    }
    let again = client
        .create_topic(v1::CreateTopicRequest {
            name: "orders".into(),
            partitions: 1,
            config: None,
        })
        .await;
    assert_eq!(code_of(again), Code::AlreadyExists);

    // Any node describes the cluster: three nodes, one leader, the topic's replicas.
    let other = (1..=3).find(|id| *id != follower).unwrap();
    let status = cluster
        .client(other)
        .await
        .cluster_status(v1::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(status.cluster_mode);
    assert_eq!(status.node_id, other);
    assert_eq!(status.metadata_leader, Some(leader));
    assert_eq!(status.nodes.len(), 3);
    let topic = &status.topics[0];
    assert_eq!(
        (topic.name.as_str(), topic.replication_factor),
        ("orders", 3)
    );
    let leaders: BTreeSet<u64> = topic.partitions.iter().map(|p| p.leader).collect();
    assert_eq!(
        leaders.len(),
        3,
        "partition leaders spread over the nodes: {topic:?}"
    );

    // A partition's publishes go to its node; the others name it.
    for p in &topic.partitions {
        let mut home = cluster.client(p.leader).await;
        publish(&mut home, "orders", p.partition)
            .await
            .expect("its node takes it");
        let elsewhere = (1..=3).find(|id| *id != p.leader).unwrap();
        let refused = publish(&mut cluster.client(elsewhere).await, "orders", p.partition).await;
        let status = refused.unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(
            status
                .message()
                .contains(&format!("served by node {}", p.leader)),
            "{}",
            status.message()
        );
    }

    // A consumer group reads its node's logs: refused on a node that does not serve
    // every partition, naming one that serves a partition it lacks.
    let refused = client
        .create_group(v1::CreateGroupRequest {
            topic: "orders".into(),
            group: "g".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(code_of(refused), Code::FailedPrecondition);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(v1::SubscribeRequest {
        request: Some(v1::subscribe_request::Request::Join(common::join(
            "orders", "g", None,
        ))),
    })
    .await
    .unwrap();
    let mut stream = client
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let status = stream.message().await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("served by node"), "{status:?}");

    client
        .delete_topic(v1::DeleteTopicRequest {
            name: "orders".into(),
        })
        .await
        .expect("deleted through a follower");
    for broker in cluster.running() {
        eventually("every node dropped the topic", || {
            broker.registry.get("orders").is_err()
        })
        .await;
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_takes_over_and_a_restarted_node_catches_up() {
    let mut cluster = TestCluster::start(3).await;
    let first = cluster.leader().await;
    create(&mut cluster.client(first).await, "before", 1).await;

    cluster.stop(first).await;
    let started = Instant::now();
    let second = cluster.leader().await;
    println!(
        "new leader elected {:?} after the old one stopped",
        started.elapsed()
    );
    assert_ne!(second, first);
    let survivor = (1..=3).find(|id| *id != first && *id != second).unwrap();
    // Created through the survivor that does not lead: forwarded to the new leader.
    create(&mut cluster.client(survivor).await, "after", 2).await;

    cluster.restart(first).await;
    let back = cluster.brokers[cluster.index_of(first)].as_ref().unwrap();
    eventually("the restarted node catches up", || {
        has_topic(back, "before") && has_topic(back, "after")
    })
    .await;
    // It recovered its log and state from its data dir, and follows the new leader.
    assert_eq!(cluster.leader().await, second);
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_single_node_describes_itself_as_a_cluster_of_one() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(test_config(dir.path())).await;
    assert!(broker.cluster.is_none());
    assert!(!Path::new(&dir.path().join("cluster")).exists());
    let mut client = common::client(&broker).await;
    common::create_topic(&mut client, "t", 2).await;
    let status = client
        .cluster_status(v1::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!status.cluster_mode);
    assert_eq!(status.nodes.len(), 1);
    assert_eq!(status.nodes[0].client_address, broker.addr.to_string());
    assert_eq!(status.topics[0].partitions.len(), 2);
    common::stop(broker).await;
}
