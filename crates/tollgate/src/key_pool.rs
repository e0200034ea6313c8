//! Upstream keys of one provider, their health and the choice of a key per attempt.
//!
//! Health is a pure state machine, [`Health::on`], fed by events: healthy → cooling (429, until
//! an instant) → healthy; healthy → disabled (401/403/quota) → probing (one request after
//! `probe_interval`) → healthy on success, disabled again otherwise. Every change goes through
//! one place (`PoolKey::apply`), which also keeps the `tollgate_key_state` gauges. What other
//! replicas record is read through a [`store::HealthStore`]. Selection takes, among keys the
//! request has not excluded and whose state accepts traffic, the least loaded by in-flight
//! count per weight, ties broken round-robin from a rotating start.

pub mod store;

use crate::config::{KeySettings, Secret};
use crate::metrics::Metrics;
use crate::rate_limit::Limits;
use prometheus::IntGauge;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// A key's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Takes traffic.
    Healthy,
    /// Rate limited by the provider until the instant.
    Cooling {
        /// When it takes traffic again.
        until: Instant,
    },
    /// Rejected (auth or quota); one probe is let through at `probe_at`.
    Disabled {
        /// When the next probe may go.
        probe_at: Instant,
    },
    /// One probe request is in flight.
    Probing,
}

impl Health {
    /// Closed-set label.
    pub fn label(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Cooling { .. } => "cooling",
            Health::Disabled { .. } => "disabled",
            Health::Probing => "probing",
        }
    }
}

/// What happens to a key; [`Health::on`] says what state it leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthEvent {
    /// Time passed: a cooldown that is over ends.
    Tick,
    /// A request takes the probe of a disabled key whose probe is due.
    ProbeStarted,
    /// The key answered.
    Succeeded,
    /// The provider rate limited the key until the instant.
    RateLimited {
        /// When it may take traffic again.
        until: Instant,
    },
    /// The provider rejected the key (auth, quota): no traffic until a probe at the instant.
    Rejected {
        /// When the next probe may go.
        probe_at: Instant,
    },
    /// A transient failure: fails a probe (disabled again until the instant).
    Failed {
        /// When the next probe may go if this was a probe.
        probe_at: Instant,
    },
    /// A probe ended without a verdict (the client went away): the next request may probe.
    ProbeAbandoned,
    /// Another replica recorded a cooldown until the instant.
    SharedCooling {
        /// When it ends.
        until: Instant,
    },
    /// Another replica recorded a disablement until the instant.
    SharedDisabled {
        /// When the next probe may go.
        probe_at: Instant,
    },
}

impl Health {
    /// The state after `event` at `now`. Pure: the whole key-health policy is this table.
    pub fn on(self, event: HealthEvent, now: Instant) -> Health {
        use Health::{Cooling, Disabled, Healthy, Probing};
        use HealthEvent as E;
        match (self, event) {
            (Cooling { until }, E::Tick) if until <= now => Healthy,
            (Disabled { probe_at }, E::ProbeStarted) if probe_at <= now => Probing,
            (Probing, E::Succeeded) => Healthy,
            (Disabled { .. }, E::RateLimited { .. }) => self,
            (Cooling { until }, E::RateLimited { until: next }) => Cooling {
                until: until.max(next),
            },
            (Healthy | Probing, E::RateLimited { until }) => Cooling { until },
            (_, E::Rejected { probe_at }) => Disabled { probe_at },
            (Probing, E::Failed { probe_at }) => Disabled { probe_at },
            (Probing, E::ProbeAbandoned) => Disabled { probe_at: now },
            // A probe in flight decides for itself; a disablement outranks a shared cooldown.
            (Probing, E::SharedCooling { .. } | E::SharedDisabled { .. }) => self,
            (Disabled { .. }, E::SharedCooling { .. }) => self,
            (Cooling { until }, E::SharedCooling { until: at }) if until >= at => self,
            (Disabled { probe_at }, E::SharedDisabled { probe_at: at }) if probe_at >= at => self,
            (_, E::SharedCooling { until }) => Cooling { until },
            (_, E::SharedDisabled { probe_at }) => Disabled { probe_at },
            _ => self,
        }
    }
}

const STATES: [&str; 4] = ["healthy", "cooling", "disabled", "probing"];

/// Timing policy of a pool.
#[derive(Debug, Clone, Copy)]
pub struct PoolPolicy {
    /// Cooldown when a 429 names no time.
    pub cooldown_default: Duration,
    /// Longest cooldown.
    pub cooldown_max: Duration,
    /// Wait before probing a disabled key.
    pub probe_interval: Duration,
}

#[derive(Debug)]
struct PoolKey {
    settings: KeySettings,
    bucket: Arc<str>,
    limits: Limits,
    health: Mutex<Health>,
    inflight: AtomicU32,
    gauges: [IntGauge; 4],
    cooldowns: prometheus::Counter,
}

