//! The cursor that decides where a segment's next sparse index entries go. Appends (`log`)
//! and recovery's scan (`recovery`) both drive it, so it lives apart from either and the
//! imports run one way: log → recovery → index_cursor.

use super::batch::BatchHeader;
use super::handoff::Published;
use super::index::{OffsetEntry, TimeEntry};
use super::segment::Segment;

/// Where the next sparse index entries go; shared by appends and by recovery's scan so the
/// two build identical indexes.
#[derive(Debug, Clone)]
pub(crate) struct IndexCursor {
    interval: u64,
    last_offset_entry: Option<u64>,
    last_time_entry: Option<TimeEntry>,
    last_batch: Option<(u32, u64)>,
    /// Largest record timestamp in the segment so far.
    pub(crate) max_timestamp: i64,
}

impl IndexCursor {
    pub(crate) fn new(interval: u64) -> Self {
        IndexCursor {
            interval,
            last_offset_entry: None,
            last_time_entry: None,
            last_batch: None,
            max_timestamp: i64::MIN,
        }
    }

    /// Keeps the index entries of `segment` below `position` (written and flushed before a
    /// checkpoint vouched for them) and forgets the rest.
    pub(crate) fn resume(segment: &Segment, position: u64, interval: u64) -> Self {
        let keep = segment
            .offsets
            .partition_point(|e| u64::from(e.position) < position);
        segment.offsets.truncate(keep);
        let keep = segment
            .times
            .partition_point(|e| u64::from(e.position) < position);
        segment.times.truncate(keep);
        Self::continue_at(segment, position, interval)
    }

    /// Like [`resume`](Self::resume), for a log whose readers run (a cut of its
    /// unpublished tail; see `Index::cut`).
    pub(crate) fn cut(
        segment: &Segment,
        position: u64,
        interval: u64,
    ) -> super::error::Result<Self> {
        let keep = segment
            .offsets
            .partition_point(|e| u64::from(e.position) < position);
        segment.offsets.cut(keep)?;
        let keep = segment
            .times
            .partition_point(|e| u64::from(e.position) < position);
        segment.times.cut(keep)?;
        Ok(Self::continue_at(segment, position, interval))
    }

    /// The cursor for appends at `position`, given the entries kept below it.
    fn continue_at(segment: &Segment, position: u64, interval: u64) -> Self {
        let last_time_entry = segment.times.last();
        // The time index holds the running maximum only every interval, and drops entries once
        // full: batches after its last entry may be newer. Hop their headers (below
        // `position`, so vouched for) to resume with the exact maximum.
        let mut max_timestamp = last_time_entry.map_or(i64::MIN, |e| e.max_timestamp);
        let mut at = last_time_entry.map_or(0, |e| u64::from(e.position));
        while let Some(header) = segment.header_at(at, position)
            && header.check_frame((position - at) as usize).is_ok()
        {
            max_timestamp = max_timestamp.max(header.max_timestamp);
            at += u64::from(header.batch_len);
        }
        IndexCursor {
            interval,
            last_offset_entry: segment.offsets.last().map(|e| u64::from(e.position)),
            last_time_entry,
            last_batch: None,
            max_timestamp,
        }
    }

    /// Indexes the batch just placed at `position`.
    pub(crate) fn on_batch(&mut self, segment: &Segment, position: u64, header: &BatchHeader) {
        let relative_offset = (header.base_offset - segment.base_offset()) as u32;
        let pos32 = position as u32;
        if self
            .last_offset_entry
            .is_none_or(|p| position - p >= self.interval)
        {
            segment.offsets.push(OffsetEntry {
                relative_offset,
                position: pos32,
            });
            self.last_offset_entry = Some(position);
        }
        self.max_timestamp = self.max_timestamp.max(header.max_timestamp);
        let due = match self.last_time_entry {
            None => true,
            Some(e) => {
                self.max_timestamp > e.max_timestamp
                    && position - u64::from(e.position) >= self.interval
            }
        };
        if due {
            let entry = TimeEntry {
                max_timestamp: self.max_timestamp,
                relative_offset,
                position: pos32,
            };
            segment.times.push(entry);
            self.last_time_entry = Some(entry);
        }
        self.last_batch = Some((relative_offset, position));
    }

    /// Adds the entry that records the segment's exact largest timestamp, so a reopened
    /// segment knows it without a scan.
    pub(crate) fn close(&mut self, segment: &Segment) {
        if let (Some((relative_offset, position)), Some(last)) =
            (self.last_batch, self.last_time_entry)
            && self.max_timestamp > last.max_timestamp
        {
            let entry = TimeEntry {
                max_timestamp: self.max_timestamp,
                relative_offset,
                position: position as u32,
            };
            segment.times.push(entry);
            self.last_time_entry = Some(entry);
        }
    }
}
