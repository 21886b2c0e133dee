//! In-process clusters for tests: brokers on 127.0.0.1 with their own data dirs, forming
//! the metadata group over real gRPC peer connections, that a test can stop, restart
//! (same ports, same data) and grow.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use herald_broker::cluster::ClusterSettings;
use herald_broker::config::Config;
use herald_broker::server::Broker;
use herald_proto::HeraldClient;
use herald_proto::v1;
use tonic::transport::Channel;

use super::{assert_no_broker_panics, record, record_panics, test_config};

/// Generous: elections take about a second, but CI machines are slow and shared.
pub const WAIT: Duration = Duration::from_secs(30);

/// One node's fixed identity: restarting it reuses its ports and data dir.
pub struct NodeSpec {
    pub id: u64,
    pub client: SocketAddr,
    /// The address its peer port binds.
    pub peer: SocketAddr,
    /// The host other nodes dial its peer port by (with `peer`'s port).
    pub peer_host: String,
    /// Its data dir.
    pub dir: PathBuf,
}

impl NodeSpec {
    fn member(&self) -> String {
        format!(
            "{}={}@{}:{}",
            self.id,
            self.client,
            self.peer_host,
            self.peer.port()
        )
    }
}

/// A change a test makes to each node's configuration (peer TLS, say) before it starts.
pub type Configure = Box<dyn Fn(&NodeSpec, &mut Config) + Send + Sync>;

pub struct TestCluster {
    root: tempfile::TempDir,
    pub specs: Vec<NodeSpec>,
    pub members: String,
    /// By node, in id order; `None` while a node is stopped.
    pub brokers: Vec<Option<Broker>>,
    configure: Configure,
}

#[path = "../support/ports.rs"]
mod ports;
#[allow(unused_imports)] // not every test crate needs it
pub use ports::free_ports;

impl TestCluster {
    /// `n` nodes with the test configuration, peers dialled by IP address.
    pub async fn start(n: u64) -> TestCluster {
        Self::start_with(n, |_| "127.0.0.1", Box::new(|_, _| {})).await
    }

    /// `n` nodes; node `id`'s peer port is dialled as `peer_host(id)`, and `configure`
    /// changes each node's configuration before it starts (and restarts).
    pub async fn start_with(
        n: u64,
        peer_host: impl Fn(u64) -> &'static str,
        configure: Configure,
    ) -> TestCluster {
        record_panics();
        let root = tempfile::tempdir().unwrap();
        let ports = free_ports(2 * n as usize);
        let specs: Vec<NodeSpec> = (0..n)
            .map(|i| NodeSpec {
                id: i + 1,
                client: ports[2 * i as usize],
                peer: ports[2 * i as usize + 1],
                peer_host: peer_host(i + 1).to_owned(),
                dir: root.path().join(format!("node{}", i + 1)),
            })
            .collect();
        let members = specs
            .iter()
            .map(NodeSpec::member)
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = TestCluster {
            root,
            specs,
            members,
            brokers: Vec::new(),
            configure,
        };
        for i in 0..n as usize {
            let broker = cluster.boot(i).await;
            cluster.brokers.push(Some(broker));
        }
        cluster
    }

