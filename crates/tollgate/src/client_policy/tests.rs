use super::*;
use crate::config::ClientSettings;
use crate::request::Served;
use axum::body::Body;
use bytes::Bytes;
use http::{Method, StatusCode};
use tower::service_fn;

fn client(rpm: u32, max_concurrent: Option<u32>) -> Arc<crate::auth::Client> {
    let auth = Auth::new(&[ClientSettings {
        name: "team".into(),
        key_sha256: crate::digest::sha256(b"k"),
        rpm: Some(rpm),
        tpm: None,
        max_concurrent,
        models: vec![],
        endpoints: Default::default(),
        forward_headers: Default::default(),
        max_body: None,
    }]);
    auth.authenticate_key(Some("k")).unwrap().unwrap()
}

fn layer() -> (ClientLimitLayer, Metrics) {
    let metrics = Metrics::new().unwrap();
    let toml = "[[providers]]\nname = \"p\"\nbase_url = \"http://p/v1\"\nkeys = [{ id = \"a\", secret = \"a\" }]\n";
    let settings = crate::config::Config::from_toml(toml)
        .unwrap()
        .validate_with(&|_| None)
        .unwrap();
    let limiter = Arc::new(Limiter::new(&settings.state, &metrics));
    (
        ClientLimitLayer::new(limiter, metrics.clone(), false, 16),
        metrics,
    )
}

fn request(client: &Arc<crate::auth::Client>) -> GatewayRequest {
    let mut req = GatewayRequest::for_test(Method::POST, "chat/completions", Bytes::new());
    req.client = Some(Arc::clone(client));
    req
}

fn ok(_: GatewayRequest) -> std::future::Ready<Result<Answer, GatewayError>> {
    std::future::ready(Ok(Answer {
        status: StatusCode::OK,
        headers: HeaderMap::new(),
        body: Body::empty(),
        provider: "p".into(),
        key: "a".into(),
        attempts: 1,
        served: Served::FirstTry,
        hold: None,
    }))
}

