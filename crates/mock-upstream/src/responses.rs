//! The OpenAI Responses API (`/v1/responses`), what Codex CLI and the Agents SDK speak: reading
//! the request's last turn ([`reply_for`]; the tool round trip itself is shared, in
//! `crate::tools`), the answer plain or streamed (`events`), stored responses and the prompt
//! cache (`store`), the Responses faults applied to a stream, and the 404 of a server without
//! this API ([`unsupported`]). The contract (what each request gets) is in the crate docs,
//! section "The Responses API".

mod events;
mod store;
#[cfg(test)]
mod tests;

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::StatusCode;
use serde_json::{json, Map, Value};

use crate::answers::{parse_object, Answer, Knobs, DEFAULT_TEXT};
use crate::faults::{self, Fault};
use crate::tools::{self, split_even, text_of, Last, Reply};
use crate::{sse, Shared};
use events::{Ending, Output, Turn, Usage};
pub(crate) use store::Store;

/// Answers `POST /v1/responses`. A stream consumes the Responses faults
/// ([`Fault::ResponseFailed`], [`Fault::ResponseEndAfter`], and [`Fault::ResponseCutAfter`],
/// which becomes a [`Fault::BreakAfter`]); the fault returned is left for the generic sender.
/// (Outside a stream the handler has already turned them into what they mean there.)
pub(crate) fn create(
    body: &Bytes,
    key: Option<&str>,
    knobs: &Knobs,
    shared: &Shared,
    fault: Option<Fault>,
) -> (Answer, Option<Fault>) {
    let request = match parse_object(body) {
        Ok(request) => request,
        Err(answer) => return (answer, fault),
    };
    let text = |field: &str| request.get(field).and_then(Value::as_str);
    let Some(model) = text("model") else {
        let error = error("Missing required parameter: 'model'.", Some("model"));
        return (bad_request(error, "missing_required_parameter"), fault);
    };
    let previous = text("previous_response_id");
    if let Some(previous) = previous {
        if shared.lock_responses().get(previous, key).is_none() {
            let message = format!("Previous response with id '{previous}' not found.");
            let error = error(&message, Some("previous_response_id"));
            return (bad_request(error, "previous_response_not_found"), fault);
        }
    }
    let stream = request.get("stream").and_then(Value::as_bool) == Some(true);
    let store = request.get("store").and_then(Value::as_bool) != Some(false);
    let tag = knobs.tag();
    let output = match reply_for(&request) {
        Reply::Default => Output::Message {
            deltas: split_even(DEFAULT_TEXT, knobs.chunks),
        },
        Reply::Text(text) => Output::Message {
            deltas: split_even(&text, knobs.chunks),
        },
        Reply::Call { name, arguments } => Output::Call {
            name,
            deltas: split_even(&arguments, knobs.chunks.max(2)),
        },
    };
    let input = knobs.prompt_tokens;
    let cached = shared
        .lock_responses()
        .cached_tokens(key, text("prompt_cache_key"), input);
    let turn = Turn {
        id: format!("resp_{tag}"),
        item_id: match output {
            Output::Message { .. } => format!("msg_{tag}"),
            Output::Call { .. } => format!("fc_{tag}"),
        },
        call_id: format!("call_{tag}"),
        created_at: unix_now(),
        model: model.to_owned(),
        previous_response_id: previous.map(str::to_owned),
        store,
        usage: Usage {
            input,
            cached,
            output: output.deltas().len(),
            huge: knobs.huge_usage,
        },
        output,
    };
    let (answer, final_response, fault) = if stream {
        streamed(&turn, fault)
    } else {
        let response = turn.response("completed", None);
        (Answer::json(StatusCode::OK, &response), response, fault)
    };
    if store {
        shared.lock_responses().put(&turn.id, key, final_response);
    }
    (answer, fault)
}

