//! A group's files: `group.toml` (settings, dead-letter topic, redrive progress) and
//! `state` (the machine's snapshot), each written to a temporary file, fsynced and
//! renamed ([`write_atomic`]); and bringing a loaded snapshot's positions down to the
//! logs' ends ([`clamp_to_logs`]).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::driver::{Group, Inner};
use crate::error::{BrokerError, Result};
use crate::group::{GroupSnapshot, OrderingMode};
use crate::meta_file;
use crate::topic::Topic;

pub(super) const META_FILE: &str = "group.toml";
pub(super) const STATE_FILE: &str = "state";

/// `group.toml`. Unknown keys are refused, so damage that turns a key into another word is
/// found rather than read as the key's default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GroupMeta {
    pub(super) topic: String,
    pub(super) group: String,
    pub(super) created_ms: i64,
    /// The topic's `created_ms`, so a group never attaches to a new topic of the same name.
    #[serde(default)]
    pub(super) topic_created_ms: i64,
    pub(super) ack_deadline_ms: u64,
    pub(super) retry_backoff_min_ms: u64,
    pub(super) retry_backoff_max_ms: u64,
    pub(super) max_delivery_attempts: u32,
    pub(super) ordering: String,
    #[serde(default)]
    pub(super) dead_letter_topic: Option<String>,
    /// Redrive progress: per partition of `redrive_topic`, the offset scanned up to.
    #[serde(default)]
    pub(super) redrive_topic: Option<String>,
    #[serde(default)]
    pub(super) redrive_cursor: Vec<u64>,
}

fn ordering_name(mode: OrderingMode) -> &'static str {
    match mode {
        OrderingMode::Key => "key",
        OrderingMode::Partition => "partition",
        OrderingMode::None => "none",
    }
}

pub(super) fn ordering_from_name(name: &str) -> OrderingMode {
    match name {
        "partition" => OrderingMode::Partition,
        "none" => OrderingMode::None,
        _ => OrderingMode::Key,
    }
}

/// Writes `bytes` to `dir/name` through a temporary file, fsync and rename.
pub(super) fn write_raw(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    write_atomic(dir, name, bytes)
}

/// Writes `bytes` to `dir/name` through a temporary file, fsync and rename.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let mut file = std::fs::File::create(&tmp)
        .map_err(|e| BrokerError::io(format!("creating {}", tmp.display()), e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| BrokerError::io(format!("writing {}", tmp.display()), e))?;
    std::fs::rename(&tmp, &path)
        .map_err(|e| BrokerError::io(format!("renaming {}", tmp.display()), e))?;
    crate::storage::sync_dir(dir)?;
    Ok(())
}

impl Group {
    fn meta(&self, inner: &Inner) -> GroupMeta {
        let s = &inner.config.settings;
        GroupMeta {
            topic: self.topic_name.clone(),
            group: self.name.clone(),
            created_ms: self.created_ms,
            topic_created_ms: self.topic.created_ms(),
            ack_deadline_ms: s.ack_deadline_ms,
            retry_backoff_min_ms: s.retry_backoff_min_ms,
            retry_backoff_max_ms: s.retry_backoff_max_ms,
            max_delivery_attempts: s.max_delivery_attempts,
            ordering: ordering_name(s.ordering).to_owned(),
            dead_letter_topic: inner.config.dead_letter_topic.clone(),
            redrive_topic: inner.redrive_topic.clone(),
            redrive_cursor: inner.redrive_cursor.clone(),
        }
    }

    /// Writes `group.toml`. Blocking.
    pub(super) fn write_meta(&self) -> Result<()> {
        // Every write of the group's files goes under this lock, so two never interleave.
        let _writing = self.persisted.lock().unwrap_or_else(|p| p.into_inner());
        let meta = self.meta(&self.lock());
        let text = toml::to_string(&meta)
            .map_err(|e| BrokerError::io("encoding group.toml", std::io::Error::other(e)))?;
        write_atomic(&self.dir, META_FILE, meta_file::seal(&text).as_bytes())
    }

    /// Writes both files of a new group into `dir` (its staging directory). Blocking.
    pub(super) fn write_files(&self, dir: &Path) -> Result<()> {
        let mut last = self.persisted.lock().unwrap_or_else(|p| p.into_inner());
        let (bytes, meta) = {
            let inner = self.lock();
            (inner.state.snapshot().encode(), self.meta(&inner))
        };
        let text = toml::to_string(&meta)
            .map_err(|e| BrokerError::io("encoding group.toml", std::io::Error::other(e)))?;
        write_atomic(dir, STATE_FILE, &bytes)?;
        write_atomic(dir, META_FILE, meta_file::seal(&text).as_bytes())?;
        *last = bytes;
        Ok(())
    }

    /// The group's files as they would be written now: `group.toml` (sealed) and `state`.
    pub fn files(&self) -> Result<(Vec<u8>, Vec<u8>)> {
        let (state, meta) = {
            let inner = self.lock();
            (inner.state.snapshot().encode(), self.meta(&inner))
        };
        let text = toml::to_string(&meta)
            .map_err(|e| BrokerError::io("encoding group.toml", std::io::Error::other(e)))?;
        Ok((meta_file::seal(&text).into_bytes(), state))
    }

    /// Writes the state if it changed since the last write. Blocking.
    pub fn persist(&self) -> Result<()> {
        let mut last = self.persisted.lock().unwrap_or_else(|p| p.into_inner());
        if *self.stop.borrow() && !self.dir.exists() {
            return Ok(()); // deleted
        }
        let bytes = self.lock().state.snapshot().encode();
        if *last == bytes {
            return Ok(());
        }
        write_atomic(&self.dir, STATE_FILE, &bytes)?;
        *last = bytes;
        Ok(())
    }
}

/// Brings every partition position of `snapshot` past its log's end down to it (see
/// [`crate::group::PartitionSnapshot::clamp_to_log_end`]), with a WARN per partition;
/// returns how many partitions changed. `names` (topic, group) are for logs.
pub(super) fn clamp_to_logs(
    snapshot: &mut GroupSnapshot,
    topic: &Topic,
    names: (&str, &str),
) -> u64 {
    let mut reset = 0;
    for (index, (p, partition)) in snapshot
        .partitions
        .iter_mut()
        .zip(&topic.layout().partitions)
        .enumerate()
    {
        let end = partition.reader().high_watermark();
        if let Some(before) = p.clamp_to_log_end(end) {
            reset += 1;
            tracing::warn!(topic = %names.0, group = %names.1, partition = index, committed = %before, log_end = end, "the group's position was past the end of the log (records lost after an unclean stop?); later records at those offsets will be delivered");
        }
    }
    reset
}
