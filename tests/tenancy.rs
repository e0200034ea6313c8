//! Tenancy, end to end: two teams share one upstream key (one organization, as the mock keeps
//! it) and neither reaches what the other made. Files, batches and stored responses are read,
//! deleted, listed and continued by their creator only (404 for anyone else, the upstream never
//! asked); endpoint families outside a client's `endpoints` are 403; feature headers and body
//! limits are per client; with Redis, every replica knows who owns what.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use mock_upstream::MockHandle;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tollgate_e2e::{mock, provider, Gateway};

const TEAMS: &str = r#"
[[clients]]
name = "team-a"
key = "tg-a"
endpoints = ["inference", "files", "batches"]

[[clients]]
name = "team-b"
key = "tg-b"
endpoints = ["inference", "files", "batches"]
forward_headers = ["anthropic-beta"]

[[clients]]
name = "plain"
key = "tg-plain"
max_body = "1KiB"
"#;

async fn start(extra: &str) -> (MockHandle, Gateway) {
    let m = mock().await;
    let toml = format!(
        "{extra}{}{TEAMS}",
        provider("openai", &m.base_url(), &["k1"], true)
    );
    let gw = Gateway::start(&toml, &[]).await;
    (m, gw)
}

async fn call(
    gw: &Gateway,
    key: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let c = reqwest::Client::new();
    let mut req = c
        .request(method.parse().expect("a method"), gw.url(path))
        .bearer_auth(key);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let r = req.send().await.expect("an answer");
    let status = r.status();
    let body = r.json().await.unwrap_or(Value::Null);
    (status, body)
}

async fn upload(gw: &Gateway, key: &str) -> String {
    let form = "--XyZ\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jsonl\"\r\n\r\n{}\n\r\n--XyZ--\r\n";
    let r = reqwest::Client::new()
        .post(gw.url("/v1/files"))
        .bearer_auth(key)
        .header("content-type", "multipart/form-data; boundary=XyZ")
        .body(form)
        .send()
        .await
        .expect("an answer");
    assert_eq!(r.status(), 200);
    let file: Value = r.json().await.expect("json");
    file["id"].as_str().expect("an id").to_owned()
}

fn ids(listing: &Value) -> Vec<String> {
    listing["data"]
        .as_array()
        .expect("a listing")
        .iter()
        .filter_map(|f| f["id"].as_str().map(str::to_owned))
        .collect()
}

