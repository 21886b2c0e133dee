//! Memory stays bounded when clients open Fetch or Subscribe streams and never read them:
//! what the broker produces ahead of HTTP/2 flow control is bounded per stream and
//! broker-wide (`response_buffer_bytes`), so 200 unread streams cannot grow the heap
//! without limit.
//!
//! Both tests measure this process's heap, so they take turns (`ONE_AT_A_TIME`).

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

/// Subscribe's case: records of 16 KiB, so that a member's in-flight messages (1,000 by
/// default) are worth several full responses.
const SUBSCRIBE_RECORDS: usize = 2048;
const SUBSCRIBE_VALUE_BYTES: usize = 16 * 1024;
/// The bound for 200 unread Subscribe streams: the response budget's default (128 MiB),
/// plus per stream a few responses of at most 64 KiB sent outside it and the decoded
/// deliveries the group's driver queues for the member (about 1 MiB per stream). Before
/// Subscribe's responses were charged to the budget, this test measured 495 MiB.
const SUBSCRIBE_GROWTH_MAX_BYTES: u64 = 350 * 1024 * 1024;

/// The tests of this file measure the same process's heap: one runs at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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

/// This process's heap once it has settled: two samples 50 ms apart within 1 MiB of each
/// other (what the publishes left behind is freed by then).
async fn settled_rss_anon_bytes() -> u64 {
    let deadline = tokio::time::Instant::now() + CONDITION_WAIT;
    let mut previous = rss_anon_bytes();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = rss_anon_bytes();
        if now.abs_diff(previous) < 1024 * 1024 {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the heap did not settle: {previous} then {now} bytes"
        );
        previous = now;
    }
}

/// Samples the heap's growth over `before` until the broker has produced everything it
/// may ahead of the unread streams: the counter `produced` (summed over its series) has
/// not moved for a second. Returns the peak growth seen.
async fn peak_growth_until_quiet(
    broker: &herald_broker::server::Broker,
    produced: &str,
    before: u64,
) -> u64 {
    const QUIET: Duration = Duration::from_secs(1);
    const LONGEST: Duration = Duration::from_secs(60);
    let started = tokio::time::Instant::now();
    let (mut peak, mut count, mut moved_at) = (0, f64::NAN, started);
    loop {
        peak = peak.max(rss_anon_bytes().saturating_sub(before));
        let now_count = metric_sum(&metrics(broker).await, produced);
        let now = tokio::time::Instant::now();
        if now_count != count {
            (count, moved_at) = (now_count, now);
        } else if now - moved_at >= QUIET {
            return peak;
        }
        assert!(
            now - started < LONGEST,
            "{produced} still moving after {LONGEST:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_follow_streams_keep_memory_bounded() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let (_dir, broker, mut c) = start_with_topic("big", 1).await;
    let value = "v".repeat(VALUE_BYTES);
    for _ in 0..RECORDS / 1024 {
        let records = (0..1024).map(|_| record(None, &value)).collect();
        publish(&mut c, "big", Some(0), records).await.unwrap();
    }
    let before = settled_rss_anon_bytes().await;

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
    // Every stream produces all it is allowed to ahead of the reader.
    let peak = peak_growth_until_quiet(&broker, "herald_fetch_records_total", before).await;
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

/// Subscribe's responses are charged to the same budget: 200 members of 200 groups, with
/// single deliveries (the encoding that copies values into the response), never read their
/// streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_subscribe_streams_keep_memory_bounded() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let (_dir, broker, mut c) = start_with_topic("big", 1).await;
    let value = "v".repeat(SUBSCRIBE_VALUE_BYTES);
    for _ in 0..SUBSCRIBE_RECORDS / 64 {
        let records = (0..64).map(|_| record(None, &value)).collect();
        publish(&mut c, "big", Some(0), records).await.unwrap();
    }
    let before = settled_rss_anon_bytes().await;

    // One connection whose windows let every member's stream take its Joined and a
    // little more (200 x 64 KiB fits the connection's 16 MiB), so what piles up is what
    // the broker produces ahead of flow control, not what this client buffers.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", broker.addr))
        .unwrap()
        .initial_stream_window_size(64 * 1024)
        .initial_connection_window_size(16 * 1024 * 1024)
        .connect()
        .await
        .unwrap();
    let mut c = herald_proto::HeraldClient::new(channel);
    let mut members = Vec::new();
    for g in 0..STREAMS {
        // Joined with the default settings, then never read again.
        let member = tokio::time::timeout(
            Duration::from_secs(10),
            subscribe(&mut c, join("big", &format!("g{g}"), None)),
        )
        .await
        .unwrap_or_else(|_| panic!("member {g} joined within 10 s"));
        members.push(member.unwrap());
    }
    let peak = peak_growth_until_quiet(&broker, "herald_group_deliveries_total", before).await;
    println!(
        "heap growth with {STREAMS} unread Subscribe streams: {:.1} MiB",
        peak as f64 / (1024.0 * 1024.0)
    );
    assert!(
        peak < SUBSCRIBE_GROWTH_MAX_BYTES,
        "{STREAMS} unread Subscribe streams grew the heap by {peak} bytes (bound {SUBSCRIBE_GROWTH_MAX_BYTES})"
    );

    // A member of another group on another connection gets every record meanwhile.
    let mut reader_client = client(&broker).await;
    let mut member = subscribe(&mut reader_client, join("big", "reader", None))
        .await
        .unwrap();
    let mut read = 0;
    while read < SUBSCRIBE_RECORDS {
        let (deliveries, _) = member.deliveries(1024, Duration::from_secs(10)).await;
        assert!(
            !deliveries.is_empty(),
            "deliveries within 10 s ({read} so far)"
        );
        for d in &deliveries {
            assert_eq!(d.offset, read as u64, "records in order, none skipped");
            read += 1;
        }
        member.ack(&deliveries).await;
    }
    drop(members);
    drop(member);
    drop((c, reader_client));
    stop(broker).await;
}
