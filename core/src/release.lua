-- Undo one reservation; idempotent: only the holder's own request id releases, once.
-- KEYS[1] coupon hash, KEYS[2] holders hash; ARGV[1] user id, ARGV[2] request id
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HINCRBY', KEYS[1], 'stock', 1)
  return 1
end
return 0
