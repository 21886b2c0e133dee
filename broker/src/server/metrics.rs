//! Prometheus metrics, and the operator's HTTP endpoint that serves them: `/metrics`,
//! `/healthz` (the process is up) and `/readyz` (topics and groups are loaded and the gRPC
//! listener accepts).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry as PromRegistry, TextEncoder,
};
use tonic::body::Body;
use tonic::codegen::{Service, http};

use crate::groups::GroupRegistry;
use crate::registry::Registry;
use crate::storage::LogReader;
use crate::storage::batch;

/// Labels of the per-group series. Bounded: a broker holds at most `MAX_GROUPS` groups.
const GROUP_LABELS: &[&str] = &["topic", "group"];
/// Labels of the per-group, per-partition series.
const GROUP_PARTITION_LABELS: &[&str] = &["topic", "group", "partition"];
/// Labels of the per-topic series. Bounded by `max_topics`.
const TOPIC_LABELS: &[&str] = &["topic"];

/// Latency buckets in seconds: 50 µs to 5 s, roughly ×2 apart, so an fsync (~0.1–0.4 ms)
/// and a loopback round trip both land in distinct buckets.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
];

/// Every metric the broker exports. Counters on the hot path are plain atomics.
pub struct Metrics {
    registry: PromRegistry,
    pub publish_requests: IntCounterVec,
    pub publish_records: IntCounter,
    pub publish_bytes: IntCounter,
    pub publish_latency: Histogram,
    pub fetch_records: IntCounter,
    pub fetch_bytes: IntCounter,
    pub open_streams: IntGauge,
    /// Ack ids in Ack, Nack and Extend requests that are not ack ids at all (ignored).
    pub malformed_ack_ids: IntCounter,
    /// Requests and TLS handshakes refused for want of a valid credential, by reason.
    pub auth_failures: IntCounterVec,
    /// Authenticated requests refused by the ACL.
    pub auth_denied: IntCounter,
    /// Publishes this node sent on to the node that serves their partition (cluster mode).
    pub forwarded_publishes: IntCounter,
    topics: IntGauge,
    /// Topics not loaded because their metadata or a partition log is damaged (see `registry`).
    damaged_topics: IntGauge,
    partitions: IntGauge,
    fsyncs: IntCounter,
    publish_duplicates: IntCounter,
    fsync_seconds: prometheus::Counter,
    /// Group tasks that panicked and were restarted (a bug; see the ERROR log).
    group_task_failures: IntCounter,
    /// Group partition positions found past their log's end and brought down to it.
    group_offsets_reset: IntCounter,
    groups: GroupMetrics,
    topic_series: TopicMetrics,
    grpc_errors: GrpcErrors,
    /// `process_*` (CPU, memory, file descriptors, threads) under their standard names,
    /// which dashboards expect: a registry without the `herald_` prefix.
    process: PromRegistry,
    /// Held while refreshing and gathering, so concurrent scrapes never see each other's
    /// half-refreshed values.
    scrape: Mutex<()>,
}

/// Per-group series, filled at scrape time from each group's own totals and state (the
/// delivery path only bumps atomics), so a deleted group's series disappear with it.
struct GroupMetrics {
    deliveries: IntCounterVec,
    acks: IntCounterVec,
    nacks: IntCounterVec,
    redeliveries: IntCounterVec,
    expirations: IntCounterVec,
    dead_letters: IntCounterVec,
    lag: IntGaugeVec,
    members: IntGaugeVec,
    partition_lag: IntGaugeVec,
    oldest_unacked_age: prometheus::GaugeVec,
}

