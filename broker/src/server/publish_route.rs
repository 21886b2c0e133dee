//! Publish and PublishStream requests decoded without tonic's decode buffer.
//!
//! Why. tonic copies every DATA frame of a request into one contiguous buffer before prost
//! decodes a message out of it, so a publish's storage batch (most of the bytes a broker
//! receives) was copied once more on its way from the socket to the log. Here a request's
//! bytes stay in the frames h2 received them in: the body's frames are kept as a list of
//! `Bytes` ([`Rope`]), prost decodes the message from that list, and a `bytes` field that
//! lies within one frame (the storage batch, when its message came in one DATA frame) is a
//! slice of that frame, not a copy. A field split across frames is copied once, as tonic
//! would have.
//!
//! How. `SubscribeRoute` (the generated server under the service's name) sends
//! `/herald.v1.Herald/Publish` and `/herald.v1.Herald/PublishStream` here. The requests
//! are decoded by [`Decoded`], which follows tonic's `Streaming` step for step (the same
//! statuses for a bad prefix, an oversized or malformed message, a truncated body, a
//! failed body), and handed to the same service code as the generated server's
//! (`HeraldService::publish_unary`, `HeraldService::publish_stream_start`). Replies are
//! encoded by tonic's own `EncodeBody`, as the generated server encodes them. The route
//! sits behind the server's `policy` layer like every other RPC, so authentication,
//! request size limits (and PublishStream's stand-ins for oversized requests), checks and
//! status counting are the ones every RPC gets.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::stream::{Stream, StreamExt};
use herald_proto::v1;
use prost::Message;
use tonic::body::Body;
use tonic::codec::{Codec, EncodeBody, SingleMessageCompressionOverride};
use tonic::codegen::http;
use tonic::{Request, Response, Status};

use super::service::HeraldService;
use crate::error::BrokerError;

/// The gRPC paths this route answers.
pub(super) const PUBLISH_PATH: &str = "/herald.v1.Herald/Publish";
pub(super) const PUBLISH_STREAM_PATH: &str = "/herald.v1.Herald/PublishStream";
/// The gRPC length prefix: a compression flag byte and a big-endian u32.
const PREFIX_BYTES: usize = 5;
/// A message shorter than this is copied out of its frames into a buffer of its own, as
/// tonic does: a small slice would otherwise keep a whole receive buffer of h2's alive
/// for as long as the publish waits for its commit. Copying a few KiB costs little; the
/// large storage batches the copy matters for are slices of their frames.
const COPY_BELOW_BYTES: usize = 64 * 1024;

/// Answers a unary Publish: decodes the one request message, publishes it, and replies as
/// tonic's unary handler would.
pub(super) async fn publish(
    service: &HeraldService,
    request: http::Request<Body>,
    max_decoding: usize,
    max_encoding: usize,
) -> http::Response<Body> {
    let response = async {
        refuse_compression(&request)?;
        let (parts, body) = request.into_parts();
        let mut messages = Decoded::<v1::PublishRequest>::new(body, max_decoding);
        let message = messages
            .next()
            .await
            .transpose()?
            .ok_or_else(|| Status::internal("Missing request message."))?;
        // tonic reads the body to its end (for the trailers) before calling the service:
        // a second message is decoded and dropped, a broken body refuses the request.
        while messages.next().await.transpose()?.is_some() {}
        let request = Request::from_http(http::Request::from_parts(parts, message));
        let reply = service.publish_unary(request).await?;
        Ok(Response::new(futures::stream::once(std::future::ready(
            Ok(reply),
        ))))
    }
    .await;
    respond(response, max_encoding)
}

/// Answers a PublishStream: its request messages are decoded by [`Decoded`] as they arrive.
pub(super) fn publish_stream(
    service: &HeraldService,
    request: http::Request<Body>,
    max_decoding: usize,
    max_encoding: usize,
) -> http::Response<Body> {
    let response = refuse_compression(&request).and_then(|()| {
        let request = request.map(|body| Decoded::new(body, max_decoding));
        service
            .publish_stream_start(Request::from_http(request))
            .map(Response::new)
    });
    respond(response, max_encoding)
}

