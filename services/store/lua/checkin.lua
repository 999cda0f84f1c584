-- Checks a lease in: frees its seat, or with a linger period keeps the seat for the same user,
-- host and feature that long (a borrowed lease is always freed at once).
-- Replies: {1, packed, expiry, seats_freed, members, now}, or {0} when the lease was already
-- gone or lingering (a retried checkin).
local A = named(ARGV, {'lease_id', 'linger_ms'})
reap()
local packed = redis.call('HGET', K.leases, A.lease_id)
if not packed or not redis.call('ZSCORE', K.expiries, A.lease_id) then return {0} end
local f = fields(packed)
if has(f[F.flags], 'l') then return {0} end
local linger = tonumber(A.linger_ms)
if linger > 0 and not has(f[F.flags], 'b') then
  f[F.flags] = f[F.flags] .. 'l'
  redis.call('HSET', K.leases, A.lease_id, pack(f))
  redis.call('ZADD', K.expiries, 'XX', now + linger, A.lease_id)
  redis.call('HSET', K.lingering, linger_key(f), A.lease_id)
  return {1, pack(f), now + linger, 0, members(A.lease_id, f), now}
end
local m = members(A.lease_id, f)
local _, freed = remove(A.lease_id)
return {1, pack(f), now, freed, m, now}
