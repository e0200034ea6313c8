//! The provider layer, innermost policy of the gateway stack: one exchange for a
//! [`KeyedCall`]. It builds the dialect's request, sends it through the upstream service within
//! the attempt's first-byte deadline, reads what must be read before the answer can be judged
//! (an error body, a stream's first event, a whole answer that must be translated), puts error
//! bodies into OpenAI's shape, and classifies the outcome. It changes no state: key health,
//! buckets and the request's trail are the key-selection layer's.

use super::classify::{classify, Kind, Outcome, Verdict};
use super::encoding::{decode_stream, decoded, is_encoded};
use super::Provider;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::policy::{Policy, PolicyLayer, PolicyService};
use crate::request::KeyedCall;
use crate::stream::{peek_first_event, FirstEvent};
use crate::upstream::{BodyStream, UpstreamError, UpstreamRequest, UpstreamResponse};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::{header, HeaderMap, StatusCode};
use prometheus::Histogram;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;
use tower::{Service, ServiceExt};
use tracing::{Instrument, Span};

/// Largest upstream error body kept for classification and pass-through.
const MAX_ERROR_BODY: usize = 1 << 20;
/// Largest answer read whole to be translated (an Anthropic message of any realistic size).
const MAX_ANSWER_BODY: usize = 256 << 20;

/// What an attempt produced, before anyone acted on it.
pub enum Raw {
    /// A success: the response (body translated where the dialect needs it) and, for a
    /// stream, the events already read.
    Ok(UpstreamResponse, Bytes),
    /// An error answer (in an [`Exchange`], its body is in OpenAI's shape).
    Error {
        /// Upstream status.
        status: StatusCode,
        /// Upstream headers.
        headers: HeaderMap,
        /// The error body.
        body: Bytes,
    },
    /// A 200 stream whose first event was an error (the event's JSON).
    StreamError(Bytes),
    /// No usable answer.
    Transport(UpstreamError),
}

/// One classified exchange.
pub struct Exchange {
    /// What came back.
    pub raw: Raw,
    /// Its row in the outcome table, and the wait the upstream asked for.
    pub verdict: Verdict,
    /// The upstream status, when there was one (200 for a stream error event).
    pub status: Option<u16>,
    /// How long the upstream took to answer (headers, or a stream's first event).
    pub elapsed: Duration,
    /// The attempt's span (`Span::none()` with traces off); a success's ends with its body.
    pub span: tracing::Span,
}

impl Exchange {
    /// The answer's headers, when the upstream answered.
    pub fn headers(&self) -> Option<&HeaderMap> {
        match &self.raw {
            Raw::Ok(resp, _) => Some(&resp.headers),
            Raw::Error { headers, .. } => Some(headers),
            Raw::StreamError(_) | Raw::Transport(_) => None,
        }
    }
}

/// The provider policy's state (its layer is [`ProviderLayer`]).
pub struct ProviderShared {
    providers: Arc<[Provider]>,
    first_byte_timeout: Duration,
    first_event_timeout: Duration,
    /// Largest event of a streamed answer (a translated stream's upstream events included).
    max_event: usize,
    /// `[model index or last = "other"]`.
    ttft: Vec<Histogram>,
    /// `[provider]`.
    upstream_duration: Vec<Histogram>,
}

/// Builds [`ProviderService`]s.
pub type ProviderLayer = PolicyLayer<ProviderShared>;

/// Runs one exchange with the upstream; never fails (every outcome is an [`Exchange`]).
pub type ProviderService<S> = PolicyService<ProviderShared, S>;

impl ProviderLayer {
    /// A layer for the configured providers.
    pub fn new(settings: &Settings, providers: Arc<[Provider]>, metrics: &Metrics) -> Self {
        let ttft = settings
            .models
            .iter()
            .map(|m| m.name.as_str())
            .chain(["other"])
            .map(|m| metrics.ttft(m))
            .collect();
        let upstream_duration = providers
            .iter()
            .map(|p| metrics.upstream_duration.with_label_values(&[p.name()]))
            .collect();
        PolicyLayer::of(ProviderShared {
            providers,
            first_byte_timeout: settings.server.first_byte_timeout,
            first_event_timeout: settings.server.first_event_timeout,
            max_event: settings.server.max_event,
            ttft,
            upstream_duration,
        })
    }
}

