//! The performance goals (README, "Performance"), checked against one run: each with the
//! median it is judged on, the range over the repetitions beside it, and whether it was met.
//! A goal whose scenario, concurrency or stream count the run did not measure is left out, not
//! counted as met.

use serde_json::{json, Value};

use crate::args::Scenario;
use crate::report::Summary;

/// How many streams the memory goal is stated for.
pub(crate) const GOAL_STREAMS: u64 = 1000;

/// One goal as the run met it or not.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Goal {
    /// What is measured, e.g. `immediate c=32 gw/bare`.
    pub(crate) what: String,
    /// The median (or the single figure) judged, as printed.
    pub(crate) measured: String,
    /// The bound, e.g. `≥ 0.85` (written from the same number the goal is judged by).
    pub(crate) bound: String,
    /// The range over the repetitions, when there are several.
    pub(crate) range: Option<String>,
    /// Whether the measured figure is within the bound.
    pub(crate) met: bool,
}

impl Goal {
    /// The goal as a JSON object.
    pub(crate) fn json(&self) -> Value {
        json!({
            "what": self.what, "measured": self.measured, "bound": self.bound,
            "range": self.range, "met": self.met,
        })
    }
}

/// The throughput goals: scenario, concurrency and the least gw/bare ratio.
const RATIOS: [(Scenario, usize, f64); 4] = [
    (Scenario::Immediate, 32, 0.85),
    (Scenario::Immediate, 128, 0.85),
    (Scenario::Stream20, 32, 0.95),
    (Scenario::Prompt40k, 32, 0.85),
];

/// Most the gateway may add to a 20 ms upstream's median and 99th percentile at c=32, ms.
const ADDED_P50_MS: f64 = 0.5;
const ADDED_P99_MS: f64 = 1.5;

/// Most RSS with [`GOAL_STREAMS`] streams open on a fresh gateway, and idle, MiB.
const STREAMS_MIB: f64 = 64.0;
const IDLE_MIB: f64 = 16.0;

/// The goals the run measured: `summary` its rows, `open` the open-streams figures (the fresh
/// gateway's under `gateway`), `idle_rss_kib` the gateway's RSS before any load.
pub(crate) fn check(summary: &[Summary], open: Option<&Value>, idle_rss_kib: u64) -> Vec<Goal> {
    let row = |scenario: Scenario, concurrency: usize| {
        summary
            .iter()
            .find(|s| s.scenario == scenario && s.concurrency == concurrency && s.reps > 0)
    };
    let many = |s: &Summary| s.reps > 1;
    let mut goals = Vec::new();
    for (scenario, concurrency, least) in RATIOS {
        let Some(s) = row(scenario, concurrency) else {
            continue;
        };
        let (lo, hi) = s.ratio_vs_bare_range;
        goals.push(Goal {
            what: format!("{} c={concurrency} gw/bare", scenario.name()),
            measured: format!("{:.3}", s.ratio_vs_bare),
            bound: format!("≥ {least}"),
            range: many(s).then(|| format!("{lo:.3}–{hi:.3}")),
            met: s.ratio_vs_bare >= least && s.errors == 0,
        });
    }
    if let Some(s) = row(Scenario::Delay20, 32) {
        let added = [
            ("p50", s.delta_p50_ms, s.delta_p50_max_ms, ADDED_P50_MS),
            ("p99", s.delta_p99_ms, s.delta_p99_max_ms, ADDED_P99_MS),
        ];
        for (which, median, largest, most) in added {
            goals.push(Goal {
                what: format!("delay20 c=32 added {which} vs direct"),
                measured: format!("{median:+.2} ms"),
                bound: format!("≤ +{most} ms"),
                range: many(s).then(|| format!("largest {largest:+.2}")),
                met: median <= most && s.errors == 0,
            });
        }
    }
    let fresh = open
        .map(|o| &o["gateway"])
        .filter(|g| g["streams"].as_u64() == Some(GOAL_STREAMS));
    if let Some(g) = fresh {
        let mib = g["rss_all_open_mib"].as_f64().unwrap_or(f64::INFINITY);
        let all_open = g["opened"].as_u64() == Some(GOAL_STREAMS);
        goals.push(Goal {
            what: format!("{GOAL_STREAMS} open streams, fresh gateway, RSS"),
            measured: format!("{mib:.1} MiB"),
            bound: format!("≤ {STREAMS_MIB} MiB"),
            range: g["peak_rss_mib"]
                .as_f64()
                .map(|peak| format!("peak {peak:.1}")),
            met: all_open && mib <= STREAMS_MIB,
        });
    }
    if idle_rss_kib > 0 {
        let mib = idle_rss_kib as f64 / 1024.0;
        goals.push(Goal {
            what: "idle gateway RSS".into(),
            measured: format!("{mib:.1} MiB"),
            bound: format!("≤ {IDLE_MIB} MiB"),
            range: None,
            met: mib <= IDLE_MIB,
        });
    }
    goals
}

