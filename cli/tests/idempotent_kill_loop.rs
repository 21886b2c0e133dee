//! Idempotent publishing under kill -9: the real `herald` binary is SIGKILLed again and
//! again while the Rust producer publishes keyed records through it; the producer retries
//! every batch whose ack it lost, against the restarted process. Afterwards every record is
//! in the log exactly once, each key's records in the order they were sent, and no output
//! of the broker mentions a panic.
//!
//! The producer reaches the broker through a forwarder on a fixed local address, since
//! each restart binds a new ephemeral port. `idempotence_off_stores_duplicates` (ignored
//! by default: it asserts nothing) runs the same loop without idempotence and prints how
//! many records were stored twice:
//!
//! ```text
//! cargo test -p herald-cli --test idempotent_kill_loop -- --ignored --nocapture
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_client::{Client, ProducerConfig, Record};
use tokio::net::{TcpListener, TcpStream};

mod common;

use common::{Server, assert_no_panic, create_topic, fetch_from_earliest};

const TOPIC: &str = "idem";
const PARTITIONS: u32 = 3;
const KEYS: u64 = 12;
const RECORDS: u64 = 6000;
const KILLS: u32 = 6;
/// Small segments, so the load rolls several and kills land around rolls (where the
/// producer snapshot is written) as well as between them.
const CONFIG: &str = "segment_bytes = 131072\nmax_batch_bytes = 65536\nmax_message_bytes = 16384\n";

/// Forwards connections on a fixed address to wherever the broker is now.
async fn forwarder(target: Arc<Mutex<SocketAddr>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let to = *target.lock().unwrap();
            tokio::spawn(async move {
                if let Ok(mut server) = TcpStream::connect(to).await {
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    addr
}

/// Runs the loop; returns how many records were stored twice and whether any key's
/// records are out of order.
async fn kill_loop(idempotent: bool) -> (usize, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let config = config.to_str().unwrap().to_owned();
    let data = dir.path().join("data");
    let args = ["--fsync", "always", "--config", config.as_str()];
    let mut server = Server::start(&data, &args);
    create_topic(&mut server.client().await, TOPIC, PARTITIONS).await;
    let target = Arc::new(Mutex::new(server.addr()));
    let front = forwarder(target.clone()).await;

    let client = Client::builder(format!("http://{front}"))
        .request_timeout(Duration::from_secs(3))
        .connect()
        .await
        .unwrap();
    let producer = client.producer(
        ProducerConfig::new(TOPIC)
            .idempotent(idempotent)
            .batch_bytes(4 * 1024)
            .linger(Duration::from_millis(1))
            .max_retries(100_000)
            .retry_backoff(Duration::from_millis(10), Duration::from_millis(100)),
    );
    let sender = tokio::spawn(async move {
        let mut deliveries = Vec::with_capacity(RECORDS as usize);
        for i in 0..RECORDS {
            let key = format!("key-{}", i % KEYS);
            let record = Record::new(format!("{key}:{i}:{}", "x".repeat(100))).key(key);
            deliveries.push(producer.send(record).await.expect("queued"));
            if i % 100 == 0 {
                // Spread the load over the kills rather than queue it all at once.
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }
        for d in deliveries {
            tokio::time::timeout(Duration::from_secs(180), d)
                .await
                .expect("acked in time")
                .expect("every record is acked");
        }
        let retried = producer.retried_batches();
        producer.close().await.unwrap();
        retried
    });

    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for kill in 0..KILLS {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        tokio::time::sleep(Duration::from_millis(60 + rng % 250)).await;
        let log = server.kill9();
        assert_no_panic(&log, &format!("herald serve before kill {kill}"));
        server = Server::start(&data, &args);
        *target.lock().unwrap() = server.addr();
    }
    let retried = sender.await.expect("the producer finishes");
    assert!(retried > 0, "the kills made the producer retry");
    println!("idempotent = {idempotent}: {retried} batches retried");

    let mut raw = server.client().await;
    let mut by_key: HashMap<String, Vec<u64>> = HashMap::new();
    for p in 0..PARTITIONS {
        let mut stream = raw
            .fetch(fetch_from_earliest(TOPIC, p))
            .await
            .unwrap()
            .into_inner();
        // Without `follow`, the stream ends at the end of the partition.
        while let Some(response) = stream.message().await.unwrap() {
            for r in response.records {
                let value = String::from_utf8(r.value.to_vec()).unwrap();
                let mut parts = value.split(':');
                let key = parts.next().unwrap().to_owned();
                let i: u64 = parts.next().unwrap().parse().unwrap();
                by_key.entry(key).or_default().push(i);
            }
        }
    }
    let (_, log) = server.terminate();
    assert_no_panic(&log, "herald serve at the end");

    let mut duplicates = 0;
    let mut disorder = Vec::new();
    let mut distinct = 0;
    for (key, seen) in &by_key {
        let mut unique = seen.clone();
        unique.sort_unstable();
        unique.dedup();
        duplicates += seen.len() - unique.len();
        distinct += unique.len();
        let mut first_seen = seen.clone();
        let mut kept = std::collections::HashSet::new();
        first_seen.retain(|i| kept.insert(*i));
        if first_seen != unique {
            disorder.push(key.clone());
        }
    }
    assert_eq!(distinct as u64, RECORDS, "every acked record is in the log");
    (duplicates, disorder)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_loop_stores_every_record_once_with_idempotence() {
    let (duplicates, disorder) = kill_loop(true).await;
    assert_eq!(duplicates, 0, "records stored twice under kill -9");
    assert!(disorder.is_empty(), "keys out of order: {disorder:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check: run with --ignored --nocapture"]
async fn idempotence_off_stores_duplicates() {
    let (duplicates, disorder) = kill_loop(false).await;
    println!(
        "without idempotence: {duplicates} of {RECORDS} records stored twice; keys out of order: {}",
        disorder.len()
    );
}
