//! Starting and stopping the broker: the gRPC server (Herald, health, reflection), the
//! metrics endpoint, and graceful shutdown. The only module that knows tonic.

mod auth;
mod cluster_status;
mod connections;
mod groups;
mod metrics;
mod policy;
mod publish_route;
mod request_limit;
mod service;
mod status;
mod subscribe_route;
pub(crate) mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use herald_proto::HeraldServer;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;

pub use auth::{Access, Authenticator};
pub use metrics::Metrics;
pub use policy::{Check, Policy};
pub use service::{FETCH_MAX_BYTES_CAP, HeraldService};

use crate::config::Config;
use crate::error::{BrokerError, Result};
use crate::groups::GroupRegistry;
use crate::registry::Registry;

/// HTTP/2 flow-control windows: a publish of one 1 MiB batch must not wait for window
/// updates half way (the protocol's default window is 64 KiB).
pub const HTTP2_STREAM_WINDOW: u32 = 4 * 1024 * 1024;
pub const HTTP2_CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// Largest HTTP/2 frame the broker accepts: fewer, larger frames for big batches (the
/// protocol's default is 16 KiB).
pub const HTTP2_MAX_FRAME: u32 = 1024 * 1024;

/// Headroom above `max_batch_bytes` for the rest of a publish request (topic, framing).
const REQUEST_OVERHEAD_BYTES: usize = 64 * 1024;
/// HTTP/2 keepalive pings find dead peers whose streams would otherwise stay open.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A running broker.
pub struct Broker {
    /// The gRPC address it listens on (useful when started on port 0).
    pub addr: SocketAddr,
    /// The metrics address, if metrics are served.
    pub metrics_addr: Option<SocketAddr>,
    pub registry: Arc<Registry>,
    /// TLS configurations and the authenticator, for `reload`.
    tls: Option<Arc<tls::Tls>>,
    auth: Option<Arc<Authenticator>>,
    /// Cluster mode's node, when the broker runs in a cluster.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<()>>,
}

impl Broker {
    /// Opens the data directory (recovering every partition), binds the gRPC and metrics
    /// listeners and starts serving. `config.listen` / `config.metrics_listen` may use port
    /// 0; `serve_metrics = false` skips the metrics endpoint.
    pub async fn start(config: Config, serve_metrics: bool) -> Result<Broker> {
        Broker::start_with_policy(config, serve_metrics, Policy::default()).await
    }

