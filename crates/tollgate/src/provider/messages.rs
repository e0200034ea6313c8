//! The Anthropic Messages API in front (what Claude Code and the `anthropic` SDK speak), served
//! by a Chat Completions target: a `/v1/messages` body turned into a chat body ([`to_chat`]),
//! a chat completion turned back into a `message` ([`from_chat`]), and a chat stream's bytes
//! turned into Anthropic's event grammar ([`ChatToMessages`], a state machine: exactly one
//! `message_start`, blocks opened and closed in order with increasing indexes, one
//! `message_delta` with the stop reason and the usage, then `message_stop`; an upstream failure
//! after the first output is an `error` event). Errors the gateway or a target gives a
//! Messages client are written in Anthropic's shape ([`error_body`], [`status`]).
//!
//! To an Anthropic target a Messages request is native: its bytes go as they came (the model
//! renamed in place), nothing here is involved. Pure functions, no I/O: every rule is a table
//! test (`messages/tests.rs`).

use super::Refusal;
use crate::sse::{self, SseFramer};
use serde_json::{json, Map, Value};
use std::ops::ControlFlow;

/// A Messages request as a Chat Completions body.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The Chat Completions body.
    pub body: Value,
    /// Tools the target cannot run (Anthropic's server and client-executed built-in tools), by
    /// name, left out.
    pub dropped_tools: Vec<String>,
}

/// What the translation of one request needs besides the body.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChatOptions {
    /// The target takes a reasoning effort (`reasoning_effort`, `max_completion_tokens`):
    /// `thinking` and `output_config.effort` become one; otherwise both are dropped.
    pub reasoning: bool,
}

fn refuse(param: &str, message: impl Into<String>) -> Refusal {
    Refusal {
        message: message.into(),
        param: Some(param.to_owned()),
    }
}

/// The longest `user` a chat target is sent; a longer `metadata.user_id` (Claude Code's is a
/// JSON document) goes as its SHA-256, so one user still reads as one.
const MAX_USER: usize = 64;

