//! The axum app: routes, the `/v1/*` proxy handler, health and metrics endpoints, listeners
//! and graceful shutdown.
//!
//! The `/v1/*` route runs behind the edge stack and calls the gateway stack, both assembled
//! in `crate::stack` (see ARCHITECTURE.md).

pub mod access;
mod admin;
mod form;
mod headers;
pub(crate) use headers::X_REQUEST_ID;
pub(crate) mod listen;
pub mod open;
mod path;
mod proxy;
pub(crate) mod workers;

use crate::error::GatewayError;
use crate::metrics::Metrics;
use axum::body::Body;
use axum::extract::State;
use axum::routing::{any, get};
use axum::Router;
use http::{header, HeaderValue, Request, Response, StatusCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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

/// The main router: `/v1/*`, health, and (unless they have their own listener) metrics and admin.
pub fn router(state: AppState, with_admin: bool) -> Router {
    let max_body = state.reloader.current().settings.server.max_body;
    let v1 = Router::new().route("/v1/{*path}", any(proxy::proxy));
    let open = open::OpenModeLayer::new(Arc::clone(&state.reloader));
    crate::stack::edge(v1, Arc::clone(&state.metrics), max_body, open)
        .route("/v1", any(not_found))
        .merge(ops_router(with_admin))
        .fallback(not_found)
        .with_state(state)
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
