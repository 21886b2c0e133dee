//! The producer: batches records per partition and pipelines the batches over a
//! `PublishStream`, in the storage batch format: one to the node the client was given,
//! and in a cluster one to each node that leads a partition it sends to.
//!
//! How it works. [`Producer::send`] reserves the record's size in a byte budget
//! (`max_buffered_bytes`, a fair semaphore), waiting only when the budget is spent, and
//! hands the record to a background task. That task encodes records into one open batch
//! per partition, seals a batch when it reaches `batch_bytes` or has waited `linger`,
//! and sends sealed batches on a `PublishStream` (one per node it sends to; see routing
//! below), at most one batch per partition and `max_in_flight` batches in all at a time. When a batch is acked, its records'
//! [`Delivery`] futures resolve and their bytes return to the budget.
//!
//! Adaptive batching (`send_when_idle`, the default). A partition with nothing queued or
//! in flight has its batch sealed as soon as the task has taken the records that arrived
//! together, so a record at a low rate costs one round trip instead of `linger` (5 ms,
//! plus up to 1 ms of timer granularity). While a batch of the partition is in flight
//! (or waits to be retried), later records batch behind it and are sent when it is acked
//! (or the batch is full): the busier the partition, the bigger its batches, with no
//! setting to tune and within the same `batch_bytes`, `max_in_flight` and byte-budget
//! bounds. Sealing at `linger` meanwhile would only queue small batches behind the one
//! in flight, each costing a round trip of its own: at a rate whose round trips took
//! longer than `linger` (three replicas on a busy machine), the queue grew without end.
//!
//! Ordering and retries. Because a partition has at most one batch in flight, a batch
//! that fails with `UNAVAILABLE` (or whose stream breaks) is retried, with exponential
//! backoff, before any later batch of that partition is sent: a key's records are never
//! reordered.
//!
//! Idempotence (on by default). Before its first batch the producer asks the broker for
//! an identity (`InitProducer`); each batch carries the identity and its sequence number
//! in the partition, stamped when the batch is first sent and kept across its retries. A
//! retry of a batch the broker already stored (its ack was lost to a timeout, a broken
//! stream or a broker restart) is answered with the first offsets instead of being stored
//! again: exactly once per record, in order. Without it (`idempotent(false)`), such a
//! retry stores the batch twice (at-least-once).
//!
//! Routing in a cluster. Any node takes any publish and forwards it to the partition's
//! leader, at the cost of a second hop. So before its first batch the producer asks the
//! node it was given for `ClusterStatus` (alongside `InitProducer`); a broker not in
//! cluster mode says so, and the producer never asks again: one stream, as before. In a
//! cluster it keeps a route per partition (the client address of its leader) and sends
//! each batch on a stream to that node, one stream per node. A partition whose leader is
//! unknown (an election), the answering node itself, or a node whose stream could not be
//! opened (it is skipped for a while, longer after each failure) goes to the given
//! node, which forwards it. The routes are asked for again when a batch fails with
//! `UNAVAILABLE` or its stream ends (one call at a time, at most every 200 ms; through
//! another known node if the given one does not answer), soon while a partition has no
//! leader, and every 10 s while batches are being sent, so leadership moves are
//! followed. Sequence numbers stay per partition whichever node a batch goes to, and one
//! batch per partition in flight keeps a key's order when its partition moves.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use herald_format::batch::{self, BatchBuilder, ProducerStamp, Record as BatchRecord};
use herald_proto::v1;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use crate::{
    Client, Error, Offset, Partition, RawClient, Result, partition_for_key, publish_stream,
};

/// Most records put in one batch (the broker's default `max_batch_records` is 100 000).
const MAX_BATCH_RECORDS: u32 = 50_000;
/// Initial buffer of a new batch: batches of small topics stay small, large ones grow.
const INITIAL_BATCH_CAPACITY: usize = 64 * 1024;
/// Bytes counted per record on top of its key, value and headers (framing, bookkeeping).
const RECORD_OVERHEAD: usize = 32;
/// Shortest time between two `ClusterStatus` calls asked for by failures.
const ROUTE_REFRESH_MIN: Duration = Duration::from_millis(200);
/// How often the routes are asked for while batches are being sent.
const ROUTE_REFRESH_EVERY: Duration = Duration::from_secs(10);
/// How soon they are asked for again while a partition's group elects a leader.
const ROUTE_REFRESH_ELECTING: Duration = Duration::from_secs(1);
/// How long one node may take to answer `ClusterStatus` before the next is asked.
const ROUTE_ASK_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a node whose stream failed before any reply is skipped, at first; doubled
/// on each failure in a row, up to `UNREACHABLE_MAX`.
const UNREACHABLE_FIRST: Duration = Duration::from_millis(500);
const UNREACHABLE_MAX: Duration = Duration::from_secs(10);

/// A record to publish.
///
/// ```
/// use herald_client::Record;
/// let record = Record::new("payload")
///     .key("order-42")
///     .header("trace-id", "abc")
///     .timestamp(1_700_000_000_000);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    key: Option<Bytes>,
    value: Bytes,
    headers: Vec<(String, Bytes)>,
    timestamp_ms: i64,
    partition: Option<u32>,
}

impl Record {
    /// A record with this payload, no key, no headers, and the current time as timestamp.
    pub fn new(value: impl Into<Bytes>) -> Record {
        Record {
            value: value.into(),
            ..Record::default()
        }
    }

    /// Sets the key. It picks the partition (`xxh64(key) % partitions`, like the broker)
    /// and is the unit of ordering. An empty key differs from no key.
    pub fn key(mut self, key: impl Into<Bytes>) -> Record {
        self.key = Some(key.into());
        self
    }

    /// Appends a header; names may repeat and their order is kept. Names starting with
    /// `herald-` are reserved for the broker.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Record {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Carries a W3C trace context: sets the `traceparent` header (replacing one set
    /// before) to `value`, e.g. `00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01`
    /// from the caller's current span. The broker keeps it on every delivery and, when it
    /// exports spans, makes its publish and deliver spans children of it.
    pub fn traceparent(mut self, value: impl Into<String>) -> Record {
        self.headers.retain(|(name, _)| name != TRACEPARENT);
        self.headers
            .push((TRACEPARENT.to_owned(), Bytes::from(value.into())));
        self
    }

    /// Sets the event time in ms since the Unix epoch (default, or 0: the time of
    /// [`Producer::send`]).
    pub fn timestamp(mut self, ms: i64) -> Record {
        self.timestamp_ms = ms;
        self
    }

    /// Sends the record to this partition instead of choosing one from the key.
    pub fn partition(mut self, partition: u32) -> Record {
        self.partition = Some(partition);
        self
    }

    /// The bytes this record counts for in the producer's budget.
    fn cost(&self) -> usize {
        RECORD_OVERHEAD
            + self.key.as_ref().map_or(0, Bytes::len)
            + self.value.len()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len() + 4)
                .sum::<usize>()
    }
}

/// The W3C Trace Context header ([`Record::traceparent`], [`Message::traceparent`](crate::Message::traceparent)).
pub const TRACEPARENT: &str = "traceparent";

/// Settings of a [`Producer`].
///
/// ```
/// use std::time::Duration;
/// use herald_client::ProducerConfig;
/// let config = ProducerConfig::new("orders")
///     .batch_bytes(128 * 1024)
///     .linger(Duration::from_millis(2))
///     .max_buffered_bytes(16 * 1024 * 1024);
/// ```
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// The topic every record goes to.
    pub topic: String,
    /// A partition's batch is sealed once it reaches this many bytes (default 1 MiB).
    /// Keep it below the broker's `max_batch_bytes` (default 2 MiB).
    pub batch_bytes: usize,
    /// How long a batch waits for more records before it is sealed (default 5 ms). Zero
    /// sends at once whatever was queued together, for the lowest latency. With
    /// [`ProducerConfig::send_when_idle`] (the default) it does not apply: a batch waits
    /// exactly while its partition has a batch in flight.
    pub linger: Duration,
    /// Adaptive batching (default true): records for a partition with nothing in flight
    /// are sent at once; records that arrive while a batch is in flight are batched until
    /// it is acked or the batch is full. A producer at a low rate then pays one round
    /// trip per record instead of `linger`, and one at a high rate sends batches as big
    /// as one round trip's worth of records, because its partitions are always busy.
    /// False: every batch waits `linger` (or fills) before it is sent.
    pub send_when_idle: bool,
    /// Bytes of records held by the producer (buffered or in flight) at most; `send`
    /// waits while the budget is spent (default 32 MiB).
    pub max_buffered_bytes: usize,
    /// Batches in flight at most, across partitions (default 16). A partition never has
    /// more than one, which keeps its order across retries.
    pub max_in_flight: usize,
    /// Retries of a batch that fails with `UNAVAILABLE` before its records fail
    /// (default 10).
    pub max_retries: u32,
    /// Delay before the first retry; doubled on each further one, each plus a random
    /// jitter of up to as much again (default 100 ms).
    pub retry_backoff: Duration,
    /// Longest delay between retries, before jitter (default 5 s).
    pub retry_backoff_max: Duration,
    /// Whether batches carry a producer identity and sequence numbers, so that the broker
    /// stores a retried batch once (default true).
    pub idempotent: bool,
    /// A stable name for an idempotent producer (e.g. a service instance's name): a new
    /// producer with the same name fences the older one, whose later batches are refused
    /// (`FAILED_PRECONDITION`) instead of interleaving. Default: none, an anonymous
    /// producer idempotent for its own life.
    pub producer_name: Option<String>,
}

