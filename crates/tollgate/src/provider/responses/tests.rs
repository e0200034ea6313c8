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

    proptest! {
        #![proptest_config(crate::sse::fuzz::config(256))]

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
