//! One partition's progress within a group: what is done, what is in flight, what waits
//! for a redelivery, what was fetched and not yet delivered, and which keys are busy.
//!
//! Every offset in `[committed, next_fetch)` is in exactly one place: the done ranges,
//! the buffer, the in-flight table, the redelivery queue (`waiting`) or the dead-letter
//! table (`dead_pending`). The four tables together are the partition's *tracked*
//! messages; the driver is only asked for more while they fit the limits, so the
//! partition's memory is bounded, and so are the done ranges (each gap between two ranges
//! holds a tracked offset). Offsets at or above `next_fetch` are unknown to the partition,
//! except done ranges and attempt counts restored from a snapshot.
//!
//! This module knows nothing of members' windows, the deadline index or the group's
//! totals: `state` does that bookkeeping around these operations.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::queue::OffsetQueue;
use super::ranges::RangeSet;
use super::snapshot::PartitionSnapshot;
use super::types::{
    KeyHash, MemberId, OfferedRecord, Offset, OrderingMode, Ownership, PendingState,
};

/// Hashes offsets, which the broker assigns (no client picks them, so no protection
/// against chosen collisions is needed): one multiply, where SipHash costs tens of ns.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct OffsetHash;

impl std::hash::BuildHasher for OffsetHash {
    type Hasher = OffsetHasher;
    fn build_hasher(&self) -> OffsetHasher {
        OffsetHasher(0)
    }
}

/// See [`OffsetHash`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct OffsetHasher(u64);

impl std::hash::Hasher for OffsetHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing; hashbrown takes its control bits from the top of the hash,
        // which the multiply fills.
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// What the machine knows of a record, as offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    pub key: Option<KeyHash>,
    pub size_bytes: u32,
    pub timestamp_ms: i64,
}

/// The `last_delivery` of a message taken back by `revoke_after`: no ack matches it.
pub(crate) const NO_DELIVERY: u64 = u64::MAX;

/// Fetched and not yet delivered (`attempts` > 0 only for offsets restored from a
/// snapshot that were delivered before the restart).
#[derive(Debug, Clone)]
pub(crate) struct Buffered {
    pub meta: Meta,
    pub attempts: u32,
}

/// Delivered to `member`, waiting for an ack until `deadline_ms`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InFlight {
    pub meta: Meta,
    pub attempts: u32,
    pub member: MemberId,
    /// The delivery's group-wide sequence number, the generation part of its ack id.
    pub delivery: u64,
    pub deadline_ms: u64,
}

/// Failed, due again at `due_ms`.
#[derive(Debug, Clone)]
pub(crate) struct Waiting {
    pub meta: Meta,
    pub attempts: u32,
    pub due_ms: u64,
    /// The failed delivery, so a late ack for it is still honoured while the message has
    /// not been delivered again (the work was done; redelivering it would be a duplicate).
    pub last_delivery: u64,
    pub last_member: MemberId,
}

/// Used up its attempts; a `DeadLetter` action was emitted and awaits confirmation.
#[derive(Debug, Clone)]
pub(crate) struct DeadPending {
    pub meta: Meta,
    pub attempts: u32,
}

/// The not-done tracked offsets of one key, and where its deliveries stand.
///
/// A key's in-flight messages are always its lowest tracked offsets: a message is
/// delivered only when every earlier tracked message of its key is in flight (to the
/// partition's holder, the only member with anything in flight), and when one of them
/// fails, the later ones are taken back (see `revoke_after`). `floor` separates the two:
/// tracked offsets below it are in flight, those at or above it are not. Acks may come in
/// any order without moving it, since an acked offset leaves the set. With the member's
/// `max_in_flight_per_key` of 1 (the default) one message of a key is in flight at most,
/// the strict order of key mode: nothing more of a key is delivered while any of it is
/// unacked.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeyTrack {
    pub offsets: BTreeSet<u64>,
    /// In flight.
    pub flying: u32,
    /// Waiting for a dead-letter confirmation; the key delivers nothing meanwhile.
    pub held: u32,
    /// See the type's documentation.
    pub floor: u64,
    /// Set when key mode starts while the key's in-flight messages are not its lowest
    /// (delivered in another mode): the key delivers nothing until they are all settled.
    pub mixed: bool,
}

