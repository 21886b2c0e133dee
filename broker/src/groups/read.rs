//! Reading records from partition logs: finding records by offset ([`read_refs`],
//! [`read_records`]), the records `fill` decoded and keeps for delivery
//! ([`DecodedRecords`]), and filling the machine from the log ([`fill_partition`]), with
//! the cursor that lets the next pass resume where decoding stopped.

use std::collections::VecDeque;
#[cfg(test)]
use std::sync::Mutex;

use bytes::Bytes;

use super::LogSource;
use crate::group::{GroupState, KeyHash, OfferedRecord, Offset, PartitionId, SeekTarget};
use crate::storage::{StorageError, batch};

/// Most decoded records a group keeps for delivery (see `Group::decoded`). Records the
/// machine takes but never delivers (done before a restart, say) would otherwise stay: when
/// the bound is reached the cache is emptied and delivery decodes from the log again.
const DECODED_MAX: usize = 1 << 16;
/// Bytes read from a partition log per read when filling the machine.
pub(super) const FETCH_CHUNK_BYTES: usize = 256 * 1024;

/// A record read back from the log.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub offset: u64,
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub headers: Vec<(String, Bytes)>,
}

/// Where a record lies in the log: the stored batch it is in and its encoded bytes there.
/// Cheap to keep (one reference count, no per-field slices) and, since consecutive records
/// of a batch are adjacent, a run of them is sent as one slice of the batch; decoded into
/// a [`StoredRecord`] only where a message goes out on its own.
#[derive(Debug, Clone)]
pub struct RecordRef {
    pub offset: u64,
    pub(super) batch: Bytes,
    pub(super) encoded_at: u32,
    pub(super) encoded_len: u32,
}

impl RecordRef {
    /// The record `r`, decoded from the batch at `bytes[batch_at..batch_at + batch_len]`.
    pub(super) fn of(
        r: &batch::RecordView<'_>,
        bytes: &Bytes,
        batch_at: usize,
        batch_len: usize,
    ) -> Self {
        let batch = bytes.slice(batch_at..batch_at + batch_len);
        // Both lie in `batch` (a batch is at most u32::MAX bytes long).
        let encoded_at = (r.encoded.as_ptr() as usize).saturating_sub(batch.as_ptr() as usize);
        RecordRef {
            offset: r.offset,
            batch,
            encoded_at: encoded_at as u32,
            encoded_len: r.encoded.len() as u32,
        }
    }

    pub(super) fn encoded_end(&self) -> usize {
        self.encoded_at as usize + self.encoded_len as usize
    }

    /// The record's fields, slices of the batch. `None` only if the bytes are not the
    /// record they were (cannot happen for bytes read from the log).
    pub fn decode(&self) -> Option<StoredRecord> {
        let header = batch::BatchHeader::read(&self.batch)?;
        let encoded = self
            .batch
            .get(self.encoded_at as usize..self.encoded_end())?;
        let r = batch::Records::resume(
            header.base_offset,
            header.first_timestamp,
            self.offset,
            encoded,
        )?
        .next()?
        .ok()?;
        Some(StoredRecord {
            offset: r.offset,
            timestamp: r.timestamp,
            key: r.key.map(|k| self.batch.slice_ref(k)),
            value: self.batch.slice_ref(r.value),
            headers: r
                .headers()
                .map(|(k, v)| (k.to_owned(), self.batch.slice_ref(v)))
                .collect(),
        })
    }
}

/// Bytes of a record's key, value and headers: what the in-flight byte limits count.
fn view_size(r: &batch::RecordView<'_>) -> usize {
    r.key.map_or(0, <[u8]>::len)
        + r.value.len()
        + r.headers().map(|(k, v)| k.len() + v.len()).sum::<usize>()
}

/// Reads the records at `offsets` (ascending) from a partition log; `None` for offsets that
/// are gone (retention) or beyond the end.
pub fn read_records(reader: &impl LogSource, offsets: &[u64]) -> Vec<Option<StoredRecord>> {
    read_refs(reader, offsets)
        .into_iter()
        .map(|r| r.and_then(|r| r.decode()))
        .collect()
}

