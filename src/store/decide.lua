-- egress-milter – stop hijacked mail accounts from flooding the internet
-- Copyright © 2026 The egress-milter developers
-- SPDX-License-Identifier: GPL-3.0-or-later
--
-- One decision of egress-milter on the fleet's counters: every bucket a
-- decision point touches, evaluated atomically in one call. The arithmetic
-- is exactly that of src/policy/limiter.rs (see its module documentation),
-- in integer microseconds: Lua numbers are doubles, exact below 2^53, and
-- every value here stays far below (a time since 1970 in µs is ~2^51; a
-- count times an interval is at most a window plus the count).
--
-- KEYS[k]  a hash per subject: `<prefix>{<group>}:i:<identity>` or
--          `<prefix>{<group>}:d:<domain>`; field = counter name,
--          value = "tat prev_tat end prev cur" (µs, µs, µs, count, count).
-- ARGV[1]  now in µs, or "" for the server's clock (TIME): one clock for
--          the whole fleet.
-- ARGV[2..1+#KEYS] per key, its time to live in ms once written: two of
--          the longest window of any rule that counts in it, and a slot.
-- then per operation: key index, counter name, N, W (µs), T (µs), B, n,
--          kind (0 peek, 1 count, 2 commit, 3 commit that blocks).
-- Each key is read once (HGETALL) and written once (HSET, PEXPIRE).
-- Returns five integers per operation: outcome (0 allowed, 1 denied,
-- 2 never), remaining or retry_in (µs), used, limit, reset_in (µs).
--
-- Commits (kinds 2 and 3) are all-or-none: when a blocking commit does not
-- fit, no commit of the call counts; otherwise each counts if it fits.

local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function floor_div(a, b)
  local q = math.floor(a / b)
  local r = a - q * b
  if r < 0 then
    q = q - 1
  elseif r >= b then
    q = q + 1
  end
  return q
end

local function ceil_div(a, b)
  local q = floor_div(a, b)
  if a - q * b > 0 then
    q = q + 1
  end
  return q
end

local function scheduled(l, tat)
  local horizon = tat + l.w
  local start = now + l.t
  if horizon <= start then
    return 0
  end
  return ceil_div(horizon - start, l.t)
end

local function slots_down_to(l, tat, k)
  return math.max(0, tat + l.w - (k + 1) * l.t)
end

local function used_of(l, c)
  local prev = 0
  if now < c.e then
    prev = math.min(c.p, scheduled(l, c.pt))
  end
  return math.min(c.c + prev, scheduled(l, c.t))
end

local function view(l, cell)
  local c = { t = cell.t, pt = cell.pt, e = cell.e, p = cell.p, c = cell.c }
  if now > c.e then
    if c.c > 0 and now - c.e <= l.w then
      c.p = c.c
      c.pt = c.t
      c.e = c.e + l.w
    else
      c.p = 0
    end
    c.c = 0
  end
  local used = used_of(l, c)
  if used == 0 then
    c.e = now
    c.p = 0
    c.c = 0
  end
  return c, used
end

-- Returns outcome, remaining or retry_in, and the cell with n counted
-- (nil unless it fits).
local function check(l, cell, n)
  if n > l.b then
    return 2, 0, nil
  end
  local c, used = view(l, cell)
  local shaped = l.b < l.n
  local burst_room = l.b * l.t
  local next_tat = math.max(c.t, now) + n * l.t
  local fits_count = used + n <= l.n
  local fits_burst = (not shaped) or (next_tat - now <= burst_room)
  if fits_count and fits_burst then
    local nxt = { t = next_tat, pt = c.pt, e = c.e, p = c.p, c = c.c + n }
    local remaining = math.max(0, l.n - used_of(l, nxt))
    if shaped then
      remaining = math.min(remaining, floor_div(math.max(0, burst_room - (next_tat - now)), l.t))
    end
    return 0, remaining, nxt
  end
  local at = now
  if not fits_count then
    local by_window
    if c.c + n <= l.n then
      by_window = math.min(c.e, slots_down_to(l, c.pt, l.n - c.c - n))
    else
      by_window = c.e + l.w
    end
    at = math.min(by_window, slots_down_to(l, c.t, l.n - n))
  end
  if not fits_burst then
    at = math.max(at, math.max(0, c.t + n * l.t - burst_room))
  end
  return 1, math.max(0, at - now), nil
end

local function usage(l, cell)
  local c, used = view(l, cell)
  local empty_at = now
  if used > 0 then
    local by_window
    if c.c > 0 then
      by_window = c.e + l.w
    else
      by_window = math.min(c.e, slots_down_to(l, c.pt, 0))
    end
    empty_at = math.min(by_window, slots_down_to(l, c.t, 0))
  end
  local shown, limit = math.min(used, l.n), l.n
  if l.b < l.n then
    empty_at = math.max(empty_at, c.t)
    local backlog = ceil_div(math.max(0, c.t - now), l.t)
    if backlog * l.n > used * l.b then
      shown, limit = math.min(backlog, l.b), l.b
    end
  end
  return shown, limit, math.max(0, empty_at - now)
end

local ops = {}
local cells = {}
local loaded = {}
local function cell_of(op)
  local id = op.key .. '\0' .. op.field
  local c = cells[id]
  if not c then
    local fields = loaded[op.key]
    if not fields then
      fields = {}
      local flat = redis.call('HGETALL', KEYS[op.key])
      for i = 1, #flat, 2 do
        fields[flat[i]] = flat[i + 1]
      end
      loaded[op.key] = fields
    end
    local v = fields[op.field]
    c = { t = 0, pt = 0, e = 0, p = 0, c = 0 }
    if v then
      local a, b, e, p, cur = string.match(v, '^(%d+) (%d+) (%d+) (%d+) (%d+)$')
      if a then
        c = { t = tonumber(a), pt = tonumber(b), e = tonumber(e), p = tonumber(p), c = tonumber(cur) }
      end
    end
    cells[id] = c
  end
  return id, c
end

local first = 2 + #KEYS
for i = first, #ARGV, 8 do
  ops[#ops + 1] = {
    key = tonumber(ARGV[i]),
    field = ARGV[i + 1],
    l = {
      n = tonumber(ARGV[i + 2]),
      w = tonumber(ARGV[i + 3]),
      t = tonumber(ARGV[i + 4]),
      b = tonumber(ARGV[i + 5]),
    },
    n = tonumber(ARGV[i + 6]),
    kind = tonumber(ARGV[i + 7]),
  }
end

-- Commits are all-or-none: see whether a blocking one does not fit.
local blocked = false
for _, op in ipairs(ops) do
  if op.kind == 3 then
    local _, c = cell_of(op)
    if check(op.l, c, op.n) ~= 0 then
      blocked = true
    end
  end
end

local writes = {}
local out = {}
for _, op in ipairs(ops) do
  local id, c = cell_of(op)
  local outcome, value, nxt = check(op.l, c, op.n)
  local counts = op.n > 0 and (op.kind == 1 or (op.kind >= 2 and not blocked))
  if counts and nxt then
    cells[id] = nxt
    c = nxt
    local w = writes[op.key]
    if not w then
      w = {}
      writes[op.key] = w
    end
    w[op.field] = string.format('%.0f %.0f %.0f %.0f %.0f', nxt.t, nxt.pt, nxt.e, nxt.p, nxt.c)
  end
  local shown, limit, reset = usage(op.l, c)
  out[#out + 1] = outcome
  out[#out + 1] = value
  out[#out + 1] = shown
  out[#out + 1] = limit
  out[#out + 1] = reset
end

for k, w in pairs(writes) do
  local args = {}
  for field, v in pairs(w) do
    args[#args + 1] = field
    args[#args + 1] = v
  end
  redis.call('HSET', KEYS[k], unpack(args))
  -- Idle after two of its longest windows at most: then the key may go.
  redis.call('PEXPIRE', KEYS[k], ARGV[1 + k])
end

return out
