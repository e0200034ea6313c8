use super::*;
use crate::ownership::{references, REFERENCES};
use crate::sse::fuzz::config;
use proptest::prelude::*;
use serde_json::{json, Value};

/// What serde_json reads of `body`.
fn serde(body: &[u8]) -> Option<Fields<'_>> {
    serde_json::from_slice(body).ok()
}

fn skim(body: &[u8]) -> Option<(Fields<'_>, bool)> {
    read(body, &REFERENCES, None).map(|(fields, named, _)| (fields, named))
}

#[test]
fn a_coding_agent_turn_is_read_as_serde_reads_it() {
    let code = "fn main() {\n\tlet s = \"a \\\"quoted\\\" word\";\n\tprintln!(\"{s}\\n\");\n}\n";
    let body = json!({
        "model": "gpt-5",
        "stream": true,
        "stream_options": {"include_usage": true},
        "prompt_cache_key": "sess-1",
        "messages": [
            {"role": "system", "content": format!("You are an agent.\n{}", "Rules:\n- be terse\n".repeat(50))},
            {"role": "user", "name": "ann", "content": [{"type": "text", "text": code}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "shell", "arguments": "{\"cmd\":[\"ls\",\"-la\"]}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "total 0\r\n\u{e9}\u{1F600} \\ / \u{7f}"},
        ],
        "tools": [{"type": "function", "function": {"name": "shell", "parameters": {"type": "object", "properties": {"cmd": {"type": "array", "items": {"type": "string"}}}, "required": ["cmd"]}}}],
        "temperature": -0.5e-3,
        "n": 0,
        "max_tokens": 16,
        "logit_bias": {},
        "stop": [],
        "user": null,
    })
    .to_string();
    let (fields, named) = skim(body.as_bytes()).expect("skimmed");
    assert_eq!(Some(&fields), serde(body.as_bytes()).as_ref());
    assert!(!named, "`tool_call_id` is not a stored object's field");
    assert_eq!(fields.messages.len(), 4);
    assert_eq!(fields.max_tokens, Some(16));
    assert_eq!(fields.user, None);
    // Whitespace around every token is JSON too.
    let spaced = " {\n \"model\" : \"m\" ,\t\"messages\" : [ { \"content\" : \"hi\" } , {} ] , \"max_tokens\" : null }\r\n";
    let (fields, _) = skim(spaced.as_bytes()).expect("skimmed");
    assert_eq!(Some(&fields), serde(spaced.as_bytes()).as_ref());
}

#[test]
fn leaves_to_serde_what_it_is_not_sure_of() {
    for body in [
        // Not JSON, or JSON serde refuses.
        "",
        "{",
        r#"{"model":"m",}"#,
        r#"{"model":"m"} x"#,
        "{\"model\":\"a\u{1}b\"}",
        "{\"model\":\"a long string with a \u{1f} control character past eight bytes\"}",
        r#"{"model":"a long string with an escape \q past eight bytes"}"#,
        r#"{"model":"a long string with no end past eight bytes}"#,
        "{\"model\":\"a\nb\"}",
        r#"{"model":"a\xb"}"#,
        r#"{"model":"a\u12G4"}"#,
        r#"{"model":"a\"}"#,
        r#"{"n":01}"#,
        r#"{"n":-}"#,
        r#"{"n":1.}"#,
        r#"{"n":1e}"#,
        r#"{"n":tru}"#,
        r#"{"n":[1,]}"#,
        r#"{"n":{"a":1,}}"#,
        // JSON the fields' reading refuses, or reads in a way the skim does not.
        r#"{"model":"a","model":"b"}"#,
        r#"{"messages":[{"content":"a","content":"b"}]}"#,
        r#"{"stream":"yes"}"#,
        r#"{"max_tokens":1.5}"#,
        r#"{"max_tokens":-1}"#,
        r#"{"messages":null}"#,
        r#"{"messages":[["hi"]]}"#,
        r#"{"mod\u0065l":"m"}"#,
        r#"["m"]"#,
    ] {
        assert!(skim(body.as_bytes()).is_none(), "{body}");
    }
    let deep = format!("{{\"a\":{}{}}}", "[".repeat(DEPTH), "]".repeat(DEPTH));
    assert!(skim(deep.as_bytes()).is_none());
    let deepest = format!(
        "{{\"a\":{}{}}}",
        "[".repeat(DEPTH - 1),
        "]".repeat(DEPTH - 1)
    );
    assert!(
        skim(deepest.as_bytes()).is_some(),
        "nesting up to DEPTH is read"
    );
    let objects = |n| format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n));
    assert!(skim(objects(DEPTH).as_bytes()).is_some());
    assert!(skim(objects(DEPTH + 1).as_bytes()).is_none());
    assert!(skim(b"{\"model\":\"\xff\"}").is_none(), "not UTF-8");
}

