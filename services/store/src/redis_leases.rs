//! [`LeaseStore`] on Redis: one sorted set per license pool scored by expiry, driven by Lua
//! scripts that take "now" from `redis.call('TIME')`, so one clock judges expiry. All keys of a
//! license share the hash tag `{<license id>}`, so a pool would sit in one cluster slot; but the
//! granting scripts also read the global `leases:epoch` key, so Redis Cluster is not supported
//! yet (a cluster refuses such a script: CROSSSLOT; see the README).
//!
//! Keys of license L:
//! - `lease:{L}:z`: ZSET lease ID -> expiry (ms)
//! - `lease:{L}:d`: HASH lease ID -> packed lease (see `PRELUDE`)
//! - `lease:{L}:c`: HASH client instance ID -> lease ID (reconnects renew, not double count)
//! - `lease:{L}:u`: seats in use (sum of the costs of open seat groups)
//! - `lease:{L}:f`: fencing counter
//! - `lease:{L}:x`: LIST of expired leases not yet recorded by the sweep
//! - `lease:{L}:g`: HASH seat group -> packed group (processes sharing it, and its charge), for
//!   seats opened with a share key only: a lease without one holds a seat of its own, whose
//!   charge its packed lease already records, so it writes no group (memory: most leases)
//! - `lease:{L}:s`: HASH share key -> the seat group new sharers join
//! - `lease:{L}:b`: HASH reservation -> seats held under it
//! - `lease:{L}:h`: HASH principal (`u:…`, `h:…`, `g:…`) -> seats held, for caps
//! - `lease:{L}:l`: HASH user, host and feature -> lingering lease
//! - `lease:{L}:r:<lease>`: revocation tombstone (expires by itself)
//! - `lease:{L}:v`: the license's revision ([`LicenseRevisions`]), raised after every committed
//!   change to the license; a checkout decided on an older one is refused. Missing means 0.
//!
//! Plus `leases:sweep`, a ZSET license -> earliest expiry, so the sweep visits only pools
//! with something expired (it is an index for the sweep, not part of any seat decision).
//!
//! And `leases:epoch`, the store's recovery state: the time (ms) until which new seats are held
//! back, 0 when none are. It is written once and never expires, so when it is missing Redis lost
//! its data (restarted empty, or failed over to a replica that lagged). The scripts that grant
//! seats refuse to run without it; the store then opens a recovery period one maximum lease TTL
//! long, in which no new seat is handed out (every forgotten lease may still be held) and
//! holders put their leases back by heartbeat with their signed lease token
//! ([`LeaseStore::reestablish`]). Each granting script reads the epoch key itself, so the check
//! is atomic with the decision on one Redis server; on Redis Cluster it sits on one shard, so
//! losing another shard alone goes unnoticed (the README says so).

use async_trait::async_trait;
use licensing_domain::clock::{Clock as _, Millis, SystemClock};
use licensing_domain::error::StoreError;
use licensing_domain::model::{Lease, Released};
use licensing_domain::seat_policy::SeatDenial;
use licensing_domain::store::*;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Redis settings this store is sized for, as `(name, value)`. A packed lease is about 90 to
/// 130 bytes, over Redis's default `hash-max-listpack-value` of 64, which would turn every pool's
/// lease hash into a hash table (about 85 bytes more a lease). docker-compose passes these to
/// `redis-server`; the Seat service warns at start when its Redis has lower values.
pub const RECOMMENDED_CONFIG: &[(&str, i64)] = &[("hash-max-listpack-value", 256)];

const SWEEP_INDEX: &str = "leases:sweep";
const EPOCH: &str = "leases:epoch";
/// How long a revocation is remembered, so the revoked holder hears "revoked", not "unknown".
const TOMBSTONE_MS: i64 = 24 * 3_600_000;
/// Separates packed fields; names are validated free of control characters, so it cannot
/// appear in them.
const SEP: char = '\u{1f}';
/// Separates principal keys inside one field.
const LIST_SEP: char = '\u{1e}';

/// Shared Lua: the keys, `now`, packing, seat-group accounting and reaping.
///
/// A lease is packed as `fence client user host feature since cost ttl group flags bucket
/// principals share_key` (flags: `b` borrowed, `o` overdraft, `l` lingering; `group` empty for
/// the lease's own seat). A seat group is packed as `members cost bucket overdraft principals`;
/// its cost is charged when it opens and freed when its last lease goes. A lease without a share
/// key is alone in its seat: its group is implicit (members 1, charged what the lease records),
/// and records written before that rule (`g` entries for such leases) are still cleaned up.
const PRELUDE: &str = r#"
local K = {z = KEYS[1], d = KEYS[2], c = KEYS[3], u = KEYS[4], x = KEYS[5], f = KEYS[6],
           g = KEYS[7], s = KEYS[8], b = KEYS[9], h = KEYS[10], l = KEYS[11], r = KEYS[12],
           e = KEYS[13], v = KEYS[14]}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local S = '\31'
local function fields(packed)
  local out = {}
  for part in string.gmatch(packed .. S, '([^\31]*)\31') do table.insert(out, part) end
  return out
