//! Protected open mode. With no `[[clients]]` anyone who reaches the port uses the upstream
//! keys, so unless the config says that is meant (`server.open = true`, `--open`,
//! `TOLLGATE_SERVER__OPEN=true`) only loopback peers are served and any other peer gets a 403
//! saying how to configure client keys (Redis's "protected mode" is the model).
//!
//! An edge layer on `/v1/*`, deciding from the peer address (axum's `ConnectInfo`) and the live
//! config, so a reload that adds or removes clients takes effect at once. `/healthz`, `/readyz`
//! and `/metrics` are not behind it (probes and scrapers), nor is `/admin/*` (its own token). A
//! request with no peer address is served: it did not come through a socket (the app called
//! in-process), or `server::App` left the address off because this check would pass it (a
//! loopback peer, or open mode not protected when the request arrived).

use crate::reload::{Reloader, Runtime};
use axum::body::Body;
use axum::extract::ConnectInfo;
use futures_util::future::{ready, Either, Ready};
use http::{header, HeaderValue, Request, Response, StatusCode};
use openai_types::ErrorEnvelope;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// The error code of the refusal.
pub const CODE: &str = "open_mode_loopback_only";

const MESSAGE: &str = "This gateway has no client keys configured (open mode), so it serves \
only requests from its own machine (loopback). To use it from elsewhere, configure client keys: \
a [[clients]] entry with `key = \"${ENV_VAR}\"` or `key_sha256`, then send \
`Authorization: Bearer <client key>` (see the README, \"Client keys and rate limits\"). To serve \
everyone who can reach this port without a key, set server.open = true (or --open, or \
TOLLGATE_SERVER__OPEN=true).";

/// Whether `runtime` refuses peers other than loopback: open mode that was not opted into.
pub fn protects(runtime: &Runtime) -> bool {
    runtime.auth.is_open() && !runtime.settings.server.open
}

/// Says at start (and after a reload) which kind of open mode runs, if any.
pub fn warn_if_open(runtime: &Runtime) {
    if !runtime.auth.is_open() {
        return;
    }
    if runtime.settings.server.open {
        tracing::warn!("no [[clients]] configured and server.open = true: OPEN MODE, anyone who reaches this port can use the upstream keys");
    } else {
        tracing::warn!("no [[clients]] configured: open mode for loopback peers only, other peers get 403 (configure [[clients]], or set server.open = true to serve everyone)");
    }
}

/// Whether a peer may use an open-mode gateway that did not opt into serving everyone.
pub(crate) fn is_local(peer: Option<SocketAddr>) -> bool {
    match peer.map(|p| p.ip().to_canonical()) {
        Some(IpAddr::V4(ip)) => ip.is_loopback(),
        Some(IpAddr::V6(ip)) => ip.is_loopback(),
        None => true,
    }
}

/// The 403, in OpenAI's error shape.
fn refusal() -> Response<Body> {
    let envelope = ErrorEnvelope::new(MESSAGE, "invalid_request_error", None, Some(CODE));
    let mut resp = Response::new(Body::from(envelope.to_json()));
    *resp.status_mut() = StatusCode::FORBIDDEN;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

type Check = Arc<dyn Fn() -> bool + Send + Sync>;

/// Refuses peers other than loopback while the live config [`protects`] open mode.
#[derive(Clone)]
pub struct OpenModeLayer {
    protected: Check,
}

impl std::fmt::Debug for OpenModeLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenModeLayer").finish_non_exhaustive()
    }
}

impl OpenModeLayer {
    /// Reads the live config of `reloader` on each request from a peer other than loopback.
    pub fn new(reloader: Arc<Reloader>) -> Self {
        Self::with_check(move || protects(&reloader.current()))
    }

    /// Asks `protected` whether open mode is protected right now.
    pub fn with_check(protected: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        OpenModeLayer {
            protected: Arc::new(protected),
        }
    }

    /// Whether open mode is protected right now (a peer that is not loopback is refused).
    pub fn protected(&self) -> bool {
        (self.protected)()
    }
}

impl<S> Layer<S> for OpenModeLayer {
    type Service = OpenMode<S>;
    fn layer(&self, inner: S) -> OpenMode<S> {
        OpenMode {
            inner,
            protected: Arc::clone(&self.protected),
        }
    }
}

/// See [`OpenModeLayer`].
#[derive(Clone)]
pub struct OpenMode<S> {
    inner: S,
    protected: Check,
}

impl<S> std::fmt::Debug for OpenMode<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenMode").finish_non_exhaustive()
    }
}

