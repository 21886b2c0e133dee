//! How the one writer of a partition hands committed bytes to lock-free readers.
//!
//! Readers never lock. They see the log through three published things:
//!
//! - the **segment table**, an immutable list of segments swapped whole (`ArcSwap`) when a
//!   segment is rolled in or removed by retention;
//! - each segment's **committed length**, the bytes of it that hold whole, committed batches;
//! - the partition's **high watermark**, the offset after the last committed record.
//!
//! The writer's order is: write bytes → store the segment's committed length (Release) →
//! store the high watermark (Release). On a roll it publishes the new table *before* the
//! watermark first points into the new segment. A reader loads the watermark (Acquire) first,
//! then the table, then the committed length: whatever watermark it saw, the table and bytes
//! it then reads are at least that new.
//!
//! Retention publishes a table without the old segments and only then deletes their files. A
//! reader that still holds a segment from an older table keeps its mapping alive (`Arc`), and
//! unlinking a mapped file leaves the mapping readable, so no reader ever faults.
//!
//! **Architecture Invariant:** every byte below a published committed length, and every offset
//! below the published watermark, is written and never changes again (until its segment is
//! retired). The `loom` feature swaps the atomics for loom's and the tests at the bottom
//! model-check this hand-off.

#[cfg(feature = "loom")]
pub(crate) use loom::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};
#[cfg(not(feature = "loom"))]
pub(crate) use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

/// What the hand-off needs to know of a segment.
pub(crate) trait Published {
    /// The offset of the segment's first record.
    fn base_offset(&self) -> u64;
    /// Bytes of the segment that hold committed batches.
    fn committed(&self) -> &AtomicU64;
}

#[cfg(not(feature = "loom"))]
struct SegmentTable<S>(arc_swap::ArcSwap<Vec<Arc<S>>>);

#[cfg(not(feature = "loom"))]
impl<S> SegmentTable<S> {
    fn new(segments: Vec<Arc<S>>) -> Self {
        SegmentTable(arc_swap::ArcSwap::from_pointee(segments))
    }
    fn store(&self, segments: Vec<Arc<S>>) {
        self.0.store(Arc::new(segments));
    }
    fn with<R>(&self, f: impl FnOnce(&[Arc<S>]) -> R) -> R {
        f(&self.0.load())
    }
}

/// Under loom the table is a mutex-guarded `Arc`: a linearizable cell, which is what
/// `ArcSwap` promises. What the model checks is Herald's ordering around it.
#[cfg(feature = "loom")]
struct SegmentTable<S>(loom::sync::Mutex<Arc<Vec<Arc<S>>>>);

#[cfg(feature = "loom")]
impl<S> SegmentTable<S> {
    fn new(segments: Vec<Arc<S>>) -> Self {
        SegmentTable(loom::sync::Mutex::new(Arc::new(segments)))
    }
    fn store(&self, segments: Vec<Arc<S>>) {
        *self.0.lock().unwrap() = Arc::new(segments);
    }
    fn with<R>(&self, f: impl FnOnce(&[Arc<S>]) -> R) -> R {
        let table = self.0.lock().unwrap().clone();
        f(&table)
    }
}

/// The state a partition's writer publishes and its readers load.
pub(crate) struct Handoff<S> {
    segments: SegmentTable<S>,
    high_watermark: AtomicU64,
}

/// Where a reader's offset falls.
pub(crate) enum Located<S> {
    /// The segment that holds the offset, and the watermark seen.
    Found {
        segment: Arc<S>,
        high_watermark: u64,
    },
    /// The offset is the watermark: nothing to read yet.
    AtEnd,
    /// Retention removed the offset; the log now starts at `start`.
    BelowStart { start: u64 },
    /// The offset has not been written.
    BeyondEnd { high_watermark: u64 },
}

impl<S: Published> Handoff<S> {
    pub(crate) fn new(segments: Vec<Arc<S>>, high_watermark: u64) -> Self {
        assert!(!segments.is_empty(), "a log always has an active segment");
        Handoff {
            segments: SegmentTable::new(segments),
            high_watermark: AtomicU64::new(high_watermark),
        }
    }

    /// Writer: makes `segments` the table readers load. Call before the watermark moves into
    /// a new segment, and before deleting the files of segments left out.
    pub(crate) fn publish_segments(&self, segments: Vec<Arc<S>>) {
        assert!(!segments.is_empty(), "a log always has an active segment");
        self.segments.store(segments);
    }