impl KeyTrack {
    /// The key's next deliverable offset, with at most `per_key_limit` in flight.
    fn next(&self, per_key_limit: u32) -> Option<u64> {
        if self.held > 0 || self.flying >= per_key_limit || (self.mixed && self.flying > 0) {
            return None;
        }
        self.offsets.range(self.floor..).next().copied()
    }
}

/// A message `candidates` picked for delivery.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidate {
    pub offset: u64,
}

/// What `offer` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OfferResult {
    /// `consumed` records of the slice are dealt with (buffered, or skipped as done or
    /// already seen); `buffered` of them joined the buffer.
    Taken { consumed: usize, buffered: usize },
    /// The first record is past the offset the partition wants next.
    Gap { expected: u64, got: u64 },
    /// Two records are not consecutive.
    NotContiguous { at: u64 },
}

#[derive(Debug, Clone, Default)]
pub(crate) struct PartitionState {
    /// Lowest offset not done. Only `seek` moves it down.
    pub committed: u64,
    /// Next offset to take from the log; never below `committed`.
    pub next_fetch: u64,
    /// Done offsets above `committed`; never holds `committed` itself.
    pub done: RangeSet,
    pub buffer: OffsetQueue<Buffered>,
    /// By offset, unordered: acks look entries up one by one, and the few callers that
    /// need an order sort (a hash map is several times cheaper per ack than a B-tree).
    pub in_flight: HashMap<u64, InFlight, OffsetHash>,
    pub waiting: BTreeMap<u64, Waiting>,
    /// `(due_ms, offset)` of every waiting message, to find due ones in due order.
    pub due: BTreeSet<(u64, u64)>,
    pub dead_pending: BTreeMap<u64, DeadPending>,
    /// Attempt counts from a snapshot for offsets not fetched again yet.
    pub restored_attempts: BTreeMap<u64, u32>,
    /// Every keyed tracked offset, by key. Keys come from clients, so the hasher is seeded
    /// per process (foldhash): much cheaper than SipHash on this per-message path, and
    /// still not a table a client can aim collisions at without knowing the seed.
    pub keys: HashMap<KeyHash, KeyTrack, foldhash::fast::RandomState>,
    /// Whether `keys` is kept: only key mode reads it, so the other modes skip its three
    /// hash lookups and two set updates per message. Switching to key mode rebuilds it
    /// from the tables (see `set_keyed`).
    pub keyed: bool,
    pub ownership: Ownership,
    pub redelivered_count: u64,
    pub dead_lettered_count: u64,
}

impl PartitionState {
    pub(crate) fn new(start: u64) -> Self {
        PartitionState {
            committed: start,
            next_fetch: start,
            ..PartitionState::default()
        }
    }

    /// Rebuilds a partition from its snapshot (already validated): nothing tracked, the read
    /// cursor back at the committed offset.
    pub(crate) fn restore(snapshot: &PartitionSnapshot) -> Self {
        let mut partition = PartitionState::new(snapshot.committed.0);
        for &(start, end) in &snapshot.done {
            partition.done.insert_range(start.0, end.0);
        }
        partition.restored_attempts = snapshot
            .attempts
            .iter()
            .map(|&(offset, attempts)| (offset.0, attempts))
            .collect();
        partition
    }

    /// Buffered + in flight + waiting + dead-lettering.
    pub(crate) fn tracked(&self) -> usize {
        self.buffer.len() + self.in_flight.len() + self.waiting.len() + self.dead_pending.len()
    }

