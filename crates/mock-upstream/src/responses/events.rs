//! One Responses API answer ([`Turn`]) as a `response` object and as its named SSE events, in
//! the order the real API sends them, each `data:` carrying the same `type` and an increasing
//! `sequence_number` (from 0); no `[DONE]`.

use bytes::Bytes;
use serde_json::{json, Value};

use crate::sse;

/// The single output item of an answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Output {
    /// An assistant `message` with one `output_text` part, streamed as these deltas.
    Message { deltas: Vec<String> },
    /// A `function_call` to `name`, its `arguments` (a JSON string) streamed as these deltas.
    Call { name: String, deltas: Vec<String> },
}

impl Output {
    pub(crate) fn deltas(&self) -> &[String] {
        match self {
            Output::Message { deltas } | Output::Call { deltas, .. } => deltas,
        }
    }

    /// The whole text or arguments.
    pub(crate) fn joined(&self) -> String {
        self.deltas().concat()
    }
}

/// Token counts of one answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Usage {
    pub(crate) input: usize,
    pub(crate) cached: usize,
    pub(crate) output: usize,
    /// Report `u64::MAX` tokens (`Fault::HugeUsage`).
    pub(crate) huge: bool,
}

impl Usage {
    pub(crate) fn to_json(self) -> Value {
        if self.huge {
            return json!({
                "input_tokens": u64::MAX,
                "input_tokens_details": { "cached_tokens": 0 },
                "output_tokens": u64::MAX,
                "output_tokens_details": { "reasoning_tokens": 0 },
                "total_tokens": u64::MAX,
            });
        }
        json!({
            "input_tokens": self.input,
            "input_tokens_details": { "cached_tokens": self.cached },
            "output_tokens": self.output,
            "output_tokens_details": { "reasoning_tokens": 0 },
            "total_tokens": self.input.saturating_add(self.output),
        })
    }
}

/// Everything one answer says, plain or streamed.
#[derive(Clone, Debug)]
pub(crate) struct Turn {
    /// `resp_…`.
    pub(crate) id: String,
    /// The output item's id: `msg_…` or `fc_…`.
    pub(crate) item_id: String,
    /// A function call's `call_id`: `call_…`.
    pub(crate) call_id: String,
    pub(crate) created_at: u64,
    pub(crate) model: String,
    pub(crate) previous_response_id: Option<String>,
    pub(crate) store: bool,
    pub(crate) output: Output,
    pub(crate) usage: Usage,
}

/// How a stream ends.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Ending<'a> {
    /// The whole answer and `response.completed`.
    Completed,
    /// `response.failed` (or an `error` event) right after `response.in_progress`.
    Failed {
        code: &'a str,
        message: &'a str,
        error_event: bool,
    },
}

impl Turn {
    /// The output item, as `response.output_item.added` (in progress, empty) or done shows it.
    pub(crate) fn item(&self, done: bool) -> Value {
        let status = if done { "completed" } else { "in_progress" };
        match &self.output {
            Output::Message { .. } => json!({
                "id": self.item_id,
                "type": "message",
                "status": status,
                "role": "assistant",
                "content": if done { vec![self.part(true)] } else { Vec::new() },
            }),
            Output::Call { name, .. } => json!({
                "id": self.item_id,
                "type": "function_call",
                "status": status,
                "call_id": self.call_id,
                "name": name,
                "arguments": if done { self.output.joined() } else { String::new() },
            }),
        }
    }

    fn part(&self, done: bool) -> Value {
        let text = if done {
            self.output.joined()
        } else {
            String::new()
        };
        json!({ "type": "output_text", "text": text, "annotations": [], "logprobs": [] })
    }

    /// The `response` object with `status`: `in_progress` has no output and null usage,
    /// `completed` the item and usage, `failed` no output, the input usage and `error`.
    pub(crate) fn response(&self, status: &str, error: Option<Value>) -> Value {
        let (output, usage) = match status {
            "in_progress" => (Vec::new(), Value::Null),
            "completed" => (vec![self.item(true)], self.usage.to_json()),
            _ => (
                Vec::new(),
                Usage {
                    output: 0,
                    ..self.usage
                }
                .to_json(),
            ),
        };
        json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": error,
            "incomplete_details": null,
            "instructions": null,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": true,
            "previous_response_id": self.previous_response_id,
            "store": self.store,
            "usage": usage,
            "metadata": {},
        })
    }
}

