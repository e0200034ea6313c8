//! The gateway stack's two client policies: [`ClientAuthLayer`] (who may call, which models) and
//! [`ClientLimitLayer`] (how much).
//!
//! The client-limit layer: the client's concurrency slot (held until its answer's last byte),
//! its RPM/TPM buckets taken up front with the request's estimate (429 with the wait when one is
//! empty, never a wait), and its own rate-limit headers on the answer in place of the upstream
//! key's. It also asks a stream for usage when some TPM limit must be reconciled.

use crate::auth::{Auth, Denied, InflightGuard};
use crate::endpoint::Endpoint;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::rate_limit::estimate::estimate;
use crate::rate_limit::{Levels, Limiter, Limits};
use crate::request::{Answer, GatewayRequest};
use crate::units::format_go_duration;
use axum::body::Body;
use bytes::Bytes;
use futures_util::future::{ready, BoxFuture, Either, Ready};
use http::{HeaderMap, HeaderName, HeaderValue};
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service, ServiceExt};

/// The client-auth layer: the gateway key → the [`Client`] (401 when it is missing or
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
        let client = match self.auth.authenticate_key(req.credential.as_deref()) {
            Ok(client) => client,
            Err(Denied::BadKey) => return Either::Left(ready(Err(GatewayError::Unauthorized))),
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

struct LimitShared {
    limiter: Arc<Limiter>,
    metrics: Metrics,
    /// Whether any upstream key has a TPM limit (then every request is estimated).
    keys_have_tpm: bool,
    default_max_tokens: u32,
}

/// Builds [`ClientLimit`] services.
#[derive(Clone)]
pub struct ClientLimitLayer {
    shared: Arc<LimitShared>,
}

impl std::fmt::Debug for ClientLimitLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientLimitLayer").finish_non_exhaustive()
    }
}

impl ClientLimitLayer {
    /// Limits on `limiter`; `keys_have_tpm` when some upstream key's TPM needs estimates too.
    pub fn new(
        limiter: Arc<Limiter>,
        metrics: Metrics,
        keys_have_tpm: bool,
        default_max_tokens: u32,
    ) -> Self {
        ClientLimitLayer {
            shared: Arc::new(LimitShared {
                limiter,
                metrics,
                keys_have_tpm,
                default_max_tokens,
            }),
        }
    }
}

