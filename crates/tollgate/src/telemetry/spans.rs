//! What a trace is made of, made only while traces are on ([`super::enabled`]); with traces
//! off every function here is skipped by its caller, and the attempt span is `Span::none()`.
//!
//! - `request` (kind server; the edge's span, `server::access::request_span`): its parent is
//!   the client's W3C `traceparent`/`tracestate`. Attributes: `request_id`,
//!   `http.request.method`, `url.path`, `http.route`, `gen_ai.operation.name`,
//!   `gen_ai.request.model` (the client's), and once answered `http.response.status_code`,
//!   `error.type` (the status code, 4xx/5xx), `tollgate.provider`, `tollgate.key` (the key's
//!   configured id, never its secret), `tollgate.attempts`, `tollgate.outcome` (`first_try`,
//!   `after_retry`, `after_fallback`, `failed`). Events: `fallback` (`from`, `to`, `reason`),
//!   `backoff` (`provider`, `wait_ms`), `bucket_wait` (`provider`, `wait_ms`), `key_wait`
//!   (`provider`, `wait_ms`), and the gateway's own log events of the request.
//! - `attempt` (kind client; the provider layer, around one exchange): `gen_ai.operation.name`,
//!   `gen_ai.provider.name` (`openai`, `azure.ai.openai`, `anthropic`), `gen_ai.request.model`
//!   (the model sent upstream), `gen_ai.response.model`, `gen_ai.usage.input_tokens`,
//!   `gen_ai.usage.output_tokens` (at the answer's end), `http.response.status_code`,
//!   `error.type` (the outcome kind), `tollgate.provider`, `tollgate.key`, `tollgate.attempt`,
//!   `tollgate.outcome` (the outcome kind), `tollgate.served`. Events: `bucket_full` (`key`,
//!   `dimension`, `wait_ms`; recorded on the request span, before the attempt exists),
//!   `key_cooled`, `key_disabled`, `key_ejected` (`key`, `for_ms`). Its context is the
//!   upstream request's `traceparent`. A successful attempt's span ends with the answer's body.

use crate::config::ProviderKind;
use crate::endpoint::Endpoint;
use crate::request::{GatewayRequest, Target};
use http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::KeyValue;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::field::Empty;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The GenAI operation of an endpoint (`None`: not a GenAI operation).
fn operation(endpoint: Endpoint) -> Option<&'static str> {
    match endpoint {
        Endpoint::ChatCompletions | Endpoint::Responses | Endpoint::Messages => Some("chat"),
        Endpoint::Completions => Some("text_completion"),
        Endpoint::Embeddings => Some("embeddings"),
        Endpoint::CountTokens
        | Endpoint::Models
        | Endpoint::Moderations
        | Endpoint::Images
        | Endpoint::Audio
        | Endpoint::Files
        | Endpoint::Other => None,
    }
}

/// A low-cardinality route for a span's name (a path may carry an object's id).
fn route(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::ChatCompletions => "/v1/chat/completions",
        Endpoint::Completions => "/v1/completions",
        Endpoint::Embeddings => "/v1/embeddings",
        Endpoint::Responses => "/v1/responses",
        Endpoint::Messages => "/v1/messages",
        Endpoint::CountTokens => "/v1/messages/count_tokens",
        Endpoint::Models => "/v1/models",
        Endpoint::Moderations => "/v1/moderations",
        Endpoint::Images => "/v1/images",
        Endpoint::Audio => "/v1/audio",
        Endpoint::Files => "/v1/files",
        Endpoint::Other => "/v1/*",
    }
}

/// `gen_ai.provider.name`'s well-known value for a provider kind.
fn provider_name(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::OpenAi => "openai",
        ProviderKind::Azure => "azure.ai.openai",
        ProviderKind::Anthropic => "anthropic",
    }
}

/// The request span with traces on, continuing the client's trace when it sent one.
pub fn request<B>(req: &http::Request<B>, request_id: &str) -> Span {
    let path = req.uri().path();
    let endpoint = Endpoint::from_path(path.strip_prefix("/v1/").unwrap_or_default());
    let route = route(endpoint);
    let method = req.method().as_str();
    let span = tracing::info_span!(
        "request",
        request_id,
        method,
        path,
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        http.request.method = method,
        url.path = path,
        http.route = route,
        gen_ai.operation.name = operation(endpoint),
        gen_ai.request.model = Empty,
        http.response.status_code = Empty,
        error.type = Empty,
        tollgate.provider = Empty,
        tollgate.key = Empty,
        tollgate.attempts = Empty,
        tollgate.outcome = Empty,
    );
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(req.headers()));
    let _ = span.set_parent(parent);
    span
}

/// Records what the handler knows of the request before dispatch.
pub fn requested(span: &Span, model: Option<&str>) {
    if let Some(model) = model {
        span.record("gen_ai.request.model", model);
    }
}

