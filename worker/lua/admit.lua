-- admit: one atomic decision covering every control, so nothing is half-acquired.
-- KEYS: 1 pause, 2 cooldown, 3 circuit, 4 inflight, 5 rate, 6 canary, 7 budget reserved (hash),
--       8 spend total, 9 spend today, 10 spend batch, 11 reserved-total, 12 reserved-day,
--       13 reserved-batch, 14 batch hash (may hold a per-batch `budget_micros` cap),
--       15 live waiters (zset job -> expiry), 16 bulk rate window
-- ARGV: 1 prefix, 2 token, 3 max_inflight, 4 lease_ms, 5 rpm, 6 window_ms, 7 burst_max,
--       8 burst_window_ms, 9 canary_interval_ms (0 = off), 10 est cost micros,
--       11 cap total (-1 none), 12 cap day, 13 cap batch, 14 pause_poll_ms, 15 ease_ms,
--       16 lane (live|bulk), 17 job id, 18 bulk floor (calls per window bulk keeps while live
--       waits), 19 min gap between calls (ms; 0 = off: even pacing when no burst is wanted)
-- Returns {1, kind} when admitted (kind: normal | canary | probe), else {0, reason, wait_ms}.
--- @include "_now"
local token = ARGV[2]
local max_inflight, lease_ms = tonumber(ARGV[3]), tonumber(ARGV[4])
local rpm, window_ms = tonumber(ARGV[5]), tonumber(ARGV[6])
local burst_max, burst_window_ms = tonumber(ARGV[7]), tonumber(ARGV[8])
local canary_ms, est = tonumber(ARGV[9]), tonumber(ARGV[10])
local cap_total, cap_day, cap_batch = tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13])
local poll_ms, ease_ms = tonumber(ARGV[14]), tonumber(ARGV[15])
local lane, job_id, bulk_floor = ARGV[16], ARGV[17], tonumber(ARGV[18])
local min_gap = tonumber(ARGV[19] or '0')
local now = now_ms()
local kind = 'normal'

-- a live job that must wait registers as live demand (bulk then yields its capacity)
local function live_waits(wait_ms)
  if lane == 'live' then
    redis.call('ZADD', KEYS[15], now + math.min(wait_ms, 3000) + 1000, job_id)
    redis.call('PEXPIRE', KEYS[15], 10000)
  end
end

-- 1. pause (402 / 401 / 403 / manual): nothing starts, except one canary per interval
local preason = redis.call('HGET', KEYS[1], 'reason')
if preason then
  if canary_ms > 0 and preason ~= 'manual'
     and redis.call('SET', KEYS[6], token, 'NX', 'PX', canary_ms) then
    kind = 'canary'
  else
    return {0, 'paused:' .. preason, poll_ms}
  end
end

-- 2. global cooldown after a 429 (Retry-After honoured by every worker)
local until_ms = tonumber(redis.call('GET', KEYS[2]) or '0')
if now < until_ms then return {0, 'cooldown', until_ms - now} end

-- 3. circuit breaker: open -> wait; after open_until one probe at a time (half-open)
local cstate = redis.call('HGET', KEYS[3], 'state')
if cstate == 'open' then
  local reopen = tonumber(redis.call('HGET', KEYS[3], 'open_until') or '0')
  if now < reopen then return {0, 'circuit_open', reopen - now} end
  redis.call('HSET', KEYS[3], 'state', 'half_open', 'probe', token, 'probe_until', now + lease_ms)
  if kind == 'normal' then kind = 'probe' end
elseif cstate == 'half_open' then
  local probe_until = tonumber(redis.call('HGET', KEYS[3], 'probe_until') or '0')
  if now < probe_until then return {0, 'circuit_half_open', math.min(poll_ms, probe_until - now)} end
  -- the previous probe's worker vanished: this call becomes the probe
  redis.call('HSET', KEYS[3], 'probe', token, 'probe_until', now + lease_ms)
  if kind == 'normal' then kind = 'probe' end
end

