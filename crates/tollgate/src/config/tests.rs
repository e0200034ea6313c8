#![allow(
    clippy::result_large_err,
    reason = "figment::Jail closures return figment::Error"
)]
use super::*;
use figment::Jail;
use std::path::PathBuf;

fn sources(path: &str) -> Sources {
    Sources {
        path: Some(PathBuf::from(path)),
        ..Sources::default()
    }
}

#[test]
fn zero_config_uses_openai_api_keys() {
    Jail::expect_with(|jail| {
        jail.set_env("OPENAI_API_KEYS", "sk-a, sk-b");
        jail.set_env("TOLLGATE_UPSTREAM_URL", "http://localhost:8000/v1/");
        let settings = Config::load(&Sources::default())
            .unwrap()
            .validate()
            .unwrap();
        let p = &settings.providers[0];
        assert_eq!(p.base_url, "http://localhost:8000/v1");
        assert!(p.default);
        let secrets: Vec<&str> = p.keys.iter().map(|k| k.secret.expose()).collect();
        assert_eq!(secrets, ["sk-a", "sk-b"]);
        assert_eq!(settings.default_provider, Some(0));
        Ok(())
    });
}

#[test]
fn file_then_env_then_listen_flag() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "t.toml",
            r#"
            [server]
            listen = "127.0.0.1:1"
            request_timeout = "30s"
            [[providers]]
            name = "p"
            kind = "openai"
            base_url = "http://x/v1"
            keys = [{ id = "a", secret = "${MY_KEY}" }]
            "#,
        )?;
        jail.set_env("MY_KEY", "sk-file");
        jail.set_env("TOLLGATE_SERVER__REQUEST_TIMEOUT", "45s");
        let settings = Config::load(&sources("t.toml"))
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(
            settings.server.request_timeout,
            std::time::Duration::from_secs(45)
        );
        assert_eq!(settings.server.listen.port(), 1);
        assert_eq!(settings.providers[0].keys[0].secret.expose(), "sk-file");
        let flagged = Sources {
            listen: Some("127.0.0.1:2".into()),
            ..sources("t.toml")
        };
        assert_eq!(
            Config::load(&flagged)
                .unwrap()
                .validate()
                .unwrap()
                .server
                .listen
                .port(),
            2
        );
        Ok(())
    });
}

#[test]
fn numeric_secret_from_env_stays_a_string() {
    Jail::expect_with(|jail| {
        jail.create_file("t.toml", "[[providers]]\nname = \"p\"\nbase_url = \"http://x\"\nkeys = [{ id = \"a\", secret = \"${K}\" }]\n")?;
        jail.set_env("K", "007");
        let settings = Config::load(&sources("t.toml"))
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(settings.providers[0].keys[0].secret.expose(), "007");
        Ok(())
    });
}

#[test]
fn missing_file_is_an_error() {
    Jail::expect_with(|_| {
        let err = Config::load(&sources("nope.toml")).unwrap_err();
        assert!(
            err.to_string().contains("nope.toml does not exist"),
            "{err}"
        );
        Ok(())
    });
}

#[test]
fn unknown_fields_are_errors() {
    Jail::expect_with(|jail| {
        jail.create_file("t.toml", "[server]\nlisten_on = \"x\"\n")?;
        let err = Config::load(&sources("t.toml")).unwrap_err();
        assert!(err.to_string().contains("listen_on"), "{err}");
        Ok(())
    });
}

#[test]
fn every_problem_is_reported_with_its_path() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "t.toml",
            r#"
            [server]
            request_timeout = "soon"
            [[providers]]
            name = "a"
            base_url = "http://a"
            keys = [{ id = "k", secret = "x" }]
            [[providers]]
            name = "b"
            kind = "gemini"
            base_url = "ftp://b"
            keys = [{ id = "k", secret = "${OPENAI_KEY_B_UNSET}" }]
            [[models]]
            name = "m"
            targets = [{ provider = "nobody" }]
            "#,
        )?;
        let problems = Config::load(&sources("t.toml"))
            .unwrap()
            .validate()
            .unwrap_err()
            .problems;
        let expected = [
            "server.request_timeout: is not a duration (e.g. \"250ms\", \"30s\", \"10m\")",
            "providers[1].kind: is not one of openai, azure, anthropic",
            "providers[1].base_url: is not an http(s) URL (it must start with http:// or https://)",
            "providers[1].keys[0].secret: environment variable OPENAI_KEY_B_UNSET is not set",
            "models[0].targets[0].provider: is not the name of a configured provider (one of a, b)",
        ];
        for e in expected {
            assert!(
                problems.iter().any(|p| p.starts_with(e)),
                "missing {e:?} in {problems:#?}"
            );
        }
        assert_eq!(problems.len(), expected.len(), "{problems:#?}");
        Ok(())
    });
}

