//! End-to-end: `verdict serve` with two shards on loopback, spoken to in frames.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{Raw, Server, client, event, event_on, raw_frame, topology};
use verdict_net::frame::{MAGIC, encode_header};
use verdict_net::{Action, ErrorCode, EvaluateBatch, Kind, routing};

#[test]
fn ping_answers_on_the_shared_port_and_on_every_shard_port() {
    let server = Server::start();
    server.client().ping().unwrap();
    for shard in 0..2 {
        let mut c = client(&server.shard_addr(shard));
        c.ping().unwrap();
        let topo = c.topology().unwrap();
        assert_eq!(
            topo.shard, shard as u32,
            "shard port {shard} reaches shard {shard}"
        );
        assert_eq!(topo.shard_count, 2);
        assert_eq!(topo.shard_ports, server.shard_ports);
        assert_eq!(topo.port, server.port);
        assert_eq!(topo.cpus, vec![0, 1]);
        assert_eq!(topo.routing, routing::ROUTING_NAME);
    }
}

#[test]
fn evaluate_decides_with_the_shipped_rules_at_epoch_1_on_the_shard_that_decided() {
    let server = Server::start();
    for shard in 0..2 {
        let mut c = client(&server.shard_addr(shard));
        let d = c.evaluate(&event_on(shard as u32, 7)).unwrap();
        assert_eq!(d.event_id, "evt-7");
        // The test event's IP, 203.0.113.9, is in the shipped rules' risky_networks list
        // (score 30): under the policy's review threshold of 40.
        assert_eq!(d.action, Action::Allow);
        assert_eq!((d.score, d.epoch, d.shard), (30, 1, shard as u32));
        assert_eq!(d.rules, vec!["risky_network".to_string()]);
        assert!(d.shadow_rules.is_empty());
        // The shipped model scores it, low: `model_risk` does not fire.
        assert_eq!(d.models.len(), 1);
        assert!(d.models[0].name == "fraud_lr" && d.models[0].score < 0.8);
        assert!(d.server_ns > 0);
    }
}

#[test]
fn without_a_policy_the_configured_default_action_decides_when_no_rule_acts() {
    let toml = format!(
        "{}\n[decision]\ndefault_action = \"review\"\n",
        topology(&[0], "")
    );
    let rules = "rule huge { when amount > 1000000 action deny }\n\
                 rule tiny { when amount < 1 score 5 }\n";
    let server = Server::with_rules(&toml, &[("only.rules", rules)]);
    let mut c = server.client();
    let d = c.evaluate(&event(1)).unwrap();
    assert_eq!((d.action, d.score), (Action::Review, 0));
    assert!(d.rules.is_empty());
    let mut big = event(2);
    big.amount_minor = 200_000_000;
    let d = c.evaluate(&big).unwrap();
    assert_eq!(
        (d.action, d.rules),
        (Action::Deny, vec!["huge".to_string()])
    );
}

#[test]
fn evaluate_batch_answers_every_event_in_order_and_enforces_its_limit() {
    let server = Server::with_topology(&topology(&[0, 1], "batch_events_max = 100"));
    let mut c = server.client();
    let events: Vec<_> = (0..100).map(event).collect();
    let decisions = c.evaluate_batch(events.clone()).unwrap();
    assert_eq!(decisions.len(), 100);
    for (e, d) in events.iter().zip(&decisions) {
        assert_eq!(e.event_id, d.event_id);
    }
    let too_many = c
        .evaluate_batch((0..101).map(event).collect())
        .unwrap_err()
        .to_string();
    assert!(
        too_many.contains("101 events") && too_many.contains("batch_events_max"),
        "{too_many}"
    );
    let empty = c.evaluate_batch(vec![]).unwrap_err().to_string();
    assert!(empty.contains("error 7"), "{empty}");
    // One bad event rejects its batch with the index named; the connection goes on.
    let mut bad: Vec<_> = (0..3).map(event).collect();
    bad[2].country = "usa".into();
    let msg = c.evaluate_batch(bad).unwrap_err().to_string();
    assert!(msg.contains("event 2") && msg.contains("country"), "{msg}");
    c.ping().unwrap();
}

