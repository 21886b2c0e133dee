//! Consumes a topic as a member of a consumer group, acking each message.
//!
//! Start a broker (`cargo run -p herald-cli -- serve`), produce some records
//! (`cargo run -p herald-client --example producer`), then run one or more of:
//! `cargo run -p herald-client --example consumer -- http://127.0.0.1:50051 orders billing`
//!
//! Members of the same group share the topic's partitions. Stop with Ctrl-C.

use std::time::Duration;

use futures::StreamExt;
use herald_client::{Client, ConsumerConfig, Position};

#[tokio::main]
async fn main() -> herald_client::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let topic = args.next().unwrap_or_else(|| "orders".into());
    let group = args.next().unwrap_or_else(|| "example".into());

    let client = Client::connect(url).await?;
    let config = ConsumerConfig::new(&topic, &group)
        .client_id(format!("example-{}", std::process::id()))
        // Where a new group starts; an existing group keeps its position.
        .start_position(Position::Earliest)
        .max_in_flight_messages(1000)
        // Keep the deadlines of messages still held from passing.
        .auto_extend(Duration::from_secs(10));
    let mut subscription = client.consumer(config).subscribe().await?;
    println!("joined {topic}/{group} as {}", subscription.member_id());

    let mut count = 0u64;
    while let Some(message) = subscription.next().await {
        let message = message?;
        count += 1;
        if count % 10_000 == 0 {
            println!(
                "{count} messages; last {}:{} key {:?} attempt {}",
                message.partition(),
                message.offset(),
                message.key(),
                message.attempt()
            );
        }
        if message.value().is_empty() {
            // Reject: delivered again after a second.
            message.nack_with(Some(Duration::from_secs(1)), "empty payload")?;
        } else {
            message.ack()?;
        }
    }
    Ok(())
}
