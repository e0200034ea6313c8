//! Runs the overhead benchmark (`tollgate-bench --smoke`, about two seconds of load) so it does
//! not rot. Asserts that it works end to end, never how fast anything is.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::process::Command;

use serde_json::Value;
use tollgate_e2e::{cargo_build, profile_dir};

#[test]
fn the_benchmark_runs_in_smoke_mode_and_writes_its_results() {
    let dir = profile_dir();
    // The same build the benchmark itself does, then the benchmark.
    cargo_build(&["-p", "tollgate", "-p", "mock-upstream"]);
    cargo_build(&["-p", "tollgate-bench"]);
    let tmp = dir.join("..").join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let out = tmp.join(format!("bench-smoke-{}.json", std::process::id()));
    let out_arg = out.to_string_lossy();
    let stdout = run_bench(&dir, &["--smoke", "--out", &out_arg]);
    assert!(
        stdout.lines().any(|l| l.starts_with("| immediate ")),
        "no table row for the immediate scenario:\n{stdout}"
    );

    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let runs = doc["runs"].as_array().expect("runs array");
    for mode in ["direct", "bare", "gateway"] {
        let run = runs
            .iter()
            .find(|r| r["mode"] == mode)
            .unwrap_or_else(|| panic!("no {mode} run in {doc}"));
        assert!(run["requests"].as_u64().unwrap() > 0, "{mode}: {run}");
        assert_eq!(run["errors"], 0, "{mode}: {run}");
    }
    assert_eq!(doc["summary"][0]["errors"], 0, "{doc}");
    for key in [
        "gateway_cpu_us_per_req",
        "bare_cpu_us_per_req",
        "ratio_vs_bare",
    ] {
        assert!(doc["summary"][0][key].as_f64().is_some(), "{key}: {doc}");
    }
    let csv = std::fs::read_to_string(out.with_extension("csv")).unwrap();
    assert_eq!(
        csv.lines().count(),
        4,
        "header + one direct, one bare and one gateway run:\n{csv}"
    );

    let _ = std::fs::remove_file(out.with_extension("csv"));
    let _ =
        std::fs::remove_file(tmp.join(format!("bench-smoke-{}-summary.csv", std::process::id())));
    let _ = std::fs::remove_file(&out);
}

/// `tollgate-bench instructions` under valgrind (skipped, saying so, where valgrind is missing;
/// `TOLLGATE_REQUIRE_VALGRIND=1` makes that a failure): it reports a count per request for the
/// gateway and the bare proxy, and the gateway, which does all the bare proxy does and more,
/// counts more.
#[test]
fn the_instruction_count_reports_the_gateway_and_the_bare_proxy() {
    let test = "the_instruction_count_reports_the_gateway_and_the_bare_proxy";
    let install = "apt-get install valgrind";
    if !tollgate_e2e::tool_or_skip("valgrind", "TOLLGATE_REQUIRE_VALGRIND", test, install) {
        return;
    }
    let dir = profile_dir();
    cargo_build(&["-p", "tollgate", "-p", "mock-upstream"]);
    cargo_build(&["-p", "tollgate-bench"]);
    let stdout = run_bench(
        &dir,
        &[
            "instructions",
            "--requests",
            "5",
            "--scenarios",
            "immediate,stream20",
        ],
    );
    for scenario in ["immediate", "stream20"] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {scenario} ")))
            .unwrap_or_else(|| panic!("no row for {scenario}:\n{stdout}"));
        // | scenario | gateway 116.0k | bare 43.5k | ratio | difference |
        let counts: Vec<f64> = row
            .split('|')
            .skip(2)
            .take(2)
            .map(|c| c.trim().trim_end_matches('k').parse().unwrap())
            .collect();
        assert!(
            counts[1] > 0.0 && counts[0] > counts[1],
            "gateway {} k, bare {} k instructions per request:\n{stdout}",
            counts[0],
            counts[1]
        );
    }
}

/// Runs `tollgate-bench ARGS --bin-dir DIR` from `dir` and answers its standard output; a
/// failure prints both outputs.
fn run_bench(dir: &std::path::Path, args: &[&str]) -> String {
    let output = Command::new(dir.join("tollgate-bench"))
        .args(args)
        .arg("--bin-dir")
        .arg(dir)
        .output()
        .expect("run tollgate-bench");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "tollgate-bench {args:?} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    stdout
}
