use super::*;

fn chat(req: Value) -> ChatRequest {
    to_chat(req.to_string().as_bytes()).expect("translatable")
}

#[test]
fn a_codex_turn_becomes_a_chat_request() {
    let req = json!({
        "model": "gpt-5-codex",
        "instructions": "You are Codex.",
        "stream": true,
        "store": false,
        "prompt_cache_key": "session-1",
        "include": ["reasoning.encrypted_content"],
        "reasoning": {"effort": "high", "summary": "auto"},
        "parallel_tool_calls": false,
        "tool_choice": "auto",
        "max_output_tokens": 4096,
        "input": [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Sandbox: read-only."}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "list files"}]},
            {"type": "reasoning", "summary": [], "encrypted_content": "gAAA"},
            {"type": "function_call", "call_id": "call_1", "name": "exec_command", "arguments": "{\"cmd\":\"ls\"}"},
            {"type": "function_call", "call_id": "call_2", "name": "exec_command", "arguments": "{\"cmd\":\"pwd\"}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "a.txt"},
            {"type": "function_call_output", "call_id": "call_2", "output": "/work"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Two answers."}]},
        ],
        "tools": [
            {"type": "function", "name": "exec_command", "description": "Run", "parameters": {"type": "object"}, "strict": false},
            {"type": "web_search"},
            {"type": "namespace", "name": "mcp_tools"},
        ],
    });
    let out = chat(req);
    assert_eq!(
        out.body,
        json!({
            "model": "gpt-5-codex",
            "messages": [
                {"role": "system", "content": "You are Codex."},
                {"role": "system", "content": "Sandbox: read-only."},
                {"role": "user", "content": [{"type": "text", "text": "list files"}]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "exec_command", "arguments": "{\"cmd\":\"ls\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "exec_command", "arguments": "{\"cmd\":\"pwd\"}"}},
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "a.txt"},
                {"role": "tool", "tool_call_id": "call_2", "content": "/work"},
                {"role": "assistant", "content": "Two answers."},
            ],
            "tools": [{"type": "function", "function": {"name": "exec_command", "description": "Run", "parameters": {"type": "object"}, "strict": false}}],
            "tool_choice": "auto",
            "parallel_tool_calls": false,
            "max_tokens": 4096,
            "prompt_cache_key": "session-1",
            "reasoning_effort": "high",
            "stream": true,
            "stream_options": {"include_usage": true},
        })
    );
    assert_eq!(out.dropped_tools, ["web_search", "mcp_tools"]);
}

#[test]
fn a_string_input_images_and_formats_translate() {
    let out = chat(json!({
        "model": "m",
        "input": "hi",
        "temperature": 0.2,
        "top_p": 0.9,
        "user": "u-1",
        "text": {"format": {"type": "json_schema", "name": "answer", "schema": {"type": "object"}, "strict": true}},
    }));
    assert_eq!(
        out.body["messages"],
        json!([{"role": "user", "content": "hi"}])
    );
    assert_eq!(
        out.body["response_format"],
        json!({"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": true}})
    );
    assert_eq!(
        (
            out.body["temperature"].clone(),
            out.body["top_p"].clone(),
            out.body["user"].clone()
        ),
        (json!(0.2), json!(0.9), json!("u-1"))
    );
    assert!(out.body.get("stream").is_none());

    let out = chat(json!({
        "model": "m",
        "input": [{"role": "user", "content": [
            {"type": "input_text", "text": "what is this?"},
            {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"},
        ]}],
        "text": {"format": {"type": "json_object"}},
    }));
    assert_eq!(
        out.body["messages"][0]["content"][1],
        json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}})
    );
    assert_eq!(out.body["response_format"], json!({"type": "json_object"}));
}

