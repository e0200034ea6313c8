//! Property tests over hostile request bodies (issue 21's fuzz target for the token
//! estimate): any body, for any endpoint, is charged a count that cannot overflow (linear in
//! its size, the total at most [`MAX_TOKENS`]), or refused for an allowance beyond it.

use super::*;
use crate::body::Fields as Body;
use crate::sse::fuzz::config;
use proptest::prelude::*;
use serde_json::{json, Value};

fn endpoint() -> impl Strategy<Value = Endpoint> {
    prop::sample::select(Endpoint::ALL.to_vec())
}

/// Allowances as a hostile client writes them: at and past every edge, and not numbers.
fn allowance_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => (0u64..100_000).prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        1 => prop::sample::select(vec![
            json!(MAX_TOKENS),
            json!(MAX_TOKENS + 1),
            json!(u64::MAX),
            json!(i64::MAX),
            json!(-1),
            json!(1.5),
            json!(1e300),
            json!("100"),
            Value::Null,
            json!([]),
        ]),
    ]
}

/// A content value: text, parts (text and images of each detail), or something else.
fn content() -> impl Strategy<Value = Value> {
    let part = prop_oneof![
        "\\PC{0,40}".prop_map(|t| json!({"type": "text", "text": t})),
        Just(
            json!({"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}})
        ),
        Just(json!({"type": "image_url"})),
        Just(json!({"type": "input_image"})),
        Just(json!({"type": "input_text", "text": 5})),
        Just(json!({"type": ["image_url"]})),
        Just(json!(7)),
        Just(Value::Null),
    ];
    prop_oneof![
        "\\PC{0,60}".prop_map(Value::from),
        prop::collection::vec(part, 0..8).prop_map(Value::Array),
        Just(json!({"text": "x"})),
        Just(Value::Null),
        Just(json!(12)),
    ]
}

fn message() -> impl Strategy<Value = Value> {
    (content(), any::<bool>(), prop::option::of("\\PC{0,30}")).prop_map(
        |(content, named, calls)| {
            let mut m = json!({"role": "user", "content": content});
            if named {
                m["name"] = json!("ann");
            }
            if let Some(calls) = calls {
                m["tool_calls"] =
                    json!([{"id": "c", "function": {"name": "f", "arguments": calls}}]);
            }
            m
        },
    )
}

/// A request body of any shape the estimate reads, with any of its fields out of place.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let input = prop_oneof![
        "\\PC{0,60}".prop_map(Value::from),
        prop::collection::vec(
            prop_oneof![
                content().prop_map(|c| json!({"type": "message", "content": c})),
                "\\PC{0,30}".prop_map(|o| json!({"type": "function_call_output", "output": o})),
                Just(json!({"content": {"nested": [1, 2]}})),
                Just(json!(3)),
            ],
            0..6
        )
        .prop_map(Value::Array),
        Just(json!({"a": 1})),
    ];
    let messages = prop_oneof![
        4 => prop::collection::vec(message(), 0..6).prop_map(Value::Array),
        1 => Just(json!("not a list")),
        1 => Just(json!([1, "x"])),
    ];
    let fields = (
        prop::option::of(messages),
        prop::option::of(input),
        prop::option::of("\\PC{0,40}".prop_map(Value::from)),
        prop::option::of(content()),
        prop::option::of(allowance_value()),
        prop::option::of(allowance_value()),
        prop::option::of(allowance_value()),
        any::<bool>(),
    );
    let shaped = fields.prop_map(|(messages, input, instructions, prompt, a, b, c, dup)| {
        let mut body = serde_json::Map::new();
        body.insert("model".into(), json!("m"));
        let named = [
            ("messages", messages),
            ("input", input),
            ("instructions", instructions),
            ("prompt", prompt),
            ("max_tokens", a),
            ("max_completion_tokens", b),
            ("max_output_tokens", c),
        ];
        for (name, value) in named {
            if let Some(value) = value {
                body.insert(name.into(), value);
            }
        }
        let mut text = Value::Object(body).to_string();
        if dup {
            // A field named twice: the strict parse fails, the lenient one reads it.
            text.insert_str(1, "\"max_tokens\":1,\"max_tokens\":2,");
        }
        text.into_bytes()
    });
    prop_oneof![
        6 => shaped,
        1 => prop::collection::vec(any::<u8>(), 0..128),
        1 => "\\{\"messages\":\\[\\{\"content\":\\[\\{\"type\":\"image_url\"\\}(,\\{\"type\":\"image_url\"\\}){0,64}\\]\\}\\]\\}"
            .prop_map(String::into_bytes),
    ]
}

