//! Harness for Tollgate's black-box tests: builds and starts the real `tollgate` binary on an
//! ephemeral port with a config file, captures its logs, and waits on `/readyz` instead of sleeping.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test harness: a failed step is a failed test"
)]

pub mod claude_code_cli;
pub mod codex_cli;
pub mod container;
pub mod provision;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `target/<profile>` of the running test binary.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe path");
    // target/<profile>/deps/<test> → target/<profile>
    exe.parent()
        .and_then(|p| p.parent())
        .expect("profile dir")
        .to_path_buf()
}

/// Runs `cargo build --quiet ARGS` (e.g. `-p tollgate`) in the profile of the running test.
pub fn cargo_build(args: &[&str]) {
    let release = profile_dir().file_name().is_some_and(|n| n == "release");
    let mut cmd = Command::new(env!("CARGO"));
    // Build scripts (ring's) watch CARGO_MANIFEST_DIR: a value that differs from the
    // outer build would mark half the tree stale on every test run.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("CARGO_MANIFEST")
            || name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_CRATE")
            || name == "CARGO_PRIMARY_PACKAGE"
            || name == "CARGO_TARGET_TMPDIR"
        {
            cmd.env_remove(name);
        }
    }
    cmd.args(["build", "--quiet"])
        .args(args)
        .current_dir(workspace());
    // The target directory the tests were built in (cargo marks its root with CACHEDIR.TAG),
    // so that `--target-dir` on the test command builds and finds the binaries there too.
    if let Some(target) = profile_dir()
        .ancestors()
        .find(|d| d.join("CACHEDIR.TAG").is_file())
    {
        cmd.arg("--target-dir").arg(target);
    }
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build");
    assert!(status.success(), "cargo build {args:?} failed");
}

/// Path of the `tollgate` binary, built once per test process (a no-op when up to date).
pub fn binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            cargo_build(&["-p", "tollgate", "--bin", "tollgate"]);
            profile_dir().join("tollgate")
        })
        .clone()
}

/// A running gateway process.
pub struct Gateway {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    /// The config file it was started with.
    pub config_path: PathBuf,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Writes `toml` to a fresh file under the test tmp dir.
pub fn write_config(toml: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let exe = std::env::current_exe().expect("test exe path");
    // target/<profile>/deps/<test> → target/tmp
    let dir = exe.ancestors().nth(3).expect("target dir").join("tmp");
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let path = dir.join(format!("tollgate-{}-{n}.toml", std::process::id()));
    std::fs::write(&path, toml).expect("write config");
    path
}

impl Gateway {
    /// Starts the gateway with a config file (listen forced to 127.0.0.1:0) and extra env vars.
    pub async fn start(toml: &str, env: &[(&str, &str)]) -> Gateway {
        let path = write_config(toml);
        let args = [
            "--config".to_owned(),
            path.display().to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
        ];
        Self::spawn(&args, env, path).await
    }

    /// Starts the gateway without a config file (zero-config mode).
    pub async fn start_zero_config(env: &[(&str, &str)]) -> Gateway {
        Self::spawn(
            &["--listen".into(), "127.0.0.1:0".into()],
            env,
            PathBuf::new(),
        )
        .await
    }

