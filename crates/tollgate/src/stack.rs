//! Where both stacks are assembled, and the one place their order is written down.
//!
//! **Edge stack** (on `http::Request`, around the `/v1/*` handler; outermost first):
//!
//! 1. `MapRequest`: a client `x-request-id` that is empty, longer than 128 bytes or not
//!    printable ASCII is dropped, so the next layer makes one;
//! 2. `SetRequestId` (tower-http): keeps the client's id or makes `req_<24 hex>`;
//! 3. `PropagateRequestId` (tower-http): the id on every answer, errors included;
//! 4. [`AccessLayer`]: the in-flight gauge, `tollgate_requests_total` and
//!    `tollgate_request_duration_seconds`, the access log line, all read from the answer's
//!    [`AnswerRecord`] extension; turns a caught panic and the body-limit 413 into OpenAI's
//!    error envelope;
//! 5. `Trace` (tower-http): a span per request (request id, method, path);
//! 6. `SetSensitiveRequestHeaders` (tower-http): `authorization`, `api-key`, `x-api-key` are
//!    never printed by a log or span;
//! 7. `CatchPanic` (tower-http): a panic becomes a 500 and the server keeps serving;
//! 8. `RequestBodyLimit` (tower-http): `server.max_body` (read at start);
//! 9. [`OpenModeLayer`]: with no clients and no `server.open`, a peer that is not loopback
//!    gets 403 `open_mode_loopback_only` (reads the live config, so reloads apply);
//!
//! then the handler reads the body once into a [`GatewayRequest`] and calls the gateway stack.
//!
//! **Gateway stack** (on [`GatewayRequest`], rebuilt from the settings on every reload; key
//! pools carry their health over):
//!
//! 1. [`ClientAuthLayer`]: gateway key → client (401), model allow-list (403);
//! 2. [`ClientLimitLayer`]: concurrency slot, RPM/TPM buckets (429 with the wait), the client's
//!    rate-limit headers on the answer;
//! 3. [`RouteLayer`]: model → chain of targets that can serve the endpoint (404, 400);
//! 4. [`FallbackLayer`]: walks the chain; counts fallbacks; the final error;
//! 5. [`RetryLayer`]: attempts on one target: backoff, deadline, the provider's retry budget;
//! 6. [`KeySelectLayer`]: a key per attempt; applies the outcome to the key; guards the answer;
//! 7. [`ProviderLayer`]: the dialect's request, the exchange, the outcome classified;
//! 8. [`UpstreamService`]: the pooled hyper-util client.

use crate::auth::Auth;
use crate::client_policy::{ClientAuthLayer, ClientLimitLayer};
use crate::config::Settings;
use crate::dispatch::backoff::{Backoff, RetryBudget};
use crate::dispatch::handles::Handles;
use crate::dispatch::retry::RetryShared;
use crate::dispatch::select::SelectShared;
use crate::dispatch::{FallbackLayer, KeySelectLayer, RetryLayer, RouteLayer};
use crate::error::GatewayError;
use crate::key_pool::store::HealthStore;
use crate::key_pool::{KeyPool, PoolPolicy};
use crate::metrics::Metrics;
use crate::provider::{Provider, ProviderLayer};
use crate::rate_limit::Limiter;
use crate::request::{Answer, GatewayRequest};
use crate::upstream::{Upstream, UpstreamService};
use futures_util::future::BoxFuture;
use http::{HeaderName, HeaderValue};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::time::Instant;
use tower::util::MapRequestLayer;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;

pub use crate::server::access::{AccessLayer, AnswerRecord};
pub use crate::server::open::OpenModeLayer;

/// A gateway stack, type-erased: what the handler calls.
pub type GatewayService = SharedService<GatewayRequest, Answer, GatewayError>;

/// A whole stack, type-erased behind one `Arc`: a clone is one count and a call boxes the
/// stack's future once. (tower's `BoxCloneSyncService` boxes every clone anew, and a stack is
/// cloned for every request it serves.)
pub struct SharedService<Req, Resp, Err>(Arc<dyn CallClone<Req, Resp, Err>>);

/// Calls a clone of the stack (readied first).
trait CallClone<Req, Resp, Err>: Send + Sync {
    fn call_clone(&self, req: Req) -> BoxFuture<'static, Result<Resp, Err>>;
}

impl<S, Req> CallClone<Req, S::Response, S::Error> for S
where
    S: Service<Req> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Response: Send,
    S::Error: Send,
    Req: Send + 'static,
{
    fn call_clone(&self, req: Req) -> BoxFuture<'static, Result<S::Response, S::Error>> {
        call_ready(&mut self.clone(), req)
    }
}

