-- admit: one atomic decision over every control and every upstream of the pool, so nothing
-- is half-acquired. The upstreams are tried in the order given (preference); the first with room
-- now takes the call. Nothing is written for an upstream that is only looked at (but expired
-- entries trimmed).
-- KEYS, by name (the lists FLEET_KEYS and UPSTREAM_KEYS below; worker/flow/admission.py
--   `AdmitKeys` and `upstream_keys` send them in this order):
--   the fleet's: pause (manual pause, hash), reserved (budget reservations, hash),
--     spend_total, spend_day, spend_batch, reserved_total, reserved_day, reserved_batch,
--     batch (hash: may hold a per-batch `budget_micros` cap), live_waiting (zset job ->
--     expiry), line (the waiting line, zset job -> lane rank + arrival ms), line_seen (zset
--     job -> last asked ms);
--   then each upstream's, in preference order: pause, cooldown, circuit, inflight (zset
--     slot -> lease expiry), rate (rate window, zset), canary (its canary call's slot),
--     said (the upstream's word, hash: limit, remaining, reset_at, burst_cap, burst_until),
--     rate_bulk (bulk rate window, zset), spend (this upstream's), reserved (this
--     upstream's), canary_lock (one canary at a time: its wallet's lock, or its own `canary`),
--     cap_word (hash: `max_inflight` a 429 named: its in-flight group's, or its own `said`).
-- ARGV: 1 prefix, 2 options (JSON, worker/flow/admission.py `AdmitOptions`): token (the slot
--   is `<name>/<token>`), lease_ms, window_ms (60 s + margin), burst_window_ms (nominal),
--   canary_ms (0 = off), cap_total / cap_day / cap_batch (micros, -1 none), poll_ms (pause
--   poll), lane (live | bulk), job_id, bulk_floor (share of the rate bulk keeps while live
--   work waits), margin_ms (added to every window we count over: network jitter), and
--   upstreams: one object per upstream, in the KEYS' order: name, max_inflight, rpm
--   (ceiling; 0 = auto: the upstream's x-ratelimit-limit-requests), burst_factor (0 = no
--   burst cap of our own; <= 1 even pacing, 60/RPM s apart; > 1 at most factor x RPM per
--   burst window), est (this call's estimated micros on this upstream), cap (its budget cap
--   micros, -1 none), group (its in-flight group, '' none: the calls in flight on every
--   upstream of the group count against group_cap) and group_cap.
-- Returns {1, kind, name} when admitted (kind: normal | canary | probe), else
-- {0, reason, wait_ms}. Reasons concurrency / rate / queued (others are ahead in the waiting
-- line) join the line and wake on a freed slot (`flow:wake`) or at wait_ms.
--- @include "_now"
--- @include "_slot"
--- @include "_pause"
local FLEET_KEYS = {'pause', 'reserved', 'spend_total', 'spend_day', 'spend_batch',
  'reserved_total', 'reserved_day', 'reserved_batch', 'batch', 'live_waiting', 'line',
  'line_seen'}
local UPSTREAM_KEYS = {'pause', 'cooldown', 'circuit', 'inflight', 'rate', 'canary', 'said',
  'rate_bulk', 'spend', 'reserved', 'canary_lock', 'cap_word'}
local F = {}
for i, name in ipairs(FLEET_KEYS) do F[name] = KEYS[i] end
-- upstream_keys(i): the KEYS of upstream i (1..n), by name
local function upstream_keys(i)
  local t, base = {}, #FLEET_KEYS + #UPSTREAM_KEYS * (i - 1)
  for j, name in ipairs(UPSTREAM_KEYS) do t[name] = KEYS[base + j] end
  return t
end

local o = cjson.decode(ARGV[2])
local token, lease_ms, window_ms, margin_ms = o.token, o.lease_ms, o.window_ms, o.margin_ms
-- counted over the window plus the margin (the time from admission to the upstream)
local burst_nominal_ms = o.burst_window_ms
local burst_window_ms = burst_nominal_ms + margin_ms
local canary_ms = o.canary_ms
local cap_total, cap_day, cap_batch = o.cap_total, o.cap_day, o.cap_batch
local poll_ms = o.poll_ms
local lane, job_id, bulk_share = o.lane, o.job_id, o.bulk_floor
local n = #o.upstreams
local now = now_ms()

-- 1. a manual pause of the whole fleet
if redis.call('EXISTS', F.pause) == 1 then return {0, 'paused:manual', poll_ms} end

local own_cap = tonumber(redis.call('HGET', F.batch, 'budget_micros') or '-1')
if own_cap >= 0 and (cap_batch < 0 or own_cap < cap_batch) then cap_batch = own_cap end
local function over(cap, spent_key, reserved_key, est)
  if cap < 0 then return false end
  local used = tonumber(redis.call('GET', spent_key) or '0') + tonumber(redis.call('GET', reserved_key) or '0')
  return used + est > cap
end
redis.call('ZREMRANGEBYSCORE', F.live_waiting, '-inf', now)
local live_waiting = redis.call('ZCARD', F.live_waiting) > 0

-- group_inflight(group): calls in flight on every upstream of an in-flight group (leases
-- expired pruned), counted once per decision
local group_count = {}
local function group_inflight(group)
  if group_count[group] then return group_count[group] end
  local total = 0
  for j = 1, n do
    if o.upstreams[j].group == group then
      local inflight = upstream_keys(j).inflight
      prune_slots(inflight, now)
      total = total + redis.call('ZCARD', inflight)
    end
  end
  group_count[group] = total
  return total
end

-- assess(i): can upstream i take this call now? Read-only but for trimming expired entries.
-- Returns {'room', room, kind, est, fresh, bulk under its floor, group room or -1} |
-- {'full', reason, wait_ms} | {'closed', reason, wait_ms}
local function assess(i)
  local k, u = upstream_keys(i), o.upstreams[i]
  local pause, cooldown, circuit, inflight = k.pause, k.cooldown, k.circuit, k.inflight
  local rate, up, rate_bulk = k.rate, k.said, k.rate_bulk
  local max_inflight, rpm = u.max_inflight, u.rpm
  local burst_factor, est, upstream_cap = u.burst_factor, u.est, u.cap
  local kind = 'normal'

  -- 2. this upstream paused (402 / 401 / 403 / manual; a wallet's 402 pauses each of its
  -- upstreams): nothing, except one canary per interval (per wallet) where the reason allows
  -- one; a timed pause (a daily limit) expires by itself at the reset, unprobed
  local preason = redis.call('HGET', pause, 'reason')
  if preason then
    if canary_ms > 0 and may_probe(pause) and redis.call('EXISTS', k.canary_lock) == 0 then
      kind = 'canary'
    else
      return {'closed', 'paused:' .. preason, poll_ms}
    end
  end
  -- 3. this upstream's cooldown after a 429 (Retry-After)
  local until_ms = tonumber(redis.call('GET', cooldown) or '0')
  if now < until_ms then return {'closed', 'cooldown', until_ms - now} end
  -- 4. circuit breaker: open -> wait; after open_until one probe at a time (half-open)
  local cstate = redis.call('HGET', circuit, 'state')
  if cstate == 'open' then
    local reopen = tonumber(redis.call('HGET', circuit, 'open_until') or '0')
    if now < reopen then return {'closed', 'circuit_open', reopen - now} end
    if kind == 'normal' then kind = 'probe' end
  elseif cstate == 'half_open' then
    local probe_until = tonumber(redis.call('HGET', circuit, 'probe_until') or '0')
    if now < probe_until then return {'closed', 'circuit_half_open', math.min(poll_ms, probe_until - now)} end
    if kind == 'normal' then kind = 'probe' end  -- the previous probe's worker vanished
  end
  -- 5. budgets: spent + reserved + this call's estimate within every cap (the upstream's own too)
  local budget_wait = poll_ms * 5
  if over(cap_total, F.spend_total, F.reserved_total, est) then
    return {'closed', 'budget:total', budget_wait}
  end
  if over(cap_day, F.spend_day, F.reserved_day, est) then
    return {'closed', 'budget:daily', budget_wait}
  end
  if over(cap_batch, F.spend_batch, F.reserved_batch, est) then
    return {'closed', 'budget:batch', budget_wait}
  end
  if over(upstream_cap, k.spend, k.reserved, est) then return {'closed', 'budget:upstream', budget_wait} end

  -- the effective limit: the configured tier is the ceiling; the upstream's own, when smaller
  -- (or when the tier is `auto`), wins
  local hdr_limit = tonumber(redis.call('HGET', up, 'limit') or '0')
  local limit = rpm
  local limit_unknown = limit <= 0 and hdr_limit <= 0  -- `auto`, and nothing said yet
  if limit <= 0 then limit = hdr_limit > 0 and hdr_limit or 10 end
  if hdr_limit > 0 and hdr_limit < limit then limit = hdr_limit end
  local bulk_floor = math.max(1, math.ceil(bulk_share * limit))

  -- 6. lanes: while live jobs wait for capacity, bulk yields it (beyond its guaranteed floor)
  redis.call('ZREMRANGEBYSCORE', rate_bulk, '-inf', now - window_ms)
  local bulk_in_window = redis.call('ZCARD', rate_bulk)
  if lane == 'bulk' and live_waiting and bulk_in_window >= bulk_floor then
    return {'closed', 'lane', math.max(250, poll_ms)}
  end
  -- 7. room now: the in-flight cap (leases expire: a crashed worker's slot comes back), and
  -- its group's (a cap a 429 named, when smaller, wins)
  prune_slots(inflight, now)
  local in_flight = redis.call('ZCARD', inflight)
  local named = tonumber(redis.call('HGET', k.cap_word, 'max_inflight') or '0')
  if u.group == '' and named > 0 and named < max_inflight then max_inflight = named end
  if in_flight >= max_inflight then
    local first = redis.call('ZRANGE', inflight, 0, 0, 'WITHSCORES')
    return {'full', 'concurrency', math.min(poll_ms, tonumber(first[2]) - now)}
  end
  local room = max_inflight - in_flight
  local group_room = -1
  if u.group ~= '' then
    local group_cap = u.group_cap
    if named > 0 and named < group_cap then group_cap = named end
    group_room = group_cap - group_inflight(u.group)
    if group_room <= 0 then return {'full', 'concurrency', poll_ms} end
    room = math.min(room, group_room)
  end
  -- 8. ... and the rate: the rolling window, a burst cap if set or learned, the upstream's count
  redis.call('ZREMRANGEBYSCORE', rate, '-inf', now - window_ms)
  if now < tonumber(redis.call('HGET', circuit, 'ease_until') or '0') then
    limit = math.max(1, math.floor(limit / 2))  -- easing back in after an unexplained 429
  end
  local in_window = redis.call('ZCARD', rate)
  if in_window >= limit then
    local oldest = redis.call('ZRANGE', rate, in_window - limit, in_window - limit, 'WITHSCORES')
    local wait = tonumber(oldest[2]) + window_ms - now
    -- `auto` and the limit not said yet: the first answer will (it wakes the line)
    if limit_unknown then return {'full', 'queued', math.min(wait, poll_ms)} end
    return {'full', 'rate', wait}
  end
  room = math.min(room, limit - in_window)
  if burst_factor > 0 and burst_factor <= 1 and in_window > 0 then
    -- even pacing: one call every 60/limit s
    local last = redis.call('ZRANGE', rate, -1, -1, 'WITHSCORES')
    local gap_wait = tonumber(last[2]) + math.floor(60000 / limit) - now
    if gap_wait > 0 then return {'full', 'rate', gap_wait} end
    room = 1
  end
  if lane == 'bulk' and burst_factor == 0 and bulk_in_window > 0 then
    -- a backfill is paced evenly (60/limit s apart) so a live job always finds the next slot
    local last = redis.call('ZRANGE', rate_bulk, -1, -1, 'WITHSCORES')
    local gap_wait = tonumber(last[2]) + math.floor(60000 / limit) - now
    if gap_wait > 0 then return {'full', 'rate', gap_wait} end
    room = math.min(room, 1)
  end
  local burst_max = -1
  if burst_factor > 1 then burst_max = math.max(1, math.floor(limit * burst_factor * burst_nominal_ms / 60000)) end
  if now < tonumber(redis.call('HGET', up, 'burst_until') or '0') then
    local learned = tonumber(redis.call('HGET', up, 'burst_cap') or '-1')
    if learned > 0 and (burst_max < 0 or learned < burst_max) then burst_max = learned end
  end
  if burst_max > 0 then
    local in_burst = redis.call('ZCOUNT', rate, now - burst_window_ms, '+inf')
    if in_burst >= burst_max then
      local rows = redis.call('ZRANGEBYSCORE', rate, now - burst_window_ms, '+inf', 'WITHSCORES', 'LIMIT', in_burst - burst_max, 1)
      return {'full', 'rate', tonumber(rows[2]) + burst_window_ms - now}
    end
    room = math.min(room, burst_max - in_burst)
  end
  local reset_at = tonumber(redis.call('HGET', up, 'reset_at') or '0')
  local remaining = tonumber(redis.call('HGET', up, 'remaining') or '-1')
  local fresh = remaining >= 0 and now < reset_at
  if fresh then
    if remaining <= 0 then return {'full', 'rate', reset_at - now} end
    room = math.min(room, remaining)
  end
  if kind == 'canary' or kind == 'probe' then room = 1 end
  return {'room', room, kind, est, fresh, bulk_in_window < bulk_floor, group_room}
end

-- the waiting line: arrival order, live lane first; a waiter not seen for 5 s has gone
local line, seen = F.line, F.line_seen
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
    redis.call('ZADD', F.live_waiting, now + math.min(wait_ms, 3000) + 1000, job_id)
    redis.call('PEXPIRE', F.live_waiting, 10000)
  end
  return {0, reason, math.max(1, math.floor(wait_ms))}
end

local chosen, choice, total_room = nil, nil, 0
local full, closed = nil, nil
local group_left = {}  -- what the upstreams of a group may still add to the room
for i = 1, n do
  local r = assess(i)
  if r[1] == 'room' then
    local room, group = r[2], o.upstreams[i].group
    if group ~= '' then
      if group_left[group] == nil then group_left[group] = r[7] end
      room = math.min(room, group_left[group])
      group_left[group] = group_left[group] - room
    end
    total_room = total_room + room
    if not chosen then chosen, choice = i, r end
  elseif r[1] == 'full' then
    if not full or r[3] < full[3] then full = r end
  elseif not closed or r[3] < closed[3] then
    closed = r
  end
end
if not chosen then
  if full then return wait_in_line(full[2], full[3]) end
  return {0, closed[2], math.max(1, math.floor(closed[3]))}
end

-- 9. first come, first served: only as many of the line's head as there is room for
local rank_score = my_score
-- under its floor, a bulk call competes in arrival order with live ones
if lane == 'bulk' and rank_score >= 1e13 and choice[6] then rank_score = rank_score - 1e13 end
local ahead = redis.call('ZCOUNT', line, '-inf', '(' .. rank_score)
if ahead >= total_room then return wait_in_line('queued', poll_ms) end
redis.call('ZREM', line, job_id)
redis.call('ZREM', seen, job_id)

-- admitted on upstream `chosen`: take the slot, the rate token and the budget reservation
-- together
local k = upstream_keys(chosen)
local name, kind, est, fresh = o.upstreams[chosen].name, choice[3], choice[4], choice[5]
local slot = name .. '/' .. token
if kind == 'canary' then
  -- its own `canary` lets this call through call_begin; the lock (the wallet's, or the same
  -- lock) holds every other canary of the wallet off for an interval
  redis.call('SET', k.canary, slot, 'PX', canary_ms)
  redis.call('SET', k.canary_lock, slot, 'PX', canary_ms)
end
if kind == 'probe' then
  redis.call('HSET', k.circuit, 'state', 'half_open', 'probe', slot, 'probe_until', now + lease_ms)
end
if fresh then redis.call('HINCRBY', k.said, 'remaining', -1) end
take_slot(k.inflight, slot, now, lease_ms)
redis.call('ZADD', k.rate, now, slot)
redis.call('PEXPIRE', k.rate, window_ms + 1000)
if lane == 'live' then
  redis.call('ZREM', F.live_waiting, job_id)
else
  redis.call('ZADD', k.rate_bulk, now, slot)
  redis.call('PEXPIRE', k.rate_bulk, window_ms + 1000)
end
if est > 0 then
  -- the reservation names the counters it was added to, so it settles the right day and batch
  redis.call('HSET', F.reserved, slot,
    est .. '|' .. F.reserved_day .. '|' .. F.reserved_batch .. '|' .. job_id)
  redis.call('INCRBY', F.reserved_total, est)
  redis.call('INCRBY', F.reserved_day, est)
  redis.call('INCRBY', F.reserved_batch, est)
  redis.call('INCRBY', k.reserved, est)
  redis.call('PEXPIRE', F.reserved_day, 172800000)
end
return {1, kind, name}
