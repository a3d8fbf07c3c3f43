//! Golden test vectors for the wire protocol as `net/PROTOCOL.md` specifies it.
//!
//! Every vector is a whole frame (header, payload, padding) in `net/vectors/NAME.bin` and its
//! meaning in `net/vectors/NAME.json`. This test builds each vector's value with the crate's
//! own types and encoder (`FrameEncoder`, the one both the clients and the server use; the
//! server's borrowed views are checked to give the same bytes), and asserts that:
//! - the encoded frame equals the committed `.bin` byte for byte;
//! - decoding the `.bin` (header + rkyv validation) gives the value back;
//! - the `.json` equals the value's JSON form (`verdict send` names for events and decisions);
//! - the archived types have the sizes and offsets PROTOCOL.md tabulates;
//! - `net/vectors/check.py`, over the Python client's codec (written from PROTOCOL.md),
//!   agrees with every file, and with 500 seeded random values written to a scratch
//!   directory;
//! - rkyv's validator accepts and rejects what PROTOCOL.md section 5 says it does.
//!
//! After a deliberate schema change: `cargo test -p verdict-net --test vectors -- --ignored
//! write_vectors` rewrites the files (then update PROTOCOL.md and check.py).

use std::mem::{align_of, offset_of, size_of};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rkyv::util::AlignedVec;
use serde_json::{Value, json};
use verdict_net::frame::{FRAME_ALIGN, FrameEncoder, HEADER_LEN, KIND_ERROR, parse_header};
use verdict_net::json::{decision_to_json, event_from_json, event_to_json};
use verdict_net::*;

// ---- the vectors ----

#[derive(Debug, Clone, PartialEq)]
enum Payload {
    Empty,
    Event(Event),
    EvaluateBatch(EvaluateBatch),
    Decision(Decision),
    DecisionBatch(DecisionBatch),
    Error(ErrorReply),
    Topology(TopologyReply),
    Stats(Box<StatsReply>),
    ReloadRequest(ReloadRequest),
    ReloadReply(ReloadReply),
}

struct Vector {
    name: &'static str,
    description: &'static str,
    kind: u8,
    id: u64,
    payload: Payload,
}

const PING: u8 = 0x01;
const EVALUATE: u8 = 0x02;
const EVALUATE_BATCH: u8 = 0x03;
const STATS: u8 = 0x04;
const TOPOLOGY: u8 = 0x05;
const RELOAD: u8 = 0x06;
const RESPONSE: u8 = 0x80;

/// The kind's name and the payload type its frames carry.
fn kind_info(kind: u8) -> (&'static str, &'static str) {
    match kind {
        PING => ("ping", "empty"),
        EVALUATE => ("evaluate", "Event"),
        EVALUATE_BATCH => ("evaluate_batch", "EvaluateBatch"),
        STATS => ("stats", "empty"),
        TOPOLOGY => ("topology", "empty"),
        RELOAD => ("reload", "ReloadRequest"),
        0x81 => ("ping_response", "empty"),
        0x82 => ("evaluate_response", "Decision"),
        0x83 => ("evaluate_batch_response", "DecisionBatch"),
        0x84 => ("stats_response", "StatsReply"),
        0x85 => ("topology_response", "TopologyReply"),
        0x86 => ("reload_response", "ReloadReply"),
        KIND_ERROR => ("error", "ErrorReply"),
        other => panic!("no vector kind {other:#04x}"),
    }
}

fn minimal_event() -> Event {
    Event {
        event_id: "e-1".into(),
        timestamp_ms: 1_700_000_000_000,
        account_id: "a".into(),
        merchant_id: String::new(),
        amount_minor: 0,
        currency: "USD".into(),
        country: "US".into(),
        channel: String::new(),
        device_id: String::new(),
        // "No ip": JSON `null` or `""` is sent as 0.0.0.0.
        ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        mcc: 0,
        features: vec![],
        attributes: vec![],
    }
}

fn attr(name: &str, value: AttrValue) -> Attribute {
    Attribute {
        name: name.into(),
        value,
    }
}

fn str_attr(name: &str, value: &str) -> Attribute {
    attr(name, AttrValue::Str(value.into()))
}

/// Long (out-of-line) strings, features, every attribute kind, IPv4. Attribute names are in
/// sorted order, the order of the JSON form's object (see PROTOCOL.md, "JSON meaning").
fn full_event() -> Event {
    Event {
        event_id: "evt-2026-12-06-000000000001".into(),
        timestamp_ms: 1_765_000_000_123,
        account_id: "acct-42".into(),
        merchant_id: "merchant-7-lisbon".into(),
        amount_minor: 129_900,
        currency: "EUR".into(),
        country: "PT".into(),
        channel: "web".into(),
        device_id: "dev-0008".into(),
        ip: "203.0.113.9".parse().unwrap(),
        mcc: 5411,
        features: vec![0.12, 3.5, -1e300, -0.0, 5e-324],
        attributes: vec![
            attr("account_age_days", AttrValue::Num(12.0)),
            str_attr("email_domain", "example.com"),
            attr("first_purchase", AttrValue::Bool(true)),
            attr("is_vpn", AttrValue::Bool(false)),
            str_attr(
                "note",
                "a string attribute of exactly one hundred bytes, long enough to need the \
                 second length byte (100 B).",
            ),
            str_attr("tier", "gold"),
        ],
    }
}

/// IPv6, UTF-8, and the inline/out-of-line boundary: 8 bytes inline, 9 bytes out of line.
fn ipv6_event() -> Event {
    Event {
        event_id: "evt-0008".into(),
        timestamp_ms: 1_765_000_000_456,
        account_id: "acct-0009".into(),
        merchant_id: "café".into(),
        amount_minor: 9_223_372_036_854_775_807,
        currency: "JPY".into(),
        country: "JP".into(),
        channel: "app".into(),
        device_id: "d-ü".into(),
        ip: "2001:db8::1".parse().unwrap(),
        mcc: 9999,
        features: vec![1.0],
        attributes: vec![str_attr("city", "São Paulo")],
    }
}

