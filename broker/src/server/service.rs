//! The `herald.v1.Herald` gRPC service: admin, publish and fetch; the group RPCs are in
//! `groups`.

use crate::cluster::Cluster;
use crate::cluster::coordinator::{Coordinator, Route};
use herald_proto::peer::forwarded_group_call::Call as GroupCall;
use herald_proto::peer::group_call_reply::Reply as GroupReply;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use futures::future::Either;
use futures::stream::{FuturesUnordered, Stream, StreamExt};
use herald_proto::v1::{self, position::Kind as PositionKind, publish_request::Payload};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::auth::Access;
use super::metrics::Metrics;
use super::request_limit::{Oversized, OversizedRequests};
use crate::auth::{Operation, Resource};
use crate::clock::now_ms;
use crate::config::FsyncSetting;
use crate::error::{BrokerError, Limit};
use crate::groups::GroupRegistry;
use crate::registry::Registry;
use crate::storage::{BatchBuilder, Record, ValidatedBatch, batch};
use crate::topic::{Topic, TopicAlter, TopicSettings};

/// Responses a stream may have queued for tonic to send: with `FETCH_MAX_BYTES_CAP` per
/// response, this bounds one fetch stream's memory.
const STREAM_QUEUE: usize = 4;
/// Fetch responses queued for tonic per stream. One: a response is built when the one
/// before it has been taken, so a stream whose reader stops holds at most the response in
/// the queue, the one being built and the ones tonic and h2 hold (`HELD_RESPONSES`).
const FETCH_QUEUE: usize = 1;
/// Largest fetch response the broker builds, whatever the client asks: below the 4 MiB
/// default receive limit of gRPC clients, so a generated client needs no tuning.
pub const FETCH_MAX_BYTES_CAP: usize = 3 * 1024 * 1024;
/// Publishes of one PublishStream that may be awaiting their commit at once.
const PUBLISH_STREAM_IN_FLIGHT: usize = 1024;

pub(super) type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;
type PendingReply = Pin<
    Box<dyn std::future::Future<Output = (u64, Result<v1::PublishResponse, BrokerError>)> + Send>,
>;

pub struct HeraldService {
    registry: Arc<Registry>,
    groups: Arc<GroupRegistry>,
    metrics: Arc<Metrics>,
    /// Flips to true when the broker shuts down; open streams end with UNAVAILABLE.
    shutdown: watch::Receiver<bool>,
    /// Open streaming RPCs per client connection.
    streams: Arc<DashMap<SocketAddr, u32>>,
    /// The broker-wide budget, in bytes, for responses produced ahead of HTTP/2 flow
    /// control (`response_buffer_bytes`); see [`response_cost`].
    response_budget: Arc<Semaphore>,
    /// Cluster mode; `None` on a single node, which then never consults it.
    cluster: Option<Arc<Cluster>>,
    /// Cluster mode: where the groups of replicated topics run.
    coordinator: Option<Arc<Coordinator>>,
    /// The gRPC address clients reach this broker at, for ClusterStatus.
    client_addr: Option<SocketAddr>,
}

/// Counts a stream against its connection's limit until dropped.
struct StreamSlot {
    streams: Arc<DashMap<SocketAddr, u32>>,
    peer: Option<SocketAddr>,
    metrics: Arc<Metrics>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Some(peer) = self.peer {
            self.streams.remove_if_mut(&peer, |_, n| {
                *n -= 1;
                *n == 0
            });
        }
        self.metrics.open_streams.dec();
    }
}

impl HeraldService {
    pub fn new(
        registry: Arc<Registry>,
        groups: Arc<GroupRegistry>,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let response_budget = Arc::new(Semaphore::new(registry.config().response_buffer_bytes));
        HeraldService {
            registry,
            groups,
            metrics,
            response_budget,
            shutdown,
            streams: Arc::new(DashMap::new()),
            cluster: None,
            coordinator: None,
            client_addr: None,
        }
    }

    /// Serves in cluster mode when `cluster` is set; `client_addr` is the address the
    /// broker is bound to.
    pub fn with_cluster(mut self, cluster: Option<Arc<Cluster>>, client_addr: SocketAddr) -> Self {
        self.cluster = cluster;
        self.client_addr = Some(client_addr);
        self
    }

    /// Runs the groups of replicated topics through `coordinator` (cluster mode).
    pub fn with_coordinator(mut self, coordinator: Option<Arc<Coordinator>>) -> Self {
        self.coordinator = coordinator;
        self
    }

    /// The coordinator, when `topic`'s groups go through the cluster.
    fn managing(&self, topic: &str) -> Option<&Arc<Coordinator>> {
        self.coordinator.as_ref().filter(|c| c.manages(topic))
    }

    /// A group admin call: run here when this node runs the group (or the topic's groups
    /// are local), else sent on to the node that does. `access` is checked here; a
    /// `forwarded` call was checked by the node the client called.
    async fn group_admin(
        &self,
        access: &Access,
        call: GroupCall,
        forwarded: bool,
    ) -> Result<GroupReply, BrokerError> {
        if !forwarded {
            super::groups::authorize_call(access, &call)?;
        }
        let (topic, group) = super::groups::call_names(&call);
        let (topic, group) = (topic.to_owned(), group.to_owned());
        let managing = self.managing(&topic).cloned();
        if let (Some(coordinator), Some(cluster)) = (&managing, &self.cluster)
            && let Route::Remote(node) = coordinator.route(&topic, &group, forwarded).await?
        {
            return cluster.forward_group_call(node, call).await;
        }
        let changes = super::groups::call_changes(&call);
        let mut reply = super::groups::run_call(&self.groups, call).await?;
        if let (Some(coordinator), Some(cluster)) = (managing, &self.cluster) {
            if changes {
                coordinator.checkpoint_now(&topic, &group).await?;
            }
            if let GroupReply::Describe(v1::DescribeGroupResponse {
                group: Some(description),
            }) = &mut reply
            {
                description.coordinator = cluster.node_id();
            }
        }
        Ok(reply)
    }

    fn check_running(&self) -> Result<(), BrokerError> {
        if *self.shutdown.borrow() {
            return Err(BrokerError::ShuttingDown);
        }
        Ok(())
    }

