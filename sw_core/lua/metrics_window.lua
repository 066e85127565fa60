-- Sum the recent-count buckets (Keys.stats_window) for the windowed alert. Read-only.
-- KEYS: the bucket hashes of the window (missing ones count 0)
-- Returns {total_requests, errors}.
local requests, errors = 0, 0
for i = 1, #KEYS do
  local v = redis.call('HMGET', KEYS[i], 'total_requests', 'errors')
  requests = requests + (tonumber(v[1]) or 0)
  errors = errors + (tonumber(v[2]) or 0)
end
return {requests, errors}
