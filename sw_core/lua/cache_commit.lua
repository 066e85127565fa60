-- Commit a staged chunk: evict least recently used chunks until it fits, then move its
-- staged parts to their final names. All or nothing: the checks come before any write.
--
-- KEYS[1] the chunk's info hash, KEYS[2] the LRU sorted set, KEYS[3] the meta hash,
-- KEYS[4..] the staged parts in order.
-- ARGV[1] chunk id, ARGV[2] size_bytes, ARGV[3] budget_bytes, ARGV[4] part_bytes,
-- ARGV[5] info key prefix, ARGV[6] part key prefix (a part key is prefix .. id .. ':' .. n).
-- Returns {1, evicted} when stored, {0, 0} when the chunk was already cached (the staged
-- parts are then dropped and the entry marked most recently used).
-- Errors: 'SWCACHE_TOO_LARGE ...', 'SWCACHE_STAGING_LOST ...' (staged parts are dropped).
local id = ARGV[1]
local size = tonumber(ARGV[2])
local budget = tonumber(ARGV[3])
local first = 4

local function drop_staged()
  for i = first, #KEYS do
    redis.call('DEL', KEYS[i])
  end
end

if redis.call('EXISTS', KEYS[1]) == 1 then
  drop_staged()
  local clock = redis.call('HINCRBY', KEYS[3], 'clock', 1)
  redis.call('ZADD', KEYS[2], 'XX', clock, id)
  return {0, 0}
end

if size > budget then
  drop_staged()
  return redis.error_reply('SWCACHE_TOO_LARGE chunk of ' .. ARGV[2] ..
    ' bytes exceeds the cache budget of ' .. ARGV[3] .. ' bytes')
end

local staged = 0
for i = first, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    drop_staged()
    return redis.error_reply('SWCACHE_STAGING_LOST staged part ' .. (i - first) ..
      ' expired or vanished before commit')
  end
  staged = staged + redis.call('STRLEN', KEYS[i])
end
if staged ~= size then
  drop_staged()
  return redis.error_reply('SWCACHE_STAGING_LOST staged parts hold ' .. staged ..
    ' bytes, expected ' .. ARGV[2])
end

local used = tonumber(redis.call('HGET', KEYS[3], 'bytes') or '0')
local evicted = 0
while used + size > budget do
  local victim = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
  if not victim then
    -- Nothing left to evict, so nothing is stored: the counter restarts from zero.
    used = 0
    break
  end
  local victim_info = ARGV[5] .. victim
  local meta = redis.call('HMGET', victim_info, 'parts', 'size_bytes')
  for n = 0, (tonumber(meta[1]) or 0) - 1 do
    redis.call('DEL', ARGV[6] .. victim .. ':' .. n)
  end
  redis.call('DEL', victim_info)
  redis.call('ZREM', KEYS[2], victim)
  used = used - (tonumber(meta[2]) or 0)
  evicted = evicted + 1
end

for i = first, #KEYS do
  local final = ARGV[6] .. id .. ':' .. (i - first)
  redis.call('RENAME', KEYS[i], final)
  redis.call('PERSIST', final)
end
redis.call('HSET', KEYS[1], 'parts', #KEYS - first + 1, 'size_bytes', ARGV[2],
  'part_bytes', ARGV[4])
local clock = redis.call('HINCRBY', KEYS[3], 'clock', 1)
redis.call('ZADD', KEYS[2], clock, id)
redis.call('HSET', KEYS[3], 'bytes', string.format('%d', used + size))
if evicted > 0 then
  redis.call('HINCRBY', KEYS[3], 'evictions', evicted)
end
return {1, evicted}
