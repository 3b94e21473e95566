//! Redis engines for the counters every replica must share: budget counters ([`SpendCounters`])
//! and rate-limit buckets ([`RateBuckets`]). Each operation is one Lua script, so a
//! check-and-reserve across several counters is atomic however many replicas race, and
//! buckets refill on Redis's own clock (`TIME`), not the replicas'.
//!
//! Keys: `{prefix}budget:{budget}:{period_start}:{id}` (a hash of `spent` and `reserved`,
//! expiring 40 days after its last change unless the period is `total`) and
//! `{prefix}rate:{rule}:{id}` (a hash of `requests`, `tokens` and `at`, expiring once idle long
//! enough to be full again).

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::Script;

use crate::budget::{CounterKey, CounterState, Hold, Refusal, SpendCounters};
use crate::ratelimit::{Admission, BucketCheck, BucketView, RateBuckets};
use crate::store::{StoreError, StoreResult};

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

/// Connects (with automatic reconnection) and checks the server answers.
pub async fn connect(url: &str) -> StoreResult<ConnectionManager> {
    let client = redis::Client::open(url).map_err(unavailable)?;
    // A request waits on Redis at most about a second: a failing Redis must degrade limits
    // (see `degrade`), not stall every request behind reconnection retries.
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(200));
    let mut con = ConnectionManager::new_with_config(client, config)
        .await
        .map_err(unavailable)?;
    let _: String = redis::cmd("PING")
        .query_async(&mut con)
        .await
        .map_err(unavailable)?;
    Ok(con)
}

/// Budget counters in Redis.
pub struct RedisCounters {
    con: ConnectionManager,
    prefix: String,
    reserve: Script,
    settle: Script,
    renew: Script,
    read: Script,
}

/// Budget counters of periods other than `total` expire this long after their last change.
const COUNTER_TTL_MS: i64 = 40 * 86_400_000;

/// Reclaims a counter's lapsed holds (their process died mid-request): each hold's amount
/// is kept in the counter's hash as `h:{id}` and its lease in a sorted set beside it.
const RECLAIM_FN: &str = r"
local function reclaim(k, leases, now)
  local lapsed = redis.call('ZRANGEBYSCORE', leases, '-inf', now)
  for _, id in ipairs(lapsed) do
    local amount = tonumber(redis.call('HGET', k, 'h:' .. id)) or 0
    redis.call('HDEL', k, 'h:' .. id)
    redis.call('ZREM', leases, id)
    local r = tonumber(redis.call('HINCRBYFLOAT', k, 'reserved', -amount))
    if r < 1e-12 then redis.call('HSET', k, 'reserved', 0) end
  end
end
";

const RESERVE: &str = r"
-- KEYS: counter, leases, counter, leases... ARGV: amount, hold id, now ms, lease expiry ms,
-- then each counter's limit.
local n = #KEYS / 2
for i = 1, n do
  reclaim(KEYS[2 * i - 1], KEYS[2 * i], ARGV[3])
end
for i = 1, n do
  local v = redis.call('HMGET', KEYS[2 * i - 1], 'spent', 'reserved')
  local spent = tonumber(v[1]) or 0
  local reserved = tonumber(v[2]) or 0
  if spent + reserved >= tonumber(ARGV[4 + i]) then
    return {i, tostring(spent), tostring(reserved)}
  end
end
for i = 1, n do
  local k = KEYS[2 * i - 1]
  redis.call('HINCRBYFLOAT', k, 'reserved', ARGV[1])
  redis.call('HSET', k, 'h:' .. ARGV[2], ARGV[1])
  redis.call('ZADD', KEYS[2 * i], ARGV[4], ARGV[2])
end
return {0}
";

