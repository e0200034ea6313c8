use super::*;
use crate::config::{Backend, Secret, StateSettings};

fn memory() -> Limiter {
    let state = StateSettings {
        backend: Backend::Memory,
        redis_url: Secret::new(""),
        redis_timeout: Duration::from_millis(10),
        replicas: 1,
        key_prefix: "t".into(),
    };
    Limiter::new(&state, &Metrics::new().unwrap())
}

#[tokio::test(start_paused = true)]
async fn requests_bucket_refuses_the_61st_request_with_its_wait() {
    let l = memory();
    let limits = Limits {
        rpm: Some(60),
        tpm: None,
    };
    for i in 0..60 {
        let levels = l.take("c", limits, 0).await.unwrap().levels;
        assert_eq!(levels.requests.unwrap().remaining, 59 - i);
    }
    let refused = l.take("c", limits, 0).await.unwrap_err();
    assert_eq!(
        refused,
        Refused {
            dimension: Dimension::Requests,
            wait: Some(Duration::from_secs(1))
        }
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(l.take("c", limits, 0).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn take_is_all_or_nothing() {
    let l = memory();
    let limits = Limits {
        rpm: Some(10),
        tpm: Some(600),
    };
    let refused = l.take("c", limits, 700).await.unwrap_err();
    assert_eq!(
        refused,
        Refused {
            dimension: Dimension::Tokens,
            wait: None
        }
    );
    l.take("c", limits, 500).await.unwrap();
    let refused = l.take("c", limits, 200).await.unwrap_err();
    assert_eq!(
        refused,
        Refused {
            dimension: Dimension::Tokens,
            wait: Some(Duration::from_secs(10))
        }
    );
    let levels = l.take("c", limits, 100).await.unwrap().levels;
    assert_eq!(
        levels.requests.unwrap().remaining,
        8,
        "the refused take took no request"
    );
    assert_eq!(levels.tokens.unwrap().remaining, 0);
}

#[tokio::test(start_paused = true)]
async fn reconcile_refunds_the_estimate_and_sync_lowers_levels() {
    let l = memory();
    let limits = Limits {
        rpm: Some(100),
        tpm: Some(1000),
    };
    l.take("k", limits, 800).await.unwrap();
    l.reconcile("k", limits, 800, 100).await;
    let levels = l.take("k", limits, 0).await.unwrap().levels;
    assert_eq!(levels.tokens.unwrap().remaining, 900);
    l.sync("k", limits, Some(3), Some(50)).await;
    let levels = l.take("k", limits, 0).await.unwrap().levels;
    assert_eq!(levels.requests.unwrap().remaining, 2);
    assert_eq!(levels.tokens.unwrap().remaining, 50);
}

#[tokio::test(start_paused = true)]
async fn a_refund_gives_back_what_the_take_charged_and_no_more() {
    let l = memory();
    let limits = Limits {
        rpm: Some(10),
        tpm: Some(1000),
    };
    let first = l.take("k", limits, 400).await.unwrap();
    assert_eq!(first.charge.tokens(), 400);
    let second = l.take("k", limits, 300).await.unwrap();
    assert_eq!(second.levels.tokens.unwrap().remaining, 300);
    l.refund("k", limits, second.charge.tokens_only()).await;
    let levels = l.take("k", limits, 0).await.unwrap().levels;
    assert_eq!(levels.tokens.unwrap().remaining, 600);
    assert_eq!(
        levels.requests.unwrap().remaining,
        7,
        "a tokens-only refund keeps the request"
    );
    l.refund("k", limits, first.charge).await;
    let levels = l.take("k", limits, 0).await.unwrap().levels;
    assert_eq!(levels.tokens.unwrap().remaining, 1000);
    assert_eq!(
        levels.requests.unwrap().remaining,
        7,
        "6 taken, 1 given back"
    );
}

#[tokio::test(start_paused = true)]
async fn an_unlimited_pair_charges_nothing() {
    let l = memory();
    let taken = l.take("k", Limits::default(), 500).await.unwrap();
    assert_eq!(taken, Taken::default());
    let rpm_only = Limits {
        rpm: Some(5),
        tpm: None,
    };
    let taken = l.take("k", rpm_only, 500).await.unwrap();
    assert_eq!(taken.charge.tokens(), 0, "no token bucket, no token charge");
}

#[tokio::test(start_paused = true)]
async fn numbers_beyond_the_stores_are_clamped() {
    let l = memory();
    let limits = Limits {
        rpm: None,
        tpm: Some(100_000),
    };
    let refused = l.take("c", limits, u64::MAX).await.unwrap_err();
    assert_eq!(refused.wait, None, "larger than the limit: never");
    let taken = l.take("c", limits, 1000).await.unwrap();
    l.reconcile("c", limits, 1000, u64::MAX).await;
    let refused = l.take("c", limits, 1).await.unwrap_err();
    let wait = refused.wait.unwrap();
    assert!(
        wait <= Duration::from_secs(61),
        "one minute of debt at most: {wait:?}"
    );
    assert!(tokio::time::Instant::now().checked_add(wait).is_some());
    tokio::time::advance(wait + Duration::from_millis(1)).await;
    assert!(l.take("c", limits, 1).await.is_ok());
    l.refund("c", limits, taken.charge).await;
    l.reconcile("c", limits, u64::MAX, 0).await;
    let levels = l.take("c", limits, 0).await.unwrap().levels;
    assert_eq!(levels.tokens.unwrap().remaining, 100_000);
}

#[test]
fn provider_headers_are_read_and_sentinels_ignored() {
    let mut h = http::HeaderMap::new();
    h.insert("x-ratelimit-remaining-requests", "42".parse().unwrap());
    h.insert("x-ratelimit-remaining-tokens", "-1".parse().unwrap());
    assert_eq!(remaining_from_headers(&h), (Some(42), None));
    let mut a = http::HeaderMap::new();
    a.insert(
        "anthropic-ratelimit-tokens-remaining",
        "9000".parse().unwrap(),
    );
    assert_eq!(remaining_from_headers(&a), (None, Some(9000)));
    // OpenAI's names win; a name's first value counts; an unreadable one is unknown.
    let mut both = http::HeaderMap::new();
    both.append("x-ratelimit-remaining-requests", "7".parse().unwrap());
    both.append("x-ratelimit-remaining-requests", "8".parse().unwrap());
    both.insert(
        "anthropic-ratelimit-requests-remaining",
        "9".parse().unwrap(),
    );
    both.insert("x-ratelimit-remaining-tokens", "lots".parse().unwrap());
    both.insert("anthropic-ratelimit-tokens-remaining", "5".parse().unwrap());
    assert_eq!(remaining_from_headers(&both), (Some(7), Some(5)));
    let mut sentinel = http::HeaderMap::new();
    sentinel.insert("x-ratelimit-remaining-requests", "-1".parse().unwrap());
    sentinel.insert(
        "anthropic-ratelimit-requests-remaining",
        "9".parse().unwrap(),
    );
    assert_eq!(remaining_from_headers(&sentinel), (None, None));
}
