//! The state one request carries across its attempts and targets (`Walk`), and the final
//! answer when no attempt succeeded.

use super::classify::Kind;
use super::{Answer, Dispatcher, Served};
use crate::error::GatewayError;
use crate::provider;
use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use std::time::Duration;
use tokio::time::Instant;

/// One finished attempt, for the failure summary.
#[derive(Debug, Clone)]
pub(super) struct AttemptRecord {
    pub(super) provider: usize,
    pub(super) key: String,
    pub(super) kind: Kind,
    pub(super) status: Option<u16>,
    /// Why a transport failure failed (connect refused, timeout), for the client's message.
    pub(super) detail: Option<String>,
}

/// An upstream error answer kept to return as is.
#[derive(Debug, Clone)]
pub(super) struct Failure {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
    pub(super) provider: usize,
    pub(super) key: String,
}

impl Failure {
    /// The 400 for a request a target's dialect cannot express.
    pub(super) fn refused(e: &provider::anthropic::TranslateError, provider: usize) -> Self {
        let param = match e {
            provider::anthropic::TranslateError::Unsupported { param, .. } => param.as_deref(),
            provider::anthropic::TranslateError::Invalid(_) => None,
        };
        let envelope = openai_types::ErrorEnvelope::new(
            e.to_string(),
            "invalid_request_error",
            param,
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

/// Per-request state shared by every attempt and target.
#[derive(Debug, Default)]
pub(super) struct Walk {
    pub(super) attempts: Vec<AttemptRecord>,
    /// (provider, key) pairs excluded for the rest of the request.
    pub(super) hard: Vec<(usize, usize)>,
    /// (provider, key) pairs that failed transiently: reused only after backoff.
    pub(super) soft: Vec<(usize, usize)>,
    pub(super) last_failure: Option<Failure>,
    pub(super) last_kind: Option<Kind>,
    pub(super) last_wait: Option<Duration>,
    pub(super) earliest: Option<Instant>,
    pub(super) deadline_hit: bool,
    pub(super) budget_spent: bool,
    pub(super) backoffs: u32,
}

impl Walk {
    pub(super) fn note_earliest(&mut self, at: Instant) {
        self.earliest = Some(self.earliest.map_or(at, |e| e.min(at)));
    }

    pub(super) fn summary(&self, d: &Dispatcher) -> String {
        if self.attempts.is_empty() {
            return "no attempt could be made".into();
        }
        let parts: Vec<String> = self
            .attempts
            .iter()
            .map(|a| {
                let provider = &d.settings.providers[a.provider].name;
                match a.status {
                    Some(s) => format!("{provider}/{}: {} ({s})", a.key, a.kind.label()),
                    None => match &a.detail {
                        Some(d) => format!("{provider}/{}: {} ({d})", a.key, a.kind.label()),
                        None => format!("{provider}/{}: {}", a.key, a.kind.label()),
                    },
                }
            })
            .collect();
        parts.join(", ")
    }
}

/// Why no key could be picked.
#[derive(Debug, Default)]
pub(super) struct NoKey {
    /// When the earliest cooling or disabled key recovers.
    pub(super) earliest: Option<Instant>,
    /// Shortest wait until a key's bucket can take the request.
    pub(super) refill: Option<Duration>,
}

/// What one target's loop ended with.
pub(super) enum Step {
    Done(Answer),
    /// Return this upstream error to the client as is.
    PassThrough(Failure),
    /// Move to the next target for this reason.
    Next(&'static str),
    /// Stop walking (deadline or budget).
    Stop,
}

impl Dispatcher {
    pub(super) fn final_error(&self, mut walk: Walk) -> Result<Answer, GatewayError> {
        let summary = walk.summary(self);
        // The upstream's own error says more than ours: when the budget stopped retries, when the
        // last target also found the context too long, or when no attempt could be made at all
        // (every target refused the request).
        let keep_upstream_error = walk.budget_spent
            || walk.last_kind == Some(Kind::ContextTooLong)
            || walk.attempts.is_empty();
        if keep_upstream_error {
            if let Some(f) = walk.last_failure.take() {
                return Ok(self.pass_through(f, &walk));
            }
        }
        if walk.deadline_hit {
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

    pub(super) fn pass_through(&self, f: Failure, walk: &Walk) -> Answer {
        Answer {
            status: f.status,
            headers: f.headers,
            body: Body::from(f.body),
            provider: self.settings.providers[f.provider].name.clone(),
            key: f.key,
            attempts: walk.attempts.len() as u32,
            served: Served::Failed,
        }
    }
}
