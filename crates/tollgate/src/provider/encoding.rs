//! Answers compressed though the gateway asked for `identity`: decoded where the gateway must
//! read them (error bodies, translated answers, usage, a stream's events), so that what reaches
//! the client is plain and every client can read it. gzip and deflate are decoded; any other
//! encoding passes through untouched.

use crate::upstream::{BodyStream, UpstreamError};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, HeaderMap};
use std::io::Write;

/// Whether an answer's body is compressed (any `content-encoding` but `identity`).
pub(super) fn is_encoded(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
}

/// The encodings the gateway can decode.
#[derive(Clone, Copy)]
enum Coding {
    Gzip,
    Deflate,
}

fn coding(headers: &HeaderMap) -> Option<Coding> {
    let v = headers.get(header::CONTENT_ENCODING)?.to_str().ok()?;
    match v.trim().to_ascii_lowercase().as_str() {
        "gzip" | "x-gzip" => Some(Coding::Gzip),
        "deflate" => Some(Coding::Deflate),
        _ => None,
    }
}

/// The headers of a decoded body: no encoding, no length (the length was the compressed one).
fn mark_decoded(headers: &mut HeaderMap) {
    headers.remove(header::CONTENT_ENCODING);
    headers.remove(header::CONTENT_LENGTH);
}

/// A body read whole, decoded when gzip or deflate (up to `limit` decoded bytes); the headers
/// then describe the decoded body. A body that does not decode is returned as it came.
pub(super) fn decoded(headers: &mut HeaderMap, body: Bytes, limit: usize) -> Bytes {
    use std::io::Read;
    let mut out = Vec::new();
    let read = match coding(headers) {
        Some(Coding::Gzip) => flate2::read::MultiGzDecoder::new(&body[..])
            .take(limit as u64)
            .read_to_end(&mut out),
        Some(Coding::Deflate) => flate2::read::ZlibDecoder::new(&body[..])
            .take(limit as u64)
            .read_to_end(&mut out),
        None => return body,
    };
    match read {
        Ok(_) => {
            mark_decoded(headers);
            Bytes::from(out)
        }
        Err(_) => body,
    }
}

/// One incremental decoder: compressed chunks in, whatever they decode to out.
enum Decoder {
    Gzip(flate2::write::MultiGzDecoder<Vec<u8>>),
    Deflate(flate2::write::ZlibDecoder<Vec<u8>>),
}

impl Write for Decoder {
    fn write(&mut self, input: &[u8]) -> std::io::Result<usize> {
        match self {
            Decoder::Gzip(d) => d.write(input),
            Decoder::Deflate(d) => d.write(input),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Decoder::Gzip(d) => d.flush(),
            Decoder::Deflate(d) => d.flush(),
        }
    }
}

impl Decoder {
    /// What was decoded and not yet taken.
    fn out(&mut self) -> &mut Vec<u8> {
        match self {
            Decoder::Gzip(d) => d.get_mut(),
            Decoder::Deflate(d) => d.get_mut(),
        }
    }

