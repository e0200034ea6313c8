//! The Anthropic Messages dialect (`POST .../v1/messages`): strict request
//! validation like the real API, the answers (plain and streamed as named SSE
//! events), and Anthropic-shaped error bodies for faults.
//!
//! Validation answers 400 `invalid_request_error` when the `anthropic-version`
//! header is missing, the body is not a JSON object, a top-level field is not
//! in [`ALLOWED_FIELDS`], `model` or `max_tokens` is missing, `messages` is
//! missing or empty, a role is not `user`/`assistant`, roles do not alternate
//! starting with `user`, a tool's `input_schema.type` is not `"object"`, or
//! `temperature`/`top_p`/`top_k` is sent with version `2026-10-21` (or later).
//!
//! A valid request gets one content block (`answer`), chosen from its last
//! `user` message:
//!
//! - with `tool_result` blocks: a `text` block `"tool said: <content>"` (each
//!   result's content a string or text blocks, joined), streamed as a few
//!   `text_delta`s;
//! - text containing [`crate::TOOL_MARKER`] and `tools` with one named
//!   `exec_command` (else `shell`): a `tool_use` block (`id`
//!   `toolu_<port>_<n>`) whose `input` is `{"cmd":"echo tollgate-tool-ok"}`
//!   (for `shell`, `{"command":["echo","tollgate-tool-ok"]}`), `stop_reason`
//!   `tool_use`; streamed, its `input_json_delta`s are an empty piece and then
//!   at least 2 pieces of that JSON. Without either tool, a `text` block saying
//!   so. This is Codex CLI's tool round trip (crate docs);
//! - otherwise, when the request has `tools` and the message contains "use a
//!   tool": a `tool_use` block (`id` `toolu_mock_1`) calling the first tool with
//!   `{"city":"Paris"}`, streamed as `""`, `{"city": `, `"Paris"}`;
//! - anything else: a `text` block `"Hello from mock"`, streamed as `tok0 `,
//!   `tok1 `, ... deltas.
//!
//! `usage.output_tokens` is the chunk count in every case.

use bytes::Bytes;
use http::StatusCode;
use serde_json::{json, Map, Value};

use crate::answers::{Answer, Knobs};
use crate::sse;

/// The top-level fields the mock accepts; any other is a 400, as on the real API.
pub(crate) const ALLOWED_FIELDS: &[&str] = &[
    "model",
    "messages",
    "system",
    "max_tokens",
    "stop_sequences",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "metadata",
    "stream",
    "thinking",
];

/// Fields (and message roles) the real API accepts only with an `anthropic-beta` flag, and
/// the flag (Claude Code sends these): without it a 400, as there.
pub(crate) const BETA_FIELDS: &[(&str, &str)] = &[
    ("context_management", "context-management-2025-06-27"),
    ("output_config", "effort-2025-11-24"),
];

/// The flag that lets a `system` message follow the first user message.
pub(crate) const SYSTEM_MESSAGES_BETA: &str = "claude-code-20250219";

/// The first API version that rejects sampling parameters.
const SAMPLING_REJECTED_FROM: &str = "2026-10-21";

/// `{"type":"error","error":{"type","message"},"request_id"}`.
pub(crate) fn error_body(kind: &str, message: &str) -> Value {
    json!({
        "type": "error",
        "error": { "type": kind, "message": message },
        "request_id": "req_mock",
    })
}

/// The error body Anthropic would send with `status`.
pub(crate) fn error_body_for_status(status: u16) -> Value {
    let (kind, message) = match status {
        401 => ("authentication_error", "invalid x-api-key (mock)"),
        402 => ("billing_error", "Your credit balance is too low (mock)."),
        403 => (
            "permission_error",
            "Your API key does not have permission to use the specified resource (mock).",
        ),
        404 => ("not_found_error", "model: not found (mock)"),
        413 => (
            "request_too_large",
            "Request exceeds the maximum size (mock).",
        ),
        429 => (
            "rate_limit_error",
            "Number of requests has exceeded your rate limit (mock).",
        ),
        504 => ("timeout_error", "Request timed out (mock)."),
        529 => ("overloaded_error", "Overloaded"),
        400..=499 => ("invalid_request_error", "Invalid request (mock)."),
        _ => ("api_error", "Internal server error (mock)."),
    };
    error_body(kind, message)
}

/// The 400 answer for a request the real API would refuse.
pub(crate) fn invalid(message: &str) -> Answer {
    Answer::json(
        StatusCode::BAD_REQUEST,
        &error_body("invalid_request_error", message),
    )
}

/// The body of a non-streaming answer to a stream-error fault.
pub(crate) fn overloaded_body() -> Value {
    error_body_for_status(529)
}

/// The single event of a stream-error fault: `event: error` with `overloaded_error`.
pub(crate) fn stream_error_event() -> Bytes {
    let mut error = overloaded_body();
    if let Some(map) = error.as_object_mut() {
        map.remove("request_id");
    }
    sse::named_event("error", &error)
}

