"""The asyncio client: one connection, many awaiters in flight, answered in request order."""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from typing import Iterable, List, Optional, Sequence

from . import codec
from .client import Answers, FrameReader, check_response, tls_context
from .codec import (KIND_EVALUATE, KIND_EVALUATE_BATCH, KIND_PING, KIND_RELOAD, KIND_STATS,
                    KIND_TOPOLOGY, Decision)
from .errors import ConnectionClosed, ProtocolError, ResponseTimeout, VerdictError

DEFAULT_TIMEOUT = 30.0
# Bytes buffered in the transport before a writer waits for them to drain.
WRITE_HIGH_WATER = 1 << 18


class AsyncClient:
    """An asyncio verdict client; create with ``await AsyncClient.connect(host, port,
    tls=None, timeout=30.0)`` (or ``async with await AsyncClient.connect(...)``).

    Every call writes its request at once and awaits its answer; calls from many tasks
    share the connection pipelined, and a reader task hands each response to the oldest
    waiter (the server answers in request order). ``timeout`` bounds each call's wait.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 timeout: Optional[float] = DEFAULT_TIMEOUT, validate: bool = True,
                 frame_len_max: int = codec.FRAME_LEN_MAX_DEFAULT):
        self._reader, self._writer = reader, writer
        self.timeout = timeout
        self.validate = validate
        self._frames = FrameReader(frame_len_max)
        self._pending = collections.deque()  # (kind, id, future, time submitted)
        self._progress = 0.0  # loop time of the last response
        self._next_id = 1
        self._closed: Optional[BaseException] = None
        self._drain_lock = asyncio.Lock()
        self._loop = asyncio.get_running_loop()
        self._wbuf: list = []  # frames written at the end of this loop iteration, together
        self._flush_handle = None
        self._task = asyncio.ensure_future(self._read_loop())
        self._watchdog = (asyncio.ensure_future(self._watch()) if timeout is not None
                          else None)

    @classmethod
    async def connect(cls, host: str = "127.0.0.1", port: int = 7400, tls=None,
                      timeout: Optional[float] = DEFAULT_TIMEOUT,
                      server_hostname: Optional[str] = None, **kw) -> "AsyncClient":
        if tls is True:
            tls = tls_context()
        coro = asyncio.open_connection(
            host, port, ssl=tls, server_hostname=(server_hostname or host) if tls else None)
        reader, writer = await asyncio.wait_for(coro, timeout)
        return cls(reader, writer, timeout=timeout, **kw)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def close(self) -> None:
        self._fail(ConnectionClosed("the connection is closed"))
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._task.cancel()
        try:
            await self._task
        except (asyncio.CancelledError, Exception):
            pass
        try:
            self._writer.close()
            await asyncio.wait_for(self._writer.wait_closed(), 5)
        except (OSError, ssl.SSLError, asyncio.TimeoutError, ConnectionError):
            pass

    def _fail(self, exc: BaseException) -> None:
        exc.__traceback__ = None  # see _read_loop
        if self._closed is None:
            self._closed = exc
        while self._pending:
            fut = self._pending.popleft()[2]
            if not fut.done():
                fut.set_exception(exc)

    async def _read_loop(self) -> None:
        try:
            while True:
                frame = self._frames.next_frame()
                if frame is None:
                    data = await self._reader.read(1 << 16)
                    if not data:
                        raise ConnectionClosed("the server closed the connection")
                    self._frames.feed(data)
                    continue
                kind, id_, payload = frame
                if not self._pending:
                    raise ProtocolError(f"a response (kind {kind:#04x}, id {id_}) to no request")
                want_kind, want_id, fut, _ = self._pending.popleft()
                self._progress = self._loop.time()
                try:
                    value = check_response(kind, id_, payload, want_kind, want_id)
                except VerdictError as e:
                    # Without the traceback: it holds this loop's frame, and a caller that
                    # clears the frames of a caught exception (unittest's assertRaises does)
                    # would clear this suspended coroutine and end the loop.
                    e.__traceback__ = None
                    if not fut.done():
                        fut.set_exception(e)
                    if e.closes_connection:
                        raise ConnectionClosed(f"the server closed the connection after {e}")
                    continue
                if not fut.done():
                    fut.set_result(value)
        except asyncio.CancelledError:
            raise
        except ProtocolError as e:
            self._fail(e)
        except (ConnectionClosed,) as e:
            self._fail(e)
        except (OSError, ssl.SSLError, ConnectionError) as e:
            self._fail(ConnectionClosed(f"receiving failed: {e}"))
        finally:
            if self._closed is not None:
                try:
                    self._writer.close()
                except Exception:
                    pass

    def submit(self, kind: int, payload: bytes = b"") -> "asyncio.Future":
        """Writes a request now and returns the future of its response (pipelining)."""
        if self._closed is not None:
            raise ConnectionClosed(str(self._closed))
        id_ = self._next_id
        self._next_id += 1
        fut = self._loop.create_future()
        self._pending.append((kind, id_, fut, self._loop.time()))
        self._wbuf.append(codec.encode_frame(kind, id_, payload))
        if self._flush_handle is None:
            # Every request submitted in this loop iteration goes out in one write.
            self._flush_handle = self._loop.call_soon(self._write_now)
        return fut

    def _write_now(self) -> None:
        self._flush_handle = None
        if self._wbuf and self._closed is None:
            data = b"".join(self._wbuf)
            self._wbuf.clear()
            self._writer.write(data)

    async def _drain(self) -> None:
        transport = self._writer.transport
        if transport.get_write_buffer_size() > WRITE_HIGH_WATER:
            async with self._drain_lock:
                await self._writer.drain()

    async def _watch(self) -> None:
        """Fails the connection when its oldest request has waited longer than timeout (the
        stream may be mid-frame, and later answers could not be matched)."""
        timeout = self.timeout
        while self._closed is None:
            now = self._loop.time()
            # The oldest request's wait, counted from its submission or the last answer
            # (so a deep pipeline that keeps being answered never times out).
            oldest = max(self._pending[0][3], self._progress) if self._pending else now
            if now - oldest > timeout:
                self._fail(ResponseTimeout(f"no response within {timeout} s"))
                self._task.cancel()
                try:
                    self._writer.close()
                except Exception:
                    pass
                return
            await asyncio.sleep(max(0.01, min(timeout, oldest + timeout - now + 0.001)))

    async def _wait(self, fut):
        return await fut

    async def call(self, kind: int, payload: bytes = b""):
        fut = self.submit(kind, payload)
        await self._drain()
        return await self._wait(fut)

    def _event_payload(self, event) -> bytes:
        wire = codec.as_wire_event(event)
        if self.validate:
            codec.validate_event(wire)
        return codec.encode_event(wire)

    def send(self, event) -> "asyncio.Future":
        """Writes an evaluate request now; returns the future of its Decision (pipelining
        without a coroutine per request: await the futures in any order)."""
        return self.submit(KIND_EVALUATE, self._event_payload(event))

    async def flush(self) -> None:
        """Writes the requests submitted so far, and waits for the transport's buffer to
        drain below its high-water mark."""
        self._write_now()
        await self._writer.drain()

    # -- calls --

    async def ping(self) -> float:
        start = time.perf_counter()
        await self.call(KIND_PING)
        return time.perf_counter() - start

    async def evaluate(self, event) -> Decision:
        return await self.call(KIND_EVALUATE, self._event_payload(event))

    async def evaluate_batch(self, events: Sequence) -> List[Decision]:
        wires = codec.wire_events(events, self.validate)
        return await self.call(KIND_EVALUATE_BATCH, codec.encode_batch(wires))

    async def evaluate_many(self, events: Iterable, depth: int = 64,
                            return_exceptions: bool = False) -> list:
        """Evaluates `events` with at most `depth` in flight; decisions in input order (see
        Client.evaluate_many for errors)."""
        if depth < 1:
            raise ValueError("depth must be at least 1")
        payloads = [self._event_payload(e) for e in events]
        window = collections.deque()
        answers = Answers()

        async def take():
            try:
                answers.add(await self._wait(window.popleft()))
            except VerdictError as e:
                answers.add_error(e)

        for p in payloads:
            if len(window) >= depth:
                await take()
            window.append(self.submit(KIND_EVALUATE, p))
            await self._drain()
        while window:
            await take()
        return answers.result(return_exceptions)

    async def stats(self) -> codec.StatsReply:
        return await self.call(KIND_STATS)

    async def topology(self) -> codec.TopologyReply:
        return await self.call(KIND_TOPOLOGY)

    async def reload(self, rules_path: str = "") -> codec.ReloadReply:
        return await self.call(KIND_RELOAD, codec.encode_value({"rules_path": rules_path},
                                                               "ReloadRequest"))
