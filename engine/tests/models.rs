//! Models in the served decision, end to end: the shipped model scores every event of the
//! default rule set; a model that loops is cut by its deadline and one that traps gets the
//! fallback, while the core keeps answering; 50 model swaps under a streaming client answer
//! every request exactly once, each from exactly one model version.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Server, client, event, event_on, tempdir, topology};
use verdict_net::Event;

/// A two-feature model (deadline 50 ms: wall-clock, so generous on a busy test machine): it
/// loops forever when features[0] > 0, traps when features[1] > 0,
/// and otherwise scores `score`.
fn probe_wasm(score: f64) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
  (memory (export "memory") 1)
  (func (export "verdict_abi") (result i32) i32.const 1)
  (func (export "verdict_input") (param i32 i32) (result i32) i32.const 1024)
  (func (export "verdict_score") (param $rows i32) (param $cols i32) (result i32)
    (local $r i32)
    (if (f32.gt (f32.load (i32.const 1024)) (f32.const 0)) (then (loop $forever (br $forever))))
    (if (f32.gt (f32.load (i32.const 1028)) (f32.const 0)) (then unreachable))
    (block $done (loop $each
      (br_if $done (i32.ge_u (local.get $r) (local.get $rows)))
      (f64.store (i32.add (i32.const 40960) (i32.shl (local.get $r) (i32.const 3))) (f64.const {score}))
      (local.set $r (i32.add (local.get $r) (i32.const 1)))
      (br $each)))
    i32.const 40960))"#
    ))
    .unwrap()
}

const PROBE_MANIFEST: &str = "name = \"probe\"\nversion = \"1\"\nwasm = \"probe.wasm\"\n\
    features = [\"features[0]\", \"features[1]\"]\ndeadline_us = 50000\ninstances_per_core = 2\n";

const PROBE_RULES: &str = "fallback model(\"probe\") = 0.9\n\
    rule probe_high { when model(\"probe\") > 0.5  score 10 }\n";

/// A models directory holding the probe model scoring `score`.
fn probe_dir(score: f64) -> tempdir::Dir {
    let dir = tempdir::Dir::new("models");
    std::fs::write(dir.0.join("probe.toml"), PROBE_MANIFEST).unwrap();
    std::fs::write(dir.0.join("probe.wasm"), probe_wasm(score)).unwrap();
    dir
}

/// Serves the probe model; reloads go over the data port (`[admin] wire_reload`), the
/// quickest way to swap models many times while clients stream.
fn serve_probe(models: &Path) -> Server {
    Server::launch_with(
        &[],
        &(topology(&[0, 1], "") + "\n[admin]\nwire_reload = true\n"),
        &[("probe.rules", PROBE_RULES)],
        &["--models", models.to_str().unwrap()],
    )
}

/// An event shard 0 decides, with `features`.
fn with_features(i: u64, features: [f64; 2]) -> Event {
    let mut e = event_on(0, i);
    e.features = features.to_vec();
    e
}

#[test]
fn the_shipped_model_scores_every_event_of_the_default_rules() {
    // Its deadline raised to 1 s: these assertions are about scoring, and a call the
    // scheduler delays past 2 ms on a busy machine is a fallback.
    let server = Server::with_patient_rules(&topology(&[0, 1], ""), &[]);
    let mut c = server.client();
    let d = c.evaluate(&event(1)).unwrap();
    assert_eq!(d.models.len(), 1, "{d:?}");
    let m = &d.models[0];
    assert_eq!(m.name, "fraud_lr");
    assert!(!m.error && m.score > 0.0 && m.score < 1.0, "{m:?}");
    // One evaluate-batch of 100 events: one call per 64 rows.
    let batch: Vec<Event> = (0..100).map(|i| event(1000 + i)).collect();
    let decisions = c.evaluate_batch(batch).unwrap();
    assert!(
        decisions
            .iter()
            .all(|d| d.models.len() == 1 && !d.models[0].error)
    );
    let stats = c.stats().unwrap();
    let total = &stats.total.models;
    assert_eq!(total.len(), 1);
    assert_eq!((total[0].name.as_str(), total[0].rows), ("fraud_lr", 101));
    assert_eq!(
        total[0].calls, 3,
        "1 for the evaluate, 2 for 100 rows in calls of 64"
    );
    assert_eq!(total[0].traps + total[0].timeouts + total[0].errors, 0);
}

#[test]
fn pipelined_evaluates_are_scored_in_one_call() {
    let server = Server::with_patient_rules(&topology(&[0, 1], ""), &[]);
    let mut c = client(&server.shard_addr(0));
    // Ten evaluate frames in one write arrive in one read: one batch, one model call.
    let events: Vec<_> = (0..10).map(|i| event_on(0, 500 + i)).collect();
    for d in common::pipelined(&mut c, &events) {
        assert!(!d.models[0].error);
    }
    let stats = c.stats().unwrap();
    let m = &stats.shards[0].models[0];
    assert_eq!(m.rows, 10);
    assert!(m.calls < 10, "{} calls for 10 pipelined events", m.calls);
}

