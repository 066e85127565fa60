-- Remove one cached chunk (its parts, info hash and LRU entry) and its bytes from the count.
--
-- KEYS[1] the chunk's info hash, KEYS[2] the LRU sorted set, KEYS[3] the meta hash.
-- ARGV[1] chunk id, ARGV[2] part key prefix (a part key is prefix .. id .. ':' .. n),
-- ARGV[3] why: 'delete' (asked for), 'lost' (a part was missing during a read) or
-- 'corrupt' (the bytes did not match the id); ARGV[4] '1' when the read counted a hit in
-- cache_lookup.lua: for 'lost' and 'corrupt' that hit is turned into a miss. A corruption
-- is counted either way.
-- Returns 1 when an entry was removed, 0 when there was none.
--
-- The deletions come first: once a script has written, Redis at maxmemory no longer refuses
-- its writes, so the byte count always follows. The counters are best effort (pcall).
local removed = 0
local meta = redis.call('HMGET', KEYS[1], 'parts', 'size_bytes')
if meta[1] then
  for n = 0, tonumber(meta[1]) - 1 do
    redis.call('DEL', ARGV[2] .. ARGV[1] .. ':' .. n)
  end
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HINCRBY', KEYS[3], 'bytes', string.format('%d', -tonumber(meta[2])))
  removed = 1
end
local why = ARGV[3]
if (why == 'lost' or why == 'corrupt') and ARGV[4] == '1' then
  redis.pcall('HINCRBY', KEYS[3], 'hits', -1)
  redis.pcall('HINCRBY', KEYS[3], 'misses', 1)
end
if why == 'corrupt' then
  redis.pcall('HINCRBY', KEYS[3], 'corruptions', 1)
end
return removed
