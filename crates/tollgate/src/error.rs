//! `GatewayError`, every error the gateway produces itself, and its single mapping to OpenAI's
//! `{"error": {"message", "type", "param", "code"}}` answer.

use axum::body::Body;
use http::{header, HeaderValue, Response, StatusCode};
use openai_types::ErrorEnvelope;
use std::time::Duration;

/// An error answered by the gateway itself (upstream errors that pass through are not these).
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The body is not valid JSON.
    #[error("We could not parse the JSON body of your request: {0}")]
    InvalidJson(String),
    /// A JSON endpoint got no `model`.
    #[error("you must provide a model parameter")]
    MissingModel,
    /// The body is larger than `server.max_body`.
    #[error("request body is larger than the gateway's limit of {limit} bytes")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// A token count larger than the gateway's buckets can count (OpenAI's wording).
    #[error("Invalid '{param}': integer above maximum value. Expected a value <= {max}, but got {value} instead.")]
    IntegerAboveMax {
        /// The request field.
        param: &'static str,
        /// Its value.
        value: u64,
        /// The largest accepted.
        max: u64,
    },
    /// No route for the model and no default provider.
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    ModelNotFound(String),
    /// A path that could reach outside the endpoint it names (`..`, encoded slashes, `//`).
    #[error("Invalid path: {0}")]
    InvalidPath(&'static str),
    /// A WebSocket upgrade: the gateway serves HTTP only (a client falls back at once).
    #[error("WebSocket upgrades are not supported here; send the request over HTTP (for the Responses API, POST /v1/responses with stream: true)")]
    UpgradeRequired,
    /// A path the gateway does not serve.
    #[error("Invalid URL ({method} {path})")]
    NotFound {
        /// HTTP method.
        method: String,
        /// Request path.
        path: String,
    },
    /// No target of the model can serve this endpoint.
    #[error("model `{model}` cannot serve {endpoint}")]
    EndpointUnsupported {
        /// Requested model.
        model: String,
        /// Endpoint path.
        endpoint: String,
    },
    /// Every key is cooling down and the deadline leaves no room to wait.
    #[error("all upstream keys are rate limited; retry after {}ms ({summary})", retry_after.as_millis())]
    RateLimited {
        /// When the earliest key recovers.
        retry_after: Duration,
        /// What was tried.
        summary: String,
    },
    /// No key of any target can take traffic now: every one is disabled or ejected.
    #[error("no upstream key can take this request now ({summary}); retry after {}ms", retry_after.as_millis())]
    Unavailable {
        /// When the earliest key may be probed.
        retry_after: Duration,
        /// Why.
        summary: String,
    },
    /// Every target failed; the status follows the attempts (502, or 504 when one timed out).
    #[error("all upstream attempts failed: {summary}")]
    AllFailed {
        /// 502 or 504.
        status: StatusCode,
        /// Providers, key ids and outcomes, never secrets.
        summary: String,
    },
    /// The request deadline passed.
    #[error("the request did not complete within the gateway's deadline ({summary})")]
    DeadlineExceeded {
        /// What was tried.
        summary: String,
    },
    /// No client key, or an unknown one.
    #[error("Incorrect API key provided. Pass your gateway key as `Authorization: Bearer <key>` (or `x-api-key: <key>`, as Anthropic's clients do).")]
    Unauthorized,
    /// The client may not use this model.
    #[error("this key may not use model `{0}`")]
    ModelNotAllowed(String),
    /// The client may not call this family of endpoints (`*`: one the gateway does not know).
    #[error("this key may not call the `{0}` endpoints (the client's `endpoints` setting in the gateway's config)")]
    EndpointNotAllowed(&'static str),
    /// A stored object the client did not create (or that does not exist).
    #[error("No such object: '{id}'")]
    ObjectNotFound {
        /// The id named.
        id: String,
        /// The body field that named it (`None`: the path).
        param: Option<&'static str>,
    },
    /// The client is over its own RPM/TPM limit.
    #[error("Rate limit reached for {dimension} per minute on this gateway key; {}", retry_hint(.retry_after))]
    ClientRateLimited {
        /// `requests` or `tokens`.
        dimension: &'static str,
        /// When the take would pass (`None`: larger than the limit itself).
        retry_after: Option<Duration>,
    },
    /// The client has its maximum of requests in flight.
    #[error("too many concurrent requests on this gateway key (limit {limit})")]
    TooManyConcurrent {
        /// The configured limit.
        limit: u32,
    },
    /// A bug: details are in the logs under the request id.
    #[error("internal error (request id {request_id})")]
    Internal {
        /// Request id for the logs.
        request_id: String,
    },
}

impl GatewayError {
    /// HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::InvalidJson(_)
            | GatewayError::MissingModel
            | GatewayError::IntegerAboveMax { .. }
            | GatewayError::InvalidPath(_)
            | GatewayError::EndpointUnsupported { .. } => StatusCode::BAD_REQUEST,
            GatewayError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::ModelNotFound(_) | GatewayError::NotFound { .. } => StatusCode::NOT_FOUND,
            GatewayError::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            GatewayError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::AllFailed { status, .. } => *status,
            GatewayError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::DeadlineExceeded { .. } => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::Unauthorized => StatusCode::UNAUTHORIZED,
            GatewayError::ModelNotAllowed(_) | GatewayError::EndpointNotAllowed(_) => {
                StatusCode::FORBIDDEN
            }
            GatewayError::ObjectNotFound { .. } => StatusCode::NOT_FOUND,
            GatewayError::ClientRateLimited { .. } | GatewayError::TooManyConcurrent { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            GatewayError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `type`.
    pub fn error_type(&self) -> &'static str {
        match self {
            GatewayError::InvalidJson(_)
            | GatewayError::MissingModel
            | GatewayError::IntegerAboveMax { .. }
            | GatewayError::BodyTooLarge { .. }
            | GatewayError::ModelNotFound(_)
            | GatewayError::NotFound { .. }
            | GatewayError::UpgradeRequired
            | GatewayError::InvalidPath(_)
            | GatewayError::EndpointUnsupported { .. } => "invalid_request_error",
            GatewayError::RateLimited { .. } => "rate_limit_error",
            GatewayError::Unauthorized
            | GatewayError::ModelNotAllowed(_)
            | GatewayError::EndpointNotAllowed(_)
            | GatewayError::ObjectNotFound { .. } => "invalid_request_error",
            GatewayError::ClientRateLimited { .. } | GatewayError::TooManyConcurrent { .. } => {
                "rate_limit_error"
            }
            GatewayError::AllFailed { .. }
            | GatewayError::Unavailable { .. }
            | GatewayError::DeadlineExceeded { .. }
            | GatewayError::Internal { .. } => "server_error",
        }
    }

    /// OpenAI's `code`.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            GatewayError::InvalidJson(_) => None,
            GatewayError::MissingModel => Some("missing_model"),
            GatewayError::IntegerAboveMax { .. } => Some("integer_above_max_value"),
            GatewayError::BodyTooLarge { .. } => Some("request_too_large"),
            GatewayError::ModelNotFound(_) => Some("model_not_found"),
            GatewayError::NotFound { .. } => Some("unknown_url"),
            GatewayError::UpgradeRequired => Some("websocket_not_supported"),
            GatewayError::InvalidPath(_) => Some("invalid_path"),
            GatewayError::EndpointUnsupported { .. } => Some("unsupported_endpoint"),
            GatewayError::RateLimited { .. } => Some("rate_limit_exceeded"),
            GatewayError::AllFailed { .. } => Some("upstream_error"),
            GatewayError::Unavailable { .. } => Some("upstream_unavailable"),
            GatewayError::DeadlineExceeded { .. } => Some("timeout"),
            GatewayError::Unauthorized => Some("invalid_api_key"),
            GatewayError::ModelNotAllowed(_) => Some("model_not_allowed"),
            GatewayError::EndpointNotAllowed(_) => Some("endpoint_not_allowed"),
            GatewayError::ObjectNotFound { .. } => Some("not_found"),
            GatewayError::ClientRateLimited { .. } => Some("rate_limit_exceeded"),
            GatewayError::TooManyConcurrent { .. } => Some("too_many_concurrent_requests"),
            GatewayError::Internal { .. } => Some("internal_error"),
        }
    }

    /// OpenAI's `param`.
    pub fn param(&self) -> Option<&'static str> {
        match self {
            GatewayError::MissingModel
            | GatewayError::ModelNotFound(_)
            | GatewayError::ModelNotAllowed(_)
            | GatewayError::EndpointUnsupported { .. } => Some("model"),
            GatewayError::IntegerAboveMax { param, .. } => Some(param),
            GatewayError::ObjectNotFound { param, .. } => *param,
            GatewayError::EndpointNotAllowed(_) => None,
            GatewayError::InvalidJson(_)
            | GatewayError::BodyTooLarge { .. }
            | GatewayError::NotFound { .. }
            | GatewayError::UpgradeRequired
            | GatewayError::InvalidPath(_)
            | GatewayError::RateLimited { .. }
            | GatewayError::AllFailed { .. }
            | GatewayError::Unavailable { .. }
            | GatewayError::DeadlineExceeded { .. }
            | GatewayError::Unauthorized
            | GatewayError::ClientRateLimited { .. }
            | GatewayError::TooManyConcurrent { .. }
            | GatewayError::Internal { .. } => None,
        }
    }

    /// Whether the same request may succeed later (drives `x-should-retry`).
    pub fn is_retryable(&self) -> bool {
        match self {
            GatewayError::InvalidJson(_)
            | GatewayError::MissingModel
            | GatewayError::IntegerAboveMax { .. }
            | GatewayError::BodyTooLarge { .. }
            | GatewayError::ModelNotFound(_)
            | GatewayError::NotFound { .. }
            | GatewayError::UpgradeRequired
            | GatewayError::InvalidPath(_)
            | GatewayError::EndpointUnsupported { .. } => false,
            GatewayError::Unauthorized
            | GatewayError::ModelNotAllowed(_)
            | GatewayError::EndpointNotAllowed(_)
            | GatewayError::ObjectNotFound { .. } => false,
            GatewayError::ClientRateLimited { retry_after, .. } => retry_after.is_some(),
            GatewayError::RateLimited { .. }
            | GatewayError::AllFailed { .. }
            | GatewayError::Unavailable { .. }
            | GatewayError::DeadlineExceeded { .. }
            | GatewayError::TooManyConcurrent { .. }
            | GatewayError::Internal { .. } => true,
        }
    }

    /// Closed-set label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            GatewayError::InvalidJson(_) => "invalid_json",
            GatewayError::MissingModel => "missing_model",
            GatewayError::IntegerAboveMax { .. } => "integer_above_max",
            GatewayError::BodyTooLarge { .. } => "body_too_large",
            GatewayError::ModelNotFound(_) => "model_not_found",
            GatewayError::NotFound { .. } => "not_found",
            GatewayError::UpgradeRequired => "upgrade_required",
            GatewayError::InvalidPath(_) => "invalid_path",
            GatewayError::EndpointUnsupported { .. } => "unsupported_endpoint",
            GatewayError::RateLimited { .. } => "rate_limited",
            GatewayError::AllFailed { .. } => "all_failed",
            GatewayError::Unavailable { .. } => "unavailable",
            GatewayError::DeadlineExceeded { .. } => "deadline",
            GatewayError::Unauthorized => "unauthorized",
            GatewayError::ModelNotAllowed(_) => "model_not_allowed",
            GatewayError::EndpointNotAllowed(_) => "endpoint_not_allowed",
            GatewayError::ObjectNotFound { .. } => "object_not_found",
            GatewayError::ClientRateLimited { .. } => "client_rate_limited",
            GatewayError::TooManyConcurrent { .. } => "too_many_concurrent",
            GatewayError::Internal { .. } => "internal",
        }
    }

    /// The wait to advertise in `retry-after`, when there is one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            GatewayError::RateLimited { retry_after, .. }
            | GatewayError::Unavailable { retry_after, .. } => Some(*retry_after),
            GatewayError::ClientRateLimited { retry_after, .. } => *retry_after,
            GatewayError::TooManyConcurrent { .. } => Some(Duration::from_secs(1)),
            _ => None,
        }
    }

    /// The OpenAI-shaped answer (no side effects; the caller adds the request id header).
    pub fn to_response(&self) -> Response<Body> {
        let envelope = ErrorEnvelope::new(
            self.to_string(),
            self.error_type(),
            self.param(),
            self.code(),
        );
        let mut resp = Response::new(Body::from(envelope.to_json()));
        *resp.status_mut() = self.status();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if !self.is_retryable() {
            headers.insert("x-should-retry", HeaderValue::from_static("false"));
        }
        let retry_after = self.retry_after().or_else(|| {
            // 503/502/504 without a known time: a short hint keeps SDK retries from hammering.
            matches!(self.status().as_u16(), 503).then_some(Duration::from_secs(1))
        });
        if let Some(wait) = retry_after {
            set_retry_after(headers, wait);
        }
        resp
    }
}

