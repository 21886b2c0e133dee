//! The request size limit, enforced on the gRPC framing of every Herald request body before
//! tonic decodes it.
//!
//! Why. tonic refuses a message above its decode limit with OUT_OF_RANGE ("decoded message
//! length too large"), where Herald's API promises RESOURCE_EXHAUSTED for size limits, and
//! the refusal breaks the request stream: on a PublishStream every later request was lost
//! unanswered. Here each message's 5-byte gRPC prefix is read as the body passes by; a
//! message above the limit is refused with RESOURCE_EXHAUSTED before any of it is
//! buffered. On a PublishStream the oversized message is skipped (its bytes are dropped as
//! they arrive, never held) and replaced by a small stand-in carrying its `sequence`, so
//! the stream answers it with RESOURCE_EXHAUSTED and goes on with the next request.
//! tonic's own limit stays configured behind this one as a second line.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http_body::Frame;
use prost::Message;
use tonic::Status;
use tonic::body::Body;

use crate::error::{BrokerError, Limit};

/// The gRPC length prefix: a compression flag byte and a big-endian u32.
const PREFIX_BYTES: usize = 5;
/// Bytes kept from the start of an oversized message to find its `sequence` (field 1, a
/// varint): one tag byte and at most ten varint bytes.
const SEQUENCE_HEAD_BYTES: usize = 11;
/// Oversized requests of one stream reported to the service and not yet taken by it. The
/// service takes each as it reads the stand-in, and tonic reads the body only as the
/// service asks for messages, so a few are enough; when full, the stream is refused
/// instead (nothing waits on this queue).
const OVERSIZED_QUEUE: usize = 16;

/// A skipped oversized request of a PublishStream, as the service learns about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Oversized {
    /// Index of the message in the stream (0 for the first), which is also the index of
    /// its stand-in.
    pub index: u64,
    pub sequence: u64,
    pub bytes: usize,
    pub limit: usize,
}

impl Oversized {
    /// The status the request is answered with. It carries the report as its source, so
    /// a service that reads the failed request stream can tell the refusal apart
    /// ([`Oversized::of`]).
    pub fn status(&self) -> Status {
        let mut status = Status::from(BrokerError::from(*self));
        status.set_source(Arc::new(*self));
        status
    }

    /// The report behind a request stream's error, if the error is this limit's refusal:
    /// the status the service reads holds the body's own status in its source chain
    /// (behind hyper's error), and that one holds the report.
    pub fn of(status: &Status) -> Option<Oversized> {
        let mut source = std::error::Error::source(status);
        while let Some(error) = source {
            if let Some(oversized) = error.downcast_ref::<Oversized>() {
                return Some(*oversized);
            }
            source = error.source();
        }
        None
    }
}

impl From<Oversized> for BrokerError {
    fn from(o: Oversized) -> BrokerError {
        BrokerError::limit(Limit::RequestBytes, o.bytes, o.limit)
    }
}

impl std::fmt::Display for Oversized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "request message {} of {} bytes is over the limit of {}",
            self.index, self.bytes, self.limit
        )
    }
}

impl std::error::Error for Oversized {}

/// The receiving side of a stream's oversized-request reports, put in the request's
/// extensions for the service.
#[derive(Clone)]
pub struct OversizedRequests(pub crossbeam_channel::Receiver<Oversized>);

/// Wraps `body` so that no message above `limit` bytes reaches tonic. With `substitute`
/// (PublishStream), an oversized message is replaced by a stand-in
/// `PublishStreamRequest { sequence, publish: None }` and reported on the returned
/// receiver; otherwise the body fails with RESOURCE_EXHAUSTED.
pub fn limit(body: Body, limit: usize, substitute: bool) -> (Body, Option<OversizedRequests>) {
    let (reports, receiver) = if substitute {
        let (tx, rx) = crossbeam_channel::bounded(OVERSIZED_QUEUE);
        (Some(tx), Some(OversizedRequests(rx)))
    } else {
        (None, None)
    };
    let limited = LimitedBody {
        inner: body,
        limit,
        state: State::Prefix {
            buf: [0; PREFIX_BYTES],
            have: 0,
        },
        out: VecDeque::new(),
        reports,
        index: 0,
        failed: false,
    };
    (Body::new(limited), receiver)
}

/// Where the parser is in the stream of length-prefixed messages.
enum State {
    /// Reading a prefix; `have` of its bytes are in `buf`.
    Prefix {
        buf: [u8; PREFIX_BYTES],
        have: usize,
    },
    /// Passing `left` more bytes of an accepted message through.
    Pass { left: usize },
    /// Dropping `left` more bytes of an oversized message of `bytes` bytes, after keeping
    /// its first bytes in `head` until it holds `SEQUENCE_HEAD_BYTES` (or the message ends).
    Skip {
        left: usize,
        bytes: usize,
        head: Vec<u8>,
        reported: bool,
    },
}

