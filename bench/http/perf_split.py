#!/usr/bin/env python3
"""Where an engine's CPU goes, from `perf script` output of a `perf record --call-graph
dwarf` of the engine process (bench/http/profile.sh makes them):

    perf script -i perf.data -F tid,period,ip,sym,dso --no-inline | perf_split.py [--top N]

Each sample is put in one group by its call stack (inlined functions count as their
caller, so the groups go by the functions that are left as symbols in a release build):

1. kernel: the sample is in the kernel (syscalls, io_uring, loopback TCP, softirqs, page
   faults, scheduler); a sample in a wasm model's JIT code (which perf cannot unwind) counts
   as the decision;
2. otherwise, by the nearest (leafward first) of these callers: the request pipeline
   (`request::answer_frames`: the same work as on the binary port, split into the decision
   itself -- decide/rules/velocity/models -- and the rest: the frame's check, the response
   frame's encoding, stats), the HTTP request side (`HttpConnection::parse`), the HTTP response
   side (`HttpConnection::respond`), the socket/ring glue in user space (glommio's
   read/write/reactor, libc's syscall wrappers);
3. inside the HTTP sides, by the nearest function of a known part: httparse; serde_json's
   event parse (`event_from_json`, serde/serde_json's deserializers, the `Event`'s drop); the
   rkyv encode of the request frame (`FrameEncoder::push`, `RecvBuffer::append_with`); the
   rkyv access + deserialize of the response (and the owned `Decision`'s drop); building the
   serde_json `Value` of the decision (`decision_to_json`, its BTreeMap) and dropping it;
   serde_json's write of that `Value`; the response head (`write_head`, `core::fmt`).

Prints the groups with their share of all samples and each group's top leaf symbols (self
time).
"""

import argparse
import collections
import re
import sys

FRAME = re.compile(r"^\s*([0-9a-f]+) (.*) \((.*)\)$")


def samples(lines):
    stack = None
    for line in lines:
        if not line.strip():
            if stack:
                yield stack
            stack = None
            continue
        if not line.startswith("\t"):  # a sample's header (its tid may be space-padded)
            stack = []
            continue
        m = FRAME.match(line.rstrip("\n"))
        if m and stack is not None:
            stack.append((m.group(2), m.group(3)))
    if stack:
        yield stack


def any_of(*needles):
    return lambda sym: any(n in sym for n in needles)


# Regions: the nearest caller that names one (leafward first) decides.
REGIONS = [
    ("pipeline", any_of("verdict_engine::request::answer_frames")),
    ("request", any_of("verdict_engine::http_api::HttpConnection::parse",
                       "verdict_engine::http_api::route")),
    ("response", any_of("verdict_engine::http_api::HttpConnection::respond",
                        "verdict_engine::http_api::frame_to_json")),
    ("io", any_of("glommio::net::", "glommio::sys::", "glommio::reactor::",
                  "verdict_engine::transport::", "verdict_engine::connection::read_some",
                  "verdict_engine::connection::linger_close", "__send", "__libc_recv",
                  "__libc_send", "__libc_read", "__libc_write", "io_uring", "syscall")),
]