impl<S> Layer<S> for ClientLimitLayer {
    type Service = ClientLimit<S>;
    fn layer(&self, inner: S) -> ClientLimit<S> {
        ClientLimit {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// See [`ClientLimitLayer`].
#[derive(Clone)]
pub struct ClientLimit<S> {
    inner: S,
    shared: Arc<LimitShared>,
}

impl<S> Service<GatewayRequest> for ClientLimit<S>
where
    S: Service<GatewayRequest, Response = Answer, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Answer;
    type Error = GatewayError;
    type Future = BoxFuture<'static, Result<Answer, GatewayError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: GatewayRequest) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        let inner = self.inner.clone();
        Box::pin(async move {
            let slot = match &req.client {
                Some(c) => Some(c.enter().ok_or(GatewayError::TooManyConcurrent {
                    limit: c.settings.max_concurrent.unwrap_or(0),
                })?),
                None => None,
            };
            let levels = shared.take(&mut req).await?;
            let mut answer = inner.oneshot(req).await?;
            if levels != Levels::default() {
                ratelimit_headers(&mut answer.headers, &levels);
            }
            if let Some(slot) = slot {
                // The client's concurrency slot is held until its body has been sent.
                answer.body = Body::new(Holding {
                    body: answer.body,
                    _slot: slot,
                });
            }
            Ok(answer)
        })
    }
}

impl LimitShared {
    /// Estimates the request's tokens when any TPM limit needs them, asks a stream for usage
    /// when it must be reconciled, and takes the client's buckets.
    async fn take(&self, req: &mut GatewayRequest) -> Result<Levels, GatewayError> {
        let limits = req
            .client
            .as_ref()
            .map_or_else(Limits::default, |c| Limits {
                rpm: c.settings.rpm,
                tpm: c.settings.tpm,
            });
        if limits.tpm.is_some() || self.keys_have_tpm {
            let (prompt, completion) = estimate(&req.body, req.endpoint, self.default_max_tokens);
            req.tokens = prompt + completion;
            let streams_usage = matches!(
                req.endpoint,
                Endpoint::ChatCompletions | Endpoint::Completions
            );
            if req.stream && streams_usage && !req.include_usage {
                if let Some(body) = crate::usage::with_include_usage(&req.body) {
                    req.body = body;
                    req.strip_usage = true;
                    req.include_usage = true;
                }
            }
        }
        let Some(client) = req.client.as_ref() else {
            return Ok(Levels::default());
        };
        if limits.is_none() {
            return Ok(Levels::default());
        }
        match self.limiter.take(&client.bucket, limits, req.tokens).await {
            Ok(levels) => {
                req.client_bucket = Some((Arc::clone(&client.bucket), limits));
                Ok(levels)
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

/// The client's own limits in OpenAI's header format (replacing the upstream key's).
fn ratelimit_headers(headers: &mut HeaderMap, levels: &Levels) {
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
    for (names, level) in NAMES.iter().zip([levels.requests, levels.tokens]) {
        for name in names {
            headers.remove(name);
        }
        let Some(level) = level else { continue };
        let [limit, remaining, reset] = names;
        headers.insert(limit.clone(), HeaderValue::from(level.limit));
        headers.insert(remaining.clone(), HeaderValue::from(level.remaining));
        if let Ok(v) = HeaderValue::try_from(format_go_duration(level.reset)) {
            headers.insert(reset.clone(), v);
        }
    }
}

pin_project_lite::pin_project! {
    /// A body that keeps the client's concurrency slot until it has been sent or dropped.
    struct Holding {
        #[pin]
        body: Body,
        _slot: InflightGuard,
    }
}

impl http_body::Body for Holding {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClientSettings;
    use crate::request::Served;
    use http::{Method, StatusCode};
    use tower::service_fn;

    fn client(rpm: u32, max_concurrent: Option<u32>) -> Arc<crate::auth::Client> {
        let auth = Auth::new(&[ClientSettings {
            name: "team".into(),
            key_sha256: crate::digest::sha256(b"k"),
            rpm: Some(rpm),
            tpm: None,
            max_concurrent,
            models: vec![],
        }]);
        auth.authenticate_key(Some("k")).unwrap().unwrap()
    }

    fn layer() -> (ClientLimitLayer, Metrics) {
        let metrics = Metrics::new().unwrap();
        let toml = "[[providers]]\nname = \"p\"\nbase_url = \"http://p/v1\"\nkeys = [{ id = \"a\", secret = \"a\" }]\n";
        let settings = crate::config::Config::from_toml(toml)
            .unwrap()
            .validate_with(&|_| None)
            .unwrap();
        let limiter = Arc::new(Limiter::new(&settings.state, &metrics));
        (
            ClientLimitLayer::new(limiter, metrics.clone(), false, 16),
            metrics,
        )
    }

    fn request(client: &Arc<crate::auth::Client>) -> GatewayRequest {
        let mut req = GatewayRequest::for_test(Method::POST, "chat/completions", Bytes::new());
        req.client = Some(Arc::clone(client));
        req
    }

    fn ok(_: GatewayRequest) -> std::future::Ready<Result<Answer, GatewayError>> {
        std::future::ready(Ok(Answer {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Body::empty(),
            provider: "p".into(),
            key: "a".into(),
            attempts: 1,
            served: Served::FirstTry,
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_bucket_answers_429_with_the_wait_and_the_client_headers() {
        let (layer, metrics) = layer();
        let svc = layer.layer(service_fn(ok));
        let team = client(2, None);
        for remaining in ["1", "0"] {
            let answer = svc.clone().oneshot(request(&team)).await.unwrap();
            assert_eq!(answer.headers["x-ratelimit-limit-requests"], "2");
            assert_eq!(answer.headers["x-ratelimit-remaining-requests"], remaining);
        }
        let err = svc.clone().oneshot(request(&team)).await.unwrap_err();
        let resp = err.to_response();
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["retry-after"], "30");
        assert!(metrics
            .render()
            .contains(r#"tollgate_rate_limited_total{dimension="requests",scope="client"} 1"#));
    }

    #[tokio::test(start_paused = true)]
    async fn the_concurrency_slot_is_held_until_the_body_is_dropped() {
        let (layer, _) = layer();
        let svc = layer.layer(service_fn(ok));
        let team = client(100, Some(1));
        let first = svc.clone().oneshot(request(&team)).await.unwrap();
        let err = svc.clone().oneshot(request(&team)).await.unwrap_err();
        assert_eq!(
            err.to_response().status(),
            429,
            "the first answer's body holds the slot"
        );
        drop(first);
        assert!(svc.clone().oneshot(request(&team)).await.is_ok());
    }

    #[tokio::test]
    async fn the_layer_refuses_unknown_keys_and_models_outside_the_allow_list() {
        use crate::request::Served;
        use tower::{service_fn, ServiceExt};
        let auth = Arc::new(Auth::new(&[ClientSettings {
            name: "team".into(),
            key_sha256: crate::digest::sha256(b"k"),
            rpm: None,
            tpm: None,
            max_concurrent: None,
            models: vec!["m".into()],
        }]));
        let inner = service_fn(|req: GatewayRequest| async move {
            assert_eq!(
                req.client.as_ref().map(|c| c.settings.name.as_str()),
                Some("team")
            );
            Ok::<_, GatewayError>(Answer {
                status: http::StatusCode::OK,
                headers: HeaderMap::new(),
                body: axum::body::Body::empty(),
                provider: "p".into(),
                key: "a".into(),
                attempts: 1,
                served: Served::FirstTry,
            })
        });
        let svc = ClientAuthLayer::new(auth).layer(inner);
        let req = |key: Option<&str>, model: &str| {
            let body = bytes::Bytes::from(format!(r#"{{"model":"{model}"}}"#));
            let mut r = GatewayRequest::for_test(http::Method::POST, "chat/completions", body);
            r.credential = key.map(Box::from);
            r
        };
        let status = |r: Result<Answer, GatewayError>| match r {
            Ok(a) => a.status.as_u16(),
            Err(e) => e.status().as_u16(),
        };
        assert_eq!(status(svc.clone().oneshot(req(Some("k"), "m")).await), 200);
        assert_eq!(status(svc.clone().oneshot(req(None, "m")).await), 401);
        assert_eq!(status(svc.clone().oneshot(req(Some("x"), "m")).await), 401);
        assert_eq!(
            status(svc.clone().oneshot(req(Some("k"), "other")).await),
            403
        );
    }
}
