//! Topics: names, per-topic settings, metadata on disk, and how a publish picks a partition.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::{Config, FsyncSetting};
use crate::error::{BrokerError, Result};
use crate::meta_file;
use crate::partition::Partition;
use crate::storage::LogConfig;

/// Longest topic (and group) name: the brief's limit, which also keeps every path short.
pub const MAX_NAME_LEN: usize = 249;
/// File holding a topic's metadata, in the topic's directory.
pub const META_FILE: &str = "topic.toml";

pub use crate::error::shown;

/// Checks a topic or group name: 1..=249 characters of `[A-Za-z0-9._-]`, not `.` or `..`.
/// Runs before any path is built from the name.
pub fn validate_name(kind: &'static str, name: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(BrokerError::InvalidName {
            what: kind,
            name: name.to_owned(),
            reason: why.to_owned(),
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad(&format!("it is longer than {MAX_NAME_LEN} characters"));
    }
    if name == "." || name == ".." {
        return bad("\".\" and \"..\" are reserved");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return bad(&format!(
            "{c:?} is not allowed (use A-Z, a-z, 0-9, '.', '_', '-')"
        ));
    }
    Ok(())
}

// The partition of a key, `xxh64(key, seed 0) % partitions`: defined in `herald-format`
// so that the Rust client computes the same (the README documents it with test vectors).
pub use herald_format::partition_for_key;

/// Settings a topic overrides; unset ones follow the broker's configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TopicSettings {
    pub retention_ms: Option<u64>,
    pub retention_bytes: Option<u64>,
    pub segment_bytes: Option<u64>,
    pub fsync: Option<FsyncSetting>,
    pub fsync_interval_ms: Option<u64>,
    pub max_message_bytes: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_window_ms: Option<u64>,
}

/// What AlterTopic changes; `None` leaves a setting as it is. Only what can change under a
/// running topic is here: retention (applied by the writers' next retention pass), the
/// largest record (checked at the next publish) and the partition count (only upwards).
/// Segment size, fsync policy and the dedup window shape the open logs and stay as created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicAlter {
    pub retention_ms: Option<u64>,
    pub retention_bytes: Option<u64>,
    pub max_message_bytes: Option<usize>,
    pub partitions: Option<u32>,
}

impl TopicAlter {
    /// The topic's overrides with this change applied.
    pub fn apply(&self, settings: &TopicSettings) -> TopicSettings {
        TopicSettings {
            retention_ms: self.retention_ms.or(settings.retention_ms),
            retention_bytes: self.retention_bytes.or(settings.retention_bytes),
            max_message_bytes: self.max_message_bytes.or(settings.max_message_bytes),
            ..settings.clone()
        }
    }
}

/// The settings in force for a topic: its overrides over the broker's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveSettings {
    pub retention_ms: u64,
    pub retention_bytes: u64,
    pub segment_bytes: u64,
    pub fsync: FsyncSetting,
    pub fsync_interval_ms: u64,
    pub max_message_bytes: usize,
    pub dedup_window_ms: u64,
}

impl TopicSettings {
    pub fn effective(&self, config: &Config) -> EffectiveSettings {
        EffectiveSettings {
            retention_ms: self.retention_ms.unwrap_or(config.retention_ms),
            retention_bytes: self.retention_bytes.unwrap_or(config.retention_bytes),
            segment_bytes: self.segment_bytes.unwrap_or(config.segment_bytes),
            fsync: self.fsync.unwrap_or(config.fsync),
            fsync_interval_ms: self.fsync_interval_ms.unwrap_or(config.fsync_interval_ms),
            max_message_bytes: self.max_message_bytes.unwrap_or(config.max_message_bytes),
            dedup_window_ms: self.dedup_window_ms.unwrap_or(config.dedup_window_ms),
        }
    }
}

