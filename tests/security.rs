//! Security of the gateway as a user meets it (issue 21): config errors that never print a
//! secret (`check-config`, a refused reload's answer and log), secrets from the environment read
//! as the strings they are, and protected open mode: with no `[[clients]]` only loopback peers
//! are served unless `server.open` says otherwise.
//!
//! A peer that is not loopback comes from a network namespace the test makes itself (two
//! namespaces joined by a veth pair, the gateway in one, the client in the other; the host's own
//! network is not touched). That needs root and `ip`; without them the test says `SKIPPED` and
//! passes, and the layer's unit tests (`server/open.rs`, a synthetic peer address) still run.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step is a failed test"
)]

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;
use tollgate_e2e::{mock, write_config, Gateway};

/// A literal upstream secret written in a config file.
const SECRET: &str = "sk-live-123";

/// A valid config: one default provider at `base_url` with `secret`, no clients, no watcher.
fn config(base_url: &str, secret: &str) -> String {
    format!(
        "[admin]\nwatch_interval = \"0s\"\n\n[[providers]]\nname = \"openai\"\nbase_url = \"{base_url}\"\ndefault = true\nkeys = [{{ id = \"a\", secret = \"{secret}\" }}]\n"
    )
}

/// The same file with a syntax error on the key's line (a stray word after the array).
fn broken(base_url: &str) -> String {
    config(base_url, SECRET).replace(
        &format!("secret = \"{SECRET}\" }}]"),
        &format!("secret = \"{SECRET}\" }}] trailing"),
    )
}

fn chat() -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
}

fn check_config(path: &Path) -> Output {
    Command::new(tollgate_e2e::binary())
        .arg("check-config")
        .arg(path)
        .env_remove("TOLLGATE_CONFIG")
        .output()
        .expect("run tollgate check-config")
}

