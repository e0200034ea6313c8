//! Chat completions' side of Codex's tool round trip (`crate::tools`): reading the last message
//! of a chat request ([`reply_for`]), and a text or tool-call answer as a `chat.completion` or
//! as chunks in OpenAI's order ([`answer`]). The usual answer ("Hello from mock", `tok{i} `
//! chunks) stays in `crate::answers` and `crate::sse`.

use bytes::Bytes;
use http::StatusCode;
use serde_json::{json, Map, Value};

use crate::answers::{Answer, DEFAULT_TEXT};
use crate::sse::{self, StreamSpec};
use crate::tools::{self, split_even, text_of, Last, Reply};

/// What a chat request gets: a `tool` message last is the tool's output, a `user` message last
/// may carry the marker; see the crate docs.
pub(crate) fn reply_for(request: &Map<String, Value>) -> Reply {
    let last = request
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|messages| messages.last())
        .map_or(Last::Other, |message| {
            let text = || text_of(message.get("content").unwrap_or(&Value::Null));
            match message.get("role").and_then(Value::as_str) {
                Some("tool") => Last::ToolOutput(text()),
                Some("user") => Last::UserText(text()),
                _ => Last::Other,
            }
        });
    tools::reply(last, request.get("tools"))
}

/// The answer saying `reply`, plain or streamed (`crate::answers` keeps [`Reply::Default`] for
/// its own `tok{i} ` stream); a call's id is `call_<tag>`. Text comes in `spec.chunks` pieces, a call's
/// arguments in at least 2; `completion_tokens` counts them.
pub(crate) fn answer(spec: &StreamSpec, reply: Reply, tag: &str, stream: bool) -> Answer {
    let said = match reply {
        Reply::Default => Said::Text(split_even(DEFAULT_TEXT, spec.chunks)),
        Reply::Text(text) => Said::Text(split_even(&text, spec.chunks)),
        Reply::Call { name, arguments } => Said::Call {
            id: format!("call_{tag}"),
            name,
            pieces: split_even(&arguments, spec.chunks.max(2)),
        },
    };
    if stream {
        Answer {
            status: StatusCode::OK,
            content_type: "text/event-stream",
            pieces: stream_events(spec, &said),
            streaming: true,
        }
    } else {
        Answer::json(StatusCode::OK, &completion(spec, &said))
    }
}

/// What one answer says, in the pieces it is streamed in.
enum Said {
    Text(Vec<String>),
    Call {
        id: String,
        name: String,
        pieces: Vec<String>,
    },
}

impl Said {
    fn pieces(&self) -> &[String] {
        match self {
            Said::Text(pieces) | Said::Call { pieces, .. } => pieces,
        }
    }

    fn finish_reason(&self) -> &'static str {
        match self {
            Said::Text(_) => "stop",
            Said::Call { .. } => "tool_calls",
        }
    }
}

/// The plain `chat.completion`.
fn completion(spec: &StreamSpec, said: &Said) -> Value {
    let message = match said {
        Said::Text(pieces) => json!({ "role": "assistant", "content": pieces.concat() }),
        Said::Call { id, name, pieces } => json!({
            "role": "assistant",
            "content": null,
            "tool_calls": [{
                "id": id,
                "type": "function",
                "function": { "name": name, "arguments": pieces.concat() },
            }],
        }),
    };
    let tokens = said.pieces().len();
    json!({
        "id": spec.id,
        "object": "chat.completion",
        "created": spec.created,
        "model": spec.model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": said.finish_reason(),
        }],
        "usage": if spec.huge_usage {
            sse::huge_usage()
        } else {
            sse::usage(spec.prompt_tokens, tokens)
        },
    })
}

/// The chunks in OpenAI's order: the role (and, for a call, the call's id, name and empty
/// arguments), one chunk per piece, an empty delta with the finish reason, the usage chunk if
/// asked for, `[DONE]`.
fn stream_events(spec: &StreamSpec, said: &Said) -> Vec<Bytes> {
    let choice = |delta: Value, finish: Option<&str>| json!({ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish });
    let first = match said {
        Said::Text(_) => json!({ "role": "assistant", "content": "" }),
        Said::Call { id, name, .. } => json!({
            "role": "assistant",
            "content": null,
            "tool_calls": [{
                "index": 0,
                "id": id,
                "type": "function",
                "function": { "name": name, "arguments": "" },
            }],
        }),
    };
    let mut events = Vec::with_capacity(said.pieces().len() + 4);
    events.push(sse::chunk_event(spec, choice(first, None)));
    for piece in said.pieces() {
        let delta = match said {
            Said::Text(_) => json!({ "content": piece }),
            Said::Call { .. } => {
                json!({ "tool_calls": [{ "index": 0, "function": { "arguments": piece } }] })
            }
        };
        events.push(sse::chunk_event(spec, choice(delta, None)));
    }
    let last = choice(json!({}), Some(said.finish_reason()));
    events.push(sse::chunk_event(spec, last));
    events.extend(sse::usage_event(spec, said.pieces().len()));
    events.push(sse::done_event());
    events
}

#[cfg(test)]
mod tests;
