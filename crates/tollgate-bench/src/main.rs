//! `tollgate-bench`: what Tollgate costs on top of its upstream.
//!
//! ```text
//! cargo run --release -p tollgate-bench -- [--duration 5s] [--reps 5] [--concurrency 32,128]
//!     [--scenarios immediate,delay20,stream20,prompt40k] [--out target/bench/results.json]
//!     [--open-streams 1000] [--bin-dir DIR] [--smoke]
//! ```
//!
//! It builds `tollgate` and `mock-upstream` (same profile as itself, unless `--bin-dir`), starts
//! the mock, a bare hyper pass-through proxy in front of it (this binary re-run as
//! `--serve-bare-proxy`, see `bare`) and the gateway on ephemeral ports (the gateway with a
//! realistic config: one client key, one model with a two-target chain, 3 + 1 upstream keys with
//! limits that never bind), then for every scenario × concurrency × repetition measures a run
//! straight at the mock, one through the bare proxy and one through the gateway (the order
//! rotates per repetition), each after a discarded warmup. It prints a table of medians over
//! repetitions (ratios and deltas are taken within each repetition, then the median), then the
//! performance goals each median meets or misses with its range over the repetitions (`goals`),
//! and writes every run as JSON and CSV. See `benches/README.md`.
//!
//! `tollgate-bench soak [--duration 60s] [--concurrency 16] ...` is the fault soak instead: mixed
//! load through the gateway while its upstreams fail in scripted ways (see `soak`).
//!
//! `tollgate-bench instructions [--requests 2000] ...` counts the CPU instructions of one request
//! through the gateway and through the bare proxy with valgrind's callgrind (see `instructions`).
#![allow(clippy::print_stdout, reason = "a CLI that prints its report")]

/// The same allocator as the gateway, so the bare proxy baseline differs only in what it does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod args;
mod bare;
mod codex_turn;
mod goals;
mod instructions;
mod load;
mod measure;
mod open_streams;
mod output;
mod procs;
mod report;
mod soak;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};

