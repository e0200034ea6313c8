//! Fault precedence, header parsing and error bodies, without a socket.

use super::*;

#[test]
fn queued_faults_pop_in_order_then_normal() {
    let mut s = Scripts::default();
    s.push("k", [Fault::status(503), Fault::rate_limited(2)]);
    assert_eq!(s.take(Some("k")), Some(Fault::status(503)));
    assert_eq!(s.take(Some("other")), None);
    assert_eq!(s.take(Some("k")), Some(Fault::rate_limited(2)));
    assert_eq!(s.take(Some("k")), None);
    assert_eq!(s.take(None), None);
}

#[test]
fn queue_wins_over_always_and_always_persists() {
    let mut s = Scripts::default();
    s.set_always("k", Fault::status(401));
    s.push("k", [Fault::HoldAfterFirst]);
    assert_eq!(s.take(Some("k")), Some(Fault::HoldAfterFirst));
    assert_eq!(s.take(Some("k")), Some(Fault::status(401)));
    assert_eq!(s.take(Some("k")), Some(Fault::status(401)));
    s.clear();
    assert_eq!(s.take(Some("k")), None);
}

#[test]
fn script_takes_precedence_over_header() {
    let mut s = Scripts::default();
    s.push("k", [Fault::BreakAfter(1)]);
    assert_eq!(
        choose(&mut s, Some("k"), Some("status=500"), || false),
        Some(Fault::BreakAfter(1))
    );
    assert_eq!(
        choose(&mut s, Some("k"), Some("status=500"), || false),
        Some(Fault::status(500))
    );
    assert_eq!(choose(&mut s, Some("k"), None, || false), None);
}

#[test]
fn parses_every_header_form() {
    assert_eq!(parse_fault_header("status=503"), Ok(Fault::status(503)));
    assert_eq!(
        parse_fault_header(" delay-ms = 200 "),
        Ok(Fault::Delay(Duration::from_millis(200)))
    );
    assert_eq!(
        parse_fault_header("break-after=2"),
        Ok(Fault::BreakAfter(2))
    );
    assert_eq!(
        parse_fault_header("error-first"),
        Ok(Fault::StreamErrorFirst)
    );
    assert_eq!(parse_fault_header("hold"), Ok(Fault::HoldAfterFirst));
    assert_eq!(
        parse_fault_header("rate-limited=3"),
        Ok(Fault::rate_limited(3))
    );
    assert_eq!(parse_fault_header("hang"), Ok(Fault::Hang));
    assert_eq!(parse_fault_header("huge-usage"), Ok(Fault::HugeUsage));
    assert_eq!(parse_fault_header("gzip"), Ok(Fault::Gzip(None)));
    assert_eq!(
        parse_fault_header("try-again-in-ms=2000"),
        Ok(Fault::rate_limited_in_message(Duration::from_secs(2)))
    );
    assert!(parse_fault_header("gzip=1").is_err());
    assert!(parse_fault_header("status=abc").is_err());
    assert!(parse_fault_header("status=70000").is_err());
    assert!(parse_fault_header("explode").is_err());
}

