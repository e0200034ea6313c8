//! End-to-end tests of the server over real sockets, with a tiny raw HTTP/1.1
//! client (this crate has no HTTP client dependency).

mod anthropic;
mod chat;
mod faults;
mod responses;

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{start, Fault, MockConfig, MockHandle};

/// Tests use `?` instead of `unwrap` (the workspace warns on `unwrap_used`).
type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: Vec<u8>,
    /// The chunked body ended with its terminating chunk (or had a length).
    complete: bool,
}

impl Reply {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    fn json(&self) -> TestResult<Value> {
        Ok(serde_json::from_slice(&self.body)?)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn request_bytes(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nhost: mock\r\nconnection: close\r\n");
    for (name, value) in headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    raw.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    raw.into_bytes()
}

async fn connect(mock: &MockHandle, raw: &[u8]) -> TestResult<TcpStream> {
    let mut stream = TcpStream::connect(mock.addr()).await?;
    stream.write_all(raw).await?;
    Ok(stream)
}

/// Reads until EOF (or a reset, as a broken body may cause).
async fn read_all(stream: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn parse_reply(raw: &[u8]) -> TestResult<Reply> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of head")?;
    let head = String::from_utf8(raw[..split].to_vec())?;
    let status = head.split(' ').nth(1).ok_or("no status")?.parse()?;
    let rest = &raw[split + 4..];
    let mut reply = Reply {
        status,
        head,
        body: Vec::new(),
        complete: true,
    };
    if reply.header("transfer-encoding").as_deref() != Some("chunked") {
        reply.body = rest.to_vec();
        return Ok(reply);
    }
    let mut pos = 0;
    reply.complete = false;
    while let Some(eol) = rest[pos..].windows(2).position(|w| w == b"\r\n") {
        let size_line = std::str::from_utf8(&rest[pos..pos + eol])?;
        let size = usize::from_str_radix(size_line.trim(), 16)?;
        pos += eol + 2;
        if size == 0 {
            reply.complete = true;
            break;
        }
        if pos + size > rest.len() {
            reply.body.extend_from_slice(&rest[pos..]);
            break;
        }
        reply.body.extend_from_slice(&rest[pos..pos + size]);
        pos += size + 2;
    }
    Ok(reply)
}

async fn call(
    mock: &MockHandle,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> TestResult<Reply> {
    let mut stream = connect(mock, &request_bytes(method, path, headers, body)).await?;
    let mut buf = Vec::new();
    read_all(&mut stream, &mut buf).await;
    parse_reply(&buf)
}

const CHAT: &str = r#"{"model":"gpt-x","messages":[{"role":"user","content":"hi"}]}"#;
const CHAT_STREAM: &str =
    r#"{"model":"gpt-x","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#;

fn data_events(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: ").map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn chat_completion_answers_and_records() -> TestResult {
    let mock = start(MockConfig::default()).await?;
    let reply = call(
        &mock,
        "POST",
        "/v1/chat/completions?x=1",
        &[("authorization", "Bearer k1")],
        CHAT,
    )
    .await?;
    assert_eq!(reply.status, 200);
    let v = reply.json()?;
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-x");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from mock");
    assert_eq!(v["usage"]["completion_tokens"], 3);
    assert!(v["id"]
        .as_str()
        .ok_or("no id")?
        .starts_with("chatcmpl-mock-"));

    let recorded = mock.requests();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].path, "/v1/chat/completions");
    assert_eq!(recorded[0].query.as_deref(), Some("x=1"));
    assert_eq!(recorded[0].key.as_deref(), Some("k1"));
    assert_eq!(recorded[0].body, CHAT.as_bytes());
    assert_eq!(mock.requests_for_key("k1"), 1);
    assert!(mock.base_url().ends_with("/v1"));
    Ok(())
}

#[tokio::test]
async fn invalid_json_is_an_openai_400() -> TestResult {
    let mock = start(MockConfig::default()).await?;
    let reply = call(&mock, "POST", "/v1/chat/completions", &[], "{nope").await?;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()?["error"]["type"], "invalid_request_error");
    Ok(())
}

#[tokio::test]
async fn stream_sends_chunks_usage_and_done() -> TestResult {
    let mock = start(MockConfig::default()).await?;
    let reply = call(
        &mock,
        "POST",
        "/v1/chat/completions",
        &[("x-mock-chunks", "4")],
        CHAT_STREAM,
    )
    .await?;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type").as_deref(),
        Some("text/event-stream")
    );
    assert!(reply.complete);
    let events = data_events(&reply.text());
    assert_eq!(events.len(), 6, "4 chunks + usage + DONE: {events:?}");
    assert_eq!(events[5], "[DONE]");
    let usage: Value = serde_json::from_str(&events[4])?;
    assert_eq!(usage["usage"]["completion_tokens"], 4);
    Ok(())
}

