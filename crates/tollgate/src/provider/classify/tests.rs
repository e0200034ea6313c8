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
        let code: &str = code;
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

#[test]
fn a_model_the_target_does_not_serve_moves_on_and_keeps_the_key() {
    let openai = openai_error(
        "invalid_request_error",
        "model_not_found",
        "Project `proj_abc` does not have access to model `gpt-5`",
    );
    assert_eq!(response(403, &[], &openai).kind, Kind::ModelUnavailable);
    let missing = openai_error(
        "invalid_request_error",
        "model_not_found",
        "The model `gpt-9` does not exist or you do not have access to it.",
    );
    assert_eq!(response(404, &[], &missing).kind, Kind::ModelUnavailable);
    let azure = r#"{"error":{"code":"DeploymentNotFound","message":"The API deployment for this resource does not exist."}}"#;
    assert_eq!(response(404, &[], azure).kind, Kind::ModelUnavailable);
    let anthropic =
        r#"{"type":"error","error":{"type":"not_found_error","message":"model: claude-9"}}"#;
    assert_eq!(response(404, &[], anthropic).kind, Kind::ModelUnavailable);
    let scopes = openai_error(
        "invalid_request_error",
        "",
        "You have insufficient permissions for this operation. Missing scopes: model.request.",
    );
    assert_eq!(response(403, &[], &scopes).kind, Kind::ModelUnavailable);
    // A file that is not there is the client's business, and a bare 403 is about the key.
    let file = openai_error("invalid_request_error", "", "No such File object: file-1");
    assert_eq!(response(404, &[], &file).kind, Kind::ClientError);
    assert_eq!(response(403, &[], "").kind, Kind::KeyRejected);
    assert_eq!(
        response(
            401,
            &[],
            &openai_error(
                "invalid_request_error",
                "invalid_api_key",
                "Incorrect API key provided: model"
            )
        )
        .kind,
        Kind::KeyRejected
    );
}

#[test]
fn spend_and_quota_answers_disable_the_key_at_any_status() {
    let anthropic = r#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."}}"#;
    assert_eq!(response(400, &[], anthropic).kind, Kind::QuotaExhausted);
    let billing = openai_error("invalid_request_error", "billing_hard_limit_reached", "x");
    assert_eq!(response(400, &[], &billing).kind, Kind::QuotaExhausted);
    let quota = openai_error(
        "insufficient_quota",
        "insufficient_quota",
        "You exceeded your current quota, please check your plan and billing details.",
    );
    for status in [429, 403, 400] {
        assert_eq!(
            response(status, &[], &quota).kind,
            Kind::QuotaExhausted,
            "{status}"
        );
    }
    let in_stream = br#"{"type":"response.failed","response":{"error":{"code":"insufficient_quota","message":"x"}}}"#;
    assert_eq!(
        classify(Outcome::StreamError { body: in_stream }, now()).kind,
        Kind::QuotaExhausted
    );
}

#[test]
fn the_wait_in_a_message_is_honored_when_no_header_says_more() {
    let body = openai_error(
        "tokens",
        "rate_limit_exceeded",
        "Rate limit reached for gpt-4o in organization org-x on tokens per min (TPM): Limit 30000, Used 29000, Requested 2000. Please try again in 2s. Visit https://platform.openai.com/account/rate-limits to learn more.",
    );
    assert_eq!(response(429, &[], &body).wait, Some(Duration::from_secs(2)));
    assert_eq!(
        response(429, &[("retry-after", "5")], &body).wait,
        Some(Duration::from_secs(5)),
        "a header says more"
    );
    for (text, want) in [
        ("Please try again in 6.379s.", Duration::from_millis(6379)),
        ("Please try again in 20ms.", Duration::from_millis(20)),
        ("please TRY AGAIN IN 1m30s", Duration::from_secs(90)),
        ("try again in 2 seconds", Duration::from_secs(2)),
        ("try again in 1.5s, thanks", Duration::from_millis(1500)),
    ] {
        assert_eq!(message_wait(text), Some(want), "{text}");
    }
    assert_eq!(message_wait("try again later"), None);
    assert_eq!(message_wait("no wait here"), None);
    let event = br#"{"type":"error","code":"rate_limit_exceeded","message":"Please try again in 20ms.","sequence_number":3}"#;
    let v = classify(Outcome::StreamError { body: event }, now());
    assert_eq!(
        v,
        Verdict {
            kind: Kind::RateLimited,
            wait: Some(Duration::from_millis(20))
        }
    );
    let overloaded = br#"{"type":"response.failed","response":{"status":"failed","error":{"code":"server_is_overloaded","message":"busy"}}}"#;
    assert_eq!(
        classify(Outcome::StreamError { body: overloaded }, now()).kind,
        Kind::Transient
    );
    let responses = br#"{"type":"response.failed","response":{"error":{"code":"rate_limit_exceeded","message":"Rate limit reached. Please try again in 1.5s."}}}"#;
    let v = classify(Outcome::StreamError { body: responses }, now());
    assert_eq!(
        v,
        Verdict {
            kind: Kind::RateLimited,
            wait: Some(Duration::from_millis(1500))
        }
    );
}

