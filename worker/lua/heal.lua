-- heal: no job strands. Looks at the jobs a run took out of their queue (`active`: claimed or
-- running) and not checked for ARGV[2] ms; jobs waiting in a queue are not walked, so a
-- backlog of millions costs nothing here. One with no run lease and no queue entry (or no arq
-- payload: arq dropped it, e.g. past its own max tries) is re-enqueued from its ledger record;
-- one whose arq in-progress key outlived any run by more than the grace has the key cleared;
-- one back in its queue with no claim on it leaves the index.
-- (Slots and budget reservations no call holds: heal_slots.lua.)
-- KEYS: 1 active (zset), 2 run leases, 3.. every lane's queue (`worker.keys.QUEUES`)
-- ARGV: 1 prefix, 2 stale ms, 3 max jobs per call, 4 arq function, 5 arq job prefix,
--       6 arq in-progress prefix, 7 in-progress grace ms, 8 arq in-progress ttl ms
-- Returns the healed job ids.
--- @include "_ledger"
local now = now_ms()
local healed = {}

-- in_a_queue(job_id): whether any lane's queue holds the job
local function in_a_queue(job_id)
  for i = 3, #KEYS do
    if redis.call('ZSCORE', KEYS[i], job_id) then return true end
  end
  return false
end

local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]),
  'LIMIT', 0, tonumber(ARGV[3]))
for _, job_id in ipairs(ids) do
  local state = redis.call('HGET', k_job(job_id), 'state')
  if not state or FINAL[state] then
    redis.call('ZREM', KEYS[1], job_id)
  elseif redis.call('ZSCORE', KEYS[2], job_id) then
    redis.call('ZADD', KEYS[1], now, job_id)  -- a run holds it (reclaim takes expired leases)
  else
    if in_a_queue(job_id) and redis.call('EXISTS', ARGV[5] .. job_id) == 1 then
      local ttl = redis.call('PTTL', ARGV[6] .. job_id)
      if ttl > 0 and tonumber(ARGV[8]) - ttl > tonumber(ARGV[7]) then
        redis.call('DEL', ARGV[6] .. job_id)  -- claimable again: the queue indexes it
        redis.call('ZREM', KEYS[1], job_id)
        table.insert(healed, job_id)
      elseif ttl > 0 then
        redis.call('ZADD', KEYS[1], now, job_id)  -- claimed a moment ago: its run is starting
      else
        redis.call('ZREM', KEYS[1], job_id)  -- in its queue, unclaimed: nothing to heal
      end
    elseif requeue(job_id, now, ARGV[4], ARGV[5], ARGV[6]) then
      table.insert(healed, job_id)
    else
      redis.call('ZREM', KEYS[1], job_id)
    end
  end
end
return healed