    /// Takes a stream slot for the caller's connection, or RESOURCE_EXHAUSTED.
    fn open_stream<T>(&self, request: &Request<T>) -> Result<StreamSlot, BrokerError> {
        self.check_running()?;
        let peer = request.remote_addr();
        let max = self.registry.config().max_streams_per_connection;
        if let Some(peer) = peer {
            let mut open = self.streams.entry(peer).or_insert(0);
            if *open >= max {
                return Err(BrokerError::limit(
                    Limit::StreamsPerConnection,
                    *open as usize + 1,
                    max as usize,
                ));
            }
            *open += 1;
        }
        self.metrics.open_streams.inc();
        Ok(StreamSlot {
            streams: self.streams.clone(),
            peer,
            metrics: self.metrics.clone(),
        })
    }

    /// Serves a Fetch from this node's log of the partition. `slot` is the stream's place
    /// in its connection's limit (none for a Fetch another node forwarded, which counts
    /// there). A forwarded Fetch for a partition this node does not serve is refused.
    fn fetch_stream(
        &self,
        slot: Option<StreamSlot>,
        r: v1::FetchRequest,
        forwarded: bool,
    ) -> Result<BoxStream<v1::FetchResponse>, Status> {
        let topic = self.registry.get(&r.topic)?;
        let partition = topic.partition(r.partition)?;
        if forwarded
            && let Some(cluster) = &self.cluster
            && let Some(nodes) = cluster.read_nodes(&r.topic, &partition)?
        {
            return Err(cluster
                .refuse_forwarded(&r.topic, &partition, &nodes)
                .into());
        }
        let reader = partition.reader().clone();
        let mut high_watermark = partition.watch_high_watermark();
        let start = match r.start {
            None => resolve_start(&reader, None)?,
            Some(v1::Position { kind: None }) => {
                return Err(BrokerError::InvalidRequest(
                    "`start` is set but holds no position: set earliest, latest, offset or timestamp_ms".into(),
                )
                .into());
            }
            Some(v1::Position { kind }) => resolve_start(&reader, kind)?,
        };
        let max_bytes = match r.max_bytes as usize {
            0 => crate::config::DEFAULT_FETCH_MAX_BYTES,
            n => n.min(FETCH_MAX_BYTES_CAP),
        };
        let max_wait = Duration::from_millis(u64::from(r.max_wait_ms));
        let end_at_request = reader.high_watermark();
        let (tx, rx) = mpsc::channel::<FetchItem>(FETCH_QUEUE);
        let metrics = self.metrics.clone();
        let budget = self.response_budget.clone();
        let budget_bytes = self.registry.config().response_buffer_bytes;
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            // Holding the topic keeps the partition alive while the stream runs.
            let mut at = start;
            let mut sent_any = false;
            let mut waited = false;
            // Without follow, the stream ends at the end offset the request saw, or, if it
            // had to wait for a first record, at the end offset when that record arrived.
            let mut end = end_at_request;
            loop {
                if *shutdown.borrow() {
                    let _ = tx.send(Err(BrokerError::ShuttingDown.into())).await;
                    break;
                }
                // A full response needs room in the broker-wide budget, taken while the
                // chunk is only a view of the mapping. Without room (other streams'
                // readers lag and their responses still wait on flow control), the
                // stream goes on with small responses: readers that keep up are never
                // stopped by those that do not.
                let mut permit = None;
                let mut record_bytes_max = usize::MAX;
                let read = reader.read(at, max_bytes).and_then(|chunk| match chunk {
                    Some(chunk) if chunk.bytes.len() > FETCH_SMALL_BYTES => {
                        let cost = response_cost(&chunk, r.raw_batches).min(budget_bytes);
                        match budget.clone().try_acquire_many_owned(cost as u32) {
                            Ok(p) => {
                                permit = Some(p);
                                Ok(Some(chunk))
                            }
                            Err(_) => {
                                record_bytes_max = FETCH_SMALL_BYTES;
                                reader.read(at, FETCH_SMALL_BYTES)
                            }
                        }
                    }
                    other => Ok(other),
                });
                let response = match read {
                    Ok(Some(chunk)) => {
                        let range = wanted_range(at, r.follow, end);
                        let response = build_fetch_response(
                            &chunk,
                            range,
                            r.raw_batches,
                            record_bytes_max,
                            (&metrics, &topic.counters),
                            reader.start_offset(),
                        );
                        at = response.next_offset;
                        response
                    }
                    Ok(None) => {
                        let done =
                            !r.follow && (sent_any || waited || max_wait.is_zero() || at < end);
                        if done {
                            if !sent_any {
                                let _ = tx.send(Ok((empty_response(&reader, at), None))).await;
                            }
                            break;
                        }
                        // Wait for the watermark to move past `at`, a heartbeat, or shutdown.
                        waited = true;
                        let moved = async { high_watermark.wait_for(|hw| *hw > at).await.is_ok() };
                        let timed = async {
                            if max_wait.is_zero() {
                                std::future::pending::<()>().await
                            } else {
                                tokio::time::sleep(max_wait).await
                            }
                        };
                        tokio::select! {
                            moved = moved => {
                                if moved {
                                    end = reader.high_watermark();
                                    continue;
                                }
                                // The writer is gone: the topic was deleted, or the broker
                                // is stopping.
                                let error = if *shutdown.borrow() {
                                    BrokerError::ShuttingDown
                                } else {
                                    BrokerError::TopicDeleted { topic: r.topic.clone() }
                                };
                                let _ = tx.send(Err(error.into())).await;
                                break;
                            }
                            _ = timed => {
                                if r.follow {
                                    if tx.send(Ok((empty_response(&reader, at), None))).await.is_err() {
                                        break;
                                    }
                                    sent_any = true;
                                }
                                continue;
                            }
                            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => continue,
                            _ = tx.closed() => break,
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(BrokerError::from(e).into())).await;
                        break;
                    }
                };
                if tx.send(Ok((response, permit))).await.is_err() {
                    break;
                }
                sent_any = true;
                if !r.follow && at >= end {
                    break;
                }
            }
        });
        Ok(Box::pin(BudgetedResponses {
            rx,
            held: VecDeque::with_capacity(HELD_RESPONSES + 1),
        }))
    }

    /// Validates a publish, picks its partition and queues it there; the returned future
    /// resolves with the reply once the batch is committed. In cluster mode, a publish for
    /// a partition another node serves is sent on to that node, unless it was forwarded
    /// here already (`forwarded`), which is then refused.
    async fn publish_enqueue(
        &self,
        request: v1::PublishRequest,
        forwarded: bool,
    ) -> Result<
        impl std::future::Future<Output = Result<v1::PublishResponse, BrokerError>> + Send + use<>,
        BrokerError,
    > {
        let started = Instant::now();
        let otel = self.registry.otel().cloned();
        let wall_started = otel.as_ref().map(|_| std::time::SystemTime::now());
        let queued = async {
            let topic = self.registry.get(&request.topic)?;
            let batch = self.batch_for(&topic, request.payload, request.producer)?;
            if let Some(stamp) = batch.producer() {
                self.registry.producer_ids().check(stamp)?;
                if request.partition.is_none() && batch.first_key().is_none() {
                    return Err(BrokerError::InvalidRequest(
                        "an idempotent publish names its partition or gives its first record a key: round-robin placement would scatter the producer's sequence".into(),
                    ));
                }
            }
            if let Some(id) = batch.first_msg_id()
                && id.len() > crate::storage::msg_ids::MAX_MSG_ID_BYTES
            {
                return Err(BrokerError::InvalidRequest(format!(
                    "the herald-msg-id header is {} bytes; at most {} are allowed",
                    id.len(),
                    crate::storage::msg_ids::MAX_MSG_ID_BYTES
                )));
            }
            // A keyless publish with a message id is placed by the id, so its retries reach
            // the partition whose window remembers it.
            let placement = batch.first_key().or(batch.first_msg_id());
            let partition = topic.pick_partition(request.partition, placement)?;
            let (id, records, bytes) = (partition.id, batch.header().record_count, batch.len());
            if let Some(cluster) = &self.cluster
                && let Some(nodes) = cluster.serving_nodes(topic.name(), &partition, true).await?
            {
                if forwarded {
                    return Err(cluster.refuse_forwarded(topic.name(), &partition, &nodes));
                }
                // Sent on as the checked storage batch, its partition fixed: the serving
                // node checks it again but places nothing.
                let cluster_topic = topic.name().to_owned();
                let publish = v1::PublishRequest {
                    topic: topic.name().to_owned(),
                    partition: Some(partition.id),
                    producer: None,
                    payload: Some(Payload::StorageBatch(batch.bytes().clone())),
                };
                let cluster = cluster.clone();
                self.metrics.forwarded_publishes.inc();
                // A replica sends a publish to its group's leader; if the group elects
                // another while the call is out, the answer is UNAVAILABLE at once (outcome
                // unknown, as a timeout's), so the client retries to the new leader.
                let group = partition.replicated_log().cloned();
                let remote = async move {
                    let forward = cluster.forward_publish_to_any(&nodes, publish);
                    let answer = match (group, nodes.first().copied()) {
                        (Some(group), Some(leader)) => tokio::select! {
                            biased;
                            answer = forward => answer?,
                            () = group.leader_moved(leader) => {
                                return Err(BrokerError::ClusterUnavailable(format!(
                                    "topic {} partition {id}: leadership moved from node {leader} while the publish was sent to it; it may or may not be stored (retry, or publish idempotently)",
                                    cluster_topic
                                )));
                            }
                        },
                        _ => forward.await?,
                    };
                    Ok(crate::storage::Appended {
                        base_offset: answer.base_offset,
                        last_offset: answer.last_offset,
                    })
                };
                // Counted as records, and traced, where they are stored, not here too.
                let stored_here = false;
                return Ok((id, records, bytes, Either::Right(Box::pin(remote)), topic.clone(), stored_here, None));
            }
            let parent = otel
                .as_ref()
                .and_then(|_| crate::otel::first_traceparent(batch.as_valid().bytes()));
            let committed = partition.enqueue(batch).await?;
            Ok::<_, BrokerError>((id, records, bytes, Either::Left(committed), topic.clone(), true, parent))
        }
        .await;
        let metrics = self.metrics.clone();
        let count = move |ok: bool| {
            let label = if ok { "ok" } else { "error" };
            metrics.publish_requests.with_label_values(&[label]).inc();
            metrics
                .publish_latency
                .observe(started.elapsed().as_secs_f64());
        };
        let (partition, records, bytes, committed, topic, stored_here, parent) = match queued {
            Ok(q) => q,
            Err(e) => {
                count(false);
                return Err(e);
            }
        };
        let metrics = self.metrics.clone();
        Ok(async move {
            let appended = committed.await;
            count(appended.is_ok());
            let appended = appended?;
            if stored_here {
                metrics.publish_records.inc_by(u64::from(records));
                metrics.publish_bytes.inc_by(bytes as u64);
                topic.counters.published(u64::from(records), bytes as u64);
            }
            if stored_here && let (Some(otel), Some(started)) = (otel, wall_started) {
                otel.publish(
                    parent,
                    crate::otel::PublishSpan {
                        topic: topic.name(),
                        partition,
                        base_offset: appended.base_offset,
                        last_offset: appended.last_offset,
                        records,
                        started,
                    },
                );
            }
            Ok(v1::PublishResponse {
                partition,
                base_offset: appended.base_offset,
                last_offset: appended.last_offset,
            })
        })
    }

    /// The storage batch for a publish payload: the client's pre-encoded batch checked as it
    /// is, or the plain records encoded into one. Either way every limit is enforced here.
    fn batch_for(
        &self,
        topic: &Topic,
        payload: Option<Payload>,
        producer: Option<v1::ProducerSequence>,
    ) -> Result<ValidatedBatch, BrokerError> {
        let producer = producer.map(stamp_of).transpose()?;
        let config = self.registry.config();
        let max_message = topic.layout().settings.max_message_bytes;
        // Plain records are checked against the limit as they are encoded (key + value +
        // headers); a pre-encoded batch by each record's encoded length.
        let (bytes, pre_encoded) = match payload {
            None => {
                return Err(BrokerError::InvalidRequest(
                    "the publish carries no records: set `records` or `storage_batch`".into(),
                ));
            }
            Some(Payload::StorageBatch(_)) if producer.is_some() => {
                return Err(BrokerError::InvalidRequest(
                    "a storage_batch carries its producer sequence in its producer block; `producer` is for the records form".into(),
                ));
            }
            Some(Payload::StorageBatch(bytes)) => (bytes, true),
            Some(Payload::Records(records)) => (
                encode_records(
                    &records.records,
                    max_message,
                    config.max_batch_records,
                    producer,
                )?,
                false,
            ),
        };
        if bytes.len() > config.max_batch_bytes {
            return Err(BrokerError::limit(
                Limit::BatchBytes,
                bytes.len(),
                config.max_batch_bytes,
            ));
        }
        let batch = ValidatedBatch::new(bytes, config.max_batch_bytes)
            .map_err(BrokerError::MalformedBatch)?;
        if batch.header().record_count as usize > config.max_batch_records {
            return Err(BrokerError::limit(
                Limit::BatchRecords,
                batch.header().record_count as usize,
                config.max_batch_records,
            ));
        }
        if pre_encoded && batch.largest_record_bytes() > max_message {
            return Err(BrokerError::limit(
                Limit::MessageBytes { record: None },
                batch.largest_record_bytes(),
                max_message,
            ));
        }
        Ok(batch)
    }
}

