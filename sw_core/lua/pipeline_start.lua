-- Mark a batch of jobs "running" -- only those whose stream entry this consumer still owns.
-- KEYS[1] jobs stream; KEYS[1 + i] job hash of job i
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] now_ms, ARGV[4] ttl_s, ARGV[5] max_deliveries,
--   then 5 values per job: entry_id, attempt, model, task, submitted_ms
-- Returns one integer per job: its delivery count (> 0) when started; 0 when the entry is
-- no longer pending for this consumer (acked, or claimed by another worker); minus the
-- delivery count when it was delivered more than max_deliveries times (poison: not started).
local out = {}
local max_deliveries = tonumber(ARGV[5])
for i = 1, #KEYS - 1 do
  local b = 5 + (i - 1) * 5
  local entry = ARGV[b + 1]
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], entry, entry, 1)
  if #pending == 0 or pending[1][2] ~= ARGV[2] then
    out[i] = 0
  else
    local deliveries = tonumber(pending[1][4])
    if deliveries > max_deliveries then
      out[i] = -deliveries
    else
      local h = KEYS[1 + i]
      redis.call('HSET', h, 'status', 'running', 'worker', ARGV[2], 'attempts', ARGV[b + 2],
        'model', ARGV[b + 3], 'task', ARGV[b + 4], 'submitted_ms', ARGV[b + 5],
        'started_ms', ARGV[3], 'updated_ms', ARGV[3], 'entry_id', entry)
      redis.call('EXPIRE', h, ARGV[4])
      out[i] = deliveries
    end
  end
end
return out
