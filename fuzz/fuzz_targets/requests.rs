//! Fuzzes the broker's request handlers: arbitrary protobuf requests, over real gRPC on
//! loopback, to a real broker running in this process on a temporary data directory.
//!
//! An input is a script of calls. Each call picks an RPC (every admin and group RPC,
//! Publish with records or a storage batch, PublishStream, Fetch, Subscribe) and decodes
//! its request message from the next bytes of the input with prost, so the fields are
//! whatever the fuzzer makes them (a message that does not decode becomes the default
//! one). Short topic and group names are mapped onto a few names that exist, so most
//! calls get past the lookup. Storage batches are either raw bytes or a real batch with
//! one byte changed, its CRC fixed or not. Subscribe and PublishStream take a sequence
//! of requests, interleaved with reading the responses.
//!
//! What must hold: every call ends with a reply or a status within [`CALL_TIMEOUT`]
//! (never a hang), no status is INTERNAL or UNKNOWN (those mean a handler failed in a way
//! nobody wrote a message for), a PublishStream answers every request it accepted, and
//! the broker never panics: libFuzzer's panic hook turns a panic on any broker thread
//! into a crash of this process. Each input starts from the fixed topics and no groups
//! (see [`reset`]).
//!
//! `cargo +nightly fuzz run requests -- -max_total_time=120` (from the repository root).

#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use arbitrary::Unstructured;
use bytes::Bytes;
use herald_broker::config::{Config, FsyncSetting};
use herald_broker::server::Broker;
use herald_broker::storage::batch::{BatchBuilder, Record};
use herald_proto::HeraldClient;
use herald_proto::v1;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// Longest a call may take before the input counts as a hang.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a streaming call waits for its next response before moving on (an idle
/// Subscribe or a following Fetch legitimately sends nothing).
const STREAM_WAIT: Duration = Duration::from_millis(5);
/// Calls per input, and requests per streaming call: bounds one input's run time.
const CALLS_MAX: usize = 24;
const STREAM_REQUESTS_MAX: usize = 16;
/// The topics every input starts with, and the names short fuzzed names map onto. The
/// third is never created, so lookups of a missing topic are exercised too.
const TOPICS: [(&str, u32); 3] = [("t0", 2), ("t1", 1), ("missing", 0)];
const GROUPS: [&str; 3] = ["g0", "g1", "g2"];
/// Partition counts and per-topic segment sizes above these are cut down by the harness,
/// only to keep the fuzzing machine's disk and threads in check (values below them,
/// invalid ones included, reach the broker as they are).
const SEGMENT_BYTES_MAX: u64 = 1 << 20;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    client: HeraldClient<Channel>,
    // Kept alive for the whole process: the broker serves from them.
    _broker: Broker,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let dir = tempfile::tempdir().expect("a temp dir");
        let config = Config {
            data_dir: dir.path().to_path_buf(),
            listen: "127.0.0.1:0".parse().unwrap(),
            metrics_listen: "127.0.0.1:0".parse().unwrap(),
            fsync: FsyncSetting::Never,
            segment_bytes: SEGMENT_BYTES_MAX,
            max_batch_bytes: 1 << 20,
            max_message_bytes: 1 << 19,
            max_topics: 8,
            max_partitions: 16,
            ..Config::default()
        };
        let (broker, client) = runtime.block_on(async {
            let broker = Broker::start(config, false)
                .await
                .expect("the broker starts");
            let client = HeraldClient::connect(format!("http://{}", broker.addr))
                .await
                .expect("the client connects");
            (broker, client)
        });
        Fixture {
            runtime,
            client,
            _broker: broker,
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let fixture = fixture();
    let client = fixture.client.clone();
    fixture.runtime.block_on(async move {
        let mut client = client;
        reset(&mut client).await;
        let mut u = Unstructured::new(data);
        for _ in 0..CALLS_MAX {
            if u.is_empty() {
                break;
            }
            let Ok(()) = call(&mut client, &mut u).await else {
                break;
            };
        }
        // Whatever the script did, the broker still answers.
        reply(
            "ListTopics after the script",
            client.list_topics(v1::ListTopicsRequest {}),
        )
        .await
        .expect("the broker answers after the script");
    });
});