/// Encodes proto records into one storage batch, stamping a zero timestamp with now.
fn encode_records(
    records: &[v1::Record],
    max_message: usize,
    max_records: usize,
    producer: Option<batch::ProducerStamp>,
) -> Result<Bytes, BrokerError> {
    if records.is_empty() {
        return Err(BrokerError::InvalidRequest(
            "the publish carries no records".into(),
        ));
    }
    if records.len() > max_records {
        return Err(BrokerError::limit(
            Limit::BatchRecords,
            records.len(),
            max_records,
        ));
    }
    let now = now_ms();
    let mut size = 0;
    for (i, r) in records.iter().enumerate() {
        let record_bytes = r.key.as_ref().map_or(0, Bytes::len)
            + r.value.len()
            + r.headers
                .iter()
                .map(|h| h.key.len() + h.value.len())
                .sum::<usize>();
        if record_bytes > max_message {
            return Err(BrokerError::limit(
                Limit::MessageBytes { record: Some(i) },
                record_bytes,
                max_message,
            ));
        }
        size += record_bytes + 16 + 4 * r.headers.len();
    }
    let capacity = batch::HEADER_BYTES + batch::PRODUCER_BYTES + size;
    let mut builder = match producer {
        Some(stamp) => BatchBuilder::with_producer(capacity, stamp),
        None => BatchBuilder::with_capacity(capacity),
    };
    let mut headers: Vec<(&str, &[u8])> = Vec::new();
    for r in records {
        headers.clear();
        headers.extend(r.headers.iter().map(|h| (h.key.as_str(), h.value.as_ref())));
        builder.push(&Record {
            timestamp: if r.timestamp_ms == 0 {
                now
            } else {
                r.timestamp_ms
            },
            key: r.key.as_deref(),
            value: &r.value,
            headers: &headers,
        });
    }
    Ok(Bytes::from(builder.finish()))
}

