//! Results: one record per measured run and the medians per scenario × concurrency (the printed
//! table and the files are in `output`).

use serde_json::{json, Value};

use crate::args::Scenario;

/// Where a run's load went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Straight at mock-upstream.
    Direct,
    /// Through the bare hyper pass-through proxy (`crate::bare`).
    Bare,
    /// Through Tollgate.
    Gateway,
}

impl Mode {
    /// `direct`, `bare` or `gateway`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Bare => "bare",
            Mode::Gateway => "gateway",
        }
    }

    /// The order of the three runs of repetition `rep` (1-based): rotated so that every mode
    /// takes every position once in three repetitions.
    pub(crate) fn order(rep: u32) -> [Mode; 3] {
        let base = [Mode::Direct, Mode::Bare, Mode::Gateway];
        // rep 1: direct, bare, gateway; rep 2: gateway, direct, bare; rep 3: bare, gateway, direct.
        let shift = ((rep.saturating_sub(1)) % 3) as usize;
        [0, 1, 2].map(|i| base[(i + 3 - shift) % 3])
    }
}

/// The numbers of one measured run (latencies in ms, CPU in µs per counted request).
#[derive(Clone, Debug)]
pub(crate) struct RunRecord {
    /// Answer kind.
    pub(crate) scenario: Scenario,
    /// Concurrent request loops.
    pub(crate) concurrency: usize,
    /// Repetition, 1-based.
    pub(crate) rep: u32,
    /// Where the load went.
    pub(crate) mode: Mode,
    /// Requests that started and ended inside the window.
    pub(crate) requests: u64,
    /// Failed requests (warmup included).
    pub(crate) errors: u64,
    /// The first failure.
    pub(crate) first_error: Option<String>,
    /// Length of the measured window.
    pub(crate) seconds: f64,
    /// Counted requests per second.
    pub(crate) rps: f64,
    /// Mean latency.
    pub(crate) mean_ms: f64,
    /// Median latency.
    pub(crate) p50_ms: f64,
    /// 90th percentile latency.
    pub(crate) p90_ms: f64,
    /// 99th percentile latency.
    pub(crate) p99_ms: f64,
    /// 99.9th percentile latency.
    pub(crate) p999_ms: f64,
    /// Largest latency.
    pub(crate) max_ms: f64,
    /// Tollgate's CPU per counted request (gateway runs only).
    pub(crate) gateway_cpu_us_per_req: Option<f64>,
    /// mock-upstream's CPU per counted request.
    pub(crate) mock_cpu_us_per_req: f64,
    /// The load generator's own CPU per counted request.
    pub(crate) loadgen_cpu_us_per_req: f64,
    /// Tollgate's `VmRSS` after the run, KiB (gateway runs only).
    pub(crate) gateway_rss_kib: Option<u64>,
    /// Tollgate's `VmHWM` after the run (peak reset before it when the kernel allows), KiB.
    pub(crate) gateway_peak_rss_kib: Option<u64>,
    /// The bare proxy's CPU per counted request (bare runs only).
    pub(crate) bare_cpu_us_per_req: Option<f64>,
    /// The bare proxy's `VmRSS` after the run, KiB (bare runs only).
    pub(crate) bare_rss_kib: Option<u64>,
    /// The bare proxy's `VmHWM` after the run (reset like Tollgate's), KiB.
    pub(crate) bare_peak_rss_kib: Option<u64>,
}

/// CSV columns of [`RunRecord`] (keys of [`RunRecord::json`]).
pub(crate) const RUN_COLUMNS: [&str; 22] = [
    "scenario",
    "concurrency",
    "rep",
    "mode",
    "requests",
    "errors",
    "seconds",
    "rps",
    "mean_ms",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "p999_ms",
    "max_ms",
    "gateway_cpu_us_per_req",
    "mock_cpu_us_per_req",
    "loadgen_cpu_us_per_req",
    "gateway_rss_kib",
    "gateway_peak_rss_kib",
    "bare_cpu_us_per_req",
    "bare_rss_kib",
    "bare_peak_rss_kib",
];