#[test]
fn a_watched_name_is_found_at_any_depth_and_only_as_a_name() {
    let named = |body: Value| skim(body.to_string().as_bytes()).expect("skimmed").1;
    assert!(named(
        json!({"input": [{"x": {"previous_response_id": "resp_1"}}]})
    ));
    assert!(named(json!({"file_ids": []})));
    assert!(!named(
        json!({"input": "previous_response_id file_id \"file_id\""})
    ));
    assert!(!named(json!({"metadata": {"file": 1, "tool_call_id": 2}})));
    // A name written with escapes may spell one.
    assert!(
        skim(br#"{"input":{"file\u005fid":"f"}}"#)
            .expect("skimmed")
            .1
    );
}

/// The names request bodies are full of are passed over by their slot alone (no comparison
/// with the watched names).
#[test]
fn common_names_share_no_slot_with_a_watched_one() {
    let watched: u128 = REFERENCES
        .iter()
        .fold(0, |set, name| set | 1 << slot(name.as_bytes()));
    let common = "role content type name function arguments id tool_calls tool_call_id \
        description parameters properties required items text call_id output command workdir \
        messages model input tools strict enum default image_url detail cache_control system \
        max_tokens stream temperature metadata additionalProperties summary encrypted_content \
        reasoning status annotations logprobs index delta finish_reason usage object created \
        choices message tool_choice parallel_tool_calls include store instructions top_p user \
        prompt_cache_key input_schema tool_use_id is_error source media_type data thinking \
        signature";
    for name in common.split_whitespace() {
        assert_eq!(watched >> slot(name.as_bytes()) & 1, 0, "{name}");
    }
}

/// Any JSON value, with member names the fields' reading and the ownership layer look for.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        "[a-z\"\\\\/\n\t\u{1}\u{e9} ]{0,12}".prop_map(Value::from),
    ];
    let names = prop_oneof![
        prop::sample::select(vec![
            "model",
            "stream",
            "stream_options",
            "include_usage",
            "messages",
            "content",
            "name",
            "tool_calls",
            "tools",
            "input",
            "max_tokens",
            "user",
            "store",
            "metadata",
        ]),
        prop::sample::select(REFERENCES.to_vec()),
        Just("x"),
    ];
    leaf.prop_recursive(5, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((names.clone(), inner), 0..6).prop_map(|members| Value::Object(
                members
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect()
            )),
        ]
    })
}

/// A body: an object of fields, written out, then perhaps broken at one place.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let object = prop::collection::vec(
        (
            prop::sample::select(vec![
                "model",
                "stream",
                "stream_options",
                "messages",
                "tools",
                "input",
                "prompt",
                "instructions",
                "system",
                "metadata",
                "max_tokens",
                "max_completion_tokens",
                "max_output_tokens",
                "prompt_cache_key",
                "user",
                "previous_response_id",
                "store",
                "file_id",
                "other",
            ]),
            prop_oneof![
                value(),
                prop::collection::vec(value(), 0..4).prop_map(Value::Array),
                (0u64..100).prop_map(Value::from),
            ],
        ),
        0..8,
    );
    let edit = prop::option::of((
        any::<prop::sample::Index>(),
        prop::sample::select(vec![
            &b""[..],
            b"\"",
            b"\\",
            b",",
            b"}",
            b"]",
            b"\x01",
            b" ",
            b"0",
            b"\"model\":1,",
            b"\\u00",
        ]),
    ));
    (object, edit).prop_map(|(members, edit)| {
        // Members written one by one: a name may come twice.
        let members: Vec<String> = members
            .into_iter()
            .map(|(k, v)| format!("{}:{v}", Value::from(k)))
            .collect();
        let mut body = format!("{{{}}}", members.join(",")).into_bytes();
        if let Some((at, bytes)) = edit {
            let at = at.index(body.len());
            body.splice(at..at, bytes.iter().copied());
        }
        body
    })
}

