//! The fast reading of a body's [`Fields`]: one pass over the bytes that checks the JSON as
//! serde_json does and finds the fields, where serde_json reads every string byte by byte
//! (eight at a time, restarting at every escape: a coding agent's prompt has one every 20
//! bytes, and that loop was half of what a 40 KB request cost the gateway).
//!
//! A string's quotes, backslashes and control characters are found a block at a time (masks of
//! sixteen bytes, SSE2 on x86_64, word arithmetic elsewhere; the first block of a string
//! sixteen bytes, the next ones 64), an escape checked where it is found and the block's mask
//! read on past it. A value nobody looks into is stepped over in one loop, not a call per
//! value.
//! Every object's member names are compared with the names the caller watches, so the
//! ownership layer knows without another pass whether the body can name a stored object.
//!
//! The skim is a shortcut, never a judge: any body it is not sure of (a key written with
//! escapes where fields are read, a member named twice, a field of another type, a body that
//! is not an object, text that is not UTF-8, nesting deeper than [`DEPTH`], anything that is
//! not JSON) is left to serde_json, whose reading and verdict are the ones given. What it
//! returns is what serde_json returns for the same body (a property test holds it to that).

use super::{Counts, Fields, Message, Raw, Tally};

/// Nesting the skim follows (serde_json's limit is 128); a deeper body goes to serde_json.
const DEPTH: usize = 100;

/// The body's fields, whether any object in it has a member named in `watch`, and the counts
/// `tally` asks for, made in the same pass (`None` in them where not sure); `None` to leave the
/// body to serde_json.
pub(super) fn read<'a>(
    body: &'a [u8],
    watch: &[&str],
    tally: Option<Tally>,
) -> Option<(Fields<'a>, bool, Counts)> {
    let text = simdutf8::basic::from_utf8(body).ok()?;
    let mut skim = Skim::new(text, watch, tally);
    skim.space();
    let fields = skim.fields()?;
    skim.space();
    (skim.at == body.len()).then_some((fields, skim.named, skim.counts))
}

/// The usage object at the start of `text` (whitespace before it allowed), as serde_json reads
/// an [`openai_types::Usage`] there (nothing after the object is looked at); `None` to leave it
/// to serde_json. Counts are read only as plain digits that fit a `u64`; anything else (a sign,
/// a fraction, an exponent, `null`, a name written with escapes, a field named twice) is left
/// to serde_json's verdict.
pub(super) fn usage(text: &[u8]) -> Option<openai_types::Usage> {
    let text = simdutf8::basic::from_utf8(text).ok()?;
    let mut skim = Skim::new(text, &[], None);
    skim.space();
    skim.usage(1)
}

/// What a stream event's JSON says of usage, as serde_json reads it into the fields the usage
/// tap looks at: the top-level `usage`, the `usage` of `response` (a Responses event) and of
/// `message` (Anthropic's `message_start`), each `None` when absent or `null` (the outer
/// `Option` of the nested ones: whether that object is there), and how many `choices` there
/// are. `None` to leave the event to serde_json (the whole text must be one JSON object).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct EventUsage {
    pub(crate) usage: Option<openai_types::Usage>,
    pub(crate) response: Option<Option<openai_types::Usage>>,
    pub(crate) message: Option<Option<openai_types::Usage>>,
    pub(crate) choices: Option<usize>,
}

/// See [`EventUsage`].
pub(super) fn event_usage(text: &[u8]) -> Option<EventUsage> {
    let text = simdutf8::basic::from_utf8(text).ok()?;
    let mut skim = Skim::new(text, &[], None);
    skim.space();
    let mut out = EventUsage {
        usage: None,
        response: None,
        message: None,
        choices: None,
    };
    let mut seen: Seen = 0;
    skim.object(1, |skim, key| match key? {
        "usage" => {
            let usage = skim.nullable(|skim| skim.usage(2))?;
            once(&mut seen, 0, &mut out.usage, usage)
        }
        name @ ("response" | "message") => {
            let nested = skim.nullable(|skim| {
                let mut usage = None;
                let mut inner: Seen = 0;
                skim.object(2, |skim, key| match key? {
                    "usage" => {
                        let found = skim.nullable(|skim| skim.usage(3))?;
                        once(&mut inner, 0, &mut usage, found)
                    }
                    _ => skim.value(2),
                })?;
                Some(usage)
            })?;
            match name {
                "response" => once(&mut seen, 1, &mut out.response, nested),
                _ => once(&mut seen, 2, &mut out.message, nested),
            }
        }
        "choices" => {
            let choices = skim.nullable(|skim| {
                let mut n = 0;
                skim.array(2, |skim| {
                    n += 1;
                    skim.value(2)
                })?;
                Some(n)
            })?;
            once(&mut seen, 3, &mut out.choices, choices)
        }
        _ => skim.value(1),
    })?;
    skim.space();
    (skim.at == text.len()).then_some(out)
}

