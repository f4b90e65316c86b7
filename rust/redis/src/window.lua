-- One budget's sliding window, decided atomically in the server.
--
-- The rule is the in-memory limiter's (the core's model, `model/sliding_window.rs`): at
-- most LIMIT tokens in any closed window of WINDOW microseconds (an admission at t counts
-- until t + WINDOW inclusive). KEYS[1] is the log, a sorted set with one member per token
-- (score: when it was admitted; member: a sequence number); KEYS[2] the budget's meta hash:
-- `seq` (the last member number), `owed` (the end of a back-off: until then the window is
-- full) and `version` (moves at every write, so that a waiter who gives up can undo its turn
-- only if nothing happened since). A waiting caller's turn is stamped at its slot when it is
-- booked: it counts from then on, as the model's promise does. Both keys live until the
-- newest stamp leaves the window.
--
-- ARGV: op, limit, window (us), unused, count, arg, now ("" reads the server's TIME; a
-- number is a test's manual clock); for "undo", ARGV[6] is the turn's version and ARGV[7]
-- "FIRST LAST", its members. Ops and answers are bucket.lua's: {allowed, code, wait, free,
-- now}, and a turn adds {version, "FIRST LAST"}.

local op = ARGV[1]
local limit = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local log, meta = KEYS[1], KEYS[2]

if op == 'undo' then
  if redis.call('HGET', meta, 'version') ~= ARGV[6] then
    return {0}
  end
  local first, last = string.match(ARGV[7], '^(%d+) (%d+)$')
  for seq = tonumber(first), tonumber(last) do
    redis.call('ZREM', log, string.format('%.0f', seq))
  end
  redis.call('HINCRBY', meta, 'version', 1)
  return {1}
end

local now
if ARGV[7] == '' then
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000000 + tonumber(time[2])
else
  now = tonumber(ARGV[7])
end

-- Stamps no window ending now or later counts are gone.
redis.call('ZREMRANGEBYSCORE', log, '-inf', '(' .. string.format('%.0f', now - window))
local owed = tonumber(redis.call('HGET', meta, 'owed') or '0')
local used = redis.call('ZCARD', log)

local function newest()
  local last = redis.call('ZRANGE', log, -1, -1, 'WITHSCORES')
  if last[2] then
    return tonumber(last[2])
  end
  return 0
end

-- Adds `count` stamps at `at`; the keys live until the newest leaves the window.
local function stamp(at, count)
  local seq = redis.call('HINCRBY', meta, 'seq', count)
  for i = seq - count + 1, seq do
    redis.call('ZADD', log, at, string.format('%.0f', i))
  end
  used = used + count
  return seq - count + 1, seq
end

local function save()
  local version = redis.call('HINCRBY', meta, 'version', 1)
  local ttl = math.floor((math.max(newest(), owed) - now + window) / 1000) + 1000
  redis.call('PEXPIRE', log, ttl)
  redis.call('PEXPIRE', meta, ttl)
  return version
end

-- While a back-off is owed, every stamp counts until just before it ends, and so does one
-- at every free place: the window is full until then.
local function keep_owing()
  if now >= owed then
    return
  end
  local floor = math.max(owed - window - 1, 0)
  local low = redis.call('ZRANGEBYSCORE', log, '-inf', '(' .. string.format("%.0f", floor))
  for _, member in ipairs(low) do
    redis.call("ZADD", log, "XX", floor, member)
  end
  if limit > used then
    stamp(floor, limit - used)
  end
end

local count = tonumber(ARGV[5])

if op == 'peek' then
  return {1, 0, 0, math.max(limit - used, 0), now}
elseif op == 'owe' then
  owed = math.max(owed, now + tonumber(ARGV[6]))
  redis.call('HSET', meta, 'owed', string.format('%.0f', owed))
  keep_owing()
  save()
  return {1, 0, 0, 0, now}
end

if count > limit then
  return {0, 2, 0, math.max(limit - used, 0), now}
end

-- The first instant `count` more fit: when the stamp that makes room leaves the window
-- (the log holds the turns booked ahead, at their slots), never before the last of them
-- nor before a back-off ends.
local function slot()
  local at = now
  local excess = used + count - limit
  if excess > 0 then
    local making_room = redis.call('ZRANGE', log, excess - 1, excess - 1, 'WITHSCORES')
    at = tonumber(making_room[2]) + window + 1
  end
  return math.max(at, now, newest(), owed)
end

if op == 'take' then
  if used + count <= limit then
    stamp(now, count)
    save()
    return {1, 0, 0, limit - used, now}
  end
  return {0, 1, slot() - now, math.max(limit - used, 0), now}
end

-- op == 'turn'
local at = slot()
if at - now > tonumber(ARGV[6]) then
  return {0, 3, at - now, math.max(limit - used, 0), now}
end
local first, last = stamp(at, count)
local version = save()
return {1, 0, at - now, math.max(limit - used, 0), now, string.format('%.0f', version),
  string.format('%.0f %.0f', first, last)}