end
local function pack(f) return table.concat(f, S) end
local function has(flags, c) return string.find(flags, c, 1, true) ~= nil end
local function without(flags, c) return (string.gsub(flags, c, '')) end
local function each_principal(list, fn)
  for p in string.gmatch(list, '([^\30]+)') do fn(p) end
end
local function counter(key, field) return tonumber(redis.call('HGET', key, field) or '0') end
local function bump(key, field, by)
  if redis.call('HINCRBY', key, field, by) <= 0 then redis.call('HDEL', key, field) end
end
local function group(gid)
  local packed = redis.call('HGET', K.g, gid)
  if packed then return fields(packed) end
  return nil
end
-- Whether a lease is alone in a seat of its own (no share key: nobody can join it).
local function solo(f) return f[13] == '' end
-- The seat group of lease `id`: the implicit one of a solo lease, or its `g` record.
local function seat_of(id, f)
  if solo(f) then
    local over = '0'
    if has(f[10], 'o') then over = '1' end
    return {'1', f[7], f[11], over, f[12]}
  end
  return group(f[9])
end
local function members(id, f)
  local gr = seat_of(id, f)
  if gr then return tonumber(gr[1]) end
  return 0
end
local function linger_key(f) return f[3] .. S .. f[4] .. S .. f[5] end
-- Takes lease `id` out of its seat group; frees the seat when it was the last. Returns seats freed.
local function leave(id, f)
  local gr = seat_of(id, f)
  if not gr then return 0 end
  local left = tonumber(gr[1]) - 1
  if left > 0 then
    gr[1] = tostring(left)
    redis.call('HSET', K.g, f[9], pack(gr))
    return 0
  end
  redis.call('HDEL', K.g, f[9] ~= '' and f[9] or id)
  if f[13] ~= '' and redis.call('HGET', K.s, f[13]) == f[9] then redis.call('HDEL', K.s, f[13]) end
  local cost = tonumber(gr[2])
  redis.call('DECRBY', K.u, cost)
  if gr[3] ~= '' then bump(K.b, gr[3], -cost) end
  each_principal(gr[5], function(p) bump(K.h, p, -cost) end)
  return cost
end
local function remove(id)
  local packed = redis.call('HGET', K.d, id)
  redis.call('ZREM', K.z, id)
  redis.call('HDEL', K.d, id)
  if not packed then return nil, 0 end
  local f = fields(packed)
  if redis.call('HGET', K.c, f[2]) == id then redis.call('HDEL', K.c, f[2]) end
  if redis.call('HGET', K.l, linger_key(f)) == id then redis.call('HDEL', K.l, linger_key(f)) end
  return f, leave(id, f)
end
local function reap()
  local expired = redis.call('ZRANGEBYSCORE', K.z, '-inf', now, 'WITHSCORES')
  for i = 1, #expired, 2 do
    local f, freed = remove(expired[i])
    if f then
      redis.call('LPUSH', K.x, expired[i] .. S .. expired[i + 1] .. S .. freed .. S .. pack(f))
    end
  end
  redis.call('LTRIM', K.x, 0, 9999)
end
local function in_use() return tonumber(redis.call('GET', K.u) or '0') end
-- Until when new seats are held back (0: not recovering); nil when Redis lost its data.
local function recovering_until()
  local v = redis.call('GET', K.e)
  if v then return tonumber(v) end
  return nil
end
"#;

