//! The Rust client's consumer: a group of two shares the work exactly once in key order,
//! nacks are redelivered, credit bounds what is sent, auto-extend keeps held messages, and
//! a subscription rejoins after a broker restart.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use herald_client::{
    Client, ConsumerConfig, GroupSettings, Message, OrderingMode, Position, ProducerConfig, Record,
    Subscription, TopicConfig,
};

const WAIT: Duration = Duration::from_secs(10);

async fn next(subscription: &mut Subscription, wait: Duration) -> Option<Message> {
    match tokio::time::timeout(wait, subscription.next()).await {
        Ok(Some(message)) => Some(message.expect("a delivery, not an error")),
        Ok(None) => panic!("the subscription ended"),
        Err(_) => None,
    }
}

async fn produce(client: &Client, topic: &str, records: Vec<Record>) {
    // Bounded: a publish that is never answered fails the test instead of hanging it
    // (one CI run hung here once).
    let sent = async {
        let producer = client.producer(ProducerConfig::new(topic));
        let mut deliveries = Vec::new();
        for record in records {
            deliveries.push(producer.send(record).await.unwrap());
        }
        producer.close().await.unwrap();
        for delivery in deliveries {
            delivery.await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(120), sent)
        .await
        .expect("every record published and acknowledged in time");
}

fn settings(ordering: OrderingMode) -> GroupSettings {
    GroupSettings {
        ordering: Some(ordering),
        retry_backoff_min: Some(Duration::from_millis(10)),
        retry_backoff_max: Some(Duration::from_millis(100)),
        ..GroupSettings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_consumers_ack_100k_records_exactly_once_in_key_order() {
    let t = common::start_with_client().await;
    let admin = t.client.admin();
    admin
        .create_topic("events", 4, TopicConfig::default())
        .await
        .unwrap();
    const RECORDS: usize = 100_000;
    const KEYS: usize = 100;
    let mut next_seq = [0u64; KEYS];
    let records = (0..RECORDS)
        .map(|i| {
            let k = (i * 7919) % KEYS;
            let seq = next_seq[k];
            next_seq[k] += 1;
            Record::new(seq.to_string()).key(format!("key-{k}"))
        })
        .collect();
    produce(&t.client, "events", records).await;

    let config = |id: &str| {
        ConsumerConfig::new("events", "workers")
            .client_id(id)
            .start_position(Position::Earliest)
            .group_settings(settings(OrderingMode::Key))
            .max_in_flight_messages(200)
    };
    let a = t.client.consumer(config("a")).subscribe().await.unwrap();
    let b = t.client.consumer(config("b")).subscribe().await.unwrap();
    assert_ne!(a.member_id(), b.member_id());

    // Every (partition, offset) acked so far, across both consumers.
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let run = |mut subscription: Subscription| {
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut last: HashMap<Vec<u8>, u64> = HashMap::new();
            let mut count = 0usize;
            loop {
                if seen.lock().unwrap().len() == RECORDS {
                    // Kept open: the group's state is checked with both members in it.
                    return (count, subscription);
                }
                let Some(message) = next(&mut subscription, Duration::from_millis(100)).await
                else {
                    continue;
                };
                assert_eq!(message.attempt(), 1, "no failures, so no redeliveries");
                let key = message.key().expect("keyed").to_vec();
                let seq: u64 = std::str::from_utf8(message.value())
                    .unwrap()
                    .parse()
                    .unwrap();
                if let Some(previous) = last.insert(key.clone(), seq) {
                    assert!(
                        seq > previous,
                        "key {:?}: {seq} after {previous}",
                        String::from_utf8_lossy(&key)
                    );
                }
                let fresh = seen
                    .lock()
                    .unwrap()
                    .insert((message.partition(), message.offset()));
                assert!(fresh, "{}:{} twice", message.partition(), message.offset());
                message.ack().unwrap();
                count += 1;
            }
        })
    };
    let (ta, tb) = (run(a), run(b));
    let ((na, a), (nb, b)) = tokio::time::timeout(Duration::from_secs(120), async {
        (ta.await.unwrap(), tb.await.unwrap())
    })
    .await
    .expect("all consumed in time");
    assert_eq!(na + nb, RECORDS);
    assert!(na > 0 && nb > 0, "both consumers got work: {na} + {nb}");

    // The group has nothing left, and nothing out: a duplicate delivery would be in
    // flight, never acked.
    common::wait_for_client_group(&t.client, "events", "workers", |info| {
        info.partitions
            .iter()
            .all(|p| p.lag == 0 && p.in_flight_count == 0)
    })
    .await;
    drop((a, b));
}

#[tokio::test]
async fn a_nacked_message_comes_back_with_attempt_2() {
    let t = common::start_with_client().await;
    t.create_topic("jobs", 1).await;
    produce(
        &t.client,
        "jobs",
        vec![Record::new("first").header("h", "1"), Record::new("second")],
    )
    .await;
    let mut subscription = t
        .client
        .consumer(
            ConsumerConfig::new("jobs", "g")
                .start_position(Position::Earliest)
                .group_settings(settings(OrderingMode::None)),
        )
        .subscribe()
        .await
        .unwrap();

    let mut first_attempts = HashMap::new();
    while first_attempts.len() < 2 {
        let m = next(&mut subscription, WAIT).await.expect("a delivery");
        assert_eq!(m.attempt(), 1);
        first_attempts.insert(m.offset().0, m);
    }
    let first = first_attempts.remove(&0).unwrap();
    assert_eq!(first.value().as_ref(), b"first");
    assert_eq!(first.headers(), &[("h".to_owned(), "1".into())]);
    assert!(first.timestamp_ms() > 0);
    first
        .nack_with(Some(Duration::from_millis(50)), "try again")
        .unwrap();
    first_attempts.remove(&1).unwrap().nack().unwrap();

    let mut again = HashMap::new();
    while again.len() < 2 {
        let m = next(&mut subscription, WAIT).await.expect("a redelivery");
        assert_eq!(m.attempt(), 2, "offset {}", m.offset());
        again.insert(m.offset().0, m);
    }
    let m = again.remove(&0).unwrap();
    assert_eq!(m.value().as_ref(), b"first");
    m.nack_after(Duration::from_millis(10)).unwrap();
    let m = next(&mut subscription, WAIT)
        .await
        .expect("a third delivery");
    assert_eq!((m.offset().0, m.attempt()), (0, 3));
    m.ack().unwrap();
    again.remove(&1).unwrap().ack().unwrap();
    // Acked messages stay acked: nothing is left in flight to come back.
    common::wait_for_client_group(&t.client, "jobs", "g", |info| {
        info.partitions[0].committed_offset.0 == 2 && info.partitions[0].in_flight_count == 0
    })
    .await;
}

#[tokio::test]
async fn credit_bounds_deliveries_and_auto_extend_keeps_held_messages() {
    let t = common::start_with_client().await;
    let admin = t.client.admin();
    admin
        .create_topic("jobs", 1, TopicConfig::default())
        .await
        .unwrap();
    produce(
        &t.client,
        "jobs",
        (0..50).map(|i| Record::new(format!("{i}"))).collect(),
    )
    .await;
    let mut subscription = t
        .client
        .consumer(
            ConsumerConfig::new("jobs", "g")
                .start_position(Position::Earliest)
                .group_settings(GroupSettings {
                    ack_deadline: Some(Duration::from_millis(1000)),
                    ..settings(OrderingMode::None)
                })
                .credit_window(5, 1 << 20)
                .auto_extend(Duration::from_millis(1000)),
        )
        .subscribe()
        .await
        .unwrap();

    // Nothing taken yet: the broker sends the window, no more. (Without the window it
    // would send all 50 at once, so the first count of at least 5 would be above 5.)
    let info = common::wait_for_client_group(&t.client, "jobs", "g", |info| {
        info.partitions[0].in_flight_count >= 5
    })
    .await;
    assert_eq!(
        info.partitions[0].in_flight_count, 5,
        "no more than the window"
    );

    // Hold one message for several ack deadlines: auto-extend keeps it from coming back.
    let held = next(&mut subscription, WAIT).await.unwrap();
    let mut received = vec![held.offset().0];
    let mut others = Vec::new();
    let hold_until = tokio::time::Instant::now() + Duration::from_millis(3000);
    while tokio::time::Instant::now() < hold_until {
        if let Some(m) = next(&mut subscription, Duration::from_millis(50)).await {
            assert_eq!(m.attempt(), 1, "offset {} came back", m.offset());
            received.push(m.offset().0);
            others.push(m); // also held, so extended too
        }
    }
    assert_eq!(
        received.len(),
        50,
        "credit is granted as messages are taken"
    );
    held.ack().unwrap();
    for m in others {
        m.ack().unwrap();
    }
    received.sort_unstable();
    assert_eq!(received, (0..50).collect::<Vec<u64>>());
    common::wait_for_client_group(&t.client, "jobs", "g", |info| {
        info.partitions[0].committed_offset.0 == 50 && info.partitions[0].in_flight_count == 0
    })
    .await;
}

/// A broker with its data in `dir` (so it can be restarted at the same address) and a
/// one-partition topic `jobs`, with a client connected to it.
async fn jobs_broker(dir: &std::path::Path) -> (herald_broker::server::Broker, Client) {
    let broker = common::start_at(dir, "127.0.0.1:0".parse().unwrap()).await;
    let client = Client::connect(format!("http://{}", broker.addr))
        .await
        .unwrap();
    client
        .admin()
        .create_topic("jobs", 1, TopicConfig::default())
        .await
        .unwrap();
    (broker, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejoins_after_a_broker_restart_and_gets_only_the_unacked() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, client) = jobs_broker(dir.path()).await;
    let addr = broker.addr;
    produce(
        &client,
        "jobs",
        (0..100).map(|i| Record::new(format!("{i}"))).collect(),
    )
    .await;
    let mut subscription = client
        .consumer(
            ConsumerConfig::new("jobs", "g")
                .start_position(Position::Earliest)
                .group_settings(settings(OrderingMode::None))
                .max_in_flight_messages(1000)
                .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500)),
        )
        .subscribe()
        .await
        .unwrap();

    // Ack the first 50, hold the rest unacked.
    let mut held = Vec::new();
    while held.len() < 50 {
        let m = next(&mut subscription, WAIT).await.expect("a delivery");
        if m.offset().0 < 50 {
            m.ack().unwrap();
        } else {
            held.push(m);
        }
    }
    common::wait_for_client_group(&client, "jobs", "g", |info| {
        info.partitions[0].committed_offset.0 == 50
    })
    .await;

    broker.shutdown().await.unwrap();
    let broker = common::start_at(dir.path(), addr).await;

    // The subscription joins again by itself; only the unacked come back.
    let mut again = HashMap::new();
    while again.len() < 50 {
        let m = tokio::time::timeout(Duration::from_secs(15), subscription.next())
            .await
            .expect("redelivered after the restart")
            .expect("the subscription goes on")
            .expect("no error: the restart is retried");
        assert!(m.offset().0 >= 50, "offset {} was acked", m.offset());
        assert_eq!(m.attempt(), 2);
        assert!(!m.is_stale());
        assert!(again.insert(m.offset().0, m).is_none(), "a duplicate");
    }
    assert!(subscription.reconnects() >= 1);
    // Messages from the old stream are stale; settling them is harmless.
    assert!(held.iter().all(Message::is_stale));
    for m in held {
        m.ack().unwrap();
    }
    for m in again.into_values() {
        m.ack().unwrap();
    }
    // All acked: nothing left in flight to come back.
    common::wait_for_client_group(&client, "jobs", "g", |info| {
        info.partitions[0].committed_offset.0 == 100 && info.partitions[0].in_flight_count == 0
    })
    .await;
    drop(subscription);
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn subscribing_to_a_missing_topic_fails() {
    let t = common::start_with_client().await;
    let error = t
        .client
        .consumer(ConsumerConfig::new("nope", "g"))
        .subscribe()
        .await
        .unwrap_err();
    assert!(
        matches!(error, herald_client::Error::NotFound(_)),
        "{error}"
    );
}

