#!/usr/bin/env python3
"""Checks verdict's golden wire vectors against net/PROTOCOL.md, with the standard library only.

Written from PROTOCOL.md alone (not from rkyv's source): for every NAME.bin / NAME.json pair in
the vectors directory (default: this file's directory) it

1. parses the frame header (section 1), decodes the payload (sections 2, 3, 5), validating it
   as the server would (bounds, alignment, UTF-8, tags, the ordered claim window), and compares
   the value with the JSON meaning (section 8);
2. re-encodes the JSON meaning into a frame with its own writer (section 4) and compares it
   with the .bin byte for byte.

Usage: python3 check.py [VECTORS_DIR]. Prints "N vectors ok" and exits 0, or lists the
problems and exits 1. Python 3.11+, no third-party packages.
"""

from __future__ import annotations

import ipaddress
import json
import math
import struct
import sys
from pathlib import Path

# ---- section 1: frames ----

MAGIC = b"VD"
VERSION = 1
HEADER_LEN = 16

# kind byte -> (kind name, payload type); "empty" means len must be 0.
KINDS = {
    0x01: ("ping", "empty"),
    0x02: ("evaluate", "Event"),
    0x03: ("evaluate_batch", "EvaluateBatch"),
    0x04: ("stats", "empty"),
    0x05: ("topology", "empty"),
    0x06: ("reload", "ReloadRequest"),
    0x81: ("ping_response", "empty"),
    0x82: ("evaluate_response", "Decision"),
    0x83: ("evaluate_batch_response", "DecisionBatch"),
    0x84: ("stats_response", "StatsReply"),
    0x85: ("topology_response", "TopologyReply"),
    0x86: ("reload_response", "ReloadReply"),
    0xFF: ("error", "ErrorReply"),
}


def pad16(n: int) -> int:
    return (n + 15) // 16 * 16


class Invalid(Exception):
    """The bytes break a rule of PROTOCOL.md."""


# ---- sections 2 and 3: types ----

# Scalars: (struct format, size, align).
SCALARS = {
    "u8": ("<B", 1, 1),
    "bool": ("<B", 1, 1),
    "action": ("<B", 1, 1),
    "u16": ("<H", 2, 2),
    "u32": ("<I", 4, 4),
    "i32": ("<i", 4, 4),
    "u64": ("<Q", 8, 8),
    "i64": ("<q", 8, 8),
    "f64": ("<d", 8, 8),
}
# Composite primitives of section 2: (size, align).
SPECIAL = {"string": (8, 4), "ip": (17, 1), "attrvalue": (16, 8)}

ACTIONS = ["allow", "review", "deny"]
ATTR_VALUE_DATA = {0: 4, 1: 8, 2: 1}  # AttrValue tag -> offset of the variant's data

PERCENTILES = [("count", "u64"), ("p50", "u64"), ("p90", "u64"), ("p99", "u64"),
               ("p999", "u64"), ("max", "u64")]