    /// Decodes one chunk. Fails as soon as it decodes to more than `limit` bytes: a small
    /// chunk of a decompression bomb stops there, not when memory runs out (one `write`
    /// decodes at most flate2's 32 KiB buffer, so at most about that much past `limit` is
    /// ever held).
    fn feed(&mut self, chunk: &[u8], limit: usize) -> std::io::Result<Bytes> {
        let mut input = chunk;
        while !input.is_empty() {
            let n = self.write(input)?;
            if n == 0 {
                // The compressed stream ended and bytes follow it (what `write_all` reports).
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            input = &input[n..];
            self.within(limit)?;
        }
        self.flush()?;
        self.within(limit)?;
        Ok(Bytes::from(std::mem::take(self.out())))
    }

    fn within(&mut self, limit: usize) -> std::io::Result<()> {
        if self.out().len() > limit {
            return Err(std::io::Error::other(format!(
                "one chunk decodes to more than {limit} bytes"
            )));
        }
        Ok(())
    }
}

/// A streamed body decoded chunk by chunk as it arrives (gzip or deflate); any other body is
/// returned as it is. A chunk that does not decode, or decodes to more than `limit` bytes (the
/// server's `max_event`), ends the stream with a transport error.
pub(super) fn decode_stream(headers: &mut HeaderMap, body: BodyStream, limit: usize) -> BodyStream {
    let mut decoder = match coding(headers) {
        Some(Coding::Gzip) => Decoder::Gzip(flate2::write::MultiGzDecoder::new(Vec::new())),
        Some(Coding::Deflate) => Decoder::Deflate(flate2::write::ZlibDecoder::new(Vec::new())),
        None => return body,
    };
    mark_decoded(headers);
    // The first error is the stream's last item: the decoder is of no use after it.
    let mut failed = false;
    Box::pin(body.scan((), move |(), chunk| {
        if failed {
            return std::future::ready(None);
        }
        let decoded = chunk.and_then(|chunk| {
            decoder.feed(&chunk, limit).map_err(|e| {
                UpstreamError::Transport(format!("undecodable compressed answer: {e}"))
            })
        });
        failed = decoded.is_err();
        std::future::ready(Some(decoded))
    }))
}

/// A failure event of a stream in OpenAI's error envelope: a Responses `response.failed` event
/// (`response.error`) or `error` event (`code`, `message` at the top level) becomes
/// `{"error":{"message","type","param","code"}}`; anything else (a chat error chunk, Anthropic's
/// `error` event) is returned as it is.
pub(super) fn stream_error_envelope(json: Bytes) -> Bytes {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&json) else {
        return json;
    };
    if !value["error"].is_null() {
        return json;
    }
    let err = match &value["response"]["error"] {
        serde_json::Value::Null => &value,
        err => err,
    };
    let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
    let Some(message) = text(&err["message"]) else {
        return json;
    };
    let code = text(&err["code"]);
    let kind = match code.as_deref() {
        Some("rate_limit_exceeded") => "requests",
        Some("insufficient_quota") => "insufficient_quota",
        _ => "server_error",
    };
    Bytes::from(openai_types::ErrorEnvelope::new(message, kind, None, code.as_deref()).to_json())
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    fn gzip_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_ENCODING, "gzip".parse().unwrap());
        headers.insert(header::CONTENT_LENGTH, "10".parse().unwrap());
        headers
    }

    #[test]
    fn a_gzipped_error_body_is_read_decoded() {
        let json = br#"{"error":{"code":"insufficient_quota"}}"#;
        let mut headers = gzip_headers();
        let body = decoded(&mut headers, Bytes::from(gzip(json)), 1 << 20);
        assert_eq!(&body[..], json);
        assert!(headers.get(header::CONTENT_ENCODING).is_none());
        assert!(headers.get(header::CONTENT_LENGTH).is_none());
        let mut plain = HeaderMap::new();
        let same = decoded(&mut plain, Bytes::from_static(b"abc"), 10);
        assert_eq!(&same[..], b"abc");
        assert!(!is_encoded(&plain));
        plain.insert(header::CONTENT_ENCODING, "identity".parse().unwrap());
        assert!(!is_encoded(&plain));
    }

    #[tokio::test]
    async fn a_gzipped_stream_is_decoded_chunk_by_chunk() {
        let events = b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n";
        let compressed = gzip(events);
        // Split the compressed bytes into three chunks, at arbitrary places.
        let (a, rest) = compressed.split_at(7);
        let (b, c) = rest.split_at(rest.len() / 2);
        let chunks: Vec<Result<Bytes, UpstreamError>> = [a, b, c]
            .iter()
            .map(|p| Ok(Bytes::copy_from_slice(p)))
            .collect();
        let mut headers = gzip_headers();
        let body = decode_stream(
            &mut headers,
            Box::pin(futures_util::stream::iter(chunks)),
            1 << 20,
        );
        let out: Vec<u8> = body
            .map(|c| c.unwrap().to_vec())
            .collect::<Vec<_>>()
            .await
            .concat();
        assert_eq!(out, events);
        assert!(headers.get(header::CONTENT_ENCODING).is_none());
    }

    #[test]
    fn a_responses_failure_event_becomes_an_openai_error() {
        let failed = Bytes::from_static(br#"{"type":"response.failed","sequence_number":2,"response":{"status":"failed","error":{"code":"rate_limit_exceeded","message":"Please try again in 1.5s."}}}"#);
        let v: serde_json::Value = serde_json::from_slice(&stream_error_envelope(failed)).unwrap();
        assert_eq!(v["error"]["code"], "rate_limit_exceeded");
        assert_eq!(v["error"]["message"], "Please try again in 1.5s.");
        let event = Bytes::from_static(
            br#"{"type":"error","code":"server_error","message":"boom","sequence_number":1}"#,
        );
        let v: serde_json::Value = serde_json::from_slice(&stream_error_envelope(event)).unwrap();
        assert_eq!(
            (v["error"]["type"].as_str(), v["error"]["message"].as_str()),
            (Some("server_error"), Some("boom"))
        );
        let chat = Bytes::from_static(br#"{"error":{"message":"x","type":"server_error"}}"#);
        assert_eq!(stream_error_envelope(chat.clone()), chat);
    }

    #[tokio::test]
    async fn garbage_labelled_gzip_ends_with_an_error() {
        let mut headers = gzip_headers();
        let chunks = vec![Ok(Bytes::from_static(b"not gzip at all"))];
        let mut body = decode_stream(
            &mut headers,
            Box::pin(futures_util::stream::iter(chunks)),
            1 << 20,
        );
        assert!(body.next().await.unwrap().is_err());
    }

    #[tokio::test]
    async fn a_small_chunk_that_expands_past_the_limit_ends_the_stream() {
        let limit = 1 << 20;
        // 8 MiB of zeros compress to about 8 KiB; sent in one chunk (gzip) or two (deflate).
        let zeros = vec![0u8; 8 << 20];
        let mut deflate = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        deflate.write_all(&zeros).unwrap();
        let deflate = deflate.finish().unwrap();
        let gzipped = gzip(&zeros);
        assert!(gzipped.len() < 16 << 10 && deflate.len() < 16 << 10);
        let (first, second) = deflate.split_at(deflate.len() / 2);
        for (coding, chunks) in [
            ("gzip", vec![Bytes::from(gzipped)]),
            (
                "deflate",
                vec![
                    Bytes::copy_from_slice(first),
                    Bytes::copy_from_slice(second),
                ],
            ),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_ENCODING, coding.parse().unwrap());
            let chunks: Vec<Result<Bytes, UpstreamError>> = chunks.into_iter().map(Ok).collect();
            let body = decode_stream(
                &mut headers,
                Box::pin(futures_util::stream::iter(chunks)),
                limit,
            );
            let items = body.collect::<Vec<_>>().await;
            // The first chunk already passes the limit: an error, nothing decoded handed on,
            // and the stream ends there.
            assert_eq!(items.len(), 1, "{coding}");
            let Err(UpstreamError::Transport(message)) = &items[0] else {
                panic!("{coding}: {:?}", items[0].as_ref().map(Bytes::len));
            };
            assert!(
                message.contains("decodes to more than 1048576 bytes"),
                "{coding}: {message}"
            );
        }
        // The decoder stopped near the limit, not after inflating all 8 MiB.
        let mut decoder = Decoder::Gzip(flate2::write::MultiGzDecoder::new(Vec::new()));
        assert!(decoder.feed(&gzip(&zeros), limit).is_err());
        let held = decoder.out().len();
        assert!((limit..limit + (64 << 10)).contains(&held), "{held}");
        // Under the limit the same bytes decode whole, chunk after chunk.
        let mut headers = gzip_headers();
        let small = gzip(&zeros[..limit / 2]);
        let (a, b) = small.split_at(small.len() / 2);
        let chunks = vec![Ok(Bytes::copy_from_slice(a)), Ok(Bytes::copy_from_slice(b))];
        let body = decode_stream(
            &mut headers,
            Box::pin(futures_util::stream::iter(chunks)),
            limit,
        );
        let out: usize = body
            .map(|c| c.unwrap().len())
            .collect::<Vec<_>>()
            .await
            .iter()
            .sum();
        assert_eq!(out, limit / 2);
    }
}
