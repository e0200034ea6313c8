//! SSE handling: the first-event peek that lets a failed stream be retried before the client
//! saw a byte, and the guarded pass-through that turns a later failure into an OpenAI-shaped
//! error event (never a silent truncation, never a hang).

use crate::sse::{self, Scanner, SseFramer};
use crate::upstream::{BodyStream, UpstreamError};
use crate::usage::UsageTap;
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use memchr::memmem::Finder;
use openai_types::Usage;
use std::sync::LazyLock;
use std::time::Duration;
use tokio::time::Instant;

/// Largest prefix buffered while waiting for the first event; past it the stream counts as started.
const MAX_PEEK: usize = 1 << 20;

/// How long a Messages stream may be silent before its client gets a `ping` (Anthropic's own
/// keep-alive); the upstream's silence still ends the stream at the idle timeout.
pub const PING_EVERY: Duration = Duration::from_secs(10);

/// What the first real event of a stream said.
#[derive(Debug)]
pub enum FirstEvent {
    /// A normal event: `prefix` holds every byte read so far.
    Data(Bytes),
    /// An error event (OpenAI's `{"error":…}` chunk or `event: error`); its JSON data.
    Error(Bytes),
    /// The stream ended before any real event.
    Ended,
}

/// Reads until the first event that carries data (comments and `ping` are skipped), or `deadline`.
pub async fn peek_first_event(
    body: &mut BodyStream,
    deadline: Instant,
) -> Result<FirstEvent, UpstreamError> {
    let mut buf = BytesMut::new();
    let mut scanner = Scanner::new();
    loop {
        while let Some(event) = scanner.next_event(&buf) {
            match inspect_event(event) {
                EventKind::Skip => continue,
                EventKind::Error(json) => return Ok(FirstEvent::Error(json)),
                EventKind::Data => return Ok(FirstEvent::Data(buf.freeze())),
            }
        }
        if buf.len() > MAX_PEEK {
            return Ok(FirstEvent::Data(buf.freeze()));
        }
        match tokio::time::timeout_at(deadline, body.next()).await {
            Err(_) => return Err(UpstreamError::Timeout("first stream event")),
            Ok(None) => return Ok(FirstEvent::Ended),
            Ok(Some(Err(e))) => return Err(e),
            Ok(Some(Ok(chunk))) => buf.extend_from_slice(&chunk),
        }
    }
}

enum EventKind {
    /// Nothing the client must see before the gateway commits: comments, `ping`, metadata
    /// (`response.created`), an empty first chunk. Held in the prefix, sent on commit.
    Skip,
    /// The first real output: the commit point.
    Data,
    /// A failure before the commit point, its JSON data.
    Error(Bytes),
}

/// Responses and Anthropic events that precede any output: held until the first delta, so a
/// failure that follows them (a rate limit arrives after `response.created`) is still a failed
/// attempt the gateway can retry.
const HELD_EVENTS: [&[u8]; 9] = [
    b"response.created",
    b"response.in_progress",
    b"response.queued",
    b"response.output_item.added",
    b"response.content_part.added",
    b"response.reasoning_summary_part.added",
    b"message_start",
    b"content_block_start",
    b"ping",
];

/// Events that are failures whatever their data says.
const ERROR_EVENTS: [&[u8]; 2] = [b"error", b"response.failed"];

fn inspect_event(event: &[u8]) -> EventKind {
    let data = sse::data(event);
    let name = event_name(event, &data);
    if data.is_empty() {
        return EventKind::Skip;
    }
    if let Some(name) = name {
        if ERROR_EVENTS.contains(&name) {
            return EventKind::Error(Bytes::copy_from_slice(&data));
        }
        if HELD_EVENTS.contains(&name) {
            return EventKind::Skip;
        }
    }
    static ERROR: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"error\""));
    if data.first() == Some(&b'{') && ERROR.find(&data).is_some() {
        if let Ok(probe) = serde_json::from_slice::<openai_types::Probe>(&data) {
            if probe.error.is_some() {
                return EventKind::Error(Bytes::copy_from_slice(&data));
            }
        }
    }
    if name.is_none() && is_empty_chat_chunk(&data) {
        return EventKind::Skip;
    }
    EventKind::Data
}

/// An event's name: its `event:` line, else the `type` its data starts with.
fn event_name<'a>(event: &'a [u8], data: &'a [u8]) -> Option<&'a [u8]> {
    sse::name(event)
        .map(<[u8]>::trim_ascii)
        .filter(|n| !n.is_empty())
        .or_else(|| json_type(data))
}

