//! Validation of who may use the gateway (`[[clients]]`), of rate-limit estimation
//! (`[limits]`) and of the shared-state backend (`[state]`).

use super::secret::expand_env;
use super::settings::Problems;
use super::{ClientConfig, Secret, StateConfig};
use serde::Serialize;
use std::time::Duration;

/// Validated `[limits]`.
#[derive(Debug, Clone, Serialize)]
pub struct LimitsSettings {
    /// Completion tokens assumed when a request names none.
    pub default_max_tokens: u32,
    /// Longest wait for an upstream bucket to refill.
    #[serde(serialize_with = "ms")]
    pub max_queue_wait: Duration,
}

/// Where state lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// In this process.
    Memory,
    /// In Redis, shared by replicas.
    Redis,
}

/// Validated `[state]`.
#[derive(Debug, Clone, Serialize)]
pub struct StateSettings {
    /// Backend.
    pub backend: Backend,
    /// Redis URL (may hold a password: never printed).
    #[serde(skip)]
    pub redis_url: Secret,
    /// Per-call Redis timeout.
    #[serde(serialize_with = "ms")]
    pub redis_timeout: Duration,
    /// Replicas sharing the limits.
    pub replicas: u32,
    /// Redis key prefix.
    pub key_prefix: String,
}

/// A validated client.
#[derive(Debug, Clone, Serialize)]
pub struct ClientSettings {
    /// Name.
    pub name: String,
    /// SHA-256 of the client's key.
    #[serde(skip)]
    pub key_sha256: [u8; 32],
    /// Requests per minute.
    pub rpm: Option<u32>,
    /// Tokens per minute.
    pub tpm: Option<u32>,
    /// Most concurrent requests.
    pub max_concurrent: Option<u32>,
    /// Allowed models; empty = all.
    pub models: Vec<String>,
    /// Endpoint families the client may call.
    #[serde(serialize_with = "families")]
    pub endpoints: crate::endpoint::Families,
    /// Provider feature headers forwarded for this client.
    #[serde(serialize_with = "features")]
    pub forward_headers: crate::endpoint::FeatureHeaders,
    /// Largest request body in bytes (`None`: `server.max_body`).
    pub max_body: Option<usize>,
}

fn families<S: serde::Serializer>(f: &crate::endpoint::Families, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(f.names())
}

fn features<S: serde::Serializer>(
    f: &crate::endpoint::FeatureHeaders,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(f.names())
}

fn ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{}ms", d.as_millis()))
}

pub(super) fn validate_state(c: &StateConfig, p: &mut Problems) -> StateSettings {
    let backend = match c.backend.as_str() {
        "memory" => Backend::Memory,
        "redis" => Backend::Redis,
        _ => {
            p.push("state.backend", "is not one of memory, redis");
            Backend::Memory
        }
    };
    if backend == Backend::Redis
        && !(c.redis_url.starts_with("redis://") || c.redis_url.starts_with("rediss://"))
    {
        p.push("state.redis_url", "must start with redis:// or rediss://");
    }
    if c.replicas == 0 {
        p.push("state.replicas", "must be at least 1");
    }
    StateSettings {
        backend,
        redis_url: Secret::new(c.redis_url.clone()),
        redis_timeout: p.duration("state.redis_timeout", &c.redis_timeout),
        replicas: c.replicas.max(1),
        key_prefix: c.key_prefix.clone(),
    }
}

pub(super) fn validate_clients(
    clients: &[ClientConfig],
    server_max_body: usize,
    p: &mut Problems,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<ClientSettings> {
    let mut names = std::collections::HashMap::new();
    clients
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let path = format!("clients[{i}]");
            if c.name.is_empty() {
                p.push(&format!("{path}.name"), "must not be empty");
            } else if let Some(first) = names.get(&c.name) {
                p.push(
                    &format!("{path}.name"),
                    format_args!("is the name of clients[{first}] too"),
                );
            } else {
                names.insert(c.name.clone(), i);
            }
            let digest = match (&c.key, &c.key_sha256) {
                (Some(key), None) => match expand_env(key.expose(), env) {
                    Ok(k) if k.is_empty() => {
                        p.push(&format!("{path}.key"), "is empty");
                        [0; 32]
                    }
                    Ok(k) => crate::digest::sha256(k.as_bytes()),
                    Err(e) => {
                        p.push(&format!("{path}.key"), e);
                        [0; 32]
                    }
                },
                (None, Some(hex)) => parse_hex32(hex).unwrap_or_else(|| {
                    p.push(&format!("{path}.key_sha256"), "must be 64 hex digits");
                    [0; 32]
                }),
                _ => {
                    p.push(&path, "set exactly one of `key` and `key_sha256`");
                    [0; 32]
                }
            };
            ClientSettings {
                name: c.name.clone(),
                key_sha256: digest,
                rpm: p.per_minute(&format!("{path}.rpm"), c.rpm),
                tpm: p.per_minute(&format!("{path}.tpm"), c.tpm),
                max_concurrent: c.max_concurrent,
                models: c.models.clone(),
                endpoints: crate::endpoint::Families::parse(&c.endpoints).unwrap_or_else(|e| {
                    p.push(&format!("{path}.endpoints"), e);
                    crate::endpoint::Families::default()
                }),
                forward_headers: crate::endpoint::FeatureHeaders::parse(&c.forward_headers)
                    .unwrap_or_else(|e| {
                        p.push(&format!("{path}.forward_headers"), e);
                        crate::endpoint::FeatureHeaders::default()
                    }),
                max_body: c.max_body.as_deref().and_then(|raw| {
                    let limit = crate::units::parse_size(raw).and_then(|n| usize::try_from(n).ok());
                    match limit {
                        Some(n) if n <= server_max_body => Some(n),
                        Some(_) => {
                            p.push(
                                &format!("{path}.max_body"),
                                "must be at most server.max_body (the edge refuses larger bodies for everyone)",
                            );
                            None
                        }
                        None => {
                            p.push(&format!("{path}.max_body"), "is not a size (e.g. \"1MiB\")");
                            None
                        }
                    }
                }),
            }
        })
        .collect()
}

fn parse_hex32(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
