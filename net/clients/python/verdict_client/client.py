"""The blocking client: one connection, pipelined (responses come back in request order)."""

from __future__ import annotations

import collections
import socket
import ssl
import time
from typing import Iterable, List, Optional, Sequence

from . import codec
from .codec import (KIND_ERROR, KIND_EVALUATE, KIND_EVALUATE_BATCH, KIND_PING, KIND_RELOAD,
                    KIND_STATS, KIND_TOPOLOGY, RESPONSE_BIT, Decision)
from .errors import (ConnectionClosed, ProtocolError, ResponseTimeout, VerdictError,
                     error_for)

DEFAULT_TIMEOUT = 30.0
READ_CHUNK = 1 << 16


def tls_context(ca_file: Optional[str] = None, cert_file: Optional[str] = None,
                key_file: Optional[str] = None) -> ssl.SSLContext:
    """A client TLS context trusting `ca_file` (PEM; the system CAs when None), presenting
    `cert_file`/`key_file` for mutual TLS when given."""
    ctx = ssl.create_default_context(cafile=ca_file)
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file)
    elif key_file:
        raise ValueError("key_file needs cert_file")
    return ctx


def _decoder(kind: int):
    return {
        KIND_PING: lambda p: None,
        KIND_EVALUATE: codec.decode_decision,
        KIND_EVALUATE_BATCH: codec.decode_decision_batch,
        KIND_STATS: codec.decode_stats,
        KIND_TOPOLOGY: codec.decode_topology,
        KIND_RELOAD: codec.decode_reload,
    }[kind]


class FrameReader:
    """Splits a byte stream into (kind, id, payload) frames (shared by both clients)."""

    def __init__(self, len_max: int = codec.FRAME_LEN_MAX_DEFAULT):
        self.buf = bytearray()
        self.len_max = len_max

    def feed(self, data: bytes):
        self.buf += data

    def next_frame(self):
        buf = self.buf
        if len(buf) < 16:
            return None
        kind, n, id_ = codec.parse_header(buf, self.len_max)
        total = 16 + codec.pad16(n)
        if len(buf) < total:
            return None
        payload = bytes(buf[16:16 + n])
        del buf[:total]
        return kind, id_, payload


def check_response(kind: int, id_: int, payload: bytes, want_kind: int, want_id: int):
    """The decoded response to a request of `want_kind` numbered `want_id`; raises the typed
    VerdictError for an error frame, ProtocolError for anything unexpected."""
    if kind == KIND_ERROR:
        reply = codec.decode_error(payload)
        if id_ != want_id and id_ != 0:
            raise ProtocolError(f"error frame id {id_}, expected {want_id}: {reply.message}")
        raise error_for(reply.code, reply.message, id_)
    if kind != want_kind | RESPONSE_BIT:
        raise ProtocolError(f"expected response kind {want_kind | RESPONSE_BIT:#04x}, "
                            f"got {kind:#04x}")
    if id_ != want_id:
        raise ProtocolError(f"expected response id {want_id}, got {id_}")
    return _decoder(want_kind)(payload)


class Answers:
    """evaluate_many's answers, in input order (shared by every client). A server error
    answers its own event only: it takes the event's place, and `result` raises the first
    one unless return_exceptions; an error that closes the connection is raised at once."""

    def __init__(self):
        self.out: list = []
        self.first_error: Optional[VerdictError] = None

    def add(self, value) -> None:
        self.out.append(value)

    def add_error(self, e: VerdictError) -> None:
        if e.closes_connection:
            raise e
        self.out.append(e)
        if self.first_error is None:
            self.first_error = e

    def take(self, recv) -> None:
        """Adds recv()'s answer, or the VerdictError it raises."""
        try:
            self.add(recv())
        except VerdictError as e:
            self.add_error(e)

    def result(self, return_exceptions: bool) -> list:
        if self.first_error is not None and not return_exceptions:
            raise self.first_error
        return self.out


