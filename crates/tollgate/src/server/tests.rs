//! The app as a service, no sockets: a panic inside a request becomes an OpenAI-shaped 500 and
//! the app keeps serving.

use crate::config::Config;
use crate::metrics::Metrics;
use crate::upstream::{Upstream, UpstreamError, UpstreamRequest, UpstreamResponse};
use crate::{build_app, Deps};
use axum::body::Body;
use futures_util::future::BoxFuture;
use http::Request;
use http_body_util::BodyExt;
use std::sync::Arc;
use tower::ServiceExt;

struct PanickingUpstream;

impl Upstream for PanickingUpstream {
    fn send(
        &self,
        _req: UpstreamRequest,
    ) -> BoxFuture<'static, Result<UpstreamResponse, UpstreamError>> {
        Box::pin(async { panic!("bug in the upstream layer") })
    }
}

fn app() -> crate::server::App {
    let toml = "[[providers]]\nname = \"p\"\nbase_url = \"http://p/v1\"\ndefault = true\nkeys = [{ id = \"k\", secret = \"sk\" }]\n";
    let settings = Arc::new(
        Config::from_toml(toml)
            .unwrap()
            .validate_with(&|_| None)
            .unwrap(),
    );
    let deps = Deps {
        upstream: Arc::new(PanickingUpstream),
        metrics: Metrics::new().unwrap(),
        seed: 1,
    };
    build_app(settings, deps, None).0
}

#[tokio::test]
async fn a_panic_becomes_an_openai_shaped_500_and_the_app_keeps_serving() {
    let app = app();
    let req = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("x-request-id", "req-panic")
        .body(Body::from(r#"{"model":"m","messages":[]}"#))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 500);
    let body: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["error"]["type"], "server_error");
    assert_eq!(body["error"]["code"], "internal_error");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("req-panic"));
    let health = app
        .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn a_connection_from_a_remote_peer_meets_open_mode_and_a_local_one_does_not() {
    // No clients and `server.open` unset: open mode for loopback peers only.
    let status = |peer: &str, path: &str| {
        let app = app().for_peer(peer.parse().unwrap());
        let req = Request::get(path).body(Body::empty()).unwrap();
        async move { app.oneshot(req).await.unwrap().status() }
    };
    assert_eq!(status("10.1.2.3:5000", "/v1/models").await, 403);
    assert_eq!(status("[2001:db8::1]:443", "/v1/models").await, 403);
    // Past open mode (this app's upstream panics: the edge's 500).
    assert_eq!(status("127.0.0.1:5000", "/v1/models").await, 500);
    assert_eq!(status("[::1]:5000", "/v1/models").await, 500);
    // Health is not behind open mode.
    assert_eq!(status("10.1.2.3:5000", "/healthz").await, 200);
}