struct Skim<'a, 'w> {
    text: &'a str,
    at: usize,
    watch: &'w [&'w str],
    /// The watched names' [`slot`]s, one bit each: most names are passed over by their length,
    /// first and last byte alone.
    slots: u128,
    named: bool,
    /// A number with an exponent or of over 300 characters was passed, or a `\u` escape of a
    /// surrogate (D800–DFFF, half of a pair or alone): one a reader of JSON values may refuse
    /// (past `f64`, a lone half) where the skim does not (a count made on the way,
    /// [`Skim::counted`], or [`input_tokens`], then leaves the value to the estimate).
    unusual: bool,
    /// What to count on the way.
    tally: Option<Tally>,
    /// What was counted (`contents` starts at zero when asked for, and is let go at the first
    /// content the count is not sure of).
    counts: Counts,
}

/// A name's bit among 128, from its length, first and last byte: the names a request body is
/// full of (`content`, `arguments`, `tool_call_id`) share a length with a watched one
/// (`file_id`, `thread_id`, `assistant_id`) but, among some 80 names of the APIs' bodies, none
/// shares a slot with one.
fn slot(name: &[u8]) -> u32 {
    let (first, last) = (name.first().copied(), name.last().copied());
    let byte = |b: Option<u8>| usize::from(b.unwrap_or(0));
    (name
        .len()
        .wrapping_mul(8)
        .wrapping_add(byte(first) * 19 + byte(last))
        & 127) as u32
}

/// One bit per field of [`Fields`] and [`Message`], to refuse a member named twice.
type Seen = u32;

/// Sets `slot` to `value` unless its bit is in `seen` already (serde_json refuses a field
/// named twice; the skim leaves such a body to it).
fn once<T>(seen: &mut Seen, bit: u32, slot: &mut T, value: T) -> Option<()> {
    if *seen & (1 << bit) != 0 {
        return None;
    }
    *seen |= 1 << bit;
    *slot = value;
    Some(())
}

/// A raw value as an `Option`: JSON `null` is `None`, as serde reads an `Option`.
fn optional(raw: &str) -> Option<Raw<'_>> {
    (raw != "null").then_some(Raw(raw))
}