    /// Writer: makes `bytes` of `segment` and offsets below `high_watermark` readable.
    pub(crate) fn publish_commit(&self, segment: &S, bytes: u64, high_watermark: u64) {
        segment.committed().store(bytes, Ordering::Release);
        self.high_watermark.store(high_watermark, Ordering::Release);
    }

    pub(crate) fn high_watermark(&self) -> u64 {
        self.high_watermark.load(Ordering::Acquire)
    }

    /// The first retained offset.
    pub(crate) fn start_offset(&self) -> u64 {
        self.segments.with(|s| s[0].base_offset())
    }

    /// The current table.
    pub(crate) fn segments(&self) -> Vec<Arc<S>> {
        self.segments.with(<[Arc<S>]>::to_vec)
    }

    /// Reader: finds the segment that holds `offset`.
    pub(crate) fn locate(&self, offset: u64) -> Located<S> {
        let high_watermark = self.high_watermark();
        if offset > high_watermark {
            return Located::BeyondEnd { high_watermark };
        }
        self.segments.with(|segments| {
            let start = segments[0].base_offset();
            if offset < start {
                Located::BelowStart { start }
            } else if offset == high_watermark {
                Located::AtEnd
            } else {
                let after = segments.partition_point(|s| s.base_offset() <= offset);
                Located::Found {
                    segment: segments[after - 1].clone(),
                    high_watermark,
                }
            }
        })
    }
}

#[cfg(all(test, feature = "loom"))]
mod loom_tests {
    //! Run with `cargo test -p herald-broker --features loom --lib loom_`.
    use super::*;
    use loom::cell::UnsafeCell;
    use loom::thread;

    /// A segment of `SLOTS` records, one u64 each: record `base + i` lives in slot `i` and
    /// holds `base + i`, so a reader can tell a torn or stale read.
    const SLOTS: usize = 2;

    struct FakeSegment {
        base: u64,
        committed: AtomicU64,
        slots: [UnsafeCell<u64>; SLOTS],
    }

    impl FakeSegment {
        fn new(base: u64) -> Self {
            FakeSegment {
                base,
                committed: AtomicU64::new(0),
                slots: [UnsafeCell::new(0), UnsafeCell::new(0)],
            }
        }
        fn write(&self, slot: usize) {
            // Safety: only the writer writes, and only slots above the committed length,
            // which no reader touches (loom checks exactly this).
            self.slots[slot].with_mut(|p| unsafe { *p = self.base + slot as u64 });
        }
        fn read(&self, offset: u64) -> Option<u64> {
            let slot = (offset - self.base) as usize;
            let committed = self.committed.load(Ordering::Acquire) as usize;
            (slot < committed).then(|| self.slots[slot].with(|p| unsafe { *p }))
        }
    }

    impl Published for FakeSegment {
        fn base_offset(&self) -> u64 {
            self.base
        }
        fn committed(&self) -> &AtomicU64 {
            &self.committed
        }
    }

    fn read_everything(h: &Handoff<FakeSegment>) {
        for offset in 0..4 {
            match h.locate(offset) {
                Located::Found {
                    segment,
                    high_watermark,
                } => {
                    assert!(offset < high_watermark);
                    // Below the watermark the record must be there and whole.
                    assert_eq!(segment.read(offset), Some(offset));
                }
                Located::BelowStart { start } => assert!(offset < start),
                Located::AtEnd | Located::BeyondEnd { .. } => {}
            }
        }
    }

    /// Appends into the active segment, a roll into a new one, then retention of the first,
    /// against a concurrent reader: the reader never sees an unwritten slot, never misses
    /// the segment for an offset below the watermark, and a retired segment it still holds
    /// stays readable.
    #[test]
    fn loom_append_roll_retain_vs_reader() {
        loom::model(|| {
            let first = Arc::new(FakeSegment::new(0));
            let h = Arc::new(Handoff::new(vec![first.clone()], 0));
            let reader = {
                let h = h.clone();
                thread::spawn(move || read_everything(&h))
            };
            // Writer: two records into segment 0.
            first.write(0);
            first.write(1);
            h.publish_commit(&first, 2, 2);
            // Roll: segment 2 is published before the watermark points into it.
            let second = Arc::new(FakeSegment::new(2));
            h.publish_segments(vec![first.clone(), second.clone()]);
            second.write(0);
            h.publish_commit(&second, 1, 3);
            // Retention: drop segment 0 from the table, then the writer's handle.
            h.publish_segments(vec![second.clone()]);
            drop(first);
            reader.join().unwrap();
        });
    }
}
