//! The body of each fuzz target (`rules/fuzz/fuzz_targets/<name>.rs` calls
//! `fuzzing::<name>`) and of the corpus replay test (`tests/fuzz_corpus.rs` runs every file
//! under `fuzz/corpus/<name>/` and `fuzz/regressions/<name>/` through the same function). Not
//! an API: each function takes arbitrary bytes (read as UTF-8, invalid sequences replaced),
//! drives the real code path, and panics when a property that must hold for any input does
//! not. For every input, nothing panics, and:
//!
//! - [`syntax`]: the lexer's tokens are non-empty, in text order without overlap, on
//!   character boundaries, and end with one `Eof`; every diagnostic of [`lex`], [`parse`]
//!   and [`parse_expr`] has a span inside the text on character boundaries and renders
//!   with a line and column inside it.
//! - [`rule_set`]: the whole pipeline, [`crate::load`]: read, parse, check (lists, models,
//!   several files), compile. The input is a rules file, optionally followed by more files,
//!   each introduced by a line `#= PATH` (a comment to the lexer), relative to the rules
//!   file's directory: list files, more `.rules` files (the rule set is then the directory),
//!   and `models/NAME` files whose lines are the features of model NAME (a manifest's
//!   features, located in it). Every error names a file and a line and column inside it, and
//!   renders as `file:line:col: error: message`. A rule set that compiles decides a few
//!   events exactly as the reference interpreter does, velocity included.
//! - [`expr`]: one expression as a model's feature: [`parse_expr`], then checked, compiled
//!   and computed for a few events as the feature of a model a rule calls.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use verdict_net::{ArchivedEvent, AttrValue, Attribute, Event};

use crate::diag::{Diagnostic, Report, Source};
use crate::lexer::{Tok, lex};
use crate::parser::{parse, parse_expr};
use crate::{FeatureInput, Limits, Loader, ModelInput, Options, RuleSet, VelocityState, interp};

/// The directory the fuzzed rule set lives in.
const DIR: &str = "fuzz";
/// The rules file: the input up to the first `#= PATH` line.
const MAIN: &str = "fuzz/main.rules";
/// Introduces another file in a [`rule_set`] input.
const FILE_MARK: &str = "#= ";
/// Models the shipped rules and fixtures call, known by name (no features).
const NAMED_MODELS: [&str; 3] = ["fraud_lr", "fraud_gbdt", "exposure_var"];

/// Limits small enough that inputs of a few KiB reach them.
fn limits() -> Limits {
    Limits {
        rules_max: 64,
        list_entries_max: 256,
        list_file_bytes_max: 4096,
        velocity_functions_max: 16,
        ..Limits::default()
    }
}

/// Fuzz target `syntax`: the lexer and the parser (whole file and one expression).
pub fn syntax(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let source = Source::new("fuzz.rules", text.as_ref());
    let (tokens, lex_errors) = lex(&text);
    let (last, rest) = tokens.split_last().expect("at least the end of file");
    assert_eq!(last.tok, Tok::Eof);
    assert_eq!((last.span.start, last.span.end), (len(&text), len(&text)));
    let mut end = 0;
    for token in rest {
        assert_ne!(token.tok, Tok::Eof, "one end of file, at the end");
        assert!(
            token.span.start >= end,
            "tokens overlap or go back: {token:?}"
        );
        assert!(
            token.span.start < token.span.end,
            "an empty token: {token:?}"
        );
        on_boundaries(&text, token.span.start, token.span.end);
        end = token.span.end;
    }
    let (_, parse_errors) = parse(&text);
    let (_, expr_errors) = parse_expr(&text);
    // The parser's errors include the lexer's (checked below).
    for d in parse_errors.iter().chain(&expr_errors) {
        located(&source, d);
    }
    // The parser sorts its errors by position, stably, the lexer's first: in that order the
    // lexer's are a subsequence of the parser's. (The lexer finds an unknown escape before
    // it knows the string is unterminated, so its own list is not in text order.)
    let mut lexed = lex_errors;
    lexed.sort_by_key(|d| d.span.start);
    let mut reported = parse_errors.iter();
    for d in &lexed {
        assert!(
            reported.any(|p| p == d),
            "the parser reports the lexer's errors: {d:?}"
        );
    }
}

/// Fuzz target `rule_set`: a rules file and the files it reads, through [`crate::load`].
pub fn rule_set(data: &[u8]) {
    let files = Files::split(&String::from_utf8_lossy(data));
    let models = files.models();
    load(&files, models);
}

/// Fuzz target `expr`: an expression as the one feature of a model a rule calls.
pub fn expr(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (_, errors) = parse_expr(&text);
    let alone = Source::new("feature", text.as_ref());
    for d in &errors {
        located(&alone, d);
    }
    let manifest = Path::new(DIR).join("models").join("fuzz");
    let files = Files(vec![
        (
            PathBuf::from(MAIN),
            "rule r { when model(\"fuzz\") > 0.5  score 1 }\n".into(),
        ),
        (manifest.clone(), text.to_string()),
    ]);
    let model = ModelInput {
        name: "fuzz".into(),
        manifest: Some(Source::new(manifest.display().to_string(), text.as_ref())),
        features: vec![FeatureInput {
            expr: text.to_string(),
            offset: Some(0),
        }],
        absent_features_missing: false,
    };
    load(&files, vec![model]);
}

