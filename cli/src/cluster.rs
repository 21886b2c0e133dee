//! Cluster mode's command line: the `serve` flags that make a node of a cluster, and
//! `herald cluster status`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use herald_broker::cluster::ClusterSettings;
use herald_proto::v1;

use crate::commands::{CallError, ClientOpts, connect};

/// `serve` flags for cluster mode. Without them (and without `[cluster]` in the
/// configuration file) the broker is a single node.
#[derive(Args, Debug, Default)]
pub struct ServeClusterArgs {
    /// This node's id in the cluster (at least 1; unique).
    #[arg(long, env = "HERALD_NODE_ID")]
    node_id: Option<u64>,
    /// Where this node listens for the other nodes (the peer port).
    #[arg(long, env = "HERALD_PEER_LISTEN")]
    peer_listen: Option<SocketAddr>,
    /// Every node at the cluster's start, this one included:
    /// `1=CLIENT_ADDR@PEER_ADDR,2=...,3=...`.
    #[arg(long, env = "HERALD_INITIAL_MEMBERS")]
    initial_members: Option<String>,
    /// This node's certificate (PEM) on the peer port, from the cluster CA: mutual TLS
    /// between nodes, with --peer-tls-key and --peer-tls-ca.
    #[arg(long = "peer-tls-cert", env = "HERALD_PEER_TLS_CERT")]
    peer_tls_cert_file: Option<PathBuf>,
    /// The private key (PEM) of --peer-tls-cert.
    #[arg(long = "peer-tls-key", env = "HERALD_PEER_TLS_KEY")]
    peer_tls_key_file: Option<PathBuf>,
    /// The cluster CA (PEM) every node's certificate must chain to.
    #[arg(long = "peer-tls-ca", env = "HERALD_PEER_TLS_CA")]
    peer_tls_ca_file: Option<PathBuf>,
}

impl ServeClusterArgs {
    /// The cluster settings: the file's `[cluster]` table, with each flag given over it.
    pub fn settings(
        &self,
        from_file: Option<ClusterSettings>,
    ) -> anyhow::Result<Option<ClusterSettings>> {
        let any_flag =
            self.node_id.is_some() || self.peer_listen.is_some() || self.initial_members.is_some();
        let any_tls_flag = self.peer_tls_cert_file.is_some()
            || self.peer_tls_key_file.is_some()
            || self.peer_tls_ca_file.is_some();
        let mut settings = match (from_file, any_flag) {
            (None, false) if any_tls_flag => anyhow::bail!(
                "--peer-tls-cert, --peer-tls-key and --peer-tls-ca are for cluster mode: give --node-id, --peer-listen and --initial-members too"
            ),
            (None, false) => return Ok(None),
            (Some(mut settings), _) => {
                if let Some(id) = self.node_id {
                    settings.node_id = id;
                }
                if let Some(addr) = self.peer_listen {
                    settings.peer_listen = addr;
                }
                if let Some(members) = &self.initial_members {
                    settings.initial_members = members.clone();
                }
                settings
            }
            (None, true) => {
                let (Some(node_id), Some(peer_listen), Some(initial_members)) =
                    (self.node_id, self.peer_listen, self.initial_members.clone())
                else {
                    anyhow::bail!(
                        "cluster mode needs --node-id, --peer-listen and --initial-members together"
                    );
                };
                ClusterSettings::new(node_id, peer_listen, initial_members)
            }
        };
        for (flag, setting) in [
            (&self.peer_tls_cert_file, &mut settings.peer_tls_cert_file),
            (&self.peer_tls_key_file, &mut settings.peer_tls_key_file),
            (&self.peer_tls_ca_file, &mut settings.peer_tls_ca_file),
        ] {
            if flag.is_some() {
                setting.clone_from(flag);
            }
        }
        settings.members()?;
        Ok(Some(settings))
    }
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
        }
    })
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
            let _ = writeln!(
                out,
                "  partition {}: leader {}, replicas [{}]",
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
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    format!("{value}\n")
}
