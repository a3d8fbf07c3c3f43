//! End-to-end evaluation: rule sets built from source text (files served by an in-memory
//! loader), events archived with rkyv and decided by the compiled `RuleSet::evaluate`. Proves
//! what each operator, set form (scanned and hashed literal sets, lists, IPv4/IPv6 networks),
//! field (scaled `amount`, `hour`, `features[i]`, attributes and their defaults) and velocity
//! function means, how scores and actions combine (precedence, policy, default action,
//! shadow rules, report order), and how velocity windows slide, key and evict.

use std::path::{Path, PathBuf};

use rkyv::util::AlignedVec;
use verdict_net::{Action, ArchivedEvent, AttrValue, Attribute, Event};
use verdict_rules::compile::fold;
use verdict_rules::ir::NodeKind;
use verdict_rules::{Memory, Options, Outcome, Report, RuleSet, VelocityState};

// ---- building rule sets ----

const RULES_PATH: &str = "mem/test.rules";

/// `lists` are (path relative to the rules file, text).
fn try_compile(src: &str, lists: &[(&str, &str)], options: &Options) -> Result<RuleSet, Report> {
    let mut files = vec![(PathBuf::from(RULES_PATH), src.to_string())];
    for (path, text) in lists {
        files.push((Path::new("mem").join(path), text.to_string()));
    }
    verdict_rules::load(Path::new(RULES_PATH), &Memory(files), options)
}

fn compile_with(src: &str, lists: &[(&str, &str)], options: &Options) -> RuleSet {
    try_compile(src, lists, options).unwrap_or_else(|r| panic!("{src}\n{r}"))
}

fn compile(src: &str) -> RuleSet {
    compile_with(src, &[], &Options::default())
}

fn compile_err(src: &str) -> Report {
    match try_compile(src, &[], &Options::default()) {
        Ok(_) => panic!("{src} checked, but should not"),
        Err(r) => r,
    }
}

// ---- events ----

const T0: u64 = 1_700_000_000_000;

/// 100.00 USD from acct-1 on device d-1 at merchant m-1, 203.0.113.9, US, web, mcc 5411.
fn event() -> Event {
    Event {
        event_id: "evt-1".into(),
        timestamp_ms: T0,
        account_id: "acct-1".into(),
        merchant_id: "m-1".into(),
        amount_minor: 10_000,
        currency: "USD".into(),
        country: "US".into(),
        channel: "web".into(),
        device_id: "d-1".into(),
        ip: "203.0.113.9".parse().unwrap(),
        mcc: 5411,
        features: vec![],
        attributes: vec![],
    }
}

fn with(f: impl FnOnce(&mut Event)) -> Event {
    let mut e = event();
    f(&mut e);
    e
}

fn attr(name: &str, value: AttrValue) -> Attribute {
    Attribute {
        name: name.into(),
        value,
    }
}

fn archive(e: &Event) -> AlignedVec {
    rkyv::to_bytes::<rkyv::rancor::Error>(e).unwrap()
}

fn access(bytes: &AlignedVec) -> &ArchivedEvent {
    rkyv::access::<ArchivedEvent, rkyv::rancor::Error>(bytes).unwrap()
}

// ---- deciding ----

/// What one evaluation decided, with rule names instead of indexes.
#[derive(Debug, Clone, PartialEq)]
struct Decided {
    action: Action,
    score: i32,
    fired: Vec<String>,
    shadow: Vec<String>,
    velocity: Vec<f64>,
}

/// A rule set with one core's velocity state and a reused outcome.
struct Engine {
    rs: RuleSet,
    state: VelocityState,
    out: Outcome,
    models: Vec<f64>,
}

impl Engine {
    fn new(rs: RuleSet) -> Engine {
        Engine::with_entities(rs, 1024)
    }

    fn with_entities(rs: RuleSet, entities_max: usize) -> Engine {
        let out = rs.outcome();
        Engine {
            rs,
            state: VelocityState::new(entities_max),
            out,
            models: Vec::new(),
        }
    }

    fn run(&mut self, e: &Event) -> Decided {
        let bytes = archive(e);
        self.rs
            .evaluate(access(&bytes), &mut self.state, &self.models, &mut self.out);
        let names = |v: &[u32]| {
            v.iter()
                .map(|&i| self.rs.rule_name(i).to_string())
                .collect()
        };
        Decided {
            action: self.out.action.expect("evaluate always decides"),
            score: self.out.score,
            fired: names(&self.out.fired),
            shadow: names(&self.out.shadow_fired),
            velocity: self.out.velocity.clone(),
        }
    }

    /// The value of the velocity function with canonical text `id` for the last event.
    fn velocity(&self, id: &str) -> f64 {
        let i = self
            .rs
            .program()
            .velocity
            .iter()
            .position(|v| v.id == id)
            .unwrap_or_else(|| panic!("no velocity function {id}"));
        self.out.velocity[i]
    }
}

/// Whether `rule r { when COND  score 1 }` fires for `e`, with list files `lists`.
fn fires_with(cond: &str, lists: &[(&str, &str)], e: &Event) -> bool {
    let src = format!(
        "{}\nrule r {{ when {cond}  score 1 }}\n",
        declarations(lists)
    );
    let rs = compile_with(&src, lists, &Options::default());
    let fired = Engine::new(rs).run(e).fired;
    fired == ["r"]
}

/// `list NAME from "FILE"` for every list file `FILE` = `lists/NAME.txt`.
fn declarations(lists: &[(&str, &str)]) -> String {
    lists
        .iter()
        .map(|(path, _)| {
            let name = Path::new(path).file_stem().unwrap().to_string_lossy();
            format!("list {name} from \"{path}\"\n")
        })
        .collect()
}

/// Asserts each (condition, expected) for `e`.
fn check_table(e: &Event, table: &[(&str, bool)]) {
    check_table_with(&[], e, table);
}

fn check_table_with(lists: &[(&str, &str)], e: &Event, table: &[(&str, bool)]) {
    let wrong: Vec<String> = table
        .iter()
        .filter(|(cond, want)| fires_with(cond, lists, e) != *want)
        .map(|(cond, want)| format!("`{cond}` should be {want}"))
        .collect();
    assert!(wrong.is_empty(), "for {e:?}:\n{}", wrong.join("\n"));
}

// ---- comparisons ----

#[test]
fn numbers_compare_with_every_operator() {
    let e = event(); // amount 100.00, amount_minor 10000, mcc 5411
    check_table(
        &e,
        &[
            ("amount == 100", true),
            ("amount == 100.00", true),
            ("amount == 100.01", false),
            ("amount != 100", false),
            ("amount != 99", true),
            ("amount < 100", false),
            ("amount < 100.01", true),
            ("amount <= 100", true),
            ("amount <= 99.99", false),
            ("amount > 100", false),
            ("amount > 99.99", true),
            ("amount >= 100", true),
            ("amount >= 100.01", false),
            ("100 == amount", true),
            ("99 < amount", true),
            ("100 < amount", false),
            ("amount_minor == 10000", true),
            ("mcc == 5411", true),
            ("mcc != 5411", false),
            ("amount_minor > amount", true),
            ("amount >= amount_minor", false),
            ("amount == amount", true),
        ],
    );
}

