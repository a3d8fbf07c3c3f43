//! What a replay found: each thread tallies its run of events ([`Tally`]), the tallies are
//! summed into a [`Report`], printed as text or JSON.
//!
//! Everything about actions, amounts and labels is derived from one table: per currency,
//! per label (none, legitimate, fraud), per action before and after, the events and their
//! summed amount. Transitions, amounts per action, precision and recall are sums over it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use super::{Index, Logged, Skipped};
use crate::decide::Decided;
use crate::log::format::DecisionRecord;
use crate::scoring::Published;

pub const ACTIONS: [&str; 3] = ["allow", "review", "deny"];
const REVIEW: usize = 1;
const DENY: usize = 2;
/// Label slots: no label, legitimate (0), fraud (1).
const UNLABELED: usize = 0;
const LEGIT: usize = 1;
const FRAUD: usize = 2;
/// Changed decisions shown in the report (the earliest in event time).
const EXAMPLES_MAX: usize = 20;

/// A labels file: `event_id,label` per line (1 = fraud, 0 = legitimate), an optional header.
pub struct Labels {
    pub path: String,
    pub by_id: HashMap<String, bool>,
    pub rows: u64,
    /// Event ids given more than once (the last label counts).
    pub duplicates: u64,
}

impl Labels {
    /// Reads a labels CSV (RFC 4180 quoting). A first row whose label is not 0 or 1 is a
    /// header; any later one is an error naming its line.
    pub fn read(path: &Path) -> anyhow::Result<Labels> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .trim(csv::Trim::All)
            .from_path(path)
            .with_context(|| format!("--labels {}", path.display()))?;
        let mut labels = Labels {
            path: path.display().to_string(),
            by_id: HashMap::new(),
            rows: 0,
            duplicates: 0,
        };
        let mut first = true;
        for (i, row) in reader.records().enumerate() {
            let row = row.with_context(|| format!("--labels {}", path.display()))?;
            let line = row.position().map_or(i as u64 + 1, |p| p.line());
            if row.len() == 1 && row[0].is_empty() {
                continue;
            }
            let header = std::mem::replace(&mut first, false);
            let label = match (row.get(0), row.get(1), row.len()) {
                (Some(id), Some("1"), 2) if !id.is_empty() => (id, true),
                (Some(id), Some("0"), 2) if !id.is_empty() => (id, false),
                _ if header => continue,
                _ => anyhow::bail!(
                    "--labels {}:{line}: want `event_id,label` with label 1 (fraud) or 0 (legitimate)",
                    path.display()
                ),
            };
            labels.rows += 1;
            if labels.by_id.insert(label.0.to_string(), label.1).is_some() {
                labels.duplicates += 1;
            }
        }
        Ok(labels)
    }
}

/// How one logged epoch's indexes map onto the replayed rule set's.
struct Names {
    /// Logged rule index -> replayed rule index (same name).
    rules: Vec<Option<u32>>,
    /// Logged velocity function -> replayed one (same text).
    velocity: Vec<Option<usize>>,
    /// Whether the logged models are the replayed ones, in the same order.
    same_models: bool,
}

/// One cell of the table: events and their summed amount (minor units).
#[derive(Debug, Default, Clone, Copy)]
struct Cell {
    events: u64,
    amount: i64,
}

type Table = [[[Cell; 3]; 3]; 3];

/// A changed decision.
#[derive(Debug, Clone, Serialize)]
pub struct Example {
    pub event_id: String,
    pub timestamp_ms: u64,
    pub shard: u16,
    pub seq: u64,
    pub before: Side,
    pub after: Side,
}

#[derive(Debug, Clone, Serialize)]
pub struct Side {
    pub action: &'static str,
    pub score: i32,
    pub rules: Vec<String>,
}