impl<'a, 'w> Skim<'a, 'w> {
    /// A reading of `text` from its start.
    fn new(text: &'a str, watch: &'w [&'w str], tally: Option<Tally>) -> Self {
        Skim {
            text,
            at: 0,
            watch,
            slots: watch
                .iter()
                .fold(0, |set, name| set | 1 << slot(name.as_bytes())),
            named: false,
            unusual: false,
            tally,
            // Message contents are summed from zero as they are read.
            counts: Counts {
                contents: matches!(
                    tally,
                    Some(Tally::ChatContents(_) | Tally::MessagesBlocks(_))
                )
                .then_some(0),
                ..Counts::default()
            },
        }
    }
}

impl<'a> Skim<'a, '_> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    #[inline(always)]
    fn space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.at += 1;
        }
    }

    /// Consumes `byte` (after any whitespace).
    #[inline(always)]
    fn eat(&mut self, byte: u8) -> Option<()> {
        if self.peek() != Some(byte) {
            self.space();
            if self.peek()? != byte {
                return None;
            }
        }
        self.at += 1;
        Some(())
    }

    /// The top-level object, read into [`Fields`].
    fn fields(&mut self) -> Option<Fields<'a>> {
        let mut f = Fields::default();
        let mut seen: Seen = 0;
        self.object(1, |skim, key| {
            let s = &mut seen;
            match key? {
                "model" => once(s, 0, &mut f.model, optional(skim.raw(1)?)),
                "stream" => {
                    let stream = match skim.raw(1)? {
                        "true" => Some(true),
                        "false" => Some(false),
                        "null" => None,
                        _ => return None,
                    };
                    once(s, 1, &mut f.stream, stream)
                }
                "stream_options" => {
                    let options = serde_json::from_str(skim.raw(1)?).ok()?;
                    once(s, 2, &mut f.stream_options, options)
                }
                "prompt_cache_key" => once(s, 3, &mut f.prompt_cache_key, optional(skim.raw(1)?)),
                "user" => once(s, 4, &mut f.user, optional(skim.raw(1)?)),
                "previous_response_id" => {
                    once(s, 5, &mut f.previous_response_id, optional(skim.raw(1)?))
                }
                "store" => once(s, 6, &mut f.store, optional(skim.raw(1)?)),
                "messages" => {
                    let messages = skim.messages()?;
                    once(s, 7, &mut f.messages, messages)
                }
                "tools" => {
                    let (text, count) = skim.blocks_field()?;
                    skim.counts.tools = count;
                    once(s, 8, &mut f.tools, optional(text))
                }
                "prompt" => once(s, 9, &mut f.prompt, optional(skim.raw(1)?)),
                "input" => once(s, 10, &mut f.input, optional(skim.input()?)),
                "instructions" => once(s, 11, &mut f.instructions, optional(skim.raw(1)?)),
                "system" => {
                    let (text, count) = skim.blocks_field()?;
                    skim.counts.system = count;
                    once(s, 12, &mut f.system, optional(text))
                }
                "metadata" => once(s, 13, &mut f.metadata, optional(skim.raw(1)?)),
                "max_tokens" => once(s, 14, &mut f.max_tokens, count(skim.raw(1)?)?),
                "max_completion_tokens" => {
                    once(s, 15, &mut f.max_completion_tokens, count(skim.raw(1)?)?)
                }
                "max_output_tokens" => once(s, 16, &mut f.max_output_tokens, count(skim.raw(1)?)?),
                _ => skim.value(1),
            }
        })?;
        Some(f)
    }

    /// Chat `messages`: an array of objects (serde would also read a message from an array;
    /// the skim leaves that to it).
    fn messages(&mut self) -> Option<Vec<Message<'a>>> {
        let mut messages = Vec::new();
        self.array(2, |skim| {
            let mut m = Message {
                content: None,
                name: None,
                tool_calls: None,
            };
            let mut seen: Seen = 0;
            skim.object(3, |skim, key| match key? {
                "content" => once(&mut seen, 0, &mut m.content, optional(skim.content()?)),
                "name" => {
                    let name = optional(skim.raw(3)?).map(|_| serde::de::IgnoredAny);
                    once(&mut seen, 1, &mut m.name, name)
                }
                "tool_calls" => once(&mut seen, 2, &mut m.tool_calls, optional(skim.raw(3)?)),
                _ => skim.value(3),
            })?;
            messages.push(m);
            Some(())
        })?;
        Some(messages)
    }

    /// An object's members, each handed to `member` with its name (`None`: a name written with
    /// escapes, which the fields' readers refuse); `depth` is the object's own.
    fn object(
        &mut self,
        depth: usize,
        mut member: impl FnMut(&mut Self, Option<&'a str>) -> Option<()>,
    ) -> Option<()> {
        self.sequence(depth, [b'{', b'}'], |skim| {
            let key = skim.key()?;
            member(skim, key)
        })
    }

    /// A member's name, its colon and the whitespace after it (whitespace before it too): the
    /// name as written, `None` inside when written with escapes. See [`Skim::name`].
    #[inline(always)]
    fn key(&mut self) -> Option<Option<&'a str>> {
        let (start, end, escaped) = self.name()?;
        match escaped {
            true => Some(None),
            false => self.text.get(start..end).map(Some),
        }
    }

    /// A member's name, its colon and the whitespace after it (whitespace before it too):
    /// where the name's text is and whether it has escapes. A name that is watched, or written
    /// with escapes (it may spell a watched one), is noted in `named`.
    #[inline(always)]
    fn name(&mut self) -> Option<(usize, usize, bool)> {
        self.eat(b'"')?;
        let start = self.at;
        let escaped = self.string()?;
        let end = self.at - 1;
        let name = self.text.as_bytes().get(start..end)?;
        if escaped
            || (self.slots >> slot(name) & 1 == 1
                && self.watch.iter().any(|w| w.as_bytes() == name))
        {
            self.named = true;
        }
        self.eat(b':')?;
        self.space();
        Some((start, end, escaped))
    }

    /// An array's elements, each read by `element`; `depth` is the array's own.
    fn array(&mut self, depth: usize, element: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.sequence(depth, [b'[', b']'], element)
    }

    /// The items between `open` and `close`, separated by commas, each read by `item`;
    /// `depth` is the container's own.
    fn sequence(
        &mut self,
        depth: usize,
        [open, close]: [u8; 2],
        mut item: impl FnMut(&mut Self) -> Option<()>,
    ) -> Option<()> {
        if depth > DEPTH {
            return None;
        }
        self.eat(open)?;
        self.space();
        if self.peek()? == close {
            self.at += 1;
            return Some(());
        }
        loop {
            self.space();
            item(self)?;
            self.space();
            match self.peek()? {
                b',' => self.at += 1,
                b if b == close => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// The value here, as its text; `depth`: that of the object or array it is in.
    fn raw(&mut self, depth: usize) -> Option<&'a str> {
        let start = self.at;
        self.value(depth)?;
        Some(&self.text[start..self.at])
    }

    /// Steps over one value (no whitespace before it); `depth`: that of the object or array it
    /// is in. One loop over the containers it opens, not a call for each value: what it reads
    /// and refuses is what [`Skim::object`] and [`Skim::array`] read and refuse.
    fn value(&mut self, depth: usize) -> Option<()> {
        // The containers open inside the value, the innermost in bit 0: 1 an object, 0 an
        // array (`DEPTH` < 128 of them).
        let mut open: u128 = 0;
        let mut level = depth;
        loop {
            // A value starts here.
            match self.peek()? {
                b'"' => {
                    self.at += 1;
                    self.string()?;
                }
                b @ (b'{' | b'[') => {
                    if level >= DEPTH {
                        return None;
                    }
                    let object = b == b'{';
                    self.at += 1;
                    self.space();
                    if self.peek()? != if object { b'}' } else { b']' } {
                        level += 1;
                        open = open << 1 | u128::from(object);
                        if object {
                            self.name()?;
                        }
                        continue;
                    }
                    self.at += 1;
                }
                b't' => self.word("true")?,
                b'f' => self.word("false")?,
                b'n' => self.word("null")?,
                b'-' | b'0'..=b'9' => self.number()?,
                _ => return None,
            }
            // A value ended: the next item of its container, or the container's end.
            loop {
                if level == depth {
                    return Some(());
                }
                self.space();
                let object = open & 1 == 1;
                match self.peek()? {
                    b',' => {
                        self.at += 1;
                        self.space();
                        if object {
                            self.name()?;
                        }
                        break;
                    }
                    b'}' if object => {}
                    b']' if !object => {}
                    _ => return None,
                }
                self.at += 1;
                level -= 1;
                open >>= 1;
            }
        }
    }

    fn word(&mut self, word: &str) -> Option<()> {
        self.text[self.at..]
            .starts_with(word)
            .then(|| self.at += word.len())
    }

    /// A number as JSON writes one: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    fn number(&mut self) -> Option<()> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.some_digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.unusual = true;
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            self.some_digits()?;
        }
        self.unusual |= self.at - start > 300;
        Some(())
    }

    /// `null` as `None`, else what `read` reads here.
    fn nullable<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        match self.peek()? {
            b'n' => self.word("null").map(|()| None),
            _ => read(self).map(Some),
        }
    }

    /// A usage object here (see [`usage`]); `depth`: the object's own.
    fn usage(&mut self, depth: usize) -> Option<openai_types::Usage> {
        let mut usage = openai_types::Usage::default();
        let mut seen: Seen = 0;
        self.object(depth, |skim, key| match key? {
            "prompt_tokens" | "input_tokens" => {
                once(&mut seen, 0, &mut usage.prompt_tokens, skim.count()?)
            }
            "completion_tokens" | "output_tokens" => {
                once(&mut seen, 1, &mut usage.completion_tokens, skim.count()?)
            }
            "total_tokens" => once(&mut seen, 2, &mut usage.total_tokens, skim.count()?),
            "prompt_tokens_details" | "input_tokens_details" => {
                let details = skim.nullable(|skim| {
                    let mut details = openai_types::PromptDetails::default();
                    let mut cached: Seen = 0;
                    skim.object(depth + 1, |skim, key| match key? {
                        "cached_tokens" => {
                            once(&mut cached, 0, &mut details.cached_tokens, skim.count()?)
                        }
                        _ => skim.value(depth + 1),
                    })?;
                    Some(details)
                })?;
                once(&mut seen, 3, &mut usage.prompt_tokens_details, details)
            }
            _ => skim.value(depth),
        })?;
        Some(usage)
    }

    /// A count: plain digits (`0`, or no leading zero) that fit a `u64`; `None` for anything
    /// else, which a reader of a `u64` may refuse.
    fn count(&mut self) -> Option<u64> {
        let bytes = self.text.as_bytes();
        let start = self.at;
        let mut n: u64 = 0;
        while let Some(digit) = bytes.get(self.at).filter(|b| b.is_ascii_digit()) {
            // Past `u64`: serde_json reads it as a float, which a `u64` refuses.
            n = n.checked_mul(10)?.checked_add(u64::from(digit - b'0'))?;
            self.at += 1;
        }
        let len = self.at - start;
        let leading_zero = len > 1 && bytes[start] == b'0';
        if len == 0 || leading_zero || matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        Some(n)
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.at;
        self.digits();
        (self.at > start).then_some(())
    }

    /// The rest of a string (its opening quote read): whether it has escapes, `None` when it is
    /// not one JSON allows (a control character, an unknown escape, no end). A string that
    /// ends within sixteen bytes without an escape (most names and many values) is read here,
    /// where it is called; any other by [`Skim::long_string`].
    #[inline(always)]
    fn string(&mut self) -> Option<bool> {
        if self.short_string() {
            return Some(false);
        }
        self.long_string()
    }

    /// Reads the rest of a string (its opening quote read) when it ends within sixteen bytes
    /// without an escape; whether it did.
    #[inline(always)]
    fn short_string(&mut self) -> bool {
        let bytes = self.text.as_bytes();
        let Some(block) = bytes.get(self.at..self.at + 16) else {
            return false;
        };
        let mask = block_mask(block.try_into().unwrap_or(&[0; 16]));
        let end = self.at + mask.trailing_zeros() as usize;
        let ends = mask != 0 && bytes.get(end) == Some(&b'"');
        if ends {
            self.at = end + 1;
        }
        ends
    }

    /// [`Skim::string`] for a string it does not read itself.
    #[inline(never)]
    fn long_string(&mut self) -> Option<bool> {
        let bytes = self.text.as_bytes();
        let mut escaped = false;
        let mut specials = Specials::new(bytes, self.at);
        loop {
            let at = specials.next()?;
            match bytes.get(at)? {
                b'"' => {
                    self.at = at + 1;
                    return Some(escaped);
                }
                b'\\' => {
                    escaped = true;
                    specials.pass(match bytes.get(at + 1)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => at + 2,
                        b'u' => {
                            let digits = bytes.get(at + 2..at + 6)?;
                            if !digits.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            self.unusual |= matches!(
                                digits,
                                [b'd' | b'D', b'8'..=b'9' | b'a'..=b'f' | b'A'..=b'F', ..]
                            );
                            at + 6
                        }
                        _ => return None,
                    });
                }
                _ => return None,
            }
        }
    }
}

