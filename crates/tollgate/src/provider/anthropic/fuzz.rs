//! Property tests over hostile bodies and streams (issue 21's fuzz targets for the Anthropic
//! translation): a client's request, an upstream answer, error body or event stream of any
//! shape never panics, and what comes out is what it claims to be: a request Anthropic
//! accepts the shape of, JSON answers, and SSE whose every event is a chunk, an error or
//! `[DONE]`, the same however the stream was chunked.

use super::*;
use crate::sse::fuzz::{chunked, config, cuts, sse_bytes};
use proptest::prelude::*;
use serde_json::Map;

/// Strings that mean something somewhere in either dialect, and some that are hostile.
const WORDS: &[&str] = &[
    "",
    " ",
    "user",
    "assistant",
    "system",
    "developer",
    "tool",
    "function",
    "text",
    "refusal",
    "image_url",
    "input_audio",
    "tool_use",
    "thinking",
    "text_delta",
    "input_json_delta",
    "auto",
    "required",
    "none",
    "https://x/y.png",
    "data:image/png;base64,AAAA",
    "data:;base64,AAAA",
    "data:image/png,AAAA",
    "ftp://x/y",
    "{}",
    "{\"a\":1}",
    "[1]",
    "not json",
    "null",
    "max_tokens",
    "end_turn",
    "tool_use",
    "rate_limit_error",
    "invalid_request_error",
    "prompt is too long",
    "\u{0}\u{7f}\u{fffd}é\u{1f600}",
    "\"\\\n\r",
];

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(WORDS).prop_map(str::to_owned),
        1 => "\\PC{0,12}",
    ]
}

/// Numbers as a hostile client or upstream spells them.
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0u64..3).prop_map(Value::from),
        Just(Value::from(u32::MAX)),
        Just(Value::from(u64::from(u32::MAX) + 1)),
        Just(Value::from(u64::MAX)),
        Just(Value::from(-1)),
        Just(Value::from(i64::MIN)),
        Just(Value::from(0.5)),
        Just(Value::from(1e300)),
        Just(Value::from(-1e300)),
        Just(Value::from("2")),
        Just(Value::Null),
    ]
}

/// Any JSON value, nested a few levels, with keys the translation reads.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        number(),
        word().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..4)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "type",
        "text",
        "role",
        "content",
        "id",
        "name",
        "input",
        "url",
        "image_url",
        "index",
        "function",
        "arguments",
        "message",
        "error",
        "usage",
        "delta",
        "x",
    ])
    .prop_map(str::to_owned)
}

/// Mostly `good`, now and then `bad`: most inputs get past the first check to reach the rest.
fn mostly(
    good: impl Strategy<Value = Value> + 'static,
    bad: impl Strategy<Value = Value> + 'static,
) -> BoxedStrategy<Value> {
    prop_oneof![9 => good, 1 => bad].boxed()
}

/// `good` only for a clean stream, else [`mostly`] `good`.
fn clean_or(
    clean: bool,
    good: impl Strategy<Value = Value> + 'static,
    bad: impl Strategy<Value = Value> + 'static,
) -> BoxedStrategy<Value> {
    match clean {
        true => good.boxed(),
        false => mostly(good, bad),
    }
}

/// One of these strings.
fn one_of(words: &'static [&'static str]) -> BoxedStrategy<Value> {
    prop::sample::select(words).prop_map(Value::from).boxed()
}

/// A small count, or a hostile number.
fn count() -> BoxedStrategy<Value> {
    mostly((0u32..5000).prop_map(Value::from), number())
}

