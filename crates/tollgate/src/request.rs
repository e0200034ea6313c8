//! `GatewayRequest`: a client request parsed once (endpoint, model, stream flag) with its body
//! kept as shared bytes so every attempt resends the same data.

use crate::auth::Client;
pub use crate::endpoint::Endpoint;
use crate::rate_limit::Limits;
use bytes::Bytes;
use http::{HeaderMap, Method};
use std::sync::Arc;
use tokio::time::Instant;

/// A parsed client request: what the gateway stack's layers read and annotate on the way in.
#[derive(Debug, Clone)]
pub struct GatewayRequest {
    /// Request id (from the client's `x-request-id` or generated).
    pub id: Arc<str>,
    /// HTTP method.
    pub method: Method,
    /// Path after `/v1/`.
    pub path: String,
    /// Query string, if any.
    pub query: Option<String>,
    /// Headers to forward (hop-by-hop and client auth already removed).
    pub headers: HeaderMap,
    /// The gateway key the client presented, for a request built without the handler's check
    /// (read by the client-auth layer, never forwarded); the handler authenticates first and
    /// sets [`Self::client`] instead, leaving this `None`.
    pub credential: Option<Box<str>>,
    /// Body bytes.
    pub body: Bytes,
    /// `model` from a JSON body.
    pub model: Option<String>,
    /// Where `model`'s JSON value (quotes included) is in `body`, while `body` is as parsed (or
    /// only appended to): a rename is spliced there instead of re-serializing the body.
    pub model_span: Option<std::ops::Range<usize>>,
    /// The client's take, left to the first key take when the buckets live in Redis (both in
    /// one script call); the client-limit layer reads the result back.
    pub client_take: Option<Arc<ClientTake>>,
    /// The token estimate's count of `body`, made by the request's one reading of it; `None`
    /// when the body was not read that way (then it is counted when needed) or was replaced.
    pub counted: Option<crate::rate_limit::estimate::Counted>,
    /// Whether an object in `body`, at any depth, has a member that names a stored object
    /// (`previous_response_id`, `file_id`, …), as the request's one reading of it found;
    /// `None` when not known (then the ownership layer searches the body itself).
    pub names_objects: Option<bool>,
    /// Index of the configured model `model` names (`None`: pass-through or no model).
    pub model_index: Option<usize>,
    /// `stream: true`.
    pub stream: bool,
    /// Which endpoint.
    pub endpoint: Endpoint,
    /// When the gateway received it.
    pub received: Instant,
    /// The authenticated client (set by the client-auth layer; `None` in open mode).
    pub client: Option<Arc<Client>>,
    /// Estimated tokens (prompt + completion allowance) taken from TPM buckets.
    pub tokens: u64,
    /// The client's bucket, for reconciling with real usage.
    pub client_bucket: Option<(Arc<str>, Limits)>,
    /// The gateway added `include_usage` to a stream: remove the usage chunk before the client sees it.
    pub strip_usage: bool,
    /// The stream must carry a usage chunk (the client asked, or the gateway did).
    pub include_usage: bool,
    /// When the whole request must be done.
    pub deadline: Instant,
    /// The session the request belongs to (its `prompt_cache_key`, session id header or, where
    /// configured, `user`), hashed: its turns go to one key while that key is healthy.
    pub affinity: Option<u64>,
    /// The stored object the request refers to (the id in its path, e.g. `/v1/responses/{id}`,
    /// or its `previous_response_id`): it goes to the key that holds it.
    pub object: Option<Box<str>>,
    /// The key (bucket id) that holds [`Self::object`], when the ownership layer knows it.
    pub object_key: Option<Arc<str>>,
    /// The body asks for its answer to be stored (a Responses request without `store: false`,
    /// a chat completion with `store: true`).
    pub stores: bool,
    /// The answer names objects the caller now owns: it is read whole and they are recorded.
    pub records: bool,
}

impl GatewayRequest {
    /// A minimal request for tests.
    #[cfg(test)]
    pub fn for_test(method: Method, path: &str, body: Bytes) -> Self {
        let endpoint = Endpoint::from_path(path);
        let parsed = crate::body::Fields::read(&body).ok();
        let counted = parsed.as_ref().map(|p| {
            crate::rate_limit::estimate::count(p, body.len(), endpoint, Default::default())
        });
        let meta = parsed.unwrap_or_default();
        GatewayRequest {
            id: "req-test".into(),
            method,
            path: path.into(),
            query: None,
            headers: HeaderMap::new(),
            credential: None,
            model: meta.model_name().ok().flatten(),
            model_span: meta.model.map(|raw| span_in(&body, raw.get())),
            counted,
            names_objects: None,
            client_take: None,
            model_index: None,
            stream: meta.stream.unwrap_or(false),
            endpoint,
            body,
            received: Instant::now(),
            client: None,
            tokens: 0,
            client_bucket: None,
            strip_usage: false,
            include_usage: false,
            deadline: Instant::now() + std::time::Duration::from_secs(600),
            affinity: None,
            object: None,
            object_key: None,
            stores: false,
            records: false,
        }
    }
}