impl PoolKey {
    /// Applies `event` to the key's health: the one place its state (and gauge) changes.
    fn apply(&self, event: HealthEvent, now: Instant) -> Health {
        let mut health = self.health();
        let next = health.on(event, now);
        self.set(&mut health, next);
        next
    }

    fn set(&self, health: &mut Health, next: Health) {
        if health.label() != next.label() {
            for (g, s) in self.gauges.iter().zip(STATES) {
                g.set(i64::from(s == next.label()));
            }
        }
        *health = next;
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The keys of one provider.
#[derive(Debug)]
pub struct KeyPool {
    provider: String,
    keys: Vec<PoolKey>,
    next: AtomicUsize,
    policy: PoolPolicy,
}

/// A snapshot of one key for `/admin/keys`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyView {
    /// Key id.
    pub id: String,
    /// Health label.
    pub state: &'static str,
    /// Milliseconds until cooling ends or the next probe.
    pub remaining_ms: Option<u64>,
    /// Requests using the key now.
    pub inflight: u32,
}

impl KeyPool {
    /// A pool of healthy keys.
    pub fn new(
        provider: &str,
        keys: &[KeySettings],
        policy: PoolPolicy,
        metrics: &Metrics,
    ) -> Arc<Self> {
        Self::carry_over(provider, keys, policy, metrics, None)
    }

