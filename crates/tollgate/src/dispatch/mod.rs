//! Dispatch: model → chain of targets, and the one readable walk over it. The fallback loop
//! walks targets; inside it the retry loop picks a key per attempt (never one already tried
//! in this request), classifies each outcome with the pure `classify`, and bounds retries by
//! attempts per target, the request deadline and the shared retry budget.

mod answer;
mod attempt;
pub mod backoff;
pub mod classify;
mod handles;
mod select;
mod walk;

use crate::config::Settings;
use crate::error::GatewayError;
use crate::key_pool::{KeyPool, PoolPolicy};
use crate::metrics::Metrics;
use crate::provider::{self, Target};
use crate::rate_limit::Limiter;
use crate::request::GatewayRequest;
use crate::upstream::Upstream;
use axum::body::Body;
use backoff::{Backoff, RetryBudget};
use classify::Kind;
use http::{HeaderMap, StatusCode};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use std::sync::{Arc, Mutex};
use tokio::time::Instant;
use walk::{Failure, Step, Walk};

/// How a request was finally answered, for `tollgate_requests_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// The first attempt answered.
    FirstTry,
    /// A later attempt on the first target answered.
    AfterRetry,
    /// A later target answered.
    AfterFallback,
    /// An upstream error returned as is (client error, budget spent).
    Failed,
}

impl Served {
    /// Closed-set label.
    pub fn label(self) -> &'static str {
        match self {
            Served::FirstTry => "first_try",
            Served::AfterRetry => "after_retry",
            Served::AfterFallback => "after_fallback",
            Served::Failed => "failed",
        }
    }
}

/// An upstream answer on its way to the client.
#[derive(Debug)]
pub struct Answer {
    /// Status to send.
    pub status: StatusCode,
    /// Upstream headers (hop-by-hop removed by the server).
    pub headers: HeaderMap,
    /// Streamed body.
    pub body: Body,
    /// Name of the provider that answered.
    pub provider: String,
    /// Id of the key used.
    pub key: String,
    /// Upstream attempts made.
    pub attempts: u32,
    /// How it was served.
    pub served: Served,
}

/// The dispatcher: routes, retries and falls back.
pub struct Dispatcher {
    settings: Arc<Settings>,
    handles: handles::Handles,
    limiter: Arc<Limiter>,
    pools: Vec<Arc<KeyPool>>,
    upstream: Arc<dyn Upstream>,
    budget: RetryBudget,
    backoff: Backoff,
    metrics: Metrics,
    rng: Mutex<SmallRng>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("providers", &self.pools.len())
            .finish_non_exhaustive()
    }
}

impl Dispatcher {
    /// Builds pools and policies from settings.
    pub fn new(
        settings: Arc<Settings>,
        upstream: Arc<dyn Upstream>,
        limiter: Arc<Limiter>,
        metrics: Metrics,
        seed: u64,
    ) -> Self {
        Self::reloaded(settings, upstream, limiter, metrics, seed, None)
    }

    /// A dispatcher for a reloaded config; unchanged keys keep their health from `previous`.
    pub fn reloaded(
        settings: Arc<Settings>,
        upstream: Arc<dyn Upstream>,
        limiter: Arc<Limiter>,
        metrics: Metrics,
        seed: u64,
        previous: Option<&Dispatcher>,
    ) -> Self {
        let r = &settings.retry;
        let policy = PoolPolicy {
            cooldown_default: r.cooldown_default,
            cooldown_max: r.cooldown_max,
            probe_interval: r.probe_interval,
        };
        let pools = settings
            .providers
            .iter()
            .map(|p| {
                let old = previous.and_then(|d| d.pools.iter().find(|o| o.provider() == p.name));
                KeyPool::carry_over(&p.name, &p.keys, policy, &metrics, old.map(|o| &**o))
            })
            .collect();
        Dispatcher {
            handles: handles::Handles::new(&settings, &metrics),
            budget: RetryBudget::new(
                r.budget_percent,
                r.budget_min_per_sec,
                r.budget_window,
                Instant::now(),
            ),
            backoff: Backoff {
                base: r.base_delay,
                cap: r.max_delay,
            },
            pools,
            upstream,
            limiter,
            metrics,
            rng: Mutex::new(SmallRng::seed_from_u64(seed)),
            settings,
        }
    }

    /// The key pools, in provider order.
    pub fn pools(&self) -> &[Arc<KeyPool>] {
        &self.pools
    }

    /// The rate limiter.
    pub fn limiter(&self) -> &Arc<Limiter> {
        &self.limiter
    }

    /// Whether any upstream key declares a TPM limit (usage must then be reconciled).
    pub fn keys_have_tpm(&self) -> bool {
        self.pools.iter().any(|p| p.has_tpm())
    }

    /// The settings this dispatcher runs on.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The index of a request's configured model, `None` for pass-through.
    pub(super) fn model_index(&self, req: &GatewayRequest) -> Option<usize> {
        req.model
            .as_deref()
            .and_then(|m| self.settings.model_index(m))
    }

