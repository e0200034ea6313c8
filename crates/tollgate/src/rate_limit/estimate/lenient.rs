//! The second reading of a body the estimate's shape refused: a member named twice (serde
//! refuses a duplicate field; an upstream takes one of them), an allowance written as a float
//! (`100.5`, `1e3`) or a string, a field of another type. Without it such a body was charged
//! its bytes and no completion allowance at all.
//!
//! Every top-level member is read on its own, duplicates included: the prompt counts each
//! message list, input and tools it finds (and at least the body's bytes), the allowance is
//! the largest one any allowance field names, read leniently (a float rounded up), else the
//! default. So the charge is at least that of any well-formed body the upstream could take
//! this one to be. Only bodies the strict shape refuses come here.

use super::{content_tokens, generates, input_tokens, text_tokens};
use crate::endpoint::Endpoint;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Every member of a JSON object, in order, duplicates kept, values not read.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, &'de RawValue>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(MembersVisitor)
    }
}

fn members(json: &[u8]) -> Option<Vec<(String, &RawValue)>> {
    serde_json::from_slice::<Members<'_>>(json)
        .ok()
        .map(|m| m.0)
}

/// The completion allowance fields.
const ALLOWANCES: [&str; 3] = ["max_completion_tokens", "max_tokens", "max_output_tokens"];

/// (prompt estimate, completion allowance) of a body the strict shape refused.
pub(super) fn estimate(body: &[u8], endpoint: Endpoint, default_max_tokens: u32) -> (u64, u64) {
    let bytes = text_tokens(body.len());
    let default = if generates(endpoint) {
        u64::from(default_max_tokens)
    } else {
        0
    };
    let Some(members) = members(body) else {
        // Not a JSON object: its bytes, and the default allowance where an answer is written.
        return (bytes, default);
    };
    let priming = match endpoint {
        Endpoint::ChatCompletions
        | Endpoint::Responses
        | Endpoint::Messages
        | Endpoint::CountTokens => 3,
        _ => 0,
    };
    let prompt = members
        .iter()
        .map(|(name, value)| member_tokens(endpoint, name, value))
        .fold(priming, u64::saturating_add);
    let completion = if generates(endpoint) {
        allowance(&members).map_or(default, |(_, value)| value)
    } else {
        0
    };
    (prompt.max(bytes), completion)
}

/// The largest allowance named anywhere in `body`, and its field (for the refusal of one the
/// buckets cannot count).
pub(super) fn allowance_in(body: &[u8]) -> Option<(&'static str, u64)> {
    allowance(&members(body)?)
}

fn allowance(members: &[(String, &RawValue)]) -> Option<(&'static str, u64)> {
    members
        .iter()
        .filter_map(|(name, value)| {
            let param = ALLOWANCES.into_iter().find(|p| p == name)?;
            Some((param, count(value)?))
        })
        .max_by_key(|(_, value)| *value)
}

/// A count as a lenient reader takes it: an integer, a float rounded up (saturating), or a
/// string holding either. Negative numbers and anything else are not counts.
fn count(raw: &RawValue) -> Option<u64> {
    let text = raw.get();
    let text = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text)
        .trim();
    if let Ok(n) = text.parse::<u64>() {
        return Some(n);
    }
    let f = text
        .parse::<f64>()
        .ok()
        .filter(|f| f.is_finite() && *f >= 0.0)?;
    // `as` saturates: 1e300 is u64::MAX, which the caller refuses as uncountable.
    Some(f.ceil() as u64)
}

/// Tokens of one top-level member, as the strict reading counts that field for the endpoint.
fn member_tokens(endpoint: Endpoint, name: &str, value: &RawValue) -> u64 {
    match (endpoint, name) {
        (Endpoint::ChatCompletions, "messages") => messages_tokens(value),
        (Endpoint::ChatCompletions, "tools") | (Endpoint::Responses, "tools" | "instructions") => {
            text_tokens(value.get().len())
        }
        (Endpoint::Responses, "input") => input_tokens(value.get()),
        (Endpoint::Messages | Endpoint::CountTokens, "messages" | "system" | "tools") => {
            super::block_tokens(value.get()).max(text_tokens(value.get().len()))
        }
        _ => 0,
    }
}

