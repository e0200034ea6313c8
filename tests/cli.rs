//! The command line and the logs as an operator meets them: `--help` and `--version` succeed,
//! a bad flag or value names itself and exits 2, every flag names the variable that also sets
//! it, `check-config` reads `TOLLGATE_CONFIG`, a pretty log written to a pipe or a file has no
//! colour codes, and the admin API's 404 names the method it got.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::process::{Command, Output};
use tollgate_e2e::{binary, mock, provider, Gateway};

fn tollgate(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(binary());
    cmd.args(args)
        .env_remove("TOLLGATE_CONFIG")
        .env_remove("TOLLGATE_SERVER__LISTEN")
        .env_remove("TOLLGATE_SERVER__OPEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_and_version_succeed_and_name_every_flag_with_its_variable() {
    let help = tollgate(&["--help"], &[]);
    assert_eq!(help.status.code(), Some(0));
    let out = text(&help.stdout);
    for needle in [
        "run",
        "check-config",
        "healthcheck",
        "--config <PATH>",
        "[env: TOLLGATE_CONFIG",
        "--listen <ADDR>",
        "[env: TOLLGATE_SERVER__LISTEN",
        "--open",
        "[env: TOLLGATE_SERVER__OPEN",
    ] {
        assert!(out.contains(needle), "{needle} missing from:\n{out}");
    }
    let sub = tollgate(&["check-config", "--help"], &[]);
    assert_eq!(sub.status.code(), Some(0));
    assert!(text(&sub.stdout).contains("<PATH>"));

    let version = tollgate(&["--version"], &[]);
    assert_eq!(version.status.code(), Some(0));
    assert_eq!(
        text(&version.stdout).trim(),
        format!("tollgate {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn a_bad_flag_or_value_names_itself_and_exits_2() {
    let bad = tollgate(&["--bogus"], &[]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        text(&bad.stderr).contains("--bogus"),
        "{}",
        text(&bad.stderr)
    );
    let bad = tollgate(&["--listen", "not-an-address"], &[]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("not-an-address"));
    let bad = tollgate(&[], &[("TOLLGATE_SERVER__LISTEN", "nowhere")]);
    assert_eq!(
        bad.status.code(),
        Some(2),
        "the variable is checked like the flag"
    );
    assert!(text(&bad.stderr).contains("nowhere"));
    let bad = tollgate(&["check-config"], &[]);
    assert_eq!(bad.status.code(), Some(2), "a missing PATH");
}

#[test]
fn check_config_reads_the_path_from_the_flag_or_the_variable() {
    let dir = std::env::temp_dir().join(format!("tollgate-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        provider("openai", "http://127.0.0.1:9/v1", &["k1"], true),
    )
    .unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[server]\nlisten = 5\n").unwrap();
    let ok = tollgate(&["check-config", good.to_str().unwrap()], &[]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    assert!(text(&ok.stdout).contains("\"providers\""));
    let from_env = tollgate(
        &["check-config"],
        &[("TOLLGATE_CONFIG", good.to_str().unwrap())],
    );
    assert_eq!(from_env.status.code(), Some(0));
    let invalid = tollgate(&["check-config", bad.to_str().unwrap()], &[]);
    assert_eq!(invalid.status.code(), Some(1));
    let err = text(&invalid.stderr);
    assert!(err.contains("server.listen"), "{err}");
    assert!(
        !err.contains("default."),
        "no internal profile prefix: {err}"
    );
}

#[tokio::test]
async fn a_pretty_log_to_a_pipe_has_no_colour_codes() {
    let m = mock().await;
    let toml = format!(
        "[server]\nlog_format = \"pretty\"\n{}",
        provider("openai", &m.base_url(), &["k1"], true)
    );
    let gw = Gateway::start(&toml, &[]).await;
    let r = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .json(&serde_json::json!({"model": "m", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !gw.logs().contains("request") {
        assert!(std::time::Instant::now() < deadline, "no access line");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let logs = gw.logs();
    assert!(!logs.contains('\u{1b}'), "escape codes in: {logs:?}");
    assert!(logs.contains("INFO"), "the pretty format: {logs}");

    // The admin API, off here, names the method it got in its 404.
    let r = reqwest::Client::new()
        .post(gw.url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("POST /admin/reload"), "{message}");
}
