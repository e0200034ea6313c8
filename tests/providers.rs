//! Azure OpenAI and Anthropic behind the OpenAI API, end to end against the mock's dialects
//! (its Anthropic side validates requests as strictly as the real API).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step is a failed test"
)]

use mock_upstream::{Fault, MockHandle};
use serde_json::{json, Value};
use tollgate_e2e::{metric, mock, Gateway};

/// A chain: an OpenAI-compatible provider (key "o1"), Azure ("az1"), Anthropic ("an1", "an2").
fn chain_config(
    openai: &MockHandle,
    azure: &MockHandle,
    anthropic: &MockHandle,
    version: &str,
) -> String {
    format!(
        r#"
[retry]
max_attempts = 1
[[providers]]
name = "openai"
base_url = "{}"
keys = [{{ id = "o1", secret = "sk-o1" }}]
[[providers]]
name = "azure"
kind = "azure"
base_url = "{}"
api_version = "2024-10-21"
keys = [{{ id = "az1", secret = "az-key-1" }}]
[[providers]]
name = "anthropic"
kind = "anthropic"
base_url = "{}"
api_version = "{version}"
keys = [{{ id = "an1", secret = "ant-key-1" }}, {{ id = "an2", secret = "ant-key-2" }}]
[[models]]
name = "smart"
targets = [
  {{ provider = "openai", model = "gpt-4o" }},
  {{ provider = "azure", model = "my-deployment" }},
  {{ provider = "anthropic", model = "claude-sonnet-4-5", max_tokens = 512 }},
]
[[models]]
name = "claude-only"
targets = [{{ provider = "anthropic", model = "claude-haiku-4-5" }}]
"#,
        openai.base_url(),
        azure
            .addr()
            .to_string()
            .replace("127.0.0.1", "http://127.0.0.1"),
        anthropic
            .addr()
            .to_string()
            .replace("127.0.0.1", "http://127.0.0.1"),
    )
}

fn request(model: &str) -> Value {
    json!({
        "model": model,
        "temperature": 0.2,
        "max_tokens": 100,
        "stop": ["END"],
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "user", "content": "still there?"}
        ]
    })
}

