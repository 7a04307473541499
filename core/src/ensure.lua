-- Provision one coupon's gate without ever resetting live stock.
-- KEYS[1] coupon hash; ARGV[1] quantity, ARGV[2] starts ms, ARGV[3] ends ms, ARGV[4] stock if created
local live = redis.call('HGET', KEYS[1], 'quantity')
if not live then
  redis.call('HSET', KEYS[1], 'quantity', ARGV[1], 'stock', ARGV[4], 'starts', ARGV[2],
    'ends', ARGV[3], 'refused_sold_out', 0)
  return {'created', ARGV[4]}
end
local diff = tonumber(ARGV[1]) - tonumber(live)
if diff < 0 then
  return {'shrink', live}
end
if diff > 0 then
  redis.call('HINCRBY', KEYS[1], 'stock', diff)
end
redis.call('HSET', KEYS[1], 'quantity', ARGV[1], 'starts', ARGV[2], 'ends', ARGV[3])
return {'ok', tostring(diff)}
