//! The durable part of a group and its byte format.
//!
//! A snapshot holds, per partition, the committed offset, the done ranges above it and
//! the delivery attempts of not-done offsets that were delivered. That is all a restart
//! needs: the driver reads each partition again from its committed offset, the machine
//! skips the done ranges, and a message redelivered after the restart keeps counting its
//! attempts toward `max_delivery_attempts`. Members, deadlines and buffers are not kept:
//! every stream is gone after a restart.
//!
//! Format, version 1 (integers are unsigned LEB128 varints unless said otherwise):
//!
//! ```text
//! magic "HGRS" | version u8 = 1 | partition_count
//! per partition:
//!   committed
//!   range_count, then per range: start - previous_end (≥ 1; previous_end starts at
//!     committed), end - start (≥ 1)
//!   attempt_count, then per entry: offset - previous (previous starts at committed;
//!     ≥ 1 after the first entry), attempts (≥ 1)
//! crc32c of everything before it, u32 little endian
//! ```
//!
//! Offsets are delta-encoded, so a snapshot of a group that is keeping up is a few bytes
//! per partition. Decoding checks the CRC first, then every count against the limits before
//! allocating, then the ranges' and entries' order: a damaged or forged snapshot is an
//! error, never a panic or an unbounded allocation.

// `SnapshotError` lives in `error`, beside `GroupError` that wraps it; re-exported here.
pub use super::error::SnapshotError;
use super::ids::Offset;
use super::limits::{MAX_PARTITIONS, MAX_SNAPSHOT_ENTRIES_PER_PARTITION};

const MAGIC: &[u8; 4] = b"HGRS";
const VERSION: u8 = 1;
/// Magic, version and CRC.
const FRAMING_BYTES: usize = 4 + 1 + 4;
/// Longest LEB128 encoding of a u64.
const MAX_VARINT_BYTES: usize = 10;

/// A group's durable state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupSnapshot {
    /// One per partition, in partition order.
    pub partitions: Vec<PartitionSnapshot>,
}

/// One partition's durable state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PartitionSnapshot {
    /// Lowest offset not done.
    pub committed: Offset,
    /// Done `[start, end)` ranges above `committed`: ascending, disjoint, not adjacent.
    pub done: Vec<(Offset, Offset)>,
    /// `(offset, attempts)` of not-done offsets delivered at least once, ascending.
    pub attempts: Vec<(Offset, u32)>,
}

impl PartitionSnapshot {
    /// Forgets every position at or past `end`, the partition log's end offset: a
    /// committed offset above it comes down to it, done ranges are cut at it and attempt
    /// counts past it dropped. A log shorter than the group's state (records lost to a
    /// power loss under fsync `never`) reuses those offsets for new records, which the
    /// group has never seen and must not count as done. Returns the committed offset
    /// before, if anything changed.
    pub fn clamp_to_log_end(&mut self, end: u64) -> Option<Offset> {
        let before = self.committed;
        let done_len = self.done.len();
        let attempts_len = self.attempts.len();
        let cut_range = self.done.last().is_some_and(|&(_, e)| e.0 > end);
        self.committed = Offset(self.committed.0.min(end));
        self.done.retain(|&(start, _)| start.0 < end);
        for range in &mut self.done {
            range.1 = Offset(range.1.0.min(end));
        }
        self.attempts.retain(|&(offset, _)| offset.0 < end);
        let changed = self.committed != before
            || self.done.len() != done_len
            || self.attempts.len() != attempts_len
            || cut_range;
        changed.then_some(before)
    }
}

fn invalid(message: impl Into<String>) -> SnapshotError {
    SnapshotError::Invalid(message.into())
}

