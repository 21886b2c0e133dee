//! Behaviour tests of [`GroupState`], one behaviour per test, on a fake clock: `now` is
//! just a number the test picks.

use super::*;

const A: MemberId = MemberId(1);
const B: MemberId = MemberId(2);
const C: MemberId = MemberId(3);

fn settings(ordering: OrderingMode) -> GroupSettings {
    GroupSettings {
        ack_deadline_ms: 30_000,
        retry_backoff_min_ms: 1_000,
        retry_backoff_max_ms: 60_000,
        max_delivery_attempts: 0,
        ordering,
    }
}

fn group(partitions: usize, settings: GroupSettings) -> GroupState {
    GroupState::new(
        settings,
        GroupLimits::default(),
        &vec![Offset(0); partitions],
    )
    .unwrap()
}

fn record(offset: u64, key: Option<&str>) -> OfferedRecord {
    OfferedRecord {
        offset: Offset(offset),
        key: key.map(|k| KeyHash::of(k.as_bytes())),
        size_bytes: 10,
        timestamp_ms: offset as i64,
    }
}

/// Appends `keys` to partition `p` as the driver would: from the offset the group wants.
fn feed(g: &mut GroupState, p: u32, keys: &[Option<&str>]) {
    let start = g.wants(PartitionId(p)).unwrap().expect("room").0;
    let records: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| record(start + i as u64, *k))
        .collect();
    assert_eq!(g.offer(PartitionId(p), &records).unwrap(), records.len());
}

fn offsets(deliveries: &[Delivery]) -> Vec<u64> {
    deliveries.iter().map(|d| d.offset.0).collect()
}

fn join(g: &mut GroupState, member: MemberId) -> Vec<PartitionId> {
    g.join(member, MemberOptions::default(), 0).unwrap()
}

fn ack(g: &mut GroupState, member: MemberId, delivery: &Delivery) -> AckOutcome {
    g.ack(member, &delivery.ack_id).unwrap()
}

fn committed(g: &GroupState, p: u32) -> u64 {
    g.partition_info(PartitionId(p)).unwrap().committed.0
}

#[test]
fn nack_redelivers_after_the_backoff() {
    let mut g = group(1, settings(OrderingMode::None));
    join(&mut g, A);
    feed(&mut g, 0, &[None]);
    let first = g.poll(A, 0, 10).unwrap();
    assert_eq!(first[0].attempt, 1);
    assert_eq!(
        g.nack(A, &first[0].ack_id, None, "busy", 10).unwrap(),
        NackOutcome::Retry { due_ms: 1_010 }
    );
    assert!(
        g.poll(A, 1_009, 10).unwrap().is_empty(),
        "not before the backoff"
    );
    let second = g.poll(A, 1_010, 10).unwrap();
    assert_eq!((offsets(&second), second[0].attempt), (vec![0], 2));
    // The second failure doubles the backoff.
    assert_eq!(
        g.nack(A, &second[0].ack_id, None, "busy", 2_000).unwrap(),
        NackOutcome::Retry { due_ms: 4_000 }
    );
    let third = g.poll(A, 4_000, 10).unwrap();
    // An explicit delay replaces the backoff, as the Nack message documents: 0 = at once.
    assert_eq!(
        g.nack(A, &third[0].ack_id, Some(0), "", 4_001).unwrap(),
        NackOutcome::Retry { due_ms: 4_001 }
    );
    assert_eq!(g.poll(A, 4_001, 10).unwrap()[0].attempt, 4);
    assert_eq!(
        g.partition_info(PartitionId(0)).unwrap().redelivered_count,
        3
    );
    g.check_invariants();
}

#[test]
fn backoff_doubles_up_to_the_max() {
    let s = settings(OrderingMode::Key);
    let delays: Vec<u64> = (1..=8).map(|n| s.backoff_ms(n)).collect();
    assert_eq!(
        delays,
        vec![1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000]
    );
    assert_eq!(s.backoff_ms(u32::MAX), 60_000);
}

#[test]
fn an_expired_deadline_redelivers() {
    let mut g = group(1, settings(OrderingMode::None));
    join(&mut g, A);
    feed(&mut g, 0, &[None]);
    let first = g.poll(A, 0, 10).unwrap();
    assert_eq!(first[0].deadline_ms, 30_000);
    assert_eq!(g.next_wakeup(0), Some(30_000));
    assert!(g.tick(29_999).is_empty());
    let expired = g.tick(30_000);
    assert_eq!(expired.len(), 1);
    assert_eq!(
        (expired[0].offset, expired[0].member, expired[0].attempts),
        (Offset(0), A, 1)
    );
    // Due at deadline + backoff, whenever the tick ran.
    assert_eq!(g.next_wakeup(30_000), Some(31_000));
    assert_eq!(
        g.next_wakeup(31_000),
        None,
        "already due: the driver polls it"
    );
    assert!(g.poll(A, 30_999, 10).unwrap().is_empty());
    let again = g.poll(A, 31_000, 10).unwrap();
    assert_eq!((offsets(&again), again[0].attempt), (vec![0], 2));
    let info = g.partition_info(PartitionId(0)).unwrap();
    assert_eq!(
        (info.redelivered_count, info.in_flight, info.committed),
        (1, 1, Offset(0))
    );
    g.check_invariants();
}

#[test]
fn extend_moves_the_deadline_from_now() {
    let mut g = group(1, settings(OrderingMode::None));
    join(&mut g, A);
    feed(&mut g, 0, &[None]);
    let d = g.poll(A, 0, 1).unwrap().remove(0);
    assert_eq!(
        g.extend(A, &d.ack_id, 50_000, 20_000).unwrap(),
        ExtendOutcome::Extended {
            deadline_ms: 70_000
        }
    );
    // Repeating it does not push further; the cap applies.
    assert_eq!(
        g.extend(A, &d.ack_id, 50_000, 20_000).unwrap(),
        ExtendOutcome::Extended {
            deadline_ms: 70_000
        }
    );
    assert_eq!(
        g.extend(A, &d.ack_id, u64::MAX, 0).unwrap(),
        ExtendOutcome::Extended {
            deadline_ms: MAX_EXTEND_MS
        }
    );
    assert!(g.tick(MAX_EXTEND_MS - 1).is_empty());
    assert_eq!(g.tick(MAX_EXTEND_MS).len(), 1);
    assert_eq!(g.extend(A, &d.ack_id, 1, 0).unwrap(), ExtendOutcome::Stale);
    g.check_invariants();
}