/// An object of `fields`, each with a value from its strategy: a field whose name starts with
/// `?` is optional (present half the time), the others are missing now and then.
fn object(fields: Vec<(&'static str, BoxedStrategy<Value>)>) -> BoxedStrategy<Value> {
    object_with(fields, 0.97)
}

/// [`object`] with a required field present at these `odds`.
fn object_with(
    fields: Vec<(&'static str, BoxedStrategy<Value>)>,
    odds: f64,
) -> BoxedStrategy<Value> {
    let fields: Vec<_> = fields
        .into_iter()
        .map(|(name, value)| {
            let (name, odds) = match name.strip_prefix('?') {
                Some(name) => (name, 0.5),
                None => (name, odds),
            };
            (prop::bool::weighted(odds), value).prop_map(move |(keep, v)| keep.then_some((name, v)))
        })
        .collect();
    fields
        .prop_map(|pairs| {
            let map: Map<String, Value> = pairs
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
            Value::Object(map)
        })
        .boxed()
}

fn s(v: impl Strategy<Value = String> + 'static) -> BoxedStrategy<Value> {
    v.prop_map(Value::from).boxed()
}

/// A content part of any type, with or without the field its type needs.
fn part() -> BoxedStrategy<Value> {
    let url = mostly(
        one_of(&[
            "https://x/y.png",
            "data:image/png;base64,AAAA",
            "data:;base64,A",
            "ftp://x",
        ]),
        s(word()),
    );
    let image_url = mostly(
        object(vec![("url", url), ("?detail", s(word()))]),
        s(word()),
    );
    object(vec![
        (
            "type",
            mostly(one_of(&["text", "text", "image_url", "refusal"]), s(word())),
        ),
        ("text", mostly(s(word()), number())),
        ("?refusal", s(word())),
        ("image_url", image_url),
    ])
}

fn content() -> BoxedStrategy<Value> {
    mostly(
        prop_oneof![
            s(word()),
            prop::collection::vec(part(), 0..3).prop_map(Value::Array)
        ],
        prop_oneof![Just(Value::Null), any_json()],
    )
}

fn message() -> BoxedStrategy<Value> {
    let arguments = mostly(one_of(&["", "{}", "{\"a\":[1,{}]}", " "]), s(word()));
    let call = object(vec![
        ("id", s(word())),
        ("type", one_of(&["function"])),
        (
            "function",
            object(vec![("name", s(word())), ("arguments", arguments)]),
        ),
    ]);
    let role = mostly(
        one_of(&[
            "user",
            "assistant",
            "assistant",
            "tool",
            "system",
            "developer",
        ]),
        s(word()),
    );
    object(vec![
        ("role", role),
        ("content", content()),
        (
            "?tool_calls",
            prop::collection::vec(call, 0..3)
                .prop_map(Value::Array)
                .boxed(),
        ),
        ("?tool_call_id", s(word())),
        ("?name", s(word())),
    ])
}

/// An OpenAI chat request of hostile shape: every field the translation reads, any value.
fn chat_request() -> impl Strategy<Value = Vec<u8>> {
    let tool = object(vec![
        ("type", mostly(one_of(&["function"]), s(word()))),
        (
            "function",
            object(vec![
                ("name", s(word())),
                ("?description", s(word())),
                ("?parameters", any_json().boxed()),
            ]),
        ),
    ]);
    let float = || {
        let any_finite = any::<f64>().prop_filter("JSON numbers are finite", |f| f.is_finite());
        mostly(
            (-1.0f64..3.0).prop_map(Value::from),
            prop_oneof![any_finite.prop_map(Value::from), number()],
        )
    };
    let named = object(vec![
        ("type", one_of(&["function"])),
        ("function", object(vec![("name", s(word()))])),
    ]);
    let tool_choice = mostly(
        prop_oneof![one_of(&["auto", "required", "none"]), named],
        prop_oneof![s(word()), any_json()],
    );
    let stop = mostly(
        prop_oneof![
            s(word()),
            prop::collection::vec(word(), 0..3).prop_map(Value::from)
        ],
        number(),
    );
    let flag = || mostly(any::<bool>().prop_map(Value::from), any_json());
    let refused = || mostly(Just(Value::Null), any_json());
    let request = object(vec![
        (
            "messages",
            prop::collection::vec(message(), 0..6)
                .prop_map(Value::Array)
                .boxed(),
        ),
        ("?max_tokens", count()),
        ("?max_completion_tokens", count()),
        ("?stop", stop),
        ("?temperature", float()),
        ("?top_p", float()),
        ("?top_k", count()),
        (
            "?tools",
            prop::collection::vec(tool, 0..3)
                .prop_map(Value::Array)
                .boxed(),
        ),
        ("?tool_choice", tool_choice),
        ("?parallel_tool_calls", flag()),
        ("?user", s(word())),
        ("?safety_identifier", s(word())),
        ("?stream", flag()),
        ("?n", mostly((0u32..2).prop_map(Value::from), number())),
        ("?logprobs", mostly(Just(Value::from(false)), any_json())),
        ("?top_logprobs", mostly(Just(Value::from(0)), number())),
        ("?functions", refused()),
        ("?function_call", refused()),
        ("?model", s(word())),
        ("?presence_penalty", any_json().boxed()),
    ]);
    prop_oneof![
        8 => request.prop_map(|v| v.to_string().into_bytes()),
        1 => any_json().prop_map(|v| v.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

/// Fields of an Anthropic messages request.
const REQUEST_FIELDS: &[&str] = &[
    "model",
    "messages",
    "system",
    "max_tokens",
    "stop_sequences",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "metadata",
    "stream",
];

/// Checks a translated request against what Anthropic requires of its shape.
fn check_request(out: &[u8], opts: &RequestOptions<'_>) -> Result<(), TestCaseError> {
    let v: Value = serde_json::from_slice(out).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let obj = v
        .as_object()
        .ok_or_else(|| TestCaseError::fail("not an object"))?;
    for key in obj.keys() {
        prop_assert!(
            REQUEST_FIELDS.contains(&key.as_str()),
            "unknown field {}",
            key
        );
    }
    prop_assert_eq!(obj["model"].as_str(), Some(opts.upstream_model));
    prop_assert!(obj["max_tokens"].is_u64());
    let turns = obj["messages"]
        .as_array()
        .ok_or_else(|| TestCaseError::fail("no messages"))?;
    prop_assert!(!turns.is_empty());
    for (i, turn) in turns.iter().enumerate() {
        let want = if i % 2 == 0 { "user" } else { "assistant" };
        prop_assert_eq!(
            turn["role"].as_str(),
            Some(want),
            "roles alternate from user"
        );
        let content = &turn["content"];
        prop_assert!(
            content.as_str().is_some_and(|t| !t.is_empty())
                || content.as_array().is_some_and(|b| !b.is_empty()),
            "empty content in {}",
            turn
        );
    }
    if let Some(t) = obj.get("temperature") {
        prop_assert!(t.as_f64().is_some_and(|t| (0.0..=1.0).contains(&t)));
    }
    if !opts.accepts_sampling() {
        prop_assert!(!["temperature", "top_p", "top_k"]
            .iter()
            .any(|k| obj.contains_key(*k)));
    }
    if let Some(tools) = obj.get("tools") {
        let tools = tools
            .as_array()
            .ok_or_else(|| TestCaseError::fail("tools"))?;
        prop_assert!(!tools.is_empty());
        for tool in tools {
            prop_assert!(tool["name"].is_string() && tool["input_schema"].is_object());
        }
    } else {
        prop_assert!(!obj.contains_key("tool_choice"));
    }
    if let Some(stops) = obj.get("stop_sequences") {
        let stops = stops
            .as_array()
            .ok_or_else(|| TestCaseError::fail("stops"))?;
        prop_assert!(
            !stops.is_empty()
                && stops
                    .iter()
                    .all(|s| s.as_str().is_some_and(|s| !s.is_empty()))
        );
    }
    Ok(())
}

/// Anthropic's usage, its counts small, huge or not numbers at all.
fn usage(clean: bool) -> BoxedStrategy<Value> {
    let count = || {
        let good = prop_oneof![0u64..1000, Just(u64::MAX)].prop_map(Value::from);
        clean_or(clean, good, number())
    };
    object(vec![
        ("?input_tokens", count()),
        ("?output_tokens", count()),
        ("?cache_creation_input_tokens", count()),
        ("?cache_read_input_tokens", count()),
    ])
}

/// An Anthropic `message` answer of hostile shape.
fn answer() -> impl Strategy<Value = Vec<u8>> {
    let block = object(vec![
        (
            "type",
            mostly(one_of(&["text", "tool_use", "thinking"]), s(word())),
        ),
        ("text", mostly(s(word()), number())),
        ("id", mostly(s(word()), number())),
        ("name", s(word())),
        ("input", any_json().boxed()),
    ]);
    let content = mostly(
        prop::collection::vec(block, 0..4).prop_map(Value::Array),
        any_json(),
    );
    let message = object(vec![
        ("id", mostly(s(word()), number())),
        ("type", one_of(&["message"])),
        ("content", content),
        ("stop_reason", mostly(s(word()), number())),
        ("usage", usage(false)),
    ]);
    prop_oneof![
        6 => message.prop_map(|v| v.to_string().into_bytes()),
        1 => any_json().prop_map(|v| v.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

/// An Anthropic error body of hostile shape.
fn error_body() -> impl Strategy<Value = Vec<u8>> {
    let detail = object(vec![
        ("type", s(word())),
        ("message", prop_oneof![s(word()), number()].boxed()),
        (
            "?details",
            prop_oneof![
                any_json(),
                object(vec![(
                    "error_code",
                    s(prop_oneof![
                        Just("enforced_spend_limit_reached".to_owned()),
                        word()
                    ])
                )])
            ]
            .boxed(),
        ),
    ]);
    let body = object(vec![
        ("type", Just(Value::from("error")).boxed()),
        ("error", prop_oneof![detail, any_json().boxed()].boxed()),
        ("?request_id", s(word())),
    ]);
    prop_oneof![
        4 => body.prop_map(|v| v.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..300),
        1 => "\\PC{0,300}".prop_map(String::into_bytes),
    ]
}

/// One Anthropic stream event, framed with an `event:` line that matches its type or not, its
/// data on one or several lines, and any line ending. A `clean` event has the fields of its
/// type (of any value the type allows); the others may miss some or hold other types.
fn stream_event(clean: bool) -> impl Strategy<Value = Vec<u8>> {
    let kind = prop::sample::select(vec![
        "message_start",
        "content_block_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
        "ping",
        "error",
        "future_event",
    ]);
    let odds = if clean { 1.0 } else { 0.97 };
    let text = || clean_or(clean, s(word()), number());
    let index = clean_or(clean, (0u64..4).prop_map(Value::from), number());
    let block = object_with(
        vec![
            (
                "type",
                one_of(&[
                    "text",
                    "tool_use",
                    "tool_use",
                    "thinking",
                    "server_tool_use",
                    "x",
                ]),
            ),
            ("text", text()),
            ("id", text()),
            ("name", s(word())),
            ("input", any_json().boxed()),
        ],
        odds,
    );
    let delta = object_with(
        vec![
            (
                "type",
                one_of(&[
                    "text_delta",
                    "input_json_delta",
                    "thinking_delta",
                    "signature_delta",
                    "x",
                ]),
            ),
            ("text", text()),
            ("partial_json", s(word())),
            (
                "stop_reason",
                clean_or(clean, prop_oneof![s(word()), Just(Value::Null)], number()),
            ),
        ],
        odds,
    );
    let message = object_with(vec![("id", text()), ("usage", usage(clean))], odds);
    let error = object_with(vec![("type", s(word())), ("message", s(word()))], odds);
    let body = object_with(
        vec![
            ("message", message),
            ("index", index),
            ("content_block", block),
            ("delta", delta),
            ("usage", usage(clean)),
            ("error", error),
        ],
        odds,
    );
    let typed = (kind.clone(), body).prop_map(|(kind, mut body)| {
        body["type"] = Value::from(kind);
        body.to_string()
    });
    let data = match clean {
        true => typed.boxed(),
        false => prop_oneof![
            16 => typed,
            1 => word(),
            1 => any_json().prop_map(|v| v.to_string()),
        ]
        .boxed(),
    };
    let name = prop_oneof![kind.prop_map(Some), Just(None)];
    let eol = prop::sample::select(vec!["\n", "\r\n", "\r"]);
    (name, data, any::<bool>(), eol).prop_map(|(name, data, split, eol)| {
        let mut event = String::new();
        if let Some(name) = name {
            event.push_str(&format!("event: {name}{eol}"));
        }
        // Data on two lines joins with `\n`, which JSON reads as whitespace after a comma.
        let data = match data.find(',') {
            Some(at) if split => format!("{}{eol}data: {}", &data[..=at], &data[at + 1..]),
            _ => data,
        };
        event.push_str(&format!("data: {data}{eol}{eol}"));
        event.into_bytes()
    })
}

/// A stream of clean events, or of hostile events with stray bytes between some.
fn anthropic_stream() -> impl Strategy<Value = Vec<u8>> {
    let hostile = prop_oneof![6 => stream_event(false), 1 => sse_bytes(4)];
    prop_oneof![
        prop::collection::vec(stream_event(true), 0..14),
        prop::collection::vec(hostile, 0..14),
    ]
    .prop_map(|pieces| pieces.concat())
}

/// Checks translated stream output: events of `data: <chunk JSON>`, then at most one final
/// `[DONE]` or error event (which the translator's `done` must match).
fn check_stream(out: &[u8], done: bool, include_usage: bool) -> Result<(), TestCaseError> {
    let text = std::str::from_utf8(out).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert!(text.is_empty() || text.ends_with("\n\n"));
    let events: Vec<&str> = text.split_terminator("\n\n").collect();
    for (i, event) in events.iter().enumerate() {
        let last = i + 1 == events.len();
        let data = event
            .strip_prefix("data: ")
            .ok_or_else(|| TestCaseError::fail(format!("not a data event: {event:?}")))?;
        prop_assert!(!data.contains('\n') && !data.contains('\r'));
        if data == "[DONE]" {
            prop_assert!(last && done, "[DONE] ends the stream");
            continue;
        }
        let v: Value =
            serde_json::from_str(data).map_err(|e| TestCaseError::fail(format!("{e}: {data}")))?;
        if v.get("error").is_some() {
            prop_assert!(last && done, "an error ends the stream");
            prop_assert!(v["error"]["message"].is_string() && v["error"]["type"].is_string());
            continue;
        }
        prop_assert_eq!(v["object"].as_str(), Some("chat.completion.chunk"));
        prop_assert_eq!(v["model"].as_str(), Some("gpt-alias"));
        prop_assert!(v["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("chatcmpl-")));
        prop_assert_eq!(v.get("usage").is_some(), include_usage);
        if let Some(usage) = v["usage"].as_object() {
            let n = |k: &str| usage[k].as_u64().unwrap_or(0);
            prop_assert_eq!(
                n("total_tokens"),
                n("prompt_tokens").saturating_add(n("completion_tokens"))
            );
        }
    }
    if done {
        prop_assert!(events
            .last()
            .is_some_and(|e| *e == "data: [DONE]" || e.contains("\"error\"")));
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(1024))]

    /// Any request body translates to a request of the shape Anthropic requires, or is
    /// refused; never a panic.
    #[test]
    fn any_request_translates_to_a_valid_request_or_is_refused(
        body in chat_request(),
        version in prop::sample::select(vec!["2023-06-01", "2026-10-21", "", "9999"]),
        default_max_tokens in any::<u32>(),
    ) {
        let opts = RequestOptions { upstream_model: "claude-x", default_max_tokens, version };
        if let Ok(out) = translate_request(&body, &opts) {
            check_request(&out, &opts)?;
        }
    }

    /// Any answer translates to a `chat.completion` or is refused; never a panic.
    #[test]
    fn any_answer_translates_to_a_completion_or_is_refused(body in answer()) {
        if let Ok(out) = translate_response(&body, "gpt-alias", 1) {
            let v: Value = serde_json::from_slice(&out).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(v["object"].as_str(), Some("chat.completion"));
            let choice = &v["choices"][0];
            prop_assert!(["stop", "length", "tool_calls", "content_filter"]
                .contains(&choice["finish_reason"].as_str().unwrap_or_default()));
            for call in choice["message"]["tool_calls"].as_array().into_iter().flatten() {
                let args = call["function"]["arguments"].as_str().unwrap_or_default();
                prop_assert!(serde_json::from_str::<Value>(args).is_ok(), "arguments {}", args);
            }
            let n = |k: &str| v["usage"][k].as_u64();
            prop_assert_eq!(
                n("total_tokens"),
                n("prompt_tokens").zip(n("completion_tokens")).map(|(p, c)| p.saturating_add(c))
            );
        }
    }

    /// Any error body becomes OpenAI's error envelope, with a message and a type.
    #[test]
    fn any_error_body_becomes_an_error_envelope(body in error_body()) {
        let out = translate_error(&body);
        let v: Value = serde_json::from_slice(&out).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let error = &v["error"];
        prop_assert!(error["message"].is_string() && error["type"].is_string());
        prop_assert!(error["param"].is_null());
        prop_assert!(error["code"].is_null() || error["code"].is_string());
        prop_assert_eq!(v.as_object().map(Map::len), Some(1));
    }

}

proptest! {
    #![proptest_config(config(512))]

    /// Any stream, cut anywhere, translates to the same well-formed OpenAI SSE as when it
    /// comes in one piece; nothing comes out after the end.
    #[test]
    fn any_stream_translates_to_the_same_well_formed_events_however_cut(
        input in anthropic_stream(),
        cuts in cuts(),
        include_usage in any::<bool>(),
        after in sse_bytes(6),
    ) {
        let mut whole = StreamTranslator::new("gpt-alias", include_usage, 7);
        let mut want = Vec::new();
        whole.push(&input, &mut want);
        let mut cut = StreamTranslator::new("gpt-alias", include_usage, 7);
        let mut out = Vec::new();
        for chunk in chunked(&input, &cuts) {
            cut.push(&chunk, &mut out);
        }
        prop_assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&want));
        prop_assert_eq!(cut.is_done(), whole.is_done());
        check_stream(&out, cut.is_done(), include_usage)?;
        if cut.is_done() {
            let mut more = Vec::new();
            cut.push(&after, &mut more);
            cut.push(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n", &mut more);
            prop_assert!(more.is_empty(), "nothing after the end");
        }
    }
}
