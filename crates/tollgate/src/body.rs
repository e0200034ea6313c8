//! A request body read once: the fields the gateway routes on and the ones the token estimate
//! counts, in one pass over the bytes, without building a tree (string values, content parts
//! and tools are borrowed as raw JSON, never copied). The estimate's count is made from the same
//! reading ([`crate::rate_limit::estimate::count`]) and travels with the request
//! (`GatewayRequest::counted`).
//!
//! A body this shape refuses (a member named twice, a field of another type) is read again by
//! the narrower readers: the routing fields alone (`openai_types::RequestMeta`) and the
//! estimate's lenient reading; so this shape changes what is accepted in no case.
//!
//! [`read`] takes the fields with `skim` (one pass that checks the JSON and scans strings
//! sixteen bytes a turn) and leaves to serde_json every body the skim is not sure of; serde_json's
//! reading and verdict are the ones given either way.

mod skim;

pub(crate) use skim::input_tokens as skim_input_tokens;

use openai_types::StreamOptions;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

/// A JSON value as the text it is in the body (a string keeps its quotes), borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raw<'a>(&'a str);

impl<'a> Raw<'a> {
    /// The value's JSON text.
    pub fn get(self) -> &'a str {
        self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Raw<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        <&'de RawValue>::deserialize(deserializer).map(|raw| Raw(raw.get()))
    }
}

/// The fields of a request body the gateway reads; everything else is skipped unread.
#[derive(Debug, Default, PartialEq, Deserialize)]
pub struct Fields<'a> {
    /// `model`, as its JSON value (where it is in the body, for a rename spliced in place).
    #[serde(borrow, default)]
    pub model: Option<Raw<'a>>,
    /// `stream`.
    #[serde(default)]
    pub stream: Option<bool>,
    /// `stream_options`.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// `prompt_cache_key`, as sent.
    #[serde(borrow, default)]
    pub prompt_cache_key: Option<Raw<'a>>,
    /// `user`, as sent.
    #[serde(borrow, default)]
    pub user: Option<Raw<'a>>,
    /// `previous_response_id`, as sent.
    #[serde(borrow, default)]
    pub previous_response_id: Option<Raw<'a>>,
    /// `store`, as sent.
    #[serde(borrow, default)]
    pub store: Option<Raw<'a>>,
    /// Chat `messages`.
    #[serde(default, borrow)]
    pub messages: Vec<Message<'a>>,
    /// `tools`.
    #[serde(default, borrow)]
    pub tools: Option<Raw<'a>>,
    /// Legacy completions' `prompt`.
    #[serde(default, borrow)]
    pub prompt: Option<Raw<'a>>,
    /// Responses and embeddings `input`.
    #[serde(default, borrow)]
    pub input: Option<Raw<'a>>,
    /// Responses `instructions`.
    #[serde(default, borrow)]
    pub instructions: Option<Raw<'a>>,
    /// Messages `system`.
    #[serde(default, borrow)]
    pub system: Option<Raw<'a>>,
    /// Messages `metadata` (its `user_id` names Claude Code's session).
    #[serde(default, borrow)]
    pub metadata: Option<Raw<'a>>,
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
#[derive(Debug, PartialEq, Deserialize)]
pub struct Message<'a> {
    /// `content`.
    #[serde(default, borrow)]
    pub content: Option<Raw<'a>>,
    /// Whether it has a `name`.
    #[serde(default)]
    pub name: Option<serde::de::IgnoredAny>,
    /// `tool_calls`.
    #[serde(default, borrow)]
    pub tool_calls: Option<Raw<'a>>,
}

/// A body's one reading: its [`Fields`], whether an object in it, at any depth, has a member
/// named in the `watch` list it was read with (`None`: not known), and the counts made on the
/// way.
#[derive(Debug)]
pub struct Reading<'a> {
    /// The fields.
    pub fields: Fields<'a>,
    /// A watched name is a member's name somewhere in the body.
    pub names: Option<bool>,
    /// What the reading counted, when it was asked to ([`Tally`]).
    pub counts: Counts,
}

/// What a reading counts while it checks the body, by the estimate's bytes-to-tokens rule: the
/// parts the estimate would otherwise read a second time, into values (a coding agent's
/// history, content arrays).
#[derive(Debug, Clone, Copy)]
pub enum Tally {
    /// Chat `messages`' contents: a string by its JSON's bytes, an array part by part.
    ChatContents(fn(usize) -> u64),
    /// A Responses `input` array, item by item.
    ResponsesInput(fn(usize) -> u64),
    /// Messages' (Anthropic's) `content`s, `system` and `tools`: a string by its JSON's bytes,
    /// an array block by block.
    MessagesBlocks(fn(usize) -> u64),
}

/// The counts a reading made (`None`: not made, or not sure; the estimate then counts the
/// field itself).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// The sum of every message's `content` count.
    pub contents: Option<u64>,
    /// The Responses `input` array's count.
    pub input: Option<u64>,
    /// The Messages `system`'s count.
    pub system: Option<u64>,
    /// The Messages `tools`' count.
    pub tools: Option<u64>,
}

/// Reads `body` (`skim` first; serde_json where the skim leaves a body to it, and then its
/// verdict is the one given), noting whether an object in it has a member named in `watch`,
/// and making the counts `tally` asks for on the way (the count a 40 KB Codex turn needs,
/// without a second pass over it).
pub fn read<'a>(
    body: &'a [u8],
    watch: &[&str],
    tally: Option<Tally>,
) -> Result<Reading<'a>, serde_json::Error> {
    match skim::read(body, watch, tally) {
        Some((fields, names, counts)) => Ok(Reading {
            fields,
            names: Some(names),
            counts,
        }),
        None => serde_json::from_slice(body).map(|fields| Reading {
            fields,
            names: None,
            counts: Counts::default(),
        }),
    }
}

/// The usage object at the start of `text` as serde_json would read it, when the skim is sure
/// of it (`None`: ask serde_json).
pub fn usage(text: &[u8]) -> Option<openai_types::Usage> {
    skim::usage(text)
}

pub(crate) use skim::EventUsage;

/// What a stream event's JSON says of usage (see [`EventUsage`]), when the skim is sure of it
/// (`None`: ask serde_json).
pub(crate) fn event_usage(text: &[u8]) -> Option<EventUsage> {
    skim::event_usage(text)
}

impl<'a> Fields<'a> {
    /// Reads `body` (as [`read`] does).
    pub fn read(body: &'a [u8]) -> Result<Self, serde_json::Error> {
        read(body, &[], None).map(|r| r.fields)
    }

    /// The model the client asked for; an error when `model` is not a string.
    pub fn model_name(&self) -> Result<Option<String>, serde_json::Error> {
        self.model
            .map(|raw| serde_json::from_str::<String>(raw.get()))
            .transpose()
    }
}
