//! Where a topic's partitions live: each partition on `replication_factor` nodes, spread
//! evenly, computed in the state machine from the membership so every node computes the
//! same placement.

use super::types::NodeId;

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
}