fn batch_events() -> Vec<Event> {
    let mut first = test_event("batch-0001", "acct-1", 1_000);
    first.features = vec![0.5, -1.25];
    let mut second = test_event("batch-0002", "acct-2", 250);
    second.ip = "2001:db8:85a3::8a2e:370:7334".parse().unwrap();
    second.attributes = vec![
        attr("account_age_days", AttrValue::Num(3.0)),
        str_attr("email_domain", "mail.example.org"),
        attr("first_purchase", AttrValue::Bool(false)),
    ];
    let mut third = minimal_event();
    third.event_id = "batch-0003".into();
    third.account_id = "acct-3".into();
    vec![first, second, third]
}

fn decision() -> Decision {
    Decision {
        event_id: "evt-2026-12-06-000000000001".into(),
        action: Action::Review,
        score: 70,
        rules: vec!["big_foreign_purchase".into(), "risky_network".into()],
        shadow_rules: vec!["candidate_tighter_burst".into()],
        // Names in sorted order: the JSON form is an object keyed by name.
        models: vec![
            ModelScore {
                name: "fraud_gbdt".into(),
                score: 0.8125,
                error: false,
            },
            ModelScore {
                name: "fraud_lr".into(),
                score: 0.5,
                error: true,
            },
        ],
        epoch: 3,
        shard: 1,
        server_ns: 2875,
    }
}

fn batch_decisions() -> Vec<Decision> {
    vec![
        Decision {
            event_id: "batch-0001".into(),
            action: Action::Allow,
            score: 0,
            rules: vec![],
            shadow_rules: vec![],
            models: vec![],
            epoch: 1,
            shard: 0,
            server_ns: 1500,
        },
        Decision {
            event_id: "batch-0002".into(),
            action: Action::Deny,
            score: 120,
            rules: vec!["burst".into(), "ip_country_mismatch".into()],
            shadow_rules: vec![],
            models: vec![ModelScore {
                name: "fraud_lr".into(),
                score: 0.97,
                error: false,
            }],
            epoch: 1,
            shard: 1,
            server_ns: 1500,
        },
        Decision {
            event_id: "batch-0003".into(),
            action: Action::Allow,
            score: -10,
            rules: vec!["trusted".into()],
            shadow_rules: vec!["new_rule".into()],
            models: vec![],
            epoch: 1,
            shard: 1,
            server_ns: 1500,
        },
    ]
}

fn topology() -> TopologyReply {
    TopologyReply {
        shard_count: 2,
        shard: 0,
        routing: "fnv1a64-partitions".into(),
        address: "127.0.0.1".into(),
        port: 7400,
        shard_ports: vec![7401, 7402],
        cpus: vec![2, 3],
        partitions: 8,
        partition_shards: vec![0, 1, 0, 1, 0, 1, 0, 1],
    }
}

fn percentiles(base: u64) -> Percentiles {
    Percentiles {
        count: base,
        p50: base + 1,
        p90: base + 2,
        p99: base + 3,
        p999: base + 4,
        max: base + 5,
    }
}

fn shard_stats(shard: u32, cpu: u32) -> ShardStats {
    ShardStats {
        shard,
        cpu,
        epoch: 3,
        requests: 1000,
        responses: 1000,
        events: 1200,
        errors: 2,
        errors_by_code: vec![ErrorCount { code: 6, count: 2 }],
        bytes_in: 250_000,
        bytes_out: 120_000,
        connections_open: 4,
        connections_accepted: 9,
        connections_rejected: 1,
        tls_handshakes_failed: 0,
        mesh_events_sent: 17,
        mesh_events_decided: 5,
        mesh_events_recorded: 11,
        log_records: 1200,
        log_bytes_written: 393_216,
        log_fsyncs: 12,
        log_fsync_ns_total: 4_800_000,
        log_unlogged: 0,
        log_refused: 0,
        log_write_errors: 0,
        log_segments: 1,
        batch_requests: percentiles(100),
        batch_events: percentiles(200),
        latency_ns: percentiles(300),
        models: vec![ModelStats {
            name: "fraud_lr".into(),
            version: "1.0.0".into(),
            calls: 40,
            rows: 1200,
            traps: 0,
            timeouts: 1,
            errors: 0,
            exhausted_rows: 0,
            instances_ready: 2,
            call_ns: percentiles(400),
        }],
        rules: vec![
            RuleCount {
                name: "big_foreign_purchase".into(),
                shadow: false,
                fired: 31,
            },
            RuleCount {
                name: "candidate_tighter_burst".into(),
                shadow: true,
                fired: 7,
            },
        ],
        runtime: LoopStats {
            uptime_ns: 10_000_000_000,
            busy_ns: 1_000_000_000,
            io_poll_ns: 500_000_000,
            parked_ns: 8_500_000_000,
            batch_ns: percentiles(500),
            polls: 123_456,
            poll_ns_max: 80_000,
            stalls: 0,
            stall_threshold_ns: 500_000,
        },
        kernel: KernelStats {
            runq_delay_ns: percentiles(600),
            runq_delay_ns_log2: vec![0, 3, 1],
            io_uring_submits: 2000,
            io_uring_completions: 1990,
            tcp_retransmits: 0,
            softirqs: 42,
            softirq_ns: 84_000,
            syscall_ns: Percentiles::default(),
            syscall_ns_log2: vec![],
        },
    }
}

fn stats_reply() -> StatsReply {
    let mut total = shard_stats(u32::MAX, u32::MAX);
    total.errors_by_code = vec![];
    total.models = vec![];
    total.rules = vec![];
    StatsReply {
        shards: vec![shard_stats(0, 2)],
        total,
        probes: vec![
            ProbeState {
                group: "runqueue".into(),
                active: true,
                reason: String::new(),
            },
            ProbeState {
                group: "syscalls".into(),
                active: false,
                reason: "off in shards.toml ([probes] syscalls = false)".into(),
            },
        ],
    }
}

fn reload_reply() -> ReloadReply {
    ReloadReply {
        ok: false,
        epoch: 3,
        rules_path: "candidate.rules".into(),
        rules: 0,
        digest: String::new(),
        compile_us: 900,
        errors: vec![
            "candidate.rules:4:7: error: unknown function `cnt`\n  when cnt(account, 10m) > 5\n       ^\n"
                .into(),
        ],
        models: vec!["fraud_lr@1.0.0 (452cde2ec172)".into()],
        swap_us: 0,
    }
}

