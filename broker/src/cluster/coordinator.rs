//! Consumer groups of replicated topics: one node at a time runs each group (its
//! *coordinator*), and the group's state moves through the metadata group, so that another
//! node takes the group over when its coordinator dies.
//!
//! What the metadata group holds per group ([`GroupRecord`]): the group's two files as its
//! directory holds them (`group.toml`, `state`), the coordinator's node id, an *epoch*
//! (counts claims) and a *checkpoint count*. The protocol:
//!
//! - **Claim.** A node that needs a group (a member's Join, an admin call) and finds no
//!   live coordinator proposes `ClaimGroup` with the epoch and checkpoint count it saw: a
//!   compare-and-set, so of two claims only one wins, and a claim made while the old
//!   coordinator still checkpoints fails. The winner writes the record's files as its
//!   local group and runs it ([`GroupRegistry::adopt`]): committed offsets, done ranges
//!   and attempt counts as of the last checkpoint.
//! - **Checkpoint and lease.** The coordinator proposes `CheckpointGroup` every
//!   [`CHECKPOINT_EVERY`] (the files when they changed; the member count), accepted only at
//!   its epoch. Each accepted checkpoint renews its *lease*: if none that it sent in the
//!   last [`LEASE`] was accepted (it is cut off from the metadata quorum), it stops the
//!   group and ends its members' streams (UNAVAILABLE), so it never delivers after another
//!   node may have claimed. Admin changes (UpdateGroup, Seek, Redrive) checkpoint before
//!   they answer.
//! - **Free.** Another node takes a group as free when no node coordinates it (released,
//!   see below), when the record names the node itself (it restarted), or when the
//!   record's checkpoint count has not moved for [`CLAIM_AFTER`] by its own clock. Since
//!   that clock starts when the node *saw* the last checkpoint, which is after the old
//!   coordinator sent it, the old coordinator's lease ran out at least
//!   `CLAIM_AFTER - LEASE` before the claim.
//! - **Release.** A coordinator whose group had no member for [`IDLE_RELEASE`], or that
//!   shuts down cleanly, sends a last checkpoint that releases the group: the next node
//!   to need it claims it at once.
//! - **Routing.** Any node takes a Join or an admin call: when another node coordinates
//!   the group, the call goes on to it over the peer port (`Peer.Subscribe`,
//!   `Peer.GroupCall`); a forwarded call is never forwarded again.
//!
//! What a failover costs: the acks the old coordinator took after its last accepted
//! checkpoint (at most [`CHECKPOINT_EVERY`] and the commit's time) are redelivered; the
//! group resumes `CLAIM_AFTER` after its coordinator was last heard, plus a claim's commit.
//! A coordinator reads its topic's partitions from its own replicas, so only a node that
//! holds every partition of the topic claims a group.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::watch;

use super::Cluster;
use super::types::{GroupRecord, MetaCommand, MetaResponse, NodeId, Refusal};
use crate::error::{BrokerError, Result};
use crate::groups::{Group, GroupConfig, GroupRegistry, Lease};

/// How often a coordinator checkpoints its groups (and renews its lease).
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);
/// A coordinator stops a group when no checkpoint it sent in this long was accepted.
/// Longer than a metadata election (0.9–1.2 s), so a metadata leader's loss does not stop
/// every group.
pub const LEASE: Duration = Duration::from_millis(2500);
/// Another node claims a group whose checkpoints stopped this long ago (its own clock).
pub const CLAIM_AFTER: Duration = Duration::from_millis(3000);
/// A group without members for this long is released.
pub const IDLE_RELEASE: Duration = Duration::from_secs(30);
/// How long a Join or admin call waits for a group to have a coordinator it can reach.
pub const ROUTE_WAIT: Duration = Duration::from_secs(8);

type Key = (String, String);

/// Where a group's calls go.
pub enum Route {
    /// This node runs the group.
    Local(Arc<Group>),
    /// Another node does (or holds every partition and may claim it): forward there.
    Remote(NodeId),
}

/// A group this node runs.
struct Running {
    epoch: u64,
    group: Arc<Group>,
    /// Held while a checkpoint is proposed, so two never race (a later state overtaken by
    /// an earlier one).
    checkpointing: Arc<tokio::sync::Mutex<()>>,
    /// Tells the group's checkpoint task to release the group and end.
    stop: watch::Sender<bool>,
}

