//! Buckets in Redis, shared by every replica: one atomic Lua script per operation (one round
//! trip), keys namespaced under the configured prefix and expiring after two idle minutes.
//! Any error or a call slower than `redis_timeout` marks the store degraded: callers fall back
//! to local buckets, a warning is logged once per outage, the gauge shows it, and Redis is
//! tried again at most once a second until it answers.

use super::{Dimension, Level, Levels, Limits, Refused, MAX_TOKENS};
use crate::config::StateSettings;
use crate::metrics::Metrics;
use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

// Every level is kept within -cap ..= cap (at most one minute of debt), on load too, so a
// level stored by an older gateway cannot lock a bucket; counts arrive as integers 0 ..= 2^53
// (deltas within ±2^53), which Lua's numbers hold exactly.
const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local mode = ARGV[1]
local rpm = tonumber(ARGV[2])
local tpm = tonumber(ARGV[3])
local function clamp(level, cap)
  if level ~= level or level > cap then return cap end
  if level < -cap then return -cap end
  return level
end
local function count(i)
  local n = tonumber(ARGV[i]) or 0
  if n < 0 then n = 0 end
  return n
end
local function load(key, cap)
  local v = redis.call('HMGET', key, 'l', 't')
  local level = tonumber(v[1])
  if level == nil then return cap end
  local elapsed = now - (tonumber(v[2]) or now)
  if elapsed < 0 then elapsed = 0 end
  return clamp(level + elapsed * cap / 60000, cap)
end
local function save(key, level)
  redis.call('HSET', key, 'l', tostring(level), 't', now)
  redis.call('PEXPIRE', key, 120000)
end
if mode == 'take2' then
  -- KEYS: the client's r, t, the key's r, t; ARGV[2..4]: the client's rpm, tpm, tokens;
  -- ARGV[5..7]: the key's. Both buckets take, or neither: {1, client r, t, key r, t} left,
  -- or {0, side (1 client, 2 key), requests wait, tokens wait}.
  local function check(ki, rpm, tpm, n)
    local r, k = nil, nil
    if rpm > 0 then r = load(KEYS[ki], rpm) end
    if tpm > 0 then k = load(KEYS[ki + 1], tpm) end
    local rw, kw = 0, 0
    if r and r < 1 then rw = math.ceil((1 - r) * 60000 / rpm) end
    if k then
      if n > tpm then kw = -1 elseif k < n then kw = math.ceil((n - k) * 60000 / tpm) end
    end
    return r, k, rw, kw
  end
  local function take(ki, r, k, n)
    local rr, kk = -1, -1
    if r then r = r - 1; save(KEYS[ki], r); rr = math.floor(math.max(r, 0)) end
    if k then k = k - n; save(KEYS[ki + 1], k); kk = math.floor(math.max(k, 0)) end
    return rr, kk
  end
  local cn, kn = count(4), count(7)
  local cr, ck, crw, ckw = check(1, tonumber(ARGV[2]), tonumber(ARGV[3]), cn)
  if crw ~= 0 or ckw ~= 0 then return {0, 1, crw, ckw} end
  local kr, kk, krw, kkw = check(3, tonumber(ARGV[5]), tonumber(ARGV[6]), kn)
  if krw ~= 0 or kkw ~= 0 then return {0, 2, krw, kkw} end
  local a, b = take(1, cr, ck, cn)
  local c, d = take(3, kr, kk, kn)
  return {1, a, b, c, d}
end
if mode == 'adjust_many' then
  -- Token buckets only: KEYS are their keys, ARGV[2] the delta, ARGV[2 + i] KEYS[i]'s cap.
  local delta = tonumber(ARGV[2]) or 0
  for i, key in ipairs(KEYS) do
    local cap = tonumber(ARGV[2 + i]) or 0
    if cap > 0 then save(key, clamp(load(key, cap) + delta, cap)) end
  end
  return {1}
end
local r = nil
local k = nil
if rpm > 0 then r = load(KEYS[1], rpm) end
if tpm > 0 then k = load(KEYS[2], tpm) end
if mode == 'take' then
  local n = count(4)
  local rw, kw = 0, 0
  if r and r < 1 then rw = math.ceil((1 - r) * 60000 / rpm) end
  if k then
    if n > tpm then kw = -1 elseif k < n then kw = math.ceil((n - k) * 60000 / tpm) end
  end
  if rw ~= 0 or kw ~= 0 then return {0, rw, kw} end
  if r then r = r - 1; save(KEYS[1], r) end
  if k then k = k - n; save(KEYS[2], k) end
  local rr, kk = -1, -1
  if r then rr = math.floor(math.max(r, 0)) end
  if k then kk = math.floor(math.max(k, 0)) end
  return {1, rr, kk}
