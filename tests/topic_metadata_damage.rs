//! Damaged topic metadata never deletes data: a topic whose `topic.toml` is missing,
//! unreadable or fails its checksum is not loaded, its files and groups are kept byte for
//! byte, every request for it is FAILED_PRECONDITION naming the file, the other topics
//! work, and restoring the file brings the topic back with its records and groups. A file
//! without a checksum line (an earlier Herald's, or edited by hand) loads and is sealed.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use herald_proto::HeraldClient;
use herald_proto::v1;
use tonic::Code;
use tonic::transport::Channel;

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().unwrap() != "lock" {
                out.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

/// A broker with topics "damaged" (2 partitions, records, a group with progress) and
/// "healthy", stopped cleanly.
async fn populate(dir: &Path) {
    let broker = start(test_config(dir)).await;
    let mut c = client(&broker).await;
    create_topic(&mut c, "damaged", 2).await;
    create_topic(&mut c, "healthy", 1).await;
    for i in 0..5 {
        publish(
            &mut c,
            "damaged",
            Some(1),
            vec![record(None, &format!("r{i}"))],
        )
        .await
        .unwrap();
    }
    publish(&mut c, "healthy", None, vec![record(None, "h")])
        .await
        .unwrap();
    c.create_group(v1::CreateGroupRequest {
        topic: "damaged".into(),
        group: "g".into(),
        settings: None,
        start_position: None,
    })
    .await
    .unwrap();
    c.seek(v1::SeekRequest {
        topic: "damaged".into(),
        group: "g".into(),
        partition: Some(1),
        position: position(v1::position::Kind::Offset(3)),
    })
    .await
    .unwrap();
    drop(c);
    stop(broker).await;
}

async fn expect_failed_precondition(c: &mut HeraldClient<Channel>, file: &str, what: &str) {
    let check = |op: &str, status: tonic::Status| {
        assert_eq!(status.code(), Code::FailedPrecondition, "{op}: {status:?}");
        assert!(
            status.message().contains(file) && status.message().contains(what),
            "{op}: the message names the file and the damage: {}",
            status.message()
        );
    };
    let describe = c
        .describe_topic(v1::DescribeTopicRequest {
            name: "damaged".into(),
        })
        .await;
    check("DescribeTopic", describe.unwrap_err());
    let published = publish(c, "damaged", Some(0), vec![record(None, "x")]).await;
    check("Publish", published.unwrap_err());
    check("Fetch", fetch_all(c, "damaged", 1, 0).await.unwrap_err());
    let created = c
        .create_topic(v1::CreateTopicRequest {
            name: "damaged".into(),
            partitions: 1,
            config: None,
            replication_factor: None,
        })
        .await;
    check("CreateTopic over it", created.unwrap_err());
    let deleted = c
        .delete_topic(v1::DeleteTopicRequest {
            name: "damaged".into(),
        })
        .await;
    check("DeleteTopic", deleted.unwrap_err());
    let joined = subscribe(c, join("damaged", "g", None)).await;
    check("Subscribe", joined.err().expect("Subscribe refused"));
}

/// Starts a broker on `dir` whose topic "damaged" has a damaged `topic.toml`: the topic is
/// refused with FAILED_PRECONDITION naming the file and `what` is wrong, "healthy" is
/// served, and not a byte of the damaged topic or its group changes.
async fn expect_refused_and_kept(dir: &Path, what: &str) {
    let before = snapshot(dir);
    let broker = start(test_config(dir)).await;
    let mut c = client(&broker).await;
    // The other topic is served as ever.
    let healthy = fetch_all(&mut c, "healthy", 0, 0).await.unwrap();
    assert!(!healthy.is_empty());
    publish(&mut c, "healthy", None, vec![record(None, "h2")])
        .await
        .unwrap();
    let listed = c
        .list_topics(v1::ListTopicsRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = listed.topics.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["healthy"], "{what}");
    expect_failed_precondition(&mut c, "topic.toml", what).await;
    let (_, metrics) = http_get(broker.metrics_addr.unwrap(), "/metrics").await;
    assert_eq!(metric_value(&metrics, "herald_damaged_topics"), Some(1.0));
    drop(c);
    stop(broker).await;
    // Not a byte of the damaged topic or its group changed.
    let after = snapshot(dir);
    for (path, bytes) in &before {
        if path.starts_with(dir.join("topics/healthy")) {
            continue;
        }
        assert_eq!(
            after.get(path),
            Some(bytes),
            "{what}: {} changed",
            path.display()
        );
    }
}

/// Restoring topic.toml brings the topic back with its records and its group.
async fn expect_restored(dir: &Path, meta: &Path, good: &[u8]) {
    std::fs::write(meta, good).unwrap();
    let broker = start(test_config(dir)).await;
    let mut c = client(&broker).await;
    let records = fetch_all(&mut c, "damaged", 1, 0).await.unwrap();
    assert_eq!(records.len(), 5);
    let group = describe_group(&mut c, "damaged", "g").await;
    assert_eq!(group.partitions[1].committed_offset, 3, "{group:?}");
    drop(c);
    stop(broker).await;
}

#[tokio::test]
async fn damaged_topic_metadata_keeps_the_bytes_and_is_failed_precondition() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path()).await;
    let meta = dir.path().join("topics/damaged/topic.toml");
    let good = std::fs::read(&meta).unwrap();

    for (damage, what) in [
        (None, "missing"),
        (
            Some(&b"name = \"damaged\"\npartitions = \x00\x01"[..]),
            "parsing",
        ),
        // Without a checksum line, as after a hand edit: checked for what it says.
        (
            Some(&b"name = \"other\"\npartitions = 2\ncreated_ms = 1\n"[..]),
            "names topic",
        ),
    ] {
        match damage {
            None => std::fs::remove_file(&meta).unwrap(),
            Some(bytes) => std::fs::write(&meta, bytes).unwrap(),
        }
        expect_refused_and_kept(dir.path(), what).await;
    }
    expect_restored(dir.path(), &meta, &good).await;
}

