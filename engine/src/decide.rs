//! From validated events to verdicts. No I/O; allocation-free once the caller's scratch
//! buffers have grown to the batch's and the rule set's size.
//!
//! A batch (the evaluate frames one read delivered, or every event of an evaluate-batch) goes
//! through three steps, so each model is called once for all of its events: prepare every
//! event (velocity recorded here, or taken from what the owners of its other keys recorded,
//! see [`Remote`]), score them with every model the rules call ([`CoreModels::score`]), then
//! decide each with its scores.
//!
//! A verdict names its rules by index into the epoch it was decided with, so [`Decided`]
//! holds no borrowed names: it can cross to another core (a forwarded event's answer), and
//! [`Names`] turns it into the views the encoder writes, borrowing the names from the epoch.

use std::ops::Range;

use verdict_net::{Action, ArchivedEvent, DecisionView, ModelScoreView, SliceView, StrView};
use verdict_rules::Outcome;
use verdict_rules::VelocityState;

use crate::scoring::{CoreModels, Published};

/// The outcome for one event, before it is tied to the event's id and timing: the rules
/// that fired are `Decided::rules[fired]` (indexes into the epoch's rules), the shadow rules
/// `rules[shadow]`, its model scores `Decided::scores[models]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub action: Action,
    pub score: i32,
    pub epoch: u64,
    pub fired: Range<usize>,
    pub shadow: Range<usize>,
    pub models: Range<usize>,
}

/// Buffers reused from batch to batch.
#[derive(Default)]
pub struct Scratch {
    outcomes: Vec<Outcome>,
    scores: Vec<f64>,
    failed: Vec<bool>,
}

impl Scratch {
    /// The velocity values the `i`th event of the last batch was decided with.
    pub fn velocity(&self, i: usize) -> &[f64] {
        &self.outcomes[i].velocity
    }
}

/// A batch's verdicts and the rule indexes and model scores they report.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Decided {
    pub rules: Vec<u32>,
    /// (score, failed) per model of the epoch, per verdict.
    pub scores: Vec<(f64, bool)>,
    pub verdicts: Vec<Verdict>,
}

impl Decided {
    pub fn clear(&mut self) {
        self.rules.clear();
        self.scores.clear();
        self.verdicts.clear();
    }
}

/// Where a key's windows were not recorded here.
pub const HERE: u32 = u32::MAX;

/// Windows other shards recorded for a batch's events: the values of event `e`'s functions
/// of key `k` are `values[at[e][k]..][..functions of k]`, or, when `at[e][k]` is [`HERE`],
/// the key is recorded in this core's state.
#[derive(Debug, Default)]
pub struct Remote {
    pub values: Vec<f64>,
    pub at: Vec<[u32; 4]>,
}

impl Remote {
    pub fn clear(&mut self) {
        self.values.clear();
        self.at.clear();
    }

    /// What `prepare_with` takes for event `e`; `per_key`: functions per key.
    fn of(&self, e: usize, per_key: &[usize; 4]) -> [Option<&[f64]>; 4] {
        let Some(at) = self.at.get(e) else {
            return [None; 4];
        };
        std::array::from_fn(|k| {
            (at[k] != HERE).then(|| &self.values[at[k] as usize..][..per_key[k]])
        })
    }
}

/// Decides `events` under `published`, recording them in this core's velocity `state`
/// (except the keys `remote` holds values for) and scoring them with its `models`, into
/// `into` (appended to).
#[allow(clippy::too_many_arguments)]
pub fn decide(
    events: &[&ArchivedEvent],
    published: &Published,
    state: &mut VelocityState,
    remote: &Remote,
    models: &mut CoreModels,
    clock: &quanta::Clock,
    scratch: &mut Scratch,
    into: &mut Decided,
) {
    let rules = &published.rules;
    while scratch.outcomes.len() < events.len() {
        scratch.outcomes.push(rules.outcome());
    }
    let outcomes = &mut scratch.outcomes[..events.len()];
    if events.len() > 1 {
        // Every event's entity lookups start loading before the first is recorded (not
        // those of an event whose every key another core recorded).
        for (i, event) in events.iter().enumerate() {
            if remote.at.get(i).is_none_or(|at| at.contains(&HERE)) {
                rules.prefetch(event, state);
            }
        }
    }
    let per_key = rules.functions_by_key();
    for (i, (event, out)) in events.iter().zip(outcomes.iter_mut()).enumerate() {
        rules.prepare_with(event, state, &remote.of(i, &per_key), out);
    }
    let m = published.used.len();
    if m > 0 {
        models.score(
            published,
            clock,
            events,
            outcomes,
            &mut scratch.scores,
            &mut scratch.failed,
        );
    }
    for (i, (event, out)) in events.iter().zip(outcomes.iter_mut()).enumerate() {
        let (scores, failed) = if m > 0 {
            (
                &scratch.scores[i * m..(i + 1) * m],
                &scratch.failed[i * m..(i + 1) * m],
            )
        } else {
            (&[][..], &[][..])
        };
        rules.decide(event, scores, out);
        let start = into.rules.len();
        into.rules.extend_from_slice(&out.fired);
        let middle = into.rules.len();
        into.rules.extend_from_slice(&out.shadow_fired);
        let first_score = into.scores.len();
        into.scores
            .extend(scores.iter().zip(failed).map(|(&s, &f)| (s, f)));
        into.verdicts.push(Verdict {
            action: out.action(),
            score: out.score,
            epoch: rules.epoch,
            fired: start..middle,
            shadow: middle..into.rules.len(),
            models: first_score..into.scores.len(),
        });
    }
}