#[test]
fn tool_choices_translate_and_a_forced_hosted_tool_is_refused() {
    let tools = json!([{"type": "function", "name": "f", "parameters": {"type": "object"}}, {"type": "web_search"}]);
    let with = |choice: Value| {
        to_chat(
            json!({"model": "m", "input": "x", "tools": tools, "tool_choice": choice})
                .to_string()
                .as_bytes(),
        )
    };
    assert_eq!(
        with(json!({"type": "function", "name": "f"})).unwrap().body["tool_choice"],
        json!({"type": "function", "function": {"name": "f"}})
    );
    assert_eq!(
        with(json!("required")).unwrap().body["tool_choice"],
        json!("required")
    );
    let refused = with(json!({"type": "web_search"})).unwrap_err();
    assert_eq!(refused, Refused::ForcedTool("web_search".into()));
    assert_eq!(refused.param(), "tool_choice");
    // Only hosted tools: no tools and no choice reach the chat target.
    let out = chat(
        json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}], "tool_choice": "auto", "parallel_tool_calls": true}),
    );
    assert!(
        out.body.get("tools").is_none()
            && out.body.get("tool_choice").is_none()
            && out.body.get("parallel_tool_calls").is_none()
    );
}

#[test]
fn stored_state_is_refused_with_its_parameter_never_dropped() {
    for (field, value) in [
        ("previous_response_id", json!("resp_1")),
        ("conversation", json!({"id": "conv_1"})),
    ] {
        let mut req = json!({"model": "m", "input": "x"});
        req[field] = value;
        let refused = to_chat(req.to_string().as_bytes()).unwrap_err();
        assert_eq!(refused, Refused::Stateful(field));
        assert_eq!(refused.param(), field);
    }
    let refused = to_chat(
        json!({"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]})
            .to_string()
            .as_bytes(),
    )
    .unwrap_err();
    assert_eq!(refused.param(), "input");
    // A null previous_response_id is no reference.
    assert!(to_chat(
        json!({"model": "m", "input": "x", "previous_response_id": null})
            .to_string()
            .as_bytes()
    )
    .is_ok());
}

#[test]
fn malformed_bodies_are_refused_naming_the_parameter() {
    for (body, param) in [
        ("[1]", "body"),
        (r#"{"input": 3}"#, "input"),
        (r#"{"instructions": 3}"#, "instructions"),
        (r#"{"input": [{"role": "robot", "content": "x"}]}"#, "input"),
        (
            r#"{"input": [{"role": "user", "content": [{"type": "input_audio"}]}]}"#,
            "input",
        ),
        (
            r#"{"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]}"#,
            "input",
        ),
        (
            r#"{"input": "x", "tools": [{"type": "function"}]}"#,
            "tools",
        ),
        (
            r#"{"input": "x", "text": {"format": {"type": "grammar"}}}"#,
            "text.format",
        ),
        (
            r#"{"input": "x", "tools": [{"type": "function", "name": "f"}], "tool_choice": 3}"#,
            "tool_choice",
        ),
    ] {
        let refused = to_chat(body.as_bytes()).unwrap_err();
        assert_eq!(refused.param(), param, "{body}: {refused}");
    }
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// JSON of any shape, with the Responses fields the translation reads placed anywhere.
    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            prop::sample::select(vec![
                "message",
                "function_call",
                "function_call_output",
                "item_reference",
                "reasoning",
                "input_text",
                "input_image",
                "output_text",
                "function",
                "web_search",
                "user",
                "assistant",
                "developer",
                "json_schema",
                "auto",
                "required",
                "",
            ])
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            let key = prop::sample::select(vec![
                "type",
                "role",
                "content",
                "text",
                "call_id",
                "name",
                "arguments",
                "output",
                "image_url",
                "tools",
                "tool_choice",
                "input",
                "format",
                "instructions",
                "parameters",
                "effort",
            ]);
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((key, inner), 0..5).prop_map(|kv| Value::Object(
                    kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
                )),
            ]
        })
    }

    /// A chat chunk of any shape the writer reads.
    fn chunk() -> impl Strategy<Value = Value> {
        let text = prop::option::of("[a-z{}\":]{0,6}");
        let call = (
            0u64..3,
            prop::option::of("[a-z_]{1,5}"),
            prop::option::of("[a-z{}\":]{0,6}"),
        );
        let finish = prop::option::of(prop::sample::select(vec![
            "stop",
            "length",
            "tool_calls",
            "content_filter",
        ]));
        (text, prop::collection::vec(call, 0..3), finish, any::<bool>()).prop_map(|(text, calls, finish, usage)| {
            let calls: Vec<Value> = calls
                .into_iter()
                .map(|(i, name, args)| json!({"index": i, "id": name.as_ref().map(|n| format!("call_{n}")), "function": {"name": name, "arguments": args}}))
                .collect();
            let mut chunk = json!({"id": "c", "choices": [{"index": 0, "delta": {"content": text, "tool_calls": calls}, "finish_reason": finish}]});
            if usage {
                chunk["usage"] = json!({"prompt_tokens": 1, "completion_tokens": 2});
            }
            chunk
        })
    }

    proptest! {
        #![proptest_config(crate::sse::fuzz::config(256))]

        /// Any chunks: events numbered 0, 1, 2, … each carrying its type, one terminal event last,
        /// and the terminal response holds exactly the text and arguments the deltas carried.
        #[test]
        fn any_chat_stream_writes_a_well_formed_responses_stream(chunks in prop::collection::vec(chunk(), 1..8)) {
            let mut w = StreamWriter::default();
            let mut events: Vec<Event> = chunks.iter().flat_map(|c| w.chunk(c)).collect();
            events.extend(w.finish());
            for (i, e) in events.iter().enumerate() {
                prop_assert_eq!(&e.data["sequence_number"], &json!(i));
                prop_assert_eq!(&e.data["type"], &json!(e.name));
            }
            let last = events.last().expect("a started stream ends");
            prop_assert!(matches!(last.name, "response.completed" | "response.incomplete"));
            let terminal = events.iter().filter(|e| e.name.starts_with("response.completed") || e.name == "response.incomplete").count();
            prop_assert_eq!(terminal, 1);
            let deltas: String = events.iter().filter(|e| e.name == "response.output_text.delta").filter_map(|e| e.data["delta"].as_str()).collect();
            let texts: String = last.data["response"]["output"].as_array().into_iter().flatten()
                .filter(|i| i["type"] == "message")
                .filter_map(|i| i["content"][0]["text"].as_str()).collect();
            prop_assert_eq!(deltas, texts);
        }

        /// No body makes the translation panic; what it makes is a chat body with messages.
        #[test]
        fn any_body_translates_or_is_refused(
            input in value(),
            tools in value(),
            choice in value(),
            text in value(),
            bytes in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let _ = to_chat(&bytes);
            let body = json!({"model": "m", "input": input, "tools": tools, "tool_choice": choice, "text": text});
            if let Ok(out) = to_chat(body.to_string().as_bytes()) {
                prop_assert!(out.body["messages"].is_array());
            }
        }
    }
}

#[test]
fn a_chat_completion_becomes_a_response() {
    let chat = json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "llama-3",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant",
            "content": "Running it.",
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "exec_command", "arguments": "{\"cmd\":\"ls\"}"}}],
        }}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17, "prompt_tokens_details": {"cached_tokens": 4}},
    });
    assert_eq!(
        from_chat(&chat),
        json!({
            "id": "resp_chatcmpl-1",
            "object": "response",
            "created_at": 1700000000,
            "status": "completed",
            "incomplete_details": null,
            "error": null,
            "model": "llama-3",
            "output": [
                {"type": "message", "id": "msg_chatcmpl-1", "status": "completed", "role": "assistant",
                 "content": [{"type": "output_text", "text": "Running it.", "annotations": []}]},
                {"type": "function_call", "id": "fc_chatcmpl-1_0", "call_id": "call_1", "name": "exec_command",
                 "arguments": "{\"cmd\":\"ls\"}", "status": "completed"},
            ],
            "usage": {"input_tokens": 12, "input_tokens_details": {"cached_tokens": 4}, "output_tokens": 5,
                      "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 17},
        })
    );
    let cut = json!({"id": "c", "choices": [{"finish_reason": "length", "message": {"content": "partial"}}]});
    let response = from_chat(&cut);
    assert_eq!(response["status"], "incomplete");
    assert_eq!(
        response["incomplete_details"],
        json!({"reason": "max_output_tokens"})
    );
    assert_eq!(response["usage"], Value::Null);
}

