//! The Rust client for Herald.
//!
//! - [`Client`]: one connection (an HTTP/2 channel) to a broker; cheap to clone.
//! - [`Admin`]: topics and consumer groups (create, describe, list, delete, seek, redrive).
//! - [`Producer`]: batched, pipelined publishing with bounded memory, in the storage batch
//!   format (the broker's fast path). Batching adapts to the load by default: a record for
//!   a partition with nothing in flight is sent at once, records arriving while a batch is
//!   in flight are batched behind it ([`ProducerConfig::send_when_idle`]).
//! - [`Consumer`]: a member of a consumer group; its [`Subscription`] is a stream of
//!   [`Message`]s to ack, nack or extend, rejoined automatically after a broker restart
//!   (at-least-once delivery).
//! - [`Client::fetch`]: read one partition by position, without a group (replay, tailing);
//!   a [`Fetch`] is a stream of [`FetchedRecord`]s.
//!
//! ```no_run
//! use herald_client::{Client, ProducerConfig, Record};
//!
//! # async fn run() -> herald_client::Result<()> {
//! let client = Client::connect("http://127.0.0.1:50051").await?;
//! client.admin().create_topic("orders", 4, Default::default()).await?;
//!
//! let producer = client.producer(ProducerConfig::new("orders"));
//! let delivery = producer.send(Record::new("hello").key("order-42")).await?;
//! let acked = delivery.await?;
//! println!("stored at {}:{}", acked.partition, acked.offset);
//! producer.close().await?;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod admin;
mod backoff;
mod consumer;
mod error;
mod fetch;
mod producer;
mod publish_stream;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use herald_proto::HeraldClient;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

pub use admin::{
    Admin, FsyncPolicy, GroupInfo, GroupMember, GroupPartition, GroupSettings, GroupSummary,
    OrderingMode, PartitionInfo, PendingFilter, PendingMessage, Position, TopicAlter, TopicConfig,
    TopicInfo, TopicSummary,
};
pub use consumer::{Consumer, ConsumerConfig, Message, Subscription};
pub use error::{Error, Result, code_name};
pub use fetch::{Fetch, FetchConfig, FetchedRecord};
pub use producer::{Acked, BatchDelivery, Delivery, Producer, ProducerConfig, Record, TRACEPARENT};

/// Largest gRPC message the client sends or accepts. Above the broker's batch and fetch
/// limits (a few MiB), so those limits, with their clear errors, are what applies.
const MAX_GRPC_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// A partition id of a topic, from 0 to the partition count − 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Partition(pub u32);

/// An offset in a partition: dense, starting at 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset(pub u64);

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The partition the broker picks for a record key: `xxh64(key, seed 0) % partitions`.
///
/// ```
/// let p = herald_client::partition_for_key(b"order-42", 4);
/// assert!(p.0 < 4);
/// ```
pub fn partition_for_key(key: &[u8], partitions: u32) -> Partition {
    let hash = xxhash_rust::xxh64::xxh64(key, 0);
    Partition((hash % u64::from(partitions.max(1))) as u32)
}

/// The generated gRPC client as [`Client::raw`] hands it out: every call carries the
/// client's credentials.
pub type RawClient = HeraldClient<InterceptedService<Channel, Credentials>>;

/// What every call of a [`Client`] carries: the bearer token, if one was set
/// ([`ClientBuilder::token`]), as `authorization: Bearer <token>` metadata.
#[derive(Clone, Default)]
pub struct Credentials {
    authorization: Option<AsciiMetadataValue>,
}

impl fmt::Debug for Credentials {
    // Never the token itself: a client may be logged.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("token", &self.authorization.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A connection to a Herald broker.
///
/// Cloning is cheap: clones share one HTTP/2 channel, which multiplexes every call.
///
/// ```no_run
/// # async fn run() -> herald_client::Result<()> {
/// let client = herald_client::Client::connect("http://127.0.0.1:50051").await?;
/// let topics = client.admin().list_topics().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Client {
    raw: RawClient,
    /// What `raw` calls through; the producer's `PublishStream` uses it directly.
    service: publish_stream::GrpcService,
    request_timeout: Option<Duration>,
    /// The settings it was made with, for connections to the cluster's other nodes (the
    /// producer's per-partition routing) with the same TLS, token, keep-alive and
    /// timeouts.
    settings: Arc<ClientBuilder>,
}

