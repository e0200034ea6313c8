//! The Anthropic Messages dialect: pure translation between OpenAI's chat.completions wire
//! format (what clients speak) and Anthropic's `/v1/messages` (what the upstream speaks).
//! No I/O, no async: bytes in, bytes out, so every rule is a table test.
//!
//! - [`translate_request`]: an OpenAI chat request → an Anthropic messages request, built
//!   from an allow-list (Anthropic rejects unknown top-level fields, so nothing the client
//!   sent is ever forwarded verbatim). The rules, including what is dropped and what is
//!   refused, are on that function.
//! - [`translate_response`]: an Anthropic `message` → an OpenAI `chat.completion`.
//! - [`translate_error`]: an Anthropic error body → the OpenAI error envelope, with a `type`
//!   and `code` the gateway's outcome classification understands.
//! - [`StreamTranslator`]: Anthropic's named SSE events → OpenAI `chat.completion.chunk`
//!   events, incrementally, whatever the chunking of the input.
//!
//! The mapping follows `PROTOCOLS.md` (Anthropic section).

#[cfg(test)]
mod fuzz;
mod request;
mod response;
mod stream;
#[cfg(test)]
mod tests;

use serde::Deserialize;
use serde_json::{json, Value};

pub use request::translate_request;
pub use response::{translate_error, translate_response};
pub use stream::StreamTranslator;

/// The API version whose requests reject `temperature`, `top_p` and `top_k`; this version
/// and every later one (ISO dates compare as strings) get those fields dropped.
const SAMPLING_REJECTED_FROM: &str = "2026-10-21";

/// What the translation of one request needs besides the client's body.
#[derive(Clone, Copy, Debug)]
pub struct RequestOptions<'a> {
    /// The target's model name, sent as `model` (the client's model name is an alias).
    pub upstream_model: &'a str,
    /// `max_tokens` when the client set neither `max_completion_tokens` nor `max_tokens`
    /// (Anthropic requires it).
    pub default_max_tokens: u32,
    /// The `anthropic-version` the provider is configured with, e.g. `"2023-06-01"` or
    /// `"2026-10-21"`; decides which sampling parameters survive.
    pub version: &'a str,
}

impl RequestOptions<'_> {
    /// Whether this API version still accepts `temperature`, `top_p` and `top_k`.
    fn accepts_sampling(&self) -> bool {
        self.version < SAMPLING_REJECTED_FROM
    }
}

/// Why a request (or an upstream answer) could not be translated.
#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    /// The request is valid OpenAI but asks for something Anthropic cannot do (`n > 1`,
    /// logprobs, an audio part...). The gateway answers 400 with this message and `param`.
    #[error("{message}")]
    Unsupported {
        /// Says what is unsupported, for the client.
        message: String,
        /// The OpenAI request parameter at fault, e.g. `"n"`.
        param: Option<String>,
    },
    /// The body is not what its format requires (not JSON, a wrong type, tool-call arguments
    /// that are not a JSON object...).
    #[error("invalid request body: {0}")]
    Invalid(String),
}

impl TranslateError {
    fn unsupported(message: impl Into<String>, param: &str) -> TranslateError {
        TranslateError::Unsupported {
            message: message.into(),
            param: Some(param.to_owned()),
        }
    }
}

/// Anthropic's `usage`, as found in a message, `message_start` and `message_delta`. Every
/// field is optional because `message_delta` carries only what changed.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
struct Usage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

impl Usage {
    /// Overwrites the fields `later` carries (Anthropic's counts are cumulative).
    fn update(&mut self, later: &Usage) {
        let pairs = [
            (&mut self.input_tokens, later.input_tokens),
            (&mut self.output_tokens, later.output_tokens),
            (
                &mut self.cache_creation_input_tokens,
                later.cache_creation_input_tokens,
            ),
            (
                &mut self.cache_read_input_tokens,
                later.cache_read_input_tokens,
            ),
        ];
        for (mine, theirs) in pairs {
            if theirs.is_some() {
                *mine = theirs;
            }
        }
    }

    /// OpenAI's `usage`: prompt tokens include cache writes and reads, and the reads are
    /// also reported as `prompt_tokens_details.cached_tokens`.
    fn to_openai(self) -> Value {
        let cached = self.cache_read_input_tokens.unwrap_or(0);
        // Saturating: the counts are the upstream's, and nothing it sends may wrap here.
        let prompt = self
            .input_tokens
            .unwrap_or(0)
            .saturating_add(self.cache_creation_input_tokens.unwrap_or(0))
            .saturating_add(cached);
        let completion = self.output_tokens.unwrap_or(0);
        json!({
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt.saturating_add(completion),
            "prompt_tokens_details": { "cached_tokens": cached },
        })
    }
}

/// Anthropic `stop_reason` → OpenAI `finish_reason`. A missing or unknown reason (the API
/// adds new ones) reads as a normal `stop`.
fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        // end_turn, stop_sequence, pause_turn, and anything new.
        _ => "stop",
    }
}