/// Tokens of a chat `messages` list: each message by its members; anything else by its bytes.
fn messages_tokens(raw: &RawValue) -> u64 {
    let Ok(messages) = serde_json::from_str::<Vec<&RawValue>>(raw.get()) else {
        return text_tokens(raw.get().len());
    };
    messages.iter().map(|m| message_tokens(m)).sum()
}

/// Tokens of one chat message: 3, each `content`, 1 per `name`, each `tool_calls` by its size.
fn message_tokens(raw: &RawValue) -> u64 {
    let Some(members) = members(raw.get().as_bytes()) else {
        return text_tokens(raw.get().len());
    };
    members
        .iter()
        .map(|(name, value)| match name.as_str() {
            "content" => content_tokens(value.get()),
            "name" => 1,
            "tool_calls" => text_tokens(value.get().len()),
            _ => 0,
        })
        .fold(3, u64::saturating_add)
}

/// Tokens of a Responses input item the strict shape refused: 3 and each `content` when it
/// has one, else its bytes.
pub(super) fn item_tokens(raw: &RawValue) -> u64 {
    let contents: Vec<u64> = members(raw.get().as_bytes())
        .unwrap_or_default()
        .iter()
        .filter(|(name, _)| name == "content")
        .map(|(_, value)| content_tokens(value.get()))
        .collect();
    if contents.is_empty() {
        return text_tokens(raw.get().len());
    }
    contents.into_iter().fold(3, u64::saturating_add)
}

#[cfg(test)]
mod tests {
    use super::super::{estimate as charge, total, Uncountable};
    use super::*;
    use crate::body::Fields as Body;

    fn strict(body: &str) -> bool {
        serde_json::from_str::<Body<'_>>(body).is_ok()
    }

    const IMAGE: &str = r#"{"type":"image_url","image_url":{"url":"https://x/y.png"}}"#;