/// Translates a `/v1/messages` body into a Chat Completions body.
///
/// | Messages | Chat Completions |
/// | --- | --- |
/// | `system` (string or text blocks) | a first `system` message |
/// | `messages[].role` `user` / `assistant` / `system` (mid-conversation) | the same role, in place |
/// | `text` blocks | text (joined) or `text` parts |
/// | `image` (base64 or URL) | `image_url` part (a data URL for base64) |
/// | `document` (text, content blocks; base64 PDF) | text; a `file` part |
/// | `tool_use` (assistant) | `tool_calls[]` (`input` as the arguments' JSON) |
/// | `tool_result` (user; `is_error`) | a `tool` message before the user's other content (`Error: ` first) |
/// | `thinking`, `redacted_thinking`, server tool blocks | dropped (the target cannot read them back) |
/// | `tools[]` with `input_schema` | `function` tools |
/// | built-in tools (`web_search_…`, `bash_…`, `text_editor_…`, …) | dropped, named in `x-tollgate-dropped-tools` |
/// | `tool_choice` `auto` / `any` / `tool` / `none`; `disable_parallel_tool_use` | `auto` / `required` / the function / `none`; `parallel_tool_calls: false` |
/// | `max_tokens` | `max_tokens` (`max_completion_tokens` for a reasoning target) |
/// | `stop_sequences`, `temperature`, `top_p` | `stop`, `temperature`, `top_p` |
/// | `top_k`, `context_management`, `cache_control`, `service_tier`, `container` | dropped |
/// | `thinking`, `output_config.effort` | `reasoning_effort` for a reasoning target, else dropped |
/// | `metadata.user_id` | `user` (its SHA-256 when longer than 64 characters) |
/// | `stream` | `stream` with `stream_options.include_usage` |
/// | `mcp_servers` | refused (400): the target cannot reach MCP servers |
pub fn to_chat(body: &[u8], opts: ChatOptions) -> Result<ChatRequest, Refusal> {
    let Ok(Value::Object(req)) = serde_json::from_slice::<Value>(body) else {
        return Err(refuse("body", "the body must be a JSON object"));
    };
    if req
        .get("mcp_servers")
        .and_then(Value::as_array)
        .is_some_and(|s| !s.is_empty())
    {
        return Err(refuse(
            "mcp_servers",
            "`mcp_servers` needs an Anthropic target: this model's target cannot reach MCP servers",
        ));
    }
    let mut out = Map::new();
    if let Some(model) = req.get("model") {
        out.insert("model".into(), model.clone());
    }
    let mut messages = Vec::new();
    match req.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) if text.is_empty() => {}
        Some(Value::String(text)) => messages.push(json!({"role": "system", "content": text})),
        Some(Value::Array(blocks)) => {
            let text = system_text(blocks)?;
            if !text.is_empty() {
                messages.push(json!({"role": "system", "content": text}));
            }
        }
        Some(_) => {
            return Err(refuse(
                "system",
                "`system` must be a string or a list of text blocks",
            ))
        }
    }
    let Some(Value::Array(turns)) = req.get("messages") else {
        return Err(refuse("messages", "`messages` must be a list of messages"));
    };
    for (i, turn) in turns.iter().enumerate() {
        message(turn, i, &mut messages)?;
    }
    out.insert("messages".into(), Value::Array(messages));

    let (tools, dropped_tools) = tools(req.get("tools"))?;
    let has_tools = !tools.is_empty();
    if has_tools {
        out.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = req.get("tool_choice").filter(|c| !c.is_null()) {
        let (choice, parallel) = tool_choice(choice, &dropped_tools)?;
        if has_tools {
            if let Some(choice) = choice {
                out.insert("tool_choice".into(), choice);
            }
            if parallel == Some(false) {
                out.insert("parallel_tool_calls".into(), Value::Bool(false));
            }
        }
    }
    if let Some(max) = req.get("max_tokens").filter(|v| v.is_u64()) {
        let name = match opts.reasoning {
            true => "max_completion_tokens",
            false => "max_tokens",
        };
        out.insert(name.into(), max.clone());
    }
    match req.get("stop_sequences") {
        Some(Value::Array(stops)) if !stops.is_empty() => {
            out.insert("stop".into(), Value::Array(stops.clone()));
        }
        _ => {}
    }
    for same in ["temperature", "top_p"] {
        if let Some(v) = req.get(same).filter(|v| v.is_number()) {
            out.insert(same.into(), v.clone());
        }
    }
    if let Some(user) = req
        .get("metadata")
        .and_then(|m| m.get("user_id"))
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
    {
        out.insert("user".into(), Value::String(chat_user(user)));
    }
    if opts.reasoning {
        if let Some(effort) = reasoning_effort(&req) {
            out.insert("reasoning_effort".into(), Value::from(effort));
        }
    }
    if req.get("stream") == Some(&Value::Bool(true)) {
        out.insert("stream".into(), Value::Bool(true));
        // The Messages stream ends with the usage: the chat stream must carry it.
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(ChatRequest {
        body: Value::Object(out),
        dropped_tools,
    })
}

/// `metadata.user_id` as a chat `user`: as it is when short enough, else its SHA-256 in hex.
fn chat_user(user: &str) -> String {
    if user.len() <= MAX_USER {
        return user.to_owned();
    }
    crate::digest::sha256(user.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The reasoning effort a Messages request asks for: `output_config.effort` (`max` read as
/// `high`), else the `thinking` budget (under 4k tokens `low`, under 16k `medium`, else `high`;
/// `adaptive` is `medium`); none when thinking is disabled or not asked for.
fn reasoning_effort(req: &Map<String, Value>) -> Option<&'static str> {
    let effort = req
        .get("output_config")
        .and_then(|c| c.get("effort"))
        .and_then(Value::as_str);
    if let Some(effort) = effort {
        return match effort {
            "low" => Some("low"),
            "medium" => Some("medium"),
            "high" | "max" => Some("high"),
            _ => None,
        };
    }
    let thinking = req.get("thinking")?;
    match thinking.get("type").and_then(Value::as_str)? {
        "adaptive" => Some("medium"),
        "enabled" => {
            let budget = thinking
                .get("budget_tokens")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            Some(match budget {
                0..4096 => "low",
                4096..16384 => "medium",
                _ => "high",
            })
        }
        _ => None,
    }
}

/// The text of `system` blocks, joined by blank lines (`cache_control` and the like dropped).
fn system_text(blocks: &[Value]) -> Result<String, Refusal> {
    let mut texts = Vec::with_capacity(blocks.len());
    for block in blocks {
        match (block.get("type").and_then(Value::as_str), block.get("text")) {
            (Some("text"), Some(Value::String(text))) => texts.push(text.as_str()),
            _ => return Err(refuse("system", "`system` blocks must be text blocks")),
        }
    }
    Ok(texts.join("\n\n"))
}

/// Blocks the target cannot read back, left out of the history: thinking and the calls and
/// results of Anthropic's server tools.
fn unreadable_block(kind: &str) -> bool {
    matches!(
        kind,
        "thinking" | "redacted_thinking" | "server_tool_use" | "mcp_tool_use" | "container_upload"
    ) || kind.ends_with("_tool_result") && kind != "tool_result"
}

/// One Messages turn, appended as chat messages.
fn message(turn: &Value, i: usize, messages: &mut Vec<Value>) -> Result<(), Refusal> {
    let role = match turn.get("role").and_then(Value::as_str) {
        Some(role @ ("user" | "assistant" | "system")) => role,
        _ => {
            return Err(refuse(
                &format!("messages.{i}.role"),
                "a message's `role` must be user, assistant or system",
            ))
        }
    };
    let param = format!("messages.{i}.content");
    let blocks = match turn.get("content") {
        Some(Value::String(text)) => {
            messages.push(json!({"role": role, "content": text}));
            return Ok(());
        }
        Some(Value::Array(blocks)) => blocks,
        _ => {
            return Err(refuse(
                &param,
                "a message's `content` must be a string or a list of blocks",
            ))
        }
    };
    match role {
        "assistant" => assistant(blocks, &param, messages),
        "system" => {
            let text = system_text(blocks)
                .map_err(|_| refuse(&param, "a `system` message's blocks must be text blocks"))?;
            messages.push(json!({"role": "system", "content": text}));
            Ok(())
        }
        _ => user(blocks, &param, messages),
    }
}

/// An assistant turn: its text joined, its `tool_use` blocks as `tool_calls`.
fn assistant(blocks: &[Value], param: &str, messages: &mut Vec<Value>) -> Result<(), Refusal> {
    let mut texts = Vec::new();
    let mut calls = Vec::new();
    for block in blocks {
        match block
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
        {
            "text" => texts.push(
                block
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
            ),
            "tool_use" => {
                let field = |k: &str| block.get(k).and_then(Value::as_str).unwrap_or_default();
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                calls.push(json!({
                    "id": field("id"),
                    "type": "function",
                    "function": {"name": field("name"), "arguments": input.to_string()},
                }));
            }
            kind if unreadable_block(kind) => {}
            kind => {
                return Err(refuse(
                    param,
                    format!(
                        "assistant blocks of type `{kind}` cannot be sent to this model's target"
                    ),
                ))
            }
        }
    }
    let text = texts.join("\n\n");
    let mut out = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) }});
    if !calls.is_empty() {
        out["tool_calls"] = Value::Array(calls);
    }
    messages.push(out);
    Ok(())
}

