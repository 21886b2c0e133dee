//! Dead letters: a message that used up max_delivery_attempts lands in the group's
//! dead-letter topic with the documented headers and counts as done; Redrive puts it back
//! on the source topic, once.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use herald_proto::v1;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(5);

fn header_map(headers: &[v1::Header]) -> BTreeMap<String, String> {
    headers
        .iter()
        .map(|h| (h.key.clone(), String::from_utf8(h.value.to_vec()).unwrap()))
        .collect()
}

#[tokio::test]
async fn dead_letters_carry_headers_and_redrive_puts_them_back() {
    let (_dir, broker, mut c) = start_with_topic("src", 2).await;
    create_topic(&mut c, "dlq", 1).await;
    let mut r = record(Some("k"), "payload");
    r.headers.push(v1::Header {
        key: "trace".into(),
        value: "abc".as_bytes().to_vec().into(),
    });
    publish(&mut c, "src", Some(1), vec![record(Some("k0"), "skip")])
        .await
        .unwrap();
    publish(&mut c, "src", Some(1), vec![r]).await.unwrap();
    let settings = v1::GroupSettings {
        max_delivery_attempts: Some(2),
        dead_letter_topic: Some("dlq".into()),
        ..fast_settings(30_000, 20)
    };
    let mut m = subscribe(&mut c, join("src", "g", Some(settings)))
        .await
        .unwrap();
    let (first, _) = m.deliveries(2, WAIT).await;
    assert_eq!(first.len(), 2);
    let (skip, bad): (Vec<_>, Vec<_>) = first.into_iter().partition(|d| d.offset == 0);
    m.ack(&skip).await;
    m.nack(&bad[0], None, "first failure").await;
    let (second, _) = m.deliveries(1, WAIT).await;
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].delivery_attempt, 2);
    m.nack(&second[0], None, "boom").await;

    // Dead-lettered: in the DLQ with the headers, and done for the group.
    let landed = eventually(WAIT, || {
        let mut c = c.clone();
        async move { !fetch_all(&mut c, "dlq", 0, 0).await.unwrap().is_empty() }
    })
    .await;
    assert!(landed, "nothing in the dead-letter topic");
    let dead = fetch_all(&mut c, "dlq", 0, 0).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].value.as_ref(), b"payload");
    assert_eq!(dead[0].key.as_deref(), Some(&b"k"[..]));
    let headers = header_map(&dead[0].headers);
    assert_eq!(headers["trace"], "abc");
    assert_eq!(headers["herald-dlq-topic"], "src");
    assert_eq!(headers["herald-dlq-group"], "g");
    assert_eq!(headers["herald-dlq-partition"], "1");
    assert_eq!(headers["herald-dlq-offset"], "1");
    assert_eq!(headers["herald-dlq-attempts"], "2");
    assert_eq!(headers["herald-dlq-reason"], "boom");
    let d = describe_group(&mut c, "src", "g").await;
    assert_eq!(d.partitions[1].committed_offset, 2, "{d:?}");
    assert_eq!(d.partitions[1].dead_lettered_count, 1);
    assert_eq!(d.partitions[1].in_flight_count, 0, "{d:?}");

    // Redrive: back on the source partition, without the dlq headers, delivered afresh.
    // It is the next delivery of the stream: a dead letter delivered again would come
    // before it.
    let redriven = c
        .redrive(v1::RedriveRequest {
            topic: "src".into(),
            group: "g".into(),
            max_messages: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(redriven.redriven_count, 1);
    let (back, _) = m.deliveries(1, WAIT).await;
    assert_eq!(back.len(), 1);
    assert_eq!((back[0].partition, back[0].offset), (1, 2));
    assert_eq!(back[0].value.as_ref(), b"payload");
    assert_eq!(back[0].delivery_attempt, 1);
    let headers = header_map(&back[0].headers);
    assert_eq!(headers.len(), 1, "{headers:?}");
    assert_eq!(headers["trace"], "abc");
    m.ack(&back).await;
    let again = c
        .redrive(v1::RedriveRequest {
            topic: "src".into(),
            group: "g".into(),
            max_messages: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.redriven_count, 0, "a dead letter is redriven once");
    drop(m);

    // Settings checks around dead letters.
    let create = |group: &str, settings: v1::GroupSettings| v1::CreateGroupRequest {
        topic: "src".into(),
        group: group.into(),
        settings: Some(settings),
        start_position: None,
    };
    let code = code_of(
        c.create_group(create(
            "a",
            v1::GroupSettings {
                max_delivery_attempts: Some(3),
                ..Default::default()
            },
        ))
        .await,
    );
    assert_eq!(code, Code::InvalidArgument, "max attempts without a DLQ");
    let code = code_of(
        c.create_group(create(
            "a",
            v1::GroupSettings {
                dead_letter_topic: Some("missing".into()),
                ..Default::default()
            },
        ))
        .await,
    );
    assert_eq!(code, Code::NotFound, "a missing DLQ topic");
    let code = code_of(
        c.create_group(create(
            "a",
            v1::GroupSettings {
                dead_letter_topic: Some("src".into()),
                ..Default::default()
            },
        ))
        .await,
    );
    assert_eq!(
        code,
        Code::InvalidArgument,
        "the DLQ is the group's own topic"
    );
    c.create_group(create("plain", v1::GroupSettings::default()))
        .await
        .unwrap();
    let code = code_of(
        c.redrive(v1::RedriveRequest {
            topic: "src".into(),
            group: "plain".into(),
            max_messages: 0,
        })
        .await,
    );
    assert_eq!(code, Code::FailedPrecondition);
    drop(c);
    stop(broker).await;
}
