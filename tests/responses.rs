//! The Responses API (`/v1/responses`) through the gateway, as the official `openai` Python SDK
//! and a raw HTTP client see it:
//!
//! - a plain response, its text, usage and headers;
//! - a stream whose first key fails inside the stream before any output (`response.failed`
//!   with `rate_limit_exceeded`, an `error` event with `server_error`, `response.failed` with
//!   `insufficient_quota`): retried on the other key before anything reaches the client, the
//!   key cooled, counted as transient or disabled as its code says;
//! - a stream that fails after its first output (cut, ended without a terminal event, idle):
//!   it ends with a `response.failed` event naming why, counted in
//!   `tollgate_stream_errors_total`;
//! - usage, plain and streamed, counted in `tollgate_tokens_total` (cached tokens included)
//!   and reconciled with the TPM buckets;
//! - a WebSocket upgrade answered `426` with an OpenAI-shaped error.
//!
//! SDK scenarios run `sdk/client.py` (see [`tollgate_e2e::openai_sdk`]); without the SDK they
//! print `SKIPPED` and pass unless `TOLLGATE_REQUIRE_SDK=1`.
// clippy.toml's allow-unwrap-in-tests covers test functions, not the helpers beside them.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed step is a failed test"
)]

use mock_upstream::{Fault, MockHandle};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tollgate_e2e::openai_sdk::{observe, sdk};
use tollgate_e2e::{mock, provider, Gateway};

/// What the mock says in a plain text answer.
const MOCK_TEXT: &str = "Hello from mock";
/// The model every request names (no `[[models]]`: the default provider serves it).
const MODEL: &str = "gpt-4o-mini";
/// Events a client must never see from a stream that ended well.
const FAILURES: [&str; 2] = ["response.failed", "error"];

// ---- helpers ---------------------------------------------------------------------------------

/// A mock upstream and a gateway with one default provider "openai" holding `keys` (secrets
/// `sk-<id>`), and `extra` config before it.
async fn gateway(keys: &[&str], extra: &str) -> (MockHandle, Gateway) {
    let m = mock().await;
    let toml = format!("{extra}\n{}", provider("openai", &m.base_url(), keys, true));
    let gw = Gateway::start(&toml, &[]).await;
    (m, gw)
}

/// The sum of every series of metric `name` whose labels include all of `labels` (0 when none).
fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (series_labels, value) = match rest.strip_prefix('{') {
                Some(inner) => {
                    let (inner, value) = inner.split_once("} ")?;
                    (inner, value)
                }
                None => ("", rest.strip_prefix(' ')?),
            };
            let has = |(k, v): &(&str, &str)| {
                series_labels
                    .split(',')
                    .any(|pair| pair == format!("{k}=\"{v}\""))
            };
            labels
                .iter()
                .all(has)
                .then(|| value.trim().parse::<f64>().ok())?
        })
        .sum()
}

/// Polls `/metrics` until `metric_sum(name, labels) == want` (5 s at most) and returns the text
/// it last read, which the caller asserts on.
async fn metrics_when(gw: &Gateway, name: &str, labels: &[(&str, &str)], want: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = gw.metrics().await;
        if metric_sum(&text, name, labels) == want || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `tollgate_key_state{provider="openai",key,state}`.
fn key_state(text: &str, key: &str, state: &str) -> f64 {
    metric_sum(
        text,
        "tollgate_key_state",
        &[("provider", "openai"), ("key", key), ("state", state)],
    )
}

/// `tollgate_upstream_attempts_total{provider="openai",key,outcome_kind}`.
fn attempts(text: &str, key: &str, outcome_kind: &str) -> f64 {
    metric_sum(
        text,
        "tollgate_upstream_attempts_total",
        &[
            ("provider", "openai"),
            ("key", key),
            ("outcome_kind", outcome_kind),
        ],
    )
}

/// The keys of the upstream requests so far, in order (`sk-` dropped).
fn keys_asked(m: &MockHandle) -> Vec<String> {
    m.requests()
        .into_iter()
        .map(|r| {
            let key = r.key.unwrap_or_default();
            key.strip_prefix("sk-").unwrap_or(&key).to_owned()
        })
        .collect()
}

/// A Responses request body.
fn body(stream: bool) -> Value {
    json!({"model": MODEL, "input": "hi", "stream": stream})
}

/// A raw `POST /v1/responses`: status, headers and the whole body as text.
async fn post(
    gw: &Gateway,
    body: &Value,
    client_key: &str,
) -> (u16, reqwest::header::HeaderMap, String) {
    let r = reqwest::Client::new()
        .post(gw.url("/v1/responses"))
        .bearer_auth(client_key)
        .json(body)
        .send()
        .await
        .unwrap();
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    (status, headers, r.text().await.unwrap())
}

/// The named SSE events of a Responses stream: `(event name, data)`, asserting the name and
/// the data's `type` agree.
fn sse_events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let mut name = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            let data: Value = serde_json::from_str(&data)
                .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {block:?}\n{text}"));
            let name = name.unwrap_or_else(|| panic!("an event without a name: {block:?}"));
            assert_eq!(data["type"], name.as_str(), "{text}");
            (name, data)
        })
        .collect()
}

