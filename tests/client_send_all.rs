//! The Rust producer's `send_all`: one future for many records, resolving to each record's
//! place in order.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use herald_client::{Error, ProducerConfig, Record, partition_for_key};

#[tokio::test]
async fn send_all_acks_every_record_in_order_across_partitions_and_batches() {
    let t = common::start_with_client().await;
    t.create_topic("many", 4).await;
    // Small batches, so one group spans many batches of each partition.
    let producer = t.client.producer(
        ProducerConfig::new("many")
            .batch_bytes(2048)
            .linger(Duration::from_millis(1)),
    );
    let key = |i: usize| format!("k{}", i % 37);
    let records = (0..5000).map(|i| Record::new(format!("v{i}")).key(key(i)));
    let acked = producer.send_all(records).await.unwrap().await.unwrap();
    assert_eq!(acked.len(), 5000);

    // Each record is where the broker says, in the partition its key hashes to, and the
    // offsets of one partition follow the order records were given in.
    let mut next: HashMap<u32, u64> = HashMap::new();
    for (i, place) in acked.iter().enumerate() {
        assert_eq!(place.partition, partition_for_key(key(i).as_bytes(), 4));
        let expected = next.entry(place.partition.0).or_default();
        assert_eq!(place.offset.0, *expected, "record {i}");
        *expected += 1;
    }
    for p in 0..4u32 {
        let stored = common::fetch_partition(&t.client, "many", p).await;
        assert_eq!(stored.len() as u64, next[&p]);
        for record in stored {
            let i = acked
                .iter()
                .position(|a| a.partition.0 == p && a.offset.0 == record.offset)
                .unwrap();
            assert_eq!(&record.value[..], format!("v{i}").as_bytes());
        }
    }

    // Mixed with single sends, each keeps its own outcome.
    let single = producer.send(Record::new("one").key("k0")).await.unwrap();
    let group = producer
        .send_all((0..10).map(|i| Record::new(format!("g{i}")).key("k0")))
        .await
        .unwrap();
    let single = single.await.unwrap();
    let group = group.await.unwrap();
    assert_eq!(group[0].offset.0, single.offset.0 + 1);
    assert_eq!(group[9].offset.0, single.offset.0 + 10);
    assert!(
        producer
            .send_all(Vec::new())
            .await
            .unwrap()
            .await
            .unwrap()
            .is_empty()
    );
    producer.close().await.unwrap();
}

#[tokio::test]
async fn send_all_rejects_bad_groups_whole() {
    let t = common::start_with_client().await;
    t.create_topic("two", 2).await;
    let producer = t.client.producer(ProducerConfig::new("two"));
    let bad = vec![Record::new("a"), Record::new("b").partition(2)];
    assert!(matches!(
        producer.send_all(bad).await.err(),
        Some(Error::InvalidArgument(_))
    ));
    producer.flush().await.unwrap();
    let end = t.records_in("two").await;
    assert_eq!(end, 0, "nothing of a rejected group is sent");

    let missing = t.client.producer(ProducerConfig::new("missing"));
    assert!(matches!(
        missing.send_all(vec![Record::new("x")]).await.err(),
        Some(Error::NotFound(_))
    ));
}
