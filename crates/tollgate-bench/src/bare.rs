//! The "bare" proxy: the smallest HTTP/1.1 pass-through hyper makes possible, the baseline that
//! Tollgate's overhead is judged against.
//!
//! The benchmark re-executes itself as `tollgate-bench --serve-bare-proxy <UPSTREAM_ADDR>`, so the
//! proxy is a process of its own whose CPU and memory are read from `/proc` like Tollgate's. It
//! listens on `127.0.0.1:0` (printing `bare-proxy listening on ADDR` to stderr) and forwards every
//! request to `http://UPSTREAM_ADDR` with the same method, path, query, headers (hop-by-hop ones
//! dropped, `host` rewritten) and streamed body, through one pooled hyper-util client; the answer
//! is streamed back with its status, headers (hop-by-hop ones dropped) and body untouched. No
//! parsing, no policy; an upstream failure is a `502`.

use std::convert::Infallible;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::{Authority, Scheme};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::procs::BoxError;

/// The hidden flag that turns the benchmark binary into the bare proxy.
pub(crate) const FLAG: &str = "--serve-bare-proxy";

/// The start of the line the proxy prints to stderr once it accepts connections.
pub(crate) const LISTENING: &str = "bare-proxy listening on ";

/// Headers that belong to one connection and never cross the proxy (either way).
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The client to the upstream: bodies are hyper's `Incoming`, passed through as they arrive.
type Upstream = Client<HttpConnector, Incoming>;

/// What the proxy answers with: the upstream's streamed body, or nothing (the `502`).
type Answer = Response<Either<Incoming, Empty<Bytes>>>;

/// Where requests go, built once.
struct Target {
    /// `host:port` of the upstream.
    authority: Authority,
    /// The same as a `host` header value.
    host: HeaderValue,
}

/// Entry point of `tollgate-bench --serve-bare-proxy <UPSTREAM_ADDR>`: runs until killed.
pub(crate) fn main(upstream: Option<&str>) -> ExitCode {
    let Some(upstream) = upstream else {
        eprintln!("usage: tollgate-bench {FLAG} <UPSTREAM_ADDR>");
        return ExitCode::from(2);
    };
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(BoxError::from)
        .and_then(|rt| rt.block_on(serve(upstream)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bare-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Binds `127.0.0.1:0`, announces the address and serves connections forever.
async fn serve(upstream: &str) -> Result<(), BoxError> {
    let addr: std::net::SocketAddr = upstream
        .parse()
        .map_err(|e| format!("`{upstream}` is not an upstream address (ip:port): {e}"))?;
    let authority: Authority = addr.to_string().parse()?;
    let host = HeaderValue::from_str(authority.as_str())?;
    let target: &'static Target = Box::leak(Box::new(Target { authority, host }));
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Upstream = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    eprintln!("{LISTENING}{}", listener.local_addr()?);
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                eprintln!("bare-proxy: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let client = client.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| forward(client.clone(), target, req));
            // A client that goes away mid-request is not the proxy's problem.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

/// Drops the hop-by-hop headers from `headers`.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// `http://{authority}{path and query of uri}`.
fn upstream_uri(authority: &Authority, uri: &Uri) -> Result<Uri, hyper::http::Error> {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(authority.clone())
        .path_and_query(path)
        .build()
}

/// Forwards one request and streams the answer back; any failure on the way is a `502`.
async fn forward(
    client: Upstream,
    target: &Target,
    req: Request<Incoming>,
) -> Result<Answer, Infallible> {
    let (mut parts, body) = req.into_parts();
    let uri = match upstream_uri(&target.authority, &parts.uri) {
        Ok(uri) => uri,
        Err(_) => return Ok(bad_gateway()),
    };
    parts.uri = uri;
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.insert(header::HOST, target.host.clone());
    match client.request(Request::from_parts(parts, body)).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Ok(Response::from_parts(parts, Either::Left(body)))
        }
        Err(_) => Ok(bad_gateway()),
    }
}

/// An empty `502 Bad Gateway`.
fn bad_gateway() -> Answer {
    let mut resp = Response::new(Either::Right(Empty::new()));
    *resp.status_mut() = StatusCode::BAD_GATEWAY;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_uri_keeps_path_and_query() -> Result<(), BoxError> {
        let authority: Authority = "127.0.0.1:9".parse()?;
        let uri: Uri = "/v1/chat/completions?a=1&b=2".parse()?;
        assert_eq!(
            upstream_uri(&authority, &uri)?.to_string(),
            "http://127.0.0.1:9/v1/chat/completions?a=1&b=2"
        );
        let absolute: Uri = "http://elsewhere/x".parse()?;
        assert_eq!(
            upstream_uri(&authority, &absolute)?.to_string(),
            "http://127.0.0.1:9/x"
        );
        Ok(())
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() -> Result<(), BoxError> {
        let mut headers = HeaderMap::new();
        for name in [
            "connection",
            "keep-alive",
            "te",
            "trailer",
            "transfer-encoding",
        ] {
            headers.insert(HeaderName::from_bytes(name.as_bytes())?, "x".parse()?);
        }
        headers.insert(header::UPGRADE, "h2c".parse()?);
        headers.insert(header::AUTHORIZATION, "Bearer k".parse()?);
        headers.insert("x-mock-chunks", "20".parse()?);
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["authorization", "x-mock-chunks"]);
        Ok(())
    }
}
