//! Consumer groups of replicated topics in one process: three brokers on 127.0.0.1. A
//! group runs on one node at a time whichever node its members call, and another node
//! takes it over, from its last checkpoint, when its coordinator stops or is cut off;
//! a cut-off coordinator stops delivering once its lease has run out.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::cluster::{TestCluster, WAIT, create, eventually, has_topic, keyed, publish_retrying};
use common::{join, record_panics};
use herald_proto::HeraldClient;
use herald_proto::v1;
use tonic::Code;
use tonic::transport::Channel;

const TOPIC: &str = "orders";

/// Publishes `count` records over keys k0..k4, values `"{key}:{seq}"` with a per-key
/// sequence starting at `from[key]`.
async fn publish_keyed(client: &mut HeraldClient<Channel>, next: &mut [u64; 5], count: usize) {
    for i in 0..count {
        let k = i % 5;
        publish_retrying(
            client,
            keyed(TOPIC, &format!("k{k}"), &format!("k{k}:{}", next[k])),
        )
        .await;
        next[k] += 1;
    }
}

/// Waits until every node has the topic.
async fn topic_everywhere(cluster: &TestCluster, partitions: u32) {
    create(&mut cluster.client(1).await, TOPIC, partitions).await;
    for broker in cluster.running() {
        eventually("every node holds the topic", || has_topic(broker, TOPIC)).await;
    }
}

/// The node the metadata names as the group's coordinator, seen from `from`.
fn coordinator_of(cluster: &TestCluster, from: u64, group: &str) -> Option<u64> {
    cluster
        .node(from)
        .cluster
        .as_ref()
        .unwrap()
        .metadata()
        .groups
        .get(&(TOPIC.to_owned(), group.to_owned()))
        .and_then(|r| r.coordinator)
}

/// One member's stream, read without panicking on its end.
struct Stream {
    tx: tokio::sync::mpsc::Sender<v1::SubscribeRequest>,
    rx: tonic::Streaming<v1::SubscribeResponse>,
}

enum Got {
    Deliveries(Vec<v1::Delivery>),
    Other,
    Nothing,
    Ended(Option<tonic::Status>),
}