fn vectors() -> Vec<Vector> {
    vec![
        Vector {
            name: "ping_request",
            description: "ping: a header alone, empty payload",
            kind: PING,
            id: 1,
            payload: Payload::Empty,
        },
        Vector {
            name: "ping_response",
            description: "the answer to ping_request: kind 0x81, same id, empty payload",
            kind: PING | RESPONSE,
            id: 1,
            payload: Payload::Empty,
        },
        Vector {
            name: "evaluate_minimal",
            description: "evaluate: the smallest valid event; every string inline (empty or \
                          short), no ip (0.0.0.0), no features, no attributes",
            kind: EVALUATE,
            id: 2,
            payload: Payload::Event(minimal_event()),
        },
        Vector {
            name: "evaluate_full",
            description: "evaluate: out-of-line strings (9..100 bytes), five features, every \
                          attribute kind (string inline and out of line, number, true, false), \
                          IPv4; the id shows the header's byte order",
            kind: EVALUATE,
            id: 0x0102_0304_0506,
            payload: Payload::Event(full_event()),
        },
        Vector {
            name: "evaluate_ipv6",
            description: "evaluate: IPv6, multi-byte UTF-8, an 8-byte (inline) event_id and a \
                          9-byte (out-of-line) account_id, amount_minor = i64::MAX",
            kind: EVALUATE,
            id: 3,
            payload: Payload::Event(ipv6_event()),
        },
        Vector {
            name: "evaluate_batch_3",
            description: "evaluate-batch of three events (IPv4 with features; IPv6 with \
                          attributes; a minimal one)",
            kind: EVALUATE_BATCH,
            id: 4,
            payload: Payload::EvaluateBatch(EvaluateBatch {
                events: batch_events(),
            }),
        },
        Vector {
            name: "decision",
            description: "the answer to an evaluate: fired rules, a shadow rule, two models, \
                          one of which failed (error = true, listed in model_errors)",
            kind: EVALUATE | RESPONSE,
            id: 0x0102_0304_0506,
            payload: Payload::Decision(decision()),
        },
        Vector {
            name: "decision_batch",
            description: "the answer to evaluate_batch_3: three decisions in request order \
                          (one with empty lists, a negative score)",
            kind: EVALUATE_BATCH | RESPONSE,
            id: 4,
            payload: Payload::DecisionBatch(DecisionBatch {
                decisions: batch_decisions(),
            }),
        },
        Vector {
            name: "error_bad_field",
            description: "error frame (kind 0xFF): code 6 bad_field, the message names the field",
            kind: KIND_ERROR,
            id: 7,
            payload: Payload::Error(ErrorReply {
                code: ErrorCode::BadField as u16,
                message: "field `currency` must be a three-letter ISO 4217 code in capitals".into(),
            }),
        },
        Vector {
            name: "error_empty_message",
            description: "error frame: code 8 overloaded with id 0 (a refused connection) and \
                          an empty message (inline: all 0xFF)",
            kind: KIND_ERROR,
            id: 0,
            payload: Payload::Error(ErrorReply {
                code: ErrorCode::Overloaded as u16,
                message: String::new(),
            }),
        },
        Vector {
            name: "topology_request",
            description: "topology: empty payload",
            kind: TOPOLOGY,
            id: 5,
            payload: Payload::Empty,
        },
        Vector {
            name: "topology_reply",
            description: "topology reply: two shards, eight partitions (a real server has \
                          4096 by default)",
            kind: TOPOLOGY | RESPONSE,
            id: 5,
            payload: Payload::Topology(topology()),
        },
        Vector {
            name: "stats_request",
            description: "stats: empty payload",
            kind: STATS,
            id: 6,
            payload: Payload::Empty,
        },
        Vector {
            name: "stats_reply",
            description: "stats reply: one shard, the total (shard and cpu = u32::MAX), two \
                          probe groups",
            kind: STATS | RESPONSE,
            id: 6,
            payload: Payload::Stats(Box::new(stats_reply())),
        },
        Vector {
            name: "reload_request",
            description: "reload (kind 0x06; refused with error 11 unless [admin] wire_reload)",
            kind: RELOAD,
            id: 9,
            payload: Payload::ReloadRequest(ReloadRequest {
                rules_path: "candidate.rules".into(),
            }),
        },
        Vector {
            name: "reload_reply",
            description: "reload reply: not published, one multi-line compile error",
            kind: RELOAD | RESPONSE,
            id: 9,
            payload: Payload::ReloadReply(reload_reply()),
        },
    ]
}

// ---- encoding, as the clients and the server do it ----

fn push<T>(out: &mut AlignedVec<FRAME_ALIGN>, kind: u8, id: u64, value: &T)
where
    T: for<'a, 'b> rkyv::Serialize<frame::PayloadSerializer<'a, 'b>>,
{
    FrameEncoder::new().push(out, kind, id, value).unwrap();
}

fn encode(v: &Vector) -> Vec<u8> {
    let mut out = AlignedVec::<FRAME_ALIGN>::new();
    let (kind, id) = (v.kind, v.id);
    match &v.payload {
        Payload::Empty => FrameEncoder::new().push_empty(&mut out, kind, id),
        Payload::Event(x) => push(&mut out, kind, id, x),
        Payload::EvaluateBatch(x) => push(&mut out, kind, id, x),
        Payload::Decision(x) => push(&mut out, kind, id, x),
        Payload::DecisionBatch(x) => push(&mut out, kind, id, x),
        Payload::Error(x) => push(&mut out, kind, id, x),
        Payload::Topology(x) => push(&mut out, kind, id, x),
        Payload::Stats(x) => push(&mut out, kind, id, &**x),
        Payload::ReloadRequest(x) => push(&mut out, kind, id, x),
        Payload::ReloadReply(x) => push(&mut out, kind, id, x),
    }
    out.to_vec()
}

