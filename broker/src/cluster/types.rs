//! The metadata group's types: openraft's type configuration, a node's addresses, the
//! commands the group's log carries and the state they build.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

/// A node's id in the cluster (openraft's `NodeId`).
pub type NodeId = u64;

/// What the cluster knows of a node: where clients and other nodes reach it. Carried in
/// openraft's membership, so every node learns every node's addresses from the log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddr {
    /// The node's gRPC `listen` address, for clients.
    pub client: String,
    /// The node's `peer_listen` address, for other nodes.
    pub peer: String,
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.client, self.peer)
    }
}

openraft::declare_raft_types!(
    /// The metadata group's openraft types.
    pub MetaTypes:
        D = MetaCommand,
        R = MetaResponse,
        NodeId = NodeId,
        Node = NodeAddr,
        Entry = openraft::Entry<MetaTypes>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A change to the cluster's metadata: one entry of the metadata group's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// Create a topic. `replication_factor` 0 means the default, min(3, nodes).
    /// `settings_toml` is the topic's `TopicSettings` as TOML (its serde form skips unset
    /// fields, which a compact binary encoding cannot carry).
    CreateTopic {
        name: String,
        partitions: u32,
        replication_factor: u32,
        settings_toml: String,
    },
    /// Delete a topic.
    DeleteTopic { name: String },
    /// Change a topic's retention and largest record and grow it to `partitions` (unset
    /// fields stay as they are; see `topic::TopicAlter`). Applied to the settings the
    /// group holds, so concurrent alters of different settings both take effect.
    AlterTopic {
        name: String,
        partitions: Option<u32>,
        retention_ms: Option<u64>,
        retention_bytes: Option<u64>,
        max_message_bytes: Option<u64>,
    },
    /// Create a consumer group of a replicated topic: its `group.toml` and `state` files
    /// as a group's own directory holds them. No node coordinates it yet.
    CreateGroup {
        topic: String,
        group: String,
        meta: Vec<u8>,
        state: Vec<u8>,
    },
    /// Delete a consumer group.
    DeleteGroup { topic: String, group: String },
    /// `node` takes over coordinating a group, if the group is still at `epoch` with
    /// `checkpoints` checkpoints (what `node` saw when it judged the group free): a
    /// compare-and-set, so of two nodes claiming at once only one wins, and a claim made
    /// while the coordinator was still checkpointing fails.
    ClaimGroup {
        topic: String,
        group: String,
        node: NodeId,
        epoch: u64,
        checkpoints: u64,
    },
    /// The coordinator's periodic checkpoint of a group (which also renews its lease):
    /// accepted only from the coordinator of `epoch`. `None` files are unchanged since the
    /// last checkpoint. `release` gives the group up: no node coordinates it afterwards,
    /// so the next node that needs it claims it at once.
    CheckpointGroup {
        topic: String,
        group: String,
        node: NodeId,
        epoch: u64,
        meta: Option<Vec<u8>>,
        state: Option<Vec<u8>>,
        members: u32,
        release: bool,
    },
    /// Move every replica `node` holds to other nodes (`placement::replace_node`), before
    /// `node` leaves the cluster. Each partition group's leader then changes the group's
    /// membership to match (the new replica catching up from the log first).
    ReplaceNode { node: NodeId },
}

impl fmt::Display for MetaCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaCommand::CreateTopic {
                name, partitions, ..
            } => write!(f, "create topic {name:?} ({partitions} partitions)"),
            MetaCommand::DeleteTopic { name } => write!(f, "delete topic {name:?}"),
            MetaCommand::AlterTopic { name, .. } => write!(f, "alter topic {name:?}"),
            MetaCommand::CreateGroup { topic, group, .. } => {
                write!(f, "create group {group:?} of topic {topic:?}")
            }
            MetaCommand::DeleteGroup { topic, group } => {
                write!(f, "delete group {group:?} of topic {topic:?}")
            }
            MetaCommand::ClaimGroup {
                topic, group, node, ..
            } => write!(f, "node {node} claims group {group:?} of topic {topic:?}"),
            MetaCommand::CheckpointGroup {
                topic, group, node, ..
            } => write!(
                f,
                "node {node} checkpoints group {group:?} of topic {topic:?}"
            ),
            MetaCommand::ReplaceNode { node } => write!(f, "move node {node}'s replicas"),
        }
    }
}

