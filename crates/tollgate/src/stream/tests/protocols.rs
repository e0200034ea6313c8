//! The commit point and the honest end per protocol: Responses events held until the first
//! output, a chat role-only chunk held, ends decided on parsed events, events bounded.

use super::*;

fn body(events: &[&str]) -> BodyStream {
    let chunks: Vec<Result<Bytes, UpstreamError>> = events
        .iter()
        .map(|e| Ok(Bytes::from(e.to_string())))
        .collect();
    Box::pin(stream::iter(chunks))
}

fn event(name: &str, data: &str) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

async fn peek(events: &[&str]) -> FirstEvent {
    let mut b = body(events);
    peek_first_event(&mut b, Instant::now() + Duration::from_secs(5))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_responses_failure_after_created_is_before_the_commit_point() {
    let created = event(
        "response.created",
        r#"{"type":"response.created","response":{"id":"resp_1","status":"in_progress"}}"#,
    );
    let progress = event("response.in_progress", r#"{"type":"response.in_progress"}"#);
    let failed = event(
        "response.failed",
        r#"{"type":"response.failed","response":{"status":"failed","error":{"code":"rate_limit_exceeded","message":"Please try again in 1.5s."}}}"#,
    );
    match peek(&[&created, &progress, &failed]).await {
        FirstEvent::Error(json) => {
            assert!(String::from_utf8_lossy(&json).contains("rate_limit_exceeded"))
        }
        other => panic!("{other:?}"),
    }
    let error = event(
        "error",
        r#"{"type":"error","code":"server_error","message":"boom"}"#,
    );
    assert!(matches!(
        peek(&[&created, &error]).await,
        FirstEvent::Error(_)
    ));
    // Without `event:` lines, the data's type says the same.
    let bare = r#"data: {"type":"response.created","response":{"id":"r"}}

data: {"type":"response.failed","response":{"error":{"code":"server_error","message":"x"}}}

"#;
    assert!(matches!(peek(&[bare]).await, FirstEvent::Error(_)));
}

#[tokio::test]
async fn a_responses_stream_commits_at_its_first_output_with_everything_before_it() {
    let created = event(
        "response.created",
        r#"{"type":"response.created","response":{"id":"resp_1"}}"#,
    );
    let added = event(
        "response.output_item.added",
        r#"{"type":"response.output_item.added","item":{"type":"message","content":[]}}"#,
    );
    let delta = event(
        "response.output_text.delta",
        r#"{"type":"response.output_text.delta","delta":"Hi"}"#,
    );
    match peek(&[&created, &added, &delta]).await {
        FirstEvent::Data(prefix) => {
            assert_eq!(prefix, format!("{created}{added}{delta}"));
        }
        other => panic!("{other:?}"),
    }
    let call = event(
        "response.function_call_arguments.delta",
        r#"{"type":"response.function_call_arguments.delta","delta":"{\""}"#,
    );
    assert!(matches!(
        peek(&[&created, &added, &call]).await,
        FirstEvent::Data(_)
    ));
    let done = event(
        "response.completed",
        r#"{"type":"response.completed","response":{"status":"completed"}}"#,
    );
    assert!(matches!(
        peek(&[&created, &done]).await,
        FirstEvent::Data(_)
    ));
}

#[tokio::test]
async fn a_chat_error_after_a_role_only_chunk_is_before_the_commit_point() {
    let role = "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n";
    let filter = "data: {\"choices\":[],\"prompt_filter_results\":[]}\n\n";
    let error = "data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}\n\n";
    assert!(matches!(
        peek(&[filter, role, error]).await,
        FirstEvent::Error(_)
    ));
    let content = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n";
    match peek(&[role, content]).await {
        FirstEvent::Data(prefix) => assert_eq!(prefix, format!("{role}{content}")),
        other => panic!("{other:?}"),
    }
    let tool = "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"c\"}]}}]}\n\n";
    assert!(matches!(peek(&[role, tool]).await, FirstEvent::Data(_)));
    let stop = "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";
    assert!(matches!(peek(&[role, stop]).await, FirstEvent::Data(_)));
    // Every field empty but the role, as some servers send it: still no output.
    let nulls = "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null,\"refusal\":null,\"tool_calls\":[]}}]}\n\n";
    assert!(matches!(peek(&[nulls, error]).await, FirstEvent::Error(_)));
    let late = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":null,\"role\":\"assistant\",\"reasoning_content\":\"hm\"}}]}\n\n";
    assert!(matches!(peek(&[late, error]).await, FirstEvent::Data(_)));
}

#[tokio::test]
async fn a_responses_stream_without_a_terminal_event_ends_with_response_failed() {
    let delta = event(
        "response.output_text.delta",
        r#"{"type":"response.output_text.delta","delta":"a"}"#,
    );
    let created = event(
        "response.created",
        r#"{"type":"response.created","response":{"id":"resp_7"}}"#,
    );
    let (text, end) =
        collect_framed(body(&[&created, &delta, &delta, &delta]), SseEnd::Terminal).await;
    assert_eq!(end, StreamEnd::Truncated);
    let last = text.rsplit("\n\n").nth(1).unwrap();
    assert!(last.starts_with("event: response.failed\ndata: "), "{text}");
    let json: serde_json::Value =
        serde_json::from_str(last.split("data: ").nth(1).unwrap()).unwrap();
    assert_eq!(json["response"]["id"], "resp_7");
    assert_eq!(json["response"]["status"], "failed");
    assert_eq!(json["response"]["error"]["code"], "stream_truncated");
    let completed = event(
        "response.completed",
        r#"{"type":"response.completed","response":{"id":"resp_7","status":"completed"}}"#,
    );
    let (text, end) = collect_framed(body(&[&created, &delta, &completed]), SseEnd::Terminal).await;
    assert_eq!(end, StreamEnd::Complete);
    assert!(!text.contains("response.failed"));
    // An upstream `response.incomplete` is an honest end too.
    let incomplete = event("response.incomplete", r#"{"type":"response.incomplete"}"#);
    let (_, end) = collect_framed(body(&[&delta, &incomplete]), SseEnd::Terminal).await;
    assert_eq!(end, StreamEnd::Complete);
}

#[tokio::test]
async fn done_inside_a_chunks_content_is_not_the_end() {
    let tricky = "data: {\"choices\":[{\"delta\":{\"content\":\"data: [DONE]\\n\\n\"}}]}\n\n";
    let (text, end) = collect_framed(body(&[tricky]), SseEnd::Done).await;
    assert_eq!(end, StreamEnd::Truncated, "{text}");
    assert!(text.contains("stream_truncated"));
    // The real end, split over two chunks.
    let (_, end) = collect_framed(body(&[tricky, "data: [DO", "NE]\n\n"]), SseEnd::Done).await;
    assert_eq!(end, StreamEnd::Complete);
}

#[tokio::test]
async fn an_event_that_never_ends_is_cut_at_max_event() {
    let end = Arc::new(Mutex::new(None));
    let e2 = end.clone();
    // Endless data with no blank line: 64 KiB chunks, forever.
    let endless: BodyStream = Box::pin(stream::repeat_with(|| {
        Ok(Bytes::from(vec![b'x'; 64 << 10]))
    }));
    let s = guard(
        Bytes::from_static(b"data: "),
        endless,
        Duration::from_secs(5),
        Framing::Sse {
            end: SseEnd::Done,
            max_event: 1 << 20,
        },
        None,
        move |e, _| *e2.lock().unwrap() = Some(e),
    );
    let parts: Vec<Bytes> = s.map(|r| r.unwrap()).collect().await;
    let sent: usize = parts.iter().map(Bytes::len).sum();
    assert!(sent < 3 << 20, "stopped soon after the limit: {sent}");
    let last = String::from_utf8_lossy(parts.last().unwrap()).into_owned();
    assert!(last.contains("stream_event_too_large"), "{last}");
    assert_eq!(end.lock().unwrap().unwrap(), StreamEnd::Oversized);
}

#[tokio::test]
async fn a_break_after_the_last_event_adds_no_error() {
    let done = "data: [DONE]\n\n";
    let chunks: Vec<Result<Bytes, UpstreamError>> = vec![
        Ok(Bytes::from_static(b"data: {\"choices\":[]}\n\n")),
        Ok(Bytes::from(done)),
        Err(UpstreamError::Transport("reset".into())),
    ];
    let (text, end) = collect_framed(Box::pin(stream::iter(chunks)), SseEnd::Done).await;
    assert_eq!(end, StreamEnd::Complete);
    assert!(text.ends_with(done), "{text}");
    let completed = event(
        "response.completed",
        r#"{"type":"response.completed","response":{"id":"r","status":"completed"}}"#,
    );
    let chunks: Vec<Result<Bytes, UpstreamError>> = vec![
        Ok(Bytes::from(completed.clone())),
        Err(UpstreamError::Transport("reset".into())),
    ];
    let (text, end) = collect_framed(Box::pin(stream::iter(chunks)), SseEnd::Terminal).await;
    assert_eq!(end, StreamEnd::Complete);
    assert!(!text.contains("response.failed"), "{text}");
}
