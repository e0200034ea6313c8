use super::*;

fn chat(req: Value) -> ChatRequest {
    to_chat(req.to_string().as_bytes(), ChatOptions::default()).expect("translatable")
}

fn refused(req: Value) -> Refusal {
    to_chat(req.to_string().as_bytes(), ChatOptions::default()).expect_err("refused")
}

/// A Claude Code turn as captured (trimmed): system blocks with `cache_control`, a `system`
/// message after the first user turn, thinking, a tool round trip, built-in tools.
fn claude_code_turn() -> Value {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 32000,
        "stream": true,
        "system": [
            {"type": "text", "text": "You are Claude Code."},
            {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
        ],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "<system-reminder>ctx</system-reminder>"},
                {"type": "text", "text": "list files", "cache_control": {"type": "ephemeral"}},
            ]},
            {"role": "system", "content": "The user switched to plan mode."},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hm", "signature": "sig"},
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls", "description": "list"}},
                {"type": "tool_use", "id": "toolu_2", "name": "Read", "input": {"file_path": "/a"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "a.txt"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": true, "content": [{"type": "text", "text": "no such file"}]},
                {"type": "text", "text": "go on"},
            ]},
        ],
        "tools": [
            {"name": "Bash", "description": "Run a command", "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}},
            {"name": "Read", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}},
            {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
        ],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": true},
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "high"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015"}]},
        "metadata": {"user_id": "{\"device_id\":\"d\",\"account_uuid\":\"a\",\"session_id\":\"8f1c2d9e-0000-4000-8000-000000000001\"}"},
        "temperature": 1,
        "top_k": 5,
    })
}

#[test]
fn a_claude_code_turn_becomes_a_chat_request() {
    let out = chat(claude_code_turn());
    let user = claude_code_turn()["metadata"]["user_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        out.body,
        json!({
            "model": "claude-sonnet-4-5",
            "messages": [
                {"role": "system", "content": "You are Claude Code.\n\nBe brief."},
                {"role": "user", "content": "<system-reminder>ctx</system-reminder>\n\nlist files"},
                {"role": "system", "content": "The user switched to plan mode."},
                {"role": "assistant", "content": "Let me look.", "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {"name": "Bash", "arguments": "{\"command\":\"ls\",\"description\":\"list\"}"}},
                    {"id": "toolu_2", "type": "function", "function": {"name": "Read", "arguments": "{\"file_path\":\"/a\"}"}},
                ]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "a.txt"},
                {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: no such file"},
                {"role": "user", "content": "go on"},
            ],
            "tools": [
                {"type": "function", "function": {"name": "Bash", "description": "Run a command", "parameters": {"type": "object", "properties": {"command": {"type": "string"}}}}},
                {"type": "function", "function": {"name": "Read", "parameters": {"type": "object"}}},
            ],
            "tool_choice": "auto",
            "parallel_tool_calls": false,
            "max_tokens": 32000,
            "temperature": 1,
            "user": chat_user(&user),
            "stream": true,
            "stream_options": {"include_usage": true},
        })
    );
    assert_eq!(out.dropped_tools, ["web_search"]);
    // The long user id goes as its digest: 64 hex characters, the same for the same user.
    assert_eq!(chat_user(&user).len(), 64);
    assert_ne!(chat_user(&user), user);
    assert_eq!(chat_user("short-user"), "short-user");
    assert_eq!(
        dropped_tools(claude_code_turn().to_string().as_bytes()),
        ["web_search"]
    );
}

