-- gate: can any call be admitted now? Read-only (the canary lock is only looked at), so a
-- worker can stop picking jobs, and a job can hand itself back before reading its source.
-- KEYS: 1 pause, 2 canary, 3 cooldown, 4 circuit, 5 spend total, 6 spend today,
--       7 reserved total, 8 reserved today
-- ARGV: 1 prefix, 2 canary interval ms (0 = off), 3 est micros, 4 cap total (-1 none),
--       5 cap day (-1 none), 6 pause poll ms
-- Returns {'open'} | {'canary'} (paused, a canary call is due) | {'closed', reason, wait_ms}.
--- @include "_now"
local now = now_ms()
local poll = tonumber(ARGV[6])
local reason = redis.call('HGET', KEYS[1], 'reason')
if reason then
  if tonumber(ARGV[2]) > 0 and reason ~= 'manual' and redis.call('EXISTS', KEYS[2]) == 0 then
    return {'canary'}
  end
  return {'closed', 'paused:' .. reason, poll}
end
local until_ms = tonumber(redis.call('GET', KEYS[3]) or '0')
if now < until_ms then return {'closed', 'cooldown', until_ms - now} end
if redis.call('HGET', KEYS[4], 'state') == 'open' then
  local reopen = tonumber(redis.call('HGET', KEYS[4], 'open_until') or '0')
  if now < reopen then return {'closed', 'circuit_open', reopen - now} end
end
local est = tonumber(ARGV[3])
local function over(cap, spent_key, reserved_key)
  if cap < 0 then return false end
  local used = tonumber(redis.call('GET', spent_key) or '0') + tonumber(redis.call('GET', reserved_key) or '0')
  return used + est > cap
end
if over(tonumber(ARGV[4]), KEYS[5], KEYS[7]) then return {'closed', 'budget:total', poll * 5} end
if over(tonumber(ARGV[5]), KEYS[6], KEYS[8]) then return {'closed', 'budget:daily', poll * 5} end
return {'open'}
