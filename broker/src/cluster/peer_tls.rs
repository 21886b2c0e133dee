//! Mutual TLS between the nodes of a cluster. Each node has one certificate from the
//! cluster CA and presents it both ways: as the server of its peer port and as the client
//! when it calls another node. The peer port accepts only clients whose certificate
//! chains to the cluster CA, and a calling node checks that the certificate it is shown
//! chains to the same CA and names the host it dialled (the host of the peer address in
//! `initial_members`, a DNS name or an IP address). So a machine without a certificate
//! from the cluster CA can neither vote, append to the metadata log nor pose as a node.
//!
//! Both sides keep their rustls configuration in an `ArcSwap`, read per connection, so
//! [`PeerTls::reload`] (SIGHUP) applies to the next handshake either way; the accept side
//! is the client port's (`server::tls::accept`).

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::codegen::Service;
use tonic::codegen::http::Uri;

use super::ClusterSettings;
use super::network::host_and_port;
use crate::error::BrokerError;
use crate::server::tls::{client_verifier, read_certs, read_key, read_roots, tls_error};

/// The files peer TLS is made from.
#[derive(Debug, Clone)]
struct PeerTlsFiles {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

/// The TLS configurations in force on the peer port and for calls to other nodes.
pub struct PeerTls {
    files: PeerTlsFiles,
    pub(crate) server: Arc<ArcSwap<ServerConfig>>,
    client: Arc<ArcSwap<ClientConfig>>,
}

impl PeerTls {
    /// The peer TLS `settings` ask for, or `None` when peer traffic is plaintext.
    pub fn from_settings(settings: &ClusterSettings) -> Result<Option<Arc<PeerTls>>, BrokerError> {
        let (Some(cert), Some(key), Some(ca)) = (
            &settings.peer_tls_cert_file,
            &settings.peer_tls_key_file,
            &settings.peer_tls_ca_file,
        ) else {
            return Ok(None);
        };
        let files = PeerTlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            ca: ca.clone(),
        };
        let (server, client) = build(&files)?;
        Ok(Some(Arc::new(PeerTls {
            files,
            server: Arc::new(ArcSwap::from_pointee(server)),
            client: Arc::new(ArcSwap::from_pointee(client)),
        })))
    }

    /// Reads the certificate, key and CA again. The next connection either way uses
    /// them; open ones keep their session. On an error the configuration in force stays.
    pub fn reload(&self) -> Result<(), BrokerError> {
        let (server, client) = build(&self.files)?;
        self.server.store(Arc::new(server));
        self.client.store(Arc::new(client));
        tracing::info!(cert = %self.files.cert.display(), "peer TLS certificates reloaded");
        Ok(())
    }

    /// What connects a channel to the node at `addr` (`host:port`) over TLS.
    pub fn connector(&self, addr: &str) -> Result<PeerConnector, BrokerError> {
        let (host, port) = host_and_port(addr)
            .ok_or_else(|| tls_error(format!("peer address {addr:?}"), "not host:port"))?;
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| tls_error(format!("peer address {addr:?}"), e))?;
        Ok(PeerConnector {
            config: self.client.clone(),
            host: host.to_owned(),
            port,
            name,
        })
    }
}

/// The peer port's configuration (client certificate required, from the cluster CA) and
/// the calling side's (the cluster CA as the only root, this node's certificate shown).
fn build(files: &PeerTlsFiles) -> Result<(ServerConfig, ClientConfig), BrokerError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;
    let versions = [&rustls::version::TLS13, &rustls::version::TLS12];
    let pair = |e| {
        tls_error(
            format!(
                "peer certificate {} with key {}",
                files.cert.display(),
                files.key.display()
            ),
            e,
        )
    };
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| tls_error("TLS versions".into(), e))?
        .with_client_cert_verifier(client_verifier(&files.ca, &provider, false)?)
        .with_single_cert(certs.clone(), key.clone_key())
        .map_err(pair)?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| tls_error("TLS versions".into(), e))?
        .with_root_certificates(read_roots(&files.ca)?)
        .with_client_auth_cert(certs, key)
        .map_err(pair)?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok((server, client))
}

/// Dials one node and handshakes with the client configuration in force at that moment,
/// so a channel that reconnects after a reload shows the new certificate.
#[derive(Clone)]
pub struct PeerConnector {
    config: Arc<ArcSwap<ClientConfig>>,
    host: String,
    port: u16,
    name: ServerName<'static>,
}

impl Service<Uri> for PeerConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    // The endpoint's URI is the same address; the connector dials its own copy, resolving
    // a host name on every connection so a node that moves is found again.
    fn call(&mut self, _: Uri) -> Self::Future {
        let connector = TlsConnector::from(self.config.load_full());
        let (host, port, name) = (self.host.clone(), self.port, self.name.clone());
        Box::pin(async move {
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}
