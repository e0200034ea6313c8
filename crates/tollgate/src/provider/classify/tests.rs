use super::*;
use http::HeaderValue;

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn response(status: u16, headers: &[(&'static str, &str)], body: &str) -> Verdict {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.insert(*k, HeaderValue::from_str(v).unwrap());
    }
    classify(
        Outcome::Response {
            status,
            headers: &map,
            body: body.as_bytes(),
        },
        now(),
    )
}

fn openai_error(kind: &str, code: &str, message: &str) -> String {
    serde_json::json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
        .to_string()
}

#[test]
fn success_is_success() {
    assert_eq!(response(200, &[], "").kind, Kind::Success);
    assert_eq!(response(201, &[], "").kind, Kind::Success);
}

#[test]
fn rate_limit_cools_for_what_the_provider_says() {
    let body = openai_error("requests", "rate_limit_exceeded", "Rate limit reached");
    let v = response(429, &[("retry-after", "2")], &body);
    assert_eq!(
        v,
        Verdict {
            kind: Kind::RateLimited,
            wait: Some(Duration::from_secs(2))
        }
    );
    let v = response(
        429,
        &[("retry-after-ms", "1500"), ("retry-after", "9")],
        &body,
    );
    assert_eq!(
        v.wait,
        Some(Duration::from_millis(1500)),
        "retry-after-ms wins"
    );
    let v = response(429, &[("x-ms-retry-after-ms", "250")], &body);
    assert_eq!(v.wait, Some(Duration::from_millis(250)));
    let date = httpdate::fmt_http_date(now() + Duration::from_secs(7));
    assert_eq!(
        response(429, &[("retry-after", &date)], &body).wait,
        Some(Duration::from_secs(7))
    );
    let v = response(
        429,
        &[
            ("x-ratelimit-reset-requests", "6m0s"),
            ("x-ratelimit-reset-tokens", "20ms"),
        ],
        &body,
    );
    assert_eq!(
        v.wait,
        Some(Duration::from_secs(360)),
        "type requests picks the requests reset"
    );
    let tokens = openai_error("tokens", "rate_limit_exceeded", "x");
    let v = response(
        429,
        &[
            ("x-ratelimit-reset-requests", "6m0s"),
            ("x-ratelimit-reset-tokens", "1.5s"),
        ],
        &tokens,
    );
    assert_eq!(v.wait, Some(Duration::from_millis(1500)));
    assert_eq!(response(429, &[], &body).wait, None);
    assert_eq!(response(429, &[("retry-after", "soon")], &body).wait, None);
    assert_eq!(response(429, &[("retry-after", "-1")], &body).wait, None);
}

#[test]
fn quota_codes_disable_the_key_whatever_the_status() {
    for code in QUOTA_CODES {
        assert_eq!(
            response(429, &[], &openai_error("insufficient_quota", code, "x")).kind,
            Kind::QuotaExhausted,
            "{code}"
        );
    }
    let anthropic = r#"{"type":"error","error":{"type":"rate_limit_error","message":"x","details":{"error_code":"enforced_spend_limit_reached"}}}"#;
    assert_eq!(response(429, &[], anthropic).kind, Kind::QuotaExhausted);
    let billing = r#"{"type":"error","error":{"type":"billing_error","message":"x"}}"#;
    assert_eq!(response(402, &[], billing).kind, Kind::QuotaExhausted);
}

#[test]
fn request_too_large_moves_to_another_key_without_cooling() {
    let body = openai_error(
        "tokens",
        "rate_limit_exceeded",
        "Request too large for gpt-4o on tokens per min",
    );
    assert_eq!(response(429, &[], &body).kind, Kind::KeyTooSmall);
}

#[test]
fn auth_failures_reject_the_key() {
    assert_eq!(
        response(
            401,
            &[],
            &openai_error("invalid_request_error", "invalid_api_key", "x")
        )
        .kind,
        Kind::KeyRejected
    );
    assert_eq!(response(403, &[], "").kind, Kind::KeyRejected);
    let anthropic =
        r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#;
    assert_eq!(response(401, &[], anthropic).kind, Kind::KeyRejected);
}

#[test]
fn transient_statuses_retry_with_their_wait() {
    for status in [408, 409, 500, 502, 503, 504, 529] {
        assert_eq!(response(status, &[], "").kind, Kind::Transient, "{status}");
    }
    assert_eq!(
        response(503, &[("retry-after", "3")], "").wait,
        Some(Duration::from_secs(3))
    );
    assert_eq!(
        response(503, &[("x-ratelimit-reset-requests", "3s")], "").wait,
        None,
        "reset headers only for 429"
    );
    let overloaded =
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    assert_eq!(response(529, &[], overloaded).kind, Kind::Transient);
}

#[test]
fn context_length_falls_back() {
    let body = openai_error(
        "invalid_request_error",
        "context_length_exceeded",
        "too long",
    );
    assert_eq!(response(400, &[], &body).kind, Kind::ContextTooLong);
    let anthropic = r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 250000 tokens > 200000 maximum"}}"#;
    assert_eq!(response(400, &[], anthropic).kind, Kind::ContextTooLong);
}

#[test]
fn other_client_errors_pass_through() {
    for status in [400, 404, 413, 422] {
        assert_eq!(
            response(
                status,
                &[],
                &openai_error("invalid_request_error", "x", "bad")
            )
            .kind,
            Kind::ClientError
        );
    }
    let filtered = openai_error("invalid_request_error", "content_filter", "filtered");
    assert_eq!(response(400, &[], &filtered).kind, Kind::ClientError);
}

#[test]
fn transport_failures() {
    assert_eq!(classify(Outcome::ConnectError, now()).kind, Kind::Transient);
    assert_eq!(
        classify(Outcome::TransportError, now()).kind,
        Kind::Transient
    );
    assert_eq!(classify(Outcome::Timeout, now()).kind, Kind::Timeout);
}

#[test]
fn stream_error_events() {
    let openai =
        br#"{"error":{"message":"overloaded","type":"server_error","param":null,"code":null}}"#;
    assert_eq!(
        classify(Outcome::StreamError { body: openai }, now()).kind,
        Kind::Transient
    );
    let anthropic =
        br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    assert_eq!(
        classify(Outcome::StreamError { body: anthropic }, now()).kind,
        Kind::Transient
    );
    let rl = br#"{"error":{"message":"x","type":"requests","code":"rate_limit_exceeded"}}"#;
    assert_eq!(
        classify(Outcome::StreamError { body: rl }, now()).kind,
        Kind::RateLimited
    );
}
