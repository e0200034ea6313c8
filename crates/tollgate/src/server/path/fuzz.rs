//! Property test over hostile paths (issue 21's fuzz target for the path rules): a path the
//! gateway lets through stays a plain path under `/v1/` for a server that percent-decodes it
//! once and then normalizes it (Envoy's `normalize_path` and `merge_slashes`, nginx): no dot
//! segment, no empty segment, no slash, backslash or NUL that decoding brings in.

use super::*;
use crate::sse::fuzz::config;
use proptest::prelude::*;

/// Pieces of a path segment: the dots, slashes, backslashes and NULs of every spelling, and
/// plain text.
const PIECES: &[&str] = &[
    ".", "..", "%2e", "%2E", "%2e%2e", ".%2E", "%2f", "%2F", "%5c", "%5C", "\\", "%00", "\0", "%",
    "%2", "%25", "%252e", "%c0%ae", "a", "models", "gpt-4o", ":", ";", "~", "%20", "é",
];

fn segment() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(PIECES), 0..3).prop_map(|p| p.concat())
}

/// A path: `/v1/` (or something like it) and segments joined by `/`.
fn path() -> impl Strategy<Value = String> {
    let head = prop_oneof![
        8 => Just("/v1/"),
        1 => prop::sample::select(vec!["/v1", "/v2/", "v1/", "/V1/", "//v1/", "/v1//", ""]),
    ];
    (head, prop::collection::vec(segment(), 0..5))
        .prop_map(|(head, segments)| format!("{head}{}", segments.join("/")))
}

/// `%XX` decoded once, other bytes as they are.
fn decode_once(path: &str) -> Vec<u8> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
            Some(byte) if bytes[i] == b'%' => {
                out.push(byte);
                i += 3;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(config(4096))]

    /// A path let through decodes (once) to `/v1/` and plain segments, as many as it had.
    #[test]
    fn a_path_let_through_stays_plain_under_v1(path in path()) {
        if refusal(&path).is_some() {
            return Ok(());
        }
        let rest = path.strip_prefix("/v1/").expect("under /v1/");
        let decoded = decode_once(rest);
        let segments: Vec<&[u8]> = decoded.split(|&b| b == b'/').collect();
        prop_assert_eq!(segments.len(), rest.split('/').count(), "decoding adds no slash");
        for segment in segments {
            prop_assert!(!matches!(segment, b"" | b"." | b".."), "segment {:?}", segment);
            prop_assert!(!segment.contains(&b'\\') && !segment.contains(&0));
        }
    }
}
