//! A compact set of offsets, kept as disjoint half-open ranges: the group's done offsets
//! above its committed offset.
//!
//! Acks arrive out of order, so everything done above the committed offset must be kept
//! until the gap below it closes. A set of ranges costs one entry per run of done offsets,
//! whatever the runs' lengths. Adjacent ranges are always merged, so between any two
//! ranges lies at least one offset not in the set; the group tracks every such offset below
//! its read cursor, which is what bounds the number of ranges (see `limits`).

use std::collections::BTreeMap;

/// Disjoint, non-adjacent `[start, end)` ranges, keyed by start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RangeSet {
    ranges: BTreeMap<u64, u64>,
}

impl RangeSet {
    /// Number of ranges (not of offsets).
    pub(crate) fn len(&self) -> usize {
        self.ranges.len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The range holding `offset`, if any.
    fn range_of(&self, offset: u64) -> Option<(u64, u64)> {
        self.ranges
            .range(..=offset)
            .next_back()
            .filter(|&(_, &end)| offset < end)
            .map(|(&start, &end)| (start, end))
    }

    #[cfg(test)]
    pub(crate) fn contains(&self, offset: u64) -> bool {
        self.range_of(offset).is_some()
    }

    /// The first offset at or after `offset` that is not in the set.
    pub(crate) fn skip(&self, offset: u64) -> u64 {
        self.range_of(offset).map_or(offset, |(_, end)| end)
    }

    /// Adds `offset`, merging with its neighbours.
    pub(crate) fn insert(&mut self, offset: u64) {
        self.insert_range(offset, offset.saturating_add(1));
    }

    /// Adds `[start, end)`, merging with every range it touches or overlaps.
    pub(crate) fn insert_range(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let (mut start, mut end) = (start, end);
        // A range that starts before `start` and reaches it absorbs the new one.
        if let Some((&prev_start, &prev_end)) = self.ranges.range(..=start).next_back()
            && prev_end >= start
        {
            self.ranges.remove(&prev_start);
            start = prev_start;
            end = end.max(prev_end);
        }
        // Ranges starting inside (or right at the end of) the new one merge into it.
        while let Some((&next_start, &next_end)) = self.ranges.range(start..).next()
            && next_start <= end
        {
            self.ranges.remove(&next_start);
            end = end.max(next_end);
        }
        self.ranges.insert(start, end);
    }

    /// Removes the first range if it starts exactly at `at` and returns its end: how the
    /// committed offset jumps over offsets acked earlier.
    pub(crate) fn take_first_if_starts_at(&mut self, at: u64) -> Option<u64> {
        match self.ranges.first_key_value() {
            Some((&start, _)) if start == at => self.ranges.pop_first().map(|(_, end)| end),
            _ => None,
        }
    }

    /// The first range's start, if any.
    #[cfg(test)]
    pub(crate) fn first_start(&self) -> Option<u64> {
        self.ranges.first_key_value().map(|(&start, _)| start)
    }

    pub(crate) fn clear(&mut self) {
        self.ranges.clear();
    }

    /// The ranges in ascending order, as `(start, end)`.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(&start, &end)| (start, end))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn merges_neighbours_and_skips() {
        let mut set = RangeSet::default();
        set.insert(5);
        set.insert(7);
        assert_eq!(set.len(), 2);
        set.insert(6);
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![(5, 8)]);
        assert_eq!(set.skip(5), 8);
        assert_eq!(set.skip(4), 4);
        assert_eq!(set.skip(8), 8);
        set.insert_range(1, 5);
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![(1, 8)]);
        assert_eq!(set.take_first_if_starts_at(0), None);
        assert_eq!(set.take_first_if_starts_at(1), Some(8));
        assert!(set.is_empty());
    }

    proptest! {
        /// The range set answers like a plain set of offsets, and stays canonical: sorted,
        /// disjoint, never adjacent.
        #[test]
        fn behaves_like_a_set(ops in proptest::collection::vec((0u64..64, 1u64..6), 0..60)) {
            let mut set = RangeSet::default();
            let mut model = BTreeSet::new();
            for (start, len) in ops {
                set.insert_range(start, start + len);
                model.extend(start..start + len);
                let mut last_end = None;
                for (s, e) in set.iter() {
                    prop_assert!(s < e);
                    if let Some(last) = last_end {
                        prop_assert!(s > last, "ranges must be disjoint and not adjacent");
                    }
                    last_end = Some(e);
                }
                for x in 0..72 {
                    prop_assert_eq!(set.contains(x), model.contains(&x));
                    let mut next = x;
                    while model.contains(&next) {
                        next += 1;
                    }
                    prop_assert_eq!(set.skip(x), next);
                }
            }
        }
    }
}