impl ProducerConfig {
    /// The default settings for `topic`.
    pub fn new(topic: impl Into<String>) -> ProducerConfig {
        ProducerConfig {
            topic: topic.into(),
            batch_bytes: 1024 * 1024,
            linger: Duration::from_millis(5),
            send_when_idle: true,
            max_buffered_bytes: 32 * 1024 * 1024,
            max_in_flight: 16,
            max_retries: 10,
            retry_backoff: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(5),
            idempotent: true,
            producer_name: None,
        }
    }

    /// Sets [`ProducerConfig::idempotent`].
    pub fn idempotent(mut self, on: bool) -> Self {
        self.idempotent = on;
        self
    }

    /// Sets [`ProducerConfig::producer_name`] (and turns idempotence on).
    pub fn producer_name(mut self, name: impl Into<String>) -> Self {
        self.producer_name = Some(name.into());
        self.idempotent = true;
        self
    }

    /// Sets [`ProducerConfig::batch_bytes`].
    pub fn batch_bytes(mut self, bytes: usize) -> Self {
        self.batch_bytes = bytes.max(1);
        self
    }

    /// Sets [`ProducerConfig::linger`].
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Sets [`ProducerConfig::send_when_idle`].
    pub fn send_when_idle(mut self, on: bool) -> Self {
        self.send_when_idle = on;
        self
    }

    /// Sets [`ProducerConfig::max_buffered_bytes`].
    pub fn max_buffered_bytes(mut self, bytes: usize) -> Self {
        self.max_buffered_bytes = bytes.clamp(1, u32::MAX as usize);
        self
    }

    /// Sets [`ProducerConfig::max_in_flight`].
    pub fn max_in_flight(mut self, batches: usize) -> Self {
        self.max_in_flight = batches.max(1);
        self
    }

    /// Sets [`ProducerConfig::max_retries`].
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = retries;
        self
    }

    /// Sets [`ProducerConfig::retry_backoff`] and [`ProducerConfig::retry_backoff_max`].
    pub fn retry_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.retry_backoff = first;
        self.retry_backoff_max = max.max(first);
        self
    }
}

/// Where an acknowledged record was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Acked {
    /// Its partition.
    pub partition: Partition,
    /// Its offset in that partition.
    pub offset: Offset,
}

/// The outcome of one [`Producer::send`]: a future that resolves when the broker has
/// acknowledged the record (or the producer gave up on it).
///
/// Dropping it does not cancel the record; it is still published.
#[derive(Debug)]
#[must_use = "a Delivery does nothing unless awaited; drop it to ignore the outcome"]
pub struct Delivery {
    rx: oneshot::Receiver<Result<Acked>>,
}

impl Future for Delivery {
    type Output = Result<Acked>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|outcome| outcome.unwrap_or(Err(Error::Closed)))
    }
}

/// The outcome of one [`Producer::send_all`]: resolves when every record of it is
/// acknowledged, to where each was stored in the order given, or to the first error (the
/// other records may still be stored).
///
/// Dropping it does not cancel the records; they are still published.
#[derive(Debug)]
#[must_use = "a BatchDelivery does nothing unless awaited; drop it to ignore the outcome"]
pub struct BatchDelivery {
    rx: oneshot::Receiver<Result<Vec<Acked>>>,
}

impl Future for BatchDelivery {
    type Output = Result<Vec<Acked>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|outcome| outcome.unwrap_or(Err(Error::Closed)))
    }
}

/// A batching, pipelining producer for one topic; made by [`Client::producer`].
///
/// Cheap to clone: clones share the buffers and the stream. The records still buffered
/// when the last clone is dropped are sent anyway; call [`Producer::close`] to wait for
/// them.
///
/// ```no_run
/// # async fn run(client: herald_client::Client) -> herald_client::Result<()> {
/// use herald_client::{ProducerConfig, Record};
///
/// let producer = client.producer(ProducerConfig::new("orders"));
/// let mut deliveries = Vec::new();
/// for i in 0..1000 {
///     // Waits only when `max_buffered_bytes` are already buffered.
///     deliveries.push(producer.send(Record::new(format!("event {i}")).key("k")).await?);
/// }
/// producer.flush().await?; // every record above is now acked
/// for delivery in deliveries {
///     let acked = delivery.await?;
///     println!("{}:{}", acked.partition, acked.offset);
/// }
/// producer.close().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Producer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// For the one `DescribeTopic` that finds the partition count.
    client: Client,
    topic: String,
    max_buffered_bytes: usize,
    /// The topic's partition count, looked up on the first send and kept for the
    /// producer's life (Herald topics do not change their partition count).
    partitions: tokio::sync::OnceCell<u32>,
    /// The byte budget: a record holds its cost in permits until its batch is acked or
    /// fails. Tokio's semaphore is fair, so waiting senders keep their order.
    memory: Arc<Semaphore>,
    /// To the driver task. Unbounded, because every record in it already holds its
    /// permits: `memory` is the bound.
    commands: mpsc::UnboundedSender<Command>,
    /// Set by `close`, so later sends fail at once.
    closed: AtomicBool,
    /// Batches retried so far, counted by the driver.
    retries: Arc<AtomicU64>,
}

enum Command {
    Send {
        partitions: u32,
        record: Record,
        permit: OwnedSemaphorePermit,
        ack: oneshot::Sender<Result<Acked>>,
    },
    /// Several records in order, holding one permit for all of them, settled by one
    /// sender per record (`send_batch`) or one for the whole group (`send_all`).
    SendMany {
        partitions: u32,
        records: Vec<Record>,
        permit: OwnedSemaphorePermit,
        acks: ManyAcks,
    },
    Flush(oneshot::Sender<()>),
    Close(oneshot::Sender<()>),
}

enum ManyAcks {
    Each(Vec<oneshot::Sender<Result<Acked>>>),
    All(oneshot::Sender<Result<Vec<Acked>>>),
}

impl Producer {
    pub(crate) fn new(client: Client, config: ProducerConfig) -> Producer {
        let (commands, command_rx) = mpsc::unbounded_channel();
        let memory = Arc::new(Semaphore::new(config.max_buffered_bytes));
        let retries = Arc::new(AtomicU64::new(0));
        let shared = Arc::new(Shared {
            client: client.clone(),
            topic: config.topic.clone(),
            max_buffered_bytes: config.max_buffered_bytes,
            partitions: tokio::sync::OnceCell::new(),
            memory: memory.clone(),
            commands,
            closed: AtomicBool::new(false),
            retries: retries.clone(),
        });
        let driver = Driver::new(client, config, retries);
        tokio::spawn(driver.run(command_rx));
        Producer { shared }
    }

    /// The topic this producer publishes to.
    pub fn topic(&self) -> &str {
        &self.shared.topic
    }

    /// Bytes of records currently held by the producer (buffered or in flight); never
    /// more than [`ProducerConfig::max_buffered_bytes`].
    pub fn buffered_bytes(&self) -> usize {
        self.shared.max_buffered_bytes - self.shared.memory.available_permits()
    }