#[test]
fn a_rate_limit_of_hours_is_a_spend_window() {
    let body = r#"{"type":"error","error":{"type":"rate_limit_error","message":"x"}}"#;
    let days = (3 * 86_400_000u64).to_string();
    let v = response(429, &[("retry-after-ms", &days)], body);
    assert_eq!(
        v,
        Verdict {
            kind: Kind::QuotaExhausted,
            wait: Some(Duration::from_secs(3 * 86_400))
        }
    );
    let minute = response(429, &[("retry-after", "60")], body);
    assert_eq!(minute.kind, Kind::RateLimited);
}

#[test]
fn every_wait_is_clamped() {
    for huge in [
        "10000000000000000000",
        "1e300",
        "inf",
        "NaN",
        "18446744073709551615",
    ] {
        let v = response(503, &[("retry-after", huge)], "");
        assert!(v.wait.is_none_or(|w| w <= MAX_WAIT), "{huge}: {v:?}");
        let v = response(429, &[("retry-after-ms", huge)], "");
        assert!(v.wait.is_none_or(|w| w <= MAX_WAIT), "{huge}: {v:?}");
    }
    assert_eq!(
        response(503, &[("retry-after", "10000000000000000000")], "").wait,
        Some(MAX_WAIT)
    );
    let far = httpdate::fmt_http_date(now() + Duration::from_secs(400 * 86_400));
    assert_eq!(
        response(503, &[("retry-after", &far)], "").wait,
        Some(MAX_WAIT)
    );
    assert!(message_wait("try again in 99999999999999999999h").is_none_or(|w| w <= MAX_WAIT));
    assert_eq!(message_wait("try again in 900 days"), Some(MAX_WAIT));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn no_header_or_body_panics_or_asks_past_the_cap(
            status in 0u16..1000,
            retry_after in "\\PC{0,40}",
            retry_after_ms in "[0-9.eE+-]{0,30}",
            reset in "[0-9hms.]{0,20}",
            body in proptest::collection::vec(any::<u8>(), 0..200),
            message in "\\PC{0,80}",
        ) {
            let mut map = HeaderMap::new();
            for (name, v) in [
                ("retry-after", &retry_after),
                ("retry-after-ms", &retry_after_ms),
                ("x-ratelimit-reset-requests", &reset),
            ] {
                if let Ok(v) = HeaderValue::from_str(v) {
                    map.insert(name, v);
                }
            }
            let json = openai_error("requests", "rate_limit_exceeded", &message);
            for body in [&body[..], json.as_bytes()] {
                let outcome = Outcome::Response { status, headers: &map, body };
                let v = classify(outcome, now());
                prop_assert!(v.wait.is_none_or(|w| w <= MAX_WAIT));
                let v = classify(Outcome::StreamError { body }, now());
                prop_assert!(v.wait.is_none_or(|w| w <= MAX_WAIT));
            }
            prop_assert!(message_wait(&message).is_none_or(|w| w <= MAX_WAIT));
        }
    }
}
