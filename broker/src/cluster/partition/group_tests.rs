//! Three replicas of one partition on three in-process nodes, over the real peer port
//! (127.0.0.1, temporary data dirs): elections, replicated appends, readers that see only
//! the committed prefix, leader loss, restarts from the data dir, and the cut of a
//! diverged tail.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::group::HandOver;
use super::types::PartAppended;
use super::{AppendError, PartitionGroup};
use crate::cluster::{Cluster, ClusterSettings, NodeAddr, NodeId};
use crate::config::{Config, FsyncSetting};
use crate::registry::Registry;
use crate::storage::batch::{self, BatchBuilder, Record};
use crate::storage::{LogConfig, LogReader};

const TOPIC: &str = "orders";
/// Every wait for the cluster is bounded by this.
const WAIT: Duration = Duration::from_secs(20);

struct Node {
    id: NodeId,
    dir: PathBuf,
    client: SocketAddr,
    peer: SocketAddr,
    running: Option<(Arc<Cluster>, PartitionGroup)>,
}

struct Harness {
    _tmp: tempfile::TempDir,
    nodes: Vec<Node>,
    members: BTreeMap<NodeId, NodeAddr>,
    members_text: String,
}

#[path = "../../../../tests/support/ports.rs"]
mod ports;
use ports::free_ports;

fn log_config() -> LogConfig {
    LogConfig {
        segment_bytes: 256 * 1024,
        ..LogConfig::default()
    }
}

/// A batch of `n` records whose values name `tag`.
fn batch_of(tag: u32, n: usize) -> Vec<u8> {
    let mut b = BatchBuilder::default();
    for i in 0..n {
        let value = format!("{tag}:{i}");
        b.push(&Record {
            timestamp: 1_000,
            key: None,
            value: value.as_bytes(),
            headers: &[],
        });
    }
    b.finish()
}

/// Every readable byte of the log.
fn bytes_of(reader: &LogReader) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(chunk) = reader.read(at, 1 << 20).unwrap() {
        out.extend_from_slice(&chunk.bytes);
        at = chunk.next_offset;
    }
    out
}

/// Every readable record: offset and value.
fn records_of(reader: &LogReader) -> BTreeMap<u64, String> {
    let bytes = bytes_of(reader);
    let mut out = BTreeMap::new();
    for b in batch::batches(&bytes) {
        for r in b.unwrap().records() {
            let r = r.unwrap();
            out.insert(r.offset, String::from_utf8(r.value.to_vec()).unwrap());
        }
    }
    out
}