/// Finds the records at `offsets` (ascending) in a partition log, as [`read_records`].
pub(super) fn read_refs(reader: &impl LogSource, offsets: &[u64]) -> Vec<Option<RecordRef>> {
    let mut out: Vec<Option<RecordRef>> = vec![None; offsets.len()];
    let mut i = 0;
    while i < offsets.len() {
        let chunk = match reader.read(offsets[i], FETCH_CHUNK_BYTES) {
            Ok(Some(chunk)) => chunk,
            _ => {
                i += 1;
                continue;
            }
        };
        let start = i;
        let mut next_batch_at = 0;
        'batches: for view in batch::batches(&chunk.bytes) {
            // Every offset found: the chunk's later batches are not wanted (the last
            // wanted record may end a batch that others follow).
            if i == offsets.len() {
                break;
            }
            let Ok(view) = view else { break };
            let (batch_at, batch_len) = (next_batch_at, view.header.batch_len as usize);
            next_batch_at += batch_len;
            if view.header.last_offset() < offsets[i] {
                continue;
            }
            let mut batch_records = view.records();
            batch_records.skip_to(offsets[i]);
            for record in batch_records {
                let Ok(record) = record else {
                    break 'batches;
                };
                while i < offsets.len() && offsets[i] < record.offset {
                    i += 1;
                }
                if i == offsets.len() {
                    break 'batches;
                }
                if offsets[i] == record.offset {
                    out[i] = Some(RecordRef::of(&record, &chunk.bytes, batch_at, batch_len));
                    i += 1;
                }
            }
        }
        if i == start {
            i += 1;
        }
    }
    out
}

/// Where `fill` stopped in a chunk it read: the next record is `next_offset`, in the batch
/// at `batch_at` of `chunk`, at `position` in it.
struct FillCursor {
    next_offset: u64,
    chunk: Bytes,
    high_watermark: u64,
    batch_at: usize,
    position: batch::RecordsPosition,
}

/// Decoded records by partition, each partition's in a window of consecutive offsets.
/// `fill` offers a partition's records in offset order and deliveries mostly take them in
/// the same order, so a ring indexed by `offset - start` replaces a hash map insert and
/// remove per record with two index operations.
#[derive(Default)]
pub(super) struct DecodedRecords {
    partitions: Vec<DecodedWindow>,
    /// Slots over every window, taken or not: what bounds the memory.
    slots: usize,
}

/// One partition's decoded records: `records[i]` is offset `start + i`, `None` once taken.
#[derive(Default)]
struct DecodedWindow {
    start: u64,
    records: VecDeque<Option<RecordRef>>,
}

impl DecodedRecords {
    pub(super) fn slots(&self) -> usize {
        self.slots
    }

    pub(super) fn clear(&mut self) {
        self.partitions.clear();
        self.slots = 0;
    }

    /// Keeps `record` of `partition`. A record that does not follow the window's last one
    /// (the machine skipped done offsets) starts the window again.
    pub(super) fn insert(&mut self, partition: u32, record: RecordRef) {
        let index = partition as usize;
        if self.partitions.len() <= index {
            self.partitions
                .resize_with(index + 1, DecodedWindow::default);
        }
        let window = &mut self.partitions[index];
        let next = window.start + window.records.len() as u64;
        if window.records.is_empty() || record.offset != next {
            self.slots -= window.records.len();
            window.records.clear();
            window.start = record.offset;
        }
        window.records.push_back(Some(record));
        self.slots += 1;
    }

    /// Takes the record at `offset` of `partition`, if kept.
    pub(super) fn take(&mut self, partition: u32, offset: u64) -> Option<RecordRef> {
        let window = self.partitions.get_mut(partition as usize)?;
        let at = usize::try_from(offset.checked_sub(window.start)?).ok()?;
        let record = window.records.get_mut(at)?.take();
        while let Some(None) = window.records.front() {
            window.records.pop_front();
            window.start += 1;
            self.slots -= 1;
        }
        record
    }
}

/// How the driver's steps reach the group's machine: the broker's
/// [`Group`](super::Group) locks its state for each call (never across I/O); the
/// simulation owns a machine of its own.
pub(crate) trait MachineAccess {
    fn with_machine<R>(&self, f: impl FnOnce(&mut GroupState) -> R) -> R;
}

