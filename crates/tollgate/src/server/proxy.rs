//! The `/v1/*` handler: authenticate, parse once, take the client's buckets, dispatch, shape
//! the answer, count and log it.

use super::headers::{client_headers, upstream_headers};
use super::AppState;
use crate::auth::{Client, InflightGuard};
use crate::dispatch::{Answer, Served};
use crate::error::{set_retry_after, GatewayError};
use crate::metrics::status_class;
use crate::rate_limit::{estimate::estimate, Levels, Limits};
use crate::reload::Runtime;
use crate::request::{Endpoint, GatewayRequest};
use crate::units::format_go_duration;
use axum::body::Body;
use axum::extract::State;
use bytes::Bytes;
use futures_util::FutureExt;
use http::request::Parts;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use rand::Rng;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use tokio::time::Instant;

/// A request that failed before or during dispatch, with its model label.
type Failed = (GatewayError, String);

/// What the handler produced besides the answer: labels, the client's levels, its slot.
struct Served2 {
    answer: Answer,
    model_label: String,
    levels: Levels,
    slot: Option<InflightGuard>,
}

/// Handles every `/v1/*` request.
pub(super) async fn proxy(State(state): State<AppState>, req: Request<Body>) -> Response<Body> {
    let received = Instant::now();
    let request_id = request_id(req.headers());
    state.metrics.inflight.inc();
    let _inflight = scopeguard(&state.metrics.inflight);
    let path = req
        .uri()
        .path()
        .strip_prefix("/v1/")
        .unwrap_or_default()
        .to_owned();
    let endpoint = Endpoint::from_path(&path);
    let method = req.method().clone();
    let handled = AssertUnwindSafe(handle(&state, req, path.clone(), &request_id, received))
        .catch_unwind()
        .await;
    let (mut resp, model_label, served) = match handled {
        Ok(Ok(mut s)) => {
            let served = s.answer.served;
            let label = std::mem::take(&mut s.model_label);
            (respond(s), label, served)
        }
        Ok(Err((err, label))) => {
            tracing::debug!(request_id = %request_id, error = err.metric_label(), "request refused");
            (err.to_response(), label, Served::Failed)
        }
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
    let m = &state.metrics;
    m.requests
        .with_label_values(&[
            &model_label,
            endpoint.label(),
            status_class(status),
            served.label(),
        ])
        .inc();
    m.request_duration
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
        path = %path,
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

async fn handle(
    state: &AppState,
    req: Request<Body>,
    path: String,
    request_id: &str,
    received: Instant,
) -> Result<Served2, Failed> {
    let other = || "other".to_owned();
    // One runtime for the whole request, even if the config is reloaded meanwhile.
    let rt = state.reloader.current();
    let client = rt
        .auth
        .authenticate(req.headers())
        .map_err(|_| (GatewayError::Unauthorized, other()))?;
    let slot = match &client {
        Some(c) => Some(c.enter().ok_or_else(|| {
            (
                GatewayError::TooManyConcurrent {
                    limit: c.settings.max_concurrent.unwrap_or(0),
                },
                other(),
            )
        })?),
        None => None,
    };
    let settings = rt.dispatcher.settings();
    let (parts, body) = req.into_parts();
    let body = read_body(&parts, body, settings.server.max_body)
        .await
        .map_err(|e| (e, other()))?;
    let endpoint = Endpoint::from_path(&path);
    let meta = parse_meta(&parts, &body, endpoint).map_err(|e| (e, other()))?;
    if let (Some(c), Some(model)) = (&client, meta.model.as_deref()) {
        if !c.allows(model) {
            return Err((GatewayError::ModelNotAllowed(model.to_owned()), other()));
        }
    }
    if parts.method == Method::GET
        && (path == "models" || path.starts_with("models/"))
        && !settings.models.is_empty()
    {
        let answer = models_answer(&rt, &path, client.as_deref()).map_err(|e| (e, other()))?;
        return Ok(Served2 {
            answer,
            model_label: other(),
            levels: Levels::default(),
            slot,
        });
    }
    let mut gw = GatewayRequest {
        id: request_id.to_owned(),
        method: parts.method,
        query: parts.uri.query().map(str::to_owned),
        headers: upstream_headers(&parts.headers, request_id),
        path,
        body,
        model: meta.model,
        stream: meta.stream,
        endpoint,
        received,
        tokens: 0,
        client_bucket: None,
        strip_usage: false,
        include_usage: meta.include_usage,
        deadline: received + settings.server.request_timeout,
    };
    let label = rt.dispatcher.model_label(&gw).to_owned();
    let levels = take_client_buckets(state, &rt, client.as_ref(), &mut gw, meta.include_usage)
        .await
        .map_err(|e| (e, label.clone()))?;
    match rt.dispatcher.dispatch(&gw).await {
        Ok(answer) => Ok(Served2 {
            answer,
            model_label: label,
            levels,
            slot,
        }),
        Err(e) => Err((e, label)),
    }
}

/// The fields of the body the gateway routes on.
struct Meta {
    model: Option<String>,
    stream: bool,
    include_usage: bool,
}

fn parse_meta(parts: &Parts, body: &Bytes, endpoint: Endpoint) -> Result<Meta, GatewayError> {
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let is_json = content_type.map_or(!body.is_empty(), |ct| ct.starts_with("application/json"));
    let mut meta = Meta {
        model: None,
        stream: false,
        include_usage: false,
    };
    if is_json && !body.is_empty() && parts.method != Method::GET {
        let parsed: openai_types::RequestMeta<'_> =
            serde_json::from_slice(body).map_err(|e| GatewayError::InvalidJson(e.to_string()))?;
        meta.model = parsed.model.map(|m| m.into_owned());
        meta.stream = parsed.stream.unwrap_or(false);
        meta.include_usage = parsed
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
    }
    let needs_model = matches!(
        endpoint,
        Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Embeddings
    );
    if needs_model && parts.method == Method::POST && meta.model.is_none() {
        return Err(GatewayError::MissingModel);
    }
    Ok(meta)
}

async fn read_body(parts: &Parts, body: Body, max_body: usize) -> Result<Bytes, GatewayError> {
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max_body) {
        return Err(GatewayError::BodyTooLarge { limit: max_body });
    }
    match Limited::new(body, max_body).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(GatewayError::BodyTooLarge { limit: max_body })
        }
        Err(_) => Err(GatewayError::InvalidJson(
            "the request body could not be read".into(),
        )),
    }
}

