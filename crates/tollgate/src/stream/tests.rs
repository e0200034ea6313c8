use super::*;
use futures_util::stream;
use std::sync::{Arc, Mutex};

fn body(chunks: &[&'static str]) -> BodyStream {
    let items: Vec<Result<Bytes, UpstreamError>> = chunks
        .iter()
        .map(|c| Ok(Bytes::from_static(c.as_bytes())))
        .collect();
    Box::pin(stream::iter(items))
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

#[tokio::test]
async fn first_data_event_keeps_every_byte_read() {
    let mut b = body(&[
        ": keep-alive\n\n",
        "data: {\"choices\"",
        ":[]}\n\ndata: [DONE]\n\n",
    ]);
    match peek_first_event(&mut b, far()).await.unwrap() {
        FirstEvent::Data(prefix) => assert_eq!(
            prefix,
            ": keep-alive\n\ndata: {\"choices\":[]}\n\ndata: [DONE]\n\n"
        ),
        other => panic!("{other:?}"),
    }
}

/// `text` in pieces of `size` bytes.
fn pieces(text: &str, size: usize) -> BodyStream {
    let items: Vec<Result<Bytes, UpstreamError>> = text
        .as_bytes()
        .chunks(size)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    Box::pin(stream::iter(items))
}

#[tokio::test]
async fn the_first_event_is_found_whatever_the_line_endings_and_chunking() {
    let data = "data: {\"choices\":[]}\n\n";
    let error = "event: error\ndata: {\"type\":\"error\"}\n\n";
    for (last, want_error) in [(data, false), (error, true)] {
        let text = format!(": keep-alive\n\nevent: ping\ndata: {{}}\n\n{last}data: [DONE]\n\n");
        for eol in ["\n", "\r\n", "\r"] {
            let text = text.replace('\n', eol);
            let last = last.replace('\n', eol);
            let end = text.find(&last).map(|at| at + last.len() - eol.len() + 1);
            for size in [1, 2, 3, 7, 64, usize::MAX] {
                match peek_first_event(&mut pieces(&text, size), far())
                    .await
                    .unwrap()
                {
                    FirstEvent::Data(prefix) if !want_error => {
                        assert!(text.as_bytes().starts_with(&prefix), "{size} {eol:?}");
                        assert!(Some(prefix.len()) >= end, "{size} {eol:?}: {prefix:?}");
                    }
                    FirstEvent::Error(json) if want_error => {
                        assert_eq!(json, "{\"type\":\"error\"}", "{size} {eol:?}");
                    }
                    other => panic!("{size} {eol:?}: {other:?}"),
                }
            }
        }
    }
}

#[tokio::test]
async fn openai_error_chunk_first_is_an_error() {
    let mut b =
        body(&["data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}\r\n\r\n"]);
    assert!(matches!(
        peek_first_event(&mut b, far()).await.unwrap(),
        FirstEvent::Error(_)
    ));
}

#[tokio::test]
async fn anthropic_error_event_after_ping_is_an_error() {
    let mut b = body(&[
        "event: ping\ndata: {\"type\":\"ping\"}\n\n",
        "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
    ]);
    match peek_first_event(&mut b, far()).await.unwrap() {
        FirstEvent::Error(json) => assert!(json.starts_with(b"{\"type\":\"error\"")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn content_mentioning_error_is_data() {
    let mut b = body(&["data: {\"choices\":[{\"delta\":{\"content\":\"\\\"error\\\"\"}}]}\n\n"]);
    assert!(matches!(
        peek_first_event(&mut b, far()).await.unwrap(),
        FirstEvent::Data(_)
    ));
}

#[tokio::test]
async fn empty_stream_ended() {
    let mut b = body(&[]);
    assert!(matches!(
        peek_first_event(&mut b, far()).await.unwrap(),
        FirstEvent::Ended
    ));
}

#[tokio::test(start_paused = true)]
async fn silence_before_the_first_event_times_out() {
    let mut b: BodyStream = Box::pin(stream::pending());
    let err = peek_first_event(&mut b, Instant::now() + Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Timeout(_)));
}

async fn collect_guarded(b: BodyStream, expect_done: bool) -> (String, StreamEnd) {
    let end = if expect_done {
        SseEnd::Done
    } else {
        SseEnd::Close
    };
    collect_framed(b, end).await
}

async fn collect_framed(b: BodyStream, sse_end: SseEnd) -> (String, StreamEnd) {
    let end = Arc::new(Mutex::new(None));
    let e2 = end.clone();
    let s = guard(
        Bytes::from_static(b"data: 1\n\n"),
        b,
        Duration::from_secs(5),
        Framing::Sse {
            end: sse_end,
            max_event: 1 << 20,
        },
        None,
        move |e, _| *e2.lock().unwrap() = Some(e),
    );
    let parts: Vec<Bytes> = s.map(|r| r.unwrap()).collect().await;
    let text = parts
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    let end = end.lock().unwrap().unwrap();
    (text, end)
}

#[tokio::test]
async fn complete_stream_passes_through_untouched() {
    let (text, end) = collect_guarded(body(&["data: 2\n\n", "data: [DO", "NE]\n\n"]), true).await;
    assert_eq!(text, "data: 1\n\ndata: 2\n\ndata: [DONE]\n\n");
    assert_eq!(end, StreamEnd::Complete);
}

#[tokio::test]
async fn truncated_stream_ends_with_an_error_event() {
    let (text, end) = collect_guarded(body(&["data: 2\n\n"]), true).await;
    assert!(
        text.ends_with("\"code\":\"stream_truncated\"}}\n\n"),
        "{text}"
    );
    assert_eq!(end, StreamEnd::Truncated);
    let (_, end) = collect_guarded(body(&["data: 2\n\n"]), false).await;
    assert_eq!(
        end,
        StreamEnd::Complete,
        "streams without [DONE] (responses API) end cleanly"
    );
}

#[tokio::test]
async fn broken_stream_ends_with_an_error_event() {
    let items = vec![
        Ok(Bytes::from_static(b"data: 2\n\n")),
        Err(UpstreamError::Transport("reset".into())),
    ];
    let (text, end) = collect_guarded(Box::pin(stream::iter(items)), true).await;
    assert!(
        text.contains("data: 2\n\ndata: {\"error\":{\"message\":\"upstream stream failed"),
        "{text}"
    );
    assert_eq!(end, StreamEnd::Broken);
}

#[tokio::test(start_paused = true)]
async fn idle_stream_ends_with_an_error_event_instead_of_hanging() {
    let b: BodyStream = Box::pin(
        stream::iter(vec![Ok(Bytes::from_static(b"data: 2\n\n"))]).chain(stream::pending()),
    );
    let (text, end) = collect_guarded(b, true).await;
    assert!(text.contains("stream_idle_timeout"), "{text}");
    assert_eq!(end, StreamEnd::Idle);
}

/// The idle timer is not moved per chunk: a stream that keeps sending for longer than the idle
/// timeout runs on, and its silence is still measured from its last chunk.
#[tokio::test(start_paused = true)]
async fn the_idle_timeout_counts_from_the_last_chunk_of_a_long_stream() {
    let started = Instant::now();
    let chunks = stream::unfold(0, |i| async move {
        if i == 8 {
            return None;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        Some((Ok(Bytes::from(format!("data: {i}\n\n"))), i + 1))
    });
    let b: BodyStream = Box::pin(chunks.chain(stream::pending()));
    let (text, end) = collect_guarded(b, true).await;
    assert_eq!(end, StreamEnd::Idle);
    assert!(text.contains("data: 7\n\n"), "{text}");
    // Eight chunks 3 s apart (24 s, past the 5 s timeout many times over), then 5 s of silence.
    assert_eq!(started.elapsed(), Duration::from_secs(29));
}

#[tokio::test]
async fn a_body_read_to_its_declared_length_is_complete_even_if_never_polled_to_the_end() {
    let end = Arc::new(Mutex::new(None));
    let e2 = end.clone();
    let body: BodyStream =
        Box::pin(stream::iter(vec![Ok(Bytes::from_static(b"{\"a\":1}"))]).chain(stream::pending()));
    let mut s = Box::pin(guard(
        Bytes::new(),
        body,
        Duration::from_secs(5),
        Framing::Raw { length: Some(7) },
        None,
        move |e, _| *e2.lock().unwrap() = Some(e),
    ));
    assert_eq!(s.next().await.unwrap().unwrap(), "{\"a\":1}");
    drop(s);
    assert_eq!(*end.lock().unwrap(), Some(StreamEnd::Complete));
}

#[tokio::test]
async fn a_body_dropped_before_its_declared_length_is_the_clients_leaving_not_a_break() {
    let end = Arc::new(Mutex::new(None));
    let e2 = end.clone();
    let body: BodyStream =
        Box::pin(stream::iter(vec![Ok(Bytes::from_static(b"{\"a\""))]).chain(stream::pending()));
    let mut s = Box::pin(guard(
        Bytes::new(),
        body,
        Duration::from_secs(5),
        Framing::Raw { length: Some(7) },
        None,
        move |e, _| *e2.lock().unwrap() = Some(e),
    ));
    s.next().await.unwrap().unwrap();
    drop(s);
    assert_eq!(*end.lock().unwrap(), Some(StreamEnd::Cancelled));
}

/// What a guarded chat stream over `body` hands the server, one item per write.
async fn writes(body: BodyStream) -> Vec<Bytes> {
    let s = guard(
        Bytes::new(),
        body,
        Duration::from_secs(5),
        Framing::Sse {
            end: SseEnd::Done,
            max_event: 1 << 20,
        },
        None,
        |_, _| {},
    );
    s.map(|r| r.unwrap()).collect().await
}

#[tokio::test]
async fn chunks_already_available_go_out_in_one_write() {
    let ready: Vec<Result<Bytes, UpstreamError>> = (0..5)
        .map(|i| Ok(Bytes::from(format!("data: {i}\n\n"))))
        .chain([Ok(Bytes::from_static(b"data: [DONE]\n\n"))])
        .collect();
    let parts = writes(Box::pin(stream::iter(ready))).await;
    assert_eq!(parts.len(), 1, "{parts:?}");
    assert_eq!(
        parts[0],
        "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\ndata: 4\n\ndata: [DONE]\n\n"
    );
}

/// A trickling stream's chunks go out one write each: the first is held for one look behind
/// it, which finds nothing, and the next ones go on at once (each waited for 50 ms).
#[tokio::test(start_paused = true)]
async fn a_trickling_streams_chunks_go_out_one_write_each() {
    let chunks: Vec<Bytes> = (0..20)
        .map(|i| Bytes::from(format!("data: {i}\n\n")))
        .chain([Bytes::from_static(b"data: [DONE]\n\n")])
        .collect();
    let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = polls.clone();
    let trickle = stream::iter(chunks.clone()).then(move |chunk| {
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(chunk)
        }
    });
    let parts = writes(Box::pin(trickle)).await;
    assert_eq!(parts, chunks);
    assert_eq!(
        polls.load(std::sync::atomic::Ordering::Relaxed),
        chunks.len()
    );
}

/// A burst handed over one chunk at a time by another task (as hyper's client connection
/// hands over a body it has read at once) goes out in one write; after a pause, the chunk that
/// was waited for goes alone and the burst behind it together.
#[tokio::test(start_paused = true)]
async fn a_burst_handed_over_a_chunk_a_turn_goes_out_in_one_write() {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, UpstreamError>>(1);
    tokio::spawn(async move {
        for i in 0..20 {
            tx.send(Ok(Bytes::from(format!("data: {i}\n\n"))))
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        for i in 20..40 {
            tx.send(Ok(Bytes::from(format!("data: {i}\n\n"))))
                .await
                .unwrap();
        }
        tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n")))
            .await
            .unwrap();
    });
    let body = stream::unfold(rx, |mut rx| async move { Some((rx.recv().await?, rx)) });
    let parts = writes(Box::pin(body)).await;
    let text: String = parts.iter().map(|p| String::from_utf8_lossy(p)).collect();
    let expected: String = (0..40)
        .map(|i| format!("data: {i}\n\n"))
        .chain(["data: [DONE]\n\n".to_owned()])
        .collect();
    assert_eq!(text, expected);
    assert_eq!(parts.len(), 3, "{parts:?}");
    assert_eq!(parts[1], "data: 20\n\n");
}

mod protocols;

/// A Messages stream whose upstream is silent: a `ping` every 10 s between events, never one
/// inside an event still arriving; the silence still ends it at the idle timeout (60 s here)
/// with Anthropic's `error` event.
#[tokio::test(start_paused = true)]
async fn a_silent_messages_stream_gets_pings_between_events_until_the_idle_timeout() {
    use crate::provider::messages::PING;
    async fn run(chunks: Vec<&'static str>, hang: bool) -> (String, StreamEnd, Vec<u64>) {
        let started = Instant::now();
        let items = chunks
            .into_iter()
            .map(|c| Ok::<_, UpstreamError>(Bytes::from_static(c.as_bytes())));
        let tail: BodyStream = match hang {
            true => Box::pin(stream::iter(items).chain(stream::pending())),
            false => Box::pin(stream::iter(items)),
        };
        let end = Arc::new(Mutex::new(None));
        let e2 = end.clone();
        let s = guard(
            Bytes::from_static(b"event: message_start\ndata: {\"type\":\"message_start\"}\n\n"),
            tail,
            Duration::from_secs(60),
            Framing::Sse {
                end: SseEnd::MessageStop,
                max_event: 1 << 20,
            },
            None,
            move |e, _| *e2.lock().unwrap() = Some(e),
        );
        let mut text = String::new();
        let mut ping_at = Vec::new();
        let mut s = std::pin::pin!(s);
        while let Some(part) = s.next().await {
            let part = part.unwrap();
            if part.as_ref() == PING {
                ping_at.push(started.elapsed().as_secs());
            }
            text.push_str(&String::from_utf8_lossy(&part));
        }
        let end = end.lock().unwrap().unwrap();
        (text, end, ping_at)
    }
    let (text, end, pings) = run(vec![], true).await;
    assert_eq!(pings, [10, 20, 30, 40, 50], "{text}");
    assert_eq!(end, StreamEnd::Idle);
    let last = text.rsplit("\n\n").nth(1).unwrap();
    let error: serde_json::Value =
        serde_json::from_str(last.strip_prefix("event: error\ndata: ").unwrap()).unwrap();
    assert_eq!(error["error"]["type"], "timeout_error", "{text}");
    assert_eq!(error["error"]["message"], "upstream sent nothing for 60s");
    // Half an event has arrived: no ping may cut it.
    let (text, end, pings) = run(vec!["event: content_block_delta\ndata: {\"ty"], true).await;
    assert!(pings.is_empty(), "{text}");
    assert_eq!(end, StreamEnd::Idle);
    // An ended stream gets none either.
    let (text, end, pings) = run(
        vec!["event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"],
        false,
    )
    .await;
    assert!(pings.is_empty(), "{text}");
    assert_eq!(end, StreamEnd::Complete);
}
