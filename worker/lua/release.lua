-- release: give back an admitted slot that made no call, and its budget reservation.
-- KEYS: 1 the slot's in-flight set (its upstream key's, also found from the token)
-- ARGV: 1 prefix, 2 slot token
--- @include "_money"
free_slot(ARGV[2])
unreserve(ARGV[2])
return 1
