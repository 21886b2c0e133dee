//! Tokens and ACLs: a missing or wrong token is UNAUTHENTICATED (logged, counted), a
//! known principal without the right is PERMISSION_DENIED naming the operation and the
//! resource; prefix rules, deny over allow, superusers, filtered lists, consumption
//! needing the right on topic and group, and rules reloaded from the file.

mod common;

use std::path::Path;

use common::*;
use herald_broker::auth::TokenEntry;
use herald_broker::auth::token;
use herald_client::{Client, ConsumerConfig, Error, ProducerConfig, Record};

const ADMIN: &str = "admin-token-0123456789";
const ORDERS: &str = "orders-token-0123456789";
const BILLING: &str = "billing-token-0123456789";

const RULES: &str = r#"
superusers = ["admin"]

[[rule]]
principal = "orders"
operations = ["publish", "describe", "fetch"]
resource = "topic"
name = "orders."
pattern = "prefix"

[[rule]]
principal = "orders"
effect = "deny"
operations = ["publish"]
resource = "topic"
name = "orders.audit"

[[rule]]
principal = "billing"
operations = ["consume", "describe"]
resource = "topic"
name = "orders.created"

[[rule]]
principal = "billing"
operations = ["consume", "describe"]
resource = "group"
name = "billing"
"#;

async fn start_secured(dir: &Path) -> herald_broker::server::Broker {
    let mut config = test_config(&dir.join("data"));
    let acl = dir.join("acl.toml");
    std::fs::write(&acl, RULES).unwrap();
    config.acl_file = Some(acl);
    config.tokens = [("admin", ADMIN), ("orders", ORDERS), ("billing", BILLING)]
        .into_iter()
        .map(|(principal, secret)| TokenEntry {
            principal: principal.into(),
            hash: token::hash(secret),
        })
        .collect();
    start(config).await
}

async fn as_(broker: &herald_broker::server::Broker, token: Option<&str>) -> Client {
    let mut builder = Client::builder(format!("http://{}", broker.addr));
    if let Some(token) = token {
        builder = builder.token(token);
    }
    builder.connect().await.unwrap()
}

fn denied(error: Error, says: &str) {
    match &error {
        Error::PermissionDenied(message) => assert!(message.contains(says), "{message}"),
        other => panic!("expected PERMISSION_DENIED ({says}), got {other:?}"),
    }
}

#[tokio::test]
async fn missing_and_wrong_tokens_are_unauthenticated_logged_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_secured(dir.path()).await;
    let nobody = as_(&broker, None).await;
    let error = nobody.admin().list_topics().await.unwrap_err();
    assert!(matches!(error, Error::Unauthenticated(_)), "{error:?}");
    let wrong = as_(&broker, Some("not-a-token")).await;
    let error = wrong.admin().list_topics().await.unwrap_err();
    assert!(matches!(error, Error::Unauthenticated(_)), "{error:?}");
    assert!(
        !error.to_string().contains("not-a-token"),
        "the secret is never echoed: {error}"
    );
    // A malformed authorization value.
    let mut raw = herald_proto::HeraldClient::connect(format!("http://{}", broker.addr))
        .await
        .unwrap();
    let mut request = tonic::Request::new(herald_proto::v1::ListTopicsRequest {});
    request
        .metadata_mut()
        .insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
    assert_eq!(
        code_of(raw.list_topics(request).await),
        tonic::Code::Unauthenticated
    );

    let exposition = metrics(&broker).await;
    for reason in ["missing", "unknown_token", "malformed"] {
        let series = format!("herald_auth_failures_total{{reason=\"{reason}\"}}");
        assert_eq!(metric_value(&exposition, &series), Some(1.0), "{series}");
    }
    stop(broker).await;
}

