-- Derived key names (mirrors worker/keys.py). ARGV[1] is the prefix, e.g. "uq:".
local PFX = ARGV[1]
local function k_job(id) return PFX .. 'job:' .. id end
local function k_paid(id) return PFX .. 'paid:' .. id end
local function k_call(id) return PFX .. 'call:' .. id end
local function k_batch(b) return PFX .. 'batch:' .. b end
local FINAL = {succeeded = true, failed = true, skipped = true}
