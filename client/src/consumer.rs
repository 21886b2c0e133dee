//! The consumer: a member of a consumer group over one `Subscribe` stream.
//!
//! [`Consumer::subscribe`] joins the group and spawns a task that owns the stream. The task
//! hands deliveries to the [`Subscription`] (a [`futures::Stream`] of [`Message`]s) through
//! a bounded channel, and sends the acks, nacks, extensions and credit of those messages
//! back on the same stream. If the stream breaks (the broker restarts, the connection
//! drops) the task joins again with the same settings after a backoff; messages received
//! on the old stream become stale and their unacked messages are delivered again.

use std::collections::{HashSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use herald_proto::v1;
use herald_proto::v1::subscribe_request::Request;
use herald_proto::v1::subscribe_response::Response;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnboundedReceiverStream;

use herald_format::batch::Records;

use crate::{Client, Error, GroupSettings, Offset, Partition, Position, Result};

/// Capacity, in received responses (each a batch of deliveries), of the channel between
/// the stream task and the [`Subscription`]. Handing over whole responses costs one
/// channel trip per response instead of one per message; the broker's in-flight window
/// (or credit) is what bounds the messages held.
const CHANNEL_BATCHES: usize = 16;

/// Most commands (acks, nacks...) the stream task merges into one pass.
const MAX_COMMANDS_PER_PASS: usize = 1024;

/// How long [`Subscription::close`] waits for the broker to take the last acks and end
/// the stream. The broker answers at once when it is reachable; this bounds a close on a
/// dead connection.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Most messages one ack range names: the broker's limit (the most a member can hold in
/// flight).
use herald_format::limits::MAX_ACK_RANGE;

/// Settings of a [`Consumer`]; made by [`ConsumerConfig::new`] and adjusted with its
/// builder methods.
///
/// ```
/// use std::time::Duration;
/// use herald_client::{ConsumerConfig, Position};
///
/// let config = ConsumerConfig::new("orders", "billing")
///     .client_id("billing-1")
///     .max_in_flight_messages(500)
///     .start_position(Position::Earliest)
///     .auto_extend(Duration::from_secs(10));
/// ```
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// The topic to consume.
    pub topic: String,
    /// The consumer group to join (created on first join if it does not exist).
    pub group: String,
    /// A free label for this consumer, shown by `describe_group` (default empty).
    pub client_id: String,
    /// Most deliveries this member may hold unacked at once (0: the broker's default).
    pub max_in_flight_messages: u32,
    /// Most bytes (key, value and headers) this member may hold unacked at once
    /// (0: the broker's default).
    pub max_in_flight_bytes: u64,
    /// With the group's `key` ordering: most messages of one key this consumer may hold
    /// unacked at once, received in offset order (0 or 1, the default: a key's next
    /// message comes only once the previous one is acked or dead-lettered, so messages may
    /// be processed concurrently). Raise it only if each key's messages are processed in
    /// the order received: more of a busy key then flows per round trip. A nacked or
    /// expired message then takes the key's later unacked messages back with it: they
    /// come again after it, and acking them before that has no effect.
    pub max_in_flight_per_key: u32,
    /// Where the group starts if this consumer creates it (`None`: the end, `Latest`).
    /// Ignored for an existing group.
    pub start_position: Option<Position>,
    /// The group's settings if this consumer creates it. Ignored for an existing group.
    pub group_settings: GroupSettings,
    /// Credit-based flow control: `Some((messages, bytes))` lets the broker send at most
    /// that many messages and bytes that the application has not yet taken from the
    /// [`Subscription`]. `None` (default): only the in-flight limits pace deliveries.
    pub credit_window: Option<(u32, u64)>,
    /// `Some(d)`: every `d / 2`, push the ack deadline of every message still held
    /// (received, not yet acked, nacked or dropped) to now + `d`. `None` (default): no
    /// automatic extension.
    pub auto_extend: Option<Duration>,
    /// First delay before joining again after the stream broke (default 100 ms); doubled
    /// on each failed attempt, each plus a random jitter of up to as much again.
    pub reconnect_backoff: Duration,
    /// Largest delay between attempts to join again, before jitter (default 5 s).
    pub reconnect_backoff_max: Duration,
    /// Ask the broker for batched deliveries (default `true`): runs of messages come as
    /// the stored batch that holds them and are acked as ranges, so neither side encodes
    /// or decodes a protobuf message per record. `false`: one `Delivery` per message.
    /// Either way the [`Subscription`] yields the same [`Message`]s.
    pub batched_deliveries: bool,
    /// `Some(n)`: the [`Subscription`] ends (yields `None`) after yielding `n` messages,
    /// and credit flow control keeps the broker from sending more than that, so no
    /// message is taken from the group (using up one of its delivery attempts) only to be
    /// left unread. Redeliveries count. `None` (default): no limit.
    pub max_messages: Option<u64>,
    /// How long [`Consumer::subscribe`] keeps trying a first join that fails with a
    /// transient error (`UNAVAILABLE`, a transport failure, a timeout: a cluster
    /// electing a leader, a group moving to another node, a broker restarting), with the
    /// reconnect backoff between attempts, before it returns the error (default 10 s;
    /// zero: the first error is returned at once). Other errors are returned at once.
    pub first_join_retry: Duration,
}

impl ConsumerConfig {
    /// Settings for consuming `topic` as a member of `group`, with the defaults.
    pub fn new(topic: impl Into<String>, group: impl Into<String>) -> ConsumerConfig {
        ConsumerConfig {
            topic: topic.into(),
            group: group.into(),
            client_id: String::new(),
            max_in_flight_messages: 0,
            max_in_flight_bytes: 0,
            max_in_flight_per_key: 0,
            start_position: None,
            group_settings: GroupSettings::default(),
            credit_window: None,
            auto_extend: None,
            reconnect_backoff: Duration::from_millis(100),
            reconnect_backoff_max: Duration::from_secs(5),
            batched_deliveries: true,
            max_messages: None,
            first_join_retry: Duration::from_secs(10),
        }
    }

