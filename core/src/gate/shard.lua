-- The steps of borrowing a unit for a user whose home shard is dry (see gate.rs, `Attempt`).
-- ARGV[1] names the step. Every step touches the keys of one shard.
local step = ARGV[1]
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
if step == 'take' then
  -- At a sibling: KEYS[1] its hash, KEYS[2] its unsettled set; ARGV[2] member "user:request".
  -- The unit is recorded in the sibling's unsettled set, which is also how it is given back.
  local stock = tonumber(redis.call('HGET', KEYS[1], 'stock'))
  if not stock then
    return 0
  end
  if redis.call('ZSCORE', KEYS[2], ARGV[2]) then
    -- An earlier attempt's unit, not yet given back by settlement: not this attempt's.
    return -1
  end
  if stock <= 0 then
    return 0
  end
  redis.call('HINCRBY', KEYS[1], 'stock', -1)
  redis.call('ZADD', KEYS[2], now(), ARGV[2])
  return 1
elseif step == 'confirm' then
  -- At home: KEYS[1] holders, KEYS[2] unsettled; ARGV[2] user, ARGV[3] request, ARGV[4] shard,
  -- ARGV[5] the attempt's nonce. Refused when the claim is not this attempt's (settlement
  -- released a stalled attempt, and perhaps a retry claimed since).
  if redis.call('HGET', KEYS[1], ARGV[2]) ~= claim_value(ARGV[3], ARGV[5]) then
    return 0
  end
  redis.call('HSET', KEYS[1], ARGV[2], lent_value(ARGV[3], ARGV[4]))
  -- The publish starts now: settlement waits out its deadline from here. The time is the
  -- answer (the reservation's time, as 'reserved' answers it).
  local at = now()
  redis.call('ZADD', KEYS[2], 'XX', at, ARGV[2] .. ':' .. ARGV[3])
  return at
elseif step == 'unclaim' then
  -- At home: KEYS[1] hash, KEYS[2] holders, KEYS[3] unsettled, KEYS[4] requests;
  -- ARGV[2] user, ARGV[3] request,
  -- ARGV[4] the epoch the claim saw ('' when abandoning after an error), ARGV[5] hint ms,
  -- ARGV[6] the attempt's nonce (only its own claim is dropped).
  if redis.call('HGET', KEYS[2], ARGV[2]) == claim_value(ARGV[3], ARGV[6]) then
    redis.call('HDEL', KEYS[2], ARGV[2])
    redis.call('ZREM', KEYS[3], ARGV[2] .. ':' .. ARGV[3])
    redis.call('HDEL', KEYS[4], ARGV[3])
  end
  if ARGV[4] ~= '' then
    redis.call('HINCRBY', KEYS[1], 'refused_sold_out', 1)
    -- Every shard was seen dry since the claim; unless stock came back since (a give-back
    -- bumps every shard's epoch), answer the next ones here without looking again.
    if (redis.call('HGET', KEYS[1], 'epoch') or '0') == ARGV[4] then
      redis.call('HSET', KEYS[1], 'dry_until', now() + tonumber(ARGV[5]))
    end
  end
  return 1
elseif step == 'give_back' then
  -- At a sibling: KEYS[1] its hash, KEYS[2] its unsettled set; ARGV[2] member,
  -- ARGV[3] (settlement only) cutoff ms.
  local at = redis.call('ZSCORE', KEYS[2], ARGV[2])
  if not at then
    return 0
  end
  if ARGV[3] and tonumber(at) > tonumber(ARGV[3]) then
    return -1
  end
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('HINCRBY', KEYS[1], 'stock', 1)
  redis.call('HINCRBY', KEYS[1], 'epoch', 1)
  redis.call('HDEL', KEYS[1], 'dry_until')
  return 1
elseif step == 'wake' then
  -- At any shard after stock came back elsewhere: its sold-out hint no longer holds.
  if redis.call('EXISTS', KEYS[1]) == 1 then
    redis.call('HINCRBY', KEYS[1], 'epoch', 1)
    redis.call('HDEL', KEYS[1], 'dry_until')
  end
  return 1
end
return redis.error_reply('unknown step ' .. tostring(step))
