//! A [`Group`] and its driver: the task that runs the loop of one group (read the logs
//! where the machine wants records, tick deadlines, hand dead letters to the dead-letter
//! topic, deliver to members with room, persist), and sleeps until the next deadline, a commit to the
//! topic, a member event or the persist timer.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::sync::{Notify, watch};

use super::delivery::{MemberTx, OutDeliveries, Outgoing, shape_deliveries, skip_missing};
use super::read::{Feed, MachineAccess, fill_partition, is_gone};
use super::{Clock, GROUP_PERSIST_INTERVAL, GroupConfig, POLL_MAX, millis};
use crate::error::Result;
use crate::group::{AssignmentChange, DeadLetter, GroupState, MemberId, PartitionId};
use crate::otel::{DeliverSpan, Otel, traceparent_of};
use crate::registry::Registry;
use crate::storage::batch;
use crate::topic::Topic;

/// Delay before retrying dead-letter appends that failed (dead-letter topic deleted, full).
pub(super) const DEAD_LETTER_RETRY: Duration = Duration::from_secs(1);
/// Most dead letters a group has handed to writers and not seen committed. Each holds its
/// batch in a partition queue; more wait in the task's queue, which the machine's tables
/// bound (a dead letter stays tracked until confirmed).
pub(super) const DEAD_LETTERS_IN_FLIGHT_MAX: usize = 64;

/// What a group's task needs of the registry that runs it: the topics, and a way to take
/// itself out when its topic is gone. A trait, so that the driver does not import the
/// registry that imports it (`GroupRegistry` implements it).
pub(super) trait GroupHome: Send + Sync + 'static {
    /// The broker's topics.
    fn topics(&self) -> Arc<Registry>;
    /// Removes `group` if it is still the registered group of its name.
    fn remove_if_same<'a>(&'a self, group: &'a Arc<Group>) -> BoxFuture<'a, ()>;
    /// Counts a group task that panicked (`herald_group_task_failures_total`).
    fn count_task_failure(&self);
    /// Counts group positions brought down to their log's end.
    fn count_offsets_reset(&self, n: u64);
}

/// A member's slot: its stream and what waits to be sent on it.
pub(super) struct MemberSlot {
    pub(super) tx: MemberTx,
    pub(super) client_id: String,
    /// Joined with batched deliveries: it decodes stored batches, so runs go as runs.
    pub(super) batched: bool,
    /// Responses polled and not yet queued on the stream: at most one poll's worth.
    pub(super) outbox: VecDeque<Outgoing>,
    /// An assignment change not yet sent; later changes merge into it.
    pub(super) assignment: Option<AssignmentChange>,
}

/// What the group's task shares with members' streams and admin RPCs, behind one lock
/// held only for machine calls and never across I/O or an `.await`.
pub(super) struct Inner {
    /// The machine: acks, nacks and joins change it from RPCs, the task polls and ticks it.
    pub(super) state: GroupState,
    /// Read by the task (dead-letter topic), changed by UpdateGroup.
    pub(super) config: GroupConfig,
    /// Joins and leaves come from streams; the task fills and drains the outboxes.
    pub(super) members: HashMap<MemberId, MemberSlot>,
    /// Redrive progress (written to `group.toml` with the settings): which dead-letter
    /// topic, and per partition of it the offset scanned up to.
    pub(super) redrive_topic: Option<String>,
    pub(super) redrive_cursor: Vec<u64>,
}