elseif mode == 'refund' then
  if r then save(KEYS[1], clamp(r + count(4), rpm)) end
  if k then save(KEYS[2], clamp(k + count(5), tpm)) end
  return {1}
else
  local rr = tonumber(ARGV[4])
  local kk = tonumber(ARGV[5])
  if r and rr >= 0 and rr < r then save(KEYS[1], rr) end
  if k and kk >= 0 and kk < k then save(KEYS[2], kk) end
  return {1}
end
"#;

/// The levels the script reports left (`-1`: that bucket has no limit).
fn levels(rpm: i64, tpm: i64, requests: i64, tokens: i64) -> Levels {
    let level = |cap: i64, remaining: i64| {
        (cap > 0 && remaining >= 0).then(|| Level {
            limit: cap as u64,
            remaining: remaining as u64,
            reset: Duration::from_secs_f64((cap - remaining).max(0) as f64 * 60.0 / cap as f64),
        })
    };
    Levels {
        requests: level(rpm, requests),
        tokens: level(tpm, tokens),
    }
}

/// A refusal from the script's waits (ms; `-1`: never, more than the limit).
fn refused(requests_wait: i64, tokens_wait: i64) -> Refused {
    let wait = |ms: i64| (ms >= 0).then(|| Duration::from_millis(ms as u64));
    let (rw, tw) = (requests_wait, tokens_wait);
    match rw != 0 && (tw == 0 || (tw > 0 && rw >= tw)) {
        true => Refused {
            dimension: Dimension::Requests,
            wait: wait(rw),
        },
        false => Refused {
            dimension: Dimension::Tokens,
            wait: wait(tw),
        },
    }
}

#[derive(Debug)]
pub struct RedisStore {
    client: Option<redis::Client>,
    conn: ArcSwapOption<MultiplexedConnection>,
    connecting: tokio::sync::Mutex<()>,
    timeout: Duration,
    prefix: String,
    degraded: AtomicBool,
    retry_at: Mutex<Option<Instant>>,
    metrics: Metrics,
    script: redis::Script,
}

impl RedisStore {
    pub(super) fn new(state: &StateSettings, metrics: Metrics) -> Self {
        let client = redis::Client::open(state.redis_url.expose()).ok();
        RedisStore {
            client,
            conn: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            timeout: state.redis_timeout,
            prefix: state.key_prefix.clone(),
            degraded: AtomicBool::new(false),
            retry_at: Mutex::new(None),
            metrics,
            script: redis::Script::new(SCRIPT),
        }
    }

    fn keys(&self, id: &str) -> [String; 2] {
        [
            format!("{}:rl:{id}:r", self.prefix),
            format!("{}:rl:{id}:t", self.prefix),
        ]
    }

