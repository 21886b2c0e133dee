//! Broker configuration: defaults that run with no configuration at all, overridden by a
//! TOML file, then by `HERALD_*` environment variables, then by flags (`layered`).

mod layered;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::auth::{TokenEntry, Tokens};
use crate::storage::{self, FsyncPolicy};

pub use layered::{
    FILE_ONLY, Flags, Layered, Origin, default_value, env_aliases, env_name, example, load,
    setting_keys,
};

/// Largest record (key + value + header names and values) accepted by default. Bigger events belong in an
/// object store with a pointer in the event.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// Largest batch (one publish request) accepted by default. With the fetch cap below 4 MiB,
/// any stored batch fits one fetch response that a gRPC client accepts without tuning.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 2 * 1024 * 1024;
/// Most records in one batch by default.
pub const DEFAULT_MAX_BATCH_RECORDS: usize = 100_000;
/// Most topics a broker holds by default.
pub const DEFAULT_MAX_TOPICS: usize = 10_000;
/// Most partitions of one topic (the brief's limit).
pub const MAX_PARTITIONS_PER_TOPIC: u32 = 4096;
/// Most partitions across all topics by default: each has a writer thread and mapped files.
pub const DEFAULT_MAX_PARTITIONS: usize = 8192;
/// HTTP/2 streams one connection may have open at once by default.
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 1024;
/// A streaming RPC that sends nothing for this long is closed by default.
pub const DEFAULT_IDLE_STREAM_TIMEOUT_MS: u64 = 5 * 60 * 1000;
/// Client connections served at once by default. Each may hold up to the HTTP/2
/// connection window of received data (`server::HTTP2_CONNECTION_WINDOW`), so this also
/// bounds what clients can make the broker buffer; further connections wait in the
/// listen backlog until one closes.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Heap the broker may spend by default on responses produced ahead of HTTP/2 flow control
/// (encoded copies and decoded records of Fetch responses not yet sent), across all
/// streams. Streams whose readers fall behind wait for room instead of growing memory.
pub const DEFAULT_RESPONSE_BUFFER_BYTES: usize = 128 * 1024 * 1024;
/// Smallest response budget: two of the largest fetch responses' worth of encoding, so
/// one response always fits.
pub const MIN_RESPONSE_BUFFER_BYTES: usize = 16 * 1024 * 1024;
/// An idempotent producer idle this long is forgotten by default: a day, as Kafka's
/// `producer.id.expiration.ms`, far longer than any client retries.
pub const DEFAULT_PRODUCER_IDLE_EXPIRY_MS: u64 = 24 * 60 * 60 * 1000;
/// Idempotent producers a partition remembers by default (about 200 bytes each).
pub const DEFAULT_MAX_PRODUCERS_PER_PARTITION: usize = 10_000;
/// How long a `herald-msg-id` is remembered by default: NATS JetStream's default
/// duplicate window.
pub const DEFAULT_DEDUP_WINDOW_MS: u64 = 2 * 60 * 1000;
/// Default size of one fetch response.
pub const DEFAULT_FETCH_MAX_BYTES: usize = 1024 * 1024;

/// The whole broker configuration. Every field has a default.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where topics and their partition logs live.
    pub data_dir: PathBuf,
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Prometheus `/metrics` listen address.
    pub metrics_listen: SocketAddr,
    /// Default fsync policy for topics that set none: `always`, `interval` or `never`.
    pub fsync: FsyncSetting,
    /// Flush period for `fsync = "interval"`.
    pub fsync_interval_ms: u64,
    /// Default segment size for new topics.
    pub segment_bytes: u64,
    /// Default retention by age for new topics (0 = keep forever).
    pub retention_ms: u64,
    /// Default retention by size per partition for new topics (0 = no limit).
    pub retention_bytes: u64,
    pub max_message_bytes: usize,
    pub max_batch_bytes: usize,
    pub max_batch_records: usize,
    pub max_topics: usize,
    pub max_partitions: usize,
    pub max_streams_per_connection: u32,
    /// Client connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Broker-wide heap for responses waiting on HTTP/2 flow control.
    pub response_buffer_bytes: usize,
    pub idle_stream_timeout_ms: u64,
    /// An idempotent producer not seen on a partition for this long is forgotten there.
    pub producer_idle_expiry_ms: u64,
    /// Idempotent producers each partition remembers; past it, the least recently seen.
    pub max_producers_per_partition: usize,
    /// Default for topics: how long a `herald-msg-id` is remembered (0: off).
    pub dedup_window_ms: u64,
    /// Log as JSON lines instead of human-readable text.
    pub log_json: bool,
    /// An OTLP/gRPC collector (`http://host:4317`) to export publish and deliver spans
    /// to (see `otel`). Unset: no spans, and no cost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// The server's certificate chain (PEM). With `tls_key_file`, the gRPC and metrics
    /// listeners speak TLS only; both files are read again on SIGHUP.
    pub tls_cert_file: Option<PathBuf>,
    /// The private key (PEM) of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates must chain to: mutual TLS. A
    /// verified certificate's subject common name is its principal, and authentication
    /// is on.
    pub tls_client_ca_file: Option<PathBuf>,
    /// With `tls_client_ca_file`: let clients without a certificate connect (they then
    /// authenticate with a bearer token). Off: the handshake requires one.
    pub tls_client_cert_optional: bool,
    /// Serve a listener that is not on a loopback address without TLS. Without it, such a
    /// configuration is refused at start.
    pub insecure: bool,
    /// The ACL file (see `auth::acl`), read at start and again on SIGHUP. Needs
    /// authentication on; with authentication on and no file, only nothing is allowed.
    pub acl_file: Option<PathBuf>,
    /// Bearer tokens, as `herald auth hash-token` prints them: principal and SHA-256. Any
    /// token turns authentication on. Last: TOML writes tables after plain keys.
    pub tokens: Vec<TokenEntry>,
    /// Cluster mode (`[cluster]`): unset, the broker is a single node and never runs
    /// consensus. See `cluster::ClusterSettings`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::cluster::ClusterSettings>,
}