/// Herald never advertises request compression, so a compressed request is refused the
/// way Subscribe's route refuses it (tonic refuses an encoding it was not configured for).
fn refuse_compression(request: &http::Request<Body>) -> Result<(), Status> {
    match request.headers().get("grpc-encoding") {
        Some(encoding) if encoding.as_bytes() != b"identity" => {
            Err(BrokerError::CompressionUnsupported {
                encoding: String::from_utf8_lossy(encoding.as_bytes()).into_owned(),
            }
            .into())
        }
        _ => Ok(()),
    }
}

/// The HTTP response for a handler's result, as tonic's server builds it: an error before
/// any reply is a trailers-only response; replies are encoded by tonic's `EncodeBody`,
/// which ends the body with the stream's status in the trailers.
fn respond<M, S>(response: Result<Response<S>, Status>, max_encoding: usize) -> http::Response<Body>
where
    M: Message + Send + 'static,
    S: Stream<Item = Result<M, Status>> + Send + 'static,
{
    let response = match response {
        Ok(response) => response,
        Err(status) => return status.into_http(),
    };
    let (metadata, replies, extensions) = response.into_parts();
    let mut codec = tonic_prost::ProstCodec::<M, v1::PublishRequest>::default();
    let body = EncodeBody::new_server(
        codec.encoder(),
        replies,
        None,
        SingleMessageCompressionOverride::default(),
        Some(max_encoding),
    );
    let mut http = http::Response::new(Body::new(body));
    *http.headers_mut() = metadata.into_headers();
    *http.extensions_mut() = extensions;
    http.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    http
}

/// The request messages of a body, decoded from the frames they arrived in.
///
/// Follows tonic's `Streaming`: the same status for each way a request can be wrong. An
/// error is yielded once, then the stream ends. A body that fails with CANCELLED ends the
/// stream quietly, as in tonic. Memory: `received` holds at most the message being
/// received and the frame it ends in; the message's length was checked against
/// `max_message_bytes` (and by the `policy` layer's limit before that) before any of it
/// is kept.
pub(super) struct Decoded<M> {
    body: Body,
    /// Bytes received and not yet decoded, as slices of their frames.
    received: Rope,
    /// The length of the message being received, once its prefix has been read.
    message_bytes: Option<usize>,
    max_message_bytes: usize,
    /// The stream is over (an error was yielded, or the body ended).
    done: bool,
    _message: PhantomData<fn() -> M>,
}

impl<M> Decoded<M> {
    pub(super) fn new(body: Body, max_message_bytes: usize) -> Self {
        Decoded {
            body,
            received: Rope::default(),
            message_bytes: None,
            max_message_bytes,
            done: false,
            _message: PhantomData,
        }
    }
}

impl<M: Message + Default> Decoded<M> {
    /// The next whole message in `received`, if there is one.
    fn decode_next(&mut self) -> Result<Option<M>, Status> {
        let len = match self.message_bytes {
            Some(len) => len,
            None => {
                if self.received.remaining() < PREFIX_BYTES {
                    return Ok(None);
                }
                let len = read_prefix(&mut self.received, self.max_message_bytes)?;
                self.message_bytes = Some(len);
                len
            }
        };
        if self.received.remaining() < len {
            return Ok(None);
        }
        self.message_bytes = None;
        decode_message(self.received.split_to(len))
    }
}

/// Reads a message's prefix; returns the message's length. The statuses are tonic's.
fn read_prefix(received: &mut Rope, max_message_bytes: usize) -> Result<usize, Status> {
    match received.get_u8() {
        0 => {}
        1 => {
            return Err(Status::internal(
                "protocol error: received message with compressed-flag but no grpc-encoding was specified",
            ));
        }
        flag => {
            return Err(Status::internal(format!(
                "protocol error: received message with invalid compression flag: {flag} (valid flags are 0 and 1), while sending request"
            )));
        }
    }
    let len = received.get_u32() as usize;
    if len > max_message_bytes {
        return Err(Status::out_of_range(format!(
            "Error, decoded message length too large: found {len} bytes, the limit is: {max_message_bytes} bytes"
        )));
    }
    Ok(len)
}

/// Decodes one message from exactly its bytes. A small one is copied into a buffer of its
/// own first (see [`COPY_BELOW_BYTES`]); a large one is decoded from its frames, its
/// `bytes` fields slices of them. A malformed message is INTERNAL with prost's reason, as
/// tonic's prost codec says it.
fn decode_message<M: Message + Default>(mut message: Rope) -> Result<Option<M>, Status> {
    let decoded = if message.remaining() < COPY_BELOW_BYTES {
        let mut own = BytesMut::with_capacity(message.remaining());
        own.put(&mut message);
        M::decode(own.freeze())
    } else {
        M::decode(message)
    };
    decoded
        .map(Some)
        .map_err(|error| Status::internal(error.to_string()))
}

