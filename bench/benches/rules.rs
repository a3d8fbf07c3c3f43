//! Rule evaluation, ns per event, compiled closures beside the reference AST-walking
//! interpreter in the same run:
//! - the shipped rule set (rules/default.rules: lists, velocity, attributes, a policy);
//! - a generated 200-rule set of the shapes real rule sets have (thresholds, country and
//!   MCC sets, CIDR lists, string prefixes, hour ranges, arithmetic, velocity on four
//!   windows, shadow rules, a three-arm policy);
//! - the same set without its 40 velocity rules (rule evaluation alone).
//!
//! The compiled side also records every event in the velocity windows. The interpreter runs
//! twice: handed the velocity values precomputed (rule evaluation alone, which favours it),
//! and recording them itself the plain way (the same job as the compiled side).
//! Event time moves forward 10 ms per event, as live traffic does: 1,024 events are cycled,
//! each stamped with the next timestamp before it is decided (late events, which read a
//! window bucket by bucket, are the rare case and have their own tests).
//!
//! `cargo bench -p verdict-bench --bench rules`

use std::hint::black_box;
use std::path::{Path, PathBuf};

use criterion::{Criterion, criterion_group, criterion_main};
use rkyv::util::AlignedVec;
use verdict_bench::events::EventGen;
use verdict_net::ArchivedEvent;
use verdict_rules::{Memory, Options, RuleSet, VelocityState, interp, load, load_default};

/// A generated rule set, deterministic in `seed`.
pub fn generated_rules(count: usize, seed: u64) -> String {
    let mut r = fastrand::Rng::with_seed(seed);
    let countries = [
        "US", "GB", "DE", "FR", "JP", "BR", "NG", "IN", "CA", "MX", "RU", "CN",
    ];
    let pick = |r: &mut fastrand::Rng, n: usize| -> String {
        let mut v: Vec<String> = (0..n)
            .map(|_| format!("\"{}\"", countries[r.usize(..countries.len())]))
            .collect();
        v.dedup();
        v.join(", ")
    };
    let windows = ["60s", "10m", "1h", "24h"];
    let mut out = String::from("# generated\n");
    for i in 0..count {
        let when = match i % 10 {
            0 => format!(
                "amount > {}.00 and country in [{}]",
                r.u32(50..20_000),
                pick(&mut r, 4)
            ),
            1 => format!(
                "mcc in [{}, {}, {}] and channel == \"web\"",
                r.u32(4000..8000),
                r.u32(4000..8000),
                5411
            ),
            2 => format!("device starts_with \"d-{}\"", r.u32(1..999)),
            3 => format!("ip in 198.51.{}.0/24", 100 + r.u32(0..4)),
            4 => format!(
                "count(account, {}) >= {}",
                windows[r.usize(..windows.len())],
                r.u32(3..50)
            ),
            5 => format!(
                "sum(amount, account, {}) > {}.00",
                windows[r.usize(..windows.len())],
                r.u32(500..50_000)
            ),
            6 => format!(
                "hour >= {} and hour < {} and amount > {}",
                r.u32(0..12),
                r.u32(12..24),
                r.u32(10..5_000)
            ),
            7 => format!(
                "(amount * 1.{} > {} or mcc == {}) and not (country == \"US\")",
                r.u32(1..9),
                r.u32(100..9_000),
                r.u32(4000..8000)
            ),
            8 => format!(
                "merchant ends_with \"{}\" and currency != \"USD\"",
                r.u32(0..10)
            ),
            _ => format!(
                "country not in [{}] and amount >= {}",
                pick(&mut r, 3),
                r.u32(1..1_000)
            ),
        };
        let shadow = if i % 10 == 9 { "shadow " } else { "" };
        let then = match r.u32(0..10) {
            0 => "action deny".to_string(),
            1 => "action review".to_string(),
            _ => format!("score {}", r.u32(1..40)),
        };
        out.push_str(&format!("{shadow}rule r{i} {{ when {when}  {then} }}\n"));
    }
    out.push_str("policy { deny when score >= 120; review when score >= 60; otherwise allow }\n");
    out
}

fn archived_events(n: usize) -> Vec<AlignedVec<16>> {
    let mut g = EventGen::new(7);
    (0..n)
        .map(|_| {
            let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&g.next_event()).unwrap();
            let mut v = AlignedVec::new();
            v.extend_from_slice(&bytes);
            v
        })
        .collect()
}

/// Archived events whose timestamps the bench rewrites in place.
struct Clock {
    events: Vec<AlignedVec<16>>,
    /// Where `timestamp_ms` sits in each event's bytes.
    offsets: Vec<usize>,
    next: usize,
    now_ms: u64,
}

