//! The `/v1/*` handler: reads the body once into a [`GatewayRequest`], calls the live gateway
//! stack (see `crate::stack`), shapes the answer's headers and leaves an [`AnswerRecord`] on it
//! for the access layer. Request ids, spans, panics, the body limit, metrics and the access log
//! are the edge stack's.

use super::access::AnswerRecord;
use super::headers::{client_headers, upstream_headers};
use crate::error::{set_retry_after, GatewayError};
use crate::reload::{Local, Runtime};
use crate::request::{Answer, Endpoint, GatewayRequest, Served};
use axum::body::Body;
use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderName, HeaderValue, Method, Request, Response};
use http_body_util::BodyExt;
use std::sync::Arc;
use tokio::time::Instant;

/// The request body as the edge hands it over: the client's bytes under the edge's limit, not
/// boxed again.
pub(super) type EdgeBody = tower_http::body::Limited<Body>;

/// Handles every `/v1/*` request. One async fn for what was three nested ones: each level
/// kept the request twice (as its argument and as a local), in a future the edge moves whole.
pub(super) async fn proxy(local: Arc<Local>, req: Request<EdgeBody>) -> Response<Body> {
    // Traces on: a client that leaves before the answer's head is the request span's outcome.
    let mut left = crate::telemetry::enabled().then(|| Cancelled(Some(tracing::Span::current())));
    // Anthropic's clients read errors in Anthropic's shape.
    let messages = req.uri().path().starts_with("/v1/messages");
    let mut resp = answer(local, req).await;
    if messages && (resp.status().is_client_error() || resp.status().is_server_error()) {
        resp = messages_error(resp).await;
    }
    if let Some(left) = left.as_mut() {
        let span = left.0.take();
        trace_answer(&mut resp, span);
    }
    resp
}

/// Marks the request span `client_cancelled` when dropped armed (the handler's future dropped
/// because the client went away).
struct Cancelled(Option<tracing::Span>);

impl Drop for Cancelled {
    fn drop(&mut self) {
        if let Some(span) = self.0.take() {
            span.record("tollgate.outcome", "client_cancelled");
            span.record("http.response.status_code", 499);
        }
    }
}

/// An error answer to a Messages client: Anthropic's envelope and statuses (`529` for no
/// capacity), the headers (`retry-after`, the gateway's) and the record kept.
async fn messages_error(resp: Response<Body>) -> Response<Body> {
    use crate::provider::messages;
    let (mut parts, body) = resp.into_parts();
    // Error bodies are the gateway's or an upstream's, read whole already (and bounded).
    let bytes = http_body_util::Limited::new(body, 1 << 20)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let status = messages::status(parts.status.as_u16());
    parts.status = http::StatusCode::from_u16(status).unwrap_or(parts.status);
    if status == 529 && !parts.headers.contains_key(header::RETRY_AFTER) {
        // A short hint, as on a 503, keeps the client's retries from hammering.
        set_retry_after(&mut parts.headers, std::time::Duration::from_secs(1));
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(messages::error_body(status, &bytes)))
}

async fn answer(rt: Arc<Local>, req: Request<EdgeBody>) -> Response<Body> {
    let received = Instant::now();
    // The client key is checked from the headers first: a request without a valid key is
    // answered before a byte of its body is read.
    let client = match rt
        .auth
        .authenticate_key(crate::auth::presented_key(req.headers()))
    {
        Ok(client) => client,
        Err(_) => return failed(GatewayError::Unauthorized, "other"),
    };
    let mut gw = match parse(&rt, req, received, client.as_deref()).await {
        Ok(gw) => gw,
        Err(e) => return failed(e, "other"),
    };
    gw.client = client;
    let model = gw
        .model_index
        .map_or("other", |i| rt.settings.models[i].name.as_str());
    if crate::telemetry::enabled() {
        crate::telemetry::spans::requested(&tracing::Span::current(), gw.model.as_deref());
    }
    match rt.gateway.service.call_ref(gw).await {
        Ok(answer) => respond(answer, model),
        Err(e) => failed(e, model),
    }
}

/// Puts the answer on the request span (traces on only).
fn trace_answer(resp: &mut Response<Body>, span: Option<tracing::Span>) {
    let status = resp.status().as_u16();
    if let Some(r) = resp.extensions_mut().get_mut::<AnswerRecord>() {
        let span = span.unwrap_or_else(tracing::Span::current);
        crate::telemetry::spans::answered(&span, status, &r.provider, &r.key, r.attempts);
        // The access layer records the outcome when the body has gone out or the client left.
        r.span = Some(span);
    }
}