/// Loads the rule set of `files` with `models`: a set that compiles decides as the
/// interpreter does; a report locates every error.
fn load(files: &Files, models: Vec<ModelInput>) {
    let options = Options {
        models,
        limits: limits(),
        ..Options::default()
    };
    let path = if files.rules_files().len() > 1 {
        DIR
    } else {
        MAIN
    };
    match crate::load(Path::new(path), files, &options) {
        Ok(set) => {
            assert!(set.rule_count() <= options.limits.rules_max);
            for file in &set.files {
                assert!(
                    files.text(file).is_some(),
                    "read a file that is not there: {file}"
                );
            }
            decide_like_the_interpreter(&set);
        }
        Err(report) => files.check_report(&report),
    }
}

// ---- the files of a rule set ----

/// The files of a [`rule_set`] input, by path.
struct Files(Vec<(PathBuf, String)>);

impl Files {
    fn split(text: &str) -> Files {
        let mut files = vec![(PathBuf::from(MAIN), String::new())];
        for line in text.split_inclusive('\n') {
            match line.strip_prefix(FILE_MARK) {
                Some(path) => files.push((Path::new(DIR).join(path.trim_end()), String::new())),
                None => files.last_mut().expect("the rules file").1.push_str(line),
            }
        }
        Files(files)
    }

    fn text(&self, path: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(p, _)| p.display().to_string() == path)
            .map(|(_, text)| text.as_str())
    }

    /// The `.rules` files directly in [`DIR`], sorted (as a directory lists them).
    fn rules_files(&self) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = self
            .0
            .iter()
            .map(|(p, _)| p.clone())
            .filter(|p| {
                p.parent() == Some(Path::new(DIR)) && p.extension().is_some_and(|x| x == "rules")
            })
            .collect();
        found.sort();
        found.dedup();
        found
    }

    /// Each `models/NAME` file as model NAME, a feature per non-empty line (located in the
    /// file, as a manifest's features are), and the shipped models by name.
    fn models(&self) -> Vec<ModelInput> {
        let mut models: Vec<ModelInput> = Vec::new();
        for (path, text) in &self.0 {
            let Ok(name) = path.strip_prefix(Path::new(DIR).join("models")) else {
                continue;
            };
            let mut features = Vec::new();
            let mut offset = 0;
            for line in text.split_inclusive('\n') {
                let expr = line.trim_end_matches('\n');
                if !expr.trim().is_empty() {
                    features.push(FeatureInput {
                        expr: expr.to_string(),
                        offset: Some(offset),
                    });
                }
                offset += line.len();
            }
            models.push(ModelInput {
                name: name.display().to_string(),
                manifest: Some(Source::new(path.display().to_string(), text.as_str())),
                features,
                absent_features_missing: false,
            });
        }
        for name in NAMED_MODELS {
            if !models.iter().any(|m| m.name == name) {
                models.push(ModelInput::named(name));
            }
        }
        models
    }

    /// Every error names a file; in a file that exists, a line and column inside it.
    fn check_report(&self, report: &Report) {
        assert!(!report.errors.is_empty(), "a failure with no error");
        let _ = report.to_string();
        for e in &report.errors {
            assert!(!e.message.is_empty());
            let Some(text) = self.text(&e.file) else {
                // A file that could not be read (or the directory): the file as a whole.
                assert_eq!((e.line, e.column), (1, 1), "{e:?}");
                assert!(
                    e.rendered.starts_with(&format!("{}: error: ", e.file)),
                    "{e:?}"
                );
                continue;
            };
            assert!(inside(text, e.line, e.column), "outside {}: {e:?}", e.file);
            let head = format!("{}:{}:{}: error: {}", e.file, e.line, e.column, e.message);
            assert!(
                e.rendered.starts_with(&head)
                    || e.rendered.starts_with(&format!("{}: error: ", e.file)),
                "{e:?}"
            );
        }
    }
}

impl Loader for Files {
    fn read(&self, path: &Path, bytes_max: u64) -> io::Result<String> {
        let (_, text) = self
            .0
            .iter()
            .find(|(p, _)| p == path)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))?;
        if text.len() as u64 > bytes_max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "over the size limit",
            ));
        }
        Ok(text.clone())
    }

    fn rules_in(&self, path: &Path) -> io::Result<Option<Vec<PathBuf>>> {
        Ok((path == Path::new(DIR)).then(|| self.rules_files()))
    }
}

// ---- properties of diagnostics and decisions ----

fn len(text: &str) -> u32 {
    u32::try_from(text.len()).expect("fuzz inputs are small")
}

