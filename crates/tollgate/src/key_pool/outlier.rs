//! Outlier detection for one key (Envoy's outlier detection, linkerd's failure accrual): what a
//! key's recent answers say about it, as plain data taking `now`.
//!
//! - **Ejection.** `consecutive` transient failures in a row (5xx, 529, timeouts, connect
//!   errors, a stream's error before its first event), or a failure share of at least
//!   `failure_percent` over a window with at least `min_requests` answers, eject the key. The
//!   ejection lasts `base` × 2^(ejections in this episode), capped at `max`; then one probe
//!   decides: a success ends the episode, a failure ejects it again for twice as long.
//! - **Preference.** Every answer moves a success score (1 = every recent answer succeeded) and
//!   a latency average; both drift back to "healthy" with a half-life when the key gets no
//!   traffic, so a key that was bad is tried again. [`Outlier::quality`] turns them into a factor
//!   in (0, 1] that selection multiplies the key's weight by; small differences count as none,
//!   so healthy keys still share traffic evenly.

use std::time::Duration;
use tokio::time::Instant;

/// When a key is ejected, and for how long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutlierPolicy {
    /// Transient failures in a row that eject a key (0: never by count).
    pub consecutive: u32,
    /// Failure share (percent) over `window` that ejects a key (0: never by rate).
    pub failure_percent: u32,
    /// Answers a window needs before its failure share counts.
    pub min_requests: u32,
    /// Length of the failure-rate window.
    pub window: Duration,
    /// First ejection's length.
    pub base: Duration,
    /// Longest ejection.
    pub max: Duration,
}

impl Default for OutlierPolicy {
    fn default() -> Self {
        OutlierPolicy {
            consecutive: 5,
            failure_percent: 50,
            min_requests: 10,
            window: Duration::from_secs(10),
            base: Duration::from_secs(10),
            max: Duration::from_secs(300),
        }
    }
}

/// Half-life of the success score's and latency's drift back to healthy.
const HALF_LIFE_SECS: f64 = 10.0;
/// Weight of one answer in the moving averages.
const ALPHA: f64 = 0.2;
/// Qualities above this count as fully healthy (keys share traffic evenly).
const DEAD_ZONE: f64 = 0.8;

/// One key's recent record.
#[derive(Debug, Clone, Copy)]
pub struct Outlier {
    consecutive: u32,
    window_start: Instant,
    window_ok: u32,
    window_failed: u32,
    /// Ejections in the current episode (0: not in one).
    ejections: u32,
    score: f64,
    latency_secs: f64,
    updated: Instant,
}

impl Outlier {
    /// A key with a clean record.
    pub fn new(now: Instant) -> Self {
        Outlier {
            consecutive: 0,
            window_start: now,
            window_ok: 0,
            window_failed: 0,
            ejections: 0,
            score: 1.0,
            latency_secs: 0.0,
            updated: now,
        }
    }

    /// Whether the key is in an ejection episode (ejected, or probing after one).
    pub fn in_episode(&self) -> bool {
        self.ejections > 0
    }