/// The server answers with borrowed views, not owned values: the same bytes.
fn encode_as_server(v: &Vector) -> Option<Vec<u8>> {
    let mut out = AlignedVec::<FRAME_ALIGN>::new();
    match &v.payload {
        Payload::Decision(d) => {
            let (rules, shadow, models) = view_parts(d);
            push(
                &mut out,
                v.kind,
                v.id,
                &view_of(d, &rules, &shadow, &models),
            );
        }
        Payload::DecisionBatch(b) => {
            let parts: Vec<_> = b.decisions.iter().map(view_parts).collect();
            let views: Vec<DecisionView<'_>> = b
                .decisions
                .iter()
                .zip(&parts)
                .map(|(d, (r, s, m))| view_of(d, r, s, m))
                .collect();
            let batch = DecisionBatchView {
                decisions: SliceView(&views),
            };
            push(&mut out, v.kind, v.id, &batch);
        }
        Payload::Error(e) => {
            let view = ErrorReplyView {
                code: e.code,
                message: StrView(&e.message),
            };
            push(&mut out, v.kind, v.id, &view);
        }
        _ => return None,
    }
    Some(out.to_vec())
}

type ViewParts<'a> = (Vec<StrView<'a>>, Vec<StrView<'a>>, Vec<ModelScoreView<'a>>);

fn view_parts(d: &Decision) -> ViewParts<'_> {
    (
        d.rules.iter().map(|s| StrView(s)).collect(),
        d.shadow_rules.iter().map(|s| StrView(s)).collect(),
        d.models
            .iter()
            .map(|m| ModelScoreView {
                name: StrView(&m.name),
                score: m.score,
                error: m.error,
            })
            .collect(),
    )
}

fn view_of<'a>(
    d: &'a Decision,
    rules: &'a [StrView<'a>],
    shadow: &'a [StrView<'a>],
    models: &'a [ModelScoreView<'a>],
) -> DecisionView<'a> {
    DecisionView {
        event_id: StrView(&d.event_id),
        action: d.action,
        score: d.score,
        rules: SliceView(rules),
        shadow_rules: SliceView(shadow),
        models: SliceView(models),
        epoch: d.epoch,
        shard: d.shard,
        server_ns: d.server_ns,
    }
}

// ---- decoding, as the clients do it ----

fn decode(bytes: &[u8]) -> (u8, u64, Payload) {
    let head: &[u8; HEADER_LEN] = bytes.first_chunk().expect("a header");
    let header = parse_header(head, u32::MAX).expect("a valid header");
    assert_eq!(bytes.len(), header.frame_len(), "one whole frame");
    assert!(
        bytes[HEADER_LEN + header.len as usize..]
            .iter()
            .all(|&b| b == 0),
        "padding is zeros"
    );
    // Validation needs the payload 16-aligned, as in a receive buffer.
    let mut payload = AlignedVec::<FRAME_ALIGN>::new();
    payload.extend_from_slice(&bytes[HEADER_LEN..HEADER_LEN + header.len as usize]);
    fn de<T>(p: &[u8]) -> T
    where
        T: rkyv::Archive,
        T::Archived: for<'a> rkyv::bytecheck::CheckBytes<
                rkyv::api::high::HighValidator<'a, rkyv::rancor::Error>,
            > + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rkyv::rancor::Error>>,
    {
        rkyv::from_bytes::<T, rkyv::rancor::Error>(p).expect("payload validates")
    }
    let p = &payload[..];
    let value = match kind_info(header.kind).1 {
        "empty" => {
            assert!(p.is_empty(), "empty payload");
            Payload::Empty
        }
        "Event" => Payload::Event(de(p)),
        "EvaluateBatch" => Payload::EvaluateBatch(de(p)),
        "Decision" => Payload::Decision(de(p)),
        "DecisionBatch" => Payload::DecisionBatch(de(p)),
        "ErrorReply" => Payload::Error(de(p)),
        "TopologyReply" => Payload::Topology(de(p)),
        "StatsReply" => Payload::Stats(Box::new(de(p))),
        "ReloadRequest" => Payload::ReloadRequest(de(p)),
        "ReloadReply" => Payload::ReloadReply(de(p)),
        other => unreachable!("{other}"),
    };
    (header.kind, header.id, value)
}

// ---- the JSON meaning ----

fn percentiles_json(p: &Percentiles) -> Value {
    json!({
        "count": p.count, "p50": p.p50, "p90": p.p90, "p99": p.p99, "p999": p.p999, "max": p.max,
    })
}

fn shard_stats_json(s: &ShardStats) -> Value {
    let r = &s.runtime;
    let k = &s.kernel;
    json!({
        "shard": s.shard,
        "cpu": s.cpu,
        "epoch": s.epoch,
        "requests": s.requests,
        "responses": s.responses,
        "events": s.events,
        "errors": s.errors,
        "errors_by_code": s.errors_by_code.iter()
            .map(|e| json!({"code": e.code, "count": e.count})).collect::<Vec<_>>(),
        "bytes_in": s.bytes_in,
        "bytes_out": s.bytes_out,
        "connections_open": s.connections_open,
        "connections_accepted": s.connections_accepted,
        "connections_rejected": s.connections_rejected,
        "tls_handshakes_failed": s.tls_handshakes_failed,
        "mesh_events_sent": s.mesh_events_sent,
        "mesh_events_decided": s.mesh_events_decided,
        "mesh_events_recorded": s.mesh_events_recorded,
        "log_records": s.log_records,
        "log_bytes_written": s.log_bytes_written,
        "log_fsyncs": s.log_fsyncs,
        "log_fsync_ns_total": s.log_fsync_ns_total,
        "log_unlogged": s.log_unlogged,
        "log_refused": s.log_refused,
        "log_write_errors": s.log_write_errors,
        "log_segments": s.log_segments,
        "batch_requests": percentiles_json(&s.batch_requests),
        "batch_events": percentiles_json(&s.batch_events),
        "latency_ns": percentiles_json(&s.latency_ns),
        "models": s.models.iter().map(|m| json!({
            "name": m.name,
            "version": m.version,
            "calls": m.calls,
            "rows": m.rows,
            "traps": m.traps,
            "timeouts": m.timeouts,
            "errors": m.errors,
            "exhausted_rows": m.exhausted_rows,
            "instances_ready": m.instances_ready,
            "call_ns": percentiles_json(&m.call_ns),
        })).collect::<Vec<_>>(),
        "rules": s.rules.iter()
            .map(|r| json!({"name": r.name, "shadow": r.shadow, "fired": r.fired}))
            .collect::<Vec<_>>(),
        "runtime": {
            "uptime_ns": r.uptime_ns,
            "busy_ns": r.busy_ns,
            "io_poll_ns": r.io_poll_ns,
            "parked_ns": r.parked_ns,
            "batch_ns": percentiles_json(&r.batch_ns),
            "polls": r.polls,
            "poll_ns_max": r.poll_ns_max,
            "stalls": r.stalls,
            "stall_threshold_ns": r.stall_threshold_ns,
        },
        "kernel": {
            "runq_delay_ns": percentiles_json(&k.runq_delay_ns),
            "runq_delay_ns_log2": k.runq_delay_ns_log2,
            "io_uring_submits": k.io_uring_submits,
            "io_uring_completions": k.io_uring_completions,
            "tcp_retransmits": k.tcp_retransmits,
            "softirqs": k.softirqs,
            "softirq_ns": k.softirq_ns,
            "syscall_ns": percentiles_json(&k.syscall_ns),
            "syscall_ns_log2": k.syscall_ns_log2,
        },
    })
}