/// Calls `service` with `req`. The gateway's services are ready at once (each policy readies
/// what it calls): then the call's own future is what is boxed, the request moved straight into
/// it. A service not ready yet is readied by `oneshot` (a clone of it) with the caller's waker.
fn call_ready<S, Req>(
    service: &mut S,
    req: Req,
) -> BoxFuture<'static, Result<S::Response, S::Error>>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send,
    S::Error: Send,
    Req: Send + 'static,
{
    let mut noop = Context::from_waker(std::task::Waker::noop());
    match service.poll_ready(&mut noop) {
        Poll::Ready(Ok(())) => Box::pin(service.call(req)),
        Poll::Ready(Err(e)) => Box::pin(std::future::ready(Err(e))),
        Poll::Pending => Box::pin(service.clone().oneshot(req)),
    }
}

/// A service each thread builds for itself with `build` and calls in place.
///
/// A call through one copy shared by every thread clones it (the future owns what it calls),
/// and each clone writes the reference counts of its layers' state: counts every worker
/// writes for every request, whose cache lines then travel between cores each time. A
/// thread's own copy is called in place, and what its layers clone per request (their
/// policies, the rest of the stack) is that thread's alone.
struct PerThread<S: Send, F> {
    build: F,
    copies: thread_local::ThreadLocal<std::cell::RefCell<S>>,
}

impl<S, F, Req> CallClone<Req, S::Response, S::Error> for PerThread<S, F>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send,
    S::Error: Send,
    F: Fn() -> S + Send + Sync,
    Req: Send + 'static,
{
    fn call_clone(&self, req: Req) -> BoxFuture<'static, Result<S::Response, S::Error>> {
        let copy = self
            .copies
            .get_or(|| std::cell::RefCell::new((self.build)()));
        match copy.try_borrow_mut() {
            Ok(mut service) => call_ready(&mut *service, req),
            // Called again from inside its own call on this thread: a new copy serves it.
            Err(_) => call_ready(&mut (self.build)(), req),
        }
    }
}

impl<Req, Resp, Err> SharedService<Req, Resp, Err> {
    /// `service`, type-erased: one copy, cloned by every call.
    pub fn new<S>(service: S) -> Self
    where
        S: Service<Req, Response = Resp, Error = Err> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        Resp: Send,
        Err: Send,
        Req: Send + 'static,
    {
        SharedService(Arc::new(service))
    }

    /// What `build` makes, type-erased: a copy per thread, each called in place (see
    /// [`PerThread`]). The request path's stacks are these.
    pub fn per_thread<S, F>(build: F) -> Self
    where
        S: Service<Req, Response = Resp, Error = Err> + Clone + Send + 'static,
        S::Future: Send + 'static,
        F: Fn() -> S + Send + Sync + 'static,
        Resp: Send + 'static,
        Err: Send + 'static,
        Req: Send + 'static,
    {
        SharedService(Arc::new(PerThread {
            build,
            copies: thread_local::ThreadLocal::new(),
        }))
    }

    /// Calls it through this handle, not a clone of it (the handle's count is shared by every
    /// thread too).
    pub fn call_ref(&self, req: Req) -> BoxFuture<'static, Result<Resp, Err>> {
        self.0.call_clone(req)
    }
}

impl<Req, Resp, Err> Clone for SharedService<Req, Resp, Err> {
    fn clone(&self) -> Self {
        SharedService(Arc::clone(&self.0))
    }
}

impl<Req, Resp, Err> Service<Req> for SharedService<Req, Resp, Err> {
    type Response = Resp;
    type Error = Err;
    type Future = BoxFuture<'static, Result<Resp, Err>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Err>> {
        // Each call readies its own clone of the stack.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.0.call_clone(req)
    }
}

/// What the stacks are built from besides the settings: the parts that outlive a reload.
#[derive(Clone)]
pub struct Parts {
    /// Upstream I/O.
    pub upstream: Arc<dyn Upstream>,
    /// Buckets.
    pub limiter: Arc<Limiter>,
    /// Key health shared by replicas.
    pub health: Arc<dyn HealthStore>,
    /// Metrics.
    pub metrics: Metrics,
    /// Seed of the jitter RNG.
    pub seed: u64,
    /// Who owns each object created through the gateway (lives across reloads).
    pub records: Arc<crate::ownership::records::Records>,
}

/// A gateway stack built from one config, with the key pools it runs on.
#[derive(Clone)]
pub struct Gateway {
    /// The whole gateway stack (client auth down to the upstream).
    pub service: GatewayService,
    /// The policies from the route down, without client auth and limits.
    pub dispatch: GatewayService,
    /// The key pools, in provider order.
    pub pools: Arc<[Arc<KeyPool>]>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("providers", &self.pools.len())
            .finish_non_exhaustive()
    }
}

