//! Fuzzes the consumer-group snapshot format (`broker/src/group/snapshot.rs`).
//!
//! Each input is used three ways:
//!
//! 1. as the bytes of a snapshot file: `GroupSnapshot::decode` returns a snapshot or an
//!    error, never panics or allocates without bound;
//! 2. as the body of a snapshot, framed with the right magic, version and CRC-32C, so the
//!    fuzzer reaches the body parser instead of stopping at the checksum;
//! 3. as a sequence of operations on a `GroupState` (joins, leaves, offers, polls, acks,
//!    nacks, extends, ticks, seeks, restarts): after every operation the machine's
//!    snapshot must encode, decode to itself, and restore into a machine whose snapshot
//!    is the same.
//!
//! Whatever decodes must re-encode to a snapshot that decodes to the same value and must
//! restore (`GroupState::restore` accepts what `decode` accepts).
//!
//! `cargo +nightly fuzz run group_snapshot -- -max_total_time=120` (from the repository
//! root).

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use herald_broker::group::{
    AckId, Delivery, GroupLimits, GroupSettings, GroupSnapshot, GroupState, KeyHash, MemberId,
    MemberOptions, OfferedRecord, Offset, OrderingMode, PartitionId, SeekTarget,
};
use libfuzzer_sys::fuzz_target;

/// Members the operations pick from.
const SLOTS: usize = 4;
/// Most partitions of a fuzzed group; a few are enough to reach every code path.
const PARTITIONS_MAX: u8 = 4;
/// Each slot's `max_in_flight_per_key`: the strict key order and two looser limits, so the
/// take-backs (a failure taking a key's later in-flight messages back) reach snapshots.
const PER_KEY: [u32; SLOTS] = [1, 3, 2, 1];
/// Most operations per input, so one input stays fast.
const OPS_MAX: usize = 256;

#[derive(Arbitrary, Debug)]
enum Op {
    Join(u8),
    Leave(u8),
    /// Publish `count` records to a partition, keys picked among a few.
    Publish {
        partition: u8,
        keys: Vec<Option<u8>>,
    },
    /// Offer what the machine wants from every partition's log.
    Feed,
    Poll {
        slot: u8,
        max: u8,
    },
    Ack {
        slot: u8,
        pick: u16,
    },
    Nack {
        slot: u8,
        pick: u16,
        delay_ms: Option<u16>,
    },
    Extend {
        slot: u8,
        pick: u16,
        extra_ms: u16,
    },
    Tick(u16),
    ConfirmDeadLetters,
    Seek {
        partition: Option<u8>,
        at: u8,
    },
    Restart,
    /// Ack with an id the machine never handed out.
    ForgedAck {
        slot: u8,
        partition: u8,
        offset: u32,
        delivery: u32,
    },
}

#[derive(Arbitrary, Debug)]
struct Script {
    ordering: u8,
    partitions: u8,
    max_delivery_attempts: u8,
    ops: Vec<Op>,
}

fuzz_target!(|data: &[u8]| {
    check_decode(data);

    let mut framed = b"HGRS\x01".to_vec();
    framed.extend_from_slice(data);
    let crc = crc32c::crc32c(&framed);
    framed.extend_from_slice(&crc.to_le_bytes());
    check_decode(&framed);

    if let Ok(script) = Script::arbitrary(&mut Unstructured::new(data)) {
        run(script);
    }
});

/// Whatever decodes re-encodes to itself and restores to a machine with the same snapshot.
fn check_decode(bytes: &[u8]) {
    let Ok(snapshot) = GroupSnapshot::decode(bytes) else {
        return;
    };
    let again = GroupSnapshot::decode(&snapshot.encode()).expect("a re-encoded snapshot decodes");
    assert_eq!(again, snapshot, "decode(encode(s)) != s");
    let state = GroupState::restore(GroupSettings::default(), GroupLimits::default(), &snapshot)
        .expect("a snapshot that decodes restores");
    assert_eq!(state.snapshot(), snapshot, "restore(s).snapshot() != s");
}