impl GroupMetrics {
    fn new() -> GroupMetrics {
        let counter = |name: &str, help: &str| {
            IntCounterVec::new(Opts::new(name, help), GROUP_LABELS).expect("valid metric")
        };
        let gauge = |name: &str, help: &str| {
            IntGaugeVec::new(Opts::new(name, help), GROUP_LABELS).expect("valid metric")
        };
        GroupMetrics {
            deliveries: counter(
                "group_deliveries_total",
                "Messages delivered to group members, redeliveries included",
            ),
            acks: counter("group_acks_total", "Deliveries acked (stale acks excluded)"),
            nacks: counter(
                "group_nacks_total",
                "Deliveries nacked (stale nacks excluded)",
            ),
            redeliveries: counter(
                "group_redeliveries_total",
                "Deliveries of a message after its first",
            ),
            expirations: counter(
                "group_expirations_total",
                "Deliveries whose ack deadline passed",
            ),
            dead_letters: counter(
                "group_dead_letters_total",
                "Messages dead-lettered (appended to the dead-letter topic, or dropped)",
            ),
            lag: gauge(
                "group_lag",
                "Messages not yet done: sum over partitions of end offset minus committed offset",
            ),
            members: gauge("group_members", "Members connected to the group"),
            partition_lag: IntGaugeVec::new(
                Opts::new(
                    "group_partition_lag",
                    "Messages of the partition not yet done by the group: end offset minus committed offset",
                ),
                GROUP_PARTITION_LABELS,
            )
            .expect("valid metric"),
            oldest_unacked_age: prometheus::GaugeVec::new(
                Opts::new(
                    "group_oldest_unacked_age_seconds",
                    "Age (now minus publish time) of the partition's oldest message the group has not acked; 0 when none is left",
                ),
                GROUP_PARTITION_LABELS,
            )
            .expect("valid metric"),
        }
    }

    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.deliveries.clone()),
            Box::new(self.acks.clone()),
            Box::new(self.nacks.clone()),
            Box::new(self.redeliveries.clone()),
            Box::new(self.expirations.clone()),
            Box::new(self.dead_letters.clone()),
            Box::new(self.lag.clone()),
            Box::new(self.members.clone()),
            Box::new(self.partition_lag.clone()),
            Box::new(self.oldest_unacked_age.clone()),
        ]
    }

    /// Replaces every series with the current groups' values. Totals only grow while a
    /// group lives; a broker restart starts them again, which scrapers see as a reset.
    fn refresh(&self, groups: &GroupRegistry) {
        let counters = [
            &self.deliveries,
            &self.acks,
            &self.nacks,
            &self.redeliveries,
            &self.expirations,
            &self.dead_letters,
        ];
        for vec in counters {
            vec.reset();
        }
        self.lag.reset();
        self.members.reset();
        self.partition_lag.reset();
        self.oldest_unacked_age.reset();
        let now_ms = crate::clock::now_ms();
        for group in groups.list(None) {
            let labels = [group.topic_name.as_str(), group.name.as_str()];
            let counts = group.counts();
            let (description, _, _) = group.describe();
            let (mut redeliveries, mut dead_letters, mut lag) = (0u64, 0u64, 0u64);
            let layout = group.topic.layout();
            for p in &description.partitions {
                redeliveries += p.redelivered_count;
                dead_letters += p.dead_lettered_count;
                // Read after the committed offset, so the end is never behind it.
                let reader = layout
                    .partitions
                    .get(p.partition.index())
                    .map(|partition| partition.reader());
                let end = reader.map_or(0, LogReader::high_watermark);
                let partition_lag = end.saturating_sub(p.committed.0);
                lag += partition_lag;
                let partition = p.partition.index().to_string();
                let partition_labels = [labels[0], labels[1], partition.as_str()];
                self.partition_lag
                    .with_label_values(&partition_labels)
                    .set(i64::try_from(partition_lag).unwrap_or(i64::MAX));
                // The committed offset is the lowest message not done, so its record is
                // the oldest unacked one. A log cut below it by retention has no age.
                let age_ms = if partition_lag == 0 {
                    Some(0)
                } else {
                    reader
                        .and_then(|r| timestamp_at(r, p.committed.0))
                        .map(|ts| now_ms.saturating_sub(ts).max(0))
                };
                if let Some(age_ms) = age_ms {
                    self.oldest_unacked_age
                        .with_label_values(&partition_labels)
                        .set(age_ms as f64 / 1000.0);
                }
            }
            let values = [
                counts.deliveries,
                counts.acks,
                counts.nacks,
                redeliveries,
                counts.expirations,
                dead_letters,
            ];
            for (vec, value) in counters.into_iter().zip(values) {
                vec.with_label_values(&labels).inc_by(value);
            }
            self.lag
                .with_label_values(&labels)
                .set(i64::try_from(lag).unwrap_or(i64::MAX));
            self.members
                .with_label_values(&labels)
                .set(description.members.len() as i64);
        }
    }
}

