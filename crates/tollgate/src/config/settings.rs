//! `validate()`: the user's `Config` checked as a whole into typed `Settings`, every problem
//! reported at once with its key path.

use super::access::{ClientSettings, LimitsSettings, StateSettings};
use super::secret::expand_env;
use super::{Config, ConfigError, Secret};
use crate::units::{parse_duration, parse_size};
use serde::Serialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

/// Most `server.workers` (threads serving the main listener).
const MAX_WORKERS: usize = 256;

/// The validated config the gateway runs on. Serializes with secrets as `***`.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Listeners, timeouts, limits.
    pub server: ServerSettings,
    /// Retry policy.
    pub retry: RetrySettings,
    /// Providers in config order; targets refer to them by index.
    pub providers: Vec<ProviderSettings>,
    /// Configured models in config order.
    pub models: Vec<ModelRoute>,
    /// Index of the provider that serves models not listed, if any.
    pub default_provider: Option<usize>,
    /// Token estimation and queueing.
    pub limits: LimitsSettings,
    /// Shared-state backend.
    pub state: StateSettings,
    /// Gateway clients; empty means open mode.
    pub clients: Vec<ClientSettings>,
    /// SHA-256 of the admin token; `None` turns `/admin/*` off.
    #[serde(skip)]
    pub admin_token_sha256: Option<[u8; 32]>,
    /// How often the config file is checked for changes (zero: never).
    #[serde(with = "secs")]
    pub watch_interval: Duration,
    /// How upstreams are reached.
    pub egress: super::EgressSettings,
    /// `[telemetry]` as the file has it (the `OTEL_*` variables are added at start).
    pub telemetry: super::TelemetrySettings,
    #[serde(skip)]
    /// Model name → route (FNV: the names are the config's; a lookup hashes the client's
    /// model on every request).
    model_index: fnv::FnvHashMap<String, usize>,
}

/// Validated `[server]`.
#[derive(Debug, Clone, Serialize)]
pub struct ServerSettings {
    /// Main listener.
    pub listen: SocketAddr,
    /// Separate listener for metrics and health, if any.
    pub admin_listen: Option<SocketAddr>,
    /// Whole-request deadline.
    #[serde(with = "secs")]
    pub request_timeout: Duration,
    /// Upstream connect timeout.
    #[serde(with = "secs")]
    pub connect_timeout: Duration,
    /// Time to a non-streamed answer's response headers.
    #[serde(with = "secs")]
    pub first_byte_timeout: Duration,
    /// Time to a stream's headers and first event.
    #[serde(with = "secs")]
    pub first_event_timeout: Duration,
    /// Longest silence inside a stream.
    #[serde(with = "secs")]
    pub idle_timeout: Duration,
    /// Drain time on shutdown.
    #[serde(with = "secs")]
    pub drain_timeout: Duration,
    /// Longest wait for a request's header block (and a connection's first bytes), above zero.
    #[serde(with = "secs")]
    pub header_timeout: Duration,
    /// Largest request body in bytes.
    pub max_body: usize,
    /// Largest event of a streamed answer, in bytes.
    pub max_event: usize,
    /// Logs as JSON (else human-readable).
    pub log_json: bool,
    /// Open mode (no clients) serves every peer, not only loopback ones.
    pub open: bool,
    /// Threads serving the main listener, at least 1 (`server.workers`, 0 resolved to the CPUs
    /// the process may use).
    pub workers: usize,
    /// Workers held on one core while they need less than one (`server.pack_workers`).
    pub pack_workers: bool,
}

/// Validated `[retry]`.
#[derive(Debug, Clone, Serialize)]
pub struct RetrySettings {
    /// Attempts per target, at least 1.
    pub max_attempts: u32,
    /// Route a session's requests to one key (see `RetryConfig::sticky_sessions`).
    pub sticky_sessions: bool,
    /// Requests with the same `user` are one session.
    pub sticky_user: bool,
    /// Backoff base.
    #[serde(with = "secs")]
    pub base_delay: Duration,
    /// Backoff cap.
    #[serde(with = "secs")]
    pub max_delay: Duration,
    /// Retry budget: share of the request rate.
    pub budget_percent: u32,
    /// Retry budget floor per second.
    pub budget_min_per_sec: u32,
    /// Retry budget window.
    #[serde(with = "secs")]
    pub budget_window: Duration,
    /// Cooldown when a 429 names no time.
    #[serde(with = "secs")]
    pub cooldown_default: Duration,
    /// Cooldown cap.
    #[serde(with = "secs")]
    pub cooldown_max: Duration,
    /// Wait before a disabled key is probed.
    #[serde(with = "secs")]
    pub probe_interval: Duration,
    /// When transient failures eject a key.
    #[serde(skip)]
    pub outlier: crate::key_pool::OutlierPolicy,
}

