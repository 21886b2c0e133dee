//! W3C trace context through the broker: a record's `traceparent` comes back on every
//! delivery, and with `otlp_endpoint` the broker exports a `publish` span per batch and a
//! `deliver` span per delivery, children of the record's trace context, to a real OTLP
//! collector service (a tonic server on 127.0.0.1:0 implementing the OTLP TraceService)
//! that the test runs. A collector that is not there costs nothing but the spans.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use futures::StreamExt;
use herald_broker::config::Config;
use herald_client::{ConsumerConfig, Position, ProducerConfig, Record};
use herald_proto::v1;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::sync::mpsc;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// The collector: every span it is sent goes down the channel.
struct Collector(mpsc::UnboundedSender<Span>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                for span in scope.spans {
                    let _ = self.0.send(span);
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Serves the collector on 127.0.0.1:0; returns its endpoint and the spans it receives.
async fn collector() -> (String, Spans) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(tx)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (
        format!("http://{addr}"),
        Spans {
            rx,
            backlog: Vec::new(),
        },
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A span's attributes, as text.
fn attributes(span: &Span) -> HashMap<String, String> {
    span.attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

/// The spans the collector received, in arrival order, and those arrived but not yet
/// taken (spans of different names arrive in any order: a delivery may end its span
/// before the publish that stored the record ends its own).
struct Spans {
    rx: mpsc::UnboundedReceiver<Span>,
    backlog: Vec<Span>,
}

impl Spans {
    /// Takes `n` spans named `name`, waiting for them (10 s at most, which fails).
    async fn named(&mut self, name: &str, n: usize) -> Vec<Span> {
        let deadline = tokio::time::Instant::now() + CONDITION_WAIT;
        loop {
            let matching = self.backlog.iter().filter(|s| s.name == name).count();
            if matching >= n {
                let mut taken = Vec::new();
                let mut kept = Vec::new();
                for span in self.backlog.drain(..) {
                    if span.name == name && taken.len() < n {
                        taken.push(span);
                    } else {
                        kept.push(span);
                    }
                }
                self.backlog = kept;
                return taken;
            }
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(span)) => self.backlog.push(span),
                _ => panic!("{matching} of {n} {name:?} spans within {CONDITION_WAIT:?}"),
            }
        }
    }

    /// Fails if any span arrived that no test step took.
    fn assert_none_left(&mut self) {
        while let Ok(span) = self.rx.try_recv() {
            self.backlog.push(span);
        }
        if let Some(span) = self.backlog.first() {
            panic!(
                "an unexpected span: {} of trace {}",
                span.name,
                hex(&span.trace_id)
            );
        }
    }
}

fn traced_config(dir: &std::path::Path, endpoint: String) -> Config {
    Config {
        otlp_endpoint: Some(endpoint),
        ..test_config(dir)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_deliver_spans_are_children_of_the_records_traceparent() {
    let (endpoint, mut spans) = collector().await;
    let dir = tempfile::tempdir().unwrap();
    let broker = start(traced_config(dir.path(), endpoint)).await;
    let mut c = client(&broker).await;
    create_topic(&mut c, "t", 2).await;
    let mut member = subscribe(&mut c, join("t", "g", Some(fast_settings(30_000, 10))))
        .await
        .unwrap();

    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    let mut traced = record(Some("k"), "traced");
    traced.headers.push(v1::Header {
        key: "traceparent".into(),
        value: traceparent.clone().into_bytes().into(),
    });
    let reply = publish(&mut c, "t", Some(1), vec![traced, record(None, "plain")])
        .await
        .unwrap();

    // The header is an ordinary one to delivery: it comes back as it was sent.
    let (got, _) = member.deliveries(2, CONDITION_WAIT).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].headers.len(), 1);
    assert_eq!(got[0].headers[0].key, "traceparent");
    assert_eq!(got[0].headers[0].value, traceparent.as_bytes());

    let publish_span = spans.named("publish", 1).await.remove(0);
    assert_eq!(hex(&publish_span.trace_id), TRACE);
    assert_eq!(hex(&publish_span.parent_span_id), PARENT);
    assert!(publish_span.end_time_unix_nano >= publish_span.start_time_unix_nano);
    let a = attributes(&publish_span);
    assert_eq!(a["messaging.destination.name"], "t");
    assert_eq!(a["messaging.destination.partition.id"], "1");
    assert_eq!(a["herald.base_offset"], reply.base_offset.to_string());
    assert_eq!(a["herald.last_offset"], reply.last_offset.to_string());
    assert_eq!(a["messaging.batch.message_count"], "2");

    // A deliver span per delivery of a traced record, its child; the plain record makes
    // none (checked below: every deliver span that arrives is of the trace).
    let child = spans.named("deliver", 1).await.remove(0);
    assert_eq!(hex(&child.trace_id), TRACE);
    assert_eq!(hex(&child.parent_span_id), PARENT);
    let a = attributes(&child);
    assert_eq!(a["messaging.consumer.group.name"], "g");
    assert_eq!(a["messaging.destination.name"], "t");
    assert_eq!(a["messaging.destination.partition.id"], "1");
    assert_eq!(a["herald.offset"], reply.base_offset.to_string());
    assert_eq!(a["herald.delivery_attempt"], "1");

    // A redelivery is a delivery too: its span says the attempt.
    let first = got.iter().find(|d| !d.headers.is_empty()).unwrap();
    member.nack(first, Some(0), "again").await;
    let (again, _) = member.deliveries(1, CONDITION_WAIT).await;
    assert_eq!(again[0].delivery_attempt, 2);
    let redelivered = spans.named("deliver", 1).await.remove(0);
    assert_eq!(hex(&redelivered.trace_id), TRACE);
    assert_eq!(hex(&redelivered.parent_span_id), PARENT);
    assert_eq!(attributes(&redelivered)["herald.delivery_attempt"], "2");

    // An unsampled trace context is carried, but makes no spans.
    let mut unsampled = record(None, "unsampled");
    unsampled.headers.push(v1::Header {
        key: "traceparent".into(),
        value: format!("00-{TRACE}-{PARENT}-00").into_bytes().into(),
    });
    publish(&mut c, "t", Some(0), vec![unsampled])
        .await
        .unwrap();
    let (got, _) = member.deliveries(1, CONDITION_WAIT).await;
    assert_eq!(
        got[0].headers[0].value,
        format!("00-{TRACE}-{PARENT}-00").as_bytes()
    );
    stop(broker).await;
    // Shutdown exported everything queued: nothing but the spans above came.
    spans.assert_none_left();
}

/// The Rust client's `Record::traceparent` and batched deliveries (runs, which the
/// broker decodes for their headers only when it exports spans).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_clients_traceparent_reaches_spans_and_messages() {
    let (endpoint, mut spans) = collector().await;
    let dir = tempfile::tempdir().unwrap();
    let broker = start(traced_config(dir.path(), endpoint)).await;
    let client = herald_client::Client::connect(format!("http://{}", broker.addr))
        .await
        .unwrap();
    client
        .admin()
        .create_topic("t", 1, Default::default())
        .await
        .unwrap();
    let producer = client.producer(ProducerConfig::new("t"));
    let mut sent = Vec::new();
    for i in 0..5u64 {
        let traceparent = format!("00-{TRACE}-{:016x}-01", i + 1);
        sent.push(
            producer
                .send(Record::new(format!("v{i}")).traceparent(traceparent))
                .await
                .unwrap(),
        );
    }
    producer.close().await.unwrap();
    for delivery in sent {
        delivery.await.unwrap();
    }
    let mut subscription = client
        .consumer(ConsumerConfig::new("t", "g").start_position(Position::Earliest))
        .subscribe()
        .await
        .unwrap();
    for i in 0..5u64 {
        let message = tokio::time::timeout(Duration::from_secs(10), subscription.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            message.traceparent(),
            Some(format!("00-{TRACE}-{:016x}-01", i + 1).as_str())
        );
        message.ack().unwrap();
    }
    let mut parents: Vec<(u64, String)> = spans
        .named("deliver", 5)
        .await
        .iter()
        .map(|s| {
            assert_eq!(hex(&s.trace_id), TRACE);
            let offset = attributes(s)["herald.offset"].parse().unwrap();
            (offset, hex(&s.parent_span_id))
        })
        .collect();
    parents.sort();
    let expected: Vec<(u64, String)> = (0..5u64).map(|i| (i, format!("{:016x}", i + 1))).collect();
    assert_eq!(parents, expected);
    drop(subscription);
    stop(broker).await;
}

/// A collector that is not there: publishes and deliveries go on, and shutdown does not
/// hang on the spans it cannot send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_collector_costs_only_the_spans() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let broker = start(traced_config(dir.path(), endpoint)).await;
    let mut c = client(&broker).await;
    create_topic(&mut c, "t", 1).await;
    for i in 0..200 {
        publish(&mut c, "t", Some(0), vec![record(None, &i.to_string())])
            .await
            .unwrap();
    }
    let mut member = subscribe(&mut c, join("t", "g", None)).await.unwrap();
    let (got, _) = member.deliveries(200, CONDITION_WAIT).await;
    assert_eq!(got.len(), 200);
    drop(member);
    stop(broker).await;
}
