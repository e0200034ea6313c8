//! Containers of a locally built image, through buildah (no daemon): a working container made
//! from the image and removed on drop, commands run in it as the image's user with chroot
//! isolation on the host's network, and long-running ones stopped on drop, test failure or not.
//!
//! When buildah or the image is missing, [`image_config`] says why; `provision::or_skip` turns
//! that into a `SKIPPED` line, or a failure under `TOLLGATE_REQUIRE_IMAGE=1` (set by `.ci/run`).

use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Set to `1` to fail, not skip, when buildah or the image is missing (meant for CI).
pub const REQUIRE_IMAGE: &str = "TOLLGATE_REQUIRE_IMAGE";

fn buildah(args: &[&str]) -> Output {
    Command::new("buildah")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run buildah")
}

/// Runs buildah, fails the test unless it succeeds; what it printed.
pub fn buildah_ok(args: &[&str]) -> String {
    let out = buildah(args);
    assert!(
        out.status.success(),
        "buildah {}: {}\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The Docker config of `image` in buildah's storage (`buildah inspect`: User, Env, Entrypoint,
/// Cmd, ExposedPorts, Healthcheck), or why it cannot be had.
pub fn image_config(image: &str) -> Result<Value, String> {
    let found = Command::new("buildah")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        return Err("buildah is not installed (apt-get install buildah)".into());
    }
    let out = buildah(&["inspect", "--type", "image", image]);
    if !out.status.success() {
        return Err(format!(
            "no image {image} in buildah's storage (.ci/run builds it)"
        ));
    }
    let inspect: Value = serde_json::from_slice(&out.stdout).unwrap();
    Ok(inspect["Docker"]["config"].clone())
}

/// A working container of an image, removed on drop.
pub struct Container {
    name: String,
}

impl Container {
    /// A working container of `image`, which must be in local storage (never pulled).
    pub fn new(image: &str) -> Container {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "tollgate-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        buildah_ok(&["from", "--quiet", "--pull=never", "--name", &name, image]);
        Container { name }
    }

    /// `buildah run` of `cmd` as the image's user, with `opts` (`--env`, `--volume`...).
    pub fn run(&self, opts: &[String], cmd: &[String]) -> Command {
        let mut c = Command::new("buildah");
        c.args(["run", "--isolation", "chroot"])
            .args(opts)
            .arg(&self.name)
            .arg("--")
            .args(cmd)
            .stdin(Stdio::null());
        c
    }

    /// Runs `cmd` to its end; its output.
    pub fn exec(&self, cmd: &[&str]) -> Output {
        let cmd: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
        self.run(&[], &cmd).output().expect("run buildah run")
    }

    /// Runs `cmd`, fails the test unless it succeeds; its standard output.
    pub fn exec_ok(&self, cmd: &[&str]) -> String {
        let out = self.exec(cmd);
        assert!(
            out.status.success(),
            "{cmd:?} in the container: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = buildah(&["rm", &self.name]);
    }
}

/// A `buildah run` in a process group of its own, its output collected; stopped on drop.
pub struct Running {
    child: Child,
    output: Arc<Mutex<Vec<String>>>,
}

impl Running {
    /// Starts `cmd` (from [`Container::run`]).
    pub fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn buildah run");
        let output = Arc::new(Mutex::new(Vec::new()));
        let pipes: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().unwrap()),
            Box::new(child.stderr.take().unwrap()),
        ];
        for pipe in pipes {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    output.lock().unwrap().push(line);
                }
            });
        }
        Running { child, output }
    }

    /// Everything it printed so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }

    /// Its exit status, if it has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits up to `limit` for it to end.
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if tokio::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The pid of the process named `comm` in its group (buildah, its chroot helper and what
    /// runs inside all stay in the group).
    pub fn pid_of(&self, comm: &str) -> Option<u32> {
        let group = self.child.id();
        std::fs::read_dir("/proc")
            .ok()?
            .flatten()
            .find_map(|entry| {
                let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
                let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
                // pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses.
                let (open, close) = (stat.find('(')?, stat.rfind(')')?);
                let pgrp: u32 = stat[close + 1..].split_whitespace().nth(2)?.parse().ok()?;
                (pgrp == group && &stat[open + 1..close] == comm).then_some(pid)
            })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        // Asked to stop, buildah ends what it runs; the group's kill catches anything left
        // behind had it not.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        if self.wait(Duration::from_secs(10)).is_none() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.child.id())])
                .status();
            let _ = self.child.wait();
        }
    }
}