use crate::args::Args;
use crate::measure::Setup;
use crate::procs::{reset_peak_rss, rss_kib, BoxError};
use crate::report::Mode;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().is_some_and(|a| a == bare::FLAG) {
        return bare::main(argv.get(1).map(String::as_str));
    }
    if argv.first().is_some_and(|a| a == soak::COMMAND) {
        return soak_main(argv.into_iter().skip(1));
    }
    if argv.first().is_some_and(|a| a == instructions::COMMAND) {
        return instructions::main(argv.into_iter().skip(1));
    }
    let args = match args::parse(argv.into_iter()) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads)
        .enable_all()
        .build();
    let result = match runtime {
        Ok(rt) => rt.block_on(run(args)),
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(0) => ExitCode::SUCCESS,
        Ok(errors) => {
            eprintln!("tollgate-bench: {errors} requests failed (see first_error in the JSON)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("tollgate-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `tollgate-bench soak ...`: exits 0 when the soak passed, 1 when it did not or could not run.
fn soak_main(argv: impl Iterator<Item = String>) -> ExitCode {
    let args = match soak::parse(argv) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads)
        .enable_all()
        .build();
    let result = match runtime {
        Ok(rt) => rt.block_on(soak::run(args)),
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("tollgate-bench soak: FAILED (see the failures above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("tollgate-bench soak: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs everything; returns the number of failed requests.
async fn run(args: Args) -> Result<u64, BoxError> {
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => tokio::task::spawn_blocking(procs::build_binaries).await??,
    };
    let (mock, mock_addr) = procs::start_mock(&bin_dir)?;
    let (bare, bare_addr) = procs::start_bare(mock_addr)?;
    let config_path =
        std::env::temp_dir().join(format!("tollgate-bench-{}.toml", std::process::id()));
    std::fs::write(
        &config_path,
        procs::gateway_config(mock_addr, args.redis.as_deref()),
    )?;
    let started = procs::start_gateway(&bin_dir, &config_path);
    let result = match started {
        Ok((gateway, gateway_addr)) => {
            let mut setup = Setup {
                mock,
                mock_addr,
                bare,
                bare_addr,
                gateway,
                gateway_addr,
                clock_ticks: procs::clock_ticks(),
            };
            measure_all(&args, &mut setup, &bin_dir, &config_path).await
        }
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_file(&config_path);
    result
}

async fn measure_all(
    args: &Args,
    setup: &mut Setup,
    bin_dir: &std::path::Path,
    config_path: &std::path::Path,
) -> Result<u64, BoxError> {
    let loadavg = std::fs::read_to_string("/proc/loadavg").ok();
    wait_ready(setup.gateway_addr).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (idle_rss, _) = rss_kib(setup.gateway.pid())?;
    let (bare_idle_rss, _) = rss_kib(setup.bare.pid())?;
    eprintln!(
        "mock-upstream on {}, bare proxy on {} (idle RSS {:.1} MB), tollgate on {} \
         (idle RSS {:.1} MB)",
        setup.mock_addr,
        setup.bare_addr,
        bare_idle_rss as f64 / 1024.0,
        setup.gateway_addr,
        idle_rss as f64 / 1024.0
    );
    let peak_reset = reset_peak_rss(setup.gateway.pid()) && reset_peak_rss(setup.bare.pid());
    let mut runs = Vec::new();
    for &scenario in &args.scenarios {
        for &concurrency in &args.concurrency {
            for rep in 1..=args.reps {
                for mode in Mode::order(rep) {
                    let record =
                        measure::run(args, setup, scenario, concurrency, rep, mode).await?;
                    eprintln!(
                        "{:<9} c={:<4} rep {rep}/{} {:<7} {:>9.0} req/s  p50 {:>7.2} ms  \
                         p99 {:>7.2} ms  errors {}",
                        scenario.name(),
                        concurrency,
                        args.reps,
                        mode.name(),
                        record.rps,
                        record.p50_ms,
                        record.p99_ms,
                        record.errors
                    );
                    runs.push(record);
                    setup.check_alive()?;
                }
            }
        }
    }
    let summary = report::summarize(&runs);
    if !summary.is_empty() {
        println!("{}", output::table(&summary));
    }
    println!(
        "tollgate idle RSS: {:.1} MB, bare proxy idle RSS: {:.1} MB",
        idle_rss as f64 / 1024.0,
        bare_idle_rss as f64 / 1024.0
    );
    let open = match args.open_streams {
        Some(n) => {
            Some(open_streams_twice(setup, bin_dir, config_path, n, !runs.is_empty()).await?)
        }
        None => None,
    };
    let goals = goals::check(&summary, open.as_ref(), idle_rss);
    if !args.smoke && !goals.is_empty() {
        println!("{}", goals::describe(&goals));
    }
    let idle = [idle_rss, bare_idle_rss];
    let meta = meta(args, setup, bin_dir, idle, peak_reset, loadavg);
    let results = output::Results {
        runs: &runs,
        summary: &summary,
        open_streams: open,
        goals: &goals,
    };
    for path in output::write_files(&args.out, meta, &results)? {
        eprintln!("wrote {path}");
    }
    Ok(runs.iter().map(|r| r.errors).sum())
}

/// Holds `n` streams open through the gateway, then through the bare proxy. After a load
/// matrix (`loaded`) it does so twice: on the processes that served the matrix (their
/// allocators keep some of its memory), then on fresh ones, as on an idle gateway; the JSON's
/// `gateway` and `bare` are the fresh figures, `*_after_load` the others.
async fn open_streams_twice(
    setup: &mut Setup,
    bin_dir: &std::path::Path,
    config_path: &std::path::Path,
    n: usize,
    loaded: bool,
) -> Result<serde_json::Value, BoxError> {
    let mut found = serde_json::Map::new();
    let rounds: &[(&str, &str)] = if loaded {
        &[
            ("_after_load", " (after the load matrix)"),
            ("", " (fresh process)"),
        ]
    } else {
        &[("", "")]
    };
    for (i, (suffix, label)) in rounds.iter().enumerate() {
        if i > 0 {
            let (bare, bare_addr) = procs::start_bare(setup.mock_addr)?;
            let (gateway, gateway_addr) = procs::start_gateway(bin_dir, config_path)?;
            // The old processes are stopped as these replace them.
            setup.bare = bare;
            setup.bare_addr = bare_addr;
            setup.gateway = gateway;
            setup.gateway_addr = gateway_addr;
            wait_ready(setup.gateway_addr).await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let gateway = open_streams::measure(setup.gateway_addr, setup.gateway.pid(), n).await?;
        println!(
            "{}",
            open_streams::describe(&format!("tollgate{label}"), &gateway)
        );
        setup.gateway.check_alive()?;
        // The same streams through the bare proxy: what any hyper proxy pays per stream.
        let bare = open_streams::measure(setup.bare_addr, setup.bare.pid(), n).await?;
        println!(
            "{}",
            open_streams::describe(&format!("bare proxy{label}"), &bare)
        );
        setup.bare.check_alive()?;
        found.insert(format!("gateway{suffix}"), gateway);
        found.insert(format!("bare{suffix}"), bare);
    }
    Ok(serde_json::Value::Object(found))
}

/// Polls the gateway's `/readyz` until it answers 200 (10 s at most).
async fn wait_ready(addr: SocketAddr) -> Result<(), BoxError> {
    let client = load::client();
    let uri = load::url(addr, "/readyz")?;
    for _ in 0..1000 {
        if let Ok(resp) = client.get(uri.clone()).await {
            if resp.status() == hyper::StatusCode::OK {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(format!("tollgate on {addr} never became ready").into())
}

/// Facts about the run that make two result files comparable.
fn meta(
    args: &Args,
    setup: &Setup,
    bin_dir: &std::path::Path,
    idle: [u64; 2],
    reset: bool,
    loadavg: Option<String>,
) -> Value {
    let (git, unix) = (procs::git, procs::unix_time());
    json!({
        "commit": git(&["rev-parse", "HEAD"]),
        "dirty": git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty()),
        "unix_time": unix,
        "duration_s": args.duration.as_secs_f64(),
        "warmup_s": args.warmup.as_secs_f64(),
        "reps": args.reps,
        "concurrency": args.concurrency,
        "scenarios": args.scenarios.iter().map(|s| s.name()).collect::<Vec<_>>(),
        "client_threads": args.client_threads,
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "loadavg_at_start": loadavg.map(|s| s.trim().to_owned()),
        "clock_ticks": setup.clock_ticks,
        "bin_dir": bin_dir.display().to_string(),
        "idle_rss_kib": idle[0],
        "bare_idle_rss_kib": idle[1],
        "peak_rss_reset_per_run": reset,
        "smoke": args.smoke,
    })
}
