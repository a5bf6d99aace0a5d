//! Shared state on Redis, for several replicas (`[state] redis_url`).
//!
//! One multiplexed connection (redis-rs's connection manager, which reconnects by itself),
//! every key under `key_prefix` and with a TTL, and every read-modify-write done atomically
//! in one Lua script, so two replicas can never both use a `/go/` id or both take the last
//! token of a rate limit. Times inside scripts come from Redis's own clock (`TIME`), so
//! replicas with skewed clocks still agree.
//!
//! Redis down or slow never fails a request. Every call is bounded by a short timeout; the
//! first failure marks the store unhealthy (a warning in the log, `portal_bot_redis_up` 0),
//! after which calls don't wait on Redis at all but fall back at once (each counted in
//! `portal_bot_state_fallbacks_total{op}`): deliveries are checked against this process's
//! memory alone (and answered only where the platform routes the answer to the asker), rate
//! limits are this process's own, jobs are kept in this process, `/go/` ids are neither issued
//! (the asker gets a link minted directly) nor used (the page says "try again"). A background
//! probe PINGs every second and marks the store healthy again when Redis answers: recovery
//! needs no restart.
//!
//! Keys (`P` = `key_prefix`):
//!
//! | key | what | TTL |
//! | --- | --- | --- |
//! | `P seen:{delivery}` | a delivery claimed by one replica (and remembered by it in memory too) | 10-15 min (the platform's redelivery window) |
//! | `P rl:{platform}:{user}` | token bucket: `tokens`, `ts` | 60 s (a full refill) |
//! | `P pause:planhat` | Planhat said 429 | Retry-After |
//! | `P go:{digest}` | `/go/` id's record under the id's keyed digest: sealed claim, `exp`, `used`, click, browsers seen | 2 × its lifetime |
//! | `P planhat-calls:{second}` | Planhat calls the cluster made in that second (the shared budget) | 70 s |
//! | `P rec:{kind}:{id}` | approval requests, decisions (written once) and grants, sealed | the request's or grant's lifetime |
//! | `P jobs:due`, `P jobs:data` | scheduled jobs (Discord expiry edits) by due time, and their payloads | 15 min past the last job's due time |

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::memory::MemoryState;
use crate::core::metrics::Metrics;
use crate::core::onetime::GoError;
use crate::core::secret::Secret;
use crate::core::state::{
    Admission, Delivery, Due, GoRecord, SharedState, Sighting, StateError, MAX_SIGHTINGS,
};
use crate::shutdown::Shutdown;
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

/// How long one Redis call may take before the store counts as unavailable. Loopback or a
/// nearby Redis answers in well under a millisecond, a busy one in a few; the chat's
/// 3 seconds must survive a dead one (only the first call waits this long: after it the store
/// counts as down until the probe hears from it).
pub const CALL_TIMEOUT: Duration = Duration::from_millis(500);
/// How often the health probe PINGs.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Jobs' keys outlive the last job by this much (a Discord interaction token's life).
const JOBS_GRACE: Duration = Duration::from_secs(15 * 60);

const ADMIT: &str = r"
local pause = redis.call('PTTL', KEYS[2])
if pause < 0 then pause = 0 end
if ARGV[2] == '0' then return {0, pause} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cap = tonumber(ARGV[1])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or cap
local ts = tonumber(b[2]) or now
tokens = math.min(cap, tokens + math.max(0, now - ts) * cap / 60000)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) * 60000 / cap) end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], 60000)
return {wait, pause}
";

const PAUSE: &str = r"
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 1
";

/// Fields: `c` the sealed record (opaque here), `exp` when it stops working, `used`, `clk` its
/// asker's click (Slack's time, ms), `seen` the browsers seen before it was armed
/// (`client:began,…`), `crowd` more of them than are kept. Times are Redis's own, in ms.
const GO_ISSUE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'c', ARGV[1], 'exp', now + tonumber(ARGV[2]), 'used', '0')
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[2]))
return 1
";

