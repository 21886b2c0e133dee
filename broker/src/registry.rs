//! The topic registry: every topic of the broker, persisted under `<data_dir>/topics/`.
//!
//! Layout: `<data_dir>/topics/<topic>/topic.toml` and `<data_dir>/topics/<topic>/<partition>/`
//! (a partition log directory). A create first writes a `creating` marker in the new
//! directory (synced), then the partitions, then `topic.toml`, and removes the marker last:
//! a directory with the marker is an interrupted create, never acknowledged, and is removed
//! at start. `topic.toml` carries a checksum line (`meta_file`). A directory without the
//! marker whose `topic.toml` is missing, unreadable, fails its checksum or is wrong is
//! **damaged**: it is never deleted or overwritten; the broker starts without it
//! and answers requests for it with FAILED_PRECONDITION naming the file, until an operator
//! repairs it (README, "Metadata damage and how to recover"). A topic one of whose
//! partition logs is refused at open (storage damage naming the file) is kept aside the
//! same way (README, "Disk damage"). A topic is deleted by moving
//! it into `<data_dir>/staging/` first, whose contents are removed at start, so a crash
//! never leaves a half-deleted topic in `topics/`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use dashmap::DashMap;

use crate::clock::now_ms;
use crate::config::{Config, MAX_PARTITIONS_PER_TOPIC};
use crate::error::{BrokerError, Limit, Result};
use crate::meta_file::Loaded;
use crate::otel::Otel;
use crate::partition::{Partition, PartitionOpener};
use crate::producer_ids::ProducerIds;
use crate::storage::{LogConfig, StorageError, sync_dir};
use crate::topic::{Layout, Topic, TopicAlter, TopicMeta, TopicSettings, shown, validate_name};

const TOPICS_DIR: &str = "topics";
const STAGING_DIR: &str = "staging";
/// The file that marks a topic directory as a create in progress.
const CREATING_MARKER: &str = "creating";
/// Characters of a topic's name kept in its staging directory's name: enough to recognise
/// it, short enough that time, sequence and name stay far below the 255-byte file name
/// limit (a 249-character name plus a prefix would not fit).
const STAGING_NAME_PREFIX: usize = 64;

pub struct Registry {
    config: Config,
    topics_dir: PathBuf,
    staging_dir: PathBuf,
    topics: DashMap<String, Arc<Topic>>,
    /// Topics found damaged at start (metadata or a partition log; name → why, naming the
    /// file). They are kept on disk untouched and answered with FAILED_PRECONDITION; only
    /// an operator changes them.
    damaged: DashMap<String, String>,
    partitions_total: AtomicUsize,
    /// Unique names for staging directories.
    staging_seq: AtomicU64,
    /// Creates and deletes run one at a time; publishes and fetches never take this.
    admin: std::sync::Mutex<()>,
    /// Idempotent producers' identities (`InitProducer`).
    producer_ids: ProducerIds,
    /// The span exporter, when `otlp_endpoint` is set (see `otel`): set once at start,
    /// read by publishes and group drivers.
    otel: OnceLock<Arc<Otel>>,
    /// In cluster mode, what opens the partitions a group replicates on this node.
    opener: Option<Arc<dyn PartitionOpener>>,
}

impl Registry {
    /// Opens the data directory, creating it if needed, and every topic in it. Blocking.
    pub fn open(config: Config) -> Result<Registry> {
        Registry::open_with(config, None)
    }