const SETTLE: &str = r"
-- KEYS: counter, leases... ARGV: hold id, actual, then each counter's ttl ms (0: none).
local out = {}
for i = 1, #KEYS / 2 do
  local k = KEYS[2 * i - 1]
  local amount = redis.call('HGET', k, 'h:' .. ARGV[1])
  if amount then
    redis.call('HDEL', k, 'h:' .. ARGV[1])
    redis.call('ZREM', KEYS[2 * i], ARGV[1])
    local r = tonumber(redis.call('HINCRBYFLOAT', k, 'reserved', -tonumber(amount)))
    if r < 1e-12 then redis.call('HSET', k, 'reserved', 0) end
  end
  local before = tonumber(redis.call('HGET', k, 'spent')) or 0
  local after = redis.call('HINCRBYFLOAT', k, 'spent', ARGV[2])
  local ttl = tonumber(ARGV[2 + i])
  if ttl > 0 then redis.call('PEXPIRE', k, ttl) end
  out[#out + 1] = tostring(before)
  out[#out + 1] = after
end
return out
";

const RENEW: &str = r"
-- KEYS: leases... ARGV: hold id, new expiry ms. Only a hold still held is renewed.
for _, leases in ipairs(KEYS) do
  redis.call('ZADD', leases, 'XX', ARGV[2], ARGV[1])
end
return 0
";

const READ: &str = r"
-- KEYS: counter, leases. ARGV: now ms. The counter after reclaiming its lapsed holds.
reclaim(KEYS[1], KEYS[2], ARGV[1])
local v = redis.call('HMGET', KEYS[1], 'spent', 'reserved')
return {v[1] or '0', v[2] or '0'}
";

fn with_reclaim(body: &str) -> Script {
    Script::new(&format!("{RECLAIM_FN}{body}"))
}

impl RedisCounters {
    pub fn new(con: ConnectionManager, prefix: &str) -> RedisCounters {
        RedisCounters {
            con,
            prefix: prefix.to_owned(),
            reserve: with_reclaim(RESERVE),
            settle: Script::new(SETTLE),
            renew: Script::new(RENEW),
            read: with_reclaim(READ),
        }
    }

    fn key(&self, k: &CounterKey) -> String {
        format!(
            "{}budget:{}:{}:{}",
            self.prefix, k.budget, k.period_start_ms, k.id
        )
    }

    /// The sorted set of a counter's hold leases (outside the counters' key space, which
    /// `list` scans).
    fn leases(&self, k: &CounterKey) -> String {
        format!(
            "{}budget-leases:{}:{}:{}",
            self.prefix, k.budget, k.period_start_ms, k.id
        )
    }

    fn ttl(k: &CounterKey) -> i64 {
        if k.period_start_ms == 0 {
            0
        } else {
            COUNTER_TTL_MS
        }
    }
}

fn float(s: &str) -> f64 {
    s.parse().unwrap_or(0.0)
}

#[async_trait]
impl SpendCounters for RedisCounters {
    async fn known(&self, keys: &[&CounterKey]) -> StoreResult<Vec<bool>> {
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.exists(self.key(k));
        }
        let mut con = self.con.clone();
        pipe.query_async(&mut con).await.map_err(unavailable)
    }

    async fn seed(&self, key: &CounterKey, spent: f64) -> StoreResult<()> {
        let k = self.key(key);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_nx(&k, "spent", spent)
            .ignore()
            .hset_nx(&k, "reserved", 0)
            .ignore();
        let ttl = Self::ttl(key);
        if ttl > 0 {
            pipe.pexpire(&k, ttl).ignore();
        }
        let mut con = self.con.clone();
        pipe.query_async::<()>(&mut con).await.map_err(unavailable)
    }

    async fn reserve(
        &self,
        checks: &[(&CounterKey, f64)],
        amount: f64,
        hold: &Hold,
    ) -> StoreResult<Result<(), Refusal>> {
        let mut inv = self.reserve.prepare_invoke();
        inv.arg(amount)
            .arg(&hold.id)
            .arg(crate::time::now_ms())
            .arg(hold.expires_ms);
        for (k, limit) in checks {
            inv.key(self.key(k)).key(self.leases(k));
            inv.arg(*limit);
        }
        let mut con = self.con.clone();
        let out: Vec<redis::Value> = inv.invoke_async(&mut con).await.map_err(unavailable)?;
        let index = match out.first() {
            Some(redis::Value::Int(i)) => *i,
            _ => return Err(StoreError::Corrupt("redis: bad reserve answer".into())),
        };
        if index == 0 {
            return Ok(Ok(()));
        }
        let text = |v: Option<&redis::Value>| match v {
            Some(redis::Value::BulkString(b)) => float(&String::from_utf8_lossy(b)),
            _ => 0.0,
        };
        Ok(Err(Refusal {
            index: (index - 1) as usize,
            state: CounterState {
                spent_usd: text(out.get(1)),
                reserved_usd: text(out.get(2)),
            },
        }))
    }

    async fn settle(
        &self,
        keys: &[CounterKey],
        hold: &Hold,
        _reserved: f64,
        actual: f64,
    ) -> StoreResult<Vec<(f64, f64)>> {
        let mut inv = self.settle.prepare_invoke();
        inv.arg(&hold.id).arg(actual);
        for k in keys {
            inv.key(self.key(k)).key(self.leases(k));
            inv.arg(Self::ttl(k));
        }
        let mut con = self.con.clone();
        let out: Vec<String> = inv.invoke_async(&mut con).await.map_err(unavailable)?;
        Ok(out
            .chunks(2)
            .map(|p| {
                (
                    p.first().map_or(0.0, |s| float(s)),
                    p.get(1).map_or(0.0, |s| float(s)),
                )
            })
            .collect())
    }

    async fn renew(&self, keys: &[CounterKey], hold: &Hold) -> StoreResult<()> {
        let mut inv = self.renew.prepare_invoke();
        inv.arg(&hold.id).arg(hold.expires_ms);
        for k in keys {
            inv.key(self.leases(k));
        }
        let mut con = self.con.clone();
        let _: i64 = inv.invoke_async(&mut con).await.map_err(unavailable)?;
        Ok(())
    }

    async fn reset(&self, key: &CounterKey) -> StoreResult<()> {
        let mut con = self.con.clone();
        redis::cmd("HSET")
            .arg(self.key(key))
            .arg("spent")
            .arg(0)
            .query_async::<()>(&mut con)
            .await
            .map_err(unavailable)
    }

    async fn list(
        &self,
        budget: &str,
        period_start_ms: i64,
    ) -> StoreResult<Vec<(CounterKey, CounterState)>> {
        let head = format!("{}budget:{budget}:{period_start_ms}:", self.prefix);
        let mut con = self.con.clone();
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", escape_glob(&head)))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut con)
                .await
                .map_err(unavailable)?;
            keys.extend(batch);
            cursor = next;
            if cursor == 0 || keys.len() > 100_000 {
                break;
            }
        }
        keys.sort();
        let mut out = Vec::with_capacity(keys.len());
        let now = crate::time::now_ms();
        for k in keys {
            let key = CounterKey {
                budget: std::sync::Arc::from(budget),
                id: k.strip_prefix(&head).unwrap_or_default().to_owned(),
                period_start_ms,
            };
            let (spent, reserved): (String, String) = self
                .read
                .key(&k)
                .key(self.leases(&key))
                .arg(now)
                .invoke_async(&mut con)
                .await
                .map_err(unavailable)?;
            out.push((
                key,
                CounterState {
                    spent_usd: float(&spent),
                    reserved_usd: float(&reserved),
                },
            ));
        }
        Ok(out)
    }
}