/// A first join that meets a broker not up yet (as during a restart or a cluster's
/// failover) is tried again within `first_join_retry`; with a zero bound the transient
/// error comes back at once, and a refusal (a missing topic) is never retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_join_waits_out_a_broker_that_is_not_up_yet() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, client) = jobs_broker(dir.path()).await;
    let addr = broker.addr;
    produce(&client, "jobs", vec![Record::new("one")]).await;
    broker.shutdown().await.unwrap();

    let config = ConsumerConfig::new("jobs", "g")
        .start_position(Position::Earliest)
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(200));
    let at_once = client
        .consumer(config.clone().first_join_retry(Duration::ZERO))
        .subscribe()
        .await
        .unwrap_err();
    assert!(
        matches!(
            at_once,
            herald_client::Error::Unavailable(_) | herald_client::Error::Transport(_)
        ),
        "{at_once}"
    );

    let consumer = client.consumer(config);
    let joining = tokio::spawn(async move { consumer.subscribe().await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !joining.is_finished(),
        "still trying while the broker is down"
    );
    let broker = common::start_at(dir.path(), addr).await;
    let mut subscription = tokio::time::timeout(WAIT, joining)
        .await
        .expect("joined once the broker is up")
        .unwrap()
        .expect("the retried first join succeeds");
    let m = next(&mut subscription, WAIT).await.expect("a delivery");
    assert_eq!(&m.value()[..], b"one");
    m.ack().unwrap();

    let missing = tokio::time::timeout(
        Duration::from_secs(5),
        client
            .consumer(ConsumerConfig::new("nope", "g"))
            .subscribe(),
    )
    .await
    .expect("a refusal is not retried")
    .unwrap_err();
    assert!(
        matches!(missing, herald_client::Error::NotFound(_)),
        "{missing}"
    );
    drop(subscription);
    broker.shutdown().await.unwrap();
}