fn header<'h>(headers: &'h reqwest::header::HeaderMap, name: &str) -> &'h str {
    headers
        .get(name)
        .map_or("", |v| v.to_str().unwrap_or_default())
}

/// The types of the events the SDK recorded.
fn types(seen: &Value) -> Vec<&str> {
    seen["types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect()
}

/// Asserts the SDK raised nothing, showing the observation and gateway logs otherwise.
fn assert_no_exception(seen: &Value, gw: &Gateway) {
    assert!(
        seen["exception"].is_null(),
        "the SDK raised: {seen}\ngateway logs:\n{}",
        gw.logs()
    );
}

/// Asserts a recorded stream went well: no failure event, the held events before the first
/// delta, and one `response.completed` with the mock's text.
fn assert_completed_stream(seen: &Value, gw: &Gateway) {
    assert_no_exception(seen, gw);
    let types = types(seen);
    assert!(
        !types.iter().any(|t| FAILURES.contains(t)),
        "the client saw a failed attempt: {types:?}\n{seen}\ngateway logs:\n{}",
        gw.logs()
    );
    assert_eq!(
        types.first(),
        Some(&"response.created"),
        "the held events come first: {seen}"
    );
    assert_eq!(types.last(), Some(&"response.completed"), "{seen}");
    let completed = types.iter().filter(|t| **t == "response.completed").count();
    assert_eq!(completed, 1, "{seen}");
    assert_eq!(seen["text"], MOCK_TEXT, "{seen}");
    assert_eq!(seen["terminal"]["response"]["text"], MOCK_TEXT, "{seen}");
    assert_eq!(
        seen["terminal"]["response"]["status"], "completed",
        "{seen}"
    );
}

// ---- a plain response --------------------------------------------------------------------------

#[tokio::test]
async fn sdk_plain_response_round_trips_with_usage_and_headers() {
    let Some(python) = sdk().await else { return };
    let (m, gw) = gateway(&["k1"], "").await;
    let seen = observe(&python, &gw, "responses").await;
    assert_no_exception(&seen, &gw);
    assert_eq!(seen["text"], MOCK_TEXT, "{seen}");
    assert_eq!(seen["status"], "completed");
    assert_eq!(seen["model"], MODEL);
    assert_eq!(seen["headers"]["x-tollgate-attempts"], "1", "{seen}");
    assert_eq!(seen["headers"]["x-tollgate-key"], "k1");
    assert_eq!(seen["headers"]["x-tollgate-provider"], "openai");
    let sent = m.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].path, "/v1/responses");
    assert_eq!(sent[0].key.as_deref(), Some("sk-k1"));
    let usage = &seen["usage"];
    let input = usage["input_tokens"].as_u64().unwrap();
    let output = usage["output_tokens"].as_u64().unwrap();
    assert_eq!(
        input,
        sent[0].body.len() as u64 / 4,
        "the mock's usage: {seen}"
    );
    assert!(output > 0, "{seen}");
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(input + output),
        "{seen}"
    );
    assert_eq!(
        m.response_key(seen["id"].as_str().unwrap()).as_deref(),
        Some("sk-k1")
    );
}

// ---- failures before the first output: retried on another key ---------------------------------

/// Runs `scenario` until the upstream saw a request with `key` (at most 4 runs: a key pool may
/// start anywhere), and returns the observation of the run in which it did.
async fn run_until_key_asked(
    python: &std::path::Path,
    gw: &Gateway,
    m: &MockHandle,
    scenario: &str,
    key: &str,
) -> Value {
    for _ in 0..4 {
        let seen = observe(python, gw, scenario).await;
        if m.requests_for_key(key) > 0 {
            return seen;
        }
    }
    panic!(
        "{key} was never asked in 4 runs: {:?}\ngateway logs:\n{}",
        keys_asked(m),
        gw.logs()
    );
}