#[test]
fn a_reasoning_target_gets_an_effort_and_max_completion_tokens() {
    let body = claude_code_turn().to_string();
    let out = to_chat(body.as_bytes(), ChatOptions { reasoning: true }).unwrap();
    assert_eq!(out.body["reasoning_effort"], "high");
    assert_eq!(out.body["max_completion_tokens"], 32000);
    assert!(out.body.get("max_tokens").is_none());
    for (thinking, effort, want) in [
        (
            json!({"type": "enabled", "budget_tokens": 1024}),
            None,
            Some("low"),
        ),
        (
            json!({"type": "enabled", "budget_tokens": 8000}),
            None,
            Some("medium"),
        ),
        (
            json!({"type": "enabled", "budget_tokens": 20000}),
            None,
            Some("high"),
        ),
        (json!({"type": "adaptive"}), Some("low"), Some("low")),
        (json!({"type": "adaptive"}), Some("max"), Some("high")),
        (json!({"type": "adaptive"}), None, Some("medium")),
        (json!({"type": "disabled"}), None, None),
    ] {
        let mut req = json!({"model": "m", "max_tokens": 10, "messages": [], "thinking": thinking});
        if let Some(e) = effort {
            req["output_config"] = json!({"effort": e});
        }
        let out = to_chat(req.to_string().as_bytes(), ChatOptions { reasoning: true }).unwrap();
        assert_eq!(out.body["reasoning_effort"].as_str(), want, "{req}");
        // Without a reasoning target nothing of it goes.
        let plain = chat(req);
        assert!(plain.body.get("reasoning_effort").is_none());
    }
}

#[test]
fn content_blocks_translate_row_by_row() {
    let req = json!({"model": "m", "max_tokens": 5, "stop_sequences": ["END"], "top_p": 0.5, "messages": [
        {"role": "user", "content": [
            {"type": "text", "text": "see"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAAA"}},
            {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "doc text"}},
            {"type": "document", "title": "r.pdf", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}},
        ]},
        {"role": "assistant", "content": "plain"},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "x"}, {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "B"}}]}]},
    ], "tool_choice": {"type": "any"}, "tools": [{"name": "f", "input_schema": {"type": "object"}}]});
    let out = chat(req).body;
    assert_eq!(
        out["messages"][0]["content"],
        json!([
            {"type": "text", "text": "see"},
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}},
            {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
            {"type": "text", "text": "doc text"},
            {"type": "file", "file": {"filename": "r.pdf", "file_data": "data:application/pdf;base64,JVBE"}},
        ])
    );
    assert_eq!(
        out["messages"][1],
        json!({"role": "assistant", "content": "plain"})
    );
    assert_eq!(
        out["messages"][2],
        json!({"role": "tool", "tool_call_id": "t", "content": "x\n\n[image]"})
    );
    assert_eq!(out["stop"], json!(["END"]));
    assert_eq!(out["top_p"], 0.5);
    assert_eq!(out["tool_choice"], "required");
    for (choice, want) in [
        (json!({"type": "none"}), json!("none")),
        (
            json!({"type": "tool", "name": "f"}),
            json!({"type": "function", "function": {"name": "f"}}),
        ),
    ] {
        let req = json!({"model": "m", "messages": [], "tool_choice": choice, "tools": [{"name": "f", "input_schema": {}}]});
        assert_eq!(chat(req).body["tool_choice"], want);
    }
    // No tools left: no tool_choice either.
    let req = json!({"model": "m", "messages": [], "tool_choice": {"type": "auto"}});
    assert!(chat(req).body.get("tool_choice").is_none());
}

#[test]
fn what_a_chat_target_cannot_do_is_refused_with_the_parameter_named() {
    let base = |extra: Value| {
        let mut req =
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in extra.as_object().unwrap() {
            req[k] = v.clone();
        }
        req
    };
    let cases = [
        (
            json!({"mcp_servers": [{"type": "url", "url": "https://mcp"}]}),
            "mcp_servers",
        ),
        (
            json!({"tools": [{"type": "web_search_20250305", "name": "web_search"}], "tool_choice": {"type": "tool", "name": "web_search"}}),
            "tool_choice",
        ),
        (
            json!({"messages": [{"role": "tool", "content": "x"}]}),
            "messages.0.role",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "mystery"}]}]}),
            "messages.0.content",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]}),
            "messages.0.content",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "url", "url": "https://a.pdf"}}]}]}),
            "messages.0.content",
        ),
        (json!({"system": [{"type": "image"}]}), "system"),
        (json!({"messages": "hi"}), "messages"),
    ];
    for (extra, param) in cases {
        let e = refused(base(extra.clone()));
        assert_eq!(e.param.as_deref(), Some(param), "{extra}: {}", e.message);
    }
    assert_eq!(
        to_chat(b"[1]", ChatOptions::default())
            .unwrap_err()
            .param
            .as_deref(),
        Some("body")
    );
}

