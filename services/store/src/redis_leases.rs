//! [`LeaseStore`] on Redis: one sorted set per license pool scored by expiry, driven by Lua
//! scripts that take "now" from `redis.call('TIME')`, so one clock judges expiry. All keys of a
//! license share the hash tag `{<license id>}`, so the scripts run unchanged on Redis Cluster.
//!
//! Keys of license L:
//! - `lease:{L}:z`: ZSET lease ID -> expiry (ms)
//! - `lease:{L}:d`: HASH lease ID -> `fence|client|user|host|feature|since|cost|ttl`
//! - `lease:{L}:c`: HASH client instance ID -> lease ID (reconnects renew, not double count)
//! - `lease:{L}:u`: seats in use (sum of costs of live leases)
//! - `lease:{L}:f`: fencing counter
//! - `lease:{L}:x`: LIST of expired leases not yet recorded by the sweep
//! - `lease:{L}:r:<lease>`: revocation tombstone (expires by itself)
//!
//! Plus `leases:sweep`, a ZSET license -> earliest expiry, so the sweep visits only pools
//! with something expired (it is an index for the sweep, not part of any seat decision).

use async_trait::async_trait;
use licensing_domain::clock::Millis;
use licensing_domain::error::StoreError;
use licensing_domain::model::Lease;
use licensing_domain::store::*;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use std::time::Duration;

const SWEEP_INDEX: &str = "leases:sweep";
/// How long a revocation is remembered, so the revoked holder hears "revoked", not "unknown".
const TOMBSTONE_MS: i64 = 24 * 3_600_000;

/// Shared Lua: `now`, reaping expired leases into the expired list, and unpacking.
const PRELUDE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function field(packed, n)
  local i = 0
  for part in string.gmatch(packed, '([^|]*)|?') do
    i = i + 1
    if i == n then return part end
  end
  return nil
end
local function remove(z, d, c, u, id)
  local packed = redis.call('HGET', d, id)
  redis.call('ZREM', z, id)
  redis.call('HDEL', d, id)
  if packed then
    local client = field(packed, 2)
    if redis.call('HGET', c, client) == id then redis.call('HDEL', c, client) end
    redis.call('DECRBY', u, tonumber(field(packed, 7)))
  end
  return packed
end
local function reap(z, d, c, u, x)
  local expired = redis.call('ZRANGEBYSCORE', z, '-inf', now, 'WITHSCORES')
  for i = 1, #expired, 2 do
    local packed = remove(z, d, c, u, expired[i])
    if packed then
      redis.call('LPUSH', x, expired[i] .. '|' .. expired[i + 1] .. '|' .. packed)
    end
  end
  redis.call('LTRIM', x, 0, 9999)
end
"#;

const CHECKOUT: &str = r#"
-- KEYS: z d c u f x ; ARGV: seats lease_id client ttl user host feature cost
reap(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[6])
local seats, ttl, cost = tonumber(ARGV[1]), tonumber(ARGV[4]), tonumber(ARGV[8])
local existing = redis.call('HGET', KEYS[3], ARGV[3])
if existing then
  local packed = redis.call('HGET', KEYS[2], existing)
  if packed and redis.call('ZSCORE', KEYS[1], existing) then
    local own_ttl = tonumber(field(packed, 8))
    redis.call('ZADD', KEYS[1], 'XX', now + own_ttl, existing)
    return {1, existing, packed, now, now + own_ttl, tonumber(redis.call('GET', KEYS[4]) or '0')}
  end
end
local in_use = tonumber(redis.call('GET', KEYS[4]) or '0')
if in_use + cost > seats then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, in_use, first[2] or -1}
end
local fence = redis.call('INCR', KEYS[5])
local packed = fence .. '|' .. ARGV[3] .. '|' .. ARGV[5] .. '|' .. ARGV[6] .. '|' .. ARGV[7] .. '|' .. now .. '|' .. cost .. '|' .. ttl
redis.call('ZADD', KEYS[1], now + ttl, ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], packed)
redis.call('HSET', KEYS[3], ARGV[3], ARGV[2])
redis.call('INCRBY', KEYS[4], cost)
return {2, ARGV[2], packed, now, now + ttl, in_use + cost}
"#;

