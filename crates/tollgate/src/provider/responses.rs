//! The Responses API as a request the chat dialects can serve: a `/v1/responses` body turned
//! into a Chat Completions body, the pivot every other dialect already reads (Anthropic's
//! translation starts from it). Stateless only: a request that names stored state
//! (`previous_response_id`, `conversation`, an `item_reference`) is refused with the parameter
//! named, never sent without it.
//!
//! The way back: a chat completion as a Responses `response` object ([`from_chat`]), and a chat
//! stream's chunks as the Responses events clients parse ([`StreamWriter`], fed by
//! [`ChatStream`] from the chat stream's bytes). [`super::Provider`] uses them for every target
//! whose `Serving` is `ResponsesViaChat`.

use crate::sse::{self, SseFramer};
use serde_json::{json, Map, Value};
use std::ops::ControlFlow;

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
    if req.get("background") == Some(&Value::Bool(true)) {
        return Err(Refused::Stateful("background"));
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
    for same in [
        "temperature",
        "top_p",
        "user",
        "safety_identifier",
        "prompt_cache_key",
    ] {
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

/// The tools a Responses body names that [`to_chat`] leaves out (by name, else type), read
/// without parsing the rest of the body: for the answer header.
pub fn dropped_tools(body: &[u8]) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Tools {
        #[serde(default)]
        tools: Option<Vec<Value>>,
    }
    let Ok(Tools { tools: Some(tools) }) = serde_json::from_slice::<Tools>(body) else {
        return Vec::new();
    };
    self::tools(Some(&Value::Array(tools)))
        .map(|(_, dropped)| dropped)
        .unwrap_or_default()
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

/// The Responses `usage` of a chat `usage`.
fn usage(chat: &Value) -> Value {
    let n = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let input = n(chat, "prompt_tokens");
    let output = n(chat, "completion_tokens");
    let cached = chat
        .get("prompt_tokens_details")
        .map_or(0, |d| n(d, "cached_tokens"));
    let reasoning = chat
        .get("completion_tokens_details")
        .map_or(0, |d| n(d, "reasoning_tokens"));
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": n(chat, "total_tokens").max(input.saturating_add(output)),
    })
}

/// Whether and why a chat `finish_reason` left the answer incomplete.
fn incomplete(finish_reason: Option<&str>) -> Option<&'static str> {
    match finish_reason {
        Some("length") => Some("max_output_tokens"),
        Some("content_filter") => Some("content_filter"),
        _ => None,
    }
}