# Structs of section 3: fields in declaration order. ("vec", T) is ArchivedVec<T>.
STRUCTS: dict[str, list[tuple[str, object]]] = {
    "Event": [
        ("event_id", "string"), ("timestamp_ms", "u64"), ("account_id", "string"),
        ("merchant_id", "string"), ("amount_minor", "i64"), ("currency", "string"),
        ("country", "string"), ("channel", "string"), ("device_id", "string"), ("ip", "ip"),
        ("mcc", "u16"), ("features", ("vec", "f64")), ("attributes", ("vec", "Attribute")),
    ],
    "Attribute": [("name", "string"), ("value", "attrvalue")],
    "EvaluateBatch": [("events", ("vec", "Event"))],
    "ModelScore": [("name", "string"), ("score", "f64"), ("error", "bool")],
    "Decision": [
        ("event_id", "string"), ("action", "action"), ("score", "i32"),
        ("rules", ("vec", "string")), ("shadow_rules", ("vec", "string")),
        ("models", ("vec", "ModelScore")), ("epoch", "u64"), ("shard", "u32"),
        ("server_ns", "u64"),
    ],
    "DecisionBatch": [("decisions", ("vec", "Decision"))],
    "ErrorReply": [("code", "u16"), ("message", "string")],
    "TopologyReply": [
        ("shard_count", "u32"), ("shard", "u32"), ("routing", "string"),
        ("address", "string"), ("port", "u16"), ("shard_ports", ("vec", "u16")),
        ("cpus", ("vec", "u32")), ("partitions", "u32"),
        ("partition_shards", ("vec", "u16")),
    ],
    "ReloadRequest": [("rules_path", "string")],
    "ReloadReply": [
        ("ok", "bool"), ("epoch", "u64"), ("rules_path", "string"), ("rules", "u32"),
        ("digest", "string"), ("compile_us", "u64"), ("errors", ("vec", "string")),
        ("models", ("vec", "string")), ("swap_us", "u64"),
    ],
    "Percentiles": PERCENTILES,
    "ErrorCount": [("code", "u16"), ("count", "u64")],
    "ModelStats": [
        ("name", "string"), ("version", "string"), ("calls", "u64"), ("rows", "u64"),
        ("traps", "u64"), ("timeouts", "u64"), ("errors", "u64"), ("exhausted_rows", "u64"),
        ("instances_ready", "u64"), ("call_ns", "Percentiles"),
    ],
    "RuleCount": [("name", "string"), ("shadow", "bool"), ("fired", "u64")],
    "LoopStats": [
        ("uptime_ns", "u64"), ("busy_ns", "u64"), ("io_poll_ns", "u64"),
        ("parked_ns", "u64"), ("batch_ns", "Percentiles"), ("polls", "u64"),
        ("poll_ns_max", "u64"), ("stalls", "u64"), ("stall_threshold_ns", "u64"),
    ],
    "KernelStats": [
        ("runq_delay_ns", "Percentiles"), ("runq_delay_ns_log2", ("vec", "u64")),
        ("io_uring_submits", "u64"), ("io_uring_completions", "u64"),
        ("tcp_retransmits", "u64"), ("softirqs", "u64"), ("softirq_ns", "u64"),
        ("syscall_ns", "Percentiles"), ("syscall_ns_log2", ("vec", "u64")),
    ],
    "ShardStats": [
        ("shard", "u32"), ("cpu", "u32"), ("epoch", "u64"), ("requests", "u64"),
        ("responses", "u64"), ("events", "u64"), ("errors", "u64"),
        ("errors_by_code", ("vec", "ErrorCount")), ("bytes_in", "u64"), ("bytes_out", "u64"),
        ("connections_open", "u64"), ("connections_accepted", "u64"),
        ("connections_rejected", "u64"), ("tls_handshakes_failed", "u64"),
        ("mesh_events_sent", "u64"), ("mesh_events_decided", "u64"),
        ("mesh_events_recorded", "u64"), ("log_records", "u64"),
        ("log_bytes_written", "u64"), ("log_fsyncs", "u64"), ("log_fsync_ns_total", "u64"),
        ("log_unlogged", "u64"), ("log_refused", "u64"), ("log_write_errors", "u64"),
        ("log_segments", "u64"), ("batch_requests", "Percentiles"),
        ("batch_events", "Percentiles"), ("latency_ns", "Percentiles"),
        ("models", ("vec", "ModelStats")), ("rules", ("vec", "RuleCount")),
        ("runtime", "LoopStats"), ("kernel", "KernelStats"),
    ],
    "ProbeState": [("group", "string"), ("active", "bool"), ("reason", "string")],
    "StatsReply": [
        ("shards", ("vec", "ShardStats")), ("total", "ShardStats"),
        ("probes", ("vec", "ProbeState")),
    ],
}

# Sizes and alignments as PROTOCOL.md section 3 tabulates them (checked against the C rule).
DOCUMENTED = {
    "Event": (112, 8), "Attribute": (24, 8), "EvaluateBatch": (8, 4), "ModelScore": (24, 8),
    "Decision": (64, 8), "DecisionBatch": (8, 4), "ErrorReply": (12, 4),
    "TopologyReply": (56, 4), "ReloadRequest": (8, 4), "ReloadReply": (72, 8),
    "Percentiles": (48, 8), "ErrorCount": (16, 8), "ModelStats": (120, 8),
    "RuleCount": (24, 8), "LoopStats": (112, 8), "KernelStats": (152, 8),
    "ShardStats": (616, 8), "ProbeState": (20, 4), "StatsReply": (632, 8),
}


def align_up(n: int, a: int) -> int:
    return (n + a - 1) // a * a


_LAYOUTS: dict[str, tuple[int, int, list[tuple[str, object, int]]]] = {}


