//! OpenAI chat request → Anthropic messages request.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{RequestOptions, TranslateError};

/// The user turn put first when a conversation does not start with one (Anthropic requires
/// `user` first; OpenAI allows an assistant first, or only system messages).
pub(super) const PLACEHOLDER_USER_TURN: &str = "(continued)";

/// The fields of an OpenAI chat request that the translation reads. Everything else is
/// ignored (serde skips unknown fields), which is how dropping works.
#[derive(Deserialize)]
struct ChatRequest {
    messages: Vec<Message>,
    max_completion_tokens: Option<u32>,
    max_tokens: Option<u32>,
    stop: Option<Stop>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<u32>,
    tools: Option<Vec<Tool>>,
    tool_choice: Option<Value>,
    parallel_tool_calls: Option<bool>,
    user: Option<String>,
    safety_identifier: Option<String>,
    stream: Option<bool>,
    n: Option<u32>,
    logprobs: Option<bool>,
    top_logprobs: Option<u32>,
    functions: Option<Value>,
    function_call: Option<Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Message {
    role: String,
    content: Option<Value>,
    tool_calls: Option<Vec<ToolCall>>,
    tool_call_id: Option<String>,
}

#[derive(Deserialize)]
struct ToolCall {
    id: String,
    function: FunctionCall,
}

#[derive(Deserialize)]
struct FunctionCall {
    name: String,
    arguments: Option<String>,
}

#[derive(Deserialize)]
struct Tool {
    #[serde(rename = "type")]
    kind: String,
    function: Option<FunctionDef>,
}

#[derive(Deserialize)]
struct FunctionDef {
    name: String,
    description: Option<String>,
    parameters: Option<Value>,
}

/// Translates an OpenAI `chat.completions` request body into an Anthropic `/v1/messages`
/// request body for `opts.upstream_model`.
///
/// The Anthropic body is built from an allow-list, so no unknown field is ever sent:
///
/// - **Translated**: `messages` (see below); `max_completion_tokens`, else `max_tokens`, else
///   `opts.default_max_tokens` → `max_tokens`; `stop` (string or array, empty strings
///   skipped) → `stop_sequences`; `temperature` (clamped to Anthropic's 0..=1), `top_p`,
///   `top_k` → kept only for API versions before `2026-10-21`, which rejects them;
///   `tools` → `{name, description, input_schema}` (default `{"type":"object","properties":{}}`);
///   `tool_choice` (`auto`/`required`/`none`/named function → `auto`/`any`/`none`/`tool`;
///   left out when there are no tools); `parallel_tool_calls: false` →
///   `tool_choice.disable_parallel_tool_use: true`; `user` (else `safety_identifier`) →
///   `metadata.user_id`; `stream` → `stream`.
/// - **Refused** with [`TranslateError::Unsupported`]: `n > 1`, `logprobs: true`,
///   `top_logprobs > 0`, the legacy `functions`/`function_call`, the `function` role,
///   non-function tools or tool choices, content parts other than text, refusal and
///   `image_url` (audio, files), image URLs that are neither `https?://` nor base64 `data:`.
/// - **Dropped**: `presence_penalty`, `frequency_penalty`, `seed`, `logit_bias`,
///   `response_format`, `stream_options`, `service_tier`, `store`, `metadata`,
///   `reasoning_effort`, `modalities`, `audio`, `prediction`, `web_search_options`,
///   `prompt_cache_key`, `verbosity`, the client's `model`, image `detail`, tool `strict`,
///   message `name`, and any other field.
///
/// Messages: `system` and `developer` messages become the top-level `system` string (their
/// texts joined by a blank line, in order). `tool` messages become `tool_result` blocks of a
/// `user` turn; an assistant's `tool_calls` become `tool_use` blocks (arguments parsed; `""`
/// reads as `{}`; invalid JSON or a non-object is [`TranslateError::Invalid`]). Empty text is
/// skipped and a message left without content is dropped. **Role alternation**: consecutive
/// turns of one role are merged into one turn (blocks in order); if the first turn is not
/// `user` (or there are no turns), a `user` turn with the text `"(continued)"` is put first.
pub fn translate_request(
    openai_body: &[u8],
    opts: &RequestOptions<'_>,
) -> Result<Vec<u8>, TranslateError> {
    let req: ChatRequest =
        serde_json::from_slice(openai_body).map_err(|e| TranslateError::Invalid(e.to_string()))?;
    refuse_unsupported(&req)?;
    let (system, messages) = conversation(&req.messages)?;
    let mut out = Map::new();
    out.insert("model".into(), opts.upstream_model.into());
    out.insert("messages".into(), Value::Array(messages));
    if let Some(system) = system {
        out.insert("system".into(), system.into());
    }
    let max_tokens = req
        .max_completion_tokens
        .or(req.max_tokens)
        .unwrap_or(opts.default_max_tokens);
    out.insert("max_tokens".into(), max_tokens.into());
    if let Some(stops) = stop_sequences(req.stop.as_ref()) {
        out.insert("stop_sequences".into(), stops);
    }
    if opts.accepts_sampling() {
        if let Some(t) = req.temperature {
            out.insert("temperature".into(), t.clamp(0.0, 1.0).into());
        }
        if let Some(p) = req.top_p {
            out.insert("top_p".into(), p.into());
        }
        if let Some(k) = req.top_k {
            out.insert("top_k".into(), k.into());
        }
    }
    add_tools(&mut out, &req)?;
    if let Some(user) = req.user.or(req.safety_identifier) {
        out.insert("metadata".into(), json!({ "user_id": user }));
    }
    if let Some(stream) = req.stream {
        out.insert("stream".into(), stream.into());
    }
    serde_json::to_vec(&out).map_err(|e| TranslateError::Invalid(e.to_string()))
}

/// Refuses the parameters Anthropic has no equivalent for and that change the answer's shape.
fn refuse_unsupported(req: &ChatRequest) -> Result<(), TranslateError> {
    if req.n.is_some_and(|n| n > 1) {
        return Err(TranslateError::unsupported(
            "`n` greater than 1 is not supported by this model's provider (Anthropic)",
            "n",
        ));
    }
    if req.logprobs == Some(true) {
        return Err(TranslateError::unsupported(
            "`logprobs` is not supported by this model's provider (Anthropic)",
            "logprobs",
        ));
    }
    if req.top_logprobs.is_some_and(|n| n > 0) {
        return Err(TranslateError::unsupported(
            "`top_logprobs` is not supported by this model's provider (Anthropic)",
            "top_logprobs",
        ));
    }
    for (value, param) in [
        (&req.functions, "functions"),
        (&req.function_call, "function_call"),
    ] {
        if value.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(TranslateError::unsupported(
                format!(
                    "the legacy `{param}` parameter is not supported for this model; use `tools`"
                ),
                param,
            ));
        }
    }
    Ok(())
}

