-- The common case first: a take from a budget with nothing booked nor remembered, decided
-- by the budget's rule alone, before the promises' machinery is made (a script makes each
-- of its local functions anew on every call). `book.lua` answers it the same, at more cost.
-- The state string (see book.lua) of such a budget is "BUDGET|SEQ|#".

local state = KEYS[1]
local saved = redis.call('GET', state)
local quiet_header, quiet_seq
if saved then quiet_header, quiet_seq = string.match(saved, '^([^|]*)|(%d+)|#$') end
if saved == nil or quiet_header then load_budget(quiet_header) end

-- A budget re-rated by this call (`dirty`) goes the full way, which saves the new quota.
-- `takes` (many takes in order, ARGV[5] their counts "c1,c2,...") is answered here the same.
if (op == 'take' or op == 'takes') and (saved == nil or quiet_header) and not dirty then
  local function quiet(count)
    local units = tonumber(count) * unit
    if units > capacity then return {0, 2, 0, free(), now} end
    local wait = wait_for(units)
    if wait > 0 then return {0, 1, wait, free(), now} end
    take_units(units)
    return {1, 0, 0, free(), now}
  end
  local result
  if op == 'take' then
    result = quiet(ARGV[5])
  else
    result = {}
    for each in string.gmatch(ARGV[5], '%d+') do
      for _, x in ipairs(quiet(each)) do result[#result + 1] = x end
    end
  end
  if dirty then
    local keep = budget_keep()
    redis.call('SET', state, budget_header() .. '|' .. (quiet_seq or '0') .. '|#', 'PX',
      math.max(math.floor(keep / 1000), 0) + 1000)
    save_budget(keep)
  end
  return result
end
