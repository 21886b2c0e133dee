//! Cluster mode: the nodes of a Herald cluster agree on membership and topic metadata
//! through one openraft group (the metadata group), talking over the `herald.peer.v1`
//! gRPC service on each node's peer port. See ARCHITECTURE.md, "Cluster", for the whole
//! design and what lands in which stage.
//!
//! - [`types`] — openraft's type configuration, the commands and the state.
//! - [`log_store`] — the durable Raft log and vote (an append-only, CRC-framed journal).
//! - [`state_machine`] — applies commands, creates and deletes this node's partition logs,
//!   keeps the state and its snapshots durable.
//! - [`placement`] — which nodes hold each partition.
//! - [`network`], [`peer_service`] — the peer transport's client and server.
//! - [`forward`] — client publishes and reads sent on to the node that serves the
//!   partition, so a client needs the address of one node only.
//!
//! Nothing here runs unless the broker is started with cluster settings: a single node
//! never touches openraft.

pub mod coordinator;
pub mod forward;
pub mod log_store;
pub mod network;
pub mod partition;
pub mod peer_service;
pub mod peer_tls;
pub mod placement;
pub mod state_machine;
pub mod types;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use herald_proto::peer::peer_server::PeerServer;
use herald_proto::peer::{Group, RaftRequest};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{Raft, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;

use crate::error::{BrokerError, Result};
use crate::registry::Registry;
use crate::topic::{TopicSettings, validate_name};
use forward::{FetchStream, ForwardedRequests, Forwarder, LocalService};
use herald_proto::v1;
use log_store::LogStore;
use network::{Health, Network, PEER_CALL_TIMEOUT, PEER_MAX_MESSAGE_BYTES};
use peer_service::PeerService;
use peer_tls::PeerTls;
use state_machine::StateMachine;
pub use types::{
    MetaCommand, MetaRequest, MetaResponse, MetaState, NodeAddr, NodeId, Refusal, TopicRecord,
};

/// The directory under the data dir that holds the metadata group's files.
pub const CLUSTER_DIR: &str = "cluster";
/// Leader heartbeats: an idle group wakes ten times a second.
pub const HEARTBEAT_INTERVAL_MS: u64 = 100;
/// openraft's election timeout range. A follower stands for election once it has heard
/// no leader for its leader lease (the range's maximum) plus a random time in the range:
/// 0.9 to 1.2 s here, so a new leader is in place within about 1.5 s of a leader's death
/// (see README, "Cluster").
pub const ELECTION_TIMEOUT_MS: (u64, u64) = (300, 600);
/// How long a metadata change (create or delete a topic) may take, forwarding and
/// elections included, before the caller gets UNAVAILABLE.
pub const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Room for a forwarded publish's fields around its batch.
const FORWARD_OVERHEAD_BYTES: usize = 64 * 1024;
/// Pause between attempts while no leader is known.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// How a node joins a cluster: `[cluster]` in the configuration file, or the `serve`
/// flags `--node-id`, `--peer-listen` and `--initial-members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// This node's id, at least 1, unique in the cluster.
    pub node_id: NodeId,
    /// Where this node listens for other nodes.
    pub peer_listen: SocketAddr,
    /// Every node of the cluster at its start, this one included:
    /// `1=client_addr@peer_addr,2=...`.
    pub initial_members: String,
    /// This node's certificate chain (PEM) on the peer port, presented to the nodes that
    /// call it and to the nodes it calls. With the key and the CA: mutual TLS between
    /// nodes (see [`peer_tls`]). Read again on SIGHUP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_tls_cert_file: Option<PathBuf>,
    /// The private key (PEM) of `peer_tls_cert_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_tls_key_file: Option<PathBuf>,
    /// The cluster CA (PEM): every node's certificate must chain to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_tls_ca_file: Option<PathBuf>,
}

impl ClusterSettings {
    /// A node of a cluster whose peer traffic is plaintext.
    pub fn new(node_id: NodeId, peer_listen: SocketAddr, initial_members: String) -> Self {
        ClusterSettings {
            node_id,
            peer_listen,
            initial_members,
            peer_tls_cert_file: None,
            peer_tls_key_file: None,
            peer_tls_ca_file: None,
        }
    }

    /// The peer TLS files come as a set of three, and a peer port off loopback needs them
    /// unless `insecure` (the client port's rule): otherwise anyone who reaches the port
    /// could vote and append to the metadata log.
    pub fn check_transport(&self, insecure: bool) -> Result<()> {
        let set = [
            &self.peer_tls_cert_file,
            &self.peer_tls_key_file,
            &self.peer_tls_ca_file,
        ]
        .iter()
        .filter(|f| f.is_some())
        .count();
        if set != 0 && set != 3 {
            return Err(invalid(
                "peer_tls_cert_file, peer_tls_key_file and peer_tls_ca_file go together: set all three or none".into(),
            ));
        }
        if set == 0 && !insecure && !self.peer_listen.ip().is_loopback() {
            return Err(invalid(format!(
                "peer_listen = {} is not a loopback address and peer TLS is off: set peer_tls_cert_file, peer_tls_key_file and peer_tls_ca_file, or insecure = true (--insecure) to talk to the other nodes in plaintext anyway",
                self.peer_listen
            )));
        }
        Ok(())
    }

    /// The initial members, parsed and checked against this node's id.
    pub fn members(&self) -> Result<BTreeMap<NodeId, NodeAddr>> {
        let members = parse_members(&self.initial_members)?;
        if self.node_id == 0 {
            return Err(invalid("node_id must be at least 1".into()));
        }
        if !members.contains_key(&self.node_id) {
            return Err(invalid(format!(
                "initial_members does not list this node's id {}",
                self.node_id
            )));
        }
        Ok(members)
    }
}

