-- A failed attempt: schedule a retry or write a dead letter, and ack the entry, atomically.
-- Nothing happens (returns 0) when the entry is no longer pending: another worker already
-- finished this job. The dead letter is written in the same transaction as the ack, so a
-- crash can never lose it.
-- KEYS: 1 jobs stream, 2 stats hash, 3 job hash, 4 done list, 5 retries zset,
--       6 retry hash (fields to re-add), 7 dead-letter stream
-- ARGV: 1 group, 2 entry_id, 3 mode ('retry' | 'dead' | 'stray': a dead letter that leaves
--       the job hash and done list alone, for an entry that does not own its job id), 4 now_ms, 5 ttl_s, 6 worker,
--       7 error type, 8 error message, 9 attempt, 10 count_request ('1' | '0' | 'auto':
--       count unless the job hash names this entry, i.e. a producer registered and counted it),
--       11 retry delay in ms (retry; counted from the Redis clock, so worker clocks may
--       differ) or the dead-letter stream's approximate max length (dead), 12 job_id,
--       13 model, 14.. field/value pairs: the entry to re-add (retry) or the dead letter
-- Counter names are those of sw_core/stats.py; per-model counts go to <stats key>:models
-- (fields failed:<model>, retried:<model>, dead_lettered:<model>).
-- Recent counts for the windowed alert: 10-second buckets <stats key>:w:<unix s // 10>,
-- kept a day (WINDOW_BUCKET_S and WINDOW_TTL_S of sw_core/ops/stats.py).
local function window_add(stats_key, field, n)
  local t = redis.call('TIME')
  local bucket = stats_key .. ':w:' .. math.floor(tonumber(t[1]) / 10)
  redis.call('HINCRBY', bucket, field, n)
  redis.call('EXPIRE', bucket, 86460)
end
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
redis.call('XDEL', KEYS[1], ARGV[2])
local fields = {}
for i = 14, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HINCRBY', KEYS[2], 'errors', 1)
redis.call('HINCRBY', KEYS[2], 'errors:' .. ARGV[7], 1)
redis.call('HINCRBY', KEYS[2], 'failed', 1)
window_add(KEYS[2], 'errors', 1)
local by_model = KEYS[2] .. ':models'
redis.call('HINCRBY', by_model, 'failed:' .. ARGV[13], 1)
local count = ARGV[10] == '1'
if ARGV[10] == 'auto' then
  count = redis.call('HGET', KEYS[3], 'entry_id') ~= ARGV[2]
end
if count then
  redis.call('HINCRBY', KEYS[2], 'total_requests', 1)
  window_add(KEYS[2], 'total_requests', 1)
end
local h = KEYS[3]
-- a forged or duplicated entry must not turn a finished job back
local finished = ARGV[3] == 'stray' or redis.call('HGET', h, 'status') == 'done'
if ARGV[3] == 'retry' then
  local t = redis.call('TIME')
  local due = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    + tonumber(ARGV[11]))
  redis.call('DEL', KEYS[6])
  redis.call('HSET', KEYS[6], unpack(fields))
  redis.call('ZADD', KEYS[5], due, ARGV[12])
  redis.call('HINCRBY', KEYS[2], 'retried', 1)
  redis.call('HINCRBY', by_model, 'retried:' .. ARGV[13], 1)
  if not finished then
    redis.call('HSET', h, 'status', 'retrying', 'attempts', ARGV[9], 'error_type', ARGV[7],
      'error', ARGV[8], 'next_attempt_ms', due, 'worker', ARGV[6], 'updated_ms', ARGV[4])
    redis.call('EXPIRE', h, ARGV[5])
  end
else
  redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[11], '*', unpack(fields))
  redis.call('HINCRBY', KEYS[2], 'dead_lettered', 1)
  redis.call('HINCRBY', by_model, 'dead_lettered:' .. ARGV[13], 1)
  if not finished then
    redis.call('HSET', h, 'status', 'dead', 'attempts', ARGV[9], 'error_type', ARGV[7],
      'error', ARGV[8], 'worker', ARGV[6], 'finished_ms', ARGV[4], 'updated_ms', ARGV[4])
    redis.call('HDEL', h, 'next_attempt_ms')
    redis.call('EXPIRE', h, ARGV[5])
    redis.call('RPUSH', KEYS[4], '1')
    redis.call('EXPIRE', KEYS[4], ARGV[5])
  end
end
return 1
