"""Live tests against a real `verdict serve` (binary from $VERDICT_BIN; skipped without it)."""

import asyncio
import json
import socket
import subprocess
import unittest
import uuid

from verdict_client import (AsyncClient, AsyncShardedClient, BadField, Client,
                            ConnectionClosed, Decision, ShardedClient, VerdictError, codec,
                            tls_context)
from verdict_client.client import FrameReader
from verdict_client.routing import fnv1a64

from . import server as srv

TIMEOUT = 20.0


def event(i, account=None, **over):
    e = {"event_id": f"py-{i}", "timestamp_ms": 1700000000000 + i,
         "account_id": account or f"acct-py-{i % 37}", "merchant_id": f"m-{i % 5}",
         "amount_minor": 1299 + i % 100, "currency": "USD", "country": "US", "channel": "web",
         "device_id": f"d-{i % 11}", "ip": "203.0.113.9", "mcc": 5411,
         "features": [0.5, float(i % 7)],
         "attributes": {"account_age_days": 400, "email_verified": True}}
    e.update(over)
    return e


def run_async(coro, timeout=60):
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


def owner(topology, account_id):
    """routing.rs, computed here independently of the package's routing module."""
    h = 0xCBF29CE484222325
    for b in account_id.encode():
        h = ((h ^ b) * 0x100000001B3) % (1 << 64)
    return topology.partition_shards[h % topology.partitions]


