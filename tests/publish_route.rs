//! Publish and PublishStream as the broker's own route decodes them (`publish_route`):
//! requests whose messages are cut into HTTP/2 DATA frames in every way a client may cut
//! them (a batch across several frames, many messages in one frame, messages split
//! across frames) are published as sent; bad framing and malformed messages get the same
//! status as an RPC tonic decodes; size limits still hold.
//!
//! A bare HTTP/2 client (h2) sends each chunk given as its own DATA frame, which a gRPC
//! client does not let a test choose.

mod common;

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use herald_broker::config::Config;
use herald_broker::storage::{BatchBuilder, Record};
use herald_proto::v1::{self, publish_request::Payload, publish_stream_response::Outcome};
use prost::Message;
use tonic::Code;

/// A valid storage batch of `n` records with `value_len`-byte values, `tag` in each value.
fn storage_batch(n: usize, value_len: usize, tag: u8) -> Bytes {
    let value = vec![tag; value_len];
    let mut builder = BatchBuilder::default();
    for i in 0..n {
        builder.push(&Record {
            timestamp: 1_700_000_000_000 + i as i64,
            key: None,
            value: &value,
            headers: &[],
        });
    }
    Bytes::from(builder.finish())
}

fn publish_request(topic: &str, batch: Bytes) -> v1::PublishRequest {
    v1::PublishRequest {
        topic: topic.into(),
        partition: Some(0),
        payload: Some(Payload::StorageBatch(batch)),
        producer: None,
    }
}

/// `message` with its gRPC prefix.
fn framed(message: &impl Message) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(0);
    out.put_u32(message.encoded_len() as u32);
    message.encode(&mut out).unwrap();
    out.freeze()
}

/// `wire` cut at `cuts` (offsets, ascending).
fn cut(wire: &[u8], cuts: &[usize]) -> Vec<Bytes> {
    let mut chunks = Vec::new();
    let mut at = 0;
    for &c in cuts.iter().chain(std::iter::once(&wire.len())) {
        chunks.push(Bytes::copy_from_slice(&wire[at..c]));
        at = c;
    }
    chunks
}

/// What the broker answered a raw call: the reply messages' bytes and the gRPC status.
struct Answer {
    messages: Vec<Bytes>,
    code: Code,
    message: String,
}

/// Calls `path` on `broker` over a fresh HTTP/2 connection, sending each of `chunks` as
/// its own DATA frame(s), then ends the request.
async fn raw_call(
    broker: &herald_broker::server::Broker,
    path: &str,
    chunks: Vec<Bytes>,
) -> Answer {
    let tcp = tokio::net::TcpStream::connect(broker.addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(8 * 1024 * 1024)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut send = send.ready().await.unwrap();
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}{path}", broker.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut stream) = send.send_request(request, false).unwrap();
    // The broker may refuse (and end the stream) before the whole body is sent: a refusal
    // does not wait for the rest, so a send to the ended stream is not an error here; the
    // response below carries the status either way.
    for chunk in chunks {
        if stream.send_data(chunk, false).is_err() {
            break;
        }
    }
    let _ = stream.send_data(Bytes::new(), true);
    let response = response.await.unwrap();
    let (parts, mut body) = response.into_parts();
    // A trailers-only response carries the status in its headers.
    let status_of = |headers: &http::HeaderMap| {
        let code = headers
            .get("grpc-status")
            .map(|v| Code::from_bytes(v.as_bytes()));
        let message = headers
            .get("grpc-message")
            .map(|v| percent_decode(v.to_str().unwrap_or_default()))
            .unwrap_or_default();
        code.map(|code| (code, message))
    };
    if let Some((code, message)) = status_of(&parts.headers) {
        return Answer {
            messages: Vec::new(),
            code,
            message,
        };
    }
    let mut data = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.unwrap().expect("trailers");
    let (code, message) = status_of(&trailers).expect("a grpc-status trailer");
    let mut messages = Vec::new();
    let mut data = data.freeze();
    while !data.is_empty() {
        let len = u32::from_be_bytes(data[1..5].try_into().unwrap()) as usize;
        messages.push(data.slice(5..5 + len));
        data = data.slice(5 + len..);
    }
    Answer {
        messages,
        code,
        message,
    }
}

