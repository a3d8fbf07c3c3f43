//! The decision log, end to end against real `verdict serve` processes: every answered
//! decision is in the log and exports as it was answered; `kill -9` under pipelined load
//! with `sync = "always"` loses no answered decision and restarts cleanly; a torn tail is
//! cut and reported, flipped bytes are reported with their offset, and nothing panics.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Server, event, topology};
use verdict_net::{Decision, Kind};

fn with_log(sync: &str) -> String {
    topology(&[0, 1], "") + &format!("\n[log]\nsync = \"{sync}\"\nsync_interval_ms = 20\n")
}

fn serve_logging(toml: &str, dir: &std::path::Path) -> Server {
    Server::launch_with(&[], toml, &[], &["--log-dir", dir.to_str().unwrap()])
}

fn verify(dir: &std::path::Path) -> (bool, String) {
    let out = common::verdict(&["log", "verify", dir.to_str().unwrap()]);
    (out.status.success(), common::text(&out.stdout))
}

fn export(dir: &std::path::Path) -> Vec<serde_json::Value> {
    common::log_export(dir)
}

fn stop(mut server: Server) {
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(Duration::from_secs(20)), Some(0));
}

#[test]
fn every_answered_decision_is_logged_and_exports_as_it_was_answered() {
    let dir = common::tempdir::Dir::new("log");
    let logs = dir.0.join("log");
    let server = serve_logging(&with_log("interval"), &logs);
    let mut c = server.client();
    // Pipelined single evaluates on the shared port (about half forwarded) and a batch.
    let events: Vec<_> = (0..300).map(event).collect();
    let mut answered: Vec<Decision> = common::pipelined(&mut c, &events);
    let batch: Vec<_> = (300..340).map(event).collect();
    answered.extend(c.evaluate_batch(batch).unwrap());
    let total = c.stats().unwrap().total;
    assert_eq!(total.log_records, answered.len() as u64);
    assert_eq!(
        (
            total.log_unlogged,
            total.log_refused,
            total.log_write_errors
        ),
        (0, 0, 0)
    );
    assert_eq!(total.log_segments, 2, "one per shard");
    assert!(total.log_bytes_written > 0 || total.log_records > 0);
    stop(server);

    let (ok, report) = verify(&logs);
    assert!(ok, "{report}");
    assert!(report.contains("0 torn tails: ok"), "{report}");
    let rows: HashMap<String, serde_json::Value> = export(&logs)
        .into_iter()
        .map(|r| (r["event_id"].as_str().unwrap().to_string(), r))
        .collect();
    assert_eq!(rows.len(), answered.len());
    for d in &answered {
        let row = &rows[&d.event_id];
        let json = verdict_net::json::decision_to_json(d);
        for key in [
            "action",
            "score",
            "rules",
            "shadow_rules",
            "models",
            "epoch",
            "shard",
        ] {
            assert_eq!(row[key], json[key], "{key} of {}", d.event_id);
        }
        // The event as it arrived.
        let i: u64 = d.event_id[4..].parse().unwrap();
        let sent = verdict_net::json::event_to_json(&event(i));
        for key in [
            "account_id",
            "amount_minor",
            "ip",
            "timestamp_ms",
            "merchant_id",
        ] {
            assert_eq!(row[key], sent[key], "{key}");
        }
        assert!(row["velocity"].as_object().is_some_and(|v| !v.is_empty()));
        assert!(row["digest"].is_string());
    }
}