fn payload_json(p: &Payload) -> Value {
    match p {
        Payload::Empty => Value::Null,
        Payload::Event(e) => event_to_json(e),
        Payload::EvaluateBatch(b) => {
            json!({"events": b.events.iter().map(event_to_json).collect::<Vec<_>>()})
        }
        Payload::Decision(d) => decision_to_json(d),
        Payload::DecisionBatch(b) => {
            json!({"decisions": b.decisions.iter().map(decision_to_json).collect::<Vec<_>>()})
        }
        Payload::Error(e) => json!({"code": e.code, "message": e.message}),
        Payload::Topology(t) => verdict_net::json::topology_to_json(t),
        Payload::Stats(s) => json!({
            "shards": s.shards.iter().map(shard_stats_json).collect::<Vec<_>>(),
            "total": shard_stats_json(&s.total),
            "probes": s.probes.iter()
                .map(|p| json!({"group": p.group, "active": p.active, "reason": p.reason}))
                .collect::<Vec<_>>(),
        }),
        Payload::ReloadRequest(r) => json!({"rules_path": r.rules_path}),
        Payload::ReloadReply(r) => json!({
            "ok": r.ok,
            "epoch": r.epoch,
            "rules_path": r.rules_path,
            "rules": r.rules,
            "digest": r.digest,
            "compile_us": r.compile_us,
            "errors": r.errors,
            "models": r.models,
            "swap_us": r.swap_us,
        }),
    }
}

fn vector_json(v: &Vector) -> Value {
    let (kind_name, payload_type) = kind_info(v.kind);
    json!({
        "description": v.description,
        "kind": v.kind,
        "kind_name": kind_name,
        "id": v.id,
        "payload_type": payload_type,
        "payload": payload_json(&v.payload),
    })
}

// ---- the files ----

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors")
}

fn first_difference(a: &[u8], b: &[u8]) -> String {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => format!(
            "first difference at byte {i}: {:#04x} vs {:#04x}",
            a[i], b[i]
        ),
        None => format!("lengths {} vs {}", a.len(), b.len()),
    }
}

#[test]
fn vectors_match_the_committed_files() {
    let dir = vectors_dir();
    for v in vectors() {
        let bytes = encode(&v);
        let bin = std::fs::read(dir.join(format!("{}.bin", v.name)))
            .unwrap_or_else(|e| panic!("{}.bin: {e} (run write_vectors)", v.name));
        assert!(
            bin == bytes,
            "{}.bin differs from the encoder's bytes: {}",
            v.name,
            first_difference(&bin, &bytes)
        );
        if let Some(server) = encode_as_server(&v) {
            assert!(
                server == bytes,
                "{}: the server's views encode differently",
                v.name
            );
        }

        let (kind, id, value) = decode(&bin);
        assert_eq!((kind, id), (v.kind, v.id), "{}", v.name);
        assert_eq!(value, v.payload, "{}: decoded value", v.name);

        let text = std::fs::read_to_string(dir.join(format!("{}.json", v.name))).unwrap();
        let meaning: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(meaning, vector_json(&v), "{}.json", v.name);
        if let Payload::Event(e) = &v.payload {
            // The JSON form is exactly what `verdict send` reads.
            let back = event_from_json(&meaning["payload"].to_string()).unwrap();
            assert_eq!(&back, e, "{}: JSON form parses back", v.name);
        }
        if let Payload::EvaluateBatch(b) = &v.payload {
            for (k, e) in b.events.iter().enumerate() {
                let back = event_from_json(&meaning["payload"]["events"][k].to_string()).unwrap();
                assert_eq!(&back, e, "{}: event {k}", v.name);
            }
        }
    }
}

#[test]
fn every_file_is_a_vector() {
    let names: Vec<&str> = vectors().iter().map(|v| v.name).collect();
    for entry in std::fs::read_dir(vectors_dir()).unwrap() {
        let path = entry.unwrap().path();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ext == "bin" || ext == "json" {
            let stem = path.file_stem().unwrap().to_str().unwrap();
            assert!(names.contains(&stem), "{} is no vector", path.display());
        }
    }
}

#[test]
fn events_in_the_vectors_pass_the_servers_field_checks() {
    let mut events = vec![minimal_event(), full_event(), ipv6_event()];
    events.extend(batch_events());
    for e in events {
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&e).unwrap();
        let archived = rkyv::access::<ArchivedEvent, rkyv::rancor::Error>(&bytes).unwrap();
        assert_eq!(validate::validate_event(archived), Ok(()), "{}", e.event_id);
    }
}

/// `cargo test -p verdict-net --test vectors -- --ignored write_vectors`
#[test]
#[ignore = "rewrites net/vectors/; run after a deliberate schema change"]
fn write_vectors() {
    let dir = vectors_dir();
    std::fs::create_dir_all(&dir).unwrap();
    for v in vectors() {
        std::fs::write(dir.join(format!("{}.bin", v.name)), encode(&v)).unwrap();
        let text = serde_json::to_string_pretty(&vector_json(&v)).unwrap() + "\n";
        std::fs::write(dir.join(format!("{}.json", v.name)), text).unwrap();
    }
}