/// The gateway's own error, with its record.
fn failed(e: GatewayError, model: &str) -> Response<Body> {
    tracing::debug!(error = e.metric_label(), "request refused");
    let mut resp = e.to_response();
    resp.extensions_mut().insert(AnswerRecord {
        model: model.to_owned(),
        provider: "-".into(),
        key: "-".into(),
        attempts: 0,
        served: Served::Failed,
        span: None,
        hold: None,
    });
    resp
}

/// Whether a request asks to switch to WebSocket (`Upgrade: websocket`, any case).
fn is_websocket_upgrade(headers: &http::HeaderMap) -> bool {
    headers.get_all(header::UPGRADE).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| super::headers::lists(v, "websocket"))
    })
}

/// Reads the body (the edge's body limit applies) and the fields the gateway routes on.
async fn parse(
    rt: &Runtime,
    req: Request<EdgeBody>,
    received: Instant,
    client: Option<&crate::auth::Client>,
) -> Result<GatewayRequest, GatewayError> {
    let settings = &rt.settings;
    let (parts, body) = req.into_parts();
    if let Some(why) = super::path::refusal(parts.uri.path()) {
        // Refused before anything else: never forwarded with an upstream key.
        return Err(GatewayError::InvalidPath(why));
    }
    if is_websocket_upgrade(&parts.headers) {
        // Codex tries a WebSocket first; a 426 sends it to HTTP at once (a 404 or a relayed
        // GET costs it several reconnects at every start).
        return Err(GatewayError::UpgradeRequired);
    }
    let path = parts
        .uri
        .path()
        .strip_prefix("/v1/")
        .unwrap_or_default()
        .to_owned();
    // A client's own body limit is below the edge's (which applies to everyone).
    let max_body = client
        .and_then(|c| c.settings.max_body)
        .unwrap_or(settings.server.max_body);
    let body = read_body(body, &parts.headers, max_body, settings.server.max_body).await?;
    let endpoint = Endpoint::from_path(&path);
    let meta = parse_meta(&parts, &body, endpoint, settings.retry.sticky_user).await?;
    let affinity = match settings.retry.sticky_sessions {
        true => meta.session.or_else(|| session_header(&parts.headers)),
        false => None,
    };
    let id_value = super::headers::request_id(&parts.extensions, &parts.headers);
    let request_id: Arc<str> = id_value
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .into();
    let model_index = meta.model.as_deref().and_then(|m| settings.model_index(m));
    let is_post = parts.method == Method::POST;
    // Stored by default on the Responses API, on request for chat completions.
    let stores = is_post
        && match path.as_str() {
            "responses" => meta.store != Some(false),
            "chat/completions" => meta.store == Some(true),
            _ => false,
        };
    let features = client
        .map(|c| c.settings.forward_headers)
        .unwrap_or_default();
    Ok(GatewayRequest {
        headers: upstream_headers(&parts.headers, id_value, &path, features),
        // The key was checked from these headers already (`answer`): the client travels in
        // `client` (set by the caller), and in open mode no key is read. The client-auth
        // layer reads a credential only for requests built without that check.
        credential: None,
        id: request_id,
        method: parts.method,
        query: parts.uri.query().map(str::to_owned),
        path,
        body,
        model: meta.model,
        model_span: meta.model_span,
        counted: meta.counted,
        names_objects: meta.names_objects,
        client_take: None,
        model_index,
        stream: meta.stream,
        endpoint,
        received,
        client: None,
        tokens: 0,
        client_bucket: None,
        strip_usage: false,
        include_usage: meta.include_usage,
        deadline: received + settings.server.request_timeout,
        affinity,
        object: meta.previous_response,
        object_key: None,
        stores,
        records: stores,
    })
}

/// The fields of the body the gateway routes on (none of them, by default).
#[derive(Default)]
struct Meta {
    model: Option<String>,
    /// Where `model`'s value is in the body.
    model_span: Option<std::ops::Range<usize>>,
    /// The estimate's count of the body, when the one reading took it.
    counted: Option<crate::rate_limit::estimate::Counted>,
    stream: bool,
    include_usage: bool,
    /// The session named by the body (`prompt_cache_key`, else `user` when it counts), hashed.
    session: Option<u64>,
    /// `previous_response_id`.
    previous_response: Option<Box<str>>,
    /// `store`, when it is a boolean.
    store: Option<bool>,
    /// Whether an object in the body has a member naming a stored object (`None`: not known).
    names_objects: Option<bool>,
}

