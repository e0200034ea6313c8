//! `tollgate-bench instructions`: CPU instructions per request, counted by valgrind's callgrind,
//! for the gateway and the bare proxy. Wall-clock ratios move ±10% between runs on a shared
//! 2-core machine; instruction counts move by a fraction of a percent, so a change to the hot
//! path is judged here first and by the load matrix after.
//!
//! ```text
//! tollgate-bench instructions [--requests 2000] [--scenarios immediate,stream20,prompt40k]
//!     [--bin-dir DIR] [--keep DIR]
//! ```
//!
//! For each process (gateway, bare proxy) and scenario it starts the process under
//! `valgrind --tool=callgrind` in front of the mock (not itself measured), sends `WARM` requests
//! and then `--requests` more, one at a time over one keep-alive connection, stops it with
//! `SIGTERM`, and reads the instruction total callgrind writes at exit; a second run sends the
//! warm requests alone. The difference divided by `--requests` is the cost of one request,
//! startup, shutdown and first-request work excluded; `--keep DIR` leaves callgrind's files there
//! (`callgrind_annotate --inclusive=yes FILE` shows where the instructions went). `delay20`
//! counts nothing more than `immediate` here and is not offered.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use crate::args::{parse_count, parse_scenarios, Scenario};
use crate::load;
use crate::procs::{self, BoxError, Proc};

/// The subcommand's name.
pub(crate) const COMMAND: &str = "instructions";

/// Requests sent before the measured ones (connections, lazily built state), in both runs.
const WARM: usize = 20;

/// How long a process under valgrind gets to start, and to exit after `SIGTERM`.
const PATIENCE: Duration = Duration::from_secs(120);

/// Parsed flags.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Opts {
    requests: usize,
    scenarios: Vec<Scenario>,
    bin_dir: Option<PathBuf>,
    keep: Option<PathBuf>,
}

/// Parses the flags after `instructions`.
pub(crate) fn parse(mut args: impl Iterator<Item = String>) -> Result<Opts, String> {
    let mut opts = Opts {
        requests: 2000,
        scenarios: vec![Scenario::Immediate, Scenario::Stream20, Scenario::Prompt40k],
        bin_dir: None,
        keep: None,
    };
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--requests" => opts.requests = parse_count(&flag, &value()?)?,
            "--scenarios" => {
                opts.scenarios = parse_scenarios(&value()?)?;
                if opts.scenarios.contains(&Scenario::Delay20) {
                    return Err("delay20 counts what immediate does; not offered here".to_owned());
                }
            }
            "--bin-dir" => opts.bin_dir = Some(PathBuf::from(value()?)),
            "--keep" => opts.keep = Some(PathBuf::from(value()?)),
            "-h" | "--help" => {
                return Err("usage: tollgate-bench instructions [--requests 2000] \
                     [--scenarios immediate,stream20,prompt40k] [--bin-dir DIR] [--keep DIR]"
                    .to_owned())
            }
            other => return Err(format!("unknown flag `{other}` (see --help)")),
        }
    }
    Ok(opts)
}

