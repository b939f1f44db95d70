-- callback_mark: a completion notice's delivery, on the record it is about (a job's ledger
-- record or a batch's hash). Never creates one: a record that expired meanwhile (retention)
-- stays gone, where a plain HINCRBY would leave a stub with no state.
-- KEYS: 1 the record (`Keys.job` or `Keys.batch`)
-- ARGV: 1 prefix, 2 what: 'try' (one more delivery attempt) or the delivery's state
--       (delivered | retrying | failed | refused), 3 detail, 4 at (unix s)
-- Returns the attempts so far for 'try' (0: no such record), else 1 (written) or 0 (none).
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[2] == 'try' then return redis.call('HINCRBY', KEYS[1], 'callback_attempts', 1) end
redis.call('HSET', KEYS[1], 'callback_state', ARGV[2], 'callback_detail', ARGV[3],
  'callback_at', ARGV[4])
return 1
