//! The Rust producer in a cluster: three brokers in one process on 127.0.0.1, a topic of
//! three partitions with three copies each. A producer given node 1's address sends each
//! partition's batches to that partition's leader (no node forwards a publish), keeps
//! every key's records in order and exactly once through a leader's stop, and follows
//! the new leaders after it. Over TLS too: the connections to the other nodes check
//! their certificates against their own addresses.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::{TestCluster, WAIT, create_with_factor, eventually, has_topic};
use common::pki::{Ca, Validity, https_get, with_tls};
use common::{http_get, metric_value};
use futures::StreamExt;
use herald_client::{Acked, Client, Delivery, FetchConfig, Producer, ProducerConfig, Record};
use herald_proto::v1;

const TOPIC: &str = "routed";
const PARTITIONS: u32 = 3;
const KEYS: usize = 12;

/// Every partition's leader, once every running node reports the same, known leaders.
async fn agreed_leaders(cluster: &TestCluster) -> Vec<u64> {
    let mut clients = Vec::new();
    for spec in &cluster.specs {
        if cluster.brokers[cluster.index_of(spec.id)].is_some() {
            let url = format!("http://{}", spec.client);
            clients.push(Client::connect(url).await.unwrap());
        }
    }
    agreed_leaders_via(&clients).await
}

