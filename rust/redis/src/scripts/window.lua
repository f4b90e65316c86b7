-- The sliding window (model/sliding_window.rs): at most LIMIT (Q1) tokens in any closed
-- window of WINDOW (Q2) microseconds; an admission at t counts until t + WINDOW inclusive.
-- A token is one unit. The log is KEYS[2], a sorted set with one member per token (score:
-- when it was admitted); the state's part is "OWED SEQ LIMIT WINDOW": the end of a back-off
-- (until then the window is full), the last member's number, and the quota.

local limit, window = Q1, Q2
local unit, capacity = 1, Q1
local log = KEYS[2]
local owed_until, members = 0, 0

local function logged() return redis.call('ZCARD', log) end

local function newest()
  local last = redis.call('ZRANGE', log, -1, -1, 'WITHSCORES')
  if last[2] then return tonumber(last[2]) end
  return 0
end

-- The k-th stamp counted (1: the oldest).
local function stamp_at(k)
  return tonumber(redis.call('ZRANGE', log, k - 1, k - 1, 'WITHSCORES')[2])
end

local function budget_header()
  return string.format('%.0f %.0f %.0f %.0f', owed_until, members, limit, window)
end
local function budget_keep() return math.max(newest(), owed_until) - now + window end
local function save_budget(keep)
  redis.call('PEXPIRE', log, math.max(math.floor(keep / 1000), 0) + 1000)
end

-- The first instant at which the admission at `t` no longer counts.
local function leaves(t) return t + window + 1 end

-- Stamps `count` admissions at `at`.
local function stamp(at, count)
  for _ = 1, count do
    members = members + 1
    redis.call('ZADD', log, at, n(members))
  end
  dirty = true
end

local function free() return math.max(limit - held - logged(), 0) end

-- Stamps go in no earlier than the newest: the log stays in order.
local function take_units(units) stamp(math.max(newest(), now), units) end

-- When the admission that makes room for `units` beside the log and the escrow leaves the
-- window; past the log, a window from now (only escrow spent or given back frees room).
local function wait_for(units)
  local counted = logged()
  local excess = counted + held + units - limit
  if excess <= 0 then return 0 end
  if excess <= counted then return math.max(leaves(stamp_at(excess)) - now, 0) end
  return window
end

-- While a back-off is owed, every admission, and one at every free place, counts until
-- just before it ends: the window is full until then, whatever is given back.
local function keep_owing()
  if now >= owed_until then return end
  local floor = math.max(owed_until - window - 1, 0)
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', log, '-inf', '(' .. n(floor))) do
    redis.call('ZADD', log, 'XX', floor, member)
  end
  local room = limit - held - logged()
  if room > 0 then stamp(floor, room) end
  dirty = true
end

local function load_budget(header)
  local was_limit, was_window = limit, window
  if header ~= nil then
    local owed, last, l, span = string.match(header, '^(%d+) (%d+) (%d+) (%d+)$')
    owed_until, members = tonumber(owed), tonumber(last)
    was_limit, was_window = tonumber(l), tonumber(span)
  end
  -- Stamps no window ending now or later counts are gone; re-rated (this call is the first
  -- under the new quota), those the old window no longer counted are gone too.
  redis.call('ZREMRANGEBYSCORE', log, '-inf', '(' .. n(now - math.min(window, was_window)))
  if was_limit ~= limit or was_window ~= window then
    -- A back-off still owed keeps the re-rated window full until it ends.
    keep_owing()
    dirty = true
  end
end
