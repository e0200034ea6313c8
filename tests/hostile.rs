//! Hostile input at the HTTP edge, sent over raw TCP (HTTP clients refuse to write most of it):
//! header blocks too large, header values with control characters, framing that could smuggle a
//! second request past the gateway, and clients that open connections and never finish (or
//! never start) a request. Each refusal is checked against the mock upstream (nothing reached
//! it) and followed by a request that is served.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step is a failed test"
)]

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tollgate_e2e::{mock, provider, Gateway};

/// The longest any single exchange may take before the test fails.
const LIMIT: Duration = Duration::from_secs(10);

/// A gateway in front of `m`, with `server.header_timeout` when given.
async fn gateway(m: &mock_upstream::MockHandle, header_timeout: Option<&str>) -> Gateway {
    let server = header_timeout.map_or(String::new(), |t| {
        format!("[server]\nheader_timeout = \"{t}\"\n\n")
    });
    let toml = format!(
        "{server}{}",
        provider("openai", &m.base_url(), &["a"], true)
    );
    Gateway::start(&toml, &[]).await
}

/// A chat request body naming `model`.
fn chat(model: &str) -> String {
    format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#)
}

/// A complete `POST /v1/chat/completions` of `body`, with `extra` header lines (each ending in
/// CRLF) after the usual ones.
fn post(extra: &str, body: &str) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
}