/// Escapes Redis glob metacharacters so a key prefix matches literally.
fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Rate limits in Redis: the same sliding windows as the in-process engine, on Redis's clock.
/// A window is a hash with a field per slot: `r:{slot}` requests and `t:{slot}` tokens.
pub struct RedisBuckets {
    con: ConnectionManager,
    prefix: String,
    acquire: Script,
    adjust: Script,
}

/// Shared by both scripts: Redis's clock, a window loaded (its expired slots deleted) given
/// its slot width, and the wait for room.
fn window_lib() -> String {
    format!(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local SLOTS = {slots}
local function load(k, slot)
  local cur = math.floor(now / slot)
  local flat = redis.call('HGETALL', k)
  local r, tk, ur, ut, dead = {{}}, {{}}, 0, 0, {{}}
  for j = 1, #flat, 2 do
    local f, v = flat[j], tonumber(flat[j + 1]) or 0
    local s = tonumber(string.sub(f, 3))
    if s == nil or s <= cur - SLOTS then
      dead[#dead + 1] = f
    elseif string.sub(f, 1, 1) == 'r' then
      r[s] = v
      ur = ur + v
    else
      tk[s] = v
      ut = ut + v
    end
  end
  if #dead > 0 then redis.call('HDEL', k, unpack(dead)) end
  return r, tk, ur, ut
end
-- Milliseconds until need more fits under limit (slot s leaves at (s + SLOTS) * slot).
local function wait(slots, used, need, limit, slot)
  if limit <= 0 or used + need <= limit then return 0 end
  local cur = math.floor(now / slot)
  local freed = 0
  for s = cur - SLOTS + 1, cur do
    freed = freed + (slots[s] or 0)
    if used - math.min(freed, used) + need <= limit then return (s + SLOTS) * slot - now end
  end
  return SLOTS * slot
end
",
        slots = crate::ratelimit::SLOTS,
    )
}

const ACQUIRE: &str = r"
-- KEYS: windows. ARGV[1]: tokens; ARGV[3i-1], ARGV[3i], ARGV[3i+1]: rpm, tpm (0: none) and
-- slot width of KEYS[i].
-- Admitted: {0, then per window: requests used, tokens used, ms until each is all free}.
-- Refused: {i, on tokens (0/1), requests used, tokens used, the two resets, retry ms}.
local tokens = tonumber(ARGV[1])
local st = {}
for i, k in ipairs(KEYS) do
  local rpm, tpm, slot = tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1])
  local r, tk, ur, ut = load(k, slot)
  st[i] = {r, tk, ur, ut}
  if rpm > 0 and ur + 1 > rpm then
    return {i, 0, ur, ut, wait(r, ur, rpm, rpm, slot), wait(tk, ut, tpm, tpm, slot), wait(r, ur, 1, rpm, slot)}
  end
  if tpm > 0 then
    local need = math.max(1, math.min(tokens, tpm))
    if ut + need > tpm then
      return {i, 1, ur, ut, wait(r, ur, rpm, rpm, slot), wait(tk, ut, tpm, tpm, slot), wait(tk, ut, need, tpm, slot)}
    end
  end