/// Entry point of `tollgate-bench instructions ...`.
pub(crate) fn main(argv: impl Iterator<Item = String>) -> ExitCode {
    let opts = match parse(argv) {
        Ok(opts) => opts,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(BoxError::from)
        .and_then(|rt| rt.block_on(run(opts)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate-bench instructions: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Which process is measured.
#[derive(Debug, Clone, Copy)]
enum Target {
    Gateway,
    Bare,
}

async fn run(opts: Opts) -> Result<(), BoxError> {
    let valgrind = Command::new("valgrind").arg("--version").output();
    if !valgrind.is_ok_and(|o| o.status.success()) {
        return Err("valgrind is not installed (apt-get install valgrind)".into());
    }
    let bin_dir = match &opts.bin_dir {
        Some(dir) => dir.clone(),
        None => tokio::task::spawn_blocking(procs::build_binaries).await??,
    };
    let (_mock, mock_addr) = procs::start_mock(&bin_dir)?;
    let work = opts.keep.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("tollgate-instructions-{}", std::process::id()))
    });
    std::fs::create_dir_all(&work)?;
    let config = work.join("tollgate.toml");
    std::fs::write(&config, gateway_config(mock_addr))?;
    let setup = Setup {
        bin_dir,
        config,
        work: work.clone(),
        mock_addr,
    };
    println!(
        "| scenario | gateway instr/req | bare instr/req | gateway ÷ bare | gateway − bare |\n\
         | --- | --- | --- | --- | --- |"
    );
    let result = async {
        for &scenario in &opts.scenarios {
            let gateway = setup
                .per_request(Target::Gateway, scenario, opts.requests)
                .await?;
            let bare = setup
                .per_request(Target::Bare, scenario, opts.requests)
                .await?;
            println!(
                "| {} | {:.1}k | {:.1}k | {:.2} | {:.1}k |",
                scenario.name(),
                gateway / 1000.0,
                bare / 1000.0,
                gateway / bare,
                (gateway - bare) / 1000.0
            );
        }
        Ok::<(), BoxError>(())
    }
    .await;
    if opts.keep.is_none() {
        let _ = std::fs::remove_dir_all(&work);
    }
    result
}

struct Setup {
    bin_dir: PathBuf,
    config: PathBuf,
    work: PathBuf,
    mock_addr: std::net::SocketAddr,
}

impl Setup {
    /// Instructions of one request of `scenario` through `target`.
    async fn per_request(
        &self,
        target: Target,
        scenario: Scenario,
        requests: usize,
    ) -> Result<f64, BoxError> {
        let base = self.total(target, scenario, WARM).await?;
        let loaded = self.total(target, scenario, WARM + requests).await?;
        Ok(loaded.saturating_sub(base) as f64 / requests.max(1) as f64)
    }

    /// The instructions `target` executes from start to exit, serving `count` requests.
    async fn total(
        &self,
        target: Target,
        scenario: Scenario,
        count: usize,
    ) -> Result<u64, BoxError> {
        let out = self
            .work
            .join(format!("callgrind.{target:?}.{}.{count}", scenario.name()));
        let wrapper = vec![
            "valgrind".to_owned(),
            "--tool=callgrind".to_owned(),
            format!("--callgrind-out-file={}", out.display()),
        ];
        let (mut proc, addr): (Proc, _) = match target {
            Target::Gateway => procs::start_gateway_under(&self.bin_dir, &self.config, &wrapper)?,
            Target::Bare => procs::start_bare_under(self.mock_addr, &wrapper)?,
        };
        let sent = send(addr, scenario, count).await;
        // Blocking is fine: nothing of this process needs to run meanwhile.
        proc.terminate(PATIENCE)?;
        sent?;
        read_total(&out)
    }
}

/// Sends `count` requests of `scenario` to `addr`, one after another on one connection.
async fn send(
    addr: std::net::SocketAddr,
    scenario: Scenario,
    count: usize,
) -> Result<(), BoxError> {
    let client = load::client();
    let uri = load::url(addr, scenario.path())?;
    let body = load::body(scenario);
    for _ in 0..count {
        let req = load::request(&uri, scenario, body.clone(), &[])?;
        load::exchange(&client, req, scenario.streaming()).await?;
    }
    Ok(())
}

/// The load matrix's gateway config without packing the workers (`server.pack_workers`).
///
/// Packing is a wall-clock policy, and under callgrind the clock runs fifty times slow: it would
/// decide on nothing real. On a loaded machine it also ended the run: callgrind failed its own
/// assertion (`vgCallgrind_post_signal`) and died within the first few requests, every time with
/// packing on and never with it off.
fn gateway_config(mock: std::net::SocketAddr) -> String {
    procs::gateway_config(mock, None).replacen("[server]\n", "[server]\npack_workers = false\n", 1)
}

/// The `summary:` (or `totals:`) line of a callgrind output file: the instructions counted.
fn read_total(path: &Path) -> Result<u64, BoxError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("no callgrind output at {}: {e}", path.display()))?;
    total_of(&text).ok_or_else(|| format!("no instruction total in {}", path.display()).into())
}

fn total_of(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_measured_gateway_does_not_pack_its_workers() {
        let config = gateway_config("127.0.0.1:9".parse().unwrap());
        assert!(
            config.starts_with("[server]\npack_workers = false\n"),
            "{config}"
        );
        assert_eq!(config.matches("pack_workers").count(), 1, "{config}");
    }

    #[test]
    fn reads_the_total_callgrind_writes() {
        let out = "# callgrind format\nversion: 1\nevents: Ir\nfn=(1) main\n3 10\n\
                   summary: 271650823\n\n\ntotals: 271650823\n";
        assert_eq!(total_of(out), Some(271_650_823));
        assert_eq!(total_of("events: Ir\ntotals: 42\n"), Some(42));
        assert_eq!(total_of("events: Ir\n"), None);
        assert_eq!(total_of("summary: lots\n"), None);
    }

    #[test]
    fn parses_flags_with_defaults_for_the_rest() {
        let args = |s: &str| parse(s.split_whitespace().map(str::to_owned));
        let defaults = args("").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(defaults.requests, 2000);
        assert_eq!(defaults.scenarios.len(), 3);
        let set = args("--requests 50 --scenarios stream20 --bin-dir /x --keep /k")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(set.requests, 50);
        assert_eq!(set.scenarios, vec![Scenario::Stream20]);
        assert_eq!(set.bin_dir, Some(PathBuf::from("/x")));
        assert_eq!(set.keep, Some(PathBuf::from("/k")));
        assert!(args("--scenarios delay20").is_err());
        assert!(args("--requests").is_err());
    }
}
