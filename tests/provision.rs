//! Optional test tools installed under `target/` on first use (the openai SDK's virtualenv,
//! Codex CLI's npm prefix), shared by every test process, and the rule for when they are
//! missing: skip with a `SKIPPED` line, or fail when an environment variable (set by `.ci/run`)
//! says the tool is required.
//!
//! nextest runs each test in its own process, so processes coordinate through a lock file
//! beside the install directory: one installs while the others wait, and a waiter adopts the
//! installer's failure instead of repeating a download that just failed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

/// The cargo target directory of the running test (`target/<profile>/deps/<test>` → `target`).
pub fn target_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("test exe path: {e}"))?;
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .ok_or_else(|| "no target dir above the test exe".to_owned())
}

/// What `ready` finds in `dir`, installing it first with `install` when `ready` finds nothing.
///
/// `ready` must be cheap and side-effect free: it runs before and after every wait. `install`
/// runs in at most one process at a time; when it fails, its reason is kept beside `dir` (as
/// `<dir>.error`) for the processes that waited on it.
pub fn provision<T>(
    dir: &Path,
    ready: impl Fn() -> Option<T>,
    install: impl Fn() -> Result<(), String>,
) -> Result<T, String> {
    let lock = dir.with_extension("lock");
    let error_file = dir.with_extension("error");
    loop {
        if let Some(found) = ready() {
            return Ok(found);
        }
        if take_lock(&lock)? {
            // Another process may have finished between our check and taking the lock.
            let result = match ready() {
                Some(found) => Ok(found),
                None => install().and_then(|()| {
                    ready().ok_or_else(|| {
                        format!(
                            "the install in {} reported success but left nothing usable",
                            dir.display()
                        )
                    })
                }),
            };
            match &result {
                Ok(_) => _ = std::fs::remove_file(&error_file),
                Err(reason) => _ = std::fs::write(&error_file, reason),
            }
            let _ = std::fs::remove_file(&lock);
            return result;
        }
        let since = SystemTime::now();
        wait_for_release(&lock)?;
        if let Some(found) = ready() {
            return Ok(found);
        }
        let fresh = std::fs::metadata(&error_file)
            .and_then(|m| m.modified())
            .is_ok_and(|at| at >= since);
        if fresh {
            let reason = std::fs::read_to_string(&error_file).unwrap_or_default();
            return Err(format!("(from a concurrent attempt) {reason}"));
        }
        // The holder died or gave up without a verdict: try ourselves.
    }
}

/// Creates the lock file holding our pid; `false` when another live process holds it.
fn take_lock(lock: &Path) -> Result<bool, String> {
    use std::io::Write;
    if let Some(parent) = lock.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("create {}: {e}", parent.display()))?;
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(lock)
    {
        Ok(mut file) => {
            write!(file, "{}", std::process::id())
                .map_err(|e| format!("write {}: {e}", lock.display()))?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if lock_is_stale(lock) {
                let _ = std::fs::remove_file(lock);
            }
            Ok(false)
        }
        Err(e) => Err(format!("create {}: {e}", lock.display())),
    }
}

/// A lock whose holder is gone (killed mid-install), or that never got a pid.
fn lock_is_stale(lock: &Path) -> bool {
    match std::fs::read_to_string(lock).map(|s| s.trim().parse::<u32>()) {
        Ok(Ok(pid)) => !Command::new("kill")
            .args(["-0", &pid.to_string()])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
        Ok(Err(_)) => std::fs::metadata(lock)
            .and_then(|m| m.modified())
            .is_ok_and(|at| at.elapsed().unwrap_or_default() > Duration::from_secs(30)),
        Err(_) => false,
    }
}

/// Waits (polling: the holder is another process) until the lock file is gone.
fn wait_for_release(lock: &Path) -> Result<(), String> {
    for _ in 0..(15 * 60 * 4) {
        if !lock.exists() {
            return Ok(());
        }
        if lock_is_stale(lock) {
            let _ = std::fs::remove_file(lock);
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Err(format!(
        "waited 15 minutes for another test process to finish installing ({} still exists)",
        lock.display()
    ))
}

/// Runs one install step; its output becomes the error when it fails.
pub fn run_step(mut cmd: Command, what: &str) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// The provisioned tool, or `None` after printing `SKIPPED: <what> unavailable: <reason>`;
/// panics with the reason instead when the environment variable `require` is `1`.
pub fn or_skip<T>(result: Result<T, String>, what: &str, require: &str) -> Option<T> {
    match result {
        Ok(found) => Some(found),
        Err(reason) if std::env::var(require).as_deref() == Ok("1") => {
            panic!("{require}=1 but {what} is unavailable: {reason}")
        }
        Err(reason) => {
            eprintln!("SKIPPED: {what} unavailable: {reason}");
            None
        }
    }
}