fn invalid(message: String) -> BrokerError {
    BrokerError::InvalidSettings(format!("cluster: {message}"))
}

/// Parses `1=client@peer,2=client@peer,...`.
pub fn parse_members(text: &str) -> Result<BTreeMap<NodeId, NodeAddr>> {
    let mut members = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, addrs) = item
            .split_once('=')
            .ok_or_else(|| invalid(format!("member {item:?} is not id=client_addr@peer_addr")))?;
        let id: NodeId = id
            .trim()
            .parse()
            .map_err(|_| invalid(format!("member {item:?}: {id:?} is not a node id")))?;
        let (client, peer) = addrs
            .split_once('@')
            .ok_or_else(|| invalid(format!("member {item:?} is not id=client_addr@peer_addr")))?;
        for addr in [client, peer] {
            network::host_and_port(addr.trim())
                .ok_or_else(|| invalid(format!("member {item:?}: {addr:?} is not host:port")))?;
        }
        if id == 0 {
            return Err(invalid(format!("member {item:?}: node ids start at 1")));
        }
        let node = NodeAddr {
            client: client.trim().to_owned(),
            peer: peer.trim().to_owned(),
        };
        if members.insert(id, node).is_some() {
            return Err(invalid(format!("node id {id} is listed twice")));
        }
    }
    if members.is_empty() {
        return Err(invalid("initial_members lists no node".into()));
    }
    Ok(members)
}

/// What a node answers to a forwarded metadata change.
#[derive(Debug, Serialize, Deserialize)]
pub enum ForwardOutcome {
    /// Committed and applied at this log index.
    Applied { index: u64, response: MetaResponse },
    /// This node does not lead; it believes `leader` does.
    NotLeader { leader: Option<NodeId> },
    /// The change could not be made (the group is shutting down, storage failed).
    Failed(String),
    /// The change was handed to a leader but not seen committed in time: it may still
    /// commit (this node lost its quorum, or the leader is slow), so it is not retried.
    Unsure(String),
}

/// How long a leader waits for a change to commit before answering that it does not know
/// the outcome: within the peer call timeout, so a forwarding node hears the answer. A
/// leader cut off from its quorum never commits, and must not hang its callers.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(4);
/// How long a new node may take to catch up with the metadata as a learner before it is
/// made a voter; within the peer call timeout, so the forwarding node hears the outcome.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(2);

/// Makes `request` on this node's openraft instance, which must lead the metadata group.
pub(crate) async fn write_locally(
    raft: &Raft<types::MetaTypes>,
    view: &MetaState,
    request: MetaRequest,
) -> ForwardOutcome {
    match request {
        MetaRequest::Command(command) => {
            match tokio::time::timeout(COMMIT_TIMEOUT, raft.client_write(command)).await {
                Err(_) => not_committed(),
                Ok(Ok(written)) => ForwardOutcome::Applied {
                    index: written.log_id.index,
                    response: written.data,
                },
                Ok(Err(error)) => failed_write(error),
            }
        }
        MetaRequest::AddNode { id, addr } => {
            let members = raft.metrics().borrow().membership_config.clone();
            if members.membership().voter_ids().any(|v| v == id) {
                return refused_change(
                    Refusal::Exists,
                    format!("node {id} is a member of the cluster already"),
                );
            }
            // A learner first, so that the node has the whole metadata before its vote
            // counts: a voter that lags would make the quorum wait for it.
            match tokio::time::timeout(CATCH_UP_TIMEOUT, raft.add_learner(id, addr.clone(), true))
                .await
            {
                Err(_) => {
                    return ForwardOutcome::Failed(format!(
                        "node {id} did not catch up within {} s: is it running, with peer address {}? It stays a non-voting learner until it is added again",
                        CATCH_UP_TIMEOUT.as_secs(),
                        addr.peer
                    ));
                }
                Ok(Err(error)) => return failed_write(error),
                Ok(Ok(_)) => {}
            }
            let change = openraft::ChangeMembers::AddVoterIds([id].into_iter().collect());
            match tokio::time::timeout(COMMIT_TIMEOUT, raft.change_membership(change, false)).await
            {
                Err(_) => not_committed(),
                Ok(written) => membership_outcome(written),
            }
        }
        MetaRequest::RemoveNode { id } => {
            let members = raft.metrics().borrow().membership_config.clone();
            let voters: Vec<NodeId> = members.membership().voter_ids().collect();
            if !members.membership().nodes().any(|(n, _)| *n == id) {
                return refused_change(
                    Refusal::NotFound,
                    format!("node {id} is not a member of the cluster"),
                );
            }
            if voters == [id] {
                return refused_change(
                    Refusal::Invalid,
                    "it is the cluster's last voting node".into(),
                );
            }
            // Its replicas move to the other nodes first (refused if a partition would be
            // left with one copy or none); each partition group's leader then adds the
            // new replica, which catches up from the log, and drops this node.
            if let Err(message) = placement::replace_node(&view.topics, &voters, id) {
                return refused_change(Refusal::Invalid, message);
            }
            let moved = tokio::time::timeout(
                COMMIT_TIMEOUT,
                raft.client_write(MetaCommand::ReplaceNode { node: id }),
            )
            .await;
            match moved {
                Err(_) => return not_committed(),
                Ok(Err(error)) => return failed_write(error),
                Ok(Ok(written)) => {
                    if let MetaResponse::Refused { refusal, message } = written.data {
                        return refused_change(refusal, message);
                    }
                }
            }
            let change = openraft::ChangeMembers::RemoveVoters([id].into_iter().collect());
            match tokio::time::timeout(COMMIT_TIMEOUT, raft.change_membership(change, false)).await
            {
                Err(_) => not_committed(),
                Ok(written) => membership_outcome(written),
            }
        }
    }
}

