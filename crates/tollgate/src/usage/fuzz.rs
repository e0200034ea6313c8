//! Property tests over hostile answers (issue 21's fuzz targets for the usage tap): whatever
//! the bytes and their chunking, the tap never panics, passes a stream or body on unchanged
//! unless stripping, strips exactly the usage-only events, and finds the usage the whole
//! answer holds.

use super::*;
use crate::sse::fuzz::{chunked, config, cuts, reference_ends, sse_bytes, sse_stream};
use proptest::prelude::*;

/// Numbers as a hostile upstream spells them: out of range, negative, fractional, not numbers.
const COUNTS: &[&str] = &[
    "0",
    "7",
    "100000001",
    "18446744073709551615",
    "18446744073709551616",
    "-1",
    "1.5",
    "1e400",
    "\"3\"",
    "null",
    "{}",
    "[]",
];

/// A usage object with any of those counts, nested the way each API nests it.
fn usage_json() -> impl Strategy<Value = String> {
    let count = || prop::sample::select(COUNTS);
    let names = prop::sample::select(vec![
        ("prompt_tokens", "completion_tokens"),
        ("input_tokens", "output_tokens"),
        ("prompt_tokens", "input_tokens"),
    ]);
    let shape = prop::sample::select(vec![
        "{\"choices\":[],\"usage\":%}",
        "{\"choices\":[{\"delta\":{}}],\"usage\":%}",
        "{\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"usage\":%}}",
        "{\"id\":\"x\",\"usage\": %,\"choices\":[]}",
        "{\"usage\":%,\"usage\":%}",
        "{\"usage\":%",
    ]);
    (names, count(), count(), count(), shape).prop_map(|((a, b), x, y, z, shape)| {
        let usage = format!(
            "{{\"{a}\":{x},\"{b}\":{y},\"total_tokens\":{z},\"prompt_tokens_details\":{{\"cached_tokens\":{x}}}}}"
        );
        shape.replace('%', &usage)
    })
}

/// Streams with hostile usage events among ordinary ones.
fn stream_input() -> impl Strategy<Value = Vec<u8>> {
    let usage_event = (usage_json(), prop::sample::select(vec!["\n", "\r\n", "\r"]))
        .prop_map(|(json, eol)| format!("data: {json}{eol}{eol}").into_bytes());
    let piece = prop_oneof![2 => sse_stream(3), 1 => sse_bytes(6), 2 => usage_event];
    prop::collection::vec(piece, 0..8).prop_map(|pieces| pieces.concat())
}

/// Everything a tap lets out for `chunks`, its flush included, and the usage it found.
fn tapped(mut tap: UsageTap, chunks: Vec<Bytes>) -> (Vec<u8>, Option<Usage>) {
    let mut out = Vec::new();
    for chunk in chunks {
        out.extend_from_slice(&tap.chunk(chunk));
    }
    if let Some(rest) = tap.flush() {
        assert!(!rest.is_empty(), "flush says `None` rather than nothing");
        out.extend_from_slice(&rest);
    }
    (out, tap.finish())
}

