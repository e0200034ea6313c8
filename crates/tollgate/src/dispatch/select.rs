//! The key-selection layer: for each attempt, a key of the target's provider that is healthy,
//! has room in its RPM/TPM bucket, and is not excluded by the request's trail (keys not yet
//! tried first, then keys that failed only transiently). After the exchange it applies the
//! key's part of the decision table (health, shared health, exclusion), records the attempt,
//! and on success hands the answer on with the key's lease held until its last byte.

use super::decision::{decide, Exclude, KeyEffect, Then};
use super::handles::Handles;
use super::trail::{AttemptRecord, Failure, Trail};
use crate::key_pool::store::HealthStore;
use crate::key_pool::{after, KeyPool, Lease, Prefer, Recovery};
use crate::metrics::Metrics;
use crate::policy::{Policy, PolicyLayer, PolicyService};
use crate::provider::classify::Kind;
use crate::provider::{Exchange, Raw};
use crate::rate_limit::{remaining_from_headers, unix_ms, Charge, Limiter, SharedHealth, Side};
use crate::request::{Answer, GatewayRequest, KeyedCall, Served, Target};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use opentelemetry::KeyValue;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

/// One attempt on one target (retry layer → key selection).
#[derive(Debug, Clone)]
pub struct AttemptCall {
    /// The client's request.
    pub req: Arc<GatewayRequest>,
    /// The target.
    pub target: Target,
    /// The body prepared for the target.
    pub body: Bytes,
    /// The request's walk state.
    pub trail: Trail,
    /// How an answer from this attempt counts.
    pub served: Served,
    /// When this attempt's time is up.
    pub deadline: Instant,
}

/// Why no key could be picked.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoKey {
    /// When cooling, disabled and ejected keys recover.
    pub recovery: Recovery,
    /// Shortest wait until a key's bucket can take the request.
    pub refill: Option<Duration>,
    /// The client's own buckets refused the request (taken with the key's, with Redis): it
    /// ends here, as the client-limit layer's 429.
    pub client: Option<crate::rate_limit::Refused>,
}

/// An attempt that produced no answer for the client.
#[derive(Debug, Clone, Copy)]
pub enum Missed {
    /// No key could be picked: nothing was sent.
    NoKey(NoKey),
    /// The attempt was made and failed; the decision table says what comes next.
    Failed(Then),
}

/// The key-selection policy's state (its layer is [`KeySelectLayer`]).
pub struct SelectShared {
    pub(crate) pools: Arc<[Arc<KeyPool>]>,
    pub(crate) limiter: Arc<Limiter>,
    pub(crate) health: Arc<dyn HealthStore>,
    pub(crate) handles: Arc<Handles>,
    pub(crate) metrics: Metrics,
    pub(crate) idle_timeout: Duration,
    /// Largest event of a streamed answer.
    pub(crate) max_event: usize,
    /// Who owns each object created through the gateway.
    pub(crate) records: Arc<crate::ownership::records::Records>,
    /// A transient answer asking for longer than this cools its key instead of a backoff.
    pub(crate) max_delay: Duration,
}

/// Builds [`KeySelect`] services.
pub type KeySelectLayer = PolicyLayer<SelectShared>;

/// Picks a key per attempt and applies what its outcome means for the key.
pub type KeySelect<S> = PolicyService<SelectShared, S>;

impl KeySelectLayer {
    pub(crate) fn new(shared: SelectShared) -> Self {
        PolicyLayer::of(shared)
    }
}

impl<S> Policy<S> for SelectShared
where
    S: Service<KeyedCall, Response = Exchange, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Request = AttemptCall;
    type Response = Answer;
    type Error = Missed;

    fn run(
        self: Arc<Self>,
        inner: S,
        call: AttemptCall,
    ) -> impl std::future::Future<Output = Result<Answer, Missed>> + Send + 'static {
        let shared = self;
        async move {
            let (lease, charge) = shared
                .pick(&call, Instant::now())
                .await
                .map_err(Missed::NoKey)?;
            let keyed = KeyedCall {
                req: Arc::clone(&call.req),
                target: call.target.clone(),
                body: call.body.clone(),
                key: lease.key_ref(),
                deadline: call.deadline,
            };
            let mut inner = inner;
            let called = match inner.ready().await {
                Ok(next) => next.call(keyed).await,
                Err(e) => Err(e),
            };
            let exchange = match called {
                Ok(exchange) => exchange,
                Err(never) => match never {},
            };
            shared.settle(&call, lease, charge, exchange).await
        }
    }
}

