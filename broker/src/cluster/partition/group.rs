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
/// How long a hand-over waits, publishes paused, for the successor to hold and this
/// replica to have applied every entry proposed before the pause. Past it the hand-over
/// is given up and publishes resume here.
const HAND_OVER_DRAIN: Duration = Duration::from_secs(1);
/// How long a hand-over waits for the successor's election once it was asked to stand.
/// A vote this leader granted has made it a follower already; past it, publishes resume
/// here if this replica still leads.
const HAND_OVER_ELECTION: Duration = Duration::from_secs(2);

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
    /// The group's connections to its peers, for a hand-over's request.
    network: PartNetwork,
    /// Proposals hold it shared from their leader check until openraft has queued them; a
    /// hand-over holds it exclusively, so that nothing is proposed while leadership moves
    /// (proposals wait, in order, then find the new leader and are refused UNAVAILABLE).
    proposing: tokio::sync::RwLock<()>,
}

/// How a hand-over of leadership ended.
#[derive(Debug)]
pub enum HandOver {
    /// The successor leads; publishes were held for this long.
    Done { paused: Duration },
    /// This replica leads still (or, having granted the successor's vote, an election is
    /// under way): publishes were held for `paused`.
    GivenUp { why: String, paused: Duration },
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
            network.clone(),
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
            network,
            proposing: tokio::sync::RwLock::new(()),
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
        let _proposing = self.proposing.read().await;
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

    /// On the leader, moves leadership to the voter `to` (at `addr`), which should be
    /// caught up already. openraft 0.9 has no leadership transfer, so: publishes are held
    /// (see `proposing`); once `to` holds every entry this leader has and this replica has
    /// applied (answered) them all, `to` is asked to stand for election. Its log is then
    /// at least as long as every voter's, and this leader grants its vote (a leader's own
    /// vote is not refreshed by its heartbeats, so its lease has run out), which with
    /// `to`'s own makes a majority of three; larger groups need one more voter, whose
    /// lease runs out 900 ms after the last append. Nothing acknowledged is at risk:
    /// only a candidate holding every committed entry can win, as in any election. Nothing
    /// is left unanswered either: entries are answered before the vote is asked for, and
    /// publishes held meanwhile are refused UNAVAILABLE once they find another leader (or
    /// proposed here if the hand-over is given up and this replica leads still).
    pub async fn hand_over(&self, to: NodeId, addr: &NodeAddr) -> HandOver {
        let _paused = self.proposing.write().await;
        let started = std::time::Instant::now();
        let given_up = |why: String| HandOver::GivenUp {
            why,
            paused: started.elapsed(),
        };
        if self.leader() != Some(self.node_id) {
            return given_up("this replica no longer leads".into());
        }
        // The last entry: read from a metrics report made after openraft has taken every
        // proposal queued before the pause (a call through its request queue, behind
        // them, then the next report: one is made each turn of its loop).
        let me = self.node_id;
        let mut metrics = self.raft.metrics();
        let mut last = None;
        let drained = tokio::time::timeout(HAND_OVER_DRAIN, async {
            self.raft.with_raft_state(|_| ()).await.ok()?;
            metrics.borrow_and_update();
            metrics.changed().await.ok()?;
            last = self.raft.data_metrics().borrow().last_log;
            let last_index = last.map(|l| l.index);
            // Every entry applied here (so every proposal answered: none is left with
            // an unknown outcome) and held by `to`.
            let caught_up = metrics
                .wait_for(|m| {
                    m.current_leader == Some(me)
                        && m.last_applied.map(|l| l.index) >= last_index
                        && m.replication
                            .as_ref()
                            .and_then(|r| r.get(&to))
                            .is_some_and(|matched| matched.map(|l| l.index) >= last_index)
                })
                .await;
            caught_up.ok().map(|_| ())
        })
        .await;
        match drained {
            Ok(Some(())) => {}
            Ok(None) => return given_up("the group stopped".into()),
            Err(_) => {
                return given_up(format!(
                    "node {to} did not reach {last:?} within {HAND_OVER_DRAIN:?}"
                ));
            }
        }
        let mut peer = self.network.peer(to, addr);
        match peer.take_leadership(&last, HAND_OVER_ELECTION).await {
            Ok(Ok(())) => {}
            Ok(Err(refused)) => return given_up(format!("node {to} refused: {refused}")),
            Err(error) => return given_up(format!("asking node {to}: {error}")),
        }
        let elected = tokio::time::timeout(
            HAND_OVER_ELECTION,
            metrics.wait_for(|m| m.current_leader == Some(to)),
        )
        .await;
        match elected {
            Ok(Ok(_)) => HandOver::Done {
                paused: started.elapsed(),
            },
            Ok(Err(_)) => given_up("the group stopped".into()),
            Err(_) => given_up(format!(
                "node {to} was not elected within {HAND_OVER_ELECTION:?}"
            )),
        }
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

    /// How long ago this node last exchanged a peer message with `node` (any group's).
    pub fn heard_from(&self, node: NodeId) -> Option<Duration> {
        self.network.health.since(node)
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
