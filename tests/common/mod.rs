//! Shared set-up for integration tests: a real broker on 127.0.0.1:0 with a temp data dir,
//! and a gRPC client connected to it (the generated one, or the Rust client for the
//! `client_*` tests).
#![allow(dead_code)]

pub mod cluster;
pub mod pki;
pub mod rpc;

use std::path::Path;

use herald_broker::config::{Config, FsyncSetting};
use herald_broker::server::Broker;
use herald_proto::HeraldClient;
use herald_proto::v1;
use tonic::transport::Channel;

/// A configuration for tests: ephemeral ports, the given data dir, small segments so rolls
/// happen, fsync `never` unless a test asks for more.
pub fn test_config(data_dir: &Path) -> Config {
    Config {
        data_dir: data_dir.to_owned(),
        listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: "127.0.0.1:0".parse().unwrap(),
        fsync: FsyncSetting::Never,
        segment_bytes: 4 * 1024 * 1024,
        max_batch_bytes: 2 * 1024 * 1024,
        ..Config::default()
    }
}

/// Starts a broker (with its metrics endpoint) on `config`, with panics recorded (see
/// [`assert_no_broker_panics`]).
pub async fn start(config: Config) -> Broker {
    record_panics();
    Broker::start(config, true).await.expect("broker starts")
}

/// The set-up most tests start from: a broker on a fresh temp dir (see [`test_config`]),
/// a client connected to it, and topic `topic` with `partitions` partitions. The dir
/// must live as long as the broker.
pub async fn start_with_topic(
    topic: &str,
    partitions: u32,
) -> (tempfile::TempDir, Broker, HeraldClient<Channel>) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let broker = start(test_config(dir.path())).await;
    let mut client = client(&broker).await;
    create_topic(&mut client, topic, partitions).await;
    (dir, broker, client)
}

/// Shuts a broker down, which must succeed, and fails the test if anything in the broker
/// panicked meanwhile. Tests use this instead of `broker.shutdown()`.
pub async fn stop(broker: Broker) {
    broker
        .shutdown()
        .await
        .expect("the broker shuts down cleanly");
    assert_no_broker_panics();
}

/// Panics seen in this test binary outside test code: `(thread, location, message)`.
static BROKER_PANICS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Installs (once per test binary) a panic hook that records every panic raised outside
/// the test files themselves, then runs the previous hook. A panic in a broker task is
/// caught by tokio and would otherwise pass unnoticed: the request fails, the test may
/// still pass. Panics whose location is under `tests/` are the tests' own assertions.
pub fn record_panics() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let file = info.location().map_or("", |l| l.file());
            let in_tests = file.starts_with("tests/") || file.contains("/tests/");
            if !in_tests {
                let thread = std::thread::current();
                let entry = format!(
                    "thread {:?} panicked at {}: {}",
                    thread.name().unwrap_or("?"),
                    info.location()
                        .map_or_else(|| "?".to_owned(), |l| l.to_string()),
                    panic_message(info.payload())
                );
                BROKER_PANICS
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(entry);
            }
            previous(info);
        }));
    });
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a non-string payload)".to_owned()
    }
}

/// Fails if anything outside the test code panicked in this test binary so far. Tests of
/// one binary run in parallel, so a panic is reported by every test that checks after it.
#[track_caller]
pub fn assert_no_broker_panics() {
    let panics = BROKER_PANICS.lock().unwrap_or_else(|p| p.into_inner());
    assert!(panics.is_empty(), "the broker panicked: {panics:#?}");
}

pub async fn client(broker: &Broker) -> HeraldClient<Channel> {
    HeraldClient::connect(format!("http://{}", broker.addr))
        .await
        .expect("client connects")
}

pub async fn create_topic(client: &mut HeraldClient<Channel>, name: &str, partitions: u32) {
    client
        .create_topic(v1::CreateTopicRequest {
            name: name.into(),
            partitions,
            config: None,
            replication_factor: None,
        })
        .await
        .expect("topic created");
}

