//! Property tests over hostile bytes (issue 21's fuzz targets for SSE framing): whatever the
//! bytes and wherever the chunks are cut, every way of framing finds the events that framing
//! the whole input at once finds, loses no byte, and never panics.
//!
//! The strategies here (SSE-looking bytes, cut points) are shared with the fuzz modules of
//! the framer's users (the stream guard, the usage tap, the Anthropic translator).
//! `PROPTEST_CASES=5000 cargo nextest run -p tollgate fuzz` runs every target longer.

use super::*;
use proptest::prelude::*;
use proptest::sample::Index;

/// `cases` for the normal test run; `PROPTEST_CASES` asks for another count (proptest reads it
/// only into its default config, which an explicit count would override).
pub(crate) fn config(cases: u32) -> ProptestConfig {
    if std::env::var_os("PROPTEST_CASES").is_some() {
        ProptestConfig::default()
    } else {
        ProptestConfig::with_cases(cases)
    }
}

/// Pieces that make arbitrary bytes look like SSE often enough to reach every state of a
/// framer: each line ending, blank lines, fields, comments, the end markers of each dialect.
const TOKENS: &[&[u8]] = &[
    b"\n",
    b"\n",
    b"\r",
    b"\r\n",
    b"\n\n",
    b"\r\r",
    b"\r\n\r\n",
    b"\n\r\n",
    b":",
    b": ",
    b"data: ",
    b"data:",
    b"event: ",
    b"id: 7",
    b"retry: 10",
    b": keep-alive",
    b"[DONE]",
    b" [DONE] ",
    b"error",
    b"ping",
    b"response.completed",
    b"response.failed",
    b"response.created",
    b"{\"type\":\"",
    b"\"",
    b"{",
    b"}",
    b"{\"error\":{\"message\":\"m\"}}",
    b"{\"response\":{\"id\":\"resp_1\"}}",
    b"{\"choices\":[]}",
    b"{\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}",
    b"\"usage\":",
    b"{\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}",
    b"\xff\xfe",
    b"\xe2\x82",
];

/// Bytes built of at most `max` pieces: SSE tokens and runs of arbitrary bytes.
pub(crate) fn sse_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        3 => prop::sample::select(TOKENS).prop_map(<[u8]>::to_vec),
        1 => prop::collection::vec(any::<u8>(), 0..6),
        1 => "[a-z ]{0,8}".prop_map(String::into_bytes),
    ];
    prop::collection::vec(piece, 0..max).prop_map(|pieces| pieces.concat())
}

/// Lines of the events real upstreams send (chat chunks, Responses events, errors, usage).
const LINES: &[&str] = &[
    "data: [DONE]",
    "data:[DONE]",
    "event: response.completed",
    "event: response.failed",
    "event: error",
    "event: ping",
    "event: response.created",
    ": keep-alive",
    "id: 1",
    "data: x",
    "data: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\"}}",
    "data: {\"type\":\"response.output_text.delta\",\"delta\":\"hi\"}",
    "data: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_2\",\"usage\":{\"input_tokens\":4,\"output_tokens\":5,\"total_tokens\":9}}}",
    "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}",
    "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}",
    "data: {\"choices\":[{\"delta\":{}}],\"usage\":null}",
    "data: {\"error\":{\"message\":\"boom\",\"type\":\"server_error\"}}",
    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}",
];

/// One well-formed event of 1 to 3 of those lines, each line ending spelt one way.
fn event() -> impl Strategy<Value = Vec<u8>> {
    let eol = prop::sample::select(vec!["\n", "\r\n", "\r"]);
    (
        prop::collection::vec(prop::sample::select(LINES), 1..4),
        eol,
    )
        .prop_map(|(lines, eol)| {
            let mut event = lines.join(eol);
            event.push_str(eol);
            event.push_str(eol);
            event.into_bytes()
        })
}

/// An event that ends a stream of some dialect (`[DONE]`, a terminal Responses event, an error).
fn end_event() -> impl Strategy<Value = Vec<u8>> {
    let lines = prop::sample::select(vec![
        "data: [DONE]",
        "data:  [DONE] ",
        "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_2\"}}",
        "data: {\"type\":\"response.incomplete\",\"response\":{\"id\":\"resp_3\"}}",
        "event: error\ndata: {\"type\":\"error\",\"message\":\"boom\"}",
        "event: response.failed",
    ]);
    let eol = prop::sample::select(vec!["\n", "\r\n", "\r"]);
    (lines, eol)
        .prop_map(|(lines, eol)| format!("{}{eol}{eol}", lines.replace('\n', eol)).into_bytes())
}

/// A stream of at most `max` pieces: mostly well-formed events (some that end a stream), with
/// hostile bytes between.
pub(crate) fn sse_stream(max: usize) -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![6 => event(), 1 => end_event(), 2 => sse_bytes(4)];
    prop::collection::vec(piece, 0..max).prop_map(|pieces| pieces.concat())
}

