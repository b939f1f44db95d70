-- gate: can any call be admitted now, on any upstream? Read-only (the canary lock is only
-- looked at), so a worker can stop picking jobs, and a job can hand itself back before reading
-- its source.
-- KEYS: 1 manual pause of the fleet, 2 spend total, 3 spend today, 4 reserved total,
--       5 reserved today; per upstream i = 1..n from 6 + 6 * (i - 1): pause, canary lock (its
--       wallet's, or its own `canary`), cooldown, circuit, its spend, its reserved
-- ARGV: 1 prefix, 2 canary interval ms (0 = off), 3 cap total (-1 none), 4 cap day (-1 none),
--       5 pause poll ms, 6 n; per upstream i from 7 + 2 * (i - 1): est micros, its budget cap
--       (-1 none)
-- Returns {'open'} | {'canary'} (every upstream closed, a canary call is due on one) |
-- {'closed', reason, wait_ms} (the soonest-reopening upstream's reason).
--- @include "_now"
--- @include "_pause"
local now = now_ms()
local poll = tonumber(ARGV[5])
if redis.call('EXISTS', KEYS[1]) == 1 then return {'closed', 'paused:manual', poll} end
local function over(cap, spent_key, reserved_key, est)
  if cap < 0 then return false end
  local used = tonumber(redis.call('GET', spent_key) or '0') + tonumber(redis.call('GET', reserved_key) or '0')
  return used + est > cap
end
local function state(i)
  local k, a = 5 + 6 * (i - 1), 6 + 2 * (i - 1)
  local est = tonumber(ARGV[a + 1])
  local reason = redis.call('HGET', KEYS[k + 1], 'reason')
  if reason then
    if tonumber(ARGV[2]) > 0 and may_probe(KEYS[k + 1]) and redis.call('EXISTS', KEYS[k + 2]) == 0 then
      return {'canary'}
    end
    return {'closed', 'paused:' .. reason, poll}
  end
  local until_ms = tonumber(redis.call('GET', KEYS[k + 3]) or '0')
  if now < until_ms then return {'closed', 'cooldown', until_ms - now} end
  if redis.call('HGET', KEYS[k + 4], 'state') == 'open' then
    local reopen = tonumber(redis.call('HGET', KEYS[k + 4], 'open_until') or '0')
    if now < reopen then return {'closed', 'circuit_open', reopen - now} end
  end
  if over(tonumber(ARGV[3]), KEYS[2], KEYS[4], est) then return {'closed', 'budget:total', poll * 5} end
  if over(tonumber(ARGV[4]), KEYS[3], KEYS[5], est) then return {'closed', 'budget:daily', poll * 5} end
  if over(tonumber(ARGV[a + 2]), KEYS[k + 5], KEYS[k + 6], est) then return {'closed', 'budget:upstream', poll * 5} end
  return {'open'}
end
local best = nil
for i = 1, tonumber(ARGV[6]) do
  local s = state(i)
  if s[1] == 'open' then return s end
  if s[1] == 'canary' then
    best = s
  elseif not best or (best[1] == 'closed' and s[3] < best[3]) then
    best = s
  end
end
return best