#[test]
fn problems_name_the_key_and_what_is_expected_never_the_value() {
    // A secret pasted into the wrong field, or a long hostile string: never printed back.
    const V: &str = "sk-live-SECRET-0123456789";
    let toml = format!(
        r#"
        [server]
        listen = "{V}"
        admin_listen = "{V}"
        request_timeout = "{V}"
        max_body = "{V}"
        max_event = "{V}"
        log_format = "{V}"
        [state]
        backend = "{V}"
        [[providers]]
        name = "a"
        kind = "{V}"
        base_url = "{V}"
        keys = [{{ id = "k", secret = "x" }}, {{ id = "k", secret = "y" }}]
        [[providers]]
        name = "a"
        base_url = "http://b/v1"
        keys = [{{ id = "k", secret = "${{{V}}}" }}]
        [[models]]
        name = "m"
        targets = [{{ provider = "{V}" }}]
        [[models]]
        name = "m"
        targets = [{{ provider = "a" }}]
        [[clients]]
        name = "c"
        key = "tg-1"
        [[clients]]
        name = "c"
        key = "tg-2"
        "#
    );
    let mut problems = Config::from_toml(&toml)
        .unwrap()
        .validate_with(&|_| None)
        .unwrap_err()
        .problems;
    for p in &problems {
        assert!(!p.contains("SECRET"), "{p}");
    }
    problems.sort();
    let mut expected = [
        "server.listen: is not an IP address and port like 0.0.0.0:8080",
        "server.admin_listen: is not an IP address and port like 0.0.0.0:8080",
        "server.request_timeout: is not a duration (e.g. \"250ms\", \"30s\", \"10m\")",
        "server.max_body: is not a size (e.g. \"32MiB\")",
        "server.max_event: is not a size above zero (e.g. \"16MiB\")",
        "server.log_format: is not one of json, pretty",
        "state.backend: is not one of memory, redis",
        "clients[1].name: is the name of clients[0] too",
        "providers[0].kind: is not one of openai, azure, anthropic",
        "providers[0].base_url: is not an http(s) URL (it must start with http:// or https://)",
        "providers[0].keys[1].id: is the id of providers[0].keys[0] too",
        "providers[1].name: is the name of providers[0] too",
        "providers[1].keys[0].secret: the environment variable named in ${…} is not set (its \
         name is not shown: only names of capitals, digits and _ are)",
        "models[0].targets[0].provider: is not the name of a configured provider (one of a)",
        "models[1].name: is the name of models[0] too",
    ];
    expected.sort_unstable();
    assert_eq!(problems, expected);
}

#[test]
fn numbers_that_refuse_everything_overflow_or_contradict_each_other_are_refused() {
    let toml = r#"
        [server]
        request_timeout = "10000000000000000000s"
        header_timeout = "0s"
        [retry]
        base_delay = "30s"
        max_delay = "20s"
        cooldown_default = "10m"
        cooldown_max = "5m"
        [[providers]]
        name = "p"
        base_url = "http://p/v1"
        keys = [{ id = "a", secret = "sk", rpm = 0 }, { id = "b", secret = "sk", rpm = 1, tpm = 0 }]
        [[clients]]
        name = "c"
        key = "tg-c"
        rpm = 0
        tpm = 0
    "#;
    let problems = Config::from_toml(toml)
        .unwrap()
        .validate_with(&|_| None)
        .unwrap_err()
        .problems;
    let zero = "must be at least 1 (leave it out for no limit)";
    let expected = [
        "server.request_timeout: is longer than a year".to_owned(),
        "server.header_timeout: must be longer than zero".to_owned(),
        "retry.base_delay: must not be longer than retry.max_delay".to_owned(),
        "retry.cooldown_default: must not be longer than retry.cooldown_max".to_owned(),
        format!("clients[0].rpm: {zero}"),
        format!("clients[0].tpm: {zero}"),
        format!("providers[0].keys[0].rpm: {zero}"),
        format!("providers[0].keys[1].tpm: {zero}"),
    ];
    assert_eq!(problems, expected);
    let fixed = toml
        .replace("10000000000000000000s", "8760h")
        .replace("\"30s\"", "\"20s\"")
        .replace("\"10m\"", "\"5m\"")
        .replace("\"0s\"", "\"1s\"")
        .replace("= 0", "= 1");
    let settings = Config::from_toml(&fixed)
        .unwrap()
        .validate_with(&|_| None)
        .unwrap();
    assert_eq!(
        settings.retry.base_delay, settings.retry.max_delay,
        "equal is fine"
    );
    assert_eq!(settings.providers[0].keys[1].tpm, Some(1));
    assert_eq!(
        settings.server.header_timeout,
        std::time::Duration::from_secs(1)
    );
    let defaults = Config::from_toml(&fixed.replace("header_timeout = \"1s\"", ""))
        .unwrap()
        .validate_with(&|_| None)
        .unwrap();
    assert_eq!(
        defaults.server.header_timeout,
        std::time::Duration::from_secs(10)
    );
}

