//! [`GroupState`]: one consumer group of one topic, as a deterministic state machine.
//!
//! The driver (the broker's Subscribe handler) calls it with what happened: a member
//! joined or left, records were read from the log, a member acked, nacked or extended, time
//! passed. The machine answers with deliveries, outcomes and queued [`Action`]s, and never
//! does I/O or reads a clock itself: `now` is milliseconds on the driver's clock, which is
//! what lets the tests drive hours of redeliveries in microseconds.
//!
//! Bookkeeping this module owns, around the per-partition tables of `partition`:
//! - members, their in-flight windows and credit, and which partitions each owns;
//! - the deadline index `(deadline, partition, offset)` of every in-flight message, so
//!   `tick` finds expiries without scanning;
//! - the group-wide tracked count that caps memory across partitions;
//! - the outbox: dead letters to append, and members whose assignment changed.

use std::collections::{BTreeMap, BTreeSet};

use super::assignment;
use super::deadlines::DeadlineIndex;
use super::error::GroupError;
use super::limits::{
    DEFAULT_PENDING_LIMIT, GroupLimits, MAX_EXTEND_MS, MAX_MEMBER_IN_FLIGHT_MESSAGES,
    MAX_PARTITIONS, MAX_PENDING_LIMIT, MAX_POLL_MESSAGES, MAX_RETRY_BACKOFF_MS,
    MAX_SNAPSHOT_ENTRIES_PER_PARTITION,
};
use super::partition::{InFlight, OfferResult, PartitionState};
use super::snapshot::GroupSnapshot;
use super::types::{
    AckId, AckOutcome, Action, AssignmentChange, DeadLetter, Delivery, Expired, ExtendOutcome,
    FailureReason, GroupDescription, GroupSettings, Handover, MemberId, MemberInfo, MemberOptions,
    NackOutcome, OfferedRecord, Offset, OrderingMode, Ownership, PartitionId, PartitionInfo,
    PendingFilter, PendingList, PendingMessage, SeekTarget,
};

type Result<T, E = GroupError> = std::result::Result<T, E>;

/// One connected member (one open Subscribe stream).
#[derive(Debug, Clone)]
struct Member {
    /// Join order: "oldest first" listings and assignment tie-breaks.
    join_seq: u64,
    joined_at_ms: u64,
    options: MemberOptions,
    /// Deliveries it holds unacked, and their bytes: its window's fill.
    in_flight_messages: u32,
    in_flight_bytes: u64,
    /// Credit left, used only with `credit_flow_control`.
    credit_messages: u64,
    credit_bytes: u64,
    /// Partitions it gets deliveries from (not those draining away from it).
    owned: BTreeSet<PartitionId>,
    /// The assignment its stream was last told, to compute the next change.
    notified: BTreeSet<PartitionId>,
    /// Where the next poll starts in `owned`, so partitions take turns.
    cursor: usize,
}

/// What a member may still receive during one poll.
struct Budget {
    messages: u32,
    max_messages: u32,
    bytes: u64,
    max_bytes: u64,
    /// `(messages, bytes)` of credit, when the member uses credit flow control.
    credit: Option<(u64, u64)>,
}

impl Budget {
    fn of(member: &Member) -> Budget {
        Budget {
            messages: member.in_flight_messages,
            max_messages: member.options.max_in_flight_messages,
            bytes: member.in_flight_bytes,
            max_bytes: member.options.max_in_flight_bytes,
            credit: member
                .options
                .credit_flow_control
                .then_some((member.credit_messages, member.credit_bytes)),
        }
    }

    /// Sends while below the window (so the last message may overshoot the byte limit)
    /// and, with credit, while at least one message and one byte of credit remain.
    fn can_send(&self) -> bool {
        self.messages < self.max_messages
            && self.bytes < self.max_bytes
            && self
                .credit
                .is_none_or(|(messages, bytes)| messages >= 1 && bytes > 0)
    }

    fn charge(&mut self, size_bytes: u32) {
        self.messages += 1;
        self.bytes = self.bytes.saturating_add(u64::from(size_bytes));
        if let Some((messages, bytes)) = &mut self.credit {
            *messages = messages.saturating_sub(1);
            *bytes = bytes.saturating_sub(u64::from(size_bytes));
        }
    }
}

/// A consumer group's delivery state: see the module docs of `group`.
#[derive(Debug, Clone)]
pub struct GroupState {
    settings: GroupSettings,
    limits: GroupLimits,
    /// One per partition of the topic, indexed by partition id.
    partitions: Vec<PartitionState>,
    members: BTreeMap<MemberId, Member>,
    next_join_seq: u64,
    /// Sequence number of the next delivery: the generation in ack ids.
    next_delivery: u64,
    /// The ack deadline of every in-flight message, in deadline order; also holds entries
    /// of deliveries already settled until they are dropped (see `deadlines`).
    deadlines: DeadlineIndex,
    /// Sum of the partitions' tracked messages, checked against the group limit.
    tracked_total: usize,
    /// Dead letters emitted and not yet taken by the driver.
    dead_letters: Vec<DeadLetter>,
    /// Members whose assignment may differ from what their stream was told.
    dirty: BTreeSet<MemberId>,
}

impl GroupState {
    /// A new group whose partition `i` starts at `start_offsets[i]` (the driver resolves
    /// earliest, latest or a timestamp to offsets).
    pub fn new(
        settings: GroupSettings,
        limits: GroupLimits,
        start_offsets: &[Offset],
    ) -> Result<GroupState> {
        let partitions = start_offsets
            .iter()
            .map(|start| PartitionState::new(start.0))
            .collect();
        GroupState::with_partitions(settings, limits, partitions)
    }

