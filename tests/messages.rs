//! Anthropic's Messages API in front (`/v1/messages`, what Claude Code and the `anthropic` SDK
//! speak), driven by the official `anthropic` Python SDK (`sdk/anthropic_client.py`) through
//!
//! - model `claude-chain`: [an OpenAI provider answering 503, Anthropic]: the Anthropic target
//!   answers natively (the body forwarded as sent, the model renamed);
//! - model `gpt-chain`: [an Anthropic provider answering 529, an OpenAI-compatible server]: the
//!   request translated to Chat Completions and the answer back into Anthropic's shape;
//! - model `claude-pool`: Anthropic with two keys, for the retries a client must never see.
//!
//! The SDK is provisioned with the `openai` one (`TOLLGATE_REQUIRE_SDK`); without it the tests
//! that need it print `SKIPPED` and pass.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use mock_upstream::{Fault, MockConfig, MockHandle, Recorded, TOOL_OUTPUT};
use serde_json::{json, Value};
use tollgate_e2e::openai_sdk::{observe_anthropic, sdk};
use tollgate_e2e::Gateway;

const KEY: &str = "client-key";

struct Setup {
    anthropic: MockHandle,
    openai: MockHandle,
    gw: Gateway,
}

async fn setup() -> Setup {
    let anthropic = mock_upstream::start(MockConfig::default()).await.unwrap();
    let openai = mock_upstream::start(MockConfig::default()).await.unwrap();
    let toml = format!(
        r#"
[[clients]]
name = "team"
key = "{KEY}"
rpm = 1000

[[providers]]
name = "anthropic"
kind = "anthropic"
base_url = "http://{anthropic}"
anthropic_beta = ["context-management-2025-06-27"]
keys = [{{ id = "an1", secret = "ant-key-1" }}, {{ id = "an2", secret = "ant-key-2" }}]

[[providers]]
name = "anthropic-down"
kind = "anthropic"
base_url = "http://{anthropic}"
keys = [{{ id = "ad", secret = "ant-down" }}]

[[providers]]
name = "openai"
base_url = "{openai}"
keys = [{{ id = "o1", secret = "sk-o1" }}]

[[providers]]
name = "openai-down"
base_url = "{openai}"
keys = [{{ id = "od", secret = "sk-down" }}]

[retry]
max_attempts = 3
base_delay = "1ms"

[[models]]
name = "claude-chain"
targets = [
  {{ provider = "openai-down", model = "gpt-4.1" }},
  {{ provider = "anthropic", model = "claude-sonnet-4-5-20250929" }},
]

[[models]]
name = "gpt-chain"
targets = [
  {{ provider = "anthropic-down", model = "claude-sonnet-4-5-20250929" }},
  {{ provider = "openai", model = "gpt-4.1" }},
]

[[models]]
name = "claude-pool"
targets = [{{ provider = "anthropic", model = "claude-sonnet-4-5-20250929" }}]

[[models]]
name = "gpt-only"
targets = [{{ provider = "openai", model = "gpt-4.1" }}]
"#,
        anthropic = anthropic.addr(),
        openai = openai.base_url(),
    );
    let gw = Gateway::start(&toml, &[]).await;
    openai.script_always("sk-down", Fault::status(503));
    anthropic.script_always("ant-down", Fault::status(529));
    Setup {
        anthropic,
        openai,
        gw,
    }
}

fn sent(m: &MockHandle, key: &str) -> Vec<Recorded> {
    m.requests()
        .into_iter()
        .filter(|r| r.key.as_deref() == Some(key))
        .collect()
}

fn body(r: &Recorded) -> Value {
    serde_json::from_slice(&r.body).unwrap()
}

