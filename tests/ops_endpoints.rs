//! The endpoints generic tools use: grpc.health.v1, server reflection, and Prometheus
//! metrics over plain HTTP.

mod common;

use common::*;
use herald_broker::config::{Config, FsyncSetting};
use herald_proto::v1;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

/// A plain channel to the broker (the health and reflection clients are generated without
/// tonic's `connect` helper).
async fn channel(broker: &herald_broker::server::Broker) -> Channel {
    Endpoint::from_shared(format!("http://{}", broker.addr))
        .unwrap()
        .connect()
        .await
        .expect("connects")
}

#[tokio::test]
async fn health_check_reports_serving() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(test_config(dir.path())).await;
    let mut health = HealthClient::new(channel(&broker).await);
    for service in ["", "herald.v1.Herald"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("health of {service:?}: {e}"))
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
    }
    // The standard answer for a service the server does not know.
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await;
    assert_eq!(code_of(unknown), tonic::Code::NotFound);
    stop(broker).await;
}

async fn try_reflect(
    client: &mut ServerReflectionClient<Channel>,
    request: MessageRequest,
) -> Result<ServerReflectionResponse, tonic::Status> {
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut replies = client
        .server_reflection_info(futures::stream::iter([request]))
        .await?
        .into_inner();
    Ok(replies.message().await?.expect("a reflection response"))
}

async fn reflect(
    client: &mut ServerReflectionClient<Channel>,
    request: MessageRequest,
) -> ServerReflectionResponse {
    try_reflect(client, request)
        .await
        .expect("a reflection answer")
}

#[tokio::test]
async fn reflection_lists_and_describes_the_herald_service() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(test_config(dir.path())).await;
    let mut reflection = ServerReflectionClient::new(channel(&broker).await);
    let listed = reflect(&mut reflection, MessageRequest::ListServices(String::new())).await;
    let Some(MessageResponse::ListServicesResponse(list)) = listed.message_response else {
        panic!("not a service list: {listed:?}")
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"herald.v1.Herald"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");

    // A generic client can fetch the service's schema and the messages it uses.
    for (symbol, file) in [
        ("herald.v1.Herald", "herald/v1/herald.proto"),
        ("herald.v1.PublishRequest", "herald/v1/publish.proto"),
        ("herald.v1.Herald.Fetch", "herald/v1/herald.proto"),
    ] {
        let described = reflect(
            &mut reflection,
            MessageRequest::FileContainingSymbol(symbol.into()),
        )
        .await;
        let Some(MessageResponse::FileDescriptorResponse(files)) = described.message_response
        else {
            panic!("no descriptor for {symbol}: {described:?}")
        };
        assert!(
            files
                .file_descriptor_proto
                .iter()
                .any(|f| f.windows(file.len()).any(|w| w == file.as_bytes())),
            "{symbol}: {file} not among the returned descriptors"
        );
    }
    // An unknown symbol is NOT_FOUND. tonic-reflection ends the stream with that status
    // rather than sending an ErrorResponse message; either form tells a tool the same.
    let missing = try_reflect(
        &mut reflection,
        MessageRequest::FileContainingSymbol("herald.v1.NoSuchThing".into()),
    )
    .await;
    let code = match missing {
        Ok(ServerReflectionResponse {
            message_response: Some(MessageResponse::ErrorResponse(e)),
            ..
        }) => tonic::Code::from_i32(e.error_code),
        Ok(other) => panic!("an unknown symbol was described: {other:?}"),
        Err(status) => status.code(),
    };
    assert_eq!(code, tonic::Code::NotFound);
    stop(broker).await;
}

