-- expire_reported: a batch's report is written; one page of its done list starts its records'
-- retention (`expire_final` in `_ledger.lua`: a record that holds money keeps no TTL). Records
-- no longer final (run again since) or gone are skipped.
-- KEYS: 1 the batch's done list (`Keys.batch_done`)
-- ARGV: 1 prefix, 2 start, 3 stop (LRANGE indexes, inclusive), 4 retention ms
-- Returns the number of records given a TTL.
--- @include "_ledger"
local expired = 0
for _, job_id in ipairs(redis.call('LRANGE', KEYS[1], tonumber(ARGV[2]), tonumber(ARGV[3]))) do
  if expire_final(job_id, ARGV[4]) then expired = expired + 1 end
end
return expired
