//! Upstream keys of one provider, their health and the choice of a key per attempt.
//!
//! Health is a pure state machine ([`health::Health::on`]) fed by events; what a key's recent
//! answers say (consecutive failures, failure share, success score, latency) is the
//! [`outlier::Outlier`] record beside it. Every change goes through one place
//! (`PoolKey::apply`), which also keeps the `tollgate_key_state` gauges. What other replicas
//! record is read through a [`store::HealthStore`]. Selection takes, among keys the request has
//! not excluded and whose state accepts traffic, the one with the lowest in-flight count per
//! weight × quality (a key that fails or is slow gets less), ties broken round-robin from a
//! rotating start.

pub mod health;
pub mod outlier;
pub mod store;

pub use health::{Health, HealthEvent};
pub use outlier::{Outlier, OutlierPolicy};

use crate::config::KeySettings;
use crate::metrics::Metrics;
use crate::rate_limit::Limits;
use prometheus::IntGauge;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

/// Timing policy of a pool.
#[derive(Debug, Clone, Copy)]
pub struct PoolPolicy {
    /// Cooldown when a 429 names no time.
    pub cooldown_default: Duration,
    /// Longest cooldown.
    pub cooldown_max: Duration,
    /// Wait before probing a disabled key.
    pub probe_interval: Duration,
    /// When transient failures eject a key.
    pub outlier: OutlierPolicy,
}

/// Longest a key is taken out for by one answer (a quota window the provider named).
const MAX_OUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// When keys that take no traffic now recover: rate-limit cooldowns, and probes of disabled or
/// ejected keys.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// When the earliest cooling key takes traffic again.
    pub cooling: Option<Instant>,
    /// When the earliest disabled or ejected key may be probed.
    pub probe: Option<Instant>,
}

impl Recovery {
    fn note(slot: &mut Option<Instant>, at: Instant) {
        *slot = Some(slot.map_or(at, |e| e.min(at)));
    }

    /// The earliest of both.
    pub fn earliest(&self) -> Option<Instant> {
        [self.cooling, self.probe].into_iter().flatten().min()
    }

    /// Both views merged.
    pub fn merge(self, other: Recovery) -> Recovery {
        let min = |a: Option<Instant>, b: Option<Instant>| [a, b].into_iter().flatten().min();
        Recovery {
            cooling: min(self.cooling, other.cooling),
            probe: min(self.probe, other.probe),
        }
    }
}

#[derive(Debug)]
struct KeyState {
    health: Health,
    outlier: Outlier,
}

#[derive(Debug)]
struct PoolKey {
    settings: KeySettings,
    /// Its id as answers carry it (made once).
    name: crate::request::Name,
    bucket: Arc<str>,
    limits: Limits,
    /// Shared with the same key in the pools of earlier and later configs: an answer to a
    /// request that spans a reload lands where the next request looks.
    state: Arc<Mutex<KeyState>>,
    /// Requests using the key, whichever config's pool they started from.
    inflight: Arc<AtomicU32>,
    gauges: [IntGauge; 5],
    cooldowns: prometheus::Counter,
    ejections: prometheus::IntCounter,
}

impl PoolKey {
    /// Applies `event` to the key's health: the one place its state (and gauge) changes.
    fn apply(&self, event: HealthEvent, now: Instant) -> Health {
        let mut state = self.state();
        let next = state.health.on(event, now);
        self.set(&mut state, next);
        next
    }

    fn set(&self, state: &mut KeyState, next: Health) {
        if state.health.label() != next.label() {
            for (g, s) in self.gauges.iter().zip(Health::LABELS) {
                g.set(i64::from(s == next.label()));
            }
            if matches!(next, Health::Ejected { .. }) {
                self.ejections.inc();
            }
        }
        state.health = next;
    }

    fn state(&self) -> MutexGuard<'_, KeyState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn health(&self) -> Health {
        self.state().health
    }
}

