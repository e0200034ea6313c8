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
    /// The connection cannot work as configured: the upstream's certificate is not trusted,
    /// or the proxy refused the gateway's credentials.
    SetupError,
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
    /// 401/403 about the key: disable it.
    KeyRejected,
    /// 403/404 naming the request's model, deployment or a permission: this target does not
    /// serve it for this key's project; the key stays healthy, the next target is asked.
    ModelUnavailable,
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
    /// The provider cannot be reached as configured (an untrusted certificate, a proxy that
    /// refuses the gateway's credentials): no key can fix it, so the next target is asked at
    /// once and no key is blamed.
    Misconfigured,
}

impl Kind {
    /// Closed-set label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Success => "success",
            Kind::RateLimited => "rate_limited",
            Kind::QuotaExhausted => "quota_exhausted",
            Kind::KeyRejected => "key_rejected",
            Kind::ModelUnavailable => "model_unavailable",
            Kind::KeyTooSmall => "key_too_small",
            Kind::Transient => "transient",
            Kind::Timeout => "timeout",
            Kind::ContextTooLong => "context_too_long",
            Kind::ClientError => "client_error",
            Kind::Misconfigured => "misconfigured",
        }
    }

    /// Every kind, for pre-registering metric series.
    pub const ALL: [Kind; 11] = [
        Kind::Success,
        Kind::RateLimited,
        Kind::QuotaExhausted,
        Kind::KeyRejected,
        Kind::ModelUnavailable,
        Kind::KeyTooSmall,
        Kind::Transient,
        Kind::Timeout,
        Kind::ContextTooLong,
        Kind::ClientError,
        Kind::Misconfigured,
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

/// Codes (in `error.code`, `error.type` or Anthropic's `error.details.error_code`) that mean the
/// key's account is out of money or over a spend limit, whatever the status.
const QUOTA_CODES: [&str; 9] = [
    "insufficient_quota",
    "billing_hard_limit_reached",
    "billing_not_active",
    "credit_balance_exhausted",
    "organization_spend_limit_exceeded",
    "project_spend_limit_exceeded",
    "organization_usage_limit_exceeded",
    "enforced_spend_limit_reached",
    "billing_error",
];

/// Phrases of error messages that mean the same when no code says it (Anthropic answers a spent
/// credit balance with a 400 `invalid_request_error`), matched lowercased.
const QUOTA_PHRASES: [&str; 4] = [
    "credit balance is too low",
    "exceeded your current quota",
    "spend limit",
    "billing hard limit",
];

/// Codes that say the target does not serve this request's model (or endpoint) for this key's
/// project: nothing is wrong with the key.
const NOT_SERVED_CODES: [&str; 5] = [
    "model_not_found",
    "DeploymentNotFound",
    "OperationNotSupported",
    "model_not_available",
    "unsupported_model",
];

/// The longest wait any upstream value can ask for; everything read is clamped to it.
pub const MAX_WAIT: Duration = Duration::from_secs(7 * 24 * 3600);

/// A rate-limit wait this long is a spend or daily limit, not a per-minute one: the key is out
/// for that window (like a quota) and the request moves on now.
pub const LONG_WAIT: Duration = Duration::from_secs(3600);

/// The error fields of an OpenAI, Responses or Anthropic error body.
#[derive(Debug, Default)]
struct ErrorFields {
    kind: Option<String>,
    code: Option<String>,
    message: String,
}

impl ErrorFields {
    fn read(body: &[u8]) -> ErrorFields {
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
            return ErrorFields::default();
        };
        // A Responses stream's `response.failed` event carries it under `response.error`, its
        // `error` event at the top level (`{"type":"error","code":…,"message":…}`).
        let err = match (&value["error"], &value["response"]["error"]) {
            (serde_json::Value::Null, serde_json::Value::Null) => &value,
            (serde_json::Value::Null, err) | (err, _) => err,
        };
        let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
        ErrorFields {
            kind: text(&err["type"]),
            // Anthropic puts spend-limit codes under error.details.error_code.
            code: text(&err["code"]).or_else(|| text(&err["details"]["error_code"])),
            message: text(&err["message"]).unwrap_or_default(),
        }
    }

    fn is(&self, s: &str) -> bool {
        self.code.as_deref() == Some(s) || self.kind.as_deref() == Some(s)
    }

    fn is_quota(&self) -> bool {
        let message = self.message.to_ascii_lowercase();
        QUOTA_CODES.iter().any(|c| self.is(c)) || QUOTA_PHRASES.iter().any(|p| message.contains(p))
    }

    /// A 403/404 about the request's model, deployment or permission, not about the key.
    fn is_not_served(&self) -> bool {
        if NOT_SERVED_CODES.iter().any(|c| self.is(c)) {
            return true;
        }
        let message = self.message.to_ascii_lowercase();
        let names_model = message.contains("model") || message.contains("deployment");
        let about_access = [
            "access",
            "permission",
            "not found",
            "does not exist",
            "not allowed",
        ]
        .iter()
        .any(|p| message.contains(p));
        (names_model && about_access)
            || message.contains("missing scopes")
            || self.is("not_found_error") && names_model
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
        Outcome::SetupError => {
            return Verdict {
                kind: Kind::Misconfigured,
                wait: None,
            }
        }
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
    let fields = ErrorFields::read(body);
    let kind = kind_of(status, &fields);
    let wait = match kind {
        Kind::RateLimited | Kind::Transient | Kind::QuotaExhausted => {
            let header_wait = headers.and_then(|h| header_wait(h, now));
            let reset = || match (kind, headers) {
                (Kind::RateLimited, Some(h)) => reset_wait(h, fields.kind.as_deref()),
                _ => None,
            };
            header_wait
                .or_else(|| message_wait(&fields.message))
                .or_else(reset)
                .map(|d| d.min(MAX_WAIT))
        }
        _ => None,
    };
    // A rate limit asking for hours or days is a spend limit: out for that window.
    let kind = match (kind, wait) {
        (Kind::RateLimited, Some(w)) if w >= LONG_WAIT => Kind::QuotaExhausted,
        _ => kind,
    };
    Verdict { kind, wait }
}

/// The row of the table for an error answer (`status` 0 for an error inside a 200 stream).
fn kind_of(status: u16, fields: &ErrorFields) -> Kind {
    if fields.is_quota() {
        return Kind::QuotaExhausted;
    }
    match status {
        0 if fields.is("rate_limit_exceeded") || fields.is("rate_limit_error") => Kind::RateLimited,
        0 => Kind::Transient,
        429 if fields.message.starts_with("Request too large") => Kind::KeyTooSmall,
        429 => Kind::RateLimited,
        402 => Kind::QuotaExhausted,
        403 | 404 if fields.is_not_served() => Kind::ModelUnavailable,
        401 | 403 => Kind::KeyRejected,
        408 | 409 | 500..=599 => Kind::Transient,
        400 if fields.is("context_length_exceeded")
            || fields.message.contains("prompt is too long") =>
        {
            Kind::ContextTooLong
        }
        _ => Kind::ClientError,
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned())
}

/// A non-negative, finite number of seconds as a duration, clamped to [`MAX_WAIT`].
fn seconds(secs: f64) -> Option<Duration> {
    (secs >= 0.0)
        .then(|| Duration::try_from_secs_f64(secs.min(MAX_WAIT.as_secs_f64())).ok())
        .flatten()
}

/// `retry-after-ms`, `x-ms-retry-after-ms`, then `retry-after` (seconds or an HTTP date).
fn header_wait(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let millis = |v: String| v.parse::<f64>().ok().and_then(|ms| seconds(ms / 1000.0));
    if let Some(d) = header(headers, "retry-after-ms")
        .and_then(millis)
        .or_else(|| header(headers, "x-ms-retry-after-ms").and_then(millis))
    {
        return Some(d);
    }
    let v = header(headers, "retry-after")?;
    if let Ok(secs) = v.parse::<f64>() {
        return seconds(secs);
    }
    let at = httpdate::parse_http_date(&v).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_WAIT),
    )
}