    /// Sets [`ConsumerConfig::first_join_retry`].
    pub fn first_join_retry(mut self, bound: Duration) -> Self {
        self.first_join_retry = bound;
        self
    }

    /// Sets [`ConsumerConfig::max_messages`].
    pub fn max_messages(mut self, messages: u64) -> Self {
        self.max_messages = Some(messages);
        self
    }

    /// Sets [`ConsumerConfig::batched_deliveries`].
    pub fn batched_deliveries(mut self, batched: bool) -> Self {
        self.batched_deliveries = batched;
        self
    }

    /// Sets [`ConsumerConfig::client_id`].
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = client_id.into();
        self
    }

    /// Sets [`ConsumerConfig::max_in_flight_messages`].
    pub fn max_in_flight_messages(mut self, messages: u32) -> Self {
        self.max_in_flight_messages = messages;
        self
    }

    /// Sets [`ConsumerConfig::max_in_flight_bytes`].
    pub fn max_in_flight_bytes(mut self, bytes: u64) -> Self {
        self.max_in_flight_bytes = bytes;
        self
    }

    /// Sets [`ConsumerConfig::max_in_flight_per_key`].
    pub fn max_in_flight_per_key(mut self, messages: u32) -> Self {
        self.max_in_flight_per_key = messages;
        self
    }

    /// Sets [`ConsumerConfig::start_position`].
    pub fn start_position(mut self, position: Position) -> Self {
        self.start_position = Some(position);
        self
    }

    /// Sets [`ConsumerConfig::group_settings`].
    pub fn group_settings(mut self, settings: GroupSettings) -> Self {
        self.group_settings = settings;
        self
    }

    /// Sets [`ConsumerConfig::credit_window`] (a window of at least one message).
    pub fn credit_window(mut self, messages: u32, bytes: u64) -> Self {
        self.credit_window = Some((messages.max(1), bytes.max(1)));
        self
    }

    /// Sets [`ConsumerConfig::auto_extend`].
    pub fn auto_extend(mut self, extension: Duration) -> Self {
        self.auto_extend = Some(extension);
        self
    }

    /// Sets [`ConsumerConfig::reconnect_backoff`] and
    /// [`ConsumerConfig::reconnect_backoff_max`].
    pub fn reconnect_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.reconnect_backoff = first;
        self.reconnect_backoff_max = max.max(first);
        self
    }

    fn join(&self) -> v1::Join {
        v1::Join {
            topic: self.topic.clone(),
            group: self.group.clone(),
            client_id: self.client_id.clone(),
            max_in_flight_messages: self.max_in_flight_messages,
            max_in_flight_bytes: self.max_in_flight_bytes,
            settings: Some(self.group_settings.clone().into_proto()),
            start_position: self.start_position.map(Position::into_proto),
            credit_flow_control: self.pacing().credit_flow_control(),
            batched_deliveries: self.batched_deliveries,
            max_in_flight_per_key: self.max_in_flight_per_key,
        }
    }

    fn pacing(&self) -> Pacing {
        Pacing {
            credit_window: self.credit_window,
            max_messages: self.max_messages,
        }
    }
}

/// The settings that decide the credit a subscription grants the broker.
#[derive(Debug, Clone, Copy)]
struct Pacing {
    credit_window: Option<(u32, u64)>,
    max_messages: Option<u64>,
}

impl Pacing {
    fn credit_flow_control(self) -> bool {
        self.credit_window.is_some() || self.max_messages.is_some()
    }

    /// The messages of credit held out at most: the window, or with only a message limit,
    /// as many as one grant can name.
    fn window_messages(self) -> u32 {
        self.credit_window
            .map_or(u32::MAX, |(messages, _)| messages)
    }

    /// The credit granted on joining, once `taken` messages have been yielded: the window,
    /// but never more messages than are left before `max_messages`.
    fn join_credit(self, taken: u64) -> Option<v1::Credit> {
        if !self.credit_flow_control() {
            return None;
        }
        let left = self
            .max_messages
            .map_or(u64::MAX, |max| max.saturating_sub(taken));
        Some(v1::Credit {
            messages: left.min(u64::from(self.window_messages())) as u32,
            bytes: self.credit_window.map_or(u64::MAX, |(_, bytes)| bytes),
        })
    }

    /// The credit given back when the message numbered `taken` (from 1), of `size`
    /// bytes, is yielded. The window is topped up by one message while at least a
    /// window's worth remain before `max_messages`; below that, the credit already out
    /// covers exactly the messages left, so none is added.
    fn credit_after_take(self, taken: u64, size: u64) -> Option<(u32, u64)> {
        if !self.credit_flow_control() {
            return None;
        }
        let messages = match self.max_messages {
            None => 1,
            Some(max) => u32::from(max.saturating_sub(taken) >= u64::from(self.window_messages())),
        };
        let bytes = if self.credit_window.is_some() {
            size
        } else {
            0
        };
        (messages > 0 || bytes > 0).then_some((messages, bytes))
    }
}

/// A consumer of one topic as a member of one group; made by [`Client::consumer`].
///
/// Delivery is **at-least-once**: a message is delivered again if it is nacked, if its
/// ack deadline passes, or if the stream it came on breaks before its ack reached the
/// broker (after a broker restart, for example). Within a group the broker keeps each
/// key's messages in order (with the default per-key ordering), also across redeliveries.
#[derive(Debug, Clone)]
pub struct Consumer {
    client: Client,
    config: ConsumerConfig,
}

impl Consumer {
    pub(crate) fn new(client: Client, config: ConsumerConfig) -> Consumer {
        Consumer { client, config }
    }

    /// The consumer's settings.
    pub fn config(&self) -> &ConsumerConfig {
        &self.config
    }

