-- Read the cache's accounting in one atomic step (a read-only script still runs when
-- Redis is at maxmemory, unlike MULTI).
--
-- KEYS[1] the meta hash, KEYS[2] the LRU sorted set.
-- Returns {bytes, hits, misses, evictions, corruptions, refusals, chunks} (missing counters
-- are false).
local meta = redis.call('HMGET', KEYS[1], 'bytes', 'hits', 'misses', 'evictions', 'corruptions',
  'refusals')
table.insert(meta, redis.call('ZCARD', KEYS[2]))
return meta
