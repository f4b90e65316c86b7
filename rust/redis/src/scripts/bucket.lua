-- The token bucket as GCRA (model/token_bucket.rs). One token costs PRICE (Q1) units, one
-- microsecond refills TICK (Q2) units, the bucket holds CAPACITY (Q3) units. Marks (refill,
-- in units) are counted from now: the mark of instant t is TICK * (t - now). Its part of the
-- state is "AT AHEAD PRICE TICK CAPACITY": at microsecond AT the theoretical arrival time
-- was AHEAD units past AT's mark (0: full), under the quota of those units.

local price, tick, capacity = Q1, Q2, Q3
local unit = price
local ahead = 0

local function load_budget(header)
  if header == nil then return end
  local at, owed, was_price, was_tick, was_capacity =
    string.match(header, '^(%d+) (%d+) (%d+) (%d+) (%d+)$')
  was_price, was_tick, was_capacity = tonumber(was_price), tonumber(was_tick), tonumber(was_capacity)
  -- The arrival time stays where it was, also when now is earlier (a clock stepped back).
  ahead = math.max(tonumber(owed) - was_tick * (now - tonumber(at)), 0)
  if was_price == price and was_tick == tick and was_capacity == capacity then return end
  -- Re-rated (this call is the first under the new quota): the tokens left carry over, up
  -- to the new burst, and a back-off still owed ends when it did.
  if ahead > was_capacity then
    ahead = capacity + math.ceil((ahead - was_capacity) / was_tick * tick)
  else
    ahead = math.max(capacity - math.floor((was_capacity - ahead) / was_price * price), 0)
  end
  dirty = true
end

local function budget_header()
  return string.format('%.0f %.0f %.0f %.0f %.0f', now, ahead, price, tick, capacity)
end
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
