//! Key selection for one attempt, and waiting when no key is available.

use super::walk::{NoKey, Walk};
use super::Dispatcher;
use crate::key_pool::Lease;
use crate::request::GatewayRequest;
use tokio::time::Instant;

impl Dispatcher {
    /// Picks a key: first never-tried keys, then keys that failed only transiently; a key
    /// whose RPM/TPM bucket cannot take this request is skipped like a cooling one.
    pub(super) async fn pick(
        &self,
        provider: usize,
        walk: &Walk,
        req: &GatewayRequest,
        now: Instant,
    ) -> Result<Lease, NoKey> {
        let pool = &self.pools[provider];
        let mut full: Vec<usize> = Vec::new();
        let mut no_key = NoKey::default();
        loop {
            let hard = |i: usize| walk.hard.contains(&(provider, i)) || full.contains(&i);
            let untried = pool.select(&|i| hard(i) || walk.soft.contains(&(provider, i)), now);
            let lease = match untried {
                Ok(lease) => lease,
                Err(e1) => match pool.select(&hard, now) {
                    Ok(lease) => lease,
                    Err(e2) => {
                        no_key.earliest = [e1, e2].into_iter().flatten().min();
                        return Err(no_key);
                    }
                },
            };
            let (bucket, limits) = pool.bucket(lease.idx());
            match self.limiter.take(bucket, limits, req.tokens).await {
                Ok(_) => return Ok(lease),
                Err(refused) => {
                    self.metrics
                        .rate_limited
                        .with_label_values(&["upstream", refused.dimension.label()])
                        .inc();
                    if let Some(wait) = refused.wait {
                        no_key.refill = Some(no_key.refill.map_or(wait, |w| w.min(wait)));
                    }
                    full.push(lease.idx());
                }
            }
        }
    }

    /// With no key available: waits for a bucket refill (up to `max_queue_wait`) or, on the
    /// last target, for the earliest cooling key, when the deadline allows; `None` gives up.
    pub(super) async fn wait_for_key(
        &self,
        no_key: NoKey,
        is_last: bool,
        req: &GatewayRequest,
        walk: &mut Walk,
    ) -> Option<()> {
        let now = Instant::now();
        if let Some(refill) = no_key.refill {
            walk.note_earliest(now + refill);
            if refill <= self.settings.limits.max_queue_wait && now + refill < req.deadline {
                self.metrics.ratelimit_wait.observe(refill.as_secs_f64());
                tokio::time::sleep(refill).await;
                return Some(());
            }
        }
        let at = no_key.earliest?;
        walk.note_earliest(at);
        if is_last && at < req.deadline {
            // Every key is cooling and nothing is left to fall back to: wait for the first.
            tokio::time::sleep_until(at).await;
            return Some(());
        }
        None
    }
}