impl Client {
    /// Connects to the broker at `url` (e.g. `"http://127.0.0.1:50051"`) with the default
    /// settings of [`ClientBuilder`].
    ///
    /// ```no_run
    /// # async fn run() -> herald_client::Result<()> {
    /// let client = herald_client::Client::connect("http://127.0.0.1:50051").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(url: impl Into<String>) -> Result<Client> {
        Client::builder(url).connect().await
    }

    /// Connects over TLS to the broker at `url` (e.g. `"https://broker.internal:50051"`),
    /// trusting the CA certificates in `ca_pem` (PEM) and checking the broker's
    /// certificate names the host of `url`. For a client certificate, a token or another
    /// server name, use [`ClientBuilder`]'s `tls_*` and [`ClientBuilder::token`].
    ///
    /// ```no_run
    /// # async fn run() -> herald_client::Result<()> {
    /// let ca = std::fs::read("certs/ca.pem").unwrap();
    /// let client = herald_client::Client::connect_tls("https://localhost:50051", ca).await?;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "tls")]
    pub async fn connect_tls(url: impl Into<String>, ca_pem: impl AsRef<[u8]>) -> Result<Client> {
        Client::builder(url).tls_ca_pem(ca_pem).connect().await
    }

    /// A builder to set timeouts (and TLS) before connecting.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// # async fn run() -> herald_client::Result<()> {
    /// let client = herald_client::Client::builder("http://127.0.0.1:50051")
    ///     .connect_timeout(Duration::from_secs(2))
    ///     .request_timeout(Duration::from_secs(10))
    ///     .connect()
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            connect_timeout: Some(Duration::from_secs(5)),
            request_timeout: Some(Duration::from_secs(30)),
            keep_alive: None,
            token: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Topic and group administration.
    pub fn admin(&self) -> Admin {
        Admin::new(self.clone())
    }

    /// A producer for `config.topic`. Its background task is spawned on the current Tokio
    /// runtime, so this must be called from within one.
    ///
    /// ```no_run
    /// # async fn run(client: herald_client::Client) -> herald_client::Result<()> {
    /// use herald_client::{ProducerConfig, Record};
    /// let producer = client.producer(ProducerConfig::new("orders"));
    /// producer.send(Record::new("v")).await?.await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn producer(&self, config: ProducerConfig) -> Producer {
        Producer::new(self.clone(), config)
    }

    /// A consumer of `config.topic` in `config.group`; nothing happens until
    /// [`Consumer::subscribe`].
    ///
    /// ```no_run
    /// # async fn run(client: herald_client::Client) -> herald_client::Result<()> {
    /// use futures::StreamExt;
    /// use herald_client::ConsumerConfig;
    /// let mut subscription = client
    ///     .consumer(ConsumerConfig::new("orders", "billing"))
    ///     .subscribe()
    ///     .await?;
    /// while let Some(message) = subscription.next().await {
    ///     message?.ack()?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn consumer(&self, config: ConsumerConfig) -> Consumer {
        Consumer::new(self.clone(), config)
    }

    /// Reads one partition from `config.start`, without a consumer group: the records up
    /// to the partition's end as it is when the call arrives, or, with
    /// [`FetchConfig::follow`], every record published after that too, until the [`Fetch`]
    /// is dropped.
    ///
    /// Fails with the broker's error if the call is refused ([`Error::NotFound`] for a
    /// missing topic or partition, [`Error::OutOfRange`] for an offset outside the
    /// partition).
    ///
    /// ```no_run
    /// # async fn run(client: herald_client::Client) -> herald_client::Result<()> {
    /// use futures::StreamExt;
    /// use herald_client::{FetchConfig, Position};
    /// let mut records = client
    ///     .fetch(FetchConfig::new("orders", 0).start(Position::Offset(42)))
    ///     .await?;
    /// while let Some(record) = records.next().await {
    ///     let record = record?;
    ///     println!("{} {:?}", record.offset, record.value);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn fetch(&self, config: FetchConfig) -> Result<Fetch> {
        Fetch::start(self, config).await
    }

    /// The generated gRPC client on this connection, for calls this crate does not wrap
    /// (e.g. `ListPending`).
    pub fn raw(&self) -> RawClient {
        self.raw.clone()
    }

    /// The service every call goes through, for the calls the client encodes itself.
    pub(crate) fn grpc_service(&self) -> publish_stream::GrpcService {
        self.service.clone()
    }

    /// A client for the node at `address` (`host:port`, as `ClusterStatus` names a node's
    /// client address), with this client's settings: its URL scheme, TLS (the certificate
    /// check names `address`'s host, unless [`ClientBuilder::tls_domain`] set a name),
    /// token, keep-alive and timeouts. Connects on first use.
    pub(crate) fn to_address(&self, address: &str) -> Result<Client> {
        let scheme = match self.settings.url.split_once("://") {
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => "https",
            _ => "http",
        };
        let mut settings = (*self.settings).clone();
        settings.url = format!("{scheme}://{address}");
        settings.connect_lazy()
    }

    /// Runs one unary call under the request timeout and maps its status.
    pub(crate) async fn unary<T, F>(&self, call: F) -> Result<T>
    where
        F: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let result = match self.request_timeout {
            Some(timeout) => tokio::time::timeout(timeout, call)
                .await
                .map_err(|_| Error::Timeout)?,
            None => call.await,
        };
        Ok(result?.into_inner())
    }
}

