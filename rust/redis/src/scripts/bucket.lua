-- The token bucket as GCRA (model/token_bucket.rs). One token costs PRICE (Q1) units, one
-- microsecond refills TICK (Q2) units, the bucket holds CAPACITY (Q3) units. Marks (refill,
-- in units) are counted from now: the mark of instant t is TICK * (t - now). Its part of the
-- state is "AT AHEAD PRICE": at microsecond AT the theoretical arrival time was AHEAD units
-- past AT's mark (0: full), with a token priced PRICE then (a rate change keeps the tokens
-- owed).

local price, tick, capacity = Q1, Q2, Q3
local unit = price
local ahead = 0

local function load_budget(header)
  if header == nil then return end
  local at, owed, was = string.match(header, '^(%d+) (%d+) (%d+)$')
  owed, was = tonumber(owed), tonumber(was)
  if was ~= price then owed = math.ceil(owed / was * price) end
  ahead = math.max(owed - tick * (now - tonumber(at)), 0)
end

local function budget_header() return string.format('%.0f %.0f %.0f', now, ahead, price) end
-- Microseconds from now that the budget's state matters: until it is full again.
local function budget_keep() return math.ceil(ahead / tick) end
local function save_budget(_) end

local function room() return capacity - held end
local function owed() return math.max(ahead - room(), 0) end
local function free() return math.max(room() - math.max(ahead, 0), 0) end
local function mark(t) return tick * (t - now) end
-- Microseconds from now until the budget has refilled to mark `m`.
local function until_mark(m)
  if m <= 0 then return 0 end
  return math.ceil(m / tick)
end

local function take_units(units)
  ahead = math.max(ahead, 0) + units
  dirty = true
end
local function wait_for(units)
  return until_mark(math.max(units + owed() - free(), 0))
end
