-- Look up a cached chunk and mark it most recently used.
--
-- KEYS[1] the chunk's info hash, KEYS[2] the LRU sorted set, KEYS[3] the meta hash.
-- ARGV[1] chunk id; ARGV[2] '1' to count a hit or a miss, '0' not to count.
-- Returns {parts, size_bytes, part_bytes}, or nil when the chunk is not cached.
--
-- Writes go through pcall: a Redis at maxmemory with noeviction refuses them, and reads
-- must keep working then (the LRU bump and the counters are skipped).
local info = redis.call('HMGET', KEYS[1], 'parts', 'size_bytes', 'part_bytes')
local count = ARGV[2] == '1'
if not info[1] then
  if count then redis.pcall('HINCRBY', KEYS[3], 'misses', 1) end
  return false
end
local clock = redis.pcall('HINCRBY', KEYS[3], 'clock', 1)
if type(clock) == 'number' then
  redis.pcall('ZADD', KEYS[2], 'XX', clock, ARGV[1])
end
if count then redis.pcall('HINCRBY', KEYS[3], 'hits', 1) end
return info
