-- Enqueue one job unless the queue is full, atomically: nothing is written when refused.
-- "Queued plus pending" is the length of the jobs stream: workers delete an entry when they
-- ack it, so what is left is either not yet read or read and not finished.
-- KEYS[1] jobs stream, KEYS[2] job hash, KEYS[3] stats hash
-- ARGV[1] cap (0 = no cap), ARGV[2] ttl_s, ARGV[3] submitted_ms, ARGV[4] model, ARGV[5] task,
--   ARGV[6] deadline_ms ('' = none), ARGV[7..] stream field/value pairs
-- Returns the new entry id, or false when the queue is full (counted as 'queue_full').
local cap = tonumber(ARGV[1])
if cap > 0 and redis.call('XLEN', KEYS[1]) >= cap then
  redis.call('HINCRBY', KEYS[3], 'queue_full', 1)
  return false
end
local fields = {}
for i = 7, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', KEYS[2], 'status', 'queued', 'model', ARGV[4], 'task', ARGV[5],
  'attempts', 0, 'submitted_ms', ARGV[3], 'updated_ms', ARGV[3])
if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[2], 'deadline_ms', ARGV[6])
end
redis.call('EXPIRE', KEYS[2], ARGV[2])
local id = redis.call('XADD', KEYS[1], '*', unpack(fields))
redis.call('HINCRBY', KEYS[3], 'total_requests', 1)
return id
