//! One measured run: load at the mock, the bare proxy or Tollgate, with the CPU time and memory
//! of the processes under test read around the measured window.

use std::net::SocketAddr;

use tokio::time::Instant;

use crate::args::{Args, Scenario};
use crate::load;
use crate::procs::{cpu_ticks, reset_peak_rss, rss_kib, BoxError, Proc};
use crate::report::{Mode, RunRecord};

/// The processes under test and how to read them.
pub(crate) struct Setup {
    /// mock-upstream.
    pub(crate) mock: Proc,
    /// Where the mock listens.
    pub(crate) mock_addr: SocketAddr,
    /// The bare pass-through proxy in front of the mock.
    pub(crate) bare: Proc,
    /// Where the bare proxy listens.
    pub(crate) bare_addr: SocketAddr,
    /// Tollgate in front of the mock.
    pub(crate) gateway: Proc,
    /// Where Tollgate listens.
    pub(crate) gateway_addr: SocketAddr,
    /// Clock ticks per second of `/proc/<pid>/stat`.
    pub(crate) clock_ticks: u64,
}

impl Setup {
    /// Fails if any process under test has exited.
    pub(crate) fn check_alive(&mut self) -> Result<(), BoxError> {
        self.mock.check_alive()?;
        self.bare.check_alive()?;
        self.gateway.check_alive()
    }
}

/// CPU ticks of each of `pids` (0 = this process) between `start` and `end`.
async fn cpu_window<const N: usize>(
    pids: [u32; N],
    start: Instant,
    end: Instant,
) -> Result<[u64; N], BoxError> {
    let sample = || -> Result<[u64; N], BoxError> {
        let mut ticks = [0; N];
        for (t, &pid) in ticks.iter_mut().zip(&pids) {
            *t = cpu_ticks(pid)?;
        }
        Ok(ticks)
    };
    tokio::time::sleep_until(start).await;
    let before = sample()?;
    tokio::time::sleep_until(end).await;
    let after = sample()?;
    Ok(std::array::from_fn(|i| after[i].saturating_sub(before[i])))
}

/// One measured run (with its warmup) straight at the mock, through the bare proxy or through
/// the gateway.
pub(crate) async fn run(
    args: &Args,
    setup: &Setup,
    scenario: Scenario,
    concurrency: usize,
    rep: u32,
    mode: Mode,
) -> Result<RunRecord, BoxError> {
    let target = match mode {
        Mode::Direct => setup.mock_addr,
        Mode::Bare => setup.bare_addr,
        Mode::Gateway => setup.gateway_addr,
    };
    let (gw_pid, bare_pid) = (setup.gateway.pid(), setup.bare.pid());
    match mode {
        Mode::Gateway => reset_peak_rss(gw_pid),
        Mode::Bare => reset_peak_rss(bare_pid),
        Mode::Direct => false,
    };
    let now = Instant::now();
    let spec = load::RunSpec {
        uri: load::url(target, scenario.path())?,
        scenario,
        concurrency,
        start: now + args.warmup,
        end: now + args.warmup + args.duration,
    };
    let pids = [gw_pid, bare_pid, setup.mock.pid(), 0];
    let (result, cpu) = tokio::join!(load::run(&spec), cpu_window(pids, spec.start, spec.end));
    let (result, [gw_cpu, bare_cpu, mock_cpu, own_cpu]) = (result?, cpu?);
    let seconds = args.duration.as_secs_f64();
    let per_req = |ticks: u64| {
        if result.requests == 0 {
            0.0
        } else {
            ticks as f64 * 1e6 / setup.clock_ticks as f64 / result.requests as f64
        }
    };
    let ms = |q: f64| result.latency.value_at_quantile(q) as f64 / 1000.0;
    let gw_rss = if mode == Mode::Gateway {
        Some(rss_kib(gw_pid)?)
    } else {
        None
    };
    let bare_rss = if mode == Mode::Bare {
        Some(rss_kib(bare_pid)?)
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
        gateway_cpu_us_per_req: (mode == Mode::Gateway).then(|| per_req(gw_cpu)),
        mock_cpu_us_per_req: per_req(mock_cpu),
        loadgen_cpu_us_per_req: per_req(own_cpu),
        gateway_rss_kib: gw_rss.map(|r| r.0),
        gateway_peak_rss_kib: gw_rss.map(|r| r.1),
        bare_cpu_us_per_req: (mode == Mode::Bare).then(|| per_req(bare_cpu)),
        bare_rss_kib: bare_rss.map(|r| r.0),
        bare_peak_rss_kib: bare_rss.map(|r| r.1),
    })
}
