-- admit: one atomic decision covering every control, so nothing is half-acquired.
-- KEYS: 1 pause, 2 cooldown, 3 circuit, 4 inflight, 5 rate, 6 canary, 7 budget reserved (hash),
--       8 spend total, 9 spend today, 10 spend batch, 11 reserved-total, 12 reserved-day,
--       13 reserved-batch, 14 batch hash (may hold a per-batch `budget_micros` cap),
--       15 live waiters (zset job -> expiry), 16 bulk rate window,
--       17 the upstream's own word (hash: limit, remaining, reset_at, burst_cap, burst_until),
--       18 waiting line (zset job -> lane rank + arrival ms), 19 waiting line last seen (zset)
-- ARGV: 1 prefix, 2 token, 3 max_inflight, 4 lease_ms, 5 rpm ceiling (0 = auto: the upstream's
--       x-ratelimit-limit-requests), 6 window_ms, 7 burst factor (0 = no burst cap; <= 1 = even
--       pacing, 60/RPM s apart; > 1 = at most factor x RPM per burst window), 8 burst window ms,
--       9 canary_interval_ms (0 = off), 10 est cost micros, 11 cap total (-1 none), 12 cap day,
--       13 cap batch, 14 pause_poll_ms, 15 ease_ms, 16 lane (live|bulk), 17 job id,
--       18 bulk floor (share of the rate bulk keeps while live work waits; with no burst
--       factor set, bulk calls are also spaced 60/limit s apart so live work finds room),
--       19 window margin ms (added to every window we count over: network jitter)
-- Returns {1, kind} when admitted (kind: normal | canary | probe), else {0, reason, wait_ms}:
-- reason concurrency / rate / queued (others are ahead in the waiting line) wake on a freed
-- slot (`flow:wake`) or at wait_ms.
--- @include "_now"
local token = ARGV[2]
local max_inflight, lease_ms = tonumber(ARGV[3]), tonumber(ARGV[4])
local rpm, window_ms = tonumber(ARGV[5]), tonumber(ARGV[6])
local burst_factor, burst_nominal_ms = tonumber(ARGV[7]), tonumber(ARGV[8])
-- counted over the window plus the margin (the time from admission to the upstream), so the
-- upstream never sees more
local burst_window_ms = burst_nominal_ms + tonumber(ARGV[19])
local canary_ms, est = tonumber(ARGV[9]), tonumber(ARGV[10])
local cap_total, cap_day, cap_batch = tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13])
local poll_ms, ease_ms = tonumber(ARGV[14]), tonumber(ARGV[15])
local lane, job_id, bulk_share = ARGV[16], ARGV[17], tonumber(ARGV[18])
local now = now_ms()
local kind = 'normal'

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

-- the effective limit: the configured tier is the ceiling; the upstream's own limit, when
-- smaller (or when the tier is `auto`), wins
local up = KEYS[17]
local hdr_limit = tonumber(redis.call('HGET', up, 'limit') or '0')
local limit = rpm
-- `auto` before the upstream has said anything: a free tier's 10, and ask again soon
local limit_unknown = limit <= 0 and hdr_limit <= 0
if limit <= 0 then limit = hdr_limit > 0 and hdr_limit or 10 end
if hdr_limit > 0 and hdr_limit < limit then limit = hdr_limit end
local bulk_floor = math.max(1, math.ceil(bulk_share * limit))

-- 5. lanes: while live jobs wait for capacity, bulk yields it (beyond its guaranteed floor)
redis.call('ZREMRANGEBYSCORE', KEYS[15], '-inf', now)
if lane == 'bulk' and redis.call('ZCARD', KEYS[15]) > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[16], '-inf', now - window_ms)
  if redis.call('ZCARD', KEYS[16]) >= bulk_floor then
    return {0, 'lane', math.max(250, poll_ms)}
  end
end

-- the waiting line: arrival order, live lane first; a waiter not seen for 5 s has gone
local line, seen = KEYS[18], KEYS[19]
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', seen, '-inf', now - 5000)) do
  redis.call('ZREM', line, gone)
  redis.call('ZREM', seen, gone)
end
local my_score = tonumber(redis.call('ZSCORE', line, job_id) or '-1')
if my_score < 0 then my_score = (lane == 'live' and 0 or 1e13) + now end
local function wait_in_line(reason, wait_ms)
  redis.call('ZADD', line, 'NX', my_score, job_id)
  redis.call('ZADD', seen, now, job_id)
  redis.call('PEXPIRE', line, 60000)
  redis.call('PEXPIRE', seen, 60000)
  if lane == 'live' then
    redis.call('ZADD', KEYS[15], now + math.min(wait_ms, 3000) + 1000, job_id)
    redis.call('PEXPIRE', KEYS[15], 10000)
  end
  return {0, reason, math.max(1, math.floor(wait_ms))}
