-- call_answered: the upstream answered with a result (billed) or an async job id (pending).
-- Money first, so saved whoever asks: a paid answer is recorded even if the run lost its lease
-- (the first saved result wins; a second one is still counted as spent). The paid result has
-- no TTL. But only the journal's current call writes the journal, and a job that ended keeps
-- no new result:
-- * a stale call (a run reclaimed after a stall, whose call the journal no longer holds, or
--   an answer for a job already final) is counted, settling what reclaim counted as possibly
--   billed; it becomes the job's result only if the job is open and has none;
-- * an answer for a call marked unknown (its run stalled past its lease before saving it)
--   settles that possible charge instead of adding a second one.
-- The run that asked learns when it lost its lease ('fenced', after the money is saved): it
-- stops before writing anything else (the output in S3 included).
-- KEYS: 1 ledger, 2 call journal, 3 paid result
-- ARGV: 1 prefix, 2 job id, 3 slot token, 4 cost micros, 5 request id, 6 paid result (json),
--       7 pending ('1': async job accepted, billed when it completes), 8 replayed ('1': the
--       upstream says this answer replays the earlier call with the same idempotency key),
--       9 run token of the run that asked ('': none to fence), 10 retention ms (final records),
--       11 keep_slot ('1': a pending job keeps its in-flight slot until its outcome: Ideogram
--       counts a generation against the organisation's in-flight cap until it completes)
-- Returns 'pending' | 'saved' | 'duplicate' | 'stale' | 'fenced' | 'orphan' (no record: saved
-- nowhere, the run stores it).
local SCRIPT = 'call_answered'  -- its moves in the lifecycle table (worker/moves.py)
--- @include "_ledger"
--- @include "_money"
local job_id, slot, cost, pending = ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[7] == '1'
local now = now_ms()
local js = redis.call('HGET', KEYS[2], 'state')
local current = redis.call('HGET', KEYS[2], 'token') == slot
local state = redis.call('HGET', KEYS[1], 'state')
-- a retry of this same script whose reply was lost (Redis went away): already recorded
if current then
  if js == 'answered' then return 'saved' end
  if js == 'pending' and pending then return 'pending' end
end
local function ours()
  return ARGV[9] == '' or owns(job_id, ARGV[9])
end

-- settle(micros): this call was counted as possibly billed (unknown); it was billed.
local function settle_possible(micros)
  local possible = tonumber(redis.call('HGET', KEYS[1], 'possible_micros') or '0')
  local settled = math.min(possible, micros)
  if settled > 0 then
    add_spend(job_id, -settled, 'possible_micros', now, slot)
    redis.call('HINCRBY', KEYS[1], 'unknown_calls', -1)
  end
  return settled
end

if not state then
  -- no record (a Redis restarted without persistence lost it): nobody else will store this
  -- paid answer, so its run does; the fleet's spend counts it (no record is re-created)
  free_slot(slot)
  unreserve(slot)
  if not pending then add_spend(job_id, cost, 'cost_micros', now, slot) end
  return 'orphan'
end
if not current or FINAL[state] then
  free_slot(slot)
  unreserve(slot)
  local ids = redis.call('HGET', KEYS[1], 'request_ids') or ''
  if ARGV[5] ~= '' and string.find(ids, '"' .. ARGV[5] .. '"', 1, true) then
    return 'stale'  -- an answer already counted (a replay of a recorded call)
  end
  add_request_id(job_id, ARGV[5])
  local open_slot = not FINAL[state] and redis.call('EXISTS', KEYS[3]) == 0
  if pending then
    if open_slot then redis.call('SET', KEYS[3], ARGV[6]) end  -- the next run polls it
    return 'stale'
  end
  settle_possible(cost)
  add_spend(job_id, cost, 'cost_micros', now, slot)
  redis.call('HINCRBY', KEYS[1], 'billed_calls', 1)
  if open_slot then redis.call('SET', KEYS[3], ARGV[6]) end
  -- a final record kept only for the possible charge this answer settled expires as usual
  if FINAL[state] then retire_settled(job_id, ARGV[10]) end
  return 'stale'
end
add_request_id(job_id, ARGV[5])
if not (pending and ARGV[11] == '1') then free_slot(slot) end
if pending then
  -- the reservation stays with the pending job until its outcome is known
  redis.call('SET', KEYS[3], ARGV[6])
  journal_to(job_id, 'pending', 'token', slot)
  -- a replayed 202: the job it names is the one the unknown call started
  if ARGV[8] == '1' then redis.call('HSET', KEYS[2], 'replayed', 1) end
  return ours() and 'pending' or 'fenced'
end
unreserve(slot)
local outcome = 'saved'
local existing = redis.call('GET', KEYS[3])
if existing and type(cjson.decode(existing).pending_id) ~= 'string' then
  outcome = 'duplicate'
else
  redis.call('SET', KEYS[3], ARGV[6])
end
local possible = tonumber(redis.call('HGET', KEYS[2], 'possible') or '0')
local replayed = ARGV[8] == '1' or redis.call('HGET', KEYS[2], 'replayed') == '1'
if replayed and possible > 0 then
  -- the earlier, unknown call and this answer are one billed call
  add_spend(job_id, -possible, 'possible_micros', now, slot)
  redis.call('HSET', KEYS[2], 'possible', 0)
elseif js == 'unknown' then
  -- this very call was counted as possibly billed (its run was reclaimed before saving it)
  local settled = settle_possible(math.min(cost, possible))
  redis.call('HINCRBY', KEYS[2], 'possible', -settled)
end
redis.call('HDEL', KEYS[2], 'replayed')
add_spend(job_id, cost, 'cost_micros', now, slot)
redis.call('HINCRBY', KEYS[1], 'billed_calls', 1)
journal_to(job_id, 'answered')
if not ours() then return 'fenced' end
return outcome
