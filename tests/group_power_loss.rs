//! A group whose committed offset is past its log's end after a power loss (fsync
//! `never`: acked records never reached the disk) comes down to the end at start, with a
//! metric, so records published afterwards at the reused offsets are delivered, not
//! skipped as if acked.

mod common;

use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(5);

/// What a power loss leaves of a partition written under fsync `never` whose pages never
/// reached the disk: a segment of zeros and no checkpoint.
fn lose_the_log(partition_dir: &std::path::Path) {
    for entry in std::fs::read_dir(partition_dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name == "checkpoint" {
            std::fs::remove_file(&path).unwrap();
        } else if name.ends_with(".log") || name.ends_with("index") {
            let len = std::fs::metadata(&path).unwrap().len();
            std::fs::write(&path, vec![0u8; len as usize]).unwrap();
        }
    }
}

#[tokio::test]
async fn offsets_past_the_recovered_log_end_come_down_to_it() {
    let (dir, broker, mut c) = start_with_topic("t", 1).await;
    let records = (0..10).map(|i| record(None, &format!("old{i}"))).collect();
    publish(&mut c, "t", Some(0), records).await.unwrap();
    let mut m = subscribe(&mut c, join("t", "g", Some(fast_settings(30_000, 20))))
        .await
        .unwrap();
    let (got, _) = m.deliveries(10, WAIT).await;
    m.ack(&got).await;
    wait_for_group(&c, "t", "g", |d| d.partitions[0].committed_offset == 10).await;
    drop(m);
    drop(c);
    stop(broker).await;

    lose_the_log(&dir.path().join("topics/t/0"));
    let broker = start(test_config(dir.path())).await;
    let mut c = client(&broker).await;
    assert_eq!(
        describe_topic(&mut c, "t").await.partitions[0].end_offset,
        0
    );
    let d = describe_group(&mut c, "t", "g").await;
    assert_eq!(
        d.partitions[0].committed_offset, 0,
        "brought down to the log end"
    );
    let metrics = broker.metrics_addr.unwrap();
    let (_, exposition) = http_get(metrics, "/metrics").await;
    assert_eq!(
        metric_value(&exposition, "herald_group_offsets_reset_total"),
        Some(1.0)
    );
    // New records at the reused offsets 0..3 reach the group.
    let records = (0..3).map(|i| record(None, &format!("new{i}"))).collect();
    publish(&mut c, "t", Some(0), records).await.unwrap();
    let mut m = subscribe(&mut c, join("t", "g", None)).await.unwrap();
    let (got, _) = m.deliveries(3, WAIT).await;
    let values: Vec<String> = got
        .iter()
        .map(|d| String::from_utf8(d.value.to_vec()).unwrap())
        .collect();
    assert_eq!(values, ["new0", "new1", "new2"]);
    drop(m);
    drop(c);
    stop(broker).await;
}
