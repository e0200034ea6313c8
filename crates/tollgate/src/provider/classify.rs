//! The outcome table of ARCHITECTURE.md as one pure function: what an upstream answer means
//! for the key, the target and the request, plus the wait the provider asked for.

use crate::units::parse_duration;
use http::HeaderMap;
use std::time::{Duration, SystemTime};

/// What came back from one upstream attempt.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    /// Response headers arrived; `body` is the error body for non-2xx answers (else empty).
    Response {
        /// HTTP status.
        status: u16,
        /// Response headers.
        headers: &'a HeaderMap,
        /// Error body (bounded), empty on success.
        body: &'a [u8],
    },
    /// A 200 stream whose first event was an error.
    StreamError {
        /// The JSON of the error event.
        body: &'a [u8],
    },
    /// TCP/TLS connection failed.
    ConnectError,
    /// No headers (or no first stream event) within the timeout.
    Timeout,
    /// The connection broke otherwise.
    TransportError,
}

/// The kinds of the outcome table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// 2xx: done.
    Success,
    /// 429 rate limit: cool the key, next key at once.
    RateLimited,
    /// Out of money: disable the key, next key or target.
    QuotaExhausted,
    /// 401/403: disable the key.
    KeyRejected,
    /// 429 "Request too large" for this key's tier: next key, the key stays healthy.
    KeyTooSmall,
    /// 5xx, 408, 409, 529, connect or transport error: back off and retry.
    Transient,
    /// No answer in time: retry like `Transient`; a final failure answers 504.
    Timeout,
    /// 400 `context_length_exceeded`: next target at once.
    ContextTooLong,
    /// Any other 4xx: returned to the client as is.
    ClientError,
}

impl Kind {
    /// Closed-set label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Success => "success",
            Kind::RateLimited => "rate_limited",
            Kind::QuotaExhausted => "quota_exhausted",
            Kind::KeyRejected => "key_rejected",
            Kind::KeyTooSmall => "key_too_small",
            Kind::Transient => "transient",
            Kind::Timeout => "timeout",
            Kind::ContextTooLong => "context_too_long",
            Kind::ClientError => "client_error",
        }
    }

    /// Every kind, for pre-registering metric series.
    pub const ALL: [Kind; 9] = [
        Kind::Success,
        Kind::RateLimited,
        Kind::QuotaExhausted,
        Kind::KeyRejected,
        Kind::KeyTooSmall,
        Kind::Transient,
        Kind::Timeout,
        Kind::ContextTooLong,
        Kind::ClientError,
    ];
}

/// The classification of one outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Which row of the table.
    pub kind: Kind,
    /// How long the provider asked us to wait, when it said.
    pub wait: Option<Duration>,
}

const QUOTA_CODES: [&str; 6] = [
    "insufficient_quota",
    "credit_balance_exhausted",
    "organization_spend_limit_exceeded",
    "project_spend_limit_exceeded",
    "organization_usage_limit_exceeded",
    "enforced_spend_limit_reached",
];

/// The error fields of an OpenAI or Anthropic error body.
#[derive(Debug, Default)]
struct ErrorFields {
    kind: Option<String>,
    code: Option<String>,
    message: String,
}

fn error_fields(body: &[u8]) -> ErrorFields {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return ErrorFields::default();
    };
    let err = &value["error"];
    let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
    ErrorFields {
        kind: text(&err["type"]),
        // Anthropic puts spend-limit codes under error.details.error_code.
        code: text(&err["code"]).or_else(|| text(&err["details"]["error_code"])),
        message: text(&err["message"]).unwrap_or_default(),
    }
}

/// Classifies one attempt; `now` is the wall clock, for `retry-after` given as an HTTP date.
pub fn classify(outcome: Outcome<'_>, now: SystemTime) -> Verdict {
    let (status, headers, body) = match outcome {
        Outcome::Response {
            status,
            headers,
            body,
        } => (status, Some(headers), body),
        Outcome::StreamError { body } => (0, None, body),
        Outcome::ConnectError | Outcome::TransportError => {
            return Verdict {
                kind: Kind::Transient,
                wait: None,
            }
        }
        Outcome::Timeout => {
            return Verdict {
                kind: Kind::Timeout,
                wait: None,
            }
        }
    };
    if (200..300).contains(&status) {
        return Verdict {
            kind: Kind::Success,
            wait: None,
        };
    }
    let fields = error_fields(body);
    let is = |s: &str| fields.code.as_deref() == Some(s) || fields.kind.as_deref() == Some(s);
    let quota = QUOTA_CODES.iter().any(|c| is(c));
    let kind = match status {
        0 if quota => Kind::QuotaExhausted,
        0 if is("rate_limit_exceeded") || is("rate_limit_error") => Kind::RateLimited,
        0 => Kind::Transient,
        429 if quota => Kind::QuotaExhausted,
        429 if fields.message.starts_with("Request too large") => Kind::KeyTooSmall,
        429 => Kind::RateLimited,
        402 => Kind::QuotaExhausted,
        401 | 403 => Kind::KeyRejected,
        408 | 409 | 500..=599 => Kind::Transient,
        400 if is("context_length_exceeded") || fields.message.contains("prompt is too long") => {
            Kind::ContextTooLong
        }
        _ => Kind::ClientError,
    };
    let wait = match (kind, headers) {
        (Kind::RateLimited | Kind::Transient, Some(h)) => {
            provider_wait(h, now, kind == Kind::RateLimited, fields.kind.as_deref())
        }
        _ => None,
    };
    Verdict { kind, wait }
}

/// The wait an answer asks for: `retry-after-ms`, `x-ms-retry-after-ms`, `retry-after` (seconds or
/// HTTP date), then, for rate limits, OpenAI's `x-ratelimit-reset-{requests,tokens}`.
pub fn provider_wait(
    headers: &HeaderMap,
    now: SystemTime,
    rate_limited: bool,
    limit_type: Option<&str>,
) -> Option<Duration> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let millis = |v: &str| {
        v.parse::<f64>()
            .ok()
            .filter(|ms| *ms >= 0.0)
            .and_then(|ms| Duration::try_from_secs_f64(ms / 1000.0).ok())
    };
    if let Some(d) = get("retry-after-ms")
        .and_then(millis)
        .or_else(|| get("x-ms-retry-after-ms").and_then(millis))
    {
        return Some(d);
    }
    if let Some(v) = get("retry-after") {
        if let Ok(secs) = v.parse::<f64>() {
            return (secs >= 0.0)
                .then(|| Duration::try_from_secs_f64(secs).ok())
                .flatten();
        }
        if let Ok(at) = httpdate::parse_http_date(v) {
            return Some(at.duration_since(now).unwrap_or(Duration::ZERO));
        }
    }
    if !rate_limited {
        return None;
    }
    let requests = get("x-ratelimit-reset-requests").and_then(parse_duration);
    let tokens = get("x-ratelimit-reset-tokens").and_then(parse_duration);
    match limit_type {
        Some("requests") => requests.or(tokens),
        Some("tokens") => tokens.or(requests),
        _ => requests.max(tokens),
    }
}

#[cfg(test)]
mod tests;
