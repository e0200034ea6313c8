//! The gateway as the official `openai` Python SDK sees it: plain, streamed and embedding calls,
//! error classes, a stream broken mid-way, a stream retried before its first event, a key pool
//! routing around a failing key, and the fallback chain OpenAI → Azure → Anthropic for plain,
//! streamed and tool-calling chat.
//!
//! Each test runs `sdk/client.py SCENARIO` against a real gateway and mock upstream; the script
//! prints one JSON line of what the SDK observed and every assertion is made here. The SDK lives
//! in a virtualenv at `<target>/sdk-venv`, provisioned on first use (see
//! [`tollgate_e2e::openai_sdk`]). When it cannot be provisioned the tests print
//! `SKIPPED: openai SDK unavailable: <reason>` and pass, unless `TOLLGATE_REQUIRE_SDK=1`, which
//! makes them fail with the reason.
// clippy.toml's allow-unwrap-in-tests covers test functions, not the helpers beside them.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed step is a failed test"
)]

use mock_upstream::{Fault, MockConfig, MockHandle};
use serde_json::{json, Value};
use tollgate_e2e::openai_sdk::{observe, sdk};
use tollgate_e2e::{provider, Gateway};

/// Asserts the SDK raised nothing, showing the observation and gateway logs otherwise.
fn assert_no_exception(seen: &Value, gw: &Gateway) {
    assert!(
        seen["exception"].is_null(),
        "the SDK raised: {seen}\ngateway logs:\n{}",
        gw.logs()
    );
}

/// Asserts the SDK got an answer and its `x-tollgate-provider` header names `provider`.
fn assert_served_by(seen: &Value, gw: &Gateway, provider: &str) {
    assert_no_exception(seen, gw);
    let header = &seen["headers"]["x-tollgate-provider"];
    assert_eq!(header, provider, "{seen}\ngateway logs:\n{}", gw.logs());
}

async fn mock() -> MockHandle {
    mock_upstream::start(MockConfig::default()).await.unwrap()
}

/// A mock upstream and a gateway with one default provider "openai" with `keys`.
async fn gateway(keys: &[&str], extra: &str) -> (MockHandle, Gateway) {
    let m = mock().await;
    let toml = format!("{extra}\n{}", provider("openai", &m.base_url(), keys, true));
    let gw = Gateway::start(&toml, &[]).await;
    (m, gw)
}

fn request_body(m: &MockHandle, i: usize) -> Value {
    serde_json::from_slice(&m.requests()[i].body).unwrap()
}

/// Model "smart" on three mock upstreams tried in order: an OpenAI-compatible provider (key
/// "sk-o1"), Azure deployment "my-deployment" ("az-key-1") and Anthropic ("ant-key-1").
struct Chain {
    openai: MockHandle,
    azure: MockHandle,
    anthropic: MockHandle,
    gw: Gateway,
}

/// The chain with the providers named in `down` answering 503 to every request. One attempt
/// per provider, so each failure falls through to the next target at once.
async fn chain(down: &[&str]) -> Chain {
    let (openai, azure, anthropic) = (mock().await, mock().await, mock().await);
    let root = |m: &MockHandle| format!("http://{}", m.addr());
    let toml = format!(
        r#"
providers = [
  {{ name = "openai", base_url = "{}", keys = [{{ id = "o1", secret = "sk-o1" }}] }},
  {{ name = "azure", kind = "azure", base_url = "{}", api_version = "2024-10-21", keys = [{{ id = "az1", secret = "az-key-1" }}] }},
  {{ name = "anthropic", kind = "anthropic", base_url = "{}", api_version = "2023-06-01", keys = [{{ id = "an1", secret = "ant-key-1" }}] }},
]
[retry]
max_attempts = 1
base_delay = "1ms"
[[models]]
name = "smart"
targets = [
  {{ provider = "openai", model = "gpt-4o" }},
  {{ provider = "azure", model = "my-deployment" }},
  {{ provider = "anthropic", model = "claude-sonnet-4-5", max_tokens = 512 }},
]
"#,
        openai.base_url(),
        root(&azure),
        root(&anthropic),
    );
    let gw = Gateway::start(&toml, &[]).await;
    for (name, m, key) in [("openai", &openai, "sk-o1"), ("azure", &azure, "az-key-1")] {
        if down.contains(&name) {
            m.script_always(key, Fault::status(503));
        }
    }
    Chain {
        openai,
        azure,
        anthropic,
        gw,
    }
}

impl Chain {
    /// Upstream requests so far: [openai, azure, anthropic].
    fn counts(&self) -> [usize; 3] {
        [&self.openai, &self.azure, &self.anthropic].map(|m| m.requests().len())
    }