def layout(name: str) -> tuple[int, int, list[tuple[str, object, int]]]:
    """(size, align, [(field, type, offset)]) by the C rule of section 2.4."""
    if name not in _LAYOUTS:
        offset, biggest, fields = 0, 1, []
        for field, ty in STRUCTS[name]:
            size, align = size_align(ty)
            offset = align_up(offset, align)
            fields.append((field, ty, offset))
            offset += size
            biggest = max(biggest, align)
        _LAYOUTS[name] = (align_up(offset, biggest), biggest, fields)
    return _LAYOUTS[name]


def size_align(ty) -> tuple[int, int]:
    if isinstance(ty, tuple):
        return (8, 4)  # ArchivedVec
    if ty in SCALARS:
        return SCALARS[ty][1], SCALARS[ty][2]
    if ty in SPECIAL:
        return SPECIAL[ty]
    size, align, _ = layout(ty)
    return size, align


# ---- section 5: reading, with the validator's rules ----


class Reader:
    def __init__(self, payload: bytes):
        self.buf = payload
        # The claim window of section 5: where the next pointed-to range may lie.
        self.lo, self.hi = 0, len(payload)

    def claim(self, start: int, size: int, align: int, read, what: str):
        if start < self.lo or start + size > self.hi:
            raise Invalid(f"{what}: range {start}..{start + size} outside the window "
                          f"{self.lo}..{self.hi}")
        if start % align:
            raise Invalid(f"{what}: position {start} not {align}-aligned")
        outer_hi = self.hi
        self.hi = start  # what the range points to must lie before it
        value = read()
        self.lo, self.hi = start + size, outer_hi  # the next claim must lie after it
        return value

    def scalar(self, ty: str, pos: int):
        fmt, size, _ = SCALARS[ty]
        (v,) = struct.unpack_from(fmt, self.buf, pos)
        if ty == "bool":
            if v > 1:
                raise Invalid(f"bool at {pos} is {v}")
            return v == 1
        if ty == "action" and v >= len(ACTIONS):
            raise Invalid(f"Action tag {v} at {pos}")
        return v

    def string(self, pos: int) -> str:
        first = self.buf[pos]
        if first & 0xC0 != 0x80:  # inline
            raw = self.buf[pos:pos + 8]
            end = raw.find(b"\xff")
            data = raw if end < 0 else raw[:end]
            return utf8(data, pos)
        (tagged, offset) = struct.unpack_from("<Ii", self.buf, pos)
        n = (tagged & 0x3F) | ((tagged >> 8) << 6)
        if n <= 8:
            raise Invalid(f"out-of-line string at {pos} of {n} bytes (must be inline)")
        target = pos + offset
        return self.claim(target, n, 1, lambda: utf8(self.buf[target:target + n], target),
                          f"string at {pos}")

    def vec(self, elem, pos: int) -> list:
        (offset, n) = struct.unpack_from("<iI", self.buf, pos)
        size, align = size_align(elem)
        target = pos + offset
        return self.claim(target, n * size, align,
                          lambda: [self.value(elem, target + i * size) for i in range(n)],
                          f"vec at {pos}")

    def value(self, ty, pos: int):
        if isinstance(ty, tuple):
            return self.vec(ty[1], pos)
        if ty in SCALARS:
            return self.scalar(ty, pos)
        if ty == "string":
            return self.string(pos)
        if ty == "ip":
            tag = self.buf[pos]
            if tag == 0:
                return ipaddress.IPv4Address(bytes(self.buf[pos + 1:pos + 5]))
            if tag == 1:
                return ipaddress.IPv6Address(bytes(self.buf[pos + 1:pos + 17]))
            raise Invalid(f"IpAddr tag {tag} at {pos}")
        if ty == "attrvalue":
            tag = self.buf[pos]
            if tag not in ATTR_VALUE_DATA:
                raise Invalid(f"AttrValue tag {tag} at {pos}")
            data = pos + ATTR_VALUE_DATA[tag]
            kind = ("Str", "Num", "Bool")[tag]
            return (kind, self.value(("string", "f64", "bool")[tag], data))
        _, _, fields = layout(ty)
        return {field: self.value(fty, pos + off) for field, fty, off in fields}

    def root(self, ty: str):
        size, align, _ = layout(ty)
        pos = len(self.buf) - size
        if pos < 0:
            raise Invalid(f"payload of {len(self.buf)} bytes is shorter than a {ty}")
        return self.claim(pos, size, align, lambda: self.value(ty, pos), f"root {ty}")


def utf8(data: bytes, pos: int) -> str:
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError as e:
        raise Invalid(f"string at {pos} is not UTF-8: {e}") from None


# ---- section 4: writing, in rkyv's order ----


