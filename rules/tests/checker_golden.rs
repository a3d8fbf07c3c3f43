//! Golden tests of the checker, through `verdict_rules::load` from disk:
//! - `fixtures/good.rules` uses every language feature (file and inline lists of each element
//!   type, attributes of each type with and without defaults, every operator, literal sets
//!   small and large, IP networks, string operators, arithmetic, `features[i]`, every velocity
//!   function and key, shadow rules, priorities, a policy) and checks into the program it says:
//!   rules ordered by priority then file order, lists typed by their use, velocity functions
//!   identified by canonical text;
//! - `fixtures/type_errors.rules` reports every checker error it holds (not just the first),
//!   each rendered exactly as `fixtures/type_errors.expected` says (file:line:col, the line and
//!   a caret under the offending text), list-file errors pointing into the list file;
//! - the shipped `rules/default.rules` checks the same from disk and from the embedded copy.

use std::path::{Path, PathBuf};

use verdict_net::{Action, Event};
use verdict_rules::event::Ty;
use verdict_rules::ir::{Agg, AttrDefault, SetValues, VelocityKey};
use verdict_rules::{Disk, Options, Report, RuleSet, VelocityState};

fn manifest_dir() -> &'static str {
    env!("CARGO_MANIFEST_DIR")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(manifest_dir()).join("tests/fixtures").join(name)
}

/// The report as text, with this checkout's absolute prefix removed so the expected output
/// reads `fixtures/type_errors.rules:...` wherever the repository lives.
fn normalized(report: &Report) -> String {
    report
        .to_string()
        .replace(&format!("{}/tests/", manifest_dir()), "")
}

fn load_fixture(name: &str) -> Result<RuleSet, Report> {
    verdict_rules::load(&fixture(name), &Disk, &Options::default())
}

