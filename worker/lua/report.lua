-- report: the outcome of a call, fed back into the shared state.
-- KEYS: 1 pause, 2 cooldown, 3 circuit, 4 canary
-- ARGV: 1 prefix, 2 outcome (paused | rate_limited | server_error; a success: observe.lua), 3 token, 4 reason,
--       5 retry_after_ms, 6 circuit_threshold, 7 circuit_open_ms, 8 ease_ms, 9 detail,
--       10 canary_interval_ms
--- @include "_now"
local outcome, token = ARGV[2], ARGV[3]
local now = now_ms()
if outcome == 'paused' then
  -- the first 402/401/403 wins; later ones keep the original reason and time
  if redis.call('HSETNX', KEYS[1], 'reason', ARGV[4]) == 1 then
    redis.call('HSET', KEYS[1], 'since', now, 'detail', ARGV[9])
    -- the first canary waits a full interval: an empty wallet is rarely refilled at once
    local canary_ms = tonumber(ARGV[10])
    if canary_ms > 0 then redis.call('SET', KEYS[4], 'pause', 'PX', canary_ms) end
  end
  redis.call('HSET', KEYS[1], 'last_seen', now)
  return 'paused'
end
if outcome == 'rate_limited' then
  local until_ms = now + tonumber(ARGV[5])
  local cur = tonumber(redis.call('GET', KEYS[2]) or '0')
  if until_ms > cur then redis.call('SET', KEYS[2], until_ms, 'PX', tonumber(ARGV[5]) + 1000) end
  -- ease back in: half the rate for a while after the cooldown
  redis.call('HSET', KEYS[3], 'ease_until', math.max(until_ms, cur) + tonumber(ARGV[8]))
  return 'cooldown'
end
local state = redis.call('HGET', KEYS[3], 'state') or 'closed'
if outcome == 'server_error' then
  local failures = redis.call('HINCRBY', KEYS[3], 'failures', 1)
  if state == 'half_open' or failures >= tonumber(ARGV[6]) then
    redis.call('HSET', KEYS[3], 'state', 'open', 'open_until', now + tonumber(ARGV[7]), 'opened_at', now)
    redis.call('HDEL', KEYS[3], 'probe', 'probe_until')
    return 'open'
  end
  return state
end
return redis.error_reply('unknown outcome: ' .. outcome)
