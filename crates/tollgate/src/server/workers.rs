//! The main listener's worker threads. Each runs a single-threaded tokio runtime, and every
//! connection the listener accepts is handed to one of them, in turn, for its whole life: its
//! requests, the upstream exchanges they start and their answers' bodies all run on that one
//! thread. No task moves between threads, memory is freed on the thread that allocated it, and
//! a chunk arriving from the upstream wakes a task on the same core (the model of Envoy's
//! workers). What the requests share (buckets, key pools, the live config) is shared across
//! threads as before. The admin listener, reloads and background tasks stay on the main
//! runtime.

mod pack;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// Worker threads, each with its runtime; dropping this stops them (what they still run is
/// dropped with their runtimes).
pub(crate) struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    stops: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// Starts `n` threads (at least one); with `pack`, they share one core while together they
    /// need less than one (see the `pack` module).
    pub(crate) fn start(n: usize, pack: bool) -> std::io::Result<Workers> {
        let n = n.max(1);
        let mut handles = Vec::with_capacity(n);
        let mut stops = Vec::with_capacity(n);
        let packing = (pack && n > 1).then(|| pack::Shared::new(n));
        for i in 0..n {
            let packing = packing.clone();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (stop, stopped) = oneshot::channel::<()>();
            handles.push(runtime.handle().clone());
            std::thread::Builder::new()
                .name(format!("tollgate-worker-{i}"))
                .spawn(move || {
                    // Runs the tasks handed to it until told to stop (or until `Workers` is
                    // gone); the runtime, dropped here, ends what is left.
                    runtime.block_on(async {
                        let packing = async {
                            if let Some(shared) = packing {
                                pack::run(i, shared).await;
                            }
                            std::future::pending::<()>().await
                        };
                        tokio::select! {
                            _ = stopped => {}
                            () = keep_a_timer_near() => {}
                            () = packing => {}
                        }
                    });
                })?;
            stops.push(stop);
        }
        Ok(Workers {
            handles,
            next: AtomicUsize::new(0),
            stops,
        })
    }

    /// How many threads there are.
    pub(crate) fn len(&self) -> usize {
        self.handles.len()
    }

    /// Runs `task` on the next worker in turn.
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        drop(self.handles[i].spawn(task));
    }
}

/// How far off the worker's own timer always is ([`keep_a_timer_near`]).
const NEAR: std::time::Duration = std::time::Duration::from_secs(1);

/// Keeps one timer due within [`NEAR`] on this thread's runtime, for ever. tokio's time driver
/// wakes itself (a write to its eventfd, then one more turn of its loop) whenever a timer is
/// set earlier than the earliest it knew of when it last looked; hyper sets a new one for every
/// request on a kept-alive connection (the header timeout, 10 s out), and with no other timer
/// that near, each of those requests paid the wake-up (0.47 eventfd writes a request at 20 ms
/// upstream latency). With this timer nearer than any header timeout, they never are the
/// earliest: the driver wakes for it once a second instead.
async fn keep_a_timer_near() {
    let mut tick = tokio::time::interval(NEAR);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn tasks_go_to_the_workers_in_turn_each_on_its_own_thread() {
        let workers = Workers::start(2, false).unwrap();
        assert_eq!(workers.len(), 2);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut done = Vec::new();
        for _ in 0..4 {
            let (tx, rx) = oneshot::channel();
            let seen = Arc::clone(&seen);
            workers.spawn(async move {
                // A task and what it spawns run on the worker's thread.
                let here = std::thread::current().id();
                let inner = tokio::spawn(async { std::thread::current().id() })
                    .await
                    .unwrap();
                let name = std::thread::current().name().map(str::to_owned);
                seen.lock().unwrap().push((here, inner, name));
                let _ = tx.send(());
            });
            done.push(rx);
        }
        for rx in done {
            rx.await.unwrap();
        }
        let seen = seen.lock().unwrap();
        assert!(seen.iter().all(|(here, inner, _)| here == inner));
        let threads: HashSet<_> = seen.iter().map(|(here, _, _)| *here).collect();
        assert_eq!(threads.len(), 2, "{seen:?}");
        assert!(seen.iter().all(|(_, _, name)| name
            .as_deref()
            .is_some_and(|n| n.starts_with("tollgate-worker-"))));
    }

    /// Idle workers end up held on one core, the same for all (the decision itself is tested
    /// period by period in `pack`'s tests; this is the affinity the system reports).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn idle_workers_are_held_on_one_core() {
        let allowed = rustix::thread::sched_getaffinity(None).map(|set| set.count());
        if !allowed.is_ok_and(|n| n >= 2) || pack::Sched::of_this_thread().is_none() {
            eprintln!("skipped: one core allowed, or no /proc/thread-self/schedstat");
            return;
        }
        let workers = Workers::start(2, true).unwrap();
        let mut cores = Vec::new();
        for _ in 0..2 {
            let (tx, rx) = oneshot::channel();
            workers.spawn(async move {
                // Packing takes a few periods of calm; wait for this thread's affinity to narrow.
                for _ in 0..250 {
                    if let Ok(set) = rustix::thread::sched_getaffinity(None) {
                        if set.count() == 1 {
                            let core =
                                (0..rustix::thread::CpuSet::MAX_CPU).find(|&c| set.is_set(c));
                            let _ = tx.send(core);
                            return;
                        }
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                let _ = tx.send(None);
            });
            cores.push(rx.await.unwrap());
        }
        assert!(cores[0].is_some(), "not packed within 5 s: {cores:?}");
        assert_eq!(cores[0], cores[1]);
    }

    #[tokio::test]
    async fn dropping_the_workers_ends_what_they_run() {
        let workers = Workers::start(1, false).unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        workers.spawn(async move {
            let _keep = tx;
            std::future::pending::<()>().await;
        });
        drop(workers);
        // The task's sender is dropped with the runtime: the receiver sees it closed.
        assert!(tokio::time::timeout(std::time::Duration::from_secs(5), rx)
            .await
            .expect("the worker's runtime ended")
            .is_err());
    }
}
