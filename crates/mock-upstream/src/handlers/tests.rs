//! Routing and key extraction, without a socket.

use super::*;

#[test]
fn routes_by_suffix() {
    assert_eq!(route(&Method::POST, "/v1/chat/completions"), Route::Chat);
    assert_eq!(route(&Method::POST, "/v1/messages"), Route::Messages);
    assert_eq!(
        route(&Method::POST, "/anthropic/v1/messages/"),
        Route::Messages
    );
    assert_eq!(route(&Method::GET, "/v1/messages"), Route::Echo);
    assert_eq!(
        route(&Method::POST, "/openai/deployments/d/chat/completions"),
        Route::Chat
    );
    assert_eq!(route(&Method::POST, "/v1/completions"), Route::Completions);
    assert_eq!(route(&Method::POST, "/v1/embeddings"), Route::Embeddings);
    assert_eq!(route(&Method::GET, "/v1/models"), Route::Models);
    assert_eq!(route(&Method::POST, "/v1/audio/speech"), Route::Speech);
    assert_eq!(route(&Method::GET, "/v1/chat/completions"), Route::Echo);
    assert_eq!(route(&Method::POST, "/v1/files"), Route::Objects);
    assert_eq!(route(&Method::GET, "/v1/batches/batch_1"), Route::Objects);
    assert_eq!(route(&Method::POST, "/v1/vector_stores"), Route::Echo);
    assert_eq!(route(&Method::POST, "/v1/responses"), Route::Responses);
    assert_eq!(
        route(&Method::POST, "/openai/v1/responses/"),
        Route::Responses
    );
    assert_eq!(
        route(&Method::GET, "/v1/responses/resp_1"),
        Route::ResponseGet
    );
    assert_eq!(
        route(&Method::DELETE, "/v1/responses/resp_1"),
        Route::ResponseDelete
    );
    assert_eq!(route(&Method::GET, "/v1/responses"), Route::Echo);
    assert_eq!(
        route(&Method::GET, "/v1/responses/resp_1/input_items"),
        Route::Echo
    );
    assert_eq!(response_id("/v1/responses/resp_1/"), Some("resp_1"));
}

#[test]
fn key_prefers_bearer_then_api_key_then_x_api_key() {
    let mut h = HeaderMap::new();
    h.insert("x-api-key", HeaderValue::from_static("x"));
    assert_eq!(request_key(&h).as_deref(), Some("x"));
    h.insert("api-key", HeaderValue::from_static("a"));
    assert_eq!(request_key(&h).as_deref(), Some("a"));
    h.insert("authorization", HeaderValue::from_static("Basic zzz"));
    assert_eq!(request_key(&h).as_deref(), Some("a"));
    h.insert("authorization", HeaderValue::from_static("Bearer sk-1"));
    assert_eq!(request_key(&h).as_deref(), Some("sk-1"));
}

/// A wait is never short, whether tokio's timer takes a part of it or not (the upper bound is
/// the machine's scheduling and is left to the benchmark, which reads it as direct p50).
#[tokio::test]
async fn waits_at_least_what_was_asked() {
    for ms in [0, 1, 2, 5] {
        let wait = Duration::from_millis(ms);
        let start = std::time::Instant::now();
        wait_exactly(wait).await;
        assert!(
            start.elapsed() >= wait,
            "{ms} ms waited {:?}",
            start.elapsed()
        );
    }
}