    /// Asserts Azure got `n` requests, all on the deployment URL with its version and key.
    fn assert_azure_deployment_calls(&self, n: usize) {
        let seen = self.azure.requests();
        assert_eq!(seen.len(), n, "{seen:?}");
        for r in &seen {
            assert_eq!(r.path, "/openai/deployments/my-deployment/chat/completions");
            assert_eq!(r.query.as_deref(), Some("api-version=2024-10-21"));
            assert_eq!(r.headers["api-key"], "az-key-1");
            assert!(r.headers.get("authorization").is_none());
        }
    }
}

// ---- scenarios -------------------------------------------------------------------------------

#[tokio::test]
async fn sdk_chat_completion_round_trips() {
    let Some(python) = sdk().await else { return };
    let (m, gw) = gateway(&["k1"], "").await;
    let seen = observe(&python, &gw, "chat").await;
    assert_no_exception(&seen, &gw);
    assert_eq!(seen["content"], "Hello from mock", "{seen}");
    assert_eq!(seen["model"], "gpt-4o-mini");
    let usage = &seen["usage"];
    let (prompt, completion) = (
        usage["prompt_tokens"].as_u64(),
        usage["completion_tokens"].as_u64(),
    );
    assert!(prompt.is_some() && completion.is_some(), "{seen}");
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(prompt.unwrap() + completion.unwrap())
    );
    assert_eq!(seen["headers"]["x-tollgate-provider"], "openai");
    assert_eq!(seen["headers"]["x-tollgate-attempts"], "1");
    let up = &m.requests()[0];
    assert_eq!(
        up.key.as_deref(),
        Some("sk-k1"),
        "the client's key is replaced"
    );
    let agent = up.headers["user-agent"].to_str().unwrap();
    assert!(
        agent.starts_with("OpenAI/Python"),
        "SDK headers pass through: {agent}"
    );
}

#[tokio::test]
async fn sdk_stream_with_include_usage_ends_with_the_usage_chunk() {
    let Some(python) = sdk().await else { return };
    let (m, gw) = gateway(&["k1"], "").await;
    let seen = observe(&python, &gw, "stream").await;
    assert_no_exception(&seen, &gw);
    assert_eq!(seen["content"], "tok0 tok1 ", "{seen}");
    let chunks = seen["chunks"].as_array().unwrap();
    assert_eq!(
        chunks.len(),
        4,
        "3 content chunks and the usage chunk: {seen}"
    );
    assert_eq!(chunks[2]["finish_reason"], "stop");
    let last = &chunks[3];
    assert_eq!(last["choices"], 0, "the usage chunk has no choices: {seen}");
    assert_eq!(last["usage"]["completion_tokens"], 3);
    assert!(chunks[..3].iter().all(|c| c["usage"].is_null()), "{seen}");
    assert_eq!(
        request_body(&m, 0)["stream_options"],
        json!({"include_usage": true})
    );
}

#[tokio::test]
async fn sdk_embeddings_of_two_inputs_are_two_vectors() {
    let Some(python) = sdk().await else { return };
    let (m, gw) = gateway(&["k1"], "").await;
    let seen = observe(&python, &gw, "embeddings").await;
    assert_no_exception(&seen, &gw);
    assert_eq!(seen["count"], 2, "{seen}");
    assert_eq!(seen["indexes"], json!([0, 1]));
    assert_eq!(
        seen["embeddings"],
        json!([[0.1, 0.2, 0.3], [0.1, 0.2, 0.3]])
    );
    assert_eq!(request_body(&m, 0)["input"], json!(["a", "b"]));
}

#[tokio::test]
async fn sdk_raises_not_found_error_for_an_unknown_model() {
    let Some(python) = sdk().await else { return };
    let m = mock().await;
    let toml = format!(
        "{}\n[[models]]\nname = \"fast\"\ntargets = [{{ provider = \"p\", model = \"real-model\" }}]\n",
        provider("p", &m.base_url(), &["k1"], false)
    );
    let gw = Gateway::start(&toml, &[]).await;
    let seen = observe(&python, &gw, "unknown_model").await;
    let e = &seen["exception"];
    assert_eq!(e["class"], "NotFoundError", "{seen}");
    assert_eq!(e["status"], 404);
    assert_eq!(e["code"], "model_not_found");
    assert!(m.requests().is_empty(), "nothing reached the upstream");
}

