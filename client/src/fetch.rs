//! Reading one partition by position, without a consumer group: the `Fetch` RPC.
//!
//! A [`Fetch`] owns one server-streaming call. It hands out the records of each response
//! in offset order and stops at the partition's end (or, when following, never), after
//! [`FetchConfig::max_records`], or at the first error, which it yields before ending.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use herald_proto::v1;

use crate::{Client, Offset, Partition, Position, Result};

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
    buffered: std::vec::IntoIter<v1::FetchedRecord>,
    partition: Partition,
    /// Records still to yield before `max_records` is reached.
    remaining: Option<u64>,
}

impl Fetch {
    pub(crate) async fn start(client: &Client, config: FetchConfig) -> Result<Fetch> {
        let mut raw = client.raw();
        let request = v1::FetchRequest {
            topic: config.topic,
            partition: config.partition.0,
            start: Some(config.start.into_proto()),
            max_bytes: config.max_response_bytes,
            follow: config.follow,
            max_wait_ms: 0,
            // Decoded records: the stored-batch form would need the storage codec here.
            raw_batches: false,
        };
        let responses = raw.fetch(request).await?.into_inner();
        Ok(Fetch {
            responses: Some(responses),
            buffered: Vec::new().into_iter(),
            partition: config.partition,
            remaining: config.max_records,
        })
    }

    fn record(&self, r: v1::FetchedRecord) -> FetchedRecord {
        FetchedRecord {
            partition: self.partition,
            offset: Offset(r.offset),
            timestamp_ms: r.timestamp_ms,
            key: r.key,
            value: r.value,
            headers: r.headers.into_iter().map(|h| (h.key, h.value)).collect(),
        }
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
                return Poll::Ready(Some(Ok(self.record(record))));
            }
            let Some(responses) = self.responses.as_mut() else {
                return Poll::Ready(None);
            };
            match Pin::new(responses).poll_next(cx) {
                Poll::Ready(Some(Ok(response))) => self.buffered = response.records.into_iter(),
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
