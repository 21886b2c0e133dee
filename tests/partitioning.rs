//! How a publish picks its partition, checked against the documented rule (publish.proto):
//! explicit partition, else `xxh64(first key, seed 0) % partitions`, else round-robin; and
//! offsets stay dense per partition however many publishes land there.
//!
//! The expected partition is computed here with `xxhash_rust` directly, never with the
//! broker's own function, so a change to the broker's hashing fails these tests.

mod common;

use std::collections::BTreeMap;

use common::*;
use herald_broker::storage::{BatchBuilder, Record};
use herald_proto::v1;
use xxhash_rust::xxh64::xxh64;

/// The documented rule, written independently of the broker.
fn expected_partition(key: &[u8], partitions: u32) -> u32 {
    (xxh64(key, 0) % u64::from(partitions)) as u32
}

#[tokio::test]
async fn keyed_records_land_in_xxh64_of_the_key_mod_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(test_config(dir.path())).await;
    let mut c = client(&broker).await;
    const PARTITIONS: u32 = 7;
    create_topic(&mut c, "keyed", PARTITIONS).await;

    // A known vector first, so the rule itself is pinned and not only self-consistent.
    assert_eq!(xxh64(b"", 0), 0xef46db3751d8e999);

    let mut keys: Vec<Vec<u8>> = (0..200).map(|i| format!("key-{i}").into_bytes()).collect();
    keys.push(Vec::new()); // an empty key is hashed like any other key
    keys.push(vec![0xff, 0x00, 0x80]); // keys are raw bytes, not text
    keys.push(vec![b'x'; 1000]);
    let mut used = std::collections::BTreeSet::new();
    let mut per_partition: BTreeMap<u32, Vec<(u64, Vec<u8>)>> = BTreeMap::new();
    for key in &keys {
        let want = expected_partition(key, PARTITIONS);
        used.insert(want);
        let reply = c
            .publish(v1::PublishRequest {
                topic: "keyed".into(),
                partition: None,
                payload: Some(v1::publish_request::Payload::Records(v1::Records {
                    records: vec![v1::Record {
                        key: Some(key.clone().into()),
                        value: key.clone().into(),
                        ..Default::default()
                    }],
                })),
                producer: None,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            reply.partition,
            want,
            "key {:?} went to partition {} instead of xxh64 % {PARTITIONS} = {want}",
            String::from_utf8_lossy(key),
            reply.partition
        );
        per_partition
            .entry(want)
            .or_default()
            .push((reply.base_offset, key.clone()));
    }
    assert_eq!(
        used.len(),
        PARTITIONS as usize,
        "the keys should cover every partition"
    );

    // The records really are stored where the replies say.
    for p in 0..PARTITIONS {
        let stored = fetch_all(&mut c, "keyed", p, 0).await.unwrap();
        let expected = per_partition.remove(&p).unwrap_or_default();
        let got: Vec<(u64, Vec<u8>)> = stored
            .iter()
            .map(|r| (r.offset, r.key.as_deref().unwrap().to_vec()))
            .collect();
        assert_eq!(got, expected, "partition {p}");
    }
    stop(broker).await;
}

/// The README's test vectors, end to end: what any client computes is where the broker
/// puts the record.
#[tokio::test]
async fn the_readme_test_vectors_hold_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(test_config(dir.path())).await;
    let mut c = client(&broker).await;
    let vectors: [(&str, u64, u32, u32); 4] = [
        ("", 0xef46db3751d8e999, 8, 1),
        ("a", 0xd24ec4f1a98c6e5b, 8, 3),
        ("order-1", 0x3baf4120aa43a0ad, 16, 13),
        ("user:42", 0xdc1fea7da8d2d1c2, 3, 2),
    ];
    for (key, hash, partitions, partition) in vectors {
        assert_eq!(xxh64(key.as_bytes(), 0), hash, "xxh64({key:?})");
        assert_eq!(expected_partition(key.as_bytes(), partitions), partition);
        let topic = format!("vectors-{partitions}");
        if c.describe_topic(v1::DescribeTopicRequest {
            name: topic.clone(),
        })
        .await
        .is_err()
        {
            create_topic(&mut c, &topic, partitions).await;
        }
        let r = publish(&mut c, &topic, None, vec![record(Some(key), "v")])
            .await
            .unwrap();
        assert_eq!(r.partition, partition, "key {key:?} over {partitions}");
    }
    stop(broker).await;
}