#[test]
fn ten_thousand_pipelined_requests_are_answered_exactly_once_in_order() {
    let server = Server::start();
    let mut c = server.client();
    let total = 10_000u64;
    // Build every request first (a mix of kinds), write them from one thread while this one
    // reads, so neither side's socket buffer can deadlock the test.
    let mut kinds = Vec::with_capacity(total as usize);
    for i in 0..total {
        let id = match i % 10 {
            0 => c.send_empty(Kind::Ping),
            5 => c
                .send(
                    Kind::EvaluateBatch,
                    &EvaluateBatch {
                        events: vec![event(i), event(i + 1)],
                    },
                )
                .unwrap(),
            _ => c.send(Kind::Evaluate, &event(i)).unwrap(),
        };
        assert_eq!(id, i + 1);
        kinds.push(i % 10);
    }
    let bytes = c.codec().pending_out().to_vec();
    c.codec().clear_out();
    let mut writer = c.stream().try_clone().unwrap();
    let w = std::thread::spawn(move || writer.write_all(&bytes).unwrap());
    for (i, kind) in kinds.iter().enumerate() {
        let id = i as u64 + 1;
        let r = c.recv().unwrap();
        assert_eq!(r.id, id, "responses come back in request order");
        match kind {
            0 => {
                r.expect(Kind::Ping, id).unwrap();
            }
            5 => {
                let b: verdict_net::DecisionBatch =
                    r.expect(Kind::EvaluateBatch, id).unwrap().decode().unwrap();
                assert_eq!(b.decisions.len(), 2);
            }
            _ => {
                let d: verdict_net::Decision =
                    r.expect(Kind::Evaluate, id).unwrap().decode().unwrap();
                assert_eq!(d.event_id, format!("evt-{i}"));
            }
        }
    }
    w.join().unwrap();
    // Nothing more: exactly one response each.
    c.set_timeout(Some(Duration::from_millis(300))).unwrap();
    assert!(c.recv().is_err(), "no extra responses");
}

#[test]
fn stats_report_every_core_and_a_total() {
    let server = Server::start();
    let mut a = client(&server.shard_addr(0));
    let mut b = client(&server.shard_addr(1));
    // Each shard decides the events it owns (the ports only save a hop).
    for i in 0..30 {
        a.evaluate(&event_on(0, i)).unwrap();
    }
    for i in 0..12 {
        b.evaluate(&event_on(1, i)).unwrap();
    }
    b.evaluate_batch((0..8).map(|i| event_on(1, i)).collect())
        .unwrap();
    let mut raw = Raw::connect(&server.shard_addr(1));
    raw.send(&raw_frame(0x42, 9, &[]));
    raw.expect_error(9, ErrorCode::UnknownKind);

    let stats = server.client().stats().unwrap();
    assert_eq!(stats.shards.len(), 2);
    let (s0, s1) = (&stats.shards[0], &stats.shards[1]);
    assert_eq!((s0.shard, s0.cpu, s1.shard, s1.cpu), (0, 0, 1, 1));
    assert_eq!(s0.events, 30);
    assert_eq!(s1.events, 12 + 8);
    // Every earlier request was timed (this stats request is counted after its snapshot).
    assert_eq!(s0.latency_ns.count, s0.requests);
    assert_eq!(s1.latency_ns.count, s1.requests);
    assert!(s0.latency_ns.count >= 30 && s0.latency_ns.p50 > 0);
    assert!(s0.latency_ns.p50 <= s0.latency_ns.p99 && s0.latency_ns.p99 <= s0.latency_ns.max);
    assert_eq!(s1.errors, 1);
    assert_eq!(s1.errors_by_code[0].code, ErrorCode::UnknownKind as u16);
    assert_eq!(s1.batch_events.count, 1);
    assert_eq!(s1.batch_events.max, 8);
    assert!(s0.bytes_in > 0 && s0.bytes_out > 0);
    assert!(s0.connections_accepted >= 1 && s1.connections_open >= 2);
    assert_eq!(stats.total.events, 50);
    assert_eq!(stats.total.errors, 1);
    assert_eq!(stats.total.requests, s0.requests + s1.requests);
    assert_eq!(
        stats.total.latency_ns.count,
        s0.latency_ns.count + s1.latency_ns.count
    );
}