/// Settings of a [`Client`]'s connection; made by [`Client::builder`].
///
/// TLS needs the crate's `tls` feature (tonic's rustls with ring), off by default so
/// plaintext users do not compile a TLS stack: then [`ClientBuilder::tls_ca_pem`],
/// [`ClientBuilder::tls_identity_pem`] (mutual TLS) and [`ClientBuilder::tls_domain`].
#[derive(Clone)]
pub struct ClientBuilder {
    url: String,
    connect_timeout: Option<Duration>,
    request_timeout: Option<Duration>,
    /// HTTP/2 ping interval and how long to wait for the answer.
    keep_alive: Option<(Duration, Duration)>,
    token: Option<String>,
    #[cfg(feature = "tls")]
    tls: Option<tonic::transport::ClientTlsConfig>,
}

impl fmt::Debug for ClientBuilder {
    // Never the token itself: a client (which keeps its settings) may be logged.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ClientBuilder");
        d.field("url", &self.url)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("keep_alive", &self.keep_alive)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"));
        #[cfg(feature = "tls")]
        d.field("tls", &self.tls.is_some());
        d.finish()
    }
}

impl ClientBuilder {
    /// How long connecting may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// How long a unary call (the admin calls, the producer's topic lookup) may take
    /// before it fails with [`Error::Timeout`] (default 30 s). Streams are not limited.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }

    /// Removes the request timeout.
    pub fn no_request_timeout(mut self) -> Self {
        self.request_timeout = None;
        self
    }

