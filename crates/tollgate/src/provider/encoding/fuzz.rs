//! Property tests over hostile upstream bodies (issue 21's fuzz targets for the Responses
//! stream's error event and for compressed answers): any error event becomes OpenAI's
//! envelope or stays as it was, and any compressed body, cut anywhere, decodes to what was
//! compressed or ends in an error; never a panic.

use super::*;
use crate::sse::fuzz::{chunked, config, cuts};
use futures_util::FutureExt;
use proptest::prelude::*;
use serde_json::{json, Value};

/// Strings a failure event carries, and some it should not.
fn text() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "rate_limit_exceeded",
            "insufficient_quota",
            "server_error",
            "Please try again in 1.5s.",
            "",
            "\"\\\n\u{0}",
        ])
        .prop_map(Value::from),
        1 => "\\PC{0,16}".prop_map(Value::from),
        1 => prop_oneof![
            Just(Value::Null),
            Just(json!(429)),
            Just(json!(1.5)),
            Just(json!(["m"])),
            Just(json!({"message": "m"})),
            Just(json!(true)),
        ],
    ]
}

/// A failure event's data as the Responses API, a chat stream or a broken upstream sends it.
fn failure_event() -> impl Strategy<Value = Vec<u8>> {
    let error = (text(), text(), any::<bool>()).prop_map(|(code, message, with_code)| {
        let mut error = json!({ "message": message });
        if with_code {
            error["code"] = code;
        }
        error
    });
    let shaped = (error, 0..5u8, text()).prop_map(|(error, shape, other)| {
        let v = match shape {
            0 => {
                json!({"type": "response.failed", "response": {"status": "failed", "error": error}})
            }
            1 => {
                let mut v = error;
                v["type"] = json!("error");
                v
            }
            2 => json!({"error": error}),
            3 => json!({"response": other, "message": error["message"]}),
            _ => json!({"error": other, "response": {"error": error}}),
        };
        v.to_string().into_bytes()
    });
    prop_oneof![
        4 => shaped,
        1 => prop::collection::vec(any::<u8>(), 0..64),
        1 => "\\PC{0,64}".prop_map(String::into_bytes),
    ]
}

fn compress(coding: &str, data: &[u8]) -> Vec<u8> {
    use flate2::Compression;
    match coding {
        "deflate" => {
            let mut z = flate2::write::ZlibEncoder::new(Vec::new(), Compression::fast());
            z.write_all(data).unwrap();
            z.finish().unwrap()
        }
        _ => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), Compression::fast());
            gz.write_all(data).unwrap();
            gz.finish().unwrap()
        }
    }
}

/// A body labelled with an encoding: compressed data (whole, twice over for gzip's members,
/// cut short, or with bytes flipped) or any bytes at all.
#[derive(Debug, Clone)]
struct Encoded {
    coding: &'static str,
    data: Vec<u8>,
    body: Vec<u8>,
    /// `body` is `data` compressed, intact.
    intact: bool,
}

fn encoded() -> impl Strategy<Value = Encoded> {
    let coding = prop::sample::select(vec![
        "gzip", "x-gzip", " GZIP ", "deflate", "br", "identity",
    ]);
    let data = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        (any::<u8>(), 0usize..20_000).prop_map(|(b, n)| vec![b; n]),
    ];
    (
        coding,
        data,
        0..4u8,
        any::<prop::sample::Index>(),
        any::<u8>(),
    )
        .prop_map(|(coding, data, damage, at, flip)| {
            let mut body = compress(coding.trim().to_ascii_lowercase().as_str(), &data);
            let mut intact = true;
            match damage {
                0 => {}
                1 if coding.contains("zip") => {
                    // A second gzip member: decoders read both.
                    body.extend_from_slice(&compress("gzip", &data));
                    intact = false;
                }
                2 if !body.is_empty() => {
                    body.truncate(at.index(body.len()));
                    intact = false;
                }
                _ => {
                    let i = at
                        .index(body.len().max(1))
                        .min(body.len().saturating_sub(1));
                    if let Some(b) = body.get_mut(i) {
                        *b ^= flip.max(1);
                    }
                    intact = false;
                }
            }
            Encoded {
                coding,
                data,
                body,
                intact,
            }
        })
}