/// The producer block of a records-form idempotent publish.
fn stamp_of(p: v1::ProducerSequence) -> Result<batch::ProducerStamp, BrokerError> {
    if p.producer_id == 0 {
        return Err(BrokerError::InvalidRequest(
            "producer.producer_id 0 is reserved: get an id from InitProducer".into(),
        ));
    }
    let epoch = u16::try_from(p.epoch).map_err(|_| {
        BrokerError::InvalidRequest(format!(
            "producer.epoch {} is above the largest epoch, 65535",
            p.epoch
        ))
    })?;
    Ok(batch::ProducerStamp {
        producer_id: p.producer_id,
        epoch,
        base_sequence: p.base_sequence,
    })
}

/// The API's name for a configured fsync policy (the CLI uses it too).
impl From<FsyncSetting> for v1::FsyncPolicy {
    fn from(fsync: FsyncSetting) -> Self {
        match fsync {
            FsyncSetting::Always => v1::FsyncPolicy::Always,
            FsyncSetting::Interval => v1::FsyncPolicy::Interval,
            FsyncSetting::Never => v1::FsyncPolicy::Never,
        }
    }
}

pub(super) fn describe(topic: &Topic) -> v1::TopicDescription {
    let layout = topic.layout();
    let s = &layout.settings;
    v1::TopicDescription {
        name: topic.name().to_owned(),
        partition_count: layout.meta.partitions,
        config: Some(v1::TopicConfig {
            retention_ms: Some(s.retention_ms),
            retention_bytes: Some(s.retention_bytes),
            segment_bytes: Some(s.segment_bytes),
            fsync_policy: v1::FsyncPolicy::from(s.fsync) as i32,
            fsync_interval_ms: Some(s.fsync_interval_ms.min(u64::from(u32::MAX)) as u32),
            max_message_bytes: Some(s.max_message_bytes.min(u32::MAX as usize) as u32),
            dedup_window_ms: Some(s.dedup_window_ms),
        }),
        partitions: layout
            .partitions
            .iter()
            .map(|p| {
                let r = p.reader();
                v1::PartitionDescription {
                    partition: p.id,
                    start_offset: r.start_offset(),
                    end_offset: r.high_watermark(),
                    size_bytes: r.size_bytes(),
                    segment_count: r.segment_count() as u32,
                    allocated_bytes: r.allocated_bytes(),
                }
            })
            .collect(),
    }
}

fn settings_from_proto(config: Option<v1::TopicConfig>) -> Result<TopicSettings, BrokerError> {
    let Some(c) = config else {
        return Ok(TopicSettings::default());
    };
    let fsync = match v1::FsyncPolicy::try_from(c.fsync_policy) {
        Ok(v1::FsyncPolicy::Unspecified) => None,
        Ok(v1::FsyncPolicy::Always) => Some(FsyncSetting::Always),
        Ok(v1::FsyncPolicy::Interval) => Some(FsyncSetting::Interval),
        Ok(v1::FsyncPolicy::Never) => Some(FsyncSetting::Never),
        Err(_) => {
            return Err(BrokerError::InvalidSettings(format!(
                "unknown fsync_policy {}",
                c.fsync_policy
            )));
        }
    };
    Ok(TopicSettings {
        retention_ms: c.retention_ms,
        retention_bytes: c.retention_bytes,
        segment_bytes: c.segment_bytes,
        fsync,
        fsync_interval_ms: c.fsync_interval_ms.map(u64::from),
        max_message_bytes: c.max_message_bytes.map(|v| v as usize),
        dedup_window_ms: c.dedup_window_ms,
    })
}

/// Runs blocking admin work (file creation, fsync) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BrokerError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|cause| BrokerError::TaskFailed {
            what: "admin task failed",
            cause,
        })?
        .map_err(Status::from)
}

#[tonic::async_trait]
impl v1::herald_server::Herald for HeraldService {
    async fn create_topic(
        &self,
        request: Request<v1::CreateTopicRequest>,
    ) -> Result<Response<v1::CreateTopicResponse>, Status> {
        self.check_running()?;
        let access = Access::of(&request);
        let r = request.into_inner();
        access.authorize(Operation::Create, Resource::topic(&r.name))?;
        let settings = settings_from_proto(r.config)?;
        if let Some(cluster) = &self.cluster {
            let topic =
                super::cluster_status::create_topic(cluster, &self.registry, r, settings).await?;
            return Ok(Response::new(topic));
        }
        if r.replication_factor.unwrap_or(0) > 1 {
            return Err(BrokerError::InvalidSettings(format!(
                "replication_factor {} needs a cluster: a single node holds one copy of each partition",
                r.replication_factor.unwrap_or(0)
            ))
            .into());
        }
        let registry = self.registry.clone();
        let topic = blocking(move || registry.create(&r.name, r.partitions, settings)).await?;
        Ok(Response::new(v1::CreateTopicResponse {
            topic: Some(describe(&topic)),
        }))
    }