    /// A group rebuilt from a snapshot: every partition restarts at its committed offset,
    /// skips its done ranges and remembers delivery attempts. No members, nothing in flight.
    pub fn restore(
        settings: GroupSettings,
        limits: GroupLimits,
        snapshot: &GroupSnapshot,
    ) -> Result<GroupState> {
        snapshot.validate()?;
        let partitions = snapshot
            .partitions
            .iter()
            .map(PartitionState::restore)
            .collect();
        GroupState::with_partitions(settings, limits, partitions)
    }

    fn with_partitions(
        settings: GroupSettings,
        limits: GroupLimits,
        partitions: Vec<PartitionState>,
    ) -> Result<GroupState> {
        if partitions.is_empty() || partitions.len() > MAX_PARTITIONS {
            return Err(GroupError::InvalidPartitionCount {
                count: partitions.len(),
                max: MAX_PARTITIONS,
            });
        }
        limits.validate()?;
        let settings = settings.validated()?;
        let mut partitions = partitions;
        for partition in &mut partitions {
            partition.set_keyed(settings.ordering == OrderingMode::Key);
        }
        Ok(GroupState {
            settings,
            limits,
            partitions,
            members: BTreeMap::new(),
            next_join_seq: 0,
            next_delivery: 0,
            deadlines: DeadlineIndex::default(),
            tracked_total: 0,
            dead_letters: Vec::new(),
            dirty: BTreeSet::new(),
        })
    }

    /// The durable state (see `snapshot`). Cheap enough to take after every batch of acks.
    pub fn snapshot(&self) -> GroupSnapshot {
        GroupSnapshot {
            partitions: self
                .partitions
                .iter()
                .map(|p| p.snapshot(MAX_SNAPSHOT_ENTRIES_PER_PARTITION))
                .collect(),
        }
    }

    pub fn settings(&self) -> &GroupSettings {
        &self.settings
    }

    pub fn limits(&self) -> &GroupLimits {
        &self.limits
    }

    pub fn partition_count(&self) -> usize {
        self.partitions.len()
    }

    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// Extends the group to `count` partitions when its topic gained some (a topic never
    /// loses any: a smaller count changes nothing). Each new partition is consumed from
    /// offset 0, its first record, so nothing published to it is skipped whenever the
    /// group takes it up; the assignment is rebalanced over the members at once.
    pub fn add_partitions(&mut self, count: usize) -> Result<()> {
        if count <= self.partitions.len() {
            return Ok(());
        }
        if count > MAX_PARTITIONS {
            return Err(GroupError::InvalidPartitionCount {
                count,
                max: MAX_PARTITIONS,
            });
        }
        let keyed = self.settings.ordering == OrderingMode::Key;
        self.partitions.resize_with(count, || {
            let mut partition = PartitionState::new(0);
            partition.set_keyed(keyed);
            partition
        });
        self.rebalance();
        Ok(())
    }

    /// Replaces the settings. In-flight deliveries keep their deadlines; a new ordering
    /// mode or attempt limit applies from the next delivery or failure on.
    pub fn update_settings(&mut self, settings: GroupSettings) -> Result<()> {
        self.settings = settings.validated()?;
        for partition in &mut self.partitions {
            partition.set_keyed(self.settings.ordering == OrderingMode::Key);
        }
        Ok(())
    }

    fn partition_index(&self, partition: PartitionId) -> Result<usize> {
        if partition.index() < self.partitions.len() {
            Ok(partition.index())
        } else {
            Err(GroupError::UnknownPartition {
                partition,
                count: self.partitions.len(),
            })
        }
    }

    fn check_member(&self, member: MemberId) -> Result<()> {
        if self.members.contains_key(&member) {
            Ok(())
        } else {
            Err(GroupError::UnknownMember(member))
        }
    }

    // ---- members and assignment ----

    /// Adds a member and rebalances. Returns the partitions it owns at once (ascending):
    /// partitions that must first drain from their old owner come later, as an
    /// `AssignmentChanged` action.
    pub fn join(
        &mut self,
        member: MemberId,
        options: MemberOptions,
        now: u64,
    ) -> Result<Vec<PartitionId>> {
        if self.members.contains_key(&member) {
            return Err(GroupError::MemberExists(member));
        }
        if self.members.len() >= self.limits.max_members {
            return Err(GroupError::TooManyMembers {
                limit: self.limits.max_members,
            });
        }
        let options = MemberOptions {
            max_in_flight_messages: options
                .max_in_flight_messages
                .clamp(1, MAX_MEMBER_IN_FLIGHT_MESSAGES),
            max_in_flight_bytes: options.max_in_flight_bytes.max(1),
            credit_flow_control: options.credit_flow_control,
            max_in_flight_per_key: options
                .max_in_flight_per_key
                .clamp(1, MAX_MEMBER_IN_FLIGHT_MESSAGES),
        };
        self.members.insert(
            member,
            Member {
                join_seq: self.next_join_seq,
                joined_at_ms: now,
                options,
                in_flight_messages: 0,
                in_flight_bytes: 0,
                credit_messages: 0,
                credit_bytes: 0,
                owned: BTreeSet::new(),
                notified: BTreeSet::new(),
                cursor: 0,
            },
        );
        self.next_join_seq += 1;
        self.rebalance();
        // The Joined reply carries the initial assignment, so there is nothing to notify.
        self.dirty.remove(&member);
        let joined = self
            .members
            .get_mut(&member)
            .ok_or(GroupError::UnknownMember(member))?;
        joined.notified = joined.owned.clone();
        Ok(joined.owned.iter().copied().collect())
    }

