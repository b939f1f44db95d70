-- heartbeat: renew the run leases one worker process holds (one call for all its runs).
-- KEYS: 1 run leases (zset)
-- ARGV: 1 prefix, 2 lease ttl ms, 3.. pairs of (job id, run token)
-- Returns the job ids whose lease this process no longer holds (taken over or ended).
--- @include "_ledger"
local ttl = tonumber(ARGV[2])
local now = now_ms()
local lost = {}
for i = 3, #ARGV, 2 do
  local job_id, token = ARGV[i], ARGV[i + 1]
  if owns(job_id, token) then
    redis.call('ZADD', KEYS[1], now + ttl, job_id)
  else
    table.insert(lost, job_id)
  end
end
return lost
