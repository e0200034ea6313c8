//! RPM/TPM limits for clients and upstream keys: token buckets in this process (`memory`) or
//! in Redis shared by replicas (`redis`), with a local fallback while Redis is unreachable.
//!
//! A take is all-or-nothing over the request bucket (1) and the token bucket (the estimate),
//! and answers the [`Charge`] it made; `refund` gives a charge (or its tokens) back when what
//! it paid for never happened; `reconcile` corrects the token bucket once real usage is
//! known; `sync` lowers a key's buckets to what the provider's `x-ratelimit-remaining-*`
//! headers report.
//!
//! Every count is clamped to [`MAX_TOKENS`] on its way in, so no number a client or an
//! upstream sends can wrap, turn negative in the Redis script, or stop being exact.

pub mod bucket;
pub mod estimate;
mod memory;
pub mod redis_store;

use crate::config::{Backend, StateSettings};
use crate::metrics::Metrics;
use memory::MemoryStore;
use redis_store::RedisStore;
pub use redis_store::SharedHealth;
use std::sync::Arc;
use std::time::Duration;

/// The largest token count the stores hold exactly: 2^53, where `f64` (and so Lua's numbers
/// in the Redis script) stop counting one by one. Estimates, usage and provider headers are
/// clamped to it; every configurable limit (`u32`) is far below it.
pub const MAX_TOKENS: u64 = 1 << 53;

/// The limits of one bucket pair (either may be absent).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Requests per minute.
    pub rpm: Option<u32>,
    /// Tokens per minute.
    pub tpm: Option<u32>,
}

impl Limits {
    /// No limit at all.
    pub fn is_none(&self) -> bool {
        self.rpm.is_none() && self.tpm.is_none()
    }

    fn share(self, replicas: u32) -> Limits {
        let part = |v: Option<u32>| v.map(|v| (v / replicas.max(1)).max(1));
        Limits {
            rpm: part(self.rpm),
            tpm: part(self.tpm),
        }
    }
}

/// Which limit refused a take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dimension {
    /// Requests per minute.
    Requests,
    /// Tokens per minute.
    Tokens,
}

impl Dimension {
    /// Closed-set label.
    pub fn label(self) -> &'static str {
        match self {
            Dimension::Requests => "requests",
            Dimension::Tokens => "tokens",
        }
    }
}

/// A refused take: which limit, and how long until it would pass (`None`: never, the take is
/// larger than the limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// The binding limit.
    pub dimension: Dimension,
    /// Time until the take fits.
    pub wait: Option<Duration>,
}

/// One bucket's level after a take, for `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Level {
    /// The per-minute limit.
    pub limit: u64,
    /// What is left now.
    pub remaining: u64,
    /// Time until the bucket is full again.
    pub reset: Duration,
}

/// Levels after a successful take.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Levels {
    /// Request bucket, when limited.
    pub requests: Option<Level>,
    /// Token bucket, when limited.
    pub tokens: Option<Level>,
}

/// What one successful take charged, and where: all that a refund may give back. Not `Clone`:
/// a charge is refunded at most once.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    requests: u64,
    tokens: u64,
    /// Charged in Redis (else in this process's buckets).
    shared: bool,
}

impl Charge {
    /// What a take of one request and `tokens` tokens charges buckets with `limits`.
    fn of(limits: Limits, tokens: u64, shared: bool) -> Charge {
        Charge {
            requests: u64::from(limits.rpm.is_some()),
            tokens: if limits.tpm.is_some() {
                tokens.min(MAX_TOKENS)
            } else {
                0
            },
            shared,
        }
    }

    /// The same charge without its request: what a failed upstream attempt gets back (the
    /// provider counts unsuccessful requests against its per-minute limit too).
    pub fn tokens_only(self) -> Charge {
        Charge {
            requests: 0,
            ..self
        }
    }

    /// Tokens charged.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    fn is_empty(&self) -> bool {
        self.requests == 0 && self.tokens == 0
    }
}

/// A successful take: the levels after it and what it charged.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// Levels after the take, for `x-ratelimit-*` headers.
    pub levels: Levels,
    /// What was taken.
    pub charge: Charge,
}

impl Levels {
    /// The levels as they are once `charge` is given back, for headers that do not
    /// understate what is left after a refund.
    pub fn refunded(mut self, charge: &Charge) -> Levels {
        let give = |level: &mut Option<Level>, n: u64| {
            if let Some(l) = level.as_mut().filter(|l| l.limit > 0) {
                l.remaining = l.remaining.saturating_add(n).min(l.limit);
                // n units given back are n units the refill no longer has to make up.
                let sooner = Duration::try_from_secs_f64(n as f64 * 60.0 / l.limit as f64);
                l.reset = l.reset.saturating_sub(sooner.unwrap_or(Duration::MAX));
            }
        };
        give(&mut self.requests, charge.requests);
        give(&mut self.tokens, charge.tokens);
        self
    }
}