#[test]
fn max_attempts_dead_letter_then_done() {
    let mut s = settings(OrderingMode::Key);
    s.max_delivery_attempts = 2;
    let mut g = group(1, s);
    join(&mut g, A);
    feed(&mut g, 0, &[Some("k"), Some("k")]);
    let d1 = g.poll(A, 0, 10).unwrap();
    assert_eq!(offsets(&d1), vec![0]);
    g.nack(A, &d1[0].ack_id, Some(0), "first", 0).unwrap();
    let d2 = g.poll(A, 0, 10).unwrap();
    assert_eq!((offsets(&d2), d2[0].attempt), (vec![0], 2));
    assert_eq!(
        g.nack(A, &d2[0].ack_id, None, "poison", 0).unwrap(),
        NackOutcome::DeadLetter
    );
    assert_eq!(
        g.take_actions(),
        vec![Action::DeadLetter(DeadLetter {
            partition: PartitionId(0),
            offset: Offset(0),
            attempts: 2,
            last_reason: FailureReason::Nacked("poison".into()),
        })]
    );
    // Until confirmed it is neither redelivered nor done, and its key stays blocked.
    assert!(g.poll(A, 1_000_000, 10).unwrap().is_empty());
    assert_eq!(committed(&g, 0), 0);
    let pending = g.pending(&PendingFilter::default()).unwrap();
    assert_eq!(pending.messages[0].state, PendingState::DeadLettering);
    assert!(g.dead_lettered(PartitionId(0), Offset(0)).unwrap());
    assert!(
        !g.dead_lettered(PartitionId(0), Offset(0)).unwrap(),
        "confirmed once"
    );
    let info = g.partition_info(PartitionId(0)).unwrap();
    assert_eq!((info.committed, info.dead_lettered_count), (Offset(1), 1));
    assert_eq!(offsets(&g.poll(A, 0, 10).unwrap()), vec![1]);
    g.check_invariants();
}

#[test]
fn an_expiry_can_dead_letter_too() {
    let mut s = settings(OrderingMode::None);
    s.max_delivery_attempts = 1;
    let mut g = group(1, s);
    join(&mut g, A);
    feed(&mut g, 0, &[None]);
    g.poll(A, 0, 10).unwrap();
    let expired = g.tick(30_000);
    assert!(expired[0].dead_lettered);
    let actions = g.take_actions();
    assert!(matches!(
        &actions[..],
        [Action::DeadLetter(DeadLetter {
            last_reason: FailureReason::DeadlineExpired,
            ..
        })]
    ));
    assert_eq!(
        FailureReason::DeadlineExpired.to_string(),
        "ack deadline expired"
    );
}

#[test]
fn key_mode_a_slow_key_does_not_block_other_keys() {
    let mut g = group(1, settings(OrderingMode::Key));
    join(&mut g, A);
    feed(
        &mut g,
        0,
        &[
            Some("a"),
            Some("a"),
            Some("b"),
            Some("b"),
            Some("c"),
            None,
            None,
        ],
    );
    // One per key, and keyless messages all at once.
    let first = g.poll(A, 0, 100).unwrap();
    assert_eq!(offsets(&first), vec![0, 2, 4, 5, 6]);
    assert_eq!(
        g.poll(A, 0, 100).unwrap(),
        vec![],
        "never two in flight for one key"
    );
    // "b" finishes: its next message goes, while "a" is still in flight.
    ack(&mut g, A, &first[1]);
    assert_eq!(offsets(&g.poll(A, 0, 100).unwrap()), vec![3]);
    // "a" fails: its message 0 comes back before message 1, and only when due.
    g.nack(A, &first[0].ack_id, Some(500), "later", 0).unwrap();
    assert!(
        g.poll(A, 499, 100).unwrap().is_empty(),
        "message 1 must not overtake 0"
    );
    let redelivered = g.poll(A, 500, 100).unwrap();
    assert_eq!(
        (offsets(&redelivered), redelivered[0].attempt),
        (vec![0], 2)
    );
    ack(&mut g, A, &redelivered[0]);
    assert_eq!(offsets(&g.poll(A, 500, 100).unwrap()), vec![1]);
    g.check_invariants();
}

#[test]
fn key_mode_a_dead_letter_blocks_its_key_until_confirmed() {
    let mut s = settings(OrderingMode::Key);
    s.max_delivery_attempts = 1;
    let mut g = group(1, s);
    join(&mut g, A);
    feed(&mut g, 0, &[Some("a"), Some("a"), Some("b")]);
    let d = g.poll(A, 0, 10).unwrap();
    assert_eq!(offsets(&d), vec![0, 2]);
    g.nack(A, &d[0].ack_id, None, "bad", 0).unwrap();
    assert!(g.poll(A, 0, 10).unwrap().is_empty());
    g.dead_lettered(PartitionId(0), Offset(0)).unwrap();
    assert_eq!(offsets(&g.poll(A, 0, 10).unwrap()), vec![1]);
}

fn join_per_key(g: &mut GroupState, member: MemberId, per_key: u32) {
    let options = MemberOptions {
        max_in_flight_per_key: per_key,
        ..MemberOptions::default()
    };
    g.join(member, options, 0).unwrap();
}