/// What the token estimate counts for a Responses `input` array (`text`, valid JSON), read in
/// one pass with nothing built (the estimate's own reading parses it three times over: the
/// items, each item, each content array into values): for each item, 3 and its `content`'s
/// tokens when it has one (a string or any other value by its JSON's bytes, an array part by
/// part: an image 85 at low detail else 765, any other part by its `text`'s length), else the
/// item's bytes. `tokens` is the estimate's bytes-to-tokens rule. `None` for whatever this
/// reading is not sure of (an item that is not an object, `content` named twice, a name or a
/// part's type or detail written with escapes, a lone surrogate, nesting past [`DEPTH`]): the
/// estimate then reads it its own way. A property test holds the two to the same count.
pub(crate) fn input_tokens(text: &str, tokens: fn(usize) -> u64) -> Option<u64> {
    let mut skim = Skim::new(text, &[], None);
    skim.space();
    let total = skim.input_items(1, tokens)?;
    skim.space();
    (skim.at == text.len() && !skim.unusual).then_some(total)
}

impl<'a> Skim<'a, '_> {
    /// The top-level `input` as its text; its items counted on the way when the tally asks
    /// for it and it is an array ([`Skim::input_items`]).
    fn input(&mut self) -> Option<&'a str> {
        let Some(Tally::ResponsesInput(tokens)) = self.tally else {
            return self.raw(1);
        };
        if self.peek()? != b'[' {
            return self.raw(1);
        }
        let (text, count) = self.counted(1, |skim| skim.input_items(2, tokens))?;
        self.counts.input = count;
        Some(text)
    }

    /// A message's `content` as its text, counted on the way as the tally asks (chat: an
    /// array part by part, [`Skim::part_tokens`]; Messages: block by block,
    /// [`Skim::block_tokens`]; see [`Skim::tallied`]).
    fn content(&mut self) -> Option<&'a str> {
        let (text, count) = match self.tally {
            Some(Tally::ChatContents(tokens)) => self.tallied(3, tokens, |skim| {
                Some(skim.content_tokens(4, tokens)?.unwrap_or(0))
            })?,
            Some(Tally::MessagesBlocks(tokens)) => {
                self.tallied(3, tokens, |skim| skim.blocks(4, tokens))?
            }
            _ => return self.raw(3),
        };
        self.counts.contents = self.counts.contents.zip(count).map(|(sum, n)| sum + n);
        Some(text)
    }

    /// A top-level Messages `system` or `tools` as its text, and its count block by block
    /// when the tally asks for it.
    fn blocks_field(&mut self) -> Option<(&'a str, Option<u64>)> {
        match self.tally {
            Some(Tally::MessagesBlocks(tokens)) => {
                self.tallied(1, tokens, |skim| skim.blocks(2, tokens))
            }
            _ => Some((self.raw(1)?, None)),
        }
    }

    /// The value here (`depth`: that of its container) as its text, and its count as the
    /// estimate makes it: `null` nothing, an array by `array` (as it is read, [`Skim::counted`]),
    /// any other value by its JSON's bytes.
    fn tallied(
        &mut self,
        depth: usize,
        tokens: fn(usize) -> u64,
        array: impl FnOnce(&mut Self) -> Option<u64>,
    ) -> Option<(&'a str, Option<u64>)> {
        if self.peek()? == b'[' {
            return self.counted(depth, array);
        }
        let text = self.raw(depth)?;
        let count = if text == "null" {
            0
        } else {
            tokens(text.len())
        };
        Some((text, Some(count)))
    }

    /// The array here (`depth`: that of its container) as its text, and the count `count`
    /// makes of it while reading it; `None` for a count that is unsure (a surrogate escape, a
    /// number a reader of values may refuse, or anything `count` leaves: the array is then
    /// read again as any value, which judges the JSON).
    fn counted(
        &mut self,
        depth: usize,
        count: impl FnOnce(&mut Self) -> Option<u64>,
    ) -> Option<(&'a str, Option<u64>)> {
        let start = self.at;
        let before = std::mem::take(&mut self.unusual);
        let counted = count(self);
        let sure = !self.unusual;
        self.unusual |= before;
        let Some(total) = counted else {
            self.at = start;
            return Some((self.raw(depth)?, None));
        };
        Some((&self.text[start..self.at], sure.then_some(total)))
    }

    /// The items of a Responses `input` array here (`depth`: the array's own), counted as
    /// [`input_tokens`] says; `None` where unsure or not JSON.
    fn input_items(&mut self, depth: usize, tokens: fn(usize) -> u64) -> Option<u64> {
        let mut total: u64 = 0;
        self.array(depth, |skim| {
            let start = skim.at;
            let mut content: Option<Option<u64>> = None;
            skim.object(depth + 1, |skim, key| match key? {
                "content" if content.is_some() => None,
                "content" => {
                    content = Some(skim.content_tokens(depth + 2, tokens)?);
                    Some(())
                }
                _ => skim.value(depth + 1),
            })?;
            total += match content.flatten() {
                Some(count) => 3 + count,
                None => tokens(skim.at - start),
            };
            Some(())
        })?;
        Some(total)
    }

    /// An item's `content`: `None` (inside) for `null`, which counts as no content.
    fn content_tokens(&mut self, depth: usize, tokens: fn(usize) -> u64) -> Option<Option<u64>> {
        self.nullable(|skim| match skim.peek()? {
            b'[' => {
                let mut sum: u64 = 0;
                skim.array(depth, |skim| {
                    sum += skim.part_tokens(depth + 1, tokens)?;
                    Some(())
                })?;
                Some(sum)
            }
            _ => {
                let start = skim.at;
                skim.value(depth)?;
                Some(tokens(skim.at - start))
            }
        })
    }

    /// One part of a content array: an image by its detail, anything else by its `text`'s
    /// length (a member named twice: the last one, as a JSON object reads).
    fn part_tokens(&mut self, depth: usize, tokens: fn(usize) -> u64) -> Option<u64> {
        if self.peek()? != b'{' {
            self.value(depth)?;
            return Some(tokens(0));
        }
        let mut image = false;
        let mut low = false;
        let mut text_len = 0;
        self.object(depth, |skim, key| match key? {
            "type" => {
                image = matches!(skim.plain_string()?, Some("image_url" | "input_image"));
                Some(())
            }
            "text" => {
                text_len = skim.string_len()?.unwrap_or(0);
                Some(())
            }
            "image_url" => {
                low = false;
                if skim.peek()? != b'{' {
                    return skim.value(depth + 1);
                }
                skim.object(depth + 1, |skim, key| match key? {
                    "detail" => {
                        low = skim.plain_string()? == Some("low");
                        Some(())
                    }
                    _ => skim.value(depth + 1),
                })
            }
            _ => skim.value(depth),
        })?;
        Some(match (image, low) {
            (true, true) => 85,
            (true, false) => 765,
            (false, _) => tokens(text_len),
        })
    }

    /// A Messages array of blocks (`depth`: the array's own), block by block.
    fn blocks(&mut self, depth: usize, tokens: fn(usize) -> u64) -> Option<u64> {
        let mut sum: u64 = 0;
        self.array(depth, |skim| {
            sum += skim.block_tokens(depth + 1, tokens)?;
            Some(())
        })?;
        Some(sum)
    }

    /// One Messages block as the estimate counts it (it reads a block as a struct of an
    /// optional borrowed `type` and an optional `text`): an image 765, a text block by its
    /// text's length, any other block, or one that struct refuses (a `type` or `text` named
    /// twice or of another kind, a `type` with escapes, not an object), by its JSON's bytes.
    /// `None` where unsure: a name written with escapes, a block written as an array (which
    /// that struct reads field by field).
    fn block_tokens(&mut self, depth: usize, tokens: fn(usize) -> u64) -> Option<u64> {
        let start = self.at;
        match self.peek()? {
            b'{' => {}
            b'[' => return None,
            _ => {
                self.value(depth)?;
                return Some(tokens(self.at - start));
            }
        }
        let mut kind: Option<Option<&str>> = None;
        let mut text: Option<Option<usize>> = None;
        let mut refused = false;
        self.object(depth, |skim, key| match key? {
            "type" if kind.is_none() => {
                let read = skim.nullable(|skim| match skim.string_value()? {
                    (Some(name), false) => Some(Some(name)),
                    _ => {
                        refused = true;
                        Some(None)
                    }
                })?;
                kind = Some(read.flatten());
                Some(())
            }
            "text" if text.is_none() => {
                let read = skim.nullable(|skim| {
                    let len = skim.string_len()?;
                    refused |= len.is_none();
                    Some(len)
                })?;
                text = Some(read.flatten());
                Some(())
            }
            "type" | "text" => {
                refused = true;
                skim.value(depth)
            }
            _ => skim.value(depth),
        })?;
        Some(match (refused, kind.flatten(), text.flatten()) {
            (false, Some("image"), _) => 765,
            (false, Some("text"), Some(len)) => tokens(len),
            _ => tokens(self.at - start),
        })
    }

    /// A string value written without escapes, as text; `Some(None)` for a value that is not
    /// a string; `None` (unsure) for a string with escapes.
    fn plain_string(&mut self) -> Option<Option<&str>> {
        let (inner, escaped) = self.string_value()?;
        (!escaped).then_some(inner)
    }

    /// A string value's length once unescaped, in bytes; `Some(None)` for a value that is not
    /// a string; `None` for a lone surrogate (which a JSON reader refuses). One pass: the
    /// escapes are counted where the string's end is looked for.
    fn string_len(&mut self) -> Option<Option<usize>> {
        if self.peek()? != b'"' {
            self.value(DEPTH)?;
            return Some(None);
        }
        self.at += 1;
        let start = self.at;
        if self.short_string() {
            return Some(Some(self.at - 1 - start));
        }
        self.unescaped_len().map(Some)
    }

    /// The rest of a string (its opening quote read), as [`Skim::string`] reads it, and its
    /// length once its escapes are read: one byte each, a `\u` escape the UTF-8 length of its
    /// character, a surrogate pair four. `None` for a lone surrogate, or a string JSON does not
    /// allow.
    fn unescaped_len(&mut self) -> Option<usize> {
        let bytes = self.text.as_bytes();
        let start = self.at;
        let mut specials = Specials::new(bytes, start);
        // Bytes the escapes take beyond what they stand for.
        let mut shrink = 0;
        loop {
            let at = specials.next()?;
            match bytes.get(at)? {
                b'"' => {
                    self.at = at + 1;
                    return Some(at - start - shrink);
                }
                b'\\' => {}
                _ => return None,
            }
            let (width, len) = match bytes.get(at + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => (2, 1),
                b'u' => match hex4(bytes.get(at + 2..at + 6)?)? {
                    0xD800..=0xDBFF => {
                        let low = bytes.get(at + 6..at + 12)?;
                        if !low.starts_with(b"\\u")
                            || !(0xDC00..=0xDFFF).contains(&hex4(&low[2..])?)
                        {
                            return None;
                        }
                        self.unusual = true;
                        (12, 4)
                    }
                    0xDC00..=0xDFFF => return None,
                    0..0x80 => (6, 1),
                    0x80..0x800 => (6, 2),
                    _ => (6, 3),
                },
                _ => return None,
            };
            shrink += width - len;
            specials.pass(at + width);
        }
    }

    /// Reads the next value: a string's text between its quotes (as written, escapes
    /// included) and whether it holds an escape; `None` text for a value that is not a string
    /// (read past); `None` for a value that does not read.
    fn string_value(&mut self) -> Option<(Option<&'a str>, bool)> {
        if self.peek()? != b'"' {
            self.value(DEPTH)?;
            return Some((None, false));
        }
        self.at += 1;
        let start = self.at;
        let escaped = self.string()?;
        Some((Some(&self.text[start..self.at - 1]), escaped))
    }
}