/// The text blocks of a message the SDK parsed, joined.
fn text(message: &Value) -> String {
    message["content"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["text"].as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_and_streamed_messages_reach_an_anthropic_target_natively() {
    let Some(python) = sdk().await else { return };
    let s = setup().await;
    for scenario in ["plain", "stream"] {
        s.anthropic.clear_requests();
        let seen = observe_anthropic(&python, &s.gw, scenario, "claude-chain", KEY).await;
        assert!(seen.get("exception").is_none(), "{seen}\n{}", s.gw.logs());
        let message = &seen["message"];
        assert_eq!(message["role"], "assistant", "{seen}");
        assert_eq!(message["stop_reason"], "end_turn");
        assert!(!text(message).is_empty(), "{seen}");
        assert!(message["usage"]["output_tokens"].as_u64().unwrap() > 0);
        assert_eq!(seen["headers"]["x-tollgate-provider"], "anthropic");
        // After the OpenAI target's 503s: a fallback the client never saw.
        let attempts: u32 = seen["headers"]["x-tollgate-attempts"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(attempts >= 2, "{seen}");
        let reqs = sent(&s.anthropic, "ant-key-1")
            .into_iter()
            .chain(sent(&s.anthropic, "ant-key-2"))
            .collect::<Vec<_>>();
        assert_eq!(reqs.len(), 1, "one request to Anthropic");
        let r = &reqs[0];
        assert_eq!(r.path, "/v1/messages");
        assert_eq!(r.headers["anthropic-version"], "2023-06-01");
        assert!(r.headers.get("authorization").is_none());
        let b = body(r);
        assert_eq!(b["model"], "claude-sonnet-4-5-20250929");
        assert_eq!(b["messages"], json!([{"role": "user", "content": "hi"}]));
        // The OpenAI target was asked in chat's shape.
        let chat = sent(&s.openai, "sk-down");
        assert!(chat.iter().all(|r| r.path == "/v1/chat/completions"));
        assert!(!chat.is_empty());
        if scenario == "stream" {
            let types: Vec<&str> = seen["events"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|e| e["type"].as_str())
                .collect();
            assert_eq!(types.first(), Some(&"message_start"), "{types:?}");
            assert_eq!(types.last(), Some(&"message_stop"), "{types:?}");
        }
    }
}

/// Asserts one tool round trip as the SDK saw it: a `Bash` call, then "tool said: …".
fn assert_round_trip(seen: &Value, gw: &Gateway) {
    assert!(seen.get("exception").is_none(), "{seen}\n{}", gw.logs());
    let first = &seen["first"]["message"];
    assert_eq!(first["stop_reason"], "tool_use", "{seen}");
    let call = first["content"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "tool_use")
        .expect("a tool_use block");
    assert_eq!(call["name"], "Bash");
    assert_eq!(call["input"]["command"], format!("echo {TOOL_OUTPUT}"));
    let second = &seen["second"]["message"];
    assert_eq!(text(second), format!("tool said: {TOOL_OUTPUT}"), "{seen}");
    assert_eq!(second["stop_reason"], "end_turn");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_round_trip_through_anthropic_and_through_a_chat_target() {
    let Some(python) = sdk().await else { return };
    let s = setup().await;
    for scenario in ["tools", "tools_stream"] {
        // Anthropic, natively: tools and cache_control as sent, web_search included.
        s.anthropic.clear_requests();
        let seen = observe_anthropic(&python, &s.gw, scenario, "claude-pool", KEY).await;
        assert_round_trip(&seen, &s.gw);
        let reqs = sent(&s.anthropic, "ant-key-1")
            .into_iter()
            .chain(sent(&s.anthropic, "ant-key-2"))
            .collect::<Vec<_>>();
        assert_eq!(reqs.len(), 2);
        let b = body(&reqs[1]);
        assert_eq!(b["tools"][0]["cache_control"], json!({"type": "ephemeral"}));
        assert_eq!(b["tools"][1]["type"], "web_search_20250305");
        assert_eq!(
            b["system"][1]["cache_control"],
            json!({"type": "ephemeral"})
        );
        assert_eq!(b["messages"][2]["content"][0]["type"], "tool_result");

        // A chat target, after the Anthropic target's 529s: translated both ways.
        s.openai.clear_requests();
        let seen = observe_anthropic(&python, &s.gw, scenario, "gpt-chain", KEY).await;
        assert_round_trip(&seen, &s.gw);
        assert_eq!(seen["first"]["headers"]["x-tollgate-provider"], "openai");
        assert_eq!(
            seen["first"]["headers"]["x-tollgate-dropped-tools"], "web_search",
            "{seen}"
        );
        let reqs = sent(&s.openai, "sk-o1");
        assert_eq!(reqs.len(), 2);
        assert!(reqs.iter().all(|r| r.path == "/v1/chat/completions"));
        let first = body(&reqs[0]);
        assert_eq!(first["model"], "gpt-4.1");
        assert_eq!(
            first["messages"][0],
            json!({"role": "system", "content": "You are a test.\n\nAnswer briefly."})
        );
        assert_eq!(
            first["tools"].as_array().unwrap().len(),
            1,
            "web_search left out"
        );
        assert_eq!(first["tools"][0]["function"]["name"], "Bash");
        assert!(first["tools"][0].get("cache_control").is_none());
        let second = body(&reqs[1]);
        let tool = second["messages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["role"] == "tool")
            .expect("a tool message");
        assert_eq!(tool["content"], TOOL_OUTPUT);
        if scenario == "tools_stream" {
            assert_eq!(first["stream"], true);
            assert_eq!(first["stream_options"]["include_usage"], true);
            // Usage mapped back: the chat target's real counts in the final message.
            let usage = &seen["second"]["message"]["usage"];
            assert!(usage["output_tokens"].as_u64().unwrap() > 0, "{seen}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_529_and_an_overloaded_error_before_the_first_block_are_retried_invisibly() {
    let Some(python) = sdk().await else { return };
    let s = setup().await;
    // Each key fails once: the third attempt answers.
    for key in ["ant-key-1", "ant-key-2"] {
        s.anthropic.script(key, [Fault::status(529)]);
    }
    let seen = observe_anthropic(&python, &s.gw, "plain", "claude-pool", KEY).await;
    assert!(seen.get("exception").is_none(), "{seen}\n{}", s.gw.logs());
    assert_eq!(seen["headers"]["x-tollgate-attempts"], "3", "{seen}");
    s.anthropic.clear();
    for key in ["ant-key-1", "ant-key-2"] {
        s.anthropic.script(key, [Fault::StreamErrorFirst]);
    }
    let seen = observe_anthropic(&python, &s.gw, "stream", "claude-pool", KEY).await;
    assert!(seen.get("exception").is_none(), "{seen}\n{}", s.gw.logs());
    assert_eq!(seen["headers"]["x-tollgate-attempts"], "3", "{seen}");
    let types: Vec<&str> = seen["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert_eq!(
        types.iter().filter(|t| **t == "message_start").count(),
        1,
        "one message_start: {types:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_break_after_the_first_block_ends_with_an_error_event_the_sdk_raises() {
    let Some(python) = sdk().await else { return };
    let s = setup().await;
    // message_start, content_block_start, deltas: then the connection drops.
    for key in ["ant-key-1", "ant-key-2"] {
        s.anthropic.script(key, [Fault::BreakAfter(5)]);
    }
    let seen = observe_anthropic(&python, &s.gw, "stream", "claude-pool", KEY).await;
    let e = &seen["exception"];
    assert!(
        e["mro"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "APIStatusError" || c == "APIError"),
        "{seen}\n{}",
        s.gw.logs()
    );
    assert!(
        e["message"].as_str().unwrap().contains("upstream"),
        "{seen}"
    );
    // Through a chat target too: the translated stream ends with the same error event.
    s.openai.script("sk-o1", [Fault::BreakAfter(3)]);
    let seen = observe_anthropic(&python, &s.gw, "stream", "gpt-chain", KEY).await;
    assert!(seen["exception"]["mro"].as_array().is_some(), "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_tokens_is_anthropics_or_the_gateways_estimate() {
    let Some(python) = sdk().await else { return };
    let s = setup().await;
    let seen = observe_anthropic(&python, &s.gw, "count", "claude-pool", KEY).await;
    assert!(seen.get("exception").is_none(), "{seen}\n{}", s.gw.logs());
    let counted = sent(&s.anthropic, "ant-key-1")
        .into_iter()
        .chain(sent(&s.anthropic, "ant-key-2"))
        .collect::<Vec<_>>();
    assert_eq!(counted.len(), 1);
    assert_eq!(counted[0].path, "/v1/messages/count_tokens");
    assert_eq!(
        seen["input_tokens"].as_u64().unwrap() as usize,
        counted[0].body.len().div_ceil(4),
        "the mock's count"
    );
    // A model with no Anthropic target: the gateway's own estimate, nothing sent.
    s.openai.clear_requests();
    let seen = observe_anthropic(&python, &s.gw, "count", "gpt-only", KEY).await;
    assert!(seen.get("exception").is_none(), "{seen}\n{}", s.gw.logs());
    let estimate = seen["input_tokens"].as_u64().unwrap();
    assert!((5..100).contains(&estimate), "{seen}");
    assert!(s.openai.requests().is_empty());
}

/// A raw request to the Messages API, for what the SDK hides.
async fn post(gw: &Gateway, key: &str, body: Value, headers: &[(&str, &str)]) -> reqwest::Response {
    let root = gw.base_url();
    let root = root.strip_suffix("/v1").unwrap();
    let mut req = reqwest::Client::new()
        .post(format!("{root}/v1/messages?beta=true"))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .json(&body);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_anthropic_shaped_and_betas_pass_only_where_allowed() {
    let s = setup().await;
    let hi = json!({"model": "claude-pool", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]});
    // An unknown gateway key: 401 authentication_error, before anything is sent.
    let resp = post(&s.gw, "nope", hi.clone(), &[]).await;
    assert_eq!(resp.status(), 401);
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["type"], "error");
    assert_eq!(e["error"]["type"], "authentication_error", "{e}");
    // An unknown model: 404 not_found_error.
    let mut unknown = hi.clone();
    unknown["model"] = json!("nobody");
    let resp = post(&s.gw, KEY, unknown, &[]).await;
    assert_eq!(resp.status(), 404);
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["error"]["type"], "not_found_error", "{e}");
    // Every key overloaded: Anthropic's 529 with a retry-after Claude Code's retries read.
    for key in ["ant-key-1", "ant-key-2"] {
        s.anthropic.script_always(key, Fault::status(529));
    }
    let resp = post(&s.gw, KEY, hi.clone(), &[]).await;
    let status = resp.status().as_u16();
    assert!(status == 529, "{status}");
    assert!(resp.headers().get("retry-after").is_some());
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["error"]["type"], "overloaded_error", "{e}");
    s.anthropic.clear();

    // Claude Code's betas: only the allowed flag reaches Anthropic, and the field it enables
    // is accepted there; the others are dropped.
    let mut with_cm = hi.clone();
    with_cm["context_management"] = json!({"edits": []});
    s.anthropic.clear_requests();
    let betas =
        "claude-code-20250219,context-management-2025-06-27,interleaved-thinking-2025-05-14";
    let resp = post(&s.gw, KEY, with_cm.clone(), &[("anthropic-beta", betas)]).await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let r = &s.anthropic.requests()[0];
    assert_eq!(r.headers["anthropic-beta"], "context-management-2025-06-27");
    assert_eq!(
        r.query, None,
        "the client's ?beta=true stays at the gateway"
    );
    // A Messages error passed through from the upstream stays Anthropic's.
    let mut bad = hi.clone();
    bad["max_tokens"] = json!(0);
    let resp = post(&s.gw, KEY, bad, &[]).await;
    assert_eq!(resp.status(), 400);
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["error"]["type"], "invalid_request_error", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_tokens"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claude_code_session_stays_on_one_key() {
    let s = setup().await;
    let turn = |session: &str| {
        let user_id =
            json!({"device_id": "d", "account_uuid": "", "session_id": session}).to_string();
        json!({"model": "claude-pool", "max_tokens": 16, "metadata": {"user_id": user_id},
               "messages": [{"role": "user", "content": "hi"}]})
    };
    // By the session in `metadata.user_id`, and by the header alone: many sessions, each
    // one key every turn (and both keys used across sessions).
    let mut keys_used = std::collections::HashSet::new();
    for n in 0..8 {
        let session = format!("8f1c2d9e-0000-4000-8000-00000000000{n}");
        let mut keys = std::collections::HashSet::new();
        for _ in 0..3 {
            let resp = post(&s.gw, KEY, turn(&session), &[]).await;
            assert_eq!(resp.status(), 200);
            keys.insert(
                resp.headers()["x-tollgate-key"]
                    .to_str()
                    .unwrap()
                    .to_owned(),
            );
            let hi = json!({"model": "claude-pool", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]});
            let header = [("x-claude-code-session-id", session.as_str())];
            let resp = post(&s.gw, KEY, hi, &header).await;
            keys.insert(
                resp.headers()["x-tollgate-key"]
                    .to_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        assert_eq!(keys.len(), 1, "session {session}: {keys:?}");
        keys_used.extend(keys);
    }
    assert_eq!(keys_used.len(), 2, "sessions spread over the keys");
}
