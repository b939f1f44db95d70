-- wait: hand the job back without using an attempt (pause, 429, outage, budget, shutdown).
-- KEYS: 1 ledger
-- A job cancelled while it held money, and holding none now, ends `cancelled` instead.
-- ARGV: 1 prefix, 2 job id, 3 run token, 4 reason, 5 detail, 6 delay ms, 7 arq function,
--       8 arq job prefix, 9 arq in-progress prefix, 10 retention ms
-- Returns 'ok', 'cancelled', or 'fenced' when the run no longer holds the lease (nothing
-- changed).
local SCRIPT = 'wait'  -- its moves in the lifecycle table (worker/moves.py)
--- @include "_ledger"
local job_id, token = ARGV[2], ARGV[3]
if not owns(job_id, token) then return 'fenced' end
local now = now_ms()
if cancel_requested(job_id) and not holds_money(job_id) then
  cancel_now(job_id, ARGV[10], now, ARGV[8])
  return 'cancelled'
end
transition(job_id, 'waiting', now)
redis.call('HSET', KEYS[1], 'wait_reason', ARGV[4], 'wait_detail', ARGV[5])
redis.call('HINCRBY', KEYS[1], 'waits', 1)
end_run(job_id)
-- it leaves the waiting line for admission too (it asks again when it is picked again)
redis.call('ZREM', k_flow('line'), job_id)
redis.call('ZREM', k_flow('line:seen'), job_id)
requeue(job_id, now + tonumber(ARGV[6]), ARGV[7], ARGV[8], ARGV[9])
return 'ok'