/// `net/vectors/check.py` decodes every `.bin` and re-encodes every `.json` with the Python
/// client's codec (written from PROTOCOL.md); it needs only a system `python3` (3.11,
/// standard library).
#[test]
fn python_checker_agrees() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = std::process::Command::new("python3")
        .arg(manifest.join("vectors").join("check.py"))
        .arg(vectors_dir())
        .current_dir(manifest)
        .output()
        .expect("python3 runs (the checker needs a system python3)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "check.py failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains(&format!("{} vectors ok", vectors().len())),
        "check.py did not check every vector:\n{stdout}"
    );
}

// ---- the layout PROTOCOL.md tabulates ----

macro_rules! layout {
    ($t:ty, size $size:expr, align $align:expr $(, $field:ident @ $off:expr)* $(,)?) => {{
        assert_eq!(size_of::<$t>(), $size, "size of {}", stringify!($t));
        assert_eq!(align_of::<$t>(), $align, "alignment of {}", stringify!($t));
        $(assert_eq!(offset_of!($t, $field), $off, "{}.{}", stringify!($t), stringify!($field));)*
    }};
}

#[test]
fn archived_layout_is_the_documented_one() {
    use rkyv::{net::ArchivedIpAddr, string::ArchivedString, vec::ArchivedVec};
    layout!(ArchivedString, size 8, align 4);
    layout!(ArchivedVec<u8>, size 8, align 4);
    layout!(ArchivedVec<u64>, size 8, align 4);
    layout!(ArchivedIpAddr, size 17, align 1);
    layout!(ArchivedAction, size 1, align 1);
    layout!(ArchivedAttrValue, size 16, align 8);
    layout!(ArchivedEvent, size 112, align 8,
        event_id @ 0, timestamp_ms @ 8, account_id @ 16, merchant_id @ 24, amount_minor @ 32,
        currency @ 40, country @ 48, channel @ 56, device_id @ 64, ip @ 72, mcc @ 90,
        features @ 92, attributes @ 100);
    layout!(ArchivedAttribute, size 24, align 8, name @ 0, value @ 8);
    layout!(ArchivedEvaluateBatch, size 8, align 4, events @ 0);
    layout!(ArchivedModelScore, size 24, align 8, name @ 0, score @ 8, error @ 16);
    layout!(ArchivedDecision, size 64, align 8,
        event_id @ 0, action @ 8, score @ 12, rules @ 16, shadow_rules @ 24, models @ 32,
        epoch @ 40, shard @ 48, server_ns @ 56);
    layout!(ArchivedDecisionBatch, size 8, align 4, decisions @ 0);
    layout!(ArchivedErrorReply, size 12, align 4, code @ 0, message @ 4);
    layout!(ArchivedTopologyReply, size 56, align 4,
        shard_count @ 0, shard @ 4, routing @ 8, address @ 16, port @ 24, shard_ports @ 28,
        cpus @ 36, partitions @ 44, partition_shards @ 48);
    layout!(ArchivedReloadRequest, size 8, align 4, rules_path @ 0);
    layout!(ArchivedReloadReply, size 72, align 8,
        ok @ 0, epoch @ 8, rules_path @ 16, rules @ 24, digest @ 28, compile_us @ 40,
        errors @ 48, models @ 56, swap_us @ 64);
    layout!(ArchivedClusterTopology, size 48, align 8,
        map_epoch @ 0, routing @ 8, partitions @ 16, nodes @ 20, partition_nodes @ 28,
        partition_shards @ 36);
    layout!(ArchivedClusterNode, size 24, align 4, name @ 0, address @ 8, shard_ports @ 16);
    layout!(ArchivedPeerRecord, size 40, align 8,
        from @ 0, map_epoch @ 8, digest @ 16, events @ 24, keys @ 32);
    layout!(ArchivedPeerRecorded, size 8, align 4, values @ 0);
    layout!(ArchivedPeerDecided, size 8, align 4, outcomes @ 0);
    layout!(ArchivedPeerOutcome, size 72, align 8);
    layout!(ArchivedPercentiles, size 48, align 8,
        count @ 0, p50 @ 8, p90 @ 16, p99 @ 24, p999 @ 32, max @ 40);
    layout!(ArchivedErrorCount, size 16, align 8, code @ 0, count @ 8);
    layout!(ArchivedModelStats, size 120, align 8,
        name @ 0, version @ 8, calls @ 16, rows @ 24, traps @ 32, timeouts @ 40, errors @ 48,
        exhausted_rows @ 56, instances_ready @ 64, call_ns @ 72);
    layout!(ArchivedRuleCount, size 24, align 8, name @ 0, shadow @ 8, fired @ 16);
    layout!(ArchivedLoopStats, size 112, align 8,
        uptime_ns @ 0, busy_ns @ 8, io_poll_ns @ 16, parked_ns @ 24, batch_ns @ 32,
        polls @ 80, poll_ns_max @ 88, stalls @ 96, stall_threshold_ns @ 104);
    layout!(ArchivedKernelStats, size 152, align 8,
        runq_delay_ns @ 0, runq_delay_ns_log2 @ 48, io_uring_submits @ 56,
        io_uring_completions @ 64, tcp_retransmits @ 72, softirqs @ 80, softirq_ns @ 88,
        syscall_ns @ 96, syscall_ns_log2 @ 144);
    layout!(ArchivedShardStats, size 616, align 8,
        shard @ 0, cpu @ 4, epoch @ 8, requests @ 16, responses @ 24, events @ 32,
        errors @ 40, errors_by_code @ 48, bytes_in @ 56, bytes_out @ 64,
        connections_open @ 72, connections_accepted @ 80, connections_rejected @ 88,
        tls_handshakes_failed @ 96, mesh_events_sent @ 104, mesh_events_decided @ 112,
        mesh_events_recorded @ 120, log_records @ 128, log_bytes_written @ 136,
        log_fsyncs @ 144, log_fsync_ns_total @ 152, log_unlogged @ 160, log_refused @ 168,
        log_write_errors @ 176, log_segments @ 184, batch_requests @ 192,
        batch_events @ 240, latency_ns @ 288, models @ 336, rules @ 344, runtime @ 352,
        kernel @ 464);
    layout!(ArchivedProbeState, size 20, align 4, group @ 0, active @ 8, reason @ 12);
    layout!(ArchivedStatsReply, size 632, align 8, shards @ 0, total @ 8, probes @ 624);
}

