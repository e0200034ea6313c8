//! Anthropic SSE stream → OpenAI `chat.completion.chunk` SSE stream, incrementally.

use std::collections::HashMap;
use std::ops::ControlFlow;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::response::{arguments, translate_error};
use super::{finish_reason, Usage};
use crate::sse::{self, SseFramer};

/// One Anthropic stream event, by its `type` (the same as the SSE event name).
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockStart {
        index: u64,
        content_block: StartBlock,
    },
    ContentBlockDelta {
        index: u64,
        delta: BlockDelta,
    },
    MessageDelta {
        delta: MessageDeltaBody,
        #[serde(default)]
        usage: Usage,
    },
    MessageStop,
    Error,
    /// `ping`, `content_block_stop` and event types added later.
    #[serde(other)]
    Ignored,
}

#[derive(Deserialize)]
struct StartMessage {
    id: String,
    #[serde(default)]
    usage: Usage,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StartBlock {
    Text {
        #[serde(default)]
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

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct MessageDeltaBody {
    stop_reason: Option<String>,
}

/// The `delta` of an OpenAI chunk; absent fields are left out.
#[derive(Default, Serialize)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCallDelta<'a>; 1]>,
}

#[derive(Serialize)]
struct ToolCallDelta<'a> {
    index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionDelta<'a>,
}

#[derive(Serialize)]
struct FunctionDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

/// An OpenAI `chat.completion.chunk`. `usage` is left out unless the client asked for it;
/// then it is `null` on every chunk but the final usage chunk.
#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [Choice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<Value>>,
}

/// What an Anthropic content block (by its index) turns into.
#[derive(Clone, Copy, Debug)]
enum BlockKind {
    Text,
    /// The k-th tool call of the message (OpenAI's `tool_calls[].index`).
    Tool(u32),
}

/// Translates an Anthropic `/v1/messages` SSE stream into OpenAI `chat.completion.chunk`
/// SSE events, one input piece at a time.
///
/// Input may be split anywhere (inside a line, inside a UTF-8 character, between `\r` and
/// `\n`); lines may end in `\n`, `\r\n` or `\r`. Mapping (per `PROTOCOLS.md`):
/// `message_start` → a chunk with `delta: {role: "assistant", content: ""}`; `text_delta` →
/// `delta.content`; a `tool_use` block start → `delta.tool_calls[{index: k, id, type,
/// function: {name, arguments: ""}}]` where k counts tool calls; `input_json_delta` → argument
/// pieces for call k; `message_delta` → a chunk with `finish_reason`; `message_stop` → the
/// usage chunk (`choices: []`, when `include_usage`) then `data: [DONE]`; `error` → one
/// `data: {"error": ...}` event in OpenAI's shape, then the end. Thinking and signature
/// deltas, `ping`, server-tool blocks and unknown events are ignored. An event that is not
/// readable JSON ends the stream with a `server_error` event. After the end, input is ignored.
#[derive(Debug)]
pub struct StreamTranslator {
    /// Splits the input into events.
    framer: SseFramer,
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    blocks: HashMap<u64, BlockKind>,
    tool_calls: u32,
    usage: Usage,
    done: bool,
}

impl StreamTranslator {
    /// A translator for one stream. `client_model` goes in every chunk's `model`;
    /// `include_usage` is the client's `stream_options.include_usage`; `created` is the unix
    /// time in seconds.
    pub fn new(client_model: &str, include_usage: bool, created: u64) -> Self {
        StreamTranslator {
            framer: SseFramer::new(),
            id: "chatcmpl-".to_owned(),
            model: client_model.to_owned(),
            created,
            include_usage,
            blocks: HashMap::new(),
            tool_calls: 0,
            usage: Usage::default(),
            done: false,
        }
    }

