//! `verdict replay`, end to end: real `verdict serve` processes write decision logs, and
//! the replay binary reads them back.
//! - Under the rules that made it, a log replays to exactly the logged decisions (action,
//!   score, rules, shadow rules, model scores to the bit) when every key's events reached
//!   its owner in event-time order: one event at a time over two shards, and pipelined
//!   singles and evaluate-batches on one shard.
//! - Late events (out of event-time order at their owner) are counted as velocity
//!   differences, exactly the events whose windows differ.
//! - A changed rule set on a crafted log: every count of the report as computed by hand,
//!   labels included.
//! - Corruption: replay skips the bad record and says so; a bad header skips its segment.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{RULES, Server, T0, topology, velocity_stream as stream};
use serde_json::Value;
use verdict_net::{Decision, Event};

fn serve_logging(toml: &str, files: &[(&str, &str)], logs: &Path) -> Server {
    Server::launch_with(&[], toml, files, &["--log-dir", logs.to_str().unwrap()])
}

/// `serve_logging` of [`RULES`] with [`common::patient_models`]: a live call the scheduler
/// delays past the shipped 2 ms would be logged as a fallback score, which no replay
/// reproduces (replays cut calls only after 100 ms or more).
fn serve_patiently(toml: &str, logs: &Path, models: &Path) -> Server {
    Server::launch_with(
        &[],
        toml,
        &[("exact.rules", RULES)],
        &[
            "--log-dir",
            logs.to_str().unwrap(),
            "--models",
            models.to_str().unwrap(),
        ],
    )
}

fn stop(mut server: Server) {
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(Duration::from_secs(20)), Some(0));
}

