//! Publish then fetch over real gRPC: offsets are dense, records come back intact.

mod common;

use common::*;

#[tokio::test]
async fn publish_then_fetch_round_trip() {
    let (_dir, broker, mut c) = start_with_topic("orders", 1).await;
    for i in 0..10 {
        let r = publish(
            &mut c,
            "orders",
            None,
            vec![
                record(Some("k"), &format!("v{i}a")),
                record(None, &format!("v{i}b")),
            ],
        )
        .await
        .unwrap();
        assert_eq!(
            (r.partition, r.base_offset, r.last_offset),
            (0, i * 2, i * 2 + 1)
        );
    }
    let records = fetch_all(&mut c, "orders", 0, 0).await.unwrap();
    assert_eq!(records.len(), 20);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.offset, i as u64);
        let expected = format!("v{}{}", i / 2, if i % 2 == 0 { "a" } else { "b" });
        assert_eq!(r.value.as_ref(), expected.as_bytes());
        assert!(
            r.timestamp_ms > 0,
            "a zero timestamp is stamped by the broker"
        );
    }
    assert_eq!(records[0].key.as_deref(), Some(&b"k"[..]));
    assert_eq!(records[1].key, None);
    let from_7 = fetch_all(&mut c, "orders", 0, 7).await.unwrap();
    assert_eq!(from_7.first().map(|r| r.offset), Some(7));
    stop(broker).await;
}