const HEARTBEAT: &str = r#"
-- KEYS: z d c u x tombstone ; ARGV: lease_id
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then
  if redis.call('EXISTS', KEYS[6]) == 1 then return {-2} end
  return {-1}
end
if tonumber(score) <= now then
  reap(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
  return {-3}
end
local packed = redis.call('HGET', KEYS[2], ARGV[1])
local ttl = tonumber(field(packed, 8))
redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[1])
return {1, ARGV[1], packed, now, now + ttl}
"#;

const CHECKIN: &str = r#"
-- KEYS: z d c u x ; ARGV: lease_id
reap(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  remove(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1])
  return 1
end
return 0
"#;

const REVOKE: &str = r#"
-- KEYS: z d c u x f tombstone ; ARGV: lease_id tombstone_ms
reap(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  remove(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1])
  redis.call('SET', KEYS[7], '1', 'PX', tonumber(ARGV[2]))
  return {1, redis.call('INCR', KEYS[6])}
end
return {0, 0}
"#;

const LIST: &str = r#"
-- KEYS: z d ; returns now, then id, expiry, packed for each live lease
local out = {now}
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES')
for i = 1, #live, 2 do
  local packed = redis.call('HGET', KEYS[2], live[i])
  if packed then
    table.insert(out, live[i]); table.insert(out, live[i + 1]); table.insert(out, packed)
  end
end
return out
"#;

const DRAIN_EXPIRED: &str = r#"
-- KEYS: z d c u x ; reaps, then pops up to ARGV[1] expired records and returns the earliest live expiry
reap(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
local out = {}
for i = 1, tonumber(ARGV[1]) do
  local item = redis.call('RPOP', KEYS[5])
  if not item then break end
  table.insert(out, item)
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
table.insert(out, 1, first[2] or '-1')
return out
"#;

const NOW: &str = "return now";

#[derive(Clone)]
pub struct RedisLeaseStore {
    conn: ConnectionManager,
    checkout: Script,
    heartbeat: Script,
    checkin: Script,
    revoke: Script,
    list: Script,
    drain: Script,
    now: Script,
}

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}\n{body}"))
}

/// Connection faults and timeouts are Unavailable: the caller may retry, and the connection
/// manager reconnects by itself.
fn map_err(e: redis::RedisError) -> StoreError {
    if e.is_io_error()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
    {
        StoreError::Unavailable(format!("Redis: {e}"))
    } else {
        StoreError::Other(format!("Redis: {e}"))
    }
}

fn parse_err(e: redis::ParsingError) -> StoreError {
    StoreError::Corrupt(format!("Redis reply: {e}"))
}

fn keys(license_id: &str) -> [String; 6] {
    let p = format!("lease:{{{license_id}}}");
    [format!("{p}:z"), format!("{p}:d"), format!("{p}:c"), format!("{p}:u"), format!("{p}:x"), format!("{p}:f")]
}

fn tombstone(license_id: &str, lease_id: &str) -> String {
    format!("lease:{{{license_id}}}:r:{lease_id}")
}

/// `fence|client|user|host|feature|since|cost|ttl` back into a lease.
fn unpack(license_id: &str, lease_id: &str, packed: &str, expires_at: Millis) -> Result<Lease, StoreError> {
    let parts: Vec<&str> = packed.split('|').collect();
    let bad = || StoreError::Corrupt(format!("lease {lease_id}: {packed}"));
    if parts.len() != 8 {
        return Err(bad());
    }
    let ttl_ms: i64 = parts[7].parse().map_err(|_| bad())?;
    Ok(Lease {
        lease_id: lease_id.to_owned(),
        license_id: license_id.to_owned(),
        fence: parts[0].parse().map_err(|_| bad())?,
        client_instance_id: parts[1].to_owned(),
        user: parts[2].to_owned(),
        host: parts[3].to_owned(),
        feature: parts[4].to_owned(),
        checked_out_at: parts[5].parse().map_err(|_| bad())?,
        seats_held: parts[6].parse().map_err(|_| bad())?,
        ttl_ms,
        expires_at,
        last_heartbeat_at: expires_at - ttl_ms,
    })
}

