//! TLS on the gRPC port: the Rust client connects with the right CA and host name and is
//! refused with a wrong CA, a wrong host name or an expired certificate; mutual TLS needs
//! a client certificate from the client CA, not expired, and its common name is the
//! principal; certificates are reloaded without dropping open connections; a listener off
//! loopback without TLS is refused unless `insecure`.

mod common;

use common::pki::{Ca, Validity, with_tls};
use common::*;
use herald_client::{Client, Error, Record};

fn url(broker: &herald_broker::server::Broker, host: &str) -> String {
    format!("https://{host}:{}", broker.addr.port())
}

async fn connect(url: String, ca: &Ca) -> herald_client::Result<Client> {
    Client::builder(url).tls_ca_pem(&ca.pem).connect().await
}

/// A round trip that needs the connection to work: create a topic and list it.
async fn works(client: &Client, topic: &str) -> herald_client::Result<()> {
    client
        .admin()
        .create_topic(topic, 1, Default::default())
        .await?;
    let topics = client.admin().list_topics().await?;
    assert!(topics.iter().any(|t| t.name == topic), "{topics:?}");
    Ok(())
}

#[tokio::test]
async fn the_right_ca_and_host_connect_and_anything_else_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let server = ca.server(&["localhost", "127.0.0.1"], Validity::Now);
    let config = with_tls(
        test_config(&dir.path().join("data")),
        dir.path(),
        &server,
        None,
    );
    let broker = start(config).await;

    let client = Client::connect_tls(url(&broker, "localhost"), &ca.pem)
        .await
        .expect("TLS with the right CA connects");
    works(&client, "by-name").await.unwrap();
    let by_ip = connect(url(&broker, "127.0.0.1"), &ca).await.unwrap();
    works(&by_ip, "by-ip").await.unwrap();
    // A published record comes back over TLS.
    let producer = client.producer(herald_client::ProducerConfig::new("by-name"));
    producer
        .send(Record::new("over tls"))
        .await
        .unwrap()
        .await
        .unwrap();
    producer.close().await.unwrap();
    assert_eq!(fetch_partition(&client, "by-name", 0).await.len(), 1);

    let other_ca = Ca::new("another CA");
    let refused = connect(url(&broker, "localhost"), &other_ca).await;
    assert!(
        refused.is_err(),
        "a server certificate from an unknown CA is refused"
    );

    // The certificate names localhost and 127.0.0.1, not this name.
    let wrong_host = Client::builder(url(&broker, "127.0.0.1"))
        .tls_ca_pem(&ca.pem)
        .tls_domain("broker.example")
        .connect()
        .await;
    assert!(
        wrong_host.is_err(),
        "a certificate for another host is refused"
    );

    // Plaintext to a TLS port gets no answer it can use.
    let plain = Client::builder(format!("http://127.0.0.1:{}", broker.addr.port()))
        .connect()
        .await;
    if let Ok(plain) = plain {
        assert!(plain.admin().list_topics().await.is_err());
    }
    stop(broker).await;
}

#[tokio::test]
async fn an_expired_server_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let server = ca.server(&["localhost"], Validity::Expired);
    let config = with_tls(
        test_config(&dir.path().join("data")),
        dir.path(),
        &server,
        None,
    );
    let broker = start(config).await;
    let refused = connect(url(&broker, "localhost"), &ca).await;
    assert!(refused.is_err(), "an expired certificate is refused");
    stop(broker).await;
}

