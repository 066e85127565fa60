-- End jobs that must not run on: cancelled or past their deadline, atomically with the ack.
-- Mode 'check' (before a batch starts): a job whose cancel was requested ends 'cancelled',
-- one past its deadline ends 'expired', any other is left alone ('ok'). Mode 'cancelled' or
-- 'expired' (a running job stopped between two steps): the job ends with that status.
-- Ending acks and deletes the entry, sets the status, counts it once ('cancelled' or
-- 'expired' in the stats hash, never an error) and wakes the waiters. An entry that is no
-- longer pending (another worker finished it) is left alone ('gone').
-- KEYS: 1 jobs stream, 2 stats hash, then per job: job hash, done list
-- ARGV: 1 group, 2 now_ms, 3 ttl_s, then 3 values per job: entry_id, mode, deadline_ms ('' = none)
local out = {}
local now = tonumber(ARGV[2])
for i = 1, (#KEYS - 2) / 2 do
  local b = 3 + (i - 1) * 3
  local entry, mode, deadline = ARGV[b + 1], ARGV[b + 2], tonumber(ARGV[b + 3])
  local h, done = KEYS[1 + 2 * i], KEYS[2 + 2 * i]
  local status = redis.call('HGET', h, 'status')
  if mode == 'check' then
    if status == 'cancelled' or redis.call('HGET', h, 'cancel_requested') == '1' then
      mode = 'cancelled'
    elseif deadline and now > deadline then
      mode = 'expired'
    end
  end
  if mode == 'check' then
    out[i] = 'ok'
  elseif redis.call('XACK', KEYS[1], ARGV[1], entry) == 0 then
    out[i] = 'gone'
  else
    redis.call('XDEL', KEYS[1], entry)
    if status ~= mode then
      redis.call('HSET', h, 'status', mode, 'finished_ms', ARGV[2], 'updated_ms', ARGV[2])
      redis.call('HDEL', h, 'next_attempt_ms')
      redis.call('EXPIRE', h, ARGV[3])
      redis.call('HINCRBY', KEYS[2], mode, 1)
      redis.call('RPUSH', done, '1')
      redis.call('EXPIRE', done, ARGV[3])
    end
    out[i] = mode
  end
end
return out
