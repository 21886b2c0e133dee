//! Cluster mode in one process: three brokers on 127.0.0.1 with their own data dirs,
//! forming the metadata group over real gRPC peer connections.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::{TestCluster, WAIT, create, create_with_factor, eventually, has_topic};
use common::{assert_no_broker_panics, code_of, record, record_panics, test_config};
use herald_broker::server::Broker;
use herald_proto::HeraldClient;
use herald_proto::v1;
use tonic::Code;
use tonic::transport::Channel;

async fn publish(
    client: &mut HeraldClient<Channel>,
    topic: &str,
    partition: u32,
) -> Result<v1::PublishResponse, tonic::Status> {
    client
        .publish(v1::PublishRequest {
            topic: topic.into(),
            partition: Some(partition),
            payload: Some(v1::publish_request::Payload::Records(v1::Records {
                records: vec![record(Some("k"), "v")],
            })),
            producer: None,
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_created_on_a_follower_reaches_every_node_with_its_placement() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();

    let mut client = cluster.client(follower).await;
    create(&mut client, "orders", 3).await;
    // The node that took the request answers after applying it itself.
    assert!(has_topic(
        cluster.brokers[cluster.index_of(follower)]
            .as_ref()
            .unwrap(),
        "orders"
    ));
    for broker in cluster.running() {
        eventually("every node holds the topic", || has_topic(broker, "orders")).await;
    }
    let again = client
        .create_topic(v1::CreateTopicRequest {
            name: "orders".into(),
            partitions: 1,
            config: None,
            replication_factor: None,
        })
        .await;
    assert_eq!(code_of(again), Code::AlreadyExists);

    // Any node describes the cluster: three nodes, one leader, the topic's replicas,
    // and each partition's group led by its preferred (first) replica, so leaders
    // spread over the nodes.
    let other = (1..=3).find(|id| *id != follower).unwrap();
    let mut status = v1::ClusterStatusResponse::default();
    for _ in 0..100 {
        status = cluster.status(other).await;
        if status.topics[0].partitions.iter().all(|p| p.leader != 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(status.cluster_mode);
    assert_eq!(status.node_id, other);
    assert_eq!(status.metadata_leader, Some(leader));
    assert_eq!(status.nodes.len(), 3);
    let topic = &status.topics[0];
    assert_eq!(
        (topic.name.as_str(), topic.replication_factor),
        ("orders", 3)
    );
    let leaders: BTreeSet<u64> = topic.partitions.iter().map(|p| p.leader).collect();
    assert_eq!(
        leaders.len(),
        3,
        "partition leaders spread over the nodes: {topic:?}"
    );

    // Any node takes a partition's publishes: the others forward them to its node.
    for p in &topic.partitions {
        for node in 1..=3 {
            publish(&mut cluster.client(node).await, "orders", p.partition)
                .await
                .expect("any node takes it");
        }
    }

    // A consumer group reads its node's logs: refused on a node that does not hold
    // every partition (a topic with one copy of each), naming one that holds a
    // partition it lacks.
    create_with_factor(&mut client, "single", 3, Some(1)).await;
    for broker in cluster.running() {
        eventually("every node holds the topic", || has_topic(broker, "single")).await;
    }
    let refused = client
        .create_group(v1::CreateGroupRequest {
            topic: "single".into(),
            group: "g".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(code_of(refused), Code::FailedPrecondition);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(v1::SubscribeRequest {
        request: Some(v1::subscribe_request::Request::Join(common::join(
            "single", "g", None,
        ))),
    })
    .await
    .unwrap();
    let mut stream = client
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let status = stream.message().await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("served by node"), "{status:?}");
    // Every node holds a replica of every partition of "orders" (three copies on three
    // nodes): a group works on any of them.
    client
        .create_group(v1::CreateGroupRequest {
            topic: "orders".into(),
            group: "g".into(),
            ..Default::default()
        })
        .await
        .expect("a group on a node holding every partition");

    client
        .delete_topic(v1::DeleteTopicRequest {
            name: "orders".into(),
        })
        .await
        .expect("deleted through a follower");
    for broker in cluster.running() {
        eventually("every node dropped the topic", || {
            broker.registry.get("orders").is_err()
        })
        .await;
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_takes_over_and_a_restarted_node_catches_up() {
    let mut cluster = TestCluster::start(3).await;
    let first = cluster.leader().await;
    create(&mut cluster.client(first).await, "before", 1).await;

    cluster.stop(first).await;
    let started = Instant::now();
    let second = cluster.leader().await;
    println!(
        "new leader elected {:?} after the old one stopped",
        started.elapsed()
    );
    assert_ne!(second, first);
    let survivor = (1..=3).find(|id| *id != first && *id != second).unwrap();
    // Created through the survivor that does not lead: forwarded to the new leader.
    create(&mut cluster.client(survivor).await, "after", 2).await;

    cluster.restart(first).await;
    let back = cluster.brokers[cluster.index_of(first)].as_ref().unwrap();
    eventually("the restarted node catches up", || {
        has_topic(back, "before") && has_topic(back, "after")
    })
    .await;
    // It recovered its log and state from its data dir, and follows the new leader.
    assert_eq!(cluster.leader().await, second);
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_single_node_describes_itself_as_a_cluster_of_one() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(test_config(dir.path())).await;
    assert!(broker.cluster.is_none());
    assert!(!Path::new(&dir.path().join("cluster")).exists());
    let mut client = common::client(&broker).await;
    common::create_topic(&mut client, "t", 2).await;
    let status = client
        .cluster_status(v1::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!status.cluster_mode);
    assert_eq!(status.nodes.len(), 1);
    assert_eq!(status.nodes[0].client_address, broker.addr.to_string());
    assert_eq!(status.topics[0].partitions.len(), 2);
    // One node holds one copy: asking for more is a clear refusal.
    let refused = client
        .create_topic(v1::CreateTopicRequest {
            name: "copies".into(),
            partitions: 1,
            config: None,
            replication_factor: Some(2),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("needs a cluster"), "{refused:?}");
    common::stop(broker).await;
}

/// Fetches every record of `partition` through `client`, following until `count` arrived.
async fn fetch_all(
    client: &mut HeraldClient<Channel>,
    topic: &str,
    partition: u32,
    count: usize,
) -> Vec<v1::FetchedRecord> {
    let mut stream = client
        .fetch(v1::FetchRequest {
            topic: topic.into(),
            partition,
            start: Some(v1::Position {
                kind: Some(v1::position::Kind::Offset(0)),
            }),
            follow: true,
            ..Default::default()
        })
        .await
        .expect("fetch opens")
        .into_inner();
    let mut records = Vec::new();
    while records.len() < count {
        let response = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("records arrive")
            .expect("the stream stays healthy")
            .expect("the stream stays open");
        records.extend(response.records);
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_node_takes_publishes_and_serves_reads_for_every_partition() {
    let cluster = TestCluster::start(3).await;
    cluster.leader().await;
    let mut first = cluster.client(1).await;
    // One copy of each partition: this test is about forwarding to the one node that
    // holds a partition (replicated partitions have their own tests below).
    create_with_factor(&mut first, "orders", 3, Some(1)).await;
    for broker in cluster.running() {
        eventually("every node holds the topic", || has_topic(broker, "orders")).await;
    }
    let placement = cluster.brokers[0]
        .as_ref()
        .unwrap()
        .cluster
        .as_ref()
        .unwrap()
        .metadata();
    let home = |p: u32| placement.topics["orders"].replicas[p as usize][0];

    // A follow-mode Fetch forwarded to the partition's node outlives the peer port's
    // per-call timeout (5 s): only the call's start is bounded, not its stream.
    let waiting = {
        let away = (1..=3).find(|id| *id != home(0)).unwrap();
        let mut client = cluster.client(away).await;
        tokio::spawn(async move {
            let mut stream = client
                .fetch(v1::FetchRequest {
                    topic: "orders".into(),
                    partition: 0,
                    start: Some(v1::Position {
                        kind: Some(v1::position::Kind::Latest(v1::Latest {})),
                    }),
                    follow: true,
                    ..Default::default()
                })
                .await
                .expect("fetch opens")
                .into_inner();
            tokio::time::timeout(WAIT, stream.message()).await
        })
    };
    tokio::time::sleep(Duration::from_secs(6)).await;

    // Every node publishes to every partition, explicitly and by key; each answer's
    // offsets follow the last one's on that partition, wherever it was sent.
    let mut clients = Vec::new();
    for id in 1..=3 {
        clients.push(cluster.client(id).await);
    }
    let mut next = [0u64; 3];
    let mut sent: Vec<Vec<String>> = vec![Vec::new(); 3];
    for round in 0..4 {
        for (i, client) in clients.iter_mut().enumerate() {
            for p in 0..3u32 {
                let value = format!("r{round}-n{}-p{p}", i + 1);
                let answer = client
                    .publish(v1::PublishRequest {
                        topic: "orders".into(),
                        partition: Some(p),
                        payload: Some(v1::publish_request::Payload::Records(v1::Records {
                            records: vec![record(None, &value)],
                        })),
                        producer: None,
                    })
                    .await
                    .expect("published")
                    .into_inner();
                assert_eq!(
                    (answer.partition, answer.base_offset),
                    (p, next[p as usize])
                );
                next[p as usize] += 1;
                sent[p as usize].push(value);
            }
            let key = format!("user-{round}-{i}");
            let answer = client
                .publish(v1::PublishRequest {
                    topic: "orders".into(),
                    partition: None,
                    payload: Some(v1::publish_request::Payload::Records(v1::Records {
                        records: vec![record(Some(&key), &key)],
                    })),
                    producer: None,
                })
                .await
                .expect("published by key")
                .into_inner();
            let p = herald_client::partition_for_key(key.as_bytes(), 3).0;
            assert_eq!(
                (answer.partition, answer.base_offset),
                (p, next[p as usize])
            );
            next[p as usize] += 1;
            sent[p as usize].push(key);
        }
    }
    let woke = waiting
        .await
        .unwrap()
        .expect("the waiting fetch got records");
    assert!(
        !woke
            .expect("the waiting fetch stays healthy")
            .unwrap()
            .records
            .is_empty()
    );

    // The records are stored on each partition's node only, and every node reads them
    // all, in order.
    for p in 0..3u32 {
        for broker in cluster.running() {
            let id = broker.cluster.as_ref().unwrap().node_id();
            let stored = broker
                .registry
                .get("orders")
                .unwrap()
                .partition(p)
                .unwrap()
                .reader()
                .high_watermark();
            let expected = if id == home(p) { next[p as usize] } else { 0 };
            assert_eq!(stored, expected, "node {id}, partition {p}");
        }
        for client in clients.iter_mut() {
            let records = fetch_all(client, "orders", p, sent[p as usize].len()).await;
            let values: Vec<String> = records
                .iter()
                .map(|r| String::from_utf8(r.value.to_vec()).unwrap())
                .collect();
            assert_eq!(values, sent[p as usize], "partition {p}");
            let offsets: Vec<u64> = records.iter().map(|r| r.offset).collect();
            assert_eq!(offsets, (0..next[p as usize]).collect::<Vec<_>>());
        }
    }

    // The serving node's refusals reach the client unchanged.
    let away = (1..=3).find(|id| *id != home(1)).unwrap();
    let mut stream = clients[away as usize - 1]
        .fetch(v1::FetchRequest {
            topic: "orders".into(),
            partition: 1,
            start: Some(v1::Position {
                kind: Some(v1::position::Kind::Offset(1_000_000)),
            }),
            ..Default::default()
        })
        .await;
    let status = match &mut stream {
        Ok(stream) => stream.get_mut().message().await.unwrap_err(),
        Err(status) => status.clone(),
    };
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

    // A PublishStream through one node reaches every partition.
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    for p in 0..3u32 {
        tx.send(v1::PublishStreamRequest {
            sequence: u64::from(p),
            publish: Some(v1::PublishRequest {
                topic: "orders".into(),
                partition: Some(p),
                payload: Some(v1::publish_request::Payload::Records(v1::Records {
                    records: vec![record(None, "streamed")],
                })),
                producer: None,
            }),
        })
        .await
        .unwrap();
    }
    drop(tx);
    let mut replies = clients[0]
        .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut answered = BTreeSet::new();
    while let Some(reply) = replies.message().await.unwrap() {
        match reply.outcome {
            Some(v1::publish_stream_response::Outcome::Published(published)) => {
                assert_eq!(published.base_offset, next[published.partition as usize]);
                answered.insert(published.partition);
            }
            other => panic!("publish {} failed: {other:?}", reply.sequence),
        }
    }
    assert_eq!(answered, BTreeSet::from([0, 1, 2]));

    // The peer port refuses a forwarded request for a partition its node does not
    // serve: a forwarded request is never forwarded again.
    let target = 1u64;
    let elsewhere = (0..3u32).find(|p| home(*p) != target).unwrap();
    let peer = cluster.brokers[0]
        .as_ref()
        .unwrap()
        .cluster
        .as_ref()
        .unwrap()
        .peer_addr;
    let mut peer = herald_proto::peer::peer_client::PeerClient::connect(format!("http://{peer}"))
        .await
        .unwrap();
    let forwarded = |to: u64| herald_proto::peer::ForwardedPublish {
        to,
        from: 2,
        metadata_applied: 0,
        request: Some(v1::PublishRequest {
            topic: "orders".into(),
            partition: Some(elsewhere),
            payload: Some(v1::publish_request::Payload::Records(v1::Records {
                records: vec![record(None, "loop")],
            })),
            producer: None,
        }),
    };
    let refused = peer.publish(forwarded(target)).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused
            .message()
            .contains(&format!("served by node {}", home(elsewhere))),
        "{refused:?}"
    );
    let wrong_node = peer.publish(forwarded(7)).await.unwrap_err();
    assert_eq!(
        wrong_node.code(),
        Code::FailedPrecondition,
        "{wrong_node:?}"
    );

    // With a partition's node down, the others say so rather than hang.
    let mut cluster = cluster;
    let gone = home(2);
    cluster.stop(gone).await;
    let other = (1..=3).find(|id| *id != gone).unwrap();
    let refused = publish(&mut cluster.client(other).await, "orders", 2)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains(&format!("node {gone}")),
        "{refused:?}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_added_catches_up_and_is_removed() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    create(&mut cluster.client(1).await, "before", 1).await;

    let new = cluster.start_joiner().await;
    let spec = &cluster.specs[cluster.index_of(new)];
    let (client_address, peer_address) = (spec.client.to_string(), spec.peer.to_string());
    let mut admin = cluster.client(follower).await;
    let added = admin
        .add_node(v1::AddNodeRequest {
            node_id: new,
            client_address: client_address.clone(),
            peer_address: peer_address.clone(),
        })
        .await
        .expect("node added through a follower")
        .into_inner();
    let ids: Vec<u64> = added.nodes.iter().map(|n| n.node_id).collect();
    assert_eq!(ids, vec![1, 2, 3, new]);
    let joined = cluster.brokers[cluster.index_of(new)].as_ref().unwrap();
    eventually(
        "the new node has the metadata from before it joined",
        || has_topic(joined, "before"),
    )
    .await;
    let again = admin
        .add_node(v1::AddNodeRequest {
            node_id: new,
            client_address,
            peer_address,
        })
        .await;
    assert_eq!(code_of(again), Code::AlreadyExists);

    // New topics are placed over four nodes, and the new one votes: with it the cluster
    // has four voters, so three must agree.
    create_with_factor(&mut cluster.client(new).await, "after", 4, Some(1)).await;
    let status = cluster.status(new).await;
    assert_eq!(status.nodes.len(), 4);
    let after = status.topics.iter().find(|t| t.name == "after").unwrap();
    assert!(
        after.partitions.iter().any(|p| p.leader == new),
        "{after:?}"
    );

    // The only holder of a partition's records cannot leave; once its topic is gone, it
    // can.
    let refused = admin
        .remove_node(v1::RemoveNodeRequest { node_id: new })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("only copy"), "{refused:?}");
    admin
        .delete_topic(v1::DeleteTopicRequest {
            name: "after".into(),
        })
        .await
        .unwrap();
    let removed = admin
        .remove_node(v1::RemoveNodeRequest { node_id: new })
        .await
        .expect("node removed")
        .into_inner();
    let ids: Vec<u64> = removed.nodes.iter().map(|n| n.node_id).collect();
    assert_eq!(ids, vec![1, 2, 3]);
    let missing = admin
        .remove_node(v1::RemoveNodeRequest { node_id: 9 })
        .await;
    assert_eq!(code_of(missing), Code::NotFound);

    // The removed node is stopped; the three others go on.
    cluster.stop(new).await;
    create(&mut cluster.client(follower).await, "later", 1).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_need_cluster_mode() {
    record_panics();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(test_config(dir.path()), false).await.unwrap();
    let mut client = HeraldClient::connect(format!("http://{}", broker.addr))
        .await
        .unwrap();
    let refused = client
        .add_node(v1::AddNodeRequest {
            node_id: 2,
            client_address: "127.0.0.1:1".into(),
            peer_address: "127.0.0.1:2".into(),
        })
        .await;
    assert_eq!(code_of(refused), Code::FailedPrecondition);
    broker.shutdown().await.unwrap();
    assert_no_broker_panics();
}

/// A metadata leader cut off from the others (both ways) must never acknowledge a change:
/// the change cannot reach a majority. The majority side elects a new leader and takes
/// changes; once the cut heals, the old leader follows it, and every node holds exactly
/// the changes that were acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_acknowledges_nothing_and_rejoins_the_majority() {
    let cluster = TestCluster::start(3).await;
    let old = cluster.leader().await;
    let cut = |isolated: bool| {
        cluster.brokers[cluster.index_of(old)]
            .as_ref()
            .unwrap()
            .cluster
            .as_ref()
            .unwrap()
            .set_isolated(isolated)
    };
    cut(true);

    // The isolated leader takes the request but cannot commit it: the caller hears
    // UNAVAILABLE (after the leader's commit wait), never success.
    let mut isolated = cluster.client(old).await;
    let started = Instant::now();
    let during = tokio::time::timeout(
        WAIT,
        isolated.create_topic(v1::CreateTopicRequest {
            name: "during".into(),
            partitions: 1,
            config: None,
            replication_factor: None,
        }),
    )
    .await
    .expect("the isolated leader answers within its bounds instead of hanging");
    assert_eq!(code_of(during), Code::Unavailable);
    assert!(started.elapsed() < WAIT);

    // The majority elects one of its own and takes changes.
    let other = (1..=3).find(|id| *id != old).unwrap();
    let mut majority = cluster.client(other).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let created = majority
            .create_topic(v1::CreateTopicRequest {
                name: "majority".into(),
                partitions: 1,
                config: None,
                replication_factor: None,
            })
            .await;
        match created {
            Ok(_) => break,
            Err(status) if status.code() == Code::AlreadyExists => break,
            Err(status) => {
                assert!(
                    Instant::now() < deadline,
                    "the majority never took a change: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    // Healed, the old leader follows the new one: every node has what was acknowledged
    // and nothing that was not.
    cut(false);
    for broker in cluster.running() {
        eventually("every node has the majority's change", || {
            has_topic(broker, "majority")
        })
        .await;
    }
    let new = cluster.leader().await;
    assert_ne!(new, old, "the old leader lost its place");
    for broker in cluster.running() {
        assert!(
            !broker
                .cluster
                .as_ref()
                .unwrap()
                .metadata()
                .topics
                .contains_key("during"),
            "an unacknowledged change was applied"
        );
    }
    cluster.shutdown().await;
}

/// A topic created through a node takes publishes through that node at once, for every
/// partition: a node that forwards a publish hands on how much metadata it has applied,
/// and the serving node catches up to that before it looks the topic up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_just_created_takes_forwarded_publishes_at_once() {
    let cluster = TestCluster::start(3).await;
    cluster.leader().await;
    for round in 0..5 {
        let node = round % 3 + 1;
        let mut client = cluster.client(node).await;
        let name = format!("fresh-{round}");
        create(&mut client, &name, 3).await;
        for partition in 0..3 {
            publish(&mut client, &name, partition)
                .await
                .unwrap_or_else(|status| panic!("{name} partition {partition}: {status:?}"));
        }
    }
    cluster.shutdown().await;
}

/// AlterTopic through any node: every node applies the new settings and partitions, a new
/// partition's replicas continue the topic's rotation, and it takes publishes on its home
/// node; fewer partitions are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alter_topic_through_any_node_reaches_every_node() {
    let cluster = TestCluster::start(3).await;
    cluster.leader().await;
    let mut c3 = cluster.client(3).await;
    create(&mut c3, "orders", 2).await;
    eventually("every node has the topic", || {
        cluster.running().all(|b| has_topic(b, "orders"))
    })
    .await;
    let mut c2 = cluster.client(2).await;
    let altered = c2
        .alter_topic(v1::AlterTopicRequest {
            name: "orders".into(),
            partitions: Some(3),
            retention_ms: Some(60_000),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .topic
        .unwrap();
    assert_eq!(altered.partition_count, 3);
    eventually("every node applied the alter", || {
        cluster.running().all(|b| {
            b.cluster.as_ref().unwrap().metadata().topics["orders"].partitions == 3
                && b.registry.get("orders").is_ok_and(|t| {
                    t.partition_count() == 3 && t.layout().settings.retention_ms == 60_000
                })
        })
    })
    .await;
    let record = cluster.brokers[0]
        .as_ref()
        .unwrap()
        .cluster
        .as_ref()
        .unwrap()
        .metadata()
        .topics["orders"]
        .clone();
    assert_eq!(record.replicas.len(), 3);
    let after = |node: u64| node % 3 + 1;
    assert_eq!(record.replicas[2][0], after(record.replicas[1][0]));
    let home = record.replicas[2][0];
    let mut c = cluster.client(home).await;
    publish(&mut c, "orders", 2)
        .await
        .expect("the new partition takes publishes");
    let fewer = c3
        .alter_topic(v1::AlterTopicRequest {
            name: "orders".into(),
            partitions: Some(2),
            ..Default::default()
        })
        .await;
    assert_eq!(code_of(fewer), Code::InvalidArgument);
    cluster.shutdown().await;
}

/// A node that was away while the others altered, deleted and created topics, and that
/// catches up from a snapshot (the log it missed was purged), brings its local topics to
/// the snapshot's state: an altered topic takes the new settings and partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_catching_up_from_a_snapshot_follows_alters_deletes_and_creates() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.leader().await;
    let away = (1..=3).find(|id| *id != leader).unwrap();
    let mut client = cluster.client(leader).await;
    create(&mut client, "orders", 2).await;
    create(&mut client, "gone", 1).await;
    eventually("every node has the topics", || {
        cluster
            .running()
            .all(|b| has_topic(b, "orders") && has_topic(b, "gone"))
    })
    .await;

    cluster.stop(away).await;
    client
        .alter_topic(v1::AlterTopicRequest {
            name: "orders".into(),
            partitions: Some(3),
            retention_ms: Some(60_000),
            ..Default::default()
        })
        .await
        .expect("alter while a node is away");
    client
        .delete_topic(v1::DeleteTopicRequest {
            name: "gone".into(),
        })
        .await
        .expect("delete while a node is away");
    create(&mut client, "fresh", 1).await;

    // Compact the leader's log past everything the away node has, so it can only catch up
    // from the snapshot.
    let raft = cluster.brokers[cluster.index_of(leader)]
        .as_ref()
        .unwrap()
        .cluster
        .as_ref()
        .unwrap()
        .raft()
        .clone();
    raft.trigger().snapshot().await.unwrap();
    let applied = raft.metrics().borrow().last_applied.unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let metrics = raft.metrics().borrow().clone();
        if metrics.snapshot.is_some_and(|s| s.index >= applied.index) {
            break;
        }
        assert!(Instant::now() < deadline, "no snapshot: {metrics:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    raft.trigger().purge_log(applied.index).await.unwrap();
    eventually("the leader purged its log", || {
        raft.metrics()
            .borrow()
            .purged
            .is_some_and(|p| p.index >= applied.index)
    })
    .await;

    cluster.restart(away).await;
    let node = cluster.brokers[cluster.index_of(away)].as_ref().unwrap();
    eventually("the returning node installed the snapshot", || {
        node.cluster
            .as_ref()
            .unwrap()
            .raft()
            .metrics()
            .borrow()
            .snapshot
            .is_some_and(|s| s.index >= applied.index)
    })
    .await;
    eventually("the returning node's topics follow the snapshot", || {
        node.registry
            .get("orders")
            .is_ok_and(|t| t.partition_count() == 3 && t.layout().settings.retention_ms == 60_000)
            && node.registry.get("gone").is_err()
            && node.registry.get("fresh").is_ok()
    })
    .await;
    cluster.shutdown().await;
}
