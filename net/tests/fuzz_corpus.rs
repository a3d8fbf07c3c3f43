//! The fuzz corpus as an ordinary test (CI runs no fuzzer). Every file under
//! `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` goes through
//! `verdict_net::fuzzing::<target>`, the same body `cargo fuzz` runs. Proves that the frame
//! scanner, the receive buffer, payload validation of every request and response type and
//! JSON event parsing hold their properties on every seed and every crash found so far (a
//! fixed crash stays fixed), and that each corpus directory belongs to a target.
//!
//! The seeds are built with this crate's own encoder by `write_seeds`, ignored here: after a
//! schema change, `cargo test -p verdict-net --test fuzz_corpus -- --ignored` rewrites them.

use std::path::{Path, PathBuf};

use rkyv::util::AlignedVec;
use verdict_net::frame::{FRAME_ALIGN, FrameEncoder, KIND_ERROR, encode_header};
use verdict_net::fuzzing::{self, Target};
use verdict_net::*;

const TARGETS: [Target; 3] = [
    ("frame", fuzzing::frame),
    ("payload", fuzzing::payload),
    ("json_event", fuzzing::json_event),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

#[test]
fn corpus_and_regressions_replay_without_a_panic() {
    fuzzing::assert_replays(&fuzz_dir(), &TARGETS);
}

// ---- the seeds ----

/// An event with every optional part filled in.
fn full_event(i: u64) -> Event {
    let mut e = test_event(&format!("evt-{i}"), &format!("acct-{}", i % 3), 129_900);
    e.ip = "2001:db8::1".parse().unwrap();
    e.features = vec![0.5, -1.25, 1e300];
    e.attributes = vec![
        Attribute {
            name: "email_domain".into(),
            value: AttrValue::Str("example.com".into()),
        },
        Attribute {
            name: "account_age_days".into(),
            value: AttrValue::Num(12.0),
        },
        Attribute {
            name: "first_purchase".into(),
            value: AttrValue::Bool(true),
        },
    ];
    e
}

fn decision(i: u64) -> Decision {
    Decision {
        event_id: format!("evt-{i}"),
        action: Action::Review,
        score: 70,
        rules: vec!["big_foreign_purchase".into(), "risky_network".into()],
        shadow_rules: vec!["candidate_tighter_burst".into()],
        models: vec![ModelScore {
            name: "fraud_lr".into(),
            score: 0.43,
            error: false,
        }],
        epoch: 1,
        shard: 1,
        server_ns: 2875,
    }
}

fn stats() -> StatsReply {
    let shard = ShardStats {
        errors_by_code: vec![ErrorCount { code: 6, count: 2 }],
        models: vec![ModelStats {
            name: "fraud_lr".into(),
            version: "1.0.0".into(),
            ..ModelStats::default()
        }],
        kernel: KernelStats {
            runq_delay_ns_log2: vec![0, 3, 1],
            ..KernelStats::default()
        },
        ..ShardStats::default()
    };
    StatsReply {
        shards: vec![shard.clone()],
        total: shard,
        probes: vec![ProbeState {
            group: "runqueue".into(),
            active: false,
            reason: "needs CAP_BPF".into(),
        }],
    }
}

fn topology() -> TopologyReply {
    TopologyReply {
        shard_count: 2,
        shard: 0,
        routing: "fnv1a64".into(),
        address: "127.0.0.1".into(),
        port: 7400,
        shard_ports: vec![7410, 7411],
        cpus: vec![0, 1],
        partitions: 4,
        partition_shards: vec![0, 1, 0, 1],
    }
}

fn reload_reply() -> ReloadReply {
    ReloadReply {
        ok: false,
        epoch: 1,
        rules_path: "rules/default.rules".into(),
        rules: 0,
        digest: String::new(),
        compile_us: 900,
        errors: vec!["r.rules:1:1: error: expected an item\n".into()],
        models: vec!["fraud_lr@1.0.0 (452cde2ec172)".into()],
        swap_us: 0,
    }
}

/// Appends one frame of `value` to `out` and returns its payload alone.
fn push<T>(out: &mut AlignedVec<FRAME_ALIGN>, kind: u8, id: u64, value: &T) -> Vec<u8>
where
    T: for<'a, 'b> rkyv::Serialize<frame::PayloadSerializer<'a, 'b>>,
{
    let start = out.len();
    FrameEncoder::new().push(out, kind, id, value).unwrap();
    let len = u32::from_le_bytes(out[start + 4..start + 8].try_into().unwrap()) as usize;
    out[start + 16..start + 16 + len].to_vec()
}

/// `(target, name, bytes)` for every seed.
fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut seeds = Vec::new();
    let mut requests = AlignedVec::<FRAME_ALIGN>::new();
    let mut responses = AlignedVec::<FRAME_ALIGN>::new();
    let mut enc = FrameEncoder::new();
    let mut payload = |name: &str, kind: u8, bytes: Vec<u8>| {
        seeds.push(("payload", name.to_string(), [&[kind][..], &bytes].concat()));
    };
    let req = Kind::request_byte;
    let resp = Kind::response_byte;

    enc.push_empty(&mut requests, req(Kind::Ping), 1);
    let plain = test_event("e-1", "acct-42", 1000);
    payload(
        "event",
        req(Kind::Evaluate),
        push(&mut requests, req(Kind::Evaluate), 2, &plain),
    );
    let full = full_event(3);
    payload(
        "event_full",
        req(Kind::Evaluate),
        push(&mut requests, req(Kind::Evaluate), 3, &full),
    );
    let batch = EvaluateBatch {
        events: (0..3).map(full_event).collect(),
    };
    payload(
        "batch",
        req(Kind::EvaluateBatch),
        push(&mut requests, req(Kind::EvaluateBatch), 4, &batch),
    );
    enc.push_empty(&mut requests, req(Kind::Stats), 5);
    enc.push_empty(&mut requests, req(Kind::Topology), 6);
    let reload = ReloadRequest {
        rules_path: "rules/default.rules".into(),
    };
    payload(
        "reload",
        req(Kind::Reload),
        push(&mut requests, req(Kind::Reload), 7, &reload),
    );
    let mut bad = test_event("e-2", "acct-1", -5);
    bad.currency = "usd".into();
    bad.features = vec![f64::NAN];
    payload(
        "event_bad_fields",
        req(Kind::Evaluate),
        push(&mut requests, req(Kind::Evaluate), 8, &bad),
    );

    payload(
        "decision",
        resp(Kind::Evaluate),
        push(&mut responses, resp(Kind::Evaluate), 2, &decision(2)),
    );
    let decisions = DecisionBatch {
        decisions: (0..3).map(decision).collect(),
    };
    payload(
        "decision_batch",
        resp(Kind::EvaluateBatch),
        push(&mut responses, resp(Kind::EvaluateBatch), 4, &decisions),
    );
    payload(
        "stats",
        resp(Kind::Stats),
        push(&mut responses, resp(Kind::Stats), 5, &stats()),
    );
    payload(
        "topology",
        resp(Kind::Topology),
        push(&mut responses, resp(Kind::Topology), 6, &topology()),
    );
    payload(
        "reload_reply",
        resp(Kind::Reload),
        push(&mut responses, resp(Kind::Reload), 7, &reload_reply()),
    );
    let error = ErrorReply {
        code: ErrorCode::BadField as u16,
        message: "field `currency` must be a three-letter ISO 4217 code in capitals".into(),
    };
    payload(
        "error",
        KIND_ERROR,
        push(&mut responses, KIND_ERROR, 8, &error),
    );

    // frame: [limit selector, split selector, stream]; limit 4 is the default 1 MiB, split 0
    // feeds a 16-byte buffer one byte at a time, split 0x1f reads up to 8 bytes into 4 KiB.
    let mut stream = |name: &str, limit: u8, split: u8, bytes: &[u8]| {
        seeds.push((
            "frame",
            name.to_string(),
            [&[limit, split][..], bytes].concat(),
        ));
    };
    stream("requests_bytewise", 4, 0x00, &requests);
    stream("requests_reads", 4, 0x1f, &requests);
    stream("responses", 4, 0x45, &responses);
    stream("truncated", 4, 0x06, &requests[..requests.len() - 5]);
    stream(
        "too_large",
        3,
        0x03,
        &encode_header(req(Kind::Evaluate), 5000, 9),
    );
    let mut bad_version = encode_header(req(Kind::Ping), 0, 10);
    bad_version[2] = 2;
    stream(
        "bad_version",
        4,
        0x02,
        &[&requests[..16], &bad_version[..]].concat(),
    );
    stream("bad_magic", 4, 0x01, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    stream("unknown_kind", 4, 0x09, &encode_header(0x66, 0, 11));

    let line = r#"{"event_id":"e-1","timestamp_ms":1700000000000,"account_id":"acct-42","merchant_id":"m-7","amount_minor":129900,"currency":"USD","country":"US","channel":"web","device_id":"d-1","ip":"203.0.113.9","mcc":5411,"features":[0.12,3.5],"attributes":{"email_domain":"example.com","account_age_days":12,"first_purchase":true}}"#;
    let mut json =
        |name: &str, text: String| seeds.push(("json_event", name.to_string(), text.into_bytes()));
    json("readme", line.to_string());
    json(
        "int_ids_null_ip",
        line.replace(r#""e-1""#, "17")
            .replace(r#""203.0.113.9""#, "null")
            .replace("5411", r#""5411""#),
    );
    json(
        "ipv6_no_extras",
        line.replace("203.0.113.9", "::ffff:10.1.2.3")
            .replace(r#","features":[0.12,3.5],"attributes":{"email_domain":"example.com","account_age_days":12,"first_purchase":true}"#, ""),
    );
    json("unknown_key", line.replace("\"mcc\"", "\"mcc_code\""));
    seeds
}

#[test]
#[ignore = "rewrites the committed seeds; run after a schema change"]
fn write_seeds() {
    for (target, name, bytes) in seeds() {
        let dir = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
    }
}
