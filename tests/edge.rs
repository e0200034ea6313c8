//! What crosses the edge: paths that could reach outside `/v1` are refused before anything
//! goes upstream; headers that identify, route or bill are kept on their own side.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step is a failed test"
)]

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tollgate_e2e::{mock, provider, Gateway};

/// Sends `path` exactly as written (HTTP clients normalize `..` away) and returns the status
/// line's code and the body.
async fn raw_get(gw: &Gateway, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

#[tokio::test]
async fn traversal_paths_are_refused_and_never_reach_the_upstream() {
    let m = mock().await;
    let gw = Gateway::start(&provider("openai", &m.base_url(), &["a"], true), &[]).await;
    for path in [
        "/v1/chat/completions/../../../metrics",
        "/v1/%2e%2e/admin/keys",
        "/v1/models/..%2F..%2Fadmin",
        "/v1//etc/passwd",
        "/v1/files/.%2E/x",
        "/v1/files/a%5Cb",
        "/v1/files/a%00",
    ] {
        let (status, body) = raw_get(&gw, path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("\"code\":\"invalid_path\""), "{path}: {body}");
    }
    assert!(m.requests().is_empty(), "{:?}", m.requests());
    let (status, _) = raw_get(&gw, "/v1/models/gpt-4o-mini").await;
    assert_eq!(status, 200, "a plain path still passes");
}

#[tokio::test]
async fn identity_cookie_and_feature_headers_stay_on_their_side() {
    let m = mock().await;
    let gw = Gateway::start(&provider("openai", &m.base_url(), &["a"], true), &[]).await;
    let answer = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    });
    let upstream_headers = [
        ("set-cookie", "__cf_bm=secret; path=/"),
        ("openai-organization", "org-ours"),
        ("openai-project", "proj_ours"),
        ("x-request-id", "req_upstream_1"),
        ("x-ratelimit-remaining-requests", "4999"),
        ("x-ratelimit-limit-tokens", "2000000"),
    ];
    m.script(
        "sk-a",
        [mock_upstream::Fault::Status {
            status: 200,
            body: answer.to_string(),
            headers: upstream_headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }],
    );
    let r = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .header("cookie", "session=abc")
        .header("x-forwarded-for", "10.9.8.7")
        .header("forwarded", "for=10.9.8.7")
        .header("x-real-ip", "10.9.8.7")
        .header("via", "1.1 corp-proxy")
        .header("anthropic-beta", "context-1m-2025-08-07")
        .header("openai-beta", "something=v1")
        .header("x-request-id", "client-id-1")
        .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let sent = &m.requests()[0].headers;
    for name in [
        "cookie",
        "x-forwarded-for",
        "forwarded",
        "x-real-ip",
        "via",
        "anthropic-beta",
        "openai-beta",
    ] {
        assert!(sent.get(name).is_none(), "{name} reached the upstream");
    }
    // Back to the client: the gateway's request id, never the upstream's cookies or identity.
    assert_eq!(r.headers()["x-request-id"], "client-id-1");
    assert_eq!(r.headers()["x-upstream-request-id"], "req_upstream_1");
    for name in ["set-cookie", "openai-organization", "openai-project"] {
        assert!(r.headers().get(name).is_none(), "{name} reached the client");
    }
    assert!(
        r.headers()
            .keys()
            .all(|k| !k.as_str().starts_with("x-ratelimit-")),
        "the upstream key's own limits are not the client's: {:?}",
        r.headers()
    );
}

#[tokio::test]
async fn the_model_allow_list_holds_under_every_media_type_and_in_forms() {
    let m = mock().await;
    let gw = Gateway::start(
        &format!(
            "{}[[clients]]\nname = \"search\"\nkey = \"tg-search\"\nmodels = [\"gpt-4o-mini\"]\n",
            provider("openai", &m.base_url(), &["a"], true)
        ),
        &[],
    )
    .await;
    let c = reqwest::Client::new();
    let forbidden = r#"{"model":"o1-pro","input":"hi"}"#;
    for media in [
        "application/json",
        "Application/JSON",
        "text/plain",
        "application/merge-patch+json",
    ] {
        let r = c
            .post(gw.url("/v1/responses"))
            .bearer_auth("tg-search")
            .header("content-type", media)
            .body(forbidden)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{media}");
    }
    // A multipart form names its model too.
    let form = "--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-large\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF\r\n--XyZ--\r\n";
    let r = c
        .post(gw.url("/v1/audio/transcriptions"))
        .bearer_auth("tg-search")
        .header("content-type", "multipart/form-data; boundary=XyZ")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "{}", r.text().await.unwrap());
    // An upload that must name a model and names none is refused, not sent with our key.
    let nameless = "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nRIFF\r\n--XyZ--\r\n";
    let r = c
        .post(gw.url("/v1/audio/transcriptions"))
        .bearer_auth("tg-search")
        .header("content-type", "multipart/form-data; boundary=XyZ")
        .body(nameless)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(m.requests().is_empty(), "{:?}", m.requests());
    // What the client may use still passes, whatever the media type says.
    let r = c
        .post(gw.url("/v1/responses"))
        .bearer_auth("tg-search")
        .header("content-type", "Application/JSON; charset=utf-8")
        .body(r#"{"model":"gpt-4o-mini","input":"hi"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_request_without_a_valid_key_is_refused_before_its_body_is_read() {
    let m = mock().await;
    let gw = Gateway::start(
        &format!(
            "{}[[clients]]\nname = \"team\"\nkey = \"tg-team\"\n",
            provider("openai", &m.base_url(), &["a"], true)
        ),
        &[],
    )
    .await;
    for auth in ["", "authorization: Bearer tg-wrong\r\n"] {
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        // Announces 10 MB and sends none of it: an answer proves nothing was waited for.
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\n{auth}content-type: application/json\r\ncontent-length: 10000000\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("answered without waiting for the body")
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(text.starts_with("HTTP/1.1 401"), "{text}");
        assert!(text.contains("invalid_api_key"), "{text}");
    }
    assert!(m.requests().is_empty());
}
