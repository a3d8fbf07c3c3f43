#!/usr/bin/env python3
"""A quick throughput measurement of the Python client against a running `verdict serve`.

    PYTHONPATH=net/clients/python python3 net/clients/python/bench.py --port 7400 [-n 10000]

Prints events/s for: the sync client one at a time, the sync client pipelined
(evaluate_many, depth 64), the asyncio client (evaluate_many, depth 64, and gather), the
shard-aware client, and the codec alone (encode an event + decode a decision).
"""

import argparse
import asyncio
import time

from verdict_client import AsyncClient, Client, ShardedClient, codec


def events(n, tag):
    return [{"event_id": f"bench-{tag}-{i}", "timestamp_ms": 1700000000000 + i,
             "account_id": f"acct-bench-{i % 1000}", "merchant_id": f"m-{i % 50}",
             "amount_minor": 1000 + i % 5000, "currency": "USD", "country": "US",
             "channel": "web", "device_id": f"d-{i % 700}", "ip": "198.51.100.7", "mcc": 5411,
             "features": [0.5, 1.5], "attributes": {"account_age_days": 400}}
            for i in range(n)]


def rate(label, n, seconds):
    print(f"{label:<44} {n:>6} events  {seconds:7.3f} s  {n / seconds:>9,.0f} events/s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=7400)
    ap.add_argument("-n", type=int, default=10000)
    args = ap.parse_args()
    n = args.n

    with Client(args.host, args.port) as c:
        c.ping()
        evs = events(n, "one")
        t = time.perf_counter()
        for e in evs:
            c.evaluate(e)
        rate("sync, one at a time (evaluate)", n, time.perf_counter() - t)

        evs = events(n, "pipe")
        t = time.perf_counter()
        got = c.evaluate_many(evs, depth=64)
        rate("sync, pipelined (evaluate_many depth 64)", n, time.perf_counter() - t)
        assert len(got) == n

        evs = events(n, "batch")
        t = time.perf_counter()
        for i in range(0, n, 256):
            c.evaluate_batch(evs[i:i + 256])
        rate("sync, evaluate_batch of 256", n, time.perf_counter() - t)

    async def run_async():
        async with await AsyncClient.connect(args.host, args.port) as ac:
            await ac.ping()
            evs = events(n, "amany")
            t = time.perf_counter()
            got = await ac.evaluate_many(evs, depth=64)
            rate("asyncio, pipelined (evaluate_many depth 64)", n, time.perf_counter() - t)
            assert len(got) == n
            evs = events(n, "agather")
            t = time.perf_counter()
            got = await asyncio.gather(*(ac.evaluate(e) for e in evs))
            rate("asyncio, gather of n evaluate()", n, time.perf_counter() - t)
    asyncio.run(run_async())

    with ShardedClient(args.host, args.port) as sc:
        evs = events(n, "sharded")
        t = time.perf_counter()
        sc.evaluate_many(evs)
        rate("sharded sync, evaluate_many", n, time.perf_counter() - t)

    evs = [codec.as_wire_event(e) for e in events(n, "codec")]
    t = time.perf_counter()
    for e in evs:
        codec.validate_event(e)
        codec.encode_event(e)
    rate("codec: validate + encode an event", n, time.perf_counter() - t)
    with Client(args.host, args.port) as c:
        payload = codec.encode_frame(0x02, 1, codec.encode_event(evs[0]))
        del payload
        d = c.evaluate(evs[0])
    blob = codec.encode_value(d._wire(), "Decision")
    t = time.perf_counter()
    for _ in range(n):
        codec.decode_decision(blob)
    rate("codec: decode (validate) a decision", n, time.perf_counter() - t)


if __name__ == "__main__":
    main()
