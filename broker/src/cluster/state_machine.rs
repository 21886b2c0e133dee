//! The metadata state machine: applies committed [`MetaCommand`]s to a [`MetaState`],
//! makes the local side of each change (creating or deleting this node's partition logs),
//! and keeps the state durable.
//!
//! The state is small, so it is written whole (`state.bin`) after every applied batch,
//! before openraft is told the batch is applied: a restarted node resumes from what it
//! applied instead of replaying the log into topics it already created. A crash between a
//! local change and that write re-applies one batch, and local changes are idempotent
//! (create skips a topic that exists, delete one that does not). Snapshots are the same
//! bytes with openraft's metadata (`snapshot.bin`). Both files are a magic, a CRC-32C and
//! the bincode body, replaced atomically (temporary file, sync, rename, directory sync).

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use serde::{Serialize, de::DeserializeOwned};

use super::placement;
use super::types::{
    GroupRecord, MetaCommand, MetaResponse, MetaState, MetaTypes, NodeAddr, NodeId, Refusal,
    TopicRecord,
};
use crate::error::BrokerError;
use crate::registry::Registry;
use crate::topic::{TopicAlter, TopicSettings};

/// The applied state, written after every applied batch.
pub const STATE_FILE: &str = "state.bin";
/// The last snapshot built or installed.
pub const SNAPSHOT_FILE: &str = "snapshot.bin";
/// The first bytes of both files.
const MAGIC: &[u8; 8] = b"HRLDMETA";

type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// A snapshot as stored in `snapshot.bin`.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, NodeAddr>,
    data: Vec<u8>,
}

/// Writes `value` as `dir/name`: magic, CRC-32C, bincode; atomically. Blocking.
pub fn write_checked<T: Serialize>(dir: &Path, name: &str, value: &T) -> std::io::Result<()> {
    use std::io::Write;
    let body = bincode::serialize(value).map_err(std::io::Error::other)?;
    let mut bytes = Vec::with_capacity(body.len() + 12);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    bytes.extend_from_slice(&body);
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    crate::storage::sync_dir(dir).map_err(std::io::Error::other)
}

/// Reads what [`write_checked`] wrote; `None` if there is no file. A file that fails its
/// checks is an error naming it: these files are only ever replaced whole, so damage is
/// not a torn write and must not pass for an empty state.
pub fn read_checked<T: DeserializeOwned>(dir: &Path, name: &str) -> std::io::Result<Option<T>> {
    read_checked_with(dir, name, |body| bincode::deserialize(body))
}

/// Reads the applied state (`state.bin`), written by this version or an older one.
pub fn read_state(dir: &Path) -> std::io::Result<Option<MetaState>> {
    read_checked_with(dir, STATE_FILE, MetaState::decode)
}

fn read_checked_with<T>(
    dir: &Path,
    name: &str,
    decode: impl FnOnce(&[u8]) -> Result<T, bincode::Error>,
) -> std::io::Result<Option<T>> {
    let path = dir.join(name);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let damaged = |why: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is damaged: {why}", path.display()),
        )
    };
    if bytes.len() < 12 || &bytes[..8] != MAGIC {
        return Err(damaged("no Herald metadata header"));
    }
    let crc = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if crc32c::crc32c(&bytes[12..]) != crc {
        return Err(damaged("checksum mismatch"));
    }
    decode(&bytes[12..])
        .map(Some)
        .map_err(|e| damaged(&e.to_string()))
}

/// The metadata state machine (openraft's `RaftStateMachine`).
pub struct StateMachine {
    dir: PathBuf,
    state: MetaState,
    /// The applied state, published for readers (status, publish routing) without a lock.
    view: Arc<ArcSwap<MetaState>>,
    registry: Arc<Registry>,
    snapshot: Option<StoredSnapshot>,
}

impl StateMachine {
    /// Loads the state machine from `dir` (empty if new). Blocking.
    pub fn open(
        dir: &Path,
        registry: Arc<Registry>,
        view: Arc<ArcSwap<MetaState>>,
    ) -> std::io::Result<StateMachine> {
        let state = read_state(dir)?.unwrap_or_default();
        let snapshot = read_checked(dir, SNAPSHOT_FILE)?;
        view.store(Arc::new(state.clone()));
        Ok(StateMachine {
            dir: dir.to_owned(),
            state,
            view,
            registry,
            snapshot,
        })
    }