    /// Joins the group and returns the stream of its deliveries.
    ///
    /// Fails with the broker's error if the first join fails (for example
    /// [`Error::NotFound`] when the topic does not exist); a transient failure
    /// (`UNAVAILABLE`, transport) is tried again for up to
    /// [`ConsumerConfig::first_join_retry`] first. Once joined, a broken stream
    /// (`UNAVAILABLE`, a transport error, or the broker ending the stream) is joined again
    /// after a backoff, as often as needed; other errors end the [`Subscription`] after
    /// yielding the error. The stream task is spawned on the current Tokio runtime.
    pub async fn subscribe(&self) -> Result<Subscription> {
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let link = Arc::new(Link {
            cmd_tx,
            generation: AtomicU64::new(0),
            taken: AtomicU64::new(0),
        });
        let (out_tx, out_rx) = mpsc::channel(CHANNEL_BATCHES);
        let (joined_tx, joined_rx) = oneshot::channel();
        let task = StreamTask {
            client: self.client.clone(),
            config: self.config.clone(),
            link: link.clone(),
            cmd_rx,
            out_tx,
            queue: VecDeque::new(),
            held: HashSet::new(),
        };
        let handle = tokio::spawn(task.run(joined_tx));
        match joined_rx.await {
            Ok(Ok(member_id)) => Ok(Subscription {
                rx: out_rx,
                received: None,
                link,
                member_id,
                pacing: self.config.pacing(),
                task: handle,
            }),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(Error::Closed),
        }
    }
}

/// The deliveries of a [`Consumer`]: a [`futures::Stream`] of [`Message`]s.
///
/// Dropping the subscription closes the stream, which leaves the group: the broker
/// delivers the unacked messages again to other members. Acks and nacks not yet sent are
/// lost then; [`Subscription::close`] sends them first. The stream ends (yields `None`)
/// after [`ConsumerConfig::max_messages`] messages, or after a non-retryable error, which
/// it yields first.
///
/// ```no_run
/// use futures::StreamExt;
/// use herald_client::{Client, ConsumerConfig};
///
/// # async fn run(client: Client) -> herald_client::Result<()> {
/// let mut subscription = client
///     .consumer(ConsumerConfig::new("orders", "billing"))
///     .subscribe()
///     .await?;
/// while let Some(message) = subscription.next().await {
///     let message = message?;
///     println!("{}:{} {:?}", message.partition(), message.offset(), message.value());
///     message.ack()?;
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<Result<Arc<Delivered>>>,
    /// The last batch taken from `rx` and the index of its next message to yield.
    received: Option<(Arc<Delivered>, usize)>,
    link: Arc<Link>,
    member_id: String,
    pacing: Pacing,
    task: JoinHandle<()>,
}

impl Subscription {
    /// The member id the broker gave on the first join (a rejoin gets a new one, not
    /// reflected here).
    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    /// How many times the stream has been joined again after breaking.
    pub fn reconnects(&self) -> u64 {
        self.link.generation.load(Ordering::Acquire)
    }

    /// Leaves the group cleanly: sends the acks, nacks and extensions of the messages
    /// settled so far, ends the stream, and waits (at most 5 s) for the broker to take
    /// them and end its side. Messages received but not yet yielded, and those yielded but
    /// not settled, go back to the group for other members.
    ///
    /// Fails with the broker's error if the stream broke meanwhile (the acks may then be
    /// lost and their messages delivered again), or with [`Error::Timeout`] if the broker
    /// did not end the stream in time.
    ///
    /// ```no_run
    /// # async fn run(client: herald_client::Client) -> herald_client::Result<()> {
    /// use futures::StreamExt;
    /// use herald_client::ConsumerConfig;
    /// let config = ConsumerConfig::new("orders", "billing").max_messages(10);
    /// let mut subscription = client.consumer(config).subscribe().await?;
    /// while let Some(message) = subscription.next().await {
    ///     message?.ack()?;
    /// }
    /// subscription.close().await?; // the ten acks reached the broker
    /// # Ok(())
    /// # }
    /// ```
    pub async fn close(self) -> Result<()> {
        let (done, result) = oneshot::channel();
        if self.link.cmd_tx.send(Command::Close(done)).is_err() {
            // The stream task has ended: there is no stream left to close.
            return Ok(());
        }
        match tokio::time::timeout(CLOSE_TIMEOUT, result).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Ok(()),
            // Dropping `self` stops the task and with it the stream.
            Err(_) => Err(Error::Timeout),
        }
    }
}

impl Stream for Subscription {
    type Item = Result<Message>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(max) = self.pacing.max_messages
                && self.link.taken.load(Ordering::Acquire) >= max
            {
                return Poll::Ready(None);
            }
            let next = match &mut self.received {
                Some((delivered, index)) if *index < delivered.messages.len() => {
                    let message = Message {
                        delivered: delivered.clone(),
                        index: *index,
                        settled: false,
                    };
                    *index += 1;
                    Some(message)
                }
                _ => None,
            };
            let Some(message) = next else {
                // The batch is used up: let it go before waiting for the next.
                self.received = None;
                match self.rx.poll_recv(cx) {
                    Poll::Ready(Some(Ok(batch))) => {
                        self.received = Some((batch, 0));
                        continue;
                    }
                    Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error))),
                    Poll::Ready(None) => return Poll::Ready(None),
                    Poll::Pending => return Poll::Pending,
                }
            };
            if message.is_stale() {
                // Received on a stream since replaced: it will be delivered again.
                continue;
            }
            let taken = self.link.taken.fetch_add(1, Ordering::AcqRel) + 1;
            if let Some((messages, bytes)) = self
                .pacing
                .credit_after_take(taken, message.entry().size as u64)
            {
                let _ = self.link.cmd_tx.send(Command::Credit {
                    generation: message.delivered.generation,
                    messages,
                    bytes,
                });
            }
            return Poll::Ready(Some(Ok(message)));
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One delivery of one message, from a [`Subscription`].
///
/// Settle it with [`Message::ack`] or one of the nacks. A message dropped unsettled is
/// neither acked nor extended any more: it is delivered again once its ack deadline
/// passes.
///
/// A message is a reference into the batch of deliveries it arrived in (one allocation
/// per broker response, shared by its messages), so yielding and passing it around moves
/// a few words rather than every field; the batch's memory is freed when the last of its
/// messages is dropped.
pub struct Message {
    delivered: Arc<Delivered>,
    index: usize,
    settled: bool,
}