    /// How many times a batch has been retried (after `UNAVAILABLE` or a broken stream)
    /// since the producer was created.
    pub fn retried_batches(&self) -> u64 {
        self.shared.retries.load(Ordering::Relaxed)
    }

    /// The topic's partition count, looked up once with `DescribeTopic` and cached.
    pub async fn partition_count(&self) -> Result<u32> {
        self.shared
            .partitions
            .get_or_try_init(|| async {
                let admin = self.shared.client.admin();
                let info = admin.describe_topic(&self.shared.topic).await?;
                if info.partition_count == 0 {
                    return Err(Error::Protocol("the topic has no partitions".into()));
                }
                Ok(info.partition_count)
            })
            .await
            .copied()
    }

    /// Queues a record. Returns once the record is buffered, which waits only while
    /// `max_buffered_bytes` are already held; the returned [`Delivery`] resolves when the
    /// broker acknowledges it.
    ///
    /// Fails at once if the topic does not exist ([`Error::NotFound`]), the record names
    /// a partition the topic lacks, or the producer is closed.
    ///
    /// ```no_run
    /// # async fn run(producer: herald_client::Producer) -> herald_client::Result<()> {
    /// let delivery = producer.send(herald_client::Record::new("v").key("k")).await?;
    /// let acked = delivery.await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send(&self, record: Record) -> Result<Delivery> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let partitions = self.partition_count().await?;
        self.check_partition(&record, partitions)?;
        let cost = record.cost().min(self.shared.max_buffered_bytes) as u32;
        let permit = self
            .shared
            .memory
            .clone()
            .acquire_many_owned(cost)
            .await
            .map_err(|_| Error::Closed)?;
        let (ack, rx) = oneshot::channel();
        self.shared
            .commands
            .send(Command::Send {
                partitions,
                record,
                permit,
                ack,
            })
            .map_err(|_| Error::Closed)?;
        Ok(Delivery { rx })
    }

    /// Queues several records in order, as [`Producer::send`] does for each, with one
    /// trip to the producer's task for all of them.
    ///
    /// ```no_run
    /// # async fn run(producer: herald_client::Producer) -> herald_client::Result<()> {
    /// use herald_client::Record;
    /// let deliveries = producer
    ///     .send_batch(vec![Record::new("a").key("k"), Record::new("b").key("k")])
    ///     .await?;
    /// for delivery in deliveries {
    ///     delivery.await?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send_batch(
        &self,
        records: impl IntoIterator<Item = Record>,
    ) -> Result<Vec<Delivery>> {
        let records: Vec<Record> = records.into_iter().collect();
        let (senders, deliveries): (Vec<_>, Vec<_>) = (0..records.len())
            .map(|_| {
                let (tx, rx) = oneshot::channel();
                (tx, Delivery { rx })
            })
            .unzip();
        self.send_many(records, ManyAcks::Each(senders)).await?;
        Ok(deliveries)
    }

    /// Queues several records in order and returns one future for all of them: the
    /// cheapest way to publish many records, since nothing is tracked per record but its
    /// place in a batch. The [`BatchDelivery`] resolves, once every record is acked, to
    /// where each was stored (in the order given), or to the first error.
    ///
    /// ```no_run
    /// # async fn run(producer: herald_client::Producer) -> herald_client::Result<()> {
    /// use herald_client::Record;
    /// let records = (0..1000).map(|i| Record::new(format!("event {i}")).key("k"));
    /// let acked = producer.send_all(records).await?.await?;
    /// assert_eq!(acked.len(), 1000);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send_all(
        &self,
        records: impl IntoIterator<Item = Record>,
    ) -> Result<BatchDelivery> {
        let records: Vec<Record> = records.into_iter().collect();
        let (tx, rx) = oneshot::channel();
        if records.is_empty() {
            let _ = tx.send(Ok(Vec::new()));
        } else {
            self.send_many(records, ManyAcks::All(tx)).await?;
        }
        Ok(BatchDelivery { rx })
    }

    /// Fails if `record` names a partition the topic lacks.
    fn check_partition(&self, record: &Record, partitions: u32) -> Result<()> {
        match record.partition {
            Some(p) if p >= partitions => Err(Error::InvalidArgument(format!(
                "partition {p} does not exist: topic {:?} has {partitions} partitions",
                self.shared.topic
            ))),
            _ => Ok(()),
        }
    }

    async fn send_many(&self, records: Vec<Record>, acks: ManyAcks) -> Result<()> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        if records.is_empty() {
            return Ok(());
        }
        let partitions = self.partition_count().await?;
        let mut cost = 0usize;
        for record in &records {
            self.check_partition(record, partitions)?;
            cost += record.cost();
        }
        // A group larger than the whole budget takes the whole budget, like a single
        // record larger than it does.
        let cost = cost.min(self.shared.max_buffered_bytes) as u32;
        let permit = self
            .shared
            .memory
            .clone()
            .acquire_many_owned(cost)
            .await
            .map_err(|_| Error::Closed)?;
        self.shared
            .commands
            .send(Command::SendMany {
                partitions,
                records,
                permit,
                acks,
            })
            .map_err(|_| Error::Closed)
    }

    /// Sends every buffered record now (without waiting for `linger`) and waits until
    /// every record queued before the call is acknowledged or has failed.
    pub async fn flush(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.shared
            .commands
            .send(Command::Flush(tx))
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)
    }

    /// Flushes, waits for every acknowledgement, then ends the stream. Later sends, on
    /// this producer or its clones, fail with [`Error::Closed`].
    pub async fn close(&self) -> Result<()> {
        self.shared.closed.store(true, Ordering::Release);
        let (tx, rx) = oneshot::channel();
        if self.shared.commands.send(Command::Close(tx)).is_err() {
            return Ok(()); // already closed
        }
        // An error here means the task already ended, which it only does once drained.
        let _ = rx.await;
        Ok(())
    }
}

/// Records accumulating for one partition.
struct OpenBatch {
    builder: BatchBuilder,
    acks: Vec<Waiter>,
    permit: Option<OwnedSemaphorePermit>,
    deadline: Instant,
}

/// A sealed batch, waiting, in flight or waiting to be retried.
struct SealedBatch {
    id: u64,
    payload: Bytes,
    acks: Vec<Waiter>,
    /// Released (returning the bytes to the budget) when the batch is dropped.
    _permit: Option<OwnedSemaphorePermit>,
    attempts: u32,
    /// Records in the batch.
    records: u32,
    /// The identity and sequence the batch was stamped with when first sent; kept for
    /// its retries, so the broker recognises them.
    stamp: Option<ProducerStamp>,
}

/// Who learns the outcome of consecutive records of a batch.
enum Waiter {
    /// One record, sent with `send` or `send_batch`.
    One(oneshot::Sender<Result<Acked>>),
    /// `count` records of a `send_all` group, from its record `index` on.
    Group { group: u64, index: u32, count: u32 },
}

/// A `send_all` group waiting for the acks of its records.
struct GroupWaiter {
    acked: Vec<Acked>,
    remaining: usize,
    tx: oneshot::Sender<Result<Vec<Acked>>>,
}

#[derive(Default)]
struct PartitionState {
    open: Option<OpenBatch>,
    queue: VecDeque<SealedBatch>,
    /// The front of `queue` is in flight.
    in_flight: bool,
    /// The front of `queue` must not be (re)sent before this.
    retry_at: Option<Instant>,
    /// The sequence number the partition's next new batch gets (idempotence).
    next_sequence: u32,
}

enum Event {
    Reply(u64, v1::PublishStreamResponse),
    Ended(u64, Option<tonic::Status>),
    /// The answer to `InitProducer`.
    Identity(Result<(u64, u16)>),
    /// The answer to `ClusterStatus`.
    Routes(Result<RouteTable>),
}

/// Where an idempotent producer's identity stands.
enum Identity {
    /// Not idempotent: batches carry no producer block.
    Off,
    /// Not asked for yet, or to be asked again (after this time).
    Needed(Option<Instant>),
    /// `InitProducer` is on its way.
    Asking,
    Known {
        producer_id: u64,
        epoch: u16,
    },
}

struct OpenStream {
    generation: u64,
    requests: mpsc::UnboundedSender<v1::PublishStreamRequest>,
    /// Whether the node has answered anything on it (a stream that ends before any reply
    /// marks its node unreachable for a while).
    replied: bool,
}

/// Where a batch goes: `None` the node the client was given, or another node by its
/// client address (`host:port`).
type Target = Option<Arc<str>>;