/// Checks that the record is usable and answers {state, sealed, clk, seen, crowd}. ARGV[1] =
/// '1' to use it up; ARGV[2] = a browser to note ('' for none), ARGV[3] = when its request
/// began, ARGV[4] = the arming window (ms), ARGV[5] = how many browsers are kept. A browser is
/// noted once (its first request), and only while the record is not armed.
const GO_LOOK: &str = r"
local h = redis.call('HMGET', KEYS[1], 'c', 'exp', 'used', 'clk', 'seen', 'crowd')
if not h[1] then return {'unknown'} end
if h[3] == '1' then return {'used'} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now >= tonumber(h[2]) then return {'expired'} end
local seen = h[5] or ''
local crowd = h[6] or '0'
if ARGV[2] ~= '' then
  local clk = tonumber(h[4] or '')
  local armed = clk ~= nil and now <= clk + tonumber(ARGV[4])
  if not armed and not string.find(',' .. seen, ',' .. ARGV[2] .. ':', 1, true) then
    local count = 0
    for _ in string.gmatch(seen, '[^,]+') do count = count + 1 end
    if count >= tonumber(ARGV[5]) then
      crowd = '1'
      redis.call('HSET', KEYS[1], 'crowd', '1')
    else
      if seen == '' then seen = ARGV[2] .. ':' .. ARGV[3] else seen = seen .. ',' .. ARGV[2] .. ':' .. ARGV[3] end
      redis.call('HSET', KEYS[1], 'seen', seen)
    end
  end
end
if ARGV[1] == '1' then redis.call('HSET', KEYS[1], 'used', '1') end
return {'ok', h[1], h[4] or '', seen, crowd}
";

/// ARGV[1] = Slack's time of the asker's click (ms). Arms a usable record.
const GO_ARM: &str = r"
local h = redis.call('HMGET', KEYS[1], 'c', 'exp', 'used')
if not h[1] or h[3] == '1' then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now >= tonumber(h[2]) then return 0 end
redis.call('HSET', KEYS[1], 'clk', ARGV[1])
return 1
";

const GO_RELEASE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'used', '0') end
return 1
";

/// Planhat's calls per second for the cluster: KEYS[1] is the prefix of the per-second keys;
/// ARGV[1] calls to add to this second. Answers the last 60 seconds' total.
const BUDGET: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1])
local add = tonumber(ARGV[1])
if add > 0 then
  redis.call('INCRBY', KEYS[1] .. now, add)
  redis.call('EXPIRE', KEYS[1] .. now, 70)
end
local total = 0
for s = now - 59, now do
  local v = redis.call('GET', KEYS[1] .. s)
  if v then total = total + tonumber(v) end
end
return total
";

const SCHEDULE: &str = r"
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
local ttl = tonumber(ARGV[4])
for i = 1, 2 do
  if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
end
return 1
";

const TAKE_DUE: &str = r"
local ks = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, k in ipairs(ks) do
  local p = redis.call('HGET', KEYS[2], k)
  redis.call('ZREM', KEYS[1], k)
  redis.call('HDEL', KEYS[2], k)
  if p then table.insert(out, k); table.insert(out, p) end
end
return out
";

/// The Redis store, with an in-process fallback for while Redis can't be reached.
pub struct RedisState {
    conn: ConnectionManager,
    prefix: String,
    healthy: Arc<AtomicBool>,
    fallback: MemoryState,
    metrics: Arc<Metrics>,
    admit: Script,
    pause: Script,
    go_issue: Script,
    go_look: Script,
    go_arm: Script,
    go_release: Script,
    schedule: Script,
    take_due: Script,
    budget: Script,
}

/// Why the store could not be built (a URL redis-rs can't use). Never echoes the URL: it may
/// hold a password.
#[derive(Debug, thiserror::Error)]
#[error("state.redis_url: {0}")]
pub struct RedisConfigError(String);