end
local out = {0}
for i, k in ipairs(KEYS) do
  local rpm, tpm, slot = tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1])
  local r, tk, ur, ut = st[i][1], st[i][2], st[i][3], st[i][4]
  local cur = math.floor(now / slot)
  if rpm > 0 then
    r[cur] = (r[cur] or 0) + 1
    ur = ur + 1
    redis.call('HINCRBY', k, 'r:' .. cur, 1)
  end
  if tpm > 0 and tokens > 0 then
    tk[cur] = (tk[cur] or 0) + tokens
    ut = ut + tokens
    redis.call('HINCRBY', k, 't:' .. cur, tokens)
  end
  redis.call('PEXPIRE', k, (SLOTS + 1) * slot)
  out[#out + 1] = ur
  out[#out + 1] = ut
  out[#out + 1] = wait(r, ur, rpm, rpm, slot)
  out[#out + 1] = wait(tk, ut, tpm, tpm, slot)
end
return out
";

const ADJUST: &str = r"
-- KEYS: windows. ARGV[1]: token delta; ARGV[3i-1], ARGV[3i], ARGV[3i+1]: rpm, tpm and slot
-- width of KEYS[i]. Taking more goes to the slot now; giving back comes off the newest slots
-- first.
local delta = tonumber(ARGV[1])
for i, k in ipairs(KEYS) do
  local tpm, slot = tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1])
  local cur = math.floor(now / slot)
  if tpm > 0 and delta ~= 0 and redis.call('EXISTS', k) == 1 then
    if delta > 0 then
      redis.call('HINCRBY', k, 't:' .. cur, delta)
    else
      local _, tk = load(k, slot)
      local give = -delta
      for s = cur, cur - SLOTS + 1, -1 do
        local v = tk[s] or 0
        if v > 0 then
          local back = math.min(v, give)
          redis.call('HINCRBY', k, 't:' .. s, -back)
          give = give - back
          if give <= 0 then break end
        end
      end
    end
    redis.call('PEXPIRE', k, (SLOTS + 1) * slot)
  end
end
return 0
";

impl RedisBuckets {
    pub fn new(con: ConnectionManager, prefix: &str) -> RedisBuckets {
        let lib = window_lib();
        RedisBuckets {
            con,
            prefix: prefix.to_owned(),
            acquire: Script::new(&format!("{lib}{ACQUIRE}")),
            adjust: Script::new(&format!("{lib}{ADJUST}")),
        }
    }

    fn invocation<'a>(
        &self,
        script: &'a Script,
        checks: &[BucketCheck],
        first: i64,
    ) -> redis::ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        inv.arg(first);
        for c in checks {
            inv.key(format!("{}window:{}", self.prefix, c.key));
            inv.arg(c.rpm.unwrap_or(0))
                .arg(c.tpm.unwrap_or(0))
                .arg(c.slot_ms);
        }
        inv
    }
}