impl EffectiveSettings {
    pub fn validate(&self, config: &Config) -> Result<()> {
        let bad = |m: String| Err(BrokerError::InvalidSettings(m));
        if !(crate::storage::MIN_SEGMENT_BYTES..=crate::storage::MAX_SEGMENT_BYTES)
            .contains(&self.segment_bytes)
        {
            return bad(format!(
                "segment_bytes must be within {}..={}, got {}",
                crate::storage::MIN_SEGMENT_BYTES,
                crate::storage::MAX_SEGMENT_BYTES,
                self.segment_bytes
            ));
        }
        if (config.max_batch_bytes as u64) > self.segment_bytes {
            return bad(format!(
                "segment_bytes ({}) must hold the broker's largest batch (max_batch_bytes = {})",
                self.segment_bytes, config.max_batch_bytes
            ));
        }
        if self.fsync == FsyncSetting::Interval && self.fsync_interval_ms == 0 {
            return bad("fsync_interval_ms must be at least 1 with the interval policy".into());
        }
        if self.max_message_bytes == 0 || self.max_message_bytes > config.max_batch_bytes {
            return bad(format!(
                "max_message_bytes must be within 1..={} (the broker's max_batch_bytes)",
                config.max_batch_bytes
            ));
        }
        Ok(())
    }

    pub fn log_config(&self) -> LogConfig {
        LogConfig {
            segment_bytes: self.segment_bytes,
            fsync: self.fsync.policy(self.fsync_interval_ms),
            retention_ms: (self.retention_ms > 0).then_some(self.retention_ms),
            retention_bytes: (self.retention_bytes > 0).then_some(self.retention_bytes),
            msg_id_window_ms: self.dedup_window_ms,
            ..LogConfig::default()
        }
    }
}

/// What is stored in `topic.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TopicMeta {
    pub name: String,
    pub partitions: u32,
    pub created_ms: i64,
    #[serde(default)]
    pub settings: TopicSettings,
}

