//! End-to-end: `verdict serve --rules`, `verdict check` and `verdict reload` as a user runs
//! them, and hot reload under streaming load losing or failing no request.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Server, client, event, text, topology, verdict};
use verdict_net::Action;

/// Rule set A fires `a_rule` on every event; B fires `b_rule`. Both use a list file
/// relative to the rules file.
const RULES_A: &str = "list vip from \"lists/vip.txt\"\n\
                       rule a_rule { when amount > 0 and account not in vip  score 1 }\n";
const RULES_B: &str = "list vip from \"lists/vip.txt\"\n\
                       rule b_rule { when amount > 0 and account not in vip  score 2 }\n";
const VIP: &str = "# accounts never scored\nacct-vip\n";

#[test]
fn serve_loads_rules_with_lists_relative_to_the_rules_file() {
    let server = Server::with_rules(
        &topology(&[0], ""),
        &[("rules/a.rules", RULES_A), ("rules/lists/vip.txt", VIP)],
    );
    let mut c = server.client();
    let d = c.evaluate(&event(1)).unwrap();
    assert_eq!(
        (d.rules, d.score, d.epoch),
        (vec!["a_rule".to_string()], 1, 1)
    );
    let mut vip = event(2);
    vip.account_id = "acct-vip".into();
    let d = c.evaluate(&vip).unwrap();
    assert!(d.rules.is_empty(), "{d:?}");
}

