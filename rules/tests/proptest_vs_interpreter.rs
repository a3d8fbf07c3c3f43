//! Property test: the compiled rule set decides exactly as the reference interpreter does.
//!
//! Random well-typed rule sets are generated as *source text* by type-directed generators
//! (number, string, IP and true/false expressions over fields, attributes, `features[i]`,
//! models, literals, arithmetic, comparisons, literal sets small and large, file and inline
//! lists, networks, string operators, `count` / `sum` / `distinct`, nested `and` / `or` /
//! `not`; random score, action, shadow flag and priority per rule; an optional policy over
//! the score), checked and compiled with `verdict_rules::load`, and run over a short random
//! sequence of events drawn from a few accounts, devices, countries, currencies, IPv4, IPv6
//! and IPv4-mapped addresses, with attributes present, missing or of the wrong type.
//! For every event, `RuleSet::evaluate` and `interp::decide` (given the velocity values the
//! compiled set computed) agree on the action, the score, and the names of the fired and
//! shadow rules.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::sample::select;
use proptest::strategy::BoxedStrategy;
use proptest::test_runner::Config;
use verdict_net::{ArchivedEvent, AttrValue, Attribute, Event};
use verdict_rules::{Memory, Options, VelocityState, interp};

// ---- the rule set's fixed declarations ----

/// Declarations every generated rule set starts with. Each list is only ever used with one
/// element type; the inline number and IP lists are used by `uses_inline_lists` (an unused
/// one would be loaded as strings).
const HEADER: &str = r#"
attribute a_num: number = 3.5
attribute a_num0: number
attribute a_str: string = "gold"
attribute a_str0: string
attribute a_bool: bool = true
attribute a_bool0: bool
list l_str = ["acct-1", "d-1", "US", "web", ""]
list l_str_big from "lists/str_big.txt"
list l_num from "lists/num.txt"
list l_num_big from "lists/num_big.txt"
list l_num_inline = [5411, 100, -0, 2.5]
list l_ip from "lists/ip.txt"
list l_ip_inline = [10.0.0.0/8, 192.168.1.1]
shadow rule uses_inline_lists { when mcc in l_num_inline or ip in l_ip_inline  action allow }
"#;

fn list_files() -> Vec<(PathBuf, String)> {
    let str_big: String = [
        "acct-2", "d-2", "FR", "app", "m-2", "USD", "gold", "we", "x1", "x2", "x3", "x4", "x5",
    ]
    .iter()
    .map(|s| format!("{s}\n"))
    .collect();
    let num_big: String = (0..20)
        .map(|i| format!("{i}\n"))
        .chain(["100\n".into(), "5000.01\n".into(), "2.5\n".into()])
        .collect();
    vec![
        ("mem/lists/str_big.txt".into(), str_big),
        ("mem/lists/num.txt".into(), "5411\n7995\n-0\n100\n".into()),
        ("mem/lists/num_big.txt".into(), num_big),
        (
            "mem/lists/ip.txt".into(),
            "203.0.113.0/24\n2001:db8:bad::/48\n10.1.2.3\n172.16.0.0/12\n".into(),
        ),
    ]
}

// ---- expression generators, by type ----

type Gen = BoxedStrategy<String>;

fn sel(options: &'static [&'static str]) -> Gen {
    select(options).prop_map(str::to_string).boxed()
}

