--- @include "_contract"
-- Derived key names (mirrors worker/keys.py). ARGV[1] is the prefix, e.g. "uq:".
local PFX = ARGV[1]
local function k_job(id) return PFX .. 'job:' .. id end
local function k_paid(id) return PFX .. 'paid:' .. id end
local function k_call(id) return PFX .. 'call:' .. id end
local function k_batch(b) return PFX .. 'batch:' .. b end
local function k_batch_done(b) return PFX .. 'batch:' .. b .. ':done' end
local function k_batch_open(b) return PFX .. 'batch:' .. b .. ':open' end
-- A day's spend per pool member and batch (hash `<member>|<batch>`; `Keys.spend_day_by`).
local function k_spend_day_by(day) return PFX .. 'spend:day:' .. day .. ':by' end
-- The fleet's flow keys (`Keys.waiting_line` = flow:line, `Keys.wake` = flow:wake, ...).
local function k_flow(name) return PFX .. 'flow:' .. name end
-- One upstream key's flow state (mirrors worker/keys.py `UpstreamKeys`: suffixes with '-').
local function k_up(name, suffix) return PFX .. 'up:' .. name .. ':' .. suffix end
-- The upstream key a slot token was admitted on: tokens are `<name>/<hex>`.
local function slot_upstream(slot) return string.match(slot or '', '^([^/]+)/') end
-- A lane's arq queue (`LANES`, generated from `QUEUES`; a record without a lane is live), and
-- its money-first set (mirrors `queue_for` / `first_of` in keys.py).
local function k_queue(lane) return PFX .. (LANES[lane] or LANES.live) end
local function k_first(queue) return queue .. ':first' end
