-- Keep a chunk-load lease alive, only while it still belongs to this loader.
--
-- KEYS[1] the lease (Keys.chunk_lock); ARGV[1] the loader's token; ARGV[2] new TTL in ms.
-- Returns 1 when the lease was extended, 0 when it is gone or someone else's.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