#[test]
fn a_chat_answer_becomes_a_message() {
    let answer = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-x",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "Running it.",
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "Bash", "arguments": "{\"command\":\"ls\"}"}}],
        }}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107, "prompt_tokens_details": {"cached_tokens": 60}},
    });
    assert_eq!(
        from_chat(&answer, "claude-sonnet-4-5").unwrap(),
        json!({
            "id": "msg_chatcmpl-1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
            "content": [
                {"type": "text", "text": "Running it."},
                {"type": "tool_use", "id": "call_1", "name": "Bash", "input": {"command": "ls"}},
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 40, "output_tokens": 7, "cache_read_input_tokens": 60, "cache_creation_input_tokens": 0},
        })
    );
    for (finish, called, want) in [
        (Some("stop"), false, "end_turn"),
        (None, false, "end_turn"),
        (Some("length"), false, "max_tokens"),
        (Some("content_filter"), false, "refusal"),
        // Some servers say `stop` though they called a tool: the call decides.
        (Some("stop"), true, "tool_use"),
    ] {
        assert_eq!(stop_reason(finish, called), want);
    }
    let bad_args = json!({"choices": [{"finish_reason": "tool_calls", "message": {"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "not json"}}]}}]});
    assert_eq!(
        from_chat(&bad_args, "m").unwrap()["content"][0]["input"],
        json!({"arguments": "not json"})
    );
    assert!(from_chat(&json!({"error": {"message": "x"}}), "m").is_err());
}

#[test]
fn errors_take_anthropics_shape_and_statuses() {
    let openai = br#"{"error":{"message":"no key has room","type":"rate_limit_error","param":null,"code":"no_key"}}"#;
    for (gateway, client, kind) in [
        (400, 400, "invalid_request_error"),
        (401, 401, "authentication_error"),
        (402, 402, "billing_error"),
        (403, 403, "permission_error"),
        (404, 404, "not_found_error"),
        (413, 413, "request_too_large"),
        (429, 429, "rate_limit_error"),
        (500, 500, "api_error"),
        (502, 529, "overloaded_error"),
        (503, 529, "overloaded_error"),
        (504, 504, "timeout_error"),
        (422, 422, "invalid_request_error"),
    ] {
        assert_eq!(status(gateway), client);
        let body: Value = serde_json::from_slice(&error_body(client, openai)).unwrap();
        assert_eq!(
            body,
            json!({"type": "error", "error": {"type": kind, "message": "no key has room"}}),
            "{gateway}"
        );
    }
    // An Anthropic error stays as it is; a body that is no envelope becomes the message.
    let anthropic =
        br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    assert_eq!(error_body(529, anthropic), anthropic.to_vec());
    let body: Value = serde_json::from_slice(&error_body(502, b"bad gateway\n")).unwrap();
    assert_eq!(body["error"]["message"], "bad gateway");
}

/// Parses Anthropic SSE bytes into (event name, data) pairs, checking each event's framing.
fn events(bytes: &[u8]) -> Vec<(String, Value)> {
    let text = std::str::from_utf8(bytes).expect("utf-8");
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (name, data) = e.split_once('\n').expect("two lines");
            let name = name.strip_prefix("event: ").expect("event line").to_owned();
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").expect("data line"))
                .expect("json");
            assert_eq!(data["type"], name.as_str(), "the data names its event");
            (name, data)
        })
        .collect()
}

fn sse(chunks: &[Value]) -> String {
    let mut out: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
    out.push_str("data: [DONE]\n\n");
    out
}

#[test]
fn a_chat_stream_with_text_and_a_tool_call_becomes_messages_events() {
    let chunks = [
        json!({"id": "c1", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
        json!({"id": "c1", "choices": [{"index": 0, "delta": {"content": "Hi"}}]}),
        json!({"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "Bash", "arguments": ""}}]}}]}),
        json!({"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"command\":"}}]}}]}),
        json!({"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "\"ls\"}"}}]}}]}),
        json!({"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
        json!({"id": "c1", "choices": [], "usage": {"prompt_tokens": 50, "completion_tokens": 9, "prompt_tokens_details": {"cached_tokens": 10}}}),
    ];
    let mut w = ChatToMessages::new("claude-sonnet-4-5", 48);
    let mut out = Vec::new();
    w.push(sse(&chunks).as_bytes(), &mut out);
    let got: Vec<Value> = events(&out).into_iter().map(|(_, d)| d).collect();
    assert_eq!(
        got,
        vec![
            json!({"type": "message_start", "message": {"id": "msg_c1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 48, "output_tokens": 0}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "call_1", "name": "Bash", "input": {}}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"command\":"}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "\"ls\"}"}}),
            json!({"type": "content_block_stop", "index": 1}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"input_tokens": 40, "output_tokens": 9, "cache_read_input_tokens": 10, "cache_creation_input_tokens": 0}}),
            json!({"type": "message_stop"}),
        ]
    );
}