/// The `type` of an event whose data starts with it (`{"type":"response.created",…}`), for
/// servers that send Responses events without an `event:` line.
fn json_type(data: &[u8]) -> Option<&[u8]> {
    let rest = data.strip_prefix(b"{\"type\":\"")?;
    let end = memchr::memchr(b'"', rest)?;
    Some(&rest[..end])
}

/// A chat chunk that carries no output yet: every choice's delta holds only a role (or
/// nothing), no finish reason (the role-only first chunk, Azure's `choices: []` filter chunk).
fn is_empty_chat_chunk(data: &[u8]) -> bool {
    // Most first chunks after the role-only one carry text: a `"content":"` followed by
    // anything but its closing quote is output, found without a parse. (A quote inside a
    // string is escaped, so this is a key; a mistaken match only commits a stream early.)
    static CONTENT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"content\":\""));
    if let Some(at) = CONTENT.find(data) {
        if data
            .get(at + CONTENT.needle().len())
            .is_some_and(|&b| b != b'"')
        {
            return false;
        }
    }
    #[derive(serde::Deserialize)]
    struct Chunk<'a> {
        #[serde(borrow)]
        choices: Option<Vec<Choice<'a>>>,
        #[serde(default)]
        usage: Option<serde::de::IgnoredAny>,
    }
    #[derive(serde::Deserialize)]
    struct Choice<'a> {
        #[serde(default)]
        delta: Option<QuietDelta>,
        #[serde(default)]
        text: Option<&'a str>,
        #[serde(default)]
        finish_reason: Option<&'a str>,
    }
    let Ok(chunk) = serde_json::from_slice::<Chunk<'_>>(data) else {
        return false;
    };
    if chunk.usage.is_some() {
        return false;
    }
    let quiet = |c: &Choice<'_>| {
        c.finish_reason.is_none()
            && c.text.is_none_or(str::is_empty)
            && c.delta.as_ref().is_none_or(|d| d.0)
    };
    chunk.choices.is_some_and(|c| c.iter().all(quiet))
}

/// Whether a chat delta carries no output: each of its fields is the `role`, or null, `""` or
/// `[]`. Decided while it is read, nothing kept (this runs on the first chunks of every stream).
struct QuietDelta(bool);

impl<'de> serde::Deserialize<'de> for QuietDelta {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::{MapAccess, Visitor};
        use serde_json::value::RawValue;
        /// A field name, read only to ask whether it is `role`.
        struct IsRole(bool);
        impl<'de> serde::Deserialize<'de> for IsRole {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Name;
                impl Visitor<'_> for Name {
                    type Value = IsRole;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("a field name")
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<IsRole, E> {
                        Ok(IsRole(v == "role"))
                    }
                }
                d.deserialize_str(Name)
            }
        }
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = QuietDelta;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a delta object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<QuietDelta, A::Error> {
                let mut quiet = true;
                while let Some(IsRole(role)) = map.next_key()? {
                    let value: &'de RawValue = map.next_value()?;
                    quiet &= role || matches!(value.get(), "null" | "\"\"" | "[]");
                }
                Ok(QuietDelta(quiet))
            }
        }
        deserializer.deserialize_map(Fields)
    }
}

