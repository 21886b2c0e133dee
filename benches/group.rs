//! The consumer-group state machine alone, in process: no log, no gRPC, no clock.
//!
//! One member (window 10,000) of a 4-partition group; each step offers the records the
//! machine has room for (the driver's `fill`), polls up to 1,024 deliveries (`deliver`),
//! acks half of what is outstanding, oldest first (a consumer one poll behind), and ticks.
//! Records carry one of 1,000 keys. This is the machine's share of the per-message cost
//! of consuming: end-to-end numbers (`e2e_consume`, `herald-load`) add the log, the
//! protocol and the client, and on a 2-core machine they are noisy, while this one runs on
//! one core and repeats well, so it is the one to compare a change of `broker/src/group/`
//! with.
//!
//! | id | ordering |
//! |---|---|
//! | `group_machine/none_poll_ack` | `none` |
//! | `group_machine/key_poll_ack` | `key` (one message of a key in flight at a time) |
//!
//! Each iteration is 10,000 messages offered, delivered and acked (`Elements(10_000)`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use herald_broker::group::{
    AckId, GroupLimits, GroupSettings, GroupState, KeyHash, MemberId, MemberOptions, OfferedRecord,
    Offset, OrderingMode, PartitionId,
};

const MESSAGES_PER_ITER: u64 = 10_000;
const PARTITIONS: u32 = 4;
const KEYS: u64 = 1000;
const MEMBER: MemberId = MemberId(1);

/// Offers, delivers and acks `messages` messages; returns the time taken.
fn drive(ordering: OrderingMode, messages: u64) -> Duration {
    let settings = GroupSettings {
        ordering,
        ..GroupSettings::default()
    };
    let mut group = GroupState::new(
        settings,
        GroupLimits::default(),
        &vec![Offset(0); PARTITIONS as usize],
    )
    .expect("group");
    let options = MemberOptions {
        max_in_flight_messages: 10_000,
        ..MemberOptions::default()
    };
    group.join(MEMBER, options, 0).expect("join");
    let keys: Vec<KeyHash> = (0..KEYS)
        .map(|k| KeyHash::of(format!("key-{k}").as_bytes()))
        .collect();
    let mut offered = Vec::with_capacity(4096);
    let mut outstanding: VecDeque<AckId> = VecDeque::new();
    let mut acked = 0;
    let now = 1_000;
    let start = Instant::now();
    while acked < messages {
        for p in 0..PARTITIONS {
            let id = PartitionId(p);
            let Some((want, room)) = group.wants_with_room(id).expect("partition") else {
                continue;
            };
            offered.clear();
            offered.extend((want.0..want.0 + room as u64).map(|offset| OfferedRecord {
                offset: Offset(offset),
                key: Some(keys[(offset % KEYS) as usize]),
                size_bytes: 100,
                timestamp_ms: 0,
            }));
            group.offer(id, &offered).expect("offer");
        }
        let deliveries = group.poll(MEMBER, now, 1024).expect("poll");
        let polled = deliveries.len();
        outstanding.extend(deliveries.iter().map(|d| d.ack_id));
        let n = if polled == 0 {
            outstanding.len()
        } else {
            outstanding.len() / 2
        };
        for id in outstanding.drain(..n) {
            group.ack(MEMBER, &id).expect("ack");
            acked += 1;
        }
        group.tick(now);
    }
    start.elapsed()
}

fn group_machine(c: &mut Criterion) {
    let mut g = c.benchmark_group("group_machine");
    g.throughput(Throughput::Elements(MESSAGES_PER_ITER));
    g.bench_function("none_poll_ack", |b| {
        b.iter_custom(|iters| drive(OrderingMode::None, iters * MESSAGES_PER_ITER))
    });
    g.bench_function("key_poll_ack", |b| {
        b.iter_custom(|iters| drive(OrderingMode::Key, iters * MESSAGES_PER_ITER))
    });
    g.finish();
}

criterion_group!(benches, group_machine);
criterion_main!(benches);