fn assert_not_found(got: &(StatusCode, Value), what: &str) {
    assert_eq!(got.0, 404, "{what}: {}", got.1);
    assert_eq!(got.1["error"]["code"], "not_found", "{what}: {}", got.1);
    assert_eq!(got.1["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn a_team_cannot_read_delete_list_or_continue_another_teams_objects() {
    let (m, gw) = start("").await;
    let file_a = upload(&gw, "tg-a").await;
    let file_b = upload(&gw, "tg-b").await;
    // An object of the organization the gateway did not make is nobody's.
    let outside = reqwest::Client::new()
        .post(format!("{}/files", m.base_url()))
        .bearer_auth("k1")
        .body("x")
        .send()
        .await
        .expect("the mock answers");
    assert_eq!(outside.status(), 200);

    let before = m.requests().len();
    for (method, path) in [
        ("GET", format!("/v1/files/{file_a}")),
        ("GET", format!("/v1/files/{file_a}/content")),
        ("DELETE", format!("/v1/files/{file_a}")),
    ] {
        assert_not_found(&call(&gw, "tg-b", method, &path, None).await, &path);
    }
    let batch = json!({"input_file_id": file_a, "endpoint": "/v1/chat/completions", "completion_window": "24h"});
    let refused = call(&gw, "tg-b", "POST", "/v1/batches", Some(batch.clone())).await;
    assert_not_found(&refused, "a batch of another team's file");
    assert_eq!(refused.1["error"]["param"], "input_file_id");
    assert_eq!(
        m.requests().len(),
        before,
        "nothing of it reached the upstream"
    );

    // Listings hold only the caller's own.
    let (_, listing) = call(&gw, "tg-a", "GET", "/v1/files", None).await;
    assert_eq!(ids(&listing), std::slice::from_ref(&file_a));
    let (_, listing) = call(&gw, "tg-b", "GET", "/v1/files", None).await;
    assert_eq!(ids(&listing), std::slice::from_ref(&file_b));

    // The owner reads, batches and deletes; the batch's output file is the owner's too.
    assert_eq!(
        call(
            &gw,
            "tg-a",
            "GET",
            &format!("/v1/files/{file_a}/content"),
            None
        )
        .await
        .0,
        200
    );
    let (status, made) = call(&gw, "tg-a", "POST", "/v1/batches", Some(batch)).await;
    assert_eq!(status, 200, "{made}");
    let batch_id = made["id"].as_str().expect("a batch id").to_owned();
    let output = made["output_file_id"]
        .as_str()
        .expect("an output file")
        .to_owned();
    let (_, listing) = call(&gw, "tg-b", "GET", "/v1/batches", None).await;
    assert!(ids(&listing).is_empty(), "{listing}");
    assert_not_found(
        &call(&gw, "tg-b", "GET", &format!("/v1/batches/{batch_id}"), None).await,
        "batch",
    );
    assert_not_found(
        &call(
            &gw,
            "tg-b",
            "POST",
            &format!("/v1/batches/{batch_id}/cancel"),
            None,
        )
        .await,
        "cancel",
    );
    assert_eq!(
        call(&gw, "tg-a", "GET", &format!("/v1/batches/{batch_id}"), None)
            .await
            .0,
        200
    );
    assert_eq!(
        call(
            &gw,
            "tg-a",
            "GET",
            &format!("/v1/files/{output}/content"),
            None
        )
        .await
        .0,
        200
    );
    assert_not_found(
        &call(
            &gw,
            "tg-b",
            "GET",
            &format!("/v1/files/{output}/content"),
            None,
        )
        .await,
        "output",
    );
    assert_eq!(
        call(&gw, "tg-a", "DELETE", &format!("/v1/files/{file_a}"), None)
            .await
            .0,
        200
    );

    // Stored responses: read, continued and deleted by their creator only.
    let (status, made) = call(
        &gw,
        "tg-a",
        "POST",
        "/v1/responses",
        Some(json!({"model": "m", "input": "hi"})),
    )
    .await;
    assert_eq!(status, 200, "{made}");
    let resp = made["id"].as_str().expect("a response id").to_owned();
    let before = m.requests().len();
    assert_not_found(
        &call(&gw, "tg-b", "GET", &format!("/v1/responses/{resp}"), None).await,
        "response",
    );
    assert_not_found(
        &call(
            &gw,
            "tg-b",
            "DELETE",
            &format!("/v1/responses/{resp}"),
            None,
        )
        .await,
        "delete",
    );
    let follow_up = json!({"model": "m", "input": "and then?", "previous_response_id": resp});
    let refused = call(
        &gw,
        "tg-b",
        "POST",
        "/v1/responses",
        Some(follow_up.clone()),
    )
    .await;
    assert_not_found(&refused, "continued");
    assert_eq!(refused.1["error"]["param"], "previous_response_id");
    assert_eq!(m.requests().len(), before);
    assert_eq!(
        call(&gw, "tg-a", "POST", "/v1/responses", Some(follow_up))
            .await
            .0,
        200
    );
    assert_eq!(
        call(&gw, "tg-a", "GET", &format!("/v1/responses/{resp}"), None)
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn endpoints_feature_headers_and_body_limits_are_per_client() {
    let (m, gw) = start("").await;
    for path in [
        "/v1/files",
        "/v1/batches",
        "/v1/organization/usage/completions",
        "/v1/fine_tuning/jobs",
    ] {
        let (status, body) = call(&gw, "tg-plain", "GET", path, None).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert_eq!(body["error"]["code"], "endpoint_not_allowed");
    }
    assert!(m.requests().is_empty());

    let c = reqwest::Client::new();
    for key in ["tg-a", "tg-b"] {
        let r = c
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(key)
            .header("anthropic-beta", "context-1m-2025-08-07")
            .json(&json!({"model": "m", "messages": []}))
            .send()
            .await
            .expect("an answer");
        assert_eq!(r.status(), 200);
    }
    let sent: Vec<bool> = m
        .requests()
        .iter()
        .map(|r| r.headers.contains_key("anthropic-beta"))
        .collect();
    assert_eq!(sent, [false, true], "only team-b may turn beta features on");

    let big = json!({"model": "m", "messages": [{"role": "user", "content": "x".repeat(2048)}]});
    let (status, body) = call(
        &gw,
        "tg-plain",
        "POST",
        "/v1/chat/completions",
        Some(big.clone()),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(m.requests().len(), 2, "the oversized body never left");
    assert_eq!(
        call(&gw, "tg-a", "POST", "/v1/chat/completions", Some(big))
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn every_replica_knows_who_owns_what_through_redis() {
    let Some(redis) = tollgate_e2e::RedisServer::start("every_replica_knows_who_owns_what").await
    else {
        return;
    };
    let state = format!(
        "[state]\nbackend = \"redis\"\nredis_url = \"{}\"\nredis_timeout = \"5s\"\nkey_prefix = \"e2e-owners{}\"\n",
        redis.url(),
        redis.port
    );
    let (m, one) = start(&state).await;
    let two = Gateway::start(
        &format!(
            "{state}{}{TEAMS}",
            provider("openai", &m.base_url(), &["k1"], true)
        ),
        &[],
    )
    .await;
    let file = upload(&one, "tg-a").await;
    let path = format!("/v1/files/{file}");
    // The record is written in the background: the owner's read on the other replica succeeds
    // once it is there.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while call(&two, "tg-a", "GET", &path, None).await.0 != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the record never reached the other replica"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_not_found(
        &call(&two, "tg-b", "GET", &path, None).await,
        "through the other replica",
    );
    let (_, listing) = call(&two, "tg-a", "GET", "/v1/files", None).await;
    assert_eq!(ids(&listing), [file]);
}