/// The goals as printed after the table: one line each, then how many were met.
pub(crate) fn describe(goals: &[Goal]) -> String {
    let mut out = String::from("goals (medians over the repetitions; their range in brackets):\n");
    for g in goals {
        let verdict = if g.met { "met   " } else { "MISSED" };
        let range = g
            .range
            .as_deref()
            .map_or(String::new(), |r| format!(" [{r}]"));
        out.push_str(&format!(
            "  {verdict} {}: {} {}{range}\n",
            g.what, g.measured, g.bound
        ));
    }
    let met = goals.iter().filter(|g| g.met).count();
    out.push_str(&format!("{met} of {} goals met", goals.len()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(scenario: Scenario, concurrency: usize, ratio: f64) -> Summary {
        Summary {
            scenario,
            concurrency,
            reps: 3,
            direct_rps: 0.0,
            gateway_rps: 0.0,
            ratio: 0.0,
            direct_p50_ms: 0.0,
            direct_p99_ms: 0.0,
            gateway_p50_ms: 0.0,
            gateway_p99_ms: 0.0,
            delta_p50_ms: 0.2,
            delta_p99_ms: 1.6,
            gateway_cpu_us_per_req: 0.0,
            mock_cpu_us_per_req: 0.0,
            gateway_peak_rss_mib: 0.0,
            errors: 0,
            bare_rps: 0.0,
            ratio_vs_bare: ratio,
            bare_p50_ms: 0.0,
            bare_p99_ms: 0.0,
            delta_p50_vs_bare_ms: 0.0,
            delta_p99_vs_bare_ms: 0.0,
            bare_cpu_us_per_req: 0.0,
            bare_peak_rss_mib: 0.0,
            ratio_vs_bare_range: (ratio - 0.01, ratio + 0.02),
            delta_p50_max_ms: 0.3,
            delta_p99_max_ms: 2.0,
        }
    }

    #[test]
    fn each_goal_is_judged_on_its_median_and_unmeasured_ones_are_left_out() {
        let rows = [
            summary(Scenario::Immediate, 32, 0.86),
            summary(Scenario::Immediate, 128, 0.84),
            summary(Scenario::Delay20, 32, 1.0),
        ];
        let open = json!({"gateway": {"streams": 1000, "opened": 1000, "rss_all_open_mib": 60.0,
                                      "peak_rss_mib": 65.0}});
        let goals = check(&rows, Some(&open), 10 * 1024);
        let verdicts: Vec<(&str, bool)> = goals.iter().map(|g| (g.what.as_str(), g.met)).collect();
        assert_eq!(
            verdicts,
            [
                ("immediate c=32 gw/bare", true),
                ("immediate c=128 gw/bare", false),
                ("delay20 c=32 added p50 vs direct", true),
                ("delay20 c=32 added p99 vs direct", false),
                ("1000 open streams, fresh gateway, RSS", true),
                ("idle gateway RSS", true),
            ]
        );
        assert_eq!(goals[0].range.as_deref(), Some("0.850–0.880"));
        let bounds: Vec<&str> = goals.iter().map(|g| g.bound.as_str()).collect();
        assert_eq!(
            bounds,
            [
                "≥ 0.85",
                "≥ 0.85",
                "≤ +0.5 ms",
                "≤ +1.5 ms",
                "≤ 64 MiB",
                "≤ 16 MiB"
            ]
        );
        let text = describe(&goals);
        assert!(
            text.contains("MISSED immediate c=128 gw/bare: 0.840 ≥ 0.85"),
            "{text}"
        );
        assert!(text.ends_with("4 of 6 goals met"), "{text}");
    }

    #[test]
    fn errors_a_partial_open_or_another_stream_count_do_not_pass() {
        let mut row = summary(Scenario::Stream20, 32, 1.3);
        row.errors = 1;
        let some_failed = json!({"gateway": {"streams": 1000, "opened": 990,
                                             "rss_all_open_mib": 50.0}});
        let goals = check(&[row], Some(&some_failed), 0);
        assert_eq!(goals.len(), 2, "{goals:?}");
        assert!(goals.iter().all(|g| !g.met), "{goals:?}");
        let other_count = json!({"gateway": {"streams": 10, "opened": 10,
                                             "rss_all_open_mib": 5.0}});
        assert!(check(&[], Some(&other_count), 0).is_empty());
    }
}
