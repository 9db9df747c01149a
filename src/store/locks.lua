-- egress-milter – stop hijacked mail accounts from flooding the internet
-- Copyright © 2026 The egress-milter developers
-- SPDX-License-Identifier: GPL-3.0-or-later
--
-- Lock changes of one host, merged into the fleet's lock list atomically.
--
-- KEYS[1]  hash <prefix>{locks}:entries   identity -> "<locked_at ms> <JSON>"
-- KEYS[2]  stream <prefix>{locks}:log     one entry per change: v, id, host
-- KEYS[3]  string <prefix>{locks}:version counts changes (gaps in the log)
-- ARGV[1]  the host's name; then per change: op ("put" or "unlock"),
--          identity, locked_at (ms), value (put) or "" (unlock).
-- Returns, per change, the fleet's value for the identity afterwards
-- (false: not locked).
--
-- The merge rule (docs/fleet.md): per identity, the lock with the later
-- locked_at wins, and an edit of the same lock (same locked_at) replaces it;
-- an unlock removes only the lock it saw (locked_at at most the one it
-- names), never a newer one set meanwhile elsewhere.

local out = {}
for i = 2, #ARGV, 4 do
  local op, id, at, value = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3]
  local cur = redis.call('HGET', KEYS[1], id)
  local cur_at = cur and tonumber(string.match(cur, '^(%d+) ')) or nil
  local changed = false
  if op == 'put' then
    if (not cur_at or cur_at <= at) and cur ~= value then
      redis.call('HSET', KEYS[1], id, value)
      changed = true
    end
  elseif cur and (not cur_at or cur_at <= at) then
    redis.call('HDEL', KEYS[1], id)
    changed = true
  end
  if changed then
    local v = redis.call('INCR', KEYS[3])
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', 100000, '*', 'v', v, 'id', id, 'host', ARGV[1])
  end
  out[#out + 1] = redis.call('HGET', KEYS[1], id)
end
return out