#[tokio::test]
async fn sdk_stream_never_sees_an_in_stream_rate_limit_before_the_first_output() {
    let Some(python) = sdk().await else { return };
    let (m, gw) = gateway(&["a", "b"], "[retry]\nbase_delay = \"1ms\"").await;
    // One-shot: the first request key a gets fails after response.created/in_progress.
    m.script(
        "sk-a",
        [Fault::response_rate_limited(Duration::from_millis(1500))],
    );
    let seen = run_until_key_asked(&python, &gw, &m, "responses_stream", "sk-a").await;
    let text = gw.metrics().await;
    assert_completed_stream(&seen, &gw);
    let asked = keys_asked(&m);
    assert_eq!(
        asked[asked.len() - 2..],
        ["a", "b"],
        "the failed attempt on a, then b, within one request: {asked:?}"
    );
    assert_eq!(seen["headers"]["x-tollgate-attempts"], "2", "{seen}");
    assert_eq!(seen["headers"]["x-tollgate-key"], "b", "{seen}");
    // Every event the SDK saw belongs to b's response, none to a's failed one.
    let id = seen["terminal"]["response"]["id"].as_str().unwrap();
    let created = seen["events"][0]["response"]["id"].as_str().unwrap();
    assert_eq!(created, id, "{seen}");
    assert_eq!(m.response_key(id).as_deref(), Some("sk-b"));
    assert_eq!(attempts(&text, "a", "rate_limited"), 1.0, "{text}");
    assert_eq!(
        key_state(&text, "a", "cooling"),
        1.0,
        "key a cools for the 1.5 s its message names:\n{text}"
    );
    assert_eq!(
        metric_sum(
            &text,
            "tollgate_key_cooldown_seconds_total",
            &[("provider", "openai"), ("key", "a")]
        ),
        1.5,
        "the wait read from \"try again in 1.5s\":\n{text}"
    );
}

#[tokio::test]
async fn sdk_stream_manager_final_response_survives_an_error_event_on_the_first_key() {
    let Some(python) = sdk().await else { return };
    let (m, gw) = gateway(&["a", "b"], "[retry]\nbase_delay = \"1ms\"").await;
    m.script("sk-a", [Fault::response_server_error().as_error_event()]);
    let seen = run_until_key_asked(&python, &gw, &m, "responses_stream_manager", "sk-a").await;
    assert_completed_stream(&seen, &gw);
    let fin = &seen["final"];
    assert_eq!(fin["text"], MOCK_TEXT, "get_final_response(): {seen}");
    assert_eq!(fin["status"], "completed", "{seen}");
    assert!(fin["error"].is_null(), "{seen}");
    let id = fin["id"].as_str().unwrap();
    assert_eq!(m.response_key(id).as_deref(), Some("sk-b"), "{seen}");
    let asked = keys_asked(&m);
    assert_eq!(asked[asked.len() - 2..], ["a", "b"], "{asked:?}");
    if !seen["headers"].is_null() {
        assert_eq!(seen["headers"]["x-tollgate-attempts"], "2", "{seen}");
    }
    let text = gw.metrics().await;
    assert_eq!(attempts(&text, "a", "transient"), 1.0, "{text}");
    assert_eq!(key_state(&text, "a", "disabled"), 0.0, "{text}");
}

#[tokio::test]
async fn an_in_stream_insufficient_quota_disables_the_key_and_the_other_key_answers() {
    let (m, gw) = gateway(&["a", "b"], "[retry]\nbase_delay = \"1ms\"").await;
    m.script_always("sk-a", Fault::response_insufficient_quota());
    let check = |status: u16, headers: &reqwest::header::HeaderMap, text: &str| {
        assert_eq!(status, 200, "{text}");
        let names: Vec<String> = sse_events(text).into_iter().map(|(n, _)| n).collect();
        assert!(
            !names.iter().any(|n| FAILURES.contains(&n.as_str())),
            "the client saw key a's failure: {names:?}\n{text}\ngateway logs:\n{}",
            gw.logs()
        );
        assert_eq!(
            names.last().map(String::as_str),
            Some("response.completed"),
            "{text}"
        );
        assert_eq!(header(headers, "x-tollgate-key"), "b", "{text}");
    };
    let mut hit = None;
    for _ in 0..4 {
        let (status, headers, text) = post(&gw, &body(true), "client-key").await;
        check(status, &headers, &text);
        if m.requests_for_key("sk-a") > 0 {
            hit = Some(headers);
            break;
        }
    }
    let headers = hit.unwrap_or_else(|| panic!("key a never asked: {:?}", keys_asked(&m)));
    assert_eq!(header(&headers, "x-tollgate-attempts"), "2");
    for _ in 0..5 {
        let (status, headers, text) = post(&gw, &body(true), "client-key").await;
        check(status, &headers, &text);
    }
    assert_eq!(
        m.requests_for_key("sk-a"),
        1,
        "a key out of quota is not asked again: {:?}",
        keys_asked(&m)
    );
    let text = gw.metrics().await;
    assert_eq!(key_state(&text, "a", "disabled"), 1.0, "{text}");
    assert_eq!(attempts(&text, "a", "quota_exhausted"), 1.0, "{text}");
}

