//! Idempotent producers: what a partition's writer remembers of each producer so that a
//! batch sent again after a lost reply is stored once.
//!
//! A producer numbers its batches per partition (the producer block of the batch format:
//! id, epoch, base sequence). The writer keeps, per producer, its epoch and the sequence
//! ranges and offsets of its last [`RETAINED_BATCHES`] batches, and checks every batch that
//! carries a block before it is appended:
//!
//! - same epoch, a retained `(first, last)` sequence range: a **duplicate**, answered with
//!   the offsets the batch got the first time, and not stored again;
//! - same epoch, `first` = the last retained sequence + 1: the next batch, appended;
//! - same epoch, anything else: refused with [`StorageError::OutOfOrderSequence`], naming the
//!   sequence expected; a producer whose batch is refused never sends the later ones before
//!   it, so the refusal tells it to renumber (a new epoch) rather than lose or reorder;
//! - an older epoch: refused with [`StorageError::ProducerFenced`]: a newer instance of the
//!   same producer has written here;
//! - a newer epoch: must start at sequence 0, and replaces the older epoch's state;
//! - a producer the writer does not know (its first batch here, or its state expired):
//!   appended whatever its sequence, and remembered from then on.
//!
//! The state is bounded: a producer idle for [`ProducerLimits::idle_expiry_ms`] is
//! forgotten, and past [`ProducerLimits::max_producers`] the least recently seen tenth is.
//! A forgotten producer's retry of an old batch would be stored again; the README says so.
//!
//! It survives restarts and crashes without a second write per publish: the log's batches
//! carry the producer block, so the state is rebuilt by walking batch headers. To keep that
//! walk short, the writer snapshots the table into `producers.snapshot` when it rolls a
//! segment and when it closes, and on open walks only the batches after the snapshot's
//! offset. The snapshot is derived state: a missing or damaged one is logged and the whole
//! log is walked instead.
//!
//! # `producers.snapshot`, version 1 (integers little-endian)
//!
//! | size | field |
//! |---:|---|
//! | 4 | magic `HPRS` |
//! | 1 | version `1` |
//! | 3 | zero |
//! | 8 | `next_offset` u64: the state covers every batch below this offset |
//! | 4 | `count` u32: producers that follow |
//! | per producer | `producer_id` u64, `epoch` u16, `batch_count` u8 (1..=5), zero u8, `last_seen_ms` i64, then `batch_count` × (`first_sequence` u32, `last_sequence` u32, `base_offset` u64, `last_offset` u64), oldest first |
//! | 4 | CRC-32C of every byte before it |

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::Path;

use herald_format::batch::ProducerStamp;

use super::appended::Appended;
use super::error::{Result, StorageError};

/// Batches remembered per producer: how many a producer may have in flight to one
/// partition and still have every one of them recognised when it is sent again.
pub const RETAINED_BATCHES: usize = 5;
/// Name of the snapshot file in a partition directory.
pub const SNAPSHOT_FILE: &str = "producers.snapshot";
const SNAPSHOT_MAGIC: &[u8; 4] = b"HPRS";
const SNAPSHOT_VERSION: u8 = 1;
const SNAPSHOT_HEADER_BYTES: usize = 20;
const SNAPSHOT_PRODUCER_BYTES: usize = 20;
const SNAPSHOT_BATCH_BYTES: usize = 24;

/// Bounds on the producer state a partition keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerLimits {
    /// A producer not seen for this long is forgotten.
    pub idle_expiry_ms: i64,
    /// Producers remembered per partition; past it, the least recently seen are forgotten.
    pub max_producers: usize,
}

impl Default for ProducerLimits {
    fn default() -> Self {
        ProducerLimits {
            // A day, as Kafka's `producer.id.expiration.ms`: long enough for any retry.
            idle_expiry_ms: 24 * 60 * 60 * 1000,
            max_producers: 10_000,
        }
    }
}

