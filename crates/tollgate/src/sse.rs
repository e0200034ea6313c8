//! Server-sent event framing: where one event ends in a byte stream, whatever its chunking,
//! and what its fields say. The one framer of the crate (the first-event peek, the usage tap
//! and the Anthropic stream translator all use it).
//!
//! Lines end in `\n`, `\r\n` or `\r` (the SSE grammar); an event ends at a blank line. An
//! event's bytes are kept exactly as received, its blank line included, so a caller that
//! passes events on sends what the upstream sent. A `\r\n` split between two chunks after a
//! blank line is the one place this needs care: the event is complete at the `\r` (it is
//! handed out at once), and the `\n` that follows goes to the next event, marked as its
//! [`lead`](Event::lead).
//!
//! - [`Splitter`]: the state machine alone, fed one piece of input at a time.
//! - [`Scanner`]: events of a buffer the caller keeps (and only appends to), borrowed.
//! - [`SseFramer`]: fed chunks, hands out [`Event`]s (owned `Bytes`, for passing events on)
//!   or lends them to a callback (borrowed bytes, for reading them). An event that lies
//!   inside one chunk is a slice of it; only an event cut by a chunk boundary is copied.
//! - [`fields`], [`name`], [`data`]: reading an event's `field: value` lines, borrowed.

use bytes::{Buf, Bytes, BytesMut};
use std::borrow::Cow;
use std::ops::ControlFlow;

/// Finds event ends, one call per piece of input, remembering where a line was cut.
#[derive(Debug, Clone)]
pub struct Splitter {
    /// The last byte seen was a `\r`: a `\n` now completes that line ending.
    cr: bool,
    /// No byte of the current line seen yet: a line ending now is a blank line.
    blank: bool,
    /// No byte of the current event seen yet.
    start: bool,
    /// The current event began with the `\n` of the previous event's `\r\n`.
    lead: bool,
}

impl Default for Splitter {
    fn default() -> Self {
        Splitter {
            cr: false,
            blank: true,
            start: true,
            lead: false,
        }
    }
}

/// The end of an event found by [`Splitter::find`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct End {
    /// Bytes of the piece that belong to the event (through its blank line).
    pub len: usize,
    /// The event begins with a `\n` that ends the previous event's blank line.
    pub lead: bool,
}

impl Splitter {
    /// A splitter at the start of a stream.
    pub fn new() -> Self {
        Splitter::default()
    }

    /// Scans `piece`, the bytes that follow everything scanned before. Returns where the
    /// current event ends in it, or `None` when all of `piece` belongs to an unfinished event.
    /// After an end, the rest of `piece` is the start of the next event: scan it next.
    pub fn find(&mut self, piece: &[u8]) -> Option<End> {
        let mut at = 0;
        while let Some(&byte) = piece.get(at) {
            if byte != b'\n' && byte != b'\r' {
                // A line's content: skip to its end.
                (self.cr, self.blank, self.start) = (false, false, false);
                at += memchr::memchr2(b'\n', b'\r', &piece[at..]).unwrap_or(piece.len() - at);
                continue;
            }
            at += 1;
            if byte == b'\n' && self.cr {
                // The `\n` of a `\r\n`: that line has already ended.
                self.cr = false;
                self.lead |= self.start;
                continue;
            }
            self.start = false;
            self.cr = byte == b'\r';
            if self.blank {
                return Some(self.end(piece, at));
            }
            self.blank = true;
        }
        None
    }

    /// The blank line ending at `at` closes the event; a `\n` completing its `\r\n` is
    /// taken along when it is already there.
    fn end(&mut self, piece: &[u8], mut at: usize) -> End {
        if self.cr && piece.get(at) == Some(&b'\n') {
            self.cr = false;
            at += 1;
        }
        let lead = self.lead;
        self.lead = false;
        self.start = true;
        End { len: at, lead }
    }
}

/// Finds the events of a buffer that the caller keeps and only appends to (nothing is
/// copied): call [`next_event`](Scanner::next_event) with the whole buffer after each append.
#[derive(Debug, Default)]
pub struct Scanner {
    split: Splitter,
    /// Where the unfinished event begins.
    start: usize,
    /// How much of the buffer has been scanned.
    scanned: usize,
}

impl Scanner {
    /// A scanner at the start of a stream.
    pub fn new() -> Self {
        Scanner::default()
    }

