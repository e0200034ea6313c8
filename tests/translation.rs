//! The Responses API to targets that do not speak it: the official `openai` SDK's
//! `responses.create`, plain and streamed, with a function tool (and a hosted one the
//! translation leaves out), through
//!
//! - model `smart`: [an OpenAI provider answering 503, Anthropic] (the mock's strict Messages
//!   validation), so the only working target is Anthropic;
//! - model `local`: a chat-only OpenAI-compatible server (`responses = "chat"`; the mock
//!   answers 404 to `/responses`, as vLLM without it does);
//! - model `claude`: Anthropic alone, for what the translation refuses.
//!
//! Each SDK run is a tool round trip: the mock calls `exec_command`, the client sends its output
//! back as a `function_call_output`, and the mock's answer repeats it. The rows of the README's
//! translation table that need a real exchange are asserted here; the rest are unit tests in
//! `provider/responses/tests.rs` and `provider/mod.rs`.
//!
//! The SDK is provisioned as in `tests/sdk.rs` (`SKIPPED: openai SDK unavailable` and a pass
//! without it, unless `TOLLGATE_REQUIRE_SDK=1`).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use mock_upstream::{Fault, MockConfig, MockHandle, Recorded, TOOL_OUTPUT};
use serde_json::{json, Value};
use tollgate_e2e::openai_sdk::{observe, sdk};
use tollgate_e2e::Gateway;

struct Setup {
    openai: MockHandle,
    anthropic: MockHandle,
    local: MockHandle,
    gw: Gateway,
}

