//! Broker errors reach the Rust client's producer as typed errors carrying the gRPC code,
//! which they name as gRPC does.

mod common;

use herald_client::{Error, ProducerConfig, Record, TopicConfig};

#[tokio::test]
async fn errors_are_typed() {
    let t = common::start_with_client().await;
    let producer = t.client.producer(ProducerConfig::new("missing"));
    match producer.send(Record::new("x")).await {
        Err(Error::NotFound(message)) => assert!(message.contains("missing"), "{message}"),
        other => panic!("expected NotFound, got {other:?}"),
    }

    t.create_topic("small", 2).await;
    let producer = t.client.producer(ProducerConfig::new("small"));
    let error = producer
        .send(Record::new("x").partition(5))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(tonic::Code::InvalidArgument));

    // A record over the topic's max_message_bytes is refused by the broker: the error
    // reaches the delivery with its status code.
    t.client
        .admin()
        .create_topic(
            "tiny",
            1,
            TopicConfig {
                max_message_bytes: Some(100),
                ..TopicConfig::default()
            },
        )
        .await
        .unwrap();
    let producer = t.client.producer(ProducerConfig::new("tiny"));
    let delivery = producer.send(Record::new(vec![0u8; 1000])).await.unwrap();
    let error = delivery.await.unwrap_err();
    assert_eq!(
        error.code(),
        Some(tonic::Code::ResourceExhausted),
        "{error:?}"
    );
    // ...and the producer carries on.
    let ok = producer.send(Record::new("fine")).await.unwrap();
    assert_eq!(ok.await.unwrap().offset.0, 0);
    producer.close().await.unwrap();
}

#[tokio::test]
async fn errors_name_their_status_code() {
    let t = common::start_with_client().await;
    let error = t
        .client
        .admin()
        .describe_topic("missing")
        .await
        .unwrap_err();
    assert_eq!(error.code_name(), Some("NOT_FOUND"));
    // The broker's own words, without the client's prefix.
    assert_eq!(error.message(), "topic \"missing\" does not exist");
    assert_eq!(
        herald_client::code_name(tonic::Code::ResourceExhausted),
        "RESOURCE_EXHAUSTED"
    );
    // Client-side errors have no status code.
    assert_eq!(Error::Closed.code_name(), None);
    assert!(!Error::Closed.message().is_empty());
}