#[tokio::test]
async fn sdk_raises_api_error_when_a_started_stream_breaks() {
    let Some(python) = sdk().await else { return };
    let (m, gw) = gateway(&["k1"], "[retry]\nmax_attempts = 1").await;
    m.script("sk-k1", [Fault::BreakAfter(2)]);
    let seen = observe(&python, &gw, "stream_catching").await;
    let chunks = seen["chunks"].as_array().unwrap();
    assert!(
        (1..=2).contains(&chunks.len()),
        "the chunks sent before the break arrive: {seen}"
    );
    let e = &seen["exception"];
    let mro = e["mro"].as_array().unwrap();
    assert!(mro.contains(&json!("APIError")), "{seen}");
    assert_eq!(e["code"], "stream_broken", "{seen}");
    let message = e["message"].as_str().unwrap();
    assert!(message.contains("upstream stream failed"), "{message}");
    assert_eq!(m.requests().len(), 1, "a started stream is never retried");
}

#[tokio::test]
async fn sdk_never_sees_a_stream_that_failed_before_its_first_event() {
    let Some(python) = sdk().await else { return };
    let (m, gw) = gateway(&["k1", "k2"], "[retry]\nbase_delay = \"1ms\"").await;
    // A fresh pool's first pick is k1 (round robin from index 0), so the first attempt fails.
    m.script("sk-k1", [Fault::StreamErrorFirst]);
    let seen = observe(&python, &gw, "stream_catching").await;
    assert_no_exception(&seen, &gw);
    let chunks = seen["chunks"].as_array().unwrap();
    assert_eq!(chunks.len(), 3, "{seen}");
    assert_eq!(chunks[2]["finish_reason"], "stop");
    let keys: Vec<_> = m.requests().into_iter().map(|r| r.key).collect();
    assert_eq!(
        keys,
        [Some("sk-k1".to_owned()), Some("sk-k2".to_owned())],
        "retried once, on the other key"
    );
}

#[tokio::test]
async fn sdk_requests_all_succeed_while_one_key_answers_503() {
    let Some(python) = sdk().await else { return };
    let (m, gw) = gateway(&["k1", "k2", "k3"], "[retry]\nbase_delay = \"1ms\"").await;
    m.script_always("sk-k1", Fault::status(503));
    let seen = observe(&python, &gw, "pool").await;
    assert_no_exception(&seen, &gw);
    let results = seen["results"].as_array().unwrap();
    assert_eq!(results.len(), 20);
    for r in results {
        assert_eq!(r["ok"], true, "{r}\ngateway logs:\n{}", gw.logs());
        assert_eq!(r["content"], "Hello from mock");
    }
    let healthy = m.requests_for_key("sk-k2") + m.requests_for_key("sk-k3");
    assert_eq!(
        healthy, 20,
        "each request was answered once by a healthy key"
    );
    assert!(m.requests_for_key("sk-k1") >= 1, "k1 was tried and failed");
}

// ---- fallback chain: OpenAI → Azure → Anthropic ----------------------------------------------

#[tokio::test]
async fn sdk_chat_and_stream_fall_back_from_openai_to_azure() {
    let Some(python) = sdk().await else { return };
    let c = chain(&["openai"]).await;
    let seen = observe(&python, &c.gw, "chain_chat").await;
    assert_served_by(&seen, &c.gw, "azure");
    assert_eq!(seen["content"], "Hello from mock", "{seen}");
    assert_eq!(seen["finish_reason"], "stop");
    assert_eq!(seen["headers"]["x-tollgate-attempts"], "2");
    assert_eq!(c.counts(), [1, 1, 0], "OpenAI failed, Anthropic untouched");
    let seen = observe(&python, &c.gw, "chain_stream").await;
    assert_served_by(&seen, &c.gw, "azure");
    assert_eq!(seen["content"], "tok0 tok1 ", "{seen}");
    let chunks = seen["chunks"].as_array().unwrap();
    assert_eq!(seen["finish_reasons"], json!(["stop"]), "{seen}");
    let last = chunks.last().unwrap();
    assert_eq!(
        last["choices"], 0,
        "the usage chunk ends the stream: {seen}"
    );
    assert_eq!(last["usage"]["completion_tokens"], 3);
    c.assert_azure_deployment_calls(2);
    assert_eq!(request_body(&c.azure, 1)["stream"], true);
    assert_eq!(c.counts(), [2, 2, 0]);
}