    /// Removes a member whose stream closed. Its in-flight messages are due again at once,
    /// with their attempt counts kept (a closed stream is a failed delivery, with no
    /// backoff since no consumer rejected the message), or dead-lettered if that used up
    /// their attempts. Its partitions move to the remaining members at once.
    pub fn leave(&mut self, member: MemberId, now: u64) -> Result<()> {
        if self.members.remove(&member).is_none() {
            return Err(GroupError::UnknownMember(member));
        }
        self.dirty.remove(&member);
        for index in 0..self.partitions.len() {
            if self.partitions[index].holder() != Some(member) {
                continue;
            }
            let mut offsets: Vec<u64> = self.partitions[index].in_flight.keys().copied().collect();
            // In offset order, so redeliveries and dead letters come out in a stable order.
            offsets.sort_unstable();
            for offset in offsets {
                if let Some(failed) = self.partitions[index].take_in_flight(offset) {
                    self.deadlines.remove();
                    self.fail(
                        index,
                        offset,
                        failed,
                        FailureReason::MemberLeft,
                        now,
                        Some(0),
                    );
                }
            }
        }
        self.rebalance();
        Ok(())
    }

    /// Grants flow-control credit (ignored unless the member joined with credit flow
    /// control). Credit adds up, saturating.
    pub fn credit(&mut self, member: MemberId, messages: u64, bytes: u64) -> Result<()> {
        let entry = self
            .members
            .get_mut(&member)
            .ok_or(GroupError::UnknownMember(member))?;
        if entry.options.credit_flow_control {
            entry.credit_messages = entry.credit_messages.saturating_add(messages);
            entry.credit_bytes = entry.credit_bytes.saturating_add(bytes);
        }
        Ok(())
    }

    /// Recomputes the balanced, sticky assignment and applies it: partitions without
    /// in-flight messages move at once, the others drain first.
    fn rebalance(&mut self) {
        let mut order: Vec<(u64, MemberId)> = self
            .members
            .iter()
            .map(|(&id, member)| (member.join_seq, id))
            .collect();
        order.sort_unstable();
        let members: Vec<MemberId> = order.into_iter().map(|(_, id)| id).collect();
        let current: Vec<Option<MemberId>> =
            self.partitions.iter().map(|p| p.intended_owner()).collect();
        let in_flight: Vec<usize> = self.partitions.iter().map(|p| p.in_flight.len()).collect();
        let target = assignment::balance(&current, &members, &in_flight);
        for (index, owner) in target.into_iter().enumerate() {
            self.set_owner(index, owner);
        }
    }

    /// Moves partition `index` toward `target`: at once if its holder has nothing in
    /// flight in it (or left), else through a draining state, so the new owner never gets a
    /// message the old one may still ack. A no-op when nothing changes.
    fn set_owner(&mut self, index: usize, target: Option<MemberId>) {
        let partition = &self.partitions[index];
        let old = partition.ownership;
        let holder = partition
            .holder()
            .filter(|holder| self.members.contains_key(holder));
        let new = match holder {
            Some(holder) if Some(holder) == target => Ownership::Owned(holder),
            Some(from) if !partition.in_flight.is_empty() => {
                Ownership::Draining { from, to: target }
            }
            _ => target.map_or(Ownership::Unowned, Ownership::Owned),
        };
        if new == old {
            return;
        }
        let id = PartitionId(index as u32);
        self.partitions[index].ownership = new;
        if let Ownership::Owned(previous) = old
            && let Some(member) = self.members.get_mut(&previous)
        {
            member.owned.remove(&id);
            self.dirty.insert(previous);
        }
        if let Ownership::Owned(next) = new
            && let Some(member) = self.members.get_mut(&next)
        {
            member.owned.insert(id);
            self.dirty.insert(next);
        }
    }

    /// Completes a handover once the draining partition's last in-flight message is gone.
    fn after_in_flight_removed(&mut self, index: usize) {
        let partition = &self.partitions[index];
        if let Ownership::Draining { to, .. } = partition.ownership
            && partition.in_flight.is_empty()
        {
            self.set_owner(index, to);
        }
    }

    // ---- the log side ----

    /// How many more messages partition `index` may track now.
    fn room(&self, index: usize) -> usize {
        let partition = &self.partitions[index];
        let limits = &self.limits;
        limits
            .max_buffered_per_partition
            .saturating_sub(partition.buffer.len())
            .min(
                limits
                    .max_tracked_per_partition
                    .saturating_sub(partition.tracked()),
            )
            .min(
                limits
                    .max_tracked_per_group
                    .saturating_sub(self.tracked_total),
            )
    }

    /// The offset the machine wants next from `partition`'s log, or `None` while its
    /// buffer or tracked budget is full (ask again after acks, polls or a seek).
    pub fn wants(&self, partition: PartitionId) -> Result<Option<Offset>> {
        let index = self.partition_index(partition)?;
        Ok((self.room(index) > 0).then(|| Offset(self.partitions[index].fetch_position())))
    }

    /// Like [`wants`](Self::wants), with how many more records the machine would buffer
    /// now, so the driver decodes no more than that.
    pub fn wants_with_room(&self, partition: PartitionId) -> Result<Option<(Offset, usize)>> {
        let index = self.partition_index(partition)?;
        let room = self.room(index);
        Ok((room > 0).then(|| (Offset(self.partitions[index].fetch_position()), room)))
    }

    /// Offers consecutive records read from the log. Returns how many were consumed
    /// (buffered, or skipped because they are done or were offered before); the driver
    /// resumes with the rest later (see `wants`). Records may start below the wanted
    /// offset (a batch read), not above it.
    pub fn offer(&mut self, partition: PartitionId, records: &[OfferedRecord]) -> Result<usize> {
        let index = self.partition_index(partition)?;
        let room = self.room(index);
        match self.partitions[index].offer(records, room) {
            OfferResult::Taken { consumed, buffered } => {
                self.tracked_total += buffered;
                Ok(consumed)
            }
            OfferResult::Gap { expected, got } => Err(GroupError::OfferGap {
                partition,
                expected,
                got,
            }),
            OfferResult::NotContiguous { at } => {
                Err(GroupError::OfferNotContiguous { partition, at })
            }
        }
    }

