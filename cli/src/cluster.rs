//! Cluster mode's command line: the `serve` flags that make a node of a cluster, and
//! `herald cluster status`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use herald_proto::v1;

use crate::commands::{CallError, ClientOpts, connect};

/// `serve` flags for cluster mode: the `[cluster]` table of the configuration (also
/// `HERALD_CLUSTER_<KEY>`; see `config::layered`). Without any of them the broker is a
/// single node.
#[derive(Args, Debug, Default, serde::Serialize)]
pub struct ServeClusterArgs {
    /// This node's id in the cluster (at least 1; unique).
    #[arg(long)]
    node_id: Option<u64>,
    /// Where this node listens for the other nodes (the peer port).
    #[arg(long)]
    peer_listen: Option<SocketAddr>,
    /// Every node at the cluster's start, this one included:
    /// `1=CLIENT_ADDR@PEER_ADDR,2=...,3=...`.
    #[arg(long)]
    initial_members: Option<String>,
    /// This node's certificate (PEM) on the peer port, from the cluster CA: mutual TLS
    /// between nodes, with --peer-tls-key and --peer-tls-ca.
    #[arg(long = "peer-tls-cert")]
    peer_tls_cert_file: Option<PathBuf>,
    /// The private key (PEM) of --peer-tls-cert.
    #[arg(long = "peer-tls-key")]
    peer_tls_key_file: Option<PathBuf>,
    /// The cluster CA (PEM) every node's certificate must chain to.
    #[arg(long = "peer-tls-ca")]
    peer_tls_ca_file: Option<PathBuf>,
}

/// `herald cluster ...`.
#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Nodes with their addresses and when this node last heard from each, the metadata
    /// leader and term, and every topic's partitions with their replicas.
    Status {
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Adds a started node to the cluster (it catches up, then votes). Start it first with
    /// its own --node-id, --listen, --peer-listen and --initial-members listing at least
    /// itself.
    AddNode {
        /// The new node's id.
        node_id: u64,
        /// Where clients reach it (its --listen address).
        #[arg(long)]
        client: String,
        /// Where the other nodes reach it (its --peer-listen address).
        #[arg(long)]
        peer: String,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Removes a node from the cluster (refused while it holds the only copy of a
    /// partition's records). Stop the node afterwards.
    RemoveNode {
        /// The id of the node to remove.
        node_id: u64,
        #[command(flatten)]
        opts: ClientOpts,
    },
}

pub fn run(command: ClusterCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match command {
            ClusterCommand::Status { opts } => {
                let client = connect(&opts).await?;
                let status = client
                    .raw()
                    .cluster_status(v1::ClusterStatusRequest {})
                    .await
                    .map_err(|status| CallError(herald_client::Error::from(status)))?
                    .into_inner();
                print!(
                    "{}",
                    if opts.json {
                        json(&status)
                    } else {
                        text(&status)
                    }
                );
                Ok(())
            }
            ClusterCommand::AddNode {
                node_id,
                client,
                peer,
                opts,
            } => {
                let connected = connect(&opts).await?;
                let reply = connected
                    .raw()
                    .add_node(v1::AddNodeRequest {
                        node_id,
                        client_address: client,
                        peer_address: peer,
                    })
                    .await
                    .map_err(|status| CallError(herald_client::Error::from(status)))?
                    .into_inner();
                print!("{}", members(&reply.nodes, opts.json));
                Ok(())
            }
            ClusterCommand::RemoveNode { node_id, opts } => {
                let connected = connect(&opts).await?;
                let reply = connected
                    .raw()
                    .remove_node(v1::RemoveNodeRequest { node_id })
                    .await
                    .map_err(|status| CallError(herald_client::Error::from(status)))?
                    .into_inner();
                print!("{}", members(&reply.nodes, opts.json));
                Ok(())
            }
        }
    })
}

/// The members after a change: one line per node, or a JSON array.
fn members(nodes: &[v1::ClusterNode], json: bool) -> String {
    if json {
        let list: Vec<serde_json::Value> = nodes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "node_id": n.node_id,
                    "client_address": n.client_address,
                    "peer_address": n.peer_address,
                })
            })
            .collect();
        return format!("{}\n", serde_json::Value::Array(list));
    }
    let mut out = String::from("NODE  CLIENT                 PEER\n");
    for n in nodes {
        let _ = writeln!(
            out,
            "{:<5} {:<22} {}",
            n.node_id, n.client_address, n.peer_address
        );
    }
    out
}

fn text(status: &v1::ClusterStatusResponse) -> String {
    let mut out = String::new();
    let leader = status
        .metadata_leader
        .map_or_else(|| "none".to_owned(), |l| l.to_string());
    let mode = if status.cluster_mode {
        "cluster"
    } else {
        "single node"
    };
    let _ = writeln!(
        out,
        "node {} ({mode}): metadata leader {leader}, term {}, applied index {}",
        status.node_id, status.metadata_term, status.metadata_applied_index
    );
    let _ = writeln!(
        out,
        "NODE  CLIENT                 PEER                   LAST HEARD"
    );
    for node in &status.nodes {
        let heard = match (node.is_self, node.last_heard_ms_ago) {
            (true, _) => "(this node)".to_owned(),
            (false, Some(ms)) => format!("{ms} ms ago"),
            (false, None) => "never".to_owned(),
        };
        let _ = writeln!(
            out,
            "{:<5} {:<22} {:<22} {heard}",
            node.node_id, node.client_address, node.peer_address
        );
    }
    for topic in &status.topics {
        let _ = writeln!(
            out,
            "topic {} (replication factor {})",
            topic.name, topic.replication_factor
        );
        for p in &topic.partitions {
            let replicas: Vec<String> = p.replicas.iter().map(u64::to_string).collect();
            // Known only on the partition's leader: "behind 1=0 2=0 4=35 (learner)".
            let lag: String = p
                .lag
                .iter()
                .map(|l| {
                    let learner = if l.voter { "" } else { " (learner)" };
                    format!(" {}={}{learner}", l.node, l.entries_behind)
                })
                .collect();
            let behind = if lag.is_empty() {
                String::new()
            } else {
                format!(", entries behind:{lag}")
            };
            let _ = writeln!(
                out,
                "  partition {}: leader {}, replicas [{}]{behind}",
                p.partition,
                p.leader,
                replicas.join(", ")
            );
        }
    }
    out
}

fn json(status: &v1::ClusterStatusResponse) -> String {
    let value = serde_json::json!({
        "node_id": status.node_id,
        "cluster_mode": status.cluster_mode,
        "metadata_leader": status.metadata_leader,
        "metadata_term": status.metadata_term,
        "metadata_applied_index": status.metadata_applied_index,
        "nodes": status.nodes.iter().map(|n| serde_json::json!({
            "node_id": n.node_id,
            "client_address": n.client_address,
            "peer_address": n.peer_address,
            "is_self": n.is_self,
            "last_heard_ms_ago": n.last_heard_ms_ago,
        })).collect::<Vec<_>>(),
        "topics": status.topics.iter().map(|t| serde_json::json!({
            "name": t.name,
            "replication_factor": t.replication_factor,
            "partitions": t.partitions.iter().map(|p| serde_json::json!({
                "partition": p.partition,
                "leader": p.leader,
                "replicas": p.replicas,
                "lag": p.lag.iter().map(|l| serde_json::json!({
                    "node": l.node,
                    "entries_behind": l.entries_behind,
                    "voter": l.voter,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    format!("{value}\n")
}
