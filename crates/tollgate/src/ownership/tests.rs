use super::*;
use crate::auth::{Auth, Client};
use crate::config::ClientSettings;
use crate::key_pool::store::MemoryHealth;
use crate::request::Served;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use std::sync::Mutex;
use tower::service_fn;

#[test]
fn paths_name_their_collection_object_and_what_they_do() {
    let get = Method::GET;
    let post = Method::POST;
    let s = scope(&post, "files");
    assert_eq!(
        (s.collection, s.object, s.creates, s.lists),
        (Some("files"), None, true, false)
    );
    let s = scope(&get, "files");
    assert!(s.lists && !s.creates);
    let s = scope(&get, "files/file-1/content");
    assert_eq!(s.object, Some("file-1"));
    assert!(
        !records_answer(&s, "files/file-1/content"),
        "content is never read whole"
    );
    let s = scope(&get, "batches/batch_1");
    assert!(
        records_answer(&s, "batches/batch_1"),
        "a batch names its output files"
    );
    let s = scope(&get, "fine_tuning/jobs/ftjob-1/events");
    assert_eq!(s.object, Some("ftjob-1"));
    let s = scope(&post, "responses");
    assert!(
        !s.creates,
        "stored when the body says so: the handler decides"
    );
    assert_eq!(scope(&post, "responses/input_tokens").object, None);
    let s = scope(&post, "threads/runs");
    assert!(
        s.creates && s.object.is_none(),
        "creates a thread and its run"
    );
    assert_eq!(
        scope(&post, "chat/completions"),
        Scope {
            collection: Some("chat/completions"),
            ..Scope::default()
        }
    );
    assert_eq!(
        scope(&get, "chat/completions/chatcmpl-1").object,
        Some("chatcmpl-1")
    );
    assert_eq!(
        scope(&get, "filesystem"),
        Scope::default(),
        "a prefix is not a collection"
    );
    assert_eq!(scope(&post, "embeddings"), Scope::default());
}