/// The routing fields of a body, from whichever reading took it.
/// Values are JSON text.
struct Routing<'a> {
    model: Option<&'a str>,
    stream: Option<bool>,
    include_usage: Option<bool>,
    prompt_cache_key: Option<&'a str>,
    user: Option<&'a str>,
    previous_response_id: Option<&'a str>,
    store: Option<&'a str>,
    metadata: Option<&'a str>,
}

impl<'a> Routing<'a> {
    fn of_fields(f: crate::body::Fields<'a>) -> Self {
        let text = |raw: Option<crate::body::Raw<'a>>| raw.map(crate::body::Raw::get);
        Routing {
            model: text(f.model),
            stream: f.stream,
            include_usage: f.stream_options.and_then(|o| o.include_usage),
            prompt_cache_key: text(f.prompt_cache_key),
            user: text(f.user),
            previous_response_id: text(f.previous_response_id),
            store: text(f.store),
            metadata: text(f.metadata),
        }
    }

    fn of_meta(m: openai_types::RequestMeta<'a>) -> Self {
        let text = |raw: Option<&'a serde_json::value::RawValue>| raw.map(|r| r.get());
        Routing {
            model: text(m.model),
            stream: m.stream,
            include_usage: m.stream_options.and_then(|o| o.include_usage),
            prompt_cache_key: text(m.prompt_cache_key),
            user: text(m.user),
            previous_response_id: text(m.previous_response_id),
            store: text(m.store),
            metadata: None,
        }
    }
}

/// The session a client names in a header (Codex sends `session-id`; Claude Code
/// `x-claude-code-session-id`), hashed.
fn session_header(headers: &http::HeaderMap) -> Option<u64> {
    // One pass over the request's few headers (three hashed lookups cost more).
    headers
        .iter()
        .find(|(name, _)| {
            matches!(
                name.as_str(),
                "session-id" | "session_id" | "x-claude-code-session-id"
            )
        })
        .map(|(_, v)| crate::key_pool::affinity(v.as_bytes()))
}

/// The session a Messages body's `metadata.user_id` names (Claude Code's: a JSON document with a
/// `session_id`, or `user_…_session_<id>` in older versions), hashed.
fn metadata_session(metadata: &str) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Metadata {
        user_id: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct UserId {
        session_id: Option<String>,
    }
    let user = serde_json::from_str::<Metadata>(metadata).ok()?.user_id?;
    let session = match serde_json::from_str::<UserId>(&user) {
        Ok(id) => id.session_id?,
        Err(_) => user.rsplit_once("_session_")?.1.to_owned(),
    };
    (!session.is_empty()).then(|| crate::key_pool::affinity(session.as_bytes()))
}

/// The fields the gateway routes on, from every body that names them: JSON whatever its media
/// type says (compared case-insensitively; `text/plain` and `+json` included), and the `model`
/// of a multipart form.
async fn parse_meta(
    parts: &Parts,
    body: &Bytes,
    endpoint: Endpoint,
    sticky_user: bool,
) -> Result<Meta, GatewayError> {
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    // Media types compare case-insensitively (compared in place: no copy per request).
    let media = content_type.unwrap_or_default().as_bytes();
    let starts = |prefix: &[u8]| {
        media
            .get(..prefix.len())
            .is_some_and(|m| m.eq_ignore_ascii_case(prefix))
    };
    let is_form = starts(b"multipart/form-data");
    let looks_json = body.trim_ascii_start().first() == Some(&b'{');
    let says_json =
        starts(b"application/json") || media.windows(5).any(|w| w.eq_ignore_ascii_case(b"+json"));
    let is_json = !is_form && (says_json || looks_json || content_type.is_none());
    let mut meta = Meta::default();
    if is_json && !body.is_empty() && parts.method != Method::GET {
        // One pass reads the routing fields and counts the estimate; a body that shape
        // refuses is read for the routing fields alone (and counted leniently when needed).
        let tally = crate::rate_limit::estimate::tally(endpoint);
        let read = crate::body::read(body, &crate::ownership::REFERENCES, tally);
        let (parsed, counted) = match read {
            Ok(reading) => {
                let f = reading.fields;
                meta.names_objects = reading.names;
                let counted =
                    crate::rate_limit::estimate::count(&f, body.len(), endpoint, reading.counts);
                (Routing::of_fields(f), Some(counted))
            }
            Err(_) => {
                let m: openai_types::RequestMeta<'_> = serde_json::from_slice(body)
                    .map_err(|e| GatewayError::InvalidJson(e.to_string()))?;
                (Routing::of_meta(m), None)
            }
        };
        meta.counted = counted;
        meta.model = parsed
            .model
            .map(serde_json::from_str::<String>)
            .transpose()
            .map_err(|e| GatewayError::InvalidJson(format!("`model`: {e}")))?;
        meta.model_span = parsed.model.map(|raw| crate::request::span_in(body, raw));
        meta.stream = parsed.stream.unwrap_or(false);
        meta.include_usage = parsed.include_usage.unwrap_or(false);
        let user = parsed.user.filter(|_| sticky_user);
        meta.session = parsed
            .prompt_cache_key
            .or(user)
            .filter(|v| !matches!(*v, "null" | "\"\""))
            .map(|v| crate::key_pool::affinity(v.as_bytes()))
            .or_else(|| parsed.metadata.and_then(metadata_session));
        meta.previous_response = parsed
            .previous_response_id
            .and_then(|v| serde_json::from_str::<String>(v).ok())
            .filter(|id| !id.is_empty())
            .map(String::into_boxed_str);
        meta.store = parsed.store.and_then(|v| match v {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        });
    }
    if is_form && parts.method == Method::POST {
        // The boundary is case-sensitive: the header as sent.
        let form_type = content_type.unwrap_or_default();
        // Boxed: the form reader's state stays out of every request's future.
        meta.model = Box::pin(super::form::model(form_type, body))
            .await
            .map_err(|why| {
                GatewayError::InvalidJson(format!("unreadable multipart form: {why}"))
            })?;
    }
    let is_audio_upload = endpoint == Endpoint::Audio
        && (parts.uri.path().ends_with("/transcriptions")
            || parts.uri.path().ends_with("/translations"));
    // The endpoints that make something from a model (not `chat/completions/{id}`, which
    // updates a stored completion, nor `responses/{id}/cancel`).
    let needs_model = is_audio_upload
        || matches!(
            parts.uri.path(),
            "/v1/responses"
                | "/v1/chat/completions"
                | "/v1/completions"
                | "/v1/embeddings"
                | "/v1/messages"
                | "/v1/messages/count_tokens"
        );
    if needs_model && parts.method == Method::POST && meta.model.is_none() {
        return Err(GatewayError::MissingModel);
    }
    Ok(meta)
}

