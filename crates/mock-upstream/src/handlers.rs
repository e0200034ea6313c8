//! The single request handler: record the request, pick a fault, route by
//! path, and turn the resulting `Answer` into a (possibly streamed) response.
//!
//! Routing matches path suffixes, so `/v1/chat/completions` and an Azure-style
//! `/openai/deployments/d/chat/completions` both reach the chat answer.
//! `/v1/messages` speaks the Anthropic dialect: its error bodies and stream
//! error events are Anthropic-shaped (see [`Dialect`]); `/v1/responses` streams
//! named events, so its stream errors are `event: error`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, Method, StatusCode};
use serde_json::json;

use crate::answers::{self, Answer, Knobs};
use crate::anthropic;
use crate::faults::{self, Fault};
use crate::responses;
use crate::sse::{self, Pieces, StreamKind};
use crate::{Recorded, Shared};

/// Largest request body read; bigger bodies get a 413.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// Which answer a request gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    Chat,
    /// Anthropic's `POST /v1/messages`.
    Messages,
    /// Anthropic's `POST /v1/messages/count_tokens`.
    CountTokens,
    Completions,
    /// OpenAI's `POST /v1/responses`.
    Responses,
    /// `GET /v1/responses/{id}`.
    ResponseGet,
    /// `DELETE /v1/responses/{id}`.
    ResponseDelete,
    /// Any of the three above on a server without the Responses API
    /// ([`crate::MockConfig::responses_api`] off).
    NoResponses,
    Embeddings,
    Models,
    Speech,
    /// `/v1/files…` and `/v1/batches…`.
    Objects,
    Echo,
}

/// Maps method and path to a [`Route`]; anything unknown is echoed.
pub(crate) fn route(method: &Method, path: &str) -> Route {
    let path = path.trim_end_matches('/');
    let post = method == Method::POST;
    if crate::objects::is_objects_path(path) {
        Route::Objects
    } else if post && path.ends_with("/chat/completions") {
        Route::Chat
    } else if post && path.ends_with("/v1/messages") {
        Route::Messages
    } else if post && path.ends_with("/v1/messages/count_tokens") {
        Route::CountTokens
    } else if post && path.ends_with("/completions") {
        Route::Completions
    } else if post && path.ends_with("/responses") {
        Route::Responses
    } else if method == Method::GET && response_id(path).is_some() {
        Route::ResponseGet
    } else if method == Method::DELETE && response_id(path).is_some() {
        Route::ResponseDelete
    } else if post && path.ends_with("/embeddings") {
        Route::Embeddings
    } else if method == Method::GET && path.ends_with("/models") {
        Route::Models
    } else if post && path.ends_with("/audio/speech") {
        Route::Speech
    } else {
        Route::Echo
    }
}

/// The `{id}` of a `.../responses/{id}` path (no further segment).
pub(crate) fn response_id(path: &str) -> Option<&str> {
    let (_, id) = path.trim_end_matches('/').rsplit_once("/responses/")?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// The API family whose error shapes an answer uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// `{"error": {"message", "type", "param", "code"}}`, `data:`-only streams.
    OpenAi,
    /// `{"type": "error", "error": {"type", "message"}}`, named SSE events.
    Anthropic,
    /// OpenAI's error bodies, named SSE events (`event: error` in a stream).
    Responses,
}

impl Route {
    pub(crate) fn dialect(self) -> Dialect {
        match self {
            Route::Messages => Dialect::Anthropic,
            Route::Responses | Route::ResponseGet | Route::ResponseDelete => Dialect::Responses,
            _ => Dialect::OpenAi,
        }
    }
}

/// The request key: `Authorization: Bearer X`, else `api-key`, else `x-api-key`.
pub(crate) fn request_key(headers: &HeaderMap) -> Option<String> {
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    bearer
        .or_else(|| header_str(headers, "api-key"))
        .or_else(|| header_str(headers, "x-api-key"))
        .map(str::to_owned)
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A per-request knob from a header, parsed as a number.
fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    header_str(headers, name).and_then(|v| v.trim().parse().ok())
}

