//! Supervision of group tasks: a task that panics is logged, counted and restarted from
//! the group's last persisted state after a backoff, so delivery resumes instead of
//! stalling silently.

use std::sync::Arc;
use std::time::Duration;

use super::driver::{Group, GroupHome};
use super::millis;
use super::persist::clamp_to_logs;
use crate::error::BrokerError;
use crate::group::{GroupLimits, GroupSnapshot, GroupState};

/// First wait before restarting a group task that panicked; doubles per panic in a row.
/// A panic is a bug: the restart keeps the group serving meanwhile, the backoff keeps a
/// bug that panics on every pass from spinning a core and flooding the log.
const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between restarts of a group task that keeps panicking: it is restarted
/// (and logged, and counted) at least this often for as long as the broker runs.
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A task that ran this long before panicking starts the backoff again from the minimum.
const RESTART_BACKOFF_RESET: Duration = Duration::from_secs(60);

/// Runs a group's driver and restarts it when it panics: the panic is logged at ERROR
/// with the group's names (the panic hook has logged where it happened), counted
/// (`herald_group_task_failures_total`), and the group is restored from its last
/// persisted state after a backoff (see [`RESTART_BACKOFF_MIN`]), so delivery resumes
/// instead of stalling silently. Ends when the driver ends (the group stopped).
pub(super) async fn supervise(group: Arc<Group>, groups: Arc<dyn GroupHome>) {
    let mut backoff = RESTART_BACKOFF_MIN;
    let mut stop = group.stop.subscribe();
    loop {
        let started_ms = group.now_ms();
        let outcome = tokio::spawn(group.clone().run(groups.clone())).await;
        let panic = match outcome {
            Ok(()) => return,
            // Cancelled: the runtime is shutting down.
            Err(error) if !error.is_panic() => return,
            Err(error) => panic_message(error.into_panic()),
        };
        groups.count_task_failure();
        if group.now_ms().saturating_sub(started_ms) >= millis(RESTART_BACKOFF_RESET) {
            backoff = RESTART_BACKOFF_MIN;
        }
        tracing::error!(topic = %group.topic_name, group = %group.name, %panic, restart_in_ms = backoff.as_millis() as u64, "the group's task panicked; restarting the group from its last persisted state");
        if *stop.borrow() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
        let reset = group.restore_persisted();
        groups.count_offsets_reset(reset);
    }
}

/// The message of a panic payload (a `&str` or `String`, as `panic!` makes them).
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => payload
            .downcast_ref::<&str>()
            .map_or_else(|| "(no message)".to_owned(), |m| (*m).to_owned()),
    }
}

impl Group {
    /// Replaces the machine with the last persisted state (after a panic in the group's
    /// task, whose tables may be half-updated): the members' streams end with
    /// UNAVAILABLE, so their clients join again, and what they held is redelivered, as
    /// are acks since the last write (at-least-once). Returns how many partition positions
    /// were brought down to their log's end.
    pub(super) fn restore_persisted(&self) -> u64 {
        let persisted = self
            .persisted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut inner = self.lock();
        let snapshot = GroupSnapshot::decode(&persisted).unwrap_or_else(|error| {
            // Written by this process from a valid state, so this means a bug; the
            // current state's snapshot is the best there is.
            tracing::error!(topic = %self.topic_name, group = %self.name, %error, "the last persisted group state does not decode; restarting from the current state");
            inner.state.snapshot()
        });
        let mut snapshot = snapshot;
        let reset = clamp_to_logs(&mut snapshot, &self.topic, (&self.topic_name, &self.name));
        let settings = inner.config.settings.clone();
        match GroupState::restore(settings, GroupLimits::default(), &snapshot) {
            Ok(state) => inner.state = state,
            Err(error) => {
                tracing::error!(topic = %self.topic_name, group = %self.name, %error, "cannot restore the group's state; keeping the current one");
            }
        }
        for (_, slot) in inner.members.drain() {
            let _ = slot.tx.try_send(Err(BrokerError::GroupRestarted {
                topic: self.topic_name.clone(),
                group: self.name.clone(),
            }));
        }
        drop(inner);
        reset
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;
    use crate::group::{GroupSettings, MemberId, MemberOptions};
    use crate::groups::GroupRegistry;
    use crate::groups::dead_letter::build_batch;
    use crate::groups::test_support::{receive, test_registry};
    use crate::groups::{GroupConfig, MEMBER_QUEUE};
    use std::sync::atomic::Ordering;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_task_that_panics_is_counted_and_restarted_from_its_persisted_state() {
        let dir = tempfile::tempdir().unwrap();
        let registry = test_registry(dir.path(), crate::config::FsyncSetting::Never);
        let topic = registry
            .create("t", 1, crate::topic::TopicSettings::default())
            .unwrap();
        let groups = Arc::new(GroupRegistry::open(registry.clone()).unwrap());
        groups.start();
        let config = GroupConfig {
            settings: GroupSettings::default(),
            dead_letter_topic: None,
        };
        let group = groups
            .create(topic.clone(), "g", config, vec![0], false)
            .await
            .unwrap();
        for value in [&b"a"[..], b"b", b"c"] {
            let batch = build_batch(&registry, 1, Some(value), value, &[]).unwrap();
            topic.partition(0).unwrap().append(batch).await.unwrap();
        }
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
        assert_eq!(receive(&mut rx, 3).await, [0, 1, 2]);

        // A bug panics the task while the member holds all three unacked.
        group.panic_next.store(true, Ordering::Relaxed);
        group.wake();
        let ended = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the member's stream ends within 10 s");
        assert!(
            matches!(ended, Some(Err(BrokerError::GroupRestarted { .. }))),
            "{ended:?}"
        );
        assert_eq!(groups.task_failures(), 1);

        // The group serves again: a member that joins gets what was never acked.
        let (tx, mut rx) = mpsc::channel(MEMBER_QUEUE);
        group
            .join(
                MemberId(2),
                "two".into(),
                MemberOptions::default(),
                false,
                tx,
            )
            .unwrap();
        assert_eq!(receive(&mut rx, 3).await, [0, 1, 2]);
        let (description, _, _) = group.describe();
        assert_eq!(description.members.len(), 1);
        groups.close();
    }
}
