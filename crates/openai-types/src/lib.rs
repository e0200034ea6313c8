//! Serde wire types of the OpenAI API that Tollgate speaks to its clients.
//!
//! Only what the gateway reads or writes itself lives here: the error envelope, the few
//! request fields the gateway routes on, and the pieces of stream chunks it inspects.
//! Everything else in a body passes through untouched.

use serde::{Deserialize, Serialize};

/// `{"error": {...}}`: the envelope of every error answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    /// The error itself.
    pub error: ErrorBody,
}

/// The body of an OpenAI error: all four fields are always present (`param`/`code` may be null).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Human-readable message.
    pub message: String,
    /// Error type, e.g. `invalid_request_error`.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// The request parameter at fault, if any.
    #[serde(default)]
    pub param: Option<String>,
    /// Machine-readable code, e.g. `rate_limit_exceeded`; OpenAI sends strings, some servers numbers.
    #[serde(default)]
    pub code: Option<serde_json::Value>,
}

impl ErrorEnvelope {
    /// Builds an envelope from its parts.
    pub fn new(
        message: impl Into<String>,
        kind: &str,
        param: Option<&str>,
        code: Option<&str>,
    ) -> Self {
        ErrorEnvelope {
            error: ErrorBody {
                message: message.into(),
                kind: Some(kind.to_owned()),
                param: param.map(str::to_owned),
                code: code.map(|c| serde_json::Value::String(c.to_owned())),
            },
        }
    }

    /// The envelope as JSON bytes (serialization of these plain fields cannot fail).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|_| br#"{"error":{"message":"internal error","type":"server_error","param":null,"code":null}}"#.to_vec())
    }
}

impl ErrorBody {
    /// The `code` as a string when it is one.
    pub fn code_str(&self) -> Option<&str> {
        self.code.as_ref().and_then(|c| c.as_str())
    }
}

/// The fields of a request body that the gateway routes on; everything else is skipped unread.
#[derive(Debug, Default, Deserialize)]
pub struct RequestMeta<'a> {
    /// The model the client asked for, as its JSON value: where it is in the body (a borrowed
    /// slice of it), for a rename spliced in place; read it with [`RequestMeta::model_name`].
    #[serde(borrow, default)]
    pub model: Option<&'a serde_json::value::RawValue>,
    /// Whether the answer is an SSE stream.
    #[serde(default)]
    pub stream: Option<bool>,
    /// `stream_options`, when given.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// `max_tokens` (legacy name).
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// `max_completion_tokens` (current name).
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    /// `prompt_cache_key`, as sent (any JSON value): names the session for sticky routing.
    #[serde(borrow, default)]
    pub prompt_cache_key: Option<&'a serde_json::value::RawValue>,
    /// `user`, as sent (any JSON value).
    #[serde(borrow, default)]
    pub user: Option<&'a serde_json::value::RawValue>,
    /// `previous_response_id` (Responses API), as sent.
    #[serde(borrow, default)]
    pub previous_response_id: Option<&'a serde_json::value::RawValue>,
    /// `store` (Responses API), as sent.
    #[serde(borrow, default)]
    pub store: Option<&'a serde_json::value::RawValue>,
}

impl RequestMeta<'_> {
    /// The model the client asked for; an error when `model` is not a string.
    pub fn model_name(&self) -> Result<Option<String>, serde_json::Error> {
        self.model
            .map(|raw| serde_json::from_str::<String>(raw.get()))
            .transpose()
    }
}

/// `stream_options` of a chat or completion request.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct StreamOptions {
    /// Ask for a final usage chunk.
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// Token usage of a completion, as Chat Completions (`prompt_tokens`, `completion_tokens`) or
/// the Responses API (`input_tokens`, `output_tokens`) reports it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt.
    #[serde(default, alias = "input_tokens")]
    pub prompt_tokens: u64,
    /// Tokens generated.
    #[serde(default, alias = "output_tokens")]
    pub completion_tokens: u64,
    /// Sum of both.
    #[serde(default)]
    pub total_tokens: u64,
    /// Where the prompt's cached tokens are reported.
    #[serde(
        default,
        alias = "input_tokens_details",
        skip_serializing_if = "Option::is_none"
    )]
    pub prompt_tokens_details: Option<PromptDetails>,
}

/// The details of a prompt's tokens.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptDetails {
    /// Prompt tokens served from the provider's prompt cache.
    #[serde(default)]
    pub cached_tokens: u64,
}

impl Usage {
    /// Prompt tokens served from the provider's prompt cache.
    pub fn cached_tokens(&self) -> u64 {
        self.prompt_tokens_details.map_or(0, |d| d.cached_tokens)
    }
}

/// What the gateway looks for in a body or stream event: an `error`, or a `usage`.
#[derive(Debug, Default, Deserialize)]
pub struct Probe {
    /// Present when the object is an error.
    #[serde(default)]
    pub error: Option<ErrorBody>,
    /// Present on final usage chunks and non-stream answers.
    #[serde(default)]
    pub usage: Option<Usage>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_envelope_has_all_four_fields() {
        let json = String::from_utf8(
            ErrorEnvelope::new("bad", "invalid_request_error", None, Some("x")).to_json(),
        )
        .unwrap();
        assert_eq!(
            json,
            r#"{"error":{"message":"bad","type":"invalid_request_error","param":null,"code":"x"}}"#
        );
    }

    #[test]
    fn meta_reads_only_routing_fields() {
        let meta: RequestMeta<'_> = serde_json::from_str(r#"{"messages":[{"role":"user","content":"hi"}],"model":"m","stream":true,"stream_options":{"include_usage":true}}"#).unwrap();
        assert_eq!(meta.model_name().unwrap().as_deref(), Some("m"));
        assert_eq!(meta.model.map(|m| m.get()), Some("\"m\""));
        let escaped: RequestMeta<'_> = serde_json::from_str(r#"{"model":"g\u0070t"}"#).unwrap();
        assert_eq!(escaped.model_name().unwrap().as_deref(), Some("gpt"));
        let number: RequestMeta<'_> = serde_json::from_str(r#"{"model":3}"#).unwrap();
        assert!(number.model_name().is_err());
        let null: RequestMeta<'_> = serde_json::from_str(r#"{"model":null}"#).unwrap();
        assert!(null.model.is_none());
        assert_eq!(meta.stream, Some(true));
        assert_eq!(
            meta.stream_options.and_then(|o| o.include_usage),
            Some(true)
        );
    }

    #[test]
    fn probe_reads_errors_with_numeric_codes() {
        let p: Probe =
            serde_json::from_str(r#"{"error":{"message":"m","type":"t","code":429}}"#).unwrap();
        assert_eq!(p.error.unwrap().code, Some(serde_json::json!(429)));
    }
}
