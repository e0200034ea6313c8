//! The one-request reproductions of the sustained-fault issue, against the real binary and a
//! scripted mock upstream: each fault a healthy target could answer for is answered by it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step is a failed test"
)]

use mock_upstream::{Fault, MockHandle};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tollgate_e2e::{metric, mock, provider, Gateway};

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

fn error(status: u16, body: &str, headers: &[(&str, &str)]) -> Fault {
    Fault::Status {
        status,
        body: body.to_owned(),
        headers: headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

/// A primary provider `p` (keys a, b) and a healthy backup `q` (key c) for model "m".
async fn primary_and_backup(extra: &str) -> (MockHandle, MockHandle, Gateway) {
    let (p, q) = (mock().await, mock().await);
    let toml = format!(
        "{extra}\n{}{}[[models]]\nname = \"m\"\ntargets = [{{ provider = \"p\" }}, {{ provider = \"q\" }}]\n",
        provider("p", &p.base_url(), &["a", "b"], false),
        provider("q", &q.base_url(), &["c"], false),
    );
    let gw = Gateway::start(&toml, &[]).await;
    (p, q, gw)
}

async fn post(gw: &Gateway, body: &Value) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .unwrap();
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    (status, headers, r.json().await.unwrap_or_default())
}

#[tokio::test]
async fn a_retry_after_past_the_deadline_goes_to_the_healthy_fallback_at_once() {
    let (p, _q, gw) = primary_and_backup("").await;
    for key in ["sk-a", "sk-b"] {
        p.script_always(key, error(503, "{}", &[("retry-after", "700")]));
    }
    let start = Instant::now();
    let (status, headers, _) = post(&gw, &chat("m")).await;
    assert_eq!(
        (status, &headers["x-tollgate-provider"]),
        (200, &"q".parse().unwrap())
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn an_absurd_retry_after_does_not_panic_and_the_fallback_answers() {
    let (p, _q, gw) = primary_and_backup("").await;
    p.script_always(
        "sk-a",
        error(503, "{}", &[("retry-after", "10000000000000000000")]),
    );
    p.script_always("sk-b", error(429, "{}", &[("retry-after-ms", "1e300")]));
    for _ in 0..3 {
        let (status, headers, body) = post(&gw, &chat("m")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(headers["x-tollgate-provider"], "q");
    }
    assert!(!gw.logs().contains("panicked"), "{}", gw.logs());
}

#[tokio::test]
async fn a_hanging_primary_leaves_room_for_the_fallback_within_the_deadline() {
    let (p, _q, gw) =
        primary_and_backup("[server]\nrequest_timeout = \"4s\"\n[retry]\nmax_attempts = 2").await;
    for key in ["sk-a", "sk-b"] {
        p.script_always(key, Fault::Delay(Duration::from_secs(60)));
    }
    let start = Instant::now();
    let (status, headers, body) = post(&gw, &chat("m")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-tollgate-provider"], "q");
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "answered within the deadline: {took:?}"
    );
}

#[tokio::test]
async fn a_model_one_project_may_not_use_never_disables_its_keys() {
    let (p, q, gw) = primary_and_backup("").await;
    let denied = r#"{"error":{"message":"Project `proj_1` does not have access to model `m`","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#;
    p.script_always("sk-a", error(403, denied, &[]));
    p.script_always("sk-b", error(403, denied, &[]));
    for _ in 0..4 {
        let (status, headers, body) = post(&gw, &chat("m")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(headers["x-tollgate-provider"], "q");
    }
    assert_eq!(q.requests().len(), 4);
    let text = gw.metrics().await;
    for key in ["a", "b"] {
        assert_eq!(
            metric(
                &text,
                &format!(r#"tollgate_key_state{{key="{key}",provider="p",state="healthy"}}"#)
            ),
            1.0,
            "{text}"
        );
    }
    assert_eq!(
        p.requests().len(),
        4,
        "one attempt per request, never a second key for the same model"
    );
}

#[tokio::test]
async fn a_spent_anthropic_credit_balance_is_quota_and_the_other_key_answers() {
    let an = mock().await;
    let toml = format!(
        "[[providers]]\nname = \"anthropic\"\nkind = \"anthropic\"\nbase_url = \"{}\"\nkeys = [{{ id = \"an1\", secret = \"ant-key-1\" }}, {{ id = \"an2\", secret = \"ant-key-2\" }}]\n[[models]]\nname = \"claude\"\ntargets = [{{ provider = \"anthropic\", model = \"claude-haiku-4-5\" }}]\n",
        an.addr().to_string().replace("127.0.0.1", "http://127.0.0.1"),
    );
    let gw = Gateway::start(&toml, &[]).await;
    let low = r#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."}}"#;
    an.script_always("ant-key-1", error(400, low, &[]));
    for _ in 0..6 {
        let (status, _, body) = post(&gw, &chat("claude")).await;
        assert_eq!(status, 200, "{body}");
    }
    assert!(an.requests_for_key("ant-key-1") <= 1);
    let text = gw.metrics().await;
    assert_eq!(
        metric(
            &text,
            r#"tollgate_key_state{key="an1",provider="anthropic",state="disabled"}"#
        ),
        1.0,
        "{text}"
    );
}

#[tokio::test]
async fn a_wait_named_only_in_the_message_cools_the_key_for_exactly_that() {
    let m = mock().await;
    let gw = Gateway::start(
        &format!(
            "[retry]\ncooldown_default = \"30s\"\n{}",
            provider("openai", &m.base_url(), &["a", "b"], true)
        ),
        &[],
    )
    .await;
    let limited = r#"{"error":{"message":"Rate limit reached for gpt-4o-mini in organization org-1 on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 2s. Visit https://platform.openai.com/account/rate-limits to learn more.","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
    m.script("sk-a", [error(429, limited, &[])]);
    m.script("sk-b", [error(429, limited, &[])]);
    let (status, headers, _) = post(&gw, &chat("gpt-4o-mini")).await;
    assert_eq!(status, 429);
    assert_eq!(
        headers["retry-after"], "2",
        "the message's 2 s, not the 30 s default"
    );
    let text = gw.metrics().await;
    assert_eq!(
        metric(
            &text,
            r#"tollgate_key_cooldown_seconds_total{key="a",provider="openai"}"#
        ),
        2.0,
        "{text}"
    );
}

#[tokio::test]
async fn every_key_disabled_answers_503_with_the_earliest_probe() {
    let m = mock().await;
    let gw = Gateway::start(
        &format!(
            "[retry]\nprobe_interval = \"60s\"\n{}",
            provider("openai", &m.base_url(), &["a", "b"], true)
        ),
        &[],
    )
    .await;
    m.script_always("sk-a", Fault::status(401));
    m.script_always("sk-b", Fault::status(401));
    let (status, _, _) = post(&gw, &chat("gpt-4o-mini")).await;
    assert_eq!(status, 502, "both keys rejected");
    let (status, headers, body) = post(&gw, &chat("gpt-4o-mini")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "upstream_unavailable");
    let wait: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((55..=60).contains(&wait), "{wait}");
    assert_eq!(headers["x-tollgate-attempts"], "0");
    assert_eq!(m.requests().len(), 2, "no key was asked again");
}

#[tokio::test]
async fn a_failing_key_loses_its_share_and_a_provider_whose_keys_keep_failing_is_skipped() {
    // One pool: after its first failure the dead key's share falls to almost nothing.
    let m = mock().await;
    let gw = Gateway::start(
        &provider("openai", &m.base_url(), &["dead", "live"], true),
        &[],
    )
    .await;
    m.script_always("sk-dead", Fault::status(503));
    for _ in 0..30 {
        let (status, _, body) = post(&gw, &chat("gpt-4o-mini")).await;
        assert_eq!(status, 200, "{body}");
    }
    assert!(
        m.requests_for_key("sk-dead") <= 3,
        "{}",
        m.requests_for_key("sk-dead")
    );
    // A provider whose only key keeps failing: ejected after three in a row, then skipped.
    let (p, q, gw) =
        primary_and_backup("[retry]\nmax_attempts = 1\neject_after = 3\neject_duration = \"30s\"")
            .await;
    p.script_always("sk-a", Fault::status(503));
    p.script_always("sk-b", Fault::status(503));
    for _ in 0..30 {
        let (status, headers, body) = post(&gw, &chat("m")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(headers["x-tollgate-provider"], "q");
    }
    assert_eq!(q.requests().len(), 30);
    assert!(
        p.requests().len() <= 6,
        "three per key at most: {}",
        p.requests().len()
    );
    let text = gw.metrics().await;
    for key in ["a", "b"] {
        assert_eq!(
            metric(
                &text,
                &format!(r#"tollgate_key_state{{key="{key}",provider="p",state="ejected"}}"#)
            ),
            1.0,
            "{text}"
        );
        assert_eq!(
            metric(
                &text,
                &format!(r#"tollgate_key_ejections_total{{key="{key}",provider="p"}}"#)
            ),
            1.0
        );
    }
    assert!(
        metric(
            &text,
            r#"tollgate_fallbacks_total{from="p",reason="provider_down",to="q"}"#
        ) >= 20.0,
        "{text}"
    );
}

#[tokio::test]
async fn one_replicas_ejection_is_shared_through_redis() {
    let Some(redis) =
        tollgate_e2e::RedisServer::start("one_replicas_ejection_is_shared_through_redis").await
    else {
        return;
    };
    let m = mock().await;
    let toml = format!(
        "[state]\nbackend = \"redis\"\nredis_url = \"{}\"\nredis_timeout = \"5s\"\nkey_prefix = \"e2e-eject{}\"\n[retry]\neject_after = 1\neject_duration = \"30s\"\n{}",
        redis.url(),
        redis.port,
        provider("openai", &m.base_url(), &["dead", "live"], true)
    );
    let (a, b) = (
        Gateway::start(&toml, &[]).await,
        Gateway::start(&toml, &[]).await,
    );
    m.script_always("sk-dead", Fault::status(503));
    while m.requests_for_key("sk-dead") < 1 {
        assert_eq!(post(&a, &chat("gpt-4o-mini")).await.0, 200);
    }
    let ejected = r#"tollgate_key_state{key="dead",provider="openai",state="ejected"}"#;
    assert_eq!(metric(&a.metrics().await, ejected), 1.0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&b.metrics().await, ejected) != 1.0 {
        assert!(
            Instant::now() < deadline,
            "replica b never learned of the ejection"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..10 {
        assert_eq!(post(&b, &chat("gpt-4o-mini")).await.0, 200);
    }
    assert_eq!(
        m.requests_for_key("sk-dead"),
        1,
        "replica b sent nothing to it"
    );
}

#[tokio::test]
async fn answers_compressed_despite_identity_are_read_and_reach_the_client_plain() {
    let m = mock().await;
    let gw = Gateway::start(&provider("openai", &m.base_url(), &["a", "b"], true), &[]).await;
    m.script_always("sk-a", Fault::gzip());
    m.script_always("sk-b", Fault::gzip());
    let c = reqwest::Client::new();
    // A plain answer: decoded (this client accepts no encoding), its usage counted.
    let (status, headers, body) = post(&gw, &chat("gpt-4o-mini")).await;
    assert_eq!(status, 200);
    assert!(headers.get("content-encoding").is_none());
    assert!(
        body["choices"][0]["message"]["content"].is_string(),
        "{body}"
    );
    let text = gw.metrics().await;
    assert!(
        metric(
            &text,
            r#"tollgate_tokens_total{kind="completion",model="other",provider="openai"}"#
        ) > 0.0,
        "usage read from the decoded answer: {text}"
    );
    // A stream: its first event found in the decoded bytes, the stream complete.
    let mut stream = chat("gpt-4o-mini");
    stream["stream"] = json!(true);
    let r = c
        .post(gw.url("/v1/chat/completions"))
        .json(&stream)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-tollgate-attempts"], "1");
    let events = r.text().await.unwrap();
    assert!(events.contains("data: [DONE]"), "{events}");
    // An error body: a gzipped insufficient_quota is read as quota, not as a rate limit.
    m.script_always(
        "sk-a",
        Fault::error(
            429,
            "You exceeded your current quota.",
            "insufficient_quota",
            Some("insufficient_quota"),
        )
        .gzipped(),
    );
    let before = m.requests_for_key("sk-a");
    for _ in 0..10 {
        let (status, _, _) = post(&gw, &chat("gpt-4o-mini")).await;
        assert_eq!(status, 200);
        if m.requests_for_key("sk-a") > before {
            break;
        }
    }
    for _ in 0..6 {
        let (status, headers, _) = post(&gw, &chat("gpt-4o-mini")).await;
        assert_eq!(
            (status, &headers["x-tollgate-key"]),
            (200, &"b".parse().unwrap())
        );
    }
    assert_eq!(
        m.requests_for_key("sk-a"),
        before + 1,
        "asked once, then disabled"
    );
    let text = gw.metrics().await;
    assert_eq!(
        metric(
            &text,
            r#"tollgate_key_state{key="a",provider="openai",state="disabled"}"#
        ),
        1.0,
        "{text}"
    );
}

/// One Anthropic provider (keys an1, an2) serving model "claude".
async fn anthropic() -> (MockHandle, Gateway) {
    let an = mock().await;
    let toml = format!(
        "[[providers]]\nname = \"anthropic\"\nkind = \"anthropic\"\nbase_url = \"{}\"\nkeys = [{{ id = \"an1\", secret = \"ant-key-1\" }}]\n[[models]]\nname = \"claude\"\ntargets = [{{ provider = \"anthropic\", model = \"claude-haiku-4-5\" }}]\n",
        an.addr().to_string().replace("127.0.0.1", "http://127.0.0.1"),
    );
    let gw = Gateway::start(&toml, &[]).await;
    (an, gw)
}

#[tokio::test]
async fn an_anthropic_answer_of_any_size_or_encoding_is_translated_once() {
    let (an, gw) = anthropic().await;
    let text = "x".repeat(3 << 19);
    let message = json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 10, "output_tokens": 400000},
    });
    an.script("ant-key-1", [error(200, &message.to_string(), &[])]);
    let (status, headers, body) = post(&gw, &chat("claude")).await;
    assert_eq!(
        (status, &headers["x-tollgate-attempts"]),
        (200, &"1".parse().unwrap())
    );
    assert_eq!(
        body["choices"][0]["message"]["content"]
            .as_str()
            .map(str::len),
        Some(3 << 19),
        "a 1.5 MiB answer is read whole, not cut at the error-body limit"
    );
    an.script("ant-key-1", [Fault::gzip()]);
    let (status, headers, body) = post(&gw, &chat("claude")).await;
    assert_eq!(
        (status, &headers["x-tollgate-attempts"]),
        (200, &"1".parse().unwrap())
    );
    assert!(
        body["choices"][0]["message"]["content"].is_string(),
        "{body}"
    );
}

#[tokio::test]
async fn a_gzipped_context_length_error_moves_to_the_next_target() {
    let (p, q, gw) = primary_and_backup("").await;
    let too_long = Fault::error(
        400,
        "This model's maximum context length is 128000 tokens.",
        "invalid_request_error",
        Some("context_length_exceeded"),
    )
    .gzipped();
    p.script_always("sk-a", too_long.clone());
    p.script_always("sk-b", too_long);
    let (status, headers, body) = post(&gw, &chat("m")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-tollgate-provider"], "q");
    assert_eq!(
        p.requests().len(),
        1,
        "no retry of a request that cannot fit"
    );
    assert_eq!(q.requests().len(), 1);
    let text = gw.metrics().await;
    assert_eq!(
        metric(
            &text,
            r#"tollgate_fallbacks_total{from="p",reason="context_too_long",to="q"}"#
        ),
        1.0,
        "{text}"
    );
}

#[tokio::test]
async fn a_final_error_names_its_attempts_provider_and_key_in_headers_and_log() {
    let m = mock().await;
    let gw = Gateway::start(
        &format!(
            "[retry]\nmax_attempts = 2\nbase_delay = \"1ms\"\n{}",
            provider("p", &m.base_url(), &["a", "b"], true)
        ),
        &[],
    )
    .await;
    m.script_always("sk-a", Fault::status(500));
    m.script_always("sk-b", Fault::status(500));
    let (status, headers, body) = post(&gw, &chat("gpt-4o-mini")).await;
    assert!(status >= 500, "{status} {body}");
    assert_eq!(headers["x-tollgate-attempts"], "2");
    assert_eq!(headers["x-tollgate-provider"], "p");
    let key = headers["x-tollgate-key"].to_str().unwrap().to_owned();
    assert!(key == "a" || key == "b", "{key}");
    let id = headers["x-request-id"].to_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(5);
    let line = loop {
        let logs = gw.logs();
        let found = logs
            .lines()
            .find(|l| l.contains(&id) && l.contains("\"message\":\"request\""))
            .map(str::to_owned);
        if let Some(line) = found {
            break line;
        }
        assert!(
            Instant::now() < deadline,
            "no access-log line for {id}: {logs}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(line.contains("\"attempts\":2"), "{line}");
    assert!(line.contains("\"provider\":\"p\""), "{line}");
    assert!(line.contains(&format!("\"key\":\"{key}\"")), "{line}");
}

#[tokio::test]
async fn the_queue_wait_is_bounded_in_total_and_then_the_fallback_answers() {
    let (p, q) = (mock().await, mock().await);
    let toml = format!(
        "[limits]\nmax_queue_wait = \"2s\"\n[[providers]]\nname = \"p\"\nbase_url = \"{}\"\nkeys = [{{ id = \"a\", secret = \"sk-a\", rpm = 60 }}]\n{}[[models]]\nname = \"m\"\ntargets = [{{ provider = \"p\" }}, {{ provider = \"q\" }}]\n",
        p.base_url(),
        provider("q", &q.base_url(), &["c"], false),
    );
    let gw = Gateway::start(&toml, &[]).await;
    // Empty the key's bucket (60 requests a minute, a full minute's worth at the start). It
    // refills one a second, so a slow machine has some back by the end.
    let warm = Instant::now();
    for _ in 0..60 {
        assert_eq!(post(&gw, &chat("m")).await.0, 200);
    }
    let refilled = usize::try_from(warm.elapsed().as_secs()).unwrap();
    let start = Instant::now();
    let body = chat("m");
    let answers = futures_util::future::join_all((0..8).map(|_| post(&gw, &body))).await;
    let took = start.elapsed();
    for (status, _, body) in &answers {
        assert_eq!(*status, 200, "{body}");
    }
    // Eight requests each waiting up to 2 s one after another would take 16 s.
    assert!(
        took < Duration::from_secs(5),
        "the last answer came after {took:?}"
    );
    let by_q = answers
        .iter()
        .filter(|(_, h, _)| h["x-tollgate-provider"] == "q")
        .count();
    assert!(
        by_q + refilled >= 5,
        "only {by_q} of 8 fell back ({refilled} refilled before); the rest waited at most 2 s each"
    );
}