/// The one axum handler behind every path.
pub(crate) async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let route = match route(&parts.method, parts.uri.path()) {
        Route::Responses | Route::ResponseGet | Route::ResponseDelete
            if !shared.config.responses_api =>
        {
            Route::NoResponses
        }
        route => route,
    };
    let dialect = route.dialect();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(body) => body,
        Err(_) => {
            let answer = match dialect {
                Dialect::OpenAi | Dialect::Responses => {
                    Answer::error(StatusCode::PAYLOAD_TOO_LARGE, "request body unreadable")
                }
                Dialect::Anthropic => Answer::json(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &anthropic::error_body_for_status(413),
                ),
            };
            return respond(answer, None, Duration::ZERO, dialect);
        }
    };
    let key = request_key(&parts.headers);
    let seq = shared.seq.fetch_add(1, Ordering::Relaxed) + 1;
    // Subscribe before anything can wait, so a release that happens while
    // this request is in flight is never missed.
    let mut hold = shared.holds.subscribe();
    shared.count(key.as_deref());
    let fault = {
        let mut scripts = shared.lock_scripts();
        faults::choose(
            &mut scripts,
            key.as_deref(),
            header_str(&parts.headers, "x-mock-fault"),
            || wants_stream(&body),
        )
    };
    let (fault, gzip) = unwrap_gzip(fault);
    let mut knobs = Knobs {
        seq,
        port: shared.port,
        chunks: header_u64(&parts.headers, "x-mock-chunks").map_or(shared.config.chunks, |n| {
            usize::try_from(n).unwrap_or(usize::MAX)
        }),
        chunk_delay: header_u64(&parts.headers, "x-mock-chunk-delay-ms")
            .map_or(shared.config.chunk_delay, Duration::from_millis),
        prompt_tokens: body.len() / 4,
        huge_usage: false,
    };
    let content_type = header_str(&parts.headers, "content-type").map(str::to_owned);
    // `x-mock-ratelimit-remaining: REQUESTS,TOKENS` comes back as the provider's
    // `x-ratelimit-remaining-requests` and `-tokens` on the answer.
    let remaining = header_str(&parts.headers, "x-mock-ratelimit-remaining").map(str::to_owned);
    let version = header_str(&parts.headers, "anthropic-version").map(str::to_owned);
    let beta_header: Vec<String> = parts
        .headers
        .get_all("anthropic-beta")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    let method = parts.method.to_string();
    let path = parts.uri.path().to_owned();

    if shared.config.record {
        shared.record(Recorded {
            method: method.clone(),
            path: path.clone(),
            query: parts.uri.query().map(str::to_owned),
            headers: parts.headers,
            key: key.clone(),
            body: body.clone(),
            at: std::time::Instant::now(),
        });
    }

    if !shared.config.response_delay.is_zero() {
        wait_exactly(shared.config.response_delay).await;
    }
    let fault = match fault {
        Some(f) if route != Route::Responses || !wants_stream(&body) => {
            faults::outside_responses_stream(f)
        }
        other => other,
    };
    let fault = match fault {
        Some(Fault::Delayed(wait, inner)) => {
            tokio::time::sleep(wait).await;
            Some(*inner)
        }
        other => other,
    };
    let fault = match fault {
        Some(Fault::Delay(wait)) => {
            wait_exactly(wait).await;
            None
        }
        Some(Fault::Hang) => {
            // Dropped with the connection; an error means no handle is left to release it.
            if hold.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            None
        }
        Some(Fault::HugeUsage) => {
            knobs.huge_usage = true;
            None
        }
        Some(Fault::Status {
            status,
            body,
            headers,
        }) => {
            let response = status_response(status, dialect_body(dialect, status, body), &headers);
            return encode(response, gzip);
        }
        other => other,
    };

    let key = key.as_deref();
    let id = response_id(&path).unwrap_or_default();
    let (answer, fault) = match route {
        Route::Responses => responses::create(&body, key, &knobs, &shared, fault),
        Route::ResponseGet => (responses::retrieve(&shared, key, id), fault),
        Route::ResponseDelete => (responses::delete(&shared, key, id), fault),
        Route::NoResponses => (responses::unsupported(&method, &path), fault),
        Route::Chat => (answers::completion(&body, &knobs, StreamKind::Chat), fault),
        Route::Messages | Route::CountTokens => {
            let betas: Vec<&str> = beta_header
                .iter()
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .collect();
            let count = route == Route::CountTokens;
            (
                anthropic::messages(&body, version.as_deref(), &betas, count, &knobs),
                fault,
            )
        }
        Route::Completions => (
            answers::completion(&body, &knobs, StreamKind::Completion),
            fault,
        ),
        Route::Embeddings => (answers::embeddings(&body, &knobs), fault),
        Route::Models => (answers::models(), fault),
        Route::Speech => (answers::speech(), fault),
        Route::Objects => (
            shared
                .lock_objects()
                .handle(&parts.method, &path, &body, shared.port),
            fault,
        ),
        Route::Echo => {
            let echo = json!({
                "object": "mock.echo",
                "method": method,
                "path": path,
                "content_type": content_type,
                "body_len": body.len(),
            });
            (Answer::json(StatusCode::OK, &echo), fault)
        }
    };
    let fault = fault.map(|f| (f, hold));
    let mut response = respond(answer, fault, knobs.chunk_delay, dialect);
    if let Some((requests, tokens)) = remaining.as_deref().and_then(|r| r.split_once(',')) {
        let headers = response.headers_mut();
        for (name, value) in [
            ("x-ratelimit-remaining-requests", requests),
            ("x-ratelimit-remaining-tokens", tokens),
        ] {
            if let Ok(v) = HeaderValue::from_str(value.trim()) {
                headers.insert(name, v);
            }
        }
    }
    encode(response, gzip)
}