/// One consumer group of one topic.
pub struct Group {
    pub topic_name: String,
    pub name: String,
    pub topic: Arc<Topic>,
    pub(super) created_ms: i64,
    pub(super) dir: PathBuf,
    pub(super) inner: Mutex<Inner>,
    /// Wakes the driver: a member event, an admin change, a stream drained.
    pub(super) wake: Notify,
    /// Flips to true when the group is deleted or the broker closes.
    pub(super) stop: watch::Sender<bool>,
    /// The last state bytes written; held while writing either file, so writes never
    /// interleave or reorder.
    pub(super) persisted: Mutex<Vec<u8>>,
    /// Serialises Redrive calls.
    pub(super) redrive: tokio::sync::Mutex<()>,
    /// Running totals for metrics, since the group was loaded or created.
    pub(super) counters: GroupCounters,
    /// Where every time the group reads comes from (the machine's `now`, deadlines,
    /// dead-letter retries, the persist timer, the supervisor's backoff reset): the wall
    /// clock in the broker, a clock a test moves by hand in tests.
    pub(super) clock: Arc<dyn Clock>,
    /// In a cluster, the coordinator's lease on the group: past it, the driver delivers
    /// nothing and writes no dead letter (another node may run the group by then). Unset
    /// on a single node and for a one-copy topic's group.
    pub(super) lease: std::sync::OnceLock<Arc<Lease>>,
    /// Tests set it to hold back the commits of dead-letter appends, as a slow fsync of
    /// the dead-letter topic would.
    #[cfg(test)]
    pub(super) hold_dead_letters: watch::Sender<bool>,
    /// Tests set it to make the next pass of the driver panic, as a bug would.
    #[cfg(test)]
    pub(super) panic_next: std::sync::atomic::AtomicBool,
}

/// How long a cluster's coordinator may still run a group: moved forward by each of its
/// accepted checkpoints, read by the group's driver before it delivers. Counted on the
/// monotonic clock, which runs on while a process is paused (SIGSTOP, a long stall), so a
/// coordinator that wakes up after its lease ran out delivers nothing before it learns
/// that it lost the group.
#[derive(Debug)]
pub struct Lease {
    start: std::time::Instant,
    /// Milliseconds after `start` the lease runs until.
    until_ms: AtomicU64,
}

impl Lease {
    /// A lease running until `until`.
    pub fn until(until: std::time::Instant) -> Arc<Lease> {
        let start = std::time::Instant::now();
        let lease = Lease {
            start,
            until_ms: AtomicU64::new(0),
        };
        lease.extend_to(until);
        Arc::new(lease)
    }

    /// Moves the lease's end to `until` (never back).
    pub fn extend_to(&self, until: std::time::Instant) {
        let ms = until.saturating_duration_since(self.start).as_millis() as u64;
        self.until_ms.fetch_max(ms, Ordering::AcqRel);
    }

    /// Whether the lease still runs.
    pub fn valid(&self) -> bool {
        (self.start.elapsed().as_millis() as u64) < self.until_ms.load(Ordering::Acquire)
    }
}

/// A group's running totals, kept outside the state's lock so reading them is free; the
/// state machine itself counts redeliveries and dead letters (see `describe`).
#[derive(Debug, Default)]
pub(super) struct GroupCounters {
    pub(super) deliveries: AtomicU64,
    pub(super) acks: AtomicU64,
    pub(super) nacks: AtomicU64,
    pub(super) expirations: AtomicU64,
}

/// A snapshot of a group's running totals, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupCounts {
    /// Deliveries sent to members (first deliveries and redeliveries).
    pub deliveries: u64,
    /// Acks that completed a message (stale acks are not counted).
    pub acks: u64,
    /// Nacks of live deliveries (stale nacks are not counted).
    pub nacks: u64,
    /// Deliveries whose ack deadline passed.
    pub expirations: u64,
}

/// A pending message with its key read back from the log.
pub type PendingWithKey = (crate::group::PendingMessage, Option<Bytes>);

impl Group {
    /// The group's time, in milliseconds since the Unix epoch.
    pub(super) fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn config(&self) -> GroupConfig {
        self.lock().config.clone()
    }

    pub fn member_count(&self) -> usize {
        self.lock().members.len()
    }

    /// The group's running totals since it was loaded or created. Lock-free.
    pub fn counts(&self) -> GroupCounts {
        let c = &self.counters;
        GroupCounts {
            deliveries: c.deliveries.load(Ordering::Relaxed),
            acks: c.acks.load(Ordering::Relaxed),
            nacks: c.nacks.load(Ordering::Relaxed),
            expirations: c.expirations.load(Ordering::Relaxed),
        }
    }

