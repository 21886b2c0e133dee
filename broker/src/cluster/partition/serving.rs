//! Serving replicated partitions. The registry opens a partition this node replicates
//! (replication factor above 1, this node among its replicas) through [`Replicas`], as a
//! [`ReplicaPartition`]: its log is the replica's, its readers see the committed prefix,
//! and its appends are proposed to the partition group (on the leader) and answered once
//! a majority has them. Topics are opened by the registry before the node's peer side
//! exists, so groups opened then wait for [`Replicas::start`].

use std::collections::BTreeMap;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::runtime::Handle;

use super::GroupContext;
use super::group::{AppendError, HandOver, PartitionGroup};
use super::replica::Replica;
use crate::cluster::types::{self, MetaState, NodeAddr, NodeId};
use crate::error::{BrokerError, Result};
use crate::partition::{Committed, Partition, PartitionOpener, ReplicatedLog};
use crate::storage::{Appended, LogConfig, StorageError, ValidatedBatch};

/// How long a replica other than the preferred leader waits before it initialises a
/// group it has heard nothing of.
const INITIALIZE_AFTER: Duration = Duration::from_secs(3);
/// How often a partition group's leader compares the group's voters with the
/// partition's placement.
const PLACEMENT_CHECK: Duration = Duration::from_millis(500);
/// How often each replica asks whether retention wants segments deleted (a channel round
/// trip to the replica thread, which looks at its segment table).
pub const RETENTION_CHECK: Duration = Duration::from_secs(1);
/// How long the leader waits for a new replica to catch up before it checks again
/// (the replica keeps catching up meanwhile).
const CATCH_UP_WAIT: Duration = Duration::from_secs(30);
/// A leader hands leadership to the partition's preferred replica (the placement's
/// first) only once that replica is a voter less than this many entries behind, that
/// this node heard from within [`HAND_OVER_HEARD`] (a replica that is down is not
/// behind by much either, while publishes are few)...
const HAND_OVER_MAX_LAG: u64 = 64;
/// How recently the preferred replica's node must have answered or sent a peer message
/// (heartbeats go every 150 ms).
const HAND_OVER_HEARD: Duration = Duration::from_millis(500);
/// ...and has been for this long (a replica that just returned is still catching up,
/// and one that comes and goes must not move leadership each time)...
const HAND_OVER_STEADY: Duration = Duration::from_secs(1);
/// ...and only after leading this long itself: a leader's vote, which a hand-over needs,
/// is granted only once its lease (the election timeout's maximum, 900 ms) has run out.
const HAND_OVER_LED: Duration = Duration::from_secs(2);
/// At most one hand-over attempt per partition in this long, so a hand-over that fails
/// (or a preferred replica that keeps losing leadership) cannot pause publishes often.
const HAND_OVER_EVERY: Duration = Duration::from_secs(10);
/// How long a publish waits for its partition's group to have a leader (a new topic's
/// first election, a failover) before it is answered UNAVAILABLE.
pub const LEADER_WAIT: Duration = Duration::from_secs(5);

/// The node's replicated partitions: opens them for the registry and starts their
/// groups.
pub struct Replicas {
    node_id: NodeId,
    view: Arc<ArcSwap<MetaState>>,
    runtime: Handle,
    /// Set once the peer side exists; partitions opened before wait in `waiting`. Both
    /// change under the lock, so none is left waiting (admin path only).
    started: Mutex<Started>,
}

#[derive(Default)]
struct Started {
    context: Option<GroupContext>,
    waiting: Vec<Arc<ReplicaPartition>>,
}

impl Replicas {
    /// `view` is the cluster's applied metadata (placement), loaded before the registry
    /// opens any topic.
    pub fn new(node_id: NodeId, view: Arc<ArcSwap<MetaState>>, runtime: Handle) -> Replicas {
        Replicas {
            node_id,
            view,
            runtime,
            started: Mutex::default(),
        }
    }

    /// The applied metadata this node routes and places by.
    pub fn view(&self) -> Arc<ArcSwap<MetaState>> {
        self.view.clone()
    }

