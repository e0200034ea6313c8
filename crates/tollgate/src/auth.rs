//! Client keys: who may use the gateway, which models, how many requests at once.
//! Keys are kept only as SHA-256 digests and compared in constant time; upstream keys never
//! come from the client.

use crate::config::ClientSettings;
use crate::digest::{constant_time_eq, sha256};
use http::HeaderMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// An authenticated client.
#[derive(Debug)]
pub struct Client {
    /// Its settings.
    pub settings: ClientSettings,
    /// Its rate-limit bucket id (`c:<name>`), shared rather than rebuilt per request.
    pub bucket: Arc<str>,
    /// Its RPM and TPM limits with their header values, made once: every answer to it
    /// carries them (a clone is a count, a value written anew an allocation).
    pub limit_values: [Option<(u64, http::HeaderValue)>; 2],
    /// Requests in flight, shared with the same client of earlier and later configs: a reload
    /// does not let a client past its `max_concurrent`.
    inflight: Arc<AtomicU32>,
}

impl Client {
    /// Whether the client may use `model` (configured name or pass-through name).
    pub fn allows(&self, model: &str) -> bool {
        self.settings.models.is_empty() || self.settings.models.iter().any(|m| m == model)
    }

    /// Counts one request in flight; `None` when the client is at its concurrency limit.
    pub fn enter(self: &Arc<Self>) -> Option<InflightGuard> {
        let limit = self.settings.max_concurrent.unwrap_or(u32::MAX);
        let prev = self.inflight.fetch_add(1, Ordering::AcqRel);
        if prev >= limit {
            self.inflight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(InflightGuard(Arc::clone(self)))
    }
}

/// Releases a client's concurrency slot when dropped (at the end of the response body).
#[derive(Debug)]
pub struct InflightGuard(Arc<Client>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a request was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No key or an unknown one.
    BadKey,
}

/// The configured clients.
#[derive(Debug, Default)]
pub struct Auth {
    clients: Vec<Arc<Client>>,
}

impl Auth {
    /// Builds the table; empty means open mode.
    pub fn new(clients: &[ClientSettings]) -> Self {
        Self::carry_over(clients, None)
    }

    /// The table of a reloaded config: a client of the same name as in `previous` keeps
    /// counting its requests in flight where it was.
    pub fn carry_over(clients: &[ClientSettings], previous: Option<&Auth>) -> Self {
        let inflight = |name: &str| {
            previous
                .and_then(|p| p.clients.iter().find(|c| c.settings.name == name))
                .map_or_else(|| Arc::new(AtomicU32::new(0)), |c| Arc::clone(&c.inflight))
        };
        Auth {
            clients: clients
                .iter()
                .map(|c| {
                    Arc::new(Client {
                        settings: c.clone(),
                        bucket: Arc::from(format!("c:{}", c.name)),
                        limit_values: [c.rpm, c.tpm].map(|limit| {
                            let limit = u64::from(limit?);
                            Some((limit, crate::units::integer_header(limit)))
                        }),
                        inflight: inflight(&c.name),
                    })
                })
                .collect(),
        }
    }

    /// Whether anyone may call without a key.
    pub fn is_open(&self) -> bool {
        self.clients.is_empty()
    }

    /// The client presenting `Authorization: Bearer <key>`, `api-key: <key>` or `x-api-key: <key>`; `Ok(None)` in open mode.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Option<Arc<Client>>, Denied> {
        self.authenticate_key(presented_key(headers))
    }

    /// The client whose key is `presented` (see [`presented_key`]); `Ok(None)` in open mode.
    pub fn authenticate_key(&self, presented: Option<&str>) -> Result<Option<Arc<Client>>, Denied> {
        if self.is_open() {
            return Ok(None);
        }
        let presented = presented.ok_or(Denied::BadKey)?;
        let digest = sha256(presented.as_bytes());
        // Compare against every client so the time taken does not reveal which one matched.
        let mut found = None;
        for client in &self.clients {
            if constant_time_eq(&client.settings.key_sha256, &digest) && found.is_none() {
                found = Some(Arc::clone(client));
            }
        }
        found.map(Some).ok_or(Denied::BadKey)
    }
}

