//! The Anthropic dialect over real sockets: validation, answers, streams and faults.

use serde_json::{json, Value};

use super::{call, parse_reply, read_all, Reply, TestResult};
use crate::{start, Fault, MockConfig, MockHandle, TOOL_MARKER, TOOL_OUTPUT};

const PATH: &str = "/v1/messages";
const HEADERS: [(&str, &str); 2] = [("x-api-key", "ant-1"), ("anthropic-version", "2023-06-01")];

fn body(extra: Value) -> String {
    let mut request = json!({
        "model": "claude-x",
        "max_tokens": 64,
        "messages": [{ "role": "user", "content": "hi" }],
    });
    if let (Some(map), Value::Object(extra)) = (request.as_object_mut(), extra) {
        map.extend(extra);
    }
    request.to_string()
}

fn tool_request(stream: bool) -> String {
    body(json!({
        "stream": stream,
        "tools": [{ "name": "get_weather", "input_schema": { "type": "object", "properties": {} } }],
        "messages": [{ "role": "user", "content": "Please use a tool for Paris." }],
    }))
}

async fn messages(mock: &MockHandle, headers: &[(&str, &str)], body: &str) -> TestResult<Reply> {
    call(mock, "POST", PATH, headers, body).await
}

/// `(event name, data)` of every named SSE event.
fn named_events(reply: &Reply) -> TestResult<Vec<(String, Value)>> {
    let text = reply.text();
    let mut events = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.is_empty()) {
        let (name, data) = block.split_once('\n').ok_or("one-line event")?;
        let name = name.strip_prefix("event: ").ok_or("no event name")?;
        let data = data.strip_prefix("data: ").ok_or("no data")?;
        let data: Value = serde_json::from_str(data)?;
        assert_eq!(data["type"], name, "data type matches event name");
        events.push((name.to_owned(), data));
    }
    Ok(events)
}

fn assert_invalid(reply: &Reply, expected: &str) -> TestResult {
    assert_eq!(reply.status, 400, "{}", reply.text());
    let v = reply.json()?;
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    let message = v["error"]["message"].as_str().ok_or("no message")?;
    assert!(message.contains(expected), "{message:?} lacks {expected:?}");
    Ok(())
}

#[tokio::test]
async fn plain_answer_is_an_anthropic_message_and_is_recorded() -> TestResult {
    let mock = start(MockConfig::default()).await?;
    let reply = messages(&mock, &HEADERS, &body(json!({}))).await?;
    assert_eq!(reply.status, 200);
    let v = reply.json()?;
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["model"], "claude-x");
    assert_eq!(
        v["content"],
        json!([{ "type": "text", "text": "Hello from mock" }])
    );
    assert_eq!(v["stop_reason"], "end_turn");
    assert!(v["stop_sequence"].is_null());
    assert_eq!(v["usage"]["output_tokens"], 3);
    assert!(
        v["usage"]["input_tokens"]
            .as_u64()
            .ok_or("no input_tokens")?
            > 0
    );
    assert!(v["id"].as_str().ok_or("no id")?.starts_with("msg_mock_"));
    let recorded = mock.requests();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].path, PATH);
    assert_eq!(recorded[0].key.as_deref(), Some("ant-1"));
    assert_eq!(mock.requests_for_key("ant-1"), 1);
    Ok(())
}

#[tokio::test]
async fn tool_request_gets_a_tool_use_block() -> TestResult {
    let mock = start(MockConfig::default()).await?;
    let v = messages(&mock, &HEADERS, &tool_request(false))
        .await?
        .json()?;
    assert_eq!(
        v["content"],
        json!([{ "type": "tool_use", "id": "toolu_mock_1", "name": "get_weather", "input": { "city": "Paris" } }])
    );
    assert_eq!(v["stop_reason"], "tool_use");
    Ok(())
}

#[tokio::test]
async fn validation_refuses_what_the_real_api_refuses() -> TestResult {
    let mock = start(MockConfig::default()).await?;
    let no_version = [("x-api-key", "ant-1")];
    let reply = messages(&mock, &no_version, &body(json!({}))).await?;
    assert_invalid(&reply, "anthropic-version")?;
    let new_version = [("x-api-key", "ant-1"), ("anthropic-version", "2026-10-21")];
    let reply = messages(&mock, &new_version, &body(json!({ "temperature": 0.2 }))).await?;
    assert_invalid(&reply, "temperature")?;
    let reply = messages(&mock, &new_version, &body(json!({}))).await?;
    assert_eq!(reply.status, 200);
    let table = [
        (
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#.to_owned(),
            "max_tokens: Field required",
        ),
        (body(json!({ "messages": [] })), "at least one message"),
        (
            body(
                json!({ "messages": [{ "role": "system", "content": "x" }, { "role": "user", "content": "hi" }] }),
            ),
            "messages.0.role",
        ),
        (
            body(json!({ "messages": [{ "role": "assistant", "content": "x" }] })),
            "first message",
        ),
        (
            body(
                json!({ "messages": [{ "role": "user", "content": "a" }, { "role": "user", "content": "b" }] }),
            ),
            "roles must alternate",
        ),
        (
            body(json!({ "stream_options": { "include_usage": true } })),
            "stream_options: Extra inputs",
        ),
        ("{not json".to_owned(), "parsing"),
    ];
    for (request, expected) in table {
        assert_invalid(&messages(&mock, &HEADERS, &request).await?, expected)?;
    }
    Ok(())
}