impl<M: Message + Default> Stream for Decoded<M> {
    type Item = Result<M, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.decode_next() {
                Ok(Some(message)) => return Poll::Ready(Some(Ok(message))),
                Ok(None) => {}
                Err(status) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(status)));
                }
            }
            let frame =
                std::task::ready!(http_body::Body::poll_frame(Pin::new(&mut this.body), cx));
            match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.received.push(data),
                    // Trailers end the messages, as in tonic.
                    Err(_trailers) => this.done = true,
                },
                Some(Err(status)) if status.code() == tonic::Code::Cancelled => this.done = true,
                Some(Err(status)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(status)));
                }
                None => {
                    this.done = true;
                    if this.received.has_remaining() || this.message_bytes.is_some() {
                        return Poll::Ready(Some(Err(Status::internal(
                            "Unexpected EOF decoding stream.",
                        ))));
                    }
                }
            }
        }
    }
}

/// Bytes held as the list of frames they arrived in. Reading them as a [`Buf`] copies
/// nothing for `copy_to_bytes` within one frame, which is how prost takes a `bytes` field.
#[derive(Default, Debug)]
pub(super) struct Rope {
    chunks: VecDeque<Bytes>,
    /// The sum of the chunks' lengths.
    len: usize,
}

impl Rope {
    pub(super) fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.len += chunk.len();
            self.chunks.push_back(chunk);
        }
    }

    /// Takes the first `n` bytes (at most `remaining()`), without copying them.
    pub(super) fn split_to(&mut self, n: usize) -> Rope {
        assert!(n <= self.len, "split_to({n}) of {} bytes", self.len);
        let mut front = Rope::default();
        while front.len < n {
            let want = n - front.len;
            let Some(chunk) = self.chunks.front_mut() else {
                unreachable!("the length counts the chunks");
            };
            if chunk.len() <= want {
                front.push(self.chunks.pop_front().unwrap_or_default());
            } else {
                front.push(chunk.split_to(want));
            }
        }
        self.len -= n;
        front
    }
}

impl Buf for Rope {
    fn remaining(&self) -> usize {
        self.len
    }