#[tokio::test]
async fn scripted_faults_apply_in_order_then_normal() -> TestResult {
    let mock = start(MockConfig::default()).await?;
    mock.script("k", [Fault::rate_limited(3), Fault::status(503)]);
    let auth = [("api-key", "k")];
    let first = call(&mock, "POST", "/v1/chat/completions", &auth, CHAT).await?;
    assert_eq!(first.status, 429);
    assert_eq!(first.header("retry-after").as_deref(), Some("3"));
    assert_eq!(first.json()?["error"]["code"], "rate_limit_exceeded");
    let second = call(&mock, "POST", "/v1/chat/completions", &auth, CHAT).await?;
    assert_eq!(second.status, 503);
    assert_eq!(second.json()?["error"]["type"], "server_error");
    let third = call(&mock, "POST", "/v1/chat/completions", &auth, CHAT).await?;
    assert_eq!(third.status, 200);
    assert_eq!(mock.requests_for_key("k"), 3);

    mock.script_always("k", Fault::status(401));
    let fourth = call(&mock, "POST", "/v1/chat/completions", &auth, CHAT).await?;
    assert_eq!(fourth.status, 401);
    mock.clear();
    assert_eq!(mock.requests().len(), 4);
    mock.clear_requests();
    assert!(mock.requests().is_empty());
    let fifth = call(&mock, "POST", "/v1/chat/completions", &auth, CHAT).await?;
    assert_eq!(fifth.status, 200);
    Ok(())
}

#[tokio::test]
async fn header_fault_status_and_error_first() -> TestResult {
    let mock = start(MockConfig::default()).await?;
    let reply = call(
        &mock,
        "POST",
        "/v1/embeddings",
        &[("x-mock-fault", "status=502")],
        "{}",
    )
    .await?;
    assert_eq!(reply.status, 502);
    let reply = call(
        &mock,
        "POST",
        "/v1/chat/completions",
        &[("x-mock-fault", "error-first")],
        CHAT_STREAM,
    )
    .await?;
    assert_eq!(reply.status, 200);
    let events = data_events(&reply.text());
    assert_eq!(events.len(), 1);
    let error: Value = serde_json::from_str(&events[0])?;
    assert_eq!(error["error"]["message"], "upstream overloaded");
    Ok(())
}

#[tokio::test]
async fn break_after_truncates_the_stream() -> TestResult {
    let mock = start(MockConfig::default()).await?;
    let reply = call(
        &mock,
        "POST",
        "/v1/chat/completions",
        &[("x-mock-fault", "break-after=2")],
        CHAT_STREAM,
    )
    .await?;
    assert_eq!(reply.status, 200);
    assert!(!reply.complete, "body must not end cleanly");
    let events = data_events(&reply.text());
    assert_eq!(events.len(), 2);
    assert!(!reply.text().contains("[DONE]"));
    Ok(())
}

#[tokio::test]
async fn hold_sends_first_chunk_then_waits_for_release() -> TestResult {
    let mock = start(MockConfig::default()).await?;
    mock.script("held", [Fault::HoldAfterFirst]);
    let raw = request_bytes(
        "POST",
        "/v1/chat/completions",
        &[("x-api-key", "held")],
        CHAT_STREAM,
    );
    let mut stream = connect(&mock, &raw).await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&buf).contains("\n\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        assert!(n > 0, "closed before the first chunk");
        buf.extend_from_slice(&chunk[..n]);
    }
    let more = tokio::time::timeout(Duration::from_millis(50), stream.read(&mut chunk)).await;
    assert!(more.is_err(), "the rest must wait for release_holds");
    mock.release_holds();
    read_all(&mut stream, &mut buf).await;
    let reply = parse_reply(&buf)?;
    assert!(reply.complete);
    assert_eq!(
        data_events(&reply.text()).last().map(String::as_str),
        Some("[DONE]")
    );
    Ok(())
}

#[tokio::test]
async fn other_endpoints_answer() -> TestResult {
    let mock = start(MockConfig {
        record: false,
        ..MockConfig::default()
    })
    .await?;
    let models = call(&mock, "GET", "/v1/models", &[], "").await?.json()?;
    assert_eq!(models["data"][0]["id"], "mock-model");
    let emb = call(
        &mock,
        "POST",
        "/v1/embeddings",
        &[],
        r#"{"model":"e","input":["a","b"]}"#,
    )
    .await?;
    assert_eq!(emb.json()?["data"][1]["index"], 1);
    let speech = call(&mock, "POST", "/v1/audio/speech", &[], "{}").await?;
    assert_eq!(speech.header("content-type").as_deref(), Some("audio/mpeg"));
    assert_eq!(speech.body.len(), 1024);
    let echo = call(
        &mock,
        "DELETE",
        "/v1/vector_stores/vs_1",
        &[("content-type", "text/plain")],
        "abc",
    )
    .await?
    .json()?;
    assert_eq!(echo["object"], "mock.echo");
    assert_eq!(echo["method"], "DELETE");
    assert_eq!(echo["content_type"], "text/plain");
    assert_eq!(echo["body_len"], 3);
    let completion = call(
        &mock,
        "POST",
        "/v1/completions",
        &[],
        r#"{"model":"c","prompt":"x"}"#,
    )
    .await?
    .json()?;
    assert_eq!(completion["object"], "text_completion");
    assert!(mock.requests().is_empty(), "record=false keeps nothing");
    Ok(())
}

#[tokio::test]
async fn delay_fault_waits_before_answering() -> TestResult {
    let mock = start(MockConfig::default()).await?;
    let started = std::time::Instant::now();
    let reply = call(
        &mock,
        "GET",
        "/v1/models",
        &[("x-mock-fault", "delay-ms=60")],
        "",
    )
    .await?;
    assert_eq!(reply.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(60));
    Ok(())
}