/// Brings the broker back to the fixed topics with no groups: deletes every group and
/// every other topic, and creates fixed topics that a script deleted. (Records published
/// to the fixed topics stay: deleting and creating them for every input would cost more
/// than the calls themselves.)
async fn reset(client: &mut HeraldClient<Channel>) {
    let groups = reply(
        "ListGroups",
        client.list_groups(v1::ListGroupsRequest { topic: None }),
    )
    .await
    .expect("ListGroups");
    for g in groups.groups {
        let _ = reply(
            "DeleteGroup",
            client.delete_group(v1::DeleteGroupRequest {
                topic: g.topic,
                group: g.group,
            }),
        )
        .await;
    }
    let topics = reply("ListTopics", client.list_topics(v1::ListTopicsRequest {}))
        .await
        .expect("ListTopics");
    for (name, partitions) in TOPICS {
        let existing = topics.topics.iter().find(|t| t.name == name);
        if partitions > 0 && existing.is_some_and(|t| t.partition_count == partitions) {
            continue;
        }
        if existing.is_some() {
            let _ = reply(
                "DeleteTopic",
                client.delete_topic(v1::DeleteTopicRequest { name: name.into() }),
            )
            .await;
        }
        if partitions > 0 {
            reply(
                "CreateTopic",
                client.create_topic(v1::CreateTopicRequest {
                    name: name.into(),
                    partitions,
                    config: None,
                    replication_factor: None,
                }),
            )
            .await
            .expect("the fixed topics are created");
        }
    }
    for topic in topics.topics {
        if !TOPICS.iter().any(|(name, _)| *name == topic.name) {
            let _ = reply(
                "DeleteTopic",
                client.delete_topic(v1::DeleteTopicRequest { name: topic.name }),
            )
            .await;
        }
    }
}

/// Awaits a unary call: its reply, or its status (never INTERNAL or UNKNOWN), within
/// [`CALL_TIMEOUT`].
async fn reply<T>(
    what: &str,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, tonic::Status> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Err(_) => panic!("{what}: no reply within {CALL_TIMEOUT:?}"),
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => {
            check_status(what, &status);
            Err(status)
        }
    }
}

fn check_status(what: &str, status: &tonic::Status) {
    assert!(
        !matches!(status.code(), tonic::Code::Internal | tonic::Code::Unknown),
        "{what}: {status:?}"
    );
}

/// The next request message of type `M`: a length, then that many bytes decoded with
/// prost (the default message if they do not decode).
fn message<M: Message + Default>(u: &mut Unstructured<'_>) -> arbitrary::Result<M> {
    let len = u.int_in_range(0..=255u16)?;
    let bytes = u.bytes(usize::from(len).min(u.len()))?;
    Ok(M::decode(bytes).unwrap_or_default())
}

/// Short names become names that exist (or are known to be missing); longer ones stay.
fn topic(name: &mut String) {
    if name.len() <= 1 {
        let i = name.bytes().next().map_or(0, usize::from) % TOPICS.len();
        *name = TOPICS[i].0.to_string();
    }
}

fn group(name: &mut String) {
    if name.len() <= 1 {
        let i = name.bytes().next().map_or(0, usize::from) % GROUPS.len();
        *name = GROUPS[i].to_string();
    }
}

fn topic_config(config: &mut Option<v1::TopicConfig>) {
    if let Some(config) = config
        && let Some(bytes) = &mut config.segment_bytes
        && *bytes > SEGMENT_BYTES_MAX
    {
        *bytes %= SEGMENT_BYTES_MAX;
    }
}

fn publish_request(u: &mut Unstructured<'_>) -> arbitrary::Result<v1::PublishRequest> {
    let mut request: v1::PublishRequest = message(u)?;
    topic(&mut request.topic);
    // One publish in three carries a real storage batch with one byte changed, half of
    // them with the CRC fixed, so the batch checks past the CRC are reached.
    if u.ratio(1, 3)? {
        let records: v1::Records = message(u)?;
        let mut builder = BatchBuilder::default();
        for record in records.records.iter().take(64) {
            let headers: Vec<(&str, &[u8])> = record
                .headers
                .iter()
                .map(|h| (h.key.as_str(), &h.value[..]))
                .collect();
            builder.push(&Record {
                timestamp: record.timestamp_ms,
                key: record.key.as_deref(),
                value: &record.value,
                headers: &headers,
            });
        }
        if !builder.is_empty() {
            let mut batch = builder.finish();
            let at = usize::from(u.arbitrary::<u16>()?) % batch.len();
            batch[at] ^= u.arbitrary::<u8>()?;
            if u.arbitrary::<bool>()? && batch.len() >= 16 {
                let crc = crc32c::crc32c(&batch[16..]);
                batch[12..16].copy_from_slice(&crc.to_le_bytes());
            }
            request.payload = Some(v1::publish_request::Payload::StorageBatch(Bytes::from(
                batch,
            )));
        }
    }
    Ok(request)
}

