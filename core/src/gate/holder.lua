-- The holders hash's encoding, as holder.rs reads it; loaded ahead of every script that reads
-- or writes a holder value: the request id (36 characters), then nothing (a unit of this shard),
-- CLAIM .. nonce (an attempt is borrowing a unit from a sibling) or LENT .. shard (lent by it).
local CLAIM, LENT = '?', '>'
local function holder_request(value) return string.sub(value, 1, 36) end
local function holder_mark(value) return string.sub(value, 37, 37) end
local function holder_rest(value) return string.sub(value, 38) end
local function claim_value(request, nonce) return request .. CLAIM .. nonce end
local function lent_value(request, shard) return request .. LENT .. shard end
