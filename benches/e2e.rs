//! End-to-end benchmarks over loopback gRPC: a real broker (in this process, on
//! 127.0.0.1:0, data in a temp dir) and the Rust client, sharing the machine's cores the way
//! a producer and a broker on one host do.
//!
//! - `e2e_publish/{100B,1KiB}_x{1,100,1000}/{never,always}`: one iteration sends a batch of
//!   N records with the client's `Producer`, flushes, and awaits every record's ack. One
//!   partition, so batches go one after another (no pipelining across iterations): what
//!   one producer that waits for each batch's acks gets.
//! - `e2e_consume/{100B,1KiB}`: a group consumer receives and acks a preloaded topic
//!   (batched deliveries); `e2e_consume/{100B,1KiB}_single_deliveries` the same with one
//!   protobuf `Delivery` per message;
//!   each iteration preloads 100,000 records, joins a new group at the first of them
//!   (untimed: creating a group persists its state) and times from the join to the last
//!   ack sent.
//! - `e2e_latency/publish_to_deliver`: one record published and flushed, then received by
//!   a subscribed group consumer and acked; the time of that round.
//! - `proto_publish/100B_x1000`: the same 1000-record batch as per-record proto messages
//!   (`Records`) in a unary `Publish`, beside `proto_publish/100B_x1000_fastpath`, the
//!   batch pre-encoded in the storage format (`storage_batch`), so the gap stays visible.
//!
//! Run: `cargo bench --bench e2e` (a filter narrows it: `cargo bench --bench e2e -- consume`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures::StreamExt;
use herald_broker::config::{Config, FsyncSetting};
use herald_broker::server::Broker;
use herald_broker::storage::batch::{BatchBuilder, Record as BatchRecord};
use herald_client::{
    Client, ConsumerConfig, FsyncPolicy, Position, Producer, ProducerConfig, Record, Subscription,
    TopicConfig,
};
use herald_proto::v1;
use tokio::runtime::Runtime;

const SIZES: [(usize, &str); 2] = [(100, "100B"), (1024, "1KiB")];
/// A partition's log is trimmed to this, so long runs do not fill the disk.
const RETENTION_BYTES: u64 = 256 << 20;
/// Records per consume call, times the iterations criterion asks for.
const CONSUME_CHUNK: u64 = 100_000;

/// The broker, a client connected to it, and the runtime both run on.
struct Env {
    rt: Runtime,
    broker: Option<Broker>,
    client: Client,
    _dir: tempfile::TempDir,
    topics: AtomicU64,
}

impl Env {
    fn new() -> Env {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("temp dir");
        let config = Config {
            data_dir: dir.path().to_owned(),
            listen: "127.0.0.1:0".parse().unwrap(),
            metrics_listen: "127.0.0.1:0".parse().unwrap(),
            fsync: FsyncSetting::Never,
            segment_bytes: 64 * 1024 * 1024,
            ..Config::default()
        };
        let (broker, client) = rt.block_on(async {
            let broker = Broker::start(config, false).await.expect("broker starts");
            let client = Client::builder(format!("http://{}", broker.addr))
                .no_request_timeout()
                .connect()
                .await
                .expect("client connects");
            (broker, client)
        });
        Env {
            rt,
            broker: Some(broker),
            client,
            _dir: dir,
            topics: AtomicU64::new(0),
        }
    }

    /// Creates a fresh one-partition topic with this fsync policy.
    fn topic(&self, prefix: &str, fsync: FsyncPolicy) -> String {
        let name = format!("{prefix}-{}", self.topics.fetch_add(1, Ordering::Relaxed));
        let config = TopicConfig {
            fsync_policy: Some(fsync),
            retention_bytes: Some(RETENTION_BYTES),
            ..TopicConfig::default()
        };
        self.rt
            .block_on(self.client.admin().create_topic(&name, 1, config))
            .expect("topic created");
        name
    }

    fn producer(&self, topic: &str) -> Producer {
        self.producer_with(topic, true)
    }