    /// Starts the groups of the partitions opened so far, and of every one opened later.
    pub fn start(&self, context: GroupContext) {
        let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        for partition in std::mem::take(&mut started.waiting) {
            self.spawn_start(partition, context.clone());
        }
        started.context = Some(context);
    }

    fn spawn_start(&self, partition: Arc<ReplicaPartition>, context: GroupContext) {
        let view = self.view.clone();
        self.runtime
            .spawn(async move { partition.start(context, view).await });
    }
}

impl PartitionOpener for Replicas {
    fn open(
        &self,
        topic: &str,
        id: u32,
        dir: &Path,
        config: LogConfig,
        max_batch_bytes: usize,
    ) -> Option<Result<Partition>> {
        let view = self.view.load();
        let replicas = view.topics.get(topic)?.replicas.get(id as usize)?;
        if replicas.len() < 2 || !replicas.contains(&self.node_id) {
            return None;
        }
        let name = format!("topic {topic} partition {id}");
        let replica = match Replica::open(dir.to_owned(), config, name.clone()) {
            Ok(replica) => Arc::new(replica),
            Err(e) => {
                return Some(Err(BrokerError::io(
                    format!("opening the replica of {name}"),
                    e,
                )));
            }
        };
        let log = Arc::new(ReplicaPartition {
            topic: topic.to_owned(),
            id,
            replica: replica.clone(),
            group: OnceLock::new(),
            closed: AtomicBool::new(false),
            max_batch_bytes,
            runtime: self.runtime.clone(),
        });
        let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        match &started.context {
            Some(context) => self.spawn_start(log.clone(), context.clone()),
            None => started.waiting.push(log.clone()),
        }
        Some(Ok(Partition::replicated(
            id,
            log,
            replica.reader(),
            replica.watch_high_watermark(),
            replica.stats(),
            replica.retention(),
        )))
    }

    fn replicates(&self, topic: &str, id: u32) -> bool {
        let view = self.view.load();
        view.topics
            .get(topic)
            .and_then(|t| t.replicas.get(id as usize))
            .is_some_and(|r| r.len() > 1 && r.contains(&self.node_id))
    }
}

/// A partition replicated on this node: its replica (opened with the topic) and, once
/// started, its group.
pub struct ReplicaPartition {
    topic: String,
    id: u32,
    replica: Arc<Replica>,
    group: OnceLock<Arc<PartitionGroup>>,
    closed: AtomicBool,
    max_batch_bytes: usize,
    runtime: Handle,
}

impl ReplicaPartition {
    async fn start(self: Arc<Self>, context: GroupContext, view: Arc<ArcSwap<MetaState>>) {
        let started = PartitionGroup::start_on(
            &context,
            &self.topic,
            self.id,
            self.replica.clone(),
            self.max_batch_bytes,
        )
        .await;
        let group = match started {
            Ok(group) => Arc::new(group),
            Err(error) => {
                tracing::error!(topic = %self.topic, partition = self.id, %error, "cannot start a partition group: the partition takes no publishes on this node");
                return;
            }
        };
        let _ = self.group.set(group.clone());
        // A close that ran while the group started found no group to stop.
        if self.closed.load(Ordering::Acquire) {
            group.shutdown().await;
            return;
        }
        // The first replica (the preferred leader: placement rotates it over the nodes)
        // initialises the group at once and so stands for election first; the others
        // wait, and initialise it themselves only if they heard nothing, so a group
        // forms even while its first replica is down. Initialising several is safe: the
        // first entry (log id 0, the same members) is the same everywhere.
        let placement = view.clone();
        let view = view.load();
        let members = members_of(&view, &self.topic, self.id);
        let preferred = view
            .topics
            .get(&self.topic)
            .and_then(|t| t.replicas.get(self.id as usize))
            .and_then(|r| r.first().copied());
        if members.len() < 2 {
            tracing::error!(topic = %self.topic, partition = self.id, "the partition's replicas are unknown to this node");
            return;
        }
        tokio::spawn(self.clone().follow_placement(group.clone(), placement));
        tokio::spawn(self.clone().follow_retention(group.clone()));
        let joined = view
            .joined
            .get(&(self.topic.clone(), self.id))
            .is_some_and(|nodes| nodes.contains(&group.node_id()));
        if joined {
            // A replica moved here joins a group that formed without it: its leader adds
            // it. Initialising it here would make a second, different first entry.
            return;
        }
        if preferred != Some(group.node_id()) {
            tokio::time::sleep(INITIALIZE_AFTER).await;
            if self.closed.load(Ordering::Acquire) {
                return;
            }
        }
        if let Err(error) = group.initialize(members).await {
            tracing::warn!(topic = %self.topic, partition = self.id, %error, "initialising a partition group");
        }
    }