    // ---- deliveries ----

    /// Up to `max` deliveries for `member`: due redeliveries first, then buffered
    /// messages, from the partitions it owns (not draining ones), within its window and
    /// credit and under the ordering mode. Partitions take turns: each round gives every
    /// partition an equal share of what is left, and the next poll starts after the last
    /// partition served.
    pub fn poll(&mut self, member: MemberId, now: u64, max: usize) -> Result<Vec<Delivery>> {
        let entry = self
            .members
            .get(&member)
            .ok_or(GroupError::UnknownMember(member))?;
        let max = max.min(MAX_POLL_MESSAGES);
        let owned: Vec<PartitionId> = entry.owned.iter().copied().collect();
        let mut budget = Budget::of(entry);
        let mut out = Vec::new();
        if owned.is_empty() || max == 0 || !budget.can_send() {
            return Ok(out);
        }
        let start = entry.cursor % owned.len();
        let mut active: Vec<usize> = (0..owned.len())
            .map(|i| (start + i) % owned.len())
            .collect();
        let mut next_cursor = start;
        while !active.is_empty() && out.len() < max && budget.can_send() {
            let share = (max - out.len()).div_ceil(active.len());
            let mut still_active = Vec::with_capacity(active.len());
            for &slot in &active {
                if out.len() >= max || !budget.can_send() {
                    break;
                }
                let want = share.min(max - out.len());
                let got = self.deliver_from(owned[slot], member, now, want, &mut budget, &mut out);
                if got > 0 {
                    next_cursor = slot + 1;
                }
                // A partition that gave less than its share has nothing more to give now.
                if got == want {
                    still_active.push(slot);
                }
            }
            active = still_active;
        }
        if let Some(entry) = self.members.get_mut(&member) {
            entry.in_flight_messages = budget.messages;
            entry.in_flight_bytes = budget.bytes;
            if let Some((messages, bytes)) = budget.credit {
                entry.credit_messages = messages;
                entry.credit_bytes = bytes;
            }
            entry.cursor = next_cursor;
        }
        self.compact_deadlines();
        Ok(out)
    }

    /// Delivers up to `want` messages of one partition to `member`; returns how many.
    fn deliver_from(
        &mut self,
        partition: PartitionId,
        member: MemberId,
        now: u64,
        want: usize,
        budget: &mut Budget,
        out: &mut Vec<Delivery>,
    ) -> usize {
        let index = partition.index();
        let per_key_limit = self
            .members
            .get(&member)
            .map_or(1, |m| m.options.max_in_flight_per_key);
        let candidates =
            self.partitions[index].candidates(self.settings.ordering, now, want, per_key_limit);
        // Sized for them once: grown by doubling, a poll of thousands of deliveries copied
        // them over and over.
        out.reserve(candidates.len());
        let deadline_ms = now.saturating_add(self.settings.ack_deadline_ms);
        let mut delivered = 0;
        for candidate in candidates {
            if !budget.can_send() {
                break;
            }
            let delivery = self.next_delivery;
            let Some(entry) = self.partitions[index].start_delivery(
                candidate.offset,
                member,
                delivery,
                deadline_ms,
            ) else {
                continue;
            };
            self.next_delivery += 1;
            self.deadlines
                .insert(deadline_ms, partition, candidate.offset);
            budget.charge(entry.meta.size_bytes);
            out.push(Delivery {
                partition,
                offset: Offset(candidate.offset),
                attempt: entry.attempts,
                deadline_ms,
                ack_id: AckId {
                    partition,
                    offset: Offset(candidate.offset),
                    delivery,
                },
                key: entry.meta.key,
                size_bytes: entry.meta.size_bytes,
                timestamp_ms: entry.meta.timestamp_ms,
            });
            delivered += 1;
        }
        delivered
    }

    /// Checks that an ack id could have come from this machine; returns its partition index.
    fn check_ack_id(&self, ack_id: &AckId) -> Result<usize> {
        let index = self.partition_index(ack_id.partition)?;
        if ack_id.delivery >= self.next_delivery {
            return Err(GroupError::UnknownAckId);
        }
        Ok(index)
    }

    /// Whether `ack_id` names the live delivery of its message to `member`.
    fn is_live(&self, index: usize, ack_id: &AckId, member: MemberId) -> bool {
        self.partitions[index]
            .in_flight
            .get(&ack_id.offset.0)
            .is_some_and(|f| f.delivery == ack_id.delivery && f.member == member)
    }

    /// Removes the live delivery `ack_id` names, if it is one, and frees its window room.
    fn take_live(&mut self, index: usize, ack_id: &AckId, member: MemberId) -> Option<InFlight> {
        let entry = self.partitions[index].take_live(ack_id.offset.0, ack_id.delivery, member)?;
        self.deadlines.remove();
        self.release(entry.member, entry.meta.size_bytes);
        Some(entry)
    }

    fn release(&mut self, member: MemberId, size_bytes: u32) {
        self.release_many(member, 1, u64::from(size_bytes));
    }

    /// Frees `messages` deliveries of `bytes` in all from `member`'s window. Saturating,
    /// so freeing them together is freeing them one by one.
    fn release_many(&mut self, member: MemberId, messages: u32, bytes: u64) {
        if let Some(entry) = self.members.get_mut(&member) {
            entry.in_flight_messages = entry.in_flight_messages.saturating_sub(messages);
            entry.in_flight_bytes = entry.in_flight_bytes.saturating_sub(bytes);
        }
    }

