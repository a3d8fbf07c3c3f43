#!/usr/bin/env python3
"""Checks verdict's golden wire vectors with the Python client's codec, standard library only.

The codec is net/clients/python/verdict_client/codec.py, written from net/PROTOCOL.md (not
from rkyv's source). For every NAME.bin / NAME.json pair in the vectors directory (default:
this file's directory) this program

1. parses the frame header (section 1), decodes the payload with the codec's validating
   reader (sections 2, 3, 5: bounds, alignment, UTF-8, tags, the ordered claim window), and
   compares the value with the JSON meaning (section 8);
2. re-encodes the JSON meaning into a frame with the codec's writer (section 4) and compares
   it with the .bin byte for byte.

It also checks the codec's layouts against section 3's table and puts altered payloads to
the codec's validator (section 5; net/tests/vectors.rs puts the same ones to rkyv's).

Usage: python3 check.py [VECTORS_DIR]. Prints "N vectors ok" and exits 0, or lists the
problems and exits 1. Python 3.11+, no third-party packages.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "clients" / "python"))

from verdict_client.codec import (DOCUMENTED, HEADER_LEN, KINDS, MAGIC,  # noqa: E402
                                  VERSION, Invalid, decode_value, differences, encode_frame,
                                  encode_value, from_json, normalise_ips, pad16, size_align,
                                  to_json)


def check_vector(bin_path: Path, json_path: Path) -> list[str]:
    frame = bin_path.read_bytes()
    meaning = json.loads(json_path.read_text(encoding="utf-8"))
    problems = []

    # Decode: header (section 1) ...
    if len(frame) < HEADER_LEN:
        return ["shorter than a header"]
    if frame[0:2] != MAGIC or frame[2] != VERSION:
        return [f"bad magic or version: {frame[0:3].hex()}"]
    kind = frame[3]
    (length, id_) = struct.unpack_from("<IQ", frame, 4)
    if len(frame) != HEADER_LEN + pad16(length):
        problems.append(f"frame is {len(frame)} bytes, header says 16 + pad16({length})")
    if any(frame[HEADER_LEN + length:]):
        problems.append("padding is not zero")
    if kind not in KINDS:
        return problems + [f"unknown kind {kind:#04x}"]
    kind_name, payload_type = KINDS[kind]
    for field, got in (("kind", kind), ("id", id_), ("kind_name", kind_name),
                       ("payload_type", payload_type)):
        if meaning[field] != got:
            problems.append(f"{field}: frame has {got!r}, JSON says {meaning[field]!r}")

    # ... and payload (sections 2, 3, 5).
    payload = frame[HEADER_LEN:HEADER_LEN + length]
    if payload_type == "empty":
        if length != 0:
            problems.append(f"{kind_name} must have an empty payload, len is {length}")
        if meaning["payload"] is not None:
            problems.append("JSON payload of an empty frame is not null")
        expected_payload = b""
    else:
        try:
            decoded = decode_value(payload, payload_type)
        except Invalid as e:
            return problems + [f"payload does not decode: {e}"]
        try:
            value = from_json(meaning["payload"], payload_type)
        except (KeyError, TypeError, ValueError) as e:
            return problems + [f"the JSON meaning is not a {payload_type}: {e!r}"]
        problems += differences(decoded, value, "decoded value")
        # The JSON form too (ip text normalised: "2001:db8::1" has one spelling per address).
        problems += differences(normalise_ips(to_json(decoded, payload_type)),
                                normalise_ips(meaning["payload"]), "JSON meaning")
        # Re-encode the JSON meaning (section 4).
        expected_payload = encode_value(value, payload_type)

    again = encode_frame(meaning["kind"], meaning["id"], expected_payload)
    if again != frame:
        at = next((i for i, (x, y) in enumerate(zip(again, frame)) if x != y),
                  min(len(again), len(frame)))
        problems.append(f"re-encoded frame differs from the .bin at byte {at} "
                        f"({len(again)} vs {len(frame)} bytes)")
    return problems


def validator_self_test(directory: Path) -> list[str]:
    """Section 5's rules on variants of topology_reply's payload; net/tests/vectors.rs puts
    the same variants to rkyv's own validator (validation_rules_of_protocol_md)."""
    path = directory / "topology_reply.bin"
    if not path.exists():
        return []
    frame = path.read_bytes()
    original = bytearray(frame[HEADER_LEN:HEADER_LEN + 112])
    root = 56
    routing, address, cpus, shard_ports = root + 8, root + 16, root + 36, root + 28

    def variant(change):
        p = bytearray(original)
        change(p)
        return p

    def gap_first(p):
        p[19:28] = original[18:27]
        p[18] = 0
        struct.pack_into("<i", p, address + 4, 19 - address)

    def swapped(p):
        p[0:9] = b"127.0.0.1"
        p[9:27] = b"fnv1a64-partitions"
        struct.pack_into("<i", p, routing + 4, 9 - routing)
        struct.pack_into("<i", p, address + 4, -address)

    cases = [
        ("original", variant(lambda p: None), True),
        ("gap before the address", variant(gap_first), True),
        ("claims out of order", variant(swapped), False),
        ("overlapping claims", variant(lambda p: struct.pack_into("<i", p, address + 4,
                                                                  -address)), False),
        ("short string out of line", variant(lambda p: p.__setitem__(address, 0x88)), False),
        ("misaligned u32 elements", variant(lambda p: struct.pack_into("<i", p, cpus,
                                                                       34 - cpus)), False),
        ("vector pointing into its owner", variant(lambda p: struct.pack_into(
            "<i", p, shard_ports, 0)), False),
    ]
    problems = []
    for what, payload, valid in cases:
        try:
            decode_value(bytes(payload), "TopologyReply")
            accepted = True
        except Invalid:
            accepted = False
        if accepted != valid:
            problems.append(f"validator self-test: {what}: accepted={accepted}, "
                            f"rkyv's validator: {valid}")
    return problems


def main() -> int:
    directory = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
    failures = []
    for name, (size, align) in DOCUMENTED.items():
        if size_align(name) != (size, align):
            failures.append(f"layout of {name}: computed {size_align(name)}, "
                            f"documented {(size, align)}")
    failures += validator_self_test(directory)
    bins = sorted(directory.glob("*.bin"))
    if not bins:
        failures.append(f"no .bin files in {directory}")
    for bin_path in bins:
        json_path = bin_path.with_suffix(".json")
        if not json_path.exists():
            failures.append(f"{bin_path.name}: no {json_path.name}")
            continue
        for problem in check_vector(bin_path, json_path):
            failures.append(f"{bin_path.stem}: {problem}")
    for json_path in sorted(directory.glob("*.json")):
        if not json_path.with_suffix(".bin").exists():
            failures.append(f"{json_path.name}: no .bin")
    if failures:
        print("\n".join(failures))
        print(f"{len(failures)} problems in {len(bins)} vectors")
        return 1
    print(f"{len(bins)} vectors ok (decoded, validated, re-encoded byte for byte)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