impl SelectShared {
    /// Picks a key: first never-tried keys, then keys that failed only transiently; a key
    /// whose RPM/TPM bucket cannot take this request is skipped like a cooling one. Answers
    /// the lease and what the key's buckets were charged.
    async fn pick(&self, call: &AttemptCall, now: Instant) -> Result<(Lease, Charge), NoKey> {
        let provider = call.target.provider;
        let pool = &self.pools[provider];
        let (hard, soft, not_ready) = {
            let walk = call.trail.lock();
            let (hard, soft) = walk.exclusions(provider);
            (hard, soft, walk.not_ready(provider, now))
        };
        let mut full: Vec<usize> = Vec::new();
        let mut no_key = NoKey::default();
        let prefer = self.preference(&call.req, pool).await;
        loop {
            let hard = |i: usize| hard.contains(&i) || full.contains(&i);
            let untried = pool.select_for(&|i| hard(i) || soft.contains(&i), prefer, now);
            let lease = match untried {
                Ok(lease) => lease,
                Err(r1) => {
                    match pool.select_for(&|i| hard(i) || not_ready.contains(&i), prefer, now) {
                        Ok(lease) => lease,
                        Err(r2) => {
                            no_key.recovery = r1.merge(r2);
                            return Err(no_key);
                        }
                    }
                }
            };
            let (bucket, limits) = pool.bucket(lease.idx());
            let tokens = call.req.tokens;
            // The client's take still owed (Redis) goes with this key's, in one call.
            let owed = call
                .req
                .client_take
                .as_ref()
                .filter(|c| c.taken.get().is_none());
            let took = match owed {
                Some(client) => {
                    let pair = (&*client.bucket, client.limits, tokens);
                    match self.limiter.take_pair(pair, (bucket, limits, tokens)).await {
                        Ok((for_client, for_key)) => {
                            let _ = client.taken.set(for_client);
                            Ok(for_key)
                        }
                        Err((Side::Client, refused)) => {
                            self.metrics
                                .rate_limited
                                .with_label_values(&["client", refused.dimension.label()])
                                .inc();
                            no_key.client = Some(refused);
                            return Err(no_key);
                        }
                        Err((Side::Key, refused)) => Err(refused),
                    }
                }
                None => self.limiter.take(bucket, limits, tokens).await,
            };
            match took {
                Ok(taken) => return Ok((lease, taken.charge)),
                Err(refused) => {
                    self.metrics
                        .rate_limited
                        .with_label_values(&["upstream", refused.dimension.label()])
                        .inc();
                    if crate::telemetry::enabled() {
                        crate::telemetry::spans::current_event(
                            "bucket_full",
                            vec![
                                KeyValue::new("tollgate.key", lease.id().to_owned()),
                                KeyValue::new("dimension", refused.dimension.label()),
                                KeyValue::new(
                                    "wait_ms",
                                    refused.wait.map_or(-1, crate::telemetry::spans::ms),
                                ),
                            ],
                        );
                    }
                    if let Some(wait) = refused.wait {
                        no_key.refill = Some(no_key.refill.map_or(wait, |w| w.min(wait)));
                    }
                    full.push(lease.idx());
                }
            }
        }
    }

    /// The key a request would rather have: the creator of the stored response it refers to,
    /// else its session's.
    async fn preference(&self, req: &GatewayRequest, pool: &KeyPool) -> Prefer {
        if let Some(idx) = req.object_key.as_deref().and_then(|k| pool.index_of(k)) {
            return Prefer::Key(idx);
        }
        req.affinity.map_or(Prefer::Any, Prefer::Session)
    }

