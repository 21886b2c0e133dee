//! Subscribe's responses written to HTTP/2 without tonic's encode buffer.
//!
//! Why. tonic encodes every response message into one contiguous buffer before hyper hands
//! it to HTTP/2, so a delivery run's records (a slice of the mapped log) are copied once
//! more on their way to the socket. At 1 KiB records that copy was the broker's largest
//! single cost of consuming. Here a response becomes a list of chunks: the protobuf framing
//! in small buffers, and each run's records as the `Bytes` that points into the mapping.
//! h2 sends a large chunk as its own DATA frame(s) with vectored writes, so the records go
//! from the page cache to the socket with the kernel's copy alone.
//!
//! How. [`SubscribeRoute`] wraps the generated `HeraldServer` under the same service name.
//! It answers `/herald.v1.Herald/Subscribe` itself (same request decoding, same
//! [`HeraldService::subscribe_stream`], same trailers as tonic) and passes every other
//! path to the generated server. Both sit behind the server's `policy` layer, so every
//! rule for all RPCs applies to Subscribe too; nothing may be configured on the generated
//! server alone. The bytes on the wire are exactly prost's encoding of the
//! same `SubscribeResponse` messages (fields in field-number order, a run's records last),
//! only cut into chunks, so every gRPC client reads them unchanged.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use herald_proto::v1;
use herald_proto::{HeraldServer, SERVICE_NAME};
use http_body::Frame;
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use tonic::body::Body;
use tonic::codec::{Codec, Streaming};
use tonic::codegen::{Service, http};
use tonic::server::NamedService;
use tonic::{Request, Status};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::publish_route;
use super::service::{BoxStream, FETCH_SMALL_BYTES, HELD_RESPONSES, HeraldService};
use crate::error::BrokerError;

/// The gRPC path this route answers itself.
const SUBSCRIBE_PATH: &str = "/herald.v1.Herald/Subscribe";
/// Records of a run shorter than this are copied into the framing buffer: a separate DATA
/// frame (9 bytes of header, one more write) costs more than copying a few KiB.
const INLINE_RECORDS_BYTES: usize = 4096;
/// `SubscribeResponse.deliveries`, `Deliveries.deliveries`, `Deliveries.runs` and
/// `DeliveryRun.records`: the field numbers of subscribe.proto this encoder writes itself.
const RESPONSE_DELIVERIES_TAG: u32 = 2;
const DELIVERIES_SINGLES_TAG: u32 = 1;
const DELIVERIES_RUNS_TAG: u32 = 2;
const RUN_RECORDS_TAG: u32 = 9;
/// The gRPC length prefix: a compression flag byte and a big-endian u32.
const GRPC_PREFIX_BYTES: usize = 5;

/// The generated Herald server with Subscribe answered by [`SubscribeBody`], and Publish
/// and PublishStream by `publish_route`.
#[derive(Clone)]
pub struct SubscribeRoute {
    inner: HeraldServer<HeraldService>,
    service: Arc<HeraldService>,
    /// Largest request message accepted, as the generated server is configured.
    max_decoding_message_size: usize,
    /// Largest response message sent, as the generated server is configured.
    max_encoding_message_size: usize,
}

impl SubscribeRoute {
    pub fn new(service: Arc<HeraldService>, max_decoding: usize, max_encoding: usize) -> Self {
        SubscribeRoute {
            inner: HeraldServer::from_arc(service.clone())
                .max_decoding_message_size(max_decoding)
                .max_encoding_message_size(max_encoding),
            service,
            max_decoding_message_size: max_decoding,
            max_encoding_message_size: max_encoding,
        }
    }
}

impl NamedService for SubscribeRoute {
    const NAME: &'static str = SERVICE_NAME;
}

