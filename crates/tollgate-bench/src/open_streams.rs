//! `--open-streams N`: holds N slow streams open through Tollgate at once and reports its memory,
//! then the same through the bare proxy (the baseline: what a hyper proxy pays per stream).
//!
//! Each stream asks the mock for 20 chunks one second apart, so every stream stays open for about
//! 19 s after its first chunk. Once every stream has received its first chunk, Tollgate's RSS is
//! sampled for a second; then the streams are dropped (the client closes the connections) and the
//! RSS is read again after a pause, to show what is given back.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::StatusCode;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::args::Scenario;
use crate::load;
use crate::procs::{reset_peak_rss, rss_kib, BoxError};

/// Pause between two chunks of a held stream, as a mock header value.
const CHUNK_DELAY_MS: &str = "1000";

/// Longest wait for every stream to deliver its first chunk.
const OPEN_LIMIT: Duration = Duration::from_secs(30);

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Opens `n` streams through the proxy at `addr` (process `pid`) and measures its RSS.
pub(crate) async fn measure(addr: SocketAddr, pid: u32, n: usize) -> Result<Value, BoxError> {
    let uri = load::url(addr, "/v1/chat/completions")?;
    let client = load::client();
    let (rss_before, _) = rss_kib(pid)?;
    let peak_reset = reset_peak_rss(pid);
    let opened = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let body = load::body(Scenario::Stream20);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let req = load::request(
            &uri,
            Scenario::Stream20,
            body.clone(),
            &[("x-mock-chunk-delay-ms", CHUNK_DELAY_MS)],
        )?;
        let (client, opened, failed) = (client.clone(), opened.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let resp = match client.request(req).await {
                Ok(resp) if resp.status() == StatusCode::OK => resp,
                _ => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            let mut body = resp.into_body();
            let mut first = true;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) if f.is_data() && first => {
                        first = false;
                        opened.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }));
    }
    let deadline = started + OPEN_LIMIT;
    while opened.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < n
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let open_seconds = started.elapsed().as_secs_f64();
    let opened_count = opened.load(Ordering::Relaxed);
    let mut rss_open = 0;
    for _ in 0..10 {
        rss_open = rss_open.max(rss_kib(pid)?.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, peak) = rss_kib(pid)?;
    for task in &tasks {
        task.abort();
    }
    drop(tasks);
    drop(client);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (rss_after, _) = rss_kib(pid)?;
    let per_stream_kib = if opened_count > 0 {
        rss_open.saturating_sub(rss_before) as f64 / opened_count as f64
    } else {
        0.0
    };
    Ok(json!({
        "streams": n,
        "opened": opened_count,
        "failed": failed.load(Ordering::Relaxed),
        "open_seconds": open_seconds,
        "rss_before_mib": mib(rss_before),
        "rss_all_open_mib": mib(rss_open),
        "peak_rss_mib": mib(peak),
        "peak_reset": peak_reset,
        "rss_after_release_mib": mib(rss_after),
        "kib_per_open_stream": per_stream_kib,
    }))
}

/// One line for the printed report, about the process called `who`.
pub(crate) fn describe(who: &str, v: &Value) -> String {
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
    format!(
        "open streams: {} of {} open (failed {}) in {:.1} s; {who} RSS {:.1} MB before, \
         {:.1} MB with all open (peak {:.1} MB, {:.1} KiB/stream), {:.1} MB after release",
        v["opened"],
        v["streams"],
        v["failed"],
        f("open_seconds"),
        f("rss_before_mib"),
        f("rss_all_open_mib"),
        f("peak_rss_mib"),
        f("kib_per_open_stream"),
        f("rss_after_release_mib"),
    )
}
