//! The image as CI builds it: `tollgate:ci`, deploy/Dockerfile's `prebuilt` target holding this
//! commit's release binaries (.ci/run builds it with buildah; no container daemon is needed).
//! A working container of it runs the image's entrypoint and command as the image's user
//! (chroot isolation, the host's network) with the image's own config pointed at a fake
//! upstream on the host; a request passes through it to that upstream, the image's HEALTHCHECK
//! command succeeds inside it, and what a user relies on is checked: uid 10001, the CA store,
//! the config at /etc/tollgate/tollgate.toml, the exposed ports, the entrypoint and command.
//!
//! Without buildah or the image these tests print `SKIPPED: ...` and pass, unless
//! `TOLLGATE_REQUIRE_IMAGE=1` (set by .ci/run), which makes that a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;
use tollgate_e2e::container::{self, buildah_ok, Container, Running, REQUIRE_IMAGE};
use tollgate_e2e::provision::or_skip;

/// The image .ci/run builds.
const IMAGE: &str = "tollgate:ci";
const CONFIG: &str = "/etc/tollgate/tollgate.toml";

fn image_config() -> Option<Value> {
    or_skip(
        container::image_config(IMAGE),
        &format!("the image {IMAGE}"),
        REQUIRE_IMAGE,
    )
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

#[test]
fn image_runs_unprivileged_with_the_documented_entrypoint_config_and_ports() {
    let Some(config) = image_config() else {
        return;
    };
    let size = buildah_ok(&["images", "--format", "{{.Size}}", IMAGE]);
    println!("image {IMAGE}: {}", size.trim());

    // The image's config: what `docker run tollgate` does (README, Deploying).
    assert_eq!(config["User"], "10001:10001", "the image's USER");
    assert_eq!(strings(&config["Entrypoint"]), ["tollgate"]);
    assert_eq!(strings(&config["Cmd"]), ["--config", CONFIG]);
    for port in ["8080/tcp", "9090/tcp"] {
        assert!(
            config["ExposedPorts"].get(port).is_some(),
            "{port} is not exposed: {}",
            config["ExposedPorts"]
        );
    }
    assert!(
        strings(&config["Env"]).contains(&"TOLLGATE_SERVER__LISTEN=0.0.0.0:8080"),
        "{}",
        config["Env"]
    );
    assert_eq!(
        strings(&config["Healthcheck"]["Test"]),
        [
            "CMD",
            "tollgate",
            "healthcheck",
            "http://127.0.0.1:8080/healthz"
        ],
        "the HEALTHCHECK probes the port the image listens on"
    );

    // Inside, as the image's user.
    let ctr = Container::new(IMAGE);
    assert_eq!(ctr.exec_ok(&["id", "-u"]).trim(), "10001");
    assert_eq!(ctr.exec_ok(&["id", "-g"]).trim(), "10001");
    ctr.exec_ok(&["test", "-s", "/etc/ssl/certs/ca-certificates.crt"]);
    let shipped =
        std::fs::read_to_string(tollgate_e2e::workspace().join("deploy/docker/tollgate.toml"))
            .unwrap();
    assert_eq!(
        ctr.exec_ok(&["cat", CONFIG]),
        shipped,
        "{CONFIG} is deploy/docker/tollgate.toml"
    );
    // The user runs the binaries and reads the config, and can change none of them.
    for (path, can) in [
        ("/usr/local/bin/tollgate", "-x"),
        ("/usr/local/bin/mock-upstream", "-x"),
        (CONFIG, "-r"),
    ] {
        ctr.exec_ok(&["test", can, path]);
        ctr.exec_ok(&["test", "!", "-w", path]);
    }
    let version = ctr.exec(&["tollgate", "--version"]);
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("tollgate {}", env!("CARGO_PKG_VERSION"))
    );
}

/// The client key the test's gateway requires.
const CLIENT_KEY: &str = "image-test-client-key-0123456789abcdef";

/// Two distinct loopback ports free a moment ago (both held while the second is found, so they
/// differ).
fn free_ports() -> (u16, u16) {
    let bind = || std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (a, b) = (bind(), bind());
    let port = |l: &std::net::TcpListener| l.local_addr().unwrap().port();
    (port(&a), port(&b))
}

