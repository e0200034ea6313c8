//! Dispatch policies under paused time with a scripted in-process upstream: attempt order,
//! waits to the millisecond, budget, deadline, fallback, probing.

use crate::config::Config;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::request::{Answer, GatewayRequest, Served};
use crate::stack::{GatewayService, Parts};
use crate::upstream::{Upstream, UpstreamError, UpstreamRequest, UpstreamResponse};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream;
use http::Method;
use http::{HeaderMap, StatusCode};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tower::ServiceExt;

#[derive(Clone, Debug)]
enum Reply {
    Ok,
    Status(u16, &'static [(&'static str, &'static str)], &'static str),
    Hang,
    Refused,
    StreamErrorFirst,
}

#[derive(Default)]
struct Fake {
    scripts: Mutex<HashMap<String, VecDeque<Reply>>>,
    always: Mutex<HashMap<String, Reply>>,
    log: Mutex<Vec<(String, String, Instant)>>,
}

impl Fake {
    fn script(&self, key: &str, replies: impl IntoIterator<Item = Reply>) {
        self.scripts
            .lock()
            .unwrap()
            .entry(format!("Bearer {key}"))
            .or_default()
            .extend(replies);
    }
    fn always(&self, key: &str, reply: Reply) {
        self.always
            .lock()
            .unwrap()
            .insert(format!("Bearer {key}"), reply);
    }
    /// (key secret, url, time) of every request.
    fn log(&self) -> Vec<(String, String, Instant)> {
        self.log.lock().unwrap().clone()
    }
    fn keys(&self) -> Vec<String> {
        self.log().into_iter().map(|(k, _, _)| k).collect()
    }
}

struct FakeUpstream(Arc<Fake>);

impl Upstream for FakeUpstream {
    fn send(
        &self,
        req: UpstreamRequest,
    ) -> BoxFuture<'static, Result<UpstreamResponse, UpstreamError>> {
        let auth = req
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let fake = self.0.clone();
        Box::pin(async move {
            fake.log.lock().unwrap().push((
                auth.trim_start_matches("Bearer ").to_owned(),
                req.url.clone(),
                Instant::now(),
            ));
            let scripted = fake
                .scripts
                .lock()
                .unwrap()
                .get_mut(&auth)
                .and_then(|q| q.pop_front());
            let reply = scripted
                .or_else(|| fake.always.lock().unwrap().get(&auth).cloned())
                .unwrap_or(Reply::Ok);
            let mut headers = HeaderMap::new();
            let (status, body): (u16, Bytes) = match reply {
                Reply::Ok => (200, Bytes::from_static(b"{\"ok\":true}")),
                Reply::Status(s, hs, body) => {
                    for (k, v) in hs {
                        headers.insert(*k, v.parse().unwrap());
                    }
                    (s, Bytes::from_static(body.as_bytes()))
                }
                Reply::Hang => std::future::pending().await,
                Reply::Refused => return Err(UpstreamError::Connect("refused".into())),
                Reply::StreamErrorFirst => {
                    headers.insert("content-type", "text/event-stream".parse().unwrap());
                    (200, Bytes::from_static(b"data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}\n\n"))
                }
            };
            let body: crate::upstream::BodyStream = Box::pin(stream::iter([Ok(body)]));
            Ok(UpstreamResponse {
                status: StatusCode::from_u16(status).unwrap(),
                headers,
                body,
            })
        })
    }
}

const LIMITED: Reply = Reply::Status(
    429,
    &[("retry-after", "2")],
    r#"{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}"#,
);
const UNAVAILABLE: Reply = Reply::Status(
    503,
    &[],
    r#"{"error":{"message":"down","type":"server_error"}}"#,
);
const REVOKED: Reply = Reply::Status(
    401,
    &[],
    r#"{"error":{"message":"bad key","type":"invalid_request_error","code":"invalid_api_key"}}"#,
);

