-- renew: extend an in-flight slot's lease while its call runs.
-- KEYS: 1 the slot's upstream key's in-flight set  ARGV: 1 prefix, 2 token, 3 lease_ms
-- Returns 1, or 0 when the slot is not held (freed, or pruned after its lease expired).
--- @include "_now"
--- @include "_slot"
return renew_slot(KEYS[1], ARGV[2], now_ms() + tonumber(ARGV[3]))