    /// A failed delivery: dead-lettered if it used up the attempts, else due again at
    /// `base_ms + delay` (the retry backoff when `delay` is `None`).
    fn fail(
        &mut self,
        index: usize,
        offset: u64,
        failed: InFlight,
        reason: FailureReason,
        base_ms: u64,
        delay: Option<u64>,
    ) -> NackOutcome {
        let max_attempts = self.settings.max_delivery_attempts;
        let key = failed.meta.key;
        let outcome = if max_attempts > 0 && failed.attempts >= max_attempts {
            self.dead_letters.push(DeadLetter {
                partition: PartitionId(index as u32),
                offset: Offset(offset),
                attempts: failed.attempts,
                last_reason: reason,
            });
            self.partitions[index].hold_dead_letter(offset, failed);
            NackOutcome::DeadLetter
        } else {
            let delay = delay.unwrap_or_else(|| self.settings.backoff_ms(failed.attempts));
            let due_ms = base_ms.saturating_add(delay);
            self.partitions[index].park(offset, failed, due_ms);
            NackOutcome::Retry { due_ms }
        };
        // The key may have later messages in flight (see `KeyTrack`): they are taken back
        // and follow the failed one. A dead-lettered key delivers nothing until
        // the dead letter is confirmed, so theirs are due at once.
        let due_ms = match outcome {
            NackOutcome::Retry { due_ms } => due_ms,
            _ => base_ms,
        };
        for revoked in self.partitions[index].revoke_after(key, offset, due_ms) {
            self.deadlines.remove();
            self.release(revoked.member, revoked.meta.size_bytes);
        }
        outcome
    }

    /// The member processed the delivery: its message is done. A late ack for a delivery
    /// that expired is still honoured while the message waits for its redelivery.
    pub fn ack(&mut self, member: MemberId, ack_id: &AckId) -> Result<AckOutcome> {
        self.check_member(member)?;
        let mut freed = (0, 0);
        let outcome = self.ack_one(member, ack_id, &mut freed);
        self.release_many(member, freed.0, freed.1);
        outcome
    }

    /// Acks each of `ack_ids` as [`ack`](Self::ack) does, in order, and returns how many
    /// were `Acked`; ids this machine never issued count as stale. The member is looked up
    /// and its window freed once for them all: how a range of a run is settled.
    pub fn ack_many(
        &mut self,
        member: MemberId,
        ack_ids: impl IntoIterator<Item = AckId>,
    ) -> Result<u64> {
        self.check_member(member)?;
        let mut freed = (0, 0);
        let mut acked = 0;
        for ack_id in ack_ids {
            if let Ok(AckOutcome::Acked) = self.ack_one(member, &ack_id, &mut freed) {
                acked += 1;
            }
        }
        self.release_many(member, freed.0, freed.1);
        Ok(acked)
    }

    /// `ack` for a known member, adding the window room the ack frees to `freed`
    /// (messages, bytes) for the caller to release.
    fn ack_one(
        &mut self,
        member: MemberId,
        ack_id: &AckId,
        freed: &mut (u32, u64),
    ) -> Result<AckOutcome> {
        let index = self.check_ack_id(ack_id)?;
        let offset = ack_id.offset.0;
        let partition = &mut self.partitions[index];
        if let Some(entry) = partition.take_live(offset, ack_id.delivery, member) {
            partition.complete(offset, entry.meta.key);
            self.deadlines.remove();
            freed.0 = freed.0.saturating_add(1);
            freed.1 = freed.1.saturating_add(u64::from(entry.meta.size_bytes));
            self.tracked_total -= 1;
            self.after_in_flight_removed(index);
            return Ok(AckOutcome::Acked);
        }
        if partition.ack_waiting(offset, ack_id.delivery, member) {
            self.tracked_total -= 1;
            return Ok(AckOutcome::Acked);
        }
        Ok(AckOutcome::Stale)
    }

    /// The member rejected the delivery. The message is due again after `delay_ms` when
    /// given (0 = at once, capped at `MAX_RETRY_BACKOFF_MS`), else after the retry backoff,
    /// as the Nack message documents; or it is dead-lettered if it used up its attempts.
    pub fn nack(
        &mut self,
        member: MemberId,
        ack_id: &AckId,
        delay_ms: Option<u64>,
        reason: &str,
        now: u64,
    ) -> Result<NackOutcome> {
        self.check_member(member)?;
        let index = self.check_ack_id(ack_id)?;
        let Some(entry) = self.take_live(index, ack_id, member) else {
            return Ok(NackOutcome::Stale);
        };
        let delay = delay_ms.map(|delay| delay.min(MAX_RETRY_BACKOFF_MS));
        let outcome = self.fail(
            index,
            ack_id.offset.0,
            entry,
            FailureReason::nacked(reason),
            now,
            delay,
        );
        self.after_in_flight_removed(index);
        Ok(outcome)
    }

    /// Sets the delivery's deadline to `now + extra_ms` (capped at `MAX_EXTEND_MS`), so
    /// repeating an extend does not push it further.
    pub fn extend(
        &mut self,
        member: MemberId,
        ack_id: &AckId,
        extra_ms: u64,
        now: u64,
    ) -> Result<ExtendOutcome> {
        self.check_member(member)?;
        let index = self.check_ack_id(ack_id)?;
        if !self.is_live(index, ack_id, member) {
            return Ok(ExtendOutcome::Stale);
        }
        let offset = ack_id.offset.0;
        let deadline_ms = now.saturating_add(extra_ms.min(MAX_EXTEND_MS));
        if let Some(entry) = self.partitions[index].in_flight.get_mut(&offset) {
            self.deadlines.remove();
            entry.deadline_ms = deadline_ms;
            self.deadlines.insert(deadline_ms, ack_id.partition, offset);
        }
        Ok(ExtendOutcome::Extended { deadline_ms })
    }