impl Harness {
    async fn new(n: u64) -> Harness {
        let tmp = tempfile::tempdir().unwrap();
        let ports = free_ports(2 * n as usize);
        let nodes: Vec<Node> = (0..n as usize)
            .map(|i| Node {
                id: i as u64 + 1,
                dir: tmp.path().join(format!("node{}", i + 1)),
                client: ports[2 * i],
                peer: ports[2 * i + 1],
                running: None,
            })
            .collect();
        let members: BTreeMap<NodeId, NodeAddr> = nodes
            .iter()
            .map(|n| {
                (
                    n.id,
                    NodeAddr {
                        client: n.client.to_string(),
                        peer: n.peer.to_string(),
                    },
                )
            })
            .collect();
        let members_text = members
            .iter()
            .map(|(id, a)| format!("{id}={}@{}", a.client, a.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut harness = Harness {
            _tmp: tmp,
            nodes,
            members,
            members_text,
        };
        for id in 1..=n {
            harness.start(id).await;
        }
        let group = harness.group(1);
        group.initialize(harness.members.clone()).await.unwrap();
        harness
    }

    /// Starts node `id` from its data dir: its cluster node and its replica.
    async fn start(&mut self, id: NodeId) {
        let members_text = self.members_text.clone();
        let node = &mut self.nodes[id as usize - 1];
        assert!(node.running.is_none());
        let config = Config {
            data_dir: node.dir.clone(),
            listen: node.client,
            fsync: FsyncSetting::Never,
            ..Config::default()
        };
        let registry = tokio::task::spawn_blocking(move || Registry::open(config))
            .await
            .unwrap()
            .unwrap();
        let settings = ClusterSettings::new(id, node.peer, members_text);
        let cluster = Cluster::start(&settings, Arc::new(registry)).await.unwrap();
        let group = PartitionGroup::start(
            &cluster.partition_context(),
            TOPIC,
            0,
            node.dir.join("replica"),
            log_config(),
        )
        .await
        .unwrap();
        node.running = Some((cluster, group));
    }

    async fn stop(&mut self, id: NodeId) {
        let (cluster, group) = self.nodes[id as usize - 1].running.take().unwrap();
        group.shutdown().await;
        cluster.shutdown().await;
    }

    fn group(&self, id: NodeId) -> &PartitionGroup {
        &self.nodes[id as usize - 1].running.as_ref().unwrap().1
    }

    fn live(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|n| n.running.is_some())
            .map(|n| n.id)
            .collect()
    }

    /// Waits until every live replica names the same live leader.
    async fn leader(&self) -> NodeId {
        let deadline = Instant::now() + WAIT;
        loop {
            let live = self.live();
            let seen: Vec<Option<NodeId>> =
                live.iter().map(|id| self.group(*id).leader()).collect();
            if let Some(Some(leader)) = seen.first()
                && seen.iter().all(|s| *s == Some(*leader))
                && live.contains(leader)
            {
                return *leader;
            }
            assert!(Instant::now() < deadline, "no agreed leader: {seen:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Appends through the leader, retrying across elections; the offsets it got.
    async fn append(&self, bytes: Vec<u8>) -> PartAppended {
        let deadline = Instant::now() + WAIT;
        loop {
            let leader = self.leader().await;
            match self.group(leader).append(bytes.clone()).await {
                Ok(appended) => return appended,
                Err(error @ (AppendError::NotLeader { .. } | AppendError::Failed(_))) => {
                    assert!(Instant::now() < deadline, "append kept failing: {error}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(error) => panic!("append: {error}"),
            }
        }
    }

    /// Waits until every live replica's readers see up to `end`.
    async fn caught_up(&self, end: u64) {
        let deadline = Instant::now() + WAIT;
        for id in self.live() {
            let reader = self.group(id).reader();
            while reader.high_watermark() < end {
                assert!(
                    Instant::now() < deadline,
                    "node {id} sees up to {} of {end}",
                    reader.high_watermark()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    /// Every live replica holds the same bytes, and every acknowledged batch is where it
    /// was acknowledged.
    fn check(&self, acked: &[(u32, PartAppended, usize)]) {
        let live = self.live();
        let first = bytes_of(&self.group(live[0]).reader());
        for id in &live {
            let reader = self.group(*id).reader();
            assert_eq!(bytes_of(&reader), first, "node {id} holds other bytes");
            let records = records_of(&reader);
            for (tag, appended, n) in acked {
                assert_eq!(appended.count as usize, *n);
                for i in 0..*n {
                    let offset = appended.base_offset + i as u64;
                    assert_eq!(
                        records.get(&offset).map(String::as_str),
                        Some(format!("{tag}:{i}").as_str()),
                        "node {id} offset {offset}"
                    );
                }
            }
        }
    }

    async fn shutdown(mut self) {
        for id in self.live() {
            self.stop(id).await;
        }
    }
}

fn end_of(acked: &[(u32, PartAppended, usize)]) -> u64 {
    acked
        .iter()
        .map(|(_, a, _)| a.base_offset + u64::from(a.count))
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_agree_fail_over_and_cut_a_diverged_tail() {
    let mut h = Harness::new(3).await;
    let mut acked = Vec::new();
    let mut tag = 0u32;
    for _ in 0..20 {
        tag += 1;
        let n = 1 + (tag as usize % 7);
        let appended = h.append(batch_of(tag, n)).await;
        acked.push((tag, appended, n));
    }
    // Dense offsets from 0, in order, whatever the leader's blank and membership entries.
    let mut next = 0;
    for (_, a, n) in &acked {
        assert_eq!(a.base_offset, next);
        next += *n as u64;
    }
    h.caught_up(end_of(&acked)).await;
    h.check(&acked);

    // The leader alone: what it appends cannot commit, and its readers do not see it.
    let old = h.leader().await;
    for id in h.live() {
        if id != old {
            h.stop(id).await;
        }
    }
    let before = h.group(old).reader().high_watermark();
    tag += 1;
    let lonely_tag = tag;
    let lonely = h.group(old).append(batch_of(tag, 3)).await;
    assert!(matches!(lonely, Err(AppendError::Unsure(_))), "{lonely:?}");
    assert_eq!(h.group(old).reader().high_watermark(), before);
    h.stop(old).await;

    // The other two elect a leader among themselves and take writes at the offsets the
    // old leader's uncommitted tail had.
    for id in 1..=3 {
        if id != old {
            h.start(id).await;
        }
    }
    let new = h.leader().await;
    assert_ne!(new, old);
    for _ in 0..5 {
        tag += 1;
        let appended = h.append(batch_of(tag, 2)).await;
        acked.push((tag, appended, 2));
    }
    assert_eq!(acked[20].1.base_offset, before);

    // The old leader restarts from its data dir, cuts its diverged tail and catches up.
    h.start(old).await;
    h.caught_up(end_of(&acked)).await;
    h.check(&acked);
    let records = records_of(&h.group(old).reader());
    assert!(
        records
            .values()
            .all(|v| !v.starts_with(&format!("{lonely_tag}:"))),
        "the uncommitted batch survived"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_batch_survives_random_leader_stops_and_restarts() {
    let mut h = Harness::new(3).await;
    let mut acked = Vec::new();
    let mut tag = 0u32;
    // A fixed seed: the run is the same every time.
    let mut seed: u64 = 0x5eed_cafe_f00d_0001;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut stops, mut leader_stops) = (0, 0);
    for _ in 0..8 {
        for _ in 0..(1 + next() % 6) {
            tag += 1;
            let n = 1 + (next() % 20) as usize;
            let appended = h.append(batch_of(tag, n)).await;
            acked.push((tag, appended, n));
        }
        let live = h.live();
        if live.len() == 3 && next() % 3 != 0 {
            // Mostly the leader: that is what makes a new election and may leave a tail.
            let victim = if next() % 4 == 0 {
                live[(next() % 3) as usize]
            } else {
                h.leader().await
            };
            stops += 1;
            if h.group(victim).leader() == Some(victim) {
                leader_stops += 1;
            }
            h.stop(victim).await;
        } else if live.len() < 3 {
            let stopped = (1..=3).find(|id| !live.contains(id)).unwrap();
            h.start(stopped).await;
        }
    }
    assert!(
        stops >= 3 && leader_stops >= 2,
        "{stops} stops, {leader_stops} of leaders"
    );
    for id in 1..=3 {
        if !h.live().contains(&id) {
            h.start(id).await;
        }
    }
    h.caught_up(end_of(&acked)).await;
    h.check(&acked);
    h.shutdown().await;
}

/// Leadership handed to another caught-up replica: a batch proposed before, whose answer
/// nobody polls yet (as a PublishStream's, while the stream waits to queue its next
/// publish), is committed and answered; one proposed during the hand-over is held, then
/// refused as no longer the leader's (or, proposed before it, committed); every replica
/// holds every acknowledged batch, and the new leader takes appends.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leadership_is_handed_over_without_losing_a_batch() {
    let h = Harness::new(3).await;
    let mut acked = Vec::new();
    let mut tag = 0u32;
    for _ in 0..10 {
        tag += 1;
        let appended = h.append(batch_of(tag, 3)).await;
        acked.push((tag, appended, 3));
    }
    let from = h.leader().await;
    let to = (1..=3).find(|id| *id != from).unwrap();
    // A leader grants a vote only once its own lease (900 ms from its election) is over.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let old = h.group(from);
    tag += 1;
    let unpolled_tag = tag;
    let unpolled = old.propose(batch_of(tag, 2)).await.expect("proposed");
    tag += 1;
    let held_tag = tag;
    let (handed, held) = tokio::join!(old.hand_over(to, &h.members[&to]), async {
        tokio::time::sleep(Duration::from_millis(1)).await;
        match old.propose(batch_of(held_tag, 2)).await {
            Ok(answer) => Some(answer.await.expect("a batch proposed is committed")),
            Err(AppendError::NotLeader { .. }) => None,
            Err(error) => panic!("a publish held by a hand-over: {error}"),
        }
    });
    assert!(matches!(handed, HandOver::Done { .. }), "{handed:?}");
    if let Some(appended) = held {
        acked.push((held_tag, appended, 2));
    }
    let appended = unpolled
        .await
        .expect("the batch proposed before is answered");
    acked.push((unpolled_tag, appended, 2));
    assert_eq!(h.leader().await, to);
    for _ in 0..5 {
        tag += 1;
        let appended = h.append(batch_of(tag, 3)).await;
        acked.push((tag, appended, 3));
    }
    h.caught_up(end_of(&acked)).await;
    h.check(&acked);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_for_a_group_the_node_lacks_is_not_found() {
    use herald_proto::peer::peer_client::PeerClient;
    use herald_proto::peer::{Group, RaftRequest};

    let h = Harness::new(1).await;
    let peer = h.nodes[0].peer;
    let mut client = PeerClient::connect(format!("http://{peer}")).await.unwrap();
    let request = |topic: &str, partition: u32| RaftRequest {
        to: 1,
        from: 2,
        group: Group::Partition as i32,
        payload: vec![0xff; 16].into(),
        topic: topic.to_owned(),
        partition,
    };
    let status = client.vote(request(TOPIC, 7)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    let status = client
        .append_entries(request("other", 0))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    // The group it holds reads the message (and refuses these bytes as undecodable).
    let status = client.vote(request(TOPIC, 0)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    h.shutdown().await;
}

/// CPU time this process has used (user + system), from `/proc/self/stat` (clock ticks
/// of 10 ms: Linux's USER_HZ is 100).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// CPU used over `window` while the cluster idles, as a fraction of one core.
async fn idle_share(window: Duration) -> f64 {
    let (cpu, at) = (process_cpu(), Instant::now());
    tokio::time::sleep(window).await;
    (process_cpu() - cpu).as_secs_f64() / at.elapsed().as_secs_f64()
}

/// Measures what an idle partition replica costs: three nodes in this process, first
/// with one partition group, then with `PARTITION_GROUPS` (default 100) more, each with
/// a replica on every node and their leaders spread over the nodes.
/// `cargo test --release -p herald-broker --lib idle_cpu -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn idle_cpu_of_partition_replicas() {
    let extra: u32 = std::env::var("PARTITION_GROUPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let window = Duration::from_secs(10);
    let h = Harness::new(3).await;
    h.leader().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let base = idle_share(window).await;

    let mut groups = Vec::new();
    for node in &h.nodes {
        let (cluster, _) = node.running.as_ref().unwrap();
        for p in 0..extra {
            let dir = node.dir.join(format!("idle-{p}"));
            let group =
                PartitionGroup::start(&cluster.partition_context(), "idle", p, dir, log_config())
                    .await
                    .unwrap();
            groups.push((node.id, p, group));
        }
    }
    for (id, p, group) in &groups {
        if u64::from(*p % 3) + 1 == *id {
            group.initialize(h.members.clone()).await.unwrap();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while groups.iter().any(|(_, _, g)| g.leader().is_none()) {
        assert!(Instant::now() < deadline, "groups without a leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let loaded = idle_share(window).await;
    let replicas = 3 * extra as usize;
    println!(
        "idle CPU: base (3 nodes, 1 group) {:.2}% of a core; with {extra} more groups ({replicas} replicas) {:.2}%; per replica {:.1} µs/s ({:.4}% of a core); heartbeat {} ms",
        base * 100.0,
        loaded * 100.0,
        (loaded - base) / replicas as f64 * 1e6,
        (loaded - base) / replicas as f64 * 100.0,
        super::group::HEARTBEAT_INTERVAL_MS
    );
    for (_, _, group) in groups {
        group.shutdown().await;
    }
    h.shutdown().await;
}

/// Replicated append throughput of one partition group: `BATCHES` (default 1,000)
/// batches of 1,000 records of 100 bytes, proposed to the leader `CONCURRENCY` (default
/// 8) at a time, each answered once a quorum has it durable (fsync always on every
/// replica) and the leader has applied it.
/// `cargo test --release -p herald-broker --lib replicated_append -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn replicated_append_throughput() {
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (batches, concurrency) = (env("BATCHES", 1000), env("CONCURRENCY", 8));
    let h = Harness::new(3).await;
    let leader = h.leader().await;
    let mut b = BatchBuilder::with_capacity(128 * 1024);
    let value = [7u8; 100];
    for _ in 0..1000 {
        b.push(&Record {
            timestamp: 1_000,
            key: None,
            value: &value,
            headers: &[],
        });
    }
    let bytes = b.finish();
    let group = h.group(leader);
    let started = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let worker = || async {
        while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < batches {
            group.append(bytes.clone()).await.unwrap();
        }
    };
    futures::future::join_all((0..concurrency).map(|_| worker())).await;
    let elapsed = started.elapsed();
    let records = batches as f64 * 1000.0;
    println!(
        "replicated append: {batches} batches of 1000 x 100 B ({} B each), {concurrency} in flight, 3 replicas: {:.2} s, {:.0} batches/s, {:.0} records/s, {:.1} MB/s of batches",
        bytes.len(),
        elapsed.as_secs_f64(),
        batches as f64 / elapsed.as_secs_f64(),
        records / elapsed.as_secs_f64(),
        (batches * bytes.len()) as f64 / elapsed.as_secs_f64() / 1e6
    );
    h.caught_up(group.reader().high_watermark()).await;
    h.shutdown().await;
}