#[cfg(test)]
impl MachineAccess for Mutex<GroupState> {
    fn with_machine<R>(&self, f: impl FnOnce(&mut GroupState) -> R) -> R {
        f(&mut self.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// What the driver keeps between its passes over the logs: the records `fill` decoded and
/// offered, kept until delivered so delivering does not decode them again (a batch's
/// records are only reachable by decoding from its start, so re-reading one record costs
/// half a batch on average; bounded by [`DECODED_MAX`]), and per partition where `fill`
/// stopped decoding because the machine had no more room, so the next pass goes on from
/// there instead of reading and skipping to it again.
#[derive(Default)]
pub(crate) struct Feed {
    pub(super) decoded: DecodedRecords,
    cursors: Vec<Option<FillCursor>>,
}

/// Reads partition `index`'s log where the machine wants records and offers them, until
/// the machine is full or the log is read to its high watermark. `names` (topic, group)
/// are for logs.
pub(crate) fn fill_partition(
    feed: &mut Feed,
    machine: &impl MachineAccess,
    log: &impl LogSource,
    index: usize,
    names: (&str, &str),
) {
    let (topic, group) = names;
    let id = PartitionId(index as u32);
    if feed.cursors.len() <= index {
        feed.cursors.resize_with(index + 1, || None);
    }
    // Each pass offers at least one record (so `want` moves up towards the high watermark),
    // or reads afresh once after a used-up cursor, or stops: the loop is bounded by the log.
    while let Ok(Some((want, room))) = machine.with_machine(|s| s.wants_with_room(id)) {
        let want = want.0;
        if want >= log.high_watermark() {
            break;
        }
        let resume = feed.cursors[index].take().filter(|c| c.next_offset == want);
        let resumed = resume.is_some();
        let (bytes, high_watermark, mut batch_at, mut position) = match resume {
            Some(c) => (c.chunk, c.high_watermark, c.batch_at, Some(c.position)),
            None => match log.read(want, FETCH_CHUNK_BYTES) {
                Ok(Some(chunk)) => (chunk.bytes, chunk.high_watermark, 0, None),
                Ok(None) => break,
                Err(StorageError::OffsetOutOfRange { start, .. }) if want < start => {
                    tracing::warn!(topic = %topic, group = %group, partition = index, from = want, to = start, "records removed by retention before the group consumed them; skipping");
                    let _ =
                        machine.with_machine(|s| s.seek(SeekTarget::Partition(id), Offset(start)));
                    continue;
                }
                Err(error) => {
                    tracing::error!(topic = %topic, group = %group, partition = index, %error, "reading the log for a group failed");
                    break;
                }
            },
        };
        // Decode only what the machine has room for: a chunk can hold ten times more
        // records than a partition buffers. Where decoding stops, a cursor remembers the
        // place, so the next pass neither reads nor skips again.
        let mut records = Vec::with_capacity(room.min(4096));
        let mut stored = Vec::with_capacity(room.min(4096));
        let mut stopped = None;
        'batches: for view in batch::batches(&bytes[batch_at..]) {
            let Ok(view) = view else { break };
            let this_batch = batch_at;
            batch_at += view.header.batch_len as usize;
            // A cursor's position belongs to the first batch of the slice only, also
            // when nothing wanted is left in it (the cursor stopped at its end): applied
            // to the next batch it decoded that batch from the wrong place, offering
            // offsets past the one wanted.
            let resume_at = position.take();
            if view.header.last_offset() < want {
                continue;
            }
            let mut batch_records = match resume_at {
                Some(at) => view.records_from(at),
                None => {
                    let mut all = view.records();
                    all.skip_to(want);
                    all
                }
            };
            loop {
                if records.len() >= room {
                    stopped = Some((this_batch, view.position_of(&batch_records)));
                    break 'batches;
                }
                let Some(Ok(r)) = batch_records.next() else {
                    break;
                };
                if r.offset < want {
                    continue;
                }
                if r.offset >= high_watermark {
                    break 'batches;
                }
                let record = RecordRef::of(&r, &bytes, this_batch, view.header.batch_len as usize);
                records.push(OfferedRecord {
                    offset: Offset(r.offset),
                    key: r.key.map(KeyHash::of),
                    size_bytes: view_size(&r).min(u32::MAX as usize) as u32,
                    timestamp_ms: r.timestamp,
                });
                stored.push(record);
            }
        }
        if records.is_empty() && resumed {
            // The cursor's chunk is used up: read on from the log.
            continue;
        }
        if let (Some((batch_at, position)), Some(last)) = (stopped, records.last()) {
            feed.cursors[index] = Some(FillCursor {
                next_offset: last.offset.0 + 1,
                chunk: bytes.clone(),
                high_watermark,
                batch_at,
                position,
            });
        }
        if records.is_empty() {
            break;
        }
        let consumed = match machine.with_machine(|s| s.offer(id, &records)) {
            Ok(consumed) => consumed,
            Err(error) => {
                tracing::error!(topic = %topic, group = %group, partition = index, %error, "offering records to a group failed");
                break;
            }
        };
        if feed.decoded.slots() + consumed > DECODED_MAX {
            feed.decoded.clear();
        }
        for record in stored.drain(..consumed.min(stored.len())) {
            feed.decoded.insert(index as u32, record);
        }
        if consumed < records.len() || consumed == 0 {
            break;
        }
    }
}

/// Whether `offset` is gone from `log` for good: below its start (retention) or past its
/// end. A damaged batch (DATA_LOSS) is not gone: its record exists but cannot be served.
pub(super) fn is_gone(log: &impl LogSource, offset: u64) -> bool {
    match log.read(offset, 1) {
        Ok(None) => true,
        Err(StorageError::OffsetOutOfRange { start, .. }) => {
            offset < start || offset >= log.high_watermark()
        }
        Ok(Some(_)) | Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::{GroupLimits, GroupSettings, MemberId, MemberOptions};
    use crate::groups::delivery::{Outgoing, shape_deliveries};
    use crate::groups::source::MemLog;
    use crate::groups::test_support::record;

    #[test]
    fn decoded_records_take_in_any_order_and_free_slots_from_the_front() {
        let mut decoded = DecodedRecords::default();
        for offset in 10..15 {
            decoded.insert(1, record(offset));
        }
        assert_eq!(decoded.slots(), 5);
        // Out of order: the front stays until it is taken.
        assert_eq!(decoded.take(1, 12).map(|r| r.offset), Some(12));
        assert_eq!(decoded.slots(), 5);
        assert!(decoded.take(1, 12).is_none(), "taken once only");
        assert_eq!(decoded.take(1, 10).map(|r| r.offset), Some(10));
        assert_eq!(decoded.slots(), 4);
        assert_eq!(decoded.take(1, 11).map(|r| r.offset), Some(11));
        assert_eq!(decoded.slots(), 2, "12 was taken before, so it goes too");
        assert!(decoded.take(1, 9).is_none());
        assert!(decoded.take(1, 15).is_none());
        assert!(decoded.take(0, 13).is_none(), "another partition");
        assert!(decoded.take(7, 13).is_none(), "a partition never seen");
    }

    /// A log of single-record batches `a`, `b`, `c`: every record ends its batch.
    fn single_record_batches() -> MemLog {
        let mut log = MemLog::new();
        for value in [b"a", b"b", b"c"] {
            log.append(1_000, &[(Some(&value[..]), &value[..])]);
        }
        log
    }

    /// A log whose batch at one offset answers DATA_LOSS, as a checked read of a damaged
    /// batch does.
    struct DamagedAt(MemLog, u64);

    impl LogSource for DamagedAt {
        fn read(
            &self,
            offset: u64,
            max_bytes: usize,
        ) -> Result<Option<crate::storage::ReadChunk>, StorageError> {
            if offset == self.1 {
                return Err(StorageError::DamagedBatch {
                    log: "topic t partition 0".into(),
                    offset,
                    path: "00000000000000000000.log".into(),
                    position: 0,
                    reason: "CRC mismatch".into(),
                });
            }
            self.0.read(offset, max_bytes)
        }

        fn high_watermark(&self) -> u64 {
            self.0.high_watermark()
        }
    }

    #[test]
    fn a_damaged_record_is_not_gone_so_it_is_never_acked_as_skipped() {
        let log = DamagedAt(single_record_batches(), 1);
        assert!(!is_gone(&log, 0), "a readable record");
        assert!(!is_gone(&log, 1), "a damaged record still exists");
        assert!(is_gone(&log, 3), "the end of the log");
        assert!(is_gone(&log, 9), "past the end");
    }

    #[test]
    fn reading_back_the_last_record_of_a_batch_that_others_follow() {
        // A redelivery of `a` (offset 0): the wanted record ends its batch and the chunk
        // read from the log holds the later batches too.
        let log = single_record_batches();
        let values = |offsets: &[u64]| -> Vec<Option<Vec<u8>>> {
            read_records(&log, offsets)
                .into_iter()
                .map(|r| r.map(|r| r.value.to_vec()))
                .collect()
        };
        assert_eq!(values(&[0]), [Some(b"a".to_vec())]);
        assert_eq!(values(&[1]), [Some(b"b".to_vec())]);
        assert_eq!(values(&[0, 2]), [Some(b"a".to_vec()), Some(b"c".to_vec())]);
        assert_eq!(
            values(&[2, 3]),
            [Some(b"c".to_vec()), None],
            "3 is past the end"
        );
        // The same in one batch of several records followed by another batch.
        let mut log = MemLog::new();
        log.append(0, &[(None, b"x0"), (None, b"x1")]);
        log.append(0, &[(None, b"y2")]);
        let found: Vec<u64> = read_refs(&log, &[0, 1])
            .into_iter()
            .map(|r| r.map_or(u64::MAX, |r| r.offset))
            .collect();
        assert_eq!(found, [0, 1]);
    }

    #[test]
    fn filling_resumes_in_the_next_batch_when_the_machine_filled_up_at_a_batch_end() {
        // The machine buffers 2 records; the first batch holds 2, the next 4, all of one
        // size. The first pass stops at the end of batch 1; after acks the next pass
        // resumes from its cursor, which must read batch 2 from its first record (not
        // from batch 1's end position applied to batch 2, which offered offset 4 while
        // the machine wanted 2).
        let mut log = MemLog::new();
        let value = |i: u64| format!("v{i}").into_bytes();
        let key = |i: u64| format!("k{i}").into_bytes();
        let (keys, values): (Vec<_>, Vec<_>) = (0..6).map(|i| (key(i), value(i))).unzip();
        let records: Vec<(Option<&[u8]>, &[u8])> = (0..6)
            .map(|i| (Some(&keys[i][..]), &values[i][..]))
            .collect();
        log.append(0, &records[..2]);
        log.append(0, &records[2..]);
        let limits = GroupLimits {
            max_buffered_per_partition: 2,
            ..GroupLimits::default()
        };
        let state =
            Mutex::new(GroupState::new(GroupSettings::default(), limits, &[Offset(0)]).unwrap());
        let member = MemberId(1);
        state
            .with_machine(|s| s.join(member, MemberOptions::default(), 0))
            .unwrap();
        let mut feed = Feed::default();
        for round in 0..3u64 {
            fill_partition(&mut feed, &state, &log, 0, ("t", "g"));
            let deliveries = state.with_machine(|s| s.poll(member, 0, 100)).unwrap();
            let (responses, missing) =
                shape_deliveries(&mut feed, |_| Some(&log), false, deliveries);
            assert!(missing.is_empty());
            let mut delivered = Vec::new();
            for response in responses {
                let Outgoing::Deliveries(d) = response else {
                    continue;
                };
                for single in d.singles {
                    state
                        .with_machine(|s| s.ack(member, &single.delivery.ack_id))
                        .unwrap();
                    delivered.push((single.record.offset, single.record.value.to_vec()));
                }
            }
            let wanted: Vec<(u64, Vec<u8>)> =
                (round * 2..round * 2 + 2).map(|i| (i, value(i))).collect();
            assert_eq!(delivered, wanted, "round {round}");
        }
    }

    #[test]
    fn decoded_records_restart_a_window_on_a_gap() {
        let mut decoded = DecodedRecords::default();
        decoded.insert(0, record(1));
        decoded.insert(0, record(2));
        decoded.insert(0, record(5));
        assert_eq!(decoded.slots(), 1);
        assert!(decoded.take(0, 1).is_none());
        assert_eq!(decoded.take(0, 5).map(|r| r.offset), Some(5));
        assert_eq!(decoded.slots(), 0);
        decoded.insert(0, record(6));
        decoded.clear();
        assert_eq!(decoded.slots(), 0);
        assert!(decoded.take(0, 6).is_none());
    }
}