#[test]
fn a_chat_stream_becomes_responses_events_in_order() {
    let chunks = [
        json!({"id": "c1", "model": "llama-3", "created": 7, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}),
        json!({"id": "c1", "choices": [{"index": 0, "delta": {"content": "Run"}}]}),
        json!({"id": "c1", "choices": [{"index": 0, "delta": {"content": "ning."}}]}),
        json!({"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "exec_command", "arguments": ""}}]}}]}),
        json!({"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"cmd\":"}}]}}]}),
        json!({"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "\"ls\"}"}}]}}]}),
        json!({"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
        json!({"id": "c1", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}}),
    ];
    let mut w = StreamWriter::default();
    let mut events: Vec<Event> = chunks.iter().flat_map(|c| w.chunk(c)).collect();
    events.extend(w.finish());
    assert!(w.finish().is_empty(), "one end only");
    let names: Vec<&str> = events.iter().map(|e| e.name).collect();
    assert_eq!(
        names,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.data["type"], e.name, "every data carries its type");
        assert_eq!(e.data["sequence_number"], i, "numbered from 0");
    }
    assert_eq!(events[6].data["text"], "Running.");
    assert_eq!(events[12].data["arguments"], "{\"cmd\":\"ls\"}");
    let done = &events[14].data["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["id"], "resp_c1");
    assert_eq!(done["output"][0]["content"][0]["text"], "Running.");
    assert_eq!(done["output"][1]["call_id"], "call_1");
    assert_eq!(done["output"][1]["arguments"], "{\"cmd\":\"ls\"}");
    assert_eq!(done["usage"]["input_tokens"], 9);
    assert_eq!(done["usage"]["output_tokens"], 4);
    // What the same answer is when not streamed: the same output.
    let plain = from_chat(
        &json!({"id": "c1", "choices": [{"finish_reason": "tool_calls", "message": {
        "content": "Running.",
        "tool_calls": [{"id": "call_1", "function": {"name": "exec_command", "arguments": "{\"cmd\":\"ls\"}"}}]}}]}),
    );
    assert_eq!(plain["output"], done["output"]);
    let encoded = Event::encode(&events[..1]);
    assert!(
        encoded.starts_with(b"event: response.created\ndata: {"),
        "{encoded:?}"
    );
    assert!(encoded.ends_with(b"\n\n"));
}

