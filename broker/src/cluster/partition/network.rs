//! A partition group's transport: the metadata group's peer connections
//! ([`crate::cluster::network::Peer`]), with each message addressed to the partition's
//! group (`GROUP_PARTITION`, topic and partition) so that the receiving node hands it to
//! that partition's Raft. Calls are bounded as the metadata group's are.

use std::sync::Arc;

use dashmap::DashMap;
use herald_proto::peer::peer_client::PeerClient;
use openraft::RPCTypes;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use super::types::PartTypes;
use tonic::transport::Channel;

use crate::cluster::network::{Health, Peer, PeerResult, Route, peer_client};
use crate::cluster::peer_tls::PeerTls;
use crate::cluster::types::{NodeAddr, NodeId};

/// Peer connections shared by every partition group of a node: one HTTP/2 connection
/// per peer address carries all their messages (a tonic channel multiplexes), instead of
/// one per group.
pub type PeerChannels = DashMap<String, PeerClient<Channel>>;

/// Makes a [`Peer`] per target node for one partition group.
#[derive(Clone)]
pub struct PartNetwork {
    pub node_id: NodeId,
    pub topic: String,
    pub partition: u32,
    pub health: Arc<Health>,
    pub tls: Option<Arc<PeerTls>>,
    pub channels: Arc<PeerChannels>,
}

impl RaftNetworkFactory<PartTypes> for PartNetwork {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> Peer {
        self.peer(target, node)
    }
}

impl PartNetwork {
    /// A connection to `target` for this group's messages, over the node's shared channel
    /// to its address.
    pub fn peer(&self, target: NodeId, node: &NodeAddr) -> Peer {
        let client = match self.channels.get(&node.peer) {
            Some(client) => Ok(client.clone()),
            None => peer_client(&node.peer, self.tls.as_deref()).inspect(|client| {
                self.channels.insert(node.peer.clone(), client.clone());
            }),
        };
        Peer::with_client(
            self.node_id,
            target,
            client,
            self.health.clone(),
            Route::Partition {
                topic: self.topic.clone(),
                partition: self.partition,
            },
        )
    }
}

impl RaftNetwork<PartTypes> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<PartTypes>,
        option: RPCOption,
    ) -> PeerResult<AppendEntriesResponse<NodeId>> {
        let kind = RPCTypes::AppendEntries;
        let answer: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> = self
            .call(kind, &rpc, option.hard_ttl())
            .await
            .map_err(|e| self.rpc_error(kind, e))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target(), e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<PartTypes>,
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
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target(), e)))
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
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target(), e)))
    }
}