impl<S, B> Service<Request<B>> for OpenMode<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response<Body>, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        // The config is read only for a peer that is not local: loopback traffic pays nothing.
        if !is_local(peer) && (self.protected)() {
            tracing::warn!(peer = ?peer, "open mode: refused a peer that is not loopback");
            return Either::Left(ready(Ok(refusal())));
        }
        Either::Right(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn request(peer: Option<&str>) -> Request<Body> {
        let mut req = Request::get("/v1/models").body(Body::empty()).unwrap();
        if let Some(p) = peer {
            req.extensions_mut()
                .insert(ConnectInfo::<SocketAddr>(p.parse().unwrap()));
        }
        req
    }

    async fn answer(protected: bool, peer: Option<&str>) -> (StatusCode, serde_json::Value) {
        let inner = tower::service_fn(|_req: Request<Body>| async {
            Ok::<_, std::convert::Infallible>(Response::new(Body::from("{}")))
        });
        let svc = OpenModeLayer::with_check(move || protected).layer(inner);
        let resp = svc.oneshot(request(peer)).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn protected_open_mode_refuses_a_peer_that_is_not_loopback() {
        let (status, body) = answer(true, Some("10.1.2.3:5000")).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let error = &body["error"];
        assert_eq!(error["type"], "invalid_request_error");
        assert_eq!(error["code"], CODE);
        assert!(error["param"].is_null());
        let message = error["message"].as_str().unwrap();
        for hint in ["[[clients]]", "key_sha256", "README", "server.open = true"] {
            assert!(message.contains(hint), "{hint} missing from {message}");
        }
        let (status, _) = answer(true, Some("[2001:db8::1]:443")).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }

    #[tokio::test]
    async fn protected_open_mode_serves_loopback_peers() {
        for peer in [
            "127.0.0.1:5000",
            "127.8.9.10:1",
            "[::1]:5000",
            "[::ffff:127.0.0.1]:5000",
        ] {
            assert_eq!(answer(true, Some(peer)).await.0, StatusCode::OK, "{peer}");
        }
        assert_eq!(answer(true, None).await.0, StatusCode::OK, "in-process");
    }

    #[tokio::test]
    async fn opted_in_open_mode_and_client_keys_serve_every_peer() {
        assert_eq!(answer(false, Some("10.1.2.3:5000")).await.0, StatusCode::OK);
    }

    /// The whole app in open mode (`server.open` as given), its upstream refusing connections.
    fn app(open: bool) -> crate::server::App {
        use crate::upstream::{Upstream, UpstreamError, UpstreamRequest, UpstreamResponse};
        use futures_util::future::BoxFuture;
        struct Down;
        impl Upstream for Down {
            fn send(
                &self,
                _: UpstreamRequest,
            ) -> BoxFuture<'static, Result<UpstreamResponse, UpstreamError>> {
                Box::pin(async { Err(UpstreamError::Connect("down".into())) })
            }
        }
        let toml = format!("[server]\nopen = {open}\n[retry]\nmax_attempts = 1\n[[providers]]\nname = \"p\"\nbase_url = \"http://p/v1\"\ndefault = true\nkeys = [{{ id = \"k\", secret = \"sk\" }}]\n");
        let settings = crate::config::Config::from_toml(&toml)
            .unwrap()
            .validate_with(&|_| None)
            .unwrap();
        let deps = crate::Deps {
            upstream: Arc::new(Down),
            metrics: crate::metrics::Metrics::new().unwrap(),
            seed: 1,
        };
        crate::build_app(Arc::new(settings), deps, None).0
    }

    async fn get(app: &crate::server::App, path: &str, peer: &str) -> Response<Body> {
        let mut req = Request::get(path).body(Body::empty()).unwrap();
        req.extensions_mut()
            .insert(ConnectInfo::<SocketAddr>(peer.parse().unwrap()));
        app.clone().oneshot(req).await.unwrap()
    }

    #[tokio::test]
    async fn the_app_refuses_remote_peers_on_v1_but_keeps_probes_and_metrics_reachable() {
        let app = app(false);
        let refused = get(&app, "/v1/chat/completions", "10.1.2.3:5000").await;
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert!(
            refused.headers().contains_key("x-request-id"),
            "inside the edge stack"
        );
        for path in ["/healthz", "/readyz", "/metrics"] {
            let status = get(&app, path, "10.1.2.3:5000").await.status();
            assert_ne!(status, StatusCode::FORBIDDEN, "{path}");
        }
        let local = get(&app, "/v1/chat/completions", "127.0.0.1:5000").await;
        assert_ne!(local.status(), StatusCode::FORBIDDEN);
        let opted_in = get(&self::app(true), "/v1/chat/completions", "10.1.2.3:5000").await;
        assert_ne!(opted_in.status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn a_mapped_address_that_is_not_loopback_is_not_local() {
        assert!(!is_local(Some("[::ffff:10.0.0.1]:1".parse().unwrap())));
        assert!(!is_local(Some("0.0.0.0:1".parse().unwrap())));
    }
}
