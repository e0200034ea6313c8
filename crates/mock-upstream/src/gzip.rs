//! `content-encoding: gzip` for any answer: each body piece is compressed and sync-flushed as it
//! goes out, so a streamed answer stays decodable event by event (as from a server that
//! compresses SSE with flushes); the gzip trailer follows the last piece. A body that breaks
//! keeps its break and gets no trailer.

use std::io::{self, Write};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use futures_util::stream::{self, StreamExt};
use http::header::{HeaderValue, CONTENT_ENCODING, CONTENT_LENGTH};

/// `response` with its body gzip-compressed and `content-encoding: gzip`.
pub(crate) fn compress(response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    parts
        .headers
        .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    parts.headers.remove(CONTENT_LENGTH);
    let encoder = GzEncoder::new(Vec::new(), Compression::fast());
    let state = (body.into_data_stream(), Some(encoder));
    let pieces = stream::unfold(state, |(mut inner, encoder)| async move {
        let mut encoder = encoder?;
        match inner.next().await {
            Some(Ok(piece)) => {
                let out = encoder
                    .write_all(&piece)
                    .and_then(|()| encoder.flush())
                    .map(|()| Bytes::from(std::mem::take(encoder.get_mut())));
                Some((out, (inner, Some(encoder))))
            }
            Some(Err(err)) => Some((Err(io::Error::other(err)), (inner, None))),
            None => Some((encoder.finish().map(Bytes::from), (inner, None))),
        }
    });
    Response::from_parts(parts, Body::from_stream(pieces))
}