/// Estimates the request's tokens when any TPM limit needs them, asks a stream for usage when
/// it must be reconciled, and takes the client's buckets.
async fn take_client_buckets(
    state: &AppState,
    rt: &Runtime,
    client: Option<&Arc<Client>>,
    gw: &mut GatewayRequest,
    client_asked_usage: bool,
) -> Result<Levels, GatewayError> {
    let limits = client.map_or_else(Limits::default, |c| Limits {
        rpm: c.settings.rpm,
        tpm: c.settings.tpm,
    });
    let tpm_somewhere = limits.tpm.is_some() || rt.dispatcher.keys_have_tpm();
    if tpm_somewhere {
        let default_max = rt.dispatcher.settings().limits.default_max_tokens;
        let (prompt, completion) = estimate(&gw.body, gw.endpoint, default_max);
        gw.tokens = prompt + completion;
        let streams_usage = matches!(
            gw.endpoint,
            Endpoint::ChatCompletions | Endpoint::Completions
        );
        if gw.stream && streams_usage && !client_asked_usage {
            if let Some(body) = crate::usage::with_include_usage(&gw.body) {
                gw.body = body;
                gw.strip_usage = true;
                gw.include_usage = true;
            }
        }
    }
    let Some(client) = client else {
        return Ok(Levels::default());
    };
    if limits.is_none() {
        return Ok(Levels::default());
    }
    match rt
        .dispatcher
        .limiter()
        .take(&client.bucket, limits, gw.tokens)
        .await
    {
        Ok(levels) => {
            gw.client_bucket = Some((Arc::clone(&client.bucket), limits));
            Ok(levels)
        }
        Err(refused) => {
            state
                .metrics
                .rate_limited
                .with_label_values(&["client", refused.dimension.label()])
                .inc();
            Err(GatewayError::ClientRateLimited {
                dimension: refused.dimension.label(),
                retry_after: refused.wait,
            })
        }
    }
}