proptest! {
    #![proptest_config(config(512))]

    /// What the skim reads is what serde_json reads, and a body it finds no watched name in
    /// names no stored object.
    #[test]
    fn the_skim_reads_what_serde_reads(body in body()) {
        if let Some((fields, named)) = skim(&body) {
            prop_assert_eq!(Some(fields), serde(&body));
            if !named {
                prop_assert!(references(&body).is_empty());
            }
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Whitespace wherever JSON allows it reads as the compact text does.
    #[test]
    fn a_pretty_body_reads_as_the_compact_one(metadata in value(), tools in value()) {
        let body = json!({"model": "m", "metadata": metadata, "tools": tools});
        let pretty = serde_json::to_vec_pretty(&body).expect("writes");
        prop_assert_eq!(skim(&pretty).map(|(fields, _)| fields), serde(&pretty));
        prop_assert!(skim(&pretty).is_some());
    }

    /// Every body serde_json reads is skimmed too, but for what the skim leaves to it on
    /// purpose (a member named twice, a message written as an array).
    #[test]
    fn the_skim_leaves_little_to_serde(
        members in prop::collection::btree_map(
            prop::sample::select(vec!["model", "stream", "messages", "tools", "input", "user", "x"]),
            value(),
            0..6,
        )
    ) {
        let body = Value::Object(members.into_iter().map(|(k, v)| (k.to_owned(), v)).collect());
        let arrays = body["messages"].as_array().is_some_and(|m| m.iter().any(Value::is_array));
        let bytes = body.to_string().into_bytes();
        if serde(&bytes).is_some() && !arrays {
            prop_assert!(skim(&bytes).is_some(), "{}", body);
        }
    }
}

/// Whether a byte ends a string's plain run, by definition.
fn is_special(b: u8) -> bool {
    b == b'"' || b == b'\\' || b < 0x20
}

proptest! {
    #![proptest_config(config(2048))]

    /// Both ways of masking a block mark exactly the quotes, backslashes and control
    /// characters.
    #[test]
    fn a_block_mask_marks_exactly_the_special_bytes(block in prop::array::uniform16(
        prop::sample::select(vec![b'"', b'\\', 0, 0x1f, 0x20, b'\n', b'a', 0x7f, 0x80, 0xe9, 0xff, b'"' ^ 0x80, b'\\' ^ 0x80])
    )) {
        let naive = (0..16).fold(0u32, |m, i| m | u32::from(is_special(block[i])) << i);
        prop_assert_eq!(block_mask(&block), naive);
        prop_assert_eq!(block_mask_words(&block), naive);
    }

    /// A 64-byte mask marks exactly the special bytes, with a control character in it or not.
    #[test]
    fn a_wide_mask_marks_exactly_the_special_bytes(
        bytes in prop::collection::vec(prop::sample::select(vec![b'"', b'\\', b'a', b' ', 0x7f, 0x80, 0xe9, 0xff]), 64),
        control in prop::option::of((0usize..64, 0u8..0x20)),
    ) {
        let mut block = [0u8; 64];
        block.copy_from_slice(&bytes);
        if let Some((at, byte)) = control {
            block[at] = byte;
        }
        let naive = (0..64).fold(0u64, |m, i| m | u64::from(is_special(block[i])) << i);
        prop_assert_eq!(wide_block_mask(&block), naive);
        prop_assert_eq!(generic_wide_block_mask(&block), naive);
    }

    /// The special bytes are found in order from any place, as a byte-by-byte search finds
    /// them, whatever is passed over after each (an escape's length) and wherever the blocks
    /// end.
    #[test]
    fn the_special_bytes_are_found_in_order(
        bytes in prop::collection::vec(prop::sample::select(vec![b'"', b'\\', b'\n', b'a', b'a', b'a', 0xe9]), 0..200),
        start in 0usize..210,
        skips in prop::collection::vec(0usize..14, 0..40),
    ) {
        let mut specials = Specials::new(&bytes, start);
        let mut from = start;
        let mut skips = skips.into_iter();
        loop {
            let naive = (from..bytes.len()).find(|&i| is_special(bytes[i]));
            let found = specials.next();
            prop_assert_eq!(found, naive);
            let (Some(at), Some(skip)) = (found, skips.next()) else { break };
            from = (at + 1 + skip).min(bytes.len());
            specials.pass(from);
        }
    }
}

#[test]
fn a_strings_unescaped_length_is_read_with_its_end() {
    for (text, len) in [
        (r#""plain""#, Some(5)),
        (r#""a\nb\"c\\""#, Some(6)),
        (r#""caf\u00e9 \u20ac \u0041""#, Some(11)),
        (r#""smile \ud83d\ude00""#, Some(10)),
        (r#""lone \ud800 half""#, None),
        (r#""low \udc00""#, None),
        (r#""\ud800\u0041""#, None),
        (r#""\x""#, None),
        (r#""no end"#, None),
    ] {
        let mut skim = Skim::new(text, &[], None);
        assert_eq!(skim.string_len(), len.map(Some), "{text}");
        if let Some(len) = len {
            assert_eq!(skim.at, text.len());
            let read: String = serde_json::from_str(text).expect("a JSON string");
            assert_eq!(read.len(), len, "{text}");
        }
    }
}

/// What serde_json reads of a usage object at the start of `text` (nothing after it read).
fn serde_usage(text: &[u8]) -> Option<openai_types::Usage> {
    let mut de = serde_json::Deserializer::from_slice(text);
    <openai_types::Usage as serde::Deserialize>::deserialize(&mut de).ok()
}

#[test]
fn usage_objects_as_providers_write_them_are_skimmed_as_serde_reads_them() {
    for text in [
        // Chat Completions, then the Responses API, then spaced out, then with the rest of
        // the body after it.
        r#"{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}"#,
        r#"{"input_tokens":328,"input_tokens_details":{"cached_tokens":128},"output_tokens":52,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":380}"#,
        " {\n  \"prompt_tokens\" : 0 ,\t\"total_tokens\": 18446744073709551615, \"prompt_tokens_details\" : null }",
        r#"{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}, "system_fingerprint": "fp_1"}"#,
        r#"{}"#,
    ] {
        let skimmed = usage(text.as_bytes());
        assert!(skimmed.is_some(), "{text}");
        assert_eq!(skimmed, serde_usage(text.as_bytes()), "{text}");
    }
    let responses = usage(br#"{"input_tokens":328,"input_tokens_details":{"cached_tokens":128},"output_tokens":52,"total_tokens":380}"#);
    let responses = responses.expect("skimmed");
    assert_eq!(
        (
            responses.prompt_tokens,
            responses.completion_tokens,
            responses.cached_tokens()
        ),
        (328, 52, 128)
    );
}

#[test]
fn usage_the_skim_is_not_sure_of_is_left_to_serde() {
    for text in [
        // What serde_json refuses, or reads in a way the skim does not try.
        r#"{"prompt_tokens":null}"#,
        r#"{"prompt_tokens":-0}"#,
        r#"{"prompt_tokens":1.0}"#,
        r#"{"prompt_tokens":1e3}"#,
        r#"{"prompt_tokens":01}"#,
        r#"{"prompt_tokens":18446744073709551616}"#,
        r#"{"prompt_tokens":"5"}"#,
        r#"{"prompt_tokens":1,"input_tokens":2}"#,
        r#"{"prompt_tokens_details":{"cached_tokens":1,"cached_tokens":2}}"#,
        r#"{"prompt_tokens_details":[]}"#,
        r#"{"prompt_\u0074okens":1}"#,
        r#"{"prompt_tokens":1"#,
        "null",
    ] {
        assert_eq!(usage(text.as_bytes()), None, "{text}");
    }
    // Not UTF-8 after the object: serde_json never reads that far, the skim checks it all.
    assert_eq!(usage(b"{\"prompt_tokens\":1} \xff"), None);
}

/// A usage object's member names: the fields, their aliases, neighbours and others.
fn usage_names() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "prompt_tokens",
            "input_tokens",
            "completion_tokens",
            "output_tokens",
            "total_tokens",
            "prompt_tokens_details",
            "input_tokens_details",
            "completion_tokens_details",
            "cached_tokens",
            "reasoning_tokens",
        ])
        .prop_map(str::to_owned),
        "[a-z_\\\\\"]{0,6}".prop_map(|s| s.replace('\\', "\\\\").replace('"', "\\\"")),
    ]
}

/// A usage-like member value, written as JSON text.
fn usage_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        (0u64..1000).prop_map(|n| n.to_string()),
        Just("18446744073709551616".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
        Just("0.5".to_owned()),
        Just("1e2".to_owned()),
        Just("-0".to_owned()),
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("\"7\"".to_owned()),
        Just("[]".to_owned()),
    ];
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop::collection::vec((usage_names(), inner), 0..4).prop_map(|members| {
            let members: Vec<String> = members
                .iter()
                .map(|(k, v)| format!("\"{k}\":{v}"))
                .collect();
            format!("{{{}}}", members.join(","))
        })
    })
}

proptest! {
    #![proptest_config(config(1024))]

    /// What the skim reads of a usage object is what serde_json reads; what it leaves is
    /// left whole.
    #[test]
    fn the_usage_skim_reads_what_serde_reads(
        members in prop::collection::vec((usage_names(), usage_value()), 0..7),
        space in prop::sample::select(vec!["", " ", "\n\t "]),
        after in prop::sample::select(vec![&b""[..], b",\"id\":\"x\"}", b"\xff"]),
    ) {
        let members: Vec<String> = members
            .iter()
            .map(|(k, v)| format!("{space}\"{k}\"{space}:{space}{v}{space}"))
            .collect();
        let mut text = format!("{space}{{{}}}", members.join(",")).into_bytes();
        text.extend_from_slice(after);
        if let Some(skimmed) = usage(&text) {
            prop_assert_eq!(Some(skimmed), serde_usage(&text), "{}", String::from_utf8_lossy(&text));
        }
    }
}

/// An event's usage fields as serde_json reads them (the usage tap's reading when the skim
/// leaves the event).
fn serde_event(text: &[u8]) -> Option<EventUsage> {
    serde_json::from_slice::<crate::usage::ChunkRead>(text)
        .ok()
        .map(EventUsage::from)
}

#[test]
fn stream_events_are_skimmed_as_serde_reads_them() {
    for text in [
        r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":20,"total_tokens":29}}"#,
        r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"hi \"there\""},"finish_reason":null}],"usage":null}"#,
        r#"{"type":"response.completed","sequence_number":9,"response":{"id":"resp_1","output":[{"type":"message","content":[{"type":"output_text","text":"a\nb","annotations":[]}]}],"usage":{"input_tokens":5,"input_tokens_details":{"cached_tokens":0},"output_tokens":2,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":7}}}"#,
        r#"{"type":"message_start","message":{"id":"msg_1","role":"assistant","content":[],"usage":{"input_tokens":25,"output_tokens":1}}}"#,
        r#"{"type":"response.created","response":{"id":"resp_1","usage":null}}"#,
        " {\"choices\" : [ ] } \n",
    ] {
        let skimmed = event_usage(text.as_bytes());
        assert!(skimmed.is_some(), "{text}");
        assert_eq!(skimmed, serde_event(text.as_bytes()), "{text}");
    }
    for text in [
        // Trailing text, a field twice, a field of another type, not JSON.
        r#"{"usage":null} x"#,
        r#"{"usage":null,"usage":null}"#,
        r#"{"choices":{}}"#,
        r#"{"response":[]}"#,
        "[DONE]",
    ] {
        assert_eq!(event_usage(text.as_bytes()), None, "{text}");
    }
}

/// A stream event's member value: usage objects, their holders, lists and leaves.
fn event_value() -> impl Strategy<Value = String> {
    prop_oneof![
        usage_value(),
        (prop::collection::vec(usage_value(), 0..3)).prop_map(|v| format!("[{}]", v.join(","))),
        usage_value().prop_map(|u| format!("{{\"id\":\"x\",\"usage\":{u}}}")),
        Just("\"text with \\\"quotes\\\" and \\u00e9\"".to_owned()),
    ]
}

proptest! {
    #![proptest_config(config(1024))]

    /// What the skim reads of a stream event is what serde_json reads into the usage tap's
    /// fields.
    #[test]
    fn the_event_skim_reads_what_serde_reads(
        members in prop::collection::vec(
            (
                prop::sample::select(vec!["usage", "response", "message", "choices", "type", "u\\u0073age"]),
                event_value(),
            ),
            0..5,
        ),
        after in prop::sample::select(vec!["", " \n", " x"]),
    ) {
        let members: Vec<String> = members.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        let text = format!("{{{}}}{after}", members.join(","));
        if let Some(skimmed) = event_usage(text.as_bytes()) {
            prop_assert_eq!(Some(skimmed), serde_event(text.as_bytes()), "{}", text);
        }
    }
}
