-- claim: one worker takes up to n due jobs of a queue in one step. arq checks each candidate
-- with its own round trips (WATCH, EXISTS, ZSCORE, MULTI/PSETEX), so every process walked over
-- every job already running elsewhere; here the walk happens inside Redis, atomically.
-- A job is due when its score (run-at ms) has come on Redis time and no run holds arq's
-- in-progress key for it; claiming sets that key, as arq's own pick does.
-- KEYS: 1 the queue (zset: job id -> run-at ms)
-- ARGV: 1 prefix, 2 arq's in-progress key prefix, 3 in-progress TTL ms, 4 how many to claim
--   (n), 5 how many due entries to look at, at most
-- Returns {id1, score1, id2, score2, ...}.
--- @include "_now"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms(), 'WITHSCORES', 'LIMIT', 0,
  tonumber(ARGV[5]))
local want, ttl = tonumber(ARGV[4]), tonumber(ARGV[3])
local out, claimed = {}, 0
for i = 1, #due, 2 do
  if claimed >= want then break end
  local in_progress = ARGV[2] .. due[i]
  if redis.call('EXISTS', in_progress) == 0 then
    redis.call('SET', in_progress, '1', 'PX', ttl)
    out[#out + 1] = due[i]
    out[#out + 1] = due[i + 1]
    claimed = claimed + 1
  end
end
return out