    /// On the group's leader, makes the group's voters the partition's placement
    /// whenever they differ (a node left and its replica moved): each new replica is added
    /// as a learner and caught up from the log first, then the voters are replaced in one
    /// membership change. Once they agree, hands leadership back to the preferred replica
    /// when it is caught up (see [`Self::prefer_leader`]). Checked every
    /// [`PLACEMENT_CHECK`] until the partition closes; only the leader acts, and a change
    /// cut short is taken up again by whichever node leads next.
    async fn follow_placement(
        self: Arc<Self>,
        group: Arc<PartitionGroup>,
        view: Arc<ArcSwap<MetaState>>,
    ) {
        let mut preferring = Preferring::default();
        while !self.closed.load(Ordering::Acquire) {
            tokio::time::sleep(PLACEMENT_CHECK).await;
            if group.leader() != Some(group.node_id()) {
                preferring.led_since = None;
                continue;
            }
            let led_since = *preferring.led_since.get_or_insert_with(Instant::now);
            let state = view.load();
            let Some(placed) = state
                .topics
                .get(&self.topic)
                .and_then(|t| t.replicas.get(self.id as usize))
            else {
                continue;
            };
            let wanted: std::collections::BTreeSet<NodeId> = placed.iter().copied().collect();
            let voters: std::collections::BTreeSet<NodeId> = group
                .raft()
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .voter_ids()
                .collect();
            if wanted.len() < 2 {
                continue;
            }
            if wanted == voters {
                let preferred = placed[0];
                self.prefer_leader(&group, &state, preferred, led_since, &mut preferring)
                    .await;
                continue;
            }
            let addresses = members_of(&state, &self.topic, self.id);
            let mut caught_up = true;
            for node in wanted.difference(&voters) {
                let Some(addr) = addresses.get(node) else {
                    caught_up = false;
                    continue;
                };
                let started = Instant::now();
                let added = tokio::time::timeout(
                    CATCH_UP_WAIT,
                    group.raft().add_learner(*node, addr.clone(), true),
                )
                .await;
                match added {
                    Ok(Ok(_)) => {
                        tracing::info!(topic = %self.topic, partition = self.id, node, took = ?started.elapsed(), "a new replica caught up");
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(topic = %self.topic, partition = self.id, node, %error, "adding a replica");
                        caught_up = false;
                    }
                    Err(_) => caught_up = false,
                }
            }
            if !caught_up {
                continue;
            }
            match group.raft().change_membership(wanted.clone(), false).await {
                Ok(_) => {
                    tracing::info!(topic = %self.topic, partition = self.id, replicas = ?wanted, "the partition's group now has its placement's replicas");
                }
                Err(error) => {
                    tracing::warn!(topic = %self.topic, partition = self.id, %error, "changing a partition group's replicas");
                }
            }
        }
    }

