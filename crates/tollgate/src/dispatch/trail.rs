//! The state one request carries through the fallback, retry and key-selection layers (its
//! [`Trail`]: attempts made, keys excluded, the last failure, why the walk stopped), and the
//! final answer when no attempt succeeded.

use crate::error::GatewayError;
use crate::provider::classify::Kind;
use crate::provider::{Provider, Refusal};
use crate::request::{Answer, Served};
use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

/// One finished attempt, for the failure summary.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    /// Provider index.
    pub provider: usize,
    /// Key id.
    pub key: String,
    /// Its outcome.
    pub kind: Kind,
    /// Upstream status, when there was one.
    pub status: Option<u16>,
    /// Why a transport failure failed (connect refused, timeout), for the client's message.
    pub detail: Option<String>,
}

/// An upstream error answer kept to return as is.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Upstream status.
    pub status: StatusCode,
    /// Upstream headers.
    pub headers: HeaderMap,
    /// The error body, in OpenAI's shape.
    pub body: Bytes,
    /// Provider index.
    pub provider: usize,
    /// Key id (`-` when no key was used).
    pub key: String,
}

impl Failure {
    /// The 400 for a request a target's dialect cannot express.
    pub fn refused(refusal: &Refusal, provider: usize) -> Self {
        let envelope = openai_types::ErrorEnvelope::new(
            refusal.message.clone(),
            "invalid_request_error",
            refusal.param.as_deref(),
            Some("unsupported_parameter"),
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        Failure {
            status: StatusCode::BAD_REQUEST,
            headers,
            body: Bytes::from(envelope.to_json()),
            provider,
            key: "-".into(),
        }
    }
}

/// Why a request's walk stopped before its chain was exhausted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The request deadline passed, or a wait would have ended past it.
    Deadline,
    /// The retry budget refused another attempt.
    BudgetSpent,
}

/// What the walk has learned so far.
#[derive(Debug, Default)]
pub struct TrailState {
    /// Every attempt, in order.
    pub attempts: Vec<AttemptRecord>,
    /// (provider, key) pairs excluded for the rest of the request.
    pub hard: Vec<(usize, usize)>,
    /// (provider, key) pairs that failed transiently: reused only after backoff.
    pub soft: Vec<(usize, usize)>,
    /// The last upstream error answer worth returning as is.
    pub last_failure: Option<Failure>,
    /// The last attempt's outcome.
    pub last_kind: Option<Kind>,
    /// The wait the last attempt's answer asked for.
    pub last_wait: Option<Duration>,
    /// When the earliest excluded or cooling key recovers.
    pub earliest: Option<Instant>,
    /// Why the walk stopped early.
    pub stop: Option<StopReason>,
    /// Backoff waits so far (the exponent of the next one).
    pub backoffs: u32,
}

impl TrailState {
    /// Notes a recovery instant.
    pub fn note_earliest(&mut self, at: Instant) {
        self.earliest = Some(self.earliest.map_or(at, |e| e.min(at)));
    }

    /// The keys of `provider` excluded for the request, and those awaiting a backoff.
    pub fn exclusions(&self, provider: usize) -> (Vec<usize>, Vec<usize>) {
        let of = |v: &[(usize, usize)]| {
            v.iter()
                .filter(|(p, _)| *p == provider)
                .map(|(_, k)| *k)
                .collect()
        };
        (of(&self.hard), of(&self.soft))
    }

    fn summary(&self, providers: &[Provider]) -> String {
        if self.attempts.is_empty() {
            return "no attempt could be made".into();
        }
        let parts: Vec<String> = self
            .attempts
            .iter()
            .map(|a| {
                let provider = providers[a.provider].name();
                match (a.status, &a.detail) {
                    (Some(s), _) => format!("{provider}/{}: {} ({s})", a.key, a.kind.label()),
                    (None, Some(d)) => format!("{provider}/{}: {} ({d})", a.key, a.kind.label()),
                    (None, None) => format!("{provider}/{}: {}", a.key, a.kind.label()),
                }
            })
            .collect();
        parts.join(", ")
    }
}

/// A request's shared walk state; clones share it. Locked only briefly, never across a wait.
#[derive(Debug, Clone, Default)]
pub struct Trail(Arc<Mutex<TrailState>>);

impl Trail {
    /// The state, locked.
    pub fn lock(&self) -> MutexGuard<'_, TrailState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether any attempt was made.
    pub fn has_attempts(&self) -> bool {
        !self.lock().attempts.is_empty()
    }

    /// The number of attempts made.
    pub fn attempts(&self) -> u32 {
        self.lock().attempts.len() as u32
    }
}

/// An upstream error returned as is.
pub fn pass_through(f: Failure, providers: &[Provider], attempts: u32) -> Answer {
    Answer {
        status: f.status,
        headers: f.headers,
        body: Body::from(f.body),
        provider: providers[f.provider].name().to_owned(),
        key: f.key,
        attempts,
        served: Served::Failed,
    }
}

/// The answer when the chain is exhausted or the walk stopped: the upstream's own error where
/// it says more than ours, else the gateway's error whose status follows the attempts.
pub fn final_error(trail: &Trail, providers: &[Provider]) -> Result<Answer, GatewayError> {
    let mut walk = trail.lock();
    let summary = walk.summary(providers);
    let attempts = walk.attempts.len() as u32;
    // The upstream's own error says more than ours: when the budget stopped retries, when the
    // last target also found the context too long, or when no attempt could be made at all
    // (every target refused the request).
    let keep_upstream_error = walk.stop == Some(StopReason::BudgetSpent)
        || walk.last_kind == Some(Kind::ContextTooLong)
        || walk.attempts.is_empty();
    if keep_upstream_error {
        if let Some(f) = walk.last_failure.take() {
            return Ok(pass_through(f, providers, attempts));
        }
    }
    if walk.stop == Some(StopReason::Deadline) {
        return Err(GatewayError::DeadlineExceeded { summary });
    }
    let all_limited = walk.attempts.iter().all(|a| a.kind == Kind::RateLimited);
    if all_limited {
        if let Some(at) = walk.earliest {
            let retry_after = at
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            return Err(GatewayError::RateLimited {
                retry_after,
                summary,
            });
        }
    }
    let timed_out = walk.attempts.iter().any(|a| a.kind == Kind::Timeout);
    let status = if timed_out {
        StatusCode::GATEWAY_TIMEOUT
    } else {
        StatusCode::BAD_GATEWAY
    };
    Err(GatewayError::AllFailed { status, summary })
}