#[test]
fn key_mode_a_member_may_hold_several_messages_of_a_key_in_order() {
    let mut g = group(1, settings(OrderingMode::Key));
    join_per_key(&mut g, A, 3);
    feed(
        &mut g,
        0,
        &[Some("a"), Some("a"), Some("b"), Some("a"), Some("a")],
    );
    // One more of a key per poll, in offset order, up to three of "a" at once.
    assert_eq!(offsets(&g.poll(A, 0, 100).unwrap()), vec![0, 2]);
    let second = g.poll(A, 0, 100).unwrap();
    assert_eq!(offsets(&second), vec![1]);
    assert_eq!(offsets(&g.poll(A, 0, 100).unwrap()), vec![3]);
    assert!(
        g.poll(A, 0, 100).unwrap().is_empty(),
        "three of \"a\" in flight"
    );
    // An ack out of order frees room; the key's next message follows its last delivered.
    ack(&mut g, A, &second[0]);
    assert_eq!(offsets(&g.poll(A, 0, 100).unwrap()), vec![4]);
    g.check_invariants();
}

#[test]
fn key_mode_a_failed_message_takes_the_later_ones_of_its_key_back() {
    let mut g = group(1, settings(OrderingMode::Key));
    join_per_key(&mut g, A, 4);
    feed(&mut g, 0, &[Some("a"), Some("a"), Some("a"), Some("b")]);
    let mut d = g.poll(A, 0, 100).unwrap();
    d.extend(g.poll(A, 0, 100).unwrap());
    d.extend(g.poll(A, 0, 100).unwrap());
    assert_eq!(offsets(&d), vec![0, 3, 1, 2]);
    assert_eq!(g.describe().members[0].in_flight_messages, 4);
    // Message 1 fails: 2 is taken back with it (its window room freed), 0 and "b" stay.
    assert_eq!(
        g.nack(A, &d[2].ack_id, Some(500), "later", 0).unwrap(),
        NackOutcome::Retry { due_ms: 500 }
    );
    assert_eq!(g.describe().members[0].in_flight_messages, 2);
    assert_eq!(
        ack(&mut g, A, &d[3]),
        AckOutcome::Stale,
        "a taken-back delivery's ack is not honoured"
    );
    assert!(
        g.poll(A, 499, 100).unwrap().is_empty(),
        "nothing overtakes 1"
    );
    // Due again: 1 (attempt 2), then 2 (still its first attempt: the failure was not its).
    let again = g.poll(A, 500, 100).unwrap();
    assert_eq!((offsets(&again), again[0].attempt), (vec![1], 2));
    let then = g.poll(A, 500, 100).unwrap();
    assert_eq!((offsets(&then), then[0].attempt), (vec![2], 1));
    // The lowest failing takes everything after it back, and expiry does the same.
    ack(&mut g, A, &d[0]);
    g.check_invariants();
    let expired = g.tick(30_500);
    assert_eq!(
        expired.iter().map(|e| e.offset.0).collect::<Vec<_>>(),
        vec![3, 1],
        "by deadline; 2 is taken back by 1's expiry, not expired itself"
    );
    assert_eq!(g.describe().members[0].in_flight_messages, 0);
    g.check_invariants();
}

#[test]
fn key_mode_a_dead_letter_takes_the_later_ones_of_its_key_back() {
    let mut s = settings(OrderingMode::Key);
    s.max_delivery_attempts = 1;
    let mut g = group(1, s);
    join_per_key(&mut g, A, 2);
    feed(&mut g, 0, &[Some("a"), Some("a")]);
    let mut d = g.poll(A, 0, 10).unwrap();
    d.extend(g.poll(A, 0, 10).unwrap());
    assert_eq!(offsets(&d), vec![0, 1]);
    assert_eq!(
        g.nack(A, &d[0].ack_id, None, "bad", 0).unwrap(),
        NackOutcome::DeadLetter
    );
    assert!(
        g.poll(A, 0, 10).unwrap().is_empty(),
        "held by the dead letter"
    );
    g.dead_lettered(PartitionId(0), Offset(0)).unwrap();
    let again = g.poll(A, 0, 10).unwrap();
    assert_eq!((offsets(&again), again[0].attempt), (vec![1], 1));
    g.check_invariants();
}

#[test]
fn key_mode_a_leaving_member_s_messages_come_back_in_key_order() {
    let mut g = group(1, settings(OrderingMode::Key));
    join_per_key(&mut g, A, 3);
    feed(&mut g, 0, &[Some("a"), Some("a"), Some("a")]);
    for _ in 0..3 {
        g.poll(A, 0, 10).unwrap();
    }
    g.leave(A, 0).unwrap();
    join(&mut g, B);
    // B takes one of a key at a time; the first comes back as a redelivery.
    let d = g.poll(B, 0, 10).unwrap();
    assert_eq!((offsets(&d), d[0].attempt), (vec![0], 2));
    ack(&mut g, B, &d[0]);
    let d = g.poll(B, 0, 10).unwrap();
    assert_eq!((offsets(&d), d[0].attempt), (vec![1], 1));
    g.check_invariants();
}

#[test]
fn partition_mode_is_strict_order() {
    let mut g = group(1, settings(OrderingMode::Partition));
    join(&mut g, A);
    feed(&mut g, 0, &[Some("a"), Some("b"), None]);
    let d0 = g.poll(A, 0, 10).unwrap();
    assert_eq!(offsets(&d0), vec![0]);
    assert!(
        g.poll(A, 0, 10).unwrap().is_empty(),
        "one in flight per partition"
    );
    g.nack(A, &d0[0].ack_id, Some(100), "", 0).unwrap();
    assert!(
        g.poll(A, 99, 10).unwrap().is_empty(),
        "nothing overtakes the nacked one"
    );
    let again = g.poll(A, 100, 10).unwrap();
    assert_eq!((offsets(&again), again[0].attempt), (vec![0], 2));
    ack(&mut g, A, &again[0]);
    let d1 = g.poll(A, 100, 10).unwrap();
    assert_eq!(offsets(&d1), vec![1]);
    ack(&mut g, A, &d1[0]);
    assert_eq!(offsets(&g.poll(A, 100, 10).unwrap()), vec![2]);
    g.check_invariants();
}