async fn post(gw: &Gateway, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn azure_gets_deployment_urls_and_its_api_key() {
    let (o, az, an) = (mock().await, mock().await, mock().await);
    let gw = Gateway::start(&chain_config(&o, &az, &an, "2023-06-01"), &[]).await;
    o.script_always("sk-o1", Fault::status(503));
    let r = post(&gw, &request("smart")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-tollgate-provider"], "azure");
    let seen = &az.requests()[0];
    assert_eq!(
        seen.path,
        "/openai/deployments/my-deployment/chat/completions"
    );
    assert_eq!(seen.query.as_deref(), Some("api-version=2024-10-21"));
    assert_eq!(seen.headers["api-key"], "az-key-1");
    assert!(seen.headers.get("authorization").is_none());
}

#[tokio::test]
async fn falls_back_to_anthropic_plain() {
    let (o, az, an) = (mock().await, mock().await, mock().await);
    let gw = Gateway::start(&chain_config(&o, &az, &an, "2023-06-01"), &[]).await;
    o.script_always("sk-o1", Fault::status(503));
    az.script_always("az-key-1", Fault::status(500));
    let r = post(&gw, &request("smart")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-tollgate-provider"], "anthropic");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "smart", "the model the client asked for");
    assert_eq!(body["choices"][0]["message"]["content"], "Hello from mock");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let usage = &body["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );
    let sent: Value = serde_json::from_slice(&an.requests()[0].body).unwrap();
    assert_eq!(sent["model"], "claude-sonnet-4-5");
    assert_eq!(sent["system"], "Be brief.");
    assert_eq!(sent["max_tokens"], 100);
    assert_eq!(sent["stop_sequences"], json!(["END"]));
    assert_eq!(sent["temperature"], 0.2);
    assert_eq!(
        sent["messages"].as_array().unwrap().len(),
        1,
        "consecutive user messages merged"
    );
    assert_eq!(an.requests()[0].headers["anthropic-version"], "2023-06-01");
    let text = gw.metrics().await;
    assert_eq!(
        metric(
            &text,
            r#"tollgate_fallbacks_total{from="azure",reason="transient",to="anthropic"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn the_newest_anthropic_version_gets_no_sampling_parameters() {
    let (o, az, an) = (mock().await, mock().await, mock().await);
    let gw = Gateway::start(&chain_config(&o, &az, &an, "2026-10-21"), &[]).await;
    let r = post(&gw, &request("claude-only")).await;
    assert_eq!(r.status(), 200, "the strict mock accepted the translation");
    let sent: Value = serde_json::from_slice(&an.requests()[0].body).unwrap();
    assert!(sent.get("temperature").is_none());
    assert_eq!(an.requests()[0].headers["anthropic-version"], "2026-10-21");
}

#[tokio::test]
async fn anthropic_streams_become_openai_chunks() {
    let (o, az, an) = (mock().await, mock().await, mock().await);
    let gw = Gateway::start(&chain_config(&o, &az, &an, "2023-06-01"), &[]).await;
    let mut body = request("claude-only");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = post(&gw, &body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let text = r.text().await.unwrap();
    // SSE comments (the gateway's keep-alive for upstream events with no OpenAI equivalent)
    // are not events.
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.is_empty() && !e.starts_with(':'))
        .collect();
    assert_eq!(*events.last().unwrap(), "data: [DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "tok0 tok1 tok2 ");
    assert!(chunks
        .iter()
        .any(|c| c["choices"][0]["finish_reason"] == "stop"));
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk" && c["model"] == "claude-only"));
}

#[tokio::test]
async fn anthropic_tool_calls_both_ways() {
    let (o, az, an) = (mock().await, mock().await, mock().await);
    let gw = Gateway::start(&chain_config(&o, &az, &an, "2023-06-01"), &[]).await;
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let ask = json!({"model": "claude-only", "tools": tools, "tool_choice": "auto", "messages": [{"role": "user", "content": "please use a tool"}]});
    let body: Value = post(&gw, &ask).await.json().await.unwrap();
    let call = &body["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Paris"}));
    // The tool result goes back: assistant tool_calls → tool_use, tool message → tool_result.
    let follow_up = json!({"model": "claude-only", "tools": tools, "messages": [
        {"role": "user", "content": "please use a tool"},
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny"}
    ]});
    let r = post(&gw, &follow_up).await;
    assert_eq!(r.status(), 200);
    let sent: Value = serde_json::from_slice(&an.requests()[1].body).unwrap();
    assert_eq!(sent["messages"][1]["content"][0]["type"], "tool_use");
    assert_eq!(sent["messages"][2]["content"][0]["type"], "tool_result");
    assert_eq!(sent["tools"][0]["input_schema"]["type"], "object");
    // Streamed tool call: index, id and name first, then the arguments in pieces.
    let mut streamed = ask.clone();
    streamed["stream"] = json!(true);
    let text = post(&gw, &streamed).await.text().await.unwrap();
    let args: String = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        json!({"city": "Paris"})
    );
    assert!(text.contains("\"finish_reason\":\"tool_calls\""));
}

#[tokio::test]
async fn anthropic_errors_are_classified_and_returned_in_openai_shape() {
    let (o, az, an) = (mock().await, mock().await, mock().await);
    let gw = Gateway::start(
        &chain_config(&o, &az, &an, "2023-06-01")
            .replace("max_attempts = 1", "max_attempts = 3\nbase_delay = \"1ms\""),
        &[],
    )
    .await;
    // 529 overloaded on one key: transient, the other key answers.
    an.script("ant-key-1", [Fault::status(529)]);
    an.script("ant-key-2", [Fault::status(529)]);
    let r = post(&gw, &request("claude-only")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-tollgate-attempts"], "3");
    // A stream whose first event is an Anthropic error is retried before any byte goes out.
    an.script("ant-key-1", [Fault::StreamErrorFirst]);
    an.script("ant-key-2", [Fault::StreamErrorFirst]);
    let mut body = request("claude-only");
    body["stream"] = json!(true);
    let r = post(&gw, &body).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(
        !text.contains("\"error\"") && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
    // A 400 comes back once, in OpenAI's shape.
    an.script("ant-key-1", [Fault::status(400)]);
    an.script("ant-key-2", [Fault::status(400)]);
    let before = an.requests().len();
    let r = post(&gw, &request("claude-only")).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["x-should-retry"], "false");
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["type"], "invalid_request_error");
    assert!(err["error"].get("param").is_some() && err["error"].get("code").is_some());
    assert_eq!(an.requests().len(), before + 1);
    // 401 on one key disables it after one request; the other key serves. A fresh gateway:
    // the failures above left the keys' records uneven, and selection would prefer one of
    // them whichever it is.
    drop(gw);
    let gw = Gateway::start(
        &chain_config(&o, &az, &an, "2023-06-01")
            .replace("max_attempts = 1", "max_attempts = 3\nbase_delay = \"1ms\""),
        &[],
    )
    .await;
    an.clear();
    an.clear_requests();
    an.script_always("ant-key-1", Fault::status(401));
    for _ in 0..4 {
        assert_eq!(post(&gw, &request("claude-only")).await.status(), 200);
    }
    assert_eq!(an.requests_for_key("ant-key-1"), 1);
    assert_eq!(an.requests_for_key("ant-key-2"), 4);
}

#[tokio::test]
async fn what_anthropic_cannot_serve_is_skipped_or_refused_clearly() {
    let (o, az, an) = (mock().await, mock().await, mock().await);
    let gw = Gateway::start(&chain_config(&o, &az, &an, "2023-06-01"), &[]).await;
    let r = reqwest::Client::new()
        .post(gw.url("/v1/embeddings"))
        .json(&json!({"model": "claude-only", "input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["code"], "unsupported_endpoint");
    // n > 1 has no Anthropic equivalent: a clear 400 naming the parameter, nothing sent.
    let mut body = request("claude-only");
    body["n"] = json!(2);
    let r = post(&gw, &body).await;
    assert_eq!(r.status(), 400);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["param"], "n");
    assert!(an.requests().is_empty());
    // Embeddings on the mixed chain skip Anthropic and go to the first target.
    let r = reqwest::Client::new()
        .post(gw.url("/v1/embeddings"))
        .json(&json!({"model": "smart", "input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-tollgate-provider"], "openai");
}
