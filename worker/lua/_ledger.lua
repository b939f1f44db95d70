--- @include "_now"
--- @include "_lifecycle"
-- transition(job_id, new_state, now): move a job to a state, keeping the fleet and batch
-- counters, the active index and the final events in step. Only a move the lifecycle table
-- allows this script (`JOB_MOVES`): any other raises before this writes anything. Never creates
-- a record: a job whose record is gone (a Redis that lost it) is left alone ('' returned), not
-- given a state alone.
-- `active` holds the jobs a run has taken out of their queue (claimed / running), scored by
-- when they were last looked at: the healer walks it, so its cost follows the fleet's runs,
-- not the backlog. A job in its queue (queued, waiting) is indexed by the queue itself.
local function transition(job_id, new_state, now)
  local ledger = k_job(job_id)
  local old = redis.call('HGET', ledger, 'state')
  if not old then return '' end
  check_move(JOB_MOVES, 'job', old, new_state)
  if old == new_state then return old end
  local batch = redis.call('HGET', ledger, 'batch')
  redis.call('HINCRBY', PFX .. 'states', old, -1)
  redis.call('HINCRBY', PFX .. 'states', new_state, 1)
  if batch and batch ~= '' then
    local bkey = k_batch(batch)
    redis.call('HINCRBY', bkey, old, -1)
    redis.call('HINCRBY', bkey, new_state, 1)
    redis.call('HSET', bkey, 'updated_at', now)
    if FINAL[new_state] then
      redis.call('SREM', k_batch_open(batch), job_id)
    elseif FINAL[old] then
      redis.call('SADD', k_batch_open(batch), job_id)
    end
  end
  redis.call('HSET', ledger, 'state', new_state, 'updated_at', now)
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
    -- a job that runs again (retry, cancel undone) must outlive any retention it was given
    if FINAL[old] then redis.call('PERSIST', ledger) end
    if new_state == 'running' then
      redis.call('ZADD', PFX .. 'active', now, job_id)
    else
      redis.call('ZREM', PFX .. 'active', job_id)
    end
  end
  return old
end

-- create(job_id, now, fields): a new record, in the lifecycle's first state (`queued`), with
-- `fields` (a flat list: name, value, ...). The fleet's and the batch's counters are the
-- caller's (enqueue counts a call's new jobs at once).
local function create(job_id, now, fields)
  check_move(JOB_MOVES, 'job', '', 'queued')
  redis.call('HSET', k_job(job_id), 'created_at', now, 'state', 'queued', 'updated_at', now,
    unpack(fields))
end

-- Fields a final record keeps only while it may run again (`upscale retry`: failed, cancelled)
-- or needs looking into; the per-run detail no final record keeps. A succeeded or skipped
-- record keeps what its batch's report shows (the report names the batch and its date):
-- state, source, destination, spend, note; the rest went to the metrics and the job's log
-- lines. Short fields keep Redis's compact encoding: ~250 bytes a record (`make bench`).
local RERUN_FIELDS = {'spec', 'params', 'tags', 'lane', 'model', 'dest_listed', 'request_ids',
  'created_at', 'seed', 'output_etag', 'output_bytes', 'output_resolution', 'output_content_type',
  't_total_ms', 'source_etag', 'batch', 'updated_at'}
local RUN_FIELDS = {'run_token', 'runs', 'waits', 'wait_reason', 'wait_detail',
  'queued_at', 'running_at', 'waiting_at', 'cancel'}

