//! Sticky sessions end to end: a session's turns (same `prompt_cache_key`, or the same
//! `session-id` header as Codex sends) go to one upstream key, so the provider's prompt cache
//! (the mock keeps one per key) serves them; requests of no session spread over the pool.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step is a failed test"
)]

use serde_json::{json, Value};
use std::collections::BTreeSet;
use tollgate_e2e::{metric, mock, provider, Gateway};

const KEYS: [&str; 4] = ["a", "b", "c", "d"];

async fn turn(gw: &Gateway, body: &Value, session: Option<&str>) -> (String, Value) {
    let mut req = reqwest::Client::new()
        .post(gw.url("/v1/responses"))
        .json(body);
    if let Some(s) = session {
        req = req.header("session-id", s);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200);
    let key = r.headers()["x-tollgate-key"].to_str().unwrap().to_owned();
    (key, r.json().await.unwrap())
}

fn responses(cache_key: Option<&str>) -> Value {
    let mut body = json!({
        "model": "gpt-test",
        "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "x".repeat(4000)}]}],
        "store": false,
    });
    if let Some(k) = cache_key {
        body["prompt_cache_key"] = json!(k);
    }
    body
}

#[tokio::test]
async fn a_sessions_turns_meet_one_key_and_its_prompt_cache() {
    let m = mock().await;
    let gw = Gateway::start(&provider("openai", &m.base_url(), &KEYS, true), &[]).await;
    // By prompt_cache_key.
    let mut keys = BTreeSet::new();
    let mut cached = 0;
    for _ in 0..12 {
        let (key, body) = turn(&gw, &responses(Some("conversation-1")), None).await;
        keys.insert(key);
        cached += body["usage"]["input_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap();
    }
    assert_eq!(keys.len(), 1, "one key for the session: {keys:?}");
    assert!(cached > 0, "later turns hit the key's prompt cache");
    // By the session-id header (Codex sends both; here only the header).
    let mut keys = BTreeSet::new();
    for _ in 0..12 {
        keys.insert(turn(&gw, &responses(None), Some("codex-session-7")).await.0);
    }
    assert_eq!(keys.len(), 1, "{keys:?}");
    // No session: the pool spreads the requests.
    let mut keys = BTreeSet::new();
    for _ in 0..12 {
        keys.insert(turn(&gw, &responses(None), None).await.0);
    }
    assert!(keys.len() > 1, "{keys:?}");
    let text = gw.metrics().await;
    assert!(
        metric(
            &text,
            r#"tollgate_tokens_total{kind="cached",model="other",provider="openai"}"#
        ) > 0.0,
        "{text}"
    );
}

#[tokio::test]
async fn a_session_whose_key_fails_moves_and_the_rest_stay() {
    let m = mock().await;
    let gw = Gateway::start(&provider("openai", &m.base_url(), &KEYS, true), &[]).await;
    let sessions: Vec<String> = (0..16).map(|n| format!("s-{n}")).collect();
    let mut home = Vec::new();
    for s in &sessions {
        home.push(turn(&gw, &responses(Some(s)), None).await.0);
    }
    // The first session's key starts answering 429: its sessions move, the others do not.
    let gone = home[0].clone();
    m.script_always(
        &format!("sk-{gone}"),
        mock_upstream::Fault::rate_limited(60),
    );
    for (s, was) in sessions.iter().zip(&home) {
        let (key, _) = turn(&gw, &responses(Some(s)), None).await;
        if *was == gone {
            assert_ne!(key, gone);
        } else {
            assert_eq!(&key, was, "session {s} moved");
        }
    }
}

#[tokio::test]
async fn sticky_sessions_can_be_turned_off() {
    let m = mock().await;
    let gw = Gateway::start(
        &format!(
            "[retry]\nsticky_sessions = false\n{}",
            provider("openai", &m.base_url(), &KEYS, true)
        ),
        &[],
    )
    .await;
    let mut keys = BTreeSet::new();
    for _ in 0..12 {
        keys.insert(turn(&gw, &responses(Some("conversation-1")), None).await.0);
    }
    assert!(keys.len() > 1, "{keys:?}");
}