/// A user turn: its `tool_result` blocks as `tool` messages first (chat wants them right after
/// the calls), then the rest as one user message (a string when it is all text).
fn user(blocks: &[Value], param: &str, messages: &mut Vec<Value>) -> Result<(), Refusal> {
    let mut parts = Vec::new();
    for block in blocks {
        let kind = block
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        match kind {
            "text" => {
                let text = block
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                parts.push(json!({"type": "text", "text": text}));
            }
            "image" => parts.push(image(block, param)?),
            "document" => parts.push(document(block, param)?),
            "tool_result" => {
                let mut text = match block.get("content") {
                    Some(Value::String(text)) => text.clone(),
                    Some(Value::Array(inner)) => result_text(inner),
                    _ => String::new(),
                };
                if block.get("is_error") == Some(&Value::Bool(true)) {
                    text.insert_str(0, "Error: ");
                }
                messages.push(json!({
                    "role": "tool",
                    "tool_call_id": block.get("tool_use_id").and_then(Value::as_str).unwrap_or_default(),
                    "content": text,
                }));
            }
            kind if unreadable_block(kind) => {}
            kind => {
                return Err(refuse(
                    param,
                    format!(
                        "content blocks of type `{kind}` cannot be sent to this model's target"
                    ),
                ))
            }
        }
    }
    if parts.is_empty() {
        return Ok(());
    }
    let all_text = parts.iter().all(|p| p["type"] == "text");
    let content = match all_text {
        true => Value::String(
            parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n\n"),
        ),
        false => Value::Array(parts),
    };
    messages.push(json!({"role": "user", "content": content}));
    Ok(())
}