/// A group machine under a fake driver: `logs` are the partitions' keys by offset.
struct Harness {
    settings: GroupSettings,
    group: GroupState,
    logs: Vec<Vec<Option<KeyHash>>>,
    slots: [Option<MemberId>; SLOTS],
    held: Vec<(MemberId, AckId)>,
    next_member: u64,
    now: u64,
}

fn run(script: Script) {
    let settings = GroupSettings {
        ack_deadline_ms: 1_000,
        retry_backoff_min_ms: 10,
        retry_backoff_max_ms: 100,
        max_delivery_attempts: u32::from(script.max_delivery_attempts % 4),
        ordering: match script.ordering % 3 {
            0 => OrderingMode::Key,
            1 => OrderingMode::Partition,
            _ => OrderingMode::None,
        },
    };
    let partitions = 1 + script.partitions % PARTITIONS_MAX;
    let group = GroupState::new(
        settings.clone(),
        GroupLimits::default(),
        &vec![Offset(0); usize::from(partitions)],
    )
    .expect("a valid group");
    let mut h = Harness {
        settings,
        group,
        logs: vec![Vec::new(); usize::from(partitions)],
        slots: [None; SLOTS],
        held: Vec::new(),
        next_member: 0,
        now: 0,
    };
    for op in script.ops.into_iter().take(OPS_MAX) {
        h.step(op);
        h.check_snapshot();
    }
}

impl Harness {
    fn step(&mut self, op: Op) {
        let partitions = self.logs.len();
        match op {
            Op::Join(slot) => {
                let slot = usize::from(slot) % SLOTS;
                if self.slots[slot].is_none() {
                    let member = MemberId(self.next_member);
                    self.next_member += 1;
                    let options = MemberOptions {
                        max_in_flight_messages: 8,
                        max_in_flight_per_key: PER_KEY[slot],
                        ..MemberOptions::default()
                    };
                    if self.group.join(member, options, self.now).is_ok() {
                        self.slots[slot] = Some(member);
                    }
                }
            }
            Op::Leave(slot) => {
                if let Some(member) = self.slots[usize::from(slot) % SLOTS].take() {
                    self.group.leave(member, self.now).expect("a member leaves");
                    self.held.retain(|(m, _)| *m != member);
                }
            }
            Op::Publish { partition, keys } => {
                let log = &mut self.logs[usize::from(partition) % partitions];
                for key in keys.into_iter().take(16) {
                    log.push(key.map(|k| KeyHash::of(&[k % 8])));
                }
            }
            Op::Feed => self.feed(),
            Op::Poll { slot, max } => {
                if let Some(member) = self.slots[usize::from(slot) % SLOTS] {
                    let max = usize::from(max % 16);
                    let deliveries: Vec<Delivery> = self
                        .group
                        .poll(member, self.now, max)
                        .expect("a member polls");
                    assert!(deliveries.len() <= max, "poll returned more than asked");
                    self.held
                        .extend(deliveries.into_iter().map(|d| (member, d.ack_id)));
                }
            }
            Op::Ack { slot, pick } => {
                if let Some((member, id)) = self.pick(slot, pick) {
                    let _ = self.group.ack(member, &id);
                }
            }
            Op::Nack {
                slot,
                pick,
                delay_ms,
            } => {
                if let Some((member, id)) = self.pick(slot, pick) {
                    let delay = delay_ms.map(u64::from);
                    let _ = self.group.nack(member, &id, delay, "fuzz", self.now);
                }
            }
            Op::Extend {
                slot,
                pick,
                extra_ms,
            } => {
                if let Some((member, id)) = self.pick(slot, pick) {
                    let _ = self
                        .group
                        .extend(member, &id, u64::from(extra_ms), self.now);
                    self.held.push((member, id));
                }
            }
            Op::Tick(ms) => {
                self.now += u64::from(ms);
                let _ = self.group.tick(self.now);
            }
            Op::ConfirmDeadLetters => {
                for action in self.group.take_actions() {
                    if let herald_broker::group::Action::DeadLetter(letter) = action {
                        let _ = self.group.dead_lettered(letter.partition, letter.offset);
                    }
                }
            }
            Op::Seek { partition, at } => {
                let (target, len) = match partition {
                    Some(p) => {
                        let p = usize::from(p) % partitions;
                        (
                            SeekTarget::Partition(PartitionId(p as u32)),
                            self.logs[p].len(),
                        )
                    }
                    None => (
                        SeekTarget::All,
                        self.logs.iter().map(Vec::len).min().unwrap_or(0),
                    ),
                };
                let offset = (len as u64 + 1) * u64::from(at) / 256;
                self.group.seek(target, Offset(offset)).expect("a seek");
            }
            Op::Restart => {
                let bytes = self.group.snapshot().encode();
                let snapshot = GroupSnapshot::decode(&bytes).expect("an encoded snapshot decodes");
                self.group =
                    GroupState::restore(self.settings.clone(), GroupLimits::default(), &snapshot)
                        .expect("a snapshot restores");
                self.slots = [None; SLOTS];
                self.held.clear();
            }
            Op::ForgedAck {
                slot,
                partition,
                offset,
                delivery,
            } => {
                if let Some(member) = self.slots[usize::from(slot) % SLOTS] {
                    let id = AckId {
                        partition: PartitionId(u32::from(partition)),
                        offset: Offset(u64::from(offset)),
                        delivery: u64::from(delivery),
                    };
                    let _ = self.group.ack(member, &id);
                    let _ = self.group.nack(member, &id, None, "forged", self.now);
                    let _ = self.group.extend(member, &id, 5, self.now);
                }
            }
        }
    }