/// OpenAI's `x-ratelimit-reset-*`: the one of the limit that was hit, else the later one.
fn reset_wait(headers: &HeaderMap, limit_type: Option<&str>) -> Option<Duration> {
    let requests = header(headers, "x-ratelimit-reset-requests").and_then(|v| parse_duration(&v));
    let tokens = header(headers, "x-ratelimit-reset-tokens").and_then(|v| parse_duration(&v));
    match limit_type {
        Some("requests") => requests.or(tokens),
        Some("tokens") => tokens.or(requests),
        _ => requests.max(tokens),
    }
}

/// The wait an error message names: OpenAI's "…Please try again in 6.379s…" ("in 20ms",
/// "in 1m30s", "in 2 seconds"), which is all a rate limit inside a stream carries.
pub fn message_wait(message: &str) -> Option<Duration> {
    const MARK: &str = "try again in ";
    let lower = message.to_ascii_lowercase();
    let at = lower.find(MARK)? + MARK.len();
    parse_leading_duration(&lower[at..]).map(|d| d.min(MAX_WAIT))
}

/// Reads a duration at the start of `text`: Go's `1m30.5s` / `20ms` / `6.379s`, or a number
/// followed by a unit word (`2 seconds`, `500 milliseconds`, `3 minutes`).
fn parse_leading_duration(text: &str) -> Option<Duration> {
    let token_len = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.'))
        .unwrap_or(text.len());
    let token = text[..token_len].trim_end_matches('.');
    if let Some(d) =
        parse_duration(token).filter(|_| !token.chars().all(|c| c.is_ascii_digit() || c == '.'))
    {
        return Some(d);
    }
    let value: f64 = token.parse().ok()?;
    let unit = text[token_len..]
        .trim_start()
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()?;
    let scale = match unit {
        "ms" | "millisecond" | "milliseconds" => 1e-3,
        "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
        "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
        "h" | "hour" | "hours" => 3600.0,
        "day" | "days" => 86_400.0,
        _ => return None,
    };
    seconds(value * scale)
}

#[cfg(test)]
mod tests;