    /// On the leader, with the group's voters as placed: hands leadership to `preferred`
    /// once it has been a voter less than [`HAND_OVER_MAX_LAG`] entries behind (and heard
    /// from) for
    /// [`HAND_OVER_STEADY`], this replica has led for [`HAND_OVER_LED`] and made no
    /// attempt for [`HAND_OVER_EVERY`] (see [`PartitionGroup::hand_over`]). Placement
    /// rotates preferred replicas over the nodes, so this spreads leadership again after
    /// a node returns. Only a non-preferred leader hands over, and only to the preferred
    /// replica, so leadership cannot go back and forth.
    async fn prefer_leader(
        &self,
        group: &PartitionGroup,
        state: &MetaState,
        preferred: NodeId,
        led_since: Instant,
        preferring: &mut Preferring,
    ) {
        if preferred == group.node_id() {
            preferring.caught_up_since = None;
            return;
        }
        let metrics = group.raft().metrics().borrow().clone();
        let is_voter = metrics
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == preferred);
        let last = metrics.last_log_index.map_or(0, |i| i + 1);
        let held = metrics
            .replication
            .as_ref()
            .and_then(|r| r.get(&preferred).copied())
            .flatten()
            .map_or(0, |m| m.index + 1);
        let heard = group
            .heard_from(preferred)
            .is_some_and(|ago| ago < HAND_OVER_HEARD);
        if !is_voter || !heard || last.saturating_sub(held) >= HAND_OVER_MAX_LAG {
            preferring.caught_up_since = None;
            return;
        }
        let caught_up_since = *preferring.caught_up_since.get_or_insert_with(Instant::now);
        if caught_up_since.elapsed() < HAND_OVER_STEADY
            || led_since.elapsed() < HAND_OVER_LED
            || preferring
                .attempted
                .is_some_and(|at| at.elapsed() < HAND_OVER_EVERY)
        {
            return;
        }
        let Some(addr) = members_of(state, &self.topic, self.id).remove(&preferred) else {
            return;
        };
        preferring.attempted = Some(Instant::now());
        match group.hand_over(preferred, &addr).await {
            HandOver::Done { paused } => {
                tracing::info!(topic = %self.topic, partition = self.id, to = preferred, ?paused, "leadership handed back to the preferred replica");
            }
            HandOver::GivenUp { why, paused } => {
                tracing::warn!(topic = %self.topic, partition = self.id, to = preferred, ?paused, %why, "handing leadership to the preferred replica failed; trying again later");
            }
        }
    }

    /// Applies the topic's retention to this replica: when the limits would delete
    /// segments below what the replica's snapshot covers, it asks its Raft to build a
    /// snapshot (a pointer where retention wants the log to start, see `store`), after
    /// which openraft purges the log up to it and the segments below are deleted. Every
    /// replica does this on its own; on the leader openraft purges only once no
    /// replication still reads the entries, and a replica that needs them later gets
    /// the snapshot instead.
    async fn follow_retention(self: Arc<Self>, group: Arc<PartitionGroup>) {
        while !self.closed.load(Ordering::Acquire) {
            tokio::time::sleep(RETENTION_CHECK).await;
            let wanted = self
                .replica
                .ask(|reply| super::replica::Command::RetentionPointer { reply })
                .await;
            let Ok(Some(wanted)) = wanted else {
                continue;
            };
            let built = group.raft().metrics().borrow().snapshot;
            if built.is_some_and(|b| b >= wanted.last_log_id) {
                continue;
            }
            tracing::debug!(topic = %self.topic, partition = self.id, upto = %wanted.last_log_id, offset = wanted.next_offset, "retention: building a snapshot so the log below it can go");
            if group.raft().trigger().snapshot().await.is_err() {
                return;
            }
        }
    }

    fn unavailable(&self, why: impl std::fmt::Display) -> BrokerError {
        BrokerError::ClusterUnavailable(format!(
            "topic {} partition {}: {why}",
            self.topic, self.id
        ))
    }
}

/// What a partition's leader tracks to hand leadership back to the preferred replica.
#[derive(Default)]
struct Preferring {
    /// Since when this replica has led (as this loop saw it).
    led_since: Option<Instant>,
    /// Since when the preferred replica has been a caught-up voter.
    caught_up_since: Option<Instant>,
    /// The last hand-over attempt.
    attempted: Option<Instant>,
}

/// The client's status for a batch the group did not take: UNAVAILABLE (retry, here or
/// at the leader) unless the batch or the producer's sequence is at fault.
fn append_error(topic: &str, partition: u32, error: AppendError) -> BrokerError {
    let why = match error {
        AppendError::Invalid(why) => return BrokerError::InvalidRequest(why),
        AppendError::Refused(storage) => return BrokerError::Storage(storage),
        AppendError::NotLeader { leader } => format!(
            "this node no longer leads the partition (leader now: {}); retry",
            leader.map_or_else(|| "being elected".to_owned(), |l| format!("node {l}"))
        ),
        other => other.to_string(),
    };
    BrokerError::ClusterUnavailable(format!("topic {topic} partition {partition}: {why}"))
}

