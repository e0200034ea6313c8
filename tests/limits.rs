//! Client keys and RPM/TPM buckets end to end, in memory and shared through a real Redis.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step is a failed test"
)]

use futures_util::future::join_all;
use mock_upstream::MockHandle;
use serde_json::{json, Value};
use std::time::Duration;
use tollgate_e2e::{metric, mock, provider, Gateway, RedisServer};

fn chat() -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
}

fn client(name: &str, key: &str, extra: &str) -> String {
    format!("[[clients]]\nname = \"{name}\"\nkey = \"{key}\"\n{extra}\n")
}

async fn post(c: &reqwest::Client, gw: &Gateway, key: &str, body: &Value) -> reqwest::Response {
    c.post(gw.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn client_keys_are_required_and_checked() {
    let m = mock().await;
    let toml = format!(
        "{}{}{}",
        provider("openai", &m.base_url(), &["k1"], true),
        client("search", "tg-search", "models = [\"gpt-4o-mini\"]"),
        client("ops", "${E2E_OPS_KEY}", "")
    );
    let gw = Gateway::start(&toml, &[("E2E_OPS_KEY", "tg-ops")]).await;
    let c = reqwest::Client::new();
    let r = c
        .post(gw.url("/v1/chat/completions"))
        .json(&chat())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert_eq!(post(&c, &gw, "tg-wrong", &chat()).await.status(), 401);
    assert!(
        m.requests().is_empty(),
        "nothing is forwarded without a valid key"
    );
    assert_eq!(post(&c, &gw, "tg-search", &chat()).await.status(), 200);
    let r = c
        .post(gw.url("/v1/chat/completions"))
        .header("api-key", "tg-ops")
        .json(&chat())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "Azure-style api-key header");
    let r = post(
        &c,
        &gw,
        "tg-search",
        &json!({"model": "gpt-4o", "messages": []}),
    )
    .await;
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_not_allowed");
    assert_eq!(m.requests().len(), 2);
    assert!(
        !gw.logs().contains("tg-search") && !gw.logs().contains("tg-ops"),
        "client keys never logged"
    );
}

#[tokio::test]
async fn a_client_at_60_rpm_gets_429_on_its_61st_request() {
    let m = mock().await;
    let toml = format!(
        "{}{}",
        provider("openai", &m.base_url(), &["k1"], true),
        client("c", "tg-c", "rpm = 60")
    );
    let gw = Gateway::start(&toml, &[]).await;
    let c = reqwest::Client::new();
    let body = chat();
    let started = std::time::Instant::now();
    let burst = join_all((0..60).map(|_| post(&c, &gw, "tg-c", &body))).await;
    let mut remaining: Vec<u64> = burst
        .iter()
        .map(|r| {
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["x-ratelimit-limit-requests"], "60");
            r.headers()["x-ratelimit-remaining-requests"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    remaining.sort();
    // The bucket refills one request a second: a machine slow enough to spend seconds on the
    // burst has given that many back, and no more.
    let refilled = started.elapsed().as_secs();
    for (i, left) in remaining.iter().enumerate() {
        assert!(
            (i as u64..=i as u64 + refilled).contains(left),
            "{remaining:?} after {refilled} s"
        );
    }
    let mut r = post(&c, &gw, "tg-c", &chat()).await;
    let mut passed = 0;
    while r.status() == 200 && passed < started.elapsed().as_secs() {
        passed += 1;
        r = post(&c, &gw, "tg-c", &chat()).await;
    }
    assert_eq!(r.status(), 429);
    let ms: u64 = r.headers()["retry-after-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(ms > 0 && ms <= 1000, "{ms}");
    assert_eq!(r.headers()["retry-after"], "1");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(m.requests().len() as u64, 60 + passed);
    let metrics = gw.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"tollgate_rate_limited_total{dimension="requests",scope="client"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn an_upstream_key_at_5_rpm_never_gets_a_6th_request() {
    let m = mock().await;
    let toml = format!(
        "[[providers]]\nname = \"openai\"\nbase_url = \"{}\"\ndefault = true\nkeys = [{{ id = \"small\", secret = \"sk-small\", rpm = 5 }}, {{ id = \"big\", secret = \"sk-big\" }}]\n",
        m.base_url()
    );
    let gw = Gateway::start(&toml, &[]).await;
    let c = reqwest::Client::new();
    for _ in 0..30 {
        let r = c
            .post(gw.url("/v1/chat/completions"))
            .json(&chat())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(m.requests_for_key("sk-small"), 5);
    assert_eq!(m.requests_for_key("sk-big"), 25);
    let metrics = gw.metrics().await;
    assert!(
        metric(
            &metrics,
            r#"tollgate_rate_limited_total{dimension="requests",scope="upstream"}"#
        ) >= 1.0
    );
}

#[tokio::test]
async fn a_lone_key_out_of_capacity_answers_429_with_its_refill_time() {
    let m = mock().await;
    let toml = format!(
        "[limits]\nmax_queue_wait = \"0s\"\n[[providers]]\nname = \"openai\"\nbase_url = \"{}\"\ndefault = true\nkeys = [{{ id = \"only\", secret = \"sk-only\", rpm = 2 }}]\n",
        m.base_url()
    );
    let gw = Gateway::start(&toml, &[]).await;
    let c = reqwest::Client::new();
    let started = std::time::Instant::now();
    for _ in 0..2 {
        assert_eq!(
            c.post(gw.url("/v1/chat/completions"))
                .json(&chat())
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let r = c
        .post(gw.url("/v1/chat/completions"))
        .json(&chat())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let ms: u64 = r.headers()["retry-after-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // One request refills in 30 s, less the time the three requests took.
    let took = u64::try_from(started.elapsed().as_millis()).unwrap();
    assert!(
        (29_000_u64.min(30_000_u64.saturating_sub(took))..=30_000).contains(&ms),
        "one request per 30 s refills: {ms} after {took} ms"
    );
    assert_eq!(m.requests().len(), 2);
}

#[tokio::test]
async fn tpm_is_reconciled_from_real_usage_plain_and_streaming() {
    let m = mock().await;
    // Each request reserves ~900 tokens up front; real usage is ~20. Without reconciliation the
    // third request would not fit in 2000 TPM.
    let toml = format!(
        "{}{}",
        provider("openai", &m.base_url(), &["k1"], true),
        client("c", "tg-c", "tpm = 2000")
    );
    let gw = Gateway::start(&toml, &[]).await;
    let c = reqwest::Client::new();
    let plain =
        json!({"model": "m", "max_tokens": 900, "messages": [{"role": "user", "content": "hi"}]});
    let stream = json!({"model": "m", "max_tokens": 900, "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    for i in 0..6 {
        let body = if i % 2 == 0 { &plain } else { &stream };
        let r = post(&c, &gw, "tg-c", body).await;
        assert_eq!(r.status(), 200, "request {i}");
        let remaining: u64 = r.headers()["x-ratelimit-remaining-tokens"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        // This request's own ~907-token reservation plus the real usage (~20 each) of the earlier ones.
        assert!(
            remaining > 700,
            "request {i}: only {remaining} left: usage was not reconciled"
        );
        let text = r.text().await.unwrap();
        if i % 2 == 1 {
            assert!(
                !text.contains("\"choices\":[]"),
                "the usage chunk the client did not ask for is stripped: {text}"
            );
            assert!(text.contains("[DONE]"));
        }
    }
    let streamed: Value = serde_json::from_slice(&m.requests()[1].body).unwrap();
    assert_eq!(
        streamed["stream_options"]["include_usage"], true,
        "the gateway asked the upstream for usage"
    );
    let metrics = gw.metrics().await;
    assert!(
        metric(
            &metrics,
            r#"tollgate_tokens_total{kind="completion",model="other",provider="openai"}"#
        ) >= 6.0
    );
}

async fn shared_gateways(m: &MockHandle, redis: &RedisServer, rpm: u32) -> Vec<Gateway> {
    let toml = format!(
        "[state]\nbackend = \"redis\"\nredis_url = \"{}\"\nredis_timeout = \"5s\"\nreplicas = 3\nkey_prefix = \"e2e{}\"\n{}{}",
        redis.url(),
        redis.port,
        provider("openai", &m.base_url(), &["k1"], true),
        client("c", "tg-c", &format!("rpm = {rpm}"))
    );
    join_all((0..3).map(|_| Gateway::start(&toml, &[]))).await
}

#[tokio::test]
async fn three_replicas_on_one_redis_share_one_limit() {
    let Some(redis) = RedisServer::start("three_replicas_on_one_redis_share_one_limit").await
    else {
        return;
    };
    let m = mock().await;
    let gws = shared_gateways(&m, &redis, 30).await;
    let c = reqwest::Client::new();
    let mut ok = 0;
    let started = std::time::Instant::now();
    for i in 0..90 {
        let r = post(&c, &gws[i % 3], "tg-c", &chat()).await;
        match r.status().as_u16() {
            200 => {
                ok += 1;
                // The client's levels, read back from the take made with the key's.
                assert!(r.headers().contains_key("x-ratelimit-remaining-requests"));
            }
            429 => {
                assert!(r.headers().contains_key("retry-after"));
                let body: Value = r.json().await.unwrap();
                assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
            }
            s => panic!("unexpected status {s}"),
        }
    }
    // A request the client's limit refused never reached the upstream.
    assert_eq!(m.requests().len(), ok);
    // 30 per minute across all three replicas, one more for every 2 s (begun) the run took:
    // usually well under 2 s, one token refilled at most.
    let refilled = usize::try_from(started.elapsed().as_secs() / 2 + 1).unwrap();
    assert!(
        (30..=30 + refilled).contains(&ok),
        "{ok} requests passed a shared 30 RPM limit in {:?}",
        started.elapsed()
    );
    for gw in &gws {
        assert_eq!(
            metric(&gw.metrics().await, "tollgate_state_backend_degraded"),
            0.0
        );
    }
}

#[tokio::test]
async fn a_redis_outage_degrades_to_local_limits_and_recovers() {
    let Some(mut redis) =
        RedisServer::start("a_redis_outage_degrades_to_local_limits_and_recovers").await
    else {
        return;
    };
    let m = mock().await;
    let gws = shared_gateways(&m, &redis, 600).await;
    let c = reqwest::Client::new();
    for gw in &gws {
        assert_eq!(post(&c, gw, "tg-c", &chat()).await.status(), 200);
    }
    redis.kill();
    for i in 0..30 {
        let r = post(&c, &gws[i % 3], "tg-c", &chat()).await;
        assert_eq!(r.status(), 200, "no request fails while Redis is down");
    }
    for gw in &gws {
        assert_eq!(
            metric(&gw.metrics().await, "tollgate_state_backend_degraded"),
            1.0
        );
        assert!(gw.logged("redis unreachable").await, "{}", gw.logs());
        assert_eq!(
            gw.logs().matches("redis unreachable").count(),
            1,
            "one warning per outage"
        );
    }
    redis.restart().await;
    // Redis is tried again at most once a second: keep traffic flowing until every replica is back.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for gw in &gws {
        while metric(&gw.metrics().await, "tollgate_state_backend_degraded") != 0.0 {
            assert!(
                std::time::Instant::now() < deadline,
                "replica did not return to Redis"
            );
            assert_eq!(post(&c, gw, "tg-c", &chat()).await.status(), 200);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(gw.logged("redis reachable again").await);
    }
}

#[tokio::test]
async fn one_replicas_429_cools_the_key_for_the_others() {
    let Some(redis) = RedisServer::start("one_replicas_429_cools_the_key_for_the_others").await
    else {
        return;
    };
    let m = mock().await;
    let toml = format!(
        "[state]\nbackend = \"redis\"\nredis_url = \"{}\"\nredis_timeout = \"5s\"\nkey_prefix = \"e2e-health{}\"\n{}",
        redis.url(),
        redis.port,
        provider("openai", &m.base_url(), &["k1", "k2"], true)
    );
    let (a, b) = (
        Gateway::start(&toml, &[]).await,
        Gateway::start(&toml, &[]).await,
    );
    m.script("sk-k1", [mock_upstream::Fault::rate_limited(30)]);
    let c = reqwest::Client::new();
    let r = c
        .post(a.url("/v1/chat/completions"))
        .json(&chat())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        m.requests_for_key("sk-k1"),
        1,
        "replica a tried k1 first and got the 429"
    );
    let cooling = r#"tollgate_key_state{key="k1",provider="openai",state="cooling"}"#;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metric(&b.metrics().await, cooling) != 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "replica b never learned of k1's cooldown"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..10 {
        assert_eq!(
            c.post(b.url("/v1/chat/completions"))
                .json(&chat())
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    assert_eq!(
        m.requests_for_key("sk-k1"),
        1,
        "replica b sent nothing to the cooling key"
    );
}

/// A chat completion whose usage claims `total_tokens`.
fn impossible_usage(total_tokens: u64) -> mock_upstream::Fault {
    mock_upstream::Fault::Status {
        status: 200,
        body: json!({
            "id": "chatcmpl-x", "object": "chat.completion", "created": 0, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": total_tokens},
        })
        .to_string(),
        headers: Vec::new(),
    }
}

/// Absurd numbers from an upstream or a client: the client's and the key's buckets stay
/// usable, and a `max_tokens` no bucket can count gets OpenAI's 400 without being forwarded.
async fn numbers_beyond_any_limit(state: &str) {
    let m = mock().await;
    let toml = format!(
        "{state}[[providers]]\nname = \"openai\"\nkind = \"openai\"\nbase_url = \"{}\"\ndefault = true\nkeys = [{{ id = \"k1\", secret = \"sk-k1\", tpm = 10000 }}]\n{}",
        m.base_url(),
        client("c", "tg-c", "tpm = 10000")
    );
    let gw = Gateway::start(&toml, &[]).await;
    let c = reqwest::Client::new();
    let small = json!({"model": "gpt-4o-mini", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]});
    // 2^64 - 1 wrapped to -1 on its way to Redis; 2^63 - 1 did not, and charged 9e18 there.
    m.script(
        "sk-k1",
        [
            impossible_usage(u64::MAX),
            impossible_usage(i64::MAX as u64),
        ],
    );
    for i in 0..5 {
        let r = post(&c, &gw, "tg-c", &small).await;
        assert_eq!(r.status(), 200, "request {i}: {}", r.text().await.unwrap());
        r.text().await.unwrap();
    }
    assert_eq!(m.requests().len(), 5);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while gw.logs().matches("implausible usage ignored").count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no warning for the implausible usages"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for max_tokens in [u64::MAX, 1 << 63] {
        let huge = json!({"model": "gpt-4o-mini", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hi"}]});
        let r = post(&c, &gw, "tg-c", &huge).await;
        assert_eq!(r.status(), 400, "max_tokens {max_tokens}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "integer_above_max_value");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["param"], "max_tokens");
    }
    assert_eq!(m.requests().len(), 5, "nothing was forwarded");
    assert_eq!(post(&c, &gw, "tg-c", &small).await.status(), 200);
}

#[tokio::test]
async fn absurd_usage_and_max_tokens_leave_memory_buckets_usable() {
    numbers_beyond_any_limit("").await;
}

#[tokio::test]
async fn absurd_usage_and_max_tokens_leave_redis_buckets_usable() {
    let Some(redis) =
        RedisServer::start("absurd_usage_and_max_tokens_leave_redis_buckets_usable").await
    else {
        return;
    };
    let state = format!(
        "[state]\nbackend = \"redis\"\nredis_url = \"{}\"\nredis_timeout = \"5s\"\nkey_prefix = \"e2e-numbers{}\"\n",
        redis.url(),
        redis.port
    );
    numbers_beyond_any_limit(&state).await;
}

/// `redis-cli -p PORT ARGS...`, its output.
fn redis_cli(redis: &RedisServer, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .arg("-p")
        .arg(redis.port.to_string())
        .args(args)
        .output()
        .expect("redis-cli runs (installed with redis-server)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Script calls Redis has served so far (`EVALSHA`, and `EVAL` when the script was not cached).
fn script_calls(redis: &RedisServer) -> u64 {
    redis_cli(redis, &["INFO", "commandstats"])
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

#[tokio::test]
async fn with_redis_a_request_makes_one_take_and_one_correction_for_both_buckets() {
    let Some(redis) = RedisServer::start(
        "with_redis_a_request_makes_one_take_and_one_correction_for_both_buckets",
    )
    .await
    else {
        return;
    };
    let m = mock().await;
    let toml = format!(
        "[state]\nbackend = \"redis\"\nredis_url = \"{}\"\nredis_timeout = \"5s\"\nkey_prefix = \"fix{}\"\n\
         [[providers]]\nname = \"openai\"\nbase_url = \"{}\"\ndefault = true\n\
         keys = [{{ id = \"k1\", secret = \"sk-k1\", rpm = 1000, tpm = 1000000 }}]\n{}",
        redis.url(),
        redis.port,
        m.base_url(),
        client("c", "tg-c", "tpm = 1000000")
    );
    let gw = Gateway::start(&toml, &[]).await;
    let c = reqwest::Client::new();
    // Reserves ~100k tokens up front; the mock's usage is a few tokens.
    let body = json!({"model": "m", "max_tokens": 100000, "messages": [{"role": "user", "content": "hi"}]});
    let levels = || -> Vec<f64> {
        let keys = redis_cli(
            &redis,
            &["--scan", "--pattern", &format!("fix{}:rl:*:t", redis.port)],
        );
        keys.lines()
            .map(|k| redis_cli(&redis, &["HGET", k, "l"]).trim().parse().unwrap())
            .collect()
    };
    let reconciled = |levels: &[f64]| levels.len() == 2 && levels.iter().all(|l| *l > 990_000.0);
    // A first request loads the script and opens the connections.
    assert_eq!(post(&c, &gw, "tg-c", &body).await.status(), 200);
    let wait_reconciled = || async {
        for _ in 0..200 {
            if reconciled(&levels()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "the buckets were not corrected: {:?}\n{}",
            levels(),
            gw.logs()
        );
    };
    wait_reconciled().await;
    let before = script_calls(&redis);
    let r = post(&c, &gw, "tg-c", &body).await;
    assert_eq!(r.status(), 200);
    r.text().await.unwrap();
    wait_reconciled().await;
    assert_eq!(
        script_calls(&redis) - before,
        2,
        "one take of the client's and the key's buckets before the upstream, one correction of both after"
    );
    // A provider that reports what is left: its word lowers the key's buckets (after the answer).
    let before = script_calls(&redis);
    let r = c
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth("tg-c")
        .header("x-mock-ratelimit-remaining", "5, 900000")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap();
    let requests_level = || {
        let key = format!("fix{}:rl:", redis.port);
        let keys = redis_cli(&redis, &["--scan", "--pattern", &format!("{key}*:r")]);
        let keys: Vec<&str> = keys.lines().collect();
        assert_eq!(keys.len(), 1, "only the key has an RPM limit: {keys:?}");
        redis_cli(&redis, &["HGET", keys[0], "l"])
            .trim()
            .parse::<f64>()
            .unwrap()
    };
    for _ in 0..200 {
        if requests_level() <= 5.1 && script_calls(&redis) - before == 3 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "the provider's remaining requests did not reach the key's bucket: level {}, {} calls",
        requests_level(),
        script_calls(&redis) - before
    );
}
