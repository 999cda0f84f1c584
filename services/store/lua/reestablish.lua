-- Puts back a lease Redis lost, as its holder's signed lease token describes it, while the store
-- is recovering from the loss; it still needs a free seat.
-- Replies: {1, packed, expiry} restored, {2} already back, {-1} no seat, {0} not recovering,
-- {-9} epoch missing.
local A = named(ARGV, {'lease_id', 'client', 'user', 'host', 'feature', 'ttl_ms', 'cost', 'seats', 'fence'})
local held_until = recovering_until()
if not held_until then return {-9} end
if now >= held_until then return {0} end
reap()
local ttl, cost = tonumber(A.ttl_ms), tonumber(A.cost)
local score = redis.call('ZSCORE', K.expiries, A.lease_id)
if score and tonumber(score) > now then return {2} end
if in_use() + cost > tonumber(A.seats) then return {-1} end
-- Fences only grow: the counter restarts from the highest fence its holders show.
if tonumber(redis.call('GET', K.fence) or '0') < tonumber(A.fence) then redis.call('SET', K.fence, A.fence) end
redis.call('INCRBY', K.in_use, cost)
redis.call('HSET', K.clients, holder_key(A.client, A.user, A.host), A.lease_id)
local f = {}
f[F.fence] = A.fence; f[F.client] = A.client; f[F.user] = A.user; f[F.host] = A.host
f[F.feature] = A.feature; f[F.since] = now; f[F.cost] = tostring(cost); f[F.ttl] = A.ttl_ms
f[F.group] = ''; f[F.flags] = ''; f[F.bucket] = ''; f[F.principals] = ''; f[F.share_key] = ''
redis.call('HSET', K.leases, A.lease_id, pack(f))
redis.call('ZADD', K.expiries, now + ttl, A.lease_id)
return {1, pack(f), now + ttl}
