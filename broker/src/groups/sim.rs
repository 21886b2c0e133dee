//! A deterministic simulation of a consumer group: the driver's own fill, read-back and
//! delivery-shaping code ([`fill_partition`], [`shape_deliveries`], with `read_refs`) and
//! the state machine, run together on in-memory logs ([`MemLog`]) and a clock the test
//! moves, with random batch shapes (single records, batches ending at a wanted offset,
//! big batches), random acks, nacks, extensions, expiries, joins, leaves, seeks, dead
//! letters, and restarts from the last persisted snapshot (sometimes after a power loss
//! that cut the logs short).
//!
//! Checked after every step: no panic; the machine's own invariants; every delivered
//! record is the one stored at its offset; per-key (key mode) and per-partition
//! (partition mode) order; a message is done (acked or dead-lettered) at most once since
//! the last reset of its offset (seek, restart); the committed offsets DescribeGroup shows
//! agree with the model, and ListPending with DescribeGroup's counts; a fill pass reads as
//! far as the machine has room. At the end every record is done.
//!
//! Seeded and reproducible. `HERALD_SIM_SEED` runs one seed, `HERALD_SIM_SEEDS` sets how
//! many seeds (from `HERALD_SIM_SEED` or 1), `HERALD_SIM_STEPS` the steps per seed. A
//! failure prints its seed and step. The long run (see the README):
//! `HERALD_SIM_SEEDS=20000 HERALD_SIM_STEPS=2000 cargo test --release -p herald-broker --lib groups::sim`

use std::collections::HashMap;
use std::sync::Mutex;

use super::delivery::shape_deliveries;
use super::read::{Feed, MachineAccess, fill_partition};
use super::{Clock, LogSource, MemLog, Outgoing};
use crate::group::{
    AckId, AckOutcome, Action, GroupLimits, GroupSettings, GroupSnapshot, GroupState, MemberId,
    MemberOptions, NackOutcome, Offset, OrderingMode, PartitionId, PendingFilter, PendingState,
};
use crate::storage::batch;

/// Seeds run by default (CI): with [`DEFAULT_STEPS`] each, a few seconds in a debug build.
const DEFAULT_SEEDS: u64 = 300;
/// Steps per seed by default.
const DEFAULT_STEPS: usize = 400;
/// Most driver passes of the final drain before the test declares the group stuck.
const DRAIN_PASSES_MAX: usize = 2_000;
/// Most members at once: enough for handovers between several.
const MEMBERS_MAX: usize = 4;
/// Most records in one partition's log, so a seed's tables stay small and fast.
const RECORDS_MAX: u64 = 600;

/// splitmix64: small, fast, and the same on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The simulated clock: moves only when the test says.
struct SimClock(u64);

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        self.0
    }
}

/// What the test knows about one stored record.
#[derive(Clone)]
struct ModelRecord {
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    /// Done (acked, dead-lettered, or below a seek) as far as the group is concerned.
    done: bool,
}

/// A member and the deliveries it holds (not yet acked or nacked).
struct SimMember {
    batched: bool,
    /// Its `max_in_flight_per_key`.
    per_key: u32,
    held: Vec<AckId>,
}