    /// Applies the outcome to the key and the trail; the answer on success.
    async fn settle(
        self: &Arc<Self>,
        call: &AttemptCall,
        mut lease: Lease,
        charge: Charge,
        exchange: Exchange,
    ) -> Result<Answer, Missed> {
        let provider = call.target.provider;
        let now = Instant::now();
        let kind = exchange.verdict.kind;
        let answered = kind == Kind::Success && matches!(exchange.raw, Raw::Ok(..));
        if !answered {
            // Before the provider's headers: what they report remaining is the last word.
            self.refund(&lease, charge).await;
        }
        if let Some(headers) = exchange.headers() {
            let (requests, tokens) = remaining_from_headers(headers);
            let (bucket, limits) = lease.bucket();
            if !self.limiter.is_shared() {
                self.limiter.sync(bucket, limits, requests, tokens).await;
            } else if requests.is_some() || tokens.is_some() {
                // With Redis, off the answer's path: the take was the request's one call before
                // the client's first byte.
                let (limiter, bucket) = (Arc::clone(&self.limiter), lease.bucket_id());
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(async move {
                        limiter.sync(&bucket, limits, requests, tokens).await;
                    });
                }
            }
        }
        self.handles.attempt(provider, lease.idx(), kind).inc();
        let attempt_no = call.trail.attempts() + 1;
        if !exchange.span.is_none() {
            crate::telemetry::spans::attempt_no(&exchange.span, attempt_no, call.served.label());
        }
        let pname = lease.provider();
        if let Raw::Transport(e) = &exchange.raw {
            tracing::warn!(request_id = %call.req.id, provider = %pname, key = lease.id(), attempt = attempt_no, error = %e, "upstream attempt failed");
        } else if kind != Kind::Success {
            tracing::info!(request_id = %call.req.id, provider = %pname, key = lease.id(), attempt = attempt_no, status = exchange.status, kind = kind.label(), "upstream attempt failed");
        }
        let asked = exchange.verdict.wait;
        let decision = decide(kind).with_ask(asked, self.max_delay);
        let key = (provider, lease.idx());
        {
            let mut walk = call.trail.lock();
            walk.attempts.push(AttemptRecord {
                provider,
                key: lease.shared_id(),
                kind,
                status: exchange.status,
                detail: match &exchange.raw {
                    Raw::Transport(e) => Some(e.to_string()),
                    _ => None,
                },
            });
            walk.last_kind = Some(kind);
            if let Some(f) = failure(&exchange.raw, provider, lease.id()) {
                walk.last_failure = Some(f);
            }
            match decision.exclude {
                Exclude::No => {}
                Exclude::ForRequest => walk.hard.push(key),
                // Reusable once its own ask is over (the backoff waits at least that long).
                Exclude::UntilBackoff => walk.soften(key, after(now, asked.unwrap_or_default())),
            }
        }
        let effect = Effect {
            asked,
            latency: exchange.elapsed,
            now,
        };
        self.apply_key_effect(decision.key, &mut lease, effect, call, &exchange.span);
        match (decision.then, exchange.raw) {
            (Then::Answer, Raw::Ok(resp, prefix)) => {
                let attempts = call.trail.attempts();
                Ok(self.answer(
                    &call.req,
                    provider,
                    lease,
                    resp,
                    prefix,
                    attempts,
                    call.served,
                    exchange.span,
                ))
            }
            (Then::Answer, _) => Err(Missed::Failed(Then::Retry)),
            (then, _) => Err(Missed::Failed(then)),
        }
    }

    /// Gives back the tokens a failed attempt (429, 5xx, timeout, connect error, any refusal)
    /// took from the key's bucket; the request stays counted, as the provider counts it. An
    /// answered attempt is reconciled with its real usage instead.
    async fn refund(&self, lease: &Lease, charge: Charge) {
        let (bucket, limits) = lease.bucket();
        self.limiter
            .refund(bucket, limits, charge.tokens_only())
            .await;
    }

    fn apply_key_effect(
        &self,
        effect: KeyEffect,
        lease: &mut Lease,
        at: Effect,
        call: &AttemptCall,
        span: &tracing::Span,
    ) {
        let Effect {
            asked,
            latency,
            now,
        } = at;
        let shared_until = |d: Duration| unix_ms().saturating_add(d.as_millis() as u64);
        let traced = |name: &'static str, key: &Lease, length: Duration| {
            if !span.is_none() {
                crate::telemetry::spans::event(
                    span,
                    name,
                    vec![
                        KeyValue::new("tollgate.key", key.id().to_owned()),
                        KeyValue::new("for_ms", crate::telemetry::spans::ms(length)),
                    ],
                );
            }
        };
        match effect {
            KeyEffect::Restore => lease.success(latency, now),
            KeyEffect::Cool => {
                let wait = lease.cool(asked, now);
                traced("key_cooled", lease, wait);
                call.trail.lock().note_cooling(after(now, wait));
                self.health
                    .publish(lease.bucket().0, SharedHealth::Cooling(shared_until(wait)));
            }
            KeyEffect::Disable => {
                let interval = lease.disable(asked, now);
                traced("key_disabled", lease, interval);
                self.note_probe(call, after(now, interval));
                self.health.publish(
                    lease.bucket().0,
                    SharedHealth::Disabled(shared_until(interval)),
                );
            }
            KeyEffect::Fail => {
                if let Some(len) = lease.transient(latency, now) {
                    tracing::warn!(request_id = %call.req.id, provider = %lease.provider(), key = lease.id(), ejected_ms = len.as_millis() as u64, "key ejected after transient failures");
                    traced("key_ejected", lease, len);
                    self.note_probe(call, after(now, len));
                    self.health
                        .publish(lease.bucket().0, SharedHealth::Ejected(shared_until(len)));
                }
            }
            KeyEffect::Keep => {}
        }
    }

    fn note_probe(&self, call: &AttemptCall, at: Instant) {
        let mut walk = call.trail.lock();
        walk.recovery = walk.recovery.merge(Recovery {
            cooling: None,
            probe: Some(at),
        });
    }
}

/// What an outcome's key effect is applied with.
#[derive(Debug, Clone, Copy)]
struct Effect {
    asked: Option<Duration>,
    latency: Duration,
    now: Instant,
}

/// The upstream error worth returning as is, if the attempt produced one.
fn failure(raw: &Raw, provider: usize, key: &str) -> Option<Failure> {
    match raw {
        Raw::Error {
            status,
            headers,
            body,
        } => Some(Failure {
            status: *status,
            headers: headers.clone(),
            body: body.clone(),
            provider,
            key: key.to_owned(),
        }),
        Raw::StreamError(json) => {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Some(Failure {
                status: StatusCode::BAD_GATEWAY,
                headers,
                body: json.clone(),
                provider,
                key: key.to_owned(),
            })
        }
        Raw::Ok(..) | Raw::Transport(_) => None,
    }
}
