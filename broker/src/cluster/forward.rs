//! Forwarding of client requests: in cluster mode any node answers any Publish or Fetch.
//! The node a client calls authenticates and authorizes the request, picks the partition
//! (a key's partition is the same on every node) and, when another node serves that
//! partition, sends the request on over the peer port and passes the answer back
//! unchanged. The serving node handles it as its own, without a second authorization (the
//! peer port is only for nodes), and never forwards it again: if it does not serve the
//! partition either (the two nodes' metadata disagree for a moment), it refuses with
//! FAILED_PRECONDITION, so a request can never circle between nodes.

use std::pin::Pin;
use std::sync::{Arc, OnceLock, Weak};

use dashmap::DashMap;
use futures::{Stream, StreamExt};
use herald_proto::peer::peer_client::PeerClient;
use herald_proto::peer::{ForwardedFetch, ForwardedGroupCall, ForwardedPublish, GroupCallReply};
use herald_proto::v1;
use tonic::Status;
use tonic::transport::Channel;

use super::network::peer_client;
use super::peer_tls::PeerTls;
use super::types::{NodeAddr, NodeId};
use crate::error::BrokerError;

/// A stream of Fetch responses, as the Fetch RPC returns it.
pub type FetchStream = Pin<Box<dyn Stream<Item = Result<v1::FetchResponse, Status>> + Send>>;
/// A stream of Subscribe responses, as the Subscribe RPC returns it.
pub type SubscribeStream =
    Pin<Box<dyn Stream<Item = Result<v1::SubscribeResponse, Status>> + Send>>;
/// The requests of a Subscribe stream, as a node sends them on.
pub type SubscribeRequests = tokio_stream::wrappers::ReceiverStream<v1::SubscribeRequest>;

/// Request metadata of a forwarded Subscribe: the node ids and the metadata index that the
/// other envelopes carry as fields.
pub const PEER_TO: &str = "herald-peer-to";
pub const PEER_FROM: &str = "herald-peer-from";
pub const PEER_APPLIED: &str = "herald-peer-applied";

/// What a node does with a client request another node forwarded to it: the broker's own
/// handling of the request, minus the caller's authorization (done by the node the client
/// called) and minus forwarding.
#[tonic::async_trait]
pub trait ForwardedRequests: Send + Sync + 'static {
    /// Appends a forwarded publish (its partition is set) and answers once it is committed.
    async fn publish(&self, request: v1::PublishRequest) -> Result<v1::PublishResponse, Status>;
    /// Serves a forwarded Fetch.
    async fn fetch(&self, request: v1::FetchRequest) -> Result<FetchStream, Status>;
    /// Serves a member's forwarded Subscribe stream, as the group's coordinator.
    async fn subscribe(
        &self,
        requests: tonic::Streaming<v1::SubscribeRequest>,
    ) -> Result<SubscribeStream, Status>;
    /// Serves a forwarded group admin call, as the group's coordinator.
    async fn group_call(&self, call: ForwardedGroupCall) -> Result<GroupCallReply, Status>;
}

/// The broker's handling of forwarded requests, registered once the gRPC service exists
/// (after the cluster has started). Held weakly: the service holds the cluster, and the
/// cluster must not keep the service alive.
pub type LocalService = OnceLock<Weak<dyn ForwardedRequests>>;

/// Cached connections to other nodes' peer ports for forwarding (client requests and
/// metadata changes): one HTTP/2 connection per node carries every forwarded request,
/// instead of a handshake per request.
pub struct Forwarder {
    clients: DashMap<NodeId, (String, PeerClient<Channel>)>,
    /// Largest message either way: a whole publish batch or Fetch response.
    message_max: usize,
    /// Peer TLS, when the cluster has it: forwarded requests travel like Raft's.
    tls: Option<Arc<PeerTls>>,
}

impl Forwarder {
    pub fn new(message_max: usize, tls: Option<Arc<PeerTls>>) -> Forwarder {
        Forwarder {
            clients: DashMap::new(),
            message_max,
            tls,
        }
    }

    /// The connection to `node` at `addr`, made on first use and remade when the node's
    /// peer address changes.
    pub(crate) fn client(
        &self,
        node: NodeId,
        addr: &NodeAddr,
    ) -> Result<PeerClient<Channel>, BrokerError> {
        if let Some(entry) = self.clients.get(&node)
            && entry.0 == addr.peer
        {
            return Ok(entry.1.clone());
        }
        let client = peer_client(&addr.peer, self.tls.as_deref())
            .map_err(|e| unreachable_node(node, addr, &e))?
            .max_decoding_message_size(self.message_max)
            .max_encoding_message_size(self.message_max);
        self.clients
            .insert(node, (addr.peer.clone(), client.clone()));
        Ok(client)
    }

