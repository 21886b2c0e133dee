//! Metadata corruption campaign: a data dir with a topic "damaged" (2 partitions, records,
//! setting overrides, a group "g" moved by Seek) and a topic "healthy" (records, a group) is
//! built once and stopped cleanly; each case copies it, damages ONE metadata file —
//! `topics/damaged/topic.toml`, `groups/damaged/g/group.toml` or `groups/damaged/g/state` —
//! by truncation, bit flips, a zeroed range, deletion or random bytes, and starts a broker.
//!
//! The only allowed outcomes are:
//! - refused: DescribeTopic / Fetch (for `topic.toml`) or DescribeGroup (for the group's
//!   files) answer FAILED_PRECONDITION naming the damaged file, and not a byte of the
//!   damaged topic's or group's files changed;
//! - exact: the topic is described with its original partitions and settings, both
//!   partitions hold the original records, and the group has its original settings and
//!   committed offsets.
//!
//! In every case the healthy topic and its group are served exactly and the broker does not
//! panic. Anything else fails the case, and the message names its seed.
//!
//! Every damage method is used on every file: `state` carries its own check and the TOML
//! files a checksum line, so even damage that still parses is refused.
//!
//! `HERALD_META_CORRUPTION_CASES` (default 200) sets the number of cases and
//! `HERALD_META_CORRUPTION_SEED` the first seed (a few regression seeds run first), e.g.
//! `HERALD_META_CORRUPTION_CASES=5000 HERALD_META_CORRUPTION_SEED=1 cargo test --release
//! --test metadata_corruption`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use herald_proto::HeraldClient;
use herald_proto::v1;
use tonic::Code;
use tonic::transport::Channel;

/// splitmix64: small, seedable, good enough to pick files, methods and positions.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..hi` (`lo` if the range is empty).
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            lo + self.next() % (hi - lo)
        }
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The metadata files the campaign damages, relative to the data dir.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    TopicToml,
    GroupToml,
    GroupState,
}

