//! `TokenBucket`: the pure math of one RPM or TPM limit, with an explicit clock.
//!
//! Burst is the per-minute limit; refill is continuous (limit / 60 per second). A take of N
//! either fits or answers how long until it would. Real usage corrects a take afterwards
//! (refund or charge; a charge may leave the bucket in debt), a failed attempt gets its take
//! back, and a provider's own `x-ratelimit-remaining-*` brings the level down, never above
//! what the config allows.
//!
//! The level always stays within `-capacity ..= capacity`, whatever the numbers: debt is
//! bounded by one minute's worth of the limit, so no answer, however large the usage it
//! reports, makes a take that fits the limit wait longer than two minutes.

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
        // A take reads a bucket several times at one instant: only the first refills.
        if now <= self.updated {
            return;
        }
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.set(self.level + elapsed * self.per_sec);
        self.updated = self.updated.max(now);
    }

    /// Sets the level, kept within `-capacity ..= capacity` (debt of at most one minute).
    fn set(&mut self, level: f64) {
        self.level = level.clamp(-self.capacity, self.capacity);
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

    /// Corrects an earlier take of `estimated` by the `actual` use: refunds or charges the
    /// difference (a charge leaves at most one minute of debt).
    pub fn reconcile(&mut self, estimated: u64, actual: u64, now: Instant) {
        self.refill(now);
        self.set(self.level + estimated as f64 - actual as f64);
    }

    /// Gives back `n` units of an earlier take (never above the capacity).
    pub fn refund(&mut self, n: u64, now: Instant) {
        self.refill(now);
        self.set(self.level + n as f64);
    }

    /// Brings the level down to what the provider reports remaining (never up).
    pub fn sync_remaining(&mut self, remaining: u64, now: Instant) {
        self.refill(now);
        self.set(self.level.min(remaining as f64));
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
    async fn the_largest_usage_leaves_one_minute_of_debt_at_most() {
        let t0 = Instant::now();
        let mut b = TokenBucket::per_minute(100_000, t0);
        b.try_take(1000, t0).unwrap();
        b.reconcile(1000, u64::MAX, t0);
        assert_eq!(b.available(t0), -100_000.0);
        let two_minutes =
            |d: Duration| d.abs_diff(Duration::from_secs(120)) < Duration::from_millis(1);
        assert!(two_minutes(b.until_full(t0)));
        let wait = b.wait_for(100_000, t0).unwrap();
        assert!(
            two_minutes(wait),
            "two minutes, not 350,000 years: {wait:?}"
        );
        assert!(t0.checked_add(wait).is_some());
        b.reconcile(u64::MAX, 0, t0);
        assert_eq!(b.available(t0), 100_000.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refund_gives_back_at_most_up_to_the_capacity() {
        let t0 = Instant::now();
        let mut b = TokenBucket::per_minute(600, t0);
        b.try_take(500, t0).unwrap();
        b.refund(200, t0);
        assert_eq!(b.available(t0), 300.0);
        b.refund(u64::MAX, t0);
        assert_eq!(b.available(t0), 600.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_limit_passes_nothing_and_never_panics() {
        let t0 = Instant::now();
        let mut b = TokenBucket::per_minute(0, t0);
        assert_eq!(b.try_take(1, t0), Err(None));
        assert_eq!(b.until_full(t0), Duration::ZERO);
        b.reconcile(0, u64::MAX, t0);
        b.refund(u64::MAX, t0);
        assert_eq!(b.available(t0 + Duration::from_secs(60)), 0.0);
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

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Take(u64),
        Refund(u64),
        Reconcile(u64, u64),
        Sync(u64),
        Advance(u64),
    }

    /// Counts from small ones to the wrapping edges of `u64`.
    fn count() -> impl Strategy<Value = u64> {
        prop_oneof![
            0..2_000u64,
            any::<u64>(),
            Just(u64::MAX),
            Just(1 << 53),
            Just(i64::MAX as u64 + 1),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            count().prop_map(Op::Take),
            count().prop_map(Op::Refund),
            (count(), count()).prop_map(|(e, a)| Op::Reconcile(e, a)),
            count().prop_map(Op::Sync),
            (0..200_000u64).prop_map(Op::Advance),
        ]
    }

    proptest! {
        /// Whatever is taken, refunded, reported or synced, the level stays within
        /// `-capacity ..= capacity`, and any take that fits the limit waits at most two minutes.
        #[test]
        fn any_sequence_stays_within_the_capacity(
            per_minute in prop_oneof![0..100u64, any::<u32>().prop_map(u64::from)],
            ops in proptest::collection::vec(op(), 0..40),
        ) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut b = TokenBucket::per_minute(per_minute, t0);
            let cap = per_minute as f64;
            for op in ops {
                match op {
                    Op::Take(n) => {
                        let taken = b.try_take(n, now);
                        if n > per_minute {
                            prop_assert_eq!(taken, Err(None));
                        }
                    }
                    Op::Refund(n) => b.refund(n, now),
                    Op::Reconcile(e, a) => b.reconcile(e, a, now),
                    Op::Sync(r) => b.sync_remaining(r, now),
                    Op::Advance(ms) => now += Duration::from_millis(ms),
                }
                let level = b.available(now);
                prop_assert!((-cap..=cap).contains(&level), "level {} of {}", level, cap);
                // Two minutes, give or take the rounding of a division.
                let longest = Duration::from_secs(120) + Duration::from_millis(1);
                let full = b.until_full(now);
                prop_assert!(full <= longest, "full in {:?}", full);
                let wait = b.wait_for(per_minute, now);
                prop_assert!(wait.is_some_and(|w| w <= longest), "{:?}", wait);
                prop_assert!(now.checked_add(full).is_some());
            }
        }
    }
}