/// One call of the script.
async fn call(
    client: &mut HeraldClient<Channel>,
    u: &mut Unstructured<'_>,
) -> arbitrary::Result<()> {
    match u.int_in_range(0..=18u8)? {
        0 => {
            let mut r: v1::CreateTopicRequest = message(u)?;
            topic(&mut r.name);
            topic_config(&mut r.config);
            let _ = reply("CreateTopic", client.create_topic(r)).await;
        }
        1 => {
            let mut r: v1::DeleteTopicRequest = message(u)?;
            topic(&mut r.name);
            let _ = reply("DeleteTopic", client.delete_topic(r)).await;
        }
        2 => {
            let _ = reply("ListTopics", client.list_topics(v1::ListTopicsRequest {})).await;
        }
        3 => {
            let mut r: v1::DescribeTopicRequest = message(u)?;
            topic(&mut r.name);
            let _ = reply("DescribeTopic", client.describe_topic(r)).await;
        }
        4 | 5 => {
            let r = publish_request(u)?;
            let _ = reply("Publish", client.publish(r)).await;
        }
        6 => publish_stream(client, u).await?,
        7 => fetch(client, u).await?,
        8 => {
            let mut r: v1::CreateGroupRequest = message(u)?;
            topic(&mut r.topic);
            group(&mut r.group);
            let _ = reply("CreateGroup", client.create_group(r)).await;
        }
        9 => {
            let mut r: v1::UpdateGroupRequest = message(u)?;
            topic(&mut r.topic);
            group(&mut r.group);
            let _ = reply("UpdateGroup", client.update_group(r)).await;
        }
        10 => {
            let mut r: v1::DeleteGroupRequest = message(u)?;
            topic(&mut r.topic);
            group(&mut r.group);
            let _ = reply("DeleteGroup", client.delete_group(r)).await;
        }
        11 => {
            let mut r: v1::DescribeGroupRequest = message(u)?;
            topic(&mut r.topic);
            group(&mut r.group);
            let _ = reply("DescribeGroup", client.describe_group(r)).await;
        }
        12 => {
            let mut r: v1::ListGroupsRequest = message(u)?;
            if let Some(name) = &mut r.topic {
                topic(name);
            }
            let _ = reply("ListGroups", client.list_groups(r)).await;
        }
        13 => {
            let mut r: v1::SeekRequest = message(u)?;
            topic(&mut r.topic);
            group(&mut r.group);
            let _ = reply("Seek", client.seek(r)).await;
        }
        14 => {
            let mut r: v1::ListPendingRequest = message(u)?;
            topic(&mut r.topic);
            group(&mut r.group);
            let _ = reply("ListPending", client.list_pending(r)).await;
        }
        15 => {
            let mut r: v1::RedriveRequest = message(u)?;
            topic(&mut r.topic);
            group(&mut r.group);
            let _ = reply("Redrive", client.redrive(r)).await;
        }
        16 => {
            let mut r: v1::AlterTopicRequest = message(u)?;
            topic(&mut r.name);
            // A few partitions at most (0 and fewer than the topic has are refused):
            // thousands would make every later call of the run slow.
            if let Some(partitions) = &mut r.partitions {
                *partitions %= 8;
            }
            let _ = reply("AlterTopic", client.alter_topic(r)).await;
        }
        _ => subscribe(client, u).await?,
    }
    Ok(())
}

/// PublishStream: a few requests, then half-close; every accepted request is answered.
async fn publish_stream(
    client: &mut HeraldClient<Channel>,
    u: &mut Unstructured<'_>,
) -> arbitrary::Result<()> {
    let count = u.int_in_range(0..=STREAM_REQUESTS_MAX)?;
    let mut requests = Vec::with_capacity(count);
    for _ in 0..count {
        let sequence = u.arbitrary::<u64>()?;
        let publish = if u.ratio(1, 8)? {
            None
        } else {
            Some(publish_request(u)?)
        };
        requests.push(v1::PublishStreamRequest { sequence, publish });
    }
    let sent = requests.len();
    let run = async {
        let mut stream = match client.publish_stream(tokio_stream::iter(requests)).await {
            Ok(stream) => stream.into_inner(),
            Err(status) => return check_status("PublishStream", &status),
        };
        let mut replies = 0;
        loop {
            match stream.message().await {
                Ok(Some(_)) => replies += 1,
                Ok(None) => {
                    assert_eq!(
                        replies, sent,
                        "PublishStream ended OK without answering every request"
                    );
                    return;
                }
                Err(status) => return check_status("PublishStream", &status),
            }
        }
    };
    tokio::time::timeout(CALL_TIMEOUT, run)
        .await
        .unwrap_or_else(|_| panic!("PublishStream: not done within {CALL_TIMEOUT:?}"));
    Ok(())
}

