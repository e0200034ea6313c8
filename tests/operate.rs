//! Operating the gateway: the admin API, live config reloads, the separate admin listener,
//! and secrets kept out of everything an operator can read.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step is a failed test"
)]

use mock_upstream::{Fault, MockHandle};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tollgate_e2e::{metric, mock, Gateway};

fn config(m: &MockHandle, keys: &[&str], extra: &str) -> String {
    let keys: Vec<String> = keys
        .iter()
        .map(|k| format!("{{ id = \"{k}\", secret = \"sk-{k}\" }}"))
        .collect();
    format!(
        "[admin]\ntoken = \"${{E2E_ADMIN_TOKEN}}\"\n{extra}\n[[providers]]\nname = \"openai\"\nbase_url = \"{}\"\ndefault = true\nkeys = [{}]\n",
        m.base_url(),
        keys.join(", ")
    )
}

const ADMIN: (&str, &str) = ("E2E_ADMIN_TOKEN", "admin-secret-token");

fn chat() -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
}

async fn admin(gw: &Gateway, method: &str, path: &str, token: &str) -> reqwest::Response {
    reqwest::Client::new()
        .request(method.parse().unwrap(), gw.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn admin_api_shows_keys_and_config_without_secrets() {
    let m = mock().await;
    let gw = Gateway::start(&config(&m, &["a", "b"], ""), &[ADMIN]).await;
    m.script("sk-a", [Fault::rate_limited(30)]);
    let c = reqwest::Client::new();
    for _ in 0..3 {
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
    assert_eq!(
        admin(&gw, "GET", "/admin/keys", "wrong").await.status(),
        401
    );
    let keys: Value = admin(&gw, "GET", "/admin/keys", ADMIN.1)
        .await
        .json()
        .await
        .unwrap();
    let listed = &keys["providers"][0]["keys"];
    assert_eq!(listed[0]["id"], "a");
    assert_eq!(listed[0]["state"], "cooling");
    assert!(listed[0]["remaining_ms"].as_u64().unwrap() > 25_000);
    assert_eq!(listed[1]["state"], "healthy");
    let config = admin(&gw, "GET", "/admin/config", ADMIN.1)
        .await
        .text()
        .await
        .unwrap();
    assert!(config.contains("\"secret\":\"***\""), "{config}");
    let mut everything = config + &keys.to_string() + &gw.metrics().await + &gw.logs();
    everything.push_str(
        &admin(&gw, "POST", "/admin/reload", ADMIN.1)
            .await
            .text()
            .await
            .unwrap(),
    );
    for secret in ["sk-a", "sk-b", ADMIN.1] {
        assert!(!everything.contains(secret), "{secret} leaked");
    }
}

#[tokio::test]
async fn admin_api_is_off_without_a_token() {
    let m = mock().await;
    let gw = Gateway::start(
        &config(&m, &["a"], "").replace("token = \"${E2E_ADMIN_TOKEN}\"", ""),
        &[],
    )
    .await;
    assert_eq!(
        admin(&gw, "GET", "/admin/keys", "anything").await.status(),
        404
    );
    assert_eq!(admin(&gw, "POST", "/admin/reload", "").await.status(), 404);
}

/// Sends requests in a loop until stopped; counts successes and failures.
fn traffic(
    gw: &Gateway,
) -> (
    Arc<AtomicBool>,
    Arc<AtomicUsize>,
    Arc<AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    let (stop, ok, failed) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let url = gw.url("/v1/chat/completions");
    let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
    let task = tokio::spawn(async move {
        let c = reqwest::Client::new();
        while !s.load(Ordering::Relaxed) {
            match c.post(&url).json(&chat()).send().await {
                Ok(r) if r.status() == 200 => o.fetch_add(1, Ordering::Relaxed),
                _ => f.fetch_add(1, Ordering::Relaxed),
            };
        }
    });
    (stop, ok, failed, task)
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn keys_rotate_by_reload_while_requests_flow() {
    let m = mock().await;
    let gw = Gateway::start(
        &config(&m, &["a", "b"], "watch_interval = \"0s\""),
        &[ADMIN],
    )
    .await;
    // Cool key b first: its health must survive the reload.
    m.script("sk-b", [Fault::rate_limited(60)]);
    let (stop, ok, failed, task) = traffic(&gw);
    until("traffic on both keys", || {
        m.requests_for_key("sk-a") > 5 && m.requests_for_key("sk-b") >= 1
    })
    .await;
    std::fs::write(
        &gw.config_path,
        config(&m, &["b", "c"], "watch_interval = \"0s\""),
    )
    .unwrap();
    let r = admin(&gw, "POST", "/admin/reload", ADMIN.1).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let a_at_reload = m.requests_for_key("sk-a");
    until("traffic on the new key", || m.requests_for_key("sk-c") > 20).await;
    stop.store(true, Ordering::Relaxed);
    task.await.unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request failed across the reload"
    );
    assert!(ok.load(Ordering::Relaxed) > 25);
    assert!(
        m.requests_for_key("sk-a") <= a_at_reload + 2,
        "the removed key gets no new traffic (in-flight ones may finish)"
    );
    assert_eq!(
        m.requests_for_key("sk-b"),
        1,
        "key b kept its cooldown across the reload"
    );
    let text = gw.metrics().await;
    assert_eq!(
        metric(&text, r#"tollgate_config_reloads_total{result="success"}"#),
        1.0
    );
    assert!(
        !text.contains(r#"tollgate_key_state{key="a""#),
        "the removed key's state series are gone"
    );
    assert_eq!(
        metric(
            &text,
            r#"tollgate_key_state{key="b",provider="openai",state="cooling"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn a_bad_config_is_refused_and_the_old_one_keeps_serving() {
    let m = mock().await;
    let gw = Gateway::start(&config(&m, &["a"], "watch_interval = \"0s\""), &[ADMIN]).await;
    std::fs::write(
        &gw.config_path,
        config(&m, &["a"], "watch_interval = \"0s\"\nbogus = 1")
            .replace("sk-a", "${E2E_UNSET_KEY}"),
    )
    .unwrap();
    let r = admin(&gw, "POST", "/admin/reload", ADMIN.1).await;
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"].as_str().unwrap().contains("bogus"),
        "{body}"
    );
    assert_eq!(
        reqwest::Client::new()
            .post(gw.url("/v1/chat/completions"))
            .json(&chat())
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        metric(
            &gw.metrics().await,
            r#"tollgate_config_reloads_total{result="failure"}"#
        ),
        1.0
    );
    // The log is read from the gateway's stderr, which may lag its metrics.
    assert!(gw.logged("config reload refused").await, "{}", gw.logs());
    assert_eq!(gw.logs().matches("config reload refused").count(), 1);
}

#[tokio::test]
async fn a_changed_file_and_sighup_both_reload() {
    let m = mock().await;
    let gw = Gateway::start(&config(&m, &["a"], "watch_interval = \"100ms\""), &[ADMIN]).await;
    let c = reqwest::Client::new();
    gw.replace_config(&config(&m, &["b"], "watch_interval = \"100ms\""));
    until("the watcher to reload", || {
        gw.logs().contains("\"trigger\":\"file change\"")
    })
    .await;
    c.post(gw.url("/v1/chat/completions"))
        .json(&chat())
        .send()
        .await
        .unwrap();
    assert_eq!(m.requests_for_key("sk-b"), 1);
    std::process::Command::new("kill")
        .args(["-HUP", &gw.pid().to_string()])
        .status()
        .unwrap();
    until("SIGHUP to reload", || {
        gw.logs().contains("\"trigger\":\"SIGHUP\"")
    })
    .await;
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

#[tokio::test]
async fn a_separate_admin_listener_serves_metrics_and_admin() {
    let m = mock().await;
    // Port 0: the gateway says where it listens (a port found free and handed over could be
    // taken by a test running beside this one).
    let toml = config(&m, &["a"], "").replace(
        "[admin]",
        "[server]\nadmin_listen = \"127.0.0.1:0\"\n[admin]",
    );
    let gw = Gateway::start(&toml, &[ADMIN]).await;
    let admin_port = gw.logged_addr("admin listening").port();
    let c = reqwest::Client::new();
    assert_eq!(
        c.get(gw.url("/metrics")).send().await.unwrap().status(),
        404,
        "not on the public listener"
    );
    let text = c
        .get(format!("http://127.0.0.1:{admin_port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("tollgate_build_info"));
    let r = c
        .get(format!("http://127.0.0.1:{admin_port}/admin/keys"))
        .bearer_auth(ADMIN.1)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        c.get(format!("http://127.0.0.1:{admin_port}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

/// A client that leaves is counted and logged as `client_cancelled`, before the answer's head
/// and mid-stream alike, and never as the upstream's stream error.
#[tokio::test]
async fn a_client_that_leaves_is_counted_as_cancelled_not_as_an_upstream_failure() {
    let m = mock().await;
    let gw = Gateway::start(&config(&m, &["k1"], ""), &[ADMIN]).await;
    // Before the head: the upstream hangs, the client gives up.
    let c = reqwest::Client::new();
    let gone = c
        .post(gw.url("/v1/chat/completions"))
        .header("x-mock-fault", "hang")
        .timeout(Duration::from_millis(300))
        .json(&chat())
        .send()
        .await;
    assert!(gone.is_err(), "the client timed out");
    // Mid-stream: the first chunk arrives, then the client drops the body.
    gw.leave_mid_stream().await;
    let cancelled = |text: &str, class: &str| {
        metric(
            text,
            &format!(
                "tollgate_requests_total{{endpoint=\"chat_completions\",model=\"other\",outcome=\"client_cancelled\",status_class=\"{class}\"}}"
            ),
        )
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = gw.metrics().await;
        if cancelled(&text, "4xx") == 1.0 && cancelled(&text, "2xx") == 1.0 {
            let broken: f64 = text
                .lines()
                .filter(|l| l.starts_with("tollgate_stream_errors_total{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            assert_eq!(broken, 0.0, "a client leaving is not a stream error");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not counted: {}",
            text.lines()
                .filter(|l| l.starts_with("tollgate_requests_total"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The log is written by a thread of its own: the second line may still be on its way.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while gw.logs().matches("client_cancelled").count() < 2 && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let logs = gw.logs();
    assert_eq!(
        logs.matches("client_cancelled").count(),
        2,
        "one access line each: {logs}"
    );
    assert!(!logs.contains("answer ended early"), "{logs}");
}

/// What a request that spans a reload does lands where the next request looks: a client's
/// stream opened before two reloads still holds its `max_concurrent` slot, and a 429 answered
/// after a reload cools the key in the new config's pool.
#[tokio::test]
async fn requests_in_flight_across_reloads_keep_their_counts_and_outcomes() {
    let m = mock().await;
    let extra = "watch_interval = \"0s\"\n[[clients]]\nname = \"team\"\nkey = \"tg-team\"\nmax_concurrent = 1\n";
    let toml = config(&m, &["a", "b"], extra)
        .replace("[[clients]]", "[retry]\nmax_attempts = 1\n[[clients]]");
    let gw = Gateway::start(&toml, &[ADMIN]).await;
    let c = reqwest::Client::new();
    let reload = || async {
        let r = admin(&gw, "POST", "/admin/reload", ADMIN.1).await;
        assert_eq!(r.status(), 200);
    };
    // A stream held open on key a, then two reloads.
    m.script("sk-a", [Fault::HoldAfterFirst]);
    let open = c
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth("tg-team")
        .json(&json!({"model": "m", "stream": true, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), 200);
    reload().await;
    reload().await;
    let second = c
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth("tg-team")
        .json(&chat())
        .send()
        .await
        .unwrap();
    assert_eq!(
        second.status(),
        429,
        "the open stream still holds the client's one slot"
    );
    drop(open);
    m.release_holds();

    // A request sent before a reload is answered 429 after it: key a cools in the new pool.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let slot_free = || async {
        c.post(gw.url("/v1/chat/completions"))
            .bearer_auth("tg-team")
            .json(&chat())
            .send()
            .await
            .unwrap()
            .status()
    };
    while slot_free().await == 429 {
        assert!(
            std::time::Instant::now() < deadline,
            "the slot was never given back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = [m.requests_for_key("sk-a"), m.requests_for_key("sk-b")];
    for key in ["sk-a", "sk-b"] {
        m.script(
            key,
            [Fault::rate_limited(60).after(Duration::from_millis(400))],
        );
    }
    let slow = {
        let c = c.clone();
        let url = gw.url("/v1/chat/completions");
        tokio::spawn(async move {
            c.post(url)
                .bearer_auth("tg-team")
                .json(&chat())
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    until("the slow request reached a key", || {
        m.requests_for_key("sk-a") + m.requests_for_key("sk-b") > before[0] + before[1]
    })
    .await;
    let used = if m.requests_for_key("sk-a") > before[0] {
        0
    } else {
        1
    };
    reload().await;
    assert_eq!(
        slow.await.unwrap(),
        429,
        "one attempt, answered 429 after the reload"
    );
    m.clear();
    let keys: Value = admin(&gw, "GET", "/admin/keys", ADMIN.1)
        .await
        .json()
        .await
        .unwrap();
    let a = &keys["providers"][0]["keys"][used];
    assert_eq!(a["id"], ["a", "b"][used]);
    assert_eq!(a["state"], "cooling", "{keys}");
}
