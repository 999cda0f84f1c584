-- Removes a lease, remembers the revocation for its holder (a tombstone that expires by itself)
-- and raises the license's fence.
-- Replies: {1, fence, packed, now, seats_freed, members}, or {0} when there was no such lease.
local A = named(ARGV, {'lease_id', 'tombstone_ms'})
reap()
local packed = redis.call('HGET', K.leases, A.lease_id)
if packed and redis.call('ZSCORE', K.expiries, A.lease_id) then
  local m = members(A.lease_id, fields(packed))
  local _, freed = remove(A.lease_id)
  redis.call('SET', K.tombstone, '1', 'PX', tonumber(A.tombstone_ms))
  return {1, redis.call('INCR', K.fence), packed, now, freed, m}
end
return {0}
