//! Exact state whichever port an event arrives on: the owner of an event's account decides
//! it (a shard that receives an event it does not own forwards it), and each device's, IP's
//! and merchant's windows live with the owner of that value's partition. Proves, against
//! real `verdict serve` processes on loopback:
//! - one stream of events gets the same decisions through a shard-aware client, through
//!   many short connections on the shared port, and from a single-shard engine;
//! - a device shared by accounts of both shards reaches its count on exactly the fifth
//!   event, whichever ports the events took;
//! - a mixed-owner evaluate-batch keeps its order, each event decided by its owner;
//! - a tiny mesh budget under pipelined load refuses the excess with error 8, and every
//!   request is still answered exactly once;
//! - 100 reloads while two naive clients stream: every request answered once, each
//!   decision by exactly one epoch's rules.

mod common;

use std::time::Duration;

use common::{Server, topology};
use verdict_net::routing::{PARTITIONS_DEFAULT, PartitionTable};
use verdict_net::{Client, ClientError, Decision, ErrorCode, Event, Kind, ShardedClient};

use common::{RULES, T0, essence, velocity_stream as stream};

fn two_shards() -> Server {
    Server::with_patient_rules(&topology(&[0, 1], ""), &[("exact.rules", RULES)])
}

fn table() -> PartitionTable {
    PartitionTable::modulo(PARTITIONS_DEFAULT, 2).unwrap()
}

#[test]
fn every_path_decides_like_a_single_shard() {
    let events = stream(3_000);
    // (1) one shard: every key's windows on one core.
    let single = Server::with_patient_rules(&topology(&[0], ""), &[("exact.rules", RULES)]);
    let mut c = single.client();
    let reference: Vec<Decision> = events.iter().map(|e| c.evaluate(e).unwrap()).collect();
    drop(single);
    assert!(
        reference
            .iter()
            .any(|d| d.rules.contains(&"device_burst".into()))
            && reference
                .iter()
                .any(|d| d.rules.contains(&"ip_spend".into()))
            && reference
                .iter()
                .any(|d| d.rules.contains(&"merchant_accounts".into()))
            && reference
                .iter()
                .any(|d| d.shadow_rules.contains(&"shadow_device".into())),
        "the stream must exercise every key's rules"
    );

    // (2) a shard-aware client on a fresh two-shard engine.
    let server = two_shards();
    let mut aware = ShardedClient::connect(&server.addr(), None).unwrap();
    let table = table();
    for (e, want) in events.iter().zip(&reference) {
        let got = aware.evaluate(e).unwrap();
        assert_eq!(got.shard, table.owner_of_account(&e.account_id));
        assert_eq!(essence(&got), essence(want));
    }
    let stats = server.client().stats().unwrap();
    assert_eq!(stats.total.mesh_events_decided, 0, "nothing was forwarded");
    assert!(
        stats.total.mesh_events_recorded > 0,
        "other keys were recorded by their owners"
    );
    drop(server);

    // (3) many short connections on the shared port of another fresh engine.
    let server = two_shards();
    let mut forwarded = 0;
    for chunk in events.chunks(10).zip(reference.chunks(10)) {
        let mut naive = server.client();
        for (e, want) in chunk.0.iter().zip(chunk.1) {
            let got = naive.evaluate(e).unwrap();
            assert_eq!(got.shard, table.owner_of_account(&e.account_id));
            assert_eq!(essence(&got), essence(want));
        }
    }
    let stats = server.client().stats().unwrap();
    forwarded += stats.total.mesh_events_decided;
    assert!(forwarded > 0, "the shared port's shards forwarded events");
}

/// The events of `accounts` (owned by different shards) on one device, one per second.
fn device_events(accounts: &[String], n: usize, tag: &str) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let mut e = verdict_net::test_event(
                &format!("{tag}-{i}"),
                &accounts[i % accounts.len()],
                1_000,
            );
            e.timestamp_ms = T0 + i as u64 * 1_000;
            e.device_id = format!("shared-device-{tag}");
            e.ip = "0.0.0.0".parse().unwrap();
            e.merchant_id = format!("m-{tag}-{i}");
            e
        })
        .collect()
}

/// An account the default two-shard table gives to `shard`.
fn account_on(shard: u32, salt: &str) -> String {
    let table = table();
    (0..)
        .map(|i| format!("acct-{salt}-{i}"))
        .find(|a| table.owner_of_account(a) == shard)
        .unwrap()
}