#[test]
fn strings_compare_with_eq_and_ne_only() {
    let e = event();
    check_table(
        &e,
        &[
            ("country == \"US\"", true),
            ("country == \"us\"", false),
            ("country != \"US\"", false),
            ("country != \"GB\"", true),
            ("\"US\" == country", true),
            ("account == \"acct-1\"", true),
            ("merchant == \"m-1\"", true),
            ("device == \"d-1\"", true),
            ("currency == \"USD\"", true),
            ("channel == \"web\"", true),
            ("event_id == \"evt-1\"", true),
            ("account == merchant", false),
            ("account != merchant", true),
            ("channel != \"\"", true),
        ],
    );
    for op in ["<", "<=", ">", ">="] {
        let report = compile_err(&format!("rule r {{ when country {op} \"US\"  score 1 }}"));
        assert!(
            report.errors[0]
                .message
                .contains(&format!("`{op}` needs numbers on both sides")),
            "{report}"
        );
    }
}

#[test]
fn ips_compare_with_eq_and_ne_and_canonicalise_mapped_addresses() {
    let v4 = event(); // 203.0.113.9
    let mapped = with(|e| e.ip = "::ffff:203.0.113.9".parse().unwrap());
    let v6 = with(|e| e.ip = "2001:db8::1".parse().unwrap());
    for e in [&v4, &mapped] {
        check_table(
            e,
            &[
                ("ip == 203.0.113.9", true),
                ("203.0.113.9 == ip", true),
                ("ip != 203.0.113.9", false),
                ("ip == 203.0.113.10", false),
                ("ip != 203.0.113.10", true),
            ],
        );
    }
    check_table(
        &v6,
        &[("ip == 203.0.113.9", false), ("ip != 203.0.113.9", true)],
    );
    let report = compile_err("rule r { when ip < 1.2.3.4  score 1 }");
    assert!(
        report.errors[0]
            .message
            .contains("`<` needs numbers on both sides"),
        "{report}"
    );
}

#[test]
fn and_or_not_combine_with_the_documented_precedence() {
    let e = event(); // US, amount 100, mcc 5411
    check_table(
        &e,
        &[
            ("true", true),
            ("false", false),
            ("country == \"US\" and amount == 100", true),
            ("country == \"US\" and amount == 1", false),
            ("country == \"GB\" or amount == 100", true),
            ("country == \"GB\" or amount == 1", false),
            ("not country == \"GB\"", true),
            ("not not country == \"GB\"", false),
            ("not (country == \"US\" and amount == 100)", false),
            // `and` binds tighter than `or`: US or (false and false).
            ("country == \"US\" or amount == 1 and mcc == 1", true),
            ("(country == \"US\" or amount == 1) and mcc == 1", false),
            // `not` binds tighter than `and`.
            ("not amount > 1000 and country == \"US\"", true),
            ("not (amount > 1000 and country == \"US\")", true),
            ("(amount > 1) == true", true),
            ("(amount > 1) != (mcc == 5411)", false),
        ],
    );
}

// ---- sets, lists and networks ----

#[test]
fn literal_string_sets_match_whether_scanned_or_hashed() {
    let e = event(); // country US
    // 8 members or fewer are scanned, more are hashed: test both sides of the boundary.
    let eight = "[\"AA\", \"BB\", \"CC\", \"DD\", \"EE\", \"FF\", \"GG\", \"US\"]";
    let nine = "[\"AA\", \"BB\", \"CC\", \"DD\", \"EE\", \"FF\", \"GG\", \"HH\", \"US\"]";
    let nine_without = "[\"AA\", \"BB\", \"CC\", \"DD\", \"EE\", \"FF\", \"GG\", \"HH\", \"II\"]";
    let small = format!("country in {eight}");
    let large = format!("country in {nine}");
    let large_miss = format!("country in {nine_without}");
    let large_not = format!("country not in {nine_without}");
    check_table(
        &e,
        &[
            ("country in [\"CA\", \"US\"]", true),
            ("country in [\"CA\", \"GB\"]", false),
            ("country not in [\"CA\", \"US\"]", false),
            ("country not in [\"CA\", \"GB\"]", true),
            ("country in [\"us\"]", false),
            ("country in []", false),
            ("country not in []", true),
            (&small, true),
            (&large, true),
            (&large_miss, false),
            (&large_not, true),
        ],
    );
}

#[test]
fn literal_number_sets_match_whether_scanned_or_hashed() {
    let e = with(|e| e.features = vec![-0.0, f64::NAN, 2.5]);
    let large = "[1, 2, 3, 4, 5, 6, 7, 8, 9, 5411]";
    let large_zero = "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]";
    let c = |s: &str| s.to_string();
    let table: Vec<(String, bool)> = vec![
        (c("mcc in [1, 2, 5411]"), true),
        (c("mcc in [1, 2, 3]"), false),
        (c("mcc not in [1, 2, 3]"), true),
        (format!("mcc in {large}"), true),
        (format!("mcc not in {large}"), false),
        (format!("mcc + 1 in {large}"), false),
        (c("amount in [100]"), true),
        (c("amount in [100.5, -3]"), false),
        (c("features[2] in [2.5, 7]"), true),
        (
            format!("features[2] in [2.5, {}]", &large[1..large.len() - 1]),
            true,
        ),
        // -0 is 0, in a scanned set and in a hashed one.
        (c("features[0] in [0]"), true),
        (format!("features[0] in {large_zero}"), true),
        // NaN is in no set.
        (c("features[1] in [0, 1]"), false),
        (format!("features[1] in {large_zero}"), false),
        (format!("features[1] not in {large_zero}"), true),
        // Negative members.
        (c("-amount in [-100, 5]"), true),
        (
            format!(
                "-amount in [-100, {}]",
                &large_zero[1..large_zero.len() - 1]
            ),
            true,
        ),
    ];
    let table: Vec<(&str, bool)> = table.iter().map(|(s, b)| (s.as_str(), *b)).collect();
    check_table(&e, &table);
}

#[test]
fn named_lists_from_files_and_inline_match_by_their_element_type() {
    let lists = [
        (
            "lists/devices.txt",
            "# blocked\nd-1\n  d-2  # trailing comment\n\n",
        ),
        ("lists/codes.txt", "7995\n5411\n"),
        (
            "lists/nets.txt",
            "203.0.113.0/24\n2001:db8:bad::/48\n198.51.100.7\n",
        ),
        ("lists/many.txt", &many_accounts()),
    ];
    let e = event(); // device d-1, mcc 5411, 203.0.113.9, acct-1
    check_table_with(
        &lists,
        &e,
        &[
            ("device in devices", true),
            ("device not in devices", false),
            ("merchant in devices", false),
            ("mcc in codes", true),
            ("amount in codes", false),
            ("ip in nets", true),
            ("ip not in nets", false),
            ("account in many", true),
            ("merchant in many", false),
        ],
    );
    let d2 = with(|e| {
        e.device_id = "d-2".into();
        e.ip = "198.51.100.7".parse().unwrap();
        e.account_id = "acct-zz".into();
    });
    check_table_with(
        &lists,
        &d2,
        &[
            ("device in devices", true),
            ("ip in nets", true),
            ("account in many", false),
        ],
    );
    let v6 = with(|e| e.ip = "2001:db8:bad:1::7".parse().unwrap());
    check_table_with(&lists, &v6, &[("ip in nets", true)]);
    let other_v6 = with(|e| e.ip = "2001:db8:bae::1".parse().unwrap());
    check_table_with(&lists, &other_v6, &[("ip in nets", false)]);

    // Inline lists, one of each element type.
    let src = "list vips = [\"acct-1\", \"acct-9\"]\n\
               list amounts = [100, 250.5]\n\
               list offices = [203.0.113.0/24, 10.1.2.3]\n\
               rule vip { when account in vips  score 1 }\n\
               rule amount_listed { when amount in amounts  score 2 }\n\
               rule office { when ip in offices  score 4 }\n\
               rule not_office { when ip not in offices  score 8 }\n";
    let mut engine = Engine::new(compile(src));
    assert_eq!(engine.run(&e).score, 1 + 2 + 4);
    let other = with(|e| {
        e.account_id = "acct-2".into();
        e.amount_minor = 25_050;
        e.ip = "10.1.2.3".parse().unwrap();
    });
    assert_eq!(engine.run(&other).fired, ["amount_listed", "office"]);
    let outside = with(|e| e.ip = "10.1.2.4".parse().unwrap());
    assert_eq!(
        engine.run(&outside).fired,
        ["vip", "amount_listed", "not_office"]
    );
}