    /// The member whose in-flight messages these are: the owner, or the member it drains
    /// from. Deliveries only go to the owner and a handover waits for the in-flight table
    /// to empty, so every in-flight message of the partition belongs to this member.
    pub(crate) fn holder(&self) -> Option<MemberId> {
        match self.ownership {
            Ownership::Unowned => None,
            Ownership::Owned(member) => Some(member),
            Ownership::Draining { from, .. } => Some(from),
        }
    }

    /// Who the partition belongs to once any handover completes.
    pub(crate) fn intended_owner(&self) -> Option<MemberId> {
        match self.ownership {
            Ownership::Unowned => None,
            Ownership::Owned(member) => Some(member),
            Ownership::Draining { to, .. } => to,
        }
    }

    /// The next offset the partition needs from the log (done offsets skipped).
    pub(crate) fn fetch_position(&self) -> u64 {
        self.done.skip(self.next_fetch)
    }

    /// Takes consecutive records from the log into the buffer while `room` allows.
    /// Records below the wanted offset were seen already and are skipped; records inside
    /// done ranges (restored from a snapshot) are skipped too, so only not-done messages are
    /// delivered after a restart.
    pub(crate) fn offer(&mut self, records: &[OfferedRecord], mut room: usize) -> OfferResult {
        if let Some(pair) = records
            .windows(2)
            .find(|pair| pair[1].offset.0 != pair[0].offset.0.wrapping_add(1))
        {
            return OfferResult::NotContiguous {
                at: pair[1].offset.0,
            };
        }
        let Some(first) = records.first() else {
            return OfferResult::Taken {
                consumed: 0,
                buffered: 0,
            };
        };
        self.next_fetch = self.fetch_position();
        if first.offset.0 > self.next_fetch {
            return OfferResult::Gap {
                expected: self.next_fetch,
                got: first.offset.0,
            };
        }
        let mut consumed = 0;
        let mut buffered = 0;
        for record in records {
            let offset = record.offset.0;
            if offset < self.next_fetch {
                // Seen already, or inside a done range the cursor jumped over.
                consumed += 1;
                continue;
            }
            if room == 0 {
                break;
            }
            let attempts = self.restored_attempts.remove(&offset).unwrap_or(0);
            let meta = Meta {
                key: record.key,
                size_bytes: record.size_bytes,
                timestamp_ms: record.timestamp_ms,
            };
            self.track_key(meta.key, offset);
            self.buffer.insert(offset, Buffered { meta, attempts });
            room -= 1;
            buffered += 1;
            consumed += 1;
            self.next_fetch = self.done.skip(offset.saturating_add(1));
        }
        OfferResult::Taken { consumed, buffered }
    }

    /// Starts or stops keeping the key index. Starting builds it from every tracked
    /// offset (busy: in flight or awaiting a dead-letter confirmation).
    pub(crate) fn set_keyed(&mut self, keyed: bool) {
        if keyed == self.keyed {
            return;
        }
        self.keys.clear();
        self.keyed = keyed;
        if !keyed {
            return;
        }
        let mut entries: Vec<(Option<KeyHash>, u64)> = Vec::with_capacity(self.tracked());
        entries.extend(self.buffer.iter().map(|(o, b)| (b.meta.key, o)));
        entries.extend(self.in_flight.iter().map(|(&o, f)| (f.meta.key, o)));
        entries.extend(self.waiting.iter().map(|(&o, w)| (w.meta.key, o)));
        entries.extend(self.dead_pending.iter().map(|(&o, d)| (d.meta.key, o)));
        for (key, offset) in entries {
            self.track_key(key, offset);
        }
        let flying: Vec<(KeyHash, u64)> = self
            .in_flight
            .iter()
            .filter_map(|(&o, f)| f.meta.key.map(|k| (k, o)))
            .collect();
        for (key, offset) in flying {
            self.key_started(Some(key), offset);
        }
        let held: Vec<KeyHash> = self
            .dead_pending
            .values()
            .filter_map(|d| d.meta.key)
            .collect();
        for key in held {
            if let Some(track) = self.track_mut(Some(key)) {
                track.held += 1;
            }
        }
        // A key whose in-flight messages are not its lowest (another mode delivered them)
        // waits for them to settle before delivering anything more.
        let in_flight = &self.in_flight;
        for track in self.keys.values_mut() {
            track.mixed = track.flying > 0
                && track
                    .offsets
                    .range(..track.floor)
                    .any(|o| !in_flight.contains_key(o));
        }
    }

