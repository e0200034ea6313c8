//! The axum app: routes, the `/v1/*` proxy handler, health and metrics endpoints, listeners
//! and graceful shutdown.
//!
//! The `/v1/*` route runs behind the edge stack and calls the gateway stack, both assembled
//! in `crate::stack` (see ARCHITECTURE.md).

pub mod access;
mod admin;
mod form;
mod graceful;
mod headers;
pub(crate) use headers::{request_id, X_REQUEST_ID};
pub(crate) mod listen;
pub mod open;
mod path;
mod proxy;
pub(crate) mod workers;

use crate::error::GatewayError;
use crate::metrics::Metrics;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::routing::{any, get};
use axum::Router;
use http::{header, HeaderValue, Request, Response, StatusCode};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tower_http::body::Limited;

/// Shared state of the handlers.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The live config and what runs on it.
    pub reloader: Arc<crate::reload::Reloader>,
    /// Metrics (behind an `Arc`: axum clones the state for every request).
    pub metrics: Arc<Metrics>,
    /// Set once listeners are up, cleared on shutdown.
    pub ready: Arc<AtomicBool>,
}

/// The main listener's app: `/v1/*` (the edge stack around the handler), health, and (unless
/// they have their own listener) metrics and admin.
pub fn router(state: AppState, with_admin: bool) -> App {
    let max_body = state.reloader.current().settings.server.max_body;
    let open = open::OpenModeLayer::new(Arc::clone(&state.reloader));
    let (reloader, metrics) = (Arc::clone(&state.reloader), Arc::clone(&state.metrics));
    let edge_open = open.clone();
    // Each worker thread makes its own edge stack (see `SharedService::per_thread`).
    let v1 = crate::stack::SharedService::per_thread(move || {
        let reloader = Arc::clone(&reloader);
        let handler = tower::service_fn(move |req: Request<Limited<Body>>| {
            use futures_util::FutureExt;
            // One runtime for the whole request, even if the config is reloaded meanwhile.
            // The handler's future itself, not an async block around it (which would hold
            // the request once more in a future the edge moves whole).
            proxy::proxy(reloader.local(), req).map(Ok::<_, Infallible>)
        });
        crate::stack::edge(handler, Arc::clone(&metrics), max_body, edge_open.clone())
    });
    let rest = Router::new()
        .route("/v1", any(not_found))
        .merge(ops_router(with_admin))
        .fallback(not_found)
        .with_state(state);
    App {
        v1,
        rest,
        open,
        peer: None,
    }
}

/// The main listener's service. A `/v1/…` request goes straight to the edge stack; anything
/// else to axum's router. The router is not on the proxy's path because of what it costs a
/// request there: its route lookup, the path parameters it stores in the request's
/// extensions, and two boxed service clones and two boxed futures for a route with layers.
#[derive(Clone)]
pub struct App {
    /// The edge stack around the `/v1/*` handler (`crate::stack::edge`).
    v1: crate::stack::SharedService<Request<Body>, Response<Body>, Infallible>,
    /// `/v1` itself, health, metrics, admin, and the 404 of everything else.
    rest: Router,
    /// Open mode's check, for the peer below.
    open: open::OpenModeLayer,
    /// The connection's peer (see [`App::for_peer`]).
    peer: Option<SocketAddr>,
}

impl App {
    /// The app of one connection from `peer`.
    pub(crate) fn for_peer(&self, peer: SocketAddr) -> App {
        let mut app = self.clone();
        app.peer = Some(peer);
        app
    }
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").finish_non_exhaustive()
    }
}

/// What the app answers with: the edge stack's future or the router's.
pub type AppFuture = futures_util::future::Either<
    futures_util::future::BoxFuture<'static, Result<Response<Body>, Infallible>>,
    axum::routing::future::RouteFuture<Infallible>,
>;

/// Whether `path` is served by the `/v1/*` handler: `/v1/` and at least one more byte.
fn is_v1(path: &str) -> bool {
    path.len() > "/v1/".len() && path.starts_with("/v1/")
}

impl<B> tower::Service<Request<B>> for App
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = AppFuture;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        // Both are always ready: the edge stack readies its copy at each call, the router
        // each route's.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.route(req)
    }
}

/// The app as hyper calls it, by reference: a request clones nothing of it (a clone would
/// write counts that every worker thread shares).
impl hyper::service::Service<Request<hyper::body::Incoming>> for App {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = <App as tower::Service<Request<hyper::body::Incoming>>>::Future;

    fn call(&self, req: Request<hyper::body::Incoming>) -> Self::Future {
        self.route(req)
    }
}

impl App {
    /// A `/v1/…` request to the edge stack, anything else to the router.
    fn route<B>(&self, req: Request<B>) -> AppFuture
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        use futures_util::future::Either;
        let mut req = req;
        match is_v1(req.uri().path()) {
            true => {
                // The peer reaches open mode's check (`OpenModeLayer`, which takes a request
                // without one for local) only when that check would refuse it: not loopback,
                // and open mode protected by the config as the request arrives. Every other
                // request skips the extension (a map, its table and a box).
                let remote = self.peer.filter(|p| !open::is_local(Some(*p)));
                if let Some(peer) = remote.filter(|_| self.open.protected()) {
                    req.extensions_mut().insert(ConnectInfo(peer));
                }
                Either::Left(self.v1.call_ref(req.map(Body::new)))
            }
            false => {
                if let Some(peer) = self.peer {
                    req.extensions_mut().insert(ConnectInfo(peer));
                }
                Either::Right(tower::Service::call(&mut self.rest.clone(), req))
            }
        }
    }
}

/// Health routes, plus metrics and `/admin/*` when `with_admin` (served alone on `server.admin_listen`).
pub fn ops_router(with_admin: bool) -> Router<AppState> {
    let health = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    if !with_admin {
        return health;
    }
    health
        .route("/metrics", get(metrics))
        .merge(admin::router())
}

async fn healthz() -> Response<Body> {
    json_response(StatusCode::OK, r#"{"status":"ok"}"#)
}

async fn readyz(State(state): State<AppState>) -> Response<Body> {
    if state.ready.load(Ordering::Relaxed) {
        json_response(StatusCode::OK, r#"{"status":"ready"}"#)
    } else {
        json_response(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"not ready"}"#)
    }
}

async fn metrics(State(state): State<AppState>) -> Response<Body> {
    let mut resp = Response::new(Body::from(state.metrics.render()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}

async fn not_found(req: Request<Body>) -> Response<Body> {
    GatewayError::NotFound {
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
    }
    .to_response()
}

fn json_response(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// `tollgate healthcheck`: a GET over plain HTTP/1.1 that succeeds on a 200 (no TLS, no client crate).
pub async fn probe(url: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let attempt = async {
        let mut conn = tokio::net::TcpStream::connect(authority).await.ok()?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        conn.read_exact(&mut head).await.ok()?;
        Some(head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200"))
    };
    tokio::time::timeout(std::time::Duration::from_secs(3), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

#[cfg(test)]
mod tests;