struct Sim {
    rng: Rng,
    clock: SimClock,
    logs: Vec<MemLog>,
    model: Vec<Vec<ModelRecord>>,
    state: Mutex<GroupState>,
    settings: GroupSettings,
    limits: GroupLimits,
    feed: Feed,
    members: HashMap<MemberId, SimMember>,
    next_member: u64,
    /// The last snapshot "written to disk": what a restart comes back to.
    persisted: Vec<u8>,
    /// Dead letters the machine asked for and the test has not confirmed yet.
    dead_letters: Vec<(PartitionId, Offset)>,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = Rng(seed);
        let partitions = 1 + rng.below(3) as usize;
        let ordering = match rng.below(3) {
            0 => OrderingMode::Key,
            1 => OrderingMode::Partition,
            _ => OrderingMode::None,
        };
        let backoff_min = 1 + rng.below(50);
        let settings = GroupSettings {
            ack_deadline_ms: 20 + rng.below(300),
            retry_backoff_min_ms: backoff_min,
            retry_backoff_max_ms: backoff_min + rng.below(500),
            max_delivery_attempts: if rng.chance(50) {
                0
            } else {
                1 + rng.below(4) as u32
            },
            ordering,
        };
        // Small buffers, so fills stop often, and at batch ends.
        let buffered = 1 + rng.below(16) as usize;
        let limits = GroupLimits {
            max_buffered_per_partition: buffered,
            max_tracked_per_partition: buffered + rng.below(64) as usize,
            ..GroupLimits::default()
        };
        let state = GroupState::new(settings.clone(), limits, &vec![Offset(0); partitions])
            .expect("valid settings");
        let persisted = state.snapshot().encode();
        Sim {
            rng,
            clock: SimClock(1_000_000),
            logs: vec![MemLog::new(); partitions],
            model: vec![Vec::new(); partitions],
            state: Mutex::new(state),
            settings,
            limits,
            feed: Feed::default(),
            members: HashMap::new(),
            next_member: 1,
            persisted,
            dead_letters: Vec::new(),
        }
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Appends a batch of a random shape to a random partition.
    fn append(&mut self) {
        let p = self.rng.below(self.logs.len() as u64) as usize;
        if self.logs[p].high_watermark() >= RECORDS_MAX {
            return;
        }
        let count = match self.rng.below(10) {
            0..=4 => 1,
            5..=7 => 2 + self.rng.below(6),
            _ => 8 + self.rng.below(60),
        };
        let base = self.logs[p].high_watermark();
        let mut records = Vec::new();
        for i in 0..count {
            let key = match self.rng.below(5) {
                0 => None,
                k => Some(format!("k{k}").into_bytes()),
            };
            let mut value = format!("{p}:{}:", base + i).into_bytes();
            value.resize(value.len() + self.rng.below(24) as usize, b'v');
            records.push(ModelRecord {
                key,
                value,
                done: false,
            });
        }
        let encoded: Vec<(Option<&[u8]>, &[u8])> = records
            .iter()
            .map(|r| (r.key.as_deref(), &r.value[..]))
            .collect();
        let now = self.now() as i64;
        let at = self.logs[p].append(now, &encoded);
        assert_eq!(at as usize, self.model[p].len());
        self.model[p].extend(records);
    }

    fn join(&mut self) {
        if self.members.len() >= MEMBERS_MAX {
            return;
        }
        let member = MemberId(self.next_member);
        self.next_member += 1;
        // Half the members take one message of a key at a time, the others up to 2-4.
        let per_key = if self.rng.chance(50) {
            1
        } else {
            2 + self.rng.below(3) as u32
        };
        let options = MemberOptions {
            max_in_flight_messages: 1 + self.rng.below(20) as u32,
            max_in_flight_per_key: per_key,
            ..MemberOptions::default()
        };
        let now = self.now();
        self.state
            .with_machine(|s| s.join(member, options, now))
            .expect("join");
        let batched = self.rng.chance(50);
        self.members.insert(
            member,
            SimMember {
                batched,
                per_key,
                held: Vec::new(),
            },
        );
    }

    fn leave(&mut self) {
        let Some(member) = self.pick_member() else {
            return;
        };
        self.members.remove(&member);
        let now = self.now();
        self.state
            .with_machine(|s| s.leave(member, now))
            .expect("leave");
    }

    fn pick_member(&mut self) -> Option<MemberId> {
        let mut ids: Vec<MemberId> = self.members.keys().copied().collect();
        ids.sort();
        (!ids.is_empty()).then(|| ids[self.rng.below(ids.len() as u64) as usize])
    }

    /// One pass of the driver: fill every partition, tick, take the actions, deliver to
    /// every member.
    fn pass(&mut self, poll_max: usize) {
        for p in 0..self.logs.len() {
            fill_partition(&mut self.feed, &self.state, &self.logs[p], p, ("sim", "g"));
            // A pass reads as far as the machine has room: it stops only when the machine
            // is full or the log is read to its end.
            let wants = self
                .state
                .with_machine(|s| s.wants(PartitionId(p as u32)))
                .expect("partition");
            if let Some(want) = wants {
                assert!(
                    want.0 >= self.logs[p].high_watermark(),
                    "fill stopped at {want} of partition {p} with room left and the log at {}",
                    self.logs[p].high_watermark()
                );
            }
        }
        let now = self.now();
        self.state.with_machine(|s| s.tick(now));
        self.take_actions();
        let mut ids: Vec<MemberId> = self.members.keys().copied().collect();
        ids.sort();
        for member in ids {
            self.deliver(member, poll_max);
        }
    }

