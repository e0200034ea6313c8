//! Reaching upstreams as companies run them: a TLS upstream whose certificate authority the
//! test makes itself is trusted through a provider's `ca_file`, `egress.ca_file` or
//! `SSL_CERT_FILE`, and not otherwise (a configuration error: the provider is skipped at once,
//! its key untouched); `HTTPS_PROXY`/`NO_PROXY` and `[egress] proxy` send connections through
//! a local `CONNECT` proxy the test runs, and a proxy that refuses the credentials is a
//! configuration error too.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use mock_upstream::MockHandle;
use serde_json::json;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;
use tollgate_e2e::{metric, mock, Gateway};

/// A certificate authority of the test's own, as a PEM file, and a TLS server config for
/// `127.0.0.1` and `localhost` signed by it.
struct Pki {
    ca_file: PathBuf,
    server: Arc<rustls::ServerConfig>,
}

fn pki(name: &str) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "tollgate egress test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let dir = std::env::temp_dir().join(format!("tollgate-egress-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    Pki {
        ca_file,
        server: Arc::new(server),
    }
}

/// A TLS front for `target` (the mock): what the gateway sees as an HTTPS upstream.
async fn tls_front(target: SocketAddr, config: Arc<rustls::ServerConfig>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut up) = TcpStream::connect(target).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    addr
}

/// A `CONNECT` proxy; `credentials` (`user:password`) when it requires them. It notes each
/// tunnel's destination.
struct Proxy {
    addr: SocketAddr,
    tunnels: Arc<Mutex<Vec<String>>>,
}

async fn proxy(credentials: Option<&'static str>) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tunnels = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&tunnels);
    let expected = credentials.map(|c| format!("Basic {}", base64(c.as_bytes())));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (seen, expected) = (Arc::clone(&seen), expected.clone());
            tokio::spawn(async move {
                let mut reader = BufReader::new(tcp);
                let mut first = String::new();
                reader.read_line(&mut first).await.unwrap_or_default();
                let mut authorized = expected.is_none();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).await.unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    let (name, value) = line.split_once(':').unwrap_or_default();
                    if let (true, Some(want)) =
                        (name.eq_ignore_ascii_case("proxy-authorization"), &expected)
                    {
                        authorized |= value.trim() == want.as_str();
                    }
                }
                let mut tcp = reader.into_inner();
                let Some(target) = first
                    .strip_prefix("CONNECT ")
                    .and_then(|r| r.split(' ').next())
                else {
                    return;
                };
                if !authorized {
                    let _ = tcp
                        .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nproxy-authenticate: Basic\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    return;
                }
                seen.lock().unwrap().push(target.to_owned());
                let Ok(mut up) = TcpStream::connect(target).await else {
                    return;
                };
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                    .await;
                let _ = tokio::io::copy_bidirectional(&mut tcp, &mut up).await;
            });
        }
    });
    Proxy { addr, tunnels }
}

fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A chain of two targets: `secure` (the TLS front, with `extra` in its provider section), then
/// `plain` (the mock over HTTP).
fn chain(secure: SocketAddr, plain: &MockHandle, extra: &str, egress: &str) -> String {
    format!(
        "{egress}[[providers]]\nname = \"secure\"\nkind = \"openai\"\nbase_url = \"https://{secure}/v1\"\nkeys = [{{ id = \"s1\", secret = \"sk-secure\" }}]\n{extra}\n\
         [[providers]]\nname = \"plain\"\nkind = \"openai\"\nbase_url = \"{}\"\nkeys = [{{ id = \"p1\", secret = \"sk-plain\" }}]\n\
         [[models]]\nname = \"m\"\ntargets = [{{ provider = \"secure\" }}, {{ provider = \"plain\" }}]\n",
        plain.base_url()
    )
}

async fn ask(gw: &Gateway) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let provider = r
        .headers()
        .get("x-tollgate-provider")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (r.status().as_u16(), provider)
}

