//! The gateway as Claude Code sees it: `claude -p` (the real binary, pinned in
//! [`tollgate_e2e::claude_code_cli::CLAUDE_CODE_VERSION`]) with `ANTHROPIC_BASE_URL` pointed at
//! the gateway's Messages API, in front of the mock upstream:
//!
//! - a plain turn to an `anthropic` provider, forwarded natively (Claude Code's betas allowed
//!   by `anthropic_beta = ["*"]`, its `context_management` and `system` as sent);
//! - a `Bash` round trip through an OpenAI-compatible provider: Claude Code's stream and tool
//!   call translated to Chat Completions and back;
//! - an unknown client key: the Anthropic-shaped 401 Claude Code reports.
//!
//! Claude Code is installed with npm under `<target>/claude-code` on first use; without npm
//! these tests print `SKIPPED: Claude Code ... unavailable: <reason>` and pass, unless
//! `TOLLGATE_REQUIRE_CLAUDE_CODE=1` (set by `.ci/run`).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use mock_upstream::{MockHandle, Recorded, TOOL_MARKER, TOOL_OUTPUT};
use serde_json::Value;
use tollgate_e2e::claude_code_cli::{claude, print, ClaudeRun};
use tollgate_e2e::{mock, Gateway};

/// The gateway key Claude Code sends as `ANTHROPIC_API_KEY`.
const KEY: &str = "client-key";
/// The model Claude Code asks for (it warns on stderr that the name is retired).
const MODEL: &str = "claude-sonnet-4-5";
/// What the mock's Anthropic route streams when it neither calls a tool nor reports on one:
/// its default answer ("Hello from mock" unstreamed) as `tok<n> ` deltas, one per chunk
/// (three by default). Claude Code always streams.
const MOCK_STREAMED_TEXT: &str = "tok0 tok1 tok2";

/// A gateway with the client [`KEY`] and model [`MODEL`] going to `provider`, one
/// `[[providers]]` block named "up", as `target_model`.
async fn gateway(provider: &str, target_model: &str) -> Gateway {
    let toml = format!(
        r#"
[[clients]]
name = "team"
key = "{KEY}"

{provider}
[retry]
max_attempts = 1

[[models]]
name = "{MODEL}"
targets = [{{ provider = "up", model = "{target_model}" }}]
"#
    );
    Gateway::start(&toml, &[]).await
}

/// The gateway's root (`http://127.0.0.1:PORT`), as `ANTHROPIC_BASE_URL` wants it.
fn root(gw: &Gateway) -> String {
    gw.url("")
}

fn body(r: &Recorded) -> Value {
    serde_json::from_slice(&r.body).unwrap()
}

