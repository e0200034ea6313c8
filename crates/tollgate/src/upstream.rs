//! The one pooled upstream HTTP client, behind a small trait tests can replace, and as a tower
//! service ([`UpstreamService`]): the only upstream I/O in the gateway. It follows no redirects and does not decompress.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::Stream;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::pin::Pin;
use std::time::Duration;

mod egress;

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
    /// The provider whose own connections (its `ca_file`) carry it; `None`: the shared ones.
    pub egress: Option<std::sync::Arc<str>>,
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
    /// The connection cannot work as configured (an untrusted certificate, a proxy that
    /// refuses the gateway's credentials): a configuration error, not a transient one.
    #[error("upstream not reachable as configured: {0}")]
    Setup(String),
}

/// Sends requests upstream.
pub trait Upstream: Send + Sync + 'static {
    /// Sends one request; resolves when the response head arrives.
    fn send(
        &self,
        req: UpstreamRequest,
    ) -> BoxFuture<'static, Result<UpstreamResponse, UpstreamError>>;
}

/// Any [`Upstream`] as the tower service at the bottom of the gateway stack.
///
/// Its own count over the shared upstream: the layer above clones it for every request, and a
/// stack built per thread (`SharedService::per_thread`) so writes only that thread's count.
#[derive(Clone)]
pub struct UpstreamService(std::sync::Arc<std::sync::Arc<dyn Upstream>>);

impl UpstreamService {
    /// The service sending through `upstream`.
    pub fn new(upstream: std::sync::Arc<dyn Upstream>) -> Self {
        UpstreamService(std::sync::Arc::new(upstream))
    }
}

impl tower::Service<UpstreamRequest> for UpstreamService {
    type Response = UpstreamResponse;
    type Error = UpstreamError;
    type Future = BoxFuture<'static, Result<UpstreamResponse, UpstreamError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), UpstreamError>> {
        // The pooled client queues on its own: always ready.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: UpstreamRequest) -> Self::Future {
        self.0.send(req)
    }
}

/// The egress connector (TLS roots, proxy, timeouts).
type Connector = HttpsConnector<egress::Egress>;

/// A pooled hyper client over the egress connector.
type Pooled = Client<Connector, Full<Bytes>>;

/// The production upstream: pooled hyper clients (HTTP/1.1 and HTTP/2 over rustls, plain HTTP
/// too) trusting Mozilla's and the system's roots plus the configured `ca_file`s, through the
/// configured or environment's proxy; no redirects followed, bodies passed through undecoded.
/// A provider with its own `ca_file` gets its own client, trusting that file too.
///
/// Each thread that sends has pools of its own (`POOLS`): a connection is opened, used and
/// kept by one worker thread (`server::workers`), so its task and the requests on it never wake
/// another core.
#[derive(Clone)]
pub struct HttpUpstream {
    connectors: std::sync::Arc<Connectors>,
}

/// The connectors an [`HttpUpstream`] was built with; each thread builds pools of its own over
/// them the first time it sends.
struct Connectors {
    shared: Recipe,
    own: std::collections::HashMap<String, Recipe>,
}

/// What a connector is made of. Each thread makes its own from it: the pooled client clones its
/// connector for every request (its TLS config, resolver and TCP settings are counted
/// references), and counts shared by every worker would be written from every core.
#[derive(Clone)]
struct Recipe {
    tls: rustls::ClientConfig,
    connect_timeout: Duration,
    proxy: Option<std::sync::Arc<hyper_util::client::proxy::matcher::Matcher>>,
}

impl Recipe {
    fn connector(&self) -> Connector {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(self.connect_timeout));
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(30)));
        hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(self.tls.clone())
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(egress::Egress::new(http, self.proxy.clone()))
    }
}

impl Connectors {
    fn pools(self: &std::sync::Arc<Self>) -> ThreadPools {
        let pool = |recipe: &Recipe| {
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(90))
                .pool_max_idle_per_host(1024)
                .build(recipe.connector())
        };
        ThreadPools {
            of: std::sync::Arc::downgrade(self),
            shared: pool(&self.shared),
            own: self
                .own
                .iter()
                .map(|(name, c)| (name.clone(), pool(c)))
                .collect(),
            hosts: Vec::new(),
        }
    }
}

/// One thread's pools of one [`HttpUpstream`].
struct ThreadPools {
    /// Whose pools these are (a dropped upstream's pools are let go; the weak reference also
    /// keeps its address from being reused while these pools name it).
    of: std::sync::Weak<Connectors>,
    shared: Pooled,
    own: std::collections::HashMap<String, Pooled>,
    /// The `host` values this thread sent lately, by authority (made once, not per request).
    hosts: Vec<(
        Option<http::uri::Scheme>,
        Box<str>,
        Option<http::HeaderValue>,
    )>,
}