#[test]
fn none_mode_is_parallel() {
    let mut g = group(1, settings(OrderingMode::None));
    join(&mut g, A);
    feed(&mut g, 0, &[Some("a"), Some("a"), Some("a")]);
    assert_eq!(offsets(&g.poll(A, 0, 10).unwrap()), vec![0, 1, 2]);
}

#[test]
fn ordering_changes_live() {
    let mut g = group(1, settings(OrderingMode::Key));
    join(&mut g, A);
    feed(&mut g, 0, &[Some("a"), Some("a"), Some("a")]);
    assert_eq!(offsets(&g.poll(A, 0, 10).unwrap()), vec![0]);
    g.update_settings(settings(OrderingMode::None)).unwrap();
    assert_eq!(offsets(&g.poll(A, 0, 10).unwrap()), vec![1, 2]);
    let mut bad = settings(OrderingMode::None);
    bad.retry_backoff_min_ms = bad.retry_backoff_max_ms + 1;
    assert!(matches!(
        g.update_settings(bad),
        Err(GroupError::InvalidSettings(_))
    ));
    let mut zero = settings(OrderingMode::None);
    zero.ack_deadline_ms = 0;
    assert!(g.update_settings(zero).is_err());
    let mut long = settings(OrderingMode::None);
    long.ack_deadline_ms = u64::MAX;
    g.update_settings(long).unwrap();
    assert_eq!(g.settings().ack_deadline_ms, MAX_ACK_DEADLINE_MS, "capped");
}

#[test]
fn switching_to_key_mode_waits_for_a_busy_key() {
    // In none mode a key can have a later message in flight while an earlier one waits.
    let mut g = group(1, settings(OrderingMode::None));
    join(&mut g, A);
    feed(&mut g, 0, &[Some("k"), Some("k"), Some("k")]);
    let d = g.poll(A, 0, 2).unwrap();
    g.nack(A, &d[0].ack_id, Some(0), "", 0).unwrap();
    g.update_settings(settings(OrderingMode::Key)).unwrap();
    // Key mode now: message 0 is the key's lowest, but 1 is still in flight.
    assert!(
        g.poll(A, 0, 10).unwrap().is_empty(),
        "never two in flight for one key"
    );
    ack(&mut g, A, &d[1]);
    let next = g.poll(A, 0, 10).unwrap();
    assert_eq!((offsets(&next), next[0].attempt), (vec![0], 2));
    ack(&mut g, A, &next[0]);
    assert_eq!(offsets(&g.poll(A, 0, 10).unwrap()), vec![2]);
    g.check_invariants();
}

#[test]
fn switching_to_key_mode_waits_for_a_busy_key_whatever_the_member_may_hold() {
    let mut g = group(1, settings(OrderingMode::None));
    join_per_key(&mut g, A, 3);
    feed(&mut g, 0, &[Some("k"), Some("k"), Some("k")]);
    let d = g.poll(A, 0, 2).unwrap();
    g.nack(A, &d[0].ack_id, Some(0), "", 0).unwrap();
    g.update_settings(settings(OrderingMode::Key)).unwrap();
    g.check_invariants();
    // 1 is in flight above the waiting 0: nothing of the key goes until 1 is settled.
    assert!(g.poll(A, 0, 10).unwrap().is_empty());
    ack(&mut g, A, &d[1]);
    assert_eq!(offsets(&g.poll(A, 0, 10).unwrap()), vec![0]);
    assert_eq!(offsets(&g.poll(A, 0, 10).unwrap()), vec![2]);
    g.check_invariants();
}

#[test]
fn assignment_is_balanced_and_sticky() {
    let mut g = group(6, settings(OrderingMode::Key));
    assert_eq!(join(&mut g, A).len(), 6);
    let b = join(&mut g, B);
    assert_eq!(b.len(), 3);
    g.take_actions();
    let before = g.assignment();
    assert_eq!(join(&mut g, C).len(), 2);
    let after = g.assignment();
    let owned = |a: &[(MemberId, Vec<PartitionId>)], m: MemberId| {
        a.iter()
            .find(|(id, _)| *id == m)
            .map(|(_, p)| p.clone())
            .unwrap_or_default()
    };
    for m in [A, B] {
        let kept = owned(&after, m);
        assert_eq!(kept.len(), 2);
        assert!(
            kept.iter().all(|p| owned(&before, m).contains(p)),
            "only moves to C"
        );
    }
    // Members are told what changed; C learned its partitions from `join`.
    let actions = g.take_actions();
    assert_eq!(actions.len(), 2);
    for action in actions {
        let Action::AssignmentChanged(change) = action else {
            panic!("unexpected {action:?}")
        };
        assert!(change.added.is_empty());
        assert_eq!(change.revoked.len(), 1);
        assert_eq!(change.partitions.len(), 2);
    }
    // B leaves: only its partitions move, one to each.
    g.leave(B, 0).unwrap();
    let last = g.assignment();
    assert_eq!(last.len(), 2);
    for m in [A, C] {
        let kept = owned(&last, m);
        assert_eq!(kept.len(), 3);
        assert!(owned(&after, m).iter().all(|p| kept.contains(p)));
    }
    g.check_invariants();
}

