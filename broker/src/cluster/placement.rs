//! Where a topic's partitions live: each partition on `replication_factor` nodes, spread
//! evenly, computed in the state machine from the membership so every node computes the
//! same placement.

use std::collections::BTreeMap;

use super::types::{NodeId, TopicRecord};

/// The default replication factor for a cluster of `nodes` nodes: min(3, nodes).
pub fn default_replication_factor(nodes: usize) -> u32 {
    nodes.min(3) as u32
}

/// The replicas of each of `partitions` partitions over `nodes` (sorted, distinct),
/// `factor` each. Partition `p` of the topic created `seq`-th starts at node
/// `(seq + p) % n` and takes the next `factor` nodes in id order, so first replicas (the
/// preferred leaders) rotate over the nodes within a topic and across topics, and every
/// node holds the same number of replicas, give or take one per topic.
pub fn place(nodes: &[NodeId], partitions: u32, factor: u32, seq: u64) -> Vec<Vec<NodeId>> {
    let n = nodes.len();
    if n == 0 {
        return vec![Vec::new(); partitions as usize];
    }
    let factor = (factor as usize).min(n);
    (0..partitions as u64)
        .map(|p| {
            let start = ((seq + p) % n as u64) as usize;
            (0..factor).map(|i| nodes[(start + i) % n]).collect()
        })
        .collect()
}

/// One partition's replicas after a move: (topic, partition, replicas).
pub type Move = (String, u32, Vec<NodeId>);

