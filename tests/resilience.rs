//! Resilience end to end: the key pool, retries and fallback against scripted upstream faults.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step is a failed test"
)]

use futures_util::StreamExt;
use mock_upstream::Fault;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tollgate_e2e::{metric, mock, provider, Gateway};

fn chat() -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test]
async fn a_pool_with_a_revoked_and_a_rate_limited_key_serves_every_request() {
    let m = mock().await;
    let gw = Gateway::start(
        &provider(
            "openai",
            &m.base_url(),
            &["revoked", "limited", "healthy"],
            true,
        ),
        &[],
    )
    .await;
    m.script_always("sk-revoked", Fault::status(401));
    m.script("sk-limited", [Fault::rate_limited(30)]);
    let c = reqwest::Client::new();
    let mut statuses = std::collections::BTreeMap::new();
    for _ in 0..200 {
        let r = c
            .post(gw.url("/v1/chat/completions"))
            .json(&chat())
            .send()
            .await
            .unwrap();
        *statuses.entry(r.status().as_u16()).or_insert(0) += 1;
    }
    assert_eq!(statuses, [(200, 200)].into(), "zero client errors");
    assert_eq!(
        m.requests_for_key("sk-revoked"),
        1,
        "the revoked key is disabled after one 401"
    );
    assert_eq!(
        m.requests_for_key("sk-limited"),
        1,
        "the limited key rests for its retry-after"
    );
    assert_eq!(m.requests_for_key("sk-healthy"), 200);
    let text = gw.metrics().await;
    assert_eq!(
        metric(
            &text,
            r#"tollgate_key_state{key="revoked",provider="openai",state="disabled"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            r#"tollgate_key_state{key="limited",provider="openai",state="cooling"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            r#"tollgate_upstream_attempts_total{key="revoked",outcome_kind="key_rejected",provider="openai"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            r#"tollgate_upstream_attempts_total{key="limited",outcome_kind="rate_limited",provider="openai"}"#
        ),
        1.0
    );
    let first = metric(
        &text,
        r#"tollgate_requests_total{endpoint="chat_completions",model="other",outcome="first_try",status_class="2xx"}"#,
    );
    let retried = metric(
        &text,
        r#"tollgate_requests_total{endpoint="chat_completions",model="other",outcome="after_retry",status_class="2xx"}"#,
    );
    assert_eq!(first + retried, 200.0);
    let broken: f64 = text
        .lines()
        .filter(|l| l.starts_with("tollgate_stream_errors_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(
        broken, 0.0,
        "plain answers read to their length are complete, not broken"
    );
    // The two failing keys cost one retry each: in one request or in two.
    assert!((1.0..=2.0).contains(&retried), "{retried}");
    assert_eq!(
        metric(
            &text,
            r#"tollgate_retries_total{provider="openai",reason="key_rejected"}"#
        ) + metric(
            &text,
            r#"tollgate_retries_total{provider="openai",reason="rate_limited"}"#
        ),
        2.0
    );
}

#[tokio::test]
async fn a_key_answering_429_with_retry_after_2_rests_for_2_seconds() {
    let m = mock().await;
    let gw = Gateway::start(&provider("openai", &m.base_url(), &["a", "b"], true), &[]).await;
    m.script("sk-a", [Fault::rate_limited(2)]);
    let c = reqwest::Client::new();
    let start = Instant::now();
    // Keep traffic flowing until key a is used again (bounded to 6 s).
    while m.requests_for_key("sk-a") < 2 && start.elapsed() < Duration::from_secs(6) {
        let r = c
            .post(gw.url("/v1/chat/completions"))
            .json(&chat())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let times: Vec<Instant> = m
        .requests()
        .into_iter()
        .filter(|r| r.key.as_deref() == Some("sk-a"))
        .map(|r| r.at)
        .collect();
    assert_eq!(times.len(), 2, "key a came back after its cooldown");
    let rest = times[1] - times[0];
    assert!(
        rest >= Duration::from_secs(2),
        "key a got a request after only {rest:?}"
    );
    assert!(
        rest < Duration::from_millis(2500),
        "key a rested too long: {rest:?}"
    );
}

#[tokio::test]
async fn an_outage_of_the_first_provider_falls_back_to_the_second() {
    let m1 = mock().await;
    let m2 = mock().await;
    let toml = format!(
        "[retry]\nmax_attempts = 2\nbase_delay = \"10ms\"\n{}{}[[models]]\nname = \"gpt-4o-mini\"\ntargets = [{{ provider = \"first\" }}, {{ provider = \"second\", model = \"backup-model\" }}]\n",
        provider("first", &m1.base_url(), &["f1", "f2"], false),
        provider("second", &m2.base_url(), &["s1"], false)
    );
    let gw = Gateway::start(&toml, &[]).await;
    m1.script_always("sk-f1", Fault::status(503));
    m1.script_always("sk-f2", Fault::status(503));
    let c = reqwest::Client::new();
    for _ in 0..5 {
        let r = c
            .post(gw.url("/v1/chat/completions"))
            .json(&chat())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-tollgate-provider"], "second");
        assert_eq!(r.headers()["x-tollgate-attempts"], "3");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["model"], "backup-model");
    }
    assert_eq!(
        m1.requests().len(),
        10,
        "two attempts per request on the first provider"
    );
    let text = gw.metrics().await;
    assert_eq!(
        metric(
            &text,
            r#"tollgate_fallbacks_total{from="first",reason="transient",to="second"}"#
        ),
        5.0
    );
    assert_eq!(
        metric(
            &text,
            r#"tollgate_requests_total{endpoint="chat_completions",model="gpt-4o-mini",outcome="after_fallback",status_class="2xx"}"#
        ),
        5.0
    );
    assert_eq!(
        metric(
            &text,
            r#"tollgate_retries_total{provider="first",reason="transient"}"#
        ),
        5.0
    );
    assert_eq!(
        metric(
            &text,
            r#"tollgate_retries_total{provider="second",reason="transient"}"#
        ),
        0.0,
        "a fallback's first attempt is not a retry of the second provider"
    );
}

#[tokio::test]
async fn a_stream_that_fails_before_its_first_event_is_retried_invisibly() {
    let m = mock().await;
    let gw = Gateway::start(&provider("openai", &m.base_url(), &["a", "b"], true), &[]).await;
    m.script("sk-a", [Fault::StreamErrorFirst]);
    m.script("sk-b", [Fault::StreamErrorFirst]);
    let c = reqwest::Client::new();
    let r = c
        .post(gw.url("/v1/chat/completions"))
        .json(&json!({"model": "x", "stream": true, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-tollgate-attempts"], "3");
    let text = r.text().await.unwrap();
    assert!(!text.contains("\"error\""), "{text}");
}

#[tokio::test]
async fn a_stream_that_breaks_mid_way_ends_with_an_error_event() {
    let m = mock().await;
    let gw = Gateway::start(&provider("openai", &m.base_url(), &["a"], true), &[]).await;
    m.script("sk-a", [Fault::BreakAfter(2)]);
    let r = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .json(&json!({"model": "x", "stream": true, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let mut text = String::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .expect("no hang")
    {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert_eq!(text.matches("chat.completion.chunk").count(), 2, "{text}");
    let last = text.trim_end().rsplit("\n\n").next().unwrap();
    let event: Value = serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(event["error"]["type"], "server_error", "{text}");
    assert!(!text.contains("[DONE]"));
    assert_eq!(
        m.requests().len(),
        1,
        "bytes already reached the client: no retry"
    );
    let metrics = gw.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"tollgate_stream_errors_total{provider="openai",reason="broken"}"#
        ) + metric(
            &metrics,
            r#"tollgate_stream_errors_total{provider="openai",reason="truncated"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn every_key_rate_limited_answers_429_with_retry_after() {
    let m = mock().await;
    let gw = Gateway::start(
        &provider("openai", &m.base_url(), &["a", "b"], true),
        &[("TOLLGATE_SERVER__REQUEST_TIMEOUT", "1s")],
    )
    .await;
    m.script("sk-a", [Fault::rate_limited(5)]);
    m.script("sk-b", [Fault::rate_limited(3)]);
    let r = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .json(&chat())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "3");
    let ms: u64 = r.headers()["retry-after-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((2900..=3000).contains(&ms), "{ms}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(m.requests().len(), 2);
}

#[tokio::test]
async fn with_the_budget_spent_the_upstreams_503_comes_back_with_both_retry_headers() {
    let m = mock().await;
    let toml = format!(
        "[retry]\nbudget_percent = 0\nbudget_min_per_sec = 0\n{}",
        provider("openai", &m.base_url(), &["a", "b"], true)
    );
    let gw = Gateway::start(&toml, &[]).await;
    m.script("sk-a", [Fault::status(503).with_header("retry-after", "7")]);
    m.script("sk-b", [Fault::status(503).with_header("retry-after", "7")]);
    let r = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .json(&chat())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        503,
        "no retry allowed: the upstream's own error, at once"
    );
    assert_eq!(r.headers()["retry-after"], "7");
    assert_eq!(r.headers()["retry-after-ms"], "7000");
    assert_eq!(m.requests().len(), 1);
    assert_eq!(
        metric(&gw.metrics().await, "tollgate_retry_budget_exhausted_total"),
        1.0
    );
}
