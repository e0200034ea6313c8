//! The gateway as Codex CLI sees it: `codex exec` (the real binary, pinned in
//! [`tollgate_e2e::codex_cli::CODEX_VERSION`]) with a model provider pointed at the gateway, in
//! front of the mock upstream speaking the Responses API.
//!
//! - a plain turn;
//! - a turn whose first key fails inside the stream (`response.failed` with
//!   `rate_limit_exceeded` right after `response.created`): the gateway must try the next key
//!   before anything reaches Codex, so Codex never prints `Reconnecting... n/5`;
//! - a tool call round trip: the mock asks for `exec_command`, Codex runs it and sends the
//!   output back as a `function_call_output`.
//!
//! Codex is installed with npm under `<target>/codex` on first use; without npm these tests
//! print `SKIPPED: Codex CLI ... unavailable: <reason>` and pass, unless
//! `TOLLGATE_REQUIRE_CODEX=1` (set by `.ci/run`).
// clippy.toml's allow-unwrap-in-tests covers test functions, not the helpers beside them.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed step is a failed test"
)]

use mock_upstream::{Fault, MockHandle, Recorded, TOOL_MARKER, TOOL_OUTPUT};
use serde_json::Value;
use std::time::Duration;
use tollgate_e2e::codex_cli::{self, codex, exec, CodexRun};
use tollgate_e2e::{metric, mock, provider, Gateway};

/// The model Codex asks for; the mock answers any.
const MODEL: &str = "gpt-test";
/// What the mock says when it neither calls a tool nor reports on one.
const MOCK_TEXT: &str = "Hello from mock";

/// A mock upstream and a gateway with one default provider "openai" holding `keys`
/// (secrets `sk-<id>`), tried in the order given.
async fn gateway(keys: &[&str]) -> (MockHandle, Gateway) {
    let m = mock().await;
    let gw = Gateway::start(&provider("openai", &m.base_url(), keys, true), &[]).await;
    (m, gw)
}

/// The `POST .../responses` requests the mock received.
fn responses_requests(m: &MockHandle) -> Vec<Recorded> {
    m.requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/responses"))
        .collect()
}

fn json_body(r: &Recorded) -> Value {
    serde_json::from_slice(&r.body).unwrap()
}

/// Asserts the turn ended well, without Codex retrying anything.
fn assert_clean_turn(run: &CodexRun, gw: &Gateway) {
    assert!(
        run.status.success() && !run.timed_out,
        "{}\ngateway logs:\n{}",
        run.transcript(),
        gw.logs()
    );
    assert!(
        run.error_lines().is_empty(),
        "Codex printed errors or reconnected: {:?}\n{}\ngateway logs:\n{}",
        run.error_lines(),
        run.transcript(),
        gw.logs()
    );
}

#[tokio::test]
async fn plain_turn() {
    let Some(codex) = codex().await else { return };
    let (m, gw) = gateway(&["k1"]).await;

    let run = exec(&codex, &gw.base_url(), "client-key", MODEL, "say hi", &[]).await;

    assert_clean_turn(&run, &gw);
    assert_eq!(run.stdout.trim(), MOCK_TEXT, "{}", run.transcript());
    let sent = responses_requests(&m);
    assert_eq!(sent.len(), 1, "{}", run.transcript());
    let body = json_body(&sent[0]);
    assert_eq!(body["model"], MODEL);
    assert_eq!(body["stream"], true);
    // Codex's session id reaches the upstream in both places the prompt cache can key on.
    let session = sent[0]
        .headers
        .get("session-id")
        .unwrap_or_else(|| panic!("no session-id header upstream: {:?}", sent[0].headers))
        .to_str()
        .unwrap();
    assert_eq!(body["prompt_cache_key"], session);
    assert_eq!(sent[0].key.as_deref(), Some("sk-k1"));
}