/// What [`Producers::check`] decided for a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Append it.
    Append,
    /// Already stored at these offsets: answer with them and append nothing.
    Duplicate(Appended),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BatchEntry {
    first_sequence: u32,
    last_sequence: u32,
    base_offset: u64,
    last_offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ProducerState {
    epoch: u16,
    last_seen_ms: i64,
    /// Oldest first; never empty.
    batches: VecDeque<BatchEntry>,
}

/// One partition's producer table. Owned by the partition's single writer: no lock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Producers {
    map: HashMap<u64, ProducerState>,
    limits: ProducerLimits,
    /// Producers forgotten because the table was full.
    evicted: u64,
}

impl Producers {
    pub fn new(limits: ProducerLimits) -> Self {
        Producers {
            map: HashMap::new(),
            limits,
            evicted: 0,
        }
    }

    pub fn set_limits(&mut self, limits: ProducerLimits) {
        self.limits = limits;
    }

    pub fn limits(&self) -> ProducerLimits {
        self.limits
    }

    /// Producers remembered.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Producers forgotten so far because the table was full.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Decides what to do with a batch of `record_count` records stamped `stamp`.
    pub fn check(&self, stamp: ProducerStamp, record_count: u32) -> Result<Check> {
        let Some(state) = self.map.get(&stamp.producer_id) else {
            return Ok(Check::Append);
        };
        if stamp.epoch < state.epoch {
            return Err(StorageError::ProducerFenced {
                producer_id: stamp.producer_id,
                epoch: stamp.epoch,
                current_epoch: state.epoch,
            });
        }
        if stamp.epoch > state.epoch {
            return if stamp.base_sequence == 0 {
                Ok(Check::Append)
            } else {
                Err(StorageError::OutOfOrderSequence {
                    producer_id: stamp.producer_id,
                    epoch: stamp.epoch,
                    expected: 0,
                    got: stamp.base_sequence,
                })
            };
        }
        let last_sequence = stamp.last_sequence(record_count);
        if let Some(entry) = state
            .batches
            .iter()
            .find(|e| e.first_sequence == stamp.base_sequence)
        {
            if entry.last_sequence == last_sequence {
                return Ok(Check::Duplicate(Appended {
                    base_offset: entry.base_offset,
                    last_offset: entry.last_offset,
                }));
            }
        }
        let expected = state
            .batches
            .back()
            .expect("a producer's state holds a batch")
            .last_sequence
            .wrapping_add(1);
        if stamp.base_sequence == expected {
            Ok(Check::Append)
        } else {
            Err(StorageError::OutOfOrderSequence {
                producer_id: stamp.producer_id,
                epoch: stamp.epoch,
                expected,
                got: stamp.base_sequence,
            })
        }
    }

    /// Remembers a batch that [`check`](Self::check) allowed and the log appended.
    pub fn record(
        &mut self,
        stamp: ProducerStamp,
        record_count: u32,
        appended: Appended,
        now_ms: i64,
    ) {
        let entry = BatchEntry {
            first_sequence: stamp.base_sequence,
            last_sequence: stamp.last_sequence(record_count),
            base_offset: appended.base_offset,
            last_offset: appended.last_offset,
        };
        let state = self
            .map
            .entry(stamp.producer_id)
            .or_insert_with(|| ProducerState {
                epoch: stamp.epoch,
                last_seen_ms: now_ms,
                batches: VecDeque::with_capacity(RETAINED_BATCHES),
            });
        if stamp.epoch != state.epoch {
            state.epoch = stamp.epoch;
            state.batches.clear();
        }
        state.last_seen_ms = state.last_seen_ms.max(now_ms);
        if state.batches.len() == RETAINED_BATCHES {
            state.batches.pop_front();
        }
        state.batches.push_back(entry);
        if self.map.len() > self.limits.max_producers {
            self.evict_oldest();
        }
    }

    /// Forgets producers idle for longer than the limit; returns how many.
    pub fn expire(&mut self, now_ms: i64) -> usize {
        let before = self.map.len();
        let expiry = self.limits.idle_expiry_ms;
        self.map
            .retain(|_, state| now_ms.saturating_sub(state.last_seen_ms) <= expiry);
        before - self.map.len()
    }

