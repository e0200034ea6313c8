//! The conditional, compressed and hostile fault shapes over real sockets: streams-only, flaky,
//! gzip, the message-only 429, huge usage and the hang.

use std::io::Read;
use std::time::Duration;

use serde_json::Value;

use super::{call, connect, data_events, parse_reply, read_all, request_bytes, Reply, TestResult};
use super::{CHAT, CHAT_STREAM};
use crate::{start, Fault, MockConfig};

const PATH: &str = "/v1/chat/completions";

/// The body of a `content-encoding: gzip` reply, decoded.
fn gunzip(reply: &Reply) -> TestResult<String> {
    assert_eq!(reply.header("content-encoding").as_deref(), Some("gzip"));
    let mut text = String::new();
    flate2::read::GzDecoder::new(reply.body.as_slice()).read_to_string(&mut text)?;
    Ok(text)
}

#[tokio::test]
async fn streams_only_breaks_streams_and_serves_plain_requests() -> TestResult {
    let mock = start(MockConfig::default()).await?;
    mock.script_always("k", Fault::StreamErrorFirst.streams_only());
    let auth = [("authorization", "Bearer k")];
    let plain = call(&mock, "POST", PATH, &auth, CHAT).await?;
    assert_eq!(plain.status, 200);
    assert_eq!(plain.json()?["object"], "chat.completion");
    let stream = call(&mock, "POST", PATH, &auth, CHAT_STREAM).await?;
    assert_eq!(stream.status, 200);
    let events = data_events(&stream.text());
    assert_eq!(events.len(), 1, "{events:?}");
    let error: Value = serde_json::from_str(&events[0])?;
    assert_eq!(error["error"]["type"], "server_error");
    Ok(())
}

#[tokio::test]
async fn flaky_fails_one_request_in_five_and_counts_without_recording() -> TestResult {
    let mock = start(MockConfig {
        record: false,
        ..MockConfig::default()
    })
    .await?;
    mock.script_always("k", Fault::status(503).flaky(5));
    let auth = [("authorization", "Bearer k")];
    let mut failed = Vec::new();
    for n in 1..=10 {
        if call(&mock, "POST", PATH, &auth, CHAT).await?.status == 503 {
            failed.push(n);
        }
    }
    assert_eq!(failed, vec![5, 10]);
    let _ = call(&mock, "POST", PATH, &[], CHAT).await?;
    assert_eq!(mock.count_for_key("k"), 10);
    assert_eq!(mock.count_for_key("other"), 0);
    assert_eq!(mock.counts().get(""), Some(&1));
    assert_eq!(mock.count(), 11);
    assert!(mock.requests().is_empty());
    Ok(())
}

#[tokio::test]
async fn gzip_compresses_answers_errors_and_streams() -> TestResult {
    let mock = start(MockConfig::default()).await?;
    let auth = [("authorization", "Bearer k")];
    mock.script("k", [Fault::gzip(), Fault::status(503).gzipped()]);
    let plain = call(&mock, "POST", PATH, &auth, CHAT).await?;
    assert_eq!(plain.status, 200);
    let answer: Value = serde_json::from_str(&gunzip(&plain)?)?;
    assert_eq!(answer["object"], "chat.completion");
    let error = call(&mock, "POST", PATH, &auth, CHAT).await?;
    assert_eq!(error.status, 503);
    assert_eq!(
        error.header("content-type").as_deref(),
        Some("application/json")
    );
    let body: Value = serde_json::from_str(&gunzip(&error)?)?;
    assert_eq!(body["error"]["type"], "server_error");

    let stream = call(
        &mock,
        "POST",
        PATH,
        &[("x-mock-fault", "gzip")],
        CHAT_STREAM,
    )
    .await?;
    assert!(stream.complete);
    let events = data_events(&gunzip(&stream)?);
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_gzipped_stream_is_decodable_before_it_ends() -> TestResult {
    let mock = start(MockConfig::default()).await?;
    mock.script("k", [Fault::HoldAfterFirst.gzipped()]);
    let raw = request_bytes("POST", PATH, &[("authorization", "Bearer k")], CHAT_STREAM);
    let mut stream = connect(&mock, &raw).await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // Read until the first compressed piece decodes to a whole event; the rest is held.
    let first = loop {
        let n = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(&mut stream, &mut chunk),
        )
        .await??;
        assert!(n > 0, "closed before the first event");
        buf.extend_from_slice(&chunk[..n]);
        let Ok(reply) = parse_reply(&buf) else {
            continue;
        };
        let mut text = String::new();
        // A sync-flushed piece decodes; the missing trailer is the only error.
        let _ = flate2::read::GzDecoder::new(reply.body.as_slice()).read_to_string(&mut text);
        if text.contains("\n\n") {
            break text;
        }
    };
    assert!(first.starts_with("data: {"), "{first}");
    mock.release_holds();
    read_all(&mut stream, &mut buf).await;
    let events = data_events(&gunzip(&parse_reply(&buf)?)?);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    Ok(())
}

