#!/usr/bin/env python3
"""The Python client on the binary port against a plain HTTP/JSON loop on the HTTP port,
against one running `verdict serve` (started with --http-port):

    PYTHONPATH=net/clients/python taskset -c 1 $VERDICT_VENV_PYTHON \\
        bench/http/python_vs_requests.py --port BINARY_PORT --http-port HTTP_PORT [-n 5000]

Events/s, each mode on its own connection, N events each (fresh event ids every time):

- client sync: `Client.evaluate(event)`, one at a time (one round trip per event);
- client pipelined: `Client.evaluate_many(events, depth=64)`;
- requests: a `requests.Session()` loop, one `POST /v1/decide` (json=event) at a time,
  status checked and the decision parsed (`r.json()`), as a Python service would;
- http.client (for reference, not asked for): the same loop on the standard library's
  `http.client.HTTPConnection`, to tell the HTTP exchange from the `requests` layer above it.

Every mode checks every answer (the decision's event id is the event's). The modes alternate
for --rounds rounds (each round in a rotated order) after a warm-up; the table has each
round's numbers and the medians, then the ratios of the medians.
"""

import argparse
import http.client
import json
import statistics
import sys
import time

import requests

from verdict_client import Client


def events(n, tag):
    """The event shape of net/clients/python/bench.py (a realistic decide request)."""
    return [{"event_id": f"py-{tag}-{i}", "timestamp_ms": 1700000000000 + i,
             "account_id": f"acct-py-{i % 1000}", "merchant_id": f"m-{i % 50}",
             "amount_minor": 1000 + i % 5000, "currency": "USD", "country": "US",
             "channel": "web", "device_id": f"d-{i % 700}", "ip": "198.51.100.7", "mcc": 5411,
             "features": [0.5, 1.5], "attributes": {"account_age_days": 400}}
            for i in range(n)]


def check(evs, ids):
    if len(ids) != len(evs) or any(e["event_id"] != i for e, i in zip(evs, ids)):
        sys.exit(f"answers do not match their events ({len(ids)} for {len(evs)})")


class Modes:
    def __init__(self, host, port, http_port):
        self.client = Client(host, port)
        self.session = requests.Session()
        self.url = f"http://{host}:{http_port}/v1/decide"
        self.conn = http.client.HTTPConnection(host, http_port)

    def client_sync(self, evs):
        c = self.client
        check(evs, [c.evaluate(e).event_id for e in evs])

    def client_pipelined(self, evs):
        check(evs, [d.event_id for d in self.client.evaluate_many(evs, depth=64)])

    def requests(self, evs):
        post, url, ids = self.session.post, self.url, []
        for e in evs:
            r = post(url, json=e)
            if r.status_code != 200:
                sys.exit(f"requests: HTTP {r.status_code}: {r.text[:300]}")
            ids.append(r.json()["event_id"])
        check(evs, ids)

    def http_client(self, evs):
        conn, ids = self.conn, []
        headers = {"Content-Type": "application/json"}
        for e in evs:
            conn.request("POST", "/v1/decide", json.dumps(e), headers)
            r = conn.getresponse()
            body = r.read()
            if r.status != 200:
                sys.exit(f"http.client: HTTP {r.status}: {body[:300]!r}")
            ids.append(json.loads(body)["event_id"])
        check(evs, ids)


MODES = [
    ("client sync (evaluate, one at a time)", "client_sync"),
    ("client pipelined (evaluate_many, depth 64)", "client_pipelined"),
    ("requests.Session POST /v1/decide, one at a time", "requests"),
    ("http.client POST /v1/decide, one at a time (ref.)", "http_client"),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True, help="the engine's binary port")
    ap.add_argument("--http-port", type=int, required=True, help="its HTTP port")
    ap.add_argument("-n", type=int, default=5000, help="events per mode per round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    m = Modes(args.host, args.port, args.http_port)
    for _, name in MODES:  # warm-up: connections open, code paths and caches warm
        getattr(m, name)(events(200, f"warm-{name}"))
    rates = {name: [] for _, name in MODES}
    for r in range(args.rounds):
        order = MODES[r % len(MODES):] + MODES[:r % len(MODES)]
        for _, name in order:
            evs = events(args.n, f"{name}-{r}")
            t = time.perf_counter()
            getattr(m, name)(evs)
            rates[name].append(args.n / (time.perf_counter() - t))

    med = {name: statistics.median(v) for name, v in rates.items()}
    print(f"{'mode':<52} {'rounds (events/s)':<28} {'median events/s':>15} {'us/event':>9}")
    for label, name in MODES:
        each = " ".join(f"{x:,.0f}" for x in rates[name])
        print(f"{label:<52} {each:<28} {med[name]:>15,.0f} {1e6 / med[name]:>9.1f}")
    sync, pipe, req, hc = (med[k] for k in ("client_sync", "client_pipelined", "requests",
                                            "http_client"))
    print(f"ratios of the medians ({args.rounds} rounds x {args.n} events): "
          f"client sync / requests {sync / req:.2f}; client pipelined / requests "
          f"{pipe / req:.2f}; client pipelined / client sync {pipe / sync:.2f}; "
          f"http.client / requests {hc / req:.2f}")
    print(f"python-result sync={sync:.0f} pipelined={pipe:.0f} requests={req:.0f} "
          f"http_client={hc:.0f}")


if __name__ == "__main__":
    main()
