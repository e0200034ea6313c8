use super::*;
use crate::config::Secret;

fn pool(ids: &[&str]) -> (Arc<KeyPool>, Metrics) {
    let metrics = Metrics::new().unwrap();
    (test_pool(ids, &metrics), metrics)
}

const NONE: &dyn Fn(usize) -> bool = &|_| false;

#[tokio::test(start_paused = true)]
async fn never_selects_an_excluded_key() {
    let (pool, _) = pool(&["a", "b", "c"]);
    let now = Instant::now();
    for _ in 0..30 {
        let lease = pool.select(&|i| i != 1, now).unwrap();
        assert_eq!(lease.id(), "b");
    }
    assert_eq!(
        pool.select(&|_| true, now).unwrap_err(),
        Recovery::default()
    );
}

#[tokio::test(start_paused = true)]
async fn prefers_the_least_loaded_key_and_rotates_ties() {
    let (pool, _) = pool(&["a", "b", "c"]);
    let now = Instant::now();
    let held: Vec<Lease> = (0..3).map(|_| pool.select(NONE, now).unwrap()).collect();
    let mut ids: Vec<&str> = held.iter().map(|l| l.id()).collect();
    ids.sort();
    assert_eq!(
        ids,
        ["a", "b", "c"],
        "each key got one while others were busy"
    );
    drop(held);
    let a = pool.select(&|i| i != 0, now).unwrap();
    for _ in 0..5 {
        let l = pool.select(NONE, now).unwrap();
        assert_ne!(l.id(), "a", "a is busy, b and c are idle");
    }
    drop(a);
}

