//! Model-based property test of [`GroupState`].
//!
//! A fake driver and fake clients run random sequences of joins, leaves, publishes,
//! fetches, polls, acks, nacks, extends, credit, clock ticks, dead-letter confirmations,
//! seeks and restarts (snapshot → bytes → restore) over three partitions with four keys,
//! next to a model that tracks every message's state. After every step it checks:
//!
//! - the machine's structural invariants (`check_invariants`: tables, indexes, windows,
//!   limits, balanced assignment);
//! - every outcome is the one the model predicts (ack, nack, extend, expiry, leave,
//!   dead letter), and the machine's pending list equals the model's;
//! - no message is delivered while an earlier delivery of it is live (no duplicates, even
//!   across handovers), and each delivery's attempt number is right;
//! - key mode: a key's message is delivered only when every earlier message of the key is
//!   done, or in flight to the same member when its `max_in_flight_per_key` allows more
//!   than one (members of two slots do), never more of a key than that limit, so
//!   redeliveries come before later offsets; a failed message takes the key's later
//!   in-flight messages back (the model does the same and expects the same outcomes);
//!   partition mode: the same for the whole partition;
//! - the committed offset is the lowest not-done offset and never decreases except by seek;
//! - `next_wakeup` is the earliest deadline or future redelivery time;
//! - assignment changes reported to members add up to their actual assignment.
//!
//! At the end the clients ack everything until the group catches up, and every message
//! (since the last seek of its partition) must have been done exactly once.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

const PARTITIONS: usize = 3;
const SLOTS: usize = 4;
const KEYS: u8 = 4;
/// Each slot's `max_in_flight_per_key`.
const PER_KEY: [u32; SLOTS] = [1, 3, 2, 1];

#[derive(Debug, Clone)]
enum Op {
    Join(usize),
    Leave(usize),
    Publish(usize, Vec<Option<u8>>),
    Feed,
    Poll(usize, usize),
    Ack(usize, usize),
    AckAll(usize),
    Nack(usize, usize, Option<u64>),
    Extend(usize, usize, u64),
    Credit(usize, u64),
    Tick(u64),
    ConfirmDeadLetters,
    Seek(usize, u8),
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    let slot = 0..SLOTS;
    prop_oneof![
        6 => slot.clone().prop_map(Op::Join),
        4 => slot.clone().prop_map(Op::Leave),
        10 => (0..PARTITIONS, proptest::collection::vec(proptest::option::weighted(0.8, 0..KEYS), 1..5))
            .prop_map(|(p, keys)| Op::Publish(p, keys)),
        10 => Just(Op::Feed),
        16 => (slot.clone(), 1usize..6).prop_map(|(s, max)| Op::Poll(s, max)),
        7 => (slot.clone(), any::<usize>()).prop_map(|(s, pick)| Op::Ack(s, pick)),
        2 => slot.clone().prop_map(Op::AckAll),
        10 => (slot.clone(), any::<usize>(), proptest::option::weighted(0.3, 0u64..50))
            .prop_map(|(s, pick, delay)| Op::Nack(s, pick, delay)),
        3 => (slot.clone(), any::<usize>(), 0u64..300).prop_map(|(s, pick, extra)| Op::Extend(s, pick, extra)),
        3 => (slot, 0u64..4).prop_map(|(s, n)| Op::Credit(s, n)),
        10 => (1u64..150).prop_map(Op::Tick),
        4 => Just(Op::ConfirmDeadLetters),
        1 => (0..PARTITIONS, any::<u8>()).prop_map(|(p, at)| Op::Seek(p, at)),
        1 => Just(Op::Restart),
    ]
}

/// Where the model thinks a message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    /// Not delivered since the last seek (or restart).
    #[default]
    Fresh,
    Live {
        member: MemberId,
        ack_id: AckId,
        deadline_ms: u64,
    },
    Waiting {
        due_ms: u64,
    },
    DeadPending,
    Done,
}

#[derive(Debug, Clone, Default)]
struct Message {
    state: State,
    /// Deliveries made (kept across restarts, reset by seeks).
    attempts: u32,
    /// The last delivery, whose late ack counts while the message waits.
    last: Option<(AckId, MemberId)>,
    /// Times it became done: must end at exactly 1.
    done_count: u32,
}

