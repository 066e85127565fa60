-- Look up a cached chunk and mark it most recently used; on a miss, say whether the cache
-- would admit it (the admission policy, sw_core/cache/admission.py).
--
-- KEYS[1] the chunk's info hash, KEYS[2] the LRU sorted set, KEYS[3] the meta hash,
-- KEYS[4] the use-count hash.
-- ARGV[1] chunk id; ARGV[2] '1' to count (a hit or a miss, and one use), '0' not to count;
-- ARGV[3] the chunk's size in bytes for the admission verdict ('0': no verdict);
-- ARGV[4] the shard's budget in bytes; ARGV[5] info key prefix (an info key is prefix .. id);
-- ARGV[6] the aging window: uses are halved every max(ARGV[6], 10 x cached chunks) counted
-- lookups.
-- Returns {1, parts, size_bytes, part_bytes} on a hit; {0, admit} on a miss, admit 1 when
-- the chunk fits in free room or every least recently used entry it would evict was used
-- less often than it had been before this lookup, else 0 (and 0 without a verdict).
--
-- Writes go through pcall: a Redis at maxmemory with noeviction refuses them, and reads
-- must keep working then (the bump, the counters and the use counts are skipped).
local id = ARGV[1]
local count = ARGV[2] == '1'

local function age()
  local ticks = redis.pcall('HINCRBY', KEYS[3], 'ticks', 1)
  if type(ticks) ~= 'number' then return end
  local window = math.max(tonumber(ARGV[6]), 10 * redis.call('ZCARD', KEYS[2]))
  if ticks < window then return end
  local uses = redis.call('HGETALL', KEYS[4])
  for i = 1, #uses, 2 do
    local half = math.floor(tonumber(uses[i + 1]) / 2)
    if half > 0 then
      redis.pcall('HSET', KEYS[4], uses[i], half)
    else
      redis.pcall('HDEL', KEYS[4], uses[i])
    end
  end
  redis.pcall('HSET', KEYS[3], 'ticks', 0)
end

-- Admit into free room; else only if every victim, least recently used first, until the
-- chunk fits, was used less often than the chunk: on a sweep larger than the cache the
-- chunks already cached (used as often) stay, and a one-off read evicts nothing.
local function admits(size, prior)
  local budget = tonumber(ARGV[4])
  if size > budget then return 0 end
  local need = tonumber(redis.call('HGET', KEYS[3], 'bytes') or '0') + size - budget
  if need <= 0 then return 1 end
  local start = 0
  while true do
    local victims = redis.call('ZRANGE', KEYS[2], start, start + 15)
    if #victims == 0 then return 0 end
    for _, victim in ipairs(victims) do
      if tonumber(redis.call('HGET', KEYS[4], victim) or '0') >= prior then return 0 end
      need = need - tonumber(redis.call('HGET', ARGV[5] .. victim, 'size_bytes') or '0')
      if need <= 0 then return 1 end
    end
    start = start + 16
  end
end

-- Age first, so that the chunk's count and its victims' are compared on the same scale.
if count then age() end
local prior = tonumber(redis.call('HGET', KEYS[4], id) or '0')
if count then redis.pcall('HINCRBY', KEYS[4], id, 1) end
local info = redis.call('HMGET', KEYS[1], 'parts', 'size_bytes', 'part_bytes')
if not info[1] then
  local admit = 0
  local size = tonumber(ARGV[3])
  if size > 0 then admit = admits(size, prior) end
  if count then
    redis.pcall('HINCRBY', KEYS[3], 'misses', 1)
    if size > 0 and admit == 0 then redis.pcall('HINCRBY', KEYS[3], 'refusals', 1) end
  end
  return {0, admit}
end
local clock = redis.pcall('HINCRBY', KEYS[3], 'clock', 1)
if type(clock) == 'number' then
  redis.pcall('ZADD', KEYS[2], 'XX', clock, id)
end
if count then redis.pcall('HINCRBY', KEYS[3], 'hits', 1) end
return {1, info[1], info[2], info[3]}