#[tokio::test]
async fn in_stream_rate_limit_on_the_first_key_is_retried_before_codex_sees_it() {
    let Some(codex) = codex().await else { return };
    // "bad" is listed first, so the first attempt of the first request goes to it (with sticky
    // sessions off: Codex's session would otherwise pick its own key).
    let m = mock().await;
    let gw = Gateway::start(
        &format!(
            "[retry]\nsticky_sessions = false\n{}",
            provider("openai", &m.base_url(), &["bad", "good"], true)
        ),
        &[],
    )
    .await;
    m.script_always(
        "sk-bad",
        Fault::response_rate_limited(Duration::from_secs(5)),
    );

    let run = exec(&codex, &gw.base_url(), "client-key", MODEL, "say hi", &[]).await;

    let metrics = gw.metrics().await;
    assert!(
        m.requests_for_key("sk-bad") >= 1,
        "the failing key was never tried, so this test shows nothing\n{}",
        run.transcript()
    );
    assert!(
        run.error_lines().is_empty(),
        "Codex saw the first key's in-stream rate limit and reconnected: the gateway forwarded \
         response.failed instead of trying the next key before committing the stream. \
         Codex printed: {:?}\n{}\ngateway logs:\n{}",
        run.error_lines(),
        run.transcript(),
        gw.logs()
    );
    assert_clean_turn(&run, &gw);
    assert_eq!(run.stdout.trim(), MOCK_TEXT, "{}", run.transcript());
    assert_eq!(
        m.requests_for_key("sk-bad"),
        1,
        "the rate-limited key was tried again before its 5s were up"
    );
    assert_eq!(m.requests_for_key("sk-good"), 1);
    let rate_limited = metric(
        &metrics,
        r#"tollgate_upstream_attempts_total{key="bad",outcome_kind="rate_limited",provider="openai"}"#,
    );
    let cooling = metric(
        &metrics,
        r#"tollgate_key_state{key="bad",provider="openai",state="cooling"}"#,
    );
    assert!(
        rate_limited >= 1.0 && cooling == 1.0,
        "the failing key was not counted as rate limited ({rate_limited}) and cooled \
         ({cooling}):\n{metrics}"
    );
}

/// A turn asking for the mock's tool call, which Codex must run and answer cleanly. The sandbox
/// is off so the test does not depend on the machine's user namespaces; the command is the
/// mock's fixed `echo tollgate-tool-ok`.
async fn tool_turn(codex: &std::path::Path, gw: &Gateway) -> CodexRun {
    let prompt = format!("run the check {TOOL_MARKER}");
    let run = exec(
        codex,
        &gw.base_url(),
        "client-key",
        MODEL,
        &prompt,
        &["-s", "danger-full-access"],
    )
    .await;
    assert_clean_turn(&run, gw);
    assert!(
        run.stderr.contains("echo tollgate-tool-ok"),
        "Codex did not run the call:\n{}",
        run.transcript()
    );
    run
}

#[tokio::test]
async fn tool_call_round_trip() {
    let Some(codex) = codex().await else { return };
    let (m, gw) = gateway(&["k1"]).await;

    let run = tool_turn(&codex, &gw).await;
    let sent = responses_requests(&m);
    assert_eq!(sent.len(), 2, "{}", run.transcript());
    let first = json_body(&sent[0]);
    let has_exec = first["tools"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["name"] == "exec_command");
    assert!(has_exec, "Codex offered no exec_command tool: {first}");
    let input = json_body(&sent[1])["input"].as_array().unwrap().clone();
    let call = input
        .iter()
        .find(|i| i["type"] == "function_call")
        .unwrap_or_else(|| panic!("no function_call in the follow-up: {input:?}"));
    assert_eq!(call["name"], "exec_command");
    let output = input
        .iter()
        .find(|i| i["type"] == "function_call_output")
        .unwrap_or_else(|| panic!("no function_call_output in the follow-up: {input:?}"));
    assert_eq!(output["call_id"], call["call_id"]);
    assert!(
        output["output"].as_str().unwrap().contains(TOOL_OUTPUT),
        "{output}"
    );
    // The mock's last word repeats the tool's output.
    assert!(run.stdout.contains(TOOL_OUTPUT), "{}", run.transcript());
}

