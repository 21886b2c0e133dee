//! An offset-ordered queue for a partition's buffer of fetched, undelivered messages.
//!
//! Offsets arrive in increasing order (the driver offers the log in order) and mostly
//! leave from the front, sometimes from the middle (key mode skips a busy key). A
//! `VecDeque` of `(offset, slot)` does both cheaply: appends push, removals empty a slot
//! found by binary search, and empty slots are popped from the ends or compacted once they
//! outnumber the live ones, so memory stays within a constant factor of `len`. A B-tree
//! paid a search and a node shift for every insert and remove.

use std::collections::VecDeque;

/// Empty slots allowed beyond the live count before a compaction.
const COMPACT_SLACK: usize = 64;

#[derive(Debug, Clone)]
pub(crate) struct OffsetQueue<V> {
    /// Ascending offsets; `None` once removed.
    slots: VecDeque<(u64, Option<V>)>,
    len: usize,
}

impl<V> Default for OffsetQueue<V> {
    fn default() -> Self {
        OffsetQueue {
            slots: VecDeque::new(),
            len: 0,
        }
    }
}

impl<V> OffsetQueue<V> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `value` at `offset`, replacing any value there. Appending above the highest
    /// offset is the cheap, usual case; anything else is inserted in order.
    pub(crate) fn insert(&mut self, offset: u64, value: V) -> Option<V> {
        match self.slots.back() {
            Some(&(last, _)) if last >= offset => {}
            _ => {
                self.slots.push_back((offset, Some(value)));
                self.len += 1;
                return None;
            }
        }
        match self.slots.binary_search_by_key(&offset, |&(o, _)| o) {
            Ok(at) => {
                let old = self.slots[at].1.replace(value);
                if old.is_none() {
                    self.len += 1;
                }
                old
            }
            Err(at) => {
                self.slots.insert(at, (offset, Some(value)));
                self.len += 1;
                None
            }
        }
    }

    fn position(&self, offset: u64) -> Option<usize> {
        match self.slots.front() {
            Some(&(first, _)) if first == offset => Some(0),
            _ => self.slots.binary_search_by_key(&offset, |&(o, _)| o).ok(),
        }
    }

    #[cfg(test)]
    pub(crate) fn get(&self, offset: u64) -> Option<&V> {
        self.slots[self.position(offset)?].1.as_ref()
    }

    pub(crate) fn remove(&mut self, offset: u64) -> Option<V> {
        let at = self.position(offset)?;
        let value = self.slots[at].1.take()?;
        self.len -= 1;
        while matches!(self.slots.front(), Some((_, None))) {
            self.slots.pop_front();
        }
        while matches!(self.slots.back(), Some((_, None))) {
            self.slots.pop_back();
        }
        if self.slots.len() > 2 * self.len + COMPACT_SLACK {
            self.slots.retain(|(_, v)| v.is_some());
        }
        Some(value)
    }

    /// The lowest offset and its value.
    pub(crate) fn first(&self) -> Option<(u64, &V)> {
        // Empty slots never stay at the front.
        self.slots
            .front()
            .and_then(|(offset, v)| v.as_ref().map(|v| (*offset, v)))
    }

    /// `(offset, value)` in ascending offset order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, &V)> {
        self.slots
            .iter()
            .filter_map(|(offset, v)| v.as_ref().map(|v| (*offset, v)))
    }

    pub(crate) fn clear(&mut self) {
        self.slots.clear();
        self.len = 0;
    }

    /// Slots held, live or empty (for the bound check in tests).
    #[cfg(test)]
    pub(crate) fn slots(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn front_and_middle_removals_keep_order_and_bound_memory() {
        let mut q = OffsetQueue::default();
        for offset in 0..1000u64 {
            assert!(q.insert(offset, offset * 10).is_none());
        }
        // Keep offset 0 (a busy key's message) while everything behind it leaves.
        for offset in 1..1000u64 {
            assert_eq!(q.remove(offset), Some(offset * 10));
        }
        assert_eq!(q.len(), 1);
        assert!(q.slots() <= 2 + COMPACT_SLACK, "slots {}", q.slots());
        assert_eq!(q.first(), Some((0, &0)));
        assert_eq!(q.remove(0), Some(0));
        assert!(q.is_empty());
        assert_eq!(q.slots(), 0);
        assert_eq!(q.remove(5), None);
    }

    proptest! {
        #[test]
        fn behaves_like_a_btree_map(ops in proptest::collection::vec((0u8..4, 0u64..64), 0..300)) {
            let mut q = OffsetQueue::default();
            let mut model = BTreeMap::new();
            for (op, offset) in ops {
                match op {
                    0 | 1 => prop_assert_eq!(q.insert(offset, offset + 1), model.insert(offset, offset + 1)),
                    2 => prop_assert_eq!(q.remove(offset), model.remove(&offset)),
                    _ => prop_assert_eq!(q.get(offset), model.get(&offset)),
                }
                prop_assert_eq!(q.len(), model.len());
                prop_assert_eq!(q.first(), model.iter().next().map(|(&o, v)| (o, v)));
                prop_assert!(q.iter().eq(model.iter().map(|(&o, v)| (o, v))));
                prop_assert!(q.slots() <= 2 * q.len() + COMPACT_SLACK);
            }
        }
    }
}
