-- expire_reported: a batch's report is written; one page of its done list starts its records'
-- retention. A record that holds money is left without a TTL: a call possibly billed
-- (`possible_micros` > 0) or a paid result kept without expiry. A record whose paid result
-- is kept for a while (a failed job's, for `upscale retry`) lives at least as long as it, as
-- `retire` in `_ledger.lua` does for jobs of no batch. Records no longer final (run again
-- since) or gone are skipped.
-- KEYS: 1 the batch's done list (`Keys.batch_done`)
-- ARGV: 1 prefix, 2 start, 3 stop (LRANGE indexes, inclusive), 4 retention ms
-- Returns the number of records given a TTL.
--- @include "_keys"
local retention = tonumber(ARGV[4])
local expired = 0
for _, job_id in ipairs(redis.call('LRANGE', KEYS[1], tonumber(ARGV[2]), tonumber(ARGV[3]))) do
  local ledger = k_job(job_id)
  local state, possible = unpack(redis.call('HMGET', ledger, 'state', 'possible_micros'))
  if state and FINAL[state] and (tonumber(possible) or 0) <= 0 then
    local paid_ttl = redis.call('PTTL', k_paid(job_id))  -- -2: none, -1: kept for good
    if paid_ttl ~= -1 then
      redis.call('PEXPIRE', ledger, math.max(retention, paid_ttl))
      expired = expired + 1
    end
  end
end
return expired