/// A batch in flight: its partition and the stream it went on.
#[derive(Clone, Copy)]
struct InFlight {
    partition: u32,
    generation: u64,
}

/// What the producer knows of where partitions are led.
#[derive(PartialEq, Eq, Clone, Copy)]
enum RouteState {
    /// Not asked yet: the first dispatch asks.
    Unasked,
    /// The first `ClusterStatus` is on its way; batches wait for it.
    Waiting,
    /// Not a cluster (or the broker will not say): every batch goes to the given node,
    /// and nobody asks again.
    Single,
    /// A cluster: batches follow `Routes::leaders`, which are refreshed.
    Routed,
}

/// One `ClusterStatus` answer, as far as this producer's topic goes.
struct RouteTable {
    cluster: bool,
    /// By partition: the client address of its leader; `None` for the given node (it
    /// leads, or the leader is unknown).
    leaders: Vec<Target>,
    /// Client addresses of the other nodes, to ask when the given one does not answer.
    nodes: Vec<Arc<str>>,
    /// Whether a partition of the topic is electing a leader (reported 0 by a replica).
    electing: bool,
}

impl RouteTable {
    /// Reads `status`, answered by the given node (`via_default`) or by another.
    fn read(status: v1::ClusterStatusResponse, topic: &str, via_default: bool) -> RouteTable {
        let answering = status.node_id;
        let addresses: HashMap<u64, Arc<str>> = status
            .nodes
            .iter()
            .filter(|n| usable_address(&n.client_address))
            .map(|n| (n.node_id, Arc::from(n.client_address.as_str())))
            .collect();
        let nodes = status
            .nodes
            .iter()
            .filter(|n| !(via_default && n.node_id == answering))
            .filter_map(|n| addresses.get(&n.node_id).cloned())
            .collect();
        let mut leaders = Vec::new();
        let mut electing = false;
        if let Some(t) = status.topics.iter().find(|t| t.name == topic) {
            for p in &t.partitions {
                let i = p.partition as usize;
                if i >= leaders.len() {
                    // Bounded by the topic's partition count (and a partition number at
                    // most 2^16 or so in practice): ignore anything absurd.
                    if i > 1 << 20 {
                        continue;
                    }
                    leaders.resize(i + 1, None);
                }
                leaders[i] = match p.leader {
                    0 => {
                        electing |= p.replicas.contains(&answering);
                        None
                    }
                    leader if via_default && leader == answering => None,
                    leader => addresses.get(&leader).cloned(),
                };
            }
        }
        RouteTable {
            cluster: status.cluster_mode,
            leaders,
            nodes,
            electing,
        }
    }
}

/// Whether a node's client address can be dialled from elsewhere: not empty, and not
/// an unspecified IP (`0.0.0.0`, `[::]`) a node listening on every interface reports.
fn usable_address(address: &str) -> bool {
    if address.is_empty() {
        return false;
    }
    match address.parse::<std::net::SocketAddr>() {
        Ok(addr) => !addr.ip().is_unspecified() && addr.port() != 0,
        Err(_) => true,
    }
}

/// The producer's routes and its connections to the cluster's nodes; all bounded by
/// the number of nodes.
struct Routes {
    state: RouteState,
    /// See [`RouteTable::leaders`].
    leaders: Vec<Target>,
    /// See [`RouteTable::nodes`].
    nodes: Vec<Arc<str>>,
    /// A `ClusterStatus` call is under way.
    refreshing: bool,
    /// When the last one started.
    last_asked: Option<Instant>,
    /// A failure asked for a refresh, made once `ROUTE_REFRESH_MIN` has passed.
    wanted: bool,
    /// A batch was sent since the last refresh (periodic refreshes only while sending).
    sent_since: bool,
    /// The last answer had a partition without a leader.
    electing: bool,
    /// Clients of other nodes, by address, connected on first use.
    clients: HashMap<Arc<str>, Client>,
    /// Nodes whose stream failed before any reply: skipped until the time, and how many
    /// times in a row it happened.
    unreachable: HashMap<Arc<str>, (Instant, u32)>,
}

impl Routes {
    fn new() -> Routes {
        Routes {
            state: RouteState::Unasked,
            leaders: Vec::new(),
            nodes: Vec::new(),
            refreshing: false,
            last_asked: None,
            wanted: false,
            sent_since: false,
            electing: false,
            clients: HashMap::new(),
            unreachable: HashMap::new(),
        }
    }

    /// When the next refresh is due, if one is.
    fn next_refresh(&self) -> Option<Instant> {
        if self.state != RouteState::Routed || self.refreshing {
            return None;
        }
        let last = self.last_asked?;
        let mut due = None::<Instant>;
        let mut at = |t: Instant| due = Some(due.map_or(t, |d| d.min(t)));
        if self.wanted {
            at(last + ROUTE_REFRESH_MIN);
        }
        if self.sent_since {
            at(last
                + if self.electing {
                    ROUTE_REFRESH_ELECTING
                } else {
                    ROUTE_REFRESH_EVERY
                });
        }
        due
    }

    /// Where partition `p`'s batches go now.
    fn target(&self, p: usize, now: Instant) -> Target {
        let address = self.leaders.get(p)?.as_ref()?;
        match self.unreachable.get(address) {
            Some((until, _)) if *until > now => None,
            _ => Some(address.clone()),
        }
    }

    /// The stream to `address` ended before any reply: skip it for a while.
    fn mark_unreachable(&mut self, address: Arc<str>) {
        let entry = self
            .unreachable
            .entry(address)
            .or_insert((Instant::now(), 0));
        let wait = UNREACHABLE_FIRST
            .saturating_mul(1 << entry.1.min(8))
            .min(UNREACHABLE_MAX);
        entry.0 = Instant::now() + wait;
        entry.1 += 1;
    }
}

/// The background task that owns every batch: it alone touches the partitions' state, so
/// none of it needs a lock.
struct Driver {
    /// The node the client was given: `InitProducer`, `ClusterStatus`, and the batches
    /// of partitions without a (reachable) leader elsewhere.
    client: Client,
    /// The buffer of an acknowledged batch (the largest lately), for the next batch to be
    /// built in: a new buffer grows by copying as it fills and is page-faulted in on first
    /// write, together 9 % of a producer's CPU at 1 KiB records. One at most, so it bounds
    /// nothing new.
    spare_buffer: Option<Vec<u8>>,
    raw: RawClient,
    config: ProducerConfig,
    /// One per partition, made on the first record (when the count is known).
    parts: Vec<PartitionState>,
    /// Where keyless records go; moves on to the next partition once that partition's
    /// batch is sealed.
    sticky: u32,
    /// The sticky partition's batch was sealed, so the next keyless record moves `sticky`
    /// on first. Moving it lazily, once, matters when several batches are sealed together
    /// (a linger sweep, a flush): moving it at each of those seals walked it through every
    /// partition back to where it started, and keyless records never left one partition.
    sticky_sealed: bool,
    next_batch_id: u64,
    /// `send_all` groups not yet settled, by number.
    groups: HashMap<u64, GroupWaiter>,
    next_group: u64,
    /// Ids of sealed batches not yet acked or failed.
    outstanding: BTreeSet<u64>,
    /// Flush waiters: resolved once every batch with a smaller id is done.
    flushes: Vec<(u64, oneshot::Sender<()>)>,
    /// Close waiters: resolved when the task ends, after the last ack.
    closes: Vec<oneshot::Sender<()>>,
    /// Set by `close` or when every `Producer` is dropped: end once everything is acked.
    closing: bool,
    /// The open `PublishStream`s, by node (at most one per node), each opened when a
    /// batch is ready for a node with none open.
    streams: HashMap<Target, OpenStream>,
    /// Numbers the streams, so events of an abandoned stream are recognised and ignored.
    generation: u64,
    /// Sequence numbers of `PublishStreamRequest`s; unique across streams.
    next_sequence: u64,
    /// Sequence number -> partition and stream of the batches in flight.
    in_flight: HashMap<u64, InFlight>,
    /// Where each partition's batches go, in a cluster.
    routes: Routes,
    /// The partition dispatch starts from, rotated so no partition is always last
    /// when `max_in_flight` is reached.
    dispatch_from: usize,
    /// Replies and stream ends, from the tasks that read the streams, and the answers of
    /// `InitProducer` and `ClusterStatus`.
    events_tx: mpsc::UnboundedSender<Event>,
    events_rx: mpsc::UnboundedReceiver<Event>,
    retries: Arc<AtomicU64>,
    identity: Identity,
    /// Failed `InitProducer` calls in a row, for the backoff.
    identity_failures: u32,
}