#[test]
fn serve_refuses_to_start_on_a_rule_set_with_errors_and_names_them() {
    let dir = common::tempdir::Dir::new("bad-rules");
    let rules = dir.0.join("bad.rules");
    std::fs::write(&rules, "rule r { when amout > 5 score 1 }\n").unwrap();
    let shards = dir.0.join("shards.toml");
    std::fs::write(&shards, topology(&[0], "")).unwrap();
    let out = verdict(&[
        "serve",
        "--shards",
        shards.to_str().unwrap(),
        "--rules",
        rules.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("bad.rules:1:15: error: unknown field `amout`; did you mean `amount`?"),
        "{err}"
    );
}

#[test]
fn check_reports_every_error_with_a_caret_and_exits_non_zero() {
    let dir = common::tempdir::Dir::new("check");
    let path = dir.0.join("r.rules");
    std::fs::write(
        &path,
        "rule a { when amout > 5 score 1 }\n\
         rule b { when country > 5 score 1 }\n\
         rule c { when count(account, 45d) > 1 score 1 }\n\
         rule d { when model(\"fraud_xgb\") > 0.5 score 1 }\n\
         policy { deny when score >= 40; review when score >= 80; otherwise allow }\n",
    )
    .unwrap();
    let out = verdict(&["check", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    let shown = path.display().to_string();
    for (line, col, message) in [
        (1, 15, "unknown field `amout`; did you mean `amount`?"),
        (2, 15, "type mismatch: `>` needs numbers on both sides"),
        (3, 30, "bad window `45d`"),
        (
            4,
            21,
            "unknown model `fraud_xgb` (loaded: exposure_var, fraud_gbdt, fraud_lr)",
        ),
        (5, 33, "this arm can never be reached"),
    ] {
        let head = format!("{shown}:{line}:{col}: error: {message}");
        assert!(err.contains(&head), "missing {head:?} in:\n{err}");
    }
    assert!(err.contains("      ^^^^^"), "a caret under `amout`:\n{err}");
    assert!(err.trim_end().ends_with("5 errors"), "{err}");

    let good = verdict(&["check", "rules/default.rules"]);
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../rules/default.rules");
    let good = if good.status.success() {
        good
    } else {
        verdict(&["check", shipped])
    };
    assert!(good.status.success(), "{}", text(&good.stderr));
    assert!(
        text(&good.stdout).contains(": ok"),
        "{}",
        text(&good.stdout)
    );
}

#[test]
fn check_takes_a_directory_as_one_rule_set() {
    let dir = common::tempdir::Dir::new("check-dir");
    std::fs::write(dir.0.join("a.rules"), RULES_A).unwrap();
    std::fs::write(
        dir.0.join("b.rules"),
        "rule b_rule { when amount > 9 score 2 }\npolicy { review when score >= 3; otherwise allow }\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.0.join("lists")).unwrap();
    std::fs::write(dir.0.join("lists/vip.txt"), VIP).unwrap();
    let out = verdict(&["check", dir.0.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("rules: 2 (0 shadow)"),
        "{}",
        text(&out.stdout)
    );
    // A rule defined twice across the files is an error naming the first definition.
    std::fs::write(
        dir.0.join("c.rules"),
        "rule a_rule { when amount > 1 score 1 }\n",
    )
    .unwrap();
    let out = verdict(&["check", dir.0.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("rule `a_rule` is already defined at"),
        "{}",
        text(&out.stderr)
    );
}

/// `[admin] token_file` for the tests' token, in a directory of its own.
fn with_token(toml: String, dir: &common::tempdir::Dir) -> String {
    let token = common::token_file(&dir.0);
    format!(
        "{toml}\n[admin]\ntoken_file = {:?}\n",
        token.display().to_string()
    )
}

#[test]
fn a_failed_reload_keeps_the_epoch_and_returns_the_errors() {
    let secrets = common::tempdir::Dir::new("token");
    let server = Server::with_rules(
        &with_token(topology(&[0, 1], ""), &secrets),
        &[("a.rules", RULES_A), ("lists/vip.txt", VIP)],
    );
    let admin = format!("127.0.0.1:{}", server.admin_port);
    let token = secrets.0.join("admin.token");
    let token = token.to_str().unwrap();
    let broken = server.dir().join("broken.rules");
    std::fs::write(&broken, "rule r { when amount > \"x\" score 1 }\n").unwrap();
    // Paths are relative to rules.dir (here the directory of the served a.rules).
    let out = verdict(&[
        "reload",
        "--admin",
        &admin,
        "--token-file",
        token,
        "--rules",
        "broken.rules",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("broken.rules:1:15: error: type mismatch") && err.contains("epoch 1 stays"),
        "{err}"
    );
    let d = server.client().evaluate(&event(3)).unwrap();
    assert_eq!((d.epoch, d.rules), (1, vec!["a_rule".to_string()]));

    // A good reload moves every shard, idle ones included, within a tick.
    let b = server.dir().join("b.rules");
    std::fs::write(&b, RULES_B).unwrap();
    let out = verdict(&[
        "reload",
        "--admin",
        &admin,
        "--token-file",
        token,
        "--rules",
        "b.rules",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("epoch 2 published: 1 rules"),
        "{}",
        text(&out.stdout)
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = server.client().stats().unwrap();
        if stats.shards.iter().all(|s| s.epoch == 2) {
            break;
        }
        assert!(Instant::now() < deadline, "epochs: {:?}", stats.shards);
        std::thread::sleep(Duration::from_millis(20));
    }
    for shard in 0..2 {
        let d = client(&server.shard_addr(shard))
            .evaluate(&event(4))
            .unwrap();
        assert_eq!((d.epoch, d.rules), (2, vec!["b_rule".to_string()]));
    }
}

/// Reloads over the data port (kept by `[admin] wire_reload`), the fastest way to publish
/// a hundred epochs while clients stream.
#[test]
fn a_hundred_reloads_under_streaming_load_fail_or_drop_no_request() {
    let server = Server::with_rules(
        &(topology(&[0, 1], "") + "\n[admin]\nwire_reload = true\n"),
        &[("a.rules", RULES_A), ("lists/vip.txt", VIP)],
    );
    std::fs::write(server.dir().join("b.rules"), RULES_B).unwrap();
    let (a, b) = ("a.rules", "b.rules");
    let stop = Arc::new(AtomicBool::new(false));
    let streams: Vec<_> = (0..2)
        .map(|shard| {
            let (addr, stop) = (server.shard_addr(shard), stop.clone());
            std::thread::spawn(move || {
                // Odd epochs serve rule set A, even ones B: one epoch decided the whole event.
                common::stream(&addr, &stop, 16, event, |d| {
                    let want = if d.epoch % 2 == 1 { "a_rule" } else { "b_rule" };
                    assert_eq!(d.rules, vec![want.to_string()], "epoch {}", d.epoch);
                    assert_eq!(d.action, Action::Allow);
                })
            })
        })
        .collect();
    let mut reloader = server.client();
    for i in 0..100u64 {
        let path = if i % 2 == 0 { b } else { a };
        let reply = reloader.reload(path).unwrap();
        assert!(reply.ok, "{:?}", reply.errors);
        assert_eq!(reply.epoch, i + 2);
    }
    // Let the streams see the last epoch, then stop them.
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    for s in streams {
        let (answered, last_epoch) = s.join().expect("stream thread");
        assert!(answered > 0);
        assert_eq!(last_epoch, 101);
    }
    let stats = server.client().stats().unwrap();
    assert_eq!(stats.total.errors, 0, "{:?}", stats.total.errors_by_code);
}

#[test]
fn velocity_counts_per_account_on_the_owning_shard() {
    let rules = "rule burst { when count(account, 60s) >= 3  action deny }\n\
                 rule spend { when sum(amount, account, 1h) > 100.00  score 50 }\n\
                 policy { review when score >= 50; otherwise allow }\n";
    let server = Server::with_rules(&topology(&[0], ""), &[("v.rules", rules)]);
    let mut c = server.client();
    let mut e = event(1);
    e.amount_minor = 4_000; // 40.00
    let actions: Vec<Action> = (0..4)
        .map(|i| {
            e.event_id = format!("v-{i}");
            e.timestamp_ms = 1_700_000_000_000 + i * 1_000;
            c.evaluate(&e).unwrap().action
        })
        .collect();
    // 40, 80 allow; the third counts itself (count 3 -> deny; sum 120 -> review too).
    assert_eq!(
        actions,
        vec![Action::Allow, Action::Allow, Action::Deny, Action::Deny]
    );
    // Another account is counted apart; two minutes later the window has moved on.
    e.account_id = "someone-else".into();
    assert_eq!(c.evaluate(&e).unwrap().action, Action::Allow);
    e.account_id = event(1).account_id;
    e.timestamp_ms += 3_700_000;
    assert_eq!(c.evaluate(&e).unwrap().action, Action::Allow);
}
