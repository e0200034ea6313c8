//! Stored responses belong to the key that created them: a `previous_response_id`, or a
//! retrieval or deletion of `/v1/responses/{id}`, only resolves on the organization (key) that
//! made the response. The gateway remembers which key that was: a bounded map in this process
//! (oldest forgotten first), and, with Redis, a key per response shared by every replica.

use super::store::HealthStore;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// How many responses one process remembers.
const CAPACITY: usize = 100_000;

/// Response id → the bucket id of the key that created it.
#[derive(Debug)]
pub struct Pins {
    local: Mutex<Local>,
    shared: Arc<dyn HealthStore>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Local {
    keys: HashMap<Box<str>, Arc<str>>,
    order: VecDeque<Box<str>>,
}

impl Pins {
    /// A map shared through `shared` (nothing is shared by the memory store).
    pub fn new(shared: Arc<dyn HealthStore>) -> Self {
        Self::with_capacity(shared, CAPACITY)
    }

    fn with_capacity(shared: Arc<dyn HealthStore>, capacity: usize) -> Self {
        Pins {
            local: Mutex::default(),
            shared,
            capacity,
        }
    }

    /// Records that key `key` (a bucket id) created response `id`.
    pub fn record(&self, id: &str, key: Arc<str>) {
        {
            let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
            if local.keys.insert(id.into(), Arc::clone(&key)).is_none() {
                local.order.push_back(id.into());
            }
            while local.order.len() > self.capacity {
                if let Some(old) = local.order.pop_front() {
                    local.keys.remove(&old);
                }
            }
        }
        self.shared.pin(id, &key);
    }

    /// The bucket id of the key that created response `id`, when known here or to a replica.
    pub async fn key_of(&self, id: &str) -> Option<Arc<str>> {
        let local = {
            let local = self.local.lock().unwrap_or_else(|p| p.into_inner());
            local.keys.get(id).cloned()
        };
        match local {
            Some(key) => Some(key),
            None => self.shared.pinned(id).await.map(Arc::from),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn remembers_the_newest_responses_only() {
        let pins = Pins::with_capacity(Arc::new(super::super::store::MemoryHealth), 2);
        pins.record("resp_1", Arc::from("k:p:a"));
        pins.record("resp_2", Arc::from("k:p:b"));
        assert_eq!(pins.key_of("resp_1").await.as_deref(), Some("k:p:a"));
        pins.record("resp_3", Arc::from("k:p:a"));
        assert_eq!(pins.key_of("resp_1").await, None, "the oldest is forgotten");
        assert_eq!(pins.key_of("resp_2").await.as_deref(), Some("k:p:b"));
        assert_eq!(pins.key_of("resp_3").await.as_deref(), Some("k:p:a"));
        pins.record("resp_2", Arc::from("k:p:c"));
        assert_eq!(pins.key_of("resp_2").await.as_deref(), Some("k:p:c"));
    }
}
