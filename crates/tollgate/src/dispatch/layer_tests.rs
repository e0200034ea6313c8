//! Each dispatch layer alone, over a scripted inner service (`tower::service_fn`), under paused
//! time: the retry layer's waits to the millisecond, the fallback layer's order, key selection
//! never repeating a key in one request.

use super::backoff::{Backoff, RetryBudget};
use super::decision::Then;
use super::fallback::{FallbackLayer, Routed};
use super::handles::Handles;
use super::retry::{RetryLayer, RetryShared, TargetCall, TargetEnd};
use super::select::{AttemptCall, KeySelectLayer, Missed, SelectShared};
use super::trail::Trail;
use crate::config::{Config, Settings};
use crate::key_pool::KeyPool;
use crate::metrics::Metrics;
use crate::provider::classify::{Kind, Verdict};
use crate::provider::{Exchange, Provider, Raw};
use crate::request::{Answer, GatewayRequest, KeyedCall, Served, Target};
use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use rand::SeedableRng;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tower::{service_fn, Layer, ServiceExt};

fn settings(providers: &[&str]) -> Arc<Settings> {
    let mut toml = String::new();
    for (i, p) in providers.iter().enumerate() {
        toml.push_str(&format!("[[providers]]\nname = \"{p}\"\nbase_url = \"http://{p}/v1\"\ndefault = {}\nkeys = [{{ id = \"a\", secret = \"a\" }}, {{ id = \"b\", secret = \"b\" }}]\n", i == 0));
    }
    Arc::new(
        Config::from_toml(&toml)
            .unwrap()
            .validate_with(&|_| None)
            .unwrap(),
    )
}

fn request() -> Arc<GatewayRequest> {
    Arc::new(GatewayRequest::for_test(
        Method::POST,
        "chat/completions",
        Bytes::from_static(br#"{"model":"m"}"#),
    ))
}

fn answer(provider: &str) -> Answer {
    Answer {
        status: StatusCode::OK,
        headers: HeaderMap::new(),
        body: Body::empty(),
        provider: provider.into(),
        key: "a".into(),
        attempts: 1,
        served: Served::FirstTry,
        hold: None,
    }
}

fn target(provider: usize) -> Target {
    Target {
        provider,
        model: None,
        max_tokens: 16,
        context_window: None,
        fit_max_tokens: false,
        reasoning: false,
    }
}

fn retry_layer(pools: Vec<Arc<KeyPool>>, metrics: &Metrics) -> RetryLayer {
    RetryLayer::new(RetryShared {
        pools: pools.into(),
        budgets: vec![RetryBudget::new(
            100,
            100,
            Duration::from_secs(10),
            Instant::now(),
        )]
        .into(),
        backoff: Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        },
        rng: Mutex::new(rand::rngs::SmallRng::seed_from_u64(1)),
        max_attempts: 3,
        max_queue_wait: Duration::from_secs(1),
        metrics: metrics.clone(),
        provider_names: vec!["p".into()],
    })
}