/// The fsync policy as written in configuration.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FsyncSetting {
    Always,
    Interval,
    Never,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./herald-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            fsync: FsyncSetting::Always,
            fsync_interval_ms: 100,
            segment_bytes: storage::DEFAULT_SEGMENT_BYTES,
            retention_ms: 0,
            retention_bytes: 0,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            max_batch_records: DEFAULT_MAX_BATCH_RECORDS,
            max_topics: DEFAULT_MAX_TOPICS,
            max_partitions: DEFAULT_MAX_PARTITIONS,
            max_streams_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            response_buffer_bytes: DEFAULT_RESPONSE_BUFFER_BYTES,
            idle_stream_timeout_ms: DEFAULT_IDLE_STREAM_TIMEOUT_MS,
            producer_idle_expiry_ms: DEFAULT_PRODUCER_IDLE_EXPIRY_MS,
            max_producers_per_partition: DEFAULT_MAX_PRODUCERS_PER_PARTITION,
            dedup_window_ms: DEFAULT_DEDUP_WINDOW_MS,
            log_json: false,
            otlp_endpoint: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            tls_client_cert_optional: false,
            insecure: false,
            acl_file: None,
            tokens: Vec::new(),
            cluster: None,
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {}: {cause}", path.display())]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("parsing {}: {cause}", path.display())]
    Parse {
        path: PathBuf,
        cause: Box<toml::de::Error>,
    },
    #[error("{}: unknown key `{key}`{hint}; see README \"Configuration\" for every key", path.display())]
    UnknownKey {
        path: PathBuf,
        key: String,
        hint: String,
    },
    /// A value that is not what its setting takes, and where it came from.
    #[error("in {origin}: {key}: {message}")]
    Setting {
        origin: Origin,
        key: String,
        message: String,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads a TOML file alone (no environment, no flags); fields it leaves out keep
    /// their defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        load(Some(path), &|_| None, Flags::default()).map(|layered| layered.config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.fsync == FsyncSetting::Interval && self.fsync_interval_ms == 0 {
            return invalid(
                "fsync_interval_ms must be at least 1 with fsync = \"interval\"".into(),
            );
        }
        if !(storage::MIN_SEGMENT_BYTES..=storage::MAX_SEGMENT_BYTES).contains(&self.segment_bytes)
        {
            return invalid(format!(
                "segment_bytes must be within {}..={}",
                storage::MIN_SEGMENT_BYTES,
                storage::MAX_SEGMENT_BYTES
            ));
        }
        if self.max_batch_bytes as u64 > self.segment_bytes {
            return invalid("max_batch_bytes must not exceed segment_bytes".into());
        }
        if self.max_message_bytes > self.max_batch_bytes {
            return invalid(format!(
                "max_message_bytes ({}) must not exceed max_batch_bytes ({})",
                self.max_message_bytes, self.max_batch_bytes
            ));
        }
        if self.max_connections == 0 {
            return invalid("max_connections must be at least 1".into());
        }
        if !(MIN_RESPONSE_BUFFER_BYTES..=u32::MAX as usize).contains(&self.response_buffer_bytes) {
            return invalid(format!(
                "response_buffer_bytes must be within {MIN_RESPONSE_BUFFER_BYTES}..={}",
                u32::MAX
            ));
        }
        if self.max_message_bytes == 0 || self.max_batch_bytes == 0 || self.max_batch_records == 0 {
            return invalid("message and batch limits must be at least 1".into());
        }
        if self.producer_idle_expiry_ms == 0 || self.max_producers_per_partition == 0 {
            return invalid(
                "producer_idle_expiry_ms and max_producers_per_partition must be at least 1".into(),
            );
        }
        if let Some(cluster) = &self.cluster {
            cluster
                .members()
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        }
        self.validate_security()
    }

    /// TLS files come in pairs, a client CA needs TLS, an ACL needs authentication, and a
    /// listener off loopback needs TLS unless `insecure` says otherwise.
    fn validate_security(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return invalid(
                "tls_cert_file and tls_key_file go together: set both or neither".into(),
            );
        }
        if self.tls_client_ca_file.is_some() && !self.tls_enabled() {
            return invalid(
                "tls_client_ca_file needs TLS on (tls_cert_file and tls_key_file)".into(),
            );
        }
        if self.tls_client_cert_optional && self.tls_client_ca_file.is_none() {
            return invalid("tls_client_cert_optional needs tls_client_ca_file".into());
        }
        Tokens::new(&self.tokens).map_err(ConfigError::Invalid)?;
        if self.acl_file.is_some() && !self.auth_enabled() {
            return invalid(
                "acl_file needs authentication on: configure tokens or tls_client_ca_file".into(),
            );
        }
        if !self.tls_enabled() && !self.insecure {
            for (what, addr) in [
                ("listen", self.listen),
                ("metrics_listen", self.metrics_listen),
            ] {
                if !addr.ip().is_loopback() {
                    return invalid(format!(
                        "{what} = {addr} is not a loopback address and TLS is off: set tls_cert_file and tls_key_file, or insecure = true (--insecure) to serve plaintext anyway"
                    ));
                }
            }
        }
        if let Some(cluster) = &self.cluster {
            cluster
                .check_transport(self.insecure)
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        }
        Ok(())
    }

    /// Whether the listeners speak TLS.
    pub fn tls_enabled(&self) -> bool {
        self.tls_cert_file.is_some() && self.tls_key_file.is_some()
    }

    /// Whether every request must carry a credential (a token or a client certificate).
    pub fn auth_enabled(&self) -> bool {
        !self.tokens.is_empty() || self.tls_client_ca_file.is_some()
    }

    /// What each partition remembers of idempotent producers.
    pub fn producer_limits(&self) -> storage::producers::ProducerLimits {
        storage::producers::ProducerLimits {
            idle_expiry_ms: self.producer_idle_expiry_ms.min(i64::MAX as u64) as i64,
            max_producers: self.max_producers_per_partition,
        }
    }

    /// The storage fsync policy this configuration names.
    pub fn fsync_policy(&self) -> FsyncPolicy {
        self.fsync.policy(self.fsync_interval_ms)
    }

    pub fn idle_stream_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_stream_timeout_ms)
    }
}

