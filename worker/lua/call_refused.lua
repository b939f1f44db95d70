-- call_refused: the upstream answered with an error (not billed), or an async job it accepted
-- ended failed (not billed): the reservation is returned.
-- KEYS: 1 ledger, 2 call journal
-- ARGV: 1 prefix, 2 job id, 3 slot token, 4 request id, 5 drop a pending marker ('1')
local SCRIPT = 'call_refused'  -- its moves in the lifecycle table (worker/moves.py)
--- @include "_ledger"
--- @include "_money"
local job_id, slot = ARGV[2], ARGV[3]
if redis.call('HGET', KEYS[2], 'token') == slot and redis.call('HGET', KEYS[2], 'state') == 'refused' then
  return 'ok'  -- a retry whose first reply was lost: already recorded
end
add_request_id(job_id, ARGV[4])
free_slot(slot)
unreserve(slot)
-- a stale run's call (reclaimed, the journal holds a newer one) leaves the journal alone
if redis.call('HGET', KEYS[2], 'token') == slot then journal_to(job_id, 'refused') end
if ARGV[5] == '1' then redis.call('DEL', k_paid(job_id)) end
return 'ok'