#[tokio::test]
async fn only_the_first_record_key_picks_the_partition() {
    let (_dir, broker, mut c) = start_with_topic("first-key", 16).await;

    // Find two keys that hash to different partitions.
    let a = b"alpha".as_slice();
    let b = (0..)
        .map(|i| format!("beta-{i}").into_bytes())
        .find(|k| expected_partition(k, 16) != expected_partition(a, 16))
        .unwrap();
    let r = publish(
        &mut c,
        "first-key",
        None,
        vec![
            record(Some("alpha"), "1"),
            record(Some(std::str::from_utf8(&b).unwrap()), "2"),
            record(None, "3"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(r.partition, expected_partition(a, 16));
    assert_eq!((r.base_offset, r.last_offset), (0, 2));

    // The fast path (a pre-encoded storage batch) picks the partition by the same rule.
    let mut builder = BatchBuilder::default();
    for key in [b.as_slice(), a] {
        builder.push(&Record {
            timestamp: 1_700_000_000_000,
            key: Some(key),
            value: b"v",
            headers: &[],
        });
    }
    let r = c
        .publish(v1::PublishRequest {
            topic: "first-key".into(),
            partition: None,
            payload: Some(v1::publish_request::Payload::StorageBatch(
                builder.finish().into(),
            )),
            producer: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.partition, expected_partition(&b, 16));
    stop(broker).await;
}

#[tokio::test]
async fn an_explicit_partition_wins_over_the_key() {
    let (_dir, broker, mut c) = start_with_topic("explicit", 5).await;
    for i in 0..20u32 {
        let key = format!("k{i}");
        let hashed = expected_partition(key.as_bytes(), 5);
        let target = (hashed + 1 + i % 4) % 5; // never the hashed partition
        assert_ne!(target, hashed);
        let r = publish(
            &mut c,
            "explicit",
            Some(target),
            vec![record(Some(&key), &key)],
        )
        .await
        .unwrap();
        assert_eq!(r.partition, target, "key {key}");
        let stored = fetch_all(&mut c, "explicit", target, r.base_offset)
            .await
            .unwrap();
        assert_eq!(stored[0].value.as_ref(), key.as_bytes());
    }
    // Keyless with an explicit partition as well.
    for _ in 0..3 {
        let r = publish(&mut c, "explicit", Some(4), vec![record(None, "x")])
            .await
            .unwrap();
        assert_eq!(r.partition, 4);
    }
    stop(broker).await;
}

#[tokio::test]
async fn keyless_publishes_go_round_robin() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(test_config(dir.path())).await;
    let mut c = client(&broker).await;
    const N: u32 = 4;
    create_topic(&mut c, "rr", N).await;
    create_topic(&mut c, "other", 3).await;

    let mut partitions = Vec::new();
    for i in 0..(N * 5) {
        // Keyed and explicit publishes in between, and keyless ones to another topic,
        // do not disturb this topic's sequence of keyless requests.
        publish(&mut c, "rr", None, vec![record(Some("some-key"), "keyed")])
            .await
            .unwrap();
        publish(&mut c, "rr", Some(i % N), vec![record(None, "explicit")])
            .await
            .unwrap();
        publish(&mut c, "other", None, vec![record(None, "elsewhere")])
            .await
            .unwrap();
        // The first record has no key, so the later keys play no part.
        let r = publish(
            &mut c,
            "rr",
            None,
            vec![record(None, "keyless"), record(Some("ignored"), "keyless")],
        )
        .await
        .unwrap();
        partitions.push(r.partition);
    }
    for pair in partitions.windows(2) {
        assert_eq!(
            pair[1],
            (pair[0] + 1) % N,
            "successive keyless requests must go to successive partitions: {partitions:?}"
        );
    }
    let mut counts = [0; N as usize];
    for p in &partitions {
        counts[*p as usize] += 1;
    }
    assert_eq!(counts, [5; N as usize]);
    stop(broker).await;
}

/// Many publishes of varying sizes from several concurrent clients: each partition's
/// replies tile `0..end` exactly (no gap, no overlap), the stored records sit at the
/// offsets their replies named, and DescribeTopic agrees on the end offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_are_dense_per_partition_across_many_publishes() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(test_config(dir.path())).await;
    let mut c = client(&broker).await;
    const N: u32 = 3;
    create_topic(&mut c, "dense", N).await;

    const CLIENTS: usize = 6;
    const PUBLISHES: usize = 60;
    let mut tasks = Vec::new();
    for w in 0..CLIENTS {
        let mut c = client(&broker).await;
        tasks.push(tokio::spawn(async move {
            let mut landed = Vec::new();
            for i in 0..PUBLISHES {
                let n = 1 + (w * 7 + i * 3) % 9;
                let values: Vec<String> = (0..n).map(|j| format!("w{w}-p{i}-r{j}")).collect();
                let key = format!("w{w}-{i}");
                let (partition, key) = match i % 3 {
                    0 => (None, None),
                    1 => (None, Some(key.as_str())),
                    _ => (Some((i as u32) % N), None),
                };
                let records = values.iter().map(|v| record(key, v)).collect();
                let r = publish(&mut c, "dense", partition, records).await.unwrap();
                assert_eq!(r.last_offset - r.base_offset + 1, n as u64);
                if let Some(k) = key {
                    assert_eq!(r.partition, expected_partition(k.as_bytes(), N));
                }
                if let Some(p) = partition {
                    assert_eq!(r.partition, p);
                }
                landed.push((r, values));
            }
            landed
        }));
    }
    let mut by_partition: BTreeMap<u32, Vec<(u64, u64, Vec<String>)>> = BTreeMap::new();
    for task in tasks {
        for (r, values) in task.await.unwrap() {
            by_partition.entry(r.partition).or_default().push((
                r.base_offset,
                r.last_offset,
                values,
            ));
        }
    }
    let description = describe_topic(&mut c, "dense").await;
    let mut total = 0;
    for p in 0..N {
        let mut ranges = by_partition.remove(&p).unwrap_or_default();
        ranges.sort_by_key(|r| r.0);
        let mut next = 0;
        let mut expected_values = Vec::new();
        for (base, last, values) in &ranges {
            assert_eq!(*base, next, "partition {p}: gap or overlap at {next}");
            next = last + 1;
            expected_values.extend(values.iter().cloned());
        }
        total += next;
        let stored = fetch_all(&mut c, "dense", p, 0).await.unwrap();
        assert_eq!(stored.len() as u64, next, "partition {p}");
        for (i, (r, want)) in stored.iter().zip(&expected_values).enumerate() {
            assert_eq!(r.offset, i as u64, "partition {p}");
            assert_eq!(
                r.value.as_ref(),
                want.as_bytes(),
                "partition {p} offset {i}"
            );
        }
        assert_eq!(description.partitions[p as usize].end_offset, next);
        assert_eq!(description.partitions[p as usize].start_offset, 0);
    }
    let published: u64 = (0..CLIENTS)
        .flat_map(|w| (0..PUBLISHES).map(move |i| (1 + (w * 7 + i * 3) % 9) as u64))
        .sum();
    assert_eq!(total, published);
    stop(broker).await;
}