/// Fetch: reads a few responses of the stream, then drops it.
async fn fetch(
    client: &mut HeraldClient<Channel>,
    u: &mut Unstructured<'_>,
) -> arbitrary::Result<()> {
    let mut r: v1::FetchRequest = message(u)?;
    topic(&mut r.topic);
    let reads = u.int_in_range(1..=4u8)?;
    let mut stream = match reply("Fetch", client.fetch(r)).await {
        Ok(stream) => stream,
        Err(_) => return Ok(()),
    };
    for _ in 0..reads {
        match tokio::time::timeout(STREAM_WAIT, stream.message()).await {
            Err(_) | Ok(Ok(None)) => break,
            Ok(Ok(Some(_))) => {}
            Ok(Err(status)) => {
                check_status("Fetch", &status);
                break;
            }
        }
    }
    Ok(())
}

/// Subscribe: a Join (usually), then acks, nacks, extends and credit (some with ack ids
/// the broker handed out, some forged), interleaved with reading responses.
async fn subscribe(
    client: &mut HeraldClient<Channel>,
    u: &mut Unstructured<'_>,
) -> arbitrary::Result<()> {
    use v1::subscribe_request::Request;
    let (tx, rx) = mpsc::channel(STREAM_REQUESTS_MAX + 1);
    let first = if u.ratio(7, 8)? {
        let mut join: v1::Join = message(u)?;
        topic(&mut join.topic);
        group(&mut join.group);
        v1::SubscribeRequest {
            request: Some(Request::Join(join)),
        }
    } else {
        message(u)?
    };
    tx.send(first).await.expect("the channel has room");
    let mut stream = match reply("Subscribe", client.subscribe(ReceiverStream::new(rx))).await {
        Ok(stream) => stream,
        Err(_) => return Ok(()),
    };
    let mut ack_ids: Vec<Bytes> = Vec::new();
    let mut runs: Vec<v1::AckRange> = Vec::new();
    let steps = u.int_in_range(0..=STREAM_REQUESTS_MAX)?;
    for _ in 0..steps {
        // Read what has come, remembering ack ids and runs to settle.
        match tokio::time::timeout(STREAM_WAIT, stream.message()).await {
            Err(_) => {}
            Ok(Ok(Some(response))) => {
                if let Some(v1::subscribe_response::Response::Deliveries(d)) = response.response {
                    ack_ids.extend(d.deliveries.into_iter().map(|d| d.ack_id));
                    runs.extend(d.runs.into_iter().map(|r| v1::AckRange {
                        partition: r.partition,
                        first_offset: r.first_offset,
                        count: r.count,
                        first_delivery: r.first_delivery,
                    }));
                }
            }
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(status)) => {
                check_status("Subscribe", &status);
                return Ok(());
            }
        }
        let request = match u.int_in_range(0..=5u8)? {
            // Settle what was delivered, by id or range.
            0 if !ack_ids.is_empty() || !runs.is_empty() => Request::Ack(v1::Ack {
                ack_ids: std::mem::take(&mut ack_ids),
                ranges: std::mem::take(&mut runs),
            }),
            1 if !ack_ids.is_empty() => Request::Nack(v1::Nack {
                ack_id: ack_ids.swap_remove(0),
                delay_ms: Some(u.int_in_range(0..=50)?),
                reason: "fuzz".into(),
                range: None,
            }),
            2 if !runs.is_empty() => Request::Nack(v1::Nack {
                ack_id: Bytes::new(),
                delay_ms: None,
                reason: "fuzz".into(),
                range: Some(runs.swap_remove(0)),
            }),
            3 if !ack_ids.is_empty() => Request::Extend(v1::Extend {
                ack_ids: ack_ids.clone(),
                extra_ms: u.arbitrary()?,
                ranges: runs.clone(),
            }),
            // Anything at all, a second Join included.
            _ => match message::<v1::SubscribeRequest>(u)?.request {
                Some(request) => request,
                None => continue,
            },
        };
        // try_send: a broker that stops reading must not hang the harness here.
        if tx
            .try_send(v1::SubscribeRequest {
                request: Some(request),
            })
            .is_err()
        {
            return Ok(());
        }
    }
    Ok(())
}
