//! The server's request policy, configured once, applies to every RPC of every service,
//! Subscribe's hand-written route included: the methods are taken from the services'
//! descriptors, so an RPC added later is covered without changing this test.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use common::*;
use herald_broker::server::{Broker, Policy};
use prost::Message;
use tonic::Code;
use tonic::transport::Channel;

/// The parts of `google.protobuf.FileDescriptorSet` this test reads.
#[derive(Clone, PartialEq, Message)]
struct FileDescriptorSet {
    #[prost(message, repeated, tag = "1")]
    file: Vec<FileDescriptorProto>,
}

#[derive(Clone, PartialEq, Message)]
struct FileDescriptorProto {
    #[prost(string, optional, tag = "2")]
    package: Option<String>,
    #[prost(message, repeated, tag = "6")]
    service: Vec<ServiceDescriptorProto>,
}

#[derive(Clone, PartialEq, Message)]
struct ServiceDescriptorProto {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(message, repeated, tag = "2")]
    method: Vec<MethodDescriptorProto>,
}

#[derive(Clone, PartialEq, Message)]
struct MethodDescriptorProto {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
}

/// `/package.Service/Method` of every method in an encoded descriptor set.
fn method_paths(encoded: &[u8]) -> Vec<String> {
    let set = FileDescriptorSet::decode(encoded).expect("a descriptor set");
    let mut paths = Vec::new();
    for file in set.file {
        let package = file.package.unwrap_or_default();
        for service in file.service {
            let service_name = service.name.unwrap_or_default();
            for method in service.method {
                paths.push(format!(
                    "/{package}.{service_name}/{}",
                    method.name.unwrap_or_default()
                ));
            }
        }
    }
    paths
}

/// Encodes every message as empty and reads any reply as `()`: enough to call a method
/// by its path alone.
struct EmptyCodec;

impl tonic::codec::Codec for EmptyCodec {
    type Encode = ();
    type Decode = ();
    type Encoder = EmptyCodec;
    type Decoder = EmptyCodec;

    fn encoder(&mut self) -> EmptyCodec {
        EmptyCodec
    }

    fn decoder(&mut self) -> EmptyCodec {
        EmptyCodec
    }
}

impl tonic::codec::Encoder for EmptyCodec {
    type Item = ();
    type Error = tonic::Status;

    fn encode(&mut self, (): (), _: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), Self::Error> {
        Ok(())
    }
}

impl tonic::codec::Decoder for EmptyCodec {
    type Item = ();
    type Error = tonic::Status;

    fn decode(&mut self, buf: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<()>, Self::Error> {
        use bytes::Buf;
        buf.advance(buf.remaining());
        Ok(Some(()))
    }
}

/// Calls `path` with one empty message and the `x-test-deny` header, as a stream (which
/// every gRPC method accepts on the wire); returns the status it ends with.
async fn call_denied(channel: Channel, path: &str) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("the channel is ready");
    let mut request = tonic::Request::new(futures::stream::iter([()]));
    request
        .metadata_mut()
        .insert("x-test-deny", "yes".parse().unwrap());
    let path = tonic::codegen::http::uri::PathAndQuery::try_from(path.to_owned()).unwrap();
    match grpc.streaming(request, path, EmptyCodec).await {
        Err(status) => status,
        Ok(response) => {
            let mut stream = response.into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(())) => continue,
                    Ok(None) => return tonic::Status::ok("ended"),
                    Err(status) => return status,
                }
            }
        }
    }
}

#[tokio::test]
async fn a_policy_configured_once_applies_to_every_rpc_including_subscribe() {
    let dir = tempfile::tempdir().unwrap();
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let seen_by_check = seen.clone();
    let policy = Policy::default().with_check(move |path, request| {
        seen_by_check.lock().unwrap().insert(path.to_owned());
        match request.metadata().get("x-test-deny") {
            Some(_) => Err(tonic::Status::permission_denied(format!(
                "denied by the test policy: {path}"
            ))),
            None => Ok(()),
        }
    });
    record_panics();
    let broker = Broker::start_with_policy(test_config(dir.path()), false, policy)
        .await
        .unwrap();
    let channel = Channel::from_shared(format!("http://{}", broker.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();

    let mut paths = method_paths(herald_proto::FILE_DESCRIPTOR_SET);
    assert!(
        paths.contains(&"/herald.v1.Herald/Subscribe".to_owned()),
        "{paths:?}"
    );
    assert!(paths.len() >= 16, "every Herald RPC: {paths:?}");
    paths.extend(method_paths(tonic_health::pb::FILE_DESCRIPTOR_SET));
    paths.push("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo".to_owned());
    for path in &paths {
        let status = call_denied(channel.clone(), path).await;
        assert_eq!(status.code(), Code::PermissionDenied, "{path}: {status:?}");
        assert!(
            status.message().contains(path.as_str()),
            "{path}: {status:?}"
        );
    }
    let seen = seen.lock().unwrap().clone();
    for path in &paths {
        assert!(seen.contains(path), "{path} skipped the policy");
    }

    // Without the header, requests pass through the same policy and are served.
    let mut c = herald_proto::HeraldClient::new(channel);
    create_topic(&mut c, "t", 1).await;
    publish(&mut c, "t", None, vec![record(None, "v")])
        .await
        .unwrap();
    let mut m = subscribe(&mut c, join("t", "g", None)).await.unwrap();
    let (got, _) = m.deliveries(1, std::time::Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    drop(m);
    drop(c);
    stop(broker).await;
}