    fn producer_with(&self, topic: &str, idempotent: bool) -> Producer {
        let _guard = self.rt.enter();
        self.client.producer(
            ProducerConfig::new(topic)
                .linger(Duration::from_millis(1))
                .idempotent(idempotent),
        )
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(broker) = self.broker.take() {
            let _ = self.rt.block_on(broker.shutdown());
        }
    }
}

fn value(size: usize) -> Bytes {
    Bytes::from(
        (0..size)
            .map(|i| b'a' + (i % 26) as u8)
            .collect::<Vec<u8>>(),
    )
}

fn records(size: usize, count: usize) -> Vec<Record> {
    let value = value(size);
    (0..count).map(|_| Record::new(value.clone())).collect()
}

/// Sends `batch` and waits until every record of it is acked.
async fn publish_acked(producer: &Producer, batch: &[Record]) {
    let delivery = producer
        .send_all(batch.iter().cloned())
        .await
        .expect("records queued");
    producer.flush().await.expect("flushed");
    let acked = delivery.await.expect("records acked");
    assert_eq!(acked.len(), batch.len());
}

fn e2e_publish(c: &mut Criterion) {
    let env = Env::new();
    let mut group = c.benchmark_group("e2e_publish");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));
    for (fsync, fsync_name) in [
        (FsyncPolicy::Never, "never"),
        (FsyncPolicy::Always, "always"),
    ] {
        for (size, size_name) in SIZES {
            for count in [1usize, 100, 1000] {
                let topic = env.topic("publish", fsync);
                let producer = env.producer(&topic);
                let batch = records(size, count);
                group.throughput(Throughput::Elements(count as u64));
                let id = BenchmarkId::new(format!("{size_name}_x{count}"), fsync_name);
                group.bench_function(id, |b| {
                    b.to_async(&env.rt)
                        .iter(|| publish_acked(&producer, &batch));
                });
                env.rt.block_on(producer.close()).expect("producer closed");
            }
        }
    }
    group.finish();
}

/// Publishing with and without idempotence, side by side in one run: what the producer
/// block, the InitProducer call and the partition's sequence check cost.
fn e2e_idempotence(c: &mut Criterion) {
    let env = Env::new();
    let mut group = c.benchmark_group("e2e_idempotence");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));
    for (size, size_name) in SIZES {
        let count = 1000usize;
        for (idempotent, name) in [(false, "off"), (true, "on")] {
            let topic = env.topic("idempotence", FsyncPolicy::Never);
            let producer = env.producer_with(&topic, idempotent);
            let batch = records(size, count);
            group.throughput(Throughput::Elements(count as u64));
            let id = BenchmarkId::new(format!("{size_name}_x{count}"), name);
            group.bench_function(id, |b| {
                b.to_async(&env.rt)
                    .iter(|| publish_acked(&producer, &batch));
            });
            env.rt.block_on(producer.close()).expect("producer closed");
        }
    }
    group.finish();
}