impl FsyncSetting {
    pub fn policy(self, interval_ms: u64) -> FsyncPolicy {
        match self {
            FsyncSetting::Always => FsyncPolicy::Always,
            FsyncSetting::Interval => {
                FsyncPolicy::Interval(Duration::from_millis(interval_ms.max(1)))
            }
            FsyncSetting::Never => FsyncPolicy::Never,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_no_file_and_a_file_overrides_some() {
        let c = Config::default();
        assert_eq!(c.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(c.metrics_listen.to_string(), "127.0.0.1:9464");
        assert_eq!(c.data_dir, PathBuf::from("./herald-data"));
        c.validate().unwrap();
        let c: Config =
            toml::from_str("fsync = \"never\"\nsegment_bytes = 65536\nmax_batch_bytes = 65536\nmax_message_bytes = 65536")
                .unwrap();
        assert_eq!(c.fsync_policy(), FsyncPolicy::Never);
        assert_eq!(c.segment_bytes, 65536);
        assert_eq!(c.listen, Config::default().listen);
        c.validate().unwrap();
        assert!(toml::from_str::<Config>("no_such_key = 1").is_err());
        let bad: Config = toml::from_str("segment_bytes = 10").unwrap();
        assert!(bad.validate().is_err());
    }

    #[test]
    fn a_listener_off_loopback_needs_tls_or_insecure() {
        let open = |text: &str| toml::from_str::<Config>(text).unwrap().validate();
        let error = open("listen = \"0.0.0.0:50051\"").unwrap_err().to_string();
        assert!(error.contains("not a loopback address"), "{error}");
        assert!(open("metrics_listen = \"10.0.0.1:9464\"").is_err());
        open("listen = \"0.0.0.0:50051\"\ninsecure = true").unwrap();
        open("listen = \"[::1]:50051\"").unwrap();
        open("listen = \"0.0.0.0:50051\"\ntls_cert_file = \"c.pem\"\ntls_key_file = \"k.pem\"")
            .unwrap();
        assert!(open("tls_cert_file = \"c.pem\"").is_err());
        assert!(open("tls_client_ca_file = \"ca.pem\"").is_err());
        assert!(open("acl_file = \"acl.toml\"").is_err());
        let hash = crate::auth::token::hash("t");
        let c: Config = toml::from_str(&format!(
            "acl_file = \"acl.toml\"\n[[tokens]]\nprincipal = \"a\"\nhash = \"{hash}\""
        ))
        .unwrap();
        c.validate().unwrap();
        assert!(c.auth_enabled());
        assert!(open("[[tokens]]\nprincipal = \"a\"\nhash = \"sha256:00\"").is_err());
    }
}
