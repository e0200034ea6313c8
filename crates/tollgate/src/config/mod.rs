//! The gateway's configuration: the serde shape users write (`Config`), its loading with figment
//! (struct defaults, then a TOML file or the zero-config environment, then `TOLLGATE_SECTION__FIELD`
//! variables), and `validate()` into the typed `Settings` the gateway runs on.

mod access;
mod egress;
mod secret;
mod settings;
mod source;
mod telemetry;

pub use access::{Backend, ClientSettings, LimitsSettings, StateSettings};
pub use egress::{EgressConfig, EgressSettings, Proxy};
pub use secret::Secret;
pub use settings::{
    KeySettings, ModelRoute, ProviderKind, ProviderSettings, ResponsesMode, RetrySettings,
    ServerSettings, Settings, TargetSettings,
};
pub use telemetry::{Otlp, Protocol, Resolved, Sampling, TelemetryConfig, TelemetrySettings};

use figment::providers::Serialized;
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The whole config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listeners, timeouts, limits, logs.
    pub server: ServerConfig,
    /// Retry, backoff, cooldown and probing policy.
    pub retry: RetryConfig,
    /// Upstream providers, each with its keys.
    pub providers: Vec<ProviderConfig>,
    /// Model names clients send, each mapped to an ordered chain of targets.
    pub models: Vec<ModelConfig>,
    /// Token estimation and queueing for rate limits.
    pub limits: LimitsConfig,
    /// Where buckets and key health live: this process, or Redis shared by replicas.
    pub state: StateConfig,
    /// Clients of the gateway and their keys; none means open mode.
    pub clients: Vec<ClientConfig>,
    /// The admin API (`/admin/*`).
    pub admin: AdminConfig,
    /// How upstreams are reached: extra certificate authorities, the HTTP proxy.
    pub egress: EgressConfig,
    /// OpenTelemetry traces over OTLP (the `OTEL_*` variables win over it).
    pub telemetry: TelemetryConfig,
}

/// `[admin]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Bearer token for `/admin/*`, or `${ENV_VAR}`; no token, no admin API.
    pub token: Option<Secret>,
    /// How often the config file is checked for changes (`0s` turns the watch off).
    pub watch_interval: Option<String>,
}

/// `[limits]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Completion tokens assumed when a request names no `max_tokens`.
    pub default_max_tokens: u32,
    /// Longest wait for an upstream key's bucket to refill before falling back or answering 429.
    pub max_queue_wait: String,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            default_max_tokens: 1024,
            max_queue_wait: "2s".into(),
        }
    }
}

/// `[state]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateConfig {
    /// `memory` or `redis`.
    pub backend: String,
    /// Redis URL for `backend = "redis"`.
    pub redis_url: String,
    /// Longest wait for one Redis call before degrading to local limits.
    pub redis_timeout: String,
    /// Number of gateway replicas sharing the limits: while Redis is down each takes 1/replicas.
    pub replicas: u32,
    /// Prefix of every Redis key.
    pub key_prefix: String,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            backend: "memory".into(),
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_timeout: "50ms".into(),
            replicas: 1,
            key_prefix: "tollgate".into(),
        }
    }
}

/// `[[clients]]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// Name in logs and metrics.
    pub name: String,
    /// The client's gateway key, or `${ENV_VAR}`.
    pub key: Option<Secret>,
    /// Hex SHA-256 of the key, so the file need not hold it.
    pub key_sha256: Option<String>,
    /// Requests per minute.
    pub rpm: Option<u32>,
    /// Tokens per minute (prompt estimate + max completion, corrected by real usage).
    pub tpm: Option<u32>,
    /// Most requests in flight at once.
    pub max_concurrent: Option<u32>,
    /// Models the client may use (configured names or pass-through names); empty = all.
    pub models: Vec<String>,
    /// Endpoint families the client may call (`"inference"`, `"files"`, `"batches"`, …, `"*"`);
    /// empty = the inference endpoints.
    pub endpoints: Vec<String>,
    /// Provider feature headers forwarded for this client (`anthropic-beta`, `openai-beta`).
    pub forward_headers: Vec<String>,
    /// Largest request body for this client (at most `server.max_body`).
    pub max_body: Option<String>,
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of the main listener.
    pub listen: String,
    /// Optional separate listener for `/metrics`, `/healthz` and `/readyz`.
    pub admin_listen: Option<String>,
    /// One deadline for the whole request: every attempt, wait and fallback.
    pub request_timeout: String,
    /// TCP/TLS connect timeout to an upstream.
    pub connect_timeout: String,
    /// Longest wait for a non-streamed answer's response headers (a long completion sends
    /// them only when it is done).
    pub first_byte_timeout: String,
    /// Longest wait for a stream's headers and first event.
    pub first_event_timeout: String,
    /// Longest silence between two chunks of a streamed answer.
    pub idle_timeout: String,
    /// How long in-flight requests may run on after SIGTERM/SIGINT.
    pub drain_timeout: String,
    /// Longest a client may take to send a request's header block (and its first bytes after
    /// connecting); a connection idle this long between requests is closed too.
    pub header_timeout: String,
    /// Largest accepted request body.
    pub max_body: String,
    /// Largest single event of a streamed answer: a longer one ends the stream with an error
    /// event (an upstream that never ends an event cannot fill the gateway's memory).
    pub max_event: String,
    /// `json` or `pretty`.
    pub log_format: String,
    /// With no `[[clients]]` (open mode), serve peers other than loopback too. Off, open mode
    /// answers them 403: anyone who reaches the port would use the upstream keys.
    pub open: bool,
    /// Threads serving the main listener's connections, each with a runtime of its own (0: one
    /// per CPU the process may use).
    pub workers: usize,
    /// While the workers together need less than one core, hold them on one
    /// (`server::workers::pack`).
    pub pack_workers: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "0.0.0.0:8080".into(),
            admin_listen: None,
            request_timeout: "10m".into(),
            connect_timeout: "5s".into(),
            first_byte_timeout: "5m".into(),
            first_event_timeout: "60s".into(),
            idle_timeout: "2m".into(),
            drain_timeout: "30s".into(),
            header_timeout: "10s".into(),
            max_body: "32MiB".into(),
            max_event: "16MiB".into(),
            log_format: "json".into(),
            open: false,
            workers: 0,
            pack_workers: true,
        }
    }
}