#[test]
fn payload_errors_get_an_error_frame_and_the_connection_goes_on() {
    let server = Server::start();
    let mut raw = Raw::connect(&server.addr());
    // Unknown kind, and a response kind sent as a request.
    raw.send(&raw_frame(0x33, 1, &[]));
    raw.expect_error(1, ErrorCode::UnknownKind);
    raw.send(&raw_frame(0x81, 2, &[]));
    raw.expect_error(2, ErrorCode::UnknownKind);
    // Garbage where an event should be.
    raw.send(&raw_frame(Kind::Evaluate as u8, 3, &[0xAB; 40]));
    let msg = raw.expect_error(3, ErrorCode::InvalidPayload);
    assert!(msg.contains("not a valid Event"), "{msg}");
    // An empty evaluate payload.
    raw.send(&raw_frame(Kind::Evaluate as u8, 4, &[]));
    raw.expect_error(4, ErrorCode::InvalidPayload);
    // A ping must be empty.
    raw.send(&raw_frame(Kind::Ping as u8, 5, &[1, 2, 3]));
    raw.expect_error(5, ErrorCode::InvalidPayload);
    // Well-formed archive, bad field value.
    let mut e = event(1);
    e.currency = "usd".into();
    let payload = rkyv::to_bytes::<rkyv::rancor::Error>(&e).unwrap();
    raw.send(&raw_frame(Kind::Evaluate as u8, 6, &payload));
    let msg = raw.expect_error(6, ErrorCode::BadField);
    assert!(msg.contains("currency"), "{msg}");
    // Still serving on the same connection.
    raw.send(&raw_frame(Kind::Ping as u8, 7, &[]));
    let (kind, id, _) = raw.recv().unwrap();
    assert_eq!((kind, id), (0x81, 7));
}

#[test]
fn framing_errors_get_an_error_frame_then_a_close() {
    let server = Server::with_topology(&topology(&[0, 1], "frame_len_max_bytes = 4096"));
    let cases: [(Vec<u8>, ErrorCode); 3] = [
        (
            {
                let mut f = raw_frame(1, 11, &[]);
                f[0] = b'X';
                f
            },
            ErrorCode::BadMagic,
        ),
        (
            {
                let mut f = raw_frame(1, 12, &[]);
                f[2] = 9;
                f
            },
            ErrorCode::BadVersion,
        ),
        (
            encode_header(Kind::Evaluate as u8, 4097, 13).to_vec(),
            ErrorCode::FrameTooLarge,
        ),
    ];
    for (i, (bytes, code)) in cases.into_iter().enumerate() {
        let mut raw = Raw::connect(&server.addr());
        // A good request first: it is answered before the bad frame.
        raw.send(&raw_frame(Kind::Ping as u8, 100, &[]));
        raw.send(&bytes);
        assert_eq!(raw.recv().unwrap().1, 100);
        raw.expect_error(11 + i as u64, code);
        raw.expect_closed();
    }
    // The limit is inclusive: 4096 bytes is fine (and fails validation, not framing).
    let mut raw = Raw::connect(&server.addr());
    raw.send(&raw_frame(Kind::Evaluate as u8, 20, &[0u8; 4096]));
    raw.expect_error(20, ErrorCode::InvalidPayload);
    server.client().ping().unwrap();
}

#[test]
fn garbage_truncation_and_mid_frame_disconnects_never_hurt_the_server() {
    let server = Server::start();
    let good = raw_frame(
        Kind::Evaluate as u8,
        1,
        &rkyv::to_bytes::<rkyv::rancor::Error>(&event(1)).unwrap(),
    );
    // Every truncation of a good frame, then a hang-up.
    for cut in (0..good.len()).step_by(7) {
        let mut raw = Raw::connect(&server.addr());
        raw.send(&good[..cut]);
        drop(raw);
    }
    // Random garbage after a valid magic + version.
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..200 {
        let mut raw = Raw::connect(&server.addr());
        let mut bytes = vec![0u8; rng.usize(16..512)];
        rng.fill(&mut bytes);
        bytes[0..2].copy_from_slice(&MAGIC);
        bytes[2] = 1;
        bytes[4..8].copy_from_slice(&(rng.u32(0..600)).to_le_bytes());
        let _ = raw.stream.write_all(&bytes);
        drop(raw);
    }
    // Both cores still answer.
    for shard in 0..2 {
        client(&server.shard_addr(shard))
            .evaluate(&event(2))
            .unwrap();
    }
}