/// One Anthropic turn under construction.
struct Turn {
    role: &'static str,
    blocks: Vec<Value>,
}

/// Splits the OpenAI messages into the `system` text and alternating Anthropic messages.
fn conversation(messages: &[Message]) -> Result<(Option<String>, Vec<Value>), TranslateError> {
    let mut system: Vec<String> = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let (role, blocks) = match message.role.as_str() {
            "system" | "developer" => {
                system.extend(system_texts(message.content.as_ref(), i)?);
                continue;
            }
            "user" => ("user", content_blocks(message.content.as_ref(), i)?),
            "assistant" => ("assistant", assistant_blocks(message, i)?),
            "tool" => ("user", vec![tool_result(message, i)?]),
            other => {
                return Err(TranslateError::unsupported(
                    format!("messages[{i}]: role `{other}` is not supported for this model"),
                    "messages",
                ))
            }
        };
        match turns.last_mut() {
            _ if blocks.is_empty() => {}
            Some(last) if last.role == role => last.blocks.extend(blocks),
            _ => turns.push(Turn { role, blocks }),
        }
    }
    if turns.first().is_none_or(|t| t.role != "user") {
        turns.insert(
            0,
            Turn {
                role: "user",
                blocks: vec![text_block(PLACEHOLDER_USER_TURN)],
            },
        );
    }
    let system = (!system.is_empty()).then(|| system.join("\n\n"));
    Ok((system, turns.into_iter().map(turn_json).collect()))
}