/// 100 account ids, acct-1 among them: a list large enough to be hashed.
fn many_accounts() -> String {
    (1..=100).map(|i| format!("acct-{i}\n")).collect()
}

#[test]
fn networks_match_by_prefix_for_ipv4_ipv6_and_mapped_addresses() {
    let at = |ip: &str| with(|e| e.ip = ip.parse().unwrap());
    check_table(
        &at("10.200.1.2"),
        &[
            ("ip in 10.0.0.0/8", true),
            ("ip not in 10.0.0.0/8", false),
            ("ip in 10.200.0.0/16", true),
            ("ip in 10.201.0.0/16", false),
            ("ip in 10.200.1.2", true),
            ("ip in 10.200.1.3", false),
            ("ip in 0.0.0.0/0", true),
            ("ip in [11.0.0.0/8, 10.200.1.0/24]", true),
            ("ip in [11.0.0.0/8, 10.201.1.0/24]", false),
        ],
    );
    check_table(
        &at("11.0.0.1"),
        &[("ip in 10.0.0.0/8", false), ("ip not in 10.0.0.0/8", true)],
    );
    // An IPv4-mapped IPv6 event address matches IPv4 networks.
    check_table(
        &at("::ffff:10.1.2.3"),
        &[
            ("ip in 10.0.0.0/8", true),
            ("ip in 10.1.2.3", true),
            ("ip in 0.0.0.0/0", true),
        ],
    );
    // IPv6 networks come from list files (the language has no IPv6 literal); an IPv6
    // address is in no IPv4 network and the reverse.
    let lists = [
        ("lists/v6.txt", "2001:db8::/32\n"),
        ("lists/all_v6.txt", "::/0\n"),
        ("lists/host_v6.txt", "2001:db8::5\n"),
        (
            "lists/mixed.txt",
            "10.0.0.0/8\n172.16.0.0/12\n192.168.1.0/24\n198.51.100.7/32\n2001:db8:1::/48\n",
        ),
    ];
    let table_v6: [(&str, bool); 7] = [
        ("ip in v6", true),
        ("ip in all_v6", true),
        ("ip in host_v6", false),
        ("ip in mixed", true),
        ("ip not in mixed", false),
        ("ip in 0.0.0.0/0", false),
        ("ip not in 0.0.0.0/0", true),
    ];
    check_table_with(&lists, &at("2001:db8:1::5"), &table_v6);
    check_table_with(
        &lists,
        &at("2001:db8::5"),
        &[("ip in host_v6", true), ("ip in mixed", false)],
    );
    // Each prefix length of a mixed list is looked up.
    for (ip, want) in [
        ("10.9.9.9", true),
        ("172.31.255.255", true),
        ("172.32.0.0", false),
        ("192.168.1.200", true),
        ("192.168.2.1", false),
        ("198.51.100.7", true),
        ("198.51.100.8", false),
        ("::ffff:172.16.0.1", true),
    ] {
        check_table_with(
            &lists,
            &at(ip),
            &[("ip in mixed", want), ("ip in v6", false)],
        );
        check_table_with(&lists, &at(ip), &[("ip in all_v6", false)]);
    }
}

// ---- strings, arithmetic, fields ----

#[test]
fn string_operators_test_prefix_suffix_and_substring() {
    let e = with(|e| {
        e.merchant_id = "merchant-42-eu".into();
        e.attributes = vec![attr("email", AttrValue::Str("bob@example.com".into()))];
    });
    let src_attr = "attribute email: string";
    let cases = [
        ("merchant starts_with \"merchant-\"", true),
        ("merchant starts_with \"42\"", false),
        ("merchant ends_with \"-eu\"", true),
        ("merchant ends_with \"-us\"", false),
        ("merchant contains \"-42-\"", true),
        ("merchant contains \"43\"", false),
        ("merchant starts_with \"\"", true),
        ("merchant contains \"\"", true),
        ("\"merchant-42-eu-x\" starts_with merchant", true),
        ("merchant contains merchant", true),
        ("not merchant contains \"42\"", false),
        ("email ends_with \"@example.com\"", true),
        ("email starts_with account", false),
    ];
    for (cond, want) in cases {
        let rs = compile(&format!("{src_attr}\nrule r {{ when {cond}  score 1 }}"));
        assert_eq!(Engine::new(rs).run(&e).fired == ["r"], want, "{cond}");
    }
    let report = compile_err("rule r { when mcc contains \"1\"  score 1 }");
    assert!(
        report.errors[0]
            .message
            .contains("`contains` needs strings on both sides"),
        "{report}"
    );
}

#[test]
fn arithmetic_follows_precedence_and_ieee_division() {
    let e = with(|e| e.features = vec![2.5]); // amount 100
    check_table(
        &e,
        &[
            ("amount * 2 == 200", true),
            ("amount / 4 == 25", true),
            ("amount - 0.5 == 99.5", true),
            ("amount + features[0] == 102.5", true),
            ("-amount == -100", true),
            ("- -amount == 100", true),
            ("amount - features[0] * 2 == 95", true),
            ("(amount - features[0]) * 2 == 195", true),
            ("amount / 8 / 5 == 2.5", true),
            ("amount - 10 - 20 == 70", true),
            ("1 + 2 * 3 == 7", true),
            ("(1 + 2) * 3 == 9", true),
            ("amount / 0 > 1000000000", true),
            ("-amount / 0 < -1000000000", true),
            // NaN equals nothing, itself included.
            ("amount * 0 / 0 == amount * 0 / 0", false),
            ("amount * 0 / 0 != amount * 0 / 0", true),
            ("0 / 0 != 0 / 0", true),
            ("0.1 + 0.2 == 0.3", false),
        ],
    );
}

#[test]
fn constant_subtrees_fold_and_mean_the_same() {
    let src = "rule all_constant { when 1 + 2 * 3 == 7 and not (2 > 3) and \"ab\" starts_with \"a\" and 1.2.3.4 in [1.2.3.0/24]  score 1 }\n\
               rule constant_false { when 10 * 100 < 999 or \"x\" in [\"y\"]  score 2 }\n\
               rule mixed { when amount > 10 * 10  score 4 }\n\
               rule short { when false and amount > 1  score 8 }\n";
    let rs = compile(src);
    let folded: Vec<NodeKind> = rs
        .program()
        .rules
        .iter()
        .map(|r| fold(&r.when).kind)
        .collect();
    assert_eq!(folded[0], NodeKind::Bool(true));
    assert_eq!(folded[1], NodeKind::Bool(false));
    assert_eq!(folded[3], NodeKind::Bool(false));
    // `amount > 10 * 10` keeps the field and compares with the folded 100.
    let NodeKind::Cmp { rhs, .. } = &folded[2] else {
        panic!("{:?}", folded[2])
    };
    assert_eq!(rhs.kind, NodeKind::Num(100.0));

    let mut engine = Engine::new(rs);
    assert_eq!(engine.run(&event()).fired, ["all_constant"]); // amount 100 is not > 100
    let more = with(|e| e.amount_minor = 10_001);
    assert_eq!(engine.run(&more).fired, ["all_constant", "mixed"]);
}