/// The SSE event a client gets when its stream fails after the first byte: the official SDKs
/// raise an exception on a chunk with an `error` key.
pub fn error_event(message: &str, code: &str) -> Bytes {
    let envelope = openai_types::ErrorEnvelope::new(message, "server_error", None, Some(code));
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(&envelope.to_json());
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// The event a Responses client gets when its stream fails after the commit point: a
/// `response.failed` whose `response.error` says why (Codex and the SDKs treat it as a failed
/// turn, never as a complete one).
pub fn responses_failed_event(message: &str, code: &str, id: Option<&str>) -> Bytes {
    let event = serde_json::json!({
        "type": "response.failed",
        "response": {
            "id": id.unwrap_or("resp_tollgate"),
            "object": "response",
            "status": "failed",
            "output": [],
            "error": {"code": code, "message": message},
        },
    });
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"event: response.failed\ndata: ");
    out.extend_from_slice(event.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// What marks a stream's honest end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseEnd {
    /// Nothing: the upstream closing the stream is its end.
    Close,
    /// A `data: [DONE]` event (Chat Completions, Completions).
    Done,
    /// A terminal Responses event (`response.completed`, `response.incomplete`,
    /// `response.failed`) or an `error` event.
    Terminal,
    /// Anthropic's `message_stop`, or an `error` event (the Messages API in front).
    MessageStop,
}

/// Watches a stream's events for its honest end, and bounds the event being read: decided on
/// parsed events (the one SSE framer), never on a text search (a `data: [DONE]` inside a
/// chunk's content is not the end). Chunks without any sign of the end pass unframed.
struct EndWatch {
    end: SseEnd,
    framer: SseFramer,
    seen: bool,
    max_event: usize,
    /// The Responses stream's id, once an event named it (for the failure event).
    response_id: Option<String>,
}

/// The event a chunk was cut in is larger than `max_event`.
struct Oversize;

/// The events that end a Messages stream.
const MESSAGE_END: [&[u8]; 2] = [b"message_stop", b"error"];

const TERMINAL: [&[u8]; 4] = [
    b"response.completed",
    b"response.incomplete",
    b"response.failed",
    b"error",
];

impl EndWatch {
    fn new(end: SseEnd, max_event: usize) -> Self {
        EndWatch {
            end,
            framer: SseFramer::new(),
            seen: end == SseEnd::Close,
            max_event,
            response_id: None,
        }
    }

    fn see(&mut self, chunk: &[u8]) -> Result<(), Oversize> {
        if self.seen && self.end != SseEnd::Close {
            return Ok(());
        }
        // Searchers built once: building one per chunk cost more than the search.
        static ERROR: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"error"));
        static MESSAGE_STOP: LazyLock<Finder<'static>> =
            LazyLock::new(|| Finder::new(b"message_stop"));
        // A hint that the chunk may hold the end: a false one costs a framing, a missed one
        // would cut an honest stream, so each finds its names wherever they are in the chunk.
        let hint = match self.end {
            SseEnd::Close => false,
            SseEnd::Done => sse::holds(chunk, b"[DONE]"),
            SseEnd::Terminal => {
                self.response_id.is_none()
                    || names_terminal_response(chunk)
                    || ERROR.find(chunk).is_some()
            }
            SseEnd::MessageStop => {
                MESSAGE_STOP.find(chunk).is_some() || ERROR.find(chunk).is_some()
            }
        };
        if !hint && self.framer.skip_whole(chunk) {
            return Ok(());
        }
        let (end, seen, id) = (self.end, &mut self.seen, &mut self.response_id);
        self.framer.feed(chunk, |event| {
            *seen |= is_end(end, event, id);
            std::ops::ControlFlow::Continue(())
        });
        if self.framer.pending() > self.max_event {
            self.framer = SseFramer::new();
            return Err(Oversize);
        }
        Ok(())
    }
}

/// Whether `chunk` holds `response.completed`, `response.incomplete` or `response.failed`:
/// one `memchr` for `.` (a few in each Responses event) and a look on both sides of each.
fn names_terminal_response(chunk: &[u8]) -> bool {
    memchr::memchr_iter(b'.', chunk).any(|at| {
        let after = &chunk[at + 1..];
        chunk[..at].ends_with(b"response")
            && [&b"completed"[..], b"incomplete", b"failed"]
                .iter()
                .any(|name| after.starts_with(name))
    })
}

/// Whether `event` ends a stream of this kind; notes a Responses stream's id on the way.
fn is_end(end: SseEnd, event: &[u8], id: &mut Option<String>) -> bool {
    match end {
        SseEnd::Close => false,
        SseEnd::Done => sse::data(event).trim_ascii() == b"[DONE]",
        SseEnd::Terminal => {
            let data = sse::data(event);
            let name = event_name(event, &data);
            if id.is_none() {
                *id = response_id(&data);
            }
            name.is_some_and(|n| TERMINAL.contains(&n))
        }
        SseEnd::MessageStop => {
            let data = sse::data(event);
            event_name(event, &data).is_some_and(|n| MESSAGE_END.contains(&n))
        }
    }
}

/// The id of the Responses answer whose first bytes are `head`: the `response.id` of the
/// first event that names one (`response.created`) in a stream, the top-level `id` of a
/// plain answer.
pub fn response_id_in(head: &[u8], sse: bool) -> Option<String> {
    if !sse {
        #[derive(serde::Deserialize)]
        struct Plain {
            id: Option<String>,
        }
        return serde_json::from_slice::<Plain>(head).ok()?.id;
    }
    let mut scanner = Scanner::new();
    std::iter::from_fn(|| scanner.next_event(head)).find_map(|event| response_id(&sse::data(event)))
}