fn not_committed() -> ForwardOutcome {
    ForwardOutcome::Unsure(format!(
        "the metadata leader took the change but did not see it committed within {} s (it may have lost its quorum); it may still be applied: check before retrying",
        COMMIT_TIMEOUT.as_secs()
    ))
}

fn refused_change(refusal: Refusal, message: String) -> ForwardOutcome {
    ForwardOutcome::Applied {
        index: 0,
        response: MetaResponse::Refused { refusal, message },
    }
}

fn failed_write(error: RaftError<NodeId, ClientWriteError<NodeId, NodeAddr>>) -> ForwardOutcome {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(to)) => ForwardOutcome::NotLeader {
            leader: to.leader_id,
        },
        error => ForwardOutcome::Failed(error.to_string()),
    }
}

fn membership_outcome(
    written: std::result::Result<
        openraft::raft::ClientWriteResponse<types::MetaTypes>,
        RaftError<NodeId, ClientWriteError<NodeId, NodeAddr>>,
    >,
) -> ForwardOutcome {
    match written {
        Ok(written) => ForwardOutcome::Applied {
            index: written.log_id.index,
            response: MetaResponse::Members(
                written
                    .membership
                    .map(|m| m.nodes().map(|(id, addr)| (*id, addr.clone())).collect())
                    .unwrap_or_default(),
            ),
        },
        Err(error) => failed_write(error),
    }
}

/// One node's view of the cluster, for `cluster status`.
#[derive(Debug, Clone)]
pub struct ClusterStatus {
    pub node_id: NodeId,
    pub metadata_leader: Option<NodeId>,
    pub metadata_term: u64,
    pub applied_index: u64,
    /// Every member: id, addresses, time since last heard (none for itself).
    pub nodes: Vec<(NodeId, NodeAddr, Option<Duration>)>,
    pub topics: Vec<TopicRecord>,
}

/// A running cluster node: its metadata group and peer server.
pub struct Cluster {
    node_id: NodeId,
    members: BTreeMap<NodeId, NodeAddr>,
    raft: Raft<types::MetaTypes>,
    view: Arc<ArcSwap<MetaState>>,
    health: Arc<Health>,
    tls: Option<Arc<PeerTls>>,
    /// The address other nodes reach this one at (useful when bound to port 0).
    pub peer_addr: SocketAddr,
    stop: watch::Sender<bool>,
    server: std::sync::Mutex<Option<JoinHandle<()>>>,
    /// Connections to the other nodes for forwarded client requests.
    forwarder: Forwarder,
    /// This node's handling of requests forwarded to it, once the gRPC service exists.
    local: Arc<LocalService>,
    /// The partition groups this node holds a replica of, for the peer port.
    partitions: Arc<partition::PartitionRafts>,
    /// Peer connections shared by this node's partition groups.
    partition_channels: Arc<partition::network::PeerChannels>,
}

impl Cluster {
    /// Opens this node's metadata group from `<data_dir>/cluster`, serves the peer port
    /// and, on the lowest-numbered initial member of a cluster not yet initialised,
    /// initialises the group with every initial member as a voter. The other members wait
    /// for the leader's first message.
    pub async fn start(
        settings: &ClusterSettings,
        registry: Arc<Registry>,
    ) -> Result<Arc<Cluster>> {
        Cluster::start_with(settings, registry, None).await
    }

    /// What opens this node's replicated partitions, for the registry: made before the
    /// registry opens any topic, from the applied metadata on disk (placement). Blocking.
    pub fn replicas(
        settings: &ClusterSettings,
        data_dir: &std::path::Path,
    ) -> Result<Arc<partition::Replicas>> {
        let dir = data_dir.join(CLUSTER_DIR);
        let state = state_machine::read_state(&dir)
            .map_err(|e| BrokerError::io(format!("reading {}", dir.display()), e))?
            .unwrap_or_default();
        Ok(Arc::new(partition::Replicas::new(
            settings.node_id,
            Arc::new(ArcSwap::from_pointee(state)),
            tokio::runtime::Handle::current(),
        )))
    }

