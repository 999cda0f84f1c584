-- Extends a live lease by its TTL (a borrowed one keeps its period), never past not_after (the
-- license's end of use: its expiry or the end of its grace period; '' for none).
-- Replies: {1, lease_id, packed, expiry, members}, {-1} unknown (or lingering), {-2} revoked,
-- {-3} expired (and not yet recorded by the sweep, as the SQL store answers), {-9} epoch missing.
local A = named(ARGV, {'lease_id', 'not_after'})
if not recovering_until() then return {-9} end
local score = redis.call('ZSCORE', K.expiries, A.lease_id)
if not score then
  if redis.call('EXISTS', K.tombstone) == 1 then return {-2} end
  if redis.call('HEXISTS', K.expired_ids, A.lease_id) == 1 then return {-3} end
  return {-1}
end
if tonumber(score) <= now then
  reap()
  return {-3}
end
local f = fields(redis.call('HGET', K.leases, A.lease_id))
if has(f[F.flags], 'l') then return {-1} end
local expiry = now + tonumber(f[F.ttl])
if A.not_after ~= '' then expiry = math.min(expiry, tonumber(A.not_after)) end
-- A borrowed lease lives out its period; heartbeats do not lengthen it.
if has(f[F.flags], 'b') then expiry = tonumber(score) end
redis.call('ZADD', K.expiries, 'XX', expiry, A.lease_id)
return {1, A.lease_id, pack(f), expiry, members(A.lease_id, f)}