    /// Feeds bytes; appends any complete translated events to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        let mut framer = std::mem::take(&mut self.framer);
        framer.feed(input, |event| {
            self.event(event, out);
            if self.done {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        // After the end, the rest of the input is dropped.
        if !self.done {
            self.framer = framer;
        }
    }

    /// Bytes of an upstream event not complete yet.
    pub fn pending(&self) -> usize {
        self.framer.pending()
    }

    /// True once `message_stop` (→ `data: [DONE]`) or an error event has been emitted.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// One complete event. Comments (`: ...`), `id:`, `retry:` and events without data mean
    /// nothing here.
    fn event(&mut self, frame: &[u8], out: &mut Vec<u8>) {
        let data = sse::data(frame);
        if data.is_empty() {
            return;
        }
        let data = String::from_utf8_lossy(&data);
        let event: Event = match serde_json::from_str(&data) {
            Ok(event) => event,
            // Unknown events are skipped unread, even when their data is not JSON.
            Err(_) if !is_known_event(sse::name(frame).unwrap_or_default()) => return,
            Err(e) => {
                let message = format!("upstream sent an unreadable stream event: {e}");
                let body = serde_json::json!({ "error": {
                    "message": message, "type": "server_error", "param": null, "code": null,
                }});
                self.finish_with_error(body.to_string().as_bytes(), out);
                return;
            }
        };
        match event {
            Event::MessageStart { message } => {
                self.id = format!("chatcmpl-{}", message.id);
                self.usage.update(&message.usage);
                let delta = Delta {
                    role: Some("assistant"),
                    content: Some(""),
                    tool_calls: None,
                };
                self.chunk(delta, None, out);
            }
            Event::ContentBlockStart {
                index,
                content_block,
            } => self.block_start(index, content_block, out),
            Event::ContentBlockDelta { index, delta } => self.block_delta(index, delta, out),
            Event::MessageDelta { delta, usage } => {
                self.usage.update(&usage);
                let reason = finish_reason(delta.stop_reason.as_deref());
                self.chunk(Delta::default(), Some(reason), out);
            }
            Event::MessageStop => self.finish(out),
            Event::Error => self.finish_with_error(&translate_error(data.as_bytes()), out),
            Event::Ignored => {}
        }
    }

    fn block_start(&mut self, index: u64, block: StartBlock, out: &mut Vec<u8>) {
        match block {
            StartBlock::Text { text } => {
                self.blocks.insert(index, BlockKind::Text);
                self.content(&text, out);
            }
            StartBlock::ToolUse { id, name, input } => {
                let k = self.tool_calls;
                self.tool_calls += 1;
                self.blocks.insert(index, BlockKind::Tool(k));
                self.tool_call(k, Some((&id, &name)), "", out);
                // The input normally streams as deltas; a non-empty start input is sent whole.
                if input.as_object().is_some_and(|o| !o.is_empty()) {
                    self.tool_call(k, None, &arguments(&input), out);
                }
            }
            StartBlock::Other => {}
        }
    }

    fn block_delta(&mut self, index: u64, delta: BlockDelta, out: &mut Vec<u8>) {
        match (delta, self.blocks.get(&index).copied()) {
            (BlockDelta::TextDelta { text }, _) => self.content(&text, out),
            // The first piece is often empty: nothing to send.
            (BlockDelta::InputJsonDelta { partial_json }, Some(BlockKind::Tool(k)))
                if !partial_json.is_empty() =>
            {
                self.tool_call(k, None, &partial_json, out);
            }
            // Thinking, signatures, citations, and server-tool input.
            _ => {}
        }
    }

    fn content(&self, text: &str, out: &mut Vec<u8>) {
        if !text.is_empty() {
            let delta = Delta {
                content: Some(text),
                ..Delta::default()
            };
            self.chunk(delta, None, out);
        }
    }

    /// A tool-call delta: the header (`id`, `type`, `name`) on the first, arguments after.
    fn tool_call(&self, k: u32, head: Option<(&str, &str)>, args: &str, out: &mut Vec<u8>) {
        let call = ToolCallDelta {
            index: k,
            id: head.map(|(id, _)| id),
            kind: head.map(|_| "function"),
            function: FunctionDelta {
                name: head.map(|(_, name)| name),
                arguments: args,
            },
        };
        let delta = Delta {
            tool_calls: Some([call]),
            ..Delta::default()
        };
        self.chunk(delta, None, out);
    }

    fn chunk(&self, delta: Delta<'_>, finish: Option<&'static str>, out: &mut Vec<u8>) {
        let choices = [Choice {
            index: 0,
            delta,
            logprobs: None,
            finish_reason: finish,
        }];
        self.write_chunk(&choices, None, out);
    }

    fn write_chunk(&self, choices: &[Choice<'_>], usage: Option<Value>, out: &mut Vec<u8>) {
        let chunk = Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices,
            usage: self.include_usage.then_some(usage),
        };
        out.extend_from_slice(b"data: ");
        // Serializing these plain structs into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, &chunk);
        out.extend_from_slice(b"\n\n");
    }

    /// `message_stop`: the usage chunk if asked for, then `[DONE]`.
    fn finish(&mut self, out: &mut Vec<u8>) {
        if self.include_usage {
            self.write_chunk(&[], Some(self.usage.to_openai()), out);
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
        self.done = true;
    }

    fn finish_with_error(&mut self, envelope: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(envelope);
        out.extend_from_slice(b"\n\n");
        self.done = true;
    }
}

/// The events whose unreadable data is an upstream failure rather than something to skip.
fn is_known_event(name: &[u8]) -> bool {
    matches!(
        name,
        b"" | b"message_start"
            | b"content_block_start"
            | b"content_block_delta"
            | b"message_delta"
            | b"message_stop"
            | b"error"
    )
}
