//! [`GroupRegistry`]: every group of the broker, loaded at start from
//! `<data_dir>/groups/<topic>/<group>/`, created (written whole in `groups/~staging/` and
//! renamed into place), deleted (moved to staging first) and listed. A group whose files
//! do not load is refused and kept, never removed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use futures::future::BoxFuture;
use tokio::sync::{Notify, watch};

use super::driver::{Group, GroupCounters, GroupHome, Inner, Lease};
use super::persist::{GroupMeta, META_FILE, STATE_FILE, clamp_to_logs, ordering_from_name};
use super::supervisor::supervise;
use super::{Clock, GroupConfig, WallClock};
use crate::error::{BrokerError, Limit, Result};
use crate::group::{GroupLimits, GroupSettings, GroupSnapshot, GroupState, MemberId, Offset};
use crate::meta_file;
use crate::registry::Registry;
use crate::topic::{Topic, validate_name};

/// Most groups a broker holds (over every topic): each costs a task and its state.
pub const MAX_GROUPS: usize = 10_000;

const GROUPS_DIR: &str = "groups";
/// Where a group is created before it is renamed into place, and moved to before it is
/// deleted: what is left here after a crash is an interrupted create or delete, removed at
/// start. `~` is not allowed in topic names, so no topic's groups can be named so.
const STAGING_DIR: &str = "~staging";
/// The registry's directory of topics (a topic that did not load still has its there).
const TOPICS_DIR: &str = "topics";

/// Why a group directory did not load.
enum LoadFailure {
    /// Its files are damaged or missing, or say it belongs to another topic: the group is
    /// refused and its files kept.
    Damaged(String),
}

/// Every group of the broker.
pub struct GroupRegistry {
    pub(super) registry: Arc<Registry>,
    dir: PathBuf,
    pub(super) groups: DashMap<(String, String), Arc<Group>>,
    /// Groups whose files did not load, with why (naming the file): refused, not removed.
    damaged: DashMap<(String, String), String>,
    /// Creates and deletes run one at a time.
    admin: tokio::sync::Mutex<()>,
    /// Member ids: unique across the broker's life and, seeded with the clock, across
    /// restarts.
    next_member: AtomicU64,
    /// Group tasks that panicked (and were restarted), since start.
    pub(super) task_failures: AtomicU64,
    /// Partition positions found past their log's end at load and brought down to it.
    pub(super) offsets_reset: AtomicU64,
    /// Every group's time (see `Group::clock`).
    clock: Arc<dyn Clock>,
}

impl GroupRegistry {
    /// Loads every group under `<data_dir>/groups/`. Blocking. Groups of topics that were
    /// deleted are removed, and so are interrupted creates and deletes (in the staging
    /// directory). A group that cannot be loaded is never removed: it is refused (its
    /// joins, describes and admin calls answer FAILED_PRECONDITION naming the file) and
    /// its files are kept for the operator. Call [`GroupRegistry::start`] from the runtime
    /// next.
    pub fn open(registry: Arc<Registry>) -> Result<GroupRegistry> {
        GroupRegistry::open_with_clock(registry, Arc::new(WallClock))
    }

