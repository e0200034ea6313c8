//! The retry layer: the attempts on one target, as one loop. Each attempt goes to key
//! selection; what a failed attempt means comes from the decision table, and this layer only
//! applies it: another attempt (after a full-jitter backoff, at least as long as asked, when
//! the only keys left already failed), the next target, or the upstream's error as is.
//! Retries are bounded by `max_attempts` per target, the request deadline and the retry budget;
//! a wait that would end past the deadline is never started.

use super::backoff::{Backoff, RetryBudget};
use super::decision::Then;
use super::select::{AttemptCall, Missed, NoKey};
use super::trail::{Failure, StopReason, Trail};
use crate::key_pool::KeyPool;
use crate::metrics::Metrics;
use crate::request::{Answer, GatewayRequest, Served, Target};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use rand::rngs::SmallRng;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

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
    PassThrough(Failure),
}

pub(crate) struct RetryShared {
    pub(crate) pools: Arc<[Arc<KeyPool>]>,
    pub(crate) budget: Arc<RetryBudget>,
    pub(crate) backoff: Backoff,
    pub(crate) rng: Mutex<SmallRng>,
    pub(crate) max_attempts: u32,
    pub(crate) max_queue_wait: Duration,
    pub(crate) metrics: Metrics,
    pub(crate) provider_names: Vec<String>,
}

/// Builds [`Retry`] services.
#[derive(Clone)]
pub struct RetryLayer {
    shared: Arc<RetryShared>,
}

impl std::fmt::Debug for RetryLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryLayer").finish_non_exhaustive()
    }
}

impl RetryLayer {
    pub(crate) fn new(shared: RetryShared) -> Self {
        RetryLayer {
            shared: Arc::new(shared),
        }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;
    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// Runs the attempts on one target.
#[derive(Clone)]
pub struct Retry<S> {
    inner: S,
    shared: Arc<RetryShared>,
}

/// Whether the next attempt can have a key nobody tried, or only one that failed already.
enum Preview {
    Fresh,
    OnlyRetried,
    None(NoKey),
}

impl<S> Service<TargetCall> for Retry<S>
where
    S: Service<AttemptCall, Response = Answer, Error = Missed> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Answer;
    type Error = TargetEnd;
    type Future = BoxFuture<'static, Result<Answer, TargetEnd>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), TargetEnd>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: TargetCall) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        let inner = self.inner.clone();
        Box::pin(async move { shared.run(inner, call).await })
    }
}

impl RetryShared {
    async fn run<S>(&self, inner: S, call: TargetCall) -> Result<Answer, TargetEnd>
    where
        S: Service<AttemptCall, Response = Answer, Error = Missed> + Clone,
    {
        let provider = call.target.provider;
        let deadline = call.req.deadline;
        let mut made = 0;
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
                Preview::None(no_key) => {
                    self.wait_for_key(no_key, &call).await?;
                    continue;
                }
            };
            let retrying = call.trail.has_attempts();
            if retrying {
                if !self.budget.try_withdraw(now) {
                    self.metrics.budget_exhausted.inc();
                    return Err(self.stop(&call.trail, StopReason::BudgetSpent));
                }
                let reason = call.trail.lock().last_kind.map_or("unknown", |k| k.label());
                self.metrics
                    .retries
                    .with_label_values(&[&self.provider_names[provider], reason])
                    .inc();
            }
            if reuse {
                self.back_off(&call.trail, now, deadline).await?;
            }
            let served = match (call.fallback, retrying) {
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
            };
            match inner.clone().oneshot(attempt).await {
                Ok(answer) => return Ok(answer),
                Err(Missed::NoKey(no_key)) => self.wait_for_key(no_key, &call).await?,
                Err(Missed::Failed(then)) => {
                    made += 1;
                    match then {
                        Then::Answer | Then::Retry => {}
                        Then::NextTarget(reason) => return Err(TargetEnd::Next(reason)),
                        Then::PassThrough => {
                            return Err(match call.trail.lock().last_failure.take() {
                                Some(f) => TargetEnd::PassThrough(f),
                                None => TargetEnd::Next("client_error"),
                            })
                        }
                    }
                }
            }
        }
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
        let Err(e1) = fresh else {
            return Preview::Fresh;
        };
        match pool.available(&|i| hard.contains(&i), now) {
            Ok(()) => Preview::OnlyRetried,
            Err(e2) => Preview::None(NoKey {
                earliest: [e1, e2].into_iter().flatten().min(),
                refill: None,
            }),
        }
    }

    /// The wait before reusing a key that failed: full jitter, at least what it asked for.
    async fn back_off(
        &self,
        trail: &Trail,
        now: Instant,
        deadline: Instant,
    ) -> Result<(), TargetEnd> {
        let delay = {
            let mut walk = trail.lock();
            let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
            let delay = self.backoff.delay(walk.backoffs, walk.last_wait, &mut *rng);
            walk.backoffs += 1;
            delay
        };
        if now + delay >= deadline {
            return Err(self.stop(trail, StopReason::Deadline));
        }
        tokio::time::sleep(delay).await;
        Ok(())
    }

    /// With no key available: waits for a bucket refill (up to `max_queue_wait`) or, on the
    /// last target, for the earliest cooling key, when the deadline allows; else the next target.
    async fn wait_for_key(&self, no_key: NoKey, call: &TargetCall) -> Result<(), TargetEnd> {
        let now = Instant::now();
        let deadline = call.req.deadline;
        if let Some(refill) = no_key.refill {
            call.trail.lock().note_earliest(now + refill);
            if refill <= self.max_queue_wait && now + refill < deadline {
                self.metrics.ratelimit_wait.observe(refill.as_secs_f64());
                tokio::time::sleep(refill).await;
                return Ok(());
            }
        }
        let Some(at) = no_key.earliest else {
            return Err(TargetEnd::Next("no_key"));
        };
        call.trail.lock().note_earliest(at);
        if call.is_last && at < deadline {
            // Every key is cooling and nothing is left to fall back to: wait for the first.
            tokio::time::sleep_until(at).await;
            return Ok(());
        }
        Err(TargetEnd::Next("no_key"))
    }
}
