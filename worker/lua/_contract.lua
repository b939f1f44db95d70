-- GENERATED from worker/moves.py and worker/contract.py by `python -m worker.moves`:
-- do not edit (tests/unit/test_lifecycle.py checks it is in step).
-- FINAL: the states a job ends in (`FINAL_STATES`).
local FINAL = {['cancelled'] = true, ['failed'] = true, ['skipped'] = true, ['succeeded'] = true}
-- JOB_MOVES[script][to][from]: the moves of a job's state each script may make
-- ('' = no record yet).
local JOB_MOVES = {
  attempt_failed = {
    ['cancelled'] = {['queued'] = true, ['running'] = true, ['waiting'] = true},
    ['failed'] = {['queued'] = true, ['running'] = true, ['waiting'] = true},
    ['waiting'] = {['queued'] = true, ['running'] = true, ['waiting'] = true},
  },
  call_begin = {
    ['cancelled'] = {['queued'] = true, ['running'] = true, ['waiting'] = true},
  },
  cancel = {
    ['cancelled'] = {['queued'] = true, ['running'] = true, ['waiting'] = true},
  },
  enqueue = {
    ['queued'] = {[''] = true, ['cancelled'] = true, ['failed'] = true, ['queued'] = true, ['running'] = true, ['waiting'] = true},
  },
  finish = {
    ['cancelled'] = {['queued'] = true, ['running'] = true, ['waiting'] = true},
    ['failed'] = {['queued'] = true, ['running'] = true, ['waiting'] = true},
    ['skipped'] = {['queued'] = true, ['running'] = true, ['waiting'] = true},
    ['succeeded'] = {['queued'] = true, ['running'] = true, ['waiting'] = true},
  },
  reclaim = {
    ['queued'] = {['queued'] = true, ['running'] = true, ['waiting'] = true},
  },
  start = {
    ['cancelled'] = {['queued'] = true, ['running'] = true, ['waiting'] = true},
    ['running'] = {['queued'] = true, ['running'] = true, ['waiting'] = true},
  },
  wait = {
    ['cancelled'] = {['queued'] = true, ['running'] = true, ['waiting'] = true},
    ['waiting'] = {['queued'] = true, ['running'] = true, ['waiting'] = true},
  },
}
-- CALL_MOVES[script][to][from]: the same for the call journal ('' = none, or deleted).
local CALL_MOVES = {
  call_answered = {
    ['answered'] = {['pending'] = true, ['refused'] = true, ['sent'] = true, ['unknown'] = true},
    ['pending'] = {['refused'] = true, ['sent'] = true, ['unknown'] = true},
  },
  call_begin = {
    ['sent'] = {[''] = true, ['answered'] = true, ['pending'] = true, ['refused'] = true, ['sent'] = true, ['unknown'] = true},
    ['unknown'] = {['sent'] = true},
  },
  call_refused = {
    ['refused'] = {['answered'] = true, ['pending'] = true, ['sent'] = true, ['unknown'] = true},
  },
  call_unknown = {
    ['unknown'] = {['answered'] = true, ['pending'] = true, ['refused'] = true, ['sent'] = true},
  },
  finish = {
    [''] = {['answered'] = true, ['pending'] = true, ['refused'] = true, ['sent'] = true, ['unknown'] = true},
  },
  reclaim = {
    ['unknown'] = {['sent'] = true},
  },
}
-- LANES: each lane's arq queue, after the prefix (`worker.keys.QUEUES`).
local LANES = {live = 'queue', bulk = 'queue:bulk'}