#[tokio::test(start_paused = true)]
async fn a_cooling_key_rests_exactly_as_long_as_asked() {
    let (pool, metrics) = pool(&["a"]);
    let start = Instant::now();
    pool.select(NONE, start)
        .unwrap()
        .cool(Some(Duration::from_millis(2_000)), start);
    let until = start + Duration::from_millis(2_000);
    assert_eq!(
        pool.select(NONE, start + Duration::from_millis(1_999))
            .unwrap_err()
            .cooling,
        Some(until)
    );
    assert!(pool.select(NONE, until).is_ok());
    assert!(metrics
        .render()
        .contains(r#"tollgate_key_state{key="a",provider="p",state="healthy"} 1"#));
}

#[tokio::test(start_paused = true)]
async fn cooldown_without_a_time_uses_the_default_and_is_capped() {
    let (pool, _) = pool(&["a"]);
    let now = Instant::now();
    pool.select(NONE, now).unwrap().cool(None, now);
    assert_eq!(
        pool.health(0),
        Health::Cooling {
            until: now + Duration::from_secs(10)
        }
    );
    let later = now + Duration::from_secs(10);
    pool.select(NONE, later)
        .unwrap()
        .cool(Some(Duration::from_secs(3600)), later);
    assert_eq!(
        pool.health(0),
        Health::Cooling {
            until: later + Duration::from_secs(60)
        }
    );
}

#[tokio::test(start_paused = true)]
async fn disabled_key_gets_one_probe_and_a_success_restores_it() {
    let (pool, metrics) = pool(&["a", "b"]);
    let now = Instant::now();
    pool.select(&|i| i != 0, now).unwrap().disable(None, now);
    assert!(matches!(pool.health(0), Health::Disabled { .. }));
    assert!(metrics
        .render()
        .contains(r#"tollgate_key_state{key="a",provider="p",state="disabled"} 1"#));
    for _ in 0..10 {
        assert_eq!(
            pool.select(NONE, now + Duration::from_secs(29))
                .unwrap()
                .id(),
            "b"
        );
    }
    let probe_time = now + Duration::from_secs(30);
    let mut probe = pool.select(&|i| i != 0, probe_time).unwrap();
    assert_eq!(pool.health(0), Health::Probing);
    assert!(
        pool.select(&|i| i != 0, probe_time).is_err(),
        "one probe at a time"
    );
    probe.success(Duration::ZERO, probe_time);
    drop(probe);
    assert_eq!(pool.health(0), Health::Healthy);
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_disables_again_and_an_abandoned_one_frees_the_slot() {
    let (pool, _) = pool(&["a"]);
    let now = Instant::now();
    pool.select(NONE, now).unwrap().disable(None, now);
    let t = now + Duration::from_secs(30);
    pool.select(NONE, t).unwrap().disable(None, t);
    assert_eq!(
        pool.health(0),
        Health::Disabled {
            probe_at: t + Duration::from_secs(30)
        }
    );
    let t2 = t + Duration::from_secs(30);
    drop(pool.select(NONE, t2).unwrap());
    assert!(matches!(pool.health(0), Health::Disabled { .. }));
    assert!(
        pool.select(NONE, Instant::now().max(t2)).is_ok(),
        "abandoned probe lets the next one go"
    );
}

#[tokio::test(start_paused = true)]
async fn weights_share_traffic() {
    let metrics = Metrics::new().unwrap();
    let keys = vec![
        KeySettings {
            id: "big".into(),
            secret: Secret::new("x"),
            weight: 3,
            rpm: None,
            tpm: None,
        },
        KeySettings {
            id: "small".into(),
            secret: Secret::new("y"),
            weight: 1,
            rpm: None,
            tpm: None,
        },
    ];
    let policy = PoolPolicy {
        cooldown_default: Duration::ZERO,
        cooldown_max: Duration::ZERO,
        probe_interval: Duration::ZERO,
        outlier: OutlierPolicy::default(),
    };
    let pool = KeyPool::new("p", &keys, policy, &metrics);
    let now = Instant::now();
    let held: Vec<Lease> = (0..8).map(|_| pool.select(NONE, now).unwrap()).collect();
    let big = held.iter().filter(|l| l.id() == "big").count();
    assert_eq!(big, 6, "3:1 weights split 8 concurrent leases 6:2");
}

#[tokio::test(start_paused = true)]
async fn another_replicas_cooldown_and_disablement_apply_here() {
    use crate::rate_limit::{unix_ms, SharedHealth};
    let (pool, _) = pool(&["a", "b"]);
    let now = Instant::now();
    pool.apply_shared(0, SharedHealth::Cooling(unix_ms() + 30_000), now);
    assert!(matches!(pool.health(0), Health::Cooling { .. }));
    for _ in 0..5 {
        assert_eq!(pool.select(NONE, now).unwrap().id(), "b");
    }
    pool.apply_shared(1, SharedHealth::Disabled(unix_ms() + 60_000), now);
    assert!(matches!(pool.health(1), Health::Disabled { .. }));
    pool.apply_shared(1, SharedHealth::Cooling(unix_ms() + 90_000), now);
    assert!(
        matches!(pool.health(1), Health::Disabled { .. }),
        "a cooldown does not undo a disablement"
    );
    pool.apply_shared(0, SharedHealth::Cooling(unix_ms().saturating_sub(1)), now);
    assert!(
        matches!(pool.health(0), Health::Cooling { .. }),
        "an expired record changes nothing"
    );
}

#[test]
fn health_state_machine_table() {
    use HealthEvent as E;
    let now = Instant::now();
    let later = now + Duration::from_secs(5);
    let past = now - Duration::from_millis(1);
    let (healthy, cooling, disabled, probing) = (
        Health::Healthy,
        Health::Cooling { until: later },
        Health::Disabled { probe_at: later },
        Health::Probing,
    );
    let rows: [(Health, E, Health); 20] = [
        (Health::Cooling { until: past }, E::Tick, healthy),
        (cooling, E::Tick, cooling),
        (
            Health::Disabled { probe_at: past },
            E::ProbeStarted,
            probing,
        ),
        (disabled, E::ProbeStarted, disabled),
        (probing, E::Succeeded, healthy),
        (healthy, E::Succeeded, healthy),
        (healthy, E::RateLimited { until: later }, cooling),
        (
            Health::Cooling { until: now },
            E::RateLimited { until: later },
            cooling,
        ),
        (cooling, E::RateLimited { until: now }, cooling),
        (disabled, E::RateLimited { until: now }, disabled),
        (healthy, E::Rejected { probe_at: later }, disabled),
        (cooling, E::Rejected { probe_at: later }, disabled),
        (probing, E::Failed { probe_at: later }, disabled),
        (healthy, E::Failed { probe_at: later }, healthy),
        (
            probing,
            E::ProbeAbandoned,
            Health::Disabled { probe_at: now },
        ),
        (probing, E::SharedDisabled { probe_at: later }, probing),
        (disabled, E::SharedCooling { until: later }, disabled),
        (healthy, E::SharedCooling { until: later }, cooling),
        (cooling, E::SharedCooling { until: now }, cooling),
        (healthy, E::SharedDisabled { probe_at: later }, disabled),
    ];
    for (from, event, to) in rows {
        assert_eq!(from.on(event, now), to, "{from:?} on {event:?}");
    }
    let ejected = Health::Ejected { probe_at: later };
    let ejection_rows: [(Health, E, Health); 11] = [
        (healthy, E::Ejected { probe_at: later }, ejected),
        (cooling, E::Ejected { probe_at: later }, ejected),
        (probing, E::Ejected { probe_at: later }, ejected),
        (disabled, E::Ejected { probe_at: later }, disabled),
        (Health::Ejected { probe_at: past }, E::ProbeStarted, probing),
        (ejected, E::ProbeStarted, ejected),
        (ejected, E::RateLimited { until: later }, ejected),
        (ejected, E::Rejected { probe_at: later }, disabled),
        (ejected, E::SharedCooling { until: later }, ejected),
        (healthy, E::SharedEjected { probe_at: later }, ejected),
        (disabled, E::SharedEjected { probe_at: later }, disabled),
    ];
    for (from, event, to) in ejection_rows {
        assert_eq!(from.on(event, now), to, "{from:?} on {event:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn five_transient_failures_eject_a_key_until_one_probe_decides() {
    let (pool, metrics) = pool(&["a", "b"]);
    let now = Instant::now();
    for _ in 0..4 {
        assert_eq!(
            pool.select(&|i| i != 0, now)
                .unwrap()
                .transient(Duration::ZERO, now),
            None
        );
    }
    let ejected = pool
        .select(&|i| i != 0, now)
        .unwrap()
        .transient(Duration::ZERO, now);
    assert_eq!(ejected, Some(Duration::from_secs(10)));
    assert!(matches!(pool.health(0), Health::Ejected { .. }));
    let text = metrics.render();
    assert!(text.contains(r#"tollgate_key_state{key="a",provider="p",state="ejected"} 1"#));
    assert!(text.contains(r#"tollgate_key_ejections_total{key="a",provider="p"} 1"#));
    // Ejected: only b until the probe is due.
    for _ in 0..5 {
        assert_eq!(
            pool.select(NONE, now + Duration::from_secs(9))
                .unwrap()
                .id(),
            "b"
        );
    }
    let probe_time = now + Duration::from_secs(10);
    let mut probe = pool.select(&|i| i != 0, probe_time).unwrap();
    assert_eq!(pool.health(0), Health::Probing);
    // The probe fails: ejected again, for twice as long.
    assert_eq!(
        probe.transient(Duration::ZERO, probe_time),
        Some(Duration::from_secs(20))
    );
    drop(probe);
    let t2 = probe_time + Duration::from_secs(20);
    let mut probe = pool.select(&|i| i != 0, t2).unwrap();
    probe.success(Duration::ZERO, t2);
    drop(probe);
    assert_eq!(
        pool.health(0),
        Health::Healthy,
        "a successful probe restores it"
    );
}

mod sticky;

#[tokio::test(start_paused = true)]
async fn what_happens_to_a_request_sent_before_a_reload_lands_in_the_new_pool() {
    let (old, metrics) = pool(&["a", "b"]);
    let now = Instant::now();
    let mut in_flight = old.select(&|i| i != 0, now).unwrap();
    let keys = [KeySettings {
        id: "a".into(),
        secret: Secret::new("sk-a".to_owned()),
        weight: 1,
        rpm: None,
        tpm: None,
    }];
    let new = KeyPool::carry_over("p", &keys, old.policy, &metrics, Some(&old));
    assert_eq!(
        new.view(now)[0].inflight,
        1,
        "the old request counts in the new pool"
    );
    // A 429 answered to the old request cools the key the new pool hands out.
    in_flight.cool(Some(Duration::from_secs(60)), now);
    drop(in_flight);
    assert!(
        matches!(new.health(0), Health::Cooling { .. }),
        "{:?}",
        new.health(0)
    );
    assert_eq!(new.view(now)[0].inflight, 0);
    assert!(
        new.select(NONE, now).is_err(),
        "the cooling key is not picked"
    );

    // A probe started before a reload is not started again by the new pool.
    let (old, metrics) = pool(&["a"]);
    old.select(NONE, now).unwrap().disable(None, now);
    let probe_time = now + Duration::from_secs(30);
    let _probe = old.select(NONE, probe_time).unwrap();
    let new = KeyPool::carry_over("p", &keys, old.policy, &metrics, Some(&old));
    assert_eq!(new.health(0), Health::Probing);
    assert!(
        new.select(NONE, probe_time).is_err(),
        "one probe at a time, across reloads"
    );
}
