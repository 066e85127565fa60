-- Cancel a job. A queued or retrying job ends at once (status 'cancelled', counted, its
-- waiters woken; a worker that reads its entry later acks it without running it). A running
-- job is only flagged: its worker stops it at its next step and ends it then.
-- KEYS: 1 job hash, 2 done list, 3 retries zset, 4 retry hash, 5 stats hash
-- ARGV: 1 now_ms, 2 ttl_s, 3 job_id
-- Returns the status after the call: 'unknown', 'cancelled', 'cancelling' (running: flagged),
-- or the final status the job already had ('done', 'dead', 'expired').
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  return 'unknown'
end
if status == 'done' or status == 'dead' or status == 'cancelled' or status == 'expired' then
  return status
end
redis.call('HSET', KEYS[1], 'cancel_requested', '1', 'updated_ms', ARGV[1])
if status == 'running' then
  return 'cancelling'
end
redis.call('ZREM', KEYS[3], ARGV[3])
redis.call('DEL', KEYS[4])
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_ms', ARGV[1])
redis.call('HDEL', KEYS[1], 'next_attempt_ms')
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('RPUSH', KEYS[2], '1')
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('HINCRBY', KEYS[5], 'cancelled', 1)
return 'cancelled'
