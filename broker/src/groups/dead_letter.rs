//! Dead letters: the reserved `herald-dlq-*` headers, appending a message that failed
//! every attempt to the group's dead-letter topic, and redriving dead letters back to
//! their source partitions.
//!
//! The group's task hands a dead letter to the dead-letter partition's writer and goes on
//! delivering; the message is confirmed as dead-lettered in the machine when the append's
//! commit (an fsync under fsync `always`) comes back, so a slow dead-letter topic holds up
//! only the dead letters' own keys, never the group's other messages.

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use std::sync::Arc;

use super::driver::Group;
use super::read::FETCH_CHUNK_BYTES;
use super::read::{StoredRecord, is_gone, read_records};
use crate::error::{BrokerError, Result};
use crate::group::DeadLetter;
use crate::registry::Registry;
use crate::storage::{BatchBuilder, Record, ValidatedBatch, batch};

/// A dead letter handed to its partition's writer: resolves when the append is committed
/// (or failed).
pub(super) type DeadLetterCommit = BoxFuture<'static, Result<()>>;

/// Reserved header names of dead letters (see groups.proto).
pub const DLQ_TOPIC: &str = "herald-dlq-topic";
pub const DLQ_GROUP: &str = "herald-dlq-group";
pub const DLQ_PARTITION: &str = "herald-dlq-partition";
pub const DLQ_OFFSET: &str = "herald-dlq-offset";
pub const DLQ_ATTEMPTS: &str = "herald-dlq-attempts";
pub const DLQ_REASON: &str = "herald-dlq-reason";
pub(super) const DLQ_PREFIX: &str = "herald-dlq-";

impl Group {
    /// Hands one dead letter to a partition writer of the dead-letter topic, waiting only
    /// for room in its queue, not for the commit: returns the commit to await before
    /// [`confirm_dead_letter`](Self::confirm_dead_letter). `None` when there is nothing to
    /// append (the record is gone or damaged): the dead letter is confirmed already.
    pub(super) async fn send_dead_letter(
        &self,
        registry: &Registry,
        dead: &DeadLetter,
    ) -> Result<Option<DeadLetterCommit>> {
        let dlq = self.lock().config.dead_letter_topic.clone();
        let Some(dlq) = dlq else {
            return Err(BrokerError::NoDeadLetterTopic {
                topic: self.topic_name.clone(),
                group: self.name.clone(),
            });
        };
        let topic = registry.get(&dlq)?;
        let source = self.topic.partition(dead.partition.0)?;
        let record = read_records(source.reader(), &[dead.offset.0])
            .pop()
            .flatten();
        if let Some(record) = record {
            let extra = [
                (DLQ_TOPIC, self.topic_name.clone()),
                (DLQ_GROUP, self.name.clone()),
                (DLQ_PARTITION, dead.partition.0.to_string()),
                (DLQ_OFFSET, dead.offset.0.to_string()),
                (DLQ_ATTEMPTS, dead.attempts.to_string()),
                (DLQ_REASON, dead.last_reason.to_string()),
            ];
            let mut headers: Vec<(&str, &[u8])> = record
                .headers
                .iter()
                .filter(|(k, _)| !k.starts_with(DLQ_PREFIX))
                .map(|(k, v)| (k.as_str(), v.as_ref()))
                .collect();
            headers.extend(extra.iter().map(|(k, v)| (*k, v.as_bytes())));
            let batch = build_batch(
                registry,
                record.timestamp,
                record.key.as_deref(),
                &record.value,
                &headers,
            )?;
            let partition = topic.pick_partition(None, record.key.as_deref())?;
            let commit = partition.enqueue(batch).await?;
            #[cfg(test)]
            let mut held = self.hold_dead_letters.subscribe();
            return Ok(Some(
                async move {
                    #[cfg(test)]
                    let _ = held.wait_for(|held| !*held).await;
                    commit.await.map(drop)
                }
                .boxed(),
            ));
        } else if is_gone(source.reader(), dead.offset.0) {
            tracing::warn!(topic = %self.topic_name, group = %self.name, partition = %dead.partition, offset = %dead.offset, "a dead letter's record is gone from the log; dropping it");
        } else {
            // Its batch is damaged (reads answer DATA_LOSS): the bytes cannot be copied, and
            // the message has failed every attempt, so it is counted as dead-lettered.
            tracing::error!(topic = %self.topic_name, group = %self.name, partition = %dead.partition, offset = %dead.offset, "a dead letter's record cannot be read from the log (damaged batch); counting it as dead-lettered without a copy");
        }
        self.confirm_dead_letter(dead);
        Ok(None)
    }

