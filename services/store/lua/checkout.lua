-- Checks out a seat of license L's pool, or renews the client's own lease (the same client
-- instance ID, user and host): the whole decision in one step, so concurrent checkouts on any
-- number of Seat replicas never exceed the seats.
--
-- This script and `decide_new_seat` (services/domain/src/seat_policy.rs, which the SQL lease
-- store uses) implement one decision: caps, then reservations, then (unless others wait in line)
-- the general pool with overdraft. Change them together; the store conformance suite runs both.
--
-- Replies: {1 renewed | 2 new, lease_id, packed, expiry, in_use, seats_taken, members},
-- {0 denied, in_use, earliest expiry or -1, code, detail}, {-7} license revision stale,
-- {-8, until} recovering, {-9} epoch missing.
local A = named(ARGV, {
  'lease_id',       -- the ID of a new lease
  'client',         -- client instance ID
  'user', 'host', 'feature',
  'ttl_ms',         -- lease TTL, or the borrow period
  'cost',           -- seats a new seat takes from the pool
  'seats',          -- the license's seats
  'overdraft',      -- seats allowed beyond them
  'queue_blocked',  -- '1': others wait first for a general seat
  'borrowed',       -- '1': borrowed for offline use
  'share_key',      -- join a seat with this key, or ''
  'max_processes',  -- processes per shared seat (0: no limit)
  'principals',     -- principal keys the seat counts against, separated by \30
  'not_after',      -- the latest expiry a grant may have (the license's expiry), or ''
  'reservations',   -- how many (key, seats, candidate) triples follow
})
-- Then the reservations, `caps` (how many (key, max) pairs follow) and the pairs, and last the
-- license revision the decision was made on ('' when the license was read fresh).
local cursor = 16
local reservations = {}
for _ = 1, tonumber(A.reservations) do
  table.insert(reservations, {key = ARGV[cursor + 1], seats = tonumber(ARGV[cursor + 2]), candidate = ARGV[cursor + 3] == '1'})
  cursor = cursor + 3
end
cursor = cursor + 1
local caps = {}
for _ = 1, tonumber(ARGV[cursor]) do
  table.insert(caps, {key = ARGV[cursor + 1], max = tonumber(ARGV[cursor + 2])})
  cursor = cursor + 2
end
local license_revision = ARGV[cursor + 1]

local held_until = recovering_until()
if not held_until then return {-9} end
if license_revision ~= '' and tonumber(redis.call('GET', K.revision) or '0') > tonumber(license_revision) then
  return {-7}
end
reap()
local ttl, cost = tonumber(A.ttl_ms), tonumber(A.cost)
local borrowed = A.borrowed == '1'
local function granted(kind, id, f, expiry, taken)
  if A.not_after ~= '' then expiry = math.min(expiry, tonumber(A.not_after)) end
  redis.call('HSET', K.leases, id, pack(f))
  redis.call('ZADD', K.expiries, expiry, id)
  return {kind, id, pack(f), expiry, in_use(), taken, members(id, f)}
end
-- The client's own live lease: renewed (a borrowed one keeps its period unless borrowed anew).
local holder = holder_key(A.client, A.user, A.host)
local own = redis.call('HGET', K.clients, holder)
if own and redis.call('ZSCORE', K.expiries, own) then
  local f = fields(redis.call('HGET', K.leases, own))
  local expiry = now + tonumber(f[F.ttl])
  if borrowed then
    f[F.ttl] = A.ttl_ms; f[F.flags] = without(f[F.flags], 'b') .. 'b'; expiry = now + ttl
  elseif has(f[F.flags], 'b') then
    expiry = tonumber(redis.call('ZSCORE', K.expiries, own))
  end
  if has(f[F.flags], 'l') then
    f[F.flags] = without(f[F.flags], 'l')
    if redis.call('HGET', K.lingering, linger_key(f)) == own then redis.call('HDEL', K.lingering, linger_key(f)) end
  end
  return granted(1, own, f, expiry, 0)
end
-- A seat lingering for the same user, host and feature is given back.
local lk = A.user .. S .. A.host .. S .. A.feature
local lingering = redis.call('HGET', K.lingering, lk)
if lingering and redis.call('ZSCORE', K.expiries, lingering) then
  redis.call('HDEL', K.lingering, lk)
  local f = fields(redis.call('HGET', K.leases, lingering))
  forget_holder(lingering, f)
  f[F.client] = A.client; f[F.ttl] = A.ttl_ms; f[F.flags] = without(f[F.flags], 'l')
  if borrowed then f[F.flags] = without(f[F.flags], 'b') .. 'b' end
  redis.call('HSET', K.clients, holder, lingering)
  return granted(1, lingering, f, now + ttl, 0)
end
local function flags(overdraft)
  local out = ''
  if borrowed then out = out .. 'b' end
  if overdraft then out = out .. 'o' end
  return out
end
local function new_lease(fence, seat_cost, group_id, lease_flags, bucket, principals)
  local f = {}
  f[F.fence] = fence; f[F.client] = A.client; f[F.user] = A.user; f[F.host] = A.host
  f[F.feature] = A.feature; f[F.since] = now; f[F.cost] = seat_cost; f[F.ttl] = A.ttl_ms
  f[F.group] = group_id; f[F.flags] = lease_flags; f[F.bucket] = bucket
  f[F.principals] = principals; f[F.share_key] = A.share_key
  return f
end
-- Share a seat with room for another process.
if A.share_key ~= '' then
  local gid = redis.call('HGET', K.shared, A.share_key)
  local gr = gid and group(gid)
  local max = tonumber(A.max_processes)
  if gr and (max == 0 or tonumber(gr[G.members]) < max) then
    gr[G.members] = tostring(tonumber(gr[G.members]) + 1)
    redis.call('HSET', K.groups, gid, pack(gr))
    local fence = redis.call('INCR', K.fence)
    redis.call('HSET', K.clients, holder, A.lease_id)
    local f = new_lease(fence, gr[G.cost], gid, flags(gr[G.overdraft] == '1'), gr[G.bucket], gr[G.principals])
    return granted(2, A.lease_id, f, now + ttl, 0)
  end
end
-- A new seat, unless forgotten leases may still hold them all.
if now < held_until then return {-8, held_until} end
local function denied(code, detail)
  local first = redis.call('ZRANGE', K.expiries, 0, 0, 'WITHSCORES')
  return {0, in_use(), first[2] or -1, code, detail or ''}
end
local seats, overdraft = tonumber(A.seats), tonumber(A.overdraft)
for _, cap in ipairs(caps) do
  if counter(K.held_by, cap.key) + cost > cap.max then return denied('CAP', cap.key .. S .. cap.max) end
end
local bucket, over = nil, false
for _, r in ipairs(reservations) do
  if r.candidate and counter(K.reserved, r.key) + cost <= r.seats then bucket = r.key; break end
end
-- Those waiting in line (WaitForSeat) wait for a general seat: they hold back only those.
if not bucket and A.queue_blocked == '1' then return denied('QUEUED') end
local used = in_use()
if not bucket then
  local reserved, held = 0, 0
  for _, r in ipairs(reservations) do
    reserved = reserved + r.seats
    held = held + math.min(counter(K.reserved, r.key), r.seats)
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
if A.share_key ~= '' then
  gid = A.lease_id
  local gr = {}
  gr[G.members] = '1'; gr[G.cost] = tostring(cost); gr[G.bucket] = bucket
  gr[G.overdraft] = overdraft_flag; gr[G.principals] = A.principals
  redis.call('HSET', K.groups, gid, pack(gr))
  redis.call('HSET', K.shared, A.share_key, gid)
end
redis.call('INCRBY', K.in_use, cost)
if bucket ~= '' then redis.call('HINCRBY', K.reserved, bucket, cost) end
each_principal(A.principals, function(p) redis.call('HINCRBY', K.held_by, p, cost) end)
local fence = redis.call('INCR', K.fence)
redis.call('HSET', K.clients, holder, A.lease_id)
local f = new_lease(fence, tostring(cost), gid, flags(over), bucket, A.principals)
return granted(2, A.lease_id, f, now + ttl, cost)
