//! What a member's stream carries ([`Outgoing`]) and how one member's polled deliveries
//! are shaped into responses: runs of consecutive records of one stored batch go as a
//! slice of that batch, everything else as single records, each response at most
//! [`RESPONSE_MAX_BYTES`]. Also the ack ranges members settle runs with.

use bytes::Bytes;
use tokio::sync::mpsc;

use super::read::{Feed, RecordRef, StoredRecord, read_refs};
use super::{GroupConfig, LogSource};
use crate::error::{BrokerError, Result};
use crate::group::{AckId, AssignmentChange, Delivery, GroupState, MemberId, Offset, PartitionId};
use crate::storage::batch;

/// Most record bytes in one Deliveries response (at least one delivery): below the 4 MiB
/// default receive limit of gRPC clients.
pub const RESPONSE_MAX_BYTES: usize = 1024 * 1024;

/// What the driver sends a member's stream; the server turns each into one response.
#[derive(Debug)]
pub enum Outgoing {
    /// The first message: the join succeeded.
    Joined {
        member: MemberId,
        partitions: Vec<PartitionId>,
        config: GroupConfig,
    },
    /// Deliveries, in partition then offset order, at most [`RESPONSE_MAX_BYTES`] of
    /// records (or one record or run).
    Deliveries(OutDeliveries),
    /// The member's assignment changed.
    Assignment(AssignmentChange),
}

/// One delivery: what the machine handed out, and the record read back from the log.
#[derive(Debug)]
pub struct OutDelivery {
    pub delivery: Delivery,
    pub record: StoredRecord,
}

/// What one response delivers: single messages, and (to members that joined with
/// batched deliveries) runs of messages sent as a slice of their stored batch.
#[derive(Debug, Default)]
pub struct OutDeliveries {
    pub singles: Vec<OutDelivery>,
    pub runs: Vec<OutRun>,
}

impl OutDeliveries {
    /// Messages delivered, singles and run members alike.
    pub fn messages(&self) -> usize {
        self.singles.len() + self.runs.iter().map(|r| r.count as usize).sum::<usize>()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.singles.is_empty() && self.runs.is_empty()
    }
}

/// Consecutive deliveries of one partition (offsets and delivery sequence numbers both
/// consecutive, one attempt, one deadline) whose records lie in one stored batch, sent as
/// the slice of the batch that holds them: neither the broker nor the client encodes a
/// message per record.
#[derive(Debug)]
pub struct OutRun {
    pub partition: PartitionId,
    pub first_offset: u64,
    pub count: u32,
    pub first_delivery: u64,
    pub attempt: u32,
    pub deadline_ms: u64,
    /// The batch header's base offset and first timestamp, which the records' deltas
    /// count from.
    pub base_offset: u64,
    pub first_timestamp: i64,
    /// The run's records as stored, back to back: a slice of the batch, pointing into the
    /// log's mapping.
    pub records: Bytes,
}

/// Consecutive messages of runs to settle at once: offsets `first_offset..+count` of
/// `partition`, delivered with sequence numbers `first_delivery..+count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckRange {
    pub partition: u32,
    pub first_offset: u64,
    pub count: u32,
    pub first_delivery: u64,
}

/// What a nack names.
#[derive(Debug, Clone, Copy)]
pub enum NackTarget<'a> {
    /// One delivery, by its opaque ack id.
    Id(&'a [u8]),
    /// Messages of runs.
    Range(AckRange),
}

/// Most messages one [`AckRange`] may name: a member never holds more in flight, and the
/// bound keeps one request's work under the group lock small.
pub const MAX_ACK_RANGE: u32 = crate::group::MAX_MEMBER_IN_FLIGHT_MESSAGES;

impl AckRange {
    /// Checks the range's size and bounds.
    pub(super) fn check(&self) -> Result<()> {
        if self.count == 0 || self.count > MAX_ACK_RANGE {
            return Err(BrokerError::InvalidRequest(format!(
                "an ack range names 1 to {MAX_ACK_RANGE} messages, not {}",
                self.count
            )));
        }
        if self
            .first_offset
            .checked_add(u64::from(self.count))
            .is_none()
            || self
                .first_delivery
                .checked_add(u64::from(self.count))
                .is_none()
        {
            return Err(BrokerError::InvalidRequest(
                "an ack range runs past the largest offset or sequence number".into(),
            ));
        }
        Ok(())
    }