/// `|` separates packed fields, so it may not appear in what a client names.
fn sanitize(value: &str) -> String {
    value.replace('|', "/")
}

impl RedisLeaseStore {
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(|e| StoreError::Unavailable(format!("Redis URL: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_with_config(client, config).await.map_err(map_err)?;
        Ok(Self {
            conn,
            checkout: script(CHECKOUT),
            heartbeat: script(HEARTBEAT),
            checkin: script(CHECKIN),
            revoke: script(REVOKE),
            list: script(LIST),
            drain: script(DRAIN_EXPIRED),
            now: script(NOW),
        })
    }

    async fn index_for_sweep(&self, license_id: &str, expires_at: Millis) {
        // Best effort: the index only tells the sweep where to look; seat decisions never use it.
        let mut conn = self.conn.clone();
        let _: Result<i64, _> =
            redis::cmd("ZADD").arg(SWEEP_INDEX).arg("LT").arg(expires_at).arg(license_id).query_async(&mut conn).await;
        let _: Result<i64, _> =
            redis::cmd("ZADD").arg(SWEEP_INDEX).arg("NX").arg(expires_at).arg(license_id).query_async(&mut conn).await;
    }
}

#[async_trait]
impl LeaseStore for RedisLeaseStore {
    async fn checkout(&self, c: &CheckoutCommand) -> Result<CheckoutOutcome, StoreError> {
        let [z, d, cl, u, x, f] = keys(&c.license_id);
        let mut conn = self.conn.clone();
        let reply: Vec<redis::Value> = self
            .checkout
            .key(&z)
            .key(&d)
            .key(&cl)
            .key(&u)
            .key(&f)
            .key(&x)
            .arg(c.seats)
            .arg(&c.lease_id)
            .arg(sanitize(&c.client_instance_id))
            .arg(c.ttl_ms)
            .arg(sanitize(&c.user))
            .arg(sanitize(&c.host))
            .arg(sanitize(&c.feature))
            .arg(c.cost)
            .invoke_async(&mut conn)
            .await
            .map_err(map_err)?;
        let int = |v: &redis::Value| -> Result<i64, StoreError> { redis::from_redis_value_ref(v).map_err(parse_err) };
        let text =
            |v: &redis::Value| -> Result<String, StoreError> { redis::from_redis_value_ref(v).map_err(parse_err) };
        match int(&reply[0])? {
            0 => {
                let earliest = int(&reply[2])?;
                Ok(CheckoutOutcome::Full {
                    in_use: int(&reply[1])? as i32,
                    earliest_expiry: (earliest >= 0).then_some(earliest),
                })
            }
            kind => {
                let lease_id = text(&reply[1])?;
                let expires_at = int(&reply[4])?;
                let lease = unpack(&c.license_id, &lease_id, &text(&reply[2])?, expires_at)?;
                self.index_for_sweep(&c.license_id, expires_at).await;
                Ok(CheckoutOutcome::Granted { lease, renewed: kind == 1, in_use: int(&reply[5])? as i32 })
            }
        }
    }

    async fn heartbeat(&self, license_id: &str, lease_id: &str) -> Result<HeartbeatOutcome, StoreError> {
        let [z, d, c, u, x, _] = keys(license_id);
        let mut conn = self.conn.clone();
        let reply: Vec<redis::Value> = self
            .heartbeat
            .key(&z)
            .key(&d)
            .key(&c)
            .key(&u)
            .key(&x)
            .key(tombstone(license_id, lease_id))
            .arg(lease_id)
            .invoke_async(&mut conn)
            .await
            .map_err(map_err)?;
        let int = |v: &redis::Value| -> Result<i64, StoreError> { redis::from_redis_value_ref(v).map_err(parse_err) };
        Ok(match int(&reply[0])? {
            1 => {
                let packed: String = redis::from_redis_value_ref(&reply[2]).map_err(parse_err)?;
                let expires_at = int(&reply[4])?;
                self.index_for_sweep(license_id, expires_at).await;
                HeartbeatOutcome::Extended(unpack(license_id, lease_id, &packed, expires_at)?)
            }
            -2 => HeartbeatOutcome::Revoked,
            -3 => HeartbeatOutcome::Expired,
            _ => HeartbeatOutcome::Unknown,
        })
    }

    async fn checkin(&self, license_id: &str, lease_id: &str) -> Result<bool, StoreError> {
        let [z, d, c, u, x, _] = keys(license_id);
        let mut conn = self.conn.clone();
        let released: i64 = self
            .checkin
            .key(&z)
            .key(&d)
            .key(&c)
            .key(&u)
            .key(&x)
            .arg(lease_id)
            .invoke_async(&mut conn)
            .await
            .map_err(map_err)?;
        Ok(released == 1)
    }

    async fn revoke(&self, license_id: &str, lease_id: &str) -> Result<Option<i64>, StoreError> {
        let [z, d, c, u, x, f] = keys(license_id);
        let mut conn = self.conn.clone();
        let (revoked, fence): (i64, i64) = self
            .revoke
            .key(&z)
            .key(&d)
            .key(&c)
            .key(&u)
            .key(&x)
            .key(&f)
            .key(tombstone(license_id, lease_id))
            .arg(lease_id)
            .arg(TOMBSTONE_MS)
            .invoke_async(&mut conn)
            .await
            .map_err(map_err)?;
        Ok((revoked == 1).then_some(fence))
    }

    async fn list(&self, license_id: &str) -> Result<Vec<Lease>, StoreError> {
        let [z, d, ..] = keys(license_id);
        let mut conn = self.conn.clone();
        let reply: Vec<String> = self.list.key(&z).key(&d).invoke_async(&mut conn).await.map_err(map_err)?;
        reply[1..]
            .chunks(3)
            .map(|c| {
                let expires: Millis = c[1].parse().map_err(|_| StoreError::Corrupt(format!("expiry {}", c[1])))?;
                unpack(license_id, &c[0], &c[2], expires)
            })
            .collect()
    }

    async fn sweep_expired(&self, max: usize) -> Result<Vec<Lease>, StoreError> {
        let now = self.now().await?;
        let mut conn = self.conn.clone();
        let due: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(SWEEP_INDEX)
            .arg("-inf")
            .arg(now)
            .arg("LIMIT")
            .arg(0)
            .arg(max.max(1))
            .query_async(&mut conn)
            .await
            .map_err(map_err)?;
        let mut out = vec![];
        for license_id in due {
            let [z, d, c, u, x, _] = keys(&license_id);
            let reply: Vec<String> = self
                .drain
                .key(&z)
                .key(&d)
                .key(&c)
                .key(&u)
                .key(&x)
                .arg(max)
                .invoke_async(&mut conn)
                .await
                .map_err(map_err)?;
            let earliest: i64 = reply[0].parse().unwrap_or(-1);
            for item in &reply[1..] {
                if let Some((id, rest)) = item.split_once('|') {
                    if let Some((expiry, packed)) = rest.split_once('|') {
                        out.push(unpack(&license_id, id, packed, expiry.parse().unwrap_or(0))?);
                    }
                }
            }
            let _: Result<i64, _> = if earliest < 0 {
                redis::cmd("ZREM").arg(SWEEP_INDEX).arg(&license_id).query_async(&mut conn).await
            } else {
                redis::cmd("ZADD").arg(SWEEP_INDEX).arg(earliest).arg(&license_id).query_async(&mut conn).await
            };
        }
        Ok(out)
    }

    async fn now(&self) -> Result<Millis, StoreError> {
        let mut conn = self.conn.clone();
        self.now.invoke_async(&mut conn).await.map_err(map_err)
    }
}
