//! Replicated partitions in one process: three brokers on 127.0.0.1, each partition a
//! group of three replicas. Every acknowledged publish is on every replica at its
//! acknowledged offset, through a leader's stop, a restart, and an isolated leader that
//! must acknowledge nothing.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::cluster::{TestCluster, WAIT, create, eventually, has_topic, keyed, publish_retrying};
use common::record_panics;
use herald_proto::HeraldClient;
use herald_proto::v1;
use tonic::transport::Channel;

const TOPIC: &str = "replicated";
const PARTITIONS: u32 = 2;

/// Acknowledged records: partition → offset → (key, value).
type Acked = BTreeMap<u32, BTreeMap<u64, (String, String)>>;

async fn publish_keyed(
    client: &mut HeraldClient<Channel>,
    acked: &mut Acked,
    round: &str,
    count: usize,
) {
    for i in 0..count {
        let (key, value) = (format!("k{}", i % 7), format!("{round}-{i}"));
        let answer = publish_retrying(client, keyed(TOPIC, &key, &value)).await;
        assert_eq!(answer.base_offset, answer.last_offset);
        let previous = acked
            .entry(answer.partition)
            .or_default()
            .insert(answer.base_offset, (key, value));
        assert!(previous.is_none(), "offset acknowledged twice: {answer:?}");
    }
}

/// Every committed record of `partition` on the node `client` talks to (a replica
/// serves reads from its own log).
async fn read_all(
    client: &mut HeraldClient<Channel>,
    topic: &str,
    partition: u32,
) -> BTreeMap<u64, (String, String)> {
    let mut records = BTreeMap::new();
    let mut stream = client
        .fetch(v1::FetchRequest {
            topic: topic.into(),
            partition,
            start: Some(v1::Position {
                kind: Some(v1::position::Kind::Offset(0)),
            }),
            follow: false,
            ..Default::default()
        })
        .await
        .expect("fetch opens")
        .into_inner();
    while let Some(response) = stream.message().await.expect("the fetch stays healthy") {
        for r in response.records {
            let key = String::from_utf8(r.key.unwrap_or_default().to_vec()).unwrap();
            let value = String::from_utf8(r.value.to_vec()).unwrap();
            records.insert(r.offset, (key, value));
        }
    }
    records
}

/// Waits until the node `id` holds exactly the acknowledged records, at their offsets.
async fn holds_exactly(cluster: &TestCluster, id: u64, acked: &Acked) {
    holds_exactly_in(cluster, id, TOPIC, PARTITIONS, acked).await;
}