async fn setup() -> Setup {
    let openai = mock_upstream::start(MockConfig::default()).await.unwrap();
    let anthropic = mock_upstream::start(MockConfig::default()).await.unwrap();
    let local = mock_upstream::start(MockConfig {
        responses_api: false,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let toml = format!(
        r#"
providers = [
  {{ name = "openai", base_url = "{}", keys = [{{ id = "o1", secret = "sk-o1" }}] }},
  {{ name = "anthropic", kind = "anthropic", base_url = "http://{}", keys = [{{ id = "an1", secret = "ant-key-1" }}] }},
  {{ name = "local", base_url = "{}", responses = "chat", keys = [{{ id = "l1", secret = "sk-local" }}] }},
]
[retry]
max_attempts = 1
base_delay = "1ms"
[[models]]
name = "smart"
targets = [
  {{ provider = "openai", model = "gpt-5" }},
  {{ provider = "anthropic", model = "claude-sonnet-4-5", max_tokens = 512 }},
]
[[models]]
name = "local"
targets = [{{ provider = "local", model = "llama-3" }}]
[[models]]
name = "claude"
targets = [{{ provider = "anthropic", model = "claude-sonnet-4-5" }}]
"#,
        openai.base_url(),
        anthropic.addr(),
        local.base_url(),
    );
    let gw = Gateway::start(&toml, &[]).await;
    openai.script_always("sk-o1", Fault::status(503));
    Setup {
        openai,
        anthropic,
        local,
        gw,
    }
}

fn bodies(m: &MockHandle, suffix: &str) -> Vec<Value> {
    m.requests()
        .iter()
        .filter(|r: &&Recorded| r.path.ends_with(suffix))
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect()
}

/// Asserts an SDK tool round trip: the call, its output sent back, the mock repeating it.
fn assert_round_trip(seen: &Value, gw: &Gateway, provider: &str, stream: bool) {
    assert!(
        seen["exception"].is_null(),
        "the SDK raised: {seen}\ngateway logs:\n{}",
        gw.logs()
    );
    let first = &seen["first"];
    assert_eq!(first["headers"]["x-tollgate-provider"], provider, "{seen}");
    assert_eq!(first["headers"]["x-tollgate-dropped-tools"], "web_search");
    let response = &first["response"];
    assert_eq!(response["object"], "response", "{seen}");
    assert_eq!(response["status"], "completed");
    let call = response["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == "function_call")
        .unwrap_or_else(|| panic!("no function_call: {seen}"));
    assert_eq!(call["name"], "exec_command");
    let arguments: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({"cmd": format!("echo {TOOL_OUTPUT}")}));
    assert!(call["call_id"].as_str().is_some_and(|c| !c.is_empty()));
    let usage = &response["usage"];
    assert!(usage["input_tokens"].as_u64().unwrap() > 0, "{seen}");
    assert!(usage["output_tokens"].as_u64().unwrap() > 0, "{seen}");
    let second = &seen["second"];
    assert_eq!(second["headers"]["x-tollgate-provider"], provider);
    assert_eq!(
        second["text"],
        format!("tool said: {TOOL_OUTPUT}"),
        "{seen}"
    );
    if stream {
        for turn in [first, second] {
            let events = turn["events"].as_array().unwrap();
            let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
            assert_eq!(
                types[..2],
                ["response.created", "response.in_progress"],
                "{types:?}"
            );
            assert_eq!(types.last(), Some(&"response.completed"), "{types:?}");
            for (i, e) in events.iter().enumerate() {
                assert_eq!(e["sequence_number"], i, "{types:?}");
            }
        }
        let types = |turn: &Value| -> Vec<String> {
            turn["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["type"].as_str().unwrap().to_owned())
                .collect()
        };
        assert!(types(first).contains(&"response.function_call_arguments.delta".into()));
        assert!(types(first).contains(&"response.function_call_arguments.done".into()));
        assert!(types(second).contains(&"response.output_text.delta".into()));
        assert!(types(second).contains(&"response.output_text.done".into()));
    }
}

/// What Anthropic was sent: a Messages request whose second turn carries the call and its
/// output as `tool_use` and `tool_result`; and nothing of it reached `/responses` but the 503s.
fn assert_anthropic_requests(s: &Setup, stream: bool) {
    let sent = bodies(&s.anthropic, "/v1/messages");
    assert_eq!(sent.len(), 2, "{sent:?}");
    let first = &sent[0];
    assert_eq!(first["model"], "claude-sonnet-4-5");
    assert_eq!(first["system"], "You are a test.\n\nAnswer briefly.");
    assert_eq!(
        first["tools"].as_array().unwrap().len(),
        1,
        "web_search left out"
    );
    assert_eq!(first["tools"][0]["name"], "exec_command");
    assert_eq!(first["stream"].as_bool().unwrap_or(false), stream);
    let turns = sent[1]["messages"].as_array().unwrap();
    let blocks: Vec<&Value> = turns
        .iter()
        .flat_map(|t| t["content"].as_array().into_iter().flatten())
        .collect();
    let tool_use = blocks.iter().find(|b| b["type"] == "tool_use").unwrap();
    let tool_result = blocks.iter().find(|b| b["type"] == "tool_result").unwrap();
    assert_eq!(tool_result["tool_use_id"], tool_use["id"]);
    assert_eq!(tool_use["input"]["cmd"], format!("echo {TOOL_OUTPUT}"));
    // Each turn tried the OpenAI target once (503), never Anthropic's dialect there.
    assert_eq!(bodies(&s.openai, "/responses").len(), 2);
}

/// What the chat-only server was sent: chat requests, never `/responses`.
fn assert_chat_requests(s: &Setup, stream: bool) {
    assert!(bodies(&s.local, "/responses").is_empty());
    let sent = bodies(&s.local, "/chat/completions");
    assert_eq!(sent.len(), 2, "{sent:?}");
    let first = &sent[0];
    assert_eq!(first["model"], "llama-3");
    assert_eq!(
        first["messages"].as_array().unwrap()[..2],
        [
            json!({"role": "system", "content": "You are a test."}),
            json!({"role": "system", "content": "Answer briefly."})
        ]
    );
    assert_eq!(first["tools"].as_array().unwrap().len(), 1);
    assert_eq!(first["tools"][0]["function"]["name"], "exec_command");
    if stream {
        assert_eq!(first["stream_options"], json!({"include_usage": true}));
    }
    let messages = sent[1]["messages"].as_array().unwrap();
    let call = messages
        .iter()
        .find_map(|m| m["tool_calls"].get(0))
        .unwrap();
    let output = messages.iter().find(|m| m["role"] == "tool").unwrap();
    assert_eq!(output["tool_call_id"], call["id"]);
    assert_eq!(output["content"], TOOL_OUTPUT);
}

#[tokio::test]
async fn sdk_responses_fall_back_to_anthropic() {
    let Some(python) = sdk().await else { return };
    let s = setup().await;
    let seen = observe(&python, &s.gw, "translated_anthropic").await;
    assert_round_trip(&seen, &s.gw, "anthropic", false);
    assert_anthropic_requests(&s, false);
}

#[tokio::test]
async fn sdk_responses_streams_fall_back_to_anthropic() {
    let Some(python) = sdk().await else { return };
    let s = setup().await;
    let seen = observe(&python, &s.gw, "translated_anthropic_stream").await;
    assert_round_trip(&seen, &s.gw, "anthropic", true);
    assert_anthropic_requests(&s, true);
}

#[tokio::test]
async fn sdk_responses_reach_a_chat_only_server() {
    let Some(python) = sdk().await else { return };
    let s = setup().await;
    let seen = observe(&python, &s.gw, "translated_chat").await;
    assert_round_trip(&seen, &s.gw, "local", false);
    assert_chat_requests(&s, false);
}

#[tokio::test]
async fn sdk_responses_streams_reach_a_chat_only_server() {
    let Some(python) = sdk().await else { return };
    let s = setup().await;
    let seen = observe(&python, &s.gw, "translated_chat_stream").await;
    assert_round_trip(&seen, &s.gw, "local", true);
    assert_chat_requests(&s, true);
}

async fn post(gw: &Gateway, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(gw.url("/v1/responses"))
        .bearer_auth("client-key")
        .json(&body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn what_cannot_cross_is_refused_naming_the_parameter_and_nothing_is_sent() {
    let s = setup().await;
    for (model, field, value) in [
        ("local", "previous_response_id", json!("resp_1")),
        ("claude", "conversation", json!("conv_1")),
        ("local", "background", json!(true)),
    ] {
        let mut body = json!({"model": model, "input": "hi"});
        body[field] = value;
        let (status, error) = post(&s.gw, body).await;
        assert_eq!(status, 400, "{error}");
        assert_eq!(error["error"]["param"], field, "{error}");
        assert_eq!(error["error"]["type"], "invalid_request_error", "{error}");
    }
    let (status, error) = post(
        &s.gw,
        json!({"model": "claude", "input": "hi", "text": {"format": {"type": "json_object"}}}),
    )
    .await;
    assert_eq!(
        (status, &error["error"]["param"]),
        (400, &json!("text.format")),
        "{error}"
    );
    // With a target that could take it (down), its failure is the answer: a retry may work.
    let (status, error) = post(
        &s.gw,
        json!({"model": "smart", "input": "hi", "conversation": "conv_1"}),
    )
    .await;
    assert_eq!(status, 502, "{error}");
    let (status, error) = post(
        &s.gw,
        json!({"model": "local", "input": "hi", "tools": [{"type": "web_search"}], "tool_choice": {"type": "web_search"}}),
    )
    .await;
    assert_eq!(
        (status, &error["error"]["param"]),
        (400, &json!("tool_choice")),
        "{error}"
    );
    assert!(s.anthropic.requests().is_empty());
    assert!(s.local.requests().is_empty());
}

#[tokio::test]
async fn a_translated_stream_failing_after_its_first_output_ends_with_response_failed() {
    let s = setup().await;
    s.local.script_always("sk-local", Fault::BreakAfter(3));
    let resp = reqwest::Client::new()
        .post(s.gw.url("/v1/responses"))
        .bearer_auth("client-key")
        .json(&json!({"model": "local", "input": "hi", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let last = text.trim_end().rsplit("\n\n").next().unwrap();
    assert!(last.starts_with("event: response.failed\n"), "{text}");
    assert!(text.contains("response.output_text.delta"), "{text}");
    assert!(!text.contains("response.completed"), "{text}");
}