impl Service<http::Request<Body>> for SubscribeRoute {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let service = self.service.clone();
        let (max, max_encoding) = (
            self.max_decoding_message_size,
            self.max_encoding_message_size,
        );
        match request.uri().path() {
            SUBSCRIBE_PATH => {}
            publish_route::PUBLISH_PATH => {
                return Box::pin(async move {
                    Ok(publish_route::publish(&service, request, max, max_encoding).await)
                });
            }
            publish_route::PUBLISH_STREAM_PATH => {
                return Box::pin(async move {
                    Ok(publish_route::publish_stream(
                        &service,
                        request,
                        max,
                        max_encoding,
                    ))
                });
            }
            _ => return Box::pin(self.inner.call(request)),
        }
        Box::pin(async move {
            Ok(match subscribe(&service, request, max) {
                Ok(body) => {
                    let mut response = http::Response::new(Body::new(body));
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/grpc"),
                    );
                    response
                }
                Err(status) => status.into_http(),
            })
        })
    }
}

/// Decodes the request stream as tonic would and starts the member.
fn subscribe(
    service: &HeraldService,
    request: http::Request<Body>,
    max_decoding: usize,
) -> Result<SubscribeBody, Status> {
    // Herald never advertises request compression, so a compressed request is refused
    // the way tonic refuses an encoding it was not configured for.
    if let Some(encoding) = request.headers().get("grpc-encoding")
        && encoding.as_bytes() != b"identity"
    {
        return Err(BrokerError::CompressionUnsupported {
            encoding: String::from_utf8_lossy(encoding.as_bytes()).into_owned(),
        }
        .into());
    }
    let mut codec =
        tonic_prost::ProstCodec::<v1::SubscribeResponse, v1::SubscribeRequest>::default();
    let request =
        request.map(|body| Streaming::new_request(codec.decoder(), body, None, Some(max_decoding)));
    let stream = service.subscribe_stream(Request::from_http(request))?;
    Ok(SubscribeBody {
        stream,
        chunks: VecDeque::new(),
        scratch: BytesMut::new(),
        ended: false,
        rest: None,
        budget: service.response_budget(),
        held: VecDeque::with_capacity(HELD_RESPONSES + 1),
    })
}

/// The response body of one Subscribe call: its messages as chunks, then the trailers.
struct SubscribeBody {
    stream: BoxStream<v1::SubscribeResponse>,
    /// Chunks of the current message not yet handed to hyper, in order.
    chunks: VecDeque<Bytes>,
    /// Where framing is written; chunks are split off it, so it is reused once hyper has
    /// sent them.
    scratch: BytesMut,
    /// The trailers went out.
    ended: bool,
    /// What is left of a response being sent in pieces (see [`SubscribeBody::next_message`]).
    rest: Option<v1::Deliveries>,
    /// The broker-wide budget for response bytes held on the heap until they reach the
    /// socket (`response_buffer_bytes`, shared with Fetch).
    budget: Arc<Semaphore>,
    /// The budget of the last messages handed to hyper, released `HELD_RESPONSES`
    /// messages later: hyper hands h2 a whole chunk whatever the flow-control window, so a
    /// message's bytes are off the heap only once the reader made room for the next ones.
    held: VecDeque<Option<OwnedSemaphorePermit>>,
}

impl http_body::Body for SubscribeBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if let Some(chunk) = this.chunks.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if this.ended {
            return Poll::Ready(None);
        }
        let next = match this.rest.take() {
            Some(rest) => Poll::Ready(Some(Ok(deliveries_response(rest)))),
            None => this.stream.as_mut().poll_next(cx),
        };
        let status = match next {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Ok(message))) => {
                let (message, single_lens) = this.next_message(message);
                encode_chunks(message, &single_lens, &mut this.scratch, &mut this.chunks);
                let chunk = this.chunks.pop_front().expect("a message has a chunk");
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            Poll::Ready(Some(Err(status))) => status,
            Poll::Ready(None) => super::status::stream_done(),
        };
        this.ended = true;
        let mut trailers = http::HeaderMap::new();
        if status.add_header(&mut trailers).is_err() {
            // Only a message that cannot be a header value fails; say the code alone.
            trailers = http::HeaderMap::new();
            let _ = Status::new(status.code(), "").add_header(&mut trailers);
        }
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.chunks.is_empty()
    }
}