    fn take_actions(&mut self) {
        let actions = self.state.with_machine(|s| s.take_actions());
        for action in actions {
            if let Action::DeadLetter(d) = action {
                self.dead_letters.push((d.partition, d.offset));
            }
        }
    }

    /// Polls `member`, shapes the deliveries as the broker does, and checks each record
    /// and the ordering mode.
    fn deliver(&mut self, member: MemberId, poll_max: usize) {
        let now = self.now();
        let deliveries = self
            .state
            .with_machine(|s| s.poll(member, now, poll_max))
            .expect("poll");
        if deliveries.is_empty() {
            return;
        }
        let batched = self.members[&member].batched;
        let logs = &self.logs;
        let (responses, missing) = shape_deliveries(
            &mut self.feed,
            |p| logs.get(p.0 as usize),
            batched,
            deliveries,
        );
        // Only retention removes records from below the end, and the simulation has none.
        assert!(
            missing.is_empty(),
            "deliveries without records: {missing:?}"
        );
        let mut got: Vec<(AckId, Vec<u8>)> = Vec::new();
        for response in responses {
            let Outgoing::Deliveries(d) = response else {
                panic!("the shaper sends deliveries only");
            };
            if !batched {
                assert!(d.runs.is_empty(), "a run to a member without batching");
            }
            for single in d.singles {
                assert_eq!(single.record.offset, single.delivery.offset.0);
                got.push((single.delivery.ack_id, single.record.value.to_vec()));
            }
            for run in d.runs {
                let records = batch::Records::resume(
                    run.base_offset,
                    run.first_timestamp,
                    run.first_offset,
                    &run.records,
                )
                .expect("a run resumes");
                let mut count = 0;
                for (i, record) in records.enumerate() {
                    let record = record.expect("a run's record decodes");
                    assert_eq!(record.offset, run.first_offset + i as u64);
                    let ack_id = AckId {
                        partition: run.partition,
                        offset: Offset(record.offset),
                        delivery: run.first_delivery + i as u64,
                    };
                    got.push((ack_id, record.value.to_vec()));
                    count += 1;
                }
                assert_eq!(count, run.count, "a run holds its count of records");
            }
        }
        let mode = self.settings.ordering;
        for (ack_id, value) in got {
            let p = ack_id.partition.0 as usize;
            let o = ack_id.offset.0 as usize;
            let model = &self.model[p];
            assert!(o < model.len(), "delivered offset {o} past the log");
            assert_eq!(
                value, model[o].value,
                "partition {p} offset {o}: wrong record"
            );
            assert!(
                !model[o].done,
                "partition {p} offset {o} delivered though done"
            );
            match mode {
                OrderingMode::Key if model[o].key.is_some() => {
                    // Every earlier not-done message of the key is in flight to this member,
                    // and no more of the key than the member's limit.
                    let earlier: Vec<usize> = (0..o)
                        .filter(|&b| !model[b].done && model[b].key == model[o].key)
                        .collect();
                    if !earlier.is_empty() {
                        let limit = self.members[&member].per_key as usize;
                        assert!(
                            earlier.len() < limit,
                            "partition {p}: offset {o} delivered with {} earlier of its key \
                             not done, limit {limit}",
                            earlier.len()
                        );
                        let filter = PendingFilter {
                            partition: Some(ack_id.partition),
                            key: None,
                            limit: crate::group::MAX_PENDING_LIMIT,
                        };
                        let pending = self
                            .state
                            .with_machine(|s| s.pending(&filter))
                            .expect("pending");
                        for b in earlier {
                            let state = pending
                                .messages
                                .iter()
                                .find(|m| m.offset.0 == b as u64)
                                .map(|m| m.state);
                            assert!(
                                matches!(state, Some(PendingState::InFlight { member: m, .. }) if m == member),
                                "partition {p}: offset {o} delivered while {b} of its key is {state:?}"
                            );
                        }
                    }
                }
                OrderingMode::Partition => {
                    if let Some(before) = (0..o).find(|&b| !model[b].done) {
                        panic!("partition {p}: offset {o} delivered before {before} was done");
                    }
                }
                _ => {}
            }
            self.members
                .get_mut(&member)
                .expect("member")
                .held
                .push(ack_id);
        }
    }