/// The keys of one provider.
#[derive(Debug)]
pub struct KeyPool {
    provider: String,
    /// The provider's name as answers carry it (made once).
    provider_name: crate::request::Name,
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

/// The instant `d` after `now`, or far in the future when that cannot be represented.
pub fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d.min(MAX_OUT))
        .unwrap_or(now + Duration::from_secs(1))
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

    /// A pool for a reloaded config: keys with the same id and secret as in `previous` share
    /// their health and in-flight count with it (a cooling key stays cooling, a 429 answered
    /// to a request sent before the reload cools the key for both, a probe in flight is not
    /// started again); new keys start healthy.
    pub fn carry_over(
        provider: &str,
        keys: &[KeySettings],
        policy: PoolPolicy,
        metrics: &Metrics,
        previous: Option<&KeyPool>,
    ) -> Arc<Self> {
        let now = Instant::now();
        let kept = |k: &KeySettings| {
            let old = previous?
                .keys
                .iter()
                .find(|o| o.settings.id == k.id && o.settings.secret == k.secret)?;
            Some((Arc::clone(&old.state), Arc::clone(&old.inflight)))
        };
        let keys = keys
            .iter()
            .map(|k| {
                let (state, inflight) = kept(k).unwrap_or_else(|| {
                    let fresh = KeyState {
                        health: Health::Healthy,
                        outlier: Outlier::new(now),
                    };
                    (Arc::new(Mutex::new(fresh)), Arc::new(AtomicU32::new(0)))
                });
                let health = state.lock().unwrap_or_else(|p| p.into_inner()).health;
                let labels = |s| metrics.key_state.with_label_values(&[provider, &k.id, s]);
                let gauges = Health::LABELS.map(labels);
                for (g, s) in gauges.iter().zip(Health::LABELS) {
                    g.set(i64::from(s == health.label()));
                }
                PoolKey {
                    settings: k.clone(),
                    name: crate::request::Name::new(&k.id),
                    bucket: Arc::from(format!("k:{provider}:{}", k.id)),
                    limits: Limits {
                        rpm: k.rpm,
                        tpm: k.tpm,
                    },
                    state,
                    inflight,
                    gauges,
                    cooldowns: metrics.key_cooldowns.with_label_values(&[provider, &k.id]),
                    ejections: metrics.key_ejections.with_label_values(&[provider, &k.id]),
                }
            })
            .collect();
        Arc::new(KeyPool {
            provider: provider.to_owned(),
            provider_name: crate::request::Name::new(provider),
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
        self.keys[idx].health()
    }

    /// Whether [`KeyPool::select`] would find a key among those `excluded` does not reject,
    /// without taking it or changing any state; `Err` says when keys recover.
    pub fn available(
        &self,
        excluded: &dyn Fn(usize) -> bool,
        now: Instant,
    ) -> Result<(), Recovery> {
        let mut rec = Recovery::default();
        for (idx, key) in self.keys.iter().enumerate() {
            if excluded(idx) {
                continue;
            }
            match key.health() {
                Health::Healthy => return Ok(()),
                Health::Cooling { until } if until <= now => return Ok(()),
                Health::Disabled { probe_at } | Health::Ejected { probe_at } if probe_at <= now => {
                    return Ok(())
                }
                Health::Cooling { until } => Recovery::note(&mut rec.cooling, until),
                Health::Disabled { probe_at } | Health::Ejected { probe_at } => {
                    Recovery::note(&mut rec.probe, probe_at)
                }
                Health::Probing => {}
            }
        }
        Err(rec)
    }

    /// Picks a key for one attempt among those `excluded` does not reject. `Err` says when the
    /// keys not excluded recover.
    pub fn select(
        self: &Arc<Self>,
        excluded: &dyn Fn(usize) -> bool,
        now: Instant,
    ) -> Result<Lease, Recovery> {
        self.select_for(excluded, Prefer::Any, now)
    }

    /// [`KeyPool::select`] with a preference: for a session ([`Prefer::Session`], a hash of its
    /// `prompt_cache_key` or session id) the healthy key that rendezvous hashing ranks first
    /// for it, so a session's turns meet the provider's prompt cache on one key, and a key
    /// leaving the pool moves only its own sessions; for a stored response
    /// ([`Prefer::Key`]) the key that created it, whenever it can be used. Otherwise (no such
    /// key usable), as `select`.
    pub fn select_for(
        self: &Arc<Self>,
        excluded: &dyn Fn(usize) -> bool,
        prefer: Prefer,
        now: Instant,
    ) -> Result<Lease, Recovery> {
        let n = self.keys.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(usize, f64)> = None; // (idx, cost)
        let mut sticky: Option<(usize, f64)> = None; // (idx, rendezvous score)
        let mut rec = Recovery::default();
        for off in 0..n {
            let idx = (start + off) % n;
            if excluded(idx) {
                continue;
            }
            let key = &self.keys[idx];
            let health = key.apply(HealthEvent::Tick, now);
            match health {
                Health::Cooling { until } => {
                    Recovery::note(&mut rec.cooling, until);
                    continue;
                }
                Health::Disabled { probe_at } | Health::Ejected { probe_at } if probe_at > now => {
                    Recovery::note(&mut rec.probe, probe_at);
                    continue;
                }
                Health::Probing => continue,
                Health::Healthy | Health::Disabled { .. } | Health::Ejected { .. } => {}
            }
            let load = f64::from(key.inflight.load(Ordering::Relaxed)) + 1.0;
            let quality = key.state().outlier.quality(now);
            let cost = load / (f64::from(key.settings.weight.max(1)) * quality);
            if best.is_none_or(|(_, c)| cost < c) {
                best = Some((idx, cost));
            }
            match (prefer, health) {
                (Prefer::Key(k), _) if k == idx => sticky = Some((idx, f64::INFINITY)),
                (Prefer::Session(session), Health::Healthy) => {
                    let score = rendezvous(session, &key.settings.id, key.settings.weight);
                    if sticky.is_none_or(|(_, s)| score > s) {
                        sticky = Some((idx, score));
                    }
                }
                _ => {}
            }
        }
        let Some((idx, _)) = sticky.or(best) else {
            return Err(rec);
        };
        let key = &self.keys[idx];
        let probe_of = match key.health() {
            Health::Disabled { probe_at } | Health::Ejected { probe_at } if probe_at <= now => {
                Some(key.health())
            }
            Health::Healthy => None,
            // Lost a race to another request (took the probe, or cooled it): try again.
            _ => return self.select_for(&|i| i == idx || excluded(i), prefer, now),
        };
        if probe_of.is_some() && key.apply(HealthEvent::ProbeStarted, now) != Health::Probing {
            return self.select_for(&|i| i == idx || excluded(i), prefer, now);
        }
        key.inflight.fetch_add(1, Ordering::Relaxed);
        Ok(Lease {
            pool: Arc::clone(self),
            idx,
            probe_of,
            settled: false,
        })
    }

    /// Applies what another replica recorded about key `idx`: a longer cooldown, an ejection or
    /// a disablement replaces a healthy or shorter state; a probe in flight is left alone.
    pub fn apply_shared(&self, idx: usize, shared: crate::rate_limit::SharedHealth, now: Instant) {
        use crate::rate_limit::SharedHealth;
        let unix_ms = match shared {
            SharedHealth::Cooling(ms) | SharedHealth::Disabled(ms) | SharedHealth::Ejected(ms) => {
                ms
            }
        };
        let left = unix_ms.saturating_sub(crate::rate_limit::unix_ms());
        if left == 0 {
            return;
        }
        let at = after(now, Duration::from_millis(left));
        let event = match shared {
            SharedHealth::Cooling(_) => HealthEvent::SharedCooling { until: at },
            SharedHealth::Disabled(_) => HealthEvent::SharedDisabled { probe_at: at },
            SharedHealth::Ejected(_) => HealthEvent::SharedEjected { probe_at: at },
        };
        self.keys[idx].apply(event, now);
    }

    /// Current state of every key.
    pub fn view(&self, now: Instant) -> Vec<KeyView> {
        self.keys
            .iter()
            .map(|k| {
                let h = k.health();
                let remaining = match h {
                    Health::Cooling { until } => Some(until.saturating_duration_since(now)),
                    Health::Disabled { probe_at } | Health::Ejected { probe_at } => {
                        Some(probe_at.saturating_duration_since(now))
                    }
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

/// Which key a request would rather have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefer {
    /// Any: the least loaded, weighted by quality.
    Any,
    /// A session's (the hash of its name): its rendezvous-hashing key among the healthy ones.
    Session(u64),
    /// This key (it created the stored response the request refers to).
    Key(usize),
}

impl KeyPool {
    /// The index of the key whose bucket id is `bucket`.
    pub fn index_of(&self, bucket: &str) -> Option<usize> {
        self.keys.iter().position(|k| &*k.bucket == bucket)
    }
}

/// Weighted rendezvous (highest random weight) score of key `id` for a session: the key with
/// the highest score serves it; `weight` scales a key's share of sessions.
fn rendezvous(session: u64, id: &str, weight: u32) -> f64 {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: every replica ranks a session's keys the same way.
    let mut h = std::hash::DefaultHasher::new();
    session.hash(&mut h);
    id.hash(&mut h);
    // A uniform draw in (0, 1), from the hash's top 53 bits.
    let u = ((h.finish() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(weight.max(1)) / -u.ln()
}

/// The affinity of a session's name (a `prompt_cache_key`, a session id): a stable hash.
pub fn affinity(name: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    name.hash(&mut h);
    h.finish()
}

mod lease;
pub use lease::{KeyRef, Lease};

/// A pool of keys named `ids` (secrets `sk-<id>`, weight 1, no limits) under the policy the
/// tests share: cooldowns of 10 s by default and at most 60 s, probes after 30 s.
#[cfg(test)]
pub(crate) fn test_pool(ids: &[&str], metrics: &Metrics) -> Arc<KeyPool> {
    let keys: Vec<KeySettings> = ids
        .iter()
        .map(|id| KeySettings {
            id: (*id).into(),
            secret: crate::config::Secret::new(format!("sk-{id}")),
            weight: 1,
            rpm: None,
            tpm: None,
        })
        .collect();
    let policy = PoolPolicy {
        cooldown_default: Duration::from_secs(10),
        cooldown_max: Duration::from_secs(60),
        probe_interval: Duration::from_secs(30),
        outlier: OutlierPolicy::default(),
    };
    KeyPool::new("p", &keys, policy, metrics)
}

#[cfg(test)]
mod tests;
