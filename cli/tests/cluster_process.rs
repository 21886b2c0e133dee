//! Cluster mode with the real binary: three `herald serve` processes on loopback, a topic
//! created through node 3 and seen by `herald cluster status` on node 1, then the metadata
//! leader killed with SIGKILL and a new one elected. Prints what it measures (idle CPU of
//! the three nodes, time to a new leader); asserts only generous bounds. Any panic in any
//! node's log fails the test.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::proxy::PeerProxy;
use common::{HERALD, Process, assert_no_panic, free_ports, serving_addr, signal, wait_for};
use herald_proto::HeraldClient;
use herald_proto::v1;
use serde_json::Value;

/// The bound on electing a new leader after a kill -9: far above the ~1-2 s it takes, so
/// only a broken failover fails it.
const FAILOVER_BOUND: Duration = Duration::from_secs(20);

struct Node {
    id: u64,
    client: SocketAddr,
    process: Option<Process>,
}

fn serve(dir: &Path, id: u64, client: SocketAddr, peer: SocketAddr, members: &str) -> Process {
    let mut command = Command::new(HERALD);
    command
        .args(["serve", "--log-json", "--data-dir"])
        .arg(dir)
        .args(["--listen", &client.to_string()])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .args(["--node-id", &id.to_string()])
        .args(["--peer-listen", &peer.to_string()])
        .args(["--initial-members", members])
        .env_remove("HERALD_CONFIG")
        .env_remove("HERALD_FSYNC")
        .env("RUST_LOG", "info");
    let process = Process::spawn(command);
    let bound = process.wait_for_line("the node reports its address", serving_addr);
    assert_eq!(bound, client);
    process
}

