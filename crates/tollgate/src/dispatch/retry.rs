//! The retry layer: the attempts on one target, as one loop. Each attempt goes to key
//! selection; what a failed attempt means comes from the decision table, and this layer only
//! applies it: another attempt (after a full-jitter backoff, at least as long as the key about
//! to be reused asked for, when the only keys left already failed), the next target, or the
//! upstream's error as is. Retries are bounded by `max_attempts` per target, the request
//! deadline and the provider's retry budget; a spent budget, a wait that would end past the
//! deadline, a timeout while later targets exist, or a provider whose keys are all out move the
//! request to the next target at once. Each attempt gets a share of the time left that leaves
//! room for the targets after it.

use super::backoff::{Backoff, RetryBudget};
use super::decision::Then;
use super::select::{AttemptCall, Missed, NoKey};
use super::trail::{Failure, StopReason, Trail};
use crate::key_pool::{KeyPool, Recovery};
use crate::metrics::Metrics;
use crate::policy::{Policy, PolicyLayer, PolicyService};
use crate::provider::classify::Kind;
use crate::request::{Answer, GatewayRequest, Served, Target};
use bytes::Bytes;
use rand::rngs::SmallRng;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

/// One target's turn in the chain (fallback layer → retry).
#[derive(Debug, Clone)]
pub struct TargetCall {
    /// The client's request.
    pub req: Arc<GatewayRequest>,
    /// The target.
    pub target: Target,
    /// The body prepared for the target's dialect.
    pub body: Bytes,
    /// The request's walk state.
    pub trail: Trail,
    /// Whether no target follows (then waiting for a cooling key is worth it).
    pub is_last: bool,
    /// How many targets follow this one (each is left a share of the time).
    pub targets_after: usize,
    /// Whether an earlier target was tried.
    pub fallback: bool,
}

/// Why a target gave no answer.
#[derive(Debug)]
pub enum TargetEnd {
    /// Move to the next target, for this reason (a `tollgate_fallbacks_total` label).
    Next(&'static str),
    /// Stop walking.
    Stop(StopReason),
    /// Return this upstream error to the client as is.
    PassThrough(Box<Failure>),
    /// The client's own buckets refused the request (taken with a key's, with Redis).
    ClientLimited(crate::rate_limit::Refused),
}

/// The retry policy's state (its layer is [`RetryLayer`]).
pub struct RetryShared {
    pub(crate) pools: Arc<[Arc<KeyPool>]>,
    /// One budget per provider.
    pub(crate) budgets: Arc<[RetryBudget]>,
    pub(crate) backoff: Backoff,
    pub(crate) rng: Mutex<SmallRng>,
    pub(crate) max_attempts: u32,
    pub(crate) max_queue_wait: Duration,
    pub(crate) metrics: Metrics,
    pub(crate) provider_names: Vec<String>,
}

/// Builds [`Retry`] services.
pub type RetryLayer = PolicyLayer<RetryShared>;

/// Runs the attempts on one target.
pub type Retry<S> = PolicyService<RetryShared, S>;

impl RetryLayer {
    pub(crate) fn new(shared: RetryShared) -> Self {
        PolicyLayer::of(shared)
    }
}

/// Whether the next attempt can have a key nobody tried, or only one that failed already.
enum Preview {
    Fresh,
    OnlyRetried,
    None(Recovery),
}

impl<S> Policy<S> for RetryShared
where
    S: Service<AttemptCall, Response = Answer, Error = Missed> + Clone + Send + 'static,
    S::Future: Send,
{
    type Request = TargetCall;
    type Response = Answer;
    type Error = TargetEnd;

    async fn run(self: Arc<Self>, next: S, call: TargetCall) -> Result<Answer, TargetEnd> {
        self.attempts(next, call).await
    }
}

impl RetryShared {
    async fn attempts<S>(&self, inner: S, call: TargetCall) -> Result<Answer, TargetEnd>
    where
        S: Service<AttemptCall, Response = Answer, Error = Missed> + Clone,
    {
        let provider = call.target.provider;
        let deadline = call.req.deadline;
        let mut made = 0;
        // Whether the loop just waited for a key to recover (then no backoff on top).
        let mut waited = false;
        loop {
            if made >= self.max_attempts {
                return Err(TargetEnd::Next("attempts_exhausted"));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(self.stop(&call.trail, StopReason::Deadline));
            }
            let reuse = match self.preview(&call, now) {
                Preview::Fresh => false,
                Preview::OnlyRetried => true,
                Preview::None(recovery) => {
                    let no_key = NoKey {
                        recovery,
                        refill: None,
                        client: None,
                    };
                    self.wait_for_key(no_key, &call).await?;
                    waited = true;
                    continue;
                }
            };
            if made > 0 {
                self.withdraw(&call.trail, provider, now)?;
            }
            let now = match reuse && !std::mem::take(&mut waited) {
                true => {
                    self.back_off(&call, now).await?;
                    Instant::now()
                }
                false => now,
            };
            let served = match (call.fallback, made > 0) {
                (true, _) => Served::AfterFallback,
                (false, false) => Served::FirstTry,
                (false, true) => Served::AfterRetry,
            };
            let attempt = AttemptCall {
                req: Arc::clone(&call.req),
                target: call.target.clone(),
                body: call.body.clone(),
                trail: call.trail.clone(),
                served,
                deadline: attempt_deadline(deadline, call.targets_after, now),
            };
            let mut next = inner.clone();
            let called = match next.ready().await {
                Ok(next) => next.call(attempt).await,
                Err(e) => Err(e),
            };
            match called {
                Ok(answer) => return Ok(answer),
                Err(Missed::NoKey(NoKey {
                    client: Some(refused),
                    ..
                })) => return Err(TargetEnd::ClientLimited(refused)),
                Err(Missed::NoKey(no_key)) => {
                    self.wait_for_key(no_key, &call).await?;
                    waited = true;
                }
                Err(Missed::Failed(then)) => {
                    made += 1;
                    self.after_failure(then, &call)?;
                }
            }
        }
    }