/// Builds the gateway stack; keys unchanged since `previous` keep their health.
///
/// The stack's state (key pools, buckets, retry budgets, records) is made here once; the layers
/// over it are made again by each thread that serves requests ([`SharedService::per_thread`]).
pub fn gateway(
    settings: &Arc<Settings>,
    auth: Arc<Auth>,
    parts: &Parts,
    previous: Option<&Gateway>,
) -> Gateway {
    let pools = pools(settings, &parts.metrics, previous);
    let budgets = budgets(settings);
    let keys_have_tpm = pools.iter().any(|p| p.has_tpm());
    let (records, limiter, metrics) = (
        Arc::clone(&parts.records),
        Arc::clone(&parts.limiter),
        parts.metrics.clone(),
    );
    let default_max_tokens = settings.limits.default_max_tokens;
    let copies = std::sync::atomic::AtomicU64::new(0);
    let (settings, parts, shared_pools) = (Arc::clone(settings), parts.clone(), Arc::clone(&pools));
    // The policies from the route down, over the shared state; each copy's jitter its own (the
    // same seed would draw the same backoffs on every thread).
    let make_dispatch = move || {
        let copy = copies.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let parts = Parts {
            seed: parts.seed.wrapping_add(copy),
            ..parts.clone()
        };
        dispatch(&settings, &parts, &shared_pools, &budgets)
    };
    // Made now, with the config: making it resolves the metric handles, so every series is
    // exported from zero before any traffic.
    let without_clients = make_dispatch();
    let build = move || {
        ServiceBuilder::new()
            .layer(ClientAuthLayer::new(Arc::clone(&auth)))
            .layer(crate::ownership::OwnershipLayer::new(Arc::clone(&records)))
            .layer(ClientLimitLayer::new(
                Arc::clone(&limiter),
                metrics.clone(),
                keys_have_tpm,
                default_max_tokens,
            ))
            .service(make_dispatch())
    };
    Gateway {
        service: SharedService::per_thread(build),
        dispatch: SharedService::new(without_clients),
        pools,
    }
}

/// One retry budget per provider: one provider's outage never spends another's retries.
fn budgets(settings: &Settings) -> Arc<[RetryBudget]> {
    let r = &settings.retry;
    settings
        .providers
        .iter()
        .map(|_| {
            RetryBudget::new(
                r.budget_percent,
                r.budget_min_per_sec,
                r.budget_window,
                Instant::now(),
            )
        })
        .collect()
}

fn pools(
    settings: &Settings,
    metrics: &Metrics,
    previous: Option<&Gateway>,
) -> Arc<[Arc<KeyPool>]> {
    let r = &settings.retry;
    let policy = PoolPolicy {
        cooldown_default: r.cooldown_default,
        cooldown_max: r.cooldown_max,
        probe_interval: r.probe_interval,
        outlier: r.outlier,
    };
    settings
        .providers
        .iter()
        .map(|p| {
            let old = previous.and_then(|g| g.pools.iter().find(|o| o.provider() == p.name));
            KeyPool::carry_over(&p.name, &p.keys, policy, metrics, old.map(|o| &**o))
        })
        .collect()
}

/// The policies from the route down to the upstream.
fn dispatch(
    settings: &Arc<Settings>,
    parts: &Parts,
    pools: &Arc<[Arc<KeyPool>]>,
    budgets: &Arc<[RetryBudget]>,
) -> impl Service<GatewayRequest, Response = Answer, Error = GatewayError, Future: Send + 'static>
       + Clone
       + Send
       + Sync
       + 'static {
    let providers: Arc<[Provider]> = settings
        .providers
        .iter()
        .map(|p| Provider::new(p.clone()))
        .collect();
    let r = &settings.retry;
    let retry = RetryShared {
        pools: Arc::clone(pools),
        budgets: Arc::clone(budgets),
        backoff: Backoff {
            base: r.base_delay,
            cap: r.max_delay,
        },
        rng: Mutex::new(SmallRng::seed_from_u64(parts.seed)),
        max_attempts: r.max_attempts,
        max_queue_wait: settings.limits.max_queue_wait,
        metrics: parts.metrics.clone(),
        provider_names: settings.providers.iter().map(|p| p.name.clone()).collect(),
    };
    let select = SelectShared {
        pools: Arc::clone(pools),
        limiter: Arc::clone(&parts.limiter),
        health: Arc::clone(&parts.health),
        handles: Arc::new(Handles::new(settings, &parts.metrics)),
        metrics: parts.metrics.clone(),
        idle_timeout: settings.server.idle_timeout,
        max_event: settings.server.max_event,
        records: Arc::clone(&parts.records),
        max_delay: r.max_delay,
    };
    ServiceBuilder::new()
        .layer(RouteLayer::new(
            Arc::clone(settings),
            Arc::clone(&providers),
        ))
        .layer(FallbackLayer::new(
            Arc::clone(&providers),
            Arc::clone(budgets),
            parts.metrics.clone(),
        ))
        .layer(RetryLayer::new(retry))
        .layer(KeySelectLayer::new(select))
        .layer(ProviderLayer::new(settings, providers, &parts.metrics))
        .service(UpstreamService::new(Arc::clone(&parts.upstream)))
}