fn e2e_consume(c: &mut Criterion) {
    let env = Env::new();
    let mut group = c.benchmark_group("e2e_consume");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    // Batched deliveries (the client's default: runs of stored records, acked by range),
    // then one protobuf Delivery per message, as a generated client gets them.
    let variants = SIZES
        .iter()
        .map(|&(size, name)| (size, name.to_owned(), true))
        .chain(
            SIZES
                .iter()
                .map(|&(size, name)| (size, format!("{name}_single_deliveries"), false)),
        );
    for (size, size_name, batched) in variants {
        let topic = env.topic("consume", FsyncPolicy::Never);
        let producer = env.producer(&topic);
        let chunk = records(size, 1000);
        let mut preloaded = 0u64;
        let mut groups = 0u64;
        group.throughput(Throughput::Elements(CONSUME_CHUNK));
        group.bench_function(size_name.as_str(), |b| {
            // Each iteration preloads its own records and consumes them with a new group:
            // preloading a whole sample at once could pass the topic's retention, which
            // would delete records the group then never receives.
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let start = preloaded;
                    env.rt.block_on(async {
                        for _ in 0..CONSUME_CHUNK.div_ceil(1000) {
                            let delivery = producer
                                .send_all(chunk.iter().cloned())
                                .await
                                .expect("records queued");
                            drop(delivery);
                        }
                        producer.flush().await.expect("preloaded");
                    });
                    preloaded += CONSUME_CHUNK.div_ceil(1000) * 1000;
                    groups += 1;
                    let config = ConsumerConfig::new(&topic, format!("g{groups}"))
                        .start_position(Position::Offset(start))
                        .max_in_flight_messages(10_000)
                        .batched_deliveries(batched);
                    let consumer = env.client.consumer(config);
                    timed += env.rt.block_on(async {
                        let mut subscription = consumer.subscribe().await.expect("subscribed");
                        let began = Instant::now();
                        let mut received = 0u64;
                        while received < CONSUME_CHUNK {
                            next_acked(&mut subscription).await;
                            received += 1;
                        }
                        began.elapsed()
                    });
                }
                timed
            });
        });
    }
    group.finish();
}

/// Receives the subscription's next message and acks it.
async fn next_acked(subscription: &mut Subscription) {
    let message = subscription
        .next()
        .await
        .expect("stream open")
        .expect("message");
    message.ack().expect("acked");
}

fn e2e_latency(c: &mut Criterion) {
    let env = Env::new();
    let mut group = c.benchmark_group("e2e_latency");
    group.sample_size(50);
    let topic = env.topic("latency", FsyncPolicy::Never);
    let producer = env.producer(&topic);
    let consumer = env
        .client
        .consumer(ConsumerConfig::new(&topic, "latency").start_position(Position::Latest));
    let mut subscription = env.rt.block_on(consumer.subscribe()).expect("subscribed");
    let record = Record::new(value(100));
    group.throughput(Throughput::Elements(1));
    group.bench_function("publish_to_deliver", |b| {
        b.iter(|| {
            env.rt.block_on(async {
                let delivery = producer.send(record.clone()).await.expect("queued");
                producer.flush().await.expect("flushed");
                next_acked(&mut subscription).await;
                delivery.await.expect("acked");
            })
        });
    });
    group.finish();
}

fn proto_publish(c: &mut Criterion) {
    let env = Env::new();
    let mut group = c.benchmark_group("proto_publish");
    group.sample_size(20);
    let value = value(100);
    let records: Vec<v1::Record> = (0..1000)
        .map(|_| v1::Record {
            key: None,
            value: value.clone(),
            headers: vec![],
            timestamp_ms: 0,
        })
        .collect();
    let mut builder = BatchBuilder::with_capacity(128 * 1024);
    for _ in 0..1000 {
        builder.push(&BatchRecord {
            timestamp: 1_700_000_000_000,
            key: None,
            value: &value,
            headers: &[],
        });
    }
    let encoded = Bytes::from(builder.finish());
    let topic = env.topic("proto", FsyncPolicy::Never);
    let raw = env.client.raw();
    group.throughput(Throughput::Elements(1000));
    for (name, payload) in [
        (
            "100B_x1000",
            v1::publish_request::Payload::Records(v1::Records { records }),
        ),
        (
            "100B_x1000_fastpath",
            v1::publish_request::Payload::StorageBatch(encoded),
        ),
    ] {
        let request = v1::PublishRequest {
            topic: topic.clone(),
            partition: Some(0),
            payload: Some(payload),
            producer: None,
        };
        group.bench_function(name, |b| {
            b.to_async(&env.rt).iter(|| {
                let mut raw = raw.clone();
                let request = request.clone();
                async move { raw.publish(request).await.expect("published") }
            });
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    e2e_publish,
    e2e_idempotence,
    e2e_consume,
    e2e_latency,
    proto_publish
);
criterion_main!(benches);