def tagged_len(n: int) -> int:
    return (n & 0x3F) | 0x80 | ((n & ~0x3F) << 2)


class Writer:
    def __init__(self):
        self.buf = bytearray()

    def align(self, a: int):
        self.buf.extend(b"\0" * ((a - len(self.buf) % a) % a))

    def deps(self, value, ty):
        """Writes value's out-of-line data; returns what its pointers need (the resolver)."""
        if isinstance(ty, tuple):
            elem = ty[1]
            subs = [self.deps(v, elem) for v in value]
            _, align = size_align(elem)
            self.align(align)
            start = len(self.buf)
            for v, sub in zip(value, subs):
                self.obj(v, elem, sub)
            return start
        if ty == "string":
            data = value.encode("utf-8")
            if len(data) <= 8:
                return None
            start = len(self.buf)
            self.buf.extend(data)
            return start
        if ty == "attrvalue":
            kind, v = value
            return self.deps(v, "string") if kind == "Str" else None
        if ty in SCALARS or ty == "ip":
            return None
        return [self.deps(value[field], fty) for field, fty in STRUCTS[ty]]

    def obj(self, value, ty, res):
        """Appends the fixed-size object (the position is already aligned for it)."""
        start = len(self.buf)
        size, _ = size_align(ty)
        self.buf.extend(b"\0" * size)
        self.fill(value, ty, res, start)

    def fill(self, value, ty, res, pos: int):
        b = self.buf
        if isinstance(ty, tuple):
            struct.pack_into("<iI", b, pos, res - pos, len(value))
        elif ty in SCALARS:
            v = int(value) if ty in ("bool", "action") else value
            struct.pack_into(SCALARS[ty][0], b, pos, v)
        elif ty == "string":
            data = value.encode("utf-8")
            if len(data) <= 8:
                b[pos:pos + 8] = data + b"\xff" * (8 - len(data))
            else:
                struct.pack_into("<Ii", b, pos, tagged_len(len(data)), res - pos)
        elif ty == "ip":
            b[pos] = 0 if value.version == 4 else 1
            packed = value.packed
            b[pos + 1:pos + 1 + len(packed)] = packed
        elif ty == "attrvalue":
            kind, v = value
            tag = ("Str", "Num", "Bool").index(kind)
            b[pos] = tag
            self.fill(v, ("string", "f64", "bool")[tag], res, pos + ATTR_VALUE_DATA[tag])
        else:
            _, _, fields = layout(ty)
            for (field, fty, off), sub in zip(fields, res):
                self.fill(value[field], fty, sub, pos + off)


def encode_payload(value, ty: str) -> bytes:
    w = Writer()
    res = w.deps(value, ty)
    _, align = size_align(ty)
    w.align(align)
    w.obj(value, ty, res)
    return bytes(w.buf)


def encode_frame(kind: int, id_: int, payload: bytes) -> bytes:
    header = MAGIC + bytes([VERSION, kind]) + struct.pack("<IQ", len(payload), id_)
    return header + payload + b"\0" * (pad16(len(payload)) - len(payload))


# ---- section 8: the JSON meaning <-> values ----


def event_from_json(j: dict) -> dict:
    def ident(v):
        return v if isinstance(v, str) else str(v)

    ip = j.get("ip")
    attributes = []
    for name, v in j.get("attributes", {}).items():
        if isinstance(v, str):
            attributes.append({"name": name, "value": ("Str", v)})
        elif isinstance(v, bool):
            attributes.append({"name": name, "value": ("Bool", v)})
        elif isinstance(v, (int, float)):
            attributes.append({"name": name, "value": ("Num", float(v))})
        else:
            raise ValueError(f"attribute {name}: {v!r}")
    return {
        "event_id": ident(j["event_id"]),
        "timestamp_ms": j["timestamp_ms"],
        "account_id": ident(j["account_id"]),
        "merchant_id": ident(j["merchant_id"]),
        "amount_minor": j["amount_minor"],
        "currency": j["currency"],
        "country": j["country"],
        "channel": j["channel"],
        "device_id": ident(j["device_id"]),
        "ip": ipaddress.ip_address("0.0.0.0" if ip in (None, "") else ip),
        "mcc": int(j["mcc"]),
        "features": [float(f) for f in j.get("features", [])],
        "attributes": attributes,
    }


