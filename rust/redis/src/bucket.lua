-- One budget's token bucket (GCRA), decided atomically in the server.
--
-- The rule is the in-memory limiter's (the core's model, `model/token_bucket.rs`): time is
-- measured as refill, one token costs PRICE units and one microsecond refills TICK units,
-- so every quantity is an exact integer (below 2^53: the client checks). The state is one
-- string, "AT AHEAD LAST PRICE": at microsecond AT, the bucket's theoretical arrival time
-- was AHEAD units past AT's mark (0: full); LAST is the slot of the last turn booked, and
-- PRICE the token price the state was written with (a rate change keeps the tokens owed).
-- A key that is gone is a full bucket: the key lives until the bucket is full again.
--
-- KEYS[1]: the state. ARGV: op, price, tick, capacity (units), count, arg, now.
--   op "take":  takes count tokens now, or refuses with the wait.
--   op "turn":  books a waiting caller's turn: count tokens charged at the first slot after
--               every earlier turn, if that is at most arg microseconds away. Answers the
--               state before and after, so that a waiter who gives up can undo it.
--   op "undo":  puts back state ARGV[6] if the state is still ARGV[7] (nothing happened
--               since the turn was booked), else does nothing.
--   op "owe":   back-off: nothing is free for arg microseconds, then it refills from empty.
--   op "peek":  units a take could have now.
-- now: "" reads the server's TIME; a number (microseconds) is a test's manual clock.
-- Answers {allowed (1/0), code, wait (us), free units after, now}; code 0 admitted,
-- 1 rate_limited, 2 exceeds_capacity, 3 max_wait_exceeded.

local op = ARGV[1]
local price = tonumber(ARGV[2])
local tick = tonumber(ARGV[3])
local capacity = tonumber(ARGV[4])
local key = KEYS[1]

local function encode(at, ahead, last)
  return string.format('%.0f %.0f %.0f %.0f', at, ahead, last, price)
end

if op == 'undo' then
  if redis.call('GET', key) == ARGV[7] then
    if ARGV[6] == '' then
      redis.call('DEL', key)
    else
      redis.call('SET', key, ARGV[6], 'KEEPTTL')
    end
    return 1
  end
  return 0
end

local now
if ARGV[7] == '' then
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000000 + tonumber(time[2])
else
  now = tonumber(ARGV[7])
end

local ahead, last = 0, 0
local before = redis.call('GET', key)
if before then
  local at, owed, slot, was = string.match(before, '^(%d+) (%d+) (%d+) (%d+)$')
  owed = tonumber(owed)
  was = tonumber(was)
  if was ~= price then
    owed = math.ceil(owed / was * price)
  end
  ahead = math.max(owed - tick * math.max(now - tonumber(at), 0), 0)
  last = tonumber(slot)
end

-- Microseconds until the bucket has refilled to `mark` units past now's.
local function until_mark(mark)
  if mark <= 0 then
    return 0
  end
  return math.ceil(mark / tick)
end

local function save()
  local after = encode(now, ahead, last)
  local ttl = math.floor(ahead / tick / 1000) + 1000
  redis.call('SET', key, after, 'PX', ttl)
  return after
end

local count = tonumber(ARGV[5])
local units = count * price

if op == 'peek' then
  return {1, 0, 0, math.max(capacity - ahead, 0), now}
elseif op == 'owe' then
  ahead = math.max(ahead, tick * tonumber(ARGV[6]) + capacity)
  save()
  return {1, 0, 0, 0, now}
end

if units > capacity then
  return {0, 2, 0, math.max(capacity - ahead, 0), now}
end
local wait = until_mark(ahead + units - capacity)

if op == 'take' then
  if wait > 0 then
    return {0, 1, wait, math.max(capacity - ahead, 0), now}
  end
  ahead = ahead + units
  save()
  return {1, 0, 0, capacity - ahead, now}
end

-- op == 'turn'
local slot = math.max(now + wait, last)
if slot - now > tonumber(ARGV[6]) then
  return {0, 3, slot - now, math.max(capacity - ahead, 0), now}
end
ahead = math.max(ahead, tick * (slot - now)) + units
last = slot
local after = save()
return {1, 0, slot - now, math.max(capacity - ahead, 0), now, before or '', after}
