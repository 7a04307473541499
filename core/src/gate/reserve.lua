-- The stock gate: window, then duplicate, then stock, atomically; only then reserve.
-- On a sharded coupon this runs on the user's home shard; a dry home claims the user's slot
-- and answers 'borrow' (the caller then takes a unit from a sibling shard and confirms).
-- KEYS[1] coupon (shard) hash (stock, quantity, starts, ends, refused_sold_out, shards, ...)
-- KEYS[2] holders hash (user id -> request id; on a sharded coupon "<id>?<nonce>" is a claim
--         in progress and "<id>><shard>" a unit taken from that sibling shard)
-- KEYS[3] unsettled reservations (sorted set "user:request id", scored by reservation time ms)
-- KEYS[4] requests made at this shard (request id -> user), so a status query needs only the id
-- ARGV[1] user id, ARGV[2] request id, ARGV[3] the shard count the caller assumed,
-- ARGV[4] (sharded) this attempt's nonce: a claim is "<id>?<nonce>", so only the attempt that
--   made it confirms it, even when a retry under the same request id runs beside it
local meta = redis.call('HMGET', KEYS[1], 'stock', 'starts', 'ends', 'shards')
if not meta[1] then
  return {'missing'}
end
local shards = tonumber(meta[4]) or 1
if shards ~= (tonumber(ARGV[3]) or 1) then
  -- The caller picked the home shard with a stale count: it retries with this one.
  return {'shards', tostring(shards)}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local starts = tonumber(meta[2]) or 0
if starts > 0 and now < starts then
  return {'not_open'}
end
local ends = tonumber(meta[3]) or 0
if ends > 0 and now >= ends then
  return {'closed'}
end
-- The duplicate check comes before the stock check so a repeat never debits stock.
local holder = redis.call('HGET', KEYS[2], ARGV[1])
if holder then
  local id = holder_request(holder)
  if holder_mark(holder) == CLAIM then
    -- Another attempt of this user is borrowing a unit right now.
    return {'pending', id}
  end
  if id == ARGV[2] then
    -- A replay publishes again: a settler must wait for this publish too (XX: an entry
    -- already settled as issued stays settled). Strictly later than the time it replaces, so
    -- the first attempt can tell that a replay (which may have published) came after it.
    local member = ARGV[1] .. ':' .. ARGV[2]
    local seen = tonumber(redis.call('ZSCORE', KEYS[3], member))
    if seen then
      redis.call('ZADD', KEYS[3], 'XX', math.max(now, seen + 1), member)
    end
    return {'replay', id}
  end
  return {'already_issued', id}
end
if tonumber(meta[1]) > 0 then
  redis.call('HINCRBY', KEYS[1], 'stock', -1)
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
  redis.call('HSET', KEYS[4], ARGV[2], ARGV[1])
  -- Recorded so the reservation can be settled without the process that made it.
  redis.call('ZADD', KEYS[3], now, ARGV[1] .. ':' .. ARGV[2])
  -- The reservation's time: the caller's proof that no replay has touched it since.
  return {'reserved', tostring(now)}
end
if shards > 1 then
  local hint = redis.call('HMGET', KEYS[1], 'dry_until', 'epoch')
  if (tonumber(hint[1]) or 0) <= now then
    -- Claim the user's slot first, so no other attempt of this user borrows at the same time.
    redis.call('HSET', KEYS[2], ARGV[1], claim_value(ARGV[2], ARGV[4] or ''))
    redis.call('HSET', KEYS[4], ARGV[2], ARGV[1])
    redis.call('ZADD', KEYS[3], now, ARGV[1] .. ':' .. ARGV[2])
    return {'borrow', hint[2] or '0'}
  end
end
-- Counted so verification can prove no stock was stranded while users were refused.
redis.call('HINCRBY', KEYS[1], 'refused_sold_out', 1)
return {'sold_out'}