#[test]
fn amount_scales_by_the_currency_exponent_and_compares_exactly() {
    let money = |minor: i64, currency: &str| {
        with(|e| {
            e.amount_minor = minor;
            e.currency = currency.into();
        })
    };
    check_table(
        &money(500_001, "USD"),
        &[
            ("amount > 5000.00", true),
            ("amount > 5000", true),
            ("amount == 5000.01", true),
            ("amount > 5000.01", false),
            ("amount >= 5000.01", true),
            ("amount < 5000.02", true),
            ("amount_minor == 500001", true),
        ],
    );
    check_table(
        &money(500_000, "USD"),
        &[("amount > 5000.00", false), ("amount == 5000", true)],
    );
    check_table(
        &money(5_000, "JPY"),
        &[("amount == 5000", true), ("amount_minor == 5000", true)],
    );
    check_table(
        &money(5_000_001, "KWD"),
        &[
            ("amount == 5000.001", true),
            ("amount > 5000", true),
            ("amount > 5000.001", false),
        ],
    );
    check_table(&money(1, "KWD"), &[("amount == 0.001", true)]);
    check_table(&money(30, "USD"), &[("amount == 0.3", true)]);
    check_table(&money(12_345, "CLF"), &[("amount == 1.2345", true)]);
    // Codes not in the exception lists have two decimals.
    check_table(&money(199, "EUR"), &[("amount == 1.99", true)]);
    check_table(&money(-250, "USD"), &[("amount == -2.5", true)]);
}

#[test]
fn hour_is_the_utc_hour_of_the_timestamp() {
    // 1_700_000_000_000 ms is 2023-11-14 22:13:20 UTC.
    let at = |ts: u64| with(|e| e.timestamp_ms = ts);
    check_table(
        &at(T0),
        &[
            ("hour == 22", true),
            ("hour < 22", false),
            ("timestamp_ms == 1700000000000", true),
        ],
    );
    check_table(&at(0), &[("hour == 0", true)]);
    check_table(&at(25 * 3_600_000 + 5), &[("hour == 1", true)]);
    check_table(&at(24 * 3_600_000 - 1), &[("hour == 23", true)]);
}

#[test]
fn features_read_by_index_and_missing_ones_read_zero() {
    let e = with(|e| e.features = vec![0.5, 2.0]);
    check_table(
        &e,
        &[
            ("features[0] == 0.5", true),
            ("features[1] == 2", true),
            ("features[1] > features[0]", true),
            ("features[2] == 0", true),
            ("features[1023] == 0", true),
        ],
    );
    check_table(&event(), &[("features[0] == 0", true)]);
    let report = compile_err("rule r { when features[1024] > 0  score 1 }");
    assert!(
        report.errors[0]
            .message
            .contains("a feature index is a whole number 0..=1023"),
        "{report}"
    );
}

#[test]
fn attributes_read_their_value_or_their_default() {
    let src = "attribute age: number = 365\n\
               attribute verified: bool = true\n\
               attribute tier: string = \"gold\"\n\
               attribute hint: number\n\
               attribute promo: bool\n\
               attribute ref: string\n\
               rule age_7 { when age == 7  score 1 }\n\
               rule age_365 { when age == 365  score 2 }\n\
               rule unverified { when not verified  score 4 }\n\
               rule tier_silver { when tier == \"silver\"  score 8 }\n\
               rule tier_gold { when tier == \"gold\"  score 16 }\n\
               rule zero_defaults { when hint == 0 and not promo and ref == \"\"  score 32 }\n\
               rule tier_in { when tier in [\"silver\", \"bronze\"]  score 64 }\n";
    let mut engine = Engine::new(compile(src));
    let names = |d: Decided| d.fired;

    // Present, with their declared types.
    let present = with(|e| {
        e.attributes = vec![
            attr("age", AttrValue::Num(7.0)),
            attr("verified", AttrValue::Bool(false)),
            attr("tier", AttrValue::Str("silver".into())),
            attr("hint", AttrValue::Num(1.0)),
            attr("unrelated", AttrValue::Str("x".into())),
        ];
    });
    assert_eq!(
        names(engine.run(&present)),
        ["age_7", "unverified", "tier_silver", "tier_in"]
    );

    // Missing: the defaults (written, or the type's zero).
    assert_eq!(
        names(engine.run(&event())),
        ["age_365", "tier_gold", "zero_defaults"]
    );

    // Carried with another type: the default, as if missing.
    let wrong = with(|e| {
        e.attributes = vec![
            attr("age", AttrValue::Str("7".into())),
            attr("verified", AttrValue::Num(0.0)),
            attr("tier", AttrValue::Bool(true)),
            attr("hint", AttrValue::Bool(true)),
            attr("promo", AttrValue::Str("yes".into())),
            attr("ref", AttrValue::Num(1.0)),
        ];
    });
    assert_eq!(
        names(engine.run(&wrong)),
        ["age_365", "tier_gold", "zero_defaults"]
    );
}

#[test]
fn models_read_the_scores_passed_in() {
    let options = Options {
        models: vec![
            verdict_rules::ModelInput::named("fraud"),
            verdict_rules::ModelInput::named("aml"),
        ],
        ..Options::default()
    };
    let src = "rule fraud { when model(\"fraud\") > 0.5  score 1 }\n\
               rule aml { when model(\"aml\") > 0.5  score 2 }\n";
    let rs = compile_with(src, &[], &options);
    assert_eq!(rs.program().models, ["fraud", "aml"]);
    let mut engine = Engine::new(rs);
    engine.models = vec![0.9, 0.1];
    assert_eq!(engine.run(&event()).fired, ["fraud"]);
    engine.models = vec![0.1, 0.7];
    assert_eq!(engine.run(&event()).fired, ["aml"]);
}

/// A model `m` whose manifest (at `m/manifest.toml`) lists `features`, each written verbatim
/// in a TOML literal string.
fn model_with(features: &[&str]) -> verdict_rules::ModelInput {
    let quoted: Vec<String> = features.iter().map(|f| format!("'{f}'")).collect();
    let text = format!(
        "name = \"m\"\nfeatures = [\n    {},\n]\n",
        quoted.join(",\n    ")
    );
    let features = features
        .iter()
        .map(|f| verdict_rules::FeatureInput {
            expr: f.to_string(),
            offset: Some(text.find(&format!("'{f}'")).unwrap() + 1),
        })
        .collect();
    verdict_rules::ModelInput {
        name: "m".into(),
        manifest: Some(verdict_rules::Source::new("m/manifest.toml", text)),
        features,
        absent_features_missing: false,
    }
}