/// The text of a `tool_result`'s blocks; an image in it is named, not sent (a chat tool
/// message holds text only).
fn result_text(blocks: &[Value]) -> String {
    blocks
        .iter()
        .map(|b| match b.get("type").and_then(Value::as_str) {
            Some("text") => b.get("text").and_then(Value::as_str).unwrap_or_default(),
            Some("image") => "[image]",
            _ => "",
        })
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join("\n\n")
}

fn image(block: &Value, param: &str) -> Result<Value, Refusal> {
    let source = block.get("source");
    let field = |k: &str| source.and_then(|s| s.get(k)).and_then(Value::as_str);
    let url = match field("type") {
        Some("base64") => format!(
            "data:{};base64,{}",
            field("media_type").unwrap_or("image/png"),
            field("data").unwrap_or_default()
        ),
        Some("url") => field("url").unwrap_or_default().to_owned(),
        _ => {
            return Err(refuse(
                param,
                "an `image` by `file_id` needs an Anthropic target; send it as base64 or a URL",
            ))
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

fn document(block: &Value, param: &str) -> Result<Value, Refusal> {
    let source = block.get("source");
    let field = |k: &str| source.and_then(|s| s.get(k)).and_then(Value::as_str);
    match (field("type"), field("media_type")) {
        (Some("text"), _) => Ok(json!({"type": "text", "text": field("data").unwrap_or_default()})),
        (Some("content"), _) => {
            let inner = source
                .and_then(|s| s.get("content"))
                .and_then(Value::as_array)
                .map(|b| result_text(b))
                .unwrap_or_default();
            Ok(json!({"type": "text", "text": inner}))
        }
        (Some("base64"), Some("application/pdf")) => Ok(json!({
            "type": "file",
            "file": {
                "filename": block.get("title").and_then(Value::as_str).unwrap_or("document.pdf"),
                "file_data": format!("data:application/pdf;base64,{}", field("data").unwrap_or_default()),
            },
        })),
        _ => Err(refuse(
            param,
            "this `document` needs an Anthropic target: only text, content and base64 PDF documents are translated",
        )),
    }
}

/// Custom tools as chat functions; Anthropic's built-in tools (a `type` other than `custom`)
/// left out, by name.
fn tools(tools: Option<&Value>) -> Result<(Vec<Value>, Vec<String>), Refusal> {
    let Some(Value::Array(tools)) = tools else {
        return Ok((Vec::new(), Vec::new()));
    };
    let mut kept = Vec::with_capacity(tools.len());
    let mut dropped = Vec::new();
    for tool in tools {
        let name = tool.get("name").and_then(Value::as_str).unwrap_or_default();
        match tool.get("type").and_then(Value::as_str) {
            None | Some("custom") => {
                if name.is_empty() {
                    return Err(refuse("tools", "a tool has no `name`"));
                }
                let mut function = json!({
                    "name": name,
                    "parameters": tool.get("input_schema").cloned().unwrap_or_else(|| json!({"type": "object"})),
                });
                if let Some(d) = tool.get("description").filter(|d| d.is_string()) {
                    function["description"] = d.clone();
                }
                kept.push(json!({"type": "function", "function": function}));
            }
            Some(kind) => dropped.push(match name.is_empty() {
                true => kind.to_owned(),
                false => name.to_owned(),
            }),
        }
    }
    Ok((kept, dropped))
}

/// `tool_choice` as chat's, and whether parallel calls are allowed.
fn tool_choice(
    choice: &Value,
    dropped: &[String],
) -> Result<(Option<Value>, Option<bool>), Refusal> {
    let parallel = choice
        .get("disable_parallel_tool_use")
        .and_then(Value::as_bool)
        .map(|disabled| !disabled);
    let chat = match choice.get("type").and_then(Value::as_str) {
        Some("auto") => Some(json!("auto")),
        Some("any") => Some(json!("required")),
        Some("none") => Some(json!("none")),
        Some("tool") => {
            let name = choice
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if dropped.iter().any(|d| d == name) {
                return Err(refuse(
                    "tool_choice",
                    format!("`tool_choice` forces the `{name}` tool, which this model's target cannot run"),
                ));
            }
            Some(json!({"type": "function", "function": {"name": name}}))
        }
        _ => {
            return Err(refuse(
                "tool_choice",
                "`tool_choice.type` must be auto, any, tool or none",
            ))
        }
    };
    Ok((chat, parallel))
}

/// The tools a Messages body names that [`to_chat`] leaves out, for the answer header.
pub fn dropped_tools(body: &[u8]) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Tools {
        #[serde(default)]
        tools: Option<Value>,
    }
    let Ok(Tools { tools: Some(list) }) = serde_json::from_slice::<Tools>(body) else {
        return Vec::new();
    };
    tools(Some(&list)).map(|(_, d)| d).unwrap_or_default()
}

/// Chat usage as Anthropic's: cached prompt tokens are reads, the rest input.
fn usage(chat: Option<&Value>, estimate: u64) -> Value {
    let Some(chat) = chat.filter(|u| u.is_object()) else {
        return json!({"input_tokens": estimate, "output_tokens": 0});
    };
    let n = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let cached = chat
        .get("prompt_tokens_details")
        .map_or(0, |d| n(d, "cached_tokens"));
    json!({
        "input_tokens": n(chat, "prompt_tokens").saturating_sub(cached),
        "output_tokens": n(chat, "completion_tokens"),
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
    })
}

/// Chat `finish_reason` → Anthropic `stop_reason`; a call made is always `tool_use`.
fn stop_reason(finish: Option<&str>, called: bool) -> &'static str {
    match finish {
        Some("length") => "max_tokens",
        Some("content_filter") => "refusal",
        _ if called => "tool_use",
        _ => "end_turn",
    }
}

/// A tool call's arguments as the `input` object (`{}` when empty; kept under `arguments`
/// when they are not a JSON object, so nothing the model wrote is lost).
fn tool_input(arguments: &str) -> Value {
    if arguments.trim().is_empty() {
        return json!({});
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({"arguments": arguments}),
    }
}

/// A chat completion as a Messages `message`; `Err` when it has no choice to read.
pub fn from_chat(chat: &Value, model: &str) -> Result<Value, String> {
    let Some(choice) = chat
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
    else {
        return Err("a chat answer without `choices`".into());
    };
    let message = choice.get("message");
    let text_of = |k: &str| {
        message
            .and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
    };
    let mut content = Vec::new();
    if let Some(text) = text_of("content").or_else(|| text_of("refusal")) {
        content.push(json!({"type": "text", "text": text}));
    }
    let calls = message
        .and_then(|m| m.get("tool_calls"))
        .and_then(Value::as_array);
    for call in calls.into_iter().flatten() {
        let function = call.get("function");
        let field = |v: Option<&Value>, k: &str| {
            v.and_then(|v| v.get(k))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        content.push(json!({
            "type": "tool_use",
            "id": field(Some(call), "id"),
            "name": field(function, "name"),
            "input": tool_input(&field(function, "arguments")),
        }));
    }
    let called = content.iter().any(|b| b["type"] == "tool_use");
    let finish = choice.get("finish_reason").and_then(Value::as_str);
    let refused = text_of("refusal").is_some() && text_of("content").is_none();
    let id = chat.get("id").and_then(Value::as_str).unwrap_or("chat");
    Ok(json!({
        "id": format!("msg_{id}"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": if refused { "refusal" } else { stop_reason(finish, called) },
        "stop_sequence": null,
        "usage": usage(chat.get("usage"), 0),
    }))
}

/// The Anthropic error `type` for a status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        503 | 529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

/// The status a Messages client gets for the gateway's: the same, but for `502` (every target
/// failed) and `503` (no capacity left: no key, every key cooling, the provider down), which
/// Anthropic calls `529` (its clients retry it later).
pub fn status(status: u16) -> u16 {
    match status {
        502 | 503 => 529,
        other => other,
    }
}

/// An error answer (OpenAI's envelope, or any body) in Anthropic's shape for `status` (the
/// client's, from [`status`]): `{"type":"error","error":{"type","message"}}`.
pub fn error_body(status: u16, body: &[u8]) -> Vec<u8> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        error: Option<Inner>,
        #[serde(rename = "type")]
        kind: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Inner {
        message: Option<String>,
        #[serde(rename = "type")]
        kind: Option<String>,
    }
    let parsed = serde_json::from_slice::<Envelope>(body).ok();
    // Already Anthropic's shape: as it is.
    if let Some(Envelope {
        kind: Some(kind),
        error: Some(Inner { kind: Some(_), .. }),
    }) = &parsed
    {
        if kind == "error" {
            return body.to_vec();
        }
    }
    let message = parsed
        .and_then(|e| e.error)
        .and_then(|e| e.message)
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned());
    json!({"type": "error", "error": {"type": error_type(status), "message": message}})
        .to_string()
        .into_bytes()
}

/// The `error` event that ends a Messages stream the gateway cannot finish.
pub fn error_event(kind: &str, message: &str) -> bytes::Bytes {
    let mut out = Vec::with_capacity(96 + message.len());
    const ERROR: &str = "error";
    write_event(
        &mut out,
        ERROR,
        &json!({"type": "error", "error": {"type": kind, "message": message}}),
    );
    bytes::Bytes::from(out)
}

/// The `ping` a Messages client gets while the upstream says nothing it can read.
pub const PING: &[u8] = b"event: ping\ndata: {\"type\":\"ping\"}\n\n";

fn write_event(out: &mut Vec<u8>, name: &str, data: &Value) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    // Writing a `Value` into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, data);
    out.extend_from_slice(b"\n\n");
}

