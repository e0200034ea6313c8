//! `TokenBucket`: the pure math of one RPM or TPM limit, with an explicit clock.
//!
//! Burst is the per-minute limit; refill is continuous (limit / 60 per second). A take of N
//! either fits or answers how long until it would. Real usage corrects a take afterwards
//! (refund or charge; a charge may leave the bucket in debt), and a provider's own
//! `x-ratelimit-remaining-*` brings the level down, never above what the config allows.

use std::time::Duration;
use tokio::time::Instant;

/// One bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenBucket {
    capacity: f64,
    per_sec: f64,
    level: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket for `per_minute` units per minute.
    pub fn per_minute(per_minute: u64, now: Instant) -> Self {
        let capacity = per_minute as f64;
        TokenBucket {
            capacity,
            per_sec: capacity / 60.0,
            level: capacity,
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.level = (self.level + elapsed * self.per_sec).min(self.capacity);
        self.updated = self.updated.max(now);
    }

    /// Units available now (negative while in debt).
    pub fn available(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.level
    }

    /// How long until `n` units are available; zero when they are now. A take larger than the
    /// capacity can never pass: `None`.
    pub fn wait_for(&mut self, n: u64, now: Instant) -> Option<Duration> {
        let n = n as f64;
        if n > self.capacity {
            return None;
        }
        self.refill(now);
        if self.level >= n {
            return Some(Duration::ZERO);
        }
        Duration::try_from_secs_f64((n - self.level) / self.per_sec).ok()
    }

    /// Takes `n` units if they are available; else answers the wait (or `None`: never).
    pub fn try_take(&mut self, n: u64, now: Instant) -> Result<(), Option<Duration>> {
        match self.wait_for(n, now) {
            Some(wait) if wait.is_zero() => {
                self.level -= n as f64;
                Ok(())
            }
            other => Err(other),
        }
    }

    /// Corrects an earlier take of `estimated` by the `actual` use: refunds or charges the difference.
    pub fn reconcile(&mut self, estimated: u64, actual: u64, now: Instant) {
        self.refill(now);
        self.level = (self.level + estimated as f64 - actual as f64).min(self.capacity);
    }

    /// Brings the level down to what the provider reports remaining (never up).
    pub fn sync_remaining(&mut self, remaining: u64, now: Instant) {
        self.refill(now);
        self.level = self.level.min(remaining as f64);
    }

    /// The limit per minute.
    pub fn capacity(&self) -> u64 {
        self.capacity as u64
    }

    /// Time until the bucket is full again.
    pub fn until_full(&mut self, now: Instant) -> Duration {
        self.refill(now);
        Duration::try_from_secs_f64(((self.capacity - self.level) / self.per_sec).max(0.0))
            .unwrap_or(Duration::ZERO)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn burst_is_the_per_minute_limit_then_refill_is_continuous() {
        let t0 = Instant::now();
        let mut b = TokenBucket::per_minute(60, t0);
        for _ in 0..60 {
            b.try_take(1, t0).unwrap();
        }
        assert_eq!(b.try_take(1, t0), Err(Some(Duration::from_secs(1))));
        assert!(b.try_take(1, t0 + Duration::from_millis(999)).is_err());
        assert!(b.try_take(1, t0 + Duration::from_secs(1)).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn weighted_take_and_wait_time() {
        let t0 = Instant::now();
        let mut b = TokenBucket::per_minute(6000, t0); // 100/s
        b.try_take(5000, t0).unwrap();
        assert_eq!(b.try_take(2000, t0), Err(Some(Duration::from_secs(10))));
        assert_eq!(
            b.try_take(7000, t0),
            Err(None),
            "larger than the burst: never"
        );
        assert!(b.try_take(2000, t0 + Duration::from_secs(10)).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn reconcile_refunds_and_charges() {
        let t0 = Instant::now();
        let mut b = TokenBucket::per_minute(1000, t0);
        b.try_take(500, t0).unwrap();
        b.reconcile(500, 100, t0);
        assert_eq!(b.available(t0), 900.0);
        b.reconcile(0, 1500, t0);
        assert_eq!(
            b.available(t0),
            -600.0,
            "real usage beyond the estimate leaves debt"
        );
        assert_eq!(
            b.wait_for(1, t0),
            Some(Duration::from_secs_f64(601.0 / (1000.0 / 60.0)))
        );
        b.reconcile(5000, 0, t0);
        assert_eq!(b.available(t0), 1000.0, "never above the capacity");
    }

    #[tokio::test(start_paused = true)]
    async fn provider_headers_only_bring_the_level_down() {
        let t0 = Instant::now();
        let mut b = TokenBucket::per_minute(100, t0);
        b.sync_remaining(10, t0);
        assert_eq!(b.available(t0), 10.0);
        b.sync_remaining(50, t0);
        assert_eq!(b.available(t0), 10.0);
    }

    #[tokio::test(start_paused = true)]
    async fn until_full() {
        let t0 = Instant::now();
        let mut b = TokenBucket::per_minute(60, t0);
        b.try_take(30, t0).unwrap();
        assert_eq!(b.until_full(t0), Duration::from_secs(30));
    }
}
