//! Anthropic's Claude Code as a test client: installed from npm under `<target>/claude-code` at
//! a pinned version on first use, and run as `claude -p` (one non-interactive turn) against the
//! gateway's Messages API.
//!
//! When it cannot be installed (no npm, no registry) the tests that need it print
//! `SKIPPED: Claude Code <version> unavailable: <reason>` and pass, unless
//! `TOLLGATE_REQUIRE_CLAUDE_CODE=1` (set by `.ci/run`), which makes them fail with the reason.
//!
//! The package is installed with `--ignore-scripts`: its postinstall would only replace the
//! `.bin/claude` stub with the platform package's native binary, which the tests run directly.
//!
//! A run is hermetic: `HOME` and the working directory are fresh directories under
//! `<target>/tmp`, the environment is cleared but for `PATH`, telemetry and other nonessential
//! traffic are off, and any connection beyond loopback goes to a proxy address nothing listens
//! on, so it fails at once instead of leaving the machine.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use crate::provision;

/// The `@anthropic-ai/claude-code` version installed and expected (`.ci/run` reads it from
/// here).
pub const CLAUDE_CODE_VERSION: &str = "2.1.332";

/// Set to `1` to fail, not skip, when Claude Code cannot be installed (meant for CI).
pub const REQUIRE_CLAUDE_CODE: &str = "TOLLGATE_REQUIRE_CLAUDE_CODE";

/// Longest one `claude -p` may take: a plain turn takes about half a second, a tool round trip
/// a few; retries are off, so anything near this is a hang.
pub const PRINT_LIMIT: Duration = Duration::from_secs(60);

/// Where nothing listens: the proxy for every non-loopback connection of a run.
const DEAD_PROXY: &str = "http://127.0.0.1:9";

/// The native `claude` binary of the platform package under the npm prefix, installed at
/// [`CLAUDE_CODE_VERSION`] once per test process.
fn claude_binary() -> Result<PathBuf, String> {
    static CLAUDE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    CLAUDE
        .get_or_init(|| {
            let prefix = provision::target_dir()?.join("claude-code");
            let bin = prefix
                .join("node_modules")
                .join("@anthropic-ai")
                .join("claude-code-linux-x64")
                .join("claude");
            provision::provision(
                &prefix,
                || has_claude(&bin).then(|| bin.clone()),
                || install(&prefix),
            )
        })
        .clone()
}

/// Whether `bin --version` runs (offline) and names the pinned version.
fn has_claude(bin: &Path) -> bool {
    Command::new(bin)
        .arg("--version")
        .env("DISABLE_TELEMETRY", "1")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).trim()
                    == format!("{CLAUDE_CODE_VERSION} (Claude Code)")
        })
}

fn install(prefix: &Path) -> Result<(), String> {
    let npm = Command::new("npm")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !npm.is_ok_and(|s| s.success()) {
        return Err("npm is not installed (it comes with Node.js)".into());
    }
    let package = format!("@anthropic-ai/claude-code@{CLAUDE_CODE_VERSION}");
    let mut cmd = Command::new("npm");
    cmd.args([
        "install",
        "--no-audit",
        "--no-fund",
        "--loglevel=error",
        "--ignore-scripts",
        "--prefix",
    ])
    .arg(prefix)
    .arg(&package);
    provision::run_step(cmd, &format!("npm install {package}"))
}

/// The Claude Code binary, or `None` after printing why the test is skipped.
pub async fn claude() -> Option<PathBuf> {
    let result = tokio::task::spawn_blocking(claude_binary).await.unwrap();
    provision::or_skip(
        result,
        &format!("Claude Code {CLAUDE_CODE_VERSION}"),
        REQUIRE_CLAUDE_CODE,
    )
}

/// What one `claude -p` did.
#[derive(Debug)]
pub struct ClaudeRun {
    /// Its exit status (a kill after [`PRINT_LIMIT`] included).
    pub status: ExitStatus,
    /// Whether it ran over [`PRINT_LIMIT`] and was killed.
    pub timed_out: bool,
    /// Its standard output: with `--output-format json`, one object whose `result` is the
    /// final text (or `API Error: <status> <message>`).
    pub stdout: String,
    /// Its standard error: warnings (such as a retired model's).
    pub stderr: String,
    /// How long it ran.
    pub elapsed: Duration,
}

impl ClaudeRun {
    /// Both streams, labelled, for assertion messages.
    pub fn transcript(&self) -> String {
        format!(
            "claude -p: {}{} in {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.status,
            if self.timed_out {
                " (killed: too slow)"
            } else {
                ""
            },
            self.elapsed,
            self.stdout,
            self.stderr
        )
    }

    /// Standard output as JSON (`--output-format json`), or `None` when it is not.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(self.stdout.trim()).ok()
    }

    /// The final text: the JSON output's `result`, else all of standard output.
    pub fn result(&self) -> String {
        self.json()
            .and_then(|v| v["result"].as_str().map(str::to_owned))
            .unwrap_or_else(|| self.stdout.clone())
    }
}

static RUNS: AtomicUsize = AtomicUsize::new(0);

/// Runs `claude -p PROMPT --model MODEL --output-format json` (plus `extra` arguments) against
/// the gateway at `base_url` (its root, without `/v1`) with `api_key` as the client's key.
/// Waits at most [`PRINT_LIMIT`], then kills its process group.
pub async fn print(
    claude: &Path,
    base_url: &str,
    api_key: &str,
    model: &str,
    prompt: &str,
    extra: &[&str],
) -> ClaudeRun {
    let n = RUNS.fetch_add(1, Ordering::Relaxed);
    let root = provision::target_dir()
        .unwrap()
        .join("tmp")
        .join(format!("claude-{}-{n}", std::process::id()));
    let (home, work) = (root.join("home"), root.join("work"));
    for dir in [&home, &work] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let mut cmd = tokio::process::Command::new(claude);
    cmd.args(["-p", prompt, "--model", model, "--output-format", "json"])
        .args(extra)
        .current_dir(&work)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env("ANTHROPIC_BASE_URL", base_url)
        .env("ANTHROPIC_API_KEY", api_key)
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_TELEMETRY", "1")
        // Otherwise a failed request is retried, with backoff, for minutes.
        .env("CLAUDE_CODE_MAX_RETRIES", "0")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
    ] {
        cmd.env(var, DEAD_PROXY);
    }
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap();
    let pid = child.id().unwrap();
    let stdout = read_all(child.stdout.take().unwrap());
    let stderr = read_all(child.stderr.take().unwrap());
    let (status, timed_out) = match tokio::time::timeout(PRINT_LIMIT, child.wait()).await {
        Ok(status) => (status.unwrap(), false),
        Err(_) => {
            // Commands its tools started share the group: kill them too.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
            (child.wait().await.unwrap(), true)
        }
    };
    let elapsed = started.elapsed();
    // Stragglers of the group would hold the pipes open: read what there is, briefly.
    let limit = Duration::from_secs(5);
    let stdout = tokio::time::timeout(limit, stdout)
        .await
        .ok()
        .and_then(Result::ok);
    let stderr = tokio::time::timeout(limit, stderr)
        .await
        .ok()
        .and_then(Result::ok);
    let _ = std::fs::remove_dir_all(&root);
    ClaudeRun {
        status,
        timed_out,
        stdout: String::from_utf8_lossy(&stdout.unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&stderr.unwrap_or_default()).into_owned(),
        elapsed,
    }
}

/// Reads `pipe` to its end in a task of its own.
fn read_all(
    mut pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static,
) -> tokio::task::JoinHandle<Vec<u8>> {
    tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf).await;
        buf
    })
}