/// The block being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Text,
    /// A tool call: its chat `index`.
    Tool(u64),
}

/// A chat stream's bytes, in any chunking, as Anthropic's Messages events.
#[derive(Debug)]
pub struct ChatToMessages {
    framer: SseFramer,
    model: String,
    /// The gateway's estimate of the input, for `message_start` (the real count comes last).
    estimate: u64,
    started: bool,
    ended: bool,
    /// Index of the next block.
    next: u64,
    open: Option<Open>,
    /// Chat tool indexes already written (a block each).
    calls: Vec<u64>,
    finish: Option<String>,
    usage: Option<Value>,
}

impl ChatToMessages {
    /// A writer for a stream answering `model` (the client's name for it), whose input the
    /// gateway estimated at `estimate` tokens.
    pub fn new(model: &str, estimate: u64) -> Self {
        ChatToMessages {
            framer: SseFramer::new(),
            model: model.to_owned(),
            estimate,
            started: false,
            ended: false,
            next: 0,
            open: None,
            calls: Vec::new(),
            finish: None,
            usage: None,
        }
    }

    /// Reads `input`, appending the events it completes to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut framer = std::mem::take(&mut self.framer);
        framer.feed(input, |event| {
            let data = sse::data(event);
            match data.trim_ascii() {
                b"" => {}
                b"[DONE]" => self.finish(out),
                json => match serde_json::from_slice::<Value>(json) {
                    Ok(chunk) => match chunk.get("error").filter(|e| !e.is_null()) {
                        Some(error) => {
                            let text = |k: &str| error.get(k).and_then(Value::as_str);
                            let message =
                                text("message").unwrap_or("the upstream failed the stream");
                            self.fail("api_error", message, out);
                        }
                        None => self.chunk(&chunk, out),
                    },
                    Err(_) => self.fail(
                        "api_error",
                        "the upstream sent an event that is not JSON",
                        out,
                    ),
                },
            }
            ControlFlow::Continue(())
        });
        self.framer = framer;
    }

    /// Bytes of an unfinished chat event held.
    pub fn pending(&self) -> usize {
        self.framer.pending()
    }

    fn start(&mut self, chunk: &Value, out: &mut Vec<u8>) {
        self.started = true;
        let id = chunk.get("id").and_then(Value::as_str).unwrap_or("chat");
        write_event(
            out,
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": format!("msg_{id}"), "type": "message", "role": "assistant",
                "model": self.model, "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": self.estimate, "output_tokens": 0},
            }}),
        );
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if self.open.take().is_some() {
            write_event(
                out,
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": self.next - 1}),
            );
        }
    }

    /// Opens a block at the next index.
    fn open(&mut self, open: Open, block: Value, out: &mut Vec<u8>) {
        self.close(out);
        write_event(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": self.next, "content_block": block}),
        );
        self.next += 1;
        self.open = Some(open);
    }

    fn delta(&self, delta: Value, out: &mut Vec<u8>) {
        write_event(
            out,
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": self.next - 1, "delta": delta}),
        );
    }

    fn chunk(&mut self, chunk: &Value, out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        if !self.started {
            self.start(chunk, out);
        }
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(u.clone());
        }
        let Some(choice) = chunk.get("choices").and_then(|c| c.get(0)) else {
            return;
        };
        let delta = choice.get("delta");
        let text = |k: &str| {
            delta
                .and_then(|d| d.get(k))
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
        };
        if let Some(text) = text("content").or_else(|| text("refusal")) {
            if self.open != Some(Open::Text) {
                self.open(Open::Text, json!({"type": "text", "text": ""}), out);
            }
            self.delta(json!({"type": "text_delta", "text": text}), out);
        }
        let calls = delta
            .and_then(|d| d.get("tool_calls"))
            .and_then(Value::as_array);
        for call in calls.into_iter().flatten() {
            let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
            let function = call.get("function");
            if self.open != Some(Open::Tool(index)) {
                if self.calls.contains(&index) {
                    // Arguments for a call whose block is closed cannot be written any more.
                    self.fail(
                        "api_error",
                        "the upstream interleaved the arguments of parallel tool calls",
                        out,
                    );
                    return;
                }
                self.calls.push(index);
                let field = |v: Option<&Value>, k: &str| {
                    v.and_then(|v| v.get(k))
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                };
                let block = json!({
                    "type": "tool_use",
                    "id": field(Some(call), "id"),
                    "name": field(function, "name"),
                    "input": {},
                });
                self.open(Open::Tool(index), block, out);
            }
            if let Some(fragment) = function
                .and_then(|f| f.get("arguments"))
                .and_then(Value::as_str)
                .filter(|a| !a.is_empty())
            {
                self.delta(
                    json!({"type": "input_json_delta", "partial_json": fragment}),
                    out,
                );
            }
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish = Some(reason.to_owned());
        }
    }

    /// The chat stream's `[DONE]`: the open block closed, `message_delta` with the stop reason
    /// and the usage, `message_stop`. Nothing after it.
    fn finish(&mut self, out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        if !self.started {
            self.start(&Value::Null, out);
        }
        self.close(out);
        self.ended = true;
        let reason = stop_reason(self.finish.as_deref(), !self.calls.is_empty());
        write_event(
            out,
            "message_delta",
            &json!({"type": "message_delta",
                "delta": {"stop_reason": reason, "stop_sequence": null},
                "usage": usage(self.usage.as_ref(), self.estimate)}),
        );
        write_event(out, "message_stop", &json!({"type": "message_stop"}));
    }

    /// An upstream failure after the first output: Anthropic's `error` event. Nothing after it.
    fn fail(&mut self, kind: &str, message: &str, out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        self.ended = true;
        self.open = None;
        out.extend_from_slice(&error_event(kind, message));
    }
}

/// The estimate a `count_tokens` request gets when no target can count: `{"input_tokens": n}`.
pub fn count_answer(input_tokens: u64) -> bytes::Bytes {
    bytes::Bytes::from(json!({ "input_tokens": input_tokens }).to_string())
}

#[cfg(test)]
mod tests;
