//! The processes under test: building them, starting `mock-upstream`, the bare proxy and
//! `tollgate` on ephemeral ports, and reading their CPU time and memory from `/proc`.

use std::collections::VecDeque;
use std::error::Error;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::Duration;

/// Boxed error used throughout the tool.
pub(crate) type BoxError = Box<dyn Error + Send + Sync>;

/// How many of a child's last output lines are kept for error messages.
const KEPT_LINES: usize = 50;

/// The workspace root (this crate lives in `crates/tollgate-bench`).
pub(crate) fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Builds `tollgate` and `mock-upstream` in the profile this tool was built in (release when it
/// runs from `target/release`) and returns the directory holding them.
pub(crate) fn build_binaries() -> Result<PathBuf, BoxError> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or("cannot tell the directory of the running executable")?
        .to_path_buf();
    let release = dir.file_name().is_some_and(|n| n == "release");
    if !release {
        eprintln!("warning: not a release build: measuring debug binaries (use --release)");
    }
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet", "-p", "tollgate", "-p", "mock-upstream"])
        .current_dir(workspace());
    if release {
        cmd.arg("--release");
    }
    eprintln!("building tollgate and mock-upstream ...");
    let status = cmd.status()?;
    if !status.success() {
        return Err(format!("cargo build failed: {status}").into());
    }
    Ok(dir)
}

/// A child process that is killed when dropped, with its last output lines kept.
pub(crate) struct Proc {
    child: Child,
    name: &'static str,
    lines: Arc<Mutex<VecDeque<String>>>,
}