    /// [`Broker::start`], with `policy` applied to every gRPC request of every service.
    pub async fn start_with_policy(
        config: Config,
        serve_metrics: bool,
        policy: Policy,
    ) -> Result<Broker> {
        config.validate()?;
        let metrics = Metrics::new();
        let ops = metrics::Ops::new();
        let tls = tls::Tls::from_config(&config)?.map(Arc::new);
        let auth = Authenticator::from_config(
            &config,
            metrics.auth_failures.clone(),
            metrics.auth_denied.clone(),
        )?;
        let (stop_tx, stop_rx) = watch::channel(false);
        // The operator's endpoint comes up first, so `/healthz` answers during recovery.
        // If the start fails below, `stop_tx` is dropped, which ends it. Under TLS it
        // speaks HTTPS with the gRPC port's certificate.
        let metrics_addr = if serve_metrics {
            let listener = tokio::net::TcpListener::bind(config.metrics_listen)
                .await
                .map_err(|e| BrokerError::io(format!("binding {}", config.metrics_listen), e))?;
            let metrics_addr = listener.local_addr().ok();
            let mut stop = stop_rx.clone();
            let (m, o) = (metrics.clone(), ops.clone());
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            match &tls {
                Some(tls) => {
                    let https = tls::HttpsListener::new(
                        listener,
                        tls.http.clone(),
                        metrics.auth_failures.clone(),
                    )
                    .map_err(|e| BrokerError::io("reading the metrics address", e))?;
                    tokio::spawn(async move {
                        if let Err(error) = metrics::serve(https, m, o, shutdown).await {
                            tracing::error!(%error, "metrics endpoint failed");
                        }
                    });
                }
                None => {
                    tokio::spawn(async move {
                        if let Err(error) = metrics::serve(listener, m, o, shutdown).await {
                            tracing::error!(%error, "metrics endpoint failed");
                        }
                    });
                }
            }
            metrics_addr
        } else {
            None
        };
        let registry_config = config.clone();
        // In cluster mode the registry opens the partitions this node replicates through
        // their groups, so it needs the placement before it opens any topic.
        let replicas = match &config.cluster {
            Some(settings) => Some(crate::cluster::Cluster::replicas(
                settings,
                &config.data_dir,
            )?),
            None => None,
        };
        let opener = replicas
            .clone()
            .map(|r| r as Arc<dyn crate::partition::PartitionOpener>);
        let registry =
            tokio::task::spawn_blocking(move || Registry::open_with(registry_config, opener))
                .await
                .map_err(|cause| BrokerError::TaskFailed {
                    what: "opening the data directory",
                    cause,
                })??;
        let registry = Arc::new(registry);
        if let Some(endpoint) = &config.otlp_endpoint {
            registry.set_otel(Arc::new(crate::otel::Otel::start(endpoint)?));
        }
        let groups_registry = registry.clone();
        let groups = tokio::task::spawn_blocking(move || GroupRegistry::open(groups_registry))
            .await
            .map_err(|cause| BrokerError::TaskFailed {
                what: "loading consumer groups",
                cause,
            })??;
        let groups = Arc::new(groups);
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| BrokerError::io(format!("binding {}", config.listen), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| BrokerError::io("reading the listen address", e))?;
        ops.loaded(registry.clone(), groups.clone());

        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<HeraldServer<HeraldService>>()
            .await;
        // Reflection in both versions: v1, and v1alpha, the only one that grpcurl before
        // 1.9, grpc-js and Python's grpc_requests speak.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(herald_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_error =
            |e| BrokerError::io("building the reflection service", std::io::Error::other(e));
        let reflection_v1alpha = reflection().build_v1alpha().map_err(reflection_error)?;
        let reflection = reflection().build_v1().map_err(reflection_error)?;
        // Cluster mode only: a single node never starts openraft.
        let cluster = match &config.cluster {
            Some(settings) => Some(
                crate::cluster::Cluster::start_with(settings, registry.clone(), replicas).await?,
            ),
            None => None,
        };
        let message_max = config.max_batch_bytes + REQUEST_OVERHEAD_BYTES;
        // Before the local groups start: the coordinator stops those of replicated topics
        // left from before a restart (the cluster holds their state, and runs them where
        // it says).
        let coordinator = match &cluster {
            Some(cluster) => Some(
                crate::cluster::coordinator::Coordinator::start(cluster.clone(), groups.clone())
                    .await,
            ),
            None => None,
        };
        groups.start();
        // The generated server, with Subscribe's responses written by the route itself.
        let service = Arc::new(
            HeraldService::new(registry.clone(), groups.clone(), metrics.clone(), stop_rx)
                .with_cluster(cluster.clone(), addr)
                .with_coordinator(coordinator.clone()),
        );
        if let Some(cluster) = &cluster {
            // Requests other nodes forward here are served by this same service.
            let forwarded: Arc<dyn crate::cluster::forward::ForwardedRequests> = service.clone();
            cluster.serve_forwarded(Arc::downgrade(&forwarded));
        }
        let herald = subscribe_route::SubscribeRoute::new(
            service,
            message_max,
            message_max.max(FETCH_MAX_BYTES_CAP + REQUEST_OVERHEAD_BYTES),
        );
        // `serve_with_incoming` leaves Nagle on unless asked: with it, small acks wait for
        // the peer's delayed ACK (tens of ms).
        let incoming = connections::limit(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            config.max_connections,
        );
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let server_registry = registry.clone();
        let server_ops = ops.clone();
        let status_counts = metrics::StatusCountLayer::new(&metrics);
        let policy = policy.with_auth(auth.clone());
        let grpc_tls = tls
            .as_ref()
            .map(|t| (t.grpc.clone(), metrics.auth_failures.clone()));
        let server_cluster = cluster.clone();
        let task = tokio::spawn(async move {
            let signal = async move {
                let _ = shutdown_rx.await;
                tracing::info!("shutting down: no new connections; finishing in-flight requests");
                server_ops.set_phase(metrics::Phase::Stopping);
                let _ = stop_tx.send(true);
                health_reporter
                    .set_not_serving::<HeraldServer<HeraldService>>()
                    .await;
            };
            let router = tonic::transport::Server::builder()
                .initial_stream_window_size(Some(HTTP2_STREAM_WINDOW))
                .initial_connection_window_size(Some(HTTP2_CONNECTION_WINDOW))
                .max_frame_size(Some(HTTP2_MAX_FRAME))
                .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
                .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
                // Outermost, so refusals by the policy are counted too.
                .layer(status_counts)
                // The one place for rules that hold for every RPC (see `policy`).
                .layer(policy::PolicyLayer::new(policy, message_max))
                .add_service(herald)
                .add_service(health_service)
                .add_service(reflection)
                .add_service(reflection_v1alpha);
            let served = match grpc_tls {
                Some((config, failures)) => {
                    router
                        .serve_with_incoming_shutdown(
                            tls::accept(incoming, config, Some(failures), "grpc"),
                            signal,
                        )
                        .await
                }
                None => router.serve_with_incoming_shutdown(incoming, signal).await,
            };
            if let Err(error) = &served {
                tracing::error!(%error, "gRPC server failed");
            }
            // Groups this node runs are released while the cluster still listens, so
            // other nodes take them over at once.
            if let Some(coordinator) = &coordinator {
                coordinator.shutdown().await;
            }
            if let Some(cluster) = &server_cluster {
                cluster.shutdown().await;
            }
            // Every request has been answered: persist every group's state, then flush and
            // checkpoint every partition.
            let closed = tokio::task::spawn_blocking(move || {
                groups.close();
                if let Some(otel) = server_registry.otel() {
                    otel.shutdown();
                }
                server_registry.close()
            })
            .await
            .map_err(|cause| BrokerError::TaskFailed {
                what: "closing partitions",
                cause,
            })?;
            served.map_err(|e| BrokerError::io("serving gRPC", std::io::Error::other(e)))?;
            closed
        });
        // The listener is bound and the server task owns it: connections are accepted.
        ops.set_phase(metrics::Phase::Ready);
        tracing::info!(%addr, metrics = %metrics::describe(metrics_addr), data_dir = %config.data_dir.display(), tls = tls.is_some(), authentication = auth.is_some(), "herald is serving");
        Ok(Broker {
            addr,
            metrics_addr,
            registry,
            tls,
            auth,
            cluster,
            shutdown: Some(shutdown_tx),
            task,
        })
    }

    /// Reads the TLS certificate, key and client CA files, the peer TLS files and the ACL
    /// file again (what SIGHUP does). New connections handshake with the new
    /// certificates; open ones keep theirs. Each part that fails to load keeps what is in
    /// force and is reported.
    pub fn reload(&self) -> Result<()> {
        let tls = self.tls.as_ref().map_or(Ok(()), |tls| tls.reload());
        let peer_tls = self.cluster.as_ref().map_or(Ok(()), |c| c.reload_tls());
        let acl = self.auth.as_ref().map_or(Ok(()), |auth| auth.reload_acl());
        tls.and(peer_tls).and(acl)
    }

    /// The ACL rules in force, when authentication is on.
    pub fn acl(&self) -> Option<Arc<crate::auth::Acl>> {
        self.auth.as_ref().map(|auth| auth.acl())
    }

    /// Stops accepting, answers in-flight requests, ends open streams with UNAVAILABLE,
    /// flushes every partition and returns.
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.wait().await
    }

    /// Waits until the broker stops (after `shutdown`, or after a fatal error).
    pub async fn wait(self) -> Result<()> {
        self.task.await.map_err(|cause| BrokerError::TaskFailed {
            what: "broker task",
            cause,
        })?
    }
}