impl RedisState {
    /// Builds the store (no network call: the connection is made on first use) and starts the
    /// health probe, which ends on `shutdown` or when the store is dropped. `healthy` is the
    /// readiness flag it keeps up to date.
    pub fn start(
        url: &Secret,
        prefix: &str,
        fallback: MemoryState,
        metrics: Arc<Metrics>,
        healthy: Arc<AtomicBool>,
        shutdown: Shutdown,
    ) -> Result<Arc<RedisState>, RedisConfigError> {
        let client = redis::Client::open(url.expose())
            .map_err(|e| RedisConfigError(format!("not a usable Redis URL ({:?})", e.kind())))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT * 4))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| RedisConfigError(format!("cannot set up the connection ({e})")))?;
        let state = Arc::new(RedisState {
            conn,
            prefix: prefix.to_string(),
            healthy,
            fallback,
            metrics,
            admit: Script::new(ADMIT),
            pause: Script::new(PAUSE),
            go_issue: Script::new(GO_ISSUE),
            go_look: Script::new(GO_LOOK),
            go_arm: Script::new(GO_ARM),
            go_release: Script::new(GO_RELEASE),
            schedule: Script::new(SCHEDULE),
            take_due: Script::new(TAKE_DUE),
            budget: Script::new(BUDGET),
        });
        tokio::spawn(probe(Arc::downgrade(&state), shutdown));
        Ok(state)
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut k = self.prefix.clone();
        for p in parts {
            k.push_str(p);
        }
        k
    }

    fn up(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Runs one Redis call within [`CALL_TIMEOUT`]; a failure marks the store unhealthy.
    async fn call<T, F>(&self, op: &'static str, f: F) -> Result<T, StateError>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if !self.up() {
            return Err(self.fell_back(op, None));
        }
        match tokio::time::timeout(CALL_TIMEOUT, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.fell_back(op, Some(e.to_string()))),
            Err(_) => Err(self.fell_back(
                op,
                Some(format!("no answer within {}ms", CALL_TIMEOUT.as_millis())),
            )),
        }
    }

    /// Counts a fallback; on the first failure, marks the store down and says so once.
    fn fell_back(&self, op: &'static str, error: Option<String>) -> StateError {
        self.metrics.state_fallback(op);
        if let Some(error) = error {
            tracing::debug!(op, "a Redis call failed");
            self.mark(Some(error.clone()));
            return StateError::Unavailable(error);
        }
        StateError::Unavailable("Redis is down".into())
    }

    /// Loads every script into Redis (after a connect or a Redis restart), so that no request
    /// pays the extra round trips of a script Redis doesn't know yet.
    async fn load_scripts(&self) -> Result<(), String> {
        let mut conn = self.conn.clone();
        for script in [
            &self.admit,
            &self.pause,
            &self.go_issue,
            &self.go_look,
            &self.go_arm,
            &self.go_release,
            &self.schedule,
            &self.take_due,
            &self.budget,
        ] {
            tokio::time::timeout(CALL_TIMEOUT, script.prepare_invoke().load_async(&mut conn))
                .await
                .map_err(|_| "loading scripts timed out".to_string())?
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Records a probe's outcome (`None`: Redis answered), saying so when it changes.
    fn mark(&self, error: Option<String>) {
        match error {
            None => {
                if !self.healthy.swap(true, Ordering::Relaxed) {
                    self.metrics.redis_up(true);
                    tracing::info!("Redis answers: shared state is on");
                }
            }
            Some(error) => {
                if self.healthy.swap(false, Ordering::Relaxed) {
                    self.metrics.redis_up(false);
                    tracing::warn!(%error, "Redis is unavailable: falling back to this process's own state until it answers again");
                }
            }
        }
    }

    async fn ping_now(&self) -> Result<(), String> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(
            CALL_TIMEOUT * 2,
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "no answer within {}ms",
                (CALL_TIMEOUT * 2).as_millis()
            )),
        }
    }

    /// Runs [`GO_LOOK`]: looks at the record under `name` (noting `seen`), or uses it up.
    async fn go_look(
        &self,
        name: &str,
        take: bool,
        seen: Option<Sighting>,
        arm_window: Duration,
    ) -> Result<GoRecord, GoError> {
        let key = self.key(&["go:", name]);
        let mut conn = self.conn.clone();
        let op = if take { "go_take" } else { "go_look" };
        let (client, began) = match seen {
            Some(s) => (s.client.to_string(), s.began_ms.to_string()),
            None => (String::new(), String::new()),
        };
        let answer: Vec<String> = self
            .call(op, async {
                self.go_look
                    .key(&key)
                    .arg(if take { "1" } else { "0" })
                    .arg(&client)
                    .arg(&began)
                    .arg(ms(arm_window))
                    .arg(MAX_SIGHTINGS)
                    .invoke_async(&mut conn)
                    .await
            })
            .await
            .map_err(|_| GoError::Unavailable)?;
        let mut it = answer.into_iter();
        match it.next().as_deref() {
            Some("ok") => {
                let (sealed, clicked, seen, crowd) = (it.next(), it.next(), it.next(), it.next());
                Ok(GoRecord {
                    sealed: sealed.unwrap_or_default(),
                    clicked_ms: clicked.and_then(|c| c.parse().ok()),
                    sightings: seen.as_deref().map(parse_sightings).unwrap_or_default(),
                    crowded: crowd.as_deref() == Some("1"),
                })
            }
            Some("used") => Err(GoError::Used),
            Some("expired") => Err(GoError::Expired),
            _ => Err(GoError::Unknown),
        }
    }
}

