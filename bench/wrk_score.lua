-- wrk script for `electric bench service` (bench/wrk.py runs it; wrk is LuaJIT-based).
--
--   [WRK_SCORE_RATE=R] wrk -t1 -cN -dSs --latency -s bench/wrk_score.lua URL -- BODIES [FROM TO]
--
-- BODIES: a file of JSON request bodies, one per line, sent to POST /v1/score round-robin
-- (all connections of a thread share the turn, so every body goes out equally often).
-- FROM TO: the window, in seconds from the start, whose answers are counted apart: throughput
-- is taken there, away from the start (every connection sends at once, none has an answer
-- yet) and the stop (answers in flight are lost), which would both bias it low.
-- WRK_SCORE_RATE (optional): open loop at R requests/s. Arrivals are a Poisson process at R
-- (exponential gaps, drawn as the run goes); whichever connection falls free takes the next
-- arrival and waits for it. With enough connections no arrival waits for a free one, so an
-- answer's latency is not held back by the answers before it (no coordinated omission); `late`
-- counts the arrivals that did wait more than a millisecond, so a run where that happened can
-- be told. wrk's timers have millisecond resolution: arrivals are up to 1 ms early.
--
-- done() prints one line, "electric-wrk " followed by JSON, for bench/wrk.py to read:
-- requests answered, statuses other than 200 with their counts, socket errors, latency
-- percentiles in microseconds (over the whole run), answers and 200s within the window.

local ffi = require("ffi")
ffi.cdef [[
  struct electric_timespec { long tv_sec; long tv_nsec; };
  int clock_gettime(int clock, struct electric_timespec *ts);
]]
local CLOCK_MONOTONIC = 1
local ts = ffi.new("struct electric_timespec")

local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

-- Per-thread state (each wrk thread has its own Lua state; the main state, which only calls
-- setup, request once to check it and done, never loads bodies).
local requests = {}
local turn = 0
non200 = {}
late = 0
window_answers = 0
window_ok = 0
local origin = now_ms()
local window_from, window_to = 0, math.huge

function init(args)
  local path = args[1]
  if path == nil then
    error("usage: wrk ... -s wrk_score.lua URL -- BODIES [FROM TO]")
  end
  window_from = 1000 * (tonumber(args[2]) or 0)
  window_to = 1000 * (tonumber(args[3]) or math.huge)
  origin = now_ms()
  local headers = { ["Content-Type"] = "application/json" }
  for line in io.lines(path) do
    if #line > 0 then
      table.insert(requests, wrk.format("POST", wrk.path, headers, line))
    end
  end
  if #requests == 0 then
    error(path .. " holds no request bodies")
  end
end

function request()
  if #requests == 0 then -- the main state's check of the request's shape
    return wrk.format("POST", wrk.path, { ["Content-Type"] = "application/json" }, "{}")
  end
  turn = turn % #requests + 1
  return requests[turn]
end

-- wrk calls delay() before every request when the script defines it, so it is defined only
-- for the open loop (the rate in WRK_SCORE_RATE, requests/s, for this one thread).
local rate = tonumber(os.getenv("WRK_SCORE_RATE") or "")
if rate ~= nil then
  local gap_ms = 1000 / rate
  local next_ms = nil
  math.randomseed(12345)

  function delay()
    local now = now_ms()
    next_ms = (next_ms or now) - gap_ms * math.log(1 - math.random())
    local wait = next_ms - now
    if wait < -1 then
      late = late + 1
    end
    return wait > 0 and math.floor(wait) or 0
  end
end

function response(status, headers, body)
  if status ~= 200 then
    non200[status] = (non200[status] or 0) + 1
  end
  local t = now_ms() - origin
  if t >= window_from and t < window_to then
    window_answers = window_answers + 1
    if status == 200 then
      window_ok = window_ok + 1
    end
  end
end

local function json_counts(counts)
  local parts = {}
  for status, n in pairs(counts) do
    table.insert(parts, string.format('"%d": %d', status, n))
  end
  return "{" .. table.concat(parts, ", ") .. "}"
end

function done(summary, latency, _)
  local counts, lates, answers, ok = {}, 0, 0, 0
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("non200") or {}) do
      counts[status] = (counts[status] or 0) + n
    end
    lates = lates + (thread:get("late") or 0)
    answers = answers + (thread:get("window_answers") or 0)
    ok = ok + (thread:get("window_ok") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'electric-wrk {"requests": %d, "duration_us": %d, "non_200": %s, "late": %d, '
    .. '"window": {"answers": %d, "ok": %d}, '
    .. '"errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}, '
    .. '"latency_us": {"p50": %d, "p90": %d, "p95": %d, "p99": %d, "max": %d, "mean": %.1f}}\n',
    summary.requests, summary.duration, json_counts(counts), lates, answers, ok,
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(95),
    latency:percentile(99), latency.max,
    latency.mean))
end
