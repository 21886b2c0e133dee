//! Loopback ports for test nodes that bind a port chosen in advance (a cluster's members
//! list names every node's ports before any node starts, and a restarted node binds its
//! port again).
//!
//! A port found by binding `127.0.0.1:0` and releasing it comes from the kernel's
//! ephemeral range, where any outgoing connection (a peer dialling another node, a client
//! of a test running in parallel) can take it before the node binds it; a CI run failed
//! on exactly that. These ports come from below the ephemeral range, which the kernel
//! never hands out by itself, and each is handed out once per test process.
//!
//! Shared by the test crates with `#[path]`; it has no dependencies.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

/// The lowest port handed out: above the well-known services a developer machine runs.
const LOW: u32 = 20_000;

/// `n` distinct loopback ports, each bindable when returned and never returned twice in
/// this process.
pub fn free_ports(n: usize) -> Vec<SocketAddr> {
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let high = ephemeral_low();
    if high <= LOW + 1_000 {
        // An unusual ephemeral range leaves no room below it: fall back to the kernel's pick.
        return kernel_ports(n);
    }
    let span = high - LOW;
    // Test binaries may run side by side (nextest): start each process at its own place.
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7_919) % span,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    let mut ports = Vec::with_capacity(n);
    for _ in 0..span {
        if ports.len() == n {
            break;
        }
        let port = LOW + NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let addr = SocketAddr::from(([127, 0, 0, 1], port as u16));
        // Bindable now (no listener, no connection bound to it): nothing in this range
        // takes it later except another test, which this process's counter rules out.
        if TcpListener::bind(addr).is_ok() {
            ports.push(addr);
        }
    }
    assert_eq!(ports.len(), n, "no {n} free ports below {high}");
    ports
}

/// The first port of the kernel's ephemeral range.
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

fn kernel_ports(n: usize) -> Vec<SocketAddr> {
    let listeners: Vec<_> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    listeners.iter().map(|l| l.local_addr().unwrap()).collect()
}