/// Four hex digits as a number; `None` for anything else.
fn hex4(digits: &[u8]) -> Option<u32> {
    digits
        .iter()
        .try_fold(0, |n, &d| Some(n << 4 | char::from(d).to_digit(16)?))
}

/// The special bytes of a string's text (quotes, backslashes, control characters) from a
/// place on, in order: each block's mask made once ([`block_mask`], sixteen bytes at a time)
/// and its bits taken in turn, so an escape does not load its block again. The first block is
/// sixteen bytes (most names and values end in it), the next ones 64; the last block of the
/// text is read from a copy padded with spaces. A byte of a multi-byte character has its top
/// bit set and is none of them.
struct Specials<'b> {
    bytes: &'b [u8],
    /// Where the block starts, and how many bytes it covers.
    base: usize,
    width: usize,
    /// The block's special bytes not yet taken: bit `i` for `base + i`.
    mask: u64,
}

impl<'b> Specials<'b> {
    #[inline(always)]
    fn new(bytes: &'b [u8], at: usize) -> Self {
        let mask = match bytes.get(at..at + 16) {
            Some(block) => u64::from(block_mask(block.try_into().unwrap_or(&[0; 16]))),
            None => padded_mask(bytes, at),
        };
        Specials {
            bytes,
            base: at,
            width: 16,
            mask,
        }
    }