#[test]
fn a_stream_cut_by_its_token_limit_ends_incomplete() {
    let mut w = StreamWriter::default();
    let mut events = w.chunk(&json!({"id": "c", "choices": [{"delta": {"content": "par"}}]}));
    events.extend(
        w.chunk(&json!({"id": "c", "choices": [{"delta": {}, "finish_reason": "length"}]})),
    );
    events.extend(w.finish());
    let last = events.last().unwrap();
    assert_eq!(last.name, "response.incomplete");
    assert_eq!(
        last.data["response"]["incomplete_details"]["reason"],
        "max_output_tokens"
    );
    // A stream that never started writes nothing at its end.
    assert!(StreamWriter::default().finish().is_empty());
}

/// The chat stream of `chunks` (each a `data:` event, `\r\n` line ends for one of them) then
/// `[DONE]`, as bytes.
fn chat_sse(chunks: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        let end = if i == 1 { "\r\n\r\n" } else { "\n\n" };
        out.extend_from_slice(format!("data: {c}{end}").as_bytes());
    }
    out.extend_from_slice(b": keep-alive\n\ndata: [DONE]\n\n");
    out
}

/// The Responses events `input` reads to, fed in pieces of `size` bytes.
fn read_in_pieces(input: &[u8], size: usize) -> Vec<u8> {
    let mut stream = ChatStream::default();
    let mut out = Vec::new();
    for piece in input.chunks(size.max(1)) {
        stream.push(piece, &mut out);
    }
    assert_eq!(stream.pending(), 0, "nothing left unread");
    out
}

/// `(event name, data)` of SSE bytes, checking each event's name is its data's `type`.
fn parse_events(sse: &[u8]) -> Vec<(String, Value)> {
    let text = std::str::from_utf8(sse).unwrap();
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (name, data) = e.split_once('\n').unwrap();
            let name = name.strip_prefix("event: ").unwrap().to_owned();
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(data["type"], name.as_str());
            (name, data)
        })
        .collect()
}