proptest! {
    #![proptest_config(config(2048))]

    /// Any body, for any endpoint and default: a prompt estimate linear in the body's size
    /// (so no body that fits in memory can overflow it), the allowance the body names (else the
    /// default, for endpoints that generate), and a total at most `MAX_TOKENS` or a refusal
    /// that names the field holding an allowance past it.
    #[test]
    fn any_body_is_charged_a_bounded_count_or_refused(
        body in body(),
        endpoint in endpoint(),
        default_max_tokens in any::<u32>(),
    ) {
        let (prompt, completion) = estimate(&body, endpoint, default_max_tokens);
        // The most tokens per byte: an image part of 21 bytes (`{"type":"image_url"},`) is 765.
        prop_assert!(prompt <= 40 * body.len() as u64 + 3, "{} tokens for {} bytes", prompt, body.len());
        let generates = matches!(
            endpoint,
            Endpoint::ChatCompletions
                | Endpoint::Completions
                | Endpoint::Responses
                | Endpoint::Messages
        );
        if !generates {
            prop_assert_eq!(completion, 0);
        }
        match total(&body, endpoint, default_max_tokens) {
            Ok(total) => {
                prop_assert!(total <= MAX_TOKENS);
                prop_assert_eq!(total, prompt.saturating_add(completion).min(MAX_TOKENS));
            }
            Err(Uncountable { param, value }) => {
                prop_assert!(value > MAX_TOKENS && value == completion);
                // The field it names is in the body and holds that allowance, read strictly, or
                // leniently where the strict shape refuses the body.
                let quoted = format!("\"{param}\"");
                prop_assert!(String::from_utf8_lossy(&body).contains(&quoted));
                let named = match serde_json::from_slice::<Body<'_>>(&body) {
                    Ok(b) => allowance(&b),
                    Err(_) => lenient::allowance_in(&body),
                };
                prop_assert_eq!(named, Some((param, value)));
            }
        }
    }

    /// A well-formed chat body rewritten the ways the strict shape refuses (its allowance as a
    /// float, an exponent or a string; its messages or its allowance named twice, the real one
    /// first or last) is charged at least what the well-formed body is, prompt and allowance.
    #[test]
    fn a_dodged_body_is_charged_at_least_its_well_formed_twin(
        messages in prop::collection::vec(message(), 0..6),
        extra in prop::collection::vec(message(), 0..3),
        param in prop::sample::select(vec!["max_tokens", "max_completion_tokens", "max_output_tokens"]),
        n in 0u64..1_000_000,
        other in 0u64..1_000_000,
        dodge in 0u8..6,
        default_max_tokens in any::<u32>(),
        endpoint in prop::sample::select(vec![
            Endpoint::ChatCompletions,
            Endpoint::Completions,
            Endpoint::Responses,
        ]),
    ) {
        let (list, extra) = (Value::Array(messages).to_string(), Value::Array(extra).to_string());
        let twin = format!(r#"{{"model":"m","messages":{list},"{param}":{n}}}"#);
        let dodged = match dodge {
            0 => format!(r#"{{"model":"m","messages":{list},"{param}":{n}.5}}"#),
            1 => format!(r#"{{"model":"m","messages":{list},"{param}":{n}e0}}"#),
            2 => format!(r#"{{"model":"m","messages":{list},"{param}":"{n}"}}"#),
            3 => format!(r#"{{"model":"m","messages":{extra},"messages":{list},"{param}":{n}}}"#),
            4 => format!(r#"{{"model":"m","messages":{list},"messages":{extra},"{param}":{n}}}"#),
            _ => format!(r#"{{"model":"m","messages":{list},"{param}":{other},"{param}":{n}}}"#),
        };
        prop_assert!(serde_json::from_str::<Body<'_>>(&twin).is_ok());
        prop_assert!(serde_json::from_str::<Body<'_>>(&dodged).is_err());
        let d = estimate(dodged.as_bytes(), endpoint, default_max_tokens);
        let t = estimate(twin.as_bytes(), endpoint, default_max_tokens);
        prop_assert!(d.0 >= t.0 && d.1 >= t.1, "{:?} for {}, {:?} for {}", d, dodged, t, twin);
    }
}

/// Strings as JSON text: plain, escaped, a character written `\u`, a surrogate pair, a lone
/// surrogate, a backslash written before the text of one (no escape).
const STRINGS: &[&str] = &[
    r#""hello""#,
    r#""""#,
    r#""line\none\ttab \"quoted\" back\\slash""#,
    r#""caf\u00e9 \u20ac \u0041""#,
    r#""smile \ud83d\ude00""#,
    r#""lone \ud800 half""#,
    r#""not one \\ud800""#,
    r#""fn main() {\n    println!(\"hi\");\n}\n""#,
    "\"é raw utf-8\"",
];

/// Values of other kinds, some that a JSON value reader reads otherwise than the skim.
const OTHERS: &[&str] = &[
    "null",
    "1",
    "-0.5",
    "1e5",
    "1e400",
    "true",
    r#"{"a":[1,{"b":null}]}"#,
    "[]",
];

fn json_string() -> impl Strategy<Value = String> {
    prop::sample::select(STRINGS).prop_map(str::to_owned)
}

fn any_value() -> impl Strategy<Value = String> {
    prop_oneof![
        json_string(),
        prop::sample::select(OTHERS).prop_map(str::to_owned)
    ]
}

fn object(members: impl Strategy<Value = (String, String)>) -> impl Strategy<Value = String> {
    (prop::collection::vec(members, 0..5), prop::bool::ANY).prop_map(|(members, spaced)| {
        let sep = if spaced { ", " } else { "," };
        let body: Vec<String> = members.iter().map(|(k, v)| format!("{k}:{v}")).collect();
        format!("{{{}}}", body.join(sep))
    })
}

/// A content part: text or image members (any of them twice, names and values escaped or
/// not), or not an object.
fn part() -> impl Strategy<Value = String> {
    let kind = prop::sample::select(vec![
        r#""input_text""#,
        r#""output_text""#,
        r#""image_url""#,
        r#""input_image""#,
        r#""imag\u0065_url""#,
        "1",
        "null",
    ]);
    let detail = prop::sample::select(vec![
        r#"{"detail":"low"}"#,
        r#"{"detail":"high"}"#,
        r#"{"url":"u","detail":"low","detail":"auto"}"#,
        r#"{"detail":"lo\u0077"}"#,
        r#"{"d\u0065tail":"low"}"#,
        r#""x""#,
        "null",
    ]);
    let member = prop_oneof![
        kind.prop_map(|v| (r#""type""#.to_owned(), v.to_owned())),
        any_value().prop_map(|v| (r#""text""#.to_owned(), v)),
        detail.prop_map(|v| (r#""image_url""#.to_owned(), v.to_owned())),
        any_value().prop_map(|v| (r#""extra""#.to_owned(), v)),
        json_string().prop_map(|v| (r#""t\u0065xt""#.to_owned(), v)),
    ];
    prop_oneof![4 => object(member), 1 => any_value()]
}

/// An input item: a message with content (a string, parts, another value, `null`), a call
/// without content, `content` twice or escaped, or not an object.
fn item() -> impl Strategy<Value = String> {
    let content = prop_oneof![
        2 => prop::collection::vec(part(), 0..4).prop_map(|p| format!("[{}]", p.join(","))),
        1 => any_value(),
    ];
    let member = prop_oneof![
        3 => content.prop_map(|v| (r#""content""#.to_owned(), v)),
        1 => json_string().prop_map(|v| (r#""role""#.to_owned(), v)),
        1 => any_value().prop_map(|v| (r#""arguments""#.to_owned(), v)),
        1 => json_string().prop_map(|v| (r#""c\u006fntent""#.to_owned(), v)),
    ];
    prop_oneof![6 => object(member), 1 => any_value()]
}

proptest! {
    #![proptest_config(config(2048))]

    /// Whenever the one-pass count of a Responses `input` answers, it is serde_json's count.
    #[test]
    fn the_one_pass_input_count_is_the_parsed_one(
        items in prop::collection::vec(item(), 0..6),
        spaced in prop::bool::ANY,
    ) {
        let text = if spaced {
            format!("[ {} ]", items.join(" , "))
        } else {
            format!("[{}]", items.join(","))
        };
        prop_assume!(serde_json::from_str::<&serde_json::value::RawValue>(&text).is_ok());
        let fast = crate::body::skim_input_tokens(&text, text_tokens);
        if let Some(fast) = fast {
            prop_assert_eq!(fast, parsed_input_tokens(&text), "{}", text);
        }
        // Counted while the whole body is read: the same count, as sure, the same fields.
        let body = format!(r#"{{"model":"m","input":{text},"store":false}}"#);
        let counting = crate::body::read(body.as_bytes(), &[], tally(Endpoint::Responses));
        let plain = crate::body::read(body.as_bytes(), &[], None);
        match (counting, plain) {
            (Ok(counting), Ok(plain)) => {
                prop_assert_eq!(&counting.fields, &plain.fields);
                prop_assert_eq!(plain.counts, Counts::default());
                if counting.names.is_some() {
                    prop_assert_eq!(counting.counts.input, fast, "{}", text);
                }
            }
            (counting, plain) => prop_assert_eq!(counting.is_ok(), plain.is_ok()),
        }
    }
}

/// `body` read for `endpoint` counting on the way and not: the same fields (or the same
/// refusal), and the count made on the way is the one the estimate makes after.
fn made_is_after(body: &str, endpoint: Endpoint) -> Result<(), TestCaseError> {
    let counting = crate::body::read(body.as_bytes(), &[], tally(endpoint));
    let plain = crate::body::read(body.as_bytes(), &[], None);
    match (counting, plain) {
        (Ok(counting), Ok(plain)) => {
            prop_assert_eq!(&counting.fields, &plain.fields);
            let made = count(&counting.fields, body.len(), endpoint, counting.counts).prompt;
            let after = count(&plain.fields, body.len(), endpoint, Counts::default()).prompt;
            prop_assert_eq!(made, after, "{}", body);
        }
        (counting, plain) => prop_assert_eq!(counting.is_ok(), plain.is_ok()),
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(2048))]

    /// Chat contents counted while the body is read (strings, parts, images, values, `null`,
    /// escapes, a `content` twice) give the count the estimate makes reading them after.
    #[test]
    fn chat_contents_counted_on_the_way_are_the_estimates(
        messages in prop::collection::vec(item(), 0..6),
    ) {
        let body = format!(r#"{{"model":"m","messages":[{}],"max_tokens":5}}"#, messages.join(","));
        prop_assume!(serde_json::from_str::<&serde_json::value::RawValue>(&body).is_ok());
        made_is_after(&body, Endpoint::ChatCompletions)?;
    }
}

/// A Messages block: text, image, tool blocks (`type` or `text` twice, escaped, of another
/// kind), or not an object (an array too, which the estimate reads as a struct's fields).
fn block() -> impl Strategy<Value = String> {
    let kind = prop::sample::select(vec![
        r#""text""#,
        r#""image""#,
        r#""tool_use""#,
        r#""tool_result""#,
        r#""t\u0065xt""#,
        "1",
        "null",
    ]);
    let member = prop_oneof![
        3 => kind.prop_map(|v| (r#""type""#.to_owned(), v.to_owned())),
        3 => any_value().prop_map(|v| (r#""text""#.to_owned(), v)),
        1 => any_value().prop_map(|v| (r#""input""#.to_owned(), v)),
        1 => json_string().prop_map(|v| (r#""t\u0065xt""#.to_owned(), v)),
    ];
    prop_oneof![
        6 => object(member),
        1 => any_value(),
        1 => Just(r#"["image"]"#.to_owned()),
    ]
}

/// A Messages `content`, `system` or `tools` value: blocks, or any other value.
fn blocks_value() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::collection::vec(block(), 0..4).prop_map(|b| format!("[{}]", b.join(","))),
        1 => any_value(),
    ]
}

proptest! {
    #![proptest_config(config(2048))]

    /// Messages contents, `system` and `tools` counted while the body is read give the count
    /// the estimate makes reading them after.
    #[test]
    fn message_blocks_counted_on_the_way_are_the_estimates(
        contents in prop::collection::vec(blocks_value(), 0..5),
        system in prop::option::of(blocks_value()),
        tools in prop::option::of(blocks_value()),
    ) {
        let messages: Vec<String> = contents
            .iter()
            .map(|c| format!(r#"{{"role":"user","content":{c}}}"#))
            .collect();
        let mut body = format!(r#"{{"model":"m","max_tokens":9,"messages":[{}]"#, messages.join(","));
        if let Some(system) = system {
            body += &format!(r#","system":{system}"#);
        }
        if let Some(tools) = tools {
            body += &format!(r#","tools":{tools}"#);
        }
        body += "}";
        prop_assume!(serde_json::from_str::<&serde_json::value::RawValue>(&body).is_ok());
        for endpoint in [Endpoint::Messages, Endpoint::CountTokens] {
            made_is_after(&body, endpoint)?;
        }
    }
}

/// A Claude Code turn (system blocks, text, tool_use and tool_result blocks, tools) is counted
/// while it is read, as the estimate counts it after.
#[test]
fn a_claude_code_turn_is_counted_in_one_pass() {
    let body = r#"{"model":"claude-sonnet-4-5","max_tokens":32000,"system":[{"type":"text","text":"You are Claude Code.\n","cache_control":{"type":"ephemeral"}}],"messages":[{"role":"user","content":[{"type":"text","text":"fix the \"bug\"\n\tin main.rs"}]},{"role":"assistant","content":[{"type":"text","text":"Reading it."},{"type":"tool_use","id":"t1","name":"Read","input":{"file_path":"/src/main.rs"}}]},{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":"fn main() {}\n"},{"type":"image","source":{"type":"base64","data":"AAAA"}}]},{"role":"user","content":"thanks"}],"tools":[{"name":"Read","description":"Reads a file","input_schema":{"type":"object","properties":{"file_path":{"type":"string"}}}}]}"#;
    let reading = crate::body::read(body.as_bytes(), &[], tally(Endpoint::Messages)).expect("read");
    assert!(reading.counts.contents.is_some());
    assert!(reading.counts.system.is_some());
    assert!(reading.counts.tools.is_some());
    assert_eq!(
        count(
            &reading.fields,
            body.len(),
            Endpoint::Messages,
            reading.counts
        )
        .prompt,
        count(
            &reading.fields,
            body.len(),
            Endpoint::Messages,
            Counts::default()
        )
        .prompt
    );
}

/// A chat turn whose contents are parts (as SDKs and agent frameworks send them) is counted
/// while it is read, as the estimate counts it after.
#[test]
fn chat_content_parts_are_counted_in_one_pass() {
    let body = r#"{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"fix:\n\tfn main() {\n\t\tprintln!(\"hi\");\n\t}\n caf\u00e9"},{"type":"image_url","image_url":{"url":"u","detail":"low"}},{"type":"image_url","image_url":{"url":"u"}}]},{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]},{"role":"user","content":[]}]}"#;
    let reading =
        crate::body::read(body.as_bytes(), &[], tally(Endpoint::ChatCompletions)).expect("read");
    let parts = content_tokens(
        r#"[{"type":"text","text":"fix:\n\tfn main() {\n\t\tprintln!(\"hi\");\n\t}\n caf\u00e9"},{"type":"image_url","image_url":{"url":"u","detail":"low"}},{"type":"image_url","image_url":{"url":"u"}}]"#,
    );
    // The text is 45 bytes once its escapes are read (`é` two of them).
    assert_eq!(parts, text_tokens(45) + 85 + 765);
    assert_eq!(
        reading.counts.contents,
        Some(text_tokens(r#""be brief""#.len()) + parts)
    );
    let chat = Endpoint::ChatCompletions;
    assert_eq!(
        count(&reading.fields, body.len(), chat, reading.counts).prompt,
        count(&reading.fields, body.len(), chat, Counts::default()).prompt
    );
}

/// A coding agent's input (messages with text parts full of escapes, calls and their outputs)
/// is counted in one pass, as serde_json counts it.
#[test]
fn a_coding_agents_input_is_counted_in_one_pass() {
    let text = r#"[{"type":"message","role":"user","content":[{"type":"input_text","text":"fix the bug:\n\tfn main() {\n\t\tprintln!(\"hi\");\n\t}\n caf\u00e9"}]},{"type":"function_call","call_id":"c1","name":"shell","arguments":"{\"cmd\":[\"ls\"]}"},{"type":"function_call_output","call_id":"c1","output":"a.rs\nb.rs\n"},{"role":"assistant","content":[{"type":"output_text","text":"done"},{"type":"input_image","image_url":{"detail":"low"}}]},{"role":"user","content":"plain text"}]"#;
    let fast = crate::body::skim_input_tokens(text, text_tokens);
    assert_eq!(fast, Some(parsed_input_tokens(text)));
    let body = format!(r#"{{"model":"gpt-5","instructions":"be brief","input":{text}}}"#);
    let reading =
        crate::body::read(body.as_bytes(), &[], tally(Endpoint::Responses)).expect("read");
    assert_eq!(reading.counts.input, fast);
    let counted = count(
        &reading.fields,
        body.len(),
        Endpoint::Responses,
        Counts::default(),
    );
    let fused = count(
        &reading.fields,
        body.len(),
        Endpoint::Responses,
        reading.counts,
    );
    assert_eq!(counted.prompt, fused.prompt);
}