impl Driver {
    fn new(client: Client, config: ProducerConfig, retries: Arc<AtomicU64>) -> Driver {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let config_idempotent = config.idempotent;
        Driver {
            raw: client.raw(),
            client,
            config,
            parts: Vec::new(),
            sticky: 0,
            sticky_sealed: false,
            next_batch_id: 0,
            spare_buffer: None,
            groups: HashMap::new(),
            next_group: 0,
            outstanding: BTreeSet::new(),
            flushes: Vec::new(),
            closes: Vec::new(),
            closing: false,
            streams: HashMap::new(),
            generation: 0,
            next_sequence: 0,
            in_flight: HashMap::new(),
            routes: Routes::new(),
            dispatch_from: 0,
            events_tx,
            events_rx,
            retries,
            identity: if config_idempotent {
                Identity::Needed(None)
            } else {
                Identity::Off
            },
            identity_failures: 0,
        }
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut commands_open = true;
        loop {
            if self.config.send_when_idle {
                self.seal_idle();
            }
            if self
                .routes
                .next_refresh()
                .is_some_and(|t| t <= Instant::now())
            {
                self.refresh_routes();
            }
            self.dispatch();
            self.resolve_flushes();
            if self.closing && self.outstanding.is_empty() && self.all_open_empty() {
                break;
            }
            let wake = self.next_wakeup();
            tokio::select! {
                command = commands.recv(), if commands_open => match command {
                    Some(command) => {
                        self.handle(command);
                        // Take whatever else is queued before dispatching.
                        while let Ok(command) = commands.try_recv() {
                            self.handle(command);
                        }
                        // No linger: send what arrived together now, not at the next timer
                        // tick (tokio's timer has 1 ms granularity, which was most of a
                        // publish's latency at low rates).
                        if self.config.linger.is_zero() {
                            self.seal_all();
                        }
                    }
                    None => {
                        commands_open = false;
                        self.closing = true;
                        self.seal_all();
                    }
                },
                Some(event) = self.events_rx.recv() => self.on_event(event),
                () = sleep_until(wake), if wake.is_some() => self.seal_expired(),
            }
        }
        // Half-close the streams; the brokers have answered everything.
        self.streams.clear();
        for (_, waiter) in self.flushes.drain(..) {
            let _ = waiter.send(());
        }
        for waiter in self.closes.drain(..) {
            let _ = waiter.send(());
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Send {
                partitions,
                record,
                permit,
                ack,
            } => {
                if self.parts.is_empty() {
                    self.parts
                        .resize_with(partitions as usize, Default::default);
                }
                self.append(record, permit, ack);
            }
            Command::SendMany {
                partitions,
                records,
                permit,
                acks,
            } => {
                if self.parts.is_empty() {
                    self.parts
                        .resize_with(partitions as usize, Default::default);
                }
                self.append_many(records, permit, acks);
            }
            Command::Flush(waiter) => {
                self.seal_all();
                self.flushes.push((self.next_batch_id, waiter));
            }
            Command::Close(waiter) => {
                self.closing = true;
                self.seal_all();
                self.closes.push(waiter);
            }
        }
    }

    /// The partition a record goes to, moving the sticky partition on first if its batch
    /// was sealed and this record is keyless.
    fn place(&mut self, record: &Record) -> u32 {
        if self.sticky_sealed && record.partition.is_none() && record.key.is_none() {
            self.sticky = (self.sticky + 1) % self.parts.len() as u32;
            self.sticky_sealed = false;
        }
        self.partition_of(record)
    }

    /// The partition a record goes to.
    fn partition_of(&self, record: &Record) -> u32 {
        let n = self.parts.len() as u32;
        match (record.partition, &record.key) {
            (Some(p), _) => p.min(n - 1),
            (None, Some(key)) => partition_for_key(key, n).0,
            (None, None) => self.sticky % n,
        }
    }

    fn append(
        &mut self,
        record: Record,
        permit: OwnedSemaphorePermit,
        ack: oneshot::Sender<Result<Acked>>,
    ) {
        let p = self.place(&record);
        let timestamp = if record.timestamp_ms == 0 {
            now_ms()
        } else {
            record.timestamp_ms
        };
        let open = self.open_for(p, record.cost());
        push(&mut open.builder, &record, timestamp);
        open.acks.push(Waiter::One(ack));
        hold(&mut open.permit, permit);
        self.seal_if_full(p);
    }

    fn append_many(
        &mut self,
        records: Vec<Record>,
        mut permit: OwnedSemaphorePermit,
        acks: ManyAcks,
    ) {
        let now = now_ms();
        let (mut each, group) = match acks {
            ManyAcks::Each(senders) => (Some(senders.into_iter()), None),
            ManyAcks::All(tx) => {
                let group = self.next_group;
                self.next_group += 1;
                self.groups.insert(
                    group,
                    GroupWaiter {
                        acked: vec![
                            Acked {
                                partition: Partition(0),
                                offset: Offset(0)
                            };
                            records.len()
                        ],
                        remaining: records.len(),
                        tx,
                    },
                );
                (None, Some(group))
            }
        };
        for (index, record) in records.iter().enumerate() {
            let p = self.place(record);
            let cost = record.cost();
            let timestamp = if record.timestamp_ms == 0 {
                now
            } else {
                record.timestamp_ms
            };
            let open = self.open_for(p, cost);
            push(&mut open.builder, record, timestamp);
            match (&mut each, group) {
                (Some(senders), _) => {
                    let ack = senders.next().expect("one sender per record");
                    open.acks.push(Waiter::One(ack));
                }
                (None, Some(group)) => match open.acks.last_mut() {
                    // Consecutive records of the group in one batch share one waiter.
                    Some(Waiter::Group {
                        group: last,
                        index: first,
                        count,
                    }) if *last == group && (*first + *count) as usize == index => *count += 1,
                    _ => open.acks.push(Waiter::Group {
                        group,
                        index: index as u32,
                        count: 1,
                    }),
                },
                (None, None) => unreachable!("a group without waiters"),
            }
            // Each record's cost moves to its batch (the group's permit may hold less
            // than the sum if the group exceeded the whole budget).
            if let Some(part) = permit.split(cost.min(permit.num_permits())) {
                hold(&mut open.permit, part);
            }
            self.seal_if_full(p);
        }
        // Whatever is left (rounding) goes with the last batch touched.
        if permit.num_permits() > 0
            && let Some(last) = records.last()
        {
            let p = self.partition_of(last);
            if let Some(open) = &mut self.parts[p as usize].open {
                hold(&mut open.permit, permit);
            }
        }
    }

    /// The open batch of partition `p`, sealing the current one first if a record of
    /// `cost` bytes would take it past `batch_bytes`.
    fn open_for(&mut self, p: u32, cost: usize) -> &mut OpenBatch {
        let batch_bytes = self.config.batch_bytes;
        if let Some(open) = &self.parts[p as usize].open
            && open.builder.encoded_len() + cost > batch_bytes
        {
            self.seal(p);
        }
        let linger = self.config.linger;
        let idempotent = self.config.idempotent;
        let capacity = batch_bytes.min(INITIAL_BATCH_CAPACITY) + cost;
        let spare = &mut self.spare_buffer;
        self.parts[p as usize]
            .open
            .get_or_insert_with(|| OpenBatch {
                // A new buffer starts small (a quiet partition's batch stays small) and grows
                // as it fills; a busy partition's next batch gets the grown buffer of one
                // already acknowledged, when there is one.
                builder: match spare.take_if(|b| b.capacity() >= capacity) {
                    Some(buffer) => BatchBuilder::in_buffer(buffer, idempotent),
                    None if idempotent => BatchBuilder::with_producer_block(capacity),
                    None => BatchBuilder::with_capacity(capacity),
                },
                acks: Vec::new(),
                permit: None,
                deadline: Instant::now() + linger,
            })
    }

    fn seal_if_full(&mut self, p: u32) {
        if let Some(open) = &self.parts[p as usize].open
            && (open.builder.encoded_len() >= self.config.batch_bytes
                || open.builder.len() >= MAX_BATCH_RECORDS)
        {
            self.seal(p);
        }
    }