struct Harness {
    g: GroupState,
    settings: GroupSettings,
    limits: GroupLimits,
    now: u64,
    logs: Vec<Vec<Option<KeyHash>>>,
    slots: [Option<MemberId>; SLOTS],
    next_member: u64,
    /// Deliveries each client holds, possibly stale.
    held: BTreeMap<MemberId, Vec<Delivery>>,
    /// Per partition: the model's view of every offset since `base`.
    messages: Vec<BTreeMap<u64, Message>>,
    /// Per partition: the last seek target (0 at first).
    base: Vec<u64>,
    last_committed: Vec<u64>,
    /// Dead letters taken from the machine and not yet confirmed.
    dead_letters: Vec<(PartitionId, Offset)>,
    /// What each member was told its assignment is.
    notified: BTreeMap<MemberId, BTreeSet<PartitionId>>,
}

fn key_of(k: u8) -> KeyHash {
    KeyHash::of(&[k])
}

impl Harness {
    fn new(settings: GroupSettings) -> Harness {
        let limits = GroupLimits {
            max_members: 8,
            max_buffered_per_partition: 3,
            max_tracked_per_partition: 5,
            max_tracked_per_group: 12,
        };
        let g = GroupState::new(settings.clone(), limits, &[Offset(0); PARTITIONS]).unwrap();
        Harness {
            g,
            settings,
            limits,
            now: 0,
            logs: vec![Vec::new(); PARTITIONS],
            slots: [None; SLOTS],
            next_member: 0,
            held: BTreeMap::new(),
            messages: vec![BTreeMap::new(); PARTITIONS],
            base: vec![0; PARTITIONS],
            last_committed: vec![0; PARTITIONS],
            dead_letters: Vec::new(),
            notified: BTreeMap::new(),
        }
    }

    fn msg(&mut self, p: PartitionId, o: Offset) -> &mut Message {
        self.messages[p.index()].entry(o.0).or_default()
    }

    /// What a failed delivery becomes: dead-lettered once it used up its attempts.
    fn failed_state(&self, attempts: u32, due_ms: u64) -> State {
        let max = self.settings.max_delivery_attempts;
        if max > 0 && attempts >= max {
            State::DeadPending
        } else {
            State::Waiting { due_ms }
        }
    }

