//! Results: one record per measured run, medians per scenario × concurrency, the printed table,
//! and the JSON/CSV files two commits can be compared with.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{json, Value};

use crate::args::Scenario;
use crate::procs::BoxError;

/// Where a run's load went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Straight at mock-upstream.
    Direct,
    /// Through Tollgate.
    Gateway,
}

impl Mode {
    /// `direct` or `gateway`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Gateway => "gateway",
        }
    }
}

/// The numbers of one measured run.
#[derive(Clone, Debug)]
pub(crate) struct RunRecord {
    pub(crate) scenario: Scenario,
    pub(crate) concurrency: usize,
    pub(crate) rep: u32,
    pub(crate) mode: Mode,
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
    pub(crate) seconds: f64,
    pub(crate) rps: f64,
    pub(crate) mean_ms: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p90_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) max_ms: f64,
    /// Tollgate's CPU per counted request (gateway runs only).
    pub(crate) gateway_cpu_us_per_req: Option<f64>,
    /// mock-upstream's CPU per counted request.
    pub(crate) mock_cpu_us_per_req: f64,
    /// The load generator's own CPU per counted request.
    pub(crate) loadgen_cpu_us_per_req: f64,
    /// Tollgate's `VmRSS` after the run, KiB.
    pub(crate) gateway_rss_kib: Option<u64>,
    /// Tollgate's `VmHWM` after the run (peak reset before it when the kernel allows), KiB.
    pub(crate) gateway_peak_rss_kib: Option<u64>,
}

/// CSV columns of [`RunRecord`] (keys of [`RunRecord::json`]).
const RUN_COLUMNS: [&str; 19] = [
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
        });
        if let (Some(e), Some(obj)) = (&self.first_error, v.as_object_mut()) {
            obj.insert("first_error".into(), json!(e));
        }
        v
    }
}

/// Medians over the repetitions of one scenario × concurrency.
#[derive(Clone, Debug)]
pub(crate) struct Summary {
    pub(crate) scenario: Scenario,
    pub(crate) concurrency: usize,
    pub(crate) reps: usize,
    pub(crate) direct_rps: f64,
    pub(crate) gateway_rps: f64,
    /// Median of the per-repetition ratios gateway/direct.
    pub(crate) ratio: f64,
    pub(crate) direct_p50_ms: f64,
    pub(crate) direct_p99_ms: f64,
    pub(crate) gateway_p50_ms: f64,
    pub(crate) gateway_p99_ms: f64,
    /// Median of the per-repetition differences gateway − direct.
    pub(crate) delta_p50_ms: f64,
    pub(crate) delta_p99_ms: f64,
    pub(crate) gateway_cpu_us_per_req: f64,
    pub(crate) mock_cpu_us_per_req: f64,
    /// Largest peak RSS over the repetitions, MiB.
    pub(crate) gateway_peak_rss_mib: f64,
    /// Failed requests over all runs of this row (must be 0).
    pub(crate) errors: u64,
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

/// Pairs direct and gateway runs of the same repetition and takes medians.
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
        let pairs: Vec<(&RunRecord, &RunRecord)> = of(Mode::Direct)
            .filter_map(|d| of(Mode::Gateway).find(|g| g.rep == d.rep).map(|g| (d, g)))
            .collect();
        let med = |mode: Mode, f: fn(&RunRecord) -> f64| median(of(mode).map(f).collect());
        let pair = |f: fn(&RunRecord, &RunRecord) -> f64| {
            median(pairs.iter().map(|(d, g)| f(d, g)).collect())
        };
        out.push(Summary {
            scenario,
            concurrency,
            reps: pairs.len(),
            direct_rps: med(Mode::Direct, |r| r.rps),
            gateway_rps: med(Mode::Gateway, |r| r.rps),
            ratio: pair(|d, g| if d.rps > 0.0 { g.rps / d.rps } else { 0.0 }),
            direct_p50_ms: med(Mode::Direct, |r| r.p50_ms),
            direct_p99_ms: med(Mode::Direct, |r| r.p99_ms),
            gateway_p50_ms: med(Mode::Gateway, |r| r.p50_ms),
            gateway_p99_ms: med(Mode::Gateway, |r| r.p99_ms),
            delta_p50_ms: pair(|d, g| g.p50_ms - d.p50_ms),
            delta_p99_ms: pair(|d, g| g.p99_ms - d.p99_ms),
            gateway_cpu_us_per_req: med(Mode::Gateway, |r| r.gateway_cpu_us_per_req.unwrap_or(0.0)),
            mock_cpu_us_per_req: med(Mode::Direct, |r| r.mock_cpu_us_per_req),
            gateway_peak_rss_mib: of(Mode::Gateway)
                .filter_map(|r| r.gateway_peak_rss_kib)
                .max()
                .map_or(0.0, |k| k as f64 / 1024.0),
            errors: row.iter().map(|r| r.errors).sum(),
        });
    }
    out
}

