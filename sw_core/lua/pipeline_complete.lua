-- Store the results of a batch and ack their entries, atomically.
-- An entry that is no longer pending (another worker already finished it after a reclaim)
-- is skipped whole: its result is not written twice and nothing is counted twice.
-- KEYS[1] jobs stream, KEYS[2] stats hash, then per job: job hash, done list
-- ARGV[1] group, ARGV[2] ttl_s, ARGV[3] now_ms, ARGV[4] worker,
--   then 4 values per job: entry_id, msgpack result, count_request ('1' when
--   total_requests was not counted for this job yet), model
-- Counter names are those of sw_core/stats.py; per-model counts go to <stats key>:models
-- (field completed:<model>).
-- Recent counts for the windowed alert: 10-second buckets <stats key>:w:<unix s // 10>,
-- kept a day (WINDOW_BUCKET_S and WINDOW_TTL_S of sw_core/ops/stats.py).
local function window_add(stats_key, field, n)
  local t = redis.call('TIME')
  local bucket = stats_key .. ':w:' .. math.floor(tonumber(t[1]) / 10)
  redis.call('HINCRBY', bucket, field, n)
  redis.call('EXPIRE', bucket, 86460)
end
local out = {}
local completed, requests = 0, 0
for i = 1, (#KEYS - 2) / 2 do
  local b = 4 + (i - 1) * 4
  local entry = ARGV[b + 1]
  if redis.call('XACK', KEYS[1], ARGV[1], entry) == 1 then
    redis.call('XDEL', KEYS[1], entry)
    local h = KEYS[1 + 2 * i]
    local done = KEYS[2 + 2 * i]
    redis.call('HSET', h, 'status', 'done', 'result', ARGV[b + 2], 'worker', ARGV[4],
      'finished_ms', ARGV[3], 'updated_ms', ARGV[3])
    redis.call('HDEL', h, 'error', 'error_type', 'next_attempt_ms')
    redis.call('EXPIRE', h, ARGV[2])
    redis.call('RPUSH', done, '1')
    redis.call('EXPIRE', done, ARGV[2])
    completed = completed + 1
    redis.call('HINCRBY', KEYS[2] .. ':models', 'completed:' .. ARGV[b + 4], 1)
    if ARGV[b + 3] == '1' then requests = requests + 1 end
    out[i] = 1
  else
    out[i] = 0
  end
end
if completed > 0 then redis.call('HINCRBY', KEYS[2], 'completed', completed) end
if requests > 0 then
  redis.call('HINCRBY', KEYS[2], 'total_requests', requests)
  window_add(KEYS[2], 'total_requests', requests)
end
return out
