-- heal: no job strands. Looks at the jobs a run took out of their queue (`active`: claimed or
-- running) and not checked for ARGV[2] ms; jobs waiting in a queue are not walked, so a
-- backlog of millions costs nothing here. One with no run lease and no queue entry (or no arq
-- payload: arq dropped it, e.g. past its own max tries) is re-enqueued from its ledger record;
-- one whose arq in-progress key outlived any run by more than the grace has the key cleared;
-- one back in its queue with no claim on it leaves the index.
-- Also returns budget reservations no call holds any more: admitted, then the worker died
-- before its call was journaled. A slot whose in-flight lease expired is not held, whatever
-- fills the cap (only admission pruned such slots, after its budget check had refused).
-- KEYS: 1 active (zset), 2 run leases, 3 live queue, 4 bulk queue, 5 reservations (hash)
--       (a slot's in-flight set is its upstream key's, found from the slot token)
-- ARGV: 1 prefix, 2 stale ms, 3 max jobs per call, 4 arq function, 5 arq job prefix,
--       6 arq in-progress prefix, 7 in-progress grace ms, 8 arq in-progress ttl ms
-- Returns {healed job ids, reservations returned}.
--- @include "_ledger"
--- @include "_money"
local now = now_ms()
local healed = {}
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]),
  'LIMIT', 0, tonumber(ARGV[3]))
for _, job_id in ipairs(ids) do
  local state = redis.call('HGET', k_job(job_id), 'state')
  if not state or FINAL[state] then
    redis.call('ZREM', KEYS[1], job_id)
  elseif redis.call('ZSCORE', KEYS[2], job_id) then
    redis.call('ZADD', KEYS[1], now, job_id)  -- a run holds it (reclaim takes expired leases)
  else
    local queued = redis.call('ZSCORE', KEYS[3], job_id) or redis.call('ZSCORE', KEYS[4], job_id)
    if queued and redis.call('EXISTS', ARGV[5] .. job_id) == 1 then
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
local returned = 0
local res = redis.call('HGETALL', KEYS[5])
for i = 1, #res, 2 do
  local slot, v = res[i], res[i + 1]
  local up = slot_upstream(slot)
  local lease = up and redis.call('ZSCORE', k_up(up, 'inflight'), slot)
  if not lease or tonumber(lease) <= now then
    local job_id = string.match(v, '|([^|]*)$') or ''
    local journal = k_call(job_id)
    local js = redis.call('HGET', journal, 'state')
    if redis.call('HGET', journal, 'token') ~= slot or (js ~= 'sent' and js ~= 'pending') then
      if lease then free_slot(slot) end
      unreserve(slot)
      returned = returned + 1
    end
  end
end
return {healed, returned}
