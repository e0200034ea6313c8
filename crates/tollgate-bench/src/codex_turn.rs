//! The request body of the `prompt40k` scenario: one turn of a coding agent (Codex CLI's shape on
//! chat completions), about 40 KB; and the same turn as the Responses API (`responses40k`) and
//! Anthropic's Messages API (`messages40k`) carry it.
//!
//! A long system message (the agent's instructions, `codex_turn/instructions.md`), 30 more
//! messages of a session fixing a bug (user requests, assistant answers, assistant `tool_calls`
//! and the `tool` messages with their output) and 10 function tools with JSON-schema
//! parameters. It is a fixed text, built once per process: the scenario measures what a large
//! request costs the gateway (reading, parsing, estimating tokens, forwarding), not what varies
//! between requests. The last message is the user's, so mock-upstream answers its short default
//! text and the answer stays as small as `immediate`'s.

mod conversation;
mod outputs;
mod tools;

use std::sync::OnceLock;

use bytes::Bytes;
use serde_json::{json, Value};

/// The system message.
const INSTRUCTIONS: &str = include_str!("codex_turn/instructions.md");

/// The body as JSON.
fn build() -> Value {
    let mut messages = vec![json!({ "role": "system", "content": INSTRUCTIONS })];
    messages.extend(conversation::messages());
    json!({
        "model": "bench-model",
        "messages": messages,
        "tools": tools::all(),
        "tool_choice": "auto",
        "parallel_tool_calls": true,
        "max_tokens": 16,
    })
}

/// The `prompt40k` request body (built on first use; a cheap clone after).
pub(crate) fn prompt40k_body() -> Bytes {
    static BODY: OnceLock<Bytes> = OnceLock::new();
    BODY.get_or_init(|| Bytes::from(build().to_string()))
        .clone()
}

/// The `responses40k` request body: the same turn as Codex CLI sends it to the Responses API
/// (the system message as `instructions`, the conversation as input items: messages with text
/// parts, `function_call`s and their `function_call_output`s; the tools flattened).
pub(crate) fn responses40k_body() -> Bytes {
    static BODY: OnceLock<Bytes> = OnceLock::new();
    BODY.get_or_init(|| Bytes::from(responses(&build()).to_string()))
        .clone()
}

/// The `messages40k` request body: the same turn as Claude Code sends it to Anthropic's
/// Messages API (`/v1/messages`): the system prompt as a text block marked for caching, the
/// conversation as alternating user and assistant turns of blocks (text, `tool_use`, and the
/// `tool_result`s in the next user turn), the tools with their `input_schema`; model
/// `bench-claude`, which the benchmark's gateway serves from an Anthropic provider.
pub(crate) fn messages40k_body() -> Bytes {
    static BODY: OnceLock<Bytes> = OnceLock::new();
    BODY.get_or_init(|| Bytes::from(messages(&build()).to_string()))
        .clone()
}

/// The Messages API's form of a chat completions turn.
fn messages(chat: &Value) -> Value {
    let mut system = String::new();
    // (role, blocks), a role's consecutive messages merged into one turn.
    let mut turns: Vec<(&str, Vec<Value>)> = Vec::new();
    for message in chat["messages"].as_array().into_iter().flatten() {
        let (role, mut blocks) = match message["role"].as_str().unwrap_or_default() {
            "system" => {
                system = message["content"].as_str().unwrap_or_default().to_owned();
                continue;
            }
            "tool" => (
                "user",
                vec![json!({
                    "type": "tool_result",
                    "tool_use_id": message["tool_call_id"],
                    "content": message["content"],
                })],
            ),
            role => {
                let mut blocks = Vec::new();
                if let Some(text) = message["content"].as_str().filter(|t| !t.is_empty()) {
                    blocks.push(json!({ "type": "text", "text": text }));
                }
                for call in message["tool_calls"].as_array().into_iter().flatten() {
                    let input: Value = call["function"]["arguments"]
                        .as_str()
                        .and_then(|a| serde_json::from_str(a).ok())
                        .unwrap_or_else(|| json!({}));
                    blocks.push(json!({
                        "type": "tool_use",
                        "id": call["id"],
                        "name": call["function"]["name"],
                        "input": input,
                    }));
                }
                (
                    if role == "assistant" {
                        "assistant"
                    } else {
                        "user"
                    },
                    blocks,
                )
            }
        };
        match turns.last_mut() {
            Some((last, into)) if *last == role => into.append(&mut blocks),
            _ => turns.push((role, blocks)),
        }
    }
    let messages: Vec<Value> = turns
        .into_iter()
        .map(|(role, blocks)| json!({ "role": role, "content": blocks }))
        .collect();
    let tools = flat_tools(
        chat,
        |name, description, schema| json!({ "name": name, "description": description, "input_schema": schema }),
    );
    json!({
        "model": "bench-claude",
        "max_tokens": 16,
        "system": [{ "type": "text", "text": system, "cache_control": { "type": "ephemeral" } }],
        "messages": messages,
        "tools": tools,
    })
}

/// A chat turn's function tools written by `tool` from each one's name, description and
/// parameters' schema (the other APIs' tools are flat).
fn flat_tools(chat: &Value, tool: impl Fn(&Value, &Value, &Value) -> Value) -> Vec<Value> {
    chat["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let f = &t["function"];
            tool(&f["name"], &f["description"], &f["parameters"])
        })
        .collect()
}

