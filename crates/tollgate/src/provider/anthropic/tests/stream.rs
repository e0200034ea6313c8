//! `StreamTranslator`: each event kind, usage, errors, and arbitrary input chunking.

use serde_json::{json, Value};

use super::super::StreamTranslator;

/// A captured Anthropic stream: thinking block, text with non-ASCII characters, two tool
/// calls at block indexes 2 and 3 (tool-call indexes 0 and 1), pings in between.
const TOOL_STREAM: &str = include_str!("../testdata/tool_stream.sse");

/// The `data:` payloads of translated output: JSON values, and `[DONE]` as a string.
fn events(out: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(out).expect("UTF-8 output");
    assert!(text.is_empty() || text.ends_with("\n\n"), "{text:?}");
    text.split_terminator("\n\n")
        .map(|event| {
            let data = event.strip_prefix("data: ").expect("data event");
            if data == "[DONE]" {
                Value::from("[DONE]")
            } else {
                serde_json::from_str(data).expect("JSON chunk")
            }
        })
        .collect()
}

fn run(input: &str, include_usage: bool) -> (Vec<u8>, bool) {
    let mut t = StreamTranslator::new("gpt-alias", include_usage, 42);
    let mut out = Vec::new();
    t.push(input.as_bytes(), &mut out);
    (out, t.is_done())
}

/// An SSE event as Anthropic frames it.
fn sse(name: &str, data: &Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

fn start() -> String {
    sse(
        "message_start",
        &json!({ "type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": { "input_tokens": 25, "output_tokens": 1 },
        }}),
    )
}

fn text_block(index: u64, pieces: &[&str]) -> String {
    let mut s = sse(
        "content_block_start",
        &json!({ "type": "content_block_start", "index": index, "content_block": { "type": "text", "text": "" } }),
    );
    for piece in pieces {
        s += &sse(
            "content_block_delta",
            &json!({ "type": "content_block_delta", "index": index, "delta": { "type": "text_delta", "text": piece } }),
        );
    }
    s + &sse(
        "content_block_stop",
        &json!({ "type": "content_block_stop", "index": index }),
    )
}

fn end(stop_reason: &str, output_tokens: u64) -> String {
    sse(
        "message_delta",
        &json!({ "type": "message_delta", "delta": { "stop_reason": stop_reason, "stop_sequence": null }, "usage": { "output_tokens": output_tokens } }),
    ) + &sse("message_stop", &json!({ "type": "message_stop" }))
}

fn chunk(delta: Value, finish: Value) -> Value {
    json!({
        "id": "chatcmpl-msg_1",
        "object": "chat.completion.chunk",
        "created": 42,
        "model": "gpt-alias",
        "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }],
    })
}

#[test]
fn text_stream_translates_event_by_event() {
    let input = start()
        + &sse("ping", &json!({ "type": "ping" }))
        + &text_block(0, &["Hello", "", ", world"])
        + &end("end_turn", 7);
    let (out, done) = run(&input, false);
    assert!(done);
    assert_eq!(
        events(&out),
        vec![
            chunk(json!({ "role": "assistant", "content": "" }), Value::Null),
            chunk(json!({ "content": "Hello" }), Value::Null),
            chunk(json!({ "content": ", world" }), Value::Null),
            chunk(json!({}), json!("stop")),
            json!("[DONE]"),
        ]
    );
}

#[test]
fn include_usage_adds_null_usage_and_a_final_usage_chunk() {
    let start = sse(
        "message_start",
        &json!({ "type": "message_start", "message": { "id": "msg_1", "content": [],
            "usage": { "input_tokens": 25, "cache_creation_input_tokens": 5, "cache_read_input_tokens": 70, "output_tokens": 1 } } }),
    );
    let (out, _) = run(
        &(start + &text_block(0, &["Hi"]) + &end("max_tokens", 9)),
        true,
    );
    let events = events(&out);
    assert_eq!(events.len(), 5);
    for event in &events[..3] {
        assert!(
            event["usage"].is_null() && event.get("usage").is_some(),
            "{event}"
        );
    }
    assert_eq!(events[2]["choices"][0]["finish_reason"], "length");
    assert_eq!(
        events[3],
        json!({
            "id": "chatcmpl-msg_1", "object": "chat.completion.chunk", "created": 42, "model": "gpt-alias",
            "choices": [],
            "usage": { "prompt_tokens": 100, "completion_tokens": 9, "total_tokens": 109,
                       "prompt_tokens_details": { "cached_tokens": 70 } },
        })
    );
    assert_eq!(events[4], "[DONE]");
}