#[test]
fn the_good_file_uses_every_feature_and_checks_cleanly() {
    let rs = load_fixture("good.rules").unwrap_or_else(|r| panic!("{}", normalized(&r)));
    let p = rs.program();

    // Priority first (highest first), then the order written; priority 0 when absent.
    let order: Vec<(&str, i64, bool)> = p
        .rules
        .iter()
        .map(|r| (r.name.as_str(), r.priority, r.shadow))
        .collect();
    assert_eq!(
        order,
        vec![
            ("high_priority", 100, false),
            ("velocity", 10, false),
            ("big_foreign", 0, false),
            ("comparisons", 0, false),
            ("arithmetic", 0, false),
            ("strings", 0, false),
            ("networks", 0, false),
            ("lists_of_each_type", 0, false),
            ("large_set", 0, false),
            ("candidate", 0, true),
            ("unverified", -5, false),
        ]
    );
    // The compiled set reports rules in the same order.
    let names: Vec<&str> = (0..rs.rule_count() as u32)
        .map(|i| rs.rule_name(i))
        .collect();
    let program_names: Vec<&str> = p.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, program_names);
    let unverified = p.rules.iter().find(|r| r.name == "unverified").unwrap();
    assert_eq!(
        (unverified.score, unverified.action),
        (45, Some(Action::Review))
    );
    let big_foreign = p.rules.iter().find(|r| r.name == "big_foreign").unwrap();
    assert_eq!((big_foreign.score, big_foreign.action), (40, None));
    let velocity = p.rules.iter().find(|r| r.name == "velocity").unwrap();
    assert_eq!((velocity.score, velocity.action), (0, Some(Action::Deny)));

    // Lists: typed by their first use; an unused one loads as strings.
    let lists: Vec<(&str, &SetValues, &str)> = p
        .lists
        .iter()
        .map(|l| (l.name.as_str(), &l.values, l.origin.as_str()))
        .collect();
    let strs = |v: &[&str]| SetValues::Str(v.iter().map(|s| (*s).into()).collect());
    let nets = |v: &[&str]| {
        SetValues::Ip(
            v.iter()
                .map(|s| verdict_rules::event::IpNet::parse(s).unwrap())
                .collect(),
        )
    };
    let fixtures_lists = format!("{}/tests/fixtures/lists", manifest_dir());
    assert_eq!(lists.len(), 7);
    assert_eq!(lists[0].0, "blocked_devices");
    assert_eq!(
        *lists[0].1,
        strs(&["d-blocked-1", "d-blocked-2", "d-blocked-3"])
    );
    assert_eq!(lists[0].2, format!("{fixtures_lists}/devices.txt"));
    assert_eq!(lists[1].0, "risky_networks");
    assert_eq!(
        *lists[1].1,
        nets(&["203.0.113.0/24", "2001:db8:bad::/48", "198.51.100.7/32"])
    );
    assert_eq!(lists[1].2, format!("{fixtures_lists}/networks.txt"));
    assert_eq!(lists[2].0, "risky_mcc");
    assert_eq!(*lists[2].1, SetValues::Num(vec![7995.0, 4829.0, 6051.0]));
    assert_eq!(lists[2].2, format!("{fixtures_lists}/mcc.txt"));
    assert_eq!(
        lists[3],
        (
            "vip_accounts",
            &strs(&["acct-vip-1", "acct-vip-2"]),
            "inline"
        )
    );
    assert_eq!(
        lists[4],
        (
            "round_amounts",
            &SetValues::Num(vec![100.0, 250.5, -1.0]),
            "inline"
        )
    );
    assert_eq!(
        lists[5],
        (
            "office_networks",
            &nets(&["10.0.0.0/8", "192.168.1.1"]),
            "inline"
        )
    );
    assert_eq!(lists[6], ("never_used", &strs(&["a", "b"]), "inline"));

    // Attributes: declared types, defaults written or the type's zero.
    let attrs: Vec<(&str, Ty, &AttrDefault)> = p
        .attributes
        .iter()
        .map(|a| (a.name.as_str(), a.ty, &a.default))
        .collect();
    assert_eq!(
        attrs,
        vec![
            ("account_age_days", Ty::Num, &AttrDefault::Num(365.0)),
            ("email_verified", Ty::Bool, &AttrDefault::Bool(true)),
            ("segment", Ty::Str, &AttrDefault::Str("retail".into())),
            ("risk_hint", Ty::Num, &AttrDefault::Num(0.0)),
            ("promo", Ty::Bool, &AttrDefault::Bool(false)),
            ("referrer", Ty::Str, &AttrDefault::Str("".into())),
        ]
    );

    // Velocity functions: one per distinct canonical text, in order of first use, windows
    // printed in their largest whole unit (60s -> 1m, 24h -> 1d).
    let specs: Vec<(&str, Agg, VelocityKey, u64)> = p
        .velocity
        .iter()
        .map(|v| (v.id.as_str(), v.agg, v.key, v.window_ms))
        .collect();
    assert_eq!(
        specs,
        vec![
            (
                "count(account, 1m)",
                Agg::Count,
                VelocityKey::Account,
                60_000
            ),
            (
                "sum(amount, account, 1h)",
                Agg::Sum,
                VelocityKey::Account,
                3_600_000
            ),
            (
                "distinct(device, account, 1d)",
                Agg::Distinct,
                VelocityKey::Account,
                86_400_000
            ),
            (
                "count(device, 10m)",
                Agg::Count,
                VelocityKey::Device,
                600_000
            ),
            (
                "distinct(account, ip, 1d)",
                Agg::Distinct,
                VelocityKey::Ip,
                86_400_000
            ),
            (
                "sum(amount_minor, merchant, 30d)",
                Agg::Sum,
                VelocityKey::Merchant,
                30 * 86_400_000
            ),
            (
                "count(account, 10m)",
                Agg::Count,
                VelocityKey::Account,
                600_000
            ),
        ]
    );
    assert!(
        p.velocity
            .iter()
            .all(|v| v.field.is_some() == (v.agg != Agg::Count))
    );
    assert!(p.models.is_empty());

    let policy = p.policy.as_ref().expect("a policy");
    let arms: Vec<Action> = policy.arms.iter().map(|(a, _)| *a).collect();
    assert_eq!(arms, vec![Action::Deny, Action::Review]);
    assert_eq!(policy.otherwise, Some(Action::Allow));

    // Every file read: the rules file, then the list files in order of loading.
    let files: Vec<String> = rs
        .files
        .iter()
        .map(|f| f.replace(&format!("{}/tests/fixtures/", manifest_dir()), ""))
        .collect();
    assert_eq!(
        files,
        vec![
            "good.rules",
            "lists/devices.txt",
            "lists/networks.txt",
            "lists/mcc.txt"
        ]
    );
    assert_eq!(rs.digest.len(), 16);
    assert!(rs.digest.chars().all(|c| c.is_ascii_hexdigit()));

    // And it runs: a blocked device from the list file is sent to review.
    let event = Event {
        event_id: "evt-1".into(),
        timestamp_ms: 1_700_000_000_000,
        account_id: "acct-1".into(),
        merchant_id: "m-1".into(),
        amount_minor: 1_000,
        currency: "USD".into(),
        country: "US".into(),
        channel: "pos".into(),
        device_id: "d-blocked-2".into(),
        ip: "8.8.8.8".parse().unwrap(),
        mcc: 5411,
        features: vec![],
        attributes: vec![],
    };
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&event).unwrap();
    let archived = rkyv::access::<verdict_net::ArchivedEvent, rkyv::rancor::Error>(&bytes).unwrap();
    let mut out = rs.outcome();
    rs.evaluate(archived, &mut VelocityState::new(16), &[], &mut out);
    let fired: Vec<&str> = out.fired.iter().map(|&i| rs.rule_name(i)).collect();
    assert!(fired.contains(&"lists_of_each_type"), "{fired:?}");
    assert_eq!(out.action, Some(Action::Review));
}

