//! Tollgate: an OpenAI-compatible reverse-proxy gateway for LLM APIs.
//!
//! `build_app` assembles the app from validated settings and swappable dependencies;
//! `serve` runs it with graceful shutdown. See ARCHITECTURE.md for the request path.

pub mod auth;
pub mod body;
pub mod client_policy;
pub mod config;
pub mod digest;
pub mod dispatch;
pub mod endpoint;
pub mod error;
pub mod key_pool;
pub mod metrics;
pub mod ownership;
pub mod policy;
pub mod provider;
pub mod rate_limit;
pub mod reload;
pub mod request;
pub mod server;
pub mod sse;
pub mod stack;
pub mod stream;
pub mod telemetry;
pub mod units;
pub mod upstream;
pub mod usage;

use axum::serve::ListenerExt;
use config::Settings;
use metrics::Metrics;
use server::AppState;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use upstream::{HttpUpstream, Upstream};

/// What tests swap: the upstream client, the metrics registry, the RNG seed.
pub struct Deps {
    /// Upstream I/O.
    pub upstream: Arc<dyn Upstream>,
    /// Metrics registry.
    pub metrics: Metrics,
    /// Seed of the jitter RNG.
    pub seed: u64,
}

impl Deps {
    /// Production dependencies: the pooled HTTP client, a fresh registry, a random seed.
    pub fn production(
        settings: &Settings,
    ) -> Result<Deps, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Deps {
            upstream: Arc::new(HttpUpstream::new(settings)?),
            metrics: Metrics::new()?,
            seed: rand::random(),
        })
    }
}

/// The app and its state. `sources` is where config reloads read from (`None`: no reloads).
pub fn build_app(
    settings: Arc<Settings>,
    deps: Deps,
    sources: Option<config::Sources>,
) -> (server::App, AppState) {
    let separate_admin = settings.server.admin_listen.is_some();
    let reloader = Arc::new(reload::Reloader::new(
        settings,
        sources,
        deps.upstream,
        deps.metrics.clone(),
        deps.seed,
    ));
    let state = AppState {
        reloader,
        metrics: Arc::new(deps.metrics),
        ready: Arc::new(AtomicBool::new(false)),
    };
    (server::router(state.clone(), !separate_admin), state)
}

/// Binds the listeners, serves until SIGTERM/SIGINT, then drains for up to `drain_timeout`.
/// Connections are served by `server::listen` (header timeout, header size).
pub async fn serve(
    settings: Arc<Settings>,
    deps: Deps,
    sources: Option<config::Sources>,
) -> std::io::Result<()> {
    let drain = settings.server.drain_timeout;
    let listen = settings.server.listen;
    let admin = settings.server.admin_listen;
    let header_timeout = settings.server.header_timeout;
    let worker_threads = settings.server.workers;
    let pack_workers = settings.server.pack_workers;
    let (app, state) = build_app(settings, deps, sources);
    state.reloader.spawn_watchers();
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    if let Some(addr) = admin {
        let admin_listener = tokio::net::TcpListener::bind(addr).await?;
        tracing::info!(addr = %admin_listener.local_addr()?, "admin listening");
        let ops = server::ops_router(true).with_state(state.clone());
        let stop = stopped();
        tokio::spawn(server::listen::serve(
            admin_listener.tap_io(no_delay),
            ops,
            header_timeout,
            stop,
            None,
        ));
    }
    tracing::info!(addr = %listener.local_addr()?, "listening");
    state.ready.store(true, Ordering::Relaxed);
    let ready = state.ready.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        ready.store(false, Ordering::Relaxed);
        tracing::info!(
            drain_timeout_ms = drain.as_millis() as u64,
            "shutting down: draining in-flight requests"
        );
        let _ = stop_tx.send(true);
    });
    // Small writes (SSE chunks) must not wait for Nagle's algorithm and the peer's delayed ACK.
    // The peer address reaches open mode's loopback check (server/open.rs) as ConnectInfo.
    // The main listener's connections run on worker threads of their own (server::workers).
    let workers = Arc::new(server::workers::Workers::start(
        worker_threads,
        pack_workers,
    )?);
    tracing::info!(
        workers = workers.len(),
        pack_workers,
        "serving on worker threads"
    );
    let server = server::listen::serve(
        listener.tap_io(no_delay),
        app,
        header_timeout,
        stopped(),
        Some(Arc::clone(&workers)),
    );
    let drain_deadline = {
        let stop = stopped();
        async move {
            stop.await;
            tokio::time::sleep(drain).await;
        }
    };
    tokio::select! {
        () = server => {}
        () = drain_deadline => tracing::warn!(after = ?drain, "drain timeout: closing remaining connections"),
    }
    // What the workers still run (connections past the drain timeout) ends with them.
    drop(workers);
    tracing::info!("stopped");
    Ok(())
}

fn no_delay(tcp: &mut tokio::net::TcpStream) {
    let _ = tcp.set_nodelay(true);
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
