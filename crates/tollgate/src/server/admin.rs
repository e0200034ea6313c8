//! `/admin/*`: key health and bucket levels, the resolved config (secrets as `***`), and
//! reloads. Behind the admin token (constant-time compare); off, as 404, when none is set.

use super::AppState;
use crate::digest::{constant_time_eq, sha256};
use crate::error::GatewayError;
use axum::body::Body;
use axum::extract::State;
use axum::routing::{get, post};
use axum::Router;
use http::{header, HeaderValue, Request, Response, StatusCode};
use openai_types::ErrorEnvelope;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/keys", get(keys))
        .route("/admin/config", get(config))
        .route("/admin/reload", post(reload))
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// `None` when the caller may proceed; else the answer (404 when admin is off, 401 on a bad token).
fn check(state: &AppState, req: &Request<Body>) -> Option<Response<Body>> {
    let headers = req.headers();
    let runtime = state.reloader.current();
    let Some(expected) = runtime.settings.admin_token_sha256 else {
        return Some(
            GatewayError::NotFound {
                method: req.method().to_string(),
                path: req.uri().path().to_owned(),
            }
            .to_response(),
        );
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let digest = sha256(presented.as_bytes());
    let same = constant_time_eq(&expected, &digest);
    (!same || presented.is_empty()).then(|| {
        let envelope = ErrorEnvelope::new(
            "invalid admin token",
            "invalid_request_error",
            None,
            Some("invalid_api_key"),
        );
        json(StatusCode::UNAUTHORIZED, envelope.to_json())
    })
}

async fn keys(State(state): State<AppState>, req: Request<Body>) -> Response<Body> {
    if let Some(denied) = check(&state, &req) {
        return denied;
    }
    let runtime = state.reloader.current();
    let now = tokio::time::Instant::now();
    let limiter = state.reloader.limiter();
    let providers: Vec<serde_json::Value> = runtime
        .gateway
        .pools
        .iter()
        .map(|pool| {
            let keys: Vec<serde_json::Value> = pool
                .view(now)
                .into_iter()
                .enumerate()
                .map(|(i, view)| {
                    let (bucket, limits) = pool.bucket(i);
                    let levels = limiter.peek(bucket, limits);
                    serde_json::json!({
                        "id": view.id,
                        "state": view.state,
                        "remaining_ms": view.remaining_ms,
                        "inflight": view.inflight,
                        "rpm": limits.rpm,
                        "tpm": limits.tpm,
                        "requests_remaining": levels.and_then(|l| l.requests).map(|l| l.remaining),
                        "tokens_remaining": levels.and_then(|l| l.tokens).map(|l| l.remaining),
                    })
                })
                .collect();
            serde_json::json!({"provider": pool.provider(), "keys": keys})
        })
        .collect();
    json(
        StatusCode::OK,
        serde_json::to_vec(&serde_json::json!({ "providers": providers })).unwrap_or_default(),
    )
}

async fn config(State(state): State<AppState>, req: Request<Body>) -> Response<Body> {
    if let Some(denied) = check(&state, &req) {
        return denied;
    }
    let runtime = state.reloader.current();
    json(
        StatusCode::OK,
        serde_json::to_vec(&*runtime.settings).unwrap_or_default(),
    )
}

async fn reload(State(state): State<AppState>, req: Request<Body>) -> Response<Body> {
    if let Some(denied) = check(&state, &req) {
        return denied;
    }
    let reloader = state.reloader.clone();
    match tokio::task::spawn_blocking(move || reloader.reload("admin API")).await {
        Ok(Ok(())) => json(StatusCode::OK, br#"{"status":"reloaded"}"#.to_vec()),
        Ok(Err(e)) => {
            let envelope = ErrorEnvelope::new(
                format!(
                    "config refused, the previous one keeps serving: {}",
                    e.problems.join("; ")
                ),
                "invalid_request_error",
                None,
                Some("invalid_config"),
            );
            json(StatusCode::BAD_REQUEST, envelope.to_json())
        }
        Err(_) => GatewayError::Internal {
            request_id: "admin-reload".into(),
        }
        .to_response(),
    }
}