    /// [`open`](Self::open), with every group reading time from `clock`.
    pub fn open_with_clock(
        registry: Arc<Registry>,
        clock: Arc<dyn Clock>,
    ) -> Result<GroupRegistry> {
        let dir = registry.config().data_dir.join(GROUPS_DIR);
        let staging = dir.join(STAGING_DIR);
        if staging.exists() {
            tracing::info!(path = %staging.display(), "removing interrupted group creates and deletes");
            std::fs::remove_dir_all(&staging)
                .map_err(|e| BrokerError::io(format!("removing {}", staging.display()), e))?;
        }
        std::fs::create_dir_all(&staging)
            .map_err(|e| BrokerError::io(format!("creating {}", staging.display()), e))?;
        let groups = GroupRegistry {
            dir: dir.clone(),
            groups: DashMap::new(),
            damaged: DashMap::new(),
            admin: tokio::sync::Mutex::new(()),
            next_member: AtomicU64::new(clock.now_ms().saturating_mul(1000)),
            task_failures: AtomicU64::new(0),
            offsets_reset: AtomicU64::new(0),
            registry,
            clock,
        };
        let topics = std::fs::read_dir(&dir)
            .map_err(|e| BrokerError::io(format!("listing {}", dir.display()), e))?;
        for topic_entry in topics.flatten() {
            let topic_name = topic_entry.file_name().to_string_lossy().into_owned();
            if topic_name == STAGING_DIR {
                continue;
            }
            let topic = match groups.registry.get(&topic_name) {
                Ok(topic) => topic,
                Err(error) => {
                    let topic_dir = groups
                        .registry
                        .config()
                        .data_dir
                        .join(TOPICS_DIR)
                        .join(&topic_name);
                    if !matches!(error, BrokerError::TopicNotFound { .. }) || topic_dir.exists() {
                        // The topic is there but did not load (damaged): its groups wait
                        // with it, untouched, for its repair.
                        tracing::warn!(topic = %topic_name, %error, "keeping the groups of a topic that did not load");
                        continue;
                    }
                    tracing::info!(topic = %topic_name, "removing the groups of a deleted topic");
                    let _ = std::fs::remove_dir_all(topic_entry.path());
                    continue;
                }
            };
            let Ok(entries) = std::fs::read_dir(topic_entry.path()) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let group_name = entry.file_name().to_string_lossy().into_owned();
                match groups.load(&topic, &path) {
                    Ok(group) => {
                        tracing::info!(topic = %topic_name, group = %group.name, "opened group");
                        groups
                            .groups
                            .insert((topic_name.clone(), group.name.clone()), group);
                    }
                    Err(LoadFailure::Damaged(error)) => {
                        tracing::error!(topic = %topic_name, group = %group_name, %error, "refusing to load a damaged group; its files are kept");
                        groups
                            .damaged
                            .insert((topic_name.clone(), group_name), error);
                    }
                }
            }
        }
        Ok(groups)
    }

    /// Loads the group in `dir`.
    fn load(&self, topic: &Arc<Topic>, dir: &Path) -> Result<Arc<Group>, LoadFailure> {
        let meta_path = dir.join(META_FILE);
        let state_path = dir.join(STATE_FILE);
        let damaged =
            |path: &Path, why: String| LoadFailure::Damaged(format!("{}: {why}", path.display()));
        let bytes = std::fs::read(&meta_path)
            .map_err(|e| damaged(&meta_path, format!("cannot read it: {e}")))?;
        let loaded = meta_file::parse::<GroupMeta>(&bytes)
            .map_err(|e| damaged(&meta_path, e.to_string()))?;
        let meta = loaded.value;
        // A group left over from an earlier topic of the same name and a damaged
        // `topic_created_ms` (or a damaged `topic.toml`) look alike: neither is loaded, and
        // neither is deleted on a guess. An operator deletes the group (DeleteGroup) to
        // start it fresh, or repairs the file.
        if meta.topic_created_ms != 0 && meta.topic_created_ms != topic.created_ms() {
            return Err(damaged(
                &meta_path,
                format!(
                    "it names a topic created at {} ms, but topic {} was created at {} ms: the file is damaged, or the group is left from an earlier topic of the same name (delete the group to start it fresh)",
                    meta.topic_created_ms,
                    crate::topic::shown(topic.name()),
                    topic.created_ms()
                ),
            ));
        }
        let settings = GroupSettings {
            ack_deadline_ms: meta.ack_deadline_ms,
            retry_backoff_min_ms: meta.retry_backoff_min_ms,
            retry_backoff_max_ms: meta.retry_backoff_max_ms,
            max_delivery_attempts: meta.max_delivery_attempts,
            ordering: ordering_from_name(&meta.ordering),
        };
        let bytes = std::fs::read(&state_path)
            .map_err(|e| damaged(&state_path, format!("cannot read it: {e}")))?;
        let mut snapshot =
            GroupSnapshot::decode(&bytes).map_err(|e| damaged(&state_path, e.to_string()))?;
        let partitions = topic.partition_count() as usize;
        if snapshot.partitions.len() > partitions {
            return Err(damaged(
                &state_path,
                format!(
                    "the group covers {} partitions, the topic has {partitions}",
                    snapshot.partitions.len(),
                ),
            ));
        }
        // Partitions added to the topic after this state was written: the group consumes
        // them from their first record, as it does when it takes them up live.
        snapshot
            .partitions
            .resize_with(partitions, Default::default);
        let reset = clamp_to_logs(&mut snapshot, topic, (&meta.topic, &meta.group));
        self.offsets_reset.fetch_add(reset, Ordering::Relaxed);
        let state = GroupState::restore(settings.clone(), GroupLimits::default(), &snapshot)
            .map_err(|e| damaged(&meta_path, e.to_string()))?;
        // Sealed only once the group loaded: a refused group's files stay as they were.
        if !loaded.sealed {
            meta_file::reseal(dir, META_FILE, &loaded.body);
        }
        let config = GroupConfig {
            settings,
            dead_letter_topic: meta.dead_letter_topic,
        };
        Ok(self.make_group(
            topic.clone(),
            meta.group,
            meta.created_ms,
            state,
            config,
            (meta.redrive_topic, meta.redrive_cursor),
            bytes,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn make_group(
        &self,
        topic: Arc<Topic>,
        name: String,
        created_ms: i64,
        state: GroupState,
        config: GroupConfig,
        redrive: (Option<String>, Vec<u64>),
        persisted: Vec<u8>,
    ) -> Arc<Group> {
        let (stop, _) = watch::channel(false);
        Arc::new(Group {
            dir: self.dir.join(topic.name()).join(&name),
            topic_name: topic.name().to_owned(),
            name,
            topic,
            created_ms,
            inner: Mutex::new(Inner {
                state,
                config,
                members: HashMap::new(),
                redrive_topic: redrive.0,
                redrive_cursor: redrive.1,
            }),
            wake: Notify::new(),
            stop,
            persisted: Mutex::new(persisted),
            redrive: tokio::sync::Mutex::new(()),
            counters: GroupCounters::default(),
            clock: self.clock.clone(),
            lease: std::sync::OnceLock::new(),
            #[cfg(test)]
            hold_dead_letters: watch::channel(false).0,
            #[cfg(test)]
            panic_next: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Starts the driver of every loaded group. Call from the runtime.
    pub fn start(self: &Arc<Self>) {
        for group in self.groups.iter() {
            tokio::spawn(supervise(group.clone(), self.clone()));
        }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Group tasks that panicked since start (each was logged and restarted).
    pub fn task_failures(&self) -> u64 {
        self.task_failures.load(Ordering::Relaxed)
    }

    /// Partition positions found past their log's end at load (or at a restart after a
    /// panic) and brought down to it, since start.
    pub fn offsets_reset(&self) -> u64 {
        self.offsets_reset.load(Ordering::Relaxed)
    }

    /// A fresh member id.
    pub fn member_id(&self) -> MemberId {
        MemberId(self.next_member.fetch_add(1, Ordering::Relaxed))
    }

    /// The group, or NOT_FOUND. A group whose topic was deleted (or deleted and created
    /// again) is removed here.
    pub async fn get(&self, topic: &str, group: &str) -> Result<Arc<Group>> {
        let found = self
            .groups
            .get(&(topic.to_owned(), group.to_owned()))
            .map(|g| g.clone());
        let Some(found) = found else {
            if let Some(error) = self.damaged_error(topic, group) {
                return Err(error);
            }
            return Err(BrokerError::GroupNotFound {
                topic: topic.to_owned(),
                group: group.to_owned(),
                topic_deleted: false,
            });
        };
        let live = self
            .registry
            .get(topic)
            .is_ok_and(|t| Arc::ptr_eq(&t, &found.topic));
        if !live {
            let _ = self.delete(topic, group).await;
            return Err(BrokerError::GroupNotFound {
                topic: topic.to_owned(),
                group: group.to_owned(),
                topic_deleted: true,
            });
        }
        Ok(found)
    }

    /// FAILED_PRECONDITION naming the file, if the group's files did not load at start
    /// (and its topic is still there).
    fn damaged_error(&self, topic: &str, group: &str) -> Option<BrokerError> {
        let why = self
            .damaged
            .get(&(topic.to_owned(), group.to_owned()))?
            .clone();
        self.registry.get(topic).ok()?;
        Some(BrokerError::GroupDamaged {
            topic: topic.to_owned(),
            group: group.to_owned(),
            reason: why,
        })
    }

    /// Whether the group's files did not load at start (see [`GroupRegistry::open`]).
    pub fn is_damaged(&self, topic: &str, group: &str) -> bool {
        self.damaged
            .contains_key(&(topic.to_owned(), group.to_owned()))
    }

    /// Creates a group starting at `start_offsets` (one per partition). ALREADY_EXISTS if
    /// it exists, unless `existing_ok`, which returns the existing group.
    pub async fn create(
        self: &Arc<Self>,
        topic: Arc<Topic>,
        name: &str,
        config: GroupConfig,
        start_offsets: Vec<u64>,
        existing_ok: bool,
    ) -> Result<Arc<Group>> {
        validate_name("group", name)?;
        let _admin = self.admin.lock().await;
        let key = (topic.name().to_owned(), name.to_owned());
        if let Some(error) = self.damaged_error(&key.0, &key.1) {
            // Never over the damaged group's files.
            return Err(error);
        }
        if let Some(existing) = self.groups.get(&key).map(|g| g.clone()) {
            if Arc::ptr_eq(&existing.topic, &topic) {
                if existing_ok {
                    return Ok(existing);
                }
                return Err(BrokerError::GroupExists {
                    topic: topic.name().to_owned(),
                    group: name.to_owned(),
                });
            }
            // A group of a deleted topic with the same name.
            self.remove_locked(&key, None).await;
        }
        if self.groups.len() >= MAX_GROUPS {
            return Err(BrokerError::limit(
                Limit::Groups,
                self.groups.len() + 1,
                MAX_GROUPS,
            ));
        }
        let group = self.fresh_group(topic.clone(), name, config, start_offsets)?;
        let writer = group.clone();
        let groups_dir = self.dir.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let staging = format!("create-{}-{}", writer.created_ms, std::process::id());
            place_group_dir(&groups_dir, &staging, &writer.dir, |dir| {
                writer.write_files(dir)
            })
        })
        .await
        .map_err(|cause| BrokerError::TaskFailed {
            what: "creating a group",
            cause,
        })??;
        self.groups.insert(key, group.clone());
        tokio::spawn(supervise(group.clone(), self.clone()));
        tracing::info!(topic = %topic.name(), group = %name, "created group");
        Ok(group)
    }

    /// Deletes a group: ends its members' streams with NOT_FOUND and removes its files.
    pub async fn delete(&self, topic: &str, group: &str) -> Result<()> {
        let _admin = self.admin.lock().await;
        let key = (topic.to_owned(), group.to_owned());
        if self.damaged.remove(&key).is_some() {
            // The operator's way out for a damaged group: its files go as a deleted
            // group's do.
            let dir = self.dir.join(topic).join(group);
            let staging = self.dir.join(STAGING_DIR);
            let now_ms = self.clock.now_ms();
            tokio::task::spawn_blocking(move || remove_group_dir(&dir, &staging, now_ms))
                .await
                .map_err(|cause| BrokerError::TaskFailed {
                    what: "deleting a group",
                    cause,
                })??;
            tracing::info!(topic = %key.0, group = %key.1, "deleted a damaged group");
            return Ok(());
        }
        if !self.groups.contains_key(&key) {
            return Err(BrokerError::GroupNotFound {
                topic: topic.to_owned(),
                group: group.to_owned(),
                topic_deleted: false,
            });
        }
        self.remove_locked(&key, None).await;
        Ok(())
    }

    /// Removes `group` if it is still the registered group of its name (its topic was
    /// deleted under it).
    pub(super) async fn remove_if_same(&self, group: &Arc<Group>) {
        let _admin = self.admin.lock().await;
        let key = (group.topic_name.clone(), group.name.clone());
        let same = self
            .groups
            .get(&key)
            .is_some_and(|g| Arc::ptr_eq(&g, group));
        if same {
            self.remove_locked(&key, None).await;
        }
    }

    /// Stops the group and removes its files. Its members' streams end with UNAVAILABLE
    /// saying `reason` (the group runs elsewhere now: reconnect), or NOT_FOUND (the group
    /// was deleted) without one.
    async fn remove_locked(&self, key: &(String, String), reason: Option<&str>) {
        let Some((_, group)) = self.groups.remove(key) else {
            return;
        };
        // The members' streams get their reason before the group stops: a member task that
        // saw the stop first would leave the group, taking its slot, and its stream would
        // end with OK instead of the reason.
        {
            let mut inner = group.lock();
            for (_, slot) in inner.members.drain() {
                let _ = slot.tx.try_send(Err(match reason {
                    Some(reason) => BrokerError::ClusterUnavailable(reason.to_owned()),
                    None => BrokerError::GroupDeleted {
                        topic: key.0.clone(),
                        group: key.1.clone(),
                    },
                }));
            }
        }
        group.stop.send_replace(true);
        group.wake();
        let dir = group.dir.clone();
        let staging = self.dir.join(STAGING_DIR);
        let now_ms = self.clock.now_ms();
        let removed =
            tokio::task::spawn_blocking(move || remove_group_dir(&dir, &staging, now_ms)).await;
        if let Ok(Err(error)) = removed {
            tracing::error!(topic = %key.0, group = %key.1, %error, "removing a deleted group's files failed");
        }
        tracing::info!(topic = %key.0, group = %key.1, "deleted group");
    }

    /// A new group's files (`group.toml`, `state`) without making the group: what a
    /// cluster records for a group that any node may run.
    pub fn new_group_files(
        &self,
        topic: Arc<Topic>,
        name: &str,
        config: GroupConfig,
        start_offsets: Vec<u64>,
    ) -> Result<(Vec<u8>, Vec<u8>)> {
        validate_name("group", name)?;
        self.fresh_group(topic, name, config, start_offsets)?
            .files()
    }

    /// A new group created now, nothing delivered yet, starting at `start_offsets`: not
    /// written anywhere, not running.
    fn fresh_group(
        &self,
        topic: Arc<Topic>,
        name: &str,
        config: GroupConfig,
        start_offsets: Vec<u64>,
    ) -> Result<Arc<Group>> {
        let offsets: Vec<Offset> = start_offsets.into_iter().map(Offset).collect();
        let state = GroupState::new(config.settings.clone(), GroupLimits::default(), &offsets)?;
        Ok(self.make_group(
            topic,
            name.to_owned(),
            i64::try_from(self.clock.now_ms()).unwrap_or(i64::MAX),
            state,
            config,
            (None, Vec::new()),
            Vec::new(),
        ))
    }

    /// Runs the group whose files are `meta` and `state` on this node, in place of any
    /// local group of that name (whose members' streams end with UNAVAILABLE saying
    /// `displaced`): written
    /// whole in the staging directory, renamed into place and loaded as at start. How a
    /// cluster node takes over coordinating a group. The group delivers only while `lease`
    /// runs.
    pub async fn adopt(
        self: &Arc<Self>,
        topic: Arc<Topic>,
        name: &str,
        meta: Vec<u8>,
        state: Vec<u8>,
        displaced: &str,
        lease: Arc<Lease>,
    ) -> Result<Arc<Group>> {
        validate_name("group", name)?;
        let _admin = self.admin.lock().await;
        let key = (topic.name().to_owned(), name.to_owned());
        self.remove_locked(&key, Some(displaced)).await;
        self.damaged.remove(&key);
        if self.groups.len() >= MAX_GROUPS {
            return Err(BrokerError::limit(
                Limit::Groups,
                self.groups.len() + 1,
                MAX_GROUPS,
            ));
        }
        // Each node made its own copy of the topic, at its own time: the group belongs to
        // this node's copy (the cluster deletes a topic's groups with the topic, so no
        // group outlives its topic there).
        let mut parsed = meta_file::parse::<GroupMeta>(&meta)
            .map_err(|e| BrokerError::GroupDamaged {
                topic: key.0.clone(),
                group: key.1.clone(),
                reason: format!("the cluster's group.toml: {e}"),
            })?
            .value;
        parsed.topic_created_ms = topic.created_ms();
        let text = toml::to_string(&parsed)
            .map_err(|e| BrokerError::io("encoding group.toml", std::io::Error::other(e)))?;
        let meta = meta_file::seal(&text).into_bytes();
        let groups_dir = self.dir.clone();
        let dir = groups_dir.join(topic.name()).join(name);
        let staging = format!(
            "adopt-{}-{}",
            self.clock.now_ms(),
            NEXT_ASIDE.fetch_add(1, Ordering::Relaxed)
        );
        let target = dir.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            place_group_dir(&groups_dir, &staging, &target, |dir| {
                super::persist::write_raw(dir, META_FILE, &meta)?;
                super::persist::write_raw(dir, STATE_FILE, &state)
            })
        })
        .await
        .map_err(|cause| BrokerError::TaskFailed {
            what: "adopting a group",
            cause,
        })??;
        let group = self
            .load(&topic, &dir)
            .map_err(|LoadFailure::Damaged(why)| BrokerError::GroupDamaged {
                topic: key.0.clone(),
                group: key.1.clone(),
                reason: why,
            })?;
        // Before its driver starts: it never runs without the lease.
        let _ = group.lease.set(lease);
        self.groups.insert(key, group.clone());
        tokio::spawn(supervise(group.clone(), self.clone()));
        tracing::info!(topic = %topic.name(), group = %name, "running group");
        Ok(group)
    }

    /// Stops running the group on this node and removes its local files, if it runs here:
    /// its members' streams end with UNAVAILABLE saying `reason` (a client reconnects, to whichever node
    /// runs the group now). How a cluster node gives a group up.
    pub async fn release(&self, topic: &str, group: &str, reason: &str) {
        let _admin = self.admin.lock().await;
        self.remove_locked(&(topic.to_owned(), group.to_owned()), Some(reason))
            .await;
    }

    /// Every group (of `topic` if given), sorted by topic then name.
    pub fn list(&self, topic: Option<&str>) -> Vec<Arc<Group>> {
        let mut groups: Vec<Arc<Group>> = self
            .groups
            .iter()
            .filter(|g| topic.is_none_or(|t| g.key().0 == t))
            .filter(|g| {
                self.registry
                    .get(&g.topic_name)
                    .is_ok_and(|t| Arc::ptr_eq(&t, &g.topic))
            })
            .map(|g| g.clone())
            .collect();
        groups.sort_by(|a, b| (&a.topic_name, &a.name).cmp(&(&b.topic_name, &b.name)));
        groups
    }

    /// Stops every driver and writes every group's state. Blocking: call after the
    /// server stopped serving (every stream closed) and before the partitions close.
    pub fn close(&self) {
        for group in self.groups.iter() {
            group.stop.send_replace(true);
            group.wake();
            if let Err(error) = group.persist() {
                tracing::error!(topic = %group.topic_name, group = %group.name, %error, "persisting group state at shutdown failed");
            }
        }
    }
}

/// Puts a group's directory at `target` (`<groups>/<topic>/<group>`): `write` fills a new
/// directory named `staging` in the staging directory, which then replaces whatever is at
/// `target` by a rename. A crash leaves either the old group or the complete new one (and
/// a staging leftover that the next start removes), never a half-written group to mistake
/// for damage. Blocking.
fn place_group_dir(
    groups_dir: &Path,
    staging: &str,
    target: &Path,
    write: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let staging_dir = groups_dir.join(STAGING_DIR);
    let staging = staging_dir.join(staging);
    let topic_dir = target.parent().unwrap_or(groups_dir);
    for d in [&staging, topic_dir] {
        std::fs::create_dir_all(d)
            .map_err(|e| BrokerError::io(format!("creating {}", d.display()), e))?;
    }
    write(&staging)?;
    remove_group_dir(target, &staging_dir, crate::clock::now_ms().max(0) as u64)?;
    std::fs::rename(&staging, target)
        .map_err(|e| BrokerError::io(format!("renaming {} into place", staging.display()), e))?;
    crate::storage::sync_dir(topic_dir)?;
    crate::storage::sync_dir(&staging_dir)?;
    crate::storage::sync_dir(groups_dir)?;
    Ok(())
}

/// Removes a group's directory: first moved into the staging directory (one rename), so
/// a crash midway leaves a leftover the next start removes, not a group without its
/// `group.toml` to mistake for damage. Blocking.
fn remove_group_dir(dir: &Path, staging: &Path, now_ms: u64) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let aside = staging.join(format!(
        "delete-{}-{}",
        now_ms,
        NEXT_ASIDE.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::rename(dir, &aside)
        .map_err(|e| BrokerError::io(format!("moving {} aside", dir.display()), e))?;
    if let Some(parent) = dir.parent() {
        crate::storage::sync_dir(parent)?;
    }
    std::fs::remove_dir_all(&aside)
        .map_err(|e| BrokerError::io(format!("removing {}", aside.display()), e))
}

/// Tells apart the names of directories moved aside in one process.
static NEXT_ASIDE: AtomicU64 = AtomicU64::new(0);

impl GroupRegistry {
    /// Republishes up to `max` (0 = all) of the group's dead letters to their source
    /// partitions, without the `herald-dlq-*` headers; see `dead_letter`.
    pub async fn redrive(&self, group: &Group, max: u64) -> Result<u64> {
        let registered = self
            .groups
            .get(&(group.topic_name.clone(), group.name.clone()))
            .map(|g| g.clone());
        group.redrive(&self.registry, registered, max).await
    }
}

impl GroupHome for GroupRegistry {
    fn topics(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    fn remove_if_same<'a>(&'a self, group: &'a Arc<Group>) -> BoxFuture<'a, ()> {
        Box::pin(GroupRegistry::remove_if_same(self, group))
    }

    fn count_task_failure(&self) {
        self.task_failures.fetch_add(1, Ordering::Relaxed);
    }

    fn count_offsets_reset(&self, n: u64) {
        self.offsets_reset.fetch_add(n, Ordering::Relaxed);
    }
}