    /// Takes one held delivery of the slot's member, if any.
    fn pick(&mut self, slot: u8, pick: u16) -> Option<(MemberId, AckId)> {
        let member = self.slots[usize::from(slot) % SLOTS]?;
        let mine: Vec<usize> = (0..self.held.len())
            .filter(|&i| self.held[i].0 == member)
            .collect();
        if mine.is_empty() {
            return None;
        }
        Some(self.held.remove(mine[usize::from(pick) % mine.len()]))
    }

    /// The driver's fetch loop: offer each partition's records from where the machine
    /// wants them, a few at a time, while it takes them.
    fn feed(&mut self) {
        for (p, log) in self.logs.iter().enumerate() {
            let id = PartitionId(p as u32);
            // Bounded: each round offers at least one record or stops.
            for _ in 0..log.len() + 1 {
                let Some(want) = self.group.wants(id).expect("a partition") else {
                    break;
                };
                if want.0 >= log.len() as u64 {
                    break;
                }
                let records: Vec<OfferedRecord> = (want.0..(log.len() as u64).min(want.0 + 4))
                    .map(|o| OfferedRecord {
                        offset: Offset(o),
                        key: log[o as usize],
                        size_bytes: 10,
                        timestamp_ms: o as i64,
                    })
                    .collect();
                if self.group.offer(id, &records).expect("an offer") == 0 {
                    break;
                }
            }
        }
    }

    /// The machine's snapshot round-trips through bytes and through a restore.
    fn check_snapshot(&self) {
        let snapshot = self.group.snapshot();
        snapshot.validate().expect("a machine's snapshot is valid");
        let decoded =
            GroupSnapshot::decode(&snapshot.encode()).expect("an encoded snapshot decodes");
        assert_eq!(decoded, snapshot, "decode(encode(s)) != s");
        let restored = GroupState::restore(self.settings.clone(), GroupLimits::default(), &decoded)
            .expect("a snapshot restores");
        assert_eq!(restored.snapshot(), snapshot, "restore(s).snapshot() != s");
    }
}
