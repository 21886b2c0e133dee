//! Damaged group files never delete a group: the broker starts, refuses that one group
//! with FAILED_PRECONDITION naming the file (a `group.toml` that fails its checksum too),
//! keeps its bytes, serves every other group and topic, and loads the group again once
//! its files are restored. Deleting it is the way to start it again. Interrupted creates
//! are cleaned up.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use herald_proto::v1;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(5);

/// A broker with topic `t` (10 records) and groups `g1` (6 acked) and `g2`, shut down.
async fn two_groups(dir: &Path) {
    let broker = start(test_config(dir)).await;
    let mut c = client(&broker).await;
    create_topic(&mut c, "t", 1).await;
    let records = (0..10).map(|i| record(None, &format!("v{i}"))).collect();
    publish(&mut c, "t", Some(0), records).await.unwrap();
    let settings = v1::GroupSettings {
        ordering: v1::OrderingMode::None as i32,
        ..fast_settings(30_000, 20)
    };
    for group in ["g1", "g2"] {
        let mut m = subscribe(&mut c, join("t", group, Some(settings.clone())))
            .await
            .unwrap();
        let (got, _) = m.deliveries(10, WAIT).await;
        assert_eq!(got.len(), 10);
        if group == "g1" {
            let acked: Vec<v1::Delivery> = got.into_iter().filter(|d| d.offset < 6).collect();
            m.ack(&acked).await;
            wait_for_group(&c, "t", "g1", |d| d.partitions[0].committed_offset == 6).await;
        }
    }
    drop(c);
    stop(broker).await;
}

async fn describe_status(
    c: &mut herald_proto::HeraldClient<tonic::transport::Channel>,
    group: &str,
) -> tonic::Status {
    c.describe_group(v1::DescribeGroupRequest {
        topic: "t".into(),
        group: group.into(),
    })
    .await
    .expect_err("the damaged group is refused")
}

/// Damages `file` of group g1 (`damage` makes the bad bytes from the good ones), checks
/// the broker refuses g1 only and keeps the bytes, then restores the file and checks g1 is
/// back where it was.
async fn refuses_then_recovers(file: &str, damage: impl FnOnce(&str) -> String) {
    let dir = tempfile::tempdir().unwrap();
    two_groups(dir.path()).await;
    let path = dir.path().join("groups/t/g1").join(file);
    let good = std::fs::read(&path).unwrap();
    let damage = damage(&String::from_utf8_lossy(&good)).into_bytes();
    assert_ne!(damage, good, "the damage changes the file");
    std::fs::write(&path, &damage).unwrap();

    let broker = start(test_config(dir.path())).await;
    let mut c = client(&broker).await;
    let status = describe_status(&mut c, "g1").await;
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains(&path.display().to_string()),
        "the message names the file: {}",
        status.message()
    );
    let joined = subscribe(&mut c, join("t", "g1", None)).await;
    let status = joined
        .err()
        .expect("a join of the damaged group is refused");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    // Everything else works.
    assert_eq!(
        describe_group(&mut c, "t", "g2").await.partitions[0].committed_offset,
        0
    );
    publish(&mut c, "t", Some(0), vec![record(None, "v10")])
        .await
        .unwrap();
    let mut m = subscribe(&mut c, join("t", "g2", None)).await.unwrap();
    let (got, _) = m.deliveries(11, WAIT).await;
    assert_eq!(got.len(), 11);
    drop(m);
    drop(c);
    stop(broker).await;
    assert_eq!(
        std::fs::read(&path).unwrap(),
        damage,
        "the damaged bytes are kept"
    );

    // The operator restores the file: the group is back with its acks.
    std::fs::write(&path, &good).unwrap();
    let broker = start(test_config(dir.path())).await;
    let mut c = client(&broker).await;
    assert_eq!(
        describe_group(&mut c, "t", "g1").await.partitions[0].committed_offset,
        6
    );
    drop(c);
    stop(broker).await;
}

#[tokio::test]
async fn a_damaged_state_file_refuses_the_group_and_keeps_it() {
    refuses_then_recovers("state", |_| "not a snapshot".into()).await;
}

#[tokio::test]
async fn a_damaged_group_toml_refuses_the_group_and_keeps_it() {
    refuses_then_recovers("group.toml", |_| "ack_deadline_ms = [".into()).await;
}