proptest! {
    #![proptest_config(config(1024))]

    /// A stream tap that keeps the usage passes every byte on, and finds the usage that the
    /// whole stream's events hold (the last one), whatever the chunking.
    #[test]
    fn a_keeping_tap_passes_the_stream_and_finds_its_usage(
        input in stream_input(),
        cuts in cuts(),
    ) {
        let (out, usage) = tapped(UsageTap::stream(false), chunked(&input, &cuts));
        prop_assert_eq!(&out, &input);
        let mut want = None;
        let mut start = 0;
        for end in reference_ends(&input) {
            inspect(&input[start..end], &mut want);
            start = end;
        }
        prop_assert_eq!(usage, want);
    }

    /// A stripping tap lets out exactly the whole stream's events less the usage-only ones,
    /// then the unfinished rest, whatever the chunking (a `\r\n` cut in two goes with its
    /// event), and finds the same usage.
    #[test]
    fn a_stripping_tap_removes_exactly_the_usage_only_events(
        input in stream_input(),
        cuts in cuts(),
    ) {
        let (out, usage) = tapped(UsageTap::stream(true), chunked(&input, &cuts));
        let mut want = Vec::new();
        let mut want_usage = None;
        let mut start = 0;
        for end in reference_ends(&input) {
            let event = &input[start..end];
            if inspect(event, &mut want_usage) {
                want.extend_from_slice(event);
            }
            start = end;
        }
        want.extend_from_slice(&input[start..]);
        prop_assert_eq!(out, want);
        prop_assert_eq!(usage, want_usage);
    }

    /// A body tap passes every byte and finds the same usage however the body was chunked.
    #[test]
    fn a_body_tap_passes_the_body_and_reads_its_usage_in_one_piece(
        input in prop_oneof![
            usage_json().prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..96),
            stream_input(),
        ],
        cuts in cuts(),
    ) {
        let (out, usage) = tapped(UsageTap::body(), chunked(&input, &cuts));
        prop_assert_eq!(&out, &input);
        prop_assert_eq!(usage, usage_in_body(&input));
        if let Some(u) = usage.as_ref() {
            let _ = plausible_total(u);
        }
    }

    /// Asking for usage on any body gives `None` or a JSON object that asks for it and keeps
    /// every other field.
    #[test]
    fn include_usage_is_added_to_any_object_and_only_to_one(
        body in prop_oneof![
            usage_json().prop_map(String::into_bytes),
            "\\{(\"stream_options\":(\\{\\}|null|1|\\[\\]|\\{\"x\":1\\}),)?\"model\":\"m\"\\}".prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..48),
        ],
    ) {
        let before = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&body);
        match with_include_usage(&body) {
            Some(out) => {
                let mut after: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_slice(&out).expect("a JSON object");
                prop_assert_eq!(&after["stream_options"]["include_usage"], &serde_json::json!(true));
                let mut before = before.expect("was an object");
                before.remove("stream_options");
                after.remove("stream_options");
                prop_assert_eq!(before, after);
            }
            None => prop_assert!(
                before.is_err()
                    || before.is_ok_and(|m| m.get("stream_options").is_some_and(|v| !v.is_object()))
            ),
        }
    }

    /// Appending the usage option to any body keeps every byte before it and gives the same
    /// object as re-serializing would; it declines only what a splice cannot do safely.
    #[test]
    fn include_usage_is_appended_without_touching_the_rest(
        body in prop_oneof![
            usage_json().prop_map(String::into_bytes),
            "\\{ *(\"stream_options\":\\{\\},)?\"model\" *: *\"m\" *\\} *\n?".prop_map(String::into_bytes),
            "\\{ *\\} *".prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..48),
        ],
    ) {
        let before = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&body);
        // The caller appends only to a body it has read as a JSON object.
        let Ok(mut before) = before else { return Ok(()) };
        match append_include_usage(&body) {
            Some(out) => {
                let end = body.trim_ascii_end().len() - 1;
                prop_assert_eq!(&out[..end], &body[..end]);
                let after: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_slice(&out).expect("a JSON object");
                before.insert("stream_options".into(), serde_json::json!({"include_usage": true}));
                prop_assert_eq!(before, after);
            }
            None => prop_assert!(
                memchr::memmem::find(&body, b"stream_options").is_some()
                    || memchr::memmem::find(&body, b"\\u").is_some()
            ),
        }
    }

    /// No count an upstream reports overflows the plausible total.
    #[test]
    fn any_counts_give_a_plausible_total_or_none(
        prompt in any::<u64>(),
        completion in any::<u64>(),
        total in any::<u64>(),
    ) {
        let u = Usage { prompt_tokens: prompt, completion_tokens: completion, total_tokens: total, ..Usage::default() };
        if let Some(t) = plausible_total(&u) {
            prop_assert!(t <= PLAUSIBLE_TOKENS && t >= total);
        }
    }
}

/// The usage-object check as it was first written: each `"usage":`, then an optional space and
/// a `{`.
fn names_usage_object_by_definition(bytes: &[u8]) -> bool {
    const KEY: &[u8] = b"\"usage\":";
    (0..bytes.len()).any(|at| {
        bytes[at..].starts_with(KEY) && {
            let value = &bytes[at + KEY.len()..];
            value.strip_prefix(b" ").unwrap_or(value).first() == Some(&b'{')
        }
    })
}

proptest! {
    #![proptest_config(config(1024))]

    /// The one-search check agrees with the definition on chunks built from usage pieces.
    #[test]
    fn the_usage_object_check_agrees_with_its_definition(
        pieces in prop::collection::vec(prop::sample::select(vec![
            "\"usage\":", "\"usage\"", "usage", ":", " ", "  ", "{", "}", "null", "\"", "x",
            "data: ", "\n\n", "\"usage\":null", "\"usage\": {", "\"usage\":{\"prompt_tokens\":1}",
        ]), 0..24)
    ) {
        let chunk = pieces.concat();
        prop_assert_eq!(
            names_usage_object(chunk.as_bytes()),
            names_usage_object_by_definition(chunk.as_bytes()),
            "{}", chunk
        );
    }
}
