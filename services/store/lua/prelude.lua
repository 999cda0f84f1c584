-- Shared by every lease script (RedisLeaseStore prepends it to each): the keys by name, `now` from
-- Redis's own clock, how leases and seat groups are packed, seat-group accounting and reaping.
--
-- Lua addresses KEYS, ARGV and packed fields by position. Every position is named once, here or
-- at the top of the script that uses it, and the code below uses only the names.
-- `services/store/src/redis_leases.rs` builds KEYS and ARGV; its tests check that the names it
-- sends are the names these scripts declare, in the same order.

-- Maps the positional `values` (KEYS or ARGV) to `names`, in order.
local function named(values, names)
  local out = {}
  for i, name in ipairs(names) do out[name] = values[i] end
  return out
end

-- KEYS of license L's pool (`lease:{L}:…`), in the order `keys()` in redis_leases.rs sends them.
local K = named(KEYS, {
  'expiries',   -- z: ZSET lease ID -> expiry (ms)
  'leases',     -- d: HASH lease ID -> packed lease (fields F below)
  'clients',    -- c: HASH holder (client instance ID, user and host) -> lease ID
  'in_use',     -- u: seats in use (the sum of the costs of open seat groups)
  'expired',    -- x: LIST of expired leases the sweep has not recorded yet
  'fence',      -- f: fencing counter
  'groups',     -- g: HASH seat group -> packed group (fields G below), for shared seats only
  'shared',     -- s: HASH share key -> the seat group new sharers join
  'reserved',   -- b: HASH reservation -> seats held under it
  'held_by',    -- h: HASH principal (u:…, h:…, g:…) -> seats held, for caps
  'lingering',  -- l: HASH user, host and feature -> lingering lease
  'expired_ids', -- xi: HASH lease ID -> 1 for each lease in `expired` (heartbeats answer "expired")
  'tombstone',  -- r:<lease>: revocation tombstone of the lease the call names
  'epoch',      -- leases:epoch: until when new seats are held back (0: not); missing: data lost
  'revision',   -- v: the license's revision (LicenseRevisions); missing means 0
})

-- A packed lease: its fields, separated by \31.
local F = {
  fence = 1, client = 2, user = 3, host = 4, feature = 5,
  since = 6,        -- checked out at (ms)
  cost = 7,         -- seats its seat holds
  ttl = 8,          -- ms
  group = 9,        -- the seat group it shares; '' for a seat of its own
  flags = 10,       -- b borrowed, o overdraft, l lingering
  bucket = 11,      -- the reservation its seat is charged to, or ''
  principals = 12,  -- principal keys for caps, separated by \30
  share_key = 13,   -- key under which others may share its seat, or ''
}

-- A packed seat group: charged its cost when it opens, freed when its last lease goes. A lease
-- without a share key is alone in its seat: its group is implicit (members 1, charged what the
-- lease records), and records written before that rule (`groups` entries for such leases) are
-- still cleaned up.
local G = { members = 1, cost = 2, bucket = 3, overdraft = 4, principals = 5 }

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
  local packed = redis.call('HGET', K.groups, gid)
  if packed then return fields(packed) end
  return nil
end
-- Whether a lease is alone in a seat of its own (no share key: nobody can join it).
local function solo(f) return f[F.share_key] == '' end
-- The seat group of lease `id`: the implicit one of a solo lease, or its `groups` record.
local function seat_of(id, f)
  if solo(f) then
    local over = '0'
    if has(f[F.flags], 'o') then over = '1' end
    local implicit = {}
    implicit[G.members] = '1'
    implicit[G.cost] = f[F.cost]
    implicit[G.bucket] = f[F.bucket]
    implicit[G.overdraft] = over
    implicit[G.principals] = f[F.principals]
    return implicit
  end
  return group(f[F.group])
end
local function members(id, f)
  local gr = seat_of(id, f)
  if gr then return tonumber(gr[G.members]) end
  return 0
end
local function linger_key(f) return f[F.user] .. S .. f[F.host] .. S .. f[F.feature] end
-- Who holds a lease: a client instance ID alone is no proof, so the same ID from another user
-- or host is another client.
local function holder_key(client, user, host) return client .. S .. user .. S .. host end
local function holder_of(f) return holder_key(f[F.client], f[F.user], f[F.host]) end
-- Forgets lease `id` as its holder's lease (also under the client instance ID alone, as the
-- index was keyed before holders were told apart).
local function forget_holder(id, f)
  if redis.call('HGET', K.clients, holder_of(f)) == id then redis.call('HDEL', K.clients, holder_of(f)) end
  if redis.call('HGET', K.clients, f[F.client]) == id then redis.call('HDEL', K.clients, f[F.client]) end
end
-- Takes lease `id` out of its seat group; frees the seat when it was the last. Returns seats freed.
local function leave(id, f)
  local gr = seat_of(id, f)
  if not gr then return 0 end
  local left = tonumber(gr[G.members]) - 1
  if left > 0 then
    gr[G.members] = tostring(left)
    redis.call('HSET', K.groups, f[F.group], pack(gr))
    return 0
  end
  redis.call('HDEL', K.groups, f[F.group] ~= '' and f[F.group] or id)
  if f[F.share_key] ~= '' and redis.call('HGET', K.shared, f[F.share_key]) == f[F.group] then
    redis.call('HDEL', K.shared, f[F.share_key])
  end
  local cost = tonumber(gr[G.cost])
  redis.call('DECRBY', K.in_use, cost)
  if gr[G.bucket] ~= '' then bump(K.reserved, gr[G.bucket], -cost) end
  each_principal(gr[G.principals], function(p) bump(K.held_by, p, -cost) end)
  return cost
end
local function remove(id)
  local packed = redis.call('HGET', K.leases, id)
  redis.call('ZREM', K.expiries, id)
  redis.call('HDEL', K.leases, id)
  if not packed then return nil, 0 end
  local f = fields(packed)
  forget_holder(id, f)
  if redis.call('HGET', K.lingering, linger_key(f)) == id then redis.call('HDEL', K.lingering, linger_key(f)) end
  return f, leave(id, f)
end
-- The most expired leases kept for the sweep; older records are dropped (with their index).
local EXPIRED_KEPT = 10000
-- Moves expired leases out of the pool into K.expired as `id expiry freed packed-lease`, which
-- the sweep drains (drain_expired.lua) and records; until then a heartbeat hears "expired".
local function reap()
  local expired = redis.call('ZRANGEBYSCORE', K.expiries, '-inf', now, 'WITHSCORES')
  for i = 1, #expired, 2 do
    local f, freed = remove(expired[i])
    if f then
      redis.call('LPUSH', K.expired, expired[i] .. S .. expired[i + 1] .. S .. freed .. S .. pack(f))
      redis.call('HSET', K.expired_ids, expired[i], '1')
    end
  end
  for _, dropped in ipairs(redis.call('LRANGE', K.expired, EXPIRED_KEPT, -1)) do
    redis.call('HDEL', K.expired_ids, string.match(dropped, '^[^\31]*'))
  end
  redis.call('LTRIM', K.expired, 0, EXPIRED_KEPT - 1)
end
local function in_use() return tonumber(redis.call('GET', K.in_use) or '0') end
-- Until when new seats are held back (0: not recovering); nil when Redis lost its data.
local function recovering_until()
  local v = redis.call('GET', K.epoch)
  if v then return tonumber(v) end
  return nil
end
