//! Prometheus metrics and the `/metrics` HTTP endpoint.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry as PromRegistry, TextEncoder,
};

use crate::groups::GroupRegistry;
use crate::registry::Registry;

/// Labels of the per-group series. Bounded: a broker holds at most `MAX_GROUPS` groups.
const GROUP_LABELS: &[&str] = &["topic", "group"];

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
        for group in groups.list(None) {
            let labels = [group.topic_name.as_str(), group.name.as_str()];
            let counts = group.counts();
            let (description, _, _) = group.describe();
            let (mut redeliveries, mut dead_letters, mut lag) = (0u64, 0u64, 0u64);
            for p in &description.partitions {
                redeliveries += p.redelivered_count;
                dead_letters += p.dead_lettered_count;
                // Read after the committed offset, so the end is never behind it.
                let end = group
                    .topic
                    .partitions
                    .get(p.partition.index())
                    .map_or(0, |partition| partition.reader().high_watermark());
                lag += end.saturating_sub(p.committed.0);
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

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let registry = PromRegistry::new_custom(Some("herald".into()), None).expect("valid prefix");
        let m = Metrics {
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
        {
            m.registry.register(c).expect("metric names are unique");
        }
        Arc::new(m)
    }

    /// The text exposition, after refreshing the values read from the registry.
    pub fn render(&self, registry: &Registry, groups: &GroupRegistry) -> String {
        let _scrape = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        let topics = registry.list();
        self.topics.set(topics.len() as i64);
        self.damaged_topics.set(registry.damaged().len() as i64);
        self.partitions.set(registry.partitions_total() as i64);
        let (mut flushes, mut seconds, mut duplicates) = (0u64, 0f64, 0u64);
        for topic in &topics {
            for p in &topic.partitions {
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
        self.groups.refresh(groups);
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve<L>(
    listener: L,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    groups: Arc<GroupRegistry>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (metrics, registry, groups) = (metrics.clone(), registry.clone(), groups.clone());
            async move { metrics.render(&registry, &groups) }
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