/// Damage that leaves `topic.toml` valid TOML with every key (a flipped bit in a digit, a
/// cut inside the last number) fails its checksum and is refused like unparseable damage,
/// rather than loading the topic with another partition count or creation time.
#[tokio::test]
async fn a_topic_toml_that_still_parses_after_damage_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path()).await;
    let meta = dir.path().join("topics/damaged/topic.toml");
    let good = std::fs::read(&meta).unwrap();
    let text = String::from_utf8(good.clone()).unwrap();

    // `partitions = 2` becomes `partitions = 3`: one bit.
    let digit = text.find("partitions = 2").expect("two partitions") + "partitions = ".len();
    let mut flipped = good.clone();
    flipped[digit] ^= 1;
    // Cut after the last key, inside its number: still parses, with another value.
    let created = text.find("created_ms = ").expect("a creation time") + "created_ms = ".len();
    let cut = good[..created + 4].to_vec();
    for damage in [flipped, cut] {
        std::fs::write(&meta, &damage).unwrap();
        expect_refused_and_kept(dir.path(), "checksum mismatch").await;
    }
    expect_restored(dir.path(), &meta, &good).await;
}

/// A `topic.toml` without a checksum line (an earlier Herald's, or edited by hand) that
/// parses and ends with a newline loads, and is sealed in place.
#[tokio::test]
async fn a_topic_toml_without_a_checksum_line_loads_and_is_sealed() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path()).await;
    let meta = dir.path().join("topics/damaged/topic.toml");
    let good = std::fs::read_to_string(&meta).unwrap();
    let (line, body) = good.split_once('\n').unwrap();
    assert!(line.starts_with("# herald-checksum crc32c="), "{good}");
    std::fs::write(&meta, body).unwrap();
    expect_restored(dir.path(), &meta, body.as_bytes()).await;
    assert_eq!(
        std::fs::read_to_string(&meta).unwrap(),
        good,
        "sealed again"
    );

    // Cut short, it has lost its last newline: refused, not sealed.
    std::fs::write(&meta, body.trim_end()).unwrap();
    expect_refused_and_kept(dir.path(), "does not end with a newline").await;
}

/// A partition log refused at open (here its only segment is gone, so the log would
/// silently start later than its checkpoint says) takes its topic aside like damaged
/// metadata: the broker starts, other topics work, the topic's files stay, and putting the
/// file back brings the topic back.
#[tokio::test]
async fn a_damaged_partition_log_keeps_its_topic_aside() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path()).await;
    let segment = dir.path().join("topics/damaged/1/00000000000000000000.log");
    let good = std::fs::read(&segment).unwrap();
    std::fs::remove_file(&segment).unwrap();
    let before = snapshot(dir.path());
    let broker = start(test_config(dir.path())).await;
    let mut c = client(&broker).await;
    assert!(!fetch_all(&mut c, "healthy", 0, 0).await.unwrap().is_empty());
    expect_failed_precondition(&mut c, "00000000000000000000.log", "missing").await;
    let (_, metrics) = http_get(broker.metrics_addr.unwrap(), "/metrics").await;
    assert_eq!(metric_value(&metrics, "herald_damaged_topics"), Some(1.0));
    drop(c);
    stop(broker).await;
    let after = snapshot(dir.path());
    for (path, bytes) in &before {
        if path.starts_with(dir.path().join("topics/healthy")) {
            continue;
        }
        assert_eq!(after.get(path), Some(bytes), "{} changed", path.display());
    }

    std::fs::write(&segment, &good).unwrap();
    let broker = start(test_config(dir.path())).await;
    let mut c = client(&broker).await;
    assert_eq!(fetch_all(&mut c, "damaged", 1, 0).await.unwrap().len(), 5);
    let group = describe_group(&mut c, "damaged", "g").await;
    assert_eq!(group.partitions[1].committed_offset, 3, "{group:?}");
    drop(c);
    stop(broker).await;
}

#[tokio::test]
async fn an_interrupted_create_is_removed_and_the_name_reused() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path()).await;
    // What a crash during CreateTopic leaves: the marker, a partition, no topic.toml.
    let partial = dir.path().join("topics/partial");
    std::fs::create_dir_all(partial.join("0")).unwrap();
    std::fs::write(partial.join("creating"), b"").unwrap();
    let broker = start(test_config(dir.path())).await;
    let mut c = client(&broker).await;
    assert!(!partial.exists(), "an interrupted create is cleaned up");
    create_topic(&mut c, "partial", 1).await;
    assert!(
        !partial.join("creating").exists(),
        "a finished create leaves no marker"
    );
    publish(&mut c, "partial", None, vec![record(None, "p")])
        .await
        .unwrap();
    drop(c);
    stop(broker).await;
    let broker = start(test_config(dir.path())).await;
    let mut c = client(&broker).await;
    assert_eq!(fetch_all(&mut c, "partial", 0, 0).await.unwrap().len(), 1);
    assert_eq!(fetch_all(&mut c, "damaged", 1, 0).await.unwrap().len(), 5);
    drop(c);
    stop(broker).await;
}
