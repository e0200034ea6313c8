//! `UsageTap`: reads the real `usage` out of an answer as it streams past, for TPM
//! reconciliation and the tokens metric. In a stream it finds the usage chunk and, when the
//! gateway asked for it on the client's behalf, removes it so the client sees what it asked for.

use crate::body::EventUsage;
use crate::sse::{self, Event, SseFramer};
use bytes::{Bytes, BytesMut};
use memchr::memmem::Finder;
use openai_types::Usage;
use std::ops::{ControlFlow, Range};
use std::sync::LazyLock;

/// Largest non-stream body scanned for usage; larger ones pass through unscanned.
const MAX_SCAN: usize = 4 << 20;

/// The most tokens one answer can plausibly account for: a hundred times today's largest
/// context windows. A usage reporting more is a broken upstream, not a bill.
pub const PLAUSIBLE_TOKENS: u64 = 100_000_000;

/// The tokens a usage accounts for (the larger of `total_tokens` and prompt plus completion),
/// or `None` when any count is beyond [`PLAUSIBLE_TOKENS`]: such a usage is ignored (neither
/// charged nor counted) and the estimate stands.
pub fn plausible_total(u: &Usage) -> Option<u64> {
    let total = u
        .total_tokens
        .max(u.prompt_tokens.saturating_add(u.completion_tokens));
    (total <= PLAUSIBLE_TOKENS).then_some(total)
}

/// Scans an answer for its usage.
#[derive(Debug)]
pub struct UsageTap {
    stream: bool,
    strip: bool,
    framer: SseFramer,
    /// The last event was stripped: a `\n` of its `\r\n` that starts the next one goes too.
    stripped: bool,
    /// A JSON body's chunks, shared rather than copied (usually there is just one).
    parts: Vec<Bytes>,
    seen: usize,
    usage: Option<Usage>,
    overflow: bool,
}

impl UsageTap {
    /// A tap for an SSE stream; `strip` removes the usage-only chunk from the output.
    pub fn stream(strip: bool) -> Self {
        UsageTap {
            stream: true,
            strip,
            ..UsageTap::body()
        }
    }

    /// A tap for a JSON body.
    pub fn body() -> Self {
        UsageTap {
            stream: false,
            strip: false,
            framer: SseFramer::new(),
            stripped: false,
            parts: Vec::new(),
            seen: 0,
            usage: None,
            overflow: false,
        }
    }

    /// Sees one chunk; returns what goes to the client (the chunk itself unless stripping).
    pub fn chunk(&mut self, chunk: Bytes) -> Bytes {
        if !self.stream {
            self.seen += chunk.len();
            if !self.overflow && self.seen <= MAX_SCAN {
                self.parts.push(chunk.clone());
            } else {
                self.overflow = true;
                self.parts.clear();
            }
            return chunk;
        }
        if self.strip {
            return self.strip_usage(chunk);
        }
        // Fast path: no usage object in the chunk and no event left unfinished (chunks carry
        // `"usage":null` on every event when usage was asked for): nothing to look at.
        if names_usage_object(&chunk) || !self.framer.skip_whole(&chunk) {
            let usage = &mut self.usage;
            self.framer.feed(&chunk, |event| {
                inspect(event, usage);
                ControlFlow::Continue(())
            });
        }
        chunk
    }

    /// The chunk's complete events less the usage-only one; an unfinished event waits.
    fn strip_usage(&mut self, chunk: Bytes) -> Bytes {
        // Fast path: whole events with no usage object, nothing held, no `\n` owed to a
        // stripped event: the chunk goes as it is.
        if !self.stripped && !names_usage_object(&chunk) && self.framer.skip_whole(&chunk) {
            return chunk;
        }
        self.framer.push(chunk.clone());
        let mut kept = Kept::new(chunk);
        while let Some(event) = self.framer.next_event() {
            let keep = inspect(event.raw(), &mut self.usage);
            self.pass_on(&event, keep, &mut kept);
        }
        kept.finish()
    }