#[test]
fn bodies_name_objects_anywhere_and_are_parsed_only_when_they_may() {
    let body = serde_json::json!({
        "model": "m",
        "previous_response_id": "resp_1",
        "conversation": {"id": "conv_1"},
        "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}],
        "tools": [{"type": "file_search", "vector_store_ids": ["vs_1", "vs_2"]}],
        "tool_call_id": "call_1",
    });
    let mut found = references(body.to_string().as_bytes());
    found.sort();
    assert_eq!(
        found,
        [
            ("conversation", "conv_1".to_owned()),
            ("file_id", "file-1".to_owned()),
            ("previous_response_id", "resp_1".to_owned()),
            ("vector_store_ids", "vs_1".to_owned()),
            ("vector_store_ids", "vs_2".to_owned()),
        ]
    );
    // A field name spelled with escapes is still found.
    let escaped = br#"{"input_file\u005fid": "file-2"}"#;
    assert_eq!(
        references(escaped),
        [("input_file_id", "file-2".to_owned())]
    );
    // Text outside ASCII, escaped, does not make a body worth parsing; nor does a field that
    // only ends like a reference.
    assert!(!may_reference(
        br#"{"content": "caf\u00e9", "tool_call_id": "x"}"#
    ));
    assert!(references(br#"{"messages": [{"content": "my file_id is \"x\""}]}"#).is_empty());
}

#[test]
fn answers_name_what_the_caller_now_owns() {
    let created = br#"{"id": "file-1", "object": "file", "expires_at": 1900000000}"#;
    assert_eq!(
        named_in_answer(created, false, true),
        (vec!["file-1".to_owned()], Some(1900000000))
    );
    let batch = br#"{"id": "batch_1", "output_file_id": "file-out", "error_file_id": null}"#;
    assert_eq!(named_in_answer(batch, false, false).0, ["file-out"]);
    let upload = br#"{"id": "upload_1", "object": "upload", "file": {"id": "file-up"}}"#;
    assert_eq!(named_in_answer(upload, false, false).0, ["file-up"]);
    let job = br#"{"id": "ftjob-1", "result_files": ["file-r1", "file-r2"]}"#;
    assert_eq!(named_in_answer(job, false, false).0, ["file-r1", "file-r2"]);
    let stream = b"event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_9\"}}\n\n";
    assert_eq!(named_in_answer(stream, true, true).0, ["resp_9"]);
    let chat = b"data: {\"id\":\"chatcmpl-9\",\"choices\":[]}\n\n";
    assert_eq!(named_in_answer(chat, true, true).0, ["chatcmpl-9"]);
    assert!(named_in_answer(b"not json", false, true).0.is_empty());
}

fn client(name: &str, endpoints: &[&str]) -> Arc<Client> {
    let names: Vec<String> = endpoints.iter().map(|e| e.to_string()).collect();
    let auth = Auth::new(&[ClientSettings {
        name: name.into(),
        key_sha256: crate::digest::sha256(name.as_bytes()),
        rpm: None,
        tpm: None,
        max_concurrent: None,
        models: vec![],
        endpoints: crate::endpoint::Families::parse(&names).expect("valid families"),
        forward_headers: Default::default(),
        max_body: None,
    }]);
    auth.authenticate_key(Some(name))
        .expect("known key")
        .expect("a client")
}

fn request(method: Method, path: &str, body: &str, client: Option<&Arc<Client>>) -> GatewayRequest {
    let mut req = GatewayRequest::for_test(method, path, Bytes::from(body.to_owned()));
    req.client = client.cloned();
    req
}

fn answer(body: &str) -> Answer {
    Answer {
        status: StatusCode::OK,
        headers: HeaderMap::new(),
        body: Body::from(body.to_owned()),
        provider: "p".into(),
        key: "a".into(),
        attempts: 1,
        served: Served::FirstTry,
        hold: None,
    }
}

/// An ownership layer over an upstream that answers `body` and notes the requests it got.
fn stack(
    records: &Arc<Records>,
    body: &'static str,
) -> (
    impl Service<GatewayRequest, Response = Answer, Error = GatewayError> + Clone,
    Arc<Mutex<Vec<GatewayRequest>>>,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let upstream = service_fn(move |req: GatewayRequest| {
        log.lock().unwrap().push(req);
        std::future::ready(Ok::<_, GatewayError>(answer(body)))
    });
    (
        OwnershipLayer::new(Arc::clone(records)).layer(upstream),
        seen,
    )
}

fn owned_by(records: &Records, id: &str, client: &Arc<Client>, key: &str) {
    let owner = Owner {
        key: Arc::from(key),
        client: Some(Arc::clone(&client.bucket)),
    };
    records.record(id, owner, u64::MAX / 2);
}

async fn text(answer: Answer) -> String {
    let bytes = answer.body.collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn a_client_reaches_only_its_own_objects_on_the_key_that_holds_them() {
    let records = Arc::new(Records::new(Arc::new(MemoryHealth)));
    let a = client("team-a", &["inference", "files"]);
    let b = client("team-b", &["inference", "files"]);
    owned_by(&records, "file-a", &a, "k:p:1");
    let (svc, seen) = stack(&records, "{}");

    for (method, path) in [
        (Method::GET, "files/file-a"),
        (Method::GET, "files/file-a/content"),
        (Method::DELETE, "files/file-a"),
        (Method::GET, "files/file-nobody"),
    ] {
        let refused = svc
            .clone()
            .oneshot(request(method.clone(), path, "", Some(&b)))
            .await;
        let Err(GatewayError::ObjectNotFound { param: None, .. }) = refused else {
            panic!("{method} {path}: {refused:?}");
        };
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing reached the upstream"
    );

    svc.clone()
        .oneshot(request(Method::GET, "files/file-a/content", "", Some(&a)))
        .await
        .expect("the owner reads its file");
    let sent = seen.lock().unwrap().pop().expect("sent");
    assert_eq!(
        sent.object_key.as_deref(),
        Some("k:p:1"),
        "to the key that holds it"
    );
}

#[tokio::test]
async fn objects_named_in_a_body_must_be_the_callers() {
    let records = Arc::new(Records::new(Arc::new(MemoryHealth)));
    let a = client("team-a", &["inference", "batches"]);
    let b = client("team-b", &["inference", "batches"]);
    owned_by(&records, "file-a", &a, "k:p:1");
    owned_by(&records, "resp_a", &a, "k:p:2");
    let (svc, seen) = stack(&records, "{}");
    let batch = r#"{"input_file_id": "file-a", "endpoint": "/v1/chat/completions"}"#;
    let refused = svc
        .clone()
        .oneshot(request(Method::POST, "batches", batch, Some(&b)))
        .await;
    assert!(
        matches!(
            refused,
            Err(GatewayError::ObjectNotFound {
                param: Some("input_file_id"),
                ..
            })
        ),
        "{refused:?}"
    );
    let mut cont = request(
        Method::POST,
        "responses",
        r#"{"model": "m", "previous_response_id": "resp_a"}"#,
        Some(&b),
    );
    cont.object = Some("resp_a".into());
    let refused = svc.clone().oneshot(cont).await;
    assert!(
        matches!(
            refused,
            Err(GatewayError::ObjectNotFound {
                param: Some("previous_response_id"),
                ..
            })
        ),
        "{refused:?}"
    );
    assert!(seen.lock().unwrap().is_empty());

    svc.clone()
        .oneshot(request(Method::POST, "batches", batch, Some(&a)))
        .await
        .expect("the owner makes a batch of its file");
    let sent = seen.lock().unwrap().pop().expect("sent");
    assert!(sent.records, "the batch's id is recorded from its answer");
    assert_eq!(
        sent.object_key.as_deref(),
        Some("k:p:1"),
        "on the key that holds the file"
    );
}

#[tokio::test]
async fn listings_keep_only_the_callers_objects() {
    let records = Arc::new(Records::new(Arc::new(MemoryHealth)));
    let a = client("team-a", &["inference", "files"]);
    let b = client("team-b", &["inference", "files"]);
    owned_by(&records, "file-a1", &a, "k:p:1");
    owned_by(&records, "file-b1", &b, "k:p:1");
    owned_by(&records, "file-a2", &a, "k:p:1");
    let listing = r#"{"object": "list", "data": [{"id": "file-a1"}, {"id": "file-b1"}, {"id": "file-other"}, {"id": "file-a2"}], "first_id": "file-a1", "last_id": "file-a2", "has_more": false}"#;
    let (svc, _) = stack(&records, listing);
    let got = svc
        .clone()
        .oneshot(request(Method::GET, "files", "", Some(&b)))
        .await
        .unwrap();
    let got: serde_json::Value = serde_json::from_str(&text(got).await).unwrap();
    assert_eq!(got["data"], serde_json::json!([{"id": "file-b1"}]));
    assert_eq!(
        (got["first_id"].as_str(), got["last_id"].as_str()),
        (Some("file-b1"), Some("file-b1"))
    );
    let got = svc
        .clone()
        .oneshot(request(Method::GET, "files", "", Some(&a)))
        .await
        .unwrap();
    let got: serde_json::Value = serde_json::from_str(&text(got).await).unwrap();
    assert_eq!(
        got["data"],
        serde_json::json!([{"id": "file-a1"}, {"id": "file-a2"}])
    );

    let (svc, _) = stack(&records, "not a listing");
    let refused = svc
        .oneshot(request(Method::GET, "files", "", Some(&a)))
        .await;
    assert!(
        matches!(refused, Err(GatewayError::AllFailed { .. })),
        "never passed on unfiltered"
    );
}

#[tokio::test]
async fn endpoints_outside_a_clients_families_are_refused() {
    let records = Arc::new(Records::new(Arc::new(MemoryHealth)));
    let plain = client("plain", &[]);
    let (svc, seen) = stack(&records, "{}");
    for (path, family) in [
        ("files", "files"),
        ("batches", "batches"),
        ("organization/usage/completions", "organization"),
        ("fine_tuning/jobs", "fine_tuning"),
        ("unheard_of", "*"),
    ] {
        let refused = svc
            .clone()
            .oneshot(request(Method::GET, path, "", Some(&plain)))
            .await;
        assert!(
            matches!(refused, Err(GatewayError::EndpointNotAllowed(f)) if f == family),
            "{path}: {refused:?}"
        );
    }
    assert!(seen.lock().unwrap().is_empty());
    svc.clone()
        .oneshot(request(
            Method::POST,
            "chat/completions",
            r#"{"model":"m"}"#,
            Some(&plain),
        ))
        .await
        .expect("inference by default");
}

#[tokio::test]
async fn open_mode_checks_nothing_but_still_sends_follow_ups_to_their_key() {
    let records = Arc::new(Records::new(Arc::new(MemoryHealth)));
    records.record(
        "resp_1",
        Owner {
            key: Arc::from("k:p:2"),
            client: None,
        },
        u64::MAX / 2,
    );
    let (svc, seen) = stack(&records, r#"{"data": []}"#);
    svc.clone()
        .oneshot(request(Method::GET, "files", "", None))
        .await
        .unwrap();
    svc.clone()
        .oneshot(request(Method::GET, "responses/resp_1", "", None))
        .await
        .unwrap();
    let sent = seen.lock().unwrap().pop().expect("sent");
    assert_eq!(sent.object_key.as_deref(), Some("k:p:2"));
    svc.clone()
        .oneshot(request(Method::GET, "responses/resp_unknown", "", None))
        .await
        .expect("passed on: one tenant");
}

/// The byte check as its definition says: a quoted name anywhere, or `\u00` then `2`–`7`.
fn may_reference_by_definition(body: &[u8]) -> bool {
    let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    QUOTED.iter().any(|name| has(name))
        || body
            .windows(5)
            .any(|w| w.starts_with(b"\\u00") && matches!(w[4], b'2'..=b'7'))
}

proptest::proptest! {
    /// Bodies built from pieces of names, endings, escapes and code agree with the definition.
    #[test]
    fn the_fast_byte_check_agrees_with_its_definition(
        pieces in proptest::collection::vec(proptest::sample::select(vec![
            "\"", "_", "_id", "_ids", "_file", "file", "id", "\"file_id\"", "\"file_ids\"",
            "\"thread_id\"", "\"tool_call_id\"", "\"training_file\"", "training", "\"conversation\"",
            "conversation", "\\u00", "\\u005f", "\\u00e9", "\\n", "\\\\", "previous_response",
            "\"previous_response_id\"", "vector_store", "\"vector_store_ids\"", "x", " ", ":",
        ]), 0..40)
    ) {
        let body = pieces.concat();
        proptest::prop_assert_eq!(
            may_reference(body.as_bytes()),
            may_reference_by_definition(body.as_bytes()),
            "{}", body
        );
    }
}