/// `bytes`, often ending with a blank line (where `skip_whole` may apply).
pub(crate) fn ended(bytes: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let end = prop::sample::select(vec![&b""[..], b"\n\n", b"\n\r\n", b"\r\n\r\n", b"\r"]);
    (bytes, end).prop_map(|(mut bytes, end)| {
        bytes.extend_from_slice(end);
        bytes
    })
}

/// Places to cut an input into chunks (any number, empty chunks included).
pub(crate) fn cuts() -> impl Strategy<Value = Vec<Index>> {
    prop::collection::vec(any::<Index>(), 0..12)
}

/// `input` cut at `cuts`, in order; empty chunks stay.
pub(crate) fn chunked(input: &[u8], cuts: &[Index]) -> Vec<Bytes> {
    let mut at: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
    at.sort_unstable();
    let mut chunks = Vec::with_capacity(at.len() + 1);
    let mut start = 0;
    for end in at.into_iter().chain([input.len()]) {
        chunks.push(Bytes::copy_from_slice(&input[start..end]));
        start = end;
    }
    chunks
}

/// Where the events of `input` end when it is framed whole, and where its unfinished event
/// begins.
pub(crate) fn reference_ends(input: &[u8]) -> Vec<usize> {
    let mut split = Splitter::new();
    let mut ends = Vec::new();
    let mut at = 0;
    while let Some(end) = split.find(&input[at..]) {
        assert!(!end.lead, "a whole input has no `\\r\\n` cut in two");
        at += end.len;
        ends.push(at);
    }
    ends
}

/// The ends of events that a chunked framer handed out (as offsets of the input), moved past
/// the `\n` of a `\r\n` that a chunk boundary gave to the next event: where the whole input's
/// events end.
fn canonical_ends(input: &[u8], raw_ends: &[usize]) -> Vec<usize> {
    raw_ends
        .iter()
        .map(
            |&end| match (input.get(end.wrapping_sub(1)), input.get(end)) {
                (Some(b'\r'), Some(b'\n')) => end + 1,
                _ => end,
            },
        )
        .collect()
}

/// How a test drives an [`SseFramer`] with one chunk.
#[derive(Debug, Clone)]
enum Op {
    /// `push`, then take at most this many events (`None`: all).
    Push(Option<u8>),
    /// `feed`, breaking after this many events (`None`: never).
    Feed(Option<u8>),
}

fn op() -> impl Strategy<Value = Op> {
    let limit = prop_oneof![2 => Just(None), 1 => (0u8..3).prop_map(Some)];
    prop_oneof![limit.clone().prop_map(Op::Push), limit.prop_map(Op::Feed)]
}

/// The events an [`SseFramer`] hands out for `chunks` under `ops` (cycled), drained at the
/// end, and its unfinished rest: `(raw, lead)` of each.
fn framed(chunks: &[Bytes], ops: &[Op]) -> (Vec<(Bytes, bool)>, Option<Event>) {
    let mut framer = SseFramer::new();
    let mut events = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        match ops
            .get(i % ops.len().max(1))
            .cloned()
            .unwrap_or(Op::Push(None))
        {
            Op::Push(limit) => {
                framer.push(chunk.clone());
                let limit = limit.map_or(usize::MAX, usize::from);
                for _ in 0..limit {
                    let Some(event) = framer.next_event() else {
                        break;
                    };
                    events.push((event.raw().clone(), event.lead()));
                }
            }
            Op::Feed(stop) => {
                let stop = stop.map_or(usize::MAX, usize::from);
                let mut seen = 0;
                framer.feed(chunk, |event| {
                    // `feed` lends events: whether one has a lead is not said; the offsets
                    // tell it below.
                    events.push((Bytes::copy_from_slice(event), false));
                    seen += 1;
                    if seen >= stop {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                });
            }
        }
    }
    while let Some(event) = framer.next_event() {
        events.push((event.raw().clone(), event.lead()));
    }
    let rest = framer.take_partial();
    assert!(framer.is_empty() && framer.pending() == 0);
    (events, rest)
}

/// Offsets where each of `events` ends, checking that they tile `input` from its start.
fn tile(input: &[u8], events: &[&[u8]], rest: &[u8]) -> Result<Vec<usize>, TestCaseError> {
    let mut at = 0;
    let mut ends = Vec::with_capacity(events.len());
    for event in events {
        prop_assert!(!event.is_empty(), "an event has at least its blank line");
        prop_assert_eq!(input.get(at..at + event.len()), Some(*event));
        at += event.len();
        ends.push(at);
    }
    prop_assert_eq!(
        &input[at..],
        rest,
        "the rest is what follows the last event"
    );
    Ok(ends)
}

