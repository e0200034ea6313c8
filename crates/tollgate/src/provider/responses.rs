//! The Responses API as a request the chat dialects can serve: a `/v1/responses` body turned
//! into a Chat Completions body, the pivot every other dialect already reads (Anthropic's
//! translation starts from it). Stateless only: a request that names stored state
//! (`previous_response_id`, `conversation`, an `item_reference`) is refused with the parameter
//! named, never sent without it.
//!
//! Not wired into routing yet (issue 23): answers and streams still have to be written back in
//! the Responses shape.

use serde_json::{json, Map, Value};

/// A Responses request as a Chat Completions body.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The Chat Completions body.
    pub body: Value,
    /// Tools the target cannot run (hosted or grouped ones), by type or name, left out.
    pub dropped_tools: Vec<String>,
}

/// Why a Responses request cannot be translated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// It refers to state only the Responses API keeps.
    #[error("`{0}` refers to state stored by the Responses API, which this model's target does not keep; send the whole conversation in `input` instead")]
    Stateful(&'static str),
    /// `tool_choice` forces a tool the target cannot run.
    #[error("`tool_choice` forces the `{0}` tool, which this model's target cannot run")]
    ForcedTool(String),
    /// The body is not what the Responses API accepts.
    #[error("{message}")]
    Invalid {
        /// The parameter at fault.
        param: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl Refused {
    /// OpenAI's `param` for the error.
    pub fn param(&self) -> &'static str {
        match self {
            Refused::Stateful(param) => param,
            Refused::ForcedTool(_) => "tool_choice",
            Refused::Invalid { param, .. } => param,
        }
    }
}

fn invalid(param: &'static str, message: impl Into<String>) -> Refused {
    Refused::Invalid {
        param,
        message: message.into(),
    }
}

/// Translates a `/v1/responses` body into a Chat Completions body.
pub fn to_chat(body: &[u8]) -> Result<ChatRequest, Refused> {
    let Ok(Value::Object(req)) = serde_json::from_slice::<Value>(body) else {
        return Err(invalid("body", "the body must be a JSON object"));
    };
    for stateful in ["previous_response_id", "conversation"] {
        if req.get(stateful).is_some_and(|v| !v.is_null()) {
            return Err(Refused::Stateful(stateful));
        }
    }
    let mut out = Map::new();
    if let Some(model) = req.get("model") {
        out.insert("model".into(), model.clone());
    }
    let mut messages = Vec::new();
    match req.get("instructions") {
        Some(Value::String(text)) if !text.is_empty() => {
            messages.push(json!({"role": "system", "content": text}));
        }
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(_) => return Err(invalid("instructions", "`instructions` must be a string")),
    }
    match req.get("input") {
        Some(Value::String(text)) => messages.push(json!({"role": "user", "content": text})),
        Some(Value::Array(items)) => {
            for item in items {
                input_item(item, &mut messages)?;
            }
        }
        None | Some(Value::Null) => {}
        Some(_) => {
            return Err(invalid(
                "input",
                "`input` must be a string or a list of items",
            ))
        }
    }
    out.insert("messages".into(), Value::Array(messages));

    let (tools, dropped_tools) = tools(req.get("tools"))?;
    let has_tools = !tools.is_empty();
    if has_tools {
        out.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = req.get("tool_choice") {
        if let Some(choice) = tool_choice(choice)? {
            if has_tools {
                out.insert("tool_choice".into(), choice);
            }
        }
    }
    if has_tools {
        if let Some(parallel) = req.get("parallel_tool_calls").filter(|v| v.is_boolean()) {
            out.insert("parallel_tool_calls".into(), parallel.clone());
        }
    }
    if let Some(max) = req.get("max_output_tokens").filter(|v| !v.is_null()) {
        out.insert("max_tokens".into(), max.clone());
    }
    for same in ["temperature", "top_p", "user"] {
        if let Some(v) = req.get(same).filter(|v| !v.is_null()) {
            out.insert(same.into(), v.clone());
        }
    }
    if let Some(format) = req.get("text").and_then(|t| t.get("format")) {
        if let Some(rf) = response_format(format)? {
            out.insert("response_format".into(), rf);
        }
    }
    if let Some(effort) = req
        .get("reasoning")
        .and_then(|r| r.get("effort"))
        .filter(|e| e.is_string())
    {
        out.insert("reasoning_effort".into(), effort.clone());
    }
    if req.get("stream") == Some(&Value::Bool(true)) {
        out.insert("stream".into(), Value::Bool(true));
        // The Responses stream ends with the usage: the chat stream must carry it.
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(ChatRequest {
        body: Value::Object(out),
        dropped_tools,
    })
}

/// One `input` item, appended as chat messages.
fn input_item(item: &Value, messages: &mut Vec<Value>) -> Result<(), Refused> {
    let kind = item.get("type").and_then(Value::as_str);
    match kind {
        Some("message") | None if item.get("role").is_some() => message(item, messages),
        Some("function_call") => {
            let field = |name: &str| item.get(name).and_then(Value::as_str).unwrap_or_default();
            let call = json!({
                "id": field("call_id"),
                "type": "function",
                "function": {"name": field("name"), "arguments": field("arguments")},
            });
            // Calls in a row belong to one assistant turn.
            match messages.last_mut() {
                Some(last) if last["role"] == "assistant" && last.get("tool_calls").is_some() => {
                    if let Some(Value::Array(calls)) = last.get_mut("tool_calls") {
                        calls.push(call);
                    }
                }
                _ => messages
                    .push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
            }
            Ok(())
        }
        Some("function_call_output") => {
            let output = match item.get("output") {
                Some(Value::String(text)) => text.clone(),
                Some(Value::Array(parts)) => text_of(parts),
                Some(other) => other.to_string(),
                None => String::new(),
            };
            messages.push(json!({
                "role": "tool",
                "tool_call_id": item.get("call_id").and_then(Value::as_str).unwrap_or_default(),
                "content": output,
            }));
            Ok(())
        }
        Some("item_reference") => Err(Refused::Stateful("input")),
        // Reasoning the target cannot read back, and calls of hosted tools it cannot run.
        Some(_) => Ok(()),
        None => Err(invalid(
            "input",
            "an input item has neither a `type` nor a `role`",
        )),
    }
}

/// A message item: text parts and images, its role mapped (`developer` → `system`).
fn message(item: &Value, messages: &mut Vec<Value>) -> Result<(), Refused> {
    let role = match item.get("role").and_then(Value::as_str) {
        Some("user") => "user",
        Some("assistant") => "assistant",
        Some("system" | "developer") => "system",
        _ => {
            return Err(invalid(
                "input",
                "a message's `role` must be user, assistant, system or developer",
            ))
        }
    };
    let content = match item.get("content") {
        Some(Value::String(text)) => Value::String(text.clone()),
        Some(Value::Array(parts)) if role == "user" => {
            let mut out = Vec::with_capacity(parts.len());
            for part in parts {
                out.push(user_part(part)?);
            }
            Value::Array(out)
        }
        Some(Value::Array(parts)) => Value::String(text_of(parts)),
        _ => {
            return Err(invalid(
                "input",
                "a message's `content` must be a string or a list of parts",
            ))
        }
    };
    messages.push(json!({"role": role, "content": content}));
    Ok(())
}

/// A user content part as a chat content part.
fn user_part(part: &Value) -> Result<Value, Refused> {
    match part.get("type").and_then(Value::as_str) {
        Some("input_text" | "output_text" | "text") => {
            let text = part.get("text").and_then(Value::as_str).unwrap_or_default();
            Ok(json!({"type": "text", "text": text}))
        }
        Some("input_image") => {
            let Some(url) = part.get("image_url").and_then(Value::as_str) else {
                return Err(invalid(
                    "input",
                    "an `input_image` by `file_id` needs the Responses API; send it as `image_url`",
                ));
            };
            let mut image = json!({"url": url});
            if let Some(detail) = part.get("detail").filter(|d| d.is_string()) {
                image["detail"] = detail.clone();
            }
            Ok(json!({"type": "image_url", "image_url": image}))
        }
        Some(other) => Err(invalid(
            "input",
            format!("content parts of type `{other}` cannot be sent to this model's target"),
        )),
        None => Err(invalid("input", "a content part has no `type`")),
    }
}

/// The text of content parts (`input_text`, `output_text`, `refusal`), joined.
fn text_of(parts: &[Value]) -> String {
    parts
        .iter()
        .filter_map(|p| {
            p.get("text")
                .or_else(|| p.get("refusal"))
                .and_then(Value::as_str)
        })
        .collect::<Vec<_>>()
        .join("")
}

/// Function tools in the chat shape; every other tool left out, by name.
fn tools(tools: Option<&Value>) -> Result<(Vec<Value>, Vec<String>), Refused> {
    let Some(Value::Array(tools)) = tools else {
        return Ok((Vec::new(), Vec::new()));
    };
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    for tool in tools {
        let kind = tool.get("type").and_then(Value::as_str).unwrap_or_default();
        if kind != "function" {
            let name = tool.get("name").and_then(Value::as_str).unwrap_or(kind);
            dropped.push(name.to_owned());
            continue;
        }
        let Some(name) = tool.get("name").and_then(Value::as_str) else {
            return Err(invalid("tools", "a function tool has no `name`"));
        };
        let mut function = json!({"name": name});
        for field in ["description", "parameters", "strict"] {
            if let Some(v) = tool.get(field).filter(|v| !v.is_null()) {
                function[field] = v.clone();
            }
        }
        kept.push(json!({"type": "function", "function": function}));
    }
    Ok((kept, dropped))
}

/// `tool_choice` in the chat shape; `None` for a choice that leaves the model free.
fn tool_choice(choice: &Value) -> Result<Option<Value>, Refused> {
    match choice {
        Value::String(mode) if matches!(mode.as_str(), "auto" | "none" | "required") => {
            Ok(Some(choice.clone()))
        }
        Value::Object(o) => match o.get("type").and_then(Value::as_str) {
            Some("function") => {
                let name = o.get("name").and_then(Value::as_str).unwrap_or_default();
                Ok(Some(
                    json!({"type": "function", "function": {"name": name}}),
                ))
            }
            Some("allowed_tools") => Ok(Some(Value::String("auto".into()))),
            // A hosted or grouped tool: left out of the tools, so it cannot be forced.
            Some(other) => {
                let forced = o.get("name").and_then(Value::as_str).unwrap_or(other);
                Err(Refused::ForcedTool(forced.to_owned()))
            }
            None => Err(invalid("tool_choice", "`tool_choice` has no `type`")),
        },
        _ => Err(invalid(
            "tool_choice",
            "`tool_choice` must be auto, none, required or a tool",
        )),
    }
}

/// `text.format` as `response_format`; `None` for plain text.
fn response_format(format: &Value) -> Result<Option<Value>, Refused> {
    match format.get("type").and_then(Value::as_str) {
        Some("text") | None => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let mut schema = json!({});
            for field in ["name", "schema", "strict", "description"] {
                if let Some(v) = format.get(field).filter(|v| !v.is_null()) {
                    schema[field] = v.clone();
                }
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": schema})))
        }
        Some(other) => Err(invalid(
            "text.format",
            format!("`text.format` of type `{other}` cannot be sent to this model's target"),
        )),
    }
}

#[cfg(test)]
mod tests;
