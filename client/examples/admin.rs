//! Lists the broker's topics and groups, creating a topic and a group first.
//!
//! Start a broker (`cargo run -p herald-cli -- serve`), then:
//! `cargo run -p herald-client --example admin -- http://127.0.0.1:50051`

use herald_client::{Client, Error, GroupSettings, Position, TopicConfig};

#[tokio::main]
async fn main() -> herald_client::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let admin = Client::connect(url).await?.admin();

    match admin
        .create_topic("orders", 4, TopicConfig::default())
        .await
    {
        Ok(_) | Err(Error::AlreadyExists(_)) => {}
        Err(error) => return Err(error),
    }
    match admin
        .create_group(
            "orders",
            "billing",
            GroupSettings::default(),
            Position::Earliest,
        )
        .await
    {
        Ok(_) | Err(Error::AlreadyExists(_)) => {}
        Err(error) => return Err(error),
    }

    for summary in admin.list_topics().await? {
        let topic = admin.describe_topic(&summary.name).await?;
        println!(
            "topic {} ({} partitions)",
            topic.name, topic.partition_count
        );
        for p in &topic.partitions {
            println!(
                "  partition {}: offsets {}..{}, {} bytes",
                p.partition, p.start_offset, p.end_offset, p.size_bytes
            );
        }
    }
    for summary in admin.list_groups(None).await? {
        let group = admin.describe_group(&summary.topic, &summary.group).await?;
        let lag: u64 = group.partitions.iter().map(|p| p.lag).sum();
        println!(
            "group {}/{}: {} members, lag {lag}",
            group.topic,
            group.group,
            group.members.len()
        );
    }
    Ok(())
}
