//! Balanced, sticky assignment of partitions to members, as a pure function.
//!
//! Balanced: member partition counts differ by at most one. Sticky: a partition keeps its
//! owner unless that owner left or holds more than its share, so a join or a leave moves
//! only the partitions that must move. The state machine applies the result with a
//! handover that waits for in-flight messages (see `state`); this module only decides.

use std::cmp::Reverse;
use std::collections::HashMap;

use super::types::MemberId;

/// The target owner of every partition.
///
/// - `current[p]`: who partition `p` belongs to now, or is being handed to (ids of members
///   that left are ignored);
/// - `members`: the connected members, oldest first (ties go to older members, so the
///   result is deterministic);
/// - `in_flight[p]`: messages in flight in `p`: among a member's partitions, the idle ones
///   move first, since their handover is immediate.
pub(crate) fn balance(
    current: &[Option<MemberId>],
    members: &[MemberId],
    in_flight: &[usize],
) -> Vec<Option<MemberId>> {
    let partitions = current.len();
    if members.is_empty() {
        return vec![None; partitions];
    }
    let rank: HashMap<MemberId, usize> = members.iter().enumerate().map(|(i, &m)| (m, i)).collect();
    let mut target = vec![None; partitions];
    let mut owned: Vec<Vec<usize>> = vec![Vec::new(); members.len()];
    for (p, owner) in current.iter().enumerate() {
        if let Some(&i) = owner.and_then(|m| rank.get(&m)) {
            target[p] = Some(members[i]);
            owned[i].push(p);
        }
    }

    // Everyone gets `base`; the `extra` members that already own the most get one more,
    // which is what keeps the number of moves minimal.
    let base = partitions / members.len();
    let extra = partitions % members.len();
    let mut ranked: Vec<usize> = (0..members.len()).collect();
    ranked.sort_by_key(|&i| (Reverse(owned[i].len()), i));
    let mut quota = vec![base; members.len()];
    for &i in ranked.iter().take(extra) {
        quota[i] += 1;
    }

    for (i, mine) in owned.iter_mut().enumerate() {
        if mine.len() > quota[i] {
            mine.sort_by_key(|&p| (in_flight.get(p).copied().unwrap_or(0), Reverse(p)));
            let excess = mine.len() - quota[i];
            for &p in &mine[..excess] {
                target[p] = None;
            }
            mine.drain(..excess);
        }
    }

    // The quotas add up to the partition count, so every free partition finds a member
    // below its quota.
    let mut next = 0;
    for (p, owner) in target.iter_mut().enumerate() {
        if owner.is_some() {
            continue;
        }
        while next < members.len() && owned[next].len() >= quota[next] {
            next += 1;
        }
        let Some(&member) = members.get(next) else {
            break;
        };
        *owner = Some(member);
        owned[next].push(p);
    }
    target
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ids(n: u64) -> Vec<MemberId> {
        (0..n).map(MemberId).collect()
    }

    fn counts(target: &[Option<MemberId>], members: &[MemberId]) -> Vec<usize> {
        members
            .iter()
            .map(|m| target.iter().filter(|t| **t == Some(*m)).count())
            .collect()
    }

    #[test]
    fn join_moves_only_what_must_move() {
        let members = ids(2);
        let first = balance(&[None; 6], &members, &[0; 6]);
        assert_eq!(counts(&first, &members), vec![3, 3]);
        let members = ids(3);
        let second = balance(&first, &members, &[0; 6]);
        assert_eq!(counts(&second, &members), vec![2, 2, 2]);
        let moved = first.iter().zip(&second).filter(|(a, b)| a != b).count();
        assert_eq!(moved, 2, "one partition from each old member");
    }

    #[test]
    fn leave_moves_only_the_leavers_partitions() {
        let members = ids(3);
        let before = balance(&[None; 7], &members, &[0; 7]);
        let remaining = vec![MemberId(0), MemberId(2)];
        let after = balance(&before, &remaining, &[0; 7]);
        assert_eq!(counts(&after, &remaining).iter().sum::<usize>(), 7);
        for (b, a) in before.iter().zip(&after) {
            if *b != Some(MemberId(1)) {
                assert_eq!(b, a, "a partition of a remaining member moved");
            }
        }
    }

    #[test]
    fn idle_partitions_move_first() {
        let members = ids(1);
        let before = balance(&[None; 4], &members, &[0; 4]);
        let members = ids(2);
        let after = balance(&before, &members, &[5, 0, 3, 7]);
        // Member 0 keeps two: it gives up the two with the fewest in flight (1 and 2).
        assert_eq!(after[1], Some(MemberId(1)));
        assert_eq!(after[2], Some(MemberId(1)));
    }

    proptest! {
        /// Any starting point ends balanced, fully assigned, and with the fewest moves:
        /// a partition moves only when its owner left or holds more than its quota.
        #[test]
        fn balanced_and_minimal(
            owners in proptest::collection::vec(proptest::option::of(0u64..6), 1..40),
            member_count in 1u64..6,
        ) {
            let members = ids(member_count);
            let current: Vec<Option<MemberId>> = owners.iter().map(|o| o.map(MemberId)).collect();
            let target = balance(&current, &members, &vec![0; current.len()]);
            let c = counts(&target, &members);
            prop_assert_eq!(c.iter().sum::<usize>(), current.len());
            prop_assert!(c.iter().max().unwrap() - c.iter().min().unwrap() <= 1);
            // Minimal moves: the members that keep more than `base` are the biggest owners.
            let base = current.len() / members.len();
            let extra = current.len() % members.len();
            let mut held: Vec<usize> = counts(&current, &members);
            held.sort_unstable_by(|a, b| b.cmp(a));
            let must_move: usize = held
                .iter()
                .enumerate()
                .map(|(rank, &h)| h.saturating_sub(base + usize::from(rank < extra)))
                .sum();
            let kept_members_moved = current
                .iter()
                .zip(&target)
                .filter(|(c, t)| c.is_some_and(|m| m.0 < member_count) && c != t)
                .count();
            prop_assert_eq!(kept_members_moved, must_move);
        }
    }
}
