//! Reading one partition by position, without a consumer group: the `Fetch` RPC.
//!
//! A [`Fetch`] owns one server-streaming call. It hands out the records of each response
//! in offset order and stops at the partition's end (or, when following, never), after
//! [`FetchConfig::max_records`], or at the first error, which it yields before ending.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use herald_format::batch::BatchView;
use herald_proto::v1;

use crate::{Client, Error, Offset, Partition, Position, Result};

/// Settings of a [`Client::fetch`]; made by [`FetchConfig::new`] and adjusted with its
/// builder methods.
///
/// ```
/// use herald_client::{FetchConfig, Position};
/// let config = FetchConfig::new("orders", 2)
///     .start(Position::Timestamp(1_700_000_000_000))
///     .follow(true)
///     .max_records(100);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchConfig {
    /// The topic to read.
    pub topic: String,
    /// The partition to read.
    pub partition: Partition,
    /// Where to start (default [`Position::Earliest`]). An offset outside the partition is
    /// [`crate::Error::OutOfRange`]; a timestamp starts at the first record at or after it.
    pub start: Position,
    /// `false` (default): stop at the partition's end as it is when the call arrives.
    /// `true`: after catching up, keep yielding records as they are published, until the
    /// [`Fetch`] is dropped.
    pub follow: bool,
    /// Stop after this many records (default: no limit).
    pub max_records: Option<u64>,
    /// Soft limit on the record bytes of one response (0, the default: the broker's).
    pub max_response_bytes: u32,
}

impl FetchConfig {
    /// Reading `partition` of `topic` from the earliest record, with the defaults.
    pub fn new(topic: impl Into<String>, partition: u32) -> FetchConfig {
        FetchConfig {
            topic: topic.into(),
            partition: Partition(partition),
            start: Position::Earliest,
            follow: false,
            max_records: None,
            max_response_bytes: 0,
        }
    }

    /// Sets [`FetchConfig::start`].
    pub fn start(mut self, start: Position) -> Self {
        self.start = start;
        self
    }

    /// Sets [`FetchConfig::follow`].
    pub fn follow(mut self, follow: bool) -> Self {
        self.follow = follow;
        self
    }

    /// Sets [`FetchConfig::max_records`].
    pub fn max_records(mut self, records: u64) -> Self {
        self.max_records = Some(records);
        self
    }

    /// Sets [`FetchConfig::max_response_bytes`].
    pub fn max_response_bytes(mut self, bytes: u32) -> Self {
        self.max_response_bytes = bytes;
        self
    }
}

/// A record read back by a [`Fetch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedRecord {
    /// The record's partition.
    pub partition: Partition,
    /// The record's offset in its partition.
    pub offset: Offset,
    /// Its timestamp, in ms since the Unix epoch (set by the publisher, or by the broker
    /// when the publisher left it 0).
    pub timestamp_ms: i64,
    /// Its key, if it has one.
    pub key: Option<Bytes>,
    /// Its payload.
    pub value: Bytes,
    /// Its headers, in published order.
    pub headers: Vec<(String, Bytes)>,
}

/// The records of one partition, from [`Client::fetch`]: a [`futures::Stream`] of
/// [`FetchedRecord`]s in offset order.
///
/// It ends (yields `None`) at the partition's end when not following, after
/// [`FetchConfig::max_records`], or after yielding an error. Dropping it cancels the call.
#[derive(Debug)]
pub struct Fetch {
    /// The call; `None` once it has ended, failed or is no longer wanted.
    responses: Option<tonic::Streaming<v1::FetchResponse>>,
    /// The rest of the last response's records.
    buffered: std::vec::IntoIter<FetchedRecord>,
    partition: Partition,
    /// Records still to yield before `max_records` is reached.
    remaining: Option<u64>,
    /// With stored batches: the lowest offset still to yield. A batch is sent whole, so
    /// the first may begin before the start offset, and one cut short by the end of a
    /// response comes again at the start of the next.
    from: Option<u64>,
}

