-- The token bucket beside promises (after bucket.lua): holding, giving back and spending
-- escrow, back-offs, and when a take or a booking fits around the promised slots.

local function gcra_end() return math.max(ahead, 0) + held end
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