/// `kill -9` mid-stream with `sync = "always"`: every decision the client received is in
/// the log after a restart, sequence numbers never repeat, and `verify` passes.
#[test]
fn kill_9_under_load_with_sync_always_loses_no_answered_decision() {
    let dir = common::tempdir::Dir::new("log");
    let logs = dir.0.join("log");
    let toml = with_log("always");
    let mut server = serve_logging(&toml, &logs);
    let mut c = server.client();
    let mut answered = Vec::new();
    for round in 0..20u64 {
        let events: Vec<_> = (0..50).map(|i| event(round * 50 + i)).collect();
        answered.extend(
            common::pipelined(&mut c, &events)
                .into_iter()
                .map(|d| d.event_id),
        );
    }
    let total = c.stats().unwrap().total;
    assert!(
        total.log_fsyncs > 0 && total.log_fsync_ns_total > 0,
        "{total:?}"
    );
    // More in flight, unanswered, as the process dies.
    for i in 0..200 {
        c.send(Kind::Evaluate, &event(10_000 + i)).unwrap();
    }
    c.flush().unwrap();
    server.signal(libc::SIGKILL);
    server.wait_exit(Duration::from_secs(10));
    drop(server);

    // A restart recovers (cutting a torn tail if the kill left one) and keeps numbering.
    let server = serve_logging(&toml, &logs);
    let mut c = server.client();
    c.evaluate(&event(99_999)).unwrap();
    stop(server);
    let (ok, report) = verify(&logs);
    assert!(ok, "{report}");
    let rows = export(&logs);
    let logged: std::collections::HashSet<&str> = rows
        .iter()
        .map(|r| r["event_id"].as_str().unwrap())
        .collect();
    for id in &answered {
        assert!(
            logged.contains(id.as_str()),
            "{id} was answered but is not in the log"
        );
    }
    assert!(logged.contains("evt-99999"));
    let mut seqs: Vec<(u64, u64)> = rows
        .iter()
        .map(|r| (r["shard"].as_u64().unwrap(), r["seq"].as_u64().unwrap()))
        .collect();
    let n = seqs.len();
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len(), n, "no sequence number twice");
}

/// `sync = "off"` and `kill -9`: what is on disk is a valid prefix (at most a torn tail).
#[test]
fn kill_9_with_sync_off_leaves_a_valid_prefix() {
    let dir = common::tempdir::Dir::new("log");
    let logs = dir.0.join("log");
    let mut server = serve_logging(&with_log("off"), &logs);
    let mut c = server.client();
    for i in 0..500 {
        c.send(Kind::Evaluate, &event(i)).unwrap();
    }
    c.flush().unwrap();
    for _ in 0..500 {
        c.recv().unwrap();
    }
    server.signal(libc::SIGKILL);
    server.wait_exit(Duration::from_secs(10));
    let (ok, report) = verify(&logs);
    assert!(ok, "{report}");
}

/// Damage: bytes appended to a segment are a torn tail (reported, verify passes, a restart
/// cuts them); a flipped byte inside a record is corruption, reported with its offset
/// (verify fails), export skips that record, and nothing panics.
#[test]
fn torn_tails_are_cut_and_corruption_is_reported_with_its_offset() {
    let dir = common::tempdir::Dir::new("log");
    let logs = dir.0.join("log");
    let toml = with_log("interval");
    let server = serve_logging(&toml, &logs);
    let mut c = server.client();
    for i in 0..40 {
        c.evaluate(&event(i)).unwrap();
    }
    stop(server);
    let segment = |shard: u32| -> std::path::PathBuf {
        std::fs::read_dir(&logs)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .starts_with(&format!("shard-{shard:04}-"))
            })
            .min()
            .unwrap()
    };
    let path = segment(0);
    let mut bytes = std::fs::read(&path).unwrap();
    let intact = bytes.len();
    bytes.extend_from_slice(&[0x5a; 37]);
    std::fs::write(&path, &bytes).unwrap();
    let (ok, report) = verify(&logs);
    assert!(ok, "a torn tail is not an error: {report}");
    assert!(
        report.contains(&format!("torn tail at offset {intact}: 37 bytes")),
        "{report}"
    );

    // A restart cuts it.
    let server = serve_logging(&toml, &logs);
    stop(server);
    assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, intact);

    // Corruption in the second record of shard 1's first segment.
    let path = segment(1);
    let mut bytes = std::fs::read(&path).unwrap();
    let first_len = u32::from_le_bytes(bytes[64..68].try_into().unwrap()) as usize;
    let second = 64 + (8 + first_len).next_multiple_of(16);
    bytes[second + 20] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let (ok, report) = verify(&logs);
    assert!(!ok, "{report}");
    assert!(
        report.contains(&format!("CORRUPT at offset {second}")),
        "{report}"
    );
    let rows = export(&logs);
    assert!(rows.len() < 40 + 1 && rows.len() >= 38, "{}", rows.len());
}