    /// Adds what goes out of `event` to `kept`. A leading `\n` that completes the previous
    /// event's `\r\n` goes (or not) with that event.
    fn pass_on(&mut self, event: &Event, keep: bool, kept: &mut Kept) {
        let (lead, own) = event.split_lead();
        if !self.stripped {
            kept.add(lead);
        }
        if keep {
            kept.add(own);
        }
        self.stripped = !keep;
    }

    /// What is left to send when the upstream ends (an incomplete trailing event while stripping).
    pub fn flush(&mut self) -> Option<Bytes> {
        if !(self.stream && self.strip) {
            return None;
        }
        let rest = self.framer.take_partial()?;
        let mut kept = Kept::new(rest.raw().clone());
        self.pass_on(&rest, true, &mut kept);
        Some(kept.finish()).filter(|rest| !rest.is_empty())
    }

    /// The usage seen, once the answer is complete.
    pub fn finish(&mut self) -> Option<Usage> {
        if !self.stream && !self.overflow && !self.parts.is_empty() {
            let joined;
            let body: &[u8] = if self.parts.len() == 1 {
                &self.parts[0]
            } else {
                joined = self.parts.concat();
                &joined
            };
            self.usage = usage_in_body(body);
            self.parts.clear();
        }
        self.usage
    }
}

/// Looks at one complete event, keeping the usage it carries; `false` when it is the
/// usage-only chunk (`choices: []`), the one to strip.
fn inspect(event: &[u8], usage: &mut Option<Usage>) -> bool {
    if !names_usage_object(event) {
        return true;
    }
    let data = sse::data(event);
    // The skim reads the usual event as serde_json would (a Responses event's whole answer is
    // passed over sixteen bytes at a time); serde_json reads the rest.
    let chunk = match crate::body::event_usage(&data) {
        Some(read) => read,
        None => match serde_json::from_slice::<ChunkRead>(&data) {
            Ok(read) => EventUsage::from(read),
            Err(_) => return true,
        },
    };
    let nested = chunk.response.or(chunk.message).flatten();
    if let Some(u) = chunk.usage.or(nested) {
        // Anthropic's stream tells it in parts: the input in `message_start`, the output (and
        // in newer versions the input again, final) in `message_delta`: a later count replaces
        // an earlier one, a count left out keeps it. OpenAI's comes in one event.
        let later = |before: u64, now: u64| if now > 0 { now } else { before };
        *usage = Some(match usage.take() {
            Some(before) => Usage {
                prompt_tokens: later(before.prompt_tokens, u.prompt_tokens),
                completion_tokens: later(before.completion_tokens, u.completion_tokens),
                total_tokens: later(before.total_tokens, u.total_tokens),
                prompt_tokens_details: u.prompt_tokens_details.or(before.prompt_tokens_details),
            },
            None => u,
        });
    }
    !(chunk.usage.is_some() && chunk.choices == Some(0))
}

/// Whether `bytes` hold a usage object (`"usage":{` or `"usage": {`), not `"usage":null`:
/// the only events [`inspect`] reads. A stream asked for usage carries `"usage":null` in every
/// chunk, so this runs on every chunk: one `memchr` for `{` (a few in a chunk) and a look
/// behind each (see [`sse::holds`]).
fn names_usage_object(bytes: &[u8]) -> bool {
    const KEY: &[u8] = b"\"usage\":";
    memchr::memchr_iter(b'{', bytes).any(|at| {
        let before = &bytes[..at];
        before.strip_suffix(b" ").unwrap_or(before).ends_with(KEY)
    })
}

/// The top-level `usage` of a JSON answer. OpenAI puts it last, so the search starts from the
/// end and only that object is parsed; the whole body is parsed only if that fails.
fn usage_in_body(body: &[u8]) -> Option<Usage> {
    if let Some(at) = last_usage_name(body) {
        let rest = &body[at + 7..];
        let start = rest
            .iter()
            .position(|b| !matches!(b, b' ' | b'\n' | b'\r' | b'\t' | b':'))?;
        // The skim reads the usual object as serde_json would, in a third of the time.
        if let Some(u) = crate::body::usage(&rest[start..]) {
            return Some(u);
        }
        let mut de = serde_json::Deserializer::from_slice(&rest[start..]);
        if let Ok(u) = <Usage as serde::Deserialize>::deserialize(&mut de) {
            return Some(u);
        }
    }
    serde_json::from_slice::<openai_types::Probe>(body)
        .ok()
        .and_then(|p| p.usage)
}