impl Proc {
    /// Starts `cmd` with piped output; returns it with the first output line that contains
    /// `marker`, or an error with its output if none comes within `limit`.
    fn spawn(
        name: &'static str,
        mut cmd: Command,
        marker: &'static str,
        limit: Duration,
    ) -> Result<(Proc, String), BoxError> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {name} ({:?}): {e}", cmd.get_program()))?;
        let lines = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = mpsc::channel();
        let pipes: [Option<Box<dyn Read + Send>>; 2] = [
            child.stdout.take().map(|s| Box::new(s) as _),
            child.stderr.take().map(|s| Box::new(s) as _),
        ];
        for pipe in pipes.into_iter().flatten() {
            let (lines, tx) = (lines.clone(), tx.clone());
            // Draining both pipes for the whole run keeps the child from blocking on a full pipe.
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if line.contains(marker) {
                        let _ = tx.send(line.clone());
                    }
                    let mut kept = lines.lock().unwrap_or_else(PoisonError::into_inner);
                    if kept.len() == KEPT_LINES {
                        kept.pop_front();
                    }
                    kept.push_back(line);
                }
            });
        }
        drop(tx);
        let proc = Proc { child, name, lines };
        match rx.recv_timeout(limit) {
            Ok(line) => Ok((proc, line)),
            Err(_) => Err(format!("{name} did not start; output:\n{}", proc.output()).into()),
        }
    }

    /// Its process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its last output lines.
    pub(crate) fn output(&self) -> String {
        let kept = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        kept.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Asks it to stop (`SIGTERM`, through `kill`) and waits up to `limit` for it to exit.
    pub(crate) fn terminate(&mut self, limit: Duration) -> Result<(), BoxError> {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()?;
        if !status.success() {
            return Err(format!("kill -TERM {} failed: {status}", self.name).into());
        }
        let deadline = std::time::Instant::now() + limit;
        while self.child.try_wait()?.is_none() {
            if std::time::Instant::now() >= deadline {
                return Err(format!("{} did not exit within {limit:?}", self.name).into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Fails if the process has exited.
    pub(crate) fn check_alive(&mut self) -> Result<(), BoxError> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => Err(format!(
                "{} exited ({status}); output:\n{}",
                self.name,
                self.output()
            )
            .into()),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `mock-upstream` (recording off, its default) on an ephemeral port.
pub(crate) fn start_mock(bin_dir: &Path) -> Result<(Proc, SocketAddr), BoxError> {
    let mut cmd = Command::new(bin_dir.join("mock-upstream"));
    cmd.args(["--listen", "127.0.0.1:0"]);
    let (proc, line) = Proc::spawn(
        "mock-upstream",
        cmd,
        "mock-upstream listening on ",
        Duration::from_secs(30),
    )?;
    let addr = line
        .rsplit(' ')
        .next()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("no address in mock-upstream's line `{line}`"))?;
    Ok((proc, addr))
}

/// Starts the bare proxy (this executable re-run as `--serve-bare-proxy <upstream>`) in front of
/// `upstream` and returns it with the address from its `listening` line.
pub(crate) fn start_bare(upstream: SocketAddr) -> Result<(Proc, SocketAddr), BoxError> {
    start_bare_under(upstream, &[])
}

/// [`start_bare`], run by `wrapper` (a program and its arguments, e.g. valgrind's) when not empty.
pub(crate) fn start_bare_under(
    upstream: SocketAddr,
    wrapper: &[String],
) -> Result<(Proc, SocketAddr), BoxError> {
    let mut cmd = wrapped(wrapper, std::env::current_exe()?);
    cmd.arg(crate::bare::FLAG).arg(upstream.to_string());
    let (proc, line) = Proc::spawn(
        "bare-proxy",
        cmd,
        crate::bare::LISTENING,
        Duration::from_secs(10),
    )?;
    let addr = line
        .rsplit(' ')
        .next()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("no address in bare-proxy's line `{line}`"))?;
    Ok((proc, addr))
}

/// TPM of each upstream key. The gateway charges a request its prompt estimate (about bytes / 4)
/// plus `max_tokens` and the mock reports `body bytes / 4` as usage, so a `prompt40k` request
/// costs about 10,000 tokens: the three primary keys hold 1.2 M of them and refill 20,000 a
/// second. (`tpm` is a `u32` in the gateway's config.)
const KEY_TPM: u32 = 4_000_000_000;

/// TPM of the client key, the largest the config takes: 429,000 `prompt40k` requests, refilling
/// 7,100 a second. Gateway runs are a third of the matrix's time, so it would take a gateway
/// sustaining 34,000 of them a second through a default matrix (99 s) to be held back.
const CLIENT_TPM: u32 = u32::MAX;

/// The gateway config: one client key, one model with a two-target chain over two providers
/// (3 keys + 1 key) that both point at the mock, limits far above what the load can reach.
pub(crate) fn gateway_config(mock: SocketAddr, redis: Option<&str>) -> String {
    let state = redis.map_or_else(String::new, |url| {
        format!(
            "[state]\nbackend = \"redis\"\nredis_url = \"{url}\"\nkey_prefix = \"bench{}\"\n\n",
            std::process::id()
        )
    });
    state + &gateway_config_memory(mock)
}

fn gateway_config_memory(mock: SocketAddr) -> String {
    let base = format!("http://{mock}/v1");
    let key = |id: &str| {
        format!("{{ id = \"{id}\", secret = \"sk-{id}\", rpm = 1000000, tpm = {KEY_TPM} }}")
    };
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nlog_format = \"json\"\n\n\
         [[clients]]\nname = \"bench\"\nkey = \"tg-bench\"\n\
         rpm = 1000000000\ntpm = {CLIENT_TPM}\n\n\
         [[providers]]\nname = \"primary\"\nkind = \"openai\"\nbase_url = \"{base}\"\n\
         keys = [{}, {}, {}]\n\n\
         [[providers]]\nname = \"secondary\"\nkind = \"openai\"\nbase_url = \"{base}\"\n\
         keys = [{}]\n\n\
         [[providers]]\nname = \"anthropic\"\nkind = \"anthropic\"\nbase_url = \"{base}\"\n\
         keys = [{}]\n\n\
         [[models]]\nname = \"bench-model\"\n\
         targets = [{{ provider = \"primary\" }}, {{ provider = \"secondary\" }}]\n\n\
         [[models]]\nname = \"bench-claude\"\ntargets = [{{ provider = \"anthropic\" }}]\n",
        key("p1"),
        key("p2"),
        key("p3"),
        key("s1"),
        key("a1"),
    )
}

/// Starts `tollgate` with `config` and returns it with the address from its `listening` log line.
///
/// `RUST_LOG` keeps only the crate root's startup lines at info (the address is logged there);
/// everything per request is at warn, so logging does not dominate the profile.
pub(crate) fn start_gateway(bin_dir: &Path, config: &Path) -> Result<(Proc, SocketAddr), BoxError> {
    start_gateway_under(bin_dir, config, &[])
}

/// [`start_gateway`], run by `wrapper` (a program and its arguments) when not empty.
pub(crate) fn start_gateway_under(
    bin_dir: &Path,
    config: &Path,
    wrapper: &[String],
) -> Result<(Proc, SocketAddr), BoxError> {
    let mut cmd = wrapped(wrapper, bin_dir.join("tollgate"));
    cmd.arg("--config")
        .arg(config)
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_API_KEYS")
        .env_remove("TOLLGATE_CONFIG")
        .env(
            "RUST_LOG",
            "warn,tollgate=info,tollgate::server=warn,tollgate::dispatch=warn",
        )
        .env("TOLLGATE_SERVER__LOG_FORMAT", "json");
    let (proc, line) = Proc::spawn(
        "tollgate",
        cmd,
        "\"message\":\"listening\"",
        Duration::from_secs(30),
    )?;
    let log: serde_json::Value = serde_json::from_str(&line)?;
    let addr = log
        .get("addr")
        .and_then(|a| a.as_str())
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("no address in tollgate's line `{line}`"))?;
    Ok((proc, addr))
}

/// `program`, or `wrapper` running it (`wrapper[0]` with the rest of `wrapper` first).
fn wrapped(wrapper: &[String], program: PathBuf) -> Command {
    match wrapper.split_first() {
        None => Command::new(program),
        Some((first, rest)) => {
            let mut cmd = Command::new(first);
            cmd.args(rest).arg(program);
            cmd
        }
    }
}

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`, else 100).
pub(crate) fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// Reads `utime + stime` of a process in clock ticks (`pid` 0 means this process).
pub(crate) fn cpu_ticks(pid: u32) -> Result<u64, BoxError> {
    let path = if pid == 0 {
        "/proc/self/stat".to_owned()
    } else {
        format!("/proc/{pid}/stat")
    };
    let stat = std::fs::read_to_string(path)?;
    // The command name may contain spaces; the fields after its closing parenthesis do not.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or("bad stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After `)`: state is field 3, so utime (14) and stime (15) are at indices 11 and 12.
    let field = |i: usize| -> Result<u64, BoxError> {
        Ok(fields.get(i).ok_or("short stat")?.parse::<u64>()?)
    };
    Ok(field(11)? + field(12)?)
}

/// Resident memory of a process in KiB: (current `VmRSS`, peak `VmHWM`).
pub(crate) fn rss_kib(pid: u32) -> Result<(u64, u64), BoxError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64, BoxError> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .ok_or_else(|| format!("no {name} in /proc/{pid}/status"))?;
        let kib = line[name.len()..].trim().trim_end_matches("kB").trim();
        Ok(kib.parse()?)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Resets the process's peak RSS (`VmHWM`) to its current RSS; false when the kernel refuses.
pub(crate) fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// What `git CMD` prints in the workspace, when it succeeds (for the facts of a run).
pub(crate) fn git(cmd: &[&str]) -> Option<String> {
    Command::new("git")
        .args(cmd)
        .current_dir(workspace())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_limits_hold_hundreds_of_thousands_of_prompt40k_requests() {
        // The gateway's estimate and the mock's usage are both about bytes / 4, plus max_tokens.
        let tokens = crate::codex_turn::prompt40k_body().len() as u64 / 4 + 16;
        assert!(u64::from(CLIENT_TPM) / tokens >= 400_000, "{tokens}");
        assert!(3 * u64::from(KEY_TPM) / tokens >= 1_000_000, "{tokens}");
        let config = gateway_config(SocketAddr::from(([127, 0, 0, 1], 9)), None);
        assert!(
            config.contains(&format!("tpm = {CLIENT_TPM}\n")),
            "{config}"
        );
        assert!(config.contains(&format!("tpm = {KEY_TPM} }}")), "{config}");
    }
}
