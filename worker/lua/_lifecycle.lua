--- @include "_keys"
-- The lifecycle's checks: a job's state and its call journal's state change only by a move
-- the tables allow (`JOB_MOVES`, `CALL_MOVES` in _contract.lua, generated from
-- worker/moves.py). A script that moves either declares `local SCRIPT = '<its name>'` before
-- its includes: the tables are per script.

-- check_move(moves, what, old, new): raise on a move `SCRIPT` may not make ('' = no record).
-- Raised before the move's own writes, never silently skipped: a move the table lacks is a
-- bug in a script, and its caller must hear of it.
local function check_move(moves, what, old, new)
  local by = moves[SCRIPT]
  if not (by and by[new] and by[new][old]) then
    error({err = 'ERR illegal ' .. what .. ' move by ' .. SCRIPT .. ': '
      .. (old == '' and '(none)' or old) .. ' -> ' .. (new == '' and '(none)' or new)
      .. ' (not in worker/moves.py)'})
  end
end

-- journal_to(job_id, new_state, field, value, ...): move the call journal to `new_state`,
-- with more of its fields. Every write of the journal's state is here.
local function journal_to(job_id, new_state, ...)
  local journal = k_call(job_id)
  check_move(CALL_MOVES, 'call journal', redis.call('HGET', journal, 'state') or '', new_state)
  redis.call('HSET', journal, 'state', new_state, ...)
end

-- journal_drop(job_id): the job ended; its journal goes (nothing to do when it has none).
local function journal_drop(job_id)
  local journal = k_call(job_id)
  local old = redis.call('HGET', journal, 'state')
  if old then check_move(CALL_MOVES, 'call journal', old, '') end
  redis.call('DEL', journal)
end