// Yielding a message moves it through `poll_next`, `Option` and `Result` into the caller;
// it stays a few words, whatever the fields grow to.
const _: () = assert!(std::mem::size_of::<Message>() <= 3 * std::mem::size_of::<usize>());

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entry = self.entry();
        f.debug_struct("Message")
            .field("fields", &entry.fields)
            .field("ack", &entry.ack)
            .field("generation", &self.delivered.generation)
            .field("settled", &self.settled)
            .finish()
    }
}

/// The messages of one broker response, with what they share: the link to the stream
/// task, the stream generation they came on, and their acks.
///
/// Acks are gathered here rather than sent to the stream task one by one: an ack sets its
/// message's bit in `acked`, and only the ack that finds `unreported` at 0 sends the batch
/// to the task ([`Command::Acked`]), which takes every bit set by then. A channel message
/// per ack cost a cache-line transfer between the consumer's core and the task's, and
/// most of the task's time. No ack is missed: an ack sets its bit before it counts
/// itself, and the task zeroes the count before it takes the bits, so an ack either
/// counted before the zeroing (its bit is taken in that pass) or after it (it finds the
/// count at 0 and sends the batch again).
#[derive(Debug)]
struct Delivered {
    link: Arc<Link>,
    generation: u64,
    messages: Vec<Entry>,
    /// A bit per message, set by its ack until the stream task takes it.
    acked: Box<[AtomicU64]>,
    /// Acks set in `acked` since the stream task last took them.
    unreported: AtomicU32,
}

impl Delivered {
    fn new(link: Arc<Link>, generation: u64, messages: Vec<Entry>) -> Delivered {
        let acked = (0..messages.len().div_ceil(64))
            .map(|_| AtomicU64::new(0))
            .collect();
        Delivered {
            link,
            generation,
            messages,
            acked,
            unreported: AtomicU32::new(0),
        }
    }

    /// Takes the acks set so far, in message order (so consecutive run messages merge
    /// into one range).
    fn take_acked(&self, mut each: impl FnMut(&AckRef)) {
        self.unreported.swap(0, Ordering::AcqRel);
        for (word, bits) in self.acked.iter().enumerate() {
            if bits.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let mut taken = bits.swap(0, Ordering::AcqRel);
            while taken != 0 {
                let bit = taken.trailing_zeros() as usize;
                taken &= taken - 1;
                each(&self.messages[word * 64 + bit].ack);
            }
        }
    }
}

/// One message of a [`Delivered`] batch.
#[derive(Debug)]
struct Entry {
    fields: MessageFields,
    ack: AckRef,
    /// Key, value and header bytes: what the message counts against a byte credit.
    size: usize,
}

/// How a message is named when it is settled: by the opaque ack id of its `Delivery`, or,
/// for a message of a `DeliveryRun`, by its place in the run.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum AckRef {
    Id(Bytes),
    Run {
        partition: u32,
        offset: u64,
        delivery: u64,
    },
}

/// Ack ids and ack ranges gathered for one request; consecutive run messages merge into
/// one range.
#[derive(Default)]
struct AckSet {
    ids: Vec<Bytes>,
    ranges: Vec<v1::AckRange>,
}

impl AckRef {
    /// The range naming just this run message; `None` for a single delivery's id.
    fn range(&self) -> Option<v1::AckRange> {
        match *self {
            AckRef::Id(_) => None,
            AckRef::Run {
                partition,
                offset,
                delivery,
            } => Some(v1::AckRange {
                partition,
                first_offset: offset,
                count: 1,
                first_delivery: delivery,
            }),
        }
    }
}

impl AckSet {
    fn push(&mut self, ack: AckRef) {
        let Some(next) = ack.range() else {
            if let AckRef::Id(id) = ack {
                self.ids.push(id);
            }
            return;
        };
        if let Some(last) = self.ranges.last_mut() {
            let count = u64::from(last.count);
            if last.partition == next.partition
                && last.first_offset + count == next.first_offset
                && last.first_delivery + count == next.first_delivery
                && last.count < MAX_ACK_RANGE
            {
                last.count += 1;
                return;
            }
        }
        self.ranges.push(next);
    }

    fn is_empty(&self) -> bool {
        self.ids.is_empty() && self.ranges.is_empty()
    }
}

impl FromIterator<AckRef> for AckSet {
    fn from_iter<I: IntoIterator<Item = AckRef>>(acks: I) -> AckSet {
        let mut set = AckSet::default();
        for ack in acks {
            set.push(ack);
        }
        set
    }
}

/// What a subscription's messages share with its stream task: one reference per message
/// instead of a channel sender and a generation counter each.
#[derive(Debug)]
struct Link {
    cmd_tx: mpsc::UnboundedSender<Command>,
    /// Bumped each time the stream is joined again; a message of an older generation is
    /// stale.
    generation: AtomicU64,
    /// Messages the subscription has yielded, over every generation: what is left of
    /// `max_messages` when the stream is joined again.
    taken: AtomicU64,
}

impl Message {
    /// The message's partition.
    pub fn partition(&self) -> Partition {
        Partition(self.entry().fields.partition)
    }

    /// The message's offset in its partition.
    pub fn offset(&self) -> Offset {
        Offset(self.entry().fields.offset)
    }

    /// The message's key, if it has one.
    pub fn key(&self) -> Option<&Bytes> {
        self.entry().fields.key.as_ref()
    }

    /// The message's payload.
    pub fn value(&self) -> &Bytes {
        &self.entry().fields.value
    }

    /// The message's headers, in published order.
    pub fn headers(&self) -> &[(String, Bytes)] {
        &self.entry().fields.headers
    }

