-- The pause of an upstream (its `pause` hash, worker/keys.py `UpstreamKeys.pause`; what each
-- reason does: worker/flow/decisions.py `PAUSE_RULES`). A timed pause (a daily limit) expires
-- by itself when the upstream said the limit resets; `probe` says whether a canary call may
-- find the others over.

-- may_probe(pause): may a canary call go through this pause? (A hash written before `probe`
-- was: any reason but manual.)
local function may_probe(pause)
  local probe = redis.call('HGET', pause, 'probe')
  if probe then return probe == '1' end
  local reason = redis.call('HGET', pause, 'reason')
  return reason ~= false and reason ~= 'manual'
end
