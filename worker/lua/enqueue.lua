-- enqueue: create ledger records and arq jobs, deduplicated, many jobs in one call (a backfill
-- sends a few hundred at a time: one script per job cost more to send than to run).
-- arq's payload names no spec: the run reads it from the ledger record (stored once).
-- A failed or cancelled job is enqueued again only with requeue_failed (`upscale retry`).
-- A new job is refused in a batch that `upscale cancel --batch` cancelled (a backfill still
-- listing stops on it; `upscale retry --batch B --state cancelled` lifts it).
-- KEYS: none (every key derives from the prefix and the job ids)
-- ARGV: 1 prefix, 2 arq job prefix, 3 arq in-progress prefix, 4 arq payload,
--       5 requeue_failed ('1'), 6 jobs: JSON array of [job id, lane (live | bulk), batch,
--       record fields (object)]
-- Returns {outcome1, state1, outcome2, state2, ...}, in the order of the jobs: outcome created
--         | duplicate | requeued | refused, and the job's state after the call (refused:
--         'cancelled', its batch's; no record is made).
local SCRIPT = 'enqueue'  -- its moves in the lifecycle table (worker/moves.py)
--- @include "_ledger"
local arq_prefix, ip_prefix, payload, requeue_failed = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local cancelled_batches = {}

local function batch_cancelled(batch)
  if cancelled_batches[batch] == nil then
    cancelled_batches[batch] = redis.call('HEXISTS', k_batch(batch), 'cancelled_at') == 1
  end
  return cancelled_batches[batch]
end

-- New jobs' writes are gathered and made once per call: a backfill's 250 jobs are one MSET of
-- arq payloads, one ZADD per queue, one SADD and one counter update per batch.
local seen, payloads, queued, opened, created = {}, {}, {}, {}, {}

local function add(t, k, ...)
  t[k] = t[k] or {}
  for _, v in ipairs({...}) do table.insert(t[k], v) end
end

local function enqueue(job_id, lane, batch, fields, now)
  if seen[job_id] then return 'duplicate', 'queued' end  -- the same job twice in one call
  local ledger, arq_job = k_job(job_id), arq_prefix .. job_id
  local queue = k_queue(lane)
  local state = redis.call('HGET', ledger, 'state')
  if state == 'succeeded' or state == 'skipped' then return 'duplicate', state end
  local rerun = state == 'failed' or state == 'cancelled'
  if rerun and requeue_failed ~= '1' then return 'duplicate', state end
  local in_arq = redis.call('EXISTS', arq_job) == 1
  if state and in_arq then
    -- A live request for a job still queued in the bulk lane (e.g. a fresh upload already in
    -- a backfill) moves it to the live lane instead of leaving it behind the backlog.
    if lane == 'live' and redis.call('EXISTS', ip_prefix .. job_id) == 0
       and redis.call('ZREM', k_queue('bulk'), job_id) == 1 then
      redis.call('ZADD', queue, now, job_id)
      redis.call('HDEL', ledger, 'lane')
    end
    return 'duplicate', state
  end
  if not state and batch ~= '' and batch_cancelled(batch) then return 'refused', 'cancelled' end
  if not state then
    -- No TTL: a queued job must outlive any pause; the ledger, not a timer, decides its fate.
    if not in_arq then
      table.insert(payloads, arq_job)
      table.insert(payloads, payload)
      add(queued, queue, now, job_id)
    end
    local h = {}
    for k, v in pairs(fields) do
      h[#h + 1] = k
      h[#h + 1] = v
    end
    create(job_id, now, h)
    seen[job_id] = true
    created[batch] = (created[batch] or 0) + 1
    if batch ~= '' then add(opened, batch, job_id) end
    return 'created', 'queued'
  end
  if not in_arq then
    redis.call('SET', arq_job, payload)
    redis.call('ZADD', queue, now, job_id)
  end
  if rerun then
    redis.call('HDEL', ledger, 'attempts')
    -- it is on its batch's done list already (unless the report's retention ended the list)
    local own = redis.call('HGET', ledger, 'batch') or ''
    if own ~= '' and redis.call('EXISTS', k_batch_done(own)) == 1 then
      redis.call('HSET', ledger, 'listed', 1)
    end
    -- a failed job's kept paid result is stored by the retry without a new call
    redis.call('PERSIST', k_paid(job_id))
  end
  transition(job_id, 'queued', now)
  return 'requeued', 'queued'
end

local now = now_ms()
local out = {}
for _, job in ipairs(cjson.decode(ARGV[6])) do
  local outcome, state = enqueue(job[1], job[2], job[3], job[4], now)
  out[#out + 1] = outcome
  out[#out + 1] = state
end
-- the new jobs' writes, gathered
if #payloads > 0 then redis.call('MSET', unpack(payloads)) end
for queue, entries in pairs(queued) do redis.call('ZADD', queue, unpack(entries)) end
for batch, n in pairs(created) do
  redis.call('HINCRBY', PFX .. 'states', 'queued', n)
  if batch ~= '' then
    local bkey = k_batch(batch)
    redis.call('HINCRBY', bkey, 'total', n)
    redis.call('HINCRBY', bkey, 'queued', n)
    redis.call('HSET', bkey, 'updated_at', now)
    redis.call('ZADD', PFX .. 'batches', 'NX', now, batch)
    redis.call('SADD', k_batch_open(batch), unpack(opened[batch]))
  end
end
return out
