-- call_unknown: the request left but no answer came back (read timeout, connection lost,
-- cancelled), or an async job the upstream accepted is gone: counted as possibly billed.
-- KEYS: 1 ledger, 2 call journal
-- ARGV: 1 prefix, 2 job id, 3 slot token, 4 drop a pending marker ('1')
local SCRIPT = 'call_unknown'  -- its moves in the lifecycle table (worker/moves.py)
--- @include "_ledger"
--- @include "_money"
local job_id = ARGV[2]
possibly_billed(job_id, ARGV[3], now_ms())
if ARGV[4] == '1' then redis.call('DEL', k_paid(job_id)) end
return 'ok'
