//! Validation rules, the tool trigger and error bodies, without a socket.

use super::answer::{answer, last_user_turn, tool_to_call};
use super::*;
use crate::tools::Last;

fn valid() -> Map<String, Value> {
    let value = json!({
        "model": "claude-x",
        "max_tokens": 16,
        "messages": [
            { "role": "user", "content": "hi" },
            { "role": "assistant", "content": [{ "type": "text", "text": "hello" }] },
            { "role": "user", "content": "again" },
        ],
    });
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// `valid()` with `change` applied, validated with `version`.
fn check(version: &str, change: impl FnOnce(&mut Map<String, Value>)) -> Result<(), String> {
    let mut request = valid();
    change(&mut request);
    validate(&request, version, &[])
}

fn assert_refused(result: Result<(), String>, expected: &str) {
    match result {
        Err(message) => assert!(message.contains(expected), "{message:?} lacks {expected:?}"),
        Ok(()) => panic!("accepted, expected an error with {expected:?}"),
    }
}

#[test]
fn a_complete_request_passes_with_every_allowed_field() {
    assert_eq!(check("2023-06-01", |_| {}), Ok(()));
    let all = check("2023-06-01", |r| {
        r.insert("system".into(), json!("Be brief."));
        r.insert("stop_sequences".into(), json!(["END"]));
        r.insert("temperature".into(), json!(0.5));
        r.insert("top_p".into(), json!(0.9));
        r.insert("top_k".into(), json!(40));
        r.insert(
            "tools".into(),
            json!([{ "name": "f", "input_schema": { "type": "object" } }]),
        );
        r.insert("tool_choice".into(), json!({ "type": "auto" }));
        r.insert("metadata".into(), json!({ "user_id": "u" }));
        r.insert("stream".into(), json!(true));
        r.insert(
            "thinking".into(),
            json!({ "type": "enabled", "budget_tokens": 1024 }),
        );
    });
    assert_eq!(all, Ok(()));
}

#[test]
fn each_rule_refuses_like_the_real_api() {
    let v = "2023-06-01";
    assert_refused(
        check(v, |r| {
            r.remove("max_tokens");
        }),
        "max_tokens: Field required",
    );
    assert_refused(
        check(v, |r| {
            r.insert("max_tokens".into(), json!(0));
        }),
        "max_tokens",
    );
    assert_refused(
        check(v, |r| {
            r.remove("model");
        }),
        "model: Field required",
    );
    assert_refused(
        check(v, |r| {
            r.remove("messages");
        }),
        "messages: Field required",
    );
    assert_refused(
        check(v, |r| {
            r.insert("messages".into(), json!([]));
        }),
        "at least one message",
    );
    assert_refused(
        check(v, |r| {
            r.insert(
                "messages".into(),
                json!([{ "role": "system", "content": "x" }, { "role": "user", "content": "hi" }]),
            );
        }),
        "messages.0.role",
    );
    assert_refused(
        check(v, |r| {
            r.insert(
                "messages".into(),
                json!([{ "role": "assistant", "content": "x" }]),
            );
        }),
        "first message must use the \"user\" role",
    );
    assert_refused(
        check(v, |r| {
            r.insert(
                "messages".into(),
                json!([{ "role": "user", "content": "a" }, { "role": "user", "content": "b" }]),
            );
        }),
        "roles must alternate",
    );
    assert_refused(
        check(v, |r| {
            r.insert("messages".into(), json!([{ "role": "user" }]));
        }),
        "messages.0.content",
    );
    for field in ["n", "stream_options", "presence_penalty", "user"] {
        assert_refused(
            check(v, |r| {
                r.insert(field.into(), json!(1));
            }),
            &format!("{field}: Extra inputs are not permitted"),
        );
    }
    assert_refused(
        check(v, |r| {
            r.insert(
                "tools".into(),
                json!([{ "name": "f", "input_schema": { "type": "string" } }]),
            );
        }),
        "tools.0.input_schema.type",
    );
}

#[test]
fn sampling_parameters_are_refused_from_2026_10_21() {
    for field in ["temperature", "top_p", "top_k"] {
        let with = |r: &mut Map<String, Value>| {
            r.insert(field.into(), json!(1));
        };
        assert_eq!(check("2023-06-01", with), Ok(()));
        assert_refused(check("2026-10-21", with), field);
    }
}

#[test]
fn tool_answer_needs_tools_and_the_trigger_in_the_last_user_message() {
    let mut request = valid();
    assert_eq!(tool_to_call(&request), None);
    request.insert(
        "tools".into(),
        json!([{ "name": "get_weather", "input_schema": { "type": "object" } }]),
    );
    assert_eq!(tool_to_call(&request), None);
    request.insert(
        "messages".into(),
        json!([{ "role": "user", "content": [{ "type": "text", "text": "please use a tool" }] }]),
    );
    assert_eq!(tool_to_call(&request).as_deref(), Some("get_weather"));
}

#[test]
fn the_last_user_turn_is_its_tool_results_else_its_text() {
    let with = |messages: Value| {
        let mut request = valid();
        request.insert("messages".into(), messages);
        last_user_turn(&request)
    };
    assert_eq!(last_user_turn(&valid()), Last::UserText("again".into()));
    let results = json!([
        { "role": "user", "content": "go" },
        { "role": "assistant", "content": [{ "type": "tool_use", "id": "t1", "name": "x", "input": {} }] },
        { "role": "user", "content": [
            { "type": "tool_result", "tool_use_id": "t1", "content": "one" },
            { "type": "tool_result", "tool_use_id": "t2", "content": [{ "type": "text", "text": "two" }] },
        ] },
    ]);
    assert_eq!(with(results), Last::ToolOutput("one\ntwo".into()));
    let blocks = json!([{ "role": "user", "content": [{ "type": "text", "text": "a" }, { "type": "text", "text": "b" }] }]);
    assert_eq!(with(blocks), Last::UserText("a\nb".into()));
}

#[test]
fn the_marker_calls_shell_with_an_argv_and_wins_over_the_trigger() -> serde_json::Result<()> {
    let knobs = Knobs {
        seq: 4,
        port: 9,
        chunks: 3,
        chunk_delay: std::time::Duration::ZERO,
        prompt_tokens: 1,
        huge_usage: false,
    };
    let mut request = valid();
    request.insert(
        "tools".into(),
        json!([{ "name": "get_weather", "input_schema": { "type": "object" } },
               { "name": "shell", "input_schema": { "type": "object" } }]),
    );
    request.insert(
        "messages".into(),
        json!([{ "role": "user", "content": "use a tool: TOLLGATE_TOOL" }]),
    );
    let v: Value = serde_json::from_slice(&answer(&request, &knobs).pieces[0])?;
    assert_eq!(
        v["content"],
        json!([{ "type": "tool_use", "id": "toolu_9_4", "name": "shell",
                 "input": { "command": ["echo", "tollgate-tool-ok"] } }])
    );
    assert_eq!(v["stop_reason"], "tool_use");
    Ok(())
}

#[test]
fn status_bodies_are_anthropic_shaped() {
    for (status, kind) in [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (529, "overloaded_error"),
    ] {
        let body = error_body_for_status(status);
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], kind, "{status}");
    }
}