/// Small segments rotate, retention deletes the oldest closed ones, and what is left reads
/// back whole: verify passes and the newest decisions are all there.
#[test]
fn segments_rotate_and_retention_keeps_the_newest() {
    let dir = common::tempdir::Dir::new("log");
    let logs = dir.0.join("log");
    let toml = topology(&[0], "")
        + "\n[log]\nsync = \"interval\"\nsync_interval_ms = 5\nsegment_bytes_max = 65536\nretention_bytes_max = 1048576\n";
    let server = serve_logging(&toml, &logs);
    let mut c = server.client();
    for round in 0..40u64 {
        let ids: Vec<u64> = (0..100)
            .map(|i| c.send(Kind::Evaluate, &event(round * 100 + i)).unwrap())
            .collect();
        c.flush().unwrap();
        for id in ids {
            c.recv().unwrap().expect(Kind::Evaluate, id).unwrap();
        }
    }
    stop(server);
    let (ok, report) = verify(&logs);
    assert!(ok, "{report}");
    // Each segment stands alone: its first record is its epoch record, numbered as its
    // name says; every closed one reached 64 KiB and passed it by less than one batch
    // (100 decisions).
    let mut names: Vec<String> = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".vlog"))
        .collect();
    names.sort();
    // A segment closes once it reaches 64 KiB, whatever the writes gather: 4,000
    // decisions make more than 1 MiB of them, and retention deleted the oldest.
    assert!(names.len() >= 8, "{names:?}");
    assert!(
        !names[0].ends_with("-00000000000000000001.vlog"),
        "{names:?}"
    );
    for (i, name) in names.iter().enumerate() {
        let bytes = std::fs::read(logs.join(name)).unwrap();
        let first_seq: u64 = name[11..31].parse().unwrap();
        let seq = u64::from_le_bytes(bytes[72..80].try_into().unwrap());
        assert_eq!((seq, bytes[80]), (first_seq, 1), "{name}: first record");
        if i + 1 < names.len() {
            assert!(
                (65_536..65_536 + 65_536).contains(&bytes.len()),
                "{name}: {} bytes",
                bytes.len()
            );
        }
    }
    let on_disk: u64 = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    // Retention runs at each rotation: closed segments within the budget, plus the open one.
    assert!(on_disk <= 1_048_576 + 2 * 131_072, "{on_disk} bytes kept");
    let rows = export(&logs);
    assert!(rows.len() < 4000 && rows.len() > 300, "{} rows", rows.len());
    // What is left reads back whole: in each kept segment, the first record is its epoch
    // record and every sequence number after it, up to the next segment's first, is a
    // decision that exports; the newest is the 4,000th decision.
    let seqs: std::collections::BTreeSet<u64> =
        rows.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    let newest = *seqs.last().unwrap();
    let firsts: Vec<u64> = names.iter().map(|n| n[11..31].parse().unwrap()).collect();
    for (i, &first) in firsts.iter().enumerate() {
        let end = firsts.get(i + 1).copied().unwrap_or(newest + 1);
        let missing: Vec<u64> = (first + 1..end).filter(|s| !seqs.contains(s)).collect();
        assert!(missing.is_empty(), "{}: {missing:?} missing", names[i]);
    }
    let last = rows.iter().find(|r| r["seq"] == newest).unwrap();
    assert_eq!(last["event_id"], event(3999).event_id.as_str());
}