/// Where the replicas `node` holds go when it leaves: each partition of more than one
/// replica on `node` gets, in `node`'s place (so the preferred leader's place is kept),
/// the voter of `voters` not holding it already that holds the fewest replicas (ties: the
/// lowest id), counting the moves planned so far; with no such voter the partition keeps
/// its other replicas, if at least two. Refused (the message says why) when a partition
/// would be left with one copy or none: `node` holds the only copy, or one of two and no
/// other node can take it. Every node computes the same plan from the same state.
pub fn replace_node(
    topics: &BTreeMap<String, TopicRecord>,
    voters: &[NodeId],
    node: NodeId,
) -> Result<Vec<Move>, String> {
    let mut load: BTreeMap<NodeId, usize> = voters.iter().map(|v| (*v, 0)).collect();
    for replicas in topics.values().flat_map(|t| &t.replicas) {
        for r in replicas {
            if let Some(count) = load.get_mut(r) {
                *count += 1;
            }
        }
    }
    let mut moves = Vec::new();
    let mut stranded = Vec::new();
    for topic in topics.values() {
        for (partition, replicas) in topic.replicas.iter().enumerate() {
            let Some(at) = replicas.iter().position(|r| *r == node) else {
                continue;
            };
            if replicas.len() < 2 {
                // One copy has no group to carry its records to another node.
                stranded.push(format!("{} partition {partition}", topic.name));
                continue;
            }
            let candidate = load
                .iter()
                .filter(|(v, _)| **v != node && !replicas.contains(v))
                .min_by_key(|(v, count)| (**count, **v))
                .map(|(v, _)| *v);
            let mut after = replicas.clone();
            match candidate {
                Some(to) => {
                    after[at] = to;
                    *load.entry(to).or_default() += 1;
                }
                None if replicas.len() > 2 => {
                    after.remove(at);
                }
                None => {
                    stranded.push(format!("{} partition {partition}", topic.name));
                    continue;
                }
            }
            moves.push((topic.name.clone(), partition as u32, after));
        }
    }
    if !stranded.is_empty() {
        return Err(format!(
            "it holds the only copy, or one of two copies that no other node can take, of {} partition(s) ({}{}): add a node to take its replicas first, or delete those topics",
            stranded.len(),
            stranded
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
            if stranded.len() > 5 { ", ..." } else { "" }
        ));
    }
    Ok(moves)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_are_distinct_and_spread_evenly() {
        let nodes = [1, 2, 3];
        let placed = place(&nodes, 6, 2, 0);
        assert_eq!(placed[0], vec![1, 2]);
        assert_eq!(placed[1], vec![2, 3]);
        assert_eq!(placed[2], vec![3, 1]);
        let mut leaders = [0usize; 4];
        let mut held = [0usize; 4];
        for replicas in &placed {
            assert_eq!(replicas.len(), 2);
            assert_ne!(replicas[0], replicas[1]);
            leaders[replicas[0] as usize] += 1;
            for r in replicas {
                held[*r as usize] += 1;
            }
        }
        assert_eq!(&leaders[1..], &[2, 2, 2]);
        assert_eq!(&held[1..], &[4, 4, 4]);
    }

    #[test]
    fn topics_rotate_their_first_leader() {
        let nodes = [4, 7, 9];
        let firsts: Vec<NodeId> = (0..3).map(|seq| place(&nodes, 1, 3, seq)[0][0]).collect();
        assert_eq!(firsts, vec![4, 7, 9]);
    }

    #[test]
    fn factor_is_capped_by_the_nodes_and_defaults_to_three() {
        assert_eq!(place(&[1, 2], 1, 3, 0), vec![vec![1, 2]]);
        assert_eq!(default_replication_factor(1), 1);
        assert_eq!(default_replication_factor(5), 3);
    }

    fn topic(name: &str, replicas: Vec<Vec<NodeId>>) -> (String, TopicRecord) {
        let record = TopicRecord {
            name: name.into(),
            partitions: replicas.len() as u32,
            replication_factor: replicas[0].len() as u32,
            settings_toml: String::new(),
            replicas,
        };
        (name.into(), record)
    }

    #[test]
    fn a_leaving_node_hands_each_replica_to_the_least_loaded_other_node() {
        // Nodes 1-3 hold three-copy partitions; node 4 just joined, holding none.
        let topics: BTreeMap<_, _> = [topic("t", place(&[1, 2, 3], 3, 3, 0))].into();
        let moves = replace_node(&topics, &[1, 2, 3, 4], 3).unwrap();
        assert_eq!(moves.len(), 3);
        for (_, partition, after) in &moves {
            let before = &topics["t"].replicas[*partition as usize];
            let at = before.iter().position(|r| *r == 3).unwrap();
            assert_eq!(after[at], 4, "node 4 takes node 3's place in {before:?}");
            assert_eq!(after.len(), 3);
        }
    }

    #[test]
    fn moves_spread_over_the_remaining_nodes_and_never_repeat_a_node() {
        // Five nodes, two-copy partitions: node 5's replicas spread, none twice on a node.
        let nodes = [1, 2, 3, 4, 5];
        let topics: BTreeMap<_, _> = [
            topic("a", place(&nodes, 10, 2, 0)),
            topic("b", place(&nodes, 7, 3, 3)),
        ]
        .into();
        let moves = replace_node(&topics, &nodes, 5).unwrap();
        let mut load: BTreeMap<NodeId, usize> = BTreeMap::new();
        let mut after = topics.clone();
        for (name, partition, replicas) in &moves {
            after.get_mut(name).unwrap().replicas[*partition as usize] = replicas.clone();
        }
        for replicas in after.values().flat_map(|t| &t.replicas) {
            let distinct: std::collections::BTreeSet<_> = replicas.iter().collect();
            assert_eq!(distinct.len(), replicas.len(), "{replicas:?}");
            assert!(!replicas.contains(&5));
            for r in replicas {
                *load.entry(*r).or_default() += 1;
            }
        }
        let (min, max) = (load.values().min().unwrap(), load.values().max().unwrap());
        assert!(max - min <= 1, "replicas spread evenly: {load:?}");
    }

    #[test]
    fn a_partition_is_never_left_with_one_copy() {
        let topics: BTreeMap<_, _> = [topic("pair", vec![vec![1, 2]])].into();
        let refused = replace_node(&topics, &[1, 2], 2).unwrap_err();
        assert!(refused.contains("pair partition 0"), "{refused}");
        let single: BTreeMap<_, _> = [topic("one", vec![vec![2]])].into();
        assert!(replace_node(&single, &[1, 2], 2).is_err());
        // Three copies on three nodes: the partition keeps two.
        let three: BTreeMap<_, _> = [topic("t", vec![vec![1, 2, 3]])].into();
        assert_eq!(
            replace_node(&three, &[1, 2, 3], 1).unwrap(),
            vec![("t".into(), 0, vec![2, 3])]
        );
    }
}