const CHECKOUT: &str = r#"
-- ARGV: lease_id client user host feature ttl cost seats overdraft queue_blocked borrowed
--       share_key max_processes principals n_res (key seats candidate)* n_caps (key max)*
--       license_revision ('' when the license was read fresh)
local held_until = recovering_until()
if not held_until then return {-9} end
local revision = ARGV[#ARGV]
if revision ~= '' and tonumber(redis.call('GET', K.v) or '0') > tonumber(revision) then return {-7} end
reap()
local ttl, cost = tonumber(ARGV[6]), tonumber(ARGV[7])
local borrowed = ARGV[11] == '1'
local function granted(kind, id, f, expiry, taken)
  redis.call('HSET', K.d, id, pack(f))
  redis.call('ZADD', K.z, expiry, id)
  return {kind, id, pack(f), expiry, in_use(), taken, members(id, f)}
end
-- The client's own live lease: renewed (a borrowed one keeps its period unless borrowed anew).
local own = redis.call('HGET', K.c, ARGV[2])
if own and redis.call('ZSCORE', K.z, own) then
  local f = fields(redis.call('HGET', K.d, own))
  local expiry = now + tonumber(f[8])
  if borrowed then
    f[8] = ARGV[6]; f[10] = without(f[10], 'b') .. 'b'; expiry = now + ttl
  elseif has(f[10], 'b') then
    expiry = tonumber(redis.call('ZSCORE', K.z, own))
  end
  if has(f[10], 'l') then
    f[10] = without(f[10], 'l')
    if redis.call('HGET', K.l, linger_key(f)) == own then redis.call('HDEL', K.l, linger_key(f)) end
  end
  return granted(1, own, f, expiry, 0)
end
-- A seat lingering for the same user, host and feature is given back.
local lk = ARGV[3] .. S .. ARGV[4] .. S .. ARGV[5]
local lingering = redis.call('HGET', K.l, lk)
if lingering and redis.call('ZSCORE', K.z, lingering) then
  redis.call('HDEL', K.l, lk)
  local f = fields(redis.call('HGET', K.d, lingering))
  if redis.call('HGET', K.c, f[2]) == lingering then redis.call('HDEL', K.c, f[2]) end
  f[2] = ARGV[2]; f[8] = ARGV[6]; f[10] = without(f[10], 'l')
  if borrowed then f[10] = without(f[10], 'b') .. 'b' end
  redis.call('HSET', K.c, ARGV[2], lingering)
  return granted(1, lingering, f, now + ttl, 0)
end
local function flags(overdraft)
  local out = ''
  if borrowed then out = out .. 'b' end
  if overdraft then out = out .. 'o' end
  return out
end
-- Share a seat with room for another process.
if ARGV[12] ~= '' then
  local gid = redis.call('HGET', K.s, ARGV[12])
  local gr = gid and group(gid)
  local max = tonumber(ARGV[13])
  if gr and (max == 0 or tonumber(gr[1]) < max) then
    gr[1] = tostring(tonumber(gr[1]) + 1)
    redis.call('HSET', K.g, gid, pack(gr))
    local fence = redis.call('INCR', K.f)
    redis.call('HSET', K.c, ARGV[2], ARGV[1])
    local f = {fence, ARGV[2], ARGV[3], ARGV[4], ARGV[5], now, gr[2], ARGV[6], gid, flags(gr[4] == '1'), gr[3], gr[5], ARGV[12]}
    return granted(2, ARGV[1], f, now + ttl, 0)
  end
end
-- A new seat, unless forgotten leases may still hold them all.
if now < held_until then return {-8, held_until} end
local function denied(code, detail)
  local first = redis.call('ZRANGE', K.z, 0, 0, 'WITHSCORES')
  return {0, in_use(), first[2] or -1, code, detail or ''}
end
if ARGV[10] == '1' then return denied('FULL') end
local seats, overdraft = tonumber(ARGV[8]), tonumber(ARGV[9])
local i = 15
local reservations = {}
for _ = 1, tonumber(ARGV[i]) do
  table.insert(reservations, {ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3] == '1'})
  i = i + 3
end
i = i + 1
for _ = 1, tonumber(ARGV[i]) do
  local key, max = ARGV[i + 1], tonumber(ARGV[i + 2])
  if counter(K.h, key) + cost > max then return denied('CAP', key .. S .. max) end
  i = i + 2
end
local bucket, over = nil, false
for _, r in ipairs(reservations) do
  if r[3] and counter(K.b, r[1]) + cost <= r[2] then bucket = r[1]; break end
end
local used = in_use()
if not bucket then
  local reserved, held = 0, 0
  for _, r in ipairs(reservations) do
    reserved = reserved + r[2]
    held = held + math.min(counter(K.b, r[1]), r[2])
  end
  local general_used, general = used - held, seats - reserved
  if general_used + cost > general + overdraft then
    if used + cost <= seats + overdraft then return denied('RESERVED') end
    return denied('FULL')
  end
  bucket = ''
  over = general_used + cost > general
end
local overdraft_flag = '0'
if over then overdraft_flag = '1' end
local gid = ''
if ARGV[12] ~= '' then
  gid = ARGV[1]
  redis.call('HSET', K.g, gid, pack({'1', tostring(cost), bucket, overdraft_flag, ARGV[14]}))
  redis.call('HSET', K.s, ARGV[12], gid)
end
redis.call('INCRBY', K.u, cost)
if bucket ~= '' then redis.call('HINCRBY', K.b, bucket, cost) end
each_principal(ARGV[14], function(p) redis.call('HINCRBY', K.h, p, cost) end)
local fence = redis.call('INCR', K.f)
redis.call('HSET', K.c, ARGV[2], ARGV[1])
local f = {fence, ARGV[2], ARGV[3], ARGV[4], ARGV[5], now, tostring(cost), ARGV[6], gid, flags(over), bucket, ARGV[14], ARGV[12]}
return granted(2, ARGV[1], f, now + ttl, cost)
"#;

const HEARTBEAT: &str = r#"
-- ARGV: lease_id
if not recovering_until() then return {-9} end
local score = redis.call('ZSCORE', K.z, ARGV[1])
if not score then
  if redis.call('EXISTS', K.r) == 1 then return {-2} end
  return {-1}
end
if tonumber(score) <= now then
  reap()
  return {-3}
end
local f = fields(redis.call('HGET', K.d, ARGV[1]))
if has(f[10], 'l') then return {-1} end
local expiry = now + tonumber(f[8])
-- A borrowed lease lives out its period; heartbeats do not lengthen it.
if has(f[10], 'b') then expiry = tonumber(score) end
redis.call('ZADD', K.z, 'XX', expiry, ARGV[1])
return {1, ARGV[1], pack(f), expiry, members(ARGV[1], f)}
"#;

