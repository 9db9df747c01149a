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
-- 2 never), remaining or retry_in (µs), used, limit, reset_in (µs). The
-- last three only for an operation that does not fit or counts nothing
-- (n = 0, explain); otherwise 0, N, 0: nobody shows them, and leaving them
-- out is a third of the script's work.
--
-- Commits (kinds 2 and 3) are all-or-none: when a blocking commit does not
-- fit, no commit of the call counts; otherwise each counts if it fits.

local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local floor = math.floor
local max = math.max
local min = math.min

local function floor_div(a, b)
  local q = floor(a / b)
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

-- A rule's limit is N (n), W (w), T (t), B (b). A cell is five numbers,
-- passed and returned as values, never as a table: tat (ct), prev_tat
-- (cpt), end (ce), prev (cp), cur (cc).

local function scheduled(w, t, tat)
  local horizon = tat + w
  local start = now + t
  if horizon <= start then
    return 0
  end
  return ceil_div(horizon - start, t)
end

local function slots_down_to(w, t, tat, k)
  return max(0, tat + w - (k + 1) * t)
end

local function used_of(w, t, ct, cpt, ce, cp, cc)
  local prev = 0
  if now < ce then
    prev = min(cp, scheduled(w, t, cpt))
  end
  return min(cc + prev, scheduled(w, t, ct))
end

-- The cell as it stands now (windows rolled, or anchored afresh), and
-- what counts against the limit.
local function view(w, t, ct, cpt, ce, cp, cc)
  if now > ce then
    if cc > 0 and now - ce <= w then
      cp = cc
      cpt = ct
      ce = ce + w
    else
      cp = 0
    end
    cc = 0
  end
  local used = used_of(w, t, ct, cpt, ce, cp, cc)
  if used == 0 then
    ce = now
    cp = 0
    cc = 0
  end
  return ct, cpt, ce, cp, cc, used
end

-- Returns outcome (0 allowed, 1 denied, 2 never), remaining or retry_in,
-- and, when it fits, the cell with k counted (else nil).
local function check(l, ct, cpt, ce, cp, cc, k)
  local n, w, t, b = l.n, l.w, l.t, l.b
  if k > b then
    return 2, 0
  end
  local used
  ct, cpt, ce, cp, cc, used = view(w, t, ct, cpt, ce, cp, cc)
  local shaped = b < n
  local burst_room = b * t
  local next_tat = max(ct, now) + k * t
  local fits_count = used + k <= n
  local fits_burst = (not shaped) or (next_tat - now <= burst_room)
  if fits_count and fits_burst then
    local remaining = max(0, n - used_of(w, t, next_tat, cpt, ce, cp, cc + k))
    if shaped then
      remaining = min(remaining, floor_div(max(0, burst_room - (next_tat - now)), t))
    end
    return 0, remaining, next_tat, cpt, ce, cp, cc + k
  end
  local at = now
  if not fits_count then
    local by_window
    if cc + k <= n then
      by_window = min(ce, slots_down_to(w, t, cpt, n - cc - k))
    else
      by_window = ce + w
    end
    at = min(by_window, slots_down_to(w, t, ct, n - k))
  end
  if not fits_burst then
    at = max(at, max(0, ct + k * t - burst_room))
  end
  return 1, max(0, at - now)
end

local function usage(l, ct, cpt, ce, cp, cc)
  local n, w, t, b = l.n, l.w, l.t, l.b
  local used
  ct, cpt, ce, cp, cc, used = view(w, t, ct, cpt, ce, cp, cc)
  local empty_at = now
  if used > 0 then
    local by_window
    if cc > 0 then
      by_window = ce + w
    else
      by_window = min(ce, slots_down_to(w, t, cpt, 0))
    end
    empty_at = min(by_window, slots_down_to(w, t, ct, 0))
  end
  local shown, limit = min(used, n), n
  if b < n then
    empty_at = max(empty_at, ct)
    local backlog = ceil_div(max(0, ct - now), t)
    if backlog * n > used * b then
      shown, limit = min(backlog, b), b
    end
  end
  return shown, limit, max(0, empty_at - now)
end

-- The cells of this call, read from the keys on first use: per key index,
-- per field, five numbers.
local cells = {}
local function cell_of(op)
  local by_field = cells[op.key]
  if not by_field then
    by_field = {}
    local flat = redis.call('HGETALL', KEYS[op.key])
    for i = 1, #flat, 2 do
      by_field[flat[i]] = flat[i + 1]
    end
    cells[op.key] = by_field
  end
  local c = by_field[op.field]
  if type(c) == 'string' then
    local a, b, e, p, cur = string.match(c, '^(%d+) (%d+) (%d+) (%d+) (%d+)$')
    if a then
      c = { tonumber(a), tonumber(b), tonumber(e), tonumber(p), tonumber(cur) }
    else
      c = nil
    end
    by_field[op.field] = c
  end
  c = c or { 0, 0, 0, 0, 0 }
  return by_field, c
end

local ops = {}
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
    if check(op.l, c[1], c[2], c[3], c[4], c[5], op.n) ~= 0 then
      blocked = true
    end
  end
end

local writes = {}
local out = {}
for _, op in ipairs(ops) do
  local by_field, c = cell_of(op)
  local outcome, value, nt, npt, ne, np, nc = check(op.l, c[1], c[2], c[3], c[4], c[5], op.n)
  local counts = op.n > 0 and (op.kind == 1 or (op.kind >= 2 and not blocked))
  if counts and nt then
    c = { nt, npt, ne, np, nc }
    by_field[op.field] = c
    local w = writes[op.key]
    if not w then
      w = {}
      writes[op.key] = w
    end
    w[op.field] = string.format('%.0f %.0f %.0f %.0f %.0f', nt, npt, ne, np, nc)
  end
  out[#out + 1] = outcome
  out[#out + 1] = value
  -- The caller shows usage only for what does not fit, and for a look
  -- without a count (explain): the rest is left out.
  if outcome ~= 0 or op.n == 0 then
    local shown, limit, reset = usage(op.l, c[1], c[2], c[3], c[4], c[5])
    out[#out + 1] = shown
    out[#out + 1] = limit
    out[#out + 1] = reset
  else
    out[#out + 1] = 0
    out[#out + 1] = op.l.n
    out[#out + 1] = 0
  end
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