#[test]
fn model_features_are_computed_from_the_prepared_event() {
    let options = Options {
        models: vec![model_with(&[
            "amount * 2",
            "count(account, 1h)",
            "country == \"FR\"",
            "features[1]",
            "hour",
        ])],
        ..Options::default()
    };
    let src = "fallback model(\"m\") = 0.25\nrule risky { when model(\"m\") > 0.5  score 10 }\n";
    let rs = compile_with(src, &[], &options);
    assert_eq!(rs.models(), ["m"]);
    assert_eq!(rs.model_fallback(0), 0.25);
    assert_eq!(
        rs.shape().velocity_functions,
        1,
        "a feature's velocity is recorded"
    );
    let mut state = VelocityState::new(16);
    let mut out = rs.outcome();
    let mut row = [0f32; 5];
    for (i, country) in ["US", "FR"].into_iter().enumerate() {
        let e = with(|e| {
            e.country = country.into();
            e.features = vec![0.5, -3.0];
            e.timestamp_ms = T0 + i as u64 * 1000;
        });
        let bytes = archive(&e);
        rs.prepare(access(&bytes), &mut state, &mut out);
        rs.features(access(&bytes), 0, &out, &mut row);
        let hour = ((T0 / 3_600_000) % 24) as f32;
        assert_eq!(row, [200.0, (i + 1) as f32, i as f32, -3.0, hour]);
        rs.decide(access(&bytes), &[0.75], &mut out);
        assert_eq!(out.fired, [0]);
    }
}

#[test]
fn feature_and_fallback_mistakes_are_reported_where_they_are_written() {
    let options = Options {
        models: vec![model_with(&[
            "amount",
            "cuont(account, 1h)",
            "country",
            "model(\"m\") * 2",
            "amount >",
        ])],
        ..Options::default()
    };
    let src = "fallback model(\"m\") = 0.5\n\
               fallback model(\"m\") = 0.1\n\
               fallback model(\"x\") = 0.1\n\
               fallback model(\"m\") = \"high\"\n\
               fallback amount = 1\n\
               rule r { when model(\"m\") > 0.5  score 1 }\n";
    let report = try_compile(src, &[], &options).err().expect("errors");
    let got: Vec<String> = report
        .errors
        .iter()
        .map(|e| e.rendered.lines().next().unwrap().to_string())
        .collect();
    assert_eq!(
        got,
        [
            "mem/test.rules:2:1: error: model `m` already has a fallback at mem/test.rules:1:1",
            "mem/test.rules:3:16: error: unknown model `x` (loaded: m)",
            "mem/test.rules:4:23: error: a fallback score is a number: fallback model(\"fraud_gbdt\") = 0.5",
            "mem/test.rules:5:10: error: `fallback` names one model: fallback model(\"fraud_gbdt\") = 0.5",
            "m/manifest.toml:4:6: error: unknown function `cuont`: expected count, sum, distinct or model",
            "m/manifest.toml:5:6: error: a model's feature is a number or a bool; this is a string",
            "m/manifest.toml:6:6: error: a model's feature cannot read a model's score",
            "m/manifest.toml:7:14: error: expected a value (field, number, string, list, `(`), found end of file",
        ]
    );
}

// ---- scores, actions, policy, shadow rules ----

#[test]
fn scores_of_fired_rules_add_up() {
    let src = "rule a { when amount > 50  score 10 }\n\
               rule b { when country == \"US\"  score 20 }\n\
               rule c { when mcc == 5411  score -5 }\n\
               rule d { when amount > 1000  score 1000 }\n";
    let mut engine = Engine::new(compile(src));
    let d = engine.run(&event());
    assert_eq!(
        (d.score, d.fired.clone()),
        (25, vec!["a".into(), "b".into(), "c".into()])
    );
    let d = engine.run(&with(|e| e.country = "FR".into()));
    assert_eq!(d.score, 5);
    let d = engine.run(&with(|e| {
        e.amount_minor = 100;
        e.country = "FR".into();
        e.mcc = 1;
    }));
    assert_eq!((d.score, d.fired.len()), (0, 0));
}

#[test]
fn the_score_saturates_at_the_i32_range() {
    let rules = |score: i64| -> String {
        (0..2_200)
            .map(|i| format!("rule r{i} {{ when amount > 0  score {score} }}\n"))
            .collect()
    };
    let high = Engine::new(compile(&rules(1_000_000))).run(&event());
    assert_eq!(high.score, i32::MAX);
    let low = Engine::new(compile(&rules(-1_000_000))).run(&event());
    assert_eq!(low.score, i32::MIN);
}

#[test]
fn the_strongest_action_of_the_fired_rules_wins() {
    let src = "rule allow_it { when channel == \"web\"  action allow }\n\
               rule review_it { when country == \"US\"  action review }\n\
               rule deny_it { when mcc == 5411  action deny }\n";
    let mut engine = Engine::new(compile(src));
    assert_eq!(engine.run(&event()).action, Action::Deny);
    assert_eq!(engine.run(&with(|e| e.mcc = 1)).action, Action::Review);
    let only_allow = with(|e| {
        e.mcc = 1;
        e.country = "FR".into();
    });
    assert_eq!(engine.run(&only_allow).action, Action::Allow);
    // Order of writing does not matter: deny written first still beats later reviews.
    let src = "rule deny_it { when mcc == 5411  action deny }\n\
               rule review_it { when country == \"US\"  action review }\n\
               rule allow_it { when channel == \"web\"  action allow }\n";
    assert_eq!(Engine::new(compile(src)).run(&event()).action, Action::Deny);
}

#[test]
fn the_policy_takes_the_first_matching_arm_and_never_weakens_a_rule_action() {
    let src = "rule big { when amount > 1000  score 85 }\n\
               rule mid { when amount > 500  score -35 }\n\
               rule fr { when country == \"FR\"  score 10 }\n\
               rule blocked { when device == \"d-bad\"  action deny }\n\
               rule trusted { when account == \"acct-trusted\"  action allow }\n\
               policy { deny when score >= 80; review when score >= 40 or channel == \"pos\"; otherwise allow }\n";
    let mut engine = Engine::new(compile(src));
    let at = |minor: i64| with(|e| e.amount_minor = minor);
    let d = engine.run(&at(200_000)); // 85 - 35 = 50
    assert_eq!((d.score, d.action), (50, Action::Review));
    let d = engine.run(&with(|e| {
        e.amount_minor = 200_000;
        e.country = "FR".into();
    })); // 60
    assert_eq!((d.score, d.action), (60, Action::Review));
    let d = engine.run(&at(10_000)); // nothing
    assert_eq!((d.score, d.action), (0, Action::Allow));
    // A non-score arm condition.
    let d = engine.run(&with(|e| e.channel = "pos".into()));
    assert_eq!((d.score, d.action), (0, Action::Review));
    // A rule's deny stands whatever the policy says.
    let d = engine.run(&with(|e| e.device_id = "d-bad".into()));
    assert_eq!((d.score, d.action), (0, Action::Deny));
    // A rule's allow does not override the policy's review.
    let d = engine.run(&with(|e| {
        e.account_id = "acct-trusted".into();
        e.channel = "pos".into();
    }));
    assert_eq!(d.action, Action::Review);

    let src = "rule big { when amount > 1000  score 100 }\n\
               policy { deny when score >= 100 }\n";
    let mut engine = Engine::new(compile(src));
    assert_eq!(engine.run(&at(200_000)).action, Action::Deny);
    // No `otherwise`: allow.
    assert_eq!(engine.run(&at(100)).action, Action::Allow);
}

