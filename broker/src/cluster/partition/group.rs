//! One replica of a partition group on this node: its replica thread, its openraft
//! instance, and its place in the node's registry of partition rafts (what the peer port
//! hands partition messages to).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::Either;
use openraft::error::ClientWriteError;
use openraft::{Raft, SnapshotPolicy};

use super::network::PartNetwork;
use super::replica::{Checked, Command, PendingKey, Replica};
use super::store::{PartLogStore, PartStateMachine};
use super::types::{PartAppended, PartBatch, PartTypes};
use super::{GroupContext, PartitionRafts};
use crate::cluster::types::{NodeAddr, NodeId};
use crate::error::BrokerError;
use crate::storage::{LogConfig, LogReader, batch};

/// A partition group's leader heartbeat. Each idle group costs its leader one
/// AppendEntries per follower per interval (see ARCHITECTURE for the measured cost).
pub const HEARTBEAT_INTERVAL_MS: u64 = 150;
/// A partition group's election timeout range: a follower stands for election 1.35 to
/// 1.8 s after its leader's last heartbeat (openraft waits the range's maximum as the
/// leader's lease, then a random time in the range), which keeps failover after a
/// leader's kill -9 under 2 s (measured by the kill -9 test of `cli/tests`).
pub const ELECTION_TIMEOUT_MS: (u64, u64) = (450, 900);
/// How long a leader waits for a proposed batch to commit before the caller is told the
/// outcome is unknown.
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(4);
/// Entries one AppendEntries carries at most (their bytes are capped too, see `store`).
const MAX_PAYLOAD_ENTRIES: u64 = 64;

/// Why a batch was not appended through the group.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("this replica does not lead the partition group (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("invalid batch: {0}")]
    Invalid(String),
    #[error("the partition group failed: {0}")]
    Failed(String),
    #[error("the batch was proposed but not seen committed within {0:?}: it may still be")]
    Unsure(Duration),
    #[error(
        "an earlier copy of this batch (same producer sequence or message id) is being replicated; retry to learn its offsets"
    )]
    InFlight,
    #[error(transparent)]
    Refused(#[from] crate::storage::StorageError),
}

/// openraft's settings for partition groups.
pub fn partition_config() -> Result<openraft::Config, BrokerError> {
    openraft::Config {
        cluster_name: "herald-partition".into(),
        heartbeat_interval: HEARTBEAT_INTERVAL_MS,
        election_timeout_min: ELECTION_TIMEOUT_MS.0,
        election_timeout_max: ELECTION_TIMEOUT_MS.1,
        // The state machine is the log: a snapshot is built only when retention wants
        // segments deleted (`ReplicaPartition` triggers it), and then the whole log it
        // covers is purged at once, so the segments below it can go.
        snapshot_policy: SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        max_payload_entries: MAX_PAYLOAD_ENTRIES,
        ..openraft::Config::default()
    }
    .validate()
    .map_err(|e| BrokerError::InvalidSettings(format!("partition group: {e}")))
}

/// This node's replica of one partition group.
pub struct PartitionGroup {
    node_id: NodeId,
    topic: String,
    partition: u32,
    raft: Raft<PartTypes>,
    replica: Arc<Replica>,
    rafts: Arc<PartitionRafts>,
    max_batch_bytes: usize,
}

impl PartitionGroup {
    /// Opens the replica in `dir` (its segment log and journal, reconciled), starts its
    /// Raft and registers it with the node's peer port.
    pub async fn start(
        context: &GroupContext,
        topic: &str,
        partition: u32,
        dir: PathBuf,
        config: LogConfig,
    ) -> Result<PartitionGroup, BrokerError> {
        let name = format!("topic {topic} partition {partition}");
        let max_batch_bytes = config.segment_bytes as usize;
        let (open_dir, open_name) = (dir.clone(), name.clone());
        let replica =
            tokio::task::spawn_blocking(move || Replica::open(open_dir, config, open_name))
                .await
                .map_err(|cause| BrokerError::TaskFailed {
                    what: "opening a partition replica",
                    cause,
                })?
                .map_err(|e| BrokerError::io(format!("opening the replica of {name}"), e))?;
        Self::start_on(
            context,
            topic,
            partition,
            Arc::new(replica),
            max_batch_bytes,
        )
        .await
    }

    /// Starts the Raft of a replica opened already (a partition's log opened by the
    /// registry) and registers it with the node's peer port.
    pub async fn start_on(
        context: &GroupContext,
        topic: &str,
        partition: u32,
        replica: Arc<Replica>,
        max_batch_bytes: usize,
    ) -> Result<PartitionGroup, BrokerError> {
        let name = format!("topic {topic} partition {partition}");
        let state_machine = PartStateMachine::open(replica.clone())
            .await
            .map_err(|e| BrokerError::io(format!("opening the replica of {name}"), e))?;
        let network = PartNetwork {
            node_id: context.node_id,
            topic: topic.to_owned(),
            partition,
            health: context.health.clone(),
            tls: context.tls.clone(),
            channels: context.channels.clone(),
        };
        let raft = Raft::new(
            context.node_id,
            Arc::new(partition_config()?),
            network,
            PartLogStore::new(replica.clone()),
            state_machine,
        )
        .await
        .map_err(|e| {
            BrokerError::io(
                format!("starting the group of {name}"),
                std::io::Error::other(e),
            )
        })?;
        context
            .rafts
            .insert((topic.to_owned(), partition), raft.clone());
        Ok(PartitionGroup {
            node_id: context.node_id,
            topic: topic.to_owned(),
            partition,
            raft,
            replica,
            rafts: context.rafts.clone(),
            max_batch_bytes,
        })
    }