#[test]
fn every_checker_error_is_reported_at_its_line_and_column() {
    let report = match load_fixture("type_errors.rules") {
        Ok(_) => panic!("type_errors.rules must not check"),
        Err(report) => report,
    };
    let rendered = normalized(&report);
    let expected_path = fixture("type_errors.expected");
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(&expected_path, &rendered).unwrap();
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap();
    assert_eq!(rendered, expected, "rendered:\n{rendered}");

    // All of them, not just the first: one per mistake in the file, in file order (the rules
    // file, then the list file its errors point into).
    let found: Vec<(String, usize, usize)> = report
        .errors
        .iter()
        .map(|e| {
            let file = Path::new(&e.file)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (file, e.line, e.column)
        })
        .collect();
    let at = |file: &str, line: usize, column: usize| (file.to_string(), line, column);
    assert_eq!(
        found,
        vec![
            at("type_errors.rules", 4, 19),  // missing list file
            at("type_errors.rules", 6, 25),  // attribute default of the wrong type
            at("type_errors.rules", 8, 27),  // unknown field, with a suggestion
            at("type_errors.rules", 10, 27), // type mismatch
            at("type_errors.rules", 12, 36), // unknown list, with a suggestion
            at("type_errors.rules", 14, 44), // window beyond 30d
            at("type_errors.rules", 16, 41), // not a window
            at("type_errors.rules", 18, 33), // bad velocity key
            at("type_errors.rules", 20, 33), // unknown model
            at("type_errors.rules", 22, 29), // `score` in a rule
            at("type_errors.rules", 24, 29), // list outside `in`
            at("type_errors.rules", 26, 6),  // duplicate rule name
            at("type_errors.rules", 32, 29), // `when` is not true/false
            at("type_errors.rules", 34, 33), // unreachable policy arm
            at("not_ips.txt", 3, 1),         // list entry that is not an IP
            at("not_ips.txt", 4, 1),         // network with host bits set
        ]
    );
    let messages: Vec<&str> = report.errors.iter().map(|e| e.message.as_str()).collect();
    for (i, wanted) in [
        "cannot read list file",
        "the default of `age` must be a literal of its type, a number",
        "unknown field `amout`; did you mean `amount`?",
        "type mismatch: `==` needs both sides of one type",
        "unknown list `blocked_devics`; did you mean `blocked_devices`?",
        "bad window `45d`: a window is 1s to 30d",
        "bad window `5`",
        "bad velocity key `country`",
        "unknown model `fraud_gbdt` (no models are loaded)",
        "`score` is the policy's running total",
        "list `blocked_devices` can only follow `in`",
        "rule `type_mismatch` is already defined at",
        "a rule's `when` must be true or false; this is a number",
        "this arm can never be reached",
        "`not-an-ip` is not an IP address or network",
        "`10.0.0.1/8` has host bits set past /8",
    ]
    .into_iter()
    .enumerate()
    {
        assert!(
            messages[i].contains(wanted),
            "error {i}: {:?} lacks {wanted:?}",
            messages[i]
        );
    }
    assert!(rendered.ends_with("16 errors"));
}