const STR_FIELDS: &[&str] = &[
    "account", "merchant", "device", "currency", "country", "channel", "event_id",
];
const NUM_FIELDS: &[&str] = &["amount", "amount_minor", "mcc", "hour", "timestamp_ms"];
const STR_LITERALS: &[&str] = &[
    "US",
    "FR",
    "GB",
    "acct-1",
    "acct-2",
    "d-1",
    "",
    "web",
    "we",
    "-1",
    "acct",
    "m-1",
    "USD",
    "JPY",
    "evt-1",
    "gold",
    "x1",
    "m-1-with-a-longer-name",
    "caf\u{e9}",
    "\u{e9}",
];
const NETWORKS: &[&str] = &[
    "10.0.0.0/8",
    "203.0.113.0/24",
    "0.0.0.0/0",
    "1.2.3.4",
    "10.1.2.3",
    "192.168.0.0/16",
    "203.0.113.9",
    "172.16.0.0/12",
];
const KEYS: &[&str] = &["account", "device", "ip", "merchant"];
const WINDOWS: &[&str] = &[
    "1s", "10s", "60s", "90s", "10m", "1h", "24h", "30d", "1500ms",
];

fn str_literal() -> Gen {
    select(STR_LITERALS)
        .prop_map(|s| format!("\"{s}\""))
        .boxed()
}

/// A number literal as written: whole, decimal, or negative (for sets).
fn num_literal() -> Gen {
    prop_oneof![
        sel(&[
            "0", "1", "2.5", "100", "0.3", "5000.01", "5411", "1000000", "22"
        ]),
        (0u32..20_000).prop_map(|x| x.to_string()),
        (0u32..2_000_000).prop_map(|x| format!("{}.{:02}", x / 100, x % 100)),
    ]
    .boxed()
}

fn signed_num_literal() -> Gen {
    prop_oneof![
        3 => num_literal(),
        1 => num_literal().prop_map(|x| format!("-{x}")),
    ]
    .boxed()
}

fn str_expr() -> Gen {
    prop_oneof![
        3 => sel(STR_FIELDS),
        1 => sel(&["a_str", "a_str0"]),
        2 => str_literal(),
    ]
    .boxed()
}

fn ip_expr() -> Gen {
    prop_oneof![
        3 => Just("ip".to_string()),
        1 => sel(&["203.0.113.9", "10.1.2.3", "1.2.3.4", "0.0.0.0"]),
    ]
    .boxed()
}

/// A number leaf that is neither a velocity function nor a model.
fn num_leaf() -> Gen {
    prop_oneof![
        3 => sel(NUM_FIELDS),
        2 => (0usize..5).prop_map(|i| format!("features[{i}]")),
        1 => Just("features[1023]".to_string()),
        1 => sel(&["a_num", "a_num0"]),
        3 => num_literal(),
    ]
    .boxed()
}

/// A number expression. `in_rule`: models and velocity functions may appear (not inside a
/// velocity function's value).
fn num_expr(depth: u32, in_rule: bool) -> Gen {
    let leaf = if in_rule {
        prop_oneof![
            6 => num_leaf(),
            1 => Just("model(\"m\")".to_string()),
            1 => velocity(),
        ]
        .boxed()
    } else {
        num_leaf()
    };
    if depth == 0 {
        return leaf;
    }
    let inner = num_expr(depth - 1, in_rule);
    prop_oneof![
        3 => leaf,
        2 => (inner.clone(), sel(&["+", "-", "*", "/"]), inner.clone())
            .prop_map(|(a, op, b)| format!("({a} {op} {b})")),
        1 => inner.prop_map(|a| format!("(-{a})")),
    ]
    .boxed()
}

fn velocity() -> Gen {
    let value = prop_oneof![str_expr(), ip_expr(), num_expr(1, false)];
    prop_oneof![
        (sel(KEYS), sel(WINDOWS)).prop_map(|(k, w)| format!("count({k}, {w})")),
        (num_expr(1, false), sel(KEYS), sel(WINDOWS))
            .prop_map(|(v, k, w)| format!("sum({v}, {k}, {w})")),
        (value, sel(KEYS), sel(WINDOWS)).prop_map(|(v, k, w)| format!("distinct({v}, {k}, {w})")),
    ]
    .boxed()
}

fn set_of(member: Gen) -> Gen {
    prop::collection::vec(member, 0..13)
        .prop_map(|m| format!("[{}]", m.join(", ")))
        .boxed()
}

fn in_op() -> Gen {
    sel(&["in", "not in"])
}