#[test]
fn a_shared_device_fires_on_exactly_the_fifth_event_whatever_the_ports() {
    let rules = "rule device_burst { when count(device, 10m) >= 5  score 50 }\n";
    let server = Server::with_rules(&topology(&[0, 1], ""), &[("device.rules", rules)]);
    let accounts = [account_on(0, "a"), account_on(1, "b")];
    let ports = [server.addr(), server.shard_addr(0), server.shard_addr(1)];
    // Each pattern sends event i to ports[pattern(i)]: shared only, a shard's own port
    // whatever the owner, and rotating.
    type Pick = fn(usize) -> usize;
    let patterns: [(&str, Pick); 3] = [
        ("shared", |_| 0),
        ("wrong-shard", |i| 2 - i % 2),
        ("rotating", |i| i % 3),
    ];
    for (tag, pick) in patterns {
        let events = device_events(&accounts, 8, tag);
        for (i, e) in events.iter().enumerate() {
            let mut c = common::client(&ports[pick(i)]);
            let d = c.evaluate(e).unwrap();
            let fired = d.rules.contains(&"device_burst".to_string());
            assert_eq!(fired, i >= 4, "{tag}: event {} (count {})", i + 1, i + 1);
            assert_eq!(d.shard, table().owner_of_account(&e.account_id));
        }
    }
}

#[test]
fn a_mixed_owner_batch_keeps_its_order_and_each_event_is_decided_by_its_owner() {
    let server = two_shards();
    let table = table();
    let mut events = stream(64);
    for (i, e) in events.iter_mut().enumerate() {
        e.account_id = account_on((i % 3 == 0) as u32, &format!("mix{i}"));
    }
    for addr in [server.addr(), server.shard_addr(0), server.shard_addr(1)] {
        let mut c = common::client(&addr);
        let mut batch = events.clone();
        for e in &mut batch {
            e.event_id = format!("{addr}-{}", e.event_id);
        }
        let decisions = c.evaluate_batch(batch.clone()).unwrap();
        assert_eq!(decisions.len(), batch.len());
        for (e, d) in batch.iter().zip(&decisions) {
            assert_eq!(d.event_id, e.event_id);
            assert_eq!(
                d.shard,
                table.owner_of_account(&e.account_id),
                "{}",
                e.event_id
            );
        }
        assert!(decisions.iter().any(|d| d.shard == 0) && decisions.iter().any(|d| d.shard == 1));
    }
    // The shard-aware client splits a batch by owner and reassembles it in order too.
    let mut aware = ShardedClient::connect(&server.addr(), None).unwrap();
    let decisions = aware.evaluate_batch(events.clone()).unwrap();
    for (e, d) in events.iter().zip(&decisions) {
        assert_eq!(d.event_id, e.event_id);
        assert_eq!(d.shard, table.owner_of_account(&e.account_id));
    }
}