/// Makes `req_<24 hex>` request ids.
#[derive(Clone, Copy, Debug)]
struct MakeId;

impl MakeRequestId for MakeId {
    fn make_request_id<B>(&mut self, _: &http::Request<B>) -> Option<RequestId> {
        use rand::Rng;
        // 96 random bits as 24 hex digits, written in place (no formatting machinery).
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let bits = rand::rng().random::<u128>();
        let mut id = *b"req_000000000000000000000000";
        for (i, digit) in id[4..].iter_mut().enumerate() {
            *digit = HEX[((bits >> (4 * i)) & 0xf) as usize];
        }
        HeaderValue::from_bytes(&id).ok().map(RequestId::new)
    }
}

/// Drops a client `x-request-id` that is empty, over 128 bytes or not printable ASCII.
fn drop_bad_request_id<B>(mut req: http::Request<B>) -> http::Request<B> {
    let bad = req
        .headers()
        .get(crate::server::X_REQUEST_ID)
        .is_some_and(|v| {
            let id = v.as_bytes();
            id.is_empty() || id.len() > 128 || !id.iter().all(u8::is_ascii_graphic)
        });
    if bad {
        req.headers_mut().remove(crate::server::X_REQUEST_ID);
    }
    req
}

/// The edge stack (order: this module's docs) around `handler`, the `/v1/*` handler.
pub fn edge<H>(
    handler: H,
    metrics: Arc<Metrics>,
    max_body: usize,
    open: OpenModeLayer,
) -> impl Service<
    http::Request<axum::body::Body>,
    Response = http::Response<axum::body::Body>,
    Error = std::convert::Infallible,
    Future: Send + 'static,
> + Clone
       + Send
       + Sync
       + 'static
where
    H: Service<
            http::Request<tower_http::body::Limited<axum::body::Body>>,
            Response = http::Response<axum::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    H::Future: Send + 'static,
{
    let sensitive: Arc<[HeaderName]> = Arc::new([
        http::header::AUTHORIZATION,
        HeaderName::from_static("api-key"),
        HeaderName::from_static("x-api-key"),
    ]);
    ServiceBuilder::new()
        .layer(MapRequestLayer::new(
            drop_bad_request_id::<axum::body::Body>,
        ))
        .layer(SetRequestIdLayer::x_request_id(MakeId))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(AccessLayer::new(metrics, max_body))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(crate::server::access::request_span::<axum::body::Body>)
                .on_request(())
                .on_response(())
                .on_body_chunk(())
                .on_eos(())
                .on_failure(()),
        )
        .layer(SetSensitiveRequestHeadersLayer::from_shared(sensitive))
        .layer(CatchPanicLayer::custom(crate::server::access::panic_answer))
        .layer(RequestBodyLimitLayer::new(max_body))
        .layer(open)
        .service(handler)
}

#[cfg(test)]
mod tests {
    use super::SharedService;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A service answering how many copies had been built when the one it is was.
    #[derive(Clone)]
    struct Copy(usize);

    impl tower::Service<()> for Copy {
        type Response = usize;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<usize, std::convert::Infallible>>;
        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn call(&mut self, (): ()) -> Self::Future {
            std::future::ready(Ok(self.0))
        }
    }

    /// Each thread builds its copy once, on its first call, and keeps calling that one.
    #[tokio::test]
    async fn each_thread_calls_a_copy_of_its_own() {
        let built = Arc::new(AtomicUsize::new(0));
        let service = SharedService::per_thread({
            let built = Arc::clone(&built);
            move || Copy(built.fetch_add(1, Ordering::SeqCst))
        });
        assert_eq!(built.load(Ordering::SeqCst), 0, "built on first use");
        let here = service.call_ref(()).await.unwrap();
        assert_eq!(service.call_ref(()).await.unwrap(), here);
        let there = std::thread::spawn({
            let service = service.clone();
            move || {
                let first = futures_util::FutureExt::now_or_never(service.call_ref(()));
                let again = futures_util::FutureExt::now_or_never(service.call_ref(()));
                (first.map(Result::unwrap), again.map(Result::unwrap))
            }
        })
        .join()
        .unwrap();
        assert_eq!(there.0, there.1);
        assert_ne!(there.0, Some(here));
        assert_eq!(built.load(Ordering::SeqCst), 2);
    }
}
