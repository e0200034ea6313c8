//! Streamed bodies: building the SSE events of a streaming answer, and the
//! [`Pieces`] emitter that sends any body piece by piece, applying chunk
//! delays, holds and breaks as it goes.
//!
//! The emitter is a lazy `futures` stream, so each piece is produced only when
//! hyper asks for it: a client really sees the first event before the last one
//! exists, and a client that hangs up stops the producer.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, Stream};
use serde_json::{json, Value};
use tokio::sync::watch;

/// Which streaming endpoint the events are for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StreamKind {
    /// `chat.completion.chunk` with `choices[].delta`.
    Chat,
    /// `text_completion` with `choices[].text`.
    Completion,
}

/// What every chunk of one streamed answer shares.
#[derive(Clone, Debug)]
pub(crate) struct StreamSpec {
    pub(crate) kind: StreamKind,
    pub(crate) id: String,
    pub(crate) created: u64,
    pub(crate) model: String,
    pub(crate) chunks: usize,
    pub(crate) include_usage: bool,
    pub(crate) prompt_tokens: usize,
    /// The usage chunk reports `u64::MAX` tokens.
    pub(crate) huge_usage: bool,
}

/// Frames one JSON value as an SSE `data:` event.
pub(crate) fn data_event(value: &Value) -> Bytes {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"data: ");
    // Serializing a `Value` into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, value);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// Frames one JSON value as a named SSE event (`event: NAME` then `data:`),
