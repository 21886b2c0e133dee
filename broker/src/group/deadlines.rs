//! The ack deadlines of in-flight deliveries, in deadline order.
//!
//! Every delivery adds a deadline and nearly every one is removed again by its ack long
//! before it passes, so both must be cheap. Deadlines are kept in buckets by millisecond
//! (all deliveries of one poll share a bucket, so adding one is a push), and a removal
//! only lowers a count: the entry stays in its bucket until the bucket is due, when
//! [`DeadlineIndex::pop_due`] hands out only the entries the caller still finds in flight
//! with that deadline. Stale entries are bounded: once they outnumber the live ones (plus
//! a slack), [`DeadlineIndex::compact`] drops them.

use std::collections::BTreeMap;

use super::types::PartitionId;

/// Stale entries allowed beyond the live count before a compaction.
const COMPACT_SLACK: usize = 4096;

#[derive(Debug, Default, Clone)]
pub(crate) struct DeadlineIndex {
    /// Deadline in ms → the deliveries (partition, offset) given that deadline, some of
    /// them stale.
    buckets: BTreeMap<u64, Vec<(PartitionId, u64)>>,
    /// Entries in the buckets, live and stale.
    entries: usize,
    /// Entries added and not yet removed.
    live: usize,
}

impl DeadlineIndex {
    /// A delivery of `(partition, offset)` is due at `deadline_ms`.
    pub(crate) fn insert(&mut self, deadline_ms: u64, partition: PartitionId, offset: u64) {
        match self.buckets.last_entry() {
            Some(mut last) if *last.key() == deadline_ms => {
                last.get_mut().push((partition, offset))
            }
            _ => self
                .buckets
                .entry(deadline_ms)
                .or_default()
                .push((partition, offset)),
        }
        self.entries += 1;
        self.live += 1;
    }

    /// The delivery added with `insert` is gone (acked, failed, moved). Its entry stays
    /// until its bucket is due or a compaction, and must then fail the caller's
    /// liveness check.
    pub(crate) fn remove(&mut self) {
        self.live = self.live.saturating_sub(1);
    }

    /// Live entries.
    #[cfg(test)]
    pub(crate) fn live(&self) -> usize {
        self.live
    }

    /// The earliest deadline of a live entry. The stale entries ahead of the first live one
    /// are dropped (`is_live` as for `compact`), so the answer is exact and each of them is
    /// looked at once. Only that prefix: the group driver asks before every sleep, and the
    /// first bucket holds every delivery of its millisecond (thousands at full speed), so
    /// checking all of them each time cost a table lookup per delivery per sleep. Stale
    /// entries behind a live one wait for `pop_due` or `compact`.
    pub(crate) fn first(
        &mut self,
        mut is_live: impl FnMut(u64, PartitionId, u64) -> bool,
    ) -> Option<u64> {
        while let Some(mut first) = self.buckets.first_entry() {
            let deadline = *first.key();
            let bucket = first.get_mut();
            let live_at = bucket
                .iter()
                .position(|&(partition, offset)| is_live(deadline, partition, offset));
            let stale = live_at.unwrap_or(bucket.len());
            self.entries -= stale;
            if live_at.is_some() {
                bucket.drain(..stale);
                return Some(deadline);
            }
            first.remove();
        }
        None
    }

    /// Takes the earliest bucket if its deadline is at or before `now`. The caller checks
    /// each entry against its own tables: an entry is live only if the delivery is still
    /// in flight with this deadline, and the caller calls `remove` for each live one.
    pub(crate) fn pop_due(&mut self, now: u64) -> Option<(u64, Vec<(PartitionId, u64)>)> {
        let (&deadline, _) = self.buckets.first_key_value()?;
        if deadline > now {
            return None;
        }
        let (deadline, entries) = self.buckets.pop_first()?;
        self.entries -= entries.len();
        Some((deadline, entries))
    }

    /// Drops stale entries once they outnumber the live ones by the slack; `is_live` says
    /// whether `(deadline, partition, offset)` is still in flight with that deadline.
    pub(crate) fn compact(&mut self, mut is_live: impl FnMut(u64, PartitionId, u64) -> bool) {
        if self.entries <= self.live.saturating_mul(2) + COMPACT_SLACK {
            return;
        }
        let mut entries = 0;
        self.buckets.retain(|&deadline, bucket| {
            bucket.retain(|&(partition, offset)| is_live(deadline, partition, offset));
            bucket.dedup();
            entries += bucket.len();
            !bucket.is_empty()
        });
        self.entries = entries;
    }

    /// Every entry, stale or live, for the invariant check.
    #[cfg(test)]
    pub(crate) fn contains(&self, deadline_ms: u64, partition: PartitionId, offset: u64) -> bool {
        self.buckets
            .get(&deadline_ms)
            .is_some_and(|bucket| bucket.contains(&(partition, offset)))
    }

    #[cfg(test)]
    pub(crate) fn entries(&self) -> usize {
        self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_due_buckets_in_deadline_order() {
        let mut index = DeadlineIndex::default();
        index.insert(20, PartitionId(0), 1);
        index.insert(10, PartitionId(1), 2);
        index.insert(10, PartitionId(0), 3);
        assert_eq!(index.first(|_, _, _| true), Some(10));
        assert_eq!(index.live(), 3);
        assert!(index.pop_due(9).is_none());
        let (deadline, entries) = index.pop_due(15).unwrap();
        assert_eq!(deadline, 10);
        assert_eq!(entries, vec![(PartitionId(1), 2), (PartitionId(0), 3)]);
        assert!(index.pop_due(15).is_none());
        assert_eq!(index.first(|_, _, _| true), Some(20));
        assert_eq!(index.entries(), 1);
        // A stale leading bucket is pruned, not reported.
        index.insert(30, PartitionId(0), 4);
        index.remove();
        index.remove();
        assert_eq!(index.first(|deadline, _, _| deadline != 20), Some(30));
        assert_eq!(index.first(|_, _, offset| offset != 4), None);
        assert_eq!(index.entries(), 0);
    }

    #[test]
    fn compaction_drops_only_stale_entries_and_bounds_them() {
        let mut index = DeadlineIndex::default();
        let total = 3 * COMPACT_SLACK as u64;
        for offset in 0..total {
            index.insert(100 + offset / 100, PartitionId(0), offset);
        }
        // Everything but the multiples of 10 is acked.
        let kept = (0..total).filter(|offset| offset % 10 == 0).count();
        for _ in 0..total as usize - kept {
            index.remove();
        }
        let live = |_: u64, _: PartitionId, offset: u64| offset % 10 == 0;
        index.compact(live);
        assert_eq!(index.entries(), kept);
        assert_eq!(index.live(), kept);
        assert!(index.contains(100, PartitionId(0), 0));
        assert!(!index.contains(100, PartitionId(0), 1));
        // Under the slack nothing is scanned.
        index.insert(500, PartitionId(0), 1);
        index.remove();
        index.compact(|_, _, _| panic!("no compaction expected"));
    }
}
