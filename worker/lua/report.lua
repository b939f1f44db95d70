-- report: the outcome of a call, fed back into the shared state.
-- KEYS: 1 pause, 2 cooldown, 3 circuit, 4 canary lock (its wallet's, or its own `canary`),
--       5.. the pauses of the wallet's other upstreams (a pause of wallet scope: every one)
-- ARGV: 1 prefix, 2 outcome (paused | rate_limited | server_error; a success: observe.lua), 3 token, 4 reason,
--       5 retry_after_ms, 6 circuit_threshold, 7 circuit_open_ms, 8 ease_ms, 9 detail,
--       10 canary_interval_ms, 11 probe (1: a canary may find the pause over), 12 timed ms
--       (> 0: the pause lifts itself after it, unprobed), 13 scope (upstream | wallet),
--       14 wallet name ('' none), 15 via (the upstream whose answer paused it)
--- @include "_now"
local outcome, token = ARGV[2], ARGV[3]
local now = now_ms()
if outcome == 'paused' then
  -- the first 402/401/403 wins; later ones keep the original reason and time (the same
  -- timed limit said again lasts until the latest reset said)
  local reason, probe, timed_ms = ARGV[4], ARGV[11], tonumber(ARGV[12])
  local fresh = false
  for i = 1, #KEYS do
    if i == 1 or i > 4 then
      local pause = KEYS[i]
      if redis.call('HSETNX', pause, 'reason', reason) == 1 then
        redis.call('HSET', pause, 'since', now, 'detail', ARGV[9], 'probe', probe,
          'scope', ARGV[13], 'wallet', ARGV[14], 'via', ARGV[15])
        if timed_ms > 0 then
          redis.call('HSET', pause, 'until', now + timed_ms)
          redis.call('PEXPIRE', pause, timed_ms)
        end
        fresh = true
      elseif timed_ms > 0 and redis.call('HGET', pause, 'reason') == reason
          and now + timed_ms > tonumber(redis.call('HGET', pause, 'until') or '0') then
        redis.call('HSET', pause, 'until', now + timed_ms)
        redis.call('PEXPIRE', pause, timed_ms)
      end
      redis.call('HSET', pause, 'last_seen', now)
    end
  end
  -- the first canary waits a full interval: an empty wallet is rarely refilled at once
  local canary_ms = tonumber(ARGV[10])
  if fresh and probe == '1' and canary_ms > 0 then
    redis.call('SET', KEYS[4], 'pause', 'PX', canary_ms)
  end
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
