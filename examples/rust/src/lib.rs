//! The order flow of a Node.js `EventEmitter` app, moved to Herald.
//!
//! In the Node.js app an order service did `emitter.emit('order:created', order)` and an
//! email service and an inventory service each had `emitter.on('order:created', ...)`.
//! Here the event is a record on the topic [`ORDERS_TOPIC`], keyed by order id, and each
//! listener is a consumer group: every group gets every order, and a failure is a nack
//! that Herald redelivers (up to [`MAX_DELIVERY_ATTEMPTS`] times, then the order goes to
//! [`DEAD_LETTER_TOPIC`]) instead of an exception lost in a listener.
//!
//! The three binaries (`order_service`, `email_consumer`, `inventory_consumer`) and the
//! scenario test call these functions.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use herald_client::{
    Client, ConsumerConfig, Error, GroupSettings, Position, ProducerConfig, Record, Subscription,
    TopicConfig,
};
use serde::{Deserialize, Serialize};

/// The topic that replaces the `order:created` event.
pub const ORDERS_TOPIC: &str = "order.created";
/// Where the inventory group's failed orders end up.
pub const DEAD_LETTER_TOPIC: &str = "order.created.dlq";
/// The email service's consumer group.
pub const EMAIL_GROUP: &str = "email";
/// The inventory service's consumer group.
pub const INVENTORY_GROUP: &str = "inventory";
/// Deliveries of one order to the inventory group before it is dead-lettered.
pub const MAX_DELIVERY_ATTEMPTS: u32 = 3;
/// The broker address the binaries use by default.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";

/// The event payload: what the Node.js app passed to `emit('order:created', order)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// The order id; also the record key, so one order's events stay in order.
    pub id: u64,
    /// The customer's email address.
    pub customer: String,
    /// The stock-keeping unit ordered.
    pub sku: String,
    /// How many.
    pub quantity: u32,
    /// Total in cents.
    pub total_cents: u64,
}

impl Order {
    /// A made-up order with id `id`.
    pub fn sample(id: u64) -> Order {
        Order {
            id,
            customer: format!("customer-{}@example.com", id % 5),
            sku: format!("SKU-{}", 100 + id % 4),
            quantity: 1 + (id % 3) as u32,
            total_cents: 1_000 + id * 250,
        }
    }

    fn from_json(value: &[u8]) -> anyhow::Result<Order> {
        serde_json::from_slice(value).context("an order.created value is not an Order")
    }
}

/// Creates `name` with `partitions` partitions unless it exists already.
pub async fn ensure_topic(client: &Client, name: &str, partitions: u32) -> anyhow::Result<()> {
    match client
        .admin()
        .create_topic(name, partitions, TopicConfig::default())
        .await
    {
        Ok(_) => {
            println!("created topic {name} (partitions: {partitions})");
            Ok(())
        }
        Err(Error::AlreadyExists(_)) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating topic {name}")),
    }
}

/// The order service: publishes `count` orders with ids `first_id..first_id + count` to
/// [`ORDERS_TOPIC`] (JSON values, keyed by order id), waiting `interval` between them, and
/// returns them once the broker has acknowledged every one.
///
/// Node.js: `emitter.emit('order:created', order)`.
pub async fn publish_orders(
    client: &Client,
    first_id: u64,
    count: u64,
    interval: Duration,
) -> anyhow::Result<Vec<Order>> {
    let producer = client.producer(ProducerConfig::new(ORDERS_TOPIC));
    let mut orders = Vec::new();
    let mut deliveries = Vec::new();
    for id in first_id..first_id + count {
        let order = Order::sample(id);
        let value = serde_json::to_vec(&order)?;
        let record = Record::new(value)
            .key(id.to_string())
            .header("content-type", "application/json");
        deliveries.push((id, producer.send(record).await?));
        orders.push(order);
        if !interval.is_zero() {
            tokio::time::sleep(interval).await;
        }
    }
    producer.close().await?;
    for (id, delivery) in deliveries {
        let acked = delivery.await?;
        println!(
            "order-service: emitted order.created #{id} -> partition {} offset {}",
            acked.partition, acked.offset
        );
    }
    Ok(orders)
}

/// Subscribes to [`ORDERS_TOPIC`] in `group` (from the earliest record if this creates the
/// group).
async fn subscribe(
    client: &Client,
    group: &str,
    settings: GroupSettings,
) -> anyhow::Result<Subscription> {
    let config = ConsumerConfig::new(ORDERS_TOPIC, group)
        .client_id(format!("{group}-{}", std::process::id()))
        .start_position(Position::Earliest)
        .group_settings(settings)
        .auto_extend(Duration::from_secs(10));
    let subscription = client
        .consumer(config)
        .subscribe()
        .await
        .with_context(|| format!("joining group {group} of {ORDERS_TOPIC}"))?;
    Ok(subscription)
}

/// Lets the subscription's task send the last acks and nacks before it is dropped
/// (dropping it closes the stream at once).
async fn leave(subscription: Subscription) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(subscription);
}