proptest! {
    #![proptest_config(config(2048))]

    /// However the input is chunked and however the framer is driven (owned events, lent
    /// events, breaks in between), the events tile the input with the rest, and end where the
    /// whole input's events end (a `\r\n` cut in two is the one difference, marked `lead`).
    #[test]
    fn any_chunking_and_any_driving_frames_the_same_events(
        input in prop_oneof![sse_bytes(48), sse_stream(12)],
        cuts in cuts(),
        ops in prop::collection::vec(op(), 1..6),
    ) {
        let chunks = chunked(&input, &cuts);
        let (events, rest) = framed(&chunks, &ops);
        let rest_raw = rest.as_ref().map_or(Bytes::new(), |r| r.raw().clone());
        let raws: Vec<&[u8]> = events.iter().map(|(raw, _)| &raw[..]).collect();
        let ends = tile(&input, &raws, &rest_raw)?;
        for (i, (raw, lead)) in events.iter().enumerate() {
            if *lead {
                prop_assert!(raw.starts_with(b"\n") && i > 0 && raws[i - 1].ends_with(b"\r"));
            }
        }
        if let Some(rest) = &rest {
            if rest.lead() {
                prop_assert!(rest.raw().starts_with(b"\n"));
            }
        }
        prop_assert_eq!(canonical_ends(&input, &ends), reference_ends(&input));
    }

    /// A [`Scanner`] over a buffer that grows chunk by chunk finds the same events.
    #[test]
    fn a_scanner_over_a_growing_buffer_frames_the_same_events(
        input in prop_oneof![sse_bytes(48), sse_stream(12)],
        cuts in cuts(),
    ) {
        let mut buf = Vec::new();
        let mut scanner = Scanner::new();
        let mut events: Vec<Vec<u8>> = Vec::new();
        for chunk in chunked(&input, &cuts) {
            buf.extend_from_slice(&chunk);
            while let Some(event) = scanner.next_event(&buf) {
                events.push(event.to_vec());
            }
            prop_assert!(scanner.next_event(&buf).is_none(), "nothing new without an append");
        }
        let used: usize = events.iter().map(Vec::len).sum();
        let raws: Vec<&[u8]> = events.iter().map(Vec::as_slice).collect();
        let ends = tile(&input, &raws, &input[used..])?;
        prop_assert_eq!(canonical_ends(&input, &ends), reference_ends(&input));
    }

    /// `skip_whole` passes over a chunk only when the whole input's events end exactly at the
    /// chunk's end (so a fresh framer after it frames what follows as the whole input would).
    #[test]
    fn skip_whole_only_skips_complete_events(
        head in ended(sse_bytes(24)),
        chunk in ended(sse_bytes(24)),
        cuts in cuts(),
    ) {
        let mut framer = SseFramer::new();
        for piece in chunked(&head, &cuts) {
            framer.feed(&piece, |_| ControlFlow::Continue(()));
        }
        let held = framer.pending();
        if framer.skip_whole(&chunk) {
            let mut input = head.clone();
            input.extend_from_slice(&chunk);
            prop_assert_eq!(held, 0);
            prop_assert!(framer.is_empty());
            let ends = reference_ends(&input);
            prop_assert!(
                ends.contains(&input.len()),
                "an event is cut at the end of {:?}", chunk
            );
        }
    }

    /// Reading fields never panics, and what it returns has no line ending in it.
    #[test]
    fn fields_name_and_data_read_any_bytes(
        event in prop_oneof![sse_bytes(32), prop::collection::vec(any::<u8>(), 0..64)],
    ) {
        let mut data_fields = 0usize;
        for (field, value) in fields(&event) {
            prop_assert!(!field.is_empty());
            prop_assert!(!field.iter().any(|b| matches!(b, b'\n' | b'\r' | b':')));
            prop_assert!(!value.iter().any(|b| matches!(b, b'\n' | b'\r')));
            data_fields += usize::from(field == b"data");
        }
        if let Some(name) = name(&event) {
            prop_assert!(!name.iter().any(|b| matches!(b, b'\n' | b'\r')));
        }
        let data = data(&event);
        prop_assert!(!data.contains(&b'\r'));
        let joins = data.iter().filter(|&&b| b == b'\n').count();
        prop_assert!(joins < data_fields.max(1));
    }
}

proptest! {
    #![proptest_config(config(1024))]

    /// The look-behind search finds a needle wherever a substring search does, and nowhere else.
    #[test]
    fn holds_agrees_with_a_substring_search(
        pieces in prop::collection::vec(prop::sample::select(vec![
            "[DONE", "]", "[DONE]", "[", "D", "DONE", "\"usage\":", "{", " ", "x", "data: ", "\n\n",
        ]), 0..24),
        needle in prop::sample::select(vec!["[DONE]", "]", "\"usage\":{", "x]", ""]),
    ) {
        let chunk = pieces.concat();
        let naive = needle.is_empty()
            || chunk.as_bytes().windows(needle.len()).any(|w| w == needle.as_bytes());
        prop_assert_eq!(holds(chunk.as_bytes(), needle.as_bytes()), naive, "{}", chunk);
    }
}
