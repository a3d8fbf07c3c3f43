"""Shard routing, exactly as net/src/routing.rs: FNV-1a 64 over the key's bytes, modulo the
partition count, then the topology reply's partition table."""

from __future__ import annotations

from typing import Sequence

ROUTING_NAME = "fnv1a64-partitions"
PARTITIONS_MAX = 65536

_MASK = 0xFFFFFFFFFFFFFFFF


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & _MASK
    return h


def partition_of(value: bytes, partitions: int) -> int:
    if partitions <= 0:
        raise ValueError("partitions must be positive")
    return fnv1a64(value) % partitions


def check_table(partition_shards: Sequence[int], shard_count: int) -> None:
    """Raises ValueError for a table routing.rs's PartitionTable::new would refuse."""
    p = len(partition_shards)
    if p == 0 or p > PARTITIONS_MAX or p < shard_count or shard_count == 0 \
            or shard_count > 65536:
        raise ValueError(f"{p} partitions for {shard_count} shards: need at least the shard "
                         f"count and at most {PARTITIONS_MAX}")
    for i, s in enumerate(partition_shards):
        if s >= shard_count:
            raise ValueError(f"partition {i} is owned by shard {s}, but there are "
                             f"{shard_count} shards")


def owner_of_account(topology, account_id: str) -> int:
    """The shard that decides events of `account_id` under `topology` (a TopologyReply)."""
    table = topology.partition_shards
    return table[fnv1a64(account_id.encode("utf-8")) % len(table)]