// ---- failures after the first output: an honest response.failed ------------------------------

/// A stream failing after its first output on every key: the SDK iterates to a
/// `response.failed` with `code`, counted as a stream error with `reason`, never retried.
async fn sdk_failure_after_output(fault: Fault, code: &str, reason: &str) {
    let Some(python) = sdk().await else { return };
    let (m, gw) = gateway(&["a", "b"], "[retry]\nbase_delay = \"1ms\"").await;
    m.script_always("sk-a", fault.clone());
    m.script_always("sk-b", fault);
    let seen = observe(&python, &gw, "responses_stream").await;
    assert_no_exception(&seen, &gw);
    let types = types(&seen);
    assert_eq!(types.first(), Some(&"response.created"), "{seen}");
    assert_eq!(
        types.last(),
        Some(&"response.failed"),
        "the stream ends with a response.failed event: {seen}\ngateway logs:\n{}",
        gw.logs()
    );
    assert!(!types.contains(&"response.completed"), "{seen}");
    let deltas = types
        .iter()
        .filter(|t| **t == "response.output_text.delta")
        .count();
    assert_eq!(
        deltas, 2,
        "the output sent before the failure arrives: {seen}"
    );
    let got = seen["text"].as_str().unwrap();
    assert!(
        !got.is_empty() && MOCK_TEXT.starts_with(got) && got != MOCK_TEXT,
        "{seen}"
    );
    let failed = &seen["terminal"]["response"];
    assert_eq!(failed["status"], "failed", "{seen}");
    assert_eq!(failed["error"]["code"], code, "{seen}");
    assert_eq!(
        failed["id"], seen["events"][0]["response"]["id"],
        "the failure names the stream's response: {seen}"
    );
    assert_eq!(seen["headers"]["x-tollgate-attempts"], "1", "{seen}");
    assert_eq!(m.requests().len(), 1, "a committed stream is never retried");
    let labels = [("provider", "openai"), ("reason", reason)];
    let text = metrics_when(&gw, "tollgate_stream_errors_total", &labels, 1.0).await;
    assert_eq!(
        metric_sum(&text, "tollgate_stream_errors_total", &labels),
        1.0,
        "{text}"
    );
}

#[tokio::test]
async fn sdk_stream_cut_after_its_first_output_ends_with_response_failed_stream_broken() {
    sdk_failure_after_output(Fault::ResponseCutAfter(2), "stream_broken", "broken").await;
}

#[tokio::test]
async fn sdk_stream_ended_without_a_terminal_event_ends_with_response_failed_stream_truncated() {
    sdk_failure_after_output(Fault::ResponseEndAfter(2), "stream_truncated", "truncated").await;
}

