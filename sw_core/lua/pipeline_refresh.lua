-- Keep the claim on entries this consumer is still working on: reset their idle time so
-- XAUTOCLAIM elsewhere does not take them. XCLAIM ... JUSTID leaves the delivery count as it
-- is. Entries another consumer owns by now are left alone and returned.
-- KEYS[1] jobs stream; ARGV[1] group, ARGV[2] consumer, ARGV[3..] entry ids
local mine, lost = {}, {}
for i = 3, #ARGV do
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #pending > 0 and pending[1][2] == ARGV[2] then
    mine[#mine + 1] = ARGV[i]
  else
    lost[#lost + 1] = ARGV[i]
  end
end
if #mine > 0 then
  local args = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0}
  for _, id in ipairs(mine) do
    args[#args + 1] = id
  end
  args[#args + 1] = 'JUSTID'
  redis.call(unpack(args))
end
return lost