    /// Expires every delivery whose deadline is at or before `now`: each is due again
    /// after the retry backoff counted from its deadline (so the result does not depend on
    /// how often the driver ticks), or dead-lettered if it used up its attempts.
    pub fn tick(&mut self, now: u64) -> Vec<Expired> {
        let mut expired = Vec::new();
        while let Some((deadline_ms, mut due)) = self.deadlines.pop_due(now) {
            // In (partition, offset) order within a deadline, as before buckets: dead
            // letters and expiries come out in a stable order.
            due.sort_unstable();
            for (partition, offset) in due {
                self.expire(deadline_ms, partition, offset, &mut expired);
            }
        }
        self.compact_deadlines();
        expired
    }

    /// Drops the deadline index's stale entries once they outnumber the live ones.
    fn compact_deadlines(&mut self) {
        let partitions = &self.partitions;
        self.deadlines.compact(|deadline_ms, partition, offset| {
            in_flight_until(partitions, deadline_ms, partition, offset)
        });
    }

    /// Expires the delivery of `(partition, offset)` if it is still in flight with
    /// `deadline_ms` (the index keeps removed deliveries' entries until they are due).
    fn expire(
        &mut self,
        deadline_ms: u64,
        partition: PartitionId,
        offset: u64,
        expired: &mut Vec<Expired>,
    ) {
        let index = partition.index();
        if !in_flight_until(&self.partitions, deadline_ms, partition, offset) {
            return;
        }
        let Some(entry) = self.partitions[index].take_in_flight(offset) else {
            return;
        };
        self.deadlines.remove();
        self.release(entry.member, entry.meta.size_bytes);
        let (member, attempts) = (entry.member, entry.attempts);
        let outcome = self.fail(
            index,
            offset,
            entry,
            FailureReason::DeadlineExpired,
            deadline_ms,
            None,
        );
        self.after_in_flight_removed(index);
        expired.push(Expired {
            partition,
            offset: Offset(offset),
            member,
            attempts,
            dead_lettered: outcome == NackOutcome::DeadLetter,
        });
    }

    /// When the driver should call `tick` and `poll` next if nothing else happens: the
    /// earliest ack deadline (even a past one: `tick` is due), or the earliest redelivery
    /// time after `now`. Redeliveries already due are not reported again, so a message no
    /// member can take yet (no owner, a full window) does not make the driver spin: it
    /// polls them when a member gains room (an ack, a nack, credit, a join). O(partitions).
    pub fn next_wakeup(&mut self, now: u64) -> Option<u64> {
        let partitions = &self.partitions;
        let deadline = self.deadlines.first(|deadline_ms, partition, offset| {
            in_flight_until(partitions, deadline_ms, partition, offset)
        });
        let due = self
            .partitions
            .iter()
            .filter_map(|p| {
                let after_now = (now.saturating_add(1), 0)..;
                p.due.range(after_now).next().map(|&(due_ms, _)| due_ms)
            })
            .min();
        deadline.into_iter().chain(due).min()
    }

    /// The driver appended the dead letter of `(partition, offset)`: the message is done.
    /// Returns false if it was not waiting for one (a seek dropped it meanwhile).
    pub fn dead_lettered(&mut self, partition: PartitionId, offset: Offset) -> Result<bool> {
        let index = self.partition_index(partition)?;
        let confirmed = self.partitions[index].confirm_dead_letter(offset.0);
        if confirmed {
            self.tracked_total -= 1;
        }
        Ok(confirmed)
    }

    /// Moves one or every partition to `offset` (resolved and clamped by the driver):
    /// the committed offset and the read cursor jump there; buffered messages, done ranges,
    /// redeliveries and unconfirmed dead letters of the partition are dropped; its in-flight
    /// deliveries become stale (their acks are ignored) and free their members' windows.
    /// Returns the new committed offset of each partition moved.
    pub fn seek(
        &mut self,
        target: SeekTarget,
        offset: Offset,
    ) -> Result<Vec<(PartitionId, Offset)>> {
        let indices: Vec<usize> = match target {
            SeekTarget::Partition(partition) => vec![self.partition_index(partition)?],
            SeekTarget::All => (0..self.partitions.len()).collect(),
        };
        let mut moved = Vec::with_capacity(indices.len());
        for index in indices {
            let partition = PartitionId(index as u32);
            self.tracked_total -= self.partitions[index].tracked();
            let stale = self.partitions[index].seek(offset.0);
            for (_, entry) in stale {
                self.deadlines.remove();
                self.release(entry.member, entry.meta.size_bytes);
            }
            self.dead_letters.retain(|d| d.partition != partition);
            self.after_in_flight_removed(index);
            moved.push((partition, offset));
        }
        Ok(moved)
    }

    /// Drains what the driver must do: dead letters to append (then confirm with
    /// `dead_lettered`), and assignment changes to send to members' streams (one per member
    /// whose assignment differs from what it was last told).
    pub fn take_actions(&mut self) -> Vec<Action> {
        let mut actions: Vec<Action> = self
            .dead_letters
            .drain(..)
            .map(Action::DeadLetter)
            .collect();
        for id in std::mem::take(&mut self.dirty) {
            let Some(member) = self.members.get_mut(&id) else {
                continue;
            };
            if member.owned == member.notified {
                continue;
            }
            let added = member.owned.difference(&member.notified).copied().collect();
            let revoked = member.notified.difference(&member.owned).copied().collect();
            member.notified = member.owned.clone();
            actions.push(Action::AssignmentChanged(AssignmentChange {
                member: id,
                added,
                revoked,
                partitions: member.owned.iter().copied().collect(),
            }));
        }
        actions
    }