# Parts inside a region: the nearest function matching one (leafward first).
PARTS = {
    "pipeline": [
        ("decide", any_of("verdict_engine::decide::", "verdict_engine::aggregator::",
                          "verdict_rules::", "verdict_models::", "wasm[", "wasmtime",
                          "verdict_engine::models")),
    ],
    "request": [
        ("httparse", any_of("httparse::", "verdict_engine::http::parse_head")),
        ("serde_json event parse", any_of("verdict_net::json::event_from_json",
                                          "serde_json::de", "serde_json::read",
                                          "serde_json::error", "serde::private::de",
                                          "serde_core::de", "verdict_net::json::_::",
                                          "drop_in_place<verdict_net::schema::Event>")),
        ("rkyv encode (request frame)", any_of("verdict_net::frame::FrameEncoder",
                                               "verdict_net::frame::RecvBuffer::append_with",
                                               "rkyv::", "verdict_engine::http_api::push_within")),
    ],
    "response": [
        ("response head (write_head, fmt)", any_of("verdict_engine::http_api::write_head",
                                                   "core::fmt::")),
        ("serde_json write", any_of("serde_json::ser", "serde_json::value::ser",
                                    "verdict_engine::http_api::write_json", "zmij", "itoa",
                                    "serde_core::ser")),
        ("decision -> serde_json::Value (build + drop)",
         any_of("verdict_net::json::decision_to_json", "btree", "drop_in_place<serde_json",
                "drop_in_place<[serde_json", "serde_json::value::to_value")),
        ("rkyv access + deserialize (response)",
         any_of("rkyv::", "bytecheck", "verdict_net::schema::ArchivedDecision",
                "drop_in_place<verdict_net::schema::Decision>")),
    ],
}

LABELS = {
    "kernel": "kernel: syscalls, io_uring, loopback TCP, scheduler",
    "io": "socket/ring glue in user space (glommio, libc wrappers)",
    "pipeline": "pipeline: frame check, response frame encode, stats",
    "pipeline/decide": "pipeline: decide (rules, velocity, models)",
    "request": "HTTP request: other (route, buffers)",
    "request/httparse": "HTTP request: httparse",
    "request/serde_json event parse": "HTTP request: serde_json event parse",
    "request/rkyv encode (request frame)": "HTTP request: rkyv encode (request frame)",
    "response": "HTTP response: other (respond, buffers)",
    "response/rkyv access + deserialize (response)": "HTTP response: rkyv access + deserialize",
    "response/decision -> serde_json::Value (build + drop)":
        "HTTP response: decision -> serde_json::Value (build + drop)",
    "response/serde_json write": "HTTP response: serde_json write",
    "response/response head (write_head, fmt)": "HTTP response: head (write_head, fmt)",
    "other": "other (executor, connection loop, allocator outside the above)",
}
ORDER = list(LABELS)


def classify(stack):
    if stack[0][1] == "[kernel.kallsyms]":
        return "kernel"
    if stack[0][0].startswith("wasm["):  # JIT code: perf cannot unwind through it
        return "pipeline/decide"
    for i, (sym, _) in enumerate(stack):
        for region, match in REGIONS:
            if match(sym):
                for frame_sym, _ in stack[:i + 1]:
                    for part, part_match in PARTS.get(region, []):
                        if part_match(frame_sym):
                            return f"{region}/{part}"
                return region
    return "other"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--top", type=int, default=4, help="leaf symbols shown per group")
    ap.add_argument("--title", default="")
    args = ap.parse_args()
    count = collections.Counter()
    leaves = collections.defaultdict(collections.Counter)
    total = 0
    for stack in samples(sys.stdin):
        group = classify(stack)
        count[group] += 1
        leaves[group][stack[0][0]] += 1
        total += 1
    if total == 0:
        sys.exit("no samples")
    print(f"{args.title}{total} samples")
    groups = sorted(count, key=lambda g: ORDER.index(g) if g in ORDER else len(ORDER))
    for g in groups:
        top = ", ".join(f"{s[:70]} {100 * n / total:.1f}" for s, n in leaves[g].most_common(args.top))
        print(f"  {100 * count[g] / total:5.1f}%  {LABELS.get(g, g):<62} top: {top}")
    http = sum(n for g, n in count.items() if g.startswith(("request", "response")))
    print(f"  HTTP translation in all (request + response sides): {100 * http / total:.1f}%; "
          f"pipeline in all: {100 * (count['pipeline'] + count['pipeline/decide']) / total:.1f}%")
    print(f"split-result " + " ".join(f"{g.replace(' ', '_')}={100 * count[g] / total:.1f}"
                                      for g in groups))


if __name__ == "__main__":
    main()
