-- Mark a batch of jobs "running" -- only those whose stream entry this consumer still owns,
-- only when the entry is the one its job is waiting for, and never a job that was cancelled.
-- KEYS[1] jobs stream; KEYS[1 + i] job hash of job i
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] now_ms, ARGV[4] ttl_s, ARGV[5] max_deliveries,
--   then 5 values per job: entry_id, attempt, model, task, submitted_ms
-- Returns two integers per job: a state and the entry's delivery count. States:
--   1 started; 2 started, and no job hash existed (nobody registered this job: its
--   request is not counted yet, whatever the entry says); 0 the entry is no longer pending
--   for this consumer (acked, or claimed by another worker); -1 poison (delivered more than
--   max_deliveries times: not started); -2 duplicate: the job id belongs to a job that
--   waits for another entry (its own retries, replays and hand-backs set the job hash's
--   entry_id when they add the entry), so this entry must not touch it; -3 cancelled: the
--   job was cancelled (status 'cancelled', or a cancel was requested) after the worker's
--   check and before this call: it is not started, and the worker ends it with the ack
--   (job_end.lua, which counts it only if the cancel did not already); -4 not started:
--   Redis is out of memory (maxmemory with noeviction refuses the job hash's HSET, the
--   first write, so nothing was written; the entry is this job's to fail).
local out = {}
local max_deliveries = tonumber(ARGV[5])
for i = 1, #KEYS - 1 do
  local b = 5 + (i - 1) * 5
  local entry = ARGV[b + 1]
  local h = KEYS[1 + i]
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], entry, entry, 1)
  local state, deliveries = 0, 0
  if #pending > 0 and pending[1][2] == ARGV[2] then
    deliveries = tonumber(pending[1][4])
    local owner = redis.call('HGET', h, 'entry_id')
    local fresh = redis.call('EXISTS', h) == 0
    if owner and owner ~= entry then
      state = -2
    elseif redis.call('HGET', h, 'status') == 'cancelled'
        or redis.call('HGET', h, 'cancel_requested') == '1' then
      state = -3
    elseif deliveries > max_deliveries then
      state = -1
    else
      local set = redis.pcall('HSET', h, 'status', 'running', 'worker', ARGV[2],
        'attempts', ARGV[b + 2], 'model', ARGV[b + 3], 'task', ARGV[b + 4],
        'submitted_ms', ARGV[b + 5], 'started_ms', ARGV[3], 'updated_ms', ARGV[3],
        'entry_id', entry)
      if type(set) == 'table' and set.err then
        if string.sub(set.err, 1, 3) ~= 'OOM' then
          return set
        end
        state = -4
      else
        redis.call('EXPIRE', h, ARGV[4])
        state = fresh and 2 or 1
      end
    end
  end
  out[#out + 1] = state
  out[#out + 1] = deliveries
end
return out
