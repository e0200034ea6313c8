//! The one pooled upstream HTTP client, behind a small trait tests can replace: the only
//! upstream I/O in the gateway. It follows no redirects and does not decompress.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{Stream, StreamExt, TryStreamExt};
use http::{HeaderMap, Method, StatusCode};
use std::pin::Pin;
use std::time::Duration;

/// A response body as a stream of chunks.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, UpstreamError>> + Send>>;

/// One request to an upstream, ready to send.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    /// HTTP method.
    pub method: Method,
    /// Full URL.
    pub url: String,
    /// Headers, the key included.
    pub headers: HeaderMap,
    /// Body bytes (shared, cheap to clone per attempt).
    pub body: Bytes,
}

/// An upstream's response head and streaming body.
pub struct UpstreamResponse {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body, streamed.
    pub body: BodyStream,
}

impl std::fmt::Debug for UpstreamResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamResponse")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// Why an upstream exchange failed below HTTP.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made.
    #[error("could not connect to upstream: {0}")]
    Connect(String),
    /// No answer within the allowed time.
    #[error("upstream timed out: {0}")]
    Timeout(&'static str),
    /// The connection broke during the exchange.
    #[error("upstream connection failed: {0}")]
    Transport(String),
}

/// Sends requests upstream.
pub trait Upstream: Send + Sync + 'static {
    /// Sends one request; resolves when the response head arrives.
    fn send(
        &self,
        req: UpstreamRequest,
    ) -> BoxFuture<'static, Result<UpstreamResponse, UpstreamError>>;
}

/// The production upstream: one pooled reqwest client (HTTP/1.1 and HTTP/2, rustls).
#[derive(Debug, Clone)]
pub struct HttpUpstream {
    client: reqwest::Client,
}

impl HttpUpstream {
    /// Builds the pooled client.
    pub fn new(connect_timeout: Duration) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .tcp_nodelay(true)
            .tcp_keepalive(Duration::from_secs(30))
            .build()?;
        Ok(HttpUpstream { client })
    }
}

fn describe(err: &reqwest::Error) -> String {
    // reqwest's Display names the URL; the error chain says why. Neither contains header values.
    let mut msg = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

impl Upstream for HttpUpstream {
    fn send(
        &self,
        req: UpstreamRequest,
    ) -> BoxFuture<'static, Result<UpstreamResponse, UpstreamError>> {
        let builder = self
            .client
            .request(req.method, &req.url)
            .headers(req.headers)
            .body(req.body);
        Box::pin(async move {
            let resp = builder.send().await.map_err(|e| {
                if e.is_connect() {
                    UpstreamError::Connect(describe(&e))
                } else if e.is_timeout() {
                    UpstreamError::Timeout("connect")
                } else {
                    UpstreamError::Transport(describe(&e))
                }
            })?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp
                .bytes_stream()
                .map_err(|e| UpstreamError::Transport(describe(&e)))
                .boxed();
            Ok(UpstreamResponse {
                status,
                headers,
                body,
            })
        })
    }
}