#[tokio::test]
async fn streamed_text_answer_has_the_real_event_sequence() -> TestResult {
    let mock = start(MockConfig::default()).await?;
    let reply = messages(&mock, &HEADERS, &body(json!({ "stream": true }))).await?;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type").as_deref(),
        Some("text/event-stream")
    );
    assert!(reply.complete);
    let events = named_events(&reply)?;
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    assert!(events[0].1["message"]["id"]
        .as_str()
        .ok_or("no id")?
        .starts_with("msg_mock_"));
    assert_eq!(events[0].1["message"]["content"], json!([]));
    let text: String = events
        .iter()
        .filter_map(|(_, d)| d["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, "tok0 tok1 tok2 ");
    assert_eq!(events[7].1["delta"]["stop_reason"], "end_turn");
    assert_eq!(events[7].1["usage"]["output_tokens"], 3);
    assert!(!reply.text().contains("[DONE]"));
    Ok(())
}

#[tokio::test]
async fn streamed_tool_answer_splits_the_input_json() -> TestResult {
    let mock = start(MockConfig::default()).await?;
    let reply = messages(&mock, &HEADERS, &tool_request(true)).await?;
    let events = named_events(&reply)?;
    assert_eq!(events[1].1["content_block"]["type"], "tool_use");
    assert_eq!(events[1].1["content_block"]["name"], "get_weather");
    let pieces: Vec<&str> = events
        .iter()
        .filter_map(|(_, d)| d["delta"]["partial_json"].as_str())
        .filter(|p| !p.is_empty())
        .collect();
    assert!(pieces.len() >= 2, "{pieces:?}");
    let input: Value = serde_json::from_str(&pieces.concat())?;
    assert_eq!(input, json!({ "city": "Paris" }));
    let stop = events
        .iter()
        .find(|(n, _)| n == "message_delta")
        .ok_or("no message_delta")?;
    assert_eq!(stop.1["delta"]["stop_reason"], "tool_use");
    Ok(())
}

#[tokio::test]
async fn status_faults_are_anthropic_shaped_on_the_messages_path() -> TestResult {
    let mock = start(MockConfig::default()).await?;
    mock.script(
        "ant-1",
        [
            Fault::status(529),
            Fault::rate_limited(4),
            Fault::status(401),
            Fault::Status {
                status: 500,
                body: "custom".into(),
                headers: Vec::new(),
            },
        ],
    );
    let overloaded = messages(&mock, &HEADERS, &body(json!({}))).await?;
    assert_eq!(overloaded.status, 529);
    assert_eq!(overloaded.json()?["error"]["type"], "overloaded_error");
    let limited = messages(&mock, &HEADERS, &body(json!({}))).await?;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.header("retry-after").as_deref(), Some("4"));
    assert_eq!(limited.json()?["error"]["type"], "rate_limit_error");
    let auth = messages(&mock, &HEADERS, &body(json!({}))).await?;
    assert_eq!(auth.status, 401);
    assert_eq!(auth.json()?["error"]["type"], "authentication_error");
    let custom = messages(&mock, &HEADERS, &body(json!({}))).await?;
    assert_eq!(custom.text(), "custom", "explicit bodies are sent verbatim");
    // The same fault on an OpenAI path keeps the OpenAI shape.
    let openai = call(
        &mock,
        "POST",
        "/v1/chat/completions",
        &[("x-mock-fault", "status=429")],
        "{}",
    )
    .await?;
    assert_eq!(openai.json()?["error"]["code"], "rate_limit_exceeded");
    Ok(())
}

#[tokio::test]
async fn error_first_sends_an_anthropic_error_event() -> TestResult {
    let mock = start(MockConfig::default()).await?;
    let headers = [HEADERS[0], HEADERS[1], ("x-mock-fault", "error-first")];
    let reply = messages(&mock, &headers, &body(json!({ "stream": true }))).await?;
    assert_eq!(reply.status, 200);
    assert!(reply.complete);
    let events = named_events(&reply)?;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, "error");
    assert_eq!(
        events[0].1,
        json!({ "type": "error", "error": { "type": "overloaded_error", "message": "Overloaded" } })
    );
    Ok(())
}