impl SubscribeBody {
    /// What to send of `message` now. A response whose copied bytes (see [`heap_len`])
    /// are small, or fit in the broker-wide budget, goes whole, holding its share of the
    /// budget. Otherwise only its first deliveries go, up to `FETCH_SMALL_BYTES` of
    /// copied bytes (at least one delivery), and the rest waits in `rest` for the next
    /// call, when the budget may have room for all of it: members that read are never
    /// stopped by members that do not, and a member whose stream is not read holds at
    /// most one full response of the budget plus a few small ones.
    ///
    /// The pieces keep the response's order: its single deliveries first, then its runs,
    /// which is the order in which clients take a response's messages.
    ///
    /// Also returns the encoded length of each single delivery of what it returns, so that
    /// [`encode_chunks`] need not measure them again: with small single deliveries,
    /// measuring is a good part of the encoding's cost.
    fn next_message(
        &mut self,
        message: v1::SubscribeResponse,
    ) -> (v1::SubscribeResponse, Vec<usize>) {
        let mut single_lens = match &message.response {
            Some(v1::subscribe_response::Response::Deliveries(d)) => {
                d.deliveries.iter().map(Message::encoded_len).collect()
            }
            _ => Vec::new(),
        };
        let cost = heap_len_with(&message, &single_lens);
        let permit = if cost <= FETCH_SMALL_BYTES {
            None
        } else {
            u32::try_from(cost)
                .ok()
                .and_then(|cost| self.budget.clone().try_acquire_many_owned(cost).ok())
        };
        let message = match (
            permit.is_some() || cost <= FETCH_SMALL_BYTES,
            message.response,
        ) {
            (false, Some(v1::subscribe_response::Response::Deliveries(mut deliveries))) => {
                let piece = split_front_with(&mut deliveries, &single_lens, FETCH_SMALL_BYTES);
                single_lens.truncate(piece.deliveries.len());
                if !deliveries.deliveries.is_empty() || !deliveries.runs.is_empty() {
                    self.rest = Some(deliveries);
                }
                deliveries_response(piece)
            }
            (_, response) => v1::SubscribeResponse { response },
        };
        self.held.push_back(permit);
        while self.held.len() > HELD_RESPONSES {
            self.held.pop_front();
        }
        (message, single_lens)
    }
}

fn deliveries_response(deliveries: v1::Deliveries) -> v1::SubscribeResponse {
    v1::SubscribeResponse {
        response: Some(v1::subscribe_response::Response::Deliveries(deliveries)),
    }
}

/// Bytes of `message` that [`encode_chunks`] copies into a buffer of its own (everything
/// but the records of runs sent as the log's bytes), which stay on the heap until h2
/// has written them.
#[cfg(test)]
fn heap_len(message: &v1::SubscribeResponse) -> usize {
    let single_lens: Vec<usize> = match &message.response {
        Some(v1::subscribe_response::Response::Deliveries(d)) => {
            d.deliveries.iter().map(Message::encoded_len).collect()
        }
        _ => Vec::new(),
    };
    heap_len_with(message, &single_lens)
}

/// [`heap_len`], given the encoded length of each single delivery.
fn heap_len_with(message: &v1::SubscribeResponse, single_lens: &[usize]) -> usize {
    match &message.response {
        Some(v1::subscribe_response::Response::Deliveries(d)) => {
            single_lens
                .iter()
                .map(|&len| single_len(len))
                .sum::<usize>()
                + d.runs.iter().map(run_heap_len).sum::<usize>()
        }
        _ => message.encoded_len(),
    }
}

/// Bytes of a single delivery of `len` encoded bytes as a field of `Deliveries`.
fn single_len(len: usize) -> usize {
    key_len(DELIVERIES_SINGLES_TAG) + encoded_len_varint(len as u64) + len
}

fn run_heap_len(run: &v1::DeliveryRun) -> usize {
    let len = prost::encoding::message::encoded_len(DELIVERIES_RUNS_TAG, run);
    if run.records.len() >= INLINE_RECORDS_BYTES {
        len - run.records.len()
    } else {
        len
    }
}