    /// The W3C `traceparent` the publisher gave the record ([`crate::Record::traceparent`]),
    /// to continue its trace in the handler.
    pub fn traceparent(&self) -> Option<&str> {
        self.entry()
            .fields
            .headers
            .iter()
            .find(|(name, _)| name == crate::producer::TRACEPARENT)
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
    }

    /// The message's timestamp, in ms since the Unix epoch.
    pub fn timestamp_ms(&self) -> i64 {
        self.entry().fields.timestamp_ms
    }

    /// 1 for the first delivery of this message to the group, 2 for the first
    /// redelivery, and so on.
    pub fn attempt(&self) -> u32 {
        self.entry().fields.attempt
    }

    /// The ack deadline given by the broker, in ms since the Unix epoch (broker clock),
    /// as of this delivery (extensions are not reflected).
    pub fn deadline_ms(&self) -> i64 {
        self.entry().fields.deadline_ms
    }

    /// Whether this message came on a stream that has since been replaced (after a
    /// reconnect). Settling a stale message does nothing: the broker delivers it again.
    pub fn is_stale(&self) -> bool {
        self.delivered.generation != self.delivered.link.generation.load(Ordering::Acquire)
    }

    /// Acknowledges the message: it is done for the group. Sent asynchronously on the
    /// subscription's stream; an ack lost with a broken stream means the message is
    /// delivered again (at-least-once). Fails with [`Error::Closed`] only if the
    /// subscription has ended.
    pub fn ack(mut self) -> Result<()> {
        self.settled = true;
        let delivered = &self.delivered;
        if delivered.link.cmd_tx.is_closed() {
            return Err(Error::Closed);
        }
        // See `Delivered`: set the bit, then count it; the first count since the task
        // last looked tells the task.
        delivered.acked[self.index / 64].fetch_or(1 << (self.index % 64), Ordering::AcqRel);
        if delivered.unreported.fetch_add(1, Ordering::AcqRel) == 0 {
            return self.send(Command::Acked(delivered.clone()));
        }
        Ok(())
    }

    /// Rejects the message: it is delivered again after the group's retry backoff (or
    /// dead-lettered once it has used up the group's `max_delivery_attempts`).
    pub fn nack(self) -> Result<()> {
        self.nack_with(None, "")
    }

    /// Rejects the message, to be delivered again after `delay`.
    pub fn nack_after(self, delay: Duration) -> Result<()> {
        self.nack_with(Some(delay), "")
    }

    /// Rejects the message with a `reason` (kept as the `herald-dlq-reason` header if it
    /// is dead-lettered), to be delivered again after `delay`, or after the group's retry
    /// backoff when `delay` is `None`.
    pub fn nack_with(mut self, delay: Option<Duration>, reason: impl Into<String>) -> Result<()> {
        self.settled = true;
        self.send(Command::Nack {
            generation: self.delivered.generation,
            ack: self.entry().ack.clone(),
            delay_ms: delay.map(millis),
            reason: reason.into(),
        })
    }

    /// Sets the message's ack deadline to now + `extra` (the broker caps it), to keep
    /// working on it.
    pub fn extend(&self, extra: Duration) -> Result<()> {
        self.send(Command::Extend {
            generation: self.delivered.generation,
            acks: vec![self.entry().ack.clone()],
            extra_ms: millis(extra),
        })
    }

    fn entry(&self) -> &Entry {
        &self.delivered.messages[self.index]
    }

    fn send(&self, command: Command) -> Result<()> {
        self.delivered
            .link
            .cmd_tx
            .send(command)
            .map_err(|_| Error::Closed)
    }
}

impl Drop for Message {
    fn drop(&mut self) {
        if !self.settled {
            let _ = self.delivered.link.cmd_tx.send(Command::Release {
                generation: self.delivered.generation,
                ack: self.entry().ack.clone(),
            });
        }
    }
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// What a [`Message`] or the [`Subscription`] asks of the stream task. Each names the
/// stream generation it belongs to; commands of an older generation are dropped.
#[derive(Debug)]
enum Command {
    /// Messages of this batch were acked (see [`Delivered`]).
    Acked(Arc<Delivered>),
    Nack {
        generation: u64,
        ack: AckRef,
        delay_ms: Option<u32>,
        reason: String,
    },
    Extend {
        generation: u64,
        acks: Vec<AckRef>,
        extra_ms: u32,
    },
    /// The message was dropped unsettled: stop extending it.
    Release { generation: u64, ack: AckRef },
    Credit {
        generation: u64,
        messages: u32,
        bytes: u64,
    },
    /// [`Subscription::close`]: send what came before, end the stream, and report how
    /// that went. Belongs to no generation.
    Close(oneshot::Sender<Result<()>>),
}

impl Command {
    fn generation(&self) -> Option<u64> {
        match self {
            Command::Acked(delivered) => Some(delivered.generation),
            Command::Nack { generation, .. }
            | Command::Extend { generation, .. }
            | Command::Release { generation, .. }
            | Command::Credit { generation, .. } => Some(*generation),
            Command::Close(_) => None,
        }
    }
}

/// The outcome of one pass over the commands.
enum Pass {
    /// Everything was sent.
    Sent,
    /// The stream's request side is gone.
    Broken,
    /// Close was asked for, after the commands before it were sent.
    Close(oneshot::Sender<Result<()>>),
}

/// One joined `Subscribe` stream.
struct Joined {
    requests: mpsc::UnboundedSender<v1::SubscribeRequest>,
    responses: tonic::Streaming<v1::SubscribeResponse>,
    member_id: String,
}

/// Why a joined stream stopped.
enum Ended {
    /// The subscription was dropped.
    Dropped,
    /// The stream broke; join again.
    Broken,
    /// A non-retryable error.
    Failed(Error),
    /// [`Subscription::close`] asked to leave.
    Closing(oneshot::Sender<Result<()>>),
}

/// The task that owns the Subscribe stream.
struct StreamTask {
    client: Client,
    config: ConsumerConfig,
    link: Arc<Link>,
    cmd_rx: mpsc::UnboundedReceiver<Command>,
    out_tx: mpsc::Sender<Result<Arc<Delivered>>>,
    /// Batches of deliveries received but not yet in the channel (bounded by the
    /// broker's in-flight window or credit).
    queue: VecDeque<Arc<Delivered>>,
    /// The current stream's deliveries not yet settled (for auto-extend).
    held: HashSet<AckRef>,
}

impl StreamTask {
    async fn run(mut self, joined_tx: oneshot::Sender<Result<String>>) {
        let mut stream = match self.first_join().await {
            Ok(stream) => {
                let _ = joined_tx.send(Ok(stream.member_id.clone()));
                stream
            }
            Err(error) => {
                let _ = joined_tx.send(Err(error));
                return;
            }
        };
        loop {
            match self.drive(&mut stream).await {
                Ended::Dropped => return,
                Ended::Failed(error) => {
                    let _ = self.out_tx.send(Err(error)).await;
                    return;
                }
                Ended::Closing(done) => {
                    let _ = done.send(leave(stream).await);
                    return;
                }
                Ended::Broken => {}
            }
            // The old stream's deliveries are stale from here on.
            self.link.generation.fetch_add(1, Ordering::AcqRel);
            self.queue.clear();
            self.held.clear();
            let mut delays = crate::backoff::delays(
                self.config.reconnect_backoff,
                self.config.reconnect_backoff_max,
            );
            stream = loop {
                let backoff = delays.next().unwrap_or(self.config.reconnect_backoff_max);
                let until = tokio::time::Instant::now() + backoff;
                loop {
                    tokio::select! {
                        () = tokio::time::sleep_until(until) => break,
                        command = self.cmd_rx.recv() => {
                            // Every other command now names a stale generation.
                            if let Some(Command::Close(done)) = command {
                                // Not joined: nothing to leave.
                                let _ = done.send(Ok(()));
                                return;
                            }
                        }
                    }
                }
                if self.out_tx.is_closed() {
                    return;
                }
                match self.join().await {
                    Ok(stream) => break stream,
                    Err(error) if retryable(&error) => {}
                    Err(error) => {
                        let _ = self.out_tx.send(Err(error)).await;
                        return;
                    }
                }
            };
        }
    }