fn bool_leaf() -> Gen {
    let num = num_expr(1, true);
    prop_oneof![
        4 => (num.clone(), sel(&["==", "!=", "<", "<=", ">", ">="]), num.clone())
            .prop_map(|(a, op, b)| format!("({a} {op} {b})")),
        2 => (str_expr(), sel(&["==", "!="]), str_expr())
            .prop_map(|(a, op, b)| format!("({a} {op} {b})")),
        1 => (ip_expr(), sel(&["==", "!="]), ip_expr())
            .prop_map(|(a, op, b)| format!("({a} {op} {b})")),
        2 => (str_expr(), sel(&["starts_with", "ends_with", "contains"]), str_expr())
            .prop_map(|(a, op, b)| format!("({a} {op} {b})")),
        2 => (str_expr(), in_op(), prop_oneof![set_of(str_literal()), sel(&["l_str", "l_str_big"])])
            .prop_map(|(a, op, s)| format!("({a} {op} {s})")),
        2 => (num, in_op(), prop_oneof![set_of(signed_num_literal()), sel(&["l_num", "l_num_big", "l_num_inline"])])
            .prop_map(|(a, op, s)| format!("({a} {op} {s})")),
        2 => (ip_expr(), in_op(), prop_oneof![sel(NETWORKS), set_of(sel(NETWORKS)), sel(&["l_ip", "l_ip_inline"])])
            .prop_map(|(a, op, s)| format!("({a} {op} {s})")),
        1 => sel(&["a_bool", "a_bool0", "true", "false"]),
    ]
    .boxed()
}

fn bool_expr(depth: u32) -> Gen {
    if depth == 0 {
        return bool_leaf();
    }
    let inner = bool_expr(depth - 1);
    prop_oneof![
        3 => bool_leaf(),
        1 => (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} and {b})")),
        1 => (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} or {b})")),
        1 => inner.clone().prop_map(|a| format!("(not {a})")),
        1 => (inner.clone(), sel(&["==", "!="]), inner).prop_map(|(a, op, b)| format!("({a} {op} {b})")),
    ]
    .boxed()
}

fn rule(index: usize) -> Gen {
    (
        bool_expr(3),
        prop::bool::weighted(0.2),
        prop::option::of(-50i64..100),
        prop::option::of(sel(&["allow", "review", "deny"])),
        prop::option::of(-3i64..4),
    )
        .prop_map(move |(when, shadow, score, action, priority)| {
            let mut text = format!(
                "{}rule r{index} {{\n    when {when}\n",
                if shadow { "shadow " } else { "" }
            );
            // A rule needs a score or an action.
            let score = if action.is_none() && score.is_none() {
                Some(1)
            } else {
                score
            };
            if let Some(s) = score {
                text.push_str(&format!("    score {s}\n"));
            }
            if let Some(a) = action {
                text.push_str(&format!("    action {a}\n"));
            }
            if let Some(p) = priority {
                text.push_str(&format!("    priority {p}\n"));
            }
            text.push_str("}\n");
            text
        })
        .boxed()
}

/// A policy whose arms are always reachable: score thresholds strictly decreasing (some
/// arms also read the event, and those the checker leaves alone), `otherwise` optional.
fn policy() -> Gen {
    (
        prop::collection::btree_set(-50i64..200, 0..4),
        prop::collection::vec(
            (
                sel(&["allow", "review", "deny"]),
                prop::option::of(bool_expr(1)),
            ),
            4,
        ),
        prop::option::of(sel(&["allow", "review", "deny"])),
    )
        .prop_map(|(thresholds, arms, otherwise)| {
            let mut text = String::from("policy {\n");
            for (t, (action, also)) in thresholds.iter().rev().zip(arms) {
                match also {
                    None => text.push_str(&format!("    {action} when score >= {t};\n")),
                    // `country != "ZZ"` reads the event, so the checker does not try to
                    // prove the arm reachable (`b` may be constant, e.g. `not true`).
                    Some(b) => text.push_str(&format!(
                        "    {action} when score >= {t} and {b} and country != \"ZZ\";\n"
                    )),
                }
            }
            if let Some(o) = otherwise {
                text.push_str(&format!("    otherwise {o}\n"));
            }
            text.push_str("}\n");
            text
        })
        .boxed()
}