/// `PeerOutcome`'s variants sit where PROTOCOL.md says: `Decided` (tag 0) at offset 8,
/// `Refused` (tag 1) at offset 4.
#[test]
fn peer_outcome_variants_are_where_documented() {
    let refused = PeerOutcome::Refused(ErrorReply {
        code: 9,
        message: "x".into(),
    });
    let b = rkyv::to_bytes::<rkyv::rancor::Error>(&refused).unwrap();
    assert_eq!(b.len(), 72);
    assert_eq!(b[0], 1);
    assert_eq!(&b[4..6], &9u16.to_le_bytes());
    assert_eq!(b[8], b'x', "the message, inline at 4 + 4");
    let decided = PeerOutcome::Decided(Decision {
        event_id: "e".into(),
        action: Action::Deny,
        score: 3,
        rules: vec![],
        shadow_rules: vec![],
        models: vec![],
        epoch: 1,
        shard: 2,
        server_ns: 5,
    });
    let b = rkyv::to_bytes::<rkyv::rancor::Error>(&decided).unwrap();
    assert_eq!(b.len(), 72);
    assert_eq!(b[0], 0);
    assert_eq!(b[8], b'e', "the decision's event_id, inline at 8");
    assert_eq!(b[16], 2, "action deny at 8 + 8");
    assert_eq!(&b[56..60], &2u32.to_le_bytes(), "shard at 8 + 48");
}

/// The bit-level facts PROTOCOL.md states about rkyv's format, checked on real archives.
#[test]
fn rkyv_format_facts() {
    // A root struct sits at the end of the buffer; relative pointers count from their own
    // position; a string of 8 bytes is inline (padded with 0xFF when shorter), 9 out of line.
    let reply = ErrorReply {
        code: 6,
        message: "123456789".into(),
    };
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&reply).unwrap();
    assert_eq!(
        &bytes[..],
        &[
            b'1', b'2', b'3', b'4', b'5', b'6', b'7', b'8', b'9', 0, 0, 0, // string + pad
            6, 0, 0, 0, // code (u16) + 2 padding bytes before the 4-aligned string
            0x89, 0, 0, 0, // out of line, length 9: 0x80 | 9
            0xF0, 0xFF, 0xFF, 0xFF, // offset -16 from byte 16: the bytes at 0
        ][..]
    );
    let inline = ErrorReply {
        code: 6,
        message: "abc".into(),
    };
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&inline).unwrap();
    assert_eq!(
        &bytes[..],
        &[6, 0, 0, 0, b'a', b'b', b'c', 0xFF, 0xFF, 0xFF, 0xFF, 0xFF][..]
    );
    // Lengths of 64 and more: the low six bits, then the 10 marker, then the rest shifted.
    let long = ErrorReply {
        code: 6,
        message: "x".repeat(100),
    };
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&long).unwrap();
    let n = bytes.len();
    assert_eq!(&bytes[n - 8..n - 4], &[0xA4, 0x01, 0, 0]);
}

/// The validation rules PROTOCOL.md section 5 states, checked against rkyv's validator on
/// variants of `topology_reply`'s payload (routing's 18 bytes at 0, address's 9 at 18, one
/// padding byte, the vectors' elements at 28.., the 56-byte root at 56).
#[test]
fn validation_rules_of_protocol_md() {
    let v = vectors()
        .into_iter()
        .find(|v| v.name == "topology_reply")
        .unwrap();
    let frame = encode(&v);
    let original = frame[HEADER_LEN..HEADER_LEN + 112].to_vec();
    let root = 56;
    let (routing, address, shard_ports, cpus) = (root + 8, root + 16, root + 28, root + 36);
    let set_i32 = |p: &mut Vec<u8>, at: usize, value: i32| {
        p[at..at + 4].copy_from_slice(&value.to_le_bytes());
    };
    let check = |p: &[u8]| {
        let mut aligned = AlignedVec::<FRAME_ALIGN>::new();
        aligned.extend_from_slice(p);
        rkyv::from_bytes::<TopologyReply, rkyv::rancor::Error>(&aligned)
    };
    assert_eq!(check(&original).unwrap(), topology());

    // Another layout is acceptable too: the gap before the address instead of after it.
    let mut gap_first = original.clone();
    gap_first.copy_within(18..27, 19);
    gap_first[18] = 0;
    // (an out-of-line string's offset counts from the string's own position)
    set_i32(&mut gap_first, address + 4, 19 - address as i32);
    assert_eq!(check(&gap_first).unwrap(), topology());

    // Out of order: the address's bytes before the routing's (checked first) are rejected.
    let mut swapped = original.clone();
    swapped[0..9].copy_from_slice(b"127.0.0.1");
    swapped[9..27].copy_from_slice(b"fnv1a64-partitions");
    set_i32(&mut swapped, routing + 4, 9 - routing as i32);
    set_i32(&mut swapped, address + 4, -(address as i32));
    assert!(check(&swapped).is_err(), "claims out of order");

    // Overlapping: the address pointing into the routing's bytes.
    let mut overlap = original.clone();
    set_i32(&mut overlap, address + 4, -(address as i32));
    assert!(check(&overlap).is_err(), "overlapping claims");

    // A string of 8 bytes or fewer written out of line.
    let mut short = original.clone();
    short[address] = 0x88;
    assert!(check(&short).is_err(), "short string out of line");

    // A vector's elements off their alignment.
    let mut misaligned = original.clone();
    set_i32(&mut misaligned, cpus, 34 - cpus as i32);
    assert!(
        check(&misaligned).is_err(),
        "u32 elements at a 2-aligned position"
    );

    // Pointing past the object that holds the pointer (data must come before its owner).
    let mut forward = original.clone();
    set_i32(&mut forward, shard_ports, 0);
    assert!(
        check(&forward).is_err(),
        "a vector pointing at itself with 2 elements"
    );

    // The root is found at the end: trailing bytes inside `len` make it unreadable.
    let mut trailing = original.clone();
    trailing.extend_from_slice(&[0; 8]);
    assert!(check(&trailing).map(|t| t != topology()).unwrap_or(true));
}

// ---- random values through the Python checker ----