/// The timestamp of the record at `offset`, read back from the log (one batch).
fn timestamp_at(reader: &LogReader, offset: u64) -> Option<i64> {
    let chunk = reader.read(offset, 1).ok()??;
    let view = batch::batches(&chunk.bytes).next()?.ok()?;
    if view.header.base_offset == offset {
        return Some(view.header.first_timestamp);
    }
    view.records()
        .map_while(Result::ok)
        .find(|r| r.offset == offset)
        .map(|r| r.timestamp)
}

/// Per-topic series: traffic from the topic's own atomics ([`crate::topic::TopicCounters`])
/// and disk use, both read at scrape time.
struct TopicMetrics {
    publish_requests: IntCounterVec,
    publish_records: IntCounterVec,
    publish_bytes: IntCounterVec,
    fetch_records: IntCounterVec,
    fetch_bytes: IntCounterVec,
    disk_used: IntGaugeVec,
    disk_allocated: IntGaugeVec,
}

impl TopicMetrics {
    fn new() -> TopicMetrics {
        let counter = |name: &str, help: &str| {
            IntCounterVec::new(Opts::new(name, help), TOPIC_LABELS).expect("valid metric")
        };
        let gauge = |name: &str, help: &str| {
            IntGaugeVec::new(Opts::new(name, help), TOPIC_LABELS).expect("valid metric")
        };
        TopicMetrics {
            publish_requests: counter(
                "topic_publish_requests_total",
                "Publish requests (batches) stored in the topic",
            ),
            publish_records: counter("topic_publish_records_total", "Records stored in the topic"),
            publish_bytes: counter(
                "topic_publish_bytes_total",
                "Batch bytes stored in the topic",
            ),
            fetch_records: counter(
                "topic_fetch_records_total",
                "Records of the topic sent by Fetch",
            ),
            fetch_bytes: counter(
                "topic_fetch_bytes_total",
                "Batch bytes of the topic sent by Fetch",
            ),
            disk_used: gauge(
                "topic_disk_used_bytes",
                "Bytes of records in the topic's segments (committed length, all partitions)",
            ),
            disk_allocated: gauge(
                "topic_disk_allocated_bytes",
                "Disk blocks allocated to the topic's files (segments, indexes, metadata), in bytes",
            ),
        }
    }

    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.publish_requests.clone()),
            Box::new(self.publish_records.clone()),
            Box::new(self.publish_bytes.clone()),
            Box::new(self.fetch_records.clone()),
            Box::new(self.fetch_bytes.clone()),
            Box::new(self.disk_used.clone()),
            Box::new(self.disk_allocated.clone()),
        ]
    }

    fn refresh(&self, registry: &Registry, topics: &[Arc<crate::topic::Topic>]) {
        let counters = [
            &self.publish_requests,
            &self.publish_records,
            &self.publish_bytes,
            &self.fetch_records,
            &self.fetch_bytes,
        ];
        for vec in counters {
            vec.reset();
        }
        self.disk_used.reset();
        self.disk_allocated.reset();
        for topic in topics {
            let labels = [topic.name()];
            let c = &topic.counters;
            let values = [
                &c.publish_requests,
                &c.publish_records,
                &c.publish_bytes,
                &c.fetch_records,
                &c.fetch_bytes,
            ];
            for (vec, value) in counters.into_iter().zip(values) {
                vec.with_label_values(&labels)
                    .inc_by(value.load(Ordering::Relaxed));
            }
            let used: u64 = topic
                .layout()
                .partitions
                .iter()
                .map(|p| p.reader().size_bytes())
                .sum();
            self.disk_used
                .with_label_values(&labels)
                .set(i64::try_from(used).unwrap_or(i64::MAX));
            let allocated = allocated_bytes(&registry.topic_dir(topic.name()));
            self.disk_allocated
                .with_label_values(&labels)
                .set(i64::try_from(allocated).unwrap_or(i64::MAX));
        }
    }
}

/// Bytes of disk allocated to the files under `dir` (`st_blocks` × 512, the unit POSIX
/// gives it in), so preallocated but unwritten segment space counts and holes do not.
/// Files that vanish meanwhile (retention, a delete) are skipped.
fn allocated_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut total = 0;
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            total += allocated_bytes(&entry.path());
        } else {
            total += meta.blocks() * 512;
        }
    }
    total
}

/// gRPC status code names, indexed by code, as the `code` label shows them.
const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// `herald_grpc_errors_total{code}`: every error status the server sent, whichever service
/// or route answered. The counters are resolved once, so counting is one atomic add.
#[derive(Clone)]
pub struct GrpcErrors {
    by_code: Arc<[IntCounter]>,
}

