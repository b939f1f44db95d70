-- batch_set: an operator's fields on a batch's hash, '' deleting one: `callback_url` (POSTed
-- when every job of the batch is final: `Producer.set_batch_callback`) and `cancelled_at` (ms:
-- `upscale cancel --batch` refuses new jobs into it; `upscale retry --batch B --state
-- cancelled` deletes it). Any other field raises, and nothing is written: the batch's counters
-- are `transition()`'s. A batch named before any of its jobs is created by it.
-- KEYS: 1 the batch's hash (`Keys.batch`)
-- ARGV: 1 prefix, 2 fields (JSON object: field -> value)
-- Returns 'ok'.
local SETTABLE = {callback_url = true, cancelled_at = true}
local fields = cjson.decode(ARGV[2])
for k, _ in pairs(fields) do
  if not SETTABLE[k] then error({err = 'ERR batch_set: ' .. k .. ' is not an operator field'}) end
end
for k, v in pairs(fields) do
  if v == '' then redis.call('HDEL', KEYS[1], k) else redis.call('HSET', KEYS[1], k, v) end
end
return 'ok'