struct LimitedBody {
    inner: Body,
    limit: usize,
    state: State,
    /// Frames ready to hand to tonic: slices of the received data, prefixes, stand-ins.
    out: VecDeque<Bytes>,
    /// Where oversized PublishStream requests are reported; `None` refuses them instead.
    reports: Option<crossbeam_channel::Sender<Oversized>>,
    /// Index of the message whose prefix is read next.
    index: u64,
    /// An error was returned; the body ends.
    failed: bool,
}

impl LimitedBody {
    /// Runs the parser over one received chunk, queueing what passes into `out`.
    fn feed(&mut self, mut chunk: Bytes) -> Result<(), Status> {
        while !chunk.is_empty() {
            match &mut self.state {
                State::Prefix { buf, have } => {
                    let n = (PREFIX_BYTES - *have).min(chunk.len());
                    buf[*have..*have + n].copy_from_slice(&chunk[..n]);
                    *have += n;
                    let _ = chunk.split_to(n);
                    if *have < PREFIX_BYTES {
                        continue;
                    }
                    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                    let prefix = Bytes::copy_from_slice(buf);
                    if len <= self.limit {
                        self.out.push_back(prefix);
                        self.state = State::Pass { left: len };
                        self.finish_message_if_empty();
                        continue;
                    }
                    if self.reports.is_none() {
                        return Err(Oversized {
                            index: self.index,
                            sequence: 0,
                            bytes: len,
                            limit: self.limit,
                        }
                        .status());
                    }
                    self.state = State::Skip {
                        left: len,
                        bytes: len,
                        head: Vec::with_capacity(SEQUENCE_HEAD_BYTES),
                        reported: false,
                    };
                }
                State::Pass { left } => {
                    let n = (*left).min(chunk.len());
                    self.out.push_back(chunk.split_to(n));
                    *left -= n;
                    self.finish_message_if_empty();
                }
                State::Skip {
                    left,
                    bytes,
                    head,
                    reported,
                } => {
                    let n = (*left).min(chunk.len());
                    let keep = (SEQUENCE_HEAD_BYTES - head.len()).min(n);
                    head.extend_from_slice(&chunk[..keep]);
                    let _ = chunk.split_to(n);
                    *left -= n;
                    if !*reported && (head.len() == SEQUENCE_HEAD_BYTES || *left == 0) {
                        *reported = true;
                        let (bytes, head) = (*bytes, std::mem::take(head));
                        self.report(bytes, &head)?;
                    }
                    if let State::Skip { left: 0, .. } = self.state {
                        self.next_message();
                    }
                }
            }
        }
        Ok(())
    }

    /// Reports the skipped message and queues its stand-in, or refuses the stream when the
    /// report queue is full.
    fn report(&mut self, bytes: usize, head: &[u8]) -> Result<(), Status> {
        let sequence = leading_sequence(head);
        let oversized = Oversized {
            index: self.index,
            sequence,
            bytes,
            limit: self.limit,
        };
        let queued = self.reports.as_ref().map(|r| r.try_send(oversized));
        if !matches!(queued, Some(Ok(()))) {
            return Err(oversized.status());
        }
        let stand_in = herald_proto::v1::PublishStreamRequest {
            sequence,
            publish: None,
        };
        let len = stand_in.encoded_len();
        let mut buf = BytesMut::with_capacity(PREFIX_BYTES + len);
        buf.put_u8(0);
        buf.put_u32(len as u32);
        stand_in.encode_raw(&mut buf);
        self.out.push_back(buf.freeze());
        Ok(())
    }

    fn finish_message_if_empty(&mut self) {
        if let State::Pass { left: 0 } = self.state {
            self.next_message();
        }
    }

    fn next_message(&mut self) {
        self.index += 1;
        self.state = State::Prefix {
            buf: [0; PREFIX_BYTES],
            have: 0,
        };
    }
}

/// The `sequence` (field 1, a varint) of a message that starts with `head`. Protobuf
/// encoders write fields in number order and leave out a zero, so a message that does not
/// start with field 1 has sequence 0.
fn leading_sequence(head: &[u8]) -> u64 {
    match head.split_first() {
        Some((0x08, mut rest)) => prost::encoding::decode_varint(&mut rest).unwrap_or(0),
        _ => 0,
    }
}