    /// The ack ids of the range's messages (after [`check`](Self::check)).
    pub(super) fn ids(&self) -> impl Iterator<Item = AckId> + '_ {
        (0..u64::from(self.count)).map(move |i| AckId {
            partition: PartitionId(self.partition),
            offset: Offset(self.first_offset.saturating_add(i)),
            delivery: self.first_delivery.saturating_add(i),
        })
    }
}

/// What a member's stream carries: messages, or the error that ends it.
pub type MemberItem = std::result::Result<Outgoing, BrokerError>;
pub type MemberTx = mpsc::Sender<MemberItem>;

/// Turns one member's polled deliveries into responses (see [`Shaper`]): records come
/// from what `fill` decoded, else (redeliveries, records the cache dropped) from the log
/// again. Returns the responses and the deliveries whose records are gone from the log.
pub(crate) fn shape_deliveries<'a, L: LogSource + 'a>(
    feed: &mut Feed,
    log_of: impl Fn(PartitionId) -> Option<&'a L>,
    batched: bool,
    mut deliveries: Vec<Delivery>,
) -> (Vec<Outgoing>, Vec<AckId>) {
    deliveries.sort_by_key(|d| (d.partition, d.offset));
    let mut responses = Vec::new();
    let mut missing = Vec::new();
    let mut shaper = Shaper::new(batched, deliveries.len());
    let mut i = 0;
    while i < deliveries.len() {
        let p = deliveries[i].partition;
        let mut j = i;
        while j < deliveries.len() && deliveries[j].partition == p {
            j += 1;
        }
        let Some(log) = log_of(p) else {
            i = j;
            continue;
        };
        let mut records: Vec<Option<RecordRef>> = deliveries[i..j]
            .iter()
            .map(|d| feed.decoded.take(p.0, d.offset.0))
            .collect();
        let (slots, offsets): (Vec<usize>, Vec<u64>) = records
            .iter()
            .enumerate()
            .filter(|(_, r)| r.is_none())
            .map(|(k, _)| (k, deliveries[i + k].offset.0))
            .unzip();
        if !offsets.is_empty() {
            let read = read_refs(log, &offsets);
            for (slot, record) in slots.into_iter().zip(read) {
                records[slot] = record;
            }
        }
        for (d, record) in deliveries[i..j].iter().zip(records) {
            let Some(record) = record else {
                missing.push(d.ack_id);
                continue;
            };
            shaper.push(*d, record, &mut responses);
        }
        shaper.end_run(&mut responses);
        i = j;
    }
    missing.extend(shaper.finish(&mut responses));
    (responses, missing)
}

/// A polled record gone from the log (retention): there is nothing to deliver, so it is
/// done.
pub(crate) fn skip_missing(
    state: &mut GroupState,
    member: MemberId,
    ack_id: &AckId,
    names: (&str, &str),
) {
    let (topic, group) = names;
    tracing::warn!(topic = %topic, group = %group, partition = %ack_id.partition, offset = %ack_id.offset, "a polled record is gone from the log; skipping it");
    let _ = state.ack(member, ack_id);
}

/// Shapes one member's deliveries (partition then offset order) into responses of at most
/// [`RESPONSE_MAX_BYTES`]: runs of consecutive deliveries from one stored batch go as that
/// batch to a member that joined with batched deliveries, everything else as singles.
struct Shaper {
    batched: bool,
    /// The run being gathered: deliveries that continue each other within one batch.
    run: Vec<(Delivery, RecordRef)>,
    current: OutDeliveries,
    current_bytes: usize,
    /// Deliveries whose record would not decode (cannot happen for bytes from the log):
    /// dropped like records gone from the log.
    undecodable: Vec<AckId>,
}

impl Shaper {
    /// A shaper for `deliveries` deliveries: a run can hold them all, so its buffer is
    /// sized once rather than copied over as it doubles.
    fn new(batched: bool, deliveries: usize) -> Shaper {
        Shaper {
            batched,
            run: Vec::with_capacity(if batched { deliveries } else { 0 }),
            current: OutDeliveries::default(),
            current_bytes: 0,
            undecodable: Vec::new(),
        }
    }