const CHECKIN: &str = r#"
-- ARGV: lease_id linger_ms
reap()
local packed = redis.call('HGET', K.d, ARGV[1])
if not packed or not redis.call('ZSCORE', K.z, ARGV[1]) then return {0} end
local f = fields(packed)
if has(f[10], 'l') then return {0} end
local linger = tonumber(ARGV[2])
if linger > 0 and not has(f[10], 'b') then
  f[10] = f[10] .. 'l'
  redis.call('HSET', K.d, ARGV[1], pack(f))
  redis.call('ZADD', K.z, 'XX', now + linger, ARGV[1])
  redis.call('HSET', K.l, linger_key(f), ARGV[1])
  return {1, pack(f), now + linger, 0, members(ARGV[1], f), now}
end
local m = members(ARGV[1], f)
local _, freed = remove(ARGV[1])
return {1, pack(f), now, freed, m, now}
"#;

const REVOKE: &str = r#"
-- ARGV: lease_id tombstone_ms
reap()
local packed = redis.call('HGET', K.d, ARGV[1])
if packed and redis.call('ZSCORE', K.z, ARGV[1]) then
  local m = members(ARGV[1], fields(packed))
  local _, freed = remove(ARGV[1])
  redis.call('SET', K.r, '1', 'PX', tonumber(ARGV[2]))
  return {1, redis.call('INCR', K.f), packed, now, freed, m}
end
return {0}
"#;

const LIST: &str = r#"
-- returns now, then id, expiry, packed, members for each live lease
local out = {now}
local live = redis.call('ZRANGEBYSCORE', K.z, '(' .. now, '+inf', 'WITHSCORES')
for i = 1, #live, 2 do
  local packed = redis.call('HGET', K.d, live[i])
  if packed then
    table.insert(out, live[i]); table.insert(out, live[i + 1]); table.insert(out, packed)
    table.insert(out, tostring(members(live[i], fields(packed))))
  end
end
return out
"#;

const DRAIN_EXPIRED: &str = r#"
-- reaps, then pops up to ARGV[1] expired records and returns the earliest live expiry first
reap()
local out = {}
for _ = 1, tonumber(ARGV[1]) do
  local item = redis.call('RPOP', K.x)
  if not item then break end
  table.insert(out, item)
end
local first = redis.call('ZRANGE', K.z, 0, 0, 'WITHSCORES')
table.insert(out, 1, first[2] or '-1')
return out
"#;

const REESTABLISH: &str = r#"
-- ARGV: lease_id client user host feature ttl cost seats fence
local held_until = recovering_until()
if not held_until then return {-9} end
if now >= held_until then return {0} end
reap()
local ttl, cost = tonumber(ARGV[6]), tonumber(ARGV[7])
local score = redis.call('ZSCORE', K.z, ARGV[1])
if score and tonumber(score) > now then return {2} end
if in_use() + cost > tonumber(ARGV[8]) then return {-1} end
-- Fences only grow: the counter restarts from the highest fence its holders show.
if tonumber(redis.call('GET', K.f) or '0') < tonumber(ARGV[9]) then redis.call('SET', K.f, ARGV[9]) end
redis.call('INCRBY', K.u, cost)
redis.call('HSET', K.c, ARGV[2], ARGV[1])
local f = {ARGV[9], ARGV[2], ARGV[3], ARGV[4], ARGV[5], now, tostring(cost), ARGV[6], '', '', '', '', ''}
redis.call('HSET', K.d, ARGV[1], pack(f))
redis.call('ZADD', K.z, now + ttl, ARGV[1])
return {1, pack(f), now + ttl}
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
    reestablish: Script,
    now: Script,
    clock: Arc<RedisClock>,
    /// How long new seats are held back after a loss: the longest a lease lives unheartbeated.
    recovery_window_ms: Millis,
}

/// Redis's clock without a round trip per call: local time plus an offset measured again when
/// older than [`CLOCK_RECHECK_MS`]. Seat decisions never use it (the scripts read `TIME`); it
/// serves the service's checks of license dates and the stamps of usage events.
#[derive(Debug, Default)]
struct RedisClock {
    offset_ms: AtomicI64,
    /// Local time of the last measurement; 0 before the first.
    measured_at: AtomicI64,
}

const CLOCK_RECHECK_MS: i64 = 5_000;

/// How much earlier than a new lease's expiry (as the service guesses it) a checkout indexes its
/// license for the sweep: more than any error of the measured clock offset.
const SWEEP_INDEX_LEAD_MS: i64 = 1_000;

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

/// The checkout script's ARGV (see `CHECKOUT`).
fn checkout_args(c: &CheckoutCommand) -> Vec<String> {
    let mut args = vec![
        c.lease_id.clone(),
        c.client_instance_id.clone(),
        c.user.clone(),
        c.host.clone(),
        c.feature.clone(),
        c.ttl_ms.to_string(),
        c.cost.to_string(),
        c.seats.to_string(),
        c.limits.overdraft.to_string(),
        i32::from(c.queue_blocked).to_string(),
        i32::from(c.borrowed).to_string(),
        c.share_key.clone().unwrap_or_default(),
        c.max_processes.to_string(),
        c.limits.principals.join(&LIST_SEP.to_string()),
        c.limits.reservations.len().to_string(),
    ];
    for (key, seats) in &c.limits.reservations {
        args.extend([key.clone(), seats.to_string(), i32::from(c.limits.candidates.contains(key)).to_string()]);
    }
    args.push(c.limits.caps.len().to_string());
    for (key, max) in &c.limits.caps {
        args.extend([key.clone(), max.to_string()]);
    }
    args.push(c.license_revision.map(|r| r.to_string()).unwrap_or_default());
    args
}