#[tokio::test]
async fn prefix_rules_deny_over_allow_and_denials_name_operation_and_resource() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_secured(dir.path()).await;
    let admin = as_(&broker, Some(ADMIN)).await;
    for topic in ["orders.created", "orders.audit", "payments"] {
        admin
            .admin()
            .create_topic(topic, 1, Default::default())
            .await
            .unwrap();
    }
    let orders = as_(&broker, Some(ORDERS)).await;

    // The prefix rule: publish to any orders.* topic (the producer's InitProducer needs
    // publish somewhere, which it has).
    let producer = orders.producer(ProducerConfig::new("orders.created"));
    producer
        .send(Record::new("o-1"))
        .await
        .unwrap()
        .await
        .unwrap();
    producer.close().await.unwrap();
    assert_eq!(fetch_partition(&orders, "orders.created", 0).await.len(), 1);

    // Deny wins over the prefix's allow.
    let producer = orders.producer(ProducerConfig::new("orders.audit"));
    let refused = match producer.send(Record::new("a-1")).await {
        Ok(delivery) => delivery.await.unwrap_err(),
        Err(error) => error,
    };
    denied(
        refused,
        "publish on topic \"orders.audit\" for principal \"orders\"",
    );

    // Outside the prefix; and an operation no rule gives.
    denied(
        orders.admin().describe_topic("payments").await.unwrap_err(),
        "describe on topic \"payments\"",
    );
    denied(
        orders
            .admin()
            .delete_topic("orders.created")
            .await
            .unwrap_err(),
        "delete on topic \"orders.created\"",
    );
    // Lists show only what the principal may describe.
    let names: Vec<String> = orders
        .admin()
        .list_topics()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["orders.audit", "orders.created"]);
    assert_eq!(admin.admin().list_topics().await.unwrap().len(), 3);

    let exposition = metrics(&broker).await;
    assert!(metric_value(&exposition, "herald_auth_denied_total").unwrap() >= 3.0);
    stop(broker).await;
}

#[tokio::test]
async fn consuming_needs_the_right_on_topic_and_group_and_describe_group_on_both() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_secured(dir.path()).await;
    let admin = as_(&broker, Some(ADMIN)).await;
    for topic in ["orders.created", "payments"] {
        admin
            .admin()
            .create_topic(topic, 1, Default::default())
            .await
            .unwrap();
    }
    let producer = admin.producer(ProducerConfig::new("orders.created"));
    producer
        .send(Record::new("o-1"))
        .await
        .unwrap()
        .await
        .unwrap();
    producer.close().await.unwrap();
    let billing = as_(&broker, Some(BILLING)).await;

    // Topic and group allowed: the group is made by the join and delivers.
    let mut subscription = billing
        .consumer(
            ConsumerConfig::new("orders.created", "billing")
                .start_position(herald_client::Position::Earliest),
        )
        .subscribe()
        .await
        .unwrap();
    let message = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        futures::StreamExt::next(&mut subscription),
    )
    .await
    .expect("a delivery")
    .unwrap()
    .unwrap();
    assert_eq!(&message.value()[..], b"o-1");
    message.ack().unwrap();
    subscription.close().await.unwrap();

    // Another group on the same topic, or the same group on another topic: refused.
    for (topic, group, says) in [
        ("orders.created", "audit", "consume on group \"audit\""),
        ("payments", "billing", "consume on topic \"payments\""),
    ] {
        let result = billing
            .consumer(ConsumerConfig::new(topic, group))
            .subscribe()
            .await;
        let error = match result {
            Err(error) => error,
            Ok(mut subscription) => futures::StreamExt::next(&mut subscription)
                .await
                .expect("the stream ends with the refusal")
                .unwrap_err(),
        };
        denied(error, says);
    }

    admin
        .admin()
        .create_group(
            "payments",
            "billing",
            Default::default(),
            herald_client::Position::Earliest,
        )
        .await
        .unwrap();
    billing
        .admin()
        .describe_group("orders.created", "billing")
        .await
        .unwrap();
    denied(
        billing
            .admin()
            .describe_group("payments", "billing")
            .await
            .unwrap_err(),
        "describe on topic \"payments\"",
    );
    let groups = billing.admin().list_groups(None).await.unwrap();
    assert_eq!(groups.len(), 1, "{groups:?}");
    assert_eq!(admin.admin().list_groups(None).await.unwrap().len(), 2);
    stop(broker).await;
}

#[tokio::test]
async fn rules_are_reloaded_from_the_file_and_a_bad_file_keeps_the_old_rules() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_secured(dir.path()).await;
    let admin = as_(&broker, Some(ADMIN)).await;
    admin
        .admin()
        .create_topic("payments", 1, Default::default())
        .await
        .unwrap();
    let orders = as_(&broker, Some(ORDERS)).await;
    denied(
        orders.admin().describe_topic("payments").await.unwrap_err(),
        "payments",
    );

    let acl = dir.path().join("acl.toml");
    std::fs::write(
        &acl,
        format!("{RULES}\n[[rule]]\nprincipal = \"orders\"\noperations = [\"describe\"]\nresource = \"topic\"\nname = \"payments\"\n"),
    )
    .unwrap();
    broker.reload().unwrap();
    orders.admin().describe_topic("payments").await.unwrap();
    assert_eq!(broker.acl().unwrap().rules.len(), 5);

    std::fs::write(&acl, "[[rule]]\nprincipal = \"orders\"\n").unwrap();
    assert!(broker.reload().is_err());
    orders.admin().describe_topic("payments").await.unwrap();
    stop(broker).await;
}
