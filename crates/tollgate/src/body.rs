//! A request body read once: the fields the gateway routes on and the ones the token estimate
//! counts, in one pass over the bytes, without building a tree (string values, content parts
//! and tools are borrowed as raw JSON, never copied). The estimate's count is made from the same
//! reading ([`crate::rate_limit::estimate::count`]) and travels with the request
//! (`GatewayRequest::counted`).
//!
//! A body this shape refuses (a member named twice, a field of another type) is read again by
//! the narrower readers: the routing fields alone (`openai_types::RequestMeta`) and the
//! estimate's lenient reading; so this shape changes what is accepted in no case.

use openai_types::StreamOptions;
use serde::Deserialize;
use serde_json::value::RawValue;

/// The fields of a request body the gateway reads; everything else is skipped unread.
#[derive(Debug, Default, Deserialize)]
pub struct Fields<'a> {
    /// `model`, as its JSON value (where it is in the body, for a rename spliced in place).
    #[serde(borrow, default)]
    pub model: Option<&'a RawValue>,
    /// `stream`.
    #[serde(default)]
    pub stream: Option<bool>,
    /// `stream_options`.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// `prompt_cache_key`, as sent.
    #[serde(borrow, default)]
    pub prompt_cache_key: Option<&'a RawValue>,
    /// `user`, as sent.
    #[serde(borrow, default)]
    pub user: Option<&'a RawValue>,
    /// `previous_response_id`, as sent.
    #[serde(borrow, default)]
    pub previous_response_id: Option<&'a RawValue>,
    /// `store`, as sent.
    #[serde(borrow, default)]
    pub store: Option<&'a RawValue>,
    /// Chat `messages`.
    #[serde(default, borrow)]
    pub messages: Vec<Message<'a>>,
    /// `tools`.
    #[serde(default, borrow)]
    pub tools: Option<&'a RawValue>,
    /// Legacy completions' `prompt`.
    #[serde(default, borrow)]
    pub prompt: Option<&'a RawValue>,
    /// Responses and embeddings `input`.
    #[serde(default, borrow)]
    pub input: Option<&'a RawValue>,
    /// Responses `instructions`.
    #[serde(default, borrow)]
    pub instructions: Option<&'a RawValue>,
    /// Messages `system`.
    #[serde(default, borrow)]
    pub system: Option<&'a RawValue>,
    /// Messages `metadata` (its `user_id` names Claude Code's session).
    #[serde(default, borrow)]
    pub metadata: Option<&'a RawValue>,
    /// `max_tokens`.
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// `max_completion_tokens`.
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    /// `max_output_tokens`.
    #[serde(default)]
    pub max_output_tokens: Option<u64>,
}

/// What the estimate reads of a chat message.
#[derive(Debug, Deserialize)]
pub struct Message<'a> {
    /// `content`.
    #[serde(default, borrow)]
    pub content: Option<&'a RawValue>,
    /// Whether it has a `name`.
    #[serde(default)]
    pub name: Option<serde::de::IgnoredAny>,
    /// `tool_calls`.
    #[serde(default, borrow)]
    pub tool_calls: Option<&'a RawValue>,
}

impl Fields<'_> {
    /// The model the client asked for; an error when `model` is not a string.
    pub fn model_name(&self) -> Result<Option<String>, serde_json::Error> {
        self.model
            .map(|raw| serde_json::from_str::<String>(raw.get()))
            .transpose()
    }
}