#[tokio::test]
async fn a_private_certificate_authority_is_trusted_only_where_configured() {
    let m = mock().await;
    let pki = pki("ca");
    let secure = tls_front(m.addr(), Arc::clone(&pki.server)).await;
    let ca = pki.ca_file.display().to_string();

    // Not trusted: the provider is skipped at once (no retry on its key), the next serves.
    let gw = Gateway::start(&chain(secure, &m, "", ""), &[]).await;
    assert_eq!(ask(&gw).await, (200, "plain".to_owned()));
    assert_eq!(m.requests_for_key("sk-secure"), 0);
    let text = gw.metrics().await;
    assert_eq!(
        metric(
            &text,
            r#"tollgate_upstream_attempts_total{key="s1",outcome_kind="misconfigured",provider="secure"}"#
        ),
        1.0,
        "one attempt, classified as a configuration problem"
    );
    assert_eq!(
        metric(
            &text,
            r#"tollgate_key_state{key="s1",provider="secure",state="healthy"}"#
        ),
        1.0,
        "the key is not blamed"
    );
    assert!(gw.logged("not trusted").await, "{}", gw.logs());

    // Trusted through the provider's ca_file, egress.ca_file, or SSL_CERT_FILE.
    let own = format!("ca_file = \"{ca}\"");
    let global = format!("[egress]\nca_file = \"{ca}\"\n");
    for (extra, egress, env) in [
        (own.as_str(), "", vec![]),
        ("", global.as_str(), vec![]),
        ("", "", vec![("SSL_CERT_FILE", ca.as_str())]),
    ] {
        let gw = Gateway::start(&chain(secure, &m, extra, egress), &env).await;
        assert_eq!(
            ask(&gw).await,
            (200, "secure".to_owned()),
            "{extra}{egress}{env:?}"
        );
    }
    assert_eq!(m.requests_for_key("sk-secure"), 3);
}

#[tokio::test]
async fn connections_go_through_the_proxy_the_environment_or_the_config_names() {
    let m = mock().await;
    let pki = pki("proxy");
    let secure = tls_front(m.addr(), Arc::clone(&pki.server)).await;
    let own = format!("ca_file = \"{}\"", pki.ca_file.display());
    let open = proxy(None).await;
    let via = format!("http://{}", open.addr);

    let gw = Gateway::start(
        &chain(secure, &m, &own, ""),
        &[("HTTPS_PROXY", via.as_str())],
    )
    .await;
    assert_eq!(ask(&gw).await, (200, "secure".to_owned()));
    assert_eq!(
        *open.tunnels.lock().unwrap(),
        [secure.to_string()],
        "TLS inside a CONNECT tunnel"
    );
    // NO_PROXY, and `egress.proxy = "none"`, go direct.
    for (egress, env) in [
        (
            "",
            vec![("HTTPS_PROXY", via.as_str()), ("NO_PROXY", "127.0.0.1")],
        ),
        (
            "[egress]\nproxy = \"none\"\n",
            vec![("HTTPS_PROXY", via.as_str())],
        ),
    ] {
        let gw = Gateway::start(&chain(secure, &m, &own, egress), &env).await;
        assert_eq!(ask(&gw).await, (200, "secure".to_owned()));
    }
    assert_eq!(
        open.tunnels.lock().unwrap().len(),
        1,
        "no tunnel for the direct ones"
    );

    // A proxy that wants credentials: the wrong ones are a configuration error (the next
    // target serves), the right ones pass.
    let guarded = proxy(Some("team:s3cret")).await;
    // (The plain provider, named `localhost`, stays outside the proxy: `egress.no_proxy`.)
    let wrong = format!(
        "[egress]\nproxy = \"http://team:nope@{}\"\nno_proxy = \"localhost\"\n",
        guarded.addr
    );
    let local = |toml: String| toml.replace("http://127.0.0.1:", "http://localhost:");
    let gw = Gateway::start(&local(chain(secure, &m, &own, &wrong)), &[]).await;
    assert_eq!(ask(&gw).await, (200, "plain".to_owned()));
    assert!(gw.logged("407").await, "{}", gw.logs());
    assert!(
        !gw.logs().contains("nope"),
        "the proxy's password never printed"
    );
    let right = format!(
        "[egress]\nproxy = \"http://team:s3cret@{}\"\nno_proxy = \"localhost\"\n",
        guarded.addr
    );
    let gw = Gateway::start(&local(chain(secure, &m, &own, &right)), &[]).await;
    assert_eq!(ask(&gw).await, (200, "secure".to_owned()));
    assert_eq!(guarded.tunnels.lock().unwrap().len(), 1);
}