impl ThreadPools {
    /// [`host_value`] of `uri`, remembered for the few authorities a gateway sends to.
    fn host(&mut self, uri: &http::Uri) -> Option<http::HeaderValue> {
        const KEPT: usize = 16;
        let authority = uri.authority()?.as_str();
        let scheme = uri.scheme();
        let kept = self
            .hosts
            .iter()
            .find(|(s, a, _)| **a == *authority && s.as_ref() == scheme);
        if let Some((_, _, value)) = kept {
            return value.clone();
        }
        let value = host_value(uri);
        if self.hosts.len() == KEPT {
            self.hosts.remove(0);
        }
        self.hosts
            .push((scheme.cloned(), authority.into(), value.clone()));
        value
    }
}

thread_local! {
    /// This thread's connection pools, per upstream.
    static POOLS: std::cell::RefCell<Vec<ThreadPools>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl std::fmt::Debug for HttpUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpUpstream").finish_non_exhaustive()
    }
}

impl HttpUpstream {
    /// Builds the pooled clients for `settings` (egress settings are read at start).
    pub fn new(settings: &crate::config::Settings) -> Result<Self, rustls::Error> {
        let connect_timeout = settings.server.connect_timeout;
        let proxy = egress::matcher(&settings.egress).map(std::sync::Arc::new);
        let global: Vec<&std::path::Path> =
            settings.egress.ca_file.as_deref().into_iter().collect();
        let recipe = |extra: &[&std::path::Path]| -> Result<Recipe, rustls::Error> {
            let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(egress::roots(extra))
            .with_no_client_auth();
            Ok(Recipe {
                tls,
                connect_timeout,
                proxy: proxy.clone(),
            })
        };
        let shared = recipe(&global)?;
        let mut own = std::collections::HashMap::new();
        for p in &settings.providers {
            if let Some(file) = &p.ca_file {
                let mut extra = global.clone();
                extra.push(file);
                own.insert(p.name.clone(), recipe(&extra)?);
            }
        }
        Ok(HttpUpstream {
            connectors: std::sync::Arc::new(Connectors { shared, own }),
        })
    }
}

fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    // The error chain says why; none of it contains header values (keys live only there).
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// The `host` header for `uri`: its authority as written, when that is `host[:port]` with a port
/// that is not the scheme's default (hyper-util's rule); `None` leaves it to hyper-util.
fn host_value(uri: &http::Uri) -> Option<http::HeaderValue> {
    let authority = uri.authority()?;
    let default_port = match (uri.scheme_str(), authority.port_u16()) {
        (_, None) => false,
        (Some("http"), Some(80)) | (Some("https"), Some(443)) => true,
        _ => false,
    };
    if default_port || authority.as_str().contains('@') {
        return None;
    }
    http::HeaderValue::from_str(authority.as_str()).ok()
}

impl Upstream for HttpUpstream {
    fn send(
        &self,
        req: UpstreamRequest,
    ) -> BoxFuture<'static, Result<UpstreamResponse, UpstreamError>> {
        // Owned: the URL's bytes become the URI's without a copy.
        let uri = match http::Uri::try_from(req.url) {
            Ok(uri) => uri,
            Err(e) => {
                return Box::pin(std::future::ready(Err(UpstreamError::Connect(format!(
                    "invalid upstream URL: {e}"
                )))))
            }
        };
        let mut request = http::Request::new(Full::new(req.body));
        *request.method_mut() = req.method;
        *request.uri_mut() = uri;
        *request.headers_mut() = req.headers;
        let sent = POOLS.with(|pools| {
            let mut pools = pools.borrow_mut();
            let at = match pools
                .iter()
                .position(|p| std::ptr::eq(p.of.as_ptr(), &*self.connectors))
            {
                Some(at) => at,
                None => {
                    pools.retain(|p| p.of.strong_count() > 0);
                    pools.push(self.connectors.pools());
                    pools.len() - 1
                }
            };
            let mine = &mut pools[at];
            if let Some(host) = mine.host(request.uri()) {
                // What the pooled client would set, without its formatting (its own path stays
                // for the rare authority this leaves to it).
                request
                    .headers_mut()
                    .entry(http::header::HOST)
                    .or_insert(host);
            }
            req.egress
                .as_deref()
                .and_then(|name| mine.own.get(name))
                .unwrap_or(&mine.shared)
                .request(request)
        });
        Box::pin(async move {
            let resp = sent.await.map_err(|e| {
                if let Some(why) = egress::setup_failure(&e) {
                    UpstreamError::Setup(why)
                } else if e.is_connect() {
                    UpstreamError::Connect(describe(&e))
                } else {
                    UpstreamError::Transport(describe(&e))
                }
            })?;
            let (parts, body) = resp.into_parts();
            let body: BodyStream = Box::pin(DataFrames(body));
            Ok(UpstreamResponse {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        })
    }
}

/// An upstream answer's body as the stream of its data (trailers skipped, an error described):
/// one layer, where the body is polled a few times for every chunk.
struct DataFrames(hyper::body::Incoming);

impl Stream for DataFrames {
    type Item = Result<Bytes, UpstreamError>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use http_body::Body;
        use std::task::Poll;
        loop {
            return match Pin::new(&mut self.0).poll_frame(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Ready(Some(Err(e))) => {
                    Poll::Ready(Some(Err(UpstreamError::Transport(describe(&e)))))
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => Poll::Ready(Some(Ok(data))),
                    Err(_trailers) => continue,
                },
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{host_value, HttpUpstream, Upstream, UpstreamRequest};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// An HTTP/1.1 server answering `ok` on kept-alive connections; counts the connections.
    async fn counting_server() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                        ))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    fn request(addr: std::net::SocketAddr) -> UpstreamRequest {
        UpstreamRequest {
            method: http::Method::GET,
            url: format!("http://{addr}/v1/models"),
            headers: http::HeaderMap::new(),
            body: bytes::Bytes::new(),
            egress: None,
        }
    }

