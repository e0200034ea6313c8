//! Backoff and the retry budget: the pure math that bounds retries.

use rand::Rng;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Exponential backoff with full jitter, never shorter than what the provider asked for.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Wait scale of the first retry.
    pub base: Duration,
    /// Largest jittered wait.
    pub cap: Duration,
}

impl Backoff {
    /// The wait before retry number `retry` (0 for the first retry): uniform in
    /// `[0, min(cap, base * 2^retry)]`, raised to `asked` when the provider named a time.
    pub fn delay(&self, retry: u32, asked: Option<Duration>, rng: &mut impl Rng) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX))
            .min(self.cap);
        let jittered = ceiling.mul_f64(rng.random::<f64>());
        jittered.max(asked.unwrap_or(Duration::ZERO))
    }
}

/// Retries may add at most `percent`% to the request rate over a sliding window, plus a floor
/// of `min_per_sec` per second (tower's budget idea): during an outage the extra load stays
/// bounded instead of multiplying by the attempt count.
#[derive(Debug)]
pub struct RetryBudget {
    percent: u32,
    min_per_sec: u32,
    slot_len: Duration,
    origin: Instant,
    slots: Mutex<[Slot; SLOTS]>,
}

const SLOTS: usize = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    epoch: u64,
    requests: u32,
    retries: u32,
}

impl RetryBudget {
    /// A budget over `window`, counted in ten slots.
    pub fn new(percent: u32, min_per_sec: u32, window: Duration, origin: Instant) -> Self {
        let slot_len = (window / SLOTS as u32).max(Duration::from_millis(1));
        RetryBudget {
            percent,
            min_per_sec,
            slot_len,
            origin,
            slots: Mutex::new([Slot::default(); SLOTS]),
        }
    }

    fn with_slot<R>(&self, now: Instant, f: impl FnOnce(&mut [Slot; SLOTS], usize, u64) -> R) -> R {
        let epoch = (now.saturating_duration_since(self.origin).as_nanos()
            / self.slot_len.as_nanos().max(1)) as u64;
        let idx = (epoch % SLOTS as u64) as usize;
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if slots[idx].epoch != epoch {
            slots[idx] = Slot {
                epoch,
                requests: 0,
                retries: 0,
            };
        }
        f(&mut slots, idx, epoch)
    }

    /// Counts one client request.
    pub fn deposit(&self, now: Instant) {
        self.with_slot(now, |slots, idx, _| {
            slots[idx].requests = slots[idx].requests.saturating_add(1)
        });
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub fn try_withdraw(&self, now: Instant) -> bool {
        let window_secs = self.slot_len.as_secs_f64() * SLOTS as f64;
        self.with_slot(now, |slots, idx, epoch| {
            let live = slots
                .iter()
                .filter(|s| epoch.saturating_sub(s.epoch) < SLOTS as u64);
            let (requests, retries) = live.fold((0u64, 0u64), |(q, r), s| {
                (q + s.requests as u64, r + s.retries as u64)
            });
            let allowed = self.min_per_sec as f64 * window_secs
                + requests as f64 * self.percent as f64 / 100.0;
            if (retries as f64) < allowed {
                slots[idx].retries = slots[idx].retries.saturating_add(1);
                true
            } else {
                false
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        };
        let mut rng = SmallRng::seed_from_u64(7);
        for retry in 0..20 {
            let ceiling =
                Duration::from_millis(100 * (1u64 << retry.min(20))).min(Duration::from_secs(1));
            for _ in 0..50 {
                assert!(b.delay(retry, None, &mut rng) <= ceiling);
            }
        }
        // Full jitter: values spread over the range rather than clustering at the top.
        let samples: Vec<_> = (0..200).map(|_| b.delay(3, None, &mut rng)).collect();
        assert!(samples.iter().any(|d| *d < Duration::from_millis(200)));
        assert!(samples.iter().any(|d| *d > Duration::from_millis(600)));
    }

    #[test]
    fn backoff_never_undercuts_the_provider() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        };
        let mut rng = SmallRng::seed_from_u64(1);
        for _ in 0..100 {
            assert!(
                b.delay(0, Some(Duration::from_millis(2500)), &mut rng)
                    >= Duration::from_millis(2500)
            );
        }
    }

    #[test]
    fn backoff_sequence_is_reproducible_with_a_seed() {
        let b = Backoff {
            base: Duration::from_millis(250),
            cap: Duration::from_secs(20),
        };
        let run = |seed| {
            let mut rng = SmallRng::seed_from_u64(seed);
            (0..4)
                .map(|n| b.delay(n, None, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
    }

    #[tokio::test(start_paused = true)]
    async fn budget_allows_floor_plus_percent_then_refuses() {
        let now = Instant::now();
        // 1 retry/s floor over a 10 s window = 10, plus 20% of 100 requests = 20: 30 retries.
        let budget = RetryBudget::new(20, 1, Duration::from_secs(10), now);
        for _ in 0..100 {
            budget.deposit(now);
        }
        let granted = (0..100).filter(|_| budget.try_withdraw(now)).count();
        assert_eq!(granted, 30);
        assert!(!budget.try_withdraw(now));
    }

    #[tokio::test(start_paused = true)]
    async fn budget_recovers_once_the_window_passes() {
        let start = Instant::now();
        let budget = RetryBudget::new(0, 1, Duration::from_secs(10), start);
        assert_eq!((0..20).filter(|_| budget.try_withdraw(start)).count(), 10);
        let later = start + Duration::from_secs(11);
        assert!(budget.try_withdraw(later));
    }
}
