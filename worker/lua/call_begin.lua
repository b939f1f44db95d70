-- call_begin: journal an upstream call before the request leaves. The idempotency key is
-- `<job id>:<n>`; a call whose outcome is unknown is asked again under the same key, so an
-- upstream that honours `Idempotency-Key` answers it without billing twice (on the same
-- upstream key: admission prefers the key of an unknown call).
-- The call's entries in its key's rate windows (taken at admission, before the source was
-- read) are re-stamped with the time it leaves: the upstream counts from when a request
-- arrives, so the fleet's window tracks the upstream's within network jitter, not read time.
-- A call admitted before its key (or the fleet) was paused is not sent: between admission and
-- here the source was read, and a 402 may have come back meanwhile (no call into an empty
-- wallet after its 402). The key's canary call alone goes through a pause.
-- KEYS: 1 ledger, 2 call journal, 3 the key's rate window (zset), 4 its bulk rate window,
--   5 the fleet's manual pause (hash), 6 the key's pause (hash), 7 the key's canary lock
-- A cancelled job journals no call: `upscale cancel` marked it while it held money that is
-- gone since, so it ends `cancelled` here (a cancel of a job holding none fences its run).
-- ARGV: 1 prefix, 2 job id, 3 run token, 4 slot token (from admission), 5 estimated micros,
--       6 arq job prefix, 7 retention ms (final records)
-- Returns {'ok', call number, idempotency key} | {'fenced'} | {'paused', reason} |
--         {'cancelled'}.
local SCRIPT = 'call_begin'  -- its moves in the lifecycle table (worker/moves.py)
--- @include "_ledger"
--- @include "_money"
local job_id, token, slot = ARGV[2], ARGV[3], ARGV[4]
if not owns(job_id, token) then return {'fenced'} end
if cancel_requested(job_id) then
  cancel_now(job_id, ARGV[7], now_ms(), ARGV[6])
  return {'cancelled'}
end
local paused = redis.call('HGET', KEYS[5], 'reason')
if not paused and redis.call('GET', KEYS[7]) ~= slot then
  paused = redis.call('HGET', KEYS[6], 'reason')
end
if paused then return {'paused', paused} end
local now = now_ms()
local prev = redis.call('HGET', KEYS[2], 'state')
if prev == 'sent' and redis.call('HGET', KEYS[2], 'token') == slot then
  -- this very call, journaled by a try whose reply was lost (Redis went away): as it was
  return {'ok', tonumber(redis.call('HGET', KEYS[2], 'n')), redis.call('HGET', KEYS[2], 'idem')}
end
if prev == 'sent' then
  -- a run that died mid-call before anyone noticed: its call may have been billed
  possibly_billed(job_id, redis.call('HGET', KEYS[2], 'token') or '', now)
  prev = 'unknown'
end
local n = redis.call('HINCRBY', KEYS[1], 'calls', 1)
local idem = redis.call('HGET', KEYS[2], 'idem')
-- an unknown call is asked again under its key only on the same upstream key (another
-- account would bill it regardless)
local same_key = slot_upstream(redis.call('HGET', KEYS[2], 'token')) == slot_upstream(slot)
if prev ~= 'unknown' or not idem or not same_key then
  -- a new idempotency key: a replay under it settles only what is sent under it (an earlier
  -- unknown call under another key stays possibly billed, in the job's spend)
  idem = job_id .. ':' .. n
  redis.call('HSET', KEYS[2], 'possible', 0)
end
journal_to(job_id, 'sent', 'n', n, 'idem', idem, 'token', slot, 'est', ARGV[5], 'sent_at', now)
redis.call('ZADD', KEYS[3], 'XX', now, slot)
redis.call('ZADD', KEYS[4], 'XX', now, slot)
-- what `upscale status` shows as calls/min: calls that left. The rate windows also hold
-- admissions never sent (counted against the limit until they age out), which are no calls.
local up = slot_upstream(slot)
if up then
  local sent = {k_up(up, 'sent')}
  if redis.call('ZSCORE', KEYS[4], slot) then sent[2] = k_up(up, 'sent-bulk') end
  for _, key in ipairs(sent) do
    redis.call('ZADD', key, now, slot)
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - 60000)
  end
end
return {'ok', n, idem}