/// Records the answer's head on the request span (its outcome is recorded once the body has
/// gone out or the client left: the access layer's).
pub fn answered(span: &Span, status: u16, provider: &str, key: &str, attempts: u32) {
    span.record("http.response.status_code", status);
    if status >= 400 {
        // A string, as `error.type` is (an HTTP status code by the HTTP conventions).
        span.record("error.type", tracing::field::display(status));
    }
    if provider != "-" {
        span.record("tollgate.provider", provider);
    }
    if key != "-" {
        span.record("tollgate.key", key);
    }
    span.record("tollgate.attempts", attempts);
}

/// The span of one upstream attempt, a child of the current (request) span.
pub fn attempt(
    kind: ProviderKind,
    provider: &str,
    req: &GatewayRequest,
    target: &Target,
    key: &str,
) -> Span {
    let model = target.model.as_deref().or(req.model.as_deref());
    let operation = operation(req.endpoint);
    tracing::info_span!(
        "attempt",
        otel.name = %format_args!("{} {}", operation.unwrap_or(req.method.as_str()), model.unwrap_or(route(req.endpoint))),
        otel.kind = "client",
        gen_ai.operation.name = operation,
        gen_ai.provider.name = provider_name(kind),
        gen_ai.request.model = model,
        gen_ai.response.model = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        http.response.status_code = Empty,
        error.type = Empty,
        tollgate.provider = provider,
        tollgate.key = key,
        tollgate.attempt = Empty,
        tollgate.outcome = Empty,
        tollgate.served = Empty,
    )
}

/// Records an attempt's number in its request and how its answer would count.
pub fn attempt_no(span: &Span, attempt: u32, served: &'static str) {
    span.record("tollgate.attempt", attempt);
    span.record("tollgate.served", served);
}

/// Records an attempt's classified outcome.
pub fn outcome(span: &Span, status: Option<u16>, kind: &'static str, success: bool) {
    if let Some(status) = status {
        span.record("http.response.status_code", status);
    }
    span.record("tollgate.outcome", kind);
    if !success {
        span.record("error.type", kind);
    }
}

/// Records the model an answer names, read from its first bytes (a JSON answer's or a
/// stream's first event's `"model"`).
pub fn response_model(span: &Span, first: &[u8]) {
    if let Some(model) = model_in(first) {
        span.record("gen_ai.response.model", model);
    }
}

/// The first `"model": "…"` string in `bytes` (no escapes; at most 256 bytes).
fn model_in(bytes: &[u8]) -> Option<&str> {
    let at = memchr::memmem::find(bytes, b"\"model\"")?;
    let rest = &bytes[at + 7..];
    let start = rest
        .iter()
        .position(|b| !matches!(b, b' ' | b'\n' | b'\r' | b'\t' | b':'))?;
    let rest = rest[start..].strip_prefix(b"\"")?;
    let end = rest
        .iter()
        .take(256)
        .position(|b| *b == b'"' || *b == b'\\')?;
    if rest[end] != b'"' {
        return None;
    }
    std::str::from_utf8(&rest[..end]).ok()
}

/// Records an answer's usage on its attempt's span.
pub fn usage(span: &Span, input: u64, output: u64) {
    span.record("gen_ai.usage.input_tokens", input);
    span.record("gen_ai.usage.output_tokens", output);
}

/// Adds an event to `span` (callers check [`super::enabled`] before building `attributes`).
pub fn event(span: &Span, name: &'static str, attributes: Vec<KeyValue>) {
    span.add_event(name, attributes);
}

/// Adds an event to the current span (the request's, in the dispatch layers).
pub fn current_event(name: &'static str, attributes: Vec<KeyValue>) {
    Span::current().add_event(name, attributes);
}

/// Puts the attempt's context in the upstream request: its `traceparent` (and the trace's
/// `tracestate`) replace the client's.
pub fn inject(span: &Span, headers: &mut HeaderMap) {
    headers.remove("traceparent");
    headers.remove("tracestate");
    TraceContextPropagator::new().inject_context(&span.context(), &mut HeaderInjector(headers));
}

/// Milliseconds of a wait, for an event's attribute.
pub fn ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_is_read_from_an_answers_first_bytes() {
        assert_eq!(
            model_in(
                br#"{"id":"x","object":"chat.completion","model": "gpt-4o-2024","choices":[]}"#
            ),
            Some("gpt-4o-2024")
        );
        assert_eq!(
            model_in(b"data: {\"id\":\"c\",\"model\":\"m-1\",\"choices\":[]}\n\n"),
            Some("m-1")
        );
        assert_eq!(
            model_in(br#"{"model":"a\"b"}"#),
            None,
            "escapes are not read"
        );
        assert_eq!(model_in(br#"{"model":"unterminated"#), None);
        assert_eq!(model_in(br#"{"id":"x"}"#), None);
    }
}