/// Reads the body, up to `limit` (the client's own; the edge enforces `edge_limit`).
async fn read_body(
    body: EdgeBody,
    headers: &http::HeaderMap,
    limit: usize,
    edge_limit: usize,
) -> Result<Bytes, GatewayError> {
    let too_large = GatewayError::BodyTooLarge { limit };
    if limit < edge_limit {
        // Refused before a byte is read when the length is declared.
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large);
        }
        // Boxed here only: the edge's limit error, wrapped by axum, stays told apart from
        // the client's own.
        return match http_body_util::Limited::new(Body::new(body), limit)
            .collect()
            .await
        {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large),
            Err(e)
                if e.downcast_ref::<axum::Error>()
                    .is_some_and(|e| is_length_limit(e)) =>
            {
                Err(GatewayError::BodyTooLarge { limit: edge_limit })
            }
            Err(_) => Err(GatewayError::InvalidJson(
                "the request body could not be read".into(),
            )),
        };
    }
    match body.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if is_length_limit(&*e) => Err(too_large),
        Err(_) => Err(GatewayError::InvalidJson(
            "the request body could not be read".into(),
        )),
    }
}

/// Whether reading failed at the edge's body limit: a `LengthLimitError` anywhere in the
/// error's chain (axum wraps it where the body was boxed).
fn is_length_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// The answer as the client gets it: hop-by-hop headers removed, `x-should-retry: false` on
/// errors retrying cannot fix, both retry-after forms on 429/503, and the gateway's headers.
fn respond(answer: Answer, model: &str) -> Response<Body> {
    let mut resp = Response::new(answer.body);
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
    const ATTEMPTS: HeaderName = HeaderName::from_static("x-tollgate-attempts");
    const PROVIDER: HeaderName = HeaderName::from_static("x-tollgate-provider");
    const KEY: HeaderName = HeaderName::from_static("x-tollgate-key");
    headers.insert(
        ATTEMPTS,
        crate::units::integer_header(answer.attempts.into()),
    );
    if let Some(v) = answer.provider.header() {
        headers.insert(PROVIDER, v.clone());
    }
    if let Some(v) = answer.key.header() {
        headers.insert(KEY, v.clone());
    }
    *resp.headers_mut() = headers;
    let served = answer.served;
    resp.extensions_mut().insert(AnswerRecord {
        model: model.to_owned(),
        provider: answer.provider.shared(),
        key: answer.key.shared(),
        attempts: answer.attempts,
        served,
        span: None,
        hold: answer.hold,
    });
    resp
}

#[cfg(test)]
mod fuzz;
