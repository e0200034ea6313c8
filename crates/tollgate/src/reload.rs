//! Live config: the `Runtime` (settings, dispatcher, client keys) behind an `ArcSwap`, and the
//! `Reloader` that replaces it on SIGHUP, on a change of the config file, or on
//! `POST /admin/reload`. In-flight requests finish on the runtime they started with; keys
//! that did not change keep their health, and buckets keep their level while their limits
//! stay the same. A config that fails validation is refused with one log line and a metric,
//! and the old one keeps serving.

use crate::auth::Auth;
use crate::config::{Config, ConfigError, Settings, Sources};
use crate::metrics::Metrics;
use crate::rate_limit::Limiter;
use crate::stack::{Gateway, Parts};
use crate::upstream::Upstream;
use arc_swap::ArcSwap;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Everything a request needs from the config, swapped as one.
#[derive(Debug)]
pub struct Runtime {
    /// The validated config.
    pub settings: Arc<Settings>,
    /// The gateway stack built from them, and its key pools.
    pub gateway: Gateway,
    /// Client keys.
    pub auth: Arc<Auth>,
}

/// Builds runtimes and swaps them in.
pub struct Reloader {
    sources: Option<Sources>,
    parts: Parts,
    current: Arc<ArcSwap<Runtime>>,
    lock: Mutex<()>,
    /// Each thread's hold on the live runtime (see [`Reloader::local`]).
    locals: thread_local::ThreadLocal<std::cell::RefCell<Option<Arc<Local>>>>,
}

/// One thread's hold on a runtime: what a request keeps for its whole life. Its count is that
/// thread's own, so requests do not write the runtime's count, which every thread shares.
#[derive(Debug)]
pub struct Local {
    runtime: Arc<Runtime>,
}

impl std::ops::Deref for Local {
    type Target = Runtime;
    fn deref(&self) -> &Runtime {
        &self.runtime
    }
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("sources", &self.sources)
            .finish_non_exhaustive()
    }
}

impl Reloader {
    /// The first runtime from `settings`; `sources` is where reloads read from (`None`: no reloads).
    pub fn new(
        settings: Arc<Settings>,
        sources: Option<Sources>,
        upstream: Arc<dyn Upstream>,
        metrics: Metrics,
        seed: u64,
    ) -> Self {
        let limiter = Arc::new(Limiter::new(&settings.state, &metrics));
        let health = crate::key_pool::store::for_limiter(&limiter);
        let parts = Parts {
            upstream,
            records: Arc::new(crate::ownership::records::Records::new(Arc::clone(&health))),
            health,
            limiter,
            metrics,
            seed,
        };
        let runtime = build(settings, &parts, None);
        Reloader {
            sources,
            parts,
            current: Arc::new(ArcSwap::from_pointee(runtime)),
            lock: Mutex::new(()),
            locals: thread_local::ThreadLocal::new(),
        }
    }

    /// The buckets (they live across reloads).
    pub fn limiter(&self) -> &Arc<Limiter> {
        &self.parts.limiter
    }

    /// The live runtime.
    pub fn current(&self) -> Arc<Runtime> {
        self.current.load_full()
    }

    /// The live runtime, through this thread's hold on it (renewed once the runtime is
    /// swapped): what the request path takes.
    pub fn local(&self) -> Arc<Local> {
        let slot = self.locals.get_or(Default::default);
        // A look at the live runtime that writes no shared count.
        let live = self.current.load();
        let mut slot = slot.borrow_mut();
        if let Some(local) = slot.as_ref().filter(|l| Arc::ptr_eq(&l.runtime, &live)) {
            return Arc::clone(local);
        }
        let local = Arc::new(Local {
            runtime: arc_swap::Guard::into_inner(live),
        });
        *slot = Some(Arc::clone(&local));
        local
    }