#[tokio::test]
async fn a_429_with_its_wait_only_in_the_message() -> TestResult {
    let mock = start(MockConfig::default()).await?;
    let reply = call(
        &mock,
        "POST",
        PATH,
        &[("x-mock-fault", "try-again-in-ms=2000")],
        CHAT,
    )
    .await?;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("retry-after"), None);
    let message = reply.json()?["error"]["message"].clone();
    assert!(
        message
            .as_str()
            .is_some_and(|m| m.contains("Please try again in 2s.")),
        "{message}"
    );
    Ok(())
}

#[tokio::test]
async fn huge_usage_reports_u64_max_tokens() -> TestResult {
    let mock = start(MockConfig::default()).await?;
    mock.script_always("k", Fault::HugeUsage);
    let auth = [("authorization", "Bearer k")];
    let plain = call(&mock, "POST", PATH, &auth, CHAT).await?.json()?;
    assert_eq!(plain["usage"]["total_tokens"].as_u64(), Some(u64::MAX));
    assert!(plain["usage"].to_string().contains("18446744073709551615"));
    let stream = call(&mock, "POST", PATH, &auth, CHAT_STREAM).await?;
    let events = data_events(&stream.text());
    let usage: Value = serde_json::from_str(&events[events.len() - 2])?;
    assert_eq!(usage["usage"]["total_tokens"].as_u64(), Some(u64::MAX));
    assert_eq!(usage["usage"]["prompt_tokens"].as_u64(), Some(u64::MAX));
    let embeddings = call(
        &mock,
        "POST",
        "/v1/embeddings",
        &auth,
        r#"{"model":"e","input":"a"}"#,
    )
    .await?
    .json()?;
    assert_eq!(embeddings["usage"]["total_tokens"].as_u64(), Some(u64::MAX));
    Ok(())
}

#[tokio::test]
async fn hang_sends_nothing_until_released() -> TestResult {
    let mock = start(MockConfig::default()).await?;
    mock.script("k", [Fault::Hang, Fault::Hang]);
    let raw = request_bytes("POST", PATH, &[("authorization", "Bearer k")], CHAT);
    let received = |n: u64| {
        let mock = mock.clone();
        async move {
            while mock.count_for_key("k") < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    let mut stream = connect(&mock, &raw).await?;
    tokio::time::timeout(Duration::from_secs(5), received(1)).await?;
    let mut chunk = [0u8; 64];
    let early = tokio::time::timeout(
        Duration::from_millis(100),
        tokio::io::AsyncReadExt::read(&mut stream, &mut chunk),
    )
    .await;
    assert!(early.is_err(), "a hung request must send nothing");
    // A client that gives up on a hung request does not wedge the server.
    let gave_up = connect(&mock, &raw).await?;
    tokio::time::timeout(Duration::from_secs(5), received(2)).await?;
    drop(gave_up);
    mock.release_holds();
    let mut buf = Vec::new();
    read_all(&mut stream, &mut buf).await;
    assert_eq!(parse_reply(&buf)?.status, 200);
    let after = call(&mock, "POST", PATH, &[("authorization", "Bearer k")], CHAT).await?;
    assert_eq!(after.status, 200, "the script is used up");
    Ok(())
}
