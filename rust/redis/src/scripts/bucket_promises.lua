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

-- The folds over a schedule so far: a schedule only grows within a call (`books` appends
-- a promise per booking), so each fold goes on from where it stopped instead of starting
-- over, which made a thousand bookings in one call cost a million steps.
local ended, through_end = {}, {}

-- GCRA over the promises: the first slot at which `units` can be held after all of them.
local function slot_for(promises, units)
  local e, from = gcra_end(), 1
  if ended.promises == promises and ended.start == e and ended.n <= #promises then
    e, from = ended.e, ended.n + 1
  end
  ended.promises, ended.start, ended.n = promises, gcra_end(), #promises
  for i = from, #promises do
    local p = promises[i]
    e = math.max(e, mark(p.slot)) + p.units
  end
  ended.e = e
  local at = math.max(e + units - capacity, 0)
  return math.max(now + until_mark(at), now, last_slot(promises))
end

-- Units that must stay free now so that every promise is met at its slot.
local function reserved(promises)
  local through, most, from = 0, 0, 1
  if through_end.promises == promises and through_end.n <= #promises then
    through, most, from = through_end.through, through_end.most, through_end.n + 1
  end
  for i = from, #promises do
    local p = promises[i]
    through = through + p.units
    most = math.max(most, through - mark(p.slot))
  end
  through_end.promises, through_end.n = promises, #promises
  through_end.through, through_end.most = through, most
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