/// One thread's counts.
pub struct Tally<'a> {
    published: &'a Published,
    index: &'a Index<'a>,
    names: Vec<Names>,
    labels: Option<&'a Labels>,
    /// Per currency.
    table: Vec<(String, Table)>,
    events: u64,
    identical: u64,
    changed: Changed,
    velocity_compared: u64,
    velocity_differs: u64,
    model_failures: BeforeAfter,
    /// Per logged epoch names, per rule: [fired, fired in shadow].
    before: Vec<Vec<[u64; 2]>>,
    /// Per replayed rule: [fired, fired in shadow].
    after: Vec<[u64; 2]>,
    labeled_ids: HashSet<&'a str>,
    examples: Vec<Example>,
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Changed {
    /// Decisions whose action changed.
    pub action: u64,
    pub score: u64,
    /// Whose rules or shadow rules that fired changed (by name).
    pub rules: u64,
    /// Whose model scores changed (by name, to the bit, or a failure flag).
    pub models: u64,
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct BeforeAfter {
    pub before: u64,
    pub after: u64,
}

impl<'a> Tally<'a> {
    pub fn new(
        index: &'a Index<'a>,
        published: &'a Published,
        labels: Option<&'a Labels>,
    ) -> Tally<'a> {
        let rules = &published.rules;
        let rule_count = rules.shape().rules;
        let velocity = published.velocity_ids();
        let by_name: HashMap<&str, u32> = (0..rule_count as u32)
            .map(|i| (rules.rule_name(i), i))
            .collect();
        let names = index
            .names
            .iter()
            .map(|n| Names {
                rules: n
                    .rules
                    .iter()
                    .map(|name| by_name.get(name.as_str()).copied())
                    .collect(),
                velocity: n
                    .velocity
                    .iter()
                    .map(|f| velocity.iter().position(|v| v == f))
                    .collect(),
                same_models: n.models.as_slice() == rules.models(),
            })
            .collect();
        Tally {
            published,
            index,
            names,
            labels,
            table: Vec::new(),
            events: 0,
            identical: 0,
            changed: Changed::default(),
            velocity_compared: 0,
            velocity_differs: 0,
            model_failures: BeforeAfter::default(),
            before: index
                .names
                .iter()
                .map(|n| vec![[0; 2]; n.rules.len()])
                .collect(),
            after: vec![[0; 2]; rule_count],
            labeled_ids: HashSet::new(),
            examples: Vec::new(),
        }
    }

    /// Counts one event: logged as `logged`, replayed as `decided.verdicts[i]` with the
    /// velocity values `velocity`.
    pub fn add(&mut self, logged: &Logged<'a>, decided: &Decided, i: usize, velocity: &[f64]) {
        let Some(d) = DecisionRecord::parse(logged.body) else {
            return;
        };
        let v = &decided.verdicts[i];
        let names = &self.names[logged.names as usize];
        self.events += 1;
        let fired = &decided.rules[v.fired.clone()];
        let shadow = &decided.rules[v.shadow.clone()];
        let scores = &decided.scores[v.models.clone()];
        // Rule counts.
        let before = &mut self.before[logged.names as usize];
        for r in d.fired() {
            if let Some(c) = before.get_mut(r as usize) {
                c[0] += 1;
            }
        }
        for r in d.shadow() {
            if let Some(c) = before.get_mut(r as usize) {
                c[1] += 1;
            }
        }
        for &r in fired {
            self.after[r as usize][0] += 1;
        }
        for &r in shadow {
            self.after[r as usize][1] += 1;
        }
        // What changed.
        let same_list = |logged: &mut dyn Iterator<Item = u32>, now: &[u32]| {
            let mut n = 0;
            for r in logged {
                if now.get(n).copied() != names.rules.get(r as usize).copied().flatten() {
                    return false;
                }
                n += 1;
            }
            n == now.len()
        };
        let rules_same = same_list(&mut d.fired(), fired) && same_list(&mut d.shadow(), shadow);
        let models_same = names.same_models
            && d.models() == scores.len()
            && (0..d.models()).all(|k| {
                let (score, failed) = d.model(k);
                score.to_bits() == scores[k].0.to_bits() && failed == scores[k].1
            });
        self.model_failures.before += (0..d.models()).filter(|&k| d.model(k).1).count() as u64;
        self.model_failures.after += scores.iter().filter(|s| s.1).count() as u64;
        let (before_action, after_action) = (d.action() as usize, v.action as usize);
        let action_same = before_action == after_action;
        let score_same = d.score() == v.score;
        self.changed.action += u64::from(!action_same);
        self.changed.score += u64::from(!score_same);
        self.changed.rules += u64::from(!rules_same);
        self.changed.models += u64::from(!models_same);
        if action_same && score_same && rules_same && models_same {
            self.identical += 1;
        }
        // Velocity: the values it saw live against the replayed ones.
        let mut compared = false;
        let mut differs = false;
        for (j, live) in d.velocity().enumerate() {
            if let Some(Some(r)) = names.velocity.get(j)
                && let Some(now) = velocity.get(*r)
            {
                compared = true;
                differs |= live.to_bits() != now.to_bits();
            }
        }
        self.velocity_compared += u64::from(compared);
        self.velocity_differs += u64::from(differs);
        // The table.
        let event = logged.event;
        let label = match self
            .labels
            .and_then(|l| l.by_id.get(event.event_id.as_str()))
        {
            None => UNLABELED,
            Some(false) => LEGIT,
            Some(true) => FRAUD,
        };
        if label != UNLABELED {
            self.labeled_ids.insert(event.event_id.as_str());
        }
        let currency = event.currency.as_str();
        let at = match self.table.iter().position(|(c, _)| c == currency) {
            Some(at) => at,
            None => {
                self.table
                    .push((currency.to_string(), [[[Cell::default(); 3]; 3]; 3]));
                self.table.len() - 1
            }
        };
        let cell = &mut self.table[at].1[label][before_action][after_action];
        cell.events += 1;
        cell.amount = cell.amount.saturating_add(event.amount_minor.to_native());
        if !(action_same && score_same && rules_same) && self.examples.len() < EXAMPLES_MAX {
            let logged_names = &self.index.names[logged.names as usize];
            let name = |r: u32| {
                logged_names
                    .rules
                    .get(r as usize)
                    .cloned()
                    .unwrap_or_else(|| format!("#{r}"))
            };
            let rules = &self.published.rules;
            self.examples.push(Example {
                event_id: event.event_id.as_str().to_string(),
                timestamp_ms: logged.ts,
                shard: logged.shard,
                seq: logged.seq,
                before: Side {
                    action: ACTIONS[before_action],
                    score: d.score(),
                    rules: d.fired().map(name).collect(),
                },
                after: Side {
                    action: ACTIONS[after_action],
                    score: v.score,
                    rules: fired
                        .iter()
                        .map(|&r| rules.rule_name(r).to_string())
                        .collect(),
                },
            });
        }
    }
}

