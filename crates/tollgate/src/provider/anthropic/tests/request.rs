//! `translate_request`: one test per rule, tables where a rule has cases.

use serde_json::{json, Value};

use super::super::request::PLACEHOLDER_USER_TURN;
use super::super::{translate_request, RequestOptions, TranslateError};

const OLD: &str = "2023-06-01";
const NEW: &str = "2026-10-21";

fn try_translate_with(body: &Value, version: &str) -> Result<Value, TranslateError> {
    let opts = RequestOptions {
        upstream_model: "claude-x",
        default_max_tokens: 1024,
        version,
    };
    let bytes = translate_request(body.to_string().as_bytes(), &opts)?;
    Ok(serde_json::from_slice(&bytes).expect("valid JSON"))
}

fn translate(body: Value) -> Value {
    try_translate_with(&body, OLD).expect("translates")
}

fn refused(body: Value) -> (String, Option<String>) {
    match try_translate_with(&body, OLD) {
        Err(TranslateError::Unsupported { message, param }) => (message, param),
        other => panic!("expected Unsupported for {body}, got {other:?}"),
    }
}

fn invalid(body: Value) -> String {
    match try_translate_with(&body, OLD) {
        Err(TranslateError::Invalid(message)) => message,
        other => panic!("expected Invalid for {body}, got {other:?}"),
    }
}

fn user(text: &str) -> Value {
    json!({ "role": "user", "content": text })
}

#[test]
fn minimal_request() {
    let out = translate(json!({ "model": "gpt-alias", "messages": [user("hi")] }));
    assert_eq!(
        out,
        json!({
            "model": "claude-x",
            "messages": [{ "role": "user", "content": "hi" }],
            "max_tokens": 1024,
        })
    );
}

#[test]
fn system_and_developer_messages_become_top_level_system_in_order() {
    let out = translate(json!({ "messages": [
        { "role": "system", "content": "Be brief." },
        { "role": "developer", "content": [{ "type": "text", "text": "Use French." }, { "type": "text", "text": "No emoji." }] },
        user("hi"),
        { "role": "system", "content": "Late rule." },
    ]}));
    assert_eq!(
        out["system"],
        "Be brief.\n\nUse French.\n\nNo emoji.\n\nLate rule."
    );
    assert_eq!(
        out["messages"],
        json!([{ "role": "user", "content": "hi" }])
    );
    let (_, param) = refused(json!({ "messages": [
        { "role": "system", "content": [{ "type": "image_url", "image_url": { "url": "https://x/y.png" } }] },
        user("hi"),
    ]}));
    assert_eq!(param.as_deref(), Some("messages"));
}

#[test]
fn consecutive_same_role_messages_are_merged() {
    let out = translate(json!({ "messages": [
        user("a"),
        user("b"),
        { "role": "assistant", "content": "c" },
        { "role": "assistant", "content": "" },
        { "role": "assistant", "content": "d" },
        user("e"),
    ]}));
    assert_eq!(
        out["messages"],
        json!([
            { "role": "user", "content": [{ "type": "text", "text": "a" }, { "type": "text", "text": "b" }] },
            { "role": "assistant", "content": [{ "type": "text", "text": "c" }, { "type": "text", "text": "d" }] },
            { "role": "user", "content": "e" },
        ])
    );
}

#[test]
fn a_user_turn_is_put_first_when_the_conversation_does_not_start_with_one() {
    let table = [
        (
            json!([{ "role": "assistant", "content": "Hello!" }, user("hi")]),
            json!([
                { "role": "user", "content": PLACEHOLDER_USER_TURN },
                { "role": "assistant", "content": "Hello!" },
                { "role": "user", "content": "hi" },
            ]),
        ),
        (
            json!([{ "role": "system", "content": "Write a haiku." }]),
            json!([{ "role": "user", "content": PLACEHOLDER_USER_TURN }]),
        ),
        (
            json!([user(""), { "role": "assistant", "content": "x" }]),
            json!([
                { "role": "user", "content": PLACEHOLDER_USER_TURN },
                { "role": "assistant", "content": "x" },
            ]),
        ),
    ];
    for (messages, expected) in table {
        let out = translate(json!({ "messages": messages }));
        assert_eq!(out["messages"], expected, "{messages}");
    }
}

