//! The fault soak in short form: `tollgate-bench soak` for a few seconds against the real
//! gateway binary and the fake upstream with the soak's scripted faults (a dead provider, a key
//! whose streams fail before their first event, a flaky key, a revoked and a rate-limited key,
//! healthy backups). Every request must succeed, since every chain ends in a healthy target, and
//! retries must stay bounded. The scenario is the bench's own (`crates/tollgate-bench/src/soak`),
//! so the README's figures and this test measure the same thing.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::process::Command;

use serde_json::Value;
use tollgate_e2e::{cargo_build, profile_dir};

/// The bound on upstream attempts per client request.
const MAX_AMPLIFICATION: f64 = 1.15;

#[test]
fn every_request_succeeds_with_bounded_retries_while_upstreams_fail() {
    let dir = profile_dir();
    cargo_build(&["-p", "tollgate", "--bin", "tollgate"]);
    cargo_build(&["-p", "tollgate-bench"]);
    let tmp = dir.join("..").join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let out = tmp.join(format!("soak-{}.json", std::process::id()));
    let output = Command::new(dir.join("tollgate-bench"))
        .args(["soak", "--duration", "4s", "--concurrency", "16"])
        .args(["--max-amplification", &MAX_AMPLIFICATION.to_string()])
        .arg("--bin-dir")
        .arg(&dir)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run tollgate-bench soak");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report = format!("{stdout}\n{stderr}");
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(&out)
            .unwrap_or_else(|e| panic!("no result file ({e}); the soak said:\n{report}")),
    )
    .unwrap();
    let _ = std::fs::remove_file(&out);
    let result = &doc["result"];

    let requests = result["requests"].as_u64().unwrap();
    assert!(requests > 100, "too little load to judge:\n{report}");
    assert_eq!(
        result["failed"], 0,
        "every chain ends in a healthy target, so no request may fail:\n{report}"
    );
    assert_eq!(result["success_rate"].as_f64(), Some(1.0), "{report}");
    let amplification = result["amplification"].as_f64().unwrap();
    assert!(
        amplification <= MAX_AMPLIFICATION,
        "{amplification} upstream attempts per request:\n{report}"
    );
    // The faults were met: every faulty key was tried at least once.
    for key in result["keys"].as_array().unwrap() {
        assert!(key["attempts"].as_u64().unwrap() > 0, "{key}:\n{report}");
    }
    // The gateway counts every attempt the upstream saw.
    assert_eq!(
        result["gateway_metrics"]["upstream_attempts"].as_f64(),
        result["upstream_attempts"].as_f64(),
        "{report}"
    );
    assert!(output.status.success(), "the soak failed:\n{report}");
    assert!(
        stdout.lines().any(|l| l.starts_with("soak-result {")),
        "{report}"
    );
}