/// Writes `bytes` on a fresh connection (a write the gateway cuts short by closing is not an
/// error), then reads until the gateway closes the connection: everything it answered.
async fn exchange(gw: &Gateway, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let _ = tokio::time::timeout(LIMIT, s.write_all(bytes)).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + LIMIT;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "the connection was not closed within {LIMIT:?}; read so far: {}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The status codes of the answers in `text`, in order.
fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

/// A well-formed request through reqwest is served: the gateway is still up and answering.
async fn still_serves(gw: &Gateway) {
    let r = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(chat("gpt-4o-mini"))
        .timeout(LIMIT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn oversized_header_blocks_are_refused_431_and_the_gateway_keeps_serving() {
    let m = mock().await;
    let gw = gateway(&m, None).await;
    let big = format!("x-big: {}\r\n", "a".repeat(100 * 1024));
    let many: String = (0..500).map(|i| format!("x-h{i}: v\r\n")).collect();
    let huge = format!("x-huge: {}\r\n", "a".repeat(1024 * 1024));
    for (what, extra) in [
        ("one 100 KiB header", &big),
        ("500 small headers", &many),
        ("one 1 MiB header", &huge),
    ] {
        let text = exchange(&gw, post(extra, &chat("gpt-4o-mini")).as_bytes()).await;
        assert_eq!(statuses(&text), [431], "{what}: {text}");
        still_serves(&gw).await;
    }
    // The three refusals never went upstream; the three requests after them did.
    assert_eq!(m.count(), 3, "{:?}", m.requests());
    // A block just under the limit is still a request like any other.
    let fits = format!("x-fits: {}\r\n", "a".repeat(60 * 1024));
    let text = exchange(
        &gw,
        post(
            &format!("{fits}connection: close\r\n"),
            &chat("gpt-4o-mini"),
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(statuses(&text), [200], "{text}");
    assert_eq!(m.count(), 4);
}

#[tokio::test]
async fn control_characters_in_a_header_are_refused_400_before_anything_goes_upstream() {
    let m = mock().await;
    let gw = gateway(&m, None).await;
    for (what, line) in [
        ("SOH in a value", "x-a: b\x01c\r\n"),
        ("NUL in a value", "x-a: b\x00c\r\n"),
        ("DEL in a value", "x-a: b\x7fc\r\n"),
        ("a bare CR in a value", "x-a: b\rc\r\n"),
        ("a bare CR ending a line", "x-a: b\rx-b: c\r\n"),
        ("a folded line", "x-a: b\r\n c\r\n"),
        ("a space before the colon", "x-a : b\r\n"),
        ("a name that is not a token", "x(a): b\r\n"),
        (
            "a bare CR in a credential",
            "authorization: Bearer a\rb\r\n",
        ),
    ] {
        let text = exchange(&gw, post(line, &chat("gpt-4o-mini")).as_bytes()).await;
        assert_eq!(statuses(&text), [400], "{what}: {text:?}");
    }
    assert!(m.requests().is_empty(), "{:?}", m.requests());
    // The same request with a clean header goes through.
    let text = exchange(
        &gw,
        post("x-a: b c\r\nconnection: close\r\n", &chat("gpt-4o-mini")).as_bytes(),
    )
    .await;
    assert_eq!(statuses(&text), [200], "{text}");
    assert_eq!(m.count(), 1);
}

/// A second request hidden after the first one's body, as a smuggler writes it.
fn smuggled() -> String {
    post("", &chat("smuggled"))
}

#[tokio::test]
async fn conflicting_framing_never_lets_a_second_request_through() {
    let m = mock().await;
    let gw = gateway(&m, None).await;
    let body = chat("gpt-4o-mini");
    let chunked = format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
    let head =
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n";

    // Content-Length and Transfer-Encoding together, in both orders, with the length covering
    // the chunked framing and the smuggled request (CL.TE) or only a part of it (TE.CL). hyper
    // reads the body by Transfer-Encoding, drops the Content-Length and closes the connection
    // after its answer: whatever follows the body is never read as a request.
    let whole = chunked.len() + smuggled().len();
    for framing in [
        format!("content-length: {whole}\r\ntransfer-encoding: chunked\r\n"),
        format!("transfer-encoding: chunked\r\ncontent-length: {whole}\r\n"),
        "content-length: 4\r\ntransfer-encoding: chunked\r\n".to_owned(),
        "transfer-encoding: chunked\r\ncontent-length: 4\r\n".to_owned(),
    ] {
        m.clear_requests();
        let text = exchange(
            &gw,
            format!("{head}{framing}\r\n{chunked}{}", smuggled()).as_bytes(),
        )
        .await;
        // One answer (`exchange` read on until the gateway closed the connection), for the one
        // request the chunked framing delimits, which reached the upstream as it was sent.
        assert_eq!(statuses(&text), [200], "{framing:?}: {text}");
        let seen = m.requests();
        assert_eq!(seen.len(), 1, "{framing:?}: {seen:?}");
        assert_eq!(&seen[0].body[..], body.as_bytes(), "{framing:?}");
    }

    // Framing that cannot be read one way only is refused outright.
    m.clear_requests();
    for (what, framing, rest) in [
        (
            "two different lengths",
            format!("content-length: {}\r\ncontent-length: 4\r\n", body.len()),
            body.clone(),
        ),
        (
            "two lengths in one header",
            format!("content-length: {}, 4\r\n", body.len()),
            body.clone(),
        ),
        (
            "a signed length",
            format!("content-length: +{}\r\n", body.len()),
            body.clone(),
        ),
        (
            "chunked that is not the last coding",
            "transfer-encoding: chunked, identity\r\n".to_owned(),
            chunked.clone(),
        ),
        (
            "a coding named like chunked",
            "transfer-encoding: xchunked\r\n".to_owned(),
            chunked.clone(),
        ),
    ] {
        let text = exchange(
            &gw,
            format!("{head}{framing}\r\n{rest}{}", smuggled()).as_bytes(),
        )
        .await;
        assert_eq!(statuses(&text), [400], "{what}: {text}");
    }
    let text = exchange(
        &gw,
        format!(
            "POST /v1/chat/completions HTTP/1.0\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\n{chunked}{}",
            smuggled()
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(statuses(&text), [400], "chunked in HTTP/1.0: {text}");

    // A malformed chunked body: the gateway cannot read the body (400, nothing sent upstream),
    // and the connection ends with that answer.
    for (what, bad) in [
        (
            "a size that is not hex",
            format!("zz\r\n{body}\r\n0\r\n\r\n"),
        ),
        (
            "a size past u64",
            format!("fffffffffffffffffff\r\n{body}\r\n0\r\n\r\n"),
        ),
        (
            "data longer than its size",
            format!("{:x}\r\n{body}xx\r\n0\r\n\r\n", body.len()),
        ),
        (
            "a chunk ended by a bare LF",
            format!("{:x}\r\n{body}\n0\r\n\r\n", body.len()),
        ),
    ] {
        let text = exchange(
            &gw,
            format!(
                "{head}transfer-encoding: chunked\r\n\r\n{bad}{}",
                smuggled()
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(statuses(&text), [400], "{what}: {text}");
        assert!(
            text.contains("the request body could not be read"),
            "{what}: {text}"
        );
    }
    assert!(m.requests().is_empty(), "{:?}", m.requests());
    still_serves(&gw).await;
}

/// Waits until the gateway closes `s` (reading and dropping whatever it sends), writing one
/// byte of `trickle` every 200 ms meanwhile when given; how long that took, at most `LIMIT`.
async fn time_to_close(s: &mut TcpStream, trickle: Option<u8>) -> Duration {
    let start = Instant::now();
    let (mut rd, mut wr) = s.split();
    let read = async {
        let mut buf = [0u8; 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let write = async {
        let Some(byte) = trickle else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if wr.write_all(&[byte]).await.is_err() {
                return std::future::pending().await;
            }
        }
    };
    tokio::time::timeout(LIMIT, async {
        tokio::select! {
            () = read => {}
            () = write => {}
        }
    })
    .await
    .expect("the gateway never closed the connection");
    start.elapsed()
}

/// Whether the gateway still holds `s` open (nothing to read, no end of stream).
fn still_open(s: &TcpStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(s.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_at_the_header_timeout() {
    let m = mock().await;
    let gw = gateway(&m, Some("1s")).await;
    let partial = "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nx-slow: ";
    for (what, sent, trickle) in [
        ("a partial header block, then silence", partial, None),
        (
            "a partial header block, then a byte every 200ms",
            partial,
            Some(b'a'),
        ),
        ("a connection that sends nothing", "", None),
        (
            "the start of an HTTP/2 preface, then silence",
            "PRI * HTTP/2.0\r\n",
            None,
        ),
    ] {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(sent.as_bytes()).await.unwrap();
        let took = time_to_close(&mut s, trickle).await;
        assert!(
            took >= Duration::from_millis(500) && took < Duration::from_secs(4),
            "{what}: closed after {took:?}"
        );
    }

    // A kept-alive connection that goes quiet after its answer is closed the same way.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: gw\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&answer).contains(r#"{"status":"ok"}"#) {
        let n = tokio::time::timeout(LIMIT, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before answering");
        answer.extend_from_slice(&buf[..n]);
    }
    let took = time_to_close(&mut s, None).await;
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(4),
        "an idle kept-alive connection closed after {took:?}"
    );
    assert!(m.requests().is_empty(), "{:?}", m.requests());
}

#[tokio::test]
async fn two_hundred_stalled_connections_do_not_keep_a_request_from_being_served() {
    let m = mock().await;
    let gw = gateway(&m, Some("3s")).await;
    let mut stalled = Vec::new();
    for i in 0..200 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        let partial = match i % 3 {
            0 => "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\n",
            1 => "GET /v1/mod",
            _ => "",
        };
        s.write_all(partial.as_bytes()).await.unwrap();
        stalled.push(s);
    }
    still_serves(&gw).await;
    // They are cut only at the header timeout: the request was served while all were held.
    assert!(
        stalled.iter().all(still_open),
        "a stalled connection was closed before the request was served"
    );
    // Then every one of them is cut.
    for s in &mut stalled {
        time_to_close(s, None).await;
    }
    assert_eq!(m.count(), 1, "{:?}", m.requests());
    still_serves(&gw).await;
}

#[tokio::test]
async fn http1_and_http2_clients_are_served_past_the_first_bytes_check() {
    let m = mock().await;
    let gw = gateway(&m, Some("1s")).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(chat("gpt-4o-mini"))
        .timeout(LIMIT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    still_serves(&gw).await;
    assert_eq!(m.count(), 2);
}