/// The same over raw HTTP: the SSE text, event by event, ends with one `response.failed`
/// carrying `code` and the stream's response id.
async fn raw_failure_after_output(fault: Fault, extra: &str, code: &str, reason: &str) {
    let (m, gw) = gateway(&["a", "b"], extra).await;
    m.script_always("sk-a", fault.clone());
    m.script_always("sk-b", fault);
    let (status, headers, text) = post(&gw, &body(true), "client-key").await;
    m.release_holds();
    assert_eq!(status, 200, "{text}");
    assert_eq!(header(&headers, "x-tollgate-attempts"), "1");
    let events = sse_events(&text);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names[..4],
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added"
        ],
        "the held events are sent at the commit point, in order: {text}"
    );
    assert_eq!(names[4], "response.output_text.delta", "{text}");
    let (last, data) = events.last().unwrap();
    assert_eq!(
        last,
        "response.failed",
        "{text}\ngateway logs:\n{}",
        gw.logs()
    );
    assert_eq!(
        names
            .iter()
            .filter(|n| n.starts_with("response.failed"))
            .count(),
        1,
        "{text}"
    );
    assert!(!names.contains(&"response.completed"), "{text}");
    assert_eq!(data["response"]["status"], "failed", "{text}");
    assert_eq!(data["response"]["error"]["code"], code, "{text}");
    assert!(data["response"]["error"]["message"].is_string(), "{text}");
    assert_eq!(
        data["response"]["id"], events[0].1["response"]["id"],
        "the failure names the stream's response: {text}"
    );
    assert_eq!(m.requests().len(), 1, "a committed stream is never retried");
    let labels = [("provider", "openai"), ("reason", reason)];
    let metrics = metrics_when(&gw, "tollgate_stream_errors_total", &labels, 1.0).await;
    assert_eq!(
        metric_sum(&metrics, "tollgate_stream_errors_total", &labels),
        1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn raw_stream_cut_after_output_ends_with_response_failed_stream_broken() {
    raw_failure_after_output(Fault::ResponseCutAfter(2), "", "stream_broken", "broken").await;
}

#[tokio::test]
async fn raw_stream_ended_early_ends_with_response_failed_stream_truncated() {
    raw_failure_after_output(
        Fault::ResponseEndAfter(2),
        "",
        "stream_truncated",
        "truncated",
    )
    .await;
}

#[tokio::test]
async fn raw_stream_gone_idle_after_output_ends_with_response_failed_stream_idle_timeout() {
    raw_failure_after_output(
        Fault::HoldAfterFirst,
        "[server]\nidle_timeout = \"1s\"",
        "stream_idle_timeout",
        "idle_timeout",
    )
    .await;
}

// ---- usage -------------------------------------------------------------------------------------

#[tokio::test]
async fn sdk_usage_plain_and_streamed_is_counted_with_cached_tokens() {
    let Some(python) = sdk().await else { return };
    let m = mock().await;
    // A key TPM limit: the usage is reconciled with the key's bucket, not only counted.
    let toml = format!(
        "[[providers]]\nname = \"openai\"\nbase_url = \"{}\"\ndefault = true\nkeys = [{{ id = \"k1\", secret = \"sk-k1\", tpm = 100000 }}]\n",
        m.base_url()
    );
    let gw = Gateway::start(&toml, &[]).await;
    let seen = observe(&python, &gw, "responses_usage").await;
    assert_no_exception(&seen, &gw);
    let plain = &seen["plain"];
    let streamed = &seen["stream"];
    assert_eq!(plain["text"], MOCK_TEXT, "{seen}");
    assert_completed_stream(streamed, &gw);
    let usages = [&plain["usage"], &streamed["terminal"]["response"]["usage"]];
    let sum = |field: &dyn Fn(&Value) -> Option<u64>| -> u64 {
        usages
            .iter()
            .map(|u| field(u).unwrap_or_else(|| panic!("no usage: {seen}")))
            .sum()
    };
    let input = sum(&|u| u["input_tokens"].as_u64());
    let output = sum(&|u| u["output_tokens"].as_u64());
    let cached = sum(&|u| u["input_tokens_details"]["cached_tokens"].as_u64());
    let sent = m.requests();
    assert_eq!(sent.len(), 2);
    assert_eq!(
        input,
        sent.iter().map(|r| r.body.len() as u64 / 4).sum::<u64>(),
        "the mock's input tokens: {seen}"
    );
    assert_eq!(
        usages[0]["input_tokens_details"]["cached_tokens"], 0,
        "a session's first turn: {seen}"
    );
    assert!(
        cached > 0,
        "the second turn of the session is cached: {seen}"
    );
    let labels = [("provider", "openai"), ("kind", "completion")];
    let text = metrics_when(&gw, "tollgate_tokens_total", &labels, output as f64).await;
    let count = |kind| {
        metric_sum(
            &text,
            "tollgate_tokens_total",
            &[("provider", "openai"), ("kind", kind)],
        )
    };
    assert_eq!(count("prompt"), input as f64, "{seen}\n{text}");
    assert_eq!(count("completion"), output as f64, "{seen}\n{text}");
    assert_eq!(count("cached"), cached as f64, "{seen}\n{text}");
}

#[tokio::test]
async fn responses_usage_is_reconciled_with_the_client_tpm_bucket_plain_and_streamed() {
    let m = mock().await;
    // Each request reserves ~900 tokens up front; the real usage is ~10. Without reconciliation
    // the third request would not fit in 2000 TPM.
    let toml = format!(
        "[[providers]]\nname = \"openai\"\nbase_url = \"{}\"\ndefault = true\nkeys = [{{ id = \"k1\", secret = \"sk-k1\", tpm = 100000 }}]\n[[clients]]\nname = \"c\"\nkey = \"tg-c\"\ntpm = 2000\n",
        m.base_url()
    );
    let gw = Gateway::start(&toml, &[]).await;
    for i in 0..6 {
        let mut request = body(i % 2 == 1);
        request["max_output_tokens"] = json!(900);
        let (status, headers, text) = post(&gw, &request, "tg-c").await;
        assert_eq!(
            status,
            200,
            "request {i}: {text}\ngateway logs:\n{}",
            gw.logs()
        );
        let remaining: u64 = header(&headers, "x-ratelimit-remaining-tokens")
            .parse()
            .unwrap_or_else(|_| panic!("request {i}: {headers:?}"));
        assert!(
            remaining > 700,
            "request {i}: only {remaining} left: the Responses usage was not reconciled"
        );
        if i % 2 == 1 {
            let names: Vec<String> = sse_events(&text).into_iter().map(|(n, _)| n).collect();
            assert_eq!(names.last().map(String::as_str), Some("response.completed"));
        }
    }
    let text = gw.metrics().await;
    let completion = metric_sum(
        &text,
        "tollgate_tokens_total",
        &[("provider", "openai"), ("kind", "completion")],
    );
    assert!(completion >= 6.0, "{text}");
}

// ---- WebSocket -------------------------------------------------------------------------------

/// Sends `request` over a fresh TCP connection and reads the answer: its head and its body
/// (by `content-length`, else until the connection closes).
async fn raw_exchange(gw: &Gateway, request: &str) -> (String, String) {
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                let length = head.lines().find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                });
                if length.is_some_and(|n| rest.len() >= n) {
                    return;
                }
            }
            let n = tcp.read(&mut buf).await.unwrap();
            if n == 0 {
                return;
            }
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no complete answer in 10 s: {:?}",
                String::from_utf8_lossy(&got)
            )
        });
    let text = String::from_utf8_lossy(&got).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head: {text:?}"));
    (head.to_owned(), body.to_owned())
}