    /// The dead letter is in the dead-letter topic (or has nothing to copy): the message
    /// is done.
    pub(super) fn confirm_dead_letter(&self, dead: &DeadLetter) {
        let _ = self.lock().state.dead_lettered(dead.partition, dead.offset);
    }
}

impl Group {
    /// Republishes up to `max` (0 = all) of the group's dead letters to their source
    /// partitions, without the `herald-dlq-*` headers. Progress is kept per dead-letter
    /// partition, so a dead letter is redriven once. (`GroupRegistry::redrive` is the
    /// entry point.)
    ///
    /// `registered` is the group as its registry holds it now, if it still does: the one
    /// whose `group.toml` records the progress.
    pub(super) async fn redrive(
        &self,
        registry: &Registry,
        registered: Option<Arc<Group>>,
        max: u64,
    ) -> Result<u64> {
        let group = self;
        let _one = group.redrive.lock().await;
        let dlq =
            group
                .config()
                .dead_letter_topic
                .ok_or_else(|| BrokerError::NoDeadLetterTopic {
                    topic: group.topic_name.clone(),
                    group: group.name.clone(),
                })?;
        let dlq_topic = registry.get(&dlq)?;
        let dlq_layout = dlq_topic.layout();
        let dlq_partitions = dlq_layout.partitions.len();
        let mut cursor = {
            let inner = group.lock();
            if inner.redrive_topic.as_deref() == Some(dlq.as_str())
                && inner.redrive_cursor.len() <= dlq_partitions
            {
                // Partitions added to the dead-letter topic since are scanned from 0.
                let mut cursor = inner.redrive_cursor.clone();
                cursor.resize(dlq_partitions, 0);
                cursor
            } else {
                vec![0; dlq_partitions]
            }
        };
        let max = if max == 0 { u64::MAX } else { max };
        let mut count = 0u64;
        'partitions: for (index, partition) in dlq_layout.partitions.iter().enumerate() {
            let reader = partition.reader();
            let end = reader.high_watermark();
            let mut at = cursor[index].max(reader.start_offset());
            while at < end {
                let chunk = match reader.read(at, FETCH_CHUNK_BYTES) {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => break,
                    Err(e) => return Err(e.into()),
                };
                let mut found = Vec::new();
                let mut stopped_at = None;
                'scan: for view in batch::batches(&chunk.bytes) {
                    let Ok(view) = view else { break };
                    for record in view.records() {
                        let Ok(r) = record else { break 'scan };
                        if r.offset < at || r.offset >= end {
                            continue;
                        }
                        let mut source_topic = None;
                        let mut source_group = None;
                        let mut source_partition = None;
                        for (k, v) in r.headers() {
                            match k {
                                DLQ_TOPIC => source_topic = Some(v),
                                DLQ_GROUP => source_group = Some(v),
                                DLQ_PARTITION => {
                                    source_partition = std::str::from_utf8(v)
                                        .ok()
                                        .and_then(|s| s.parse::<u32>().ok())
                                }
                                _ => {}
                            }
                        }
                        if source_topic != Some(group.topic_name.as_bytes())
                            || source_group != Some(group.name.as_bytes())
                        {
                            continue;
                        }
                        if count + found.len() as u64 >= max {
                            stopped_at = Some(r.offset);
                            break 'scan;
                        }
                        found.push((
                            source_partition,
                            StoredRecord {
                                offset: r.offset,
                                timestamp: r.timestamp,
                                key: r.key.map(|k| chunk.bytes.slice_ref(k)),
                                value: chunk.bytes.slice_ref(r.value),
                                headers: r
                                    .headers()
                                    .filter(|(k, _)| !k.starts_with(DLQ_PREFIX))
                                    .map(|(k, v)| (k.to_owned(), chunk.bytes.slice_ref(v)))
                                    .collect(),
                            },
                        ));
                    }
                }
                for (source_partition, record) in found {
                    let headers: Vec<(&str, &[u8])> = record
                        .headers
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_ref()))
                        .collect();
                    let batch = build_batch(
                        registry,
                        record.timestamp,
                        record.key.as_deref(),
                        &record.value,
                        &headers,
                    )?;
                    let target = match source_partition {
                        Some(p) if p < group.topic.partition_count() => group.topic.partition(p)?,
                        _ => group.topic.pick_partition(None, record.key.as_deref())?,
                    };
                    target.append(batch).await?;
                    count += 1;
                    cursor[index] = record.offset + 1;
                }
                if let Some(stopped_at) = stopped_at {
                    cursor[index] = cursor[index].max(stopped_at);
                    break 'partitions;
                }
                at = chunk.next_offset.max(at + 1).min(end);
                cursor[index] = cursor[index].max(at);
                if count >= max {
                    break 'partitions;
                }
            }
        }
        {
            let mut inner = group.lock();
            inner.redrive_topic = Some(dlq);
            inner.redrive_cursor = cursor;
        }
        if let Some(writer) = registered {
            tokio::task::spawn_blocking(move || writer.write_meta())
                .await
                .map_err(|cause| BrokerError::TaskFailed {
                    what: "writing group.toml",
                    cause,
                })??;
        }
        Ok(count)
    }
}

