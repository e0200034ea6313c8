//! Packing: while the workers together keep less than one core busy, they all run on one core.
//!
//! Dealt connections in turn, every worker has work whenever requests come, so at a moderate load
//! each of them runs a little on every core: each wake-up finds its caches filled by whatever
//! ran there meanwhile, and leaves them filled with its own. Measured on the 2-core benchmark
//! machine (load generator, mock upstream and gateway on the same cores, 40 KB Codex-shaped
//! turns at c=32, about 0.6 of a core of gateway work): two workers spread over both cores cost
//! 62–66 µs of CPU a request, and the load generator and the mock beside them about 10 µs a
//! request more than beside the bare proxy; the same two workers held on one core cost 58 µs
//! and their neighbours nothing extra. So each worker reads what it ran and how long it waited
//! for a core (its `schedstat`) every [`PERIOD`]; the first worker decides ([`Decide`]), and
//! every worker sets its own CPU affinity to match: one core (the one the first worker is on
//! when it decides) while the workers need less than [`PACK_BELOW`] of one, every core the
//! process may use as soon as they need more than [`SPREAD_ABOVE`] of it, or wait for it
//! [`STARVED`] times as long as they run (another process holding the core). On a machine that
//! has more runnable threads than cores, waiting is high either way (the workers waited 0.6–0.9
//! of a core's time spread and 0.6–1.1 held on one, running 0.6), so waiting alone does not
//! spread them. A worker never blocks on this: a read of a `/proc` file of its own thread and,
//! on a change, one system call.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often each worker reads its own scheduling statistics and the first one decides.
pub(super) const PERIOD: Duration = Duration::from_millis(100);

/// Packed once the workers together ran less than this share of one core for
/// [`SETTLE`] periods in a row.
const PACK_BELOW: f64 = 0.6;

/// Periods in a row below [`PACK_BELOW`] before packing (doubled after each spread that
/// waiting forced, up to [`SETTLE_MAX`], so a load that does not fit one core is not packed
/// again every few periods).
const SETTLE: u32 = 3;
const SETTLE_MAX: u32 = 100;

/// Spread again once the packed workers ran more than this share of their core in a period...
const SPREAD_ABOVE: f64 = 0.8;

/// ...or waited for it this many times as long as they ran (and over a fifth of the period).
const STARVED: f64 = 3.0;

/// Packed this many periods in a row, the settle time is back to [`SETTLE`].
const STEADY: u32 = 100;

/// No core: the workers are spread.
const SPREAD: usize = usize::MAX;

/// What the workers share for packing.
pub(super) struct Shared {
    /// Per worker, the share of its last period it ran and waited for a core, in millionths.
    ran: Vec<AtomicU64>,
    waited: Vec<AtomicU64>,
    /// The core the workers are held on, or [`SPREAD`].
    core: AtomicUsize,
}

impl Shared {
    pub(super) fn new(workers: usize) -> Arc<Shared> {
        Arc::new(Shared {
            ran: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            waited: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            core: AtomicUsize::new(SPREAD),
        })
    }
}

/// The first worker's decision, period by period.
#[derive(Debug)]
pub(super) struct Decide {
    /// Periods in a row the spread workers ran below [`PACK_BELOW`].
    calm: u32,
    /// Periods in a row packed.
    packed_for: u32,
    /// Calm periods needed before packing.
    settle: u32,
}

impl Default for Decide {
    fn default() -> Self {
        Decide {
            calm: 0,
            packed_for: 0,
            settle: SETTLE,
        }
    }
}

impl Decide {
    /// Whether the workers should be packed after a period in which, together, they ran `ran`
    /// and waited for a core `waited` (both in cores: nanoseconds over the period's), being
    /// `packed` during it.
    pub(super) fn next(&mut self, packed: bool, ran: f64, waited: f64) -> bool {
        if packed {
            let starved = waited > STARVED * ran && waited > 0.2;
            if ran > SPREAD_ABOVE || starved {
                self.calm = 0;
                self.packed_for = 0;
                if starved {
                    self.settle = (self.settle * 2).min(SETTLE_MAX);
                }
                return false;
            }
            self.packed_for = self.packed_for.saturating_add(1);
            if self.packed_for >= STEADY {
                self.settle = SETTLE;
            }
            return true;
        }
        self.calm = if ran < PACK_BELOW { self.calm + 1 } else { 0 };
        if self.calm >= self.settle {
            self.calm = 0;
            return true;
        }
        false
    }
}