    /// What a failed attempt's "then" means for the target.
    fn after_failure(&self, then: Then, call: &TargetCall) -> Result<(), TargetEnd> {
        match then {
            Then::Answer | Then::Retry => {
                // A target that timed out is not tried again before the ones after it.
                let timed_out = call.trail.lock().last_kind == Some(Kind::Timeout);
                if timed_out && !call.is_last {
                    return Err(TargetEnd::Next("timeout"));
                }
                Ok(())
            }
            Then::NextTarget(reason) => Err(TargetEnd::Next(reason)),
            Then::PassThrough => Err(match call.trail.lock().last_failure.take() {
                Some(f) => TargetEnd::PassThrough(Box::new(f)),
                None => TargetEnd::Next("client_error"),
            }),
        }
    }

    /// Takes one retry from the provider's budget; a spent budget moves the request on.
    fn withdraw(&self, trail: &Trail, provider: usize, now: Instant) -> Result<(), TargetEnd> {
        if !self.budgets[provider].try_withdraw(now) {
            self.metrics.budget_exhausted.inc();
            trail.lock().budget_spent = true;
            return Err(TargetEnd::Next("budget_spent"));
        }
        let reason = trail.lock().last_kind.map_or("unknown", |k| k.label());
        self.metrics
            .retries
            .with_label_values(&[&self.provider_names[provider], reason])
            .inc();
        Ok(())
    }

    fn stop(&self, trail: &Trail, reason: StopReason) -> TargetEnd {
        trail.lock().stop = Some(reason);
        TargetEnd::Stop(reason)
    }

    /// Asks the pool, without taking anything, what the next attempt could get.
    fn preview(&self, call: &TargetCall, now: Instant) -> Preview {
        let provider = call.target.provider;
        let (hard, soft) = call.trail.lock().exclusions(provider);
        if hard.is_empty() && soft.is_empty() {
            return Preview::Fresh;
        }
        let pool = &self.pools[provider];
        let fresh = pool.available(&|i| hard.contains(&i) || soft.contains(&i), now);
        let Err(r1) = fresh else {
            return Preview::Fresh;
        };
        match pool.available(&|i| hard.contains(&i), now) {
            Ok(()) => Preview::OnlyRetried,
            Err(r2) => Preview::None(r1.merge(r2)),
        }
    }

