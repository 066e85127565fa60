-- Hand an entry back to the group at shutdown: re-add it as a fresh entry and ack the old
-- one, atomically, so another worker picks it up at once. Not a failure: no counter moves.
-- KEYS[1] jobs stream, KEYS[2] job hash
-- ARGV[1] group, ARGV[2] entry id, ARGV[3] now_ms, ARGV[4..] field/value pairs to re-add
-- Returns the new entry id, or false when the entry was no longer pending.
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return false
end
redis.call('XDEL', KEYS[1], ARGV[2])
local fields = {}
for i = 4, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
local entry = redis.call('XADD', KEYS[1], '*', unpack(fields))
if redis.call('HGET', KEYS[2], 'entry_id') == ARGV[2] then
  -- the job's own entry: the new one takes its place
  redis.call('HSET', KEYS[2], 'entry_id', entry)
  if redis.call('HGET', KEYS[2], 'status') == 'running' then
    redis.call('HSET', KEYS[2], 'status', 'queued', 'updated_ms', ARGV[3])
  end
end
return entry