    #[test]
    fn each_dodge_is_charged_at_least_its_well_formed_twin() {
        let m = r#"{"role":"user","content":"hello there, how are you"}"#;
        let images = format!(r#"{{"role":"user","content":[{IMAGE},{IMAGE},{IMAGE}]}}"#);
        let item = format!(r#"{{"type":"message","role":"user","content":[{IMAGE},{IMAGE}]}}"#);
        let chat = Endpoint::ChatCompletions;
        let responses = Endpoint::Responses;
        let cases = [
            // (what, endpoint, dodge, its well-formed twin)
            (
                "a float allowance",
                chat,
                format!(r#"{{"messages":[{m}],"max_tokens":100.5}}"#),
                format!(r#"{{"messages":[{m}],"max_tokens":101}}"#),
            ),
            (
                "an exponent allowance",
                chat,
                format!(r#"{{"messages":[{m}],"max_tokens":1e3}}"#),
                format!(r#"{{"messages":[{m}],"max_tokens":1000}}"#),
            ),
            (
                "a string allowance",
                chat,
                format!(r#"{{"messages":[{m}],"max_completion_tokens":"500"}}"#),
                format!(r#"{{"messages":[{m}],"max_completion_tokens":500}}"#),
            ),
            (
                "a float output allowance",
                responses,
                r#"{"input":"hi","max_output_tokens":100.5}"#.to_owned(),
                r#"{"input":"hi","max_output_tokens":101}"#.to_owned(),
            ),
            (
                "a float completions allowance",
                Endpoint::Completions,
                r#"{"prompt":"hi","max_tokens":2.5e3}"#.to_owned(),
                r#"{"prompt":"hi","max_tokens":2500}"#.to_owned(),
            ),
            (
                "messages named twice, the real ones last",
                chat,
                format!(r#"{{"messages":[],"messages":[{images}],"max_tokens":9}}"#),
                format!(r#"{{"messages":[{images}],"max_tokens":9}}"#),
            ),
            (
                "messages named twice, the real ones first",
                chat,
                format!(r#"{{"messages":[{images}],"messages":[],"max_tokens":9}}"#),
                format!(r#"{{"messages":[{images}],"max_tokens":9}}"#),
            ),
            (
                "an allowance named twice, the large one last",
                chat,
                format!(r#"{{"messages":[{m}],"max_tokens":1,"max_tokens":4000}}"#),
                format!(r#"{{"messages":[{m}],"max_tokens":4000}}"#),
            ),
            (
                "an allowance named twice, the large one first",
                chat,
                format!(r#"{{"messages":[{m}],"max_tokens":4000,"max_tokens":1}}"#),
                format!(r#"{{"messages":[{m}],"max_tokens":4000}}"#),
            ),
            (
                "a content named twice in a message",
                chat,
                format!(
                    r#"{{"messages":[{{"role":"user","content":"","content":[{IMAGE},{IMAGE},{IMAGE}]}}]}}"#
                ),
                format!(r#"{{"messages":[{images}]}}"#),
            ),
            (
                "an input named twice",
                responses,
                format!(r#"{{"input":"x","input":[{item}],"max_output_tokens":50}}"#),
                format!(r#"{{"input":[{item}],"max_output_tokens":50}}"#),
            ),
            (
                "a messages list of another type next to the allowance",
                chat,
                r#"{"messages":"hi","max_tokens":700}"#.to_owned(),
                r#"{"messages":[],"max_tokens":700}"#.to_owned(),
            ),
        ];
        for (what, endpoint, dodge, twin) in cases {
            assert!(!strict(&dodge), "{what}: the strict shape reads it");
            assert!(strict(&twin), "{what}: the twin is not well formed");
            let (d, t) = (
                charge(dodge.as_bytes(), endpoint, 1024),
                charge(twin.as_bytes(), endpoint, 1024),
            );
            assert!(
                d.0 >= t.0 && d.1 >= t.1,
                "{what}: {d:?} for the dodge, {t:?} for {twin}"
            );
        }
        // A content named twice inside a Responses item passes the strict shape at the top;
        // the item is still read for both.
        let doubled = r#"{"type":"message","role":"user","content":"","content":[IMAGE,IMAGE]}"#
            .replace("IMAGE", IMAGE);
        let (d, t) = (
            charge(
                format!(r#"{{"input":[{doubled}]}}"#).as_bytes(),
                responses,
                0,
            ),
            charge(format!(r#"{{"input":[{item}]}}"#).as_bytes(), responses, 0),
        );
        assert!(d.0 >= t.0 && t.0 >= 2 * 765, "{d:?} {t:?}");
    }

    #[test]
    fn allowances_are_read_as_a_lenient_reader_takes_them() {
        let read = |json: &str| count(&serde_json::from_str::<Box<RawValue>>(json).unwrap());
        assert_eq!(read("100"), Some(100));
        assert_eq!(read("100.5"), Some(101));
        assert_eq!(read("100.0"), Some(100));
        assert_eq!(read("1e3"), Some(1000));
        assert_eq!(read(r#"" 42 ""#), Some(42));
        assert_eq!(read("1e300"), Some(u64::MAX));
        for none in ["-1", "-0.5", r#""ten""#, r#""inf""#, "null", "[]", "{}"] {
            assert_eq!(read(none), None, "{none}");
        }
        // Past what the buckets count: refused, naming the field, as a well-formed one is.
        let body = br#"{"messages":[],"max_tokens":1,"max_output_tokens":1e300}"#;
        assert_eq!(
            total(body, Endpoint::ChatCompletions, 7),
            Err(Uncountable {
                param: "max_output_tokens",
                value: u64::MAX
            })
        );
    }

    #[test]
    fn a_body_that_is_not_an_object_is_charged_its_bytes_and_the_default() {
        for body in [
            &b"[1,2,3]"[..],
            b"\"text\"",
            b"{\"messages\": [",
            b"\xff\xfe",
        ] {
            let bytes = text_tokens(body.len());
            assert_eq!(charge(body, Endpoint::ChatCompletions, 64), (bytes, 64));
            assert_eq!(charge(body, Endpoint::Embeddings, 64), (bytes, 0));
        }
    }
}
