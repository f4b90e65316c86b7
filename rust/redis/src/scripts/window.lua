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

-- Stamps go in no earlier than the newest: the log stays in order.
local function take_units(units) stamp(math.max(newest(), now), units) end
local function hold(units) held = held + units end
local function release(units)
  held = held - units
  keep_owing()
end
local function consume(units)
  held = held - units
  take_units(units)
  keep_owing()
end
local function owe_for(micros)
  owed_until = math.max(owed_until, now + micros)
  keep_owing()
  dirty = true
end

-- When the admission that makes room for `units` beside the log and the escrow leaves the
-- window; past the log, a window from now (only escrow spent or given back frees room).
local function wait_for(units)
  local counted = logged()
  local excess = counted + held + units - limit
  if excess <= 0 then return 0 end
  if excess <= counted then return math.max(leaves(stamp_at(excess)) - now, 0) end
  return window
end

local function last_slot(promises)
  if #promises == 0 then return 0 end
  return promises[#promises].slot
end

local function queued_tokens(promises)
  local tokens = 0
  for _, p in ipairs(promises) do tokens = tokens + p.count end
  return tokens
end

-- The slot of the promise holding the k-th token queued.
local function slot_of(promises, k)
  local through = 0
  for _, p in ipairs(promises) do
    through = through + p.count
    if through >= k then return p.slot end
  end
  return last_slot(promises)
end

-- Counted in order: the log, the held tokens (spent now, if on time), then every queued
-- promise at its slot; the slot is when the one that makes room for `units` leaves the
-- window, never before the last queued promise's, nor before a back-off ends.
local function slot_for(promises, units)
  local counted = logged()
  local excess = counted + held + queued_tokens(promises) + units - limit
  local at = now
  if excess > 0 and excess <= counted then
    at = leaves(stamp_at(excess))
  elseif excess > counted then
    local k = excess - counted
    local stamped = now
    if k > held then stamped = slot_of(promises, k - held) end
    at = leaves(math.max(stamped, now, newest()))
  end
  return math.max(at, now, last_slot(promises), owed_until)
end

-- Room now for every token queued.
local function reserved(promises) return queued_tokens(promises) end

-- Now if there is room beside every queued token; else the slot a booking would get.
local function chance(promises, units)
  if free() >= units + reserved(promises) then return 0 end
  return slot_for(promises, units) - now
end
