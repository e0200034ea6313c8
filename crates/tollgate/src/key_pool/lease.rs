//! One attempt's use of a key ([`Lease`]): in flight until dropped; what the attempt's outcome
//! does to the key's health goes through it.

use super::{after, Health, HealthEvent, KeyPool};
use crate::config::Secret;
use crate::rate_limit::Limits;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// One attempt's use of a key: counts as in-flight until dropped; outcomes update its health.
#[derive(Debug)]
pub struct Lease {
    pub(super) pool: Arc<KeyPool>,
    pub(super) idx: usize,
    /// The state the key was probed from (disabled or ejected), when this is a probe.
    pub(super) probe_of: Option<Health>,
    pub(super) settled: bool,
}

impl Lease {
    /// Index of the key in its pool.
    pub fn idx(&self) -> usize {
        self.idx
    }

    /// The key's id.
    pub fn id(&self) -> &str {
        &self.pool.keys[self.idx].settings.id
    }

    /// The key's id, shared (a count, not a copy).
    pub fn shared_id(&self) -> Arc<str> {
        self.pool.keys[self.idx].name.shared()
    }

    /// The key's rate-limit bucket id and limits.
    pub fn bucket(&self) -> (&str, Limits) {
        self.pool.bucket(self.idx)
    }

    /// The key's bucket id, shared (for work that outlives the lease).
    pub fn bucket_id(&self) -> Arc<str> {
        Arc::clone(&self.pool.keys[self.idx].bucket)
    }

    /// The name of the key's provider.
    pub fn provider(&self) -> &str {
        &self.pool.provider
    }

    /// The provider's name and the key's id as an answer carries them.
    pub fn names(&self) -> (crate::request::Name, crate::request::Name) {
        (
            self.pool.provider_name.clone(),
            self.pool.keys[self.idx].name.clone(),
        )
    }

    /// The key's secret, to put in the upstream request.
    pub fn secret(&self) -> &Secret {
        &self.pool.keys[self.idx].settings.secret
    }

    /// A handle on the key that outlives nothing: what an attempt needs to build its request.
    pub fn key_ref(&self) -> KeyRef {
        KeyRef {
            pool: Arc::clone(&self.pool),
            idx: self.idx,
        }
    }

    fn update(&mut self, event: HealthEvent, now: Instant) {
        self.settled = true;
        self.pool.keys[self.idx].apply(event, now);
    }

    /// The key answered after `latency`: a probe restores it; its record improves.
    pub fn success(&mut self, latency: Duration, now: Instant) {
        let policy = self.pool.policy.outlier;
        self.pool.keys[self.idx]
            .state()
            .outlier
            .succeeded(latency, &policy, now);
        self.update(HealthEvent::Succeeded, now);
    }

    /// The provider rate limited the key: cool it for `asked` (or the default), clamped.
    /// Returns how long it cools.
    pub fn cool(&mut self, asked: Option<Duration>, now: Instant) -> Duration {
        let policy = self.pool.policy;
        let wait = asked
            .unwrap_or(policy.cooldown_default)
            .min(policy.cooldown_max);
        self.pool.keys[self.idx]
            .cooldowns
            .inc_by(wait.as_secs_f64());
        self.update(
            HealthEvent::RateLimited {
                until: after(now, wait),
            },
            now,
        );
        wait
    }

    /// The provider rejected the key (auth, quota): no traffic until a probe after `window`
    /// (a quota window the provider named), else after `probe_interval`. Returns the wait.
    pub fn disable(&mut self, window: Option<Duration>, now: Instant) -> Duration {
        let interval = window
            .unwrap_or(self.pool.policy.probe_interval)
            .max(self.pool.policy.probe_interval)
            .min(super::MAX_OUT);
        self.update(
            HealthEvent::Rejected {
                probe_at: after(now, interval),
            },
            now,
        );
        interval
    }

    /// A transient failure after `latency`: counted against the key; too many eject it (and a
    /// failed probe of an ejected key ejects it for longer). A failed probe of a disabled key
    /// keeps it disabled; a healthy key below the thresholds stays healthy. Returns the
    /// ejection's length when there is one.
    pub fn transient(&mut self, latency: Duration, now: Instant) -> Option<Duration> {
        let policy = self.pool.policy;
        let probing = self.probe_of.is_some();
        let ejected = {
            let key = &self.pool.keys[self.idx];
            let mut state = key.state();
            // A disabled key's probe that fails transiently is judged by the disablement.
            let from_disabled = matches!(self.probe_of, Some(Health::Disabled { .. }));
            match from_disabled {
                true => None,
                false => state.outlier.failed(latency, probing, &policy.outlier, now),
            }
        };
        let event = match ejected {
            Some(len) => HealthEvent::Ejected {
                probe_at: after(now, len),
            },
            None => HealthEvent::Failed {
                probe_at: after(now, policy.probe_interval),
            },
        };
        self.update(event, now);
        ejected
    }
}

/// A key of a pool, for building one attempt's request (its secret never leaves it otherwise).
#[derive(Debug, Clone)]
pub struct KeyRef {
    pool: Arc<KeyPool>,
    idx: usize,
}

impl KeyRef {
    /// The key's secret, to put in the upstream request.
    pub fn secret(&self) -> &Secret {
        &self.pool.keys[self.idx].settings.secret
    }

    /// The key's id.
    pub fn id(&self) -> &str {
        &self.pool.keys[self.idx].settings.id
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let key = &self.pool.keys[self.idx];
        key.inflight.fetch_sub(1, Ordering::Relaxed);
        if self.settled {
            return;
        }
        // The probe ended without a verdict (client went away): let the next request probe.
        let now = Instant::now();
        match self.probe_of {
            Some(Health::Ejected { .. }) => {
                key.apply(HealthEvent::Ejected { probe_at: now }, now);
            }
            Some(_) => {
                key.apply(HealthEvent::ProbeAbandoned, now);
            }
            None => {}
        }
    }
}
