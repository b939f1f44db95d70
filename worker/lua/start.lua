-- start: a run takes the job's lease (owner token, TTL on Redis time) and moves it to running.
-- A job cancelled while it held money that is gone since (its call failed or its run died
-- before the answer) ends `cancelled` here: no call is made for it.
-- KEYS: 1 ledger, 2 run leases (zset job id -> expiry ms)
-- ARGV: 1 prefix, 2 job id, 3 run token, 4 lease ttl ms, 5 arq job prefix, 6 retention ms
-- Returns {'ok', attempts, paid result or '', call journal (flat hash)} | {'final', state} |
--         {'busy', ms left on the other run's lease} | {'missing'}: what a run needs, in one trip.
local SCRIPT = 'start'  -- its moves in the lifecycle table (worker/moves.py)
--- @include "_ledger"
local job_id, token, ttl = ARGV[2], ARGV[3], tonumber(ARGV[4])
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'missing'} end
if FINAL[state] then return {'final', state} end
local now = now_ms()
local holder = redis.call('HGET', KEYS[1], 'run_token')
if holder and holder ~= token then
  local expiry = tonumber(redis.call('ZSCORE', KEYS[2], job_id) or '0')
  if expiry > now then return {'busy', expiry - now} end
end
if cancel_requested(job_id) and not holds_money(job_id) then
  cancel_now(job_id, ARGV[6], now, ARGV[5])
  return {'final', 'cancelled'}
end
redis.call('HSET', KEYS[1], 'run_token', token)
redis.call('HDEL', KEYS[1], 'wait_reason', 'wait_detail')
redis.call('HINCRBY', KEYS[1], 'runs', 1)
redis.call('ZADD', KEYS[2], now + ttl, job_id)
transition(job_id, 'running', now)
return {'ok', tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0'),
  redis.call('GET', k_paid(job_id)) or '', redis.call('HGETALL', k_call(job_id))}