-- 4. budget: spent + reserved + this call's estimate must stay within every cap
local own_cap = tonumber(redis.call('HGET', KEYS[14], 'budget_micros') or '-1')
if own_cap >= 0 and (cap_batch < 0 or own_cap < cap_batch) then cap_batch = own_cap end
local function over(cap, spent_key, reserved_key)
  if cap < 0 then return false end
  local used = tonumber(redis.call('GET', spent_key) or '0') + tonumber(redis.call('GET', reserved_key) or '0')
  return used + est > cap
end
if over(cap_total, KEYS[8], KEYS[11]) then return {0, 'budget:total', poll_ms * 5} end
if over(cap_day, KEYS[9], KEYS[12]) then return {0, 'budget:daily', poll_ms * 5} end
if over(cap_batch, KEYS[10], KEYS[13]) then return {0, 'budget:batch', poll_ms * 5} end

-- 5. lanes: while live jobs wait for capacity, bulk yields it (beyond its guaranteed floor)
redis.call('ZREMRANGEBYSCORE', KEYS[15], '-inf', now)
if lane == 'bulk' and redis.call('ZCARD', KEYS[15]) > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[16], '-inf', now - window_ms)
  if redis.call('ZCARD', KEYS[16]) >= bulk_floor then
    return {0, 'lane', math.max(250, poll_ms)}
  end
end

-- 6. global in-flight cap (leases expire, so a crashed worker's slot comes back)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
if redis.call('ZCARD', KEYS[4]) >= max_inflight then
  local first = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
  local wait = math.max(1, math.min(poll_ms, tonumber(first[2]) - now))
  live_waits(wait)
  return {0, 'concurrency', wait}
end

-- 7. rate: the upstream's rolling window (and its burst window), mirrored exactly
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - window_ms)
local limit = rpm
local ease_until = tonumber(redis.call('HGET', KEYS[3], 'ease_until') or '0')
if now < ease_until then limit = math.max(1, math.floor(rpm / 2)) end
local in_window = redis.call('ZCARD', KEYS[5])
if in_window >= limit then
  local oldest = redis.call('ZRANGE', KEYS[5], in_window - limit, in_window - limit, 'WITHSCORES')
  local wait = math.max(1, tonumber(oldest[2]) + window_ms - now)
  live_waits(wait)
  return {0, 'rate', wait}
end
if min_gap > 0 and in_window > 0 then
  local last = redis.call('ZRANGE', KEYS[5], -1, -1, 'WITHSCORES')
  local gap_wait = tonumber(last[2]) + min_gap - now
  if gap_wait > 0 then
    live_waits(gap_wait)
    return {0, 'rate', gap_wait}
  end
end
local in_burst = redis.call('ZCOUNT', KEYS[5], now - burst_window_ms, '+inf')
if in_burst >= burst_max then
  local rows = redis.call('ZRANGEBYSCORE', KEYS[5], now - burst_window_ms, '+inf', 'WITHSCORES', 'LIMIT', in_burst - burst_max, 1)
  local wait = math.max(1, tonumber(rows[2]) + burst_window_ms - now)
  live_waits(wait)
  return {0, 'rate', wait}
end

-- admitted: take the slot, the rate token and the budget reservation together
redis.call('ZADD', KEYS[4], now + lease_ms, token)
redis.call('ZADD', KEYS[5], now, token)
redis.call('PEXPIRE', KEYS[5], window_ms + 1000)
if lane == 'live' then
  redis.call('ZREM', KEYS[15], job_id)
else
  redis.call('ZADD', KEYS[16], now, token)
  redis.call('PEXPIRE', KEYS[16], window_ms + 1000)
end
if est > 0 then
  -- the reservation names the counters it was added to, so it settles the right day and batch
  redis.call('HSET', KEYS[7], token, est .. '|' .. KEYS[12] .. '|' .. KEYS[13] .. '|' .. job_id)
  redis.call('INCRBY', KEYS[11], est)
  redis.call('INCRBY', KEYS[12], est)
  redis.call('INCRBY', KEYS[13], est)
  redis.call('PEXPIRE', KEYS[12], 172800000)
end
return {1, kind}