impl RunRecord {
    /// The record as a JSON object (plus `first_error` when there was one).
    pub(crate) fn json(&self) -> Value {
        let mut v = json!({
            "scenario": self.scenario.name(), "concurrency": self.concurrency, "rep": self.rep,
            "mode": self.mode.name(), "requests": self.requests, "errors": self.errors,
            "seconds": self.seconds, "rps": self.rps, "mean_ms": self.mean_ms,
            "p50_ms": self.p50_ms, "p90_ms": self.p90_ms, "p99_ms": self.p99_ms,
            "p999_ms": self.p999_ms, "max_ms": self.max_ms,
            "gateway_cpu_us_per_req": self.gateway_cpu_us_per_req,
            "mock_cpu_us_per_req": self.mock_cpu_us_per_req,
            "loadgen_cpu_us_per_req": self.loadgen_cpu_us_per_req,
            "gateway_rss_kib": self.gateway_rss_kib,
            "gateway_peak_rss_kib": self.gateway_peak_rss_kib,
            "bare_cpu_us_per_req": self.bare_cpu_us_per_req,
            "bare_rss_kib": self.bare_rss_kib, "bare_peak_rss_kib": self.bare_peak_rss_kib,
        });
        if let (Some(e), Some(obj)) = (&self.first_error, v.as_object_mut()) {
            obj.insert("first_error".into(), json!(e));
        }
        v
    }
}

/// Medians over the repetitions of one scenario × concurrency.
///
/// Ratios and deltas are taken within one repetition (runs seconds apart on the same machine),
/// then the median over repetitions.
#[derive(Clone, Debug)]
pub(crate) struct Summary {
    /// Answer kind.
    pub(crate) scenario: Scenario,
    /// Concurrent request loops.
    pub(crate) concurrency: usize,
    /// Repetitions with both a direct and a gateway run.
    pub(crate) reps: usize,
    /// Requests per second straight at the mock.
    pub(crate) direct_rps: f64,
    /// Requests per second through Tollgate.
    pub(crate) gateway_rps: f64,
    /// Median of the per-repetition ratios gateway/direct.
    pub(crate) ratio: f64,
    /// Median latency straight at the mock.
    pub(crate) direct_p50_ms: f64,
    /// 99th percentile latency straight at the mock.
    pub(crate) direct_p99_ms: f64,
    /// Median latency through Tollgate.
    pub(crate) gateway_p50_ms: f64,
    /// 99th percentile latency through Tollgate.
    pub(crate) gateway_p99_ms: f64,
    /// Median of the per-repetition differences gateway − direct.
    pub(crate) delta_p50_ms: f64,
    /// The same for the 99th percentile.
    pub(crate) delta_p99_ms: f64,
    /// Tollgate's CPU per request.
    pub(crate) gateway_cpu_us_per_req: f64,
    /// The mock's CPU per request in the direct runs.
    pub(crate) mock_cpu_us_per_req: f64,
    /// Largest peak RSS of Tollgate over the repetitions, MiB.
    pub(crate) gateway_peak_rss_mib: f64,
    /// Failed requests over all runs of this row (must be 0).
    pub(crate) errors: u64,
    /// Requests per second through the bare proxy.
    pub(crate) bare_rps: f64,
    /// Median of the per-repetition ratios gateway/bare.
    pub(crate) ratio_vs_bare: f64,
    /// Median latency through the bare proxy.
    pub(crate) bare_p50_ms: f64,
    /// 99th percentile latency through the bare proxy.
    pub(crate) bare_p99_ms: f64,
    /// Median of the per-repetition differences gateway − bare.
    pub(crate) delta_p50_vs_bare_ms: f64,
    /// The same for the 99th percentile.
    pub(crate) delta_p99_vs_bare_ms: f64,
    /// The bare proxy's CPU per request.
    pub(crate) bare_cpu_us_per_req: f64,
    /// Largest peak RSS of the bare proxy over the repetitions, MiB.
    pub(crate) bare_peak_rss_mib: f64,
    /// Smallest and largest per-repetition ratio gateway/bare: how far one repetition strays
    /// from the median.
    pub(crate) ratio_vs_bare_range: (f64, f64),
    /// Largest per-repetition differences gateway − direct of the median and the 99th
    /// percentile.
    pub(crate) delta_p50_max_ms: f64,
    pub(crate) delta_p99_max_ms: f64,
}