/// Whether a request body asks for a stream (`"stream": true`); anything unreadable does not.
fn wants_stream(body: &Bytes) -> bool {
    #[derive(serde::Deserialize)]
    struct StreamFlag {
        #[serde(default)]
        stream: bool,
    }
    serde_json::from_slice::<StreamFlag>(body).is_ok_and(|flag| flag.stream)
}

/// Splits off [`Fault::Gzip`] (nested ones compress once): the fault left to apply, and whether
/// the answer is compressed.
fn unwrap_gzip(fault: Option<Fault>) -> (Option<Fault>, bool) {
    let mut gzip = false;
    let mut fault = fault;
    while let Some(Fault::Gzip(inner)) = fault {
        gzip = true;
        fault = inner.map(|f| *f);
    }
    (fault, gzip)
}

/// The response, gzip-compressed when the fault asked for it.
fn encode(response: Response, gzip: bool) -> Response {
    if gzip {
        crate::gzip::compress(response)
    } else {
        response
    }
}

/// The body of a status fault: the default OpenAI body of [`Fault::status`]
/// becomes the Anthropic one on Anthropic paths; a custom body is kept as is.
fn dialect_body(dialect: Dialect, status: u16, body: String) -> String {
    let is_default = || {
        serde_json::from_str::<serde_json::Value>(&body)
            .is_ok_and(|value| value == faults::error_body_for_status(status))
    };
    if dialect == Dialect::Anthropic && is_default() {
        anthropic::error_body_for_status(status).to_string()
    } else {
        body
    }
}

/// Builds the exact response a [`Fault::Status`] asks for.
fn status_response(status: u16, body: String, headers: &[(String, String)]) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let map = response.headers_mut();
    map.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            if name == CONTENT_TYPE {
                map.insert(name, value);
            } else {
                map.append(name, value);
            }
        }
    }
    response
}

