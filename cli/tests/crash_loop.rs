//! The kill -9 crash loop: the real `herald` binary under keyed publishes and two
//! consumer groups (acking, sometimes nacking, members leaving and joining) is SIGKILLed
//! at random moments and restarted on the same data directory, again and again. After
//! every restart a checker reads every partition back with Fetch and holds the broker to
//! its promises:
//!
//! - every acknowledged record is at the offset it was acknowledged with, byte for byte,
//!   under every fsync policy (cycles mix `always`, `interval` and `never`): a process
//!   crash leaves the page cache intact, so even an unflushed acknowledged record stays;
//!   only publishes that were in flight at the kill may be missing;
//! - offsets are dense, every stored record is one that was sent, each publish is stored
//!   whole or not at all, no key's records are reordered, and what was read back after
//!   one restart is unchanged after the next;
//! - every delivery a consumer got carried the bytes the log holds at that offset;
//! - no line of the broker's output says "panicked".
//!
//! After the last restart both groups must drain: consuming sees every record of the log
//! at least once and the group's lag reaches 0, never stalling for [`DRAIN_STALL`] and
//! within [`DRAIN_TIMEOUT`].
//!
//! Seeded: `HERALD_CRASH_SEED` fixes the seed (random otherwise, printed either way) and
//! `HERALD_CRASH_CYCLES` the number of kills ([`DEFAULT_CYCLES`] otherwise). Timing still
//! varies between runs of one seed, so a seed narrows a failure down rather than replaying
//! it exactly. A long run:
//!
//! ```text
//! HERALD_CRASH_CYCLES=300 cargo test -p herald-cli --test crash_loop -- --nocapture
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_broker::storage::batch::Records;
use herald_proto::HeraldClient;
use herald_proto::v1;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

mod common;

use common::{Server, TIMEOUT, assert_no_panic};

/// Kills per run when `HERALD_CRASH_CYCLES` is unset: enough to cross segment rolls and
/// group snapshots several times while a debug build stays well under 90 s.
const DEFAULT_CYCLES: u32 = 20;
const TOPIC: &str = "crash";
const PARTITIONS: u32 = 3;
/// The broker's config file: small segments (and batches to fit), so that the load of one
/// cycle rolls several of them and kills land around rolls and segment preparation too.
const CONFIG: &str = "segment_bytes = 131072\nmax_batch_bytes = 65536\nmax_message_bytes = 16384\n";
const PRODUCERS: u32 = 3;
/// Keys per producer; a key belongs to one producer, so its order in the log is the
/// order that producer published in.
const KEYS_PER_PRODUCER: u32 = 4;
/// Publishes the pipelining producer keeps in flight on its PublishStream.
const PIPELINE: usize = 4;
/// Records per publish, at most.
const BATCH_MAX: u32 = 4;
const CONSUMERS_PER_GROUP: u32 = 2;
/// One in this many deliveries is nacked (while the cycles run; the drain acks all).
const NACK_ONE_IN: u64 = 8;
/// A consumer session that leaves on its own takes at least this many deliveries first,
/// so that leaving and joining stays bounded by the deliveries the load produces.
const LEAVE_AFTER_MIN: u64 = 20;
/// The longest a cycle's load runs before the SIGKILL.
const LOAD_MS_MAX: u64 = 1_500;
/// The drain fails if the groups neither deliver nor commit anything for this long: a
/// group that has records to give and sends nothing is stuck (no ack deadline here is
/// longer than 5 s).
const DRAIN_STALL: Duration = Duration::from_secs(15);
/// The drain fails past this however it progresses. A long run (hundreds of cycles)
/// leaves tens of thousands of records behind a per-key group, which a debug build on a
/// busy 2-core machine delivers at a few thousand per second.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(180);
/// Every gRPC call of the checker and of the consumers' receive loops is bounded by this.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Outgoing acks buffered per consumer stream; a full buffer pauses the consumer.
const ACK_QUEUE: usize = 256;

/// The two groups: one with per-key ordering and single deliveries, one without
/// ordering and with batched deliveries (runs acked and nacked as ranges).
const GROUPS: [GroupKind; 2] = [
    GroupKind {
        name: "by-key",
        ordering: v1::OrderingMode::Key,
        batched: false,
    },
    GroupKind {
        name: "runs",
        ordering: v1::OrderingMode::None,
        batched: true,
    },
];