#[tokio::test]
async fn mutual_tls_needs_a_valid_client_certificate_whose_name_is_the_principal() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let server = ca.server(&["localhost"], Validity::Now);
    let mut config = with_tls(
        test_config(&dir.path().join("data")),
        dir.path(),
        &server,
        Some(&client_ca),
    );
    let acl = dir.path().join("acl.toml");
    std::fs::write(&acl, "superusers = [\"ops\"]\n").unwrap();
    config.acl_file = Some(acl);
    let broker = start(config).await;
    let with_identity = |leaf: &common::pki::Leaf| {
        Client::builder(url(&broker, "localhost"))
            .tls_ca_pem(&ca.pem)
            .tls_identity_pem(&leaf.cert_pem, &leaf.key_pem)
    };

    let ops = with_identity(&client_ca.client("ops", Validity::Now))
        .connect()
        .await
        .expect("a client certificate from the client CA connects");
    works(&ops, "mtls").await.unwrap();

    // The principal is the certificate's common name: "intern" has no rights.
    let intern = with_identity(&client_ca.client("intern", Validity::Now))
        .connect()
        .await
        .unwrap();
    let denied = intern.admin().describe_topic("mtls").await.unwrap_err();
    assert!(matches!(denied, Error::PermissionDenied(_)), "{denied:?}");
    assert!(
        denied.to_string().contains("principal \"intern\""),
        "{denied}"
    );

    // No certificate, one from another CA, an expired one: the handshake fails.
    let refused = |client: herald_client::Result<Client>| async move {
        match client {
            Err(_) => {}
            Ok(client) => {
                let answer = client.admin().list_topics().await;
                assert!(
                    answer.is_err(),
                    "answered without a valid client certificate"
                );
            }
        }
    };
    refused(connect(url(&broker, "localhost"), &ca).await).await;
    let stranger = Ca::new("stranger CA").client("ops", Validity::Now);
    refused(with_identity(&stranger).connect().await).await;
    refused(
        with_identity(&client_ca.client("ops", Validity::Expired))
            .connect()
            .await,
    )
    .await;
    // The metrics endpoint speaks the same TLS, client certificate included.
    let metrics_addr = broker.metrics_addr.unwrap();
    let ops_leaf = client_ca.client("ops", Validity::Now);
    let (status, exposition) =
        common::pki::https_get(metrics_addr, &ca, Some(&ops_leaf), "/metrics")
            .await
            .expect("HTTPS with a client certificate");
    assert_eq!(status, 200);
    let failures = metric_value(
        &exposition,
        "herald_auth_failures_total{reason=\"handshake\"}",
    );
    assert!(
        failures.unwrap_or(0.0) >= 3.0,
        "handshake failures are counted: {failures:?}"
    );
    assert!(
        common::pki::https_get(metrics_addr, &ca, None, "/metrics")
            .await
            .is_err(),
        "metrics need the client certificate too"
    );
    stop(broker).await;
}

#[tokio::test]
async fn certificates_are_reloaded_and_open_connections_stay() {
    let dir = tempfile::tempdir().unwrap();
    let old_ca = Ca::new("old CA");
    let config = with_tls(
        test_config(&dir.path().join("data")),
        dir.path(),
        &old_ca.server(&["localhost"], Validity::Now),
        None,
    );
    let broker = start(config).await;
    let open = connect(url(&broker, "localhost"), &old_ca).await.unwrap();
    works(&open, "before").await.unwrap();

    // New files in place, then what SIGHUP does.
    let new_ca = Ca::new("new CA");
    new_ca
        .server(&["localhost"], Validity::Now)
        .write(dir.path(), "server");
    broker.reload().expect("the new certificate loads");

    works(&open, "after")
        .await
        .expect("the open connection keeps working");
    let fresh = connect(url(&broker, "localhost"), &new_ca).await.unwrap();
    works(&fresh, "fresh").await.unwrap();
    assert!(
        connect(url(&broker, "localhost"), &old_ca).await.is_err(),
        "new connections get the new certificate"
    );

    // A broken file is refused and the certificate in force stays.
    std::fs::write(dir.path().join("server.key"), "not a key").unwrap();
    assert!(broker.reload().is_err());
    let again = connect(url(&broker, "localhost"), &new_ca).await.unwrap();
    works(&again, "again").await.unwrap();
    stop(broker).await;
}

#[tokio::test]
async fn a_listener_off_loopback_without_tls_needs_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.listen = "0.0.0.0:0".parse().unwrap();
    let refused = herald_broker::server::Broker::start(config, false)
        .await
        .err()
        .expect("refused");
    assert!(refused.to_string().contains("insecure"), "{refused}");
}
