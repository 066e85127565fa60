-- Give a chunk-load lease back, only while it still belongs to this loader.
--
-- KEYS[1] the lease (Keys.chunk_lock); ARGV[1] the loader's token.
-- Returns 1 when the lease was deleted, 0 when it was gone or someone else's.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