/// A plain proto record.
pub fn record(key: Option<&str>, value: &str) -> v1::Record {
    v1::Record {
        key: key.map(|k| k.as_bytes().to_vec().into()),
        value: value.as_bytes().to_vec().into(),
        headers: vec![],
        timestamp_ms: 0,
    }
}

pub async fn publish(
    client: &mut HeraldClient<Channel>,
    topic: &str,
    partition: Option<u32>,
    records: Vec<v1::Record>,
) -> Result<v1::PublishResponse, tonic::Status> {
    client
        .publish(v1::PublishRequest {
            topic: topic.into(),
            partition,
            payload: Some(v1::publish_request::Payload::Records(v1::Records {
                records,
            })),
            producer: None,
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Fetches every record of a partition from `from` to the end (no follow).
pub async fn fetch_all(
    client: &mut HeraldClient<Channel>,
    topic: &str,
    partition: u32,
    from: u64,
) -> Result<Vec<v1::FetchedRecord>, tonic::Status> {
    let mut stream = client
        .fetch(v1::FetchRequest {
            topic: topic.into(),
            partition,
            start: Some(v1::Position {
                kind: Some(v1::position::Kind::Offset(from)),
            }),
            max_bytes: 0,
            follow: false,
            max_wait_ms: 0,
            raw_batches: false,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(response) = stream.message().await? {
        out.extend(response.records);
    }
    Ok(out)
}

/// A position of the given kind.
pub fn position(kind: v1::position::Kind) -> Option<v1::Position> {
    Some(v1::Position { kind: Some(kind) })
}

/// A plain (non-follow, decoded) fetch request starting at `start`.
pub fn fetch_request(topic: &str, partition: u32, start: v1::position::Kind) -> v1::FetchRequest {
    v1::FetchRequest {
        topic: topic.into(),
        partition,
        start: position(start),
        max_bytes: 0,
        follow: false,
        max_wait_ms: 0,
        raw_batches: false,
    }
}

/// Runs a non-follow fetch and collects every response until the stream ends.
pub async fn fetch_responses<T>(
    client: &mut HeraldClient<T>,
    request: v1::FetchRequest,
) -> Result<Vec<v1::FetchResponse>, tonic::Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let mut stream = client.fetch(request).await?.into_inner();
    let mut out = Vec::new();
    while let Some(response) = stream.message().await? {
        out.push(response);
    }
    Ok(out)
}

/// The status code of a call that must fail; panics (showing the value) if it succeeded.
#[track_caller]
pub fn code_of<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> tonic::Code {
    match result {
        Ok(value) => panic!("expected an error status, got Ok({value:?})"),
        Err(status) => status.code(),
    }
}

/// Describes a topic, which must exist.
pub async fn describe_topic(
    client: &mut HeraldClient<Channel>,
    name: &str,
) -> v1::TopicDescription {
    client
        .describe_topic(v1::DescribeTopicRequest { name: name.into() })
        .await
        .expect("topic described")
        .into_inner()
        .topic
        .expect("a description")
}

/// A minimal HTTP/1.1 GET over a plain TCP stream: returns the status code and the body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects to the HTTP endpoint");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    http_response(raw)
}

/// The status code and body of a whole HTTP/1.1 response.
pub fn http_response(raw: Vec<u8>) -> (u16, String) {
    let text = String::from_utf8(raw).expect("a UTF-8 HTTP response");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .expect("an HTTP response has a header block");
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("an HTTP status line");
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

/// Decodes an HTTP/1.1 chunked body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(size.trim(), 16).expect("a hex chunk size");
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

/// The value of the sample `series` (a metric name with its labels exactly as exposed,
/// e.g. `herald_publish_requests_total{result="ok"}`) in a Prometheus text exposition.
pub fn metric_value(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().expect("a numeric sample"))
        })
}

/// The sum of every sample of metric `name` (all its label sets) in a Prometheus text
/// exposition; 0 if it has none.
pub fn metric_sum(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let metric = series.split_once('{').map_or(series, |(m, _)| m);
            (metric == name).then(|| value.parse::<f64>().expect("a numeric sample"))
        })
        .sum()
}