fn rule_set() -> Gen {
    (
        // Mostly a few rules; one set in five large enough that the compiled masks span
        // several hit words, with runs of four-rule quads and their padding.
        prop_oneof![4 => 1usize..8, 1 => 60usize..140],
        prop::option::weighted(0.6, policy()),
    )
        .prop_flat_map(|(count, policy)| {
            let rules: Vec<Gen> = (0..count).map(rule).collect();
            (rules, Just(policy))
        })
        .prop_map(|(rules, policy)| {
            let mut text = String::from(HEADER);
            for r in rules {
                text.push_str(&r);
            }
            if let Some(p) = policy {
                text.push_str(&p);
            }
            text
        })
        .boxed()
}

// ---- event generators ----

fn attribute_value() -> BoxedStrategy<AttrValue> {
    prop_oneof![
        prop_oneof![
            Just(0.0),
            Just(3.5),
            Just(-1.0),
            Just(100.0),
            -10.0..10.0f64
        ]
        .prop_map(AttrValue::Num),
        select(STR_LITERALS).prop_map(|s| AttrValue::Str(s.to_string())),
        any::<bool>().prop_map(AttrValue::Bool),
    ]
    .boxed()
}

fn attributes() -> BoxedStrategy<Vec<Attribute>> {
    const NAMES: [&str; 7] = [
        "a_num", "a_num0", "a_str", "a_str0", "a_bool", "a_bool0", "other",
    ];
    prop::collection::vec(prop::option::of(attribute_value()), NAMES.len())
        .prop_map(|values| {
            NAMES
                .iter()
                .zip(values)
                .filter_map(|(name, v)| {
                    v.map(|value| Attribute {
                        name: name.to_string(),
                        value,
                    })
                })
                .collect()
        })
        .boxed()
}

fn feature() -> BoxedStrategy<f64> {
    prop_oneof![
        4 => select(&[0.0, -0.0, 0.5, 2.5, 100.0, 5411.0, -3.0][..]),
        2 => -1_000.0..1_000.0f64,
        1 => Just(f64::NAN),
    ]
    .boxed()
}

/// One event, without its timestamp (the sequence assigns those).
fn event() -> BoxedStrategy<Event> {
    let ids = (
        select(&["evt-1", "evt-2", "acct-1"][..]),
        select(&["acct-1", "acct-2", "acct-3"][..]),
        select(&["m-1", "m-2", ""][..]),
        select(&["d-1", "d-2", ""][..]),
        select(&["USD", "JPY", "KWD", "EUR"][..]),
        select(&["US", "FR", "GB"][..]),
        select(&["web", "app", "pos"][..]),
    );
    let amount = prop_oneof![
        select(&[0i64, 10_000, 500_001, 500_000, 30, 2_500_000][..]),
        -1_000i64..10_000_000,
    ];
    let ip = select(
        &[
            "203.0.113.9",
            "10.1.2.3",
            "::ffff:10.1.2.3",
            "::ffff:203.0.113.200",
            "2001:db8:bad::1",
            "2001:db8::1",
            "0.0.0.0",
            "::",
            "172.20.0.1",
            "8.8.8.8",
            "192.168.1.1",
        ][..],
    );
    let mcc = select(&[5411u16, 7995, 0, 100, 22, 9999][..]);
    (
        ids,
        amount,
        ip,
        mcc,
        prop::collection::vec(feature(), 0..5),
        attributes(),
    )
        .prop_map(
            |(
                (event_id, account, merchant, device, currency, country, channel),
                amount_minor,
                ip,
                mcc,
                features,
                attributes,
            )| Event {
                event_id: event_id.into(),
                timestamp_ms: 0,
                account_id: account.into(),
                merchant_id: merchant.into(),
                amount_minor,
                currency: currency.into(),
                country: country.into(),
                channel: channel.into(),
                device_id: device.into(),
                ip: ip.parse().unwrap(),
                mcc,
                features,
                attributes,
            },
        )
        .boxed()
}

