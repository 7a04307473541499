-- Undo one reservation at the user's home shard; idempotent: only the holder's own request id
-- releases, once. Answers {0} nothing, {1} stock given back here, {2} a claim dropped (no unit),
-- {3, shard} the unit was taken from that sibling shard (the caller gives it back there),
-- {-1} (settlement only) replayed or confirmed after the cutoff.
-- KEYS[1] coupon (shard) hash, KEYS[2] holders hash, KEYS[3] unsettled reservations,
-- KEYS[4] requests (request id -> user): a released unit leaves "user@ms" there, so its status
--   reads `released` rather than unknown; a dropped claim (never a unit) leaves nothing
-- ARGV[1] user id, ARGV[2] request id
-- ARGV[3] (settlement only) reservation-time cutoff ms: release only a reservation still
--   unsettled and made at or before it; a replay since then (newer time) publishes again.
local member = ARGV[1] .. ':' .. ARGV[2]
if ARGV[3] then
  local at = redis.call('ZSCORE', KEYS[3], member)
  if not at then
    return {0}
  end
  if tonumber(at) > tonumber(ARGV[3]) then
    return {-1}
  end
end
redis.call('ZREM', KEYS[3], member)
local holder = redis.call('HGET', KEYS[2], ARGV[1])
if not holder or holder_request(holder) ~= ARGV[2] then
  return {0}
end
redis.call('HDEL', KEYS[2], ARGV[1])
local mark = holder_mark(holder)
if mark == CLAIM then
  redis.call('HDEL', KEYS[4], ARGV[2])
  return {2}
end
local t = redis.call('TIME')
redis.call('HSET', KEYS[4], ARGV[2], ARGV[1] .. '@' .. (tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)))
if mark == LENT then
  return {3, tonumber(holder_rest(holder))}
end
redis.call('HINCRBY', KEYS[1], 'stock', 1)
redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HDEL', KEYS[1], 'dry_until')
return {1}