    /// Reads and validates the config again and swaps it in; on failure the old one stays.
    pub fn reload(&self, trigger: &str) -> Result<(), ConfigError> {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let result = self
            .sources
            .as_ref()
            .ok_or_else(|| ConfigError {
                problems: vec!["this gateway was started without a reloadable config".into()],
            })
            .and_then(Config::load)
            .and_then(|c| c.validate());
        let settings = match result {
            Ok(s) => Arc::new(s),
            Err(e) => {
                self.parts
                    .metrics
                    .config_reloads
                    .with_label_values(&["failure"])
                    .inc();
                tracing::error!(trigger, problems = %e.problems.join("; "), "config reload refused: the previous config keeps serving");
                return Err(e);
            }
        };
        let old = self.current();
        warn_on_restart_only_changes(&old.settings, &settings);
        let runtime = build(settings, &self.parts, Some(&old));
        forget_removed_keys(&self.parts.metrics, &old.settings, &runtime.settings);
        self.current.store(Arc::new(runtime));
        self.parts
            .metrics
            .config_reloads
            .with_label_values(&["success"])
            .inc();
        tracing::info!(trigger, "config reloaded");
        Ok(())
    }

    /// With Redis, pulls the key health other replicas recorded (cooldowns, disablements)
    /// into the local pools once a second, so one replica's 429 protects the others.
    pub fn spawn_health_sync(self: &Arc<Self>) {
        if !self.parts.health.is_shared() {
            return;
        }
        let me = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let runtime = me.current();
                for pool in runtime.gateway.pools.iter() {
                    let ids: Vec<&str> = (0..pool.len()).map(|i| pool.bucket(i).0).collect();
                    let Some(shared) = me.parts.health.fetch(&ids).await else {
                        continue;
                    };
                    let now = tokio::time::Instant::now();
                    for (idx, health) in shared.into_iter().enumerate() {
                        if let Some(h) = health {
                            pool.apply_shared(idx, h, now);
                        }
                    }
                }
            }
        });
    }

    /// Reloads on SIGHUP and when the config file's modification time changes.
    pub fn spawn_watchers(self: &Arc<Self>) {
        self.spawn_health_sync();
        // The signal handler and the file's first look are taken here, before the caller
        // announces it is listening: taken inside the tasks, a SIGHUP or a change that came
        // right after the announcement could find no handler (the default action ends the
        // process) or become the watcher's starting point (and never be seen as a change).
        #[cfg(unix)]
        if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            let me = Arc::clone(self);
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    let _ = me.reload("SIGHUP");
                }
            });
        }
        let interval = self.current().settings.watch_interval;
        let Some(path) = self.sources.as_ref().and_then(|s| s.path.clone()) else {
            return;
        };
        if interval.is_zero() {
            return;
        }
        let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let mut seen: Option<SystemTime> = modified(&path);
        let me = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval.max(Duration::from_millis(100))).await;
                let now = modified(&path);
                if now.is_some() && now != seen {
                    seen = now;
                    let _ = me.reload("file change");
                }
            }
        });
    }
}

fn build(settings: Arc<Settings>, parts: &Parts, previous: Option<&Runtime>) -> Runtime {
    let auth = Arc::new(Auth::carry_over(
        &settings.clients,
        previous.map(|p| &*p.auth),
    ));
    let gateway = crate::stack::gateway(
        &settings,
        Arc::clone(&auth),
        parts,
        previous.map(|p| &p.gateway),
    );
    let runtime = Runtime {
        settings,
        gateway,
        auth,
    };
    crate::server::open::warn_if_open(&runtime);
    runtime
}

fn key_set(s: &Settings) -> HashSet<(String, String)> {
    s.providers
        .iter()
        .flat_map(|p| p.keys.iter().map(|k| (p.name.clone(), k.id.clone())))
        .collect()
}