/// The gateway key a request presents: `Authorization: Bearer <key>`, else `api-key: <key>`, else `x-api-key: <key>`.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .or_else(|| headers.get("api-key").and_then(|v| v.to_str().ok()))
        // Anthropic's clients (Claude Code, the `anthropic` SDK) send their key here.
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(
        name: &str,
        key: &str,
        models: &[&str],
        max_concurrent: Option<u32>,
    ) -> ClientSettings {
        ClientSettings {
            name: name.into(),
            key_sha256: sha256(key.as_bytes()),
            rpm: None,
            tpm: None,
            max_concurrent,
            models: models.iter().map(|m| (*m).to_owned()).collect(),
            endpoints: Default::default(),
            forward_headers: Default::default(),
            max_body: None,
        }
    }

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, value.parse().unwrap());
        h
    }

    #[test]
    fn bearer_and_api_key_headers_authenticate() {
        let auth = Auth::new(&[
            client("a", "tg-a", &[], None),
            client("b", "tg-b", &[], None),
        ]);
        let c = auth
            .authenticate(&headers("authorization", "Bearer tg-b"))
            .unwrap()
            .unwrap();
        assert_eq!(c.settings.name, "b");
        let c = auth
            .authenticate(&headers("api-key", "tg-a"))
            .unwrap()
            .unwrap();
        assert_eq!(c.settings.name, "a");
    }

    #[test]
    fn missing_or_wrong_keys_are_refused() {
        let auth = Auth::new(&[client("a", "tg-a", &[], None)]);
        assert_eq!(
            auth.authenticate(&HeaderMap::new()).unwrap_err(),
            Denied::BadKey
        );
        assert_eq!(
            auth.authenticate(&headers("authorization", "Bearer tg-x"))
                .unwrap_err(),
            Denied::BadKey
        );
        assert_eq!(
            auth.authenticate(&headers("authorization", "Basic dGc6YQ=="))
                .unwrap_err(),
            Denied::BadKey
        );
    }

    #[test]
    fn open_mode_lets_everyone_in() {
        let auth = Auth::new(&[]);
        assert!(auth.authenticate(&HeaderMap::new()).unwrap().is_none());
    }

    #[test]
    fn model_allow_list() {
        let auth = Auth::new(&[client("a", "k", &["gpt-4o-mini"], None)]);
        let c = auth
            .authenticate(&headers("api-key", "k"))
            .unwrap()
            .unwrap();
        assert!(c.allows("gpt-4o-mini"));
        assert!(!c.allows("gpt-4o"));
    }

    #[test]
    fn concurrency_limit_is_released_on_drop() {
        let auth = Auth::new(&[client("a", "k", &[], Some(2))]);
        let c = auth
            .authenticate(&headers("api-key", "k"))
            .unwrap()
            .unwrap();
        let g1 = c.enter().unwrap();
        let _g2 = c.enter().unwrap();
        assert!(c.enter().is_none());
        drop(g1);
        assert!(c.enter().is_some());
    }

    #[test]
    fn a_reload_keeps_counting_a_clients_requests_in_flight() {
        let old = Auth::new(&[client("a", "k", &[], Some(1))]);
        let held = old
            .authenticate(&headers("api-key", "k"))
            .unwrap()
            .unwrap()
            .enter()
            .unwrap();
        let new = Auth::carry_over(&[client("a", "k2", &[], Some(1))], Some(&old));
        let c = new
            .authenticate(&headers("api-key", "k2"))
            .unwrap()
            .unwrap();
        assert!(
            c.enter().is_none(),
            "the stream opened before the reload still counts"
        );
        drop(held);
        assert!(c.enter().is_some());
        let other = Auth::carry_over(&[client("b", "k", &[], Some(1))], Some(&new));
        let b = other
            .authenticate(&headers("api-key", "k"))
            .unwrap()
            .unwrap();
        assert!(b.enter().is_some(), "a new name starts from zero");
    }

    #[test]
    fn sha256_matches_the_standard_vector() {
        let hex: String = sha256(b"abc").iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