/// A chat completion (non-streamed) as a Responses `response` object: its message as an
/// `output_text` message item, each tool call as a `function_call` item, usage renamed.
pub fn from_chat(chat: &Value) -> Value {
    let id = chat.get("id").and_then(Value::as_str).unwrap_or("chat");
    let choice = chat.get("choices").and_then(|c| c.get(0));
    let message = choice.and_then(|c| c.get("message"));
    let mut output = Vec::new();
    let text = message
        .and_then(|m| m.get("content"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !text.is_empty() {
        output.push(json!({
            "type": "message",
            "id": format!("msg_{id}"),
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }));
    }
    let calls = message
        .and_then(|m| m.get("tool_calls"))
        .and_then(Value::as_array);
    for (i, call) in calls.into_iter().flatten().enumerate() {
        let function = call.get("function");
        let field = |k: &str| {
            function
                .and_then(|f| f.get(k))
                .and_then(Value::as_str)
                .unwrap_or_default()
        };
        output.push(json!({
            "type": "function_call",
            "id": format!("fc_{id}_{i}"),
            "call_id": call.get("id").and_then(Value::as_str).unwrap_or_default(),
            "name": field("name"),
            "arguments": field("arguments"),
            "status": "completed",
        }));
    }
    let finish = choice
        .and_then(|c| c.get("finish_reason"))
        .and_then(Value::as_str);
    let why = incomplete(finish);
    json!({
        "id": format!("resp_{id}"),
        "object": "response",
        "created_at": chat.get("created").cloned().unwrap_or(json!(0)),
        "status": if why.is_some() { "incomplete" } else { "completed" },
        "incomplete_details": why.map(|reason| json!({"reason": reason})),
        "error": null,
        "model": chat.get("model").cloned().unwrap_or(Value::Null),
        "output": output,
        "usage": chat.get("usage").map(usage),
    })
}

/// One Responses stream event: its name (`event:`) and its data (which carries the same `type`
/// and the event's `sequence_number`).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The event's type.
    pub name: &'static str,
    /// Its JSON.
    pub data: Value,
}

impl Event {
    /// As SSE bytes.
    pub fn encode(events: &[Event]) -> bytes::Bytes {
        let mut out = Vec::new();
        Event::write(events, &mut out);
        bytes::Bytes::from(out)
    }

    /// Appends them to `out` as SSE.
    pub fn write(events: &[Event], out: &mut Vec<u8>) {
        for e in events {
            out.extend_from_slice(b"event: ");
            out.extend_from_slice(e.name.as_bytes());
            out.extend_from_slice(b"\ndata: ");
            // Writing a `Value` into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, &e.data);
            out.extend_from_slice(b"\n\n");
        }
    }
}

/// One output item being written.
#[derive(Debug)]
enum Item {
    Message {
        id: String,
        text: String,
    },
    Call {
        id: String,
        call_id: String,
        name: String,
        arguments: String,
    },
}

impl Item {
    fn json(&self, status: &str) -> Value {
        match self {
            Item::Message { id, text } => {
                let content = match status {
                    "in_progress" => json!([]),
                    _ => json!([{"type": "output_text", "text": text, "annotations": []}]),
                };
                json!({"type": "message", "id": id, "status": status, "role": "assistant", "content": content})
            }
            Item::Call {
                id,
                call_id,
                name,
                arguments,
            } => json!({
                "type": "function_call", "id": id, "call_id": call_id, "name": name,
                "arguments": if status == "in_progress" { "" } else { arguments.as_str() },
                "status": status,
            }),
        }
    }
}

/// Writes a chat stream's chunks as a Responses stream: `response.created`, `in_progress`,
/// then per output item `output_item.added`, its parts and deltas, their `done` events and
/// `output_item.done`, and at the end `response.completed` (or `response.incomplete`) with
/// the whole output and usage; every event numbered from 0.
#[derive(Debug, Default)]
pub struct StreamWriter {
    seq: u64,
    started: bool,
    ended: bool,
    id: String,
    model: Value,
    created: Value,
    items: Vec<Item>,
    /// Index (in `items`) of the item still open, if any.
    open: Option<usize>,
    /// Chat tool-call index → index in `items`.
    calls: Vec<(u64, usize)>,
    usage: Option<Value>,
    finish: Option<String>,
}

impl StreamWriter {
    fn event(&mut self, name: &'static str, mut data: Value) -> Event {
        data["type"] = json!(name);
        data["sequence_number"] = json!(self.seq);
        self.seq += 1;
        Event { name, data }
    }

    fn response(&self, status: &str) -> Value {
        let done = status != "in_progress";
        let why = incomplete(self.finish.as_deref());
        json!({
            "id": format!("resp_{}", self.id),
            "object": "response",
            "created_at": self.created,
            "status": status,
            "incomplete_details": if done { why.map(|r| json!({"reason": r})) } else { None },
            "error": null,
            "model": self.model,
            "output": if done { self.items.iter().map(|i| i.json("completed")).collect() } else { Vec::new() },
            "usage": if done { self.usage.clone() } else { None },
        })
    }

    /// Closes the open item: its `done` events.
    fn close(&mut self, out: &mut Vec<Event>) {
        let Some(index) = self.open.take() else {
            return;
        };
        let item = &self.items[index];
        let done = item.json("completed");
        match item {
            Item::Message { id, text } => {
                let (id, text) = (id.clone(), text.clone());
                let common = json!({"item_id": id, "output_index": index, "content_index": 0});
                let mut text_done = common.clone();
                text_done["text"] = json!(text);
                out.push(self.event("response.output_text.done", text_done));
                let mut part = common;
                part["part"] = json!({"type": "output_text", "text": text, "annotations": []});
                out.push(self.event("response.content_part.done", part));
            }
            Item::Call { id, arguments, .. } => {
                let data = json!({"item_id": id, "output_index": index, "arguments": arguments});
                out.push(self.event("response.function_call_arguments.done", data));
            }
        }
        out.push(self.event(
            "response.output_item.done",
            json!({"output_index": index, "item": done}),
        ));
    }

    /// Opens `item`: its `added` events.
    fn open(&mut self, item: Item, out: &mut Vec<Event>) -> usize {
        self.close(out);
        let index = self.items.len();
        let added = item.json("in_progress");
        let message_id = match &item {
            Item::Message { id, .. } => Some(id.clone()),
            Item::Call { .. } => None,
        };
        self.items.push(item);
        self.open = Some(index);
        out.push(self.event(
            "response.output_item.added",
            json!({"output_index": index, "item": added}),
        ));
        if let Some(id) = message_id {
            out.push(self.event(
                "response.content_part.added",
                json!({"item_id": id, "output_index": index, "content_index": 0,
                       "part": {"type": "output_text", "text": "", "annotations": []}}),
            ));
        }
        index
    }

    /// The events one chat chunk (a `data:` payload) makes.
    pub fn chunk(&mut self, chunk: &Value) -> Vec<Event> {
        let mut out = Vec::new();
        if self.ended {
            return out;
        }
        if !self.started {
            self.started = true;
            self.id = chunk
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or("chat")
                .to_owned();
            self.model = chunk.get("model").cloned().unwrap_or(Value::Null);
            self.created = chunk.get("created").cloned().unwrap_or(json!(0));
            let created = json!({"response": self.response("in_progress")});
            out.push(self.event("response.created", created.clone()));
            out.push(self.event("response.in_progress", created));
        }
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(usage(u));
        }
        let Some(choice) = chunk.get("choices").and_then(|c| c.get(0)) else {
            return out;
        };
        let delta = choice.get("delta");
        if let Some(text) = delta
            .and_then(|d| d.get("content"))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            let index = match self
                .open
                .filter(|i| matches!(self.items[*i], Item::Message { .. }))
            {
                Some(i) => i,
                None => {
                    // Text again after a tool call is a message item of its own.
                    let first = !self.items.iter().any(|i| matches!(i, Item::Message { .. }));
                    let id = match first {
                        true => format!("msg_{}", self.id),
                        false => format!("msg_{}_{}", self.id, self.items.len()),
                    };
                    self.open(
                        Item::Message {
                            id,
                            text: String::new(),
                        },
                        &mut out,
                    )
                }
            };
            if let Item::Message { id, text: all } = &mut self.items[index] {
                all.push_str(text);
                let id = id.clone();
                out.push(self.event(
                    "response.output_text.delta",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "delta": text, "logprobs": []}),
                ));
            }
        }
        let calls = delta
            .and_then(|d| d.get("tool_calls"))
            .and_then(Value::as_array);
        for call in calls.into_iter().flatten() {
            let chat_index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
            let function = call.get("function");
            let index = match self.calls.iter().find(|(c, _)| *c == chat_index) {
                Some((_, i)) => *i,
                None => {
                    let item = Item::Call {
                        id: format!("fc_{}_{chat_index}", self.id),
                        call_id: call
                            .get("id")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                        name: function
                            .and_then(|f| f.get("name"))
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                        arguments: String::new(),
                    };
                    let i = self.open(item, &mut out);
                    self.calls.push((chat_index, i));
                    i
                }
            };
            let fragment = function
                .and_then(|f| f.get("arguments"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            if let (false, Item::Call { id, arguments, .. }) =
                (fragment.is_empty(), &mut self.items[index])
            {
                arguments.push_str(fragment);
                let id = id.clone();
                out.push(self.event(
                    "response.function_call_arguments.delta",
                    json!({"item_id": id, "output_index": index, "delta": fragment}),
                ));
            }
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish = Some(reason.to_owned());
        }
        out
    }

    /// The closing events, once the chat stream has ended (`[DONE]`): the open item's `done`
    /// events and `response.completed` (or `response.incomplete`). Nothing after the first call.
    pub fn finish(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        if self.ended || !self.started {
            return out;
        }
        self.close(&mut out);
        self.ended = true;
        let (name, status) = match incomplete(self.finish.as_deref()) {
            Some(_) => ("response.incomplete", "incomplete"),
            None => ("response.completed", "completed"),
        };
        let response = json!({"response": self.response(status)});
        out.push(self.event(name, response));
        out
    }
}

