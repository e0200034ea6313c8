//! The edge stack's own layer: counts and logs every `/v1/*` request from the typed
//! [`AnswerRecord`] the handler leaves on the answer (never from headers read back), keeps the
//! in-flight gauge, and gives the two answers tower-http makes itself (a caught panic and the
//! body-limit 413) OpenAI's error envelope.

use crate::endpoint::Endpoint;
use crate::error::GatewayError;
use crate::metrics::{status_class, Metrics};
use crate::request::Served;
use axum::body::Body;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Method, Request, Response, StatusCode, Uri};
use std::any::Any;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::time::Instant;
use tower::{Layer, Service};

/// What the handler says about an answer, for metrics and the access log.
#[derive(Debug, Clone)]
pub struct AnswerRecord {
    /// The configured model's name, or `other`.
    pub model: String,
    /// The provider that answered (`-` when none did).
    pub provider: String,
    /// The key used (`-` when none was).
    pub key: String,
    /// Upstream attempts made.
    pub attempts: u32,
    /// How it was served.
    pub served: Served,
}

/// Marks the 500 that `CatchPanic` made, so this layer can give it the envelope.
#[derive(Debug, Clone, Copy)]
struct Panicked;

/// `CatchPanic`'s answer: a bare 500, marked (the envelope needs the request id, added here).
pub fn panic_answer(_: Box<dyn Any + Send + 'static>) -> Response<http_body_util::Full<Bytes>> {
    let mut resp = Response::new(http_body_util::Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    resp.extensions_mut().insert(Panicked);
    resp
}

/// The span of one request (request id, method, path); per-request, so under `tollgate::server`.
pub fn request_span<B>(req: &http::Request<B>) -> tracing::Span {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    tracing::info_span!("request", request_id = id, method = %req.method(), path = req.uri().path())
}

/// Builds [`Access`] services.
#[derive(Clone, Debug)]
pub struct AccessLayer {
    metrics: Arc<Metrics>,
    max_body: usize,
}

impl AccessLayer {
    /// Counts into `metrics`; `max_body` is named in the 413 envelope.
    pub fn new(metrics: Arc<Metrics>, max_body: usize) -> Self {
        AccessLayer { metrics, max_body }
    }
}

impl<S> Layer<S> for AccessLayer {
    type Service = Access<S>;
    fn layer(&self, inner: S) -> Access<S> {
        Access {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`AccessLayer`].
#[derive(Clone, Debug)]
pub struct Access<S> {
    inner: S,
    layer: AccessLayer,
}

impl<S, B> Service<Request<Body>> for Access<S>
where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible>,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let received = Instant::now();
        let layer = self.layer.clone();
        layer.metrics.inflight.inc();
        let request_id = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        let (method, uri) = (req.method().clone(), req.uri().clone());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let _inflight = Dec(&layer.metrics.inflight);
            let resp = match fut.await {
                Ok(resp) => resp.map(Body::new),
                Err(never) => match never {},
            };
            let resp = layer.envelope(resp, &request_id);
            layer.record(&resp, &request_id, &method, &uri, received);
            Ok(resp)
        })
    }
}

impl AccessLayer {
    /// The envelope for the answers tower-http made.
    fn envelope(&self, resp: Response<Body>, request_id: &str) -> Response<Body> {
        if resp.extensions().get::<Panicked>().is_some() {
            tracing::error!(request_id, "handler panicked");
            let err = GatewayError::Internal {
                request_id: request_id.to_owned(),
            };
            return err.to_response();
        }
        let from_limit = resp.status() == StatusCode::PAYLOAD_TOO_LARGE
            && resp.extensions().get::<AnswerRecord>().is_none();
        if from_limit {
            return GatewayError::BodyTooLarge {
                limit: self.max_body,
            }
            .to_response();
        }
        resp
    }

    fn record(
        &self,
        resp: &Response<Body>,
        request_id: &str,
        method: &Method,
        uri: &Uri,
        received: Instant,
    ) {
        let path = uri.path().strip_prefix("/v1/").unwrap_or_default();
        let endpoint = Endpoint::from_path(path);
        let status = resp.status().as_u16();
        let record = resp.extensions().get::<AnswerRecord>();
        let served = match record {
            Some(r) if status < 400 => r.served,
            _ => Served::Failed,
        };
        let field = |f: fn(&AnswerRecord) -> &str| record.map_or("-", f);
        let model = record.map_or("other", |r| r.model.as_str());
        let elapsed = received.elapsed();
        let m = &self.metrics;
        m.requests
            .with_label_values(&[
                model,
                endpoint.label(),
                status_class(status),
                served.label(),
            ])
            .inc();
        m.request_duration
            .with_label_values(&[endpoint.label()])
            .observe(elapsed.as_secs_f64());
        tracing::info!(
            request_id,
            method = %method,
            path,
            model,
            status,
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            provider = field(|r| &r.provider),
            key = field(|r| &r.key),
            attempts = record.map_or(0, |r| r.attempts),
            "request"
        );
    }
}

/// Decrements a gauge when dropped (also when the client goes away mid-request).
struct Dec<'a>(&'a prometheus::IntGauge);

impl Drop for Dec<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