fn respond(s: Served2) -> Response<Body> {
    let Served2 {
        answer,
        levels,
        slot,
        ..
    } = s;
    let body = match slot {
        // The client's concurrency slot is held until its body has been sent.
        Some(slot) => Body::new(Holding {
            body: answer.body,
            _slot: slot,
        }),
        None => answer.body,
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = answer.status;
    let mut headers = answer.headers;
    client_headers(&mut headers);
    let status = answer.status.as_u16();
    if answer.served == Served::Failed && !matches!(status, 408 | 409 | 429 | 500..=599) {
        headers.insert("x-should-retry", HeaderValue::from_static("false"));
    }
    if matches!(status, 429 | 503) {
        // Both forms, so every SDK reads the same wait: derive the missing one.
        let secs = headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
        let ms = headers
            .get("retry-after-ms")
            .and_then(|v| v.to_str().ok()?.trim().parse::<f64>().ok());
        match (secs, ms) {
            (_, Some(ms)) if !headers.contains_key(header::RETRY_AFTER) => set_retry_after(
                &mut headers,
                std::time::Duration::from_millis(ms.max(0.0) as u64),
            ),
            (Some(secs), None) => {
                set_retry_after(&mut headers, std::time::Duration::from_secs(secs))
            }
            (None, None) if !headers.contains_key(header::RETRY_AFTER) => {
                set_retry_after(&mut headers, std::time::Duration::from_secs(1))
            }
            _ => {}
        }
    }
    if levels != Levels::default() {
        ratelimit_headers(&mut headers, &levels);
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

/// The client's own limits in OpenAI's header format (replacing the upstream key's).
fn ratelimit_headers(headers: &mut HeaderMap, levels: &Levels) {
    // [limit, remaining, reset] names per dimension, built once: this runs on every answer.
    const NAMES: [[HeaderName; 3]; 2] = [
        [
            HeaderName::from_static("x-ratelimit-limit-requests"),
            HeaderName::from_static("x-ratelimit-remaining-requests"),
            HeaderName::from_static("x-ratelimit-reset-requests"),
        ],
        [
            HeaderName::from_static("x-ratelimit-limit-tokens"),
            HeaderName::from_static("x-ratelimit-remaining-tokens"),
            HeaderName::from_static("x-ratelimit-reset-tokens"),
        ],
    ];
    for (names, level) in NAMES.iter().zip([levels.requests, levels.tokens]) {
        for name in names {
            headers.remove(name);
        }
        let Some(level) = level else { continue };
        let [limit, remaining, reset] = names;
        headers.insert(limit.clone(), HeaderValue::from(level.limit));
        headers.insert(remaining.clone(), HeaderValue::from(level.remaining));
        if let Ok(v) = HeaderValue::try_from(format_go_duration(level.reset)) {
            headers.insert(reset.clone(), v);
        }
    }
}

fn models_answer(
    rt: &Runtime,
    path: &str,
    client: Option<&Client>,
) -> Result<Answer, GatewayError> {
    let settings = rt.dispatcher.settings();
    let visible = |name: &str| client.is_none_or(|c| c.allows(name));
    let model = |name: &str| serde_json::json!({"id": name, "object": "model", "created": 0, "owned_by": "tollgate"});
    let body = match path.strip_prefix("models/") {
        None => {
            let data: Vec<_> = settings
                .models
                .iter()
                .filter(|m| visible(&m.name))
                .map(|m| model(&m.name))
                .collect();
            serde_json::json!({"object": "list", "data": data})
        }
        Some(name) if settings.model(name).is_some() && visible(name) => model(name),
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

pin_project_lite::pin_project! {
    /// A body that keeps the client's concurrency slot until it has been sent or dropped.
    struct Holding {
        #[pin]
        body: Body,
        _slot: InflightGuard,
    }
}

impl http_body::Body for Holding {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Takes the client's `x-request-id` when it is short and printable, else makes one.
fn request_id(headers: &HeaderMap) -> String {
    if let Some(id) = headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
        if !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()) {
            return id.to_owned();
        }
    }
    let mut rng = rand::rng();
    format!(
        "req_{:016x}{:08x}",
        rng.random::<u64>(),
        rng.random::<u32>()
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