/// The kinds of upstream the gateway speaks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI or any OpenAI-compatible server.
    OpenAi,
    /// Azure OpenAI (deployment URLs, `api-key` header).
    Azure,
    /// Anthropic's Messages API, translated both ways.
    Anthropic,
}

/// A validated provider.
#[derive(Debug, Clone, Serialize)]
pub struct ProviderSettings {
    /// Name in routes, logs, metrics.
    pub name: String,
    /// Dialect.
    pub kind: ProviderKind,
    /// Base URL without a trailing slash.
    pub base_url: String,
    /// Azure `api-version`.
    pub api_version: Option<String>,
    /// Serves unlisted models.
    pub default: bool,
    /// Keys in config order.
    pub keys: Vec<KeySettings>,
    /// Certificate authorities trusted for this provider only.
    pub ca_file: Option<std::path::PathBuf>,
    /// How it serves the Responses API.
    pub responses: ResponsesMode,
    /// The `anthropic-beta` flags a Messages client may pass to it (`"*"`: every flag).
    pub anthropic_beta: Vec<String>,
}

/// How a provider serves `POST /v1/responses`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ResponsesMode {
    /// The upstream speaks the Responses API.
    Native,
    /// The request is translated to Chat Completions (and on to the provider's dialect), and
    /// the answer back.
    Chat,
}

/// A validated upstream key.
#[derive(Debug, Clone, Serialize)]
pub struct KeySettings {
    /// Public name of the key.
    pub id: String,
    /// The expanded secret.
    pub secret: Secret,
    /// Selection weight, at least 1.
    pub weight: u32,
    /// Declared requests per minute.
    pub rpm: Option<u32>,
    /// Declared tokens per minute.
    pub tpm: Option<u32>,
}

/// A configured model and its chain.
#[derive(Debug, Clone, Serialize)]
pub struct ModelRoute {
    /// The name clients send.
    pub name: String,
    /// Ordered targets.
    pub targets: Vec<TargetSettings>,
    /// Lower `max_tokens` to fit a target's context window instead of skipping it.
    pub fit_max_tokens: bool,
}

/// One target of a chain.
#[derive(Debug, Clone, Serialize)]
pub struct TargetSettings {
    /// Index into `Settings::providers`.
    pub provider: usize,
    /// Model (or deployment) name sent upstream.
    pub model: std::sync::Arc<str>,
    /// Declared context window.
    pub context_window: Option<u32>,
    /// `max_tokens` for Anthropic targets when the client names none.
    pub max_tokens: Option<u32>,
    /// The model takes a reasoning effort (translated requests carry one).
    pub reasoning: bool,
}

/// The configured providers' names, for a message about a name that is none of them.
fn provider_names(providers: &[ProviderSettings]) -> String {
    if providers.is_empty() {
        return "none configured".to_owned();
    }
    let mut names: Vec<&str> = Vec::with_capacity(providers.len());
    for p in providers {
        if !names.contains(&p.name.as_str()) {
            names.push(&p.name);
        }
    }
    format!("one of {}", names.join(", "))
}

mod secs {
    use serde::Serializer;
    use std::time::Duration;
    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", d.as_millis()))
    }
}

impl Settings {
    /// The position of a configured model in `models`.
    pub fn model_index(&self, name: &str) -> Option<usize> {
        self.model_index.get(name).copied()
    }

    /// The route of a configured model.
    pub fn model(&self, name: &str) -> Option<&ModelRoute> {
        self.model_index.get(name).map(|&i| &self.models[i])
    }
}

/// The longest duration the config accepts (365 days).
const LONGEST: Duration = Duration::from_secs(365 * 24 * 3600);

/// Collects problems while walking the config.
pub(super) struct Problems(pub(super) Vec<String>);

impl Problems {
    pub(super) fn push(&mut self, path: &str, msg: impl std::fmt::Display) {
        self.0.push(format!("{path}: {msg}"));
    }

