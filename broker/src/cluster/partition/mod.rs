//! Partition groups (cluster stage 2): one openraft group per replicated partition, over
//! that partition's replicas, whose Raft log is the partition's segment log. See
//! ARCHITECTURE.md, "Cluster".
//!
//! - [`types`] — openraft's type configuration: an entry is a storage batch.
//! - [`journal`] — the entry journal: Raft index → offsets, fixed-size CRC'd records.
//! - [`replica_log`] — the segment log, journal, vote and membership as one Raft log.
//! - [`replica`] — the one thread that owns a replica's log, serving a bounded channel.
//! - [`store`] — openraft's log storage and state machine over that thread.
//! - [`network`] — the peer transport, addressed to the partition's group.
//! - [`group`] — a replica's Raft on this node, started, proposed to, stopped.
//! - [`serving`] — replicated partitions as the registry's partitions: opened, started.

pub mod group;
pub mod journal;
pub mod network;
pub mod replica;
pub mod replica_log;
pub mod serving;
pub mod store;
pub mod types;

#[cfg(test)]
mod group_tests;
#[cfg(test)]
mod replica_log_tests;

use std::sync::Arc;

use dashmap::DashMap;
use openraft::Raft;

use super::network::Health;
use super::peer_tls::PeerTls;
use super::types::NodeId;
pub use group::{AppendError, PartitionGroup};
pub use serving::Replicas;
use types::PartTypes;

/// The partition groups a node holds a replica of, by topic and partition: where its peer
/// port sends their messages.
pub type PartitionRafts = DashMap<(String, u32), Raft<PartTypes>>;

/// What a partition group needs from its node.
#[derive(Clone)]
pub struct GroupContext {
    pub node_id: NodeId,
    pub health: Arc<Health>,
    pub tls: Option<Arc<PeerTls>>,
    pub rafts: Arc<PartitionRafts>,
    /// The node's connections to its peers, shared by its partition groups.
    pub channels: Arc<network::PeerChannels>,
}