// ---- consumer groups ----

/// A Join for `(topic, group)` with the given settings, starting at the earliest offset.
pub fn join(topic: &str, group: &str, settings: Option<v1::GroupSettings>) -> v1::Join {
    v1::Join {
        topic: topic.into(),
        group: group.into(),
        client_id: "test".into(),
        settings,
        start_position: position(v1::position::Kind::Earliest(v1::Earliest {})),
        ..Default::default()
    }
}

/// Group settings with short deadlines and backoffs for tests.
pub fn fast_settings(ack_deadline_ms: u32, backoff_ms: u32) -> v1::GroupSettings {
    v1::GroupSettings {
        ack_deadline_ms: Some(ack_deadline_ms),
        retry_backoff_min_ms: Some(backoff_ms),
        retry_backoff_max_ms: Some(backoff_ms),
        ..Default::default()
    }
}

/// One open Subscribe stream: the request sender and the response stream.
pub struct Member {
    pub tx: tokio::sync::mpsc::Sender<v1::SubscribeRequest>,
    pub rx: tonic::Streaming<v1::SubscribeResponse>,
    pub joined: v1::Joined,
}

/// Opens a Subscribe stream and sends `join`; returns once Joined arrives.
pub async fn subscribe(
    client: &mut HeraldClient<Channel>,
    join: v1::Join,
) -> Result<Member, tonic::Status> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tx.send(v1::SubscribeRequest {
        request: Some(v1::subscribe_request::Request::Join(join)),
    })
    .await
    .unwrap();
    let mut stream = client
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    match stream.message().await? {
        Some(v1::SubscribeResponse {
            response: Some(v1::subscribe_response::Response::Joined(joined)),
        }) => Ok(Member {
            tx,
            rx: stream,
            joined,
        }),
        other => panic!("expected Joined first, got {other:?}"),
    }
}

impl Member {
    /// The next response, or `None` after `wait` without one.
    pub async fn next(&mut self, wait: std::time::Duration) -> Option<v1::SubscribeResponse> {
        match tokio::time::timeout(wait, self.rx.message()).await {
            Ok(Ok(response)) => response,
            Ok(Err(status)) => panic!("subscribe stream failed: {status}"),
            Err(_) => None,
        }
    }

    /// Deliveries received within `wait`, stopping once `n` have arrived, and the
    /// assignment changes received meanwhile, in order.
    pub async fn deliveries(
        &mut self,
        n: usize,
        wait: std::time::Duration,
    ) -> (Vec<v1::Delivery>, Vec<v1::AssignmentChange>) {
        let deadline = tokio::time::Instant::now() + wait;
        let (mut out, mut changes) = (Vec::new(), Vec::new());
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match self.next(left).await.and_then(|r| r.response) {
                Some(v1::subscribe_response::Response::Deliveries(d)) => out.extend(d.deliveries),
                Some(v1::subscribe_response::Response::Assignment(a)) => changes.push(a),
                Some(other) => panic!("unexpected response {other:?}"),
                None => break,
            }
        }
        (out, changes)
    }

    /// Receives until an assignment change leaves this member with `count` partitions,
    /// and returns that assignment; a delivery meanwhile fails the test.
    pub async fn await_assignment(&mut self, count: usize) -> Vec<u32> {
        let deadline = tokio::time::Instant::now() + CONDITION_WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await.and_then(|r| r.response) {
                Some(v1::subscribe_response::Response::Assignment(change))
                    if change.partitions.len() == count =>
                {
                    return change.partitions;
                }
                Some(v1::subscribe_response::Response::Assignment(_)) => {}
                Some(other) => panic!("expected an assignment change, got {other:?}"),
                None => panic!("no assignment of {count} partitions within {CONDITION_WAIT:?}"),
            }
        }
    }

    pub async fn ack(&self, deliveries: &[v1::Delivery]) {
        self.tx
            .send(v1::SubscribeRequest {
                request: Some(v1::subscribe_request::Request::Ack(v1::Ack {
                    ack_ids: deliveries.iter().map(|d| d.ack_id.clone()).collect(),
                    ..Default::default()
                })),
            })
            .await
            .unwrap();
    }

    pub async fn nack(&self, delivery: &v1::Delivery, delay_ms: Option<u32>, reason: &str) {
        self.tx
            .send(v1::SubscribeRequest {
                request: Some(v1::subscribe_request::Request::Nack(v1::Nack {
                    ack_id: delivery.ack_id.clone(),
                    delay_ms,
                    reason: reason.into(),
                    ..Default::default()
                })),
            })
            .await
            .unwrap();
    }
}