#[test]
fn check_config_names_the_line_of_a_syntax_error_without_printing_it() {
    let path = write_config(&broken("http://127.0.0.1:9/v1"));
    let out = check_config(&path);
    assert!(!out.status.success());
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        !stdout.contains(SECRET) && !stderr.contains(SECRET),
        "{stderr}"
    );
    assert!(!stderr.contains("trailing"), "{stderr}");
    let expected = format!(
        "{}: line 8, column 47: TOML syntax error: expected newline, `#`",
        path.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");

    // A secret where a table was expected: named by its kind, not quoted.
    let path = write_config(&config("http://127.0.0.1:9/v1", "x").replace(
        "keys = [{ id = \"a\", secret = \"x\" }]",
        &format!("keys = \"{SECRET}\""),
    ));
    let out = check_config(&path);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains(SECRET), "{stderr}");
    assert!(
        stderr.contains("providers.0.keys: invalid type: found a string"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_refused_reload_names_the_line_in_its_answer_and_log_without_printing_it() {
    let m = mock().await;
    // The admin token through the environment, all digits with a leading zero: a string.
    let gw = Gateway::start(
        &config(&m.base_url(), "sk-a"),
        &[("TOLLGATE_ADMIN__TOKEN", "000777")],
    )
    .await;
    let admin = |token: &'static str| {
        reqwest::Client::new()
            .post(gw.url("/admin/reload"))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(admin("777").await.unwrap().status(), 401);
    assert_eq!(admin("000777").await.unwrap().status(), 200);

    std::fs::write(&gw.config_path, broken(&m.base_url())).unwrap();
    let r = admin("000777").await.unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(!message.contains(SECRET), "{message}");
    assert!(
        message.contains("line 8, column 47: TOML syntax error"),
        "{message}"
    );
    assert_eq!(body["error"]["code"], "invalid_config");
    // The log line is written as the answer goes out: wait for it (bounded).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !gw.logs().contains("config reload refused") && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let logs = gw.logs();
    assert_eq!(logs.matches("config reload refused").count(), 1, "{logs}");
    assert!(!logs.contains(SECRET), "{logs}");

    // The old config keeps serving.
    let r = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .json(&chat())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

// ---------------------------------------------------------------------------------------------
// Open mode

/// A gateway started with exactly these arguments (under `prefix`, e.g. `ip netns exec NS`).
struct Proc {
    child: Child,
    port: u16,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn start(prefix: &[&str], args: &[&str]) -> Proc {
        let binary = tollgate_e2e::binary();
        let mut cmd = match prefix.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(&binary);
                c
            }
            None => Command::new(&binary),
        };
        cmd.args(args)
            .env_remove("OPENAI_API_KEY")
            .env_remove("OPENAI_API_KEYS")
            .env_remove("TOLLGATE_CONFIG")
            .env("RUST_LOG", "info")
            .env("TOLLGATE_SERVER__LOG_FORMAT", "json")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn tollgate");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let pipes: [Box<dyn std::io::Read + Send>; 2] = [
            Box::new(child.stdout.take().unwrap()),
            Box::new(child.stderr.take().unwrap()),
        ];
        for pipe in pipes {
            let (logs, tx) = (logs.clone(), tx.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if line.contains("\"message\":\"listening\"") {
                        let _ = tx.send(line.clone());
                    }
                    logs.lock().unwrap().push(line);
                }
            });
        }
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no start: {}", logs.lock().unwrap().join("\n")));
        let v: Value = serde_json::from_str(&line).unwrap();
        let addr: SocketAddr = v["addr"].as_str().unwrap().parse().unwrap();
        Proc {
            child,
            port: addr.port(),
            logs,
        }
    }

    fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn open_mode_bound_to_every_interface_serves_loopback_peers() {
    let m = mock().await;
    let path = write_config(&config(&m.base_url(), "sk-a"));
    let gw = Proc::start(
        &[],
        &["--config", path.to_str().unwrap(), "--listen", "0.0.0.0:0"],
    );
    let r = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/v1/chat/completions", gw.port))
        .json(&chat())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(m.count(), 1);
    assert!(
        gw.logs()
            .contains("open mode for loopback peers only, other peers get 403"),
        "{}",
        gw.logs()
    );
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Two network namespaces joined by a veth pair: `gateway` (198.18.0.1) and `client`
/// (198.18.0.2), an address range for benchmarks that no real network uses. Deleted on drop.
struct Namespaces {
    gateway: String,
    client: String,
}

const GATEWAY_IP: &str = "198.18.0.1";
const CLIENT_IP: &str = "198.18.0.2";

impl Namespaces {
    /// `None` (after saying why) where namespaces cannot be made: no `ip` or `curl`, not root.
    /// With `TOLLGATE_REQUIRE_NETNS=1` that is a failure instead.
    fn create(test: &str) -> Option<Namespaces> {
        let skip = |why: String| {
            assert!(
                std::env::var("TOLLGATE_REQUIRE_NETNS").as_deref() != Ok("1"),
                "TOLLGATE_REQUIRE_NETNS=1 but {why}"
            );
            eprintln!("SKIPPED {test}: {why}");
            None
        };
        let curl = Command::new("curl").arg("--version").output();
        if !curl.is_ok_and(|o| o.status.success()) {
            return skip("curl is not installed".into());
        }
        let (pid, n) = (std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let ns = Namespaces {
            gateway: format!("tollgate-e2e-{pid}-{n}-gw"),
            client: format!("tollgate-e2e-{pid}-{n}-cl"),
        };
        let (gw, cl) = (&ns.gateway, &ns.client);
        // Interface names have at most 15 bytes.
        let (veth_gw, veth_cl) = (
            format!("tgg{n}x{}", pid % 100_000),
            format!("tgc{n}x{}", pid % 100_000),
        );
        let steps = [
            format!("netns add {gw}"),
            format!("netns add {cl}"),
            format!("link add {veth_gw} netns {gw} type veth peer name {veth_cl} netns {cl}"),
            format!("-n {gw} addr add {GATEWAY_IP}/30 dev {veth_gw}"),
            format!("-n {cl} addr add {CLIENT_IP}/30 dev {veth_cl}"),
            format!("-n {gw} link set {veth_gw} up"),
            format!("-n {cl} link set {veth_cl} up"),
            format!("-n {gw} link set lo up"),
            format!("-n {cl} link set lo up"),
        ];
        for step in steps {
            match Command::new("ip").args(step.split(' ')).output() {
                Ok(o) if o.status.success() => {}
                // `ns` is dropped on the way out: what was made is deleted.
                Ok(o) => {
                    return skip(format!(
                        "`ip {step}` failed (network namespaces need root): {}",
                        String::from_utf8_lossy(&o.stderr).trim()
                    ))
                }
                Err(e) => return skip(format!("`ip` (iproute2) is not available: {e}")),
            }
        }
        Some(ns)
    }

    /// `curl` from inside namespace `ns`: (status, body).
    fn curl(ns: &str, url: &str) -> (u16, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "curl", "-sS", "--max-time", "10"])
            .args(["-H", "content-type: application/json"])
            .args(["-d", &chat().to_string(), "-w", "\n%{http_code}", url])
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
        let status = status.trim().parse().unwrap_or_else(|_| {
            panic!(
                "curl {url} from {ns}: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (status, body.to_owned())
    }

    fn get(ns: &str, url: &str) -> u16 {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "curl", "-sS", "--max-time", "10"])
            .args(["-o", "/dev/null", "-w", "%{http_code}", url])
            .output()
            .expect("run curl");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end inside it, and with it the pair.
        for ns in [&self.gateway, &self.client] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

#[tokio::test]
async fn open_mode_refuses_a_peer_that_is_not_loopback_unless_opted_in() {
    let test = "open_mode_refuses_a_peer_that_is_not_loopback_unless_opted_in";
    let Some(ns) = Namespaces::create(test) else {
        return;
    };
    // The upstream is unreachable from the namespace: a request let through ends 502, not 403.
    let path = write_config(
        &config("http://127.0.0.1:9/v1", "sk-a")
            .replace("[admin]", "[retry]\nmax_attempts = 1\n\n[admin]"),
    );
    let prefix = ["ip", "netns", "exec", ns.gateway.as_str()];
    let args = ["--config", path.to_str().unwrap(), "--listen", "0.0.0.0:0"];
    let gw = Proc::start(&prefix, &args);
    let remote = |p: &str| format!("http://{GATEWAY_IP}:{}{p}", gw.port);

    let (status, body) = Namespaces::curl(&ns.client, &remote("/v1/chat/completions"));
    assert_eq!(status, 403, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "open_mode_loopback_only");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("[[clients]]") && message.contains("server.open = true"),
        "{message}"
    );
    for probe in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(Namespaces::get(&ns.client, &remote(probe)), 200, "{probe}");
    }
    // The same gateway, asked over its own loopback: let through.
    let local = format!("http://127.0.0.1:{}/v1/chat/completions", gw.port);
    let (status, body) = Namespaces::curl(&ns.gateway, &local);
    assert_ne!(status, 403, "{body}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !gw.logs().contains("refused a peer that is not loopback")
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(gw.logs().contains("refused a peer that is not loopback"));
    drop(gw);

    // Opted in with --open: the remote peer is let through too.
    let opened: Vec<&str> = args.iter().copied().chain(["--open"]).collect();
    let gw = Proc::start(&prefix, &opened);
    let remote = format!("http://{GATEWAY_IP}:{}/v1/chat/completions", gw.port);
    let (status, body) = Namespaces::curl(&ns.client, &remote);
    assert_ne!(status, 403, "{body}");
    assert!(
        gw.logs()
            .contains("server.open = true: OPEN MODE, anyone who reaches this port"),
        "{}",
        gw.logs()
    );
}
