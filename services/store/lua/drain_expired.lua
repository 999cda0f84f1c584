-- Reaps the pool, then pops up to `max` records of expired leases for the sweep to record.
-- Reply: the earliest live expiry (or -1), then the records (`id expiry freed packed-lease`).
local A = named(ARGV, {'max'})
reap()
local out = {}
for _ = 1, tonumber(A.max) do
  local item = redis.call('RPOP', K.expired)
  if not item then break end
  redis.call('HDEL', K.expired_ids, string.match(item, '^[^\31]*'))
  table.insert(out, item)
end
local first = redis.call('ZRANGE', K.expiries, 0, 0, 'WITHSCORES')
table.insert(out, 1, first[2] or '-1')
return out