/// The top-level `id` of a stream's first event (a chat completion chunk's `chatcmpl-…`).
pub fn first_event_id(head: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Chunk {
        id: Option<String>,
    }
    let mut scanner = Scanner::new();
    let event = scanner.next_event(head)?;
    serde_json::from_slice::<Chunk>(&sse::data(event)).ok()?.id
}

/// The `response.id` of a Responses event, read from its data.
fn response_id(data: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Event {
        response: Option<Id>,
    }
    #[derive(serde::Deserialize)]
    struct Id {
        id: Option<String>,
    }
    serde_json::from_slice::<Event>(data).ok()?.response?.id
}

/// How a stream ended, reported once to `on_end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// Completed normally.
    Complete,
    /// Upstream connection broke.
    Broken,
    /// No chunk within the idle timeout.
    Idle,
    /// Closed without the final `[DONE]` (or terminal Responses event).
    Truncated,
    /// An event larger than `server.max_event`.
    Oversized,
    /// The client left before the end: not the upstream's failure.
    Cancelled,
}

impl StreamEnd {
    /// Every end but a complete one.
    pub const FAILURES: [StreamEnd; 4] = [
        StreamEnd::Broken,
        StreamEnd::Idle,
        StreamEnd::Truncated,
        StreamEnd::Oversized,
    ];

    /// Closed-set label.
    pub fn label(self) -> &'static str {
        match self {
            StreamEnd::Complete => "complete",
            StreamEnd::Broken => "broken",
            StreamEnd::Idle => "idle_timeout",
            StreamEnd::Truncated => "truncated",
            StreamEnd::Oversized => "event_too_large",
            StreamEnd::Cancelled => "client_cancelled",
        }
    }
}

/// The most a write gathers from chunks the upstream has ready.
const MAX_WRITE: usize = 64 * 1024;

/// A wait for the upstream's next chunk shorter than this is a burst's (the upstream
/// connection's turn), not a trickling stream's.
const BURST_GAP: Duration = Duration::from_micros(200);

/// Chunks taken from the upstream to go out in one write: the first as it came, copied into
/// one buffer once a second joins it.
struct Gather {
    first: Bytes,
    merged: Option<BytesMut>,
}

impl Gather {
    fn new(first: Bytes) -> Self {
        Gather {
            first,
            merged: None,
        }
    }

    fn len(&self) -> usize {
        self.merged.as_ref().map_or(self.first.len(), BytesMut::len)
    }

    fn push(&mut self, more: &[u8]) {
        let first = &self.first;
        self.merged
            .get_or_insert_with(|| {
                let mut merged =
                    BytesMut::with_capacity((4 * (first.len() + more.len())).max(4096));
                merged.extend_from_slice(first);
                merged
            })
            .extend_from_slice(more);
    }

    fn finish(self) -> Bytes {
        self.merged.map_or(self.first, BytesMut::freeze)
    }
}

struct Guard<F: FnOnce(StreamEnd, Option<Usage>) + Send> {
    body: BodyStream,
    idle: Duration,
    /// The stream's end and event bound (`None` for a body that is not an SSE stream).
    watch: Option<EndWatch>,
    /// An event grew past `max_event`: the stream ends with an error.
    oversized: bool,
    tap: Option<UsageTap>,
    /// Bytes still expected when the upstream declared a length: a client that stops reading
    /// at that point (hyper does) has the whole answer.
    remaining: Option<u64>,
    on_end: Option<F>,
    /// One idle timer for the whole body; it also wakes the stream for a keep-alive. It is
    /// moved only when it fires or would fire too late, never per chunk: a deadline that has
    /// gone stale (chunks kept coming) is pushed on to `due` when it fires.
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// When the current wait next needs a look (its idle deadline, or a keep-alive).
    due: Instant,
    /// The waker the timer was last polled with, while the timer holds it (cleared when the
    /// timer is reset or fires): polls that change nothing are skipped.
    timer_waker: Option<std::task::Waker>,
    /// What a silent stream sends its client every [`PING_EVERY`] (a Messages `ping`).
    keep_alive: Option<&'static [u8]>,
    /// When the wait for the upstream's next chunk began.
    quiet_since: Instant,
    /// What the upstream said after the chunks coalesced into the last write (end or error).
    stash: Option<Option<Result<Bytes, UpstreamError>>>,
}

