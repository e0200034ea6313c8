//! `tollgate-bench`: what Tollgate costs on top of its upstream.
//!
//! ```text
//! cargo run --release -p tollgate-bench -- [--duration 5s] [--reps 3] [--concurrency 32,128]
//!     [--scenarios immediate,delay20,stream20] [--out target/bench/results.json]
//!     [--open-streams 1000] [--bin-dir DIR] [--smoke]
//! ```
//!
//! It builds `tollgate` and `mock-upstream` (same profile as itself, unless `--bin-dir`), starts
//! the mock and the gateway on ephemeral ports (the gateway with a realistic config: one client
//! key, one model with a two-target chain, 3 + 1 upstream keys with limits that never bind), then
//! for every scenario × concurrency × repetition measures a run straight at the mock and one
//! through the gateway (the order alternates per repetition), each after a discarded warmup.
//! It prints a table of medians over repetitions (ratios and deltas are taken within each
//! direct/gateway pair, then the median), and writes every run as JSON and CSV. See
//! `benches/README.md`.
#![allow(clippy::print_stdout, reason = "a CLI that prints its report")]

mod args;
mod load;
mod open_streams;
mod procs;
mod report;

use std::net::SocketAddr;
use std::process::{Command, ExitCode};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::args::{Args, Scenario};
use crate::procs::{cpu_ticks, reset_peak_rss, rss_kib, BoxError, Proc};
use crate::report::{Mode, RunRecord};