    /// [`start`](Self::start), serving the replicated partitions `replicas` opened (and
    /// opens from now on) with partition groups.
    pub async fn start_with(
        settings: &ClusterSettings,
        registry: Arc<Registry>,
        replicas: Option<Arc<partition::Replicas>>,
    ) -> Result<Arc<Cluster>> {
        let members = settings.members()?;
        let tls = PeerTls::from_settings(settings)?;
        let node_id = settings.node_id;
        let dir = registry.config().data_dir.join(CLUSTER_DIR);
        let view = replicas.as_ref().map_or_else(
            || Arc::new(ArcSwap::from_pointee(MetaState::default())),
            |r| r.view(),
        );
        let (log_dir, sm_view, sm_registry) = (dir.clone(), view.clone(), registry.clone());
        let (log_store, state_machine) = tokio::task::spawn_blocking(move || {
            let log_store = LogStore::open(&log_dir)?;
            let state_machine = StateMachine::open(&log_dir, sm_registry, sm_view)?;
            Ok::<_, std::io::Error>((log_store, state_machine))
        })
        .await
        .map_err(|cause| BrokerError::TaskFailed {
            what: "opening the cluster's metadata",
            cause,
        })?
        .map_err(|e| BrokerError::io(format!("opening {}", dir.display()), e))?;

        let config = openraft::Config {
            cluster_name: "herald".into(),
            heartbeat_interval: HEARTBEAT_INTERVAL_MS,
            election_timeout_min: ELECTION_TIMEOUT_MS.0,
            election_timeout_max: ELECTION_TIMEOUT_MS.1,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(1000),
            max_in_snapshot_log_to_keep: 100,
            snapshot_max_chunk_size: 1024 * 1024,
            ..openraft::Config::default()
        }
        .validate()
        .map_err(|e| invalid(e.to_string()))?;
        let health = Arc::new(Health::default());
        let network = Network {
            node_id,
            health: health.clone(),
            tls: tls.clone(),
        };
        let raft = Raft::new(node_id, Arc::new(config), network, log_store, state_machine)
            .await
            .map_err(|e| {
                BrokerError::io("starting the metadata group", std::io::Error::other(e))
            })?;

        let listener = tokio::net::TcpListener::bind(settings.peer_listen)
            .await
            .map_err(|e| BrokerError::io(format!("binding {}", settings.peer_listen), e))?;
        let peer_addr = listener
            .local_addr()
            .map_err(|e| BrokerError::io("reading the peer address", e))?;
        let (stop, mut stopped) = watch::channel(false);
        // Forwarded publishes carry a whole batch: the peer port takes the largest batch
        // the client port does.
        let message_max =
            PEER_MAX_MESSAGE_BYTES.max(registry.config().max_batch_bytes + FORWARD_OVERHEAD_BYTES);
        let local: Arc<LocalService> = Arc::default();
        let partitions: Arc<partition::PartitionRafts> = Arc::default();
        let service = PeerServer::new(PeerService {
            node_id,
            raft: raft.clone(),
            health: health.clone(),
            local: local.clone(),
            view: view.clone(),
            partitions: partitions.clone(),
        })
        .max_decoding_message_size(message_max)
        .max_encoding_message_size(message_max);
        let server_tls = tls.as_ref().map(|tls| tls.server.clone());
        let server = tokio::spawn(async move {
            let router = tonic::transport::Server::builder()
                .timeout(PEER_CALL_TIMEOUT)
                .initial_stream_window_size(Some(crate::server::HTTP2_STREAM_WINDOW))
                .initial_connection_window_size(Some(crate::server::HTTP2_CONNECTION_WINDOW))
                .max_frame_size(Some(crate::server::HTTP2_MAX_FRAME))
                .add_service(service);
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            let stopped = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            let served = match server_tls {
                Some(config) => {
                    let incoming = crate::server::tls::accept(incoming, config, None, "peer");
                    router.serve_with_incoming_shutdown(incoming, stopped).await
                }
                None => router.serve_with_incoming_shutdown(incoming, stopped).await,
            };
            if let Err(error) = served {
                tracing::error!(%error, "the peer server failed");
            }
        });

        let lowest = *members.keys().next().expect("members are never empty");
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| BrokerError::io("reading the metadata group", std::io::Error::other(e)))?;
        if node_id == lowest && !initialized {
            tracing::info!(members = ?members.keys().collect::<Vec<_>>(), "initialising the cluster's metadata group");
            if let Err(error) = raft.initialize(members.clone()).await {
                tracing::warn!(%error, "initialising the metadata group");
            }
        }
        tracing::info!(node_id, %peer_addr, peer_tls = tls.is_some(), "cluster node started");
        let partition_channels: Arc<partition::network::PeerChannels> = Arc::default();
        if let Some(replicas) = &replicas {
            replicas.start(partition::GroupContext {
                node_id,
                health: health.clone(),
                tls: tls.clone(),
                rafts: partitions.clone(),
                channels: partition_channels.clone(),
            });
        }
        Ok(Arc::new(Cluster {
            node_id,
            members,
            raft,
            view,
            health,
            forwarder: Forwarder::new(message_max, tls.clone()),
            tls,
            peer_addr,
            stop,
            server: std::sync::Mutex::new(Some(server)),
            local,
            partitions,
            partition_channels,
        }))
    }

    /// Registers this node's handling of requests other nodes forward to it. Until then
    /// (while the broker starts) forwarded requests get UNAVAILABLE.
    pub fn serve_forwarded(&self, service: Weak<dyn ForwardedRequests>) {
        let _ = self.local.set(service);
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// What a partition group on this node needs to reach its peers and be reached.
    pub fn partition_context(&self) -> partition::GroupContext {
        partition::GroupContext {
            node_id: self.node_id,
            health: self.health.clone(),
            tls: self.tls.clone(),
            rafts: self.partitions.clone(),
            channels: self.partition_channels.clone(),
        }
    }

    /// The applied metadata, read without a lock.
    pub fn metadata(&self) -> Arc<MetaState> {
        self.view.load_full()
    }

    /// The openraft instance (for tests and status).
    pub fn raft(&self) -> &Raft<types::MetaTypes> {
        &self.raft
    }

    /// The node's addresses as the membership holds them, else as the initial members
    /// gave them.
    fn address_of(&self, node: NodeId) -> Option<NodeAddr> {
        types::members(&self.view.load())
            .remove(&node)
            .or_else(|| self.members.get(&node).cloned())
    }

    /// Commits `command` through the metadata group, from any node: proposed here when
    /// this node leads, else forwarded to the leader, retried across elections until
    /// [`PROPOSE_TIMEOUT`]. Returns once this node has applied it too, so what the caller
    /// reads next on this node includes the change.
    pub async fn propose(&self, command: MetaCommand) -> Result<MetaResponse> {
        self.submit(MetaRequest::Command(command)).await
    }

    /// Makes `request` through the metadata group's leader, as [`propose`](Self::propose).
    async fn submit(&self, request: MetaRequest) -> Result<MetaResponse> {
        let deadline = Instant::now() + PROPOSE_TIMEOUT;
        let mut last_problem = "no metadata leader is known".to_owned();
        while Instant::now() < deadline {
            let view = self.view.load_full();
            let outcome = match write_locally(&self.raft, &view, request.clone()).await {
                ForwardOutcome::NotLeader {
                    leader: Some(leader),
                } if leader != self.node_id => self.forward(leader, &request).await,
                outcome => outcome,
            };
            match outcome {
                ForwardOutcome::Applied { index, response } => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let waited = self
                        .raft
                        .wait(Some(left.max(Duration::from_millis(1))))
                        .applied_index_at_least(Some(index), "the change to apply here")
                        .await;
                    if let Err(error) = waited {
                        tracing::warn!(%error, index, "a committed metadata change is not applied on this node yet");
                    }
                    return Ok(response);
                }
                ForwardOutcome::NotLeader { leader } => {
                    last_problem = match leader {
                        Some(l) => format!("node {l} was named leader but did not take the change"),
                        None => "no metadata leader is known (an election is under way, or too few nodes are reachable)".to_owned(),
                    };
                }
                ForwardOutcome::Failed(problem) => last_problem = problem,
                ForwardOutcome::Unsure(problem) => {
                    return Err(BrokerError::ClusterUnavailable(problem));
                }
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        Err(BrokerError::ClusterUnavailable(format!(
            "the cluster could not commit the change within {} s: {last_problem}",
            PROPOSE_TIMEOUT.as_secs()
        )))
    }

    /// Adds a started node to the cluster; returns the membership afterwards.
    pub async fn add_node(&self, id: NodeId, addr: NodeAddr) -> Result<BTreeMap<NodeId, NodeAddr>> {
        if id == 0 {
            return Err(BrokerError::InvalidRequest("node ids start at 1".into()));
        }
        for address in [&addr.client, &addr.peer] {
            address.parse::<SocketAddr>().map_err(|_| {
                BrokerError::InvalidRequest(format!("{address:?} is not host:port"))
            })?;
        }
        match self.submit(MetaRequest::AddNode { id, addr }).await? {
            MetaResponse::Members(members) => Ok(members),
            other => Err(node_refusal(id, other)),
        }
    }

    /// Removes a node from the cluster; returns the membership afterwards.
    pub async fn remove_node(&self, id: NodeId) -> Result<BTreeMap<NodeId, NodeAddr>> {
        match self.submit(MetaRequest::RemoveNode { id }).await? {
            MetaResponse::Members(members) => Ok(members),
            other => Err(node_refusal(id, other)),
        }
    }

    /// Cuts this node off from the others, both ways, or heals it: for fault-injection
    /// tests of what a network partition does (peer messages and forwarded requests fail
    /// as if the network dropped them; clients still reach the node).
    #[doc(hidden)]
    pub fn set_isolated(&self, isolated: bool) {
        self.health.set_isolated(isolated);
    }

    /// Sends `request` to `leader`'s peer port.
    async fn forward(&self, leader: NodeId, request: &MetaRequest) -> ForwardOutcome {
        if self.health.isolated() {
            return ForwardOutcome::Failed("this node is cut off (fault injection)".into());
        }
        let Some(node) = self.address_of(leader) else {
            return ForwardOutcome::Failed(format!("the address of leader {leader} is unknown"));
        };
        let payload = match bincode::serialize(request) {
            Ok(p) => p,
            Err(e) => return ForwardOutcome::Failed(e.to_string()),
        };
        let mut client = match self.forwarder.client(leader, &node) {
            Ok(c) => c,
            Err(e) => return ForwardOutcome::Failed(e.to_string()),
        };
        let request = RaftRequest {
            to: leader,
            from: self.node_id,
            group: Group::Metadata as i32,
            payload: Bytes::from(payload),
            ..Default::default()
        };
        match tokio::time::timeout(PEER_CALL_TIMEOUT, client.forward(request)).await {
            Err(_) => ForwardOutcome::Unsure(format!(
                "leader {leader} did not answer within {} s; the change may still be applied: check before retrying",
                PEER_CALL_TIMEOUT.as_secs()
            )),
            Ok(Err(status)) => ForwardOutcome::Failed(format!(
                "forwarding to leader {leader}: {}",
                status.message()
            )),
            Ok(Ok(reply)) => {
                self.health.heard(leader);
                bincode::deserialize(&reply.into_inner().payload)
                    .unwrap_or_else(|e| ForwardOutcome::Failed(e.to_string()))
            }
        }
    }

    /// Creates a topic cluster-wide; returns its placement.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u32,
        settings: &TopicSettings,
        registry: &Registry,
    ) -> Result<TopicRecord> {
        // Refuse what every node would refuse before it enters the log.
        validate_name("topic", name)?;
        if !(1..=crate::config::MAX_PARTITIONS_PER_TOPIC).contains(&partitions) {
            return Err(BrokerError::InvalidSettings(format!(
                "partitions must be within 1..={}, got {partitions}",
                crate::config::MAX_PARTITIONS_PER_TOPIC
            )));
        }
        settings
            .effective(registry.config())
            .validate(registry.config())?;
        let settings_toml = toml::to_string(settings)
            .map_err(|e| BrokerError::InvalidSettings(format!("topic settings: {e}")))?;
        let command = MetaCommand::CreateTopic {
            name: name.to_owned(),
            partitions,
            replication_factor,
            settings_toml,
        };
        match self.propose(command).await? {
            MetaResponse::Created(record) => Ok(record),
            other => Err(refusal_error(name, other)),
        }
    }

    /// Alters a topic cluster-wide (see `topic::TopicAlter`); returns its record after.
    pub async fn alter_topic(
        &self,
        name: &str,
        change: &crate::topic::TopicAlter,
        registry: &Registry,
    ) -> Result<TopicRecord> {
        // Refuse what every node would refuse before it enters the log.
        validate_name("topic", name)?;
        if let Some(partitions) = change.partitions
            && !(1..=crate::config::MAX_PARTITIONS_PER_TOPIC).contains(&partitions)
        {
            return Err(BrokerError::InvalidSettings(format!(
                "partitions must be within 1..={}, got {partitions}",
                crate::config::MAX_PARTITIONS_PER_TOPIC
            )));
        }
        let current = self.view.load().topics.get(name).cloned();
        if let Some(current) = current {
            let settings: TopicSettings =
                toml::from_str(&current.settings_toml).unwrap_or_default();
            change
                .apply(&settings)
                .effective(registry.config())
                .validate(registry.config())?;
        }
        let command = MetaCommand::AlterTopic {
            name: name.to_owned(),
            partitions: change.partitions,
            retention_ms: change.retention_ms,
            retention_bytes: change.retention_bytes,
            max_message_bytes: change.max_message_bytes.map(|v| v as u64),
        };
        match self.propose(command).await? {
            MetaResponse::Altered(record) => Ok(record),
            other => Err(refusal_error(name, other)),
        }
    }

    /// Deletes a topic cluster-wide.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        match self
            .propose(MetaCommand::DeleteTopic {
                name: name.to_owned(),
            })
            .await?
        {
            MetaResponse::Deleted => Ok(()),
            other => Err(refusal_error(name, other)),
        }
    }

    /// The other node that serves `partition` of `topic`, if not this one. Until
    /// partitions are replicated, only a partition's first replica holds its records.
    /// Lock-free.
    pub fn served_elsewhere(&self, topic: &str, partition: u32) -> Option<NodeId> {
        let view = self.view.load();
        let home = view.topics.get(topic)?.home(partition)?;
        (home != self.node_id).then_some(home)
    }

    /// Where a request for `partition` of `topic` is served: `None` here; otherwise the
    /// nodes to try, in order, each of which may take it. A replicated partition (a group
    /// of several nodes) takes publishes at its group's leader and serves reads on any
    /// replica (each reads its committed prefix); a node that holds no replica sends
    /// either to the replicas in turn. An unreplicated one is served by its only node.
    pub async fn serving_nodes(
        &self,
        topic: &str,
        partition: &crate::partition::Partition,
        write: bool,
    ) -> Result<Option<Vec<NodeId>>> {
        let Some(log) = partition.replicated_log() else {
            return self.read_nodes(topic, partition);
        };
        if !write {
            return Ok(None);
        }
        let leader = match log.leader() {
            Some(leader) => Some(leader),
            None => log.wait_for_leader().await,
        };
        match leader {
            Some(leader) if leader == self.node_id => Ok(None),
            Some(leader) => Ok(Some(vec![leader])),
            None => Err(BrokerError::ClusterUnavailable(format!(
                "topic {topic} partition {}: its group has had no leader for {:?} (an election is under way, or too few of its replicas are up); retry",
                partition.id,
                partition::serving::LEADER_WAIT
            ))),
        }
    }

    /// Where reads of `partition` of `topic` are served (see
    /// [`serving_nodes`](Self::serving_nodes)): any replica of a replicated partition.
    pub fn read_nodes(
        &self,
        topic: &str,
        partition: &crate::partition::Partition,
    ) -> Result<Option<Vec<NodeId>>> {
        if partition.replicated_log().is_some() {
            return Ok(None);
        }
        let view = self.view.load();
        let Some(record) = view.topics.get(topic) else {
            return Ok(None);
        };
        match record.replicas.get(partition.id as usize) {
            Some(replicas) if replicas.len() > 1 => {
                if replicas.contains(&self.node_id) {
                    // Its group has not opened here (the topic is being created): not here.
                    return Err(BrokerError::ClusterUnavailable(format!(
                        "topic {topic} partition {}: its replica on this node is opening; retry",
                        partition.id
                    )));
                }
                Ok(Some(replicas.clone()))
            }
            _ => Ok(self
                .served_elsewhere(topic, partition.id)
                .map(|home| vec![home])),
        }
    }

    /// Sends a client's publish to the first of `nodes` that takes it (see
    /// [`serving_nodes`](Self::serving_nodes)): a node that does not lead the partition
    /// refuses a forwarded publish (FAILED_PRECONDITION) and a down one is UNAVAILABLE, so
    /// the next is tried; the last refusal is the answer.
    pub async fn forward_publish_to_any(
        &self,
        nodes: &[NodeId],
        request: v1::PublishRequest,
    ) -> Result<v1::PublishResponse> {
        let mut last = None;
        for node in nodes {
            match self.forward_publish(*node, request.clone()).await {
                Err(error) if retry_elsewhere(&error) => last = Some(error),
                answered => return answered,
            }
        }
        Err(last.unwrap_or_else(|| {
            BrokerError::ClusterUnavailable("no node serves the partition".into())
        }))
    }

    /// Opens a client's Fetch on the first of `nodes` that serves it.
    pub async fn forward_fetch_to_any(
        &self,
        nodes: &[NodeId],
        request: v1::FetchRequest,
    ) -> Result<FetchStream> {
        let mut last = None;
        for node in nodes {
            match self.forward_fetch(*node, request.clone()).await {
                Err(error) if retry_elsewhere(&error) => last = Some(error),
                answered => return answered,
            }
        }
        Err(last.unwrap_or_else(|| {
            BrokerError::ClusterUnavailable("no node serves the partition".into())
        }))
    }

    /// The refusal of a forwarded request this node would send on to `nodes`: a replica
    /// that does not lead its group says so as UNAVAILABLE (leadership moves; the sender
    /// tries another replica, a client retries); otherwise the nodes disagree about
    /// placement, FAILED_PRECONDITION naming the node this one would use.
    pub fn refuse_forwarded(
        &self,
        topic: &str,
        partition: &crate::partition::Partition,
        nodes: &[NodeId],
    ) -> BrokerError {
        let first = nodes.first().copied().unwrap_or_default();
        if partition.replicated_log().is_some() {
            return BrokerError::ClusterUnavailable(format!(
                "node {} does not lead topic {topic} partition {} (its leader: node {first})",
                self.node_id, partition.id
            ));
        }
        self.not_served_here(topic, partition.id, first)
    }

    /// The refusal of a request for a partition `home` serves, naming where to send it.
    pub fn not_served_here(&self, topic: &str, partition: u32, home: NodeId) -> BrokerError {
        BrokerError::NotPartitionHome {
            topic: topic.to_owned(),
            partition,
            node: home,
            address: self
                .address_of(home)
                .map_or_else(|| "unknown address".to_owned(), |a| a.client),
            this: self.node_id,
        }
    }

    /// Whether this node serves reads of `partition` of `topic` (holds a replica of a
    /// replicated one, or is the home of an unreplicated one); if not, the refusal naming
    /// a node that does.
    pub fn check_partition(&self, topic: &str, partition: u32) -> Result<()> {
        let view = self.view.load();
        if let Some(replicas) = view
            .topics
            .get(topic)
            .and_then(|t| t.replicas.get(partition as usize))
            .filter(|r| r.len() > 1)
        {
            return match replicas.contains(&self.node_id) {
                true => Ok(()),
                false => Err(self.not_served_here(topic, partition, replicas[0])),
            };
        }
        match self.served_elsewhere(topic, partition) {
            Some(home) => Err(self.not_served_here(topic, partition, home)),
            None => Ok(()),
        }
    }

    /// Sends a client's publish to `node`, which serves its partition.
    pub async fn forward_publish(
        &self,
        node: NodeId,
        request: v1::PublishRequest,
    ) -> Result<v1::PublishResponse> {
        let addr = self.peer_address(node)?;
        self.check_reachable(node)?;
        self.forwarder
            .publish(self.node_id, self.applied_index(), node, &addr, request)
            .await
    }

    /// Opens a client's Fetch on `node`, which serves its partition.
    pub async fn forward_fetch(
        &self,
        node: NodeId,
        request: v1::FetchRequest,
    ) -> Result<FetchStream> {
        let addr = self.peer_address(node)?;
        self.forwarder
            .fetch(self.node_id, self.applied_index(), node, &addr, request)
            .await
    }

    /// Sends a member's Subscribe stream (its Join first) to `node`, which coordinates
    /// the group.
    pub async fn forward_subscribe(
        &self,
        node: NodeId,
        requests: forward::SubscribeRequests,
    ) -> Result<forward::SubscribeStream> {
        let addr = self.peer_address(node)?;
        self.check_reachable(node)?;
        self.forwarder
            .subscribe((self.node_id, self.applied_index()), node, &addr, requests)
            .await
    }

    /// Sends a group admin call to `node`, which coordinates the group.
    pub async fn forward_group_call(
        &self,
        node: NodeId,
        call: herald_proto::peer::forwarded_group_call::Call,
    ) -> Result<herald_proto::peer::group_call_reply::Reply> {
        let addr = self.peer_address(node)?;
        self.check_reachable(node)?;
        let call = herald_proto::peer::ForwardedGroupCall {
            to: node,
            from: self.node_id,
            metadata_applied: self.applied_index(),
            call: Some(call),
        };
        self.forwarder
            .group_call(node, &addr, call)
            .await?
            .reply
            .ok_or_else(|| {
                BrokerError::ClusterUnavailable(format!("node {node} sent an empty answer"))
            })
    }

    /// The highest metadata log index this node has applied.
    fn applied_index(&self) -> u64 {
        self.raft
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |l| l.index)
    }

    fn check_reachable(&self, node: NodeId) -> Result<()> {
        if self.health.isolated() {
            return Err(BrokerError::ClusterUnavailable(format!(
                "node {node}, which serves the partition, is unreachable: this node is cut off (fault injection)"
            )));
        }
        Ok(())
    }

    fn peer_address(&self, node: NodeId) -> Result<NodeAddr> {
        self.address_of(node).ok_or_else(|| {
            BrokerError::ClusterUnavailable(format!("the address of node {node} is unknown"))
        })
    }

    /// Whether this node serves every partition of `topic` (what a consumer group on this
    /// node needs until groups move through the cluster).
    pub fn check_topic(&self, topic: &str) -> Result<()> {
        let partitions = self
            .view
            .load()
            .topics
            .get(topic)
            .map_or(0, |t| t.partitions);
        (0..partitions).try_for_each(|p| self.check_partition(topic, p))
    }

    /// A node that holds every partition of `topic`, so can run its consumer groups: the
    /// lowest id among them.
    pub fn group_host(&self, topic: &str) -> Option<NodeId> {
        let view = self.view.load();
        let record = view.topics.get(topic)?;
        let mut nodes: Vec<NodeId> = record.replicas.first()?.clone();
        for replicas in &record.replicas[1..] {
            nodes.retain(|n| replicas.contains(n));
        }
        nodes.into_iter().min()
    }

    /// This node's view of the cluster.
    pub fn status(&self) -> ClusterStatus {
        let metrics = self.raft.metrics().borrow().clone();
        let view = self.view.load();
        let mut members = types::members(&view);
        if members.is_empty() {
            members = self.members.clone();
        }
        ClusterStatus {
            node_id: self.node_id,
            metadata_leader: metrics.current_leader,
            metadata_term: metrics.current_term,
            applied_index: metrics.last_applied.map_or(0, |l| l.index),
            nodes: members
                .into_iter()
                .map(|(id, addr)| {
                    let heard = (id != self.node_id)
                        .then(|| self.health.since(id))
                        .flatten();
                    (id, addr, heard)
                })
                .collect(),
            topics: view.topics.values().cloned().collect(),
        }
    }

    /// Reads the peer TLS files again (SIGHUP), when peer TLS is on.
    pub fn reload_tls(&self) -> Result<()> {
        self.tls.as_ref().map_or(Ok(()), |tls| tls.reload())
    }

    /// Stops the metadata group and the peer server.
    pub async fn shutdown(&self) {
        if let Err(error) = self.raft.shutdown().await {
            tracing::warn!(%error, "stopping the metadata group");
        }
        let _ = self.stop.send(true);
        let server = self.server.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(server) = server {
            let _ = server.await;
        }
    }
}