impl<F: FnOnce(StreamEnd, Option<Usage>) + Send> Guard<F> {
    fn finish(&mut self, end: StreamEnd) {
        if let Some(f) = self.on_end.take() {
            let usage = self.tap.as_mut().and_then(UsageTap::finish);
            f(end, usage);
        }
    }

    fn complete(&self) -> bool {
        self.watch.as_ref().is_none_or(|w| w.seen)
    }

    /// Whether the stream's last event (`[DONE]`, a terminal Responses event) went out.
    fn ended_honestly(&self) -> bool {
        self.watch
            .as_ref()
            .is_some_and(|w| w.end != SseEnd::Close && w.seen)
    }

    fn pass(&mut self, chunk: Bytes) -> Bytes {
        if let Some(watch) = self.watch.as_mut() {
            if watch.see(&chunk).is_err() {
                self.oversized = true;
                return Bytes::new();
            }
        }
        let len = chunk.len() as u64;
        let out = match self.tap.as_mut() {
            Some(tap) => tap.chunk(chunk),
            None => chunk,
        };
        if let Some(remaining) = self.remaining.as_mut() {
            *remaining = remaining.saturating_sub(len);
            if *remaining == 0 {
                self.finish(StreamEnd::Complete);
            }
        }
        out
    }

    /// Appends to `held` the chunks the upstream body has ready now (up to [`MAX_WRITE`]); an
    /// end or error seen meanwhile is kept for the next turn. Whether it added any.
    fn gather(&mut self, held: &mut Gather) -> bool {
        use futures_util::FutureExt;
        let mut more = false;
        while held.len() < MAX_WRITE {
            match self.body.next().now_or_never() {
                None => break,
                Some(Some(Ok(chunk))) => {
                    held.push(&chunk);
                    more = true;
                }
                Some(other) => {
                    self.stash = Some(other);
                    break;
                }
            }
        }
        more
    }

    /// Polls the idle timer; a poll is skipped while the timer has not fired and holds a
    /// waker of the same task (the body is polled several times for every chunk, and a poll
    /// that registers the same waker again is most of a waiting poll's cost).
    fn poll_timer(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        use std::future::Future;
        let holds_ours = self
            .timer_waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()));
        if holds_ours && !self.timer.is_elapsed() {
            return std::task::Poll::Pending;
        }
        let polled = self.timer.as_mut().poll(cx);
        match polled {
            std::task::Poll::Pending if !holds_ours => {
                self.timer_waker = Some(cx.waker().clone());
            }
            std::task::Poll::Pending => {}
            std::task::Poll::Ready(()) => self.timer_waker = None,
        }
        polled
    }

    /// Moves the idle timer's deadline; the next wait polls it again.
    fn reset_timer(&mut self, at: Instant) {
        self.timer.as_mut().reset(at);
        self.timer_waker = None;
    }

    fn flush(&mut self) -> Option<Bytes> {
        self.tap.as_mut().and_then(UsageTap::flush)
    }

    /// When the wait that began at `quiet_since` next needs a look: its idle deadline, or the
    /// next keep-alive before it.
    fn next_wake(&self, now: Instant) -> Instant {
        let idle = self.quiet_since + self.idle;
        match self.keep_alive {
            Some(_) if PING_EVERY < self.idle => idle.min(now + PING_EVERY),
            _ => idle,
        }
    }

    /// The keep-alive to send now, if the stream has one and stands between two events (never
    /// inside an upstream event that is still arriving) and has not ended.
    fn ping(&self) -> Option<&'static [u8]> {
        let between = self
            .watch
            .as_ref()
            .is_some_and(|w| !w.seen && w.framer.is_empty());
        self.keep_alive.filter(|_| between)
    }
}

/// How a guarded body reports a failure to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// An SSE stream: a failure appends an error event the client's SDK raises (a chat error
    /// chunk, or a `response.failed` for the Responses API); an end without the endpoint's
    /// final event counts as a failure too; an event over `max_event` bytes ends it.
    Sse {
        /// What marks the honest end.
        end: SseEnd,
        /// Largest event, in bytes.
        max_event: usize,
    },
    /// Any other body: a failure aborts the response (the client sees a broken transfer).
    Raw {
        /// The upstream's `content-length`, when it sent one.
        length: Option<u64>,
    },
}