/// CSV columns of [`Summary`] (keys of its JSON).
const SUMMARY_COLUMNS: [&str; 16] = [
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
];

impl Summary {
    fn json(&self) -> Value {
        json!({
            "scenario": self.scenario.name(), "concurrency": self.concurrency, "reps": self.reps,
            "direct_rps": self.direct_rps, "gateway_rps": self.gateway_rps, "ratio": self.ratio,
            "direct_p50_ms": self.direct_p50_ms, "direct_p99_ms": self.direct_p99_ms,
            "gateway_p50_ms": self.gateway_p50_ms, "gateway_p99_ms": self.gateway_p99_ms,
            "delta_p50_ms": self.delta_p50_ms, "delta_p99_ms": self.delta_p99_ms,
            "gateway_cpu_us_per_req": self.gateway_cpu_us_per_req,
            "mock_cpu_us_per_req": self.mock_cpu_us_per_req,
            "gateway_peak_rss_mib": self.gateway_peak_rss_mib, "errors": self.errors,
        })
    }
}

/// The table printed at the end of a run.
pub(crate) fn table(rows: &[Summary]) -> String {
    let header = [
        "scenario",
        "conc",
        "direct/s",
        "gw/s",
        "ratio",
        "d p50",
        "d p99",
        "gw p50",
        "gw p99",
        "Δp50",
        "Δp99",
        "gw µs/req",
        "mock µs/req",
        "gw peak MB",
        "errors",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|s| {
            vec![
                s.scenario.name().to_owned(),
                s.concurrency.to_string(),
                format!("{:.0}", s.direct_rps),
                format!("{:.0}", s.gateway_rps),
                format!("{:.3}", s.ratio),
                format!("{:.2}", s.direct_p50_ms),
                format!("{:.2}", s.direct_p99_ms),
                format!("{:.2}", s.gateway_p50_ms),
                format!("{:.2}", s.gateway_p99_ms),
                format!("{:+.2}", s.delta_p50_ms),
                format!("{:+.2}", s.delta_p99_ms),
                format!("{:.1}", s.gateway_cpu_us_per_req),
                format!("{:.1}", s.mock_cpu_us_per_req),
                format!("{:.1}", s.gateway_peak_rss_mib),
                s.errors.to_string(),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            cells
                .iter()
                .map(|row| row[i].chars().count())
                .chain([header[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let mut line = |row: &[String]| {
        let parts: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                let pad = w.saturating_sub(c.chars().count());
                if i == 0 {
                    format!("{c}{}", " ".repeat(pad))
                } else {
                    format!("{}{c}", " ".repeat(pad))
                }
            })
            .collect();
        let _ = writeln!(out, "| {} |", parts.join(" | "));
    };
    line(&header.map(str::to_owned));
    line(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>());
    for row in &cells {
        line(row);
    }
    out
}

fn csv_cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn csv(columns: &[&str], rows: &[Value]) -> String {
    let mut out = columns.join(",");
    out.push('\n');
    for row in rows {
        let cells: Vec<String> = columns.iter().map(|c| csv_cell(&row[*c])).collect();
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

/// Writes `{meta, runs, summary, open_streams}` to `path` as JSON, the runs to `<stem>.csv` and
/// the summary to `<stem>-summary.csv`; returns the paths written.
pub(crate) fn write_files(
    path: &Path,
    meta: Value,
    runs: &[RunRecord],
    summary: &[Summary],
    open_streams: Option<Value>,
) -> Result<Vec<String>, BoxError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let runs: Vec<Value> = runs.iter().map(RunRecord::json).collect();
    let summary: Vec<Value> = summary.iter().map(Summary::json).collect();
    let doc =
        json!({ "meta": meta, "runs": runs, "summary": summary, "open_streams": open_streams });
    std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")?;
    let runs_csv = path.with_extension("csv");
    std::fs::write(&runs_csv, csv(&RUN_COLUMNS, &runs))?;
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("results");
    let summary_csv = path.with_file_name(format!("{stem}-summary.csv"));
    std::fs::write(&summary_csv, csv(&SUMMARY_COLUMNS, &summary))?;
    Ok(vec![
        path.display().to_string(),
        runs_csv.display().to_string(),
        summary_csv.display().to_string(),
    ])
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
    fn csv_cells_render_nulls_empty() {
        let rows = [json!({"a": 1, "b": null, "c": "x"})];
        assert_eq!(csv(&["a", "b", "c"], &rows), "a,b,c\n1,,x\n");
    }
}