/// One record as a validated storage batch.
pub(super) fn build_batch(
    registry: &Registry,
    timestamp: i64,
    key: Option<&[u8]>,
    value: &[u8],
    headers: &[(&str, &[u8])],
) -> Result<ValidatedBatch> {
    let mut builder = BatchBuilder::with_capacity(batch::HEADER_BYTES + value.len() + 256);
    builder.push(&Record {
        timestamp,
        key,
        value,
        headers,
    });
    let max = registry.config().max_batch_bytes;
    ValidatedBatch::new(Bytes::from(builder.finish()), max).map_err(BrokerError::UnbuildableBatch)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::groups::GroupRegistry;

    use tokio::sync::mpsc;

    use super::*;
    use crate::group::{GroupSettings, MemberId, MemberOptions, PartitionInfo};
    use crate::groups::test_support::{receive, test_registry};
    use crate::groups::{GroupConfig, MEMBER_QUEUE, NackTarget, Outgoing};

    /// Waits (10 s at most) until `check` holds for the group's partition 0.
    async fn until(group: &Group, what: &str, check: impl Fn(&PartitionInfo) -> bool) {
        for _ in 0..1_000 {
            if check(&group.describe().0.partitions[0]) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("not within 10 s: {what}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_letter_waiting_for_its_commit_does_not_hold_up_other_messages() {
        let dir = tempfile::tempdir().unwrap();
        let registry = test_registry(dir.path(), crate::config::FsyncSetting::Always);
        let settings = crate::topic::TopicSettings::default();
        let topic = registry.create("t", 1, settings.clone()).unwrap();
        let dlq = registry.create("dlq", 1, settings).unwrap();
        let groups = Arc::new(GroupRegistry::open(registry.clone()).unwrap());
        groups.start();
        let config = GroupConfig {
            settings: GroupSettings {
                max_delivery_attempts: 1,
                ..GroupSettings::default()
            },
            dead_letter_topic: Some("dlq".into()),
        };
        let group = groups
            .create(topic.clone(), "g", config, vec![0], false)
            .await
            .unwrap();
        // The dead-letter topic's commits do not come back until the test says, as with a
        // disk whose fsync takes that long.
        group.hold_dead_letters.send_replace(true);
        let append = |key: &'static [u8]| {
            let batch = build_batch(&registry, 1, Some(key), key, &[]).unwrap();
            let partition = topic.partition(0).unwrap();
            async move { partition.append(batch).await.unwrap() }
        };
        append(b"a").await;
        let (tx, mut rx) = mpsc::channel(MEMBER_QUEUE);
        let member = MemberId(1);
        group
            .join(member, "one".into(), MemberOptions::default(), false, tx)
            .unwrap();
        let ack_id = loop {
            let item = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("a delivery within 10 s")
                .expect("stream open")
                .expect("no error");
            if let Outgoing::Deliveries(d) = item {
                break d.singles[0].delivery.ack_id.encode();
            }
        };
        // Its only attempt fails: the message goes to the dead-letter topic.
        group
            .nack(member, NackTarget::Id(&ack_id), None, "failed")
            .unwrap();
        let dlq_log = dlq.partition(0).unwrap().reader().clone();
        for _ in 0..1_000 {
            if dlq_log.high_watermark() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(dlq_log.high_watermark(), 1, "the dead letter is written");

        // While its commit is held, another key's message is delivered.
        append(b"b").await;
        assert_eq!(receive(&mut rx, 1).await, [1]);
        let p = &group.describe().0.partitions[0];
        assert_eq!(
            (p.dead_lettering, p.dead_lettered_count),
            (1, 0),
            "delivered while the dead letter waits for its commit"
        );

        // The commit comes back: the message is done.
        group.hold_dead_letters.send_replace(false);
        until(&group, "the dead letter is confirmed", |p| {
            p.dead_lettering == 0 && p.dead_lettered_count == 1
        })
        .await;
        let copied = read_records(&dlq_log, &[0]).pop().flatten().unwrap();
        assert_eq!(copied.value.as_ref(), b"a");
        assert!(
            copied
                .headers
                .iter()
                .any(|(k, v)| k == DLQ_OFFSET && v.as_ref() == b"0")
        );
        groups.close();
    }
}