#[test]
fn a_chat_stream_reads_the_same_at_every_chunking() {
    let chunks = [
        json!({"id": "c2", "model": "m", "created": 1, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
        json!({"id": "c2", "choices": [{"index": 0, "delta": {"content": "hé "}}]}),
        json!({"id": "c2", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_9", "type": "function", "function": {"name": "exec_command", "arguments": "{\"cmd\""}}]}}]}),
        json!({"id": "c2", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ":\"ls\"}"}}]}}]}),
        json!({"id": "c2", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
        json!({"id": "c2", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}),
    ];
    let input = chat_sse(&chunks);
    let whole = read_in_pieces(&input, usize::MAX);
    for size in [1, 2, 7, 64] {
        assert_eq!(
            read_in_pieces(&input, size),
            whole,
            "pieces of {size} bytes"
        );
    }
    let events = parse_events(&whole);
    let (last, done) = events.last().unwrap();
    assert_eq!(last, "response.completed");
    assert_eq!(done["response"]["output"][0]["content"][0]["text"], "hé ");
    assert_eq!(
        done["response"]["output"][1]["arguments"],
        "{\"cmd\":\"ls\"}"
    );
    assert_eq!(done["response"]["usage"]["total_tokens"], 7);
    for (i, (_, data)) in events.iter().enumerate() {
        assert_eq!(data["sequence_number"], i);
    }
}

#[test]
fn an_error_chunk_after_output_fails_the_response() {
    let mut input = chat_sse(&[
        json!({"id": "c3", "choices": [{"index": 0, "delta": {"content": "par"}}]}),
        json!({"error": {"message": "overloaded", "type": "server_error", "code": "server_is_overloaded"}}),
    ]);
    // Nothing after the failure counts, [DONE] included.
    input.extend_from_slice(b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n");
    let events = parse_events(&read_in_pieces(&input, 3));
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names
            .iter()
            .filter(|n| n.starts_with("response.output_text.delta"))
            .count(),
        1,
        "{names:?}"
    );
    let (last, failed) = events.last().unwrap();
    assert_eq!(last, "response.failed");
    assert_eq!(failed["response"]["status"], "failed");
    assert_eq!(failed["response"]["error"]["code"], "server_is_overloaded");
    assert_eq!(failed["response"]["error"]["message"], "overloaded");

    let garbage = b"data: {\"id\":\"c4\",\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {not json\n\n";
    let events = parse_events(&read_in_pieces(garbage, 5));
    assert_eq!(events.last().unwrap().0, "response.failed");
}

#[test]
fn the_dropped_tools_are_named_without_reading_the_rest() {
    let body = json!({"model": "m", "input": [{"role": "user", "content": "hi"}], "tools": [
        {"type": "function", "name": "exec_command", "parameters": {}},
        {"type": "web_search"},
        {"type": "custom", "name": "apply_patch"},
    ]});
    assert_eq!(
        dropped_tools(body.to_string().as_bytes()),
        ["web_search", "apply_patch"]
    );
    assert!(dropped_tools(b"{\"input\":\"hi\"}").is_empty());
    assert!(dropped_tools(b"not json").is_empty());
}

#[test]
fn the_remaining_rows_translate_drop_or_refuse() {
    let out = chat(json!({
        "model": "m",
        "input": [
            {"type": "message", "role": "system", "content": "sys"},
            {"role": "user", "content": "go"},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": [{"type": "input_text", "text": "o"}, {"type": "input_text", "text": "k"}]},
            {"type": "web_search_call", "id": "ws_1", "status": "completed"},
        ],
        "tools": [{"type": "function", "name": "f"}],
        "tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "f"}]},
        "safety_identifier": "hash-1",
        "metadata": {"k": "v"},
        "service_tier": "flex",
        "truncation": "auto",
        "top_logprobs": 2,
        "store": true,
    }));
    assert_eq!(
        out.body,
        json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "sys"},
                {"role": "user", "content": "go"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "ok"},
            ],
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": "auto",
            "safety_identifier": "hash-1",
        })
    );
    let refused = to_chat(br#"{"model":"m","input":"x","background":true}"#).unwrap_err();
    assert_eq!(refused.param(), "background");
}
