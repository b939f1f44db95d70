-- finish: a final state (succeeded | failed | skipped | cancelled) with its fields.
-- succeeded/skipped drop the paid result and the call journal; failed keeps the paid result
-- (for `upscale retry`) for ARGV[6] ms. A job cancelled while its paid call was in flight
-- stores that output (it was paid) and ends `cancelled`, its note saying so.
-- The record is compacted and retired (`retire` in _ledger.lua: the batch's done list, or
-- its retention).
-- KEYS: 1 ledger
-- ARGV: 1 prefix, 2 job id, 3 run token ('' = unfenced: only for a record no run can own),
--       4 state, 5 fields (json; '' deletes a field), 6 keep paid ms (failed),
--       7 retention ms (final records)
-- Returns 'ok' | 'fenced' | 'final' (already final: nothing changed) | 'missing' (no record).
-- A state that is not final raises (the lifecycle table), and nothing is written.
local SCRIPT = 'finish'  -- its moves in the lifecycle table (worker/moves.py)
--- @include "_ledger"
local job_id, token, state = ARGV[2], ARGV[3], ARGV[4]
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return 'missing' end
if token ~= '' and not owns(job_id, token) then return 'fenced' end
if FINAL[cur] then return 'final' end
local paid_then_cancelled = state == 'succeeded' and redis.call('HGET', KEYS[1], 'cancel') == '1'
if paid_then_cancelled then state = 'cancelled' end
check_move(JOB_MOVES, 'job', cur, state)  -- before any write
set_fields(job_id, ARGV[5])
if paid_then_cancelled then
  redis.call('HSET', KEYS[1], 'note', 'cancelled while its call was in flight: the paid output was stored')
end
end_run(job_id)
if state == 'failed' then
  if redis.call('EXISTS', k_paid(job_id)) == 1 then
    redis.call('PEXPIRE', k_paid(job_id), tonumber(ARGV[6]))
  end
else
  redis.call('DEL', k_paid(job_id))
  journal_drop(job_id)
end
transition(job_id, state, now_ms())  -- to: succeeded | failed | skipped | cancelled
retire(job_id, state, ARGV[7])
return 'ok'