    pub fn stopped(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Wakes the driver.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Reads the log where the machine wants records and offers them. Partitions the
    /// topic gained since the last pass join the machine (and the watches) first.
    fn fill(&self, feed: &mut Feed, watches: &mut Vec<Option<watch::Receiver<u64>>>) {
        let layout = self.topic.layout();
        let count = layout.partitions.len();
        {
            // Also after a create that raced an alter, or a restore from state written
            // before one: the machine may know fewer partitions than the watches.
            let mut inner = self.lock();
            if inner.state.partition_count() < count
                && let Err(error) = inner.state.add_partitions(count)
            {
                tracing::error!(topic = %self.topic_name, group = %self.name, %error, "cannot take up the topic's new partitions");
            }
        }
        if count > watches.len() {
            let known = watches.len();
            watches.extend(
                layout.partitions[known..]
                    .iter()
                    .map(|p| Some(p.watch_high_watermark())),
            );
        }
        for (index, partition) in layout.partitions.iter().enumerate() {
            if let Some(w) = watches[index].as_mut() {
                w.borrow_and_update();
            }
            fill_partition(
                feed,
                self,
                partition.reader(),
                index,
                (&self.topic_name, &self.name),
            );
        }
    }

    /// Expires deadlines and takes the machine's actions; returns the dead letters.
    fn tick(&self) -> Vec<DeadLetter> {
        let mut inner = self.lock();
        let expired = inner.state.tick(self.now_ms());
        if !expired.is_empty() {
            self.counters
                .expirations
                .fetch_add(expired.len() as u64, Ordering::Relaxed);
        }
        let mut dead = Vec::new();
        for action in inner.state.take_actions() {
            match action {
                crate::group::Action::DeadLetter(d) => dead.push(d),
                crate::group::Action::AssignmentChanged(change) => {
                    if let Some(slot) = inner.members.get_mut(&change.member) {
                        slot.assignment = Some(match slot.assignment.take() {
                            None => change,
                            Some(old) => merge_changes(old, change),
                        });
                    }
                }
            }
        }
        dead
    }

    /// Sends what members' outboxes hold while their streams have room, then polls
    /// members with room and an empty outbox. Returns whether anything was delivered.
    fn deliver(&self, feed: &mut Feed, otel: Option<&Otel>) -> bool {
        let started = otel.map(|_| SystemTime::now());
        let mut inner = self.lock();
        flush_all(&mut inner);
        let ready: Vec<(MemberId, bool)> = inner
            .members
            .iter()
            .filter(|(_, slot)| {
                slot.outbox.is_empty()
                    && slot.assignment.is_none()
                    && slot.tx.capacity() > 1
                    && !slot.tx.is_closed()
            })
            .map(|(&id, slot)| (id, slot.batched))
            .collect();
        let now = self.now_ms();
        let mut polled = Vec::new();
        for (member, batched) in ready {
            match inner.state.poll(member, now, POLL_MAX) {
                Ok(deliveries) if !deliveries.is_empty() => {
                    polled.push((member, batched, deliveries))
                }
                _ => {}
            }
        }
        drop(inner);
        if polled.is_empty() {
            return false;
        }
        let mut built = Vec::with_capacity(polled.len());
        let mut missing = Vec::new();
        let layout = self.topic.layout();
        for (member, batched, deliveries) in polled {
            let (responses, gone) = shape_deliveries(
                feed,
                |p| layout.partitions.get(p.0 as usize).map(|p| p.reader()),
                batched,
                deliveries,
            );
            missing.extend(gone.into_iter().map(|id| (member, id)));
            built.push((member, responses));
        }
        if let (Some(otel), Some(started)) = (otel, started) {
            for (_, responses) in &built {
                for response in responses {
                    if let Outgoing::Deliveries(deliveries) = response {
                        self.trace(otel, deliveries, started);
                    }
                }
            }
        }
        // A record the log still holds but cannot serve (its batch is damaged: reads answer
        // DATA_LOSS) is not done: it stays in flight unsent, expires and is retried, and
        // after max_delivery_attempts it is dead-lettered like any message that keeps
        // failing. Only records truly gone (retention) are skipped as done.
        missing.retain(|(_, id)| {
            let gone = self
                .topic
                .partition(id.partition.0)
                .map_or(true, |p| is_gone(p.reader(), id.offset.0));
            if !gone {
                tracing::error!(topic = %self.topic_name, group = %self.name, partition = %id.partition, offset = %id.offset, "a polled record cannot be read from the log (damaged batch); it stays unacked and is retried");
            }
            gone
        });
        let mut inner = self.lock();
        for (member, ack_id) in missing {
            skip_missing(
                &mut inner.state,
                member,
                &ack_id,
                (&self.topic_name, &self.name),
            );
        }
        let mut sent = 0;
        for (member, responses) in built {
            if let Some(slot) = inner.members.get_mut(&member) {
                sent += responses
                    .iter()
                    .map(|r| match r {
                        Outgoing::Deliveries(d) => d.messages() as u64,
                        _ => 0,
                    })
                    .sum::<u64>();
                slot.outbox.extend(responses);
            }
        }
        self.counters.deliveries.fetch_add(sent, Ordering::Relaxed);
        flush_all(&mut inner);
        true
    }

    /// Ends a `deliver` span per message going out, the child of the record's
    /// `traceparent`. Runs are decoded here only for their headers: this happens only
    /// with span export on.
    fn trace(&self, otel: &Otel, deliveries: &OutDeliveries, started: SystemTime) {
        let span = |partition: u32, offset: u64, attempt: u32| DeliverSpan {
            topic: &self.topic_name,
            group: &self.name,
            partition,
            offset,
            attempt,
            started,
        };
        for single in &deliveries.singles {
            let headers = single.record.headers.iter();
            let parent = traceparent_of(headers.map(|(k, v)| (k.as_str(), v.as_ref())));
            let d = &single.delivery;
            otel.deliver(parent, span(d.partition.0, d.offset.0, d.attempt));
        }
        for run in &deliveries.runs {
            let records = batch::Records::resume(
                run.base_offset,
                run.first_timestamp,
                run.first_offset,
                &run.records,
            );
            for record in records.into_iter().flatten().take(run.count as usize) {
                let Ok(record) = record else { break };
                let parent = traceparent_of(record.headers());
                otel.deliver(parent, span(run.partition.0, record.offset, run.attempt));
            }
        }
    }

    /// A dead letter's append came back: committed, the message is done; failed, it is
    /// retried after [`DEAD_LETTER_RETRY`].
    fn dead_letter_committed(
        &self,
        dead: DeadLetter,
        result: Result<()>,
        retry: &mut Vec<DeadLetter>,
        retry_at_ms: &mut u64,
    ) {
        match result {
            Ok(()) => self.confirm_dead_letter(&dead),
            Err(error) => {
                tracing::warn!(topic = %self.topic_name, group = %self.name, %error, "appending a dead letter failed; will retry");
                retry.push(dead);
                *retry_at_ms = self.now_ms().saturating_add(millis(DEAD_LETTER_RETRY));
            }
        }
    }

    /// The driver loop; ends when the group stops.
    pub(super) async fn run(self: Arc<Self>, groups: Arc<dyn GroupHome>) {
        let registry = groups.topics();
        let mut stop = self.stop.subscribe();
        let mut watches: Vec<Option<watch::Receiver<u64>>> = self
            .topic
            .layout()
            .partitions
            .iter()
            .map(|p| Some(p.watch_high_watermark()))
            .collect();
        let mut layout_changes = self.topic.watch_layout();
        // What the loop keeps between its passes over the logs (decoded records, fill
        // cursors): owned by this task, so reading and shaping take no lock, and a
        // restart after a panic starts from an empty one.
        let mut feed = Feed::default();
        let mut retry: Vec<DeadLetter> = Vec::new();
        // Dead letters waiting to be handed to a writer (at most
        // DEAD_LETTERS_IN_FLIGHT_MAX are handed over at once), and those handed over whose
        // commits have not come back.
        let mut dead_letters: VecDeque<DeadLetter> = VecDeque::new();
        let mut committing: FuturesUnordered<BoxFuture<'static, (DeadLetter, Result<()>)>> =
            FuturesUnordered::new();
        let persist_interval_ms = millis(GROUP_PERSIST_INTERVAL);
        let retry_interval_ms = millis(DEAD_LETTER_RETRY);
        let mut retry_at_ms = self.now_ms();
        let mut next_persist_ms = self.now_ms().saturating_add(persist_interval_ms);
        // The periodic snapshot write (an fsync, which takes tens of ms on some disks and
        // more under load) runs beside the loop, not in it: awaiting it stalled every
        // delivery of the group once a second. One write at a time.
        let mut persisting: Option<tokio::task::JoinHandle<Result<()>>> = None;
        loop {
            if *stop.borrow() {
                break;
            }
            #[cfg(test)]
            if self.panic_next.swap(false, Ordering::Relaxed) {
                panic!("a panic injected by a test");
            }
            while let Some(Some((d, result))) = committing.next().now_or_never() {
                self.dead_letter_committed(d, result, &mut retry, &mut retry_at_ms);
            }
            self.fill(&mut feed, &mut watches);
            dead_letters.extend(self.tick());
            if !retry.is_empty() && self.now_ms() >= retry_at_ms {
                dead_letters.extend(retry.drain(..));
            }
            // Past a cluster coordinator's lease, nothing leaves the group: the checkpoint
            // task stops it next.
            let leased = self.lease.get().is_none_or(|lease| lease.valid());
            while leased
                && committing.len() < DEAD_LETTERS_IN_FLIGHT_MAX
                && let Some(d) = dead_letters.pop_front()
            {
                match self.send_dead_letter(&registry, &d).await {
                    Ok(Some(commit)) => committing.push(commit.map(|r| (d, r)).boxed()),
                    Ok(None) => {}
                    Err(error) => {
                        self.dead_letter_committed(d, Err(error), &mut retry, &mut retry_at_ms)
                    }
                }
            }
            let delivered = leased && self.deliver(&mut feed, registry.otel().map(|o| &**o));
            if self.now_ms() >= next_persist_ms
                && persisting.as_ref().is_none_or(|p| p.is_finished())
            {
                if let Some(done) = persisting.take()
                    && let Ok(Err(error)) = done.await
                {
                    tracing::error!(topic = %self.topic_name, group = %self.name, %error, "persisting group state failed");
                }
                next_persist_ms = self.now_ms().saturating_add(persist_interval_ms);
                let group = self.clone();
                persisting = Some(tokio::task::spawn_blocking(move || group.persist()));
            }
            if delivered {
                // A member may take more at once.
                tokio::task::yield_now().await;
                continue;
            }
            let now_ms = self.now_ms();
            // A clock that went back must not put the timers off by as much: neither is
            // ever further than its interval away.
            next_persist_ms = next_persist_ms.min(now_ms.saturating_add(persist_interval_ms));
            retry_at_ms = retry_at_ms.min(now_ms.saturating_add(retry_interval_ms));
            let mut until_ms = next_persist_ms;
            if let Some(at) = self.lock().state.next_wakeup(now_ms) {
                until_ms = until_ms.min(at);
            }
            if !retry.is_empty() {
                until_ms = until_ms.min(retry_at_ms);
            }
            let until = Duration::from_millis(until_ms.saturating_sub(now_ms));
            let woken = tokio::select! {
                _ = self.wake.notified() => Woken::Other,
                _ = tokio::time::sleep(until) => Woken::Other,
                Ok(()) = layout_changes.changed() => Woken::Other,
                d = any_changed(&mut watches) => d.map_or(Woken::Other, Woken::WriterGone),
                Some((d, result)) = committing.next(), if !committing.is_empty() => {
                    Woken::DeadLetterCommitted(d, result)
                }
                _ = stop.changed() => Woken::Other,
            };
            if let Woken::DeadLetterCommitted(d, result) = woken {
                self.dead_letter_committed(d, result, &mut retry, &mut retry_at_ms);
            } else if let Woken::WriterGone(index) = woken {
                watches[index] = None;
                // The writer is gone: the topic was deleted (or the broker is closing,
                // and then the topic is still registered).
                let live = registry
                    .get(&self.topic_name)
                    .is_ok_and(|t| Arc::ptr_eq(&t, &self.topic));
                if !live {
                    groups.remove_if_same(&self).await;
                    break;
                }
            }
        }
        // Appends handed over are committed or failed by their writers, which answer
        // everything queued before they stop: confirm what committed.
        while let Some((d, result)) = committing.next().await {
            if result.is_ok() {
                self.confirm_dead_letter(&d);
            }
        }
        // A later persist (at shutdown) must not race this one.
        if let Some(done) = persisting {
            let _ = done.await;
        }
    }
}

impl MachineAccess for Group {
    fn with_machine<R>(&self, f: impl FnOnce(&mut GroupState) -> R) -> R {
        f(&mut self.lock().state)
    }
}

/// What ended the driver's sleep.
enum Woken {
    /// A member event, an admin change, a timer, a commit to the topic, or a stop.
    Other,
    /// The writer of this partition is gone (its watch closed).
    WriterGone(usize),
    /// A dead letter's append was committed or failed.
    DeadLetterCommitted(DeadLetter, Result<()>),
}

/// Waits until one watch changes; returns the index of a watch whose sender is gone.
async fn any_changed(watches: &mut [Option<watch::Receiver<u64>>]) -> Option<usize> {
    let futures: Vec<_> = watches
        .iter_mut()
        .enumerate()
        .filter_map(|(i, w)| {
            w.as_mut()
                .map(|w| Box::pin(async move { (i, w.changed().await.is_ok()) }))
        })
        .collect();
    if futures.is_empty() {
        std::future::pending::<()>().await;
    }
    let ((index, ok), _, _) = futures::future::select_all(futures).await;
    (!ok).then_some(index)
}

/// Two consecutive changes of one member as one.
fn merge_changes(old: AssignmentChange, new: AssignmentChange) -> AssignmentChange {
    let before: BTreeSet<PartitionId> = old
        .partitions
        .iter()
        .chain(&old.revoked)
        .copied()
        .filter(|p| !old.added.contains(p))
        .collect();
    let after: BTreeSet<PartitionId> = new.partitions.iter().copied().collect();
    AssignmentChange {
        member: new.member,
        added: after.difference(&before).copied().collect(),
        revoked: before.difference(&after).copied().collect(),
        partitions: new.partitions,
    }
}

/// Queues each member's pending assignment change and outbox on its stream while it has
/// room (keeping one slot for the stream's final error).
fn flush_all(inner: &mut Inner) {
    for slot in inner.members.values_mut() {
        if slot.tx.is_closed() {
            slot.outbox.clear();
            slot.assignment = None;
            continue;
        }
        if let Some(change) = slot.assignment.take() {
            if slot.tx.capacity() > 1 {
                let _ = slot.tx.try_send(Ok(Outgoing::Assignment(change)));
            } else {
                slot.assignment = Some(change);
                continue;
            }
        }
        while slot.tx.capacity() > 1 {
            let Some(response) = slot.outbox.pop_front() else {
                break;
            };
            let _ = slot.tx.try_send(Ok(response));
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;
    use crate::group::{GroupSettings, MemberOptions};
    use crate::groups::dead_letter::build_batch;
    use crate::groups::test_support::{ManualClock, receive, test_registry};
    use crate::groups::{GroupConfig, GroupRegistry, MEMBER_QUEUE};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ack_deadlines_run_on_the_groups_clock() {
        let dir = tempfile::tempdir().unwrap();
        let registry = test_registry(dir.path(), crate::config::FsyncSetting::Never);
        let topic = registry
            .create("t", 1, crate::topic::TopicSettings::default())
            .unwrap();
        let clock = Arc::new(ManualClock::new(1_000_000));
        let groups =
            Arc::new(GroupRegistry::open_with_clock(registry.clone(), clock.clone()).unwrap());
        groups.start();
        let settings = GroupSettings::default();
        let deadline_ms = settings.ack_deadline_ms;
        let backoff_max_ms = settings.retry_backoff_max_ms;
        let config = GroupConfig {
            settings,
            dead_letter_topic: None,
        };
        let group = groups
            .create(topic.clone(), "g", config, vec![0], false)
            .await
            .unwrap();
        let batch = build_batch(&registry, 1, Some(b"k"), b"v", &[]).unwrap();
        topic.partition(0).unwrap().append(batch).await.unwrap();
        let (tx, mut rx) = mpsc::channel(MEMBER_QUEUE);
        group
            .join(
                MemberId(1),
                "one".into(),
                MemberOptions::default(),
                false,
                tx,
            )
            .unwrap();
        assert_eq!(receive(&mut rx, 1).await, [0]);

        // Past the deadline on the group's clock, long before it on the wall clock: the
        // delivery expires at once, and after the retry backoff (on the same clock) the
        // message is redelivered (`receive` waits 10 s at most; the deadline is 30 s).
        clock.advance(deadline_ms + 1);
        group.wake();
        for _ in 0..1_000 {
            if group.counts().expirations == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(group.counts().expirations, 1);
        clock.advance(backoff_max_ms + 1);
        group.wake();
        assert_eq!(receive(&mut rx, 1).await, [0]);
        groups.close();
    }
}