#[test]
fn a_handover_waits_for_in_flight_messages() {
    let mut g = group(2, settings(OrderingMode::None));
    join(&mut g, A);
    feed(&mut g, 0, &[None, None]);
    feed(&mut g, 1, &[None, None]);
    let held = g.poll(A, 0, 2).unwrap();
    assert_eq!(held.len(), 2, "one from each partition");
    // B joins: one partition must move, but A holds a message of it.
    assert_eq!(join(&mut g, B), vec![]);
    let handovers = g.handovers();
    assert_eq!(handovers.len(), 1);
    let moving = handovers[0].partition;
    assert_eq!((handovers[0].from, handovers[0].to), (A, Some(B)));
    assert_eq!(g.partition_info(moving).unwrap().owner(), None);
    // Neither gets anything new from it meanwhile; A keeps its other partition.
    let more = g.poll(A, 0, 10).unwrap();
    assert!(more.iter().all(|d| d.partition != moving));
    assert!(g.poll(B, 0, 10).unwrap().is_empty());
    let revoked = g.take_actions();
    assert_eq!(
        revoked,
        vec![Action::AssignmentChanged(AssignmentChange {
            member: A,
            added: vec![],
            revoked: vec![moving],
            partitions: vec![PartitionId(1 - moving.0)],
        })]
    );
    // A acks what it held: the partition moves, and B gets only the undelivered message.
    let held_moving = held.iter().find(|d| d.partition == moving).unwrap();
    ack(&mut g, A, held_moving);
    assert!(g.handovers().is_empty());
    assert_eq!(
        g.take_actions(),
        vec![Action::AssignmentChanged(AssignmentChange {
            member: B,
            added: vec![moving],
            revoked: vec![],
            partitions: vec![moving],
        })]
    );
    let to_b = g.poll(B, 0, 10).unwrap();
    assert_eq!(to_b.len(), 1);
    assert_eq!(
        (to_b[0].partition, to_b[0].offset, to_b[0].attempt),
        (moving, Offset(1), 1)
    );
    g.check_invariants();
}

#[test]
fn a_leaving_owner_hands_over_at_once() {
    let mut g = group(1, settings(OrderingMode::None));
    join(&mut g, A);
    feed(&mut g, 0, &[None]);
    g.poll(A, 0, 1).unwrap();
    join(&mut g, B);
    assert!(
        g.handovers().is_empty(),
        "A keeps the only partition: sticky"
    );
    // A leaves holding the message: it is due at once, for B, as attempt 2.
    g.leave(A, 5).unwrap();
    let d = g.poll(B, 5, 10).unwrap();
    assert_eq!((offsets(&d), d[0].attempt), (vec![0], 2));
    g.check_invariants();
}

#[test]
fn draining_ends_when_the_old_owners_deadline_passes() {
    let mut g = group(2, settings(OrderingMode::None));
    join(&mut g, A);
    feed(&mut g, 0, &[None]);
    feed(&mut g, 1, &[None]);
    g.poll(A, 0, 10).unwrap();
    join(&mut g, B);
    let moving = g.handovers()[0].partition;
    g.tick(30_000);
    assert!(g.handovers().is_empty());
    assert_eq!(g.partition_info(moving).unwrap().owner(), Some(B));
    let d = g.poll(B, 31_000, 10).unwrap();
    assert_eq!((d[0].partition, d[0].attempt), (moving, 2));
    g.check_invariants();
}

#[test]
fn stale_and_bad_acks() {
    let mut g = group(1, settings(OrderingMode::None));
    join(&mut g, A);
    join(&mut g, B);
    feed(&mut g, 0, &[None]);
    let old = g.poll(A, 0, 1).unwrap().remove(0);
    g.tick(30_000);
    let new = g.poll(A, 31_000, 1).unwrap().remove(0);
    assert_ne!(old.ack_id, new.ack_id);
    assert_eq!(ack(&mut g, A, &old), AckOutcome::Stale, "an older attempt");
    assert_eq!(
        ack(&mut g, B, &new),
        AckOutcome::Stale,
        "another member's delivery"
    );
    assert_eq!(
        g.nack(A, &old.ack_id, None, "", 31_000).unwrap(),
        NackOutcome::Stale
    );
    assert_eq!(ack(&mut g, A, &new), AckOutcome::Acked);
    assert_eq!(ack(&mut g, A, &new), AckOutcome::Stale, "acked already");
    assert_eq!(committed(&g, 0), 1, "counted once");
    // Client errors, not panics.
    let forged = AckId {
        delivery: 1_000,
        ..new.ack_id
    };
    assert_eq!(g.ack(A, &forged), Err(GroupError::UnknownAckId));
    let elsewhere = AckId {
        partition: PartitionId(7),
        ..new.ack_id
    };
    assert!(matches!(
        g.ack(A, &elsewhere),
        Err(GroupError::UnknownPartition { .. })
    ));
    assert_eq!(g.ack(C, &new.ack_id), Err(GroupError::UnknownMember(C)));
    assert_eq!(AckId::decode(&[1, 2, 3]), Err(GroupError::MalformedAckId));
    assert_eq!(AckId::decode(&new.ack_id.encode()), Ok(new.ack_id));
    assert_eq!(g.poll(C, 0, 1), Err(GroupError::UnknownMember(C)));
    assert_eq!(g.leave(C, 0), Err(GroupError::UnknownMember(C)));
    assert_eq!(
        g.join(A, MemberOptions::default(), 0),
        Err(GroupError::MemberExists(A))
    );
    g.check_invariants();
}

#[test]
fn a_late_ack_is_honoured_until_the_redelivery() {
    let mut g = group(1, settings(OrderingMode::None));
    join(&mut g, A);
    feed(&mut g, 0, &[None, None]);
    let d = g.poll(A, 0, 2).unwrap();
    g.tick(30_000);
    // Message 0 waits for its redelivery: the ack of the expired delivery still counts.
    assert_eq!(ack(&mut g, A, &d[0]), AckOutcome::Acked);
    assert_eq!(committed(&g, 0), 1);
    // Message 1 is delivered again first: then the old ack is stale.
    let again = g.poll(A, 31_000, 10).unwrap();
    assert_eq!(offsets(&again), vec![1]);
    assert_eq!(ack(&mut g, A, &d[1]), AckOutcome::Stale);
    assert_eq!(ack(&mut g, A, &again[0]), AckOutcome::Acked);
    assert_eq!(committed(&g, 0), 2);
    g.check_invariants();
}

