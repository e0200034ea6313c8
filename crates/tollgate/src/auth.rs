//! Client keys: who may use the gateway, which models, how many requests at once.
//! Keys are kept only as SHA-256 digests and compared in constant time; upstream keys never
//! come from the client. A key that matched its digest once is remembered as a 128-bit keyed
//! hash ([`Tagger`]: two SipHash-1-3 with this table's random keys), so later requests skip
//! the SHA-256 (about 2k instructions, the largest single cost of a plain request's
//! admission); the key itself is never kept.

use crate::config::ClientSettings;
use crate::digest::{constant_time_eq, sha256};
use http::HeaderMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

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
    /// does not let a client past its `max_concurrent`. Counted only while it has one: a
    /// reload that gives a client a limit counts the requests that start after it.
    inflight: Arc<AtomicU32>,
    /// The [`Tagger`] tag of its key, once a request presented the key (the digest matched).
    known: Known,
}

/// A client's remembered tag (printed only as whether there is one).
#[derive(Default)]
struct Known(OnceLock<Tag>);

impl std::fmt::Debug for Known {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "known"
        } else {
            "unseen"
        })
    }
}

impl Client {
    /// Whether the client may use `model` (configured name or pass-through name).
    pub fn allows(&self, model: &str) -> bool {
        self.settings.models.is_empty() || self.settings.models.iter().any(|m| m == model)
    }

    /// Counts one request in flight against the client's `max_concurrent`: the slot, held
    /// until the answer's end; `Ok(None)` for a client without a limit (nothing is counted: a
    /// count every worker would write for every request); `Err(limit)` when all are taken.
    pub fn enter(self: &Arc<Self>) -> Result<Option<InflightGuard>, u32> {
        let Some(limit) = self.settings.max_concurrent else {
            return Ok(None);
        };
        let prev = self.inflight.fetch_add(1, Ordering::AcqRel);
        if prev >= limit {
            self.inflight.fetch_sub(1, Ordering::AcqRel);
            return Err(limit);
        }
        Ok(Some(InflightGuard(Arc::clone(self))))
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

/// A key's tag: 128 bits of keyed hash.
type Tag = [u64; 2];

/// Tags presented keys with two SipHash-1-3 under secret random keys made for one table (std's
/// `RandomState`: keys from the OS's randomness, the second state's the first's successor; a
/// reload makes new ones and forgets the tags). Each half of a tag is a keyed pseudo-random
/// function of the key and the tags are never shown: a key that is not the client's matches
/// its tag by chance only (one in 2^64 for the first half alone), and the tags and their keys,
/// read from memory, give no shorter way to a client key than its SHA-256 digest.
#[derive(Default)]
struct Tagger([std::collections::hash_map::RandomState; 2]);

impl Tagger {
    fn tag(&self, key: &[u8]) -> Tag {
        self.0.each_ref().map(|keys| {
            let mut h = keys.build_hasher();
            h.write(key);
            h.finish()
        })
    }
}

impl std::fmt::Debug for Tagger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tagger")
    }
}

/// The configured clients.
#[derive(Debug, Default)]
pub struct Auth {
    clients: Vec<Arc<Client>>,
    tagger: Tagger,
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
                        known: Known::default(),
                    })
                })
                .collect(),
            tagger: Tagger::default(),
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
        let presented = presented.ok_or(Denied::BadKey)?.as_bytes();
        // Compared with every client, so the time taken does not reveal which one matched.
        let tag = self.tagger.tag(presented);
        let mut found = None;
        for client in &self.clients {
            let same = client
                .known
                .0
                .get()
                .is_some_and(|known| tags_equal(known, &tag));
            if same && found.is_none() {
                found = Some(client);
            }
        }
        if found.is_none() {
            let digest = sha256(presented);
            for client in &self.clients {
                if constant_time_eq(&client.settings.key_sha256, &digest) && found.is_none() {
                    found = Some(client);
                }
            }
            if let Some(client) = found {
                // Two requests may both get here first: they set the same tag.
                let _ = client.known.0.set(tag);
            }
        }
        found.map(|c| Some(Arc::clone(c))).ok_or(Denied::BadKey)
    }
}

/// Tag equality that takes the same time wherever the tags differ.
fn tags_equal(a: &Tag, b: &Tag) -> bool {
    ((a[0] ^ b[0]) | (a[1] ^ b[1])) == 0
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
    fn a_remembered_key_keeps_its_client_and_wrong_keys_stay_out() {
        let auth = Auth::new(&[
            client("a", "tg-a", &[], None),
            client("b", "tg-b", &[], None),
        ]);
        let name = |key: &str| {
            auth.authenticate_key(Some(key))
                .map(|c| c.map(|c| c.settings.name.clone()))
        };
        assert!(auth.clients.iter().all(|c| c.known.0.get().is_none()));
        for _ in 0..3 {
            // The first round matches digests and remembers; the later ones match tags.
            assert_eq!(name("tg-a"), Ok(Some("a".into())));
            assert_eq!(name("tg-b"), Ok(Some("b".into())));
            assert_eq!(name("tg-c"), Err(Denied::BadKey));
            assert_eq!(name("tg-a "), Err(Denied::BadKey));
            assert_eq!(name("tg-"), Err(Denied::BadKey));
        }
        assert!(auth.clients.iter().all(|c| c.known.0.get().is_some()));
        assert_ne!(auth.clients[0].known.0.get(), auth.clients[1].known.0.get());
        // What a debug print shows of a client: that its key was seen, not its tag.
        let printed = format!("{:?}", auth.clients[0]);
        assert!(printed.contains("known: known"), "{printed}");
        let tag = auth.clients[0].known.0.get().copied().unwrap_or_default();
        assert!(!printed.contains(&tag[0].to_string()), "{printed}");
        // A new table (a reload) has new tagging keys and remembers nothing.
        let reloaded = Auth::carry_over(
            &[
                client("a", "tg-a", &[], None),
                client("b", "tg-b", &[], None),
            ],
            Some(&auth),
        );
        assert!(reloaded.clients.iter().all(|c| c.known.0.get().is_none()));
        assert_ne!(reloaded.tagger.tag(b"tg-a"), auth.tagger.tag(b"tg-a"));
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
        assert_eq!(c.enter().err(), Some(2));
        drop(g1);
        assert!(c.enter().unwrap().is_some());
    }

    #[test]
    fn a_client_without_a_limit_is_not_counted() {
        let auth = Auth::new(&[client("a", "k", &[], None)]);
        let c = auth
            .authenticate(&headers("api-key", "k"))
            .unwrap()
            .unwrap();
        let held: Vec<_> = (0..3).map(|_| c.enter().unwrap()).collect();
        assert!(held.iter().all(Option::is_none));
        assert_eq!(c.inflight.load(Ordering::Acquire), 0);
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
            c.enter().is_err(),
            "the stream opened before the reload still counts"
        );
        drop(held);
        assert!(c.enter().unwrap().is_some());
        let other = Auth::carry_over(&[client("b", "k", &[], Some(1))], Some(&new));
        let b = other
            .authenticate(&headers("api-key", "k"))
            .unwrap()
            .unwrap();
        assert!(b.enter().unwrap().is_some(), "a new name starts from zero");
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