impl Stream {
    /// Joins through `node`, retrying UNAVAILABLE (the group is between coordinators).
    async fn join(cluster: &TestCluster, node: u64, group: &str) -> Stream {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut client = cluster.client(node).await;
            let (tx, rx) = tokio::sync::mpsc::channel(64);
            tx.send(v1::SubscribeRequest {
                request: Some(v1::subscribe_request::Request::Join(join(
                    TOPIC,
                    group,
                    Some(common::fast_settings(30_000, 10)),
                ))),
            })
            .await
            .unwrap();
            let opened = client
                .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await;
            let mut rx = match opened {
                Ok(r) => r.into_inner(),
                Err(status) if status.code() == Code::Unavailable => {
                    assert!(Instant::now() < deadline, "cannot join: {status:?}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(status) => panic!("join refused: {status:?}"),
            };
            match rx.message().await {
                Ok(Some(v1::SubscribeResponse {
                    response: Some(v1::subscribe_response::Response::Joined(_)),
                })) => return Stream { tx, rx },
                Err(status) if status.code() == Code::Unavailable => {
                    assert!(Instant::now() < deadline, "cannot join: {status:?}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => panic!("expected Joined, got {other:?}"),
            }
        }
    }

    async fn next(&mut self, wait: Duration) -> Got {
        match tokio::time::timeout(wait, self.rx.message()).await {
            Err(_) => Got::Nothing,
            Ok(Ok(Some(v1::SubscribeResponse {
                response: Some(v1::subscribe_response::Response::Deliveries(d)),
            }))) => Got::Deliveries(d.deliveries),
            Ok(Ok(Some(_))) => Got::Other,
            Ok(Ok(None)) => Got::Ended(None),
            Ok(Err(status)) => Got::Ended(Some(status)),
        }
    }

    async fn ack(&self, deliveries: &[v1::Delivery]) {
        let _ = self
            .tx
            .send(v1::SubscribeRequest {
                request: Some(v1::subscribe_request::Request::Ack(v1::Ack {
                    ack_ids: deliveries.iter().map(|d| d.ack_id.clone()).collect(),
                    ..Default::default()
                })),
            })
            .await;
    }
}

/// `(partition, offset)` → value of every delivery, in the order delivered.
type Log = Vec<((u32, u64), String)>;

/// Per key, the sequence numbers of the deliveries in order must never go back except to
/// a value delivered before (a redelivery after a failover restarts from the group's
/// checkpoint, in order): so the first deliveries of each key come in sequence order.
fn check_key_order(log: &Log) {
    let mut highest: BTreeMap<String, u64> = BTreeMap::new();
    for (_, value) in log {
        let (key, seq) = value.split_once(':').unwrap();
        let seq: u64 = seq.parse().unwrap();
        let top = highest.entry(key.to_owned()).or_insert(0);
        if seq >= *top {
            assert!(
                seq == *top || seq == *top + 1 || *top == 0 && seq == 0,
                "key {key}: {seq} delivered first after {top} (a gap): {log:?}"
            );
            *top = seq.max(*top);
        }
    }
}

/// Two members calling different nodes share one group: the partitions are split between
/// them, every record is delivered once, and every node lists the group once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_calling_different_nodes_share_one_group() {
    record_panics();
    let cluster = TestCluster::start(3).await;
    cluster.leader().await;
    topic_everywhere(&cluster, 2).await;
    let mut next = [0u64; 5];
    publish_keyed(&mut cluster.client(3).await, &mut next, 40).await;

    let mut first = Stream::join(&cluster, 1, "shared").await;
    let mut second = Stream::join(&cluster, 2, "shared").await;
    let mut delivered: Log = Vec::new();
    let deadline = Instant::now() + WAIT;
    while delivered.len() < 40 {
        assert!(Instant::now() < deadline, "delivered {delivered:?}");
        for member in [&mut first, &mut second] {
            match member.next(Duration::from_millis(100)).await {
                Got::Deliveries(d) => {
                    member.ack(&d).await;
                    for d in d {
                        delivered.push((
                            (d.partition, d.offset),
                            String::from_utf8(d.value.to_vec()).unwrap(),
                        ));
                    }
                }
                Got::Ended(status) => panic!("a member's stream ended: {status:?}"),
                Got::Other | Got::Nothing => {}
            }
        }
    }
    let unique: BTreeSet<(u32, u64)> = delivered.iter().map(|(at, _)| *at).collect();
    assert_eq!(unique.len(), 40, "each record once: {delivered:?}");
    check_key_order(&delivered);

    // One group, run by one node, seen alike everywhere.
    let coordinator = coordinator_of(&cluster, 1, "shared").expect("a coordinator");
    for id in 1..=3 {
        assert_eq!(coordinator_of(&cluster, id, "shared"), Some(coordinator));
        let listed = cluster
            .client(id)
            .await
            .list_groups(v1::ListGroupsRequest {
                topic: Some(TOPIC.into()),
            })
            .await
            .unwrap()
            .into_inner()
            .groups;
        assert_eq!(listed.len(), 1, "node {id}: {listed:?}");
        let described =
            common::describe_group(&mut cluster.client(id).await, TOPIC, "shared").await;
        assert_eq!(described.members.len(), 2, "node {id}: {described:?}");
        let mut owned: Vec<u32> = described
            .members
            .iter()
            .flat_map(|m| m.partitions.clone())
            .collect();
        owned.sort_unstable();
        assert_eq!(owned, vec![0, 1], "node {id}: one member per partition");
    }
    drop((first, second));
    cluster.shutdown().await;
}

/// Consumes `until` deliveries (acking each) from `member`, appending to `log`; returns
/// early with the status if the stream ends.
async fn consume(
    member: &mut Stream,
    log: &mut Log,
    until: usize,
) -> Option<Option<tonic::Status>> {
    let deadline = Instant::now() + WAIT;
    while log.len() < until {
        assert!(
            Instant::now() < deadline,
            "consumed {} of {until}",
            log.len()
        );
        match member.next(Duration::from_millis(200)).await {
            Got::Deliveries(d) => {
                member.ack(&d).await;
                for d in d {
                    log.push((
                        (d.partition, d.offset),
                        String::from_utf8(d.value.to_vec()).unwrap(),
                    ));
                }
            }
            Got::Ended(status) => return Some(status),
            Got::Other | Got::Nothing => {}
        }
    }
    None
}

/// The group's coordinator stops cleanly, then another is cut off: each time the member
/// joins again through another node and the group goes on from its last checkpoint;
/// nothing is lost and each key's records come in order. The cut-off coordinator ends its
/// member's stream once its lease has run out, and never runs the group again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_moves_to_another_node_when_its_coordinator_stops_or_is_cut_off() {
    record_panics();
    let mut cluster = TestCluster::start(3).await;
    cluster.leader().await;
    topic_everywhere(&cluster, 1).await;
    let mut next = [0u64; 5];
    publish_keyed(&mut cluster.client(1).await, &mut next, 60).await;

    let mut log: Log = Vec::new();
    let mut member = Stream::join(&cluster, 1, "movers").await;
    assert!(consume(&mut member, &mut log, 20).await.is_none());
    // Let a checkpoint carry the acks (at most CHECKPOINT_EVERY old plus a commit).
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // 1. A clean stop: the coordinator releases the group on its way out.
    let first = coordinator_of(&cluster, 1, "movers").expect("a coordinator");
    let survivor = (1..=3).find(|id| *id != first).unwrap();
    let stopped = Instant::now();
    cluster.stop(first).await;
    let ended = consume(&mut member, &mut log, usize::MAX).await;
    assert!(ended.is_some(), "the member's stream ends with its node");
    let mut member = Stream::join(&cluster, survivor, "movers").await;
    let before = log.len();
    assert!(consume(&mut member, &mut log, before + 1).await.is_none());
    let resumed_in = stopped.elapsed();
    let second = coordinator_of(&cluster, survivor, "movers").expect("a coordinator");
    assert_ne!(second, first);
    println!("clean stop: the group delivered again {resumed_in:?} after its coordinator stopped");
    cluster.restart(first).await;
    assert!(consume(&mut member, &mut log, 40).await.is_none());
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // 2. The coordinator is cut off: it keeps its members' streams only until its lease
    // runs out, and another node takes the group after it fell silent.
    let cut = coordinator_of(&cluster, survivor, "movers").expect("a coordinator");
    let mut on_cut = if cut == survivor {
        member
    } else {
        drop(member);
        Stream::join(&cluster, cut, "movers").await
    };
    let isolated = Instant::now();
    cluster
        .node(cut)
        .cluster
        .as_ref()
        .unwrap()
        .set_isolated(true);
    let ended = consume(&mut on_cut, &mut log, usize::MAX).await;
    let ended_in = isolated.elapsed();
    assert!(
        matches!(&ended, Some(Some(s)) if s.code() == Code::Unavailable),
        "the cut-off coordinator ends its member's stream with UNAVAILABLE: {ended:?}"
    );
    assert!(
        ended_in < Duration::from_secs(10),
        "its lease runs out in seconds: {ended_in:?}"
    );
    let other = (1..=3).find(|id| *id != cut).unwrap();
    let mut member = Stream::join(&cluster, other, "movers").await;
    publish_keyed(&mut cluster.client(other).await, &mut next, 20).await;
    let wanted: BTreeSet<(u32, u64)> = (0..80).map(|o| (0, o)).collect();
    let deadline = Instant::now() + WAIT;
    loop {
        let seen: BTreeSet<(u32, u64)> = log.iter().map(|(at, _)| *at).collect();
        if wanted.is_subset(&seen) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "missing {:?}",
            wanted.difference(&seen)
        );
        let more = log.len() + 1;
        assert!(consume(&mut member, &mut log, more).await.is_none());
    }
    let third = coordinator_of(&cluster, other, "movers").expect("a coordinator");
    assert_ne!(third, cut, "the cut-off node no longer coordinates");
    check_key_order(&log);
    cluster
        .node(cut)
        .cluster
        .as_ref()
        .unwrap()
        .set_isolated(false);
    // Healed, the old coordinator learns it lost the group and does not take it back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(coordinator_of(&cluster, cut, "movers"), Some(third));
    drop(member);
    cluster.shutdown().await;
}