/// Events with timestamps moving forward (now and then a little back), each with the model
/// score to decide it with.
fn events() -> BoxedStrategy<Vec<(Event, f64)>> {
    let step = prop_oneof![
        select(&[0i64, 1, 999, 1_000, 30_000, 600_000, 3_600_001, -5_000][..]),
        0i64..120_000,
    ];
    (
        0u64..86_400_000,
        prop::collection::vec((event(), step, 0.0..1.0f64), 1..7),
    )
        .prop_map(|(start, steps)| {
            let mut ts = 1_700_000_000_000u64 + start;
            steps
                .into_iter()
                .map(|(mut e, step, model)| {
                    ts = ts.saturating_add_signed(step);
                    e.timestamp_ms = ts;
                    (e, model)
                })
                .collect()
        })
        .boxed()
}

// ---- the property ----

fn config() -> Config {
    Config {
        cases: 512,
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn compiled_rules_decide_as_the_reference_interpreter(
        source in rule_set(),
        events in events(),
    ) {
        let mut files = list_files();
        files.push(("mem/p.rules".into(), source.clone()));
        let options = Options { models: vec![verdict_rules::ModelInput::named("m")], ..Options::default() };
        let rs = match verdict_rules::load(Path::new("mem/p.rules"), &Memory(files), &options) {
            Ok(rs) => rs,
            Err(report) => {
                // Only a set with too many distinct velocity functions may be refused.
                let too_many = report
                    .errors
                    .iter()
                    .all(|e| e.message.contains("VELOCITY_FUNCTIONS_MAX"));
                prop_assume!(!too_many);
                panic!("a generated rule set failed to check:\n{source}\n{report}");
            }
        };
        let mut state = VelocityState::new(64);
        // The interpreter keeps its own velocity state, recorded function by function.
        let mut plain = VelocityState::new(64);
        plain.prepare(u64::MAX - 1, &rs.program().velocity);
        let mut out = rs.outcome();
        for (i, (event, model)) in events.iter().enumerate() {
            let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(event).unwrap();
            let archived = rkyv::access::<ArchivedEvent, rkyv::rancor::Error>(&bytes).unwrap();
            let models = [*model];
            rs.evaluate(archived, &mut state, &models, &mut out);
            let velocity = interp::record_velocity(rs.program(), archived, &mut plain);
            // NaN (a sum reaching inf - inf) equals NaN here.
            let same = out.velocity.len() == velocity.len()
                && out.velocity.iter().zip(&velocity).all(|(a, b)| a == b || a.is_nan() && b.is_nan());
            prop_assert!(same, "velocity {:?} vs {:?}; {}", out.velocity, velocity, source);
            let want = interp::decide(
                rs.program(),
                rs.default_action(),
                archived,
                &velocity,
                &models,
            );
            let fired: Vec<String> =
                out.fired.iter().map(|&r| rs.rule_name(r).to_string()).collect();
            let shadow: Vec<String> =
                out.shadow_fired.iter().map(|&r| rs.rule_name(r).to_string()).collect();
            let context = || format!("event {i}: {event:?}\nvelocity {:?}\n{source}", out.velocity);
            prop_assert_eq!(out.action(), want.action, "action; {}", context());
            prop_assert_eq!(out.score, want.score, "score; {}", context());
            prop_assert_eq!(&fired, &want.rules, "fired; {}", context());
            prop_assert_eq!(&shadow, &want.shadow_rules, "shadow; {}", context());
        }
    }
}