#[test]
fn realistic_tool_stream_counts_tool_calls_not_blocks() {
    let (out, done) = run(TOOL_STREAM, false);
    assert!(done);
    let events = events(&out);
    let deltas: Vec<&Value> = events[..events.len() - 1]
        .iter()
        .map(|e| &e["choices"][0]["delta"])
        .collect();
    assert_eq!(events[0]["id"], "chatcmpl-msg_01XFDUDYJgAACzvnptvVoYEL");
    let expected = vec![
        json!({ "role": "assistant", "content": "" }),
        json!({ "content": "Checking Paris – ☀️ " }),
        json!({ "content": "and Zürich." }),
        json!({ "tool_calls": [{ "index": 0, "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "type": "function",
                                 "function": { "name": "get_weather", "arguments": "" } }] }),
        json!({ "tool_calls": [{ "index": 0, "function": { "arguments": "{\"city\": \"Pa" } }] }),
        json!({ "tool_calls": [{ "index": 0, "function": { "arguments": "ris\", \"unit\": \"°C\"}" } }] }),
        json!({ "tool_calls": [{ "index": 1, "id": "toolu_01ABCdefGHIjklMNOpqrSTUv", "type": "function",
                                 "function": { "name": "get_weather", "arguments": "" } }] }),
        json!({ "tool_calls": [{ "index": 1, "function": { "arguments": "{\"city\":" } }] }),
        json!({ "tool_calls": [{ "index": 1, "function": { "arguments": " \"Zürich\"}" } }] }),
        json!({}),
    ];
    assert_eq!(deltas, expected.iter().collect::<Vec<_>>());
    assert_eq!(
        events[events.len() - 2]["choices"][0]["finish_reason"],
        "tool_calls"
    );
    assert_eq!(events[events.len() - 1], "[DONE]");
}

/// Feeds `input` in pieces of `size` bytes (cutting through lines, `\r\n` pairs and UTF-8
/// characters) and returns the concatenated output.
fn run_in_pieces(input: &[u8], size: usize, include_usage: bool) -> Vec<u8> {
    let mut t = StreamTranslator::new("gpt-alias", include_usage, 42);
    let mut out = Vec::new();
    for piece in input.chunks(size) {
        t.push(piece, &mut out);
    }
    assert!(t.is_done());
    out
}

#[test]
fn any_chunking_gives_the_same_output() {
    let crlf = TOOL_STREAM.replace('\n', "\r\n");
    let cr = TOOL_STREAM.replace('\n', "\r");
    for include_usage in [false, true] {
        let whole = run_in_pieces(TOOL_STREAM.as_bytes(), usize::MAX, include_usage);
        for input in [TOOL_STREAM, &crlf, &cr] {
            for size in [1, 2, 3, 7, 64, 1000] {
                let pieces = run_in_pieces(input.as_bytes(), size, include_usage);
                assert!(
                    pieces == whole,
                    "size {size}, usage {include_usage}, {:?}",
                    &input[..20]
                );
            }
        }
    }
}

#[test]
fn nothing_is_emitted_before_an_event_is_complete() {
    let mut t = StreamTranslator::new("m", false, 0);
    let mut out = Vec::new();
    let input = start();
    let (head, tail) = input.split_at(input.len() - 1);
    t.push(head.as_bytes(), &mut out);
    assert!(out.is_empty());
    t.push(tail.as_bytes(), &mut out);
    assert_eq!(events(&out).len(), 1);
    assert!(!t.is_done());
}