/// The keys of a license's pool, in the order the scripts' `K` table expects; then the
/// revocation tombstone of `lease_id` (a placeholder when the script needs none), the epoch and
/// the license's revision.
fn keys(license_id: &str, lease_id: &str) -> Vec<String> {
    let p = format!("lease:{{{license_id}}}");
    ["z", "d", "c", "u", "x", "f", "g", "s", "b", "h", "l"]
        .iter()
        .map(|k| format!("{p}:{k}"))
        .chain([format!("{p}:r:{lease_id}"), EPOCH.to_owned(), revision_key(license_id)])
        .collect()
}

fn revision_key(license_id: &str) -> String {
    format!("lease:{{{license_id}}}:v")
}

fn invoke<'a>(script: &'a Script, license_id: &str, lease_id: &str) -> redis::ScriptInvocation<'a> {
    let mut invocation = script.prepare_invoke();
    for key in keys(license_id, lease_id) {
        invocation.key(key);
    }
    invocation
}

/// A packed lease (13 fields) back into a lease.
fn unpack(
    license_id: &str,
    lease_id: &str,
    packed: &str,
    expires_at: Millis,
    members: i32,
) -> Result<Lease, StoreError> {
    let parts: Vec<&str> = packed.split(SEP).collect();
    unpack_fields(license_id, lease_id, &parts, expires_at, members)
}

fn unpack_fields(
    license_id: &str,
    lease_id: &str,
    parts: &[&str],
    expires_at: Millis,
    members: i32,
) -> Result<Lease, StoreError> {
    let bad = || StoreError::Corrupt(format!("lease {lease_id}: {}", parts.join("|")));
    if parts.len() != 13 {
        return Err(bad());
    }
    let ttl_ms: i64 = parts[7].parse().map_err(|_| bad())?;
    let flags = parts[9];
    let lingering = flags.contains('l');
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
        last_heartbeat_at: if lingering { expires_at } else { expires_at - ttl_ms },
        // Empty for the lease's own seat.
        group_id: if parts[8].is_empty() { lease_id.to_owned() } else { parts[8].to_owned() },
        shared_processes: members.max(1),
        borrowed: flags.contains('b'),
        overdraft: flags.contains('o'),
        lingering,
        bucket: parts[10].to_owned(),
        principals: parts[11].split(LIST_SEP).filter(|p| !p.is_empty()).map(str::to_owned).collect(),
        share_key: parts[12].to_owned(),
    })
}

fn int(v: &redis::Value) -> Result<i64, StoreError> {
    redis::from_redis_value_ref(v).map_err(parse_err)
}

fn text(v: &redis::Value) -> Result<String, StoreError> {
    redis::from_redis_value_ref(v).map_err(parse_err)
}

fn denial(code: &str, detail: &str) -> SeatDenial {
    match code {
        "CAP" => {
            let (principal, max) = detail.split_once(SEP).unwrap_or((detail, "0"));
            SeatDenial::CapReached { principal: principal.to_owned(), max_seats: max.parse().unwrap_or(0) }
        }
        "RESERVED" => SeatDenial::Reserved,
        _ => SeatDenial::Full,
    }
}

/// The reply of a granting script when the epoch key is missing.
const EPOCH_MISSING: i64 = -9;
/// The reply of a checkout while new seats are held back: `{-8, until}`.
const RECOVERING: i64 = -8;
/// The reply of a checkout whose license revision is older than the stored one.
const STALE_LICENSE: i64 = -7;