impl Target {
    fn path(self, dir: &Path) -> PathBuf {
        match self {
            Target::TopicToml => dir.join("topics/damaged/topic.toml"),
            Target::GroupToml => dir.join("groups/damaged/g/group.toml"),
            Target::GroupState => dir.join("groups/damaged/g/state"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Truncate,
    FlipBits,
    ZeroRange,
    Delete,
    RandomBytes,
}

/// The damage methods: every one on every file. `state` carries its own check, and
/// `topic.toml` and `group.toml` a checksum line (`meta_file`), so damage that still
/// parses as TOML is refused too. Before the checksum line, the campaign found such damage
/// loaded as if it were the original, kept here as the seeds to look at first:
/// - `topic.toml`, truncation: cut after a `[settings]` line (seed 25) or inside a number
///   (seed 24: `retention_bytes` 1073741824 became 1073) loaded the topic with other
///   settings; cut inside `created_ms` (seed 73) loaded it with another creation time;
/// - `topic.toml`, bit flips: a flipped bit in a digit loaded another value (seed 665:
///   `retention_ms` 604800000 became 644800000);
/// - `group.toml`, bit flips: a digit of a setting loaded another setting (seed 171:
///   `ack_deadline_ms` 12345 became 52345).
const METHODS: &[Method] = &[
    Method::Truncate,
    Method::FlipBits,
    Method::ZeroRange,
    Method::Delete,
    Method::RandomBytes,
];

/// Seeds run before the others in every run: the damage that once loaded as a different
/// value (see [`METHODS`]).
const REGRESSION_SEEDS: &[u64] = &[24, 25, 73, 171, 665];

/// Damages `path` by `method`; returns a description of what was done.
fn damage(rng: &mut Rng, path: &Path, method: Method) -> String {
    let mut bytes = std::fs::read(path).unwrap();
    let len = bytes.len() as u64;
    let what = match method {
        Method::Truncate => {
            let at = rng.range(0, len);
            bytes.truncate(at as usize);
            format!("truncated to {at} of {len} bytes")
        }
        Method::FlipBits => {
            let n = rng.range(1, 4);
            let mut flipped = Vec::new();
            for _ in 0..n {
                let bit = rng.range(0, len * 8);
                bytes[(bit / 8) as usize] ^= 1 << (bit % 8);
                flipped.push(bit);
            }
            format!("bits {flipped:?} of {len} bytes flipped")
        }
        Method::ZeroRange => {
            let from = rng.range(0, len);
            let to = rng.range(from + 1, len + 1);
            bytes[from as usize..to as usize].fill(0);
            format!("bytes {from}..{to} of {len} zeroed")
        }
        Method::Delete => {
            std::fs::remove_file(path).unwrap();
            return "deleted".to_owned();
        }
        Method::RandomBytes => {
            let n = rng.range(0, 2 * len + 1);
            bytes = (0..n).map(|_| rng.next() as u8).collect();
            format!("replaced by {n} random bytes")
        }
    };
    std::fs::write(path, &bytes).unwrap();
    what
}

/// Copies a directory tree (without the broker's lock file).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        let target = to.join(entry.file_name());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else if entry.file_name() != "lock" {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

/// Every file under `dir` (if it exists) with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
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

/// What a broker serves for one topic and its group.
#[derive(Debug, Clone, PartialEq)]
struct Served {
    topic: v1::TopicDescription,
    records: Vec<Vec<v1::FetchedRecord>>,
    group: v1::GroupDescription,
}

/// What the broker serves for `topic` and `group`; any failure names the case.
async fn served(c: &mut HeraldClient<Channel>, topic: &str, group: &str, case: &str) -> Served {
    let description = c
        .describe_topic(v1::DescribeTopicRequest { name: topic.into() })
        .await
        .unwrap_or_else(|e| panic!("{case}: DescribeTopic {topic}: {e:?}"))
        .into_inner()
        .topic
        .unwrap_or_else(|| panic!("{case}: no description of {topic}"));
    let mut records = Vec::new();
    for p in 0..description.partition_count {
        let got = fetch_all(c, topic, p, 0)
            .await
            .unwrap_or_else(|e| panic!("{case}: Fetch {topic}/{p}: {e:?}"));
        records.push(got);
    }
    let group = c
        .describe_group(v1::DescribeGroupRequest {
            topic: topic.into(),
            group: group.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("{case}: DescribeGroup {topic}/{group}: {e:?}"))
        .into_inner()
        .group
        .unwrap_or_else(|| panic!("{case}: no description of {topic}/{group}"));
    Served {
        topic: description,
        records,
        group,
    }
}

/// Builds the pristine data dir in `dir` and stops the broker cleanly.
async fn populate(dir: &Path) {
    let broker = start(test_config(dir)).await;
    let mut c = client(&broker).await;
    c.create_topic(v1::CreateTopicRequest {
        name: "damaged".into(),
        partitions: 2,
        config: Some(v1::TopicConfig {
            retention_ms: Some(86_400_000 * 7),
            retention_bytes: Some(1 << 30),
            ..Default::default()
        }),
        replication_factor: None,
    })
    .await
    .unwrap();
    create_topic(&mut c, "healthy", 1).await;
    for p in 0..2 {
        for i in 0..6 {
            let r = record(Some(&format!("k{i}")), &format!("p{p}-r{i}"));
            publish(&mut c, "damaged", Some(p), vec![r]).await.unwrap();
        }
    }
    for i in 0..4 {
        publish(
            &mut c,
            "healthy",
            None,
            vec![record(None, &format!("h{i}"))],
        )
        .await
        .unwrap();
    }
    for (topic, group) in [("damaged", "g"), ("healthy", "hg")] {
        c.create_group(v1::CreateGroupRequest {
            topic: topic.into(),
            group: group.into(),
            settings: Some(v1::GroupSettings {
                ack_deadline_ms: Some(12_345),
                retry_backoff_min_ms: Some(250),
                ..Default::default()
            }),
            start_position: None,
        })
        .await
        .unwrap();
    }
    for (topic, group, partition, offset) in [
        ("damaged", "g", 0, 2),
        ("damaged", "g", 1, 5),
        ("healthy", "hg", 0, 3),
    ] {
        c.seek(v1::SeekRequest {
            topic: topic.into(),
            group: group.into(),
            partition: Some(partition),
            position: position(v1::position::Kind::Offset(offset)),
        })
        .await
        .unwrap();
    }
    drop(c);
    stop(broker).await;
}

/// Asserts `result` is FAILED_PRECONDITION with a message naming `file`.
#[track_caller]
fn assert_refused<T: std::fmt::Debug>(result: Result<T, tonic::Status>, file: &str, case: &str) {
    match result {
        Err(status) => {
            assert_eq!(
                status.code(),
                Code::FailedPrecondition,
                "{case}: {status:?}"
            );
            assert!(
                status.message().contains(file),
                "{case}: the message names {file}: {}",
                status.message()
            );
        }
        Ok(value) => panic!("{case}: expected FAILED_PRECONDITION naming {file}, got {value:?}"),
    }
}

#[derive(Default, Debug)]
struct Counts {
    refused: BTreeMap<String, u64>,
    exact: BTreeMap<String, u64>,
}

#[tokio::test]
async fn damaged_metadata_is_refused_or_loaded_exactly() {
    let cases = env_u64("HERALD_META_CORRUPTION_CASES", 200);
    let first_seed = env_u64("HERALD_META_CORRUPTION_SEED", 1);
    let began = std::time::Instant::now();

    let pristine = tempfile::tempdir().unwrap();
    populate(pristine.path()).await;
    // The expected answers, read from a copy so the pristine dir is never opened again.
    let (want_damaged, want_healthy) = {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(pristine.path(), dir.path());
        let broker = start(test_config(dir.path())).await;
        let mut c = client(&broker).await;
        let got = (
            served(&mut c, "damaged", "g", "baseline").await,
            served(&mut c, "healthy", "hg", "baseline").await,
        );
        drop(c);
        stop(broker).await;
        got
    };
    assert_eq!(want_damaged.topic.partition_count, 2);
    assert_eq!(want_damaged.records.iter().map(Vec::len).sum::<usize>(), 12);
    assert_eq!(want_damaged.group.partitions[1].committed_offset, 5);
    assert_eq!(want_healthy.records[0].len(), 4);

    let mut counts = Counts::default();
    let seeds = REGRESSION_SEEDS
        .iter()
        .copied()
        .chain(first_seed..first_seed + cases);
    for seed in seeds {
        let mut rng = Rng(seed);
        let target =
            [Target::TopicToml, Target::GroupToml, Target::GroupState][rng.range(0, 3) as usize];
        let method = METHODS[rng.range(0, METHODS.len() as u64) as usize];
        let dir = tempfile::tempdir().unwrap();
        copy_dir(pristine.path(), dir.path());
        let path = target.path(dir.path());
        let what = damage(&mut rng, &path, method);
        let case = format!("seed {seed}: {target:?} {what}");
        // Shown with a failure that has no message of its own (a broker panic at `stop`).
        eprintln!("case {case}");
        let before = [
            snapshot(&dir.path().join("topics/damaged")),
            snapshot(&dir.path().join("groups/damaged")),
        ];

        let broker = start(test_config(dir.path())).await;
        let mut c = client(&broker).await;
        let healthy = served(&mut c, "healthy", "hg", &case).await;
        assert_eq!(healthy, want_healthy, "{case}: the healthy topic changed");

        let file = path.file_name().unwrap().to_str().unwrap().to_owned();
        let refused = match target {
            Target::TopicToml => {
                let described = c
                    .describe_topic(v1::DescribeTopicRequest {
                        name: "damaged".into(),
                    })
                    .await;
                match described {
                    Err(_) => {
                        assert_refused(described, &file, &case);
                        for p in 0..2 {
                            assert_refused(fetch_all(&mut c, "damaged", p, 0).await, &file, &case);
                        }
                        true
                    }
                    Ok(_) => {
                        let got = served(&mut c, "damaged", "g", &case).await;
                        assert_eq!(got, want_damaged, "{case}: loaded, but not as it was");
                        false
                    }
                }
            }
            Target::GroupToml | Target::GroupState => {
                // The topic itself is not damaged: it is served exactly either way.
                let topic = c
                    .describe_topic(v1::DescribeTopicRequest {
                        name: "damaged".into(),
                    })
                    .await
                    .unwrap_or_else(|e| panic!("{case}: DescribeTopic damaged: {e:?}"))
                    .into_inner()
                    .topic;
                assert_eq!(
                    topic.as_ref(),
                    Some(&want_damaged.topic),
                    "{case}: the topic changed"
                );
                for p in 0..2 {
                    let records = fetch_all(&mut c, "damaged", p, 0)
                        .await
                        .unwrap_or_else(|e| panic!("{case}: Fetch damaged/{p}: {e:?}"));
                    assert_eq!(
                        records, want_damaged.records[p as usize],
                        "{case}: partition {p} changed"
                    );
                }
                let described = c
                    .describe_group(v1::DescribeGroupRequest {
                        topic: "damaged".into(),
                        group: "g".into(),
                    })
                    .await;
                match described {
                    Err(_) => {
                        let named = path.display().to_string();
                        assert_refused(described, &named, &case);
                        true
                    }
                    Ok(got) => {
                        let got = got.into_inner().group;
                        assert_eq!(
                            got.as_ref(),
                            Some(&want_damaged.group),
                            "{case}: loaded, but not as it was"
                        );
                        false
                    }
                }
            }
        };
        drop(c);
        stop(broker).await;

        if refused {
            let after = [
                snapshot(&dir.path().join("topics/damaged")),
                snapshot(&dir.path().join("groups/damaged")),
            ];
            for (before, after) in before.iter().zip(&after) {
                for (p, bytes) in before {
                    assert_eq!(
                        after.get(p),
                        Some(bytes),
                        "{case}: refused, but {} changed",
                        p.display()
                    );
                }
                for p in after.keys() {
                    assert!(
                        before.contains_key(p),
                        "{case}: refused, but {} appeared",
                        p.display()
                    );
                }
            }
        }
        let key = format!("{target:?} {method:?}");
        let count = if refused {
            counts.refused.entry(key).or_default()
        } else {
            counts.exact.entry(key).or_default()
        };
        *count += 1;
    }
    eprintln!(
        "metadata corruption: {} regression seeds and {cases} cases from seed {first_seed} in {:?}: {counts:#?}",
        REGRESSION_SEEDS.len(),
        began.elapsed()
    );
}