    /// The next complete event of `buf`, borrowed from it; `None` until more is appended.
    pub fn next_event<'a>(&mut self, buf: &'a [u8]) -> Option<&'a [u8]> {
        let Some(end) = self.split.find(buf.get(self.scanned..)?) else {
            self.scanned = buf.len();
            return None;
        };
        let event = &buf[self.start..self.scanned + end.len];
        self.scanned += end.len;
        self.start = self.scanned;
        Some(event)
    }
}

/// One complete event, its bytes as received (through its blank line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    raw: Bytes,
    lead: bool,
}

impl Event {
    /// Every byte of the event, for passing it on unchanged.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// The event's bytes, owned.
    pub fn into_raw(self) -> Bytes {
        self.raw
    }

    /// Whether the first byte is the `\n` of the previous event's `\r\n` (cut between chunks).
    pub fn lead(&self) -> bool {
        self.lead
    }

    /// The bytes split after that `\n` (empty when there is none): the part that goes with
    /// the previous event, and the event's own.
    pub fn split_lead(&self) -> (Bytes, Bytes) {
        let n = usize::from(self.lead);
        (self.raw.slice(..n), self.raw.slice(n..))
    }

    /// The `event:` name, if the event has one.
    pub fn name(&self) -> Option<&[u8]> {
        name(&self.raw)
    }

    /// The `data:` payload (see [`data`]).
    pub fn data(&self) -> Cow<'_, [u8]> {
        data(&self.raw)
    }
}

/// Turns chunks of a stream into complete events: [`push`](SseFramer::push) a chunk, then
/// take [`Event`]s with [`next_event`](SseFramer::next_event) until it returns `None`; or
/// [`feed`](SseFramer::feed) borrowed bytes and see each event in a callback.
#[derive(Debug, Default)]
pub struct SseFramer {
    split: Splitter,
    /// Bytes of the unfinished event copied from earlier chunks; the first `scanned` of them
    /// have been scanned, the rest (a chunk pushed over another not drained) not yet.
    carry: BytesMut,
    scanned: usize,
    /// The last pushed chunk's bytes not scanned yet.
    fresh: Bytes,
}

impl SseFramer {
    /// A framer at the start of a stream.
    pub fn new() -> Self {
        SseFramer::default()
    }

    /// Adds a chunk. Events inside it come out as slices of it, without a copy.
    pub fn push(&mut self, chunk: Bytes) {
        self.settle();
        self.fresh = chunk;
    }

    /// Moves bytes of an earlier chunk that were never taken out into the carry buffer.
    fn settle(&mut self) {
        if !self.fresh.is_empty() {
            let fresh = std::mem::take(&mut self.fresh);
            self.carry.extend_from_slice(&fresh);
        }
    }

    /// The next complete event of what was pushed, or `None` until more is pushed.
    pub fn next_event(&mut self) -> Option<Event> {
        if self.scanned < self.carry.len() {
            if let Some(end) = self.split.find(&self.carry[self.scanned..]) {
                let raw = self.carry.split_to(self.scanned + end.len).freeze();
                self.scanned = 0;
                return Some(Event {
                    raw,
                    lead: end.lead,
                });
            }
            self.scanned = self.carry.len();
        }
        if self.fresh.is_empty() {
            return None;
        }
        let Some(end) = self.split.find(&self.fresh) else {
            self.settle();
            self.scanned = self.carry.len();
            return None;
        };
        let raw = if self.carry.is_empty() {
            self.fresh.split_to(end.len)
        } else {
            self.carry.extend_from_slice(&self.fresh[..end.len]);
            self.fresh.advance(end.len);
            self.scanned = 0;
            self.carry.split().freeze()
        };
        Some(Event {
            raw,
            lead: end.lead,
        })
    }

