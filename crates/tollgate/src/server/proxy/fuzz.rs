//! Property tests over hostile requests (issue 21's fuzz target for the routing fields): any
//! body under any media type, method and path is read into the fields the gateway routes on
//! exactly as the JSON or form says, or refused as unreadable; never a panic.

use super::*;
use crate::key_pool::affinity;
use crate::sse::fuzz::config;
use proptest::prelude::*;
use serde_json::{json, Value};

/// Values a field may hold, of every JSON type and the edge cases the parse singles out.
fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        "\\PC{0,12}".prop_map(Value::from),
        prop::sample::select(vec![
            Value::Null,
            json!(""),
            json!("resp_1"),
            json!("false"),
            json!(false),
            json!(true),
            json!(0),
            json!(-1.5),
            json!([]),
            json!({"a": [1, "\"\\"]}),
            json!("\u{0}\"\\\n"),
        ]),
    ]
}

/// A JSON request body with each routing field absent or of any type.
fn json_body() -> impl Strategy<Value = Value> {
    // Mostly of the type the field takes, else any value.
    let field = |good: BoxedStrategy<Value>| prop::option::of(prop_oneof![3 => good, 1 => value()]);
    let text = || "\\PC{0,12}".prop_map(Value::from).boxed();
    let flag = || any::<bool>().prop_map(Value::from).boxed();
    let options = prop_oneof![flag(), value()].prop_map(|v| json!({"include_usage": v}));
    (
        (
            field(text()),
            field(flag()),
            field(options.boxed()),
            field(value().boxed()),
        ),
        (
            field(value().boxed()),
            field(text()),
            field(flag()),
            field(any::<u64>().prop_map(Value::from).boxed()),
        ),
    )
        .prop_map(
            |((model, stream, options, cache_key), (user, previous, store, max))| {
                let mut body = serde_json::Map::new();
                body.insert(
                    "messages".into(),
                    json!([{"role": "user", "content": "hi"}]),
                );
                let fields = [
                    ("model", model),
                    ("stream", stream),
                    ("stream_options", options),
                    ("prompt_cache_key", cache_key),
                    ("user", user),
                    ("previous_response_id", previous),
                    ("store", store),
                    ("max_tokens", max),
                ];
                for (name, v) in fields {
                    if let Some(v) = v {
                        body.insert(name.into(), v);
                    }
                }
                Value::Object(body)
            },
        )
}

/// What `parse_meta` must read from a JSON body: `None` when a field has a type it refuses.
fn expected(body: &Value, sticky_user: bool) -> Option<Meta> {
    let get = |name: &str| body.get(name).filter(|v| !v.is_null());
    let model = match get("model") {
        None => None,
        Some(Value::String(m)) => Some(m.clone()),
        Some(_) => return None,
    };
    let stream = match get("stream") {
        None => false,
        Some(v) => v.as_bool()?,
    };
    let include_usage = match get("stream_options") {
        None => false,
        Some(Value::Object(o)) => match o.get("include_usage").filter(|v| !v.is_null()) {
            None => false,
            Some(v) => v.as_bool()?,
        },
        // A struct reads from a list too: the empty one leaves every field out.
        Some(Value::Array(a)) if a.is_empty() => false,
        Some(_) => return None,
    };
    if get("max_tokens").is_some_and(|v| !v.is_u64()) {
        return None;
    }
    let session = get("prompt_cache_key")
        .or(get("user").filter(|_| sticky_user))
        .map(Value::to_string)
        .filter(|raw| raw != "\"\"")
        .map(|raw| affinity(raw.as_bytes()));
    let previous_response = get("previous_response_id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .map(Box::from);
    let store = body.get("store").and_then(Value::as_bool);
    Some(Meta {
        model,
        // Checked by splicing a rename there (the test below).
        model_span: None,
        // Checked against the estimate's own reading (the test below).
        counted: None,
        stream,
        include_usage,
        session,
        previous_response,
        store,
        // Checked against the ownership layer's own search (the skim's tests).
        names_objects: None,
    })
}

/// A multipart form with the boundary `XyZ`: fields by name and value, maybe a file, maybe cut
/// short or with a byte changed.
fn form() -> impl Strategy<Value = (Vec<u8>, Option<String>, bool)> {
    let name = prop::sample::select(vec!["model", "file", "purpose", "Model", "model "]);
    let fields = prop::collection::vec((name, "\\PC{0,16}", any::<bool>()), 0..4);
    (fields, 0..4u8, any::<prop::sample::Index>(), any::<u8>()).prop_map(
        |(fields, damage, at, flip)| {
            let mut out = String::new();
            for (name, value, file) in &fields {
                let filename = if *file { "; filename=\"a.wav\"" } else { "" };
                out.push_str(&format!(
                    "--XyZ\r\nContent-Disposition: form-data; name=\"{name}\"{filename}\r\n\r\n{value}\r\n"
                ));
            }
            out.push_str("--XyZ--\r\n");
            let model = fields
                .iter()
                .find(|(name, _, _)| *name == "model")
                .map(|(_, value, _)| value.clone());
            let mut out = out.into_bytes();
            let intact = match damage {
                0 | 1 => true,
                2 => {
                    out.truncate(at.index(out.len()));
                    false
                }
                _ => {
                    let i = at.index(out.len());
                    out[i] ^= flip.max(1);
                    false
                }
            };
            (out, model, intact)
        },
    )
}

fn parts(method: &Method, path: &str, content_type: Option<&str>) -> Option<Parts> {
    let mut req = Request::builder().method(method.clone()).uri(path);
    if let Some(ct) = content_type {
        req = req.header(header::CONTENT_TYPE, HeaderValue::from_str(ct).ok()?);
    }
    Some(req.body(()).ok()?.into_parts().0)
}

fn method() -> impl Strategy<Value = Method> {
    prop::sample::select(vec![
        Method::POST,
        Method::POST,
        Method::GET,
        Method::PUT,
        Method::DELETE,
    ])
}

fn path() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/responses/resp_1",
        "/v1/audio/transcriptions",
        "/v1/images/edits",
        "/v1/models",
        "/v1/files",
    ])
}