/// gRPC's percent-encoding of `grpc-message`, undone.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The values of every record of partition 0 of `topic`, in offset order.
async fn stored_values(broker: &herald_broker::server::Broker, topic: &str) -> Vec<Bytes> {
    let mut c = client(broker).await;
    let mut out = Vec::new();
    let mut stream = c
        .fetch(v1::FetchRequest {
            topic: topic.into(),
            partition: 0,
            start: Some(v1::Position {
                kind: Some(v1::position::Kind::Offset(0)),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    while let Some(response) = stream.message().await.unwrap() {
        out.extend(response.records.into_iter().map(|r| r.value));
    }
    out
}

fn config(dir: &std::path::Path) -> Config {
    Config {
        max_batch_bytes: 1024 * 1024,
        ..test_config(dir)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_cut_into_many_frames_is_stored_as_sent() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(config(dir.path())).await;
    create_topic(&mut client(&broker).await, "cut", 1).await;
    let batch = storage_batch(300, 1000, b'a');
    let wire = framed(&publish_request("cut", batch));
    // The prefix alone, the prefix split, the batch split in its middle, a one-byte frame.
    for cuts in [
        vec![5],
        vec![2, 3, 17],
        vec![100, 150_000, 150_001, 200_000],
        vec![wire.len() - 1],
    ] {
        let answer = raw_call(&broker, "/herald.v1.Herald/Publish", cut(&wire, &cuts)).await;
        assert_eq!(answer.code, Code::Ok, "{cuts:?}: {}", answer.message);
        let reply = v1::PublishResponse::decode(answer.messages[0].clone()).unwrap();
        assert_eq!(reply.last_offset - reply.base_offset + 1, 300);
    }
    let values = stored_values(&broker, "cut").await;
    assert_eq!(values.len(), 4 * 300);
    assert!(
        values
            .iter()
            .all(|v| v.len() == 1000 && v.iter().all(|&b| b == b'a'))
    );
    stop(broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_stream_answers_every_request_however_the_frames_cut_them() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(config(dir.path())).await;
    create_topic(&mut client(&broker).await, "stream", 1).await;
    // Small requests (many in one frame) and large ones (split across frames).
    let requests: Vec<v1::PublishStreamRequest> = (0..40u64)
        .map(|i| v1::PublishStreamRequest {
            sequence: 1000 + i,
            publish: Some(publish_request(
                "stream",
                if i % 10 == 9 {
                    storage_batch(100, 1000, i as u8)
                } else {
                    storage_batch(2, 10, i as u8)
                },
            )),
        })
        .collect();
    let wire: Vec<u8> = requests.iter().flat_map(|r| framed(r).to_vec()).collect();
    // Frames of 7 bytes at the start, then every 50 001 bytes (across the large
    // requests), then the rest in one.
    let mut cuts: Vec<usize> = (1..30).map(|i| i * 7).collect();
    cuts.extend(
        (1..)
            .map(|i| 210 + i * 50_001)
            .take_while(|&c| c < wire.len()),
    );
    let answer = raw_call(
        &broker,
        "/herald.v1.Herald/PublishStream",
        cut(&wire, &cuts),
    )
    .await;
    assert_eq!(answer.code, Code::Ok, "{}", answer.message);
    let mut sequences: Vec<u64> = answer
        .messages
        .iter()
        .map(|m| {
            let reply = v1::PublishStreamResponse::decode(m.clone()).unwrap();
            assert!(
                matches!(reply.outcome, Some(Outcome::Published(_))),
                "{reply:?}"
            );
            reply.sequence
        })
        .collect();
    sequences.sort_unstable();
    assert_eq!(sequences, (1000..1040).collect::<Vec<_>>());
    // Stored in the order sent, each record tagged with its request's index.
    let tags: Vec<u8> = stored_values(&broker, "stream")
        .await
        .iter()
        .map(|v| v[0])
        .collect();
    let expected: Vec<u8> = (0..40u8)
        .flat_map(|i| std::iter::repeat_n(i, if i % 10 == 9 { 100 } else { 2 }))
        .collect();
    assert_eq!(tags, expected);
    stop(broker).await;
}

/// Bad framing and malformed messages get the status tonic gives an RPC it decodes
/// itself: CreateTopic's request is decoded by tonic, Publish's by the route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_status_tonic_gives() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(config(dir.path())).await;
    let malformed = |body: &[u8]| {
        let mut wire = vec![0];
        wire.extend((body.len() as u32).to_be_bytes());
        wire.extend_from_slice(body);
        Bytes::from(wire)
    };
    let cases: Vec<(&str, Vec<Bytes>)> = vec![
        // Wire type 7 does not exist.
        ("invalid wire type", vec![malformed(&[0x0f])]),
        // A length-delimited field longer than the message.
        ("field past the end", vec![malformed(&[0x0a, 100, 1, 2])]),
        // The prefix announces 100 bytes; the body ends after 3.
        (
            "truncated body",
            vec![Bytes::from_static(&[0, 0, 0, 0, 100, 1, 2, 3])],
        ),
        // A compressed message, without grpc-encoding.
        (
            "compressed flag",
            vec![Bytes::from_static(&[1, 0, 0, 0, 0])],
        ),
        ("invalid flag", vec![Bytes::from_static(&[9, 0, 0, 0, 0])]),
        ("no message", vec![]),
    ];
    for (what, chunks) in cases {
        let tonics = raw_call(&broker, "/herald.v1.Herald/CreateTopic", chunks.clone()).await;
        for path in [
            "/herald.v1.Herald/Publish",
            "/herald.v1.Herald/PublishStream",
        ] {
            let ours = raw_call(&broker, path, chunks.clone()).await;
            if what == "no message" && path.ends_with("PublishStream") {
                // An empty stream is a stream of no publishes.
                assert_eq!(ours.code, Code::Ok, "{what}");
                continue;
            }
            assert_ne!(tonics.code, Code::Ok, "{what}");
            assert_eq!(ours.code, tonics.code, "{what} on {path}: {}", ours.message);
            // prost names the message type and field it failed in, which differ by RPC.
            let reason = |m: &str| {
                const DECODE: &str = "failed to decode Protobuf message";
                if m.starts_with(DECODE) {
                    DECODE.to_owned()
                } else {
                    m.to_owned()
                }
            };
            assert_eq!(
                reason(&ours.message),
                reason(&tonics.message),
                "{what} on {path}"
            );
        }
    }
    stop(broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_publish_is_refused_before_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(config(dir.path())).await;
    create_topic(&mut client(&broker).await, "big", 1).await;
    // Above max_batch_bytes + 64 KiB, cut into frames.
    let batch = storage_batch(1200, 1000, b'b');
    let wire = framed(&publish_request("big", batch.clone()));
    let cuts: Vec<usize> = (1..)
        .map(|i| i * 100_000)
        .take_while(|&c| c < wire.len())
        .collect();
    let answer = raw_call(&broker, "/herald.v1.Herald/Publish", cut(&wire, &cuts)).await;
    assert_eq!(answer.code, Code::ResourceExhausted, "{}", answer.message);
    // On a stream the oversized request alone is refused; the next one is published.
    let stream_wire: Vec<u8> = [
        framed(&v1::PublishStreamRequest {
            sequence: 1,
            publish: Some(publish_request("big", batch)),
        }),
        framed(&v1::PublishStreamRequest {
            sequence: 2,
            publish: Some(publish_request("big", storage_batch(3, 10, b'c'))),
        }),
    ]
    .concat();
    let cuts: Vec<usize> = (1..)
        .map(|i| i * 100_000)
        .take_while(|&c| c < stream_wire.len())
        .collect();
    let answer = raw_call(
        &broker,
        "/herald.v1.Herald/PublishStream",
        cut(&stream_wire, &cuts),
    )
    .await;
    assert_eq!(answer.code, Code::Ok, "{}", answer.message);
    let mut outcomes: Vec<(u64, Option<Outcome>)> = answer
        .messages
        .iter()
        .map(|m| {
            let reply = v1::PublishStreamResponse::decode(m.clone()).unwrap();
            (reply.sequence, reply.outcome)
        })
        .collect();
    outcomes.sort_by_key(|(sequence, _)| *sequence);
    assert!(
        matches!(&outcomes[0], (1, Some(Outcome::Error(e))) if e.code == Code::ResourceExhausted as i32),
        "{outcomes:?}"
    );
    assert!(
        matches!(&outcomes[1], (2, Some(Outcome::Published(_)))),
        "{outcomes:?}"
    );
    assert_eq!(stored_values(&broker, "big").await.len(), 3);
    stop(broker).await;
}