def event_to_json(e: dict) -> dict:
    return {
        **{k: e[k] for k in ("event_id", "timestamp_ms", "account_id", "merchant_id",
                             "amount_minor", "currency", "country", "channel", "device_id",
                             "mcc", "features")},
        "ip": str(e["ip"]),
        "attributes": {a["name"]: a["value"][1] for a in e["attributes"]},
    }


def decision_from_json(j: dict) -> dict:
    failed = set(j.get("model_errors", []))
    return {
        "event_id": j["event_id"],
        "action": ACTIONS.index(j["action"]),
        "score": j["score"],
        "rules": list(j["rules"]),
        "shadow_rules": list(j["shadow_rules"]),
        "models": [{"name": n, "score": float(s), "error": n in failed}
                   for n, s in j["models"].items()],
        "epoch": j["epoch"],
        "shard": j["shard"],
        "server_ns": j["server_ns"],
    }


def decision_to_json(d: dict) -> dict:
    out = {k: d[k] for k in ("event_id", "score", "rules", "shadow_rules", "epoch", "shard",
                             "server_ns")}
    out["action"] = ACTIONS[d["action"]]
    out["models"] = {m["name"]: m["score"] for m in d["models"]}
    failed = [m["name"] for m in d["models"] if m["error"]]
    if failed:
        out["model_errors"] = failed
    return out


def generic_from_json(j, ty):
    if isinstance(ty, tuple):
        return [generic_from_json(v, ty[1]) for v in j]
    if ty == "f64":
        return float(j)
    if ty in SCALARS or ty == "string":
        return j
    return {field: generic_from_json(j[field], fty) for field, fty in STRUCTS[ty]}


def from_json(j, ty: str):
    if ty == "Event":
        return event_from_json(j)
    if ty == "EvaluateBatch":
        return {"events": [event_from_json(e) for e in j["events"]]}
    if ty == "Decision":
        return decision_from_json(j)
    if ty == "DecisionBatch":
        return {"decisions": [decision_from_json(d) for d in j["decisions"]]}
    return generic_from_json(j, ty)


def to_json(v, ty: str):
    if ty == "Event":
        return event_to_json(v)
    if ty == "EvaluateBatch":
        return {"events": [event_to_json(e) for e in v["events"]]}
    if ty == "Decision":
        return decision_to_json(v)
    if ty == "DecisionBatch":
        return {"decisions": [decision_to_json(d) for d in v["decisions"]]}
    return v  # every other type's JSON form is its fields by name


def same(a, b, path="payload") -> list[str]:
    """Differences between two values; floats compare by bit pattern (-0.0 is not 0.0)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return [] if type(a) is type(b) and a == b else [f"{path}: {a!r} != {b!r}"]
    if isinstance(a, float) or isinstance(b, float):
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            if struct.pack("<d", float(a)) == struct.pack("<d", float(b)):
                return []
            if math.isnan(float(a)) and math.isnan(float(b)):
                return []
        return [f"{path}: {a!r} != {b!r}"]
    if isinstance(a, dict) and isinstance(b, dict):
        if list(a) != list(b) and set(a) != set(b):
            return [f"{path}: keys {sorted(a)} != {sorted(b)}"]
        return [d for k in a for d in same(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in same(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


# ---- the check ----


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
            decoded = Reader(payload).root(payload_type)
        except (Invalid, struct.error, IndexError, ValueError) as e:
            return problems + [f"payload does not decode: {e}"]
        value = from_json(meaning["payload"], payload_type)
        problems += same(decoded, value, "decoded value")
        # The JSON form too (ip text normalised: "2001:db8::1" has one spelling per address).
        got_json = to_json(decoded, payload_type)
        problems += same(normalise_ips(got_json), normalise_ips(meaning["payload"]),
                         "JSON meaning")
        # Re-encode the JSON meaning (section 4).
        expected_payload = encode_payload(value, payload_type)

    again = encode_frame(meaning["kind"], meaning["id"], expected_payload)
    if again != frame:
        at = next((i for i, (x, y) in enumerate(zip(again, frame)) if x != y),
                  min(len(again), len(frame)))
        problems.append(f"re-encoded frame differs from the .bin at byte {at} "
                        f"({len(again)} vs {len(frame)} bytes)")
    return problems


def normalise_ips(j):
    if isinstance(j, dict):
        return {k: (str(ipaddress.ip_address(v or "0.0.0.0")) if k == "ip" else
                    normalise_ips(v)) for k, v in j.items()}
    if isinstance(j, list):
        return [normalise_ips(v) for v in j]
    return j


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
            Reader(bytes(payload)).root("TopologyReply")
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
