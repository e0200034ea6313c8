//! Who owns each object created through the gateway: its id → the client that created it and
//! the upstream key (bucket id) whose organization holds it. A bounded map in this process
//! (oldest forgotten first, each record expiring with its object), and, with Redis, a key per
//! object shared by every replica (`{prefix}:obj:{id}`, expiring likewise).

use crate::key_pool::store::HealthStore;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// How many objects one process remembers.
const CAPACITY: usize = 100_000;

/// How long a record lives when the provider gives its object no lifetime: OpenAI keeps
/// stored responses 30 days; files and other objects live until deleted, so a year.
pub const RESPONSE_LIFETIME: u64 = 30 * 24 * 3600;
/// See [`RESPONSE_LIFETIME`].
pub const OBJECT_LIFETIME: u64 = 365 * 24 * 3600;

/// Who owns an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The bucket id of the upstream key that created it.
    pub key: Arc<str>,
    /// The client that created it (its bucket id, `c:<name>`); `None` in open mode.
    pub client: Option<Arc<str>>,
}

impl Owner {
    /// As stored in Redis: `key\nclient`.
    fn encode(&self) -> String {
        format!(
            "{}\n{}",
            self.key,
            self.client.as_deref().unwrap_or_default()
        )
    }

    fn decode(value: &str) -> Option<Owner> {
        let (key, client) = value.split_once('\n').unwrap_or((value, ""));
        (!key.is_empty()).then(|| Owner {
            key: Arc::from(key),
            client: (!client.is_empty()).then(|| Arc::from(client)),
        })
    }
}

/// Object id → [`Owner`].
#[derive(Debug)]
pub struct Records {
    local: Mutex<Local>,
    shared: Arc<dyn HealthStore>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Local {
    owners: HashMap<Box<str>, (Owner, u64)>,
    order: VecDeque<Box<str>>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Records {
    /// A map shared through `shared` (nothing is shared by the memory store).
    pub fn new(shared: Arc<dyn HealthStore>) -> Self {
        Self::with_capacity(shared, CAPACITY)
    }

    fn with_capacity(shared: Arc<dyn HealthStore>, capacity: usize) -> Self {
        Records {
            local: Mutex::default(),
            shared,
            capacity,
        }
    }

    /// Records that `owner` created object `id`, which the provider keeps until `expires`
    /// (unix seconds).
    pub fn record(&self, id: &str, owner: Owner, expires: u64) {
        let ttl = expires.saturating_sub(unix_now());
        if ttl == 0 || id.is_empty() {
            return;
        }
        self.shared.pin(id, &owner.encode(), ttl);
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        if local.owners.insert(id.into(), (owner, expires)).is_none() {
            local.order.push_back(id.into());
        }
        while local.order.len() > self.capacity {
            if let Some(old) = local.order.pop_front() {
                local.owners.remove(&old);
            }
        }
    }

    /// Who owns object `id`, when it is known here or to a replica and has not expired.
    pub async fn owner_of(&self, id: &str) -> Option<Owner> {
        let local = {
            let local = self.local.lock().unwrap_or_else(|p| p.into_inner());
            local.owners.get(id).cloned()
        };
        match local {
            Some((owner, expires)) if expires > unix_now() => Some(owner),
            Some(_) => None,
            None => Owner::decode(&self.shared.pinned(id).await?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(key: &str, client: Option<&str>) -> Owner {
        Owner {
            key: Arc::from(key),
            client: client.map(Arc::from),
        }
    }

    #[tokio::test]
    async fn remembers_the_newest_objects_only_until_they_expire() {
        let records = Records::with_capacity(Arc::new(crate::key_pool::store::MemoryHealth), 2);
        let later = unix_now() + 3600;
        records.record("resp_1", owner("k:p:a", Some("c:team-a")), later);
        records.record("resp_2", owner("k:p:b", None), later);
        assert_eq!(
            records.owner_of("resp_1").await,
            Some(owner("k:p:a", Some("c:team-a")))
        );
        records.record("resp_3", owner("k:p:a", None), later);
        assert_eq!(
            records.owner_of("resp_1").await,
            None,
            "the oldest is forgotten"
        );
        assert_eq!(records.owner_of("resp_2").await, Some(owner("k:p:b", None)));
        records.record("resp_2", owner("k:p:c", None), later);
        assert_eq!(records.owner_of("resp_2").await, Some(owner("k:p:c", None)));
        records.record("file-old", owner("k:p:a", None), unix_now() - 1);
        assert_eq!(
            records.owner_of("file-old").await,
            None,
            "expired: not kept"
        );
    }

    #[test]
    fn owners_round_trip_through_their_shared_form() {
        for o in [owner("k:p:a", Some("c:team-a")), owner("k:p:a", None)] {
            assert_eq!(Owner::decode(&o.encode()), Some(o));
        }
        assert_eq!(Owner::decode(""), None);
    }
}