end

-- 6. room now: the global in-flight cap (leases expire: a crashed worker's slot comes back)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
local inflight = redis.call('ZCARD', KEYS[4])
if inflight >= max_inflight then
  local first = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
  return wait_in_line('concurrency', math.min(poll_ms, tonumber(first[2]) - now))
end
local room = max_inflight - inflight

-- 7. ... and the rate: the rolling window, a burst cap if set or learned, the upstream's count
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - window_ms)
local ease_until = tonumber(redis.call('HGET', KEYS[3], 'ease_until') or '0')
if now < ease_until then limit = math.max(1, math.floor(limit / 2)) end
local in_window = redis.call('ZCARD', KEYS[5])
if in_window >= limit then
  local oldest = redis.call('ZRANGE', KEYS[5], in_window - limit, in_window - limit, 'WITHSCORES')
  local wait = tonumber(oldest[2]) + window_ms - now
  -- `auto` and the upstream has not said its limit yet: the first answer will (it wakes us)
  if limit_unknown then return wait_in_line('queued', math.min(wait, poll_ms)) end
  return wait_in_line('rate', wait)
end
room = math.min(room, limit - in_window)
if burst_factor > 0 and burst_factor <= 1 and in_window > 0 then
  -- even pacing: one call every 60/limit s, fleet-wide
  local last = redis.call('ZRANGE', KEYS[5], -1, -1, 'WITHSCORES')
  local gap_wait = tonumber(last[2]) + math.floor(60000 / limit) - now
  if gap_wait > 0 then return wait_in_line('rate', gap_wait) end
  room = 1
end
if lane == 'bulk' and burst_factor == 0 then
  -- a backfill is paced evenly (60/limit s apart) so a live job always finds the next slot
  redis.call('ZREMRANGEBYSCORE', KEYS[16], '-inf', now - window_ms)
  local last = redis.call('ZRANGE', KEYS[16], -1, -1, 'WITHSCORES')
  if last[2] then
    local gap_wait = tonumber(last[2]) + math.floor(60000 / limit) - now
    if gap_wait > 0 then return wait_in_line('rate', gap_wait) end
  end
  room = math.min(room, 1)
end
local burst_max = -1
if burst_factor > 1 then burst_max = math.max(1, math.floor(limit * burst_factor * burst_nominal_ms / 60000)) end
if now < tonumber(redis.call('HGET', up, 'burst_until') or '0') then
  local learned = tonumber(redis.call('HGET', up, 'burst_cap') or '-1')
  if learned > 0 and (burst_max < 0 or learned < burst_max) then burst_max = learned end
end
if burst_max > 0 then
  local in_burst = redis.call('ZCOUNT', KEYS[5], now - burst_window_ms, '+inf')
  if in_burst >= burst_max then
    local rows = redis.call('ZRANGEBYSCORE', KEYS[5], now - burst_window_ms, '+inf', 'WITHSCORES', 'LIMIT', in_burst - burst_max, 1)
    return wait_in_line('rate', tonumber(rows[2]) + burst_window_ms - now)
  end
  room = math.min(room, burst_max - in_burst)
end
local reset_at = tonumber(redis.call('HGET', up, 'reset_at') or '0')
local remaining = tonumber(redis.call('HGET', up, 'remaining') or '-1')
local fresh = remaining >= 0 and now < reset_at
if fresh then
  if remaining <= 0 then return wait_in_line('rate', reset_at - now) end
  room = math.min(room, remaining)
end

-- 8. first come, first served: only as many of the line's head as there is room for
local rank_score = my_score
if lane == 'bulk' and rank_score >= 1e13 then
  -- under its floor, a bulk call competes in arrival order with live ones
  redis.call('ZREMRANGEBYSCORE', KEYS[16], '-inf', now - window_ms)
  if redis.call('ZCARD', KEYS[16]) < bulk_floor then rank_score = rank_score - 1e13 end
end
local ahead = redis.call('ZCOUNT', line, '-inf', '(' .. rank_score)
if ahead >= room then return wait_in_line('queued', poll_ms) end
redis.call('ZREM', line, job_id)
redis.call('ZREM', seen, job_id)
if fresh then redis.call('HINCRBY', up, 'remaining', -1) end

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