/// The Responses API's form of a chat completions turn.
fn responses(chat: &Value) -> Value {
    let mut instructions = String::new();
    let mut input = Vec::new();
    for message in chat["messages"].as_array().into_iter().flatten() {
        let role = message["role"].as_str().unwrap_or_default();
        if role == "system" {
            instructions = message["content"].as_str().unwrap_or_default().to_owned();
            continue;
        }
        if role == "tool" {
            input.push(json!({
                "type": "function_call_output",
                "call_id": message["tool_call_id"],
                "output": message["content"],
            }));
            continue;
        }
        if let Some(text) = message["content"].as_str() {
            let kind = if role == "assistant" {
                "output_text"
            } else {
                "input_text"
            };
            input.push(json!({
                "type": "message",
                "role": role,
                "content": [{ "type": kind, "text": text }],
            }));
        }
        for call in message["tool_calls"].as_array().into_iter().flatten() {
            input.push(json!({
                "type": "function_call",
                "call_id": call["id"],
                "name": call["function"]["name"],
                "arguments": call["function"]["arguments"],
            }));
        }
    }
    let tools = flat_tools(
        chat,
        |name, description, schema| json!({ "type": "function", "name": name, "description": description, "parameters": schema }),
    );
    json!({
        "model": "bench-model",
        "instructions": instructions,
        "input": input,
        "tools": tools,
        "tool_choice": "auto",
        "parallel_tool_calls": true,
        "store": false,
        "max_output_tokens": 16,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `body`, checked to be about 40 KB, as JSON.
    fn about_40_kb(body: &Bytes) -> Value {
        assert!(
            (38_000..=44_000).contains(&body.len()),
            "{} bytes",
            body.len()
        );
        serde_json::from_slice(body).unwrap()
    }

    #[test]
    fn the_responses_body_is_the_same_turn_as_input_items() {
        let v = about_40_kb(&responses40k_body());
        assert!(v["instructions"].as_str().unwrap().len() > 8_000);
        let input = v["input"].as_array().unwrap();
        assert!(input.len() >= 30, "{} items", input.len());
        for kind in ["message", "function_call", "function_call_output"] {
            assert!(input.iter().any(|i| i["type"] == kind), "no {kind}");
        }
        assert_eq!(input.last().unwrap()["role"], "user");
        assert_eq!(v["tools"].as_array().unwrap().len(), 10);
        assert_eq!(v["store"], false);
    }

    #[test]
    fn the_messages_body_is_the_same_turn_in_alternating_turns_of_blocks() {
        let v = about_40_kb(&messages40k_body());
        assert!(v["system"][0]["text"].as_str().unwrap().len() > 8_000);
        let turns = v["messages"].as_array().unwrap();
        assert_eq!(turns.first().unwrap()["role"], "user");
        assert_eq!(turns.last().unwrap()["role"], "user");
        for pair in turns.windows(2) {
            assert_ne!(pair[0]["role"], pair[1]["role"], "turns alternate");
        }
        let blocks: Vec<&Value> = turns
            .iter()
            .flat_map(|t| t["content"].as_array().unwrap())
            .collect();
        for kind in ["text", "tool_use", "tool_result"] {
            let n = blocks.iter().filter(|b| b["type"] == kind).count();
            assert!(n >= 10, "{n} {kind} blocks");
        }
        assert_eq!(v["tools"].as_array().unwrap().len(), 10);
        assert_eq!(v["model"], "bench-claude");
    }

    #[test]
    fn the_body_is_about_40_kb_with_31_messages_and_10_tools() {
        let body = prompt40k_body();
        let v = about_40_kb(&body);
        let messages = v["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 31);
        assert_eq!(messages[0]["role"], "system");
        let system = messages[0]["content"].as_str().unwrap().len();
        assert!((8_000..=10_000).contains(&system), "{system} bytes");
        assert_eq!(messages[30]["role"], "user");
        let tools = v["tools"].as_array().unwrap();
        assert_eq!(tools.len(), 10);
        for tool in tools {
            assert_eq!(tool["type"], "function");
            assert!(tool["function"]["description"].is_string(), "{tool}");
            assert_eq!(tool["function"]["parameters"]["type"], "object", "{tool}");
        }
        assert_eq!(v["max_tokens"], 16);
        assert!(v.get("stream").is_none());
        assert_eq!(body, prompt40k_body(), "the same bytes every time");
        assert_eq!(body, Bytes::from(build().to_string()), "deterministic");
    }

    #[test]
    fn every_tool_call_is_answered_by_a_tool_message_and_names_a_tool() {
        let v = build();
        let names: Vec<&str> = v["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["function"]["name"].as_str().unwrap())
            .collect();
        let messages = v["messages"].as_array().unwrap();
        let mut open: Vec<&str> = Vec::new();
        let (mut calls, mut outputs) = (0, 0);
        for m in messages {
            match m["role"].as_str().unwrap() {
                "tool" => {
                    let id = m["tool_call_id"].as_str().unwrap();
                    assert!(open.contains(&id), "{id} answers no open call");
                    open.retain(|o| *o != id);
                    outputs += 1;
                }
                role => {
                    assert!(
                        open.is_empty(),
                        "{open:?} unanswered before a {role} message"
                    );
                    for call in m["tool_calls"].as_array().into_iter().flatten() {
                        let f = &call["function"];
                        assert!(names.contains(&f["name"].as_str().unwrap()), "{call}");
                        let args: Value =
                            serde_json::from_str(f["arguments"].as_str().unwrap()).unwrap();
                        assert!(args.is_object(), "{call}");
                        open.push(call["id"].as_str().unwrap());
                        calls += 1;
                    }
                }
            }
        }
        assert!(open.is_empty(), "{open:?}");
        assert_eq!((calls, outputs), (10, 10));
        let roles = |r: &str| messages.iter().filter(|m| m["role"] == r).count();
        assert_eq!((roles("user"), roles("assistant")), (7, 13));
    }
}