    fn seal(&mut self, p: u32) {
        let Some(open) = self.parts[p as usize].open.take() else {
            return;
        };
        let id = self.next_batch_id;
        self.next_batch_id += 1;
        self.outstanding.insert(id);
        let records = open.builder.len();
        self.parts[p as usize].queue.push_back(SealedBatch {
            id,
            payload: Bytes::from(open.builder.finish()),
            acks: open.acks,
            _permit: open.permit,
            attempts: 0,
            records,
            stamp: None,
        });
        if p == self.sticky {
            self.sticky_sealed = true;
        }
    }

    fn seal_all(&mut self) {
        for p in 0..self.parts.len() as u32 {
            self.seal(p);
        }
    }

    /// Seals the open batch of every partition with nothing queued or in flight (and no
    /// retry pending), so it is sent now: waiting for more records only pays while a
    /// batch of the partition is on its way anyway.
    fn seal_idle(&mut self) {
        for p in 0..self.parts.len() {
            let part = &self.parts[p];
            if part.open.is_some() && part.queue.is_empty() && !part.in_flight {
                self.seal(p as u32);
            }
        }
    }

    fn seal_expired(&mut self) {
        let now = Instant::now();
        for p in 0..self.parts.len() as u32 {
            if self.held(p as usize) {
                continue;
            }
            if self.parts[p as usize]
                .open
                .as_ref()
                .is_some_and(|o| o.deadline <= now)
            {
                self.seal(p);
            }
        }
    }

    /// Whether partition `p`'s open batch waits for its batch on the way (adaptive
    /// batching) rather than for `linger`: `seal_idle` seals it once that one is acked.
    fn held(&self, p: usize) -> bool {
        let part = &self.parts[p];
        self.config.send_when_idle && (part.in_flight || !part.queue.is_empty())
    }

    fn all_open_empty(&self) -> bool {
        self.parts.iter().all(|p| p.open.is_none())
    }

    /// The next linger deadline or future retry time, if any. A retry time already past
    /// is left out: `dispatch` has sent that batch, or is waiting for a free in-flight
    /// slot, which a reply (an event) frees; waking for it would spin.
    fn next_wakeup(&self) -> Option<Instant> {
        let now = Instant::now();
        let identity_retry = match self.identity {
            Identity::Needed(Some(t)) if t > now => Some(t),
            _ => None,
        };
        self.parts
            .iter()
            .enumerate()
            .flat_map(|(i, p)| {
                let retry = p
                    .retry_at
                    .filter(|t| *t > now && !p.in_flight && !p.queue.is_empty());
                // A held batch has no deadline: an ack (an event) wakes the task for it.
                let linger = p
                    .open
                    .as_ref()
                    .filter(|_| !self.held(i))
                    .map(|o| o.deadline);
                [linger, retry]
            })
            .flatten()
            .chain(identity_retry)
            .chain(self.routes.next_refresh())
            .min()
    }

    /// Sends the front batch of every partition that can send one, within
    /// `max_in_flight`.
    fn dispatch(&mut self) {
        let n = self.parts.len();
        if n == 0 {
            return;
        }
        let now = Instant::now();
        // Where the batches go is asked once before the first, alongside `InitProducer`;
        // the batches wait for the answer.
        let routed = match self.routes.state {
            RouteState::Unasked => {
                if self.parts.iter().any(|p| !p.queue.is_empty()) {
                    self.routes.state = RouteState::Waiting;
                    self.refresh_routes();
                }
                false
            }
            RouteState::Waiting => false,
            RouteState::Single | RouteState::Routed => true,
        };
        let (producer_id, epoch) = match self.identity {
            Identity::Off => (0, 0),
            Identity::Known { producer_id, epoch } => (producer_id, epoch),
            Identity::Needed(after) => {
                if after.is_none_or(|t| t <= now) && self.parts.iter().any(|p| !p.queue.is_empty())
                {
                    self.ask_identity();
                }
                return;
            }
            Identity::Asking => return,
        };
        if !routed {
            return;
        }
        let start = self.dispatch_from;
        self.dispatch_from = (self.dispatch_from + 1) % n;
        for i in 0..n {
            if self.in_flight.len() >= self.config.max_in_flight {
                return;
            }
            let p = (start + i) % n;
            let part = &self.parts[p];
            if part.in_flight || part.queue.is_empty() || part.retry_at.is_some_and(|t| t > now) {
                continue;
            }
            let target = self.routes.target(p, now);
            let (generation, requests) = self.stream_sender(target);
            let part = &mut self.parts[p];
            let batch = part.queue.front_mut().expect("checked non-empty");
            if producer_id != 0 && batch.stamp.is_none() {
                let stamp = ProducerStamp {
                    producer_id,
                    epoch,
                    base_sequence: part.next_sequence,
                };
                // In place: nothing else holds a batch before its first send, and
                // `Vec::from(Bytes)` would move every byte onto itself.
                let mut bytes = std::mem::take(&mut batch.payload)
                    .try_into_mut()
                    .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
                batch::stamp_producer(&mut bytes, stamp);
                batch.payload = bytes.freeze();
                batch.stamp = Some(stamp);
                part.next_sequence = part.next_sequence.wrapping_add(batch.records);
            }
            let sequence = self.next_sequence;
            self.next_sequence += 1;
            let request = v1::PublishStreamRequest {
                sequence,
                publish: Some(v1::PublishRequest {
                    topic: self.config.topic.clone(),
                    partition: Some(p as u32),
                    payload: Some(v1::publish_request::Payload::StorageBatch(
                        batch.payload.clone(),
                    )),
                    producer: None,
                }),
            };
            part.in_flight = true;
            part.retry_at = None;
            self.routes.sent_since = true;
            self.in_flight.insert(
                sequence,
                InFlight {
                    partition: p as u32,
                    generation,
                },
            );
            // If the stream's task is gone, its `Ended` event fails this batch over.
            let _ = requests.send(request);
        }
    }

    /// Asks the broker for this producer's identity; the answer comes as an event.
    fn ask_identity(&mut self) {
        self.identity = Identity::Asking;
        let mut raw = self.raw.clone();
        let events = self.events_tx.clone();
        let request = v1::InitProducerRequest {
            producer_name: self.config.producer_name.clone().unwrap_or_default(),
        };
        tokio::spawn(async move {
            let answer = raw
                .init_producer(request)
                .await
                .map_err(Error::from)
                .and_then(|r| {
                    let r = r.into_inner();
                    let epoch = u16::try_from(r.epoch)
                        .map_err(|_| Error::Protocol(format!("producer epoch {}", r.epoch)))?;
                    Ok((r.producer_id, epoch))
                });
            let _ = events.send(Event::Identity(answer));
        });
    }

    fn on_identity(&mut self, answer: Result<(u64, u16)>) {
        match answer {
            Ok((producer_id, epoch)) => {
                self.identity_failures = 0;
                self.identity = Identity::Known { producer_id, epoch };
                // A new identity starts every partition's sequence afresh.
                for part in &mut self.parts {
                    part.next_sequence = 0;
                }
            }
            Err(error)
                if is_transient(&error) && self.identity_failures < self.config.max_retries =>
            {
                let delay = crate::backoff::nth(
                    self.config.retry_backoff,
                    self.config.retry_backoff_max,
                    self.identity_failures,
                );
                self.identity_failures += 1;
                self.identity = Identity::Needed(Some(Instant::now() + delay));
            }
            Err(error) => {
                // Nothing can be sent without an identity: every waiting batch fails, and
                // the next record asks again.
                self.identity_failures = 0;
                self.identity = Identity::Needed(None);
                for p in 0..self.parts.len() {
                    while !self.parts[p].queue.is_empty() {
                        self.give_up(p as u32, error.clone());
                    }
                }
            }
        }
    }