/// Which bucket pair of a [`Limiter::take_pair`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client's.
    Client,
    /// The upstream key's.
    Key,
}

/// The limiter: memory, or Redis with a memory fallback.
#[derive(Debug)]
pub struct Limiter {
    local: MemoryStore,
    redis: Option<Arc<RedisStore>>,
    replicas: u32,
}

impl Limiter {
    /// A limiter for the configured backend.
    pub fn new(state: &StateSettings, metrics: &Metrics) -> Self {
        let redis = (state.backend == Backend::Redis)
            .then(|| Arc::new(RedisStore::new(state, metrics.clone())));
        Limiter {
            local: MemoryStore::default(),
            redis,
            replicas: state.replicas,
        }
    }

    fn degraded_limits(&self, limits: Limits) -> Limits {
        if self.redis.is_some() {
            limits.share(self.replicas)
        } else {
            limits
        }
    }

    /// Takes one request and `tokens` tokens (at most [`MAX_TOKENS`]) from bucket pair `id`.
    pub async fn take(&self, id: &str, limits: Limits, tokens: u64) -> Result<Taken, Refused> {
        if limits.is_none() {
            return Ok(Taken::default());
        }
        let tokens = tokens.min(MAX_TOKENS);
        let charge = |shared| Charge::of(limits, tokens, shared);
        if let Some(redis) = &self.redis {
            // Boxed: the Redis call's state stays out of every caller's future (memory buckets
            // never build it).
            if let Some(result) = Box::pin(redis.take(id, limits, tokens)).await {
                return result.map(|levels| Taken {
                    levels,
                    charge: charge(true),
                });
            }
        }
        let levels = self.local.take(
            id,
            self.degraded_limits(limits),
            tokens,
            tokio::time::Instant::now(),
        )?;
        Ok(Taken {
            levels,
            charge: charge(false),
        })
    }

    /// Takes from a client's bucket pair and a key's at once, both or neither: with Redis in
    /// one script call (the request's only one before the upstream is asked). `Err` names the
    /// side that refused.
    pub async fn take_pair(
        &self,
        client: (&str, Limits, u64),
        key: (&str, Limits, u64),
    ) -> Result<(Taken, Taken), (Side, Refused)> {
        let charge =
            |(_, limits, tokens): (&str, Limits, u64), shared| Charge::of(limits, tokens, shared);
        if let Some(redis) = &self.redis {
            let (c, k) = (
                (client.0, client.1, client.2.min(MAX_TOKENS)),
                (key.0, key.1, key.2.min(MAX_TOKENS)),
            );
            if let Some(result) = Box::pin(redis.take_pair(c, k)).await {
                return result.map(|(c, k)| {
                    (
                        Taken {
                            levels: c,
                            charge: charge(client, true),
                        },
                        Taken {
                            levels: k,
                            charge: charge(key, true),
                        },
                    )
                });
            }
        }
        // Redis unreachable: each bucket of its share, locally; the client's given back when
        // the key refuses.
        let now = tokio::time::Instant::now();
        let local = |(id, limits, tokens): (&str, Limits, u64)| {
            self.local.take(
                id,
                self.degraded_limits(limits),
                tokens.min(MAX_TOKENS),
                now,
            )
        };
        let c = local(client).map_err(|r| (Side::Client, r))?;
        let k = match local(key) {
            Ok(k) => k,
            Err(r) => {
                let given = charge(client, false);
                self.local.refund(
                    client.0,
                    self.degraded_limits(client.1),
                    given.requests,
                    given.tokens,
                    now,
                );
                return Err((Side::Key, r));
            }
        };
        Ok((
            Taken {
                levels: c,
                charge: charge(client, false),
            },
            Taken {
                levels: k,
                charge: charge(key, false),
            },
        ))
    }

    /// Gives `charge` back to bucket pair `id`, in the store that took it (never above the
    /// limits). A shared charge is not refunded while Redis cannot be reached: the local
    /// buckets never paid it.
    pub async fn refund(&self, id: &str, limits: Limits, charge: Charge) {
        if charge.is_empty() {
            return;
        }
        if charge.shared {
            if let Some(redis) = &self.redis {
                if !Box::pin(redis.refund(id, limits, charge.requests, charge.tokens)).await {
                    tracing::debug!(
                        bucket = id,
                        tokens = charge.tokens,
                        "refund lost: redis unreachable"
                    );
                }
            }
            return;
        }
        self.local.refund(
            id,
            self.degraded_limits(limits),
            charge.requests,
            charge.tokens,
            tokio::time::Instant::now(),
        );
    }

