//! Every RPC of every service goes through the same authentication and authorisation:
//! the methods are taken from the services' descriptors, so an RPC added to the proto
//! fails this test until it is given a request here (and a check in its handler). Each
//! Herald RPC is called, with a request naming real resources, by a caller with no token
//! (UNAUTHENTICATED), a wrong token (UNAUTHENTICATED), a known principal without rights
//! (PERMISSION_DENIED; the two list RPCs answer it with an empty list instead) and the
//! superuser (neither). Health stays open; reflection needs `describe` on the cluster.

mod common;

use bytes::Bytes;
use common::rpc::{RawCodec, method_paths};
use common::*;
use herald_broker::auth::{TokenEntry, token};
use herald_proto::v1;
use prost::Message;
use tonic::Code;
use tonic::transport::Channel;

const ADMIN: &str = "admin-secret-token";
const NOBODY: &str = "nobody-secret-token";
const TOPIC: &str = "orders";
const GROUP: &str = "billing";

fn records() -> Option<v1::publish_request::Payload> {
    Some(v1::publish_request::Payload::Records(v1::Records {
        records: vec![record(Some("k"), "v")],
    }))
}

/// The request each Herald RPC is called with, naming the test's topic and group.
fn request_for(method: &str) -> Vec<u8> {
    let earliest = position(v1::position::Kind::Earliest(v1::Earliest {}));
    match method {
        "CreateTopic" => v1::CreateTopicRequest {
            name: "orders.new".into(),
            partitions: 1,
            ..Default::default()
        }
        .encode_to_vec(),
        "DeleteTopic" => v1::DeleteTopicRequest { name: TOPIC.into() }.encode_to_vec(),
        "AlterTopic" => v1::AlterTopicRequest {
            name: TOPIC.into(),
            retention_ms: Some(60_000),
            ..Default::default()
        }
        .encode_to_vec(),
        "ListTopics" => v1::ListTopicsRequest {}.encode_to_vec(),
        "DescribeTopic" => v1::DescribeTopicRequest { name: TOPIC.into() }.encode_to_vec(),
        "Publish" => v1::PublishRequest {
            topic: TOPIC.into(),
            payload: records(),
            ..Default::default()
        }
        .encode_to_vec(),
        "InitProducer" => v1::InitProducerRequest::default().encode_to_vec(),
        "PublishStream" => v1::PublishStreamRequest {
            sequence: 1,
            publish: Some(v1::PublishRequest {
                topic: TOPIC.into(),
                payload: records(),
                ..Default::default()
            }),
        }
        .encode_to_vec(),
        "Fetch" => {
            fetch_request(TOPIC, 0, v1::position::Kind::Earliest(v1::Earliest {})).encode_to_vec()
        }
        "CreateGroup" => v1::CreateGroupRequest {
            topic: TOPIC.into(),
            group: "another".into(),
            ..Default::default()
        }
        .encode_to_vec(),
        "UpdateGroup" => v1::UpdateGroupRequest {
            topic: TOPIC.into(),
            group: GROUP.into(),
            ..Default::default()
        }
        .encode_to_vec(),
        "DeleteGroup" => v1::DeleteGroupRequest {
            topic: TOPIC.into(),
            group: GROUP.into(),
        }
        .encode_to_vec(),
        "DescribeGroup" => v1::DescribeGroupRequest {
            topic: TOPIC.into(),
            group: GROUP.into(),
        }
        .encode_to_vec(),
        "ListGroups" => v1::ListGroupsRequest::default().encode_to_vec(),
        "Seek" => v1::SeekRequest {
            topic: TOPIC.into(),
            group: GROUP.into(),
            position: earliest,
            ..Default::default()
        }
        .encode_to_vec(),
        "ClusterStatus" => v1::ClusterStatusRequest {}.encode_to_vec(),
        "AddNode" => v1::AddNodeRequest {
            node_id: 9,
            client_address: "127.0.0.1:1".into(),
            peer_address: "127.0.0.1:2".into(),
        }
        .encode_to_vec(),
        "RemoveNode" => v1::RemoveNodeRequest { node_id: 9 }.encode_to_vec(),
        "ListPending" => v1::ListPendingRequest {
            topic: TOPIC.into(),
            group: GROUP.into(),
            ..Default::default()
        }
        .encode_to_vec(),
        "Redrive" => v1::RedriveRequest {
            topic: TOPIC.into(),
            group: GROUP.into(),
            max_messages: 1,
        }
        .encode_to_vec(),
        "Subscribe" => v1::SubscribeRequest {
            request: Some(v1::subscribe_request::Request::Join(join(
                TOPIC, GROUP, None,
            ))),
        }
        .encode_to_vec(),
        other => panic!(
            "no request for the RPC {other}: add one here, and make its handler authorise it"
        ),
    }
}