/// Passes `prefix` then the rest of `body` through, ending it cleanly on a break or an idle
/// gap longer than `idle` (see `Framing`). `tap` reads (and may strip) the usage; `on_end`
/// runs once with the usage seen, when the body ends or the client goes away (`Broken` then).
pub fn guard<F>(
    prefix: Bytes,
    body: BodyStream,
    idle: Duration,
    framing: Framing,
    tap: Option<UsageTap>,
    on_end: F,
) -> Guarded<F>
where
    F: FnOnce(StreamEnd, Option<Usage>) + Send + Unpin + 'static,
{
    let (watch, remaining) = match framing {
        Framing::Raw { length } => (None, length),
        Framing::Sse { end, max_event } => (Some(EndWatch::new(end, max_event)), None),
    };
    let keep_alive = match framing {
        Framing::Sse {
            end: SseEnd::MessageStop,
            ..
        } => Some(crate::provider::messages::PING),
        _ => None,
    };
    // One clock read for the timer, its deadline and the wait's start.
    let now = Instant::now();
    let mut guard = Guard {
        body,
        idle,
        watch,
        oversized: false,
        tap,
        remaining,
        on_end: Some(on_end),
        timer: Box::pin(tokio::time::sleep_until(now + idle)),
        due: now + idle,
        timer_waker: None,
        keep_alive,
        quiet_since: now,
        stash: None,
    };
    let prefix = guard.pass(prefix);
    Guarded {
        head: (!prefix.is_empty()).then_some(prefix),
        guard: Some(guard),
        framing,
        waiting: false,
        waited: false,
        held: None,
        bursting: true,
        idle_yields: 0,
    }
}

/// The guarded body (see [`guard`]): a stream polled in place, its state never moved between
/// chunks.
pub struct Guarded<F: FnOnce(StreamEnd, Option<Usage>) + Send> {
    /// The events already read, sent first.
    head: Option<Bytes>,
    /// `None` once the body has ended.
    guard: Option<Guard<F>>,
    framing: Framing,
    /// A wait for the next chunk is under way (its idle deadline is set).
    waiting: bool,
    /// That wait found the upstream body not ready at least once.
    waited: bool,
    /// Chunks taken and not yet handed on while the task yields: the upstream connection (a
    /// task of its own, which hands its body over one chunk at a time) then decodes what it has
    /// already read, and a burst goes out in one write, not one write per event. Handed on once
    /// two yields in a row found nothing more, at [`MAX_WRITE`], or at the body's end.
    held: Option<Gather>,
    /// The last yield found more of the body (or none was made yet): a chunk that had to be
    /// waited for is held too. Else it goes on at once, as a trickling stream's chunks do.
    bursting: bool,
    /// Yields in a row that found nothing more while `held`.
    idle_yields: u8,
}