#[tokio::test]
async fn break_after_cuts_the_event_stream() -> TestResult {
    let mock = start(MockConfig::default()).await?;
    mock.script("ant-1", [Fault::BreakAfter(2)]);
    let raw = super::request_bytes("POST", PATH, &HEADERS, &body(json!({ "stream": true })));
    let mut stream = super::connect(&mock, &raw).await?;
    let mut buf = Vec::new();
    read_all(&mut stream, &mut buf).await;
    let reply = parse_reply(&buf)?;
    assert_eq!(reply.status, 200);
    assert!(!reply.complete, "body must not end cleanly");
    let names: Vec<String> = named_events(&reply)?.into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["message_start", "content_block_start"]);
    Ok(())
}

/// A request shaped like a gateway's translation of Codex's: `exec_command` as an Anthropic tool.
fn codex_request(messages: Value, stream: bool) -> String {
    body(json!({
        "stream": stream,
        "tools": [{ "name": "exec_command", "description": "Runs a command.",
                    "input_schema": { "type": "object", "properties": { "cmd": { "type": "string" } } } }],
        "messages": messages,
    }))
}

fn ask() -> Value {
    json!([{ "role": "user", "content": [{ "type": "text", "text": format!("run it {TOOL_MARKER}") }] }])
}

/// `ask()`, the assistant's `tool_use`, and a user turn with its `tool_result`.
fn answered(id: &str, content: Value) -> Value {
    json!([
        { "role": "user", "content": format!("run it {TOOL_MARKER}") },
        { "role": "assistant", "content": [{ "type": "tool_use", "id": id, "name": "exec_command",
                                             "input": { "cmd": "echo tollgate-tool-ok" } }] },
        { "role": "user", "content": [{ "type": "tool_result", "tool_use_id": id, "content": content }] },
    ])
}

#[tokio::test]
async fn the_marker_gets_an_exec_command_tool_use_and_its_result_is_quoted() -> TestResult {
    let mock = start(MockConfig::default()).await?;
    let v = messages(&mock, &HEADERS, &codex_request(ask(), false))
        .await?
        .json()?;
    assert_eq!(v["stop_reason"], "tool_use");
    let block = &v["content"][0];
    assert_eq!(
        (&block["type"], &block["name"]),
        (&json!("tool_use"), &json!("exec_command"))
    );
    assert_eq!(block["input"], json!({ "cmd": "echo tollgate-tool-ok" }));
    let id = block["id"].as_str().ok_or("no id")?;
    assert!(id.starts_with("toolu_"), "{id}");

    let output = json!(format!("{TOOL_OUTPUT}\n"));
    let v = messages(&mock, &HEADERS, &codex_request(answered(id, output), false))
        .await?
        .json()?;
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(
        v["content"],
        json!([{ "type": "text", "text": format!("tool said: {TOOL_OUTPUT}\n") }])
    );
    Ok(())
}

#[tokio::test]
async fn a_streamed_exec_command_call_and_result_round_trip() -> TestResult {
    let mock = start(MockConfig::default()).await?;
    let reply = messages(&mock, &HEADERS, &codex_request(ask(), true)).await?;
    assert!(reply.complete);
    let events = named_events(&reply)?;
    let block = &events[1].1["content_block"];
    assert_eq!(
        (&block["type"], &block["name"], &block["input"]),
        (&json!("tool_use"), &json!("exec_command"), &json!({}))
    );
    let pieces: Vec<&str> = events
        .iter()
        .filter_map(|(_, d)| d["delta"]["partial_json"].as_str())
        .collect();
    assert_eq!(pieces.first(), Some(&""), "an empty first piece");
    assert!(pieces.len() >= 3, "{pieces:?}");
    let input: Value = serde_json::from_str(&pieces.concat())?;
    assert_eq!(input, json!({ "cmd": "echo tollgate-tool-ok" }));
    let stop = events
        .iter()
        .find(|(n, _)| n == "message_delta")
        .ok_or("no message_delta")?;
    assert_eq!(stop.1["delta"]["stop_reason"], "tool_use");

    let id = block["id"].as_str().ok_or("no id")?;
    let output =
        json!([{ "type": "text", "text": "Output:" }, { "type": "text", "text": TOOL_OUTPUT }]);
    let reply = messages(&mock, &HEADERS, &codex_request(answered(id, output), true)).await?;
    let events = named_events(&reply)?;
    assert_eq!(events[1].1["content_block"]["type"], "text");
    let text: String = events
        .iter()
        .filter_map(|(_, d)| d["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, format!("tool said: Output:\n{TOOL_OUTPUT}"));
    Ok(())
}
