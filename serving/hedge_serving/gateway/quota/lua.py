"""Pure: the Lua scripts `RedisStore` runs, each one atomic on the Redis server.

Both touch only keys of one request's tenant, but reach keys named inside the reservation
record (settle) as well as KEYS, so they need a single Redis (or a primary with replicas),
not Redis Cluster.
"""

from __future__ import annotations

#: KEYS: the window counters (nw), the concurrency sorted sets (nc), the reservation record.
#: ARGV: now, lease expiry, nw, nc, record payload, record ttl, then per window counter
#: (amount, ceiling, ttl) and per sorted set its ceiling.
#: Checks every counter first, then (only if all have room) adds to every one: all or
#: nothing. Returns {status, value before this request of each counter...}; status 1:
#: admitted, 0: refused, 2: this request id already holds a reservation (nothing added).
RESERVE = """
local now = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local nw = tonumber(ARGV[3])
local nc = tonumber(ARGV[4])
local record = KEYS[nw + nc + 1]
local used = {}
local room = true
for i = 1, nw do
  local value = tonumber(redis.call('GET', KEYS[i]) or '0')
  used[i] = value
  local base = 6 + (i - 1) * 3
  if value + tonumber(ARGV[base + 1]) > tonumber(ARGV[base + 2]) then room = false end
end
for j = 1, nc do
  local key = KEYS[nw + j]
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local value = redis.call('ZCARD', key)
  used[nw + j] = value
  if value + 1 > tonumber(ARGV[6 + nw * 3 + j]) then room = false end
end
if redis.call('EXISTS', record) == 1 then
  table.insert(used, 1, 2)
  return used
end
if not room then
  table.insert(used, 1, 0)
  return used
end
for i = 1, nw do
  local base = 6 + (i - 1) * 3
  redis.call('INCRBY', KEYS[i], ARGV[base + 1])
  redis.call('EXPIRE', KEYS[i], ARGV[base + 3])
end
for j = 1, nc do
  local key = KEYS[nw + j]
  redis.call('ZADD', key, lease, ARGV[7 + nw * 3 + nc])
  redis.call('EXPIRE', key, math.ceil(lease - now) + 60)
end
redis.call('SET', record, ARGV[5], 'EX', ARGV[6])
table.insert(used, 1, 1)
return used
"""

#: KEYS: the reservation record, then the concurrency sorted sets of the limits as they are
#: now. ARGV: request id, actual tokens. Moves each token counter the request reserved in by
#: (actual - reserved), never below 0, keeping its expiry; frees its slots; deletes the
#: record. Returns 1, or 0 when no record exists (settled already, or never reserved here).
SETTLE = """
local payload = redis.call('GET', KEYS[1])
for i = 2, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
if not payload then return 0 end
redis.call('DEL', KEYS[1])
local record = cjson.decode(payload)
local delta = tonumber(ARGV[2]) - tonumber(record.t)
if delta ~= 0 then
  for _, key in ipairs(record.w) do
    local current = redis.call('GET', key)
    if current then
      local value = tonumber(current) + delta
      if value < 0 then value = 0 end
      redis.call('SET', key, value, 'KEEPTTL')
    end
  end
end
for _, key in ipairs(record.c) do redis.call('ZREM', key, ARGV[1]) end
return 1
"""
