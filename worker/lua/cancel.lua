-- cancel: `upscale cancel`. A job not holding money ends `cancelled` now: it leaves its queue,
-- arq's payload is deleted, a run's lease ends (its next write, the call's journal included,
-- is fenced), and no call is journaled for it after this. A job holding money (a paid result
-- not yet stored, a call in flight, an upstream job still running) is marked: its run stores
-- what was paid, then it ends `cancelled` with a note saying so. A budget reservation of a
-- call not sent comes back with the run's slot (fenced runs release it; heal otherwise).
-- KEYS: 1 ledger
-- ARGV: 1 prefix, 2 job id, 3 arq job prefix, 4 retention ms (final records)
-- Returns 'cancelled' | 'after_call' (marked; ends after storing what was paid) |
--         'final' (already final: nothing changed) | 'missing' (no record).
local SCRIPT = 'cancel'  -- its moves in the lifecycle table (worker/moves.py)
--- @include "_ledger"
local job_id = ARGV[2]
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'missing' end
if FINAL[state] then return 'final' end
local sent = state == 'running' and redis.call('HGET', k_call(job_id), 'state') == 'sent'
if holds_money(job_id) or sent then
  redis.call('HSET', KEYS[1], 'cancel', 1)
  return 'after_call'
end
cancel_now(job_id, ARGV[4], now_ms(), ARGV[3])
return 'cancelled'