    /// The first join, tried again after transient errors for up to
    /// `first_join_retry` (the backoff's last sleep is cut to the bound).
    async fn first_join(&mut self) -> Result<Joined> {
        let deadline = tokio::time::Instant::now() + self.config.first_join_retry;
        let mut delays = crate::backoff::delays(
            self.config.reconnect_backoff,
            self.config.reconnect_backoff_max,
        );
        loop {
            match self.join().await {
                Err(error) if retryable(&error) && tokio::time::Instant::now() < deadline => {
                    let backoff = delays.next().unwrap_or(self.config.reconnect_backoff_max);
                    let until = (tokio::time::Instant::now() + backoff).min(deadline);
                    tokio::time::sleep_until(until).await;
                }
                answer => return answer,
            }
        }
    }

    /// Opens a stream and joins; returns once `Joined` arrives.
    async fn join(&mut self) -> Result<Joined> {
        let (requests, rx) = mpsc::unbounded_channel();
        let join = Request::Join(self.config.join());
        let _ = requests.send(v1::SubscribeRequest {
            request: Some(join),
        });
        let taken = self.link.taken.load(Ordering::Acquire);
        if let Some(credit) = self.config.pacing().join_credit(taken) {
            let _ = requests.send(v1::SubscribeRequest {
                request: Some(Request::Credit(credit)),
            });
        }
        let mut raw = self.client.raw();
        let mut responses = raw
            .subscribe(UnboundedReceiverStream::new(rx))
            .await?
            .into_inner();
        match responses.message().await? {
            Some(v1::SubscribeResponse {
                response: Some(Response::Joined(joined)),
            }) => Ok(Joined {
                requests,
                responses,
                member_id: joined.member_id,
            }),
            Some(other) => Err(Error::Protocol(format!(
                "expected Joined first, got {other:?}"
            ))),
            None => Err(Error::Unavailable(
                "the broker ended the stream before Joined".into(),
            )),
        }
    }

    /// Runs one joined stream until it ends.
    async fn drive(&mut self, stream: &mut Joined) -> Ended {
        let generation = self.link.generation.load(Ordering::Acquire);
        let mut extend_timer = self.config.auto_extend.map(|d| {
            let period = (d / 2).max(Duration::from_millis(1));
            let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            timer
        });
        let out_tx = self.out_tx.clone();
        loop {
            tokio::select! {
                biased;
                command = self.cmd_rx.recv() => {
                    // `self` holds a sender, so the channel never closes.
                    let Some(command) = command else { return Ended::Dropped };
                    match self.commands(command, generation, &stream.requests) {
                        Pass::Sent => {}
                        Pass::Broken => return Ended::Broken,
                        Pass::Close(done) => return Ended::Closing(done),
                    }
                }
                permit = out_tx.reserve(), if !self.queue.is_empty() => {
                    let Ok(permit) = permit else { return Ended::Dropped };
                    if let Some(batch) = self.queue.pop_front() {
                        permit.send(Ok(batch));
                    }
                }
                () = tick(&mut extend_timer) => {
                    if !self.held.is_empty() {
                        // Sorted, so consecutive run messages merge into ranges.
                        let mut held: Vec<&AckRef> = self.held.iter().collect();
                        held.sort_unstable_by_key(|ack| match ack {
                            AckRef::Run { partition, offset, .. } => (*partition, *offset),
                            AckRef::Id(_) => (u32::MAX, u64::MAX),
                        });
                        let acks: AckSet = held.into_iter().cloned().collect();
                        let extend = v1::Extend {
                            ack_ids: acks.ids,
                            ranges: acks.ranges,
                            extra_ms: self.config.auto_extend.map(millis).unwrap_or(0),
                        };
                        if send(&stream.requests, Request::Extend(extend)).is_err() {
                            return Ended::Broken;
                        }
                    }
                }
                response = stream.responses.message() => match response {
                    Ok(Some(v1::SubscribeResponse { response: Some(response) })) => {
                        if let Response::Deliveries(deliveries) = response {
                            let batch = match self.messages(deliveries) {
                                Ok(batch) => batch,
                                Err(error) => return Ended::Failed(error),
                            };
                            if self.config.auto_extend.is_some() {
                                self.held.extend(batch.iter().map(|m| m.ack.clone()));
                            }
                            if !batch.is_empty() {
                                self.queue.push_back(Arc::new(Delivered::new(
                                    self.link.clone(),
                                    generation,
                                    batch,
                                )));
                            }
                        }
                        // Joined again or an AssignmentChange: nothing to do.
                    }
                    Ok(Some(v1::SubscribeResponse { response: None })) => {}
                    // The broker ended the stream (shutting down): join again.
                    Ok(None) => return Ended::Broken,
                    Err(status) => {
                        let error = Error::from(status);
                        if self.out_tx.is_closed() {
                            return Ended::Dropped;
                        }
                        return if retryable(&error) {
                            Ended::Broken
                        } else {
                            Ended::Failed(error)
                        };
                    }
                },
                () = out_tx.closed() => return Ended::Dropped,
            }
        }
    }