/// Publishes a message of key `key` (its value too) to `partition` and checks it is the
/// next thing `member` receives, alone; then acks it. Deliveries follow offset order, so
/// anything the broker had due on this stream before it (a message that must not be sent
/// yet, or again) would arrive first or with it: a positive witness that nothing was
/// pending, where waiting a while for nothing proves little.
pub async fn marker_arrives_alone(
    client: &mut HeraldClient<Channel>,
    member: &mut Member,
    topic: &str,
    partition: u32,
    key: &str,
) {
    publish(client, topic, Some(partition), vec![record(Some(key), key)])
        .await
        .expect("the marker is published");
    let (got, _) = member.deliveries(1, CONDITION_WAIT).await;
    let values: Vec<_> = got
        .iter()
        .map(|d| String::from_utf8_lossy(&d.value).into_owned())
        .collect();
    assert_eq!(values, [key], "the marker alone was delivered: {got:?}");
    member.ack(&got).await;
}

/// Describes a group, which must exist.
pub async fn describe_group(
    client: &mut HeraldClient<Channel>,
    topic: &str,
    group: &str,
) -> v1::GroupDescription {
    client
        .describe_group(v1::DescribeGroupRequest {
            topic: topic.into(),
            group: group.into(),
        })
        .await
        .expect("group described")
        .into_inner()
        .group
        .expect("a description")
}

/// How long a test waits for a condition the broker reaches asynchronously (an ack
/// applied, a member joined, a metric counted). Generous: a condition that holds is seen
/// within milliseconds, and only a broker that never reaches it waits this long.
pub const CONDITION_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Polls `check` every 20 ms until it is true or `wait` passes; returns whether it held.
pub async fn eventually<F, Fut>(wait: std::time::Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Polls `probe` every 20 ms until it gives `Ok(value)`, and returns that value. After
/// [`CONDITION_WAIT`] it panics naming `what` and showing the last `Err` (what it saw
/// instead), so a failure says how far the broker got.
pub async fn wait_for<T, E, F, Fut>(what: &str, mut probe: F) -> T
where
    E: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + CONDITION_WAIT;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(seen) if tokio::time::Instant::now() >= deadline => {
                panic!("{what}: not within {CONDITION_WAIT:?}; last seen: {seen:#?}")
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
}

/// Text that a failure shows as it is (line breaks and all), where `wait_for` shows the
/// `Debug` form of what it saw.
pub struct Text(pub String);

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Polls DescribeGroup until `holds` is true of the description, and returns it; panics
/// with the last description after [`CONDITION_WAIT`].
pub async fn wait_for_group(
    client: &HeraldClient<Channel>,
    topic: &str,
    group: &str,
    holds: impl Fn(&v1::GroupDescription) -> bool,
) -> v1::GroupDescription {
    let what = format!("group {topic}/{group} reaches the awaited state");
    wait_for(&what, || {
        let mut client = client.clone();
        let holds = &holds;
        async move {
            let description = describe_group(&mut client, topic, group).await;
            if holds(&description) {
                Ok(description)
            } else {
                Err(description)
            }
        }
    })
    .await
}

/// The broker's Prometheus exposition, from its metrics endpoint.
pub async fn metrics(broker: &Broker) -> String {
    let addr = broker.metrics_addr.expect("the metrics endpoint is served");
    let (status, text) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200, "GET /metrics: {text}");
    text
}