impl<S> Policy<S> for ProviderShared
where
    S: Service<UpstreamRequest, Response = UpstreamResponse, Error = UpstreamError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Request = KeyedCall;
    type Response = Exchange;
    type Error = Infallible;

    fn run(
        self: Arc<Self>,
        inner: S,
        call: KeyedCall,
    ) -> impl std::future::Future<Output = Result<Exchange, Infallible>> + Send + 'static {
        let span = match crate::telemetry::enabled() {
            false => Span::none(),
            true => {
                let provider = &self.providers[call.target.provider];
                crate::telemetry::spans::attempt(
                    provider.settings().kind,
                    provider.name(),
                    &call.req,
                    &call.target,
                    call.key.id(),
                )
            }
        };
        async move {
            if span.is_none() {
                return Ok(self.exchange(inner, call, span).await);
            }
            let exchange = self.exchange(inner, call, span.clone());
            Ok(exchange.instrument(span).await)
        }
    }
}

async fn read_bounded(body: &mut BodyStream, deadline: Instant, limit: usize) -> Bytes {
    let mut buf = BytesMut::new();
    while buf.len() < limit {
        match tokio::time::timeout_at(deadline, body.next()).await {
            Ok(Some(Ok(chunk))) => buf.extend_from_slice(&chunk),
            _ => break,
        }
    }
    buf.freeze()
}

/// An answer's whole body (up to `MAX_ANSWER_BODY`), decoded when compressed; its headers
/// then describe the decoded body.
async fn read_whole(resp: &mut UpstreamResponse, deadline: Instant) -> Bytes {
    let body = read_bounded(&mut resp.body, deadline, MAX_ANSWER_BODY).await;
    decoded(&mut resp.headers, body, MAX_ANSWER_BODY)
}

/// Records an attempt's outcome on its span, and the model its answer names: from the events
/// already read, else from the body's first chunk as it passes.
fn trace_outcome(span: &Span, raw: &mut Raw, status: Option<u16>, kind: Kind) {
    crate::telemetry::spans::outcome(span, status, kind.label(), kind == Kind::Success);
    let Raw::Ok(resp, prefix) = raw else { return };
    if !prefix.is_empty() {
        crate::telemetry::spans::response_model(span, prefix);
        return;
    }
    let body = std::mem::replace(&mut resp.body, Box::pin(futures_util::stream::empty()));
    let span = span.clone();
    let mut first = true;
    resp.body = Box::pin(body.inspect(move |chunk| {
        if let (true, Ok(chunk)) = (std::mem::take(&mut first), chunk) {
            crate::telemetry::spans::response_model(&span, chunk);
        }
    }));
}

/// Whether an answer is an SSE stream.
pub fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

impl ProviderShared {
    async fn exchange<S>(&self, upstream: S, call: KeyedCall, span: Span) -> Exchange
    where
        S: Service<UpstreamRequest, Response = UpstreamResponse, Error = UpstreamError>,
    {
        let started = Instant::now();
        let raw = self.raw(upstream, &call, &span, started).await;
        let elapsed = started.elapsed();
        // Only a failure's classification reads the wall clock (`retry-after` dates).
        let wall = SystemTime::now;
        let (verdict, status) = match &raw {
            Raw::Ok(resp, _) => (
                Verdict {
                    kind: Kind::Success,
                    wait: None,
                },
                Some(resp.status.as_u16()),
            ),
            Raw::Error {
                status,
                headers,
                body,
            } => {
                let outcome = Outcome::Response {
                    status: status.as_u16(),
                    headers,
                    body,
                };
                (classify(outcome, wall()), Some(status.as_u16()))
            }
            Raw::StreamError(json) => (
                classify(Outcome::StreamError { body: json }, wall()),
                Some(200),
            ),
            Raw::Transport(e) => {
                let outcome = match e {
                    UpstreamError::Timeout(_) => Outcome::Timeout,
                    UpstreamError::Connect(_) => Outcome::ConnectError,
                    UpstreamError::Setup(_) => Outcome::SetupError,
                    UpstreamError::Transport(_) => Outcome::TransportError,
                };
                (classify(outcome, wall()), None)
            }
        };
        // Classified on the upstream's own words; passed on in OpenAI's shape.
        let provider = &self.providers[call.target.provider];
        let raw = match raw {
            Raw::Error {
                status,
                mut headers,
                body,
            } => {
                let body = provider.error_body(&mut headers, &body);
                Raw::Error {
                    status,
                    headers,
                    body,
                }
            }
            Raw::StreamError(json) => Raw::StreamError(provider.error_body(
                &mut HeaderMap::new(),
                &super::encoding::stream_error_envelope(json),
            )),
            other => other,
        };
        let mut raw = raw;
        if !span.is_none() {
            trace_outcome(&span, &mut raw, status, verdict.kind);
        }
        Exchange {
            raw,
            verdict,
            status,
            elapsed,
            span,
        }
    }