impl GrpcErrors {
    fn new(vec: &IntCounterVec) -> GrpcErrors {
        GrpcErrors {
            by_code: GRPC_CODES
                .iter()
                .map(|code| vec.with_label_values(&[code]))
                .collect(),
        }
    }

    /// Counts the status in `grpc-status`, if the headers hold one and it is an error.
    fn count(&self, headers: &http::HeaderMap) -> bool {
        let Some(code) = headers.get("grpc-status") else {
            return false;
        };
        let code = code
            .to_str()
            .ok()
            .and_then(|c| c.parse::<usize>().ok())
            // A code outside the table is still an error: count it as UNKNOWN.
            .map_or(2, |c| if c < GRPC_CODES.len() { c } else { 2 });
        if code != 0 {
            self.by_code[code].inc();
        }
        true
    }
}

/// The tower layer that counts the status of every gRPC response into [`GrpcErrors`]:
/// from the headers of a trailers-only response (most errors), else from the trailers at
/// the end of the body (a stream that ends in an error).
#[derive(Clone)]
pub struct StatusCountLayer {
    errors: GrpcErrors,
}

impl StatusCountLayer {
    pub fn new(metrics: &Metrics) -> StatusCountLayer {
        StatusCountLayer {
            errors: metrics.grpc_errors.clone(),
        }
    }
}

impl<S> tower_layer::Layer<S> for StatusCountLayer {
    type Service = StatusCounted<S>;

    fn layer(&self, inner: S) -> StatusCounted<S> {
        StatusCounted {
            inner,
            errors: self.errors.clone(),
        }
    }
}

#[derive(Clone)]
pub struct StatusCounted<S> {
    inner: S,
    errors: GrpcErrors,
}

impl<S> Service<http::Request<Body>> for StatusCounted<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let response = self.inner.call(request);
        let errors = self.errors.clone();
        Box::pin(async move {
            let response = response.await?;
            if errors.count(response.headers()) {
                return Ok(response);
            }
            Ok(response.map(|body| {
                Body::new(CountedBody {
                    inner: body,
                    errors: Some(errors),
                })
            }))
        })
    }
}

/// A response body whose trailers are counted as they pass.
struct CountedBody {
    inner: Body,
    /// Taken when the trailers are counted.
    errors: Option<GrpcErrors>,
}