/// Drops the metric series of keys that are gone, so dashboards do not show them forever.
fn forget_removed_keys(metrics: &Metrics, old: &Settings, new: &Settings) {
    let kept = key_set(new);
    for (provider, key) in key_set(old).difference(&kept) {
        for state in crate::key_pool::Health::LABELS {
            let _ = metrics
                .key_state
                .remove_label_values(&[provider, key, state]);
        }
        let _ = metrics.key_cooldowns.remove_label_values(&[provider, key]);
        let _ = metrics.key_ejections.remove_label_values(&[provider, key]);
    }
}

fn warn_on_restart_only_changes(old: &Settings, new: &Settings) {
    if old.server.listen != new.server.listen || old.server.admin_listen != new.server.admin_listen
    {
        tracing::warn!("listen addresses changed: they take effect after a restart");
    }
    if old.server.max_body != new.server.max_body {
        tracing::warn!("server.max_body changed: it takes effect after a restart");
    }
    if old.server.workers != new.server.workers {
        tracing::warn!("server.workers changed: it takes effect after a restart");
    }
    if old.server.header_timeout != new.server.header_timeout {
        tracing::warn!("server.header_timeout changed: it takes effect after a restart");
    }
    if old.state.backend != new.state.backend || old.state.redis_url != new.state.redis_url {
        tracing::warn!("state backend changed: it takes effect after a restart");
    }
    let cas = |s: &Settings| {
        let own: Vec<_> = s.providers.iter().map(|p| (&p.name, &p.ca_file)).collect();
        (
            s.egress.ca_file.clone(),
            s.egress.no_proxy.clone(),
            format!("{own:?}"),
        )
    };
    let proxy = |s: &Settings| match &s.egress.proxy {
        crate::config::Proxy::FromEnv => None,
        crate::config::Proxy::Off => Some(String::new()),
        crate::config::Proxy::Url(u) => Some(u.expose().to_owned()),
    };
    if cas(old) != cas(new) || proxy(old) != proxy(new) {
        tracing::warn!("[egress] or a provider's ca_file changed: it takes effect after a restart");
    }
}

#[cfg(test)]
mod tests {
    use super::Reloader;
    use crate::config::{Config, Sources};
    use std::sync::Arc;

    /// A thread's hold on the runtime is the same until the runtime is swapped; each thread
    /// has its own.
    #[test]
    fn a_thread_holds_the_live_runtime_until_it_is_swapped() {
        let path = std::env::temp_dir().join(format!("tollgate-local-{}.toml", std::process::id()));
        let config = |name: &str| {
            format!("[[providers]]\nname = \"{name}\"\nbase_url = \"http://127.0.0.1:9/v1\"\nkeys = [{{ id = \"a\", secret = \"sk\" }}]\n")
        };
        std::fs::write(&path, config("p")).unwrap();
        let sources = Sources {
            path: Some(path.clone()),
            listen: None,
            open: false,
        };
        let settings = Arc::new(Config::load(&sources).unwrap().validate().unwrap());
        let upstream = Arc::new(crate::upstream::HttpUpstream::new(&settings).unwrap());
        let metrics = crate::metrics::Metrics::new().unwrap();
        let reloader = Reloader::new(settings, Some(sources), upstream, metrics, 1);
        let first = reloader.local();
        assert!(Arc::ptr_eq(&first, &reloader.local()));
        assert!(Arc::ptr_eq(&first.runtime, &reloader.current()));

        std::fs::write(&path, config("q")).unwrap();
        let reloaded = reloader.reload("test");
        std::fs::remove_file(&path).unwrap();
        reloaded.unwrap();
        let second = reloader.local();
        assert!(Arc::ptr_eq(&second.runtime, &reloader.current()));
        assert_eq!(second.settings.providers[0].name, "q");
        assert_eq!(
            first.settings.providers[0].name, "p",
            "a request keeps its runtime"
        );

        let other = std::thread::scope(|s| s.spawn(|| reloader.local()).join().unwrap());
        assert!(!Arc::ptr_eq(&other, &second), "each thread holds its own");
        assert!(Arc::ptr_eq(&other.runtime, &second.runtime));
    }
}
