//! The accept loop of both listeners: each connection served by hyper with limits on what a
//! client may send before a request exists, and graceful shutdown.
//!
//! `axum::serve` is this loop without settings: its hyper builder has no timer, so hyper's
//! header read timeout never runs, and a client that opens a connection and trickles (or never
//! sends) its headers holds the connection forever. Here, per connection:
//!
//! - its first bytes must arrive within `header_timeout`: they tell HTTP/1 from the HTTP/2
//!   preface (hyper-util's auto builder waits for them with no deadline; this loop peeks at
//!   them itself and hands the connection to hyper's HTTP/1 or HTTP/2 builder);
//! - each HTTP/1 header block must arrive whole within `header_timeout` of hyper starting to
//!   read it: the first one, and each next one on a kept-alive connection, so a connection idle
//!   between requests is closed after it too (closed without an answer);
//! - an HTTP/1 header block is at most [`MAX_HEADER_BYTES`] (431; hyper's default was its
//!   ~400 KB read buffer); hyper's limits of 100 header lines (431) and of 16 KiB for an HTTP/2
//!   header list stay.
//!
//! The rest is hyper's own parsing: control characters in a header, two different
//! `Content-Length`s, a `Transfer-Encoding` that does not end in `chunked` are 400; a request
//! with both `Content-Length` and `Transfer-Encoding` is read by the latter and its connection
//! closed after the answer. Nothing here runs per request: the service a connection gets is the
//! one `axum::serve` gave it.

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::serve::Listener;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tower_http::add_extension::AddExtension;

/// The largest header block a client may send (request line and headers; 431 beyond it).
pub(crate) const MAX_HEADER_BYTES: usize = 64 * 1024;

/// The HTTP/2 connection preface, whose first bytes an HTTP/1 request never starts with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A listener's service, made for each connection from its peer.
pub(crate) trait ForPeer {
    /// One connection's service.
    type Service;
    /// The service of a connection from `peer`.
    fn for_peer(&self, peer: SocketAddr) -> Self::Service;
}

/// The main listener's app: it gives the peer to open mode's check only when that check needs
/// it (`App::for_peer`).
impl ForPeer for super::App {
    // Called by reference (`hyper::service::Service`): a request clones nothing of the app.
    type Service = super::App;
    fn for_peer(&self, peer: SocketAddr) -> super::App {
        super::App::for_peer(self, peer)
    }
}

/// A router (the admin listener's): handlers see the peer as `ConnectInfo<SocketAddr>`, as
/// axum's `into_make_service_with_connect_info` gives it.
impl ForPeer for axum::Router {
    type Service = TowerToHyperService<AddExtension<axum::Router, ConnectInfo<SocketAddr>>>;
    fn for_peer(&self, peer: SocketAddr) -> Self::Service {
        TowerToHyperService::new(AddExtension::new(self.clone(), ConnectInfo(peer)))
    }
}