    /// Takes the next delivery and its record.
    fn push(&mut self, d: Delivery, record: RecordRef, responses: &mut Vec<Outgoing>) {
        if !self.batched {
            self.single(d, record, responses);
            return;
        }
        if let Some((last, last_record)) = self.run.last() {
            let continues = d.partition == last.partition
                && d.offset.0 == last.offset.0 + 1
                && d.ack_id.delivery == last.ack_id.delivery + 1
                && d.attempt == last.attempt
                && d.deadline_ms == last.deadline_ms
                && record.batch.as_ptr() == last_record.batch.as_ptr()
                && record.encoded_at as usize == last_record.encoded_end();
            if !continues {
                self.end_run(responses);
            }
        }
        self.run.push((d, record));
    }

    /// Sends the gathered run as the slice of its batch that holds its records.
    fn end_run(&mut self, responses: &mut Vec<Outgoing>) {
        let (Some((first, first_record)), Some((_, last_record))) =
            (self.run.first(), self.run.last())
        else {
            return;
        };
        let header = batch::BatchHeader::read(&first_record.batch);
        let end = last_record.encoded_end();
        let (Some(header), true) = (header, end <= first_record.batch.len()) else {
            // Not a stored batch (cannot happen: records come from the log): singles.
            let run = std::mem::take(&mut self.run);
            for (d, record) in run {
                self.single(d, record, responses);
            }
            return;
        };
        let records = first_record
            .batch
            .slice(first_record.encoded_at as usize..end);
        let run = OutRun {
            partition: first.partition,
            first_offset: first.offset.0,
            count: self.run.len() as u32,
            first_delivery: first.ack_id.delivery,
            attempt: first.attempt,
            deadline_ms: first.deadline_ms,
            base_offset: header.base_offset,
            first_timestamp: header.first_timestamp,
            records,
        };
        self.run.clear();
        self.room_for(run.records.len(), responses);
        self.current.runs.push(run);
    }

    fn single(&mut self, d: Delivery, record: RecordRef, responses: &mut Vec<Outgoing>) {
        let Some(decoded) = record.decode() else {
            self.undecodable.push(d.ack_id);
            return;
        };
        self.room_for(record.encoded_len as usize, responses);
        self.current.singles.push(OutDelivery {
            delivery: d,
            record: decoded,
        });
    }

    /// Starts a new response if `size` more bytes would overfill the current one.
    fn room_for(&mut self, size: usize, responses: &mut Vec<Outgoing>) {
        if !self.current.is_empty() && self.current_bytes + size > RESPONSE_MAX_BYTES {
            responses.push(Outgoing::Deliveries(std::mem::take(&mut self.current)));
            self.current_bytes = 0;
        }
        self.current_bytes += size;
    }

