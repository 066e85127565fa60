-- Submit one job: its hash (status queued, owning the new entry), the stream entry and the
-- request counter, atomically. The hash's entry_id is what lets a worker tell the job's own
-- entry from another entry that carries the same job id.
-- KEYS: 1 job hash, 2 jobs stream, 3 stats hash
-- ARGV: 1 model, 2 task, 3 submitted_ms, 4 ttl_s, 5.. field/value pairs of the entry
-- Returns the new entry id.
-- Recent counts for the windowed alert: 10-second buckets <stats key>:w:<unix s // 10>,
-- kept a day (WINDOW_BUCKET_S and WINDOW_TTL_S of sw_core/ops/stats.py).
local function window_add(stats_key, field, n)
  local t = redis.call('TIME')
  local bucket = stats_key .. ':w:' .. math.floor(tonumber(t[1]) / 10)
  redis.call('HINCRBY', bucket, field, n)
  redis.call('EXPIRE', bucket, 86460)
end
local fields = {}
for i = 5, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
local entry = redis.call('XADD', KEYS[2], '*', unpack(fields))
redis.call('HSET', KEYS[1], 'status', 'queued', 'model', ARGV[1], 'task', ARGV[2],
  'attempts', '0', 'submitted_ms', ARGV[3], 'updated_ms', ARGV[3], 'entry_id', entry)
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('HINCRBY', KEYS[3], 'total_requests', 1)
window_add(KEYS[3], 'total_requests', 1)
return entry