    // ---- introspection ----

    fn info(&self, index: usize) -> PartitionInfo {
        let p = &self.partitions[index];
        PartitionInfo {
            partition: PartitionId(index as u32),
            committed: Offset(p.committed),
            next_fetch: Offset(p.next_fetch),
            buffered: p.buffer.len(),
            in_flight: p.in_flight.len(),
            waiting: p.waiting.len(),
            dead_lettering: p.dead_pending.len(),
            done_ranges: p.done.len(),
            redelivered_count: p.redelivered_count,
            dead_lettered_count: p.dead_lettered_count,
            ownership: p.ownership,
        }
    }

    pub fn partition_info(&self, partition: PartitionId) -> Result<PartitionInfo> {
        Ok(self.info(self.partition_index(partition)?))
    }

    /// The group for DescribeGroup: settings, members oldest first, partitions in order.
    pub fn describe(&self) -> GroupDescription {
        let mut members: Vec<(u64, MemberInfo)> = self
            .members
            .iter()
            .map(|(&id, m)| {
                let info = MemberInfo {
                    member: id,
                    joined_at_ms: m.joined_at_ms,
                    partitions: m.owned.iter().copied().collect(),
                    in_flight_messages: m.in_flight_messages,
                    in_flight_bytes: m.in_flight_bytes,
                    options: m.options,
                };
                (m.join_seq, info)
            })
            .collect();
        members.sort_unstable_by_key(|(seq, _)| *seq);
        GroupDescription {
            settings: self.settings.clone(),
            members: members.into_iter().map(|(_, info)| info).collect(),
            partitions: (0..self.partitions.len()).map(|i| self.info(i)).collect(),
        }
    }

    /// Each member's owned partitions (not draining ones), oldest member first.
    pub fn assignment(&self) -> Vec<(MemberId, Vec<PartitionId>)> {
        self.describe()
            .members
            .into_iter()
            .map(|m| (m.member, m.partitions))
            .collect()
    }

    /// Partitions waiting for in-flight messages before they change hands.
    pub fn handovers(&self) -> Vec<Handover> {
        self.partitions
            .iter()
            .enumerate()
            .filter_map(|(index, p)| match p.ownership {
                Ownership::Draining { from, to } => Some(Handover {
                    partition: PartitionId(index as u32),
                    from,
                    to,
                    in_flight: p.in_flight.len(),
                }),
                _ => None,
            })
            .collect()
    }

    /// Delivered, not-done messages (in flight, in backoff, dead-lettering) by partition
    /// then offset, for ListPending.
    pub fn pending(&self, filter: &PendingFilter) -> Result<PendingList> {
        let limit = match filter.limit {
            0 => DEFAULT_PENDING_LIMIT,
            limit => limit.min(MAX_PENDING_LIMIT),
        };
        let indices: Vec<usize> = match filter.partition {
            Some(partition) => vec![self.partition_index(partition)?],
            None => (0..self.partitions.len()).collect(),
        };
        let mut list = PendingList::default();
        for index in indices {
            for (offset, key, attempts, state) in self.partitions[index].pending() {
                if filter.key.is_some() && key != filter.key {
                    continue;
                }
                if list.messages.len() == limit {
                    list.truncated = true;
                    return Ok(list);
                }
                list.messages.push(PendingMessage {
                    partition: PartitionId(index as u32),
                    offset: Offset(offset),
                    key,
                    attempts,
                    state,
                });
            }
        }
        Ok(list)
    }
}

