-- The live leases of the pool, earliest expiry first.
-- Reply: now, then id, expiry, packed, members for each live lease.
local out = {now}
local live = redis.call('ZRANGEBYSCORE', K.expiries, '(' .. now, '+inf', 'WITHSCORES')
for i = 1, #live, 2 do
  local packed = redis.call('HGET', K.leases, live[i])
  if packed then
    table.insert(out, live[i]); table.insert(out, live[i + 1]); table.insert(out, packed)
    table.insert(out, tostring(members(live[i], fields(packed))))
  end
end
return out