    /// Handles `first` and the commands already waiting, merging acks and credit, up to a
    /// close, which ends the pass after the commands before it are sent.
    fn commands(
        &mut self,
        first: Command,
        generation: u64,
        requests: &mpsc::UnboundedSender<v1::SubscribeRequest>,
    ) -> Pass {
        let mut acks = AckSet::default();
        let (mut credit_messages, mut credit_bytes) = (0u32, 0u64);
        let mut others = Vec::new();
        let mut next = Some(first);
        let mut count = 0;
        let mut close = None;
        while let Some(command) = next.take() {
            count += 1;
            if let Command::Close(done) = command {
                close = Some(done);
                break;
            }
            if command.generation() == Some(generation) {
                match command {
                    Command::Acked(delivered) => {
                        let held = &mut self.held;
                        delivered.take_acked(|ack| {
                            // `held` is only filled with auto-extend; skip hashing
                            // otherwise.
                            if !held.is_empty() {
                                held.remove(ack);
                            }
                            acks.push(ack.clone());
                        });
                    }
                    Command::Nack {
                        ack,
                        delay_ms,
                        reason,
                        ..
                    } => {
                        self.held.remove(&ack);
                        let range = ack.range();
                        let ack_id = match ack {
                            AckRef::Id(id) => id,
                            AckRef::Run { .. } => Bytes::new(),
                        };
                        others.push(Request::Nack(v1::Nack {
                            ack_id,
                            delay_ms,
                            reason,
                            range,
                        }));
                    }
                    Command::Extend { acks, extra_ms, .. } => {
                        let set: AckSet = acks.into_iter().collect();
                        others.push(Request::Extend(v1::Extend {
                            ack_ids: set.ids,
                            ranges: set.ranges,
                            extra_ms,
                        }));
                    }
                    Command::Release { ack, .. } => {
                        self.held.remove(&ack);
                    }
                    Command::Credit {
                        messages, bytes, ..
                    } => {
                        credit_messages = credit_messages.saturating_add(messages);
                        credit_bytes = credit_bytes.saturating_add(bytes);
                    }
                    // Taken out above.
                    Command::Close(_) => {}
                }
            }
            if count < MAX_COMMANDS_PER_PASS {
                next = self.cmd_rx.try_recv().ok();
            }
        }
        let mut ok = true;
        if !acks.is_empty() {
            let ack = v1::Ack {
                ack_ids: acks.ids,
                ranges: acks.ranges,
            };
            ok &= send(requests, Request::Ack(ack)).is_ok();
        }
        for request in others {
            ok &= send(requests, request).is_ok();
        }
        if credit_messages > 0 {
            let credit = v1::Credit {
                messages: credit_messages,
                bytes: credit_bytes,
            };
            ok &= send(requests, Request::Credit(credit)).is_ok();
        }
        match close {
            // A broken stream is for the close to report.
            Some(done) => Pass::Close(done),
            None if ok => Pass::Sent,
            None => Pass::Broken,
        }
    }

    /// The messages of one response: its single deliveries, then its runs decoded from
    /// their stored batches. A run whose batch does not decode is a protocol error.
    fn messages(&self, deliveries: v1::Deliveries) -> Result<Vec<Entry>> {
        let runs_messages: usize = deliveries.runs.iter().map(|r| r.count as usize).sum();
        let mut out = Vec::with_capacity(deliveries.deliveries.len() + runs_messages);
        for d in deliveries.deliveries {
            let headers: Vec<(String, Bytes)> =
                d.headers.into_iter().map(|h| (h.key, h.value)).collect();
            out.push(Self::message(
                MessageFields {
                    partition: d.partition,
                    offset: d.offset,
                    key: d.key,
                    value: d.value,
                    headers,
                    timestamp_ms: d.timestamp_ms,
                    attempt: d.delivery_attempt,
                    deadline_ms: d.deadline_ms,
                },
                AckRef::Id(d.ack_id),
            ));
        }
        for run in deliveries.runs {
            Self::run_messages(&run, &mut out)?;
        }
        Ok(out)
    }