#[tokio::test]
async fn the_built_in_provider_falls_back_to_http_after_one_426() {
    let Some(codex) = codex().await else { return };
    let (m, gw) = gateway(&["k1"]).await;

    let run = codex_cli::exec_via(
        codex_cli::Via::BuiltIn,
        &codex,
        &gw.base_url(),
        "client-key",
        MODEL,
        "say hi",
        &[],
    )
    .await;

    assert_clean_turn(&run, &gw);
    assert_eq!(run.stdout.trim(), MOCK_TEXT, "{}", run.transcript());
    assert_eq!(responses_requests(&m).len(), 1, "{}", run.transcript());
    assert!(
        m.requests().iter().all(|r| r.method == "POST"),
        "the WebSocket attempt never reached the upstream: {:?}",
        m.requests()
            .iter()
            .map(|r| (&r.method, &r.path))
            .collect::<Vec<_>>()
    );
    let upgrades = gw
        .logs()
        .lines()
        .filter(|l| l.contains("\"message\":\"request\"") && l.contains("\"status\":426"))
        .count();
    assert_eq!(
        upgrades,
        1,
        "one WebSocket try, answered 426: {}",
        gw.logs()
    );
}

/// A gateway whose model [`MODEL`] has one working target that does not speak the Responses
/// API: `anthropic` (behind an OpenAI provider answering 503 to everything) or `chat` (a
/// chat-only OpenAI-compatible server, `responses = "chat"`, whose `/responses` is a 404).
async fn translating_gateway(target: &str) -> (MockHandle, MockHandle, Gateway) {
    let openai = mock().await;
    let other = mock_upstream::start(mock_upstream::MockConfig {
        responses_api: false,
        ..mock_upstream::MockConfig::default()
    })
    .await
    .unwrap();
    let (kind, base_url) = match target {
        "anthropic" => ("anthropic", format!("http://{}", other.addr())),
        _ => ("openai\", responses = \"chat", other.base_url()),
    };
    let toml = format!(
        r#"
providers = [
  {{ name = "openai", base_url = "{}", keys = [{{ id = "o1", secret = "sk-o1" }}] }},
  {{ name = "other", kind = "{kind}", base_url = "{base_url}", keys = [{{ id = "t1", secret = "sk-t1" }}] }},
]
[retry]
max_attempts = 1
base_delay = "1ms"
[[models]]
name = "{MODEL}"
targets = [{{ provider = "openai" }}, {{ provider = "other", model = "target-model", max_tokens = 2048 }}]
"#,
        openai.base_url(),
    );
    openai.script_always("sk-o1", Fault::status(503));
    let gw = Gateway::start(&toml, &[]).await;
    (openai, other, gw)
}

/// Codex's tool round trip when its model's only working target is `target`: the call comes
/// back as a Responses `function_call` Codex runs, and its output goes back translated.
async fn tool_round_trip_through(target: &str, path: &str) {
    let Some(codex) = codex().await else { return };
    let (openai, other, gw) = translating_gateway(target).await;
    let run = tool_turn(&codex, &gw).await;
    assert!(run.stdout.contains(TOOL_OUTPUT), "{}", run.transcript());
    let sent: Vec<Value> = other
        .requests()
        .iter()
        .filter(|r| r.path.ends_with(path))
        .map(json_body)
        .collect();
    assert_eq!(sent.len(), 2, "{}", run.transcript());
    assert!(
        other.requests().iter().all(|r| r.path.ends_with(path)),
        "only {path} reached the target"
    );
    assert!(!responses_requests(&openai).is_empty());
    // The second turn carries the call's output back in the target's dialect.
    let follow_up = sent[1].to_string();
    assert!(follow_up.contains(TOOL_OUTPUT), "{follow_up}");
}

#[tokio::test]
async fn tool_call_round_trip_through_anthropic() {
    tool_round_trip_through("anthropic", "/v1/messages").await;
}

#[tokio::test]
async fn tool_call_round_trip_through_a_chat_only_server() {
    tool_round_trip_through("chat", "/chat/completions").await;
}
