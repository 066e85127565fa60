-- Count the stream entries after a consumer group's last-delivered id: the jobs no worker
-- has read yet. For Redis versions (and states) where XINFO GROUPS gives no 'lag'.
-- Read-only; counts server-side in pages so no entry crosses the network.
-- KEYS[1] stream; ARGV[1] last-delivered id, ARGV[2] most entries to count.
-- Returns the count (ARGV[2] when there are at least that many).
local cap = tonumber(ARGV[2])
local start = '(' .. ARGV[1]
local n = 0
while n < cap do
  local page = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', 1000)
  n = n + #page
  if #page < 1000 then break end
  start = '(' .. page[#page][1]
end
if n > cap then n = cap end
return n