/// Takes the first deliveries of `deliveries` whose copied bytes stay within `limit` (at
/// least one): singles first, runs only once every single is taken.
#[cfg(test)]
fn split_front(deliveries: &mut v1::Deliveries, limit: usize) -> v1::Deliveries {
    let single_lens: Vec<usize> = deliveries
        .deliveries
        .iter()
        .map(Message::encoded_len)
        .collect();
    split_front_with(deliveries, &single_lens, limit)
}

/// [`split_front`], given the encoded length of each single delivery.
fn split_front_with(
    deliveries: &mut v1::Deliveries,
    single_lens: &[usize],
    limit: usize,
) -> v1::Deliveries {
    let mut used = 0;
    let singles = count_within(
        single_lens.iter().map(|&len| single_len(len)),
        &mut used,
        limit,
    );
    let mut piece = v1::Deliveries {
        deliveries: deliveries.deliveries.drain(..singles).collect(),
        runs: Vec::new(),
    };
    if deliveries.deliveries.is_empty() {
        let runs = count_within(deliveries.runs.iter().map(run_heap_len), &mut used, limit);
        piece.runs = deliveries.runs.drain(..runs).collect();
    }
    piece
}

/// How many of `lens` fit, in order, with `used` bytes already taken of `limit`: at least
/// one when nothing is taken yet. Adds what it takes to `used`.
fn count_within(lens: impl Iterator<Item = usize>, used: &mut usize, limit: usize) -> usize {
    let mut count = 0;
    for len in lens {
        if *used > 0 && *used + len > limit {
            break;
        }
        *used += len;
        count += 1;
    }
    count
}

/// Appends `message` to `out`, gRPC-framed, as chunks: the records of large runs are their
/// own chunks (the `Bytes` from the log), everything else is written into `scratch`.
///
/// `single_lens` holds the encoded length of each single delivery, if the caller measured
/// them (it is ignored unless it has one per single).
fn encode_chunks(
    mut message: v1::SubscribeResponse,
    single_lens: &[usize],
    scratch: &mut BytesMut,
    out: &mut VecDeque<Bytes>,
) {
    let Some(v1::subscribe_response::Response::Deliveries(deliveries)) = &mut message.response
    else {
        let len = message.encoded_len();
        scratch.reserve(GRPC_PREFIX_BYTES + len);
        put_prefix(scratch, len);
        message.encode_raw(scratch);
        out.push_back(scratch.split().freeze());
        return;
    };
    // Each run's records leave the message; the run is written without them, then the
    // records field by hand, after its other fields.
    let records: Vec<Bytes> = deliveries
        .runs
        .iter_mut()
        .map(|run| std::mem::take(&mut run.records))
        .collect();
    let run_lens: Vec<usize> = deliveries
        .runs
        .iter()
        .zip(&records)
        .map(|(run, records)| run.encoded_len() + bytes_field_len(RUN_RECORDS_TAG, records.len()))
        .collect();
    let measured;
    let single_lens = if single_lens.len() == deliveries.deliveries.len() {
        single_lens
    } else {
        measured = deliveries
            .deliveries
            .iter()
            .map(Message::encoded_len)
            .collect::<Vec<_>>();
        &measured
    };
    let deliveries_len = single_lens
        .iter()
        .map(|&len| single_len(len))
        .sum::<usize>()
        + run_lens
            .iter()
            .map(|len| key_len(DELIVERIES_RUNS_TAG) + encoded_len_varint(*len as u64) + len)
            .sum::<usize>();
    let message_len = key_len(RESPONSE_DELIVERIES_TAG)
        + encoded_len_varint(deliveries_len as u64)
        + deliveries_len;

    // Everything but the records sent as chunks of their own goes through `scratch`.
    let separate: usize = records
        .iter()
        .filter(|r| r.len() >= INLINE_RECORDS_BYTES)
        .map(Bytes::len)
        .sum();
    scratch.reserve(GRPC_PREFIX_BYTES + message_len - separate);
    put_prefix(scratch, message_len);
    encode_key(RESPONSE_DELIVERIES_TAG, WireType::LengthDelimited, scratch);
    encode_varint(deliveries_len as u64, scratch);
    for (single, &len) in deliveries.deliveries.iter().zip(single_lens) {
        encode_key(DELIVERIES_SINGLES_TAG, WireType::LengthDelimited, scratch);
        encode_varint(len as u64, scratch);
        single.encode_raw(scratch);
    }
    for ((run, records), run_len) in deliveries.runs.iter().zip(records).zip(run_lens) {
        encode_key(DELIVERIES_RUNS_TAG, WireType::LengthDelimited, scratch);
        encode_varint(run_len as u64, scratch);
        run.encode_raw(scratch);
        // Left out when empty, as `bytes_field_len` counted it (and as proto3 does).
        if records.is_empty() {
            continue;
        }
        encode_key(RUN_RECORDS_TAG, WireType::LengthDelimited, scratch);
        encode_varint(records.len() as u64, scratch);
        if records.len() < INLINE_RECORDS_BYTES {
            scratch.put_slice(&records);
        } else {
            out.push_back(scratch.split().freeze());
            out.push_back(records);
        }
    }
    if !scratch.is_empty() {
        out.push_back(scratch.split().freeze());
    }
}