/// The value of the per-group sample `name{group=..,topic=..}` in a Prometheus text
/// exposition, whichever order the labels are written in.
pub fn group_metric_value(exposition: &str, name: &str, topic: &str, group: &str) -> Option<f64> {
    let labels = [
        format!("group=\"{group}\",topic=\"{topic}\""),
        format!("topic=\"{topic}\",group=\"{group}\""),
    ];
    labels
        .iter()
        .find_map(|l| metric_value(exposition, &format!("{name}{{{l}}}")))
}

// ---- the Rust client (herald-client) ----

/// A running broker, its data dir (kept alive with it) and a Rust client connected to it.
pub struct ClientBroker {
    pub broker: Broker,
    pub client: herald_client::Client,
    _dir: tempfile::TempDir,
}

impl ClientBroker {
    /// Creates topic `name` with `partitions` partitions and the default settings.
    pub async fn create_topic(&self, name: &str, partitions: u32) {
        self.client
            .admin()
            .create_topic(name, partitions, herald_client::TopicConfig::default())
            .await
            .expect("topic created");
    }

    /// How many records topic `name` holds: the sum of its partitions' end offsets.
    pub async fn records_in(&self, name: &str) -> u64 {
        let topic = self
            .client
            .admin()
            .describe_topic(name)
            .await
            .expect("topic described");
        topic.partitions.iter().map(|p| p.end_offset.0).sum()
    }
}

/// Starts a broker on a fresh temp dir (see [`test_config`]) and connects a Rust client.
pub async fn start_with_client() -> ClientBroker {
    let dir = tempfile::tempdir().expect("a temp dir");
    let broker = start(test_config(dir.path())).await;
    let client = herald_client::Client::connect(format!("http://{}", broker.addr))
        .await
        .expect("client connects");
    ClientBroker {
        broker,
        client,
        _dir: dir,
    }
}

/// [`wait_for_group`] through the Rust client's admin API.
pub async fn wait_for_client_group(
    client: &herald_client::Client,
    topic: &str,
    group: &str,
    holds: impl Fn(&herald_client::GroupInfo) -> bool,
) -> herald_client::GroupInfo {
    let what = format!("group {topic}/{group} reaches the awaited state");
    let admin = client.admin();
    wait_for(&what, || {
        let (admin, holds) = (&admin, &holds);
        async move {
            let info = admin
                .describe_group(topic, group)
                .await
                .expect("group described");
            if holds(&info) { Ok(info) } else { Err(info) }
        }
    })
    .await
}

/// Starts a broker on `listen` with data in `dir` (for restarts on the same address).
pub async fn start_at(dir: &Path, listen: std::net::SocketAddr) -> Broker {
    start(Config {
        listen,
        ..test_config(dir)
    })
    .await
}

/// Every record of a partition, from the earliest, read back with the raw `Fetch`.
pub async fn fetch_partition(
    client: &herald_client::Client,
    topic: &str,
    partition: u32,
) -> Vec<v1::FetchedRecord> {
    let request = fetch_request(
        topic,
        partition,
        v1::position::Kind::Earliest(v1::Earliest {}),
    );
    fetch_responses(&mut client.raw(), request)
        .await
        .expect("fetch reads")
        .into_iter()
        .flat_map(|response| response.records)
        .collect()
}

/// The outcome of a delivery that must already be resolved. (Polled unconstrained:
/// Tokio's cooperative budget would make a ready oneshot look pending after a while.)
pub fn ready(
    delivery: herald_client::Delivery,
) -> Option<herald_client::Result<herald_client::Acked>> {
    use futures::FutureExt;
    tokio::task::unconstrained(delivery).now_or_never()
}
