//! TLS on the broker's listeners (gRPC and metrics), with certificates read again on
//! SIGHUP.
//!
//! Why not tonic's `ServerTlsConfig`: it fixes the certificate when the server starts. Here
//! each listener's rustls `ServerConfig` sits in an `ArcSwap`; every new connection
//! handshakes with the one in force, so a reload (new certificate, key or client CA)
//! applies to the next connection while established ones keep their session. Handshakes
//! run in their own tasks, bounded by a timeout, so a slow or silent client never holds
//! up the accept loop. The crypto is rustls with ring, TLS 1.3 preferred and 1.2 allowed,
//! with rustls's safe cipher suites only; gRPC connections must negotiate `h2` by ALPN.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::{Stream, StreamExt};
use prometheus::IntCounterVec;
use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::config::Config;
use crate::error::BrokerError;

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the server to take them.
const READY_QUEUE: usize = 64;

/// The files TLS is made from.
#[derive(Debug, Clone)]
struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    client_cert_optional: bool,
}

/// The TLS configurations in force for the gRPC and the metrics listener.
pub struct Tls {
    files: TlsFiles,
    pub(super) grpc: Arc<ArcSwap<ServerConfig>>,
    pub(super) http: Arc<ArcSwap<ServerConfig>>,
}

impl Tls {
    /// The TLS `config` asks for, or `None` when it is off.
    pub fn from_config(config: &Config) -> Result<Option<Tls>, BrokerError> {
        let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) else {
            return Ok(None);
        };
        let files = TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: config.tls_client_ca_file.clone(),
            client_cert_optional: config.tls_client_cert_optional,
        };
        let (grpc, http) = build(&files)?;
        Ok(Some(Tls {
            files,
            grpc: Arc::new(ArcSwap::from_pointee(grpc)),
            http: Arc::new(ArcSwap::from_pointee(http)),
        }))
    }

    /// Reads the certificate, key and client CA files again. New connections use them;
    /// open ones are not touched. On an error the configuration in force stays.
    pub fn reload(&self) -> Result<(), BrokerError> {
        let (grpc, http) = build(&self.files)?;
        self.grpc.store(Arc::new(grpc));
        self.http.store(Arc::new(http));
        tracing::info!(cert = %self.files.cert.display(), "TLS certificates reloaded");
        Ok(())
    }
}

pub(crate) fn tls_error(what: String, cause: impl std::fmt::Display) -> BrokerError {
    BrokerError::Config(crate::config::ConfigError::Invalid(format!(
        "{what}: {cause}"
    )))
}

pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, BrokerError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| tls_error(format!("reading certificates from {}", path.display()), e))?;
    if certs.is_empty() {
        return Err(tls_error(
            format!("reading certificates from {}", path.display()),
            "no PEM certificate in it",
        ));
    }
    Ok(certs)
}

pub(crate) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, BrokerError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| tls_error(format!("reading the private key {}", path.display()), e))
}

/// The certificates of the CA file `ca`, as trust anchors.
pub(crate) fn read_roots(ca: &Path) -> Result<RootCertStore, BrokerError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(ca)? {
        roots
            .add(cert)
            .map_err(|e| tls_error(format!("adding a CA from {}", ca.display()), e))?;
    }
    Ok(roots)
}

/// Client certificates must chain to `ca` (unless `optional`, then they may be absent).
pub(crate) fn client_verifier(
    ca: &Path,
    provider: &Arc<rustls::crypto::CryptoProvider>,
    optional: bool,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, BrokerError> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(read_roots(ca)?), provider.clone());
    let verifier = if optional {
        verifier.allow_unauthenticated()
    } else {
        verifier
    };
    verifier
        .build()
        .map_err(|e| tls_error(format!("client CA {}", ca.display()), e))
}

/// The gRPC (ALPN `h2`) and the metrics (ALPN `http/1.1`) configurations.
fn build(files: &TlsFiles) -> Result<(ServerConfig, ServerConfig), BrokerError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;
    let one = |alpn: &[u8]| -> Result<ServerConfig, BrokerError> {
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| tls_error("TLS versions".into(), e))?;
        let builder = match &files.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => builder.with_client_cert_verifier(client_verifier(
                ca,
                &provider,
                files.client_cert_optional,
            )?),
        };
        let mut config = builder
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(|e| {
                tls_error(
                    format!(
                        "certificate {} with key {}",
                        files.cert.display(),
                        files.key.display()
                    ),
                    e,
                )
            })?;
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(config)
    };
    Ok((one(b"h2")?, one(b"http/1.1")?))
}

/// The connections of `incoming`, each after a TLS handshake with the configuration in
/// force when it was accepted. Failed handshakes (wrong CA, expired or missing client
/// certificate, plaintext clients) are logged with `listener`'s name and counted under
/// `failures`' `handshake` label (when given), and the connection dropped.
pub(crate) fn accept<S, IO>(
    incoming: S,
    config: Arc<ArcSwap<ServerConfig>>,
    failures: Option<IntCounterVec>,
    listener: &'static str,
) -> ReceiverStream<io::Result<TlsStream<IO>>>
where
    S: Stream<Item = io::Result<IO>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel(READY_QUEUE);
    tokio::spawn(async move {
        let mut incoming = std::pin::pin!(incoming);
        loop {
            let next = tokio::select! {
                next = incoming.next() => next,
                // The server stopped taking connections.
                _ = tx.closed() => break,
            };
            let io = match next {
                None => break,
                Some(Ok(io)) => io,
                Some(Err(error)) => {
                    tracing::debug!(%error, "accepting a connection failed");
                    continue;
                }
            };
            let acceptor = TlsAcceptor::from(config.load_full());
            let (tx, failures) = (tx.clone(), failures.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(error)) => {
                        if let Some(failures) = &failures {
                            failures.with_label_values(&["handshake"]).inc();
                        }
                        tracing::warn!(%error, listener, "TLS handshake failed");
                    }
                    Err(_) => {
                        if let Some(failures) = &failures {
                            failures.with_label_values(&["handshake"]).inc();
                        }
                        tracing::warn!(listener, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// The metrics listener behind TLS, for `axum::serve`.
pub(super) struct HttpsListener {
    connections: ReceiverStream<io::Result<TlsStream<tokio::net::TcpStream>>>,
    local: std::net::SocketAddr,
}

impl HttpsListener {
    pub(super) fn new(
        listener: tokio::net::TcpListener,
        config: Arc<ArcSwap<ServerConfig>>,
        failures: IntCounterVec,
    ) -> io::Result<HttpsListener> {
        let local = listener.local_addr()?;
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        Ok(HttpsListener {
            connections: accept(incoming, config, Some(failures), "metrics"),
            local,
        })
    }
}

impl axum::serve::Listener for HttpsListener {
    type Io = TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.connections.next().await {
                Some(Ok(stream)) => {
                    let peer = stream.get_ref().0.peer_addr().unwrap_or(self.local);
                    return (stream, peer);
                }
                Some(Err(_)) => continue,
                // The accept task ended only if the listener did: wait for shutdown.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}