#[test]
fn acks_above_committed_are_kept_as_ranges() {
    let mut g = group(1, settings(OrderingMode::None));
    join(&mut g, A);
    feed(&mut g, 0, &[None; 6]);
    let d = g.poll(A, 0, 10).unwrap();
    for i in [1, 2, 4] {
        ack(&mut g, A, &d[i]);
    }
    let info = g.partition_info(PartitionId(0)).unwrap();
    assert_eq!((info.committed, info.done_ranges), (Offset(0), 2));
    ack(&mut g, A, &d[0]);
    assert_eq!(committed(&g, 0), 3);
    ack(&mut g, A, &d[3]);
    let info = g.partition_info(PartitionId(0)).unwrap();
    assert_eq!((info.committed, info.done_ranges), (Offset(5), 0));
    g.check_invariants();
}

#[test]
fn seek_restarts_a_partition() {
    let mut g = group(2, settings(OrderingMode::None));
    join(&mut g, A);
    feed(&mut g, 0, &[None; 4]);
    feed(&mut g, 1, &[None; 2]);
    let d = g.poll(A, 0, 10).unwrap();
    let p0: Vec<_> = d.iter().filter(|d| d.partition == PartitionId(0)).collect();
    ack(&mut g, A, p0[0]);
    ack(&mut g, A, p0[2]);
    g.nack(A, &p0[1].ack_id, None, "", 0).unwrap();
    assert_eq!(
        g.seek(SeekTarget::Partition(PartitionId(0)), Offset(0))
            .unwrap(),
        vec![(PartitionId(0), Offset(0))]
    );
    let info = g.partition_info(PartitionId(0)).unwrap();
    assert_eq!(
        (
            info.committed,
            info.next_fetch,
            info.in_flight,
            info.waiting,
            info.done_ranges
        ),
        (Offset(0), Offset(0), 0, 0, 0)
    );
    // Deliveries from before the seek are stale; the window room they held is free.
    assert_eq!(ack(&mut g, A, p0[3]), AckOutcome::Stale);
    assert_eq!(
        g.describe().members[0].in_flight_messages,
        2,
        "partition 1's two"
    );
    assert_eq!(g.wants(PartitionId(0)).unwrap(), Some(Offset(0)));
    feed(&mut g, 0, &[None; 4]);
    let again = g.poll(A, 0, 10).unwrap();
    assert_eq!(offsets(&again), vec![0, 1, 2, 3]);
    assert!(
        again.iter().all(|d| d.attempt == 1),
        "a sought partition starts afresh"
    );
    // Seek every partition forward.
    g.seek(SeekTarget::All, Offset(100)).unwrap();
    for p in [0, 1] {
        assert_eq!(committed(&g, p), 100);
    }
    assert_eq!(g.wants(PartitionId(1)).unwrap(), Some(Offset(100)));
    assert!(
        g.seek(SeekTarget::Partition(PartitionId(2)), Offset(0))
            .is_err()
    );
    g.check_invariants();
}

#[test]
fn seek_drops_unconfirmed_dead_letters() {
    let mut s = settings(OrderingMode::None);
    s.max_delivery_attempts = 1;
    let mut g = group(1, s);
    join(&mut g, A);
    feed(&mut g, 0, &[None]);
    let d = g.poll(A, 0, 1).unwrap();
    g.nack(A, &d[0].ack_id, None, "", 0).unwrap();
    g.seek(SeekTarget::All, Offset(0)).unwrap();
    assert!(g.take_actions().is_empty());
    assert!(!g.dead_lettered(PartitionId(0), Offset(0)).unwrap());
    g.check_invariants();
}

#[test]
fn snapshot_restore_redelivers_only_what_is_not_done() {
    let mut s = settings(OrderingMode::None);
    s.max_delivery_attempts = 5;
    let mut g = group(1, s.clone());
    join(&mut g, A);
    feed(&mut g, 0, &[None; 10]);
    let d = g.poll(A, 0, 8).unwrap();
    for i in [0, 1, 3, 5, 6] {
        ack(&mut g, A, &d[i]);
    }
    g.nack(A, &d[4].ack_id, Some(0), "", 0).unwrap();
    let again = g.poll(A, 0, 1).unwrap();
    assert_eq!((again[0].offset, again[0].attempt), (Offset(4), 2));

    let bytes = g.snapshot().encode();
    let snapshot = GroupSnapshot::decode(&bytes).unwrap();
    let mut r = GroupState::restore(s, GroupLimits::default(), &snapshot).unwrap();
    assert_eq!(committed(&r, 0), 2);
    // The driver reads again from the committed offset; done offsets are skipped.
    assert_eq!(r.wants(PartitionId(0)).unwrap(), Some(Offset(2)));
    let records: Vec<_> = (2..10).map(|o| record(o, None)).collect();
    assert_eq!(r.offer(PartitionId(0), &records).unwrap(), 8);
    assert_eq!(r.partition_info(PartitionId(0)).unwrap().buffered, 5);
    join(&mut r, A);
    let redelivered = r.poll(A, 0, 100).unwrap();
    let got: Vec<(u64, u32)> = redelivered
        .iter()
        .map(|d| (d.offset.0, d.attempt))
        .collect();
    // 2, 7 were delivered once, 4 twice; 8, 9 never.
    assert_eq!(got, vec![(2, 2), (4, 3), (7, 2), (8, 1), (9, 1)]);
    for d in &redelivered {
        ack(&mut r, A, d);
    }
    assert_eq!(committed(&r, 0), 10);
    r.check_invariants();
}

#[test]
fn restore_skips_done_ranges_when_the_driver_asks() {
    let snapshot = GroupSnapshot {
        partitions: vec![PartitionSnapshot {
            committed: Offset(3),
            done: vec![(Offset(4), Offset(10))],
            attempts: vec![],
        }],
    };
    let mut g = GroupState::restore(
        settings(OrderingMode::None),
        GroupLimits::default(),
        &snapshot,
    )
    .unwrap();
    assert_eq!(g.wants(PartitionId(0)).unwrap(), Some(Offset(3)));
    g.offer(PartitionId(0), &[record(3, None)]).unwrap();
    assert_eq!(
        g.wants(PartitionId(0)).unwrap(),
        Some(Offset(10)),
        "jumps the done range"
    );
    let bad = GroupSnapshot {
        partitions: vec![PartitionSnapshot {
            committed: Offset(3),
            done: vec![(Offset(3), Offset(10))],
            attempts: vec![],
        }],
    };
    assert!(matches!(
        GroupState::restore(settings(OrderingMode::None), GroupLimits::default(), &bad),
        Err(GroupError::Snapshot(_))
    ));
}