/// One element of a request's chain: a provider and the model it is asked for.
#[derive(Debug, Clone)]
pub struct Target {
    /// Index of the provider.
    pub provider: usize,
    /// Upstream model (or Azure deployment) name; `None` passes the client's through.
    pub model: Option<Arc<str>>,
    /// `max_tokens` for dialects that require one (Anthropic) when the client names none.
    pub max_tokens: u32,
    /// The target's context window, when configured.
    pub context_window: Option<u32>,
    /// Whether `max_tokens` may be lowered to fit `context_window`.
    pub fit_max_tokens: bool,
    /// The model takes a reasoning effort.
    pub reasoning: bool,
}

/// How an answer came about, for `tollgate_requests_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// The first attempt answered.
    FirstTry,
    /// A later attempt on the first target answered.
    AfterRetry,
    /// A later target answered.
    AfterFallback,
    /// An error: the gateway's own, or an upstream error returned as is.
    Failed,
}

impl Served {
    /// Closed-set label.
    pub fn label(self) -> &'static str {
        match self {
            Served::FirstTry => "first_try",
            Served::AfterRetry => "after_retry",
            Served::AfterFallback => "after_fallback",
            Served::Failed => "failed",
        }
    }
}

/// One attempt on one target with one key: what the provider layer gets from key selection.
#[derive(Debug, Clone)]
pub struct KeyedCall {
    /// The client's request.
    pub req: Arc<GatewayRequest>,
    /// The target tried.
    pub target: Target,
    /// The body prepared for the target's dialect.
    pub body: Bytes,
    /// The key chosen for this attempt.
    pub key: crate::key_pool::KeyRef,
    /// When this attempt's time is up (its share of the request's deadline).
    pub deadline: Instant,
}

/// An answer on its way to the client: what the gateway stack returns.
#[derive(Debug)]
pub struct Answer {
    /// Status to send.
    pub status: http::StatusCode,
    /// Upstream headers (hop-by-hop removed by the server).
    pub headers: HeaderMap,
    /// Streamed body.
    pub body: axum::body::Body,
    /// Name of the provider that answered.
    pub provider: Name,
    /// Id of the key used.
    pub key: Name,
    /// Upstream attempts made.
    pub attempts: u32,
    /// How it was served.
    pub served: Served,
    /// What the answer keeps until its body has gone out: the client's concurrency slot (the
    /// access layer holds it with the body's record).
    pub hold: Option<Arc<crate::auth::InflightGuard>>,
}

/// A client's take made together with the first key take (see `GatewayRequest::client_take`).
#[derive(Debug)]
pub struct ClientTake {
    /// The client's bucket pair.
    pub bucket: Arc<str>,
    /// Its limits.
    pub limits: Limits,
    /// What the take charged and left, once made.
    pub taken: std::sync::OnceLock<crate::rate_limit::Taken>,
}

/// Where `part` (a slice borrowed from `body`) lies in `body`.
pub fn span_in(body: &[u8], part: &str) -> std::ops::Range<usize> {
    let start = (part.as_ptr() as usize).saturating_sub(body.as_ptr() as usize);
    start..start + part.len()
}

/// `body` with the bytes at `span` replaced by `value`; `None` when `span` is not in `body`.
pub fn splice(body: &[u8], span: std::ops::Range<usize>, value: &[u8]) -> Option<Bytes> {
    let (head, tail) = (body.get(..span.start)?, body.get(span.end..)?);
    let mut out = Vec::with_capacity(head.len() + value.len() + tail.len());
    out.extend_from_slice(head);
    out.extend_from_slice(value);
    out.extend_from_slice(tail);
    Some(Bytes::from(out))
}

/// A provider's name or a key's id as an answer carries it: shared, with its header value
/// (`x-tollgate-provider`, `x-tollgate-key`) made once where it is configured, so an answer
/// copies neither.
#[derive(Debug, Clone)]
pub struct Name {
    text: Arc<str>,
    /// `None` when the text cannot be a header value (the header is then left out).
    header: Option<http::HeaderValue>,
}

impl Name {
    /// `text` with its header value.
    pub fn new(text: &str) -> Name {
        Name {
            text: Arc::from(text),
            header: http::HeaderValue::from_str(text).ok(),
        }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The text, shared.
    pub fn shared(&self) -> Arc<str> {
        Arc::clone(&self.text)
    }

    /// The header value, when the text can be one.
    pub fn header(&self) -> Option<&http::HeaderValue> {
        self.header.as_ref()
    }
}

impl From<&str> for Name {
    fn from(text: &str) -> Name {
        Name::new(text)
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        *self.text == *other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        *self.text == **other
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}
