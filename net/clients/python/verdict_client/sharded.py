"""Shard-aware clients: ask for the topology, keep one connection per shard (the shard
ports of the topology reply, on the host first connected to), send each event to the
owner of its account (net/src/routing.rs), and return answers in the caller's order."""

from __future__ import annotations

import asyncio
import collections
from typing import Iterable, List, Optional, Sequence

from . import codec
from .aio import AsyncClient
from .client import DEFAULT_TIMEOUT, Answers, Client
from .codec import KIND_EVALUATE, KIND_EVALUATE_BATCH, Decision, TopologyReply
from .errors import ProtocolError, VerdictError
from .routing import ROUTING_NAME, check_table, fnv1a64

# As net/src/sharded.rs: requests kept in flight per shard in evaluate_many.
IN_FLIGHT_PER_SHARD_MAX = 128


def _checked_topology(topology: TopologyReply) -> TopologyReply:
    if topology.routing != ROUTING_NAME:
        raise ProtocolError(f"unknown routing scheme {topology.routing!r}")
    try:
        check_table(topology.partition_shards, topology.shard_count)
    except ValueError as e:
        raise ProtocolError(f"the topology's partition table: {e}") from None
    if topology.partitions != len(topology.partition_shards):
        raise ProtocolError(f"the topology says {topology.partitions} partitions but its table "
                            f"has {len(topology.partition_shards)}")
    if len(topology.shard_ports) != topology.shard_count:
        raise ProtocolError(f"{len(topology.shard_ports)} shard ports for "
                            f"{topology.shard_count} shards")
    return topology


class _Router:
    topology: TopologyReply

    def owner(self, event) -> int:
        """The shard that owns the event's account."""
        wire = codec.as_wire_event(event)
        return self.owner_of_account(wire["account_id"])

    def owner_of_account(self, account_id: str) -> int:
        table = self.topology.partition_shards
        return table[fnv1a64(account_id.encode("utf-8")) % len(table)]


class ShardedClient(_Router):
    """A blocking shard-aware client: ``ShardedClient(host, port, tls=None, timeout=...)``
    (any data port of the engine). ``evaluate``, ``evaluate_many`` (pipelined, at most 128
    in flight per shard), ``evaluate_batch`` (one batch per owner shard), ``owner(event)``,
    ``shard(i)`` (the Client of shard i), ``topology``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 7400, tls=None,
                 timeout: Optional[float] = DEFAULT_TIMEOUT, **kw):
        with Client(host, port, tls=tls, timeout=timeout, **kw) as first:
            self.topology = _checked_topology(first.topology())
        self.clients: List[Client] = []
        try:
            for p in self.topology.shard_ports:
                self.clients.append(Client(host, p, tls=tls, timeout=timeout, **kw))
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "ShardedClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for c in self.clients:
            c.close()

    def shard(self, i: int) -> Client:
        return self.clients[i]

    def evaluate(self, event) -> Decision:
        wire = codec.as_wire_event(event)
        return self.clients[self.owner_of_account(wire["account_id"])].evaluate(wire)

    def evaluate_many(self, events: Iterable, depth: int = IN_FLIGHT_PER_SHARD_MAX,
                      return_exceptions: bool = False) -> list:
        """Each event on its owner, pipelined (at most `depth` per shard in flight, in
        windows); decisions in input order. Errors as Client.evaluate_many."""
        wires = [codec.as_wire_event(e) for e in events]
        owners = [self.owner_of_account(w["account_id"]) for w in wires]
        payloads = [self.clients[0]._event_payload(w) for w in wires]
        answers = Answers()
        window = depth * len(self.clients)
        for start in range(0, len(wires), window):
            chunk = range(start, min(start + window, len(wires)))
            for i in chunk:
                self.clients[owners[i]].send_request(KIND_EVALUATE, payloads[i])
            for c in self.clients:
                c.flush()
            for i in chunk:
                answers.take(self.clients[owners[i]].recv)
        return answers.result(return_exceptions)

    def evaluate_batch(self, events: Sequence) -> List[Decision]:
        """One evaluate-batch per owner shard, sent together; decisions in input order."""
        wires = codec.wire_events(events, self.clients[0].validate)
        owners = [self.owner_of_account(w["account_id"]) for w in wires]
        per_shard: dict = collections.OrderedDict()
        for w, o in zip(wires, owners):
            per_shard.setdefault(o, []).append(w)
        for shard, batch in per_shard.items():
            self.clients[shard].send_request(KIND_EVALUATE_BATCH, codec.encode_batch(batch))
        for shard in per_shard:
            self.clients[shard].flush()
        answers = {}
        error = None
        for shard in per_shard:  # read every answer, so each connection stays in step
            try:
                answers[shard] = iter(self.clients[shard].recv())
            except VerdictError as e:
                error = error or e
        if error is not None:
            raise error
        try:
            return [next(answers[o]) for o in owners]
        except StopIteration:
            raise ProtocolError("a shard answered too few decisions") from None


class AsyncShardedClient(_Router):
    """The asyncio shard-aware client: ``await AsyncShardedClient.connect(host, port, ...)``;
    ``evaluate``, ``evaluate_many`` (input order), ``close``."""

    def __init__(self, topology: TopologyReply, clients: List[AsyncClient]):
        self.topology = topology
        self.clients = clients

    @classmethod
    async def connect(cls, host: str = "127.0.0.1", port: int = 7400, tls=None,
                      timeout: Optional[float] = DEFAULT_TIMEOUT, **kw) -> "AsyncShardedClient":
        first = await AsyncClient.connect(host, port, tls=tls, timeout=timeout, **kw)
        try:
            topology = _checked_topology(await first.topology())
        finally:
            await first.close()
        clients: List[AsyncClient] = []
        try:
            for p in topology.shard_ports:
                clients.append(await AsyncClient.connect(host, p, tls=tls, timeout=timeout,
                                                         **kw))
        except BaseException:
            for c in clients:
                await c.close()
            raise
        return cls(topology, clients)

    async def __aenter__(self) -> "AsyncShardedClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        for c in self.clients:
            await c.close()

    async def evaluate(self, event) -> Decision:
        wire = codec.as_wire_event(event)
        return await self.clients[self.owner_of_account(wire["account_id"])].evaluate(wire)

    async def evaluate_many(self, events: Iterable, depth: int = 64,
                            return_exceptions: bool = False) -> list:
        wires = [codec.as_wire_event(e) for e in events]
        groups: dict = collections.defaultdict(list)
        for i, w in enumerate(wires):
            groups[self.owner_of_account(w["account_id"])].append(i)
        results = await asyncio.gather(*(
            self.clients[s].evaluate_many([wires[i] for i in idx], depth=depth,
                                          return_exceptions=True)
            for s, idx in groups.items()))
        out: list = [None] * len(wires)
        for (s, idx), res in zip(groups.items(), results):
            for i, r in zip(idx, res):
                out[i] = r
        if not return_exceptions:
            for r in out:
                if isinstance(r, VerdictError):
                    raise r
        return out