#[test]
fn bad_header_becomes_400() {
    let mut s = Scripts::default();
    match choose(&mut s, None, Some("nope"), || false) {
        Some(Fault::Status { status, .. }) => assert_eq!(status, 400),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn status_bodies_are_openai_shaped() -> Result<(), serde_json::Error> {
    let rate: Value = match Fault::rate_limited(7) {
        Fault::Status {
            status,
            body,
            headers,
        } => {
            assert_eq!(status, 429);
            assert_eq!(headers, vec![("retry-after".into(), "7".into())]);
            serde_json::from_str(&body)?
        }
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(rate["error"]["code"], "rate_limit_exceeded");
    assert_eq!(rate["error"]["type"], "requests");
    assert_eq!(
        error_body_for_status(401)["error"]["code"],
        "invalid_api_key"
    );
    assert_eq!(
        error_body_for_status(400)["error"]["type"],
        "invalid_request_error"
    );
    assert_eq!(error_body_for_status(502)["error"]["type"], "server_error");
    assert!(error_body_for_status(503)["error"]["param"].is_null());
    Ok(())
}

#[test]
fn with_header_only_touches_status() {
    assert_eq!(
        Fault::HoldAfterFirst.with_header("a", "b"),
        Fault::HoldAfterFirst
    );
}

#[test]
fn flaky_fails_every_nth_request_of_its_key_and_spares_the_rest() {
    let mut s = Scripts::default();
    s.set_always("k", Fault::status(503).flaky(5));
    s.set_always("j", Fault::status(500).flaky(2));
    let mut hits = Vec::new();
    for n in 1..=10 {
        if choose(&mut s, Some("k"), None, || false).is_some() {
            hits.push(n);
        }
        // Another key's flaky fault counts on its own.
        let _ = choose(&mut s, Some("j"), None, || false);
    }
    assert_eq!(hits, vec![5, 10]);
    assert_eq!(s.take(Some("k")), Some(Fault::status(503).flaky(5)));
    s.clear();
    s.set_always("k", Fault::status(503).flaky(0));
    assert!((0..20).all(|_| choose(&mut s, Some("k"), None, || false).is_none()));
}

#[test]
fn a_spared_request_falls_through_to_the_header() {
    let mut s = Scripts::default();
    s.set_always("k", Fault::status(503).flaky(2));
    assert_eq!(
        choose(&mut s, Some("k"), Some("status=418"), || false),
        Some(Fault::status(418))
    );
    assert_eq!(
        choose(&mut s, Some("k"), Some("status=418"), || false),
        Some(Fault::status(503))
    );
}

#[test]
fn streams_only_applies_to_streaming_requests() {
    let mut s = Scripts::default();
    s.set_always("k", Fault::StreamErrorFirst.streams_only());
    assert_eq!(choose(&mut s, Some("k"), None, || false), None);
    assert_eq!(
        choose(&mut s, Some("k"), None, || true),
        Some(Fault::StreamErrorFirst)
    );
    // Only the requests a flaky fault sees are counted: plain ones never reach it here.
    s.set_always("k", Fault::status(500).flaky(2).streams_only());
    let got: Vec<bool> = [true, false, false, true, true, true]
        .into_iter()
        .map(|stream| choose(&mut s, Some("k"), None, || stream).is_some())
        .collect();
    assert_eq!(got, [false, false, false, true, false, true]);
}

#[test]
fn gzip_keeps_compressing_when_its_inner_fault_spares_the_request() {
    let mut s = Scripts::default();
    s.set_always("k", Fault::status(503).flaky(2).gzipped());
    assert_eq!(
        choose(&mut s, Some("k"), None, || false),
        Some(Fault::gzip())
    );
    assert_eq!(
        choose(&mut s, Some("k"), None, || false),
        Some(Fault::status(503).gzipped())
    );
}

#[test]
fn the_message_only_429_names_its_wait_and_has_no_retry_after() -> Result<(), serde_json::Error> {
    let message = |wait: Duration| -> Result<(Vec<(String, String)>, Value), serde_json::Error> {
        match Fault::rate_limited_in_message(wait) {
            Fault::Status {
                status: 429,
                body,
                headers,
            } => Ok((headers, serde_json::from_str(&body)?)),
            other => panic!("unexpected {other:?}"),
        }
    };
    let (headers, body) = message(Duration::from_secs(2))?;
    assert!(headers.is_empty(), "{headers:?}");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(body["error"]["type"], "requests");
    let text = body["error"]["message"].as_str().unwrap_or_default();
    assert!(text.starts_with("Rate limit reached for "), "{text}");
    assert!(text.contains(" Please try again in 2s. Visit "), "{text}");
    for (wait, words) in [
        (Duration::from_millis(20), "in 20ms."),
        (Duration::from_millis(1500), "in 1.5s."),
        (Duration::from_millis(1898), "in 1.898s."),
    ] {
        let (_, body) = message(wait)?;
        let text = body["error"]["message"].as_str().unwrap_or_default();
        assert!(text.contains(words), "{wait:?}: {text}");
    }
    Ok(())
}

#[test]
fn error_builds_the_envelope_it_is_given() -> Result<(), serde_json::Error> {
    let Fault::Status { status, body, .. } = Fault::error(
        403,
        "The model `gpt-5` does not exist or you do not have access to it.",
        "invalid_request_error",
        Some("model_not_found"),
    ) else {
        panic!("not a status fault");
    };
    assert_eq!(status, 403);
    let body: Value = serde_json::from_str(&body)?;
    assert_eq!(body["error"]["code"], "model_not_found");
    assert!(body["error"]["param"].is_null());
    Ok(())
}

#[test]
fn parses_the_responses_header_forms() {
    assert_eq!(
        parse_fault_header("response-failed=insufficient_quota"),
        Ok(Fault::response_insufficient_quota())
    );
    assert_eq!(
        parse_fault_header("response-error=rate_limit_exceeded"),
        Ok(Fault::response_rate_limited(Duration::from_millis(1500)).as_error_event())
    );
    assert_eq!(
        parse_fault_header("response-failed=weird"),
        Ok(Fault::response_failed("weird", "Mock failure: weird."))
    );
    assert_eq!(
        parse_fault_header("response-cut-after=2"),
        Ok(Fault::ResponseCutAfter(2))
    );
    assert_eq!(
        parse_fault_header("response-end-after=0"),
        Ok(Fault::ResponseEndAfter(0))
    );
    assert!(parse_fault_header("response-failed").is_err());
    assert!(parse_fault_header("response-failed=").is_err());
    assert!(parse_fault_header("response-cut-after=x").is_err());
}

#[test]
fn the_responses_rate_limit_names_tokens_per_minute_and_its_wait() {
    let Fault::ResponseFailed {
        code,
        message,
        error_event,
    } = Fault::response_rate_limited(Duration::from_millis(1500))
    else {
        panic!("not a response failure");
    };
    assert_eq!((code.as_str(), error_event), ("rate_limit_exceeded", false));
    assert_eq!(
        message,
        "Rate limit reached for gpt-test in organization org-mock on tokens per min (TPM): \
         Limit 30000, Used 29000, Requested 4000. Please try again in 1.5s. Visit \
         https://platform.openai.com/account/rate-limits to learn more."
    );
    let Fault::ResponseFailed { message, .. } =
        Fault::response_rate_limited(Duration::from_millis(20))
    else {
        panic!("not a response failure");
    };
    assert!(message.contains("try again in 20ms."), "{message}");
}

#[test]
fn as_error_event_reaches_inside_conditions() {
    let event = |fault: Fault| match fault {
        Fault::ResponseFailed { error_event, .. } => error_event,
        _ => false,
    };
    assert!(event(Fault::response_server_error().as_error_event()));
    let wrapped = Fault::response_overloaded()
        .flaky(2)
        .streams_only()
        .gzipped()
        .as_error_event();
    let Fault::Gzip(Some(inner)) = wrapped else {
        panic!("not gzip");
    };
    let Fault::StreamsOnly(inner) = *inner else {
        panic!("not streams-only");
    };
    let Fault::Flaky { fault, .. } = *inner else {
        panic!("not flaky");
    };
    assert!(event(*fault));
    assert_eq!(Fault::HugeUsage.as_error_event(), Fault::HugeUsage);
}

#[test]
fn response_failures_outside_a_stream_are_openai_http_errors() -> Result<(), serde_json::Error> {
    for (code, status, kind) in [
        ("rate_limit_exceeded", 429, "tokens"),
        ("insufficient_quota", 429, "insufficient_quota"),
        ("context_length_exceeded", 400, "invalid_request_error"),
        ("server_is_overloaded", 503, "server_error"),
        ("server_error", 500, "server_error"),
        ("anything", 500, "server_error"),
    ] {
        let Fault::Status {
            status: got,
            body,
            headers,
        } = failure_as_status(code, "m")
        else {
            panic!("not a status");
        };
        let body: Value = serde_json::from_str(&body)?;
        assert_eq!((got, headers.len()), (status, 0), "{code}");
        assert_eq!(body["error"]["type"], kind, "{code}");
        assert_eq!(body["error"]["code"], code);
        assert_eq!(body["error"]["message"], "m");
    }
    Ok(())
}

#[test]
fn outside_a_responses_stream_failures_are_http_errors_and_cuts_nothing() {
    assert_eq!(outside_responses_stream(Fault::ResponseCutAfter(1)), None);
    assert_eq!(outside_responses_stream(Fault::ResponseEndAfter(1)), None);
    assert_eq!(
        outside_responses_stream(Fault::HugeUsage),
        Some(Fault::HugeUsage)
    );
    let failed = outside_responses_stream(Fault::response_overloaded().as_error_event());
    assert!(
        matches!(failed, Some(Fault::Status { status: 503, .. })),
        "{failed:?}"
    );
}