/// Answers `POST /v1/messages` (`count` for `/v1/messages/count_tokens`: `{"input_tokens"}`,
/// the request's JSON size over 4); `version` is the `anthropic-version` header, `betas` the
/// `anthropic-beta` flags.
pub(crate) fn messages(
    body: &Bytes,
    version: Option<&str>,
    betas: &[&str],
    count: bool,
    knobs: &Knobs,
) -> Answer {
    let Some(version) = version else {
        return invalid("anthropic-version: header is required");
    };
    let mut request = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return invalid("The request body must be a JSON object (mock)."),
        Err(err) => return invalid(&format!("There was an error parsing the body: {err}")),
    };
    if count {
        // Counting takes no `max_tokens`.
        request
            .entry("max_tokens")
            .or_insert_with(|| Value::from(1));
    }
    if let Err(message) = validate(&request, version, betas) {
        return invalid(&message);
    }
    if count {
        let tokens = body.len().div_ceil(4);
        return Answer::json(StatusCode::OK, &json!({ "input_tokens": tokens }));
    }
    answer::answer(&request, knobs)
}

/// Checks a request like the real API; the error names the offending field.
pub(crate) fn validate(
    request: &Map<String, Value>,
    version: &str,
    betas: &[&str],
) -> Result<(), String> {
    let beta_allows = |field: &str| {
        BETA_FIELDS
            .iter()
            .any(|(f, flag)| *f == field && betas.contains(flag))
    };
    if let Some(field) = request
        .keys()
        .find(|k| !ALLOWED_FIELDS.contains(&k.as_str()) && !beta_allows(k))
    {
        return Err(format!("{field}: Extra inputs are not permitted"));
    }
    for field in ["model", "max_tokens", "messages"] {
        if !request.contains_key(field) {
            return Err(format!("{field}: Field required"));
        }
    }
    match request.get("max_tokens").and_then(Value::as_u64) {
        Some(n) if n >= 1 => {}
        _ => return Err("max_tokens: Input should be a positive integer".to_owned()),
    }
    validate_messages(
        request.get("messages"),
        betas.contains(&SYSTEM_MESSAGES_BETA),
    )?;
    if version >= SAMPLING_REJECTED_FROM {
        if let Some(field) = ["temperature", "top_p", "top_k"]
            .into_iter()
            .find(|f| request.contains_key(*f))
        {
            return Err(format!(
                "{field}: is not supported with anthropic-version {version}"
            ));
        }
    }
    validate_tools(request.get("tools"))
}

fn validate_messages(messages: Option<&Value>, system_allowed: bool) -> Result<(), String> {
    let messages = match messages {
        Some(Value::Array(messages)) if messages.is_empty() => {
            return Err("messages: at least one message is required".to_owned())
        }
        Some(Value::Array(messages)) => messages,
        _ => return Err("messages: Input should be a valid list".to_owned()),
    };
    let mut previous: Option<&str> = None;
    for (i, message) in messages.iter().enumerate() {
        let role = match message.get("role").and_then(Value::as_str) {
            // With the beta, a system message may follow the first user message; it takes no
            // part in the alternation.
            Some("system") if system_allowed && previous.is_some() => continue,
            Some(role @ ("user" | "assistant")) => role,
            _ => {
                return Err(format!(
                    "messages.{i}.role: Input should be 'user' or 'assistant'"
                ))
            }
        };
        if previous.is_none() && role != "user" {
            return Err(r#"messages: first message must use the "user" role"#.to_owned());
        }
        if previous == Some(role) {
            return Err(format!(
                r#"messages: roles must alternate between "user" and "assistant", but found multiple "{role}" roles in a row"#
            ));
        }
        if !matches!(
            message.get("content"),
            Some(Value::String(_) | Value::Array(_))
        ) {
            return Err(format!("messages.{i}.content: Field required"));
        }
        previous = Some(role);
    }
    Ok(())
}

fn validate_tools(tools: Option<&Value>) -> Result<(), String> {
    let Some(tools) = tools else { return Ok(()) };
    let Some(tools) = tools.as_array() else {
        return Err("tools: Input should be a valid list".to_owned());
    };
    for (i, tool) in tools.iter().enumerate() {
        if tool.get("name").and_then(Value::as_str).is_none() {
            return Err(format!("tools.{i}.name: Field required"));
        }
        // Anthropic's built-in tools (`web_search_20250305`, …) take no schema.
        if tool
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| t != "custom")
        {
            continue;
        }
        if tool.pointer("/input_schema/type") != Some(&Value::from("object")) {
            return Err(format!(
                "tools.{i}.input_schema.type: Input should be 'object'"
            ));
        }
    }
    Ok(())
}

mod answer;

#[cfg(test)]
mod tests;