fn on_boundaries(text: &str, start: u32, end: u32) {
    let (start, end) = (start as usize, end as usize);
    assert!(
        start <= end && end <= text.len(),
        "span {start}..{end} outside the text"
    );
    assert!(
        text.is_char_boundary(start) && text.is_char_boundary(end),
        "span {start}..{end} cuts a character"
    );
}

/// Whether 1-based `line` and `column` (in characters) are a position in `text`, the end of
/// a line included.
fn inside(text: &str, line: usize, column: usize) -> bool {
    let Some(at) = line.checked_sub(1).and_then(|i| text.split('\n').nth(i)) else {
        return false;
    };
    (1..=at.chars().count() + 1).contains(&column)
}

/// A diagnostic points inside its text and renders with a line and column there.
fn located(source: &Source, d: &Diagnostic) {
    on_boundaries(&source.text, d.span.start, d.span.end);
    let error = crate::RuleError::new(source, d);
    assert!(inside(&source.text, error.line, error.column), "{error:?}");
    assert!(error.rendered.starts_with(&format!(
        "{}:{}:{}: error: ",
        source.path, error.line, error.column
    )));
}

/// Events for a compiled set to decide: one account (so velocity adds up), the attributes
/// the seeds declare present, missing or of another type, every kind of address.
fn events() -> Vec<Event> {
    let ips: [IpAddr; 4] = [
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)),
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 0, 0, 0, 0, 1)),
        "::ffff:10.1.2.3".parse().expect("an address"),
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    ];
    let attributes = [
        vec![
            ("account_age_days", AttrValue::Num(3.0)),
            ("email_verified", AttrValue::Bool(false)),
            ("segment", AttrValue::Str("wholesale".into())),
        ],
        vec![],
        vec![
            ("account_age_days", AttrValue::Str("old".into())),
            ("risk_hint", AttrValue::Num(-0.0)),
            ("promo", AttrValue::Bool(true)),
        ],
        vec![("referrer", AttrValue::Str(String::new()))],
    ];
    ips.into_iter()
        .zip(attributes)
        .enumerate()
        .map(|(i, (ip, attributes))| Event {
            event_id: format!("evt-{i}"),
            timestamp_ms: 1_700_000_000_000 + 20_000 * i as u64,
            account_id: "acct-1".into(),
            merchant_id: ["m-1", ""][i % 2].into(),
            amount_minor: [600_000, 0, 25_000, 9_999_999][i],
            currency: ["USD", "JPY", "KWD", "EUR"][i].into(),
            country: ["FR", "US", "GB", "CA"][i].into(),
            channel: ["web", "app", "pos", ""][i].into(),
            device_id: ["d-bad-1", "d-1", "", "d-2"][i].into(),
            ip,
            mcc: [7995, 5411, 0, 9999][i],
            features: vec![0.5, -1.0, 1e9][..i.min(3)].to_vec(),
            attributes: attributes
                .into_iter()
                .map(|(name, value)| Attribute {
                    name: name.into(),
                    value,
                })
                .collect(),
        })
        .collect()
}

/// The compiled set and the reference interpreter agree on every event: velocity values,
/// action, score, fired and shadow rules. Every model's features compute.
fn decide_like_the_interpreter(set: &RuleSet) {
    let program = set.program();
    let mut state = VelocityState::new(64);
    let mut plain = VelocityState::new(64);
    plain.prepare(u64::MAX - 1, &program.velocity);
    let mut out = set.outcome();
    let models: Vec<f64> = (0..set.models().len())
        .map(|i| 0.25 * i as f64 + 0.6)
        .collect();
    for event in events() {
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&event).expect("an event archives");
        let archived = rkyv::access::<ArchivedEvent, rkyv::rancor::Error>(&bytes).expect("valid");
        set.prepare(archived, &mut state, &mut out);
        for (m, features) in program.model_features.iter().enumerate() {
            let mut row = vec![0f32; features.len()];
            set.features(archived, m, &out, &mut row);
        }
        set.decide(archived, &models, &mut out);
        let velocity = interp::record_velocity(program, archived, &mut plain);
        let same = out.velocity.len() == velocity.len()
            && out
                .velocity
                .iter()
                .zip(&velocity)
                .all(|(a, b)| a == b || a.is_nan() && b.is_nan());
        assert!(
            same,
            "velocity {:?}, the interpreter {velocity:?}",
            out.velocity
        );
        let want = interp::decide(program, set.default_action(), archived, &velocity, &models);
        let fired: Vec<&str> = out.fired.iter().map(|&r| set.rule_name(r)).collect();
        let shadow: Vec<&str> = out.shadow_fired.iter().map(|&r| set.rule_name(r)).collect();
        assert_eq!(out.action(), want.action, "action of {event:?}");
        assert_eq!(out.score, want.score, "score of {event:?}");
        assert_eq!(fired, want.rules, "fired rules of {event:?}");
        assert_eq!(shadow, want.shadow_rules, "shadow rules of {event:?}");
    }
}
