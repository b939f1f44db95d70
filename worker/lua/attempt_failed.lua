-- attempt_failed: a real failure. Uses an attempt; backs off (exponential, full jitter) or,
-- at the cap, fails the job. A paid result is kept either way.
-- KEYS: 1 ledger
-- ARGV: 1 prefix, 2 job id, 3 run token, 4 error class, 5 message, 6 max attempts,
--       7 backoff base ms, 8 backoff max ms, 9 jitter (0..1), 10 arq function,
--       11 arq job prefix, 12 arq in-progress prefix, 13 retention ms (final records)
-- A job cancelled while it held money, and holding none now, ends `cancelled` instead.
-- Returns {'retry', attempts, delay ms} | {'failed', attempts} | {'cancelled', attempts} |
--         {'fenced'}.
local SCRIPT = 'attempt_failed'  -- its moves in the lifecycle table (worker/moves.py)
--- @include "_ledger"
local job_id, token = ARGV[2], ARGV[3]
if not owns(job_id, token) then return {'fenced'} end
local now = now_ms()
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'error_class', ARGV[4], 'error', ARGV[5])
end_run(job_id)
if attempts >= tonumber(ARGV[6]) then
  redis.call('HSET', KEYS[1], 'error', ARGV[5] .. ' (gave up after ' .. attempts .. ' attempts)')
  redis.call('HDEL', KEYS[1], 'wait_reason', 'wait_detail')
  transition(job_id, 'failed', now)
  retire(job_id, 'failed', ARGV[13])
  return {'failed', attempts}
end
if cancel_requested(job_id) and not holds_money(job_id) then
  cancel_now(job_id, ARGV[13], now, ARGV[11])
  return {'cancelled', attempts}
end
local base, cap = tonumber(ARGV[7]), tonumber(ARGV[8])
local ceiling = math.min(cap, base * 2 ^ attempts)
local delay = math.floor(base / 2 + (ceiling - base / 2) * tonumber(ARGV[9]))
transition(job_id, 'waiting', now)
redis.call('HSET', KEYS[1], 'wait_reason', 'backoff', 'wait_detail', ARGV[5])
requeue(job_id, now + delay, ARGV[10], ARGV[11], ARGV[12])
return {'retry', attempts, delay}