fn paths(m: &MockHandle) -> Vec<String> {
    m.requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

/// Asserts the run exited cleanly with the JSON output of a turn that ended well.
fn assert_clean_run(run: &ClaudeRun, gw: &Gateway) {
    let ok = run.status.success()
        && !run.timed_out
        && run.json().is_some_and(|v| v["is_error"] == false);
    assert!(ok, "{}\ngateway logs:\n{}", run.transcript(), gw.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_turn_through_an_anthropic_target() {
    let Some(claude) = claude().await else { return };
    let m = mock().await;
    let provider = format!(
        r#"[[providers]]
name = "up"
kind = "anthropic"
base_url = "http://{}"
anthropic_beta = ["*"]
keys = [{{ id = "an1", secret = "ant-key-1" }}]
"#,
        m.addr()
    );
    let gw = gateway(&provider, "claude-sonnet-4-5-20250929").await;

    let run = print(&claude, &root(&gw), KEY, MODEL, "say hi", &[]).await;

    assert_clean_run(&run, &gw);
    assert_eq!(
        run.result().trim(),
        MOCK_STREAMED_TEXT,
        "{}",
        run.transcript()
    );
    let sent: Vec<Recorded> = m
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == "/v1/messages")
        .collect();
    assert!(!sent.is_empty(), "no /v1/messages: {:?}", paths(&m));
    assert!(
        m.requests().iter().all(|r| r.key.as_deref() != Some(KEY)),
        "the client's key reached the upstream"
    );
    for r in &sent {
        assert_eq!(r.headers["x-api-key"], "ant-key-1", "the provider's key");
        let beta = r.headers["anthropic-beta"].to_str().unwrap();
        assert!(
            beta.contains("context-management-2025-06-27"),
            "betas not forwarded: {beta}"
        );
        let b = body(r);
        assert_eq!(b["model"], "claude-sonnet-4-5-20250929");
        // Native: Claude Code's body as sent, beta fields included.
        assert!(b.get("context_management").is_some(), "{b}");
        assert!(b["system"].is_array(), "{b}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bash_round_trip_through_a_chat_target() {
    let Some(claude) = claude().await else { return };
    let m = mock().await;
    let provider = format!(
        r#"[[providers]]
name = "up"
kind = "openai"
base_url = "{}"
keys = [{{ id = "o1", secret = "sk-o1" }}]
"#,
        m.base_url()
    );
    let gw = gateway(&provider, "gpt-4.1").await;

    let prompt = format!("run the check {TOOL_MARKER}");
    let run = print(
        &claude,
        &root(&gw),
        KEY,
        MODEL,
        &prompt,
        &["--allowedTools", "Bash"],
    )
    .await;

    assert_clean_run(&run, &gw);
    // Claude Code appends a <system-reminder> to the tool's output, and the mock repeats it.
    let result = run.result();
    assert!(
        result.starts_with(&format!("tool said: {TOOL_OUTPUT}")),
        "{}",
        run.transcript()
    );
    let requests = m.requests();
    assert!(
        requests.iter().all(|r| r.path == "/v1/chat/completions"),
        "only chat completions upstream: {:?}",
        paths(&m)
    );
    assert_eq!(requests.len(), 2, "{:?}\n{}", paths(&m), run.transcript());
    let first = body(&requests[0]);
    assert_eq!(first["model"], "gpt-4.1");
    assert_eq!(first["stream"], true);
    let has_bash = first["tools"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["function"]["name"] == "Bash");
    assert!(has_bash, "no Bash function offered: {}", first["tools"]);
    let second = body(&requests[1]);
    let tool = second["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "tool")
        .unwrap_or_else(|| panic!("no tool message in the follow-up: {second}"));
    let output = tool["content"].as_str().unwrap_or_default();
    assert!(output.starts_with(TOOL_OUTPUT), "{tool}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_client_key_is_an_anthropic_401_claude_code_prints() {
    let Some(claude) = claude().await else { return };
    let m = mock().await;
    let provider = format!(
        r#"[[providers]]
name = "up"
kind = "anthropic"
base_url = "http://{}"
keys = [{{ id = "an1", secret = "ant-key-1" }}]
"#,
        m.addr()
    );
    let gw = gateway(&provider, "claude-sonnet-4-5-20250929").await;

    let run = print(&claude, &root(&gw), "not-a-key", MODEL, "say hi", &[]).await;

    assert!(
        !run.status.success() && !run.timed_out,
        "{}\ngateway logs:\n{}",
        run.transcript(),
        gw.logs()
    );
    // Claude Code words it itself ("Invalid API key · …" or "API Error: 401 <message>"); what
    // it read is in its JSON result.
    assert_eq!(
        run.json().map(|v| v["api_error_status"].clone()),
        Some(Value::from(401)),
        "{}",
        run.transcript()
    );
    assert_eq!(
        run.json().map(|v| v["api_error_type"].clone()),
        Some(Value::from("authentication_error")),
        "{}",
        run.transcript()
    );
    assert!(m.requests().is_empty(), "reached upstream: {:?}", paths(&m));
}
