-- renew: extend an in-flight slot's lease while its call runs.
-- KEYS: 1 the slot's upstream key's in-flight set  ARGV: 1 prefix, 2 token, 3 lease_ms
--- @include "_now"
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  redis.call('ZADD', KEYS[1], now_ms() + tonumber(ARGV[3]), ARGV[2])
  return 1
end
return 0
