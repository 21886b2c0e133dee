//! The cluster's RPCs on the public service: ClusterStatus, and CreateTopic and
//! AlterTopic in cluster mode (through the metadata group, from any node).

use std::net::SocketAddr;
use std::sync::Arc;

use herald_proto::v1;

use super::service::describe;
use crate::cluster::{Cluster, TopicRecord};
use crate::error::Result;
use crate::registry::Registry;
use crate::topic::{TopicAlter, TopicSettings};

/// Creates a topic through the metadata group. The reply describes this node's copy when
/// it holds the topic's partitions, else the topic as the cluster holds it (every
/// partition empty, as after any create).
pub async fn create_topic(
    cluster: &Arc<Cluster>,
    registry: &Arc<Registry>,
    request: v1::CreateTopicRequest,
    settings: TopicSettings,
) -> Result<v1::CreateTopicResponse> {
    let record = cluster
        .create_topic(
            &request.name,
            request.partitions,
            request.replication_factor.unwrap_or(0),
            &settings,
            registry,
        )
        .await?;
    let topic = match registry.get(&record.name) {
        Ok(topic) => describe(&topic),
        Err(_) => empty_description(&record),
    };
    Ok(v1::CreateTopicResponse { topic: Some(topic) })
}

/// Alters a topic through the metadata group; the reply describes this node's copy when
/// it holds the topic, else the topic as the cluster holds it.
pub async fn alter_topic(
    cluster: &Arc<Cluster>,
    registry: &Arc<Registry>,
    name: &str,
    change: &TopicAlter,
) -> Result<v1::AlterTopicResponse> {
    let record = cluster.alter_topic(name, change, registry).await?;
    let topic = match registry.get(&record.name) {
        Ok(topic) => describe(&topic),
        Err(_) => empty_description(&record),
    };
    Ok(v1::AlterTopicResponse { topic: Some(topic) })
}

fn empty_description(record: &TopicRecord) -> v1::TopicDescription {
    v1::TopicDescription {
        name: record.name.clone(),
        partition_count: record.partitions,
        config: None,
        partitions: (0..record.partitions)
            .map(|partition| v1::PartitionDescription {
                partition,
                ..v1::PartitionDescription::default()
            })
            .collect(),
    }
}

/// This node's view of the cluster; a single node answers as a cluster of one (id 0)
/// holding every local topic.
pub fn status(
    registry: &Registry,
    cluster: Option<&Cluster>,
    client_addr: Option<SocketAddr>,
) -> v1::ClusterStatusResponse {
    let Some(cluster) = cluster else {
        let address = client_addr.unwrap_or(registry.config().listen).to_string();
        return v1::ClusterStatusResponse {
            node_id: 0,
            cluster_mode: false,
            metadata_leader: Some(0),
            metadata_term: 0,
            metadata_applied_index: 0,
            nodes: vec![v1::ClusterNode {
                node_id: 0,
                client_address: address,
                peer_address: String::new(),
                is_self: true,
                last_heard_ms_ago: None,
            }],
            topics: registry
                .list()
                .iter()
                .map(|t| v1::ClusterTopic {
                    name: t.name().to_owned(),
                    replication_factor: 1,
                    partitions: (0..t.partition_count())
                        .map(|partition| v1::ClusterPartition {
                            partition,
                            replicas: vec![0],
                            leader: 0,
                            lag: Vec::new(),
                        })
                        .collect(),
                })
                .collect(),
        };
    };
    let status = cluster.status();
    v1::ClusterStatusResponse {
        node_id: status.node_id,
        cluster_mode: true,
        metadata_leader: status.metadata_leader,
        metadata_term: status.metadata_term,
        metadata_applied_index: status.applied_index,
        nodes: status
            .nodes
            .into_iter()
            .map(|(id, addr, heard)| v1::ClusterNode {
                node_id: id,
                client_address: addr.client,
                peer_address: addr.peer,
                is_self: id == status.node_id,
                last_heard_ms_ago: heard.map(|d| d.as_millis().min(u128::from(u64::MAX)) as u64),
            })
            .collect(),
        topics: status
            .topics
            .iter()
            .map(|t| v1::ClusterTopic {
                name: t.name.clone(),
                replication_factor: t.replication_factor,
                partitions: t
                    .replicas
                    .iter()
                    .enumerate()
                    .map(|(p, replicas)| v1::ClusterPartition {
                        partition: p as u32,
                        replicas: replicas.clone(),
                        leader: leader_of(registry, &t.name, p as u32, replicas),
                        lag: lag_of(registry, &t.name, p as u32),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// The node taking a partition's publishes, as this node knows it (see the proto).
fn leader_of(registry: &Registry, topic: &str, partition: u32, replicas: &[u64]) -> u64 {
    if replicas.len() < 2 {
        return replicas.first().copied().unwrap_or_default();
    }
    registry
        .get(topic)
        .ok()
        .and_then(|t| t.partition(partition).ok())
        .and_then(|p| p.replicated_log().and_then(|log| log.leader()))
        .unwrap_or_default()
}

/// The members after a membership change, as ClusterStatus lists nodes.
pub fn nodes(
    cluster: &Cluster,
    members: std::collections::BTreeMap<crate::cluster::NodeId, crate::cluster::NodeAddr>,
) -> Vec<v1::ClusterNode> {
    members
        .into_iter()
        .map(|(id, addr)| v1::ClusterNode {
            node_id: id,
            client_address: addr.client,
            peer_address: addr.peer,
            is_self: id == cluster.node_id(),
            last_heard_ms_ago: None,
        })
        .collect()
}

/// Each replica's progress, when this node leads the partition's group (see the proto).
fn lag_of(registry: &Registry, topic: &str, partition: u32) -> Vec<v1::ReplicaLag> {
    registry
        .get(topic)
        .ok()
        .and_then(|t| t.partition(partition).ok())
        .and_then(|p| p.replicated_log().and_then(|log| log.progress()))
        .unwrap_or_default()
        .into_iter()
        .map(|(node, entries_behind, voter)| v1::ReplicaLag {
            node,
            entries_behind,
            voter,
        })
        .collect()
}