#[derive(Clone, Copy)]
struct GroupKind {
    name: &'static str,
    ordering: v1::OrderingMode,
    batched: bool,
}

/// splitmix64: small, seedable and good enough to pick sizes and moments.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The fsync policy a cycle's broker runs with.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fsync {
    Always,
    Interval,
    Never,
}

impl Fsync {
    /// `herald serve`'s arguments for this policy, with the config file at `config`.
    fn args(self, config: &str) -> Vec<&str> {
        let mut args = vec!["--config", config];
        args.extend_from_slice(match self {
            Fsync::Always => &["--fsync", "always"][..],
            Fsync::Interval => &["--fsync", "interval", "--fsync-interval-ms", "50"],
            Fsync::Never => &["--fsync", "never"],
        });
        args
    }
}

/// Who sent a record: producer, publish sequence number, index in the publish and the
/// publish's record count, all spelled out in the value so the checker can tell any
/// stored record's origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct RecordId {
    producer: u32,
    seq: u32,
    index: u32,
    count: u32,
}

impl RecordId {
    fn parse(value: &[u8]) -> Option<RecordId> {
        let text = std::str::from_utf8(value).ok()?;
        let mut parts = text.split('-');
        let mut field =
            |prefix: char| -> Option<u32> { parts.next()?.strip_prefix(prefix)?.parse().ok() };
        Some(RecordId {
            producer: field('p')?,
            seq: field('s')?,
            index: field('r')?,
            count: field('n')?,
        })
    }
}

/// A record as the checker compares it: exactly what Fetch returns of it.
#[derive(Clone, Debug, PartialEq)]
struct Stored {
    key: Option<Bytes>,
    value: Bytes,
    headers: Vec<v1::Header>,
}

impl From<&v1::Record> for Stored {
    fn from(r: &v1::Record) -> Self {
        Stored {
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r.headers.clone(),
        }
    }
}

impl From<v1::FetchedRecord> for Stored {
    fn from(r: v1::FetchedRecord) -> Self {
        Stored {
            key: r.key,
            value: r.value,
            headers: r.headers,
        }
    }
}

/// An acknowledged publish.
struct Ack {
    partition: u32,
    base_offset: u64,
    records: Vec<Stored>,
}

/// What one cycle's producers and consumers saw, shared with the test thread.
#[derive(Default)]
struct CycleLog {
    acks: Vec<Ack>,
    /// Every delivery: (group index, partition, offset, value).
    deliveries: Vec<(usize, u32, u64, Bytes)>,
    /// Errors that cannot be blamed on the kill (they came before it).
    failures: Vec<String>,
    /// Consumer sessions that left on their own (and were replaced).
    leaves: u32,
}

/// What the checker knows between cycles.
struct Model {
    /// Per partition, the log as read back and verified after the last restart.
    logs: Vec<Vec<Stored>>,
    /// Every publish ever attempted, acknowledged or not, by (producer, seq).
    sent: HashMap<(u32, u32), Vec<Stored>>,
    /// Per group and partition, the offsets delivered at least once with the bytes the
    /// log holds there.
    seen: Vec<Vec<HashSet<u64>>>,
}

