//! The server's request policy: the one place every gRPC request passes through, whatever
//! service answers it (Herald's generated server, Subscribe's own route, health,
//! reflection).
//!
//! Why. Subscribe is answered by a hand-written route (`subscribe_route`), so anything
//! configured on the generated `HeraldServer` (an interceptor, a limit, compression) would
//! silently not apply to it. Rules that must hold for every RPC therefore live here, as a
//! tower layer installed once on the tonic server in front of all its services: the
//! request size limit (`request_limit`) and the [`Policy`] checks, which see the method's
//! path, metadata and connection info of each request before any service does.
//! Authentication happens here too (`auth`): every request leaves the layer with an
//! [`Access`] in its extensions, which the handlers authorise against, or is answered
//! UNAUTHENTICATED.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::{Request, Status};

use super::auth::{Access, Authenticator};
use super::request_limit;

/// A check run on every request: the method's path (`/herald.v1.Herald/Publish`) and the
/// request's metadata and extensions (peer address, TLS identity). An error refuses the
/// request with that status before any service sees it.
pub type Check = Arc<dyn Fn(&str, &Request<()>) -> Result<(), Status> + Send + Sync>;

/// The rules every request is held to. Empty by default.
#[derive(Clone, Default)]
pub struct Policy {
    checks: Vec<Check>,
    /// Set when authentication is on.
    auth: Option<Arc<Authenticator>>,
}

impl Policy {
    /// Adds a check; checks run in the order they were added.
    pub fn with_check(
        mut self,
        check: impl Fn(&str, &Request<()>) -> Result<(), Status> + Send + Sync + 'static,
    ) -> Policy {
        self.checks.push(Arc::new(check));
        self
    }

    pub(super) fn with_auth(mut self, auth: Option<Arc<Authenticator>>) -> Policy {
        self.auth = auth;
        self
    }

    fn check(
        &self,
        path: &str,
        mut parts: http::request::Parts,
    ) -> Result<http::request::Parts, Status> {
        let access = match &self.auth {
            None => Access::Open,
            Some(auth) => auth.authenticate(path, &parts)?,
        };
        parts.extensions.insert(access);
        if self.checks.is_empty() {
            return Ok(parts);
        }
        let (uri, method, version) = (parts.uri.clone(), parts.method.clone(), parts.version);
        let request = Request::from_http(http::Request::from_parts(parts, ()));
        for check in &self.checks {
            check(path, &request)?;
        }
        // Back to HTTP parts: the headers and extensions the request came with.
        let (metadata, extensions, ()) = request.into_parts();
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.uri = uri;
        parts.method = method;
        parts.version = version;
        parts.headers = metadata.into_headers();
        parts.extensions = extensions;
        Ok(parts)
    }
}

/// The layer that puts [`Policed`] in front of every service of the server.
#[derive(Clone)]
pub struct PolicyLayer {
    policy: Arc<Policy>,
    /// Largest request message accepted on any RPC.
    message_max_bytes: usize,
}

impl PolicyLayer {
    pub fn new(policy: Policy, message_max_bytes: usize) -> PolicyLayer {
        PolicyLayer {
            policy: Arc::new(policy),
            message_max_bytes,
        }
    }
}

impl<S> tower_layer::Layer<S> for PolicyLayer {
    type Service = Policed<S>;

    fn layer(&self, inner: S) -> Policed<S> {
        Policed {
            inner,
            policy: self.policy.clone(),
            message_max_bytes: self.message_max_bytes,
        }
    }
}

/// A service (the server's router) behind the policy.
#[derive(Clone)]
pub struct Policed<S> {
    inner: S,
    policy: Arc<Policy>,
    message_max_bytes: usize,
}

/// The one RPC whose oversized requests are answered one by one rather than refused.
const PUBLISH_STREAM_PATH: &str = "/herald.v1.Herald/PublishStream";

impl<S> Service<http::Request<Body>> for Policed<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let path = request.uri().path().to_owned();
        let (parts, body) = request.into_parts();
        let mut parts = match self.policy.check(&path, parts) {
            Ok(parts) => parts,
            Err(status) => return Box::pin(std::future::ready(Ok(status.into_http()))),
        };
        // Every request message is held to the size limit on its framing, before tonic
        // decodes it (see `request_limit`).
        let (body, oversized) =
            request_limit::limit(body, self.message_max_bytes, path == PUBLISH_STREAM_PATH);
        if let Some(oversized) = oversized {
            parts.extensions.insert(oversized);
        }
        Box::pin(self.inner.call(http::Request::from_parts(parts, body)))
    }
}