impl http_body::Body for LimitedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        loop {
            if let Some(chunk) = this.out.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if this.failed {
                return Poll::Ready(None);
            }
            match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        if let Err(status) = this.feed(data) {
                            this.failed = true;
                            this.out.clear();
                            return Poll::Ready(Some(Err(status)));
                        }
                    }
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                other => return Poll::Ready(other),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.out.is_empty() && (self.failed || self.inner.is_end_stream())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request body delivering `chunks` as data frames.
    struct Chunks(VecDeque<Bytes>);

    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = Status;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
            Poll::Ready(self.get_mut().0.pop_front().map(|c| Ok(Frame::data(c))))
        }
    }

    /// Every data byte of `body`, or its error.
    async fn collect(mut body: Body) -> Result<Vec<u8>, Status> {
        let mut out = Vec::new();
        loop {
            let frame =
                std::future::poll_fn(|cx| http_body::Body::poll_frame(Pin::new(&mut body), cx))
                    .await;
            match frame {
                None => return Ok(out),
                Some(Err(status)) => return Err(status),
                Some(Ok(frame)) => out.extend_from_slice(&frame.into_data().unwrap()),
            }
        }
    }

    fn framed(message: &impl Message) -> Vec<u8> {
        let mut out = vec![0];
        out.extend((message.encoded_len() as u32).to_be_bytes());
        message.encode(&mut out).unwrap();
        out
    }

    fn request(sequence: u64, value_len: usize) -> herald_proto::v1::PublishStreamRequest {
        use herald_proto::v1;
        v1::PublishStreamRequest {
            sequence,
            publish: Some(v1::PublishRequest {
                topic: "t".into(),
                partition: None,
                payload: Some(v1::publish_request::Payload::StorageBatch(Bytes::from(
                    vec![7u8; value_len],
                ))),
                producer: None,
            }),
        }
    }

    /// Runs `wire` through the limit in chunks of `chunk` bytes; returns what tonic would
    /// see (the bytes passed, or the error) and the reports.
    async fn run(
        wire: &[u8],
        chunk: usize,
        limit_bytes: usize,
        substitute: bool,
    ) -> (Result<Vec<u8>, Status>, Vec<Oversized>) {
        let chunks = wire.chunks(chunk).map(Bytes::copy_from_slice).collect();
        let (body, reports) = limit(Body::new(Chunks(chunks)), limit_bytes, substitute);
        let collected = collect(body).await;
        let reports = reports.map_or_else(Vec::new, |r| r.0.try_iter().collect());
        (collected, reports)
    }

    #[tokio::test]
    async fn messages_within_the_limit_pass_unchanged_however_they_are_cut() {
        let mut wire = framed(&request(1, 10));
        wire.extend(framed(&request(2, 0)));
        wire.extend([0, 0, 0, 0, 0]); // an empty message
        wire.extend(framed(&request(3, 900)));
        for chunk in [1, 2, 5, 7, 64, 4096] {
            for substitute in [false, true] {
                let (passed, reports) = run(&wire, chunk, 1000, substitute).await;
                assert_eq!(passed.unwrap(), wire, "chunk {chunk}");
                assert!(reports.is_empty());
            }
        }
    }

    #[tokio::test]
    async fn an_oversized_message_is_resource_exhausted() {
        let mut wire = framed(&request(1, 10));
        wire.extend(framed(&request(2, 5000)));
        for chunk in [1, 3, 100, 100_000] {
            let (passed, _) = run(&wire, chunk, 1000, false).await;
            let status = passed.unwrap_err();
            assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
            assert!(
                status.message().contains("at most 1000 bytes"),
                "{status:?}"
            );
        }
    }

    #[tokio::test]
    async fn an_oversized_stream_request_becomes_a_stand_in_and_the_stream_goes_on() {
        let mut wire = framed(&request(1, 10));
        wire.extend(framed(&request(300, 5000)));
        wire.extend(framed(&request(3, 10)));
        let mut expected = framed(&request(1, 10));
        expected.extend(framed(&herald_proto::v1::PublishStreamRequest {
            sequence: 300,
            publish: None,
        }));
        expected.extend(framed(&request(3, 10)));
        for chunk in [1, 4, 6, 11, 999, 100_000] {
            let (passed, reports) = run(&wire, chunk, 1000, true).await;
            assert_eq!(passed.unwrap(), expected, "chunk {chunk}");
            assert_eq!(
                reports,
                vec![Oversized {
                    index: 1,
                    sequence: 300,
                    bytes: request(300, 5000).encoded_len(),
                    limit: 1000
                }]
            );
        }
    }

    #[test]
    fn a_refusal_is_told_apart_by_its_report() {
        let oversized = Oversized {
            index: 2,
            sequence: 0,
            bytes: 2000,
            limit: 1000,
        };
        let status = oversized.status();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(Oversized::of(&status), Some(oversized));
        // Another status with the same code and text is not one.
        assert_eq!(
            Oversized::of(&Status::from(BrokerError::from(oversized))),
            None
        );
    }

    #[test]
    fn the_sequence_is_read_from_the_first_field_only() {
        assert_eq!(leading_sequence(&[0x08, 0xac, 0x02, 0x12]), 300);
        assert_eq!(leading_sequence(&[0x12, 0x01]), 0);
        assert_eq!(leading_sequence(&[]), 0);
    }
}