    fn pick(&self, slot: usize, pick: usize) -> Option<(MemberId, Delivery)> {
        let member = self.slots[slot]?;
        let held = self.held.get(&member)?;
        (!held.is_empty()).then(|| (member, held[pick % held.len()]))
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Join(slot) => {
                if self.slots[slot].is_some() {
                    return;
                }
                let member = MemberId(self.next_member);
                self.next_member += 1;
                let options = MemberOptions {
                    max_in_flight_messages: 2 * slot as u32 + 1,
                    max_in_flight_bytes: 1_000,
                    credit_flow_control: slot == 3,
                    max_in_flight_per_key: PER_KEY[slot],
                };
                let partitions = self.g.join(member, options, self.now).unwrap();
                self.slots[slot] = Some(member);
                self.notified
                    .insert(member, partitions.into_iter().collect());
            }
            Op::Leave(slot) => {
                let Some(member) = self.slots[slot].take() else {
                    return;
                };
                self.g.leave(member, self.now).unwrap();
                self.held.remove(&member);
                self.notified.remove(&member);
                let now = self.now;
                for p in 0..PARTITIONS {
                    let offsets: Vec<u64> = self.messages[p].keys().copied().collect();
                    for o in offsets {
                        let message = &self.messages[p][&o];
                        if let State::Live { member: m, .. } = message.state
                            && m == member
                        {
                            let state = self.failed_state(message.attempts, now);
                            self.messages[p].get_mut(&o).unwrap().state = state;
                            self.revoke_after(p, o, now);
                        }
                    }
                }
            }
            Op::Publish(p, ref keys) => {
                self.logs[p].extend(keys.iter().map(|k| k.map(key_of)));
            }
            Op::Feed => self.feed(),
            Op::Poll(slot, max) => {
                let Some(member) = self.slots[slot] else {
                    return;
                };
                let deliveries = self.g.poll(member, self.now, max).unwrap();
                assert!(deliveries.len() <= max);
                for d in deliveries {
                    self.check_delivery(member, &d);
                    self.held.entry(member).or_default().push(d);
                }
            }
            Op::Ack(slot, pick) => {
                if let Some((member, d)) = self.pick(slot, pick) {
                    self.ack(member, &d);
                }
            }
            Op::AckAll(slot) => {
                let Some(member) = self.slots[slot] else {
                    return;
                };
                // At once, as a range ack settles a run: the same outcomes as one by one.
                let held = self.held.get(&member).cloned().unwrap_or_default();
                let acked = self
                    .g
                    .ack_many(member, held.iter().map(|d| d.ack_id))
                    .unwrap();
                let expected = held
                    .iter()
                    .filter(|d| self.settle_ack(member, d) == AckOutcome::Acked)
                    .count();
                assert_eq!(acked, expected as u64, "ack_many of {held:?}");
            }
            Op::Nack(slot, pick, delay) => {
                let Some((member, d)) = self.pick(slot, pick) else {
                    return;
                };
                let outcome = self
                    .g
                    .nack(member, &d.ack_id, delay, "nope", self.now)
                    .unwrap();
                let message = self.msg(d.partition, d.offset).clone();
                let expected = match message.state {
                    State::Live {
                        member: m, ack_id, ..
                    } if m == member && ack_id == d.ack_id => {
                        let delay =
                            delay.unwrap_or_else(|| self.settings.backoff_ms(message.attempts));
                        match self.failed_state(message.attempts, self.now + delay) {
                            State::DeadPending => NackOutcome::DeadLetter,
                            State::Waiting { due_ms } => NackOutcome::Retry { due_ms },
                            _ => unreachable!(),
                        }
                    }
                    _ => NackOutcome::Stale,
                };
                assert_eq!(outcome, expected, "nack of {d:?} in {:?}", message.state);
                let (state, due_ms) = match outcome {
                    NackOutcome::Retry { due_ms } => (State::Waiting { due_ms }, due_ms),
                    NackOutcome::DeadLetter => (State::DeadPending, self.now),
                    NackOutcome::Stale => return,
                };
                self.msg(d.partition, d.offset).state = state;
                self.revoke_after(d.partition.index(), d.offset.0, due_ms);
            }
            Op::Extend(slot, pick, extra) => {
                let Some((member, d)) = self.pick(slot, pick) else {
                    return;
                };
                let now = self.now;
                let outcome = self.g.extend(member, &d.ack_id, extra, now).unwrap();
                let message = self.msg(d.partition, d.offset);
                match &mut message.state {
                    State::Live {
                        member: m,
                        ack_id,
                        deadline_ms,
                    } if *m == member && *ack_id == d.ack_id => {
                        *deadline_ms = now + extra;
                        assert_eq!(
                            outcome,
                            ExtendOutcome::Extended {
                                deadline_ms: now + extra
                            }
                        );
                    }
                    _ => assert_eq!(outcome, ExtendOutcome::Stale),
                }
            }
            Op::Credit(slot, n) => {
                if let Some(member) = self.slots[slot] {
                    self.g.credit(member, n, n * 10).unwrap();
                }
            }
            Op::Tick(dt) => self.tick(dt),
            Op::ConfirmDeadLetters => {
                for (p, o) in std::mem::take(&mut self.dead_letters) {
                    let expected = self.msg(p, o).state == State::DeadPending;
                    assert_eq!(self.g.dead_lettered(p, o).unwrap(), expected);
                    if expected {
                        self.done(p, o);
                    }
                }
            }
            Op::Seek(p, at) => {
                let target = (self.logs[p].len() as u64 + 1) * u64::from(at) / 256;
                let id = PartitionId(p as u32);
                let moved = self
                    .g
                    .seek(SeekTarget::Partition(id), Offset(target))
                    .unwrap();
                assert_eq!(moved, vec![(id, Offset(target))]);
                self.messages[p].clear();
                self.base[p] = target;
                self.last_committed[p] = target;
                self.dead_letters.retain(|(dp, _)| *dp != id);
            }
            Op::Restart => {
                let bytes = self.g.snapshot().encode();
                let snapshot = GroupSnapshot::decode(&bytes).unwrap();
                self.g =
                    GroupState::restore(self.settings.clone(), self.limits, &snapshot).unwrap();
                // Every stream is gone; the driver has nothing in flight either.
                self.slots = [None; SLOTS];
                self.held.clear();
                self.notified.clear();
                self.dead_letters.clear();
                for partition in &mut self.messages {
                    for message in partition.values_mut() {
                        if message.state != State::Done {
                            message.state = State::Fresh;
                            message.last = None;
                        }
                    }
                }
            }
        }
    }

    /// The driver's fetch loop: read from where the group wants, in small batches that
    /// sometimes start one record early (as a batch-aligned read would).
    fn feed(&mut self) {
        for p in 0..PARTITIONS {
            let id = PartitionId(p as u32);
            while let Some(want) = self.g.wants(id).unwrap() {
                let len = self.logs[p].len() as u64;
                if want.0 >= len {
                    break;
                }
                let start = want.0.saturating_sub(want.0 % 2).max(self.base[p]);
                let records: Vec<OfferedRecord> = (start..len.min(want.0 + 3))
                    .map(|o| OfferedRecord {
                        offset: Offset(o),
                        key: self.logs[p][o as usize],
                        size_bytes: 10,
                        timestamp_ms: o as i64,
                    })
                    .collect();
                let consumed = self.g.offer(id, &records).unwrap();
                assert!(
                    consumed > (want.0 - start) as usize,
                    "room but nothing taken"
                );
            }
        }
    }

    fn tick(&mut self, dt: u64) {
        self.now += dt;
        let now = self.now;
        let mut expired: Vec<(PartitionId, Offset, MemberId, u32, bool)> = self
            .g
            .tick(now)
            .into_iter()
            .map(|e| (e.partition, e.offset, e.member, e.attempts, e.dead_lettered))
            .collect();
        expired.sort_unstable();
        // The machine expires in (deadline, partition, offset) order, and an expiry takes
        // the key's later in-flight messages back before their own deadlines come up.
        let mut live = Vec::new();
        for p in 0..PARTITIONS {
            for (&o, message) in &self.messages[p] {
                if let State::Live { deadline_ms, .. } = message.state
                    && deadline_ms <= now
                {
                    live.push((deadline_ms, p, o));
                }
            }
        }
        live.sort_unstable();
        let mut expected = Vec::new();
        for (deadline_ms, p, o) in live {
            let message = self.messages[p][&o].clone();
            let State::Live { member, .. } = message.state else {
                continue; // taken back by an earlier expiry
            };
            let due = deadline_ms + self.settings.backoff_ms(message.attempts);
            let next = self.failed_state(message.attempts, due);
            let dead = next == State::DeadPending;
            expected.push((
                PartitionId(p as u32),
                Offset(o),
                member,
                message.attempts,
                dead,
            ));
            self.messages[p].get_mut(&o).unwrap().state = next;
            self.revoke_after(p, o, if dead { deadline_ms } else { due });
        }
        expected.sort_unstable();
        assert_eq!(expired, expected, "expiries at {now}");
    }

    /// In key mode, after the message at `o` of partition `p` failed: the key's later
    /// in-flight messages wait again, due at `due_ms`, with the attempt of their taken-back
    /// delivery not counted and no late ack honoured.
    fn revoke_after(&mut self, p: usize, o: u64, due_ms: u64) {
        if self.settings.ordering != OrderingMode::Key {
            return;
        }
        let Some(key) = self.logs[p][o as usize] else {
            return;
        };
        for (&later, message) in self.messages[p].range_mut(o + 1..) {
            if self.logs[p][later as usize] == Some(key)
                && matches!(message.state, State::Live { .. })
            {
                message.state = State::Waiting { due_ms };
                message.attempts -= 1;
                message.last = None;
            }
        }
    }

    fn ack(&mut self, member: MemberId, d: &Delivery) {
        let outcome = self.g.ack(member, &d.ack_id).unwrap();
        let state = self.msg(d.partition, d.offset).state;
        let expected = self.settle_ack(member, d);
        assert_eq!(outcome, expected, "ack of {d:?} in {state:?}");
    }

    /// What the model says an ack of `d` by `member` does, applied to the model.
    fn settle_ack(&mut self, member: MemberId, d: &Delivery) -> AckOutcome {
        let message = self.msg(d.partition, d.offset).clone();
        let expected = match message.state {
            State::Live {
                member: m, ack_id, ..
            } if m == member && ack_id == d.ack_id => AckOutcome::Acked,
            State::Waiting { .. } if message.last == Some((d.ack_id, member)) => AckOutcome::Acked,
            _ => AckOutcome::Stale,
        };
        if let Some(held) = self.held.get_mut(&member) {
            held.retain(|h| h.ack_id != d.ack_id);
        }
        if expected == AckOutcome::Acked {
            self.done(d.partition, d.offset);
        }
        expected
    }

    fn done(&mut self, p: PartitionId, o: Offset) {
        let message = self.msg(p, o);
        message.state = State::Done;
        message.done_count += 1;
        assert_eq!(message.done_count, 1, "{p}/{o} done twice");
    }

    fn check_delivery(&mut self, member: MemberId, d: &Delivery) {
        let p = d.partition.index();
        let o = d.offset.0;
        assert!(
            o >= self.base[p] && o < self.logs[p].len() as u64,
            "{d:?} outside the log"
        );
        assert_eq!(d.key, self.logs[p][o as usize], "wrong key");
        assert!(
            self.notified[&member].contains(&d.partition),
            "{d:?} from a partition {member} was not told it owns"
        );
        let message = self.msg(d.partition, d.offset).clone();
        match message.state {
            State::Fresh => {}
            State::Waiting { due_ms } => assert!(due_ms <= self.now, "redelivered before due"),
            other => panic!("{d:?} delivered while {other:?}"),
        }
        assert_eq!(d.attempt, message.attempts + 1, "attempt number");
        assert_eq!(d.deadline_ms, self.now + self.settings.ack_deadline_ms);
        let busy = |m: &Message| matches!(m.state, State::Live { .. } | State::DeadPending);
        match self.settings.ordering {
            OrderingMode::Key => {
                if let Some(key) = d.key {
                    let slot = self.slots.iter().position(|s| *s == Some(member));
                    let limit = PER_KEY[slot.expect("a live member")];
                    let mut flying = 1;
                    for earlier in self.base[p]..o {
                        if self.logs[p][earlier as usize] == Some(key) {
                            let state = self.messages[p].get(&earlier).map(|m| m.state);
                            match state {
                                Some(State::Done) => {}
                                Some(State::Live { member: m, .. }) if m == member => {
                                    flying += 1;
                                }
                                _ => panic!("key order: {earlier} ({state:?}) before {o}"),
                            }
                        }
                    }
                    assert!(
                        flying <= limit,
                        "{flying} of a key in flight, limit {limit}"
                    );
                    for (&other, m) in self.messages[p].range(o + 1..) {
                        if self.logs[p][other as usize] == Some(key) {
                            assert!(!busy(m), "{other} in flight before {o} of its key");
                        }
                    }
                }
            }
            OrderingMode::Partition => {
                for earlier in self.base[p]..o {
                    let state = self.messages[p].get(&earlier).map(|m| m.state);
                    assert_eq!(
                        state,
                        Some(State::Done),
                        "partition order: {earlier} before {o}"
                    );
                }
                assert!(
                    self.messages[p].values().all(|m| !busy(m)),
                    "two in flight in p{p}"
                );
            }
            OrderingMode::None => {}
        }
        let message = self.msg(d.partition, d.offset);
        message.attempts += 1;
        message.last = Some((d.ack_id, member));
        message.state = State::Live {
            member,
            ack_id: d.ack_id,
            deadline_ms: d.deadline_ms,
        };
    }

    /// Takes the machine's actions and checks everything the model can see.
    fn settle_and_check(&mut self) {
        for action in self.g.take_actions() {
            match action {
                Action::DeadLetter(dead) => {
                    let message = self.msg(dead.partition, dead.offset).clone();
                    assert_eq!(message.state, State::DeadPending, "{dead:?}");
                    assert_eq!(message.attempts, dead.attempts);
                    self.dead_letters.push((dead.partition, dead.offset));
                }
                Action::AssignmentChanged(change) => {
                    let told = self
                        .notified
                        .get_mut(&change.member)
                        .expect("a live member");
                    for p in &change.revoked {
                        assert!(told.remove(p), "revoked {p} it did not have");
                    }
                    for p in &change.added {
                        assert!(told.insert(*p), "added {p} it had");
                    }
                    assert_eq!(told.iter().copied().collect::<Vec<_>>(), change.partitions);
                }
            }
        }
        self.g.check_invariants();
        let actual: BTreeMap<MemberId, BTreeSet<PartitionId>> = self
            .g
            .assignment()
            .into_iter()
            .map(|(m, p)| (m, p.into_iter().collect()))
            .collect();
        assert_eq!(actual, self.notified, "members were told their assignment");

        for p in 0..PARTITIONS {
            let committed = self
                .g
                .partition_info(PartitionId(p as u32))
                .unwrap()
                .committed
                .0;
            assert!(
                committed >= self.last_committed[p],
                "committed went back in p{p}"
            );
            self.last_committed[p] = committed;
            let mut lowest = self.base[p];
            while self.messages[p]
                .get(&lowest)
                .is_some_and(|m| m.state == State::Done)
            {
                lowest += 1;
            }
            assert_eq!(
                committed, lowest,
                "p{p}: committed is the lowest not-done offset"
            );
        }

        // The machine's pending list is the model's delivered, not-done messages.
        let pending = self
            .g
            .pending(&PendingFilter {
                limit: MAX_PENDING_LIMIT,
                ..PendingFilter::default()
            })
            .unwrap();
        let actual: Vec<(PartitionId, u64, u32, PendingState)> = pending
            .messages
            .iter()
            .map(|m| (m.partition, m.offset.0, m.attempts, m.state))
            .collect();
        let mut expected = Vec::new();
        for p in 0..PARTITIONS {
            for (&o, m) in &self.messages[p] {
                let state = match m.state {
                    State::Live {
                        member,
                        deadline_ms,
                        ..
                    } => PendingState::InFlight {
                        member,
                        deadline_ms,
                    },
                    State::Waiting { due_ms } => PendingState::Backoff { due_ms },
                    State::DeadPending => PendingState::DeadLettering,
                    State::Fresh | State::Done => continue,
                };
                expected.push((PartitionId(p as u32), o, m.attempts, state));
            }
        }
        assert_eq!(actual, expected, "pending list");

        // The wake-up time is the earliest deadline or future redelivery.
        let now = self.now;
        let wakeup = self
            .messages
            .iter()
            .flat_map(|partition| partition.values())
            .filter_map(|m| match m.state {
                State::Live { deadline_ms, .. } => Some(deadline_ms),
                State::Waiting { due_ms } if due_ms > now => Some(due_ms),
                _ => None,
            })
            .min();
        assert_eq!(self.g.next_wakeup(now), wakeup, "next wake-up");
    }

    /// Clients ack everything (granting credit, confirming dead letters, letting time
    /// pass) until the group has caught up with every log.
    fn drain(&mut self) {
        if self.slots.iter().all(Option::is_none) {
            self.apply(&Op::Join(0));
        }
        for _ in 0..10_000 {
            let caught_up = (0..PARTITIONS).all(|p| {
                self.g
                    .partition_info(PartitionId(p as u32))
                    .unwrap()
                    .committed
                    .0
                    == self.logs[p].len() as u64
            });
            if caught_up && self.dead_letters.is_empty() {
                return;
            }
            let steps = [
                Op::Feed,
                Op::ConfirmDeadLetters,
                Op::Credit(3, 100),
                Op::Tick(1_000),
            ];
            for op in &steps {
                self.apply(op);
                self.settle_and_check();
            }
            for slot in 0..SLOTS {
                self.apply(&Op::Poll(slot, 5));
                self.settle_and_check();
                self.apply(&Op::AckAll(slot));
                self.settle_and_check();
            }
        }
        panic!("the group never caught up");
    }

    fn check_exactly_once(&self) {
        for p in 0..PARTITIONS {
            for o in self.base[p]..self.logs[p].len() as u64 {
                let count = self.messages[p].get(&o).map_or(0, |m| m.done_count);
                assert_eq!(count, 1, "p{p}/{o} done {count} times");
            }
        }
    }
}

fn settings() -> impl Strategy<Value = GroupSettings> {
    (
        prop_oneof![
            Just(OrderingMode::Key),
            Just(OrderingMode::Partition),
            Just(OrderingMode::None)
        ],
        prop_oneof![Just(0u32), Just(1), Just(2), Just(3)],
    )
        .prop_map(|(ordering, max_delivery_attempts)| GroupSettings {
            ack_deadline_ms: 100,
            retry_backoff_min_ms: 10,
            retry_backoff_max_ms: 80,
            max_delivery_attempts,
            ordering,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn group_matches_its_model(settings in settings(), ops in proptest::collection::vec(op(), 1..250)) {
        let mut h = Harness::new(settings);
        for op in &ops {
            h.apply(op);
            h.settle_and_check();
        }
        h.drain();
        h.check_exactly_once();
    }
}