    /// Applies one command to the state; returns the response and the local change due.
    fn apply_command(&mut self, command: MetaCommand) -> (MetaResponse, Option<Local>) {
        match command {
            MetaCommand::CreateTopic {
                name,
                partitions,
                replication_factor,
                settings_toml,
            } => {
                if self.state.topics.contains_key(&name) {
                    return refused(Refusal::Exists, format!("topic {name:?} already exists"));
                }
                let nodes: Vec<NodeId> = self.state.membership.voter_ids().collect();
                let factor = match replication_factor {
                    0 => placement::default_replication_factor(nodes.len()),
                    n => n,
                };
                if factor as usize > nodes.len() || factor == 0 {
                    return refused(
                        Refusal::Invalid,
                        format!(
                            "replication_factor {factor} is more than the cluster's {} nodes",
                            nodes.len()
                        ),
                    );
                }
                let replicas =
                    placement::place(&nodes, partitions, factor, self.state.topics_created);
                self.state.topics_created += 1;
                let record = TopicRecord {
                    name: name.clone(),
                    partitions,
                    replication_factor: factor,
                    settings_toml,
                    replicas,
                };
                self.state.topics.insert(name, record.clone());
                // Every node holds every topic locally, whether or not it serves one of
                // its partitions: a node checks and places a client's publish before it
                // forwards it, and reads the topic's settings, from its own copy.
                let local = Some(Local::Create(record.clone()));
                (MetaResponse::Created(record), local)
            }
            MetaCommand::DeleteTopic { name } => {
                if self.state.topics.remove(&name).is_none() {
                    return refused(Refusal::NotFound, format!("topic {name:?} does not exist"));
                }
                // A topic's groups go with it.
                self.state.groups.retain(|(topic, _), _| *topic != name);
                self.state.joined.retain(|(topic, _), _| *topic != name);
                (MetaResponse::Deleted, Some(Local::Delete(name)))
            }
            MetaCommand::CreateGroup {
                topic,
                group,
                meta,
                state,
            } => {
                if !self.state.topics.contains_key(&topic) {
                    return refused(Refusal::NotFound, format!("topic {topic:?} does not exist"));
                }
                let key = (topic, group);
                if self.state.groups.contains_key(&key) {
                    return refused(Refusal::Exists, format!("group {:?} already exists", key.1));
                }
                let record = GroupRecord {
                    meta,
                    state,
                    coordinator: None,
                    epoch: 0,
                    checkpoints: 0,
                    members: 0,
                };
                self.state.groups.insert(key, record.clone());
                (MetaResponse::Group(record), None)
            }
            MetaCommand::DeleteGroup { topic, group } => {
                if self.state.groups.remove(&(topic, group.clone())).is_none() {
                    return refused(Refusal::NotFound, format!("group {group:?} does not exist"));
                }
                (MetaResponse::Deleted, None)
            }
            MetaCommand::ClaimGroup {
                topic,
                group,
                node,
                epoch,
                checkpoints,
            } => {
                let Some(record) = self.state.groups.get_mut(&(topic, group.clone())) else {
                    return refused(Refusal::NotFound, format!("group {group:?} does not exist"));
                };
                if record.epoch != epoch || record.checkpoints != checkpoints {
                    return refused(
                        Refusal::Stale,
                        format!(
                            "group {group:?} changed since node {node} looked (now coordinated by {:?} at epoch {})",
                            record.coordinator, record.epoch
                        ),
                    );
                }
                record.coordinator = Some(node);
                record.epoch += 1;
                record.checkpoints += 1;
                (MetaResponse::Group(record.clone()), None)
            }
            MetaCommand::CheckpointGroup {
                topic,
                group,
                node,
                epoch,
                meta,
                state,
                members,
                release,
            } => {
                let Some(record) = self.state.groups.get_mut(&(topic, group.clone())) else {
                    return refused(Refusal::NotFound, format!("group {group:?} does not exist"));
                };
                if record.epoch != epoch || record.coordinator != Some(node) {
                    return refused(
                        Refusal::Stale,
                        format!(
                            "node {node} no longer coordinates group {group:?} (coordinator {:?}, epoch {})",
                            record.coordinator, record.epoch
                        ),
                    );
                }
                if let Some(meta) = meta {
                    record.meta = meta;
                }
                if let Some(state) = state {
                    record.state = state;
                }
                record.members = members;
                record.checkpoints += 1;
                if release {
                    record.coordinator = None;
                }
                (MetaResponse::Group(record.clone()), None)
            }
            MetaCommand::ReplaceNode { node } => {
                let voters: Vec<NodeId> = self.state.membership.voter_ids().collect();
                let moves = match placement::replace_node(&self.state.topics, &voters, node) {
                    Ok(moves) => moves,
                    Err(message) => return refused(Refusal::Invalid, message),
                };
                let mut moved: Vec<String> = Vec::new();
                for (topic, partition, after) in moves {
                    let Some(record) = self.state.topics.get_mut(&topic) else {
                        continue;
                    };
                    let before = &record.replicas[partition as usize];
                    let arrived = after.iter().filter(|n| !before.contains(n));
                    let joined = self
                        .state
                        .joined
                        .entry((topic.clone(), partition))
                        .or_default();
                    joined.extend(arrived);
                    joined.remove(&node);
                    record.replicas[partition as usize] = after;
                    if moved.last() != Some(&topic) {
                        moved.push(topic);
                    }
                }
                // A node that now holds a replica opens it (and its group) at once.
                (MetaResponse::Nothing, Some(Local::Moved(moved)))
            }
            MetaCommand::AlterTopic {
                name,
                partitions,
                retention_ms,
                retention_bytes,
                max_message_bytes,
            } => {
                let change = TopicAlter {
                    retention_ms,
                    retention_bytes,
                    max_message_bytes: max_message_bytes.map(|v| v as usize),
                    partitions,
                };
                self.alter_topic(name, &change)
            }
        }
    }

