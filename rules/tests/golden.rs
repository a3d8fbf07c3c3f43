//! Golden tests of the parser: the DESIGN.md example parses and means what it says; a broken
//! file reports every error, each rendered exactly (file:line:col, the line, a caret).

use verdict_rules::ast::*;
use verdict_rules::{Source, parse};

fn fixture(name: &str) -> Source {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    Source::new(
        format!("fixtures/{name}"),
        std::fs::read_to_string(path).unwrap(),
    )
}

#[test]
fn the_design_example_parses_into_what_it_says() {
    let src = fixture("design_example.rules");
    let (file, errors) = parse(&src.text);
    assert!(
        errors.is_empty(),
        "{:?}",
        errors.iter().map(|d| src.render(d)).collect::<Vec<_>>()
    );
    assert_eq!(file.items.len(), 7);
    let Item::List(list) = &file.items[0] else {
        panic!("a list first")
    };
    assert_eq!(list.name.name, "blocked_devices");
    assert!(
        matches!(&list.source, ListSource::File { path, .. } if path == "lists/blocked_devices.txt")
    );

    let rules: Vec<&RuleDecl> = file
        .items
        .iter()
        .filter_map(|i| if let Item::Rule(r) = i { Some(r) } else { None })
        .collect();
    let names: Vec<(&str, bool)> = rules
        .iter()
        .map(|r| (r.name.name.as_str(), r.shadow))
        .collect();
    assert_eq!(
        names,
        vec![
            ("big_foreign_purchase", false),
            ("burst", false),
            ("bad_device", false),
            ("model_high", false),
            ("candidate_threshold", true),
        ]
    );
    assert_eq!(rules[0].score.map(|s| s.0), Some(40));
    assert_eq!(rules[1].action.map(|a| a.0), Some(Action::Deny));

    // `amount > 5000.00 and country not in [...]`: `and` at the top, `not in` below it.
    let ExprKind::Binary {
        op: BinOp::And,
        lhs,
        rhs,
    } = &rules[0].when.kind
    else {
        panic!()
    };
    assert!(
        matches!(&lhs.kind, ExprKind::Binary { op: BinOp::Gt, rhs, .. } if rhs.kind == ExprKind::Number("5000.00".into()))
    );
    let ExprKind::In {
        negated: true, set, ..
    } = &rhs.kind
    else {
        panic!("not in")
    };
    assert!(matches!(&set.kind, ExprKind::Set(items) if items.len() == 3));

    // `count(account, 60s) >= 10 or sum(amount, account, 1h) > 20000.00`
    let ExprKind::Binary {
        op: BinOp::Or,
        lhs,
        rhs,
    } = &rules[1].when.kind
    else {
        panic!()
    };
    let ExprKind::Binary {
        op: BinOp::Ge,
        lhs: call,
        ..
    } = &lhs.kind
    else {
        panic!()
    };
    assert!(matches!(&call.kind, ExprKind::Call { func, args }
        if func.name == "count" && args[1].kind == ExprKind::Duration(60_000)));
    let ExprKind::Binary {
        op: BinOp::Gt,
        lhs: call,
        ..
    } = &rhs.kind
    else {
        panic!()
    };
    assert!(matches!(&call.kind, ExprKind::Call { func, args }
        if func.name == "sum" && args.len() == 3 && args[2].kind == ExprKind::Duration(3_600_000)));

    let Item::Policy(policy) = &file.items[6] else {
        panic!("policy last")
    };
    let arms: Vec<Action> = policy.arms.iter().map(|a| a.action).collect();
    assert_eq!(arms, vec![Action::Deny, Action::Review]);
    assert_eq!(policy.otherwise.map(|o| o.0), Some(Action::Allow));
}

#[test]
fn a_broken_file_reports_every_error_exactly() {
    let src = fixture("broken.rules");
    let (file, errors) = parse(&src.text);
    let rendered: String = errors.iter().map(|d| src.render(d)).collect();
    let expected = std::fs::read_to_string(format!(
        "{}/tests/fixtures/broken.expected",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    assert_eq!(rendered, expected, "rendered:\n{rendered}");
    // What parsed is kept: the inline list and the policy.
    assert!(
        matches!(&file.items[0], Item::List(l) if matches!(&l.source, ListSource::Inline(v) if v.len() == 2))
    );
    assert!(file.items.iter().any(|i| matches!(i, Item::Policy(_))));
}

#[test]
fn precedence_follows_the_documented_order() {
    let (file, errors) =
        parse("rule r { when not a == 1 or b + 2 * 3 > c[0] and -d < 4  score 1 }");
    assert!(errors.is_empty(), "{errors:?}");
    let Item::Rule(r) = &file.items[0] else {
        panic!()
    };
    // or( not(a == 1), and( (b + (2*3)) > c[0], (-d) < 4 ) )
    let ExprKind::Binary {
        op: BinOp::Or,
        lhs,
        rhs,
    } = &r.when.kind
    else {
        panic!()
    };
    assert!(
        matches!(&lhs.kind, ExprKind::Unary { op: UnOp::Not, expr } if matches!(expr.kind, ExprKind::Binary { op: BinOp::Eq, .. }))
    );
    let ExprKind::Binary {
        op: BinOp::And,
        lhs: gt,
        rhs: lt,
    } = &rhs.kind
    else {
        panic!()
    };
    let ExprKind::Binary {
        op: BinOp::Gt,
        lhs: sum,
        rhs: idx,
    } = &gt.kind
    else {
        panic!()
    };
    assert!(
        matches!(&sum.kind, ExprKind::Binary { op: BinOp::Add, rhs, .. } if matches!(rhs.kind, ExprKind::Binary { op: BinOp::Mul, .. }))
    );
    assert!(matches!(idx.kind, ExprKind::Index { .. }));
    assert!(
        matches!(&lt.kind, ExprKind::Binary { op: BinOp::Lt, lhs, .. } if matches!(lhs.kind, ExprKind::Unary { op: UnOp::Neg, .. }))
    );
}

#[test]
fn string_operators_and_networks_parse() {
    let (file, errors) = parse(
        r#"rule r { when merchant starts_with "m-" and device ends_with "x" and channel contains "e" and ip in 10.0.0.0/8  action review }"#,
    );
    assert!(errors.is_empty(), "{errors:?}");
    let Item::Rule(r) = &file.items[0] else {
        panic!()
    };
    let mut ops = Vec::new();
    fn walk(e: &Expr, ops: &mut Vec<String>) {
        match &e.kind {
            ExprKind::Binary { op, lhs, rhs } => {
                walk(lhs, ops);
                ops.push(format!("{op:?}"));
                walk(rhs, ops);
            }
            ExprKind::In { set, .. } => {
                if let ExprKind::Ip(net) = &set.kind {
                    ops.push(format!("in {net}"));
                }
            }
            _ => {}
        }
    }
    walk(&r.when, &mut ops);
    assert_eq!(
        ops,
        vec![
            "StartsWith",
            "And",
            "EndsWith",
            "And",
            "Contains",
            "And",
            "in 10.0.0.0/8"
        ]
    );
}

#[test]
fn garbage_never_panics_the_parser() {
    let mut seed = 7u64;
    let alphabet: Vec<char> = "rule shadow when score action list policy and or not in ( ) [ ] { } , ; = == < > 1 2.5 60s 1.2.3.4/8 \"s\" # x\n".chars().collect();
    for _ in 0..3_000 {
        let mut text = String::new();
        for _ in 0..(seed % 80) {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            text.push(alphabet[(seed >> 33) as usize % alphabet.len()]);
        }
        let _ = parse(&text);
    }
}