impl http_body::Body for CountedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(trailers) = frame.trailers_ref()
            && let Some(errors) = self.errors.take()
        {
            errors.count(trailers);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let registry = PromRegistry::new_custom(Some("herald".into()), None).expect("valid prefix");
        let grpc_errors = IntCounterVec::new(
            Opts::new(
                "grpc_errors_total",
                "gRPC responses with an error status, by status code",
            ),
            &["code"],
        )
        .expect("valid metric");
        let build_info = IntGaugeVec::new(
            Opts::new(
                "build_info",
                "Always 1; the labels say which build of the broker is running",
            ),
            &["version", "profile"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                if cfg!(debug_assertions) {
                    "debug"
                } else {
                    "release"
                },
            ])
            .set(1);
        let process = PromRegistry::new();
        #[cfg(target_os = "linux")]
        process
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("metric names are unique");
        let m = Metrics {
            grpc_errors: GrpcErrors::new(&grpc_errors),
            topic_series: TopicMetrics::new(),
            process,
            publish_requests: IntCounterVec::new(
                Opts::new(
                    "publish_requests_total",
                    "Publish requests (batches) by result",
                ),
                &["result"],
            )
            .expect("valid metric"),
            publish_records: IntCounter::new("publish_records_total", "Records published")
                .expect("valid metric"),
            publish_bytes: IntCounter::new("publish_bytes_total", "Batch bytes published")
                .expect("valid metric"),
            publish_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "publish_latency_seconds",
                    "Time from receiving a publish to acknowledging it (includes the fsync policy)",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )
            .expect("valid metric"),
            fetch_records: IntCounter::new("fetch_records_total", "Records sent by Fetch")
                .expect("valid metric"),
            fetch_bytes: IntCounter::new("fetch_bytes_total", "Batch bytes sent by Fetch")
                .expect("valid metric"),
            open_streams: IntGauge::new("open_streams", "Streaming RPCs open now")
                .expect("valid metric"),
            malformed_ack_ids: IntCounter::new(
                "malformed_ack_ids_total",
                "Malformed ack ids received on Subscribe streams (ignored)",
            )
            .expect("valid metric"),
            auth_failures: IntCounterVec::new(
                Opts::new(
                    "auth_failures_total",
                    "Requests refused as UNAUTHENTICATED and failed TLS handshakes, by reason",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            auth_denied: IntCounter::new(
                "auth_denied_total",
                "Authenticated requests refused as PERMISSION_DENIED by the ACL",
            )
            .expect("valid metric"),
            forwarded_publishes: IntCounter::new(
                "forwarded_publishes_total",
                "Publishes (batches) this node sent on to the node that serves their partition, in cluster mode",
            )
            .expect("valid metric"),
            topics: IntGauge::new("topics", "Topics").expect("valid metric"),
            damaged_topics: IntGauge::new(
                "damaged_topics",
                "Topics not loaded because their metadata or a partition log is damaged",
            )
            .expect("valid metric"),
            partitions: IntGauge::new("partitions", "Partitions across all topics")
                .expect("valid metric"),
            fsyncs: IntCounter::new(
                "fsync_total",
                "Log flushes (msync/fsync) since start, all partitions",
            )
            .expect("valid metric"),
            publish_duplicates: IntCounter::new(
                "publish_duplicates_total",
                "Batches of idempotent producers sent again and answered with their first offsets instead of being stored twice",
            )
            .expect("valid metric"),
            fsync_seconds: prometheus::Counter::new(
                "fsync_seconds_total",
                "Time spent in log flushes since start, all partitions",
            )
            .expect("valid metric"),
            group_task_failures: IntCounter::new(
                "group_task_failures_total",
                "Consumer-group tasks that panicked and were restarted from their persisted state",
            )
            .expect("valid metric"),
            group_offsets_reset: IntCounter::new(
                "group_offsets_reset_total",
                "Group partition positions found past the end of their log and brought down to it",
            )
            .expect("valid metric"),
            groups: GroupMetrics::new(),
            scrape: Mutex::new(()),
            registry,
        };
        for c in [
            Box::new(m.publish_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.publish_records.clone()),
            Box::new(m.publish_bytes.clone()),
            Box::new(m.publish_latency.clone()),
            Box::new(m.fetch_records.clone()),
            Box::new(m.fetch_bytes.clone()),
            Box::new(m.open_streams.clone()),
            Box::new(m.malformed_ack_ids.clone()),
            Box::new(m.auth_failures.clone()),
            Box::new(m.auth_denied.clone()),
            Box::new(m.forwarded_publishes.clone()),
            Box::new(m.topics.clone()),
            Box::new(m.damaged_topics.clone()),
            Box::new(m.partitions.clone()),
            Box::new(m.fsyncs.clone()),
            Box::new(m.publish_duplicates.clone()),
            Box::new(m.fsync_seconds.clone()),
            Box::new(m.group_task_failures.clone()),
            Box::new(m.group_offsets_reset.clone()),
        ]
        .into_iter()
        .chain(m.groups.collectors())
        .chain(m.topic_series.collectors())
        .chain([
            Box::new(grpc_errors) as Box<dyn prometheus::core::Collector>,
            Box::new(build_info),
        ]) {
            m.registry.register(c).expect("metric names are unique");
        }
        Arc::new(m)
    }

    /// The text exposition, after refreshing the values read from the registry. Before
    /// the data directory is loaded (`loaded` is `None`) only the series that do not
    /// depend on it are filled in.
    pub fn render(&self, loaded: Option<(&Registry, &GroupRegistry)>) -> String {
        let _scrape = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((registry, groups)) = loaded {
            self.refresh(registry, groups);
        }
        let mut families = self.registry.gather();
        families.extend(self.process.gather());
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&families, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    fn refresh(&self, registry: &Registry, groups: &GroupRegistry) {
        let topics = registry.list();
        self.topics.set(topics.len() as i64);
        self.damaged_topics.set(registry.damaged().len() as i64);
        self.partitions.set(registry.partitions_total() as i64);
        let (mut flushes, mut seconds, mut duplicates) = (0u64, 0f64, 0u64);
        for topic in &topics {
            for p in &topic.layout().partitions {
                let (f, s) = p.flush_stats();
                flushes += f;
                seconds += s;
                duplicates += p.duplicate_batches();
            }
        }
        self.publish_duplicates.reset();
        self.publish_duplicates.inc_by(duplicates);
        // The writers keep the running totals; mirror them into the counters. Totals only
        // grow, except when a topic is deleted, which a counter reset tells scrapers.
        self.fsyncs.reset();
        self.fsyncs.inc_by(flushes);
        self.fsync_seconds.reset();
        self.fsync_seconds.inc_by(seconds);
        self.group_task_failures.reset();
        self.group_task_failures.inc_by(groups.task_failures());
        self.group_offsets_reset.reset();
        self.group_offsets_reset.inc_by(groups.offsets_reset());
        self.topic_series.refresh(registry, &topics);
        self.groups.refresh(groups);
    }
}

/// Where the broker is in its life, as `/readyz` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Opening the data directory: recovering partitions, loading groups.
    Loading = 0,
    /// Topics and groups loaded, gRPC listening.
    Ready = 1,
    /// Shutting down: no new connections.
    Stopping = 2,
}

