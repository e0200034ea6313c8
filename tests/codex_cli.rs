//! OpenAI's Codex CLI as a test client: installed from npm under `<target>/codex` at a pinned
//! version on first use, and run as `codex exec` (one non-interactive turn) against a base URL.
//!
//! When it cannot be installed (no npm, no registry) the tests that need it print
//! `SKIPPED: Codex CLI <version> unavailable: <reason>` and pass, unless
//! `TOLLGATE_REQUIRE_CODEX=1` (set by `.ci/run`), which makes them fail with the reason.
//!
//! A run is hermetic: `CODEX_HOME`, `HOME` and the working directory are fresh directories
//! under `<target>/tmp`, the environment is cleared but for `PATH`, and every connection
//! Codex makes beyond loopback (it reaches for github.com and chatgpt.com at start) goes to a
//! proxy address nothing listens on, so it fails at once instead of leaving the machine.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use crate::provision;

/// The `@openai/codex` version installed and expected (`.ci/run` reads it from here).
pub const CODEX_VERSION: &str = "0.171.0";

/// Set to `1` to fail, not skip, when Codex CLI cannot be installed (meant for CI).
pub const REQUIRE_CODEX: &str = "TOLLGATE_REQUIRE_CODEX";

/// Longest one `codex exec` may take: a turn Codex retries five times after in-stream rate
/// limits of a few seconds each still fits.
pub const EXEC_LIMIT: Duration = Duration::from_secs(90);

/// Where nothing listens: the proxy for every non-loopback connection of a run.
const DEAD_PROXY: &str = "http://127.0.0.1:9";

/// The `codex` launcher (`node_modules/.bin/codex` under the npm prefix), installed at
/// [`CODEX_VERSION`] once per test process.
fn codex_binary() -> Result<PathBuf, String> {
    static CODEX: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    CODEX
        .get_or_init(|| {
            let prefix = provision::target_dir()?.join("codex");
            let bin = prefix.join("node_modules").join(".bin").join("codex");
            provision::provision(
                &prefix,
                || has_codex(&bin).then(|| bin.clone()),
                || install(&prefix),
            )
        })
        .clone()
}

/// Whether `bin --version` runs (offline) and names the pinned version.
fn has_codex(bin: &Path) -> bool {
    Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).trim() == format!("codex-cli {CODEX_VERSION}")
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
    let package = format!("@openai/codex@{CODEX_VERSION}");
    let mut cmd = Command::new("npm");
    cmd.args([
        "install",
        "--no-audit",
        "--no-fund",
        "--loglevel=error",
        "--prefix",
    ])
    .arg(prefix)
    .arg(&package);
    provision::run_step(cmd, &format!("npm install {package}"))
}

/// The Codex launcher, or `None` after printing why the test is skipped.
pub async fn codex() -> Option<PathBuf> {
    let result = tokio::task::spawn_blocking(codex_binary).await.unwrap();
    provision::or_skip(result, &format!("Codex CLI {CODEX_VERSION}"), REQUIRE_CODEX)
}

/// What one `codex exec` did.
#[derive(Debug)]
pub struct CodexRun {
    /// Its exit status (a kill after [`EXEC_LIMIT`] included).
    pub status: ExitStatus,
    /// Whether it ran over [`EXEC_LIMIT`] and was killed.
    pub timed_out: bool,
    /// Its standard output: the final answer.
    pub stdout: String,
    /// Its standard error: the header, the transcript (tool calls, `Reconnecting... n/5`,
    /// `ERROR: ...`), warnings.
    pub stderr: String,
    /// How long it ran.
    pub elapsed: Duration,
}

impl CodexRun {
    /// Both streams, labelled, for assertion messages.
    pub fn transcript(&self) -> String {
        format!(
            "codex exec: {}{} in {:?}\n--- stdout\n{}\n--- stderr\n{}",
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

    /// The lines where Codex says it reconnects (`ERROR: Reconnecting... 1/5`) or prints an
    /// error, in either stream.
    pub fn error_lines(&self) -> Vec<&str> {
        self.stdout
            .lines()
            .chain(self.stderr.lines())
            .filter(|l| l.contains("Reconnecting") || l.starts_with("ERROR"))
            .collect()
    }
}

static RUNS: AtomicUsize = AtomicUsize::new(0);

/// How Codex is pointed at the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A model provider of its own (`model_providers.tollgate`, `wire_api = "responses"`).
    Provider,
    /// Codex's built-in OpenAI provider with `openai_base_url` (it tries a WebSocket first).
    BuiltIn,
}

/// Runs `codex exec PROMPT` (plus `extra` arguments before the prompt) with a model provider
/// "tollgate" at `base_url` speaking the Responses API over HTTP, `api_key` as its bearer
/// token, and `model`. Waits at most [`EXEC_LIMIT`], then kills its process group.
pub async fn exec(
    codex: &Path,
    base_url: &str,
    api_key: &str,
    model: &str,
    prompt: &str,
    extra: &[&str],
) -> CodexRun {
    exec_via(
        Via::Provider,
        codex,
        base_url,
        api_key,
        model,
        prompt,
        extra,
    )
    .await
}

/// [`exec`], pointed at the gateway `via` a provider of its own or the built-in one.
pub async fn exec_via(
    via: Via,
    codex: &Path,
    base_url: &str,
    api_key: &str,
    model: &str,
    prompt: &str,
    extra: &[&str],
) -> CodexRun {
    let n = RUNS.fetch_add(1, Ordering::Relaxed);
    let root = provision::target_dir()
        .unwrap()
        .join("tmp")
        .join(format!("codex-{}-{n}", std::process::id()));
    let (home, work) = (root.join("home"), root.join("work"));
    for dir in [&home, &work] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let provider = format!(
        r#"model_providers.tollgate={{ name = "tollgate", base_url = "{base_url}", env_key = "OPENAI_API_KEY", wire_api = "responses" }}"#
    );
    let builtin = format!("openai_base_url={base_url}");
    let mut cmd = tokio::process::Command::new(codex);
    cmd.arg("exec")
        .args(["--skip-git-repo-check", "--color", "never", "-m", model]);
    match via {
        Via::Provider => cmd.args(["-c", "model_provider=tollgate", "-c", &provider]),
        Via::BuiltIn => cmd.args(["-c", &builtin]),
    };
    cmd.args(["-c", "analytics.enabled=false"])
        .args(extra)
        .arg(prompt)
        .current_dir(&work)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env("CODEX_HOME", &home)
        .env("OPENAI_API_KEY", api_key)
        // The built-in provider reads its key from CODEX_API_KEY, not OPENAI_API_KEY.
        .env("CODEX_API_KEY", api_key)
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
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let stdout = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf).await;
        buf
    });
    let stderr = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf).await;
        buf
    });
    let (status, timed_out) = match tokio::time::timeout(EXEC_LIMIT, child.wait()).await {
        Ok(status) => (status.unwrap(), false),
        Err(_) => {
            // The launcher may be node with the native binary as its child: kill the group.
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
    CodexRun {
        status,
        timed_out,
        stdout: String::from_utf8_lossy(&stdout.unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&stderr.unwrap_or_default()).into_owned(),
        elapsed,
    }
}