#[test]
fn a_zero_window_is_rejected_by_the_lexer() {
    let dir = std::env::temp_dir().join(format!("verdict-rules-golden-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("zero.rules");
    std::fs::write(&path, "rule r { when count(account, 0s) > 1  score 1 }\n").unwrap();
    let report = verdict_rules::load(&path, &Disk, &Options::default())
        .err()
        .expect("0s is not a window");
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(report.errors.len(), 1, "{report}");
    let e = &report.errors[0];
    assert_eq!((e.line, e.column), (1, 30));
    assert!(
        e.message
            .starts_with("bad window `0s`: a positive whole number with a unit"),
        "{}",
        e.message
    );
}

#[test]
fn the_shipped_rules_load_from_disk_and_embedded_alike() {
    let path = Path::new(manifest_dir()).join("default.rules");
    let disk =
        verdict_rules::load(&path, &Disk, &Options::shipped()).unwrap_or_else(|r| panic!("{r}"));
    let embedded =
        verdict_rules::load_default(&Options::shipped()).unwrap_or_else(|r| panic!("{r}"));
    let names = |rs: &RuleSet| -> Vec<String> {
        (0..rs.rule_count() as u32)
            .map(|i| rs.rule_name(i).to_string())
            .collect()
    };
    assert_eq!(names(&disk), names(&embedded));
    assert_eq!(
        names(&disk),
        vec![
            "burst",
            "bad_device",
            "big_foreign_purchase",
            "risky_network",
            "high_risk_merchant",
            "many_devices",
            "new_unverified_account",
            "model_risk",
            "candidate_tighter_burst",
        ]
    );
    // The same program but for where the lists came from.
    let (d, e) = (disk.program(), embedded.program());
    assert_eq!(d.rules, e.rules);
    assert_eq!(d.velocity, e.velocity);
    assert_eq!(d.attributes, e.attributes);
    assert_eq!(d.policy, e.policy);
    let values = |p: &verdict_rules::ir::Program| -> Vec<(String, SetValues)> {
        p.lists
            .iter()
            .map(|l| (l.name.clone(), l.values.clone()))
            .collect()
    };
    assert_eq!(values(d), values(e));
    assert_eq!(
        embedded.files,
        vec![
            "rules/default.rules",
            "rules/lists/blocked_devices.txt",
            "rules/lists/risky_networks.txt",
            "rules/lists/high_risk_mcc.txt",
        ]
    );
    assert_eq!(disk.files.len(), 4);
}

#[test]
fn a_policy_threshold_beyond_any_score_is_an_error_not_a_panic() {
    let dir = std::env::temp_dir().join(format!("verdict-rules-overflow-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("policy.rules");
    std::fs::write(
        &path,
        "rule r { when amount > 1  score 1 }\n\
         policy { deny when score > 99999999999999999999; otherwise allow }\n",
    )
    .unwrap();
    let result = std::panic::catch_unwind(|| {
        verdict_rules::load(&path, &Disk, &Options::default()).map(|_| ())
    });
    std::fs::remove_dir_all(&dir).unwrap();
    let report = result
        .expect("the checker must not panic")
        .expect_err("the arm can never be true");
    assert_eq!(report.errors.len(), 1, "{report}");
    assert_eq!(
        report.errors[0].message,
        "this arm's condition can never be true"
    );
}

#[test]
fn an_unused_inline_list_of_numbers_or_networks_checks() {
    let dir = std::env::temp_dir().join(format!("verdict-rules-unused-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("unused.rules");
    std::fs::write(
        &path,
        "list amounts = [1, 2.5]\n\
         list networks = [10.0.0.0/8]\n\
         rule r { when amount > 1  score 1 }\n",
    )
    .unwrap();
    let result = verdict_rules::load(&path, &Disk, &Options::default());
    std::fs::remove_dir_all(&dir).unwrap();
    if let Err(report) = result {
        panic!("{report}");
    }
}
