//! The `/v1/*` handler: parse once, dispatch, shape the answer, count and log it.

use super::headers::{client_headers, upstream_headers};
use super::AppState;
use crate::dispatch::{Answer, Served};
use crate::error::{set_retry_after, GatewayError};
use crate::metrics::status_class;
use crate::request::{Endpoint, GatewayRequest};
use axum::body::Body;
use axum::extract::State;
use futures_util::FutureExt;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use rand::Rng;
use std::panic::AssertUnwindSafe;
use tokio::time::Instant;

/// Handles every `/v1/*` request.
pub(super) async fn proxy(State(state): State<AppState>, req: Request<Body>) -> Response<Body> {
    let received = Instant::now();
    let request_id = request_id(req.headers());
    state.metrics.inflight.inc();
    let _inflight = scopeguard(&state.metrics.inflight);
    let endpoint_path = req
        .uri()
        .path()
        .strip_prefix("/v1/")
        .unwrap_or_default()
        .to_owned();
    let endpoint = Endpoint::from_path(&endpoint_path);
    let method = req.method().clone();
    let handled = AssertUnwindSafe(handle(&state, req, &request_id, received))
        .catch_unwind()
        .await;
    let (mut resp, model_label, served) = match handled {
        Ok(Ok((answer, model_label))) => {
            let served = answer.served;
            (answer_response(answer), model_label, served)
        }
        Ok(Err((err, model_label))) => (err.to_response(), model_label, Served::Failed),
        Err(_) => {
            tracing::error!(request_id = %request_id, "handler panicked");
            (
                GatewayError::Internal {
                    request_id: request_id.clone(),
                }
                .to_response(),
                "other".to_owned(),
                Served::Failed,
            )
        }
    };
    if let Ok(v) = HeaderValue::try_from(request_id.as_str()) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let status = resp.status().as_u16();
    let served = if status >= 400 {
        Served::Failed
    } else {
        served
    };
    let elapsed = received.elapsed();
    state
        .metrics
        .requests
        .with_label_values(&[
            &model_label,
            endpoint.label(),
            status_class(status),
            served.label(),
        ])
        .inc();
    state
        .metrics
        .request_duration
        .with_label_values(&[endpoint.label()])
        .observe(elapsed.as_secs_f64());
    let h = resp.headers();
    let text = |name: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    };
    tracing::info!(
        request_id = %request_id,
        method = %method,
        path = %endpoint_path,
        model = %model_label,
        status,
        latency_ms = elapsed.as_secs_f64() * 1000.0,
        provider = %text("x-tollgate-provider"),
        key = %text("x-tollgate-key"),
        attempts = %text("x-tollgate-attempts"),
        "request"
    );
    resp
}

type Handled = Result<(Answer, String), (GatewayError, String)>;

