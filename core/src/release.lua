-- Undo one reservation; idempotent: only the holder's own request id releases, once.
-- KEYS[1] coupon hash, KEYS[2] holders hash, KEYS[3] unsettled reservations
-- ARGV[1] user id, ARGV[2] request id
-- ARGV[3] (settlement only) reservation-time cutoff ms: release only a reservation still
--   unsettled and made at or before it; a replay since then (newer time) publishes again.
local member = ARGV[1] .. ':' .. ARGV[2]
if ARGV[3] then
  local at = redis.call('ZSCORE', KEYS[3], member)
  if not at then
    return 0
  end
  if tonumber(at) > tonumber(ARGV[3]) then
    return -1
  end
end
redis.call('ZREM', KEYS[3], member)
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HINCRBY', KEYS[1], 'stock', 1)
  return 1
end
return 0