#[tokio::test(start_paused = true)]
async fn retry_reuses_a_failed_key_only_after_the_wait_it_asked_for() {
    let metrics = Metrics::new().unwrap();
    let retry = retry_layer(vec![crate::key_pool::test_pool(&["a"], &metrics)], &metrics);
    let calls: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let seen = Arc::clone(&calls);
    let inner = service_fn(move |call: AttemptCall| {
        let seen = Arc::clone(&seen);
        async move {
            let mut log = seen.lock().unwrap();
            log.push(Instant::now());
            if log.len() == 2 {
                return Ok(answer("p"));
            }
            // What key selection records for a 503 that asked for 1.5 s.
            let mut walk = call.trail.lock();
            walk.attempts.push(super::trail::AttemptRecord {
                provider: 0,
                key: "a".into(),
                kind: Kind::Transient,
                status: Some(503),
                detail: None,
            });
            walk.soften((0, 0), Instant::now() + Duration::from_millis(1500));
            Err(Missed::Failed(Then::Retry))
        }
    });
    let turn = TargetCall {
        req: request(),
        target: target(0),
        body: Bytes::new(),
        trail: Trail::default(),
        is_last: true,
        targets_after: 0,
        fallback: false,
    };
    let start = Instant::now();
    let answer = retry.layer(inner).oneshot(turn).await.unwrap();
    assert_eq!(answer.status, 200);
    let log = calls.lock().unwrap().clone();
    assert_eq!(log[0], start, "the first attempt goes at once");
    assert_eq!(
        log[1] - log[0],
        Duration::from_millis(1500),
        "then exactly the asked wait"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_gives_up_on_a_target_after_max_attempts() {
    let metrics = Metrics::new().unwrap();
    let retry = retry_layer(
        vec![crate::key_pool::test_pool(&["a", "b", "c", "d"], &metrics)],
        &metrics,
    );
    let count = Arc::new(Mutex::new(0));
    let n = Arc::clone(&count);
    let inner = service_fn(move |_: AttemptCall| {
        *n.lock().unwrap() += 1;
        async { Err::<Answer, _>(Missed::Failed(Then::Retry)) }
    });
    let turn = TargetCall {
        req: request(),
        target: target(0),
        body: Bytes::new(),
        trail: Trail::default(),
        is_last: false,
        targets_after: 1,
        fallback: false,
    };
    let end = retry.layer(inner).oneshot(turn).await.unwrap_err();
    assert!(
        matches!(end, TargetEnd::Next("attempts_exhausted")),
        "{end:?}"
    );
    assert_eq!(*count.lock().unwrap(), 3);
}

#[tokio::test(start_paused = true)]
async fn fallback_walks_the_chain_in_order_and_counts_the_move() {
    let settings = settings(&["p", "q", "r"]);
    let metrics = Metrics::new().unwrap();
    let providers: Arc<[Provider]> = settings
        .providers
        .iter()
        .map(|p| Provider::new(p.clone()))
        .collect();
    let budgets: Arc<[RetryBudget]> = (0..3)
        .map(|_| RetryBudget::new(20, 10, Duration::from_secs(10), Instant::now()))
        .collect();
    let fallback = FallbackLayer::new(providers, budgets, metrics.clone());
    let order: Arc<Mutex<Vec<(usize, bool, bool)>>> = Arc::default();
    let seen = Arc::clone(&order);
    let inner = service_fn(move |turn: TargetCall| {
        seen.lock()
            .unwrap()
            .push((turn.target.provider, turn.fallback, turn.is_last));
        async move {
            match turn.target.provider {
                0 => Err(TargetEnd::Next("attempts_exhausted")),
                _ => Ok(answer("q")),
            }
        }
    });
    let routed = Routed {
        req: request(),
        chain: vec![target(0), target(1), target(2)].into(),
    };
    let answer = fallback.layer(inner).oneshot(routed).await.unwrap();
    assert_eq!(answer.provider, "q");
    assert_eq!(
        *order.lock().unwrap(),
        [(0, false, false), (1, true, false)],
        "p first, then q as a fallback; r never asked"
    );
    assert!(metrics
        .render()
        .contains(r#"tollgate_fallbacks_total{from="p",reason="no_key",to="q"} 1"#));
}

#[tokio::test(start_paused = true)]
async fn key_selection_never_gives_a_request_the_same_key_twice() {
    let settings = settings(&["p"]);
    let metrics = Metrics::new().unwrap();
    let limiter = Arc::new(crate::rate_limit::Limiter::new(&settings.state, &metrics));
    let select = KeySelectLayer::new(SelectShared {
        pools: vec![crate::key_pool::test_pool(&["a", "b"], &metrics)].into(),
        health: crate::key_pool::store::for_limiter(&limiter),
        limiter,
        handles: Arc::new(Handles::new(&settings, &metrics)),
        metrics: metrics.clone(),
        idle_timeout: Duration::from_secs(60),
        max_event: 1 << 20,
        max_delay: Duration::from_secs(20),
        records: Arc::new(crate::ownership::records::Records::new(Arc::new(
            crate::key_pool::store::MemoryHealth,
        ))),
    });
    let keys: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = Arc::clone(&keys);
    // Every key answers 429: each is cooled and excluded for the rest of the request.
    let provider = service_fn(move |call: KeyedCall| {
        seen.lock().unwrap().push(call.key.id().to_owned());
        async {
            Ok::<_, std::convert::Infallible>(Exchange {
                raw: Raw::Error {
                    status: StatusCode::TOO_MANY_REQUESTS,
                    headers: HeaderMap::new(),
                    body: Bytes::from_static(b"{}"),
                },
                verdict: Verdict {
                    kind: Kind::RateLimited,
                    wait: Some(Duration::from_secs(2)),
                },
                status: Some(429),
                elapsed: Duration::from_millis(5),
                span: tracing::Span::none(),
            })
        }
    });
    let svc = select.layer(provider);
    let trail = Trail::default();
    let attempt = AttemptCall {
        req: request(),
        target: target(0),
        body: Bytes::new(),
        trail: trail.clone(),
        served: Served::FirstTry,
        deadline: Instant::now() + Duration::from_secs(60),
    };
    for _ in 0..2 {
        let missed = svc.clone().oneshot(attempt.clone()).await.unwrap_err();
        assert!(matches!(missed, Missed::Failed(Then::Retry)), "{missed:?}");
    }
    let third = svc.clone().oneshot(attempt.clone()).await.unwrap_err();
    assert!(matches!(third, Missed::NoKey(_)), "{third:?}");
    let mut tried = keys.lock().unwrap().clone();
    tried.sort();
    assert_eq!(tried, ["a", "b"], "each key once, then no key");
    let walk = trail.lock();
    assert_eq!(walk.attempts.len(), 2);
    assert_eq!(
        walk.recovery.cooling,
        Some(Instant::now() + Duration::from_secs(2))
    );
}
