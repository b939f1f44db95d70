-- call_answered: the upstream answered with a result (billed) or an async job id (pending).
-- Money first, so not fenced: a paid answer is saved even if the run lost its lease (the first
-- saved result wins; a second one is still counted as spent). The paid result has no TTL.
-- KEYS: 1 ledger, 2 call journal, 3 paid result
-- ARGV: 1 prefix, 2 job id, 3 slot token, 4 cost micros, 5 request id, 6 paid result (json),
--       7 pending ('1': async job accepted, billed when it completes), 8 replayed ('1': the
--       upstream says this answer replays the earlier call with the same idempotency key)
-- Returns 'pending' | 'saved' | 'duplicate'.
--- @include "_ledger"
--- @include "_money"
local job_id, slot, cost = ARGV[2], ARGV[3], tonumber(ARGV[4])
local now = now_ms()
-- a retry of this same script whose reply was lost (Redis went away): already recorded
local js = redis.call('HGET', KEYS[2], 'state')
if redis.call('HGET', KEYS[2], 'token') == slot then
  if js == 'answered' then return 'saved' end
  if js == 'pending' and ARGV[7] == '1' then return 'pending' end
end
add_request_id(job_id, ARGV[5])
free_slot(slot)
if ARGV[7] == '1' then
  -- the reservation stays with the pending job until its outcome is known
  redis.call('SET', KEYS[3], ARGV[6])
  redis.call('HSET', KEYS[2], 'state', 'pending', 'token', slot)
  -- a replayed 202: the job it names is the one the unknown call started
  if ARGV[8] == '1' then redis.call('HSET', KEYS[2], 'replayed', 1) end
  return 'pending'
end
unreserve(slot)
local outcome = 'saved'
local existing = redis.call('GET', KEYS[3])
if existing and type(cjson.decode(existing).pending_id) ~= 'string' then
  outcome = 'duplicate'
else
  redis.call('SET', KEYS[3], ARGV[6])
end
local possible = tonumber(redis.call('HGET', KEYS[2], 'possible') or '0')
local replayed = ARGV[8] == '1' or redis.call('HGET', KEYS[2], 'replayed') == '1'
if replayed and possible > 0 then
  -- the earlier, unknown call and this answer are one billed call
  add_spend(job_id, -possible, 'possible_micros', now, slot)
  redis.call('HSET', KEYS[2], 'possible', 0)
end
redis.call('HDEL', KEYS[2], 'replayed')
add_spend(job_id, cost, 'cost_micros', now, slot)
redis.call('HINCRBY', KEYS[1], 'billed_calls', 1)
redis.call('HSET', KEYS[2], 'state', 'answered')
return outcome