/// The stack from the route down, as the dispatch tests drive it.
struct Dispatch(GatewayService, Arc<crate::config::Settings>);

impl Dispatch {
    /// Serves `req` as the handler would: its model resolved against the settings first.
    async fn dispatch(&self, req: &GatewayRequest) -> Result<Answer, GatewayError> {
        let mut req = req.clone();
        req.model_index = req.model.as_deref().and_then(|m| self.1.model_index(m));
        self.0.clone().oneshot(req).await
    }

    /// Serves `req` and reads the error answer it must get (the gateway's own, or the
    /// upstream's passed through).
    async fn fail(&self, req: &GatewayRequest) -> Failed {
        use http_body_util::BodyExt;
        let answer = match self.dispatch(req).await {
            Ok(answer) => answer,
            Err(e) => {
                let (parts, body) = e.to_response().into_parts();
                Answer {
                    status: parts.status,
                    headers: parts.headers,
                    body,
                    provider: "-".into(),
                    key: "-".into(),
                    attempts: 0,
                    served: Served::Failed,
                    hold: None,
                }
            }
        };
        assert_eq!(answer.served, Served::Failed, "{answer:?}");
        let header = |name: &str| {
            answer
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let retry_after = header("retry-after-ms")
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
            .or_else(|| {
                header("retry-after")
                    .and_then(|v| v.parse().ok())
                    .map(Duration::from_secs)
            });
        let (status, attempts) = (answer.status.as_u16(), answer.attempts);
        let bytes = answer.body.collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        Failed {
            status,
            retry_after,
            attempts,
            message: json["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        }
    }
}

/// An error answer as the client reads it.
#[derive(Debug)]
struct Failed {
    status: u16,
    retry_after: Option<Duration>,
    attempts: u32,
    message: String,
}

fn setup(toml: &str) -> (Dispatch, Arc<Fake>, Metrics) {
    let settings = Arc::new(
        Config::from_toml(toml)
            .unwrap()
            .validate_with(&|_| None)
            .unwrap(),
    );
    let fake = Arc::new(Fake::default());
    let metrics = Metrics::new().unwrap();
    let limiter = Arc::new(crate::rate_limit::Limiter::new(&settings.state, &metrics));
    let health = crate::key_pool::store::for_limiter(&limiter);
    let parts = Parts {
        upstream: Arc::new(FakeUpstream(fake.clone())),
        records: Arc::new(crate::ownership::records::Records::new(Arc::clone(&health))),
        health,
        limiter,
        metrics: metrics.clone(),
        seed: 7,
    };
    let auth = Arc::new(crate::auth::Auth::new(&settings.clients));
    let gateway = crate::stack::gateway(&settings, auth, &parts, None);
    (Dispatch(gateway.dispatch, settings), fake, metrics)
}

fn providers(retry: &str, pools: &[(&str, &[&str])]) -> String {
    let mut s = format!("[retry]\nbase_delay = \"100ms\"\nmax_delay = \"1s\"\n{retry}\n");
    for (i, (name, keys)) in pools.iter().enumerate() {
        let keys: Vec<String> = keys
            .iter()
            .map(|k| format!("{{ id = \"{k}\", secret = \"{k}\" }}"))
            .collect();
        s.push_str(&format!("[[providers]]\nname = \"{name}\"\nbase_url = \"http://{name}/v1\"\ndefault = {}\nkeys = [{}]\n", i == 0, keys.join(", ")));
    }
    s
}

fn chain(names: &[&str]) -> String {
    let targets: Vec<String> = names
        .iter()
        .map(|n| format!("{{ provider = \"{n}\" }}"))
        .collect();
    format!(
        "[[models]]\nname = \"m\"\ntargets = [{}]\n",
        targets.join(", ")
    )
}

fn chat() -> GatewayRequest {
    GatewayRequest::for_test(
        Method::POST,
        "chat/completions",
        Bytes::from_static(br#"{"model":"m","messages":[]}"#),
    )
}

fn stream_chat() -> GatewayRequest {
    GatewayRequest::for_test(
        Method::POST,
        "chat/completions",
        Bytes::from_static(br#"{"model":"m","stream":true}"#),
    )
}

#[tokio::test(start_paused = true)]
async fn transient_retry_on_the_same_key_waits_at_least_retry_after_to_the_millisecond() {
    let (d, fake, _) = setup(&providers("", &[("p", &["a"])]));
    fake.script(
        "a",
        [Reply::Status(503, &[("retry-after-ms", "1500")], "{}")],
    );
    let answer = d.dispatch(&chat()).await.unwrap();
    assert_eq!(
        (answer.status.as_u16(), answer.attempts, answer.served),
        (200, 2, Served::AfterRetry)
    );
    let log = fake.log();
    assert_eq!(
        log[1].2 - log[0].2,
        Duration::from_millis(1500),
        "jitter (≤100ms) never undercuts the asked 1.5s"
    );
}

#[tokio::test(start_paused = true)]
async fn backoff_sequence_is_bounded_by_base_times_two_to_the_n() {
    let (d, fake, _) = setup(&providers("max_attempts = 4", &[("p", &["a"])]));
    fake.always("a", UNAVAILABLE);
    let err = d.fail(&chat()).await;
    assert_eq!(err.status, 502);
    let times: Vec<Instant> = fake.log().into_iter().map(|(_, _, t)| t).collect();
    assert_eq!(times.len(), 4);
    for (n, pair) in times.windows(2).enumerate() {
        let wait = pair[1] - pair[0];
        assert!(
            wait <= Duration::from_millis(100 << n),
            "retry {n} waited {wait:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_rate_limited_key_is_skipped_at_once_and_rests_for_retry_after() {
    let (d, fake, metrics) = setup(&providers("", &[("p", &["a", "b"])]));
    fake.script("a", [LIMITED]);
    fake.script("b", [LIMITED]);
    let start = Instant::now();
    // Both keys answer 429 once; the request gets 429 with the earliest recovery.
    let err = d.fail(&chat()).await;
    assert_eq!(err.status, 429);
    assert_eq!(err.retry_after, Some(Duration::from_secs(2)));
    assert_eq!(
        Instant::now(),
        start,
        "the second key was tried at once, no wait"
    );
    assert!(metrics
        .render()
        .contains(r#"tollgate_key_state{key="a",provider="p",state="cooling"} 1"#));
    // A new request waits for the earliest key (no fallback left) and goes exactly at 2 s.
    let answer = d.dispatch(&chat()).await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(fake.log().last().unwrap().2 - start, Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn a_revoked_key_is_disabled_and_never_tried_twice() {
    let (d, fake, _) = setup(&providers(
        "probe_interval = \"60s\"",
        &[("p", &["revoked", "limited", "good"])],
    ));
    fake.always("revoked", REVOKED);
    fake.script("limited", [LIMITED]);
    for _ in 0..50 {
        assert_eq!(d.dispatch(&chat()).await.unwrap().status, 200);
    }
    let keys = fake.keys();
    assert_eq!(keys.iter().filter(|k| *k == "revoked").count(), 1);
    assert_eq!(keys.iter().filter(|k| *k == "limited").count(), 1);
    // After the probe interval, one request probes the revoked key and moves on.
    tokio::time::advance(Duration::from_secs(61)).await;
    for _ in 0..5 {
        assert_eq!(d.dispatch(&chat()).await.unwrap().status, 200);
    }
    assert_eq!(
        fake.keys().iter().filter(|k| *k == "revoked").count(),
        2,
        "exactly one probe"
    );
}

#[tokio::test(start_paused = true)]
async fn every_key_tried_once_then_a_502_that_names_them() {
    let (d, fake, _) = setup(&providers("", &[("p", &["a", "b", "c"])]));
    for k in ["a", "b", "c"] {
        fake.always(k, REVOKED);
    }
    let err = d.fail(&chat()).await;
    assert_eq!(err.status, 502);
    assert_eq!(err.attempts, 3);
    let msg = err.message;
    for k in [
        "p/a: key_rejected (401)",
        "p/b: key_rejected (401)",
        "p/c: key_rejected (401)",
    ] {
        assert!(msg.contains(k), "{msg}");
    }
    let mut keys = fake.keys();
    keys.sort();
    assert_eq!(keys, ["a", "b", "c"]);
}

#[tokio::test(start_paused = true)]
async fn spent_budget_fails_fast_with_the_upstream_error() {
    let (d, fake, metrics) = setup(&providers(
        "budget_percent = 0\nbudget_min_per_sec = 0",
        &[("p", &["a", "b"])],
    ));
    fake.always("a", UNAVAILABLE);
    fake.always("b", UNAVAILABLE);
    let answer = d.dispatch(&chat()).await.unwrap();
    assert_eq!(
        (answer.status.as_u16(), answer.served),
        (503, Served::Failed)
    );
    assert_eq!(fake.log().len(), 1);
    assert!(metrics
        .render()
        .contains("tollgate_retry_budget_exhausted_total 1"));
}

#[tokio::test(start_paused = true)]
async fn no_wait_starts_that_would_end_past_the_deadline() {
    let (d, fake, _) = setup(&providers("", &[("p", &["a"])]));
    fake.script("a", [Reply::Status(503, &[("retry-after", "5")], "{}")]);
    let mut req = chat();
    req.deadline = Instant::now() + Duration::from_secs(1);
    let start = Instant::now();
    let err = d.fail(&req).await;
    assert_eq!(
        (err.status, err.retry_after),
        (503, Some(Duration::from_secs(5))),
        "the upstream's own answer: the wait it asked for does not fit"
    );
    assert_eq!(
        Instant::now(),
        start,
        "gave up at once instead of sleeping past the deadline"
    );
    assert_eq!(fake.log().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_hanging_upstream_times_out_per_attempt_and_then_falls_back() {
    let toml = format!(
        "[server]\nfirst_byte_timeout = \"2s\"\n{}{}",
        providers("max_attempts = 1", &[("p", &["a"]), ("q", &["b"])]),
        chain(&["p", "q"])
    );
    let (d, fake, metrics) = setup(&toml);
    fake.always("a", Reply::Hang);
    let start = Instant::now();
    let answer = d.dispatch(&chat()).await.unwrap();
    assert_eq!(
        (answer.provider.as_str(), answer.served),
        ("q", Served::AfterFallback)
    );
    assert_eq!(Instant::now() - start, Duration::from_secs(2));
    assert!(metrics
        .render()
        .contains(r#"tollgate_fallbacks_total{from="p",reason="timeout",to="q"} 1"#));
}

#[tokio::test(start_paused = true)]
async fn outage_falls_back_to_the_next_provider() {
    let toml = format!(
        "{}{}",
        providers("max_attempts = 2", &[("p", &["a", "b"]), ("q", &["c"])]),
        chain(&["p", "q"])
    );
    let (d, fake, metrics) = setup(&toml);
    fake.always("a", UNAVAILABLE);
    fake.always("b", Reply::Refused);
    let answer = d.dispatch(&chat()).await.unwrap();
    assert_eq!(
        (
            answer.provider.as_str(),
            answer.key.as_str(),
            answer.attempts
        ),
        ("q", "c", 3)
    );
    let text = metrics.render();
    assert!(
        text.contains(
            r#"tollgate_upstream_attempts_total{key="a",outcome_kind="transient",provider="p"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"tollgate_retries_total{provider="p",reason="transient"} 1"#),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn context_too_long_moves_to_the_next_target_without_retrying() {
    let toml = format!(
        "{}{}",
        providers("", &[("p", &["a", "b"]), ("q", &["c"])]),
        chain(&["p", "q"])
    );
    let (d, fake, _) = setup(&toml);
    fake.always("a", Reply::Status(400, &[], r#"{"error":{"message":"too long","type":"invalid_request_error","code":"context_length_exceeded"}}"#));
    fake.always("b", Reply::Status(400, &[], r#"{"error":{"message":"too long","type":"invalid_request_error","code":"context_length_exceeded"}}"#));
    let answer = d.dispatch(&chat()).await.unwrap();
    assert_eq!(answer.provider, "q");
    assert_eq!(fake.keys().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn context_too_long_on_the_last_target_returns_the_upstream_400() {
    let (d, fake, _) = setup(&providers("", &[("p", &["a"])]));
    fake.always("a", Reply::Status(400, &[], r#"{"error":{"message":"too long","type":"invalid_request_error","code":"context_length_exceeded"}}"#));
    let answer = d.dispatch(&chat()).await.unwrap();
    assert_eq!(
        (answer.status.as_u16(), answer.served),
        (400, Served::Failed)
    );
}

#[tokio::test(start_paused = true)]
async fn a_stream_failing_before_its_first_event_is_retried_on_another_key() {
    let (d, fake, _) = setup(&providers("", &[("p", &["a", "b"])]));
    fake.script("a", [Reply::StreamErrorFirst]);
    fake.script("b", [Reply::StreamErrorFirst]);
    fake.always("a", Reply::Ok);
    let answer = d.dispatch(&stream_chat()).await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.attempts, 3,
        "a and b failed with an error event, then a again after backoff"
    );
}

#[tokio::test(start_paused = true)]
async fn unknown_model_without_default_is_404_and_unknown_model_with_default_passes_through() {
    let toml = providers("", &[("p", &["a"])]).replace("default = true", "default = false");
    let (d, _, _) = setup(&toml);
    let mut req = chat();
    req.model = Some("nope".into());
    assert_eq!(d.fail(&req).await.status, 404);
    let (d, fake, _) = setup(&providers("", &[("p", &["a"])]));
    assert_eq!(d.dispatch(&req).await.unwrap().status, 200);
    assert_eq!(fake.log()[0].1, "http://p/v1/chat/completions");
}

#[tokio::test(start_paused = true)]
async fn a_key_without_capacity_is_waited_for_up_to_max_queue_wait() {
    let toml = "[limits]\nmax_queue_wait = \"2s\"\n[[providers]]\nname = \"p\"\nbase_url = \"http://p/v1\"\ndefault = true\nkeys = [{ id = \"a\", secret = \"a\", rpm = 60 }]\n";
    let (d, fake, metrics) = setup(toml);
    let start = Instant::now();
    for _ in 0..60 {
        assert_eq!(d.dispatch(&chat()).await.unwrap().status, 200);
    }
    assert_eq!(Instant::now(), start, "the burst fits in the bucket");
    assert_eq!(d.dispatch(&chat()).await.unwrap().status, 200);
    assert_eq!(
        Instant::now() - start,
        Duration::from_secs(1),
        "the 61st waited exactly one refill"
    );
    assert_eq!(fake.log().len(), 61);
    assert!(metrics
        .render()
        .contains("tollgate_ratelimit_wait_seconds_count 1"));
    let slow = "[limits]\nmax_queue_wait = \"500ms\"\n[[providers]]\nname = \"p\"\nbase_url = \"http://p/v1\"\ndefault = true\nkeys = [{ id = \"a\", secret = \"a\", rpm = 60 }]\n";
    let (d, _, _) = setup(slow);
    for _ in 0..60 {
        d.dispatch(&chat()).await.unwrap();
    }
    let err = d.fail(&chat()).await;
    assert_eq!(
        err.status, 429,
        "a refill longer than max_queue_wait is not waited for"
    );
    assert_eq!(err.retry_after, Some(Duration::from_secs(1)));
}

mod faults;
mod refunds;