impl TopicMeta {
    /// Reads and checks `topic.toml` (see [`crate::meta_file`]); one without a checksum
    /// line is to be resealed by the caller once the topic has loaded.
    pub fn read(dir: &Path) -> Result<meta_file::Loaded<TopicMeta>> {
        let path = dir.join(META_FILE);
        let bytes = std::fs::read(&path)
            .map_err(|e| BrokerError::io(format!("reading {}", path.display()), e))?;
        meta_file::parse(&bytes).map_err(|e| {
            BrokerError::io(
                format!("parsing {}", path.display()),
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })
    }

    /// Writes the metadata, sealed, and syncs it; the caller renames the directory into
    /// place.
    pub fn write(&self, dir: &Path) -> Result<()> {
        self.write_as(dir, META_FILE)
    }

    /// Replaces the `topic.toml` of a live topic atomically: written whole to a temporary
    /// file, synced, renamed over the old one, and the directory synced. A crash leaves
    /// the old file or the new one, never a mix (the temporary file is ignored at load).
    pub fn replace(&self, dir: &Path) -> Result<()> {
        let temporary = format!("{META_FILE}.new");
        self.write_as(dir, &temporary)?;
        let (from, to) = (dir.join(&temporary), dir.join(META_FILE));
        std::fs::rename(&from, &to).map_err(|e| {
            BrokerError::io(
                format!("renaming {} to {}", from.display(), to.display()),
                e,
            )
        })?;
        Ok(crate::storage::sync_dir(dir)?)
    }

    fn write_as(&self, dir: &Path, file: &str) -> Result<()> {
        use std::io::Write;
        let path = dir.join(file);
        let text = toml::to_string(self).map_err(|e| {
            BrokerError::io(
                format!("encoding {}", path.display()),
                std::io::Error::other(e),
            )
        })?;
        let mut file = std::fs::File::create(&path)
            .map_err(|e| BrokerError::io(format!("creating {}", path.display()), e))?;
        file.write_all(meta_file::seal(&text).as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| BrokerError::io(format!("writing {}", path.display()), e))
    }
}

/// A live topic. Its name and creation time never change; its partitions, metadata and
/// settings form a [`Layout`] that AlterTopic replaces whole (partitions are only ever
/// added, and the existing ones are shared by the old and new layout). A publish or fetch
/// loads the layout once (lock-free) and works with that copy, so it sees either the old
/// or the new layout, never half of each. The `Topic` itself is the topic's identity
/// (groups compare it by pointer to tell a topic from a later one of the same name), so
/// an alter changes it in place instead of replacing it.
pub struct Topic {
    name: String,
    created_ms: i64,
    layout: ArcSwap<Layout>,
    /// Next partition for a keyless publish.
    round_robin: AtomicU64,
    /// What was published to and fetched from this topic since it was loaded.
    pub counters: TopicCounters,
    /// The partition count, sent on every change: group drivers wait on it to take up
    /// new partitions at once.
    grown: watch::Sender<u32>,
}

/// What an alter may change of a topic, in one immutable value.
pub struct Layout {
    pub meta: TopicMeta,
    pub settings: EffectiveSettings,
    pub partitions: Vec<Arc<Partition>>,
}

/// Per-topic traffic totals. They live on the topic, which every publish and fetch
/// already holds, so counting is a relaxed atomic add: no label lookup, no lock. The
/// metrics endpoint reads them at scrape time, and a deleted topic's series go with it.
#[derive(Debug, Default)]
pub struct TopicCounters {
    pub publish_requests: AtomicU64,
    pub publish_records: AtomicU64,
    pub publish_bytes: AtomicU64,
    pub fetch_records: AtomicU64,
    pub fetch_bytes: AtomicU64,
}

impl TopicCounters {
    pub fn published(&self, records: u64, bytes: u64) {
        self.publish_requests.fetch_add(1, Ordering::Relaxed);
        self.publish_records.fetch_add(records, Ordering::Relaxed);
        self.publish_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn fetched(&self, records: u64, bytes: u64) {
        self.fetch_records.fetch_add(records, Ordering::Relaxed);
        self.fetch_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

impl Topic {
    pub fn new(meta: TopicMeta, settings: EffectiveSettings, partitions: Vec<Partition>) -> Topic {
        let count = meta.partitions;
        Topic {
            name: meta.name.clone(),
            created_ms: meta.created_ms,
            layout: ArcSwap::from_pointee(Layout {
                meta,
                settings,
                partitions: partitions.into_iter().map(Arc::new).collect(),
            }),
            round_robin: AtomicU64::new(0),
            counters: TopicCounters::default(),
            grown: watch::Sender::new(count),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn created_ms(&self) -> i64 {
        self.created_ms
    }

    /// The partitions, metadata and settings in force now.
    pub fn layout(&self) -> Arc<Layout> {
        self.layout.load_full()
    }

    pub fn partition_count(&self) -> u32 {
        self.layout.load().meta.partitions
    }

    /// Installs an altered layout (the registry's alter, which has made it durable).
    pub(crate) fn set_layout(&self, layout: Layout) {
        let count = layout.meta.partitions;
        self.layout.store(Arc::new(layout));
        self.grown.send_replace(count);
    }

    /// A receiver that changes whenever the topic's layout does (partitions added).
    pub fn watch_layout(&self) -> watch::Receiver<u32> {
        self.grown.subscribe()
    }

    pub fn partition(&self, id: u32) -> Result<Arc<Partition>> {
        let layout = self.layout.load();
        layout
            .partitions
            .get(id as usize)
            .cloned()
            .ok_or_else(|| BrokerError::PartitionNotFound {
                topic: self.name.clone(),
                partition: id,
                partitions: layout.partitions.len(),
            })
    }

    /// The partition a publish goes to: the explicit one, else the first record's key
    /// hashed over the partition count in force, else round-robin.
    pub fn pick_partition(
        &self,
        explicit: Option<u32>,
        first_key: Option<&[u8]>,
    ) -> Result<Arc<Partition>> {
        let layout = self.layout.load();
        let count = layout.meta.partitions;
        let id = match (explicit, first_key) {
            (Some(id), _) => id,
            (None, Some(key)) => partition_for_key(key, count),
            (None, None) => {
                (self.round_robin.fetch_add(1, Ordering::Relaxed) % u64::from(count)) as u32
            }
        };
        layout
            .partitions
            .get(id as usize)
            .cloned()
            .ok_or_else(|| BrokerError::PartitionNotFound {
                topic: self.name.clone(),
                partition: id,
                partitions: layout.partitions.len(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["orders", "order.created", "a", "A-Z_0.9", &"x".repeat(249)] {
            validate_name("topic", ok).unwrap();
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a b",
            "ü",
            "a\0",
            &"x".repeat(250),
            "../etc",
        ] {
            assert!(validate_name("topic", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn long_input_is_cut_in_messages() {
        assert_eq!(shown("orders"), "\"orders\"");
        let long = "é".repeat(10_000);
        let cut = shown(&long);
        assert!(cut.len() < 200, "{cut}");
        assert!(cut.ends_with("... (20000 bytes)"), "{cut}");
        let message = validate_name("topic", &"x".repeat(20_000))
            .unwrap_err()
            .to_string();
        assert!(message.len() < 300, "{message}");
    }
}
