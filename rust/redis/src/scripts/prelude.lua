-- One budget and its book of promises, decided atomically in the server: the core's
-- admission model (`model/mod.rs`) step by step, in the same integer units. A script is,
-- put together by `budget.rs`: this prelude; a budget's rule (`bucket.lua` or `window.lua`:
-- the model's `Budget`); `quiet_take.lua` (a take when nothing is booked, answered there);
-- the rule beside promises (`bucket_promises.lua` or `window_promises.lua`); `book.lua`
-- (the bookings and the operations).
--
-- KEYS[1]: the budget's state and book, one string (see book.lua); the window adds
-- KEYS[2], its log. ARGV: 1 op, 2-4 the quota (the budget's), 5 count, 6 arg, 7 now (""
-- reads the server's TIME; a number is a test's manual clock), 8 id, 9 ttl, 10 grace,
-- 11 recheck (microseconds), 12 holder (c: a caller's reservation, w: a waiter's turn).
-- Every quantity stays an exact integer below 2^53, where Lua's doubles are exact.

local op = ARGV[1]
local Q1, Q2, Q3 = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])

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

-- The slot of the last of `promises` (queued bookings in order; 0: none).
local function last_slot(promises)
  if #promises == 0 then return 0 end
  return promises[#promises].slot
end

-- Units in escrow: the held bookings' (the book counts them as it loads).
local held = 0
-- Whether anything changed that must be written back.
local dirty = false