fn seed() -> u64 {
    match std::env::var("HERALD_CRASH_SEED") {
        Ok(s) => s.parse().expect("HERALD_CRASH_SEED is a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

fn cycles() -> u32 {
    std::env::var("HERALD_CRASH_CYCLES")
        .map(|s| s.parse().expect("HERALD_CRASH_CYCLES is a u32"))
        .unwrap_or(DEFAULT_CYCLES)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_loop_keeps_acked_records_and_groups_drain() {
    let seed = seed();
    let cycles = cycles();
    eprintln!("crash loop: seed {seed}, {cycles} cycles (HERALD_CRASH_SEED={seed})");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("herald.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let config = config.to_str().unwrap();
    let ctx = format!("seed {seed}");

    let mut model = Model {
        logs: vec![Vec::new(); PARTITIONS as usize],
        sent: HashMap::new(),
        seen: vec![vec![HashSet::new(); PARTITIONS as usize]; GROUPS.len()],
    };
    let mut next_seq = vec![0u32; PRODUCERS as usize];

    // Cycle 0 runs under `always`; each restart picks the policy of the next cycle.
    let mut fsync = Fsync::Always;
    let mut server = Server::start(dir.path(), &fsync.args(config));
    setup(&mut server.client().await).await;
    let started = Instant::now();

    for cycle in 0..cycles {
        let ctx = format!("{ctx}, cycle {cycle} (fsync {fsync:?})");
        let log = Arc::new(Mutex::new(CycleLog::default()));
        let killed = Arc::new(AtomicBool::new(false));
        let mut producers = Vec::new();
        for producer in 0..PRODUCERS {
            let client = server.client().await;
            let (log, killed) = (log.clone(), killed.clone());
            let sent = Arc::new(Mutex::new(Vec::new()));
            let task_seed = rng.next();
            let first_seq = next_seq[producer as usize];
            producers.push(tokio::spawn(async move {
                // The last producer pipelines over PublishStream, the others publish one
                // at a time.
                let next = if producer + 1 == PRODUCERS {
                    produce_pipelined(client, producer, first_seq, task_seed, &log, &killed, &sent)
                        .await
                } else {
                    produce(client, producer, first_seq, task_seed, &log, &killed, &sent).await
                };
                (producer, next, std::mem::take(&mut *sent.lock().unwrap()))
            }));
        }
        let mut consumers = Vec::new();
        for (group, kind) in GROUPS.iter().enumerate() {
            for _ in 0..CONSUMERS_PER_GROUP {
                let client = server.client().await;
                let (log, killed) = (log.clone(), killed.clone());
                let mut task_rng = Rng(rng.next());
                consumers.push(tokio::spawn(async move {
                    // Three sessions in four leave after a while and a new one joins: the
                    // group rebalances and hands unsettled messages over, between kills.
                    loop {
                        let leave_after = match task_rng.below(4) {
                            0 => 0,
                            _ => LEAVE_AFTER_MIN + task_rng.below(LEAVE_AFTER_MIN * 10),
                        };
                        let (seed, client) = (task_rng.next(), client.clone());
                        let left = consume(
                            client,
                            group,
                            *kind,
                            seed,
                            NACK_ONE_IN,
                            leave_after,
                            &log,
                            &killed,
                        )
                        .await;
                        if !left || killed.load(Ordering::SeqCst) {
                            break;
                        }
                        log.lock().unwrap().leaves += 1;
                    }
                }));
            }
        }

        // One kill in five comes almost at once, while the broker is still recovering
        // groups and the first publishes are in flight.
        let load_ms = if rng.below(5) == 0 {
            rng.below(100)
        } else {
            100 + rng.below(LOAD_MS_MAX - 100)
        };
        tokio::time::sleep(Duration::from_millis(load_ms)).await;
        killed.store(true, Ordering::SeqCst);
        let output = server.kill9();
        assert_no_panic(&output, &ctx);

        for task in producers {
            let (producer, next, sent) = tokio::time::timeout(TIMEOUT, task)
                .await
                .unwrap_or_else(|_| panic!("{ctx}: a producer did not notice the kill"))
                .expect("producer task");
            next_seq[producer as usize] = next;
            for (seq, records) in sent {
                model.sent.insert((producer, seq), records);
            }
        }
        for task in consumers {
            tokio::time::timeout(TIMEOUT, task)
                .await
                .unwrap_or_else(|_| panic!("{ctx}: a consumer did not notice the kill"))
                .expect("consumer task");
        }
        let log = std::mem::take(&mut *log.lock().unwrap());
        assert!(
            log.failures.is_empty(),
            "{ctx}: calls failed while the broker was up:\n{}",
            log.failures.join("\n")
        );
        eprintln!(
            "{ctx}: killed after {load_ms} ms, {} publishes acknowledged, {} deliveries, {} members left and were replaced",
            log.acks.len(),
            log.deliveries.len(),
            log.leaves
        );

        // Restart (the last time under `always`, for the drain) and hold the broker to
        // what the killed cycle acknowledged and delivered.
        let next_fsync = match rng.below(4) {
            _ if cycle + 1 == cycles => Fsync::Always,
            0 => Fsync::Interval,
            1 => Fsync::Never,
            _ => Fsync::Always,
        };
        server = Server::start(dir.path(), &next_fsync.args(config));
        check_logs(&server, &mut model, &log, &ctx).await;
        fsync = next_fsync;
    }

    // The last restart: no more publishes; both groups must deliver everything and reach
    // lag 0 within DRAIN_TIMEOUT.
    let ctx = format!("{ctx}, drain after {cycles} cycles");
    drain(&server, &mut model, &ctx).await;
    let (status, output) = server.terminate();
    assert_no_panic(&output, &ctx);
    assert!(status.success(), "{ctx}: herald serve exited with {status}");
    eprintln!(
        "crash loop: seed {seed}, {cycles} cycles in {:?}; partitions hold {:?} records",
        started.elapsed(),
        model.logs.iter().map(Vec::len).collect::<Vec<_>>(),
    );
}

/// Creates the topic and both groups, starting at the earliest offset.
async fn setup(client: &mut HeraldClient<Channel>) {
    common::create_topic(client, TOPIC, PARTITIONS).await;
    for kind in GROUPS {
        client
            .create_group(v1::CreateGroupRequest {
                topic: TOPIC.into(),
                group: kind.name.into(),
                settings: Some(v1::GroupSettings {
                    ack_deadline_ms: Some(5_000),
                    retry_backoff_min_ms: Some(5),
                    retry_backoff_max_ms: Some(50),
                    // No dead-lettering (0): every message is redelivered until acked,
                    // so the drain must see every one of them.
                    max_delivery_attempts: Some(0),
                    dead_letter_topic: None,
                    ordering: kind.ordering as i32,
                }),
                start_position: Some(v1::Position {
                    kind: Some(v1::position::Kind::Earliest(v1::Earliest {})),
                }),
            })
            .await
            .expect("group created");
    }
}

/// The records of publish `seq` of `producer`: one key of the producer's, 1 to
/// [`BATCH_MAX`] records, values of 20 to ~1,000 bytes whose tail is seeded noise so that
/// a byte from the wrong place would show.
fn publish_records(rng: &mut Rng, producer: u32, seq: u32) -> Vec<v1::Record> {
    let key = Bytes::from(format!(
        "p{producer}-k{}",
        rng.below(KEYS_PER_PRODUCER.into())
    ));
    let count = 1 + rng.below(BATCH_MAX.into()) as u32;
    (0..count)
        .map(|index| {
            let pad: String = (0..rng.below(1_000))
                .map(|_| char::from(b'a' + rng.below(26) as u8))
                .collect();
            v1::Record {
                key: Some(key.clone()),
                value: Bytes::from(format!("p{producer}-s{seq}-r{index}-n{count}-{pad}")),
                headers: vec![v1::Header {
                    key: "seq".into(),
                    value: Bytes::from(seq.to_string()),
                }],
                timestamp_ms: 0,
            }
        })
        .collect()
}

fn publish_request(records: Vec<v1::Record>) -> v1::PublishRequest {
    v1::PublishRequest {
        topic: TOPIC.into(),
        partition: None,
        payload: Some(v1::publish_request::Payload::Records(v1::Records {
            records,
        })),
        producer: None,
    }
}

/// Notes an acknowledged publish (and a reply whose offsets do not fit it as a failure).
fn record_ack(log: &Mutex<CycleLog>, what: &str, reply: &v1::PublishResponse, stored: Vec<Stored>) {
    let mut log = log.lock().unwrap();
    if reply
        .last_offset
        .wrapping_add(1)
        .wrapping_sub(reply.base_offset)
        != stored.len() as u64
    {
        log.failures.push(format!(
            "{what}: {} records acknowledged as {}..={}",
            stored.len(),
            reply.base_offset,
            reply.last_offset
        ));
    }
    log.acks.push(Ack {
        partition: reply.partition,
        base_offset: reply.base_offset,
        records: stored,
    });
}

/// Notes a failed call, unless the kill explains it.
fn record_failure(log: &Mutex<CycleLog>, killed: &AtomicBool, what: String) {
    if !killed.load(Ordering::SeqCst) {
        log.lock().unwrap().failures.push(what);
    }
}

/// One producer: publishes batches of one key each, one at a time, until a publish fails.
/// Returns the next sequence number to use; `sent` gets every publish attempted.
async fn produce(
    mut client: HeraldClient<Channel>,
    producer: u32,
    first_seq: u32,
    seed: u64,
    log: &Mutex<CycleLog>,
    killed: &AtomicBool,
    sent: &Mutex<Vec<(u32, Vec<Stored>)>>,
) -> u32 {
    let mut rng = Rng(seed);
    for seq in first_seq.. {
        let records = publish_records(&mut rng, producer, seq);
        let stored: Vec<Stored> = records.iter().map(Stored::from).collect();
        sent.lock().unwrap().push((seq, stored.clone()));
        match client.publish(publish_request(records)).await {
            Ok(reply) => record_ack(log, &format!("p{producer} s{seq}"), reply.get_ref(), stored),
            Err(status) => {
                let what = format!("p{producer} s{seq}: publish failed: {status}");
                record_failure(log, killed, what);
                return seq + 1;
            }
        }
    }
    unreachable!()
}

/// A pipelining producer: keeps up to [`PIPELINE`] publishes in flight on one
/// PublishStream (the stream's `sequence` is the publish's), until the stream fails.
/// Returns the next sequence number to use; `sent` gets every publish attempted.
async fn produce_pipelined(
    mut client: HeraldClient<Channel>,
    producer: u32,
    first_seq: u32,
    seed: u64,
    log: &Mutex<CycleLog>,
    killed: &AtomicBool,
    sent: &Mutex<Vec<(u32, Vec<Stored>)>>,
) -> u32 {
    let mut rng = Rng(seed);
    let (tx, rx) = mpsc::channel(PIPELINE);
    let mut next = first_seq;
    let mut in_flight: HashMap<u64, Vec<Stored>> = HashMap::new();
    let mut responses = match client.publish_stream(ReceiverStream::new(rx)).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            record_failure(
                log,
                killed,
                format!("p{producer}: PublishStream failed: {status}"),
            );
            return next;
        }
    };
    loop {
        while in_flight.len() < PIPELINE {
            let records = publish_records(&mut rng, producer, next);
            let stored: Vec<Stored> = records.iter().map(Stored::from).collect();
            sent.lock().unwrap().push((next, stored.clone()));
            in_flight.insert(u64::from(next), stored);
            let request = v1::PublishStreamRequest {
                sequence: u64::from(next),
                publish: Some(publish_request(records)),
            };
            next += 1;
            if tx.send(request).await.is_err() {
                return next;
            }
        }
        let response = match responses.message().await {
            Ok(Some(response)) => response,
            Ok(None) => {
                record_failure(log, killed, format!("p{producer}: PublishStream ended"));
                return next;
            }
            Err(status) => {
                let what = format!("p{producer}: PublishStream failed: {status}");
                record_failure(log, killed, what);
                return next;
            }
        };
        let what = format!("p{producer} s{}", response.sequence);
        let Some(stored) = in_flight.remove(&response.sequence) else {
            record_failure(
                log,
                killed,
                format!("{what}: a reply to no request in flight"),
            );
            return next;
        };
        match response.outcome {
            Some(v1::publish_stream_response::Outcome::Published(reply)) => {
                record_ack(log, &what, &reply, stored)
            }
            other => {
                record_failure(log, killed, format!("{what}: publish failed: {other:?}"));
                return next;
            }
        }
    }
}

/// One member of group `group`: joins, records every delivery, nacks one in `nack_one_in`
/// (none if 0) and acks the rest, until the stream ends. With `leave_after` above 0 it
/// leaves (closes its stream) once it got that many deliveries, settling the last ones
/// or, half the time, not, so they move to another member. Returns true if it left.
#[allow(clippy::too_many_arguments)]
async fn consume(
    mut client: HeraldClient<Channel>,
    group: usize,
    kind: GroupKind,
    seed: u64,
    nack_one_in: u64,
    leave_after: u64,
    log: &Mutex<CycleLog>,
    killed: &AtomicBool,
) -> bool {
    let mut rng = Rng(seed);
    let (tx, rx) = mpsc::channel(ACK_QUEUE);
    tx.send(v1::SubscribeRequest {
        request: Some(v1::subscribe_request::Request::Join(v1::Join {
            topic: TOPIC.into(),
            group: kind.name.into(),
            client_id: format!("crash-loop-{}", kind.name),
            max_in_flight_messages: 0,
            max_in_flight_bytes: 0,
            settings: None,
            start_position: None,
            credit_flow_control: false,
            batched_deliveries: kind.batched,
            max_in_flight_per_key: 0,
        })),
    })
    .await
    .unwrap();
    let fail = |what: String| {
        if !killed.load(Ordering::SeqCst) {
            log.lock()
                .unwrap()
                .failures
                .push(format!("group {}: {what}", kind.name));
        }
        false
    };
    let mut delivered = 0u64;
    let mut stream = match client.subscribe(ReceiverStream::new(rx)).await {
        Ok(response) => response.into_inner(),
        Err(status) => return fail(format!("subscribe failed: {status}")),
    };
    let nack = |rng: &mut Rng| nack_one_in > 0 && rng.below(nack_one_in) == 0;
    let request = |r| v1::SubscribeRequest { request: Some(r) };
    use v1::subscribe_request::Request;
    loop {
        // No timeout here: an idle group legitimately sends nothing; the kill or the
        // drain's end closes the stream.
        let message = match stream.message().await {
            Ok(Some(message)) => message,
            Ok(None) => return false,
            Err(status) => return fail(format!("stream failed: {status}")),
        };
        let Some(v1::subscribe_response::Response::Deliveries(batch)) = message.response else {
            continue;
        };
        delivered += batch.deliveries.len() as u64
            + batch.runs.iter().map(|r| u64::from(r.count)).sum::<u64>();
        let mut settle = Vec::new();
        {
            let mut log = log.lock().unwrap();
            for d in batch.deliveries {
                log.deliveries
                    .push((group, d.partition, d.offset, d.value.clone()));
                settle.push(if nack(&mut rng) {
                    Request::Nack(v1::Nack {
                        ack_id: d.ack_id,
                        delay_ms: Some(rng.below(20) as u32),
                        reason: "crash loop".into(),
                        range: None,
                    })
                } else {
                    Request::Ack(v1::Ack {
                        ack_ids: vec![d.ack_id],
                        ranges: Vec::new(),
                    })
                });
            }
            for run in batch.runs {
                let Some(records) = Records::resume(
                    run.base_offset,
                    run.first_timestamp_ms,
                    run.first_offset,
                    &run.records,
                ) else {
                    log.failures.push(format!(
                        "group {}: run at {}/{} starts before its batch {}",
                        kind.name, run.partition, run.first_offset, run.base_offset
                    ));
                    continue;
                };
                let mut decoded = 0;
                for record in records.take(run.count as usize) {
                    match record {
                        Ok(record) => {
                            log.deliveries.push((
                                group,
                                run.partition,
                                record.offset,
                                run.records.slice_ref(record.value),
                            ));
                            decoded += 1;
                        }
                        Err(error) => {
                            log.failures.push(format!(
                                "group {}: run at {}/{} does not decode: {error}",
                                kind.name, run.partition, run.first_offset
                            ));
                            break;
                        }
                    }
                }
                if decoded != run.count {
                    log.failures.push(format!(
                        "group {}: run at {}/{} declares {} records, holds {decoded}",
                        kind.name, run.partition, run.first_offset, run.count
                    ));
                }
                // Nack one message of the run and ack the rest, each part as a range.
                let range = |first: u32, count: u32| v1::AckRange {
                    partition: run.partition,
                    first_offset: run.first_offset + u64::from(first),
                    count,
                    first_delivery: run.first_delivery + u64::from(first),
                };
                if nack(&mut rng) {
                    let at = rng.below(run.count.into()) as u32;
                    settle.push(Request::Nack(v1::Nack {
                        ack_id: Bytes::new(),
                        delay_ms: None,
                        reason: "crash loop".into(),
                        range: Some(range(at, 1)),
                    }));
                    let mut ranges = Vec::new();
                    if at > 0 {
                        ranges.push(range(0, at));
                    }
                    if at + 1 < run.count {
                        ranges.push(range(at + 1, run.count - at - 1));
                    }
                    if !ranges.is_empty() {
                        settle.push(Request::Ack(v1::Ack {
                            ack_ids: Vec::new(),
                            ranges,
                        }));
                    }
                } else {
                    settle.push(Request::Ack(v1::Ack {
                        ack_ids: Vec::new(),
                        ranges: vec![range(0, run.count)],
                    }));
                }
            }
        }
        let leaving = leave_after > 0 && delivered >= leave_after;
        if leaving && rng.below(2) == 0 {
            return true;
        }
        for r in settle {
            if tx.send(request(r)).await.is_err() {
                return false;
            }
        }
        if leaving {
            return true;
        }
    }
}

/// Every record of a partition, from offset 0 to its end.
async fn fetch_all(client: &mut HeraldClient<Channel>, partition: u32, ctx: &str) -> Vec<Stored> {
    let read = async {
        let mut stream = client
            .fetch(common::fetch_from_earliest(TOPIC, partition))
            .await
            .unwrap_or_else(|status| panic!("{ctx}: fetch {partition} failed: {status}"))
            .into_inner();
        let mut out = Vec::new();
        while let Some(response) = stream
            .message()
            .await
            .unwrap_or_else(|status| panic!("{ctx}: fetch {partition} failed: {status}"))
        {
            for record in response.records {
                assert_eq!(
                    record.offset,
                    out.len() as u64,
                    "{ctx}: partition {partition} is not dense from 0"
                );
                out.push(Stored::from(record));
            }
        }
        out
    };
    tokio::time::timeout(CALL_TIMEOUT, read)
        .await
        .unwrap_or_else(|_| panic!("{ctx}: fetch {partition} took over {CALL_TIMEOUT:?}"))
}

/// Reads every partition back and checks it against the model and against what the last
/// cycle acknowledged and delivered; then makes it the model's log.
async fn check_logs(server: &Server, model: &mut Model, cycle: &CycleLog, ctx: &str) {
    let mut client = server.client().await;
    let mut publish_at: BTreeMap<(u32, u32), (u32, u64)> = BTreeMap::new();
    for partition in 0..PARTITIONS {
        let p = partition as usize;
        let log = fetch_all(&mut client, partition, ctx).await;
        let before = &model.logs[p];

        // What was verified after the previous restart is still there, unchanged.
        assert!(
            log.len() >= before.len(),
            "{ctx}: partition {partition} lost offsets {}..{} that an earlier restart had",
            log.len(),
            before.len()
        );
        if let Some(at) = (0..before.len()).find(|&i| before[i] != log[i]) {
            panic!(
                "{ctx}: partition {partition} offset {at} changed across the restart: was {:?}, now {:?}",
                before[at], log[at]
            );
        }

        // Every record is one that was sent, each publish whole and in place, each key's
        // publishes in the order they were made.
        let mut last_seq_of_key: HashMap<Option<Bytes>, u32> = HashMap::new();
        let mut offset = 0;
        while offset < log.len() {
            let record = &log[offset];
            let id = RecordId::parse(&record.value).unwrap_or_else(|| {
                panic!("{ctx}: partition {partition} offset {offset} holds a record never sent: {record:?}")
            });
            let sent = model.sent.get(&(id.producer, id.seq)).unwrap_or_else(|| {
                panic!("{ctx}: partition {partition} offset {offset} holds {id:?}, never sent")
            });
            assert_eq!(
                id.index, 0,
                "{ctx}: partition {partition} offset {offset} starts a publish mid-way: {id:?}"
            );
            let stored = log.get(offset..offset + sent.len());
            assert_eq!(
                stored,
                Some(&sent[..]),
                "{ctx}: partition {partition} offset {offset}: publish p{} s{} is torn or altered",
                id.producer,
                id.seq
            );
            if let Some(first) =
                publish_at.insert((id.producer, id.seq), (partition, offset as u64))
            {
                panic!(
                    "{ctx}: publish {id:?} is stored twice, at {first:?} and {partition}/{offset}"
                );
            }
            if let Some(last) = last_seq_of_key.insert(record.key.clone(), id.seq) {
                assert!(
                    last < id.seq,
                    "{ctx}: partition {partition} offset {offset}: key {:?} has publish s{} after s{last}",
                    record.key,
                    id.seq
                );
            }
            offset += sent.len();
        }
        model.logs[p] = log;
    }

    // Every acknowledged publish is where its acknowledgement said.
    for ack in &cycle.acks {
        let log = &model.logs[ack.partition as usize];
        let end = ack.base_offset as usize + ack.records.len();
        assert!(
            end <= log.len(),
            "{ctx}: acknowledged publish at {}/{} ({} records) is missing: the partition ends at {}",
            ack.partition,
            ack.base_offset,
            ack.records.len(),
            log.len()
        );
        assert_eq!(
            &log[ack.base_offset as usize..end],
            &ack.records[..],
            "{ctx}: acknowledged publish at {}/{} differs from what is stored",
            ack.partition,
            ack.base_offset
        );
    }

    // Every delivery carried the bytes the log holds at its offset.
    for (group, partition, offset, value) in &cycle.deliveries {
        let log = &model.logs[*partition as usize];
        let stored = log.get(*offset as usize).unwrap_or_else(|| {
            panic!(
                "{ctx}: group {} was delivered {partition}/{offset}, which is gone after the restart",
                GROUPS[*group].name
            )
        });
        assert_eq!(
            &stored.value, value,
            "{ctx}: group {} got other bytes at {partition}/{offset} than the log holds",
            GROUPS[*group].name
        );
        model.seen[*group][*partition as usize].insert(*offset);
    }
}

/// After the last restart: consume with both groups, acking everything, until each has
/// seen every record and DescribeGroup reports lag 0 and nothing in flight everywhere.
async fn drain(server: &Server, model: &mut Model, ctx: &str) {
    let log = Arc::new(Mutex::new(CycleLog::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut consumers = Vec::new();
    for (group, kind) in GROUPS.iter().enumerate() {
        for member in 0..CONSUMERS_PER_GROUP {
            let client = server.client().await;
            let (log, stop) = (log.clone(), stop.clone());
            consumers.push(tokio::spawn(async move {
                consume(client, group, *kind, u64::from(member), 0, 0, &log, &stop).await;
            }));
        }
    }
    let mut client = server.client().await;
    let started = Instant::now();
    let deadline = started + DRAIN_TIMEOUT;
    let mut delivered = 0usize;
    // Deliveries plus committed offsets: it moves whenever a group makes progress.
    let mut progress = 0u64;
    let mut progressed_at = Instant::now();
    let last_state = loop {
        // Fold in what was delivered since the last look.
        {
            let mut log = log.lock().unwrap();
            assert!(
                log.failures.is_empty(),
                "{ctx}: {}",
                log.failures.join("\n")
            );
            delivered += log.deliveries.len();
            for (group, partition, offset, value) in log.deliveries.drain(..) {
                let stored = model.logs[partition as usize]
                    .get(offset as usize)
                    .unwrap_or_else(|| panic!("{ctx}: group {} was delivered {partition}/{offset}, past the log's end", GROUPS[group].name));
                assert_eq!(
                    stored.value, value,
                    "{ctx}: group {} got other bytes at {partition}/{offset} than the log holds",
                    GROUPS[group].name
                );
                model.seen[group][partition as usize].insert(offset);
            }
        }
        let mut done = true;
        let mut state = Vec::new();
        let mut committed = 0;
        for (group, kind) in GROUPS.iter().enumerate() {
            let description = tokio::time::timeout(
                CALL_TIMEOUT,
                client.describe_group(v1::DescribeGroupRequest {
                    topic: TOPIC.into(),
                    group: kind.name.into(),
                }),
            )
            .await
            .unwrap_or_else(|_| panic!("{ctx}: DescribeGroup took over {CALL_TIMEOUT:?}"))
            .unwrap_or_else(|status| panic!("{ctx}: DescribeGroup failed: {status}"))
            .into_inner()
            .group
            .expect("a group description");
            for partition in &description.partitions {
                let p = partition.partition as usize;
                let missing = (0..model.logs[p].len() as u64)
                    .filter(|o| !model.seen[group][p].contains(o))
                    .count();
                committed += partition.committed_offset;
                if partition.lag != 0 || partition.in_flight_count != 0 || missing != 0 {
                    done = false;
                }
                state.push(format!(
                    "{}/{p}: committed {} end {} lag {} in flight {} never delivered {missing}",
                    kind.name,
                    partition.committed_offset,
                    partition.end_offset,
                    partition.lag,
                    partition.in_flight_count
                ));
            }
        }
        let state = state.join("\n");
        if done {
            break state;
        }
        let now = Instant::now();
        if delivered as u64 + committed != progress {
            progress = delivered as u64 + committed;
            progressed_at = now;
        }
        assert!(
            now - progressed_at < DRAIN_STALL,
            "{ctx}: the groups are stuck: no delivery and no commit for {DRAIN_STALL:?} ({delivered} deliveries in {:?}):\n{state}",
            now - started
        );
        assert!(
            now < deadline,
            "{ctx}: the groups did not drain within {DRAIN_TIMEOUT:?} ({delivered} deliveries):\n{state}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "{ctx}: drained in {:?} ({delivered} deliveries)\n{last_state}",
        started.elapsed()
    );
    stop.store(true, Ordering::SeqCst);
    for consumer in consumers {
        consumer.abort();
    }
}