#[test]
fn max_tokens_prefers_max_completion_tokens_then_max_tokens_then_default() {
    let table = [
        (json!({ "max_completion_tokens": 10, "max_tokens": 20 }), 10),
        (json!({ "max_tokens": 20 }), 20),
        (
            json!({ "max_completion_tokens": null, "max_tokens": 30 }),
            30,
        ),
        (json!({}), 1024),
    ];
    for (fields, expected) in table {
        let mut body = json!({ "messages": [user("hi")] });
        body.as_object_mut()
            .unwrap()
            .extend(fields.as_object().unwrap().clone());
        assert_eq!(translate(body)["max_tokens"], expected, "{fields}");
    }
}

#[test]
fn stop_becomes_stop_sequences() {
    let table = [
        (json!("END"), json!(["END"])),
        (json!(["a", "", "b"]), json!(["a", "b"])),
        (json!([]), Value::Null),
        (json!(""), Value::Null),
        (Value::Null, Value::Null),
    ];
    for (stop, expected) in table {
        let out = translate(json!({ "messages": [user("hi")], "stop": stop }));
        assert_eq!(out["stop_sequences"], expected, "{stop}");
    }
}

#[test]
fn sampling_parameters_are_kept_for_old_versions_and_dropped_for_2026_10_21() {
    let body = json!({ "messages": [user("hi")], "temperature": 0.5, "top_p": 0.9, "top_k": 40 });
    let old = try_translate_with(&body, OLD).unwrap();
    assert_eq!(
        (&old["temperature"], &old["top_p"], &old["top_k"]),
        (&json!(0.5), &json!(0.9), &json!(40))
    );
    for version in [NEW, "2027-01-01"] {
        let new = try_translate_with(&body, version).unwrap();
        let keys: Vec<&str> = new
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert!(
            !keys
                .iter()
                .any(|k| ["temperature", "top_p", "top_k"].contains(k)),
            "{version}: {keys:?}"
        );
    }
    let hot = translate(json!({ "messages": [user("hi")], "temperature": 1.7 }));
    assert_eq!(hot["temperature"], 1.0);
}

#[test]
fn image_parts_become_image_blocks() {
    let part =
        |url: &str| json!({ "type": "image_url", "image_url": { "url": url, "detail": "high" } });
    let out = translate(json!({ "messages": [{ "role": "user", "content": [
        { "type": "text", "text": "What is this?" },
        part("data:image/png;base64,iVBORw0KGgo="),
        part("https://example.com/cat.jpg"),
        { "type": "image_url", "image_url": "http://example.com/dog.webp" },
    ]}]}));
    assert_eq!(
        out["messages"][0]["content"],
        json!([
            { "type": "text", "text": "What is this?" },
            { "type": "image", "source": { "type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo=" } },
            { "type": "image", "source": { "type": "url", "url": "https://example.com/cat.jpg" } },
            { "type": "image", "source": { "type": "url", "url": "http://example.com/dog.webp" } },
        ])
    );
    for url in [
        "ftp://x/y.png",
        "data:image/png,rawbytes",
        "data:;base64,AAAA",
    ] {
        let (message, param) =
            refused(json!({ "messages": [{ "role": "user", "content": [part(url)] }] }));
        assert_eq!(param.as_deref(), Some("messages"), "{url}");
        assert!(message.contains("image"), "{message}");
    }
}

#[test]
fn tools_become_name_description_input_schema() {
    let out = translate(json!({ "messages": [user("hi")], "tools": [
        { "type": "function", "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": { "type": "object", "properties": { "city": { "type": "string" } }, "required": ["city"] },
            "strict": true,
        }},
        { "type": "function", "function": { "name": "now" } },
        { "type": "function", "function": { "name": "loose", "parameters": {} } },
    ]}));
    assert_eq!(
        out["tools"],
        json!([
            { "name": "get_weather", "description": "Weather for a city", "input_schema":
                { "type": "object", "properties": { "city": { "type": "string" } }, "required": ["city"] } },
            { "name": "now", "input_schema": { "type": "object", "properties": {} } },
            { "name": "loose", "input_schema": { "type": "object", "properties": {} } },
        ])
    );
    assert!(
        out.get("tool_choice").is_none(),
        "auto is Anthropic's default"
    );
    let (_, param) = refused(json!({ "messages": [user("hi")], "tools": [
        { "type": "custom", "custom": { "name": "grammar" } },
    ]}));
    assert_eq!(param.as_deref(), Some("tools"));
}