/// [`agreed_leaders`], asking each of `clients` (one per running node).
async fn agreed_leaders_via(clients: &[Client]) -> Vec<u64> {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut views = Vec::new();
        for client in clients {
            let status = client
                .raw()
                .cluster_status(v1::ClusterStatusRequest {})
                .await
                .unwrap()
                .into_inner();
            let leaders: Vec<u64> = status
                .topics
                .iter()
                .find(|t| t.name == TOPIC)
                .map(|t| t.partitions.iter().map(|p| p.leader).collect())
                .unwrap_or_default();
            views.push(leaders);
        }
        let first = views[0].clone();
        if first.len() == PARTITIONS as usize
            && !first.contains(&0)
            && views.iter().all(|v| *v == first)
        {
            return first;
        }
        assert!(Instant::now() < deadline, "no agreed leaders: {views:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `herald_forwarded_publishes_total` of each running node, by id.
async fn forwards(cluster: &TestCluster) -> BTreeMap<u64, f64> {
    forwards_tls(cluster, None).await
}

/// [`forwards`], over HTTPS trusting `ca` when given (a broker with TLS on serves its
/// metrics over TLS too).
async fn forwards_tls(cluster: &TestCluster, ca: Option<&Ca>) -> BTreeMap<u64, f64> {
    let mut by_node = BTreeMap::new();
    for spec in &cluster.specs {
        let Some(broker) = &cluster.brokers[cluster.index_of(spec.id)] else {
            continue;
        };
        let addr = broker.metrics_addr.expect("metrics");
        let (_, exposition) = match ca {
            None => http_get(addr, "/metrics").await,
            Some(ca) => https_get(addr, ca, None, "/metrics").await.unwrap(),
        };
        let n = metric_value(&exposition, "herald_forwarded_publishes_total")
            .expect("the broker exports herald_forwarded_publishes_total");
        by_node.insert(spec.id, n);
    }
    by_node
}

/// What was sent: for each key, how many records so far; and every delivery with its
/// key and number.
#[derive(Default)]
struct Sent {
    next: [u64; KEYS],
    pending: Vec<(usize, u64, Delivery)>,
    acked: Vec<(usize, u64, Acked)>,
}

impl Sent {
    /// Sends one record for each key, `rounds` times.
    async fn send(&mut self, producer: &Producer, rounds: usize) {
        for _ in 0..rounds {
            for k in 0..KEYS {
                let seq = self.next[k];
                self.next[k] += 1;
                let record = Record::new(format!("k{k}:{seq}")).key(format!("k{k}"));
                let delivery = producer.send(record).await.expect("queued");
                self.pending.push((k, seq, delivery));
            }
        }
    }

    /// Waits for every pending delivery; each must be acked.
    async fn settle(&mut self) {
        for (k, seq, delivery) in self.pending.drain(..) {
            let acked = tokio::time::timeout(2 * WAIT, delivery)
                .await
                .expect("acked in time")
                .unwrap_or_else(|e| panic!("k{k}:{seq} failed: {e}"));
            self.acked.push((k, seq, acked));
        }
    }
}

/// Reads every partition back through `client` and checks: each acked record is stored
/// where its ack said, and each key's records are stored once each, in the order sent.
async fn check_stored(client: &Client, sent: &Sent) {
    let total: u64 = sent.next.iter().sum();
    let deadline = Instant::now() + WAIT;
    let stored = loop {
        let mut stored = BTreeMap::new();
        for p in 0..PARTITIONS {
            let mut records = client.fetch(FetchConfig::new(TOPIC, p)).await.unwrap();
            while let Some(record) = records.next().await {
                let record = record.unwrap();
                let value = String::from_utf8(record.value.to_vec()).unwrap();
                stored.insert((p, record.offset.0), value);
            }
        }
        if stored.len() as u64 >= total || Instant::now() > deadline {
            break stored;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(stored.len() as u64, total, "every record stored once");
    for (k, seq, acked) in &sent.acked {
        assert_eq!(
            stored.get(&(acked.partition.0, acked.offset.0)),
            Some(&format!("k{k}:{seq}")),
            "k{k}:{seq} is where its ack said"
        );
    }
    let mut seen = [0u64; KEYS];
    for value in stored.values() {
        let (key, seq) = value.split_once(':').unwrap();
        let k: usize = key[1..].parse().unwrap();
        let seq: u64 = seq.parse().unwrap();
        assert_eq!(seq, seen[k], "k{k}'s records in the order sent, once each");
        seen[k] += 1;
    }
    assert_eq!(seen, sent.next);
}

async fn start() -> TestCluster {
    let cluster = TestCluster::start(3).await;
    cluster.leader().await;
    create_with_factor(&mut cluster.client(1).await, TOPIC, PARTITIONS, Some(3)).await;
    eventually("every node has the topic", || {
        cluster.running().all(|b| has_topic(b, TOPIC))
    })
    .await;
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_producer_sends_each_partition_to_its_leader_and_follows_a_failover() {
    let mut cluster = start().await;
    let leaders = agreed_leaders(&cluster).await;
    assert!(
        leaders.iter().any(|&l| l != 1),
        "another node leads a partition"
    );
    let address = cluster.specs[cluster.index_of(1)].client;
    let client = Client::connect(format!("http://{address}")).await.unwrap();
    let producer = client.producer(ProducerConfig::new(TOPIC).max_retries(30));
    let mut sent = Sent::default();

    // (a) Every partition's batches go straight to its leader: no node forwards one.
    let before = forwards(&cluster).await;
    assert!(before.values().all(|n| *n == 0.0), "{before:?}");
    sent.send(&producer, 20).await;
    sent.settle().await;
    let partitions: std::collections::BTreeSet<u32> =
        sent.acked.iter().map(|(_, _, a)| a.partition.0).collect();
    assert_eq!(
        partitions.len(),
        PARTITIONS as usize,
        "keys cover every partition"
    );
    let after = forwards(&cluster).await;
    assert_eq!(
        after, before,
        "no publish was forwarded (leaders {leaders:?})"
    );

    // (b) A partition's leader stops while the producer keeps sending: its batches are
    // retried until a new leader takes them, and nothing is lost or reordered.
    let victim = leaders.iter().copied().find(|&l| l != 1).unwrap_or(1);
    eprintln!("leaders {leaders:?}; stopping node {victim}");
    sent.send(&producer, 5).await;
    cluster.stop(victim).await;
    for _ in 0..20 {
        sent.send(&producer, 1).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sent.settle().await;
    cluster.restart(victim).await;
    eventually("the restarted node has the topic", || {
        has_topic(cluster.node(victim), TOPIC)
    })
    .await;
    let leaders_now = agreed_leaders(&cluster).await;
    sent.send(&producer, 5).await;
    sent.settle().await;

    // Routing follows the new leaders: soon a round of sends is forwarded by no node
    // (the producer asks again at the latest 10 s after its last refresh).
    let deadline = Instant::now() + WAIT;
    loop {
        let before = forwards(&cluster).await;
        sent.send(&producer, 10).await;
        sent.settle().await;
        let after = forwards(&cluster).await;
        if after == before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "publishes still forwarded ({before:?} -> {after:?}; leaders {leaders_now:?})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        producer.retried_batches() > 0,
        "the stop made batches retry"
    );
    producer.close().await.unwrap();

    check_stored(&client, &sent).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_producer_keeps_sending_while_the_node_it_was_given_is_down() {
    let mut cluster = start().await;
    agreed_leaders(&cluster).await;
    let address = cluster.specs[cluster.index_of(1)].client;
    let client = Client::connect(format!("http://{address}")).await.unwrap();
    let producer = client.producer(ProducerConfig::new(TOPIC).max_retries(30));
    let mut sent = Sent::default();
    sent.send(&producer, 10).await;
    sent.settle().await;

    // Node 1 stops: the partitions it led move, and the producer learns where from the
    // other nodes (node 1 cannot answer ClusterStatus).
    cluster.stop(1).await;
    for _ in 0..20 {
        sent.send(&producer, 1).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sent.settle().await;
    let before = forwards(&cluster).await;
    sent.send(&producer, 10).await;
    sent.settle().await;
    assert_eq!(
        forwards(&cluster).await,
        before,
        "with node 1 down, batches go to the new leaders directly"
    );

    cluster.restart(1).await;
    eventually("node 1 has the topic", || has_topic(cluster.node(1), TOPIC)).await;
    sent.send(&producer, 5).await;
    sent.settle().await;
    producer.close().await.unwrap();
    let other = cluster.specs[cluster.index_of(2)].client;
    let reader = Client::connect(format!("http://{other}")).await.unwrap();
    check_stored(&reader, &sent).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_producer_checks_each_nodes_certificate_by_its_address() {
    // Every node's client port speaks TLS with a certificate naming localhost and
    // 127.0.0.1. The producer is given node 1 as `localhost`; the cluster names the
    // other nodes by IP address, which their certificates must name.
    let ca = Arc::new(Ca::new("routing CA"));
    let server = Arc::new(ca.server(&["localhost", "127.0.0.1"], Validity::Now));
    let cluster = TestCluster::start_with(
        3,
        |_| "127.0.0.1",
        Box::new(move |spec, config| {
            let dir = spec
                .dir
                .parent()
                .unwrap()
                .join(format!("client-tls-{}", spec.id));
            std::fs::create_dir_all(&dir).unwrap();
            *config = with_tls(std::mem::take(config), &dir, &server, None);
        }),
    )
    .await;
    cluster.leader().await;
    let connect = |host: &str, id: u64| {
        let port = cluster.specs[cluster.index_of(id)].client.port();
        Client::builder(format!("https://{host}:{port}"))
            .tls_ca_pem(&ca.pem)
            .connect()
    };
    let client = connect("localhost", 1).await.unwrap();
    client
        .raw()
        .create_topic(v1::CreateTopicRequest {
            name: TOPIC.into(),
            partitions: PARTITIONS,
            config: None,
            replication_factor: Some(3),
        })
        .await
        .unwrap();
    eventually("every node has the topic", || {
        cluster.running().all(|b| has_topic(b, TOPIC))
    })
    .await;
    let mut clients = vec![client.clone()];
    for id in [2, 3] {
        clients.push(connect("127.0.0.1", id).await.unwrap());
    }
    let leaders = agreed_leaders_via(&clients).await;
    assert!(
        leaders.iter().any(|&l| l != 1),
        "another node leads a partition"
    );

    let producer = client.producer(ProducerConfig::new(TOPIC));
    let mut sent = Sent::default();
    let before = forwards_tls(&cluster, Some(&ca)).await;
    sent.send(&producer, 20).await;
    sent.settle().await;
    producer.close().await.unwrap();
    assert_eq!(
        forwards_tls(&cluster, Some(&ca)).await,
        before,
        "no publish was forwarded: the producer reached every leader over TLS (leaders {leaders:?})"
    );
    check_stored(&client, &sent).await;
    cluster.shutdown().await;
}
