-- wrk script: POST /api/coupons/{1..COUPONS}/issue with a random user from 1..USERS.
--   wrk -t2 -c100 -d20s -s loadtest/wrk-issue.lua http://127.0.0.1:8080
-- COUPONS and USERS come from the environment (defaults 100 and 1,000,000).
local coupons = tonumber(os.getenv("COUPONS") or "100")
local users = tonumber(os.getenv("USERS") or "1000000")
local codes = {}

function setup(thread)
  thread:set("id", tostring(thread))
end

function init(args)
  math.randomseed(os.time() + tonumber(string.sub(id or "0", -6), 16) or 0)
end

request = function()
  local coupon = math.random(1, coupons)
  local body = string.format('{"userId":%d}', math.random(1, users))
  return wrk.format("POST", "/api/coupons/" .. coupon .. "/issue",
    { ["Content-Type"] = "application/json" }, body)
end

response = function(status, headers, body)
  codes[status] = (codes[status] or 0) + 1
end

done = function(summary, latency, requests)
  io.write(string.format("requests %d, %.0f req/s, p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.2f ms, non-2xx %d (409s included), socket errors %d\n",
    summary.requests, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