/// What the operator's endpoint reads: the phase, and the registries once loaded.
pub struct Ops {
    phase: AtomicU8,
    loaded: OnceLock<(Arc<Registry>, Arc<GroupRegistry>)>,
}

impl Ops {
    pub fn new() -> Arc<Ops> {
        Arc::new(Ops {
            phase: AtomicU8::new(Phase::Loading as u8),
            loaded: OnceLock::new(),
        })
    }

    pub fn loaded(&self, registry: Arc<Registry>, groups: Arc<GroupRegistry>) {
        let _ = self.loaded.set((registry, groups));
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Release);
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Loading,
            1 => Phase::Ready,
            _ => Phase::Stopping,
        }
    }
}

/// Serves `GET /metrics`, `/healthz` and `/readyz` on `listener` until `shutdown`
/// resolves. It starts before the data directory is opened, so a supervisor sees the
/// process alive (`/healthz`) while a long recovery runs, and not ready (`/readyz`) until
/// it is done.
pub async fn serve<L>(
    listener: L,
    metrics: Arc<Metrics>,
    ops: Arc<Ops>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    use axum::http::StatusCode;
    let ready_ops = ops.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let (metrics, ops) = (metrics.clone(), ops.clone());
                async move {
                    // Reading disk use walks the data directory: off the runtime's threads.
                    tokio::task::spawn_blocking(move || {
                        let loaded = ops.loaded.get().map(|(r, g)| (&**r, &**g));
                        metrics.render(loaded)
                    })
                    .await
                    .unwrap_or_default()
                }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/readyz",
            axum::routing::get(move || {
                let phase = ready_ops.phase();
                async move {
                    match phase {
                        Phase::Ready => (StatusCode::OK, "ready\n"),
                        Phase::Loading => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "not ready: loading topics and groups\n",
                        ),
                        Phase::Stopping => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "not ready: shutting down\n",
                        ),
                    }
                }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// The address a metrics listener is bound to, for logs.
pub fn describe(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "disabled".into(), |a| format!("http://{a}/metrics"))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let status = response[9..12].parse().unwrap();
        let body = response.split_once("\r\n\r\n").unwrap().1.to_owned();
        (status, body)
    }

    /// Before the data directory is loaded (a long recovery), the endpoint already says
    /// the process is alive and not ready, and serves the metrics that need no registry.
    #[tokio::test]
    async fn alive_and_not_ready_while_loading_then_ready_then_stopping() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ops = Ops::new();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, Metrics::new(), ops.clone(), async {
            let _ = stopped.await;
        }));
        assert_eq!(get(addr, "/healthz").await, (200, "ok\n".into()));
        let (status, body) = get(addr, "/readyz").await;
        assert_eq!(
            (status, body.as_str()),
            (503, "not ready: loading topics and groups\n")
        );
        let (status, metrics) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(metrics.contains("herald_build_info{"), "{metrics}");
        assert!(
            !metrics.contains("herald_topic_disk_used_bytes{"),
            "{metrics}"
        );

        ops.set_phase(Phase::Ready);
        assert_eq!(get(addr, "/readyz").await, (200, "ready\n".into()));
        ops.set_phase(Phase::Stopping);
        let (status, body) = get(addr, "/readyz").await;
        assert_eq!((status, body.as_str()), (503, "not ready: shutting down\n"));
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }
}
