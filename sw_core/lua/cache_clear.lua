-- Remove every cached chunk, the cache's accounting and its use counts; touches no other key.
-- Staged parts of writes in flight are left to their TTL.
--
-- KEYS[1] the LRU sorted set, KEYS[2] the meta hash, KEYS[3] the use-count hash.
-- ARGV[1] info key prefix, ARGV[2] part key prefix (a part key is prefix .. id .. ':' .. n).
-- Returns the number of chunks removed.
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
for _, id in ipairs(ids) do
  local info = ARGV[1] .. id
  local parts = tonumber(redis.call('HGET', info, 'parts') or '0')
  for n = 0, parts - 1 do
    redis.call('DEL', ARGV[2] .. id .. ':' .. n)
  end
  redis.call('DEL', info)
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return #ids