    async fn spawn(args: &[String], env: &[(&str, &str)], config_path: PathBuf) -> Gateway {
        let mut cmd = Command::new(binary());
        cmd.args(args)
            .env_remove("OPENAI_API_KEY")
            .env_remove("OPENAI_API_KEYS")
            .env_remove("TOLLGATE_CONFIG")
            // The machine's proxy, if any, is not the tests' (egress tests pass their own).
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy")
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .env("RUST_LOG", "info")
            .env("TOLLGATE_SERVER__LOG_FORMAT", "json")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn tollgate");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        for pipe in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child.stderr.take().map(|s| Box::new(s) as _),
        ] {
            let Some(pipe) = pipe else { continue };
            let logs = logs.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if line.contains("\"message\":\"listening\"") {
                        let _ = tx.send(line.clone());
                    }
                    logs.lock().unwrap().push(line);
                }
            });
        }
        drop(tx);
        let line = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)))
            .await
            .unwrap()
            .unwrap_or_else(|_| {
                panic!(
                    "gateway did not start; logs:\n{}",
                    logs.lock().unwrap().join("\n")
                )
            });
        let addr = addr_of(&line);
        let gw = Gateway {
            child,
            addr,
            logs,
            config_path,
        };
        gw.wait_ready().await;
        gw
    }

    async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        for _ in 0..500 {
            if let Ok(r) = client.get(self.url("/readyz")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("gateway never became ready");
    }

    /// `http://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The OpenAI base URL clients use.
    pub fn base_url(&self) -> String {
        self.url("/v1")
    }

    /// Replaces the config file at once, as an editor that saves by renaming does: a watcher
    /// polling the file never reads it half written.
    pub fn replace_config(&self, toml: &str) {
        let next = self.config_path.with_extension("next");
        std::fs::write(&next, toml).expect("write the next config");
        std::fs::rename(&next, &self.config_path).expect("move it into place");
    }

    /// The address in the log line with `message` (such as `admin listening`), logged before
    /// the gateway was ready.
    pub fn logged_addr(&self, message: &str) -> SocketAddr {
        let logs = self.logs();
        let needle = format!("\"message\":\"{message}\"");
        let line = logs
            .lines()
            .find(|l| l.contains(&needle))
            .unwrap_or_else(|| panic!("no {message} line:\n{logs}"));
        addr_of(line)
    }

    /// Everything the process logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Whether the process logs `needle` within 5 s. A log line is written by the gateway's
    /// log thread and read from its output by ours, so it may come after the answer of the
    /// request that caused it: a test that looks for one waits for it here.
    pub async fn logged(&self, needle: &str) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !self.logs().contains(needle) {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Opens a chat stream the mock holds after its first chunk (`x-mock-fault: hold`), reads
    /// that chunk and goes away, as a client that leaves mid-answer does.
    pub async fn leave_mid_stream(&self) {
        let mut resp = reqwest::Client::new()
            .post(self.url("/v1/chat/completions"))
            .header("x-mock-fault", "hold")
            .header("content-type", "application/json")
            .body(r#"{"model": "m", "stream": true, "messages": []}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.chunk().await.unwrap().is_some(), "a first chunk");
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit, up to `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "gateway did not exit in {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `addr` field of a JSON log line.
fn addr_of(line: &str) -> SocketAddr {
    let v: serde_json::Value = serde_json::from_str(line).expect("json log line");
    v["addr"]
        .as_str()
        .expect("addr field")
        .parse()
        .expect("socket addr")
}

/// A fresh fake upstream with default answers on an ephemeral port.
pub async fn mock() -> mock_upstream::MockHandle {
    mock_upstream::start(mock_upstream::MockConfig::default())
        .await
        .expect("start mock-upstream")
}

/// A loopback address where connections are refused, held for as long as the socket lives.
///
/// The socket is bound but never listens: a connection to it is refused at once, and no other
/// test can bind the same port meanwhile (a port that was merely free can be taken by a test
/// running beside this one, whose server would then answer).
pub fn refusing_port() -> (SocketAddr, tokio::net::TcpSocket) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind a loopback port");
    let addr = socket.local_addr().expect("its address");
    (addr, socket)
}

/// One `[[providers]]` block of kind openai.
pub fn provider(name: &str, base_url: &str, keys: &[&str], default: bool) -> String {
    let keys: Vec<String> = keys
        .iter()
        .map(|k| format!("{{ id = \"{k}\", secret = \"sk-{k}\" }}"))
        .collect();
    format!("[[providers]]\nname = \"{name}\"\nkind = \"openai\"\nbase_url = \"{base_url}\"\ndefault = {default}\nkeys = [{}]\n", keys.join(", "))
}

/// Whether `program` runs (`program --version` succeeds). When it does not, the calling test
/// says it skipped, unless `require` (a variable `.ci/run` sets to `1`) makes that a failure.
pub fn tool_or_skip(program: &str, require: &str, test: &str, install: &str) -> bool {
    let found = Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var(require).as_deref() != Ok("1"),
            "{program} is required ({require}=1) but not installed"
        );
        eprintln!("SKIPPED {test}: {program} is not installed ({install})");
    }
    found
}

/// A `redis-server` on an ephemeral port, stopped on drop.
pub struct RedisServer {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
}

impl RedisServer {
    /// Starts one, or `None` (after saying so) when `redis-server` is not installed; with
    /// `TOLLGATE_REQUIRE_REDIS=1` (set by `.ci/run`) a missing server fails the test instead.
    pub async fn start(test: &str) -> Option<RedisServer> {
        let install = "apt-get install redis-server";
        if !tool_or_skip("redis-server", "TOLLGATE_REQUIRE_REDIS", test, install) {
            return None;
        }
        // A port that was free a moment ago may be taken by a test running beside this one
        // before the server binds it: then the server exits, and another port is tried.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut server = RedisServer { child: None, port };
            if server.spawn().await {
                return Some(server);
            }
        }
        panic!("redis-server did not start on any of five free ports");
    }

    /// Starts the server on its port; false when it exited (the port was taken).
    async fn spawn(&mut self) -> bool {
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        for _ in 0..500 {
            if child.try_wait().expect("redis-server's status").is_some() {
                return false;
            }
            // Something answers on the port; it is ours once it answers PING as Redis does.
            if redis_pong(self.port).await {
                self.child = Some(child);
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = child.kill();
        panic!("redis-server did not start on port {}", self.port);
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (an outage).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (recovery).
    pub async fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn().await,
            "redis-server could not start again on port {}",
            self.port
        );
    }
}

/// Whether a Redis server answers `PING` on the loopback port (a server of another test that
/// took the port does not).
async fn redis_pong(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if stream.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut answer = [0u8; 7];
    let read = tokio::time::timeout(Duration::from_secs(1), stream.read_exact(&mut answer)).await;
    matches!(read, Ok(Ok(_))) && &answer == b"+PONG\r\n"
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads one series' value from a Prometheus text exposition (0 when absent).
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The official `openai` Python SDK as a test client: `sdk/client.py SCENARIO` run against a
/// gateway, printing one JSON line of what the SDK observed (the tests make every assertion).
///
/// The SDK lives in a virtualenv at `<target>/sdk-venv`, provisioned on first use (see
/// [`provision`]). When it cannot be provisioned the tests print
/// `SKIPPED: openai SDK unavailable: <reason>` and pass, unless `TOLLGATE_REQUIRE_SDK=1`, which
/// makes them fail with the reason.
pub mod openai_sdk {
    use crate::{provision, Gateway};
    use serde_json::Value;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output, Stdio};
    use std::sync::OnceLock;
    use std::time::Duration;

    /// Set to `1` to fail, not skip, when the SDK cannot be provisioned (meant for CI).
    pub const REQUIRE_SDK: &str = "TOLLGATE_REQUIRE_SDK";
    /// The pip requirements installed into the virtualenv: the `openai` SDK, and `anthropic`
    /// for the Messages API in front.
    const SDK_REQUIREMENTS: [&str; 2] = ["openai>=1.50,<3", "anthropic>=0.60,<3"];
    /// Longest a whole `client.py` run may take; the SDK's own timeout per request is 20s.
    const CLIENT_LIMIT: Duration = Duration::from_secs(90);

    /// The virtualenv's python, with `openai` importable; provisioned once per test process.
    fn sdk_python() -> Result<PathBuf, String> {
        static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
        PYTHON
            .get_or_init(|| {
                let venv = provision::target_dir()?.join("sdk-venv");
                let python = venv.join("bin").join("python");
                provision::provision(
                    &venv,
                    || has_sdk(&python).then(|| python.clone()),
                    || install(&venv, &python),
                )
            })
            .clone()
    }

    fn has_sdk(python: &Path) -> bool {
        Command::new(python)
            .args(["-c", "import openai, anthropic"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn install(venv: &Path, python: &Path) -> Result<(), String> {
        let mut venv_cmd = Command::new("python3");
        venv_cmd.args(["-m", "venv", "--clear"]).arg(venv);
        provision::run_step(venv_cmd, "python3 -m venv")?;
        let mut pip = Command::new(python);
        pip.args(["-m", "pip", "install", "--quiet"])
            .args(SDK_REQUIREMENTS);
        provision::run_step(pip, &format!("pip install {}", SDK_REQUIREMENTS.join(" ")))
    }

    /// The SDK's python, or `None` after printing why the test is skipped.
    pub async fn sdk() -> Option<PathBuf> {
        let result = tokio::task::spawn_blocking(sdk_python).await.unwrap();
        provision::or_skip(result, "openai SDK", REQUIRE_SDK)
    }

    /// Runs `client.py scenario` against `gw` and returns the JSON line it printed.
    pub async fn observe(python: &Path, gw: &Gateway, scenario: &str) -> Value {
        let mut cmd = Command::new(python);
        cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/sdk/client.py"))
            .arg(scenario)
            .env("OPENAI_BASE_URL", gw.base_url())
            .env("OPENAI_API_KEY", "client-key")
            .env_remove("OPENAI_ORG_ID")
            .env_remove("OPENAI_PROJECT_ID");
        run(cmd, gw, scenario).await
    }

    /// Runs `anthropic_client.py scenario model` against `gw`'s Messages API with the gateway
    /// key `key` and returns the JSON line it printed.
    pub async fn observe_anthropic(
        python: &Path,
        gw: &Gateway,
        scenario: &str,
        model: &str,
        key: &str,
    ) -> Value {
        let root = gw.base_url();
        let root = root.strip_suffix("/v1").unwrap_or(&root);
        let mut cmd = Command::new(python);
        cmd.arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/sdk/anthropic_client.py"
        ))
        .args([scenario, model])
        .env("ANTHROPIC_BASE_URL", root)
        .env("ANTHROPIC_API_KEY", key)
        .env_remove("ANTHROPIC_AUTH_TOKEN");
        run(cmd, gw, scenario).await
    }

    async fn run(mut cmd: Command, gw: &Gateway, scenario: &str) -> Value {
        let child = cmd
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        // Blocking wait off the runtime thread: the mock upstream is served on this runtime.
        let waited = tokio::task::spawn_blocking(move || child.wait_with_output());
        let out: Output = match tokio::time::timeout(CLIENT_LIMIT, waited).await {
            Ok(joined) => joined.unwrap().unwrap(),
            Err(_) => {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                panic!(
                    "client.py {scenario} ran over {CLIENT_LIMIT:?}; gateway logs:\n{}",
                    gw.logs()
                );
            }
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "client.py {scenario}: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            out.status
        );
        let line = stdout.lines().last().unwrap_or_default();
        serde_json::from_str(line).unwrap_or_else(|e| {
            panic!("client.py {scenario} printed no JSON ({e}):\n{stdout}{stderr}")
        })
    }
}