/// The events of a streamed answer shaped by `fault`, the response it ends with, and the fault
/// left for the generic sender.
fn streamed(turn: &Turn, fault: Option<Fault>) -> (Answer, Value, Option<Fault>) {
    let (events, final_response, fault) = match fault {
        Some(Fault::ResponseFailed {
            code,
            message,
            error_event,
        }) => {
            let ending = Ending::Failed {
                code: &code,
                message: &message,
                error_event,
            };
            let error = json!({ "code": code, "message": message });
            let failed = turn.response("failed", Some(error));
            (events::stream(turn, ending).events, failed, None)
        }
        Some(Fault::ResponseEndAfter(n)) => {
            let mut out = events::stream(turn, Ending::Completed);
            out.events.truncate(out.cut_after(n));
            (out.events, turn.response("completed", None), None)
        }
        Some(Fault::ResponseCutAfter(n)) => {
            let out = events::stream(turn, Ending::Completed);
            let cut = Fault::BreakAfter(out.cut_after(n));
            (out.events, turn.response("completed", None), Some(cut))
        }
        other => {
            let out = events::stream(turn, Ending::Completed);
            (out.events, turn.response("completed", None), other)
        }
    };
    let answer = Answer {
        status: StatusCode::OK,
        content_type: "text/event-stream",
        pieces: events,
        streaming: true,
    };
    (answer, final_response, fault)
}

/// Answers `GET /v1/responses/{id}`: the stored response if `key` created it, else 404.
pub(crate) fn retrieve(shared: &Shared, key: Option<&str>, id: &str) -> Answer {
    match shared.lock_responses().get(id, key) {
        Some(response) => Answer::json(StatusCode::OK, response),
        None => not_found(id),
    }
}

/// Answers `DELETE /v1/responses/{id}`: forgets it if `key` created it, else 404.
pub(crate) fn delete(shared: &Shared, key: Option<&str>, id: &str) -> Answer {
    if shared.lock_responses().delete(id, key) {
        let deleted = json!({ "id": id, "object": "response.deleted", "deleted": true });
        Answer::json(StatusCode::OK, &deleted)
    } else {
        not_found(id)
    }
}

/// Answers every Responses route of a server without the Responses API
/// ([`crate::MockConfig::responses_api`] off): a 404 with code `unknown_url`, as a chat-only
/// server (vLLM, Ollama) answers.
pub(crate) fn unsupported(method: &str, path: &str) -> Answer {
    let message = format!("Invalid URL ({method} {path}): this server has no Responses API (mock)");
    let error = faults::error_envelope(&message, "invalid_request_error", Some("unknown_url"));
    Answer::json(StatusCode::NOT_FOUND, &error)
}

/// The single event of [`Fault::StreamErrorFirst`] on a Responses stream.
pub(crate) fn stream_error_event() -> Bytes {
    let error = json!({
        "type": "error",
        "code": "server_is_overloaded",
        "message": "upstream overloaded",
        "param": null,
        "sequence_number": 0,
    });
    sse::named_event("error", &error)
}

/// What the request gets: see the crate docs. The last `input` item is the turn that counts.
pub(crate) fn reply_for(request: &Map<String, Value>) -> Reply {
    let last = match request.get("input") {
        Some(Value::String(text)) => Last::UserText(text.clone()),
        Some(Value::Array(items)) => items.last().map_or(Last::Other, last_item),
        _ => Last::Other,
    };
    tools::reply(last, request.get("tools"))
}

fn last_item(item: &Value) -> Last {
    let kind = item.get("type").and_then(Value::as_str);
    let role = item.get("role").and_then(Value::as_str);
    match (kind, role) {
        (Some("function_call_output" | "custom_tool_call_output"), _) => {
            Last::ToolOutput(text_of(item.get("output").unwrap_or(&Value::Null)))
        }
        (None | Some("message"), Some("user")) => {
            Last::UserText(text_of(item.get("content").unwrap_or(&Value::Null)))
        }
        _ => Last::Other,
    }
}

/// `{"error": {"message", "type": "invalid_request_error", "param", "code": null}}`.
fn error(message: &str, param: Option<&str>) -> Value {
    json!({
        "error": { "message": message, "type": "invalid_request_error", "param": param, "code": null },
    })
}

/// A 400 with `error` and `code`.
fn bad_request(mut error: Value, code: &str) -> Answer {
    error["error"]["code"] = Value::from(code);
    Answer::json(StatusCode::BAD_REQUEST, &error)
}

/// The 404 for a response id unknown to the request's key.
fn not_found(id: &str) -> Answer {
    let message = format!("Response with id '{id}' not found.");
    Answer::json(StatusCode::NOT_FOUND, &error(&message, None))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
