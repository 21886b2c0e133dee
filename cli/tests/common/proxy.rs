//! A fault-injecting TCP proxy in front of each node's peer port, which can cut one node
//! off from the others while it keeps running and keeps its client port.
//!
//! The cluster's members list names each node's peer address as its proxy's port, so every
//! message between nodes goes through the proxy in front of its destination. Cutting node
//! `n` off means: no connection from `n` or to `n` carries another byte. A proxy in front
//! of node 2 sees connections from nodes 1 and 3 alike, so it tells them apart by who owns
//! the other end: the connecting socket (found in `/proc/net/tcp` by its port) belongs to
//! one node process's file descriptors (looked up again for a while, since a node dials
//! before the test knows its process id). A connection whose source it cannot name is
//! let through, and counted: the tests check that none was.
//!
//! A cut blackholes, as a network partition does: bytes are neither forwarded nor
//! refused, open connections hang, new ones are accepted and then hang, until the node's
//! keep-alive gives up on them. A heal closes the hung connections, and new ones flow.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The proxies in front of every node's peer port.
pub struct PeerProxy {
    /// Node id (index + 1) → its proxy's address, for the members list.
    pub addrs: Vec<SocketAddr>,
    /// Node id → its process id, as the test (re)starts processes.
    pids: Arc<Mutex<HashMap<u64, u32>>>,
    /// The node cut off now, if any.
    cut: watch::Sender<Option<u64>>,
    /// Connections whose source node was not found (let through): a test checks it is 0,
    /// or its cuts may not have cut.
    unknown: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl PeerProxy {
    /// A proxy at each of `listen` in front of the peer port at the same index of
    /// `targets` (node ids 1, 2, ...).
    pub async fn start(listen: &[SocketAddr], targets: &[SocketAddr]) -> PeerProxy {
        let pids = Arc::new(Mutex::new(HashMap::new()));
        let (cut, _) = watch::channel(None);
        let unknown = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for (i, (at, target)) in listen.iter().zip(targets).enumerate() {
            let listener = TcpListener::bind(at).await.expect("the proxy binds");
            let destination = i as u64 + 1;
            let (pids, cut, target, unknown) =
                (pids.clone(), cut.subscribe(), *target, unknown.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let Ok((inbound, from)) = listener.accept().await else {
                        continue;
                    };
                    let (pids, unknown, cut) = (pids.clone(), unknown.clone(), cut.clone());
                    tokio::spawn(async move {
                        let source = identify(from, inbound.local_addr().ok(), &pids).await;
                        if source.is_none() {
                            unknown.fetch_add(1, Ordering::Relaxed);
                        }
                        relay(inbound, target, source, destination, cut).await;
                    });
                }
            }));
        }
        PeerProxy {
            addrs: listen.to_vec(),
            pids,
            cut,
            unknown,
            tasks,
        }
    }

    /// Node `id` now runs as process `pid` (call after every start).
    pub fn set_pid(&self, id: u64, pid: u32) {
        self.pids.lock().unwrap().insert(id, pid);
    }

    /// How many connections came from a process that is not a node.
    pub fn unknown_sources(&self) -> usize {
        self.unknown.load(Ordering::Relaxed)
    }

    /// Cuts node `id` off from the others (`None` heals).
    pub fn isolate(&self, id: Option<u64>) {
        self.cut.send_replace(id);
    }
}

impl Drop for PeerProxy {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Carries one connection from `source` (when known) to `destination`'s peer port, until
/// either side closes it or a cut involving either node blackholes it.
async fn relay(
    mut inbound: TcpStream,
    target: SocketAddr,
    source: Option<u64>,
    destination: u64,
    mut cut: watch::Receiver<Option<u64>>,
) {
    let severed = move |cut: &Option<u64>| {
        cut.is_some_and(|node| node == destination || Some(node) == source)
    };
    // A connection made while its nodes are apart hangs unanswered until the heal.
    if cut.wait_for(|c| !severed(c)).await.is_err() {
        return;
    }
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        return;
    };
    let severed_now = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
        _ = cut.wait_for(severed) => true,
    };
    if severed_now {
        // Hold both ends, carrying nothing, until the heal; then close them.
        let _ = cut.wait_for(|c| !severed(c)).await;
    }
}

/// [`owner_of`], looked up again for up to 2 s: a node dials its peers as soon as it
/// starts, before the test, which waits for its "serving" line, has told the proxy its
/// process id. Bytes wait meanwhile, so nothing passes before its source is known.
async fn identify(
    from: SocketAddr,
    to: Option<SocketAddr>,
    pids: &Mutex<HashMap<u64, u32>>,
) -> Option<u64> {
    for _ in 0..100 {
        if let Some(node) = owner_of(from, to, pids) {
            return Some(node);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    None
}

/// The node whose process owns the socket connected from `from` to `to`, found through
/// `/proc/net/tcp` (its inode) and each node's `/proc/PID/fd`.
fn owner_of(
    from: SocketAddr,
    to: Option<SocketAddr>,
    pids: &Mutex<HashMap<u64, u32>>,
) -> Option<u64> {
    let to = to?;
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let hex = |addr: SocketAddr| format!("{:04X}", addr.port());
    let inode = table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, remote) = (fields.get(1)?, fields.get(2)?);
        (local.ends_with(&format!(":{}", hex(from))) && remote.ends_with(&format!(":{}", hex(to))))
            .then(|| fields.get(9).map(|s| s.to_string()))?
    })?;
    let wanted = format!("socket:[{inode}]");
    let pids = pids.lock().unwrap().clone();
    pids.into_iter().find_map(|(node, pid)| {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
        fds.flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == wanted))
            .then_some(node)
    })
}
