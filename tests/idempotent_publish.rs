//! Idempotent publishing against a real broker: retried batches are stored once.
//!
//! The Rust producer publishes through a fault-injecting TCP proxy that cuts the
//! connection while the broker's replies are on their way, and restarts the broker in the middle. Acks are lost after the broker appended; the
//! producer retries; every record must then be in the log exactly once, each key's records
//! in the order they were sent. The same faults without idempotence store duplicates,
//! which shows the test can fail. Raw gRPC tests pin the wire contract: a duplicate gets
//! the first offsets, a gap is ABORTED, an older epoch is FAILED_PRECONDITION.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use herald_client::{Client, ProducerConfig, Record};
use herald_proto::v1;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TOPIC: &str = "orders";
const PARTITIONS: u32 = 3;
const KEYS: usize = 12;
/// Bound on every wait: the machine may be busy, but nothing here should take long.
const WAIT: Duration = Duration::from_secs(120);
/// Connections the proxy cuts while the records are published.
const CUTS: usize = 30;

/// A TCP proxy in front of the broker. Each time it is armed, it cuts the next
/// connection on which the broker sends something, after passing on part of what the
/// broker sent: the replies in the rest, and after it, never reach the client.
struct Proxy {
    addr: SocketAddr,
    upstream: Arc<std::sync::Mutex<SocketAddr>>,
    armed: Arc<AtomicUsize>,
    cuts_done: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream = Arc::new(std::sync::Mutex::new(upstream));
        let armed = Arc::new(AtomicUsize::new(0));
        let cuts_done = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (up, arm, done, stopping) = (
            upstream.clone(),
            armed.clone(),
            cuts_done.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            while !stopping.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let target = *up.lock().unwrap();
                let (arm, done) = (arm.clone(), done.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let upward = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    });
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let cut = arm
                            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |a| a.checked_sub(1))
                            .is_ok();
                        if cut {
                            let _ = cw.write_all(&buf[..n / 2]).await;
                            done.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    upward.abort();
                });
            }
        });
        Proxy {
            addr,
            upstream,
            armed,
            cuts_done,
            stop,
        }
    }

    fn arm(&self) {
        self.armed.fetch_add(1, Ordering::AcqRel);
    }

    fn redirect(&self, upstream: SocketAddr) {
        *self.upstream.lock().unwrap() = upstream;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Publishes `count` records over `KEYS` keys through a proxy that cuts `cuts`
/// connections, restarting the broker once halfway; returns, per key, the sequence
/// numbers found in the log in log order, and the duplicates the broker reported.
async fn publish_through_faults(idempotent: bool) -> (HashMap<String, Vec<u64>>, f64) {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(test_config(dir.path())).await;
    let mut admin = client(&broker).await;
    create_topic(&mut admin, TOPIC, PARTITIONS).await;
    let proxy = Arc::new(Proxy::start(broker.addr).await);

    let client = Client::builder(format!("http://{}", proxy.addr))
        .request_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    let producer = client.producer(
        ProducerConfig::new(TOPIC)
            .idempotent(idempotent)
            .batch_bytes(2 * 1024)
            .linger(Duration::from_millis(1))
            .max_retries(1000)
            .retry_backoff(Duration::from_millis(5), Duration::from_millis(50)),
    );
    let total = 3000u64;
    let mut deliveries = Vec::new();
    let mut broker = Some(broker);
    for i in 0..total {
        let key = format!("key-{}", i % KEYS as u64);
        deliveries.push(
            producer
                .send(Record::new(format!("{key}:{i}")).key(key))
                .await
                .unwrap(),
        );
        if i == 100 {
            // The set-up calls are done: from here on, cut a connection every few ms.
            let proxy = proxy.clone();
            tokio::spawn(async move {
                for _ in 0..CUTS {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    proxy.arm();
                }
            });
        }
        if i > 100 && i % 20 == 0 {
            // Spread the sends over the cuts: a faster publish path once finished before
            // ten connections were cut, and the faults the test is about did not happen.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if i == total / 2 {
            // A restart in the middle: whatever was in flight is retried against the
            // new process, whose producer state comes from the log and its snapshot.
            let b = broker.take().unwrap();
            let addr = b.addr;
            stop(b).await;
            let restarted = start_at(dir.path(), addr).await;
            proxy.redirect(restarted.addr);
            broker = Some(restarted);
        }
    }
    for d in deliveries {
        tokio::time::timeout(WAIT, d)
            .await
            .expect("every record is acked in time")
            .expect("every record is acked");
    }
    producer.close().await.unwrap();
    assert!(
        proxy.cuts_done.load(Ordering::Relaxed) >= 10,
        "the proxy cut only {} connections",
        proxy.cuts_done.load(Ordering::Relaxed)
    );
    let broker = broker.unwrap();
    let direct = Client::connect(format!("http://{}", broker.addr))
        .await
        .unwrap();
    let mut by_key: HashMap<String, Vec<u64>> = HashMap::new();
    for p in 0..PARTITIONS {
        for r in fetch_partition(&direct, TOPIC, p).await {
            let value = String::from_utf8(r.value.to_vec()).unwrap();
            let (key, seq) = value.split_once(':').unwrap();
            by_key
                .entry(key.to_owned())
                .or_default()
                .push(seq.parse().unwrap());
        }
    }
    let metrics = broker.metrics_addr.expect("metrics served");
    let (_, exposition) = http_get(metrics, "/metrics").await;
    let duplicates = metric_value(&exposition, "herald_publish_duplicates_total").unwrap_or(0.0);
    stop(broker).await;
    (by_key, duplicates)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_acks_and_a_restart_store_every_record_once_in_order() {
    let (by_key, _) = publish_through_faults(true).await;
    let mut stored = 0;
    for (key, seqs) in &by_key {
        stored += seqs.len();
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            seqs.len(),
            "{key}: {} records stored twice",
            seqs.len() - sorted.len()
        );
        assert_eq!(&sorted, seqs, "{key}: records out of order");
    }
    assert_eq!(stored, 3000, "every record stored exactly once");
}

/// The control: the same faults without idempotence do store duplicates, so the test
/// above would see them if the broker let them through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_idempotence_the_same_faults_store_duplicates() {
    let (by_key, duplicates) = publish_through_faults(false).await;
    let stored: usize = by_key.values().map(Vec::len).sum();
    assert_eq!(duplicates, 0.0, "no producer ids, nothing recognised");
    assert!(
        stored > 3000,
        "lost acks without idempotence should store some records twice; stored {stored}"
    );
}