#[test]
fn a_tiny_mesh_budget_refuses_the_excess_and_answers_every_request_once() {
    let toml = topology(&[0, 1], "mesh_events_in_flight_max = 2");
    let server = Server::with_patient_rules(&toml, &[("exact.rules", RULES)]);
    let events = stream(2_000);
    let mut c = server.client();
    let (mut decided, mut overloaded) = (0, 0);
    for chunk in events.chunks(200) {
        let ids: Vec<u64> = chunk
            .iter()
            .map(|e| c.send(Kind::Evaluate, e).unwrap())
            .collect();
        c.flush().unwrap();
        for (id, e) in ids.into_iter().zip(chunk) {
            let response = c.recv().unwrap();
            assert_eq!(response.id, id, "answers in request order, each once");
            match response
                .expect(Kind::Evaluate, id)
                .and_then(|r| r.decode::<Decision>())
            {
                Ok(d) => {
                    assert_eq!(d.event_id, e.event_id);
                    decided += 1;
                }
                Err(ClientError::Server { code, .. }) => {
                    assert_eq!(code, ErrorCode::Overloaded as u16);
                    overloaded += 1;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    assert_eq!(decided + overloaded, events.len());
    assert!(overloaded > 0, "the budget of 2 events must refuse some");
    assert!(
        decided > 0,
        "events whose state is all on the receiving shard are decided"
    );
    // The budget was given back: once the load is gone, an event each shard must forward
    // to the other gets through.
    for shard in 0..2u32 {
        let mut lone = events[0].clone();
        lone.event_id = format!("lone-{shard}");
        lone.account_id = account_on(1 - shard, "lone");
        let d = common::client(&server.shard_addr(shard as usize))
            .evaluate(&lone)
            .unwrap();
        assert_eq!(d.shard, 1 - shard);
    }
}

const SET_A: &str = r#"
rule a_always { when amount >= 0  score 1 }
rule a_device { when count(device, 10m) >= 3  score 5 }
"#;
const SET_B: &str = r#"
rule b_always { when amount >= 0  score 2 }
rule b_ip { when sum(amount, ip, 1h) > 100.00  score 7 }
shadow rule b_merchant { when count(merchant, 1m) >= 2  action deny }
"#;

#[test]
fn a_hundred_reloads_while_naive_clients_stream_keep_one_epoch_per_decision() {
    let toml = topology(&[0, 1], "") + "\n[admin]\nwire_reload = true\n";
    let server = Server::with_rules(&toml, &[("a.rules", SET_A), ("b.rules", SET_B)]);
    let addr = server.addr();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let streams: Vec<_> = (0..2)
        .map(|k| {
            let (addr, stop) = (addr.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut c = common::client(&addr);
                let mut events = stream(100_000).into_iter().cycle();
                let (mut sent, mut answered) = (0usize, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let chunk: Vec<Event> = (0..32)
                        .map(|i| {
                            let mut e = events.next().unwrap();
                            e.event_id = format!("c{k}-{}-{i}", sent);
                            e
                        })
                        .collect();
                    let ids: Vec<u64> = chunk
                        .iter()
                        .map(|e| c.send(Kind::Evaluate, e).unwrap())
                        .collect();
                    c.flush().unwrap();
                    sent += ids.len();
                    for (id, e) in ids.into_iter().zip(&chunk) {
                        let r = c.recv().unwrap();
                        assert_eq!(r.id, id);
                        let d: Decision = r.expect(Kind::Evaluate, id).unwrap().decode().unwrap();
                        assert_eq!(d.event_id, e.event_id);
                        answered.push(d);
                    }
                }
                (sent, answered)
            })
        })
        .collect();
    let mut admin = Client::connect(&addr).unwrap();
    admin.set_timeout(Some(Duration::from_secs(60))).unwrap();
    for i in 0..100 {
        let path = if i % 2 == 0 { "b.rules" } else { "a.rules" };
        let reply = admin.reload(path).unwrap();
        assert!(reply.ok, "{reply:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut epochs = std::collections::BTreeSet::new();
    for s in streams {
        let (sent, answered) = s.join().unwrap();
        assert_eq!(answered.len(), sent, "every request answered exactly once");
        for d in &answered {
            // Epoch 1 and every odd epoch serve set A; even epochs set B.
            let set = if d.epoch % 2 == 1 { "a_" } else { "b_" };
            let names = d.rules.iter().chain(&d.shadow_rules);
            assert!(
                names.clone().all(|r| r.starts_with(set)),
                "epoch {} decided with {:?}",
                d.epoch,
                names.collect::<Vec<_>>()
            );
            assert!(d.rules.iter().any(|r| r.ends_with("always")));
            assert!((1..=101).contains(&d.epoch));
            epochs.insert(d.epoch);
        }
    }
    assert!(
        epochs.len() > 2,
        "decisions span several epochs: {epochs:?}"
    );
}

/// A std socket as a `futures-io` stream (every call completes at once, blocking): enough to
/// drive the async client from a test without a runtime.
struct Blocking(std::net::TcpStream);

impl futures_lite::AsyncRead for Blocking {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(std::io::Read::read(&mut self.0, buf))
    }
}

impl futures_lite::AsyncWrite for Blocking {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(std::io::Write::write(&mut self.0, buf))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// The shard-aware clients (blocking, async, and `verdict send --shard-aware`) send each
/// event to its owner's port and answer in the caller's order, with the decisions a naive
/// client gets from a fresh engine.
#[test]
fn shard_aware_clients_route_by_the_partition_table_and_keep_the_callers_order() {
    let events = stream(400);
    let table = table();
    let naive: Vec<Decision> = {
        let server = two_shards();
        let mut c = server.client();
        events.iter().map(|e| c.evaluate(e).unwrap()).collect()
    };
    // Async, one event at a time: the same decisions.
    let server = two_shards();
    let topology = server.client().topology().unwrap();
    assert_eq!(topology.routing, verdict_net::routing::ROUTING_NAME);
    assert_eq!(topology.partitions, PARTITIONS_DEFAULT);
    assert_eq!(topology.partition_table().unwrap(), table);
    let streams = (0..2)
        .map(|i| Blocking(std::net::TcpStream::connect(server.shard_addr(i)).unwrap()))
        .collect();
    let mut aware = verdict_net::AsyncShardedClient::new(&topology, streams).unwrap();
    let got = futures_lite::future::block_on(async {
        let mut out = Vec::new();
        for e in &events {
            out.push(aware.evaluate(e).await.unwrap());
        }
        out
    });
    for ((e, g), n) in events.iter().zip(&got).zip(&naive) {
        assert_eq!(g.shard, table.owner_of_account(&e.account_id));
        assert_eq!(essence(g), essence(n));
    }
    let many = futures_lite::future::block_on(aware.evaluate_many(&events[..50])).unwrap();
    for (e, d) in events.iter().zip(&many) {
        assert_eq!(d.as_ref().unwrap().event_id, e.event_id);
    }

    // `verdict send --shard-aware`: one JSON line per input line, in order, each decided by
    // its owner, same as without the flag on a fresh engine (both sending one at a time).
    let lines: String = events
        .iter()
        .map(|e| verdict_net::json::event_to_json(e).to_string() + "\n")
        .collect();
    let send = |server: &Server, aware: bool| -> Vec<serde_json::Value> {
        let file = server.dir().join("events.jsonl");
        std::fs::write(&file, &lines).unwrap();
        let (addr, file) = (server.addr(), file.to_str().unwrap().to_string());
        // One at a time: pipelined, events of different owners race for shared keys.
        let mut args = vec!["send", "--addr", &addr, "--file", &file, "--depth", "1"];
        if aware {
            args.push("--shard-aware");
        }
        let out = common::verdict(&args);
        assert!(out.status.success(), "{}", common::text(&out.stderr));
        common::text(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let with_flag = send(&two_shards(), true);
    let without = send(&two_shards(), false);
    assert_eq!(with_flag.len(), events.len());
    for ((e, a), b) in events.iter().zip(&with_flag).zip(&without) {
        assert_eq!(a["event_id"], e.event_id.as_str());
        assert_eq!(a["shard"], table.owner_of_account(&e.account_id));
        for key in ["action", "score", "rules", "shadow_rules", "models"] {
            assert_eq!(a[key], b[key], "{key} of {}", e.event_id);
        }
    }
}

/// Live per-rule fire counts (`verdict stats`, `/stats`, `/metrics`) equal what the
/// decisions say, shadow rules flagged, and a reload that keeps a rule keeps its count.
#[test]
fn live_rule_counts_match_the_decisions_and_survive_a_reload() {
    let toml = topology(&[0, 1], "") + "\n[admin]\nwire_reload = true\n";
    let server = Server::with_patient_rules(&toml, &[("exact.rules", RULES)]);
    let mut c = server.client();
    let mut expected: std::collections::BTreeMap<(String, bool), u64> = Default::default();
    let mut decide = |c: &mut Client, events: &[Event]| {
        for e in events {
            let d = c.evaluate(e).unwrap();
            for r in &d.rules {
                *expected.entry((r.clone(), false)).or_default() += 1;
            }
            for r in &d.shadow_rules {
                *expected.entry((r.clone(), true)).or_default() += 1;
            }
        }
    };
    let events = stream(600);
    decide(&mut c, &events[..300]);
    assert!(c.reload("exact.rules").unwrap().ok);
    decide(&mut c, &events[300..]);
    let expected = expected;
    assert!(
        expected.keys().any(|(_, shadow)| *shadow),
        "the stream fires the shadow rule"
    );
    let total = c.stats().unwrap().total;
    let live: std::collections::BTreeMap<(String, bool), u64> = total
        .rules
        .iter()
        .map(|r| ((r.name.clone(), r.shadow), r.fired))
        .collect();
    assert_eq!(live, expected);
    // `/metrics` shows the shards' periodic snapshots: within `stats_interval_ms` (1 s).
    let ((name, _), fired) = expected.iter().find(|((_, s), _)| !s).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = common::http_get(server.admin_port, "/metrics");
        assert_eq!(status, 200);
        let series = format!("rule=\"{name}\",shadow=\"false\"}} ");
        let sum: f64 = body
            .lines()
            .filter(|l| l.starts_with("verdict_rule_fired_total{") && l.contains(&series))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if sum == *fired as f64 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name}: {sum} of {fired} in /metrics"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
