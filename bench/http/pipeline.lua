-- wrk: POST /v1/decide pipelined, DEPTH requests per write (the standard wrk pipeline
-- pattern: the requests are wrk.format'ed in `init` and concatenated). wrk sends a
-- connection's DEPTH requests in one write and the next DEPTH once all DEPTH answers are
-- in, so with -c C at most C x DEPTH are in flight (verdict-load's depth is a sliding window
-- instead: a new request as each answer comes). wrk counts every answer as a request.
--   wrk -t1 -c8 -d4s -s bench/http/pipeline.lua http://127.0.0.1:PORT -- DEPTH [POOL]
-- Bodies: bench/http/events.lua (verdict-load's event shape), POOL events per thread
-- (default 4096, rounded up to a multiple of DEPTH), each write taking the next DEPTH and
-- cycled. Latency: each answer from its write's send time (see events.lua). Every response
-- must be 200: the others are counted and reported by `done` with the first one's status
-- and body. `done` prints one "wrk-result pipeline ..." line.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
package.path = dir .. "?.lua;" .. package.path
local events = require("events")

local writes, n, i, depth = nil, 0, 0, 16

function setup(thread)
    events.setup(thread)
end

function init(args)
    depth = tonumber(args[1]) or 16
    local pool = tonumber(args[2]) or 4096
    n = math.ceil(pool / depth)
    local reqs = events.requests(n * depth, thread_index or 0)
    writes = {}
    for w = 1, n do
        writes[w] = table.concat(reqs, "", (w - 1) * depth + 1, w * depth)
    end
end

function request()
    i = i % n + 1
    events.sending(i)
    return writes[i]
end

local function slot_of(id) return math.floor(id / depth) + 1 end

function response(status, headers, body)
    events.answered(status, body, slot_of)
end

function done(summary, latency, requests)
    events.report(summary, latency, "pipeline")
end
