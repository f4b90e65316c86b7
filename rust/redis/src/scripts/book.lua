-- The book of bookings and the operations (model/book.rs, model/mod.rs), over the budget
-- defined before it, for whatever `quiet_take.lua` left. The state string is
-- "BUDGET|SEQ|@BOOK": the budget's part, the last booking's number, and the book packed
-- with MessagePack by the server's `cmsgpack`, in C (for 1,000 bookings, reading took a
-- third of the time splitting text in Lua had, writing a fifth of formatting it) as two
-- arrays: every live booking as {ID, COUNT, SLOT, EXPIRES, HOLDER, STATE, LAPSES}
-- (EXPIRES 0: never, a waiter's turn; STATE q queued, h held, l lapsed; LAPSES 0: none),
-- and the outcome of finished reservations as {ID, CODE, FORGET} until FORGET (a ttl after
-- they expired; the last 1,000 at most). With nothing in the book it is "BUDGET|SEQ|#".
--
-- Ops: take (count tokens now, if every promise is still met), takes (many, in order), book (a promise of count
-- tokens at the first slot after every other, if at most arg microseconds away; a waiter's
-- turn funded at once is admitted), books (many, in order), execute (booking id, once its
-- tokens are there), cancel (booking id), cancels (many), owe (a back-off of arg
-- microseconds), peek. Answers {allowed, code, wait, free units, now}, and a booking adds
-- {id, slot, expires} (a turn admitted at once adds nothing; in `books`, zeros). Codes: 0 admitted (or booked, or cancelled), 1 rate_limited, 2 exceeds_capacity,
-- 3 max_wait_exceeded, 4 not_ready, 5 expired, 6 cancelled, 7 already_executed,
-- 8 unknown_reservation, 9 too_many_reservations.

local ttl = tonumber(ARGV[9])
local grace = tonumber(ARGV[10])
local recheck = tonumber(ARGV[11])
local ADMITTED, RATE_LIMITED, EXCEEDS, MAX_WAIT, NOT_READY = 0, 1, 2, 3, 4
local EXPIRED, CANCELLED, ALREADY, UNKNOWN, TOO_MANY = 5, 6, 7, 8, 9
local MAX_LIVE, MAX_DONE = 10000, 1000
-- A waiter's turn held this long without being executed lapses: its process is gone.
local WAITER_LAPSE = 300000000
local seq = tonumber(quiet_seq) or 0
local live, done = {}, {}
if saved and not quiet_header then
  local header, number, at = string.match(saved, '^([^|]*)|(%d+)|@()')
  seq = tonumber(number)
  local rows, finished = cmsgpack.unpack(string.sub(saved, at))
  for _, f in ipairs(rows) do
    live[#live + 1] = {
      id = f[1], count = f[2], slot = f[3], expires = f[4], holder = f[5], state = f[6],
      lapses = f[7],
    }
    if f[6] == 'h' then held = held + f[2] * unit end
  end
  for _, f in ipairs(finished) do
    if f[3] > now then done[#done + 1] = {id = f[1], code = f[2], forget = f[3]} end
  end
  load_budget(header)
end

local function save()
  if #live == 0 and #done == 0 then
    local keep = math.max(math.floor(budget_keep() / 1000), 0) + 1000
    redis.call('SET', state, budget_header() .. '|' .. n(seq) .. '|#', 'PX', keep)
    save_budget(budget_keep())
    return
  end
  local rows, finished = {}, {}
  local keep = budget_keep()
  for _, b in ipairs(live) do
    rows[#rows + 1] = {b.id, b.count, b.slot, b.expires, b.holder, b.state, b.lapses}
    local matters = b.expires
    if matters == 0 then matters = math.max(b.slot, b.lapses, now) + WAITER_LAPSE end
    keep = math.max(keep, matters - now)
  end
  for i = math.max(#done - MAX_DONE + 1, 1), #done do
    local d = done[i]
    finished[#finished + 1] = {d.id, d.code, d.forget}
    keep = math.max(keep, d.forget - now)
  end
  local book = cmsgpack.pack(rows, finished)
  redis.call('SET', state, budget_header() .. '|' .. n(seq) .. '|@' .. book, 'PX',
    math.max(math.floor(keep / 1000), 0) + 1000)
  save_budget(keep)
end

local function units_of(b) return b.count * unit end

local NONE = {}

-- The queued promises in booking order, without booking `except`. All of them are kept,
-- grown by a booking and dropped when any other change comes (`books` asks for them once
-- per booking).
local queued = nil
local function schedule(except)
  if #live == 0 then return NONE end
  if except == nil and queued then return queued end
  local promises = {}
  for _, b in ipairs(live) do
    if b.state == 'q' and b.id ~= except then
      promises[#promises + 1] = {slot = b.slot, units = units_of(b), count = b.count}
    end
  end
  if except == nil then queued = promises end
  return promises
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

-- A caller's reservation that ends keeps its outcome (a waiter's turn is forgotten).
local function remember(b, code)
  if b.holder == 'c' then
    done[#done + 1] = {id = b.id, code = code, forget = b.expires + ttl}
  end
  dirty = true
end

local function finish(i, code)
  local b = table.remove(live, i)
  queued = nil
  remember(b, code)
  return b
end

-- No sooner than `recheck` when held tokens stand in the way.
local function hint(units, wait)
  if held == 0 then return wait end
  local escrow = held_units()
  if wait > 0 and escrow > 0 and units > capacity - escrow then
    return math.max(wait, recheck)
  end
  return wait
end

-- Bookings due by `when`, in (time, id) order.
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

-- Funding in booking order while the budget has the tokens.
local function fund()
  for _, b in ipairs(live) do
    if b.state == 'q' then
      if b.slot > now or free() < units_of(b) then break end
      hold(units_of(b))
      b.state = 'h'
      queued = nil
      if b.holder == 'c' then
        b.lapses = math.max(b.slot, now) + grace + 1
      else
        b.lapses = math.max(b.slot, now) + WAITER_LAPSE
      end
      dirty = true
    end
  end
end

-- Expiries, lapses, then funding (once a call: `now` does not move within it).
local function refresh()
  if #live == 0 then return end
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
  fund()
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

-- Past its slot: until the budget has the tokens queued up to and including `b`, if the
-- escrow leaves room for them; else until the first reservation expires, or `recheck`.
local function wait_past_slot(b)
  local units = (queued_ahead(b.id) + b.count) * unit
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

local function answer(allowed, code, wait)
  local spare = free()
  if #live > 0 then spare = spare - reserved(schedule(nil)) end
  return {allowed, code, wait, math.max(spare, 0), now}
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

local function take(count)
  local units = count * unit
  if units > capacity then return answer(0, EXCEEDS, 0) end
  local wait = chance(schedule(nil), units)
  if wait > 0 then return answer(0, RATE_LIMITED, hint(units, wait)) end
  take_units(units)
  return answer(1, ADMITTED, 0)
end

local function book(count)
  local units = count * unit
  local slot = 0
  if units <= capacity then slot = slot_for(schedule(nil), units) end
  if units > capacity then return answer(0, EXCEEDS, 0) end
  if slot - now > tonumber(ARGV[6]) then return answer(0, MAX_WAIT, slot - now) end
  if #live >= MAX_LIVE then return answer(0, TOO_MANY, slot - now) end
  seq = seq + 1
  dirty = true
  local holder = ARGV[12]
  local expires = 0
  if holder == 'c' then expires = slot + ttl end
  local b = {id = seq, count = count, slot = slot, expires = expires, holder = holder,
    state = 'q', lapses = 0}
  live[#live + 1] = b
  if queued then
    queued[#queued + 1] = {slot = b.slot, units = units_of(b), count = b.count}
  end
  fund()
  if holder == 'w' and b.state == 'h' and slot == now then
    -- A turn funded at once is its waiter's admission.
    finish(find(b.id), ALREADY)
    consume(units)
    return answer(1, ADMITTED, 0)
  end
  local booked = answer(1, ADMITTED, slot - now)
  booked[6], booked[7], booked[8] = b.id, slot, expires
  return booked
end

-- Cancels (gives back) the bookings ARGV[8] names ("i1,i2,...": one for `cancel`, many
-- for `cancels`) in one pass over the book: an answer each, admitted if it was live.
local function cancel_all()
  local ids, gone = {}, {}
  for each in string.gmatch(ARGV[8], '%d+') do
    local id = tonumber(each)
    ids[#ids + 1], gone[id] = id, false
  end
  local kept = {}
  for _, b in ipairs(live) do
    if gone[b.id] == false then
      gone[b.id] = true
      remember(b, CANCELLED)
      if b.state == 'h' then release(units_of(b)) end
    else
      kept[#kept + 1] = b
    end
  end
  live = kept
  queued = nil
  fund()
  local answers, after = {}, answer(1, ADMITTED, 0)
  for _, id in ipairs(ids) do
    -- As one after another: an id named twice was live for the first only.
    local live_then = gone[id]
    gone[id] = false
    answers[#answers + 1] = live_then and 1 or 0
    answers[#answers + 1] = live_then and ADMITTED or UNKNOWN
    for i = 3, 5 do answers[#answers + 1] = after[i] end
  end
  return answers
end

refresh()
local count = tonumber(ARGV[5])
local result

if op == 'peek' then
  result = answer(1, ADMITTED, 0)
elseif op == 'owe' then
  owe_for(tonumber(ARGV[6]))
  result = answer(1, ADMITTED, 0)
elseif op == 'take' then
  result = take(count)
elseif op == 'takes' then
  -- Many takes in order (ARGV[5]: their counts, "c1,c2,..."): their answers, flattened.
  result = {}
  for each in string.gmatch(ARGV[5], '%d+') do
    for _, x in ipairs(take(tonumber(each))) do result[#result + 1] = x end
  end
elseif op == 'book' then
  result = book(count)
elseif op == 'books' then
  -- Many bookings in order (ARGV[5]: their counts): their answers, each padded to 8.
  result = {}
  for each in string.gmatch(ARGV[5], '%d+') do
    local one = book(tonumber(each))
    for i = 1, 8 do result[#result + 1] = one[i] or 0 end
  end
elseif op == 'execute' then
  local id = tonumber(ARGV[8])
  local i, b = find(id)
  if b == nil then
    local code = UNKNOWN
    for _, d in ipairs(done) do
      if d.id == id then code = d.code end
    end
    result = answer(0, code, 0)
  else
    result = execute(i, b)
  end
elseif op == 'cancel' or op == 'cancels' then
  result = cancel_all()
end
if dirty then save() end
return result
