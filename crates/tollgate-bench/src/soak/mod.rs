//! `tollgate-bench soak`: mixed load against the release gateway while its upstreams misbehave in
//! scripted ways, and whether every request still succeeds without a retry storm.
//!
//! ```text
//! tollgate-bench soak [--duration 60s] [--concurrency 16] [--out target/bench/soak.json]
//!                     [--max-amplification 1.15] [--client-threads 2] [--bin-dir DIR]
//! ```
//!
//! It starts the fake upstream in this process (so the faults are scripted per key and every
//! attempt is counted where it lands, see `scenario`), the `tollgate` binary with the scenario's
//! five-provider config, and `--concurrency` loops of chat completions cycling over the four
//! models, half of them streamed (see `load`). It prints the success rate, the retry
//! amplification (upstream attempts per client request), latency, the gateway's RSS at the start,
//! middle and end, per-model and per-key tables and every failure with a sample, writes the same
//! as JSON to `--out`, prints one `soak-result {json}` line, and exits 1 unless every request
//! succeeded and the amplification is at most `--max-amplification`.

mod load;
mod report;
mod scenario;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::args::{parse_count, parse_duration};
use crate::procs::{self, rss_kib, BoxError};

/// The subcommand's name, the first argument.
pub(crate) const COMMAND: &str = "soak";

/// The usage text of the subcommand.
pub(crate) const USAGE: &str = "\
usage: tollgate-bench soak [--duration 60s] [--concurrency 16] [--out target/bench/soak.json]
                           [--max-amplification 1.15] [--client-threads 2] [--bin-dir DIR]

  --duration D            how long the load runs (suffix ms or s; a bare number is seconds)
  --concurrency N         concurrent request loops
  --out PATH              the result as JSON
  --max-amplification X   highest upstream attempts per client request that passes
  --client-threads N      worker threads of the load generator (and the in-process mock)
  --bin-dir DIR           use the tollgate binary in DIR instead of building it";

/// How often a progress line is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Parsed command line of the subcommand.
#[derive(Debug, Clone)]
pub(crate) struct SoakArgs {
    pub(crate) duration: Duration,
    pub(crate) concurrency: usize,
    pub(crate) out: PathBuf,
    pub(crate) max_amplification: f64,
    pub(crate) client_threads: usize,
    pub(crate) bin_dir: Option<PathBuf>,
}

impl Default for SoakArgs {
    fn default() -> SoakArgs {
        SoakArgs {
            duration: Duration::from_secs(60),
            concurrency: 16,
            out: PathBuf::from("target/bench/soak.json"),
            max_amplification: 1.15,
            client_threads: 2,
            bin_dir: None,
        }
    }
}

/// Parses the arguments after `soak`; `Err` carries the message to print.
pub(crate) fn parse(mut args: impl Iterator<Item = String>) -> Result<SoakArgs, String> {
    let mut out = SoakArgs::default();
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.to_owned());
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--duration" => out.duration = parse_duration(&value)?,
            "--concurrency" => out.concurrency = parse_count(&flag, &value)?,
            "--out" => out.out = PathBuf::from(value),
            "--max-amplification" => {
                out.max_amplification = value
                    .parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite() && *x >= 1.0)
                    .ok_or_else(|| format!("{flag}: `{value}` is not a number >= 1"))?;
            }
            "--client-threads" => out.client_threads = parse_count(&flag, &value)?,
            "--bin-dir" => out.bin_dir = Some(PathBuf::from(value)),
            _ => return Err(format!("unknown argument `{flag}`\n{USAGE}")),
        }
    }
    if out.duration.is_zero() {
        return Err(format!("--duration must be positive\n{USAGE}"));
    }
    Ok(out)
}

/// Runs the soak; `Ok(true)` when it passed.
pub(crate) async fn run(args: SoakArgs) -> Result<bool, BoxError> {
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => tokio::task::spawn_blocking(procs::build_binaries).await??,
    };
    let mock = mock_upstream::start(mock_upstream::MockConfig {
        record: false,
        ..mock_upstream::MockConfig::default()
    })
    .await?;
    scenario::script(&mock);
    let config_path =
        std::env::temp_dir().join(format!("tollgate-soak-{}.toml", std::process::id()));
    std::fs::write(&config_path, scenario::config(mock.addr()))?;
    let started = procs::start_gateway(&bin_dir, &config_path);
    let result = match started {
        Ok((mut gateway, addr)) => {
            let result = soak(&args, &mock, gateway.pid(), addr).await;
            match gateway.check_alive() {
                Ok(()) => result,
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_file(&config_path);
    mock.shutdown();
    let summary = result?;
    println!("{}", report::describe(&summary));
    println!("soak-result {summary}");
    let doc = json!({ "meta": meta(&args, &bin_dir), "result": summary });
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&doc)? + "\n")?;
    eprintln!("wrote {}", args.out.display());
    Ok(summary["passed"].as_bool() == Some(true))
}