/// `herald cluster status --json` against `server`.
fn cluster_status(server: SocketAddr) -> Result<Value, String> {
    let out = Command::new(HERALD)
        .args(["cluster", "status", "--json", "--server"])
        .arg(server.to_string())
        .env_remove("HERALD_SERVER")
        .output()
        .expect("herald runs");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // USER_HZ is 100 on Linux.
    ticks / 100.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_agree_on_topics_and_elect_a_new_leader_after_kill_9() {
    let root = tempfile::tempdir().unwrap();
    let ports = free_ports(6);
    let members = (0..3)
        .map(|i| format!("{}={}@{}", i + 1, ports[2 * i], ports[2 * i + 1]))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| {
            let id = i as u64 + 1;
            let dir = root.path().join(format!("node{id}"));
            Node {
                id,
                client: ports[2 * i],
                process: Some(serve(&dir, id, ports[2 * i], ports[2 * i + 1], &members)),
            }
        })
        .collect();

    // Created through node 3, whichever node leads.
    let mut client = HeraldClient::connect(format!("http://{}", nodes[2].client))
        .await
        .unwrap();
    client
        .create_topic(v1::CreateTopicRequest {
            name: "payments".into(),
            partitions: 3,
            config: None,
            replication_factor: None,
        })
        .await
        .expect("topic created through node 3");

    let status = wait_for("node 1's status shows the topic", || {
        let status = cluster_status(nodes[0].client)?;
        let has = status["topics"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["name"] == "payments"));
        if has && status["metadata_leader"].is_u64() {
            Ok(status)
        } else {
            Err(status.to_string())
        }
    });
    assert_eq!(status["node_id"], 1);
    assert_eq!(status["nodes"].as_array().unwrap().len(), 3);
    let leader = status["metadata_leader"].as_u64().unwrap();

    // Idle: three nodes, one topic, nothing published.
    let pids: Vec<u32> = nodes
        .iter()
        .map(|n| n.process.as_ref().unwrap().id())
        .collect();
    let before: Vec<f64> = pids.iter().map(|p| cpu_seconds(*p)).collect();
    let window = Duration::from_secs(5);
    std::thread::sleep(window);
    let used: Vec<f64> = pids
        .iter()
        .zip(&before)
        .map(|(p, b)| cpu_seconds(*p) - b)
        .collect();
    println!(
        "idle CPU over {window:?}: {:?} s per node, {:.2}% of one core for the cluster",
        used,
        used.iter().sum::<f64>() / window.as_secs_f64() * 100.0
    );

    // Kill -9 the metadata leader; a survivor names a new one.
    let victim = nodes.iter_mut().find(|n| n.id == leader).unwrap();
    let victim_log = victim.process.take().unwrap().kill9();
    assert_no_panic(&victim_log, &format!("node {leader}"));
    let killed_at = Instant::now();
    let survivor = nodes.iter().find(|n| n.id != leader).unwrap();
    let mut survivor_client = HeraldClient::connect(format!("http://{}", survivor.client))
        .await
        .unwrap();
    let new_leader = loop {
        let status = survivor_client
            .cluster_status(v1::ClusterStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        if let Some(l) = status.metadata_leader.filter(|l| *l != leader) {
            break l;
        }
        assert!(
            killed_at.elapsed() < FAILOVER_BOUND,
            "no new leader within {FAILOVER_BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!(
        "new metadata leader {new_leader} seen {:?} after kill -9 of leader {leader}",
        killed_at.elapsed()
    );
    let status = wait_for("`cluster status` shows the new leader", || {
        let status = cluster_status(survivor.client)?;
        match status["metadata_leader"].as_u64() {
            Some(l) if l != leader => Ok(status),
            _ => Err(status.to_string()),
        }
    });
    assert_eq!(status["metadata_leader"], new_leader);

    // The cluster takes metadata changes again, through either survivor.
    survivor_client
        .create_topic(v1::CreateTopicRequest {
            name: "after-failover".into(),
            partitions: 1,
            config: None,
            replication_factor: None,
        })
        .await
        .expect("topic created after the failover");

    for node in nodes.iter_mut() {
        if let Some(process) = node.process.take() {
            signal(process.id(), "TERM");
            let exited = process.wait();
            assert_no_panic(&exited.log, &format!("node {}", node.id));
            assert!(exited.status.success(), "node {} exits cleanly", node.id);
        }
    }
}

/// Every record of `partition` of `topic` that the node `client` talks to serves, as
/// (offset, value).
async fn read_partition(
    client: &mut HeraldClient<tonic::transport::Channel>,
    topic: &str,
    partition: u32,
) -> Vec<(u64, String)> {
    let mut stream = client
        .fetch(common::fetch_from_earliest(topic, partition))
        .await
        .unwrap()
        .into_inner();
    let mut stored = Vec::new();
    while let Some(response) = stream.message().await.unwrap() {
        for record in response.records {
            stored.push((
                record.offset,
                String::from_utf8(record.value.to_vec()).unwrap(),
            ));
        }
    }
    stored
}

/// Offsets dense from 0, and per key (values are `key:sequence`) sequence numbers only
/// grow along the partition.
fn assert_dense_in_key_order(records: &[(u64, String)]) {
    let offsets: Vec<u64> = records.iter().map(|(o, _)| *o).collect();
    assert_eq!(
        offsets,
        (0..records.len() as u64).collect::<Vec<_>>(),
        "dense offsets"
    );
    let mut last: std::collections::HashMap<&str, u64> = Default::default();
    for (_, value) in records {
        let (key, n) = value.split_once(':').unwrap();
        let n: u64 = n.parse().unwrap();
        if let Some(previous) = last.insert(key, n) {
            assert!(previous < n, "key {key} out of order: {previous} then {n}");
        }
    }
}

/// Stops every running node with SIGTERM: each exits cleanly, with no panic in its log.
fn stop_all(processes: &mut [Option<Process>]) {
    for (i, process) in processes.iter_mut().enumerate() {
        if let Some(process) = process.take() {
            signal(process.id(), "TERM");
            let exited = process.wait();
            assert_no_panic(&exited.log, &format!("node {}", i + 1));
            assert!(exited.status.success(), "node {} exits cleanly", i + 1);
        }
    }
}

/// Publishes `value` with `key` through `client` (no partition: placed by the key).
async fn publish_keyed(
    client: &mut HeraldClient<tonic::transport::Channel>,
    topic: &str,
    key: &str,
    value: &str,
) -> Result<v1::PublishResponse, tonic::Status> {
    client
        .publish(v1::PublishRequest {
            topic: topic.into(),
            partition: None,
            payload: Some(v1::publish_request::Payload::Records(v1::Records {
                records: vec![v1::Record {
                    key: Some(key.as_bytes().to_vec().into()),
                    value: value.as_bytes().to_vec().into(),
                    ..Default::default()
                }],
            })),
            producer: None,
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Keyed publishes go through node 1 alone, which forwards two thirds of them to the
/// partitions' nodes. Those nodes are killed with SIGKILL and restarted, one after the
/// other, while publishing goes on. A checker then reads every partition through node 1:
/// every acknowledged record is there at the offset its acknowledgement named, offsets
/// are dense, and each key's records keep the order they were acknowledged in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_publishes_forwarded_by_one_node_survive_kill_9_of_the_others() {
    let root = tempfile::tempdir().unwrap();
    let ports = free_ports(6);
    let members = (0..3)
        .map(|i| format!("{}={}@{}", i + 1, ports[2 * i], ports[2 * i + 1]))
        .collect::<Vec<_>>()
        .join(",");
    let dirs: Vec<_> = (1..=3)
        .map(|id| root.path().join(format!("node{id}")))
        .collect();
    let mut processes: Vec<Option<Process>> = (0..3)
        .map(|i| {
            Some(serve(
                &dirs[i],
                i as u64 + 1,
                ports[2 * i],
                ports[2 * i + 1],
                &members,
            ))
        })
        .collect();
    let entry = ports[0];
    let mut client = HeraldClient::connect(format!("http://{entry}"))
        .await
        .unwrap();
    let deadline = Instant::now() + FAILOVER_BOUND;
    while let Err(status) = client
        .create_topic(v1::CreateTopicRequest {
            name: "ledger".into(),
            partitions: 3,
            config: None,
            // One copy of each partition: this test is about forwarding to the one node
            // that holds it (replicated partitions are the test below).
            replication_factor: Some(1),
        })
        .await
    {
        assert!(Instant::now() < deadline, "topic not created: {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // (partition, offset) -> value, for every acknowledged publish, and per key the
    // acknowledged values in order.
    let mut acked: std::collections::BTreeMap<(u32, u64), String> = Default::default();
    let mut refused = 0usize;
    let mut seq = 0u64;
    let mut round = || {
        seq += 1;
        let key = format!("account-{}", seq % 30);
        let value = format!("{key}:{seq}");
        (key, value)
    };
    for victim in [2usize, 3] {
        for phase in 0..3 {
            // Before the kill, while the victim is down, and after its restart.
            for _ in 0..60 {
                let (key, value) = round();
                match publish_keyed(&mut client, "ledger", &key, &value).await {
                    Ok(answer) => {
                        acked.insert((answer.partition, answer.base_offset), value);
                    }
                    Err(status) => {
                        assert_eq!(
                            status.code(),
                            tonic::Code::Unavailable,
                            "only a down node's partitions refuse: {status:?}"
                        );
                        assert_eq!(phase, 1, "refused while every node runs: {status:?}");
                        refused += 1;
                    }
                }
            }
            match phase {
                0 => {
                    let log = processes[victim - 1].take().unwrap().kill9();
                    assert_no_panic(&log, &format!("node {victim}"));
                }
                1 => {
                    let i = victim - 1;
                    processes[i] = Some(serve(
                        &dirs[i],
                        victim as u64,
                        ports[2 * i],
                        ports[2 * i + 1],
                        &members,
                    ));
                    // Until the restarted node answers its peers again, its partitions'
                    // forwarded publishes may still be refused.
                    let deadline = Instant::now() + FAILOVER_BOUND;
                    loop {
                        let (key, value) = round();
                        match publish_keyed(&mut client, "ledger", &key, &value).await {
                            Ok(answer) => {
                                acked.insert((answer.partition, answer.base_offset), value);
                                if answer.partition == (victim as u32 - 1) % 3
                                    || Instant::now() > deadline
                                {
                                    break;
                                }
                            }
                            Err(_) => {
                                assert!(
                                    Instant::now() < deadline,
                                    "node {victim} never served again"
                                );
                                refused += 1;
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
    println!(
        "{} publishes acknowledged, {refused} refused while their node was down",
        acked.len()
    );
    assert!(refused > 0, "the kills made some partitions unavailable");

    // The checker: every partition read through node 1 (forwarded for two of them).
    for partition in 0..3u32 {
        let stored = read_partition(&mut client, "ledger", partition).await;
        assert_dense_in_key_order(&stored);
        for ((p, offset), value) in acked.iter().filter(|((p, _), _)| *p == partition) {
            assert_eq!(
                stored.get(*offset as usize).map(|(_, v)| v),
                Some(value),
                "acknowledged record at partition {p} offset {offset}"
            );
        }
    }
    stop_all(&mut processes);
}

/// The leader of `partition` of `topic` as `server` reports it (0 while unknown).
async fn partition_leader(server: SocketAddr, topic: &str, partition: u32) -> u64 {
    let Ok(mut client) = HeraldClient::connect(format!("http://{server}")).await else {
        return 0;
    };
    let Ok(status) = client.cluster_status(v1::ClusterStatusRequest {}).await else {
        return 0;
    };
    status
        .into_inner()
        .topics
        .iter()
        .find(|t| t.name == topic)
        .and_then(|t| t.partitions.get(partition as usize))
        .map_or(0, |p| p.leader)
}

/// Publishes through `server`, retrying UNAVAILABLE (a failover under way) within
/// `FAILOVER_BOUND`; returns the answer and how long it took.
async fn publish_through(
    server: SocketAddr,
    key: &str,
    value: &str,
) -> (v1::PublishResponse, Duration) {
    let started = Instant::now();
    let mut client = HeraldClient::connect(format!("http://{server}"))
        .await
        .expect("connects");
    loop {
        match publish_keyed(&mut client, "replicated", key, value).await {
            Ok(answer) => return (answer, started.elapsed()),
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                assert!(
                    started.elapsed() < FAILOVER_BOUND,
                    "no acknowledgement within {FAILOVER_BOUND:?}: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// `HERALD_CLUSTER_FAULTS` (3 by default): how many faults the kill -9 tests inject.
fn cluster_faults() -> usize {
    std::env::var("HERALD_CLUSTER_FAULTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

/// Three nodes' fixed ports, data dirs and initial members, for tests that start, kill and
/// restart `herald serve` processes.
struct ThreeNodes {
    root: tempfile::TempDir,
    /// Each node's client port, then its peer port.
    ports: Vec<SocketAddr>,
    /// The peer addresses the members list names, when they are proxies' (empty if not).
    proxied: Vec<SocketAddr>,
    members: String,
}

impl ThreeNodes {
    fn new() -> ThreeNodes {
        Self::with(false)
    }

    /// Three nodes whose members list names a proxy's port as each node's peer address
    /// ([`PeerProxy`] at `proxied`, in front of `peer_ports`).
    fn behind_proxies() -> ThreeNodes {
        Self::with(true)
    }

    fn with(proxies: bool) -> ThreeNodes {
        let ports = free_ports(6);
        let proxied = if proxies { free_ports(3) } else { Vec::new() };
        let members = (0..3)
            .map(|i| {
                let peer = proxied.get(i).unwrap_or(&ports[2 * i + 1]);
                format!("{}={}@{}", i + 1, ports[2 * i], peer)
            })
            .collect::<Vec<_>>()
            .join(",");
        ThreeNodes {
            root: tempfile::tempdir().unwrap(),
            ports,
            proxied,
            members,
        }
    }

    /// Each node's own peer port (what it listens on).
    fn peer_ports(&self) -> Vec<SocketAddr> {
        (0..3).map(|i| self.ports[2 * i + 1]).collect()
    }

    /// Node `i + 1`'s data dir.
    fn dir(&self, i: usize) -> std::path::PathBuf {
        self.root.path().join(format!("node{}", i + 1))
    }

    /// Starts node `i + 1` (same ports and data dir every time).
    fn start(&self, i: usize) -> Process {
        serve(
            &self.dir(i),
            i as u64 + 1,
            self.ports[2 * i],
            self.ports[2 * i + 1],
            &self.members,
        )
    }

    fn client_of(&self, id: u64) -> SocketAddr {
        self.ports[2 * (id as usize - 1)]
    }

    /// Creates `name` with 2 partitions of 3 copies through node 1, retrying until the
    /// cluster has elected its metadata leader.
    async fn create_replicated(&self, name: &str) {
        let mut admin = HeraldClient::connect(format!("http://{}", self.client_of(1)))
            .await
            .unwrap();
        let deadline = Instant::now() + FAILOVER_BOUND;
        while let Err(status) = admin
            .create_topic(v1::CreateTopicRequest {
                name: name.into(),
                partitions: 2,
                config: None,
                replication_factor: Some(3),
            })
            .await
        {
            assert!(Instant::now() < deadline, "topic not created: {status:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Leaves a stopped replica's partition as a crash in the middle of writing leaves it:
/// garbage where its log's next batch would start and half a record at the end of its
/// entry journal. (`herald log check` finds where the log's valid batches end.) Neither
/// was acknowledged, so the replica must cut both on open and catch up from the others.
fn tear_tail(partition_dir: &Path) {
    use std::io::{Seek, SeekFrom, Write};
    let out = Command::new(HERALD)
        .args(["log", "check"])
        .arg(partition_dir)
        .output()
        .expect("herald runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "log check: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "...: offsets A..B, N batches, BYTES bytes in S segments"
    let words: Vec<&str> = text.split_whitespace().collect();
    let at = |suffix: &str| -> u64 {
        let i = words
            .iter()
            .position(|w| w.trim_end_matches(',') == suffix)
            .unwrap();
        words[i - 1].parse().unwrap()
    };
    let (bytes, segments) = (at("bytes"), at("segments"));
    assert_eq!(segments, 1, "a small test log has one segment: {text}");
    let mut log = std::fs::OpenOptions::new()
        .write(true)
        .open(partition_dir.join("00000000000000000000.log"))
        .unwrap();
    log.seek(SeekFrom::Start(bytes)).unwrap();
    log.write_all(&[0xA5; 64]).unwrap();
    let mut journal = std::fs::OpenOptions::new()
        .append(true)
        .open(partition_dir.join("raft.journal"))
        .unwrap();
    journal.write_all(&[0x5A; 20]).unwrap();
    let again = Command::new(HERALD)
        .args(["log", "check"])
        .arg(partition_dir)
        .output()
        .expect("herald runs");
    let text = String::from_utf8_lossy(&again.stdout);
    assert!(
        text.contains("torn tail"),
        "the garbage reads as a torn tail: {text}"
    );
}

/// The keyed publishes of the replicated-partition tests, and every acknowledgement:
/// (partition, offset) -> value, values `account-K:SEQ` over 20 keys.
#[derive(Default)]
struct Ledger {
    acked: std::collections::BTreeMap<(u32, u64), String>,
    seq: u64,
}

impl Ledger {
    /// One keyed publish through `server` (see [`publish_through`]): its partition and how
    /// long it took. An offset acknowledged twice fails the test.
    async fn publish(&mut self, server: SocketAddr) -> (u32, Duration) {
        self.seq += 1;
        let key = format!("account-{}", self.seq % 20);
        let value = format!("{key}:{}", self.seq);
        let (answer, took) = publish_through(server, &key, &value).await;
        let previous = self
            .acked
            .insert((answer.partition, answer.base_offset), value);
        assert!(previous.is_none(), "offset acknowledged twice: {answer:?}");
        (answer.partition, took)
    }

    async fn publish_many(&mut self, server: SocketAddr, count: usize) {
        for _ in 0..count {
            self.publish(server).await;
        }
    }
}

/// The leader of `partition` of `replicated` as `server` reports it, waiting up to
/// [`FAILOVER_BOUND`] while it has none.
async fn await_leader(server: SocketAddr, partition: u32) -> u64 {
    let deadline = Instant::now() + FAILOVER_BOUND;
    loop {
        let leader = partition_leader(server, "replicated", partition).await;
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

/// Replicated partitions (three copies) under kill -9 of their leaders: keyed publishes
/// go through a live node while the leader of a partition is killed with SIGKILL and
/// restarted, `HERALD_CLUSTER_FAULTS` times (3 by default; the README gives the command
/// that runs hundreds); every other restart finds torn tails in the killed node's log and
/// entry journal. The checker reads every partition from each node's own log:
/// every node holds exactly the acknowledged records at their acknowledged offsets,
/// offsets are dense, each key's records keep their order. Prints the failover times
/// (kill to the next acknowledged publish of that partition).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_partitions_lose_nothing_when_their_leaders_are_killed_9() {
    let faults = cluster_faults();
    let nodes = ThreeNodes::new();
    let start = |i: usize| nodes.start(i);
    let client_of = |id: u64| nodes.client_of(id);
    let mut processes: Vec<Option<Process>> = (0..3).map(|i| Some(start(i))).collect();
    nodes.create_replicated("replicated").await;

    let mut ledger = Ledger::default();
    let mut failovers = Vec::new();
    for fault in 0..faults {
        let partition = (fault % 2) as u32;
        let live = (1..=3u64)
            .find(|id| processes[*id as usize - 1].is_some())
            .unwrap();
        let victim = await_leader(client_of(live), partition).await;
        for _ in 0..20 {
            ledger.publish(client_of(victim % 3 + 1)).await;
        }
        let log = processes[victim as usize - 1].take().unwrap().kill9();
        assert_no_panic(&log, &format!("node {victim}"));
        let killed = Instant::now();
        let entry = client_of(victim % 3 + 1);
        let mut recovered = None;
        for _ in 0..40 {
            let (p, _) = ledger.publish(entry).await;
            if p == partition && recovered.is_none() {
                recovered = Some(killed.elapsed());
            }
        }
        failovers.extend(recovered);
        if fault % 2 == 1 {
            // Every other restart finds a torn tail, as a crash in mid-write leaves it.
            for partition in 0..2 {
                tear_tail(
                    &nodes
                        .dir(victim as usize - 1)
                        .join("topics/replicated")
                        .join(partition.to_string()),
                );
            }
        }
        processes[victim as usize - 1] = Some(start(victim as usize - 1));
        for _ in 0..20 {
            ledger.publish(client_of(victim)).await;
        }
    }
    failovers.sort();
    println!(
        "{} publishes acknowledged over {faults} leader kills; failover (kill to the partition's next acknowledgement): {failovers:?}",
        ledger.acked.len()
    );

    // The checker: each node's own log of each partition.
    assert_nodes_hold(
        &(1..=3).map(|id| nodes.client_of(id)).collect::<Vec<_>>(),
        &ledger.acked,
        2,
    )
    .await;
    stop_all(&mut processes);
}

/// Replicated partitions (three copies) while a partition's leader is cut off from the
/// other nodes by a fault-injecting proxy in front of every peer port (it keeps running
/// and keeps its client port), `HERALD_CLUSTER_FAULTS` times (3 by default). While cut
/// off, the old leader acknowledges nothing: every publish sent to it gets an error. The
/// two others elect a new leader and acknowledge publishes again; once healed, the old
/// leader catches up and drops the entries it alone held. The checker reads every
/// partition from each node's own log: every node holds exactly the acknowledged records
/// at their acknowledged offsets, offsets dense, each key in order. Prints the failover
/// times (cut to the partition's next acknowledged publish).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_acknowledges_nothing_and_the_majority_loses_nothing() {
    let faults = cluster_faults();
    let nodes = ThreeNodes::behind_proxies();
    let proxy = PeerProxy::start(&nodes.proxied, &nodes.peer_ports()).await;
    let mut processes: Vec<Option<Process>> = (0..3)
        .map(|i| {
            let process = nodes.start(i);
            proxy.set_pid(i as u64 + 1, process.id());
            Some(process)
        })
        .collect();
    let client_of = |id: u64| nodes.client_of(id);
    nodes.create_replicated("replicated").await;

    let mut ledger = Ledger::default();
    let mut failovers = Vec::new();
    let mut refused_by_isolated = 0;
    for fault in 0..faults {
        let partition = (fault % 2) as u32;
        let victim = await_leader(client_of(1), partition).await;
        for _ in 0..20 {
            ledger.publish(client_of(victim)).await;
        }
        proxy.isolate(Some(victim));
        let cut = Instant::now();
        // Publishes sent to the cut-off node, each with a key of its own: none may be
        // acknowledged (any answer is an error, within the bound a caller waits).
        let isolated: Vec<_> = (0..4)
            .map(|i| {
                let server = client_of(victim);
                let (key, value) = (
                    format!("isolated-{fault}-{i}"),
                    format!("isolated-{fault}-{i}:0"),
                );
                tokio::spawn(async move {
                    let mut client = HeraldClient::connect(format!("http://{server}"))
                        .await
                        .expect("connects");
                    tokio::time::timeout(
                        FAILOVER_BOUND,
                        publish_keyed(&mut client, "replicated", &key, &value),
                    )
                    .await
                })
            })
            .collect();
        let entry = client_of(victim % 3 + 1);
        let mut recovered = None;
        for _ in 0..40 {
            let (p, _) = ledger.publish(entry).await;
            if p == partition && recovered.is_none() {
                recovered = Some(cut.elapsed());
            }
        }
        failovers.extend(recovered);
        let leader = partition_leader(entry, "replicated", partition).await;
        assert!(
            leader != victim && leader != 0,
            "the majority side elected a new leader of partition {partition}, not {leader}"
        );
        for task in isolated {
            match task.await.unwrap() {
                Ok(Ok(answer)) => panic!(
                    "node {victim}, cut off from the others, acknowledged a publish: {answer:?}"
                ),
                Ok(Err(status)) => {
                    assert!(
                        matches!(
                            status.code(),
                            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                        ),
                        "{status:?}"
                    );
                    refused_by_isolated += 1;
                }
                // No answer within the bound is no acknowledgement either.
                Err(_) => refused_by_isolated += 1,
            }
        }
        proxy.isolate(None);
        for _ in 0..20 {
            ledger.publish(client_of(victim)).await;
        }
    }
    failovers.sort();
    println!(
        "{} publishes acknowledged over {faults} leader isolations, {refused_by_isolated} refused by the isolated leader; failover (cut to the partition's next acknowledgement): {failovers:?}",
        ledger.acked.len()
    );
    assert_eq!(
        proxy.unknown_sources(),
        0,
        "every peer connection came from a node, so each cut cut"
    );
    assert_nodes_hold(
        &(1..=3).map(|id| nodes.client_of(id)).collect::<Vec<_>>(),
        &ledger.acked,
        2,
    )
    .await;
    for (i, process) in processes.iter_mut().enumerate() {
        let log = process.take().unwrap().kill9();
        assert_no_panic(&log, &format!("node {}", i + 1));
    }
}

/// The checker of the replicated tests: the own log of each of `partitions` on each node
/// at `servers` holds exactly the `acked` records, at their acknowledged offsets (waiting
/// up to [`FAILOVER_BOUND`] for a node to catch up), offsets dense and each key in order.
async fn assert_nodes_hold(
    servers: &[SocketAddr],
    acked: &std::collections::BTreeMap<(u32, u64), String>,
    partitions: u32,
) {
    for (id, server) in servers.iter().enumerate() {
        let id = format!("{} (at {server})", id + 1);
        let mut client = HeraldClient::connect(format!("http://{server}"))
            .await
            .unwrap();
        for partition in 0..partitions {
            let want: Vec<(u64, String)> = acked
                .iter()
                .filter(|((p, _), _)| *p == partition)
                .map(|((_, o), v)| (*o, v.clone()))
                .collect();
            let deadline = Instant::now() + FAILOVER_BOUND;
            loop {
                let stored = read_partition(&mut client, "replicated", partition).await;
                if stored == want {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {id} partition {partition}: holds {} records, {} acknowledged; first difference: {:?}",
                    stored.len(),
                    want.len(),
                    want.iter().zip(&stored).find(|(a, b)| a != b)
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_dense_in_key_order(&want);
        }
    }
}

/// Replacing a node with the real binary and the README's commands: a fourth `herald
/// serve` starts, `herald cluster add-node` adds it and `herald cluster remove-node`
/// removes node 3, whose replicas move to node 4; node 3 is then killed. Publishing goes
/// on between the steps. Node 4 catches up from the groups' logs: nodes 1, 2 and 4 each
/// hold exactly the acknowledged records. Then node 1 is killed too, and the partitions
/// still take publishes: nodes 2 and 4 are a majority of each group only if node 4 votes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_replaced_through_the_cli_hands_its_replicas_to_the_new_one() {
    let nodes = ThreeNodes::new();
    let mut processes: Vec<Option<Process>> = (0..3).map(|i| Some(nodes.start(i))).collect();
    nodes.create_replicated("replicated").await;
    let mut ledger = Ledger::default();
    let (one, two) = (nodes.client_of(1), nodes.client_of(2));
    ledger.publish_many(one, 100).await;

    let ports = free_ports(2);
    let (client4, peer4) = (ports[0], ports[1]);
    let dir4 = nodes.root.path().join("node4");
    let four = serve(
        &dir4,
        4,
        client4,
        peer4,
        &format!("{},4={client4}@{peer4}", nodes.members),
    );
    let cli = |args: &[&str]| {
        let out = Command::new(HERALD)
            .args(args)
            .args(["--server", &one.to_string()])
            .env_remove("HERALD_SERVER")
            .output()
            .expect("herald runs");
        assert!(
            out.status.success(),
            "herald {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    cli(&[
        "cluster",
        "add-node",
        "4",
        "--client",
        &client4.to_string(),
        "--peer",
        &peer4.to_string(),
    ]);
    ledger.publish_many(one, 50).await;
    cli(&["cluster", "remove-node", "3"]);
    let status = cluster_status(one).unwrap();
    for topic in status["topics"].as_array().unwrap() {
        for partition in topic["partitions"].as_array().unwrap() {
            let mut replicas: Vec<u64> = partition["replicas"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_u64().unwrap())
                .collect();
            replicas.sort();
            assert_eq!(replicas, vec![1, 2, 4], "{partition}");
        }
    }
    ledger.publish_many(one, 50).await;
    // Node 4 has every record before node 3 goes, and partition 0's leader shows each
    // replica's progress.
    assert_nodes_hold(&[client4], &ledger.acked, 2).await;
    let leader = partition_leader(one, "replicated", 0).await;
    let at = [one, two, nodes.client_of(3), client4][leader as usize - 1];
    let text = Command::new(HERALD)
        .args(["cluster", "status", "--server", &at.to_string()])
        .env_remove("HERALD_SERVER")
        .output()
        .expect("herald runs");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.lines().any(|l| l.contains("partition 0:")
            && l.contains("entries behind: ")
            && l.contains(" 4=")),
        "{text}"
    );
    let log = processes[2].take().unwrap().kill9();
    assert_no_panic(&log, "node 3");
    ledger.publish_many(one, 50).await;
    assert_nodes_hold(&[one, two, client4], &ledger.acked, 2).await;

    let log = processes[0].take().unwrap().kill9();
    assert_no_panic(&log, "node 1");
    ledger.publish_many(two, 50).await;
    assert_nodes_hold(&[two, client4], &ledger.acked, 2).await;
    processes.push(Some(four));
    stop_all(&mut processes);
}

/// One consumer-group member that joins through any live node and joins again through
/// the next when its stream ends: every delivery it gets, in order, as
/// ((partition, offset), value), acked as it comes.
struct Roaming {
    servers: Vec<SocketAddr>,
    next: usize,
    stream: Option<(
        tokio::sync::mpsc::Sender<v1::SubscribeRequest>,
        tonic::Streaming<v1::SubscribeResponse>,
    )>,
    log: Vec<((u32, u64), String)>,
    /// When the stream last ended, until the next delivery: how long the group was away
    /// (from the member's side: its stream's end to its next delivery).
    lost_at: Option<Instant>,
    gaps: Vec<Duration>,
}

impl Roaming {
    async fn join(&mut self) {
        let deadline = Instant::now() + FAILOVER_BOUND * 3;
        loop {
            assert!(
                Instant::now() < deadline,
                "the member could not join any node"
            );
            let server = self.servers[self.next % self.servers.len()];
            self.next += 1;
            // Bounded: a paused node accepts the connection and never answers. Long
            // enough for a Join that waits out a takeover (the broker routes it for 8 s).
            match tokio::time::timeout(Duration::from_secs(12), Roaming::join_through(server)).await
            {
                Ok(Some(stream)) => {
                    self.stream = Some(stream);
                    return;
                }
                Ok(None) | Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// One attempt to join through `server`: the stream once Joined arrives, or `None`
    /// when the node cannot take the member now (unreachable, UNAVAILABLE).
    async fn join_through(
        server: SocketAddr,
    ) -> Option<(
        tokio::sync::mpsc::Sender<v1::SubscribeRequest>,
        tonic::Streaming<v1::SubscribeResponse>,
    )> {
        let mut client = HeraldClient::connect(format!("http://{server}"))
            .await
            .ok()?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let join = v1::Join {
            topic: "grouped".into(),
            group: "workers".into(),
            client_id: "roaming".into(),
            start_position: Some(v1::Position {
                kind: Some(v1::position::Kind::Earliest(v1::Earliest {})),
            }),
            ..Default::default()
        };
        tx.send(v1::SubscribeRequest {
            request: Some(v1::subscribe_request::Request::Join(join)),
        })
        .await
        .unwrap();
        let mut stream = client
            .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .ok()?
            .into_inner();
        match stream.message().await {
            Ok(Some(v1::SubscribeResponse {
                response: Some(v1::subscribe_response::Response::Joined(_)),
            })) => Some((tx, stream)),
            Err(status) if status.code() == tonic::Code::Unavailable => None,
            other => panic!("expected Joined, got {other:?}"),
        }
    }

    /// Receives for up to `wait`, acking what comes; joins again when the stream ends.
    async fn poll(&mut self, wait: Duration) {
        if self.stream.is_none() {
            self.join().await;
        }
        let (tx, rx) = self.stream.as_mut().unwrap();
        match tokio::time::timeout(wait, rx.message()).await {
            Err(_) => {}
            Ok(Ok(Some(v1::SubscribeResponse {
                response: Some(v1::subscribe_response::Response::Deliveries(d)),
            }))) => {
                let _ = tx
                    .send(v1::SubscribeRequest {
                        request: Some(v1::subscribe_request::Request::Ack(v1::Ack {
                            ack_ids: d.deliveries.iter().map(|d| d.ack_id.clone()).collect(),
                            ..Default::default()
                        })),
                    })
                    .await;
                if let Some(lost) = self.lost_at.take() {
                    self.gaps.push(lost.elapsed());
                }
                for d in d.deliveries {
                    self.log.push((
                        (d.partition, d.offset),
                        String::from_utf8(d.value.to_vec()).unwrap(),
                    ));
                }
            }
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) | Ok(Err(_)) => {
                self.stream = None;
                self.lost_at.get_or_insert_with(Instant::now);
            }
        }
    }

    fn seen(&self) -> std::collections::BTreeSet<(u32, u64)> {
        self.log.iter().map(|(at, _)| *at).collect()
    }
}

/// The node that runs `group` of `topic`, as DescribeGroup through `server` reports it.
async fn group_coordinator(server: SocketAddr, topic: &str, group: &str) -> u64 {
    let Ok(mut client) = HeraldClient::connect(format!("http://{server}")).await else {
        return 0;
    };
    client
        .describe_group(v1::DescribeGroupRequest {
            topic: topic.into(),
            group: group.into(),
        })
        .await
        .ok()
        .and_then(|r| r.into_inner().group)
        .map_or(0, |g| g.coordinator)
}

/// A consumer group of a replicated topic under kill -9 of the node that runs it: one
/// member consumes (acking everything) through whichever node is up, joining again
/// through the next when its stream ends, while keyed publishing goes on and the group's
/// coordinator is killed with SIGKILL and restarted, paused with SIGSTOP for 6 s, or cut
/// off from the other nodes for 6 s by the peer proxy (in turn), `HERALD_CLUSTER_FAULTS`
/// times (3 by default: one of each). The group drains: every acknowledged record is delivered, and each key's
/// records are first delivered in the order they were published. Prints how long the
/// group was away after each kill and how many deliveries were repeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_groups_drain_when_their_coordinators_are_killed_9() {
    let faults = cluster_faults();
    let nodes = ThreeNodes::behind_proxies();
    let proxy = PeerProxy::start(&nodes.proxied, &nodes.peer_ports()).await;
    let start = |i: usize| {
        let process = nodes.start(i);
        proxy.set_pid(i as u64 + 1, process.id());
        process
    };
    let client_of = |id: u64| nodes.client_of(id);
    let mut processes: Vec<Option<Process>> = (0..3).map(|i| Some(start(i))).collect();
    nodes.create_replicated("grouped").await;

    let mut acked: std::collections::BTreeSet<(u32, u64)> = Default::default();
    let mut seq = 0u64;
    let mut publish =
        async |server: SocketAddr, acked: &mut std::collections::BTreeSet<(u32, u64)>| {
            seq += 1;
            let key = format!("account-{}", seq % 10);
            let value = format!("{key}:{seq}");
            let started = Instant::now();
            let mut client = HeraldClient::connect(format!("http://{server}"))
                .await
                .expect("connects");
            loop {
                match publish_keyed(&mut client, "grouped", &key, &value).await {
                    Ok(answer) => {
                        acked.insert((answer.partition, answer.base_offset));
                        return;
                    }
                    Err(status) => {
                        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                        assert!(started.elapsed() < FAILOVER_BOUND, "{status:?}");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        };
    for _ in 0..100 {
        publish(client_of(1), &mut acked).await;
    }
    let mut member = Roaming {
        servers: (1..=3).map(client_of).collect(),
        next: 0,
        stream: None,
        log: Vec::new(),
        lost_at: None,
        gaps: Vec::new(),
    };
    for fault in 0..faults {
        // Consume a while, then find the node that runs the group and kill it.
        let target = member.log.len() + 30;
        let deadline = Instant::now() + FAILOVER_BOUND;
        while member.log.len() < target && member.seen().len() < acked.len() {
            assert!(
                Instant::now() < deadline,
                "the group stalled before fault {fault}"
            );
            member.poll(Duration::from_millis(100)).await;
        }
        let live = (1..=3u64)
            .find(|id| processes[*id as usize - 1].is_some())
            .unwrap();
        let deadline = Instant::now() + FAILOVER_BOUND;
        let victim = loop {
            let node = group_coordinator(client_of(live), "grouped", "workers").await;
            if node != 0 {
                break node;
            }
            assert!(Instant::now() < deadline, "the group has no coordinator");
            member.poll(Duration::from_millis(50)).await;
        };
        let entry = client_of(victim % 3 + 1);
        if fault % 3 == 2 {
            // Cut off from the other nodes (clients still reach it): its lease runs out,
            // it stops the group, and another node takes it over from the checkpoint.
            proxy.isolate(Some(victim));
            let cut = Instant::now();
            let phase = tokio::time::timeout(FAILOVER_BOUND * 3, async {
                for _ in 0..30 {
                    publish(entry, &mut acked).await;
                }
                while cut.elapsed() < Duration::from_secs(6) {
                    member.poll(Duration::from_millis(50)).await;
                }
            })
            .await;
            proxy.isolate(None);
            assert!(
                phase.is_ok(),
                "publishing and consuming hung while node {victim} was cut off"
            );
            continue;
        }
        if fault % 3 == 1 {
            // A pause instead (SIGSTOP, as a long stall would): another node takes the
            // group over meanwhile, and the paused node, woken after its lease ran out,
            // must deliver nothing before it learns it lost the group.
            let pid = processes[victim as usize - 1].as_ref().unwrap().id();
            signal(pid, "STOP");
            let paused = Instant::now();
            // Bounded, so the node is woken whatever happens meanwhile.
            let phase = tokio::time::timeout(FAILOVER_BOUND * 3, async {
                for _ in 0..30 {
                    publish(entry, &mut acked).await;
                }
                while paused.elapsed() < Duration::from_secs(6) {
                    member.poll(Duration::from_millis(50)).await;
                }
            })
            .await;
            signal(pid, "CONT");
            assert!(
                phase.is_ok(),
                "publishing and consuming hung while node {victim} was paused"
            );
            continue;
        }
        let log = processes[victim as usize - 1].take().unwrap().kill9();
        assert_no_panic(&log, &format!("node {victim}"));
        for _ in 0..30 {
            publish(entry, &mut acked).await;
            member.poll(Duration::from_millis(10)).await;
        }
        processes[victim as usize - 1] = Some(start(victim as usize - 1));
    }
    // Drain: every acknowledged record is delivered.
    let deadline = Instant::now() + FAILOVER_BOUND * 2;
    while !acked.is_subset(&member.seen()) {
        assert!(
            Instant::now() < deadline,
            "the group did not drain: {} of {} delivered",
            acked.intersection(&member.seen()).count(),
            acked.len()
        );
        member.poll(Duration::from_millis(100)).await;
    }
    // Each key's first deliveries come in publish order.
    let mut highest: std::collections::HashMap<String, u64> = Default::default();
    let mut first_seen = std::collections::BTreeSet::new();
    for (at, value) in &member.log {
        if !first_seen.insert(*at) {
            continue;
        }
        let (key, n) = value.split_once(':').unwrap();
        let n: u64 = n.parse().unwrap();
        if let Some(previous) = highest.insert(key.to_owned(), n) {
            assert!(
                previous < n,
                "key {key}: {n} first delivered after {previous}"
            );
        }
    }
    let repeats = member.log.len() - first_seen.len();
    println!(
        "{} records, {} deliveries ({repeats} repeats) over {faults} coordinator kills, pauses and cuts; the group was away for {:?}",
        acked.len(),
        member.log.len(),
        member.gaps
    );
    assert_eq!(
        proxy.unknown_sources(),
        0,
        "every peer connection came from a node, so each cut cut"
    );
    drop(member);
    stop_all(&mut processes);
}