/// `verdict replay LOGS --rules RULES ARGS...`, run to completion.
fn replay_command(logs: &Path, rules: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec![
        "replay",
        logs.to_str().unwrap(),
        "--rules",
        rules.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    common::verdict(&all)
}

/// `verdict replay LOGS --rules RULES --json ARGS...`: the report, and stderr.
fn replay(logs: &Path, rules: &Path, args: &[&str]) -> (Value, String) {
    let out = replay_command(logs, rules, &[&["--json"], args].concat());
    let stderr = common::text(&out.stderr);
    assert!(out.status.success(), "replay failed: {stderr}");
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", common::text(&out.stdout)));
    (report, stderr)
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Each rule's fire count over `decisions` (live, and shadow).
fn fired(decisions: &[Decision], rule: &str) -> (u64, u64) {
    let n = |f: &dyn Fn(&Decision) -> &Vec<String>| {
        decisions
            .iter()
            .filter(|d| f(d).iter().any(|r| r == rule))
            .count() as u64
    };
    (n(&|d| &d.rules), n(&|d| &d.shadow_rules))
}

/// Asserts the report says every event was decided as logged, and that its counts before
/// and after are those of the answers the client got.
fn assert_reproduced(report: &Value, answers: &[Decision]) {
    let n = answers.len() as u64;
    assert_eq!(report["events"], n, "{report:#}");
    assert_eq!(report["identical"], n, "{report:#}");
    for what in ["action", "score", "rules", "models"] {
        assert_eq!(report["changed"][what], 0, "{what}: {report:#}");
    }
    assert_eq!(report["velocity_differs"], 0);
    assert_eq!(report["velocity_compared"], n);
    assert_eq!(report["log"]["skipped"]["invalid_events"], 0);
    assert!(report["transitions"].as_object().unwrap().is_empty());
    for r in report["rule_counts"].as_array().unwrap() {
        let rule = r["rule"].as_str().unwrap();
        let (live, shadow) = fired(answers, rule);
        for side in ["before", "after"] {
            assert_eq!(r[side]["fired"], live, "{rule} {side}");
            assert_eq!(r[side]["shadow"], shadow, "{rule} {side}");
        }
    }
    for action in ["allow", "review", "deny"] {
        let live = answers
            .iter()
            .filter(|d| format!("{:?}", d.action).eq_ignore_ascii_case(action))
            .count() as u64;
        assert_eq!(report["actions"][action]["before"], live, "{action}");
        assert_eq!(report["actions"][action]["after"], live, "{action}");
    }
}

#[test]
fn replaying_under_the_logged_rules_reproduces_every_decision_across_shards() {
    let dir = common::tempdir::Dir::new("replay");
    let logs = dir.0.join("log");
    let rules = write(&dir.0, "exact.rules", RULES);
    let models = common::patient_models(&dir.0);
    let models_arg = ["--models", models.to_str().unwrap()];
    let server = serve_patiently(&topology(&[0, 1], ""), &logs, &models);
    // One event at a time on the shared port: half are forwarded, and every device, IP and
    // merchant is recorded by its owner, each key's events in event-time order.
    let mut c = server.client();
    let events = stream(1_500);
    let answers: Vec<Decision> = events.iter().map(|e| c.evaluate(e).unwrap()).collect();
    stop(server);
    assert!(
        [
            "device_burst",
            "ip_spend",
            "merchant_accounts",
            "model_risk"
        ]
        .iter()
        .all(|r| fired(&answers, r).0 > 0)
            && fired(&answers, "shadow_device").1 > 0,
        "the stream exercises every key, the model and the shadow rule"
    );
    let (report, stderr) = replay(
        &logs,
        &rules,
        &[&models_arg[..], &["--threads", "2"]].concat(),
    );
    assert_reproduced(&report, &answers);
    assert_eq!(report["log"]["shards"], 2);
    assert!(!stderr.contains("WARNING"), "{stderr}");
    // One thread gives the same report.
    let (one, _) = replay(
        &logs,
        &rules,
        &[&models_arg[..], &["--threads", "1"]].concat(),
    );
    assert_eq!(one["rule_counts"], report["rule_counts"]);
    assert_eq!(one["identical"], report["identical"]);
}

#[test]
fn pipelined_singles_and_batches_on_one_shard_replay_exactly() {
    let dir = common::tempdir::Dir::new("replay");
    let logs = dir.0.join("log");
    let rules = write(&dir.0, "exact.rules", RULES);
    let models = common::patient_models(&dir.0);
    let server = serve_patiently(&topology(&[0], ""), &logs, &models);
    let mut c = server.client();
    let events = stream(1_200);
    let mut answers = Vec::new();
    for (n, chunk) in events.chunks(100).enumerate() {
        if n % 2 == 0 {
            // Pipelined evaluates: each event's bytes in its own record.
            answers.extend(common::pipelined(&mut c, chunk));
        } else {
            // An evaluate-batch: one payload record, decisions pointing into it.
            answers.extend(c.evaluate_batch(chunk.to_vec()).unwrap());
        }
    }
    stop(server);
    let (report, _) = replay(&logs, &rules, &["--models", models.to_str().unwrap()]);
    assert_reproduced(&report, &answers);
}

/// Events for one device, out of event-time order: the owner recorded them as they came,
/// replay records them in event time, so exactly the events whose windows differ are
/// counted.
#[test]
fn late_events_are_counted_as_velocity_differences() {
    let dir = common::tempdir::Dir::new("replay");
    let logs = dir.0.join("log");
    let rules_text = "rule device_seen { when count(device, 10m) >= 2  score 50 }\n";
    let rules = write(&dir.0, "late.rules", rules_text);
    let server = serve_logging(&topology(&[0], ""), &[("late.rules", rules_text)], &logs);
    let mut c = server.client();
    // All three in one bucket of the 10-minute window (18,750 ms): a late event in an
    // earlier bucket would see only the window up to its own bucket.
    let base = T0 - T0 % 18_750;
    let at = |i: u64, ms: u64| {
        let mut e = verdict_net::test_event(&format!("late-{i}"), &format!("acct-{i}"), 1_000);
        e.device_id = "dev-late".into();
        e.timestamp_ms = base + ms;
        e
    };
    // Live: A (t=3 s) sees 1, B (t=1 s, late) sees 2, C (t=5 s) sees 3.
    // In event time: B sees 1, A sees 2, C sees 3. A and B differ; C does not.
    let live: Vec<Decision> = [at(0, 3_000), at(1, 1_000), at(2, 5_000)]
        .iter()
        .map(|e| c.evaluate(e).unwrap())
        .collect();
    stop(server);
    assert_eq!(live[0].score, 0);
    assert_eq!(live[1].score, 50);
    let (report, _) = replay(&logs, &rules, &[]);
    assert_eq!(report["velocity_compared"], 3);
    assert_eq!(report["velocity_differs"], 2, "{report:#}");
    // A now fires (allow stays allow: no policy; the score changes), B no longer does.
    assert_eq!(report["changed"]["score"], 2);
    assert_eq!(report["identical"], 1);
}

const BEFORE: &str = r#"
rule big { when amount > 100.00  score 50 }
rule huge { when amount > 1000.00  action deny }
shadow rule eur_big { when currency == "EUR" and amount > 50.00  action deny }
policy { deny when score >= 80; review when score >= 40; otherwise allow }
"#;

/// `big` lowered to 80.00, `eur_big` promoted from shadow.
const AFTER: &str = r#"
rule big { when amount > 80.00  score 50 }
rule huge { when amount > 1000.00  action deny }
rule eur_big { when currency == "EUR" and amount > 50.00  action deny }
policy { deny when score >= 80; review when score >= 40; otherwise allow }
"#;

fn crafted(i: u64, amount_minor: i64, currency: &str) -> Event {
    let mut e = verdict_net::test_event(&format!("e{i}"), &format!("acct-{i}"), amount_minor);
    e.currency = currency.into();
    e.timestamp_ms = T0 + i * 1_000;
    e
}

#[test]
fn a_changed_rule_set_reports_the_hand_computed_counts() {
    let dir = common::tempdir::Dir::new("replay");
    let logs = dir.0.join("log");
    let after = write(&dir.0, "after.rules", AFTER);
    let server = serve_logging(&topology(&[0], ""), &[("before.rules", BEFORE)], &logs);
    let mut c = server.client();
    // before -> after, by hand:
    // e1  50.00 USD  allow (0)                    -> allow (0)
    // e2 150.00 USD  review (50) big              -> review (50) big
    // e3 1500.00 USD deny (50) big, huge          -> deny (50) big, huge
    // e4  60.00 EUR  allow (0), shadow eur_big    -> deny (0) eur_big
    // e5 200.00 EUR  review (50) big, shadow eur  -> deny (50) big, eur_big
    // e6  90.00 USD  allow (0)                    -> review (50) big
    let events = [
        crafted(1, 5_000, "USD"),
        crafted(2, 15_000, "USD"),
        crafted(3, 150_000, "USD"),
        crafted(4, 6_000, "EUR"),
        crafted(5, 20_000, "EUR"),
        crafted(6, 9_000, "USD"),
    ];
    let live: Vec<String> = events
        .iter()
        .map(|e| format!("{:?}", c.evaluate(e).unwrap().action).to_lowercase())
        .collect();
    assert_eq!(
        live,
        ["allow", "review", "deny", "allow", "review", "allow"]
    );
    stop(server);
    // Labels: fraud e3, e4, e6; legitimate e1, e5; e2 unlabeled; one id not in the log.
    let labels = write(
        &dir.0,
        "labels.csv",
        "event_id,label\ne3,1\ne4,1\n\"e6\",1\ne1,0\r\ne5,0\nnot-in-log,1\n",
    );
    let (r, _) = replay(&logs, &after, &["--labels", labels.to_str().unwrap()]);
    assert_eq!(r["events"], 6);
    assert_eq!(r["identical"], 3);
    assert_eq!(r["changed"]["action"], 3);
    assert_eq!(r["changed"]["score"], 1);
    assert_eq!(r["changed"]["rules"], 3);
    assert_eq!(
        r["transitions"],
        serde_json::json!({
            "allow->deny": {"events": 1, "amount": {"EUR": 6000}},
            "review->deny": {"events": 1, "amount": {"EUR": 20000}},
            "allow->review": {"events": 1, "amount": {"USD": 9000}},
        })
    );
    let actions =
        |side: &str| ["allow", "review", "deny"].map(|a| r["actions"][a][side].as_u64().unwrap());
    assert_eq!(actions("before"), [3, 2, 1]);
    assert_eq!(actions("after"), [1, 2, 3]);
    let usd = &r["amounts"]["USD"];
    assert_eq!(usd["before"]["review"], 15_000);
    assert_eq!(usd["before"]["deny"], 150_000);
    assert_eq!(usd["after"]["review"], 24_000);
    assert_eq!(usd["after"]["deny"], 150_000);
    assert_eq!(usd["changed"], 9_000);
    let eur = &r["amounts"]["EUR"];
    assert_eq!(eur["before"]["review"], 20_000);
    assert_eq!(eur["after"]["deny"], 26_000);
    assert_eq!(eur["changed"], 26_000);
    let count = |rule: &str| {
        let c = r["rule_counts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["rule"] == rule)
            .unwrap_or_else(|| panic!("{rule} in {r:#}"));
        [
            &c["before"]["fired"],
            &c["before"]["shadow"],
            &c["after"]["fired"],
            &c["after"]["shadow"],
        ]
        .map(|v| v.as_u64().unwrap())
    };
    assert_eq!(count("big"), [3, 0, 4, 0]);
    assert_eq!(count("huge"), [1, 0, 1, 0]);
    assert_eq!(count("eur_big"), [0, 2, 2, 0]);
    // Labels.
    let l = &r["labels"];
    assert_eq!(l["labels"], 6);
    assert_eq!(l["labeled_events"], 5);
    assert_eq!(l["fraud_events"], 3);
    assert_eq!(l["legit_events"], 2);
    assert_eq!(l["not_in_log"], 1);
    let q = |side: &str, action: &str, what: &str| l[side][action][what].as_f64();
    assert_eq!(q("before", "deny", "precision"), Some(1.0));
    assert_eq!(q("before", "deny", "recall"), Some(1.0 / 3.0));
    assert_eq!(q("before", "review", "precision"), Some(0.0));
    assert_eq!(q("before", "review", "recall"), Some(0.0));
    assert_eq!(q("after", "deny", "precision"), Some(2.0 / 3.0));
    assert_eq!(q("after", "deny", "recall"), Some(2.0 / 3.0));
    assert_eq!(q("after", "review", "precision"), Some(1.0));
    assert_eq!(q("after", "review", "recall"), Some(1.0 / 3.0));
    assert_eq!(
        l["before"]["fraud_amount_caught"],
        serde_json::json!({"USD": 150000})
    );
    assert_eq!(
        l["after"]["fraud_amount_caught"],
        serde_json::json!({"USD": 150000, "EUR": 6000})
    );
    assert_eq!(l["before"]["legit_amount_blocked"], serde_json::json!({}));
    assert_eq!(
        l["after"]["legit_amount_blocked"],
        serde_json::json!({"EUR": 20000})
    );
    // The earliest changed decision, as people read it.
    assert_eq!(r["examples"][0]["event_id"], "e4");
    let text = replay_command(&logs, &after, &["--labels", labels.to_str().unwrap()]);
    let text = common::text(&text.stdout);
    for line in [
        "decided exactly as logged: 3",
        "allow->deny",
        "e4 @",
        "fraud amount caught (denied):     before USD 150000   after EUR 6000, USD 150000",
    ] {
        assert!(text.contains(line), "{line:?} in:\n{text}");
    }
    // A labels file with a bad label is refused, naming its line.
    let bad = write(&dir.0, "bad.csv", "event_id,label\ne1,1\ne2,yes\n");
    let out = replay_command(&logs, &after, &["--labels", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        common::text(&out.stderr).contains("bad.csv:3:"),
        "{}",
        common::text(&out.stderr)
    );
}

#[test]
fn corrupt_records_are_skipped_and_reported_and_a_bad_header_skips_its_segment() {
    let dir = common::tempdir::Dir::new("replay");
    let logs = dir.0.join("log");
    let rules = write(&dir.0, "before.rules", BEFORE);
    let server = serve_logging(&topology(&[0], ""), &[("before.rules", BEFORE)], &logs);
    let mut c = server.client();
    for i in 0..50 {
        c.evaluate(&crafted(i, 1_000 + i as i64, "USD")).unwrap();
    }
    stop(server);
    let segment = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "vlog"))
        .unwrap();
    // Flip a byte in the body of the third record (the epoch record, then two decisions).
    let mut bytes = std::fs::read(&segment).unwrap();
    let mut at = 64;
    for _ in 0..2 {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        at += (8 + len).next_multiple_of(16);
    }
    bytes[at + 30] ^= 0xff;
    std::fs::write(&segment, &bytes).unwrap();
    // A segment of another shard whose header is garbage.
    std::fs::write(
        logs.join("shard-0001-00000000000000000001.vlog"),
        [0x42u8; 200],
    )
    .unwrap();
    let (r, stderr) = replay(&logs, &rules, &[]);
    assert_eq!(r["events"], 49);
    assert_eq!(r["identical"], 49);
    let skipped = &r["log"]["skipped"];
    assert_eq!(skipped["corrupt_stretches"], 1, "{skipped:#}");
    assert_eq!(skipped["bad_segments"], 1, "{skipped:#}");
    assert!(
        skipped["examples"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e.as_str().unwrap().contains(&format!("offset {at}"))),
        "{skipped:#}"
    );
    assert!(stderr.contains("WARNING"), "{stderr}");
    // No log at all is an error, not an empty report.
    let empty = dir.0.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = replay_command(&empty, &rules, &[]);
    assert!(!out.status.success());
    assert!(common::text(&out.stderr).contains("no decision log segments"));
}

#[test]
#[ignore = "rewrites the committed fuzz seeds of log_segment; run after changing the log format"]
fn write_log_segment_seeds() {
    let dir = common::tempdir::Dir::new("replay");
    let logs = dir.0.join("log");
    let server = serve_logging(&topology(&[0], ""), &[("exact.rules", RULES)], &logs);
    let mut c = server.client();
    let events = stream(6);
    for e in &events[..3] {
        c.evaluate(e).unwrap();
    }
    c.evaluate_batch(events[3..].to_vec()).unwrap();
    stop(server);
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/log_segment");
    std::fs::create_dir_all(&seeds).unwrap();
    let segment = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "vlog"))
        .unwrap();
    let bytes = std::fs::read(segment).unwrap();
    std::fs::write(seeds.join("singles-and-a-batch.vlog"), &bytes).unwrap();
    // The same, torn mid-record.
    std::fs::write(seeds.join("torn.vlog"), &bytes[..bytes.len() * 2 / 3]).unwrap();
}
