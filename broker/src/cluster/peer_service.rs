//! The server side of the peer transport: the `herald.peer.v1.Peer` service, which hands
//! each decoded message to this node's openraft instance and forwards metadata writes to
//! it when this node leads.

use std::sync::Arc;

use bytes::Bytes;
use herald_proto::peer::peer_server::Peer;
use herald_proto::peer::{Group, RaftReply, RaftRequest};
use openraft::Raft;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status};

use super::network::Health;
use super::types::{MetaCommand, MetaTypes, NodeId};
use super::{ForwardOutcome, write_locally};

/// This node's `Peer` service.
pub struct PeerService {
    pub node_id: NodeId,
    pub raft: Raft<MetaTypes>,
    pub health: Arc<Health>,
}

impl PeerService {
    /// Checks the envelope and decodes its payload.
    fn open<T: DeserializeOwned>(&self, request: Request<RaftRequest>) -> Result<T, Status> {
        let request = request.into_inner();
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
        bincode::deserialize(&request.payload)
            .map_err(|e| Status::invalid_argument(format!("undecodable peer message: {e}")))
    }
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
        let rpc = self.open(request)?;
        reply(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let rpc = self.open(request)?;
        reply(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let rpc = self.open(request)?;
        reply(&self.raft.install_snapshot(rpc).await)
    }

    async fn forward(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let command: MetaCommand = self.open(request)?;
        let outcome: ForwardOutcome = write_locally(&self.raft, command).await;
        reply(&outcome)
    }
}
