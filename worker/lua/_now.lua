-- now_ms(): Redis server time in milliseconds (never a worker's clock: clocks drift).
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
