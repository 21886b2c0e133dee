//! The server side of the peer transport: the `herald.peer.v1.Peer` service, which hands
//! each decoded message to this node's openraft instance and forwards metadata writes to
//! it when this node leads.

use std::sync::Arc;

use bytes::Bytes;
use herald_proto::peer::peer_server::Peer;
use herald_proto::peer::{
    ForwardedFetch, ForwardedGroupCall, ForwardedPublish, Group, GroupCallReply, RaftReply,
    RaftRequest,
};
use herald_proto::v1;
use openraft::Raft;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status};

use super::forward::{
    FetchStream, ForwardedRequests, LocalService, PEER_APPLIED, PEER_FROM, PEER_TO, SubscribeStream,
};
use super::network::Health;
use super::partition::PartitionRafts;
use super::partition::types::PartTypes;
use super::types::{MetaRequest, MetaState, MetaTypes, NodeId};
use super::{ForwardOutcome, write_locally};

/// How long a forwarded request waits for this node to apply the metadata its sender had.
const METADATA_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(2);

/// This node's `Peer` service.
pub struct PeerService {
    pub node_id: NodeId,
    pub raft: Raft<MetaTypes>,
    pub health: Arc<Health>,
    /// The broker's own handling of forwarded client requests.
    pub local: Arc<LocalService>,
    /// The applied metadata (what a removal is checked against).
    pub view: Arc<arc_swap::ArcSwap<MetaState>>,
    /// The partition groups this node holds a replica of.
    pub partitions: Arc<PartitionRafts>,
}

/// The Raft a request is for.
enum Target {
    Metadata,
    Partition(Raft<PartTypes>),
}

impl PeerService {
    /// Checks the envelope of a Raft message for either kind of group, finds its Raft and
    /// returns it with the payload.
    fn route(&self, request: Request<RaftRequest>) -> Result<(Target, Bytes), Status> {
        self.check_reachable()?;
        let request = request.into_inner();
        if request.group != Group::Partition as i32 {
            return self
                .open_metadata(request)
                .map(|r| (Target::Metadata, r.payload));
        }
        if request.to != self.node_id {
            return Err(Status::failed_precondition(format!(
                "this is node {}, not node {}: the sender's address for node {} is stale",
                self.node_id, request.to, request.to
            )));
        }
        let raft = self
            .partitions
            .get(&(request.topic.clone(), request.partition))
            .map(|r| r.value().clone())
            .ok_or_else(|| {
                Status::not_found(format!(
                    "node {} holds no replica group of topic {:?} partition {}",
                    self.node_id, request.topic, request.partition
                ))
            })?;
        self.health.heard(request.from);
        Ok((Target::Partition(raft), request.payload))
    }

    /// Checks the envelope and decodes its payload.
    fn open<T: DeserializeOwned>(&self, request: Request<RaftRequest>) -> Result<T, Status> {
        self.check_reachable()?;
        let request = self.open_metadata(request.into_inner())?;
        decode(&request.payload)
    }

    /// Checks the envelope of a metadata group message.
    fn open_metadata(&self, request: RaftRequest) -> Result<RaftRequest, Status> {
        if request.to != self.node_id {
            return Err(Status::failed_precondition(format!(
                "this is node {}, not node {}: the sender's address for node {} is stale",
                self.node_id, request.to, request.to
            )));
        }
        if request.group != Group::Metadata as i32 {
            return Err(Status::invalid_argument(format!(
                "unknown consensus group {}",
                request.group
            )));
        }
        self.health.heard(request.from);
        Ok(request)
    }
}

fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, Status> {
    bincode::deserialize(payload)
        .map_err(|e| Status::invalid_argument(format!("undecodable peer message: {e}")))
}

impl PeerService {
    /// Refuses everything while a fault-injection test has cut this node off.
    fn check_reachable(&self) -> Result<(), Status> {
        if self.health.isolated() {
            return Err(Status::unavailable(
                "this node is cut off (fault injection)",
            ));
        }
        Ok(())
    }

    /// Waits (a bounded time) until this node has applied the metadata the sender had, so
    /// that a topic just created through the sender is known here. If it takes longer,
    /// the request is served with what this node knows (and may get NOT_FOUND).
    async fn catch_up(&self, index: u64) {
        if index == 0 {
            return;
        }
        let _ = self
            .raft
            .wait(Some(METADATA_CATCH_UP))
            .applied_index_at_least(Some(index), "the sender's metadata")
            .await;
    }

    /// Checks a forwarded request's envelope and finds the broker service to run it.
    fn forwarded(&self, to: NodeId, from: NodeId) -> Result<Arc<dyn ForwardedRequests>, Status> {
        self.check_reachable()?;
        if to != self.node_id {
            return Err(Status::failed_precondition(format!(
                "this is node {}, not node {to}: the sender's address for node {to} is stale",
                self.node_id
            )));
        }
        self.health.heard(from);
        self.local
            .get()
            .and_then(std::sync::Weak::upgrade)
            .ok_or_else(|| {
                Status::unavailable(format!(
                    "node {} is starting or stopping and serves no requests",
                    self.node_id
                ))
            })
    }
}