    /// Frames borrowed bytes: calls `each` with every event they complete, borrowed (from
    /// `chunk` when it lies inside it; only an event cut by a chunk boundary is copied
    /// together). Stops at a `Break` from `each`, keeping the rest of `chunk` for later.
    pub fn feed(&mut self, chunk: &[u8], mut each: impl FnMut(&[u8]) -> ControlFlow<()>) {
        while let Some(event) = self.next_event() {
            if each(event.raw()).is_break() {
                self.settle();
                self.carry.extend_from_slice(chunk);
                return;
            }
        }
        let mut rest = chunk;
        while let Some(end) = self.split.find(rest) {
            let (event, tail) = rest.split_at(end.len);
            rest = tail;
            let flow = if self.carry.is_empty() {
                each(event)
            } else {
                self.carry.extend_from_slice(event);
                let flow = each(&self.carry);
                self.carry.clear();
                flow
            };
            if flow.is_break() {
                self.carry.extend_from_slice(rest);
                self.scanned = 0;
                return;
            }
        }
        self.carry.extend_from_slice(rest);
        self.scanned = self.carry.len();
    }

    /// How many bytes of an unfinished event the framer holds.
    pub fn pending(&self) -> usize {
        self.carry.len() + self.fresh.len()
    }

    /// Whether the framer holds no byte of an unfinished event.
    pub fn is_empty(&self) -> bool {
        self.carry.is_empty() && self.fresh.is_empty()
    }

    /// Passes over `chunk` without framing it when that changes nothing: the framer holds
    /// nothing and `chunk` ends with a blank line (`\n\n` or `\n\r\n`), so every event in it
    /// is complete. Returns `false` (and does nothing) otherwise: push the chunk then.
    pub fn skip_whole(&mut self, chunk: &[u8]) -> bool {
        let whole = self.is_empty() && (chunk.ends_with(b"\n\n") || chunk.ends_with(b"\n\r\n"));
        if whole {
            self.split = Splitter::new();
        }
        whole
    }

    /// The bytes of the event left unfinished, if any (for a stream that ended before its
    /// blank line), and a fresh start.
    pub fn take_partial(&mut self) -> Option<Event> {
        self.settle();
        let lead = self.split.lead;
        self.split = Splitter::new();
        self.scanned = 0;
        (!self.carry.is_empty()).then(|| Event {
            raw: self.carry.split().freeze(),
            lead,
        })
    }
}

/// Whether `chunk` holds `needle`, for needles whose last byte is rare in a stream's JSON
/// (`]`, `{`): a `memchr` for that byte and a look behind each hit. On chunks of a few hundred
/// bytes, which is what a stream's events are, this costs a fraction of a substring search
/// (whose setup dominates there), and it runs on every chunk.
pub fn holds(chunk: &[u8], needle: &[u8]) -> bool {
    let Some((&last, head)) = needle.split_last() else {
        return true;
    };
    memchr::memchr_iter(last, chunk).any(|at| chunk[..at].ends_with(head))
}

/// The `field: value` lines of an event, in order. Comments (`:` lines) and empty lines are
/// left out; one space after the colon is not part of the value; a line without a colon is
/// a field with an empty value.
pub fn fields(event: &[u8]) -> Fields<'_> {
    Fields { rest: event }
}

/// Iterator returned by [`fields`]: `(name, value)` pairs borrowed from the event.
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Fields<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        while !self.rest.is_empty() {
            let end = memchr::memchr2(b'\n', b'\r', self.rest).unwrap_or(self.rest.len());
            let line = &self.rest[..end];
            self.rest = self.rest.get(end + 1..).unwrap_or_default();
            if line.is_empty() || line[0] == b':' {
                continue;
            }
            let (name, value) = match memchr::memchr(b':', line) {
                Some(colon) => (&line[..colon], &line[colon + 1..]),
                None => (line, &b""[..]),
            };
            return Some((name, value.strip_prefix(b" ").unwrap_or(value)));
        }
        None
    }
}

/// The value of the event's (last) `event:` field.
pub fn name(event: &[u8]) -> Option<&[u8]> {
    fields(event)
        .filter(|(field, _)| *field == b"event")
        .last()
        .map(|(_, value)| value)
}

/// The `data:` values joined by `\n` (empty values before the first non-empty one add
/// nothing); empty when the event has no data. Borrowed unless there are several lines.
pub fn data(event: &[u8]) -> Cow<'_, [u8]> {
    let mut out = Cow::Borrowed(&b""[..]);
    for (_, value) in fields(event).filter(|(field, _)| *field == b"data") {
        if out.is_empty() {
            out = Cow::Borrowed(value);
        } else {
            let joined = out.to_mut();
            joined.push(b'\n');
            joined.extend_from_slice(value);
        }
    }
    out
}

#[cfg(test)]
mod tests;

#[cfg(test)]
pub(crate) mod fuzz;