#[test]
fn a_looping_or_trapping_model_costs_its_event_the_fallback_not_the_core() {
    let models = probe_dir(0.2);
    let server = serve_probe(&models.0);
    let mut c = client(&server.shard_addr(0));
    let normal = c.evaluate(&with_features(1, [0.0, 0.0])).unwrap();
    assert_eq!(
        (normal.models[0].score, normal.models[0].error),
        (0.2, false)
    );
    assert!(normal.rules.is_empty());
    let looping = c.evaluate(&with_features(2, [1.0, 0.0])).unwrap();
    assert_eq!(
        (looping.models[0].score, looping.models[0].error),
        (0.9, true),
        "the fallback"
    );
    assert_eq!(
        looping.rules,
        ["probe_high"],
        "the fallback decides like a score"
    );
    let after = c.evaluate(&with_features(3, [0.0, 0.0])).unwrap();
    assert_eq!((after.models[0].score, after.models[0].error), (0.2, false));
    // Pipelined, a looping event and a normal one are one batch, one call: the deadline cuts
    // the call, so both get the fallback, and both are answered.
    let looping_and_normal = [with_features(5, [1.0, 0.0]), with_features(6, [0.0, 0.0])];
    for d in common::pipelined(&mut c, &looping_and_normal) {
        assert_eq!((d.models[0].score, d.models[0].error), (0.9, true));
    }
    let trapped = c.evaluate(&with_features(4, [0.0, 1.0])).unwrap();
    assert_eq!(
        (trapped.models[0].score, trapped.models[0].error),
        (0.9, true)
    );
    // Three failures in a row exhaust two instances within a batch at most; between batches
    // the pool is refilled, so a normal event is scored again.
    for i in 0..3 {
        let d = c.evaluate(&with_features(10 + i, [0.0, 1.0])).unwrap();
        assert!(d.models[0].error);
    }
    let d = c.evaluate(&with_features(20, [0.0, 0.0])).unwrap();
    assert_eq!((d.models[0].score, d.models[0].error), (0.2, false));
    let stats = c.stats().unwrap();
    let probe = &stats.total.models[0];
    assert_eq!((probe.timeouts, probe.traps), (2, 4), "{probe:?}");
    assert_eq!(
        probe.instances_ready, 4,
        "both shards' pools are full again"
    );
}

#[test]
fn check_reports_model_errors_in_manifests_and_modules() {
    let models = probe_dir(0.2);
    let rules = models.0.join("probe.rules");
    std::fs::write(&rules, PROBE_RULES).unwrap();
    let check = |dir: &Path| {
        common::verdict(&[
            "check",
            rules.to_str().unwrap(),
            "--models",
            dir.to_str().unwrap(),
        ])
    };
    let ok = check(&models.0);
    assert!(ok.status.success(), "{}", common::text(&ok.stderr));
    let out = common::text(&ok.stdout);
    assert!(out.contains("model probe@1 ("), "{out}");
    assert!(
        out.contains("(called): 2 features, deadline 50000 us, 2 instances per core"),
        "{out}"
    );

    // A feature that does not compile points into the manifest.
    let manifest = models.0.join("probe.toml");
    std::fs::write(
        &manifest,
        PROBE_MANIFEST.replace("features[1]", "count(acount, 1h)"),
    )
    .unwrap();
    let bad = check(&models.0);
    assert_eq!(bad.status.code(), Some(1));
    let err = common::text(&bad.stderr);
    let want = format!(
        "{}:4:35: error: bad velocity key `acount`",
        manifest.display()
    );
    assert!(err.contains(&want), "{want}\nin:\n{err}");

    // A module that breaks the ABI is named with its reason.
    std::fs::write(&manifest, PROBE_MANIFEST).unwrap();
    std::fs::write(
        models.0.join("probe.wasm"),
        wat::parse_str("(module (memory (export \"memory\") 1))").unwrap(),
    )
    .unwrap();
    let bad = check(&models.0);
    assert_eq!(bad.status.code(), Some(1));
    let err = common::text(&bad.stderr);
    assert!(
        err.contains("probe.wasm: not a verdict ABI v1 model: no `verdict_abi` export"),
        "{err}"
    );
}

