//! Token estimates taken from TPM buckets before a request is sent; real usage corrects them.
//!
//! Prompts are counted the way OpenAI's cookbook counts chat messages: 3 tokens of overhead per
//! message, 1 per name, 3 to prime the answer, about one token per 4 bytes of text, 85 tokens
//! for a low-detail image and 765 for others (a 512×512-tile average), and tools by their JSON
//! size. The completion is the request's `max_completion_tokens`/`max_tokens`, else the
//! configured default. A byte-based count is within a few percent of a tokenizer for English
//! and costs nothing to load; `reconcile` removes the error once `usage` arrives.
//!
//! A body this shape refuses (a member named twice, an allowance written as `100.5`, `1e3` or
//! `"100"`, a field of another type) is read again leniently (`lenient.rs`), so that no body is
//! charged less than the well-formed body it stands for.

use super::MAX_TOKENS;
use crate::endpoint::Endpoint;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::body::{Counts, Fields, Raw, Tally};

/// A body's count: its prompt estimate and the completion allowance it names (and the field
/// naming it), made once from the request's one reading of its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    /// Prompt tokens estimated.
    pub prompt: u64,
    /// The allowance the body names, and its field.
    pub allowance: Option<(&'static str, u64)>,
}

impl Counted {
    /// (prompt estimate, completion allowance), `default_max_tokens` standing in for an
    /// allowance the body does not name where the endpoint writes an answer.
    pub fn split(&self, endpoint: Endpoint, default_max_tokens: u32) -> (u64, u64) {
        let completion = if generates(endpoint) {
            self.allowance
                .map_or(u64::from(default_max_tokens), |(_, v)| v)
        } else {
            0
        };
        (self.prompt, completion)
    }

    /// The tokens charged up front: prompt plus completion, saturating, at most
    /// [`MAX_TOKENS`]; an allowance beyond that is refused, not wrapped.
    pub fn total(&self, endpoint: Endpoint, default_max_tokens: u32) -> Result<u64, Uncountable> {
        let (prompt, completion) = self.split(endpoint, default_max_tokens);
        if completion > MAX_TOKENS {
            return Err(Uncountable {
                param: self.allowance.map_or("max_tokens", |(param, _)| param),
                value: completion,
            });
        }
        Ok(prompt.saturating_add(completion).min(MAX_TOKENS))
    }
}

/// The estimate's rule for text: a token every four bytes, rounded up.
pub(crate) fn text_tokens(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(4)
}

/// Tokens of a message's `content` (its JSON text): a string, or an array of text and image
/// parts.
fn content_tokens(text: &str) -> u64 {
    if !text.starts_with('[') {
        return text_tokens(text.len());
    }
    let Ok(parts) = serde_json::from_str::<Vec<serde_json::Value>>(text) else {
        return text_tokens(text.len());
    };
    parts
        .iter()
        .map(|p| match p.get("type").and_then(|t| t.as_str()) {
            Some("image_url") | Some("input_image") => {
                if p.pointer("/image_url/detail").and_then(|d| d.as_str()) == Some("low") {
                    85
                } else {
                    765
                }
            }
            _ => text_tokens(p.get("text").and_then(|t| t.as_str()).map_or(0, str::len)),
        })
        .sum()
}

/// A completion allowance larger than the buckets can count ([`MAX_TOKENS`]): no limit could
/// ever pass it, and no model writes that much.
/// A Messages `content` or `system` (a string or blocks): text by its length, an image as a
/// high-detail image, every other block (`tool_use`, `tool_result`, a document) by its JSON.
fn block_tokens(text: &str) -> u64 {
    if !text.starts_with('[') {
        return text_tokens(text.len());
    }
    let Ok(blocks) = serde_json::from_str::<Vec<&RawValue>>(text) else {
        return text_tokens(text.len());
    };
    #[derive(Deserialize)]
    struct Block<'a> {
        #[serde(rename = "type", default, borrow)]
        kind: Option<&'a str>,
        #[serde(default, borrow)]
        text: Option<std::borrow::Cow<'a, str>>,
    }
    blocks
        .iter()
        .map(|raw| match serde_json::from_str::<Block<'_>>(raw.get()) {
            Ok(Block {
                kind: Some("image"),
                ..
            }) => 765,
            Ok(Block {
                kind: Some("text"),
                text: Some(t),
            }) => text_tokens(t.len()),
            _ => text_tokens(raw.get().len()),
        })
        .sum()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uncountable {
    /// The request field that names it.
    pub param: &'static str,
    /// Its value.
    pub value: u64,
}

