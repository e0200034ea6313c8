//! The foundation, end to end: pass-through of every endpoint shape, streaming without
//! buffering, error envelopes, timeouts, secrets, zero-config mode, check-config, shutdown.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step is a failed test"
)]

use futures_util::StreamExt;
use mock_upstream::{Fault, MockHandle};
use serde_json::{json, Value};
use std::time::Duration;
use tollgate_e2e::{mock, provider, refusing_port, Gateway};

/// One default provider with one key "k1" (secret "sk-k1").
async fn simple() -> (MockHandle, Gateway) {
    let m = mock().await;
    let gw = Gateway::start(&provider("openai", &m.base_url(), &["k1"], true), &[]).await;
    (m, gw)
}

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

async fn error_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    let e = &body["error"];
    for field in ["message", "type", "param", "code"] {
        assert!(e.get(field).is_some(), "missing error.{field} in {body}");
    }
    (status, body)
}

#[tokio::test]
async fn chat_completion_passes_through_with_the_gateway_key() {
    let (m, gw) = simple().await;
    let resp = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth("client-side-key")
        .header("x-request-id", "req-abc")
        .header("openai-organization", "org-client")
        .json(&chat("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "req-abc");
    assert_eq!(resp.headers()["x-tollgate-provider"], "openai");
    assert_eq!(resp.headers()["x-tollgate-key"], "k1");
    assert_eq!(resp.headers()["x-tollgate-attempts"], "1");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gpt-4o-mini");
    let seen = m.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/chat/completions");
    assert_eq!(
        seen[0].key.as_deref(),
        Some("sk-k1"),
        "the client's key is replaced"
    );
    assert_eq!(seen[0].headers["x-request-id"], "req-abc");
    assert!(seen[0].headers.get("openai-organization").is_none());
    let sent: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(sent, chat("gpt-4o-mini"), "body forwarded unchanged");
}

#[tokio::test]
async fn generates_a_request_id_when_the_client_sends_none() {
    let (m, gw) = simple().await;
    let resp = reqwest::Client::new()
        .post(gw.url("/v1/embeddings"))
        .json(&json!({"model": "e", "input": ["a", "b"]}))
        .send()
        .await
        .unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(id.starts_with("req_") && id.len() > 10, "{id}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(m.requests()[0].headers["x-request-id"], id.as_str());
}

#[tokio::test]
async fn every_endpoint_shape_passes_through() {
    let (m, gw) = simple().await;
    let c = reqwest::Client::new();
    // completions
    let r: Value = c
        .post(gw.url("/v1/completions"))
        .json(&json!({"model": "m", "prompt": "x"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["object"], "text_completion");
    // models pass through when none are configured
    let r: Value = c
        .get(gw.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["data"][0]["id"], "mock-model");
    // binary download
    let r = c
        .post(gw.url("/v1/audio/speech"))
        .json(&json!({"model": "tts-1", "input": "hi", "voice": "alloy"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "audio/mpeg");
    assert_eq!(r.bytes().await.unwrap().len(), 1024);
    // multipart upload: the body and its boundary arrive untouched
    let boundary = "----tollgate-test";
    let multipart = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jsonl\"\r\nContent-Type: application/octet-stream\r\n\r\n{{}}\n\r\n--{boundary}--\r\n");
    let r: Value = c
        .post(gw.url("/v1/files?purpose=batch"))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(multipart.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["object"], "file");
    let up = m
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1/files")
        .unwrap();
    assert_eq!(up.body, multipart.as_bytes());
    assert_eq!(up.query.as_deref(), Some("purpose=batch"));
    assert!(up.headers["content-type"]
        .to_str()
        .unwrap()
        .contains(boundary));
    // responses: the mock answers a `response` object
    let r: Value = c
        .post(gw.url("/v1/responses"))
        .json(&json!({"model": "m", "input": "x"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["object"], "response");
    assert!(m.requests().iter().any(|r| r.path == "/v1/responses"));
    // moderations, GET with path parameters, DELETE
    for (method, path) in [
        ("POST", "/v1/moderations"),
        ("GET", "/v1/containers/cntr_1/files"),
        ("DELETE", "/v1/vector_stores/vs_1"),
    ] {
        let req = c.request(method.parse().unwrap(), gw.url(path));
        let req = if method == "POST" {
            req.json(&json!({"model": "m", "input": "x"}))
        } else {
            req
        };
        let r: Value = req.send().await.unwrap().json().await.unwrap();
        assert_eq!(r["path"], path, "{method} {path}");
        assert_eq!(r["method"], method);
    }
}

#[tokio::test]
async fn streamed_chunks_are_not_buffered() {
    let (m, gw) = simple().await;
    let resp = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .header("x-mock-fault", "hold")
        .json(&json!({"model": "m", "stream": true, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.bytes_stream();
    // The upstream holds the rest of the stream until released: the first chunk must arrive alone.
    let first = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .expect("first chunk before release")
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("chat.completion.chunk"));
    m.release_holds();
    let mut rest = Vec::new();
    while let Some(chunk) = body.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    let rest = String::from_utf8(rest).unwrap();
    assert!(rest.trim_end().ends_with("data: [DONE]"), "{rest}");
    assert!(!rest.contains("\"error\""));
}

#[tokio::test]
async fn gateway_errors_are_openai_shaped() {
    let m = mock().await;
    let toml = format!(
        "[server]\nmax_body = \"1KiB\"\n{}",
        provider("openai", &m.base_url(), &["k1"], false)
    );
    let gw = Gateway::start(&toml, &[]).await;
    let c = reqwest::Client::new();
    let (status, body) = error_of(
        c.post(gw.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let (status, body) = error_of(
        c.post(gw.url("/v1/chat/completions"))
            .json(&json!({"messages": []}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (400, Some("model"))
    );
    let big = json!({"model": "m", "input": "x".repeat(4096)});
    let (status, _) = error_of(
        c.post(gw.url("/v1/embeddings"))
            .json(&big)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 413);
    let resp = c
        .post(gw.url("/v1/chat/completions"))
        .json(&chat("gpt-9"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-should-retry"], "false");
    let (status, body) = error_of(resp).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
    let (status, _) = error_of(c.get(gw.url("/nope")).send().await.unwrap()).await;
    assert_eq!(status, 404);
    assert!(m.requests().is_empty(), "nothing reached the upstream");
}

#[tokio::test]
async fn upstream_client_errors_pass_through_once() {
    let (m, gw) = simple().await;
    m.script("sk-k1", [Fault::Status { status: 400, body: r#"{"error":{"message":"bad temperature","type":"invalid_request_error","param":"temperature","code":null}}"#.into(), headers: vec![] }]);
    let resp = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .json(&chat("m"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-should-retry"], "false");
    let (status, body) = error_of(resp).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["message"], "bad temperature");
    assert_eq!(m.requests().len(), 1, "a 400 is never retried");
}

#[tokio::test]
async fn unreachable_upstream_is_502_and_slow_upstream_is_504() {
    // A port nothing listens on, held so that no other test's server takes it.
    let (free, _held) = refusing_port();
    let toml = format!(
        "[retry]\nmax_attempts = 1\n{}",
        provider("down", &format!("http://{free}/v1"), &["k1"], true)
    );
    let gw = Gateway::start(&toml, &[]).await;
    let (status, body) = error_of(
        reqwest::Client::new()
            .post(gw.url("/v1/chat/completions"))
            .json(&chat("m"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 502, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("down/k1") && message.contains("could not connect"),
        "{body}"
    );

    let m = mock().await;
    let toml = format!(
        "[server]\nfirst_byte_timeout = \"200ms\"\n[retry]\nmax_attempts = 1\n{}",
        provider("slow", &m.base_url(), &["k1"], true)
    );
    let gw = Gateway::start(&toml, &[]).await;
    let resp = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .header("x-mock-fault", "delay-ms=3000")
        .json(&chat("m"))
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(resp).await;
    assert_eq!(status, 504, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("timeout"),
        "{body}"
    );
}

#[tokio::test]
async fn whole_request_deadline_is_504() {
    let m = mock().await;
    let toml = format!(
        "[server]\nrequest_timeout = \"300ms\"\n{}",
        provider("p", &m.base_url(), &["k1"], true)
    );
    let gw = Gateway::start(&toml, &[]).await;
    let resp = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .header("x-mock-fault", "delay-ms=3000")
        .json(&chat("m"))
        .send()
        .await
        .unwrap();
    let (status, _) = error_of(resp).await;
    assert_eq!(status, 504);
}

#[tokio::test]
async fn secrets_never_leave_the_gateway() {
    let m = mock().await;
    let toml = format!(
        "[retry]\nmax_attempts = 2\nbase_delay = \"1ms\"\n{}",
        provider("p", &m.base_url(), &["k1", "k2"], true)
    );
    let gw = Gateway::start(&toml, &[("RUST_LOG", "debug")]).await;
    m.script("sk-k1", [Fault::status(401)]);
    m.script("sk-k2", [Fault::status(503)]);
    let c = reqwest::Client::new();
    let mut seen = String::new();
    for _ in 0..3 {
        let r = c
            .post(gw.url("/v1/chat/completions"))
            .json(&chat("m"))
            .send()
            .await
            .unwrap();
        seen.push_str(&format!("{:?}", r.headers()));
        seen.push_str(&r.text().await.unwrap());
    }
    seen.push_str(&gw.metrics().await);
    // The requests' log lines are in (the log is written off the request path).
    assert!(gw.logged("\"key\":\"k1\"").await, "key ids are logged");
    seen.push_str(&gw.logs());
    for secret in ["sk-k1", "sk-k2"] {
        assert!(!seen.contains(secret), "{secret} leaked");
    }
}

#[tokio::test]
async fn configured_models_are_listed_and_routed() {
    let m = mock().await;
    let toml = format!(
        "{}\n[[models]]\nname = \"fast\"\ntargets = [{{ provider = \"p\", model = \"real-model\" }}]\n",
        provider("p", &m.base_url(), &["k1"], false)
    );
    let gw = Gateway::start(&toml, &[]).await;
    let c = reqwest::Client::new();
    let r: Value = c
        .get(gw.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        r["data"],
        json!([{"id": "fast", "object": "model", "created": 0, "owned_by": "tollgate"}])
    );
    let r: Value = c
        .post(gw.url("/v1/chat/completions"))
        .json(&chat("fast"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["model"], "real-model");
    let sent: Value = serde_json::from_slice(&m.requests()[0].body).unwrap();
    assert_eq!(sent["model"], "real-model");
    assert_eq!(sent["messages"], chat("fast")["messages"]);
}

#[tokio::test]
async fn zero_config_mode_uses_openai_api_keys() {
    let m = mock().await;
    let url = m.base_url();
    let gw = Gateway::start_zero_config(&[
        ("OPENAI_API_KEYS", "sk-z1,sk-z2"),
        ("TOLLGATE_UPSTREAM_URL", &url),
    ])
    .await;
    let c = reqwest::Client::new();
    for _ in 0..4 {
        let r = c
            .post(gw.url("/v1/chat/completions"))
            .json(&chat("anything"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(m.requests_for_key("sk-z1"), 2, "idle keys share the load");
    assert_eq!(m.requests_for_key("sk-z2"), 2);
}

#[tokio::test]
async fn sigterm_drains_in_flight_streams_then_exits_zero() {
    let (m, mut gw) = simple().await;
    let resp = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .header("x-mock-fault", "hold")
        .json(&json!({"model": "m", "stream": true, "messages": []}))
        .send()
        .await
        .unwrap();
    let mut body = resp.bytes_stream();
    body.next().await.unwrap().unwrap();
    gw.terminate();
    // Readiness drops while the stream is still open.
    let c = reqwest::Client::new();
    for _ in 0..200 {
        match c.get(gw.url("/readyz")).send().await {
            Ok(r) if r.status() == 200 => tokio::time::sleep(Duration::from_millis(10)).await,
            _ => break,
        }
    }
    m.release_holds();
    let mut rest = Vec::new();
    while let Some(chunk) = body.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert!(
        String::from_utf8(rest).unwrap().contains("[DONE]"),
        "the in-flight stream finished"
    );
    let status = gw.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn check_config_prints_resolved_config_or_every_problem() {
    let good = tollgate_e2e::write_config(
        &provider("p", "http://127.0.0.1:1/v1", &["k1"], true).replace("sk-k1", "${E2E_SECRET}"),
    );
    let out = std::process::Command::new(tollgate_e2e::binary())
        .arg("check-config")
        .arg(&good)
        .env("E2E_SECRET", "sk-top-secret")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("\"secret\": \"***\""), "{text}");
    assert!(!text.contains("sk-top-secret"));
    let bad = tollgate_e2e::write_config(&format!(
        "{}{}",
        provider("a", "http://a/v1", &["k1"], true),
        provider("b", "nope", &["k2"], false).replace("sk-k2", "${OPENAI_KEY_B_E2E_UNSET}")
    ));
    let out = std::process::Command::new(tollgate_e2e::binary())
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains(
            "providers[1].keys[0].secret: environment variable OPENAI_KEY_B_E2E_UNSET is not set"
        ),
        "{err}"
    );
    assert!(err.contains("providers[1].base_url"), "{err}");
}
