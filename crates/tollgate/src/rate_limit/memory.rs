//! Bucket pairs in this process. Entries exist only for configured ids (clients, keys), so
//! the map cannot grow with traffic.

use super::bucket::TokenBucket;
use super::{Dimension, Level, Levels, Limits, Refused};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
struct Pair {
    limits: Limits,
    requests: Option<TokenBucket>,
    tokens: Option<TokenBucket>,
}

impl Pair {
    fn new(limits: Limits, now: Instant) -> Self {
        Pair {
            limits,
            requests: limits
                .rpm
                .map(|n| TokenBucket::per_minute(u64::from(n), now)),
            tokens: limits
                .tpm
                .map(|n| TokenBucket::per_minute(u64::from(n), now)),
        }
    }

    fn refused(&mut self, tokens: u64, now: Instant) -> Option<Refused> {
        let wait = |b: &mut Option<TokenBucket>, n: u64| {
            b.as_mut()
                .map_or(Some(Duration::ZERO), |b| b.wait_for(n, now))
        };
        let r = wait(&mut self.requests, 1);
        let t = wait(&mut self.tokens, tokens);
        if r == Some(Duration::ZERO) && t == Some(Duration::ZERO) {
            return None;
        }
        // The binding limit is the one with the longer wait (never = longest).
        let key = |w: Option<Duration>| w.unwrap_or(Duration::MAX);
        Some(if key(r) >= key(t) {
            Refused {
                dimension: Dimension::Requests,
                wait: r,
            }
        } else {
            Refused {
                dimension: Dimension::Tokens,
                wait: t,
            }
        })
    }

    fn levels(&mut self, now: Instant) -> Levels {
        let level = |b: &mut Option<TokenBucket>| {
            b.as_mut().map(|b| Level {
                limit: b.capacity(),
                remaining: b.available(now).max(0.0) as u64,
                reset: b.until_full(now),
            })
        };
        Levels {
            requests: level(&mut self.requests),
            tokens: level(&mut self.tokens),
        }
    }
}

/// The in-memory store (FNV-hashed: its ids are configured names, looked up on every take).
#[derive(Debug, Default)]
pub(super) struct MemoryStore {
    pairs: Mutex<fnv::FnvHashMap<String, Pair>>,
}

impl MemoryStore {
    fn with<R>(&self, id: &str, limits: Limits, now: Instant, f: impl FnOnce(&mut Pair) -> R) -> R {
        let mut pairs = self.pairs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pair) = pairs.get_mut(id) {
            if pair.limits != limits {
                // Limits changed (config reload): start over with the new ones.
                *pair = Pair::new(limits, now);
            }
            return f(pair);
        }
        f(pairs
            .entry(id.to_owned())
            .or_insert_with(|| Pair::new(limits, now)))
    }

    pub(super) fn take(
        &self,
        id: &str,
        limits: Limits,
        tokens: u64,
        now: Instant,
    ) -> Result<Levels, Refused> {
        self.with(id, limits, now, |pair| {
            if let Some(refused) = pair.refused(tokens, now) {
                return Err(refused);
            }
            if let Some(b) = pair.requests.as_mut() {
                let _ = b.try_take(1, now);
            }
            if let Some(b) = pair.tokens.as_mut() {
                let _ = b.try_take(tokens, now);
            }
            Ok(pair.levels(now))
        })
    }

    pub(super) fn peek(&self, id: &str, limits: Limits, now: Instant) -> Levels {
        self.with(id, limits, now, |pair| pair.levels(now))
    }

    pub(super) fn reconcile(
        &self,
        id: &str,
        limits: Limits,
        estimated: u64,
        actual: u64,
        now: Instant,
    ) {
        self.with(id, limits, now, |pair| {
            if let Some(b) = pair.tokens.as_mut() {
                b.reconcile(estimated, actual, now);
            }
        });
    }

    pub(super) fn refund(
        &self,
        id: &str,
        limits: Limits,
        requests: u64,
        tokens: u64,
        now: Instant,
    ) {
        self.with(id, limits, now, |pair| {
            if let Some(b) = pair.requests.as_mut() {
                b.refund(requests, now);
            }
            if let Some(b) = pair.tokens.as_mut() {
                b.refund(tokens, now);
            }
        });
    }

    pub(super) fn sync(
        &self,
        id: &str,
        limits: Limits,
        requests: Option<u64>,
        tokens: Option<u64>,
        now: Instant,
    ) {
        self.with(id, limits, now, |pair| {
            if let (Some(b), Some(r)) = (pair.requests.as_mut(), requests) {
                b.sync_remaining(r, now);
            }
            if let (Some(b), Some(t)) = (pair.tokens.as_mut(), tokens) {
                b.sync_remaining(t, now);
            }
        });
    }
}