#[test]
fn thinking_pings_comments_and_unknown_events_are_ignored() {
    let input = start()
        + ": a comment line\n\n"
        + &sse("ping", &json!({ "type": "ping" }))
        + &sse(
            "content_block_start",
            &json!({ "type": "content_block_start", "index": 0, "content_block": { "type": "thinking", "thinking": "" } }),
        )
        + &sse(
            "content_block_delta",
            &json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "thinking_delta", "thinking": "secret" } }),
        )
        + &sse(
            "content_block_delta",
            &json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "signature_delta", "signature": "sig" } }),
        )
        + &sse(
            "content_block_stop",
            &json!({ "type": "content_block_stop", "index": 0 }),
        )
        + &sse(
            "brand_new_event",
            &json!({ "type": "brand_new_event", "x": 1 }),
        )
        + "event: another_new_one\ndata: not json at all\n\n"
        + &sse(
            "content_block_start",
            &json!({ "type": "content_block_start", "index": 1, "content_block": { "type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search" } }),
        )
        + &sse(
            "content_block_delta",
            &json!({ "type": "content_block_delta", "index": 1, "delta": { "type": "input_json_delta", "partial_json": "{\"query\":\"x\"}" } }),
        )
        + &text_block(2, &["ok"])
        + &end("end_turn", 3);
    let (out, done) = run(&input, false);
    assert!(done);
    let text = String::from_utf8(out.clone()).unwrap();
    assert!(
        !text.contains("secret") && !text.contains("query"),
        "{text}"
    );
    assert_eq!(events(&out).len(), 4, "start, ok, finish, DONE: {text}");
}

#[test]
fn error_event_becomes_an_openai_error_chunk_and_ends_the_stream() {
    let error = sse(
        "error",
        &json!({ "type": "error", "error": { "type": "overloaded_error", "message": "Overloaded" } }),
    );
    let mut t = StreamTranslator::new("m", true, 0);
    let mut out = Vec::new();
    t.push(
        (start() + &text_block(0, &["partial"]) + &error).as_bytes(),
        &mut out,
    );
    assert!(t.is_done());
    let events = events(&out);
    assert_eq!(
        events.last(),
        Some(
            &json!({ "error": { "message": "Overloaded", "type": "server_error", "param": null, "code": null } })
        )
    );
    assert!(!events.contains(&json!("[DONE]")));
    let before = out.len();
    t.push(end("end_turn", 1).as_bytes(), &mut out);
    assert_eq!(out.len(), before, "input after the end is ignored");
}

#[test]
fn unreadable_known_event_ends_the_stream_with_a_server_error() {
    let input = start() + "event: content_block_delta\ndata: {\"type\":\"content_block_del\n\n";
    let (out, done) = run(&input, false);
    assert!(done);
    let last = events(&out).pop().unwrap();
    assert_eq!(last["error"]["type"], "server_error");
    assert!(last["error"]["message"]
        .as_str()
        .unwrap()
        .contains("unreadable"));
}

#[test]
fn finish_reasons_in_the_stream_follow_the_mapping() {
    for (stop_reason, finish) in [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ] {
        let (out, _) = run(&(start() + &end(stop_reason, 1)), false);
        let events = events(&out);
        assert_eq!(
            events[1]["choices"][0]["finish_reason"], finish,
            "{stop_reason}"
        );
    }
}

#[test]
fn not_done_until_message_stop() {
    let mut t = StreamTranslator::new("m", false, 0);
    let mut out = Vec::new();
    let body = start() + &text_block(0, &["x"]);
    t.push(body.as_bytes(), &mut out);
    t.push(
        sse("message_delta", &json!({ "type": "message_delta", "delta": { "stop_reason": "end_turn" }, "usage": { "output_tokens": 1 } })).as_bytes(),
        &mut out,
    );
    assert!(!t.is_done());
    t.push(
        b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        &mut out,
    );
    assert!(t.is_done());
    assert!(out.ends_with(b"data: [DONE]\n\n"));
}