    /// Decodes the records of `run` (slices of its bytes, no copy).
    fn run_messages(run: &v1::DeliveryRun, out: &mut Vec<Entry>) -> Result<()> {
        let bad = |what: String| {
            Error::Protocol(format!(
                "a delivery run of partition {} at offset {}: {what}",
                run.partition, run.first_offset
            ))
        };
        let records = Records::resume(
            run.base_offset,
            run.first_timestamp_ms,
            run.first_offset,
            &run.records,
        )
        .ok_or_else(|| bad("its first offset is not in its batch".into()))?;
        let mut taken = 0u32;
        for record in records {
            let r = record.map_err(|e| bad(e.to_string()))?;
            if taken == run.count {
                return Err(bad("it holds more records than it says".into()));
            }
            let headers = r
                .headers()
                .map(|(k, v)| (k.to_owned(), run.records.slice_ref(v)))
                .collect();
            out.push(Self::message(
                MessageFields {
                    partition: run.partition,
                    offset: r.offset,
                    key: r.key.map(|k| run.records.slice_ref(k)),
                    value: run.records.slice_ref(r.value),
                    headers,
                    timestamp_ms: r.timestamp,
                    attempt: run.delivery_attempt,
                    deadline_ms: run.deadline_ms,
                },
                AckRef::Run {
                    partition: run.partition,
                    offset: r.offset,
                    delivery: run.first_delivery + u64::from(taken),
                },
            ));
            taken += 1;
        }
        if taken != run.count {
            return Err(bad(format!("it holds {taken} of {} records", run.count)));
        }
        Ok(())
    }

    fn message(fields: MessageFields, ack: AckRef) -> Entry {
        let size = fields.key.as_ref().map_or(0, Bytes::len)
            + fields.value.len()
            + fields
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        Entry { fields, ack, size }
    }
}

/// A message's fields, from a `Delivery` or a run's record.
#[derive(Debug)]
struct MessageFields {
    partition: u32,
    offset: u64,
    key: Option<Bytes>,
    value: Bytes,
    headers: Vec<(String, Bytes)>,
    timestamp_ms: i64,
    attempt: u32,
    deadline_ms: i64,
}

/// Ends the request side of `stream` after what was sent on it, then waits for the
/// broker to end the response side, which it does once it has handled every request
/// and removed the member.
async fn leave(stream: Joined) -> Result<()> {
    let Joined {
        requests,
        mut responses,
        ..
    } = stream;
    drop(requests);
    loop {
        match responses.message().await {
            // Deliveries sent meanwhile are not yielded: they go back to the group.
            Ok(Some(_)) => {}
            Ok(None) => return Ok(()),
            Err(status) => return Err(status.into()),
        }
    }
}

fn send(
    requests: &mpsc::UnboundedSender<v1::SubscribeRequest>,
    request: Request,
) -> Result<(), ()> {
    requests
        .send(v1::SubscribeRequest {
            request: Some(request),
        })
        .map_err(|_| ())
}

/// Waits for the next tick of `timer`, or forever without one.
async fn tick(timer: &mut Option<tokio::time::Interval>) {
    match timer {
        Some(timer) => {
            timer.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Whether a broken stream (or a failed join) is worth joining again: the broker is
/// unavailable or restarting, or the connection failed.
fn retryable(error: &Error) -> bool {
    matches!(
        error,
        Error::Unavailable(_) | Error::Transport(_) | Error::Timeout
    ) || matches!(
        error.code(),
        Some(tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::Aborted)
    )
}

/// Messages and subscriptions can move to (and be shared with) other tasks.
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<Message>();
    assert_send_sync::<Subscription>();
    assert_send_sync::<Consumer>();
};

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(link: &Arc<Link>, messages: u64) -> Arc<Delivered> {
        let entries = (0..messages)
            .map(|offset| Entry {
                fields: MessageFields {
                    partition: 0,
                    offset,
                    key: None,
                    value: Bytes::new(),
                    headers: Vec::new(),
                    timestamp_ms: 0,
                    attempt: 1,
                    deadline_ms: 0,
                },
                ack: AckRef::Run {
                    partition: 0,
                    offset,
                    delivery: offset,
                },
                size: 0,
            })
            .collect();
        Arc::new(Delivered::new(link.clone(), 0, entries))
    }

    /// Threads ack every message of two batches while the taker takes what each
    /// notification finds: every ack is taken exactly once, and the notifications are no
    /// more than the acks.
    #[test]
    fn every_ack_is_taken_once_while_acks_race_the_taker() {
        for round in 0..50u64 {
            let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel();
            let link = Arc::new(Link {
                cmd_tx,
                generation: AtomicU64::new(0),
                taken: AtomicU64::new(0),
            });
            let batches = [batch(&link, 1000), batch(&link, 130)];
            let threads: Vec<_> = (0..3usize)
                .map(|thread| {
                    let batches = batches.clone();
                    std::thread::spawn(move || {
                        for delivered in &batches {
                            let messages = (0..delivered.messages.len())
                                .filter(|index| (index + round as usize) % 3 == thread);
                            for index in messages {
                                let message = Message {
                                    delivered: delivered.clone(),
                                    index,
                                    settled: false,
                                };
                                message.ack().unwrap();
                            }
                        }
                    })
                })
                .collect();
            let mut seen = std::collections::HashMap::new();
            let mut notifications = 0;
            let mut take = |command: Command| {
                let Command::Acked(delivered) = command else {
                    panic!("only acks were sent");
                };
                notifications += 1;
                delivered.take_acked(|ack| {
                    let AckRef::Run { offset, .. } = ack else {
                        unreachable!()
                    };
                    *seen
                        .entry((delivered.messages.len(), *offset))
                        .or_insert(0u32) += 1;
                });
            };
            while threads.iter().any(|t| !t.is_finished()) {
                if let Ok(command) = cmd_rx.try_recv() {
                    take(command);
                }
            }
            for thread in threads {
                thread.join().unwrap();
            }
            while let Ok(command) = cmd_rx.try_recv() {
                take(command);
            }
            assert_eq!(seen.len(), 1130, "round {round}: acks taken");
            assert!(seen.values().all(|&n| n == 1), "round {round}: taken twice");
            assert!(notifications <= 1130);
            for b in &batches {
                assert_eq!(b.unreported.load(Ordering::Acquire), 0);
                assert!(b.acked.iter().all(|w| w.load(Ordering::Acquire) == 0));
            }
        }
    }
}