/// `[retry]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts per target (the first one included).
    pub max_attempts: u32,
    /// Base of the exponential backoff.
    pub base_delay: String,
    /// Cap of one backoff wait.
    pub max_delay: String,
    /// Retries may add at most this percentage to the request rate (over `budget_window`).
    pub budget_percent: u32,
    /// Retries always allowed per second, whatever the request rate.
    pub budget_min_per_sec: u32,
    /// Window over which the retry budget is counted.
    pub budget_window: String,
    /// Cooldown of a key after a 429 that names no time.
    pub cooldown_default: String,
    /// Longest cooldown, whatever the provider asks.
    pub cooldown_max: String,
    /// A disabled key (401/403/quota) gets one probe request after this long.
    pub probe_interval: String,
    /// A session's requests (same `prompt_cache_key` or `session-id` header) go to one key
    /// while it is healthy, so the provider's prompt cache is met.
    pub sticky_sessions: bool,
    /// Requests with the same `user` count as one session too.
    pub sticky_user: bool,
    /// Transient failures in a row (5xx, timeouts, connect errors, a stream's error before its
    /// first event) that eject a key (0: never by count).
    pub eject_after: u32,
    /// Failure share in percent over `eject_window` (at least 10 answers) that ejects a key
    /// (0: never by rate).
    pub eject_failure_percent: u32,
    /// Window of the failure share.
    pub eject_window: String,
    /// First ejection's length; each failed probe doubles it.
    pub eject_duration: String,
    /// Longest ejection.
    pub eject_max: String,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 4,
            base_delay: "250ms".into(),
            max_delay: "20s".into(),
            budget_percent: 20,
            budget_min_per_sec: 10,
            budget_window: "10s".into(),
            cooldown_default: "10s".into(),
            cooldown_max: "5m".into(),
            probe_interval: "60s".into(),
            sticky_sessions: true,
            sticky_user: false,
            eject_after: 5,
            eject_failure_percent: 50,
            eject_window: "10s".into(),
            eject_duration: "10s".into(),
            eject_max: "5m".into(),
        }
    }
}

/// `[[providers]]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderConfig {
    /// Name used in routes, logs and metrics.
    pub name: String,
    /// `openai` (any OpenAI-compatible server), `azure` or `anthropic`.
    pub kind: String,
    /// Base URL; for `openai` it includes `/v1`, for `azure` it is the resource endpoint.
    pub base_url: String,
    /// Azure's `api-version`, or Anthropic's `anthropic-version` (default `2023-06-01`).
    pub api_version: Option<String>,
    /// Models not listed in `[[models]]` pass through to this provider.
    pub default: bool,
    /// The provider's API keys.
    pub keys: Vec<KeyConfig>,
    /// PEM file of certificate authorities trusted for this provider, beyond the system's and
    /// `egress.ca_file`.
    pub ca_file: Option<String>,
    /// How it serves `POST /v1/responses`: `native` (the Responses API itself; the default for
    /// `openai` and `azure`) or `chat` (translated to Chat Completions; always for
    /// `anthropic`, through its Messages translation).
    pub responses: Option<String>,
    /// For `anthropic`: the `anthropic-beta` flags clients of `/v1/messages` may pass on
    /// (`["*"]`: every flag; default none, as each turns on a feature billed to the key).
    pub anthropic_beta: Vec<String>,
}

/// One upstream API key.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeyConfig {
    /// Name of the key in logs, metrics and headers; never the secret.
    pub id: String,
    /// The key itself, or `${ENV_VAR}`.
    pub secret: Secret,
    /// Relative share of traffic among healthy keys (default 1).
    pub weight: Option<u32>,
    /// The provider's requests-per-minute limit for this key.
    pub rpm: Option<u32>,
    /// The provider's tokens-per-minute limit for this key.
    pub tpm: Option<u32>,
}

