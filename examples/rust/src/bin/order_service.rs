//! The order service: publishes `order.created` events (JSON, keyed by order id).
//!
//! `cargo run -p herald-example-orders --bin order_service -- --count 20`

use std::time::Duration;

use clap::Parser;
use herald_client::Client;
use herald_example_orders::{DEFAULT_SERVER, ORDERS_TOPIC, ensure_topic, publish_orders};

#[derive(Parser)]
#[command(about = "Publishes order.created events to Herald")]
struct Args {
    /// The broker's gRPC address.
    #[arg(long, default_value = DEFAULT_SERVER)]
    server: String,
    /// How many orders to publish.
    #[arg(long, default_value_t = 20)]
    count: u64,
    /// The first order id.
    #[arg(long, default_value_t = 1)]
    first_id: u64,
    /// Milliseconds between two orders.
    #[arg(long, default_value_t = 100)]
    interval_ms: u64,
    /// Partitions of order.created if this creates it.
    #[arg(long, default_value_t = 3)]
    partitions: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = Client::connect(args.server).await?;
    ensure_topic(&client, ORDERS_TOPIC, args.partitions).await?;
    let orders = publish_orders(
        &client,
        args.first_id,
        args.count,
        Duration::from_millis(args.interval_ms),
    )
    .await?;
    println!("order-service: {} orders published", orders.len());
    Ok(())
}
