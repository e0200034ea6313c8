//! Upstream keys of one provider, their health and the choice of a key per attempt.
//!
//! Health is a small state machine fed by outcomes: healthy → cooling (429, until an instant) →
//! healthy; healthy → disabled (401/403/quota) → probing (one request after `probe_interval`) →
//! healthy on success, disabled again otherwise. Selection takes, among keys the request has
//! not excluded and whose state accepts traffic, the least loaded by in-flight count per weight,
//! ties broken round-robin from a rotating start.

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

    /// Ids of the keys.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.settings.id.as_str())
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the pool has no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The id of key `idx`.
    pub fn key_id(&self, idx: usize) -> &str {
        &self.keys[idx].settings.id
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
            let mut health = key.health();
            match *health {
                Health::Cooling { until } if until <= now => key.set(&mut health, Health::Healthy),
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
        let mut health = key.health();
        let probing = match *health {
            Health::Disabled { probe_at } if probe_at <= now => {
                key.set(&mut health, Health::Probing);
                true
            }
            Health::Healthy => false,
            // Lost a race to another request (took the probe, or cooled it): try again.
            _ => {
                drop(health);
                return self.select(&|i| i == idx || excluded(i), now);
            }
        };
        drop(health);
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
        let (disabled, unix_ms) = match shared {
            SharedHealth::Cooling(ms) => (false, ms),
            SharedHealth::Disabled(ms) => (true, ms),
        };
        let left = unix_ms.saturating_sub(crate::rate_limit::unix_ms());
        if left == 0 {
            return;
        }
        let at = now + Duration::from_millis(left);
        let key = &self.keys[idx];
        let mut health = key.health();
        let next = match (*health, disabled) {
            (Health::Probing, _) | (Health::Disabled { .. }, false) => return,
            (Health::Cooling { until }, false) if until >= at => return,
            (Health::Disabled { probe_at }, true) if probe_at >= at => return,
            (_, false) => Health::Cooling { until: at },
            (_, true) => Health::Disabled { probe_at: at },
        };
        key.set(&mut health, next);
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

    fn update(&mut self, f: impl FnOnce(Health) -> Health) {
        self.settled = true;
        let key = &self.pool.keys[self.idx];
        let mut health = key.health();
        let next = f(*health);
        key.set(&mut health, next);
    }

    /// The key answered: a probe restores it.
    pub fn success(&mut self) {
        let probing = self.probing;
        self.update(|h| if probing { Health::Healthy } else { h });
    }

    /// The provider rate limited the key: cool it for `asked` (or the default), clamped.
    pub fn cool(&mut self, asked: Option<Duration>, now: Instant) {
        let policy = self.pool.policy;
        let wait = asked
            .unwrap_or(policy.cooldown_default)
            .min(policy.cooldown_max);
        self.pool.keys[self.idx]
            .cooldowns
            .inc_by(wait.as_secs_f64());
        self.update(|h| match h {
            Health::Disabled { .. } => h,
            Health::Cooling { until } => Health::Cooling {
                until: until.max(now + wait),
            },
            Health::Healthy | Health::Probing => Health::Cooling { until: now + wait },
        });
    }

    /// The provider rejected the key (auth, quota): no traffic until a probe after `probe_interval`.
    pub fn disable(&mut self, now: Instant) {
        let probe_at = now + self.pool.policy.probe_interval;
        self.update(|_| Health::Disabled { probe_at });
    }

    /// A transient failure: a failed probe keeps the key disabled; a healthy key stays healthy.
    pub fn transient(&mut self, now: Instant) {
        let probing = self.probing;
        let probe_at = now + self.pool.policy.probe_interval;
        self.update(|h| {
            if probing {
                Health::Disabled { probe_at }
            } else {
                h
            }
        });
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let key = &self.pool.keys[self.idx];
        key.inflight.fetch_sub(1, Ordering::Relaxed);
        if self.probing && !self.settled {
            // The probe ended without a verdict (client went away): let the next request probe.
            let mut health = key.health();
            if *health == Health::Probing {
                key.set(
                    &mut health,
                    Health::Disabled {
                        probe_at: Instant::now(),
                    },
                );
            }
        }
    }
}

#[cfg(test)]
mod tests;