/// `client:began,…` as [`GO_LOOK`] keeps it (anything unreadable is skipped).
fn parse_sightings(text: &str) -> Vec<Sighting> {
    text.split(',')
        .filter_map(|pair| {
            let (client, began) = pair.split_once(':')?;
            Some(Sighting {
                client: client.parse().ok()?,
                began_ms: began.parse().ok()?,
            })
        })
        .collect()
}

/// Marks the store healthy or not, every [`PROBE_EVERY`], until shutdown or the store is gone.
async fn probe(state: Weak<RedisState>, mut shutdown: Shutdown) {
    loop {
        let Some(s) = state.upgrade() else { return };
        let mut answer = s.ping_now().await;
        if answer.is_ok() && !s.up() {
            // Coming (back) up: Redis may have restarted empty of scripts.
            answer = s.load_scripts().await;
        }
        s.mark(answer.err());
        drop(s);
        tokio::select! {
            _ = tokio::time::sleep(PROBE_EVERY) => {}
            _ = shutdown.fired() => return,
        }
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn ms(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

/// Only the fallback is in this process.
impl crate::core::held::Holds for RedisState {
    fn held(&self, out: &mut Vec<crate::core::held::Held>) {
        self.fallback.held(out);
    }
}

#[async_trait]
impl SharedState for RedisState {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn claim_delivery(&self, id: &str, ttl: Duration) -> Delivery {
        // Written through to this process's own memory as well: during a Redis outage this
        // replica still knows what it answered.
        let here_first = self.fallback.claim_sync(id, ttl);
        if !self.up() {
            self.metrics.state_fallback("dedupe");
            return if here_first {
                Delivery::Unchecked
            } else {
                Delivery::Duplicate
            };
        }
        let key = self.key(&["seen:", id]);
        let mut conn = self.conn.clone();
        let set = self
            .call("dedupe", async {
                redis::cmd("SET")
                    .arg(&key)
                    .arg("1")
                    .arg("NX")
                    .arg("PX")
                    .arg(ms(ttl))
                    .query_async::<Option<String>>(&mut conn)
                    .await
            })
            .await;
        match set {
            Ok(Some(_)) => Delivery::First,
            Ok(None) => Delivery::Duplicate,
            Err(_) if here_first => Delivery::Unchecked,
            Err(_) => Delivery::Duplicate,
        }
    }

    async fn admit(&self, key: &str, per_minute: u32, count: bool) -> Admission {
        let (bucket, pause) = (self.key(&["rl:", key]), self.key(&["pause:planhat"]));
        let mut conn = self.conn.clone();
        let answer: Result<(u64, i64), _> = self
            .call("rate_limit", async {
                self.admit
                    .key(&bucket)
                    .key(&pause)
                    .arg(per_minute.max(1))
                    .arg(if count { "1" } else { "0" })
                    .invoke_async(&mut conn)
                    .await
            })
            .await;
        match answer {
            Ok((wait, paused)) => Admission {
                retry_after: (wait > 0).then(|| Duration::from_secs(wait.div_ceil(1000))),
                planhat_paused: (paused > 0).then(|| Duration::from_millis(paused as u64)),
            },
            Err(_) => self.fallback.admit_sync(key, count),
        }
    }

    async fn pause_planhat(&self, wait: Duration) {
        let key = self.key(&["pause:planhat"]);
        let mut conn = self.conn.clone();
        let _ = self
            .call("pause", async {
                self.pause
                    .key(&key)
                    .arg(ms(wait))
                    .invoke_async::<i64>(&mut conn)
                    .await
            })
            .await;
    }

    async fn issue_go(
        &self,
        name: &str,
        sealed: &str,
        lifetime: Duration,
    ) -> Result<(), StateError> {
        let key = self.key(&["go:", name]);
        let mut conn = self.conn.clone();
        self.call("go_issue", async {
            self.go_issue
                .key(&key)
                .arg(sealed)
                .arg(ms(lifetime))
                .invoke_async::<i64>(&mut conn)
                .await
        })
        .await
        .map(|_| ())
    }

    async fn look_go(
        &self,
        name: &str,
        seen: Option<Sighting>,
        arm_window: Duration,
    ) -> Result<GoRecord, GoError> {
        self.go_look(name, false, seen, arm_window).await
    }

    // Records are not written through to memory: a decision taken in one replica's memory
    // during an outage could be taken again in another's. Unavailable means "try again".
    async fn put_record(&self, key: &str, value: &str, ttl: Duration) -> Result<(), StateError> {
        let key = self.key(&["rec:", key]);
        let mut conn = self.conn.clone();
        self.call("record_put", async {
            redis::cmd("SET")
                .arg(&key)
                .arg(value)
                .arg("PX")
                .arg(ms(ttl).max(1))
                .query_async::<Option<String>>(&mut conn)
                .await
        })
        .await
        .map(|_| ())
    }

    async fn put_record_once(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<bool, StateError> {
        let key = self.key(&["rec:", key]);
        let mut conn = self.conn.clone();
        self.call("record_put", async {
            redis::cmd("SET")
                .arg(&key)
                .arg(value)
                .arg("NX")
                .arg("PX")
                .arg(ms(ttl).max(1))
                .query_async::<Option<String>>(&mut conn)
                .await
        })
        .await
        .map(|set| set.is_some())
    }

    async fn get_record(&self, key: &str) -> Result<Option<String>, StateError> {
        let key = self.key(&["rec:", key]);
        let mut conn = self.conn.clone();
        self.call("record_get", async {
            redis::cmd("GET")
                .arg(&key)
                .query_async::<Option<String>>(&mut conn)
                .await
        })
        .await
    }

    async fn take_go(&self, name: &str) -> Result<GoRecord, GoError> {
        self.go_look(name, true, None, Duration::ZERO).await
    }

    async fn arm_go(&self, name: &str, clicked_ms: u64) -> bool {
        let key = self.key(&["go:", name]);
        let mut conn = self.conn.clone();
        self.call("go_arm", async {
            self.go_arm
                .key(&key)
                .arg(clicked_ms)
                .invoke_async::<i64>(&mut conn)
                .await
        })
        .await
        .is_ok_and(|armed| armed == 1)
    }

    async fn release_go(&self, name: &str) {
        let key = self.key(&["go:", name]);
        let mut conn = self.conn.clone();
        let _ = self
            .call("go_release", async {
                self.go_release
                    .key(&key)
                    .invoke_async::<i64>(&mut conn)
                    .await
            })
            .await;
    }

    async fn schedule(&self, key: &str, due: SystemTime, payload: &str) -> Result<(), StateError> {
        let (zset, data) = (self.key(&["jobs:due"]), self.key(&["jobs:data"]));
        let ttl = due.duration_since(SystemTime::now()).unwrap_or_default() + JOBS_GRACE;
        let mut conn = self.conn.clone();
        let stored = self
            .call("schedule", async {
                self.schedule
                    .key(&zset)
                    .key(&data)
                    .arg(key)
                    .arg(unix_ms(due))
                    .arg(payload)
                    .arg(ms(ttl))
                    .invoke_async::<i64>(&mut conn)
                    .await
            })
            .await;
        match stored {
            Ok(_) => {
                // A job of the same key kept here while Redis was down is superseded.
                self.fallback.cancel_sync(key);
                Ok(())
            }
            // Nothing lost: this process keeps the job and runs it itself.
            Err(_) => self.fallback.schedule_sync(key, due, payload),
        }
    }

    async fn cancel(&self, key: &str) {
        self.fallback.cancel_sync(key);
        let (zset, data) = (self.key(&["jobs:due"]), self.key(&["jobs:data"]));
        let mut conn = self.conn.clone();
        let _ = self
            .call("cancel", async {
                redis::pipe()
                    .atomic()
                    .cmd("ZREM")
                    .arg(&zset)
                    .arg(key)
                    .ignore()
                    .cmd("HDEL")
                    .arg(&data)
                    .arg(key)
                    .ignore()
                    .query_async::<()>(&mut conn)
                    .await
            })
            .await;
    }

    async fn take_due(&self, now: SystemTime, max: usize) -> Vec<Due> {
        let mut due = self.fallback.take_due_sync(now, max);
        if due.len() >= max || !self.up() {
            return due;
        }
        let (zset, data) = (self.key(&["jobs:due"]), self.key(&["jobs:data"]));
        let mut conn = self.conn.clone();
        let taken: Result<Vec<String>, _> = self
            .call("take_due", async {
                self.take_due
                    .key(&zset)
                    .key(&data)
                    .arg(unix_ms(now))
                    .arg(max - due.len())
                    .invoke_async(&mut conn)
                    .await
            })
            .await;
        if let Ok(flat) = taken {
            let mut it = flat.into_iter();
            while let (Some(key), Some(payload)) = (it.next(), it.next()) {
                due.push(Due { key, payload });
            }
        }
        due
    }

    async fn next_due(&self) -> Option<SystemTime> {
        let local = self.fallback.next_due_sync();
        if !self.up() {
            return local;
        }
        let zset = self.key(&["jobs:due"]);
        let mut conn = self.conn.clone();
        let first: Option<(String, u64)> = self
            .call("next_due", async {
                redis::cmd("ZRANGE")
                    .arg(&zset)
                    .arg(0)
                    .arg(0)
                    .arg("WITHSCORES")
                    .query_async::<Vec<(String, u64)>>(&mut conn)
                    .await
            })
            .await
            .ok()
            .and_then(|v| v.into_iter().next());
        let remote = first.map(|(_, at)| UNIX_EPOCH + Duration::from_millis(at));
        match (local, remote) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    async fn count_planhat_calls(&self, calls: u64) -> Option<u64> {
        let prefix = self.key(&["planhat-calls:"]);
        let mut conn = self.conn.clone();
        self.call("budget", async {
            self.budget
                .key(&prefix)
                .arg(calls)
                .invoke_async::<u64>(&mut conn)
                .await
        })
        .await
        .ok()
    }

    fn housekeep(&self) {
        self.fallback.housekeep();
    }

    async fn ping(&self) -> Result<(), StateError> {
        let mut answer = self.ping_now().await;
        if answer.is_ok() && !self.up() {
            answer = self.load_scripts().await;
        }
        self.mark(answer.as_ref().err().cloned());
        answer.map_err(StateError::Unavailable)
    }
}