/// Whether a forwarded request's failure means "try another replica": the node is down
/// or cut off, or it does not lead (or hold) the partition.
pub(crate) fn retry_elsewhere(error: &BrokerError) -> bool {
    match error {
        BrokerError::ClusterUnavailable(_) => true,
        BrokerError::Forwarded { code, .. } => *code == tonic::Code::Unavailable as i32,
        _ => false,
    }
}

fn node_refusal(node: NodeId, response: MetaResponse) -> BrokerError {
    match response {
        MetaResponse::Refused {
            refusal: Refusal::Exists,
            ..
        } => BrokerError::NodeExists { node },
        MetaResponse::Refused {
            refusal: Refusal::NotFound,
            ..
        } => BrokerError::NodeNotFound { node },
        MetaResponse::Refused { message, .. } => BrokerError::NodeInUse {
            node,
            reason: message,
        },
        other => BrokerError::ClusterUnavailable(format!("unexpected answer {other:?}")),
    }
}

fn refusal_error(topic: &str, response: MetaResponse) -> BrokerError {
    match response {
        MetaResponse::Refused {
            refusal: Refusal::Exists,
            ..
        } => BrokerError::TopicExists {
            topic: topic.to_owned(),
        },
        MetaResponse::Refused {
            refusal: Refusal::NotFound,
            ..
        } => BrokerError::TopicNotFound {
            topic: topic.to_owned(),
        },
        MetaResponse::Refused { message, .. } => BrokerError::InvalidSettings(message),
        other => BrokerError::ClusterUnavailable(format!("unexpected answer {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_parse_and_refuse_what_is_wrong() {
        let members =
            parse_members("1=127.0.0.1:50051@127.0.0.1:7001, 2=127.0.0.1:50052@127.0.0.1:7002")
                .unwrap();
        assert_eq!(members.len(), 2);
        assert_eq!(members[&2].peer, "127.0.0.1:7002");
        for bad in [
            "",
            "1=127.0.0.1:1",
            "x=127.0.0.1:1@127.0.0.1:2",
            "0=127.0.0.1:1@127.0.0.1:2",
            "1=a@b",
            "1=127.0.0.1:1@127.0.0.1:2,1=127.0.0.1:3@127.0.0.1:4",
        ] {
            assert!(parse_members(bad).is_err(), "{bad:?} was accepted");
        }
        let settings = ClusterSettings::new(
            3,
            "127.0.0.1:0".parse().unwrap(),
            "1=127.0.0.1:1@127.0.0.1:2".into(),
        );
        assert!(settings.members().is_err());
    }

    #[test]
    fn members_may_be_host_names_and_bracketed_ipv6() {
        let members = parse_members(
            "1=herald-1.internal:50051@herald-1.internal:7001,2=[::1]:50052@10.0.0.2:7002",
        )
        .unwrap();
        assert_eq!(members[&1].peer, "herald-1.internal:7001");
        assert_eq!(
            network::host_and_port(&members[&2].client),
            Some(("::1", 50052))
        );
        for bad in [
            "1=host:1@-bad-:2",
            "1=host:1@::1:2",
            "1=host:1@host:99999",
            "1=host:1@:2",
            "1=host:1@a..b:2",
            "1=host:1@host name:2",
        ] {
            assert!(parse_members(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn peer_tls_files_come_together_and_plaintext_peers_stay_on_loopback() {
        let mut settings = ClusterSettings::new(
            1,
            "10.0.0.1:7001".parse().unwrap(),
            "1=10.0.0.1:50051@10.0.0.1:7001".into(),
        );
        let error = settings.check_transport(false).unwrap_err().to_string();
        assert!(error.contains("not a loopback address"), "{error}");
        settings.check_transport(true).unwrap();
        settings.peer_tls_cert_file = Some("node.pem".into());
        settings.peer_tls_key_file = Some("node.key".into());
        let error = settings.check_transport(true).unwrap_err().to_string();
        assert!(error.contains("go together"), "{error}");
        settings.peer_tls_ca_file = Some("ca.pem".into());
        settings.check_transport(false).unwrap();
        // And the file's [cluster] table takes them.
        let config: crate::config::Config = toml::from_str(
            "[cluster]\nnode_id = 1\npeer_listen = \"10.0.0.1:7001\"\ninitial_members = \"1=10.0.0.1:50051@10.0.0.1:7001\"\npeer_tls_cert_file = \"node.pem\"\npeer_tls_key_file = \"node.key\"\npeer_tls_ca_file = \"ca.pem\"\n",
        )
        .unwrap();
        assert_eq!(config.cluster, Some(settings));
    }

    #[test]
    fn the_configuration_file_takes_a_cluster_table() {
        let config: crate::config::Config = toml::from_str(
            "listen = \"127.0.0.1:50052\"\n[cluster]\nnode_id = 2\npeer_listen = \"127.0.0.1:7002\"\ninitial_members = \"1=127.0.0.1:50051@127.0.0.1:7001,2=127.0.0.1:50052@127.0.0.1:7002\"\n",
        )
        .unwrap();
        let cluster = config.cluster.clone().expect("cluster settings");
        assert_eq!(cluster.node_id, 2);
        assert_eq!(cluster.members().unwrap().len(), 2);
        // And it writes back as it was read.
        let again: crate::config::Config =
            toml::from_str(&toml::to_string(&config).unwrap()).unwrap();
        assert_eq!(again, config);
        assert!(crate::config::Config::default().cluster.is_none());
    }
}