#[test]
fn workers_default_to_one_per_cpu_packed_and_bounded() {
    let with = |workers: &str| {
        Config::from_toml(&format!(
            "[server]\n{workers}\n[[providers]]\nname = \"p\"\nbase_url = \"http://p/v1\"\nkeys = [{{ id = \"a\", secret = \"sk\" }}]\n"
        ))
        .unwrap()
        .validate_with(&|_| None)
    };
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    assert_eq!(with("").unwrap().server.workers, cpus);
    assert_eq!(with("workers = 0").unwrap().server.workers, cpus);
    assert_eq!(with("workers = 3").unwrap().server.workers, 3);
    assert_eq!(
        with("workers = 257").unwrap_err().problems,
        ["server.workers: is more than 256 (0: one per CPU)"]
    );
    assert!(with("").unwrap().server.pack_workers);
    assert!(!with("pack_workers = false").unwrap().server.pack_workers);
}

#[test]
fn resolved_config_never_shows_secrets() {
    Jail::expect_with(|jail| {
        jail.set_env("OPENAI_API_KEY", "sk-very-secret");
        let settings = Config::load(&Sources::default())
            .unwrap()
            .validate()
            .unwrap();
        let shown = format!("{} {settings:?}", serde_json::to_string(&settings).unwrap());
        assert!(!shown.contains("sk-very-secret"));
        assert!(shown.contains("***"));
        Ok(())
    });
}

#[test]
fn example_configs_parse() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let config = Config::load(&Sources {
                path: Some(path.clone()),
                ..Sources::default()
            })
            .unwrap();
            config
                .validate_with(&|_| Some("sk-example".into()))
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(seen > 0);
}

#[test]
fn client_keys_may_be_given_as_sha256() {
    let toml = r#"
        [[providers]]
        name = "p"
        base_url = "http://p/v1"
        keys = [{ id = "k", secret = "sk" }]
        [[clients]]
        name = "hashed"
        key_sha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        [[clients]]
        name = "both"
        key = "x"
        key_sha256 = "00"
    "#;
    let problems = Config::from_toml(toml)
        .unwrap()
        .validate_with(&|_| None)
        .unwrap_err()
        .problems;
    assert_eq!(
        problems,
        ["clients[1]: set exactly one of `key` and `key_sha256`"]
    );
    let ok = toml
        .split("[[clients]]\n        name = \"both\"")
        .next()
        .unwrap();
    let settings = Config::from_toml(ok)
        .unwrap()
        .validate_with(&|_| None)
        .unwrap();
    assert_eq!(
        settings.clients[0].key_sha256,
        crate::digest::sha256(b"abc")
    );
}

/// A one-provider config whose key line is `line`.
fn with_key_line(line: &str) -> String {
    format!("[server]\nlisten = \"127.0.0.1:1\"\n\n[[providers]]\nname = \"p\"\nbase_url = \"http://p/v1\"\n{line}\n")
}