    /// Current levels of a local bucket pair, without taking anything (`None` with Redis or no limit).
    pub fn peek(&self, id: &str, limits: Limits) -> Option<Levels> {
        if limits.is_none() || self.redis.is_some() {
            return None;
        }
        Some(self.local.peek(id, limits, tokio::time::Instant::now()))
    }

    /// The Redis store, when buckets (and key health) are shared through Redis.
    pub fn redis(&self) -> Option<Arc<RedisStore>> {
        self.redis.clone()
    }

    /// Whether buckets live in Redis (calls may wait on the network).
    pub fn is_shared(&self) -> bool {
        self.redis.is_some()
    }

    /// `reconcile` for the memory backend, without awaiting (a no-op with Redis).
    pub fn reconcile_local(&self, id: &str, limits: Limits, estimated: u64, actual: u64) {
        if self.redis.is_none() && limits.tpm.is_some() {
            let (estimated, actual) = (estimated.min(MAX_TOKENS), actual.min(MAX_TOKENS));
            self.local
                .reconcile(id, limits, estimated, actual, tokio::time::Instant::now());
        }
    }

    /// Corrects the token bucket by real usage: refunds `estimated - actual` (or charges).
    pub async fn reconcile(&self, id: &str, limits: Limits, estimated: u64, actual: u64) {
        self.reconcile_many(&[(id, limits)], estimated, actual)
            .await;
    }

    /// [`Limiter::reconcile`] of several bucket pairs (a request's key and client) by the same
    /// usage: with Redis, one call for all of them.
    pub async fn reconcile_many(&self, buckets: &[(&str, Limits)], estimated: u64, actual: u64) {
        let (estimated, actual) = (estimated.min(MAX_TOKENS), actual.min(MAX_TOKENS));
        if estimated == actual {
            return;
        }
        let counted: Vec<(&str, Limits)> = buckets
            .iter()
            .filter(|(_, l)| l.tpm.is_some())
            .copied()
            .collect();
        if counted.is_empty() {
            return;
        }
        if let Some(redis) = &self.redis {
            // Both at most 2^53: the difference fits an i64 either way.
            if Box::pin(redis.adjust_many(&counted, estimated as i64 - actual as i64)).await {
                return;
            }
        }
        for (id, limits) in counted {
            self.local.reconcile(
                id,
                self.degraded_limits(limits),
                estimated,
                actual,
                tokio::time::Instant::now(),
            );
        }
    }

    /// Lowers the buckets to the provider's reported remaining requests/tokens.
    pub async fn sync(&self, id: &str, limits: Limits, requests: Option<u64>, tokens: Option<u64>) {
        let requests = requests
            .filter(|_| limits.rpm.is_some())
            .map(|r| r.min(MAX_TOKENS));
        let tokens = tokens
            .filter(|_| limits.tpm.is_some())
            .map(|t| t.min(MAX_TOKENS));
        if requests.is_none() && tokens.is_none() {
            return;
        }
        if let Some(redis) = &self.redis {
            if Box::pin(redis.sync(id, limits, requests, tokens)).await {
                return;
            }
        }
        self.local.sync(
            id,
            self.degraded_limits(limits),
            requests,
            tokens,
            tokio::time::Instant::now(),
        );
    }
}

/// Milliseconds since the Unix epoch (the clock replicas share through Redis).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Reads a provider's remaining requests and tokens from its headers (OpenAI's
/// `x-ratelimit-remaining-*`, Anthropic's `anthropic-ratelimit-*-remaining`).
pub fn remaining_from_headers(headers: &http::HeaderMap) -> (Option<u64>, Option<u64>) {
    // One pass over the answer's headers (four lookups by name cost more than the pass): each
    // name's first value, read as an integer.
    const NAMES: [&str; 4] = [
        "x-ratelimit-remaining-requests",
        "anthropic-ratelimit-requests-remaining",
        "x-ratelimit-remaining-tokens",
        "anthropic-ratelimit-tokens-remaining",
    ];
    let mut seen = [false; 4];
    let mut num: [Option<i64>; 4] = [None; 4];
    for (name, value) in headers {
        let name = name.as_str();
        if !(name.starts_with("x-ratelimit-") || name.starts_with("anthropic-ratelimit-")) {
            continue;
        }
        let Some(i) = NAMES.iter().position(|n| *n == name) else {
            continue;
        };
        if !std::mem::replace(&mut seen[i], true) {
            num[i] = value.to_str().ok().and_then(|v| v.trim().parse().ok());
        }
    }
    // Azure sends -1/0 sentinels on some deployments: negative means unknown.
    let known = |v: Option<i64>| v.filter(|v| *v >= 0).map(|v| v as u64);
    (known(num[0].or(num[1])), known(num[2].or(num[3])))
}

#[cfg(test)]
mod tests;