    /// Sends an HTTP/2 ping every `interval` and drops the connection when one is not
    /// answered within `timeout` (default: no pings). A long-lived stream on an idle
    /// partition (a followed [`Fetch`], a quiet [`Subscription`]) otherwise learns that
    /// the broker vanished without closing the connection only from the operating
    /// system's TCP timeouts, which take minutes or more.
    pub fn keep_alive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.keep_alive = Some((interval, timeout));
        self
    }

    /// Sends `token` as `authorization: Bearer <token>` with every call, for a broker
    /// with authentication on (the CLI reads it from `--token` or `HERALD_TOKEN`).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Speaks TLS, trusting the CA certificates in `ca_pem` (PEM) for the broker's
    /// certificate (and only them: the system's roots are not consulted).
    #[cfg(feature = "tls")]
    pub fn tls_ca_pem(mut self, ca_pem: impl AsRef<[u8]>) -> Self {
        let ca = tonic::transport::Certificate::from_pem(ca_pem);
        self.tls = Some(self.tls.take().unwrap_or_default().ca_certificate(ca));
        self
    }

    /// Presents this client certificate chain and key (PEM) to a broker that asks for
    /// one (mutual TLS); its subject common name is the principal.
    #[cfg(feature = "tls")]
    pub fn tls_identity_pem(
        mut self,
        cert_pem: impl AsRef<[u8]>,
        key_pem: impl AsRef<[u8]>,
    ) -> Self {
        let identity = tonic::transport::Identity::from_pem(cert_pem, key_pem);
        self.tls = Some(self.tls.take().unwrap_or_default().identity(identity));
        self
    }

    /// Checks the broker's certificate against `name` instead of the URL's host (e.g.
    /// connecting by IP address to a broker whose certificate names its DNS name).
    #[cfg(feature = "tls")]
    pub fn tls_domain(mut self, name: impl Into<String>) -> Self {
        self.tls = Some(self.tls.take().unwrap_or_default().domain_name(name));
        self
    }

    /// The tonic endpoint these settings describe, to customise further (keep-alive,
    /// window sizes) before [`ClientBuilder::connect_with_endpoint`].
    pub fn endpoint(&self) -> Result<Endpoint> {
        let mut endpoint = Endpoint::from_shared(self.url.clone())
            .map_err(|e| Error::InvalidArgument(format!("bad broker url {:?}: {e}", self.url)))?
            .tcp_nodelay(true)
            // Big batches, published or delivered, should not stall on the protocol's 64 KiB
            // default flow-control window.
            .initial_stream_window_size(4 * 1024 * 1024)
            .initial_connection_window_size(16 * 1024 * 1024);
        if let Some(timeout) = self.connect_timeout {
            endpoint = endpoint.connect_timeout(timeout);
        }
        if let Some((interval, timeout)) = self.keep_alive {
            endpoint = endpoint
                .http2_keep_alive_interval(interval)
                .keep_alive_timeout(timeout);
        }
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| Error::InvalidArgument(format!("TLS settings: {e}")))?;
        }
        Ok(endpoint)
    }

    /// Connects, failing if the broker cannot be reached.
    pub async fn connect(self) -> Result<Client> {
        let endpoint = self.endpoint()?;
        self.connect_with_endpoint(endpoint).await
    }

    /// Connects through `endpoint` (e.g. from [`ClientBuilder::endpoint`] with TLS added),
    /// keeping this builder's request timeout. Connections the producer opens to a
    /// cluster's other nodes use this builder's settings, not `endpoint`'s.
    pub async fn connect_with_endpoint(self, endpoint: Endpoint) -> Result<Client> {
        let credentials = self.credentials()?;
        let channel = endpoint.connect().await?;
        Ok(self.with_channel(channel, credentials))
    }

    /// Builds the client without connecting: the connection is made on first use.
    pub fn connect_lazy(self) -> Result<Client> {
        let credentials = self.credentials()?;
        let channel = self.endpoint()?.connect_lazy();
        Ok(self.with_channel(channel, credentials))
    }

    fn credentials(&self) -> Result<Credentials> {
        let authorization = match &self.token {
            None => None,
            Some(token) => Some(MetadataValue::try_from(format!("Bearer {token}")).map_err(
                |_| {
                    Error::InvalidArgument(
                        "the token holds characters a gRPC header cannot carry".into(),
                    )
                },
            )?),
        };
        Ok(Credentials { authorization })
    }

    fn with_channel(self, channel: Channel, credentials: Credentials) -> Client {
        let service = InterceptedService::new(channel, credentials);
        let raw = HeraldClient::new(service.clone())
            .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES);
        Client {
            raw,
            service,
            request_timeout: self.request_timeout,
            settings: Arc::new(self),
        }
    }
}

/// Compiles the code blocks of `client/README.md` as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_hash_to_the_brokers_partition() {
        for key in [&b""[..], b"a", b"order-42", &[0xff; 100]] {
            for partitions in [1, 2, 3, 4, 7, 64, 4096] {
                assert_eq!(
                    partition_for_key(key, partitions).0,
                    herald_format::partition_for_key(key, partitions),
                );
            }
        }
    }

    #[test]
    fn statuses_map_to_variants_that_keep_code_and_message() {
        for code in [
            tonic::Code::InvalidArgument,
            tonic::Code::NotFound,
            tonic::Code::AlreadyExists,
            tonic::Code::OutOfRange,
            tonic::Code::ResourceExhausted,
            tonic::Code::FailedPrecondition,
            tonic::Code::Unavailable,
            tonic::Code::Unauthenticated,
            tonic::Code::PermissionDenied,
            tonic::Code::Internal,
        ] {
            let error = Error::from(tonic::Status::new(code, "why"));
            assert_eq!(error.code(), Some(code));
            assert!(error.to_string().contains("why"), "{error}");
            assert_eq!(error.is_retryable(), code == tonic::Code::Unavailable);
        }
        assert_eq!(
            Error::from_code(5, "gone"),
            Error::NotFound("gone".to_owned())
        );
        assert_eq!(Error::Closed.code(), None);
    }
}