#[test]
fn without_a_policy_the_rules_decide_or_the_default_action() {
    let options = Options {
        default_action: Action::Review,
        ..Options::default()
    };
    let src = "rule scored { when amount > 1000  score 90 }\n\
               rule allowed { when country == \"GB\"  action allow }\n\
               rule denied { when country == \"KP\"  action deny }\n";
    let mut engine = Engine::new(compile_with(src, &[], &options));
    // Nothing fired, or only a rule without an action: the default.
    assert_eq!(engine.run(&event()).action, Action::Review);
    let d = engine.run(&with(|e| e.amount_minor = 200_000));
    assert_eq!((d.score, d.action), (90, Action::Review));
    // A fired rule's action, even a weaker one, replaces the default.
    assert_eq!(
        engine.run(&with(|e| e.country = "GB".into())).action,
        Action::Allow
    );
    assert_eq!(
        engine.run(&with(|e| e.country = "KP".into())).action,
        Action::Deny
    );
    let mut engine = Engine::new(compile(src));
    assert_eq!(engine.run(&event()).action, Action::Allow);
}

#[test]
fn shadow_rules_are_reported_and_never_change_the_decision() {
    let src = "rule scored { when amount > 50  score 10 }\n\
               shadow rule would_deny { when amount > 50  score 100  action deny }\n\
               shadow rule quiet { when amount > 5000  action deny }\n\
               shadow rule would_review { when country == \"US\"  action review  priority 5 }\n\
               policy { deny when score >= 80; review when score >= 40; otherwise allow }\n";
    let mut engine = Engine::new(compile(src));
    let d = engine.run(&event());
    assert_eq!(d.fired, ["scored"]);
    assert_eq!(d.shadow, ["would_review", "would_deny"]);
    assert_eq!((d.score, d.action), (10, Action::Allow));
    let d = engine.run(&with(|e| e.amount_minor = 1_000));
    assert_eq!(d.fired, Vec::<String>::new());
    assert_eq!(d.shadow, ["would_review"]);
    assert_eq!((d.score, d.action), (0, Action::Allow));
}

#[test]
fn fired_rules_are_reported_by_priority_then_as_written() {
    let src = "rule a { when amount > 0  score 1 }\n\
               rule b { when amount > 0  score 1  priority 5 }\n\
               rule c { when amount > 0  score 1 }\n\
               rule d { when amount > 0  score 1  priority -1 }\n\
               rule e { when amount > 0  score 1  priority 5 }\n\
               rule f { when amount > 1000  score 1  priority 9 }\n\
               shadow rule s1 { when amount > 0  score 1 }\n\
               shadow rule s2 { when amount > 0  score 1  priority 7 }\n";
    let rs = compile(src);
    let order: Vec<&str> = (0..rs.rule_count() as u32)
        .map(|i| rs.rule_name(i))
        .collect();
    assert_eq!(order, ["f", "s2", "b", "e", "a", "c", "s1", "d"]);
    let d = Engine::new(rs).run(&event());
    assert_eq!(d.fired, ["b", "e", "a", "c", "d"]);
    assert_eq!(d.shadow, ["s2", "s1"]);
}

// ---- velocity ----

#[test]
fn count_sum_and_distinct_include_the_event_itself_per_account() {
    let src = "rule third { when count(account, 1h) == 3  score 1 }\n\
               rule spent { when sum(amount, account, 1h) > 250  score 2 }\n\
               rule devices { when distinct(device, account, 1h) >= 2  score 4 }\n";
    let mut engine = Engine::new(compile(src));
    let at = |account: &str, device: &str, dt: u64| {
        with(|e| {
            e.account_id = account.into();
            e.device_id = device.into();
            e.timestamp_ms = T0 + dt;
        })
    };
    // The first event counts itself.
    let d = engine.run(&at("acct-1", "d-1", 0));
    assert_eq!(d.velocity, [1.0, 100.0, 1.0]);
    assert_eq!(d.score, 0);
    let d = engine.run(&at("acct-1", "d-1", 1_000));
    assert_eq!(d.velocity, [2.0, 200.0, 1.0]);
    // The same device again is not a new distinct value; another account is separate.
    let d = engine.run(&at("acct-2", "d-2", 2_000));
    assert_eq!(d.velocity, [1.0, 100.0, 1.0]);
    let d = engine.run(&at("acct-1", "d-2", 3_000));
    assert_eq!(d.velocity, [3.0, 300.0, 2.0]);
    assert_eq!((d.fired.len(), d.score), (3, 7));
    assert_eq!(engine.velocity("count(account, 1h)"), 3.0);
    assert_eq!(engine.velocity("sum(amount, account, 1h)"), 300.0);
    assert_eq!(engine.velocity("distinct(device, account, 1h)"), 2.0);
}

#[test]
fn sum_and_distinct_aggregate_any_value_expression() {
    let src = "attribute points: number\n\
               rule r { when sum(amount * 2 + points, account, 1h) > 0 \
                 or distinct(ip, account, 1h) > 0 or distinct(mcc, account, 1h) > 0 \
                 or distinct(country, merchant, 1h) > 0  score 1 }\n";
    let mut engine = Engine::new(compile(src));
    let e1 = with(|e| e.attributes = vec![attr("points", AttrValue::Num(1.5))]);
    engine.run(&e1);
    let e2 = with(|e| {
        e.ip = "::ffff:203.0.113.9".parse().unwrap(); // the same address as e1's
        e.mcc = 7995;
        e.country = "FR".into();
    });
    engine.run(&e2);
    assert_eq!(
        engine.velocity("sum(amount * 2 + points, account, 1h)"),
        401.5
    );
    assert_eq!(engine.velocity("distinct(ip, account, 1h)"), 1.0);
    assert_eq!(engine.velocity("distinct(mcc, account, 1h)"), 2.0);
    assert_eq!(engine.velocity("distinct(country, merchant, 1h)"), 2.0);
}

/// Runs two events of one account `dt` ms apart, the first at `start`, and returns the
/// velocity value the second one sees.
fn second_sees(function: &str, start: u64, dt: u64) -> f64 {
    let src = format!("rule r {{ when {function} > 0  score 1 }}");
    let mut engine = Engine::new(compile(&src));
    engine.run(&with(|e| e.timestamp_ms = start));
    let d = engine.run(&with(|e| {
        e.timestamp_ms = start + dt;
        e.device_id = "d-2".into();
        e.amount_minor = 1_000;
    }));
    d.velocity[0]
}

/// The largest timestamp not above T0 that starts a bucket of `bucket_ms`.
fn aligned(bucket_ms: u64) -> u64 {
    T0 / bucket_ms * bucket_ms
}

