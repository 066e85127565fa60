-- Replay one dead letter: add its job back to the jobs stream and remove the letter,
-- atomically. Returns false when the letter is gone (already replayed or purged).
-- The XADD comes first: if Redis refuses it (out of memory), nothing has changed.
-- KEYS: 1 dead-letter stream, 2 jobs stream, 3 job hash, 4 job done list
-- ARGV: 1 dead-letter entry id, 2 now_ms, 3 job hash ttl_s, 4.. field/value pairs to add
-- Returns {new entry id, replay count of the job}.
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then
  return false
end
local fields = {}
for i = 4, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
local new_id = redis.call('XADD', KEYS[2], '*', unpack(fields))
local h = KEYS[3]
redis.call('HSET', h, 'status', 'queued', 'attempts', '0', 'entry_id', new_id,
  'updated_ms', ARGV[2], 'replayed_ms', ARGV[2])
redis.call('HDEL', h, 'finished_ms', 'next_attempt_ms')
local replays = redis.call('HINCRBY', h, 'replays', 1)
redis.call('EXPIRE', h, ARGV[3])
-- a waiter must block until the replayed attempt ends, not see the old ending
redis.call('DEL', KEYS[4])
redis.call('XDEL', KEYS[1], ARGV[1])
return {new_id, replays}
