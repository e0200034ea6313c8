//! `GatewayRequest`: a client request parsed once (endpoint, model, stream flag) with its body
//! kept as shared bytes so every attempt resends the same data.

use bytes::Bytes;
use http::{HeaderMap, Method};
use tokio::time::Instant;

/// The OpenAI endpoints, as a closed set for routing and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `chat/completions`.
    ChatCompletions,
    /// `completions`.
    Completions,
    /// `embeddings`.
    Embeddings,
    /// `responses…`.
    Responses,
    /// `models…`.
    Models,
    /// `moderations`.
    Moderations,
    /// `images/…`.
    Images,
    /// `audio/…`.
    Audio,
    /// `files…`, `uploads…`, `batches…`.
    Files,
    /// Anything else.
    Other,
}

impl Endpoint {
    /// Classifies a path relative to `/v1/`.
    pub fn from_path(path: &str) -> Endpoint {
        let first = path.split('/').next().unwrap_or_default();
        match first {
            "chat" if path.starts_with("chat/completions") => Endpoint::ChatCompletions,
            "completions" => Endpoint::Completions,
            "embeddings" => Endpoint::Embeddings,
            "responses" => Endpoint::Responses,
            "models" => Endpoint::Models,
            "moderations" => Endpoint::Moderations,
            "images" => Endpoint::Images,
            "audio" => Endpoint::Audio,
            "files" | "uploads" | "batches" => Endpoint::Files,
            _ => Endpoint::Other,
        }
    }

    /// Closed-set label.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Responses => "responses",
            Endpoint::Models => "models",
            Endpoint::Moderations => "moderations",
            Endpoint::Images => "images",
            Endpoint::Audio => "audio",
            Endpoint::Files => "files",
            Endpoint::Other => "other",
        }
    }

    /// Whether its streams end with `data: [DONE]`.
    pub fn stream_ends_with_done(self) -> bool {
        matches!(self, Endpoint::ChatCompletions | Endpoint::Completions)
    }
}

/// A parsed client request.
#[derive(Debug, Clone)]
pub struct GatewayRequest {
    /// Request id (from the client's `x-request-id` or generated).
    pub id: String,
    /// HTTP method.
    pub method: Method,
    /// Path after `/v1/`.
    pub path: String,
    /// Query string, if any.
    pub query: Option<String>,
    /// Headers to forward (hop-by-hop and client auth already removed).
    pub headers: HeaderMap,
    /// Body bytes.
    pub body: Bytes,
    /// `model` from a JSON body.
    pub model: Option<String>,
    /// `stream: true`.
    pub stream: bool,
    /// Which endpoint.
    pub endpoint: Endpoint,
    /// When the gateway received it.
    pub received: Instant,
    /// Estimated tokens (prompt + completion allowance) taken from TPM buckets.
    pub tokens: u64,
    /// The client's bucket, for reconciling with real usage.
    pub client_bucket: Option<(std::sync::Arc<str>, crate::rate_limit::Limits)>,
    /// The gateway added `include_usage` to a stream: remove the usage chunk before the client sees it.
    pub strip_usage: bool,
    /// The stream must carry a usage chunk (the client asked, or the gateway did).
    pub include_usage: bool,
    /// When the whole request must be done.
    pub deadline: Instant,
}

impl GatewayRequest {
    /// A minimal request for tests.
    #[cfg(test)]
    pub fn for_test(method: Method, path: &str, body: Bytes) -> Self {
        let meta: openai_types::RequestMeta<'_> = serde_json::from_slice(&body).unwrap_or_default();
        GatewayRequest {
            id: "req-test".into(),
            method,
            path: path.into(),
            query: None,
            headers: HeaderMap::new(),
            model: meta.model.map(|m| m.into_owned()),
            stream: meta.stream.unwrap_or(false),
            endpoint: Endpoint::from_path(path),
            body,
            received: Instant::now(),
            tokens: 0,
            client_bucket: None,
            strip_usage: false,
            include_usage: false,
            deadline: Instant::now() + std::time::Duration::from_secs(600),
        }
    }
}
