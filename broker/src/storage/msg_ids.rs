//! The message-id dedup window: idempotence for clients that cannot keep producer
//! sequences (any language, the CLI, curl-like tools).
//!
//! A publish whose first record carries the `herald-msg-id` header is identified by that
//! header's value. The partition's writer remembers each id it stored, with the offsets it
//! got, for the topic's `dedup_window_ms`; a publish with an id it remembers is answered
//! with those offsets and not stored again, like NATS' `Nats-Msg-Id`. A publish that names
//! no partition and no key is placed by its id (as a key would be), so that its retries
//! reach the same partition and its window.
//!
//! Bounded twice: ids older than the window are forgotten, and past
//! [`MAX_MSG_IDS`] per partition the oldest go first (the window then shrinks). Each id
//! costs its length plus about 100 bytes. After a restart the window is rebuilt by reading
//! the first record of each batch whose newest timestamp is inside the window, so there is
//! no file of its own; times after a restart are the batches' record timestamps.

use std::collections::{HashMap, VecDeque};

use super::appended::Appended;

/// Ids a partition remembers at most: with ids of 36 bytes (a UUID), about 14 MiB.
pub const MAX_MSG_IDS: usize = 100_000;
/// Longest id honoured, in bytes; a longer one is refused with the batch.
pub const MAX_MSG_ID_BYTES: usize = 256;

/// One partition's window. Owned by the partition's one writer: no lock.
#[derive(Debug, Default)]
pub struct MsgIds {
    window_ms: i64,
    /// Id → (offsets, time stored, number of the store).
    by_id: HashMap<Box<[u8]>, (Appended, i64, u64)>,
    /// Ids in the order they were stored, with the time and number of the store: expiry
    /// and eviction pop from the front. An id stored again appears twice; only the entry
    /// whose number matches the map's is live.
    order: VecDeque<(i64, u64, Box<[u8]>)>,
    stores: u64,
}

impl MsgIds {
    /// A window of `window_ms` (0: off, nothing is remembered).
    pub fn new(window_ms: u64) -> Self {
        MsgIds {
            window_ms: window_ms.min(i64::MAX as u64) as i64,
            ..MsgIds::default()
        }
    }

    pub fn enabled(&self) -> bool {
        self.window_ms > 0
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The offsets `id` was stored at, if it was stored within the window before `now`.
    pub fn check(&self, id: &[u8], now_ms: i64) -> Option<Appended> {
        let (appended, at, _) = self.by_id.get(id)?;
        (now_ms.saturating_sub(*at) <= self.window_ms).then_some(*appended)
    }

    /// Remembers that `id` was stored at `appended`, at time `at_ms`.
    pub fn record(&mut self, id: &[u8], appended: Appended, at_ms: i64) {
        if !self.enabled() {
            return;
        }
        let id: Box<[u8]> = id.into();
        self.stores += 1;
        self.by_id
            .insert(id.clone(), (appended, at_ms, self.stores));
        self.order.push_back((at_ms, self.stores, id));
        while self.by_id.len() > MAX_MSG_IDS {
            self.pop_front();
        }
        // Entries superseded by a later store of the same id are dropped as they reach the
        // front; bound the queue even if the same few ids are stored over and over.
        while self.order.len() > 2 * MAX_MSG_IDS {
            self.pop_front();
        }
    }

    /// Forgets ids stored more than the window before `now`.
    pub fn expire(&mut self, now_ms: i64) {
        while let Some((at, _, _)) = self.order.front() {
            if now_ms.saturating_sub(*at) <= self.window_ms {
                break;
            }
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some((_, store, id)) = self.order.pop_front()
            && self
                .by_id
                .get(&id)
                .is_some_and(|(_, _, live)| *live == store)
        {
            self.by_id.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: u64) -> Appended {
        Appended {
            base_offset: base,
            last_offset: base,
        }
    }

    #[test]
    fn remembers_within_the_window_only() {
        let mut w = MsgIds::new(1_000);
        w.record(b"a", at(1), 100);
        assert_eq!(w.check(b"a", 1_100), Some(at(1)));
        assert_eq!(
            w.check(b"a", 1_101),
            None,
            "expired by time even before expire()"
        );
        assert_eq!(w.check(b"b", 100), None);
        w.expire(1_101);
        assert!(w.is_empty());
        // Stored again after expiry: the old queue entry must not remove the new one.
        w.record(b"a", at(5), 2_000);
        w.record(b"c", at(6), 2_500);
        w.expire(2_900);
        assert_eq!(w.check(b"a", 2_900), Some(at(5)));
        w.expire(3_001);
        assert_eq!(w.check(b"a", 3_001), None);
        assert_eq!(w.check(b"c", 3_001), Some(at(6)));
    }

    #[test]
    fn off_remembers_nothing() {
        let mut w = MsgIds::new(0);
        w.record(b"a", at(1), 0);
        assert_eq!(w.check(b"a", 0), None);
    }

    #[test]
    fn bounded_by_count() {
        let mut w = MsgIds::new(u64::MAX);
        for i in 0..(MAX_MSG_IDS as u64 + 10) {
            w.record(&i.to_le_bytes(), at(i), 0);
        }
        assert_eq!(w.len(), MAX_MSG_IDS);
        assert_eq!(
            w.check(&0u64.to_le_bytes(), 0),
            None,
            "the oldest went first"
        );
        assert!(
            w.check(&(MAX_MSG_IDS as u64 + 9).to_le_bytes(), 0)
                .is_some()
        );
        for _ in 0..(3 * MAX_MSG_IDS) {
            w.record(b"same", at(1), 0);
        }
        assert!(w.order.len() <= 2 * MAX_MSG_IDS);
        assert!(w.check(b"same", 0).is_some());
    }
}