    /// The wait before reusing a key that failed: full jitter, at least until the key that
    /// will be reused said it could take traffic. A wait that would end past the deadline is
    /// not started: the request moves to the next target.
    async fn back_off(&self, call: &TargetCall, now: Instant) -> Result<(), TargetEnd> {
        let delay = {
            let mut walk = call.trail.lock();
            let ask = walk
                .first_ready(call.target.provider)
                .map(|at| at.saturating_duration_since(now));
            let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
            let delay = self.backoff.delay(walk.backoffs, ask, &mut *rng);
            walk.backoffs += 1;
            delay
        };
        let fits = now
            .checked_add(delay)
            .is_some_and(|end| end < call.req.deadline);
        if !fits {
            call.trail.lock().wait_too_long = true;
            return Err(TargetEnd::Next("wait_too_long"));
        }
        if crate::telemetry::enabled() {
            self.trace_wait("backoff", call, delay);
        }
        tokio::time::sleep(delay).await;
        Ok(())
    }

    /// With no key available: waits for a bucket refill while the request's total queue wait
    /// stays within `max_queue_wait` and the deadline allows, or, on the last target, for the
    /// earliest cooling key; else the next target (`provider_down` when every key is disabled
    /// or ejected).
    async fn wait_for_key(&self, no_key: NoKey, call: &TargetCall) -> Result<(), TargetEnd> {
        let now = Instant::now();
        let deadline = call.req.deadline;
        if let Some(refill) = no_key.refill {
            let at = now.checked_add(refill).unwrap_or(deadline);
            let fits = {
                let mut walk = call.trail.lock();
                walk.note_refill(at);
                let fits = walk.queued.saturating_add(refill) <= self.max_queue_wait;
                if fits && at < deadline {
                    walk.queued += refill;
                }
                fits && at < deadline
            };
            if fits {
                self.metrics.ratelimit_wait.observe(refill.as_secs_f64());
                if crate::telemetry::enabled() {
                    self.trace_wait("bucket_wait", call, refill);
                }
                tokio::time::sleep(refill).await;
                return Ok(());
            }
        }
        let rec = no_key.recovery;
        {
            let mut walk = call.trail.lock();
            walk.recovery = walk.recovery.merge(rec);
        }
        if let (Some(at), true) = (rec.cooling, call.is_last && no_key.refill.is_none()) {
            if at < deadline {
                // Every key is cooling and nothing is left to fall back to: wait for the first.
                if crate::telemetry::enabled() {
                    self.trace_wait("key_wait", call, at.saturating_duration_since(now));
                }
                tokio::time::sleep_until(at).await;
                return Ok(());
            }
            // The wait asked for does not fit: the upstream's own answer says so best.
            call.trail.lock().wait_too_long = true;
        }
        let down = no_key.refill.is_none() && rec.cooling.is_none() && rec.probe.is_some();
        Err(TargetEnd::Next(if down {
            "provider_down"
        } else {
            "no_key"
        }))
    }
}

impl RetryShared {
    /// A wait as an event of the request's span (traces on only).
    fn trace_wait(&self, name: &'static str, call: &TargetCall, wait: Duration) {
        crate::telemetry::spans::current_event(
            name,
            vec![
                opentelemetry::KeyValue::new(
                    "tollgate.provider",
                    self.provider_names[call.target.provider].clone(),
                ),
                opentelemetry::KeyValue::new("wait_ms", crate::telemetry::spans::ms(wait)),
            ],
        );
    }
}

/// The end of one attempt's time: an equal share of what is left for this target and each
/// target after it, so a target that hangs leaves room for the rest of the chain.
fn attempt_deadline(deadline: Instant, targets_after: usize, now: Instant) -> Instant {
    let left = deadline.saturating_duration_since(now);
    let shares = u32::try_from(targets_after)
        .unwrap_or(u32::MAX)
        .saturating_add(1);
    now + left / shares
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_attempt_leaves_each_later_target_an_equal_share() {
        let now = Instant::now();
        let deadline = now + Duration::from_secs(20);
        assert_eq!(attempt_deadline(deadline, 0, now), deadline);
        assert_eq!(
            attempt_deadline(deadline, 1, now),
            now + Duration::from_secs(10)
        );
        assert_eq!(
            attempt_deadline(deadline, 3, now),
            now + Duration::from_secs(5)
        );
        assert_eq!(attempt_deadline(now, 2, now), now, "nothing left");
    }
}