/// How a replay went, for `--json`; [`Report::render`] prints it for people.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub log: LogSummary,
    pub rules: RulesSummary,
    /// Events replayed.
    pub events: u64,
    /// Decided exactly as logged: action, score, rules, shadow rules, model scores.
    pub identical: u64,
    pub changed: Changed,
    /// `"allow->deny"`: the events whose action went from one to the other, and their
    /// amounts per currency (minor units). Only changes are listed.
    pub transitions: BTreeMap<String, Transition>,
    /// Events per action, before (as logged) and after.
    pub actions: BTreeMap<&'static str, BeforeAfter>,
    /// Per currency: amounts (minor units) per action before and after, and the amount of
    /// the events whose action changed.
    pub amounts: BTreeMap<String, Amounts>,
    /// Every rule of either side: fire counts before and after, live and in shadow.
    pub rule_counts: Vec<RuleCount>,
    /// Events whose velocity values (for the functions both sides have) differ from what
    /// they saw live: their keys' events did not reach the owners in event-time order.
    pub velocity_differs: u64,
    pub velocity_compared: u64,
    /// Model scores that were the fallback (a failed model), before and after.
    pub model_failures: BeforeAfter,
    pub labels: Option<LabelReport>,
    /// The earliest changed decisions.
    pub examples: Vec<Example>,
    pub timing: Timing,
}

