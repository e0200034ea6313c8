//! Anthropic message and error bodies → OpenAI `chat.completion` and error envelope.

use serde::Deserialize;
use serde_json::{json, Value};

use super::{finish_reason, TranslateError, Usage};

/// The parts of an Anthropic `message` the translation reads.
#[derive(Deserialize)]
struct Message {
    id: String,
    #[serde(default)]
    content: Vec<Block>,
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Usage,
}

/// A content block; thinking, server tools and any future kind are ignored.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    #[serde(other)]
    Other,
}

/// Translates an Anthropic `message` body into an OpenAI `chat.completion` body.
///
/// `client_model` is the model name the client asked for (it goes in `model`); `created` is
/// the unix time in seconds. Text blocks are concatenated into `message.content` (null when
/// there are none); `tool_use` blocks become `message.tool_calls` with the input serialized
/// as the `arguments` string; thinking blocks are dropped. The id is `chatcmpl-` + the
/// Anthropic id; `finish_reason` and `usage` follow `PROTOCOLS.md`.
pub fn translate_response(
    anthropic_body: &[u8],
    client_model: &str,
    created: u64,
) -> Result<Vec<u8>, TranslateError> {
    let message: Message = serde_json::from_slice(anthropic_body)
        .map_err(|e| TranslateError::Invalid(format!("upstream message: {e}")))?;
    let mut text: Option<String> = None;
    let mut tool_calls = Vec::new();
    for block in message.content {
        match block {
            Block::Text { text: piece } => text.get_or_insert_with(String::new).push_str(&piece),
            Block::ToolUse { id, name, input } => tool_calls.push(json!({
                "id": id,
                "type": "function",
                "function": { "name": name, "arguments": arguments(&input) },
            })),
            Block::Other => {}
        }
    }
    let mut reply = json!({ "role": "assistant", "content": text, "refusal": null });
    if !tool_calls.is_empty() {
        reply["tool_calls"] = Value::Array(tool_calls);
    }
    let completion = json!({
        "id": format!("chatcmpl-{}", message.id),
        "object": "chat.completion",
        "created": created,
        "model": client_model,
        "choices": [{
            "index": 0,
            "message": reply,
            "logprobs": null,
            "finish_reason": finish_reason(message.stop_reason.as_deref()),
        }],
        "usage": message.usage.to_openai(),
    });
    serde_json::to_vec(&completion).map_err(|e| TranslateError::Invalid(e.to_string()))
}

/// A tool input as OpenAI's `arguments` string (`{}` when the input is missing).
pub(super) fn arguments(input: &Value) -> String {
    match input {
        Value::Null => "{}".to_owned(),
        input => input.to_string(),
    }
}

/// `{"type":"error","error":{"type","message","details"?},"request_id"?}`.
#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    details: Option<Value>,
}

/// Translates an Anthropic error body into the OpenAI error envelope
/// `{"error":{"message","type","param","code"}}`, keeping the message.
///
/// | Anthropic `error.type` | OpenAI `type` | `code` |
/// | --- | --- | --- |
/// | `invalid_request_error` | `invalid_request_error` | `context_length_exceeded` when the prompt is too long, else null |
/// | `authentication_error` | `invalid_request_error` | `invalid_api_key` |
/// | `permission_error` | `invalid_request_error` | `permission_denied` |
/// | `not_found_error` | `invalid_request_error` | `model_not_found` when the message names a model, else `not_found` |
/// | `rate_limit_error` | `rate_limit_error` | `rate_limit_exceeded` (`insufficient_quota` for a reached spend limit) |
/// | `billing_error` | `insufficient_quota` | `insufficient_quota` |
/// | `request_too_large` | `invalid_request_error` | `request_too_large` |
/// | `overloaded_error`, `api_error`, `timeout_error` | `server_error` | null |
/// | anything else | the same type | null |
///
/// A body that is not an Anthropic error gives a generic `server_error` quoting its start.
pub fn translate_error(anthropic_body: &[u8]) -> Vec<u8> {
    let envelope = match serde_json::from_slice::<ErrorBody>(anthropic_body) {
        Ok(body) => {
            let (kind, code) = openai_kind_and_code(&body.error);
            envelope(&body.error.message, kind, code)
        }
        Err(_) => envelope(
            &format!("upstream error: {}", snippet(anthropic_body)),
            "server_error",
            None,
        ),
    };
    envelope.to_string().into_bytes()
}

fn envelope(message: &str, kind: &str, code: Option<&str>) -> Value {
    json!({ "error": { "message": message, "type": kind, "param": null, "code": code } })
}

fn openai_kind_and_code(error: &ErrorDetail) -> (&str, Option<&'static str>) {
    let message = error.message.to_ascii_lowercase();
    match error.kind.as_str() {
        "invalid_request_error" if is_context_overflow(&message) => {
            ("invalid_request_error", Some("context_length_exceeded"))
        }
        "invalid_request_error" => ("invalid_request_error", None),
        "authentication_error" => ("invalid_request_error", Some("invalid_api_key")),
        "permission_error" => ("invalid_request_error", Some("permission_denied")),
        "not_found_error" if message.contains("model") => {
            ("invalid_request_error", Some("model_not_found"))
        }
        "not_found_error" => ("invalid_request_error", Some("not_found")),
        "rate_limit_error" if spend_limit_reached(error) => {
            ("insufficient_quota", Some("insufficient_quota"))
        }
        "rate_limit_error" => ("rate_limit_error", Some("rate_limit_exceeded")),
        "billing_error" => ("insufficient_quota", Some("insufficient_quota")),
        "request_too_large" => ("invalid_request_error", Some("request_too_large")),
        "overloaded_error" | "api_error" | "timeout_error" => ("server_error", None),
        "" => ("server_error", None),
        other => (other, None),
    }
}

/// Anthropic reports an over-long prompt as a plain `invalid_request_error`; these are the
/// messages it uses ("prompt is too long: 208310 tokens > 200000 maximum", "input length and
/// `max_tokens` exceed context limit: ...").
fn is_context_overflow(lowercase_message: &str) -> bool {
    lowercase_message.contains("prompt is too long")
        || lowercase_message.contains("exceed context limit")
        || lowercase_message.contains("context window")
}

/// A 429 that will not pass until the organization's spend limit changes.
fn spend_limit_reached(error: &ErrorDetail) -> bool {
    error
        .details
        .as_ref()
        .and_then(|d| d["error_code"].as_str())
        == Some("enforced_spend_limit_reached")
}

/// The start of an unreadable body, for the generic message (at most 200 characters).
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".to_owned();
    }
    let mut cut: String = text.chars().take(200).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    cut
}