impl RedisLeaseStore {
    /// Connects. It does not touch the epoch: the process that grants seats records it with
    /// [`Self::open_epoch`], and a granting script that finds none opens a recovery period.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        use redis::IntoConnectionInfo as _;
        let info = url.into_connection_info().map_err(|e| StoreError::Unavailable(format!("Redis URL: {e}")))?;
        // Without TCP_NODELAY a script's reply can sit out the peer's delayed ACK (40 ms).
        let info = info.set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client = redis::Client::open(info).map_err(|e| StoreError::Unavailable(format!("Redis URL: {e}")))?;
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
            reestablish: script(REESTABLISH),
            now: script(NOW),
            clock: Arc::default(),
            recovery_window_ms: 3_600_000,
        })
    }

    /// Whether Redis answers (for metrics).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING").query_async::<String>(&mut conn).await.map_err(map_err)?;
        Ok(())
    }

    /// The [`RECOMMENDED_CONFIG`] settings this Redis has lower values for, as
    /// `(name, current, recommended)`. Empty when Redis does not allow `CONFIG GET` (managed
    /// services often do not): the store works either way, only its memory differs.
    pub async fn config_shortfalls(&self) -> Vec<(&'static str, i64, i64)> {
        let mut conn = self.conn.clone();
        let mut out = vec![];
        for &(name, recommended) in RECOMMENDED_CONFIG {
            let reply: Result<Vec<String>, _> = redis::cmd("CONFIG").arg("GET").arg(name).query_async(&mut conn).await;
            let current = reply.ok().and_then(|pair| pair.get(1)?.parse::<i64>().ok());
            if let Some(current) = current.filter(|&c| c < recommended) {
                out.push((name, current, recommended));
            }
        }
        out
    }

    /// Sets how long new seats are held back after a loss; it must be at least the longest
    /// lease TTL the Seat service grants.
    pub fn with_recovery_window(mut self, window_ms: Millis) -> Self {
        self.recovery_window_ms = window_ms;
        self
    }

    /// Records the epoch at start-up. With `used_before` (this deployment kept leases in Redis
    /// before), a missing epoch means Redis lost them, and a recovery period opens; otherwise a
    /// missing epoch is a fresh Redis. Returns until when new seats are held back (0: not).
    pub async fn open_epoch(&self, used_before: bool) -> Result<Millis, StoreError> {
        if used_before {
            return self.begin_recovery().await;
        }
        let mut conn = self.conn.clone();
        let _: Option<String> =
            redis::cmd("SET").arg(EPOCH).arg(0).arg("NX").query_async(&mut conn).await.map_err(map_err)?;
        self.recovering_until().await
    }

    async fn recovering_until(&self) -> Result<Millis, StoreError> {
        let mut conn = self.conn.clone();
        let value: Option<Millis> = redis::cmd("GET").arg(EPOCH).query_async(&mut conn).await.map_err(map_err)?;
        Ok(value.unwrap_or(0))
    }

    /// Opens a recovery period unless one is already recorded (NX: the first process to notice
    /// the loss sets it, the others adopt it).
    async fn begin_recovery(&self) -> Result<Millis, StoreError> {
        let until = self.now().await? + self.recovery_window_ms;
        let mut conn = self.conn.clone();
        let set: Option<String> =
            redis::cmd("SET").arg(EPOCH).arg(until).arg("NX").query_async(&mut conn).await.map_err(map_err)?;
        if set.is_some() {
            tracing::warn!(
                until_ms = until,
                "Redis lost its leases (no epoch): new seats are held back until every forgotten lease has expired; holders re-establish theirs by heartbeat"
            );
        }
        self.recovering_until().await
    }

    /// Runs a granting script; when Redis lost the epoch, opens a recovery period and runs it again.
    async fn invoke_granting(&self, invocation: &redis::ScriptInvocation<'_>) -> Result<Vec<redis::Value>, StoreError> {
        let mut conn = self.conn.clone();
        let reply: Vec<redis::Value> = invocation.invoke_async(&mut conn).await.map_err(map_err)?;
        if reply.first().map(int).transpose()? != Some(EPOCH_MISSING) {
            return Ok(reply);
        }
        self.begin_recovery().await?;
        let reply: Vec<redis::Value> = invocation.invoke_async(&mut conn).await.map_err(map_err)?;
        if reply.first().map(int).transpose()? == Some(EPOCH_MISSING) {
            return Err(StoreError::Unavailable("Redis keeps losing its epoch key; is it evicting keys?".into()));
        }
        Ok(reply)
    }

    /// A checkout in calls of its own: the script (loading it, or opening a recovery, as
    /// needed), then the sweep index at the lease's real expiry.
    async fn checkout_unpipelined(
        &self,
        c: &CheckoutCommand,
        args: &[String],
    ) -> Result<Vec<redis::Value>, StoreError> {
        let mut invocation = invoke(&self.checkout, &c.license_id, "");
        for arg in args {
            invocation.arg(arg);
        }
        let reply = self.invoke_granting(&invocation).await?;
        if int(&reply[0])? > 0 {
            self.index_for_sweep(&c.license_id, int(&reply[3])?).await;
        }
        Ok(reply)
    }

    async fn index_for_sweep(&self, license_id: &str, expires_at: Millis) {
        // Best effort: the index only tells the sweep where to look; seat decisions never use it.
        let mut conn = self.conn.clone();
        // LT adds a missing license and only ever moves an indexed one earlier.
        let _: Result<i64, _> =
            redis::cmd("ZADD").arg(SWEEP_INDEX).arg("LT").arg(expires_at).arg(license_id).query_async(&mut conn).await;
    }
}

#[async_trait]
impl LicenseRevisions for RedisLeaseStore {
    async fn current(&self, license_id: &str) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        let revision: Option<u64> =
            redis::cmd("GET").arg(revision_key(license_id)).query_async(&mut conn).await.map_err(map_err)?;
        Ok(revision.unwrap_or(0))
    }

    async fn raise(&self, license_id: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: u64 = redis::cmd("INCR").arg(revision_key(license_id)).query_async(&mut conn).await.map_err(map_err)?;
        Ok(())
    }
}