    /// Where the next special byte is; `None` at the end of the text.
    #[inline(always)]
    fn next(&mut self) -> Option<usize> {
        while self.mask == 0 {
            self.base += self.width;
            if self.base >= self.bytes.len() {
                return None;
            }
            self.width = 64;
            self.mask = wide_mask(self.bytes, self.base);
        }
        Some(self.base + self.mask.trailing_zeros() as usize)
    }

    /// Passes over the bytes before `at` (the end of an escape, after the last byte taken).
    #[inline(always)]
    fn pass(&mut self, at: usize) {
        match at - self.base {
            skip if skip < self.width => self.mask &= u64::MAX << skip,
            _ => {
                self.base = at;
                self.width = 64;
                self.mask = wide_mask(self.bytes, at);
            }
        }
    }
}

/// The special bytes of the 64 at `at` (fewer at the end of `bytes`), bit `i` for `at + i`.
#[inline(always)]
fn wide_mask(bytes: &[u8], at: usize) -> u64 {
    match bytes.get(at..at + 64) {
        Some(block) => wide_block_mask(block.try_into().unwrap_or(&[0; 64])),
        None => padded_mask(bytes, at),
    }
}

/// [`block_mask`] of 64 bytes. On x86_64 the control characters are looked for in the
/// smallest byte of the four quarters first: a string's text has none (JSON does not allow
/// them), so most blocks are only compared with the quote and the backslash.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn wide_block_mask(block: &[u8; 64]) -> u64 {
    use safe_arch::{
        bitor_m128i, cmp_eq_mask_i8_m128i, load_unaligned_m128i, max_u8_m128i, min_u8_m128i,
        move_mask_i8_m128i, set_splat_i8_m128i,
    };
    let quarter = |i: usize| {
        let bytes: &[u8; 16] = block[i * 16..i * 16 + 16].try_into().unwrap_or(&[0; 16]);
        load_unaligned_m128i(bytes)
    };
    let v = [quarter(0), quarter(1), quarter(2), quarter(3)];
    let least = min_u8_m128i(min_u8_m128i(v[0], v[1]), min_u8_m128i(v[2], v[3]));
    let below_space = set_splat_i8_m128i(0x1f);
    if move_mask_i8_m128i(cmp_eq_mask_i8_m128i(
        max_u8_m128i(least, below_space),
        below_space,
    )) != 0
    {
        return generic_wide_block_mask(block);
    }
    let (quote, backslash) = (
        set_splat_i8_m128i(b'"' as i8),
        set_splat_i8_m128i(b'\\' as i8),
    );
    v.iter().rev().fold(0, |mask, &v| {
        let ends = bitor_m128i(
            cmp_eq_mask_i8_m128i(v, quote),
            cmp_eq_mask_i8_m128i(v, backslash),
        );
        mask << 16 | u64::from(move_mask_i8_m128i(ends) as u16)
    })
}