    fn chunk(&self) -> &[u8] {
        self.chunks.front().map_or(&[], |chunk| chunk)
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.len, "advance({cnt}) past {} bytes", self.len);
        self.len -= cnt;
        while cnt > 0 {
            let Some(chunk) = self.chunks.front_mut() else {
                unreachable!("the length counts the chunks");
            };
            if chunk.len() <= cnt {
                cnt -= chunk.len();
                self.chunks.pop_front();
            } else {
                chunk.advance(cnt);
                cnt = 0;
            }
        }
    }

    fn copy_to_bytes(&mut self, len: usize) -> Bytes {
        if let Some(chunk) = self.chunks.front_mut()
            && chunk.len() >= len
        {
            let bytes = chunk.split_to(len);
            if chunk.is_empty() {
                self.chunks.pop_front();
            }
            self.len -= len;
            return bytes;
        }
        // Across frames: one copy, as tonic makes of every byte.
        assert!(
            len <= self.len,
            "copy_to_bytes({len}) of {} bytes",
            self.len
        );
        let mut bytes = BytesMut::with_capacity(len);
        bytes.put((&mut *self).take(len));
        bytes.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn request(sequence: u64, batch: Vec<u8>) -> v1::PublishStreamRequest {
        v1::PublishStreamRequest {
            sequence,
            publish: Some(v1::PublishRequest {
                topic: "orders".into(),
                partition: Some(3),
                payload: Some(v1::publish_request::Payload::StorageBatch(Bytes::from(
                    batch,
                ))),
                producer: None,
            }),
        }
    }

    fn framed(message: &impl Message) -> Vec<u8> {
        let mut out = vec![0];
        out.extend((message.encoded_len() as u32).to_be_bytes());
        message.encode(&mut out).unwrap();
        out
    }

    fn rope(chunks: &[&[u8]]) -> Rope {
        let mut rope = Rope::default();
        for chunk in chunks {
            rope.push(Bytes::copy_from_slice(chunk));
        }
        rope
    }

    /// Every message `wire` decodes to when it arrives cut at `cuts`, or the first error.
    fn decode_all(wire: &[u8], cuts: &[usize]) -> Result<Vec<v1::PublishStreamRequest>, Status> {
        let mut received = Rope::default();
        let mut at = 0;
        for &cut in cuts.iter().chain(std::iter::once(&wire.len())) {
            let cut = cut.clamp(at, wire.len());
            received.push(Bytes::copy_from_slice(&wire[at..cut]));
            at = cut;
        }
        let mut out = Vec::new();
        while received.has_remaining() {
            if received.remaining() < PREFIX_BYTES {
                return Err(Status::internal("Unexpected EOF decoding stream."));
            }
            let len = read_prefix(&mut received, usize::MAX)?;
            if received.remaining() < len {
                return Err(Status::internal("Unexpected EOF decoding stream."));
            }
            out.extend(decode_message(received.split_to(len))?);
        }
        Ok(out)
    }

    #[test]
    fn a_large_batch_within_one_frame_is_a_slice_of_it() {
        let batch = vec![9u8; 200_000];
        let wire = Bytes::from(framed(&request(7, batch.clone())));
        let mut received = Rope::default();
        received.push(wire.clone());
        let len = read_prefix(&mut received, usize::MAX).unwrap();
        let message: v1::PublishStreamRequest =
            decode_message(received.split_to(len)).unwrap().unwrap();
        let Some(v1::publish_request::Payload::StorageBatch(decoded)) =
            message.publish.unwrap().payload
        else {
            panic!("a storage batch");
        };
        assert_eq!(decoded, batch);
        let frame = wire.as_ptr_range();
        assert!(
            frame.contains(&decoded.as_ptr()),
            "the batch points into the frame it arrived in"
        );
    }

    #[test]
    fn a_field_across_frames_is_copied_whole() {
        let mut rope = rope(&[b"abc", b"defg", b"h"]);
        assert_eq!(rope.copy_to_bytes(2), Bytes::from_static(b"ab"));
        assert_eq!(rope.copy_to_bytes(4), Bytes::from_static(b"cdef"));
        assert_eq!(rope.remaining(), 2);
        let mut rest = rope.split_to(2);
        assert_eq!(rest.copy_to_bytes(2), Bytes::from_static(b"gh"));
        assert!(!rope.has_remaining());
    }

    #[test]
    fn a_bad_prefix_gets_tonics_status() {
        let compressed = decode_all(&[1, 0, 0, 0, 0], &[]).unwrap_err();
        assert_eq!(compressed.code(), tonic::Code::Internal);
        assert!(compressed.message().contains("compressed-flag"));
        let flag = decode_all(&[7, 0, 0, 0, 0], &[]).unwrap_err();
        assert_eq!(flag.code(), tonic::Code::Internal);
        let mut received = rope(&[&[0, 0, 1, 0, 0]]);
        let large = read_prefix(&mut received, 1000).unwrap_err();
        assert_eq!(large.code(), tonic::Code::OutOfRange);
        assert!(large.message().contains("found 65536 bytes"), "{large:?}");
    }

    #[test]
    fn a_malformed_message_is_internal_with_prosts_reason() {
        // Field 2 (publish) claims 100 bytes; two follow.
        let status = decode_all(&[0, 0, 0, 0, 4, 0x12, 100, 1, 2], &[]).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(status.message().contains("buffer underflow"), "{status:?}");
    }

    proptest! {
        #[test]
        fn any_cut_of_valid_requests_decodes_to_the_same_messages(
            sizes in proptest::collection::vec(0usize..150_000, 1..4),
            cuts in proptest::collection::vec(0usize..400_000, 0..12),
        ) {
            let messages: Vec<_> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| request(i as u64, (0..n).map(|b| b as u8).collect()))
                .collect();
            let wire: Vec<u8> = messages.iter().flat_map(framed).collect();
            let mut cuts = cuts;
            cuts.sort_unstable();
            prop_assert_eq!(decode_all(&wire, &cuts).unwrap(), messages);
        }

        #[test]
        fn random_bytes_never_panic(
            wire in proptest::collection::vec(any::<u8>(), 0..300),
            cuts in proptest::collection::vec(0usize..300, 0..6),
        ) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            let _ = decode_all(&wire, &cuts);
        }
    }
}