/// The median of `values` (0 when empty).
pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// `a / b`, 0 when `b` is not positive.
fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// Smallest and largest of `values` (0 and 0 when empty).
fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values
        .fold(None, |acc: Option<(f64, f64)>, v| {
            Some(acc.map_or((v, v), |(lo, hi)| (lo.min(v), hi.max(v))))
        })
        .unwrap_or_default()
}

/// Largest of some KiB values, in MiB (0 when there are none).
fn max_mib(kib: impl Iterator<Item = u64>) -> f64 {
    kib.max().map_or(0.0, |k| k as f64 / 1024.0)
}

/// Pairs the runs of one repetition (direct and bare each with gateway) and takes medians.
pub(crate) fn summarize(runs: &[RunRecord]) -> Vec<Summary> {
    let mut keys: Vec<(Scenario, usize)> = Vec::new();
    for r in runs {
        if !keys.contains(&(r.scenario, r.concurrency)) {
            keys.push((r.scenario, r.concurrency));
        }
    }
    let mut out = Vec::new();
    for (scenario, concurrency) in keys {
        let row: Vec<&RunRecord> = runs
            .iter()
            .filter(|r| r.scenario == scenario && r.concurrency == concurrency)
            .collect();
        let of = |mode: Mode| row.iter().filter(move |r| r.mode == mode).copied();
        // (base, gateway) runs of the same repetition, for base = direct or bare.
        let pairs = |base: Mode| -> Vec<(&RunRecord, &RunRecord)> {
            of(base)
                .filter_map(|b| of(Mode::Gateway).find(|g| g.rep == b.rep).map(|g| (b, g)))
                .collect()
        };
        let (vs_direct, vs_bare) = (pairs(Mode::Direct), pairs(Mode::Bare));
        let med = |mode: Mode, f: fn(&RunRecord) -> f64| median(of(mode).map(f).collect());
        let pair = |pairs: &[(&RunRecord, &RunRecord)], f: fn(&RunRecord, &RunRecord) -> f64| {
            median(pairs.iter().map(|(b, g)| f(b, g)).collect())
        };
        let spread = |pairs: &[(&RunRecord, &RunRecord)], f: fn(&RunRecord, &RunRecord) -> f64| {
            range(pairs.iter().map(|(b, g)| f(b, g)))
        };
        out.push(Summary {
            scenario,
            concurrency,
            reps: vs_direct.len(),
            direct_rps: med(Mode::Direct, |r| r.rps),
            gateway_rps: med(Mode::Gateway, |r| r.rps),
            ratio: pair(&vs_direct, |d, g| ratio(g.rps, d.rps)),
            direct_p50_ms: med(Mode::Direct, |r| r.p50_ms),
            direct_p99_ms: med(Mode::Direct, |r| r.p99_ms),
            gateway_p50_ms: med(Mode::Gateway, |r| r.p50_ms),
            gateway_p99_ms: med(Mode::Gateway, |r| r.p99_ms),
            delta_p50_ms: pair(&vs_direct, |d, g| g.p50_ms - d.p50_ms),
            delta_p99_ms: pair(&vs_direct, |d, g| g.p99_ms - d.p99_ms),
            gateway_cpu_us_per_req: med(Mode::Gateway, |r| r.gateway_cpu_us_per_req.unwrap_or(0.0)),
            mock_cpu_us_per_req: med(Mode::Direct, |r| r.mock_cpu_us_per_req),
            gateway_peak_rss_mib: max_mib(of(Mode::Gateway).filter_map(|r| r.gateway_peak_rss_kib)),
            errors: row.iter().map(|r| r.errors).sum(),
            bare_rps: med(Mode::Bare, |r| r.rps),
            ratio_vs_bare: pair(&vs_bare, |b, g| ratio(g.rps, b.rps)),
            bare_p50_ms: med(Mode::Bare, |r| r.p50_ms),
            bare_p99_ms: med(Mode::Bare, |r| r.p99_ms),
            delta_p50_vs_bare_ms: pair(&vs_bare, |b, g| g.p50_ms - b.p50_ms),
            delta_p99_vs_bare_ms: pair(&vs_bare, |b, g| g.p99_ms - b.p99_ms),
            bare_cpu_us_per_req: med(Mode::Bare, |r| r.bare_cpu_us_per_req.unwrap_or(0.0)),
            bare_peak_rss_mib: max_mib(of(Mode::Bare).filter_map(|r| r.bare_peak_rss_kib)),
            ratio_vs_bare_range: spread(&vs_bare, |b, g| ratio(g.rps, b.rps)),
            delta_p50_max_ms: spread(&vs_direct, |d, g| g.p50_ms - d.p50_ms).1,
            delta_p99_max_ms: spread(&vs_direct, |d, g| g.p99_ms - d.p99_ms).1,
        });
    }
    out
}

