//! The client side of the peer transport: openraft's `RaftNetwork` over the
//! `herald.peer.v1.Peer` gRPC service. Every call is bounded (a connect timeout, and the
//! smaller of openraft's deadline for the call and [`PEER_CALL_TIMEOUT`]) and every message
//! by [`PEER_MAX_MESSAGE_BYTES`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use herald_proto::peer::peer_client::PeerClient;
use herald_proto::peer::{Group, RaftReply, RaftRequest};
use openraft::RPCTypes;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, Endpoint};

use super::peer_tls::PeerTls;
use super::types::{MetaTypes, NodeAddr, NodeId};

/// Largest peer message either way: a snapshot chunk (`snapshot_max_chunk_size`) or a
/// batch of entries (`max_payload_entries`) with room to spare.
pub const PEER_MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;
/// How long a peer may take to accept a connection.
pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// The longest any one peer call may take.
pub const PEER_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// When this node last exchanged a message with each other node, for `cluster status`.
#[derive(Debug, Default)]
pub struct Health {
    last_heard: DashMap<NodeId, Instant>,
    /// Set by fault-injection tests: the node neither sends nor takes peer messages, as
    /// if a network partition cut it off.
    isolated: std::sync::atomic::AtomicBool,
}

impl Health {
    pub fn isolated(&self) -> bool {
        self.isolated.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_isolated(&self, isolated: bool) {
        self.isolated
            .store(isolated, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn heard(&self, node: NodeId) {
        self.last_heard.insert(node, Instant::now());
    }

    pub fn since(&self, node: NodeId) -> Option<Duration> {
        self.last_heard.get(&node).map(|at| at.elapsed())
    }
}

/// The host (an IP address, IPv6 in brackets, or a DNS name) and port of `addr`, given
/// as `host:port`; the host is returned without brackets.
pub fn host_and_port(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let port = port.parse().ok()?;
    if let Some(v6) = host.strip_prefix('[') {
        let v6 = v6.strip_suffix(']')?;
        return v6.parse::<std::net::Ipv6Addr>().ok().map(|_| (v6, port));
    }
    let dns_name = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    (dns_name || host.parse::<std::net::Ipv4Addr>().is_ok()).then_some((host, port))
}

/// A lazily connected gRPC client of a peer's `Peer` service, over mutual TLS when `tls`
/// is given.
/// HTTP/2 pings on peer connections, and how long an answer may take.
const PEER_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const PEER_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

pub fn peer_client(addr: &str, tls: Option<&PeerTls>) -> Result<PeerClient<Channel>, String> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("peer address {addr:?}: {e}"))?
        .connect_timeout(PEER_CONNECT_TIMEOUT)
        .timeout(PEER_CALL_TIMEOUT)
        .tcp_nodelay(true)
        // A node that stops answering without closing its connections (paused, or cut
        // off by the network) ends the calls open to it within seconds: a Subscribe
        // stream sent on to a group's coordinator then ends, and its member joins again
        // wherever the group is.
        .http2_keep_alive_interval(PEER_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(PEER_KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        // The client port's windows: a forwarded batch or fetch response of a few MiB
        // flows without waiting for window updates at HTTP/2's 64 KiB default.
        .initial_stream_window_size(crate::server::HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(crate::server::HTTP2_CONNECTION_WINDOW);
    let channel = match tls {
        Some(tls) => {
            endpoint.connect_with_connector_lazy(tls.connector(addr).map_err(|e| e.to_string())?)
        }
        None => endpoint.connect_lazy(),
    };
    Ok(PeerClient::new(channel)
        .max_decoding_message_size(PEER_MAX_MESSAGE_BYTES)
        .max_encoding_message_size(PEER_MAX_MESSAGE_BYTES))
}

/// Makes a [`Peer`] per target node for openraft.
pub struct Network {
    pub node_id: NodeId,
    pub health: Arc<Health>,
    /// Mutual TLS to the other nodes, when configured.
    pub tls: Option<Arc<PeerTls>>,
}

impl RaftNetworkFactory<MetaTypes> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> Peer {
        Peer::new(
            self.node_id,
            target,
            node,
            self.tls.as_deref(),
            self.health.clone(),
            Route::Metadata,
        )
    }
}

/// The consensus group a peer's messages are for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Metadata,
    /// The group of one partition (see `partition`).
    Partition {
        topic: String,
        partition: u32,
    },
}

/// openraft's connection to one node, for one group.
pub struct Peer {
    from: NodeId,
    to: NodeId,
    /// An address that does not parse is reported on every call, as the node being
    /// unreachable.
    client: Result<PeerClient<Channel>, String>,
    health: Arc<Health>,
    route: Route,
}

/// The peer RPC a [`Peer`] call is.
#[derive(Debug, Clone, Copy)]
enum Method {
    Raft(RPCTypes),
    TakeLeadership,
}

/// Why a peer call failed before the peer answered.
pub(crate) enum CallError {
    Unreachable(String),
    Timeout(Duration),
    Codec(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(why) => write!(f, "unreachable: {why}"),
            CallError::Timeout(after) => write!(f, "no answer within {after:?}"),
            CallError::Codec(why) => write!(f, "undecodable: {why}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Message(String);

impl Peer {
    pub(crate) fn new(
        from: NodeId,
        to: NodeId,
        node: &NodeAddr,
        tls: Option<&PeerTls>,
        health: Arc<Health>,
        route: Route,
    ) -> Peer {
        Peer::with_client(from, to, peer_client(&node.peer, tls), health, route)
    }

    /// A connection over `client`, which may be shared (a tonic channel multiplexes).
    pub(crate) fn with_client(
        from: NodeId,
        to: NodeId,
        client: Result<PeerClient<Channel>, String>,
        health: Arc<Health>,
        route: Route,
    ) -> Peer {
        Peer {
            from,
            to,
            client,
            health,
            route,
        }
    }

    /// The node this connection reaches.
    pub(crate) fn target(&self) -> NodeId {
        self.to
    }

    pub(crate) async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &mut self,
        rpc: RPCTypes,
        request: &Req,
        deadline: Duration,
    ) -> Result<Resp, CallError> {
        self.send(Method::Raft(rpc), request, deadline).await
    }

    /// Asks the node to stand for election in this connection's partition group (see
    /// `TakeLeadership` in the peer protocol): `last` is this leader's last log id, which
    /// the node must hold. The inner result is the node's refusal, if it refused.
    pub(crate) async fn take_leadership(
        &mut self,
        last: &Option<openraft::LogId<NodeId>>,
        deadline: Duration,
    ) -> Result<Result<(), String>, CallError> {
        self.send(Method::TakeLeadership, last, deadline).await
    }

    async fn send<Req: Serialize, Resp: DeserializeOwned>(
        &mut self,
        method: Method,
        request: &Req,
        deadline: Duration,
    ) -> Result<Resp, CallError> {
        if self.health.isolated() {
            return Err(CallError::Unreachable(
                "this node is cut off (fault injection)".into(),
            ));
        }
        let client = self
            .client
            .as_mut()
            .map_err(|e| CallError::Unreachable(e.clone()))?;
        let payload = bincode::serialize(request).map_err(|e| CallError::Codec(e.to_string()))?;
        let (group, topic, partition) = match &self.route {
            Route::Metadata => (Group::Metadata, String::new(), 0),
            Route::Partition { topic, partition } => (Group::Partition, topic.clone(), *partition),
        };
        let message = RaftRequest {
            to: self.to,
            from: self.from,
            group: group as i32,
            payload: Bytes::from(payload),
            topic,
            partition,
        };
        let deadline = deadline.min(PEER_CALL_TIMEOUT);
        let call = async {
            match method {
                Method::Raft(RPCTypes::AppendEntries) => client.append_entries(message).await,
                Method::Raft(RPCTypes::Vote) => client.vote(message).await,
                Method::Raft(RPCTypes::InstallSnapshot) => client.install_snapshot(message).await,
                Method::TakeLeadership => client.take_leadership(message).await,
            }
        };
        let reply: RaftReply = match tokio::time::timeout(deadline, call).await {
            Err(_) => return Err(CallError::Timeout(deadline)),
            Ok(Err(status)) => return Err(CallError::Unreachable(status.to_string())),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        self.health.heard(self.to);
        bincode::deserialize(&reply.payload).map_err(|e| CallError::Codec(e.to_string()))
    }

    pub(crate) fn rpc_error<E: std::error::Error>(
        &self,
        rpc: RPCTypes,
        error: CallError,
    ) -> RPCError<NodeId, NodeAddr, RaftError<NodeId, E>> {
        match error {
            CallError::Unreachable(m) => RPCError::Unreachable(Unreachable::new(&Message(m))),
            CallError::Timeout(timeout) => RPCError::Timeout(Timeout {
                action: rpc,
                id: self.from,
                target: self.to,
                timeout,
            }),
            CallError::Codec(m) => RPCError::Network(NetworkError::new(&Message(m))),
        }
    }
}

pub(crate) type PeerResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, NodeAddr, RaftError<NodeId, E>>>;

impl RaftNetwork<MetaTypes> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<MetaTypes>,
        option: RPCOption,
    ) -> PeerResult<AppendEntriesResponse<NodeId>> {
        let kind = RPCTypes::AppendEntries;
        let answer: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> = self
            .call(kind, &rpc, option.hard_ttl())
            .await
            .map_err(|e| self.rpc_error(kind, e))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.to, e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<MetaTypes>,
        option: RPCOption,
    ) -> PeerResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let kind = RPCTypes::InstallSnapshot;
        let answer: Result<
            InstallSnapshotResponse<NodeId>,
            RaftError<NodeId, InstallSnapshotError>,
        > = self
            .call(kind, &rpc, option.hard_ttl())
            .await
            .map_err(|e| self.rpc_error(kind, e))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.to, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> PeerResult<VoteResponse<NodeId>> {
        let kind = RPCTypes::Vote;
        let answer: Result<VoteResponse<NodeId>, RaftError<NodeId>> = self
            .call(kind, &rpc, option.hard_ttl())
            .await
            .map_err(|e| self.rpc_error(kind, e))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.to, e)))
    }
}