/// A window as the headers show it: what it used, and the milliseconds until each is free.
fn view(c: &BucketCheck, used: [u64; 2], reset_ms: [u64; 2]) -> BucketView {
    BucketView {
        rpm: c.rpm,
        remaining_requests: c.rpm.map_or(0, |l| l.saturating_sub(used[0])),
        reset_requests: Duration::from_millis(reset_ms[0]),
        tpm: c.tpm,
        remaining_tokens: c.tpm.map_or(0, |l| l.saturating_sub(used[1])),
        reset_tokens: Duration::from_millis(reset_ms[1]),
    }
}

#[async_trait]
impl RateBuckets for RedisBuckets {
    async fn acquire(
        &self,
        checks: &[BucketCheck],
        tokens: u64,
        _now_ms: i64,
    ) -> StoreResult<Admission> {
        let inv = self.invocation(&self.acquire, checks, tokens as i64);
        let mut con = self.con.clone();
        let out: Vec<i64> = inv.invoke_async(&mut con).await.map_err(unavailable)?;
        let at = |i: usize| out.get(i).copied().unwrap_or(0).max(0) as u64;
        let Some(&index) = out.first() else {
            return Err(StoreError::Corrupt("redis: bad acquire answer".into()));
        };
        if index == 0 {
            let views = checks
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let b = 1 + 4 * i;
                    view(c, [at(b), at(b + 1)], [at(b + 2), at(b + 3)])
                })
                .collect();
            return Ok(Admission::Admitted(views));
        }
        let i = (index - 1) as usize;
        let Some(c) = checks.get(i) else {
            return Err(StoreError::Corrupt("redis: bad acquire index".into()));
        };
        Ok(Admission::Refused {
            index: i,
            tokens: at(1) == 1,
            view: view(c, [at(2), at(3)], [at(4), at(5)]),
            retry_after: Duration::from_millis(at(6)),
        })
    }

    async fn adjust(&self, checks: &[BucketCheck], delta: i64, _now_ms: i64) -> StoreResult<()> {
        let inv = self.invocation(&self.adjust, checks, delta);
        let mut con = self.con.clone();
        let _: i64 = inv.invoke_async(&mut con).await.map_err(unavailable)?;
        Ok(())
    }
}

/// Calls running at once across every replica: one sorted set per quota, of holders scored by
/// when their lease ends (Redis's clock), so a dead replica's calls stop counting once their
/// leases lapse.
pub struct RedisSlots {
    con: ConnectionManager,
    prefix: String,
    take: Script,
    renew: Script,
}

const SLOTS_TAKE: &str = r"
-- KEYS: running sets. ARGV[1]: holder; ARGV[2]: lease ms; ARGV[2+i]: the limit of KEYS[i].
-- Returns 0 when a slot of each was taken, else the index of the first full one.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[2])
for i, k in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
  if redis.call('ZCARD', k) >= tonumber(ARGV[2 + i]) then return i end
end
for _, k in ipairs(KEYS) do
  redis.call('ZADD', k, now + lease, ARGV[1])
  redis.call('PEXPIRE', k, lease * 2)