/// Bytes of a length-delimited field of `len` bytes (proto3 leaves an empty one out).
fn bytes_field_len(tag: u32, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(len as u64) + len
    }
}

fn put_prefix(buf: &mut BytesMut, message_len: usize) {
    buf.put_u8(0); // not compressed
    buf.put_u32(u32::try_from(message_len).expect("a response below 4 GiB"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(partition: u32, records: Bytes) -> v1::DeliveryRun {
        v1::DeliveryRun {
            partition,
            first_offset: 1000 + u64::from(partition),
            count: 3,
            first_delivery: 77,
            delivery_attempt: 2,
            deadline_ms: 1_700_000_000_000,
            base_offset: 990,
            first_timestamp_ms: 1_699_999_999_000,
            records,
        }
    }

    fn single(offset: u64) -> v1::Delivery {
        v1::Delivery {
            partition: 1,
            offset,
            key: Some(Bytes::from_static(b"k")),
            value: Bytes::from(vec![7u8; 300]),
            headers: vec![v1::Header {
                key: "h".into(),
                value: Bytes::from_static(b"v"),
            }],
            timestamp_ms: 5,
            delivery_attempt: 1,
            ack_id: Bytes::from_static(b"0123456789abcdef"),
            deadline_ms: 9,
        }
    }

    /// Decodes the chunks as a gRPC client would: the prefix, then one message. Checks
    /// on the way that the message's bytes are exactly what prost encodes for it.
    fn decode(chunks: &VecDeque<Bytes>) -> v1::SubscribeResponse {
        let whole: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        assert_eq!(whole[0], 0, "not compressed");
        let len = u32::from_be_bytes(whole[1..5].try_into().unwrap()) as usize;
        assert_eq!(
            whole.len(),
            GRPC_PREFIX_BYTES + len,
            "the prefix covers the message"
        );
        let message = v1::SubscribeResponse::decode(&whole[5..]).unwrap();
        assert_eq!(message.encode_to_vec(), whole[5..], "prost's own encoding");
        message
    }

    fn deliveries(singles: Vec<v1::Delivery>, runs: Vec<v1::DeliveryRun>) -> v1::SubscribeResponse {
        v1::SubscribeResponse {
            response: Some(v1::subscribe_response::Response::Deliveries(
                v1::Deliveries {
                    deliveries: singles,
                    runs,
                },
            )),
        }
    }

    #[test]
    fn deliveries_are_prosts_own_encoding_in_chunks() {
        let big = Bytes::from((0..100_000u32).map(|i| i as u8).collect::<Vec<_>>());
        let small = Bytes::from_static(b"a few records");
        for message in [
            deliveries(vec![], vec![run(0, big.clone())]),
            deliveries(vec![single(1), single(2)], vec![]),
            deliveries(
                vec![single(3)],
                vec![
                    run(0, big.clone()),
                    run(1, small.clone()),
                    run(2, big.clone()),
                ],
            ),
            deliveries(vec![], vec![run(4, small.clone())]),
            deliveries(
                vec![single(5)],
                vec![run(5, Bytes::new()), run(6, big.clone())],
            ),
            deliveries(vec![], vec![]),
        ] {
            let mut chunks = VecDeque::new();
            encode_chunks(message.clone(), &[], &mut BytesMut::new(), &mut chunks);
            assert_eq!(decode(&chunks), message);
            // With the singles measured beforehand, as `next_message` hands them on.
            let lens: Vec<usize> = match &message.response {
                Some(v1::subscribe_response::Response::Deliveries(d)) => {
                    d.deliveries.iter().map(Message::encoded_len).collect()
                }
                _ => Vec::new(),
            };
            let mut measured = VecDeque::new();
            encode_chunks(message.clone(), &lens, &mut BytesMut::new(), &mut measured);
            assert_eq!(measured, chunks);
        }
    }

    #[test]
    fn large_records_are_sent_as_the_same_bytes() {
        let big = Bytes::from(vec![3u8; 64 * 1024]);
        let mut chunks = VecDeque::new();
        encode_chunks(
            deliveries(vec![], vec![run(0, big.clone()), run(1, big.clone())]),
            &[],
            &mut BytesMut::new(),
            &mut chunks,
        );
        let shared = chunks.iter().filter(|c| c.as_ptr() == big.as_ptr()).count();
        assert_eq!(
            shared, 2,
            "each run's records are the log's bytes, not a copy"
        );
        assert_eq!(chunks.len(), 4);
    }

    #[test]
    fn a_response_split_into_pieces_keeps_every_delivery_in_order() {
        let big = Bytes::from(vec![1u8; 100_000]);
        let small = Bytes::from(vec![2u8; 3000]);
        let whole = v1::Deliveries {
            deliveries: (0..40).map(single).collect(),
            runs: vec![run(0, small.clone()), run(1, big), run(2, small)],
        };
        for limit in [1, 500, 4096, 20_000, 1 << 20] {
            let mut rest = whole.clone();
            let mut singles = Vec::new();
            let mut runs = Vec::new();
            let mut pieces = 0;
            while !rest.deliveries.is_empty() || !rest.runs.is_empty() {
                let piece = split_front(&mut rest, limit);
                assert!(
                    !piece.deliveries.is_empty() || !piece.runs.is_empty(),
                    "every piece delivers something"
                );
                assert!(
                    piece.runs.is_empty() || rest.deliveries.is_empty(),
                    "runs go only after every single"
                );
                let copied = heap_len(&deliveries_response(piece.clone()));
                let items = piece.deliveries.len() + piece.runs.len();
                assert!(items == 1 || copied <= limit, "{copied} > {limit}");
                singles.extend(piece.deliveries);
                runs.extend(piece.runs);
                pieces += 1;
            }
            assert_eq!(
                (singles, runs),
                (whole.deliveries.clone(), whole.runs.clone())
            );
            assert!(pieces >= 1);
        }
    }

    #[test]
    fn other_responses_are_one_chunk() {
        let joined = v1::SubscribeResponse {
            response: Some(v1::subscribe_response::Response::Joined(v1::Joined {
                member_id: "m-1".into(),
                partitions: vec![0, 1, 2],
                settings: None,
            })),
        };
        let mut chunks = VecDeque::new();
        encode_chunks(joined.clone(), &[], &mut BytesMut::new(), &mut chunks);
        assert_eq!(chunks.len(), 1);
        assert_eq!(decode(&chunks), joined);
    }

    #[test]
    fn consecutive_messages_reuse_the_scratch_buffer() {
        let mut scratch = BytesMut::new();
        let mut chunks = VecDeque::new();
        let message = deliveries(vec![single(1)], vec![run(0, Bytes::from_static(b"r"))]);
        encode_chunks(message.clone(), &[], &mut scratch, &mut chunks);
        encode_chunks(message.clone(), &[], &mut scratch, &mut chunks);
        assert_eq!(chunks.len(), 2);
        assert_eq!(decode(&VecDeque::from([chunks[0].clone()])), message);
        assert_eq!(decode(&VecDeque::from([chunks[1].clone()])), message);
    }
}