fn records(values: &[&str]) -> Option<v1::publish_request::Payload> {
    Some(v1::publish_request::Payload::Records(v1::Records {
        records: values.iter().map(|v| record(Some("k"), v)).collect(),
    }))
}

fn idempotent(id: u64, epoch: u32, seq: u32, values: &[&str]) -> v1::PublishRequest {
    v1::PublishRequest {
        topic: TOPIC.into(),
        partition: Some(0),
        payload: records(values),
        producer: Some(v1::ProducerSequence {
            producer_id: id,
            epoch,
            base_sequence: seq,
        }),
    }
}

#[tokio::test]
async fn the_wire_contract_duplicates_gaps_and_fencing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(test_config(dir.path())).await;
    let mut c = client(&broker).await;
    create_topic(&mut c, TOPIC, 1).await;
    let init = |name: &str| v1::InitProducerRequest {
        producer_name: name.into(),
    };
    let anon = c.init_producer(init("")).await.unwrap().into_inner();
    assert_ne!(anon.producer_id, 0);
    assert_eq!(anon.epoch, 0);
    let id = anon.producer_id;

    let first = c
        .publish(idempotent(id, 0, 0, &["a", "b"]))
        .await
        .unwrap()
        .into_inner();
    let again = c
        .publish(idempotent(id, 0, 0, &["a", "b"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((first.base_offset, first.last_offset), (0, 1));
    assert_eq!(again, first, "a duplicate gets the first offsets");
    let next = c
        .publish(idempotent(id, 0, 2, &["c"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.base_offset, 2);
    let gap = c.publish(idempotent(id, 0, 9, &["d"])).await.unwrap_err();
    assert_eq!(gap.code(), tonic::Code::Aborted, "{gap:?}");
    assert!(
        gap.message().contains("expected sequence 3, got 9"),
        "{}",
        gap.message()
    );
    let stored = fetch_all(&mut c, TOPIC, 0, 0).await.unwrap();
    assert_eq!(stored.len(), 3, "the duplicate and the gap stored nothing");

    // A named producer: the second InitProducer fences the first instance.
    let one = c
        .init_producer(init("billing-1"))
        .await
        .unwrap()
        .into_inner();
    c.publish(idempotent(one.producer_id, one.epoch, 0, &["x"]))
        .await
        .unwrap();
    let two = c
        .init_producer(init("billing-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(two.producer_id, one.producer_id);
    assert_eq!(two.epoch, one.epoch + 1);
    let fenced = c
        .publish(idempotent(one.producer_id, one.epoch, 1, &["y"]))
        .await
        .unwrap_err();
    assert_eq!(fenced.code(), tonic::Code::FailedPrecondition, "{fenced:?}");
    assert!(
        fenced.message().contains("is fenced"),
        "{}",
        fenced.message()
    );
    c.publish(idempotent(two.producer_id, two.epoch, 0, &["z"]))
        .await
        .unwrap();

    // Bad identities and placements are refused with INVALID_ARGUMENT.
    for bad in [
        idempotent(0, 0, 0, &["zero id"]),
        idempotent(id, 70_000, 0, &["epoch too big"]),
        v1::PublishRequest {
            partition: None,
            payload: Some(v1::publish_request::Payload::Records(v1::Records {
                records: vec![record(None, "keyless, no partition")],
            })),
            ..idempotent(id, 0, 3, &[])
        },
    ] {
        let status = c.publish(bad).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    }
    let bad_name = c.init_producer(init("no/slashes")).await.unwrap_err();
    assert_eq!(bad_name.code(), tonic::Code::InvalidArgument);

    // After a restart the producer state is back: the duplicate is still recognised.
    let addr = broker.addr;
    stop(broker).await;
    let broker = start_at(dir.path(), addr).await;
    let mut c = client(&broker).await;
    let again = c
        .publish(idempotent(id, 0, 2, &["c"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.base_offset, 2);
    let fenced = c
        .publish(idempotent(one.producer_id, one.epoch, 1, &["y"]))
        .await
        .unwrap_err();
    assert_eq!(fenced.code(), tonic::Code::FailedPrecondition);
    stop(broker).await;
}

/// Two instances of one named producer through the Rust client: the older one's records
/// fail once the newer one exists, and nothing of it is stored after that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_instance_of_a_named_producer_fences_the_older() {
    let cb = start_with_client().await;
    cb.client
        .admin()
        .create_topic(TOPIC, 1, Default::default())
        .await
        .unwrap();
    let config = || {
        ProducerConfig::new(TOPIC)
            .producer_name("inventory-7")
            .linger(Duration::ZERO)
    };
    let old = cb.client.producer(config());
    old.send(Record::new("old-1").key("k"))
        .await
        .unwrap()
        .await
        .unwrap();
    let new = cb.client.producer(config());
    new.send(Record::new("new-1").key("k"))
        .await
        .unwrap()
        .await
        .unwrap();
    let refused = old
        .send(Record::new("old-2").key("k"))
        .await
        .unwrap()
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Some(tonic::Code::FailedPrecondition),
        "{refused}"
    );
    let values: Vec<_> = fetch_partition(&cb.client, TOPIC, 0)
        .await
        .into_iter()
        .map(|r| String::from_utf8(r.value.to_vec()).unwrap())
        .collect();
    assert_eq!(values, ["old-1", "new-1"]);
    stop(cb.broker).await;
}

fn with_msg_id(topic: &str, id: &str, value: &str) -> v1::PublishRequest {
    v1::PublishRequest {
        topic: topic.into(),
        partition: None,
        payload: Some(v1::publish_request::Payload::Records(v1::Records {
            records: vec![v1::Record {
                value: value.to_owned().into(),
                headers: vec![v1::Header {
                    key: "herald-msg-id".into(),
                    value: id.to_owned().into(),
                }],
                ..Default::default()
            }],
        })),
        producer: None,
    }
}

/// The message-id window: a keyless publish carrying `herald-msg-id` is placed by its id
/// and stored once per id within the topic's window, across a restart; after the window
/// it is stored again; the broker's default window is reported by DescribeTopic.
#[tokio::test]
async fn message_ids_are_stored_once_within_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(test_config(dir.path())).await;
    let mut c = client(&broker).await;
    create_topic(&mut c, "default-window", 1).await;
    let described = describe_topic(&mut c, "default-window").await;
    assert_eq!(described.config.unwrap().dedup_window_ms, Some(120_000));
    const WINDOW_MS: u64 = 1_500;
    c.create_topic(v1::CreateTopicRequest {
        name: "ids".into(),
        partitions: 4,
        config: Some(v1::TopicConfig {
            dedup_window_ms: Some(WINDOW_MS),
            ..Default::default()
        }),
        replication_factor: None,
    })
    .await
    .unwrap();

    let first = c
        .publish(with_msg_id("ids", "m-1", "a"))
        .await
        .unwrap()
        .into_inner();
    let again = c
        .publish(with_msg_id("ids", "m-1", "a"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        again, first,
        "the same id: the first publish's answer, same partition"
    );
    let other = c
        .publish(with_msg_id("ids", "m-2", "b"))
        .await
        .unwrap()
        .into_inner();
    assert!(
        (other.partition, other.base_offset) != (first.partition, first.base_offset),
        "another id is stored"
    );
    let too_long = c
        .publish(with_msg_id("ids", &"x".repeat(300), "c"))
        .await
        .unwrap_err();
    assert_eq!(too_long.code(), tonic::Code::InvalidArgument);

    // A restart: the window comes back from the log.
    let addr = broker.addr;
    stop(broker).await;
    let broker = start_at(dir.path(), addr).await;
    let mut c = client(&broker).await;
    let after_restart = c
        .publish(with_msg_id("ids", "m-1", "a"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after_restart, first);
    let stored: usize = {
        let mut n = 0;
        for p in 0..4 {
            n += fetch_all(&mut c, "ids", p, 0).await.unwrap().len();
        }
        n
    };
    assert_eq!(stored, 2, "m-1 once, m-2 once");

    // Past the window the id is forgotten: the time window itself is what is tested.
    tokio::time::sleep(Duration::from_millis(WINDOW_MS + 200)).await;
    let later = c
        .publish(with_msg_id("ids", "m-1", "a"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(later.partition, first.partition, "placed by its id");
    assert!(
        later.base_offset > first.base_offset,
        "stored again after the window"
    );
    stop(broker).await;
}