/// Key ordering with `max_in_flight_per_key`: a consumer holds up to that many of a key
/// at once, in offset order; a nack takes the later ones back, and they come again after
/// the nacked one. Without it a key has one message out at a time.
#[tokio::test]
async fn max_in_flight_per_key_lets_a_consumer_hold_a_key_s_messages_in_order() {
    let t = common::start_with_client().await;
    t.create_topic("jobs", 1).await;
    let records = (0..6)
        .map(|i| Record::new(i.to_string()).key("k"))
        .collect();
    produce(&t.client, "jobs", records).await;
    let config = |group: &str| {
        ConsumerConfig::new("jobs", group)
            .start_position(Position::Earliest)
            .group_settings(settings(OrderingMode::Key))
    };
    let value = |m: &Message| std::str::from_utf8(m.value()).unwrap().to_owned();
    let quiet = Duration::from_millis(300);

    // The default: one at a time.
    let mut strict = t
        .client
        .consumer(config("strict"))
        .subscribe()
        .await
        .unwrap();
    let first = next(&mut strict, WAIT).await.expect("a delivery");
    assert_eq!(value(&first), "0");
    assert!(
        next(&mut strict, quiet).await.is_none(),
        "one of a key at a time"
    );
    drop((first, strict));

    let mut sub = t
        .client
        .consumer(config("runs").max_in_flight_per_key(3))
        .subscribe()
        .await
        .unwrap();
    let mut held = Vec::new();
    for expected in ["0", "1", "2"] {
        let m = next(&mut sub, WAIT).await.expect("a delivery");
        assert_eq!((value(&m), m.attempt()), (expected.to_owned(), 1));
        held.push(m);
    }
    assert!(next(&mut sub, quiet).await.is_none(), "at most 3 of a key");
    // "0" fails: "1" and "2" are taken back and come again after it, and acking the
    // taken-back "1" has no effect. (The client may send an ack ahead of an earlier nack,
    // so "1" is acked only once "0" is back, when it is surely taken back.)
    let mut held = held.into_iter();
    held.next()
        .unwrap()
        .nack_with(Some(Duration::from_millis(50)), "later")
        .unwrap();
    let again = next(&mut sub, WAIT).await.expect("a redelivery");
    assert_eq!((value(&again), again.attempt()), ("0".to_owned(), 2));
    held.next().unwrap().ack().unwrap();
    again.ack().unwrap();
    for expected in ["1", "2"] {
        let m = next(&mut sub, WAIT).await.expect("a redelivery");
        assert_eq!((value(&m), m.attempt()), (expected.to_owned(), 1));
        m.ack().unwrap();
    }
    for expected in ["3", "4", "5"] {
        let m = next(&mut sub, WAIT).await.expect("a delivery");
        assert_eq!(value(&m), expected);
        m.ack().unwrap();
    }
    common::wait_for_client_group(&t.client, "jobs", "runs", |info| {
        info.partitions[0].committed_offset.0 == 6 && info.partitions[0].in_flight_count == 0
    })
    .await;
}
