-- discard_paid: the paid result can no longer give an output (its link expired, its body is no
-- image, it had none): drop it, so the job's next attempt makes a new call (the ledger keeps
-- both billed calls). Fenced like every write of a run: a run that lost its lease must not
-- drop what the run holding the job now may be storing.
-- KEYS: 1 ledger, 2 paid result
-- ARGV: 1 prefix, 2 job id, 3 run token
-- Returns 'ok' | 'fenced' (this run no longer holds the job: nothing dropped).
--- @include "_ledger"
if not owns(ARGV[2], ARGV[3]) then return 'fenced' end
redis.call('DEL', KEYS[2])
return 'ok'