    /// Sends a publish to `node`, which serves its partition, and returns its answer.
    pub async fn publish(
        &self,
        from: NodeId,
        metadata_applied: u64,
        node: NodeId,
        addr: &NodeAddr,
        request: v1::PublishRequest,
    ) -> Result<v1::PublishResponse, BrokerError> {
        let mut client = self.client(node, addr)?;
        let forwarded = ForwardedPublish {
            to: node,
            from,
            request: Some(request),
            metadata_applied,
        };
        client
            .publish(forwarded)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| answer_of(node, addr, status))
    }

    /// Opens a Fetch on `node`, which serves its partition; its responses (and the status
    /// that ends them) pass through as they come.
    pub async fn fetch(
        &self,
        from: NodeId,
        metadata_applied: u64,
        node: NodeId,
        addr: &NodeAddr,
        request: v1::FetchRequest,
    ) -> Result<FetchStream, BrokerError> {
        let mut client = self.client(node, addr)?;
        let forwarded = ForwardedFetch {
            to: node,
            from,
            request: Some(request),
            metadata_applied,
        };
        let stream = client
            .fetch(forwarded)
            .await
            .map_err(|status| answer_of(node, addr, status))?
            .into_inner();
        Ok(relayed(node, addr, stream))
    }
}

impl Forwarder {
    /// Opens a member's Subscribe stream on `node`, which coordinates its group; the
    /// responses (and the status that ends them) pass through as they come.
    pub async fn subscribe(
        &self,
        (from, metadata_applied): (NodeId, u64),
        node: NodeId,
        addr: &NodeAddr,
        requests: SubscribeRequests,
    ) -> Result<SubscribeStream, BrokerError> {
        let mut client = self.client(node, addr)?;
        let request = addressed(tonic::Request::new(requests), node, from, metadata_applied);
        let stream = client
            .subscribe(request)
            .await
            .map_err(|status| answer_of(node, addr, status))?
            .into_inner();
        Ok(relayed(node, addr, stream))
    }

    /// Sends a group admin call to `node`, which coordinates the group.
    pub async fn group_call(
        &self,
        node: NodeId,
        addr: &NodeAddr,
        call: ForwardedGroupCall,
    ) -> Result<GroupCallReply, BrokerError> {
        let mut client = self.client(node, addr)?;
        client
            .group_call(call)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| answer_of(node, addr, status))
    }
}

/// A stream from `node` as this node passes it on: its items as they come, and the status
/// that ends it as [`answer_of`] makes it.
fn relayed<T: Send + 'static>(
    node: NodeId,
    addr: &NodeAddr,
    stream: tonic::Streaming<T>,
) -> Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>> {
    let addr = addr.clone();
    Box::pin(stream.map(move |item| item.map_err(|status| answer_of(node, &addr, status).into())))
}

/// `request` with the envelope of a forwarded Subscribe in its metadata.
fn addressed<T>(
    mut request: tonic::Request<T>,
    to: NodeId,
    from: NodeId,
    metadata_applied: u64,
) -> tonic::Request<T> {
    let metadata = request.metadata_mut();
    metadata.insert(PEER_TO, to.into());
    metadata.insert(PEER_FROM, from.into());
    metadata.insert(PEER_APPLIED, metadata_applied.into());
    request
}

/// The serving node's answer as the client gets it: its own status and message, except
/// UNAVAILABLE, which also says which node was tried (it is what a transport failure
/// looks like too, and then the message comes from the connection, not the node). A
/// status made by this side's transport (a connection reset or closed mid-call:
/// `Unknown` "transport error", `Cancelled` "operation was canceled"...) has the
/// transport's error as its source, which a node's own answers never carry: it is
/// UNAVAILABLE too, since the node may or may not have taken the request, and the caller
/// retries, as after a timeout.
fn answer_of(node: NodeId, addr: &NodeAddr, status: Status) -> BrokerError {
    use std::error::Error;
    let from_transport = status.source().is_some();
    if status.code() == tonic::Code::Unavailable || from_transport {
        return unreachable_node(node, addr, status.message());
    }
    BrokerError::Forwarded {
        node,
        code: status.code() as i32,
        message: status.message().to_owned(),
    }
}

fn unreachable_node(node: NodeId, addr: &NodeAddr, problem: &str) -> BrokerError {
    BrokerError::ClusterUnavailable(format!(
        "node {node} (peer address {}), which serves the partition, is unavailable: {problem}",
        addr.peer
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> NodeAddr {
        NodeAddr {
            client: "127.0.0.1:1".into(),
            peer: "127.0.0.1:2".into(),
        }
    }

    #[test]
    fn a_transport_failure_is_unavailable_and_a_nodes_answer_passes_through() {
        let reset = Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset",
        )));
        assert_eq!(reset.code(), tonic::Code::Unknown);
        assert!(matches!(
            answer_of(2, &addr(), reset),
            BrokerError::ClusterUnavailable(_)
        ));

        // The same code as a node's own answer (decoded from its response) passes through.
        let answered = Status::unknown("the node's own words");
        match answer_of(2, &addr(), answered) {
            BrokerError::Forwarded { code, message, .. } => {
                assert_eq!(code, tonic::Code::Unknown as i32);
                assert_eq!(message, "the node's own words");
            }
            other => panic!("{other:?}"),
        }
    }
}