async fn handle(
    state: &AppState,
    req: Request<Body>,
    request_id: &str,
    received: Instant,
) -> Handled {
    let settings = state.dispatcher.settings();
    let max_body = settings.server.max_body;
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max_body) {
        return Err((
            GatewayError::BodyTooLarge { limit: max_body },
            "other".to_owned(),
        ));
    }
    let body = match Limited::new(body, max_body).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return Err((
                GatewayError::BodyTooLarge { limit: max_body },
                "other".to_owned(),
            ))
        }
        Err(e) => {
            tracing::debug!(request_id, error = %e, "client body read failed");
            return Err((
                GatewayError::InvalidJson("the request body could not be read".into()),
                "other".to_owned(),
            ));
        }
    };
    let path = parts
        .uri
        .path()
        .strip_prefix("/v1/")
        .unwrap_or_default()
        .to_owned();
    let endpoint = Endpoint::from_path(&path);
    let is_json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map_or(!body.is_empty(), |ct| ct.starts_with("application/json"));
    let (model, stream) = if is_json && !body.is_empty() && parts.method != Method::GET {
        let meta: openai_types::RequestMeta<'_> = serde_json::from_slice(&body)
            .map_err(|e| (GatewayError::InvalidJson(e.to_string()), "other".to_owned()))?;
        (
            meta.model.map(|m| m.into_owned()),
            meta.stream.unwrap_or(false),
        )
    } else {
        (None, false)
    };
    let needs_model = matches!(
        endpoint,
        Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Embeddings
    );
    if needs_model && parts.method == Method::POST && model.is_none() {
        return Err((GatewayError::MissingModel, "other".to_owned()));
    }
    if parts.method == Method::GET
        && (path == "models" || path.starts_with("models/"))
        && !settings.models.is_empty()
    {
        return models_answer(state, &path)
            .map(|a| (a, "other".to_owned()))
            .map_err(|e| (e, "other".to_owned()));
    }
    let gw = GatewayRequest {
        id: request_id.to_owned(),
        method: parts.method,
        query: parts.uri.query().map(str::to_owned),
        headers: upstream_headers(&parts.headers, request_id),
        path,
        body,
        model,
        stream,
        endpoint,
        received,
        deadline: received + settings.server.request_timeout,
    };
    let label = state.dispatcher.model_label(&gw).to_owned();
    match state.dispatcher.dispatch(&gw).await {
        Ok(answer) => Ok((answer, label)),
        Err(e) => Err((e, label)),
    }
}

fn answer_response(answer: Answer) -> Response<Body> {
    let mut resp = Response::new(answer.body);
    *resp.status_mut() = answer.status;
    let mut headers = answer.headers;
    client_headers(&mut headers);
    let status = answer.status.as_u16();
    if answer.served == Served::Failed && !matches!(status, 408 | 409 | 429 | 500..=599) {
        headers.insert("x-should-retry", HeaderValue::from_static("false"));
    }
    if matches!(status, 429 | 503) && !headers.contains_key(header::RETRY_AFTER) {
        set_retry_after(&mut headers, std::time::Duration::from_secs(1));
    }
    headers.insert("x-tollgate-attempts", HeaderValue::from(answer.attempts));
    if let Ok(v) = HeaderValue::try_from(answer.provider) {
        headers.insert("x-tollgate-provider", v);
    }
    if let Ok(v) = HeaderValue::try_from(answer.key) {
        headers.insert("x-tollgate-key", v);
    }
    *resp.headers_mut() = headers;
    resp
}

fn models_answer(state: &AppState, path: &str) -> Result<Answer, GatewayError> {
    let settings = state.dispatcher.settings();
    let model = |name: &str| serde_json::json!({"id": name, "object": "model", "created": 0, "owned_by": "tollgate"});
    let body = match path.strip_prefix("models/") {
        None => {
            serde_json::json!({"object": "list", "data": settings.models.iter().map(|m| model(&m.name)).collect::<Vec<_>>()})
        }
        Some(name) if settings.model(name).is_some() => model(name),
        Some(name) => return Err(GatewayError::ModelNotFound(name.to_owned())),
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(Answer {
        status: StatusCode::OK,
        headers,
        body: Body::from(body.to_string()),
        provider: "tollgate".into(),
        key: "-".into(),
        attempts: 0,
        served: Served::FirstTry,
    })
}

/// Takes the client's `x-request-id` when it is short and printable, else makes one.
fn request_id(headers: &HeaderMap) -> String {
    if let Some(id) = headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
        if !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()) {
            return id.to_owned();
        }
    }
    format!(
        "req_{:016x}{:08x}",
        rand::rng().random::<u64>(),
        rand::rng().random::<u32>()
    )
}

/// Decrements a gauge when dropped (also when the client goes away mid-request).
fn scopeguard(gauge: &prometheus::IntGauge) -> impl Drop + '_ {
    struct Dec<'a>(&'a prometheus::IntGauge);
    impl Drop for Dec<'_> {
        fn drop(&mut self) {
            self.0.dec();
        }
    }
    Dec(gauge)
}