/// A tmpfs of 256 KiB mounted over the log directory, unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &std::path::Path) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount(8)");
        assert!(
            status.success(),
            "mounting a small tmpfs needs root (CI runs as root)"
        );
        SmallDisk(dir.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Streams until the log's disk is full: under "answer" every request is still decided and
/// the lost records are counted; under "refuse" every request is answered exactly once,
/// with a decision or error 9, never a decision whose record was lost; neither panics, and
/// the engine serves on.
#[test]
fn a_full_disk_follows_the_documented_policy() {
    for policy in ["answer", "refuse"] {
        let dir = common::tempdir::Dir::new("log");
        let logs = dir.0.join("log");
        let disk = SmallDisk::mount(&logs);
        // Room taken now and given back once the disk has filled.
        let ballast = logs.join("ballast");
        std::fs::write(&ballast, vec![0u8; 64 << 10]).unwrap();
        let toml = topology(&[0], "")
            + &format!(
                "\n[log]\nsync = \"interval\"\nsync_interval_ms = 5\nsegment_bytes_max = 65536\non_write_error = \"{policy}\"\n"
            );
        let server = serve_logging(&toml, &logs);
        let mut c = server.client();
        let (mut decided, mut refused) = (0u64, 0u64);
        for round in 0..30u64 {
            let ids: Vec<u64> = (0..100)
                .map(|i| c.send(Kind::Evaluate, &event(round * 100 + i)).unwrap())
                .collect();
            c.flush().unwrap();
            for id in ids {
                let r = c.recv().unwrap();
                assert_eq!(r.id, id, "answered in order, once");
                match r.expect(Kind::Evaluate, id) {
                    Ok(_) => decided += 1,
                    Err(verdict_net::ClientError::Server { code, message, .. }) => {
                        assert_eq!(policy, "refuse", "{message}");
                        assert_eq!(code, verdict_net::ErrorCode::Unavailable as u16);
                        assert!(message.contains("decision log"), "{message}");
                        refused += 1;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }
        let total = c.stats().unwrap().total;
        assert_eq!(decided + refused, 3000);
        assert!(
            total.log_write_errors > 0,
            "{policy}: the 256 KiB disk filled: {total:?}"
        );
        match policy {
            "answer" => {
                assert_eq!(decided, 3000);
                assert!(total.log_unlogged > 0);
            }
            _ => {
                assert!(refused > 0 && total.log_refused > 0);
                assert_eq!(total.log_unlogged, 0);
            }
        }
        c.ping().unwrap();
        // Space comes back: the log goes on, and what it writes reads whole. Every
        // decision after the failed writes is under an epoch record in its segment.
        std::fs::remove_file(&ballast).unwrap();
        for i in 0..100 {
            let _ = c.evaluate(&event(5_000 + i));
        }
        stop(server);
        let (ok, report) = verify(&logs);
        assert!(ok, "{policy}: {report}");
        let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules/default.rules");
        let out = common::verdict(&[
            "replay",
            logs.to_str().unwrap(),
            "--rules",
            rules.to_str().unwrap(),
            "--json",
        ]);
        assert!(out.status.success(), "{}", common::text(&out.stderr));
        let replayed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            replayed["log"]["skipped"]["missing_epoch"], 0,
            "{policy}: {:#}",
            replayed["log"]["skipped"]
        );
        let rows = export(&logs);
        assert_eq!(replayed["events"].as_u64().unwrap(), rows.len() as u64);
        let later = rows
            .iter()
            .filter(|r| r["event_id"].as_str().unwrap()[4..].parse::<u64>().unwrap() >= 5_000)
            .count();
        assert!(later > 0, "{policy}: nothing logged once space came back");
        drop(disk);
    }
}

const SET_A: &str = "rule a_always { when amount >= 0  score 1 }\n";
const SET_B: &str = "rule b_always { when amount >= 0  score 2 }\n";

/// `kill -9` after a reload: the restart serves the rule set last published (kept beside the
/// log, checked by its digest), not the `--rules` it is given, even though the file it came
/// from has changed since; it says so in its start-up log.
#[test]
fn a_restart_after_kill_9_serves_the_rule_set_last_published() {
    let dir = common::tempdir::Dir::new("log");
    let logs = dir.0.join("log");
    // "always": every answered decision is on disk before `kill -9`.
    let toml = topology(&[0, 1], "") + "\n[admin]\nwire_reload = true\n[log]\nsync = \"always\"\n";
    let args = ["--log-dir", logs.to_str().unwrap()];
    let files = [("a.rules", SET_A), ("b.rules", SET_B)];
    let mut server = Server::launch_with(&[], &toml, &files, &args);
    let mut c = server.client();
    assert_eq!(c.evaluate(&event(1)).unwrap().rules, ["a_always"]);
    let reply = c.reload("b.rules").unwrap();
    assert!(reply.ok && reply.epoch == 2, "{reply:?}");
    assert_eq!(c.evaluate(&event(2)).unwrap().rules, ["b_always"]);
    std::fs::write(
        server.dir().join("b.rules"),
        "rule b_changed { when amount >= 0  score 3 }\n",
    )
    .unwrap();
    server.signal(libc::SIGKILL);
    server.wait_exit(Duration::from_secs(10));
    drop(server);

    let server = Server::launch_with(&[], &toml, &files, &args);
    let d = server.client().evaluate(&event(3)).unwrap();
    assert_eq!(
        (d.rules.as_slice(), d.epoch),
        (&["b_always".to_string()][..], 1)
    );
    let log = server.stderr.lock().unwrap().clone();
    assert!(log.contains("restored from the decision log"), "{log}");
    stop(server);
    // Every decision of both runs is in the log, each with its epoch's names.
    let rows = export(&logs);
    let fired: Vec<&str> = rows
        .iter()
        .map(|r| r["rules"][0].as_str().unwrap())
        .collect();
    assert_eq!(
        fired.iter().filter(|r| **r == "b_always").count(),
        2,
        "{fired:?}"
    );
    assert_eq!(
        fired.iter().filter(|r| **r == "a_always").count(),
        1,
        "{fired:?}"
    );
}

/// `verdict log export --format parquet`, read back by pyarrow (a reader no one here
/// wrote): the same rows and values as the JSON lines export, flat columns.
#[test]
fn the_parquet_export_reads_back_in_pyarrow_as_the_jsonl_export() {
    let dir = common::tempdir::Dir::new("log");
    let logs = dir.0.join("log");
    let server = serve_logging(&with_log("interval"), &logs);
    let mut c = server.client();
    for i in 0..150 {
        c.evaluate(&event(i)).unwrap();
    }
    c.evaluate_batch((150..200).map(event).collect()).unwrap();
    stop(server);
    let rows = export(&logs);
    let parquet = dir.0.join("decisions.parquet");
    let out = common::verdict(&[
        "log",
        "export",
        logs.to_str().unwrap(),
        "--format",
        "parquet",
        "--out",
        parquet.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    const SCRIPT: &str = r#"
import json, sys
import pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
print(json.dumps({"names": t.column_names, "rows": t.to_pylist()}))
"#;
    let python = common::venv_python();
    let out = std::process::Command::new(&python)
        .args(["-c", SCRIPT, parquet.to_str().unwrap()])
        .output()
        .unwrap_or_else(|e| panic!("{python}: {e}; run scripts/setup.sh (it installs pyarrow)"));
    assert!(
        out.status.success(),
        "pyarrow: {}",
        common::text(&out.stderr)
    );
    let table: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = table["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    for column in [
        "event_id",
        "amount_minor",
        "action",
        "score",
        "rules",
        "epoch",
        "shard",
        "seq",
    ] {
        assert!(names.contains(&column), "{column} in {names:?}");
    }
    assert!(names.contains(&"model.fraud_lr"), "{names:?}");
    let read = table["rows"].as_array().unwrap();
    assert_eq!(read.len(), rows.len());
    assert_eq!(read.len(), 200);
    for (p, j) in read.iter().zip(&rows) {
        for key in [
            "event_id",
            "account_id",
            "amount_minor",
            "ip",
            "action",
            "score",
            "rules",
            "shadow_rules",
            "epoch",
            "shard",
            "seq",
        ] {
            assert_eq!(p[key], j[key], "{key} of {}", j["event_id"]);
        }
        assert_eq!(p["model.fraud_lr"], j["models"]["fraud_lr"]);
        for (name, value) in j["velocity"].as_object().unwrap() {
            assert_eq!(&p[format!("velocity.{name}").as_str()], value, "{name}");
        }
    }
}
