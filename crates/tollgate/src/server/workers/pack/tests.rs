use super::*;

/// Feeds `periods` of (ran, waited) to a fresh decision, starting spread; the state after each.
fn decisions(periods: &[(f64, f64)]) -> Vec<bool> {
    let mut decide = Decide::default();
    let mut packed = false;
    periods
        .iter()
        .map(|&(ran, waited)| {
            packed = decide.next(packed, ran, waited);
            packed
        })
        .collect()
}

#[test]
fn workers_pack_after_settling_below_the_threshold() {
    // Two calm periods are not enough; the third packs.
    assert_eq!(
        decisions(&[(0.3, 0.0), (0.3, 0.0), (0.3, 0.0)]),
        [false, false, true]
    );
    // A busy period in between starts the count again.
    assert_eq!(
        decisions(&[
            (0.3, 0.0),
            (0.3, 0.0),
            (0.7, 0.0),
            (0.3, 0.0),
            (0.3, 0.0),
            (0.3, 0.0)
        ]),
        [false, false, false, false, false, true]
    );
    // Spread workers that need more than the threshold stay spread.
    assert!(decisions(&[(0.9, 0.0); 20]).iter().all(|&p| !p));
}

#[test]
fn packed_workers_spread_when_they_need_more_than_their_core_or_wait_for_it() {
    let calm = [(0.3, 0.0); 3];
    let mut busy = calm.to_vec();
    busy.push((0.5, 0.0));
    busy.push((0.85, 0.0));
    assert_eq!(decisions(&busy), [false, false, true, true, false]);
    // Waiting about as long as running (a machine with more threads than cores) keeps them
    // packed; waiting three times as long spreads them.
    let mut waiting = calm.to_vec();
    waiting.push((0.6, 1.1));
    waiting.push((0.1, 0.35));
    assert_eq!(decisions(&waiting), [false, false, true, true, false]);
}

#[test]
fn a_spread_forced_by_waiting_settles_longer_before_packing_again() {
    let mut decide = Decide::default();
    let mut packed = false;
    let mut step = |ran: f64, waited: f64| {
        packed = decide.next(packed, ran, waited);
        packed
    };
    for _ in 0..3 {
        step(0.3, 0.0);
    }
    assert!(!step(0.1, 0.4), "waiting spreads");
    // Six calm periods now (twice three), not three.
    let after: Vec<bool> = (0..6).map(|_| step(0.3, 0.0)).collect();
    assert_eq!(after, [false, false, false, false, false, true]);
    assert!(!step(0.1, 0.4));
    let after: Vec<bool> = (0..12).map(|_| step(0.3, 0.0)).collect();
    assert_eq!(after.iter().filter(|&&p| p).count(), 1);
    assert!(after[11]);
    // Packed long enough, the settle time is back to three.
    for _ in 0..STEADY {
        assert!(step(0.3, 0.0));
    }
    assert!(!step(0.9, 0.0));
    let after: Vec<bool> = (0..3).map(|_| step(0.3, 0.0)).collect();
    assert_eq!(after, [false, false, true]);
}

#[test]
fn the_settle_time_stops_growing() {
    let mut decide = Decide::default();
    for _ in 0..20 {
        decide.next(true, 0.1, 0.5);
    }
    assert_eq!(decide.settle, SETTLE_MAX);
}

#[test]
fn schedstat_is_read_as_run_and_wait_time() {
    assert_eq!(
        Sched::parse("2250429 61800 31\n"),
        Some(Sched {
            ran: 2_250_429,
            waited: 61_800
        })
    );
    assert_eq!(Sched::parse(""), None);
    assert_eq!(Sched::parse("12 x 3"), None);
    assert_eq!(Sched::parse("-1 2 3"), None);
}

#[cfg(target_os = "linux")]
#[test]
fn this_threads_run_time_grows_as_it_runs() {
    let Some(before) = Sched::of_this_thread() else {
        eprintln!("skipped: this kernel keeps no /proc/thread-self/schedstat");
        return;
    };
    // Spin until the kernel has counted 10 ms of this thread's running, however much of a
    // core a loaded machine gives it; a counter that never grows fails after 10 s.
    let started = std::time::Instant::now();
    let mut after = before;
    while after.ran < before.ran + 10_000_000 && started.elapsed() < Duration::from_secs(10) {
        std::hint::black_box(started.elapsed());
        after = Sched::of_this_thread().expect("read once, read again");
    }
    assert!(after.ran >= before.ran + 10_000_000, "{before:?} {after:?}");
}