fn headers(coding: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_ENCODING, coding.parse().unwrap());
    headers.insert(header::CONTENT_LENGTH, "10".parse().unwrap());
    headers
}

fn decodes(coding: &str) -> bool {
    matches!(
        coding.trim().to_ascii_lowercase().as_str(),
        "gzip" | "x-gzip" | "deflate"
    )
}

proptest! {
    #![proptest_config(config(1024))]

    /// A failure event becomes OpenAI's envelope keeping its message and code, or stays as it
    /// came (a chat error chunk, anything that is not a failure).
    #[test]
    fn any_failure_event_becomes_an_envelope_or_stays(data in failure_event()) {
        let out = stream_error_envelope(Bytes::from(data.clone()));
        if out[..] == data[..] {
            return Ok(());
        }
        let v: Value = serde_json::from_slice(&out).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let error = &v["error"];
        prop_assert!(error["message"].is_string());
        prop_assert!(["requests", "insufficient_quota", "server_error"]
            .contains(&error["type"].as_str().unwrap_or_default()));
        prop_assert!(error["code"].is_null() || error["code"].is_string());
        let input: Value = serde_json::from_slice(&data).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let source = match &input["response"]["error"] {
            Value::Null => &input,
            err => err,
        };
        prop_assert_eq!(&error["message"], &source["message"]);
        prop_assert_eq!(error["code"].as_str(), source["code"].as_str());
    }

    /// A whole body decodes to what was compressed (at most `limit` bytes of it, the headers
    /// then saying it is plain), or comes back as it was; never a panic.
    #[test]
    fn any_encoded_body_decodes_or_stays(e in encoded(), limit in prop_oneof![Just(1usize << 20), 0usize..300]) {
        let mut h = headers(e.coding);
        let out = decoded(&mut h, Bytes::from(e.body.clone()), limit);
        let plain = h.get(header::CONTENT_ENCODING).is_none();
        prop_assert_eq!(plain, h.get(header::CONTENT_LENGTH).is_none());
        if plain {
            prop_assert!(decodes(e.coding) && out.len() <= limit);
            if e.intact {
                prop_assert_eq!(&out[..], &e.data[..e.data.len().min(limit)]);
            }
        } else {
            prop_assert_eq!(&out[..], &e.body[..]);
            prop_assert!(!(decodes(e.coding) && e.intact), "an intact body decodes");
        }
    }

    /// A compressed stream cut anywhere decodes to what was compressed; a damaged one decodes
    /// to something or fails; never a panic.
    #[test]
    fn any_encoded_stream_decodes_whatever_the_chunking(e in encoded(), cuts in cuts()) {
        let mut h = headers(e.coding);
        let chunks: Vec<Result<Bytes, UpstreamError>> =
            chunked(&e.body, &cuts).into_iter().map(Ok).collect();
        let body = decode_stream(&mut h, Box::pin(futures_util::stream::iter(chunks)), 1 << 20);
        let items = body.collect::<Vec<_>>().now_or_never().expect("ready");
        let mut out = Vec::new();
        let mut failed = false;
        for item in items {
            match item {
                Ok(chunk) => out.extend_from_slice(&chunk),
                Err(_) => failed = true,
            }
        }
        if !decodes(e.coding) {
            prop_assert!(!failed);
            prop_assert_eq!(out, e.body);
            prop_assert!(h.get(header::CONTENT_ENCODING).is_some());
            return Ok(());
        }
        prop_assert!(h.get(header::CONTENT_ENCODING).is_none());
        if e.intact {
            prop_assert!(!failed);
            prop_assert_eq!(out, e.data);
        }
    }
}
