//! What a valid `/v1/messages` request gets (see the module docs of `crate::anthropic`): the
//! content block it is answered with ([`Content`]), as a plain `message` or as named SSE events
//! in the real API's order.

use bytes::Bytes;
use http::StatusCode;
use serde_json::{json, Map, Value};

use crate::answers::{Answer, Knobs, DEFAULT_TEXT};
use crate::sse;
use crate::tools::{self, split_even, text_of, Last, Reply};

/// The text that makes a request with tools get a `tool_use` answer.
const TOOL_TRIGGER: &str = "use a tool";

/// The answer to a valid `request`, plain or streamed.
pub(super) fn answer(request: &Map<String, Value>, knobs: &Knobs) -> Answer {
    let spec = Spec {
        id: format!("msg_mock_{}", knobs.seq),
        model: request
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        content: content_for(request, knobs),
        chunks: knobs.chunks,
        input_tokens: knobs.prompt_tokens,
    };
    if request.get("stream").and_then(Value::as_bool) == Some(true) {
        Answer {
            status: StatusCode::OK,
            content_type: "text/event-stream",
            pieces: stream_events(&spec),
            streaming: true,
        }
    } else {
        Answer::json(StatusCode::OK, &message(&spec))
    }
}

/// What the answer says: Codex's tool round trip first, then the "use a tool" trigger, else the
/// usual text.
fn content_for(request: &Map<String, Value>, knobs: &Knobs) -> Content {
    match tools::reply(last_user_turn(request), request.get("tools")) {
        Reply::Default => match tool_to_call(request) {
            Some(name) => Content::ToolUse {
                id: TOOL_USE_ID.to_owned(),
                name,
                input: json!({ "city": "Paris" }),
                pieces: [r#"{"city": "#, r#""Paris"}"#].map(str::to_owned).to_vec(),
            },
            None => Content::Default,
        },
        Reply::Text(text) => Content::Text(split_even(&text, knobs.chunks)),
        Reply::Call { name, arguments } => Content::ToolUse {
            id: format!("toolu_{}", knobs.tag()),
            input: tools::tool_input(&name),
            name,
            pieces: split_even(&arguments, knobs.chunks.max(2)),
        },
    }
}

/// The last `user` message.
fn last_user(request: &Map<String, Value>) -> Option<&Value> {
    request
        .get("messages")?
        .as_array()?
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
}

/// The last `user` message as the round trip sees it: the content of its `tool_result` blocks
/// if it has any (each a string, or text blocks), else its text.
pub(super) fn last_user_turn(request: &Map<String, Value>) -> Last {
    let Some(content) = last_user(request).and_then(|m| m.get("content")) else {
        return Last::Other;
    };
    let results: Vec<String> = content
        .as_array()
        .into_iter()
        .flatten()
        .filter(|block| block.get("type").and_then(Value::as_str) == Some("tool_result"))
        .map(|block| text_of(block.get("content").unwrap_or(&Value::Null)))
        .collect();
    if results.is_empty() {
        Last::UserText(text_of(content))
    } else {
        Last::ToolOutput(results.join("\n"))
    }
}

/// The first tool's name, when the request has tools and its last user message
/// asks to "use a tool".
pub(super) fn tool_to_call(request: &Map<String, Value>) -> Option<String> {
    let first_tool = request.get("tools")?.get(0)?.get("name")?.as_str()?;
    let asks = match last_user(request)?.get("content")? {
        Value::String(text) => text.contains(TOOL_TRIGGER),
        Value::Array(blocks) => blocks.iter().any(|b| {
            b.get("type").and_then(Value::as_str) == Some("text")
                && b.get("text")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t.contains(TOOL_TRIGGER))
        }),
        _ => false,
    };
    asks.then(|| first_tool.to_owned())
}

/// What one answer says, plain or streamed.
struct Spec {
    id: String,
    model: String,
    content: Content,
    chunks: usize,
    input_tokens: usize,
}