    async fn delete_topic(
        &self,
        request: Request<v1::DeleteTopicRequest>,
    ) -> Result<Response<v1::DeleteTopicResponse>, Status> {
        self.check_running()?;
        let access = Access::of(&request);
        let name = request.into_inner().name;
        access.authorize(Operation::Delete, Resource::topic(&name))?;
        if let Some(cluster) = &self.cluster {
            cluster.delete_topic(&name).await?;
            return Ok(Response::new(v1::DeleteTopicResponse {}));
        }
        let registry = self.registry.clone();
        blocking(move || registry.delete(&name)).await?;
        Ok(Response::new(v1::DeleteTopicResponse {}))
    }

    async fn alter_topic(
        &self,
        request: Request<v1::AlterTopicRequest>,
    ) -> Result<Response<v1::AlterTopicResponse>, Status> {
        self.check_running()?;
        let access = Access::of(&request);
        let r = request.into_inner();
        access.authorize(Operation::Alter, Resource::topic(&r.name))?;
        let change = TopicAlter {
            retention_ms: r.retention_ms,
            retention_bytes: r.retention_bytes,
            max_message_bytes: r.max_message_bytes.map(|v| v as usize),
            partitions: r.partitions,
        };
        if let Some(cluster) = &self.cluster {
            let reply =
                super::cluster_status::alter_topic(cluster, &self.registry, &r.name, &change)
                    .await?;
            return Ok(Response::new(reply));
        }
        let registry = self.registry.clone();
        let topic = blocking(move || registry.alter(&r.name, &change)).await?;
        Ok(Response::new(v1::AlterTopicResponse {
            topic: Some(describe(&topic)),
        }))
    }

    async fn list_topics(
        &self,
        request: Request<v1::ListTopicsRequest>,
    ) -> Result<Response<v1::ListTopicsResponse>, Status> {
        // Only the topics the caller may describe: a principal learns no other's names.
        let access = Access::of(&request);
        if let Access::Unmarked = access {
            access.authorize(Operation::Describe, Resource::cluster())?;
        }
        Ok(Response::new(v1::ListTopicsResponse {
            topics: self
                .registry
                .list()
                .iter()
                .filter(|t| access.may(Operation::Describe, Resource::topic(t.name())))
                .map(|t| v1::TopicSummary {
                    name: t.name().to_owned(),
                    partition_count: t.partition_count(),
                })
                .collect(),
        }))
    }

    async fn describe_topic(
        &self,
        request: Request<v1::DescribeTopicRequest>,
    ) -> Result<Response<v1::DescribeTopicResponse>, Status> {
        let access = Access::of(&request);
        let name = request.into_inner().name;
        access.authorize(Operation::Describe, Resource::topic(&name))?;
        let topic = self.registry.get(&name)?;
        Ok(Response::new(v1::DescribeTopicResponse {
            topic: Some(describe(&topic)),
        }))
    }

    async fn publish(
        &self,
        request: Request<v1::PublishRequest>,
    ) -> Result<Response<v1::PublishResponse>, Status> {
        Ok(Response::new(self.publish_unary(request).await?))
    }

    async fn init_producer(
        &self,
        request: Request<v1::InitProducerRequest>,
    ) -> Result<Response<v1::InitProducerResponse>, Status> {
        self.check_running()?;
        // Producer ids are the broker's, not a topic's: a principal that may publish to
        // some topic may ask for one (as Kafka lets any topic writer be idempotent).
        Access::of(&request).authorize(Operation::Publish, Resource::any_topic())?;
        let name = request.into_inner().producer_name;
        let registry = self.registry.clone();
        let (producer_id, epoch) = blocking(move || {
            let name = (!name.is_empty()).then_some(name.as_str());
            registry.producer_ids().init(name)
        })
        .await?;
        Ok(Response::new(v1::InitProducerResponse {
            producer_id,
            epoch: u32::from(epoch),
        }))
    }

    type PublishStreamStream = BoxStream<v1::PublishStreamResponse>;

    async fn publish_stream(
        &self,
        request: Request<Streaming<v1::PublishStreamRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        Ok(Response::new(self.publish_stream_start(request)?))
    }

    type FetchStream = BoxStream<v1::FetchResponse>;

    async fn fetch(
        &self,
        request: Request<v1::FetchRequest>,
    ) -> Result<Response<Self::FetchStream>, Status> {
        Access::of(&request)
            .authorize(Operation::Fetch, Resource::topic(&request.get_ref().topic))?;
        let slot = self.open_stream(&request)?;
        let r = request.into_inner();
        let topic = self.registry.get(&r.topic)?;
        let partition = topic.partition(r.partition)?;
        if let Some(cluster) = &self.cluster
            && let Some(nodes) = cluster.read_nodes(&r.topic, &partition)?
        {
            // Read where the records are; the stream counts against this connection's
            // limit for as long as it runs.
            let remote = cluster.forward_fetch_to_any(&nodes, r).await?;
            return Ok(Response::new(Box::pin(remote.map(move |item| {
                let _slot = &slot;
                item
            }))));
        }
        self.fetch_stream(Some(slot), r, false).map(Response::new)
    }