/// A turn as JSON; a lone text block is sent as a plain string.
fn turn_json(turn: Turn) -> Value {
    let content = match turn.blocks.as_slice() {
        [block] if block["type"] == "text" => block["text"].clone(),
        _ => Value::Array(turn.blocks),
    };
    json!({ "role": turn.role, "content": content })
}

fn text_block(text: &str) -> Value {
    json!({ "type": "text", "text": text })
}

/// The texts of a system or developer message (text parts only).
fn system_texts(content: Option<&Value>, i: usize) -> Result<Vec<String>, TranslateError> {
    let blocks = content_blocks(content, i)?;
    blocks
        .into_iter()
        .map(|block| match block["text"].as_str() {
            Some(text) if block["type"] == "text" => Ok(text.to_owned()),
            _ => Err(TranslateError::unsupported(
                format!("messages[{i}]: system messages may only contain text"),
                "messages",
            )),
        })
        .collect()
}

/// A message's `content` (null, a string, or an array of parts) as Anthropic blocks.
fn content_blocks(content: Option<&Value>, i: usize) -> Result<Vec<Value>, TranslateError> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(text)) if text.is_empty() => Ok(Vec::new()),
        Some(Value::String(text)) => Ok(vec![text_block(text)]),
        Some(Value::Array(parts)) => {
            let mut blocks = Vec::with_capacity(parts.len());
            for part in parts {
                blocks.extend(content_part(part, i)?);
            }
            Ok(blocks)
        }
        Some(_) => Err(TranslateError::Invalid(format!(
            "messages[{i}].content must be a string or an array of content parts"
        ))),
    }
}

/// One OpenAI content part as an Anthropic block (`None` for empty text).
fn content_part(part: &Value, i: usize) -> Result<Option<Value>, TranslateError> {
    let kind = part["type"].as_str().unwrap_or_default();
    let text = match kind {
        "text" => part["text"].as_str(),
        "refusal" => part["refusal"].as_str(),
        "image_url" => return image_block(&part["image_url"], i).map(Some),
        _ => {
            return Err(TranslateError::unsupported(
                format!(
                    "messages[{i}]: content part type `{kind}` is not supported for this model"
                ),
                "messages",
            ))
        }
    };
    match text {
        Some("") => Ok(None),
        Some(text) => Ok(Some(text_block(text))),
        None => Err(TranslateError::Invalid(format!(
            "messages[{i}]: a `{kind}` part needs a string `{kind}`"
        ))),
    }
}

/// An `image_url` part (`{"url": ...}`, or the bare string older clients send) as an image
/// block: base64 `data:` URLs inline, `http(s)` URLs by reference.
fn image_block(image_url: &Value, i: usize) -> Result<Value, TranslateError> {
    let url = image_url["url"]
        .as_str()
        .or(image_url.as_str())
        .ok_or_else(|| {
            TranslateError::Invalid(format!("messages[{i}]: image_url needs a `url`"))
        })?;
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(json!({ "type": "image", "source": { "type": "url", "url": url } }));
    }
    let inline = url
        .strip_prefix("data:")
        .and_then(|rest| rest.split_once(','))
        .and_then(|(meta, data)| Some((meta.strip_suffix(";base64")?, data)));
    match inline {
        Some((media_type, data)) if !media_type.is_empty() => Ok(json!({
            "type": "image",
            "source": { "type": "base64", "media_type": media_type, "data": data },
        })),
        _ => Err(TranslateError::unsupported(
            format!("messages[{i}]: image URLs must be http(s) URLs or base64 data URLs"),
            "messages",
        )),
    }
}

/// An assistant message: its text, then one `tool_use` block per tool call.
fn assistant_blocks(message: &Message, i: usize) -> Result<Vec<Value>, TranslateError> {
    let mut blocks = content_blocks(message.content.as_ref(), i)?;
    for call in message.tool_calls.iter().flatten() {
        let arguments = call.function.arguments.as_deref().unwrap_or_default();
        let input = if arguments.trim().is_empty() {
            Value::Object(Map::new())
        } else {
            serde_json::from_str(arguments).map_err(|e| {
                TranslateError::Invalid(format!(
                    "messages[{i}]: arguments of tool call `{}` are not valid JSON: {e}",
                    call.id
                ))
            })?
        };
        if !input.is_object() {
            return Err(TranslateError::Invalid(format!(
                "messages[{i}]: arguments of tool call `{}` must be a JSON object",
                call.id
            )));
        }
        blocks.push(json!({
            "type": "tool_use",
            "id": call.id,
            "name": call.function.name,
            "input": input,
        }));
    }
    Ok(blocks)
}