/// Sends `answer`, shaped by a streaming fault if there is one.
fn respond(
    mut answer: Answer,
    fault: Option<(Fault, tokio::sync::watch::Receiver<u64>)>,
    chunk_delay: Duration,
    dialect: Dialect,
) -> Response {
    let delay = if answer.streaming {
        chunk_delay
    } else {
        Duration::ZERO
    };
    let body = match fault {
        None if !answer.streaming => Body::from(answer.pieces.concat()),
        None => Body::from_stream(Pieces::new(answer.pieces.clone(), delay).into_stream()),
        Some((Fault::StreamErrorFirst, _)) => {
            answer.status = StatusCode::OK;
            answer.pieces = vec![match (dialect, answer.streaming) {
                (Dialect::OpenAi, true) => sse::data_event(&faults::stream_error_body()),
                (Dialect::Anthropic, true) => anthropic::stream_error_event(),
                (Dialect::Responses, true) => responses::stream_error_event(),
                (Dialect::OpenAi | Dialect::Responses, false) => {
                    Bytes::from(faults::stream_error_body().to_string())
                }
                (Dialect::Anthropic, false) => {
                    Bytes::from(anthropic::overloaded_body().to_string())
                }
            }];
            if !answer.streaming {
                answer.content_type = "application/json";
            }
            Body::from(answer.pieces.concat())
        }
        Some((Fault::BreakAfter(n), _)) => {
            let pieces = Pieces::new(split_plain(&answer), delay).break_after(n);
            Body::from_stream(pieces.into_stream())
        }
        Some((Fault::HoldAfterFirst, hold)) => {
            let pieces = Pieces::new(split_plain(&answer), delay).hold_after_first(hold);
            Body::from_stream(pieces.into_stream())
        }
        // Handled (or resolved) before the answer was built.
        Some((
            Fault::Status { .. }
            | Fault::Delay(_)
            | Fault::Delayed(..)
            | Fault::Hang
            | Fault::HugeUsage
            | Fault::ResponseFailed { .. }
            | Fault::ResponseCutAfter(_)
            | Fault::ResponseEndAfter(_)
            | Fault::Gzip(_)
            | Fault::StreamsOnly(_)
            | Fault::Flaky { .. },
            _,
        )) => Body::from(answer.pieces.concat()),
    };
    let mut response = Response::new(body);
    *response.status_mut() = answer.status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(answer.content_type));
    if answer.streaming {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    response
}

/// Streaming answers keep their events; a plain body is cut in two halves so
/// holds and breaks have a "first piece" to send.
fn split_plain(answer: &Answer) -> Vec<Bytes> {
    if answer.streaming {
        return answer.pieces.clone();
    }
    let whole = Bytes::from(answer.pieces.concat());
    let mid = whole.len() / 2;
    vec![whole.slice(..mid), whole.slice(mid..)]
}

/// How much of a wait is left to a thread's sleep rather than tokio's timer.
const FINE_WAIT: Duration = Duration::from_millis(2);

/// Waits `wait` to within the operating system's sleep slack (tens of microseconds).
///
/// tokio's timer fires on a 1 ms grid, late by up to a millisecond depending on where in the
/// millisecond the wait began; a proxy between client and mock shifts that phase, so a hop that
/// costs 0.1 ms could show as 0.8 ms in a delayed scenario's latency. The bulk of the wait is
/// tokio's, the last `FINE_WAIT` a blocking thread's `sleep` (a real upstream's delay is not
/// aligned to its timer's grid either).
async fn wait_exactly(wait: Duration) {
    let deadline = std::time::Instant::now() + wait;
    if let Some(coarse) = wait.checked_sub(FINE_WAIT) {
        tokio::time::sleep(coarse).await;
    }
    let rest = deadline.saturating_duration_since(std::time::Instant::now());
    if !rest.is_zero() {
        // The thread only sleeps; if it cannot be joined the wait is over anyway.
        let _ = tokio::task::spawn_blocking(move || std::thread::sleep(rest)).await;
    }
}

#[cfg(test)]
mod tests;