/// CSV columns of [`Summary`] (keys of its JSON; the bare proxy's come last).
pub(crate) const SUMMARY_COLUMNS: [&str; 28] = [
    "scenario",
    "concurrency",
    "reps",
    "direct_rps",
    "gateway_rps",
    "ratio",
    "direct_p50_ms",
    "direct_p99_ms",
    "gateway_p50_ms",
    "gateway_p99_ms",
    "delta_p50_ms",
    "delta_p99_ms",
    "gateway_cpu_us_per_req",
    "mock_cpu_us_per_req",
    "gateway_peak_rss_mib",
    "errors",
    "bare_rps",
    "ratio_vs_bare",
    "bare_p50_ms",
    "bare_p99_ms",
    "delta_p50_vs_bare_ms",
    "delta_p99_vs_bare_ms",
    "bare_cpu_us_per_req",
    "bare_peak_rss_mib",
    "ratio_vs_bare_min",
    "ratio_vs_bare_max",
    "delta_p50_max_ms",
    "delta_p99_max_ms",
];

impl Summary {
    /// The row as a JSON object.
    pub(crate) fn json(&self) -> Value {
        json!({
            "scenario": self.scenario.name(), "concurrency": self.concurrency, "reps": self.reps,
            "direct_rps": self.direct_rps, "gateway_rps": self.gateway_rps, "ratio": self.ratio,
            "direct_p50_ms": self.direct_p50_ms, "direct_p99_ms": self.direct_p99_ms,
            "gateway_p50_ms": self.gateway_p50_ms, "gateway_p99_ms": self.gateway_p99_ms,
            "delta_p50_ms": self.delta_p50_ms, "delta_p99_ms": self.delta_p99_ms,
            "gateway_cpu_us_per_req": self.gateway_cpu_us_per_req,
            "mock_cpu_us_per_req": self.mock_cpu_us_per_req,
            "gateway_peak_rss_mib": self.gateway_peak_rss_mib, "errors": self.errors,
            "bare_rps": self.bare_rps, "ratio_vs_bare": self.ratio_vs_bare,
            "bare_p50_ms": self.bare_p50_ms, "bare_p99_ms": self.bare_p99_ms,
            "delta_p50_vs_bare_ms": self.delta_p50_vs_bare_ms,
            "delta_p99_vs_bare_ms": self.delta_p99_vs_bare_ms,
            "bare_cpu_us_per_req": self.bare_cpu_us_per_req,
            "bare_peak_rss_mib": self.bare_peak_rss_mib,
            "ratio_vs_bare_min": self.ratio_vs_bare_range.0,
            "ratio_vs_bare_max": self.ratio_vs_bare_range.1,
            "delta_p50_max_ms": self.delta_p50_max_ms,
            "delta_p99_max_ms": self.delta_p99_max_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert!((median(vec![3.0, 1.0, 2.0]) - 2.0).abs() < 1e-9);
        assert!((median(vec![4.0, 1.0, 2.0, 3.0]) - 2.5).abs() < 1e-9);
        assert!(median(Vec::new()).abs() < 1e-9);
    }

    #[test]
    fn the_order_rotates_every_repetition() {
        use Mode::{Bare as B, Direct as D, Gateway as G};
        assert_eq!(Mode::order(1), [D, B, G]);
        assert_eq!(Mode::order(2), [G, D, B]);
        assert_eq!(Mode::order(3), [B, G, D]);
        assert_eq!(Mode::order(4), [D, B, G]);
    }

    fn run(rep: u32, mode: Mode, rps: f64, p50_ms: f64) -> RunRecord {
        RunRecord {
            scenario: Scenario::Immediate,
            concurrency: 8,
            rep,
            mode,
            requests: 1,
            errors: 0,
            first_error: None,
            seconds: 1.0,
            rps,
            mean_ms: p50_ms,
            p50_ms,
            p90_ms: p50_ms,
            p99_ms: 2.0 * p50_ms,
            p999_ms: 0.0,
            max_ms: 0.0,
            gateway_cpu_us_per_req: (mode == Mode::Gateway).then_some(30.0),
            mock_cpu_us_per_req: 10.0,
            loadgen_cpu_us_per_req: 10.0,
            gateway_rss_kib: None,
            gateway_peak_rss_kib: (mode == Mode::Gateway).then_some(2048),
            bare_cpu_us_per_req: (mode == Mode::Bare).then_some(15.0),
            bare_rss_kib: None,
            bare_peak_rss_kib: (mode == Mode::Bare).then_some(1024),
        }
    }

    #[test]
    fn ratios_and_deltas_are_taken_per_repetition() {
        let runs = [
            run(1, Mode::Direct, 1000.0, 1.0),
            run(1, Mode::Bare, 800.0, 1.5),
            run(1, Mode::Gateway, 600.0, 2.0),
            run(2, Mode::Gateway, 900.0, 2.5),
            run(2, Mode::Direct, 1000.0, 1.0),
            run(2, Mode::Bare, 1000.0, 2.0),
        ];
        let rows = summarize(&runs);
        assert_eq!(rows.len(), 1);
        let s = &rows[0];
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert_eq!(s.reps, 2);
        assert!(close(s.bare_rps, 900.0), "{s:?}");
        // Per repetition: 600/800 = 0.75 and 900/1000 = 0.9.
        assert!(close(s.ratio_vs_bare, 0.825), "{s:?}");
        assert!(close(s.ratio, 0.75), "{s:?}");
        // Per repetition: 2.0 − 1.5 and 2.5 − 2.0.
        assert!(close(s.delta_p50_vs_bare_ms, 0.5), "{s:?}");
        assert!(close(s.delta_p99_vs_bare_ms, 1.0), "{s:?}");
        assert!(close(s.bare_cpu_us_per_req, 15.0), "{s:?}");
        assert!(close(s.bare_peak_rss_mib, 1.0), "{s:?}");
        // The spread of the same per-repetition numbers.
        assert!(close(s.ratio_vs_bare_range.0, 0.75), "{s:?}");
        assert!(close(s.ratio_vs_bare_range.1, 0.9), "{s:?}");
        // Gateway − direct: p50 2.0 − 1.0 and 2.5 − 1.0; p99 4.0 − 2.0 and 5.0 − 2.0.
        assert!(close(s.delta_p50_max_ms, 1.5), "{s:?}");
        assert!(close(s.delta_p99_max_ms, 3.0), "{s:?}");
    }
}