-- retire(job_id, state, retention_ms): a job just became final. Its record is compacted; a
-- batch's job goes on the batch's done list (once: its report walks it, and the report's
-- writer starts the records' retention), another job's record expires after the retention.
-- A record that holds money never expires: a call possibly billed stays on the books, and a
-- kept paid result (a failed job's, for `upscale retry`) keeps its record as long as itself.
-- expire_final(job_id, retention_ms): start a final record's retention, unless it holds money:
-- a call possibly billed keeps it for good, and so does a paid result kept for good; a paid
-- result kept for a while (a failed job's, for `upscale retry`) keeps it at least as long.
-- Returns whether the record got a TTL.
local function expire_final(job_id, retention_ms)
  local ledger = k_job(job_id)
  local state, possible = unpack(redis.call('HMGET', ledger, 'state', 'possible_micros'))
  if not (state and FINAL[state]) or (tonumber(possible) or 0) > 0 then return false end
  local paid_ttl = redis.call('PTTL', k_paid(job_id))  -- -2: none, -1: kept for good
  if paid_ttl == -1 then return false end
  redis.call('PEXPIRE', ledger, math.max(tonumber(retention_ms), paid_ttl))
  return true
end

-- retire_settled(job_id, retention_ms): a final record kept for its money (a call possibly
-- billed) whose money a stale run's answer has just settled: its retention starts now, as
-- `retire` would have started it, unless its batch's report is still to come (which starts it).
local function retire_settled(job_id, retention_ms)
  local ledger = k_job(job_id)
  if redis.call('PTTL', ledger) ~= -1 then return end  -- gone, or expiring already
  local batch = redis.call('HGET', ledger, 'batch')
  if batch and batch ~= '' and redis.call('PTTL', k_batch_done(batch)) == -1 then return end
  expire_final(job_id, retention_ms)
end

local function retire(job_id, state, retention_ms)
  local ledger = k_job(job_id)
  local batch = redis.call('HGET', ledger, 'batch')
  redis.call('HDEL', ledger, unpack(RUN_FIELDS))
  if state == 'succeeded' or state == 'skipped' then
    -- a reclaimed job keeps its calls' request ids: a stale run's answer may still come, and
    -- one already counted (the upstream replayed it to the newer run) is known by its id
    local ids = redis.call('HGET', ledger, 'reclaims') and redis.call('HGET', ledger, 'request_ids')
    redis.call('HDEL', ledger, unpack(RERUN_FIELDS))
    if ids then redis.call('HSET', ledger, 'request_ids', ids) end
    -- counters are kept where they tell something: a succeeded job's one billed call is the
    -- rule (`JobRecord` reads it so), a second call or attempt, a reclaim is not
    local calls, billed = unpack(redis.call('HMGET', ledger, 'calls', 'billed_calls'))
    if state == 'succeeded' and calls == '1' and billed == '1' then
      redis.call('HDEL', ledger, 'calls', 'billed_calls')
    end
  end
  if batch and batch ~= '' then
    -- once on the list: a job run again after it ended (`upscale retry`) is there already
    if redis.call('HDEL', ledger, 'listed') == 0 then
      redis.call('RPUSH', k_batch_done(batch), job_id)
    end
    redis.call('PERSIST', k_batch_done(batch))  -- the batch is open again until its report
    return
  end
  expire_final(job_id, retention_ms)
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
-- arq queue at `at_ms`, re-creating arq's payload if arq dropped it. The payload names no
-- spec: the job's run reads it from the ledger record (stored once).
-- Work that holds money also goes in the queue's money-first set: a paid result (kept in
-- `paid:` until stored; an upstream job still running keeps its 202 there too) or a call whose
-- outcome is not known (`sent` by a run that died, `unknown`). The queue is claimed in score
-- order, and behind a backlog of millions its turn would come after the result link (24 h) or
-- the upstream's idempotency window had expired.
local function requeue(job_id, at_ms, fn, arq_job_prefix, arq_ip_prefix)
  local ledger = k_job(job_id)
  if redis.call('EXISTS', ledger) == 0 then return false end
  local queue = k_queue(redis.call('HGET', ledger, 'lane') or 'live')
  local call_state = redis.call('HGET', k_call(job_id), 'state')
  if redis.call('EXISTS', k_paid(job_id)) == 1 or call_state == 'sent' or call_state == 'unknown' then
    redis.call('ZADD', k_first(queue), at_ms, job_id)
  end
  if redis.call('EXISTS', arq_job_prefix .. job_id) == 0 then
    redis.call('SET', arq_job_prefix .. job_id,
      '{"t":null,"f":"' .. fn .. '","a":[],"k":{},"et":' .. at_ms .. '}')
  end
  redis.call('DEL', arq_ip_prefix .. job_id)
  redis.call('ZADD', queue, at_ms, job_id)
  redis.call('ZREM', PFX .. 'active', job_id)
  return true
end

-- add_request_id(job_id, rid): keep the upstream's X-Request-Id of every call on the record.
local function add_request_id(job_id, rid)
  if rid == nil or rid == '' then return end
  local ledger = k_job(job_id)
  if redis.call('EXISTS', ledger) == 0 then return end  -- never re-create a lost record
  local ids = cjson.decode(redis.call('HGET', ledger, 'request_ids') or '[]')
  table.insert(ids, rid)
  redis.call('HSET', ledger, 'request_ids', cjson.encode(ids))
end

-- holds_money(job_id): a paid result to store, or an upstream job still running (202) that
-- bills when it completes: a cancelled job keeps going until that output is stored.
local function holds_money(job_id)
  return redis.call('EXISTS', k_paid(job_id)) == 1
    or redis.call('HGET', k_call(job_id), 'state') == 'pending'
end

-- cancel_now(job_id, retention_ms, now): end a job `cancelled` (no run may write after it: its
-- lease ends, so the run's next write is fenced). It leaves its queues and arq's payload goes.
local function cancel_now(job_id, retention_ms, now, arq_job_prefix)
  for _, suffix in pairs(LANES) do  -- every lane's: a job moved between lanes leaves neither
    redis.call('ZREM', PFX .. suffix, job_id)
    redis.call('ZREM', k_first(PFX .. suffix), job_id)
  end
  redis.call('DEL', arq_job_prefix .. job_id)
  redis.call('ZREM', k_flow('line'), job_id)
  redis.call('ZREM', k_flow('line:seen'), job_id)
  end_run(job_id)
  transition(job_id, 'cancelled', now)
  retire(job_id, 'cancelled', retention_ms)
end

-- cancel_requested(job_id): `upscale cancel` came while the job held money; it ends when that
-- money is stored (or can no longer be: then `cancelled` at its next hand-back).
local function cancel_requested(job_id)
  return redis.call('HGET', k_job(job_id), 'cancel') == '1'
end