fn main() -> ExitCode {
    let args = match args::parse(std::env::args().skip(1)) {
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

/// The processes under test and how to read them.
struct Setup {
    mock: Proc,
    mock_addr: SocketAddr,
    gateway: Proc,
    gateway_addr: SocketAddr,
    clock_ticks: u64,
}

/// Runs everything; returns the number of failed requests.
async fn run(args: Args) -> Result<u64, BoxError> {
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => tokio::task::spawn_blocking(procs::build_binaries).await??,
    };
    let (mock, mock_addr) = procs::start_mock(&bin_dir)?;
    let config_path =
        std::env::temp_dir().join(format!("tollgate-bench-{}.toml", std::process::id()));
    std::fs::write(&config_path, procs::gateway_config(mock_addr))?;
    let started = procs::start_gateway(&bin_dir, &config_path);
    let result = match started {
        Ok((gateway, gateway_addr)) => {
            let mut setup = Setup {
                mock,
                mock_addr,
                gateway,
                gateway_addr,
                clock_ticks: procs::clock_ticks(),
            };
            measure_all(&args, &mut setup, &bin_dir).await
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
) -> Result<u64, BoxError> {
    let loadavg = std::fs::read_to_string("/proc/loadavg").ok();
    wait_ready(setup.gateway_addr).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (idle_rss, _) = rss_kib(setup.gateway.pid())?;
    eprintln!(
        "mock-upstream on {}, tollgate on {} (idle RSS {:.1} MB)",
        setup.mock_addr,
        setup.gateway_addr,
        idle_rss as f64 / 1024.0
    );
    let peak_reset = reset_peak_rss(setup.gateway.pid());
    let mut runs = Vec::new();
    for &scenario in &args.scenarios {
        for &concurrency in &args.concurrency {
            for rep in 1..=args.reps {
                let order = if rep % 2 == 1 {
                    [Mode::Direct, Mode::Gateway]
                } else {
                    [Mode::Gateway, Mode::Direct]
                };
                for mode in order {
                    let record = measure_run(args, setup, scenario, concurrency, rep, mode).await?;
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
                    setup.mock.check_alive()?;
                    setup.gateway.check_alive()?;
                }
            }
        }
    }
    let summary = report::summarize(&runs);
    if !summary.is_empty() {
        println!("{}", report::table(&summary));
    }
    println!("tollgate idle RSS: {:.1} MB", idle_rss as f64 / 1024.0);
    let open = match args.open_streams {
        Some(n) => {
            let v = open_streams::measure(setup.gateway_addr, setup.gateway.pid(), n).await?;
            println!("{}", open_streams::describe(&v));
            setup.gateway.check_alive()?;
            Some(v)
        }
        None => None,
    };
    let meta = meta(args, setup, bin_dir, idle_rss, peak_reset, loadavg);
    for path in report::write_files(&args.out, meta, &runs, &summary, open)? {
        eprintln!("wrote {path}");
    }
    Ok(runs.iter().map(|r| r.errors).sum())
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

/// CPU ticks of (gateway, mock, this process) between `start` and `end`.
async fn cpu_window(pids: [u32; 3], start: Instant, end: Instant) -> Result<[u64; 3], BoxError> {
    let sample = || -> Result<[u64; 3], BoxError> {
        Ok([
            cpu_ticks(pids[0])?,
            cpu_ticks(pids[1])?,
            cpu_ticks(pids[2])?,
        ])
    };
    tokio::time::sleep_until(start).await;
    let before = sample()?;
    tokio::time::sleep_until(end).await;
    let after = sample()?;
    Ok([0, 1, 2].map(|i| after[i].saturating_sub(before[i])))
}

/// One measured run (with its warmup) against the mock or the gateway.
async fn measure_run(
    args: &Args,
    setup: &Setup,
    scenario: Scenario,
    concurrency: usize,
    rep: u32,
    mode: Mode,
) -> Result<RunRecord, BoxError> {
    let target = match mode {
        Mode::Direct => setup.mock_addr,
        Mode::Gateway => setup.gateway_addr,
    };
    let gw_pid = setup.gateway.pid();
    if mode == Mode::Gateway {
        reset_peak_rss(gw_pid);
    }
    let now = Instant::now();
    let spec = load::RunSpec {
        uri: load::url(target, "/v1/chat/completions")?,
        scenario,
        concurrency,
        start: now + args.warmup,
        end: now + args.warmup + args.duration,
    };
    let pids = [gw_pid, setup.mock.pid(), 0];
    let (result, cpu) = tokio::join!(load::run(&spec), cpu_window(pids, spec.start, spec.end));
    let (result, cpu) = (result?, cpu?);
    let seconds = args.duration.as_secs_f64();
    let per_req = |ticks: u64| {
        if result.requests == 0 {
            0.0
        } else {
            ticks as f64 * 1e6 / setup.clock_ticks as f64 / result.requests as f64
        }
    };
    let ms = |q: f64| result.latency.value_at_quantile(q) as f64 / 1000.0;
    let rss = if mode == Mode::Gateway {
        Some(rss_kib(gw_pid)?)
    } else {
        None
    };
    Ok(RunRecord {
        scenario,
        concurrency,
        rep,
        mode,
        requests: result.requests,
        errors: result.errors,
        first_error: result.first_error,
        seconds,
        rps: result.requests as f64 / seconds,
        mean_ms: result.latency.mean() / 1000.0,
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: result.latency.max() as f64 / 1000.0,
        gateway_cpu_us_per_req: (mode == Mode::Gateway).then(|| per_req(cpu[0])),
        mock_cpu_us_per_req: per_req(cpu[1]),
        loadgen_cpu_us_per_req: per_req(cpu[2]),
        gateway_rss_kib: rss.map(|r| r.0),
        gateway_peak_rss_kib: rss.map(|r| r.1),
    })
}

/// Facts about the run that make two result files comparable.
fn meta(
    args: &Args,
    setup: &Setup,
    bin_dir: &std::path::Path,
    idle: u64,
    reset: bool,
    loadavg: Option<String>,
) -> Value {
    let git = |cmd: &[&str]| {
        Command::new("git")
            .args(cmd)
            .current_dir(procs::workspace())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
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
        "idle_rss_kib": idle,
        "peak_rss_reset_per_run": reset,
        "smoke": args.smoke,
    })
}
