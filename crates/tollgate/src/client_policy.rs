//! The gateway stack's two client policies: [`ClientAuthLayer`] (who may call, which models) and
//! [`ClientLimitLayer`] (how much).
//!
//! The client-limit layer: the client's concurrency slot (held until its answer's last byte),
//! its RPM/TPM buckets taken up front with the request's estimate (429 with the wait when one is
//! empty, never a wait), and its own rate-limit headers on the answer in place of the upstream
//! key's. It also asks a stream for usage when some TPM limit must be reconciled.

use crate::auth::{Auth, Denied};
use crate::endpoint::Endpoint;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::policy::{Policy, PolicyLayer, PolicyService};
use crate::rate_limit::estimate;
use crate::rate_limit::{Charge, Levels, Limiter, Limits, Taken, MAX_TOKENS};
use crate::request::{Answer, GatewayRequest, Served};
use crate::units::go_duration_header;
use futures_util::future::{ready, Either, Ready};
use http::{HeaderMap, HeaderName, HeaderValue};
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service, ServiceExt};

/// The client-auth layer: the gateway key → the [`Client`](crate::auth::Client) (401 when it is missing or
/// unknown), and the client's model allow-list (403). Never waits.
#[derive(Clone, Debug)]
pub struct ClientAuthLayer {
    auth: Arc<Auth>,
}

impl ClientAuthLayer {
    /// Authenticates against `auth`.
    pub fn new(auth: Arc<Auth>) -> Self {
        ClientAuthLayer { auth }
    }
}

impl<S> Layer<S> for ClientAuthLayer {
    type Service = ClientAuth<S>;
    fn layer(&self, inner: S) -> ClientAuth<S> {
        ClientAuth {
            inner,
            auth: Arc::clone(&self.auth),
        }
    }
}

/// See [`ClientAuthLayer`].
#[derive(Clone, Debug)]
pub struct ClientAuth<S> {
    inner: S,
    auth: Arc<Auth>,
}

impl<S> Service<GatewayRequest> for ClientAuth<S>
where
    S: Service<GatewayRequest, Response = Answer, Error = GatewayError>,
{
    type Response = Answer;
    type Error = GatewayError;
    type Future = Either<Ready<Result<Answer, GatewayError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: GatewayRequest) -> Self::Future {
        // The edge may have authenticated the client already (before reading the body).
        let client = match req.client.take() {
            Some(client) => Some(client),
            None => match self.auth.authenticate_key(req.credential.as_deref()) {
                Ok(client) => client,
                Err(Denied::BadKey) => return Either::Left(ready(Err(GatewayError::Unauthorized))),
            },
        };
        if let (Some(c), Some(model)) = (&client, req.model.as_deref()) {
            if !c.allows(model) {
                let refused = GatewayError::ModelNotAllowed(model.to_owned());
                return Either::Left(ready(Err(refused)));
            }
        }
        req.client = client;
        Either::Right(self.inner.call(req))
    }
}

/// The client-limit policy's state (its layer is [`ClientLimitLayer`]).
pub struct LimitShared {
    limiter: Arc<Limiter>,
    metrics: Metrics,
    /// Whether any upstream key has a TPM limit (then every request is estimated).
    keys_have_tpm: bool,
    default_max_tokens: u32,
}

/// Builds [`ClientLimit`] services.
pub type ClientLimitLayer = PolicyLayer<LimitShared>;

/// See [`ClientLimitLayer`].
pub type ClientLimit<S> = PolicyService<LimitShared, S>;

impl ClientLimitLayer {
    /// Limits on `limiter`; `keys_have_tpm` when some upstream key's TPM needs estimates too.
    pub fn new(
        limiter: Arc<Limiter>,
        metrics: Metrics,
        keys_have_tpm: bool,
        default_max_tokens: u32,
    ) -> Self {
        PolicyLayer::of(LimitShared {
            limiter,
            metrics,
            keys_have_tpm,
            default_max_tokens,
        })
    }
}

impl<S> Policy<S> for LimitShared
where
    S: Service<GatewayRequest, Response = Answer, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Request = GatewayRequest;
    type Response = Answer;
    type Error = GatewayError;

    fn run(
        self: Arc<Self>,
        inner: S,
        mut req: GatewayRequest,
    ) -> impl std::future::Future<Output = Result<Answer, GatewayError>> + Send + 'static {
        let shared = self;
        async move {
            let slot = match &req.client {
                Some(c) => c
                    .enter()
                    .map_err(|limit| GatewayError::TooManyConcurrent { limit })?,
                None => None,
            };
            let taken = shared.take(&mut req).await?;
            // The bucket is the client's own: its limits are what the refund needs besides.
            let limits = req.client_bucket.as_ref().map(|(_, limits)| *limits);
            let client = req.client.clone();
            let deferred = req.client_take.clone();
            // Readied, then called with the request itself (`oneshot` would hold the request in
            // one more future, a copy of it per layer).
            let mut inner = inner;
            let result = match inner.ready().await {
                Ok(next) => next.call(req).await,
                Err(e) => Err(e),
            };
            // A take left to the first key take (Redis): what it made, if it was made.
            let Taken { mut levels, charge } = match deferred {
                Some(pending) => pending.taken.get().copied().unwrap_or_default(),
                None => taken,
            };
            if let (Some(c), Some(limits), Some(refund)) =
                (&client, limits, unserved(charge, &result))
            {
                levels = levels.refunded(&refund);
                shared.limiter.refund(&c.bucket, limits, refund).await;
            }
            let mut answer = result?;
            if levels != Levels::default() {
                let made = client.as_deref().map(|c| &c.limit_values);
                ratelimit_headers(&mut answer.headers, &levels, made);
            }
            // The client's concurrency slot is held until its body has been sent (the access
            // layer keeps it with the body's record; no wrapper around the body).
            answer.hold = slot.map(Arc::new);
            Ok(answer)
        }
    }
}

