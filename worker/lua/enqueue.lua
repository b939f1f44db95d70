-- enqueue: create the ledger record and the arq job in one step, deduplicated.
-- KEYS: 1 ledger, 2 arq job, 3 this lane's queue, 4 the other lane's queue, 5 arq in-progress
-- ARGV: 1 prefix, 2 job id, 3 arq payload, 4 fields (json), 5 batch, 6 requeue_failed ('1'),
--       7 lane (live | bulk)
-- Returns {outcome, state}: outcome created | duplicate | requeued.
--- @include "_ledger"
local ledger, arq_job, queue, other_queue = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local job_id, payload, fields, batch, requeue_failed = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local state = redis.call('HGET', ledger, 'state')
if state == 'succeeded' or state == 'skipped' then return {'duplicate', state} end
if state == 'failed' and requeue_failed ~= '1' then return {'duplicate', state} end
local in_arq = redis.call('EXISTS', arq_job) == 1
if state and in_arq then
  -- A live request for a job still queued in the bulk lane (e.g. a fresh upload already in a
  -- backfill) moves it to the live lane instead of leaving it behind the backlog.
  if ARGV[7] == 'live' and redis.call('EXISTS', KEYS[5]) == 0
     and redis.call('ZREM', other_queue, job_id) == 1 then
    redis.call('ZADD', queue, now_ms(), job_id)
    redis.call('HSET', ledger, 'lane', 'live')
  end
  return {'duplicate', state}
end
local now = now_ms()
if not in_arq then
  -- No TTL: a queued job must outlive any pause; the ledger, not a timer, decides its fate.
  redis.call('SET', arq_job, payload)
  redis.call('ZADD', queue, now, job_id)
end
if not state then
  local f = cjson.decode(fields)
  for k, v in pairs(f) do redis.call('HSET', ledger, k, v) end
  redis.call('HSET', ledger, 'created_at', now, 'attempts', 0, 'calls', 0, 'cost_micros', 0)
  if batch ~= '' then
    redis.call('HINCRBY', k_batch(batch), 'total', 1)
    redis.call('ZADD', PFX .. 'batches', 'NX', now, batch)
  end
  transition(job_id, 'queued', now)
  return {'created', 'queued'}
end
if state == 'failed' then
  redis.call('HSET', ledger, 'attempts', 0)
  -- a failed job's kept paid result is stored by the retry without a new call
  redis.call('PERSIST', k_paid(job_id))
end
transition(job_id, 'queued', now)
return {'requeued', state}