/// `group.toml` without its checksum line, as after a hand edit: what it says is still
/// checked.
fn unsealed(good: &str) -> &str {
    let (line, body) = good.split_once('\n').expect("a first line");
    assert!(line.starts_with("# herald-checksum crc32c="), "{good}");
    body
}

/// A flipped bit in a digit of a setting (`ack_deadline_ms` 30000 becomes 20000) leaves
/// valid TOML: the checksum refuses it, rather than the group loading with another setting.
#[tokio::test]
async fn a_bit_flip_in_a_group_setting_is_refused() {
    refuses_then_recovers("group.toml", |good| {
        let digit = good
            .find("ack_deadline_ms = 3")
            .expect("group.toml holds the ack deadline")
            + "ack_deadline_ms = ".len();
        let mut bytes = good.as_bytes().to_vec();
        bytes[digit] ^= 1;
        String::from_utf8(bytes).unwrap()
    })
    .await;
}

/// A `group.toml` without a checksum line (an earlier Herald's, or edited by hand) that
/// parses and ends with a newline loads, and is sealed in place.
#[tokio::test]
async fn a_group_toml_without_a_checksum_line_loads_and_is_sealed() {
    let dir = tempfile::tempdir().unwrap();
    two_groups(dir.path()).await;
    let path = dir.path().join("groups/t/g1/group.toml");
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, unsealed(&good)).unwrap();
    let broker = start(test_config(dir.path())).await;
    let mut c = client(&broker).await;
    assert_eq!(
        describe_group(&mut c, "t", "g1").await.partitions[0].committed_offset,
        6
    );
    drop(c);
    stop(broker).await;
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        good,
        "sealed again"
    );
}

/// A damaged `topic_created_ms` looks like a group left from an earlier topic of the same
/// name: the group is refused and kept, never deleted on that guess.
#[tokio::test]
async fn a_group_toml_naming_another_topic_creation_is_refused_not_deleted() {
    refuses_then_recovers("group.toml", |good| {
        let good = unsealed(good);
        let line = good
            .lines()
            .find(|l| l.starts_with("topic_created_ms"))
            .expect("group.toml records its topic's creation");
        good.replace(line, "topic_created_ms = 1")
    })
    .await;
}

/// A key turned into another word is refused, not read as the key's default.
#[tokio::test]
async fn a_group_toml_with_an_unknown_key_is_refused() {
    refuses_then_recovers("group.toml", |good| {
        let good = unsealed(good);
        // An optional key: read as its default, the topic check would be skipped.
        assert!(good.contains("topic_created_ms"), "{good}");
        good.replacen("topic_created_ms", "topic_created_ns", 1)
    })
    .await;
}

#[tokio::test]
async fn a_damaged_group_can_be_deleted_and_created_again() {
    let dir = tempfile::tempdir().unwrap();
    two_groups(dir.path()).await;
    std::fs::remove_file(dir.path().join("groups/t/g1/group.toml")).unwrap();
    let broker = start(test_config(dir.path())).await;
    let mut c = client(&broker).await;
    assert_eq!(
        describe_status(&mut c, "g1").await.code(),
        Code::FailedPrecondition
    );
    c.delete_group(v1::DeleteGroupRequest {
        topic: "t".into(),
        group: "g1".into(),
    })
    .await
    .expect("a damaged group can be deleted");
    assert!(!dir.path().join("groups/t/g1").exists());
    let mut m = subscribe(&mut c, join("t", "g1", None)).await.unwrap();
    let (got, _) = m.deliveries(10, WAIT).await;
    assert_eq!(got.len(), 10, "created again from the earliest offset");
    drop(m);
    drop(c);
    stop(broker).await;
}

#[tokio::test]
async fn an_interrupted_create_is_removed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    two_groups(dir.path()).await;
    // A create that crashed before its rename into place.
    let leftover = dir.path().join("groups/~staging/create-1-1");
    std::fs::create_dir_all(&leftover).unwrap();
    std::fs::write(leftover.join("state"), b"half").unwrap();
    let broker = start(test_config(dir.path())).await;
    let mut c = client(&broker).await;
    assert!(!leftover.exists());
    let listed = c
        .list_groups(v1::ListGroupsRequest { topic: None })
        .await
        .unwrap()
        .into_inner()
        .groups;
    assert_eq!(listed.len(), 2);
    drop(c);
    stop(broker).await;
}