#[test]
fn tool_choice_and_parallel_tool_calls_map() {
    let tools = json!([{ "type": "function", "function": { "name": "f" } }]);
    let named = json!({ "type": "function", "function": { "name": "f" } });
    let table = [
        (json!("auto"), Value::Null, Value::Null),
        (json!("required"), Value::Null, json!({ "type": "any" })),
        (json!("none"), Value::Null, json!({ "type": "none" })),
        (
            named.clone(),
            Value::Null,
            json!({ "type": "tool", "name": "f" }),
        ),
        (
            Value::Null,
            json!(false),
            json!({ "type": "auto", "disable_parallel_tool_use": true }),
        ),
        (
            json!("required"),
            json!(false),
            json!({ "type": "any", "disable_parallel_tool_use": true }),
        ),
        (
            named,
            json!(false),
            json!({ "type": "tool", "name": "f", "disable_parallel_tool_use": true }),
        ),
        (json!("none"), json!(false), json!({ "type": "none" })),
        (json!("auto"), json!(true), Value::Null),
    ];
    for (choice, parallel, expected) in table {
        let body = json!({ "messages": [user("hi")], "tools": tools, "tool_choice": choice, "parallel_tool_calls": parallel });
        assert_eq!(
            translate(body)["tool_choice"],
            expected,
            "{choice} / {parallel}"
        );
    }
    let no_tools = translate(
        json!({ "messages": [user("hi")], "tool_choice": "required", "parallel_tool_calls": false }),
    );
    assert!(no_tools.get("tool_choice").is_none() && no_tools.get("tools").is_none());
    let (_, param) = refused(json!({ "messages": [user("hi")], "tools": tools,
        "tool_choice": { "type": "allowed_tools", "allowed_tools": { "mode": "auto", "tools": [] } } }));
    assert_eq!(param.as_deref(), Some("tool_choice"));
}

fn call(id: &str, name: &str, arguments: &str) -> Value {
    json!({ "id": id, "type": "function", "function": { "name": name, "arguments": arguments } })
}