#[cfg(not(target_arch = "x86_64"))]
use generic_wide_block_mask as wide_block_mask;

/// [`wide_block_mask`] as four [`block_mask`]s.
fn generic_wide_block_mask(block: &[u8; 64]) -> u64 {
    block.chunks_exact(16).rev().fold(0, |mask, quarter| {
        mask << 16 | u64::from(block_mask(quarter.try_into().unwrap_or(&[0; 16])))
    })
}

/// [`wide_mask`] of the bytes from `at` to the end (fewer than 64), read from a copy padded
/// with spaces.
#[cold]
fn padded_mask(bytes: &[u8], at: usize) -> u64 {
    let rest = bytes.get(at..).unwrap_or_default();
    let mut block = [b' '; 64];
    let len = rest.len().min(64);
    block[..len].copy_from_slice(&rest[..len]);
    wide_mask(&block, 0)
}

/// Bit `i` set when `block[i]` is a quote, a backslash or a control character. On x86_64 with
/// SSE2 (which every x86_64 has): three compares and one `pmovmskb`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn block_mask(block: &[u8; 16]) -> u32 {
    use safe_arch::{
        bitor_m128i, cmp_eq_mask_i8_m128i, load_unaligned_m128i, max_u8_m128i, move_mask_i8_m128i,
        set_splat_i8_m128i,
    };
    let v = load_unaligned_m128i(block);
    let below_space = set_splat_i8_m128i(0x1f);
    // Unsigned `v <= 0x1f`: the larger of `v` and 0x1f is 0x1f.
    let control = cmp_eq_mask_i8_m128i(max_u8_m128i(v, below_space), below_space);
    let ends = bitor_m128i(
        cmp_eq_mask_i8_m128i(v, set_splat_i8_m128i(b'"' as i8)),
        cmp_eq_mask_i8_m128i(v, set_splat_i8_m128i(b'\\' as i8)),
    );
    move_mask_i8_m128i(bitor_m128i(ends, control)) as u32
}

