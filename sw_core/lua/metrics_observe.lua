-- Record latency observations of one task into its histogram hash, atomically.
-- KEYS[1] the task's latency hash, KEYS[2] the set of task names with a histogram
-- ARGV[1] task name, then pairs: bucket field, duration in whole microseconds
-- Fields: one per bucket (observations in that bucket, not cumulative), 'count', 'sum_us',
-- 'max_us'. Returns the task's count after the update.
local n = 0
local total = 0
local max = tonumber(redis.call('HGET', KEYS[1], 'max_us') or '-1')
local new_max = max
for i = 2, #ARGV, 2 do
  local us = tonumber(ARGV[i + 1])
  redis.call('HINCRBY', KEYS[1], ARGV[i], 1)
  n = n + 1
  total = total + us
  if us > new_max then new_max = us end
end
redis.call('HINCRBY', KEYS[1], 'sum_us', string.format('%d', total))
if new_max > max then
  redis.call('HSET', KEYS[1], 'max_us', string.format('%d', new_max))
end
redis.call('SADD', KEYS[2], ARGV[1])
return redis.call('HINCRBY', KEYS[1], 'count', n)