#[async_trait]
impl LeaseStore for RedisLeaseStore {
    #[tracing::instrument(name = "store.checkout", skip_all, fields(otel.kind = "client", store = "redis"))]
    async fn checkout(&self, c: &CheckoutCommand) -> Result<CheckoutOutcome, StoreError> {
        let args = checkout_args(c);
        // The sweep index goes in the same round trip, after the script. Its expiry is a guess
        // (the script reads TIME), made early so the sweep comes too soon rather than too late:
        // early, it finds nothing and moves the license to its real earliest expiry.
        let expiry_guess = self.now().await? + c.ttl_ms - SWEEP_INDEX_LEAD_MS;
        let keys = keys(&c.license_id, "");
        let mut pipe = redis::pipe();
        pipe.cmd("EVALSHA").arg(self.checkout.get_hash()).arg(keys.len()).arg(&keys).arg(&args);
        pipe.cmd("ZADD").arg(SWEEP_INDEX).arg("LT").arg(expiry_guess).arg(&c.license_id).ignore();
        let mut conn = self.conn.clone();
        let pipelined: Result<(Vec<redis::Value>,), _> = pipe.query_async(&mut conn).await;
        let reply = match pipelined {
            Ok((reply,)) if reply.first().map(int).transpose()? != Some(EPOCH_MISSING) => reply,
            // The script is not loaded (Redis restarted or flushed its scripts), or the epoch is
            // gone: the one-call path loads it or opens the recovery, then indexes the grant.
            Ok(_) => self.checkout_unpipelined(c, &args).await?,
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.checkout_unpipelined(c, &args).await?
            }
            Err(e) => return Err(map_err(e)),
        };
        match int(&reply[0])? {
            RECOVERING => Ok(CheckoutOutcome::Recovering { until: int(&reply[1])? }),
            STALE_LICENSE => Ok(CheckoutOutcome::StaleLicense),
            0 => {
                let earliest = int(&reply[2])?;
                Ok(CheckoutOutcome::Denied {
                    denial: denial(&text(&reply[3])?, &text(&reply[4])?),
                    in_use: int(&reply[1])? as i32,
                    earliest_expiry: (earliest >= 0).then_some(earliest),
                })
            }
            kind => {
                let lease_id = text(&reply[1])?;
                let expires_at = int(&reply[3])?;
                let lease = unpack(&c.license_id, &lease_id, &text(&reply[2])?, expires_at, int(&reply[6])? as i32)?;
                Ok(CheckoutOutcome::Granted {
                    lease,
                    renewed: kind == 1,
                    in_use: int(&reply[4])? as i32,
                    seats_taken: int(&reply[5])? as i32,
                })
            }
        }
    }

    #[tracing::instrument(name = "store.heartbeat", skip_all, fields(otel.kind = "client", store = "redis"))]
    async fn heartbeat(&self, license_id: &str, lease_id: &str) -> Result<HeartbeatOutcome, StoreError> {
        let mut invocation = invoke(&self.heartbeat, license_id, lease_id);
        invocation.arg(lease_id);
        let reply = self.invoke_granting(&invocation).await?;
        Ok(match int(&reply[0])? {
            1 => {
                // No index update: a heartbeat only moves an expiry later, and the index may
                // hold an earlier time (the sweep then finds nothing and moves it on).
                let expires_at = int(&reply[3])?;
                HeartbeatOutcome::Extended(unpack(
                    license_id,
                    lease_id,
                    &text(&reply[2])?,
                    expires_at,
                    int(&reply[4])? as i32,
                )?)
            }
            -2 => HeartbeatOutcome::Revoked,
            -3 => HeartbeatOutcome::Expired,
            _ => HeartbeatOutcome::Unknown,
        })
    }

    #[tracing::instrument(name = "store.checkin", skip_all, fields(otel.kind = "client", store = "redis"))]
    async fn checkin(&self, license_id: &str, lease_id: &str, linger_ms: i64) -> Result<Option<Released>, StoreError> {
        let mut conn = self.conn.clone();
        let reply: Vec<redis::Value> = invoke(&self.checkin, license_id, lease_id)
            .arg(lease_id)
            .arg(linger_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(map_err)?;
        if int(&reply[0])? != 1 {
            return Ok(None);
        }
        let expires_at = int(&reply[2])?;
        let lease = unpack(license_id, lease_id, &text(&reply[1])?, expires_at, int(&reply[4])? as i32)?;
        if lease.lingering {
            self.index_for_sweep(license_id, expires_at).await;
        }
        Ok(Some(Released { lease, seats_freed: int(&reply[3])? as i32, at: int(&reply[5])? }))
    }

    #[tracing::instrument(name = "store.revoke", skip_all, fields(otel.kind = "client", store = "redis"))]
    async fn revoke(&self, license_id: &str, lease_id: &str) -> Result<Option<(i64, Released)>, StoreError> {
        let mut conn = self.conn.clone();
        let reply: Vec<redis::Value> = invoke(&self.revoke, license_id, lease_id)
            .arg(lease_id)
            .arg(TOMBSTONE_MS)
            .invoke_async(&mut conn)
            .await
            .map_err(map_err)?;
        if int(&reply[0])? != 1 {
            return Ok(None);
        }
        let at = int(&reply[3])?;
        let lease = unpack(license_id, lease_id, &text(&reply[2])?, at, int(&reply[5])? as i32)?;
        Ok(Some((int(&reply[1])?, Released { lease, seats_freed: int(&reply[4])? as i32, at })))
    }

    #[tracing::instrument(name = "store.list", skip_all, fields(otel.kind = "client", store = "redis"))]
    async fn list(&self, license_id: &str) -> Result<Vec<Lease>, StoreError> {
        let mut conn = self.conn.clone();
        let reply: Vec<String> = invoke(&self.list, license_id, "").invoke_async(&mut conn).await.map_err(map_err)?;
        reply[1..]
            .chunks(4)
            .map(|c| {
                let expires: Millis = c[1].parse().map_err(|_| StoreError::Corrupt(format!("expiry {}", c[1])))?;
                unpack(license_id, &c[0], &c[2], expires, c[3].parse().unwrap_or(1))
            })
            .collect()
    }

    #[tracing::instrument(name = "store.licenses_with_leases", skip_all, fields(otel.kind = "client", store = "redis"))]
    async fn licenses_with_leases(&self, max: usize) -> Result<Vec<String>, StoreError> {
        if max == 0 {
            return Ok(vec![]);
        }
        let mut conn = self.conn.clone();
        // The sweep index holds every license with a lease (until the sweep finds it empty).
        redis::cmd("ZRANGE").arg(SWEEP_INDEX).arg(0).arg(max as i64 - 1).query_async(&mut conn).await.map_err(map_err)
    }

    #[tracing::instrument(name = "store.sweep_expired", skip_all, fields(otel.kind = "client", store = "redis"))]
    async fn sweep_expired(&self, max: usize) -> Result<Vec<Released>, StoreError> {
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
            let reply: Vec<String> =
                invoke(&self.drain, &license_id, "").arg(max).invoke_async(&mut conn).await.map_err(map_err)?;
            let earliest: i64 = reply[0].parse().unwrap_or(-1);
            for item in &reply[1..] {
                // id, expiry, seats freed, then the packed lease.
                let parts: Vec<&str> = item.split(SEP).collect();
                if parts.len() != 16 {
                    return Err(StoreError::Corrupt(format!("expired lease record of {license_id}")));
                }
                let expires_at = parts[1].parse().unwrap_or(0);
                let lease = unpack_fields(&license_id, parts[0], &parts[3..], expires_at, 1)?;
                out.push(Released { lease, seats_freed: parts[2].parse().unwrap_or(0), at: expires_at });
            }
            if earliest < 0 {
                let _: Result<i64, _> =
                    redis::cmd("ZREM").arg(SWEEP_INDEX).arg(&license_id).query_async(&mut conn).await;
                // A checkout may have landed between the drain and the ZREM (its own ZADD came
                // first): put the license back, so its leases are still recorded when they expire.
                let first: Vec<(String, i64)> = redis::cmd("ZRANGE")
                    .arg(&keys(&license_id, "")[0])
                    .arg(0)
                    .arg(0)
                    .arg("WITHSCORES")
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default();
                if let Some((_, expiry)) = first.first() {
                    self.index_for_sweep(&license_id, *expiry).await;
                }
            } else {
                let _: Result<i64, _> =
                    redis::cmd("ZADD").arg(SWEEP_INDEX).arg(earliest).arg(&license_id).query_async(&mut conn).await;
            }
        }
        Ok(out)
    }

    #[tracing::instrument(name = "store.reestablish", skip_all, fields(otel.kind = "client", store = "redis"))]
    async fn reestablish(&self, l: &LostLease) -> Result<ReestablishOutcome, StoreError> {
        let mut invocation = invoke(&self.reestablish, &l.license_id, &l.lease_id);
        invocation
            .arg(&l.lease_id)
            .arg(&l.client_instance_id)
            .arg(&l.user)
            .arg(&l.host)
            .arg(&l.feature)
            .arg(l.ttl_ms)
            .arg(l.seats_held.max(1))
            .arg(l.seats)
            .arg(l.fence);
        let reply = self.invoke_granting(&invocation).await?;
        match int(&reply[0])? {
            1 => {
                let expires_at = int(&reply[2])?;
                self.index_for_sweep(&l.license_id, expires_at).await;
                Ok(ReestablishOutcome::Restored(unpack(&l.license_id, &l.lease_id, &text(&reply[1])?, expires_at, 1)?))
            }
            // Already back (a retried heartbeat): an ordinary heartbeat extends it.
            2 => match self.heartbeat(&l.license_id, &l.lease_id).await? {
                HeartbeatOutcome::Extended(lease) => Ok(ReestablishOutcome::Restored(lease)),
                _ => Ok(ReestablishOutcome::NoSeat),
            },
            -1 => Ok(ReestablishOutcome::NoSeat),
            _ => Ok(ReestablishOutcome::NotRecovering),
        }
    }

    // No span: mostly a read of the clock, on every seat call.
    async fn now(&self) -> Result<Millis, StoreError> {
        let local = SystemClock.now();
        if local - self.clock.measured_at.load(Ordering::Relaxed) < CLOCK_RECHECK_MS {
            return Ok(local + self.clock.offset_ms.load(Ordering::Relaxed));
        }
        let mut conn = self.conn.clone();
        let redis_now: Millis = self.now.invoke_async(&mut conn).await.map_err(map_err)?;
        self.clock.offset_ms.store(redis_now - SystemClock.now(), Ordering::Relaxed);
        self.clock.measured_at.store(local, Ordering::Relaxed);
        Ok(redis_now)
    }
}