    /// AlterTopic: the settings with the change applied, and partitions added after the
    /// existing ones, placed as if the topic had been created with them (partition `p`
    /// starts at the node after partition `p - 1`'s first replica).
    fn alter_topic(&mut self, name: String, change: &TopicAlter) -> (MetaResponse, Option<Local>) {
        let nodes: Vec<NodeId> = self.state.membership.voter_ids().collect();
        let Some(record) = self.state.topics.get_mut(&name) else {
            return refused(Refusal::NotFound, format!("topic {name:?} does not exist"));
        };
        let partitions = change.partitions.unwrap_or(record.partitions);
        if partitions < record.partitions {
            return refused(
                Refusal::Invalid,
                format!(
                    "topic {name:?} has {} partitions; partitions can be added but not removed (asked for {partitions})",
                    record.partitions
                ),
            );
        }
        let settings: TopicSettings = toml::from_str(&record.settings_toml).unwrap_or_default();
        let Ok(settings_toml) = toml::to_string(&change.apply(&settings)) else {
            return refused(
                Refusal::Invalid,
                "the altered settings do not encode".into(),
            );
        };
        if partitions > record.partitions {
            let first = record.replicas.first().and_then(|r| r.first());
            let start = first
                .and_then(|first| nodes.iter().position(|n| n == first))
                .unwrap_or(0);
            let placed =
                placement::place(&nodes, partitions, record.replication_factor, start as u64);
            record
                .replicas
                .extend(placed.into_iter().skip(record.partitions as usize));
            record.partitions = partitions;
        }
        record.settings_toml = settings_toml;
        let record = record.clone();
        // Every node holds every topic locally (see CreateTopic).
        let local = Some(Local::Alter(record.clone()));
        (MetaResponse::Altered(record), local)
    }

    /// Persists the state and publishes it to readers.
    async fn persist(&self) -> StorageResult<()> {
        let (dir, state) = (self.dir.clone(), self.state.clone());
        let written =
            tokio::task::spawn_blocking(move || write_checked(&dir, STATE_FILE, &state)).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(StorageIOError::write_state_machine(AnyError::new(&e)).into()),
            Err(e) => return Err(StorageIOError::write_state_machine(AnyError::new(&e)).into()),
        }
        self.view.store(Arc::new(self.state.clone()));
        Ok(())
    }

    fn snapshot_of(&self) -> StoredSnapshot {
        let data = bincode::serialize(&self.state).unwrap_or_default();
        let snapshot_id = match self.state.last_applied {
            Some(id) => format!(
                "{}-{}-{}",
                id.leader_id.term, id.leader_id.node_id, id.index
            ),
            None => "empty".to_owned(),
        };
        StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: self.state.last_applied,
                last_membership: self.state.membership.clone(),
                snapshot_id,
            },
            data,
        }
    }
}

fn refused(refusal: Refusal, message: String) -> (MetaResponse, Option<Local>) {
    (MetaResponse::Refused { refusal, message }, None)
}

/// A change this node makes to its own partition logs after the group agreed on it.
enum Local {
    Create(TopicRecord),
    Delete(String),
    Alter(TopicRecord),
    /// These topics' placement changed: open the replicas that moved to this node.
    Moved(Vec<String>),
}

