//! What members' streams and admin RPCs call on a [`Group`]: join, leave, ack, nack,
//! extend and credit; update, seek, describe and list pending. Each takes the state's
//! lock for its machine calls only and wakes the driver.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::GroupConfig;
use super::delivery::{AckRange, MemberTx, NackTarget, Outgoing};
use super::driver::{Group, MemberSlot, PendingWithKey};
use super::read::read_records;
use crate::error::{BrokerError, Result};
use crate::group::{
    AckId, KeyHash, MemberId, MemberOptions, NackOutcome, Offset, PartitionId, PendingFilter,
    PendingList, SeekTarget,
};

impl Group {
    /// Adds a member whose stream is `tx`; sends it the Joined response first.
    pub fn join(
        &self,
        member: MemberId,
        client_id: String,
        options: MemberOptions,
        batched: bool,
        tx: MemberTx,
    ) -> Result<()> {
        let mut inner = self.lock();
        let partitions = inner.state.join(member, options, self.now_ms())?;
        // The channel is fresh: this cannot be full.
        let _ = tx.try_send(Ok(Outgoing::Joined {
            member,
            partitions,
            config: inner.config.clone(),
        }));
        inner.members.insert(
            member,
            MemberSlot {
                tx,
                client_id,
                batched,
                outbox: VecDeque::new(),
                assignment: None,
            },
        );
        drop(inner);
        self.wake();
        Ok(())
    }

    /// Removes a member (its stream closed). Idempotent.
    pub fn leave(&self, member: MemberId) {
        let mut inner = self.lock();
        inner.members.remove(&member);
        let _ = inner.state.leave(member, self.now_ms());
        drop(inner);
        self.wake();
    }

    /// Acks by id and by range; malformed ack ids and ranges are INVALID_ARGUMENT, unknown
    /// or stale ones are ignored.
    pub fn ack(&self, member: MemberId, ack_ids: &[Bytes], ranges: &[AckRange]) -> Result<()> {
        for range in ranges {
            range.check()?;
        }
        // The ids before a malformed one are acked, as if one by one.
        let mut result = Ok(());
        let mut ids = Vec::with_capacity(ack_ids.len());
        for id in ack_ids {
            match AckId::decode(id) {
                Ok(id) => ids.push(id),
                Err(error) => {
                    result = Err(BrokerError::from(error));
                    break;
                }
            }
        }
        let mut inner = self.lock();
        let ids = ids.into_iter().chain(ranges.iter().flat_map(AckRange::ids));
        let acked = inner.state.ack_many(member, ids).unwrap_or(0);
        drop(inner);
        self.counters.acks.fetch_add(acked, Ordering::Relaxed);
        result?;
        self.wake();
        Ok(())
    }

    /// Nacks one delivery by id, or the messages of a range.
    pub fn nack(
        &self,
        member: MemberId,
        target: NackTarget<'_>,
        delay_ms: Option<u32>,
        reason: &str,
    ) -> Result<()> {
        let ids: Vec<AckId> = match target {
            NackTarget::Id(ack_id) => vec![AckId::decode(ack_id)?],
            NackTarget::Range(range) => {
                range.check()?;
                range.ids().collect()
            }
        };
        let now = self.now_ms();
        let mut nacked = 0;
        let mut inner = self.lock();
        for id in &ids {
            let outcome = inner
                .state
                .nack(member, id, delay_ms.map(u64::from), reason, now);
            if matches!(
                outcome,
                Ok(NackOutcome::Retry { .. } | NackOutcome::DeadLetter)
            ) {
                nacked += 1;
            }
        }
        drop(inner);
        self.counters.nacks.fetch_add(nacked, Ordering::Relaxed);
        self.wake();
        Ok(())
    }

    pub fn extend(
        &self,
        member: MemberId,
        ack_ids: &[Bytes],
        ranges: &[AckRange],
        extra_ms: u32,
    ) -> Result<()> {
        for range in ranges {
            range.check()?;
        }
        let mut inner = self.lock();
        let now = self.now_ms();
        for id in ack_ids {
            let id = AckId::decode(id)?;
            let _ = inner.state.extend(member, &id, u64::from(extra_ms), now);
        }
        for range in ranges {
            for id in range.ids() {
                let _ = inner.state.extend(member, &id, u64::from(extra_ms), now);
            }
        }
        drop(inner);
        self.wake();
        Ok(())
    }

    pub fn credit(&self, member: MemberId, messages: u32, bytes: u64) {
        let _ = self.lock().state.credit(member, u64::from(messages), bytes);
        self.wake();
    }

    // ---- admin ----

    /// Replaces the settings and writes `group.toml`. Blocking.
    pub fn update(&self, config: GroupConfig) -> Result<()> {
        {
            let mut inner = self.lock();
            inner.state.update_settings(config.settings.clone())?;
            inner.config = config;
        }
        self.write_meta()?;
        self.wake();
        Ok(())
    }

    /// Moves partitions to the given offsets; returns the new committed offsets.
    pub fn seek(&self, offsets: &[(u32, u64)]) -> Result<Vec<(u32, u64)>> {
        let mut inner = self.lock();
        let mut moved = Vec::with_capacity(offsets.len());
        for &(partition, offset) in offsets {
            let done = inner.state.seek(
                SeekTarget::Partition(PartitionId(partition)),
                Offset(offset),
            )?;
            moved.extend(done.into_iter().map(|(p, o)| (p.0, o.0)));
        }
        drop(inner);
        self.wake();
        Ok(moved)
    }

    /// The description as DescribeGroup shows it, with each member's client id.
    pub fn describe(
        &self,
    ) -> (
        crate::group::GroupDescription,
        GroupConfig,
        HashMap<u64, String>,
    ) {
        let inner = self.lock();
        let clients = inner
            .members
            .iter()
            .map(|(id, slot)| (id.0, slot.client_id.clone()))
            .collect();
        (inner.state.describe(), inner.config.clone(), clients)
    }

    /// Pending messages, with their keys read back from the log (hash collisions with a
    /// key filter are dropped).
    pub fn pending(
        &self,
        partition: Option<u32>,
        key: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<PendingWithKey>, bool)> {
        let filter = PendingFilter {
            partition: partition.map(PartitionId),
            key: key.map(KeyHash::of),
            limit,
        };
        let PendingList {
            messages,
            truncated,
        } = self.lock().state.pending(&filter)?;
        let mut out = Vec::with_capacity(messages.len());
        let mut i = 0;
        while i < messages.len() {
            let p = messages[i].partition;
            let mut j = i;
            while j < messages.len() && messages[j].partition == p {
                j += 1;
            }
            let offsets: Vec<u64> = messages[i..j].iter().map(|m| m.offset.0).collect();
            let partition = self.topic.partition(p.0)?;
            let records = read_records(partition.reader(), &offsets);
            for (message, record) in messages[i..j].iter().zip(records) {
                let record_key = record.and_then(|r| r.key);
                if let Some(wanted) = key
                    && record_key.as_deref() != Some(wanted)
                {
                    continue;
                }
                out.push((*message, record_key));
            }
            i = j;
        }
        Ok((out, truncated))
    }
}