/// as Anthropic streams do.
pub(crate) fn named_event(name: &str, value: &Value) -> Bytes {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    // Serializing a `Value` into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, value);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// The terminating `data: [DONE]` event.
pub(crate) fn done_event() -> Bytes {
    Bytes::from_static(b"data: [DONE]\n\n")
}

/// All events of a successful streamed answer, `[DONE]` included.
///
/// Chat: chunk 0 carries `{"role":"assistant","content":""}`, chunk i>0
/// carries `"tok{i-1} "`; completions send `"tok{i} "` in chunk i. The last
/// chunk has `finish_reason: "stop"`. With `include_usage`, every chunk has
/// `"usage": null` and a final `choices: []` chunk carries the usage.
pub(crate) fn stream_events(spec: &StreamSpec) -> Vec<Bytes> {
    let mut events = Vec::with_capacity(spec.chunks + 2);
    for i in 0..spec.chunks {
        let finish = (i + 1 == spec.chunks).then_some("stop");
        let choice = match spec.kind {
            StreamKind::Chat => {
                let delta = if i == 0 {
                    json!({ "role": "assistant", "content": "" })
                } else {
                    json!({ "content": format!("tok{} ", i - 1) })
                };
                json!({ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish })
            }
            StreamKind::Completion => json!({
                "text": format!("tok{i} "), "index": 0, "logprobs": null, "finish_reason": finish
            }),
        };
        events.push(chunk_event(spec, choice));
    }
    events.extend(usage_event(spec, spec.chunks));
    events.push(done_event());
    events
}

/// One chunk with a single choice (`"usage": null` when the stream reports usage).
pub(crate) fn chunk_event(spec: &StreamSpec, choice: Value) -> Bytes {
    let mut chunk = envelope(spec, vec![choice]);
    if spec.include_usage {
        chunk["usage"] = Value::Null;
    }
    data_event(&chunk)
}

/// The final `choices: []` chunk carrying the usage, when the stream reports it.
pub(crate) fn usage_event(spec: &StreamSpec, completion_tokens: usize) -> Option<Bytes> {
    if !spec.include_usage {
        return None;
    }
    let mut chunk = envelope(spec, Vec::new());
    chunk["usage"] = if spec.huge_usage {
        huge_usage()
    } else {
        usage(spec.prompt_tokens, completion_tokens)
    };
    Some(data_event(&chunk))
}

fn envelope(spec: &StreamSpec, choices: Vec<Value>) -> Value {
    let object = match spec.kind {
        StreamKind::Chat => "chat.completion.chunk",
        StreamKind::Completion => "text_completion",
    };
    json!({
        "id": spec.id,
        "object": object,
        "created": spec.created,
        "model": spec.model,
        "system_fingerprint": null,
        "choices": choices,
    })
}

/// An OpenAI `usage` object.
pub(crate) fn usage(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

/// A `usage` object claiming `u64::MAX` tokens everywhere: what `Fault::HugeUsage` sends.
pub(crate) fn huge_usage() -> Value {
    json!({
        "prompt_tokens": u64::MAX,
        "completion_tokens": u64::MAX,
        "total_tokens": u64::MAX,
    })
}

/// Whether `piece` is a chat chunk (`data: {...}`) whose delta has text or a tool call.
fn chat_chunk_has_output(piece: &Bytes) -> bool {
    let Some(data) = piece.strip_prefix(b"data: ") else {
        return false;
    };
    let Ok(chunk) = serde_json::from_slice::<Value>(data.trim_ascii_end()) else {
        return false;
    };
    let output = |delta: &Value| {
        delta["content"]
            .as_str()
            .is_some_and(|text| !text.is_empty())
            || delta["tool_calls"]
                .as_array()
                .is_some_and(|calls| !calls.is_empty())
    };
    chunk["choices"]
        .as_array()
        .is_some_and(|choices| choices.iter().any(|choice| output(&choice["delta"])))
}

/// Sends a list of body pieces with optional delay, hold and break.
#[derive(Debug)]
pub(crate) struct Pieces {
    pieces: Vec<Bytes>,
    next: usize,
    /// Sleep before every piece but the first.
    delay: Duration,
    /// When set, wait for a new hold generation before piece `hold_at`.
    hold: Option<watch::Receiver<u64>>,
    /// The piece the hold comes before.
    hold_at: usize,
    /// When set, yield an error instead of the piece at this index.
    break_at: Option<usize>,
}

impl Pieces {
    /// Sends `pieces` in order, `delay` apart, ending cleanly.
    pub(crate) fn new(pieces: Vec<Bytes>, delay: Duration) -> Pieces {
        Pieces {
            pieces,
            next: 0,
            delay,
            hold: None,
            hold_at: 1,
            break_at: None,
        }
    }

    /// After the first piece that carries output (a gateway commits a stream there; the
    /// events before it, a role-only chunk or `response.created`, it holds back), waits until
    /// `hold` sees a value newer than the one it was subscribed at. A body without such a
    /// piece (a plain answer cut in two) holds after its first piece.
    pub(crate) fn hold_after_first(mut self, hold: watch::Receiver<u64>) -> Pieces {
        const OUTPUT: [&[u8]; 4] = [
            b"\"text\":\"tok",
            b"output_text.delta",
            b"function_call_arguments.delta",
            b"content_block_delta",
        ];
        let carries_output = |piece: &Bytes| {
            OUTPUT
                .iter()
                .any(|m| piece.windows(m.len()).any(|w| w == *m))
                || chat_chunk_has_output(piece)
        };
        self.hold_at = self
            .pieces
            .iter()
            .position(carries_output)
            .map_or(1, |i| i + 1);
        self.hold = Some(hold);
        self
    }

    /// Sends at most `n` pieces (never the last one), then fails the body.
    pub(crate) fn break_after(mut self, n: usize) -> Pieces {
        let last = self.pieces.len().saturating_sub(1);
        self.break_at = Some(n.min(last));
        self
    }

    /// The lazy stream hyper polls for body frames.
    pub(crate) fn into_stream(self) -> impl Stream<Item = Result<Bytes, io::Error>> + Send {
        stream::unfold(self, |mut s| async move {
            let index = s.next;
            if index >= s.pieces.len() {
                return None;
            }
            if s.break_at == Some(index) {
                s.next = s.pieces.len();
                // Return Pending once so hyper flushes the pieces already
                // written; an error straight away would drop them unsent.
                tokio::task::yield_now().await;
                let err = io::Error::new(io::ErrorKind::ConnectionReset, "mock-upstream: break");
                return Some((Err(err), s));
            }
            if index == s.hold_at {
                if let Some(mut hold) = s.hold.take() {
                    // An error means the handle is gone: nothing can release us, so go on.
                    let _ = hold.changed().await;
                }
            }
            if index > 0 && !s.delay.is_zero() {
                tokio::time::sleep(s.delay).await;
            }
            s.next += 1;
            Some((Ok(s.pieces[index].clone()), s))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn spec(kind: StreamKind, chunks: usize, include_usage: bool) -> StreamSpec {
        StreamSpec {
            kind,
            id: "chatcmpl-mock-1".into(),
            created: 1,
            model: "m".into(),
            chunks,
            include_usage,
            prompt_tokens: 5,
            huge_usage: false,
        }
    }

    fn parse(event: &Bytes) -> Value {
        std::str::from_utf8(event)
            .ok()
            .and_then(|text| text.strip_prefix("data: "))
            .and_then(|text| text.strip_suffix("\n\n"))
            .and_then(|json| serde_json::from_str(json).ok())
            .unwrap_or(Value::Null)
    }

    #[test]
    fn chat_events_follow_openai_shape() {
        let events = stream_events(&spec(StreamKind::Chat, 3, false));
        assert_eq!(events.len(), 4);
        let first = parse(&events[0]);
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(first["choices"][0]["delta"]["content"], "");
        assert!(first.get("usage").is_none());
        assert_eq!(parse(&events[1])["choices"][0]["delta"]["content"], "tok0 ");
        let last = parse(&events[2]);
        assert_eq!(last["choices"][0]["delta"]["content"], "tok1 ");
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
        assert_eq!(events[3], done_event());
    }

    #[test]
    fn include_usage_adds_null_usage_and_a_usage_chunk() {
        let events = stream_events(&spec(StreamKind::Completion, 2, true));
        assert_eq!(events.len(), 4);
        assert!(parse(&events[0])["usage"].is_null());
        assert_eq!(parse(&events[0])["choices"][0]["text"], "tok0 ");
        let usage = parse(&events[2]);
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["completion_tokens"], 2);
        assert_eq!(usage["usage"]["total_tokens"], 7);
    }

    #[tokio::test]
    async fn break_after_never_sends_the_last_piece() {
        let pieces = vec![Bytes::from("a"), Bytes::from("b"), Bytes::from("c")];
        let out: Vec<_> = Pieces::new(pieces, Duration::ZERO)
            .break_after(10)
            .into_stream()
            .collect()
            .await;
        assert_eq!(out.len(), 3);
        assert!(out[0].is_ok() && out[1].is_ok() && out[2].is_err());
    }

    #[tokio::test]
    async fn hold_waits_for_release() {
        let (tx, rx) = watch::channel(0u64);
        let pieces = vec![Bytes::from("a"), Bytes::from("b")];
        let mut s = Box::pin(
            Pieces::new(pieces, Duration::ZERO)
                .hold_after_first(rx)
                .into_stream(),
        );
        assert_eq!(s.next().await.map(Result::ok), Some(Some(Bytes::from("a"))));
        let second = tokio::time::timeout(Duration::from_millis(20), s.next()).await;
        assert!(second.is_err(), "second piece must wait for release");
        tx.send_modify(|g| *g += 1);
        assert_eq!(s.next().await.map(Result::ok), Some(Some(Bytes::from("b"))));
        assert!(s.next().await.is_none());
    }
}