/// The tokens a request is charged up front: prompt estimate plus completion allowance,
/// saturating, at most [`MAX_TOKENS`]; an allowance beyond that is refused, not wrapped.
pub fn total(body: &[u8], endpoint: Endpoint, default_max_tokens: u32) -> Result<u64, Uncountable> {
    let (prompt, completion) = estimate(body, endpoint, default_max_tokens);
    if completion > MAX_TOKENS {
        let param = match Fields::read(body) {
            Ok(b) => allowance(&b),
            Err(_) => lenient::allowance_in(body),
        }
        .map_or("max_tokens", |(param, _)| param);
        return Err(Uncountable {
            param,
            value: completion,
        });
    }
    Ok(prompt.saturating_add(completion).min(MAX_TOKENS))
}

/// The completion allowance the request names, and the field that names it.
fn allowance(body: &Fields<'_>) -> Option<(&'static str, u64)> {
    let named = |param, value: Option<u64>| value.map(|v| (param, v));
    named("max_completion_tokens", body.max_completion_tokens)
        .or(named("max_tokens", body.max_tokens))
        .or(named("max_output_tokens", body.max_output_tokens))
}

/// Tokens of a Responses `input`: a string, or items (messages counted by their content, images
/// as images; calls, their outputs and reasoning by their size).
fn input_tokens(text: &str) -> u64 {
    if !text.starts_with('[') {
        return text_tokens(text.len());
    }
    // A coding agent's turn, its whole history: read in one pass when the skim is sure of it
    // (a 40 KB Codex turn: 649k → see ARCHITECTURE, "The body: read once").
    crate::body::skim_input_tokens(text, text_tokens).unwrap_or_else(|| parsed_input_tokens(text))
}

/// [`input_tokens`] by serde_json's reading: the items, then each item, then each content
/// array into values.
fn parsed_input_tokens(text: &str) -> u64 {
    #[derive(Deserialize)]
    struct Item<'a> {
        #[serde(default, borrow)]
        content: Option<&'a RawValue>,
    }
    let Ok(items) = serde_json::from_str::<Vec<&RawValue>>(text) else {
        return text_tokens(text.len());
    };
    items
        .iter()
        .map(|item| match serde_json::from_str::<Item<'_>>(item.get()) {
            Ok(Item {
                content: Some(content),
            }) => 3 + content_tokens(content.get()),
            Ok(_) => text_tokens(item.get().len()),
            // A `content` named twice: each one counted.
            Err(_) => lenient::item_tokens(item),
        })
        .sum()
}

/// (prompt estimate, completion allowance) for a request body.
pub fn estimate(body: &[u8], endpoint: Endpoint, default_max_tokens: u32) -> (u64, u64) {
    match Fields::read(body) {
        Ok(parsed) => count(&parsed, body.len(), endpoint, Counts::default())
            .split(endpoint, default_max_tokens),
        Err(_) => lenient::estimate(body, endpoint, default_max_tokens),
    }
}

/// What the body's reading should count on the way for `endpoint` ([`count`] takes it).
pub fn tally(endpoint: Endpoint) -> Option<Tally> {
    match endpoint {
        Endpoint::ChatCompletions => Some(Tally::ChatContents(text_tokens)),
        Endpoint::Responses => Some(Tally::ResponsesInput(text_tokens)),
        Endpoint::Messages | Endpoint::CountTokens => Some(Tally::MessagesBlocks(text_tokens)),
        _ => None,
    }
}