fn retry_hint(wait: &Option<Duration>) -> String {
    match wait {
        Some(w) => format!("retry after {}ms", w.as_millis().max(1)),
        None => "this request alone is larger than the limit".into(),
    }
}

/// Sets `retry-after` (whole seconds, rounded up) and `retry-after-ms`.
pub fn set_retry_after(headers: &mut http::HeaderMap, wait: Duration) {
    let ms = wait.as_millis().max(1);
    let secs = ms.div_ceil(1000);
    headers.insert(header::RETRY_AFTER, HeaderValue::from(secs as u64));
    headers.insert("retry-after-ms", HeaderValue::from(ms as u64));
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_json(resp: Response<Body>) -> serde_json::Value {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn model_not_found_is_openai_shaped() {
        let resp = GatewayError::ModelNotFound("gpt-9".into()).to_response();
        assert_eq!(resp.status(), 404);
        assert_eq!(resp.headers()["x-should-retry"], "false");
        let json = body_json(resp).await;
        assert_eq!(
            json,
            serde_json::json!({"error": {"message": "The model `gpt-9` does not exist or you do not have access to it.", "type": "invalid_request_error", "param": "model", "code": "model_not_found"}})
        );
    }

    #[tokio::test]
    async fn rate_limited_carries_retry_after_headers() {
        let resp = GatewayError::RateLimited {
            retry_after: Duration::from_millis(1500),
            summary: "x".into(),
        }
        .to_response();
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["retry-after"], "2");
        assert_eq!(resp.headers()["retry-after-ms"], "1500");
        assert!(resp.headers().get("x-should-retry").is_none());
    }

    #[test]
    fn statuses_follow_the_kind() {
        assert_eq!(GatewayError::BodyTooLarge { limit: 1 }.status(), 413);
        assert_eq!(GatewayError::InvalidJson("x".into()).status(), 400);
        assert_eq!(
            GatewayError::DeadlineExceeded {
                summary: String::new()
            }
            .status(),
            504
        );
        assert_eq!(
            GatewayError::AllFailed {
                status: StatusCode::BAD_GATEWAY,
                summary: String::new()
            }
            .status(),
            502
        );
    }
}
