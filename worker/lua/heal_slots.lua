-- heal_slots: returns budget reservations no call holds any more (admitted, then the worker
-- died before its call was journaled), and frees their slots. A slot whose in-flight lease
-- expired is not held, whatever fills the cap (only admission pruned such slots, after its
-- budget check had refused). A reservation whose call is journaled `sent` or `pending` stays:
-- that call may still bill (reclaim or its answer settles it).
-- KEYS: 1 reservations (hash: slot -> "est|day key|batch key|job id")
--       (a slot's in-flight set is its upstream key's, found from the slot token)
-- ARGV: 1 prefix
-- Returns the number of reservations returned.
--- @include "_money"
local now = now_ms()
local returned = 0
local res = redis.call('HGETALL', KEYS[1])
for i = 1, #res, 2 do
  local slot, v = res[i], res[i + 1]
  local lease = slot_lease(slot)
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
return returned