/// The names and scores of decisions being encoded, borrowed from their epochs: fill it
/// with [`Names::add`] for every decision of a response, then take the views.
#[derive(Default)]
pub struct Names<'a> {
    names: Vec<StrView<'a>>,
    scores: Vec<ModelScoreView<'a>>,
}

/// Where one decision's names and scores sit in a [`Names`].
#[derive(Debug, Clone)]
pub struct Placed {
    rules: Range<usize>,
    shadow: Range<usize>,
    models: Range<usize>,
    action: Action,
    score: i32,
    epoch: u64,
}

impl<'a> Names<'a> {
    pub fn clear(&mut self) {
        self.names.clear();
        self.scores.clear();
    }

    /// Adds `verdict`'s rule names and model scores, from `decided` under `published`.
    pub fn add(
        &mut self,
        published: &'a Published,
        decided: &Decided,
        verdict: &Verdict,
    ) -> Placed {
        let rules = &published.rules;
        let start = self.names.len();
        let name = |&r: &u32| StrView(rules.rule_name(r));
        self.names
            .extend(decided.rules[verdict.fired.clone()].iter().map(name));
        let middle = self.names.len();
        self.names
            .extend(decided.rules[verdict.shadow.clone()].iter().map(name));
        let first = self.scores.len();
        self.scores.extend(
            rules
                .models()
                .iter()
                .zip(&decided.scores[verdict.models.clone()])
                .map(|(name, &(score, error))| ModelScoreView {
                    name: StrView(name),
                    score,
                    error,
                }),
        );
        Placed {
            rules: start..middle,
            shadow: middle..self.names.len(),
            models: first..self.scores.len(),
            action: verdict.action,
            score: verdict.score,
            epoch: verdict.epoch,
        }
    }

    /// Adds the names and scores of a decision another node made (relayed as it came).
    pub fn add_decision(&mut self, decision: &'a verdict_net::Decision) -> Placed {
        let start = self.names.len();
        self.names
            .extend(decision.rules.iter().map(|r| StrView(r.as_str())));
        let middle = self.names.len();
        self.names
            .extend(decision.shadow_rules.iter().map(|r| StrView(r.as_str())));
        let first = self.scores.len();
        self.scores
            .extend(decision.models.iter().map(|m| ModelScoreView {
                name: StrView(m.name.as_str()),
                score: m.score,
                error: m.error,
            }));
        Placed {
            rules: start..middle,
            shadow: middle..self.names.len(),
            models: first..self.scores.len(),
            action: decision.action,
            score: decision.score,
            epoch: decision.epoch,
        }
    }

    /// The decision to serialize for `event`, whose names `placed` says where to find.
    pub fn view<'s>(
        &'s self,
        placed: &Placed,
        event: &'s ArchivedEvent,
        shard: u32,
        server_ns: u64,
    ) -> DecisionView<'s> {
        DecisionView {
            event_id: StrView(event.event_id.as_str()),
            action: placed.action,
            score: placed.score,
            rules: SliceView(&self.names[placed.rules.clone()]),
            shadow_rules: SliceView(&self.names[placed.shadow.clone()]),
            models: SliceView(&self.scores[placed.models.clone()]),
            epoch: placed.epoch,
            shard,
            server_ns,
        }
    }

    /// Empties the buffers and keeps their allocations for names of another lifetime.
    pub fn recycle<'b>(self) -> Names<'b> {
        Names {
            names: recycle(self.names),
            scores: recycle(self.scores),
        }
    }
}

/// Empties `v` and keeps its allocation for elements of another lifetime (same layout, so
/// the in-place collect reuses the buffer and no element is ever converted).
pub fn recycle<A, B>(mut v: Vec<A>) -> Vec<B> {
    const { assert!(size_of::<A>() == size_of::<B>() && align_of::<A>() == align_of::<B>()) };
    v.clear();
    v.into_iter().map(|_| unreachable!("cleared")).collect()
}