/// The count of a body read as [`Fields`] (`len`: the body's size in bytes; `made`: what its
/// reading counted on the way, [`tally`], used in place of counting those fields again).
pub fn count(parsed: &Fields<'_>, len: usize, endpoint: Endpoint, made: Counts) -> Counted {
    let prompt = match endpoint {
        Endpoint::ChatCompletions => {
            let contents = made.contents.unwrap_or_else(|| {
                parsed
                    .messages
                    .iter()
                    .map(|m| m.content.map_or(0, |c| content_tokens(c.get())))
                    .sum()
            });
            let messages: u64 = parsed
                .messages
                .iter()
                .map(|m| {
                    3 + u64::from(m.name.is_some())
                        + m.tool_calls.map_or(0, |t| text_tokens(t.get().len()))
                })
                .sum();
            contents + messages + 3 + parsed.tools.map_or(0, |t| text_tokens(t.get().len()))
        }
        Endpoint::Responses => {
            let raw = |v: Option<Raw<'_>>| v.map_or(0, |v| text_tokens(v.get().len()));
            parsed
                .input
                .map_or(0, |i| made.input.unwrap_or_else(|| input_tokens(i.get())))
                + raw(parsed.instructions)
                + raw(parsed.tools)
                + 3
        }
        Endpoint::Messages | Endpoint::CountTokens => {
            let raw = |v: Option<Raw<'_>>| v.map_or(0, |v| block_tokens(v.get()));
            let contents = made
                .contents
                .unwrap_or_else(|| parsed.messages.iter().map(|m| raw(m.content)).sum());
            let messages = 3 * parsed.messages.len() as u64;
            contents
                + messages
                + made.system.unwrap_or_else(|| raw(parsed.system))
                + made.tools.unwrap_or_else(|| raw(parsed.tools))
                + 3
        }
        _ => parsed
            .prompt
            .or(parsed.input)
            .map_or(text_tokens(len), |p| text_tokens(p.get().len())),
    };
    Counted {
        prompt,
        allowance: allowance(parsed),
    }
}

/// Whether the endpoint writes an answer, charged a completion allowance.
fn generates(endpoint: Endpoint) -> bool {
    matches!(
        endpoint,
        Endpoint::ChatCompletions
            | Endpoint::Completions
            | Endpoint::Responses
            | Endpoint::Messages
    )
}