    async fn create_group(
        &self,
        request: Request<v1::CreateGroupRequest>,
    ) -> Result<Response<v1::CreateGroupResponse>, Status> {
        self.check_running()?;
        let access = Access::of(&request);
        if let Some(coordinator) = self.managing(&request.get_ref().topic).cloned() {
            let r = request.into_inner();
            let describe = v1::DescribeGroupRequest {
                topic: r.topic.clone(),
                group: r.group.clone(),
            };
            super::groups::create_managed_group(&self.groups, &coordinator, &access, r).await?;
            // Its description comes from wherever it runs (this node claims it if it can).
            return match self
                .group_admin(&Access::Open, GroupCall::Describe(describe), false)
                .await?
            {
                GroupReply::Describe(d) => {
                    Ok(Response::new(v1::CreateGroupResponse { group: d.group }))
                }
                _ => Err(Status::internal(
                    "a group call answered with another call's reply",
                )),
            };
        }
        if let Some(cluster) = &self.cluster {
            cluster.check_topic(&request.get_ref().topic)?;
        }
        super::groups::create_group(&self.groups, &access, request.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn update_group(
        &self,
        request: Request<v1::UpdateGroupRequest>,
    ) -> Result<Response<v1::UpdateGroupResponse>, Status> {
        self.check_running()?;
        let access = Access::of(&request);
        match self
            .group_admin(&access, GroupCall::Update(request.into_inner()), false)
            .await?
        {
            GroupReply::Update(reply) => Ok(Response::new(reply)),
            _ => Err(Status::internal(
                "a group call answered with another call's reply",
            )),
        }
    }

    async fn delete_group(
        &self,
        request: Request<v1::DeleteGroupRequest>,
    ) -> Result<Response<v1::DeleteGroupResponse>, Status> {
        self.check_running()?;
        let access = Access::of(&request);
        if let Some(coordinator) = self.managing(&request.get_ref().topic) {
            return super::groups::delete_managed_group(coordinator, &access, request.into_inner())
                .await
                .map(Response::new)
                .map_err(Status::from);
        }
        super::groups::delete_group(&self.groups, &access, request.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn describe_group(
        &self,
        request: Request<v1::DescribeGroupRequest>,
    ) -> Result<Response<v1::DescribeGroupResponse>, Status> {
        let access = Access::of(&request);
        match self
            .group_admin(&access, GroupCall::Describe(request.into_inner()), false)
            .await?
        {
            GroupReply::Describe(reply) => Ok(Response::new(reply)),
            _ => Err(Status::internal(
                "a group call answered with another call's reply",
            )),
        }
    }

    async fn list_groups(
        &self,
        request: Request<v1::ListGroupsRequest>,
    ) -> Result<Response<v1::ListGroupsResponse>, Status> {
        let access = Access::of(&request);
        super::groups::list_groups(
            &self.groups,
            self.coordinator.as_deref(),
            &access,
            request.into_inner(),
        )
        .await
        .map(Response::new)
        .map_err(Status::from)
    }

    async fn seek(
        &self,
        request: Request<v1::SeekRequest>,
    ) -> Result<Response<v1::SeekResponse>, Status> {
        self.check_running()?;
        let access = Access::of(&request);
        match self
            .group_admin(&access, GroupCall::Seek(request.into_inner()), false)
            .await?
        {
            GroupReply::Seek(reply) => Ok(Response::new(reply)),
            _ => Err(Status::internal(
                "a group call answered with another call's reply",
            )),
        }
    }

    async fn list_pending(
        &self,
        request: Request<v1::ListPendingRequest>,
    ) -> Result<Response<v1::ListPendingResponse>, Status> {
        let access = Access::of(&request);
        match self
            .group_admin(&access, GroupCall::Pending(request.into_inner()), false)
            .await?
        {
            GroupReply::Pending(reply) => Ok(Response::new(reply)),
            _ => Err(Status::internal(
                "a group call answered with another call's reply",
            )),
        }
    }

    async fn redrive(
        &self,
        request: Request<v1::RedriveRequest>,
    ) -> Result<Response<v1::RedriveResponse>, Status> {
        self.check_running()?;
        let access = Access::of(&request);
        match self
            .group_admin(&access, GroupCall::Redrive(request.into_inner()), false)
            .await?
        {
            GroupReply::Redrive(reply) => Ok(Response::new(reply)),
            _ => Err(Status::internal(
                "a group call answered with another call's reply",
            )),
        }
    }

    async fn cluster_status(
        &self,
        request: Request<v1::ClusterStatusRequest>,
    ) -> Result<Response<v1::ClusterStatusResponse>, Status> {
        // Nodes, addresses and every topic's placement: the cluster's to describe.
        Access::of(&request).authorize(Operation::Describe, Resource::cluster())?;
        Ok(Response::new(super::cluster_status::status(
            &self.registry,
            self.cluster.as_deref(),
            self.client_addr,
        )))
    }

    async fn add_node(
        &self,
        request: Request<v1::AddNodeRequest>,
    ) -> Result<Response<v1::AddNodeResponse>, Status> {
        self.check_running()?;
        Access::of(&request).authorize(Operation::Alter, Resource::cluster())?;
        let cluster = self.cluster.as_ref().ok_or(BrokerError::NotClustered)?;
        let r = request.into_inner();
        let addr = crate::cluster::NodeAddr {
            client: r.client_address,
            peer: r.peer_address,
        };
        let members = cluster.add_node(r.node_id, addr).await?;
        Ok(Response::new(v1::AddNodeResponse {
            nodes: super::cluster_status::nodes(cluster, members),
        }))
    }

    async fn remove_node(
        &self,
        request: Request<v1::RemoveNodeRequest>,
    ) -> Result<Response<v1::RemoveNodeResponse>, Status> {
        self.check_running()?;
        Access::of(&request).authorize(Operation::Alter, Resource::cluster())?;
        let cluster = self.cluster.as_ref().ok_or(BrokerError::NotClustered)?;
        let members = cluster.remove_node(request.into_inner().node_id).await?;
        Ok(Response::new(v1::RemoveNodeResponse {
            nodes: super::cluster_status::nodes(cluster, members),
        }))
    }

    type SubscribeStream = BoxStream<v1::SubscribeResponse>;

    async fn subscribe(
        &self,
        request: Request<Streaming<v1::SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        Ok(Response::new(self.subscribe_stream(request)?))
    }
}

impl HeraldService {
    /// A unary Publish. Both the trait method (request decoded by tonic) and the route
    /// that decodes it itself (`publish_route`) come here.
    pub(super) async fn publish_unary(
        &self,
        request: Request<v1::PublishRequest>,
    ) -> Result<v1::PublishResponse, Status> {
        self.check_running()?;
        let access = Access::of(&request);
        let publish = request.into_inner();
        access.authorize(Operation::Publish, Resource::topic(&publish.topic))?;
        let committed = self.publish_enqueue(publish, false).await?;
        Ok(committed.await?)
    }

    /// Starts a PublishStream over `request`'s messages; its replies are the returned
    /// stream. Both the trait method (messages decoded by tonic) and the route that decodes
    /// them itself (`publish_route`) come here.
    pub(super) fn publish_stream_start<S>(
        &self,
        request: Request<S>,
    ) -> Result<BoxStream<v1::PublishStreamResponse>, Status>
    where
        S: Stream<Item = Result<v1::PublishStreamRequest, Status>> + Send + Unpin + 'static,
    {
        let access = Access::of(&request);
        if let Access::Unmarked = access {
            access.authorize(Operation::Publish, Resource::cluster())?;
        }
        let slot = self.open_stream(&request)?;
        // Requests above the size limit arrive as stand-ins (`publish` unset) reported
        // here, in order; see `request_limit`.
        let oversized = request
            .extensions()
            .get::<OversizedRequests>()
            .map(|o| o.0.clone());
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let service = self.clone_for_task();
        let idle = self.registry.config().idle_stream_timeout();
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut pending: FuturesUnordered<PendingReply> = FuturesUnordered::new();
            let mut inbound_open = true;
            // Index of the next request read, and the next oversized report not yet
            // matched to its stand-in.
            let mut index = 0u64;
            let mut next_oversized: Option<Oversized> = None;
            // Set when reading broke: the stream ends with it once every request read has
            // been answered.
            let mut broken: Option<Status> = None;
            loop {
                tokio::select! {
                    // Requests are taken in order and each is queued to its partition before
                    // the next is read, so a stream's batches to one partition keep their order.
                    next = tokio::time::timeout(idle, inbound.next()), if inbound_open && pending.len() < PUBLISH_STREAM_IN_FLIGHT => {
                        match next {
                            Err(_) if pending.is_empty() => {
                                let _ = tx.send(Err(BrokerError::PublishStreamIdle { idle }.into())).await;
                                break;
                            }
                            Err(_) => {}
                            Ok(None) => inbound_open = false,
                            Ok(Some(Err(status))) => {
                                // Nothing more can be read, but what was read is still
                                // answered before the stream ends with the reason.
                                tracing::debug!(%status, "publish stream broke");
                                inbound_open = false;
                                broken = Some(status);
                            }
                            Ok(Some(Ok(req))) => {
                                let sequence = req.sequence;
                                let this = index;
                                index += 1;
                                let queued = match req.publish {
                                    None => {
                                        if next_oversized.is_none() {
                                            next_oversized = oversized.as_ref().and_then(|o| o.try_recv().ok());
                                        }
                                        match next_oversized {
                                            Some(o) if o.index == this => {
                                                next_oversized = None;
                                                Err(BrokerError::from(o))
                                            }
                                            _ => Err(BrokerError::InvalidRequest("the request carries no `publish`".into())),
                                        }
                                    }
                                    // Each publish names its topic: authorised one by one,
                                    // a refusal answering that publish alone.
                                    Some(publish) => match access.authorize(Operation::Publish, Resource::topic(&publish.topic)) {
                                        // Waits here while the partition is full: the stream
                                        // stops reading, and HTTP/2 flow control pushes back.
                                        Ok(()) => service.publish_enqueue(publish, false).await,
                                        Err(denied) => Err(denied),
                                    },
                                };
                                let reply: PendingReply = match queued {
                                    Ok(committed) => Box::pin(async move { (sequence, committed.await) }),
                                    Err(error) => Box::pin(std::future::ready((sequence, Err(error)))),
                                };
                                pending.push(reply);
                            }
                        }
                    }
                    Some((sequence, result)) = pending.next(), if !pending.is_empty() => {
                        let outcome = match result {
                            Ok(published) => v1::publish_stream_response::Outcome::Published(published),
                            Err(error) => {
                                let status = Status::from(error);
                                v1::publish_stream_response::Outcome::Error(v1::Error {
                                    code: status.code() as i32,
                                    message: status.message().to_owned(),
                                })
                            }
                        };
                        if tx.send(Ok(v1::PublishStreamResponse { sequence, outcome: Some(outcome) })).await.is_err() {
                            break;
                        }
                    }
                    _ = async { let _ = shutdown.wait_for(|s| *s).await; }, if pending.is_empty() && inbound_open => {
                        let _ = tx.send(Err(BrokerError::ShuttingDown.into())).await;
                        break;
                    }
                    else => break,
                }
            }
            if let Some(status) = broken {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    /// Starts a Subscribe member; its responses are the returned stream. Both the trait
    /// method and the route that writes Subscribe's body itself come here.
    pub(super) fn subscribe_stream(
        &self,
        request: Request<Streaming<v1::SubscribeRequest>>,
    ) -> Result<BoxStream<v1::SubscribeResponse>, BrokerError> {
        let access = Access::of(&request);
        if let Access::Unmarked = access {
            access.authorize(Operation::Consume, Resource::cluster())?;
        }
        let slot = self.open_stream(&request)?;
        Ok(super::groups::subscribe(
            self.groups.clone(),
            request.into_inner(),
            self.shutdown.clone(),
            super::groups::MemberContext {
                slot,
                malformed_ack_ids: self.metrics.malformed_ack_ids.clone(),
                cluster: self.cluster.clone(),
                coordinator: self.coordinator.clone(),
                access,
                forwarded: false,
            },
        ))
    }
}

impl HeraldService {
    /// The broker-wide budget for responses produced ahead of HTTP/2 flow control, which
    /// Subscribe's own route charges too.
    pub(super) fn response_budget(&self) -> Arc<Semaphore> {
        self.response_budget.clone()
    }

    fn clone_for_task(&self) -> Arc<HeraldService> {
        Arc::new(HeraldService {
            registry: self.registry.clone(),
            groups: self.groups.clone(),
            metrics: self.metrics.clone(),
            shutdown: self.shutdown.clone(),
            streams: self.streams.clone(),
            response_budget: self.response_budget.clone(),
            cluster: self.cluster.clone(),
            coordinator: self.coordinator.clone(),
            client_addr: self.client_addr,
        })
    }
}

fn resolve_start(
    reader: &crate::storage::LogReader,
    start: Option<PositionKind>,
) -> Result<u64, BrokerError> {
    let (first, end) = (reader.start_offset(), reader.high_watermark());
    Ok(match start {
        None | Some(PositionKind::Earliest(_)) => first,
        Some(PositionKind::Latest(_)) => end,
        Some(PositionKind::Offset(offset)) => {
            if offset < first || offset > end {
                return Err(BrokerError::OffsetOutOfRange {
                    offset,
                    start: first,
                    end,
                    partition: None,
                });
            }
            offset
        }
        Some(PositionKind::TimestampMs(ts)) => reader.offset_for_timestamp(ts)?.unwrap_or(end),
    })
}

/// A fetch response on its way to tonic, with its share of the response budget.
type FetchItem = Result<(v1::FetchResponse, Option<OwnedSemaphorePermit>), Status>;

/// Responses whose budget is held after tonic took them: the last one may still be in
/// tonic's encode buffer or h2's send buffer (hyper hands h2 a whole encoded message even
/// beyond the flow-control window), and h2 grants room for the next only once what it
/// buffered fits the window, so by the time tonic takes a response, the one two before it
/// is on its way to the socket.
pub(super) const HELD_RESPONSES: usize = 2;
/// Largest fetch response sent outside the response budget, when it is used up: small
/// enough that every open stream may have a few in flight (`STREAM_QUEUE` +
/// `HELD_RESPONSES`), large enough to keep a reader moving. A single stored batch larger
/// than this is still sent whole.
pub(super) const FETCH_SMALL_BYTES: usize = 64 * 1024;
/// Protobuf framing of one decoded record in a fetch response (tags, lengths, offset and
/// timestamp varints), for the cost estimate.
const RECORD_FRAMING_BYTES: usize = 32;

/// The heap a fetch response of `chunk` will cost until it is sent: tonic copies the
/// encoded message into a buffer that grows by doubling (so up to twice its length), and
/// decoded records each take a `FetchedRecord` while queued. Estimated from the batch
/// headers alone, before anything is decoded.
fn response_cost(chunk: &crate::storage::ReadChunk, raw: bool) -> usize {
    let records: usize = if raw {
        0
    } else {
        batch::batches(&chunk.bytes)
            .filter_map(Result::ok)
            .map(|b| b.header.record_count as usize)
            .sum()
    };
    2 * (chunk.bytes.len() + records * RECORD_FRAMING_BYTES)
        + records * std::mem::size_of::<v1::FetchedRecord>()
}

/// The response stream of a Fetch: releases each response's budget `HELD_RESPONSES`
/// responses later (or when the stream is dropped).
struct BudgetedResponses {
    rx: mpsc::Receiver<FetchItem>,
    held: VecDeque<OwnedSemaphorePermit>,
}

impl Stream for BudgetedResponses {
    type Item = Result<v1::FetchResponse, Status>;

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let this = self.get_mut();
        this.rx.poll_recv(cx).map(|item| {
            item.map(|item| {
                item.map(|(response, permit)| {
                    if let Some(permit) = permit {
                        this.held.push_back(permit);
                        while this.held.len() > HELD_RESPONSES {
                            this.held.pop_front();
                        }
                    }
                    response
                })
            })
        })
    }
}

fn empty_response(reader: &crate::storage::LogReader, at: u64) -> v1::FetchResponse {
    v1::FetchResponse {
        high_watermark: reader.high_watermark(),
        next_offset: at,
        log_start_offset: reader.start_offset(),
        ..Default::default()
    }
}

/// The offsets a fetch response may carry: from `at`, and without `follow` only below `end`.
fn wanted_range(at: u64, follow: bool, end: u64) -> std::ops::Range<u64> {
    at..if follow { u64::MAX } else { end.max(at) }
}

/// A fetch response from `chunk`: whole batches (raw), or the records in `wanted`
/// decoded, stopping after the record that brings their bytes to `record_bytes_max`.
fn build_fetch_response(
    chunk: &crate::storage::ReadChunk,
    wanted: std::ops::Range<u64>,
    raw: bool,
    record_bytes_max: usize,
    (metrics, topic): (&Metrics, &crate::topic::TopicCounters),
    log_start_offset: u64,
) -> v1::FetchResponse {
    let mut response = v1::FetchResponse {
        high_watermark: chunk.high_watermark,
        next_offset: wanted.start,
        log_start_offset,
        ..Default::default()
    };
    let mut records = 0u64;
    let mut record_bytes = 0usize;
    let mut at = 0usize;
    'batches: for view in batch::batches(&chunk.bytes) {
        // Stored batches were validated on append; a decode error here means the file
        // changed under us, so stop at it rather than send garbage.
        let Ok(view) = view else { break };
        if view.header.base_offset >= wanted.end {
            break;
        }
        let len = view.header.batch_len as usize;
        response.next_offset = view.header.next_offset().min(wanted.end);
        if raw {
            records += u64::from(view.header.record_count);
            response.batches.push(chunk.bytes.slice(at..at + len));
        } else {
            for record in view.records() {
                let Ok(record) = record else { break };
                if !wanted.contains(&record.offset) {
                    continue;
                }
                records += 1;
                record_bytes += record.value.len() + record.key.map_or(0, <[u8]>::len);
                response.records.push(v1::FetchedRecord {
                    offset: record.offset,
                    timestamp_ms: record.timestamp,
                    key: record.key.map(|k| chunk.bytes.slice_ref(k)),
                    value: chunk.bytes.slice_ref(record.value),
                    headers: record
                        .headers()
                        .map(|(k, v)| v1::Header {
                            key: k.to_owned(),
                            value: chunk.bytes.slice_ref(v),
                        })
                        .collect(),
                });
                if record_bytes >= record_bytes_max {
                    response.next_offset = record.offset + 1;
                    break 'batches;
                }
            }
        }
        at += len;
    }
    metrics.fetch_records.inc_by(records);
    metrics.fetch_bytes.inc_by(chunk.bytes.len() as u64);
    topic.fetched(records, chunk.bytes.len() as u64);
    response
}

/// Requests other nodes of the cluster forward here: handled as the node's own, without a
/// second authorization (the node the client called made it) and never forwarded again.
#[tonic::async_trait]
impl crate::cluster::forward::ForwardedRequests for HeraldService {
    async fn publish(&self, request: v1::PublishRequest) -> Result<v1::PublishResponse, Status> {
        self.check_running()?;
        let committed = self.publish_enqueue(request, true).await?;
        Ok(committed.await?)
    }

    async fn fetch(
        &self,
        request: v1::FetchRequest,
    ) -> Result<crate::cluster::forward::FetchStream, Status> {
        self.check_running()?;
        self.fetch_stream(None, request, true)
    }

    async fn subscribe(
        &self,
        requests: Streaming<v1::SubscribeRequest>,
    ) -> Result<crate::cluster::forward::SubscribeStream, Status> {
        self.check_running()?;
        Ok(super::groups::subscribe(
            self.groups.clone(),
            requests,
            self.shutdown.clone(),
            super::groups::MemberContext {
                slot: (),
                malformed_ack_ids: self.metrics.malformed_ack_ids.clone(),
                cluster: self.cluster.clone(),
                coordinator: self.coordinator.clone(),
                access: Access::Open,
                forwarded: true,
            },
        ))
    }

    async fn group_call(
        &self,
        call: herald_proto::peer::ForwardedGroupCall,
    ) -> Result<herald_proto::peer::GroupCallReply, Status> {
        let call = call
            .call
            .ok_or_else(|| Status::invalid_argument("the forwarded group call carries no call"))?;
        let reply = self.group_admin(&Access::Open, call, true).await?;
        Ok(herald_proto::peer::GroupCallReply { reply: Some(reply) })
    }
}