impl<F> Stream for Guarded<F>
where
    F: FnOnce(StreamEnd, Option<Usage>) + Send + Unpin,
{
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = self.get_mut();
        if let Some(head) = this.head.take() {
            return Poll::Ready(Some(Ok(head)));
        }
        let Some(g) = this.guard.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(mut held) = this.held.take() {
            // Back from a yield: what the upstream decoded meanwhile joins the write. Handing
            // over a chunk takes the upstream connection two turns, so the write goes once two
            // yields in a row found nothing.
            match g.gather(&mut held) {
                true => this.idle_yields = 0,
                false => this.idle_yields += 1,
            }
            if this.idle_yields < 2 && held.len() < MAX_WRITE && g.stash.is_none() {
                this.held = Some(held);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            this.bursting = this.idle_yields < 2;
            return Poll::Ready(Some(Ok(g.pass(held.finish()))));
        }
        let next = match g.stash.take() {
            _ if g.oversized => Ok(None),
            Some(stashed) => Ok(stashed),
            None => {
                if !this.waiting {
                    let now = Instant::now();
                    g.quiet_since = now;
                    g.due = g.next_wake(now);
                    if g.due < g.timer.deadline() {
                        g.reset_timer(g.due);
                    }
                    this.waiting = true;
                    this.waited = false;
                }
                match g.body.poll_next_unpin(cx) {
                    Poll::Ready(next) => Ok(next),
                    Poll::Pending => loop {
                        this.waited = true;
                        match g.poll_timer(cx) {
                            Poll::Pending => return Poll::Pending,
                            Poll::Ready(()) => {
                                let now = Instant::now();
                                if now < g.due {
                                    // A deadline set for an earlier wait: on to this one's.
                                    g.reset_timer(g.due);
                                    continue;
                                }
                                if now >= g.quiet_since + g.idle {
                                    break Err(());
                                }
                                // A keep-alive wake: a ping where one fits, and the next wake.
                                g.due = g.next_wake(now);
                                g.reset_timer(g.due);
                                if let Some(ping) = g.ping() {
                                    return Poll::Ready(Some(Ok(Bytes::from_static(ping))));
                                }
                            }
                        }
                    },
                }
            }
        };
        this.waiting = false;
        let (end, message, code) = match next {
            Ok(Some(Ok(chunk))) => {
                // A trickling stream's chunk goes on at once: a look behind it would cost a poll
                // of the upstream body, and a yield, for every chunk. One waited for only
                // briefly is taken for the start of a burst.
                if this.waited && !this.bursting && g.quiet_since.elapsed() >= BURST_GAP {
                    return Poll::Ready(Some(Ok(g.pass(chunk))));
                }
                // A chunk that was there at once, or one of a burst, may have more behind it:
                // what is ready now joins it, and yields let the upstream connection hand over
                // the rest (its wake-up comes before ours).
                let mut held = Gather::new(chunk);
                g.gather(&mut held);
                if held.len() < MAX_WRITE && g.stash.is_none() {
                    this.held = Some(held);
                    this.idle_yields = 0;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                return Poll::Ready(Some(Ok(g.pass(held.finish()))));
            }
            Ok(None) if g.oversized => (
                StreamEnd::Oversized,
                "upstream sent a stream event larger than the gateway's limit".to_owned(),
                "stream_event_too_large",
            ),
            // After the protocol's last event, a break or a silence ends nothing the client is
            // owed: no error event follows a complete answer.
            Ok(None) if g.complete() => return Poll::Ready(this.end_complete()),
            Ok(Some(Err(_))) | Err(_) if g.ended_honestly() => {
                return Poll::Ready(this.end_complete())
            }
            Ok(None) => (
                StreamEnd::Truncated,
                "upstream closed the stream before it completed".to_owned(),
                "stream_truncated",
            ),
            Ok(Some(Err(e))) => (
                StreamEnd::Broken,
                format!("upstream stream failed: {e}"),
                "stream_broken",
            ),
            Err(_) => {
                let msg = format!("upstream sent nothing for {}s", g.idle.as_secs_f64());
                (StreamEnd::Idle, msg, "stream_idle_timeout")
            }
        };
        g.finish(end);
        let last = match (this.framing, g.watch.as_ref()) {
            (
                Framing::Sse {
                    end: SseEnd::Terminal,
                    ..
                },
                Some(w),
            ) => Ok(responses_failed_event(
                &message,
                code,
                w.response_id.as_deref(),
            )),
            (
                Framing::Sse {
                    end: SseEnd::MessageStop,
                    ..
                },
                _,
            ) => {
                let kind = match end {
                    StreamEnd::Idle => "timeout_error",
                    _ => "api_error",
                };
                Ok(crate::provider::messages::error_event(kind, &message))
            }
            (Framing::Sse { .. }, _) => Ok(error_event(&message, code)),
            (Framing::Raw { .. }, _) => Err(std::io::Error::other(message)),
        };
        this.guard = None;
        Poll::Ready(Some(last))
    }
}

/// The guarded body as an HTTP body, one layer (no stream adapter between it and the server).
impl<F> http_body::Body for Guarded<F>
where
    F: FnOnce(StreamEnd, Option<Usage>) + Send + Unpin,
{
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        Stream::poll_next(self, cx).map(|next| next.map(|chunk| chunk.map(http_body::Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none() && self.held.is_none() && self.guard.is_none()
    }
}

impl<F: FnOnce(StreamEnd, Option<Usage>) + Send> Guarded<F> {
    /// The honest end: what the usage tap still holds, and `on_end` with `Complete`.
    fn end_complete(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        let mut g = self.guard.take()?;
        let rest = g.flush();
        g.finish(StreamEnd::Complete);
        rest.map(Ok)
    }
}

impl<F: FnOnce(StreamEnd, Option<Usage>) + Send> Drop for Guard<F> {
    /// Dropped before its end: the client stopped reading.
    fn drop(&mut self) {
        self.finish(StreamEnd::Cancelled);
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod fuzz;