impl StreamWriter {
    /// The closing event of a stream the upstream failed after its first output (a chat
    /// chunk carrying an `error`): `response.failed` with that error. Nothing after it.
    pub fn fail(&mut self, error: &Value) -> Vec<Event> {
        let mut out = Vec::new();
        if self.ended {
            return out;
        }
        self.ended = true;
        let text = |k: &str| error.get(k).and_then(Value::as_str);
        let code = text("code")
            .or_else(|| text("type"))
            .unwrap_or("server_error");
        let message = text("message").unwrap_or("the upstream failed the stream");
        let mut response = self.response("failed");
        response["error"] = json!({"code": code, "message": message});
        out.push(self.event("response.failed", json!({"response": response})));
        out
    }
}

/// A chat SSE stream's bytes, in any chunking, as Responses SSE events: each `data:` chunk
/// through a [`StreamWriter`], `[DONE]` as its end, a chunk carrying an `error` (or one that
/// is not JSON) as `response.failed`.
#[derive(Debug, Default)]
pub struct ChatStream {
    framer: SseFramer,
    writer: StreamWriter,
}

impl ChatStream {
    /// Reads `input`, appending the events it completes to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let writer = &mut self.writer;
        self.framer.feed(input, |event| {
            let data = sse::data(event);
            let data = data.trim_ascii();
            let events = match data {
                b"" => return ControlFlow::Continue(()),
                b"[DONE]" => writer.finish(),
                json => match serde_json::from_slice::<Value>(json) {
                    Ok(chunk) => match chunk.get("error").filter(|e| !e.is_null()) {
                        Some(error) => writer.fail(error),
                        None => writer.chunk(&chunk),
                    },
                    Err(_) => writer.fail(&json!({
                        "code": "bad_response",
                        "message": "the upstream sent an event that is not JSON",
                    })),
                },
            };
            Event::write(&events, out);
            ControlFlow::Continue(())
        });
    }

    /// Bytes of an unfinished chat event held.
    pub fn pending(&self) -> usize {
        self.framer.pending()
    }
}

#[cfg(test)]
mod tests;