/// What a node asks of the metadata group's leader: a command for the log, or a change of
/// membership (which openraft makes itself, through its own log entries).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaRequest {
    Command(MetaCommand),
    /// Add a node: as a learner until it has caught up, then as a voter.
    AddNode {
        id: NodeId,
        addr: NodeAddr,
    },
    /// Remove a node from the membership.
    RemoveNode {
        id: NodeId,
    },
}

/// Why the metadata group refused a command (it was committed but changed nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// The topic already exists.
    Exists,
    /// The topic does not exist.
    NotFound,
    /// The command cannot be applied as it is (e.g. more replicas than nodes).
    Invalid,
    /// A group's claim or checkpoint came from a node that no longer coordinates it at
    /// that epoch, or a claim saw an older state of the group.
    Stale,
}

/// The outcome of applying a [`MetaCommand`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaResponse {
    /// A topic was created with this placement.
    Created(TopicRecord),
    /// A topic was deleted.
    Deleted,
    /// The command was refused; the message says why.
    Refused { refusal: Refusal, message: String },
    /// The membership after a node was added or removed.
    Members(BTreeMap<NodeId, NodeAddr>),
    /// What openraft's blank and membership entries apply to.
    #[default]
    Nothing,
    /// A topic was altered; its record afterwards.
    Altered(TopicRecord),
    /// A group was created, claimed or checkpointed; its record afterwards.
    Group(GroupRecord),
}

/// A topic as the metadata group holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    pub name: String,
    pub partitions: u32,
    pub replication_factor: u32,
    /// The topic's settings as TOML (see [`MetaCommand::CreateTopic`]).
    pub settings_toml: String,
    /// Per partition, the nodes that hold it, its preferred leader first.
    pub replicas: Vec<Vec<NodeId>>,
}

impl TopicRecord {
    /// The node that serves partition `partition` until partitions are replicated: its
    /// first replica.
    pub fn home(&self, partition: u32) -> Option<NodeId> {
        self.replicas
            .get(partition as usize)
            .and_then(|r| r.first().copied())
    }
}

/// A consumer group of a replicated topic as the metadata group holds it: its files, as
/// of its coordinator's last checkpoint, and who coordinates it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// The group's `group.toml` (settings, dead-letter topic, redrive progress).
    pub meta: Vec<u8>,
    /// The group's `state` (committed offsets, done ranges, attempts).
    pub state: Vec<u8>,
    /// The node running the group, if any. `None`: released, the next node to need it
    /// claims it at once.
    pub coordinator: Option<NodeId>,
    /// Counts claims: a coordinator's checkpoints carry the epoch it claimed at.
    pub epoch: u64,
    /// Counts accepted claims and checkpoints: a node sees a coordinator is alive by this
    /// moving.
    pub checkpoints: u64,
    /// Members at the last checkpoint (for ListGroups on other nodes).
    pub members: u32,
}

/// The metadata state machine's data: what every node agrees on once it has applied the
/// log up to `last_applied`. Small: it is written whole after every applied batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaState {
    pub last_applied: Option<openraft::LogId<NodeId>>,
    pub membership: openraft::StoredMembership<NodeId, NodeAddr>,
    pub topics: BTreeMap<String, TopicRecord>,
    /// Topics created so far: where the next topic's placement starts, so that topics'
    /// first replicas rotate over the nodes.
    pub topics_created: u64,
    /// Consumer groups of replicated topics, by (topic, group).
    pub groups: BTreeMap<(String, String), GroupRecord>,
    /// The nodes a replica moved to, by (topic, partition): they joined a group that
    /// formed without them, so they never initialise it (only its first replicas do, with
    /// the first members), but wait for its leader to add them.
    pub joined: BTreeMap<(String, u32), BTreeSet<NodeId>>,
}

/// [`MetaState`] as nodes before replicas could move wrote it.
#[derive(Deserialize)]
pub struct MetaStateWithoutMoves {
    pub last_applied: Option<openraft::LogId<NodeId>>,
    pub membership: openraft::StoredMembership<NodeId, NodeAddr>,
    pub topics: BTreeMap<String, TopicRecord>,
    pub topics_created: u64,
    pub groups: BTreeMap<(String, String), GroupRecord>,
}

impl From<MetaStateWithoutMoves> for MetaState {
    fn from(old: MetaStateWithoutMoves) -> MetaState {
        MetaState {
            last_applied: old.last_applied,
            membership: old.membership,
            topics: old.topics,
            topics_created: old.topics_created,
            groups: old.groups,
            joined: BTreeMap::new(),
        }
    }
}

