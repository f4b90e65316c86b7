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
  ahead = math.max(owed - tick * math.max(now - tonumber(at), 0), 0)
end

local function budget_header() return string.format('%s %s %s', n(now), n(ahead), n(price)) end
-- Microseconds from now that the budget's state matters: until it is full again.
local function budget_keep() return math.ceil(ahead / tick) end
local function save_budget(_) end

local function room() return capacity - held end
local function owed() return math.max(ahead - room(), 0) end
local function free() return math.max(room() - math.max(ahead, 0), 0) end
local function gcra_end() return math.max(ahead, 0) + held end
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
local function hold(units) held = held + units end
-- A back-off still owed keeps owing as much: the credit given back is owed too.
local function release(units)
  if owed() > 0 then ahead = ahead + units end
  held = held - units
end
local function consume(units)
  held = held - units
  take_units(units)
end
local function owe_for(micros)
  ahead = math.max(ahead, mark(now + micros) + room())
  dirty = true
end
local function wait_for(units)
  return until_mark(math.max(units + owed() - free(), 0))
end

local function last_slot(promises)
  if #promises == 0 then return 0 end
  return promises[#promises].slot
end

-- GCRA over the promises: the first slot at which `units` can be held after all of them.
local function slot_for(promises, units)
  local e = gcra_end()
  for _, p in ipairs(promises) do
    e = math.max(e, mark(p.slot)) + p.units
  end
  local at = math.max(e + units - capacity, 0)
  return math.max(now + until_mark(at), now, last_slot(promises))
end

-- Units that must stay free now so that every promise is met at its slot.
local function reserved(promises)
  local through, most = 0, 0
  for _, p in ipairs(promises) do
    through = through + p.units
    most = math.max(most, through - mark(p.slot))
  end
  return most
end

local function keeps(e, promises, from)
  local through = 0
  for i = from, #promises do
    through = through + promises[i].units
    if e + through > mark(promises[i].slot) + capacity then return false end
  end
  return true
end

-- Microseconds until a take of `units` fits beside every promise (0: now): the first gap
-- in the schedule where it makes no promise late, looking 8 promises ahead.
local function chance(promises, units)
  local e = gcra_end()
  for gap = 0, 8 do
    local nxt = promises[gap + 1]
    local at = math.max(e + units - capacity, 0)
    if (nxt == nil or at < mark(nxt.slot)) and keeps(math.max(e, at) + units, promises, gap + 1) then
      return until_mark(at)
    end
    if nxt == nil then break end
    e = math.max(e, mark(nxt.slot)) + nxt.units
  end
  return slot_for(promises, units) - now
end
