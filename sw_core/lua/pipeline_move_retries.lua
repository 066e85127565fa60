-- Re-add the retries that are due to the jobs stream, atomically per job.
-- KEYS[1] retries zset (member: job id, score: due ms), KEYS[2] jobs stream
-- ARGV[1] most jobs to move, ARGV[2] key prefix of the retry hashes, ARGV[3] key prefix of
-- the job hashes (the job's entry_id becomes the new entry: only it may run the job)
-- "Due" is judged by the Redis clock (the one that scheduled them), not the worker's.
-- Returns {moved, due ms of the next waiting retry or -1, Redis time in ms}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now),
  'LIMIT', 0, tonumber(ARGV[1]))
local moved = 0
for _, member in ipairs(due) do
  local h = ARGV[2] .. member
  local fields = redis.call('HGETALL', h)
  if #fields > 0 then
    local entry = redis.call('XADD', KEYS[2], '*', unpack(fields))
    if redis.call('EXISTS', ARGV[3] .. member) == 1 then
      redis.call('HSET', ARGV[3] .. member, 'entry_id', entry)
    end
    moved = moved + 1
  end
  redis.call('ZREM', KEYS[1], member)
  redis.call('DEL', h)
end
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #head == 0 then
  return {moved, -1, now}
end
return {moved, math.floor(tonumber(head[2])), now}