/// Runs `parse_meta` for a request to `path`.
fn parse(
    method: &Method,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
    sticky_user: bool,
) -> Option<Result<Meta, GatewayError>> {
    let parts = parts(method, path, content_type)?;
    let endpoint = Endpoint::from_path(path.strip_prefix("/v1/").unwrap_or_default());
    let body = Bytes::copy_from_slice(body);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    Some(rt.block_on(parse_meta(&parts, &body, endpoint, sticky_user)))
}

fn same(got: &Meta, want: &Meta) -> Result<(), TestCaseError> {
    prop_assert_eq!(&got.model, &want.model);
    prop_assert_eq!(
        got.model_span.is_some(),
        got.model.is_some() && want.model.is_some()
    );
    prop_assert_eq!(got.stream, want.stream);
    prop_assert_eq!(got.include_usage, want.include_usage);
    prop_assert_eq!(got.session, want.session);
    prop_assert_eq!(&got.previous_response, &want.previous_response);
    prop_assert_eq!(got.store, want.store);
    Ok(())
}

proptest! {
    #![proptest_config(config(1024))]

    /// A JSON body under any JSON-ish media type is read exactly as it says (a field of the
    /// wrong type refuses the body as invalid JSON); only a creation that names no model is
    /// refused for it.
    #[test]
    fn a_json_body_is_read_as_it_says(
        body in json_body(),
        content_type in prop::option::of(prop::sample::select(vec![
            "application/json",
            "Application/JSON; charset=utf-8",
            "text/plain",
            "application/merge-patch+json",
            "application/octet-stream",
        ])),
        method in method(),
        path in path(),
        sticky_user in any::<bool>(),
    ) {
        let text = body.to_string();
        let Some(got) = parse(&method, path, content_type, text.as_bytes(), sticky_user) else {
            return Ok(());
        };
        let want = match method {
            Method::GET => Some(Meta::default()),
            _ => expected(&body, sticky_user),
        };
        if let Ok(Meta { counted: Some(counted), .. }) = &got {
            // The one reading counts what the estimate's own reading would.
            let endpoint = Endpoint::from_path(path.strip_prefix("/v1/").unwrap_or_default());
            prop_assert_eq!(
                counted.split(endpoint, 7),
                crate::rate_limit::estimate::estimate(text.as_bytes(), endpoint, 7)
            );
        }
        if let Ok(Meta { model_span: Some(span), .. }) = &got {
            // The model's place: a rename spliced there is the body with that model.
            let out = crate::request::splice(text.as_bytes(), span.clone(), b"\"re\\u0070named\"");
            let out: Value = serde_json::from_slice(&out.expect("in the body")).expect("still JSON");
            let mut want = body.clone();
            want["model"] = json!("repnamed");
            prop_assert_eq!(out, want);
        }
        match (got, want) {
            (Ok(got), Some(want)) => same(&got, &want)?,
            (Err(GatewayError::MissingModel), Some(want)) => {
                prop_assert!(want.model.is_none() && method == Method::POST);
            }
            (Err(GatewayError::InvalidJson(_)), None) => {}
            (got, want) => prop_assert!(false, "got {:?}, want {:?}", got.map(|m| m.model), want.map(|m| m.model)),
        }
    }

    /// A multipart form gives the value of its first `model` field; a damaged one gives some
    /// model or none, or is refused as unreadable; never a panic.
    #[test]
    fn a_form_gives_its_model_field(
        (form, model, intact) in form(),
        content_type in prop::sample::select(vec![
            "multipart/form-data; boundary=XyZ",
            "MULTIPART/FORM-DATA; boundary=XyZ",
            "multipart/form-data; boundary=\"XyZ\"",
            "multipart/form-data; boundary=xyz",
            "multipart/form-data",
            "multipart/form-data; boundary=",
        ]),
        method in prop_oneof![3 => Just(Method::POST), 1 => method()],
        path in path(),
    ) {
        let Some(got) = parse(&method, path, Some(content_type), &form, false) else {
            return Ok(());
        };
        let readable = intact && content_type.contains("XyZ") && method == Method::POST;
        match got {
            Ok(meta) if readable => prop_assert_eq!(meta.model, model),
            Ok(meta) if method != Method::POST => prop_assert_eq!(meta.model, None),
            Err(GatewayError::MissingModel) if readable => prop_assert_eq!(model, None),
            Err(GatewayError::MissingModel | GatewayError::InvalidJson(_)) | Ok(_) => {
                prop_assert!(!readable, "an intact form is read");
            }
            Err(e) => prop_assert!(false, "{}", e),
        }
    }

    /// Any bytes under any media type, method and path: read or refused, never a panic.
    #[test]
    fn any_bytes_are_read_or_refused(
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..96),
            "[ \\t\\r\\n]{0,3}\\{\\PC{0,40}".prop_map(String::into_bytes),
        ],
        content_type in prop::option::of("\\PC{0,40}"),
        method in method(),
        path in path(),
        sticky_user in any::<bool>(),
    ) {
        if let Some(got) = parse(&method, path, content_type.as_deref(), &body, sticky_user) {
            prop_assert!(matches!(
                got,
                Ok(_) | Err(GatewayError::InvalidJson(_) | GatewayError::MissingModel)
            ));
        }
    }

    /// A path's object id is a whole, non-empty segment after its collection; a session header
    /// is hashed as it came.
    #[test]
    fn response_ids_and_session_headers_read_any_input(
        path in "((responses|files|fine_tuning/jobs)/?)?[a-z_/%.]{0,12}",
        header in prop::collection::vec(any::<u8>(), 0..32),
    ) {
        let scope = crate::ownership::scope(&Method::GET, &path);
        if let Some(id) = scope.object {
            prop_assert!(!id.is_empty() && !id.contains('/'));
            let collection = scope.collection.unwrap_or_default();
            let whole = format!("{collection}/{id}");
            prop_assert!(path.starts_with(&whole));
        }
        let mut headers = http::HeaderMap::new();
        if let Ok(v) = HeaderValue::from_bytes(&header) {
            headers.insert("session-id", v);
            prop_assert_eq!(session_header(&headers), Some(affinity(&header)));
        }
    }
}