/// The image's entrypoint and command run as its user, with the image's own config mounted
/// over itself (as the Dockerfile tells users to mount theirs) but for the provider's
/// `base_url`, pointed at `upstream`. It listens on free loopback ports, not the image's 8080
/// and 9090, so that parallel tests and other servers cannot collide with it.
fn start_gateway(ctr: &Container, config: &Value, upstream: &str) -> (Running, u16, u16) {
    let shipped = ctr.exec_ok(&["cat", CONFIG]);
    let openai = "base_url = \"https://api.openai.com/v1\"";
    assert_eq!(shipped.matches(openai).count(), 1, "{CONFIG}: {shipped}");
    let mounted =
        tollgate_e2e::write_config(&shipped.replace(openai, &format!("base_url = \"{upstream}\"")));
    let (port, admin) = free_ports();
    let mut opts = vec![
        "--volume".to_owned(),
        format!("{}:{CONFIG}:ro", mounted.display()),
    ];
    for env in [
        "OPENAI_API_KEY=sk-image-test".to_owned(),
        format!("TOLLGATE_CLIENT_KEY={CLIENT_KEY}"),
        format!("TOLLGATE_SERVER__LISTEN=127.0.0.1:{port}"),
        format!("TOLLGATE_SERVER__ADMIN_LISTEN=127.0.0.1:{admin}"),
    ] {
        opts.extend(["--env".to_owned(), env]);
    }
    let argv: Vec<String> = strings(&config["Entrypoint"])
        .into_iter()
        .chain(strings(&config["Cmd"]))
        .map(str::to_owned)
        .collect();
    (Running::spawn(ctr.run(&opts, &argv)), port, admin)
}

async fn wait_ready(gateway: &mut Running, http: &reqwest::Client, port: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = gateway.exited() {
            panic!(
                "the image's gateway exited ({status}):\n{}",
                gateway.output()
            );
        }
        let ready = http
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await;
        if ready.is_ok_and(|r| r.status() == 200) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the image's gateway never became ready:\n{}",
            gateway.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The HEALTHCHECK's command with its URL moved to the test gateway's `port`.
fn healthcheck_on(config: &Value, port: u16) -> Vec<String> {
    let test = strings(&config["Healthcheck"]["Test"]);
    assert_eq!(test[0], "CMD", "HEALTHCHECK in exec form: {test:?}");
    test[1..]
        .iter()
        .map(|a| a.replace("127.0.0.1:8080", &format!("127.0.0.1:{port}")))
        .collect()
}

#[tokio::test]
async fn image_serves_a_request_through_its_entrypoint_and_passes_its_healthcheck() {
    let Some(config) = image_config() else {
        return;
    };
    let ctr = Container::new(IMAGE);
    let upstream = tollgate_e2e::mock().await;
    let (mut gateway, port, admin) = start_gateway(&ctr, &config, &upstream.base_url());
    let http = reqwest::Client::new();
    wait_ready(&mut gateway, &http, port).await;
    let url = |p: u16, path: &str| format!("http://127.0.0.1:{p}{path}");

    // A request through it reaches the fake upstream with the provider's key.
    let chat = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    let resp = http
        .post(url(port, "/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .json(&chat)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", gateway.output());
    assert_eq!(resp.headers()["x-tollgate-provider"], "openai");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion", "{body}");
    assert_eq!(body["model"], "gpt-4o-mini");
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].key.as_deref(), Some("sk-image-test"));
    // The image's config requires the client key.
    let refused = http
        .post(url(port, "/v1/chat/completions"))
        .json(&chat)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(upstream.requests().len(), 1);
    // Metrics on the admin listener (the image's 9090).
    let metrics = http.get(url(admin, "/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    let metrics = metrics.text().await.unwrap();
    assert!(metrics.contains("tollgate_requests_total"), "{metrics}");

    // The HEALTHCHECK's command, run inside the container beside the gateway.
    let check = healthcheck_on(&config, port);
    let out = ctr.run(&[], &check).output().unwrap();
    assert!(
        out.status.success(),
        "HEALTHCHECK {check:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    // Stopped as a container is (SIGTERM to the gateway), it ends cleanly, and the same
    // healthcheck then fails.
    let pid = gateway.pid_of("tollgate").expect("the gateway's process");
    drop(http);
    let sent = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let exit = gateway.wait(Duration::from_secs(40));
    assert!(
        exit.is_some_and(|s| s.success()),
        "after SIGTERM: {exit:?}\n{}",
        gateway.output()
    );
    let out = ctr.run(&[], &check).output().unwrap();
    assert!(
        !out.status.success(),
        "HEALTHCHECK {check:?} passed with no gateway"
    );
}