#[test]
fn a_syntax_error_names_file_line_and_column_but_never_the_line() {
    let broken = [
        // (the key line, where the error is and what it says)
        (
            r#"keys = [{ id = "a", secret = "sk-live-123" } oops"#,
            "line 7, column 46: TOML syntax error: invalid array; expected `]`",
        ),
        (
            r#"keys = [{ id = "a", secret = "sk-live-123 }]"#,
            "line 7, column 45: TOML syntax error: invalid basic string",
        ),
        (
            r#"secret = "sk-live-123" = 1"#,
            "line 7, column 24: TOML syntax error: expected newline, `#`",
        ),
        (
            "keys = [{ id = \"a\", secret = \"sk-live-123\" }\n[admin]",
            "line 8, column 1: TOML syntax error: invalid array; expected `]`",
        ),
    ];
    for (line, expected) in broken {
        Jail::expect_with(|jail| {
            jail.create_file("t.toml", &with_key_line(line))?;
            let err = Config::load(&sources("t.toml")).unwrap_err();
            assert_eq!(err.problems, [format!("t.toml: {expected}")], "{line}");
            let from_string = Config::from_toml(&with_key_line(line)).unwrap_err();
            assert_eq!(from_string.problems, [format!("TOML string: {expected}")]);
            Ok(())
        });
    }
}

#[test]
fn a_value_of_the_wrong_type_is_named_by_kind_not_quoted() {
    let err = Config::from_toml(&with_key_line(r#"keys = "sk-live-123""#)).unwrap_err();
    let text = err.to_string();
    assert!(!text.contains("sk-live-123"), "{text}");
    assert!(text.contains("providers.0.keys"), "{text}");
    assert!(
        !text.contains("default."),
        "no internal profile prefix: {text}"
    );
    assert!(text.contains("found a string"), "{text}");
}

#[test]
fn secrets_from_the_environment_stay_the_strings_they_were() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "t.toml",
            &with_key_line(r#"keys = [{ id = "a", secret = "sk" }]"#),
        )?;
        jail.set_env("TOLLGATE_ADMIN__TOKEN", "000777");
        jail.set_env("TOLLGATE_RETRY__MAX_ATTEMPTS", "7");
        let config = Config::load(&sources("t.toml")).unwrap();
        assert_eq!(config.admin.token.as_ref().unwrap().expose(), "000777");
        let settings = config.validate().unwrap();
        assert_eq!(
            settings.admin_token_sha256,
            Some(crate::digest::sha256(b"000777"))
        );
        assert_eq!(settings.retry.max_attempts, 7, "other fields stay typed");
        jail.set_env("TOLLGATE_ADMIN__TOKEN", "true");
        let config = Config::load(&sources("t.toml")).unwrap();
        assert_eq!(config.admin.token.as_ref().unwrap().expose(), "true");
        Ok(())
    });
}

#[test]
fn open_mode_beyond_loopback_is_opted_into_by_file_env_or_flag() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "t.toml",
            &with_key_line(r#"keys = [{ id = "a", secret = "sk" }]"#),
        )?;
        let load = |s: &Sources| Config::load(s).unwrap().validate().unwrap().server.open;
        assert!(!load(&sources("t.toml")), "off by default");
        let flagged = Sources {
            open: true,
            ..sources("t.toml")
        };
        assert!(load(&flagged));
        jail.set_env("TOLLGATE_SERVER__OPEN", "true");
        assert!(load(&sources("t.toml")));
        jail.create_file(
            "open.toml",
            &with_key_line("keys = [{ id = \"a\", secret = \"sk\" }]")
                .replace("[server]\n", "[server]\nopen = true\n"),
        )?;
        jail.set_env("TOLLGATE_SERVER__OPEN", "false");
        assert!(
            !load(&sources("open.toml")),
            "the environment overrides the file"
        );
        Ok(())
    });
}

#[test]
fn egress_files_and_proxies_are_checked_and_never_printed() {
    let text = format!(
        "{}ca_file = \"/nonexistent/ca.pem\"\n[egress]\nproxy = \"socks5://user:hunter2@proxy:1080\"\n",
        with_key_line(r#"keys = [{ id = "a", secret = "sk-a" }]"#)
    );
    let problems = Config::from_toml(&text)
        .unwrap()
        .validate_with(&|_| None)
        .unwrap_err()
        .problems;
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("providers[0].ca_file: is not a readable PEM file")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("egress.proxy: must be an http:// URL")),
        "{problems:?}"
    );
    assert!(!problems.join("\n").contains("hunter2"), "{problems:?}");
    let ok = format!(
        "{}[egress]\nproxy = \"none\"\nno_proxy = \"internal.example\"\n",
        with_key_line(r#"keys = [{ id = "a", secret = "sk-a" }]"#)
    );
    let settings = Config::from_toml(&ok)
        .unwrap()
        .validate_with(&|_| None)
        .unwrap();
    assert!(matches!(settings.egress.proxy, super::Proxy::Off));
}
