//! A partition group's transport: the metadata group's peer connections
//! ([`crate::cluster::network::Peer`]), with each message addressed to the partition's
//! group (`GROUP_PARTITION`, topic and partition) so that the receiving node hands it to
//! that partition's Raft. Calls are bounded as the metadata group's are.

use std::sync::Arc;

use openraft::RPCTypes;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use super::types::PartTypes;
use crate::cluster::network::{Health, Peer, PeerResult, Route};
use crate::cluster::peer_tls::PeerTls;
use crate::cluster::types::{NodeAddr, NodeId};

/// Makes a [`Peer`] per target node for one partition group.
pub struct PartNetwork {
    pub node_id: NodeId,
    pub topic: String,
    pub partition: u32,
    pub health: Arc<Health>,
    pub tls: Option<Arc<PeerTls>>,
}

impl RaftNetworkFactory<PartTypes> for PartNetwork {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> Peer {
        Peer::new(
            self.node_id,
            target,
            node,
            self.tls.as_deref(),
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