/// Where the last `"usage"` in `body` starts: a `memrchr` for `u` from the end and a look at
/// each hit. The object is near the end and the names after its `u` (the counts') have none,
/// so this usually stops at the first hit, where a reverse substring search cost some 400
/// instructions an answer.
fn last_usage_name(body: &[u8]) -> Option<usize> {
    memchr::memrchr_iter(b'u', body).find_map(|at| {
        let start = at.checked_sub(1)?;
        body[start..].starts_with(b"\"usage\"").then_some(start)
    })
}

/// The kept events of one chunk joined into one piece: a slice of the chunk while they lie
/// back to back in it, a copy only when an event was cut out or came partly from before.
struct Kept {
    chunk: Bytes,
    /// The kept bytes so far, as a range of `chunk`, until something else is kept.
    run: Option<Range<usize>>,
    copy: BytesMut,
}

impl Kept {
    fn new(chunk: Bytes) -> Self {
        Kept {
            chunk,
            run: None,
            copy: BytesMut::new(),
        }
    }

    fn add(&mut self, piece: Bytes) {
        if piece.is_empty() {
            return;
        }
        let at = (piece.as_ptr() as usize)
            .checked_sub(self.chunk.as_ptr() as usize)
            .filter(|at| at + piece.len() <= self.chunk.len() && self.copy.is_empty());
        match (self.run.as_mut(), at) {
            (Some(run), Some(at)) if run.end == at => run.end += piece.len(),
            (None, Some(at)) => self.run = Some(at..at + piece.len()),
            _ => {
                self.spill();
                self.copy.extend_from_slice(&piece);
            }
        }
    }

    /// Moves the run into the copy buffer.
    fn spill(&mut self) {
        if let Some(run) = self.run.take() {
            self.copy.extend_from_slice(&self.chunk[run]);
        }
    }

    fn finish(mut self) -> Bytes {
        if self.copy.is_empty() {
            return self
                .run
                .map_or_else(Bytes::new, |run| self.chunk.slice(run));
        }
        self.spill();
        self.copy.freeze()
    }
}

/// An event as serde_json reads it, when the skim leaves it (`crate::body::event_usage` reads
/// the same fields).
#[derive(serde::Deserialize)]
pub(crate) struct ChunkRead {
    #[serde(default)]
    usage: Option<Usage>,
    /// A Responses event (`response.completed`, `.incomplete`, `.failed`) carries it here.
    #[serde(default)]
    response: Option<Nested>,
    /// Anthropic's `message_start` carries the input's here.
    #[serde(default)]
    message: Option<Nested>,
    #[serde(default)]
    choices: Option<Vec<serde::de::IgnoredAny>>,
}

impl From<ChunkRead> for EventUsage {
    fn from(read: ChunkRead) -> EventUsage {
        EventUsage {
            usage: read.usage,
            response: read.response.map(|n| n.usage),
            message: read.message.map(|n| n.usage),
            choices: read.choices.map(|c| c.len()),
        }
    }
}

#[derive(serde::Deserialize)]
struct Nested {
    #[serde(default)]
    usage: Option<Usage>,
}

/// The body (a JSON object) with `"stream_options":{"include_usage":true}` appended as its last
/// member, every byte before it unchanged; `None` when that cannot be done safely by a splice:
/// the body mentions `stream_options` anywhere or holds a `\u` escape (a member name could be
/// spelled with one), or does not end with the object's `}`. [`with_include_usage`] does those.
pub fn append_include_usage(body: &[u8]) -> Option<Bytes> {
    static OPTIONS: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"stream_options"));
    static ESCAPE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\\u"));
    if OPTIONS.find(body).is_some() || ESCAPE.find(body).is_some() {
        return None;
    }
    let (last, head) = body.trim_ascii_end().split_last()?;
    if *last != b'}' {
        return None;
    }
    const MEMBER: &[u8] = br#""stream_options":{"include_usage":true}}"#;
    let empty = head.trim_ascii_end().ends_with(b"{");
    let mut out = Vec::with_capacity(head.len() + MEMBER.len() + 1);
    out.extend_from_slice(head);
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(MEMBER);
    Some(Bytes::from(out))
}

