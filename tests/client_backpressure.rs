//! A Rust client producer faster than the broker waits instead of growing its memory.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use herald_client::{ProducerConfig, Record};

#[tokio::test]
async fn send_waits_when_the_buffer_is_full() {
    let t = common::start_with_client().await;
    t.create_topic("slow", 1).await;
    // Nothing leaves before a flush: a long fixed linger (a record for an idle partition
    // would otherwise be sent at once) and a large batch.
    let producer = t.client.producer(
        ProducerConfig::new("slow")
            .linger(Duration::from_secs(60))
            .send_when_idle(false)
            .batch_bytes(1024 * 1024)
            .max_buffered_bytes(10_000),
    );
    let record = || Record::new(vec![7u8; 968]); // counts 1000 bytes
    let mut deliveries = Vec::new();
    for _ in 0..10 {
        deliveries.push(producer.send(record()).await.unwrap());
    }
    assert_eq!(producer.buffered_bytes(), 10_000);
    // The budget is spent: the next send waits. Polled once, it has done all it can
    // without room (nothing else here frees any), so pending now is pending for good.
    let mut waiting = std::pin::pin!(producer.send(record()));
    assert!(
        futures::poll!(waiting.as_mut()).is_pending(),
        "send returned although the buffer is full"
    );
    producer.flush().await.unwrap();
    for delivery in deliveries {
        common::ready(delivery).expect("flushed").unwrap();
    }
    // The acks freed the budget, so the waiting send goes through.
    let last = tokio::time::timeout(common::CONDITION_WAIT, waiting)
        .await
        .expect("the waiting send goes through once the budget is freed")
        .unwrap();
    assert!(producer.buffered_bytes() <= 10_000);
    producer.close().await.unwrap();
    assert_eq!(common::ready(last).expect("closed").unwrap().offset.0, 10);
    assert_eq!(producer.buffered_bytes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fast_producer_stays_within_its_memory_bound() {
    let t = common::start_with_client().await;
    t.create_topic("fast", 4).await;
    const BOUND: usize = 64 * 1024;
    let producer = t.client.producer(
        ProducerConfig::new("fast")
            .batch_bytes(16 * 1024)
            .linger(Duration::from_millis(1))
            .max_buffered_bytes(BOUND),
    );
    // A sampler watches the gauge while the producer sends 64 times its budget.
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicUsize::new(0));
    let sampler = tokio::spawn({
        let (producer, done, peak) = (producer.clone(), done.clone(), peak.clone());
        async move {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(producer.buffered_bytes(), Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        }
    });
    let mut deliveries = Vec::new();
    for i in 0..20_000u32 {
        let record = Record::new(vec![1u8; 168]).key(i.to_le_bytes().to_vec());
        deliveries.push(producer.send(record).await.unwrap());
        let buffered = producer.buffered_bytes();
        assert!(
            buffered <= BOUND,
            "{buffered} bytes buffered, bound {BOUND}"
        );
        peak.fetch_max(buffered, Ordering::Relaxed);
    }
    producer.close().await.unwrap();
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    let peak = peak.load(Ordering::Relaxed);
    assert!(peak <= BOUND, "peak {peak} above the bound {BOUND}");
    // The producer really was held back: it filled most of its budget.
    assert!(peak >= BOUND / 2, "peak {peak}: the buffer never filled");
    for delivery in deliveries {
        common::ready(delivery).expect("close waited").unwrap();
    }
    assert_eq!(producer.buffered_bytes(), 0);
}