    fn fail(&self, why: &str) {
        self.conn.store(None);
        *self.retry_at.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Instant::now() + Duration::from_secs(1));
        if !self.degraded.swap(true, Ordering::AcqRel) {
            self.metrics.state_degraded.set(1);
            tracing::warn!(error = why, "redis unreachable: rate limits fall back to local buckets (each replica its share)");
        }
    }

    fn recovered(&self) {
        if self.degraded.swap(false, Ordering::AcqRel) {
            self.metrics.state_degraded.set(0);
            tracing::info!("redis reachable again: shared rate limits restored");
        }
    }

    async fn connection(&self) -> Option<Arc<MultiplexedConnection>> {
        if let Some(c) = self.conn.load_full() {
            return Some(c);
        }
        let retry_at = *self.retry_at.lock().unwrap_or_else(|p| p.into_inner());
        if retry_at.is_some_and(|at| Instant::now() < at) {
            return None;
        }
        // One request reconnects; the others use local buckets meanwhile.
        let _guard = self.connecting.try_lock().ok()?;
        if let Some(c) = self.conn.load_full() {
            return Some(c);
        }
        let Some(client) = &self.client else {
            self.fail("invalid redis_url");
            return None;
        };
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(100))))
            .set_response_timeout(Some(self.timeout));
        match client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(conn) => {
                let conn = Arc::new(conn);
                self.conn.store(Some(conn.clone()));
                Some(conn)
            }
            Err(e) => {
                self.fail(&e.to_string());
                None
            }
        }
    }

    async fn run(&self, id: &str, args: &[i64], mode: &str) -> Option<Vec<i64>> {
        let conn = self.connection().await?;
        let mut conn = (*conn).clone();
        let [rk, tk] = self.keys(id);
        let mut invocation = self.script.key(rk);
        invocation.key(tk).arg(mode);
        for a in args {
            invocation.arg(*a);
        }
        self.settle(invocation.invoke_async::<Vec<i64>>(&mut conn))
            .await
    }

    /// Awaits one Redis call within `redis_timeout`, recording an outage or a recovery.
    async fn settle<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => {
                self.recovered();
                Some(v)
            }
            Ok(Err(e)) => {
                self.fail(&e.to_string());
                None
            }
            Err(_) => {
                self.fail("timed out");
                None
            }
        }
    }

    /// The client's and the key's takes in one call (see the script's `take2`); `None` when
    /// Redis could not answer (use local buckets).
    pub(super) async fn take_pair(
        &self,
        client: (&str, Limits, u64),
        key: (&str, Limits, u64),
    ) -> Option<Result<(Levels, Levels), (super::Side, Refused)>> {
        let conn = self.connection().await?;
        let mut conn = (*conn).clone();
        let mut invocation = self.script.prepare_invoke();
        for (id, _, _) in [client, key] {
            let [rk, tk] = self.keys(id);
            invocation.key(rk).key(tk);
        }
        invocation.arg("take2");
        let caps = |limits: Limits| {
            (
                i64::from(limits.rpm.unwrap_or(0)),
                i64::from(limits.tpm.unwrap_or(0)),
            )
        };
        let ((crpm, ctpm), (krpm, ktpm)) = (caps(client.1), caps(key.1));
        invocation
            .arg(crpm)
            .arg(ctpm)
            .arg(count(client.2))
            .arg(krpm)
            .arg(ktpm)
            .arg(count(key.2));
        let v = self
            .settle(invocation.invoke_async::<Vec<i64>>(&mut conn))
            .await?;
        Some(match v.as_slice() {
            [1, cr, ct, kr, kt] => Ok((levels(crpm, ctpm, *cr, *ct), levels(krpm, ktpm, *kr, *kt))),
            [0, side, rw, tw] => {
                let side = match side {
                    1 => super::Side::Client,
                    _ => super::Side::Key,
                };
                Err((side, refused(*rw, *tw)))
            }
            _ => return None,
        })
    }

    /// `None` when Redis could not answer (use local buckets).
    pub(super) async fn take(
        &self,
        id: &str,
        limits: Limits,
        tokens: u64,
    ) -> Option<Result<Levels, Refused>> {
        let rpm = i64::from(limits.rpm.unwrap_or(0));
        let tpm = i64::from(limits.tpm.unwrap_or(0));
        let v = self.run(id, &[rpm, tpm, count(tokens)], "take").await?;
        Some(match v.as_slice() {
            [1, r, t] => Ok(levels(rpm, tpm, *r, *t)),
            [0, rw, tw] => Err(refused(*rw, *tw)),
            _ => return None,
        })
    }

    /// Adds `delta` tokens to the token bucket of each of `buckets`, in one call (a request's
    /// usage correction of its client's and its key's buckets); `false` when Redis could not
    /// answer.
    pub(super) async fn adjust_many(&self, buckets: &[(&str, Limits)], delta: i64) -> bool {
        let Some(conn) = self.connection().await else {
            return false;
        };
        let mut conn = (*conn).clone();
        let bound = MAX_TOKENS as i64;
        let mut invocation = self.script.prepare_invoke();
        for (id, _) in buckets {
            let [_, tk] = self.keys(id);
            invocation.key(tk);
        }
        invocation
            .arg("adjust_many")
            .arg(delta.clamp(-bound, bound));
        for (_, limits) in buckets {
            invocation.arg(i64::from(limits.tpm.unwrap_or(0)));
        }
        self.settle(invocation.invoke_async::<Vec<i64>>(&mut conn))
            .await
            .is_some()
    }

    /// Gives back requests and tokens an earlier take charged (never above the limits);
    /// `false` when Redis could not answer.
    pub(super) async fn refund(
        &self,
        id: &str,
        limits: Limits,
        requests: u64,
        tokens: u64,
    ) -> bool {
        let args = [
            i64::from(limits.rpm.unwrap_or(0)),
            i64::from(limits.tpm.unwrap_or(0)),
            count(requests),
            count(tokens),
        ];
        self.run(id, &args, "refund").await.is_some()
    }

    /// Lowers levels to reported remaining values; `false` when Redis could not answer.
    pub(super) async fn sync(
        &self,
        id: &str,
        limits: Limits,
        requests: Option<u64>,
        tokens: Option<u64>,
    ) -> bool {
        let known = |v: Option<u64>| v.map_or(-1, count);
        let args = [
            i64::from(limits.rpm.unwrap_or(0)),
            i64::from(limits.tpm.unwrap_or(0)),
            known(requests),
            known(tokens),
        ];
        self.run(id, &args, "sync").await.is_some()
    }
}