    fn track_key(&mut self, key: Option<KeyHash>, offset: u64) {
        if !self.keyed {
            return;
        }
        if let Some(key) = key {
            self.keys.entry(key).or_default().offsets.insert(offset);
        }
    }

    fn untrack_key(&mut self, key: Option<KeyHash>, offset: u64) {
        if !self.keyed {
            return;
        }
        if let Some(key) = key
            && let Some(track) = self.keys.get_mut(&key)
        {
            track.offsets.remove(&offset);
            if track.offsets.is_empty() {
                debug_assert_eq!(
                    (track.flying, track.held),
                    (0, 0),
                    "a busy key must track its busy offsets"
                );
                self.keys.remove(&key);
            }
        }
    }

    /// The key index's entry of `key`, in key mode.
    fn track_mut(&mut self, key: Option<KeyHash>) -> Option<&mut KeyTrack> {
        if !self.keyed {
            return None;
        }
        self.keys.get_mut(&key?)
    }

    /// A message of `key` at `offset` went in flight.
    fn key_started(&mut self, key: Option<KeyHash>, offset: u64) {
        if let Some(track) = self.track_mut(key) {
            track.flying += 1;
            track.floor = track.floor.max(offset.saturating_add(1));
        }
    }

    /// An in-flight message of `key` was acked, failed or taken back.
    fn key_landed(&mut self, key: Option<KeyHash>) {
        if let Some(track) = self.track_mut(key) {
            track.flying = track.flying.saturating_sub(1);
            if track.flying == 0 {
                // Nothing in flight: every tracked offset is at or above any floor.
                track.floor = 0;
                track.mixed = false;
            }
        }
    }

    /// A failed message of `key` at `offset` is no longer in flight and waits (for a
    /// redelivery or a dead-letter confirmation): the key's next delivery starts there.
    fn key_failed(&mut self, key: Option<KeyHash>, offset: u64, held: bool) {
        if let Some(track) = self.track_mut(key) {
            if held {
                track.held += 1;
            }
            if track.flying > 0 {
                track.floor = track.floor.min(offset);
            }
        }
    }

    /// A dead-lettered message of `key` was confirmed.
    fn key_released(&mut self, key: Option<KeyHash>) {
        if let Some(track) = self.track_mut(key) {
            track.held = track.held.saturating_sub(1);
        }
    }

    /// In key mode: whether `offset` (of `key`) may be delivered now, with at most
    /// `per_key_limit` messages of a key in flight.
    fn key_ready(&self, key: Option<KeyHash>, offset: u64, per_key_limit: u32) -> bool {
        match key {
            // Keyless messages are not ordered among themselves.
            None => true,
            Some(key) => self
                .keys
                .get(&key)
                .is_some_and(|track| track.next(per_key_limit) == Some(offset)),
        }
    }