#[tokio::test]
async fn a_websocket_upgrade_gets_426_with_an_openai_error_and_a_request_id() {
    let (m, gw) = gateway(&["k1"], "").await;
    for path in ["/v1/responses", "/v1/chat/completions"] {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             openai-beta: responses_websockets=2026-02-06\r\nAuthorization: Bearer client-key\r\n\r\n",
            gw.addr
        );
        let (head, body) = raw_exchange(&gw, &request).await;
        let status = head.lines().next().unwrap_or_default();
        assert!(
            status.starts_with("HTTP/1.1 426"),
            "{path}: {head}\n\n{body}\ngateway logs:\n{}",
            gw.logs()
        );
        let has = |name: &str| {
            head.lines().any(|l| {
                l.split_once(':')
                    .is_some_and(|(n, v)| n.eq_ignore_ascii_case(name) && !v.trim().is_empty())
            })
        };
        assert!(has("x-request-id"), "{path}: {head}");
        assert!(
            head.lines().any(|l| l
                .to_ascii_lowercase()
                .starts_with("content-type: application/json")),
            "{path}: {head}"
        );
        let error: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{path}: the body is not JSON ({e}): {body:?}"));
        assert_eq!(
            error["error"]["code"], "websocket_not_supported",
            "{path}: {body}"
        );
        assert_eq!(
            error["error"]["type"], "invalid_request_error",
            "{path}: {body}"
        );
        assert!(error["error"]["message"].is_string(), "{path}: {body}");
    }
    assert!(m.requests().is_empty(), "nothing reached the upstream");
}

#[tokio::test]
async fn sdk_turns_of_one_session_meet_one_key() {
    let Some(python) = sdk().await else { return };
    let (_m, gw) = gateway(&["k1", "k2", "k3", "k4"], "").await;
    let seen = observe(&python, &gw, "responses_sticky").await;
    assert_no_exception(&seen, &gw);
    let distinct = |name: &str| {
        seen["keys"][name]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap().to_owned())
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(distinct("cache_key").len(), 1, "{seen}");
    assert_eq!(distinct("session_header").len(), 1, "{seen}");
    assert!(
        distinct("none").len() > 1,
        "requests of no session spread: {seen}"
    );
}