    /// A pool for a reloaded config: keys with the same id and secret as in `previous` keep
    /// their health (a cooling key stays cooling); new keys start healthy.
    pub fn carry_over(
        provider: &str,
        keys: &[KeySettings],
        policy: PoolPolicy,
        metrics: &Metrics,
        previous: Option<&KeyPool>,
    ) -> Arc<Self> {
        let kept = |k: &KeySettings| {
            let old = previous?
                .keys
                .iter()
                .find(|o| o.settings.id == k.id && o.settings.secret == k.secret)?;
            Some(match *old.health() {
                // A probe in flight belongs to the old pool: let the new one probe again.
                Health::Probing => Health::Disabled {
                    probe_at: Instant::now(),
                },
                h => h,
            })
        };
        let keys = keys
            .iter()
            .map(|k| {
                let health = kept(k).unwrap_or(Health::Healthy);
                let gauges =
                    STATES.map(|s| metrics.key_state.with_label_values(&[provider, &k.id, s]));
                for (g, s) in gauges.iter().zip(STATES) {
                    g.set(i64::from(s == health.label()));
                }
                PoolKey {
                    settings: k.clone(),
                    bucket: Arc::from(format!("k:{provider}:{}", k.id)),
                    limits: Limits {
                        rpm: k.rpm,
                        tpm: k.tpm,
                    },
                    health: Mutex::new(health),
                    inflight: AtomicU32::new(0),
                    gauges,
                    cooldowns: metrics.key_cooldowns.with_label_values(&[provider, &k.id]),
                }
            })
            .collect();
        Arc::new(KeyPool {
            provider: provider.to_owned(),
            keys,
            next: AtomicUsize::new(0),
            policy,
        })
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the pool has no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The rate-limit bucket id and limits of key `idx`.
    pub fn bucket(&self, idx: usize) -> (&str, Limits) {
        let k = &self.keys[idx];
        (&k.bucket, k.limits)
    }

    /// Whether any key declares a TPM limit.
    pub fn has_tpm(&self) -> bool {
        self.keys.iter().any(|k| k.limits.tpm.is_some())
    }

    /// The health of key `idx`.
    pub fn health(&self, idx: usize) -> Health {
        *self.keys[idx].health()
    }

    /// Whether [`KeyPool::select`] would find a key among those `excluded` does not reject,
    /// without taking it or changing any state; `Err` carries the earliest recovery.
    pub fn available(
        &self,
        excluded: &dyn Fn(usize) -> bool,
        now: Instant,
    ) -> Result<(), Option<Instant>> {
        let mut earliest: Option<Instant> = None;
        for (idx, key) in self.keys.iter().enumerate() {
            if excluded(idx) {
                continue;
            }
            let at = match *key.health() {
                Health::Healthy => return Ok(()),
                Health::Cooling { until } | Health::Disabled { probe_at: until }
                    if until <= now =>
                {
                    return Ok(())
                }
                Health::Cooling { until } | Health::Disabled { probe_at: until } => until,
                Health::Probing => continue,
            };
            earliest = Some(earliest.map_or(at, |e| e.min(at)));
        }
        Err(earliest)
    }

    /// Picks a key for one attempt among those `excluded` does not reject. `Err` carries the
    /// earliest instant a non-excluded key recovers, if one will.
    pub fn select(
        self: &Arc<Self>,
        excluded: &dyn Fn(usize) -> bool,
        now: Instant,
    ) -> Result<Lease, Option<Instant>> {
        let n = self.keys.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(usize, u64, u64)> = None; // (idx, inflight, weight)
        let mut earliest: Option<Instant> = None;
        for off in 0..n {
            let idx = (start + off) % n;
            if excluded(idx) {
                continue;
            }
            let key = &self.keys[idx];
            match key.apply(HealthEvent::Tick, now) {
                Health::Cooling { until } => {
                    earliest = Some(earliest.map_or(until, |e| e.min(until)));
                    continue;
                }
                Health::Disabled { probe_at } if probe_at > now => {
                    earliest = Some(earliest.map_or(probe_at, |e| e.min(probe_at)));
                    continue;
                }
                Health::Probing => continue,
                Health::Healthy | Health::Disabled { .. } => {}
            }
            let load = u64::from(key.inflight.load(Ordering::Relaxed));
            let weight = u64::from(key.settings.weight);
            if best.is_none_or(|(_, bl, bw)| load * bw < bl * weight) {
                best = Some((idx, load, weight));
            }
        }
        let Some((idx, _, _)) = best else {
            return Err(earliest);
        };
        let key = &self.keys[idx];
        let probing = match *key.health() {
            Health::Disabled { probe_at } if probe_at <= now => true,
            Health::Healthy => false,
            // Lost a race to another request (took the probe, or cooled it): try again.
            _ => return self.select(&|i| i == idx || excluded(i), now),
        };
        if probing && key.apply(HealthEvent::ProbeStarted, now) != Health::Probing {
            return self.select(&|i| i == idx || excluded(i), now);
        }
        key.inflight.fetch_add(1, Ordering::Relaxed);
        Ok(Lease {
            pool: Arc::clone(self),
            idx,
            probing,
            settled: false,
        })
    }

    /// Applies what another replica recorded about key `idx`: a longer cooldown or a
    /// disablement replaces a healthy or shorter state; a probe in flight is left alone.
    pub fn apply_shared(&self, idx: usize, shared: crate::rate_limit::SharedHealth, now: Instant) {
        use crate::rate_limit::SharedHealth;
        let unix_ms = match shared {
            SharedHealth::Cooling(ms) | SharedHealth::Disabled(ms) => ms,
        };
        let left = unix_ms.saturating_sub(crate::rate_limit::unix_ms());
        if left == 0 {
            return;
        }
        let at = now + Duration::from_millis(left);
        let event = match shared {
            SharedHealth::Cooling(_) => HealthEvent::SharedCooling { until: at },
            SharedHealth::Disabled(_) => HealthEvent::SharedDisabled { probe_at: at },
        };
        self.keys[idx].apply(event, now);
    }

    /// Current state of every key.
    pub fn view(&self, now: Instant) -> Vec<KeyView> {
        self.keys
            .iter()
            .map(|k| {
                let h = *k.health();
                let remaining = match h {
                    Health::Cooling { until } => Some(until.saturating_duration_since(now)),
                    Health::Disabled { probe_at } => Some(probe_at.saturating_duration_since(now)),
                    _ => None,
                };
                let state = match h {
                    Health::Cooling { until } if until <= now => "healthy",
                    _ => h.label(),
                };
                KeyView {
                    id: k.settings.id.clone(),
                    state,
                    remaining_ms: remaining.map(|d| d.as_millis() as u64),
                    inflight: k.inflight.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// The provider's name.
    pub fn provider(&self) -> &str {
        &self.provider
    }
}

/// One attempt's use of a key: counts as in-flight until dropped; outcomes update its health.
#[derive(Debug)]
pub struct Lease {
    pool: Arc<KeyPool>,
    idx: usize,
    probing: bool,
    settled: bool,
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

    /// The key answered: a probe restores it.
    pub fn success(&mut self, now: Instant) {
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
        self.update(HealthEvent::RateLimited { until: now + wait }, now);
        wait
    }

    /// The provider rejected the key (auth, quota): no traffic until a probe after
    /// `probe_interval`. Returns that interval.
    pub fn disable(&mut self, now: Instant) -> Duration {
        let interval = self.pool.policy.probe_interval;
        self.update(
            HealthEvent::Rejected {
                probe_at: now + interval,
            },
            now,
        );
        interval
    }

    /// A transient failure: a failed probe keeps the key disabled; a healthy key stays healthy.
    pub fn transient(&mut self, now: Instant) {
        let probe_at = now + self.pool.policy.probe_interval;
        self.update(HealthEvent::Failed { probe_at }, now);
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
        if self.probing && !self.settled {
            // The probe ended without a verdict (client went away): let the next request probe.
            key.apply(HealthEvent::ProbeAbandoned, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests;
