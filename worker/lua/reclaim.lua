-- reclaim: runs whose lease expired (worker killed, host lost, stalled past its TTL) go back
-- on their queue at once, with arq's in-progress key cleared. A call the dead run had sent
-- is counted as possibly billed (its reservation becomes spend).
-- KEYS: 1 run leases (zset)
-- ARGV: 1 prefix, 2 max jobs per call, 3 arq function, 4 arq job prefix,
--       5 arq in-progress prefix
-- Returns the job ids put back.
local SCRIPT = 'reclaim'  -- its moves in the lifecycle table (worker/moves.py)
--- @include "_ledger"
--- @include "_money"
local now = now_ms()
local back = {}
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, job_id in ipairs(expired) do
  redis.call('ZREM', KEYS[1], job_id)
  local ledger = k_job(job_id)
  local state = redis.call('HGET', ledger, 'state')
  redis.call('HDEL', ledger, 'run_token')
  if state and not FINAL[state] then
    local journal = k_call(job_id)
    if redis.call('HGET', journal, 'state') == 'sent' then
      possibly_billed(job_id, redis.call('HGET', journal, 'token') or '', now)
    end
    transition(job_id, 'queued', now)
    redis.call('HINCRBY', ledger, 'reclaims', 1)
    requeue(job_id, now, ARGV[3], ARGV[4], ARGV[5])
    table.insert(back, job_id)
  end
end
return back
