-- wrk: POST /v1/decide, one request per write (with -c C, C requests in flight).
--   wrk -t1 -c32 -d4s -s bench/http/post.lua http://127.0.0.1:PORT [-- POOL]
-- Bodies: bench/http/events.lua (verdict-load's event shape), POOL per thread (default
-- 4096), cycled; POOL must be well over the requests in flight, since each answer is timed
-- from its own write, found by the event id it carries. Every response must be 200: the
-- others are counted and reported by `done` with the first one's status and body, so a
-- broken server cannot pass for a fast one. `done` prints one "wrk-result post ..." line
-- (latency percentiles in microseconds, timed per request: see events.lua).
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
package.path = dir .. "?.lua;" .. package.path
local events = require("events")

local pool, n, i = nil, 0, 0

function setup(thread)
    events.setup(thread)
end

function init(args)
    n = tonumber(args[1]) or 4096
    pool = events.requests(n, thread_index or 0)
end

function request()
    i = i % n + 1
    events.sending(i)
    return pool[i]
end

local function slot_of(id) return id + 1 end

function response(status, headers, body)
    events.answered(status, body, slot_of)
end

function done(summary, latency, requests)
    events.report(summary, latency, "post")
end