    /// Forgets the least recently seen tenth (at least one), so that a table at its limit
    /// pays for a sort once per many new producers, not on every one.
    fn evict_oldest(&mut self) {
        let target = self.limits.max_producers - self.limits.max_producers / 10;
        let excess = self.map.len().saturating_sub(target).max(1);
        let mut seen: Vec<(i64, u64)> = self
            .map
            .iter()
            .map(|(id, s)| (s.last_seen_ms, *id))
            .collect();
        seen.select_nth_unstable(excess - 1);
        for (_, id) in &seen[..excess] {
            self.map.remove(id);
        }
        self.evicted += excess as u64;
    }

    /// The snapshot bytes of this table, valid for every batch below `next_offset`.
    pub fn encode(&self, next_offset: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            SNAPSHOT_HEADER_BYTES
                + self.map.len() * (SNAPSHOT_PRODUCER_BYTES + 2 * SNAPSHOT_BATCH_BYTES)
                + 4,
        );
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.extend_from_slice(&[SNAPSHOT_VERSION, 0, 0, 0]);
        out.extend_from_slice(&next_offset.to_le_bytes());
        out.extend_from_slice(&(self.map.len() as u32).to_le_bytes());
        // Sorted, so the same table always makes the same bytes.
        let mut ids: Vec<&u64> = self.map.keys().collect();
        ids.sort_unstable();
        for id in ids {
            let state = &self.map[id];
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&state.epoch.to_le_bytes());
            out.extend_from_slice(&[state.batches.len() as u8, 0]);
            out.extend_from_slice(&state.last_seen_ms.to_le_bytes());
            for b in &state.batches {
                out.extend_from_slice(&b.first_sequence.to_le_bytes());
                out.extend_from_slice(&b.last_sequence.to_le_bytes());
                out.extend_from_slice(&b.base_offset.to_le_bytes());
                out.extend_from_slice(&b.last_offset.to_le_bytes());
            }
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Reads snapshot bytes: the table and the offset it is valid below. Any damage is an
    /// error naming it, never a panic.
    pub fn decode(bytes: &[u8], limits: ProducerLimits) -> Result<(Producers, u64), String> {
        if bytes.len() < SNAPSHOT_HEADER_BYTES + 4 {
            return Err(format!("{} bytes is shorter than a snapshot", bytes.len()));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        let expected = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
        let actual = crc32c::crc32c(body);
        if expected != actual {
            return Err(format!(
                "CRC mismatch: file says {expected:#010x}, contents hash to {actual:#010x}"
            ));
        }
        if &body[..4] != SNAPSHOT_MAGIC {
            return Err("bad magic".into());
        }
        if body[4] != SNAPSHOT_VERSION {
            return Err(format!("unsupported version {}", body[4]));
        }
        let mut cur = &body[8..];
        let mut take = |n: usize| -> Result<&[u8], String> {
            if cur.len() < n {
                return Err("truncated".to_string());
            }
            let (head, rest) = cur.split_at(n);
            cur = rest;
            Ok(head)
        };
        let u64_of = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
        let u32_of = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes"));
        let next_offset = u64_of(take(8)?);
        let count = u32_of(take(4)?) as usize;
        let mut producers = Producers::new(limits);
        for _ in 0..count {
            let head = take(SNAPSHOT_PRODUCER_BYTES)?;
            let id = u64_of(&head[..8]);
            let epoch = u16::from_le_bytes([head[8], head[9]]);
            let batch_count = head[10] as usize;
            let last_seen_ms = u64_of(&head[12..20]) as i64;
            if id == 0 || !(1..=RETAINED_BATCHES).contains(&batch_count) {
                return Err(format!("producer {id} has {batch_count} batches"));
            }
            let mut batches = VecDeque::with_capacity(RETAINED_BATCHES);
            for _ in 0..batch_count {
                let b = take(SNAPSHOT_BATCH_BYTES)?;
                let entry = BatchEntry {
                    first_sequence: u32_of(&b[..4]),
                    last_sequence: u32_of(&b[4..8]),
                    base_offset: u64_of(&b[8..16]),
                    last_offset: u64_of(&b[16..24]),
                };
                if entry.last_offset < entry.base_offset || entry.last_offset >= next_offset {
                    return Err(format!("producer {id} has a batch outside the log"));
                }
                batches.push_back(entry);
            }
            let state = ProducerState {
                epoch,
                last_seen_ms,
                batches,
            };
            if producers.map.insert(id, state).is_some() {
                return Err(format!("producer {id} appears twice"));
            }
        }
        if !cur.is_empty() {
            return Err(format!("{} bytes after the last producer", cur.len()));
        }
        Ok((producers, next_offset))
    }

    /// Writes the snapshot into `dir` (a temporary file renamed over the old one, so a
    /// crash leaves the old or the new, never a torn one); `sync` flushes file and
    /// directory.
    pub fn write_snapshot(&self, dir: &Path, next_offset: u64, sync: bool) -> Result<()> {
        let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
        let io = |e| StorageError::io("writing", &tmp, e);
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        file.write_all(&self.encode(next_offset)).map_err(io)?;
        if sync {
            file.sync_data().map_err(io)?;
        }
        drop(file);
        let path = dir.join(SNAPSHOT_FILE);
        std::fs::rename(&tmp, &path).map_err(|e| StorageError::io("renaming", &path, e))?;
        if sync {
            super::segment::sync_dir(dir)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stamp(id: u64, epoch: u16, seq: u32) -> ProducerStamp {
        ProducerStamp {
            producer_id: id,
            epoch,
            base_sequence: seq,
        }
    }

    fn at(base: u64, count: u32) -> Appended {
        Appended {
            base_offset: base,
            last_offset: base + u64::from(count) - 1,
        }
    }

    #[test]
    fn duplicates_next_gaps_and_fencing() {
        let mut p = Producers::new(ProducerLimits::default());
        assert_eq!(
            p.check(stamp(1, 0, 7), 3).unwrap(),
            Check::Append,
            "unknown: any sequence"
        );
        p.record(stamp(1, 0, 7), 3, at(100, 3), 0);
        assert_eq!(
            p.check(stamp(1, 0, 7), 3).unwrap(),
            Check::Duplicate(at(100, 3))
        );
        assert_eq!(p.check(stamp(1, 0, 10), 1).unwrap(), Check::Append);
        assert!(matches!(
            p.check(stamp(1, 0, 11), 1),
            Err(StorageError::OutOfOrderSequence {
                expected: 10,
                got: 11,
                ..
            })
        ));
        // The same first sequence with another length is not the same batch.
        assert!(matches!(
            p.check(stamp(1, 0, 7), 2),
            Err(StorageError::OutOfOrderSequence { expected: 10, .. })
        ));
        // A newer epoch starts at 0 and fences the older.
        assert!(matches!(
            p.check(stamp(1, 1, 5), 1),
            Err(StorageError::OutOfOrderSequence { expected: 0, .. })
        ));
        p.record(stamp(1, 1, 0), 1, at(103, 1), 1);
        assert!(matches!(
            p.check(stamp(1, 0, 10), 1),
            Err(StorageError::ProducerFenced {
                current_epoch: 1,
                ..
            })
        ));
        assert_eq!(p.check(stamp(1, 1, 1), 1).unwrap(), Check::Append);
    }

    #[test]
    fn sequences_wrap() {
        let mut p = Producers::new(ProducerLimits::default());
        p.record(stamp(9, 0, u32::MAX - 1), 2, at(0, 2), 0);
        assert_eq!(p.check(stamp(9, 0, 0), 1).unwrap(), Check::Append);
        p.record(stamp(9, 0, u32::MAX), 3, at(2, 3), 0);
        assert_eq!(
            p.check(stamp(9, 0, u32::MAX), 3).unwrap(),
            Check::Duplicate(at(2, 3))
        );
        assert_eq!(p.check(stamp(9, 0, 2), 1).unwrap(), Check::Append);
    }

    #[test]
    fn expiry_and_the_size_limit_bound_the_table() {
        let limits = ProducerLimits {
            idle_expiry_ms: 1_000,
            max_producers: 100,
        };
        let mut p = Producers::new(limits);
        for id in 1..=100u64 {
            p.record(stamp(id, 0, 0), 1, at(id, 1), id as i64);
        }
        assert_eq!(p.len(), 100);
        p.record(stamp(101, 0, 0), 1, at(101, 1), 101);
        assert_eq!(p.len(), 90, "a tenth is forgotten at once");
        assert_eq!(p.evicted(), 11);
        // The oldest went: producer 1 is unknown again, 101 is remembered.
        assert_eq!(p.check(stamp(1, 0, 0), 1).unwrap(), Check::Append);
        assert_eq!(
            p.check(stamp(101, 0, 0), 1).unwrap(),
            Check::Duplicate(at(101, 1))
        );
        assert_eq!(
            p.expire(1_050),
            38,
            "idle more than 1 s at 1,050 ms: ids 12..=49"
        );
        assert_eq!(p.len(), 52);
    }

    #[test]
    fn snapshot_round_trip_and_damage() {
        let mut p = Producers::new(ProducerLimits::default());
        for id in 1..=20u64 {
            for i in 0..(id as u32 % 7) + 1 {
                p.record(
                    stamp(id, (id % 3) as u16, i * 2),
                    2,
                    at(id * 100 + u64::from(i) * 2, 2),
                    5,
                );
            }
        }
        let bytes = p.encode(10_000);
        let (q, next) = Producers::decode(&bytes, ProducerLimits::default()).unwrap();
        assert_eq!(next, 10_000);
        assert_eq!(q, p);
        assert_eq!(q.encode(10_000), bytes, "encoding is deterministic");
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(
                Producers::decode(&bad, ProducerLimits::default()).is_err(),
                "flip at {i}"
            );
        }
        for len in 0..bytes.len() {
            assert!(Producers::decode(&bytes[..len], ProducerLimits::default()).is_err());
        }
        // Offsets beyond the snapshot's own next_offset are refused even with a good CRC.
        assert!(Producers::decode(&p.encode(50), ProducerLimits::default()).is_err());
    }

    proptest! {
        /// A model: a producer that keeps at most RETAINED_BATCHES batches in flight and
        /// resends any of them in any order is stored exactly once per batch, in sequence.
        #[test]
        fn retries_are_stored_once(ops in proptest::collection::vec((0u8..4, 1u32..4, 0usize..5), 1..200)) {
            let mut p = Producers::new(ProducerLimits::default());
            let mut log: Vec<u32> = Vec::new(); // the first sequence of each stored batch
            let mut next_offset = 0u64;
            let mut sent: Vec<(u32, u32, Option<Appended>)> = Vec::new(); // (seq, count, answer)
            let mut next_seq = 0u32;
            for (op, count, pick) in ops {
                let unacked: Vec<usize> = (0..sent.len()).filter(|&i| sent[i].2.is_none()).collect();
                if op == 0 || sent.is_empty() {
                    if unacked.len() >= RETAINED_BATCHES { continue; }
                    // Send a new batch, but only after every earlier one is stored (the
                    // client keeps one batch in flight per partition until it is acked).
                    if !unacked.is_empty() { continue; }
                    sent.push((next_seq, count, None));
                    next_seq = next_seq.wrapping_add(count);
                }
                // Send (or resend) one of the last RETAINED_BATCHES batches.
                let from = sent.len().saturating_sub(RETAINED_BATCHES);
                let i = from + pick % (sent.len() - from);
                let (seq, count, _) = sent[i];
                match p.check(stamp(42, 0, seq), count) {
                    Ok(Check::Append) => {
                        let a = at(next_offset, count);
                        next_offset += u64::from(count);
                        p.record(stamp(42, 0, seq), count, a, 0);
                        log.push(seq);
                        sent[i].2 = Some(a);
                    }
                    Ok(Check::Duplicate(a)) => {
                        prop_assert_eq!(sent[i].2, Some(a), "a duplicate gets the first answer");
                    }
                    Err(e) => prop_assert!(false, "refused {:?}", e),
                }
            }
            let stored: Vec<u32> = sent.iter().filter(|s| s.2.is_some()).map(|s| s.0).collect();
            prop_assert_eq!(log, stored, "each batch once, in order");
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Producers::decode(&bytes, ProducerLimits::default());
        }
    }
}