/// The single content block of an answer.
enum Content {
    /// `"Hello from mock"`, streamed as `tok{i} ` deltas.
    Default,
    /// Any other text, streamed as these deltas.
    Text(Vec<String>),
    /// A `tool_use` block; streamed, its `input` JSON in these pieces after an empty one.
    ToolUse {
        id: String,
        name: String,
        input: Value,
        pieces: Vec<String>,
    },
}

impl Spec {
    fn stop_reason(&self) -> &'static str {
        match self.content {
            Content::ToolUse { .. } => "tool_use",
            Content::Default | Content::Text(_) => "end_turn",
        }
    }
}

/// The id of the "use a tool" trigger's `tool_use` block.
const TOOL_USE_ID: &str = "toolu_mock_1";

/// The plain `message` answer.
fn message(spec: &Spec) -> Value {
    let block = match &spec.content {
        Content::Default => json!({ "type": "text", "text": DEFAULT_TEXT }),
        Content::Text(deltas) => json!({ "type": "text", "text": deltas.concat() }),
        Content::ToolUse {
            id, name, input, ..
        } => json!({ "type": "tool_use", "id": id, "name": name, "input": input }),
    };
    json!({
        "id": spec.id,
        "type": "message",
        "role": "assistant",
        "model": spec.model,
        "content": [block],
        "stop_reason": spec.stop_reason(),
        "stop_sequence": null,
        "usage": { "input_tokens": spec.input_tokens, "output_tokens": spec.chunks },
    })
}

/// The named events of a streamed answer, in the real API's order.
fn stream_events(spec: &Spec) -> Vec<Bytes> {
    let mut events = Vec::with_capacity(spec.chunks + 7);
    let start = json!({
        "id": spec.id, "type": "message", "role": "assistant", "model": spec.model,
        "content": [], "stop_reason": null, "stop_sequence": null,
        "usage": { "input_tokens": spec.input_tokens, "output_tokens": 1 },
    });
    events.push(event("message_start", json!({ "message": start })));
    let (block, deltas) = block_and_deltas(spec);
    events.push(event(
        "content_block_start",
        json!({ "index": 0, "content_block": block }),
    ));
    events.push(event("ping", json!({})));
    for delta in deltas {
        events.push(event(
            "content_block_delta",
            json!({ "index": 0, "delta": delta }),
        ));
    }
    events.push(event("content_block_stop", json!({ "index": 0 })));
    events.push(event(
        "message_delta",
        json!({
            "delta": { "stop_reason": spec.stop_reason(), "stop_sequence": null },
            "usage": { "output_tokens": spec.chunks },
        }),
    ));
    events.push(event("message_stop", json!({})));
    events
}

/// The streamed block as `content_block_start` shows it (empty), and its deltas.
fn block_and_deltas(spec: &Spec) -> (Value, Vec<Value>) {
    let text = |texts: &mut dyn Iterator<Item = String>| -> (Value, Vec<Value>) {
        let deltas = texts.map(|text| json!({ "type": "text_delta", "text": text }));
        (json!({ "type": "text", "text": "" }), deltas.collect())
    };
    match &spec.content {
        Content::Default => text(&mut (0..spec.chunks).map(|i| format!("tok{i} "))),
        Content::Text(texts) => text(&mut texts.iter().cloned()),
        Content::ToolUse {
            id, name, pieces, ..
        } => (
            json!({ "type": "tool_use", "id": id, "name": name, "input": {} }),
            // Like the real API: an empty first piece, then the JSON in pieces.
            std::iter::once("")
                .chain(pieces.iter().map(String::as_str))
                .map(|p| json!({ "type": "input_json_delta", "partial_json": p }))
                .collect(),
        ),
    }
}

/// A named event whose data carries the same name as its `type`.
fn event(name: &str, mut data: Value) -> Bytes {
    if let Some(map) = data.as_object_mut() {
        map.insert("type".to_owned(), Value::from(name));
    }
    sse::named_event(name, &data)
}
