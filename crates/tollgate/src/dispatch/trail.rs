//! The state one request carries through the fallback, retry and key-selection layers (its
//! [`Trail`]: attempts made, keys excluded, the last failure, why the walk stopped), and the
//! final answer when no attempt succeeded.

use crate::error::GatewayError;
use crate::key_pool::Recovery;
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
    pub key: std::sync::Arc<str>,
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
        Failure::invalid(
            refusal.message.clone(),
            refusal.param.as_deref(),
            "unsupported_parameter",
            provider,
        )
    }

    /// A 400 `invalid_request_error` the gateway answers for `provider` without an attempt.
    pub fn invalid(message: String, param: Option<&str>, code: &str, provider: usize) -> Self {
        let envelope =
            openai_types::ErrorEnvelope::new(message, "invalid_request_error", param, Some(code));
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
    /// The request deadline passed.
    Deadline,
}

/// A key of a provider, as `(provider, key)` indexes.
pub type KeyAt = (usize, usize);

/// What the walk has learned so far.
#[derive(Debug, Default)]
pub struct TrailState {
    /// Every attempt, in order.
    pub attempts: Vec<AttemptRecord>,
    /// Keys excluded for the rest of the request.
    pub hard: Vec<KeyAt>,
    /// Keys that failed transiently, each reusable from its instant (its own ask, or at once
    /// after a backoff), and only once the keys not yet tried are gone.
    pub soft: Vec<(KeyAt, Instant)>,
    /// The last upstream error answer worth returning as is.
    pub last_failure: Option<Failure>,
    /// The last attempt's outcome.
    pub last_kind: Option<Kind>,
    /// When excluded, cooling, disabled or ejected keys recover.
    pub recovery: Recovery,
    /// The earliest instant a key's bucket could take the request, when buckets were full.
    pub refill: Option<Instant>,
    /// Time spent waiting for buckets so far (bounded by `max_queue_wait` in total).
    pub queued: Duration,
    /// Why the walk stopped early.
    pub stop: Option<StopReason>,
    /// A target's retry budget was spent.
    pub budget_spent: bool,
    /// A wait the upstream asked for did not fit before the deadline.
    pub wait_too_long: bool,
    /// Backoff waits so far (the exponent of the next one).
    pub backoffs: u32,
}

impl TrailState {
    /// Notes when a cooling key recovers.
    pub fn note_cooling(&mut self, at: Instant) {
        self.recovery = self.recovery.merge(Recovery {
            cooling: Some(at),
            probe: None,
        });
    }

    /// Notes when a bucket could take the request.
    pub fn note_refill(&mut self, at: Instant) {
        self.refill = Some(self.refill.map_or(at, |e| e.min(at)));
    }

    /// Excludes a key until `ready` (a transient failure; never earlier than a prior mark).
    pub fn soften(&mut self, key: KeyAt, ready: Instant) {
        match self.soft.iter_mut().find(|(k, _)| *k == key) {
            Some((_, at)) => *at = ready,
            None => self.soft.push((key, ready)),
        }
    }

    /// The keys of `provider` excluded for the request, and those that failed transiently.
    pub fn exclusions(&self, provider: usize) -> (Vec<usize>, Vec<usize>) {
        let hard = self
            .hard
            .iter()
            .filter(|(p, _)| *p == provider)
            .map(|(_, k)| *k)
            .collect();
        let soft = self
            .soft
            .iter()
            .filter(|((p, _), _)| *p == provider)
            .map(|((_, k), _)| *k)
            .collect();
        (hard, soft)
    }

    /// The soft-excluded keys of `provider` that may not be reused yet at `now`.
    pub fn not_ready(&self, provider: usize, now: Instant) -> Vec<usize> {
        self.soft
            .iter()
            .filter(|((p, _), at)| *p == provider && *at > now)
            .map(|((_, k), _)| *k)
            .collect()
    }

    /// When the first soft-excluded key of `provider` not in `hard` may be reused.
    pub fn first_ready(&self, provider: usize) -> Option<Instant> {
        self.soft
            .iter()
            .filter(|(key, _)| key.0 == provider && !self.hard.contains(key))
            .map(|(_, at)| *at)
            .min()
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

    /// The gateway's own error for a walk that found no answer.
    fn gateway_error(&self, summary: String, now: Instant) -> GatewayError {
        let wait = |at: Instant| {
            at.saturating_duration_since(now)
                .max(Duration::from_millis(1))
        };
        if self.stop == Some(StopReason::Deadline) {
            return GatewayError::DeadlineExceeded { summary };
        }
        let all_limited =
            !self.attempts.is_empty() && self.attempts.iter().all(|a| a.kind == Kind::RateLimited);
        if self.attempts.is_empty() || all_limited {
            if let (Some(at), true) = (self.recovery.probe, self.recovery.cooling.is_none()) {
                return GatewayError::Unavailable {
                    retry_after: wait(at),
                    summary: "every key is disabled or ejected".into(),
                };
            }
            let at = self
                .recovery
                .earliest()
                .into_iter()
                .chain(self.refill)
                .min();
            if let Some(at) = at {
                return GatewayError::RateLimited {
                    retry_after: wait(at),
                    summary,
                };
            }
        }
        let timed_out = self.attempts.iter().any(|a| a.kind == Kind::Timeout);
        let status = if timed_out {
            StatusCode::GATEWAY_TIMEOUT
        } else {
            StatusCode::BAD_GATEWAY
        };
        GatewayError::AllFailed { status, summary }
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
        provider: providers[f.provider].name().into(),
        key: f.key.as_str().into(),
        attempts,
        served: Served::Failed,
        hold: None,
    }
}

/// The answer when the chain is exhausted or the walk stopped: the upstream's own error where
/// it says more than ours, else the gateway's error (whose status follows the attempts), with
/// the attempt count and the last attempt's provider and key.
pub fn final_error(trail: &Trail, providers: &[Provider]) -> Answer {
    let mut walk = trail.lock();
    let attempts = walk.attempts.len() as u32;
    // The upstream's own error says more than ours: when a budget stopped retries, when a wait
    // it asked for did not fit, when the last target also found the context too long, or when
    // no attempt could be made at all because every target refused the request.
    let keep_upstream_error = walk.budget_spent
        || walk.wait_too_long
        || matches!(
            walk.last_kind,
            Some(Kind::ContextTooLong | Kind::ModelUnavailable | Kind::ClientError)
        )
        || walk.attempts.is_empty();
    if keep_upstream_error {
        if let Some(f) = walk.last_failure.take() {
            return pass_through(f, providers, attempts);
        }
    }
    let summary = walk.summary(providers);
    let error = walk.gateway_error(summary, Instant::now());
    tracing::debug!(error = error.metric_label(), "walk ended without an answer");
    let (provider, key) = match walk.attempts.last() {
        Some(a) => (providers[a.provider].name().into(), a.key.as_ref().into()),
        None => ("-".into(), "-".into()),
    };
    let (parts, body) = error.to_response().into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
        provider,
        key,
        attempts,
        served: Served::Failed,
        hold: None,
    }
}