impl Fetch {
    pub(crate) async fn start(client: &Client, config: FetchConfig) -> Result<Fetch> {
        let mut raw = client.raw();
        // Stored batches, decoded here, unless the start is a time: the broker then
        // resolves it to an offset the client does not learn, which may fall inside the
        // first batch. Decoding here spares the broker a protobuf message per record and
        // this side as many decodes (about half the CPU of an offset read on each side).
        let raw_batches = !matches!(config.start, Position::Timestamp(_));
        let from = match config.start {
            Position::Offset(offset) => Some(offset),
            // The log's start and end are batch boundaries: no record to skip.
            Position::Earliest | Position::Latest | Position::Timestamp(_) => None,
        };
        let request = v1::FetchRequest {
            topic: config.topic,
            partition: config.partition.0,
            start: Some(config.start.into_proto()),
            max_bytes: config.max_response_bytes,
            follow: config.follow,
            max_wait_ms: 0,
            raw_batches,
        };
        let responses = raw.fetch(request).await?.into_inner();
        Ok(Fetch {
            responses: Some(responses),
            buffered: Vec::new().into_iter(),
            partition: config.partition,
            remaining: config.max_records,
            from,
        })
    }

    /// The records of one response, decoded here from stored batches (slices of the
    /// received bytes, no copy) or taken from the broker's per-record messages.
    fn records(&mut self, response: v1::FetchResponse) -> Result<Vec<FetchedRecord>> {
        let partition = self.partition;
        let mut out: Vec<FetchedRecord> = response
            .records
            .into_iter()
            .map(|r| FetchedRecord {
                partition,
                offset: Offset(r.offset),
                timestamp_ms: r.timestamp_ms,
                key: r.key,
                value: r.value,
                headers: r.headers.into_iter().map(|h| (h.key, h.value)).collect(),
            })
            .collect();
        for bytes in &response.batches {
            let bad = |what: String| {
                Error::Protocol(format!(
                    "a stored batch of partition {} in a fetch response: {what}",
                    partition.0
                ))
            };
            let view = BatchView::new(bytes).map_err(|e| bad(e.to_string()))?;
            out.reserve(view.header.record_count as usize);
            for record in view.records() {
                let r = record.map_err(|e| bad(e.to_string()))?;
                if self.from.is_some_and(|from| r.offset < from) {
                    continue;
                }
                out.push(FetchedRecord {
                    partition,
                    offset: Offset(r.offset),
                    timestamp_ms: r.timestamp,
                    key: r.key.map(|k| bytes.slice_ref(k)),
                    value: bytes.slice_ref(r.value),
                    headers: r
                        .headers()
                        .map(|(k, v)| (k.to_owned(), bytes.slice_ref(v)))
                        .collect(),
                });
            }
        }
        if self.from.is_some() || !response.batches.is_empty() {
            self.from = self.from.max(Some(response.next_offset));
        }
        Ok(out)
    }
}

impl Stream for Fetch {
    type Item = Result<FetchedRecord>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if self.remaining == Some(0) {
                // Cancels the call: the broker stops reading for a reader that is done.
                self.responses = None;
                return Poll::Ready(None);
            }
            if let Some(record) = self.buffered.next() {
                if let Some(remaining) = &mut self.remaining {
                    *remaining -= 1;
                }
                return Poll::Ready(Some(Ok(record)));
            }
            let Some(responses) = self.responses.as_mut() else {
                return Poll::Ready(None);
            };
            match Pin::new(responses).poll_next(cx) {
                Poll::Ready(Some(Ok(response))) => match self.records(response) {
                    Ok(records) => self.buffered = records.into_iter(),
                    Err(error) => {
                        self.responses = None;
                        return Poll::Ready(Some(Err(error)));
                    }
                },
                Poll::Ready(Some(Err(status))) => {
                    self.responses = None;
                    return Poll::Ready(Some(Err(status.into())));
                }
                Poll::Ready(None) => {
                    self.responses = None;
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