/// The load against the running gateway (`pid`, on `addr`), and the report of it.
async fn soak(
    args: &SoakArgs,
    mock: &mock_upstream::MockHandle,
    pid: u32,
    addr: std::net::SocketAddr,
) -> Result<Value, BoxError> {
    crate::wait_ready(addr).await?;
    let (rss_start, _) = rss_kib(pid)?;
    eprintln!(
        "tollgate on {addr} (RSS {:.1} MB), fake upstream in process on {}; soaking for {:?} \
         at concurrency {}",
        rss_start as f64 / 1024.0,
        mock.addr(),
        args.duration,
        args.concurrency
    );
    let start = Instant::now();
    let spec = Arc::new(load::Spec {
        uri: crate::load::url(addr, "/v1/chat/completions")?,
        end: start + args.duration,
        next: AtomicU64::new(0),
        progress: load::Progress::default(),
    });
    let (tally, rss_middle) = tokio::join!(
        load::run(spec.clone(), args.concurrency),
        monitor(&spec, pid, start, args.duration)
    );
    let (tally, rss_middle) = (tally?, rss_middle?);
    let seconds = start.elapsed().as_secs_f64();
    let (rss_end, rss_peak) = rss_kib(pid)?;
    let key_attempts: Vec<u64> = scenario::attempts(mock);
    let metrics = scrape(addr).await?;
    report::summarize(&report::Inputs {
        tally: &tally,
        key_attempts: &key_attempts,
        metrics: &metrics,
        rss: report::Rss {
            start: rss_start,
            middle: rss_middle,
            end: rss_end,
            peak: rss_peak,
        },
        seconds,
        concurrency: args.concurrency,
        max_amplification: args.max_amplification,
    })
}

/// Prints progress every `PROGRESS_EVERY` and returns the gateway's RSS half way through.
async fn monitor(
    spec: &load::Spec,
    pid: u32,
    start: Instant,
    duration: Duration,
) -> Result<u64, BoxError> {
    let middle = start + duration / 2;
    let mut rss_middle = None;
    let mut next_line = start + PROGRESS_EVERY;
    while Instant::now() < spec.end {
        let wake = if rss_middle.is_none() {
            next_line.min(middle)
        } else {
            next_line
        };
        tokio::time::sleep_until(wake.min(spec.end)).await;
        let now = Instant::now();
        if rss_middle.is_none() && now >= middle {
            rss_middle = Some(rss_kib(pid)?.0);
        }
        if now >= next_line && now < spec.end {
            next_line += PROGRESS_EVERY;
            eprintln!(
                "t={:>3.0}s requests {} failed {} RSS {:.1} MB",
                (now - start).as_secs_f64(),
                spec.progress.done.load(Ordering::Relaxed),
                spec.progress.failed.load(Ordering::Relaxed),
                rss_kib(pid)?.0 as f64 / 1024.0
            );
        }
    }
    match rss_middle {
        Some(kib) => Ok(kib),
        None => Ok(rss_kib(pid)?.0),
    }
}

/// The gateway's `/metrics` text.
async fn scrape(addr: std::net::SocketAddr) -> Result<String, BoxError> {
    let client = crate::load::client();
    let resp = client.get(crate::load::url(addr, "/metrics")?).await?;
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// Facts about the run: the command, the commit, the machine.
fn meta(args: &SoakArgs, bin_dir: &std::path::Path) -> Value {
    let (git, unix) = (procs::git, procs::unix_time());
    let argv: Vec<String> = std::env::args().collect();
    json!({
        "command": argv.join(" "),
        "commit": git(&["rev-parse", "HEAD"]),
        "dirty": git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty()),
        "unix_time": unix,
        "duration_s": args.duration.as_secs_f64(),
        "concurrency": args.concurrency,
        "client_threads": args.client_threads,
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "loadavg_at_end": std::fs::read_to_string("/proc/loadavg").ok().map(|s| s.trim().to_owned()),
        "bin_dir": bin_dir.display().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_strs(args: &[&str]) -> Result<SoakArgs, String> {
        parse(args.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn parses_flags_with_defaults_for_the_rest() -> Result<(), String> {
        let a = parse_strs(&[])?;
        assert_eq!(a.duration, Duration::from_secs(60));
        assert_eq!(a.concurrency, 16);
        let a = parse_strs(&[
            "--duration",
            "5s",
            "--concurrency",
            "8",
            "--max-amplification",
            "1.2",
            "--out",
            "x.json",
        ])?;
        assert_eq!(a.duration, Duration::from_secs(5));
        assert_eq!(a.concurrency, 8);
        assert!((a.max_amplification - 1.2).abs() < 1e-9);
        assert_eq!(a.out, PathBuf::from("x.json"));
        for bad in [
            &["--duration", "0"][..],
            &["--max-amplification", "0.5"],
            &["--concurrency", "0"],
            &["--bogus", "1"],
            &["--out"],
        ] {
            assert!(parse_strs(bad).is_err(), "{bad:?}");
        }
        Ok(())
    }
}