/// The local changes that bring this node's topics from `old` to the snapshot's `new`:
/// topics that are gone are deleted, new ones created, and changed ones altered (creating
/// an existing topic would do nothing, and the node would keep the old shape). A topic
/// with fewer partitions than the local copy cannot come from an alter, so it was deleted
/// and created again while this node was away: its local copy goes and the new one comes.
fn snapshot_changes(
    old: &BTreeMap<String, TopicRecord>,
    new: &BTreeMap<String, TopicRecord>,
) -> Vec<Local> {
    let mut changes: Vec<Local> = old
        .keys()
        .filter(|name| !new.contains_key(*name))
        .map(|name| Local::Delete(name.clone()))
        .collect();
    for topic in new.values() {
        match old.get(&topic.name) {
            None => changes.push(Local::Create(topic.clone())),
            Some(mine) if mine == topic => {}
            Some(mine) if topic.partitions < mine.partitions => {
                changes.push(Local::Delete(topic.name.clone()));
                changes.push(Local::Create(topic.clone()));
            }
            Some(_) => changes.push(Local::Alter(topic.clone())),
        }
    }
    changes
}

/// Makes the local changes on a blocking thread. They are logged, never returned: the
/// group has committed the change, and a node that cannot follow it locally (a full disk)
/// must not stop applying the log.
async fn make_local(registry: Arc<Registry>, changes: Vec<Local>) {
    if changes.is_empty() {
        return;
    }
    let done = tokio::task::spawn_blocking(move || {
        for change in changes {
            match change {
                Local::Create(record) => {
                    let settings: TopicSettings = match toml::from_str(&record.settings_toml) {
                        Ok(settings) => settings,
                        Err(error) => {
                            tracing::error!(topic = %record.name, %error, "the cluster's settings of a topic do not parse; created with the broker's defaults");
                            TopicSettings::default()
                        }
                    };
                    match registry.create(&record.name, record.partitions, settings) {
                        Ok(_) | Err(BrokerError::TopicExists { .. }) => {}
                        Err(error) => {
                            tracing::error!(topic = %record.name, %error, "cannot create this node's partition logs of a topic the cluster created")
                        }
                    }
                }
                Local::Alter(record) => {
                    let settings: TopicSettings =
                        toml::from_str(&record.settings_toml).unwrap_or_default();
                    let change = TopicAlter {
                        retention_ms: settings.retention_ms,
                        retention_bytes: settings.retention_bytes,
                        max_message_bytes: settings.max_message_bytes,
                        partitions: Some(record.partitions),
                    };
                    if let Err(error) = registry.alter(&record.name, &change) {
                        tracing::error!(topic = %record.name, %error, "cannot alter this node's copy of a topic the cluster altered")
                    }
                    // A snapshot may also carry replicas moved to this node.
                    if let Err(error) = registry.open_moved_replicas(&record.name) {
                        tracing::error!(topic = %record.name, %error, "cannot open a replica moved to this node")
                    }
                }
                Local::Moved(topics) => {
                    for name in topics {
                        if let Err(error) = registry.open_moved_replicas(&name) {
                            tracing::error!(topic = %name, %error, "cannot open a replica moved to this node")
                        }
                    }
                }
                Local::Delete(name) => match registry.delete(&name) {
                    Ok(()) | Err(BrokerError::TopicNotFound { .. }) => {}
                    Err(error) => {
                        tracing::error!(topic = %name, %error, "cannot delete this node's partition logs of a topic the cluster deleted")
                    }
                },
            }
        }
    })
    .await;
    if let Err(error) = done {
        tracing::error!(%error, "applying the cluster's topic changes locally failed");
    }
}

/// Builds snapshots from a copy of the state taken when openraft asked for a builder.
pub struct SnapshotBuilder {
    dir: PathBuf,
    snapshot: Option<StoredSnapshot>,
}