impl LimitShared {
    /// Estimates the request's tokens when any TPM limit needs them, asks a stream for usage
    /// when it must be reconciled, and takes the client's buckets.
    async fn take(&self, req: &mut GatewayRequest) -> Result<Taken, GatewayError> {
        let limits = req
            .client
            .as_ref()
            .map_or_else(Limits::default, |c| Limits {
                rpm: c.settings.rpm,
                tpm: c.settings.tpm,
            });
        if limits.tpm.is_some() || self.keys_have_tpm {
            let total = match &req.counted {
                Some(counted) => counted.total(req.endpoint, self.default_max_tokens),
                None => estimate::total(&req.body, req.endpoint, self.default_max_tokens),
            };
            req.tokens = total.map_err(|e| GatewayError::IntegerAboveMax {
                param: e.param,
                value: e.value,
                max: MAX_TOKENS,
            })?;
            let streams_usage = matches!(
                req.endpoint,
                Endpoint::ChatCompletions | Endpoint::Completions
            );
            if req.stream && streams_usage && !req.include_usage {
                // Appended where it can be (the model's place in the body stays known), else
                // the body re-serialized.
                let spliced = crate::usage::append_include_usage(&req.body);
                let body = match spliced {
                    Some(body) => Some(body),
                    None => crate::usage::with_include_usage(&req.body).inspect(|_| {
                        req.model_span = None;
                    }),
                };
                if let Some(body) = body {
                    req.body = body;
                    req.strip_usage = true;
                    req.include_usage = true;
                }
            }
        }
        let Some(client) = req.client.as_ref() else {
            return Ok(Taken::default());
        };
        if limits.is_none() {
            return Ok(Taken::default());
        }
        if self.limiter.is_shared() {
            // With Redis the client's buckets are taken with the first key's, in one call.
            req.client_bucket = Some((Arc::clone(&client.bucket), limits));
            req.client_take = Some(Arc::new(crate::request::ClientTake {
                bucket: Arc::clone(&client.bucket),
                limits,
                taken: std::sync::OnceLock::new(),
            }));
            return Ok(Taken::default());
        }
        match self.limiter.take(&client.bucket, limits, req.tokens).await {
            Ok(taken) => {
                req.client_bucket = Some((Arc::clone(&client.bucket), limits));
                Ok(taken)
            }
            Err(refused) => {
                self.metrics
                    .rate_limited
                    .with_label_values(&["client", refused.dimension.label()])
                    .inc();
                Err(GatewayError::ClientRateLimited {
                    dimension: refused.dimension.label(),
                    retry_after: refused.wait,
                })
            }
        }
    }
}

/// What of the client's charge goes back for what no upstream served: all of it when the
/// gateway answered without an attempt (unknown model, unsupported endpoint, no key free), its
/// tokens when every attempt failed (the attempts were requests all the same). A served answer
/// is reconciled with its real usage instead, when its body ends.
fn unserved(charge: Charge, result: &Result<Answer, GatewayError>) -> Option<Charge> {
    match result {
        Ok(answer) if answer.served != Served::Failed => None,
        Ok(answer) if answer.attempts > 0 => Some(charge.tokens_only()),
        Ok(_) | Err(_) => Some(charge),
    }
}

/// The client's own limits in OpenAI's header format (replacing the upstream key's); `made`:
/// the client's RPM and TPM limits as values already.
fn ratelimit_headers(
    headers: &mut HeaderMap,
    levels: &Levels,
    made: Option<&[Option<(u64, HeaderValue)>; 2]>,
) {
    // [limit, remaining, reset] names per dimension, built once: this runs on every answer.
    const NAMES: [[HeaderName; 3]; 2] = [
        [
            HeaderName::from_static("x-ratelimit-limit-requests"),
            HeaderName::from_static("x-ratelimit-remaining-requests"),
            HeaderName::from_static("x-ratelimit-reset-requests"),
        ],
        [
            HeaderName::from_static("x-ratelimit-limit-tokens"),
            HeaderName::from_static("x-ratelimit-remaining-tokens"),
            HeaderName::from_static("x-ratelimit-reset-tokens"),
        ],
    ];
    for (i, (names, level)) in NAMES
        .iter()
        .zip([levels.requests, levels.tokens])
        .enumerate()
    {
        let [limit, remaining, reset] = names;
        let Some(level) = level else {
            for name in names {
                headers.remove(name);
            }
            continue;
        };
        // `insert` replaces the upstream's value.
        let made = made
            .and_then(|m| m[i].as_ref())
            .filter(|m| m.0 == level.limit);
        let limit_value = match made {
            Some((_, value)) => value.clone(),
            None => crate::units::integer_header(level.limit),
        };
        headers.insert(limit.clone(), limit_value);
        headers.insert(
            remaining.clone(),
            crate::units::integer_header(level.remaining),
        );
        match go_duration_header(level.reset) {
            Some(v) => headers.insert(reset.clone(), v),
            None => headers.remove(reset),
        };
    }
}

#[cfg(test)]
mod tests;