    /// A member settles some of what it holds: ack, nack, extend or nothing (to expire).
    fn settle(&mut self) {
        let Some(member) = self.pick_member() else {
            return;
        };
        let held = std::mem::take(&mut self.members.get_mut(&member).expect("member").held);
        let now = self.now();
        let mut kept = Vec::new();
        for ack_id in held {
            match self.rng.below(10) {
                0..=5 => self.ack(member, &ack_id),
                6 => {
                    let delay = self.rng.chance(50).then(|| self.rng.below(100));
                    let outcome = self
                        .state
                        .with_machine(|s| s.nack(member, &ack_id, delay, "sim", now))
                        .expect("nack");
                    if let NackOutcome::DeadLetter = outcome {
                        self.take_actions();
                    }
                }
                7 => {
                    let extra = self.rng.below(200);
                    let _ = self
                        .state
                        .with_machine(|s| s.extend(member, &ack_id, extra, now))
                        .expect("extend");
                    kept.push(ack_id);
                }
                8 => kept.push(ack_id),
                _ => {} // dropped: it expires
            }
        }
        self.members
            .get_mut(&member)
            .expect("member")
            .held
            .extend(kept);
    }

    fn ack(&mut self, member: MemberId, ack_id: &AckId) {
        let outcome = self
            .state
            .with_machine(|s| s.ack(member, ack_id))
            .expect("ack");
        if outcome == AckOutcome::Acked {
            let record = &mut self.model[ack_id.partition.0 as usize][ack_id.offset.0 as usize];
            assert!(!record.done, "{ack_id:?} acked twice");
            record.done = true;
        }
    }

    /// Confirms some dead letters (appended to the dead-letter topic).
    fn confirm_dead_letters(&mut self, all: bool) {
        let pending = std::mem::take(&mut self.dead_letters);
        for (partition, offset) in pending {
            if !all && self.rng.chance(50) {
                self.dead_letters.push((partition, offset));
                continue;
            }
            let confirmed = self
                .state
                .with_machine(|s| s.dead_lettered(partition, offset))
                .expect("dead_lettered");
            if confirmed {
                let record = &mut self.model[partition.0 as usize][offset.0 as usize];
                assert!(!record.done, "{partition}/{offset} dead-lettered when done");
                record.done = true;
            }
        }
    }

    fn seek(&mut self) {
        let p = self.rng.below(self.logs.len() as u64) as usize;
        let end = self.logs[p].high_watermark();
        let to = self.rng.below(end + 1);
        self.state
            .with_machine(|s| {
                s.seek(
                    crate::group::SeekTarget::Partition(PartitionId(p as u32)),
                    Offset(to),
                )
            })
            .expect("seek");
        for (o, record) in self.model[p].iter_mut().enumerate() {
            record.done = (o as u64) < to;
        }
        self.dead_letters.retain(|(q, _)| q.0 as usize != p);
    }

    fn persist(&mut self) {
        self.persisted = self.state.with_machine(|s| s.snapshot().encode());
    }

    /// A crash and a restart from the last persisted snapshot, as the broker loads it;
    /// sometimes the logs lost their tail first (a power loss under fsync `never`).
    fn restart(&mut self) {
        let mut snapshot = GroupSnapshot::decode(&self.persisted).expect("snapshot decodes");
        for p in 0..self.logs.len() {
            if self.rng.chance(30) {
                let end = self.logs[p].high_watermark();
                self.logs[p].truncate(self.rng.below(end + 1));
                let end = self.logs[p].high_watermark();
                self.model[p].truncate(end as usize);
            }
            snapshot.partitions[p].clamp_to_log_end(self.logs[p].high_watermark());
        }
        let state =
            GroupState::restore(self.settings.clone(), self.limits, &snapshot).expect("restore");
        for (p, records) in self.model.iter_mut().enumerate() {
            let s = &snapshot.partitions[p];
            for (o, record) in records.iter_mut().enumerate() {
                let o = o as u64;
                record.done = o < s.committed.0
                    || s.done.iter().any(|&(start, end)| o >= start.0 && o < end.0);
            }
        }
        self.state = Mutex::new(state);
        self.feed = Feed::default();
        self.members.clear();
        self.dead_letters.clear();
    }

