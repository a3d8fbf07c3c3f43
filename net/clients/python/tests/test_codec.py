"""The codec against net/vectors: every golden frame decodes to its .json meaning and the
meaning re-encodes to the same bytes; plus the validator's rules, routing and event checks."""

import json
import math
import struct
import unittest
from pathlib import Path

from verdict_client import codec, routing
from verdict_client.codec import differences, normalise_ips
from verdict_client.client import FrameReader, check_response
from verdict_client.errors import BadField, ProtocolError

VECTORS = Path(__file__).resolve().parents[3] / "vectors"


DATACLASS_OF = {"Decision": codec.Decision, "ErrorReply": codec.ErrorReply,
                "TopologyReply": codec.TopologyReply, "StatsReply": codec.StatsReply,
                "ReloadReply": codec.ReloadReply}


class GoldenVectors(unittest.TestCase):
    def test_layouts_are_the_documented_ones(self):
        for name, want in codec.DOCUMENTED.items():
            self.assertEqual(codec.size_align(name), want, name)

    def test_every_vector_decodes_and_reencodes_byte_for_byte(self):
        bins = sorted(VECTORS.glob("*.bin"))
        self.assertGreaterEqual(len(bins), 16, f"vectors in {VECTORS}")
        for path in bins:
            with self.subTest(vector=path.stem):
                frame = path.read_bytes()
                meaning = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
                reader = FrameReader()
                reader.feed(frame)
                kind, id_, payload = reader.next_frame()
                self.assertIsNone(reader.next_frame())
                self.assertEqual(reader.buf, bytearray())
                self.assertEqual((kind, id_), (meaning["kind"], meaning["id"]))
                name, ty = codec.KINDS[kind]
                self.assertEqual((name, ty), (meaning["kind_name"], meaning["payload_type"]))
                if ty == "empty":
                    self.assertEqual(payload, b"")
                    self.assertIsNone(meaning["payload"])
                    again = b""
                else:
                    wire = codec.decode_value(payload, ty)
                    self.assertEqual(differences(normalise_ips(codec.to_json(wire, ty)),
                                                 normalise_ips(meaning["payload"])), [])
                    value = codec.from_json(meaning["payload"], ty)
                    again = codec.encode_value(value, ty)
                    # The dataclass form says the same as the JSON.
                    decoded = codec.decode_payload(kind, payload)
                    if ty in DATACLASS_OF:
                        self.assertIsInstance(decoded, DATACLASS_OF[ty])
                        self.assertEqual(differences(normalise_ips(decoded.to_json()),
                                                     normalise_ips(meaning["payload"])), [])
                    if ty == "Event":
                        ev = codec.Event.from_json(meaning["payload"])
                        self.assertEqual(codec.encode_event(ev), payload)
                        self.assertEqual(codec.encode_event(meaning["payload"] and
                                                            codec.as_wire_event(meaning["payload"])),
                                         payload)
                        self.assertEqual(differences(normalise_ips(decoded.to_json()),
                                                     normalise_ips(meaning["payload"])), [])
                    if ty == "EvaluateBatch":
                        self.assertEqual(codec.encode_batch(
                            [codec.Event.from_json(e) for e in meaning["payload"]["events"]]),
                            payload)
                    if ty == "Decision":
                        d = codec.Decision.from_json(meaning["payload"])
                        self.assertEqual(d, decoded)
                self.assertEqual(again, payload)
                self.assertEqual(codec.encode_frame(kind, id_, again), frame)

    def test_the_fast_event_writer_matches_the_generic_one(self):
        w = codec.Writer()
        for name in ("evaluate_full", "evaluate_ipv6", "evaluate_minimal"):
            meaning = json.loads((VECTORS / f"{name}.json").read_text(encoding="utf-8"))
            value = codec.event_from_json(meaning["payload"])
            w = codec.Writer()
            res = w.deps(value, "Event")
            w.align(8)
            w.obj(value, "Event", res)
            self.assertEqual(bytes(w.buf), codec.encode_event(value), name)

    def test_error_frames_raise_typed_errors(self):
        frame = (VECTORS / "error_bad_field.bin").read_bytes()
        reader = FrameReader()
        reader.feed(frame)
        kind, id_, payload = reader.next_frame()
        with self.assertRaises(BadField) as cm:
            check_response(kind, id_, payload, codec.KIND_EVALUATE, id_)
        self.assertEqual(cm.exception.code, 6)
        self.assertEqual(cm.exception.name, "bad_field")
        self.assertIn("currency", cm.exception.message)

    def test_bad_bytes_are_protocol_errors(self):
        frame = bytearray((VECTORS / "decision.bin").read_bytes())
        payload = bytes(frame[16:16 + struct.unpack_from("<I", frame, 4)[0]])
        with self.assertRaises(ProtocolError):
            codec.decode_decision(payload[:-8])  # root misplaced
        broken = bytearray(payload)
        broken[-64 + 8] = 7  # action tag out of range
        with self.assertRaises(ProtocolError):
            codec.decode_decision(bytes(broken))
        reader = FrameReader()
        reader.feed(b"XX" + bytes(frame[2:]))
        with self.assertRaises(ProtocolError):
            reader.next_frame()
        reader = FrameReader(len_max=64)
        reader.feed(bytes(frame))
        with self.assertRaises(ProtocolError):
            reader.next_frame()
        with self.assertRaises(ProtocolError):  # a response of the wrong kind
            check_response(0x81, 1, b"", codec.KIND_EVALUATE, 1)
        with self.assertRaises(ProtocolError):  # the wrong id
            check_response(0x81, 2, b"", codec.KIND_PING, 1)


