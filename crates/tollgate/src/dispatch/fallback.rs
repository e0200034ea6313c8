//! The fallback layer: walks a request's chain of targets, in order, as one loop. Each target's
//! body is prepared once by its provider (a target that cannot express the request is skipped);
//! the retry layer runs the target's attempts; a target that ends without an answer moves the
//! walk on (counted in `tollgate_fallbacks_total` with its reason: a provider whose keys are all
//! out is `provider_down`, a spent retry budget `budget_spent`), only the deadline ends it, and
//! an upstream error worth passing through goes to the client. Each provider's retry budget is
//! earned by the requests that reach it. With the chain exhausted, the answer is the trail's
//! final error, with the attempts made and the last provider and key tried.

use super::backoff::RetryBudget;
use super::retry::{TargetCall, TargetEnd};
use super::trail::{final_error, pass_through, Failure, Trail};
use super::window::{self, Fit};
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::policy::{Policy, PolicyLayer, PolicyService};
use crate::provider::classify::Kind;
use crate::provider::Provider;
use crate::request::{Answer, GatewayRequest, Target};
use std::sync::Arc;
use tower::{Service, ServiceExt};

/// A request with its chain (route layer → fallback).
#[derive(Debug, Clone)]
pub struct Routed {
    /// The client's request.
    pub req: Arc<GatewayRequest>,
    /// The targets that can serve it, in order (never empty).
    pub chain: Arc<[Target]>,
}

/// The fallback policy's state (its layer is [`FallbackLayer`]).
pub struct FallbackShared {
    providers: Arc<[Provider]>,
    budgets: Arc<[RetryBudget]>,
    metrics: Metrics,
}

/// Builds [`Fallback`] services.
/// Builds [`Fallback`] services.
pub type FallbackLayer = PolicyLayer<FallbackShared>;

/// Walks the chain of targets.
pub type Fallback<S> = PolicyService<FallbackShared, S>;

impl FallbackLayer {
    /// A layer over the configured providers; every request that reaches a provider counts
    /// into that provider's budget (`budgets`, in provider order).
    pub fn new(providers: Arc<[Provider]>, budgets: Arc<[RetryBudget]>, metrics: Metrics) -> Self {
        PolicyLayer::of(FallbackShared {
            providers,
            budgets,
            metrics,
        })
    }
}

impl<S> Policy<S> for FallbackShared
where
    S: Service<TargetCall, Response = Answer, Error = TargetEnd> + Clone + Send + 'static,
    S::Future: Send,
{
    type Request = Routed;
    type Response = Answer;
    type Error = GatewayError;

    async fn run(self: Arc<Self>, next: S, routed: Routed) -> Result<Answer, GatewayError> {
        self.walk(next, routed).await
    }
}

impl FallbackShared {
    async fn walk<S>(&self, inner: S, routed: Routed) -> Result<Answer, GatewayError>
    where
        S: Service<TargetCall, Response = Answer, Error = TargetEnd> + Clone,
    {
        let Routed { req, chain } = routed;
        let trail = Trail::default();
        let mut ended: Option<&'static str> = None;
        for (i, target) in chain.iter().enumerate() {
            if let (Some(reason), Some(from)) = (ended, i.checked_sub(1)) {
                self.count_fallback(&chain[from], target, reason, &trail);
            }
            let provider = &self.providers[target.provider];
            let fitted;
            let req_here = match window::fit(&req, target) {
                Fit::Fits => &req,
                Fit::Lowered(body) => {
                    fitted = Arc::new(GatewayRequest {
                        body,
                        model_span: None,
                        counted: None,
                        names_objects: None,
                        ..GatewayRequest::clone(&req)
                    });
                    &fitted
                }
                Fit::TooLong {
                    prompt,
                    completion,
                    window,
                } => {
                    let message = format!("This model's maximum context length is {window} tokens; the request needs about {prompt} tokens of prompt and asks for {completion} of completion.");
                    let failure = Failure::invalid(
                        message,
                        Some("messages"),
                        "context_length_exceeded",
                        target.provider,
                    );
                    trail.lock().last_failure = Some(failure);
                    ended = Some("context_window");
                    continue;
                }
            };
            let body = match provider.prepare(req_here, target) {
                Ok(body) => body,
                Err(refusal) => {
                    // This target cannot express the request: skip it; if none can, the
                    // client gets the 400.
                    tracing::debug!(request_id = %req.id, provider = %provider.name(), error = %refusal.message, "request not translatable");
                    trail.lock().last_failure = Some(Failure::refused(&refusal, target.provider));
                    ended = Some("untranslatable");
                    continue;
                }
            };
            // Every request that reaches a provider earns it its share of retries.
            self.budgets[target.provider].deposit(tokio::time::Instant::now());
            let turn = TargetCall {
                req: Arc::clone(req_here),
                target: target.clone(),
                body,
                trail: trail.clone(),
                is_last: i + 1 == chain.len(),
                targets_after: chain.len() - i - 1,
                fallback: i > 0,
            };
            let mut next = inner.clone();
            let called = match next.ready().await {
                Ok(next) => next.call(turn).await,
                Err(e) => Err(e),
            };
            match called {
                Ok(answer) => return Ok(answer),
                Err(TargetEnd::PassThrough(f)) => {
                    return Ok(pass_through(*f, &self.providers, trail.attempts()))
                }
                Err(TargetEnd::Next(reason)) => {
                    tracing::debug!(request_id = %req.id, reason, "target exhausted");
                    ended = Some(reason);
                }
                Err(TargetEnd::Stop(_)) => break,
                Err(TargetEnd::ClientLimited(refused)) => {
                    return Err(GatewayError::ClientRateLimited {
                        dimension: refused.dimension.label(),
                        retry_after: refused.wait,
                    })
                }
            }
        }
        Ok(final_error(&trail, &self.providers))
    }

    /// Counts one move along the chain; a target that ran out of attempts is labelled with its
    /// last outcome, any other end with its own reason.
    fn count_fallback(&self, from: &Target, to: &Target, ended: &'static str, trail: &Trail) {
        let reason = match ended {
            "attempts_exhausted" => trail.lock().last_kind.map_or("no_key", Kind::label),
            other => other,
        };
        if crate::telemetry::enabled() {
            crate::telemetry::spans::current_event(
                "fallback",
                vec![
                    opentelemetry::KeyValue::new(
                        "from",
                        self.providers[from.provider].name().to_owned(),
                    ),
                    opentelemetry::KeyValue::new(
                        "to",
                        self.providers[to.provider].name().to_owned(),
                    ),
                    opentelemetry::KeyValue::new("reason", reason),
                ],
            );
        }
        self.metrics
            .fallbacks
            .with_label_values(&[
                self.providers[from.provider].name(),
                self.providers[to.provider].name(),
                reason,
            ])
            .inc();
    }
}