#[tokio::test]
async fn metrics_count_what_was_published_and_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(Config {
        fsync: FsyncSetting::Always,
        ..test_config(dir.path())
    })
    .await;
    let metrics_addr = broker.metrics_addr.expect("metrics are served");
    let mut c = client(&broker).await;

    // Before anything is published the counters exist and are zero.
    let (status, before) = http_get(metrics_addr, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        metric_value(&before, "herald_publish_records_total"),
        Some(0.0),
        "{before}"
    );

    create_topic(&mut c, "metered", 3).await;
    let mut records = 0;
    for i in 0..12 {
        let n = 1 + i % 4;
        let batch = (0..n).map(|j| record(None, &format!("{i}.{j}"))).collect();
        publish(&mut c, "metered", None, batch).await.unwrap();
        records += n;
    }
    // PublishStream counts too.
    let stream = futures::stream::iter((0..5).map(|i| v1::PublishStreamRequest {
        sequence: i,
        publish: Some(v1::PublishRequest {
            topic: "metered".into(),
            partition: Some(0),
            payload: Some(v1::publish_request::Payload::Records(v1::Records {
                records: vec![record(None, "s"), record(None, "t")],
            })),
            producer: None,
        }),
    }));
    let mut replies = c.publish_stream(stream).await.unwrap().into_inner();
    while let Some(reply) = replies.message().await.unwrap() {
        assert!(matches!(
            reply.outcome,
            Some(v1::publish_stream_response::Outcome::Published(_))
        ));
        records += 2;
    }
    // Failures count as failed requests, not as records.
    for _ in 0..2 {
        publish(&mut c, "metered", Some(7), vec![record(None, "x")])
            .await
            .unwrap_err();
    }
    let fetched: usize = {
        let mut n = 0;
        for p in 0..3 {
            n += fetch_all(&mut c, "metered", p, 0).await.unwrap().len();
        }
        n
    };
    assert_eq!(fetched, records);

    let (status, text) = http_get(metrics_addr, "/metrics").await;
    assert_eq!(status, 200);
    let value = |series: &str| {
        metric_value(&text, series).unwrap_or_else(|| panic!("{series} missing from:\n{text}"))
    };
    assert_eq!(value("herald_publish_records_total"), records as f64);
    assert_eq!(value("herald_publish_requests_total{result=\"ok\"}"), 17.0);
    assert_eq!(
        value("herald_publish_requests_total{result=\"error\"}"),
        2.0
    );
    assert_eq!(value("herald_fetch_records_total"), records as f64);
    assert_eq!(value("herald_topics"), 1.0);
    assert_eq!(value("herald_partitions"), 3.0);
    assert!(value("herald_publish_bytes_total") > records as f64);
    assert_eq!(value("herald_publish_latency_seconds_count"), 19.0);
    // Under fsync = always every publish was flushed before its reply.
    let fsyncs = value("herald_fsync_total");
    assert!(fsyncs >= 1.0, "herald_fsync_total = {fsyncs}");
    assert!(value("herald_fsync_seconds_total") > 0.0);
    assert!(text.contains("# TYPE herald_fsync_total counter"), "{text}");

    let (status, _) = http_get(metrics_addr, "/no-such-page").await;
    assert_eq!(status, 404);
    stop(broker).await;
}

/// The group series of `(topic, group)` in the order the test compares them: deliveries,
/// acks, nacks, redeliveries, expirations, dead letters, lag, members. `None` for a
/// missing series.
const GROUP_SERIES: [&str; 8] = [
    "herald_group_deliveries_total",
    "herald_group_acks_total",
    "herald_group_nacks_total",
    "herald_group_redeliveries_total",
    "herald_group_expirations_total",
    "herald_group_dead_letters_total",
    "herald_group_lag",
    "herald_group_members",
];

async fn group_series(
    metrics_addr: std::net::SocketAddr,
    topic: &str,
    group: &str,
) -> (Vec<Option<f64>>, String) {
    let (status, text) = http_get(metrics_addr, "/metrics").await;
    assert_eq!(status, 200);
    let values = GROUP_SERIES
        .iter()
        .map(|name| group_metric_value(&text, name, topic, group))
        .collect();
    (values, text)
}

/// Polls the metrics until the group's series equal `want` (the driver and the acks are
/// asynchronous); panics with the last exposition otherwise.
async fn expect_group_series(
    metrics_addr: std::net::SocketAddr,
    topic: &str,
    group: &str,
    want: [f64; 8],
) {
    let want: Vec<Option<f64>> = want.into_iter().map(Some).collect();
    let what = format!("group {topic}/{group}: {GROUP_SERIES:?} reach {want:?}");
    wait_for(&what, || async {
        let (got, text) = group_series(metrics_addr, topic, group).await;
        if got == want {
            Ok(())
        } else {
            Err(Text(format!("{got:?}\n{text}")))
        }
    })
    .await;
}