#[tokio::test]
async fn sdk_chat_falls_back_to_anthropic_when_openai_and_azure_are_down() {
    let Some(python) = sdk().await else { return };
    let c = chain(&["openai", "azure"]).await;
    let seen = observe(&python, &c.gw, "chain_chat").await;
    assert_served_by(&seen, &c.gw, "anthropic");
    assert_eq!(seen["content"], "Hello from mock", "{seen}");
    assert_eq!(seen["finish_reason"], "stop");
    assert_eq!(seen["model"], "smart", "the model the SDK asked for");
    assert_eq!(seen["headers"]["x-tollgate-attempts"], "3");
    let usage = &seen["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap(),
        "{seen}"
    );
    assert_eq!(c.counts(), [1, 1, 1], "each provider tried once");
    let an = &c.anthropic.requests()[0];
    assert_eq!(an.path, "/v1/messages");
    assert_eq!(an.key.as_deref(), Some("ant-key-1"));
    let sent = request_body(&c.anthropic, 0);
    assert_eq!(sent["model"], "claude-sonnet-4-5");
    assert_eq!(sent["max_tokens"], 512, "the target's default");
}

#[tokio::test]
async fn sdk_stream_with_usage_falls_back_to_anthropic() {
    let Some(python) = sdk().await else { return };
    let c = chain(&["openai", "azure"]).await;
    let seen = observe(&python, &c.gw, "chain_stream").await;
    assert_served_by(&seen, &c.gw, "anthropic");
    assert_eq!(seen["content"], "tok0 tok1 tok2 ", "{seen}");
    let chunks = seen["chunks"].as_array().unwrap();
    assert!(chunks.iter().all(|c| c["model"] == "smart"), "{seen}");
    assert_eq!(seen["finish_reasons"], json!(["stop"]), "{seen}");
    let (last, rest) = chunks.split_last().unwrap();
    assert_eq!(last["choices"], 0, "the usage chunk has no choices: {seen}");
    assert_eq!(last["usage"]["completion_tokens"], 3);
    assert!(rest.iter().all(|c| c["usage"].is_null()), "{seen}");
    assert_eq!(c.counts(), [1, 1, 1]);
    let sent = request_body(&c.anthropic, 0);
    assert_eq!(sent["stream"], true);
    assert!(sent.get("stream_options").is_none(), "{sent}");
}

#[tokio::test]
async fn sdk_tool_call_and_its_result_round_trip_through_anthropic() {
    let Some(python) = sdk().await else { return };
    let c = chain(&["openai", "azure"]).await;
    let seen = observe(&python, &c.gw, "chain_tools").await;
    assert_served_by(&seen, &c.gw, "anthropic");
    assert_eq!(seen["finish_reason"], "tool_calls", "{seen}");
    assert_eq!(seen["model"], "smart");
    let call = &seen["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["name"], "get_weather");
    assert_eq!(seen["arguments"], json!([{"city": "Paris"}]), "{seen}");
    let follow_up = &seen["follow_up"];
    assert_eq!(follow_up["headers"]["x-tollgate-provider"], "anthropic");
    assert_eq!(follow_up["content"], "tool said: sunny", "{seen}");
    assert_eq!(follow_up["finish_reason"], "stop");
    assert_eq!(follow_up["tool_calls"], 0);
    assert_eq!(c.counts(), [2, 2, 2], "both calls went down the chain");
    let first = request_body(&c.anthropic, 0);
    assert_eq!(first["tools"][0]["name"], "get_weather");
    assert_eq!(first["tools"][0]["input_schema"]["type"], "object");
    // The assistant's call becomes a tool_use block, the tool message a user turn holding a
    // tool_result (the strict mock checked the roles alternate).
    let sent = request_body(&c.anthropic, 1);
    let tool_use = &sent["messages"][1]["content"][0];
    assert_eq!(tool_use["type"], "tool_use", "{sent}");
    assert_eq!(tool_use["id"], call["id"]);
    assert_eq!(tool_use["input"], json!({"city": "Paris"}));
    let tool_result = &sent["messages"][2]["content"][0];
    assert_eq!(tool_result["type"], "tool_result", "{sent}");
    assert_eq!(tool_result["tool_use_id"], call["id"]);
}

#[tokio::test]
async fn sdk_streamed_tool_call_falls_back_to_anthropic() {
    let Some(python) = sdk().await else { return };
    let c = chain(&["openai", "azure"]).await;
    let seen = observe(&python, &c.gw, "chain_tools_stream").await;
    assert_served_by(&seen, &c.gw, "anthropic");
    assert_eq!(seen["indexes"], json!([0]), "one tool call: {seen}");
    let call = &seen["tool_calls"][0];
    assert_eq!(call["name"], "get_weather", "{seen}");
    assert!(call["id"].is_string(), "{seen}");
    assert_eq!(seen["arguments"], json!([{"city": "Paris"}]), "{seen}");
    assert_eq!(seen["finish_reasons"], json!(["tool_calls"]), "{seen}");
    assert_eq!(c.counts(), [1, 1, 1]);
    assert_eq!(request_body(&c.anthropic, 0)["stream"], true);
}
