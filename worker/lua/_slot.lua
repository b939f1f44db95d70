--- @include "_keys"
-- The in-flight slot: every write to an upstream's in-flight set (zset: slot token ->
-- lease expiry ms) is here. A slot `<upstream name>/<hex>` is
--   taken    by admit.lua (take_slot), with its rate-window entries and budget reservation;
--   renewed  by renew.lua while its call runs (renew_slot);
--   freed    when its call's outcome is recorded (call_answered / call_refused / call_unknown,
--            reclaim: free_slot, through _money.lua), or given back unused (release.lua);
--   pruned   by admission once its lease expired (a dead worker's slot comes back: prune_slots);
--   healed   by heal_slots.lua: an expired slot whose reservation no journaled call holds.
-- The Python side is worker/flow/slots.py.

-- take_slot(inflight, slot, now, lease_ms): the slot is held until its lease expires.
local function take_slot(inflight, slot, now, lease_ms)
  redis.call('ZADD', inflight, now + lease_ms, slot)
end

-- renew_slot(inflight, slot, until_ms): extend a slot still held; returns 1, else 0.
local function renew_slot(inflight, slot, until_ms)
  if not redis.call('ZSCORE', inflight, slot) then return 0 end
  redis.call('ZADD', inflight, until_ms, slot)
  return 1
end

-- prune_slots(inflight, now): drop slots whose lease expired (their holder died).
local function prune_slots(inflight, now)
  redis.call('ZREMRANGEBYSCORE', inflight, '-inf', now)
end

-- free_slot(token): the call is over; wake the head of the waiting line (`flow:wake`, message
-- `ids:<job> ...`), if anyone waits. Only the head: one freed slot admits one job, and waking
-- every waiter of every process would cost a round of admissions per call. The first 4 are
-- woken: the first may have gone (its worker died: the line drops it after 5 s), and slots
-- freed in quick succession name the same head until it has asked again.
local function free_slot(token)
  local up = slot_upstream(token)
  if up and redis.call('ZREM', k_up(up, 'inflight'), token) == 1 then
    local head = redis.call('ZRANGE', k_flow('line'), 0, 3)
    if #head > 0 then redis.call('PUBLISH', k_flow('wake'), 'ids:' .. table.concat(head, ' ')) end
  end
end

-- slot_lease(slot): its lease expiry ms, or nil when it is not held.
local function slot_lease(slot)
  local up = slot_upstream(slot)
  return up and redis.call('ZSCORE', k_up(up, 'inflight'), slot)
end
