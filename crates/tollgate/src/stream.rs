//! SSE handling: the first-event peek that lets a failed stream be retried before the client
//! saw a byte, and the guarded pass-through that turns a later failure into an OpenAI-shaped
//! error event (never a silent truncation, never a hang).

use crate::sse::{self, Scanner};
use crate::upstream::{BodyStream, UpstreamError};
use crate::usage::UsageTap;
use bytes::{Bytes, BytesMut};
use futures_util::{stream, Stream, StreamExt};
use openai_types::Usage;
use std::time::Duration;
use tokio::time::Instant;

/// Largest prefix buffered while waiting for the first event; past it the stream counts as started.
const MAX_PEEK: usize = 1 << 20;

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
    Skip,
    Data,
    Error(Bytes),
}

fn inspect_event(event: &[u8]) -> EventKind {
    let name = sse::name(event).map_or(&b""[..], <[u8]>::trim_ascii);
    let data = sse::data(event);
    if data.is_empty() || name == b"ping" {
        return EventKind::Skip;
    }
    if name == b"error" {
        return EventKind::Error(Bytes::from(data.into_owned()));
    }
    if data.first() == Some(&b'{') && memchr::memmem::find(&data, b"\"error\"").is_some() {
        if let Ok(probe) = serde_json::from_slice::<openai_types::Probe>(&data) {
            if probe.error.is_some() {
                return EventKind::Error(Bytes::from(data.into_owned()));
            }
        }
    }
    EventKind::Data
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

/// How a stream ended, reported once to `on_end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// Completed normally.
    Complete,
    /// Upstream connection broke.
    Broken,
    /// No chunk within the idle timeout.
    Idle,
    /// Closed without the final `[DONE]`.
    Truncated,
}

impl StreamEnd {
    /// Closed-set label.
    pub fn label(self) -> &'static str {
        match self {
            StreamEnd::Complete => "complete",
            StreamEnd::Broken => "broken",
            StreamEnd::Idle => "idle_timeout",
            StreamEnd::Truncated => "truncated",
        }
    }
}

struct Guard<F: FnOnce(StreamEnd, Option<Usage>) + Send> {
    body: BodyStream,
    idle: Duration,
    expect_done: bool,
    saw_done: bool,
    tail: [u8; 8],
    tap: Option<UsageTap>,
    /// Bytes still expected when the upstream declared a length: a client that stops reading
    /// at that point (hyper does) has the whole answer.
    remaining: Option<u64>,
    on_end: Option<F>,
    /// One idle timer for the whole body, pushed forward on every chunk (no timer per chunk).
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
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

    fn pass(&mut self, chunk: Bytes) -> Bytes {
        self.track_done(&chunk);
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

    /// Appends the chunks the upstream already has ready, so several SSE events go out in one
    /// write (up to 64 KiB); an end or error seen meanwhile is kept for the next turn.
    fn coalesce(&mut self, first: Bytes) -> Bytes {
        use futures_util::FutureExt;
        let mut merged: Option<BytesMut> = None;
        while merged.as_ref().map_or(first.len(), BytesMut::len) < 64 * 1024 {
            match self.body.next().now_or_never() {
                None => break,
                Some(Some(Ok(more))) => merged
                    .get_or_insert_with(|| BytesMut::from(&first[..]))
                    .extend_from_slice(&more),
                Some(other) => {
                    self.stash = Some(other);
                    break;
                }
            }
        }
        merged.map_or(first, BytesMut::freeze)
    }

    fn flush(&mut self) -> Option<Bytes> {
        self.tap.as_mut().and_then(UsageTap::flush)
    }

    fn track_done(&mut self, chunk: &[u8]) {
        if self.saw_done || !self.expect_done {
            return;
        }
        let head = chunk.len().min(8);
        let mut window = [0u8; 16];
        window[..8].copy_from_slice(&self.tail);
        window[8..8 + head].copy_from_slice(&chunk[..head]);
        if memchr::memmem::find(chunk, b"[DONE]").is_some()
            || memchr::memmem::find(&window[..8 + head], b"[DONE]").is_some()
        {
            self.saw_done = true;
        }
        let n = chunk.len().min(8);
        self.tail.rotate_left(n);
        self.tail[8 - n..].copy_from_slice(&chunk[chunk.len() - n..]);
    }
}

/// How a guarded body reports a failure to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// An SSE stream: a failure appends an OpenAI-shaped error event; with `expect_done`, an
    /// end without `data: [DONE]` counts as a failure too.
    Sse {
        /// The endpoint's streams end with `data: [DONE]`.
        expect_done: bool,
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
pub fn guard(
    prefix: Bytes,
    body: BodyStream,
    idle: Duration,
    framing: Framing,
    tap: Option<UsageTap>,
    on_end: impl FnOnce(StreamEnd, Option<Usage>) + Send + 'static,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let expect_done = framing == Framing::Sse { expect_done: true };
    let remaining = match framing {
        Framing::Raw { length } => length,
        Framing::Sse { .. } => None,
    };
    let mut guard = Guard {
        body,
        idle,
        expect_done,
        saw_done: false,
        tail: [0; 8],
        tap,
        remaining,
        on_end: Some(on_end),
        timer: Box::pin(tokio::time::sleep(idle)),
        stash: None,
    };
    let prefix = guard.pass(prefix);
    let head = stream::iter((!prefix.is_empty()).then_some(Ok(prefix)));
    let rest = stream::unfold(Some(guard), move |state| async move {
        let mut g = state?;
        let next = match g.stash.take() {
            Some(stashed) => Ok(stashed),
            None => {
                let deadline = tokio::time::Instant::now() + g.idle;
                g.timer.as_mut().reset(deadline);
                tokio::select! {
                    biased;
                    next = g.body.next() => Ok(next),
                    () = g.timer.as_mut() => Err(()),
                }
            }
        };
        let (end, message, code) = match next {
            Ok(Some(Ok(chunk))) => {
                let chunk = g.coalesce(chunk);
                let chunk = g.pass(chunk);
                return Some((Ok(chunk), Some(g)));
            }
            Ok(None) if g.saw_done || !g.expect_done => {
                let rest = g.flush();
                g.finish(StreamEnd::Complete);
                return rest.map(|r| (Ok(r), None));
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
        match framing {
            Framing::Sse { .. } => Some((Ok(error_event(&message, code)), None)),
            Framing::Raw { .. } => Some((Err(std::io::Error::other(message)), None)),
        }
    });
    head.chain(rest)
}

impl<F: FnOnce(StreamEnd, Option<Usage>) + Send> Drop for Guard<F> {
    fn drop(&mut self) {
        self.finish(StreamEnd::Broken);
    }
}

#[cfg(test)]
mod tests;