mod lenient;

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_responses_turn_counts_instructions_every_input_item_and_tools() {
        let instructions = "x".repeat(4000);
        let tools = serde_json::json!([{"type": "function", "name": "exec_command", "parameters": {"type": "object", "properties": {"cmd": {"type": "string", "description": "y".repeat(400)}}}}]);
        let body = serde_json::json!({
            "model": "m",
            "instructions": instructions,
            "input": [
                {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "d".repeat(2000)}]},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}, {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]},
                {"type": "function_call", "call_id": "c1", "name": "exec_command", "arguments": "{\"cmd\":\"ls\"}"},
                {"type": "function_call_output", "call_id": "c1", "output": "z".repeat(800)},
            ],
            "tools": tools,
            "max_output_tokens": 100,
        })
        .to_string();
        let (prompt, completion) = estimate(body.as_bytes(), Endpoint::Responses, 7);
        assert_eq!(completion, 100);
        // instructions ~1000, developer 3 + 500, user 3 + 1 + 765, the call ~20, its output
        // ~215, tools ~130, priming 3.
        assert!((2600..2700).contains(&prompt), "{prompt}");
        let plain = br#"{"model":"m","input":"hello there"}"#;
        assert_eq!(estimate(plain, Endpoint::Responses, 7), (4 + 3, 7));
    }

    #[test]
    fn chat_messages_count_overhead_text_and_images() {
        let body = br#"{"model":"m","messages":[
            {"role":"system","content":"You are terse."},
            {"role":"user","name":"ann","content":[{"type":"text","text":"What is this?"},{"type":"image_url","image_url":{"url":"https://x/y.png","detail":"low"}}]}
        ],"max_tokens":50}"#;
        let (prompt, completion) = estimate(body, Endpoint::ChatCompletions, 1024);
        // system: 3 + ceil(16/4)=4 ; user: 3 + 1 (name) + ceil(13/4)=4 + 85 ; priming 3
        assert_eq!(prompt, 3 + 4 + 3 + 1 + 4 + 85 + 3);
        assert_eq!(completion, 50);
    }

    #[test]
    fn a_messages_body_counts_system_every_block_and_tools() {
        let tool_use = r#"{"type":"tool_use","id":"t","name":"Bash","input":{"command":"ls"}}"#;
        let tools = r#"[{"name":"Bash","input_schema":{"type":"object"}}]"#;
        let body = format!(
            r#"{{"model":"m","max_tokens":40,"system":[{{"type":"text","text":"{sys}"}}],"messages":[
            {{"role":"user","content":[{{"type":"text","text":"What is this?"}},{{"type":"image","source":{{"type":"base64","media_type":"image/png","data":"{img}"}}}}]}},
            {{"role":"assistant","content":[{tool_use}]}},
            {{"role":"user","content":"ok"}}
        ],"tools":{tools}}}"#,
            sys = "s".repeat(400),
            img = "A".repeat(40_000),
        );
        let (prompt, completion) = estimate(body.as_bytes(), Endpoint::Messages, 1024);
        // system 100; user 3 + 4 + 765 (the image, not its 40 KB); assistant 3 + the block's
        // JSON; user 3 + 1; each tool by its JSON; priming 3.
        let tool = tools.len() - 2;
        let want = 100
            + (3 + 4 + 765)
            + (3 + tool_use.len().div_ceil(4) as u64)
            + (3 + 1)
            + tool.div_ceil(4) as u64
            + 3;
        assert_eq!(prompt, want);
        assert_eq!(completion, 40);
        // count_tokens writes nothing: no allowance.
        let (counted, nothing) = estimate(body.as_bytes(), Endpoint::CountTokens, 1024);
        assert_eq!((counted, nothing), (want, 0));
    }

    #[test]
    fn completion_allowance_prefers_max_completion_tokens_then_default() {
        let body = br#"{"model":"m","messages":[],"max_tokens":10,"max_completion_tokens":20}"#;
        assert_eq!(estimate(body, Endpoint::ChatCompletions, 7).1, 20);
        assert_eq!(
            estimate(
                br#"{"model":"m","messages":[]}"#,
                Endpoint::ChatCompletions,
                7
            )
            .1,
            7
        );
        assert_eq!(
            estimate(
                br#"{"model":"m","input":"abcdefgh"}"#,
                Endpoint::Embeddings,
                7
            ),
            (3, 0)
        );
    }

    #[test]
    fn allowances_beyond_what_buckets_count_are_refused_not_wrapped() {
        for (param, max) in [
            ("max_tokens", u64::MAX),
            ("max_completion_tokens", i64::MAX as u64 + 1),
            ("max_output_tokens", MAX_TOKENS + 1),
        ] {
            let body = format!(r#"{{"model":"m","messages":[],"{param}":{max}}}"#);
            assert_eq!(
                total(body.as_bytes(), Endpoint::ChatCompletions, 7),
                Err(Uncountable { param, value: max })
            );
        }
        let body = format!(r#"{{"model":"m","messages":[],"max_tokens":{MAX_TOKENS}}}"#);
        assert_eq!(
            total(body.as_bytes(), Endpoint::ChatCompletions, 7),
            Ok(MAX_TOKENS),
            "the prompt on top saturates"
        );
        let small = br#"{"model":"m","messages":[],"max_tokens":10}"#;
        assert_eq!(total(small, Endpoint::ChatCompletions, 7), Ok(3 + 10));
    }

    #[test]
    fn unparsable_bodies_count_their_bytes() {
        assert_eq!(estimate(b"xxxxxxxx", Endpoint::Other, 0), (2, 0));
        // Where an answer is generated, the default allowance is charged on top.
        assert_eq!(estimate(b"xxxxxxxx", Endpoint::ChatCompletions, 7), (2, 7));
    }
}
