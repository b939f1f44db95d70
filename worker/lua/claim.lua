-- claim: one worker takes up to n due jobs of a queue in one step. arq checks each candidate
-- with its own round trips (WATCH, EXISTS, ZSCORE, MULTI/PSETEX), so every process walked over
-- every job already running elsewhere; here the walk happens inside Redis, atomically.
-- A job is due when its score (run-at ms) has come on Redis time and no run holds arq's
-- in-progress key for it; claiming sets that key, as arq's own pick does. Due work that holds
-- money (the queue's money-first set, filled by `requeue`) is taken before the rest.
-- KEYS: 1 the queue (zset: job id -> run-at ms), 2 its money-first set (zset: job id -> due ms)
-- ARGV: 1 prefix, 2 arq's in-progress key prefix, 3 in-progress TTL ms, 4 how many to claim
--   (n), 5 how many due entries to look at, at most
-- A claimed job enters the ledger's `active` index (derived from the prefix): from here until
-- a run puts it back in a queue or ends it, the healer watches it (arq may drop it unseen).
-- Returns {id1, score1, id2, score2, ...}.
--- @include "_now"
local now = now_ms()
local active = ARGV[1] .. 'active'
local want, ttl = tonumber(ARGV[4]), tonumber(ARGV[3])
local out, claimed = {}, 0
local function take(job_id, score)
  local in_progress = ARGV[2] .. job_id
  if redis.call('EXISTS', in_progress) == 1 then return end
  redis.call('SET', in_progress, '1', 'PX', ttl)
  redis.call('ZADD', active, now, job_id)
  out[#out + 1] = job_id
  out[#out + 1] = score
  claimed = claimed + 1
end
for _, job_id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, want)) do
  redis.call('ZREM', KEYS[2], job_id)  -- taken now, running already, or no longer queued
  local score = redis.call('ZSCORE', KEYS[1], job_id)
  if score and tonumber(score) > now then
    redis.call('ZADD', KEYS[2], score, job_id)  -- put back later since: first when due
  elseif score then
    take(job_id, score)
  end
end
if claimed >= want then return out end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0,
  tonumber(ARGV[5]))
for i = 1, #due, 2 do
  if claimed >= want then break end
  take(due[i], due[i + 1])
end
return out
