//! Memory stays bounded when clients open Fetch streams and never read them: what the
//! broker produces ahead of HTTP/2 flow control is bounded per stream and broker-wide
//! (`response_buffer_bytes`), so 200 unread follow streams cannot grow the heap without
//! limit.

mod common;

use std::time::Duration;

use common::*;
use herald_proto::v1::{self, position::Kind};

/// Records of 1000 bytes, 8 MiB in all: enough for several full responses per stream.
const RECORDS: usize = 8 * 1024;
const VALUE_BYTES: usize = 1000;
const STREAMS: usize = 200;
/// The bound this test holds the heap growth to: the broker-wide response budget's default
/// (128 MiB) plus room for the streams' own state and the client's receive windows.
/// Before the budget, this test measured 724 MiB of growth (median of 3, debug build).
const GROWTH_MAX_BYTES: u64 = 200 * 1024 * 1024;

/// Anonymous resident memory of this process (the heap, not the mapped log files).
fn rss_anon_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("RssAnon:"))
        .expect("RssAnon in /proc/self/status");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("a number of kB");
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_follow_streams_keep_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(test_config(dir.path())).await;
    let mut c = client(&broker).await;
    create_topic(&mut c, "big", 1).await;
    let value = "v".repeat(VALUE_BYTES);
    for _ in 0..RECORDS / 1024 {
        let records = (0..1024).map(|_| record(None, &value)).collect();
        publish(&mut c, "big", Some(0), records).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_anon_bytes();

    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        let request = v1::FetchRequest {
            follow: true,
            max_bytes: 4 * 1024 * 1024,
            ..fetch_request("big", 0, Kind::Earliest(v1::Earliest {}))
        };
        // Opened and never read.
        streams.push(c.fetch(request).await.unwrap().into_inner());
    }
    // Let every stream produce all it is allowed to ahead of the reader.
    let mut peak = 0;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(rss_anon_bytes().saturating_sub(before));
    }
    println!(
        "heap growth with {STREAMS} unread follow streams: {:.1} MiB",
        peak as f64 / (1024.0 * 1024.0)
    );
    assert!(
        peak < GROWTH_MAX_BYTES,
        "{STREAMS} unread streams grew the heap by {peak} bytes (bound {GROWTH_MAX_BYTES})"
    );

    // A reader on another connection is served in full meanwhile. (On the same connection
    // the unread streams' data fills the client's HTTP/2 connection window: that is the
    // client's flow control, not the broker's memory.)
    let mut reader_client = client(&broker).await;
    let request = v1::FetchRequest {
        follow: true,
        max_bytes: 4 * 1024 * 1024,
        ..fetch_request("big", 0, Kind::Earliest(v1::Earliest {}))
    };
    let mut reading = reader_client.fetch(request).await.unwrap().into_inner();
    let mut read = 0;
    while read < RECORDS {
        let response = tokio::time::timeout(Duration::from_secs(10), reading.message())
            .await
            .expect("a response within 10 s")
            .unwrap()
            .unwrap();
        for record in &response.records {
            assert_eq!(record.offset, read as u64, "records in order, none skipped");
            read += 1;
        }
    }
    assert_eq!(read, RECORDS);
    drop(streams);
    drop(reading);
    drop((c, reader_client));
    stop(broker).await;
}
