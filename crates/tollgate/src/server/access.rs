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
use http::{Method, Request, Response, StatusCode};
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
    pub provider: Arc<str>,
    /// The key used (`-` when none was).
    pub key: Arc<str>,
    /// Upstream attempts made.
    pub attempts: u32,
    /// How it was served.
    pub served: Served,
    /// The request span, when traces are on (a client that leaves mid-answer is marked on it).
    pub span: Option<tracing::Span>,
    /// The client's concurrency slot, released with this record: when the body has gone out
    /// or the client has left.
    pub hold: Option<std::sync::Arc<crate::auth::InflightGuard>>,
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
/// With traces on, the richer span of `telemetry::spans::request`, the client's trace its parent.
pub fn request_span<B>(req: &http::Request<B>) -> tracing::Span {
    let id = crate::server::request_id(req.extensions(), req.headers())
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    if crate::telemetry::enabled() {
        return crate::telemetry::spans::request(req, id);
    }
    tracing::info_span!("request", request_id = id, method = %req.method(), path = req.uri().path())
}

/// Builds [`Access`] services.
#[derive(Clone, Debug)]
pub struct AccessLayer {
    shared: Arc<AccessShared>,
}

/// What every request's record reads (one count to share with a record).
#[derive(Debug)]
pub struct AccessShared {
    metrics: Arc<Metrics>,
    max_body: usize,
    /// `tollgate_request_duration_seconds` of each endpoint, by `Endpoint::index` (a label
    /// lookup per request costs a hash of the label and the vector's lock).
    durations: Vec<prometheus::Histogram>,
}

impl AccessLayer {
    /// Counts into `metrics`; `max_body` is named in the 413 envelope.
    pub fn new(metrics: Arc<Metrics>, max_body: usize) -> Self {
        let durations = Endpoint::ALL
            .iter()
            .map(|e| metrics.request_duration.with_label_values(&[e.label()]))
            .collect();
        AccessLayer {
            shared: Arc::new(AccessShared {
                metrics,
                max_body,
                durations,
            }),
        }
    }
}