class Validation(unittest.TestCase):
    """Section 5's rules on altered copies of decision.bin's payload."""

    def setUp(self):
        frame = (VECTORS / "decision.bin").read_bytes()
        n = struct.unpack_from("<I", frame, 4)[0]
        self.payload = bytes(frame[16:16 + n])
        self.root = n - 64
        offset, count = struct.unpack_from("<iI", self.payload, self.root + 16)
        self.rules = self.root + 16 + offset  # the rules array: two out-of-line strings
        self.assertEqual(count, 2)

    def decodes(self, change):
        p = bytearray(self.payload)
        change(p)
        try:
            codec.decode_decision(bytes(p))
            return True
        except ProtocolError:
            return False

    def target(self, p, pos):
        return pos + struct.unpack_from("<i", p, pos + 4)[0]

    def test_the_original_decodes(self):
        self.assertTrue(self.decodes(lambda p: None))

    def test_overlapping_claims_are_refused(self):
        def overlap(p):
            first = self.target(p, self.rules)
            struct.pack_into("<i", p, self.rules + 12, first - (self.rules + 8))
        self.assertFalse(self.decodes(overlap))

    def test_a_short_string_out_of_line_is_refused(self):
        self.assertFalse(self.decodes(lambda p: p.__setitem__(self.rules, 0x88)))

    def test_misaligned_elements_are_refused(self):
        def shift(p):
            offset = struct.unpack_from("<i", p, self.root + 32)[0]
            struct.pack_into("<i", p, self.root + 32, offset + 4)
        self.assertFalse(self.decodes(shift))

    def test_bad_utf8_and_bad_bools_are_refused(self):
        self.assertFalse(self.decodes(
            lambda p: p.__setitem__(self.target(p, self.rules), 0xC3)))
        self.assertFalse(self.decodes(lambda p: p.__setitem__(self.root + 8, 3)))


def event(**over):
    e = {"event_id": "e-1", "timestamp_ms": 1700000000000, "account_id": "acct-42",
         "merchant_id": "m-7", "amount_minor": 129900, "currency": "USD", "country": "US",
         "channel": "web", "device_id": "d-1", "ip": "203.0.113.9", "mcc": 5411,
         "features": [0.12, 3.5],
         "attributes": {"email_domain": "example.com", "account_age_days": 12,
                        "first_purchase": True}}
    e.update(over)
    return e


class Events(unittest.TestCase):
    def test_json_forms(self):
        e = codec.Event.from_json(event(event_id=17, mcc="5411", ip=None))
        self.assertEqual(e.event_id, "17")
        self.assertEqual(e.mcc, 5411)
        self.assertEqual(e.to_json()["ip"], "0.0.0.0")
        self.assertEqual(e.to_json()["attributes"],
                         {"email_domain": "example.com", "account_age_days": 12.0,
                          "first_purchase": True})
        with self.assertRaisesRegex(ValueError, "mcc_code"):
            codec.event_from_json({**event(), "mcc_code": 1})
        with self.assertRaisesRegex(ValueError, "currency"):
            codec.event_from_json({k: v for k, v in event().items() if k != "currency"})
        with self.assertRaisesRegex(ValueError, "`ip`"):
            codec.event_from_json(event(ip="not-an-ip"))

    def test_client_side_checks_name_the_field(self):
        cases = [
            ("event_id", dict(event_id="")), ("account_id", dict(account_id="x" * 129)),
            ("amount_minor", dict(amount_minor=-1)), ("currency", dict(currency="usd")),
            ("currency", dict(currency="USDX")), ("country", dict(country="USA")),
            ("channel", dict(channel="c" * 33)), ("mcc", dict(mcc=10000)),
            ("features", dict(features=[1.0, math.nan])),
            ("features", dict(features=[0.0] * 1025)),
            ("attributes", dict(attributes={"n": math.inf})),
            ("attributes", dict(attributes={"": 1})),
            ("attributes", dict(attributes={"s": "v" * 257})),
        ]
        codec.validate_event(codec.event_from_json(event()))
        for f, over in cases:
            with self.subTest(field=f, change=str(over)[:40]):
                with self.assertRaisesRegex(ValueError, f"field `{f}`"):
                    codec.validate_event(codec.event_from_json(event(**over)))


class Routing(unittest.TestCase):
    def test_fnv_and_the_readme_example(self):
        self.assertEqual(routing.fnv1a64(b""), 0xcbf29ce484222325)
        self.assertEqual(routing.fnv1a64(b"a"), 0xaf63dc4c8601ec8c)
        self.assertEqual(routing.fnv1a64(b"foobar"), 0x85944171f73967e8)
        self.assertEqual(routing.fnv1a64(b"acct-42"), 0xc7c57a5bbc751b23)
        self.assertEqual(routing.partition_of(b"acct-42", 4096), 2851)
        topo = codec.TopologyReply(2, 0, routing.ROUTING_NAME, "127.0.0.1", 7400, [1, 2],
                                   [0, 1], 4096, [p % 2 for p in range(4096)])
        self.assertEqual(topo.owner_of_account("acct-42"), 1)

    def test_tables_are_checked(self):
        self.assertRaises(ValueError, routing.check_table, [0], 2)
        self.assertRaises(ValueError, routing.check_table, [0, 2], 2)
        routing.check_table([0, 1], 2)


if __name__ == "__main__":
    unittest.main()
