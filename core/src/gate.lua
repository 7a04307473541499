-- The stock gate: window, then duplicate, then stock, atomically; only then reserve.
-- KEYS[1] coupon hash (stock, quantity, starts, ends, refused_sold_out)
-- KEYS[2] holders hash (user id -> request id)
-- KEYS[3] unsettled reservations (sorted set "user:request id", scored by reservation time ms)
-- ARGV[1] user id, ARGV[2] request id
local meta = redis.call('HMGET', KEYS[1], 'stock', 'starts', 'ends')
if not meta[1] then
  return {'missing'}
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
  if holder == ARGV[2] then
    -- A replay publishes again: a settler must wait for this publish too (XX: an entry
    -- already settled as issued stays settled).
    redis.call('ZADD', KEYS[3], 'XX', now, ARGV[1] .. ':' .. ARGV[2])
    return {'replay', holder}
  end
  return {'already_issued', holder}
end
if tonumber(meta[1]) <= 0 then
  -- Counted so verification can prove no stock was stranded while users were refused.
  redis.call('HINCRBY', KEYS[1], 'refused_sold_out', 1)
  return {'sold_out'}
end
redis.call('HINCRBY', KEYS[1], 'stock', -1)
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
-- Recorded so the reservation can be settled without the process that made it.
redis.call('ZADD', KEYS[3], now, ARGV[1] .. ':' .. ARGV[2])
return {'reserved'}