    /// Sends `n` requests one after the other and reads their answers.
    async fn send(upstream: &HttpUpstream, addr: std::net::SocketAddr, n: usize) {
        for _ in 0..n {
            let resp = upstream.send(request(addr)).await.unwrap();
            assert_eq!(resp.status, 200);
            let mut body = resp.body;
            while futures_util::StreamExt::next(&mut body).await.is_some() {}
        }
    }

    /// The upstream of a config with one provider.
    fn one_provider() -> HttpUpstream {
        let settings = crate::config::Config::from_toml(
            "[[providers]]\nname = \"p\"\nbase_url = \"http://p/v1\"\nkeys = [{ id = \"a\", secret = \"sk\" }]\n",
        )
        .unwrap()
        .validate_with(&|_| None)
        .unwrap();
        HttpUpstream::new(&settings).unwrap()
    }

    fn single_threaded() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// A connection is opened, used and kept by one thread: requests from one thread share its
    /// connection, and another thread opens its own even while the first one's is idle in its
    /// pool (a shared pool would hand it over: one connection in all).
    #[tokio::test]
    async fn each_thread_has_pools_of_its_own() {
        let (addr, accepted) = counting_server().await;
        let upstream = one_provider();
        let (a_sent, a_done) = std::sync::mpsc::channel::<()>();
        let (b_sent, b_done) = tokio::sync::oneshot::channel::<()>();
        let a = std::thread::spawn({
            let upstream = upstream.clone();
            move || {
                single_threaded().block_on(async {
                    send(&upstream, addr, 2).await;
                    a_sent.send(()).unwrap();
                    // Still running (its connection idle in its pool) while the other sends.
                    b_done.await.unwrap();
                })
            }
        });
        let b = std::thread::spawn(move || {
            a_done.recv().unwrap();
            single_threaded().block_on(send(&upstream, addr, 2));
            b_sent.send(()).unwrap();
        });
        tokio::task::spawn_blocking(move || {
            b.join().unwrap();
            a.join().unwrap();
        })
        .await
        .unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn host_is_the_authority_without_a_default_port_or_user_info() {
        let host = |url: &str| {
            let uri: http::Uri = url.parse().unwrap_or_else(|e| panic!("{url}: {e}"));
            host_value(&uri).map(|v| v.to_str().unwrap_or_default().to_owned())
        };
        assert_eq!(
            host("http://127.0.0.1:18081/v1/x").as_deref(),
            Some("127.0.0.1:18081")
        );
        assert_eq!(
            host("https://api.openai.com/v1").as_deref(),
            Some("api.openai.com")
        );
        assert_eq!(host("http://[::1]:8080/v1").as_deref(), Some("[::1]:8080"));
        assert_eq!(
            host("https://api.openai.com:8443/").as_deref(),
            Some("api.openai.com:8443")
        );
        // hyper-util drops a default port and never sends user info: left to it.
        assert_eq!(host("https://api.openai.com:443/v1"), None);
        assert_eq!(host("http://example.com:80/v1"), None);
        assert_eq!(host("http://user@example.com:8080/"), None);
    }

    /// A thread's pools remember the `host` of each authority they sent to, per scheme (a port
    /// is one scheme's default and not the other's).
    #[test]
    fn a_threads_pools_remember_each_host_by_scheme_and_authority() {
        let upstream = one_provider();
        let mut pools = upstream.connectors.pools();
        let mut host = |url: &str| {
            let uri: http::Uri = url.parse().unwrap();
            let value = pools.host(&uri);
            let value = value.map(|v| v.to_str().unwrap_or_default().to_owned());
            (value, pools.hosts.len())
        };
        for _ in 0..2 {
            assert_eq!(host("http://a:443/v1").0.as_deref(), Some("a:443"));
            assert_eq!(host("https://a:443/v1").0, None);
            assert_eq!(host("http://b:8080/v1/x?y").0.as_deref(), Some("b:8080"));
            assert_eq!(host("https://b:8080/"), (Some("b:8080".into()), 4));
        }
        let kept = (0..40).map(|port| host(&format!("http://c:{}/", 1000 + port)).1);
        assert_eq!(kept.max(), Some(16), "only the latest few are kept");
    }
}
