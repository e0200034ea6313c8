//! `UsageTap`: reads the real `usage` out of an answer as it streams past, for TPM
//! reconciliation and the tokens metric. In a stream it finds the usage chunk and, when the
//! gateway asked for it on the client's behalf, removes it so the client sees what it asked for.

use bytes::{Bytes, BytesMut};
use openai_types::Usage;

/// Largest non-stream body scanned for usage; larger ones pass through unscanned.
const MAX_SCAN: usize = 4 << 20;

/// Scans an answer for its usage.
#[derive(Debug)]
pub struct UsageTap {
    stream: bool,
    strip: bool,
    buf: BytesMut,
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
            buf: BytesMut::new(),
            parts: Vec::new(),
            seen: 0,
            usage: None,
            overflow: false,
        }
    }

    /// A tap for a JSON body.
    pub fn body() -> Self {
        UsageTap {
            stream: false,
            strip: false,
            buf: BytesMut::new(),
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
        if !self.strip
            && self.buf.is_empty()
            && memchr::memmem::find(&chunk, b"\"usage\"").is_none()
        {
            // Fast path: nothing to look at and nothing carried over.
            if let Some(end) = memchr::memmem::rfind(&chunk, b"\n\n") {
                if end + 2 == chunk.len() {
                    return chunk;
                }
                self.buf.extend_from_slice(&chunk[end + 2..]);
            } else {
                self.buf.extend_from_slice(&chunk);
            }
            return chunk;
        }
        self.buf.extend_from_slice(&chunk);
        let mut out = BytesMut::new();
        while let Some(end) = memchr::memmem::find(&self.buf, b"\n\n") {
            let event = self.buf.split_to(end + 2);
            let keep = self.inspect(&event);
            if self.strip && keep {
                out.extend_from_slice(&event);
            }
        }
        if self.strip {
            out.freeze()
        } else {
            chunk
        }
    }

    /// Looks at one complete event; `false` when it must be stripped.
    fn inspect(&mut self, event: &[u8]) -> bool {
        if memchr::memmem::find(event, b"\"usage\":{").is_none()
            && memchr::memmem::find(event, b"\"usage\": {").is_none()
        {
            return true;
        }
        let data = event
            .strip_prefix(b"data: ")
            .or_else(|| event.strip_prefix(b"data:"))
            .unwrap_or(event);
        let Ok(chunk) = serde_json::from_slice::<Chunk>(data.trim_ascii_end()) else {
            return true;
        };
        if let Some(u) = chunk.usage {
            self.usage = Some(u);
        }
        !(chunk.usage.is_some() && chunk.choices.as_ref().is_some_and(Vec::is_empty))
    }

    /// What is left to send when the upstream ends (an incomplete trailing event while stripping).
    pub fn flush(&mut self) -> Option<Bytes> {
        (self.stream && self.strip && !self.buf.is_empty()).then(|| self.buf.split().freeze())
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

/// The top-level `usage` of a JSON answer. OpenAI puts it last, so the search starts from the
/// end and only that object is parsed; the whole body is parsed only if that fails.
fn usage_in_body(body: &[u8]) -> Option<Usage> {
    if let Some(at) = memchr::memmem::rfind(body, b"\"usage\"") {
        let rest = &body[at + 7..];
        let start = rest
            .iter()
            .position(|b| !matches!(b, b' ' | b'\n' | b'\r' | b'\t' | b':'))?;
        let mut de = serde_json::Deserializer::from_slice(&rest[start..]);
        if let Ok(u) = <Usage as serde::Deserialize>::deserialize(&mut de) {
            return Some(u);
        }
    }
    serde_json::from_slice::<openai_types::Probe>(body)
        .ok()
        .and_then(|p| p.usage)
}

#[derive(serde::Deserialize)]
struct Chunk {
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    choices: Option<Vec<serde::de::IgnoredAny>>,
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
mod tests {
    use super::*;

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
                total_tokens: 12
            })
        );
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