/// A partition group's leader `from` asks this replica to stand for election, having
/// stopped taking publishes once this replica held its last log id `last`. Refused
/// unless this replica is a voter, follows `from` (a request from a deposed leader, or
/// one delayed past another election, is stale) and holds `last`: a candidate without it
/// would lose, and its higher term would still unseat the leader.
async fn stand_for_election(
    me: NodeId,
    from: NodeId,
    raft: Raft<PartTypes>,
    last: Option<openraft::LogId<NodeId>>,
) -> Result<(), String> {
    let metrics = raft.metrics().borrow().clone();
    if metrics.current_leader != Some(from) {
        return Err(format!(
            "node {me} follows {:?}, not node {from}",
            metrics.current_leader
        ));
    }
    if !metrics
        .membership_config
        .membership()
        .voter_ids()
        .any(|v| v == me)
    {
        return Err(format!("node {me} is not a voter"));
    }
    // The leader saw this replica's answer that it holds `last`; its metrics follow
    // within a moment. The leader's log matches this one up to an entry both hold, so the
    // index says it.
    let held = raft
        .wait(Some(std::time::Duration::from_millis(500)))
        .log_index_at_least(last.map(|l| l.index), "the leader's last entry")
        .await;
    if held.is_err() {
        return Err(format!(
            "node {me} holds up to index {:?}, not {last:?}",
            raft.metrics().borrow().last_log_index
        ));
    }
    raft.trigger().elect().await.map_err(|e| e.to_string())
}

fn reply<T: Serialize>(value: &T) -> Result<Response<RaftReply>, Status> {
    let payload = bincode::serialize(value)
        .map_err(|e| Status::internal(format!("cannot encode the reply: {e}")))?;
    Ok(Response::new(RaftReply {
        payload: Bytes::from(payload),
    }))
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        match self.route(request)? {
            (Target::Metadata, payload) => {
                reply(&self.raft.append_entries(decode(&payload)?).await)
            }
            (Target::Partition(raft), payload) => {
                reply(&raft.append_entries(decode(&payload)?).await)
            }
        }
    }

    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        match self.route(request)? {
            (Target::Metadata, payload) => reply(&self.raft.vote(decode(&payload)?).await),
            (Target::Partition(raft), payload) => reply(&raft.vote(decode(&payload)?).await),
        }
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        match self.route(request)? {
            (Target::Metadata, payload) => {
                reply(&self.raft.install_snapshot(decode(&payload)?).await)
            }
            (Target::Partition(raft), payload) => {
                reply(&raft.install_snapshot(decode(&payload)?).await)
            }
        }
    }

    async fn take_leadership(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let from = request.get_ref().from;
        let raft = match self.route(request)? {
            (Target::Partition(raft), payload) => {
                let last: Option<openraft::LogId<NodeId>> = decode(&payload)?;
                (raft, last)
            }
            (Target::Metadata, _) => {
                return Err(Status::invalid_argument(
                    "only a partition group's leadership is handed over",
                ));
            }
        };
        reply(&stand_for_election(self.node_id, from, raft.0, raft.1).await)
    }

    async fn forward(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let request: MetaRequest = self.open(request)?;
        let view = self.view.load_full();
        let outcome: ForwardOutcome = write_locally(&self.raft, &view, request).await;
        reply(&outcome)
    }

    async fn publish(
        &self,
        request: Request<ForwardedPublish>,
    ) -> Result<Response<v1::PublishResponse>, Status> {
        let forwarded = request.into_inner();
        let service = self.forwarded(forwarded.to, forwarded.from)?;
        self.catch_up(forwarded.metadata_applied).await;
        let publish = forwarded
            .request
            .ok_or_else(|| Status::invalid_argument("the forwarded publish carries no request"))?;
        service.publish(publish).await.map(Response::new)
    }

    type FetchStream = FetchStream;

    async fn fetch(
        &self,
        request: Request<ForwardedFetch>,
    ) -> Result<Response<Self::FetchStream>, Status> {
        let forwarded = request.into_inner();
        let service = self.forwarded(forwarded.to, forwarded.from)?;
        self.catch_up(forwarded.metadata_applied).await;
        let fetch = forwarded
            .request
            .ok_or_else(|| Status::invalid_argument("the forwarded fetch carries no request"))?;
        service.fetch(fetch).await.map(Response::new)
    }

    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        request: Request<tonic::Streaming<v1::SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let header = |name: &str| {
            request
                .metadata()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| {
                    Status::invalid_argument(format!("a forwarded Subscribe needs {name}"))
                })
        };
        let (to, from, applied) = (header(PEER_TO)?, header(PEER_FROM)?, header(PEER_APPLIED)?);
        let service = self.forwarded(to, from)?;
        self.catch_up(applied).await;
        service
            .subscribe(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn group_call(
        &self,
        request: Request<ForwardedGroupCall>,
    ) -> Result<Response<GroupCallReply>, Status> {
        let forwarded = request.into_inner();
        let service = self.forwarded(forwarded.to, forwarded.from)?;
        self.catch_up(forwarded.metadata_applied).await;
        service.group_call(forwarded).await.map(Response::new)
    }
}
