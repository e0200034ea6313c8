//! Output: the table printed at the end of a run, and the JSON/CSV files two commits can be
//! compared with.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{json, Value};

use crate::goals::Goal;
use crate::procs::BoxError;
use crate::report::{RunRecord, Summary, RUN_COLUMNS, SUMMARY_COLUMNS};

/// The table printed at the end of a run.
pub(crate) fn table(rows: &[Summary]) -> String {
    let header = [
        "scenario",
        "conc",
        "direct/s",
        "bare/s",
        "gw/s",
        "ratio",
        "gw/bare",
        "d p50",
        "d p99",
        "gw p50",
        "gw p99",
        "Δp50",
        "Δp99",
        "Δp50 vs bare",
        "Δp99 vs bare",
        "gw µs/req",
        "bare µs/req",
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
                format!("{:.0}", s.bare_rps),
                format!("{:.0}", s.gateway_rps),
                format!("{:.3}", s.ratio),
                format!("{:.3}", s.ratio_vs_bare),
                format!("{:.2}", s.direct_p50_ms),
                format!("{:.2}", s.direct_p99_ms),
                format!("{:.2}", s.gateway_p50_ms),
                format!("{:.2}", s.gateway_p99_ms),
                format!("{:+.2}", s.delta_p50_ms),
                format!("{:+.2}", s.delta_p99_ms),
                format!("{:+.2}", s.delta_p50_vs_bare_ms),
                format!("{:+.2}", s.delta_p99_vs_bare_ms),
                format!("{:.1}", s.gateway_cpu_us_per_req),
                format!("{:.1}", s.bare_cpu_us_per_req),
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

/// One CSV cell: strings bare, null empty, everything else as JSON.
fn csv_cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A CSV document of `rows` (JSON objects) with `columns` as header and keys.
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

/// What one run found, as written to the files.
pub(crate) struct Results<'a> {
    /// Every measured run.
    pub(crate) runs: &'a [RunRecord],
    /// The medians per scenario and concurrency.
    pub(crate) summary: &'a [Summary],
    /// The open-streams figures, when measured.
    pub(crate) open_streams: Option<Value>,
    /// The goals the run measured, met or not.
    pub(crate) goals: &'a [Goal],
}

/// Writes `{meta, runs, summary, open_streams, goals}` to `path` as JSON, the runs to
/// `<stem>.csv` and the summary to `<stem>-summary.csv`; returns the paths written.
pub(crate) fn write_files(
    path: &Path,
    meta: Value,
    results: &Results<'_>,
) -> Result<Vec<String>, BoxError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let runs: Vec<Value> = results.runs.iter().map(RunRecord::json).collect();
    let summary: Vec<Value> = results.summary.iter().map(Summary::json).collect();
    let goals: Vec<Value> = results.goals.iter().map(Goal::json).collect();
    let doc = json!({
        "meta": meta, "runs": runs, "summary": summary,
        "open_streams": results.open_streams, "goals": goals,
    });
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
    fn csv_cells_render_nulls_empty() {
        let rows = [json!({"a": 1, "b": null, "c": "x"})];
        assert_eq!(csv(&["a", "b", "c"], &rows), "a,b,c\n1,,x\n");
    }
}
