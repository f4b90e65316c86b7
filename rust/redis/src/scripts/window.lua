-- The sliding window (model/sliding_window.rs): at most LIMIT (Q1) tokens in any closed
-- window of WINDOW (Q2) microseconds; an admission at t counts until t + WINDOW inclusive.
-- A token is one unit. The log is KEYS[2], a sorted set with one member per token (score:
-- when it was admitted); the state's part is "OWED SEQ": the end of a back-off (until then
-- the window is full) and the last member's number.

local limit, window = Q1, Q2
local unit, capacity = 1, Q1
local log = KEYS[2]
local owed_until, members = 0, 0

local function load_budget(header)
  if header ~= nil then
    local owed, last = string.match(header, '^(%d+) (%d+)$')
    owed_until, members = tonumber(owed), tonumber(last)
  end
  -- Stamps no window ending now or later counts are gone.
  redis.call('ZREMRANGEBYSCORE', log, '-inf', '(' .. n(now - window))
end

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

local function budget_header() return string.format('%s %s', n(owed_until), n(members)) end
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