#[test]
fn claude_codes_fields_and_system_messages_need_their_beta_flags() {
    let claude_code = |request: &mut Map<String, Value>| {
        request.insert("context_management".into(), json!({ "edits": [] }));
        request.insert("output_config".into(), json!({ "effort": "high" }));
        if let Some(Value::Array(messages)) = request.get_mut("messages") {
            messages.insert(1, json!({ "role": "system", "content": "plan mode" }));
        }
        request.insert(
            "tools".into(),
            json!([{ "type": "web_search_20250305", "name": "web_search" }]),
        );
    };
    let mut request = valid();
    claude_code(&mut request);
    let betas = [
        "claude-code-20250219",
        "context-management-2025-06-27",
        "effort-2025-11-24",
    ];
    assert_eq!(validate(&request, "2023-06-01", &betas), Ok(()));
    assert_refused(
        validate(&request, "2023-06-01", &betas[..2]),
        "output_config: Extra inputs are not permitted",
    );
    assert_refused(
        validate(&request, "2023-06-01", &[]),
        "context_management: Extra inputs are not permitted",
    );
    request.remove("context_management");
    request.remove("output_config");
    assert_refused(
        validate(&request, "2023-06-01", &[]),
        "messages.1.role: Input should be 'user' or 'assistant'",
    );
}
