//! Where replicas share key health (cooldowns and disablements), like `rate_limit`'s bucket
//! store: in memory one process's pools are the whole view, so nothing is shared; with Redis
//! every replica publishes what it learns and pulls what the others learned.

use crate::rate_limit::redis_store::RedisStore;
use crate::rate_limit::{unix_ms, SharedHealth};
use futures_util::future::BoxFuture;
use std::sync::Arc;

/// A store of key health shared by replicas. Keys are named by their bucket id.
pub trait HealthStore: Send + Sync + std::fmt::Debug {
    /// Records that key `id` is cooling or disabled; never makes the caller wait.
    fn publish(&self, id: &str, health: SharedHealth);
    /// What is recorded for `ids` (`None` when nothing is shared or the store is down).
    fn fetch<'a>(&'a self, ids: &'a [&'a str]) -> BoxFuture<'a, Option<Vec<Option<SharedHealth>>>>;
    /// Whether anything is shared (a pull loop is worth running).
    fn is_shared(&self) -> bool;
    /// Records `object`'s owner (encoded) for `ttl_secs`; never makes the caller wait.
    fn pin(&self, object: &str, owner: &str, ttl_secs: u64);
    /// `object`'s owner as another replica recorded it.
    fn pinned<'a>(&'a self, object: &'a str) -> BoxFuture<'a, Option<String>>;
}

/// One process: its pools are the only view, nothing to share.
#[derive(Debug, Default)]
pub struct MemoryHealth;

impl HealthStore for MemoryHealth {
    fn publish(&self, _: &str, _: SharedHealth) {}
    fn fetch<'a>(&'a self, _: &'a [&'a str]) -> BoxFuture<'a, Option<Vec<Option<SharedHealth>>>> {
        Box::pin(std::future::ready(None))
    }
    fn is_shared(&self) -> bool {
        false
    }
    fn pin(&self, _: &str, _: &str, _: u64) {}
    fn pinned<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Option<String>> {
        Box::pin(std::future::ready(None))
    }
}

/// Key health in Redis, next to the buckets (same connection, same outage handling).
#[derive(Debug)]
pub struct RedisHealth {
    redis: Arc<RedisStore>,
}

impl RedisHealth {
    /// A store on `redis`.
    pub fn new(redis: Arc<RedisStore>) -> Self {
        RedisHealth { redis }
    }
}

impl HealthStore for RedisHealth {
    fn publish(&self, id: &str, health: SharedHealth) {
        let (redis, id) = (Arc::clone(&self.redis), id.to_owned());
        let now_ms = unix_ms();
        // In the background: the request does not wait for Redis.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { redis.publish_health(&id, health, now_ms).await });
        }
    }
    fn fetch<'a>(&'a self, ids: &'a [&'a str]) -> BoxFuture<'a, Option<Vec<Option<SharedHealth>>>> {
        Box::pin(self.redis.fetch_health(ids))
    }
    fn is_shared(&self) -> bool {
        true
    }
    fn pin(&self, object: &str, owner: &str, ttl_secs: u64) {
        let (redis, object, owner) = (Arc::clone(&self.redis), object.to_owned(), owner.to_owned());
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { redis.pin_object(&object, &owner, ttl_secs).await });
        }
    }
    fn pinned<'a>(&'a self, object: &'a str) -> BoxFuture<'a, Option<String>> {
        Box::pin(self.redis.pinned_object(object))
    }
}

/// The store for a limiter's backend: Redis when buckets are in Redis, else memory.
pub fn for_limiter(limiter: &crate::rate_limit::Limiter) -> Arc<dyn HealthStore> {
    match limiter.redis() {
        Some(redis) => Arc::new(RedisHealth::new(redis)),
        None => Arc::new(MemoryHealth),
    }
}