/// A stream's events and where its output deltas are.
#[derive(Debug, Default)]
pub(crate) struct Events {
    pub(crate) events: Vec<Bytes>,
    /// The index in `events` of every output delta, in order.
    pub(crate) deltas: Vec<usize>,
}

impl Events {
    /// Appends `data` as event `name`, with its `type` and the next `sequence_number`.
    fn push(&mut self, name: &str, mut data: Value) {
        if let Some(map) = data.as_object_mut() {
            map.insert("type".to_owned(), Value::from(name));
            map.insert("sequence_number".to_owned(), Value::from(self.events.len()));
        }
        self.events.push(sse::named_event(name, &data));
    }

    /// How many events to send to stop right after the `n`-th output delta (all of them if
    /// there are fewer; `0`: right before the first one).
    pub(crate) fn cut_after(&self, n: usize) -> usize {
        match (n, self.deltas.first()) {
            (_, None) => self.events.len().saturating_sub(1),
            (0, Some(first)) => *first,
            (n, Some(_)) => self.deltas[n.min(self.deltas.len()) - 1] + 1,
        }
    }
}

/// Every event of a streamed answer ending as `ending` says.
pub(crate) fn stream(turn: &Turn, ending: Ending<'_>) -> Events {
    let mut out = Events::default();
    let start = turn.response("in_progress", None);
    out.push("response.created", json!({ "response": start }));
    out.push("response.in_progress", json!({ "response": start }));
    if let Ending::Failed {
        code,
        message,
        error_event,
    } = ending
    {
        if error_event {
            let error = json!({ "code": code, "message": message, "param": null });
            out.push("error", error);
        } else {
            let error = json!({ "code": code, "message": message });
            out.push(
                "response.failed",
                json!({ "response": turn.response("failed", Some(error)) }),
            );
        }
        return out;
    }
    let at = json!({ "output_index": 0, "item_id": turn.item_id });
    out.push(
        "response.output_item.added",
        json!({ "output_index": 0, "item": turn.item(false) }),
    );
    match &turn.output {
        Output::Message { deltas } => message_events(&mut out, turn, deltas, &at),
        Output::Call { name, deltas } => {
            for delta in deltas {
                out.deltas.push(out.events.len());
                out.push(
                    "response.function_call_arguments.delta",
                    with(&at, json!({ "delta": delta })),
                );
            }
            let done = json!({ "name": name, "arguments": turn.output.joined() });
            out.push("response.function_call_arguments.done", with(&at, done));
        }
    }
    out.push(
        "response.output_item.done",
        json!({ "output_index": 0, "item": turn.item(true) }),
    );
    out.push(
        "response.completed",
        json!({ "response": turn.response("completed", None) }),
    );
    out
}

fn message_events(out: &mut Events, turn: &Turn, deltas: &[String], at: &Value) {
    let part_at = with(at, json!({ "content_index": 0 }));
    out.push(
        "response.content_part.added",
        with(&part_at, json!({ "part": turn.part(false) })),
    );
    for delta in deltas {
        out.deltas.push(out.events.len());
        out.push(
            "response.output_text.delta",
            with(&part_at, json!({ "delta": delta, "logprobs": [] })),
        );
    }
    let text = json!({ "text": turn.output.joined(), "logprobs": [] });
    out.push("response.output_text.done", with(&part_at, text));
    out.push(
        "response.content_part.done",
        with(&part_at, json!({ "part": turn.part(true) })),
    );
}

/// `base`'s fields plus `extra`'s.
fn with(base: &Value, extra: Value) -> Value {
    let mut out = base.clone();
    if let (Some(out), Value::Object(extra)) = (out.as_object_mut(), extra) {
        out.extend(extra);
    }
    out
}