#[test]
fn a_window_is_32_buckets_of_ceil_w_over_32_ms() {
    // 64s: buckets of 2000 ms. An event counts while its bucket is one of the last 32.
    let start = aligned(2_000);
    for f in ["count(account, 64s)", "distinct(device, account, 64s)"] {
        assert_eq!(second_sees(f, start, 0), 2.0, "{f}");
        assert_eq!(second_sees(f, start, 63_999), 2.0, "{f}"); // bucket +31
        assert_eq!(second_sees(f, start, 64_000), 1.0, "{f}"); // bucket +32
        // From the end of its bucket, an event is still counted W - W/32 later.
        assert_eq!(second_sees(f, start + 1_999, 62_000), 2.0, "{f}");
        assert_eq!(second_sees(f, start + 1_999, 62_001), 1.0, "{f}");
    }
    assert_eq!(
        second_sees("sum(amount, account, 64s)", start, 63_999),
        110.0
    );
    assert_eq!(
        second_sees("sum(amount, account, 64s)", start, 64_000),
        10.0
    );

    // 60s: buckets of 1875 ms, exactly 60s in all.
    let start = aligned(1_875);
    assert_eq!(second_sees("count(account, 60s)", start, 59_999), 2.0);
    assert_eq!(second_sees("count(account, 60s)", start, 60_000), 1.0);

    // 10s: 312.5 ms rounds up to 313, so the window reaches 32 * 313 = 10016 ms.
    let start = aligned(313);
    assert_eq!(second_sees("count(account, 10s)", start, 10_015), 2.0);
    assert_eq!(second_sees("count(account, 10s)", start, 10_016), 1.0);
    assert_eq!(
        second_sees("sum(amount, account, 10s)", start, 10_015),
        110.0
    );
    assert_eq!(
        second_sees("sum(amount, account, 10s)", start, 10_016),
        10.0
    );
    assert_eq!(
        second_sees("distinct(device, account, 10s)", start, 10_015),
        2.0
    );
    assert_eq!(
        second_sees("distinct(device, account, 10s)", start, 10_016),
        1.0
    );

    // Long after, only the event itself.
    for f in [
        "count(account, 1h)",
        "distinct(device, account, 1h)",
        "sum(amount, account, 1h)",
    ] {
        let expect = if f.starts_with("sum") { 10.0 } else { 1.0 };
        assert_eq!(second_sees(f, T0, 86_400_000), expect, "{f}");
    }
}

#[test]
fn a_late_event_counts_within_its_own_window() {
    // 32s: buckets of 1000 ms.
    let src = "rule r { when count(account, 32s) > 0 or sum(amount, account, 32s) > 0  score 1 }";
    let mut engine = Engine::new(compile(src));
    let at = |s: u64| with(|e| e.timestamp_ms = T0 + s * 1_000);
    assert_eq!(engine.run(&at(100)).velocity, [1.0, 100.0]);
    // 20 s late: recorded, but its window ends at its own bucket.
    assert_eq!(engine.run(&at(80)).velocity, [1.0, 100.0]);
    assert_eq!(engine.run(&at(100)).velocity, [3.0, 300.0]);
    // 40 s late: older than the ring, not recorded; nothing of its window remains.
    assert_eq!(engine.run(&at(60)).velocity, [0.0, 0.0]);
    assert_eq!(engine.run(&at(100)).velocity, [4.0, 400.0]);
}

#[test]
fn a_late_event_counts_distinct_values_within_its_own_window() {
    let src = "rule r { when distinct(device, account, 32s) > 0  score 1 }";
    let mut engine = Engine::new(compile(src));
    let at = |s: u64, device: &str| {
        with(|e| {
            e.timestamp_ms = T0 + s * 1_000;
            e.device_id = device.into();
        })
    };
    assert_eq!(engine.run(&at(100, "d-1")).velocity, [1.0]);
    // 20 s late with another device: d-1 (seen at 100 s) is not in its window.
    assert_eq!(engine.run(&at(80, "d-2")).velocity, [1.0]);
    assert_eq!(engine.run(&at(100, "d-3")).velocity, [3.0]);
    // 40 s late: older than the ring, so (as for count) not recorded and nothing remains.
    assert_eq!(engine.run(&at(60, "d-4")).velocity, [0.0]);
}

#[test]
fn each_velocity_key_groups_its_own_entities() {
    let src = "rule r { when count(device, 1h) > 0 or count(ip, 1h) > 0 \
               or count(merchant, 1h) > 0 or count(account, 1h) > 0  score 1 }";
    let mut engine = Engine::new(compile(src));
    let ev = |account: &str, device: &str, ip: &str, merchant: &str| {
        with(|e| {
            e.account_id = account.into();
            e.device_id = device.into();
            e.ip = ip.parse().unwrap();
            e.merchant_id = merchant.into();
        })
    };
    let ids = [
        "count(device, 1h)",
        "count(ip, 1h)",
        "count(merchant, 1h)",
        "count(account, 1h)",
    ];
    let ids_in_order: Vec<&str> = engine
        .rs
        .program()
        .velocity
        .iter()
        .map(|v| v.id.as_str())
        .collect();
    assert_eq!(ids_in_order, ids);
    assert_eq!(
        engine.run(&ev("a1", "d1", "10.0.0.1", "m1")).velocity,
        [1.0, 1.0, 1.0, 1.0]
    );
    // Same device and merchant, another account, the same IPv4 address IPv4-mapped.
    assert_eq!(
        engine
            .run(&ev("a2", "d1", "::ffff:10.0.0.1", "m1"))
            .velocity,
        [2.0, 2.0, 2.0, 1.0]
    );
    // IPv6 addresses are their own entities.
    assert_eq!(
        engine.run(&ev("a2", "d2", "2001:db8::1", "m1")).velocity,
        [1.0, 1.0, 3.0, 2.0]
    );
    assert_eq!(
        engine.run(&ev("a1", "d2", "2001:db8::1", "m2")).velocity,
        [2.0, 2.0, 1.0, 2.0]
    );
}

#[test]
fn empty_keys_are_not_tracked_and_read_zero() {
    let src = "rule untracked { when count(device, 1h) == 0 and count(ip, 1h) == 0 \
               and sum(amount, merchant, 1h) == 0  score 1 }\n\
               rule tracked { when count(account, 1h) > 0  score 2 }\n";
    let mut engine = Engine::new(compile(src));
    for ip in ["0.0.0.0", "::", "0.0.0.0", "::"] {
        let e = with(|e| {
            e.device_id = String::new();
            e.merchant_id = String::new();
            e.ip = ip.parse().unwrap();
        });
        let d = engine.run(&e);
        assert_eq!(d.fired, ["untracked", "tracked"], "{ip}");
    }
    assert_eq!(engine.velocity("count(account, 1h)"), 4.0);
    let entities: Vec<(String, usize)> = engine.state.entities();
    for (id, n) in entities {
        let want = usize::from(id == "count(account, 1h)");
        assert_eq!(n, want, "{id}");
    }
}

#[test]
fn a_full_store_evicts_and_an_evicted_entity_starts_over() {
    let src = "rule r { when count(account, 1h) > 0 or count(device, 1h) > 0  score 1 }";
    let mut engine = Engine::with_entities(compile(src), 1);
    let ev = |account: &str, dt: u64| {
        with(|e| {
            e.account_id = account.into();
            e.timestamp_ms = T0 + dt;
        })
    };
    assert_eq!(engine.run(&ev("a", 0)).velocity, [1.0, 1.0]);
    assert_eq!(engine.run(&ev("a", 1)).velocity, [2.0, 2.0]);
    // A new account evicts `a` from the account store; the device store keeps d-1.
    assert_eq!(engine.run(&ev("b", 2)).velocity, [1.0, 3.0]);
    assert_eq!(engine.run(&ev("a", 3)).velocity, [1.0, 4.0]);
    for (id, n) in engine.state.entities() {
        assert_eq!(n, 1, "{id}");
    }

    // A bounded store stays bounded under a flood of new accounts.
    let mut engine = Engine::with_entities(compile(src), 16);
    for i in 0..1_000u64 {
        let d = engine.run(&ev(&format!("acct-{i}"), i));
        assert_eq!(d.velocity[0], 1.0);
    }
    for (_, n) in engine.state.entities() {
        assert!(n <= 16);
    }
}