/// Text of `len` pieces, some multi-byte, so byte lengths cross the 8-byte inline limit in
/// every way.
fn random_text(rng: &mut fastrand::Rng, max_pieces: usize) -> String {
    const PIECES: [&str; 8] = ["a", "Z", "0", "-", "é", "ü", "✓", "😀"];
    let n = if rng.u8(..10) == 0 {
        rng.usize(..=max_pieces * 8)
    } else {
        rng.usize(..=max_pieces)
    };
    (0..n).map(|_| PIECES[rng.usize(..PIECES.len())]).collect()
}

fn random_f64(rng: &mut fastrand::Rng) -> f64 {
    match rng.u8(..6) {
        0 => 0.0,
        1 => -0.0,
        2 => f64::from_bits(rng.u64(..0x7FF0_0000_0000_0000)),
        3 => -f64::from_bits(rng.u64(..0x7FF0_0000_0000_0000)),
        4 => rng.i32(..) as f64,
        _ => rng.f64(),
    }
}

fn random_event(rng: &mut fastrand::Rng) -> Event {
    // Unique names in sorted order: the JSON form is an object with sorted keys.
    let mut names: Vec<String> = (0..rng.usize(..6))
        .map(|_| random_text(rng, 12))
        .filter(|n| !n.is_empty())
        .collect();
    names.sort();
    names.dedup();
    Event {
        event_id: random_text(rng, 12),
        timestamp_ms: rng.u64(..),
        account_id: random_text(rng, 12),
        merchant_id: random_text(rng, 12),
        amount_minor: rng.i64(..),
        currency: random_text(rng, 4),
        country: random_text(rng, 3),
        channel: random_text(rng, 10),
        device_id: random_text(rng, 12),
        ip: match rng.u8(..3) {
            0 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            1 => IpAddr::V4(rng.u32(..).into()),
            _ => IpAddr::V6(rng.u128(..).into()),
        },
        mcc: rng.u16(..),
        features: (0..rng.usize(..5)).map(|_| random_f64(rng)).collect(),
        attributes: names
            .into_iter()
            .map(|name| Attribute {
                name,
                value: match rng.u8(..3) {
                    0 => AttrValue::Str(random_text(rng, 12)),
                    1 => AttrValue::Num(random_f64(rng)),
                    _ => AttrValue::Bool(rng.bool()),
                },
            })
            .collect(),
    }
}

fn random_strings(rng: &mut fastrand::Rng, max: usize) -> Vec<String> {
    (0..rng.usize(..=max))
        .map(|_| random_text(rng, 12))
        .collect()
}

fn random_decision(rng: &mut fastrand::Rng) -> Decision {
    let mut names = random_strings(rng, 3);
    names.sort();
    names.dedup();
    Decision {
        event_id: random_text(rng, 12),
        action: [Action::Allow, Action::Review, Action::Deny][rng.usize(..3)],
        score: rng.i32(..),
        rules: random_strings(rng, 4),
        shadow_rules: random_strings(rng, 2),
        models: names
            .into_iter()
            .map(|name| ModelScore {
                name,
                score: random_f64(rng),
                error: rng.bool(),
            })
            .collect(),
        epoch: rng.u64(..),
        shard: rng.u32(..),
        server_ns: rng.u64(..),
    }
}

fn random_vector(rng: &mut fastrand::Rng) -> Vector {
    let id = rng.u64(..1 << 53);
    let (kind, payload) = match rng.u8(..7) {
        0 => (EVALUATE, Payload::Event(random_event(rng))),
        1 => (
            EVALUATE_BATCH,
            Payload::EvaluateBatch(EvaluateBatch {
                events: (0..rng.usize(1..4)).map(|_| random_event(rng)).collect(),
            }),
        ),
        2 => (EVALUATE | RESPONSE, Payload::Decision(random_decision(rng))),
        3 => (
            EVALUATE_BATCH | RESPONSE,
            Payload::DecisionBatch(DecisionBatch {
                decisions: (0..rng.usize(..4)).map(|_| random_decision(rng)).collect(),
            }),
        ),
        4 => (
            KIND_ERROR,
            Payload::Error(ErrorReply {
                code: rng.u16(..),
                message: random_text(rng, 40),
            }),
        ),
        5 => (
            TOPOLOGY | RESPONSE,
            Payload::Topology(TopologyReply {
                shard_count: rng.u32(..),
                shard: rng.u32(..),
                routing: random_text(rng, 20),
                address: random_text(rng, 12),
                port: rng.u16(..),
                shard_ports: (0..rng.usize(..5)).map(|_| rng.u16(..)).collect(),
                cpus: (0..rng.usize(..5)).map(|_| rng.u32(..)).collect(),
                partitions: rng.u32(..),
                partition_shards: (0..rng.usize(..9)).map(|_| rng.u16(..)).collect(),
            }),
        ),
        _ => (
            RELOAD | RESPONSE,
            Payload::ReloadReply(ReloadReply {
                ok: rng.bool(),
                epoch: rng.u64(..),
                rules_path: random_text(rng, 20),
                rules: rng.u32(..),
                digest: random_text(rng, 12),
                compile_us: rng.u64(..),
                errors: random_strings(rng, 3),
                models: random_strings(rng, 3),
                swap_us: rng.u64(..),
            }),
        ),
    };
    Vector {
        name: "random",
        description: "random",
        kind,
        id,
        payload,
    }
}

/// 500 seeded random values (every kind of string length, UTF-8, empty and non-empty
/// vectors, IPv4/IPv6, any f64 bit pattern that JSON can carry), written as vectors to a
/// scratch directory: check.py must decode and re-encode each byte for byte.
#[test]
fn python_checker_agrees_on_random_values() {
    const COUNT: usize = 500;
    let dir = std::env::temp_dir().join(format!("verdict-net-vectors-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = fastrand::Rng::with_seed(0x5644_0001);
    for i in 0..COUNT {
        let v = random_vector(&mut rng);
        let bytes = encode(&v);
        assert_eq!(decode(&bytes).2, v.payload, "random {i} decodes back");
        std::fs::write(dir.join(format!("random_{i:03}.bin")), bytes).unwrap();
        let text = serde_json::to_string(&vector_json(&v)).unwrap();
        std::fs::write(dir.join(format!("random_{i:03}.json")), text).unwrap();
    }
    let output = std::process::Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors/check.py"))
        .arg(&dir)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains(&format!("{COUNT} vectors ok")),
        "check.py on random values in {} ({}):\n{stdout}\n{stderr}",
        dir.display(),
        output.status
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