/// A `tool` message as a `tool_result` block (content as a string, or text/image blocks).
fn tool_result(message: &Message, i: usize) -> Result<Value, TranslateError> {
    let id = message.tool_call_id.as_deref().ok_or_else(|| {
        TranslateError::Invalid(format!(
            "messages[{i}]: a tool message needs `tool_call_id`"
        ))
    })?;
    let mut block = json!({ "type": "tool_result", "tool_use_id": id });
    // Empty content is left out: Anthropic's `content` is optional, empty text is not valid.
    match &message.content {
        Some(Value::String(text)) if !text.is_empty() => block["content"] = text.as_str().into(),
        other => {
            let blocks = content_blocks(other.as_ref(), i)?;
            if !blocks.is_empty() {
                block["content"] = Value::Array(blocks);
            }
        }
    }
    Ok(block)
}

fn stop_sequences(stop: Option<&Stop>) -> Option<Value> {
    let stops: &[String] = match stop? {
        Stop::One(s) => std::slice::from_ref(s),
        Stop::Many(v) => v,
    };
    let stops: Vec<Value> = stops
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| Value::from(s.as_str()))
        .collect();
    (!stops.is_empty()).then_some(Value::Array(stops))
}

/// Adds `tools` and `tool_choice` (none when the request has no tools).
fn add_tools(out: &mut Map<String, Value>, req: &ChatRequest) -> Result<(), TranslateError> {
    let tools = match req.tools.as_deref() {
        None | Some([]) => return Ok(()),
        Some(tools) => tools,
    };
    let tools: Vec<Value> = tools.iter().map(tool_json).collect::<Result<_, _>>()?;
    out.insert("tools".into(), Value::Array(tools));
    let mut choice = match &req.tool_choice {
        None | Some(Value::Null) => json!({ "type": "auto" }),
        Some(choice) => tool_choice(choice)?,
    };
    if req.parallel_tool_calls == Some(false) && choice["type"] != "none" {
        choice["disable_parallel_tool_use"] = Value::Bool(true);
    }
    // `auto` is Anthropic's default: only send it when it carries the parallel flag.
    if choice != json!({ "type": "auto" }) {
        out.insert("tool_choice".into(), choice);
    }
    Ok(())
}

fn tool_json(tool: &Tool) -> Result<Value, TranslateError> {
    let function = match (tool.kind.as_str(), &tool.function) {
        ("function", Some(function)) => function,
        (kind, _) => {
            return Err(TranslateError::unsupported(
                format!("tools of type `{kind}` are not supported for this model"),
                "tools",
            ))
        }
    };
    let mut schema = match &function.parameters {
        Some(Value::Object(schema)) => schema.clone(),
        _ => Map::new(),
    };
    // Anthropic requires an object schema; OpenAI accepts `{}` or a schema without `type`.
    schema.entry("type").or_insert_with(|| "object".into());
    if schema.get("type") == Some(&Value::from("object")) {
        schema
            .entry("properties")
            .or_insert_with(|| Value::Object(Map::new()));
    }
    let mut out = json!({ "name": function.name, "input_schema": schema });
    if let Some(description) = &function.description {
        out["description"] = description.as_str().into();
    }
    Ok(out)
}

fn tool_choice(choice: &Value) -> Result<Value, TranslateError> {
    let mapped = match choice {
        Value::String(s) if s == "auto" => Some(json!({ "type": "auto" })),
        Value::String(s) if s == "required" => Some(json!({ "type": "any" })),
        Value::String(s) if s == "none" => Some(json!({ "type": "none" })),
        Value::Object(_) if choice["type"] == "function" => choice["function"]["name"]
            .as_str()
            .map(|name| json!({ "type": "tool", "name": name })),
        _ => None,
    };
    mapped.ok_or_else(|| {
        TranslateError::unsupported(
            format!("tool_choice `{choice}` is not supported for this model"),
            "tool_choice",
        )
    })
}
