-- observe: what the upstream said about its rate limit on an answer, kept for the whole fleet.
-- `remaining` only goes down within a window (answers arrive out of order); a later reset
-- starts a new window. A 429 while the window still had room means a shorter-term (burst)
-- rule: the calls started in the last burst window become a learned cap, for a while.
-- `reset` counts from the call's send time (its entry in our rate window), when known.
-- On a 429 the headers describe the rolling window while Retry-After (the fleet's cooldown)
-- says when to come back, so a 429's `remaining` is not kept.
-- An answer with a result also settles the call's flow state (as `report` 'ok' would): one
-- round trip per call. A call refused with 429 was not run, so it leaves our rate windows
-- (where the upstream does count refusals, its `remaining` on the next answer says so).
-- A canary's success lifts its wallet's pause on every upstream of the wallet (those paused
-- for the wallet, not for a reason of their own).
-- KEYS: 1 the upstream's word (hash), 2 rate window (zset of call send times),
--       3 recent 429s (zset), 4 pause, 5 circuit, 6 canary, 7 bulk rate window (zset),
--       8 canary lock (its wallet's, or its own `canary`), 9.. the pauses of the wallet's
--       other upstreams
-- ARGV: 1 prefix, 2 limit (-1 unknown), 3 remaining (-1 unknown), 4 reset ms (-1 unknown),
--       5 HTTP status, 6 burst window ms, 7 how long a learned burst cap holds (ms),
--       8 our rolling window ms, 9 a unique id for this answer, 10 the call's slot token
--       ('' when not known)
-- Returns 'burst' when a burst cap was learned from this 429, 'resumed' when a canary lifted
-- the pause, else 'ok'.
--- @include "_now"
--- @include "_keys"
-- call_ok(pause, circuit, canary, token): a successful call closes the circuit, and a
-- successful canary lifts the pause (its wallet's too). Returns 'resumed' or 'closed'.
local function call_ok(pause_key, circuit_key, canary_key, token)
  redis.call('HSET', circuit_key, 'state', 'closed', 'failures', 0)
  redis.call('HDEL', circuit_key, 'probe', 'probe_until', 'open_until')
  if redis.call('GET', canary_key) == token then
    redis.call('DEL', pause_key, canary_key, KEYS[8])
    for i = 9, #KEYS do
      if redis.call('HGET', KEYS[i], 'scope') == 'wallet' then redis.call('DEL', KEYS[i]) end
    end
    return 'resumed'
  end
  return 'closed'
end
local now = now_ms()
local limit, remaining, reset_ms = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local up = KEYS[1]
if limit > 0 and tonumber(redis.call('HGET', up, 'limit') or '0') ~= limit then
  redis.call('HSET', up, 'limit', limit)
  -- jobs waiting for the limit to be known (`auto`) can go now
  redis.call('PUBLISH', k_flow('wake'), 'limit')
end
local status = tonumber(ARGV[5])
local slot = ARGV[10]
if remaining >= 0 and reset_ms >= 0 and status ~= 429 then
  -- The upstream counted (and timed its reset from) the call's arrival, not this answer: the
  -- reset is anchored at the call's send time, else a slow answer would push the window's
  -- reset out by its own latency (1-3 s on a slow model) and hold every call that long.
  local sent = slot ~= '' and redis.call('ZSCORE', KEYS[2], slot)
  local reset_at = (tonumber(sent) or now) + reset_ms
  local cur_reset = tonumber(redis.call('HGET', up, 'reset_at') or '0')
  local cur_rem = tonumber(redis.call('HGET', up, 'remaining') or '-1')
  if cur_rem < 0 or now >= cur_reset or reset_at > cur_reset + 1000 then
    redis.call('HSET', up, 'remaining', remaining, 'reset_at', reset_at)
  elseif remaining < cur_rem then
    redis.call('HSET', up, 'remaining', remaining)
  end
end
redis.call('HSET', up, 'seen', now)
redis.call('PEXPIRE', up, 3600000)
if slot ~= '' and status < 300 and call_ok(KEYS[4], KEYS[5], KEYS[6], slot) == 'resumed' then
  return 'resumed'
end
if status == 429 then
  local burst_ms = tonumber(ARGV[6])
  if slot ~= '' then
    redis.call('ZREM', KEYS[2], slot)
    redis.call('ZREM', KEYS[7], slot)
  end
  redis.call('ZADD', KEYS[3], now, ARGV[9])
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - burst_ms)
  redis.call('PEXPIRE', KEYS[3], burst_ms + 1000)
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[8]))
  local in_window = redis.call('ZCARD', KEYS[2])
  local window_room = (remaining > 0) or (limit > 0 and in_window < limit)
  if window_room then
    -- what got through: the calls sent in the burst window that were not refused (an
    -- estimate that only falls as more 429s of the same round come back)
    local in_burst = redis.call('ZCOUNT', KEYS[2], now - burst_ms, '+inf')
    if slot == '' then in_burst = in_burst - redis.call('ZCARD', KEYS[3]) end
    local cap = math.max(1, in_burst)
    local cur = tonumber(redis.call('HGET', up, 'burst_cap') or '0')
    local until_ms = tonumber(redis.call('HGET', up, 'burst_until') or '0')
    if now >= until_ms or cur <= 0 or cap < cur then
      redis.call('HSET', up, 'burst_cap', cap)
    end
    redis.call('HSET', up, 'burst_until', now + tonumber(ARGV[7]))
    return 'burst'
  end
end
return 'ok'