    /// Takes back the in-flight messages of `key` above `offset`, whose delivery failed
    /// (only a member with `max_in_flight_per_key` above 1 has any):
    /// each waits again, due at `due_ms`, so the key's messages are delivered again in
    /// offset order after it. A message taken back keeps its attempt count from before
    /// this delivery (the failure was not its own) and its late ack is not honoured: the
    /// member may have processed it after the failed one, which per-key order forbids.
    /// Returns the entries taken back, for the caller to free their window room.
    pub(crate) fn revoke_after(
        &mut self,
        key: Option<KeyHash>,
        offset: u64,
        due_ms: u64,
    ) -> Vec<InFlight> {
        let Some(key) = key.filter(|_| self.keyed) else {
            return Vec::new();
        };
        let Some(track) = self.keys.get(&key) else {
            return Vec::new();
        };
        if track.flying == 0 {
            return Vec::new();
        }
        let later: Vec<u64> = track
            .offsets
            .range(offset.saturating_add(1)..)
            .copied()
            .filter(|o| self.in_flight.contains_key(o))
            .collect();
        let mut revoked = Vec::with_capacity(later.len());
        for o in later {
            if let Some(entry) = self.take_in_flight(o) {
                let taken_back = InFlight {
                    attempts: entry.attempts.saturating_sub(1),
                    delivery: NO_DELIVERY,
                    ..entry
                };
                self.park(o, taken_back, due_ms);
                revoked.push(entry);
            }
        }
        revoked
    }

    /// Up to `limit` messages that may be delivered at `now` under `mode`: due
    /// redeliveries first (in due order), then buffered messages (in offset order). Nothing
    /// changes; the caller delivers the ones its budget allows.
    pub(crate) fn candidates(
        &self,
        mode: OrderingMode,
        now: u64,
        limit: usize,
        per_key_limit: u32,
    ) -> Vec<Candidate> {
        let mut out = Vec::new();
        if limit == 0 {
            return out;
        }
        let due = self
            .due
            .iter()
            .take_while(|&&(due_ms, _)| due_ms <= now)
            .filter_map(|&(_, offset)| self.waiting.get(&offset).map(|w| (offset, &w.meta)));
        let buffered = self.buffer.iter().map(|(offset, b)| (offset, &b.meta));
        match mode {
            OrderingMode::Partition => {
                // Strict order: only the lowest not-done offset, and only when nothing is
                // in flight or waiting for a dead-letter confirmation.
                if !self.in_flight.is_empty() || !self.dead_pending.is_empty() {
                    return out;
                }
                let lowest_waiting = self.waiting.first_key_value();
                let lowest_buffered = self.buffer.first();
                let pick = match (lowest_waiting, lowest_buffered) {
                    (Some((&w, waiting)), Some((b, _))) if w < b => {
                        (waiting.due_ms <= now).then_some(w)
                    }
                    (Some((&w, waiting)), None) => (waiting.due_ms <= now).then_some(w),
                    (_, Some((b, _))) => Some(b),
                    (None, None) => None,
                };
                out.extend(pick.map(|offset| Candidate { offset }));
            }
            OrderingMode::Key => {
                // Only one offset of a key passes `key_ready` (the first at or above its
                // floor), so one pass picks at most one message of a key: what a key has in
                // flight grows by one message per poll.
                for (offset, meta) in due.chain(buffered) {
                    if out.len() >= limit {
                        break;
                    }
                    if self.key_ready(meta.key, offset, per_key_limit) {
                        out.push(Candidate { offset });
                    }
                }
            }
            OrderingMode::None => {
                out.extend(
                    due.chain(buffered)
                        .take(limit)
                        .map(|(offset, _)| Candidate { offset }),
                );
            }
        }
        out
    }

    /// Moves a buffered or waiting message into the in-flight table and returns its entry.
    pub(crate) fn start_delivery(
        &mut self,
        offset: u64,
        member: MemberId,
        delivery: u64,
        deadline_ms: u64,
    ) -> Option<InFlight> {
        let (meta, attempts) = if let Some(waiting) = self.waiting.remove(&offset) {
            self.due.remove(&(waiting.due_ms, offset));
            (waiting.meta, waiting.attempts)
        } else {
            let buffered = self.buffer.remove(offset)?;
            (buffered.meta, buffered.attempts)
        };
        let attempts = attempts.saturating_add(1);
        if attempts > 1 {
            self.redelivered_count += 1;
        }
        self.key_started(meta.key, offset);
        let entry = InFlight {
            meta,
            attempts,
            member,
            delivery,
            deadline_ms,
        };
        self.in_flight.insert(offset, entry);
        Some(entry)
    }

