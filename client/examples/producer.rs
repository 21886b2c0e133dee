//! Publishes keyed records with the batching producer.
//!
//! Start a broker (`cargo run -p herald-cli -- serve`), then:
//! `cargo run -p herald-client --example producer -- http://127.0.0.1:50051 orders 100000`

use std::time::Instant;

use herald_client::{Client, Error, ProducerConfig, Record, TopicConfig};

#[tokio::main]
async fn main() -> herald_client::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let topic = args.next().unwrap_or_else(|| "orders".into());
    let count: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(100_000);

    let client = Client::connect(url).await?;
    match client
        .admin()
        .create_topic(&topic, 4, TopicConfig::default())
        .await
    {
        Ok(_) | Err(Error::AlreadyExists(_)) => {}
        Err(error) => return Err(error),
    }

    let producer = client.producer(ProducerConfig::new(&topic));
    let started = Instant::now();
    let mut deliveries = Vec::with_capacity(count as usize);
    for i in 0..count {
        let record = Record::new(format!("event {i}"))
            .key(format!("customer-{}", i % 1000))
            .header("source", "example");
        // Waits only when the producer's buffer is full.
        deliveries.push(producer.send(record).await?);
    }
    producer.close().await?; // waits for every ack
    let mut failed = 0;
    for delivery in deliveries {
        if delivery.await.is_err() {
            failed += 1;
        }
    }
    let elapsed = started.elapsed();
    println!(
        "{count} records to {topic:?} in {elapsed:?} ({:.0} records/s), {failed} failed",
        count as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}
