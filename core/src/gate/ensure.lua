-- Provision one coupon's gate (or one shard of it) without ever resetting live stock.
-- KEYS[1] coupon (shard) hash; ARGV[1] quantity, ARGV[2] starts ms, ARGV[3] ends ms,
-- ARGV[4] stock if created, ARGV[5] the coupon's shard count (fixed once created)
local live = redis.call('HMGET', KEYS[1], 'quantity', 'shards')
if not live[1] then
  redis.call('HSET', KEYS[1], 'quantity', ARGV[1], 'stock', ARGV[4], 'starts', ARGV[2],
    'ends', ARGV[3], 'refused_sold_out', 0)
  if tonumber(ARGV[5]) > 1 then
    redis.call('HSET', KEYS[1], 'shards', ARGV[5])
  end
  return {'created', ARGV[4]}
end
if (tonumber(live[2]) or 1) ~= tonumber(ARGV[5]) then
  return {'reshard', live[2] or '1'}
end
local diff = tonumber(ARGV[1]) - tonumber(live[1])
if diff < 0 then
  return {'shrink', live[1]}
end
if diff > 0 then
  redis.call('HINCRBY', KEYS[1], 'stock', diff)
  -- New stock: a sold-out hint of this shard no longer holds.
  redis.call('HINCRBY', KEYS[1], 'epoch', 1)
  redis.call('HDEL', KEYS[1], 'dry_until')
end
redis.call('HSET', KEYS[1], 'quantity', ARGV[1], 'starts', ARGV[2], 'ends', ARGV[3])
return {'ok', tostring(diff)}