    /// Removes the in-flight entry at `offset` if it is delivery `delivery` to `member`
    /// (the entry an ack names); the key stops being busy. One table lookup, where a check
    /// and then a removal took two on every ack.
    pub(crate) fn take_live(
        &mut self,
        offset: u64,
        delivery: u64,
        member: MemberId,
    ) -> Option<InFlight> {
        let Entry::Occupied(slot) = self.in_flight.entry(offset) else {
            return None;
        };
        if slot.get().delivery != delivery || slot.get().member != member {
            return None;
        }
        let entry = slot.remove();
        self.key_landed(entry.meta.key);
        Some(entry)
    }

    /// Removes an in-flight entry (acked, failed or stale); the key stops being busy.
    pub(crate) fn take_in_flight(&mut self, offset: u64) -> Option<InFlight> {
        let entry = self.in_flight.remove(&offset)?;
        self.key_landed(entry.meta.key);
        Some(entry)
    }

    /// Puts a failed delivery in the redelivery queue, due at `due_ms`.
    pub(crate) fn park(&mut self, offset: u64, failed: InFlight, due_ms: u64) {
        self.key_failed(failed.meta.key, offset, false);
        self.due.insert((due_ms, offset));
        self.waiting.insert(
            offset,
            Waiting {
                meta: failed.meta,
                attempts: failed.attempts,
                due_ms,
                last_delivery: failed.delivery,
                last_member: failed.member,
            },
        );
    }

    /// Holds a failed delivery until the driver confirms its dead letter. The key stays
    /// busy meanwhile, so a later message of the key cannot overtake it.
    pub(crate) fn hold_dead_letter(&mut self, offset: u64, failed: InFlight) {
        self.key_failed(failed.meta.key, offset, true);
        self.dead_pending.insert(
            offset,
            DeadPending {
                meta: failed.meta,
                attempts: failed.attempts,
            },
        );
    }

    /// A late ack for a message waiting for redelivery whose last delivery it names: the
    /// message is done. Returns whether it matched.
    pub(crate) fn ack_waiting(&mut self, offset: u64, delivery: u64, member: MemberId) -> bool {
        let matches = self
            .waiting
            .get(&offset)
            .is_some_and(|w| w.last_delivery == delivery && w.last_member == member);
        if !matches {
            return false;
        }
        if let Some(waiting) = self.waiting.remove(&offset) {
            self.due.remove(&(waiting.due_ms, offset));
            self.complete(offset, waiting.meta.key);
        }
        true
    }

    /// The driver appended the dead letter: the message is done. Returns false when the
    /// offset is not waiting for a confirmation (a seek cleared it, or a driver bug).
    pub(crate) fn confirm_dead_letter(&mut self, offset: u64) -> bool {
        let Some(entry) = self.dead_pending.remove(&offset) else {
            return false;
        };
        self.key_released(entry.meta.key);
        self.complete(offset, entry.meta.key);
        self.dead_lettered_count += 1;
        true
    }

    /// Marks a no-longer-tracked offset done and advances the committed offset over every
    /// done offset that follows it.
    pub(crate) fn complete(&mut self, offset: u64, key: Option<KeyHash>) {
        self.untrack_key(key, offset);
        debug_assert!(offset >= self.committed);
        if offset == self.committed {
            self.committed = self.committed.saturating_add(1);
            if let Some(end) = self.done.take_first_if_starts_at(self.committed) {
                self.committed = end;
            }
            self.next_fetch = self.next_fetch.max(self.committed);
        } else {
            self.done.insert(offset);
        }
    }

    /// Restarts the partition at `offset`: everything tracked and done is forgotten. Returns
    /// the in-flight entries, which are now stale, so the caller can release them.
    pub(crate) fn seek(&mut self, offset: u64) -> HashMap<u64, InFlight, OffsetHash> {
        let stale = std::mem::take(&mut self.in_flight);
        self.committed = offset;
        self.next_fetch = offset;
        self.done.clear();
        self.buffer.clear();
        self.waiting.clear();
        self.due.clear();
        self.dead_pending.clear();
        self.restored_attempts.clear();
        self.keys.clear();
        stale
    }

