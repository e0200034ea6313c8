//! Sticky sessions: rendezvous hashing over the healthy keys.

use super::*;

fn session(n: u32) -> Prefer {
    Prefer::Session(affinity(format!("\"session-{n}\"").as_bytes()))
}

#[tokio::test(start_paused = true)]
async fn a_session_stays_on_one_key_whatever_the_load() {
    let (pool, _) = pool(&["a", "b", "c", "d"]);
    let now = Instant::now();
    let first = pool.select_for(NONE, session(1), now).unwrap();
    let key = first.idx();
    // Its own requests in flight (which would send a plain request elsewhere) do not move it.
    let held: Vec<Lease> = (0..5)
        .map(|_| pool.select_for(NONE, session(1), now).unwrap())
        .collect();
    assert!(held.iter().all(|l| l.idx() == key));
    drop(first);
}

#[tokio::test(start_paused = true)]
async fn sessions_spread_over_the_keys() {
    let (pool, _) = pool(&["a", "b", "c", "d"]);
    let now = Instant::now();
    let mut counts = [0u32; 4];
    for n in 0..400 {
        counts[pool.select_for(NONE, session(n), now).unwrap().idx()] += 1;
    }
    assert!(counts.iter().all(|c| (60..=140).contains(c)), "{counts:?}");
}

#[tokio::test(start_paused = true)]
async fn a_key_leaving_moves_only_its_own_sessions() {
    let (pool, _) = pool(&["a", "b", "c", "d"]);
    let now = Instant::now();
    let before: Vec<usize> = (0..200)
        .map(|n| pool.select_for(NONE, session(n), now).unwrap().idx())
        .collect();
    // Key c cools: its sessions move, every other session stays where it was.
    pool.select_for(&|i| i != 2, Prefer::Any, now)
        .unwrap()
        .cool(Some(Duration::from_secs(30)), now);
    for (n, was) in before.iter().enumerate() {
        let now_on = pool.select_for(NONE, session(n as u32), now).unwrap().idx();
        match *was {
            2 => assert_ne!(now_on, 2),
            key => assert_eq!(now_on, key, "session {n} moved"),
        }
    }
    // Back when it recovers.
    let later = now + Duration::from_secs(31);
    for (n, was) in before.iter().enumerate() {
        assert_eq!(
            pool.select_for(NONE, session(n as u32), later)
                .unwrap()
                .idx(),
            *was
        );
    }
}

#[tokio::test(start_paused = true)]
async fn without_a_healthy_key_a_session_takes_what_select_would() {
    let (pool, _) = pool(&["a"]);
    let now = Instant::now();
    pool.select(NONE, now).unwrap().disable(None, now);
    let probe_at = now + Duration::from_secs(30);
    let lease = pool.select_for(NONE, session(1), probe_at).unwrap();
    assert_eq!(lease.idx(), 0, "the probe goes out");
    assert!(matches!(pool.health(0), Health::Probing));
}
