//! Table tests of the Anthropic translation: responses and errors here, requests and
//! streams in the submodules.

mod request;
mod stream;

use serde_json::{json, Value};

use super::*;

fn response(body: Value) -> Value {
    let bytes = translate_response(body.to_string().as_bytes(), "gpt-alias", 1_700_000_000)
        .expect("translates");
    serde_json::from_slice(&bytes).expect("valid JSON")
}

fn message(content: Value, stop_reason: &str) -> Value {
    json!({
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": { "input_tokens": 10, "output_tokens": 5 },
    })
}

#[test]
fn response_concatenates_text_and_ignores_thinking() {
    let out = response(json!({
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [
            { "type": "thinking", "thinking": "hmm", "signature": "sig" },
            { "type": "text", "text": "Hello, " },
            { "type": "redacted_thinking", "data": "xyz" },
            { "type": "text", "text": "world" },
        ],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": {
            "input_tokens": 10,
            "output_tokens": 5,
            "cache_creation_input_tokens": 3,
            "cache_read_input_tokens": 100,
        },
    }));
    assert_eq!(
        out,
        json!({
            "id": "chatcmpl-msg_01",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "gpt-alias",
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": "Hello, world", "refusal": null },
                "logprobs": null,
                "finish_reason": "stop",
            }],
            "usage": {
                "prompt_tokens": 113,
                "completion_tokens": 5,
                "total_tokens": 118,
                "prompt_tokens_details": { "cached_tokens": 100 },
            },
        })
    );
}

#[test]
fn response_tool_use_becomes_tool_calls_with_null_content() {
    let out = response(message(
        json!([
            { "type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": { "city": "Paris" } },
            { "type": "tool_use", "id": "toolu_2", "name": "now", "input": {} },
        ]),
        "tool_use",
    ));
    let choice = &out["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert!(choice["message"]["content"].is_null());
    assert_eq!(
        choice["message"]["tool_calls"],
        json!([
            { "id": "toolu_1", "type": "function",
              "function": { "name": "get_weather", "arguments": r#"{"city":"Paris"}"# } },
            { "id": "toolu_2", "type": "function", "function": { "name": "now", "arguments": "{}" } },
        ])
    );
    assert_eq!(out["usage"]["prompt_tokens"], 10);
    assert_eq!(out["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
}

#[test]
fn response_text_and_tool_call_together() {
    let out = response(message(
        json!([
            { "type": "text", "text": "Let me check." },
            { "type": "tool_use", "id": "toolu_1", "name": "f", "input": { "a": 1 } },
        ]),
        "tool_use",
    ));
    assert_eq!(out["choices"][0]["message"]["content"], "Let me check.");
    assert_eq!(
        out["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
        r#"{"a":1}"#
    );
}

#[test]
fn stop_reasons_map_to_finish_reasons() {
    let table = [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("something_new", "stop"),
    ];
    for (stop_reason, finish) in table {
        let out = response(message(
            json!([{ "type": "text", "text": "x" }]),
            stop_reason,
        ));
        assert_eq!(out["choices"][0]["finish_reason"], finish, "{stop_reason}");
    }
}

#[test]
fn unreadable_response_is_invalid() {
    for body in [&b"not json"[..], br#"{"type":"message"}"#, b"[]"] {
        assert!(matches!(
            translate_response(body, "m", 0),
            Err(TranslateError::Invalid(_))
        ));
    }
}

fn error(body: &str) -> Value {
    serde_json::from_slice(&translate_error(body.as_bytes())).expect("valid JSON")
}

fn anthropic_error(kind: &str, message: &str) -> String {
    json!({
        "type": "error",
        "error": { "type": kind, "message": message },
        "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy",
    })
    .to_string()
}

#[test]
fn errors_map_type_and_code_and_keep_the_message() {
    let table: [(&str, &str, &str, Value); 12] = [
        (
            "invalid_request_error",
            "max_tokens: Field required",
            "invalid_request_error",
            Value::Null,
        ),
        (
            "invalid_request_error",
            "prompt is too long: 208310 tokens > 200000 maximum",
            "invalid_request_error",
            json!("context_length_exceeded"),
        ),
        (
            "invalid_request_error",
            "input length and `max_tokens` exceed context limit: 198000 + 8192 > 200000",
            "invalid_request_error",
            json!("context_length_exceeded"),
        ),
        (
            "authentication_error",
            "invalid x-api-key",
            "invalid_request_error",
            json!("invalid_api_key"),
        ),
        (
            "permission_error",
            "Your API key does not have permission",
            "invalid_request_error",
            json!("permission_denied"),
        ),
        (
            "not_found_error",
            "model: claude-nope",
            "invalid_request_error",
            json!("model_not_found"),
        ),
        (
            "not_found_error",
            "Not found",
            "invalid_request_error",
            json!("not_found"),
        ),
        (
            "rate_limit_error",
            "Number of request tokens has exceeded your per-minute rate limit",
            "rate_limit_error",
            json!("rate_limit_exceeded"),
        ),
        (
            "billing_error",
            "Your credit balance is too low",
            "insufficient_quota",
            json!("insufficient_quota"),
        ),
        (
            "request_too_large",
            "Request exceeds the maximum allowed number of bytes",
            "invalid_request_error",
            json!("request_too_large"),
        ),
        (
            "overloaded_error",
            "Overloaded",
            "server_error",
            Value::Null,
        ),
        ("conflict_error", "Conflict", "conflict_error", Value::Null),
    ];
    for (kind, message, openai_type, code) in table {
        let out = error(&anthropic_error(kind, message));
        assert_eq!(
            out,
            json!({ "error": { "message": message, "type": openai_type, "param": null, "code": code } }),
            "{kind}: {message}"
        );
    }
    for kind in ["api_error", "timeout_error"] {
        assert_eq!(
            error(&anthropic_error(kind, "x"))["error"]["type"],
            "server_error"
        );
    }
}

#[test]
fn spend_limit_429_is_insufficient_quota() {
    let body = json!({
        "type": "error",
        "error": {
            "type": "rate_limit_error",
            "message": "You have reached your specified workspace API usage limits.",
            "details": { "error_code": "enforced_spend_limit_reached" },
        },
    });
    let out = error(&body.to_string());
    assert_eq!(out["error"]["code"], "insufficient_quota");
    assert_eq!(out["error"]["type"], "insufficient_quota");
}

#[test]
fn unreadable_error_bodies_get_a_generic_envelope() {
    let out = error("<html><body>502 Bad Gateway</body></html>");
    assert_eq!(out["error"]["type"], "server_error");
    assert_eq!(
        out["error"]["message"],
        "upstream error: <html><body>502 Bad Gateway</body></html>"
    );
    assert!(out["error"]["param"].is_null() && out["error"]["code"].is_null());
    assert_eq!(
        error("")["error"]["message"],
        "upstream error: (empty body)"
    );
    let long = "é".repeat(500);
    let message = error(&long)["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(message.chars().count(), "upstream error: ".len() + 201);
    assert!(message.ends_with('…'));
}