/// This node's side of the groups of replicated topics.
pub struct Coordinator {
    /// Itself, for the tasks it spawns.
    me: std::sync::Weak<Coordinator>,
    cluster: Arc<Cluster>,
    groups: Arc<GroupRegistry>,
    running: DashMap<Key, Running>,
    /// Per group, the checkpoint count last seen and when it was first seen.
    seen: DashMap<Key, (u64, Instant)>,
    /// Claims on this node run one at a time.
    claiming: tokio::sync::Mutex<()>,
    shutting_down: watch::Sender<bool>,
}

impl Coordinator {
    /// Starts this node's coordinator: it watches the metadata for groups it runs that
    /// were deleted or taken over, and first stops every local group of a replicated topic
    /// left from before a restart (its state is in the metadata group).
    pub async fn start(cluster: Arc<Cluster>, groups: Arc<GroupRegistry>) -> Arc<Coordinator> {
        let coordinator = Arc::new_cyclic(|me| Coordinator {
            me: me.clone(),
            cluster,
            groups,
            running: DashMap::new(),
            seen: DashMap::new(),
            claiming: tokio::sync::Mutex::new(()),
            shutting_down: watch::channel(false).0,
        });
        for group in coordinator.groups.list(None) {
            if coordinator.manages(&group.topic_name) {
                coordinator
                    .groups
                    .release(&group.topic_name, &group.name, "restarted")
                    .await;
            }
        }
        tokio::spawn(coordinator.clone().watch());
        coordinator
    }

    /// Whether `topic`'s groups go through the cluster: it is replicated. A topic with a
    /// single copy keeps its groups on the node that holds it.
    pub fn manages(&self, topic: &str) -> bool {
        self.cluster
            .metadata()
            .topics
            .get(topic)
            .is_some_and(|t| t.replication_factor > 1)
    }

    /// The group's record, if the cluster has it.
    pub fn record(&self, topic: &str, group: &str) -> Option<GroupRecord> {
        self.cluster
            .metadata()
            .groups
            .get(&(topic.to_owned(), group.to_owned()))
            .cloned()
    }

    /// Every group of a replicated topic (of `topic` if given): topic, group and member
    /// count (this node's count for a group it runs, else as of its last checkpoint).
    pub fn records(&self, topic: Option<&str>) -> Vec<(String, String, u32)> {
        let view = self.cluster.metadata();
        view.groups
            .iter()
            .filter(|((t, _), _)| topic.is_none_or(|want| want == t) && self.manages(t))
            .map(|((t, g), record)| {
                let key = (t.clone(), g.clone());
                let members = self
                    .running
                    .get(&key)
                    .map_or(record.members, |r| r.group.member_count() as u32);
                (key.0, key.1, members)
            })
            .collect()
    }

    /// Creates a group cluster-wide with `config`, starting at `offsets`. With
    /// `existing_ok`, an existing group is no error.
    pub async fn create(
        &self,
        topic: &str,
        group: &str,
        config: GroupConfig,
        offsets: Vec<u64>,
        existing_ok: bool,
    ) -> Result<()> {
        if existing_ok && self.record(topic, group).is_some() {
            return Ok(());
        }
        let arc = self.groups.registry().get(topic)?;
        let (meta, state) = self.groups.new_group_files(arc, group, config, offsets)?;
        let command = MetaCommand::CreateGroup {
            topic: topic.to_owned(),
            group: group.to_owned(),
            meta,
            state,
        };
        match self.cluster.propose(command).await? {
            MetaResponse::Group(_) => Ok(()),
            MetaResponse::Refused {
                refusal: Refusal::Exists,
                ..
            } if existing_ok => Ok(()),
            MetaResponse::Refused {
                refusal: Refusal::Exists,
                ..
            } => Err(BrokerError::GroupExists {
                topic: topic.to_owned(),
                group: group.to_owned(),
            }),
            other => Err(refusal(topic, group, other)),
        }
    }

    /// Deletes a group cluster-wide; its coordinator stops it when it applies the change.
    pub async fn delete(&self, topic: &str, group: &str) -> Result<()> {
        let command = MetaCommand::DeleteGroup {
            topic: topic.to_owned(),
            group: group.to_owned(),
        };
        match self.cluster.propose(command).await? {
            MetaResponse::Deleted => {
                self.stop_local(&(topic.to_owned(), group.to_owned()), None, None)
                    .await;
                Ok(())
            }
            other => Err(refusal(topic, group, other)),
        }
    }