def raw_call(port, kind, payload=b"", id_=9):
    """One request on a raw socket; the response frame's (kind, id, payload)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        s.sendall(codec.encode_frame(kind, id_, payload))
        reader = FrameReader()
        while True:
            frame = reader.next_frame()
            if frame is not None:
                return frame
            data = s.recv(65536)
            if not data:
                raise AssertionError("closed")
            reader.feed(data)


@unittest.skipUnless(srv.verdict_bin(), srv.SKIP_REASON)
class Live(unittest.TestCase):
    server = None

    @classmethod
    def setUpClass(cls):
        cls.server = srv.Server()

    @classmethod
    def tearDownClass(cls):
        if cls.server is not None:
            cls.server.stop()

    def client(self, **kw):
        c = Client("127.0.0.1", self.server.port, timeout=TIMEOUT, **kw)
        self.addCleanup(c.close)
        return c

    def test_ping(self):
        with Client("127.0.0.1", self.server.port, timeout=TIMEOUT) as c:
            rtt = c.ping()
            self.assertGreater(rtt, 0)
            self.assertLess(rtt, TIMEOUT)
        self.assertTrue(c.closed)

    def test_evaluate_matches_verdict_send(self):
        # The model reads velocity (count(account, 1h), ...), so each side gets the event on
        # fresh keys: `verdict send` on account A / device A, this client on account B /
        # device B, with B owned by the same shard as A; everything else is the same event.
        c = self.client()
        topo = c.topology()
        tag = uuid.uuid4().hex[:8]
        acct_a = f"acct-cmp-{tag}"
        acct_b = next(f"acct-cmp-{tag}-{n}" for n in range(1000)
                      if owner(topo, f"acct-cmp-{tag}-{n}") == owner(topo, acct_a))
        e = event(1, account=acct_a, event_id=f"cmp-{tag}", device_id=f"d-cmp-{tag}")
        out = subprocess.run(
            [srv.verdict_bin(), "send", "--addr", self.server.addr],
            input=(json.dumps(e) + "\n").encode(), capture_output=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr.decode(errors="replace"))
        want = json.loads(out.stdout.decode().strip().splitlines()[0])
        got = c.evaluate(dict(e, account_id=acct_b, device_id=f"d-cmp-{tag}-b"))
        self.assertIsInstance(got, Decision)
        got_json = got.to_json()
        self.assertEqual(set(got_json), set(want))
        for k in want:
            if k != "server_ns":
                self.assertEqual(got_json[k], want[k], k)
        self.assertEqual(got_json["models"].keys(), {"fraud_lr"})
        self.assertIsInstance(got.server_ns, int)
        # The Event dataclass and a dict encode the same request.
        self.assertEqual(codec.encode_event(codec.Event.from_json(e)),
                         codec.encode_event(codec.as_wire_event(e)))

    def test_evaluate_batch(self):
        events = [event(i, event_id=f"batch-{i}") for i in range(20)]
        decisions = self.client().evaluate_batch(events)
        self.assertEqual([d.event_id for d in decisions], [e["event_id"] for e in events])
        for d in decisions:
            self.assertIn(d.action, ("allow", "review", "deny"))
            self.assertGreaterEqual(d.epoch, 1)

    def test_500_pipelined_sync(self):
        c = self.client()
        events = [event(i, event_id=f"pipe-{i}") for i in range(500)]
        # All 500 in flight at once (past the server's pipeline_depth_max of 256: the rest
        # wait in the socket), then the answers, in order.
        ids = [c.send(e) for e in events]
        self.assertEqual(ids, list(range(1, 501)))
        c.flush()
        got = [c.recv() for _ in events]
        self.assertEqual([d.event_id for d in got], [e["event_id"] for e in events])
        self.assertEqual(c.in_flight, 0)
        # And through evaluate_many's sliding window.
        events = [event(i, event_id=f"many-{i}") for i in range(500)]
        got = c.evaluate_many(events, depth=64)
        self.assertEqual([d.event_id for d in got], [e["event_id"] for e in events])
        c.ping()  # still in step

    def test_500_pipelined_async(self):
        async def main():
            async with await AsyncClient.connect("127.0.0.1", self.server.port,
                                                 timeout=TIMEOUT) as c:
                events = [event(i, event_id=f"apipe-{i}") for i in range(500)]
                got = await asyncio.gather(*(c.evaluate(e) for e in events))
                self.assertEqual([d.event_id for d in got], [e["event_id"] for e in events])
                self.assertEqual(c.in_flight, 0)
                events = [event(i, event_id=f"amany-{i}") for i in range(500)]
                got = await c.evaluate_many(events, depth=64)
                self.assertEqual([d.event_id for d in got], [e["event_id"] for e in events])
                futures = [c.send(e) for e in events[:100]]
                await c.flush()
                got = [await f for f in reversed(futures)][::-1]
                self.assertEqual([d.event_id for d in got], [e["event_id"] for e in events[:100]])
                batch = await c.evaluate_batch(events[:10])
                self.assertEqual([d.event_id for d in batch],
                                 [e["event_id"] for e in events[:10]])
                await c.ping()
                with self.assertRaises(BadField):
                    c.validate = False
                    await c.evaluate(event(1, currency="usd"))
                await c.ping()
        run_async(main())

    def forwarded(self):
        """Events forwarded to their owner by another shard, so far (all shards)."""
        return self.client().stats().total["mesh_events_decided"]

    def test_sharded_client_sends_each_event_to_its_owner(self):
        before = self.forwarded()
        with ShardedClient("127.0.0.1", self.server.port, timeout=TIMEOUT) as sc:
            self.assertEqual([c.port for c in sc.clients], self.server.shard_ports)
            topo = sc.topology
            self.assertEqual(topo.shard_ports, self.server.shard_ports)
            self.assertEqual(topo.shard_count, self.server.shards)
            events = [event(i, account=f"acct-shard-{i}", event_id=f"sh-{i}")
                      for i in range(300)]
            got = sc.evaluate_many(events)
            self.assertEqual([d.event_id for d in got], [e["event_id"] for e in events])
            owners = [owner(topo, e["account_id"]) for e in events]
            self.assertEqual([d.shard for d in got], owners)
            self.assertEqual([sc.owner(e) for e in events], owners)
            if self.server.shards > 1:
                self.assertGreater(len(set(owners)), 1)
            batch = sc.evaluate_batch(events[:50])
            self.assertEqual([d.event_id for d in batch], [e["event_id"] for e in events[:50]])
            self.assertEqual([d.shard for d in batch], owners[:50])
            one = sc.evaluate(events[0])
            self.assertEqual(one.shard, owners[0])
        # No event needed forwarding: each went straight to its owner's port.
        self.assertEqual(self.forwarded(), before)
        if self.server.shards > 1:
            # Whereas the wrong shard's port forwards (the check can see a miss).
            wrong = next(e for e in events if owner(topo, e["account_id"]) != 0)
            with Client("127.0.0.1", self.server.shard_ports[0], timeout=TIMEOUT) as c0:
                self.assertEqual(c0.evaluate(wrong).shard, owner(topo, wrong["account_id"]))
            self.assertEqual(self.forwarded(), before + 1)

        async def main():
            async with await AsyncShardedClient.connect("127.0.0.1", self.server.port,
                                                        timeout=TIMEOUT) as ac:
                events = [event(i, account=f"acct-ash-{i}", event_id=f"ash-{i}")
                          for i in range(200)]
                got = await ac.evaluate_many(events)
                self.assertEqual([d.event_id for d in got], [e["event_id"] for e in events])
                self.assertEqual([d.shard for d in got],
                                 [owner(ac.topology, e["account_id"]) for e in events])
        before = self.forwarded()
        run_async(main())
        self.assertEqual(self.forwarded(), before)

    def test_invalid_event_gets_the_typed_error(self):
        c = self.client(validate=False)
        with self.assertRaises(BadField) as cm:
            c.evaluate(event(1, currency="usd"))
        err = cm.exception
        self.assertIsInstance(err, VerdictError)
        self.assertEqual((err.code, err.name), (6, "bad_field"))
        self.assertIn("currency", err.message)
        c.ping()  # the connection goes on
        with self.assertRaises(BadField) as cm:
            c.evaluate_batch([event(1), event(2, country="usa")])
        self.assertIn("event 1", cm.exception.message)
        self.assertIn("country", cm.exception.message)
        # Pipelined: the error answers its own event only.
        got = c.evaluate_many([event(1), event(2, currency="usd"), event(3)],
                              return_exceptions=True)
        self.assertIsInstance(got[0], Decision)
        self.assertIsInstance(got[1], BadField)
        self.assertIsInstance(got[2], Decision)
        # With client-side checks (the default) nothing is sent: ValueError names the field.
        checked = self.client()
        with self.assertRaisesRegex(ValueError, "field `currency`"):
            checked.evaluate(event(1, currency="usd"))
        checked.ping()

    def test_stats_and_topology(self):
        c = self.client()
        c.evaluate(event(1, event_id="stats-1"))
        topo = c.topology()
        self.assertEqual(topo.routing, "fnv1a64-partitions")
        self.assertEqual(topo.port, self.server.port)
        self.assertEqual(len(topo.partition_shards), topo.partitions)
        stats = c.stats()
        self.assertEqual(len(stats.shards), self.server.shards)
        self.assertGreaterEqual(stats.total["events"], 1)
        self.assertEqual(stats.total["shard"], 0xFFFFFFFF)

    def test_server_payloads_reencode_byte_for_byte(self):
        """What the server sends (topology, stats, decision) decodes and re-encodes to the
        same bytes, like the golden vectors (there are no topology/stats-request vectors)."""
        for kind, payload, ty in [
                (codec.KIND_TOPOLOGY, b"", "TopologyReply"),
                (codec.KIND_STATS, b"", "StatsReply"),
                (codec.KIND_EVALUATE, codec.encode_event(codec.as_wire_event(event(5))),
                 "Decision"),
                (codec.KIND_EVALUATE_BATCH, codec.encode_batch([event(6), event(7)]),
                 "DecisionBatch")]:
            with self.subTest(ty=ty):
                rkind, rid, rpayload = raw_call(self.server.port, kind, payload)
                self.assertEqual((rkind, rid), (kind | 0x80, 9))
                wire = codec.decode_value(rpayload, ty)
                self.assertEqual(codec.encode_value(wire, ty), rpayload)


@unittest.skipUnless(srv.verdict_bin(), srv.SKIP_REASON)
class LiveShutdown(unittest.TestCase):
    def test_a_stopped_server_raises_connection_closed(self):
        server = srv.Server()
        self.addCleanup(server.stop)
        c = Client("127.0.0.1", server.port, timeout=TIMEOUT)
        self.addCleanup(c.close)
        c.ping()

        async def connect():
            return await AsyncClient.connect("127.0.0.1", server.port, timeout=TIMEOUT)

        loop = asyncio.new_event_loop()
        self.addCleanup(loop.close)
        ac = loop.run_until_complete(connect())
        server.stop()  # SIGTERM: drains, then closes the quiet connections
        with self.assertRaises(ConnectionClosed):
            c.ping()
        self.assertTrue(c.closed)
        with self.assertRaises(ConnectionClosed):
            c.ping()

        async def after():
            with self.assertRaises(ConnectionClosed):
                await ac.ping()
            await ac.close()
        loop.run_until_complete(asyncio.wait_for(after(), 60))


@unittest.skipUnless(srv.verdict_bin(), srv.SKIP_REASON)
class LiveTls(unittest.TestCase):
    def setUp(self):
        import tempfile
        from pathlib import Path
        self.pki_dir = Path(tempfile.mkdtemp(prefix="verdict-py-pki-"))
        self.addCleanup(__import__("shutil").rmtree, self.pki_dir, True)
        srv.make_pki(self.pki_dir)
        self.server = srv.Server(tls_dir=self.pki_dir)
        self.addCleanup(self.server.stop)
        self.ca = str(self.pki_dir / "ca.pem")

    def test_evaluate_over_tls(self):
        ctx = tls_context(self.ca)
        with Client("127.0.0.1", self.server.port, tls=ctx, timeout=TIMEOUT) as c:
            c.ping()
            d = c.evaluate(event(1, event_id="tls-1"))
            self.assertEqual(d.event_id, "tls-1")
            self.assertEqual(c._sock.version()[:5], "TLSv1")
            got = c.evaluate_many([event(i, event_id=f"tls-{i}") for i in range(100)])
            self.assertEqual([x.event_id for x in got], [f"tls-{i}" for i in range(100)])
        with ShardedClient("127.0.0.1", self.server.port, tls=ctx, timeout=TIMEOUT) as sc:
            events = [event(i, account=f"acct-tls-{i}") for i in range(50)]
            got = sc.evaluate_many(events)
            self.assertEqual([d.shard for d in got],
                             [owner(sc.topology, e["account_id"]) for e in events])

        async def main():
            async with await AsyncClient.connect("127.0.0.1", self.server.port, tls=ctx,
                                                 timeout=TIMEOUT) as ac:
                got = await asyncio.gather(*(ac.evaluate(event(i, event_id=f"atls-{i}"))
                                             for i in range(100)))
                self.assertEqual([d.event_id for d in got], [f"atls-{i}" for i in range(100)])
        run_async(main())

    def test_an_untrusted_certificate_is_refused(self):
        import ssl
        ctx = ssl.create_default_context()  # system CAs only: the test CA is unknown
        with self.assertRaises(ssl.SSLError):
            Client("127.0.0.1", self.server.port, tls=ctx, timeout=TIMEOUT)


if __name__ == "__main__":
    unittest.main()