#[test]
fn velocity_state_survives_a_reload_for_functions_that_stay() {
    let first = compile("rule r { when count(account, 1h) > 0  score 1 }");
    let second = compile(
        "rule s { when sum(amount, account, 1h) > 0  score 1 }\n\
         rule r { when count(account, 1h) > 0  score 1 }",
    );
    assert_ne!(first.uid(), second.uid());
    let mut state = VelocityState::new(64);
    let bytes = archive(&event());
    let mut out = first.outcome();
    first.evaluate(access(&bytes), &mut state, &[], &mut out);
    first.evaluate(access(&bytes), &mut state, &[], &mut out);
    assert_eq!(out.velocity, [2.0]);
    let mut out = second.outcome();
    second.evaluate(access(&bytes), &mut state, &[], &mut out);
    assert_eq!(state.prepared_for(), second.uid());
    // The count continues; the new sum starts with this event.
    assert_eq!(out.velocity, [100.0, 3.0]);
}

#[test]
fn shared_tests_and_wide_conditions_decide_like_single_rules() {
    // Many rules over the same fields share their tests (atoms); a condition that expands
    // to more than eight conjunctions runs as a branch program. Both must decide exactly as
    // each rule alone would.
    let wide = "(amount > 1 or country == \"ZZ\") and (mcc == 5411 or mcc == 1) \
                and (channel == \"web\" or channel == \"app\") and (hour >= 0 or hour < 0) \
                and (device starts_with \"d\" or device ends_with \"zz\")";
    let conds = [
        "amount > 10",
        "amount > 10 and country == \"US\"",
        "amount >= 10 and not (country in [\"US\", \"CA\"])",
        "amount < 100000 or country != \"US\"",
        "amount <= 10",
        "amount != 12.5",
        "mcc in [5411, 1] and channel == \"web\"",
        "device starts_with \"d-\" and merchant ends_with \"-1\"",
        "device starts_with \"x-\" or merchant ends_with \"1\"",
        "amount * 2 > 20 and not (amount / 4 < 1)",
        wide,
    ];
    let src: String = conds
        .iter()
        .enumerate()
        .map(|(i, c)| format!("rule r{i} {{ when {c}  score 1 }}\n"))
        .collect();
    let rs = compile(&src);
    let shape = rs.shape();
    assert_eq!(shape.rules, conds.len());
    assert_eq!(
        shape.branch_rules, 1,
        "the wide condition is a branch program"
    );
    // 27 leaf tests are written; `amount > 10`, `country == "US"` (also as `!=`) and
    // `channel == "web"` are written twice each, and are one test each.
    assert_eq!(shape.atoms, 24, "tests are shared: {shape}");
    let mut all = Engine::new(rs);
    for amount in [0, 999, 1_000, 1_001, 1_250, 50_000] {
        for country in ["US", "CA", "FR"] {
            let e = with(|e| {
                e.amount_minor = amount;
                e.country = country.into();
            });
            let fired = all.run(&e).fired;
            for (i, c) in conds.iter().enumerate() {
                let alone = fires_with(c, &[], &e);
                let name = format!("r{i}");
                assert_eq!(
                    fired.contains(&name),
                    alone,
                    "{c} with amount_minor {amount} in {country}"
                );
            }
        }
    }
}

/// Each key's windows kept by a different core (the engine's per-key owners): the deciding
/// core records the account, asks the device's, IP's and merchant's owners to record theirs
/// (`record_key`), and decides with their values (`prepare_with`). Every value and every
/// decision equals one core keeping everything.
#[test]
fn windows_kept_by_each_keys_owner_decide_like_one_core() {
    use verdict_rules::VelocityKey;
    let src = r#"
        rule device_burst { when count(device, 10m) >= 5  score 50 }
        rule ip_spend { when sum(amount, ip, 1h) > 300.00  score 20 }
        rule merchant_accounts { when distinct(account, merchant, 1h) >= 3  score 10 }
        rule account_devices { when distinct(device, account, 1h) >= 2 and count(account, 1h) > 2  action review }
        policy { deny when score >= 60; review when score >= 20; otherwise allow }
    "#;
    let mut whole = Engine::new(compile(src));
    let rs = compile(src);
    // Core 0 decides and keeps accounts; core k keeps key k (device, ip, merchant).
    let mut states: Vec<VelocityState> = (0..4).map(|_| VelocityState::new(1024)).collect();
    let (mut out, mut scratch) = (rs.outcome(), rs.outcome());
    let per_key = rs.functions_by_key();
    assert_eq!(per_key, [2, 1, 1, 1]);
    let keys = [VelocityKey::Device, VelocityKey::Ip, VelocityKey::Merchant];
    for i in 0..200u64 {
        let e = with(|e| {
            e.event_id = format!("evt-{i}");
            e.timestamp_ms = T0 + i * 7_000;
            e.account_id = format!("acct-{}", i % 7);
            e.device_id = format!("d-{}", i % 3);
            e.merchant_id = format!("m-{}", i % 5);
            e.ip = format!("203.0.113.{}", i % 4).parse().unwrap();
            e.amount_minor = 1_000 + (i as i64 * 37) % 9_000;
        });
        let expected = whole.run(&e);
        let bytes = archive(&e);
        let event = access(&bytes);
        let mut values: [Vec<f64>; 4] = Default::default();
        for key in keys {
            let owner = &mut states[key as usize];
            rs.record_key(event, key, owner, &mut scratch, &mut values[key as usize]);
            assert_eq!(values[key as usize].len(), per_key[key as usize]);
        }
        let remote = [
            None,
            Some(&values[1][..]),
            Some(&values[2][..]),
            Some(&values[3][..]),
        ];
        rs.prepare_with(event, &mut states[0], &remote, &mut out);
        rs.decide(event, &[], &mut out);
        let names =
            |v: &[u32]| -> Vec<String> { v.iter().map(|&r| rs.rule_name(r).to_string()).collect() };
        let split = Decided {
            action: out.action(),
            score: out.score,
            fired: names(&out.fired),
            shadow: names(&out.shadow_fired),
            velocity: out.velocity.clone(),
        };
        assert_eq!(split, expected, "event {i}");
    }
    // The account's core never saw a device, IP or merchant.
    assert_eq!(
        states[0]
            .entities()
            .iter()
            .filter(|(id, n)| !id.contains("account") && *n > 0)
            .count(),
        0,
        "{:?}",
        states[0].entities()
    );
}

/// What a key value is placed by: ids' UTF-8 bytes, an IP's address bytes; nothing for a
/// value that is not tracked.
#[test]
fn key_values_are_the_bytes_partitions_hash() {
    use verdict_rules::{VelocityKey, key_value};
    let e = with(|e| e.device_id = String::new());
    let bytes = archive(&e);
    let event = access(&bytes);
    let mut ip = [0u8; 16];
    assert_eq!(
        key_value(event, VelocityKey::Account, &mut ip),
        Some(&b"acct-1"[..])
    );
    assert_eq!(
        key_value(event, VelocityKey::Merchant, &mut ip),
        Some(&b"m-1"[..])
    );
    assert_eq!(key_value(event, VelocityKey::Device, &mut ip), None);
    assert_eq!(
        key_value(event, VelocityKey::Ip, &mut ip),
        Some(&[203, 0, 113, 9][..])
    );
    let v6 = with(|e| e.ip = "2001:db8::1".parse().unwrap());
    let bytes = archive(&v6);
    let got = key_value(access(&bytes), VelocityKey::Ip, &mut ip).map(<[u8]>::to_vec);
    let want: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
    assert_eq!(got, Some(want.octets().to_vec()));
    let none = with(|e| e.ip = "0.0.0.0".parse().unwrap());
    let bytes = archive(&none);
    assert_eq!(key_value(access(&bytes), VelocityKey::Ip, &mut ip), None);
}