    fn decay(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.updated).as_secs_f64();
        let keep = 0.5f64.powf(dt / HALF_LIFE_SECS);
        self.score = 1.0 - (1.0 - self.score) * keep;
        self.latency_secs *= keep;
        self.updated = now;
    }

    fn roll_window(&mut self, policy: &OutlierPolicy, now: Instant) {
        if now.saturating_duration_since(self.window_start) >= policy.window {
            self.window_start = now;
            self.window_ok = 0;
            self.window_failed = 0;
        }
    }

    fn sample(&mut self, ok: bool, latency: Duration, now: Instant) {
        self.decay(now);
        let target = if ok { 1.0 } else { 0.0 };
        self.score += ALPHA * (target - self.score);
        let secs = latency.as_secs_f64().min(3600.0);
        self.latency_secs += ALPHA * (secs - self.latency_secs);
    }

    /// The key answered: its record improves, and a probe's success ends an episode.
    pub fn succeeded(&mut self, latency: Duration, policy: &OutlierPolicy, now: Instant) {
        self.sample(true, latency, now);
        self.roll_window(policy, now);
        self.window_ok = self.window_ok.saturating_add(1);
        self.consecutive = 0;
        self.ejections = 0;
    }

    /// A transient failure; `Some(length)` when it ejects the key (a failed probe in an
    /// episode always does).
    pub fn failed(
        &mut self,
        latency: Duration,
        probing: bool,
        policy: &OutlierPolicy,
        now: Instant,
    ) -> Option<Duration> {
        self.sample(false, latency, now);
        self.roll_window(policy, now);
        self.window_failed = self.window_failed.saturating_add(1);
        self.consecutive = self.consecutive.saturating_add(1);
        let by_count = policy.consecutive > 0 && self.consecutive >= policy.consecutive;
        let total = self.window_ok.saturating_add(self.window_failed);
        let by_rate = policy.failure_percent > 0
            && total >= policy.min_requests.max(1)
            && u64::from(self.window_failed) * 100
                >= u64::from(total) * u64::from(policy.failure_percent);
        if !(by_count || by_rate || (probing && self.in_episode())) {
            return None;
        }
        let exp = self.ejections.min(20);
        self.ejections = self.ejections.saturating_add(1);
        self.consecutive = 0;
        self.window_start = now;
        self.window_ok = 0;
        self.window_failed = 0;
        Some(policy.base.saturating_mul(1 << exp).min(policy.max))
    }

    /// A factor in (0, 1] for the key's weight: the success score to the fourth power, less for
    /// a slow key (a 10 s average halves it); anything above 0.8 counts as 1.
    pub fn quality(&self, now: Instant) -> f64 {
        let mut view = *self;
        view.decay(now);
        let q = view.score.powi(4) / (1.0 + view.latency_secs / 10.0);
        if q > DEAD_ZONE {
            1.0
        } else {
            q.max(0.01)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(100);

    #[tokio::test(start_paused = true)]
    async fn five_failures_in_a_row_eject_and_a_success_resets_the_count() {
        let p = OutlierPolicy::default();
        let now = Instant::now();
        let mut o = Outlier::new(now);
        for _ in 0..4 {
            assert_eq!(o.failed(MS, false, &p, now), None);
        }
        o.succeeded(MS, &p, now);
        for _ in 0..4 {
            assert_eq!(o.failed(MS, false, &p, now), None);
        }
        assert_eq!(o.failed(MS, false, &p, now), Some(Duration::from_secs(10)));
        assert!(o.in_episode());
    }

    #[tokio::test(start_paused = true)]
    async fn ejections_grow_with_each_failed_probe_up_to_the_cap() {
        let p = OutlierPolicy::default();
        let now = Instant::now();
        let mut o = Outlier::new(now);
        for _ in 0..4 {
            o.failed(MS, false, &p, now);
        }
        let mut lengths = vec![o.failed(MS, false, &p, now).unwrap()];
        for _ in 0..6 {
            lengths.push(o.failed(MS, true, &p, now).unwrap());
        }
        let secs: Vec<u64> = lengths.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [10, 20, 40, 80, 160, 300, 300]);
        o.succeeded(MS, &p, now);
        assert!(!o.in_episode(), "a successful probe ends the episode");
        assert_eq!(
            o.failed(MS, true, &p, now),
            None,
            "a new episode needs new failures"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_share_over_the_window_ejects() {
        let p = OutlierPolicy::default();
        let now = Instant::now();
        let mut o = Outlier::new(now);
        // Alternating: never 5 in a row, but 50% of 10 answers.
        let mut ejected = None;
        for i in 0..10 {
            if i % 2 == 0 {
                o.succeeded(MS, &p, now);
            } else {
                ejected = o.failed(MS, false, &p, now);
            }
        }
        assert_eq!(ejected, Some(Duration::from_secs(10)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_thirty_percent_flaky_key_is_not_ejected_but_loses_preference() {
        let p = OutlierPolicy::default();
        let now = Instant::now();
        let mut o = Outlier::new(now);
        for i in 0..30 {
            if i % 10 < 3 {
                assert_eq!(o.failed(MS, false, &p, now), None);
            } else {
                o.succeeded(MS, &p, now);
            }
        }
        let mut healthy = Outlier::new(now);
        healthy.succeeded(MS, &p, now);
        assert_eq!(healthy.quality(now), 1.0);
        assert!(o.quality(now) <= 1.0);
        let mut bad = Outlier::new(now);
        for _ in 0..4 {
            bad.failed(MS, false, &p, now);
        }
        let q = bad.quality(now);
        assert!(q < 0.2, "{q}");
        // Without traffic the record drifts back to healthy.
        let later = now + Duration::from_secs(60);
        assert_eq!(bad.quality(later), 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_key_loses_preference() {
        let p = OutlierPolicy::default();
        let now = Instant::now();
        let mut slow = Outlier::new(now);
        for _ in 0..10 {
            slow.succeeded(Duration::from_secs(20), &p, now);
        }
        assert!(slow.quality(now) < 0.5);
    }
}