/// What a call came to: its status, and the responses it got before it ended.
struct Outcome {
    status: tonic::Status,
    responses: Vec<Bytes>,
}

/// Calls `path` with `message` (as a one-message stream, which every gRPC method accepts
/// on the wire) and `token` as bearer token, reading the responses until the stream ends
/// or for a second (Subscribe does not end by itself).
async fn call(channel: Channel, path: &str, message: Vec<u8>, token: Option<&str>) -> Outcome {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("the channel is ready");
    // A client-streaming call's stream stays open after its message, as a real client's
    // would; a unary call's request ends with its message (the server waits for the end).
    let streaming_in = path.ends_with("/PublishStream")
        || path.ends_with("/Subscribe")
        || path.contains("reflection");
    let first = futures::stream::iter([Bytes::from(message)]);
    // Ends when this call returns: a stream left open would hold the broker's graceful
    // shutdown (reflection streams end only when their client's do).
    let (_end, ended) = tokio::sync::oneshot::channel::<()>();
    let messages: std::pin::Pin<Box<dyn futures::Stream<Item = Bytes> + Send>> = if streaming_in {
        let rest = futures::stream::once(ended).filter_map(|_| async { None::<Bytes> });
        Box::pin(first.chain(rest))
    } else {
        Box::pin(first)
    };
    let mut request = tonic::Request::new(messages);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let path = tonic::codegen::http::uri::PathAndQuery::try_from(path.to_owned()).unwrap();
    let mut responses = Vec::new();
    let answered = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        grpc.streaming(request, path, RawCodec),
    );
    let status = match answered.await.expect("the call is answered within 10 s") {
        Err(status) => status,
        Ok(response) => {
            let mut stream = response.into_inner();
            let until = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
            loop {
                match tokio::time::timeout_at(until, stream.message()).await {
                    Err(_) => break tonic::Status::ok("still open"),
                    Ok(Ok(Some(bytes))) => responses.push(bytes),
                    Ok(Ok(None)) => break tonic::Status::ok("ended"),
                    Ok(Err(status)) => break status,
                }
            }
        }
    };
    Outcome { status, responses }
}

use futures::StreamExt;

/// The code a PublishStream outcome carried, if it carried an error.
fn stream_error_code(outcome: &Outcome) -> Option<Code> {
    outcome.responses.iter().find_map(|bytes| {
        let response = v1::PublishStreamResponse::decode(bytes.clone()).ok()?;
        match response.outcome? {
            v1::publish_stream_response::Outcome::Error(e) => Some(Code::from(e.code)),
            v1::publish_stream_response::Outcome::Published(_) => None,
        }
    })
}

