//! The normal answers of every endpoint, computed as an [`Answer`] (status,
//! content type, body pieces) before faults decide how it is sent.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::StatusCode;
use serde_json::{json, Value};

use crate::faults;
use crate::sse::{self, StreamKind, StreamSpec};
use crate::{chat, tools::Reply};

/// A computed answer before faults shape how it is sent.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) content_type: &'static str,
    /// SSE events when streaming, else one whole body.
    pub(crate) pieces: Vec<Bytes>,
    pub(crate) streaming: bool,
}

impl Answer {
    pub(crate) fn json(status: StatusCode, value: &Value) -> Answer {
        Answer {
            status,
            content_type: "application/json",
            pieces: vec![Bytes::from(value.to_string())],
            streaming: false,
        }
    }

    pub(crate) fn error(status: StatusCode, message: &str) -> Answer {
        let kind = if status.is_server_error() {
            "server_error"
        } else {
            "invalid_request_error"
        };
        Answer::json(status, &faults::error_envelope(message, kind, None))
    }
}

/// The text of every route's usual answer (streamed chat and completions send `tok{i} `
/// instead).
pub(crate) const DEFAULT_TEXT: &str = "Hello from mock";

/// Per-request settings after header overrides.
pub(crate) struct Knobs {
    pub(crate) seq: u64,
    /// The bound port: with `seq`, it makes ids unique across the servers of a test.
    pub(crate) port: u16,
    pub(crate) chunks: usize,
    pub(crate) chunk_delay: Duration,
    pub(crate) prompt_tokens: usize,
    /// Report `u64::MAX` tokens in every usage object (`Fault::HugeUsage`).
    pub(crate) huge_usage: bool,
}

impl Knobs {
    /// `<port>_<seq>`, the tail of ids that must not repeat across servers (`resp_…`, `call_…`).
    pub(crate) fn tag(&self) -> String {
        format!("{}_{}", self.port, self.seq)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Parses a JSON object body or explains why it is not one.
pub(crate) fn parse_object(body: &Bytes) -> Result<serde_json::Map<String, Value>, Answer> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Answer::error(
            StatusCode::BAD_REQUEST,
            "The request body must be a JSON object (mock).",
        )),
        Err(err) => Err(Answer::error(
            StatusCode::BAD_REQUEST,
            &format!("We could not parse the JSON body of your request (mock): {err}"),
        )),
    }
}

fn model_of(request: &serde_json::Map<String, Value>) -> String {
    request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("mock-model")
        .to_owned()
}

/// Chat completions and legacy completions, plain or streamed. A chat request in Codex's tool
/// round trip gets its answer from [`chat::answer`].
pub(crate) fn completion(body: &Bytes, knobs: &Knobs, kind: StreamKind) -> Answer {
    let request = match parse_object(body) {
        Ok(request) => request,
        Err(answer) => return answer,
    };
    let stream = request.get("stream").and_then(Value::as_bool) == Some(true);
    let include_usage = request
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        == Some(true);
    let spec = StreamSpec {
        kind,
        id: match kind {
            StreamKind::Chat => format!("chatcmpl-mock-{}", knobs.seq),
            StreamKind::Completion => format!("cmpl-mock-{}", knobs.seq),
        },
        created: unix_now(),
        model: model_of(&request),
        chunks: knobs.chunks,
        include_usage,
        prompt_tokens: knobs.prompt_tokens,
        huge_usage: knobs.huge_usage,
    };
    if kind == StreamKind::Chat {
        match chat::reply_for(&request) {
            Reply::Default => {}
            reply => return chat::answer(&spec, reply, &knobs.tag(), stream),
        }
    }
    if stream {
        return Answer {
            status: StatusCode::OK,
            content_type: "text/event-stream",
            pieces: sse::stream_events(&spec),
            streaming: true,
        };
    }
    let (object, choice) = match kind {
        StreamKind::Chat => (
            "chat.completion",
            json!({
                "index": 0,
                "message": { "role": "assistant", "content": DEFAULT_TEXT },
                "logprobs": null,
                "finish_reason": "stop",
            }),
        ),
        StreamKind::Completion => (
            "text_completion",
            json!({ "text": DEFAULT_TEXT, "index": 0, "logprobs": null, "finish_reason": "stop" }),
        ),
    };
    let value = json!({
        "id": spec.id,
        "object": object,
        "created": spec.created,
        "model": spec.model,
        "choices": [choice],
        "usage": if knobs.huge_usage {
            sse::huge_usage()
        } else {
            sse::usage(knobs.prompt_tokens, knobs.chunks)
        },
    });
    Answer::json(StatusCode::OK, &value)
}

/// One fixed three-number embedding per input item.
pub(crate) fn embeddings(body: &Bytes, knobs: &Knobs) -> Answer {
    let request = match parse_object(body) {
        Ok(request) => request,
        Err(answer) => return answer,
    };
    let count = match request.get("input") {
        Some(Value::String(_)) => 1,
        // A flat array of numbers is one pre-tokenized input.
        Some(Value::Array(items)) if !items.is_empty() && items.iter().all(Value::is_number) => 1,
        Some(Value::Array(items)) => items.len(),
        _ => {
            return Answer::error(
                StatusCode::BAD_REQUEST,
                "'input' must be a string or an array (mock).",
            )
        }
    };
    let data: Vec<Value> = (0..count)
        .map(|i| json!({ "object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3] }))
        .collect();
    let value = json!({
        "object": "list",
        "data": data,
        "model": model_of(&request),
        "usage": if knobs.huge_usage {
            json!({ "prompt_tokens": u64::MAX, "total_tokens": u64::MAX })
        } else {
            json!({ "prompt_tokens": knobs.prompt_tokens, "total_tokens": knobs.prompt_tokens })
        },
    });
    Answer::json(StatusCode::OK, &value)
}

pub(crate) fn models() -> Answer {
    let value = json!({
        "object": "list",
        "data": [{ "id": "mock-model", "object": "model", "created": 0, "owned_by": "mock" }],
    });
    Answer::json(StatusCode::OK, &value)
}

/// 1024 bytes of fake MP3 (an ID3 tag followed by a byte ramp).
pub(crate) fn speech() -> Answer {
    let mut audio = Vec::with_capacity(1024);
    audio.extend_from_slice(b"ID3");
    audio.extend((0..1021u32).map(|i| (i % 251) as u8));
    Answer {
        status: StatusCode::OK,
        content_type: "audio/mpeg",
        pieces: vec![Bytes::from(audio)],
        streaming: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_count_inputs() {
        let knobs = Knobs {
            seq: 1,
            port: 1,
            chunks: 1,
            chunk_delay: Duration::ZERO,
            prompt_tokens: 1,
            huge_usage: false,
        };
        let count = |body: &str| {
            let answer = embeddings(&Bytes::from(body.to_owned()), &knobs);
            let v: Value = serde_json::from_slice(&answer.pieces[0]).ok()?;
            v["data"].as_array().map(Vec::len)
        };
        assert_eq!(count(r#"{"input":"a"}"#), Some(1));
        assert_eq!(count(r#"{"input":["a","b"]}"#), Some(2));
        assert_eq!(count(r#"{"input":[1,2,3]}"#), Some(1));
        assert_eq!(count(r#"{"input":[[1],[2]]}"#), Some(2));
        assert_eq!(count(r#"{}"#), None);
    }

    #[test]
    fn speech_is_1024_bytes() {
        assert_eq!(speech().pieces[0].len(), 1024);
    }
}