/// One reading routes and counts; a body whose counted fields that reading refuses still
/// routes, and is counted later by the estimate's lenient reading.
#[test]
fn one_reading_routes_and_counts_and_a_refused_count_still_routes() {
    let read = |body: &str| {
        parse(
            &Method::POST,
            "/v1/chat/completions",
            Some("application/json"),
            body.as_bytes(),
            false,
        )
        .expect("a request")
        .map_err(|e| e.to_string())
        .expect("read")
    };
    let meta =
        read(r#"{"model":"m","messages":[{"role":"user","content":"abcd"}],"max_tokens":5}"#);
    assert_eq!(meta.model.as_deref(), Some("m"));
    let counted = meta.counted.expect("counted in the same pass");
    // 3 per message, the content with its quotes (6 bytes: 2), 3 to prime the answer.
    assert_eq!(counted.prompt, 3 + 2 + 3);
    assert_eq!(counted.allowance, Some(("max_tokens", 5)));
    for odd in [
        r#"{"model":"m","messages":"hi","max_tokens":5}"#,
        r#"{"model":"m","messages":[1]}"#,
        r#"{"model":"m","messages":[],"messages":[]}"#,
    ] {
        let meta = read(odd);
        assert_eq!(meta.model.as_deref(), Some("m"), "{odd}");
        assert!(meta.counted.is_none(), "{odd}");
    }
}