#[test]
fn assistant_tool_calls_and_tool_messages_round_trip() {
    let out = translate(json!({ "messages": [
        user("Weather in Paris and Rome?"),
        { "role": "assistant", "content": "Checking.", "tool_calls": [
            call("call_1", "get_weather", r#"{"city":"Paris"}"#),
            call("call_2", "get_weather", r#"{"city":"Rome"}"#),
            call("call_3", "now", ""),
        ]},
        { "role": "tool", "tool_call_id": "call_1", "content": "18C" },
        { "role": "tool", "tool_call_id": "call_2", "content": [{ "type": "text", "text": "21C" }] },
        { "role": "tool", "tool_call_id": "call_3", "content": "" },
        user("Thanks, and tomorrow?"),
    ]}));
    assert_eq!(
        out["messages"],
        json!([
            { "role": "user", "content": "Weather in Paris and Rome?" },
            { "role": "assistant", "content": [
                { "type": "text", "text": "Checking." },
                { "type": "tool_use", "id": "call_1", "name": "get_weather", "input": { "city": "Paris" } },
                { "type": "tool_use", "id": "call_2", "name": "get_weather", "input": { "city": "Rome" } },
                { "type": "tool_use", "id": "call_3", "name": "now", "input": {} },
            ]},
            { "role": "user", "content": [
                { "type": "tool_result", "tool_use_id": "call_1", "content": "18C" },
                { "type": "tool_result", "tool_use_id": "call_2", "content": [{ "type": "text", "text": "21C" }] },
                { "type": "tool_result", "tool_use_id": "call_3" },
                { "type": "text", "text": "Thanks, and tomorrow?" },
            ]},
        ])
    );
}

#[test]
fn bad_tool_call_arguments_are_invalid() {
    for arguments in [r#"{"city":"#, "[1,2]", "42"] {
        let message = invalid(json!({ "messages": [
            user("hi"),
            { "role": "assistant", "content": null, "tool_calls": [call("call_9", "f", arguments)] },
        ]}));
        assert!(message.contains("call_9"), "{message}");
    }
    let message = invalid(json!({ "messages": [user("hi"), { "role": "tool", "content": "x" }] }));
    assert!(message.contains("tool_call_id"), "{message}");
}

#[test]
fn user_and_stream_are_forwarded() {
    let out = translate(json!({ "messages": [user("hi")], "user": "u-42", "stream": true }));
    assert_eq!(out["metadata"], json!({ "user_id": "u-42" }));
    assert_eq!(out["stream"], true);
    let out =
        translate(json!({ "messages": [user("hi")], "safety_identifier": "s-1", "stream": false }));
    assert_eq!(out["metadata"], json!({ "user_id": "s-1" }));
    assert_eq!(out["stream"], false);
}

#[test]
fn parameters_without_an_equivalent_are_refused_with_their_name() {
    let table = [
        (json!({ "n": 2 }), "n"),
        (json!({ "logprobs": true }), "logprobs"),
        (json!({ "top_logprobs": 3 }), "top_logprobs"),
        (json!({ "functions": [{ "name": "f" }] }), "functions"),
        (json!({ "function_call": "auto" }), "function_call"),
        (
            json!({ "messages": [{ "role": "function", "name": "f", "content": "x" }] }),
            "messages",
        ),
        (
            json!({ "messages": [{ "role": "user", "content": [
                { "type": "input_audio", "input_audio": { "data": "AAA", "format": "wav" } },
            ]}]}),
            "messages",
        ),
    ];
    for (fields, param) in table {
        let mut body = json!({ "messages": [user("hi")] });
        body.as_object_mut()
            .unwrap()
            .extend(fields.as_object().unwrap().clone());
        let (message, got) = refused(body);
        assert_eq!(got.as_deref(), Some(param), "{fields}");
        assert!(!message.is_empty());
    }
    // Harmless values of the same parameters pass.
    translate(
        json!({ "messages": [user("hi")], "n": 1, "logprobs": false, "top_logprobs": 0, "functions": null }),
    );
}

#[test]
fn everything_else_is_dropped() {
    let out = translate(json!({
        "model": "gpt-alias",
        "messages": [{ "role": "user", "name": "alice", "content": "hi" }],
        "presence_penalty": 0.5, "frequency_penalty": 0.5, "seed": 7,
        "logit_bias": { "50256": -100 }, "response_format": { "type": "json_object" },
        "stream_options": { "include_usage": true }, "service_tier": "auto", "store": true,
        "metadata": { "team": "search" }, "parallel_tool_calls": true,
        "reasoning_effort": "low", "modalities": ["text"], "audio": null, "prediction": null,
        "web_search_options": {}, "verbosity": "low", "some_future_field": 1,
    }));
    assert_eq!(
        out,
        json!({ "model": "claude-x", "messages": [{ "role": "user", "content": "hi" }], "max_tokens": 1024 })
    );
}

#[test]
fn malformed_bodies_are_invalid() {
    let table = [
        json!("just a string"),
        json!({ "model": "m" }),
        json!({ "messages": "hi" }),
        json!({ "messages": [{ "role": "user", "content": 42 }] }),
        json!({ "messages": [{ "role": "user", "content": [{ "type": "text" }] }] }),
        json!({ "messages": [user("hi")], "max_tokens": -1 }),
        json!({ "messages": [user("hi")], "stop": 5 }),
    ];
    for body in table {
        invalid(body);
    }
    assert!(matches!(
        translate_request(
            b"{not json",
            &RequestOptions {
                upstream_model: "m",
                default_max_tokens: 1,
                version: OLD
            }
        ),
        Err(TranslateError::Invalid(_))
    ));
}
