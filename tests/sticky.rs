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

/// Creates a stored response through `gw`; its id and the key that made it.
async fn create_stored(gw: &Gateway) -> (String, String) {
    let (key, body) = turn(
        gw,
        &json!({"model": "gpt-test", "input": "remember me"}),
        None,
    )
    .await;
    (body["id"].as_str().unwrap().to_owned(), key)
}

#[tokio::test]
async fn a_stored_response_is_continued_read_and_deleted_on_the_key_that_made_it() {
    let m = mock().await;
    let gw = Gateway::start(&provider("openai", &m.base_url(), &KEYS, true), &[]).await;
    let c = reqwest::Client::new();
    for _ in 0..3 {
        let (id, made_by) = create_stored(&gw).await;
        assert_eq!(
            m.response_key(&id).as_deref(),
            Some(format!("sk-{made_by}").as_str())
        );
        for _ in 0..6 {
            let follow_up =
                json!({"model": "gpt-test", "input": "and then?", "previous_response_id": id});
            let (key, body) = turn(&gw, &follow_up, None).await;
            assert_eq!(key, made_by, "{body}");
        }
        let r = c
            .get(gw.url(&format!("/v1/responses/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-tollgate-key"].to_str().unwrap(), made_by);
        let r = c
            .delete(gw.url(&format!("/v1/responses/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-tollgate-key"].to_str().unwrap(), made_by);
    }
}

#[tokio::test]
async fn replicas_share_which_key_made_a_response_through_redis() {
    let Some(redis) =
        tollgate_e2e::RedisServer::start("replicas_share_which_key_made_a_response").await
    else {
        return;
    };
    let m = mock().await;
    let toml = format!(
        "[state]\nbackend = \"redis\"\nredis_url = \"{}\"\nredis_timeout = \"5s\"\nkey_prefix = \"e2e-pins{}\"\n{}",
        redis.url(),
        redis.port,
        provider("openai", &m.base_url(), &KEYS, true)
    );
    let (a, b) = (
        Gateway::start(&toml, &[]).await,
        Gateway::start(&toml, &[]).await,
    );
    let (id, made_by) = create_stored(&a).await;
    // Replica b learns it from Redis (the pin is written in the background: wait until it is
    // there, then every read goes to the right key; a random key would 404 three times in four).
    let pinned = format!("e2e-pins{}:obj:{id}", redis.port);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !redis_has(&redis, &pinned).await {
        assert!(
            std::time::Instant::now() < deadline,
            "the pin never reached Redis"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let c = reqwest::Client::new();
    for _ in 0..12 {
        let r = c
            .get(b.url(&format!("/v1/responses/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-tollgate-key"].to_str().unwrap(), made_by);
    }
}

/// Whether Redis holds `key` (asked with redis-cli, which comes with redis-server).
async fn redis_has(redis: &tollgate_e2e::RedisServer, key: &str) -> bool {
    let out = tokio::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "EXISTS", key])
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "1"
}