#[test]
fn an_upstream_failure_after_the_first_output_is_an_error_event_and_the_end() {
    for failure in [
        "data: {\"error\":{\"message\":\"boom\",\"type\":\"server_error\"}}\n\n",
        "data: not json\n\n",
    ] {
        let mut w = ChatToMessages::new("m", 1);
        let mut out = Vec::new();
        let text = json!({"id": "c", "choices": [{"index": 0, "delta": {"content": "par"}}]});
        w.push(
            format!("data: {text}\n\n{failure}data: {text}\n\ndata: [DONE]\n\n").as_bytes(),
            &mut out,
        );
        let got = events(&out);
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "error"
            ]
        );
        assert_eq!(got[3].1["error"]["type"], "api_error");
    }
    // Arguments for a call already closed cannot be written: an error, never a wrong block.
    let mut w = ChatToMessages::new("m", 1);
    let mut out = Vec::new();
    let call = |i: u64, name: Option<&str>, args: &str| json!({"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": i, "id": name.map(|n| format!("call_{n}")), "function": {"name": name, "arguments": args}}]}}]});
    w.push(
        sse(&[
            call(0, Some("a"), "{"),
            call(1, Some("b"), "{}"),
            call(0, None, "}"),
        ])
        .as_bytes(),
        &mut out,
    );
    assert_eq!(events(&out).last().unwrap().0, "error");
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// A chat chunk of any shape the writer reads: text, refusals, tool calls in any order,
    /// finish reasons, usage.
    fn chunk() -> impl Strategy<Value = Value> {
        let text = prop::option::of("[a-z \"\\\\]{0,6}");
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
        (text, prop::collection::vec(call, 0..3), finish, any::<bool>()).prop_map(
            |(text, calls, finish, usage)| {
                let calls: Vec<Value> = calls
                    .into_iter()
                    .map(|(i, name, args)| json!({"index": i, "id": name.as_ref().map(|n| format!("call_{n}")), "function": {"name": name, "arguments": args}}))
                    .collect();
                let mut chunk = json!({"id": "c", "choices": [{"index": 0, "delta": {"content": text, "tool_calls": calls}, "finish_reason": finish}]});
                if usage {
                    chunk["usage"] = json!({"prompt_tokens": 3, "completion_tokens": 2});
                }
                chunk
            },
        )
    }

    /// Checks Anthropic's event grammar: one `message_start` first; blocks opened with the
    /// next index, deltas only to the open block of their kind, each closed once; then one
    /// `message_delta` with a stop reason and one `message_stop` last, or an `error` last.
    fn check_grammar(events: &[(String, Value)]) -> Result<(), TestCaseError> {
        prop_assert!(!events.is_empty());
        prop_assert_eq!(events[0].0.as_str(), "message_start");
        let mut next = 0u64;
        let mut open: Option<(u64, String)> = None;
        let mut tool_used = false;
        for (i, (name, data)) in events.iter().enumerate().skip(1) {
            let last = i == events.len() - 1;
            match name.as_str() {
                "content_block_start" => {
                    prop_assert!(open.is_none(), "a block opened inside another");
                    prop_assert_eq!(&data["index"], &json!(next));
                    let kind = data["content_block"]["type"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    tool_used |= kind == "tool_use";
                    open = Some((next, kind));
                    next += 1;
                }
                "content_block_delta" => {
                    let Some((index, kind)) = &open else {
                        return Err(TestCaseError::fail("a delta outside a block"));
                    };
                    prop_assert_eq!(&data["index"], &json!(index));
                    let want = if kind == "text" {
                        "text_delta"
                    } else {
                        "input_json_delta"
                    };
                    prop_assert_eq!(data["delta"]["type"].as_str(), Some(want));
                }
                "content_block_stop" => {
                    let Some((index, _)) = open.take() else {
                        return Err(TestCaseError::fail("a stop outside a block"));
                    };
                    prop_assert_eq!(&data["index"], &json!(index));
                }
                "message_delta" => {
                    prop_assert!(open.is_none(), "message_delta with a block open");
                    prop_assert_eq!(events.len() - 2, i, "message_delta is second to last");
                    let reason = data["delta"]["stop_reason"].as_str().unwrap_or_default();
                    prop_assert!(
                        ["end_turn", "tool_use", "max_tokens", "refusal"].contains(&reason)
                    );
                    if tool_used && !["max_tokens", "refusal"].contains(&reason) {
                        prop_assert_eq!(reason, "tool_use");
                    }
                    prop_assert!(data["usage"]["output_tokens"].is_u64());
                }
                "message_stop" => prop_assert!(last, "message_stop is last"),
                "error" => prop_assert!(last, "error is last"),
                other => return Err(TestCaseError::fail(format!("unexpected {other}"))),
            }
        }
        let end = events.last().map(|(n, _)| n.as_str());
        prop_assert!(matches!(end, Some("message_stop" | "error")));
        Ok(())
    }

    proptest! {
        #![proptest_config(crate::sse::fuzz::config(256))]

        /// Any chat stream, cut anywhere: a valid Anthropic event sequence, the same events
        /// whatever the cuts, every text and argument fragment carried in order.
        #[test]
        fn any_chat_stream_at_any_chunking_writes_valid_messages_events(
            chunks in prop::collection::vec(chunk(), 1..8),
            cuts in prop::collection::vec(1usize..40, 0..30),
        ) {
            let input = sse(&chunks);
            let mut whole = Vec::new();
            ChatToMessages::new("m", 7).push(input.as_bytes(), &mut whole);
            let parsed = events(&whole);
            check_grammar(&parsed)?;
            let mut cut = Vec::new();
            let mut w = ChatToMessages::new("m", 7);
            let mut rest = input.as_bytes();
            for n in cuts.iter().cycle().take(200) {
                if rest.is_empty() {
                    break;
                }
                let (head, tail) = rest.split_at((*n).min(rest.len()));
                w.push(head, &mut cut);
                rest = tail;
            }
            w.push(rest, &mut cut);
            prop_assert_eq!(&cut, &whole, "the same events at any chunking");
            if parsed.last().map(|(n, _)| n.as_str()) == Some("message_stop") {
                let text: String = chunks
                    .iter()
                    .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
                    .collect();
                let written: String = parsed
                    .iter()
                    .filter_map(|(_, d)| d["delta"]["text"].as_str())
                    .collect();
                prop_assert_eq!(written, text);
            }
        }
    }
}