/// The replicas of `partition` of `topic`, with their addresses.
fn members_of(view: &MetaState, topic: &str, partition: u32) -> BTreeMap<NodeId, NodeAddr> {
    let addresses = types::members(view);
    view.topics
        .get(topic)
        .and_then(|t| t.replicas.get(partition as usize))
        .map(|replicas| {
            replicas
                .iter()
                .filter_map(|id| addresses.get(id).map(|a| (*id, a.clone())))
                .collect()
        })
        .unwrap_or_default()
}

impl ReplicatedLog for ReplicaPartition {
    fn propose(
        &self,
        batch: ValidatedBatch,
    ) -> Pin<Box<dyn std::future::Future<Output = Result<Committed>> + Send + '_>> {
        Box::pin(async move {
            let Some(group) = self.group.get() else {
                return Err(self.unavailable("its group is starting on this node; retry"));
            };
            // The entry owns its bytes: openraft keeps it until every replica has it.
            let committed = group
                .propose(batch.bytes().to_vec())
                .await
                .map_err(|e| append_error(&self.topic, self.id, e))?;
            let (topic, id) = (self.topic.clone(), self.id);
            let answer: Committed = Box::pin(async move {
                match committed.await {
                    Ok(at) => Ok(Appended {
                        base_offset: at.base_offset,
                        last_offset: (at.base_offset + u64::from(at.count)).saturating_sub(1),
                    }),
                    Err(error) => Err(append_error(&topic, id, error)),
                }
            });
            Ok(answer)
        })
    }

    fn leader(&self) -> Option<u64> {
        self.group.get().and_then(|g| g.leader())
    }

    fn wait_for_leader(
        &self,
    ) -> Pin<Box<dyn std::future::Future<Output = Option<u64>> + Send + '_>> {
        Box::pin(async move {
            // Polled: only a publish that found no leader waits here, and at most
            // LEADER_WAIT.
            let deadline = Instant::now() + LEADER_WAIT;
            loop {
                if let Some(leader) = self.leader() {
                    return Some(leader);
                }
                if Instant::now() >= deadline || self.closed.load(Ordering::Acquire) {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    }

    fn leader_moved(
        &self,
        from: u64,
    ) -> Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let Some(group) = self.group.get() else {
                return std::future::pending().await;
            };
            let mut metrics = group.raft().metrics();
            let moved = metrics
                .wait_for(|m| m.current_leader.is_some_and(|leader| leader != from))
                .await
                .is_ok();
            if !moved {
                // The group stopped: the forwarded call ends on its own.
                std::future::pending::<()>().await;
            }
        })
    }

    fn progress(&self) -> Option<Vec<(u64, u64, bool)>> {
        let group = self.group.get()?;
        let metrics = group.raft().metrics().borrow().clone();
        let replication = metrics.replication.as_ref()?;
        let last = metrics.last_log_index.unwrap_or_default();
        let voters: std::collections::BTreeSet<NodeId> =
            metrics.membership_config.membership().voter_ids().collect();
        let mut progress: Vec<(u64, u64, bool)> = replication
            .iter()
            .map(|(node, matched)| {
                let matched = matched.map_or(0, |m| m.index + 1);
                (
                    *node,
                    (last + 1).saturating_sub(matched),
                    voters.contains(node),
                )
            })
            .collect();
        if !replication.contains_key(&group.node_id()) {
            progress.push((group.node_id(), 0, voters.contains(&group.node_id())));
        }
        progress.sort_unstable();
        Some(progress)
    }

    fn close(&self) -> std::result::Result<(), StorageError> {
        self.closed.store(true, Ordering::Release);
        match self.group.get() {
            Some(group) => self.runtime.block_on(group.shutdown()),
            None => self.runtime.block_on(self.replica.stop()),
        }
        Ok(())
    }
}