impl std::ops::Deref for AccessLayer {
    type Target = AccessShared;
    fn deref(&self) -> &AccessShared {
        &self.shared
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
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = AccessFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let received = Instant::now();
        self.layer.metrics.inflight.inc();
        let request_id = crate::server::request_id(req.extensions(), req.headers())
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        let method = req.method().clone();
        // Copied, not the request's `Uri`: that shares hyper's read buffer, which a stream's
        // record would keep alive (8 KiB a stream) while hyper reads into another.
        let path: Box<str> = req.uri().path().into();
        // Until the answer's head exists, a client that leaves is counted and logged by the
        // entry's drop.
        let pending = Entry {
            layer: self.layer.clone(),
            endpoint: endpoint_of(&path),
            request_id,
            method,
            path,
            received,
            head: None,
            status: 499,
            record: None,
            written: false,
        };
        AccessFuture {
            inner: self.inner.call(req),
            pending: Some(pending),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Access`]: the inner service's answer, then its body wrapped to write the
    /// record. A plain future, not an async block boxed: the inner future (the whole edge and
    /// gateway path, some kilobytes) is held once, never copied into a box or moved from a
    /// capture into its await.
    pub struct AccessFuture<F> {
        #[pin]
        inner: F,
        // Taken when the answer's head is ready; dropped with the future if the client left
        // first (the in-flight gauge goes down with it).
        pending: Option<Entry>,
    }
}

impl<F, B> std::future::Future for AccessFuture<F>
where
    F: std::future::Future<Output = Result<Response<B>, Infallible>>,
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let resp = match std::task::ready!(this.inner.poll(cx)) {
            Ok(resp) => resp,
            Err(never) => match never {},
        };
        // Polled again after its answer: the inner future's own contract is broken first.
        let Some(pending) = this.pending.take() else {
            return Poll::Pending;
        };
        // The answer's body is boxed once, with the access record's counter around it.
        Poll::Ready(Ok(
            match pending.layer.replacement(&resp, &pending.request_id) {
                Some(made) => AccessLayer::counted(made, pending),
                None => AccessLayer::counted(resp, pending),
            },
        ))
    }
}

fn endpoint_of(path: &str) -> Endpoint {
    Endpoint::from_path(path.strip_prefix("/v1/").unwrap_or_default())
}

/// One request's access record, written once: when its answer's body has been sent (or
/// failed), or when the client leaves first (`client_cancelled`).
struct Entry {
    layer: AccessLayer,
    endpoint: Endpoint,
    request_id: String,
    method: Method,
    /// The request's path.
    path: Box<str>,
    received: Instant,
    /// Time to the answer's head, once it exists.
    head: Option<std::time::Duration>,
    status: u16,
    record: Option<AnswerRecord>,
    written: bool,
}

impl Entry {
    fn write(&mut self, outcome: Outcome) {
        if !self.written {
            self.written = true;
            self.layer.record(self, outcome);
        }
    }
}

impl Drop for Entry {
    /// Dropped without being written: the client left (before the answer's head, also no
    /// longer in flight).
    fn drop(&mut self) {
        self.write(Outcome::ClientCancelled);
        if self.head.is_none() {
            self.layer.metrics.inflight.dec();
        }
    }
}

/// How a request ended, for the count and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Its answer went out whole (or failed on the upstream's side, counted there).
    Sent,
    /// The client left before its answer was sent.
    ClientCancelled,
}

/// An answer's body that writes its request's access record at its end.
struct Counted<B: http_body::Body> {
    // First, so it is written while the body (which holds the request span open) still lives.
    entry: Option<Entry>,
    inner: B,
    /// Bytes still due when the answer declared a length: hyper stops reading there.
    remaining: Option<u64>,
}

impl<B: http_body::Body> Counted<B> {
    fn sent(&mut self) {
        if let Some(mut e) = self.entry.take() {
            e.write(Outcome::Sent);
        }
    }
}

impl<B> http_body::Body for Counted<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map_err(axum::Error::new);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                if let Some(remaining) = self.remaining.as_mut() {
                    *remaining = remaining.saturating_sub(len);
                    if *remaining == 0 {
                        self.sent();
                    }
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.sent(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<B: http_body::Body> Drop for Counted<B> {
    fn drop(&mut self) {
        // An empty body that was never polled went out whole with its head; any other left
        // unfinished is the client's leaving (the entry's own drop).
        if http_body::Body::is_end_stream(&self.inner) {
            self.sent();
        }
    }
}

impl AccessLayer {
    /// The envelope for the answers tower-http made (`None`: the answer stands).
    fn replacement<B>(&self, resp: &Response<B>, request_id: &str) -> Option<Response<Body>> {
        if resp.extensions().get::<Panicked>().is_some() {
            tracing::error!(request_id, "handler panicked");
            let err = GatewayError::Internal {
                request_id: request_id.to_owned(),
            };
            return Some(err.to_response());
        }
        let from_limit = resp.status() == StatusCode::PAYLOAD_TOO_LARGE
            && resp.extensions().get::<AnswerRecord>().is_none();
        from_limit.then(|| {
            GatewayError::BodyTooLarge {
                limit: self.max_body,
            }
            .to_response()
        })
    }

    /// Metrics for the answer's head, and its body wrapped to write the record at its end.
    /// (The entry's own layer counts: no other count of it is taken per request.)
    fn counted<B>(mut resp: Response<B>, mut pending: Entry) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let elapsed = pending.received.elapsed();
        let layer = &pending.layer;
        layer.durations[pending.endpoint.index()].observe(elapsed.as_secs_f64());
        // The answer's head exists: the request is no longer in flight.
        layer.metrics.inflight.dec();
        pending.head = Some(elapsed);
        pending.status = resp.status().as_u16();
        // Taken, not copied: nothing outside this layer reads it.
        pending.record = resp.extensions_mut().remove::<AnswerRecord>();
        let remaining = resp
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        resp.map(|inner| {
            Body::new(Counted {
                entry: Some(pending),
                inner,
                remaining,
            })
        })
    }

    fn record(&self, e: &Entry, outcome: Outcome) {
        let path = e.path.strip_prefix("/v1/").unwrap_or_default();
        let endpoint = e.endpoint;
        let record = e.record.as_ref();
        let served = match (outcome, record) {
            (Outcome::ClientCancelled, _) => "client_cancelled",
            (Outcome::Sent, Some(r)) if e.status < 400 => r.served.label(),
            (Outcome::Sent, _) => Served::Failed.label(),
        };
        if let Some(span) = record.and_then(|r| r.span.as_ref()) {
            span.record("tollgate.outcome", served);
        }
        let field = |f: fn(&AnswerRecord) -> &str| record.map_or("-", f);
        let model = record.map_or("other", |r| r.model.as_str());
        self.metrics
            .requests
            .with_label_values(&[model, endpoint.label(), status_class(e.status), served])
            .inc();
        let elapsed = e.received.elapsed().as_secs_f64() * 1000.0;
        let head = e.head.map_or(elapsed, |h| h.as_secs_f64() * 1000.0);
        tracing::info!(
            request_id = e.request_id,
            method = %e.method,
            path,
            model,
            status = e.status,
            outcome = served,
            latency_ms = head,
            duration_ms = elapsed,
            provider = field(|r| &r.provider),
            key = field(|r| &r.key),
            attempts = record.map_or(0, |r| r.attempts),
            "request"
        );
    }
}