    /// [`open`](Self::open), with the partitions `opener` takes opened by it (cluster mode:
    /// replicated partitions), then and whenever a topic is created or grows. Blocking.
    pub fn open_with(config: Config, opener: Option<Arc<dyn PartitionOpener>>) -> Result<Registry> {
        let topics_dir = config.data_dir.join(TOPICS_DIR);
        let staging_dir = config.data_dir.join(STAGING_DIR);
        for dir in [&topics_dir, &staging_dir] {
            std::fs::create_dir_all(dir)
                .map_err(|e| BrokerError::io(format!("creating {}", dir.display()), e))?;
        }
        // Leftovers of an interrupted create or delete.
        let leftovers = std::fs::read_dir(&staging_dir)
            .map_err(|e| BrokerError::io(format!("listing {}", staging_dir.display()), e))?;
        for entry in leftovers.flatten() {
            tracing::info!(path = %entry.path().display(), "removing an interrupted topic create or delete");
            let _ = std::fs::remove_dir_all(entry.path());
        }
        let registry = Registry {
            topics_dir,
            staging_dir,
            topics: DashMap::new(),
            damaged: DashMap::new(),
            partitions_total: AtomicUsize::new(0),
            staging_seq: AtomicU64::new(0),
            admin: std::sync::Mutex::new(()),
            producer_ids: ProducerIds::open(&config.data_dir),
            otel: OnceLock::new(),
            opener,
            config,
        };
        let entries = std::fs::read_dir(&registry.topics_dir).map_err(|e| {
            BrokerError::io(format!("listing {}", registry.topics_dir.display()), e)
        })?;
        for entry in entries {
            let entry = entry.map_err(|e| BrokerError::io("listing topics", e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if validate_name("topic", &name).is_err() {
                tracing::warn!(path = %entry.path().display(), "ignoring a directory that is not a topic");
                continue;
            }
            let path = entry.path();
            if path.join(CREATING_MARKER).exists() {
                // Only a create writes the marker, and it is removed before the topic is
                // served: nothing in here was ever acknowledged.
                tracing::warn!(path = %path.display(), "removing a topic whose creation was interrupted");
                let _ = std::fs::remove_dir_all(&path);
                continue;
            }
            let loaded = match read_meta(&path, &name) {
                Ok(loaded) => loaded,
                Err(reason) => {
                    tracing::error!(topic = %name, %reason, "not loading a topic with damaged metadata; its files are kept");
                    registry.damaged.insert(name, reason);
                    continue;
                }
            };
            let topic = match registry.open_topic(&path, loaded.value) {
                Ok(topic) => topic,
                // A partition log refused at open (damaged, short, missing a segment) takes
                // its topic out of service like damaged metadata does: the bytes stay for
                // the operator, and the rest of the broker starts and serves.
                Err(BrokerError::Storage(error @ StorageError::Corrupt { .. })) => {
                    let reason = error.to_string();
                    tracing::error!(topic = %name, %reason, "not loading a topic whose log is damaged; its files are kept");
                    registry.damaged.insert(name, reason);
                    continue;
                }
                Err(error) => return Err(error),
            };
            // Sealed only now that it loaded: a refused topic's files stay as they were.
            if !loaded.sealed {
                crate::meta_file::reseal(&path, crate::topic::META_FILE, &loaded.body);
            }
            let count = topic.partition_count();
            registry
                .partitions_total
                .fetch_add(count as usize, Ordering::Relaxed);
            tracing::info!(topic = %name, partitions = count, "opened topic");
            registry.topics.insert(name, Arc::new(topic));
        }
        Ok(registry)
    }

    /// Where a topic's files live (`<data_dir>/topics/<name>`).
    pub fn topic_dir(&self, name: &str) -> PathBuf {
        self.topics_dir.join(name)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn producer_ids(&self) -> &ProducerIds {
        &self.producer_ids
    }

    /// Installs the span exporter (once, at start).
    pub fn set_otel(&self, otel: Arc<Otel>) {
        let _ = self.otel.set(otel);
    }

    /// The span exporter, if spans are exported.
    pub fn otel(&self) -> Option<&Arc<Otel>> {
        self.otel.get()
    }

    /// Opens one partition's log: through the opener when it replicates the partition,
    /// locally otherwise.
    fn open_partition(
        &self,
        topic: &str,
        dir: &Path,
        id: u32,
        config: LogConfig,
    ) -> Result<Partition> {
        let max_batch_bytes = self.config.max_batch_bytes;
        if let Some(opener) = &self.opener
            && let Some(opened) = opener.open(topic, id, dir, config.clone(), max_batch_bytes)
        {
            return opened;
        }
        Partition::open(dir, id, config, max_batch_bytes)
    }

    fn open_topic(&self, dir: &Path, meta: TopicMeta) -> Result<Topic> {
        let settings = meta.settings.effective(&self.config);
        let mut partitions = Vec::with_capacity(meta.partitions as usize);
        for id in 0..meta.partitions {
            let config = LogConfig {
                producers: self.config.producer_limits(),
                ..settings.log_config()
            };
            let partition = self.open_partition(&meta.name, &dir.join(id.to_string()), id, config);
            match partition {
                Ok(p) => partitions.push(p),
                Err(e) => {
                    close_partitions(&partitions);
                    return Err(e);
                }
            }
        }
        Ok(Topic::new(meta, settings, partitions))
    }

    pub fn get(&self, name: &str) -> Result<Arc<Topic>> {
        if let Some(topic) = self.topics.get(name) {
            return Ok(topic.clone());
        }
        self.check_not_damaged(name)?;
        Err(BrokerError::TopicNotFound {
            topic: name.to_owned(),
        })
    }

    /// FAILED_PRECONDITION, naming the damaged file, if `name` is a damaged topic.
    fn check_not_damaged(&self, name: &str) -> Result<()> {
        match self.damaged.get(name) {
            Some(reason) => Err(BrokerError::TopicDamaged {
                topic: name.to_owned(),
                reason: reason.value().clone(),
            }),
            None => Ok(()),
        }
    }

    /// Topics found damaged at start, sorted by name, with why.
    pub fn damaged(&self) -> Vec<(String, String)> {
        let mut damaged: Vec<_> = self
            .damaged
            .iter()
            .map(|d| (d.key().clone(), d.value().clone()))
            .collect();
        damaged.sort();
        damaged
    }

    /// Every topic, sorted by name.
    pub fn list(&self) -> Vec<Arc<Topic>> {
        let mut topics: Vec<_> = self.topics.iter().map(|t| t.clone()).collect();
        topics.sort_by(|a, b| a.name().cmp(b.name()));
        topics
    }

    pub fn partitions_total(&self) -> usize {
        self.partitions_total.load(Ordering::Relaxed)
    }

    /// Creates a topic with `partitions` partitions. Blocking: it creates and syncs files.
    pub fn create(
        &self,
        name: &str,
        partitions: u32,
        settings: TopicSettings,
    ) -> Result<Arc<Topic>> {
        validate_name("topic", name)?;
        if !(1..=MAX_PARTITIONS_PER_TOPIC).contains(&partitions) {
            return Err(BrokerError::InvalidSettings(format!(
                "partitions must be within 1..={MAX_PARTITIONS_PER_TOPIC}, got {partitions}"
            )));
        }
        let effective = settings.effective(&self.config);
        effective.validate(&self.config)?;
        let _admin = self.admin.lock().unwrap_or_else(|p| p.into_inner());
        self.check_not_damaged(name)?;
        if self.topics.contains_key(name) {
            return Err(BrokerError::TopicExists {
                topic: name.to_owned(),
            });
        }
        if self.topics.len() >= self.config.max_topics {
            return Err(BrokerError::limit(
                Limit::Topics,
                self.topics.len() + 1,
                self.config.max_topics,
            ));
        }
        let total = self.partitions_total() + partitions as usize;
        if total > self.config.max_partitions {
            return Err(BrokerError::limit(
                Limit::Partitions { adding: partitions },
                total,
                self.config.max_partitions,
            ));
        }
        let meta = TopicMeta {
            name: name.to_owned(),
            partitions,
            created_ms: now_ms(),
            settings,
        };
        // The partitions are created in place under a `creating` marker, made durable
        // first; `topic.toml` is written next and the marker removed last. A crash before
        // that leaves a marked directory, which `open` removes.
        let dir = self.topics_dir.join(name);
        // Never into a directory that is already there: it holds someone's bytes.
        std::fs::create_dir(&dir).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                BrokerError::TopicDirectoryExists {
                    topic: name.to_owned(),
                    path: dir.clone(),
                }
            } else {
                BrokerError::io(format!("creating {}", dir.display()), e)
            }
        })?;
        let build = || -> Result<Topic> {
            let marker = dir.join(CREATING_MARKER);
            std::fs::File::create(&marker)
                .and_then(|f| f.sync_all())
                .map_err(|e| BrokerError::io(format!("creating {}", marker.display()), e))?;
            sync_dir(&dir)?;
            sync_dir(&self.topics_dir)?;
            let topic = self.open_topic(&dir, meta.clone())?;
            let written = meta
                .write(&dir)
                .and_then(|()| {
                    std::fs::remove_file(&marker)
                        .map_err(|e| BrokerError::io(format!("removing {}", marker.display()), e))
                })
                .and_then(|()| Ok(sync_dir(&dir)?));
            if let Err(e) = written {
                close_partitions(&topic.layout().partitions);
                return Err(e);
            }
            Ok(topic)
        };
        let topic = match build() {
            Ok(topic) => Arc::new(topic),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        self.partitions_total
            .fetch_add(partitions as usize, Ordering::Relaxed);
        self.topics.insert(name.to_owned(), topic.clone());
        tracing::info!(topic = %name, partitions, "created topic");
        Ok(topic)
    }

    /// Changes a live topic's settings and adds partitions (see [`TopicAlter`]). Blocking:
    /// it creates partition logs and syncs files.
    ///
    /// The new partitions' logs are created first, then `topic.toml` is replaced
    /// atomically, and only then does the topic serve them: a crash before the rename
    /// leaves the old metadata and empty partition directories past its count, which
    /// nothing reads (a later alter that adds partitions opens them again); after it, the
    /// topic loads with the new count. Partitions are never removed: their records would go
    /// with them, and every key's placement would change again.
    pub fn alter(&self, name: &str, change: &TopicAlter) -> Result<Arc<Topic>> {
        validate_name("topic", name)?;
        let _admin = self.admin.lock().unwrap_or_else(|p| p.into_inner());
        self.check_not_damaged(name)?;
        let topic =
            self.topics
                .get(name)
                .map(|t| t.clone())
                .ok_or_else(|| BrokerError::TopicNotFound {
                    topic: name.to_owned(),
                })?;
        let old = topic.layout();
        let current = old.meta.partitions;
        let partitions = change.partitions.unwrap_or(current);
        if !(1..=MAX_PARTITIONS_PER_TOPIC).contains(&partitions) {
            return Err(BrokerError::InvalidSettings(format!(
                "partitions must be within 1..={MAX_PARTITIONS_PER_TOPIC}, got {partitions}"
            )));
        }
        if partitions < current {
            return Err(BrokerError::InvalidSettings(format!(
                "topic {} has {current} partitions; partitions can be added but not removed (asked for {partitions})",
                shown(name)
            )));
        }
        let adding = partitions - current;
        let total = self.partitions_total() + adding as usize;
        if adding > 0 && total > self.config.max_partitions {
            return Err(BrokerError::limit(
                Limit::Partitions { adding },
                total,
                self.config.max_partitions,
            ));
        }
        let overrides = change.apply(&old.meta.settings);
        let settings = overrides.effective(&self.config);
        settings.validate(&self.config)?;
        let meta = TopicMeta {
            partitions,
            settings: overrides,
            ..old.meta.clone()
        };
        let dir = self.topics_dir.join(name);
        let log_config = LogConfig {
            producers: self.config.producer_limits(),
            ..settings.log_config()
        };
        let mut added = Vec::with_capacity(adding as usize);
        for id in current..partitions {
            match self.open_partition(name, &dir.join(id.to_string()), id, log_config.clone()) {
                Ok(p) => added.push(Arc::new(p)),
                Err(e) => {
                    close_partitions(&added);
                    return Err(e);
                }
            }
        }
        let written = if adding > 0 {
            sync_dir(&dir).map_err(BrokerError::from)
        } else {
            Ok(())
        }
        .and_then(|()| meta.replace(&dir));
        if let Err(e) = written {
            close_partitions(&added);
            return Err(e);
        }
        let mut partitions_now = old.partitions.clone();
        partitions_now.extend(added);
        for partition in &partitions_now {
            partition.set_retention(log_config.retention_ms, log_config.retention_bytes);
        }
        self.partitions_total
            .fetch_add(adding as usize, Ordering::Relaxed);
        topic.set_layout(Layout {
            meta,
            settings,
            partitions: partitions_now,
        });
        tracing::info!(topic = %name, partitions, added = adding, ?change, "altered topic");
        Ok(topic)
    }

    /// Opens, as replicas, the partitions of `name` that moved to this node (cluster mode:
    /// a node left and its replicas were placed here) and that this node kept only an
    /// empty local copy of until now. Each such copy is closed and its files removed, so
    /// the replica starts from an empty log and catches up from its group. A local copy
    /// holding records is never removed (it is logged and left alone). Blocking.
    pub fn open_moved_replicas(&self, name: &str) -> Result<()> {
        let Some(opener) = &self.opener else {
            return Ok(());
        };
        let _admin = self.admin.lock().unwrap_or_else(|p| p.into_inner());
        let Some(topic) = self.topics.get(name).map(|t| t.clone()) else {
            return Ok(());
        };
        let layout = topic.layout();
        let mut partitions = layout.partitions.clone();
        let dir = self.topics_dir.join(name);
        let mut changed = false;
        for (i, partition) in layout.partitions.iter().enumerate() {
            let id = i as u32;
            if partition.replicated_log().is_some() || !opener.replicates(name, id) {
                continue;
            }
            let held = *partition.watch_high_watermark().borrow();
            if held != 0 {
                tracing::error!(topic = %name, partition = id, records = held, "a replica moved here, but this node's local copy of the partition holds records: left as it is");
                continue;
            }
            if let Err(error) = partition.close() {
                tracing::warn!(topic = %name, partition = id, %error, "closing the local copy of a partition whose replica moved here");
            }
            let partition_dir = dir.join(id.to_string());
            std::fs::remove_dir_all(&partition_dir)
                .and_then(|()| std::fs::create_dir_all(&partition_dir))
                .map_err(|e| BrokerError::io(format!("emptying {}", partition_dir.display()), e))?;
            let config = LogConfig {
                producers: self.config.producer_limits(),
                ..layout.settings.log_config()
            };
            partitions[i] = Arc::new(self.open_partition(name, &partition_dir, id, config)?);
            changed = true;
            tracing::info!(topic = %name, partition = id, "opened a replica moved to this node");
        }
        if changed {
            topic.set_layout(Layout {
                meta: layout.meta.clone(),
                settings: layout.settings.clone(),
                partitions,
            });
        }
        Ok(())
    }

    /// Deletes a topic and its data. Blocking. Publishes already in flight to it fail;
    /// fetches already reading keep their mapped bytes until they finish.
    pub fn delete(&self, name: &str) -> Result<()> {
        validate_name("topic", name)?;
        let _admin = self.admin.lock().unwrap_or_else(|p| p.into_inner());
        // A damaged topic's bytes are the operator's to keep or remove, not an API call's.
        self.check_not_damaged(name)?;
        let (_, topic) = self
            .topics
            .remove(name)
            .ok_or_else(|| BrokerError::TopicNotFound {
                topic: name.to_owned(),
            })?;
        let layout = topic.layout();
        close_partitions(&layout.partitions);
        let dir = self.topics_dir.join(name);
        let doomed = self.staging_path(name);
        if let Err(error) = std::fs::rename(&dir, &doomed) {
            // The topic is still whole in `topics/`: serve it again rather than let it
            // vanish until the next start.
            match self.open_topic(&dir, layout.meta.clone()) {
                Ok(reopened) => {
                    self.topics.insert(name.to_owned(), Arc::new(reopened));
                }
                Err(reopen) => {
                    self.partitions_total
                        .fetch_sub(layout.partitions.len(), Ordering::Relaxed);
                    tracing::error!(topic = %name, error = %reopen, "reopening a topic whose delete failed");
                }
            }
            return Err(BrokerError::io(
                format!("moving {} to {}", dir.display(), doomed.display()),
                error,
            ));
        }
        self.partitions_total
            .fetch_sub(layout.partitions.len(), Ordering::Relaxed);
        sync_dir(&self.topics_dir)?;
        std::fs::remove_dir_all(&doomed)
            .map_err(|e| BrokerError::io(format!("deleting {}", doomed.display()), e))?;
        tracing::info!(topic = %name, "deleted topic");
        Ok(())
    }

    /// A fresh directory name under `staging/`: unique by time and sequence, with at most
    /// `STAGING_NAME_PREFIX` characters of the topic's name for a person reading the
    /// directory. The whole name stays below the file system's 255-byte limit whatever
    /// the topic's name (up to 249 characters) is.
    fn staging_path(&self, name: &str) -> PathBuf {
        let seq = self.staging_seq.fetch_add(1, Ordering::Relaxed);
        // Names are ASCII (validated), so a byte cut is a character cut.
        let hint = &name[..name.len().min(STAGING_NAME_PREFIX)];
        self.staging_dir.join(format!("{}-{seq}-{hint}", now_ms()))
    }

    /// Closes every partition: answers queued publishes, flushes, writes clean checkpoints.
    /// Blocking.
    pub fn close(&self) -> Result<()> {
        let mut first_error = None;
        for topic in self.list() {
            for partition in &topic.layout().partitions {
                if let Err(error) = partition.close() {
                    tracing::error!(topic = %topic.name(), partition = partition.id, %error, "closing partition failed");
                    first_error.get_or_insert(error);
                }
            }
        }
        match first_error {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}

/// A topic directory's metadata, or why it is damaged (naming the file).
fn read_meta(dir: &Path, name: &str) -> Result<Loaded<TopicMeta>, String> {
    let path = dir.join(crate::topic::META_FILE);
    if !path.exists() {
        return Err(format!("{} is missing", path.display()));
    }
    let loaded = TopicMeta::read(dir).map_err(|e| e.to_string())?;
    let meta = &loaded.value;
    if meta.name != name {
        return Err(format!(
            "{} names topic {}, not the directory's {}",
            path.display(),
            shown(&meta.name),
            shown(name)
        ));
    }
    if !(1..=MAX_PARTITIONS_PER_TOPIC).contains(&meta.partitions) {
        return Err(format!(
            "{} says {} partitions, outside 1..={MAX_PARTITIONS_PER_TOPIC}",
            path.display(),
            meta.partitions
        ));
    }
    Ok(loaded)
}

fn close_partitions<P: std::borrow::Borrow<Partition>>(partitions: &[P]) {
    for partition in partitions.iter().map(P::borrow) {
        if let Err(error) = partition.close() {
            tracing::error!(partition = partition.id, %error, "closing partition failed");
        }
    }
}
