//! The record payload and the per-key order checker.
//!
//! Every payload starts with a 20-byte header, little endian: the key index (u32), the
//! sequence number of the record within its key (u64, from 0), and the send time (u64, ns
//! since the process's time base). The rest, up to the record size, is zeros.
//!
//! Each key is produced by exactly one producer task, in sequence order, so a consumer
//! group that keeps per-key order must deliver every key's sequence numbers as 0, 1, 2, …
//! The [`Checker`] keeps, per key, the next expected sequence number and the holes (ranges
//! that were skipped by a jump forward and not yet filled). Its state is one small mutex
//! per key: a key is consumed by one consumer at a time, so these locks are uncontended.

use std::collections::HashMap;
use std::sync::Mutex;

/// Bytes of the header at the start of every payload.
pub const HEADER_LEN: usize = 20;

/// Writes the header into `out[..HEADER_LEN]`.
pub fn write_header(out: &mut [u8], key: u32, seq: u64, sent_ns: u64) {
    out[0..4].copy_from_slice(&key.to_le_bytes());
    out[4..12].copy_from_slice(&seq.to_le_bytes());
    out[12..20].copy_from_slice(&sent_ns.to_le_bytes());
}

/// The header of a payload: (key index, sequence, send time in ns).
pub fn read_header(payload: &[u8]) -> Option<(u32, u64, u64)> {
    let h = payload.get(..HEADER_LEN)?;
    Some((
        u32::from_le_bytes(h[0..4].try_into().ok()?),
        u64::from_le_bytes(h[4..12].try_into().ok()?),
        u64::from_le_bytes(h[12..20].try_into().ok()?),
    ))
}

/// What the checker made of one consumed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The next expected sequence of its key.
    InOrder,
    /// Already consumed once.
    Duplicate,
    /// Ahead of the expected sequence (a gap), or a late record filling an earlier gap.
    OutOfOrder,
    /// Not a header this run wrote (too short or an unknown key).
    Malformed,
}

/// Larger forward jumps than this are taken for garbage rather than a gap.
const MAX_JUMP: u64 = 1 << 32;

#[derive(Debug, Default)]
struct KeyState {
    /// Every sequence below `next` was consumed, except those in `holes`.
    next: u64,
    /// Half-open ranges `[start, end)` below `next` not consumed yet, sorted, disjoint.
    holes: Vec<(u64, u64)>,
}

impl KeyState {
    fn observe(&mut self, seq: u64) -> Seen {
        if seq == self.next {
            self.next += 1;
            return Seen::InOrder;
        }
        if seq > self.next {
            if seq - self.next > MAX_JUMP {
                return Seen::Malformed;
            }
            self.holes.push((self.next, seq));
            self.next = seq + 1;
            return Seen::OutOfOrder;
        }
        // Below `next`: either a late arrival into a hole, or a duplicate.
        match self.holes.iter().position(|&(s, e)| s <= seq && seq < e) {
            None => Seen::Duplicate,
            Some(i) => {
                let (s, e) = self.holes[i];
                match (seq == s, seq + 1 == e) {
                    (true, true) => {
                        self.holes.remove(i);
                    }
                    (true, false) => self.holes[i].0 = seq + 1,
                    (false, true) => self.holes[i].1 = seq,
                    (false, false) => {
                        self.holes[i].1 = seq;
                        self.holes.insert(i + 1, (seq + 1, e));
                    }
                }
                Seen::OutOfOrder
            }
        }
    }

    /// Sequences in `[0, sent)`, except `failed`, that were never consumed.
    fn lost(&self, sent: u64, failed: &[u64]) -> u64 {
        let mut ranges = self.holes.clone();
        if self.next < sent {
            ranges.push((self.next, sent));
        }
        let mut lost = 0;
        for (s, e) in ranges {
            let e = e.min(sent);
            if s >= e {
                continue;
            }
            let failed_inside = failed.iter().filter(|&&f| s <= f && f < e).count() as u64;
            lost += (e - s) - failed_inside;
        }
        lost
    }
}

/// Per-key order, duplicate and loss checking, shared by every consumer task.
#[derive(Debug)]
pub struct Checker {
    keys: Vec<Mutex<KeyState>>,
}

impl Checker {
    /// A checker for key indexes `0..keys`, every key expecting sequence 0 first.
    pub fn new(keys: u32) -> Checker {
        Checker {
            keys: (0..keys).map(|_| Mutex::new(KeyState::default())).collect(),
        }
    }

    /// Records that `(key, seq)` was consumed.
    pub fn observe(&self, key: u32, seq: u64) -> Seen {
        match self.keys.get(key as usize) {
            None => Seen::Malformed,
            Some(state) => state.lock().unwrap_or_else(|e| e.into_inner()).observe(seq),
        }
    }

    /// Acknowledged records never consumed: for each key, `sent[key]` records were
    /// produced with sequences `0..sent[key]`, of which those in `failed` were not
    /// acknowledged (their publish failed; they may or may not be stored).
    pub fn lost(&self, sent: &[u64], failed: &HashMap<u32, Vec<u64>>) -> u64 {
        let none = Vec::new();
        self.keys
            .iter()
            .enumerate()
            .map(|(key, state)| {
                let state = state.lock().unwrap_or_else(|e| e.into_inner());
                let sent = sent.get(key).copied().unwrap_or(0);
                state.lost(sent, failed.get(&(key as u32)).unwrap_or(&none))
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let mut buf = [0u8; 32];
        write_header(&mut buf, 7, 1 << 40, 123_456_789);
        assert_eq!(read_header(&buf), Some((7, 1 << 40, 123_456_789)));
        assert_eq!(read_header(&buf[..19]), None);
    }

    #[test]
    fn in_order_duplicates_gaps_and_losses() {
        let checker = Checker::new(2);
        assert_eq!(checker.observe(0, 0), Seen::InOrder);
        assert_eq!(checker.observe(0, 1), Seen::InOrder);
        assert_eq!(checker.observe(0, 1), Seen::Duplicate);
        assert_eq!(checker.observe(0, 5), Seen::OutOfOrder); // gap 2..5
        assert_eq!(checker.observe(0, 3), Seen::OutOfOrder); // late, splits the hole
        assert_eq!(checker.observe(0, 3), Seen::Duplicate);
        assert_eq!(checker.observe(0, 6), Seen::InOrder);
        assert_eq!(checker.observe(9, 0), Seen::Malformed);
        // key 0: sent 0..8, 2 and 4 missing, 7 missing; 4 failed, so lost = {2, 7}.
        // key 1: sent 3, none consumed.
        let failed = HashMap::from([(0u32, vec![4u64])]);
        assert_eq!(checker.lost(&[8, 3], &failed), 2 + 3);
        assert_eq!(checker.observe(0, 2), Seen::OutOfOrder);
        assert_eq!(checker.lost(&[8, 3], &failed), 1 + 3);
    }
}
