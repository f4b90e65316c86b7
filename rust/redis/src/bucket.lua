-- One budget's token bucket (GCRA) and its book of promises, decided atomically in the
-- server: the core's admission model (`model/mod.rs`, `model/token_bucket.rs`) step by step,
-- in the same integer units. One token costs PRICE units and one microsecond refills TICK
-- units; every quantity stays an exact integer below 2^53 (the client checks the quota).
-- Marks (refill, in units) are counted from now: the mark of instant t is TICK * (t - now).
--
-- KEYS[1]: the state, one string:
--   "AT AHEAD SEQ PRICE|booking|booking...|#|done|done..."
-- At microsecond AT the theoretical arrival time was AHEAD units past AT's mark (0: full);
-- SEQ numbers the bookings; PRICE is the token price the state was written with (a rate
-- change keeps the tokens owed). The escrow is the held bookings' tokens. A live booking is
-- "ID COUNT SLOT EXPIRES HOLDER STATE LAPSES" (EXPIRES 0: never, a waiter's turn; HOLDER c
-- or w; STATE q queued, h held, l lapsed; LAPSES 0: none); a finished caller's reservation
-- is "ID CODE FORGET" until FORGET (a ttl after it expires, at most the last 1,000). The
-- key lives as long as anything in it matters.
--
-- ARGV: 1 op, 2 price, 3 tick, 4 capacity, 5 count, 6 arg, 7 now ("" reads the server's
-- TIME; a number is a test's manual clock), 8 id, 9 ttl, 10 grace, 11 recheck, 12 holder.
--   take:    count tokens now, if every promise is still met.
--   book:    a promise of count tokens at the first slot after every other, if that is at
--            most arg microseconds away; holder c (a caller's reservation, expires ttl after
--            its slot) or w (a waiting caller's turn). A turn funded at once is admitted.
--   execute: admits booking id (c or w) once its tokens are there.
--   cancel:  gives booking id back.
--   owe:     a back-off: nothing is free for arg microseconds, then it refills from empty.
--   peek:    units a take could have now.
-- Answers {allowed, code, wait, free units, now}, and a booking adds {id, slot, expires}
-- (a turn admitted at once adds nothing): codes 0 admitted (or booked, or cancelled), 1 rate_limited, 2 exceeds_capacity, 3 max_wait_exceeded,
-- 4 not_ready, 5 expired, 6 cancelled, 7 already_executed, 8 unknown_reservation,
-- 9 too_many_reservations.

local op = ARGV[1]
local price = tonumber(ARGV[2])
local tick = tonumber(ARGV[3])
local capacity = tonumber(ARGV[4])
local ttl = tonumber(ARGV[9])
local grace = tonumber(ARGV[10])
local recheck = tonumber(ARGV[11])
local key = KEYS[1]
local LOOK_AHEAD = 8
local MAX_LIVE = 10000
local MAX_DONE = 1000
-- A waiter's turn held this long without being executed lapses: its process is gone.
local WAITER_LAPSE = 300000000
local ADMITTED, RATE_LIMITED, EXCEEDS, MAX_WAIT, NOT_READY = 0, 1, 2, 3, 4
local EXPIRED, CANCELLED, ALREADY, UNKNOWN, TOO_MANY = 5, 6, 7, 8, 9

local now
if ARGV[7] == '' then
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000000 + tonumber(time[2])
else
  now = tonumber(ARGV[7])
end

local function n(x)
  return string.format('%.0f', x)
end

-- The state ----------------------------------------------------------------------------

local ahead, held, seq = 0, 0, 0
local live, done = {}, {}
local saved = redis.call('GET', key)
if saved then
  local parts = {}
  for part in string.gmatch(saved, '[^|]+') do
    parts[#parts + 1] = part
  end
  local at, owed, last, was = string.match(parts[1], '^(%d+) (%d+) (%d+) (%d+)$')
  owed, was = tonumber(owed), tonumber(was)
  if was ~= price then
    owed = math.ceil(owed / was * price)
  end
  ahead = math.max(owed - tick * math.max(now - tonumber(at), 0), 0)
  seq = tonumber(last)
  local finished = false
  for i = 2, #parts do
    if parts[i] == '#' then
      finished = true
    elseif finished then
      local id, code, forget = string.match(parts[i], '^(%d+) (%d+) (%d+)$')
      if tonumber(forget) > now then
        done[#done + 1] = {id = tonumber(id), code = tonumber(code), forget = tonumber(forget)}
      end
    else
      local f = {}
      for x in string.gmatch(parts[i], '%S+') do
        f[#f + 1] = x
      end
      live[#live + 1] = {
        id = tonumber(f[1]), count = tonumber(f[2]), slot = tonumber(f[3]),
        expires = tonumber(f[4]), holder = f[5], state = f[6], lapses = tonumber(f[7]),
      }
      if f[6] == 'h' then held = held + tonumber(f[2]) * price end
    end
  end
end
-- Whether anything changed that must be written back.
local dirty = false

local function save()
  local parts = {string.format('%s %s %s %s', n(now), n(ahead), n(seq), n(price))}
  local keep = math.ceil(ahead / tick)
  for _, b in ipairs(live) do
    parts[#parts + 1] = string.format('%s %s %s %s %s %s %s', n(b.id), n(b.count), n(b.slot),
      n(b.expires), b.holder, b.state, n(b.lapses))
    local until_ = b.expires
    if until_ == 0 then
      until_ = math.max(b.slot, now) + WAITER_LAPSE
    end
    keep = math.max(keep, until_ - now)
  end
  parts[#parts + 1] = '#'
  local first = math.max(#done - MAX_DONE + 1, 1)
  for i = first, #done do
    local d = done[i]
    parts[#parts + 1] = string.format('%s %s %s', n(d.id), n(d.code), n(d.forget))
    keep = math.max(keep, d.forget - now)
  end
  redis.call('SET', key, table.concat(parts, '|'), 'PX', math.floor(keep / 1000) + 1000)
end

-- The token bucket (model/token_bucket.rs), marks counted from now ------------------------

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
local function take_units(units) ahead = math.max(ahead, 0) + units end
local function hold(units) held = held + units end
local function release(units)
  if owed() > 0 then ahead = ahead + units end
  held = held - units
end
local function consume(units)
  held = held - units
  take_units(units)
end
local function wait_for(units)
  return until_mark(math.max(units + owed() - free(), 0))
end

-- The book (model/book.rs) ----------------------------------------------------------------

local function units_of(b) return b.count * price end

-- The queued promises in booking order, without booking `except`: {mark, units}.
local function schedule(except)
  local promises = {}
  for _, b in ipairs(live) do
    if b.state == 'q' and b.id ~= except then
      promises[#promises + 1] = {mark(b.slot), units_of(b), b.slot}
    end
  end
  return promises
end

local function last_slot(promises)
  if #promises == 0 then return 0 end
  return promises[#promises][3]
end

local function held_units()
  local total = 0
  for _, b in ipairs(live) do
    if b.state == 'h' then total = total + units_of(b) end
  end
  return total
end

local function find(id)
  for i, b in ipairs(live) do
    if b.id == id then return i, b end
  end
end

local function finish(i, code)
  local b = table.remove(live, i)
  if b.holder == 'c' then
    done[#done + 1] = {id = b.id, code = code, forget = b.expires + ttl}
  end
  dirty = true
  return b
end

-- GCRA over the promises: the first slot at which `units` can be held after all of them.
local function slot_for(promises, units)
  local e = gcra_end()
  for _, p in ipairs(promises) do
    e = math.max(e, p[1]) + p[2]
  end
  local at = math.max(e + units - capacity, 0)
  return math.max(now + until_mark(at), now, last_slot(promises))
end

local function reserved(promises)
  local through, most = 0, 0
  for _, p in ipairs(promises) do
    through = through + p[2]
    most = math.max(most, through - p[1])
  end
  return most
end

local function keeps(e, promises, from)
  local through = 0
  for i = from, #promises do
    through = through + promises[i][2]
    if e + through > promises[i][1] + capacity then return false end
  end
  return true
end

-- Microseconds until a take of `units` fits beside every promise (0: now).
local function chance(promises, units)
  local e = gcra_end()
  for gap = 0, LOOK_AHEAD do
    local nxt = promises[gap + 1]
    local at = math.max(e + units - capacity, 0)
    if (nxt == nil or at < nxt[1]) and keeps(math.max(e, at) + units, promises, gap + 1) then
      return until_mark(at)
    end
    if nxt == nil then break end
    e = math.max(e, nxt[1]) + nxt[2]
  end
  return slot_for(promises, units) - now
end

-- No sooner than `recheck` when held tokens stand in the way.
local function hint(units, wait)
  local escrow = held_units()
  if wait > 0 and escrow > 0 and units > capacity - escrow then
    return math.max(wait, recheck)
  end
  return wait
end

-- Bookings due at `now` by `when`, in (time, id) order.
local function due(when)
  local found = {}
  for _, b in ipairs(live) do
    local t = when(b)
    if t and t <= now then found[#found + 1] = {t, b.id} end
  end
  table.sort(found, function(x, y)
    if x[1] ~= y[1] then return x[1] < y[1] end
    return x[2] < y[2]
  end)
  return found
end

-- Expiries, lapses, then funding in booking order while the budget has the tokens.
local function refresh()
  for _, d in ipairs(due(function(b) if b.expires ~= 0 then return b.expires end end)) do
    local i, b = find(d[2])
    finish(i, EXPIRED)
    if b.state == 'h' then release(units_of(b)) end
  end
  for _, d in ipairs(due(function(b) if b.state == 'h' and b.lapses ~= 0 then return b.lapses end end)) do
    local _, b = find(d[2])
    b.state = 'l'
    release(units_of(b))
    dirty = true
  end
  for _, b in ipairs(live) do
    if b.state == 'q' then
      if b.slot > now or free() < units_of(b) then break end
      hold(units_of(b))
      b.state = 'h'
      dirty = true
      if b.holder == 'c' then
        b.lapses = math.max(b.slot, now) + grace + 1
      else
        b.lapses = math.max(b.slot, now) + WAITER_LAPSE
      end
    end
  end
end

local function queued_ahead(id)
  local tokens = 0
  for _, b in ipairs(live) do
    if b.id == id then break end
    if b.state == 'q' then tokens = tokens + b.count end
  end
  return tokens
end

local function next_expiry()
  local soonest
  for _, b in ipairs(live) do
    if b.expires ~= 0 and (soonest == nil or b.expires < soonest) then soonest = b.expires end
  end
  return soonest
end

local function wait_past_slot(b)
  local units = (queued_ahead(b.id) + b.count) * price
  if units <= capacity - held_units() then
    local w = wait_for(units)
    if w > 0 then return w end
  end
  local soonest = next_expiry()
  if soonest == nil then return recheck end
  return math.max(soonest - now, 1)
end

local function wait_for_turn(b)
  local units = units_of(b)
  local early = hint(units, chance(schedule(b.id), units))
  if early == 0 or b.slot > now then
    return math.min(early, math.max(b.slot - now, 1))
  end
  return math.min(early, wait_past_slot(b))
end

-- The operations (model/mod.rs) -------------------------------------------------------

local function answer(allowed, code, wait)
  return {allowed, code, wait, math.max(free() - reserved(schedule(nil)), 0), now}
end

local function execute(i, b)
  local units = units_of(b)
  if b.state == 'q' then
    local wait = wait_for_turn(b)
    if wait > 0 then return answer(0, NOT_READY, wait) end
    hold(units)
  elseif b.state == 'l' then
    local wait = hint(units, chance(schedule(nil), units))
    if wait > 0 then return answer(0, NOT_READY, wait) end
    hold(units)
  end
  finish(i, ALREADY)
  consume(units)
  return answer(1, ADMITTED, 0)
end

refresh()
local count = tonumber(ARGV[5])
local result

if op == 'peek' then
  result = answer(1, ADMITTED, 0)
elseif op == 'owe' then
  ahead = math.max(ahead, mark(now + tonumber(ARGV[6])) + room())
  dirty = true
  result = answer(1, ADMITTED, 0)
elseif op == 'take' then
  local units = count * price
  local wait = 0
  if units <= capacity then wait = chance(schedule(nil), units) end
  if units > capacity then
    result = answer(0, EXCEEDS, 0)
  elseif wait > 0 then
    result = answer(0, RATE_LIMITED, hint(units, wait))
  else
    take_units(units)
    dirty = true
    result = answer(1, ADMITTED, 0)
  end
elseif op == 'book' then
  local units = count * price
  local slot = 0
  if units <= capacity then slot = slot_for(schedule(nil), units) end
  if units > capacity then
    result = answer(0, EXCEEDS, 0)
  elseif slot - now > tonumber(ARGV[6]) then
    result = answer(0, MAX_WAIT, slot - now)
  elseif #live >= MAX_LIVE then
    result = answer(0, TOO_MANY, slot - now)
  else
    seq = seq + 1
    dirty = true
    local holder = ARGV[12]
    local expires = 0
    if holder == 'c' then expires = slot + ttl end
    local b = {id = seq, count = count, slot = slot, expires = expires, holder = holder,
      state = 'q', lapses = 0}
    live[#live + 1] = b
    refresh()
    if holder == 'w' and b.state == 'h' and slot == now then
      -- A turn funded at once is its waiter's admission.
      local i = find(b.id)
      finish(i, ALREADY)
      consume(units)
      result = answer(1, ADMITTED, 0)
    else
      result = answer(1, ADMITTED, slot - now)
      result[6], result[7], result[8] = b.id, slot, expires
    end
  end
elseif op == 'execute' or op == 'cancel' then
  local id = tonumber(ARGV[8])
  local i, b = find(id)
  if b == nil then
    local code = UNKNOWN
    for _, d in ipairs(done) do
      if d.id == id then code = d.code end
    end
    if op == 'cancel' then
      result = answer(0, UNKNOWN, 0)
    else
      result = answer(0, code, 0)
    end
  elseif op == 'execute' then
    result = execute(i, b)
  else
    finish(i, CANCELLED)
    if b.state == 'h' then release(units_of(b)) end
    refresh()
    result = answer(1, ADMITTED, 0)
  end
end
if dirty then save() end
return result