#[derive(Debug, Default, Serialize)]
pub struct LogSummary {
    pub dir: String,
    pub segments: usize,
    pub shards: usize,
    /// Decisions read (and replayed).
    pub decisions: u64,
    pub skipped: Skipped,
    pub first_event_ms: Option<u64>,
    pub last_event_ms: Option<u64>,
    /// The rule sets the log's decisions were made with: digest -> decisions.
    pub logged_digests: BTreeMap<String, u64>,
}

#[derive(Debug, Default, Serialize)]
pub struct RulesSummary {
    pub digest: String,
    pub rules: usize,
    pub models: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct Transition {
    pub events: u64,
    pub amount: BTreeMap<String, i64>,
}

#[derive(Debug, Default, Serialize)]
pub struct Amounts {
    pub before: BTreeMap<&'static str, i64>,
    pub after: BTreeMap<&'static str, i64>,
    /// Of the events whose action changed.
    pub changed: i64,
}

#[derive(Debug, Default, Serialize)]
pub struct RuleCount {
    pub rule: String,
    pub before: Fired,
    pub after: Fired,
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Fired {
    pub fired: u64,
    /// Fired as a shadow rule (not acting).
    pub shadow: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct LabelReport {
    pub file: String,
    pub labels: u64,
    pub duplicates: u64,
    /// Events of the log with a label.
    pub labeled_events: u64,
    pub fraud_events: u64,
    pub legit_events: u64,
    /// Labels whose event id is not in the log.
    pub not_in_log: u64,
    pub before: LabelSide,
    pub after: LabelSide,
}

#[derive(Debug, Default, Serialize)]
pub struct LabelSide {
    /// Predicted fraud = denied.
    pub deny: Quality,
    /// Predicted fraud = sent to review.
    pub review: Quality,
    /// Fraud events denied: their amounts per currency.
    pub fraud_amount_caught: BTreeMap<String, i64>,
    /// Legitimate events denied: their amounts per currency.
    pub legit_amount_blocked: BTreeMap<String, i64>,
}

#[derive(Debug, Default, Serialize)]
pub struct Quality {
    /// Of the labeled events given this action, the share that is fraud (`None`: none was).
    pub precision: Option<f64>,
    /// Of the fraud events, the share given this action (`None`: no fraud is labeled).
    pub recall: Option<f64>,
    pub true_positives: u64,
    pub false_positives: u64,
    pub false_negatives: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Timing {
    pub threads: usize,
    /// Mapping the segments, checking every record and event, ordering them.
    pub read_ms: u64,
    pub velocity_ms: u64,
    pub decide_ms: u64,
    /// Events replayed per second, read to report.
    pub events_per_s: f64,
}

impl Report {
    pub fn new(index: &Index<'_>, published: &Published, labels: Option<&Labels>) -> Report {
        let rules = &published.rules;
        let mut per_names = vec![0u64; index.names.len()];
        for e in &index.events {
            per_names[e.names as usize] += 1;
        }
        let mut logged_digests = BTreeMap::new();
        for (names, n) in index.names.iter().zip(per_names) {
            *logged_digests.entry(names.digest.clone()).or_insert(0) += n;
        }
        Report {
            log: LogSummary {
                segments: index.segments,
                shards: index.shard_count,
                decisions: index.events.len() as u64,
                skipped: index.skipped.clone(),
                first_event_ms: index.ordered().next().map(|e| e.ts),
                last_event_ms: index.ordered().last().map(|e| e.ts),
                logged_digests,
                ..LogSummary::default()
            },
            rules: RulesSummary {
                digest: rules.digest.clone(),
                rules: rules.shape().rules,
                models: published.used.iter().map(|m| m.describe()).collect(),
            },
            labels: labels.map(|l| LabelReport {
                file: l.path.clone(),
                labels: l.rows,
                duplicates: l.duplicates,
                ..LabelReport::default()
            }),
            ..Report::default()
        }
    }

    /// Sums one thread's tally in (call for each, in event-time order, then `finish`).
    pub fn add(&mut self, t: &Tally<'_>) {
        self.events += t.events;
        self.identical += t.identical;
        self.changed.action += t.changed.action;
        self.changed.score += t.changed.score;
        self.changed.rules += t.changed.rules;
        self.changed.models += t.changed.models;
        self.velocity_compared += t.velocity_compared;
        self.velocity_differs += t.velocity_differs;
        self.model_failures.before += t.model_failures.before;
        self.model_failures.after += t.model_failures.after;
        for e in &t.examples {
            if self.examples.len() < EXAMPLES_MAX {
                self.examples.push(e.clone());
            }
        }
        // Rule counts by name: the logged epochs' and the replayed set's.
        let mut counts: BTreeMap<String, (Fired, Fired)> = self
            .rule_counts
            .drain(..)
            .map(|r| (r.rule, (r.before, r.after)))
            .collect();
        for (n, per_rule) in t.before.iter().enumerate() {
            for (r, c) in per_rule.iter().enumerate() {
                let e = counts.entry(t.index.names[n].rules[r].clone()).or_default();
                e.0.fired += c[0];
                e.0.shadow += c[1];
            }
        }
        let rules = &t.published.rules;
        for (r, c) in t.after.iter().enumerate() {
            let e = counts
                .entry(rules.rule_name(r as u32).to_string())
                .or_default();
            e.1.fired += c[0];
            e.1.shadow += c[1];
        }
        self.rule_counts = counts
            .into_iter()
            .map(|(rule, (before, after))| RuleCount {
                rule,
                before,
                after,
            })
            .collect();
        // The table's sums.
        for (currency, table) in &t.table {
            let amounts = self.amounts.entry(currency.clone()).or_default();
            for b in 0..3 {
                for a in 0..3 {
                    let cell = (0..3).fold(Cell::default(), |s, l| Cell {
                        events: s.events + table[l][b][a].events,
                        amount: s.amount.saturating_add(table[l][b][a].amount),
                    });
                    add(amounts.before.entry(ACTIONS[b]).or_default(), cell.amount);
                    add(amounts.after.entry(ACTIONS[a]).or_default(), cell.amount);
                    self.actions.entry(ACTIONS[b]).or_default().before += cell.events;
                    self.actions.entry(ACTIONS[a]).or_default().after += cell.events;
                    if a != b && cell.events > 0 {
                        amounts.changed = amounts.changed.saturating_add(cell.amount);
                        let tr = self
                            .transitions
                            .entry(format!("{}->{}", ACTIONS[b], ACTIONS[a]))
                            .or_default();
                        tr.events += cell.events;
                        add(tr.amount.entry(currency.clone()).or_default(), cell.amount);
                    }
                }
            }
            if let Some(l) = self.labels.as_mut() {
                for (side, before) in [(&mut l.before, true), (&mut l.after, false)] {
                    side.count(currency, table, before);
                }
                let events =
                    |label: usize| -> u64 { table[label].iter().flatten().map(|c| c.events).sum() };
                l.fraud_events += events(FRAUD);
                l.legit_events += events(LEGIT);
            }
        }
        if let Some(l) = self.labels.as_mut() {
            l.labeled_events = l.fraud_events + l.legit_events;
        }
    }

    /// After every tally: what needs them all (labels not in the log, ratios, timing).
    pub fn finish(&mut self, tallies: &[Tally<'_>], labels: Option<&Labels>) {
        for action in ACTIONS {
            self.actions.entry(action).or_default();
        }
        if let (Some(l), Some(given)) = (self.labels.as_mut(), labels) {
            let seen: HashSet<&str> = tallies
                .iter()
                .flat_map(|t| t.labeled_ids.iter().copied())
                .collect();
            l.not_in_log = given.by_id.len() as u64 - seen.len() as u64;
            for side in [&mut l.before, &mut l.after] {
                for q in [&mut side.deny, &mut side.review] {
                    q.precision = ratio(q.true_positives, q.true_positives + q.false_positives);
                    q.recall = ratio(q.true_positives, q.true_positives + q.false_negatives);
                }
            }
        }
    }

    /// The report for people.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let pct = |n: u64| {
            if self.events == 0 {
                0.0
            } else {
                100.0 * n as f64 / self.events as f64
            }
        };
        let _ = writeln!(
            s,
            "replay of {}: {} events from {} segments of {} shards",
            self.log.dir, self.events, self.log.segments, self.log.shards
        );
        if let (Some(a), Some(b)) = (self.log.first_event_ms, self.log.last_event_ms) {
            let _ = writeln!(s, "  event time {a} .. {b} (ms since the Unix epoch)");
        }
        for (digest, n) in &self.log.logged_digests {
            let _ = writeln!(s, "  logged under rule set {digest}: {n} decisions");
        }
        let _ = writeln!(
            s,
            "  replayed under rule set {} ({} rules; models: {})",
            self.rules.digest,
            self.rules.rules,
            if self.rules.models.is_empty() {
                "none".to_string()
            } else {
                self.rules.models.join(", ")
            }
        );
        let sk = &self.log.skipped;
        if sk.decisions() + sk.corrupt_stretches + sk.bad_segments > 0 {
            let _ = writeln!(
                s,
                "  SKIPPED: {} decisions ({} bad records, {} without their epoch record, {} without their batch, {} invalid events), {} corrupt stretches, {} bad segment headers",
                sk.decisions(),
                sk.bad_decisions,
                sk.missing_epoch,
                sk.missing_payload,
                sk.invalid_events,
                sk.corrupt_stretches,
                sk.bad_segments
            );
            for e in &sk.examples {
                let _ = writeln!(s, "    {e}");
            }
        }
        let _ = writeln!(
            s,
            "\ndecided exactly as logged: {} ({:.2}%)",
            self.identical,
            pct(self.identical)
        );
        let _ = writeln!(
            s,
            "changed: action {} ({:.2}%), score {}, rules {}, model scores {}",
            self.changed.action,
            pct(self.changed.action),
            self.changed.score,
            self.changed.rules,
            self.changed.models
        );
        for (name, t) in &self.transitions {
            let _ = writeln!(s, "  {name:<15} {:>10}   {}", t.events, money(&t.amount));
        }
        let _ = writeln!(s, "\n{:<10} {:>12} {:>12}", "action", "before", "after");
        for a in ACTIONS {
            let c = &self.actions[a];
            let _ = writeln!(s, "{a:<10} {:>12} {:>12}", c.before, c.after);
        }
        let _ = writeln!(
            s,
            "\namounts (minor units)  {:>14} {:>14} {:>14} {:>14} {:>14}",
            "review before", "review after", "deny before", "deny after", "changed"
        );
        for (currency, a) in &self.amounts {
            let g = |m: &BTreeMap<&str, i64>, k| m.get(k).copied().unwrap_or(0);
            let _ = writeln!(
                s,
                "  {currency:<20} {:>14} {:>14} {:>14} {:>14} {:>14}",
                g(&a.before, "review"),
                g(&a.after, "review"),
                g(&a.before, "deny"),
                g(&a.after, "deny"),
                a.changed
            );
        }
        let _ = writeln!(
            s,
            "\n{:<32} {:>12} {:>12} {:>12} {:>12}",
            "rule", "before", "after", "shadow bef.", "shadow aft."
        );
        for r in &self.rule_counts {
            let _ = writeln!(
                s,
                "{:<32} {:>12} {:>12} {:>12} {:>12}",
                r.rule, r.before.fired, r.after.fired, r.before.shadow, r.after.shadow
            );
        }
        let _ = writeln!(
            s,
            "\nvelocity: {} of {} events saw other values live than in event-time order{}",
            self.velocity_differs,
            self.velocity_compared,
            if self.velocity_differs > 0 {
                " (their keys' events reached the owners out of event-time order, or a restart emptied the windows: see README, Backtesting)"
            } else {
                ""
            }
        );
        if self.model_failures.before + self.model_failures.after > 0 {
            let _ = writeln!(
                s,
                "model failures (fallback scores): {} before, {} after",
                self.model_failures.before, self.model_failures.after
            );
        }
        if let Some(l) = &self.labels {
            let _ = writeln!(
                s,
                "\nlabels {}: {} labels, {} events labeled ({} fraud, {} legitimate), {} not in the log, {} duplicated",
                l.file,
                l.labels,
                l.labeled_events,
                l.fraud_events,
                l.legit_events,
                l.not_in_log,
                l.duplicates
            );
            let f = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.4}"));
            let _ = writeln!(
                s,
                "{:<10} {:>17} {:>17} {:>17} {:>17}",
                "", "precision before", "precision after", "recall before", "recall after"
            );
            for (name, b, a) in [
                ("deny", &l.before.deny, &l.after.deny),
                ("review", &l.before.review, &l.after.review),
            ] {
                let _ = writeln!(
                    s,
                    "{name:<10} {:>17} {:>17} {:>17} {:>17}",
                    f(b.precision),
                    f(a.precision),
                    f(b.recall),
                    f(a.recall)
                );
            }
            let _ = writeln!(
                s,
                "fraud amount caught (denied):     before {}   after {}",
                money(&l.before.fraud_amount_caught),
                money(&l.after.fraud_amount_caught)
            );
            let _ = writeln!(
                s,
                "legit amount blocked (denied):    before {}   after {}",
                money(&l.before.legit_amount_blocked),
                money(&l.after.legit_amount_blocked)
            );
        }
        if !self.examples.is_empty() {
            let _ = writeln!(s, "\nfirst changed decisions:");
            for e in &self.examples {
                let _ = writeln!(
                    s,
                    "  {} @{}: {} {} [{}] -> {} {} [{}]",
                    e.event_id,
                    e.timestamp_ms,
                    e.before.action,
                    e.before.score,
                    e.before.rules.join(","),
                    e.after.action,
                    e.after.score,
                    e.after.rules.join(",")
                );
            }
        }
        let t = &self.timing;
        let _ = writeln!(
            s,
            "\n{} threads: read {} ms, velocity {} ms, decide {} ms: {:.0} events/s",
            t.threads, t.read_ms, t.velocity_ms, t.decide_ms, t.events_per_s
        );
        s
    }
}

impl LabelSide {
    /// Adds one currency's table: `before` picks the logged actions, else the replayed.
    fn count(&mut self, currency: &str, table: &Table, before: bool) {
        for (b, (fraud_row, legit_row)) in table[FRAUD].iter().zip(&table[LEGIT]).enumerate() {
            for (a, (&fraud, &legit)) in fraud_row.iter().zip(legit_row).enumerate() {
                let action = if before { b } else { a };
                for (q, predicted) in [(&mut self.deny, DENY), (&mut self.review, REVIEW)] {
                    if action == predicted {
                        q.true_positives += fraud.events;
                        q.false_positives += legit.events;
                    } else {
                        q.false_negatives += fraud.events;
                    }
                }
                if action == DENY && fraud.events > 0 {
                    add(
                        self.fraud_amount_caught
                            .entry(currency.to_string())
                            .or_default(),
                        fraud.amount,
                    );
                }
                if action == DENY && legit.events > 0 {
                    add(
                        self.legit_amount_blocked
                            .entry(currency.to_string())
                            .or_default(),
                        legit.amount,
                    );
                }
            }
        }
    }
}

/// Amounts are summed saturating: an event may carry up to `i64::MAX` minor units.
fn add(sum: &mut i64, amount: i64) {
    *sum = sum.saturating_add(amount);
}

fn ratio(n: u64, d: u64) -> Option<f64> {
    (d > 0).then(|| n as f64 / d as f64)
}

/// `USD 1200, EUR 300` (minor units), or `-`.
fn money(m: &BTreeMap<String, i64>) -> String {
    if m.is_empty() {
        return "-".into();
    }
    m.iter()
        .map(|(c, a)| format!("{c} {a}"))
        .collect::<Vec<_>>()
        .join(", ")
}