/// [`MetaState`] as nodes before consumer groups went through the cluster wrote it: read
/// from an older `state.bin` or snapshot, which has no groups.
#[derive(Deserialize)]
pub struct MetaStateWithoutGroups {
    pub last_applied: Option<openraft::LogId<NodeId>>,
    pub membership: openraft::StoredMembership<NodeId, NodeAddr>,
    pub topics: BTreeMap<String, TopicRecord>,
    pub topics_created: u64,
}

impl From<MetaStateWithoutGroups> for MetaState {
    fn from(old: MetaStateWithoutGroups) -> MetaState {
        MetaState {
            last_applied: old.last_applied,
            membership: old.membership,
            topics: old.topics,
            topics_created: old.topics_created,
            groups: BTreeMap::new(),
            joined: BTreeMap::new(),
        }
    }
}

impl MetaState {
    /// Decodes a state encoded by this version or by one before groups went through the
    /// cluster.
    pub fn decode(bytes: &[u8]) -> Result<MetaState, bincode::Error> {
        bincode::deserialize::<MetaState>(bytes).or_else(|error| {
            bincode::deserialize::<MetaStateWithoutMoves>(bytes)
                .map(MetaState::from)
                .or_else(|_| {
                    bincode::deserialize::<MetaStateWithoutGroups>(bytes).map(MetaState::from)
                })
                .map_err(|_| error)
        })
    }
}

/// The cluster's nodes as the membership holds them, by id.
pub fn members(state: &MetaState) -> BTreeMap<NodeId, NodeAddr> {
    state
        .membership
        .nodes()
        .map(|(id, node)| (*id, node.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group() -> GroupRecord {
        GroupRecord {
            meta: b"meta".to_vec(),
            state: b"state".to_vec(),
            coordinator: Some(2),
            epoch: 3,
            checkpoints: 4,
            members: 1,
        }
    }

    fn record() -> TopicRecord {
        TopicRecord {
            name: "t".into(),
            partitions: 1,
            replication_factor: 3,
            settings_toml: String::new(),
            replicas: vec![vec![1, 2, 3]],
        }
    }

    /// `state.bin` files and snapshots written by earlier versions still decode: the
    /// fields added since come out empty.
    #[test]
    fn states_of_earlier_versions_decode() {
        let topics: BTreeMap<String, TopicRecord> = [("t".to_owned(), record())].into();
        let groups: BTreeMap<(String, String), GroupRecord> =
            [(("t".to_owned(), "g".to_owned()), group())].into();
        let now = MetaState {
            topics: topics.clone(),
            topics_created: 7,
            groups: groups.clone(),
            joined: [(("t".to_owned(), 0), [4].into())].into(),
            ..MetaState::default()
        };
        let bytes = bincode::serialize(&now).unwrap();
        assert_eq!(MetaState::decode(&bytes).unwrap(), now);

        #[derive(Serialize)]
        struct BeforeMoves {
            last_applied: Option<openraft::LogId<NodeId>>,
            membership: openraft::StoredMembership<NodeId, NodeAddr>,
            topics: BTreeMap<String, TopicRecord>,
            topics_created: u64,
            groups: BTreeMap<(String, String), GroupRecord>,
        }
        let before_moves = bincode::serialize(&BeforeMoves {
            last_applied: None,
            membership: Default::default(),
            topics: topics.clone(),
            topics_created: 7,
            groups: groups.clone(),
        })
        .unwrap();
        let decoded = MetaState::decode(&before_moves).unwrap();
        assert_eq!(decoded.groups, groups);
        assert!(decoded.joined.is_empty());

        #[derive(Serialize)]
        struct BeforeGroups {
            last_applied: Option<openraft::LogId<NodeId>>,
            membership: openraft::StoredMembership<NodeId, NodeAddr>,
            topics: BTreeMap<String, TopicRecord>,
            topics_created: u64,
        }
        let before_groups = bincode::serialize(&BeforeGroups {
            last_applied: None,
            membership: Default::default(),
            topics: topics.clone(),
            topics_created: 7,
        })
        .unwrap();
        let decoded = MetaState::decode(&before_groups).unwrap();
        assert_eq!((decoded.topics, decoded.topics_created), (topics, 7));
        assert!(decoded.groups.is_empty() && decoded.joined.is_empty());
    }
}
