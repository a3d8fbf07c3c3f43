-- Event bodies for the wrk scripts (post.lua, pipeline.lua): the shape of verdict-load's
-- seeded generator (bench/src/events.rs), so the engine's velocity state sees the same
-- traffic on both ports: 80% of events on 1,000 hot accounts, the rest on a long tail of a
-- million; Pareto amounts (xm 500 minor units, alpha 1.2, capped at 10^9); six currencies
-- with their countries (weighted towards USD/EUR); three channels; five MCCs; four features
-- and two attributes. Event ids and timestamps come from a counter; each wrk thread has its
-- own seed and id range. Like verdict-load's pool (4,096 pre-encoded frames per target), the
-- bodies are made once, in `init`, and cycled, so wrk spends its time on I/O.
--
-- Latency: wrk 4.1's own percentiles (--latency, and the `latency` object `done` gets) are
-- not raw closed-loop numbers: before reporting, wrk "corrects" them for coordinated
-- omission (stats_correct: for every sample over twice the mean interval it adds made-up
-- samples), and with pipelining it computes that interval per response instead of per write
-- and adds samples below the histogram's minimum, which its percentile walk never reaches
-- (p99 comes out as 0). So these scripts time every request themselves, like verdict-load
-- does: the send time of each write is taken (CLOCK_MONOTONIC through LuaJIT's FFI) when wrk
-- asks `request()` for it, just before writing it, and each 200 answer's `event_id` says
-- which write it answers. Percentiles over all answers, in microseconds (1 us buckets).
-- wrk's corrected p99 is printed beside them (wrk_p99_us) for reference only.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } verdict_timespec;
int clock_gettime(int clock, verdict_timespec *ts);
]]
local ts = ffi.new("verdict_timespec")
local CLOCK_MONOTONIC = 1

local M = {}

function M.now_us()
    ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
    return tonumber(ts.tv_sec) * 1e6 + tonumber(ts.tv_nsec) / 1e3
end

local CURRENCIES = {
    {"USD", "US", 40}, {"EUR", "DE", 25}, {"GBP", "GB", 12},
    {"JPY", "JP", 10}, {"CAD", "CA", 8}, {"BRL", "BR", 5},
}
local CURRENCY_WEIGHT = 100
local CHANNELS = {"web", "app", "pos"}
local MCCS = {5411, 5812, 5999, 4829, 7995}
local DOMAINS = {"example.com", "mail.test"}

local function currency()
    local pick = math.random(0, CURRENCY_WEIGHT - 1)
    for _, c in ipairs(CURRENCIES) do
        if pick < c[3] then
            return c[1], c[2]
        end
        pick = pick - c[3]
    end
end

-- One event's JSON, id `id` (a number).
function M.event(id, tag)
    local account
    if math.random() < 0.8 then
        account = math.random(0, 999)
    else
        account = math.random(0, 999999)
    end
    local cur, country = currency()
    local amount = math.floor(math.min(500 / (1 - math.random()) ^ (1 / 1.2), 1e9))
    return string.format(
        '{"event_id":"evt-%s-%d","timestamp_ms":%.0f,"account_id":"acct-%d",' ..
        '"merchant_id":"m-%d","amount_minor":%d,"currency":"%s","country":"%s",' ..
        '"channel":"%s","device_id":"d-%d","ip":"198.51.%d.%d","mcc":%d,' ..
        '"features":[%.6f,%.6f,%.6f,%.6f],' ..
        '"attributes":{"email_domain":"%s","account_age_days":%d}}',
        tag, id, 1700000000000 + id * 10, account,
        math.random(0, 4999), amount, cur, country,
        CHANNELS[math.random(1, 3)], math.random(0, 99999),
        100 + math.random(0, 3), math.random(1, 254), MCCS[math.random(1, 5)],
        math.random(), math.random(), math.random(), math.random(),
        DOMAINS[math.random(1, 2)], math.random(0, 2999))
end

-- `n` POST /v1/decide requests (whole HTTP requests, wrk.format'ed) for thread `thread`.
function M.requests(n, thread)
    math.randomseed(42 + thread)
    local headers = {["Content-Type"] = "application/json"}
    local out = {}
    for i = 1, n do
        out[i] = wrk.format("POST", "/v1/decide", headers, M.event(i - 1, "w" .. thread))
    end
    return out
end

-- The part shared by both scripts: every wrk thread counts the responses that are not 200
-- (and keeps the first one's status and body) and times the 200s into its histogram (the
-- globals `non200`, `first_bad`, `hist`, `timed`, read by `done` through thread:get).
M.threads = {}
non200, first_bad, hist, timed = 0, nil, {}, 0
local sent = {}

-- Write `slot` of the pool goes out now.
function M.sending(slot)
    sent[slot] = M.now_us()
end

-- An answer; `slot_of(id)` maps the event id it answers to its write's slot.
function M.answered(status, body, slot_of)
    if status ~= 200 then
        non200 = non200 + 1
        if not first_bad then
            first_bad = status .. " " .. tostring(body):sub(1, 300)
        end
        return
    end
    local id = body:match('"event_id":"evt%-w%d+%-(%d+)"')
    local at = id and sent[slot_of(tonumber(id))]
    if at then
        local us = math.floor(M.now_us() - at)
        hist[us] = (hist[us] or 0) + 1
        timed = timed + 1
    end
end

local function percentiles(merged, total, ps)
    local keys = {}
    for us in pairs(merged) do keys[#keys + 1] = us end
    table.sort(keys)
    local out, seen, k = {}, 0, 1
    for _, us in ipairs(keys) do
        seen = seen + merged[us]
        while k <= #ps and seen >= math.ceil(ps[k] / 100 * total) do
            out[k] = us
            k = k + 1
        end
    end
    return out
end

function M.setup(thread)
    thread:set("thread_index", #M.threads)
    table.insert(M.threads, thread)
end

function M.report(summary, latency, label)
    local non200, first, merged, total = 0, nil, {}, 0
    for _, t in ipairs(M.threads) do
        non200 = non200 + (t:get("non200") or 0)
        first = first or t:get("first_bad")
        for us, n in pairs(t:get("hist") or {}) do
            merged[us] = (merged[us] or 0) + n
        end
        total = total + (t:get("timed") or 0)
    end
    local p = percentiles(merged, total, {50, 90, 99, 99.9, 100})
    local e = summary.errors
    local secs = summary.duration / 1e6
    -- One line for scripts to read; latencies in microseconds.
    io.write(string.format(
        "wrk-result %s requests=%d rps=%.0f p50_us=%d p90_us=%d p99_us=%d p999_us=%d " ..
        "max_us=%d timed=%d wrk_p99_us=%.0f non200=%d connect_errors=%d read_errors=%d " ..
        "write_errors=%d timeouts=%d\n",
        label, summary.requests, summary.requests / secs, p[1] or -1, p[2] or -1, p[3] or -1,
        p[4] or -1, p[5] or -1, total, latency:percentile(99), non200,
        e.connect, e.read, e.write, e.timeout))
    if non200 > 0 then
        io.write("wrk-result NOT OK: " .. non200 .. " responses were not 200; the first: " ..
            tostring(first) .. "\n")
    end
    if summary.requests == 0 then
        io.write("wrk-result NOT OK: no responses at all\n")
    end
end

return M