/// The status that tells how a call was refused: a PublishStream publish is refused in
/// its outcome, every other RPC in its status.
fn refusal(method: &str, outcome: &Outcome) -> Code {
    if method == "PublishStream" && outcome.status.code() == Code::Ok {
        return stream_error_code(outcome).unwrap_or(Code::Ok);
    }
    outcome.status.code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_refuses_unauthenticated_and_unauthorised_callers() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&dir.path().join("data"));
    let acl = dir.path().join("acl.toml");
    std::fs::write(
        &acl,
        // "nobody" has rules, but on other resources only (and no publish anywhere,
        // which InitProducer asks for).
        "superusers = [\"admin\"]\n\
         [[rule]]\nprincipal = \"nobody\"\noperations = [\"describe\", \"fetch\", \"consume\"]\nresource = \"topic\"\nname = \"elsewhere\"\n\
         [[rule]]\nprincipal = \"nobody\"\noperations = [\"all\"]\nresource = \"group\"\nname = \"elsewhere\"\n",
    )
    .unwrap();
    config.acl_file = Some(acl);
    config.tokens = [("admin", ADMIN), ("nobody", NOBODY)]
        .into_iter()
        .map(|(principal, secret)| TokenEntry {
            principal: principal.into(),
            hash: token::hash(secret),
        })
        .collect();
    let broker = start(config).await;
    let channel = Channel::from_shared(format!("http://{}", broker.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();

    // The superuser sets up what the requests name: the topic, its group with a
    // dead-letter topic.
    let admin = herald_client::Client::builder(format!("http://{}", broker.addr))
        .token(ADMIN)
        .connect()
        .await
        .unwrap();
    admin
        .admin()
        .create_topic(TOPIC, 1, Default::default())
        .await
        .unwrap();
    admin
        .admin()
        .create_topic("orders.dlq", 1, Default::default())
        .await
        .unwrap();
    let settings = herald_client::GroupSettings {
        dead_letter_topic: Some("orders.dlq".into()),
        ..Default::default()
    };
    admin
        .admin()
        .create_group(TOPIC, GROUP, settings, herald_client::Position::Earliest)
        .await
        .unwrap();

    let mut herald_paths = Vec::new();
    for path in method_paths(herald_proto::FILE_DESCRIPTOR_SET) {
        let method = path.rsplit('/').next().unwrap().to_owned();
        herald_paths.push(method.clone());
        let message = request_for(&method);
        for token in [None, Some("wrong-token")] {
            let outcome = call(channel.clone(), &path, message.clone(), token).await;
            assert_eq!(
                outcome.status.code(),
                Code::Unauthenticated,
                "{path} with token {token:?}: {:?}",
                outcome.status
            );
        }
        let outcome = call(channel.clone(), &path, message.clone(), Some(NOBODY)).await;
        if method == "ListTopics" || method == "ListGroups" {
            // Lists answer an unauthorised caller with nothing it may not see.
            assert_eq!(
                outcome.status.code(),
                Code::Ok,
                "{path}: {:?}",
                outcome.status
            );
            let empty = match method.as_str() {
                "ListTopics" => v1::ListTopicsResponse::decode(outcome.responses[0].clone())
                    .unwrap()
                    .topics
                    .is_empty(),
                _ => v1::ListGroupsResponse::decode(outcome.responses[0].clone())
                    .unwrap()
                    .groups
                    .is_empty(),
            };
            assert!(empty, "{path} shows an unauthorised caller nothing");
        } else {
            assert_eq!(
                refusal(&method, &outcome),
                Code::PermissionDenied,
                "{path} as a principal without rights: {:?}",
                outcome.status
            );
            let message = match method.as_str() {
                "PublishStream" => String::new(),
                _ => outcome.status.message().to_owned(),
            };
            assert!(
                message.is_empty() || message.contains("for principal \"nobody\""),
                "{path}: {message}"
            );
        }
    }
    // And the superuser passes every check (whatever the RPC then answers). DeleteTopic
    // and DeleteGroup last, since they remove what the others name.
    herald_paths.sort_by_key(|m| m.starts_with("Delete"));
    for method in &herald_paths {
        let path = format!("/herald.v1.Herald/{method}");
        let outcome = call(channel.clone(), &path, request_for(method), Some(ADMIN)).await;
        let code = refusal(method, &outcome);
        assert!(
            code != Code::Unauthenticated && code != Code::PermissionDenied,
            "{path} as the superuser: {:?}",
            outcome.status
        );
    }
    assert!(
        herald_paths.contains(&"Subscribe".to_owned()),
        "{herald_paths:?}"
    );

    // Health stays open.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health answers without credentials");
    assert_eq!(serving.into_inner().status, 1);

    // Reflection: authenticated and allowed describe on the cluster.
    for path in method_paths(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET) {
        let message = tonic_reflection::pb::v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                    String::new(),
                ),
            ),
        }
        .encode_to_vec();
        for (token, code) in [
            (None, Code::Unauthenticated),
            (Some("wrong-token"), Code::Unauthenticated),
            (Some(NOBODY), Code::PermissionDenied),
        ] {
            let outcome = call(channel.clone(), &path, message.clone(), token).await;
            assert_eq!(outcome.status.code(), code, "{path} with {token:?}");
        }
        let outcome = call(channel.clone(), &path, message, Some(ADMIN)).await;
        assert!(
            !outcome.responses.is_empty(),
            "{path} answers the superuser: {:?}",
            outcome.status
        );
    }
    stop(broker).await;
}
