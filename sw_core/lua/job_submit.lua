-- Submit one job unless the queue is full, atomically: nothing is written when refused.
-- Writes the stream entry, the job hash (status queued, with the result TTL, naming that entry
-- as the only one that may run the job: a worker tells the job's own entry from another entry
-- that carries the same job id by it) and the request counter.
-- "Queued plus pending" is the length of the jobs stream: workers delete an entry when they
-- ack it, so what is left is either not yet read or read and not finished.
-- KEYS[1] jobs stream, KEYS[2] job hash, KEYS[3] stats hash
-- ARGV[1] cap (0 = no cap), ARGV[2] ttl_s, ARGV[3] submitted_ms, ARGV[4] model, ARGV[5] task,
--   ARGV[6] deadline_ms ('' = none), ARGV[7..] stream field/value pairs
-- Returns the new entry id, or false when the queue is full (counted as 'queue_full').
-- Recent counts for the windowed alert: 10-second buckets <stats key>:w:<unix s // 10>,
-- kept a day (WINDOW_BUCKET_S and WINDOW_TTL_S of sw_core/ops/stats.py).
local function window_add(stats_key, field, n)
  local t = redis.call('TIME')
  local bucket = stats_key .. ':w:' .. math.floor(tonumber(t[1]) / 10)
  redis.call('HINCRBY', bucket, field, n)
  redis.call('EXPIRE', bucket, 86460)
end
local cap = tonumber(ARGV[1])
if cap > 0 and redis.call('XLEN', KEYS[1]) >= cap then
  redis.call('HINCRBY', KEYS[3], 'queue_full', 1)
  return false
end
local fields = {}
for i = 7, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
local entry = redis.call('XADD', KEYS[1], '*', unpack(fields))
redis.call('HSET', KEYS[2], 'status', 'queued', 'model', ARGV[4], 'task', ARGV[5],
  'attempts', '0', 'submitted_ms', ARGV[3], 'updated_ms', ARGV[3], 'entry_id', entry)
if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[2], 'deadline_ms', ARGV[6])
end
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('HINCRBY', KEYS[3], 'total_requests', 1)
window_add(KEYS[3], 'total_requests', 1)
return entry