#[test]
fn fifty_model_swaps_under_streaming_load_answer_every_request_once() {
    let models = probe_dir(0.25);
    let server = serve_probe(&models.0);
    let stop = Arc::new(AtomicBool::new(false));
    let streams: Vec<_> = (0..2)
        .map(|shard| {
            let (addr, stop) = (server.shard_addr(shard), stop.clone());
            std::thread::spawn(move || {
                // Each decision is scored by the model version of the epoch that decided it.
                let event = |i| with_features(i, [0.0, 0.0]);
                common::stream(&addr, &stop, 16, event, |d| {
                    let want = if d.epoch.is_multiple_of(2) {
                        0.75
                    } else {
                        0.25
                    };
                    let got = (d.models[0].score, d.models[0].error);
                    assert_eq!(got, (want, false), "epoch {}", d.epoch);
                })
            })
        })
        .collect();
    let mut reloader = server.client();
    let mut swap_us = Vec::new();
    for i in 0..50u64 {
        // Even epochs score 0.75 (v2), odd ones 0.25 (v1).
        let score = if i.is_multiple_of(2) { 0.75 } else { 0.25 };
        std::fs::write(models.0.join("probe.wasm"), probe_wasm(score)).unwrap();
        let reply = reloader.reload("").unwrap();
        assert!(reply.ok, "{:?}", reply.errors);
        assert_eq!(reply.epoch, i + 2);
        assert!(
            reply.models[0].starts_with("probe@1 ("),
            "{:?}",
            reply.models
        );
        assert!(reply.swap_us > 0, "every shard took epoch {}", reply.epoch);
        swap_us.push(reply.swap_us);
    }
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    for s in streams {
        let (answered, last_epoch) = s.join().expect("stream thread");
        assert!(answered > 0);
        assert_eq!(last_epoch, 51);
    }
    swap_us.sort_unstable();
    eprintln!(
        "swap_us over 50 reloads: median {} max {}",
        swap_us[25], swap_us[49]
    );
    let stats = server.client().stats().unwrap();
    assert_eq!(stats.total.errors, 0, "{:?}", stats.total.errors_by_code);
    let probe = &stats.total.models[0];
    assert_eq!(
        probe.traps + probe.timeouts + probe.errors + probe.exhausted_rows,
        0
    );
}

/// The same over HTTP: on one HTTP connection (whichever shard accepted it), a slow event
/// owned by each shard. The one owned by the other shard is forwarded and times out: 504
/// with code 9; the one decided where it arrived waits out its model's deadline: 200.
#[test]
fn over_http_a_slow_owner_is_a_504_with_code_9() {
    let models = probe_dir(0.2);
    let server = Server::launch_http(
        &topology(&[0, 1], "mesh_reply_timeout_ms = 20"),
        &[("probe.rules", PROBE_RULES)],
        &["--models", models.0.to_str().unwrap()],
    );
    let bodies: Vec<String> = [0, 1]
        .into_iter()
        .map(|shard| {
            let mut slow = event_on(shard, 10 + u64::from(shard));
            slow.features = vec![1.0, 0.0];
            verdict_net::json::event_to_json(&slow).to_string()
        })
        .collect();
    let script = r#"
import http.client, sys, time
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=20)
for body in sys.argv[2:]:
    c.request("POST", "/v1/decide", body=body)
    r = c.getresponse()
    print(r.status, r.read().decode().strip())
    time.sleep(0.2)
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, &server.http_port.to_string()])
        .args(&bodies)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut statuses: Vec<&str> = text.lines().map(|l| &l[..3]).collect();
    statuses.sort();
    assert_eq!(statuses, ["200", "504"], "{text}");
    let timed_out = text.lines().find(|l| l.starts_with("504")).unwrap();
    let error: serde_json::Value = serde_json::from_str(&timed_out[4..]).unwrap();
    assert_eq!(
        (error["code"].as_u64(), error["name"].as_str()),
        (Some(9), Some("unavailable"))
    );
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("mesh_reply_timeout_ms"),
        "{error}"
    );
}

/// An owner slower than `limits.mesh_reply_timeout_ms`: the event forwarded to it gets error
/// 9 (never a decision made without it), the connection goes on, and once the owner is
/// free again the next forwarded event is decided by it.
#[test]
fn an_owner_slower_than_the_mesh_timeout_costs_its_event_error_9() {
    let models = probe_dir(0.2);
    let server = Server::launch_with(
        &[],
        &topology(&[0, 1], "mesh_reply_timeout_ms = 20"),
        &[("probe.rules", PROBE_RULES)],
        &["--models", models.0.to_str().unwrap()],
    );
    let mut c = client(&server.shard_addr(0));
    // Shard 1 owns it; its model loops until its 50 ms deadline.
    let mut slow = event_on(1, 1);
    slow.features = vec![1.0, 0.0];
    match c.evaluate(&slow) {
        Err(verdict_net::ClientError::Server { code, message, .. }) => {
            assert_eq!(
                code,
                verdict_net::ErrorCode::Unavailable as u16,
                "{message}"
            );
            assert!(message.contains("mesh_reply_timeout_ms"), "{message}");
        }
        other => panic!("expected error 9, got {other:?}"),
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut fast = event_on(1, 2);
    fast.features = vec![0.0, 0.0];
    let d = c.evaluate(&fast).unwrap();
    assert_eq!((d.shard, d.models[0].score), (1, 0.2));
    let stats = c.stats().unwrap();
    assert_eq!(
        stats
            .total
            .errors_by_code
            .iter()
            .map(|e| e.count)
            .sum::<u64>(),
        1
    );
}