/// A count as a script argument: 0 ..= 2^53, exact in Lua, never negative.
fn count(n: u64) -> i64 {
    n.min(MAX_TOKENS) as i64
}

/// What one replica tells the others about a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedHealth {
    /// Rate limited until the Unix time (ms).
    Cooling(u64),
    /// Rejected; the next probe may go at the Unix time (ms).
    Disabled(u64),
    /// Ejected for failing transiently; the next probe may go at the Unix time (ms).
    Ejected(u64),
}

impl RedisStore {
    async fn command<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Option<T> {
        let conn = self.connection().await?;
        let mut conn = (*conn).clone();
        self.settle(cmd.query_async::<T>(&mut conn)).await
    }

    fn health_key(&self, id: &str) -> String {
        format!("{}:kh:{id}", self.prefix)
    }

    /// Records a key's cooldown or disablement for the other replicas (expires with it).
    pub(crate) async fn publish_health(&self, id: &str, health: SharedHealth, now_ms: u64) {
        let (value, until) = match health {
            SharedHealth::Cooling(until) => (format!("cooling:{until}"), until),
            SharedHealth::Disabled(until) => (format!("disabled:{until}"), until),
            SharedHealth::Ejected(until) => (format!("ejected:{until}"), until),
        };
        let ttl = until.saturating_sub(now_ms).max(1);
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.health_key(id)).arg(value).arg("PX").arg(ttl);
        let _: Option<()> = self.command(cmd).await;
    }

    /// Records the owner of object `id` (its key and client, encoded by `ownership::records`)
    /// for as long as the provider keeps the object.
    pub(crate) async fn pin_object(&self, id: &str, owner: &str, ttl_secs: u64) {
        let mut cmd = redis::cmd("SET");
        cmd.arg(format!("{}:obj:{id}", self.prefix))
            .arg(owner)
            .arg("EX")
            .arg(ttl_secs.max(1));
        let _: Option<()> = self.command(cmd).await;
    }

    /// The owner of object `id`, when a replica recorded it.
    pub(crate) async fn pinned_object(&self, id: &str) -> Option<String> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(format!("{}:obj:{id}", self.prefix));
        self.command::<Option<String>>(cmd).await.flatten()
    }

    /// The shared health of `ids`, in order (`None` where nothing is recorded).
    pub(crate) async fn fetch_health(&self, ids: &[&str]) -> Option<Vec<Option<SharedHealth>>> {
        if ids.is_empty() {
            return Some(Vec::new());
        }
        let mut cmd = redis::cmd("MGET");
        for id in ids {
            cmd.arg(self.health_key(id));
        }
        let values: Vec<Option<String>> = self.command(cmd).await?;
        Some(
            values
                .into_iter()
                .map(|v| v.as_deref().and_then(parse_health))
                .collect(),
        )
    }
}

fn parse_health(value: &str) -> Option<SharedHealth> {
    let (kind, until) = value.split_once(':')?;
    let until = until.parse().ok()?;
    match kind {
        "cooling" => Some(SharedHealth::Cooling(until)),
        "disabled" => Some(SharedHealth::Disabled(until)),
        "ejected" => Some(SharedHealth::Ejected(until)),
        _ => None,
    }
}