    /// The metric label of a request's model: its configured name, else "other".
    pub fn model_label<'a>(&'a self, req: &GatewayRequest) -> &'a str {
        req.model
            .as_deref()
            .and_then(|m| self.settings.model(m))
            .map_or("other", |r| r.name.as_str())
    }

    /// The chain for a request: configured targets, the default provider, or 404.
    fn route(&self, req: &GatewayRequest) -> Result<Vec<Target>, GatewayError> {
        let default_max = self.settings.limits.default_max_tokens;
        let pass_through = |provider| Target {
            provider,
            model: None,
            max_tokens: default_max,
        };
        if let Some(model) = req.model.as_deref() {
            if let Some(route) = self.settings.model(model) {
                return Ok(route
                    .targets
                    .iter()
                    .map(|t| Target {
                        provider: t.provider,
                        model: Some(t.model.clone()),
                        max_tokens: t.max_tokens.unwrap_or(default_max),
                    })
                    .collect());
            }
            return match self.settings.default_provider {
                Some(p) => Ok(vec![pass_through(p)]),
                None => Err(GatewayError::ModelNotFound(model.to_owned())),
            };
        }
        // No model (GET /models/…, files, multipart uploads): the default provider, else the first.
        Ok(vec![pass_through(
            self.settings.default_provider.unwrap_or(0),
        )])
    }

    /// Serves one request: walks the chain until an answer or a final error.
    pub async fn dispatch(&self, req: &GatewayRequest) -> Result<Answer, GatewayError> {
        self.budget.deposit(Instant::now());
        let chain: Vec<Target> = self
            .route(req)?
            .into_iter()
            .filter(|t| provider::supports(self.settings.providers[t.provider].kind, req.endpoint))
            .collect();
        if chain.is_empty() {
            return Err(GatewayError::EndpointUnsupported {
                model: req.model.clone().unwrap_or_default(),
                endpoint: req.path.clone(),
            });
        }
        let mut walk = Walk::default();
        for (i, target) in chain.iter().enumerate() {
            if i > 0 {
                let from = &self.settings.providers[chain[i - 1].provider].name;
                let reason = walk.last_kind.map_or("no_key", Kind::label);
                self.metrics
                    .fallbacks
                    .with_label_values(&[
                        from,
                        &self.settings.providers[target.provider].name,
                        reason,
                    ])
                    .inc();
            }
            let is_last = i + 1 == chain.len();
            match self
                .run_target(req, target, is_last, i > 0, &mut walk)
                .await
            {
                Step::Done(answer) => return Ok(answer),
                Step::PassThrough(f) => return Ok(self.pass_through(f, &walk)),
                Step::Next(reason) => {
                    tracing::debug!(request_id = %req.id, reason, "target exhausted")
                }
                Step::Stop => break,
            }
        }
        self.final_error(walk)
    }

    async fn run_target(
        &self,
        req: &GatewayRequest,
        target: &Target,
        is_last: bool,
        fallback: bool,
        walk: &mut Walk,
    ) -> Step {
        let provider = target.provider;
        let settings = &self.settings.providers[provider];
        let body = match provider::prepare_body(settings, req, target) {
            Ok(body) => body,
            Err(e) => {
                // This target cannot express the request: skip it; if none can, the client gets the 400.
                tracing::debug!(request_id = %req.id, provider = %settings.name, error = %e, "request not translatable");
                walk.last_failure = Some(Failure::refused(&e, provider));
                return Step::Next("untranslatable");
            }
        };
        let max_attempts = self.settings.retry.max_attempts;
        let mut made = 0;
        loop {
            if made >= max_attempts {
                return Step::Next("attempts_exhausted");
            }
            let now = Instant::now();
            if now >= req.deadline {
                walk.deadline_hit = true;
                return Step::Stop;
            }
            let lease = match self.pick(provider, walk, req, now).await {
                Ok(lease) => lease,
                Err(no_key) => match self.wait_for_key(no_key, is_last, req, walk).await {
                    Some(()) => continue,
                    None => return Step::Next("no_key"),
                },
            };
            if !walk.attempts.is_empty() {
                if !self.budget.try_withdraw(now) {
                    self.metrics.budget_exhausted.inc();
                    walk.budget_spent = true;
                    return Step::Stop;
                }
                let reason = walk.last_kind.map_or("unknown", Kind::label);
                self.metrics
                    .retries
                    .with_label_values(&[&self.settings.providers[provider].name, reason])
                    .inc();
            }
            if walk.soft.contains(&(provider, lease.idx())) {
                // Same key again after a transient failure: back off, at least as long as asked.
                let delay = {
                    let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
                    self.backoff.delay(walk.backoffs, walk.last_wait, &mut *rng)
                };
                walk.backoffs += 1;
                if now + delay >= req.deadline {
                    walk.deadline_hit = true;
                    return Step::Stop;
                }
                tokio::time::sleep(delay).await;
            }
            made += 1;
            let served = match (fallback, walk.attempts.is_empty()) {
                (true, _) => Served::AfterFallback,
                (false, true) => Served::FirstTry,
                (false, false) => Served::AfterRetry,
            };
            match self.attempt(req, target, &body, lease, walk, served).await {
                Ok(answer) => return Step::Done(answer),
                Err(Some(step)) => return step,
                Err(None) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests;