/// Serves `app` on every connection `listener` accepts until `stop` completes, then stops
/// accepting and waits for the connections to finish their requests (the caller bounds that
/// wait). Each connection gets `app.for_peer(peer)`. With `workers`, each connection runs on
/// one of their threads (`server::workers`); else on the caller's runtime.
pub(crate) async fn serve<L, A>(
    mut listener: L,
    app: A,
    header_timeout: Duration,
    stop: impl Future<Output = ()>,
    workers: Option<Arc<super::workers::Workers>>,
) where
    L: Listener<Io = TcpStream, Addr = SocketAddr>,
    A: ForPeer,
    A::Service: hyper::service::Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    <A::Service as hyper::service::Service<Request<Incoming>>>::Future: Send + 'static,
{
    let builders = Arc::new(Builders::new(header_timeout));
    let graceful = super::graceful::Graceful::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => break,
        };
        let service = app.for_peer(peer);
        let builders = Arc::clone(&builders);
        let watcher = graceful.watcher();
        let connection = move |tcp: TcpStream| async move {
            let ended = match first_bytes(&tcp, header_timeout).await {
                Some(Version::Http1) => {
                    let conn = builders.http1.serve_connection(TokioIo::new(tcp), service);
                    watcher.watch(conn).await
                }
                Some(Version::Http2) => {
                    let conn = builders.http2.serve_connection(TokioIo::new(tcp), service);
                    watcher.watch(conn).await
                }
                None => {
                    tracing::debug!(%peer, "connection closed: no request started in time");
                    return;
                }
            };
            if let Err(error) = ended {
                tracing::debug!(%peer, error = %error, "connection ended with an error");
            }
        };
        match &workers {
            // The socket moves to the worker's own I/O driver: its readiness wakes that thread.
            Some(workers) => match tcp.into_std() {
                Ok(socket) => workers.spawn(async move {
                    match TcpStream::from_std(socket) {
                        Ok(tcp) => connection(tcp).await,
                        Err(error) => tracing::debug!(%peer, %error, "connection not served"),
                    }
                }),
                Err(error) => tracing::debug!(%peer, %error, "connection not served"),
            },
            None => drop(tokio::spawn(connection(tcp))),
        }
    }
    drop(listener);
    graceful.shutdown().await;
}

/// hyper's connection settings, one builder per protocol, shared by a listener's connections.
struct Builders {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

impl Builders {
    fn new(header_timeout: Duration) -> Builders {
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .max_header_size(MAX_HEADER_BYTES);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        // As axum::serve does (the extended CONNECT of HTTP/2 WebSockets). hyper's own bound
        // on a header list (16 KiB) is tighter than MAX_HEADER_BYTES and stays.
        h2.enable_connect_protocol();
        Builders {
            http1: h1,
            http2: h2,
        }
    }
}

/// The protocol a connection opened with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    Http1,
    Http2,
}

/// Waits, at most `within`, until the connection holds enough bytes to tell HTTP/1 from the
/// HTTP/2 preface (peeked, not read: hyper reads them), as hyper-util's auto builder does with
/// no deadline. `None` when they did not come in time or the client closed first.
async fn first_bytes(tcp: &TcpStream, within: Duration) -> Option<Version> {
    let sniff = async {
        let mut buf = [0u8; H2_PREFACE.len()];
        let mut pause = Duration::from_millis(5);
        loop {
            let n = tcp.peek(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            if buf[..n] != H2_PREFACE[..n] {
                return Some(Version::Http1);
            }
            if n == buf.len() {
                return Some(Version::Http2);
            }
            // A part of the preface: the rest is on its way, or never comes. Peeked bytes keep
            // the socket readable, so wait before looking again, longer each time (a client
            // that stalls here costs a few peeks a second, not a busy loop).
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    };
    tokio::time::timeout(within, sniff).await.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn first_bytes_tells_http1_from_http2_and_from_silence_or_a_stalled_preface() {
        let within = Duration::from_millis(300);
        for (sent, version) in [
            (&b"GET / HTTP/1.1\r\n"[..], Some(Version::Http1)),
            (&b"P"[..], None),
            (&b"PRI * HTTP/2.0\r\n"[..], None),
            (H2_PREFACE, Some(Version::Http2)),
            (&b"PRX"[..], Some(Version::Http1)),
            (&b""[..], None),
        ] {
            let (mut client, server) = pair().await;
            client.write_all(sent).await.unwrap();
            let started = tokio::time::Instant::now();
            assert_eq!(
                first_bytes(&server, within).await,
                version,
                "{:?}",
                String::from_utf8_lossy(sent)
            );
            if version.is_none() {
                assert!(started.elapsed() >= within);
            }
            // Peeked, not read: hyper still gets every byte.
            if !sent.is_empty() {
                let mut buf = [0u8; 64];
                let n = server.peek(&mut buf).await.unwrap();
                assert_eq!(&buf[..n], sent);
            }
        }
        let (client, server) = pair().await;
        drop(client);
        assert_eq!(
            first_bytes(&server, within).await,
            None,
            "a closed connection"
        );
    }
}