end
return 0
";

const SLOTS_RENEW: &str = r"
-- KEYS: running sets. ARGV[1]: holder; ARGV[2]: lease ms. Only slots still held are renewed.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[2])
for _, k in ipairs(KEYS) do
  if redis.call('ZADD', k, 'XX', 'CH', now + lease, ARGV[1]) > 0 then
    redis.call('PEXPIRE', k, lease * 2)
  end
end
return 0
";

impl RedisSlots {
    pub fn new(con: ConnectionManager, prefix: &str) -> RedisSlots {
        RedisSlots {
            con,
            prefix: prefix.to_owned(),
            take: Script::new(SLOTS_TAKE),
            renew: Script::new(SLOTS_RENEW),
        }
    }

    fn key(&self, k: &str) -> String {
        format!("{}running:{k}", self.prefix)
    }
}

#[async_trait]
impl crate::quota::RunningSlots for RedisSlots {
    async fn take(
        &self,
        slots: &[(String, u64)],
        holder: &str,
        lease_ms: u64,
    ) -> StoreResult<Option<usize>> {
        let mut inv = self.take.prepare_invoke();
        inv.arg(holder).arg(lease_ms);
        for (k, limit) in slots {
            inv.key(self.key(k)).arg(*limit);
        }
        let mut con = self.con.clone();
        let full: i64 = inv.invoke_async(&mut con).await.map_err(unavailable)?;
        Ok((full > 0).then(|| (full - 1) as usize))
    }

    async fn renew(&self, keys: &[String], holder: &str, lease_ms: u64) -> StoreResult<()> {
        let mut inv = self.renew.prepare_invoke();
        inv.arg(holder).arg(lease_ms);
        for k in keys {
            inv.key(self.key(k));
        }
        let mut con = self.con.clone();
        let _: i64 = inv.invoke_async(&mut con).await.map_err(unavailable)?;
        Ok(())
    }

    async fn release(&self, keys: &[String], holder: &str) -> StoreResult<()> {
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.cmd("ZREM").arg(self.key(k)).arg(holder).ignore();
        }
        let mut con = self.con.clone();
        pipe.query_async::<()>(&mut con).await.map_err(unavailable)
    }
}

/// Values every replica shares for a while (the response cache's entries): bytes with a TTL.
#[async_trait::async_trait]
pub trait SharedBlobs: Send + Sync {
    /// The value and how long it has left to live.
    async fn get(&self, key: &str) -> StoreResult<Option<(Vec<u8>, Duration)>>;
    async fn put(&self, key: &str, value: &[u8], ttl: Duration) -> StoreResult<()>;
}

/// [`SharedBlobs`] in Redis, under the configured key prefix.
pub struct RedisBlobs {
    con: ConnectionManager,
    prefix: String,
}

impl RedisBlobs {
    pub fn new(con: ConnectionManager, prefix: &str) -> RedisBlobs {
        RedisBlobs {
            con,
            prefix: prefix.to_owned(),
        }
    }
}

#[async_trait::async_trait]
impl SharedBlobs for RedisBlobs {
    async fn get(&self, key: &str) -> StoreResult<Option<(Vec<u8>, Duration)>> {
        let mut con = self.con.clone();
        let k = format!("{}{key}", self.prefix);
        let (value, pttl): (Option<Vec<u8>>, i64) = redis::pipe()
            .cmd("GET")
            .arg(&k)
            .cmd("PTTL")
            .arg(&k)
            .query_async(&mut con)
            .await
            .map_err(unavailable)?;
        Ok(value
            .filter(|_| pttl > 0)
            .map(|v| (v, Duration::from_millis(pttl.unsigned_abs()))))
    }

    async fn put(&self, key: &str, value: &[u8], ttl: Duration) -> StoreResult<()> {
        let mut con = self.con.clone();
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        redis::cmd("SET")
            .arg(format!("{}{key}", self.prefix))
            .arg(value)
            .arg("PX")
            .arg(ms)
            .query_async::<()>(&mut con)
            .await
            .map_err(unavailable)
    }
}