    /// The directory the nodes' data dirs are in; a test may keep other files there.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    fn config(&self, spec: &NodeSpec, members: &str) -> Config {
        let mut config = test_config(&spec.dir);
        config.listen = spec.client;
        config.cluster = Some(ClusterSettings::new(spec.id, spec.peer, members.to_owned()));
        (self.configure)(spec, &mut config);
        config
    }

    async fn boot(&self, i: usize) -> Broker {
        Broker::start(self.config(&self.specs[i], &self.members), true)
            .await
            .expect("node starts")
    }

    /// Starts a new node that is not yet a member: its initial members are the cluster's
    /// plus itself, so it is not the lowest id and waits to be added. Returns its id.
    pub async fn start_joiner(&mut self) -> u64 {
        let ports = free_ports(2);
        let id = self.specs.len() as u64 + 1;
        let spec = NodeSpec {
            id,
            client: ports[0],
            peer: ports[1],
            peer_host: "127.0.0.1".into(),
            dir: self.root.path().join(format!("node{id}")),
        };
        let members = format!("{},{}", self.members, spec.member());
        let broker = Broker::start(self.config(&spec, &members), false)
            .await
            .expect("node starts");
        self.specs.push(spec);
        self.brokers.push(Some(broker));
        id
    }

    pub fn index_of(&self, id: u64) -> usize {
        self.specs.iter().position(|s| s.id == id).unwrap()
    }

    /// Node `id`, which must be running.
    pub fn node(&self, id: u64) -> &Broker {
        self.brokers[self.index_of(id)]
            .as_ref()
            .expect("node is running")
    }

    pub async fn client(&self, id: u64) -> HeraldClient<Channel> {
        let addr = self.specs[self.index_of(id)].client;
        HeraldClient::connect(format!("http://{addr}"))
            .await
            .unwrap()
    }

    /// Node `id`'s ClusterStatus.
    pub async fn status(&self, id: u64) -> v1::ClusterStatusResponse {
        self.client(id)
            .await
            .cluster_status(v1::ClusterStatusRequest {})
            .await
            .unwrap()
            .into_inner()
    }

    pub fn running(&self) -> impl Iterator<Item = &Broker> {
        self.brokers.iter().flatten()
    }

    /// Waits until every running node names the same leader, one of the running nodes.
    pub async fn leader(&self) -> u64 {
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

    pub async fn stop(&mut self, id: u64) {
        let i = self.index_of(id);
        let broker = self.brokers[i].take().expect("node is running");
        broker.shutdown().await.expect("node stops cleanly");
    }

    pub async fn restart(&mut self, id: u64) {
        let i = self.index_of(id);
        let broker = self.boot(i).await;
        self.brokers[i] = Some(broker);
    }

    /// Stops every node and fails the test if any broker code panicked.
    pub async fn shutdown(mut self) {
        for broker in self.brokers.iter_mut().filter_map(Option::take) {
            broker.shutdown().await.expect("node stops cleanly");
        }
        assert_no_broker_panics();
    }
}

/// Waits until `probe` holds.
pub async fn eventually(what: &str, mut probe: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !probe() {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `broker` has applied `topic`'s creation: in its metadata and its registry.
pub fn has_topic(broker: &Broker, topic: &str) -> bool {
    broker
        .cluster
        .as_ref()
        .unwrap()
        .metadata()
        .topics
        .contains_key(topic)
        && broker.registry.get(topic).is_ok()
}

pub async fn create(client: &mut HeraldClient<Channel>, name: &str, partitions: u32) {
    create_with_factor(client, name, partitions, None).await;
}

/// Creates a topic with `factor` copies of each partition (`None`: the default).
pub async fn create_with_factor(
    client: &mut HeraldClient<Channel>,
    name: &str,
    partitions: u32,
    factor: Option<u32>,
) {
    client
        .create_topic(v1::CreateTopicRequest {
            name: name.into(),
            partitions,
            config: None,
            replication_factor: factor,
        })
        .await
        .expect("topic created");
}

/// A publish of one record with `key` to `topic`, placed by its key.
pub fn keyed(topic: &str, key: &str, value: &str) -> v1::PublishRequest {
    v1::PublishRequest {
        topic: topic.into(),
        partition: None,
        payload: Some(v1::publish_request::Payload::Records(v1::Records {
            records: vec![record(Some(key), value)],
        })),
        producer: None,
    }
}

/// Publishes, retrying UNAVAILABLE (a failover under way) until `WAIT` has passed; any
/// other refusal fails the test.
pub async fn publish_retrying(
    client: &mut HeraldClient<Channel>,
    request: v1::PublishRequest,
) -> v1::PublishResponse {
    let deadline = Instant::now() + WAIT;
    loop {
        match client.publish(request.clone()).await {
            Ok(answer) => return answer.into_inner(),
            Err(status)
                if status.code() == tonic::Code::Unavailable && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("publish refused: {status:?}"),
        }
    }
}
