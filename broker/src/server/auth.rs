//! Authentication in the request policy, authorisation in the handlers.
//!
//! Why split. The policy layer (`policy`) sees every request of every service before
//! anything else, but only its path, metadata and connection: enough to know *who* is
//! calling (a bearer token, a verified client certificate), not *what* the call touches
//! (the topic and group are inside the protobuf message, and on PublishStream and
//! Subscribe inside later messages of a stream). So the layer authenticates and puts an
//! [`Access`] in the request's extensions, or answers UNAUTHENTICATED; every Herald
//! handler then asks that `Access` for each (operation, resource) its request names
//! before it does anything else. A handler that forgot would answer an unauthorised
//! caller with something other than PERMISSION_DENIED, which `tests/security_every_rpc.rs`
//! checks for every RPC in the proto. Requests the layer did not mark (which cannot
//! happen behind the layer) are refused, not allowed.
//!
//! Health (`grpc.health.v1`) stays open, so load balancers and orchestrators can probe
//! without credentials; it tells only whether the broker serves. Reflection needs a
//! principal allowed `describe` on the cluster, checked here in the layer (its service is
//! not ours to change).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus::{IntCounter, IntCounterVec};
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::auth::identity::principal_of_certificate;
use crate::auth::token::parse_authorization;
use crate::auth::{Acl, Operation, Resource, Tokens};
use crate::config::Config;
use crate::error::BrokerError;

const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";
const REFLECTION_PREFIX: &str = "/grpc.reflection.";

/// The broker's credentials and rules, shared by the layer and every `Access`.
pub struct Authenticator {
    tokens: Tokens,
    acl: ArcSwap<Acl>,
    acl_file: Option<PathBuf>,
    failures: IntCounterVec,
    denied: IntCounter,
}

impl Authenticator {
    /// The authenticator `config` asks for, or `None` when authentication is off.
    pub fn from_config(
        config: &Config,
        failures: IntCounterVec,
        denied: IntCounter,
    ) -> Result<Option<Arc<Authenticator>>, BrokerError> {
        if !config.auth_enabled() {
            return Ok(None);
        }
        let tokens = Tokens::new(&config.tokens)
            .map_err(|e| BrokerError::Config(crate::config::ConfigError::Invalid(e)))?;
        let acl = match &config.acl_file {
            Some(path) => Acl::load(path)?,
            None => {
                tracing::warn!(
                    "authentication is on without acl_file: every request is denied (set acl_file with superusers or rules)"
                );
                Acl::default()
            }
        };
        Ok(Some(Arc::new(Authenticator {
            tokens,
            acl: ArcSwap::from_pointee(acl),
            acl_file: config.acl_file.clone(),
            failures,
            denied,
        })))
    }

    /// Reads the ACL file again; on an error the rules in force stay.
    pub fn reload_acl(&self) -> Result<(), BrokerError> {
        let Some(path) = &self.acl_file else {
            return Ok(());
        };
        let acl = Acl::load(path)?;
        tracing::info!(file = %path.display(), rules = acl.rules.len(), superusers = acl.superusers.len(), "ACL reloaded");
        self.acl.store(Arc::new(acl));
        Ok(())
    }

    /// The rules in force.
    pub fn acl(&self) -> Arc<Acl> {
        self.acl.load_full()
    }

    /// Who sends the request with these HTTP parts, or why it is refused.
    pub(super) fn authenticate(
        self: &Arc<Self>,
        path: &str,
        parts: &http::request::Parts,
    ) -> Result<Access, BrokerError> {
        if path.starts_with(HEALTH_PREFIX) {
            return Ok(Access::Open);
        }
        let tls = parts.extensions.get::<TlsConnectInfo<TcpConnectInfo>>();
        let peer = parts
            .extensions
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr)
            .or_else(|| tls.and_then(|t| t.get_ref().remote_addr()));
        let certificate = tls
            .and_then(TlsConnectInfo::peer_certs)
            .and_then(|certs| certs.first().map(|c| principal_of_certificate(c.as_ref())));
        let refuse = |reason: &'static str, said: String, principal: Option<&str>| {
            self.failures.with_label_values(&[reason]).inc();
            tracing::warn!(?peer, principal, path, reason = %said, "request refused: unauthenticated");
            BrokerError::Unauthenticated { reason: said }
        };
        let principal: Arc<str> = match parts.headers.get("authorization") {
            Some(value) => {
                let token = parse_authorization(value.as_bytes())
                    .map_err(|e| refuse("malformed", e.to_string(), None))?;
                match self.tokens.principal(token) {
                    Some(principal) => principal.into(),
                    None => {
                        return Err(refuse(
                            "unknown_token",
                            "the bearer token is not one the broker knows".into(),
                            None,
                        ));
                    }
                }
            }
            None => match certificate {
                Some(Some(principal)) => principal.into(),
                Some(None) => {
                    return Err(refuse(
                        "certificate_unnamed",
                        "the client certificate names no subject common name or DNS name".into(),
                        None,
                    ));
                }
                None => {
                    return Err(refuse(
                        "missing",
                        "the request carries no bearer token (authorization: Bearer <token>) and no client certificate".into(),
                        None,
                    ));
                }
            },
        };
        let access = Access::Principal(Arc::new(Caller {
            principal,
            peer,
            auth: self.clone(),
        }));
        if path.starts_with(REFLECTION_PREFIX) {
            access.authorize(Operation::Describe, Resource::cluster())?;
        }
        Ok(access)
    }
}

/// An authenticated caller.
pub struct Caller {
    principal: Arc<str>,
    peer: Option<SocketAddr>,
    auth: Arc<Authenticator>,
}

/// Who is calling, as the policy layer found: every request behind the layer has one in
/// its extensions.
#[derive(Clone)]
pub enum Access {
    /// Authentication is off (or the path is health): everything is allowed.
    Open,
    Principal(Arc<Caller>),
    /// No `Access` was found on the request: refused, so a request that somehow missed
    /// the layer is never let through.
    Unmarked,
}

impl Access {
    /// The caller of `request`, as the layer marked it.
    pub fn of<T>(request: &tonic::Request<T>) -> Access {
        request
            .extensions()
            .get::<Access>()
            .cloned()
            .unwrap_or(Access::Unmarked)
    }

    /// Whether the caller may do `operation` on `resource`, silently (for filtering
    /// lists).
    pub fn may(&self, operation: Operation, resource: Resource<'_>) -> bool {
        match self {
            Access::Open => true,
            Access::Principal(caller) => {
                caller
                    .auth
                    .acl
                    .load()
                    .allows(&caller.principal, operation, resource)
            }
            Access::Unmarked => false,
        }
    }

    /// `Ok` if the caller may do `operation` on `resource`; otherwise PERMISSION_DENIED
    /// naming both (logged and counted).
    pub fn authorize(
        &self,
        operation: Operation,
        resource: Resource<'_>,
    ) -> Result<(), BrokerError> {
        if self.may(operation, resource) {
            return Ok(());
        }
        match self {
            Access::Principal(caller) => {
                caller.auth.denied.inc();
                tracing::info!(peer = ?caller.peer, principal = %caller.principal, %operation, %resource, "request refused: permission denied");
                Err(BrokerError::PermissionDenied {
                    principal: caller.principal.to_string(),
                    operation,
                    resource: resource.to_string(),
                })
            }
            _ => Err(BrokerError::Unauthenticated {
                reason: "the request was not authenticated".into(),
            }),
        }
    }
}