#[test]
fn offer_takes_only_what_fits_and_wants_stops_when_full() {
    let limits = GroupLimits {
        max_members: 4,
        max_buffered_per_partition: 3,
        max_tracked_per_partition: 5,
        max_tracked_per_group: 7,
    };
    let mut g = GroupState::new(
        settings(OrderingMode::None),
        limits,
        &[Offset(0), Offset(0)],
    )
    .unwrap();
    let records: Vec<_> = (0..10).map(|o| record(o, None)).collect();
    assert_eq!(
        g.offer(PartitionId(0), &records).unwrap(),
        3,
        "buffer limit"
    );
    assert_eq!(g.wants(PartitionId(0)).unwrap(), None);
    join(&mut g, A);
    let d = g.poll(A, 0, 2).unwrap();
    assert_eq!(g.wants(PartitionId(0)).unwrap(), Some(Offset(3)));
    // Records below the wanted offset are skipped as already taken.
    assert_eq!(
        g.offer(PartitionId(0), &records).unwrap(),
        5,
        "tracked limit: 0..5"
    );
    assert_eq!(g.wants(PartitionId(0)).unwrap(), None);
    // The group limit leaves partition 1 two slots.
    assert_eq!(g.offer(PartitionId(1), &records).unwrap(), 2);
    assert_eq!(g.wants(PartitionId(1)).unwrap(), None);
    ack(&mut g, A, &d[0]);
    assert_eq!(g.wants(PartitionId(1)).unwrap(), Some(Offset(2)));
    // Misuse is an error, not a panic.
    assert!(matches!(
        g.offer(PartitionId(1), &[record(9, None)]),
        Err(GroupError::OfferGap {
            expected: 2,
            got: 9,
            ..
        })
    ));
    assert!(matches!(
        g.offer(PartitionId(1), &[record(2, None), record(4, None)]),
        Err(GroupError::OfferNotContiguous { at: 4, .. })
    ));
    assert!(g.offer(PartitionId(5), &records).is_err());
    assert!(matches!(
        GroupState::new(GroupSettings::default(), GroupLimits::default(), &[]),
        Err(GroupError::InvalidPartitionCount { .. })
    ));
    let zero = GroupLimits {
        max_members: 0,
        ..GroupLimits::default()
    };
    assert!(GroupState::new(GroupSettings::default(), zero, &[Offset(0)]).is_err());
    g.check_invariants();
}

#[test]
fn too_many_members() {
    let limits = GroupLimits {
        max_members: 1,
        ..GroupLimits::default()
    };
    let mut g = GroupState::new(GroupSettings::default(), limits, &[Offset(0)]).unwrap();
    join(&mut g, A);
    assert_eq!(
        g.join(B, MemberOptions::default(), 0),
        Err(GroupError::TooManyMembers { limit: 1 })
    );
}

#[test]
fn the_member_window_limits_deliveries() {
    let mut g = group(1, settings(OrderingMode::None));
    let options = MemberOptions {
        max_in_flight_messages: 2,
        max_in_flight_bytes: 1_000,
        credit_flow_control: false,
        max_in_flight_per_key: 1,
    };
    g.join(A, options, 0).unwrap();
    feed(&mut g, 0, &[None; 5]);
    let d = g.poll(A, 0, 10).unwrap();
    assert_eq!(d.len(), 2);
    assert!(g.poll(A, 0, 10).unwrap().is_empty());
    ack(&mut g, A, &d[0]);
    assert_eq!(g.poll(A, 0, 10).unwrap().len(), 1);
    // Bytes: sends while below the limit, so one message overshoots it.
    let mut g = group(1, settings(OrderingMode::None));
    let options = MemberOptions {
        max_in_flight_messages: 100,
        max_in_flight_bytes: 15,
        credit_flow_control: false,
        max_in_flight_per_key: 1,
    };
    g.join(A, options, 0).unwrap();
    feed(&mut g, 0, &[None; 5]);
    assert_eq!(g.poll(A, 0, 10).unwrap().len(), 2);
    assert_eq!(g.describe().members[0].in_flight_bytes, 20);
}

#[test]
fn credit_flow_control_paces_deliveries() {
    let options = MemberOptions {
        credit_flow_control: true,
        ..MemberOptions::default()
    };
    let mut g = group(1, settings(OrderingMode::None));
    g.join(A, options, 0).unwrap();
    feed(&mut g, 0, &[None; 8]);
    assert!(
        g.poll(A, 0, 10).unwrap().is_empty(),
        "credit starts at zero"
    );
    // Message credit: 2 messages, plenty of bytes.
    g.credit(A, 2, 20).unwrap();
    assert_eq!(g.poll(A, 0, 10).unwrap().len(), 2);
    assert!(g.poll(A, 0, 10).unwrap().is_empty(), "both used up");
    // Byte credit: each message costs 10 bytes and the credit floors at zero, so 15 bytes
    // buy two messages.
    g.credit(A, 10, 15).unwrap();
    assert_eq!(g.poll(A, 0, 10).unwrap().len(), 2);
    assert!(g.poll(A, 0, 10).unwrap().is_empty());
    // Credit adds up.
    g.credit(A, 0, 5).unwrap();
    g.credit(A, 0, 5).unwrap();
    assert_eq!(g.poll(A, 0, 10).unwrap().len(), 1);
    // Credit is ignored for members that did not ask for it.
    g.join(B, MemberOptions::default(), 0).unwrap();
    g.credit(B, 1, 1).unwrap();
    g.check_invariants();
}