/// Waits until the node `id` holds exactly the acknowledged records of `topic`'s
/// `partitions` partitions, at their offsets.
async fn holds_exactly_in(
    cluster: &TestCluster,
    id: u64,
    topic: &str,
    partitions: u32,
    acked: &Acked,
) {
    let mut client = cluster.client(id).await;
    let deadline = Instant::now() + WAIT;
    for partition in 0..partitions {
        let want = acked.get(&partition).cloned().unwrap_or_default();
        loop {
            let got = read_all(&mut client, topic, partition).await;
            if got == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} partition {partition}: holds {} records, {} acknowledged; first difference at {:?}",
                got.len(),
                want.len(),
                want.iter().find(|(o, r)| got.get(o) != Some(r))
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Offsets dense from 0, and each key's records in the order they were published.
fn check_order(acked: &Acked) {
    for (partition, records) in acked {
        let offsets: Vec<u64> = records.keys().copied().collect();
        let dense: Vec<u64> = (0..offsets.len() as u64).collect();
        assert_eq!(offsets, dense, "partition {partition}: offsets not dense");
        let mut last: BTreeMap<&str, (&str, usize)> = BTreeMap::new();
        for (key, value) in records.values() {
            let (round, i) = value.rsplit_once('-').unwrap();
            let i: usize = i.parse().unwrap();
            if let Some((last_round, last_i)) = last.get(key.as_str())
                && *last_round == round
            {
                assert!(i > *last_i, "key {key} reordered in partition {partition}");
            }
            last.insert(key, (round, i));
        }
    }
}

/// The leader of `partition` as node `id` reports it (0 while unknown).
async fn leader_of(cluster: &TestCluster, id: u64, partition: u32) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let status = cluster.status(id).await;
        let leader = status
            .topics
            .iter()
            .find(|t| t.name == TOPIC)
            .and_then(|t| t.partitions.get(partition as usize))
            .map_or(0, |p| p.leader);
        if leader != 0 {
            return leader;
        }
        assert!(
            Instant::now() < deadline,
            "partition {partition} has no leader"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_a_leader_stop_a_restart_and_an_isolated_leader() {
    record_panics();
    let mut cluster = TestCluster::start(3).await;
    cluster.leader().await;
    create(&mut cluster.client(1).await, TOPIC, PARTITIONS).await;
    for broker in cluster.running() {
        eventually("every node holds the topic", || has_topic(broker, TOPIC)).await;
    }
    let mut acked = Acked::new();

    // Publishes through every node (two of three forward to the group's leader); every
    // replica holds them all.
    for id in 1..=3 {
        publish_keyed(
            &mut cluster.client(id).await,
            &mut acked,
            &format!("a{id}"),
            15,
        )
        .await;
    }
    for id in 1..=3 {
        holds_exactly(&cluster, id, &acked).await;
    }

    // The leader of partition 0 stops: the others elect a leader and go on.
    let stopped = leader_of(&cluster, 1, 0).await;
    let survivor = (1..=3).find(|id| *id != stopped).unwrap();
    cluster.stop(stopped).await;
    let stop_at = Instant::now();
    let mut client = cluster.client(survivor).await;
    let (key, value) = ("k0", "b-0");
    let first = publish_retrying(&mut client, keyed(TOPIC, key, value)).await;
    eprintln!(
        "failover: partition {} acknowledged again {:?} after node {stopped} stopped",
        first.partition,
        stop_at.elapsed()
    );
    acked
        .entry(first.partition)
        .or_default()
        .insert(first.base_offset, (key.into(), value.into()));
    publish_keyed(&mut client, &mut acked, "c", 30).await;
    for id in (1..=3).filter(|id| *id != stopped) {
        holds_exactly(&cluster, id, &acked).await;
    }

    // It restarts and catches up from the others' logs.
    cluster.restart(stopped).await;
    publish_keyed(&mut cluster.client(stopped).await, &mut acked, "d", 10).await;
    for id in 1..=3 {
        holds_exactly(&cluster, id, &acked).await;
    }

    // An idempotent producer's retry is answered with the first offsets, never stored
    // twice, also when it reaches the leader through another node.
    let mut c1 = cluster.client(1).await;
    let producer = c1
        .init_producer(v1::InitProducerRequest::default())
        .await
        .unwrap()
        .into_inner();
    let stamped = v1::PublishRequest {
        partition: Some(1),
        producer: Some(v1::ProducerSequence {
            producer_id: producer.producer_id,
            epoch: producer.epoch,
            base_sequence: 0,
        }),
        ..keyed(TOPIC, "idem", "e-0")
    };
    let once = publish_retrying(&mut c1, stamped.clone()).await;
    for id in 1..=3 {
        let again = publish_retrying(&mut cluster.client(id).await, stamped.clone()).await;
        assert_eq!(
            (again.base_offset, again.last_offset),
            (once.base_offset, once.last_offset),
            "retry through node {id}"
        );
    }
    acked
        .entry(1)
        .or_default()
        .insert(once.base_offset, ("idem".into(), "e-0".into()));
    for id in 1..=3 {
        holds_exactly(&cluster, id, &acked).await;
    }

    // The leader of partition 1 is cut off from the others: a publish it takes is never
    // acknowledged; the others elect a leader and take publishes; healed, the old leader
    // cuts what it alone held and holds exactly what was acknowledged.
    let isolated = leader_of(&cluster, 1, 1).await;
    let others: Vec<u64> = (1..=3).filter(|id| *id != isolated).collect();
    cluster
        .node(isolated)
        .cluster
        .as_ref()
        .unwrap()
        .set_isolated(true);
    let refused = cluster
        .client(isolated)
        .await
        .publish(v1::PublishRequest {
            partition: Some(1),
            ..keyed(TOPIC, "lost", "never-acknowledged")
        })
        .await;
    assert!(
        refused.is_err(),
        "an isolated leader acknowledged a publish: {refused:?}"
    );
    let mut majority = cluster.client(others[0]).await;
    let taken = publish_retrying(
        &mut majority,
        v1::PublishRequest {
            partition: Some(1),
            ..keyed(TOPIC, "k1", "f-0")
        },
    )
    .await;
    acked
        .entry(1)
        .or_default()
        .insert(taken.base_offset, ("k1".into(), "f-0".into()));
    for id in &others {
        holds_exactly(&cluster, *id, &acked).await;
    }
    cluster
        .node(isolated)
        .cluster
        .as_ref()
        .unwrap()
        .set_isolated(false);
    for id in 1..=3 {
        holds_exactly(&cluster, id, &acked).await;
    }

    check_order(&acked);
    cluster.shutdown().await;
}

/// A consumer group on any replica delivers the committed records, including those
/// published through another node after it joined, each once, in offset order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_group_on_any_replica_delivers_the_committed_records() {
    record_panics();
    let cluster = TestCluster::start(3).await;
    cluster.leader().await;
    for id in 1..=3u64 {
        let topic = format!("grouped-{id}");
        create(&mut cluster.client(1).await, &topic, 1).await;
        for broker in cluster.running() {
            eventually("every node holds the topic", || has_topic(broker, &topic)).await;
        }
        let to_topic = |value: String| v1::PublishRequest {
            topic: topic.clone(),
            ..keyed(TOPIC, "k", &value)
        };
        let mut publisher = cluster.client(1).await;
        for i in 0..10 {
            publish_retrying(&mut publisher, to_topic(format!("before-{i}"))).await;
        }
        let mut member = common::subscribe(
            &mut cluster.client(id).await,
            common::join(&topic, "g", None),
        )
        .await
        .expect("joins on a replica");
        let mut delivered: Vec<(u64, String)> = Vec::new();
        let deadline = Instant::now() + WAIT;
        let mut published_after = false;
        while delivered.len() < 15 {
            if delivered.len() >= 10 && !published_after {
                // Published after the group started, through another node.
                let mut other = cluster.client(id % 3 + 1).await;
                for i in 0..5 {
                    publish_retrying(&mut other, to_topic(format!("after-{i}"))).await;
                }
                published_after = true;
            }
            assert!(Instant::now() < deadline, "node {id}: {delivered:?}");
            let (deliveries, _) = member.deliveries(1, Duration::from_secs(1)).await;
            member.ack(&deliveries).await;
            for d in deliveries {
                delivered.push((d.offset, String::from_utf8(d.value.to_vec()).unwrap()));
            }
        }
        let want: Vec<(u64, String)> = (0..10)
            .map(|i| format!("before-{i}"))
            .chain((0..5).map(|i| format!("after-{i}")))
            .enumerate()
            .map(|(o, v)| (o as u64, v))
            .collect();
        assert_eq!(
            delivered, want,
            "node {id}: each record once, in offset order"
        );
    }
    cluster.shutdown().await;
}

/// Replacing a node: node 4 is started and added, then node 3 removed. Node 3's replicas
/// move to node 4 (placement keeps three copies), each partition's leader adds node 4's
/// empty replica, which catches up from the log, and drops node 3; node 3 is stopped.
/// Publishing goes on throughout; afterwards nodes 1, 2 and 4 each hold exactly the
/// acknowledged records at their offsets, node 4 serves reads from its own log, and the
/// two partitions still take publishes with node 3 gone and then with node 1 stopped too
/// (nodes 2 and 4 are a majority of each group only if node 4 votes in it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_node_hands_its_replicas_to_the_new_one_which_catches_up() {
    let mut cluster = TestCluster::start(3).await;
    create(&mut cluster.client(1).await, TOPIC, PARTITIONS).await;
    let mut acked = Acked::new();
    let mut client = cluster.client(1).await;
    publish_keyed(&mut client, &mut acked, "before", 200).await;

    let new = cluster.start_joiner().await;
    let spec = &cluster.specs[cluster.index_of(new)];
    let (client_address, peer_address) = (spec.client.to_string(), spec.peer.to_string());
    let mut admin = cluster.client(2).await;
    admin
        .add_node(v1::AddNodeRequest {
            node_id: new,
            client_address,
            peer_address,
        })
        .await
        .expect("node added");
    let joined = cluster.brokers[cluster.index_of(new)].as_ref().unwrap();
    eventually("the new node has the topic", || has_topic(joined, TOPIC)).await;
    publish_keyed(&mut client, &mut acked, "added", 50).await;

    let removed = admin
        .remove_node(v1::RemoveNodeRequest { node_id: 3 })
        .await
        .expect("node 3 removed")
        .into_inner();
    let ids: Vec<u64> = removed.nodes.iter().map(|n| n.node_id).collect();
    assert_eq!(ids, vec![1, 2, new]);
    let status = admin
        .cluster_status(v1::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let topic = status.topics.iter().find(|t| t.name == TOPIC).unwrap();
    for partition in &topic.partitions {
        let mut replicas = partition.replicas.clone();
        replicas.sort();
        assert_eq!(replicas, vec![1, 2, new], "{topic:?}");
    }
    publish_keyed(&mut client, &mut acked, "moving", 50).await;

    // The new replica catches up from its group's log, and each partition's leader
    // reports every replica a voter with nothing left to send.
    holds_exactly(&cluster, new, &acked).await;
    for partition in 0..PARTITIONS {
        let deadline = Instant::now() + WAIT;
        loop {
            let leader = leader_of(&cluster, 1, partition).await;
            let lag = cluster
                .status(leader)
                .await
                .topics
                .into_iter()
                .find(|t| t.name == TOPIC)
                .unwrap()
                .partitions[partition as usize]
                .lag
                .clone();
            let seen: Vec<(u64, u64, bool)> = lag
                .iter()
                .map(|l| (l.node, l.entries_behind, l.voter))
                .collect();
            if seen == [(1, 0, true), (2, 0, true), (new, 0, true)] {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "partition {partition}'s leader {leader} reports {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // A node that does not lead a partition leaves its lag empty.
    let status = cluster.status(new).await;
    for p in &status
        .topics
        .iter()
        .find(|t| t.name == TOPIC)
        .unwrap()
        .partitions
    {
        assert_eq!(p.lag.is_empty(), p.leader != new, "{p:?}");
    }
    cluster.stop(3).await;
    publish_keyed(&mut client, &mut acked, "replaced", 50).await;
    for id in [1, 2, new] {
        holds_exactly(&cluster, id, &acked).await;
    }
    // With node 3 gone, nodes 2 and 4 are a majority of each group only if node 4 votes.
    cluster.stop(1).await;
    let mut client = cluster.client(2).await;
    publish_keyed(&mut client, &mut acked, "without-1", 20).await;
    for id in [2, new] {
        holds_exactly(&cluster, id, &acked).await;
    }
    check_order(&acked);
    cluster.shutdown().await;
}

/// Each partition's replicas as placed (the preferred leader first) and its leader, as
/// node `id` reports them.
async fn placement(cluster: &TestCluster, id: u64, topic: &str) -> Vec<(Vec<u64>, u64)> {
    cluster
        .status(id)
        .await
        .topics
        .into_iter()
        .find(|t| t.name == topic)
        .map(|t| {
            t.partitions
                .into_iter()
                .map(|p| (p.replicas, p.leader))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether every running node reports each partition of `topic` led by its preferred
/// replica.
async fn preferred_leaders(cluster: &TestCluster, topic: &str, partitions: u32) -> bool {
    for broker in cluster.running() {
        let id = broker.cluster.as_ref().unwrap().node_id();
        let seen = placement(cluster, id, topic).await;
        if seen.len() != partitions as usize
            || seen
                .iter()
                .any(|(replicas, leader)| replicas.first() != Some(leader))
        {
            return false;
        }
    }
    true
}

/// Publishes keyed records, one per partition in turn, through one node as an idempotent
/// producer (a retry after an unknown outcome is stored once), until `stop` is set;
/// returns what was acknowledged and when each publish started and how long it took,
/// retries included.
async fn publish_until(
    mut client: HeraldClient<Channel>,
    topic: &'static str,
    partitions: u32,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (Acked, Vec<(Instant, Duration)>) {
    let producer = client
        .init_producer(v1::InitProducerRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut sequences = vec![0u32; partitions as usize];
    let mut acked = Acked::new();
    let mut took = Vec::new();
    let mut i = 0usize;
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        let partition = (i % partitions as usize) as u32;
        let (key, value) = (format!("k{}", i % 7), format!("r-{i}"));
        let request = v1::PublishRequest {
            partition: Some(partition),
            producer: Some(v1::ProducerSequence {
                producer_id: producer.producer_id,
                epoch: producer.epoch,
                base_sequence: sequences[partition as usize],
            }),
            ..keyed(topic, &key, &value)
        };
        let started = Instant::now();
        let answer = publish_retrying(&mut client, request).await;
        took.push((started, started.elapsed()));
        sequences[partition as usize] += 1;
        let previous = acked
            .entry(answer.partition)
            .or_default()
            .insert(answer.base_offset, (key, value));
        assert!(previous.is_none(), "offset acknowledged twice: {answer:?}");
        i += 1;
    }
    (acked, took)
}

/// A node that led some partitions stops; the others take its partitions over. When it
/// returns and has caught up, each partition's leadership goes back to its preferred
/// replica (spreading leaders over the nodes again) and stays there, while publishes go
/// on; every node holds exactly the acknowledged records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_returns_to_the_preferred_replicas_when_a_node_comes_back() {
    const REBALANCED: &str = "rebalanced";
    const PARTS: u32 = 6;
    /// How soon after the node's restart every partition must be led by its preferred
    /// replica again.
    const REBALANCE_WAIT: Duration = Duration::from_secs(15);
    record_panics();
    // RUST_LOG=herald_broker=info shows each hand-over and the pause it cost.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut cluster = TestCluster::start(3).await;
    cluster.leader().await;
    create(&mut cluster.client(1).await, REBALANCED, PARTS).await;
    for broker in cluster.running() {
        eventually("every node holds the topic", || {
            has_topic(broker, REBALANCED)
        })
        .await;
    }
    let deadline = Instant::now() + WAIT;
    while !preferred_leaders(&cluster, REBALANCED, PARTS).await {
        assert!(
            Instant::now() < deadline,
            "partitions are first led by their preferred replicas: {:?}",
            placement(&cluster, 1, REBALANCED).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The preferred leader of partition 0 (placement gives each node two of the six).
    let stopped = placement(&cluster, 1, REBALANCED).await[0].0[0];
    let through = (1..=3).find(|id| *id != stopped).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = tokio::spawn(publish_until(
        cluster.client(through).await,
        REBALANCED,
        PARTS,
        stop.clone(),
    ));
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let stopped_at = Instant::now();
    cluster.stop(stopped).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let seen = placement(&cluster, through, REBALANCED).await;
        if seen
            .iter()
            .all(|(_, leader)| *leader != 0 && *leader != stopped)
        {
            break;
        }
        assert!(Instant::now() < deadline, "no failover: {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let led_by_others = placement(&cluster, through, REBALANCED).await;

    cluster.restart(stopped).await;
    let restarted = Instant::now();
    while !preferred_leaders(&cluster, REBALANCED, PARTS).await {
        assert!(
            restarted.elapsed() < REBALANCE_WAIT,
            "node {stopped} restarted {REBALANCE_WAIT:?} ago, leaders are still {:?} (before: {led_by_others:?})",
            placement(&cluster, through, REBALANCED).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "rebalance: every partition led by its preferred replica {:?} after node {stopped} restarted",
        restarted.elapsed()
    );
    // And it stays so: nothing hands leadership on again.
    let steady = Instant::now();
    while steady.elapsed() < Duration::from_secs(3) {
        assert!(
            preferred_leaders(&cluster, REBALANCED, PARTS).await,
            "leadership moved again: {:?}",
            placement(&cluster, through, REBALANCED).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    stop.store(true, std::sync::atomic::Ordering::Release);
    let (acked, took) = publisher.await.expect("the publisher does not panic");
    let count: usize = acked.values().map(BTreeMap::len).sum();
    let slowest = |from: Instant, to: Instant| {
        took.iter()
            .filter(|(at, took)| *at + *took >= from && *at + *took < to)
            .map(|(_, took)| *took)
            .max()
            .unwrap_or_default()
    };
    eprintln!(
        "rebalance: {count} records acknowledged; the slowest publish answered before the stop took {:?}, until the restart {:?}, from the restart on {:?}",
        slowest(started, stopped_at),
        slowest(stopped_at, restarted),
        slowest(restarted, Instant::now())
    );
    for id in 1..=3 {
        holds_exactly_in(&cluster, id, REBALANCED, PARTS, &acked).await;
    }
    check_order(&acked);
    cluster.shutdown().await;
}

const RETAINED: &str = "retained";

/// Three nodes whose batches fit 4 KiB segments.
async fn small_batch_cluster() -> TestCluster {
    TestCluster::start_with(
        3,
        |_| "127.0.0.1",
        Box::new(|_, config| {
            config.max_batch_bytes = 4096;
            config.max_message_bytes = 4096;
        }),
    )
    .await
}

/// Creates `RETAINED`, one partition on all three nodes, in 4 KiB segments, with
/// `retention_bytes` (8 KiB keeps about two).
async fn create_retained(client: &mut HeraldClient<Channel>, retention_bytes: Option<u64>) {
    client
        .create_topic(v1::CreateTopicRequest {
            name: RETAINED.into(),
            partitions: 1,
            config: Some(v1::TopicConfig {
                segment_bytes: Some(4096),
                retention_bytes,
                ..Default::default()
            }),
            replication_factor: Some(3),
        })
        .await
        .expect("topic created");
}

/// Publishes `count` records of about 300 bytes to `RETAINED`, recording each
/// acknowledged offset.
async fn publish_retained(
    client: &mut HeraldClient<Channel>,
    acked: &mut BTreeMap<u64, String>,
    round: &str,
    count: usize,
) {
    for i in 0..count {
        let value = format!("{round}-{i}-{}", "x".repeat(300));
        let request = v1::PublishRequest {
            topic: RETAINED.into(),
            partition: Some(0),
            payload: Some(v1::publish_request::Payload::Records(v1::Records {
                records: vec![common::record(None, &value)],
            })),
            producer: None,
        };
        let answer = publish_retrying(client, request).await;
        assert!(
            acked.insert(answer.base_offset, value).is_none(),
            "offset acknowledged twice: {answer:?}"
        );
    }
}

/// The first offset node `id`'s replica of `RETAINED` holds.
fn start_offset(cluster: &TestCluster, id: u64) -> u64 {
    cluster
        .node(id)
        .registry
        .get(RETAINED)
        .unwrap()
        .partition(0)
        .unwrap()
        .reader()
        .start_offset()
}

/// Every record node `id` serves of `RETAINED`, from its start offset; `None` if
/// retention moved the start while they were read (then the caller reads again).
async fn retained_records(cluster: &TestCluster, id: u64) -> Option<BTreeMap<u64, String>> {
    let mut client = cluster.client(id).await;
    let from = start_offset(cluster, id);
    let mut records = BTreeMap::new();
    let below_start = |status: &tonic::Status| status.code() == tonic::Code::OutOfRange;
    let mut stream = match client
        .fetch(v1::FetchRequest {
            topic: RETAINED.into(),
            partition: 0,
            start: Some(v1::Position {
                kind: Some(v1::position::Kind::Offset(from)),
            }),
            follow: false,
            ..Default::default()
        })
        .await
    {
        Ok(stream) => stream.into_inner(),
        Err(status) if below_start(&status) => return None,
        Err(status) => panic!("fetch refused: {status:?}"),
    };
    loop {
        match stream.message().await {
            Ok(Some(response)) => {
                for r in response.records {
                    records.insert(r.offset, String::from_utf8(r.value.to_vec()).unwrap());
                }
            }
            Ok(None) => return Some(records),
            Err(status) if below_start(&status) => return None,
            Err(status) => panic!("the fetch failed: {status:?}"),
        }
    }
}

/// Waits until node `id` starts at `start` and holds exactly the acknowledged records
/// from there.
async fn retains_exactly(
    cluster: &TestCluster,
    id: u64,
    start: u64,
    acked: &BTreeMap<u64, String>,
) {
    let want: BTreeMap<u64, String> = acked.range(start..).map(|(o, v)| (*o, v.clone())).collect();
    let deadline = Instant::now() + WAIT;
    loop {
        let got_start = start_offset(cluster, id);
        let got = retained_records(cluster, id).await.unwrap_or_default();
        if got_start == start && got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {id}: starts at {got_start} (want {start}), holds {} records ({} acknowledged from {start}); first difference at {:?}",
            got.len(),
            want.len(),
            want.iter().find(|(o, v)| got.get(o) != Some(v))
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every running node's replica of `RETAINED` starts at the same offset,
/// above `above`, and retention has settled there (nothing moved for 2.5 s, in which
/// each replica checks its retention twice), and returns that offset.
async fn retention_moved(cluster: &TestCluster, above: u64) -> u64 {
    let deadline = Instant::now() + WAIT;
    let seen = || -> Vec<(u64, usize)> {
        cluster
            .specs
            .iter()
            .filter(|s| cluster.brokers[cluster.index_of(s.id)].is_some())
            .map(|s| (start_offset(cluster, s.id), segment_files(cluster, s.id)))
            .collect()
    };
    loop {
        let before = seen();
        if before
            .iter()
            .all(|(start, _)| *start > above && *start == before[0].0)
        {
            tokio::time::sleep(Duration::from_millis(2500)).await;
            if seen() == before {
                return before[0].0;
            }
        }
        assert!(
            Instant::now() < deadline,
            "retention did not move every replica's start past {above} (start, segment files): {before:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Segment files in node `id`'s directory of `RETAINED`'s partition.
fn segment_files(cluster: &TestCluster, id: u64) -> usize {
    let dir = cluster.specs[cluster.index_of(id)]
        .dir
        .join("topics")
        .join(RETAINED)
        .join("0");
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            let name = name.to_string_lossy();
            name.ends_with(".log") && !name.starts_with("next") && !name.starts_with("recycled")
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_segments_on_every_replica_and_a_restart_keeps_the_start() {
    record_panics();
    let mut cluster = small_batch_cluster().await;
    let mut client = cluster.client(1).await;
    create_retained(&mut client, None).await;
    for id in 1..=3 {
        let node = cluster.node(id);
        eventually("every node has the topic", || has_topic(node, RETAINED)).await;
    }
    let mut acked = BTreeMap::new();
    // About 40 KiB: ten segments. Without a limit nothing goes.
    publish_retained(&mut client, &mut acked, "first", 120).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for id in 1..=3 {
        assert_eq!(start_offset(&cluster, id), 0, "node {id} deleted records");
    }
    // A limit set on the live topic applies on every replica, which keep two or three
    // segments.
    client
        .alter_topic(v1::AlterTopicRequest {
            name: RETAINED.into(),
            retention_bytes: Some(8192),
            ..Default::default()
        })
        .await
        .expect("topic altered");
    let start = retention_moved(&cluster, 0).await;
    for id in 1..=3 {
        retains_exactly(&cluster, id, start, &acked).await;
        // The active segment and at most two sealed ones (of about 4 KiB) are left.
        let files = segment_files(&cluster, id);
        assert!(files <= 3, "node {id} keeps {files} segment files");
    }

    // Publishes and reads go on, and retention keeps moving.
    publish_retained(&mut client, &mut acked, "second", 60).await;
    let start = retention_moved(&cluster, start).await;
    for id in 1..=3 {
        retains_exactly(&cluster, id, start, &acked).await;
    }

    // A restarted follower and a restarted leader come back at the same start, with
    // every acknowledged record after it.
    let leader = leader_of_retained(&cluster, 1).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    for id in [follower, leader] {
        cluster.stop(id).await;
        cluster.restart(id).await;
        let node = cluster.node(id);
        eventually("the restarted node has the topic", || {
            has_topic(node, RETAINED)
        })
        .await;
        assert_eq!(
            start_offset(&cluster, id),
            start,
            "node {id} after its restart"
        );
        retains_exactly(&cluster, id, start, &acked).await;
    }
    let mut client = cluster.client(follower).await;
    publish_retained(&mut client, &mut acked, "third", 30).await;

    // A follower that was stopped while retention moved past everything it held gets
    // the leader's snapshot and catches up from there.
    let leader = leader_of_retained(&cluster, follower).await;
    let behind = (1..=3).find(|id| *id != leader).unwrap();
    let publisher = (1..=3).find(|id| *id != behind).unwrap();
    cluster.stop(behind).await;
    let mut client = cluster.client(publisher).await;
    publish_retained(&mut client, &mut acked, "while-down", 80).await;
    let start = retention_moved(&cluster, start).await;
    cluster.restart(behind).await;
    let node = cluster.node(behind);
    eventually("the restarted node has the topic", || {
        has_topic(node, RETAINED)
    })
    .await;
    retains_exactly(&cluster, behind, start, &acked).await;
    let end = *acked.keys().last().unwrap();
    let offsets: Vec<u64> = acked.keys().copied().collect();
    assert_eq!(offsets, (0..=end).collect::<Vec<_>>(), "offsets are dense");
    let start = retention_moved(&cluster, 0).await;
    for id in 1..=3 {
        retains_exactly(&cluster, id, start, &acked).await;
    }
    cluster.shutdown().await;
}

/// The leader of `RETAINED`'s partition as node `id` reports it.
async fn leader_of_retained(cluster: &TestCluster, id: u64) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let leader = cluster
            .status(id)
            .await
            .topics
            .iter()
            .find(|t| t.name == RETAINED)
            .and_then(|t| t.partitions.first())
            .map_or(0, |p| p.leader);
        if leader != 0 {
            return leader;
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_lost_its_directory_rejoins_by_snapshot_and_holds_what_the_leader_holds() {
    record_panics();
    let mut cluster = small_batch_cluster().await;
    let mut client = cluster.client(1).await;
    create_retained(&mut client, Some(8192)).await;
    for id in 1..=3 {
        let node = cluster.node(id);
        eventually("every node has the topic", || has_topic(node, RETAINED)).await;
    }
    let mut acked = BTreeMap::new();
    publish_retained(&mut client, &mut acked, "first", 80).await;
    let start = retention_moved(&cluster, 0).await;

    // A follower stops and loses its partition directory; the others go on, and
    // retention moves past everything it ever held.
    let leader = leader_of_retained(&cluster, 1).await;
    let lost = (1..=3).find(|id| *id != leader).unwrap();
    let publisher = (1..=3).find(|id| *id != lost).unwrap();
    cluster.stop(lost).await;
    let dir = cluster.specs[cluster.index_of(lost)]
        .dir
        .join("topics")
        .join(RETAINED)
        .join("0");
    std::fs::remove_dir_all(&dir).unwrap();
    let mut client = cluster.client(publisher).await;
    publish_retained(&mut client, &mut acked, "without", 80).await;
    let start = retention_moved(&cluster, start).await;

    // Restarted with nothing, it installs the leader's snapshot and catches up: the same
    // records at the same offsets as the leader, nothing below the leader's start.
    cluster.restart(lost).await;
    let node = cluster.node(lost);
    eventually("the restarted node has the topic", || {
        has_topic(node, RETAINED)
    })
    .await;
    retains_exactly(&cluster, lost, start, &acked).await;
    publish_retained(&mut client, &mut acked, "after", 40).await;
    let start = retention_moved(&cluster, 0).await;
    for id in 1..=3 {
        retains_exactly(&cluster, id, start, &acked).await;
    }
    // It also serves as a voter: with the other follower stopped, publishes still commit.
    let other = (1..=3).find(|id| *id != lost && *id != leader).unwrap();
    cluster.stop(other).await;
    let mut client = cluster.client(lost).await;
    publish_retained(&mut client, &mut acked, "two-of-three", 10).await;
    let start = retention_moved(&cluster, 0).await;
    retains_exactly(&cluster, lost, start, &acked).await;
    cluster.shutdown().await;
}
