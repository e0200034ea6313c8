//! What the Responses API remembers between requests, per API key: the responses it stored (so
//! `GET`/`DELETE /v1/responses/{id}` and `previous_response_id` resolve only for the key that
//! created them, as they resolve only in the creating organization), and a prompt cache keyed
//! by key and `prompt_cache_key`. Both are bounded: the oldest entries are forgotten first.

use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

use serde_json::Value;

/// How many stored responses, and how many prompt-cache entries, are kept.
pub(crate) const CAPACITY: usize = 10_000;

/// A map that forgets its oldest insertions beyond a capacity.
#[derive(Debug)]
pub(crate) struct Bounded<K, V> {
    map: HashMap<K, V>,
    /// Keys in insertion order; a removed key may linger here until it is popped.
    order: VecDeque<K>,
    capacity: usize,
}

impl<K: Clone + Eq + Hash, V> Bounded<K, V> {
    pub(crate) fn new(capacity: usize) -> Bounded<K, V> {
        Bounded {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    pub(crate) fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.map.get(key)
    }

    /// Sets `key` to `value`; a new key evicts the oldest one when full.
    pub(crate) fn insert(&mut self, key: K, value: V) {
        if let Some(slot) = self.map.get_mut(&key) {
            *slot = value;
            return;
        }
        // Bounding the order queue (not the map) also bounds keys that were removed since.
        while self.order.len() >= self.capacity.max(1) {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
        self.order.push_back(key.clone());
        self.map.insert(key, value);
    }

    pub(crate) fn remove<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        self.map.remove(key)
    }

    pub(crate) fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

/// One stored response and the key that created it (`None`: a keyless request).
#[derive(Clone, Debug)]
pub(crate) struct Stored {
    pub(crate) key: Option<String>,
    pub(crate) response: Value,
}

/// The Responses API's memory; lives in a mutex in `Shared`.
#[derive(Debug)]
pub(crate) struct Store {
    responses: Bounded<String, Stored>,
    /// `(key, prompt_cache_key)` → input tokens of the last prompt seen with them.
    prompt_cache: Bounded<(Option<String>, String), usize>,
}

impl Default for Store {
    fn default() -> Store {
        Store {
            responses: Bounded::new(CAPACITY),
            prompt_cache: Bounded::new(CAPACITY),
        }
    }
}

impl Store {
    /// Remembers `response` (by its `id`) as created by `key`.
    pub(crate) fn put(&mut self, id: &str, key: Option<&str>, response: Value) {
        let key = key.map(str::to_owned);
        self.responses
            .insert(id.to_owned(), Stored { key, response });
    }

    /// The response `id` if `key` created it; another key gets `None`, as if it did not exist.
    pub(crate) fn get(&self, id: &str, key: Option<&str>) -> Option<&Value> {
        self.responses
            .get(id)
            .filter(|stored| stored.key.as_deref() == key)
            .map(|stored| &stored.response)
    }

    /// Forgets `id` if `key` created it; says whether it did.
    pub(crate) fn delete(&mut self, id: &str, key: Option<&str>) -> bool {
        if self.get(id, key).is_none() {
            return false;
        }
        self.responses.remove(id).is_some()
    }

    /// The key that created `id`, if it is stored (`Some(None)`: a keyless request).
    pub(crate) fn owner(&self, id: &str) -> Option<Option<String>> {
        self.responses.get(id).map(|stored| stored.key.clone())
    }

    /// The cached share of a prompt of `input_tokens` sent with `key` and `cache_key`, then
    /// remembers this prompt: a prompt cache that holds the previous prompt of the same session
    /// on the same key (Codex resends the whole history each turn, so the previous prompt is a
    /// prefix of this one). The first prompt of a session on a key, or a prompt without
    /// `prompt_cache_key`, gets 0.
    pub(crate) fn cached_tokens(
        &mut self,
        key: Option<&str>,
        cache_key: Option<&str>,
        input_tokens: usize,
    ) -> usize {
        let Some(cache_key) = cache_key else { return 0 };
        let entry = (key.map(str::to_owned), cache_key.to_owned());
        let cached = self
            .prompt_cache
            .get(&entry)
            .map_or(0, |previous| (*previous).min(input_tokens));
        self.prompt_cache.insert(entry, input_tokens);
        cached
    }

    /// Forgets every prompt-cache entry (stored responses stay).
    pub(crate) fn clear_prompt_cache(&mut self) {
        self.prompt_cache.clear();
    }

    /// How many responses are stored.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.responses.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bounded_forgets_the_oldest_and_stays_bounded_under_removals() {
        let mut map = Bounded::new(2);
        map.insert("a", 1);
        map.insert("b", 2);
        map.insert("a", 10);
        assert_eq!(map.get("a"), Some(&10));
        map.insert("c", 3);
        assert_eq!(
            (map.get("a"), map.get("b"), map.get("c")),
            (None, Some(&2), Some(&3))
        );
        for i in 0..100 {
            map.insert(if i % 2 == 0 { "x" } else { "y" }, i);
            map.remove("x");
            map.remove("y");
        }
        assert!(map.order.len() <= 2, "{:?}", map.order);
        assert_eq!(map.len(), 0);
    }

    #[test]
    fn responses_resolve_only_for_their_key() {
        let mut store = Store::default();
        store.put("resp_1", Some("k1"), json!({ "id": "resp_1" }));
        store.put("resp_2", None, json!({ "id": "resp_2" }));
        assert_eq!(
            store.get("resp_1", Some("k1")),
            Some(&json!({ "id": "resp_1" }))
        );
        assert_eq!(store.get("resp_1", Some("k2")), None);
        assert_eq!(store.get("resp_1", None), None);
        assert!(store.get("resp_2", None).is_some());
        assert_eq!(store.owner("resp_1"), Some(Some("k1".to_owned())));
        assert_eq!(store.owner("resp_2"), Some(None));
        assert!(!store.delete("resp_1", Some("k2")));
        assert!(store.delete("resp_1", Some("k1")));
        assert!(!store.delete("resp_1", Some("k1")));
        assert_eq!((store.owner("resp_1"), store.len()), (None, 1));
    }

    #[test]
    fn the_prompt_cache_holds_the_previous_prompt_per_key_and_cache_key() {
        let mut store = Store::default();
        assert_eq!(store.cached_tokens(Some("k1"), Some("s"), 100), 0);
        assert_eq!(store.cached_tokens(Some("k1"), Some("s"), 150), 100);
        assert_eq!(store.cached_tokens(Some("k1"), Some("s"), 120), 120);
        assert_eq!(
            store.cached_tokens(Some("k2"), Some("s"), 200),
            0,
            "another key"
        );
        assert_eq!(
            store.cached_tokens(Some("k1"), Some("t"), 200),
            0,
            "another session"
        );
        assert_eq!(store.cached_tokens(Some("k1"), None, 200), 0);
        assert_eq!(store.cached_tokens(Some("k1"), None, 200), 0);
        store.clear_prompt_cache();
        assert_eq!(store.cached_tokens(Some("k1"), Some("s"), 100), 0);
    }
}
