//! The fuzz corpus as an ordinary test (CI runs no fuzzer). Every file under
//! `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` goes through
//! `verdict_rules::fuzzing::<target>`, the same body `cargo fuzz` runs. Proves that the
//! lexer, parser, checker and compiler hold their properties on every seed and every crash
//! found so far (a fixed crash stays fixed): no panic, every error located inside its file,
//! every compiled seed deciding as the reference interpreter does.
//!
//! The seeds are the shipped rule set, the test fixtures with their list files and the
//! example models' features, assembled by `write_seeds` (ignored here): after changing
//! those files, `cargo test -p verdict-rules --test fuzz_corpus -- --ignored` rewrites them.

use std::path::{Path, PathBuf};

use verdict_net::fuzzing::Target;
use verdict_rules::fuzzing;

const TARGETS: [Target; 3] = [
    ("syntax", fuzzing::syntax),
    ("rule_set", fuzzing::rule_set),
    ("expr", fuzzing::expr),
];

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn corpus_and_regressions_replay_without_a_panic() {
    verdict_net::fuzzing::assert_replays(&crate_dir().join("fuzz"), &TARGETS);
}

// ---- the seeds ----

fn read(path: &str) -> String {
    let path = crate_dir().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A `rule_set` input: the rules file, then each `(path, text)` under a `#= PATH` line.
fn rule_set(main: &str, files: &[(&str, String)]) -> String {
    let mut out = main.to_string();
    for (path, text) in files {
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&format!("#= {path}\n{text}"));
    }
    out
}

/// The features of an example model, one per line, as the manifest writes them.
fn model_features(name: &str) -> String {
    let manifest = read(&format!("../models/examples/{name}/manifest.toml"));
    let list = manifest
        .split("features = [")
        .nth(1)
        .unwrap()
        .split("]\n")
        .next()
        .unwrap();
    list.split('"')
        .skip(1)
        .step_by(2)
        .map(|f| format!("{f}\n"))
        .collect()
}

/// `(target, name, bytes)` for every seed.
fn seeds() -> Vec<(&'static str, String, String)> {
    let mut seeds = Vec::new();
    let fixtures = ["good", "broken", "type_errors", "design_example"];
    seeds.push(("syntax", "default".to_string(), read("default.rules")));
    for name in fixtures {
        seeds.push((
            "syntax",
            name.to_string(),
            read(&format!("tests/fixtures/{name}.rules")),
        ));
    }
    seeds.push((
        "syntax",
        "lexer_errors".to_string(),
        "rule a { when x == \"open\n  and y in [1.2.3, 60x, 99999999999999999999d] $ }\n"
            .to_string(),
    ));

    let shipped_lists = ["blocked_devices", "risky_networks", "high_risk_mcc"]
        .map(|l| (format!("lists/{l}.txt"), read(&format!("lists/{l}.txt"))));
    let shipped_lists: Vec<(&str, String)> = shipped_lists
        .iter()
        .map(|(p, t)| (p.as_str(), t.clone()))
        .collect();
    let mut default_files = shipped_lists.clone();
    default_files.push(("models/fraud_lr", model_features("fraud_lr")));
    let mut rule_sets = vec![
        ("default", rule_set(&read("default.rules"), &default_files)),
        (
            "default_no_model_features",
            rule_set(&read("default.rules"), &shipped_lists),
        ),
    ];
    let fixture_lists = ["devices", "networks", "mcc", "not_ips"].map(|l| {
        (
            format!("lists/{l}.txt"),
            read(&format!("tests/fixtures/lists/{l}.txt")),
        )
    });
    let fixture_lists: Vec<(&str, String)> = fixture_lists
        .iter()
        .map(|(p, t)| (p.as_str(), t.clone()))
        .collect();
    rule_sets.push((
        "good",
        rule_set(&read("tests/fixtures/good.rules"), &fixture_lists[..3]),
    ));
    rule_sets.push((
        "type_errors",
        rule_set(
            &read("tests/fixtures/type_errors.rules"),
            &fixture_lists[3..],
        ),
    ));
    rule_sets.push(("broken", read("tests/fixtures/broken.rules")));
    let mut design = shipped_lists[..1].to_vec();
    design.push(("models/fraud_gbdt", model_features("fraud_gbdt")));
    rule_sets.push((
        "design_example",
        rule_set(&read("tests/fixtures/design_example.rules"), &design),
    ));
    // A directory rule set: declarations in one file, rules and the policy in another.
    let default = read("default.rules");
    let (declarations, rules) =
        default.split_at(default.find("rule big_foreign_purchase").unwrap());
    let mut split = shipped_lists.clone();
    split.push(("20-rules.rules", rules.to_string()));
    rule_sets.push(("directory", rule_set(declarations, &split)));
    for (name, text) in rule_sets {
        seeds.push(("rule_set", name.to_string(), text));
    }

    let mut features: Vec<String> = ["fraud_lr", "fraud_gbdt", "exposure_var"]
        .iter()
        .flat_map(|m| {
            model_features(m)
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    features.sort();
    features.dedup();
    features.push("amount > 100 and country in [\"US\", \"CA\"] or ip in 10.0.0.0/8".into());
    features.push("(features[3] * 2 - -1) / sum(amount, device, 10m)".into());
    features.push("country".into());
    features.push("count(account, 1h".into());
    for (i, f) in features.into_iter().enumerate() {
        seeds.push(("expr", format!("{i:02}"), f));
    }
    seeds
}

#[test]
#[ignore = "rewrites the committed seeds; run after changing the files they come from"]
fn write_seeds() {
    for (target, name, text) in seeds() {
        let dir: PathBuf = crate_dir().join("fuzz/corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{name}")), text).unwrap();
    }
}