    async fn raw<S>(&self, upstream: S, call: &KeyedCall, span: &Span, started: Instant) -> Raw
    where
        S: Service<UpstreamRequest, Response = UpstreamResponse, Error = UpstreamError>,
    {
        let provider = &self.providers[call.target.provider];
        let req = &call.req;
        let up = match provider.build(req, &call.target, call.body.clone(), call.key.secret()) {
            Ok(mut up) => {
                if !span.is_none() {
                    // The attempt's context replaces the client's: the upstream's spans are
                    // this attempt's children.
                    crate::telemetry::spans::inject(span, &mut up.headers);
                }
                up
            }
            Err(e) => {
                return Raw::Transport(UpstreamError::Connect(format!(
                    "the request cannot be built: {e}"
                )))
            }
        };
        let timeout = match req.stream {
            true => self.first_event_timeout,
            false => self.first_byte_timeout,
        };
        // `started` was read just before the request was built: one clock read for both.
        let deadline = started
            .checked_add(timeout)
            .map_or(call.deadline, |d| d.min(call.deadline));
        let sent = tokio::time::timeout_at(deadline, upstream.oneshot(up)).await;
        self.upstream_duration[call.target.provider].observe(started.elapsed().as_secs_f64());
        let mut resp = match sent {
            Err(_) => return Raw::Transport(UpstreamError::Timeout("response headers")),
            Ok(Err(e)) => return Raw::Transport(e),
            Ok(Ok(resp)) => resp,
        };
        if !resp.status.is_success() {
            let body = read_bounded(&mut resp.body, deadline, MAX_ERROR_BODY).await;
            let body = decoded(&mut resp.headers, body, MAX_ERROR_BODY);
            return Raw::Error {
                status: resp.status,
                headers: resp.headers,
                body,
            };
        }
        provider.answer_headers(req, &mut resp.headers);
        if !(req.stream && is_event_stream(&resp.headers)) {
            if !provider.translates_answers(req) {
                // Passed through as it streams, unless it must be read whole: compressed though
                // asked for identity (decoded, so usage is read and any client can read it), or
                // an answer naming objects the caller now owns (so they are recorded).
                if !is_encoded(&resp.headers) && !req.records {
                    return Raw::Ok(resp, Bytes::new());
                }
                let body = read_whole(&mut resp, deadline).await;
                resp.body = Box::pin(futures_util::stream::empty());
                return Raw::Ok(resp, body);
            }
            let body = read_whole(&mut resp, deadline).await;
            return match provider.translate_answer(req, &mut resp.headers, &body) {
                Ok(json) => {
                    resp.body = Box::pin(futures_util::stream::iter([Ok(json)]));
                    Raw::Ok(resp, Bytes::new())
                }
                Err(e) => Raw::Transport(UpstreamError::Transport(format!(
                    "untranslatable answer: {e}"
                ))),
            };
        }
        if is_encoded(&resp.headers) {
            // A stream compressed though asked for identity: its events are read decoded.
            let body = std::mem::replace(&mut resp.body, Box::pin(futures_util::stream::empty()));
            resp.body = decode_stream(&mut resp.headers, body, self.max_event);
        }
        match peek_first_event(&mut resp.body, deadline).await {
            Ok(FirstEvent::Data(prefix)) => {
                let model = req
                    .model_index
                    .unwrap_or(usize::MAX)
                    .min(self.ttft.len() - 1);
                self.ttft[model].observe(req.received.elapsed().as_secs_f64());
                let body =
                    std::mem::replace(&mut resp.body, Box::pin(futures_util::stream::empty()));
                let (prefix, body) = provider.stream(req, prefix, body, self.max_event);
                resp.body = body;
                Raw::Ok(resp, prefix)
            }
            Ok(FirstEvent::Error(json)) => Raw::StreamError(json),
            Ok(FirstEvent::Ended) => Raw::Transport(UpstreamError::Transport(
                "stream ended before its first event".into(),
            )),
            Err(e) => Raw::Transport(e),
        }
    }
}