    /// Asks for `ClusterStatus`, from the given node and, if it does not answer, from the
    /// other nodes it named; the answer comes as an event.
    fn refresh_routes(&mut self) {
        let routes = &mut self.routes;
        routes.refreshing = true;
        routes.wanted = false;
        routes.sent_since = false;
        routes.last_asked = Some(Instant::now());
        let mut askers = vec![(true, self.raw.clone())];
        for address in routes.nodes.clone() {
            if let Some(client) = self.node_client(&address) {
                askers.push((false, client.raw()));
            }
        }
        let topic = self.config.topic.clone();
        let events = self.events_tx.clone();
        tokio::spawn(async move {
            let mut last = Error::Unavailable("no node answered ClusterStatus".into());
            for (via_default, mut raw) in askers {
                let call = raw.cluster_status(v1::ClusterStatusRequest {});
                match tokio::time::timeout(ROUTE_ASK_TIMEOUT, call).await {
                    Ok(Ok(status)) => {
                        let table = RouteTable::read(status.into_inner(), &topic, via_default);
                        let _ = events.send(Event::Routes(Ok(table)));
                        return;
                    }
                    Ok(Err(status)) => last = Error::from(status),
                    Err(_) => last = Error::Timeout,
                }
                // A refusal (not a transport failure) the others would repeat.
                if !is_transient(&last) {
                    break;
                }
            }
            let _ = events.send(Event::Routes(Err(last)));
        });
    }

    fn on_routes(&mut self, answer: Result<RouteTable>) {
        let routes = &mut self.routes;
        routes.refreshing = false;
        match answer {
            Ok(table) if !table.cluster => {
                // Not a cluster: one stream to the given node, as always; never asked again.
                routes.state = RouteState::Single;
                routes.leaders.clear();
                routes.nodes.clear();
            }
            Ok(table) => {
                routes.state = RouteState::Routed;
                routes.leaders = table.leaders;
                routes.nodes = table.nodes;
                routes.electing = table.electing;
                // Forget connections to nodes no longer in the cluster, and close idle
                // streams to nodes that lead none of the partitions now.
                let known: HashSet<&Arc<str>> = routes.nodes.iter().collect();
                routes.clients.retain(|address, _| known.contains(address));
                routes
                    .unreachable
                    .retain(|address, _| known.contains(address));
                let leading: HashSet<&Arc<str>> = routes.leaders.iter().flatten().collect();
                let busy: HashSet<u64> = self.in_flight.values().map(|f| f.generation).collect();
                self.streams.retain(|target, stream| match target {
                    None => true,
                    Some(address) => leading.contains(address) || busy.contains(&stream.generation),
                });
            }
            Err(error) if is_transient(&error) => {
                // Kept as they were (the given node's route for every partition at
                // first); asked again later.
                if routes.state == RouteState::Waiting {
                    routes.state = RouteState::Routed;
                }
            }
            Err(_) => {
                // The broker does not say (an older broker, or a principal that may not
                // describe the cluster): the given node forwards.
                routes.state = RouteState::Single;
                routes.leaders.clear();
            }
        }
    }

    /// The client of the node at `address`, made on first use (`None` if the address
    /// cannot be used; the node is then skipped for a while).
    fn node_client(&mut self, address: &Arc<str>) -> Option<Client> {
        if let Some(client) = self.routes.clients.get(address) {
            return Some(client.clone());
        }
        match self.client.to_address(address) {
            Ok(client) => {
                self.routes.clients.insert(address.clone(), client.clone());
                Some(client)
            }
            Err(_) => {
                self.routes.mark_unreachable(address.clone());
                None
            }
        }
    }

    /// The generation and request channel of the stream to `target`, opening one if
    /// needed.
    fn stream_sender(
        &mut self,
        target: Target,
    ) -> (u64, mpsc::UnboundedSender<v1::PublishStreamRequest>) {
        if let Some(stream) = self.streams.get(&target) {
            return (stream.generation, stream.requests.clone());
        }
        let (target, service) = match &target {
            None => (None, self.client.grpc_service()),
            Some(address) => match self.node_client(address) {
                Some(client) => (target, client.grpc_service()),
                None => return self.stream_sender(None),
            },
        };
        self.generation += 1;
        let generation = self.generation;
        let (requests, rx) = mpsc::unbounded_channel();
        let events = self.events_tx.clone();
        tokio::spawn(async move {
            let mut inbound = match publish_stream::open(service, rx).await {
                Ok(inbound) => inbound,
                Err(status) => {
                    let _ = events.send(Event::Ended(generation, Some(status)));
                    return;
                }
            };
            loop {
                match inbound.message().await {
                    Ok(Some(reply)) => {
                        if events.send(Event::Reply(generation, reply)).is_err() {
                            return;
                        }
                    }
                    Ok(None) => {
                        let _ = events.send(Event::Ended(generation, None));
                        return;
                    }
                    Err(status) => {
                        let _ = events.send(Event::Ended(generation, Some(status)));
                        return;
                    }
                }
            }
        });
        self.streams.insert(
            target,
            OpenStream {
                generation,
                requests: requests.clone(),
                replied: false,
            },
        );
        (generation, requests)
    }

    /// The node of the open stream numbered `generation`, if it is still open.
    fn stream_of(&self, generation: u64) -> Option<Target> {
        self.streams
            .iter()
            .find(|(_, s)| s.generation == generation)
            .map(|(target, _)| target.clone())
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Reply(generation, reply) => {
                let Some(target) = self.stream_of(generation) else {
                    return; // from a stream already abandoned
                };
                if let Some(stream) = self.streams.get_mut(&target)
                    && !stream.replied
                {
                    stream.replied = true;
                    if let Some(address) = &target {
                        self.routes.unreachable.remove(address);
                    }
                }
                let Some(sent) = self.in_flight.remove(&reply.sequence) else {
                    return;
                };
                let p = sent.partition;
                match reply.outcome {
                    Some(v1::publish_stream_response::Outcome::Published(published)) => {
                        self.acked(p, published);
                    }
                    Some(v1::publish_stream_response::Outcome::Error(error)) => {
                        let error = Error::from_code(error.code, error.message);
                        if matches!(error, Error::Unavailable(_)) {
                            // Its leader may have moved.
                            self.routes.wanted = true;
                        }
                        self.failed(p, error);
                    }
                    None => self.failed(p, Error::Protocol("a reply without outcome".into())),
                }
            }
            Event::Ended(generation, status) => {
                let Some(target) = self.stream_of(generation) else {
                    return; // from a stream already abandoned
                };
                let stream = self.streams.remove(&target).expect("found above");
                if let Some(address) = target
                    && !stream.replied
                {
                    // Not reached (or gone): its partitions go to the given node for a while.
                    self.routes.mark_unreachable(address);
                }
                self.routes.wanted = true;
                let error = match status {
                    Some(status) => Error::from(status),
                    None => Error::Unavailable("the publish stream ended".into()),
                };
                // Transport failures surface as various codes; a broken stream is
                // always worth retrying, since the batches may simply not have arrived.
                let error = match error {
                    Error::Status { message, .. } => Error::Unavailable(message),
                    other => other,
                };
                let mut stranded = Vec::new();
                self.in_flight.retain(|_, sent| {
                    let on_it = sent.generation == generation;
                    if on_it {
                        stranded.push(sent.partition);
                    }
                    !on_it
                });
                for p in stranded {
                    self.failed(p, error.clone());
                }
            }
            Event::Identity(answer) => self.on_identity(answer),
            Event::Routes(answer) => self.on_routes(answer),
        }
    }

    fn acked(&mut self, p: u32, published: v1::PublishResponse) {
        let part = &mut self.parts[p as usize];
        part.in_flight = false;
        let batch = part.queue.pop_front().expect("an in-flight batch");
        self.outstanding.remove(&batch.id);
        if self
            .spare_buffer
            .as_ref()
            .is_none_or(|spare| spare.capacity() < batch.payload.len())
            && let Ok(mut buffer) = batch.payload.try_into_mut()
        {
            // Acknowledged, so HTTP/2 has sent it and dropped its handle; emptied first so
            // the conversion moves no bytes.
            buffer.clear();
            self.spare_buffer = Some(Vec::from(buffer));
        }
        let partition = Partition(published.partition);
        let mut offset = published.base_offset;
        for waiter in batch.acks {
            match waiter {
                Waiter::One(ack) => {
                    let _ = ack.send(Ok(Acked {
                        partition,
                        offset: Offset(offset),
                    }));
                    offset += 1;
                }
                Waiter::Group {
                    group,
                    index,
                    count,
                } => {
                    if let Some(waiting) = self.groups.get_mut(&group) {
                        let slots = &mut waiting.acked[index as usize..][..count as usize];
                        for (i, slot) in slots.iter_mut().enumerate() {
                            *slot = Acked {
                                partition,
                                offset: Offset(offset + i as u64),
                            };
                        }
                        waiting.remaining -= count as usize;
                        if waiting.remaining == 0 {
                            let done = self.groups.remove(&group).expect("present");
                            let _ = done.tx.send(Ok(done.acked));
                        }
                    }
                    offset += u64::from(count);
                }
            }
        }
    }

    fn failed(&mut self, p: u32, error: Error) {
        let current = match self.identity {
            Identity::Known { producer_id, epoch } => Some((producer_id, epoch)),
            _ => None,
        };
        let config = &self.config;
        let part = &mut self.parts[p as usize];
        part.in_flight = false;
        let batch = part.queue.front_mut().expect("an in-flight batch");
        let stamped_now = batch
            .stamp
            .is_some_and(|s| Some((s.producer_id, s.epoch)) == current);
        // The broker refused the batch's sequence: it does not follow what the partition
        // stored (a batch that failed after its retries may or may not have landed). It
        // was not stored, so it can be numbered afresh: a new identity restarts every
        // partition at 0. Likewise a batch fenced by this producer's own newer epoch.
        let renumber = batch.stamp.is_some()
            && batch.attempts < config.max_retries
            && match error.code() {
                Some(tonic::Code::Aborted) => true,
                Some(tonic::Code::FailedPrecondition) => {
                    !stamped_now && error.message().contains("is fenced")
                }
                _ => false,
            };
        if renumber {
            batch.attempts += 1;
            batch.stamp = None;
            self.retries.fetch_add(1, Ordering::Relaxed);
            if stamped_now && matches!(error.code(), Some(tonic::Code::Aborted)) {
                self.identity = Identity::Needed(None);
            }
            return;
        }
        if !error.is_retryable() && stamped_now {
            // Refused before it was stored: its sequence numbers are free again. (A batch
            // given up on after `UNAVAILABLE` keeps them used: it may have landed.)
            part.next_sequence = batch.stamp.expect("stamped").base_sequence;
        }
        if error.is_retryable() && batch.attempts < config.max_retries {
            let delay = crate::backoff::nth(
                config.retry_backoff,
                config.retry_backoff_max,
                batch.attempts,
            );
            batch.attempts += 1;
            self.retries.fetch_add(1, Ordering::Relaxed);
            part.retry_at = Some(Instant::now() + delay);
            return;
        }
        self.give_up(p, error);
    }

    /// Fails the front batch of partition `p` with `error`.
    fn give_up(&mut self, p: u32, error: Error) {
        let part = &mut self.parts[p as usize];
        let batch = part.queue.pop_front().expect("a queued batch");
        self.outstanding.remove(&batch.id);
        for waiter in batch.acks {
            match waiter {
                Waiter::One(ack) => {
                    let _ = ack.send(Err(error.clone()));
                }
                // The group fails with its first error; its other batches then find it
                // gone.
                Waiter::Group { group, .. } => {
                    if let Some(failed) = self.groups.remove(&group) {
                        let _ = failed.tx.send(Err(error.clone()));
                    }
                }
            }
        }
    }

    fn resolve_flushes(&mut self) {
        if self.flushes.is_empty() {
            return;
        }
        let lowest = self.outstanding.first().copied().unwrap_or(u64::MAX);
        let (done, waiting): (Vec<_>, Vec<_>) =
            self.flushes.drain(..).partition(|(id, _)| *id <= lowest);
        self.flushes = waiting;
        for (_, waiter) in done {
            let _ = waiter.send(());
        }
    }
}