    pub(super) fn duration(&mut self, path: &str, raw: &str) -> Duration {
        match parse_duration(raw) {
            // Every duration here is a timeout, an interval or a cap: none needs more than a
            // year, and a far larger one overflows the clock it is added to.
            Some(d) if d > LONGEST => {
                self.push(path, "is longer than a year");
                Duration::ZERO
            }
            Some(d) => d,
            None => {
                self.push(path, "is not a duration (e.g. \"250ms\", \"30s\", \"10m\")");
                Duration::ZERO
            }
        }
    }

    /// An RPM or TPM limit: absent means none, zero is refused (it would refuse everything
    /// in one store and nothing in the other).
    pub(super) fn per_minute(&mut self, path: &str, limit: Option<u32>) -> Option<u32> {
        if limit == Some(0) {
            self.push(path, "must be at least 1 (leave it out for no limit)");
        }
        limit
    }

    fn addr(&mut self, path: &str, raw: &str) -> SocketAddr {
        raw.parse().unwrap_or_else(|_| {
            self.push(path, "is not an IP address and port like 0.0.0.0:8080");
            SocketAddr::from(([0, 0, 0, 0], 0))
        })
    }
}

impl Config {
    /// Checks the whole config, expanding `${VAR}` secrets from the process environment.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        self.validate_with(&|name| std::env::var(name).ok())
    }

    /// `validate` with an explicit environment lookup.
    pub fn validate_with(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        let mut p = Problems(Vec::new());
        let s = &self.server;
        let server = ServerSettings {
            listen: p.addr("server.listen", &s.listen),
            admin_listen: s
                .admin_listen
                .as_deref()
                .map(|a| p.addr("server.admin_listen", a)),
            request_timeout: p.duration("server.request_timeout", &s.request_timeout),
            connect_timeout: p.duration("server.connect_timeout", &s.connect_timeout),
            first_byte_timeout: p.duration("server.first_byte_timeout", &s.first_byte_timeout),
            first_event_timeout: p.duration("server.first_event_timeout", &s.first_event_timeout),
            idle_timeout: p.duration("server.idle_timeout", &s.idle_timeout),
            drain_timeout: p.duration("server.drain_timeout", &s.drain_timeout),
            header_timeout: p.duration("server.header_timeout", &s.header_timeout),
            max_body: parse_size(&s.max_body)
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or_else(|| {
                    p.push("server.max_body", "is not a size (e.g. \"32MiB\")");
                    0
                }),
            max_event: parse_size(&s.max_event)
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| *n > 0)
                .unwrap_or_else(|| {
                    p.push(
                        "server.max_event",
                        "is not a size above zero (e.g. \"16MiB\")",
                    );
                    0
                }),
            log_json: match s.log_format.as_str() {
                "json" => true,
                "pretty" => false,
                _ => {
                    p.push("server.log_format", "is not one of json, pretty");
                    true
                }
            },
            open: s.open,
            workers: match s.workers {
                0 => std::thread::available_parallelism().map_or(1, usize::from),
                n if n > MAX_WORKERS => {
                    p.push(
                        "server.workers",
                        format!("is more than {MAX_WORKERS} (0: one per CPU)"),
                    );
                    1
                }
                n => n,
            },
            pack_workers: s.pack_workers,
        };
        if server.header_timeout.is_zero() && parse_duration(&s.header_timeout).is_some() {
            // Zero would close every connection before its first request.
            p.push("server.header_timeout", "must be longer than zero");
        }
        let r = &self.retry;
        let retry = RetrySettings {
            max_attempts: r.max_attempts,
            sticky_sessions: r.sticky_sessions,
            sticky_user: r.sticky_user,
            base_delay: p.duration("retry.base_delay", &r.base_delay),
            max_delay: p.duration("retry.max_delay", &r.max_delay),
            budget_percent: r.budget_percent,
            budget_min_per_sec: r.budget_min_per_sec,
            budget_window: p.duration("retry.budget_window", &r.budget_window),
            cooldown_default: p.duration("retry.cooldown_default", &r.cooldown_default),
            cooldown_max: p.duration("retry.cooldown_max", &r.cooldown_max),
            probe_interval: p.duration("retry.probe_interval", &r.probe_interval),
            outlier: crate::key_pool::OutlierPolicy {
                consecutive: r.eject_after,
                failure_percent: r.eject_failure_percent,
                min_requests: 10,
                window: p.duration("retry.eject_window", &r.eject_window),
                base: p.duration("retry.eject_duration", &r.eject_duration),
                max: p.duration("retry.eject_max", &r.eject_max),
            },
        };
        if retry.outlier.failure_percent > 100 {
            p.push("retry.eject_failure_percent", "must be at most 100");
        }
        if retry.outlier.base > retry.outlier.max {
            p.push(
                "retry.eject_duration",
                "must not be longer than retry.eject_max",
            );
        }
        if retry.base_delay > retry.max_delay {
            p.push(
                "retry.base_delay",
                "must not be longer than retry.max_delay",
            );
        }
        if retry.cooldown_default > retry.cooldown_max {
            p.push(
                "retry.cooldown_default",
                "must not be longer than retry.cooldown_max",
            );
        }
        if retry.max_attempts == 0 {
            p.push("retry.max_attempts", "must be at least 1");
        }
        if retry.budget_window.is_zero() {
            p.push("retry.budget_window", "must be longer than zero");
        }
        let limits = LimitsSettings {
            default_max_tokens: self.limits.default_max_tokens,
            max_queue_wait: p.duration("limits.max_queue_wait", &self.limits.max_queue_wait),
        };
        let state = super::access::validate_state(&self.state, &mut p);
        let egress = super::egress::validate(&self.egress, &mut p, env);
        let clients = super::access::validate_clients(&self.clients, server.max_body, &mut p, env);
        let admin_token_sha256 =
            self.admin
                .token
                .as_ref()
                .and_then(|t| match expand_env(t.expose(), env) {
                    Ok(t) if t.is_empty() => None,
                    Ok(t) => Some(crate::digest::sha256(t.as_bytes())),
                    Err(e) => {
                        p.push("admin.token", e);
                        None
                    }
                });
        let watch_interval = p.duration(
            "admin.watch_interval",
            self.admin.watch_interval.as_deref().unwrap_or("2s"),
        );
        let telemetry = self.telemetry.validate(&mut p);
        let providers = self.validate_providers(&mut p, env);
        let (models, model_index) = self.validate_models(&mut p, &providers);
        let defaults: Vec<usize> = providers
            .iter()
            .enumerate()
            .filter(|(_, pr)| pr.default)
            .map(|(i, _)| i)
            .collect();
        if defaults.len() > 1 {
            p.push("providers", "more than one provider has `default = true`");
        }
        if providers.is_empty() {
            p.push(
                "providers",
                "no provider configured (set OPENAI_API_KEY, or pass --config)",
            );
        }
        if !p.0.is_empty() {
            return Err(ConfigError { problems: p.0 });
        }
        Ok(Settings {
            server,
            retry,
            providers,
            models,
            default_provider: defaults.first().copied(),
            limits,
            state,
            clients,
            admin_token_sha256,
            watch_interval,
            egress,
            telemetry,
            model_index,
        })
    }

    fn validate_providers(
        &self,
        p: &mut Problems,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Vec<ProviderSettings> {
        let mut seen = HashMap::new();
        let mut out = Vec::with_capacity(self.providers.len());
        for (i, pc) in self.providers.iter().enumerate() {
            let path = format!("providers[{i}]");
            if pc.name.is_empty() {
                p.push(&format!("{path}.name"), "must not be empty");
            } else if let Some(first) = seen.get(&pc.name) {
                p.push(
                    &format!("{path}.name"),
                    format_args!("is the name of providers[{first}] too"),
                );
            } else {
                seen.insert(pc.name.clone(), i);
            }
            let kind = match pc.kind.as_str() {
                "openai" | "" => ProviderKind::OpenAi,
                "azure" => ProviderKind::Azure,
                "anthropic" => ProviderKind::Anthropic,
                _ => {
                    p.push(
                        &format!("{path}.kind"),
                        "is not one of openai, azure, anthropic",
                    );
                    ProviderKind::OpenAi
                }
            };
            let base_url = pc.base_url.trim_end_matches('/').to_owned();
            if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
                p.push(
                    &format!("{path}.base_url"),
                    "is not an http(s) URL (it must start with http:// or https://)",
                );
            }
            if kind == ProviderKind::Azure && pc.api_version.is_none() {
                p.push(
                    &format!("{path}.api_version"),
                    "is required for kind = \"azure\"",
                );
            }
            let responses = match (kind, pc.responses.as_deref()) {
                (ProviderKind::Anthropic, None | Some("chat")) => ResponsesMode::Chat,
                (_, None | Some("native")) => ResponsesMode::Native,
                (_, Some("chat")) => ResponsesMode::Chat,
                (ProviderKind::Anthropic, Some(_)) => {
                    p.push(
                        &format!("{path}.responses"),
                        "must be \"chat\" for kind = \"anthropic\" (its Responses requests are translated)",
                    );
                    ResponsesMode::Chat
                }
                (_, Some(_)) => {
                    p.push(&format!("{path}.responses"), "is not one of native, chat");
                    ResponsesMode::Native
                }
            };
            if pc.keys.is_empty() {
                p.push(&format!("{path}.keys"), "at least one key is required");
            }
            let mut key_ids = HashMap::new();
            let keys = pc
                .keys
                .iter()
                .enumerate()
                .map(|(k, kc)| {
                    let kpath = format!("{path}.keys[{k}]");
                    if kc.id.is_empty() {
                        p.push(&format!("{kpath}.id"), "must not be empty");
                    } else if let Some(first) = key_ids.get(&kc.id) {
                        p.push(
                            &format!("{kpath}.id"),
                            format_args!("is the id of {path}.keys[{first}] too"),
                        );
                    } else {
                        key_ids.insert(kc.id.clone(), k);
                    }
                    let secret = match expand_env(kc.secret.expose(), env) {
                        Ok(s) if s.is_empty() => {
                            p.push(&format!("{kpath}.secret"), "is empty");
                            Secret::default()
                        }
                        Ok(s) => Secret::new(s),
                        Err(e) => {
                            p.push(&format!("{kpath}.secret"), e);
                            Secret::default()
                        }
                    };
                    if kc.weight == Some(0) {
                        p.push(&format!("{kpath}.weight"), "must be at least 1");
                    }
                    KeySettings {
                        id: kc.id.clone(),
                        secret,
                        weight: kc.weight.unwrap_or(1).max(1),
                        rpm: p.per_minute(&format!("{kpath}.rpm"), kc.rpm),
                        tpm: p.per_minute(&format!("{kpath}.tpm"), kc.tpm),
                    }
                })
                .collect();
            out.push(ProviderSettings {
                name: pc.name.clone(),
                kind,
                base_url,
                api_version: match (kind, &pc.api_version) {
                    (ProviderKind::Anthropic, None) => Some("2023-06-01".to_owned()),
                    (_, v) => v.clone(),
                },
                default: pc.default,
                keys,
                ca_file: pc
                    .ca_file
                    .as_deref()
                    .and_then(|f| super::egress::ca_file(f, &format!("{path}.ca_file"), p)),
                responses,
                anthropic_beta: pc.anthropic_beta.clone(),
            });
        }
        out
    }

    fn validate_models(
        &self,
        p: &mut Problems,
        providers: &[ProviderSettings],
    ) -> (Vec<ModelRoute>, fnv::FnvHashMap<String, usize>) {
        let mut index = fnv::FnvHashMap::default();
        let mut out = Vec::with_capacity(self.models.len());
        for (i, mc) in self.models.iter().enumerate() {
            let path = format!("models[{i}]");
            if mc.name.is_empty() {
                p.push(&format!("{path}.name"), "must not be empty");
            } else if let Some(first) = index.get(&mc.name) {
                p.push(
                    &format!("{path}.name"),
                    format_args!("is the name of models[{first}] too"),
                );
            } else {
                index.insert(mc.name.clone(), i);
            }
            if mc.targets.is_empty() {
                p.push(
                    &format!("{path}.targets"),
                    "at least one target is required",
                );
            }
            let targets = mc
                .targets
                .iter()
                .enumerate()
                .filter_map(|(t, tc)| {
                    let provider = providers.iter().position(|pr| pr.name == tc.provider);
                    if provider.is_none() {
                        p.push(
                            &format!("{path}.targets[{t}].provider"),
                            format_args!(
                                "is not the name of a configured provider ({})",
                                provider_names(providers)
                            ),
                        );
                    }
                    Some(TargetSettings {
                        provider: provider?,
                        model: tc.model.as_deref().unwrap_or(&mc.name).into(),
                        context_window: tc.context_window,
                        max_tokens: tc.max_tokens,
                        reasoning: tc.reasoning,
                    })
                })
                .collect();
            out.push(ModelRoute {
                name: mc.name.clone(),
                targets,
                fit_max_tokens: mc.fit_max_tokens,
            });
        }
        (out, index)
    }
}
