//! The whole order flow against a real in-process broker: the order service publishes,
//! the email and inventory groups each get every order, the failing orders are
//! redelivered and then dead-lettered with the `herald-dlq-*` headers.

use std::collections::BTreeSet;
use std::time::Duration;

use herald_broker::config::{Config, FsyncSetting};
use herald_broker::server::Broker;
use herald_client::Client;
use herald_example_orders::{
    DEAD_LETTER_TOPIC, EMAIL_GROUP, INVENTORY_GROUP, InventoryOptions, MAX_DELIVERY_ATTEMPTS,
    ORDERS_TOPIC, ensure_topic, publish_orders, read_dead_letters, run_email, run_inventory,
};

const ORDERS: u64 = 30;

async fn start_broker(dir: &std::path::Path) -> Broker {
    let config = Config {
        data_dir: dir.to_owned(),
        listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: "127.0.0.1:0".parse().unwrap(),
        fsync: FsyncSetting::Never,
        ..Config::default()
    };
    Broker::start(config, false).await.expect("broker starts")
}

/// Waits until every partition of `group` has nothing left to deliver; returns the
/// group's dead-lettered count.
async fn wait_drained(client: &Client, group: &str) -> u64 {
    loop {
        let info = client
            .admin()
            .describe_group(ORDERS_TOPIC, group)
            .await
            .expect("describe group");
        if info
            .partitions
            .iter()
            .all(|p| p.lag == 0 && p.in_flight_count == 0)
        {
            return info.partitions.iter().map(|p| p.dead_lettered_count).sum();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_reach_both_groups_and_failures_are_dead_lettered() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let broker = start_broker(dir.path()).await;
    let client = Client::connect(format!("http://{}", broker.addr))
        .await
        .expect("client connects");

    tokio::time::timeout(Duration::from_secs(25), async {
        ensure_topic(&client, ORDERS_TOPIC, 3).await.unwrap();

        // Both listeners are running before the first order, as with an EventEmitter.
        let email = tokio::spawn({
            let client = client.clone();
            async move { run_email(&client, Some(ORDERS as usize)).await }
        });
        let options = InventoryOptions {
            retry_delay: Duration::from_millis(100),
            stop_after: Some(ORDERS as usize),
            ..InventoryOptions::default()
        };
        let inventory = tokio::spawn({
            let client = client.clone();
            async move { run_inventory(&client, &options).await }
        });

        let published = publish_orders(&client, 1, ORDERS, Duration::ZERO)
            .await
            .unwrap();
        let all_ids: BTreeSet<u64> = published.iter().map(|o| o.id).collect();
        let failing: BTreeSet<u64> = all_ids.iter().copied().filter(|id| id % 10 == 7).collect();
        assert_eq!(failing, BTreeSet::from([7, 17, 27]));

        // The email group got every order.
        let emailed = email.await.unwrap().unwrap();
        let emailed_ids: BTreeSet<u64> = emailed.iter().map(|o| o.id).collect();
        assert_eq!(emailed_ids, all_ids);
        for order in &emailed {
            assert_eq!(
                published[(order.id - 1) as usize],
                *order,
                "payload round-trips"
            );
        }

        // The inventory group got every order too; failures were retried, then given up.
        let report = inventory.await.unwrap().unwrap();
        assert_eq!(
            report.attempts.keys().copied().collect::<BTreeSet<_>>(),
            all_ids
        );
        for (id, attempts) in &report.attempts {
            if failing.contains(id) {
                assert_eq!(
                    attempts,
                    &[1, 2, 3],
                    "order {id} redelivered until attempt 3"
                );
            } else {
                assert_eq!(attempts, &[1], "order {id} delivered once");
            }
        }
        let reserved: BTreeSet<u64> = report.reserved.iter().copied().collect();
        assert_eq!(
            reserved.len(),
            report.reserved.len(),
            "each order acked once"
        );
        assert_eq!(reserved, &all_ids - &failing);
        assert_eq!(
            report
                .dead_lettered
                .iter()
                .copied()
                .collect::<BTreeSet<_>>(),
            failing
        );

        // The broker dead-lettered exactly the failing orders, with their provenance.
        assert_eq!(wait_drained(&client, INVENTORY_GROUP).await, 3);
        assert_eq!(wait_drained(&client, EMAIL_GROUP).await, 0);
        let letters = read_dead_letters(&client, "dlq-audit", failing.len())
            .await
            .unwrap();
        assert_eq!(
            letters.iter().map(|l| l.order.id).collect::<BTreeSet<_>>(),
            failing
        );
        for letter in &letters {
            let header = |name: &str| {
                letter
                    .headers
                    .get(name)
                    .unwrap_or_else(|| panic!("{name} missing: {:?}", letter.headers))
                    .as_str()
            };
            assert_eq!(header("herald-dlq-topic"), ORDERS_TOPIC);
            assert_eq!(header("herald-dlq-group"), INVENTORY_GROUP);
            assert_eq!(
                header("herald-dlq-attempts"),
                MAX_DELIVERY_ATTEMPTS.to_string()
            );
            assert!(header("herald-dlq-reason").contains("no stock"));
            let partition: u32 = header("herald-dlq-partition").parse().unwrap();
            assert!(partition < 3);
            header("herald-dlq-offset").parse::<u64>().unwrap();
        }
        let dead_letter_count: u64 = client
            .admin()
            .describe_topic(DEAD_LETTER_TOPIC)
            .await
            .unwrap()
            .partitions
            .iter()
            .map(|p| p.end_offset.0)
            .sum();
        assert_eq!(dead_letter_count, 3, "nothing else was dead-lettered");
    })
    .await
    .expect("the scenario finishes within 25 s");
    drop(broker);
}