    /// Initialises the group with `members` as voters, unless it is initialised already
    /// (one replica does this; the others learn the group from its messages).
    pub async fn initialize(&self, members: BTreeMap<NodeId, NodeAddr>) -> Result<(), BrokerError> {
        let initialized =
            self.raft.is_initialized().await.map_err(|e| {
                BrokerError::io("reading a partition group", std::io::Error::other(e))
            })?;
        if !initialized {
            self.raft.initialize(members).await.map_err(|e| {
                BrokerError::io("initialising a partition group", std::io::Error::other(e))
            })?;
        }
        Ok(())
    }

    /// Proposes `batch` (a whole storage batch, checked here) and answers where its
    /// records are once the group has committed it and this replica applied it (so its
    /// readers see them). Only the leader takes proposals.
    pub async fn append(&self, batch: Vec<u8>) -> Result<PartAppended, AppendError> {
        self.propose(batch).await?.await
    }

    /// Proposes `batch` and returns once the proposal is queued in the group (so batches
    /// proposed one after another keep their order); the future resolves with where its
    /// records are once committed and applied here. The leader decides, once and before
    /// proposing, whether the batch is a retry of one the partition holds (an idempotent
    /// producer's sequence or a message id): a retry is answered with the first copy's
    /// offsets and never proposed, so every replica stores the same bytes.
    pub async fn propose(
        &self,
        batch: Vec<u8>,
    ) -> Result<
        impl std::future::Future<Output = Result<PartAppended, AppendError>> + Send + use<>,
        AppendError,
    > {
        batch::validate(&batch, self.max_batch_bytes)
            .map_err(|e| AppendError::Invalid(e.to_string()))?;
        let leader = self.leader();
        if leader != Some(self.node_id) {
            return Err(AppendError::NotLeader { leader });
        }
        let checked = self
            .replica
            .ask(|reply| Command::Check { batch, reply })
            .await
            .map_err(|e| AppendError::Failed(e.to_string()))??;
        let (batch, key) = match checked {
            Checked::Stored(first) => {
                let stored = PartAppended {
                    base_offset: first.base_offset,
                    count: (first.last_offset + 1 - first.base_offset) as u32,
                };
                return Ok(Either::Left(std::future::ready(Ok(stored))));
            }
            Checked::InFlight => return Err(AppendError::InFlight),
            Checked::Fresh(batch, key) => (batch, key),
        };
        let release = |replica: &Replica, key: Option<PendingKey>| {
            if let Some(key) = key {
                replica.release(key);
            }
        };
        let answer = match self.raft.client_write_ff(PartBatch::proposal(batch)).await {
            Ok(answer) => answer,
            Err(fatal) => {
                release(&self.replica, key);
                return Err(AppendError::Failed(fatal.to_string()));
            }
        };
        let replica = self.replica.clone();
        Ok(Either::Right(async move {
            let outcome = match tokio::time::timeout(COMMIT_TIMEOUT, answer).await {
                // The outcome is unknown: the key stays pending until it shows in the log.
                Err(_) => return Err(AppendError::Unsure(COMMIT_TIMEOUT)),
                Ok(Err(_)) => Err(AppendError::Failed("the partition group stopped".into())),
                Ok(Ok(Ok(written))) => Ok(written.data),
                Ok(Ok(Err(ClientWriteError::ForwardToLeader(to)))) => Err(AppendError::NotLeader {
                    leader: to.leader_id,
                }),
                Ok(Ok(Err(error))) => Err(AppendError::Failed(error.to_string())),
            };
            if outcome.is_err() {
                release(&replica, key);
            }
            outcome
        }))
    }

    /// Readers' signal: changes whenever applied entries move the high watermark.
    pub fn watch_high_watermark(&self) -> tokio::sync::watch::Receiver<u64> {
        self.replica.watch_high_watermark()
    }

    /// A lock-free reader of this replica's committed records.
    pub fn reader(&self) -> LogReader {
        self.replica.reader()
    }

    pub fn raft(&self) -> &Raft<PartTypes> {
        &self.raft
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The leader this replica knows of.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// Stops the group's Raft and the replica thread (its log is synced and closed, its
    /// directory free to open again) and unregisters it from the peer port.
    pub async fn shutdown(&self) {
        self.rafts.remove(&(self.topic.clone(), self.partition));
        if let Err(error) = self.raft.shutdown().await {
            tracing::warn!(topic = %self.topic, partition = self.partition, %error, "stopping a partition group");
        }
        self.replica.stop().await;
    }
}