    /// The pending (delivered, not done) messages in offset order.
    pub(crate) fn pending(&self) -> Vec<(u64, Option<KeyHash>, u32, PendingState)> {
        let mut out: Vec<_> =
            self.in_flight
                .iter()
                .map(|(&offset, f)| {
                    let state = PendingState::InFlight {
                        member: f.member,
                        deadline_ms: f.deadline_ms,
                    };
                    (offset, f.meta.key, f.attempts, state)
                })
                .chain(self.waiting.iter().map(|(&offset, w)| {
                    let state = PendingState::Backoff { due_ms: w.due_ms };
                    (offset, w.meta.key, w.attempts, state)
                }))
                .chain(self.dead_pending.iter().map(|(&offset, d)| {
                    (offset, d.meta.key, d.attempts, PendingState::DeadLettering)
                }))
                .collect();
        out.sort_unstable_by_key(|entry| entry.0);
        out
    }

    /// The durable part: committed offset, done ranges, and the attempt counts of not-done
    /// offsets delivered at least once. Each list keeps at most `max_entries`, the lowest.
    pub(crate) fn snapshot(&self, max_entries: usize) -> PartitionSnapshot {
        let done = self
            .done
            .iter()
            .take(max_entries)
            .map(|(start, end)| (Offset(start), Offset(end)))
            .collect();
        let mut attempts: Vec<(u64, u32)> = self
            .in_flight
            .iter()
            .map(|(&o, f)| (o, f.attempts))
            .chain(self.waiting.iter().map(|(&o, w)| (o, w.attempts)))
            .chain(self.dead_pending.iter().map(|(&o, d)| (o, d.attempts)))
            .chain(self.buffer.iter().map(|(o, b)| (o, b.attempts)))
            .chain(self.restored_attempts.iter().map(|(&o, &a)| (o, a)))
            .filter(|&(_, attempts)| attempts > 0)
            .collect();
        attempts.sort_unstable();
        attempts.truncate(max_entries);
        PartitionSnapshot {
            committed: Offset(self.committed),
            done,
            attempts: attempts
                .into_iter()
                .map(|(offset, attempts)| (Offset(offset), attempts))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: u64) -> OfferedRecord {
        OfferedRecord {
            offset: Offset(offset),
            key: None,
            size_bytes: 1,
            timestamp_ms: 0,
        }
    }

    /// Past its cap a snapshot keeps the lowest ranges and attempt counts: what it drops
    /// is redelivered (or counted from zero) after a restart, which at-least-once allows.
    #[test]
    fn a_snapshot_keeps_the_lowest_entries_over_its_cap() {
        let mut p = PartitionState::new(0);
        let records: Vec<_> = (0..6).map(record).collect();
        assert_eq!(
            p.offer(&records, 10),
            OfferResult::Taken {
                consumed: 6,
                buffered: 6
            }
        );
        for offset in 0..6 {
            p.start_delivery(offset, MemberId(1), offset, 100);
        }
        for offset in [1, 3, 5] {
            let entry = p.take_in_flight(offset).unwrap();
            p.complete(offset, entry.meta.key);
        }
        let full = p.snapshot(10);
        assert_eq!(full.done.len(), 3);
        assert_eq!(
            full.attempts,
            vec![(Offset(0), 1), (Offset(2), 1), (Offset(4), 1)]
        );
        let capped = p.snapshot(2);
        assert_eq!(
            capped.done,
            vec![(Offset(1), Offset(2)), (Offset(3), Offset(4))]
        );
        assert_eq!(capped.attempts, vec![(Offset(0), 1), (Offset(2), 1)]);
        let snapshot = crate::group::GroupSnapshot {
            partitions: vec![capped],
        };
        assert_eq!(snapshot.validate(), Ok(()));
    }
}
