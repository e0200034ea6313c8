//! Reading chat requests and building round-trip answers, without a socket.

use super::*;
use crate::sse::StreamKind;

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn exec_tool() -> Value {
    json!({ "type": "function", "function": { "name": "exec_command", "parameters": { "type": "object" } } })
}

fn spec(chunks: usize, include_usage: bool) -> StreamSpec {
    StreamSpec {
        kind: StreamKind::Chat,
        id: "chatcmpl-mock-1".into(),
        created: 1,
        model: "m".into(),
        chunks,
        include_usage,
        prompt_tokens: 5,
        huge_usage: false,
    }
}

/// The JSON of every `data:` event but `[DONE]`.
fn chunks(answer: &Answer) -> Vec<Value> {
    answer
        .pieces
        .iter()
        .filter_map(|piece| {
            let text = std::str::from_utf8(piece).ok()?;
            serde_json::from_str(text.strip_prefix("data: ")?.trim_end()).ok()
        })
        .collect()
}

#[test]
fn the_last_message_decides_the_reply() {
    let with = |messages: Value| {
        reply_for(&object(
            json!({ "messages": messages, "tools": [exec_tool()] }),
        ))
    };
    assert_eq!(
        with(json!([{ "role": "user", "content": "hi" }])),
        Reply::Default
    );
    assert!(matches!(
        with(json!([{ "role": "user", "content": [{ "type": "text", "text": "go TOLLGATE_TOOL" }] }])),
        Reply::Call { name, .. } if name == "exec_command"
    ));
    let tool = json!({ "role": "tool", "tool_call_id": "call_1", "content": "tollgate-tool-ok\n" });
    assert_eq!(
        with(json!([{ "role": "user", "content": "TOLLGATE_TOOL" }, tool])),
        Reply::Text("tool said: tollgate-tool-ok\n".into())
    );
    let parts = json!({ "role": "tool", "content": [{ "type": "text", "text": "ok" }] });
    assert_eq!(with(json!([parts])), Reply::Text("tool said: ok".into()));
    // The marker in an earlier message does not count.
    let assistant = json!({ "role": "assistant", "content": "TOLLGATE_TOOL" });
    assert_eq!(with(json!([assistant])), Reply::Default);
    assert_eq!(reply_for(&object(json!({}))), Reply::Default);
}

#[test]
fn a_plain_tool_call_is_an_assistant_message_with_tool_calls() -> serde_json::Result<()> {
    let call = Reply::Call {
        name: "exec_command".into(),
        arguments: tools::tool_arguments("exec_command"),
    };
    let answer = answer(&spec(3, false), call, "9_2", false);
    let v: Value = serde_json::from_slice(&answer.pieces[0])?;
    assert_eq!(v["object"], "chat.completion");
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(
        choice["message"],
        json!({
            "role": "assistant",
            "content": null,
            "tool_calls": [{
                "id": "call_9_2",
                "type": "function",
                "function": { "name": "exec_command", "arguments": r#"{"cmd":"echo tollgate-tool-ok"}"# },
            }],
        })
    );
    assert_eq!(v["usage"]["completion_tokens"], 3);
    Ok(())
}

#[test]
fn a_streamed_tool_call_follows_openais_chunk_order() -> serde_json::Result<()> {
    let arguments = tools::tool_arguments("shell");
    let call = Reply::Call {
        name: "shell".into(),
        arguments: arguments.clone(),
    };
    // One chunk asked for: the arguments still come in two pieces.
    let answer = answer(&spec(1, true), call, "9_3", true);
    assert!(answer.streaming);
    assert_eq!(answer.pieces.last(), Some(&sse::done_event()));
    let chunks = chunks(&answer);
    assert_eq!(chunks.len(), 5, "{chunks:?}");
    let first = &chunks[0]["choices"][0];
    assert_eq!(
        first["delta"],
        json!({
            "role": "assistant",
            "content": null,
            "tool_calls": [{ "index": 0, "id": "call_9_3", "type": "function",
                             "function": { "name": "shell", "arguments": "" } }],
        })
    );
    assert!(first["finish_reason"].is_null());
    let pieces: Vec<&str> = chunks[1..3]
        .iter()
        .map(|c| {
            assert_eq!(c["choices"][0]["delta"]["tool_calls"][0]["index"], 0);
            c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(pieces.concat(), arguments);
    assert_eq!(chunks[3]["choices"][0]["delta"], json!({}));
    assert_eq!(chunks[3]["choices"][0]["finish_reason"], "tool_calls");
    assert!(chunks[..4].iter().all(|c| c["usage"].is_null()));
    assert_eq!(chunks[4]["choices"], json!([]));
    assert_eq!(chunks[4]["usage"]["completion_tokens"], 2);
    Ok(())
}

#[test]
fn a_streamed_text_starts_with_the_role_and_ends_with_stop() {
    let text = Reply::Text("tool said: ok".into());
    let chunks = chunks(&answer(&spec(3, false), text, "9_4", true));
    assert_eq!(chunks.len(), 5);
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({ "role": "assistant", "content": "" })
    );
    let text: String = chunks[1..4]
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "tool said: ok");
    assert_eq!(chunks[4]["choices"][0]["finish_reason"], "stop");
    assert!(chunks[0].get("usage").is_none());
}
