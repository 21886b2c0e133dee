//! The inventory service: consumer group `inventory` of `order.created`. Orders whose id
//! ends in `--fail-digit` (7) fail: they are nacked, redelivered, and after
//! `--max-attempts` (3) deliveries dead-lettered to `order.created.dlq`.
//!
//! `cargo run -p herald-example-orders --bin inventory_consumer`

use std::time::Duration;

use clap::Parser;
use herald_client::Client;
use herald_example_orders::{
    DEFAULT_SERVER, InventoryOptions, MAX_DELIVERY_ATTEMPTS, ORDERS_TOPIC, ensure_topic,
    run_inventory,
};

#[derive(Parser)]
#[command(about = "Reserves stock per order.created event (group `inventory`)")]
struct Args {
    /// The broker's gRPC address.
    #[arg(long, default_value = DEFAULT_SERVER)]
    server: String,
    /// Exit after this many distinct orders were reserved or dead-lettered (default: run
    /// until Ctrl-C).
    #[arg(long)]
    count: Option<usize>,
    /// Orders whose id ends in this digit fail.
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u64).range(0..10))]
    fail_digit: u64,
    /// Deliveries before a failing order is dead-lettered (applies when this creates the
    /// group).
    #[arg(long, default_value_t = MAX_DELIVERY_ATTEMPTS)]
    max_attempts: u32,
    /// Milliseconds before a failed order is delivered again (applies when this creates
    /// the group's settings).
    #[arg(long, default_value_t = 500)]
    retry_ms: u64,
    /// Partitions of order.created if this creates it.
    #[arg(long, default_value_t = 3)]
    partitions: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = Client::connect(args.server).await?;
    ensure_topic(&client, ORDERS_TOPIC, args.partitions).await?;
    let options = InventoryOptions {
        fail_digit: args.fail_digit,
        max_delivery_attempts: args.max_attempts,
        retry_delay: Duration::from_millis(args.retry_ms),
        stop_after: args.count,
    };
    let report = run_inventory(&client, &options).await?;
    println!(
        "inventory: {} reserved, {} dead-lettered: {:?}",
        report.reserved.len(),
        report.dead_lettered.len(),
        report.dead_lettered
    );
    Ok(())
}