impl RaftSnapshotBuilder<MetaTypes> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<MetaTypes>> {
        let stored = self.snapshot.take().unwrap_or(StoredSnapshot {
            meta: SnapshotMeta::default(),
            data: Vec::new(),
        });
        let dir = self.dir.clone();
        let (meta, data) = (stored.meta.clone(), stored.data.clone());
        let written =
            tokio::task::spawn_blocking(move || write_checked(&dir, SNAPSHOT_FILE, &stored)).await;
        let failed = match written {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(AnyError::new(&e)),
            Err(e) => Some(AnyError::new(&e)),
        };
        if let Some(e) = failed {
            return Err(StorageIOError::write_snapshot(Some(meta.signature()), e).into());
        }
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<MetaTypes> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, NodeAddr>)> {
        Ok((self.state.last_applied, self.state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<MetaResponse>>
    where
        I: IntoIterator<Item = Entry<MetaTypes>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        let mut local = Vec::new();
        for entry in entries {
            self.state.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => MetaResponse::Nothing,
                EntryPayload::Membership(membership) => {
                    self.state.membership = StoredMembership::new(Some(entry.log_id), membership);
                    MetaResponse::Nothing
                }
                EntryPayload::Normal(command) => {
                    let (response, change) = self.apply_command(command);
                    local.extend(change);
                    response
                }
            };
            responses.push(response);
        }
        // The registry's partition opener reads the view to tell replicated partitions.
        self.view.store(Arc::new(self.state.clone()));
        make_local(self.registry.clone(), local).await;
        self.persist().await?;
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            dir: self.dir.clone(),
            snapshot: Some(self.snapshot_of()),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeAddr>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let state = MetaState::decode(&data).map_err(|e| {
            StorageError::from(StorageIOError::read_snapshot(
                Some(meta.signature()),
                AnyError::new(&e),
            ))
        })?;
        let changes = snapshot_changes(&self.state.topics, &state.topics);
        self.state = state;
        self.view.store(Arc::new(self.state.clone()));
        make_local(self.registry.clone(), changes).await;
        self.persist().await?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let dir = self.dir.clone();
        let written = tokio::task::spawn_blocking(move || {
            write_checked(&dir, SNAPSHOT_FILE, &stored).map(|()| stored)
        })
        .await;
        match written {
            Ok(Ok(stored)) => {
                self.snapshot = Some(stored);
                Ok(())
            }
            Ok(Err(e)) => Err(StorageIOError::write_snapshot(
                Some(meta.signature()),
                AnyError::new(&e),
            )
            .into()),
            Err(e) => Err(StorageIOError::write_snapshot(
                Some(meta.signature()),
                AnyError::new(&e),
            )
            .into()),
        }
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<MetaTypes>>> {
        if self.snapshot.is_none() {
            let dir = self.dir.clone();
            self.snapshot = tokio::task::spawn_blocking(move || {
                read_checked::<StoredSnapshot>(&dir, SNAPSHOT_FILE)
            })
            .await
            .map_err(|e| StorageIOError::read_snapshot(None, AnyError::new(&e)))?
            .map_err(|e| StorageIOError::read_snapshot(None, AnyError::new(&e)))?;
        }
        Ok(self.snapshot.as_ref().map(|s| Snapshot {
            meta: s.meta.clone(),
            snapshot: Box::new(Cursor::new(s.data.clone())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(name: &str, partitions: u32, settings: &str) -> TopicRecord {
        TopicRecord {
            name: name.into(),
            partitions,
            replication_factor: 1,
            settings_toml: settings.into(),
            replicas: vec![vec![1]; partitions as usize],
        }
    }

    fn described(changes: &[Local]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match c {
                Local::Create(t) => format!("create {} {}", t.name, t.partitions),
                Local::Alter(t) => format!("alter {} {}", t.name, t.partitions),
                Local::Delete(name) => format!("delete {name}"),
                Local::Moved(names) => format!("moved {}", names.join(" ")),
            })
            .collect()
    }

    #[test]
    fn a_snapshot_alters_changed_topics_and_recreates_shrunk_ones() {
        let old: BTreeMap<String, TopicRecord> = [
            topic("same", 1, ""),
            topic("grown", 2, ""),
            topic("retuned", 1, ""),
            topic("recreated", 4, ""),
            topic("gone", 1, ""),
        ]
        .into_iter()
        .map(|t| (t.name.clone(), t))
        .collect();
        let new: BTreeMap<String, TopicRecord> = [
            topic("same", 1, ""),
            topic("grown", 3, ""),
            topic("retuned", 1, "retention_ms = 60000"),
            topic("recreated", 1, ""),
            topic("new", 2, ""),
        ]
        .into_iter()
        .map(|t| (t.name.clone(), t))
        .collect();
        assert_eq!(
            described(&snapshot_changes(&old, &new)),
            [
                "delete gone",
                "alter grown 3",
                "create new 2",
                "delete recreated",
                "create recreated 1",
                "alter retuned 1",
            ]
        );
    }

    #[test]
    fn checked_files_round_trip_and_refuse_damage() {
        let dir = tempfile::tempdir().unwrap();
        let state = MetaState {
            topics_created: 7,
            ..MetaState::default()
        };
        write_checked(dir.path(), STATE_FILE, &state).unwrap();
        let back: MetaState = read_checked(dir.path(), STATE_FILE).unwrap().unwrap();
        assert_eq!(back, state);
        let path = dir.path().join(STATE_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let error = read_checked::<MetaState>(dir.path(), STATE_FILE).unwrap_err();
        assert!(error.to_string().contains("checksum mismatch"), "{error}");
        assert!(
            read_checked::<MetaState>(dir.path(), "absent")
                .unwrap()
                .is_none()
        );
    }
}
