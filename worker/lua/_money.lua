--- @include "_now"
--- @include "_lifecycle"
--- @include "_slot"
-- Spend and budget reservations (integer micro-USD).

-- utc_day(now): the civil date of a Redis time (H. Hinnant's algorithm; Lua here has no os.date)
local function utc_day(now)
  local z = math.floor(now / 86400000) + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  if m <= 2 then y = y + 1 end
  return string.format('%04d-%02d-%02d', y, m, d)
end

-- add_spend(job_id, micros, field, now, slot): count spend on the job (`cost_micros` for
-- billed, `possible_micros` for possibly billed), its batch, the day, the total and the
-- upstream key the slot was admitted on. Budgets read these counters, so a possibly billed
-- call is counted as spent.
local function add_spend(job_id, micros, field, now, slot)
  if micros == 0 then return end
  local ledger = k_job(job_id)
  -- a record a Redis lost is not re-created as a hash of counters: the fleet's books still count
  local exists = redis.call('EXISTS', ledger) == 1
  if exists then redis.call('HINCRBY', ledger, field, micros) end
  redis.call('INCRBY', PFX .. 'spend:total', micros)
  local up = slot_upstream(slot)
  if up then redis.call('INCRBY', k_up(up, 'spend'), micros) end
  local day = utc_day(now)
  redis.call('INCRBY', PFX .. 'spend:day:' .. day, micros)
  local batch = exists and redis.call('HGET', ledger, 'batch')
  if batch and batch ~= '' then
    redis.call('INCRBY', PFX .. 'spend:batch:' .. batch, micros)
    redis.call('HINCRBY', k_batch(batch), 'spend_micros', micros)
  end
  -- the day's spend per pool member and batch: what `upscale reconcile` holds against the
  -- upstream's books (spend per day and per x-aig-tag)
  redis.call('HINCRBY', k_spend_day_by(day), (up or '') .. '|' .. (batch or ''), micros)
end

-- unreserve(token): drop a slot's budget reservation; returns the reserved micros (0 if none).
-- The reservation names the counters it was added to, so it settles the right day and batch.
local function unreserve(token)
  local hash = PFX .. 'budget:reserved'
  local v = redis.call('HGET', hash, token)
  if not v then return 0 end
  redis.call('HDEL', hash, token)
  local est, day_key, batch_key = string.match(v, '^(%d+)|([^|]*)|([^|]*)|')
  est = tonumber(est)
  redis.call('DECRBY', PFX .. 'budget:reserved:total', est)
  local up = slot_upstream(token)
  if up then redis.call('DECRBY', k_up(up, 'reserved'), est) end
  if day_key ~= '' then redis.call('DECRBY', day_key, est) end
  if batch_key ~= '' then redis.call('DECRBY', batch_key, est) end
  return est
end

-- possibly_billed(job_id, token, now): a call whose outcome is unknown (timeout after send,
-- connection lost, crash) is counted as billed until proven otherwise.
local function possibly_billed(job_id, token, now)
  local journal = k_call(job_id)
  local current = redis.call('HGET', journal, 'token') == token
  if redis.call('HGET', journal, 'state') == 'unknown' and current then
    return  -- already counted (a retry whose first reply was lost)
  end
  if not current then
    -- a stale run's call: reclaim counted it when it took the job; the journal is a newer call's
    unreserve(token)
    free_slot(token)
    return
  end
  local est = unreserve(token)
  if est == 0 then est = tonumber(redis.call('HGET', journal, 'est') or '0') end
  add_spend(job_id, est, 'possible_micros', now, token)
  if redis.call('EXISTS', k_job(job_id)) == 1 then
    redis.call('HINCRBY', k_job(job_id), 'unknown_calls', 1)
  end
  -- the journal's `possible`: what the calls under the current idempotency key may have cost
  -- (asked again under it, each may have been billed, unless the upstream honours the key)
  journal_to(job_id, 'unknown')
  redis.call('HINCRBY', journal, 'possible', est)
  free_slot(token)
end