    /// Sends what is gathered; returns the deliveries whose records would not decode.
    fn finish(mut self, responses: &mut Vec<Outgoing>) -> Vec<AckId> {
        self.end_run(responses);
        if !self.current.is_empty() {
            responses.push(Outgoing::Deliveries(self.current));
        }
        self.undecodable
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::groups::test_support::{delivery, stored_batch};
    use crate::storage::batch;

    fn shape(batched: bool, items: Vec<(Delivery, RecordRef)>) -> Vec<OutDeliveries> {
        let mut responses = Vec::new();
        let mut shaper = Shaper::new(batched, items.len());
        for (d, r) in items {
            shaper.push(d, r, &mut responses);
        }
        assert!(shaper.finish(&mut responses).is_empty());
        responses
            .into_iter()
            .map(|r| match r {
                Outgoing::Deliveries(d) => d,
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    /// Decodes a run the way a client does.
    fn decode(run: &OutRun) -> Vec<(u64, i64, Vec<u8>)> {
        batch::Records::resume(
            run.base_offset,
            run.first_timestamp,
            run.first_offset,
            &run.records,
        )
        .unwrap()
        .map(|r| {
            let r = r.unwrap();
            assert_eq!(r.key, Some(&b"k"[..]));
            assert_eq!(r.headers().collect::<Vec<_>>(), [("h", &b"1"[..])]);
            (r.offset, r.timestamp, r.value.to_vec())
        })
        .collect()
    }

    #[test]
    fn consecutive_deliveries_of_one_batch_go_as_one_run_of_its_records() {
        let records = stored_batch(100, 10, 20);
        // Offsets 103..108 of the batch 100..110.
        let items: Vec<_> = records
            .into_iter()
            .skip(3)
            .take(5)
            .map(|r| (delivery(r.offset, 50 + r.offset), r))
            .collect();
        let out = shape(true, items);
        assert_eq!(out.len(), 1);
        assert!(out[0].singles.is_empty());
        assert_eq!(out[0].runs.len(), 1);
        let run = &out[0].runs[0];
        assert_eq!(
            (run.first_offset, run.count, run.first_delivery),
            (103, 5, 153)
        );
        assert_eq!(run.base_offset, 100);
        assert_eq!(out[0].messages(), 5);
        let decoded = decode(run);
        let offsets: Vec<u64> = decoded.iter().map(|d| d.0).collect();
        assert_eq!(offsets, [103, 104, 105, 106, 107]);
        for (offset, timestamp, value) in decoded {
            assert_eq!(timestamp, 1_000 + (offset - 100) as i64);
            assert!(value.starts_with(format!("{offset}:").as_bytes()));
        }
    }

    #[test]
    fn a_run_breaks_at_gaps_in_offsets_or_sequence_numbers_and_at_batch_boundaries() {
        let mut records = stored_batch(0, 5, 10);
        records.extend(stored_batch(5, 5, 10));
        let deliveries = [
            delivery(0, 1),
            delivery(1, 2),
            delivery(2, 7), // another partition's delivery came between
            delivery(4, 8), // offset 3 is not delivered
            delivery(5, 9), // the next batch
            delivery(6, 10),
        ];
        let items: Vec<_> = deliveries
            .into_iter()
            .zip(records.into_iter().filter(|r| r.offset != 3))
            .collect();
        let out = shape(true, items);
        let runs: Vec<(u64, u32, u64)> = out
            .iter()
            .flat_map(|o| o.runs.iter())
            .map(|r| (r.first_offset, r.count, r.first_delivery))
            .collect();
        assert_eq!(runs, [(0, 2, 1), (2, 1, 7), (4, 1, 8), (5, 2, 9)]);
        for run in out.iter().flat_map(|o| o.runs.iter()) {
            assert_eq!(decode(run).len(), run.count as usize);
        }
    }

    #[test]
    fn members_without_batched_deliveries_get_singles_only() {
        let items: Vec<_> = stored_batch(0, 10, 10)
            .into_iter()
            .map(|r| (delivery(r.offset, r.offset), r))
            .collect();
        let out = shape(false, items);
        assert!(out.iter().all(|o| o.runs.is_empty()));
        let singles: Vec<&OutDelivery> = out.iter().flat_map(|o| o.singles.iter()).collect();
        assert_eq!(singles.len(), 10);
        for (i, single) in singles.iter().enumerate() {
            // Decoded from the batch: every field as stored.
            let record = &single.record;
            assert_eq!(record.offset, i as u64);
            assert_eq!(record.timestamp, 1_000 + i as i64);
            assert_eq!(record.key.as_deref(), Some(&b"k"[..]));
            assert!(record.value.starts_with(format!("{i}:").as_bytes()));
            assert_eq!(record.headers, [("h".to_owned(), Bytes::from_static(b"1"))]);
        }
    }

    #[test]
    fn responses_stay_under_the_byte_limit() {
        // 8 batches of 1000 records of ~300 bytes: runs of ~300 KB, three per 1 MiB.
        let items: Vec<_> = (0..8)
            .flat_map(|b| stored_batch(b * 1000, 1000, 290))
            .map(|r| (delivery(r.offset, r.offset), r))
            .collect();
        let out = shape(true, items);
        assert_eq!(out.iter().map(|o| o.runs.len()).sum::<usize>(), 8);
        assert!(out.len() >= 3, "{}", out.len());
        for response in &out {
            let bytes: usize = response.runs.iter().map(|r| r.records.len()).sum();
            assert!(bytes <= RESPONSE_MAX_BYTES, "{bytes}");
        }
    }

    #[test]
    fn ack_ranges_are_checked_before_use() {
        let range = |count, first_offset| AckRange {
            partition: 0,
            first_offset,
            count,
            first_delivery: 0,
        };
        assert!(range(0, 0).check().is_err());
        assert!(range(MAX_ACK_RANGE + 1, 0).check().is_err());
        assert!(range(2, u64::MAX).check().is_err());
        assert!(range(MAX_ACK_RANGE, 0).check().is_ok());
        let ids: Vec<(u64, u64)> = AckRange {
            partition: 3,
            first_offset: 10,
            count: 3,
            first_delivery: 100,
        }
        .ids()
        .map(|id| (id.offset.0, id.delivery))
        .collect();
        assert_eq!(ids, [(10, 100), (11, 101), (12, 102)]);
    }
}