/// The body with `stream_options.include_usage = true`; `None` when it is not a JSON object.
pub fn with_include_usage(body: &[u8]) -> Option<Bytes> {
    let mut map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body).ok()?;
    let options = map
        .entry("stream_options")
        .or_insert_with(|| serde_json::json!({}));
    options
        .as_object_mut()?
        .insert("include_usage".into(), serde_json::Value::Bool(true));
    serde_json::to_vec(&map).ok().map(Bytes::from)
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The last `"usage"` is found where a reverse substring search finds it.
        #[test]
        fn the_last_usage_name_is_the_reverse_searchs(
            parts in proptest::collection::vec(proptest::sample::select(vec![
                "\"usage\"", "usage", "\"u", "u", "\"", "x", "{\"usage\":{}}", "sage\"",
            ]), 0..12)
        ) {
            let body = parts.concat();
            let expected = memchr::memmem::rfind(body.as_bytes(), b"\"usage\"");
            proptest::prop_assert_eq!(last_usage_name(body.as_bytes()), expected);
        }
    }

    const USAGE: &str = "data: {\"id\":\"x\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7,\"total_tokens\":12}}\n\n";

    fn run(tap: &mut UsageTap, parts: &[&str]) -> String {
        let mut out = String::new();
        for p in parts {
            out.push_str(std::str::from_utf8(&tap.chunk(Bytes::from(p.to_string()))).unwrap());
        }
        if let Some(rest) = tap.flush() {
            out.push_str(std::str::from_utf8(&rest).unwrap());
        }
        out
    }

    #[test]
    fn finds_usage_split_across_chunks_and_keeps_it_when_asked() {
        let text = format!(
            "data: {{\"choices\":[{{\"delta\":{{}}}}],\"usage\":null}}\n\n{USAGE}data: [DONE]\n\n"
        );
        let (a, b) = text.split_at(60);
        let mut tap = UsageTap::stream(false);
        assert_eq!(run(&mut tap, &[a, b]), text);
        assert_eq!(
            tap.finish(),
            Some(Usage {
                prompt_tokens: 5,
                completion_tokens: 7,
                total_tokens: 12,
                ..Usage::default()
            })
        );
    }

    #[test]
    fn an_anthropic_stream_tells_its_usage_in_parts() {
        let start = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":40,\"output_tokens\":1}}}\n\n";
        let text = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"usage\"}}\n\n";
        // Older versions: the output alone in `message_delta`; newer: the input again, final
        // (the gateway's own Messages stream puts its estimate first, the real count last).
        for (delta, prompt) in [
            ("{\"output_tokens\":9}", 40),
            ("{\"input_tokens\":33,\"output_tokens\":9}", 33),
        ] {
            let end = format!("event: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"end_turn\"}},\"usage\":{delta}}}\n\nevent: message_stop\ndata: {{\"type\":\"message_stop\"}}\n\n");
            let mut tap = UsageTap::stream(false);
            run(&mut tap, &[start, text, &end]);
            let usage = tap.finish().unwrap();
            assert_eq!((usage.prompt_tokens, usage.completion_tokens), (prompt, 9));
        }
    }

    #[test]
    fn strips_the_usage_chunk_the_client_did_not_ask_for() {
        let first = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n";
        let text = format!("{first}{USAGE}data: [DONE]\n\n");
        let mut tap = UsageTap::stream(true);
        let parts: Vec<String> = text
            .as_bytes()
            .chunks(7)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        assert_eq!(run(&mut tap, &parts), format!("{first}data: [DONE]\n\n"));
        assert_eq!(tap.finish().map(|u| u.total_tokens), Some(12));
    }

    /// Every chunking (through `\r\n` pairs too) and both line endings.
    fn chunkings(text: &str) -> Vec<(String, Vec<String>)> {
        let mut all = Vec::new();
        for text in [text.to_owned(), text.replace('\n', "\r\n")] {
            for size in [1, 2, 3, 7, 64, usize::MAX] {
                let parts = text
                    .as_bytes()
                    .chunks(size)
                    .map(|c| String::from_utf8_lossy(c).into_owned())
                    .collect();
                all.push((text.clone(), parts));
            }
        }
        all
    }

    #[test]
    fn any_chunking_and_line_ending_finds_the_usage_and_strips_it_exactly() {
        let first = "event: x\ndata: {\"choices\":[{\"delta\":{}}],\"usage\":null}\n\n";
        let text = format!("{first}{USAGE}data: [DONE]\n\n");
        for (text, parts) in chunkings(&text) {
            let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
            let mut keep = UsageTap::stream(false);
            assert_eq!(run(&mut keep, &parts), text);
            assert_eq!(keep.finish().map(|u| u.total_tokens), Some(12), "{parts:?}");
            let mut strip = UsageTap::stream(true);
            let usage = USAGE.replace('\n', if text.contains('\r') { "\r\n" } else { "\n" });
            assert_eq!(
                run(&mut strip, &parts),
                text.replace(&usage, ""),
                "{parts:?}"
            );
            assert_eq!(strip.finish().map(|u| u.total_tokens), Some(12));
        }
    }

    #[test]
    fn stripping_passes_whole_events_on_without_a_copy() {
        let mut tap = UsageTap::stream(true);
        let chunk = Bytes::from_static(b"data: {\"choices\":[]}\n\ndata: 2\n\n");
        let out = tap.chunk(chunk.clone());
        assert_eq!((out.as_ptr(), out.len()), (chunk.as_ptr(), chunk.len()));
        let out = tap.chunk(Bytes::from_static(b"data: 3\n\ndata: unfinished"));
        assert_eq!(out, "data: 3\n\n");
        assert_eq!(tap.flush().as_deref(), Some(&b"data: unfinished"[..]));
        assert_eq!(tap.flush(), None);
    }

    #[test]
    fn reads_usage_from_a_json_body() {
        let mut tap = UsageTap::body();
        tap.chunk(Bytes::from_static(b"{\"usage\":{\"prompt_tokens\":1,"));
        tap.chunk(Bytes::from_static(
            b"\"completion_tokens\":2,\"total_tokens\":3}}",
        ));
        assert_eq!(tap.finish().map(|u| u.total_tokens), Some(3));
    }

    #[test]
    fn finds_usage_at_the_end_or_anywhere() {
        let last = br#"{"id":"x","choices":[{"message":{"content":"the \"usage\": field"}}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#;
        assert_eq!(usage_in_body(last).map(|u| u.total_tokens), Some(3));
        let first = br#"{"usage": {"prompt_tokens":4,"completion_tokens":5,"total_tokens":9},"choices":[]}"#;
        assert_eq!(usage_in_body(first).map(|u| u.total_tokens), Some(9));
        assert_eq!(usage_in_body(br#"{"choices":[]}"#), None);
    }

    #[test]
    fn usage_beyond_plausible_is_not_a_number_to_charge() {
        let usage = |prompt_tokens, completion_tokens, total_tokens| Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens,
            ..Usage::default()
        };
        assert_eq!(plausible_total(&usage(5, 7, 12)), Some(12));
        assert_eq!(
            plausible_total(&usage(5, 7, 0)),
            Some(12),
            "a missing total"
        );
        assert_eq!(
            plausible_total(&usage(0, 0, PLAUSIBLE_TOKENS)),
            Some(PLAUSIBLE_TOKENS)
        );
        assert_eq!(plausible_total(&usage(5, 7, u64::MAX)), None);
        assert_eq!(
            plausible_total(&usage(u64::MAX, u64::MAX, 12)),
            None,
            "no wrap"
        );
        assert_eq!(plausible_total(&usage(PLAUSIBLE_TOKENS, 1, 0)), None);
    }

    #[test]
    fn injects_include_usage() {
        let body =
            with_include_usage(br#"{"model":"m","stream":true,"stream_options":{"x":1}}"#).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v["stream_options"],
            serde_json::json!({"x": 1, "include_usage": true})
        );
    }
}