#[test]
fn partitions_take_turns() {
    let mut g = group(3, settings(OrderingMode::None));
    join(&mut g, A);
    for p in 0..3 {
        feed(&mut g, p, &[None; 10]);
    }
    let count = |d: &[Delivery], p: u32| d.iter().filter(|d| d.partition == PartitionId(p)).count();
    let d = g.poll(A, 0, 6).unwrap();
    assert_eq!((count(&d, 0), count(&d, 1), count(&d, 2)), (2, 2, 2));
    // One at a time, the partitions rotate.
    let order: Vec<u32> = (0..6)
        .map(|_| g.poll(A, 0, 1).unwrap()[0].partition.0)
        .collect();
    assert_eq!(order, vec![0, 1, 2, 0, 1, 2]);
    // A partition with little to give leaves its share to the others.
    let mut g = group(2, settings(OrderingMode::None));
    join(&mut g, A);
    feed(&mut g, 0, &[None]);
    feed(&mut g, 1, &[None; 10]);
    let d = g.poll(A, 0, 6).unwrap();
    assert_eq!((count(&d, 0), count(&d, 1)), (1, 5));
}

#[test]
fn leaving_makes_in_flight_messages_due_at_once() {
    let mut g = group(1, settings(OrderingMode::Key));
    join(&mut g, A);
    feed(&mut g, 0, &[Some("k"), Some("k")]);
    let d = g.poll(A, 0, 10).unwrap();
    assert_eq!(offsets(&d), vec![0]);
    join(&mut g, B);
    g.leave(A, 7).unwrap();
    assert_eq!(g.assignment(), vec![(B, vec![PartitionId(0)])]);
    let again = g.poll(B, 7, 10).unwrap();
    assert_eq!(
        (offsets(&again), again[0].attempt),
        (vec![0], 2),
        "order kept for the key"
    );
    g.check_invariants();
}

#[test]
fn pending_lists_by_partition_and_key() {
    let mut g = group(2, settings(OrderingMode::None));
    join(&mut g, A);
    feed(&mut g, 0, &[Some("a"), Some("b"), Some("a")]);
    feed(&mut g, 1, &[Some("a")]);
    let d = g.poll(A, 0, 10).unwrap();
    let first_p0 = d
        .iter()
        .find(|d| d.partition == PartitionId(0) && d.offset == Offset(0))
        .unwrap();
    g.nack(A, &first_p0.ack_id, Some(50), "", 0).unwrap();
    let all = g.pending(&PendingFilter::default()).unwrap();
    let listed: Vec<(u32, u64)> = all
        .messages
        .iter()
        .map(|m| (m.partition.0, m.offset.0))
        .collect();
    assert_eq!(listed, vec![(0, 0), (0, 1), (0, 2), (1, 0)]);
    assert_eq!(all.messages[0].state, PendingState::Backoff { due_ms: 50 });
    assert_eq!(
        all.messages[1].state,
        PendingState::InFlight {
            member: A,
            deadline_ms: 30_000
        }
    );
    let a_in_p0 = g
        .pending(&PendingFilter {
            partition: Some(PartitionId(0)),
            key: Some(KeyHash::of(b"a")),
            limit: 0,
        })
        .unwrap();
    assert_eq!(a_in_p0.messages.len(), 2);
    let limited = g
        .pending(&PendingFilter {
            limit: 3,
            ..PendingFilter::default()
        })
        .unwrap();
    assert!(limited.truncated && limited.messages.len() == 3);
    assert_eq!(g.next_wakeup(0), Some(50));
}

#[test]
fn describe_reports_members_oldest_first() {
    let mut g = group(3, settings(OrderingMode::Key));
    g.join(C, MemberOptions::default(), 5).unwrap();
    g.join(A, MemberOptions::default(), 9).unwrap();
    let description = g.describe();
    let members: Vec<(MemberId, u64, usize)> = description
        .members
        .iter()
        .map(|m| (m.member, m.joined_at_ms, m.partitions.len()))
        .collect();
    assert_eq!(members, vec![(C, 5, 2), (A, 9, 1)]);
    assert_eq!(description.partitions.len(), 3);
    assert!(description.partitions.iter().all(|p| p.owner().is_some()));
}

#[test]
fn reasons_are_cut_at_a_character_boundary() {
    let long = "é".repeat(MAX_REASON_BYTES);
    let FailureReason::Nacked(cut) = FailureReason::nacked(&long) else {
        unreachable!()
    };
    assert!(cut.len() <= MAX_REASON_BYTES && cut.len() >= MAX_REASON_BYTES - 1);
}

#[test]
fn the_state_can_move_between_threads() {
    fn send_and_sync<T: Send + Sync>() {}
    send_and_sync::<GroupState>();
}

#[test]
fn added_partitions_start_at_their_first_record_and_are_assigned_at_once() {
    let mut g = group(1, settings(OrderingMode::Key));
    assert_eq!(join(&mut g, A), [PartitionId(0)]);
    assert_eq!(join(&mut g, B), []);
    g.take_actions();
    g.add_partitions(3).unwrap();
    assert_eq!(g.partition_count(), 3);
    // The member that had nothing gets new partitions; the change is announced.
    let changes: Vec<AssignmentChange> = g
        .take_actions()
        .into_iter()
        .filter_map(|a| match a {
            Action::AssignmentChanged(c) => Some(c),
            Action::DeadLetter(_) => None,
        })
        .collect();
    let owned: usize = changes.iter().map(|c| c.added.len()).sum();
    assert_eq!(owned, 2, "{changes:?}");
    for p in 1..3 {
        assert_eq!(g.wants(PartitionId(p)).unwrap(), Some(Offset(0)));
        feed(&mut g, p, &[Some("k")]);
    }
    let delivered = g.poll(A, 0, 10).unwrap().len() + g.poll(B, 0, 10).unwrap().len();
    assert_eq!(delivered, 2);
    // A topic never shrinks: a smaller count changes nothing.
    g.add_partitions(2).unwrap();
    assert_eq!(g.partition_count(), 3);
}