class Client:
    """A blocking verdict client.

    ``Client(host, port, tls=None, timeout=30.0)``; ``tls`` is an ``ssl.SSLContext`` (see
    :func:`tls_context`) or True for the system's default context. Calls: ``ping()``,
    ``evaluate(event)``, ``evaluate_batch(events)``, ``evaluate_many(events, depth=64)``,
    ``stats()``, ``topology()``, ``reload(rules_path)``, and pipelining with ``send(event)``
    / ``flush()`` / ``recv()``. Events are ``Event`` dataclasses or dicts in
    `verdict send`'s JSON form; they are checked client-side (``ValueError`` naming the
    field) unless ``validate=False``.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 7400, tls=None,
                 timeout: Optional[float] = DEFAULT_TIMEOUT, server_hostname: Optional[str] = None,
                 validate: bool = True, frame_len_max: int = codec.FRAME_LEN_MAX_DEFAULT):
        self.host, self.port = host, port
        self.validate = validate
        sock = socket.create_connection((host, port), timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls is True:
                tls = tls_context()
            if tls is not None:
                sock = tls.wrap_socket(sock, server_hostname=server_hostname or host)
        except BaseException:
            sock.close()
            raise
        self._sock: Optional[socket.socket] = sock
        self._reader = FrameReader(frame_len_max)
        self._out = bytearray()
        self._pending = collections.deque()  # (kind, id) in request order
        self._next_id = 1

    # -- context manager --

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connection; requests in flight get no answer."""
        self._pending.clear()
        self._out = bytearray()
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    @property
    def closed(self) -> bool:
        return self._sock is None

    @property
    def in_flight(self) -> int:
        """Requests sent or queued whose responses have not been received."""
        return len(self._pending)

    def settimeout(self, timeout: Optional[float]) -> None:
        self._live().settimeout(timeout)

    def _live(self) -> socket.socket:
        if self._sock is None:
            raise ConnectionClosed("the connection is closed")
        return self._sock

    # -- pipelining --

    def send_request(self, kind: int, payload: bytes = b"") -> int:
        """Queues a request frame of `kind`; returns its id (written by flush())."""
        self._live()
        id_ = self._next_id
        self._next_id += 1
        self._out += codec.encode_frame(kind, id_, payload)
        self._pending.append((kind, id_))
        return id_

    def _event_payload(self, event) -> bytes:
        wire = codec.as_wire_event(event)
        if self.validate:
            codec.validate_event(wire)
        return codec.encode_event(wire)

    def send(self, event) -> int:
        """Queues an evaluate request; returns its id. Answers come from recv(), in order."""
        return self.send_request(KIND_EVALUATE, self._event_payload(event))

    def flush(self) -> None:
        """Writes every queued request."""
        if self._out:
            sock = self._live()
            data, self._out = bytes(self._out), bytearray()
            try:
                sock.sendall(data)
            except (OSError, ssl.SSLError) as e:
                self.close()
                raise ConnectionClosed(f"sending failed: {e}") from e

    def _read_frame(self):
        sock = self._live()
        while True:
            try:
                frame = self._reader.next_frame()
            except ProtocolError:
                self.close()
                raise
            if frame is not None:
                return frame
            try:
                data = sock.recv(READ_CHUNK)
            except socket.timeout as e:
                self.close()  # a frame may be half read: the stream cannot be trusted
                raise ResponseTimeout(f"no response within {sock.gettimeout()} s") from e
            except (OSError, ssl.SSLError) as e:
                self.close()
                raise ConnectionClosed(f"receiving failed: {e}") from e
            if not data:
                self.close()
                raise ConnectionClosed("the server closed the connection")
            self._reader.feed(data)

    def recv(self):
        """The response to the oldest request in flight: a Decision for an evaluate (the
        decoded reply for other kinds). Raises the request's VerdictError for an error frame
        (the connection stays usable unless the code closes it)."""
        if not self._pending:
            raise ProtocolError("recv() with no request in flight")
        if self._out:
            self.flush()
        kind, id_, payload = self._read_frame()
        want_kind, want_id = self._pending.popleft()
        try:
            return check_response(kind, id_, payload, want_kind, want_id)
        except VerdictError as e:
            if e.closes_connection:
                self.close()
            raise
        except ProtocolError:
            self.close()
            raise

    def _call(self, kind: int, payload: bytes = b""):
        if self._pending:
            raise ProtocolError("a blocking call with pipelined requests in flight; "
                                "recv() them first")
        self.send_request(kind, payload)
        self.flush()
        return self.recv()

    # -- calls --

    def ping(self) -> float:
        """Round trip of a ping, in seconds."""
        start = time.perf_counter()
        self._call(KIND_PING)
        return time.perf_counter() - start

    def evaluate(self, event) -> Decision:
        return self._call(KIND_EVALUATE, self._event_payload(event))

    def evaluate_batch(self, events: Sequence) -> List[Decision]:
        """One evaluate-batch request (1..=batch_events_max events); decisions in order."""
        wires = codec.wire_events(events, self.validate)
        return self._call(KIND_EVALUATE_BATCH, codec.encode_batch(wires))

    def evaluate_many(self, events: Iterable, depth: int = 64,
                      return_exceptions: bool = False) -> list:
        """Evaluates `events` pipelined, at most `depth` in flight; decisions in input order.

        A server error answers its event only: with return_exceptions the VerdictError
        takes the event's place in the list, else the first one is raised once every answer
        has been read (the connection stays in step).
        """
        if depth < 1:
            raise ValueError("depth must be at least 1")
        if self._pending:
            raise ProtocolError("evaluate_many with pipelined requests in flight")
        payloads = [self._event_payload(e) for e in events]
        answers = Answers()
        refill = max(1, depth // 2)
        i = 0
        while i < len(payloads) or self._pending:
            while i < len(payloads) and len(self._pending) < depth:
                self.send_request(KIND_EVALUATE, payloads[i])
                i += 1
            self.flush()
            # Read until the window has room for `refill` more (or everything is read).
            target = 0 if i >= len(payloads) else depth - refill
            while len(self._pending) > target:
                answers.take(self.recv)
        return answers.result(return_exceptions)

    def stats(self) -> codec.StatsReply:
        return self._call(KIND_STATS)

    def topology(self) -> codec.TopologyReply:
        return self._call(KIND_TOPOLOGY)

    def reload(self, rules_path: str = "") -> codec.ReloadReply:
        """Wire reload (error 11 `forbidden` unless the server keeps `[admin] wire_reload`)."""
        return self._call(KIND_RELOAD, codec.encode_value({"rules_path": rules_path},
                                                          "ReloadRequest"))
