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
        let levels = l.take("c", limits, 0).await.unwrap();
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
    let levels = l.take("c", limits, 100).await.unwrap();
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
    let levels = l.take("k", limits, 0).await.unwrap();
    assert_eq!(levels.tokens.unwrap().remaining, 900);
    l.sync("k", limits, Some(3), Some(50)).await;
    let levels = l.take("k", limits, 0).await.unwrap();
    assert_eq!(levels.requests.unwrap().remaining, 2);
    assert_eq!(levels.tokens.unwrap().remaining, 50);
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
}
