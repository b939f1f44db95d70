"""Lua for the fleet-wide flow control. Each script is atomic; time is Redis `TIME`, never a
worker's clock (clocks drift between machines)."""

from __future__ import annotations

_NOW = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# Admission: one atomic decision covering every control, so nothing is half-acquired.
# KEYS: 1 pause, 2 cooldown, 3 circuit, 4 inflight, 5 rate, 6 canary, 7 budget reserved (hash),
#       8 spend total, 9 spend today, 10 spend batch, 11 reserved-total, 12 reserved-day,
#       13 reserved-batch, 14 batch hash (may hold a per-batch `budget_micros` cap),
#       15 live waiters (zset job -> expiry), 16 bulk rate window
# ARGV: 1 token, 2 max_inflight, 3 lease_ms, 4 rpm, 5 window_ms, 6 burst_max, 7 burst_window_ms,
#       8 canary_interval_ms (0 = off), 9 est cost micros, 10 cap total (-1 none), 11 cap day,
#       12 cap batch, 13 pause_poll_ms, 14 ease_ms, 15 lane (live|bulk), 16 job id,
#       17 bulk floor (calls per window bulk keeps while live waits), 18 min gap between calls
#       (ms; 0 = off: even pacing when no burst is wanted)
# Returns {1, kind} when admitted (kind: normal | canary | probe), else {0, reason, wait_ms}.
ADMIT = (
    _NOW
    + """
local token = ARGV[1]
local max_inflight, lease_ms = tonumber(ARGV[2]), tonumber(ARGV[3])
local rpm, window_ms = tonumber(ARGV[4]), tonumber(ARGV[5])
local burst_max, burst_window_ms = tonumber(ARGV[6]), tonumber(ARGV[7])
local canary_ms, est = tonumber(ARGV[8]), tonumber(ARGV[9])
local cap_total, cap_day, cap_batch = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
local poll_ms, ease_ms = tonumber(ARGV[13]), tonumber(ARGV[14])
local lane, job_id, bulk_floor = ARGV[15], ARGV[16], tonumber(ARGV[17])
local min_gap = tonumber(ARGV[18] or '0')
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
  redis.call('HSET', KEYS[7], token, est)
  redis.call('INCRBY', KEYS[11], est)
  redis.call('INCRBY', KEYS[12], est)
  redis.call('INCRBY', KEYS[13], est)
  redis.call('PEXPIRE', KEYS[12], 172800000)
end
return {1, kind}
"""
)

# Release a slot and settle its budget reservation (idempotent: a token settles once).
# KEYS: inflight, budget reserved hash, reserved-total, reserved-day, reserved-batch
# ARGV: token
RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[1])
local est = redis.call('HGET', KEYS[2], ARGV[1])
if est then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('DECRBY', KEYS[3], est)
  redis.call('DECRBY', KEYS[4], est)
  redis.call('DECRBY', KEYS[5], est)
end
return 1
"""

# Renew a lease while the call is still running.  KEYS: inflight  ARGV: token, lease_ms
RENEW = (
    _NOW
    + """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now_ms() + tonumber(ARGV[2]), ARGV[1])
  return 1
end
return 0
"""
)

# Outcome of a call, fed back into the shared state.
# KEYS: pause, cooldown, circuit, canary
# ARGV: outcome (ok | paused | rate_limited | server_error), token, reason, retry_after_ms,
#       circuit_threshold, circuit_open_ms, ease_ms, detail, canary_interval_ms
REPORT = (
    _NOW
    + """
local outcome, token = ARGV[1], ARGV[2]
local now = now_ms()
if outcome == 'paused' then
  -- the first 402/401/403 wins; later ones keep the original reason and time
  if redis.call('HSETNX', KEYS[1], 'reason', ARGV[3]) == 1 then
    redis.call('HSET', KEYS[1], 'since', now, 'detail', ARGV[8])
    -- the first canary waits a full interval: an empty wallet is rarely refilled at once
    local canary_ms = tonumber(ARGV[9])
    if canary_ms > 0 then redis.call('SET', KEYS[4], 'pause', 'PX', canary_ms) end
  end
  redis.call('HSET', KEYS[1], 'last_seen', now)
  return 'paused'
end
if outcome == 'rate_limited' then
  local until_ms = now + tonumber(ARGV[4])
  local cur = tonumber(redis.call('GET', KEYS[2]) or '0')
  if until_ms > cur then redis.call('SET', KEYS[2], until_ms, 'PX', tonumber(ARGV[4]) + 1000) end
  -- ease back in: half the rate for a while after the cooldown
  redis.call('HSET', KEYS[3], 'ease_until', math.max(until_ms, cur) + tonumber(ARGV[7]))
  return 'cooldown'
end
local state = redis.call('HGET', KEYS[3], 'state') or 'closed'
if outcome == 'server_error' then
  local failures = redis.call('HINCRBY', KEYS[3], 'failures', 1)
  if state == 'half_open' or failures >= tonumber(ARGV[5]) then
    redis.call('HSET', KEYS[3], 'state', 'open', 'open_until', now + tonumber(ARGV[6]), 'opened_at', now)
    redis.call('HDEL', KEYS[3], 'probe', 'probe_until')
    return 'open'
  end
  return state
end
-- ok: a success closes the circuit; a successful canary lifts a pause
redis.call('HSET', KEYS[3], 'state', 'closed', 'failures', 0)
redis.call('HDEL', KEYS[3], 'probe', 'probe_until', 'open_until')
if redis.call('GET', KEYS[4]) == token then
  redis.call('DEL', KEYS[1], KEYS[4])
  return 'resumed'
end
return 'closed'
"""
)
