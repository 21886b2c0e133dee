//! The server's request policy, configured once, applies to every RPC of every service,
//! Subscribe's hand-written route included: the methods are taken from the services'
//! descriptors, so an RPC added later is covered without changing this test.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use common::rpc::{RawCodec, method_paths};
use common::*;
use herald_broker::server::{Broker, Policy};
use tonic::Code;
use tonic::transport::Channel;

/// Calls `path` with one empty message and the `x-test-deny` header, as a stream (which
/// every gRPC method accepts on the wire); returns the status it ends with.
async fn call_denied(channel: Channel, path: &str) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("the channel is ready");
    let mut request = tonic::Request::new(futures::stream::iter([bytes::Bytes::new()]));
    request
        .metadata_mut()
        .insert("x-test-deny", "yes".parse().unwrap());
    let path = tonic::codegen::http::uri::PathAndQuery::try_from(path.to_owned()).unwrap();
    match grpc.streaming(request, path, RawCodec).await {
        Err(status) => status,
        Ok(response) => {
            let mut stream = response.into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(_)) => continue,
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