#[tokio::test(start_paused = true)]
async fn an_empty_bucket_answers_429_with_the_wait_and_the_client_headers() {
    let (layer, metrics) = layer();
    let svc = layer.layer(service_fn(ok));
    let team = client(2, None);
    for remaining in ["1", "0"] {
        let answer = svc.clone().oneshot(request(&team)).await.unwrap();
        assert_eq!(answer.headers["x-ratelimit-limit-requests"], "2");
        assert_eq!(answer.headers["x-ratelimit-remaining-requests"], remaining);
    }
    let err = svc.clone().oneshot(request(&team)).await.unwrap_err();
    let resp = err.to_response();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "30");
    assert!(metrics
        .render()
        .contains(r#"tollgate_rate_limited_total{dimension="requests",scope="client"} 1"#));
}

#[tokio::test(start_paused = true)]
async fn the_concurrency_slot_is_held_until_the_body_is_dropped() {
    let (layer, _) = layer();
    let svc = layer.layer(service_fn(ok));
    let team = client(100, Some(1));
    let first = svc.clone().oneshot(request(&team)).await.unwrap();
    let err = svc.clone().oneshot(request(&team)).await.unwrap_err();
    assert_eq!(
        err.to_response().status(),
        429,
        "the first answer's body holds the slot"
    );
    drop(first);
    assert!(svc.clone().oneshot(request(&team)).await.is_ok());
}

#[tokio::test]
async fn the_layer_refuses_unknown_keys_and_models_outside_the_allow_list() {
    use crate::request::Served;
    use tower::{service_fn, ServiceExt};
    let auth = Arc::new(Auth::new(&[ClientSettings {
        name: "team".into(),
        key_sha256: crate::digest::sha256(b"k"),
        rpm: None,
        tpm: None,
        max_concurrent: None,
        models: vec!["m".into()],
        endpoints: Default::default(),
        forward_headers: Default::default(),
        max_body: None,
    }]));
    let inner = service_fn(|req: GatewayRequest| async move {
        assert_eq!(
            req.client.as_ref().map(|c| c.settings.name.as_str()),
            Some("team")
        );
        Ok::<_, GatewayError>(Answer {
            status: http::StatusCode::OK,
            headers: HeaderMap::new(),
            body: axum::body::Body::empty(),
            provider: "p".into(),
            key: "a".into(),
            attempts: 1,
            served: Served::FirstTry,
            hold: None,
        })
    });
    let svc = ClientAuthLayer::new(auth).layer(inner);
    let req = |key: Option<&str>, model: &str| {
        let body = bytes::Bytes::from(format!(r#"{{"model":"{model}"}}"#));
        let mut r = GatewayRequest::for_test(http::Method::POST, "chat/completions", body);
        r.credential = key.map(Box::from);
        r
    };
    let status = |r: Result<Answer, GatewayError>| match r {
        Ok(a) => a.status.as_u16(),
        Err(e) => e.status().as_u16(),
    };
    assert_eq!(status(svc.clone().oneshot(req(Some("k"), "m")).await), 200);
    assert_eq!(status(svc.clone().oneshot(req(None, "m")).await), 401);
    assert_eq!(status(svc.clone().oneshot(req(Some("x"), "m")).await), 401);
    assert_eq!(
        status(svc.clone().oneshot(req(Some("k"), "other")).await),
        403
    );
}

fn metered(rpm: u32, tpm: u32) -> Arc<crate::auth::Client> {
    let auth = Auth::new(&[ClientSettings {
        name: "team".into(),
        key_sha256: crate::digest::sha256(b"k"),
        rpm: Some(rpm),
        tpm: Some(tpm),
        max_concurrent: None,
        models: vec![],
        endpoints: Default::default(),
        forward_headers: Default::default(),
        max_body: None,
    }]);
    auth.authenticate_key(Some("k")).unwrap().unwrap()
}

/// A chat request estimated at 603 tokens (3 to prime the answer, 600 allowed).
fn estimated(client: &Arc<crate::auth::Client>) -> GatewayRequest {
    let body = Bytes::from_static(br#"{"model":"m","messages":[],"max_tokens":600}"#);
    let mut req = GatewayRequest::for_test(Method::POST, "chat/completions", body);
    req.client = Some(Arc::clone(client));
    req
}

/// An error answer made below the client limit after `attempts` upstream attempts.
fn failed(
    attempts: u32,
) -> impl Fn(GatewayRequest) -> std::future::Ready<Result<Answer, GatewayError>> + Clone {
    move |_| {
        std::future::ready(Ok(Answer {
            status: StatusCode::BAD_GATEWAY,
            headers: HeaderMap::new(),
            body: Body::empty(),
            provider: "p".into(),
            key: "a".into(),
            attempts,
            served: Served::Failed,
            hold: None,
        }))
    }
}

fn remaining(answer: &Answer) -> (&str, &str) {
    let header = |name: &str| answer.headers[name].to_str().unwrap();
    (
        header("x-ratelimit-remaining-requests"),
        header("x-ratelimit-remaining-tokens"),
    )
}

#[tokio::test(start_paused = true)]
async fn a_request_the_gateway_refuses_costs_the_client_nothing() {
    let (layer, _) = layer();
    let team = metered(2, 1000);
    let unknown = layer.layer(service_fn(|_: GatewayRequest| {
        std::future::ready(Err::<Answer, _>(GatewayError::ModelNotFound("m".into())))
    }));
    let no_attempt = layer.layer(service_fn(failed(0)));
    for _ in 0..3 {
        let err = unknown.clone().oneshot(estimated(&team)).await.unwrap_err();
        assert_eq!(err.status(), 404);
        let answer = no_attempt.clone().oneshot(estimated(&team)).await.unwrap();
        assert_eq!(answer.status, 502);
        assert_eq!(remaining(&answer), ("2", "1000"));
    }
    let served = layer.layer(service_fn(ok));
    let answer = served.oneshot(estimated(&team)).await.unwrap();
    assert_eq!(
        remaining(&answer),
        ("1", "397"),
        "six refusals took neither requests nor tokens"
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_whose_attempts_all_failed_gives_its_tokens_back() {
    let (layer, _) = layer();
    let team = metered(3, 1000);
    let answer = layer
        .layer(service_fn(failed(2)))
        .oneshot(estimated(&team))
        .await
        .unwrap();
    assert_eq!(
        remaining(&answer),
        ("2", "1000"),
        "the failed answer's headers show the refund"
    );
    assert_eq!(answer.headers["x-ratelimit-reset-tokens"], "0ms");
    let answer = layer
        .layer(service_fn(ok))
        .oneshot(estimated(&team))
        .await
        .unwrap();
    assert_eq!(
        remaining(&answer),
        ("1", "397"),
        "the request counted, its tokens came back"
    );
}

#[tokio::test(start_paused = true)]
async fn an_allowance_no_bucket_can_count_is_a_400_naming_its_field() {
    let (with_client, _) = layer();
    let (open, metrics) = layer();
    // Open mode whose keys have TPM limits: the request is estimated all the same.
    let open = ClientLimitLayer::new(
        Arc::clone(&open.policy().limiter),
        metrics,
        true,
        open.policy().default_max_tokens,
    );
    let unreachable = |_: GatewayRequest| -> std::future::Ready<Result<Answer, GatewayError>> {
        panic!("an uncountable request is never forwarded")
    };
    let team = metered(10, 1000);
    for (param, value) in [("max_tokens", u64::MAX), ("max_completion_tokens", 1 << 63)] {
        let body = Bytes::from(format!(
            r#"{{"model":"m","messages":[],"{param}":{value}}}"#
        ));
        let open_req = GatewayRequest::for_test(Method::POST, "chat/completions", body);
        let mut client_req = open_req.clone();
        client_req.client = Some(Arc::clone(&team));
        for (svc, req) in [(&open, open_req), (&with_client, client_req)] {
            let err = svc
                .layer(service_fn(unreachable))
                .oneshot(req)
                .await
                .unwrap_err();
            let resp = err.to_response();
            assert_eq!(resp.status(), 400);
            assert_eq!(err.param(), Some(param));
            assert_eq!(err.code(), Some("integer_above_max_value"));
            assert!(err.to_string().contains(&value.to_string()), "{err}");
        }
    }
    let answer = with_client
        .layer(service_fn(ok))
        .oneshot(estimated(&team))
        .await
        .unwrap();
    assert_eq!(
        remaining(&answer),
        ("9", "397"),
        "the refusals took nothing"
    );
}