#[cfg(test)]
impl GroupState {
    /// Panics unless every structural invariant holds. Called after each step of the
    /// property test, so a broken invariant is caught where it breaks.
    pub(crate) fn check_invariants(&self) {
        use std::collections::HashMap;

        use super::types::KeyHash;

        let mut tracked_total = 0;
        let mut windows: BTreeMap<MemberId, (u32, u64)> = BTreeMap::new();
        let mut in_flight_total = 0;
        for (index, p) in self.partitions.iter().enumerate() {
            let id = PartitionId(index as u32);
            assert!(
                p.next_fetch >= p.committed,
                "p{index}: cursor below committed"
            );
            assert!(
                !p.done.contains(p.committed),
                "p{index}: committed offset is done"
            );
            if let Some(start) = p.done.first_start() {
                assert!(
                    start > p.committed,
                    "p{index}: done range at or below committed"
                );
            }
            // Each tracked offset is in exactly one table, inside [committed, next_fetch),
            // and not done.
            let offsets: Vec<u64> = p
                .buffer
                .iter()
                .map(|(o, _)| o)
                .chain(p.in_flight.keys().copied())
                .chain(p.waiting.keys().copied())
                .chain(p.dead_pending.keys().copied())
                .collect();
            let unique: BTreeSet<u64> = offsets.iter().copied().collect();
            assert_eq!(
                unique.len(),
                offsets.len(),
                "p{index}: offset in two tables"
            );
            for &offset in &unique {
                assert!(
                    offset >= p.committed && offset < p.next_fetch,
                    "p{index}: {offset} out of window"
                );
                assert!(
                    !p.done.contains(offset),
                    "p{index}: tracked offset {offset} is done"
                );
            }
            // ...and every offset of the window is tracked or done.
            if p.next_fetch - p.committed < 1 << 20 {
                for offset in p.committed..p.next_fetch {
                    assert!(
                        unique.contains(&offset) || p.done.contains(offset),
                        "p{index}: offset {offset} lost"
                    );
                }
            }
            let ranges_below_cursor = p
                .done
                .iter()
                .filter(|&(start, _)| start < p.next_fetch)
                .count();
            assert!(
                ranges_below_cursor <= p.tracked(),
                "p{index}: too many done ranges"
            );
            // The key index is exactly the keyed tracked offsets, with how many are in
            // flight and how many wait for a dead-letter confirmation.
            let mut keys: HashMap<KeyHash, (BTreeSet<u64>, u32, u32)> = HashMap::new();
            let mut add = |key: Option<KeyHash>, offset: u64, flying: bool, held: bool| {
                if let Some(key) = key {
                    let entry = keys.entry(key).or_default();
                    entry.0.insert(offset);
                    entry.1 += u32::from(flying);
                    entry.2 += u32::from(held);
                }
            };
            p.buffer
                .iter()
                .for_each(|(o, b)| add(b.meta.key, o, false, false));
            p.in_flight
                .iter()
                .for_each(|(&o, f)| add(f.meta.key, o, true, false));
            p.waiting
                .iter()
                .for_each(|(&o, w)| add(w.meta.key, o, false, false));
            p.dead_pending
                .iter()
                .for_each(|(&o, d)| add(d.meta.key, o, false, true));
            let actual: HashMap<KeyHash, (BTreeSet<u64>, u32, u32)> = p
                .keys
                .iter()
                .map(|(&k, t)| (k, (t.offsets.clone(), t.flying, t.held)))
                .collect();
            // A key's in-flight messages are its tracked offsets below its floor.
            for (key, track) in &p.keys {
                if track.mixed {
                    continue;
                }
                for &o in &track.offsets {
                    assert_eq!(
                        p.in_flight.contains_key(&o),
                        o < track.floor,
                        "p{index}: key {key:?}: offset {o} against floor {}",
                        track.floor
                    );
                }
            }
            if p.keyed {
                assert_eq!(actual, keys, "p{index}: key index out of step");
            } else {
                assert!(
                    actual.is_empty(),
                    "p{index}: key index kept outside key mode"
                );
            }
            assert_eq!(
                p.keyed,
                self.settings.ordering == OrderingMode::Key,
                "p{index}: key index kept in the wrong mode"
            );
            let due: BTreeSet<(u64, u64)> = p.waiting.iter().map(|(&o, w)| (w.due_ms, o)).collect();
            assert_eq!(due, p.due, "p{index}: due index out of step");
            // Limits.
            assert!(p.buffer.len() <= self.limits.max_buffered_per_partition);
            assert!(p.tracked() <= self.limits.max_tracked_per_partition);
            tracked_total += p.tracked();
            // Ownership: in-flight messages belong to the holder; draining means waiting
            // for in-flight messages; owners list their partitions.
            match p.ownership {
                Ownership::Unowned => {
                    assert!(p.in_flight.is_empty(), "p{index}: unowned in flight")
                }
                Ownership::Owned(member) => {
                    let m = self.members.get(&member).expect("owner is a member");
                    assert!(m.owned.contains(&id), "p{index}: owner does not list it");
                }
                Ownership::Draining { from, to } => {
                    assert!(
                        !p.in_flight.is_empty(),
                        "p{index}: draining with nothing in flight"
                    );
                    let m = self
                        .members
                        .get(&from)
                        .expect("draining member is a member");
                    assert!(!m.owned.contains(&id));
                    assert!(to.is_none_or(|to| self.members.contains_key(&to)));
                }
            }
            for (&offset, f) in &p.in_flight {
                assert_eq!(
                    Some(f.member),
                    p.holder(),
                    "p{index}: in flight with a non-holder"
                );
                let window = windows.entry(f.member).or_default();
                window.0 += 1;
                window.1 += u64::from(f.meta.size_bytes);
                assert!(
                    self.deadlines.contains(f.deadline_ms, id, offset),
                    "p{index}: in flight at {offset} without its deadline"
                );
                in_flight_total += 1;
            }
        }
        assert_eq!(
            tracked_total, self.tracked_total,
            "group tracked count out of step"
        );
        assert!(tracked_total <= self.limits.max_tracked_per_group);
        assert_eq!(
            in_flight_total,
            self.deadlines.live(),
            "deadline index out of step"
        );
        for (id, m) in &self.members {
            let window = windows.get(id).copied().unwrap_or_default();
            assert_eq!(
                (m.in_flight_messages, m.in_flight_bytes),
                window,
                "member {id} window"
            );
            for p in &m.owned {
                assert_eq!(self.partitions[p.index()].ownership, Ownership::Owned(*id));
            }
        }
        // Balanced: counting partitions by the owner they end up with, members differ by at
        // most one, and with any member every partition has one.
        if !self.members.is_empty() {
            let mut counts: BTreeMap<MemberId, usize> =
                self.members.keys().map(|&m| (m, 0)).collect();
            for p in &self.partitions {
                let owner = p.intended_owner().expect("every partition has an owner");
                *counts.get_mut(&owner).expect("intended owner is a member") += 1;
            }
            let max = counts.values().max().copied().unwrap_or(0);
            let min = counts.values().min().copied().unwrap_or(0);
            assert!(max - min <= 1, "assignment unbalanced: {counts:?}");
        }
    }
}

/// Whether `(partition, offset)` is in flight with the deadline `deadline_ms`: the liveness
/// test of a deadline index entry.
fn in_flight_until(
    partitions: &[PartitionState],
    deadline_ms: u64,
    partition: PartitionId,
    offset: u64,
) -> bool {
    partitions
        .get(partition.index())
        .and_then(|p| p.in_flight.get(&offset))
        .is_some_and(|f| f.deadline_ms == deadline_ms)
}