    /// Where the group's calls go: this node (claiming the group when it is free), or the
    /// node that coordinates it. A `forwarded` call is never sent on: UNAVAILABLE instead.
    /// Waits (up to [`ROUTE_WAIT`]) while the group's coordinator looks alive to the
    /// metadata but the call cannot go to it, i.e. for a `forwarded` call.
    pub async fn route(&self, topic: &str, group: &str, forwarded: bool) -> Result<Route> {
        let key = (topic.to_owned(), group.to_owned());
        let me = self.cluster.node_id();
        let deadline = Instant::now() + ROUTE_WAIT;
        loop {
            let Some(record) = self.record(topic, group) else {
                return Err(BrokerError::GroupNotFound {
                    topic: topic.to_owned(),
                    group: group.to_owned(),
                    topic_deleted: false,
                });
            };
            if let Some(running) = self.running.get(&key)
                && record.coordinator == Some(me)
                && record.epoch == running.epoch
            {
                return Ok(Route::Local(running.group.clone()));
            }
            let free = match record.coordinator {
                None => true,
                Some(node) if node == me => true,
                Some(_) => self.silent_for(&key, record.checkpoints) >= CLAIM_AFTER,
            };
            match record.coordinator {
                Some(node) if !free && !forwarded => return Ok(Route::Remote(node)),
                _ if free => {
                    if let Err(error) = self.cluster.check_topic(topic) {
                        // This node lacks a partition: a node that holds them all claims.
                        return match self.cluster.group_host(topic) {
                            Some(node) if !forwarded => Ok(Route::Remote(node)),
                            _ => Err(error),
                        };
                    }
                    if let Some(group) = self.claim(&key, &record).await? {
                        return Ok(Route::Local(group));
                    }
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(BrokerError::ClusterUnavailable(format!(
                    "group {group:?} of topic {topic:?} is coordinated by node {}, which this node could not reach within {} s",
                    record.coordinator.unwrap_or_default(),
                    ROUTE_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// How long the group's checkpoint count has stood at `checkpoints` on this node's
    /// clock (0 when it just moved).
    fn silent_for(&self, key: &Key, checkpoints: u64) -> Duration {
        let now = Instant::now();
        let mut seen = self.seen.entry(key.clone()).or_insert((checkpoints, now));
        if seen.0 != checkpoints {
            *seen = (checkpoints, now);
        }
        now.duration_since(seen.1)
    }

    /// Claims the group as `record` shows it and runs it here. `None`: the group changed
    /// since (another node claimed it, or its coordinator checkpointed): look again.
    async fn claim(&self, key: &Key, record: &GroupRecord) -> Result<Option<Arc<Group>>> {
        let _claiming = self.claiming.lock().await;
        if *self.shutting_down.borrow() {
            return Err(BrokerError::ShuttingDown);
        }
        let me = self.cluster.node_id();
        let command = MetaCommand::ClaimGroup {
            topic: key.0.clone(),
            group: key.1.clone(),
            node: me,
            epoch: record.epoch,
            checkpoints: record.checkpoints,
        };
        let sent = Instant::now();
        let claimed = match self.cluster.propose(command).await? {
            MetaResponse::Group(claimed) => claimed,
            MetaResponse::Refused {
                refusal: Refusal::Stale,
                ..
            } => return Ok(None),
            other => return Err(refusal(&key.0, &key.1, other)),
        };
        let topic = self.groups.registry().get(&key.0)?;
        // This node's replicas may not have applied every commit the old coordinator read
        // up to yet: wait (briefly) so positions are not cut to a shorter committed log.
        wait_for_positions(&topic, &claimed.state).await;
        let lease = Lease::until(sent + LEASE);
        let group = self
            .groups
            .adopt(
                topic,
                &key.1,
                claimed.meta.clone(),
                claimed.state.clone(),
                "the group's coordination moved",
                lease.clone(),
            )
            .await?;
        let (stop, stopped) = watch::channel(false);
        let checkpointing = Arc::new(tokio::sync::Mutex::new(()));
        self.running.insert(
            key.clone(),
            Running {
                epoch: claimed.epoch,
                group: group.clone(),
                checkpointing: checkpointing.clone(),
                stop,
            },
        );
        tracing::info!(topic = %key.0, group = %key.1, epoch = claimed.epoch, "this node coordinates the group");
        let keeper = Keeper {
            key: key.clone(),
            epoch: claimed.epoch,
            group: group.clone(),
            checkpointing,
            files: (claimed.meta, claimed.state),
            lease_from: sent,
            lease,
        };
        if let Some(me) = self.me.upgrade() {
            tokio::spawn(keeper.run(me, stopped));
        }
        Ok(Some(group))
    }

    /// Checkpoints a group this node runs now and waits for the checkpoint to commit: what
    /// an admin change does before it answers, so a failover keeps it.
    pub async fn checkpoint_now(&self, topic: &str, group: &str) -> Result<()> {
        let key = (topic.to_owned(), group.to_owned());
        let Some(running) = self.running_copy(&key) else {
            return Ok(());
        };
        let _checkpointing = running.checkpointing.lock().await;
        let command = whole_checkpoint(&key, self.cluster.node_id(), &running, false)?;
        match self.cluster.propose(command).await? {
            MetaResponse::Group(_) => Ok(()),
            other => Err(refusal(topic, &key.1, other)),
        }
    }

    /// Stops running a group here (if it runs at `epoch`, or at all when `None`); its
    /// members' streams end with UNAVAILABLE saying `reason`, or NOT_FOUND (deleted)
    /// without one.
    async fn stop_local(&self, key: &Key, epoch: Option<u64>, reason: Option<&str>) {
        let removed = self
            .running
            .remove_if(key, |_, r| epoch.is_none_or(|e| e == r.epoch));
        let Some((_, running)) = removed else {
            return;
        };
        let _ = running.stop.send(true);
        match reason {
            Some(reason) => {
                tracing::info!(topic = %key.0, group = %key.1, reason, "this node no longer coordinates the group");
                self.groups.release(&key.0, &key.1, reason).await;
            }
            None => {
                let _ = self.groups.delete(&key.0, &key.1).await;
            }
        }
    }

    /// Follows the metadata: a group this node runs that was deleted stops (NOT_FOUND to
    /// its members), one another node claimed stops (UNAVAILABLE); checkpoint counts are
    /// noted as they move, so a silent coordinator is told from a live one.
    async fn watch(self: Arc<Self>) {
        let mut metrics = self.cluster.raft().metrics();
        let mut shutting_down = self.shutting_down.subscribe();
        loop {
            let view = self.cluster.metadata();
            for (key, record) in &view.groups {
                self.silent_for(key, record.checkpoints);
            }
            self.seen.retain(|key, _| view.groups.contains_key(key));
            let me = self.cluster.node_id();
            let mine: Vec<(Key, u64)> = self
                .running
                .iter()
                .map(|r| (r.key().clone(), r.epoch))
                .collect();
            for (key, epoch) in mine {
                match view.groups.get(&key) {
                    None => self.stop_local(&key, Some(epoch), None).await,
                    Some(record) if record.coordinator != Some(me) || record.epoch != epoch => {
                        let reason = match record.coordinator {
                            Some(node) => format!("node {node} coordinates the group now"),
                            None => "the group was released".to_owned(),
                        };
                        self.stop_local(&key, Some(epoch), Some(&reason)).await;
                    }
                    Some(_) => {}
                }
            }
            tokio::select! {
                changed = metrics.changed() => if changed.is_err() { return },
                _ = shutting_down.wait_for(|s| *s) => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Releases every group this node runs (a last checkpoint each, bounded), so other
    /// nodes take them over at once instead of after [`CLAIM_AFTER`]. Call before the
    /// cluster stops.
    pub async fn shutdown(&self) {
        let _claiming = self.claiming.lock().await;
        self.shutting_down.send_replace(true);
        let keys: Vec<Key> = self.running.iter().map(|r| r.key().clone()).collect();
        let releases = keys.into_iter().map(|key| async move {
            let Some(running) = self.running_copy(&key) else {
                return;
            };
            let checkpointing = running.checkpointing.lock().await;
            if let Ok(command) = whole_checkpoint(&key, self.cluster.node_id(), &running, true) {
                let _ = tokio::time::timeout(Duration::from_secs(2), self.cluster.propose(command))
                    .await;
            }
            drop(checkpointing);
            self.stop_local(&key, Some(running.epoch), Some("the node is shutting down"))
                .await;
        });
        futures::future::join_all(releases).await;
    }
}

/// What a caller needs of a group this node runs, copied out of the map (whose guard must
/// not be held across an `.await`).
struct RunningCopy {
    epoch: u64,
    group: Arc<Group>,
    checkpointing: Arc<tokio::sync::Mutex<()>>,
}

impl Coordinator {
    fn running_copy(&self, key: &Key) -> Option<RunningCopy> {
        self.running.get(key).map(|r| RunningCopy {
            epoch: r.epoch,
            group: r.group.clone(),
            checkpointing: r.checkpointing.clone(),
        })
    }
}

/// A checkpoint carrying both of the group's files as they are now; `release` gives the
/// group up (its member count is then 0).
fn whole_checkpoint(
    key: &Key,
    node: NodeId,
    running: &RunningCopy,
    release: bool,
) -> Result<MetaCommand> {
    let (meta, state) = running.group.files()?;
    Ok(MetaCommand::CheckpointGroup {
        topic: key.0.clone(),
        group: key.1.clone(),
        node,
        epoch: running.epoch,
        meta: Some(meta),
        state: Some(state),
        members: if release {
            0
        } else {
            running.group.member_count() as u32
        },
        release,
    })
}

/// The checkpoint task of one group this node runs.
struct Keeper {
    key: Key,
    epoch: u64,
    group: Arc<Group>,
    checkpointing: Arc<tokio::sync::Mutex<()>>,
    /// The files as last accepted.
    files: (Vec<u8>, Vec<u8>),
    /// When the last accepted checkpoint (or the claim) was sent: the lease runs from it.
    lease_from: Instant,
    /// The same, for the group's driver.
    lease: Arc<Lease>,
}

impl Keeper {
    async fn run(mut self, coordinator: Arc<Coordinator>, mut stopped: watch::Receiver<bool>) {
        let me = coordinator.cluster.node_id();
        let mut idle_since: Option<Instant> = None;
        loop {
            tokio::select! {
                () = tokio::time::sleep(CHECKPOINT_EVERY) => {}
                _ = stopped.wait_for(|s| *s) => return,
            }
            let members = self.group.member_count();
            idle_since = if members == 0 {
                Some(idle_since.unwrap_or_else(Instant::now))
            } else {
                None
            };
            let release = idle_since.is_some_and(|t| t.elapsed() >= IDLE_RELEASE);
            let guard = self.checkpointing.clone();
            let _checkpointing = guard.lock().await;
            let files = match self.group.files() {
                Ok(files) => files,
                Err(error) => {
                    tracing::error!(topic = %self.key.0, group = %self.key.1, %error, "cannot encode the group's checkpoint");
                    continue;
                }
            };
            let command = MetaCommand::CheckpointGroup {
                topic: self.key.0.clone(),
                group: self.key.1.clone(),
                node: me,
                epoch: self.epoch,
                meta: (files.0 != self.files.0).then(|| files.0.clone()),
                state: (files.1 != self.files.1).then(|| files.1.clone()),
                members: members as u32,
                release,
            };
            let sent = Instant::now();
            let expires = tokio::time::Instant::from_std(self.lease_from + LEASE);
            let outcome =
                tokio::time::timeout_at(expires, coordinator.cluster.propose(command)).await;
            drop(_checkpointing);
            let reason = match outcome {
                Ok(Ok(MetaResponse::Group(_))) => {
                    self.lease_from = sent;
                    self.lease.extend_to(sent + LEASE);
                    self.files = files;
                    if !release {
                        continue;
                    }
                    "the group had no members and was released".to_owned()
                }
                Ok(Ok(MetaResponse::Refused { message, .. })) => message,
                Ok(Ok(_)) | Ok(Err(_)) if Instant::now() < self.lease_from + LEASE => continue,
                _ => format!(
                    "node {me} lost its lease on the group: no checkpoint committed in {} ms",
                    LEASE.as_millis()
                ),
            };
            coordinator
                .stop_local(&self.key, Some(self.epoch), Some(&reason))
                .await;
            return;
        }
    }
}

/// Waits (at most 2 s) until this node's replicas of `topic` have committed up to every
/// position `state` names, so that loading it cuts nothing.
async fn wait_for_positions(topic: &crate::topic::Topic, state: &[u8]) {
    let Ok(snapshot) = crate::group::GroupSnapshot::decode(state) else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    for (index, partition) in snapshot.partitions.iter().enumerate() {
        let needed = partition
            .done
            .last()
            .map_or(partition.committed.0, |range| range.1.0)
            .max(partition.committed.0);
        let Ok(log) = topic.partition(index as u32) else {
            continue;
        };
        while log.reader().high_watermark() < needed && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The error for a group command the metadata group refused.
fn refusal(topic: &str, group: &str, response: MetaResponse) -> BrokerError {
    match response {
        MetaResponse::Refused {
            refusal: Refusal::NotFound,
            ..
        } => BrokerError::GroupNotFound {
            topic: topic.to_owned(),
            group: group.to_owned(),
            topic_deleted: false,
        },
        MetaResponse::Refused { message, .. } => BrokerError::ClusterUnavailable(message),
        other => BrokerError::ClusterUnavailable(format!(
            "unexpected answer from the metadata group: {other:?}"
        )),
    }
}
