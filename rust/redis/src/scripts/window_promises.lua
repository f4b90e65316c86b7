-- The sliding window beside promises (after window.lua): holding, giving back and spending
-- escrow, back-offs, and when a take or a booking fits around the promised slots.

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