impl GroupSnapshot {
    /// Encodes the snapshot (see the module docs for the format).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FRAMING_BYTES + 16 * self.partitions.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        put_varint(&mut out, self.partitions.len() as u64);
        for partition in &self.partitions {
            let committed = partition.committed.0;
            put_varint(&mut out, committed);
            put_varint(&mut out, partition.done.len() as u64);
            let mut previous_end = committed;
            for &(start, end) in &partition.done {
                put_varint(&mut out, start.0.wrapping_sub(previous_end));
                put_varint(&mut out, end.0.wrapping_sub(start.0));
                previous_end = end.0;
            }
            put_varint(&mut out, partition.attempts.len() as u64);
            let mut previous = committed;
            for &(offset, attempts) in &partition.attempts {
                put_varint(&mut out, offset.0.wrapping_sub(previous));
                put_varint(&mut out, u64::from(attempts));
                previous = offset.0;
            }
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes and validates bytes made by [`GroupSnapshot::encode`].
    pub fn decode(bytes: &[u8]) -> Result<GroupSnapshot, SnapshotError> {
        if bytes.len() < FRAMING_BYTES {
            return Err(SnapshotError::Truncated);
        }
        if &bytes[..4] != MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        if bytes[4] != VERSION {
            return Err(SnapshotError::UnsupportedVersion(bytes[4]));
        }
        let (covered, crc_bytes) = bytes.split_at(bytes.len() - 4);
        let stored = u32::from_le_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
        let computed = crc32c::crc32c(covered);
        if stored != computed {
            return Err(SnapshotError::Checksum { stored, computed });
        }

        let mut reader = Reader {
            bytes: &covered[5..],
        };
        let partition_count = reader.count(MAX_PARTITIONS, "partition count")?;
        let mut partitions = Vec::with_capacity(partition_count);
        for _ in 0..partition_count {
            let committed = reader.varint()?;
            let range_count = reader.count(MAX_SNAPSHOT_ENTRIES_PER_PARTITION, "range count")?;
            let mut done = Vec::with_capacity(range_count);
            let mut previous_end = committed;
            for _ in 0..range_count {
                let start = previous_end
                    .checked_add(reader.varint()?)
                    .ok_or_else(|| invalid("range start overflows"))?;
                let end = start
                    .checked_add(reader.varint()?)
                    .ok_or_else(|| invalid("range end overflows"))?;
                done.push((Offset(start), Offset(end)));
                previous_end = end;
            }
            let attempt_count =
                reader.count(MAX_SNAPSHOT_ENTRIES_PER_PARTITION, "attempt count")?;
            let mut attempts = Vec::with_capacity(attempt_count);
            let mut previous = committed;
            for _ in 0..attempt_count {
                let offset = previous
                    .checked_add(reader.varint()?)
                    .ok_or_else(|| invalid("attempt offset overflows"))?;
                let count = u32::try_from(reader.varint()?)
                    .map_err(|_| invalid("attempt count above u32"))?;
                attempts.push((Offset(offset), count));
                previous = offset;
            }
            partitions.push(PartitionSnapshot {
                committed: Offset(committed),
                done,
                attempts,
            });
        }
        if !reader.bytes.is_empty() {
            return Err(invalid("trailing bytes after the last partition"));
        }
        let snapshot = GroupSnapshot { partitions };
        snapshot.validate()?;
        Ok(snapshot)
    }

    /// Checks what `restore` relies on: a partition count in range, lists within the
    /// limits, ranges ascending, disjoint, non-adjacent and above the committed offset, and
    /// attempt entries ascending, at or above the committed offset, outside the done ranges
    /// and at least 1.
    pub fn validate(&self) -> Result<(), SnapshotError> {
        if self.partitions.is_empty() || self.partitions.len() > MAX_PARTITIONS {
            return Err(invalid(format!(
                "{} partitions, must be 1..={MAX_PARTITIONS}",
                self.partitions.len()
            )));
        }
        for (index, partition) in self.partitions.iter().enumerate() {
            let fail = |what: &str| invalid(format!("partition {index}: {what}"));
            if partition.done.len() > MAX_SNAPSHOT_ENTRIES_PER_PARTITION
                || partition.attempts.len() > MAX_SNAPSHOT_ENTRIES_PER_PARTITION
            {
                return Err(fail("too many entries"));
            }
            // The committed offset is never done, so the first range starts above it, and
            // ranges never touch (they would have been merged).
            let mut floor = partition.committed.0;
            for &(start, end) in &partition.done {
                if start.0 <= floor || end.0 <= start.0 {
                    return Err(fail(
                        "done ranges are not ascending, disjoint and above committed",
                    ));
                }
                floor = end.0;
            }
            let mut ranges = partition.done.iter().peekable();
            let mut previous: Option<u64> = None;
            for &(offset, attempts) in &partition.attempts {
                if offset.0 < partition.committed.0 || previous.is_some_and(|p| offset.0 <= p) {
                    return Err(fail("attempt entries are not ascending from committed"));
                }
                if attempts == 0 {
                    return Err(fail("an attempt entry of 0"));
                }
                while ranges.peek().is_some_and(|&&(_, end)| end.0 <= offset.0) {
                    ranges.next();
                }
                if ranges
                    .peek()
                    .is_some_and(|&&(start, _)| start.0 <= offset.0)
                {
                    return Err(fail("an attempt entry inside a done range"));
                }
                previous = Some(offset.0);
            }
        }
        Ok(())
    }
}

/// LEB128, as protobuf writes it.
fn put_varint(out: &mut Vec<u8>, value: u64) {
    prost::encoding::encode_varint(value, out);
}

/// A cursor over the snapshot body.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn varint(&mut self) -> Result<u64, SnapshotError> {
        let before = self.bytes;
        prost::encoding::decode_varint(&mut self.bytes).map_err(|_| {
            // Cut short by the end of the body (every byte left says "more follows") is
            // a truncation; anything else overflows u64 or runs past 10 bytes.
            if before.len() < MAX_VARINT_BYTES && before.iter().all(|b| b & 0x80 != 0) {
                SnapshotError::Truncated
            } else {
                invalid("varint overflows u64 or is longer than 10 bytes")
            }
        })
    }

    /// A count, refused above `max` before anything is allocated for it.
    fn count(&mut self, max: usize, what: &str) -> Result<usize, SnapshotError> {
        let value = self.varint()?;
        usize::try_from(value)
            .ok()
            .filter(|&count| count <= max)
            .ok_or_else(|| invalid(format!("{what} {value} is above {max}")))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn sample() -> GroupSnapshot {
        GroupSnapshot {
            partitions: vec![
                PartitionSnapshot {
                    committed: Offset(10),
                    done: vec![(Offset(12), Offset(15)), (Offset(20), Offset(21))],
                    attempts: vec![(Offset(10), 2), (Offset(11), 1), (Offset(16), 5)],
                },
                PartitionSnapshot::default(),
                PartitionSnapshot {
                    committed: Offset(u64::MAX - 1),
                    done: vec![],
                    attempts: vec![(Offset(u64::MAX - 1), u32::MAX)],
                },
            ],
        }
    }

    #[test]
    fn positions_past_the_log_end_are_forgotten() {
        let mut p = sample().partitions.remove(0);
        assert_eq!(
            p.clamp_to_log_end(100),
            None,
            "all below the end: unchanged"
        );
        // The log ends inside the first done range: it is cut there, the later one and
        // the attempts past the end are gone.
        assert_eq!(p.clamp_to_log_end(13), Some(Offset(10)));
        assert_eq!(p.committed, Offset(10));
        assert_eq!(p.done, [(Offset(12), Offset(13))]);
        assert_eq!(p.attempts, [(Offset(10), 2), (Offset(11), 1)]);
        // The committed offset past the end (7,064 against a recovered end of 0).
        let mut p = PartitionSnapshot {
            committed: Offset(7_064),
            done: vec![(Offset(7_070), Offset(7_080))],
            attempts: vec![(Offset(7_064), 3)],
        };
        assert_eq!(p.clamp_to_log_end(0), Some(Offset(7_064)));
        assert_eq!(p, PartitionSnapshot::default());
        let snapshot = GroupSnapshot {
            partitions: vec![p],
        };
        assert_eq!(snapshot.validate(), Ok(()));
    }

    #[test]
    fn round_trips() {
        let snapshot = sample();
        let bytes = snapshot.encode();
        assert_eq!(GroupSnapshot::decode(&bytes), Ok(snapshot));
    }

    #[test]
    fn rejects_damage() {
        let bytes = sample().encode();
        assert_eq!(
            GroupSnapshot::decode(&bytes[..3]),
            Err(SnapshotError::Truncated)
        );
        let mut bad_magic = bytes.clone();
        bad_magic[0] = b'X';
        assert_eq!(
            GroupSnapshot::decode(&bad_magic),
            Err(SnapshotError::BadMagic)
        );
        let mut bad_version = bytes.clone();
        bad_version[4] = 9;
        assert_eq!(
            GroupSnapshot::decode(&bad_version),
            Err(SnapshotError::UnsupportedVersion(9))
        );
        let mut flipped = bytes.clone();
        flipped[7] ^= 1;
        assert!(matches!(
            GroupSnapshot::decode(&flipped),
            Err(SnapshotError::Checksum { .. })
        ));
    }

    #[test]
    fn rejects_invalid_content_with_a_valid_crc() {
        let mut snapshot = sample();
        snapshot.partitions[0].attempts.push((Offset(13), 1)); // inside a done range
        assert!(matches!(
            GroupSnapshot::decode(&snapshot.encode()),
            Err(SnapshotError::Invalid(_))
        ));
        let mut snapshot = sample();
        snapshot.partitions[0].done[0].0 = Offset(10); // starts at committed
        assert!(matches!(
            GroupSnapshot::decode(&snapshot.encode()),
            Err(SnapshotError::Invalid(_))
        ));
        assert!(
            GroupSnapshot::default().validate().is_err(),
            "no partitions"
        );
    }

    proptest! {
        /// Valid snapshots round-trip.
        #[test]
        fn encode_decode(
            parts in proptest::collection::vec(
                (0u64..1 << 40, proptest::collection::vec((1u64..50, 1u64..50, 1u32..9), 0..8)),
                1..5,
            )
        ) {
            let partitions = parts
                .into_iter()
                .map(|(committed, steps)| {
                    // Alternate: a not-done gap (with one attempt entry) then a done range.
                    let mut p = PartitionSnapshot { committed: Offset(committed), ..Default::default() };
                    let mut at = committed;
                    for (gap, len, attempts) in steps {
                        p.attempts.push((Offset(at), attempts));
                        let start = at + gap;
                        p.done.push((Offset(start), Offset(start + len)));
                        at = start + len;
                    }
                    p
                })
                .collect();
            let snapshot = GroupSnapshot { partitions };
            prop_assert_eq!(snapshot.validate(), Ok(()));
            prop_assert_eq!(GroupSnapshot::decode(&snapshot.encode()), Ok(snapshot));
        }

        /// Arbitrary bytes, or a valid snapshot with bytes changed, never panic.
        #[test]
        fn decode_never_panics(
            junk in proptest::collection::vec(any::<u8>(), 0..200),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        ) {
            let _ = GroupSnapshot::decode(&junk);
            let mut with_magic = MAGIC.to_vec();
            with_magic.push(VERSION);
            with_magic.extend_from_slice(&junk);
            let crc = crc32c::crc32c(&with_magic);
            with_magic.extend_from_slice(&crc.to_le_bytes());
            let _ = GroupSnapshot::decode(&with_magic);
            let mut bytes = sample().encode();
            for (at, value) in flips {
                let len = bytes.len();
                bytes[at % len] = value;
            }
            let _ = GroupSnapshot::decode(&bytes);
        }
    }
}
