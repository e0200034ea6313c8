//! Chat completions in Codex's tool round trip over real sockets, and chat-only servers (no
//! Responses API).

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

use super::{call, connect, data_events, parse_reply, read_all, request_bytes, TestResult};
use crate::{start, Fault, MockConfig, MockHandle, TOOL_MARKER, TOOL_OUTPUT};

const PATH: &str = "/v1/chat/completions";

/// A chat request with Codex's `exec_command` tool, as a gateway translates Codex's.
fn request(messages: Value, stream: bool) -> String {
    json!({
        "model": "gpt-test",
        "messages": messages,
        "tools": [{ "type": "function", "function": {
            "name": "exec_command", "description": "Runs a command.",
            "parameters": { "type": "object", "properties": { "cmd": { "type": "string" } } },
        } }],
        "stream": stream,
        "stream_options": if stream { json!({ "include_usage": true }) } else { Value::Null },
    })
    .to_string()
}

fn ask() -> Value {
    json!([{ "role": "user", "content": format!("run the check {TOOL_MARKER}") }])
}

/// `ask()`, the assistant's call, and the tool's output.
fn answered(call_id: &str) -> Value {
    json!([
        { "role": "user", "content": format!("run the check {TOOL_MARKER}") },
        { "role": "assistant", "content": null, "tool_calls": [{ "id": call_id, "type": "function",
          "function": { "name": "exec_command", "arguments": r#"{"cmd":"echo tollgate-tool-ok"}"# } }] },
        { "role": "tool", "tool_call_id": call_id,
          "content": [{ "type": "text", "text": format!("{TOOL_OUTPUT}\n") }] },
    ])
}

async fn post(mock: &MockHandle, body: &str) -> TestResult<super::Reply> {
    call(mock, "POST", PATH, &[("authorization", "Bearer k1")], body).await
}

/// The JSON of every `data:` event but `[DONE]`.
fn parse_chunks(text: &str) -> TestResult<Vec<Value>> {
    let events = data_events(text);
    let (done, chunks) = events.split_last().ok_or("no events")?;
    assert_eq!(done, "[DONE]");
    Ok(chunks
        .iter()
        .map(|c| serde_json::from_str(c))
        .collect::<Result<_, _>>()?)
}

#[tokio::test]
async fn a_chat_only_server_answers_every_responses_route_404_and_records_it() -> TestResult {
    let mock = start(MockConfig {
        responses_api: false,
        ..MockConfig::default()
    })
    .await?;
    let auth = [("authorization", "Bearer k1")];
    let body = r#"{"model":"gpt-test","input":"hi","stream":true}"#;
    for (method, path, body) in [
        ("POST", "/v1/responses", body),
        ("GET", "/v1/responses/resp_1", ""),
        ("DELETE", "/v1/responses/resp_1", ""),
    ] {
        let reply = call(&mock, method, path, &auth, body).await?;
        assert_eq!(reply.status, 404, "{method} {path}");
        let error = reply.json()?;
        let message = error["error"]["message"].as_str().ok_or("no message")?;
        assert!(
            message.ends_with("this server has no Responses API (mock)"),
            "{message}"
        );
        assert_eq!(error["error"]["type"], "invalid_request_error");
        assert_eq!(error["error"]["code"], "unknown_url");
        assert!(error["error"]["param"].is_null());
    }
    let recorded: Vec<_> = mock.requests().into_iter().map(|r| r.method).collect();
    assert_eq!(recorded, ["POST", "GET", "DELETE"]);
    assert_eq!(post(&mock, &request(ask(), false)).await?.status, 200);
    // Faults still apply first, as on any route.
    mock.script("k1", [Fault::status(503)]);
    let faulted = call(&mock, "POST", "/v1/responses", &auth, body).await?;
    assert_eq!(faulted.status, 503);
    Ok(())
}

#[tokio::test]
async fn the_marker_gets_a_plain_tool_call_and_the_output_is_quoted_back() -> TestResult {
    let mock = start(MockConfig::default()).await?;
    let v = post(&mock, &request(ask(), false)).await?.json()?;
    assert_eq!(v["object"], "chat.completion");
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(choice["message"]["content"].is_null());
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "exec_command");
    let arguments = call["function"]["arguments"]
        .as_str()
        .ok_or("no arguments")?;
    let arguments: Value = serde_json::from_str(arguments)?;
    assert_eq!(arguments, json!({ "cmd": "echo tollgate-tool-ok" }));
    let id = call["id"].as_str().ok_or("no id")?;
    assert!(id.starts_with("call_"), "{id}");

    let v = post(&mock, &request(answered(id), false)).await?.json()?;
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        format!("tool said: {TOOL_OUTPUT}\n")
    );
    Ok(())
}

#[tokio::test]
async fn a_streamed_tool_call_sends_its_arguments_in_pieces() -> TestResult {
    let mock = start(MockConfig::default()).await?;
    let reply = post(&mock, &request(ask(), true)).await?;
    assert!(reply.complete);
    let chunks = parse_chunks(&reply.text())?;
    let delta = |i: usize| &chunks[i]["choices"][0]["delta"];
    let first = &delta(0)["tool_calls"][0];
    assert_eq!(delta(0)["role"], "assistant");
    assert_eq!(
        (&first["index"], &first["type"], &first["function"]["name"]),
        (&json!(0), &json!("function"), &json!("exec_command"))
    );
    assert_eq!(first["function"]["arguments"], "");
    let id = first["id"].as_str().ok_or("no id")?;
    let pieces: Vec<&str> = (1..chunks.len() - 2)
        .filter_map(|i| delta(i)["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert!(pieces.len() >= 2, "{pieces:?}");
    let arguments: Value = serde_json::from_str(&pieces.concat())?;
    assert_eq!(arguments, json!({ "cmd": "echo tollgate-tool-ok" }));
    let last = &chunks[chunks.len() - 2]["choices"][0];
    assert_eq!(
        (&last["delta"], &last["finish_reason"]),
        (&json!({}), &json!("tool_calls"))
    );
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], pieces.len());

    let reply = post(&mock, &request(answered(id), true)).await?;
    let chunks = parse_chunks(&reply.text())?;
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, format!("tool said: {TOOL_OUTPUT}\n"));
    Ok(())
}

#[tokio::test]
async fn a_held_tool_call_stream_stops_after_the_call_chunk() -> TestResult {
    let mock = start(MockConfig::default()).await?;
    mock.script("held", [Fault::HoldAfterFirst]);
    let raw = request_bytes(
        "POST",
        PATH,
        &[("x-api-key", "held")],
        &request(ask(), true),
    );
    let mut stream = connect(&mock, &raw).await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&buf).contains("\n\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        assert!(n > 0, "closed before the first chunk");
        buf.extend_from_slice(&chunk[..n]);
    }
    let more = tokio::time::timeout(Duration::from_millis(50), stream.read(&mut chunk)).await;
    assert!(more.is_err(), "the rest must wait for release_holds");
    let sent = String::from_utf8_lossy(&buf).matches("data: ").count();
    assert_eq!(sent, 1, "held right after the chunk that names the call");
    mock.release_holds();
    read_all(&mut stream, &mut buf).await;
    let reply = parse_reply(&buf)?;
    let chunks = parse_chunks(&reply.text())?;
    assert_eq!(
        chunks[0]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"],
        "exec_command"
    );
    Ok(())
}

#[tokio::test]
async fn the_marker_without_a_shell_tool_gets_an_explanation() -> TestResult {
    let mock = start(MockConfig::default()).await?;
    let body = json!({ "model": "m", "messages": ask() }).to_string();
    let v = post(&mock, &body).await?.json()?;
    let text = v["choices"][0]["message"]["content"]
        .as_str()
        .ok_or("no text")?;
    assert!(text.contains("no `exec_command`"), "{text}");
    Ok(())
}