/// A thread's scheduling statistics so far, in nanoseconds: time on a core, time waiting for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Sched {
    pub(super) ran: u64,
    pub(super) waited: u64,
}

impl Sched {
    /// The calling thread's (`/proc/thread-self/schedstat`); `None` where the kernel keeps none.
    pub(super) fn of_this_thread() -> Option<Sched> {
        Sched::parse(&std::fs::read_to_string("/proc/thread-self/schedstat").ok()?)
    }

    /// `schedstat`'s text: run time, wait time, time slices.
    pub(super) fn parse(text: &str) -> Option<Sched> {
        let mut fields = text.split_ascii_whitespace().map(str::parse::<u64>);
        Some(Sched {
            ran: fields.next()?.ok()?,
            waited: fields.next()?.ok()?,
        })
    }
}

/// Runs worker `index`'s part for as long as its runtime does: reads its statistics every
/// [`PERIOD`], decides when it is the first worker, and holds its thread where the decision
/// says. Returns at once where there is nothing to pack (one core, no statistics, no
/// affinity).
pub(super) async fn run(index: usize, shared: Arc<Shared>) {
    let Some(cores) = Cores::of_this_thread() else {
        return;
    };
    let (Some(ran), Some(waited)) = (shared.ran.get(index), shared.waited.get(index)) else {
        return;
    };
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is at once: the first period starts after it.
    tick.tick().await;
    let Some(mut last) = Sched::of_this_thread() else {
        return;
    };
    let mut last_at = tokio::time::Instant::now();
    // Only the first worker decides.
    let mut decide = (index == 0).then(Decide::default);
    let mut held = SPREAD;
    loop {
        tick.tick().await;
        let Some(now) = Sched::of_this_thread() else {
            return;
        };
        // A period may run long (a busy thread ticks late): shares of the time it took.
        let at = tokio::time::Instant::now();
        let elapsed = at.duration_since(last_at).as_nanos().max(1);
        let per_million = |ns: u64| (u128::from(ns) * 1_000_000 / elapsed) as u64;
        ran.store(
            per_million(now.ran.saturating_sub(last.ran)),
            Ordering::Relaxed,
        );
        waited.store(
            per_million(now.waited.saturating_sub(last.waited)),
            Ordering::Relaxed,
        );
        (last, last_at) = (now, at);
        if let Some(decide) = &mut decide {
            let cores_of = |all: &[AtomicU64]| {
                all.iter().map(|n| n.load(Ordering::Relaxed)).sum::<u64>() as f64 / 1e6
            };
            let packed = shared.core.load(Ordering::Relaxed) != SPREAD;
            let pack = decide.next(packed, cores_of(&shared.ran), cores_of(&shared.waited));
            if pack != packed {
                let core = if pack { cores.current() } else { SPREAD };
                shared.core.store(core, Ordering::Relaxed);
                match pack {
                    true => tracing::debug!(core, "workers held on one core"),
                    false => tracing::debug!("workers spread over every allowed core"),
                }
            }
        }
        let want = shared.core.load(Ordering::Relaxed);
        if want != held && cores.hold(want) {
            held = want;
        }
    }
}

/// The cores a worker may run on, as the process was allowed them at start.
struct Cores {
    #[cfg(target_os = "linux")]
    all: rustix::thread::CpuSet,
}

#[cfg(target_os = "linux")]
impl Cores {
    /// The calling thread's; `None` with fewer than two (nothing to pack).
    fn of_this_thread() -> Option<Cores> {
        let all = rustix::thread::sched_getaffinity(None).ok()?;
        (all.count() >= 2).then_some(Cores { all })
    }

    /// The core the calling thread is on.
    fn current(&self) -> usize {
        rustix::thread::sched_getcpu()
    }

    /// Holds the calling thread on `core` (every allowed core for [`SPREAD`]); whether it took.
    fn hold(&self, core: usize) -> bool {
        let set = if core == SPREAD {
            self.all
        } else if core < rustix::thread::CpuSet::MAX_CPU && self.all.is_set(core) {
            let mut one = rustix::thread::CpuSet::new();
            one.set(core);
            one
        } else {
            return false;
        };
        rustix::thread::sched_setaffinity(None, &set).is_ok()
    }
}

#[cfg(not(target_os = "linux"))]
impl Cores {
    fn of_this_thread() -> Option<Cores> {
        None
    }

    fn current(&self) -> usize {
        SPREAD
    }

    fn hold(&self, _core: usize) -> bool {
        false
    }
}

#[cfg(test)]
mod tests;
