//! How upstream connections are made: the certificate authorities trusted (Mozilla's, the
//! system's, honoring `SSL_CERT_FILE`/`SSL_CERT_DIR`, and the configured `ca_file`s) and the
//! HTTP proxy taken (`HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY`/`NO_PROXY`, or `[egress]`), through
//! which every upstream connection is a `CONNECT` tunnel.

use crate::config::{EgressSettings, Proxy};
use futures_util::future::BoxFuture;
use http::Uri;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::net::TcpStream;
use tower::{Service, ServiceExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every root the gateway trusts for an upstream: Mozilla's, the system's, and `extra` files.
pub(crate) fn roots(extra: &[&Path]) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // The system's store (the image's CA bundle; SSL_CERT_FILE and SSL_CERT_DIR when set).
    let native = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(native.certs);
    if !native.errors.is_empty() {
        tracing::warn!(
            loaded = added,
            errors = native.errors.len(),
            "some of the system's certificate authorities could not be read"
        );
    }
    for file in extra {
        if let Ok(certs) = CertificateDer::pem_file_iter(file) {
            roots.add_parsable_certificates(certs.flatten());
        }
    }
    roots
}

/// The proxy rules, or `None` when every connection goes direct.
pub(crate) fn matcher(egress: &EgressSettings) -> Option<Matcher> {
    let env = |names: [&str; 2]| names.iter().find_map(|n| std::env::var(n).ok());
    let no_proxy = || {
        egress
            .no_proxy
            .clone()
            .or_else(|| env(["NO_PROXY", "no_proxy"]))
            .unwrap_or_default()
    };
    match &egress.proxy {
        Proxy::Off => None,
        Proxy::Url(url) => Some(Matcher::builder().all(url.expose()).no(no_proxy()).build()),
        Proxy::FromEnv if egress.no_proxy.is_none() => {
            let any = [
                "HTTPS_PROXY",
                "https_proxy",
                "HTTP_PROXY",
                "http_proxy",
                "ALL_PROXY",
                "all_proxy",
            ]
            .iter()
            .any(|n| std::env::var_os(n).is_some());
            any.then(Matcher::from_env)
        }
        Proxy::FromEnv => {
            let all = env(["ALL_PROXY", "all_proxy"]).unwrap_or_default();
            let http = env(["HTTP_PROXY", "http_proxy"]).unwrap_or_else(|| all.clone());
            let https = env(["HTTPS_PROXY", "https_proxy"]).unwrap_or_else(|| all.clone());
            Some(
                Matcher::builder()
                    .http(http)
                    .https(https)
                    .no(no_proxy())
                    .build(),
            )
        }
    }
}

/// The TCP connector under TLS: direct, or a `CONNECT` tunnel through the proxy the rules name
/// for the destination (plain-HTTP upstreams too, so the proxy never sees a request or a key).
#[derive(Clone)]
pub(crate) struct Egress {
    direct: HttpConnector,
    proxy: Option<Arc<Matcher>>,
}

impl Egress {
    pub(crate) fn new(direct: HttpConnector, proxy: Option<Arc<Matcher>>) -> Self {
        Egress { direct, proxy }
    }
}

impl Service<Uri> for Egress {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<TokioIo<TcpStream>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.direct.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let Some(via) = self.proxy.as_ref().and_then(|m| m.intercept(&dst)) else {
            let direct = self.direct.call(dst);
            return Box::pin(async move { direct.await.map_err(Into::into) });
        };
        let mut tunnel = Tunnel::new(via.uri().clone(), self.direct.clone());
        if let Some(auth) = via.basic_auth() {
            tunnel = tunnel.with_auth(auth.clone());
        }
        // The tunnel assumes port 443 when the destination names none.
        let dst = with_port(dst);
        Box::pin(async move {
            tunnel.oneshot(dst).await.map_err(|e| {
                // The tunnel's error type is not exported: its message says which it is.
                let auth_required = e.to_string().ends_with("proxy authorization required");
                Box::new(Tunneled {
                    auth_required,
                    source: Box::new(e),
                }) as BoxError
            })
        })
    }
}

/// `dst` with its scheme's default port written out.
fn with_port(dst: Uri) -> Uri {
    if dst.port().is_some() {
        return dst;
    }
    let port = if dst.scheme_str() == Some("http") {
        80
    } else {
        443
    };
    let Some(host) = dst.host() else { return dst };
    let authority = format!("{host}:{port}");
    let mut parts = dst.clone().into_parts();
    match authority.parse() {
        Ok(a) => {
            parts.authority = Some(a);
            Uri::from_parts(parts).unwrap_or(dst)
        }
        Err(_) => dst,
    }
}

/// A tunnel's failure.
#[derive(Debug)]
pub(crate) struct Tunneled {
    auth_required: bool,
    source: BoxError,
}

impl std::fmt::Display for Tunneled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.auth_required {
            f.write_str("the proxy wants credentials it was not given or refused them (407)")
        } else {
            write!(f, "through the proxy: {}", self.source)
        }
    }
}

impl std::error::Error for Tunneled {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// Why a connection cannot work as configured, when that is why it failed: an upstream
/// certificate the gateway does not trust, or a proxy that wants other credentials.
pub(crate) fn setup_failure(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(why) = setup_failure_of(e) {
            return Some(why);
        }
        cur = e.source();
    }
    None
}

fn setup_failure_of(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    if let Some(t) = e.downcast_ref::<Tunneled>() {
        return t.auth_required.then(|| t.to_string());
    }
    // The TLS error arrives as an io::Error inside an io::Error (whose `source` skips it).
    let mut layer: &(dyn std::error::Error + 'static) = e;
    while let Some(inner) = layer
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        layer = inner;
    }
    let tls = layer.downcast_ref::<rustls::Error>();
    match tls {
        Some(rustls::Error::InvalidCertificate(why)) => Some(format!(
            "the upstream's TLS certificate is not trusted ({why:?}); add its certificate authority with ca_file"
        )),
        _ => None,
    }
}
