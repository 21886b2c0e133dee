//! The email service: consumer group `email` of `order.created`; acks every order.
//!
//! `cargo run -p herald-example-orders --bin email_consumer`

use clap::Parser;
use herald_client::Client;
use herald_example_orders::{DEFAULT_SERVER, ORDERS_TOPIC, ensure_topic, run_email};

#[derive(Parser)]
#[command(about = "Sends a confirmation email per order.created event (group `email`)")]
struct Args {
    /// The broker's gRPC address.
    #[arg(long, default_value = DEFAULT_SERVER)]
    server: String,
    /// Exit after this many distinct orders (default: run until Ctrl-C).
    #[arg(long)]
    count: Option<usize>,
    /// Partitions of order.created if this creates it.
    #[arg(long, default_value_t = 3)]
    partitions: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = Client::connect(args.server).await?;
    ensure_topic(&client, ORDERS_TOPIC, args.partitions).await?;
    let handled = run_email(&client, args.count).await?;
    println!("email: {} confirmations sent", handled.len());
    Ok(())
}