/// `[[models]]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// The model name clients send.
    pub name: String,
    /// Ordered fallback chain.
    pub targets: Vec<TargetConfig>,
    /// When a target's `context_window` holds the prompt but not the prompt plus the client's
    /// `max_tokens`, lower `max_tokens` to fit instead of skipping the target (default false).
    pub fit_max_tokens: bool,
}

/// One element of a model's chain.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TargetConfig {
    /// A provider's `name`.
    pub provider: String,
    /// The model (or Azure deployment) name sent upstream; defaults to the client's model name.
    pub model: Option<String>,
    /// The target's context window in tokens: a request whose estimated prompt plus `max_tokens`
    /// cannot fit is not sent to this target (fallback reason `context_window`).
    pub context_window: Option<u32>,
    /// For Anthropic targets: `max_tokens` when the client names none (default `limits.default_max_tokens`).
    pub max_tokens: Option<u32>,
    /// The model takes a reasoning effort: a translated request's thinking settings become
    /// `reasoning_effort` (and `max_tokens` `max_completion_tokens`); default false.
    pub reasoning: bool,
}

/// Where the config comes from.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// `--config PATH`; must exist when given.
    pub path: Option<std::path::PathBuf>,
    /// `--listen ADDR`, applied last.
    pub listen: Option<String>,
    /// `--open`: sets `server.open`, applied last.
    pub open: bool,
}

/// A config that could not be loaded: what figment could not read or every validation problem.
/// No problem quotes a value from the file or the environment, so none can print a secret.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.join("\n"))]
pub struct ConfigError {
    /// One line per problem: the key path first, or the source (file, environment) and then
    /// the line and column or the key path.
    pub problems: Vec<String>,
}

impl From<figment::Error> for ConfigError {
    fn from(e: figment::Error) -> Self {
        ConfigError {
            problems: e.into_iter().map(|e| source::describe(&e)).collect(),
        }
    }
}

impl ConfigError {
    fn one(msg: impl Into<String>) -> Self {
        ConfigError {
            problems: vec![msg.into()],
        }
    }
}

/// The zero-config provider built from `OPENAI_API_KEY(S)` and `TOLLGATE_UPSTREAM_URL`. Plain
/// strings, not `Secret`: figment merges serialized data, and a `Secret` would serialize as `***`.
#[derive(Serialize)]
struct ZeroConfig {
    providers: [ZeroProvider; 1],
}

#[derive(Serialize)]
struct ZeroProvider {
    name: &'static str,
    kind: &'static str,
    base_url: String,
    default: bool,
    keys: Vec<ZeroKey>,
}

#[derive(Serialize)]
struct ZeroKey {
    id: String,
    secret: String,
}

impl Config {
    /// Loads defaults, then the file (or the zero-config environment), then `TOLLGATE_*__*` variables.
    pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
        Self::load_with(sources, &|name| std::env::var(name).ok())
    }

    /// Parses a TOML document alone (no environment overrides); for tests and tools.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Ok(Figment::from(source::TomlText::string(text)).extract::<Config>()?)
    }

    fn load_with(
        sources: &Sources,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut figment = Figment::new();
        match &sources.path {
            Some(path) => {
                if !Path::new(path).is_file() {
                    return Err(ConfigError::one(format!(
                        "config file {} does not exist",
                        path.display()
                    )));
                }
                // Read once: a reload parses exactly the text it read, never a later write.
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::one(format!("config file {}: {e}", path.display()))
                })?;
                figment = figment.merge(source::TomlText::file(path, text));
            }
            None => {
                if let Some(zero) = zero_config(env) {
                    figment = figment.merge(Serialized::defaults(zero));
                }
            }
        }
        let (typed, secrets) = source::env_overrides();
        figment = figment.merge(typed).merge(secrets);
        if let Some(listen) = &sources.listen {
            figment = figment.merge(("server.listen", listen.as_str()));
        }
        if sources.open {
            figment = figment.merge(("server.open", true));
        }
        Ok(figment.extract::<Config>()?)
    }
}

fn zero_config(env: &dyn Fn(&str) -> Option<String>) -> Option<ZeroConfig> {
    let secrets: Vec<String> = match env("OPENAI_API_KEYS") {
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        None => env("OPENAI_API_KEY")
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect(),
    };
    if secrets.is_empty() {
        return None;
    }
    let keys = secrets
        .into_iter()
        .enumerate()
        .map(|(i, secret)| ZeroKey {
            id: format!("key-{}", i + 1),
            secret,
        })
        .collect();
    Some(ZeroConfig {
        providers: [ZeroProvider {
            name: "openai",
            kind: "openai",
            base_url: env("TOLLGATE_UPSTREAM_URL")
                .unwrap_or_else(|| "https://api.openai.com/v1".into()),
            default: true,
            keys,
        }],
    })
}

#[cfg(test)]
mod tests;