    /// The machine's invariants, and what DescribeGroup and ListPending show against the
    /// model and each other.
    fn check(&self) {
        let state = self.state.lock().unwrap();
        state.check_invariants();
        let description = state.describe();
        let mut tracked = 0;
        for info in &description.partitions {
            let p = info.partition.0 as usize;
            let lowest = self.model[p]
                .iter()
                .position(|r| !r.done)
                .unwrap_or(self.model[p].len()) as u64;
            assert_eq!(
                info.committed.0, lowest,
                "partition {p}: DescribeGroup's committed offset against the model"
            );
            tracked += info.in_flight + info.waiting + info.dead_lettering;
        }
        let pending = state
            .pending(&PendingFilter {
                partition: None,
                key: None,
                limit: crate::group::MAX_PENDING_LIMIT,
            })
            .expect("pending");
        if !pending.truncated {
            assert_eq!(
                pending.messages.len(),
                tracked,
                "ListPending against DescribeGroup"
            );
        }
        for message in &pending.messages {
            let record = &self.model[message.partition.0 as usize][message.offset.0 as usize];
            assert!(!record.done, "{message:?} pending though done");
        }
    }

    fn step(&mut self) {
        match self.rng.below(100) {
            0..=24 => self.append(),
            25..=49 => {
                let poll_max = 1 + self.rng.below(40) as usize;
                self.pass(poll_max);
            }
            50..=69 => self.settle(),
            70..=79 => {
                self.clock.0 += self.rng.below(400);
                let now = self.now();
                self.state.with_machine(|s| s.tick(now));
                self.take_actions();
            }
            80..=84 => self.join(),
            85..=87 => self.leave(),
            88..=91 => self.confirm_dead_letters(false),
            92..=93 => self.seek(),
            94..=97 => self.persist(),
            _ => self.restart(),
        }
        self.check();
    }

    /// No more faults: one member takes and acks everything until every record is done.
    fn drain(&mut self) {
        if self.members.is_empty() {
            self.join();
        }
        for _ in 0..DRAIN_PASSES_MAX {
            if self.model.iter().all(|p| p.iter().all(|r| r.done)) {
                return;
            }
            self.pass(super::POLL_MAX);
            let mut ids: Vec<MemberId> = self.members.keys().copied().collect();
            ids.sort();
            for member in ids {
                let held = std::mem::take(&mut self.members.get_mut(&member).unwrap().held);
                for ack_id in held {
                    self.ack(member, &ack_id);
                }
            }
            self.confirm_dead_letters(true);
            self.clock.0 += self.settings.retry_backoff_max_ms + 1;
            self.check();
        }
        let left: Vec<(usize, usize)> = self
            .model
            .iter()
            .enumerate()
            .flat_map(|(p, r)| {
                r.iter()
                    .enumerate()
                    .filter(|(_, r)| !r.done)
                    .map(move |(o, _)| (p, o))
            })
            .take(10)
            .collect();
        panic!("the group never finished: first not-done (partition, offset): {left:?}");
    }
}

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Runs one seed; on a panic, says which seed and step.
fn run_seed(seed: u64, steps: usize) {
    let step = std::sync::atomic::AtomicUsize::new(0);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut sim = Sim::new(seed);
        for i in 0..steps {
            step.store(i, std::sync::atomic::Ordering::Relaxed);
            sim.step();
        }
        step.store(steps, std::sync::atomic::Ordering::Relaxed);
        sim.drain();
    }));
    if let Err(panic) = outcome {
        eprintln!(
            "group simulation failed: seed {seed}, step {} of {steps} (rerun with HERALD_SIM_SEED={seed} HERALD_SIM_SEEDS=1 HERALD_SIM_STEPS={steps})",
            step.load(std::sync::atomic::Ordering::Relaxed)
        );
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn group_driver_and_machine_simulation() {
    let first = env("HERALD_SIM_SEED").unwrap_or(1);
    let seeds = env("HERALD_SIM_SEEDS").unwrap_or(if env("HERALD_SIM_SEED").is_some() {
        1
    } else {
        DEFAULT_SEEDS
    });
    let steps = env("HERALD_SIM_STEPS").map_or(DEFAULT_STEPS, |s| s as usize);
    for seed in first..first + seeds {
        run_seed(seed, steps);
    }
}