#[tokio::test]
async fn metrics_count_group_deliveries_acks_nacks_and_lag() {
    const WAIT: std::time::Duration = std::time::Duration::from_secs(10);
    let dir = tempfile::tempdir().unwrap();
    let broker = start(test_config(dir.path())).await;
    let metrics_addr = broker.metrics_addr.expect("metrics are served");
    let mut c = client(&broker).await;
    create_topic(&mut c, "work", 2).await;
    create_topic(&mut c, "flaky", 1).await;
    create_topic(&mut c, "dlq", 1).await;
    for p in 0..2 {
        let batch = (0..5).map(|i| record(None, &format!("{p}.{i}"))).collect();
        publish(&mut c, "work", Some(p), batch).await.unwrap();
    }

    // Ten deliveries: nine acked, one nacked, redelivered and then acked.
    let mut m = subscribe(&mut c, join("work", "g", Some(fast_settings(60_000, 10))))
        .await
        .unwrap();
    let (first, _) = m.deliveries(10, WAIT).await;
    assert_eq!(first.len(), 10);
    let (nacked, acked) = first.split_last().unwrap();
    m.ack(acked).await;
    m.nack(nacked, Some(0), "try again").await;
    let (again, _) = m.deliveries(1, WAIT).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].delivery_attempt, 2);
    assert_eq!(again[0].offset, nacked.offset);
    // Before the last ack one message is not done: lag 1.
    expect_group_series(
        metrics_addr,
        "work",
        "g",
        [11.0, 9.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0],
    )
    .await;
    m.ack(&again).await;
    expect_group_series(
        metrics_addr,
        "work",
        "g",
        [11.0, 10.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0],
    )
    .await;

    // Without members, new records add to the lag.
    drop(m);
    publish(
        &mut c,
        "work",
        Some(1),
        vec![record(None, "a"), record(None, "b")],
    )
    .await
    .unwrap();
    publish(&mut c, "work", Some(0), vec![record(None, "c")])
        .await
        .unwrap();
    expect_group_series(
        metrics_addr,
        "work",
        "g",
        [11.0, 10.0, 1.0, 1.0, 0.0, 0.0, 3.0, 0.0],
    )
    .await;

    // Expirations and dead letters: nacked once, then its deadline passes on the last
    // attempt, so it lands in the dead-letter topic and is done.
    publish(&mut c, "flaky", None, vec![record(None, "poison")])
        .await
        .unwrap();
    let settings = v1::GroupSettings {
        max_delivery_attempts: Some(2),
        dead_letter_topic: Some("dlq".into()),
        ..fast_settings(1_000, 10)
    };
    let mut m = subscribe(&mut c, join("flaky", "d", Some(settings)))
        .await
        .unwrap();
    let (first, _) = m.deliveries(1, WAIT).await;
    assert_eq!(first.len(), 1);
    m.nack(&first[0], Some(0), "boom").await;
    let (second, _) = m.deliveries(1, WAIT).await;
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].delivery_attempt, 2);
    expect_group_series(
        metrics_addr,
        "flaky",
        "d",
        [2.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0],
    )
    .await;
    assert_eq!(fetch_all(&mut c, "dlq", 0, 0).await.unwrap().len(), 1);

    // Deleting a group removes its series; the other group's stay.
    drop(m);
    c.delete_group(v1::DeleteGroupRequest {
        topic: "work".into(),
        group: "g".into(),
    })
    .await
    .unwrap();
    let (gone, text) = group_series(metrics_addr, "work", "g").await;
    assert_eq!(gone, vec![None; 8], "{text}");
    assert!(!text.contains("group=\"g\""), "{text}");
    let (kept, text) = group_series(metrics_addr, "flaky", "d").await;
    assert!(kept.iter().all(Option::is_some), "{text}");
    assert!(
        text.contains("# TYPE herald_group_acks_total counter"),
        "{text}"
    );
    assert!(text.contains("# TYPE herald_group_lag gauge"), "{text}");
    stop(broker).await;
}

#[tokio::test]
async fn health_and_readiness_answer_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(test_config(dir.path())).await;
    let metrics_addr = broker.metrics_addr.expect("metrics are served");
    assert_eq!(
        http_get(metrics_addr, "/healthz").await,
        (200, "ok\n".into())
    );
    // Start returns once topics and groups are loaded and gRPC accepts: ready.
    assert_eq!(
        http_get(metrics_addr, "/readyz").await,
        (200, "ready\n".into())
    );
    stop(broker).await;
}

/// The exposition's sample of `name` with exactly these labels, in any order.
fn labelled(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{')?;
            let mut got: Vec<&str> = rest.strip_suffix('}')?.split(',').collect();
            let mut want: Vec<String> =
                labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            got.sort_unstable();
            want.sort_unstable();
            (metric == name && got == want).then(|| value.parse().expect("a numeric sample"))
        })
}