#[test]
fn connections_over_the_limit_get_an_overload_error_and_a_close() {
    let server = Server::with_topology(&topology(&[0], "connections_per_shard_max = 2"));
    let mut a = server.client();
    let mut b = server.client();
    a.ping().unwrap();
    b.ping().unwrap();
    let mut third = Raw::connect(&server.addr());
    let msg = third.expect_error(0, ErrorCode::Overloaded);
    assert!(msg.contains("connections_per_shard_max"), "{msg}");
    third.expect_closed();
    drop(a);
    // A slot frees up once a connection closes.
    let mut again = None;
    for _ in 0..100 {
        let mut c = server.client();
        if c.ping().is_ok() {
            again = Some(c);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(again.is_some(), "a freed slot is reusable");
    let stats = b.stats().unwrap();
    assert!(stats.total.connections_rejected >= 1);
    assert!(
        stats
            .total
            .errors_by_code
            .iter()
            .any(|e| e.code == ErrorCode::Overloaded as u16)
    );
}

#[test]
fn a_slow_reader_meets_backpressure_and_still_gets_every_answer() {
    let server = Server::with_topology(&topology(&[0], "write_buffer_bytes_max = 65536"));
    let mut c = server.client();
    // ~40 MB of requests: far more than the socket buffers on both sides can hold.
    let total = 150_000u64;
    let frame = {
        let id = c.send(Kind::Evaluate, &event(1)).unwrap();
        assert_eq!(id, 1);
        let f = c.codec().pending_out().to_vec();
        c.codec().clear_out();
        f
    };
    let frame_len = frame.len() as u64;
    let mut writer = c.stream().try_clone().unwrap();
    let w = std::thread::spawn(move || {
        let mut batch = Vec::with_capacity(frame.len() * 1000);
        for chunk in 0..total / 1000 {
            batch.clear();
            for i in 0..1000u64 {
                let mut f = frame.clone();
                f[8..16].copy_from_slice(&(chunk * 1000 + i + 1).to_le_bytes());
                batch.extend_from_slice(&f);
            }
            writer.write_all(&batch).unwrap();
        }
    });
    // Do not read for a while: the server must stop reading rather than buffer it all.
    std::thread::sleep(Duration::from_millis(1500));
    let stats = client(&server.addr()).stats().unwrap();
    let consumed = stats.shards[0].bytes_in;
    assert!(
        !w.is_finished(),
        "the writer should be blocked by backpressure"
    );
    assert!(
        consumed < total * frame_len / 2,
        "server consumed {consumed} of {} bytes without being read from",
        total * frame_len
    );
    // Now read: every request is answered, in order, once.
    for id in 1..=total {
        let r = c.recv().unwrap();
        assert_eq!(r.id, id);
    }
    w.join().unwrap();
}

#[test]
fn shutdown_answers_what_is_in_flight_then_exits_zero() {
    let mut server = Server::start();
    let mut c = server.client();
    let n = 5_000u64;
    for i in 0..n {
        c.send(Kind::Evaluate, &event(i)).unwrap();
    }
    let bytes = c.codec().pending_out().to_vec();
    c.codec().clear_out();
    // Write from another thread so neither side's buffers can stall the test.
    let mut writer = c.stream().try_clone().unwrap();
    let w = std::thread::spawn(move || writer.write_all(&bytes).unwrap());
    server.signal(libc::SIGTERM);
    for id in 1..=n {
        let r = c
            .recv()
            .unwrap_or_else(|e| panic!("request {id} unanswered: {e}"));
        assert_eq!(r.id, id);
        r.expect(Kind::Evaluate, id).unwrap();
    }
    w.join().unwrap();
    assert_eq!(server.wait_exit(Duration::from_secs(15)), Some(0));
    let log = server.stderr.lock().unwrap().clone();
    assert!(
        log.contains("draining") && log.contains("all shards drained"),
        "{log}"
    );
}

#[test]
fn sigint_with_an_idle_keep_alive_connection_exits_after_the_quiet_time() {
    // The drain deadline is a minute: exiting within 10 s proves the idle connection was
    // released by shutdown_quiet_ms, not by the deadline.
    let mut server = Server::with_topology(&topology(
        &[0, 1],
        "shutdown_drain_ms = 60000\nshutdown_quiet_ms = 200",
    ));
    let mut idle = server.client();
    idle.ping().unwrap();
    server.signal(libc::SIGINT);
    assert_eq!(server.wait_exit(Duration::from_secs(10)), Some(0));
    let log = server.stderr.lock().unwrap().clone();
    assert!(!log.contains("drain deadline reached"), "{log}");
}

#[test]
fn draining_refuses_new_connections_while_busy_ones_are_still_served() {
    let mut server = Server::with_topology(&topology(&[0], "shutdown_drain_ms = 60000"));
    let mut busy = server.client();
    busy.ping().unwrap();
    server.signal(libc::SIGTERM);
    // Keep the busy connection talking (never quiet) while checking the listener is gone.
    let mut refused = false;
    for _ in 0..100 {
        busy.ping()
            .expect("a busy connection is still served while draining");
        if std::net::TcpStream::connect(server.addr()).is_err() {
            refused = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(refused, "new connections are refused once draining starts");
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "still running while busy"
    );
    drop(busy);
    assert_eq!(server.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn the_async_client_pipelines_over_glommio() {
    let server = Server::start();
    let addr = server.addr();
    let got = glommio::LocalExecutorBuilder::default()
        .io_memory(1 << 20)
        .spawn(move || async move {
            let stream = glommio::net::TcpStream::connect(addr.as_str())
                .await
                .unwrap();
            let mut c = verdict_net::AsyncClient::new(stream);
            c.ping().await.unwrap();
            let ids: Vec<u64> = (0..500)
                .map(|i| c.send(Kind::Evaluate, &event(i)).unwrap())
                .collect();
            c.flush().await.unwrap();
            let mut seen = Vec::new();
            for id in ids {
                let d: verdict_net::Decision = c
                    .recv()
                    .await
                    .unwrap()
                    .expect(Kind::Evaluate, id)
                    .unwrap()
                    .decode()
                    .unwrap();
                seen.push(d.event_id);
            }
            let topo = c.topology().await.unwrap();
            let stats = c.stats().await.unwrap();
            (seen, topo.shard_count, stats.shards.len())
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(got.0.len(), 500);
    assert_eq!(got.0[499], "evt-499");
    assert_eq!((got.1, got.2), (2, 2));
}

#[test]
fn serves_without_privileges_sizing_io_memory_to_the_memlock_limit() {
    // As root, drop to nobody with no capabilities; as anyone else we already are unprivileged.
    let root = unsafe { libc::geteuid() } == 0;
    let prefix: &[&str] = if root {
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ]
    } else {
        &[]
    };
    let server = Server::launch(
        prefix,
        &topology(&[0, 1], "").replace("io_memory_bytes = 1048576", "io_memory_bytes = 0"),
    );
    let d = server.client().evaluate(&event(3)).unwrap();
    assert_eq!(d.event_id, "evt-3");
    let log = server.stderr.lock().unwrap().clone();
    assert!(log.contains("io_memory"), "{log}");
    assert!(
        !log.contains("CAP_IPC_LOCK held"),
        "the capability was dropped: {log}"
    );
}

#[test]
fn a_burst_of_connections_cannot_overshoot_the_connection_limit() {
    let server = Server::with_topology(&topology(&[0], "connections_per_shard_max = 4"));
    // 40 connections land in the backlog at once; the server accepts them back to back.
    let mut conns: Vec<Raw> = (0..40).map(|_| Raw::connect(&server.addr())).collect();
    let mut served = 0;
    let mut refused = 0;
    for (i, raw) in conns.iter_mut().enumerate() {
        raw.send(&raw_frame(Kind::Ping as u8, 1000 + i as u64, &[]));
        let (kind, id, _) = raw.recv().expect("every connection hears something");
        match kind {
            0x81 => {
                assert_eq!(id, 1000 + i as u64);
                served += 1;
            }
            0xFF => {
                assert_eq!(id, 0, "the refusal comes first, with id 0");
                refused += 1;
            }
            other => panic!("unexpected kind {other:#x}"),
        }
    }
    assert_eq!(served, 4, "exactly the limit is served while all stay open");
    assert_eq!(refused, 36);
}

#[test]
fn stats_storms_on_a_tiny_mesh_never_wedge_it() {
    let server = Server::with_topology(&topology(
        &[0, 1],
        "mesh_queue_depth = 1\nmesh_reply_timeout_ms = 200",
    ));
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let addr = server.shard_addr(t % 2);
            std::thread::spawn(move || {
                let mut c = client(&addr);
                let (mut ok, mut unavailable) = (0, 0);
                for _ in 0..60 {
                    match c.stats() {
                        Ok(_) => ok += 1,
                        Err(verdict_net::ClientError::Server { code, .. })
                            if code == ErrorCode::Unavailable as u16
                                || code == ErrorCode::Overloaded as u16 =>
                        {
                            unavailable += 1
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
                (ok, unavailable)
            })
        })
        .collect();
    let results: Vec<(u32, u32)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(results.iter().map(|r| r.0).sum::<u32>() > 0, "{results:?}");
    // After the storm both shards still answer stats promptly.
    for shard in 0..2 {
        let stats = client(&server.shard_addr(shard)).stats().unwrap();
        assert_eq!(stats.shards.len(), 2);
    }
}

#[test]
fn the_error_frame_survives_a_close_with_unread_input() {
    let server = Server::with_topology(&topology(&[0], "frame_len_max_bytes = 4096"));
    let mut raw = Raw::connect(&server.addr());
    // An oversized header followed by its (unread) payload: the close must not reset the
    // connection before the error frame reaches us.
    let mut bytes = encode_header(Kind::Evaluate as u8, 200_000, 77).to_vec();
    bytes.extend_from_slice(&vec![0x5A; 200_000]);
    let _ = raw.stream.write_all(&bytes);
    raw.expect_error(77, ErrorCode::FrameTooLarge);
    raw.expect_closed();
}