impl Clock {
    fn new(events: &[AlignedVec<16>]) -> Clock {
        let offsets = events
            .iter()
            .map(|bytes| {
                // Validated once here: the engine validates at the edge, before the rules.
                let e = rkyv::access::<ArchivedEvent, rkyv::rancor::Error>(bytes).unwrap();
                let field = &e.timestamp_ms as *const _ as usize;
                field - bytes.as_ptr() as usize
            })
            .collect();
        Clock {
            events: events.to_vec(),
            offsets,
            next: 0,
            now_ms: 1_700_000_000_000,
        }
    }

    /// The next event, stamped 10 ms after the previous one.
    fn tick(&mut self) -> &ArchivedEvent {
        let i = self.next;
        self.next = (i + 1) % self.events.len();
        self.now_ms += 10;
        let at = self.offsets[i];
        self.events[i][at..at + 8].copy_from_slice(&self.now_ms.to_le_bytes());
        // SAFETY: the bytes were validated in `new`; only the timestamp changed since, and
        // every u64 is a valid timestamp.
        unsafe { rkyv::access_unchecked::<ArchivedEvent>(&self.events[i]) }
    }
}

fn compare(c: &mut Criterion, name: &str, rules: &RuleSet, events: &[AlignedVec<16>]) {
    // Every model the rules call scores 0.5 (the cost of models is the models bench's).
    let models = vec![0.5; rules.models().len()];
    let mut state = VelocityState::new(65_536);
    let mut outcome = rules.outcome();
    // Velocity values for the interpreter, from one compiled pass over the same stream.
    let mut warm = VelocityState::new(65_536);
    let mut clock = Clock::new(events);
    let velocity: Vec<Vec<f64>> = (0..events.len())
        .map(|_| {
            rules.evaluate(clock.tick(), &mut warm, &models, &mut outcome);
            outcome.velocity.clone()
        })
        .collect();
    let fired: usize = (0..events.len())
        .map(|_| {
            rules.evaluate(clock.tick(), &mut warm, &models, &mut outcome);
            outcome.fired.len() + outcome.shadow_fired.len()
        })
        .sum();
    println!(
        "{name}: {}; {:.1} rules fire per event",
        rules.shape(),
        fired as f64 / events.len() as f64
    );
    let mut g = c.benchmark_group(name);
    let mut clock = Clock::new(events);
    g.bench_function("compiled (with velocity recording)", |b| {
        b.iter(|| {
            rules.evaluate(clock.tick(), &mut state, &models, &mut outcome);
            black_box(outcome.score)
        })
    });
    let mut clock = Clock::new(events);
    g.bench_function("reference: AST-walking interpreter", |b| {
        b.iter(|| {
            let i = clock.next;
            let e = clock.tick();
            let d = interp::decide(
                rules.program(),
                rules.default_action(),
                e,
                &velocity[i],
                &models,
            );
            black_box(d.score)
        })
    });
    // Like for like: the interpreter records the event in every window itself, the plain
    // way (each function hashing its own key), as the compiled side does.
    let mut plain = VelocityState::new(65_536);
    plain.prepare(u64::MAX - 1, &rules.program().velocity);
    let mut clock = Clock::new(events);
    g.bench_function("reference: interpreter, recording velocity itself", |b| {
        b.iter(|| {
            let e = clock.tick();
            let velocity = interp::record_velocity(rules.program(), e, &mut plain);
            let d = interp::decide(
                rules.program(),
                rules.default_action(),
                e,
                &velocity,
                &models,
            );
            black_box(d.score)
        })
    });
    g.finish();
}

fn bench(c: &mut Criterion) {
    let events = archived_events(1024);
    let shipped = load_default(&Options::shipped()).expect("the shipped rules compile");
    compare(c, "rules: shipped set", &shipped, &events);
    let text = generated_rules(200, 42);
    let files = Memory(vec![(PathBuf::from("generated.rules"), text)]);
    let generated = load(Path::new("generated.rules"), &files, &Options::default())
        .unwrap_or_else(|report| panic!("the generated rules compile:\n{report}"));
    assert_eq!(generated.rule_count(), 200);
    compare(c, "rules: 200 generated", &generated, &events);
    // The same set without its 40 velocity rules: the interpreter is handed velocity values,
    // so this is the like-for-like comparison of rule evaluation alone.
    let text: String = generated_rules(200, 42)
        .lines()
        .filter(|l| !l.contains("count(") && !l.contains("sum("))
        .map(|l| format!("{l}\n"))
        .collect();
    let files = Memory(vec![(PathBuf::from("no-velocity.rules"), text)]);
    let no_velocity = load(Path::new("no-velocity.rules"), &files, &Options::default())
        .unwrap_or_else(|report| panic!("the generated rules compile:\n{report}"));
    assert_eq!(no_velocity.rule_count(), 160);
    compare(
        c,
        "rules: 160 generated, no velocity",
        &no_velocity,
        &events,
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