#[cfg(not(target_arch = "x86_64"))]
use block_mask_words as block_mask;

/// [`block_mask`] without SIMD: each eight bytes an exact zero-byte test on a word (the top
/// bit of each byte that is zero), its eight top bits then gathered into a byte.
#[cfg(any(test, not(target_arch = "x86_64")))]
fn block_mask_words(block: &[u8; 16]) -> u32 {
    const LOW7: u64 = u64::MAX / 255 * 0x7f;
    const ONES: u64 = u64::MAX / 255;
    // High bit of each byte of `v` that is zero, and no other bit.
    let zero = |v: u64| !(((v & LOW7) + LOW7) | v | LOW7);
    let word = |half: &[u8]| {
        let x = u64::from_le_bytes(half.try_into().unwrap_or_default());
        let hits = zero(x & (ONES * 0xe0)) // below 0x20
            | zero(x ^ (ONES * u64::from(b'"')))
            | zero(x ^ (ONES * u64::from(b'\\')));
        // Bit 7 of byte k to bit k.
        ((hits >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56) as u32
    };
    word(&block[..8]) | word(&block[8..]) << 8
}

/// A token count field: a non-negative integer, or `null` (`None`); `None` for anything else,
/// which serde refuses.
fn count(raw: &str) -> Option<Option<u64>> {
    serde_json::from_str(raw).ok()
}

#[cfg(test)]
mod tests;
