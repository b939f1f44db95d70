--- @include "_now"
--- @include "_keys"
-- transition(job_id, new_state, now): move a job to a state, keeping the fleet and batch
-- counters, the active index (non-final jobs, for the healer) and the final events in step.
local function transition(job_id, new_state, now)
  local ledger = k_job(job_id)
  local old = redis.call('HGET', ledger, 'state')
  if old == new_state then return old end
  local batch = redis.call('HGET', ledger, 'batch')
  if old then redis.call('HINCRBY', PFX .. 'states', old, -1) end
  redis.call('HINCRBY', PFX .. 'states', new_state, 1)
  if batch and batch ~= '' then
    local bkey = k_batch(batch)
    if old then redis.call('HINCRBY', bkey, old, -1) end
    redis.call('HINCRBY', bkey, new_state, 1)
    redis.call('HSET', bkey, 'updated_at', now)
  end
  redis.call('HSET', ledger, 'state', new_state, 'updated_at', now, new_state .. '_at', now)
  if FINAL[new_state] then
    redis.call('ZREM', PFX .. 'active', job_id)
    if new_state == 'failed' then
      redis.call('ZADD', PFX .. 'failures', now, job_id)
      redis.call('ZREMRANGEBYRANK', PFX .. 'failures', 0, -10001)
    end
    -- wakes `wait_for()` callers: an event, not a polling loop
    redis.call('PUBLISH', PFX .. 'final:' .. job_id, new_state)
    local minute = PFX .. 'finished:' .. math.floor(now / 60000)
    redis.call('INCR', minute)
    redis.call('EXPIRE', minute, 7200)
    if batch and batch ~= '' then redis.call('PUBLISH', PFX .. 'batch-final:' .. batch, job_id) end
  else
    redis.call('ZADD', PFX .. 'active', now, job_id)
  end
  return old or ''
end

-- set_fields(job_id, json): set fields from a JSON object; '' deletes a field.
local function set_fields(job_id, json)
  if json == nil or json == '' then return end
  local ledger = k_job(job_id)
  for k, v in pairs(cjson.decode(json)) do
    if v == '' then redis.call('HDEL', ledger, k) else redis.call('HSET', ledger, k, v) end
  end
end

-- owns(job_id, token): fencing. Only the run holding the lease may change the job's state.
local function owns(job_id, token)
  return token ~= '' and redis.call('HGET', k_job(job_id), 'run_token') == token
end

-- end_run(job_id): give up the run lease (the job is final, waiting or handed back).
local function end_run(job_id)
  redis.call('HDEL', k_job(job_id), 'run_token')
  redis.call('ZREM', PFX .. 'runs', job_id)
end

-- requeue(job_id, at_ms, fn, arq_job_prefix, arq_in_progress_prefix): put the job on its lane's
-- arq queue at `at_ms`, re-creating arq's payload from the ledger's spec if arq dropped it.
-- Work that holds money also goes in the queue's money-first set: a paid result (kept in
-- `paid:` until stored; an upstream job still running keeps its 202 there too) or a call whose
-- outcome is not known (`sent` by a run that died, `unknown`). The queue is claimed in score
-- order, and behind a backlog of millions its turn would come after the result link (24 h) or
-- the upstream's idempotency window had expired.
local function requeue(job_id, at_ms, fn, arq_job_prefix, arq_ip_prefix)
  local ledger = k_job(job_id)
  local queue = k_queue(redis.call('HGET', ledger, 'lane') or 'live')
  local call_state = redis.call('HGET', k_call(job_id), 'state')
  if redis.call('EXISTS', k_paid(job_id)) == 1 or call_state == 'sent' or call_state == 'unknown' then
    redis.call('ZADD', k_first(queue), at_ms, job_id)
  end
  if redis.call('EXISTS', arq_job_prefix .. job_id) == 0 then
    local spec = redis.call('HGET', ledger, 'spec')
    if not spec then return false end
    redis.call('SET', arq_job_prefix .. job_id,
      '{"t":null,"f":"' .. fn .. '","a":[' .. spec .. '],"k":{},"et":' .. at_ms .. '}')
  end
  redis.call('DEL', arq_ip_prefix .. job_id)
  redis.call('ZADD', queue, at_ms, job_id)
  return true
end

-- add_request_id(job_id, rid): keep the upstream's X-Request-Id of every call on the record.
local function add_request_id(job_id, rid)
  if rid == nil or rid == '' then return end
  local ledger = k_job(job_id)
  local ids = cjson.decode(redis.call('HGET', ledger, 'request_ids') or '[]')
  table.insert(ids, rid)
  redis.call('HSET', ledger, 'request_ids', cjson.encode(ids))
end
