"""Client behaviour against a fake server on loopback (no verdict binary needed): timeouts,
out-of-order ids, garbage, a refused connection's error frame with id 0."""

import asyncio
import socket
import threading
import unittest

from verdict_client import (AsyncClient, Client, ConnectionClosed, Overloaded, ProtocolError,
                            codec)
from verdict_client.errors import ResponseTimeout


class FakeServer:
    """Accepts one connection; `script(conn)` does what it likes with it."""

    def __init__(self, script):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.sock.settimeout(10)
        self.port = self.sock.getsockname()[1]
        self.done = threading.Event()

        def serve():
            try:
                conn, _ = self.sock.accept()
                with conn:
                    conn.settimeout(10)
                    script(conn)
                    self.done.wait(10)
            except OSError:
                pass
        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()

    def close(self):
        self.done.set()
        self.sock.close()
        self.thread.join(10)


def read_frame(conn):
    header = b""
    while len(header) < 16:
        header += conn.recv(16 - len(header))
    n = int.from_bytes(header[4:8], "little")
    rest = b""
    while len(rest) < codec.pad16(n):
        rest += conn.recv(codec.pad16(n) - len(rest))
    return header[3], int.from_bytes(header[8:16], "little")


class Offline(unittest.TestCase):
    def fake(self, script):
        s = FakeServer(script)
        self.addCleanup(s.close)
        return s

    def test_no_answer_is_a_timeout_sync(self):
        s = self.fake(lambda conn: read_frame(conn))
        c = Client("127.0.0.1", s.port, timeout=0.3)
        self.addCleanup(c.close)
        with self.assertRaises(ResponseTimeout):
            c.ping()
        self.assertTrue(c.closed)
        with self.assertRaises(ConnectionClosed):
            c.ping()

    def test_no_answer_is_a_timeout_async(self):
        s = self.fake(lambda conn: read_frame(conn))

        async def main():
            c = await AsyncClient.connect("127.0.0.1", s.port, timeout=0.3)
            with self.assertRaises(TimeoutError):
                await c.ping()
            with self.assertRaises(ConnectionClosed):
                await c.ping()
            await c.close()
        asyncio.run(asyncio.wait_for(main(), 20))

    def test_a_wrong_id_is_a_protocol_error(self):
        def script(conn):
            kind, id_ = read_frame(conn)
            conn.sendall(codec.encode_frame(kind | 0x80, id_ + 1))
        s = self.fake(script)
        c = Client("127.0.0.1", s.port, timeout=5)
        self.addCleanup(c.close)
        with self.assertRaises(ProtocolError):
            c.ping()
        self.assertTrue(c.closed)

    def test_garbage_is_a_protocol_error_async(self):
        def script(conn):
            read_frame(conn)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        s = self.fake(script)

        async def main():
            c = await AsyncClient.connect("127.0.0.1", s.port, timeout=5)
            with self.assertRaises(ProtocolError):
                await c.ping()
            await c.close()
        asyncio.run(asyncio.wait_for(main(), 20))

    def test_a_refused_connection_gets_the_typed_error(self):
        # What a shard at connections_per_shard_max sends: error 8 with id 0, then a close.
        def script(conn):
            reply = codec.encode_value({"code": 8, "message": "too many connections"},
                                       "ErrorReply")
            conn.sendall(codec.encode_frame(0xFF, 0, reply))
        s = self.fake(script)
        c = Client("127.0.0.1", s.port, timeout=5)
        self.addCleanup(c.close)
        with self.assertRaises(Overloaded) as cm:
            c.ping()
        self.assertEqual((cm.exception.code, cm.exception.name, cm.exception.id),
                         (8, "overloaded", 0))

    def test_a_close_mid_frame_is_connection_closed(self):
        def script(conn):
            kind, id_ = read_frame(conn)
            conn.sendall(codec.encode_frame(0x82, id_, b"\0" * 64)[:40])
            conn.shutdown(socket.SHUT_WR)
        s = self.fake(script)
        c = Client("127.0.0.1", s.port, timeout=5)
        self.addCleanup(c.close)
        with self.assertRaises(ConnectionClosed):
            c.evaluate({"event_id": "e", "timestamp_ms": 0, "account_id": "a",
                        "merchant_id": "", "amount_minor": 0, "currency": "USD",
                        "country": "US", "channel": "", "device_id": "", "mcc": 0})


if __name__ == "__main__":
    unittest.main()