/// Whether a unary call's failure says nothing about the request itself: the broker was
/// unreachable, restarting, or the connection broke under the call.
fn is_transient(error: &Error) -> bool {
    match error {
        Error::Unavailable(_) | Error::Timeout | Error::Transport(_) => true,
        Error::Status { code, .. } => matches!(
            code,
            tonic::Code::Cancelled | tonic::Code::Unknown | tonic::Code::DeadlineExceeded
        ),
        _ => false,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Encodes `record` into `builder` with this timestamp.
fn push(builder: &mut BatchBuilder, record: &Record, timestamp: i64) {
    let headers: Vec<(&str, &[u8])> = record
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_ref()))
        .collect();
    builder.push(&BatchRecord {
        timestamp,
        key: record.key.as_deref(),
        value: &record.value,
        headers: &headers,
    });
}

/// Adds `permit` to what a batch holds.
fn hold(held: &mut Option<OwnedSemaphorePermit>, permit: OwnedSemaphorePermit) {
    match held {
        Some(held) => held.merge(permit),
        None => *held = Some(permit),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, address: &str) -> v1::ClusterNode {
        v1::ClusterNode {
            node_id: id,
            client_address: address.into(),
            ..v1::ClusterNode::default()
        }
    }

    fn partition(p: u32, leader: u64) -> v1::ClusterPartition {
        v1::ClusterPartition {
            partition: p,
            replicas: vec![1, 2, 3],
            leader,
            lag: Vec::new(),
        }
    }

    fn status(answering: u64, leaders: &[u64]) -> v1::ClusterStatusResponse {
        v1::ClusterStatusResponse {
            node_id: answering,
            cluster_mode: true,
            nodes: vec![
                node(1, "10.0.0.1:50051"),
                node(2, "10.0.0.2:50051"),
                node(3, "0.0.0.0:50051"),
            ],
            topics: vec![v1::ClusterTopic {
                name: "t".into(),
                replication_factor: 3,
                partitions: leaders
                    .iter()
                    .enumerate()
                    .map(|(p, &l)| partition(p as u32, l))
                    .collect(),
            }],
            ..v1::ClusterStatusResponse::default()
        }
    }

    fn addresses(table: &RouteTable) -> Vec<Option<&str>> {
        table.leaders.iter().map(|t| t.as_deref()).collect()
    }

    #[test]
    fn routes_name_leaders_by_address_and_fall_back_to_the_given_node() {
        // Asked through the given node (1): its own partitions and unknown leaders stay
        // with it, as does a leader with an address nobody can dial.
        let table = RouteTable::read(status(1, &[1, 2, 0, 3]), "t", true);
        assert!(table.cluster);
        assert_eq!(
            addresses(&table),
            [None, Some("10.0.0.2:50051"), None, None]
        );
        assert!(table.electing, "partition 2 has no leader");
        assert_eq!(table.nodes, vec![Arc::from("10.0.0.2:50051")]);

        // Asked through another node: node 1's partitions go to node 1 by address.
        let table = RouteTable::read(status(2, &[1, 2, 2, 3]), "t", false);
        assert_eq!(
            addresses(&table),
            [
                Some("10.0.0.1:50051"),
                Some("10.0.0.2:50051"),
                Some("10.0.0.2:50051"),
                None
            ]
        );
        assert!(!table.electing);

        // Another topic, or a single broker: everything to the given node.
        assert!(
            RouteTable::read(status(1, &[2]), "other", true)
                .leaders
                .is_empty()
        );
        let single = v1::ClusterStatusResponse {
            cluster_mode: false,
            ..status(0, &[0])
        };
        assert!(!RouteTable::read(single, "t", true).cluster);
    }

    #[test]
    fn unusable_addresses_are_recognised() {
        assert!(usable_address("10.0.0.1:50051"));
        assert!(usable_address("broker-2.internal:50051"));
        assert!(usable_address("[::1]:50051"));
        assert!(!usable_address(""));
        assert!(!usable_address("0.0.0.0:50051"));
        assert!(!usable_address("[::]:50051"));
        assert!(!usable_address("10.0.0.1:0"));
    }

    #[test]
    fn an_unreachable_node_is_skipped_for_longer_each_time() {
        let mut routes = Routes::new();
        let address: Arc<str> = Arc::from("10.0.0.2:50051");
        routes.leaders = vec![Some(address.clone())];
        let now = Instant::now();
        assert_eq!(routes.target(0, now), Some(address.clone()));
        routes.mark_unreachable(address.clone());
        assert_eq!(routes.target(0, Instant::now()), None);
        let first = routes.unreachable[&address].0;
        routes.mark_unreachable(address.clone());
        assert!(routes.unreachable[&address].0 > first);
        assert_eq!(
            routes.target(0, Instant::now() + UNREACHABLE_MAX + Duration::from_secs(1)),
            Some(address)
        );
        assert_eq!(routes.target(5, now), None, "a partition without a route");
    }
}