/// The email service: consumes [`ORDERS_TOPIC`] in group [`EMAIL_GROUP`], "sends" a
/// confirmation per order and acks it. Stops after `stop_after` distinct orders (`None`:
/// runs until the stream ends) and returns the orders handled, in arrival order.
///
/// Node.js: `emitter.on('order:created', order => sendConfirmation(order))`.
pub async fn run_email(client: &Client, stop_after: Option<usize>) -> anyhow::Result<Vec<Order>> {
    let mut subscription = subscribe(client, EMAIL_GROUP, GroupSettings::default()).await?;
    println!(
        "email: joined group {EMAIL_GROUP} as {}",
        subscription.member_id()
    );
    let mut seen = BTreeSet::new();
    let mut handled = Vec::new();
    while stop_after.is_none_or(|n| seen.len() < n) {
        let Some(message) = subscription.next().await else {
            break;
        };
        let message = message?;
        let order = Order::from_json(message.value())?;
        println!(
            "email: confirmation for order #{} sent to {} (attempt {})",
            order.id,
            order.customer,
            message.attempt()
        );
        message.ack()?;
        seen.insert(order.id);
        handled.push(order);
    }
    leave(subscription).await;
    Ok(handled)
}

/// What the inventory service does.
#[derive(Debug, Clone)]
pub struct InventoryOptions {
    /// Orders whose id ends in this digit fail every time (the simulated bug).
    pub fail_digit: u64,
    /// Deliveries before an order is dead-lettered (used if this creates the group).
    pub max_delivery_attempts: u32,
    /// Delay before a failed order is delivered again.
    pub retry_delay: Duration,
    /// Stop after this many distinct orders were reserved or dead-lettered (`None`: run
    /// until the stream ends).
    pub stop_after: Option<usize>,
}

impl Default for InventoryOptions {
    fn default() -> Self {
        InventoryOptions {
            fail_digit: 7,
            max_delivery_attempts: MAX_DELIVERY_ATTEMPTS,
            retry_delay: Duration::from_millis(500),
            stop_after: None,
        }
    }
}

/// What the inventory service saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InventoryReport {
    /// Every delivery's attempt number, per order id.
    pub attempts: BTreeMap<u64, Vec<u32>>,
    /// Orders whose stock was reserved (acked), in order.
    pub reserved: Vec<u64>,
    /// Orders nacked on their last allowed attempt: the broker dead-letters them.
    pub dead_lettered: Vec<u64>,
}

/// The inventory service: consumes [`ORDERS_TOPIC`] in group [`INVENTORY_GROUP`] (created
/// with `max_delivery_attempts` and [`DEAD_LETTER_TOPIC`], which it creates), reserves
/// stock and acks, except for orders whose id ends in `fail_digit`: those are nacked, so
/// Herald delivers them again (attempt 2, 3, ...) and finally dead-letters them.
///
/// Node.js: `emitter.on('order:created', order => reserveStock(order))`, where a throw
/// was simply lost.
pub async fn run_inventory(
    client: &Client,
    options: &InventoryOptions,
) -> anyhow::Result<InventoryReport> {
    ensure_topic(client, DEAD_LETTER_TOPIC, 1).await?;
    let settings = GroupSettings {
        max_delivery_attempts: Some(options.max_delivery_attempts),
        dead_letter_topic: Some(DEAD_LETTER_TOPIC.into()),
        retry_backoff_min: Some(options.retry_delay),
        retry_backoff_max: Some(options.retry_delay),
        ..GroupSettings::default()
    };
    let mut subscription = subscribe(client, INVENTORY_GROUP, settings).await?;
    println!(
        "inventory: joined group {INVENTORY_GROUP} as {}",
        subscription.member_id()
    );
    let mut report = InventoryReport::default();
    let mut finished = BTreeSet::new();
    while options.stop_after.is_none_or(|n| finished.len() < n) {
        let Some(message) = subscription.next().await else {
            break;
        };
        let message = message?;
        let order = Order::from_json(message.value())?;
        let attempt = message.attempt();
        report.attempts.entry(order.id).or_default().push(attempt);
        if order.id % 10 == options.fail_digit {
            let reason = format!("no stock for {}", order.sku);
            if attempt >= options.max_delivery_attempts {
                println!(
                    "inventory: order #{} failed (attempt {attempt}): {reason}; giving up -> {DEAD_LETTER_TOPIC}",
                    order.id
                );
                report.dead_lettered.push(order.id);
                finished.insert(order.id);
            } else {
                println!(
                    "inventory: order #{} failed (attempt {attempt}): {reason}; retry in {:?}",
                    order.id, options.retry_delay
                );
            }
            message.nack_with(Some(options.retry_delay), reason)?;
        } else {
            println!(
                "inventory: reserved {} x {} for order #{} (attempt {attempt})",
                order.quantity, order.sku, order.id
            );
            message.ack()?;
            report.reserved.push(order.id);
            finished.insert(order.id);
        }
    }
    leave(subscription).await;
    Ok(report)
}

/// A record of [`DEAD_LETTER_TOPIC`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The order, as published.
    pub order: Order,
    /// The `herald-dlq-*` headers (and any others), as text.
    pub headers: BTreeMap<String, String>,
}

/// Reads `count` dead letters from [`DEAD_LETTER_TOPIC`] in group `group` (from the
/// earliest record if this creates the group), acking each.
pub async fn read_dead_letters(
    client: &Client,
    group: &str,
    count: usize,
) -> anyhow::Result<Vec<DeadLetter>> {
    let config = ConsumerConfig::new(DEAD_LETTER_TOPIC, group).start_position(Position::Earliest);
    let mut subscription = client.consumer(config).subscribe().await?;
    let mut letters = Vec::new();
    while letters.len() < count {
        let Some(message) = subscription.next().await else {
            break;
        };
        let message = message?;
        let headers = message
            .headers()
            .iter()
            .map(|(name, value)| (name.clone(), String::from_utf8_lossy(value).into_owned()))
            .collect();
        let letter = DeadLetter {
            order: Order::from_json(message.value())?,
            headers,
        };
        message.ack()?;
        letters.push(letter);
    }
    leave(subscription).await;
    Ok(letters)
}