#[tokio::test]
async fn metrics_per_topic_traffic_disk_errors_process_and_build() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(test_config(dir.path())).await;
    let metrics_addr = broker.metrics_addr.expect("metrics are served");
    let mut c = client(&broker).await;
    create_topic(&mut c, "busy", 2).await;
    create_topic(&mut c, "idle", 1).await;
    for i in 0..4 {
        let batch = (0..5).map(|j| record(None, &format!("{i}.{j}"))).collect();
        publish(&mut c, "busy", Some(i % 2), batch).await.unwrap();
    }
    let fetched = fetch_all(&mut c, "busy", 0, 0).await.unwrap().len();
    assert_eq!(fetched, 10);
    // Errors, each counted under its code: NOT_FOUND for a unary call and for a Fetch
    // refused before its stream starts, OUT_OF_RANGE for another.
    publish(&mut c, "missing", None, vec![record(None, "x")])
        .await
        .unwrap_err();
    assert_eq!(
        code_of(fetch_all(&mut c, "missing", 0, 0).await),
        tonic::Code::NotFound
    );
    assert_eq!(
        code_of(fetch_all(&mut c, "busy", 1, 1_000).await),
        tonic::Code::OutOfRange
    );
    // A third NOT_FOUND ends a stream that had started: a tailing Fetch of a topic that is
    // deleted meanwhile. Its status comes in the trailers.
    create_topic(&mut c, "doomed", 1).await;
    let mut tail = c
        .fetch(v1::FetchRequest {
            topic: "doomed".into(),
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    c.delete_topic(v1::DeleteTopicRequest {
        name: "doomed".into(),
    })
    .await
    .unwrap();
    let ended = loop {
        match tail.message().await {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    assert_eq!(code_of(ended), tonic::Code::NotFound);

    let (status, text) = http_get(metrics_addr, "/metrics").await;
    assert_eq!(status, 200);
    let topic = |name: &str, t: &str| {
        labelled(&text, name, &[("topic", t)])
            .unwrap_or_else(|| panic!("{name}{{topic={t:?}}} missing from:\n{text}"))
    };
    assert_eq!(topic("herald_topic_publish_requests_total", "busy"), 4.0);
    assert_eq!(topic("herald_topic_publish_records_total", "busy"), 20.0);
    assert_eq!(topic("herald_topic_fetch_records_total", "busy"), 10.0);
    assert!(topic("herald_topic_publish_bytes_total", "busy") > 20.0);
    assert!(topic("herald_topic_fetch_bytes_total", "busy") > 10.0);
    assert_eq!(topic("herald_topic_publish_records_total", "idle"), 0.0);
    assert_eq!(topic("herald_topic_disk_used_bytes", "idle"), 0.0);
    // Used is the committed length of the segments, as DescribeTopic reports it.
    let described = c
        .describe_topic(v1::DescribeTopicRequest {
            name: "busy".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .topic
        .unwrap();
    let size: u64 = described.partitions.iter().map(|p| p.size_bytes).sum();
    assert!(size > 0);
    assert_eq!(topic("herald_topic_disk_used_bytes", "busy"), size as f64);
    // Allocated counts the preallocated segment files: at least what is used.
    assert!(topic("herald_topic_disk_allocated_bytes", "busy") >= size as f64);
    assert!(topic("herald_topic_disk_allocated_bytes", "idle") > 0.0);

    let errors = |code: &str| labelled(&text, "herald_grpc_errors_total", &[("code", code)]);
    assert_eq!(errors("NOT_FOUND"), Some(3.0), "{text}");
    assert_eq!(errors("OUT_OF_RANGE"), Some(1.0), "{text}");
    assert_eq!(errors("INTERNAL"), Some(0.0), "{text}");
    assert_eq!(errors("OK"), Some(0.0), "successes are not errors");

    // Process metrics, under their standard names.
    assert!(metric_value(&text, "process_resident_memory_bytes").unwrap_or(0.0) > 0.0);
    assert!(metric_value(&text, "process_open_fds").unwrap_or(0.0) > 0.0);
    assert!(
        metric_value(&text, "process_cpu_seconds_total").is_some(),
        "{text}"
    );
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    assert_eq!(
        labelled(
            &text,
            "herald_build_info",
            &[("version", env!("CARGO_PKG_VERSION")), ("profile", profile)]
        ),
        Some(1.0),
        "{text}"
    );

    // A deleted topic's series go with it.
    c.delete_topic(v1::DeleteTopicRequest {
        name: "idle".into(),
    })
    .await
    .unwrap();
    let (_, text) = http_get(metrics_addr, "/metrics").await;
    assert!(!text.contains("topic=\"idle\""), "{text}");
    stop(broker).await;
}

#[tokio::test]
async fn metrics_show_lag_and_oldest_unacked_age_per_partition() {
    const WAIT: std::time::Duration = std::time::Duration::from_secs(10);
    let dir = tempfile::tempdir().unwrap();
    let broker = start(test_config(dir.path())).await;
    let metrics_addr = broker.metrics_addr.expect("metrics are served");
    let mut c = client(&broker).await;
    create_topic(&mut c, "aged", 2).await;
    // Three records in partition 0 stamped 300, 120 and 60 seconds ago.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let batch = [300, 120, 60]
        .iter()
        .map(|ago| v1::Record {
            timestamp_ms: now - ago * 1000,
            ..record(None, &format!("{ago}s ago"))
        })
        .collect();
    publish(&mut c, "aged", Some(0), batch).await.unwrap();

    let mut m = subscribe(&mut c, join("aged", "g", Some(fast_settings(60_000, 10))))
        .await
        .unwrap();
    let (got, _) = m.deliveries(3, WAIT).await;
    assert_eq!(got.len(), 3);
    // The oldest is done: the oldest unacked is the one from 120 s ago.
    m.ack(&got[..1]).await;
    let series = |text: &str, name: &str, partition: &str| {
        labelled(
            text,
            name,
            &[("topic", "aged"), ("group", "g"), ("partition", partition)],
        )
    };
    wait_for("partition 0's lag to come down to 2", || async {
        let (_, text) = http_get(metrics_addr, "/metrics").await;
        match series(&text, "herald_group_partition_lag", "0") {
            Some(2.0) => Ok(text),
            other => Err(Text(format!("lag {other:?}\n{text}"))),
        }
    })
    .await;
    let (_, text) = http_get(metrics_addr, "/metrics").await;
    let age = series(&text, "herald_group_oldest_unacked_age_seconds", "0").expect("an age");
    // Scraped right after: at least 120 s, and not the acked record's 300 s.
    assert!((120.0..290.0).contains(&age), "age {age}\n{text}");
    assert_eq!(series(&text, "herald_group_partition_lag", "1"), Some(0.0));
    assert_eq!(
        series(&text, "herald_group_oldest_unacked_age_seconds", "1"),
        Some(0.0)
    );
    m.ack(&got[1..]).await;
    wait_for("every age to be 0 once all is acked", || async {
        let (_, text) = http_get(metrics_addr, "/metrics").await;
        match series(&text, "herald_group_oldest_unacked_age_seconds", "0") {
            Some(0.0) => Ok(()),
            other => Err(Text(format!("age {other:?}\n{text}"))),
        }
    })
    .await;
    drop(m);
    stop(broker).await;
}

/// Every metric the Grafana dashboard in `deploy/` queries is one the broker exports.
#[tokio::test]
async fn grafana_dashboard_queries_exported_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(test_config(dir.path())).await;
    let metrics_addr = broker.metrics_addr.expect("metrics are served");
    let mut c = client(&broker).await;
    // A topic and a group, so their series exist.
    create_topic(&mut c, "shown", 1).await;
    publish(&mut c, "shown", None, vec![record(None, "x")])
        .await
        .unwrap();
    let m = subscribe(&mut c, join("shown", "g", None)).await.unwrap();
    let (_, text) = http_get(metrics_addr, "/metrics").await;
    let exported: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queried = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            // Metric names: identifiers starting herald_ or process_, before a `{`.
            for (at, _) in expr.match_indices(['h', 'p']) {
                let name: String = expr[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let starts_word = at == 0
                    || !expr[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
                if starts_word && (name.starts_with("herald_") || name.starts_with("process_")) {
                    queried.push(name);
                }
            }
        }
    }
    assert!(queried.len() > 20, "{queried:?}");
    for name in &queried {
        // Histograms are queried by their `_bucket` series.
        let family = name.strip_suffix("_bucket").unwrap_or(name);
        assert!(
            exported.contains(family),
            "the dashboard queries {name}, which /metrics does not export"
        );
    }
    drop(m);
    stop(broker).await;
}
